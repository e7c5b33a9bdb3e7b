//! Expiry comparison: Shoal's native expirer against Lua expirationd on the
//! same workload and the same Tarantool.
//!
//! Each run is a fresh standalone Tarantool in a temporary directory,
//! running `expiry-compare.lua`: the `shoal_log` space preloaded with
//! `--preload` tuples over 16 nodes, `--expired` of them already expired,
//! a steady load of `--rate` inserts/s (10 ms transactions, TTL long
//! enough to stay live during the run), a probe fiber that sleeps 1 ms and
//! records how late it wakes (stalls of the tx thread), and one expirer.
//! A run ends when every preloaded expired tuple is gone; a first row
//! with no expirer gives the stall floor of the load and the machine
//! (other processes on the 2 cores show up there too). Reported per
//! configuration, the median over `--runs` runs of: deletes/s, p50/p99/max
//! probe lateness during the run, the p99 of the part of each lateness
//! that the tx thread spent on the CPU (`clock.thread()`: what the
//! expirer and the load cost, without the time other processes took the
//! core), and the growth of Lua memory
//! (`collectgarbage('count')` peak minus the baseline after preload).
//!
//! expirationd is loaded from `EXPIRATIOND_PATH` (a checkout of
//! tarantool/expirationd; tag 1.1.1 is the newest that runs on 2.6 with
//! bundled modules only), tuned as in the issue: tuples_per_iteration
//! 10000, full_scan_time 1, iteration_delay 0. Without it that part is
//! skipped. The native module is `libshoal_expirer.so` next to this
//! binary (or `--lib DIR`). `SHOAL_TARANTOOL` chooses the Tarantool binary
//! (Debian's 2.6 on `PATH` by default).
//!
//! ```text
//! cargo build --release -p shoal-expirer -p shoal-benches --bin expiry-compare
//! EXPIRATIOND_PATH=/path/to/expirationd target/release/expiry-compare \
//!     [--runs 3] [--batches 100,200,300,500] [--preload 1000000] \
//!     [--expired 500000] [--rate 10000] [--lib target/release]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Parser;

const SCRIPT: &str = include_str!("expiry-compare.lua");
/// The store's schema, which the script loads (`require`, from its own
/// directory) rather than copying it.
const STORE_LUA: [(&str, &str); 2] = [
    (
        "shoal_store.lua",
        include_str!("../../../tarantool/lua/shoal_store.lua"),
    ),
    (
        "shoal_common.lua",
        include_str!("../../../tarantool/lua/shoal_common.lua"),
    ),
];

struct Args {
    runs: usize,
    batches: Vec<u32>,
    preload: u64,
    expired: u64,
    rate: u64,
    lib: PathBuf,
    expirationd: Option<PathBuf>,
}

