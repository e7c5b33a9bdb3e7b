//! What crosses clusters, as plain data: the outbound ring of this
//! cluster's mode records that the forwarder publishes to the queue, and
//! the inbound rule that applies each queued message at most once.
//!
//! Every node keeps the ring, not only the forwarder: all nodes see the
//! same mode records (their own filter's, their controller's, their peers'
//! over multicast), so whichever node wins the lease next can publish what
//! the previous forwarder may not have. The queue drops messages it
//! already holds (by origin node and origin sequence), so publishing the
//! whole ring again on takeover is harmless.
//!
//! Inbound, a message is identified by its origin cluster and its sequence
//! in that cluster's queue, which grows one by one in the order the origin
//! cluster's store committed them; replication delivers them in that order
//! too. Keeping the highest sequence applied per origin cluster is enough
//! to apply each message once, however many times a forwarder (or two, for
//! a moment during failover) multicasts it.

use std::collections::VecDeque;

use shoal_wire::Record;

use crate::hash::{Map, SeededState};

/// One message of the cross-cluster queue, as the forwarder publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayMsg {
    /// Node (of this cluster) whose record it is, and that record's seq:
    /// together the message's identity in the queue.
    pub node: u32,
    pub oseq: u64,
    pub code: u16,
    pub ttl_ms: u32,
    pub at_us: u64,
    pub fields: [u64; 4],
}

impl RelayMsg {
    /// The message for record `r`, seen at `seen_us` by this node's clock
    /// (not the record's own `timing_us`, which a filter may set to
    /// anything), with `ttl_ms` resolved (`default_ttl_ms` for 0).
    pub fn from_record(r: &Record, seen_us: u64, default_ttl_ms: u32) -> RelayMsg {
        RelayMsg {
            node: r.origin,
            oseq: r.seq,
            code: r.code.0,
            ttl_ms: if r.ttl_ms == 0 {
                default_ttl_ms
            } else {
                r.ttl_ms
            },
            at_us: seen_us,
            fields: r.fields,
        }
    }
}

/// Counters of the relay, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Records taken into the outbound ring.
    pub observed: u64,
    /// Records pushed out of a full ring before the queue acknowledged
    /// them from this node (only meaningful on the forwarder; ones in a
    /// publish still in flight count too).
    pub overflowed: u64,
    /// Inbound messages applied, and skipped as already applied.
    pub applied: u64,
    pub duplicates: u64,
}

/// The relay state of one node.
#[derive(Debug)]
pub struct Relay {
    cap: usize,
    ring: VecDeque<RelayMsg>,
    /// Running number of the ring's front entry (entries are numbered in
    /// the order observed), and of the first one this node has not
    /// published. Numbers, not positions: the ring moves while a publish
    /// is in flight.
    front: u64,
    unpublished: u64,
    applied: Map<u32, u64>,
    counters: RelayCounters,
}

impl Relay {
    /// A relay keeping the last `cap` outbound messages (at least 1).
    pub fn new(cap: usize, hasher: SeededState) -> Relay {
        Relay {
            cap: cap.max(1),
            ring: VecDeque::new(),
            front: 0,
            unpublished: 0,
            applied: Map::with_hasher(hasher),
            counters: RelayCounters::default(),
        }
    }

    pub fn counters(&self) -> RelayCounters {
        self.counters
    }

    /// Takes one of this cluster's records that must cross clusters.
    pub fn observe(&mut self, msg: RelayMsg) {
        self.counters.observed += 1;
        if self.ring.len() == self.cap {
            self.ring.pop_front();
            if self.front >= self.unpublished {
                self.counters.overflowed += 1;
                self.unpublished = self.front + 1;
            }
            self.front += 1;
        }
        self.ring.push_back(msg);
    }

    /// Up to `limit` messages this node has not published yet, oldest
    /// first, and the number to hand to [`Relay::published`] once they are
    /// in the queue.
    pub fn pending(&self, limit: usize) -> (Vec<RelayMsg>, u64) {
        let skip = (self.unpublished - self.front) as usize;
        let msgs: Vec<RelayMsg> = self.ring.iter().skip(skip).take(limit).copied().collect();
        let through = self.unpublished + msgs.len() as u64;
        (msgs, through)
    }

    /// Everything before `through` (from [`Relay::pending`]) is in the
    /// queue, whatever the ring did meanwhile.
    pub fn published(&mut self, through: u64) {
        self.unpublished = self.unpublished.max(through);
    }

