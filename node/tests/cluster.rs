//! Real `shoal` processes on loopback multicast: the capability end to end,
//! and the bad-input paths at the process boundary.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_node::LocalClient;
use shoal_wire::{Code, DatagramWriter, MacKey, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(5);
const Q: Duration = Duration::from_secs(1);

const RULE: &str = "[modes.default]\nmin_hold_ms = 1000\nclaim_ttl_ms = 5000\nlevels = [\n  { level = 1, total_up = 10000, total_down = 8000, local_up = 6000, local_down = 4000 },\n  { level = 2, total_up = 50000, total_down = 40000 },\n]\n";

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn cluster(name: &str, n: u32) -> (Vec<NodeProcess>, PathBuf, Ipv4Addr, u16) {
    let dir = tempdir(name);
    let (group, port) = unique_group();
    let nodes = (1..=n)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = RULE.to_string();
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect();
    (nodes, dir, group, port)
}

fn load(c: &mut LocalClient, resource: u64) -> [u64; 4] {
    c.query(Code::QUERY_LOAD, resource, Q)
        .map_or([0; 4], |r| r.fields)
}

fn level(c: &mut LocalClient, resource: u64) -> u64 {
    c.query(Code::QUERY_MODE, resource, Q)
        .map_or(0, |r| r.fields[1])
}

#[test]
fn three_nodes_share_load_modes_and_sessions() {
    let (nodes, _dir, ..) = cluster("three", 3);
    let mut clients: Vec<LocalClient> = nodes.iter().map(|n| n.client().expect("client")).collect();

    // Load injected on one node shows up in the others' totals.
    clients[0]
        .send(&[Record::new(Code::LOAD, [42, 1_000, 0, 0])])
        .expect("send");
    for c in clients.iter_mut() {
        assert!(
            wait_until(WAIT, || load(c, 42)[1] == 1_000),
            "total reached every node"
        );
    }
    // Load from all three: every node agrees on the total and the count.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&[Record::new(Code::LOAD, [42, 1_000 * (i as u64 + 1), 0, 0])])
            .expect("send");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(wait_until(WAIT, || load(c, 42)[1..]
            == [6_000, 1_000 * (i as u64 + 1), 3]));
    }

    // A spike seen only by node 3 (local_up 6000) raises a mode everywhere.
    clients[2]
        .send(&[Record::new(Code::LOAD, [42, 7_000, 0, 0])])
        .expect("send");
    for c in clients.iter_mut() {
        assert!(
            wait_until(WAIT, || level(c, 42) == 1),
            "mode armed on every node"
        );
    }
    // An explicit mode from a filter wins when higher.
    let mut m = Record::new(Code::MODE, [43, 3, 0, 0]);
    m.ttl_ms = 60_000;
    clients[1].send(&[m]).expect("send");
    for c in clients.iter_mut() {
        assert!(wait_until(WAIT, || {
            c.query(Code::QUERY_MODE, 43, Q)
                .is_ok_and(|r| r.fields[1] == 3 && r.fields[3] == 2)
        }));
    }

    // A session that passed a challenge on node 1 is known on node 3.
    let mut s = Record::new(
        Code::SESSION_MARK,
        [0xabcdef, Record::MARK_LEGITIMATE, 0, 0],
    );
    s.ttl_ms = 60_000;
    clients[0].send(&[s]).expect("send");
    assert!(wait_until(WAIT, || {
        clients[2]
            .query(Code::QUERY_SESSION, 0xabcdef, Q)
            .is_ok_and(|r| r.fields[1] == Record::MARK_LEGITIMATE && r.fields[3] == 1)
    }));

    // No loss on loopback, and `shoal status` shows the picture.
    for n in &nodes {
        for peer in nodes.iter().filter(|p| p.id != n.id) {
            let sample = format!("shoal_peer_lost_total{{peer=\"{}\"}}", peer.id);
            assert_eq!(n.metric(&sample), Some(0.0), "node {}: {sample}", n.id);
        }
    }
    let out = Command::new(BIN)
        .args(["status", "-c"])
        .arg(&nodes[1].config)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("peers: 2"), "{text}");
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("42"))
        .unwrap_or_else(|| panic!("resource 42 listed: {text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], &["10000", "2000", "3", "1"], "{row}");
}

/// Joins the group on loopback to watch (and later replay) real traffic.
fn sniffer(group: Ipv4Addr, port: u16) -> UdpSocket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuseaddr");
    s.set_reuse_port(true).expect("reuseport");
    s.bind(&SocketAddrV4::new(group, port).into())
        .expect("bind");
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .expect("join");
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).expect("if");
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

