//! The save path against masters that fail without saying so, on a real
//! `shoal` and a real Tarantool pair (`tarantool/scripts/pair.sh`):
//!
//! - the active master stopped (SIGSTOP) under load: connected, silent;
//! - the active master's port blackholed (nft drop, no FIN/RST) inside a
//!   network namespace made for the test (root; skipped with a message
//!   otherwise);
//! - the active master `kill -9`ed under load and its data directory
//!   deleted: under `ack = "replicated"` every save the node counted as
//!   done is on the survivor.
//!
//! Each prints the time from the fault to the first batch the other
//! master saved (the failover bound in docs/store.md).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_node::LocalClient;
use shoal_tarantool::statelog::TarantoolLog;
use shoal_tarantool::testkit::{Master, Pair, TempPair};
use shoal_tarantool::{Client, ClientConfig};
use shoal_wire::{Code, Op, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(30);
/// The request timeout the nodes here run with; the failover bound is
/// this plus a scheduling margin (docs/store.md).
const REQUEST_TIMEOUT_MS: u64 = 1000;
/// What the tests accept: the bound with room for a loaded 2-core CI
/// machine. The measured figure is printed.
const BOUND: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 2_000);

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-failover-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The row ids (`f0` of the marks sent) on one master.
fn keys_on(rt: &tokio::runtime::Runtime, addr: &str, password: &str) -> BTreeSet<u64> {
    rt.block_on(async {
        let c = Client::new(ClientConfig::new(addr, "shoal", password));
        assert!(c.wait_connected(Duration::from_secs(5)).await, "connected");
        let log = TarantoolLog::new(c, shoal_tarantool::statelog::SAVE_LUA, Duration::ZERO);
        log.all_tuples()
            .await
            .expect("select")
            .iter()
            .map(|t| t.row()[6])
            .collect()
    })
}

fn store_keys(pair: &Pair, extra: &str) -> String {
    format!(
        "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\nbatch = 500\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\ndead_ms = 1000\nping_ms = 250\nfailback_ms = 1000\nreplay_timeout_ms = 3000\n{extra}\n",
        pair.a, pair.b, pair.password
    )
}

