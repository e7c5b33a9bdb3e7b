//! Kernel enforcement across two clusters, with real packets
//! (`scripts/twoclusters.sh`): clusters A and B of two `shoal` nodes each
//! with `[enforce]`, a verdict store per cluster (namespace 3), the stores
//! joined by a link that delays each direction by 20 ms, and the
//! forwarders carrying blocks across it. An attacker namespace is on both
//! clusters' bridges with one source address, 198.51.100.7, and sends UDP
//! and TCP to every node of both clusters. A block posted on one node of A
//! (`POST /v1/blocks`) drops the attacker on every node of A and B, holds
//! while its TTL runs, and the attacker gets through again after it.
//!
//! `block_to_drop_across_clusters` (ignored, an explicit command) prints
//! the figure: from a block at node 1 of A to the element in the kernel of
//! every node of A, and of every node of B over the delayed link:
//! `cargo test --release -p shoal-node --test enforce_twoclusters -- --ignored --nocapture`.
//!
//! Needs root, iproute2, nft, Tarantool and python3 (the delay relay);
//! prints `SKIPPED` otherwise. Takes `/tmp/shoal-netns.lock` itself (the
//! topology's names are fixed): do not wrap it in `flock`.
// Timing and probing real packets need the clock.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_node::http_request;
use shoal_node::nft::{HookPoint, Nft, TableSpec};
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::{console, instance_script};
use shoal_wire::{Code, Op, Prefix, Record};

use nskit::{in_ns, netns_lock, udp_echo};

mod common;
mod nskit;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const API_TOKEN: &str = "enforce-2c-token-0123456789";
const PASSWORD: &str = "enforce-2c-verdict-password";
const UDP_PORT: u16 = 9978;
/// The attacker's one source address, on both clusters' segments.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Its addresses on A's and B's bridges (the next hop back to it).
const ATTACKER_ON: [Ipv4Addr; 2] = [
    Ipv4Addr::new(10, 213, 81, 200),
    Ipv4Addr::new(10, 213, 82, 200),
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/twoclusters.sh")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &str) -> Result<String, String> {
    run(Command::new("ip").args(args.split_whitespace()))
}

fn topo(args: &[&str]) -> Result<String, String> {
    run(Command::new("bash").arg(script()).args(args))
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    let tarantool = shoal_tarantool::testkit::tarantool_bin();
    for tool in ["ip", "nft", "python3", &tarantool.to_string_lossy()] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// The two clusters' namespaces, stores and the attacker; torn down when
/// dropped.
struct Topology {
    stores: Vec<PathBuf>,
    attacker: String,
}

impl Topology {
    fn up(dir: &Path) -> Result<Topology, String> {
        let _ = topo(&["down"]);
        topo(&["up", "3"])?;
        let mut t = Topology {
            stores: Vec::new(),
            attacker: format!("shx{}", std::process::id() % 10_000),
        };
        for (side, cluster) in [("a", 1), ("b", 2)] {
            let d = dir.join(format!("store-{side}"));
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            t.stores.push(d.clone());
            run(Command::new("bash")
                .arg(script())
                .args(["exec", side, "3", "bash"])
                .arg(instance_script())
                .arg("start")
                .arg(&d)
                .args(["--listen", "0.0.0.0:3301"])
                .args(["--peers", "10.213.80.1:3301,10.213.80.2:3301"])
                .args(["--schema", "verdict", "--cluster", &cluster.to_string()])
                .env("SHOAL_TT_PASSWORD", PASSWORD)
                .env("SHOAL_TT_REPL_PASSWORD", "enforce-2c-replication-password")
                .env("SHOAL_TT_CONNECT_S", "2"))?;
        }
        // The attacker: a veth into each cluster's bridge, 198.51.100.7 on
        // its loopback as the source of everything it sends to either
        // segment; the filter nodes route that address back through it.
        let ns = t.attacker.clone();
        ip(&format!("netns add {ns}"))?;
        ip(&format!("-n {ns} link set lo up"))?;
        ip(&format!("-n {ns} addr add {ATTACKER}/32 dev lo"))?;
        for (i, (side, subnet)) in [("a", 81), ("b", 82)].into_iter().enumerate() {
            let host = format!("{ns}h{side}");
            ip(&format!(
                "link add {host} type veth peer name v{side} netns {ns}"
            ))?;
            ip(&format!("link set {host} master x{side}br up"))?;
            ip(&format!(
                "-n {ns} addr add {}/24 dev v{side}",
                ATTACKER_ON[i]
            ))?;
            ip(&format!("-n {ns} link set v{side} up"))?;
            ip(&format!(
                "-n {ns} route replace 10.213.{subnet}.0/24 dev v{side} src {ATTACKER}"
            ))?;
            for k in 1..=2 {
                ip(&format!(
                    "-n x{side}{k} route replace {ATTACKER}/32 via {}",
                    ATTACKER_ON[i]
                ))?;
            }
        }
        Ok(t)
    }
}

impl Topology {
    /// Stops the stores (their pid files are in their directories: before
    /// those are removed). Stopping twice is harmless.
    fn stop_stores(&self) {
        for d in &self.stores {
            let _ = Command::new("bash")
                .arg(instance_script())
                .arg("stop")
                .arg(d)
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop_stores();
        // Deleting the namespace deletes its veths and their host ends.
        let _ = ip(&format!("netns del {}", self.attacker));
        for side in ["a", "b"] {
            for k in 1..=2 {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &format!("x{side}{k}")])
                    .args(["nft", "delete", "table", "inet", "shoal"])
                    .output();
            }
        }
        let _ = topo(&["down"]);
    }
}

