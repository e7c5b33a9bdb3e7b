//! Per-key rates, locally and across the cluster, in fixed memory: the
//! counting mechanism under cluster-wide rate limits (`ratelimit`) and any
//! other per-key counter (the log responder's buckets).
//!
//! A [`KeyRates`] table owns three things:
//!
//! - **Local rates**: a Space-Saving table of at most `capacity` keys,
//!   each with an exponentially decayed count of its hits (time constant
//!   `tau`). A key not in a full table takes the place of the key with the
//!   smallest count and inherits that count as its error, so a heavy key
//!   is never pushed out by a flood of unique keys and memory never grows.
//!   Counts use forward decay (each hit weighs `e^((t - base)/tau)`), so
//!   their order never changes with time and one indexed min-heap finds
//!   the smallest in O(1) and keeps itself in O(log capacity); the weights
//!   are rescaled well before `f64` could overflow.
//! - **Heavy keys**: keys whose own rate reached `announce_min`; at most
//!   `max_announce` of them are announced per round ([`KeyRates::announce`]).
//! - **Peer rates**: what the other nodes announced, per key and origin,
//!   each held until its `until` (the announcement's lifetime). Bounded
//!   too: `peer_capacity` keys, `max_origins` origins per key.
//!
//! The rate a node reports for a key is its *own* hits since the key
//! entered its table, decayed (a lower bound: the inherited error is left
//! out), in hits per second. The cluster rate is that plus the live peer
//! rates. A table never reads the clock: every call takes `now`.

use std::time::{Duration, Instant};

use crate::hash::{Map, SeededState};

/// Rescale the weights once `(now - base) / tau` passes this: `e^40` is
/// about `2.4e17`, far from `f64`'s limit and still exact enough.
const RESCALE_AT: f64 = 40.0;

/// A table's bounds and time constants.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRateParams {
    /// Keys counted locally (the Space-Saving table's size).
    pub capacity: usize,
    /// Time constant of the decayed rates: a rate reacts to a change
    /// within about `tau` and averages over about `tau`.
    pub tau: Duration,
    /// Keys whose own rate reaches this many hits/s are announced.
    pub announce_min: f64,
    /// Most keys announced per round (the heaviest first when more
    /// qualify; see [`KeyRates::announce`]).
    pub max_announce: usize,
    /// Keys held from peers' announcements.
    pub peer_capacity: usize,
    /// Origins held per key (a cluster has about 16 nodes).
    pub max_origins: usize,
}

impl Default for KeyRateParams {
    fn default() -> Self {
        KeyRateParams {
            capacity: 65_536,
            tau: Duration::from_millis(250),
            announce_min: 1.0,
            max_announce: 512,
            peer_capacity: 8_192,
            max_origins: 32,
        }
    }
}

/// Monotonic counters of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRateCounters {
    /// Hit calls (each may count several hits).
    pub hits: u64,
    /// Keys pushed out of the full local table by a new key.
    pub evictions: u64,
    /// Keys removed after being idle (see [`KeyRates::sweep`]).
    pub expired: u64,
    /// Peer rates taken.
    pub peer_updates: u64,
    /// Peer rates not held: the peer table was full of live keys, or the
    /// key had `max_origins` live origins already.
    pub peer_dropped: u64,
    /// Heavy keys not announced because `max_announce` lighter-or-equal
    /// heavier keys filled the round.
    pub announce_overflow: u64,
}

/// One local entry. `s` and `err` are forward-decayed (see the module).
#[derive(Debug, Clone)]
struct Entry<V> {
    key: u64,
    s: f64,
    err: f64,
    /// Index in `heap`.
    pos: u32,
    last: Instant,
    since: Instant,
    heavy: bool,
    value: V,
}

/// Live announcements of one key.
#[derive(Debug, Clone, Default)]
struct PeerEntry {
    key: u64,
    /// (origin, hits/s, held until); never longer than `max_origins`.
    origins: Vec<(u32, f64, Instant)>,
}

