//! What a node knows about its cluster: per-resource load gauges per
//! origin, protection-mode claims, and session marks. Plain data fed
//! `now`; no I/O, no clock, no locking.
//!
//! Purging is incremental: each resource has one entry in a min-heap of
//! "look again" times (lazy deletion: an entry counts only while its time
//! is the one the resource holds), so a purge touches only what is due and
//! can be cut into slices of bounded work, never a scan of every resource
//! while the filter waits for an answer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::hash::{Map, SeededState, ShardedMap};

/// Bounds and lifetimes of the state tables.
#[derive(Debug, Clone)]
pub struct StateLimits {
    pub load_stale: Duration,
    pub max_resources: usize,
    pub session_capacity: usize,
    pub default_ttl: Duration,
    /// How far apart two nodes' clocks may be: a record with a lifetime
    /// gets this much benefit of the doubt on its age, and may be this far
    /// in the future (`docs/wire.md` 7.2).
    pub clock_skew: Duration,
}

/// A resource's load as seen by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadView {
    /// Sum of the fresh gauges of every origin, this node included.
    pub total: u64,
    /// This node's own gauge (0 when stale or absent).
    pub local: u64,
    /// Origins whose gauge is fresh.
    pub nodes: u32,
}

/// The effective protection mode of a resource: the highest live claim;
/// between claims of the same level, the lowest origin (so every node
/// names the same winner whatever order the claims arrived in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeView {
    pub level: u8,
    /// Who holds the winning claim: a node of this cluster (its id), or
    /// `cluster << 32 | node` for a claim relayed from another cluster.
    pub origin: u64,
    pub remaining: Duration,
}

/// A live session mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MarkView {
    pub mark: u64,
    pub origin: u32,
    pub remaining: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Gauge {
    origin: u32,
    value: u64,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    origin: u64,
    level: u8,
    expires: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    mark: u64,
    origin: u32,
    expires: Instant,
    /// Matches the eviction-queue entry that is current for this key.
    stamp: u64,
}

/// A resource's entries of one table and its live heap time.
#[derive(Debug)]
struct Slot<T> {
    items: Vec<T>,
    queued: Instant,
}

/// A resource's gauges, one per origin, with running sums so that the
/// common question (every gauge fresh) is answered without a walk: a
/// resource of a 64-node cluster holds 64 gauges, and walking them on
/// every record and every evaluation made the cost per record grow with
/// the cluster. 72 bytes in the table (the plain `Slot` took 40).
#[derive(Debug)]
struct LoadSlot {
    gauges: Vec<Gauge>,
    /// Sum of every gauge held, fresh or not; `u64::MAX` when it does not
    /// fit (hostile values), and then every question walks the gauges.
    sum: u64,
    /// This node's gauge, 0 when it has none.
    local: u64,
    /// No held gauge was updated before this (a lower bound of the
    /// oldest `at`, exact after a walk). While it is fresh, so is every
    /// gauge, and `sum` is the answer.
    oldest_at: Instant,
    queued: Instant,
}

impl LoadSlot {
    /// The view from the running sums, when every gauge is fresh.
    fn fast_view(&self, now: Instant, stale: Duration) -> Option<(LoadView, Instant)> {
        if self.gauges.is_empty()
            || self.sum == u64::MAX
            || now.saturating_duration_since(self.oldest_at) > stale
        {
            return None;
        }
        Some((
            LoadView {
                total: self.sum,
                local: self.local,
                nodes: self.gauges.len() as u32,
            },
            self.oldest_at + stale + STALE_STEP,
        ))
    }

