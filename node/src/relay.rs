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

use std::collections::{HashMap, VecDeque};

use shoal_wire::Record;

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
    pub fn from_record(r: &Record) -> RelayMsg {
        RelayMsg {
            node: r.origin,
            oseq: r.seq,
            code: r.code.0,
            ttl_ms: r.ttl_ms,
            at_us: r.timing_us,
            fields: r.fields,
        }
    }
}

/// Counters of the relay, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Records taken into the outbound ring.
    pub observed: u64,
    /// Records pushed out of a full ring before this node published them
    /// (only meaningful on the forwarder).
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
    /// Index in `ring` of the first message not yet published by this node.
    unpublished: usize,
    applied: HashMap<u32, u64>,
    counters: RelayCounters,
}

impl Relay {
    /// A relay keeping the last `cap` outbound messages (at least 1).
    pub fn new(cap: usize) -> Relay {
        Relay {
            cap: cap.max(1),
            ring: VecDeque::new(),
            unpublished: 0,
            applied: HashMap::new(),
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
            if self.unpublished == 0 {
                self.counters.overflowed += 1;
            } else {
                self.unpublished -= 1;
            }
        }
        self.ring.push_back(msg);
    }

    /// Up to `limit` messages this node has not published yet, oldest
    /// first. They stay pending until [`Relay::published`].
    pub fn pending(&self, limit: usize) -> Vec<RelayMsg> {
        self.ring
            .iter()
            .skip(self.unpublished)
            .take(limit)
            .copied()
            .collect()
    }

    /// The first `n` pending messages are in the queue.
    pub fn published(&mut self, n: usize) {
        self.unpublished = (self.unpublished + n).min(self.ring.len());
    }

    /// This node just became the forwarder: everything in the ring is
    /// pending again, since the previous forwarder may not have published
    /// it.
    pub fn restart(&mut self) {
        self.unpublished = 0;
    }

    /// Whether message `seq` of `cluster`'s queue is new here; if so it
    /// counts as applied from now on.
    pub fn accept(&mut self, cluster: u32, seq: u64) -> bool {
        let hwm = self.applied.entry(cluster).or_insert(0);
        if seq <= *hwm {
            self.counters.duplicates += 1;
            return false;
        }
        *hwm = seq;
        self.counters.applied += 1;
        true
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
        let mut r = Relay::new(8);
        for i in 1..=5 {
            r.observe(msg(i));
        }
        let p = r.pending(3);
        assert_eq!(p.iter().map(|m| m.oseq).collect::<Vec<_>>(), [1, 2, 3]);
        r.published(3);
        assert_eq!(
            r.pending(10).iter().map(|m| m.oseq).collect::<Vec<_>>(),
            [4, 5]
        );
        r.restart();
        assert_eq!(r.pending(10).len(), 5);
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts_unpublished_losses() {
        let mut r = Relay::new(3);
        for i in 1..=3 {
            r.observe(msg(i));
        }
        r.published(2);
        r.observe(msg(4)); // drops 1, which was published
        assert_eq!(r.counters().overflowed, 0);
        assert_eq!(
            r.pending(10).iter().map(|m| m.oseq).collect::<Vec<_>>(),
            [3, 4]
        );
        r.observe(msg(5)); // drops 2, published
        r.observe(msg(6)); // drops 3, not published
        assert_eq!(r.counters().overflowed, 1);
        assert_eq!(
            r.pending(10).iter().map(|m| m.oseq).collect::<Vec<_>>(),
            [4, 5, 6]
        );
    }

    #[test]
    fn each_queued_message_is_applied_once_per_origin_cluster() {
        let mut r = Relay::new(1);
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