/// A filter that sends send+save marks at about `per_s` per second until
/// stopped; keys count up from 0.
struct Writer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut c: LocalClient, per_s: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            move || {
                let started = Instant::now();
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Record> = (k..k + 32)
                        .map(|key| Record {
                            op: Op::SEND_SAVE,
                            ttl_ms: 600_000,
                            ..Record::new(Code::SESSION_MARK, [key, 1 + key % 2, 0, 0])
                        })
                        .collect();
                    if c.send(&batch).is_ok() {
                        k += 32;
                        sent.store(k, Ordering::Relaxed);
                    } else {
                        // The node's socket buffer is full: let it drain.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let due = Duration::from_secs_f64(k as f64 / per_s as f64);
                    if let Some(d) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(d);
                    }
                }
            }
        });
        Writer {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many marks were sent.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer");
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one metric of a node (directly, or from inside its namespace).
type Metric<'a> = Box<dyn Fn(&str) -> Option<f64> + 'a>;

/// The pid of a master of a pair.
fn pid(pair: &Pair, m: Master) -> i32 {
    let sub = if m == Master::A { "a" } else { "b" };
    std::fs::read_to_string(pair.dir.join(sub).join("tarantool.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

/// SIGCONT on drop, so a failing test leaves no stopped master behind.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: kill(2) has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// Time from `fault` until master b has saved a batch for the node.
fn failover_time(metric: &Metric<'_>, b: &str, fault: Instant) -> Duration {
    let series = format!("shoal_store_master_batches_total{{master=\"{b}\"}}");
    let moved = wait_until(WAIT, || metric(&series).unwrap_or(0.0) > 0.0);
    assert!(moved, "saves never moved to {b}");
    fault.elapsed()
}

/// Saves under load, a fault on the active master a (`fault` returns a
/// guard that ends it), then: saves move to b within the bound, nothing
/// the filter sent is lost or refused, and once the fault ends a is taken
/// back. Returns the measured failover time.
fn fail_over<G>(
    metric: &Metric<'_>,
    client: LocalClient,
    pair: &Pair,
    fault: impl FnOnce() -> G,
) -> Duration {
    let m = |name: &str| metric(name).unwrap_or(-1.0) as u64;
    let writer = Writer::start(client, 8_000);
    assert!(
        wait_until(WAIT, || m("shoal_store_saved_total") > 5_000),
        "saving before the fault: {}",
        m("shoal_store_saved_total")
    );
    let b_batches = format!("shoal_store_master_batches_total{{master=\"{}\"}}", pair.b);
    assert_eq!(m(&b_batches), 0, "a is the active master");
    let at = Instant::now();
    let guard = fault();
    let took = failover_time(metric, &pair.b, at);
    std::thread::sleep(Duration::from_millis(1_500));
    let sent = writer.finish();
    assert!(
        wait_until(WAIT, || m("shoal_store_saved_total") == sent),
        "saved {} of {sent} with a silent",
        m("shoal_store_saved_total")
    );
    assert_eq!(m("shoal_store_refused_total"), 0);
    assert!(m("shoal_store_suspects_total") >= 1);
    assert!(m("shoal_store_failovers_total") >= 1);
    drop(guard);
    let a_active = format!("shoal_store_master_active{{master=\"{}\"}}", pair.a);
    assert!(
        wait_until(WAIT, || m(&a_active) == 1),
        "a taken back once it answers"
    );
    took
}

fn spec(dir: &Path, pair: &Pair, extra: &str) -> NodeSpec {
    let (group, port) = unique_group();
    let mut s = NodeSpec::loopback(1, group, port, dir);
    s.extra = store_keys(pair, extra);
    s
}

#[test]
fn a_stopped_master_is_failed_over_from_within_the_bound() {
    let dir = tempdir("sigstop");
    let pair = TempPair::new(Pair::start(&dir.join("tt")).expect("tarantool pair"));
    let n = NodeProcess::spawn(Path::new(BIN), &spec(&dir, &pair, "")).expect("node starts");
    let metric: Metric<'_> = Box::new(|name| n.metric(name));
    let took = fail_over(&metric, n.client().expect("client"), &pair, || {
        Stopped::new(pid(&pair, Master::A))
    });
    println!(
        "FIGURE sigstop failover: {} ms from SIGSTOP of the active master to the first batch saved on the other (request_timeout_ms = {REQUEST_TIMEOUT_MS})",
        took.as_millis()
    );
    assert!(took <= BOUND, "failover took {took:?}, bound {BOUND:?}");
    drop(metric);
    drop(n);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch the node counted as saved is on the survivor although the
/// master that acknowledged it died with its disk. The survivor lags
/// first (stopped for `LAG`, as a loaded peer falls behind): under `local`
/// the active master acknowledges what only it has; under `replicated`
/// those batches wait for the survivor (`ack_timeout_ms` above the lag),
/// fail with the killed master, and are saved again on the survivor.
fn kill_with_a_lagging_peer(ack: &str) -> (u64, u64, Vec<u64>) {
    const LAG: Duration = Duration::from_millis(1_500);
    let dir = tempdir(&format!("killdisk-{ack}"));
    let pair = TempPair::new(Pair::start(&dir.join("tt")).expect("tarantool pair"));
    let rt = rt();
    let extra = format!("ack = \"{ack}\"\nack_timeout_ms = 3000");
    let mut s = spec(&dir, &pair, &extra);
    s.extra = s.extra.replace(
        &format!("request_timeout_ms = {REQUEST_TIMEOUT_MS}"),
        "request_timeout_ms = 5000",
    );
    let n = NodeProcess::spawn(Path::new(BIN), &s).expect("node starts");
    let m = |name: &str| n.metric(name).unwrap_or(-1.0) as u64;
    assert_eq!(
        m("shoal_store_ack_replicated"),
        u64::from(ack == "replicated")
    );
    let writer = Writer::start(n.client().expect("client"), 100_000);
    assert!(wait_until(WAIT, || m("shoal_store_saved_total") > 20_000));
    let lagging = Stopped::new(pid(&pair, Master::B));
    std::thread::sleep(LAG);
    pair.kill(Master::A).expect("kill -9 a");
    let saved_at_kill = m("shoal_store_saved_total");
    std::fs::remove_dir_all(pair.dir.join("a")).expect("a's data directory deleted");
    drop(lagging);
    std::thread::sleep(Duration::from_millis(500));
    let sent = writer.finish();
    assert!(
        wait_until(WAIT, || m("shoal_store_saved_total") == sent),
        "saved {} of {sent}",
        m("shoal_store_saved_total")
    );
    let on_b = keys_on(&rt, &pair.b, &pair.password);
    let missing: Vec<u64> = (0..sent).filter(|k| !on_b.contains(k)).collect();
    println!(
        "kill -9 + disk lost, ack {ack}: {saved_at_kill} saves done at the kill, {sent} in all, {} missing on the survivor, {} ack fallbacks",
        missing.len(),
        m("shoal_store_ack_fallbacks_total")
    );
    drop(n);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    (saved_at_kill, sent, missing)
}

/// The same under `local`, today's behaviour before `replicated`: the
/// acknowledged tail is lost (80–110 k of ~400 k saves on the 2-core VM).
/// The check that the test below fails without the fix; run it with
/// `--ignored`.
#[test]
#[ignore = "shows the loss under ack = local; run by hand with --ignored"]
fn kill_9_with_the_disk_lost_loses_local_saves() {
    let (_, _, missing) = kill_with_a_lagging_peer("local");
    assert!(!missing.is_empty(), "nothing lost under local");
}

#[test]
fn kill_9_with_the_disk_lost_loses_no_replicated_save() {
    let (_, _, missing) = kill_with_a_lagging_peer("replicated");
    assert!(
        missing.is_empty(),
        "{} saves counted as done are not on the survivor (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

// ------------------------------------------------------ the namespace one

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` missing (apt-get install nftables iproute2 python3)"
            ));
        }
    }
    None
}

/// A network namespace with only loopback, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("shoalfo{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(c: &mut Command) {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A metric of a node inside `ns`, read from inside it.
fn ns_metric(ns: &Netns, http: &str, name: &str) -> Option<f64> {
    let out = ns
        .exec()
        .args([
            "python3",
            "-c",
            "import sys,urllib.request;print(urllib.request.urlopen('http://'+sys.argv[1]+'/metrics',timeout=2).read().decode())",
            http,
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Drops every TCP segment to or from master a's port inside the
/// namespace: no FIN, no RST, silence. Removed on drop.
struct Blackhole<'a>(&'a Netns);

impl<'a> Blackhole<'a> {
    fn new(ns: &'a Netns, port: &str) -> Blackhole<'a> {
        let rules = format!(
            "add table inet shoalfo; add chain inet shoalfo out {{ type filter hook output priority 0; }}; add rule inet shoalfo out tcp dport {port} drop; add rule inet shoalfo out tcp sport {port} drop"
        );
        run(ns.exec().args(["nft", &rules]));
        Blackhole(ns)
    }
}

impl Drop for Blackhole<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .exec()
            .args(["nft", "delete table inet shoalfo"])
            .output();
    }
}

#[test]
fn a_blackholed_master_is_failed_over_from_within_the_bound() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED a_blackholed_master_is_failed_over_from_within_the_bound: {why}");
        return;
    }
    // One namespace test of the project at a time.
    let lock = std::fs::File::create("/tmp/shoal-netns.lock").expect("lock file");
    let _lock = flock(&lock);
    let ns = Netns::new();
    let dir = tempdir("blackhole");
    let tt = dir.join("tt");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tarantool/scripts/pair.sh");
    run(ns.exec().arg("bash").arg(&script).arg("start").arg(&tt));
    // The pair runs in the namespace; this handle reads its env and
    // stops it (by pid) but does not own it.
    let pair = Pair::attach(&tt).expect("pair env");
    struct StopPair<'a>(&'a Pair);
    impl Drop for StopPair<'_> {
        fn drop(&mut self) {
            let _ = self.0.stop(Master::A);
            let _ = self.0.stop(Master::B);
        }
    }
    let _stop = StopPair(&pair);
    let mut s = spec(&dir, &pair, "");
    s.netns = Some(ns.0.clone());
    s.group = Ipv4Addr::new(239, 77, 1, 1);
    let n = NodeProcess::spawn(Path::new(BIN), &s).expect("node starts in the namespace");
    let metric: Metric<'_> = Box::new(|name| ns_metric(&ns, &n.admin, name));
    let port = pair.a.rsplit(':').next().expect("port").to_string();
    let took = fail_over(&metric, n.client().expect("client"), &pair, || {
        Blackhole::new(&ns, &port)
    });
    println!(
        "FIGURE blackhole failover: {} ms from dropping the active master's port to the first batch saved on the other (request_timeout_ms = {REQUEST_TIMEOUT_MS})",
        took.as_millis()
    );
    assert!(took <= BOUND, "failover took {took:?}, bound {BOUND:?}");
    drop(metric);
    drop(n);
    drop(_stop);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An exclusive `flock` held until the returned guard drops.
fn flock(f: &std::fs::File) -> impl Drop + '_ {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on an open descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock");
    struct Unlock<'a>(&'a std::fs::File);
    impl Drop for Unlock<'_> {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe {
                libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
            }
        }
    }
    Unlock(f)
}
