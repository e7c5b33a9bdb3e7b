//! HTTP abuse harness: starts a real `shoal` node (admin and API
//! listeners; a `[verdicts]` section whose store never answers, so the
//! API answers 503 with a token: an answer is all that counts) and runs
//! each attack against every listener it has, one after the other:
//!
//! - `slowloris`: `--slowloris` connections per listener, each sending
//!   one byte of a head every 5 s;
//! - `trickle`: `--trickle` connections per listener, each asking with
//!   `Connection: close`, reading the answer, then sending one byte every
//!   0.4 s until a write fails (the node has closed, not just ended its
//!   answer);
//! - `big-headers`: 50 clients per listener sending requests with 100 KB
//!   of headers, over and over;
//! - `pipelining`: 50 clients per listener writing 100 pipelined requests
//!   at a time and reading the answers (checked in order).
//!
//! A connection the node closes is opened again after `--reconnect-ms`.
//! During each attack a probe sends a normal request every 100 ms on the
//! admin listener (`GET /healthz`) and on the API listener (`GET
//! /v1/verdicts/1`), each on a new connection, and the harness prints
//! requests tried, answered, max and p99 latency, and PASS when every one
//! was answered within 1 s.
//!
//! `--old-bin` runs the same attacks against a node of the single-listener
//! era (`[http] listen`, one address for both probes) for a comparison.
//!
//! Usage: shoal-http-abuse [--bin target/release/shoal] [--old-bin PATH]
//!        [--seconds 20] [--attacks slowloris,trickle,big-headers,pipelining]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "abuse-api-token-0123456789";
/// A probe answered later than this fails the attack.
const DEADLINE: Duration = Duration::from_secs(1);
/// A probe not answered within this counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attack {
    Slowloris,
    Trickle,
    BigHeaders,
    Pipelining,
}

#[derive(Debug, Parser)]
#[command(
    about = "Attacks a real shoal node's HTTP listeners and checks normal requests are still answered within 1 s"
)]
struct Args {
    /// The node binary (admin and API listeners).
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// A node binary of the single-listener era (`[http] listen`), to
    /// measure the same attacks against it too.
    #[arg(long)]
    old_bin: Option<PathBuf>,
    /// How long each attack runs (probes run all along).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Slowloris connections per listener.
    #[arg(long, default_value_t = 2000)]
    slowloris: usize,
    /// Trickling connections per listener.
    #[arg(long, default_value_t = 1100)]
    trickle: usize,
    /// Delay before an attacker reopens a connection the node closed.
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u64,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Attack::Slowloris, Attack::Trickle, Attack::BigHeaders, Attack::Pipelining])]
    attacks: Vec<Attack>,
}

/// A node under attack: its listener addresses.
struct Target {
    admin: String,
    api: String,
    /// The process, stopped when dropped.
    _node: Box<dyn std::any::Any>,
}

/// A node of the single-listener era, started by hand (its config has
/// `[http] listen`, which the testkit no longer writes).
struct OldNode {
    child: Child,
}

impl Drop for OldNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(dir: &Path) -> NodeSpec {
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, dir);
    spec.extra = format!(
        "[verdicts]\nstore = \"127.0.0.1:1\"\npassword = \"pw\"\napi_tokens = [\"{TOKEN}\"]\ntoken_key_id = 1\ntoken_secret = \"abuse-token-secret-0123456789\"\nforwarder = false\n"
    );
    spec
}

fn start_new(bin: &Path, dir: &Path) -> anyhow::Result<Target> {
    let node = NodeProcess::spawn(bin, &spec(dir)).context("starting the node")?;
    Ok(Target {
        admin: node.admin.clone(),
        api: node.api.clone(),
        _node: Box::new(node),
    })
}