fn both_follow(store: &Path) -> bool {
    let lua = "local ok = true for _, r in pairs(box.info.replication) do if r.uuid ~= box.info.uuid and (r.upstream == nil or r.upstream.status ~= 'follow' or r.downstream == nil or r.downstream.status ~= 'follow') then ok = false end end return ok";
    console(&store.join("console.sock"), lua).is_ok_and(|y| y.contains("- true"))
}

/// A filter node of cluster `side` in namespace `x{side}{k}`.
struct Filter {
    node: NodeProcess,
    ns: String,
    addr: Ipv4Addr,
}

fn cluster(dir: &Path, side: &str, cluster: u32) -> Vec<Filter> {
    let (group, port) = unique_group();
    let subnet = if side == "a" { 81 } else { 82 };
    (1..=2u32)
        .map(|k| {
            let addr = Ipv4Addr::new(10, 213, subnet, k as u8);
            let ns = format!("x{side}{k}");
            let mut spec = NodeSpec::loopback(k, group, port, &dir.join(side));
            spec.cluster = cluster;
            spec.interface = addr;
            spec.netns = Some(ns.clone());
            spec.extra = format!(
                "[verdicts]\nstore = \"10.213.{subnet}.3:3301\"\npassword = \"{PASSWORD}\"\n\
                 api_tokens = [\"{API_TOKEN}\"]\ntoken_key_id = 1\n\
                 token_secret = \"enforce-2c-token-secret-0123\"\nlease_ms = 1000\npoll_ms = 20\n\n\
                 [enforce]\nmin_prefix_v4 = 24\nreconcile_ms = 5000\n"
            );
            let node = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
            udp_echo(&ns, addr, UDP_PORT);
            Filter { node, ns, addr }
        })
        .collect()
}

/// Whether UDP and TCP from the attacker's namespace get an answer from
/// filter `f` (its UDP echo, its node's HTTP port). Both must agree; a
/// disagreement is probed again (twice at most), since an element can
/// expire between the UDP and the TCP probe of one round.
fn gets_through(attacker: &str, f: &Filter) -> bool {
    for _ in 0..2 {
        let (udp, tcp) = probe(attacker, f);
        if udp == tcp {
            return udp;
        }
    }
    let (udp, tcp) = probe(attacker, f);
    assert_eq!(
        udp, tcp,
        "UDP and TCP disagree for {} ({}) three times running",
        f.addr, f.ns
    );
    udp
}

