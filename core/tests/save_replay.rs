//! The save path and replay as plain logic: a node with a store configured
//! turns save records into stored rows, batches them, keeps them until
//! acknowledged, tells the filter when the backlog is full, and a new node
//! replaying those rows answers the filter as the first one did.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{
    from_row, BacklogLimits, LocalError, ModeRules, Node, NodeParams, Row, StateLimits,
};
use shoal_wire::{Code, Op, Record, RECORD_LEN};

const WALL: u64 = 1_767_225_600_000_000;

fn params(id: u32, capacity: usize) -> NodeParams {
    NodeParams {
        id,
        cluster: 1,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: None,
        limits: StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 1000,
            session_capacity: 1000,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        },
        max_peers: 16,
        modes: ModeRules::default(),
        store: Some(BacklogLimits { capacity, batch: 3 }),
        relay_capacity: shoal_core::DEFAULT_RELAY_CAPACITY,
        hash_seed: 7,
    }
}

fn rec(code: Code, op: Op, ttl_ms: u32, fields: [u64; 4]) -> Vec<u8> {
    Record {
        op,
        ttl_ms,
        ..Record::new(code, fields)
    }
    .to_bytes()
    .to_vec()
}

fn send(n: &mut Node, now: Instant, records: &[Vec<u8>]) -> Vec<Record> {
    let mut reply = Vec::new();
    n.handle_local(now, &records.concat(), &mut reply);
    reply
        .chunks_exact(RECORD_LEN)
        .map(|c| Record::decode_slice(c).expect("reply record"))
        .collect()
}

fn drain(n: &mut Node) -> Vec<Row> {
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while let Some(id) = n.take_save_batch(&mut buf) {
        all.extend_from_slice(&buf);
        n.save_acked(id);
    }
    all
}

#[test]
fn saves_become_rows_and_only_saves() {
    let t0 = Instant::now();
    let mut n = Node::new(params(1, 100), t0, WALL, WALL);
    let reply = send(
        &mut n,
        t0,
        &[
            rec(Code::SESSION_MARK, Op::SEND_SAVE, 60_000, [7, 2, 0, 0]),
            rec(Code::MODE, Op::SAVE, 0, [9, 3, 0, 0]),
            rec(Code::LOAD, Op::SEND, 0, [9, 100, 0, 0]),
            rec(Code::SESSION_MARK, Op::SEND, 60_000, [8, 1, 0, 0]),
        ],
    );
    assert!(reply.is_empty(), "no error: {reply:?}");
    let rows = drain(&mut n);
    assert_eq!(rows.len(), 2, "only the two save records");
    let mark = from_row(&rows[0]).expect("row");
    assert_eq!(
        (mark.code, mark.fields, mark.origin),
        (Code::SESSION_MARK, [7, 2, 0, 0], 1)
    );
    assert_eq!(rows[0][0], WALL + 60_000_000, "expires = now + ttl");
    assert_eq!(rows[1][0], WALL + 10_000_000, "ttl 0 takes the default");
    assert!(rows[1][1] > rows[0][1], "ids increase");
    assert!(n.backlog().expect("store").is_empty());
    assert_eq!(n.backlog().expect("store").counters().saved, 2);
}

#[test]
fn failed_batches_are_retried_and_a_full_backlog_is_reported() {
    let t0 = Instant::now();
    let mut n = Node::new(params(1, 4), t0, WALL, WALL);
    let marks: Vec<Vec<u8>> = (0..4)
        .map(|k| rec(Code::SESSION_MARK, Op::SEND_SAVE, 60_000, [k, 2, 0, 0]))
        .collect();
    assert!(send(&mut n, t0, &marks).is_empty());
    let mut buf = Vec::new();
    let id = n.take_save_batch(&mut buf).expect("batch");
    n.save_failed(id);

    // Full of saves: the fifth is applied and sent, but the filter hears
    // that it was not saved, with the index of the record.
    let mut over = rec(Code::SESSION_MARK, Op::SEND_SAVE, 60_000, [99, 2, 0, 0]);
    over[8] = 42; // seq, echoed in the error
    let reply = send(&mut n, t0, &[over]);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].code, Code::REPLY_ERROR);
    assert_eq!(reply[0].seq, 42);
    assert_eq!(reply[0].fields[..2], [LocalError::StoreFull as u64, 0]);
    assert_eq!(n.mark(t0, 99).mark, 2, "still applied locally");
    assert_eq!(
        n.counters().local_rejected[LocalError::StoreFull as usize - 1],
        1
    );

    // The failed batch comes back first; nothing was lost.
    let keys: Vec<u64> = drain(&mut n).iter().map(|r| r[6]).collect();
    assert_eq!(keys, [0, 1, 2, 3]);
    let c = n.backlog().expect("store").counters();
    assert_eq!((c.saved, c.refused, c.batches_failed), (4, 1, 1));
}

#[test]
fn replay_restores_the_context() {
    let t0 = Instant::now();
    let mut first = Node::new(params(1, 100), t0, WALL, WALL);
    send(
        &mut first,
        t0,
        &[
            rec(Code::SESSION_MARK, Op::SEND_SAVE, 60_000, [7, 2, 0, 0]),
            rec(Code::SESSION_MARK, Op::SEND_SAVE, 1_000, [8, 1, 0, 0]),
            rec(Code::MODE, Op::SEND_SAVE, 60_000, [9, 3, 0, 0]),
            rec(Code::MODE, Op::SEND_SAVE, 60_000, [10, 2, 0, 0]),
            rec(Code::LOAD, Op::SAVE, 60_000, [9, 500, 0, 0]),
        ],
    );
    // Later, the mode of resource 10 is withdrawn.
    let t1 = t0 + Duration::from_millis(5);
    send(
        &mut first,
        t1,
        &[rec(Code::MODE, Op::SEND_SAVE, 60_000, [10, 0, 0, 0])],
    );
    let mut rows = drain(&mut first);
    // The store hands rows back in key order, not in time order.
    rows.reverse();
    let max_id = rows.iter().map(|r| r[1]).max().expect("rows");

    // Restarted 2 s later: the 1 s mark and the load row are not applied.
    let t2 = t0 + Duration::from_secs(2);
    let mut again = Node::new(params(1, 100), t2, WALL + 2_000_000, WALL + 2_000_000);
    let applied = again.replay(t2, "n1", rows.iter().map(|r| ("n1", *r)));
    assert_eq!(applied, 4);
    assert_eq!(again.counters().replayed, 4);
    assert_eq!(again.counters().replay_skipped, 2);
    assert_eq!(again.mark(t2, 7).mark, 2);
    assert_eq!(again.mark(t2, 8).mark, 0, "expired");
    assert_eq!(again.mode(t2, 9).level, 3);
    assert_eq!(
        again.mode(t2, 10).level,
        0,
        "withdrawal replayed after the claim"
    );
    assert_eq!(first.mark(t2, 7).mark, again.mark(t2, 7).mark);
    let left = again.mark(t2, 7).remaining;
    assert!(
        left <= Duration::from_secs(58) && left > Duration::from_secs(57),
        "{left:?}"
    );

    // New rows never reuse a replayed id, even with the clock behind.
    let mut behind = Node::new(params(1, 100), t2, WALL - 1_000_000, WALL - 1_000_000);
    behind.replay(t2, "n1", rows.iter().map(|r| ("n1", *r)));
    send(
        &mut behind,
        t2,
        &[rec(Code::SESSION_MARK, Op::SAVE, 60_000, [1, 1, 0, 0])],
    );
    assert!(drain(&mut behind)[0][1] > max_id);
}
