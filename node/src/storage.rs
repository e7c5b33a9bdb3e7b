//! The Tarantool edge of the node: replay at start, then the save loop
//! that moves batches from the node's backlog to the cluster's store, and
//! the scrape of the masters' own counters.
//!
//! Saves go to one master at a time (the active one) as calls of
//! `store.save_function` (the Lua `shoal_save`, or the expiry module's
//! native `shoal_expirer.shoal_save`) of up to `store.batch` records,
//! several in flight on one connection. A batch that fails or times out
//! goes back to the front of the backlog and is sent again, to the other
//! master when the active one is down: both procedures replace tuples
//! under keys only this node writes, so a batch saved twice, or on both
//! masters, is harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde::Deserialize;
use shoal_tarantool::{Client, ClientConfig, Error as TtError, Iter, Select, Tarantool};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, StoreSection};
use crate::metrics;
use crate::server::Shared;
use shoal_core::{BatchId, Row};

/// Rows per select while replaying.
const REPLAY_PAGE: u32 = 20_000;
/// How often the masters' own counters are read.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Wait before retrying when no master answers.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long, from start, saves and replay wait for the preferred master
/// before taking another that is already connected.
const PREFERRED_GRACE: Duration = Duration::from_millis(500);
/// How long a stopping node keeps saving what it still holds.
const DRAIN_ON_STOP: Duration = Duration::from_secs(3);

