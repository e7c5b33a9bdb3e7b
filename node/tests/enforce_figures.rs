//! Figures for `docs/benchmarks.md` (enforcement), printed, never
//! asserted: run as root in release,
//! `cargo test --release -p shoal-node --test enforce_figures -- --ignored --nocapture --test-threads 1`.
//!
//! - `kernel_load`: 1 M IPv4 /32 elements (`SHOAL_FIG_N`) through the
//!   netlink edge in batches of 50 k (one transaction each) and as one
//!   transaction, the read-back of 1 M, the kernel memory they take
//!   (`SUnreclaim` delta at load and at removal), the same elements loaded
//!   with `nft -f` and with `ipset restore` in the same run; several runs
//!   (`SHOAL_FIG_RUNS`, default 3), medians and same-run ratios; and the
//!   sans-IO plan for 1 M blocks.
//! - `block_to_drop`: three nodes in namespaces; the time from a BLOCK on
//!   node 1's local socket to the element in every node's kernel.
// Timing needs the clock.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_core::enforce::{Batch, EnforceRules, Enforcer};
use shoal_node::nft::{HookPoint, Nft, TableSpec};
use shoal_node::testkit::{wait_until, NodeProcess, NodeSpec};
use shoal_wire::{Code, Op, Prefix, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// Elements loaded (`SHOAL_FIG_N`, default 1 M).
fn n() -> u32 {
    std::env::var("SHOAL_FIG_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}
const BATCH: usize = 50_000;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The i-th test address: every other address from 11.0.0.0, so no two
/// elements are adjacent.
fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 + 2 * i)
}

fn sunreclaim_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("SUnreclaim:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn timed(what: &str, cmd: &mut Command) -> Option<Duration> {
    let t = Instant::now();
    match cmd.output() {
        Ok(o) if o.status.success() => Some(t.elapsed()),
        Ok(o) => {
            println!("{what}: failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            println!("SKIPPED {what}: {e}");
            None
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct LoadRun {
    load: Duration,
    one_batch: Duration,
    read: Duration,
    mem_kb: u64,
    freed_kb: u64,
    nft: Option<Duration>,
    ipset: Option<Duration>,
    during_p50: Duration,
    during_max: Duration,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

struct EdgeRun {
    load: Duration,
    one: Duration,
    read: Duration,
    mem: u64,
    freed: u64,
    /// Single-element batches applied while the read ran: count, p50, max.
    during: (usize, Duration, Duration),
}

/// Loads `plan` through the netlink edge in a fresh table of namespace
/// `ns`: in batches of `BATCH`, read back, removed (memory freed), then
/// loaded again as one transaction (what the enforcer does at start).
fn edge_run(ns: &str, plan: &Batch) -> EdgeRun {
    let ns = ns.to_string();
    let plan = plan.clone();
    std::thread::spawn(move || {
        let f = File::open(format!("/run/netns/{ns}")).expect("netns");
        // SAFETY: joins this thread to the namespace of a valid fd.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut nft = Nft::open(TableSpec {
            table: "shoal".into(),
            hook: HookPoint::Prerouting,
            priority: -300,
        })
        .expect("open");
        nft.setup().expect("setup");
        let before = sunreclaim_kb();
        let t = Instant::now();
        for chunk in plan.adds.chunks(BATCH) {
            let b = Batch {
                adds: chunk.to_vec(),
                ..Batch::default()
            };
            nft.apply(&b, &[]).expect("apply");
        }
        let load = t.elapsed();
        let mem = sunreclaim_kb().saturating_sub(before);
        // The read-back on a second socket (as the enforcer's reader thread
        // does) while single-element batches go in on the first: how long
        // one takes while a large read runs.
        let reader_ns = File::open(format!("/run/netns/{ns}")).expect("netns");
        let reading = std::thread::spawn(move || {
            // SAFETY: joins this thread to the namespace of a valid fd.
            assert_eq!(
                unsafe { libc::setns(reader_ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut r = Nft::open(TableSpec {
                table: "shoal".into(),
                hook: HookPoint::Prerouting,
                priority: -300,
            })
            .expect("open");
            let t = Instant::now();
            let rb = r.read().expect("read");
            (t.elapsed(), rb.elements.len())
        });
        let mut during = Vec::new();
        let extra = Instant::now() + Duration::from_secs(600);
        let mut k = 0u32;
        while !reading.is_finished() {
            let p = Prefix::from(Ipv4Addr::new(100, 64, (k >> 8) as u8, k as u8));
            k += 1;
            let b = Batch {
                adds: vec![(p, Duration::from_secs(600), extra)],
                ..Batch::default()
            };
            let t = Instant::now();
            nft.apply(&b, &[]).expect("apply during the read");
            during.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        let (read, seen) = reading.join().expect("reader");
        assert!(seen >= plan.adds.len(), "{seen} of {}", plan.adds.len());
        during.sort();
        let during_p50 = during.get(during.len() / 2).copied().unwrap_or_default();
        let during_max = during.last().copied().unwrap_or_default();
        let full = sunreclaim_kb();
        nft.remove_table().expect("remove");
        // Elements are freed after an RCU grace period.
        std::thread::sleep(Duration::from_secs(2));
        let freed = full.saturating_sub(sunreclaim_kb());
        nft.setup().expect("setup");
        let t = Instant::now();
        nft.apply(&plan, &[]).expect("apply as one transaction");
        let one = t.elapsed();
        nft.remove_table().expect("remove");
        EdgeRun {
            load,
            one,
            read,
            mem,
            freed,
            during: (during.len(), during_p50, during_max),
        }
    })
    .join()
    .expect("thread")
}

#[test]
#[ignore = "prints figures; run as root in release"]
fn kernel_load() {
    if !root() {
        println!("SKIPPED kernel_load: needs root");
        return;
    }
    #[allow(non_snake_case)]
    let N = n();
    let runs: usize = std::env::var("SHOAL_FIG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // The sans-IO plan for N live blocks (IPv4 /32: the hash set).
    let now = Instant::now();
    let blocks: Vec<(Prefix, Instant)> = (0..N)
        .map(|i| (Prefix::from(addr(i)), now + Duration::from_secs(600)))
        .collect();
    let mut enf = Enforcer::new(
        EnforceRules {
            max_elements: N as usize,
            ..EnforceRules::default()
        },
        false,
    );
    let t = Instant::now();
    let desired = enf.desired(now, blocks.iter().copied());
    let plan = enf.plan(now, &desired, None).expect("a batch");
    println!(
        "core: desired + plan for {} blocks: {:?}",
        plan.adds.len(),
        t.elapsed()
    );

    // The same elements for nft -f (one file: one transaction, into a
    // timeout hash set like the edge's) and ipset restore (hash:ip with
    // timeouts).
    let dir = std::env::temp_dir().join(format!("shoal-fig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let nft_file = dir.join("load.nft");
    {
        let mut f = std::io::BufWriter::new(File::create(&nft_file).expect("file"));
        writeln!(f, "add table inet t").ok();
        writeln!(f, "add set inet t a {{ type ipv4_addr; flags timeout; }}").ok();
        for c in (0..N).collect::<Vec<_>>().chunks(BATCH) {
            write!(f, "add element inet t a {{ ").ok();
            for (k, i) in c.iter().enumerate() {
                let sep = if k == 0 { "" } else { ", " };
                write!(f, "{sep}{} timeout 600s", addr(*i)).ok();
            }
            writeln!(f, " }}").ok();
        }
    }
    let ipset_file = dir.join("load.ipset");
    {
        let mut f = std::io::BufWriter::new(File::create(&ipset_file).expect("file"));
        writeln!(
            f,
            "create s hash:ip family inet maxelem {} timeout 600",
            2 * N
        )
        .ok();
        for i in 0..N {
            writeln!(f, "add s {}", addr(i)).ok();
        }
    }

    let mut rows = Vec::new();
    for run in 0..runs {
        let ns = format!("shoalfig{}r{run}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip")
            .success());
        let e = edge_run(&ns, &plan);
        let (load, one_batch, read, mem_kb, freed_kb) = (e.load, e.one, e.read, e.mem, e.freed);
        let nft = timed(
            "nft -f",
            Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "-f"])
                .arg(&nft_file),
        );
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "delete", "table", "inet", "t"])
            .output();
        let ipset = timed(
            "ipset restore",
            Command::new("sh").arg("-c").arg(format!(
                "ip netns exec {ns} ipset restore < {}",
                ipset_file.display()
            )),
        );
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "ipset", "destroy", "s"])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let r = LoadRun {
            load,
            one_batch,
            read,
            mem_kb,
            freed_kb,
            nft,
            ipset,
            during_p50: e.during.1,
            during_max: e.during.2,
        };
        println!(
            "run {run}: edge {N} in batches of {BATCH}: {:.2} s ({:.0}/s); one transaction {:.2} s; \
             read-back {:.2} s ({} one-element batches meanwhile: p50 {:?} max {:?}); SUnreclaim +{} MiB at load, -{} MiB at removal; nft -f {:?}; ipset restore {:?}",
            load.as_secs_f64(),
            N as f64 / load.as_secs_f64(),
            one_batch.as_secs_f64(),
            read.as_secs_f64(),
            e.during.0,
            e.during.1,
            e.during.2,
            mem_kb / 1024,
            freed_kb / 1024,
            nft.map(|d| d.as_secs_f64()),
            ipset.map(|d| d.as_secs_f64()),
        );
        rows.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med = |f: &dyn Fn(&LoadRun) -> Option<f64>| median(rows.iter().filter_map(f).collect());
    println!(
        "medians of {runs} runs, {N} IPv4 addresses, load average {}",
        loadavg()
    );
    println!(
        "  netlink edge, batches of {BATCH}: {:.2} s = {:.0} elements/s",
        med(&|r| Some(r.load.as_secs_f64())),
        med(&|r| Some(N as f64 / r.load.as_secs_f64()))
    );
    println!(
        "  netlink edge, one transaction: {:.2} s = {:.0} elements/s",
        med(&|r| Some(r.one_batch.as_secs_f64())),
        med(&|r| Some(N as f64 / r.one_batch.as_secs_f64()))
    );
    println!(
        "  read-back of {N}: {:.2} s",
        med(&|r| Some(r.read.as_secs_f64()))
    );
    println!(
        "  a one-element batch while the read-back runs (another socket): p50 {:.1} ms, max {:.1} ms",
        med(&|r| Some(r.during_p50.as_secs_f64() * 1e3)),
        med(&|r| Some(r.during_max.as_secs_f64() * 1e3))
    );
    println!(
        "  kernel memory (SUnreclaim): +{:.0} bytes/element at load, {:.0} bytes/element freed at removal",
        med(&|r| Some(r.mem_kb as f64 * 1024.0 / N as f64)),
        med(&|r| Some(r.freed_kb as f64 * 1024.0 / N as f64))
    );
    println!(
        "  nft -f: {:.2} s, {:.2}x the edge's batched time (same-run ratio)",
        med(&|r| r.nft.map(|d| d.as_secs_f64())),
        med(&|r| r.nft.map(|d| d.as_secs_f64() / r.load.as_secs_f64()))
    );
    println!(
        "  ipset restore: {:.2} s, {:.2}x the edge's batched time (same-run ratio)",
        med(&|r| r.ipset.map(|d| d.as_secs_f64())),
        med(&|r| r.ipset.map(|d| d.as_secs_f64() / r.load.as_secs_f64()))
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "prints figures; run as root in release"]
fn block_to_drop() {
    if !root() {
        println!("SKIPPED block_to_drop: needs root");
        return;
    }
    let lock = File::create("/tmp/shoal-netns.lock").expect("lock");
    // SAFETY: flock on a valid fd, released with it.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let prefix = format!("shf{}", std::process::id() % 10_000);
    let subnet = (std::process::id() % 200) as u8 + 22;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns.sh");
    let up = Command::new("bash")
        .arg(&script)
        .args(["up", &prefix, "3"])
        .env("SHOAL_NETNS_SUBNET", subnet.to_string())
        .status()
        .expect("netns.sh");
    assert!(up.success());
    let dir = std::env::temp_dir().join(format!("shoal-fig-b-{}", std::process::id()));
    let nodes: Vec<NodeProcess> = (1..=3u32)
        .map(|k| {
            let mut spec = NodeSpec::loopback(k, Ipv4Addr::new(239, 77, 12, 1), 7712, &dir);
            spec.interface = Ipv4Addr::new(10, 213, subnet, k as u8);
            spec.netns = Some(format!("{prefix}{k}"));
            spec.extra = "[enforce]\nreconcile_ms = 60000\n".into();
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node")
        })
        .collect();
    // A netlink socket in each node's namespace, to watch its kernel.
    let mut watchers: Vec<Nft> = (1..=3)
        .map(|k| {
            let ns = format!("/run/netns/{prefix}{k}");
            std::thread::spawn(move || {
                let f = File::open(ns).expect("netns");
                // SAFETY: joins this thread to the namespace of a valid fd.
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                Nft::open(TableSpec {
                    table: "shoal".into(),
                    hook: HookPoint::Prerouting,
                    priority: -300,
                })
                .expect("open")
            })
            .join()
            .expect("thread")
        })
        .collect();
    let mut client = nodes[0].client().expect("client");
    let mut all = Vec::new();
    for i in 0..200u32 {
        let p = Prefix::from(Ipv4Addr::new(
            198,
            51,
            100 + (i / 250) as u8,
            (i % 250) as u8 + 1,
        ));
        let [f0, f1, f2] = p.to_fields(0);
        let mut r = Record::new(Code::BLOCK, [f0, f1, f2, 0]);
        r.ttl_ms = 600_000;
        r.op = Op::SEND_SAVE;
        let t = Instant::now();
        client.send(&[r]).expect("send");
        let mut seen = [false; 3];
        assert!(wait_until(Duration::from_secs(5), || {
            for (k, w) in watchers.iter_mut().enumerate() {
                if !seen[k] {
                    seen[k] = w
                        .read()
                        .is_ok_and(|rb| rb.elements.iter().any(|o| o.prefix == p));
                }
            }
            seen.iter().all(|s| *s)
        }));
        all.push(t.elapsed());
    }
    all.sort();
    println!(
        "block on node 1 -> element in all 3 nodes' kernels ({} blocks, polled by netlink read-back): p50 {:?} p99 {:?} max {:?}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all[all.len() - 1]
    );
    drop(nodes);
    for k in 1..=3 {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{prefix}{k}"),
                "nft",
                "delete",
                "table",
                "inet",
                "shoal",
            ])
            .output();
    }
    let _ = Command::new("bash")
        .arg(&script)
        .args(["down", &prefix, "3"])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}