    /// Drops the stale gauges and makes the sums and `oldest_at` exact.
    /// Returns how many were dropped.
    fn drop_stale(&mut self, now: Instant, stale: Duration, self_id: u32) -> usize {
        let before = self.gauges.len();
        self.gauges
            .retain(|g| now.saturating_duration_since(g.at) <= stale);
        let sum: u128 = self.gauges.iter().map(|g| u128::from(g.value)).sum();
        self.sum = u64::try_from(sum).unwrap_or(u64::MAX);
        self.local = self
            .gauges
            .iter()
            .find(|g| g.origin == self_id)
            .map_or(0, |g| g.value);
        if let Some(oldest) = self.gauges.iter().map(|g| g.at).min() {
            self.oldest_at = oldest;
        }
        before - self.gauges.len()
    }
}

type Timers = BinaryHeap<Reverse<(Instant, u64)>>;

/// Outcome of applying a record to the state, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Ok,
    /// A new resource was refused because the table is full.
    ResourceTableFull,
}

/// The cluster state tables.
#[derive(Debug)]
pub struct ClusterState {
    limits: StateLimits,
    self_id: u32,
    loads: ShardedMap<LoadSlot>,
    modes: ShardedMap<Slot<Claim>>,
    load_timers: Timers,
    mode_timers: Timers,
    marks: Map<u64, Mark>,
    /// Insertion order of marks, for oldest-first eviction. Entries whose
    /// stamp no longer matches the table are skipped lazily.
    mark_order: VecDeque<(u64, u64)>,
    next_stamp: u64,
    /// Marks evicted to respect `session_capacity`.
    pub evictions: u64,
}

/// A gauge is stale strictly after `load_stale`; this much later it is.
const STALE_STEP: Duration = Duration::from_micros(1);

impl ClusterState {
    pub fn new(self_id: u32, limits: StateLimits, hasher: SeededState) -> ClusterState {
        ClusterState {
            limits,
            self_id,
            // Sharded: memory follows the live resources, and growing
            // rehashes one shard at a time (see `ShardedMap`).
            loads: ShardedMap::new(hasher),
            modes: ShardedMap::new(hasher),
            load_timers: BinaryHeap::new(),
            mode_timers: BinaryHeap::new(),
            marks: Map::with_hasher(hasher),
            mark_order: VecDeque::new(),
            next_stamp: 0,
            evictions: 0,
        }
    }

    fn ttl_or_default(&self, ttl_ms: u32) -> Duration {
        if ttl_ms == 0 {
            self.limits.default_ttl
        } else {
            Duration::from_millis(ttl_ms as u64)
        }
    }

    /// Records `origin`'s current gauge for `resource`.
    pub fn apply_load(&mut self, now: Instant, origin: u32, resource: u64, value: u64) -> Applied {
        // One hash for a known resource (the common case: gauges are
        // reported again and again); a second only to insert a new one.
        let stale = self.limits.load_stale;
        let full = self.loads.len() >= self.limits.max_resources;
        let slot = match self.loads.get_mut(&resource) {
            Some(slot) => slot,
            None if full => return Applied::ResourceTableFull,
            None => {
                let stale_at = now + stale + STALE_STEP;
                self.load_timers.push(Reverse((stale_at, resource)));
                self.loads.insert_new(
                    resource,
                    LoadSlot {
                        gauges: Vec::with_capacity(1),
                        sum: 0,
                        local: 0,
                        oldest_at: now,
                        queued: stale_at,
                    },
                )
            }
        };
        // The bound ran out: once per stale period, drop what went stale
        // and make it exact, so the next questions take the fast path.
        if now.saturating_duration_since(slot.oldest_at) > stale {
            slot.drop_stale(now, stale, self.self_id);
        }
        let old = match slot.gauges.iter_mut().find(|g| g.origin == origin) {
            Some(g) => {
                let old = g.value;
                g.value = value;
                g.at = now;
                old
            }
            None => {
                if slot.gauges.is_empty() {
                    slot.oldest_at = now;
                }
                slot.gauges.push(Gauge {
                    origin,
                    value,
                    at: now,
                });
                0
            }
        };
        if slot.sum != u64::MAX {
            // Never below zero: `old` is part of the sum.
            slot.sum = (slot.sum - old).saturating_add(value);
        }
        if origin == self.self_id {
            slot.local = value;
        }
        Applied::Ok
    }