fn probe(attacker: &str, f: &Filter) -> (bool, bool) {
    let wait = Duration::from_millis(250);
    let target = f.addr;
    let port: u16 = f
        .node
        .admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    let (udp, tcp) = in_ns(attacker, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("attacker socket");
        let _ = sock.set_read_timeout(Some(wait));
        let token = std::process::id().to_le_bytes();
        let mut buf = [0u8; 64];
        // Up to three probes, as TCP resends its SYN: a first datagram can
        // be lost while a neighbour entry resolves.
        let udp = (0..3).any(|_| {
            sock.send_to(&token, (target, UDP_PORT)).is_ok()
                && matches!(sock.recv_from(&mut buf), Ok((n, from))
                    if buf[..n] == token[..] && from.ip() == target)
        });
        let addr = SocketAddr::from((target, port));
        let tcp = TcpStream::connect_timeout(&addr, wait).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(wait));
            s.local_addr().is_ok_and(|a| a.ip() == ATTACKER)
                && s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .is_ok()
                && {
                    let mut b = [0u8; 12];
                    s.read_exact(&mut b).is_ok()
                }
        });
        (udp, tcp)
    });
    (udp, tcp)
}

/// The filters (of both clusters) that let the attacker through.
fn passing(attacker: &str, all: &[&Filter]) -> Vec<String> {
    all.iter()
        .filter(|f| gets_through(attacker, f))
        .map(|f| f.ns.clone())
        .collect()
}

