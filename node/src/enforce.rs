//! The enforcer's thread and its `[enforce]` section: it copies the live
//! blocks out of the node (under the lock, nothing else), lets
//! `shoal_core::enforce` decide the batch, and hands it to the `nft` edge.
//!
//! - At start: the table, sets, chain and rules are made or fixed without
//!   touching the elements, then the sets are read back and only what is
//!   wrong changes (no gap in enforcement across a restart).
//! - On every change of the blocks (the table's generation) and when the
//!   desired set's `next_change` passes: a batch from the last good state.
//! - Every `reconcile_ms`: a read-back, on a reader thread with its own
//!   netlink socket so that batches go on while a large set is dumped
//!   (1 M elements take tens of seconds in the kernel); missing elements
//!   are added, foreign ones removed, drifted timeouts re-asserted,
//!   missing rules put back, each repair counted. Prefixes a batch changed
//!   while the read ran are judged by the belief, not the read.
//! - A refused batch leaves the kernel as it was (it rolls the whole batch
//!   back) and the enforcer's belief too; it is retried after `retry_ms`.
//! - `dry_run`: no kernel at all; batches are logged and counted.
//! - At exit: `on_exit = "keep"` leaves the table (elements expire by their
//!   own timeouts), `"remove"` deletes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use shoal_core::blocks::BlockRules;
use shoal_core::enforce::{DesiredStats, EnforceCounters, EnforceRules, Enforcer};
use shoal_wire::Prefix;
use tracing::{info, warn};

use crate::config::ConfigError;
use crate::nft::{HookPoint, Nft, NftError, RawInterval, Readback, TableSpec};
use crate::server::Shared;

/// The wait after a read-back, in multiples of its duration, when that is
/// longer than `reconcile_ms` (reads then take a tenth of the time).
const READ_SHARE: u32 = 9;

/// How often the thread looks at the blocks' generation when nobody wakes
/// it: a change made under the node's lock unparks it at once (see
/// `Shared::wake_enforcer`); this bounds the delay otherwise (retries,
/// TTL changes, a read-back's answer).
const POLL: Duration = Duration::from_millis(5);

/// `[enforce]`: this node drops the cluster's blocks in its kernel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforceSection {
    /// The nftables table (family `inet`) this node owns.
    #[serde(default = "default_table")]
    pub table: String,
    /// `prerouting`, `input` or `forward`.
    #[serde(default = "default_hook")]
    pub hook: String,
    /// The drop chain's priority (-300: before conntrack, so dropped
    /// packets cost no conntrack entry).
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// Prefixes never blocked (management networks, the cluster's own
    /// addresses). Loopback, `multicast.interface`, the stores' addresses
    /// and (with `protect_sync_network`) the interface's network are
    /// always added.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Never block the network `multicast.interface` is on (the cluster's
    /// peers). Off only where attackers share that network (tests).
    #[serde(default = "default_true")]
    pub protect_sync_network: bool,
    #[serde(default = "default_min_v4")]
    pub min_prefix_v4: u8,
    #[serde(default = "default_min_v6")]
    pub min_prefix_v6: u8,
    /// Most kernel elements (both sets); when more blocks are live the
    /// broadest are kept, then the longest-lived.
    #[serde(default = "default_max_elements")]
    pub max_elements: usize,
    /// Most blocks the node holds; new prefixes are refused when full.
    #[serde(default = "default_max_blocks")]
    pub max_blocks: usize,
    /// Longest block TTL taken, in ms.
    #[serde(default = "default_max_ttl_ms")]
    pub max_ttl_ms: u64,
    /// Period of the kernel read-back (repair), in ms.
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_ms: u64,
    /// Wait after a refused batch, in ms.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Kernel timeout drift tolerated before re-asserting, in ms.
    #[serde(default = "default_ttl_tolerance_ms")]
    pub ttl_tolerance_ms: u64,
    /// Log and count batches without touching the kernel.
    #[serde(default)]
    pub dry_run: bool,
    /// `keep` (default) or `remove` the table when the node stops.
    #[serde(default = "default_on_exit")]
    pub on_exit: String,
    /// Take blocks in a cluster without `[auth]`: then anyone on the
    /// segment can make the nodes drop any address.
    #[serde(default)]
    pub allow_unsigned: bool,
}