    /// Records `origin`'s mode claim (see [`ModeView::origin`]); level 0
    /// withdraws it.
    pub fn apply_mode(
        &mut self,
        now: Instant,
        origin: u64,
        resource: u64,
        level: u8,
        ttl_ms: u32,
    ) -> Applied {
        if level == 0 {
            if let Some(slot) = self.modes.get_mut(&resource) {
                slot.items.retain(|c| c.origin != origin);
                if slot.items.is_empty() {
                    self.modes.remove(&resource);
                }
            }
            return Applied::Ok;
        }
        let expires = now + self.ttl_or_default(ttl_ms);
        let full = self.modes.len() >= self.limits.max_resources;
        // One hash for a known resource, as in `apply_load`.
        let claims = match self.modes.get_mut(&resource) {
            Some(slot) => &mut slot.items,
            None if full => return Applied::ResourceTableFull,
            None => {
                self.mode_timers.push(Reverse((expires, resource)));
                let slot = self.modes.insert_new(
                    resource,
                    Slot {
                        items: Vec::with_capacity(1),
                        queued: expires,
                    },
                );
                &mut slot.items
            }
        };
        match claims.iter_mut().find(|c| c.origin == origin) {
            Some(c) => {
                c.level = level;
                c.expires = expires;
            }
            None => claims.push(Claim {
                origin,
                level,
                expires,
            }),
        }
        Applied::Ok
    }

    /// Records a session mark; the newest mark of a session wins. When the
    /// table is full the oldest mark is evicted (and counted).
    pub fn apply_mark(&mut self, now: Instant, origin: u32, key: u64, mark: u64, ttl_ms: u32) {
        let expires = now + self.ttl_or_default(ttl_ms);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let fresh = self
            .marks
            .insert(
                key,
                Mark {
                    mark,
                    origin,
                    expires,
                    stamp,
                },
            )
            .is_none();
        self.mark_order.push_back((key, stamp));
        if fresh {
            while self.marks.len() > self.limits.session_capacity {
                if !self.pop_oldest_mark(|_| true) {
                    break;
                }
                self.evictions += 1;
            }
        }
        // Keep the order queue from growing without bound when the same
        // keys are re-marked over and over.
        if self.mark_order.len() > 2 * self.marks.len() + 1024 {
            let marks = &self.marks;
            self.mark_order
                .retain(|(k, s)| marks.get(k).is_some_and(|m| m.stamp == *s));
        }
    }

    /// Removes the oldest live mark if `pred` accepts it; returns whether
    /// one was removed. Outdated queue entries are dropped on the way.
    fn pop_oldest_mark(&mut self, pred: impl Fn(&Mark) -> bool) -> bool {
        while let Some(&(key, stamp)) = self.mark_order.front() {
            match self.marks.get(&key) {
                Some(m) if m.stamp == stamp => {
                    if !pred(m) {
                        return false;
                    }
                    self.marks.remove(&key);
                    self.mark_order.pop_front();
                    return true;
                }
                _ => {
                    self.mark_order.pop_front();
                }
            }
        }
        false
    }

    pub fn load(&self, now: Instant, resource: u64) -> LoadView {
        self.load_until(now, resource).0
    }

    /// The load view and when it next changes by itself (the first of its
    /// fresh gauges turns stale), `None` when it cannot. O(1) while every
    /// gauge of the resource is fresh; the time may then be earlier than
    /// the exact one (a lower bound, never later), which only makes a
    /// caller look again early.
    pub fn load_until(&self, now: Instant, resource: u64) -> (LoadView, Option<Instant>) {
        let stale = self.limits.load_stale;
        let Some(slot) = self.loads.get(&resource) else {
            return (LoadView::default(), None);
        };
        if let Some((view, at)) = slot.fast_view(now, stale) {
            return (view, Some(at));
        }
        let mut view = LoadView::default();
        let mut oldest: Option<Instant> = None;
        for g in &slot.gauges {
            if now.saturating_duration_since(g.at) <= stale {
                view.total = view.total.saturating_add(g.value);
                view.nodes += 1;
                if g.origin == self.self_id {
                    view.local = g.value;
                }
                oldest = Some(oldest.map_or(g.at, |o| o.min(g.at)));
            }
        }
        (view, oldest.map(|o| o + stale + STALE_STEP))
    }

