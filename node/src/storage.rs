//! The Tarantool edge of the node: a thin tokio driver of the core's
//! [`SavePath`] over [`StateLog`] masters. Replay at start, then the save
//! loop that moves batches from the node's backlog to the cluster's
//! store; the scrape of the masters' own counters runs in a task of its
//! own, with its own timeouts, so a hung master cannot stall saves.
//!
//! The machine decides (which master, when one is suspect, when to ping,
//! when to take the preferred one back); this driver does the I/O it asks
//! for, with one deadline per request, and reports every outcome back. A
//! batch that fails or times out goes back to the front of the backlog and
//! is sent again, to the other master when the active one is suspect or
//! down: saving replaces tuples under keys only this node writes, so a
//! batch saved twice, or on both masters, is harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use shoal_core::{
    AckLevel, BatchId, LogError, Row, SaveAck, SaveEvent, SavePath, SavePathParams, StateLog,
};
use shoal_tarantool::statelog::TarantoolLog;
use shoal_tarantool::{Client, ClientConfig};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{AckSetting, ConfigError, StoreSection};
use crate::metrics;
use crate::server::Shared;

/// How often the masters' own counters are read, and the limit on one read.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopping node keeps saving what it still holds.
const DRAIN_ON_STOP: Duration = Duration::from_secs(3);
/// Connection changes are looked at least this often.
const POLL_MAX: Duration = Duration::from_millis(50);
/// At most one fallback warning per this long (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What the storage driver reports (its backlog lives in the node).
#[derive(Debug, Default)]
pub(crate) struct StoreIo {
    pub(crate) failovers: AtomicU64,
    /// Masters found silent (consecutive timeouts) and back again.
    pub(crate) suspects: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    /// Batches `replicated` was asked for and saved on one master only
    /// (the peer down, or not confirming in time).
    pub(crate) ack_fallbacks: AtomicU64,
    /// 1 when saves are acknowledged at `replicated`.
    pub(crate) ack_replicated: AtomicU64,
    /// Records loaded from the store at start, and how long it took.
    pub(crate) replay_records: AtomicU64,
    pub(crate) replay_us: AtomicU64,
    /// 1 when the start-up replay completed.
    pub(crate) replay_ok: AtomicU64,
    /// One entry per configured master; empty when no store is.
    pub(crate) masters: Mutex<Vec<MasterStats>>,
}

/// One master of the cluster's store, as last seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct MasterStats {
    pub(crate) addr: String,
    pub(crate) connected: bool,
    /// Saves go here now.
    pub(crate) active: bool,
    /// Silent: no batch goes here until a ping or a new connection answers.
    pub(crate) suspect: bool,
    /// Only ever incremented.
    pub(crate) batches: u64,
    pub(crate) errors: u64,
    /// From `shoal_stats()` on the master.
    pub(crate) log_len: u64,
    pub(crate) log_bytes: u64,
    pub(crate) lua_memory: u64,
    pub(crate) expirer: Option<ExpirerStats>,
}

/// The native expiry worker's counters on one master (they restart from
/// 0 when the master does, which Prometheus reads as a counter reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExpirerStats {
    pub(crate) deleted: u64,
    pub(crate) scanned: u64,
    pub(crate) batches: u64,
    pub(crate) lag_ms: u64,
}

