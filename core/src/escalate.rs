//! Escalation of a rate limit to a block: a key denied continuously for
//! longer than `after` becomes a `BLOCK` of its prefix for `ttl`.
//!
//! This module owns the episodes (one per key being denied, in fixed
//! memory) and the order in which the nodes of a cluster act on one. It
//! decides nothing about the block itself: `Node` turns a due escalation
//! into the same `BLOCK` record `shoal block` sends (`Node::inject`), so
//! the allowlist, the minimum prefix length and the unsigned-cluster rule
//! are the block path's own.
//!
//! - **Episode**: starts at a key's first denial, goes on while denials
//!   come at most `gap` apart (allowed hits in between do not end it: a key
//!   at 10x its limit is still admitted at its limit), ends after `gap`
//!   without one. An episode escalates at most once.
//! - **Once per cluster**: every node denying the key crosses `after` at
//!   about the same time (within a few hundred ms). Each acts only in its
//!   own slot of a wall-clock round (see [`turn`]): its rank among the
//!   live nodes, ordered by an unkeyed mix of (key, node id) that every
//!   node computes alike; and only if no block of that prefix (or a
//!   broader one) arrived meanwhile. Views of the live nodes that agree,
//!   clocks within a few ms and a multicast delay under `SLOT` give
//!   exactly one `BLOCK`; a lost datagram or a split view can give a
//!   second (the block table holds one block per prefix all the same).
//! - **Bounded**: at most `capacity` episodes; when full, stale episodes
//!   are swept (at most once per `gap`) and a new key is otherwise not
//!   tracked (counted): a live episode is never evicted, so a flood of new
//!   keys cannot reset a heavy key's clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::hash::{Map, SeededState};

/// The wait between two ranks of nodes: one announce round, several
/// times a datagram's trip on a LAN.
pub const SLOT: Duration = Duration::from_millis(50);
/// Ranks beyond this wait as long as it.
pub const MAX_RANK: usize = 40;
/// Escalations waiting for their rank's turn, per limit.
const PENDING_MAX: usize = 4096;

/// A limit's escalation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalate {
    /// How long a key must be denied without a pause to be blocked.
    pub after: Duration,
    /// The block's TTL.
    pub ttl: Duration,
    /// The longest pause between denials that still continues an episode.
    pub gap: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    since: Instant,
    last: Instant,
    escalated: bool,
}

/// Monotonic counters of one limit's escalations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EscalateCounters {
    /// Episodes that crossed `after` (on this node).
    pub crossed: u64,
    /// `BLOCK` records this node sent for the limit.
    pub blocked: u64,
    /// Crossings left alone because the prefix was already blocked (by
    /// another node of the cluster first, or by hand).
    pub already_blocked: u64,
    /// Crossings whose block the block path refused (allowlist, too short
    /// a prefix, unsigned cluster).
    pub refused: u64,
    /// New keys not tracked because every episode slot was live.
    pub table_full: u64,
    /// Crossings dropped because too many waited for their turn.
    pub pending_dropped: u64,
}

/// One limit's episodes on one node.
#[derive(Debug)]
pub struct Episodes {
    rule: Escalate,
    map: Map<u64, Episode>,
    capacity: usize,
    next_sweep: Option<Instant>,
    /// (key, when it crossed `after`), oldest first.
    pending: VecDeque<(u64, Instant)>,
    pub counters: EscalateCounters,
}

impl Episodes {
    pub fn new(rule: Escalate, capacity: usize, hasher: SeededState) -> Episodes {
        Episodes {
            rule,
            map: Map::with_hasher(hasher),
            capacity: capacity.max(1),
            next_sweep: None,
            pending: VecDeque::new(),
            counters: EscalateCounters::default(),
        }
    }

    pub fn rule(&self) -> Escalate {
        self.rule
    }

