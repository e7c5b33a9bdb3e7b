//! The cluster state store as the node, the expirer tests and the benches
//! use it: the one place that knows the `shoal_log` tuple layout and the
//! store's procedure names (`lua/shoal_store.lua`), and the
//! [`StateLog`] implementation over a [`Client`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_core::{AckLevel, Health, LogError, Replication, Row, SaveAck, StateLog};

use crate::{Client, Error, Iter, Select, Tarantool};

/// The log space.
pub const LOG_SPACE: &str = "shoal_log";
/// The Lua save procedure: `shoal_save(node, rows) -> count`.
pub const SAVE_LUA: &str = "shoal_save";
/// The expiry module's native one: same arguments, `[count]` back.
pub const SAVE_NATIVE: &str = "shoal_expirer.shoal_save";
/// `shoal_save_sync(timeout_s) -> 'confirmed' | 'peer_down' | 'timeout'`.
pub const SAVE_SYNC: &str = "shoal_save_sync";
/// `shoal_health() -> {ro, peers = {{upstream, downstream}}, log_len}`.
pub const HEALTH: &str = "shoal_health";
/// `shoal_stats() -> {log_len, log_bytes, lua_memory, expirer?}`.
pub const STATS: &str = "shoal_stats";

/// Rows per select while replaying.
const REPLAY_PAGE: u32 = 20_000;

/// One `shoal_log` tuple: the node name, then the [`Row`]
/// (`expires_us, id, timing_us, code, op, origin, f0..f3`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogTuple(
    pub String,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
    pub u64,
);

impl LogTuple {
    pub fn new(node: impl Into<String>, r: Row) -> LogTuple {
        LogTuple(
            node.into(),
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
        )
    }

    pub fn node(&self) -> &str {
        &self.0
    }

    pub fn row(&self) -> Row {
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
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoreStats {
    #[serde(default)]
    pub log_len: u64,
    #[serde(default)]
    pub log_bytes: u64,
    #[serde(default)]
    pub lua_memory: f64,
    #[serde(default)]
    pub expirer: Option<ExpirerStats>,
}

/// The native expiry worker's counters in `shoal_stats()`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ExpirerStats {
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub scanned: u64,
    #[serde(default)]
    pub batches: u64,
    #[serde(default)]
    pub lag_ms: f64,
}

#[derive(Debug, Deserialize)]
struct HealthReply {
    #[serde(default)]
    ro: bool,
    #[serde(default)]
    log_len: u64,
    #[serde(default)]
    peers: Vec<PeerReply>,
}

#[derive(Debug, Deserialize)]
struct PeerReply {
    upstream: String,
    downstream: String,
}

/// One master of the state store over IPROTO. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TarantoolLog {
    client: Client,
    save_function: Arc<str>,
    sync_timeout: Duration,
}

