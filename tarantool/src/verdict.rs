//! The cross-cluster verdict store (`lua/shoal_verdict.lua`,
//! `docs/verdict-store.md`) behind `shoal-core`'s traits: the one place
//! that knows its procedure names, argument orders and tuple layouts.
//!
//! [`VerdictClient`] wraps any [`Tarantool`] connection; errors become
//! [`StoreError`]s, a server error whose message begins with `fenced:`
//! becoming [`StoreError::Fenced`].

use std::future::Future;

use serde::{Deserialize, Serialize};
use shoal_core::ports::{
    CrossQueue, Lease, LeaseState, Published, QueuedMsg, StoreError, StoredVerdict, VerdictRow,
    VerdictStore,
};
use shoal_core::RelayMsg;

use crate::{Error, Tarantool};

/// The store's procedure names, for callers that test the procedures
/// themselves (bad arguments, stats).
pub mod procs {
    pub const VERDICT_PUT: &str = "shoal_verdict_put";
    pub const VERDICT_GET: &str = "shoal_verdict_get";
    pub const LEASE: &str = "shoal_lease";
    pub const LEASE_RELEASE: &str = "shoal_lease_release";
    pub const XQ_PUBLISH: &str = "shoal_xq_publish";
    pub const XQ_FETCH: &str = "shoal_xq_fetch";
    pub const XQ_ACK: &str = "shoal_xq_ack";
    pub const VERDICT_STATS: &str = "shoal_verdict_stats";
    pub const HEALTH: &str = "shoal_health";
}

/// Most rows per put, messages per publish or per fetch (the store's
/// `MAX_BATCH`).
pub const MAX_BATCH: usize = 10_000;

/// One row of `shoal_verdict_put`: expires_us, id, subject, verdict,
/// score, at_us, cluster, source.
#[derive(Debug, Serialize)]
struct PutRow<'a>(u64, u64, u64, u64, u64, u64, u64, &'a str);

/// One `verdict` tuple: node, expires_us, id, subject, verdict, score,
/// at_us, cluster, source.
#[derive(Debug, Deserialize)]
struct VerdictTuple(String, u64, u64, u64, u64, u64, u64, u64, String);

/// One message of `shoal_xq_publish`: node_id, oseq, code, ttl_ms, at_us,
/// f0..f3.
type MsgRow = (u32, u64, u16, u32, u64, u64, u64, u64, u64);