    /// Keys in an episode (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `key` (as counted) was denied at `at`. Reports may come late and
    /// out of order (the kernel's are read back periodically); one older
    /// than the last is ignored.
    pub fn denied(&mut self, at: Instant, key: u64) {
        let r = self.rule;
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.sweep(at);
            if self.map.len() >= self.capacity {
                self.counters.table_full += 1;
                return;
            }
        }
        let e = self.map.entry(key).or_insert(Episode {
            since: at,
            last: at,
            escalated: false,
        });
        if at < e.last {
            return;
        }
        if at.saturating_duration_since(e.last) > r.gap {
            *e = Episode {
                since: at,
                last: at,
                escalated: false,
            };
        }
        e.last = at;
        if !e.escalated && at.saturating_duration_since(e.since) >= r.after {
            e.escalated = true;
            self.counters.crossed += 1;
            if self.pending.len() < PENDING_MAX {
                self.pending.push_back((key, at));
            } else {
                self.counters.pending_dropped += 1;
            }
        }
    }

    /// Forgets episodes that ended (no denial for `gap`), at most once per
    /// `gap`: O(episodes) then, nothing in between.
    pub fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + self.rule.gap);
        let gap = self.rule.gap;
        self.map
            .retain(|_, e| now.saturating_duration_since(e.last) <= gap);
    }

    /// Moves the crossings whose turn came into `out`: `ready(key, at)`
    /// says whether the turn of a crossing at `at` came (see [`turn`]).
    pub fn due(&mut self, ready: impl Fn(u64, Instant) -> bool, out: &mut Vec<u64>) {
        self.pending.retain(|&(key, at)| {
            if ready(key, at) {
                out.push(key);
                false
            } else {
                true
            }
        });
    }

    /// Crossings waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// What became of one due escalation (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub limit: String,
    pub prefix: shoal_wire::Prefix,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `BLOCK` was sent (send+save) for `ttl`.
    Blocked { ttl: Duration },
    /// The prefix was already blocked: nothing sent.
    AlreadyBlocked,
    /// The block path refused it, with its reason.
    Refused(String),
}

/// Events held for the driver's log between its drains.
pub const EVENTS_MAX: usize = 1024;

