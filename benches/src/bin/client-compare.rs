//! Our IPROTO client against the `tarantool-rs` crate, both behind the
//! `Tarantool` trait, on the same fresh master pair of the Tarantool under
//! test (`SHOAL_TARANTOOL`; the crate needs 2.10 or newer), in the same
//! process and run, alternating: calls/s and client CPU per call.
//!
//! Workloads, each for `--seconds` per client per run:
//! - `save`: `shoal_save` of `--rows` rows per call (the node's batch),
//!   `--in-flight` calls in flight: what the node's save loop does;
//! - `ping`: empty calls, `--in-flight` in flight: the per-request cost.
//!
//! CPU per call is this process's user + system time (getrusage) over the
//! calls made: the client's encoding, decoding and I/O, on a 2-worker
//! tokio runtime; Tarantool's CPU is not in it. Figures are medians over
//! `--runs`; the load average is printed (the machine is shared).
//!
//! ```text
//! cargo build --release -p shoal-benches --features tarantool-rs --bin client-compare
//! SHOAL_TARANTOOL=/work/tt/3.3.0/bin/tarantool target/release/client-compare --runs 3
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use shoal_tarantool::testkit::{self, Master, Pair, TempPair};
use shoal_tarantool::{Client, ClientConfig, RsClient, Tarantool};

/// Our client against tarantool-rs on the same store.
#[derive(Parser)]
struct Cli {
    /// Runs per client and workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per client, workload and run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rows per `shoal_save` call.
    #[arg(long, default_value_t = 1000)]
    rows: u64,
    /// Calls in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: u64,
    /// Calls in flight for the ping workload.
    #[arg(long, default_value_t = 64)]
    ping_in_flight: u64,
}

type Row = (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; no other precondition.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Figure {
    calls_per_s: f64,
    cpu_us_per_call: f64,
}

/// `in_flight` workers call `one(worker, n)` until the time is up.
async fn drive<C, F, Fut>(c: &C, seconds: f64, in_flight: u64, one: F) -> anyhow::Result<Figure>
where
    C: Tarantool + Clone + 'static,
    F: Fn(C, u64, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..in_flight {
        let c = c.clone();
        let one = one.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                one(c.clone(), w, n).await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        });
    }
    let mut calls = 0;
    while let Some(r) = tasks.join_next().await {
        calls += r.context("worker")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    Ok(Figure {
        calls_per_s: calls as f64 / secs,
        cpu_us_per_call: cpu * 1e6 / calls.max(1) as f64,
    })
}

async fn save<C: Tarantool + Clone + 'static>(
    c: &C,
    tag: &'static str,
    a: &Cli,
) -> anyhow::Result<Figure> {
    let rows = a.rows;
    let in_flight = a.in_flight;
    drive(c, a.seconds, in_flight, move |c: C, w, n| async move {
        let base = (n * in_flight + w) * rows;
        let batch: Vec<Row> = (base..base + rows)
            .map(|i| (u64::MAX / 2 + i, i, 7, 0x100, 2, 3, i, i, i, i))
            .collect();
        let (saved,): (u64,) = c.call("shoal_save", &(tag, &batch)).await?;
        anyhow::ensure!(saved == rows, "saved {saved} of {rows}");
        Ok(())
    })
    .await
}

async fn ping<C: Tarantool + Clone + 'static>(c: &C, a: &Cli) -> anyhow::Result<Figure> {
    drive(c, a.seconds, a.ping_in_flight, |c: C, _, _| async move {
        c.ping().await?;
        Ok(())
    })
    .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a = Cli::parse();
    anyhow::ensure!(a.runs >= 1 && a.in_flight >= 1 && a.ping_in_flight >= 1 && a.rows >= 1);
    let version = testkit::tarantool_version().context("tarantool --version")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tarantool {version} ({}); {} runs x {} s; save {} rows x {} in flight; ping x {} in flight; load average {}",
        testkit::tarantool_bin().display(),
        a.runs,
        a.seconds,
        a.rows,
        a.in_flight,
        a.ping_in_flight,
        load.trim()
    );
    let dir = std::env::temp_dir().join(format!("shoal-client-compare-{}", std::process::id()));
    let pair = TempPair::new(Pair::start(&dir).context("starting the pair")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&a, &pair))
}

async fn run(a: &Cli, pair: &Pair) -> anyhow::Result<()> {
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(10),
        max_in_flight: 4096,
        ..ClientConfig::new(pair.a.clone(), "shoal", pair.password.clone())
    };
    let ours = Client::connect(cfg.clone()).await.context("our client")?;
    let rs = RsClient::connect(&cfg).await.context("tarantool-rs")?;
    // [workload][client] -> per-run figures
    let mut fig: [[Vec<Figure>; 2]; 2] = Default::default();
    for run in 0..a.runs {
        // Alternate which client goes first, so drift of the machine or the
        // growing log does not favour one.
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for &who in &order {
            let f = if who == 0 {
                save(&ours, "ours", a).await?
            } else {
                save(&rs, "rs", a).await?
            };
            fig[0][who].push(f);
            pair.console(Master::A, "box.space.shoal_log:truncate()")
                .context("truncate")?;
            let f = if who == 0 {
                ping(&ours, a).await?
            } else {
                ping(&rs, a).await?
            };
            fig[1][who].push(f);
        }
        eprintln!("run {} of {} done", run + 1, a.runs);
    }
    println!("| workload | client | calls/s (median) | client CPU µs/call (median) | per run (calls/s; µs/call) |");
    println!("|---|---|---:|---:|---|");
    for (w, name) in [
        (
            0,
            format!("shoal_save x {} rows, {} in flight", a.rows, a.in_flight),
        ),
        (1, format!("ping, {} in flight", a.ping_in_flight)),
    ] {
        for (c, cname) in [(0, "ours"), (1, "tarantool-rs 0.0.10")] {
            let runs = &fig[w][c];
            println!(
                "| {name} | {cname} | {:.0} | {:.1} | {} |",
                median(runs.iter().map(|f| f.calls_per_s).collect()),
                median(runs.iter().map(|f| f.cpu_us_per_call).collect()),
                runs.iter()
                    .map(|f| format!("{:.0}; {:.1}", f.calls_per_s, f.cpu_us_per_call))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    Ok(())
}