    pub fn mode(&self, now: Instant, resource: u64) -> ModeView {
        let mut best = ModeView::default();
        for c in self.modes.get(&resource).into_iter().flat_map(|s| &s.items) {
            if c.expires <= now {
                continue;
            }
            let remaining = c.expires - now;
            // A total order: level, then the lowest origin. Never the time
            // left, which differs from node to node with arrival times.
            if c.level > best.level || (c.level == best.level && c.origin < best.origin) {
                best = ModeView {
                    level: c.level,
                    origin: c.origin,
                    remaining,
                };
            }
        }
        best
    }

    pub fn mark(&self, now: Instant, key: u64) -> MarkView {
        match self.marks.get(&key) {
            Some(m) if m.expires > now => MarkView {
                mark: m.mark,
                origin: m.origin,
                remaining: m.expires - now,
            },
            _ => MarkView::default(),
        }
    }

    /// Drops stale gauges, expired claims and expired marks at the front
    /// of the mark queue. Returns how many entries were removed.
    pub fn purge(&mut self, now: Instant) -> usize {
        self.purge_some(now, usize::MAX).0
    }

    /// Like [`purge`](Self::purge), but looks at no more than `budget`
    /// due resources and marks; also returns whether more are due.
    pub fn purge_some(&mut self, now: Instant, budget: usize) -> (usize, bool) {
        let stale = self.limits.load_stale;
        let mut removed = 0;
        let mut left = budget;
        while left > 0 {
            let Some(&Reverse((t, resource))) = self.load_timers.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.load_timers.pop();
            left -= 1;
            let Some(slot) = self.loads.get_mut(&resource) else {
                continue;
            };
            if slot.queued != t {
                continue;
            }
            removed += slot.drop_stale(now, stale, self.self_id);
            if slot.gauges.is_empty() {
                self.loads.remove(&resource);
            } else {
                slot.queued = slot.oldest_at + stale + STALE_STEP;
                self.load_timers.push(Reverse((slot.queued, resource)));
            }
        }
        while left > 0 {
            let Some(&Reverse((t, resource))) = self.mode_timers.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.mode_timers.pop();
            left -= 1;
            let Some(slot) = self.modes.get_mut(&resource) else {
                continue;
            };
            if slot.queued != t {
                continue;
            }
            let before = slot.items.len();
            slot.items.retain(|c| c.expires > now);
            removed += before - slot.items.len();
            match slot.items.iter().map(|c| c.expires).min() {
                Some(first) => {
                    slot.queued = first;
                    self.mode_timers.push(Reverse((first, resource)));
                }
                None => {
                    self.modes.remove(&resource);
                }
            }
        }
        while left > 0 && self.pop_oldest_mark(|m| m.expires <= now) {
            removed += 1;
            left -= 1;
        }
        let more = left == 0;
        (removed, more)
    }

    /// Resources with a fresh gauge or a live claim, sorted.
    pub fn resources(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .loads
            .keys()
            .chain(self.modes.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Resources with a fresh gauge or a live claim, each once, in no
    /// particular order (no allocation, unlike [`ClusterState::resources`]).
    pub fn resource_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let loads = &self.loads;
        loads
            .keys()
            .chain(self.modes.keys().filter(move |r| !loads.contains_key(r)))
            .copied()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.loads.len(), self.modes.len(), self.marks.len())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    fn state(cap: usize) -> (ClusterState, Instant) {
        let limits = StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 3,
            session_capacity: cap,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        };
        (
            ClusterState::new(1, limits, SeededState::new(1)),
            Instant::now(),
        )
    }

