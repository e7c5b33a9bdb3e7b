//! The cross-cluster verdict store as the core sees it: three traits
//! (verdicts, the cross-cluster queue, the forwarder lease) with plain
//! argument and reply types and one typed error. `shoal-tarantool`
//! implements them on the real store (and alone knows its procedure names
//! and tuple layouts); [`crate::fakes`] implements them in memory for the
//! simulator.
//!
//! Methods return `impl Future + Send` (no runtime here): the node awaits
//! them on tokio, the simulator polls the fakes' ready futures with a no-op
//! waker ([`crate::fakes::poll_once`]).

use std::future::Future;

use shoal_wire::{Code, Op, Record};

use crate::relay::RelayMsg;
use crate::token::Verdict;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store refused a write under the lease: `node` does not hold it
    /// at that epoch (expired, released or taken over). The caller must
    /// stop acting as the forwarder.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Not sent: no connection to the store now.
    #[error("verdict store unavailable: {0}")]
    Unavailable(String),
    /// Sent, but no answer (timeout, connection lost): it may or may not
    /// have been executed.
    #[error("verdict store outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The store executed the call and refused it (bad arguments, a key of
    /// another cluster).
    #[error("verdict store refused: {0}")]
    Refused(String),
    /// The answer is not what the call returns.
    #[error("verdict store answer not understood: {0}")]
    BadReply(String),
}

/// One verdict as the API writes it (the store's row of `node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    pub expires_us: u64,
    pub id: u64,
    pub subject: u64,
    pub verdict: Verdict,
    pub score: u8,
    pub at_us: u64,
    pub cluster: u32,
    pub source: String,
}

/// A live verdict as the store returns it. `verdict` is the raw code (1
/// human, 2 bot): rows of another version are shown, not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVerdict {
    pub node: String,
    pub expires_us: u64,
    pub id: u64,
    pub subject: u64,
    pub verdict: u64,
    pub score: u64,
    pub at_us: u64,
    pub cluster: u64,
    pub source: String,
}

impl StoredVerdict {
    /// The verdict, when its code is one this version knows.
    pub fn kind(&self) -> Option<Verdict> {
        match self.verdict {
            1 => Some(Verdict::Human),
            2 => Some(Verdict::Bot),
            _ => None,
        }
    }
}

/// The lease after an acquire, whoever holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: String,
    pub epoch: u64,
    /// By the store's clock, as is `now_us`.
    pub expires_us: u64,
    pub now_us: u64,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    pub inserted: u64,
    /// Already in the queue (same origin node and sequence).
    pub skipped: u64,
}

/// One message of another cluster's queue. Wide types: a row another
/// version wrote with larger values is dropped and counted
/// ([`QueuedMsg::to_record`]), it does not stop the fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedMsg {
    /// Publishing cluster and the message's sequence in its queue.
    pub cluster: u64,
    pub seq: u64,
    /// Origin node (of the publishing cluster) and its record sequence.
    pub node: u64,
    pub oseq: u64,
    pub code: u64,
    pub ttl_ms: u64,
    /// When the publishing cluster saw it, by its store's clock.
    pub at_us: u64,
    pub fields: [u64; 4],
}

impl QueuedMsg {
    /// The record that carries this message into this cluster at wall time
    /// `now_us`, or None when it has expired already, is not a mode, or
    /// holds values out of range.
    pub fn to_record(&self, now_us: u64) -> Option<Record> {
        let (Ok(cluster), Ok(node), Ok(code), Ok(ttl_ms)) = (
            u32::try_from(self.cluster),
            u32::try_from(self.node),
            u16::try_from(self.code),
            u32::try_from(self.ttl_ms),
        ) else {
            return None;
        };
        if cluster == 0 {
            return None;
        }
        if Code(code) == Code::BLOCK || Code(code) == Code::UNBLOCK {
            return self.block_record(cluster, Code(code) == Code::UNBLOCK, ttl_ms, now_us);
        }
        let [f0, f1, ..] = self.fields;
        if Code(code) != Code::MODE {
            return None;
        }
        // What is left of the claim's lifetime, never more than its TTL
        // (the two clusters' clocks may disagree); a withdrawal (level 0)
        // is applied whatever its age.
        let ends_us = self.at_us.saturating_add(u64::from(ttl_ms) * 1000);
        let left_ms = (ends_us.saturating_sub(now_us) / 1000).min(u64::from(ttl_ms));
        if f1 != 0 && left_ms == 0 {
            return None;
        }
        let mut r = Record::new(
            Code::REMOTE_MODE,
            [f0, f1, u64::from(cluster) << 32 | u64::from(node), self.seq],
        );
        r.ttl_ms = u32::try_from(left_ms).unwrap_or(u32::MAX).max(1);
        r.op = Op::SEND;
        Some(r)
    }
}

