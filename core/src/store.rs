//! The save path's plain logic: the bounded backlog of records waiting to
//! be persisted in Tarantool, cut into batches, tracked while in flight,
//! and put back in front when a batch fails. No I/O: the storage driver
//! (`storage`) takes batches and reports their outcome.
//!
//! Policy, when the backlog is full:
//! - a load record (a gauge, stale within seconds) is dropped and counted;
//! - a save or send+save record evicts the oldest queued load record if
//!   there is one; otherwise it is refused, counted, and the filter is told
//!   (`LocalError::StoreFull`). A record taken into the backlog leaves it
//!   only when Tarantool has acknowledged it.

use std::collections::{BTreeMap, VecDeque};

use shoal_wire::{Code, Record};

/// One tuple of the `shoal_log` space, less the node name (the batch
/// carries it once): `expires_us, id, timing_us, code, op, origin, f0..f3`.
pub type Row = [u64; 10];

/// Limits of the backlog.
#[derive(Debug, Clone, Copy)]
pub struct BacklogLimits {
    /// Records queued or in flight, at most.
    pub capacity: usize,
    /// Records per batch (one stored-procedure call, one transaction).
    pub batch: usize,
}

/// A record as stored, built by the node when it takes a save.
pub fn to_row(r: &Record, id: u64, expires_us: u64) -> Row {
    [
        expires_us,
        id,
        r.timing_us,
        r.code.0 as u64,
        r.op.bits() as u64,
        r.origin as u64,
        r.fields[0],
        r.fields[1],
        r.fields[2],
        r.fields[3],
    ]
}

/// The record a stored row was made from (`seq` and `ttl_ms` are not
/// stored); `None` when the row does not hold a valid record.
pub fn from_row(row: &Row) -> Option<Record> {
    Some(Record {
        timing_us: row[2],
        seq: 0,
        origin: u32::try_from(row[5]).ok()?,
        ttl_ms: 0,
        code: Code(u16::try_from(row[3]).ok()?),
        op: shoal_wire::Op::from_bits(u8::try_from(row[4]).ok()?).ok()?,
        fields: [row[6], row[7], row[8], row[9]],
    })
}

/// A batch taken for persisting; give its id back through
/// [`Backlog::ack`] or [`Backlog::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(u64);

/// Why a record was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// A load record did not fit; it is gone (counted).
    DroppedLoad,
    /// A save record did not fit and nothing could make room (counted).
    Refused,
}

/// Counters an operator scrapes (`shoal_store_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BacklogCounters {
    pub taken: u64,
    pub saved: u64,
    pub batches_saved: u64,
    pub batches_failed: u64,
    /// Load records dropped on arrival or evicted to make room.
    pub dropped_load: u64,
    pub refused: u64,
}

/// The backlog. Every operation is O(1) per row it moves: a full backlog
/// refuses a save, or evicts its oldest queued load row, without looking
/// at the other rows (this runs under the node's lock, once per save,
/// exactly while the store is down and the backlog is full).
#[derive(Debug)]
pub struct Backlog {
    limits: BacklogLimits,
    /// Queued rows in order; `None` is a load row evicted to make room,
    /// skipped when batches are cut. Each slot has a running number:
    /// `base` for the front, `base + i` for slot `i`.
    queue: VecDeque<Option<Row>>,
    base: u64,
    /// Evicted slots still in `queue` (at most `capacity`, since each was
    /// a live row that a newer one replaced).
    holes: usize,
    /// Running numbers of the load rows in `queue`, oldest first: the ones
    /// a save may evict.
    loads: VecDeque<u64>,
    /// Ordered by id: no hasher, and the same order in every run.
    in_flight: BTreeMap<BatchId, Vec<Row>>,
    in_flight_rows: usize,
    next_batch: u64,
    counters: BacklogCounters,
}

fn is_load(row: &Row) -> bool {
    row[3] == Code::LOAD.0 as u64
}

impl Backlog {
    pub fn new(limits: BacklogLimits) -> Backlog {
        Backlog {
            limits: BacklogLimits {
                capacity: limits.capacity.max(1),
                batch: limits.batch.max(1),
            },
            queue: VecDeque::new(),
            // Far from 0 so that rows put back in front never underflow.
            base: u64::MAX / 2,
            holes: 0,
            loads: VecDeque::new(),
            in_flight: BTreeMap::new(),
            in_flight_rows: 0,
            next_batch: 1,
            counters: BacklogCounters::default(),
        }
    }