impl TarantoolLog {
    /// Saves with `save_function` ([`SAVE_LUA`] or [`SAVE_NATIVE`]); a
    /// `Replicated` save waits up to `sync_timeout` on the master for its
    /// peer (keep it under the client's request timeout).
    pub fn new(client: Client, save_function: &str, sync_timeout: Duration) -> TarantoolLog {
        TarantoolLog {
            client,
            save_function: Arc::from(save_function),
            sync_timeout,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The master's own counters (`shoal_stats()`).
    pub async fn stats(&self) -> Result<StoreStats, Error> {
        let (s,): (StoreStats,) = self.client.call(STATS, &()).await?;
        Ok(s)
    }

    /// Every tuple of the log, live or not, in key order (tests, tools).
    pub async fn all_tuples(&self) -> Result<Vec<LogTuple>, Error> {
        let all: &[u64] = &[];
        self.client
            .select(
                LOG_SPACE,
                &all,
                Select {
                    iter: Iter::All,
                    limit: u32::MAX,
                    ..Select::default()
                },
            )
            .await
    }

    /// One page of tuples: from the start, or after `key`.
    async fn page(&self, after: Option<&(String, u64, u64)>) -> Result<Vec<LogTuple>, Error> {
        match after {
            None => {
                let all: &[u64] = &[];
                let opts = Select {
                    iter: Iter::All,
                    limit: REPLAY_PAGE,
                    ..Select::default()
                };
                self.client.select(LOG_SPACE, &all, opts).await
            }
            Some(key) => {
                let opts = Select {
                    iter: Iter::Gt,
                    limit: REPLAY_PAGE,
                    ..Select::default()
                };
                self.client.select(LOG_SPACE, key, opts).await
            }
        }
    }
}

/// The client's errors as the save path sees them.
pub fn log_error(e: Error) -> LogError {
    match e {
        Error::Disconnected => LogError::Disconnected,
        Error::Timeout(d) => LogError::Timeout(d),
        Error::OutcomeUnknown(why) => LogError::Lost(why),
        Error::Io(e) => LogError::Lost(e.to_string()),
        Error::ConnectTimeout(d) => LogError::Lost(format!("connecting took over {d:?}")),
        e @ (Error::Decode(_) | Error::Protocol(_) | Error::Encode(_)) => {
            LogError::BadReply(e.to_string())
        }
        e => LogError::Refused(e.to_string()),
    }
}

impl StateLog for TarantoolLog {
    fn addr(&self) -> &str {
        self.client.addr()
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// One call of the save procedure (one transaction) and, for
    /// `Replicated`, a second call on the same master that waits for the
    /// peer to acknowledge up to the master's LSN after the first.
    async fn save(&self, node: &str, rows: &[Row], ack: AckLevel) -> Result<SaveAck, LogError> {
        let (reply,): (SaveReply,) = self
            .client
            .call(&self.save_function, &(node, rows))
            .await
            .map_err(log_error)?;
        let replication = match ack {
            AckLevel::Local => Replication::NotAsked,
            AckLevel::Replicated => {
                let (r,): (String,) = self
                    .client
                    .call(SAVE_SYNC, &(self.sync_timeout.as_secs_f64(),))
                    .await
                    .map_err(log_error)?;
                match r.as_str() {
                    "confirmed" => Replication::Confirmed,
                    "peer_down" => Replication::PeerDown,
                    "timeout" => Replication::TimedOut,
                    other => {
                        return Err(LogError::BadReply(format!(
                            "{SAVE_SYNC} answered {other:?}"
                        )))
                    }
                }
            }
        };
        Ok(SaveAck {
            rows: reply.count(),
            replication,
        })
    }

    /// Reads each node's key range from `{node, now}` on, so no expired
    /// tuple is transferred (the primary key is ordered by expiry).
    async fn replay(&self, now_wall_us: u64) -> Result<Vec<(String, Row)>, LogError> {
        let mut rows: Vec<(String, Row)> = Vec::new();
        let mut after: Option<(String, u64, u64)> = None;
        loop {
            let page = self.page(after.as_ref()).await.map_err(log_error)?;
            let full = page.len() == REPLAY_PAGE as usize;
            let mut jumped = false;
            for t in page {
                if t.1 <= now_wall_us {
                    // The expired front of a node's range (the expirer has
                    // not got to it yet): skip to the range's live part.
                    after = Some((t.0, now_wall_us, u64::MAX));
                    jumped = true;
                    break;
                }
                after = Some((t.0.clone(), t.1, t.2));
                let row = t.row();
                rows.push((t.0, row));
            }
            if !jumped && !full {
                return Ok(rows);
            }
        }
    }

    async fn health(&self) -> Result<Health, LogError> {
        let (h,): (HealthReply,) = self.client.call(HEALTH, &()).await.map_err(log_error)?;
        Ok(Health {
            read_only: h.ro,
            log_len: h.log_len,
            peers: h
                .peers
                .into_iter()
                .map(|p| (p.upstream, p.downstream))
                .collect(),
        })
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.client.ping().await.map_err(log_error)
    }
}