impl QueuedMsg {
    /// A block or unblock from another cluster as the `REMOTE_BLOCK` that
    /// carries it (`docs/wire.md` 2.3): what is left of a block's
    /// lifetime (never more than its TTL, None once over); an unblock is
    /// applied whatever its age, remembered for its own TTL.
    fn block_record(
        &self,
        cluster: u32,
        unblock: bool,
        ttl_ms: u32,
        now_us: u64,
    ) -> Option<Record> {
        let [f0, f1, f2, _] = self.fields;
        // Only a prefix exactly as the origin's node took it crosses.
        let (prefix, 0) = shoal_wire::Prefix::from_fields(f0, f1, f2).ok()? else {
            return None;
        };
        let ends_us = self.at_us.saturating_add(u64::from(ttl_ms) * 1000);
        let left_ms = (ends_us.saturating_sub(now_us) / 1000).min(u64::from(ttl_ms));
        let ttl = match (unblock, left_ms) {
            (false, 0) => return None,
            (true, _) => ttl_ms.max(1),
            (false, left) => u32::try_from(left).unwrap_or(u32::MAX),
        };
        let [f0, f1, mut f2] = prefix.to_fields(cluster);
        if unblock {
            f2 |= crate::node::REMOTE_UNBLOCK;
        }
        let mut r = Record::new(Code::REMOTE_BLOCK, [f0, f1, f2, self.seq]);
        r.ttl_ms = ttl;
        r.op = Op::SEND;
        Some(r)
    }
}

/// Verdicts of the post-markup API.
pub trait VerdictStore: Send + Sync {
    /// Writes `rows` under `node`'s range, all or none; returns how many.
    /// Idempotent: a retried batch replaces the same keys.
    fn put(
        &self,
        node: &str,
        rows: &[VerdictRow],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The live verdict on `subject` with the highest `(at_us, node)`, of
    /// any cluster.
    fn get(
        &self,
        subject: u64,
    ) -> impl Future<Output = Result<Option<StoredVerdict>, StoreError>> + Send;
}

/// The replicated queue of mode records between clusters.
pub trait CrossQueue: Send + Sync {
    /// Appends `msgs` to `cluster`'s queue under the lease `(node, epoch)`
    /// ([`StoreError::Fenced`] otherwise); messages already there (same
    /// origin node and sequence) are skipped.
    fn publish(
        &self,
        cluster: u32,
        node: &str,
        epoch: u64,
        msgs: &[RelayMsg],
    ) -> impl Future<Output = Result<Published, StoreError>> + Send;

    /// Up to `limit` messages of the other clusters past `consumer`'s
    /// cursors, in (cluster, seq) order.
    fn fetch(
        &self,
        consumer: u32,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<QueuedMsg>, StoreError>> + Send;

    /// Moves `consumer`'s cursor on `origin` to `seq` (never back) under
    /// the lease `(node, epoch)`; returns the cursor.
    fn ack(
        &self,
        consumer: u32,
        node: &str,
        epoch: u64,
        origin: u64,
        seq: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The forwarder lease of a cluster, with a fencing epoch.
pub trait Lease: Send + Sync {
    /// Takes the lease for `ttl_ms` if it is free or expired, or renews it
    /// if `node` holds it; the epoch grows when the holder changes.
    /// Returns the lease after the call, whoever holds it.
    fn acquire(
        &self,
        cluster: u32,
        node: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<LeaseState, StoreError>> + Send;

    /// Ends `node`'s lease at once (anyone takes it next, at epoch + 1);
    /// false when `node` did not hold it.
    fn release(
        &self,
        cluster: u32,
        node: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(code: u64, ttl_ms: u64, at_us: u64, level: u64) -> QueuedMsg {
        QueuedMsg {
            cluster: 2,
            seq: 9,
            node: 5,
            oseq: 1,
            code,
            ttl_ms,
            at_us,
            fields: [1000, level, 0, 0],
        }
    }

    #[test]
    fn a_queued_mode_becomes_a_remote_mode_with_what_is_left_of_its_ttl() {
        let r = msg(2, 10_000, 1_000_000, 3).to_record(4_000_000).unwrap();
        assert_eq!(r.code, Code::REMOTE_MODE);
        assert_eq!(r.fields, [1000, 3, 2 << 32 | 5, 9]);
        assert_eq!(r.ttl_ms, 7_000);
        assert!(r.op.sends());
    }

    #[test]
    fn a_clock_ahead_never_lengthens_a_claim_and_odd_rows_are_dropped() {
        let r = msg(2, 10_000, u64::MAX - 5, 3).to_record(0).unwrap();
        assert_eq!(r.ttl_ms, 10_000);
        let mut wide = msg(2, 10_000, 0, 3);
        wide.cluster = 1 << 40;
        assert!(wide.to_record(0).is_none());
        wide = msg(70_000, 10_000, 0, 3);
        assert!(wide.to_record(0).is_none());
        wide = msg(2, 10_000, 0, 3);
        wide.cluster = 0;
        assert!(wide.to_record(0).is_none());
    }

    #[test]
    fn expired_claims_and_other_codes_are_not_relayed() {
        assert!(msg(2, 1_000, 0, 3).to_record(2_000_000).is_none());
        assert!(msg(3, 10_000, 0, 3).to_record(0).is_none());
        let withdrawal = msg(2, 1_000, 0, 0).to_record(2_000_000).unwrap();
        assert_eq!(withdrawal.fields[1], 0);
    }
}