/// What [`KeyRates::hit`] returns: the key's numbers after the hit and
/// its payload.
#[derive(Debug)]
pub struct Hit<'a, V> {
    /// The key was not in the table before this hit (new, or back after
    /// an eviction or expiry): `value` is `V::default()`.
    pub fresh: bool,
    /// This node's own rate, hits/s (since the key entered the table).
    pub local: f64,
    /// The live peer rates summed, hits/s.
    pub peers: f64,
    /// How many peers announced a live rate.
    pub origins: usize,
    /// When the key entered the table.
    pub since: Instant,
    pub value: &'a mut V,
}

/// Longest a peer's rate is held, whatever `ttl_ms` its record asks:
/// conforming senders ask for a few announce intervals (250 ms, 1 s), so a
/// longer hold only keeps a stale rate (a peer that restarted or went
/// silent) pushing a key over its cluster limit on every node.
pub const MAX_PEER_HOLD: Duration = Duration::from_secs(10);

/// One key's numbers, read without counting a hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyView {
    pub key: u64,
    /// This node's own rate, hits/s; 0 when not tracked here.
    pub local: f64,
    /// Upper bound of the local rate (Space-Saving's count with its
    /// inherited error).
    pub upper: f64,
    /// Live peer rates summed, hits/s.
    pub peers: f64,
    pub origins: usize,
}

impl KeyView {
    /// The cluster-wide rate: own plus peers'.
    pub fn cluster(&self) -> f64 {
        self.local + self.peers
    }
}

/// A bounded table of per-key decayed rates with the cluster's view (see
/// the module). `V` is the caller's per-key payload (a token bucket, a
/// leaky bucket, `()`), reset to `V::default()` when a key enters.
#[derive(Debug)]
pub struct KeyRates<V> {
    p: KeyRateParams,
    tau_s: f64,
    base: Instant,
    entries: Vec<Entry<V>>,
    /// Min-heap of entry slots by `s`.
    heap: Vec<u32>,
    index: Map<u64, u32>,
    /// Slots freed by [`KeyRates::sweep`], reused first.
    free: Vec<u32>,
    /// (slot, key) of keys that reached `announce_min`.
    heavy: Vec<(u32, u64)>,
    /// When `heavy` is full: the own count a key must beat to enter, and
    /// the index it replaces (see `mark_heavy`).
    floor: (f64, usize),
    peers: Vec<PeerEntry>,
    peer_index: Map<u64, u32>,
    peer_hand: usize,
    sweep_hand: usize,
    counters: KeyRateCounters,
}

impl<V: Default> KeyRates<V> {
    /// An empty table; memory for `capacity` keys is taken now and never
    /// grows (a `capacity` or `peer_capacity` of 0 is read as 1).
    pub fn new(mut p: KeyRateParams, now: Instant, hasher: SeededState) -> KeyRates<V> {
        p.capacity = p.capacity.clamp(1, u32::MAX as usize / 2);
        p.peer_capacity = p.peer_capacity.clamp(1, u32::MAX as usize / 2);
        p.max_origins = p.max_origins.max(1);
        let tau_s = p.tau.as_secs_f64().max(1e-3);
        KeyRates {
            tau_s,
            base: now,
            entries: Vec::with_capacity(p.capacity),
            heap: Vec::with_capacity(p.capacity),
            index: Map::with_capacity_and_hasher(p.capacity, hasher),
            free: Vec::new(),
            heavy: Vec::with_capacity(p.max_announce),
            floor: (f64::MIN, 0),
            peers: Vec::new(),
            peer_index: Map::with_capacity_and_hasher(p.peer_capacity, hasher),
            peer_hand: 0,
            sweep_hand: 0,
            counters: KeyRateCounters::default(),
            p,
        }
    }

    pub fn params(&self) -> &KeyRateParams {
        &self.p
    }

    /// Changes the announce threshold (hits/s), e.g. when the number of
    /// nodes changes. Keys already heavy are re-judged at the next round.
    pub fn set_announce_min(&mut self, rate: f64) {
        self.p.announce_min = rate.max(0.0);
    }

    pub fn counters(&self) -> KeyRateCounters {
        self.counters
    }

    /// Keys tracked locally.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Keys held from peers.
    pub fn peer_len(&self) -> usize {
        self.peer_index.len()
    }