impl StoreIo {
    /// Registers the store's values as they are now; nothing when no
    /// store is configured.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let masters = match self.masters.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if masters.is_empty() {
            return;
        }
        let [failovers, suspects, recoveries, ack_fallbacks, ack_replicated, replay_records, replay_us, replay_ok] =
            [
                &self.failovers,
                &self.suspects,
                &self.recoveries,
                &self.ack_fallbacks,
                &self.ack_replicated,
                &self.replay_records,
                &self.replay_us,
                &self.replay_ok,
            ]
            .map(|a| a.load(Ordering::Relaxed));
        reg.register_collector(metrics::collector(move |o| {
            o.counter(
                "store_failovers",
                "Switches of the active master.",
                failovers,
            )?;
            o.counter(
                "store_suspects",
                "Masters marked suspect after consecutive unanswered requests.",
                suspects,
            )?;
            o.counter(
                "store_recoveries",
                "Suspect masters that answered again.",
                recoveries,
            )?;
            o.counter(
                "store_ack_fallbacks",
                "Batches saved on one master only although replicated was asked (peer down or slow).",
                ack_fallbacks,
            )?;
            o.gauge(
                "store_ack_replicated",
                "1 when a batch counts as saved only once both masters have it.",
                ack_replicated,
            )?;
            o.gauge(
                "replay_records",
                "Records replayed from the store at start.",
                replay_records,
            )?;
            o.gauge(
                "replay_seconds",
                "Time the start-up replay took.",
                replay_us as f64 / 1e6,
            )?;
            o.gauge(
                "replay_ok",
                "1 when the start-up replay completed.",
                replay_ok,
            )?;
            let each = |f: fn(&MasterStats) -> u64| {
                masters
                    .iter()
                    .map(move |m| ([("master", m.addr.as_str())], f(m)))
            };
            o.gauges(
                "store_master_up",
                "1 when connected and authenticated.",
                each(|m| m.connected.into()),
            )?;
            o.gauges(
                "store_master_active",
                "1 for the master saves go to.",
                each(|m| m.active.into()),
            )?;
            o.gauges(
                "store_master_suspect",
                "1 while the master is suspect (silent).",
                each(|m| m.suspect.into()),
            )?;
            o.counters(
                "store_master_batches",
                "Save batches committed by this master.",
                each(|m| m.batches),
            )?;
            o.counters(
                "store_master_errors",
                "Failed requests to this master.",
                each(|m| m.errors),
            )?;
            o.gauges(
                "store_log_tuples",
                "Tuples in shoal_log on this master.",
                each(|m| m.log_len),
            )?;
            o.gauges(
                "store_log_bytes",
                "Bytes of shoal_log on this master.",
                each(|m| m.log_bytes),
            )?;
            o.gauges(
                "store_lua_memory_bytes",
                "Lua memory of this master.",
                each(|m| m.lua_memory),
            )?;
            let expirer = || {
                masters
                    .iter()
                    .filter_map(|m| Some(([("master", m.addr.as_str())], m.expirer?)))
            };
            o.counters(
                "expirer_deleted",
                "Tuples deleted by the expiry worker.",
                expirer().map(|(l, e)| (l, e.deleted)),
            )?;
            o.counters(
                "expirer_scanned",
                "Tuples looked at by the expiry worker.",
                expirer().map(|(l, e)| (l, e.scanned)),
            )?;
            o.counters(
                "expirer_batches",
                "Expiry transactions committed.",
                expirer().map(|(l, e)| (l, e.batches)),
            )?;
            o.gauges(
                "expirer_lag_seconds",
                "Age of the oldest expired tuple still present.",
                expirer().map(|(l, e)| (l, e.lag_ms as f64 / 1e3)),
            )
        }));
    }
}

/// The store connections of one node.
pub(crate) struct Storage {
    name: String,
    logs: Vec<TarantoolLog>,
    path: SavePath,
    ack: AckLevel,
    batch_limit: usize,
    request_timeout: Duration,
    replay_timeout: Duration,
    shared: Arc<Shared>,
}

/// The outcome of the start-up replay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replayed {
    pub(crate) read: usize,
    pub(crate) applied: usize,
    pub(crate) took: Duration,
    /// Of `took`, the part spent reading from the store.
    pub(crate) reading: Duration,
}

/// The end of a save call: batch, master, rows sent, outcome.
type Done = (BatchId, usize, usize, Result<SaveAck, LogError>);