/// One `xmsg` tuple: cluster, seq, node, oseq, code, ttl_ms, at_us,
/// f0..f3. Wide types: odd rows are dropped later, not refused here.
#[derive(Debug, Deserialize)]
struct XmsgTuple(u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

/// What `shoal_lease` returns: holder, epoch, expires_us, now_us.
#[derive(Debug, Deserialize)]
struct LeaseTuple(String, u64, u64, u64);

/// The verdict store on a Tarantool connection.
#[derive(Debug, Clone)]
pub struct VerdictClient<T> {
    conn: T,
}

impl<T: Tarantool> VerdictClient<T> {
    pub fn new(conn: T) -> VerdictClient<T> {
        VerdictClient { conn }
    }

    /// The connection, for calls outside the traits (stats, health).
    pub fn conn(&self) -> &T {
        &self.conn
    }
}

/// The core's view of a client error.
pub fn store_error(e: Error) -> StoreError {
    match e {
        Error::Server { ref message, .. } if message.starts_with("fenced:") => {
            StoreError::Fenced(message.clone())
        }
        Error::Server { .. } => StoreError::Refused(e.to_string()),
        Error::Disconnected
        | Error::Io(_)
        | Error::ConnectTimeout(_)
        | Error::Auth { .. }
        | Error::NoSuchSpace(_)
        | Error::Encode(_) => StoreError::Unavailable(e.to_string()),
        Error::OutcomeUnknown(_) | Error::Timeout(_) | Error::Protocol(_) => {
            StoreError::OutcomeUnknown(e.to_string())
        }
        Error::Decode(_) => StoreError::BadReply(e.to_string()),
    }
}

fn msg_row(m: &RelayMsg) -> MsgRow {
    (
        m.node,
        m.oseq,
        m.code,
        m.ttl_ms,
        m.at_us,
        m.fields[0],
        m.fields[1],
        m.fields[2],
        m.fields[3],
    )
}

impl<T: Tarantool> VerdictStore for VerdictClient<T> {
    fn put(
        &self,
        node: &str,
        rows: &[VerdictRow],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let rows: Vec<PutRow<'_>> = rows
            .iter()
            .map(|r| {
                PutRow(
                    r.expires_us,
                    r.id,
                    r.subject,
                    r.verdict as u64,
                    u64::from(r.score),
                    r.at_us,
                    u64::from(r.cluster),
                    r.source.as_str(),
                )
            })
            .collect();
        async move {
            let (n,): (u64,) = self
                .conn
                .call(procs::VERDICT_PUT, &(node, rows))
                .await
                .map_err(store_error)?;
            Ok(n)
        }
    }

    async fn get(&self, subject: u64) -> Result<Option<StoredVerdict>, StoreError> {
        let (t,): (Option<VerdictTuple>,) = self
            .conn
            .call(procs::VERDICT_GET, &(subject,))
            .await
            .map_err(store_error)?;
        Ok(t.map(|t| StoredVerdict {
            node: t.0,
            expires_us: t.1,
            id: t.2,
            subject: t.3,
            verdict: t.4,
            score: t.5,
            at_us: t.6,
            cluster: t.7,
            source: t.8,
        }))
    }
}

impl<T: Tarantool> CrossQueue for VerdictClient<T> {
    fn publish(
        &self,
        cluster: u32,
        node: &str,
        epoch: u64,
        msgs: &[RelayMsg],
    ) -> impl Future<Output = Result<Published, StoreError>> + Send {
        let msgs: Vec<MsgRow> = msgs.iter().map(msg_row).collect();
        async move {
            let (inserted, skipped): (u64, u64) = self
                .conn
                .call(procs::XQ_PUBLISH, &(cluster, node, epoch, msgs))
                .await
                .map_err(store_error)?;
            Ok(Published { inserted, skipped })
        }
    }

    async fn fetch(&self, consumer: u32, limit: usize) -> Result<Vec<QueuedMsg>, StoreError> {
        let limit = limit.min(MAX_BATCH);
        let (rows,): (Vec<XmsgTuple>,) = self
            .conn
            .call(procs::XQ_FETCH, &(consumer, limit))
            .await
            .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|t| QueuedMsg {
                cluster: t.0,
                seq: t.1,
                node: t.2,
                oseq: t.3,
                code: t.4,
                ttl_ms: t.5,
                at_us: t.6,
                fields: [t.7, t.8, t.9, t.10],
            })
            .collect())
    }

    async fn ack(
        &self,
        consumer: u32,
        node: &str,
        epoch: u64,
        origin: u64,
        seq: u64,
    ) -> Result<u64, StoreError> {
        let (cursor,): (u64,) = self
            .conn
            .call(procs::XQ_ACK, &(consumer, node, epoch, origin, seq))
            .await
            .map_err(store_error)?;
        Ok(cursor)
    }
}

impl<T: Tarantool> Lease for VerdictClient<T> {
    async fn acquire(
        &self,
        cluster: u32,
        node: &str,
        ttl_ms: u64,
    ) -> Result<LeaseState, StoreError> {
        let (LeaseTuple(holder, epoch, expires_us, now_us),) = self
            .conn
            .call(procs::LEASE, &(cluster, node, ttl_ms))
            .await
            .map_err(store_error)?;
        Ok(LeaseState {
            holder,
            epoch,
            expires_us,
            now_us,
        })
    }

    async fn release(&self, cluster: u32, node: &str) -> Result<bool, StoreError> {
        let (released,): (bool,) = self
            .conn
            .call(procs::LEASE_RELEASE, &(cluster, node))
            .await
            .map_err(store_error)?;
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_server_errors_are_told_apart() {
        let fenced = Error::Server {
            code: 32,
            message: "fenced: shoal_xq_ack: lease of cluster 1 is held by b".into(),
        };
        assert!(matches!(store_error(fenced), StoreError::Fenced(m) if m.starts_with("fenced:")));
        let bad = Error::Server {
            code: 32,
            message: "shoal_xq_ack: seq 9 is past".into(),
        };
        assert!(matches!(store_error(bad), StoreError::Refused(_)));
        assert!(matches!(
            store_error(Error::Disconnected),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            store_error(Error::Timeout(std::time::Duration::from_secs(1))),
            StoreError::OutcomeUnknown(_)
        ));
    }
}