    /// Weight of one hit at `now`, rescaling first when it grows large.
    fn weight(&mut self, now: Instant) -> f64 {
        let x = now.saturating_duration_since(self.base).as_secs_f64() / self.tau_s;
        if x < RESCALE_AT {
            return x.exp();
        }
        // Every count is multiplied by the same factor: the heap's order
        // holds. Tiny counts may round to 0, which only ties them.
        let f = (-x).exp();
        for e in &mut self.entries {
            e.s *= f;
            e.err *= f;
        }
        self.base = now;
        1.0
    }

    /// Decayed count at `now` to hits per second.
    fn to_rate(&self, now: Instant, scaled: f64) -> f64 {
        let x = now.saturating_duration_since(self.base).as_secs_f64() / self.tau_s;
        (scaled * (-x).exp() / self.tau_s).max(0.0)
    }

    /// Counts `n` hits of `key` at `now` and returns its numbers and
    /// payload. Never allocates once the table is full.
    pub fn hit(&mut self, now: Instant, key: u64, n: u64) -> Hit<'_, V> {
        self.counters.hits += 1;
        let w = self.weight(now) * n as f64;
        let (slot, fresh) = match self.index.get(&key) {
            Some(&slot) => {
                let e = &mut self.entries[slot as usize];
                e.s += w;
                e.last = now;
                let pos = e.pos as usize;
                self.sift_down(pos);
                (slot as usize, false)
            }
            None => (self.insert(now, key, w), true),
        };
        let announce_min = self.p.announce_min;
        let e = &self.entries[slot];
        let local = self.to_rate(now, e.s - e.err);
        if !e.heavy && local >= announce_min {
            self.mark_heavy(slot);
        }
        let (peers, origins) = self.peer_sum(now, key);
        let e = &mut self.entries[slot];
        Hit {
            fresh,
            local,
            peers,
            origins,
            since: e.since,
            value: &mut e.value,
        }
    }

    fn insert(&mut self, now: Instant, key: u64, w: f64) -> usize {
        if let Some(slot) = self.free.pop() {
            let e = &mut self.entries[slot as usize];
            *e = Entry {
                key,
                s: w,
                err: 0.0,
                pos: self.heap.len() as u32,
                last: now,
                since: now,
                heavy: false,
                value: V::default(),
            };
            self.heap.push(slot);
            self.index.insert(key, slot);
            self.sift_up(self.heap.len() - 1);
            return slot as usize;
        }
        if self.entries.len() < self.p.capacity {
            let slot = self.entries.len() as u32;
            self.entries.push(Entry {
                key,
                s: w,
                err: 0.0,
                pos: self.heap.len() as u32,
                last: now,
                since: now,
                heavy: false,
                value: V::default(),
            });
            self.heap.push(slot);
            self.index.insert(key, slot);
            self.sift_up(self.heap.len() - 1);
            return slot as usize;
        }
        // Space-Saving: the smallest count makes room and is inherited.
        self.counters.evictions += 1;
        let slot = self.heap[0];
        let e = &mut self.entries[slot as usize];
        self.index.remove(&e.key);
        let min = e.s;
        *e = Entry {
            key,
            s: min + w,
            err: min,
            pos: 0,
            last: now,
            since: now,
            heavy: false,
            value: V::default(),
        };
        self.index.insert(key, slot);
        self.sift_down(0);
        slot as usize
    }

    /// Puts a key that reached the threshold in the heavy list. O(1): when
    /// the list is full the key takes the place of the lightest as of the
    /// last look (`floor`) if it is heavier; the next round looks again.
    fn mark_heavy(&mut self, slot: usize) {
        let key = self.entries[slot].key;
        let max = self.p.max_announce.max(1);
        if self.heavy.len() < max {
            self.entries[slot].heavy = true;
            self.heavy.push((slot as u32, key));
            if self.heavy.len() == max {
                self.find_floor();
            }
            return;
        }
        let own = self.entries[slot].s - self.entries[slot].err;
        if own <= self.floor.0 {
            // Looked at again on its next hits.
            self.counters.announce_overflow += 1;
            return;
        }
        let i = self.floor.1;
        let (old, old_key) = self.heavy[i];
        if self.entries[old as usize].key == old_key {
            self.entries[old as usize].heavy = false;
        }
        self.heavy[i] = (slot as u32, key);
        self.entries[slot].heavy = true;
        // Not the true lightest any more, but a bound the next candidates
        // must beat; `prune_heavy` finds the true one every round.
        self.floor.0 = own;
    }

    /// The lightest key of a full heavy list: (its own count, its index).
    fn find_floor(&mut self) {
        self.floor = self
            .heavy
            .iter()
            .enumerate()
            .map(|(i, &(slot, key))| {
                let e = &self.entries[slot as usize];
                // A slot that changed key is the first to go.
                let own = if e.key == key { e.s - e.err } else { f64::MIN };
                (own, i)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::MIN, 0));
    }

    /// Keeps in the heavy list only keys still in their slot and at or
    /// above the threshold.
    fn prune_heavy(&mut self, now: Instant) {
        let min = self.p.announce_min;
        let mut heavy = std::mem::take(&mut self.heavy);
        heavy.retain(|&(slot, key)| {
            let e = &self.entries[slot as usize];
            if e.key != key || self.index.get(&key) != Some(&slot) {
                return false;
            }
            let keep = self.to_rate(now, e.s - e.err) >= min;
            if !keep {
                self.entries[slot as usize].heavy = false;
            }
            keep
        });
        self.heavy = heavy;
        if self.heavy.len() >= self.p.max_announce.max(1) {
            self.find_floor();
        }
    }

    /// One announcement round: calls `emit(key, own rate)` for every
    /// heavy key still at or above `announce_min` (at most
    /// `max_announce`). The caller puts them on the wire (see
    /// `KeyRateRecord`) every announce interval.
    pub fn announce(&mut self, now: Instant, mut emit: impl FnMut(u64, f64)) {
        self.prune_heavy(now);
        for &(slot, key) in &self.heavy {
            let e = &self.entries[slot as usize];
            emit(key, self.to_rate(now, e.s - e.err));
        }
    }

    /// Takes a peer's rate for `key` (hits/s), held until `until` (at
    /// most [`MAX_PEER_HOLD`] from `now`). The
    /// caller passes only other nodes' announcements (origin = the
    /// datagram's sender). Returns false when it was not held.
    pub fn absorb(
        &mut self,
        now: Instant,
        origin: u32,
        key: u64,
        rate: f64,
        until: Instant,
    ) -> bool {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        let until = until.min(now + MAX_PEER_HOLD);
        let slot = match self.peer_index.get(&key) {
            Some(&s) => s as usize,
            None => match self.peer_slot(now) {
                Some(s) => {
                    self.peers[s].key = key;
                    self.peers[s].origins.clear();
                    self.peer_index.insert(key, s as u32);
                    s
                }
                None => {
                    self.counters.peer_dropped += 1;
                    return false;
                }
            },
        };
        let max = self.p.max_origins;
        let pe = &mut self.peers[slot];
        if let Some(o) = pe.origins.iter_mut().find(|o| o.0 == origin) {
            *o = (origin, rate, until);
        } else {
            pe.origins.retain(|o| o.2 > now);
            if pe.origins.len() >= max {
                self.counters.peer_dropped += 1;
                return false;
            }
            pe.origins.push((origin, rate, until));
        }
        self.counters.peer_updates += 1;
        true
    }

    /// A free peer slot: a new one while under capacity, else one whose
    /// origins all expired, looked for among the next 16 (clock hand).
    fn peer_slot(&mut self, now: Instant) -> Option<usize> {
        if self.peers.len() < self.p.peer_capacity {
            self.peers.push(PeerEntry::default());
            return Some(self.peers.len() - 1);
        }
        for _ in 0..16 {
            let s = self.peer_hand % self.peers.len();
            self.peer_hand = s + 1;
            if self.peers[s].origins.iter().all(|o| o.2 <= now) {
                let old = self.peers[s].key;
                if self.peer_index.get(&old) == Some(&(s as u32)) {
                    self.peer_index.remove(&old);
                }
                return Some(s);
            }
        }
        None
    }

    /// Live peer rates of `key` summed, and how many origins.
    fn peer_sum(&self, now: Instant, key: u64) -> (f64, usize) {
        match self.peer_index.get(&key) {
            None => (0.0, 0),
            Some(&s) => self.peers[s as usize]
                .origins
                .iter()
                .filter(|o| o.2 > now)
                .fold((0.0, 0), |(r, n), o| (r + o.1, n + 1)),
        }
    }

    /// A key's numbers without counting a hit.
    pub fn view(&self, now: Instant, key: u64) -> KeyView {
        let (peers, origins) = self.peer_sum(now, key);
        let (local, upper) = match self.index.get(&key) {
            Some(&slot) => {
                let e = &self.entries[slot as usize];
                (self.to_rate(now, e.s - e.err), self.to_rate(now, e.s))
            }
            None => (0.0, 0.0),
        };
        KeyView {
            key,
            local,
            upper,
            peers,
            origins,
        }
    }

    /// The payload of a tracked key.
    pub fn value(&self, key: u64) -> Option<&V> {
        let slot = *self.index.get(&key)?;
        Some(&self.entries[slot as usize].value)
    }

    /// Removes keys not hit for `idle`, looking at no more than `budget`
    /// slots from where the last sweep stopped (call it on a timer; a full
    /// pass takes `capacity / budget` calls), and peer keys whose origins
    /// all expired among as many peer slots. Returns the keys removed.
    pub fn sweep(&mut self, now: Instant, idle: Duration, budget: usize) -> usize {
        let mut removed = 0;
        let n = self.entries.len();
        for _ in 0..budget.min(n) {
            let slot = self.sweep_hand % n;
            self.sweep_hand = slot + 1;
            let e = &self.entries[slot];
            if self.index.get(&e.key) == Some(&(slot as u32))
                && now.saturating_duration_since(e.last) >= idle
            {
                let key = e.key;
                let pos = e.pos as usize;
                self.index.remove(&key);
                self.heap_remove(pos);
                self.entries[slot].heavy = false;
                self.entries[slot].value = V::default();
                self.free.push(slot as u32);
                removed += 1;
            }
        }
        self.counters.expired += removed as u64;
        let n = self.peers.len();
        for _ in 0..budget.min(n) {
            let s = self.peer_hand % n;
            self.peer_hand = s + 1;
            let pe = &mut self.peers[s];
            pe.origins.retain(|o| o.2 > now);
            if pe.origins.is_empty() && self.peer_index.get(&pe.key) == Some(&(s as u32)) {
                self.peer_index.remove(&pe.key);
            }
        }
        removed
    }

    /// The `n` keys with the highest cluster rate among the heavy keys
    /// and the `n` highest local counts, best first (for `status`).
    pub fn top(&self, now: Instant, n: usize) -> Vec<KeyView> {
        let mut keys: Vec<u64> = self
            .heavy
            .iter()
            .filter(|&&(slot, key)| self.index.get(&key) == Some(&slot))
            .map(|&(_, key)| key)
            .collect();
        keys.extend(
            self.peer_index
                .keys()
                .copied()
                .filter(|k| self.peer_sum(now, *k).1 > 0)
                .take(4 * n.max(1)),
        );
        keys.sort_unstable();
        keys.dedup();
        let mut views: Vec<KeyView> = keys.into_iter().map(|k| self.view(now, k)).collect();
        views.sort_by(|a, b| b.cluster().total_cmp(&a.cluster()).then(a.key.cmp(&b.key)));
        views.truncate(n);
        views
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.s_at(i) < self.s_at(parent) {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.s_at(r) < self.s_at(l) {
                r
            } else {
                l
            };
            if self.s_at(c) < self.s_at(i) {
                self.swap(i, c);
                i = c;
            } else {
                break;
            }
        }
    }

    fn heap_remove(&mut self, pos: usize) {
        let last = self.heap.len() - 1;
        if pos != last {
            self.swap(pos, last);
        }
        self.heap.pop();
        if pos < self.heap.len() {
            self.sift_down(pos);
            self.sift_up(pos);
        }
    }

    #[inline]
    fn s_at(&self, i: usize) -> f64 {
        self.entries[self.heap[i] as usize].s
    }

    #[inline]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.entries[self.heap[a] as usize].pos = a as u32;
        self.entries[self.heap[b] as usize].pos = b as u32;
    }
}

