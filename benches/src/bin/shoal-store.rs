//! Store harness: a real Tarantool master pair (`tarantool/scripts/pair.sh`)
//! and a real `shoal` node.
//!
//! 1. Persist rate. Baseline: a Lua loop inside master a replaces N log
//!    tuples, 1000 per transaction (the yardstick). Shoal: a filter
//!    pushes N send+save session marks into the node's local socket as fast
//!    as it takes them; the rate is N over the time until the node's
//!    `shoal_store_saved_total` reaches N. Same tuples' shape, same
//!    instance, same run; the log is truncated between phases.
//! 2. Replay. The log is filled with `--replay` live tuples of 16 nodes
//!    (through the console, fast), then the node is started again and
//!    again; `shoal_replay_seconds` is what each start-up spent loading
//!    them, and the process start to "serving" is reported beside it.
//!
//! Each figure is the median of `--runs` runs.
//!
//! Acknowledgement level: the node runs with `[store] ack = "replicated"`
//! (its default with two masters) unless `--ack local`; `--ack both`
//! measures both levels in every run, one after the other on the same
//! pair, and prints the ratio (the persist rate `replicated` keeps).
//!
//! The node saves with the Lua `shoal_save` by default. `--native` saves
//! with the expiry module's C procedure instead (`save_function =
//! "shoal_expirer.shoal_save"`), `--both` measures both in every run; the
//! masters then load the module (`SHOAL_TT_EXPIRER=shoal_expirer`,
//! `LUA_CPATH` at `--lib`, default the directory of `--bin`: build it with
//! `cargo build --release -p shoal-expirer`).
//!
//! Usage: shoal-store [--bin target/release/shoal] [--records 500000]
//!                    [--replay 1000000] [--runs 3] [--native | --both]
//!                    [--lib target/release]
//!                    [--ack replicated | local | both]
//!                    [--store 'in_flight = 8,batch = 1000']  (extra [store] keys)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::statelog::{LOG_SPACE, SAVE_NATIVE};
use shoal_tarantool::testkit::{Master, Pair};
use shoal_wire::{Code, Op, Record};

struct Args {
    bin: PathBuf,
    records: u64,
    replay: u64,
    runs: usize,
    /// Extra `[store]` keys for the node, e.g. `in_flight = 8`.
    store: String,
    /// Which save procedures the node is measured with.
    saves: Vec<Save>,
    /// Where `libshoal_expirer.so` is (default: the directory of `bin`).
    lib: Option<PathBuf>,
    /// The acknowledgement levels measured (`[store] ack`).
    acks: Vec<&'static str>,
}

/// The procedure a node saves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Save {
    /// `shoal_save`, in Lua.
    Lua,
    /// `shoal_expirer.shoal_save`, the module's C procedure.
    Native,
}

impl Save {
    fn label(self) -> &'static str {
        match self {
            Save::Lua => "lua proc",
            Save::Native => "native proc",
        }
    }

    /// The node's `[store]` keys for this procedure, after `extra`.
    fn store_keys(self, extra: &str) -> String {
        match self {
            Save::Lua => extra.to_string(),
            Save::Native => format!("{extra}\nsave_function = \"{SAVE_NATIVE}\""),
        }
    }
}