    /// Records queued or in flight.
    pub fn len(&self) -> usize {
        self.queued() + self.in_flight_rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most records it holds (queued and in flight) before it drops
    /// load records and refuses saves.
    pub fn capacity(&self) -> usize {
        self.limits.capacity
    }

    /// Records waiting for a batch (not in flight).
    pub fn queued(&self) -> usize {
        self.queue.len() - self.holes
    }

    pub fn batches_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn counters(&self) -> BacklogCounters {
        self.counters
    }

    /// Takes a record to persist, applying the full-backlog policy in
    /// constant time.
    pub fn offer(&mut self, row: Row) -> Offer {
        if self.len() >= self.limits.capacity {
            if is_load(&row) {
                self.counters.dropped_load += 1;
                return Offer::DroppedLoad;
            }
            let Some(oldest) = self.loads.pop_front() else {
                self.counters.refused += 1;
                return Offer::Refused;
            };
            let slot = (oldest - self.base) as usize;
            self.queue[slot] = None;
            self.holes += 1;
            self.counters.dropped_load += 1;
        }
        if is_load(&row) {
            self.loads.push_back(self.base + self.queue.len() as u64);
        }
        self.queue.push_back(Some(row));
        self.counters.taken += 1;
        Offer::Taken
    }

    /// Takes the front slot off the queue: its row, or `None` for a hole.
    fn pop_front(&mut self) -> Option<Option<Row>> {
        let slot = self.queue.pop_front()?;
        if slot.is_none() {
            self.holes -= 1;
        } else if self.loads.front() == Some(&self.base) {
            // A load row going in flight can no longer be evicted.
            self.loads.pop_front();
        }
        self.base += 1;
        Some(slot)
    }

    /// Cuts the next batch, oldest records first, and holds it in flight.
    /// `buf` is cleared and filled (reuse it across calls).
    pub fn next_batch(&mut self, buf: &mut Vec<Row>) -> Option<BatchId> {
        if self.queued() == 0 {
            while self.pop_front().is_some() {}
            return None;
        }
        buf.clear();
        while buf.len() < self.limits.batch {
            match self.pop_front() {
                Some(Some(row)) => buf.push(row),
                Some(None) => {}
                None => break,
            }
        }
        let n = buf.len();
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        self.in_flight.insert(id, buf.clone());
        self.in_flight_rows += n;
        Some(id)
    }

    /// Tarantool committed the batch: its records leave the backlog.
    /// Returns how many; 0 for an unknown (already settled) id.
    pub fn ack(&mut self, id: BatchId) -> usize {
        match self.in_flight.remove(&id) {
            Some(rows) => {
                self.in_flight_rows -= rows.len();
                self.counters.saved += rows.len() as u64;
                self.counters.batches_saved += 1;
                rows.len()
            }
            None => 0,
        }
    }

    /// The batch failed, or its outcome is unknown: its records go back in
    /// front, in their order, to be retried (saving is idempotent: the
    /// same tuples under the same keys).
    pub fn fail(&mut self, id: BatchId) {
        if let Some(rows) = self.in_flight.remove(&id) {
            self.in_flight_rows -= rows.len();
            self.counters.batches_failed += 1;
            for row in rows.into_iter().rev() {
                self.base -= 1;
                if is_load(&row) {
                    self.loads.push_front(self.base);
                }
                self.queue.push_front(Some(row));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_wire::Op;

    fn rec(code: Code, key: u64) -> Record {
        Record {
            op: Op::SEND_SAVE,
            ..Record::new(code, [key, 1, 0, 0])
        }
    }

    fn mark(key: u64) -> Row {
        to_row(&rec(Code::SESSION_MARK, key), key, 1_000 + key)
    }

    fn load(key: u64) -> Row {
        to_row(&rec(Code::LOAD, key), key, 1_000 + key)
    }

    fn backlog(capacity: usize, batch: usize) -> Backlog {
        Backlog::new(BacklogLimits { capacity, batch })
    }

    #[test]
    fn row_layout_matches_the_log_space() {
        let r = Record {
            timing_us: 5,
            seq: 9,
            origin: 3,
            ttl_ms: 1000,
            code: Code::MODE,
            op: Op::SEND_SAVE,
            fields: [10, 2, 30, 40],
        };
        assert_eq!(
            to_row(&r, 77, 1_005),
            [1_005, 77, 5, 2, 3, 3, 10, 2, 30, 40]
        );
    }

    #[test]
    fn batches_in_order_and_acks_remove() {
        let mut b = backlog(100, 3);
        for k in 0..7 {
            assert_eq!(b.offer(mark(k)), Offer::Taken);
        }
        let mut buf = Vec::new();
        let first = b.next_batch(&mut buf).expect("batch");
        assert_eq!(buf.iter().map(|r| r[1]).collect::<Vec<_>>(), [0, 1, 2]);
        let second = b.next_batch(&mut buf).expect("batch");
        assert_eq!(buf.iter().map(|r| r[1]).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!((b.len(), b.queued(), b.batches_in_flight()), (7, 1, 2));
        assert_eq!(b.ack(second), 3);
        assert_eq!(b.ack(second), 0, "settled once");
        assert_eq!(b.ack(first), 3);
        let last = b.next_batch(&mut buf).expect("batch");
        assert_eq!(buf.len(), 1);
        assert_eq!(b.ack(last), 1);
        assert!(b.is_empty());
        assert!(b.next_batch(&mut buf).is_none());
        let c = b.counters();
        assert_eq!((c.taken, c.saved, c.batches_saved), (7, 7, 3));
    }

    #[test]
    fn failed_batches_go_back_in_front_in_order() {
        let mut b = backlog(100, 2);
        for k in 0..5 {
            b.offer(mark(k));
        }
        let mut buf = Vec::new();
        let a = b.next_batch(&mut buf).expect("a");
        let c = b.next_batch(&mut buf).expect("c");
        b.fail(c);
        b.fail(a);
        b.fail(a); // twice is harmless
        let mut order = Vec::new();
        while let Some(id) = b.next_batch(&mut buf) {
            order.extend(buf.iter().map(|r| r[1]));
            b.ack(id);
        }
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert_eq!(b.counters().batches_failed, 2);
        assert_eq!(b.counters().saved, 5);
    }

    #[test]
    fn full_backlog_drops_load_and_never_loses_saves() {
        let mut b = backlog(4, 10);
        assert_eq!(b.offer(load(1)), Offer::Taken);
        assert_eq!(b.offer(mark(2)), Offer::Taken);
        assert_eq!(b.offer(load(3)), Offer::Taken);
        assert_eq!(b.offer(mark(4)), Offer::Taken);
        // Full: a load record is dropped on arrival...
        assert_eq!(b.offer(load(5)), Offer::DroppedLoad);
        // ...a save evicts the oldest queued load record...
        assert_eq!(b.offer(mark(6)), Offer::Taken);
        assert_eq!(b.offer(mark(7)), Offer::Taken);
        // ...and is refused once only saves are left.
        assert_eq!(b.offer(mark(8)), Offer::Refused);
        let mut buf = Vec::new();
        b.next_batch(&mut buf).expect("batch");
        assert_eq!(buf.iter().map(|r| r[1]).collect::<Vec<_>>(), [2, 4, 6, 7]);
        let c = b.counters();
        assert_eq!((c.dropped_load, c.refused, c.taken), (3, 1, 6));
    }

    #[test]
    fn in_flight_records_count_against_capacity() {
        let mut b = backlog(2, 2);
        b.offer(mark(1));
        b.offer(mark(2));
        let mut buf = Vec::new();
        let id = b.next_batch(&mut buf).expect("batch");
        assert_eq!(b.offer(mark(3)), Offer::Refused);
        b.fail(id);
        assert_eq!(b.offer(mark(3)), Offer::Refused);
        let id = b.next_batch(&mut buf).expect("batch");
        b.ack(id);
        assert_eq!(b.offer(mark(3)), Offer::Taken);
    }

    #[test]
    fn evictions_follow_load_rows_through_failed_batches_and_holes_stay_bounded() {
        let mut b = backlog(6, 2);
        // load 1, mark 2, load 3, mark 4, load 5, load 6
        for (k, is_load) in [
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (5, true),
            (6, true),
        ] {
            let row = if is_load { load(k) } else { mark(k) };
            assert_eq!(b.offer(row), Offer::Taken);
        }
        let mut buf = Vec::new();
        let first = b.next_batch(&mut buf).expect("batch"); // load 1, mark 2
                                                            // Full (4 queued + 2 in flight): saves evict the oldest queued load.
        assert_eq!(b.offer(mark(7)), Offer::Taken); // evicts 3
        assert_eq!(b.offer(mark(8)), Offer::Taken); // evicts 5
                                                    // The failed batch comes back in front: its load row is evictable.
        b.fail(first);
        assert_eq!(b.offer(mark(9)), Offer::Taken); // evicts 1
        assert_eq!(b.offer(mark(10)), Offer::Taken); // evicts 6
        assert_eq!(b.offer(mark(11)), Offer::Refused);
        assert_eq!(b.offer(load(12)), Offer::DroppedLoad);
        assert_eq!((b.len(), b.queued()), (6, 6));
        let mut order = Vec::new();
        while let Some(id) = b.next_batch(&mut buf) {
            order.extend(buf.iter().map(|r| r[1]));
            b.ack(id);
        }
        assert_eq!(order, [2, 4, 7, 8, 9, 10]);
        assert!(b.queue.is_empty() && b.holes == 0 && b.loads.is_empty());
        let c = b.counters();
        assert_eq!((c.dropped_load, c.refused, c.saved), (5, 1, 6));

        // Evicting over and over never keeps more holes than capacity.
        let mut b = backlog(100, 10);
        for k in 0..100 {
            b.offer(load(k));
        }
        for k in 100..1_000 {
            let _ = b.offer(mark(k));
            assert!(b.holes <= 100 && b.queue.len() <= 200);
        }
        assert_eq!(b.counters().refused, 800);
    }
}
