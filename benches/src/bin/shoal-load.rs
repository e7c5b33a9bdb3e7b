//! Load harness: three real `shoal` processes on loopback multicast.
//!
//! 1. Throughput: a filter blasts LOAD records into node 1 as fast as its
//!    local socket takes them; nodes 2 and 3 count what they receive from
//!    node 1 and what they lost. Prints records/s delivered per node, loss,
//!    and CPU seconds per million records for every node.
//! 2. Latency: at a paced background rate (default 100k records/s) a probe
//!    record every 10 ms is sent to node 1 and node 2 is polled until the
//!    probe's value is visible in its cluster total. Prints p50/p99/max.
//!
//! Each phase runs `--runs` times; the medians are reported.
//! Usage: shoal-load [--bin target/release/shoal] [--seconds 5] [--runs 3]
//!                   [--rate 100000] [--senders 1]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_wire::{Code, Record};

/// Load harness: three real `shoal` processes on loopback multicast.
#[derive(Parser)]
struct Args {
    /// The `shoal` binary to run.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Length of each phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Runs of each phase; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Background rate of the latency phase, records/s.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Filter threads blasting node 1 in the throughput phase.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let a = Args::parse();
    if !a.bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p shoal-node`",
            a.bin.display()
        );
    }
    Ok(a)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn metric(n: &NodeProcess, sample: &str) -> f64 {
    n.metric(sample).unwrap_or(0.0)
}

fn start_cluster(bin: &Path, tag: &str) -> anyhow::Result<Vec<NodeProcess>> {
    let dir = std::env::temp_dir().join(format!("shoal-load-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (group, port) = unique_group();
    (1..=3)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = "[state]\nload_stale_ms = 60000\n".into();
            NodeProcess::spawn(bin, &spec).context("starting a node")
        })
        .collect()
}

struct Throughput {
    offered: f64,
    delivered: [f64; 2],
    loss: [f64; 2],
    cpu_per_m: [f64; 3],
}

fn throughput(a: &Args) -> anyhow::Result<Throughput> {
    let nodes = start_cluster(&a.bin, "tput")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let peer1 =
        |n: &NodeProcess, what: &str| metric(n, &format!("shoal_peer_{what}_total{{peer=\"1\"}}"));
    let before_rx: Vec<(f64, f64, f64)> = nodes[1..]
        .iter()
        .map(|n| (peer1(n, "records"), peer1(n, "datagrams"), peer1(n, "lost")))
        .collect();
    let cpu0: Vec<f64> = nodes.iter().map(|n| cpu_seconds(n.pid())).collect();
    let started = Instant::now();
    let workers: Vec<_> = (0..a.senders)
        .map(|w| {
            let mut c = nodes[0].client()?;
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            Ok(std::thread::spawn(move || {
                let mut batch: Vec<Record> = (0..64)
                    .map(|i| Record::new(Code::LOAD, [w as u64 * 1000 + i, 0, 0, 0]))
                    .collect();
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    for r in batch.iter_mut() {
                        r.fields[1] = v;
                    }
                    if c.send(&batch).is_ok() {
                        sent.fetch_add(64, Ordering::Relaxed);
                    }
                }
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let offered = sent.load(Ordering::Relaxed) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last datagrams land before reading the counters.
    let sent_by_1 = || metric(&nodes[0], "shoal_records_sent_total");
    let _ = wait_until(Duration::from_secs(2), || {
        nodes[1..]
            .iter()
            .all(|n| peer1(n, "records") >= sent_by_1())
    });
    let cpu: Vec<f64> = nodes
        .iter()
        .zip(&cpu0)
        .map(|(n, c0)| cpu_seconds(n.pid()) - c0)
        .collect();
    let mut t = Throughput {
        offered: offered / elapsed,
        delivered: [0.0; 2],
        loss: [0.0; 2],
        cpu_per_m: [0.0; 3],
    };
    for (i, n) in nodes[1..].iter().enumerate() {
        let (r0, d0, l0) = before_rx[i];
        let records = peer1(n, "records") - r0;
        let datagrams = peer1(n, "datagrams") - d0;
        let lost = peer1(n, "lost") - l0;
        t.delivered[i] = records / elapsed;
        t.loss[i] = if datagrams + lost > 0.0 {
            lost / (datagrams + lost)
        } else {
            0.0
        };
        t.cpu_per_m[i + 1] = cpu[i + 1] / (records / 1e6).max(1e-9);
    }
    t.cpu_per_m[0] = cpu[0] / (offered / 1e6).max(1e-9);
    Ok(t)
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    samples: usize,
    background: f64,
}

fn latency(a: &Args) -> anyhow::Result<Latency> {
    let nodes = start_cluster(&a.bin, "lat")?;
    const PROBE: u64 = u64::MAX - 1;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // Background load, paced in 1 ms slices of `rate / 1000` records.
    let bg = {
        let mut c = nodes[0].client()?;
        let (stop, sent, rate) = (Arc::clone(&stop), Arc::clone(&sent), a.rate);
        std::thread::spawn(move || {
            let per_ms = (rate / 1000).max(1);
            let start = Instant::now();
            let mut v = 0u64;
            let mut slice = 0u64;
            let mut batch = Vec::with_capacity(64);
            while !stop.load(Ordering::Relaxed) {
                let mut left = per_ms;
                while left > 0 {
                    batch.clear();
                    for i in 0..left.min(64) {
                        v += 1;
                        batch.push(Record::new(Code::LOAD, [v % 1000 + i % 2, v, 0, 0]));
                    }
                    left -= batch.len() as u64;
                    if c.send(&batch).is_ok() {
                        sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                }
                slice += 1;
                let due = start + Duration::from_millis(slice);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let mut probe = nodes[0].client()?;
    let mut watch = nodes[1].client()?;
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut value = 0u64;
    while started.elapsed().as_secs_f64() < a.seconds {
        value += 1;
        let t0 = Instant::now();
        probe.send(&[Record::new(Code::LOAD, [PROBE, value, 0, 0])])?;
        let seen = wait_until_spin(Duration::from_secs(1), || {
            watch
                .query(Code::QUERY_LOAD, PROBE, Duration::from_millis(100))
                .is_ok_and(|r| r.fields[1] == value)
        });
        if seen {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = bg.join();
    let background = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Latency {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: samples.last().copied().unwrap_or(f64::NAN),
        samples: samples.len(),
        background,
    })
}

/// Like `wait_until` but polling every ~20 us (plus the query's round
/// trip), so the figure's resolution is well under the 1 ms target without
/// spinning a core away from the nodes.
fn wait_until_spin(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    false
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    println!(
        "shoal-load: 3 nodes on loopback, {} s per phase, {} runs, {} sender thread(s)",
        a.seconds, a.runs, a.senders
    );
    let mut tp = Vec::new();
    for run in 1..=a.runs {
        let t = throughput(&a)?;
        println!(
            "run {run} throughput: offered {:.0} rec/s; delivered node2 {:.0} node3 {:.0} rec/s; loss {:.4}% {:.4}%; cpu s/M rec: n1 {:.3} n2 {:.3} n3 {:.3}",
            t.offered, t.delivered[0], t.delivered[1], t.loss[0] * 100.0, t.loss[1] * 100.0,
            t.cpu_per_m[0], t.cpu_per_m[1], t.cpu_per_m[2]
        );
        tp.push(t);
    }
    let mut lat = Vec::new();
    for run in 1..=a.runs {
        let l = latency(&a)?;
        println!(
            "run {run} latency at {:.0} rec/s background: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} probes)",
            l.background, l.p50_us, l.p99_us, l.max_us, l.samples
        );
        lat.push(l);
    }
    let m = |f: &dyn Fn(&Throughput) -> f64| median(tp.iter().map(f).collect());
    let ml = |f: &dyn Fn(&Latency) -> f64| median(lat.iter().map(f).collect());
    println!("\nmedians of {} runs:", a.runs);
    println!(
        "  offered to node 1          {:>12.0} records/s",
        m(&|t| t.offered)
    );
    println!(
        "  delivered per node         {:>12.0} records/s (node 2), {:.0} (node 3)",
        m(&|t| t.delivered[0]),
        m(&|t| t.delivered[1])
    );
    println!(
        "  loss                       {:>12.4} % (node 2), {:.4} % (node 3)",
        m(&|t| t.loss[0] * 100.0),
        m(&|t| t.loss[1] * 100.0)
    );
    println!(
        "  cpu per million records    {:>12.3} s (sender), {:.3} s, {:.3} s (receivers)",
        m(&|t| t.cpu_per_m[0]),
        m(&|t| t.cpu_per_m[1]),
        m(&|t| t.cpu_per_m[2])
    );
    println!(
        "  send->visible latency      p50 {:.0} us, p99 {:.0} us at {:.0} records/s",
        ml(&|l| l.p50_us),
        ml(&|l| l.p99_us),
        ml(&|l| l.background)
    );
    Ok(())
}