fn default_table() -> String {
    "shoal".into()
}
fn default_hook() -> String {
    "prerouting".into()
}
fn default_priority() -> i32 {
    -300
}
fn default_min_v4() -> u8 {
    16
}
fn default_min_v6() -> u8 {
    48
}
fn default_max_elements() -> usize {
    65_536
}
fn default_max_blocks() -> usize {
    65_536
}
fn default_true() -> bool {
    true
}

fn default_max_ttl_ms() -> u64 {
    7 * 24 * 3600 * 1000
}
fn default_reconcile_ms() -> u64 {
    10_000
}
fn default_retry_ms() -> u64 {
    1_000
}
fn default_ttl_tolerance_ms() -> u64 {
    2_000
}
fn default_on_exit() -> String {
    "keep".into()
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("enforce.{key}"),
        message: message.into(),
    }
}

impl EnforceSection {
    /// Checks the section; `signed` says whether `[auth]` is set.
    pub fn validate(&self, signed: bool) -> Result<(), ConfigError> {
        let t = &self.table;
        if t.is_empty()
            || t.len() > 32
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid("table", "1 to 32 of [A-Za-z0-9_-]"));
        }
        if HookPoint::parse(&self.hook).is_none() {
            return Err(invalid("hook", "prerouting, input or forward"));
        }
        if !(-1000..=1000).contains(&self.priority) {
            return Err(invalid("priority", "between -1000 and 1000"));
        }
        for (i, a) in self.allowlist.iter().enumerate() {
            a.parse::<Prefix>()
                .map_err(|e| invalid(&format!("allowlist[{i}]"), e.to_string()))?;
        }
        if !(1..=32).contains(&self.min_prefix_v4) {
            return Err(invalid("min_prefix_v4", "1 to 32 (/0 is never enforced)"));
        }
        if !(1..=128).contains(&self.min_prefix_v6) {
            return Err(invalid("min_prefix_v6", "1 to 128 (/0 is never enforced)"));
        }
        if !(1..=4_000_000).contains(&self.max_elements) {
            return Err(invalid("max_elements", "1 to 4000000"));
        }
        if !(1..=4_000_000).contains(&self.max_blocks) {
            return Err(invalid("max_blocks", "1 to 4000000"));
        }
        if !(1_000..=u32::MAX as u64).contains(&self.max_ttl_ms) {
            return Err(invalid("max_ttl_ms", "1000 to 4294967295"));
        }
        if self.reconcile_ms < 100 || self.retry_ms < 10 {
            return Err(invalid(
                "reconcile_ms",
                "reconcile_ms at least 100, retry_ms at least 10",
            ));
        }
        if self.on_exit != "keep" && self.on_exit != "remove" {
            return Err(invalid("on_exit", "keep or remove"));
        }
        if !signed && !self.allow_unsigned {
            return Err(invalid(
                "allow_unsigned",
                "blocks drop traffic: they are taken only in a cluster with [auth] \
                 (or set allow_unsigned = true on a segment where every host is a node)",
            ));
        }
        Ok(())
    }

    /// The core's enforcement rules; `own` is added to the allowlist.
    pub fn rules(&self, own: &[Prefix]) -> EnforceRules {
        let mut allowlist: Vec<Prefix> = self
            .allowlist
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        allowlist.extend_from_slice(own);
        for lo in ["127.0.0.0/8", "::1/128"] {
            allowlist.extend(lo.parse::<Prefix>().ok());
        }
        EnforceRules {
            allowlist,
            min_prefix_v4: self.min_prefix_v4,
            min_prefix_v6: self.min_prefix_v6,
            max_elements: self.max_elements,
            ttl_tolerance: Duration::from_millis(self.ttl_tolerance_ms),
            retry: Duration::from_millis(self.retry_ms),
        }
    }

    pub fn block_rules(&self) -> BlockRules {
        BlockRules {
            capacity: self.max_blocks,
            accept_unsigned: self.allow_unsigned,
            max_ttl: Duration::from_millis(self.max_ttl_ms),
        }
    }

    fn spec(&self) -> TableSpec {
        TableSpec {
            table: self.table.clone(),
            hook: HookPoint::parse(&self.hook).unwrap_or(HookPoint::Prerouting),
            priority: self.priority,
        }
    }
}

