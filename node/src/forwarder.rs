//! The cross-cluster queue forwarder: one node per cluster, elected by a
//! lease in the cluster's verdict store, moves messages between the
//! replicated queue and the cluster's multicast.
//!
//! Every node with `[verdicts] forwarder = true` asks for the lease every
//! third of `lease_ms`; the store grants it to the holder (renewal) or to
//! anyone once it has expired, and bumps a fencing epoch whenever the
//! holder changes. The holder, while its lease is valid by its own clock
//! (counted from before its last renewal was sent):
//!
//! - publishes the mode records of its cluster still pending in its relay
//!   ring (`shoal_xq_publish`; all of the ring after a takeover, which the
//!   queue dedups by origin node and sequence);
//! - fetches the other clusters' messages past this cluster's cursors
//!   (`shoal_xq_fetch`), multicasts each as a `REMOTE_MODE` record carrying
//!   its queue sequence, and advances the cursors (`shoal_xq_ack`).
//!
//! The store refuses publish and ack from a holder whose epoch is not the
//! current one (`fenced:`), so a paused or partitioned old forwarder cannot
//! move a cursor back or publish under a lease it lost. A message sent
//! twice (by a forwarder that died between multicast and ack, then by its
//! successor) is applied once: receivers keep the highest sequence applied
//! per origin cluster (`relay`). Stopping releases the lease, so a planned
//! restart hands over at once instead of after `lease_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;
use shoal_tarantool::{Client, Tarantool};
use shoal_wire::{Code, Op, Record};
use tracing::{debug, info, warn};

use crate::server::{wall_us, Shared};
use shoal_core::RelayMsg;

/// Messages per publish or fetch call.
const BATCH: usize = 500;

/// Counters of the forwarder, for metrics.
#[derive(Debug, Default)]
pub(crate) struct ForwarderStats {
    /// 1 while this node holds the lease.
    pub(crate) leader: AtomicU64,
    pub(crate) epoch: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) lease_errors: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_skipped: AtomicU64,
    pub(crate) fetched: AtomicU64,
    /// Fetched messages not multicast: expired on arrival, or a code this
    /// version does not relay.
    pub(crate) dropped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// One `xmsg` tuple: cluster, seq, node, oseq, code, ttl_ms, at_us, f0..f3.
#[derive(Debug, Deserialize)]
/// Wide types: a row another version wrote with larger values is dropped
/// and counted, and does not stop the fetch.
struct XmsgTuple(
    u64,
    u64,
    u64,
    IgnoredAny,
    u64,
    u64,
    u64,
    u64,
    u64,
    IgnoredAny,
    IgnoredAny,
);

/// What `shoal_lease` returns: holder, epoch, expires_us, now_us.
#[derive(Debug, Deserialize)]
struct LeaseReply(String, u64, IgnoredAny, IgnoredAny);

pub(crate) struct Forwarder {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) cluster: u32,
    pub(crate) lease: Duration,
    pub(crate) poll: Duration,
    pub(crate) shared: Arc<Shared>,
}

/// The lease as this node holds it.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    /// By this node's clock: the store's expiry is later than this.
    valid_until: Instant,
}

impl Forwarder {
    fn stats(&self) -> &ForwarderStats {
        &self.shared.io.forwarder
    }

