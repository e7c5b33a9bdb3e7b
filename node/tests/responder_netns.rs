//! The log responder closing the loop with real packets: three `shoal`
//! nodes with `[auth]`, `[enforce]` and a syslog listener each, in three
//! network namespaces on a bridge; two attackers and a router (the syslog
//! sender) in three more. util-linux `logger`, run in the router's
//! namespace, sends an RFC 5424 sshd brute force from one attacker's
//! address spread over the three nodes, over UDP and in a second case over
//! TCP (octet counting): the shared bucket trips once, one BLOCK goes to
//! the cluster, and the attacker's own UDP and TCP packets are dropped by
//! every node's kernel until the rule's TTL runs out. An address planted
//! in the user field bans nobody (its owner's packets still reach every
//! node); malformed and oversized messages are counted and the node keeps
//! serving; a block the enforcer's allowlist forbids is refused and
//! counted, and a /24 rule blocks the /24.
//!
//! `figure_trigger_line_to_drop_on_every_node` (ignored) prints the time
//! from the triggering `logger` line to the drop on every node, p50/p99
//! over many addresses, measured with real packets:
//! `cargo test --release -p shoal-node --test responder_netns -- --ignored --nocapture`.
//!
//! Needs root, iproute2, nft and util-linux `logger`; skipped with a
//! message otherwise. Serialized with the other namespace tests by an
//! exclusive flock on /tmp/shoal-netns.lock taken inside the test (do not
//! wrap it in `flock` from the shell).
// Probing real packets needs the clock.
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_node::testkit::{wait_until, NodeProcess, NodeSpec};

mod common;
mod lan;
mod nskit;

use lan::Lan;
use nskit::{http_port, in_ns, netns_lock, udp_echo, Attacker};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// The echo each node's namespace answers on (the attacker's UDP probe).
const ECHO_PORT: u16 = 9978;
/// Every node's syslog port, UDP and TCP.
const SYSLOG_PORT: u16 = 5514;
const WAIT: Duration = Duration::from_secs(5);
/// The sshd rule's block TTL.
const TTL: Duration = Duration::from_secs(10);

/// Node namespaces 1..=3, attackers 4 and 5, the router 6.
const ATTACKER_A: u32 = 4;
const ATTACKER_B: u32 = 5;
const ROUTER: u32 = 6;

const RULES: &str = r#"
[[rules]]
name = "sshd-failed"
program = "sshd"
pattern = 'Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?'
maxretry = 5
findtime_s = 600
action = "block"
ttl_s = 10
prefix_v4 = 32

[[rules]]
name = "dovecot"
program = "dovecot"
pattern = 'auth failed, [0-9]+ attempts: rip=<ADDR>'
maxretry = 2
findtime_s = 600
action = "block"
ttl_s = 60
prefix_v4 = 24
"#;

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "logger"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("`{tool}` missing"));
        }
    }
    None
}

/// Whether UDP and TCP of `a` both reach (`through`) or both fail to reach
/// every node.
fn all_nodes(lan: &Lan, nodes: &[NodeProcess], a: &Attacker, through: bool) -> bool {
    nodes
        .iter()
        .enumerate()
        .all(|(i, n)| a.probe(lan.addr(i as u32 + 1), http_port(n)) == (through, through))
}

fn set_has(ns: &str, prefix: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", "shoal"])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).contains(prefix)
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    TcpOctets,
}

/// One line through util-linux `logger` in the router's namespace, as the
/// router's syslog would send it.
fn logger_cmd(router: &str, to: Ipv4Addr, via: Via, program: &str, msg: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", router, "logger", "--rfc5424"])
        .args(["-n", &to.to_string(), "-P", &SYSLOG_PORT.to_string()])
        .args(["-t", program, "--id=4242", "-p", "auth.info"]);
    match via {
        Via::Udp => c.arg("-d"),
        Via::TcpOctets => c.args(["-T", "--octet-count"]),
    };
    c.arg(msg);
    c
}