/// What the metrics and `/status` read, copied out by the thread.
#[derive(Debug, Clone, Default)]
pub struct EnforceStats {
    pub counters: EnforceCounters,
    pub desired: DesiredStats,
    /// Elements the kernel held at the last read-back.
    pub kernel_elements: u64,
    /// Rules put back after a read-back found them missing.
    pub rules_repaired: u64,
    /// Hand-made ranges removed.
    pub foreign_removed: u64,
    pub apply_us_sum: u64,
    pub apply_seconds_max: f64,
    /// The core's block table (copied at each scrape).
    pub blocks: shoal_core::blocks::BlockCounters,
    pub blocks_held: usize,
    pub reconciles: u64,
    /// How long the last read-back took.
    pub readback_seconds: f64,
    pub dry_run: bool,
    /// The last batch was refused and not retried with success yet.
    pub failing: bool,
    pub last_error: Option<String>,
}

/// The running enforcer: its rules (the API checks blocks against them),
/// its stats, and its thread.
pub struct EnforceHandle {
    pub rules: Arc<EnforceRules>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EnforceHandle {
    /// Stops the thread, which then keeps or removes the table.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the edge (unless dry run), sets the table up and starts the
/// thread. Fails when the kernel cannot be reached: a node asked to
/// enforce does not run without.
///
/// `adopt`: no store gave the blocks back (none configured, or its replay
/// failed), so the elements the kernel still holds from this node's
/// previous run are taken as blocks for what is left of their timeouts;
/// otherwise a `kill -9` and restart would remove them.
pub(crate) fn start(
    cfg: &EnforceSection,
    own: &[Prefix],
    shared: Arc<Shared>,
    span: tracing::Span,
    adopt: bool,
) -> Result<EnforceHandle, NftError> {
    let rules = cfg.rules(own);
    let mut nft = if cfg.dry_run {
        None
    } else {
        let mut n = Nft::open(cfg.spec())?;
        n.setup()?;
        if adopt {
            let rb = n.read()?;
            let now = Instant::now();
            let mut node = shared.lock();
            let taken = rb
                .elements
                .iter()
                .filter_map(|o| Some((o.prefix, o.remaining?)))
                .filter(|(p, ttl)| node.adopt_block(now, *p, *ttl))
                .count();
            drop(node);
            if taken > 0 {
                info!(
                    taken,
                    "enforce: no stored blocks; kept the kernel's elements from the previous run"
                );
            }
        }
        Some(n)
    };
    lock(&shared.io.enforce).dry_run = cfg.dry_run;
    let stop = Arc::new(AtomicBool::new(false));
    let remove = cfg.on_exit == "remove";
    let reconcile = Duration::from_millis(cfg.reconcile_ms);
    let enforcer = Enforcer::new(rules.clone(), cfg.dry_run);
    let reader = match nft.as_ref() {
        Some(n) => Some(Reader::start(n.spec().clone(), span.clone())?),
        None => None,
    };
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("shoal-enforce".into())
            .spawn(move || {
                let _e = span.enter();
                let _ = shared.enforce_thread.set(std::thread::current());
                run(enforcer, nft.as_mut(), reader, &shared, &stop, reconcile);
                if let (Some(n), true) = (nft.as_mut(), remove) {
                    match n.remove_table() {
                        Ok(()) => info!("enforce: table removed (on_exit = remove)"),
                        Err(e) => warn!(error = %e, "enforce: could not remove the table"),
                    }
                }
            })
            .map_err(NftError::Socket)?
    };
    info!(
        table = %cfg.table,
        hook = %cfg.hook,
        priority = cfg.priority,
        dry_run = cfg.dry_run,
        "enforcer started"
    );
    Ok(EnforceHandle {
        rules: Arc::new(rules),
        stop,
        thread: Some(thread),
    })
}

/// The read-back's own thread and netlink socket: a large set's read takes
/// seconds (the kernel restarts its walk of the set for every dump
/// message), and batches go on meanwhile; the core keeps the prefixes
/// they change out of the read's verdict.
struct Reader {
    ask: std::sync::mpsc::Sender<()>,
    answers: std::sync::mpsc::Receiver<Result<Readback, NftError>>,
}

impl Reader {
    fn start(spec: TableSpec, span: tracing::Span) -> Result<Reader, NftError> {
        let mut nft = Nft::open(spec)?;
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (answer, answers) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shoal-enforce-read".into())
            .spawn(move || {
                let _e = span.enter();
                // Ends when the enforcer thread drops its sender.
                while asked.recv().is_ok() {
                    if answer.send(nft.read()).is_err() {
                        return;
                    }
                }
            })
            .map_err(NftError::Socket)?;
        Ok(Reader { ask, answers })
    }
}

fn run(
    mut enf: Enforcer,
    mut nft: Option<&mut Nft>,
    reader: Option<Reader>,
    shared: &Shared,
    stop: &AtomicBool,
    reconcile: Duration,
) {
    let stats = &shared.io.enforce;
    let mut last_gen = None;
    let mut next_readback = Instant::now();
    let mut next_change: Option<Instant> = None;
    let mut foreign: Vec<RawInterval> = Vec::new();
    let mut blocks = Vec::new();
    let mut reading = false;
    let mut asked_at = Instant::now();
    let mut read: Option<Result<Readback, NftError>> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(r) = &reader {
            if !reading && read.is_none() && now >= next_readback {
                enf.readback_started();
                reading = r.ask.send(()).is_ok();
                asked_at = now;
                next_readback = now + reconcile;
            }
            if reading {
                if let Ok(answer) = r.answers.try_recv() {
                    // A read of a large set costs the kernel seconds
                    // (quadratic in its size): reads take at most a tenth
                    // of the time, stretching the period if need be.
                    let took = now.saturating_duration_since(asked_at);
                    next_readback = next_readback.max(now + took * READ_SHARE);
                    lock(stats).readback_seconds = took.as_secs_f64();
                    read = Some(answer);
                    reading = false;
                }
            }
        }
        let gen = shared.lock().blocks().generation();
        let due = last_gen != Some(gen)
            || read.is_some()
            || next_change.is_some_and(|t| now >= t)
            || enf.retry_at().is_some_and(|t| now >= t);
        if !due || !enf.ready(now) {
            std::thread::park_timeout(POLL);
            continue;
        }
        blocks.clear();
        {
            let node = shared.lock();
            blocks.extend(node.blocks().live(now).map(|(p, b)| (p, b.expires)));
        }
        last_gen = Some(gen);
        let desired = enf.desired(now, blocks.drain(..));
        next_change = desired.next_change;
        let mut observed = None;
        if let (Some(answer), Some(n)) = (read.take(), nft.as_deref_mut()) {
            match answer {
                Ok(rb) => {
                    let mut s = lock(stats);
                    s.reconciles += 1;
                    s.kernel_elements = rb.elements.len() as u64;
                    drop(s);
                    if !rb.rules_ok {
                        warn!("enforce: the drop rules were missing or changed; putting them back");
                        match n.setup() {
                            Ok(()) => lock(stats).rules_repaired += 1,
                            Err(e) => warn!(error = %e, "enforce: cannot put the rules back"),
                        }
                    }
                    foreign = rb.foreign;
                    observed = Some(rb.elements);
                }
                Err(e) => warn!(error = %e, "enforce: read-back failed"),
            }
        }
        let Some(batch) = enf.plan(now, &desired, observed.as_deref()) else {
            if !foreign.is_empty() {
                if let Some(n) = nft.as_deref_mut() {
                    let empty = shoal_core::enforce::Batch::default();
                    if n.apply(&empty, &foreign).is_ok() {
                        lock(stats).foreign_removed += foreign.len() as u64;
                    }
                }
                foreign.clear();
            }
            publish(stats, &enf);
            continue;
        };
        match nft.as_deref_mut() {
            None => {
                info!(
                    adds = batch.adds.len(),
                    deletes = batch.deletes.len(),
                    first_add = ?batch.adds.first().map(|a| a.0.to_string()),
                    "enforce dry run: would apply"
                );
                enf.batch_ok(&batch);
            }
            Some(n) => {
                let t = Instant::now();
                let result = n.apply(&batch, &foreign);
                let secs = t.elapsed().as_secs_f64();
                let mut s = lock(stats);
                s.apply_us_sum += (secs * 1e6) as u64;
                s.apply_seconds_max = s.apply_seconds_max.max(secs);
                match result {
                    Ok(()) => {
                        s.foreign_removed += foreign.len() as u64;
                        foreign.clear();
                        s.failing = false;
                        drop(s);
                        if batch.repaired_missing + batch.repaired_extra + batch.repaired_ttl > 0 {
                            warn!(
                                missing = batch.repaired_missing,
                                extra = batch.repaired_extra,
                                ttl = batch.repaired_ttl,
                                "enforce: repaired the kernel's sets"
                            );
                        }
                        enf.batch_ok(&batch);
                    }
                    Err(e) => {
                        warn!(error = %e, adds = batch.adds.len(), deletes = batch.deletes.len(),
                            "enforce: batch refused; the previous set stays in force, retrying");
                        s.failing = true;
                        s.last_error = Some(e.to_string());
                        drop(s);
                        enf.batch_failed(now, &batch);
                        // The kernel may hold something we did not expect
                        // (that is why it refused): read it back first.
                        next_readback = now;
                    }
                }
            }
        }
        publish(stats, &enf);
    }
}

