//! Verdict API harness: a real verdict-store pair (`pair.sh`, verdict
//! schema: cluster 1 on master a, cluster 2 on master b) and one real
//! `shoal` node of cluster 1. `--conns` client threads, each on one
//! keep-alive connection, post verdicts to the node as fast as it
//! acknowledges them (every 201 means the verdict is in the store's WAL)
//! for `--seconds`; the harness prints verdicts/s accepted, the request
//! latency p50/p99, and checks that the store holds every acknowledged
//! verdict. Each figure is the median of `--runs` runs.
//! Usage: shoal-verdicts [--bin target/release/shoal] [--conns 16]
//!                       [--seconds 3] [--runs 3]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use shoal_node::testkit::{unique_group, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::{Master, Pair};

const TOKEN: &str = "bench-api-token-0123456789";

/// Verdict API harness: a real verdict-store pair and one real node.
#[derive(Clone, Parser)]
struct Args {
    /// The `shoal` binary to run.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Client threads, one keep-alive connection each.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let a = Args::parse();
    if a.runs == 0 || a.conns == 0 || a.seconds <= 0.0 {
        bail!("--runs, --conns and --seconds must be positive");
    }
    Ok(a)
}

/// One request on a keep-alive connection; returns the status.
fn post(r: &mut BufReader<TcpStream>, body: &str) -> anyhow::Result<u16> {
    let req = format!(
        "POST /v1/verdicts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(status)
}

struct RunResult {
    rate: f64,
    p50: Duration,
    p99: Duration,
    accepted: u64,
}

fn run_once(node: &NodeProcess, args: &Args, base: u64) -> anyhow::Result<RunResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..args.conns)
        .map(|lane| {
            let addr = node.api.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut r = BufReader::new(TcpStream::connect(&addr)?);
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let subject = base | (lane as u64) << 32 | i;
                    let body = format!(
                        r#"{{"subject":{subject},"verdict":"bot","score":80,"ttl_s":3600,"source":"bench"}}"#
                    );
                    let t = Instant::now();
                    let status = post(&mut r, &body)?;
                    if status != 201 {
                        bail!("status {status}");
                    }
                    lat.push(t.elapsed());
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let took = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Ok(RunResult {
        rate: lat.len() as f64 / took.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        accepted: lat.len() as u64,
    })
}

fn console_number(pair: &Pair, lua: &str) -> anyhow::Result<u64> {
    let out = pair.console(Master::A, lua)?;
    out.lines()
        .find_map(|l| l.strip_prefix("- ").and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("console answered {out:?}"))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("shoal-verdicts-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pair = Pair::start_verdict(&dir.join("tt")).context("verdict store pair")?;
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, &dir);
    spec.extra = format!(
        "[verdicts]\nstore = \"{}\"\npassword = \"{}\"\napi_tokens = [\"{TOKEN}\"]\ntoken_key_id = 1\ntoken_secret = \"bench-token-secret-0123456789\"\n",
        pair.a, pair.password
    );
    let node = NodeProcess::spawn(Path::new(&args.bin), &spec)?;
    // The node connects to the store in the background and answers 503
    // until then.
    let up = shoal_node::testkit::wait_until(Duration::from_secs(10), || {
        shoal_node::http_request(
            &node.api,
            "POST",
            "/v1/verdicts",
            Some(TOKEN),
            br#"{"subject":1,"verdict":"human","ttl_s":60}"#,
        )
        .is_ok_and(|(status, _)| status == 201)
    });
    if !up {
        bail!("the node never acknowledged a verdict");
    }
    // Warm-up: first WAL writes, connections.
    run_once(
        &node,
        &Args {
            seconds: 0.5,
            ..args.clone()
        },
        1 << 60,
    )?;
    let mut results = Vec::new();
    for run in 0..args.runs {
        let r = run_once(&node, &args, (run as u64 + 1) << 56)?;
        println!(
            "run {}: {:.0} verdicts/s accepted, latency p50 {:?} p99 {:?} ({} acknowledged)",
            run + 1,
            r.rate,
            r.p50,
            r.p99,
            r.accepted
        );
        results.push(r);
    }
    let acked: u64 = results.iter().map(|r| r.accepted).sum();
    let stored = console_number(&pair, "return box.space.verdict:len()")?;
    let mut rates: Vec<f64> = results.iter().map(|r| r.rate).collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    let mut p50: Vec<Duration> = results.iter().map(|r| r.p50).collect();
    let mut p99: Vec<Duration> = results.iter().map(|r| r.p99).collect();
    p50.sort();
    p99.sort();
    println!(
        "median of {}: {:.0} verdicts/s per node, p50 {:?}, p99 {:?}, {} connections; store holds {stored} (acknowledged in measured runs: {acked})",
        args.runs,
        rates[rates.len() / 2],
        p50[p50.len() / 2],
        p99[p99.len() / 2],
        args.conns
    );
    if stored < acked {
        bail!("the store holds fewer verdicts than were acknowledged");
    }
    drop(node);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