fn start_old(bin: &Path, dir: &Path) -> anyhow::Result<Target> {
    std::fs::create_dir_all(dir)?;
    let spec = spec(dir);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let text = spec.config_text(&addr, "unused").replace(
        &format!("admin = \"{addr}\"\napi = \"unused\"\n"),
        &format!("listen = \"{addr}\"\n"),
    );
    if !text.contains("listen = ") {
        bail!("could not write an old-style config:\n{text}");
    }
    let config = dir.join("old.toml");
    std::fs::write(&config, text)?;
    let log = dir.join("old.log");
    let child = Command::new(bin)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("SHOAL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut old = OldNode { child };
    let up = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("shoal node serving"))
            || old.child.try_wait().ok().flatten().is_some()
    });
    if !up || old.child.try_wait()?.is_some() {
        bail!(
            "old node did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok(Target {
        admin: addr.clone(),
        api: addr,
        _node: Box::new(old),
    })
}

/// What the attackers did, for the report.
#[derive(Default)]
struct AttackStats {
    opened: AtomicU64,
    closed_by_node: AtomicU64,
    connect_failed: AtomicU64,
    answers: AtomicU64,
    status_431: AtomicU64,
    out_of_order: AtomicU64,
}

struct Ctx {
    stop: AtomicBool,
    stats: AttackStats,
    reconnect: Duration,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps `d`, cut short by the stop.
    async fn pause(&self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while !self.stopped() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50).min(d)).await;
        }
    }

    async fn connect(&self, addr: &str) -> Option<TcpStream> {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                Self::inc(&self.stats.opened);
                Some(s)
            }
            _ => {
                Self::inc(&self.stats.connect_failed);
                self.pause(self.reconnect).await;
                None
            }
        }
    }
}

/// One slowloris connection, reopened when closed: a head one byte every
/// 5 s, never finished.
async fn slowloris(ctx: Arc<Ctx>, addr: String, lane: usize) {
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    // Spread the start so the bytes do not all leave at once.
    ctx.pause(Duration::from_millis((lane % 1000) as u64 * 5))
        .await;
    while !ctx.stopped() {
        let Some(mut s) = ctx.connect(&addr).await else {
            continue;
        };
        let mut i = 0usize;
        loop {
            let b = if i < head.len() { head[i] } else { b'a' };
            i += 1;
            if s.write_all(&[b]).await.is_err() || closed(&mut s, Duration::from_secs(5)).await {
                Ctx::inc(&ctx.stats.closed_by_node);
                break;
            }
            if ctx.stopped() {
                return;
            }
        }
        ctx.pause(ctx.reconnect).await;
    }
}

/// Whether the node closes `s` (EOF or error) within `d`; reads and drops
/// what comes meanwhile.
async fn closed(s: &mut TcpStream, d: Duration) -> bool {
    let end = tokio::time::Instant::now() + d;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One trickling connection: a `Connection: close` request, its answer,
/// then a byte every 0.4 s until the node closes it.
async fn trickle(ctx: Arc<Ctx>, addr: String, path: &'static str, lane: usize) {
    ctx.pause(Duration::from_millis((lane % 1000) as u64 * 2))
        .await;
    while !ctx.stopped() {
        let Some(mut s) = ctx.connect(&addr).await else {
            continue;
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).await.is_ok() {
            let mut buf = [0u8; 2048];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
            {
                if n > 0 {
                    Ctx::inc(&ctx.stats.answers);
                }
            }
            // The node's end of the answer (a half close) does not stop
            // it: only a failed write (the node has closed) does.
            loop {
                if ctx.stopped() {
                    return;
                }
                if s.write_all(b"x").await.is_err() {
                    Ctx::inc(&ctx.stats.closed_by_node);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }
        ctx.pause(ctx.reconnect).await;
    }
}

/// Requests with 100 KB of headers, one after the other.
async fn big_headers(ctx: Arc<Ctx>, addr: String) {
    let filler = "a".repeat(1000);
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        req.push_str(&format!("X-Big-{i}: {filler}\r\n"));
    }
    req.push_str("\r\n");
    while !ctx.stopped() {
        let Some(mut s) = ctx.connect(&addr).await else {
            continue;
        };
        // The node may close before all is written: fine.
        let _ = s.write_all(req.as_bytes()).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got)).await;
        if got.starts_with(b"HTTP/1.1 431") {
            Ctx::inc(&ctx.stats.status_431);
        } else {
            Ctx::inc(&ctx.stats.closed_by_node);
        }
    }
}