/// The live blocks as text, one per line, longest-lived first, at most
/// 10 000 (`/blocks`, `shoal blocks`): prefix, time left, who asked, the
/// reason, and whether this node enforces it.
pub(crate) fn list(shared: &Shared) -> String {
    use std::fmt::Write;
    const MAX: usize = 10_000;
    let now = Instant::now();
    let (mut rows, total) = {
        let node = shared.lock();
        let b = node.blocks();
        (b.live(now).collect::<Vec<_>>(), b.len())
    };
    rows.sort_unstable_by_key(|(p, b)| (std::cmp::Reverse(b.expires), *p));
    let rules = shared.enforce.get().map(|v| Arc::clone(&v.rules));
    let mut out = String::new();
    let _ = writeln!(out, "# {} live blocks ({} held)", rows.len(), total);
    for (p, b) in rows.iter().take(MAX) {
        let origin = if b.origin >> 32 != 0 {
            format!("cluster-{}", b.origin >> 32)
        } else {
            format!("node-{}", b.origin)
        };
        let reason = shoal_wire::reason_from_field(b.reason).unwrap_or_default();
        let enforced = match rules.as_ref().map(|r| r.check(p)) {
            None => "not-enforcing-here".to_string(),
            Some(Ok(())) => "enforced".to_string(),
            Some(Err(e)) => format!("refused: {e}"),
        };
        let _ = writeln!(
            out,
            "{p} ttl_left_ms={} origin={origin} reason={reason:?} {enforced}",
            b.expires.saturating_duration_since(now).as_millis()
        );
    }
    if rows.len() > MAX {
        let _ = writeln!(out, "# {} more not listed", rows.len() - MAX);
    }
    out
}