fn logger(router: &str, to: Ipv4Addr, via: Via, program: &str, msg: &str) {
    let st = logger_cmd(router, to, via, program, msg)
        .status()
        .expect("logger runs");
    assert!(st.success(), "logger {via:?} failed: {st}");
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

fn blocks(n: &NodeProcess, result: &str) -> f64 {
    metric(
        n,
        &format!("shoal_responder_blocks_total{{result=\"{result}\"}}"),
    )
}

fn total(nodes: &[NodeProcess], f: impl Fn(&NodeProcess) -> f64) -> f64 {
    nodes.iter().map(f).sum()
}

/// Three nodes with `[auth]` (the testkit's default), `[enforce]` and
/// `[syslog]` on their own addresses, accepting the LAN.
struct Cluster {
    lan: Lan,
    nodes: Vec<NodeProcess>,
    dir: PathBuf,
}

impl Cluster {
    fn up(tag: &str, rules: &str, extra_ns: u32) -> Cluster {
        let lan = Lan::up(tag, 22, 3 + extra_ns).expect("namespaces up");
        let dir = std::env::temp_dir().join(format!("shoal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let rules_path = dir.join("rules.toml");
        std::fs::write(&rules_path, rules).expect("rules");
        let group = Ipv4Addr::new(239, 77, 13, 1);
        let nodes = (1..=3)
            .map(|k| {
                let mut spec = NodeSpec::loopback(k, group, 7713, &dir);
                spec.interface = lan.addr(k);
                spec.netns = Some(lan.ns(k));
                spec.extra = format!(
                    "[enforce]\nmin_prefix_v4 = 24\nprotect_sync_network = false\nreconcile_ms = 3000\nretry_ms = 500\n\n\
                     [syslog]\nudp = \"{a}:{SYSLOG_PORT}\"\ntcp = \"{a}:{SYSLOG_PORT}\"\n\
                     allow = [\"10.213.{s}.0/24\"]\nrules = \"{r}\"\nmax_message = 1024\n\
                     trust_udp = true\n",
                    a = lan.addr(k),
                    s = lan.subnet,
                    r = rules_path.display()
                );
                NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
            })
            .collect();
        for k in 1..=3 {
            udp_echo(&lan.ns(k), lan.addr(k), ECHO_PORT);
        }
        Cluster { lan, nodes, dir }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        for k in 1..=3 {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.lan.ns(k)])
                .args(["nft", "delete", "table", "inet", "shoal"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A brute force of `a`, five failures over the three nodes through
/// `via`: nothing before the fifth, then one block dropping `a` on every
/// node; more failures are `already_acted`. Returns when the drop is seen.
fn brute_force(c: &Cluster, a: &Attacker, via: Via, acted_before: f64) {
    let (lan, nodes) = (&c.lan, &c.nodes);
    let router = lan.ns(ROUTER);
    for i in 0..4u32 {
        let k = i % 3;
        let counted = lines(&nodes[k as usize], "counted");
        logger(
            &router,
            lan.addr(k + 1),
            via,
            "sshd",
            &format!(
                "Failed password for invalid user admin{i} from {} port {} ssh2",
                a.addr,
                40000 + i
            ),
        );
        assert!(
            wait_until(WAIT, || lines(&nodes[k as usize], "counted") > counted),
            "node {} counted line {i}",
            k + 1
        );
        // The counts are announced every 100 ms: each node has seen the
        // others' before the next line.
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(total(nodes, |n| lines(n, "acted")), acted_before);
    assert!(
        all_nodes(lan, nodes, a, true),
        "four failures block nobody: {} gets through",
        a.addr
    );
    // The fifth, on node 2, which has seen only one of its own.
    let t = Instant::now();
    logger(
        &router,
        lan.addr(2),
        via,
        "sshd",
        &format!("Failed password for root from {} port 40004 ssh2", a.addr),
    );
    let element = a.addr.to_string();
    assert!(
        wait_until(WAIT, || (1..=3).all(|k| set_has(&lan.ns(k), &element))),
        "the block reached every node's kernel"
    );
    println!(
        "{via:?}: fifth line -> element in every kernel: {:?} (polled with nft)",
        t.elapsed()
    );
    // More failures anywhere, at once (well inside half the TTL, after
    // which a renewal would be right): the block is in force, nobody
    // acts again.
    let already = total(nodes, |n| lines(n, "already_acted"));
    for k in 1..=3u32 {
        logger(
            &router,
            lan.addr(k),
            via,
            "sshd",
            &format!(
                "Failed password for root from {} port {} ssh2",
                a.addr,
                41000 + k
            ),
        );
    }
    assert!(
        wait_until(WAIT, || total(nodes, |n| lines(n, "already_acted"))
            >= already + 3.0),
        "later failures are already_acted"
    );
    assert_eq!(total(nodes, |n| lines(n, "acted")), acted_before + 1.0);
    assert!(
        all_nodes(lan, nodes, a, false),
        "{} is dropped by every node (UDP and TCP)",
        a.addr
    );
    // Tripped once, on the node that saw the fifth line; one BLOCK record
    // held once by every node.
    assert_eq!(total(nodes, |n| lines(n, "acted")), acted_before + 1.0);
    assert_eq!(total(nodes, |n| blocks(n, "issued")), acted_before + 1.0);
    for n in nodes {
        assert_eq!(
            metric(n, "shoal_blocks_added_total"),
            acted_before + 1.0,
            "node {}: one new block per trip",
            n.id
        );
    }
}

#[test]
fn a_brute_force_over_three_nodes_is_dropped_by_every_kernel_until_the_ttl() {
    if let Some(why) = skip_reason() {
        common::skip(
            "responder_netns::a_brute_force_over_three_nodes",
            &format!("{why}; run as root with iproute2, nftables and util-linux logger"),
        );
        return;
    }
    let _lock = netns_lock();
    let c = Cluster::up("shr", RULES, 3);
    let (lan, nodes) = (&c.lan, &c.nodes);
    let router = lan.ns(ROUTER);
    let a = Attacker::new(&lan.ns(ATTACKER_A), lan.addr(ATTACKER_A), ECHO_PORT);
    let b = Attacker::new(&lan.ns(ATTACKER_B), lan.addr(ATTACKER_B), ECHO_PORT);
    assert!(all_nodes(lan, nodes, &a, true), "A gets through at first");
    assert!(all_nodes(lan, nodes, &b, true), "B gets through at first");

    // 1. Over UDP: attacker A.
    brute_force(&c, &a, Via::Udp, 0.0);
    assert!(all_nodes(lan, nodes, &b, true), "B is not touched");
    let blocked_at = Instant::now();

    // 2. B's address planted in the user field, ten times, by ten real
    //    sources that fail once each; and a whole "from B port N" in the
    //    user name (the CVE-2013-7176 shape), ten times: nobody acts, B
    //    still reaches every node.
    let judged = |n: &NodeProcess| lines(n, "counted") + lines(n, "unmatched");
    let before = total(nodes, judged);
    for i in 0..10u32 {
        let to = lan.addr(i % 3 + 1);
        logger(
            &router,
            to,
            Via::Udp,
            "sshd",
            &format!(
                "Failed password for invalid user {} from 198.51.100.{} port 22 ssh2",
                b.addr,
                i + 1
            ),
        );
        logger(
            &router,
            to,
            Via::Udp,
            "sshd",
            &format!(
                "Failed password for invalid user x from {} port 22 from 198.51.100.{} port 22 ssh2",
                b.addr,
                i + 1
            ),
        );
    }
    assert!(
        wait_until(WAIT, || total(nodes, judged) >= before + 20.0),
        "every planted line judged"
    );
    assert_eq!(total(nodes, |n| lines(n, "acted")), 1.0);
    assert!(
        all_nodes(lan, nodes, &b, true),
        "the planted address still reaches every node"
    );

    // 3. Malformed and oversized messages (max_message 1024) at node 1:
    //    counted and skipped; node 1 keeps serving (case 5 starts there).
    let garbage = in_ns(&router, || UdpSocket::bind("0.0.0.0:0").expect("udp"));
    let to = (lan.addr(1), SYSLOG_PORT);
    garbage.send_to(b"hello there", to).expect("send");
    garbage
        .send_to(b"<13>1 - h sshd - - [oops x", to)
        .expect("send");
    garbage
        .send_to(
            format!("<13>1 - h sshd - - - {}", "A".repeat(2000)).as_bytes(),
            to,
        )
        .expect("send");
    let st = Command::new("ip")
        .args(["netns", "exec", &router, "logger", "--rfc5424"])
        .args([
            "-n",
            &lan.addr(1).to_string(),
            "-P",
            &SYSLOG_PORT.to_string(),
        ])
        .args(["-T", "--octet-count", "--size", "4000", "-t", "sshd"])
        .arg("B".repeat(1500))
        .status()
        .expect("logger");
    assert!(st.success());
    let n1 = &nodes[0];
    assert!(wait_until(WAIT, || metric(
        n1,
        "shoal_syslog_malformed_total{reason=\"no_pri\"}"
    ) == 1.0
        && metric(
            n1,
            "shoal_syslog_malformed_total{reason=\"bad_structured_data\"}"
        ) == 1.0
        && metric(
            n1,
            "shoal_syslog_dropped_total{reason=\"oversized\"}"
        ) == 2.0));

    // 4. After the TTL, A gets through everywhere again.
    assert!(
        wait_until(TTL + Duration::from_secs(8), || all_nodes(
            lan, nodes, &a, true
        )),
        "A gets through after the TTL"
    );
    println!(
        "A through again {:?} after the drop (ttl {TTL:?})",
        blocked_at.elapsed()
    );

    // 5. Over TCP with octet counting: attacker B.
    brute_force(&c, &b, Via::TcpOctets, 1.0);
    assert!(all_nodes(lan, nodes, &a, true), "A is not blocked again");
    let blocked_at = Instant::now();

    // 6. A /24 rule: around an outside address the /24 is blocked on every
    //    node; around A's address the /24 holds the nodes' own addresses
    //    (allowlisted by every enforcer): refused, counted, logged, and A
    //    still gets through.
    for _ in 0..2 {
        logger(
            &router,
            lan.addr(3),
            Via::Udp,
            "dovecot",
            "auth failed, 3 attempts: rip=198.51.100.77",
        );
    }
    assert!(
        wait_until(WAIT, || (1..=3)
            .all(|k| set_has(&lan.ns(k), "198.51.100.0/24"))),
        "the /24 is in every node's kernel"
    );
    for _ in 0..2 {
        logger(
            &router,
            lan.addr(1),
            Via::Udp,
            "dovecot",
            &format!("auth failed, 3 attempts: rip={}", a.addr),
        );
    }
    assert!(
        wait_until(WAIT, || total(nodes, |n| blocks(n, "refused_prefix"))
            == 1.0),
        "the allowlisted /24 is refused and counted"
    );
    assert_eq!(total(nodes, |n| blocks(n, "issued")), 3.0);
    assert_eq!(metric(n1, "shoal_responder_action_errors_total"), 1.0);
    let log = std::fs::read_to_string(&n1.log).unwrap_or_default();
    assert!(
        log.contains("responder action refused by the node") && log.contains("BlockRefused"),
        "the refusal is logged"
    );
    assert!(all_nodes(lan, nodes, &a, true), "A still gets through");

    // 7. B through again after the TTL.
    assert!(
        wait_until(TTL + Duration::from_secs(8), || all_nodes(
            lan, nodes, &b, true
        )),
        "B gets through after the TTL"
    );
    println!(
        "B through again {:?} after the drop (ttl {TTL:?})",
        blocked_at.elapsed()
    );
}

/// Percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Probes the three nodes from `src` (an address of the attacker's
/// namespace), one every 200 us in turn, from a short baseline before the
/// trigger until every node has stopped answering for 60 ms. A node
/// dropped the address at the send time of its first probe after its last
/// answered one.
struct Prober {
    sock: UdpSocket,
    targets: Vec<SocketAddr>,
}

/// One trial's reading: when `logger` was spawned and exited, and when
/// each node dropped.
struct Reading {
    spawned: Instant,
    exited: Instant,
    drops: Vec<Instant>,
}

impl Prober {
    fn new(ns: &str, src: Ipv4Addr, targets: Vec<SocketAddr>) -> Prober {
        let sock = in_ns(ns, move || UdpSocket::bind((src, 0)).expect("bind probe"));
        sock.set_nonblocking(true).expect("nonblocking");
        Prober { sock, targets }
    }

    /// Probes while `cmd` runs in another thread (spawned after a 20 ms
    /// baseline). `None` when a node did not answer before the trigger,
    /// or still answered at `deadline`.
    fn run(&self, cmd: Command, deadline: Duration) -> Option<Reading> {
        let every = Duration::from_micros(200);
        let quiet = Duration::from_millis(60);
        let n = self.targets.len();
        let mut sent: Vec<(usize, Instant)> = Vec::with_capacity(1 << 16);
        let mut last: Vec<Option<usize>> = vec![None; n];
        let mut buf = [0u8; 64];
        let start = Instant::now();
        let mut trigger: Option<(Instant, std::thread::JoinHandle<Instant>)> = None;
        let mut next = start;
        let mut cmd = Some(cmd);
        loop {
            let now = Instant::now();
            if now >= next {
                let seq = sent.len();
                let k = seq % n;
                let _ = self
                    .sock
                    .send_to(&(seq as u32).to_le_bytes(), self.targets[k]);
                sent.push((k, now));
                next = now + every;
            }
            while let Ok((m, _)) = self.sock.recv_from(&mut buf) {
                if m == 4 {
                    let seq = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if let Some(&(k, _)) = sent.get(seq) {
                        if last[k].is_none_or(|l| l < seq) {
                            last[k] = Some(seq);
                        }
                    }
                }
            }
            match &trigger {
                None if now.duration_since(start) >= Duration::from_millis(20) => {
                    if last.iter().any(Option::is_none) {
                        return None;
                    }
                    let mut cmd = cmd.take()?;
                    let t0 = Instant::now();
                    let h = std::thread::spawn(move || {
                        let st = cmd.status().expect("logger");
                        assert!(st.success(), "logger: {st}");
                        Instant::now()
                    });
                    trigger = Some((t0, h));
                }
                Some((t0, _)) => {
                    let done = now.duration_since(*t0) >= quiet
                        && last.iter().enumerate().all(|(k, l)| {
                            let l = l.unwrap_or(0);
                            now.duration_since(sent[l].1) >= quiet
                                && sent[l + 1..].iter().any(|&(kk, _)| kk == k)
                        });
                    if done || now.duration_since(*t0) > deadline {
                        let (spawned, h) = trigger.take()?;
                        let exited = h.join().ok()?;
                        if !done {
                            return None;
                        }
                        let drops = last
                            .iter()
                            .enumerate()
                            .map(|(k, l)| {
                                let l = l.unwrap_or(0);
                                sent[l + 1..]
                                    .iter()
                                    .find(|&&(kk, _)| kk == k)
                                    .map_or(now, |&(_, at)| at)
                            })
                            .collect();
                        return Some(Reading {
                            spawned,
                            exited,
                            drops,
                        });
                    }
                }
                None => {}
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// The figure for docs/benchmarks.md: trigger line to drop on every node.
/// Each trial takes a fresh address on the attacker's namespace; its
/// first `maxretry - 1` failures are sent (directly, over UDP) to the other
/// nodes beforehand; then `logger` sends the triggering line over UDP to
/// one node while the attacker probes all three with real UDP packets.
#[test]
#[ignore = "prints a figure; run as root with --ignored --nocapture"]
fn figure_trigger_line_to_drop_on_every_node() {
    if let Some(why) = skip_reason() {
        common::skip("responder_netns::figure", &why);
        return;
    }
    let trials: u32 = std::env::var("SHOAL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 120);
    let rules = r#"
[[rules]]
name = "sshd-failed"
program = "sshd"
pattern = 'Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?'
maxretry = 3
findtime_s = 3600
action = "block"
ttl_s = 600
"#;
    let _lock = netns_lock();
    let c = Cluster::up("shf", rules, 2);
    let (lan, nodes) = (&c.lan, &c.nodes);
    let (attacker, router) = (lan.ns(4), lan.ns(5));
    let addr = |t: u32| Ipv4Addr::new(10, 213, lan.subnet, 100 + t as u8);
    for t in 0..trials {
        let out = Command::new("ip")
            .args(["netns", "exec", &attacker, "ip", "addr", "add"])
            .arg(format!("{}/24", addr(t)))
            .args(["dev", "veth0"])
            .output()
            .expect("ip addr add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The first two failures of every address, on the two nodes that will
    // not see the third.
    let pre = in_ns(&router, || UdpSocket::bind("0.0.0.0:0").expect("udp"));
    for t in 0..trials {
        for j in 1..=2u32 {
            let k = (t + j) % 3;
            let line = format!(
                "<38>1 - router sshd 1 - - Failed password for root from {} port {} ssh2",
                addr(t),
                1000 + j
            );
            pre.send_to(line.as_bytes(), (lan.addr(k + 1), SYSLOG_PORT))
                .expect("send");
        }
        if t % 20 == 19 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let counted = |n: &NodeProcess| lines(n, "counted");
    assert!(
        wait_until(Duration::from_secs(10), || total(nodes, counted)
            >= f64::from(2 * trials)),
        "every early failure counted"
    );
    std::thread::sleep(Duration::from_millis(500));
    let targets: Vec<SocketAddr> = (1..=3)
        .map(|k| SocketAddr::from((lan.addr(k), ECHO_PORT)))
        .collect();
    let mut all = Vec::new();
    let mut first = Vec::new();
    let mut logger_run = Vec::new();
    let mut after_exit = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    for t in 0..trials {
        let p = Prober::new(&attacker, addr(t), targets.clone());
        let k = t % 3;
        let cmd = logger_cmd(
            &router,
            lan.addr(k + 1),
            Via::Udp,
            "sshd",
            &format!("Failed password for root from {} port 4000 ssh2", addr(t)),
        );
        match p.run(cmd, Duration::from_secs(5)) {
            Some(r) => {
                let t0 = r.spawned;
                let last = r.drops.iter().max().copied().unwrap_or(t0);
                let earliest = r.drops.iter().min().copied().unwrap_or(t0);
                all.push(last.saturating_duration_since(t0));
                first.push(earliest.saturating_duration_since(t0));
                logger_run.push(r.exited.saturating_duration_since(t0));
                // The line is out before logger exits: an upper bound on
                // send -> drop without the process start.
                after_exit.push(last.saturating_duration_since(r.exited));
            }
            None => failed += 1,
        }
    }
    let took = started.elapsed();
    for v in [&mut all, &mut first, &mut logger_run, &mut after_exit] {
        v.sort();
    }
    let issued = total(nodes, |n| blocks(n, "issued"));
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "responder trigger -> drop, {} trials ({failed} without a clean reading) in {took:?}; blocks issued {issued}; loadavg {}",
        all.len(),
        uptime.trim()
    );
    println!(
        "  logger spawned -> dropped on every node: p50 {:?} p99 {:?} max {:?}",
        pct(&all, 0.5),
        pct(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
    println!(
        "  logger spawned -> dropped on the first node: p50 {:?} p99 {:?}",
        pct(&first, 0.5),
        pct(&first, 0.99)
    );
    println!(
        "  logger spawned -> logger exited (line sent): p50 {:?} p99 {:?}",
        pct(&logger_run, 0.5),
        pct(&logger_run, 0.99)
    );
    println!(
        "  logger exited -> dropped on every node: p50 {:?} p99 {:?}",
        pct(&after_exit, 0.5),
        pct(&after_exit, 0.99)
    );
    assert_eq!(issued, f64::from(trials), "one block per address");
    assert!(
        failed * 10 <= trials,
        "{failed} of {trials} trials gave no reading"
    );
}