/// 100 pipelined requests at a time on one keep-alive connection,
/// alternating a path that answers 200 (or the API's 503) and one that
/// answers 404; the answers must come in the same order.
async fn pipelining(ctx: Arc<Ctx>, addr: String, ok_path: &'static str) {
    let one = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
    };
    let batch: String = (0..100)
        .map(|i| {
            one(if i % 2 == 0 {
                ok_path
            } else {
                "/v9/nothing-here"
            })
        })
        .collect();
    while !ctx.stopped() {
        let Some(mut s) = ctx.connect(&addr).await else {
            continue;
        };
        let mut buf = Vec::with_capacity(64 << 10);
        while !ctx.stopped() {
            if s.write_all(batch.as_bytes()).await.is_err() {
                Ctx::inc(&ctx.stats.closed_by_node);
                break;
            }
            // Read until 100 status lines came.
            buf.clear();
            let mut chunk = [0u8; 16 << 10];
            let mut statuses: Vec<u16> = Vec::with_capacity(100);
            let mut scanned = 0usize;
            let ok = loop {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break false,
                }
                while let Some(i) = find(&buf[scanned..], b"HTTP/1.1 ") {
                    let at = scanned + i + 9;
                    if buf.len() < at + 3 {
                        break;
                    }
                    let code = std::str::from_utf8(&buf[at..at + 3])
                        .ok()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    statuses.push(code);
                    scanned = at + 3;
                }
                if statuses.len() >= 100 {
                    break true;
                }
            };
            if !ok {
                Ctx::inc(&ctx.stats.closed_by_node);
                break;
            }
            ctx.stats
                .answers
                .fetch_add(statuses.len() as u64, Ordering::Relaxed);
            let in_order = statuses
                .iter()
                .enumerate()
                .all(|(i, &c)| (i % 2 == 0) == (c != 404));
            if !in_order {
                Ctx::inc(&ctx.stats.out_of_order);
            }
            buf.drain(..scanned);
        }
        ctx.pause(ctx.reconnect).await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One normal request on a new connection; its latency when answered.
async fn probe(addr: String, req: String) -> Option<Duration> {
    let t = Instant::now();
    let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut s = TcpStream::connect(&addr).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.ok()?;
        got.starts_with(b"HTTP/1.1 ").then_some(())
    })
    .await;
    matches!(answered, Ok(Some(()))).then(|| t.elapsed())
}

/// Probes every 100 ms until `stop`; latencies, `None` for unanswered.
async fn probes(addr: String, req: String, stop: Arc<Ctx>) -> Vec<Option<Duration>> {
    let mut handles = Vec::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.stopped() {
        tick.tick().await;
        handles.push(tokio::spawn(probe(addr.clone(), req.clone())));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.ok().flatten());
    }
    out
}

/// [`probes`] on a thread with its own runtime.
fn probe_thread(
    addr: String,
    req: String,
    ctx: Arc<Ctx>,
) -> std::thread::JoinHandle<Vec<Option<Duration>>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(probes(addr, req, ctx)))
            .unwrap_or_default()
    })
}

struct ProbeReport {
    tried: usize,
    answered: usize,
    max: Duration,
    p99: Duration,
    pass: bool,
}