/// Store harness: a real Tarantool master pair and a real `shoal` node.
#[derive(Parser)]
struct Cli {
    /// The `shoal` binary to run.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Records per persist run.
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// Live tuples to replay at start-up (0: no replay phase).
    #[arg(long, default_value_t = 1_000_000)]
    replay: u64,
    /// Runs; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Extra `[store]` keys for the node, comma-separated,
    /// e.g. 'in_flight = 8,batch = 1000'.
    #[arg(long, default_value = "")]
    store: String,
    /// Save with the native `shoal_expirer.shoal_save` only.
    #[arg(long, conflicts_with = "both")]
    native: bool,
    /// Measure both the Lua and the native procedure in every run.
    #[arg(long)]
    both: bool,
    /// Where `libshoal_expirer.so` is (default: the directory of --bin).
    #[arg(long)]
    lib: Option<PathBuf>,
    /// The acknowledgement level(s) measured: replicated (the node's
    /// default with two masters), local, or both in every run.
    #[arg(long, default_value = "replicated", value_parser = ["replicated", "local", "both"])]
    ack: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let c = Cli::parse();
    let saves = match (c.native, c.both) {
        (_, true) => vec![Save::Lua, Save::Native],
        (true, false) => vec![Save::Native],
        (false, false) => vec![Save::Lua],
    };
    let a = Args {
        bin: c.bin,
        records: c.records,
        replay: c.replay,
        runs: c.runs,
        store: c.store.replace(',', "\n"),
        saves,
        lib: c.lib,
        acks: match c.ack.as_str() {
            "local" => vec!["local"],
            "both" => vec!["local", "replicated"],
            _ => vec!["replicated"],
        },
    };
    if a.runs == 0 || a.records == 0 {
        bail!("--runs and --records must be positive");
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn console_number(pair: &Pair, lua: &str) -> anyhow::Result<f64> {
    let out = pair.console(Master::A, lua)?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("- ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .with_context(|| format!("console answered {out:?} to {lua}"))
}

/// Seconds the Lua loop takes to replace `n` tuples, 1000 per transaction.
fn lua_loop(pair: &Pair, n: u64) -> anyhow::Result<f64> {
    console_number(
        pair,
        &format!(
            "local c = require('clock') local log = box.space.{LOG_SPACE} \
             local now = math.floor(c.realtime() * 1e6) local t0 = c.monotonic() \
             for i = 0, {n} - 1, 1000 do box.begin() \
             for j = i, math.min(i + 999, {n} - 1) do \
             log:replace({{'bench-lua', now + 3600000000, now + j, now, 3, 3, 1, j, 2, 0, 0}}) end \
             box.commit() end return c.monotonic() - t0"
        ),
    )
}

fn truncate(pair: &Pair) -> anyhow::Result<()> {
    pair.console(Master::A, &format!("box.space.{LOG_SPACE}:truncate()"))?;
    // Wait for the other master to have replicated it.
    let b_empty = wait_until(Duration::from_secs(30), || {
        pair.console(Master::B, &format!("box.space.{LOG_SPACE}:len()"))
            .is_ok_and(|o| o.contains("- 0\n"))
    });
    if !b_empty {
        bail!("master b did not follow the truncate");
    }
    Ok(())
}

fn spec(dir: &Path, pair: &Pair, extra: &str) -> NodeSpec {
    let (group, port) = unique_group();
    let mut s = NodeSpec::loopback(1, group, port, dir);
    s.extra = format!(
        "[state]\nsession_capacity = 4000000\n\n[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\nbacklog = 4000000\nreplay_timeout_ms = 5000\n{extra}\n",
        pair.a, pair.b, pair.password
    );
    s
}

fn metric(n: &NodeProcess, name: &str) -> f64 {
    n.metric(name).unwrap_or(-1.0)
}

/// Seconds until a node has saved `n` marks pushed through its socket.
fn shoal_persist(bin: &Path, dir: &Path, pair: &Pair, n: u64, extra: &str) -> anyhow::Result<f64> {
    let node = NodeProcess::spawn(bin, &spec(dir, pair, extra)).context("starting shoal")?;
    let mut c = node.client()?;
    let start = Instant::now();
    let mut batch = Vec::with_capacity(64);
    for k in 0..n {
        batch.push(Record {
            op: Op::SEND_SAVE,
            ttl_ms: 3_600_000,
            ..Record::new(Code::SESSION_MARK, [k, 2, 0, 0])
        });
        if batch.len() == 64 {
            // The local socket is a datagram socket: back off when full.
            while c.send(&batch).is_err() {
                std::thread::sleep(Duration::from_micros(50));
            }
            batch.clear();
        }
    }
    if !batch.is_empty() {
        c.send(&batch)?;
    }
    let target = n as f64;
    if !wait_until(Duration::from_secs(600), || {
        metric(&node, "shoal_store_saved_total") >= target
    }) {
        bail!(
            "saved {} of {n}; taken {}",
            metric(&node, "shoal_store_saved_total"),
            metric(&node, "shoal_store_taken_total")
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("shoal-store-bench-{}", std::process::id()));
    let mut env = vec![("SHOAL_TT_MEMTX_MB".to_string(), "4096".to_string())];
    if args.saves.contains(&Save::Native) {
        let lib = match &args.lib {
            Some(l) => l.clone(),
            None => args
                .bin
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        let so = lib.join("libshoal_expirer.so");
        if !so.exists() {
            bail!(
                "{} is missing: cargo build --release -p shoal-expirer (or pass --lib DIR)",
                so.display()
            );
        }
        let lib = lib.canonicalize()?;
        env.push(("SHOAL_TT_EXPIRER".into(), "shoal_expirer".into()));
        env.push(("LUA_CPATH".into(), format!("{}/lib?.so;;", lib.display())));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pair = Pair::start_with(&dir.join("tt"), &env).context("starting the tarantool pair")?;
    // SHOAL_TARANTOOL chooses the version (Debian's 2.6 by default).
    println!(
        "tarantool {} ({}); load average {}",
        shoal_tarantool::testkit::tarantool_version()
            .map_or_else(|e| format!("unknown: {e}"), |v| v.to_string()),
        shoal_tarantool::testkit::tarantool_bin().display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "shoal-store: pair {} / {}, {} records per persist run, {} for replay, {} runs, node saving with {}",
        pair.a,
        pair.b,
        args.records,
        args.replay,
        args.runs,
        args.saves
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    // Every (procedure, ack level) measured in every run.
    let modes: Vec<(Save, &str)> = args
        .saves
        .iter()
        .flat_map(|&s| args.acks.iter().map(move |&a| (s, a)))
        .collect();
    let mut lua = Vec::new();
    let mut shoal: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for run in 1..=args.runs {
        truncate(&pair)?;
        let l = lua_loop(&pair, args.records)?;
        let lr = args.records as f64 / l;
        let mut line = format!("run {run} persist: lua loop {lr:.0} rec/s");
        for (k, (save, ack)) in modes.iter().enumerate() {
            truncate(&pair)?;
            let extra = format!("{}\nack = \"{ack}\"", save.store_keys(&args.store));
            let s = shoal_persist(&args.bin, &dir, &pair, args.records, &extra)?;
            let sr = args.records as f64 / s;
            line.push_str(&format!(
                ", shoal ({}, ack {ack}) {sr:.0} rec/s, ratio {:.3}",
                save.label(),
                sr / lr
            ));
            shoal[k].push(sr);
        }
        println!("{line}");
        lua.push(lr);
    }

    let mut replay = Vec::new();
    let mut startup = Vec::new();
    if args.replay > 0 {
        truncate(&pair)?;
        // 16 writers' ranges of live marks, distinct keys.
        let n = args.replay;
        console_number(
            &pair,
            &format!(
                "local c = require('clock') local log = box.space.{LOG_SPACE} \
                 local now = math.floor(c.realtime() * 1e6) \
                 for i = 0, {n} - 1, 1000 do box.begin() \
                 for j = i, math.min(i + 999, {n} - 1) do \
                 log:replace({{'c1-n' .. (j % 16 + 2), now + 3600000000 + j, j, now, 3, 3, j % 16 + 2, j, 2, 0, 0}}) end \
                 box.commit() end return log:len()"
            ),
        )?;
        for run in 1..=args.runs {
            let started = Instant::now();
            let node = NodeProcess::spawn(&args.bin, &spec(&dir, &pair, &args.store))?;
            let up = started.elapsed().as_secs_f64();
            let secs = metric(&node, "shoal_replay_seconds");
            let got = metric(&node, "shoal_replay_records");
            if got as u64 != n {
                bail!("replayed {got} of {n}");
            }
            println!(
                "run {run} replay: {n} records in {secs:.3} s (process start to serving {up:.3} s)"
            );
            replay.push(secs);
            startup.push(up);
        }
    }

    println!("\nmedians of {} runs:", args.runs);
    let l = median(lua);
    println!("  lua loop, 1000 per txn        {l:.0} records/s");
    let medians: Vec<f64> = shoal.into_iter().map(median).collect();
    for ((save, ack), s) in modes.iter().zip(&medians) {
        println!(
            "  shoal node, persisted         {s:.0} records/s  ({:.3} of the lua loop; {}, ack {ack})",
            s / l,
            save.label()
        );
    }
    for save in &args.saves {
        let rate = |a: &str| {
            modes
                .iter()
                .position(|(s, x)| s == save && *x == a)
                .map(|k| medians[k])
        };
        if let (Some(local), Some(repl)) = (rate("local"), rate("replicated")) {
            println!(
                "  replicated / local ({})      {:.3}",
                save.label(),
                repl / local
            );
        }
    }
    if !replay.is_empty() {
        println!(
            "  replay of {} live records     {:.3} s  (start to serving {:.3} s)",
            args.replay,
            median(replay),
            median(startup)
        );
    }
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
