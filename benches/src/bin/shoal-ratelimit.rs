//! Rate-limit harness: real `shoal` processes on loopback multicast,
//! filters asking their own sidecar (`QUERY_LIMIT`, batched).
//!
//! 1. `decisions`: one node, `--threads` filter threads each sending
//!    batches of `--batch` questions (keys drawn from 1 M, one heavy key)
//!    as fast as replies come. Prints decisions/s per node, the round trip
//!    of a batch (p50, p99: a decision waits for its whole batch) and the
//!    node's CPU seconds per million decisions.
//! 2. `flood`: one node, `--keys` unique keys (10 M by default) offered as
//!    fast as the node answers, one heavy key in every batch. Prints the
//!    node's RSS every 10 % of the flood (memory must stay flat), the rate
//!    of decisions, and what the heavy key got against its limit.
//! 3. `converge`: three nodes; a key never seen is offered at 10x its limit
//!    spread over the three. Prints, per 50 ms window, the rate admitted
//!    cluster-wide, and the time until it stays within 10 % of the limit.
//!
//! Usage: shoal-ratelimit [--bin target/release/shoal] [decisions|flood|converge|all]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use shoal_core::keyrate::name_id;
use shoal_node::testkit::{unique_group, NodeProcess, NodeSpec};
use shoal_node::{LimitDecision, LimitHit, LocalClient};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Decisions,
    Flood,
    Converge,
    All,
}

