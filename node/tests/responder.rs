//! The log responder end to end: util-linux `logger` sends RFC 5424 over
//! UDP and TCP into three real `shoal` nodes on loopback multicast; the
//! rules count one brute force spread over the nodes in one cluster
//! bucket and mark the address on every node once; an address a user
//! wrote into the log is never taken; bad messages are counted and the
//! nodes keep serving.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_wire::{Code, Record};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(5);

const RULES: &str = r#"
ignore = ["10.200.0.0/16"]

[[rules]]
name = "sshd-failed"
program = "sshd"
pattern = 'Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?'
maxretry = 5
findtime_s = 600
action = "mark"
ttl_s = 600
"#;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP at the time of the call.
    loop {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

struct Syslog {
    node: NodeProcess,
    spec: NodeSpec,
    port: u16,
}

fn cluster(name: &str, n: u32) -> (Vec<Syslog>, PathBuf) {
    cluster_with(name, n, "allow = [\"127.0.0.0/8\"]\n", "")
}

/// `syslog` is added to `[syslog]`, `extra` after it.
fn cluster_with(name: &str, n: u32, syslog: &str, extra: &str) -> (Vec<Syslog>, PathBuf) {
    cluster_rules(name, n, RULES, syslog, extra)
}

/// As [`cluster_with`], with its own rules file.
fn cluster_rules(
    name: &str,
    n: u32,
    rules_text: &str,
    syslog: &str,
    extra: &str,
) -> (Vec<Syslog>, PathBuf) {
    let dir = tempdir(name);
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, rules_text).expect("rules");
    // Loopback cannot be forged from outside: UDP lines are trusted here
    // unless the test says otherwise.
    let trust = if syslog.contains("trust_udp") {
        ""
    } else {
        "trust_udp = true\n"
    };
    let (group, port) = unique_group();
    let nodes = (1..=n)
        .map(|id| {
            let sp = free_port();
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = format!(
                "[syslog]\nudp = \"127.0.0.1:{sp}\"\ntcp = \"127.0.0.1:{sp}\"\nrules = \"{}\"\nmax_message = 1024\nframe_timeout_ms = 500\n{trust}{syslog}\n{extra}",
                rules.display()
            );
            let node = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
            Syslog {
                node,
                spec,
                port: sp,
            }
        })
        .collect();
    (nodes, dir)
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    TcpLf,
    TcpOctets,
}

/// One line through util-linux `logger`, as a router's syslog would send it.
fn logger(port: u16, via: Via, msg: &str) {
    let mut c = Command::new("logger");
    c.args(["--rfc5424", "-n", "127.0.0.1", "-P", &port.to_string()])
        .args(["-t", "sshd", "--id=4242", "-p", "auth.info"]);
    match via {
        Via::Udp => c.arg("-d"),
        Via::TcpLf => c.arg("-T"),
        Via::TcpOctets => c.args(["-T", "--octet-count"]),
    };
    let st = c.arg(msg).status().expect("logger runs");
    assert!(st.success(), "logger {via:?} failed: {st}");
}