    pub(crate) async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut held: Option<Held> = None;
        let mut next_lease = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.poll) => {}
            }
            if Instant::now() >= next_lease {
                next_lease = Instant::now() + self.lease / 3;
                held = self.renew(held).await;
            }
            if held.is_some_and(|h| Instant::now() >= h.valid_until) {
                warn!("forwarder lease ran out before it was renewed; standing down");
                held = None;
                self.stats().leader.store(0, Ordering::Relaxed);
            }
            let Some(h) = held else { continue };
            // A slow store must not delay the next renewal: the round is
            // cut short then (safe: what it did not finish is published or
            // fetched again, and both are idempotent).
            let budget = next_lease.saturating_duration_since(Instant::now());
            let Ok(done) = tokio::time::timeout(budget, self.forward(h.epoch)).await else {
                debug!("forwarding round cut short to renew the lease");
                continue;
            };
            if let Err(e) = done {
                if e.to_string().contains("fenced:") {
                    self.stats().fenced.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "fenced: another node holds the lease now");
                    held = None;
                    self.stats().leader.store(0, Ordering::Relaxed);
                } else {
                    self.stats().errors.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "forwarding failed; retrying");
                }
            }
        }
        if held.is_some() {
            let r: Result<(bool,), _> = self
                .client
                .call("shoal_lease_release", &(self.cluster, self.name.as_str()))
                .await;
            info!(released = r.is_ok(), "forwarder lease released");
            self.stats().leader.store(0, Ordering::Relaxed);
        }
    }

    async fn renew(&self, held: Option<Held>) -> Option<Held> {
        let sent = Instant::now();
        let lease_ms = self.lease.as_millis() as u64;
        let r: Result<(LeaseReply,), _> = self
            .client
            .call("shoal_lease", &(self.cluster, self.name.as_str(), lease_ms))
            .await;
        let LeaseReply(holder, epoch, ..) = match r {
            Ok((l,)) => l,
            Err(e) => {
                self.stats().lease_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "lease request failed");
                // Keep acting only while the old lease is valid by our clock.
                return held;
            }
        };
        if holder != self.name {
            if held.is_some() {
                info!(holder = %holder, epoch, "forwarder lease lost");
            }
            self.stats().leader.store(0, Ordering::Relaxed);
            self.stats().epoch.store(epoch, Ordering::Relaxed);
            return None;
        }
        if held.map(|h| h.epoch) != Some(epoch) {
            self.stats().takeovers.fetch_add(1, Ordering::Relaxed);
            info!(epoch, "this node is the cluster's forwarder");
            // What the previous holder may not have published.
            self.shared.with_node(|n| n.relay_mut().restart());
        }
        self.stats().leader.store(1, Ordering::Relaxed);
        self.stats().epoch.store(epoch, Ordering::Relaxed);
        Some(Held {
            epoch,
            valid_until: sent + self.lease,
        })
    }

    async fn forward(&self, epoch: u64) -> Result<(), shoal_tarantool::Error> {
        let (pending, through) = self.shared.with_node(|n| n.relay().pending(BATCH));
        if !pending.is_empty() {
            let msgs: Vec<_> = pending.iter().map(msg_row).collect();
            let (inserted, skipped): (u64, u64) = self
                .client
                .call(
                    "shoal_xq_publish",
                    &(self.cluster, self.name.as_str(), epoch, msgs),
                )
                .await?;
            self.shared.with_node(|n| n.relay_mut().published(through));
            self.stats()
                .published
                .fetch_add(inserted, Ordering::Relaxed);
            self.stats()
                .publish_skipped
                .fetch_add(skipped, Ordering::Relaxed);
        }
        let (rows,): (Vec<XmsgTuple>,) = self
            .client
            .call("shoal_xq_fetch", &(self.cluster, BATCH))
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        self.stats()
            .fetched
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let now_us = wall_us();
        let mut acks: Vec<(u64, u64)> = Vec::new();
        self.shared.with_node(|n| {
            for t in &rows {
                match acks.last_mut() {
                    Some((c, s)) if *c == t.0 => *s = (*s).max(t.1),
                    _ => acks.push((t.0, t.1)),
                }
                match remote_record(t, now_us) {
                    Some(r) => {
                        let _ = n.inject(Instant::now(), r);
                    }
                    None => {
                        self.stats().dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            n.flush();
        });
        for (origin, seq) in acks {
            let _: (u64,) = self
                .client
                .call(
                    "shoal_xq_ack",
                    &(self.cluster, self.name.as_str(), epoch, origin, seq),
                )
                .await?;
        }
        Ok(())
    }
}

/// A relay message as `shoal_xq_publish` takes it.
fn msg_row(m: &RelayMsg) -> (u32, u64, u16, u32, u64, u64, u64, u64, u64) {
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

/// The record that carries a fetched message into this cluster, or None
/// when it has expired already or is not a mode.
fn remote_record(t: &XmsgTuple, now_us: u64) -> Option<Record> {
    let XmsgTuple(cluster, seq, node, _, code, ttl_ms, at_us, f0, f1, ..) = *t;
    let (Ok(cluster), Ok(node), Ok(code), Ok(ttl_ms)) = (
        u32::try_from(cluster),
        u32::try_from(node),
        u16::try_from(code),
        u32::try_from(ttl_ms),
    ) else {
        return None;
    };
    if Code(code) != Code::MODE || cluster == 0 {
        return None;
    }
    // What is left of the claim's lifetime, never more than its TTL (the
    // two clusters' clocks may disagree); a withdrawal (level 0) is
    // applied whatever its age.
    let ends_us = at_us.saturating_add(u64::from(ttl_ms) * 1000);
    let left_ms = (ends_us.saturating_sub(now_us) / 1000).min(u64::from(ttl_ms));
    if f1 != 0 && left_ms == 0 {
        return None;
    }
    let mut r = Record::new(
        Code::REMOTE_MODE,
        [f0, f1, u64::from(cluster) << 32 | u64::from(node), seq],
    );
    r.ttl_ms = u32::try_from(left_ms).unwrap_or(u32::MAX).max(1);
    r.op = Op::SEND;
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(code: u16, ttl_ms: u32, at_us: u64, level: u64) -> XmsgTuple {
        XmsgTuple(
            2,
            9,
            5,
            IgnoredAny,
            code.into(),
            ttl_ms.into(),
            at_us,
            1000,
            level,
            IgnoredAny,
            IgnoredAny,
        )
    }

    #[test]
    fn a_queued_mode_becomes_a_remote_mode_with_what_is_left_of_its_ttl() {
        let r = remote_record(&tuple(2, 10_000, 1_000_000, 3), 4_000_000).unwrap();
        assert_eq!(r.code, Code::REMOTE_MODE);
        assert_eq!(r.fields, [1000, 3, 2 << 32 | 5, 9]);
        assert_eq!(r.ttl_ms, 7_000);
        assert!(r.op.sends());
    }

    #[test]
    fn a_clock_ahead_never_lengthens_a_claim_and_odd_rows_are_dropped() {
        let r = remote_record(&tuple(2, 10_000, u64::MAX - 5, 3), 0).unwrap();
        assert_eq!(r.ttl_ms, 10_000);
        let mut wide = tuple(2, 10_000, 0, 3);
        wide.0 = 1 << 40;
        assert!(remote_record(&wide, 0).is_none());
        wide = tuple(2, 10_000, 0, 3);
        wide.4 = 70_000;
        assert!(remote_record(&wide, 0).is_none());
    }

    #[test]
    fn expired_claims_and_other_codes_are_not_relayed() {
        assert!(remote_record(&tuple(2, 1_000, 0, 3), 2_000_000).is_none());
        assert!(remote_record(&tuple(3, 10_000, 0, 3), 0).is_none());
        let withdrawal = remote_record(&tuple(2, 1_000, 0, 0), 2_000_000).unwrap();
        assert_eq!(withdrawal.fields[1], 0);
    }
}