    /// This node just became the forwarder: everything in the ring is
    /// pending again, since the previous forwarder may not have published
    /// it.
    pub fn restart(&mut self) {
        self.unpublished = self.front;
    }

    /// Whether message `seq` of `cluster`'s queue is new here (counts a
    /// duplicate when it is not).
    pub fn is_new(&mut self, cluster: u32, seq: u64) -> bool {
        let new = self.applied.get(&cluster).is_none_or(|hwm| seq > *hwm);
        if !new {
            self.counters.duplicates += 1;
        }
        new
    }

    /// Message `seq` of `cluster`'s queue was applied here.
    pub fn applied_now(&mut self, cluster: u32, seq: u64) {
        let hwm = self.applied.entry(cluster).or_insert(0);
        *hwm = (*hwm).max(seq);
        self.counters.applied += 1;
    }

    /// [`Relay::is_new`], then [`Relay::applied_now`] if it is.
    pub fn accept(&mut self, cluster: u32, seq: u64) -> bool {
        let new = self.is_new(cluster, seq);
        if new {
            self.applied_now(cluster, seq);
        }
        new
    }

    /// The highest applied sequence per origin cluster.
    pub fn applied(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.applied.iter().map(|(c, s)| (*c, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(oseq: u64) -> RelayMsg {
        RelayMsg {
            node: 3,
            oseq,
            code: 2,
            ttl_ms: 1000,
            at_us: oseq,
            fields: [oseq, 1, 0, 0],
        }
    }

    #[test]
    fn pending_until_published_and_all_again_after_restart() {
        let mut r = Relay::new(8, SeededState::new(1));
        for i in 1..=5 {
            r.observe(msg(i));
        }
        let (p, through) = r.pending(3);
        assert_eq!(p.iter().map(|m| m.oseq).collect::<Vec<_>>(), [1, 2, 3]);
        r.published(through);
        assert_eq!(oseqs(&r), [4, 5]);
        r.restart();
        assert_eq!(r.pending(10).0.len(), 5);
    }

    fn oseqs(r: &Relay) -> Vec<u64> {
        r.pending(100).0.iter().map(|m| m.oseq).collect()
    }

    #[test]
    fn records_arriving_while_a_publish_is_in_flight_stay_pending() {
        let mut r = Relay::new(8, SeededState::new(1));
        for i in 1..=8 {
            r.observe(msg(i));
        }
        r.restart();
        let (sent, through) = r.pending(4); // 1..=4 in flight
        assert_eq!(sent.len(), 4);
        for i in 9..=11 {
            r.observe(msg(i)); // pushes 1, 2, 3 out of the full ring
        }
        r.published(through);
        assert_eq!(oseqs(&r), [5, 6, 7, 8, 9, 10, 11]);
        // Counted: they left the ring before the queue acknowledged them
        // (here they were in flight and made it).
        assert_eq!(r.counters().overflowed, 3);
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts_unpublished_losses() {
        let mut r = Relay::new(3, SeededState::new(1));
        for i in 1..=3 {
            r.observe(msg(i));
        }
        let (_, through) = r.pending(2);
        r.published(through);
        r.observe(msg(4)); // drops 1, which was published
        assert_eq!(r.counters().overflowed, 0);
        assert_eq!(oseqs(&r), [3, 4]);
        r.observe(msg(5)); // drops 2, published
        r.observe(msg(6)); // drops 3, not published
        assert_eq!(r.counters().overflowed, 1);
        assert_eq!(oseqs(&r), [4, 5, 6]);
    }

    #[test]
    fn each_queued_message_is_applied_once_per_origin_cluster() {
        let mut r = Relay::new(1, SeededState::new(1));
        assert!(r.accept(1, 1));
        assert!(r.accept(1, 2));
        assert!(!r.accept(1, 2), "sent again by a second forwarder");
        assert!(!r.accept(1, 1));
        assert!(r.accept(2, 1), "clusters have their own sequences");
        assert!(r.accept(1, 5), "a gap is not waited for");
        assert!(!r.accept(1, 4));
        let c = r.counters();
        assert_eq!((c.applied, c.duplicates), (4, 3));
        let mut hw: Vec<_> = r.applied().collect();
        hw.sort_unstable();
        assert_eq!(hw, [(1, 5), (2, 1)]);
    }
}