    #[test]
    fn totals_sum_fresh_gauges_and_forget_silent_peers() {
        let (mut s, t0) = state(10);
        s.apply_load(t0, 1, 7, 100);
        s.apply_load(t0, 2, 7, 200);
        s.apply_load(t0 + Duration::from_millis(400), 3, 7, 300);
        s.apply_load(t0 + Duration::from_millis(400), 2, 7, 250);
        let at = t0 + Duration::from_millis(450);
        assert_eq!(
            s.load(at, 7),
            LoadView {
                total: 650,
                local: 100,
                nodes: 3
            }
        );
        // Node 1's gauge is now older than the bound: it stops counting.
        let later = t0 + Duration::from_millis(600);
        assert_eq!(
            s.load(later, 7),
            LoadView {
                total: 550,
                local: 0,
                nodes: 2
            }
        );
        assert_eq!(s.purge(later), 1);
        assert_eq!(s.purge(t0 + Duration::from_secs(5)), 2);
        assert_eq!(s.counts().0, 0);
    }

    #[test]
    fn resource_table_is_bounded() {
        let (mut s, t0) = state(10);
        for r in 0..3 {
            assert_eq!(s.apply_load(t0, 1, r, 1), Applied::Ok);
        }
        assert_eq!(s.apply_load(t0, 1, 99, 1), Applied::ResourceTableFull);
        assert_eq!(
            s.apply_load(t0, 2, 0, 1),
            Applied::Ok,
            "known resource still updates"
        );
    }

    #[test]
    fn highest_live_mode_wins_and_withdrawal_works() {
        let (mut s, t0) = state(10);
        s.apply_mode(t0, 2, 7, 1, 5_000);
        s.apply_mode(t0, 3, 7, 3, 1_000);
        assert_eq!(s.mode(t0, 7).level, 3);
        assert_eq!(s.mode(t0, 7).origin, 3);
        // Claim of node 3 expires: level 1 from node 2 remains.
        let later = t0 + Duration::from_millis(1_500);
        assert_eq!(s.mode(later, 7).level, 1);
        assert_eq!(s.mode(later, 7).remaining, Duration::from_millis(3_500));
        s.apply_mode(later, 2, 7, 0, 0);
        assert_eq!(s.mode(later, 7), ModeView::default());
        // ttl 0 takes the default.
        s.apply_mode(t0, 4, 8, 2, 0);
        assert_eq!(s.mode(t0, 8).remaining, Duration::from_secs(10));
    }

    #[test]
    fn marks_expire_and_evict_oldest_first() {
        let (mut s, t0) = state(3);
        for k in 1..=3 {
            s.apply_mark(t0, 2, k, LEGIT, 1_000);
        }
        // Re-marking key 1 makes it the newest.
        s.apply_mark(t0, 3, 1, 2, 1_000);
        s.apply_mark(t0, 2, 4, LEGIT, 1_000);
        assert_eq!(s.evictions, 1);
        assert_eq!(s.mark(t0, 2).mark, 0, "oldest (2) evicted");
        assert_eq!(s.mark(t0, 1).mark, 2);
        assert_eq!(s.mark(t0, 1).origin, 3);
        assert_eq!(s.mark(t0, 4).mark, LEGIT);
        let later = t0 + Duration::from_millis(1_001);
        assert_eq!(s.mark(later, 4).mark, 0);
        assert_eq!(s.purge(later), 3);
        assert_eq!(s.counts().2, 0);
    }