/// Expiry comparison: the native expirer against Lua expirationd.
#[derive(Parser)]
struct Cli {
    /// Runs of each configuration; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Batch sizes of the native expirer to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 200, 300, 500])]
    batches: Vec<u32>,
    /// Tuples loaded before a run, over 16 nodes.
    #[arg(long, default_value_t = 1_000_000)]
    preload: u64,
    /// Of the preloaded tuples, how many are already expired.
    #[arg(long, default_value_t = 500_000)]
    expired: u64,
    /// Steady inserts/s during a run.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Directory of `libshoal_expirer.so` (default: this binary's).
    #[arg(long)]
    lib: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let c = Cli::parse();
    let lib = match c.lib {
        Some(lib) => lib,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let a = Args {
        runs: c.runs,
        batches: c.batches,
        preload: c.preload,
        expired: c.expired,
        rate: c.rate,
        lib,
        expirationd: std::env::var_os("EXPIRATIOND_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };
    if a.runs == 0 || a.expired == 0 || a.expired > a.preload {
        bail!("--runs must be positive and 0 < --expired <= --preload");
    }
    Ok(a)
}

/// One run; the script's `RESULT` line as key/value pairs.
fn run_once(
    a: &Args,
    mode: &str,
    batch: u32,
    n: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let dir = std::env::temp_dir().join(format!(
        "shoal-expiry-compare-{}-{mode}-{batch}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("bench.lua");
    std::fs::write(&script, SCRIPT)?;
    for (name, text) in STORE_LUA {
        std::fs::write(dir.join(name), text)?;
    }
    // SHOAL_TARANTOOL chooses the version (Debian's 2.6 by default).
    let mut cmd = Command::new(shoal_tarantool::testkit::tarantool_bin());
    cmd.arg(&script)
        .current_dir(&dir)
        .env("MODE", mode)
        .env("BATCH", batch.to_string())
        .env("PRELOAD", a.preload.to_string())
        .env("EXPIRED", a.expired.to_string())
        .env("RATE", a.rate.to_string())
        .env("LUA_CPATH", format!("{}/lib?.so;;", a.lib.display()));
    if let Some(p) = &a.expirationd {
        cmd.env("EXPIRATIOND_PATH", p);
    }
    let out = cmd.output().context("running tarantool")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| {
            format!(
                "no RESULT from tarantool ({}): {stdout}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("tarantool.log")).unwrap_or_default()
            )
        })?;
    let kv = line
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(kv)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let so = a.lib.join("libshoal_expirer.so");
    if !so.exists() {
        bail!(
            "{} is missing: cargo build --release -p shoal-expirer (or pass --lib DIR)",
            so.display()
        );
    }
    let mut configs: Vec<(&str, u32)> = vec![("none", 0)];
    match &a.expirationd {
        Some(p) if p.join("expirationd.lua").exists() => configs.push(("expirationd", 0)),
        Some(p) => println!(
            "skipping expirationd: {} has no expirationd.lua",
            p.display()
        ),
        None => println!(
            "skipping expirationd: set EXPIRATIOND_PATH to a checkout of tarantool/expirationd (tag 1.1.1)"
        ),
    }
    configs.extend(a.batches.iter().map(|b| ("native", *b)));
    println!(
        "workload: {} tuples over 16 nodes, {} expired; steady {} inserts/s; {} runs each; {} cores",
        a.preload,
        a.expired,
        a.rate,
        a.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", loadavg().trim());
    println!(
        "tarantool: {} ({})",
        shoal_tarantool::testkit::tarantool_bin().display(),
        shoal_tarantool::testkit::tarantool_version()
            .map_or_else(|e| format!("version unknown: {e}"), |v| v.to_string())
    );
    println!(
        "| expirer | deletes/s | p50 stall ms | p99 stall ms | max stall ms | p99 stall, tx CPU ms | Lua memory growth KiB | runs (deletes/s; p99 ms; CPU p99 ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (mode, batch) in configs {
        let mut rows = Vec::new();
        for n in 0..a.runs {
            rows.push(run_once(&a, mode, batch, n)?);
        }
        let col = |k: &str| -> Vec<f64> {
            rows.iter()
                .map(|r| r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN))
                .collect()
        };
        let name = match mode {
            "native" => format!("shoal_expirer batch {batch}"),
            "expirationd" => "expirationd 1.1.1 (10000/1/0)".to_string(),
            _ => "none (load and probe only, 2 s)".to_string(),
        };
        let each: Vec<String> = col("deletes_per_s")
            .iter()
            .zip(col("p99_ms"))
            .zip(col("cpu_p99_ms"))
            .map(|((d, p), c)| format!("{d:.0}; {p:.2}; {c:.2}"))
            .collect();
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
            median(col("deletes_per_s")),
            median(col("p50_ms")),
            median(col("p99_ms")),
            median(col("max_ms")),
            median(col("cpu_p99_ms")),
            median(col("lua_growth_kb")),
            each.join(" / ")
        );
    }
    println!("load average after: {}", loadavg().trim());
    Ok(())
}