impl Storage {
    /// Connects (in the background) to every master. Must run inside the
    /// tokio runtime that will drive [`Storage::run`].
    pub(crate) fn new(
        cfg: &StoreSection,
        name: String,
        shared: Arc<Shared>,
    ) -> Result<Storage, ConfigError> {
        let password = cfg.password()?;
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms);
        let ack = match cfg.ack_level() {
            AckSetting::Local => AckLevel::Local,
            AckSetting::Replicated => AckLevel::Replicated,
        };
        let logs: Vec<TarantoolLog> = cfg
            .masters
            .iter()
            .map(|addr| {
                let client = Client::new(ClientConfig {
                    request_timeout,
                    ping_idle: Some(Duration::from_millis(cfg.ping_ms)),
                    dead_after: Duration::from_millis(cfg.dead_ms),
                    ..ClientConfig::new(addr.clone(), cfg.user.clone(), password.clone())
                });
                TarantoolLog::new(
                    client,
                    &cfg.save_function,
                    Duration::from_millis(cfg.ack_timeout_ms),
                )
            })
            .collect();
        if let Ok(mut m) = shared.io.store.masters.lock() {
            *m = cfg
                .masters
                .iter()
                .enumerate()
                .map(|(i, addr)| MasterStats {
                    addr: addr.clone(),
                    active: i == 0,
                    ..MasterStats::default()
                })
                .collect();
        }
        shared
            .io
            .store
            .ack_replicated
            .store(u64::from(ack == AckLevel::Replicated), Ordering::Relaxed);
        let params = SavePathParams {
            suspect_after: cfg.suspect_after,
            ping_every: Duration::from_millis(cfg.ping_ms),
            failback_after: Duration::from_millis(cfg.failback_ms),
            ..SavePathParams::new(cfg.masters.len(), cfg.in_flight)
        };
        Ok(Storage {
            name,
            path: SavePath::new(params, Instant::now()),
            logs,
            ack,
            batch_limit: cfg.batch,
            request_timeout,
            replay_timeout: Duration::from_millis(cfg.replay_timeout_ms),
            shared,
        })
    }

    fn with_master(&self, i: usize, f: impl FnOnce(&mut MasterStats)) {
        with_master(&self.shared, i, f);
    }

    /// Tells the machine which connections are up.
    fn observe(&mut self, now: Instant) {
        for (i, l) in self.logs.iter().enumerate() {
            self.path.set_connected(i, l.is_connected(), now);
        }
    }

    /// Reports the machine's decisions: logs, counters, the status page.
    fn report(&mut self) {
        let io = &self.shared.io.store;
        while let Some(e) = self.path.poll_event() {
            match e {
                SaveEvent::Failover { from, to } => {
                    warn!(from = %self.logs[from].addr(), to = %self.logs[to].addr(), "store failover");
                    io.failovers.fetch_add(1, Ordering::Relaxed);
                    self.with_master(from, |m| m.active = false);
                    self.with_master(to, |m| m.active = true);
                }
                SaveEvent::Suspect(i) => {
                    warn!(master = %self.logs[i].addr(), "store master silent: suspect, no saves until it answers");
                    io.suspects.fetch_add(1, Ordering::Relaxed);
                    self.with_master(i, |m| m.suspect = true);
                }
                SaveEvent::Recovered(i) => {
                    info!(master = %self.logs[i].addr(), "store master answers again");
                    io.recoveries.fetch_add(1, Ordering::Relaxed);
                    self.with_master(i, |m| m.suspect = false);
                }
            }
        }
    }

    /// Loads every live record of the cluster from the store into `node`,
    /// from the master the machine chooses; a master that fails or does
    /// not answer in time is passed over for the next, until
    /// `replay_timeout`.
    pub(crate) async fn replay(&mut self, now_wall_us: u64) -> Result<Replayed, LogError> {
        let started = Instant::now();
        let deadline = started + self.replay_timeout;
        let mut last = LogError::Disconnected;
        let rows = loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            self.observe(now);
            let Some(i) = self.path.choose(now) else {
                self.report();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            self.report();
            let limit = deadline - now;
            let read = tokio::time::timeout(limit, self.logs[i].replay(now_wall_us)).await;
            match read.unwrap_or(Err(LogError::Timeout(limit))) {
                Ok(rows) => break rows,
                Err(e) => {
                    warn!(master = %self.logs[i].addr(), error = %e, "replay failed on this master");
                    self.path.note_failure(i, e.failure(), Instant::now());
                    last = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let read = rows.len();
        let reading = started.elapsed();
        let applied = {
            let mut n = self.shared.lock();
            let now = Instant::now();
            n.replay(
                now,
                &self.name,
                rows.iter().map(|(name, r)| (name.as_str(), *r)),
            )
        };
        Ok(Replayed {
            read,
            applied,
            took: started.elapsed(),
            reading,
        })
    }

    /// Moves batches from the backlog to the store until `stop` resolves,
    /// then keeps saving for a short while so a clean stop loses nothing
    /// that a master can still take.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let shared = Arc::clone(&self.shared);
        let backlog = || shared.lock().backlog().map_or(0, |b| b.len());
        let queued = || shared.lock().backlog().map_or(0, |b| b.queued());
        let scrape = tokio::spawn(scrape_loop(self.logs.clone(), Arc::clone(&self.shared)));
        let mut calls: JoinSet<Done> = JoinSet::new();
        let mut pings: JoinSet<(usize, bool)> = JoinSet::new();
        let mut buf: Vec<Row> = Vec::with_capacity(self.batch_limit);
        let mut stopping: Option<Instant> = None;
        let mut last_warn: Option<Instant> = None;
        let mut unwarned: u64 = 0;
        tokio::pin!(stop);
        loop {
            let now = Instant::now();
            self.observe(now);
            // Fail over or back now, not at the next batch: the status
            // page shows where saves go.
            self.path.choose(now);
            while let Some(i) = self.path.poll_ping(now) {
                let log = self.logs[i].clone();
                let limit = self.request_timeout;
                pings.spawn(async move {
                    let ok = tokio::time::timeout(limit, log.ping()).await;
                    (i, matches!(ok, Ok(Ok(()))))
                });
            }
            while queued() > 0 {
                let Some(i) = self.path.next_send(now) else {
                    break;
                };
                let id = { self.shared.lock().take_save_batch(&mut buf) };
                let Some(id) = id else {
                    self.path.cancel();
                    break;
                };
                let log = self.logs[i].clone();
                let name = self.name.clone();
                let rows = std::mem::take(&mut buf);
                let (ack, limit) = (self.ack, self.request_timeout);
                calls.spawn(async move {
                    let r = tokio::time::timeout(limit, log.save(&name, &rows, ack)).await;
                    (
                        id,
                        i,
                        rows.len(),
                        r.unwrap_or(Err(LogError::Timeout(limit))),
                    )
                });
            }
            self.report();
            if let Some(t) = stopping {
                if backlog() == 0 || t.elapsed() >= DRAIN_ON_STOP {
                    let left = backlog();
                    if left > 0 {
                        warn!(
                            records = left,
                            "stopping with records the store did not take"
                        );
                    }
                    scrape.abort();
                    return;
                }
            }
            let stalled = self.path.stalled(now);
            let free = self.path.has_room();
            let wait = self
                .path
                .poll_timeout(now)
                .map_or(POLL_MAX, |t| t.saturating_duration_since(now))
                .min(POLL_MAX);
            tokio::select! {
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let Ok((id, i, sent, result)) = done else { continue };
                    let now = Instant::now();
                    match result {
                        Ok(ack) => {
                            if ack.rows != sent as u64 {
                                // Both procedures save all or nothing; a
                                // different count is a procedure not ours.
                                warn!(master = %self.logs[i].addr(), sent, saved = ack.rows, "save call answered an unexpected count");
                            }
                            if ack.replication.fell_back() {
                                self.shared.io.store.ack_fallbacks.fetch_add(1, Ordering::Relaxed);
                                unwarned += 1;
                                if last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                                    warn!(master = %self.logs[i].addr(), why = ?ack.replication, batches = unwarned, "saved on one master only: its peer did not confirm (ack falls back to local)");
                                    last_warn = Some(now);
                                    unwarned = 0;
                                }
                            }
                            self.shared.lock().save_acked(id);
                            self.path.saved(i, now);
                            self.with_master(i, |m| m.batches += 1);
                        }
                        Err(e) => {
                            self.shared.lock().save_failed(id);
                            self.path.failed(i, e.failure(), now);
                            self.with_master(i, |m| m.errors += 1);
                            warn!(master = %self.logs[i].addr(), error = %e, "save batch failed; retrying");
                        }
                    }
                }
                Some(p) = pings.join_next(), if !pings.is_empty() => {
                    if let Ok((i, ok)) = p {
                        if !ok {
                            self.with_master(i, |m| m.errors += 1);
                            debug!(master = %self.logs[i].addr(), "ping unanswered");
                        }
                        self.path.pinged(i, ok, Instant::now());
                    }
                }
                _ = self.shared.store_wake.notified(), if !stalled && free => {}
                _ = tokio::time::sleep(wait) => {
                    if stalled && queued() > 0 {
                        debug!(backlog = backlog(), "no usable master");
                    }
                }
                _ = &mut stop, if stopping.is_none() => {
                    stopping = Some(Instant::now());
                    info!(backlog = backlog(), "saving what is left before stopping");
                }
            }
        }
    }
}

fn with_master(shared: &Shared, i: usize, f: impl FnOnce(&mut MasterStats)) {
    if let Ok(mut m) = shared.io.store.masters.lock() {
        if let Some(m) = m.get_mut(i) {
            f(m);
        }
    }
}

/// Reads each master's `shoal_stats()` into the metrics every
/// `SCRAPE_EVERY`, each read bounded by `SCRAPE_TIMEOUT`, off the save
/// path.
async fn scrape_loop(logs: Vec<TarantoolLog>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, log) in logs.iter().enumerate() {
            let connected = log.is_connected();
            let reply = if connected {
                tokio::time::timeout(SCRAPE_TIMEOUT, log.stats())
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            with_master(&shared, i, |m| {
                m.connected = connected;
                if let Some(s) = reply {
                    m.log_len = s.log_len;
                    m.log_bytes = s.log_bytes;
                    m.lua_memory = s.lua_memory as u64;
                    m.expirer = s.expirer.map(|e| ExpirerStats {
                        deleted: e.deleted,
                        scanned: e.scanned,
                        batches: e.batches,
                        lag_ms: e.lag_ms as u64,
                    });
                }
            });
        }
    }
}