/// Rate-limit harness: real `shoal` processes, batched local-API decisions.
#[derive(Parser)]
struct Args {
    #[arg(value_enum, default_value = "all")]
    phase: Phase,
    /// The `shoal` binary to run.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Length of the decisions phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Filter threads in the decisions phase.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Questions per datagram (1..=64).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Keys the decisions phase draws from (the limit counts 65 536: a
    /// larger space makes most questions evict a key, the worst case).
    #[arg(long, default_value_t = 1_000_000)]
    key_space: u64,
    /// Unique keys of the flood.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const LIMITS: &str = "[[limits]]\nname = \"conn\"\nkey = \"opaque\"\nrate = 1000\nburst = 100\nmax_keys = 65536\nidle_ms = 10000\n";
const HEAVY: u64 = 0xfeed_f00d;

fn start(bin: &Path, tag: &str, n: u32) -> anyhow::Result<Vec<NodeProcess>> {
    let dir = std::env::temp_dir().join(format!("shoal-rl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (group, port) = unique_group();
    (1..=n)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = LIMITS.to_string();
            NodeProcess::spawn(bin, &spec).with_context(|| format!("node {id}"))
        })
        .collect()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Resident set size of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn decisions(a: &Args) -> anyhow::Result<()> {
    let nodes = start(&a.bin, "decisions", 1)?;
    let node = &nodes[0];
    let id = name_id("conn");
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let go = Arc::new(Barrier::new(a.threads + 1));
    let batch = a.batch.clamp(1, 64);
    let handles: Vec<_> = (0..a.threads)
        .map(|t| {
            let mut c = node.client().context("client")?;
            let (stop, total, go) = (stop.clone(), total.clone(), go.clone());
            let key_space = a.key_space.max(1);
            Ok(std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t as u64);
                let mut hits = vec![
                    LimitHit {
                        limit: id,
                        key: 0,
                        n: 1
                    };
                    batch
                ];
                let mut out = Vec::with_capacity(64);
                let mut rtt_us = Vec::with_capacity(1 << 20);
                go.wait();
                while !stop.load(Ordering::Relaxed) {
                    for (i, h) in hits.iter_mut().enumerate() {
                        h.key = if i == 0 {
                            HEAVY
                        } else {
                            rng.next() % key_space
                        };
                    }
                    let t0 = Instant::now();
                    if c.limit_hits(&hits, &mut out, Duration::from_secs(2))
                        .is_err()
                    {
                        break;
                    }
                    rtt_us.push(t0.elapsed().as_micros() as u64);
                    total.fetch_add(out.len() as u64, Ordering::Relaxed);
                }
                rtt_us
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    go.wait();
    let cpu0 = cpu_seconds(node.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    let n = total.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(node.pid()) - cpu0;
    stop.store(true, Ordering::Relaxed);
    let mut rtt: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    rtt.sort_unstable();
    println!(
        "decisions: {:.0}/s per node ({} threads, batches of {batch}, keys from {}); batch round trip p50 {} us, p99 {} us, max {} us; node CPU {:.2} s per million decisions",
        n as f64 / secs,
        a.threads,
        a.key_space,
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99),
        rtt.last().copied().unwrap_or(0),
        cpu / (n as f64 / 1e6),
    );
    let allowed = node
        .metric("shoal_limit_allowed_total{limit=\"conn\"}")
        .unwrap_or(0.0);
    println!("  (node counted {allowed:.0} allowed)");
    Ok(())
}

fn flood(a: &Args) -> anyhow::Result<()> {
    let nodes = start(&a.bin, "flood", 1)?;
    let node = &nodes[0];
    let id = name_id("conn");
    let mut c: LocalClient = node.client().context("client")?;
    let mut hits = vec![
        LimitHit {
            limit: id,
            key: 0,
            n: 1
        };
        64
    ];
    let mut out = Vec::with_capacity(64);
    let (mut next_key, mut heavy_offered, mut heavy_allowed) = (1u64 << 40, 0u64, 0u64);
    let step = (a.keys / 10).max(1);
    let t0 = Instant::now();
    println!("flood: {} unique keys, one heavy key in every batch of 64 (limit 1000/s, burst 100), max_keys 65536", a.keys);
    println!(
        "  {:>10} {:>10} {:>10} {:>12} {:>14}",
        "keys", "seconds", "RSS MiB", "decisions/s", "heavy allowed/s"
    );
    println!("  {:>10} {:>10.1} {:>10.1}", 0, 0.0, rss_mib(node.pid()));
    let mut mark = step;
    let mut since = Instant::now();
    let mut done_since = 0u64;
    let (mut heavy_since, mut heavy_t) = (0u64, Instant::now());
    let end = (1u64 << 40) + a.keys;
    while next_key < end {
        hits[0].key = HEAVY;
        for h in hits.iter_mut().skip(1) {
            h.key = next_key;
            next_key += 1;
        }
        c.limit_hits(&hits, &mut out, Duration::from_secs(2))
            .context("decisions")?;
        done_since += out.len() as u64;
        heavy_offered += 1;
        if out[0] == LimitDecision::Allow {
            heavy_allowed += 1;
        }
        let flooded = next_key - (1u64 << 40);
        if flooded >= mark {
            let now = Instant::now();
            println!(
                "  {:>10} {:>10.1} {:>10.1} {:>12.0} {:>14.0}",
                flooded,
                t0.elapsed().as_secs_f64(),
                rss_mib(node.pid()),
                done_since as f64 / now.duration_since(since).as_secs_f64(),
                (heavy_allowed - heavy_since) as f64 / now.duration_since(heavy_t).as_secs_f64()
            );
            since = now;
            done_since = 0;
            heavy_since = heavy_allowed;
            heavy_t = now;
            mark += step;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "  heavy key: offered {heavy_offered} ({:.0}/s), allowed {heavy_allowed} ({:.0}/s, limit 1000/s + burst 100)",
        heavy_offered as f64 / secs,
        heavy_allowed as f64 / secs
    );
    for s in ["limit_keys", "limit_evictions_total"] {
        let v = node
            .metric(&format!("shoal_{s}{{limit=\"conn\"}}"))
            .unwrap_or(0.0);
        println!("  {s}: {v:.0}");
    }
    Ok(())
}

fn converge(a: &Args) -> anyhow::Result<()> {
    let nodes = start(&a.bin, "converge", 3)?;
    let id = name_id("conn");
    // Let the nodes hear of each other (loads every 100 ms) first.
    let stop = Arc::new(AtomicBool::new(false));
    let limit = 1000.0;
    let window = Duration::from_millis(50);
    // 3 s judged; the last 10 windows only keep the others company while
    // the three filters stop.
    let windows = 70;
    let judged = 60;
    let go = Arc::new(Barrier::new(3));
    let key = 0xc0ff_ee00 + u64::from(std::process::id());
    let per_node = 10.0 * limit / 3.0;
    let counts: Vec<Vec<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (go, stop) = (go.clone(), stop.clone());
                s.spawn(move || -> anyhow::Result<Vec<u64>> {
                    let mut c = n.client()?;
                    let mut out = Vec::new();
                    for _ in 0..5 {
                        c.send(&[shoal_wire::Record::new(
                            shoal_wire::Code::LOAD,
                            [1, 1, 0, 0],
                        )])?;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let mut admitted = vec![0u64; windows];
                    go.wait();
                    let start = Instant::now();
                    let mut carry = 0.0;
                    let mut last = start;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        let w = (now.duration_since(start).as_nanos() / window.as_nanos()) as usize;
                        if w >= windows {
                            break;
                        }
                        if w % 2 == 0 {
                            c.send(&[shoal_wire::Record::new(
                                shoal_wire::Code::LOAD,
                                [1, 1, 0, 0],
                            )])?;
                        }
                        carry += per_node * now.duration_since(last).as_secs_f64();
                        last = now;
                        let k = (carry as usize).min(64);
                        carry -= k as f64;
                        if k > 0 {
                            let hits = vec![
                                LimitHit {
                                    limit: id,
                                    key,
                                    n: 1
                                };
                                k
                            ];
                            c.limit_hits(&hits, &mut out, Duration::from_secs(2))?;
                            admitted[w] +=
                                out.iter().filter(|d| **d == LimitDecision::Allow).count() as u64;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Ok(admitted)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("filter").unwrap_or_default())
            .collect()
    });
    stop.store(true, Ordering::Relaxed);
    let per_window: Vec<f64> = (0..windows)
        .map(|w| {
            counts
                .iter()
                .map(|c| c.get(w).copied().unwrap_or(0))
                .sum::<u64>() as f64
                / window.as_secs_f64()
        })
        .collect();
    println!("converge: a new key at 10x its limit ({limit}/s, burst 100) over 3 nodes; admitted cluster-wide per 50 ms window (/s):");
    let line: Vec<String> = per_window[..judged]
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect();
    println!("  {}", line.join(" "));
    // The first window after which every 200 ms average stays within 10 %.
    let avg = |w: usize| per_window[w..w + 4].iter().sum::<f64>() / 4.0;
    let settled =
        (0..judged - 4).find(|&w| (w..judged - 4).all(|v| (avg(v) - limit).abs() <= 0.1 * limit));
    match settled {
        Some(w) => println!("  limited cluster-wide (200 ms averages within 10 % of the limit from then on) after {} ms", w * 50),
        None => println!("  never settled within 10 % in {} ms", judged * 50),
    }
    let _ = a;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p shoal-node`",
            a.bin.display()
        );
    }
    if matches!(a.phase, Phase::Decisions | Phase::All) {
        decisions(&a)?;
    }
    if matches!(a.phase, Phase::Converge | Phase::All) {
        converge(&a)?;
    }
    if matches!(a.phase, Phase::Flood | Phase::All) {
        flood(&a)?;
    }
    Ok(())
}