/// Registers the blocks' and the enforcer's families (zeros without
/// `[enforce]`, like the API's without `[verdicts]`).
pub(crate) fn register(
    stats: &Mutex<EnforceStats>,
    reg: &mut prometheus_client::registry::Registry,
) {
    let s = lock(stats).clone();
    reg.register_collector(crate::metrics::collector(move |o| {
        let b = &s.blocks;
        o.gauge("blocks_held", "Blocked prefixes this node holds (live or not yet purged).", s.blocks_held as u64)?;
        o.counter("blocks_added", "New prefixes taken into the block table.", b.added)?;
        o.counter("blocks_extended", "Blocks whose end moved later.", b.extended)?;
        o.counter("blocks_lifted", "Blocks lifted by an unblock.", b.lifted)?;
        o.counter("blocks_expired", "Blocks that reached their end.", b.expired)?;
        o.counters(
            "blocks_refused",
            "Block records refused: table full, unsigned cluster, bad fields.",
            [("full", b.refused_full), ("unsigned", b.refused_unsigned), ("bad", b.refused_bad)]
                .map(|(r, v)| ([("reason", r)], v)),
        )?;
        let d = &s.desired;
        o.gauges(
            "enforce_elements",
            "Prefixes the kernel sets of each family should hold (address and interval sets together).",
            [("v4", d.elements_v4 as u64), ("v6", d.elements_v6 as u64)]
                .map(|(f, v)| ([("family", f)], v)),
        )?;
        o.gauge("enforce_kernel_elements", "Prefixes found in the kernel's sets at the last read-back.", s.kernel_elements)?;
        o.gauges(
            "enforce_not_enforced",
            "Live blocks this node does not put in the kernel, by reason.",
            [
                ("allowlist", d.refused_allowlist as u64),
                ("too_short", d.refused_short as u64),
                ("covered", d.covered as u64),
                ("over_capacity", d.over_capacity as u64),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;
        let c = &s.counters;
        o.counters(
            "enforce_batches",
            "Kernel batches applied or refused (a refused one changes nothing).",
            [("ok", c.batches_ok), ("failed", c.batches_failed)].map(|(r, v)| ([("result", r)], v)),
        )?;
        o.counter("enforce_elements_added", "Elements added to the kernel's sets.", c.elements_added)?;
        o.counter("enforce_elements_deleted", "Elements deleted from the kernel's sets.", c.elements_deleted)?;
        o.counter("enforce_reasserted", "Elements whose kernel timeout was set again.", c.reasserted)?;
        o.counter("enforce_expired", "Elements the kernel expired by their timeout.", c.expired)?;
        o.counters(
            "enforce_repaired",
            "Drift repaired after a read-back: missing, extra, ttl (elements), rules, foreign (hand-made ranges).",
            [
                ("missing", c.repaired_missing),
                ("extra", c.repaired_extra),
                ("ttl", c.repaired_ttl),
                ("rules", s.rules_repaired),
                ("foreign", s.foreign_removed),
            ]
            .map(|(k, v)| ([("kind", k)], v)),
        )?;
        o.counter("enforce_reconciles", "Kernel read-backs.", s.reconciles)?;
        o.gauge("enforce_readback_seconds", "How long the last kernel read-back took (the next one waits at least 9 times that).", s.readback_seconds)?;
        o.counters(
            "enforce_dry_run",
            "Elements a dry run would have added or deleted.",
            [("add", c.dry_run_adds), ("delete", c.dry_run_deletes)].map(|(k, v)| ([("op", k)], v)),
        )?;
        o.counter("enforce_apply_microseconds", "Time spent applying batches in the kernel.", s.apply_us_sum)?;
        o.gauge("enforce_apply_seconds_max", "Longest batch apply so far.", s.apply_seconds_max)?;
        o.gauge("enforce_failing", "1 while the last batch was refused and no retry succeeded yet.", u64::from(s.failing))?;
        o.gauge("enforce_dry_run_mode", "1 when [enforce] dry_run is on.", u64::from(s.dry_run))
    }));
}

/// The `/status` section (formatted from a copy, without the node's lock).
pub(crate) fn status_text(stats: &Mutex<EnforceStats>, enforcing: bool) -> String {
    let s = lock(stats).clone();
    let b = &s.blocks;
    let mut o = format!(
        "\nblocks: held {}  added {}  lifted {}  expired {}  refused full/unsigned/bad {}/{}/{}\n",
        s.blocks_held,
        b.added,
        b.lifted,
        b.expired,
        b.refused_full,
        b.refused_unsigned,
        b.refused_bad
    );
    if !enforcing {
        o.push_str(
            "enforce: off (no [enforce] section): blocks are held and relayed, not enforced here\n",
        );
        return o;
    }
    let (c, d) = (&s.counters, &s.desired);
    let state = match (s.dry_run, s.failing) {
        (true, _) => "DRY RUN (nothing applied)",
        (false, true) => "FAILING (previous set in force, retrying)",
        (false, false) => "ok",
    };
    o.push_str(&format!(
        "enforce: {state}  elements v4 {} v6 {}  kernel {}  batches ok {} failed {}  \
         added {} deleted {} reasserted {} expired {}\n",
        d.elements_v4,
        d.elements_v6,
        s.kernel_elements,
        c.batches_ok,
        c.batches_failed,
        c.elements_added,
        c.elements_deleted,
        c.reasserted,
        c.expired
    ));
    o.push_str(&format!(
        "  not enforced: allowlist {} too short {} covered {} over capacity {}\n  \
         repaired: missing {} extra {} ttl {} rules {} foreign {}  read-backs {} (last {:.2} s)\n",
        d.refused_allowlist,
        d.refused_short,
        d.covered,
        d.over_capacity,
        c.repaired_missing,
        c.repaired_extra,
        c.repaired_ttl,
        s.rules_repaired,
        s.foreign_removed,
        s.reconciles,
        s.readback_seconds
    ));
    if let Some(e) = &s.last_error {
        o.push_str(&format!("  last error: {e}\n"));
    }
    o
}

/// `POST /v1/blocks` (`{"prefix": "198.51.100.0/24", "ttl_s": 600,
/// "reason": "scan"}`), `GET /v1/blocks`, `DELETE /v1/blocks/PREFIX`, behind
/// the verdict API's bearer tokens (`docs/api.md`). A block is injected
/// into the node as if the filter had sent it (send+save), so it crosses
/// the cluster and the other clusters like one.
pub(crate) fn api(shared: &Shared, method: &str, path: &str, body: &[u8]) -> crate::http::Response {
    use crate::http::Response;
    use shoal_core::LocalError;
    let refused = |e: LocalError| match e {
        LocalError::BlocksUnsigned => Response::error(
            403,
            "this cluster has no [auth] and [enforce] allow_unsigned is off: blocks are refused",
        ),
        LocalError::BlockRefused => Response::error(
            422,
            "the prefix overlaps this node's allowlist or is shorter than its minimum",
        ),
        LocalError::StoreFull => Response::error(
            507,
            "applied and sent, but not saved: the store backlog is full",
        ),
        _ => Response::error(400, "malformed block"),
    };
    match (method, path) {
        ("GET", "/v1/blocks") => {
            let now = Instant::now();
            let mut rows: Vec<(Prefix, shoal_core::blocks::Block)> =
                shared.lock().blocks().live(now).collect();
            rows.sort_unstable_by_key(|(p, b)| (std::cmp::Reverse(b.expires), *p));
            let list: Vec<serde_json::Value> = rows
                .iter()
                .take(10_000)
                .map(|(p, b)| {
                    serde_json::json!({
                        "prefix": p.to_string(),
                        "ttl_left_ms": b.expires.saturating_duration_since(now).as_millis() as u64,
                        "origin_cluster": b.origin >> 32,
                        "origin_node": b.origin & 0xffff_ffff,
                        "reason": shoal_wire::reason_from_field(b.reason).unwrap_or_default(),
                    })
                })
                .collect();
            Response::json(
                200,
                &serde_json::json!({ "blocks": list, "live": rows.len() }),
            )
        }
        ("POST", "/v1/blocks") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Post {
                prefix: String,
                ttl_s: u64,
                #[serde(default)]
                reason: String,
            }
            let post: Post = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return Response::error(400, format!("body: {e}")),
            };
            let p: Prefix = match post.prefix.parse() {
                Ok(p) => p,
                Err(e) => return Response::error(400, format!("prefix: {e}")),
            };
            if let Some(Err(e)) = shared.enforce.get().map(|v| v.rules.check(&p)) {
                return Response::error(422, e.to_string());
            }
            let reason = match shoal_wire::reason_to_field(&post.reason) {
                Ok(r) => r,
                Err(e) => return Response::error(400, format!("reason: {e}")),
            };
            let ttl_ms = match post.ttl_s.checked_mul(1000).map(u32::try_from) {
                Some(Ok(ms)) if ms > 0 => ms,
                _ => return Response::error(400, "ttl_s: 1 to 4294967 (a block must end)"),
            };
            let [f0, f1, f2] = p.to_fields(0);
            let mut r = shoal_wire::Record::new(shoal_wire::Code::BLOCK, [f0, f1, f2, reason]);
            r.ttl_ms = ttl_ms;
            r.op = shoal_wire::Op::SEND_SAVE;
            match inject(shared, r) {
                Ok(()) => {
                    // The TTL held, not the one asked: the node caps it at
                    // its max_ttl (and sends and saves it so).
                    let max = shared.with_node(|n| n.max_block_ttl()).as_millis();
                    let held = u64::from(ttl_ms).min(u64::try_from(max).unwrap_or(u64::MAX));
                    Response::json(
                        201,
                        &serde_json::json!({
                            "prefix": p.to_string(),
                            "ttl_ms": held,
                        }),
                    )
                }
                Err(e) => refused(e),
            }
        }
        ("DELETE", p) if p.starts_with("/v1/blocks/") => {
            let text = &p["/v1/blocks/".len()..];
            let p: Prefix = match text.parse() {
                Ok(p) => p,
                Err(e) => return Response::error(400, format!("prefix: {e}")),
            };
            let [f0, f1, f2] = p.to_fields(0);
            // ttl 0: remembered as long as what is left of the block.
            let mut r = shoal_wire::Record::new(shoal_wire::Code::UNBLOCK, [f0, f1, f2, 0]);
            r.op = shoal_wire::Op::SEND_SAVE;
            match inject(shared, r) {
                Ok(()) => Response::json(200, &serde_json::json!({ "unblocked": p.to_string() })),
                Err(e) => refused(e),
            }
        }
        (_, "/v1/blocks") => Response::error(405, "use GET or POST"),
        _ => Response::error(405, "use DELETE /v1/blocks/PREFIX"),
    }
}

fn inject(shared: &Shared, r: shoal_wire::Record) -> Result<(), shoal_core::LocalError> {
    shared.with_node(|n| {
        let res = n.inject(Instant::now(), r);
        n.flush();
        res
    })
}

/// Copies the block table's numbers (under the node's lock: O(1)).
pub(crate) fn copy_blocks(node: &shoal_core::Node, stats: &Mutex<EnforceStats>) {
    let mut s = lock(stats);
    s.blocks = node.blocks().counters;
    s.blocks_held = node.blocks().len();
}

fn lock(stats: &Mutex<EnforceStats>) -> std::sync::MutexGuard<'_, EnforceStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

fn publish(stats: &Mutex<EnforceStats>, enf: &Enforcer) {
    let mut s = lock(stats);
    s.counters = enf.counters;
    s.desired = enf.last_desired;
}