/// Hits per second as carried in a `KEY_RATE` record's `f2`: thousandths,
/// rounded, saturating.
pub fn rate_to_milli(rate: f64) -> u64 {
    if rate.is_finite() && rate > 0.0 {
        (rate * 1000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// The inverse of [`rate_to_milli`].
pub fn milli_to_rate(milli: u64) -> f64 {
    milli as f64 / 1000.0
}

/// Table ids in a `KEY_RATE` record (`f0`): the domain in the high 32
/// bits says which part of the sidecar owns the table, the low 32 bits
/// which table.
pub mod domain {
    /// `[[limits]]`: the low 32 bits are the limit's id.
    pub const LIMIT: u32 = 1;
    /// The log responder's rules.
    pub const RESPONDER: u32 = 2;
}

/// `f0` of a `KEY_RATE` record.
pub fn table_id(domain: u32, id: u32) -> u64 {
    (u64::from(domain) << 32) | u64::from(id)
}

/// The id every node derives from a table's name (FNV-1a, 32 bits), so
/// that nodes with the same config agree without numbering anything.
pub fn name_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// One `KEY_RATE` record's meaning (code `0x0008`, `docs/wire.md`): node
/// `origin` counts `rate` hits/s of `key` in table `table`, measured at
/// the record's `timing_us`, to be held for `ttl_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRateRecord {
    pub table: u64,
    pub key: u64,
    /// Hits per second (carried in thousandths).
    pub rate: f64,
    pub ttl_ms: u32,
}

impl KeyRateRecord {
    /// The record to send (the node stamps origin, seq and timing).
    pub fn to_record(&self) -> shoal_wire::Record {
        shoal_wire::Record {
            ttl_ms: self.ttl_ms,
            ..shoal_wire::Record::new(
                shoal_wire::Code::KEY_RATE,
                [self.table, self.key, rate_to_milli(self.rate), 0],
            )
        }
    }

    /// Reads a `KEY_RATE` record: `None` for another code, a zero TTL
    /// (a rate must say how long it holds) or a non-zero `f3`.
    pub fn from_record(r: &shoal_wire::Record) -> Option<KeyRateRecord> {
        if r.code != shoal_wire::Code::KEY_RATE || r.ttl_ms == 0 || r.fields[3] != 0 {
            return None;
        }
        Some(KeyRateRecord {
            table: r.fields[0],
            key: r.fields[1],
            rate: milli_to_rate(r.fields[2]),
            ttl_ms: r.ttl_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn params(capacity: usize) -> KeyRateParams {
        KeyRateParams {
            capacity,
            tau: ms(250),
            announce_min: 10.0,
            max_announce: 4,
            peer_capacity: 8,
            max_origins: 4,
        }
    }

    fn table(capacity: usize) -> (KeyRates<u32>, Instant) {
        // Not the core's clock: any base instant serves a test.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        (KeyRates::new(params(capacity), t0, SeededState::new(7)), t0)
    }

    /// Hits `key` `per_s` times a second, evenly, over `d` from `start`.
    fn feed(t: &mut KeyRates<u32>, start: Instant, d: Duration, key: u64, per_s: u64) -> Instant {
        let n = (d.as_secs_f64() * per_s as f64) as u64;
        let step = Duration::from_secs_f64(1.0 / per_s as f64);
        let mut now = start;
        for _ in 0..n {
            now += step;
            t.hit(now, key, 1);
        }
        now
    }

    /// Red team: a peer's rate is held for the `ttl_ms` its record asks,
    /// and nothing bounded it. One record from a broken or restarted peer
    /// (a huge rate, `ttl_ms` u32::MAX) kept a key over its cluster limit
    /// on every node for 49 days, long after the peer went silent.
    #[test]
    fn a_peer_rate_is_held_no_longer_than_max_peer_hold() {
        let (mut t, t0) = table(16);
        let forever = t0 + Duration::from_millis(u32::MAX.into());
        assert!(t.absorb(t0, 2, 9, 1e12, forever));
        assert_eq!(t.view(t0, 9).peers, 1e12);
        let later = t0 + MAX_PEER_HOLD + ms(1);
        let v = t.view(later, 9);
        assert_eq!((v.peers, v.origins), (0.0, 0), "{v:?}");
        // A newer announcement from the same origin is held again.
        assert!(t.absorb(later, 2, 9, 5.0, forever));
        assert_eq!(t.view(later, 9).peers, 5.0);
    }

    #[test]
    fn a_steady_rate_is_measured() {
        let (mut t, t0) = table(16);
        let now = feed(&mut t, t0, ms(3_000), 1, 1_000);
        let v = t.view(now, 1);
        assert!((v.local - 1_000.0).abs() < 10.0, "{v:?}");
        // Decays when the key goes quiet: e^-4 after 4 tau.
        let later = t.view(now + ms(1_000), 1);
        assert!(
            (later.local - 1_000.0 * (-4f64).exp()).abs() < 1.0,
            "{later:?}"
        );
    }

    #[test]
    fn a_heavy_key_survives_a_flood_of_unique_keys_in_fixed_memory() {
        let (mut t, t0) = table(64);
        let mut now = t0;
        let step = Duration::from_micros(10);
        // 100 000 unique keys at 100 000/s, a heavy key at 10 000/s.
        for i in 0..100_000u64 {
            now += step;
            t.hit(now, 1_000_000 + i, 1);
            if i % 10 == 0 {
                t.hit(now, 7, 1);
            }
            assert!(t.len() <= 64);
        }
        assert_eq!(t.len(), 64);
        assert_eq!(t.entries.capacity(), 64);
        let v = t.view(now, 7);
        assert!((v.local - 10_000.0).abs() < 500.0, "{v:?}");
        assert!(t.counters().evictions > 99_000);
        // A unique key's own rate is only its own hit, whatever it inherited.
        let u = t.view(now, 1_000_000 + 99_999);
        assert!(u.local <= 4.0 + 1e-9 && u.upper > u.local, "{u:?}");
    }

    #[test]
    fn rates_survive_rescaling() {
        let (mut t, t0) = table(4);
        // 60 s at tau 250 ms: the weights are rescaled several times.
        let now = feed(&mut t, t0, ms(60_000), 3, 200);
        let v = t.view(now, 3);
        assert!((v.local - 200.0).abs() < 5.0, "{v:?}");
        assert!(t.base > t0);
    }

    #[test]
    fn heavy_keys_are_announced_and_the_lightest_give_way() {
        let (mut t, t0) = table(64);
        let mut now = t0;
        // Key k is hit every 7 - k ms (166/s to 1000/s), key 50 at 2/s.
        for step in 1..=2_000u64 {
            now = t0 + ms(step);
            for k in 1..=6u64 {
                if step % (7 - k) == 0 {
                    t.hit(now, k, 1);
                }
            }
            if step % 500 == 0 {
                t.hit(now, 50, 1);
            }
        }
        let mut got = Vec::new();
        t.announce(now, |k, r| got.push((k, r)));
        got.sort_by_key(|g| g.0);
        let keys: Vec<u64> = got.iter().map(|g| g.0).collect();
        // max_announce is 4: the four heaviest; 50 is under the threshold.
        assert_eq!(keys, vec![3, 4, 5, 6], "{got:?}");
        // A key that goes quiet stops being announced.
        let mut got = Vec::new();
        t.announce(now + ms(3_000), |k, r| got.push((k, r)));
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn peer_rates_add_up_per_origin_and_go_stale() {
        let (mut t, t0) = table(8);
        assert!(t.absorb(t0, 2, 9, 100.0, t0 + ms(200)));
        assert!(t.absorb(t0, 3, 9, 50.0, t0 + ms(400)));
        // The same origin replaces its own rate.
        assert!(t.absorb(t0, 2, 9, 120.0, t0 + ms(200)));
        let v = t.view(t0 + ms(100), 9);
        assert_eq!((v.peers, v.origins, v.local), (170.0, 2, 0.0));
        let h = t.hit(t0 + ms(300), 9, 1);
        assert_eq!((h.peers, h.origins), (50.0, 1));
        assert!(h.fresh);
        assert_eq!(t.view(t0 + ms(400), 9).origins, 0);
        // NaN and negative rates count as 0.
        assert!(t.absorb(t0, 4, 9, f64::NAN, t0 + ms(500)));
        assert!(t.absorb(t0, 5, 9, -3.0, t0 + ms(500)));
        assert_eq!(t.view(t0 + ms(450), 9).peers, 0.0);
    }

    #[test]
    fn the_peer_table_is_bounded_and_reuses_expired_keys() {
        let (mut t, t0) = table(8);
        for k in 0..8u64 {
            assert!(t.absorb(t0, 2, k, 1.0, t0 + ms(100)));
        }
        // Full of live keys: refused and counted.
        assert!(!t.absorb(t0, 2, 100, 1.0, t0 + ms(100)));
        assert_eq!(t.counters().peer_dropped, 1);
        // Once they expired, a new key takes a slot.
        assert!(t.absorb(t0 + ms(150), 2, 100, 5.0, t0 + ms(300)));
        assert_eq!(t.view(t0 + ms(150), 100).peers, 5.0);
        assert!(t.peer_len() <= 8);
        // Too many origins for one key.
        for o in 3..6u32 {
            assert!(t.absorb(t0 + ms(150), o, 100, 1.0, t0 + ms(300)));
        }
        assert!(!t.absorb(t0 + ms(150), 9, 100, 1.0, t0 + ms(300)));
    }

    #[test]
    fn idle_keys_are_swept_and_their_slots_reused() {
        let (mut t, t0) = table(8);
        for k in 0..8u64 {
            *t.hit(t0, k, 1).value = 5;
        }
        t.hit(t0 + ms(900), 3, 1);
        assert_eq!(t.sweep(t0 + ms(1_000), ms(500), 100), 7);
        assert_eq!(t.len(), 1);
        assert_eq!(t.counters().expired, 7);
        let h = t.hit(t0 + ms(1_000), 42, 1);
        assert!(h.fresh);
        assert_eq!(*h.value, 0);
        assert_eq!(t.value(3), Some(&5));
        // The heap is still a heap: fill up and evict the smallest, never
        // key 3, now the heaviest.
        t.hit(t0 + ms(1_000), 3, 5);
        for k in 100..110u64 {
            t.hit(t0 + ms(1_001), k, 1);
        }
        assert_eq!(t.len(), 8);
        assert_eq!(t.value(3), Some(&5));
    }

    #[test]
    fn key_rate_records_round_trip_and_refuse_bad_fields() {
        let k = KeyRateRecord {
            table: table_id(domain::LIMIT, name_id("login")),
            key: 0xc0a8_0001,
            rate: 1234.5678,
            ttl_ms: 250,
        };
        let r = k.to_record();
        assert_eq!(r.fields[2], 1_234_568);
        let back = KeyRateRecord::from_record(&r).expect("valid");
        assert_eq!(back.rate, 1234.568);
        assert_eq!((back.table, back.key, back.ttl_ms), (k.table, k.key, 250));
        let mut bad = r;
        bad.ttl_ms = 0;
        assert_eq!(KeyRateRecord::from_record(&bad), None);
        let mut bad = r;
        bad.fields[3] = 1;
        assert_eq!(KeyRateRecord::from_record(&bad), None);
        assert_eq!(rate_to_milli(f64::NAN), 0);
        assert_eq!(rate_to_milli(f64::INFINITY), 0);
        assert_eq!(rate_to_milli(1e300), u64::MAX);
        // FNV-1a 32 reference values.
        assert_eq!(name_id(""), 0x811c_9dc5);
        assert_eq!(name_id("a"), 0xe40c_292c);
        // docs/wire.md vector h-key-rate.
        assert_eq!(
            table_id(domain::LIMIT, name_id("login")),
            0x0000_0001_c97f_2f32
        );
    }
}
