//! The expiry walk, independent of Tarantool: which tuples to read, which
//! keys to delete, where to resume. Driven over a [`Log`] (the primary
//! index), so the unit tests run it on a `BTreeMap`.
//!
//! The primary key is `{node, expires_us, id}`: within a node's range the
//! front is always the next tuple to expire. A pass positions with GE `{}`,
//! takes expired tuples from the front of the first range, and at the
//! first live tuple jumps past the rest of that range with GT `{node}`.
//! It never reads more than one live tuple per range and needs no extra
//! index. A batch ends at `max` keys (or `max` tuples read); the caller
//! deletes it, yields, and the walk repositions by key (GE `{node}`: the
//! node's new front), never by a held iterator.

use crate::mp::{self, Row};

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek<'a> {
    /// GE `{}`: the first tuple of the index.
    First,
    /// GE `{node}`: the front of this node's range.
    From(&'a [u8]),
    /// GT `{node}`: the front of the next node's range.
    After(&'a [u8]),
}

/// What the visitor of a scan wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Next,
    Stop,
}

/// An ordered index of `shoal_log` keys.
pub trait Log {
    type Error;
    /// Calls `visit` on tuples in key order from `from` until it returns
    /// [`Flow::Stop`] or the index ends. Must not yield.
    fn scan(
        &mut self,
        from: Seek<'_>,
        visit: &mut dyn FnMut(Row<'_>) -> Flow,
    ) -> Result<(), Self::Error>;
}

/// Keys to delete in one transaction, encoded back to back in one reused
/// buffer (no allocation per key once warm).
#[derive(Debug, Default)]
pub struct KeyBatch {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyBatch {
    pub fn with_capacity(keys: usize) -> KeyBatch {
        KeyBatch {
            buf: Vec::with_capacity(keys * 32),
            ends: Vec::with_capacity(keys),
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, row: &Row<'_>) {
        mp::push_key(&mut self.buf, row);
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each key's MessagePack (`[node, expires_us, id]`).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.buf[s..e])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    First,
    From,
    After,
    Done,
}

/// One pass over the index, resumable between batches.
#[derive(Debug)]
pub struct Walk {
    at: At,
    node: Vec<u8>,
    seen: Vec<u8>,
}

impl Default for Walk {
    fn default() -> Self {
        Walk::new()
    }
}

impl Walk {
    pub fn new() -> Walk {
        Walk {
            at: At::First,
            node: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Starts a new pass from the first tuple.
    pub fn restart(&mut self) {
        self.at = At::First;
    }

    /// True when the pass reached the end of the index.
    pub fn is_done(&self) -> bool {
        self.at == At::Done
    }

    /// Collects into `batch` (cleared first) the keys of up to `max`
    /// tuples that expired before `now_us`, reading at most `max` tuples
    /// plus one live front, and returns how many tuples it read.
    pub fn collect<L: Log>(
        &mut self,
        log: &mut L,
        now_us: u64,
        max: usize,
        batch: &mut KeyBatch,
    ) -> Result<u64, L::Error> {
        #[derive(Clone, Copy)]
        enum Stopped {
            End,
            Live,
            Full,
        }
        let max = max.max(1);
        batch.clear();
        let mut scanned: u64 = 0;
        loop {
            let seek = match self.at {
                At::First => Seek::First,
                At::From => Seek::From(&self.node),
                At::After => Seek::After(&self.node),
                At::Done => return Ok(scanned),
            };
            let mut stopped = Stopped::End;
            let seen = &mut self.seen;
            log.scan(seek, &mut |row| {
                scanned += 1;
                if row.expires_us >= now_us {
                    // The live front: the rest of this range is live too.
                    seen.clear();
                    seen.extend_from_slice(row.node);
                    stopped = Stopped::Live;
                    return Flow::Stop;
                }
                batch.push(&row);
                if batch.len() >= max {
                    seen.clear();
                    seen.extend_from_slice(row.node);
                    stopped = Stopped::Full;
                    return Flow::Stop;
                }
                Flow::Next
            })?;
            match stopped {
                Stopped::End => {
                    self.at = At::Done;
                    return Ok(scanned);
                }
                Stopped::Live => {
                    std::mem::swap(&mut self.node, &mut self.seen);
                    self.at = At::After;
                    // Many ranges with live fronts: give the tx thread
                    // back after `max` reads even with nothing to delete.
                    if scanned >= max as u64 {
                        return Ok(scanned);
                    }
                }
                Stopped::Full => {
                    std::mem::swap(&mut self.node, &mut self.seen);
                    self.at = At::From;
                    return Ok(scanned);
                }
            }
        }
    }
}

/// The expiry time of the oldest front among the first `limit` ranges:
/// the oldest tuple still present in each node's range (expired or not).
pub fn oldest_front<L: Log>(log: &mut L, limit: usize) -> Result<Option<u64>, L::Error> {
    let mut oldest: Option<u64> = None;
    let mut node: Vec<u8> = Vec::new();
    for i in 0..limit {
        let mut found = false;
        let seek = if i == 0 {
            Seek::First
        } else {
            Seek::After(&node)
        };
        let mut next = Vec::new();
        log.scan(seek, &mut |row| {
            found = true;
            oldest = Some(oldest.map_or(row.expires_us, |o| o.min(row.expires_us)));
            next.extend_from_slice(row.node);
            Flow::Stop
        })?;
        if !found {
            break;
        }
        node = next;
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::ops::Bound;

    type Key = (Vec<u8>, u64, u64);

    /// The primary index as a `BTreeMap`, counting what it reads.
    #[derive(Default)]
    struct Model {
        rows: BTreeMap<Key, ()>,
        reads: u64,
        seeks: u64,
    }

    impl Model {
        fn insert(&mut self, node: &str, exp: u64, id: u64) {
            self.rows.insert((node.as_bytes().to_vec(), exp, id), ());
        }
        fn delete(&mut self, batch: &KeyBatch) -> usize {
            let mut n = 0;
            for k in batch.keys() {
                let r = mp::parse_row(k).expect("a key");
                n += usize::from(
                    self.rows
                        .remove(&(r.node.to_vec(), r.expires_us, r.id))
                        .is_some(),
                );
            }
            n
        }
    }

    impl Log for Model {
        type Error = Infallible;
        fn scan(
            &mut self,
            from: Seek<'_>,
            visit: &mut dyn FnMut(Row<'_>) -> Flow,
        ) -> Result<(), Infallible> {
            self.seeks += 1;
            let lower = match from {
                Seek::First => Bound::Unbounded,
                Seek::From(n) => Bound::Included((n.to_vec(), 0, 0)),
                Seek::After(n) => Bound::Excluded((n.to_vec(), u64::MAX, u64::MAX)),
            };
            for ((node, exp, id), ()) in self.rows.range((lower, Bound::Unbounded)) {
                self.reads += 1;
                let row = Row {
                    node,
                    expires_us: *exp,
                    id: *id,
                };
                if visit(row) == Flow::Stop {
                    break;
                }
            }
            Ok(())
        }
    }

    /// Runs whole passes like the worker; returns (deleted, scanned, batches).
    fn expire(m: &mut Model, now: u64, max: usize) -> (usize, u64, usize) {
        let mut walk = Walk::new();
        let mut batch = KeyBatch::with_capacity(max);
        let (mut deleted, mut scanned, mut batches) = (0, 0, 0);
        while !walk.is_done() {
            let Ok(s) = walk.collect(m, now, max, &mut batch);
            scanned += s;
            assert!(batch.len() <= max);
            if !batch.is_empty() {
                deleted += m.delete(&batch);
                batches += 1;
            }
        }
        (deleted, scanned, batches)
    }

    #[test]
    fn deletes_expired_fronts_and_reads_one_live_tuple_per_range() {
        let mut m = Model::default();
        // Mixed TTLs per node; keys are in expiry order whatever the
        // insertion order.
        for id in 0..50 {
            m.insert("a", 1000 + id * 10, id); // 1000..1490
            m.insert("b", 5000 + id, 100 + id); // all live at now=2000
            m.insert("c", 10 + id, 200 + id); // all expired
        }
        m.insert("ab", 1999, 1);
        m.insert("ab", 2000, 2);
        let before = m.rows.len();
        let (deleted, scanned, _) = expire(&mut m, 2000, 7);
        // a: all 50 (< 2000); ab: 1; c: 50.
        assert_eq!(deleted, 101);
        assert_eq!(m.rows.len(), before - 101);
        assert!(m.rows.keys().all(|k| k.1 >= 2000));
        // Read: every expired tuple once, plus the live fronts of ab and
        // b (a and c have none left).
        assert_eq!(scanned, 101 + 2);
        assert_eq!(m.reads, scanned);
    }

    #[test]
    fn batches_are_bounded_and_cover_everything() {
        for max in [1, 2, 3, 100, 1000] {
            let mut m = Model::default();
            for n in 0..5 {
                for id in 0..37 {
                    m.insert(&format!("n{n}"), id, id);
                }
            }
            let (deleted, _, batches) = expire(&mut m, 30, max);
            assert_eq!(deleted, 5 * 30);
            assert_eq!(batches, 150_usize.div_ceil(max), "max {max}");
            assert_eq!(m.rows.len(), 5 * 7);
        }
    }

    #[test]
    fn stops_after_max_reads_even_with_nothing_expired() {
        let mut m = Model::default();
        for n in 0..25 {
            m.insert(&format!("n{n:02}"), 10_000, 1);
        }
        let mut walk = Walk::new();
        let mut batch = KeyBatch::default();
        let mut calls = 0;
        let mut scanned = 0;
        while !walk.is_done() {
            let Ok(s) = walk.collect(&mut m, 5, 10, &mut batch);
            assert!(s <= 10);
            assert!(batch.is_empty());
            scanned += s;
            calls += 1;
        }
        assert_eq!(scanned, 25);
        assert_eq!(calls, 3);
    }

    #[test]
    fn empty_log_is_one_seek() {
        let mut m = Model::default();
        assert_eq!(expire(&mut m, 10, 100), (0, 0, 0));
        assert_eq!(m.seeks, 1);
        let Ok(oldest) = oldest_front(&mut m, 10);
        assert_eq!(oldest, None);
    }

    #[test]
    fn concurrent_deletes_by_another_master_are_harmless() {
        // Another master deletes the same keys between our batches: the
        // walk repositions by key and the deletes it still issues find
        // nothing, without error.
        let mut m = Model::default();
        for id in 0..20 {
            m.insert("x", id, id);
        }
        let mut walk = Walk::new();
        let mut batch = KeyBatch::default();
        let Ok(_) = walk.collect(&mut m, 100, 5, &mut batch);
        m.rows.retain(|k, _| k.1 >= 12); // the other master was faster
        assert_eq!(m.delete(&batch), 0);
        let mut total = 0;
        while !walk.is_done() {
            let Ok(_) = walk.collect(&mut m, 100, 5, &mut batch);
            total += m.delete(&batch);
        }
        assert_eq!(total, 8);
        assert!(m.rows.is_empty());
    }

    #[test]
    fn oldest_front_is_the_minimum_over_ranges() {
        let mut m = Model::default();
        m.insert("a", 500, 1);
        m.insert("a", 100, 2);
        m.insert("b", 50, 1);
        m.insert("b", 70, 1);
        m.insert("c", 900, 1);
        let Ok(oldest) = oldest_front(&mut m, 10);
        assert_eq!(oldest, Some(50));
        assert_eq!(m.reads, 3, "one read per range");
        let Ok(limited) = oldest_front(&mut m, 1);
        assert_eq!(limited, Some(100));
    }
}