fn report(lat: &[Option<Duration>]) -> ProbeReport {
    let mut ok: Vec<Duration> = lat.iter().flatten().copied().collect();
    ok.sort();
    let max = ok.last().copied().unwrap_or_default();
    let p99 = ok
        .get((ok.len() * 99 / 100).min(ok.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    ProbeReport {
        tried: lat.len(),
        answered: ok.len(),
        max,
        p99,
        pass: !lat.is_empty() && ok.len() == lat.len() && max <= DEADLINE,
    }
}

async fn run_attack(args: &Args, attack: Attack, t: &Target) -> (ProbeReport, ProbeReport, String) {
    let ctx = Arc::new(Ctx {
        stop: AtomicBool::new(false),
        stats: AttackStats::default(),
        reconnect: Duration::from_millis(args.reconnect_ms),
    });
    // Every distinct listener is attacked in full.
    let mut targets = vec![(t.admin.clone(), "/healthz")];
    if t.api != t.admin {
        targets.push((t.api.clone(), "/v1/verdicts/1"));
    } else {
        targets[0].1 = "/v1/verdicts/1";
    }
    let mut attackers = Vec::new();
    for (addr, path) in &targets {
        match attack {
            Attack::Slowloris => {
                for lane in 0..args.slowloris {
                    attackers.push(tokio::spawn(slowloris(
                        Arc::clone(&ctx),
                        addr.clone(),
                        lane,
                    )));
                }
            }
            Attack::Trickle => {
                for lane in 0..args.trickle {
                    attackers.push(tokio::spawn(trickle(
                        Arc::clone(&ctx),
                        addr.clone(),
                        path,
                        lane,
                    )));
                }
            }
            Attack::BigHeaders => {
                for _ in 0..50 {
                    attackers.push(tokio::spawn(big_headers(Arc::clone(&ctx), addr.clone())));
                }
            }
            Attack::Pipelining => {
                for _ in 0..50 {
                    attackers.push(tokio::spawn(pipelining(
                        Arc::clone(&ctx),
                        addr.clone(),
                        path,
                    )));
                }
            }
        }
    }
    // The probes run on threads of their own, so a busy attacker task
    // does not delay them inside the harness.
    let admin_probe = probe_thread(
        t.admin.clone(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        Arc::clone(&ctx),
    );
    let api_probe = probe_thread(
        t.api.clone(),
        format!("GET /v1/verdicts/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
        Arc::clone(&ctx),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    ctx.stop.store(true, Ordering::Relaxed);
    let admin = report(&admin_probe.join().unwrap_or_default());
    let api = report(&api_probe.join().unwrap_or_default());
    for a in attackers {
        a.abort();
    }
    let s = &ctx.stats;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let summary = format!(
        "attackers opened {} connections ({} connects failed), node closed {}, answers {}, 431s {}, out of order {}",
        g(&s.opened),
        g(&s.connect_failed),
        g(&s.closed_by_node),
        g(&s.answers),
        g(&s.status_431),
        g(&s.out_of_order)
    );
    (admin, api, summary)
}

/// The 1-minute load average: how shared the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

fn line(server: &str, attack: Attack, listener: &str, r: &ProbeReport) {
    println!(
        "| {server} | {attack:?} | {listener} | {} | {} | {:.0} | {:.0} | {} |",
        r.tried,
        r.answered,
        r.p99.as_secs_f64() * 1e3,
        r.max.as_secs_f64() * 1e3,
        if r.pass { "PASS" } else { "FAIL" }
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let fds = raise_fd_limit();
    let per_listener = args.slowloris.max(args.trickle) as libc::rlim_t;
    if fds < 2 * per_listener + 1000 {
        bail!(
            "descriptor limit {fds} is below what the attacks need ({})",
            2 * per_listener + 1000
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("shoal-http-abuse-{}", std::process::id()));
    let mut servers: Vec<(&str, PathBuf)> = vec![("new", args.bin.clone())];
    if let Some(old) = &args.old_bin {
        servers.push(("old", old.clone()));
    }
    let mut all_pass = true;
    println!("| server | attack | probe | tried | answered | p99 ms | max ms | within 1 s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, bin) in &servers {
        for &attack in &args.attacks {
            // A fresh node per attack: what one attack leaves does not
            // weigh on the next.
            let d = dir.join(format!("{name}-{attack:?}"));
            let target = if *name == "new" {
                start_new(bin, &d)?
            } else {
                start_old(bin, &d)?
            };
            let (admin, api, summary) = rt.block_on(run_attack(&args, attack, &target));
            if *name == "new" {
                all_pass &= admin.pass && api.pass;
            }
            if target.admin == target.api {
                line(name, attack, "one listener /healthz", &admin);
                line(name, attack, "one listener /v1", &api);
            } else {
                line(name, attack, "admin /healthz", &admin);
                line(name, attack, "api /v1", &api);
            }
            eprintln!(
                "{name} {attack:?}: {summary}; load average {}",
                load_average()
            );
            drop(target);
            // Let the closed connections drain before the next node.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !all_pass {
        bail!("FAIL: some probe of the node was not answered within 1 s");
    }
    println!("PASS: every probe of the node was answered within 1 s");
    Ok(())
}