    #[test]
    fn purge_works_in_bounded_slices_and_only_on_what_is_due() {
        let limits = StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 1_000,
            session_capacity: 10,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        };
        let t0 = Instant::now();
        let mut s = ClusterState::new(1, limits, SeededState::new(1));
        for r in 0..100 {
            s.apply_load(t0, 2, r, 1);
        }
        // Resource 99 is refreshed: not due when the others go stale.
        s.apply_load(t0 + Duration::from_millis(400), 2, 99, 1);
        let at = t0 + Duration::from_millis(600);
        assert_eq!(s.purge_some(at, 30), (30, true));
        assert_eq!(s.counts().0, 70);
        let (removed, more) = s.purge_some(at, 1_000);
        assert_eq!((removed, more), (69, false), "the refreshed one stays");
        assert_eq!(s.load(at, 99).total, 1);
        // Nothing due: a purge touches nothing.
        assert_eq!(s.purge_some(at, 1_000), (0, false));
        assert_eq!(s.purge(t0 + Duration::from_secs(1)), 1);
        assert_eq!(s.counts().0, 0);
    }

    /// The running sums answer exactly what a walk over every gauge
    /// answers, through updates, silences, purges and origins coming and
    /// going; the time they give is never later than the exact one.
    #[test]
    fn running_sums_match_a_walk_of_every_gauge() {
        let limits = StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 100,
            session_capacity: 10,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        };
        let t0 = Instant::now();
        let mut s = ClusterState::new(1, limits.clone(), SeededState::new(1));
        // The reference: every (resource, origin) gauge as (value, at).
        let mut truth: std::collections::BTreeMap<(u64, u32), (u64, Instant)> = Default::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = t0;
        for step in 0..20_000 {
            now += Duration::from_micros(next() % 3_000);
            let (r, o) = (next() % 4, (next() % 6) as u32);
            let v = if next() % 50 == 0 {
                u64::MAX
            } else {
                next() % 1_000
            };
            s.apply_load(now, o, r, v);
            truth.insert((r, o), (v, now));
            if step % 97 == 0 {
                s.purge_some(now, 3);
            }
            let q = now + Duration::from_millis(next() % 700);
            for r in 0..4 {
                let mut want = LoadView::default();
                let mut oldest: Option<Instant> = None;
                for (&(_, o), &(v, at)) in truth.range((r, 0)..(r + 1, 0)) {
                    if q.saturating_duration_since(at) <= limits.load_stale {
                        want.total = want.total.saturating_add(v);
                        want.nodes += 1;
                        if o == 1 {
                            want.local = v;
                        }
                        oldest = Some(oldest.map_or(at, |m| m.min(at)));
                    }
                }
                let (got, until) = s.load_until(q, r);
                assert_eq!(got, want, "step {step} resource {r}");
                let exact = oldest.map(|o| o + limits.load_stale + STALE_STEP);
                match (until, exact) {
                    (Some(u), Some(e)) => assert!(u <= e, "step {step}: {u:?} after {e:?}"),
                    (None, None) => {}
                    other => panic!("step {step} resource {r}: {other:?}"),
                }
            }
        }
    }

    const LEGIT: u64 = shoal_wire::Record::MARK_LEGITIMATE;

    #[test]
    fn claims_of_the_same_level_have_one_winner_whatever_the_order() {
        let (mut a, t0) = state(10);
        let (mut b, _) = state(10);
        let later = t0 + Duration::from_millis(300);
        a.apply_mode(t0, 2, 7, 2, 3_000);
        a.apply_mode(later, 3, 7, 2, 3_000);
        b.apply_mode(t0, 3, 7, 2, 3_000);
        b.apply_mode(later, 2, 7, 2, 3_000);
        let at = t0 + Duration::from_millis(500);
        assert_eq!(a.mode(at, 7).origin, 2);
        assert_eq!(b.mode(at, 7).origin, 2);
        // A claim relayed from another cluster loses a tie with a local one.
        a.apply_mode(at, 1 << 32 | 1, 7, 2, 3_000);
        assert_eq!(a.mode(at, 7).origin, 2);
        a.apply_mode(at, 1 << 32 | 1, 7, 3, 3_000);
        assert_eq!(a.mode(at, 7).origin, 1 << 32 | 1, "a higher level wins");
    }
}