/// The unkeyed mix every node computes alike for (key, node id): the
/// order in which the nodes may escalate a key (splitmix64's finalizer).
pub fn order(key: u64, node: u32) -> u64 {
    let mut z = key ^ (u64::from(node)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When this node's turn to act on `key` comes, in wall-clock µs, for a
/// crossing at `crossed_us`. Time is cut into rounds of `live × SLOT`
/// aligned on the wall clock (every node's, kept close by NTP); the node
/// of rank `r` among `live` (every live node's id, this one's included)
/// by [`order`] owns the `r`-th slot of each round. Its turn is the start
/// of its first slot after the crossing. One node acts per slot, so a
/// block sent in one slot reaches the others before their slots, however
/// far apart their crossings were.
pub fn turn(key: u64, me: u32, live: &[u32], crossed_us: u64) -> u64 {
    let mine = order(key, me);
    let rank = live
        .iter()
        .filter(|&&id| id != me && order(key, id) < mine)
        .count()
        .min(MAX_RANK) as u64;
    let n = live.len().clamp(1, MAX_RANK + 1) as u64;
    let slot = SLOT.as_micros() as u64;
    let round = n * slot;
    let base = crossed_us - crossed_us % round + rank * slot;
    if base >= crossed_us {
        base
    } else {
        base + round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn t0() -> Instant {
        // Not the core's clock: any base instant serves a test.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    fn rule() -> Escalate {
        Escalate {
            after: ms(2_000),
            ttl: ms(60_000),
            gap: ms(1_000),
        }
    }

    #[test]
    fn continuous_denial_crosses_once_per_episode() {
        let t0 = t0();
        let mut e = Episodes::new(rule(), 16, SeededState::new(1));
        let mut out = Vec::new();
        // Denied every 100 ms: crosses at 2 s, once.
        for i in 0..=40u64 {
            e.denied(t0 + ms(i * 100), 7);
        }
        e.due(|_, _| true, &mut out);
        assert_eq!(out, [7]);
        assert_eq!(e.counters.crossed, 1);
        // A pause longer than `gap` ends the episode; a new one needs
        // `after` again.
        out.clear();
        e.denied(t0 + ms(5_100), 7);
        e.denied(t0 + ms(6_000), 7);
        e.due(|_, _| true, &mut out);
        assert!(out.is_empty());
        for i in 0..=11u64 {
            e.denied(t0 + ms(6_000 + i * 100), 7);
        }
        e.due(|_, _| true, &mut out);
        assert_eq!(out, [7]);
        assert_eq!(e.counters.crossed, 2);
    }

    #[test]
    fn pauses_longer_than_the_gap_never_cross() {
        let t0 = t0();
        let mut e = Episodes::new(rule(), 16, SeededState::new(1));
        for i in 0..20u64 {
            e.denied(t0 + ms(i * 1_100), 3);
        }
        assert_eq!(e.counters.crossed, 0);
        // A late report (older than the last) changes nothing.
        e.denied(t0, 3);
        assert_eq!(e.counters.crossed, 0);
    }

    #[test]
    fn a_crossing_waits_for_its_turn() {
        let t0 = t0();
        let mut e = Episodes::new(rule(), 16, SeededState::new(1));
        for i in 0..=20u64 {
            e.denied(t0 + ms(i * 100), 9);
        }
        let mut out = Vec::new();
        e.due(|_, at| at > t0 + ms(5_000), &mut out);
        assert!(out.is_empty());
        assert_eq!(e.waiting(), 1);
        e.due(|k, at| k == 9 && at == t0 + ms(2_000), &mut out);
        assert_eq!(out, [9]);
        assert_eq!(e.waiting(), 0);
    }

    #[test]
    fn each_node_has_its_own_slot_of_the_round() {
        let live: Vec<u32> = (1..=16).collect();
        let slot = SLOT.as_micros() as u64;
        let round = 16 * slot;
        for key in [1u64, 0xffff_c000_0201, u64::MAX] {
            // Whatever each node's crossing time within a round, their
            // turns fall in distinct slots of the next one.
            for crossed in [0u64, 1, 7 * slot + 3, round - 1] {
                let base = 1_700_000_000_000_000 / round * round + crossed;
                let mut slots: Vec<u64> = live
                    .iter()
                    .map(|&id| {
                        let t = turn(key, id, &live, base);
                        assert!(t >= base && t < base + round, "{t} {base}");
                        assert_eq!(t % slot, 0);
                        (t % round) / slot
                    })
                    .collect();
                slots.sort();
                assert_eq!(slots, (0..16).collect::<Vec<_>>(), "key {key:#x}");
            }
        }
        // A node not in the others' view still gets a turn.
        assert!(turn(5, 99, &live, 10 * round) < 11 * round + slot);
    }

    #[test]
    fn a_full_table_keeps_live_episodes() {
        let t0 = t0();
        let mut e = Episodes::new(rule(), 2, SeededState::new(1));
        e.denied(t0, 1);
        e.denied(t0, 2);
        // Full of live episodes: a new key is not tracked.
        e.denied(t0 + ms(500), 3);
        assert_eq!(e.counters.table_full, 1);
        assert_eq!(e.len(), 2);
        // Key 1 keeps being denied and still crosses.
        for i in 1..=20u64 {
            e.denied(t0 + ms(i * 100), 1);
        }
        assert_eq!(e.counters.crossed, 1);
        // Key 2 went quiet: a new key takes its place once it is stale
        // (the sweep runs at most once per gap).
        e.denied(t0 + ms(2_100), 4);
        assert_eq!(e.len(), 2);
        assert_eq!(e.counters.table_full, 1);
    }
}