/// What the storage driver reports (its backlog lives in the node).
#[derive(Debug, Default)]
pub(crate) struct StoreIo {
    pub(crate) failovers: AtomicU64,
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
        let [failovers, replay_records, replay_us, replay_ok] = [
            &self.failovers,
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
    masters: Vec<Client>,
    /// The stored procedure batches are saved with.
    save_function: Arc<str>,
    active: usize,
    batch_limit: usize,
    in_flight: usize,
    replay_timeout: Duration,
    shared: Arc<Shared>,
    started: Instant,
}

/// One `shoal_log` tuple as it comes back from a select.
#[derive(Debug, Deserialize)]
struct LogTuple(String, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

impl LogTuple {
    fn row(&self) -> Row {
        [
            self.1, self.2, self.3, self.4, self.5, self.6, self.7, self.8, self.9, self.10,
        ]
    }
}

/// What a save call returns: the number of rows saved. The Lua procedure
/// returns it bare; Tarantool 2.6 wraps each value a C procedure returns
/// in an array over IPROTO `call`, so the native one's comes as `[n]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SaveReply {
    Count(u64),
    Wrapped((u64,)),
}

impl SaveReply {
    fn count(&self) -> u64 {
        match self {
            SaveReply::Count(n) | SaveReply::Wrapped((n,)) => *n,
        }
    }
}

/// What `shoal_stats()` returns.
#[derive(Debug, Default, Deserialize)]
struct StoreStatsReply {
    #[serde(default)]
    log_len: u64,
    #[serde(default)]
    log_bytes: u64,
    #[serde(default)]
    lua_memory: f64,
    #[serde(default)]
    expirer: Option<ExpirerReply>,
}

#[derive(Debug, Default, Deserialize)]
struct ExpirerReply {
    #[serde(default)]
    deleted: u64,
    #[serde(default)]
    scanned: u64,
    #[serde(default)]
    batches: u64,
    #[serde(default)]
    lag_ms: f64,
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

impl Storage {
    /// Connects (in the background) to every master. Must run inside the
    /// tokio runtime that will drive [`Storage::run`].
    pub(crate) fn new(
        cfg: &StoreSection,
        name: String,
        shared: Arc<Shared>,
    ) -> Result<Storage, ConfigError> {
        let password = cfg.password()?;
        let masters: Vec<Client> = cfg
            .masters
            .iter()
            .map(|addr| {
                Client::new(ClientConfig {
                    request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                    ..ClientConfig::new(addr.clone(), cfg.user.clone(), password.clone())
                })
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
        Ok(Storage {
            name,
            masters,
            save_function: Arc::from(cfg.save_function.as_str()),
            active: 0,
            batch_limit: cfg.batch,
            in_flight: cfg.in_flight,
            replay_timeout: Duration::from_millis(cfg.replay_timeout_ms),
            shared,
            started: Instant::now(),
        })
    }

    fn with_master(&self, i: usize, f: impl FnOnce(&mut MasterStats)) {
        if let Ok(mut m) = self.shared.io.store.masters.lock() {
            if let Some(m) = m.get_mut(i) {
                f(m);
            }
        }
    }

    /// The active master if connected, else the next connected one; at
    /// start-up only the active (preferred) master, for `PREFERRED_GRACE`:
    /// all connections start at once, and the preferred one should not lose
    /// to whichever handshake happened to finish first.
    fn connected(&self) -> Option<usize> {
        let n = self.masters.len();
        if self.masters[self.active].is_connected() {
            return Some(self.active);
        }
        if self.started.elapsed() < PREFERRED_GRACE {
            return None;
        }
        (1..n)
            .map(|k| (self.active + k) % n)
            .find(|&i| self.masters[i].is_connected())
    }

    /// The first master to answer, within the replay timeout.
    async fn any_master(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.connected() {
                return Some(i);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Loads every live record of the cluster from the store into `node`.
    /// Reads each node's key range from `{node, now}` on, so no expired
    /// tuple is transferred (the primary key is ordered by expiry).
    pub(crate) async fn replay(&mut self, now_wall_us: u64) -> Result<Replayed, TtError> {
        let started = Instant::now();
        let Some(i) = self.any_master(self.replay_timeout).await else {
            return Err(TtError::Disconnected);
        };
        let client = &self.masters[i];
        let now = now_wall_us;
        let mut rows: Vec<(String, Row)> = Vec::new();
        let mut after: Option<(String, u64, u64)> = None;
        loop {
            let page: Vec<LogTuple> = match &after {
                None => {
                    let all: &[u64] = &[];
                    client
                        .select(
                            "shoal_log",
                            &all,
                            Select {
                                iter: Iter::All,
                                limit: REPLAY_PAGE,
                                ..Select::default()
                            },
                        )
                        .await?
                }
                Some(key) => {
                    client
                        .select(
                            "shoal_log",
                            key,
                            Select {
                                iter: Iter::Gt,
                                limit: REPLAY_PAGE,
                                ..Select::default()
                            },
                        )
                        .await?
                }
            };
            let full = page.len() == REPLAY_PAGE as usize;
            let mut jumped = false;
            for t in page {
                if t.1 <= now {
                    // The expired front of a node's range (the expirer has
                    // not got to it yet): skip to the range's live part.
                    after = Some((t.0, now, u64::MAX));
                    jumped = true;
                    break;
                }
                after = Some((t.0.clone(), t.1, t.2));
                let row = t.row();
                rows.push((t.0, row));
            }
            if !jumped && !full {
                break;
            }
        }
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

    /// Picks the master to save to: the active one while it is connected,
    /// else the next connected one (a failover).
    fn pick(&mut self) -> Option<usize> {
        let i = self.connected()?;
        if i != self.active {
            warn!(
                from = %self.masters[self.active].addr(),
                to = %self.masters[i].addr(),
                "store failover"
            );
            self.shared
                .io
                .store
                .failovers
                .fetch_add(1, Ordering::Relaxed);
            let old = self.active;
            self.with_master(old, |m| m.active = false);
            self.with_master(i, |m| m.active = true);
            self.active = i;
        }
        Some(i)
    }

    /// Moves batches from the backlog to the store until `stop` resolves,
    /// then keeps saving for a short while so a clean stop loses nothing
    /// that a master can still take.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let shared = Arc::clone(&self.shared);
        let backlog = || shared.lock().backlog().map_or(0, |b| b.len());
        type Done = (BatchId, usize, usize, Result<(SaveReply,), TtError>);
        let mut calls: JoinSet<Done> = JoinSet::new();
        let mut buf: Vec<Row> = Vec::with_capacity(self.batch_limit);
        let mut retry = RETRY_MIN;
        let mut next_scrape = Instant::now();
        let mut stopping: Option<Instant> = None;
        tokio::pin!(stop);
        loop {
            let mut stalled = false;
            while calls.len() < self.in_flight {
                let Some(i) = self.pick() else {
                    stalled = true;
                    break;
                };
                let id = { self.shared.lock().take_save_batch(&mut buf) };
                let Some(id) = id else { break };
                let client = self.masters[i].clone();
                let function = Arc::clone(&self.save_function);
                let args = (self.name.clone(), std::mem::take(&mut buf));
                calls.spawn(async move {
                    let r = client.call(&function, &args).await;
                    (id, i, args.1.len(), r)
                });
            }
            if Instant::now() >= next_scrape {
                next_scrape = Instant::now() + SCRAPE_EVERY;
                self.scrape().await;
            }
            if let Some(t) = stopping {
                if backlog() == 0 || t.elapsed() >= DRAIN_ON_STOP {
                    let left = backlog();
                    if left > 0 {
                        warn!(
                            records = left,
                            "stopping with records the store did not take"
                        );
                    }
                    return;
                }
            }
            let wait = if stalled { retry } else { SCRAPE_EVERY };
            tokio::select! {
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let Ok((id, i, sent, result)) = done else { continue };
                    match result {
                        Ok((reply,)) => {
                            if reply.count() != sent as u64 {
                                // Both procedures save all or nothing; a
                                // different count is a procedure not ours.
                                warn!(master = %self.masters[i].addr(), sent, saved = reply.count(), "save call answered an unexpected count");
                            }
                            self.shared.lock().save_acked(id);
                            retry = RETRY_MIN;
                            self.with_master(i, |m| m.batches += 1);
                        }
                        Err(e) => {
                            self.shared.lock().save_failed(id);
                            self.with_master(i, |m| m.errors += 1);
                            warn!(master = %self.masters[i].addr(), error = %e, "save batch failed; retrying");
                            if !is_connection(&e) {
                                // The master answered but refused: do not
                                // spin on it.
                                tokio::time::sleep(retry).await;
                                retry = (retry * 2).min(RETRY_MAX);
                            }
                        }
                    }
                }
                _ = self.shared.store_wake.notified(), if !stalled => {}
                _ = tokio::time::sleep(wait) => {
                    if stalled {
                        retry = (retry * 2).min(RETRY_MAX);
                        debug!(backlog = backlog(), "no master connected");
                    }
                }
                _ = &mut stop, if stopping.is_none() => {
                    stopping = Some(Instant::now());
                    info!(backlog = backlog(), "saving what is left before stopping");
                }
            }
        }
    }

    /// Reads each connected master's `shoal_stats()` into the metrics.
    async fn scrape(&self) {
        for (i, c) in self.masters.iter().enumerate() {
            let connected = c.is_connected();
            let reply = if connected {
                c.call::<_, (StoreStatsReply,)>("shoal_stats", &())
                    .await
                    .map(|(s,)| s)
                    .ok()
            } else {
                None
            };
            self.with_master(i, |m| {
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

/// Whether an error says the master is unreachable (fail over) rather than
/// that it answered and refused (back off, same master).
fn is_connection(e: &TtError) -> bool {
    matches!(
        e,
        TtError::Disconnected
            | TtError::OutcomeUnknown(_)
            | TtError::Timeout(_)
            | TtError::Io(_)
            | TtError::ConnectTimeout(_)
    )
}