fn post_block(f: &Filter, prefix: &str, ttl_s: u64) -> (u16, String) {
    http_request(
        &f.node.api,
        "POST",
        "/v1/blocks",
        Some(API_TOKEN),
        format!(r#"{{"prefix":"{prefix}","ttl_s":{ttl_s},"reason":"2c-test"}}"#).as_bytes(),
    )
    .expect("http answer")
}

/// Fields drop in order: nodes, topology, then the lock.
struct Setup {
    a: Vec<Filter>,
    b: Vec<Filter>,
    t: Topology,
    dir: PathBuf,
    _lock: File,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.a.clear();
        self.b.clear();
        // The stores' pid files live under `dir`: stop them first, or
        // they outlive the test.
        self.t.stop_stores();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(tag: &str) -> Setup {
    let lock = netns_lock();
    let dir = std::env::temp_dir().join(format!("shoal-e2c-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Topology::up(&dir).expect("topology");
    let a = cluster(&dir, "a", 1);
    let b = cluster(&dir, "b", 2);
    assert!(
        wait_until(Duration::from_secs(20), || both_follow(&t.stores[0])
            && both_follow(&t.stores[1])),
        "stores replicate"
    );
    Setup {
        _lock: lock,
        a,
        b,
        t,
        dir,
    }
}

#[test]
fn a_block_in_one_cluster_drops_the_attacker_on_every_node_of_both() {
    if let Some(why) = skip_reason() {
        common::skip(
            "a_block_in_one_cluster_drops_the_attacker_on_every_node_of_both",
            &why,
        );
        return;
    }
    let s = setup("t");
    let atk = s.t.attacker.clone();
    let all: Vec<&Filter> = s.a.iter().chain(s.b.iter()).collect();
    let names: Vec<String> = all.iter().map(|f| f.ns.clone()).collect();

    assert!(
        wait_until(Duration::from_secs(10), || passing(&atk, &all) == names),
        "before any block the attacker reaches every filter node of both clusters"
    );

    // A peer on the sync network is never blocked: the node refuses it
    // with the reason (a block of it would cut the cluster apart).
    let (status, body) = post_block(&s.a[0], &s.a[1].addr.to_string(), 60);
    assert_eq!(status, 422, "a block of the peer {}: {body}", s.a[1].addr);
    assert!(body.contains("allowlist"), "{body}");

    const TTL: Duration = Duration::from_secs(25);
    let (status, body) = post_block(&s.a[0], &ATTACKER.to_string(), TTL.as_secs());
    assert_eq!(status, 201, "{body}");
    let posted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || passing(&atk, &all).is_empty()),
        "a block posted on {} drops the attacker on every node of A and B (still passing: {:?})",
        s.a[0].ns,
        passing(&atk, &all)
    );
    let dropped_after = posted.elapsed();
    eprintln!("block posted on xa1: attacker dropped on all 4 nodes after {dropped_after:?}");

    // Still dropped everywhere while the TTL runs.
    let mid = posted + TTL / 2;
    if let Some(d) = mid.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    assert!(
        posted.elapsed() < TTL - Duration::from_secs(3),
        "the check runs well inside the TTL"
    );
    assert_eq!(passing(&atk, &all), Vec::<String>::new(), "dropped mid-TTL");

    // After the TTL every kernel has expired the element by itself.
    assert!(
        wait_until(TTL + Duration::from_secs(10), || posted.elapsed() > TTL
            && passing(&atk, &all) == names),
        "the attacker gets through every node again after the TTL (passing: {:?})",
        passing(&atk, &all)
    );
    eprintln!(
        "attacker through again on all 4 nodes {:?} after the post (TTL {TTL:?})",
        posted.elapsed()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A netlink socket in namespace `ns`, to watch its kernel's sets.
fn watcher(ns: &str) -> Nft {
    in_ns(ns, || {
        Nft::open(TableSpec {
            table: "shoal".into(),
            hook: HookPoint::Prerouting,
            priority: -300,
        })
        .expect("netlink in the namespace")
    })
}

#[test]
#[ignore = "prints figures; run as root in release"]
fn block_to_drop_across_clusters() {
    if let Some(why) = skip_reason() {
        common::skip("block_to_drop_across_clusters", &why);
        return;
    }
    let samples: u32 = std::env::var("SHOAL_FIG_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let s = setup("f");
    let mut watchers: Vec<Nft> =
        s.a.iter()
            .chain(s.b.iter())
            .map(|f| watcher(&f.ns))
            .collect();
    let mut client = s.a[0].node.client().expect("local socket of xa1");
    // One warm-up block: the forwarders hold their leases and the queue
    // is flowing before anything is timed.
    let mut same = Vec::new();
    let mut other = Vec::new();
    for i in 0..=samples {
        let p = Prefix::from(Ipv4Addr::new(
            203,
            0,
            113 + (i / 250) as u8 % 2,
            (i % 250) as u8 + 1,
        ));
        let [f0, f1, f2] = p.to_fields(0);
        let mut r = Record::new(Code::BLOCK, [f0, f1, f2, 0]);
        r.ttl_ms = 600_000;
        r.op = Op::SEND_SAVE;
        let t = Instant::now();
        client.send(&[r]).expect("send");
        let mut seen: [Option<Duration>; 4] = [None; 4];
        assert!(
            wait_until(Duration::from_secs(20), || {
                for (k, w) in watchers.iter_mut().enumerate() {
                    if seen[k].is_none()
                        && w.read().is_ok_and(|rb| {
                            rb.rules_ok && rb.elements.iter().any(|o| o.prefix == p)
                        })
                    {
                        seen[k] = Some(t.elapsed());
                    }
                }
                seen.iter().all(Option::is_some)
            }),
            "block {p} reached every kernel"
        );
        if i == 0 {
            continue;
        }
        let at =
            |r: std::ops::Range<usize>| seen[r].iter().flatten().max().copied().unwrap_or_default();
        same.push(at(0..2));
        other.push(at(2..4));
    }
    same.sort();
    other.sort();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "block on node 1 of A (local socket) -> drop active (element in the kernel set, polled by netlink) \
         on every node, {} blocks, load {}:",
        same.len(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  cluster A (2 nodes, multicast): p50 {:?} p99 {:?} max {:?}",
        percentile(&same, 0.5),
        percentile(&same, 0.99),
        same[same.len() - 1]
    );
    println!(
        "  cluster B (2 nodes, over the 20 ms link): p50 {:?} p99 {:?} max {:?}",
        percentile(&other, 0.5),
        percentile(&other, 0.99),
        other[other.len() - 1]
    );
}