#[test]
fn bad_datagrams_are_counted_and_never_applied() {
    let (nodes, _dir, group, port) = cluster("bad", 2);
    let sniff = sniffer(group, port);
    let mut c1 = nodes[0].client().expect("client");
    let mut c2 = nodes[1].client().expect("client");
    c1.send(&[Record::new(Code::LOAD, [5, 100, 0, 0])])
        .expect("send");
    let mut buf = [0u8; 2048];
    let n = sniff.recv(&mut buf).expect("captured a real datagram");
    let real = buf[..n].to_vec();
    assert!(wait_until(WAIT, || load(&mut c2, 5)[1] == 100));
    let dest = SocketAddrV4::new(group, port);
    let inject = |bytes: &[u8]| {
        sniff.send_to(bytes, dest).expect("inject");
    };

    // A replay of the real, signed datagram.
    inject(&real);
    // Forged with the wrong key: a huge load and a mode for resource 5.
    let mut w = DatagramWriter::new(
        1,
        9,
        u64::MAX,
        1400,
        Some(MacKey::derive(1, b"wrong key!!!!!!!!")),
    );
    w.push(&Record::new(Code::LOAD, [5, 1 << 40, 0, 0]));
    w.push(&Record::new(Code::MODE, [5, 7, 0, 0]));
    inject(w.finish().expect("batch"));
    // Unsigned, posing as node 1 with a newer incarnation.
    let mut w = DatagramWriter::new(1, 1, u64::MAX, 1400, None);
    w.push(&Record::new(Code::LOAD, [5, 1 << 40, 0, 0]));
    inject(w.finish().expect("batch"));
    // Truncated, bit-flipped, and a future version.
    inject(&real[..real.len() - 7]);
    let mut flipped = real.clone();
    flipped[40 + 33] ^= 0x10;
    inject(&flipped);
    let mut v2 = real.clone();
    v2[4] = 2;
    inject(&v2);
    inject(b"GET / HTTP/1.0\r\n\r\n");

    let n2 = &nodes[1];
    let count = |s: &str| n2.metric(s).unwrap_or(-1.0);
    assert!(
        wait_until(WAIT, || {
            count("shoal_datagrams_rejected_total{reason=\"bad_crc\"}") == 2.0
                && count("shoal_datagrams_rejected_total{reason=\"bad_mac\"}") == 1.0
                && count("shoal_datagrams_rejected_total{reason=\"mac_missing\"}") == 1.0
                && count("shoal_datagrams_rejected_total{reason=\"unknown_version\"}") == 1.0
                && count("shoal_datagrams_rejected_total{reason=\"too_short\"}") == 1.0
                && count("shoal_replay_rejected_total") == 1.0
        }),
        "{}",
        n2.metrics().unwrap_or_default()
    );
    assert_eq!(load(&mut c2, 5)[1..], [100, 0, 1]);
    assert_eq!(level(&mut c2, 5), 0);
    assert_eq!(count("shoal_peer_duplicates_total{peer=\"1\"}"), 1.0);
    // Real traffic still flows afterwards.
    c1.send(&[Record::new(Code::LOAD, [5, 200, 0, 0])])
        .expect("send");
    assert!(wait_until(WAIT, || load(&mut c2, 5)[1] == 200));
}