fn have_logger() -> bool {
    Command::new("logger")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn metric(n: &NodeProcess, sample: &str) -> f64 {
    n.metric(sample)
        .unwrap_or_else(|| panic!("node {}: no sample {sample}", n.id))
}

fn lines(n: &NodeProcess, result: &str) -> f64 {
    metric(
        n,
        &format!("shoal_responder_lines_total{{result=\"{result}\"}}"),
    )
}

fn total(nodes: &[Syslog], f: impl Fn(&NodeProcess) -> f64) -> f64 {
    nodes.iter().map(|s| f(&s.node)).sum()
}

/// (mark, remaining ms) of the session keyed by an IPv4 address.
fn mark_of(n: &NodeProcess, addr: Ipv4Addr) -> (u64, u64) {
    let mut c = n.client().expect("client");
    let r = c
        .query(
            Code::QUERY_SESSION,
            u64::from(addr.to_bits()),
            Duration::from_secs(1),
        )
        .expect("query");
    (r.fields[1], r.fields[2])
}

#[test]
fn brute_force_over_three_nodes_trips_one_bucket_and_injection_bans_nobody() {
    if !have_logger() {
        common::skip(
            "responder::brute_force",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let (nodes, _dir) = cluster("responder", 3);
    let attacker = Ipv4Addr::new(10, 66, 0, 1);
    let vias = [Via::Udp, Via::TcpLf, Via::TcpOctets];

    // Four failures, over the three nodes and the three framings: no
    // bucket is full yet (maxretry 5), on any node.
    for i in 0..4 {
        let s = &nodes[i % 3];
        logger(
            s.port,
            vias[i % 3],
            &format!(
                "Failed password for invalid user admin{i} from {attacker} port {} ssh2",
                40000 + i
            ),
        );
        // Each node must have counted its line before the next (the
        // counts are announced every 100 ms).
        assert!(wait_until(WAIT, || lines(&s.node, "counted") >= (i / 3 + 1) as f64));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(total(&nodes, |n| lines(n, "acted")), 0.0);
    for s in &nodes {
        assert_eq!(
            mark_of(&s.node, attacker).0,
            0,
            "no mark yet on node {}",
            s.node.id
        );
    }
    // The fifth, on node 2, which has seen only one of its own.
    logger(
        nodes[1].port,
        Via::Udp,
        &format!("Failed password for root from {attacker} port 40004 ssh2"),
    );
    for s in &nodes {
        assert!(
            wait_until(WAIT, || mark_of(&s.node, attacker).0
                == Record::MARK_SUSPICIOUS),
            "node {} has the mark",
            s.node.id
        );
        assert!(
            mark_of(&s.node, attacker).1 > 500_000,
            "with the rule's TTL"
        );
    }
    assert_eq!(total(&nodes, |n| lines(n, "acted")), 1.0);
    assert_eq!(lines(&nodes[1].node, "acted"), 1.0);
    // More attempts, anywhere: the mark is in force, nobody acts again.
    for (i, s) in nodes.iter().enumerate() {
        logger(
            s.port,
            Via::Udp,
            &format!(
                "Failed password for root from {attacker} port {} ssh2",
                41000 + i
            ),
        );
    }
    assert!(wait_until(WAIT, || total(&nodes, |n| lines(
        n,
        "already_acted"
    )) >= 3.0));
    assert_eq!(total(&nodes, |n| lines(n, "acted")), 1.0);
    assert!(
        total(&nodes, |n| metric(
            n,
            "shoal_responder_counts_total{result=\"absorbed\"}"
        )) > 0.0
    );

    // An address written into the user name (the fail2ban CVE-2013-7176
    // class), ten times from ten real sources, and the same with a whole
    // "from ADDR port N" in the user name: nobody is marked.
    let planted = Ipv4Addr::new(10, 99, 0, 1);
    let before = total(&nodes, |n| lines(n, "counted") + lines(n, "unmatched"));
    for i in 0..10u8 {
        let s = &nodes[usize::from(i) % 3];
        logger(
            s.port,
            Via::Udp,
            &format!("Failed password for invalid user {planted} from 10.77.0.{i} port 22 ssh2"),
        );
        logger(
            s.port,
            Via::TcpLf,
            &format!(
                "Failed password for invalid user x from {planted} port 22 from 10.78.0.{i} port 22 ssh2"
            ),
        );
    }
    assert!(wait_until(WAIT, || total(&nodes, |n| lines(n, "counted")
        + lines(n, "unmatched"))
        >= before + 20.0));
    std::thread::sleep(Duration::from_millis(300));
    for s in &nodes {
        assert_eq!(
            mark_of(&s.node, planted).0,
            0,
            "planted address marked on node {}",
            s.node.id
        );
        for i in 0..10u8 {
            assert_eq!(mark_of(&s.node, Ipv4Addr::new(10, 77, 0, i)).0, 0);
        }
    }
    assert_eq!(total(&nodes, |n| lines(n, "acted")), 1.0);
    // The ignore list: our own network is never acted on.
    for _ in 0..6 {
        logger(
            nodes[0].port,
            Via::Udp,
            "Failed password for root from 10.200.1.1 port 22 ssh2",
        );
    }
    assert!(wait_until(WAIT, || lines(&nodes[0].node, "ignored") >= 6.0));
    assert_eq!(mark_of(&nodes[0].node, Ipv4Addr::new(10, 200, 1, 1)).0, 0);
}

#[test]
fn bad_messages_are_counted_and_skipped_and_the_node_keeps_serving() {
    if !have_logger() {
        common::skip(
            "responder::bad_messages",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let (nodes, _dir) = cluster("responder-bad", 1);
    let s = &nodes[0];
    let n = &s.node;
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let to = ("127.0.0.1", s.port);
    // Malformed: no PRI, a bad version, bad structured data, not UTF-8.
    udp.send_to(b"hello there", to).expect("send");
    udp.send_to(b"<13>7 - - - - - - x", to).expect("send");
    udp.send_to(b"<13>1 - h sshd - - [oops x", to)
        .expect("send");
    udp.send_to(b"<13>1 - h sshd - - - \xff\xfe\xfd", to)
        .expect("send");
    // Oversized over UDP (max_message 1024), and through logger over TCP
    // with octet counting (logger's --size lets it send it).
    let big = format!("<13>1 - h sshd - - - {}", "A".repeat(2000));
    udp.send_to(big.as_bytes(), to).expect("send");
    let long = "B".repeat(1500);
    let st = Command::new("logger")
        .args(["--rfc5424", "-n", "127.0.0.1", "-P", &s.port.to_string()])
        .args(["-T", "--octet-count", "--size", "4000", "-t", "sshd", &long])
        .status()
        .expect("logger");
    assert!(st.success());
    let malformed = |r: &str| {
        metric(
            n,
            &format!("shoal_syslog_malformed_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(wait_until(WAIT, || malformed("no_pri") == 1.0
        && malformed("bad_version") == 1.0
        && malformed("bad_structured_data") == 1.0
        && malformed("not_utf8") == 1.0));
    assert!(wait_until(WAIT, || metric(
        n,
        "shoal_syslog_dropped_total{reason=\"oversized\"}"
    ) == 2.0));
    // A TCP sender with a broken octet count is cut off; one that sits on
    // half a message longer than frame_timeout_ms (500) is cut off too.
    let mut t = TcpStream::connect(to).expect("tcp");
    t.write_all(b"12x4 <13>1 - - - - - -").expect("write");
    let mut buf = [0u8; 8];
    t.set_read_timeout(Some(WAIT)).expect("timeout");
    assert_eq!(t.read(&mut buf).expect("closed by the node"), 0);
    let mut slow = TcpStream::connect(to).expect("tcp");
    slow.write_all(b"40 <13>1 - h sshd - - - half")
        .expect("write");
    slow.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = std::time::Instant::now();
    assert_eq!(slow.read(&mut buf).expect("closed by the node"), 0);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(metric(n, "shoal_syslog_tcp_broken_total"), 1.0);
    assert_eq!(metric(n, "shoal_syslog_tcp_timeouts_total"), 1.0);
    // Still serving: a good line is read and counted, the filter's socket
    // answers.
    logger(
        s.port,
        Via::TcpOctets,
        "Failed password for root from 10.66.9.9 port 22 ssh2",
    );
    assert!(wait_until(WAIT, || lines(n, "counted") == 1.0));
    assert_eq!(mark_of(n, Ipv4Addr::new(10, 66, 9, 9)).0, 0);
}

#[test]
fn senders_outside_the_allowed_networks_are_refused() {
    let (nodes, _dir) = cluster_with("responder-allow", 1, "allow = [\"10.0.0.0/8\"]\n", "");
    let s = &nodes[0];
    let n = &s.node;
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let line = b"<38>1 - h sshd 1 - - Failed password for root from 10.66.1.1 port 22 ssh2";
    udp.send_to(line, ("127.0.0.1", s.port)).expect("send");
    assert!(wait_until(WAIT, || metric(
        n,
        "shoal_syslog_dropped_total{reason=\"source\"}"
    ) == 1.0));
    let mut t = TcpStream::connect(("127.0.0.1", s.port)).expect("tcp");
    t.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = t.write_all(line);
    let mut buf = [0u8; 8];
    // Closed at once (or reset): nothing is read from it.
    assert!(matches!(t.read(&mut buf), Ok(0) | Err(_)));
    assert!(wait_until(WAIT, || metric(
        n,
        "shoal_syslog_tcp_refused_total"
    ) == 1.0));
    assert_eq!(lines(n, "counted") + lines(n, "unmatched"), 0.0);
}

#[test]
fn one_connection_per_source_when_configured() {
    let (nodes, _dir) = cluster_with(
        "responder-conns",
        1,
        "allow = [\"127.0.0.0/8\"]\nmax_per_source = 1\n",
        "",
    );
    let s = &nodes[0];
    let n = &s.node;
    let mut first = TcpStream::connect(("127.0.0.1", s.port)).expect("tcp");
    assert!(wait_until(WAIT, || metric(
        n,
        "shoal_syslog_tcp_connections"
    ) == 1.0));
    let mut second = TcpStream::connect(("127.0.0.1", s.port)).expect("tcp");
    second.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 8];
    assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)));
    assert!(wait_until(WAIT, || metric(
        n,
        "shoal_syslog_tcp_refused_total"
    ) == 1.0));
    // The first still works.
    first
        .write_all(b"<38>1 - h sshd 1 - - Failed password for root from 10.66.1.2 port 22 ssh2\n")
        .expect("write");
    assert!(wait_until(WAIT, || lines(n, "counted") == 1.0));
}

#[test]
fn a_mark_survives_kill_9_and_restart_through_the_store() {
    if !have_logger() {
        common::skip(
            "responder::restart",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let dir = tempdir("responder-store");
    let pair = shoal_tarantool::testkit::Pair::start(&dir.join("tt")).expect("tarantool pair");
    let store = format!(
        "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\nrequest_timeout_ms = 2000\nreplay_timeout_ms = 3000\n",
        pair.a, pair.b, pair.password
    );
    let (mut nodes, _d) = cluster_with(
        "responder-store-nodes",
        1,
        "allow = [\"127.0.0.0/8\"]\n",
        &store,
    );
    let attacker = Ipv4Addr::new(10, 66, 2, 1);
    for i in 0..5 {
        logger(
            nodes[0].port,
            Via::Udp,
            &format!(
                "Failed password for root from {attacker} port {} ssh2",
                1000 + i
            ),
        );
    }
    let n = &nodes[0].node;
    assert!(wait_until(WAIT, || mark_of(n, attacker).0 == Record::MARK_SUSPICIOUS));
    assert!(wait_until(WAIT, || metric(n, "shoal_store_saved_total") >= 1.0));
    nodes[0].node.kill();
    // The same node again: the mark can only come back from the store.
    let back = NodeProcess::spawn(Path::new(BIN), &nodes[0].spec).expect("node restarts");
    assert_eq!(metric(&back, "shoal_replay_ok"), 1.0);
    let (mark, left) = mark_of(&back, attacker);
    assert_eq!(
        mark,
        Record::MARK_SUSPICIOUS,
        "the mark is back after the restart"
    );
    assert!(left > 500_000, "with its TTL left: {left} ms");
}

#[test]
fn tcp_waits_for_a_full_queue_and_loses_nothing() {
    let (nodes, _dir) = cluster_with(
        "responder-backpressure",
        1,
        "allow = [\"127.0.0.0/8\"]\nqueue = 1\n",
        "",
    );
    let s = &nodes[0];
    let n = &s.node;
    const LINES: usize = 50_000;
    let mut t = TcpStream::connect(("127.0.0.1", s.port)).expect("tcp");
    let mut batch = Vec::with_capacity(1 << 20);
    for i in 0..LINES {
        let m = format!("<13>1 - h app - - - line {i}");
        if i % 2 == 0 {
            batch.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
        } else {
            batch.extend_from_slice(m.as_bytes());
            batch.push(b'\n');
        }
    }
    t.write_all(&batch).expect("write");
    // Every line is read and judged (unmatched: no rule for `app`),
    // none dropped, and the queue of one made the reader wait.
    assert!(
        wait_until(Duration::from_secs(30), || lines(n, "unmatched")
            == LINES as f64),
        "read {} of {LINES}",
        lines(n, "unmatched")
    );
    assert_eq!(
        metric(n, "shoal_syslog_messages_total{transport=\"tcp\"}"),
        LINES as f64
    );
    assert_eq!(
        metric(n, "shoal_syslog_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    assert!(metric(n, "shoal_syslog_backpressure_total") > 0.0);

    // UDP cannot wait: what does not fit is dropped and counted, and
    // every datagram received is either judged or counted as dropped.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..20_000 {
        let m = format!("<13>1 - h app - - - udp {i}");
        let _ = udp.send_to(m.as_bytes(), ("127.0.0.1", s.port));
    }
    let accounted = || {
        let got = metric(n, "shoal_syslog_messages_total{transport=\"udp\"}");
        let full = metric(n, "shoal_syslog_dropped_total{reason=\"queue_full\"}");
        got > 0.0 && lines(n, "unmatched") - LINES as f64 + full == got
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        wait_until(WAIT, accounted),
        "every UDP message judged or counted"
    );
}

const BLOCK_RULES: &str = r#"
[[rules]]
name = "sshd-failed"
program = "sshd"
pattern = 'Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?'
maxretry = 5
findtime_s = 600
action = "block"
ttl_s = 600
"#;

/// The node's `/blocks` page.
fn blocks_page(n: &NodeProcess) -> String {
    shoal_node::http_get(&n.admin, "/blocks").expect("/blocks")
}

/// `ttl_left_ms` of `prefix` on a `/blocks` page.
fn ttl_left(page: &str, prefix: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.starts_with(&format!("{prefix} ")))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ttl_left_ms="))?
        .parse()
        .ok()
}

#[test]
fn a_block_is_sent_saved_and_held_again_after_kill_9_and_a_restart() {
    if !have_logger() {
        common::skip(
            "responder::block_restart",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let dir = tempdir("responder-block-store");
    let pair = shoal_tarantool::testkit::Pair::start(&dir.join("tt")).expect("tarantool pair");
    let store = format!(
        "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\nrequest_timeout_ms = 2000\nreplay_timeout_ms = 3000\n",
        pair.a, pair.b, pair.password
    );
    // Two signed nodes without [enforce]: they hold and send blocks (the
    // kernel side is responder_netns.rs).
    let (mut nodes, _d) = cluster_rules(
        "responder-block-nodes",
        2,
        BLOCK_RULES,
        "allow = [\"127.0.0.0/8\"]\n",
        &store,
    );
    let attacker = "10.66.3.1";
    for i in 0..5 {
        logger(
            nodes[i % 2].port,
            Via::TcpLf,
            &format!(
                "Failed password for root from {attacker} port {} ssh2",
                1000 + i
            ),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let prefix = format!("{attacker}/32");
    for s in &nodes {
        assert!(
            wait_until(WAIT, || ttl_left(&blocks_page(&s.node), &prefix)
                .is_some_and(|l| l > 500_000)),
            "node {} holds the block: {}",
            s.node.id,
            blocks_page(&s.node)
        );
        assert!(
            blocks_page(&s.node).contains("reason=\"sshd-fai\""),
            "the rule names the block"
        );
    }
    let issued: f64 = nodes
        .iter()
        .map(|s| metric(&s.node, "shoal_responder_blocks_total{result=\"issued\"}"))
        .sum();
    assert_eq!(issued, 1.0, "one block for the trip");
    assert!(wait_until(WAIT, || nodes
        .iter()
        .map(|s| metric(&s.node, "shoal_store_saved_total"))
        .sum::<f64>()
        >= 1.0));
    // Both nodes die; the block can only come back from the store.
    for s in &mut nodes {
        s.node.kill();
    }
    let back = NodeProcess::spawn(Path::new(BIN), &nodes[0].spec).expect("node restarts");
    assert_eq!(metric(&back, "shoal_replay_ok"), 1.0);
    let left = ttl_left(&blocks_page(&back), &prefix);
    assert!(
        left.is_some_and(|l| l > 500_000),
        "the block is back after the restart with its TTL left: {left:?}"
    );
}

#[test]
fn udp_lines_never_count_toward_a_rule_unless_the_operator_trusts_udp() {
    if !have_logger() {
        common::skip(
            "responder::block_udp_untrusted",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let (nodes, _d) = cluster_rules(
        "responder-block-udp",
        1,
        BLOCK_RULES,
        "allow = [\"127.0.0.0/8\"]\ntrust_udp = false\n",
        "",
    );
    let n = &nodes[0];
    let attacker = "10.66.5.1";
    let line = |i: usize| format!("Failed password for root from {attacker} port {i} ssh2");
    // Twice the rule's maxretry over UDP (whose source anyone can forge):
    // counted as untrusted, no bucket filled, no block.
    for i in 0..10 {
        logger(n.port, Via::Udp, &line(3000 + i));
    }
    assert!(
        wait_until(WAIT, || lines(&n.node, "untrusted_transport") >= 10.0),
        "ten UDP lines counted as untrusted: {}",
        lines(&n.node, "untrusted_transport")
    );
    let prefix = format!("{attacker}/32");
    assert_eq!(ttl_left(&blocks_page(&n.node), &prefix), None);
    assert_eq!(
        metric(&n.node, "shoal_responder_blocks_total{result=\"issued\"}"),
        0.0
    );
    // The same lines over TCP trip the bucket from empty: the fifth acts.
    for i in 0..5 {
        logger(n.port, Via::TcpLf, &line(4000 + i));
    }
    assert!(
        wait_until(WAIT, || ttl_left(&blocks_page(&n.node), &prefix).is_some()),
        "the TCP brute force blocks: {}",
        blocks_page(&n.node)
    );
    assert_eq!(
        metric(&n.node, "shoal_responder_blocks_total{result=\"issued\"}"),
        1.0
    );
}

#[test]
fn a_block_rule_is_refused_at_start_in_an_unsigned_cluster() {
    let dir = tempdir("responder-block-unsigned");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, BLOCK_RULES).expect("rules");
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, &dir);
    spec.secret = None;
    spec.extra = format!(
        "[syslog]\nudp = \"127.0.0.1:{}\"\nallow = [\"127.0.0.0/8\"]\nrules = \"{}\"\n",
        free_port(),
        rules.display()
    );
    let e = match NodeProcess::spawn(Path::new(BIN), &spec) {
        Ok(_) => panic!("an unsigned node with a block rule started"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("rules[sshd-failed]: action block needs [auth]"),
        "{e}"
    );
}

#[test]
fn a_block_from_the_rules_crosses_to_the_other_cluster() {
    if !have_logger() {
        common::skip(
            "responder::block_crosses",
            "util-linux logger not installed (apt-get install bsdutils)",
        );
        return;
    }
    let dir = tempdir("responder-block-xc");
    let pair =
        shoal_tarantool::testkit::Pair::start_verdict(&dir.join("tt")).expect("verdict store pair");
    let verdicts = |store: &str| {
        format!(
            "[verdicts]\nstore = \"{store}\"\npassword = \"{}\"\napi_tokens = [\"responder-xc-token-0123456789\"]\ntoken_key_id = 1\ntoken_secret = \"responder-xc-secret-0123456\"\nlease_ms = 1000\npoll_ms = 20\n",
            pair.password
        )
    };
    // Cluster 1: two nodes reading syslog; cluster 2: two nodes without.
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, BLOCK_RULES).expect("rules");
    let spawn_cluster = |cluster: u32, store: &str, syslog: bool| {
        let (group, port) = unique_group();
        (1..=2)
            .map(|id| {
                let mut spec =
                    NodeSpec::loopback(id, group, port, &dir.join(format!("c{cluster}")));
                spec.cluster = cluster;
                let sp = free_port();
                spec.extra = verdicts(store);
                if syslog {
                    spec.extra.push_str(&format!(
                        "[syslog]\nudp = \"127.0.0.1:{sp}\"\nallow = [\"127.0.0.0/8\"]\nrules = \"{}\"\ntrust_udp = true\n",
                        rules.display()
                    ));
                }
                let node = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
                Syslog {
                    node,
                    spec,
                    port: sp,
                }
            })
            .collect::<Vec<_>>()
    };
    let one = spawn_cluster(1, &pair.a, true);
    let two = spawn_cluster(2, &pair.b, false);
    let attacker = "10.66.4.1";
    for i in 0..5 {
        logger(
            one[i % 2].port,
            Via::Udp,
            &format!(
                "Failed password for root from {attacker} port {} ssh2",
                2000 + i
            ),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let prefix = format!("{attacker}/32");
    for s in one.iter().chain(&two) {
        assert!(
            wait_until(Duration::from_secs(20), || ttl_left(
                &blocks_page(&s.node),
                &prefix
            )
            .is_some()),
            "node {} of cluster {} holds the rule's block: {}",
            s.node.id,
            s.spec.cluster,
            blocks_page(&s.node)
        );
    }
    // In cluster 2 it came from cluster 1 (REMOTE_BLOCK).
    assert!(blocks_page(&two[0].node).contains("origin=cluster-1"));
    let issued: f64 = one
        .iter()
        .map(|s| metric(&s.node, "shoal_responder_blocks_total{result=\"issued\"}"))
        .sum();
    assert_eq!(issued, 1.0);
}