#[test]
fn local_api_rejects_bad_input_and_keeps_serving() {
    let (nodes, ..) = cluster("local", 1);
    let n = &nodes[0];
    let mut c = n.client().expect("client");
    // Not a multiple of 64 bytes: one error record back (reason 1).
    c.send_raw(&[0u8; 65]).expect("send");
    let r = c.recv_raw(WAIT).expect("error reply");
    let r = Record::decode_slice(&r[..64]).expect("record");
    assert_eq!((r.code, r.fields[0]), (Code::REPLY_ERROR, 1));
    // More than 64 records (reason 4).
    c.send_raw(&vec![0u8; 65 * 64]).expect("send");
    let r = c.recv_raw(WAIT).expect("error reply");
    assert_eq!(Record::decode_slice(&r[..64]).expect("record").fields[0], 4);
    // Longer than the node's receive slot (cut by the kernel to 64 KiB):
    // still too many records (reason 4), one error back.
    c.send_raw(&vec![0u8; 1563 * 64]).expect("send");
    let r = c.recv_raw(WAIT).expect("error reply");
    assert_eq!(r.len(), 64, "one error record");
    assert_eq!(Record::decode_slice(&r).expect("record").fields[0], 4);
    // Empty (reason 1).
    c.send_raw(&[]).expect("send");
    let r = c.recv_raw(WAIT).expect("error reply");
    assert_eq!(Record::decode_slice(&r).expect("record").fields[0], 1);
    // An unknown code next to a query: an error in place, then the answer.
    let mut q = Record::new(Code::QUERY_LOAD, [1, 0, 0, 0]);
    q.seq = 5;
    let mut bytes = Record::new(Code(0x0777), [0; 4]).to_bytes().to_vec();
    bytes.extend_from_slice(&q.to_bytes());
    c.send_raw(&bytes).expect("send");
    let r = c.recv_raw(WAIT).expect("reply");
    assert_eq!(r.len(), 128);
    let e = Record::decode_slice(&r[..64]).expect("record");
    assert_eq!(
        (e.code, e.fields[0], e.fields[1]),
        (Code::REPLY_ERROR, 3, 0)
    );
    assert_eq!(Record::decode_slice(&r[64..]).expect("record").seq, 5);
    // A mode level out of range and unknown op bits: refused, counted.
    let mut bad_op = Record::new(Code::LOAD, [1, 1, 0, 0]).to_bytes();
    bad_op[26] = 0x80;
    c.send_raw(&bad_op).expect("send");
    c.send(&[Record::new(Code::MODE, [1, 300, 0, 0])])
        .expect("send");
    assert!(wait_until(WAIT, || n
        .metric("shoal_local_rejected_total{reason=\"bad_record\"}")
        == Some(2.0)));
    assert_eq!(
        n.metric("shoal_local_rejected_total{reason=\"bad_length\"}"),
        Some(2.0)
    );
    assert_eq!(
        n.metric("shoal_local_rejected_total{reason=\"too_many_records\"}"),
        Some(2.0)
    );
    assert_eq!(
        n.metric("shoal_local_rejected_total{reason=\"unknown_code\"}"),
        Some(1.0)
    );
    // Still serving.
    c.send(&[Record::new(Code::LOAD, [1, 33, 0, 0])])
        .expect("send");
    assert!(wait_until(WAIT, || load(&mut c, 1)[1] == 33));
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let dir = tempdir("config");
    let (group, port) = unique_group();
    let spec = NodeSpec::loopback(1, group, port, &dir);
    let good = spec.config_text("127.0.0.1:0", "127.0.0.1:0");
    for (bad, key) in [
        (
            good.replace(&group.to_string(), "10.1.2.3"),
            "multicast.group",
        ),
        (good.replace("id = 1", "id = 0"), "node.id"),
        (good.replace("[local]", "[locale]"), "locale"),
        (
            good.replace("secret = \"integration-test-secret\"", "secret = \"short\""),
            "auth.secret",
        ),
        (
            format!("{good}[modes.default]\nlevels = []\n"),
            "modes.default.levels",
        ),
        ("this is not toml".to_string(), "expected"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, &bad).expect("write");
        let out = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused: {bad}");
        assert!(err.contains(key), "error names `{key}`: {err}");
    }
    let out = Command::new(BIN)
        .args(["run", "-c", "/nonexistent/shoal.toml"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/shoal.toml"));
}

#[test]
fn a_second_sidecar_cannot_steal_the_socket_and_a_restart_is_seen() {
    let (mut nodes, dir, group, port) = cluster("restart", 2);
    let spec = NodeSpec::loopback(1, group, port, &dir);
    let err = NodeProcess::spawn(Path::new(BIN), &spec).expect_err("refused");
    assert!(err.to_string().contains("already serving"), "{err}");

    let mut c2 = nodes[1].client().expect("client");
    nodes[0]
        .client()
        .expect("client")
        .send(&[Record::new(Code::LOAD, [3, 10, 0, 0])])
        .expect("send");
    assert!(wait_until(WAIT, || load(&mut c2, 3)[1] == 10));
    // kill -9 leaves the socket file behind; the restarted node takes it
    // over and its new incarnation is accepted (its sequence restarts).
    drop(nodes.remove(0));
    let restarted = NodeProcess::spawn(Path::new(BIN), &spec).expect("restart");
    restarted
        .client()
        .expect("client")
        .send(&[Record::new(Code::LOAD, [3, 20, 0, 0])])
        .expect("send");
    assert!(wait_until(WAIT, || load(&mut c2, 3)[1] == 20));
    assert_eq!(
        nodes[0].metric("shoal_peer_restarts_total{peer=\"1\"}"),
        Some(1.0)
    );
    assert_eq!(nodes[0].metric("shoal_replay_rejected_total"), Some(0.0));

    // The incarnation floor is on disk next to the socket; a corrupt one
    // stops the start with an error naming the file, never a silent reset.
    let floor_file = dir.join("shoal-1-1.incarnation");
    let floor = std::fs::read_to_string(&floor_file).expect("incarnation file");
    assert!(floor.trim_end().parse::<u64>().is_ok(), "{floor:?}");
    drop(restarted);
    std::fs::write(&floor_file, "garbage\n").expect("corrupt it");
    let err = NodeProcess::spawn(Path::new(BIN), &spec).expect_err("refused");
    assert!(
        err.to_string().contains("incarnation file") && err.to_string().contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&floor_file).expect("kept"),
        "garbage\n"
    );
}
