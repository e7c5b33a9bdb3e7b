//! Trust and failure (issue 9): what a node accepts from its cluster and
//! its store. Each test drives real `Node`s with datagrams built by the
//! wire crate, on a virtual clock; no I/O.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{ModeRules, Node, NodeParams, RecordRefusal, Refused, StateLimits};
use shoal_wire::{Code, DatagramWriter, DecodeError, Op, Record};

const CLUSTER: u32 = 9;
/// 2026-01-01T00:00:00Z, the nodes' wall clock at `t0`.
const WALL: u64 = 1_767_225_600_000_000;

fn params(id: u32) -> NodeParams {
    NodeParams {
        id,
        cluster: CLUSTER,
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
        store: None,
        relay_capacity: 64,
        hash_seed: u128::from(id),
    }
}

fn node(id: u32, t0: Instant) -> Node {
    Node::new(params(id), t0, WALL, WALL)
}

/// A datagram from `sender` with sequence `seq`, carrying `records`.
fn datagram(sender: u32, incarnation: u64, seq: u64, records: &[Record]) -> Vec<u8> {
    let mut w = DatagramWriter::new(CLUSTER, sender, incarnation, 1400, None);
    w.set_next_seq(seq);
    for r in records {
        assert!(w.push(r));
    }
    w.finish().expect("records").to_vec()
}

fn load(origin: u32, resource: u64, value: u64) -> Record {
    Record {
        timing_us: WALL,
        origin,
        op: Op::SEND,
        ..Record::new(Code::LOAD, [resource, value, 1000, 0])
    }
}

// ---------------------------------------------------------------------------
// Item 7: counters never go down; late datagrams are counted on their own.

#[test]
fn lost_never_decreases_and_a_late_datagram_does_not_cancel_a_real_loss() {
    let t0 = Instant::now();
    let mut n = node(1, t0);
    let lost = |n: &Node| n.peers().next().map_or(0, |(_, p)| p.lost());
    let send = |n: &mut Node, seq: u64| {
        n.receive(t0, &datagram(2, WALL, seq, &[load(2, 1, seq)]))
            .expect("accepted");
    };
    send(&mut n, 10);
    // Older than the first datagram seen: late, and no gap counted it.
    send(&mut n, 9);
    // 11 is skipped and never comes.
    send(&mut n, 12);
    let mut seen = Vec::new();
    for seq in 13..=200 {
        send(&mut n, seq);
        seen.push(lost(&n));
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "shoal_peer_lost_total went down: {seen:?}"
    );
    // A gap, then the datagram it skipped: late, and nothing goes down.
    send(&mut n, 202);
    let before = lost(&n);
    send(&mut n, 201);
    assert!(lost(&n) >= before, "a late datagram took a loss back");
    let (_, p) = n.peers().next().expect("peer 2");
    assert_eq!(p.late, 2, "late datagrams are counted as late");
    assert_eq!(p.lost(), 1, "datagram 11 is lost, whatever came late");
}

fn mode(origin: u32, resource: u64, level: u64, ttl_ms: u32) -> Record {
    Record {
        timing_us: WALL,
        origin,
        ttl_ms,
        op: Op::SEND,
        ..Record::new(Code::MODE, [resource, level, 0, 0])
    }
}

fn mark(origin: u32, key: u64, mark: u64, ttl_ms: u32) -> Record {
    Record {
        timing_us: WALL,
        origin,
        ttl_ms,
        op: Op::SEND,
        ..Record::new(Code::SESSION_MARK, [key, mark, 0, 0])
    }
}

fn refused(n: &Node, reason: &str) -> u64 {
    let i = RecordRefusal::LABELS
        .iter()
        .position(|l| *l == reason)
        .expect("a reason");
    n.counters().records_refused[i]
}

// ---------------------------------------------------------------------------
// Item 1: a record's origin is its datagram's sender.

#[test]
fn a_sender_cannot_speak_for_another_node() {
    let t0 = Instant::now();
    let mut n2 = node(2, t0);
    // Node 1's real gauge and claim.
    n2.receive(
        t0,
        &datagram(1, WALL, 1, &[load(1, 5, 4_000), mode(1, 5, 2, 60_000)]),
    )
    .expect("node 1");
    assert_eq!(n2.load(t0, 5).total, 4_000);
    // Sender 77 forges node 1's gauge and withdraws node 1's claim, next
    // to one honest record of its own.
    let forged = datagram(
        77,
        WALL,
        1,
        &[load(1, 5, 12_499), mode(1, 5, 0, 0), mark(77, 9, 2, 60_000)],
    );
    assert_eq!(n2.receive(t0, &forged), Ok(1), "only its own record");
    assert_eq!(n2.load(t0, 5).total, 4_000, "node 1's gauge replaced");
    let m = n2.mode(t0, 5);
    assert_eq!((m.level, m.origin), (2, 1), "node 1's claim withdrawn");
    assert_eq!(n2.mark(t0, 9).mark, 2, "the sender's own record is used");
    assert_eq!(refused(&n2, "origin"), 2);
}

#[test]
fn relayed_modes_are_taken_only_in_the_forwarders_form() {
    let t0 = Instant::now();
    let mut n2 = node(2, t0);
    let remote = |claimant_cluster: u64, seq: u64| Record {
        timing_us: WALL,
        origin: 3,
        ttl_ms: 60_000,
        op: Op::SEND,
        ..Record::new(Code::REMOTE_MODE, [5, 2, claimant_cluster << 32 | 4, seq])
    };
    // The forwarder (node 3) relays a claim of node 4 of cluster 1.
    assert_eq!(
        n2.receive(t0, &datagram(3, WALL, 1, &[remote(1, 1)])),
        Ok(1)
    );
    assert_eq!(n2.mode(t0, 5).origin, 1 << 32 | 4);
    // A relayed claim in the name of this very cluster is not a relay.
    assert_eq!(
        n2.receive(t0, &datagram(3, WALL, 2, &[remote(u64::from(CLUSTER), 2)])),
        Ok(0)
    );
    assert_eq!(refused(&n2, "relay_form"), 1);
    // Nor is one whose origin is not the node that multicast it.
    let mut other = remote(1, 3);
    other.origin = 4;
    assert_eq!(n2.receive(t0, &datagram(3, WALL, 3, &[other])), Ok(0));
    assert_eq!(refused(&n2, "origin"), 1);
    // The forwarder itself does not apply what its peers would refuse.
    let mut fwd = node(3, t0);
    let own_cluster = Record {
        timing_us: 0,
        ..remote(u64::from(CLUSTER), 9)
    };
    assert_eq!(
        fwd.inject(t0, own_cluster),
        Err(shoal_core::LocalError::BadRecord)
    );
    assert_eq!(fwd.mode(t0, 5).level, 0);
    assert_eq!(
        fwd.inject(
            t0,
            Record {
                timing_us: 0,
                ..remote(1, 9)
            }
        ),
        Ok(())
    );
    assert_eq!(fwd.mode(t0, 5).origin, 1 << 32 | 4);
}

// ---------------------------------------------------------------------------
// Item 2: a record lives for its TTL from its own timing, not from arrival.

#[test]
fn old_records_do_not_come_back() {
    let t0 = Instant::now();
    let mut n = node(2, t0);
    let hour_ago = |mut r: Record| {
        r.timing_us = WALL - 3_600_000_000;
        r
    };
    // A mark made an hour ago with a 3 s TTL is refused, and so is one
    // from 10 s in the future.
    let mut future = mark(1, 2, 2, 3_000);
    future.timing_us = WALL + 10_000_000;
    let d = datagram(1, WALL, 1, &[hour_ago(mark(1, 1, 2, 3_000)), future]);
    assert_eq!(n.receive(t0, &d), Ok(0));
    assert_eq!(n.mark(t0, 1).mark, 0);
    assert_eq!(n.mark(t0, 2).mark, 0);
    assert_eq!((refused(&n, "too_old"), refused(&n, "future")), (1, 1));

    // A captured "mark 4242, TTL 3 s" replayed 2.7 s later to a receiver
    // that restarted (its replay window forgotten): 0.3 s left plus the
    // 0.5 s allowance, not a fresh 3 s.
    let captured = datagram(1, WALL, 7, &[mark(1, 4242, 2, 3_000)]);
    let later = t0 + Duration::from_millis(2_700);
    let mut restarted = Node::new(params(3), later, WALL + 2_700_000, WALL + 2_700_000);
    assert_eq!(restarted.receive(later, &captured), Ok(1));
    let left = restarted.mark(later, 4242).remaining;
    assert_eq!(left, Duration::from_millis(800), "TTL - age + allowance");
    // 4 s after it was made it is refused outright.
    let much_later = t0 + Duration::from_secs(4);
    let mut again = Node::new(params(4), much_later, WALL + 4_000_000, WALL + 4_000_000);
    assert_eq!(again.receive(much_later, &captured), Ok(0));
    assert_eq!(again.mark(much_later, 4242).mark, 0);
    assert_eq!(refused(&again, "too_old"), 1);

    // Within the allowance a record keeps its whole TTL.
    let mut fresh = mark(1, 5, 1, 3_000);
    fresh.timing_us = WALL - 400_000;
    assert_eq!(n.receive(t0, &datagram(1, WALL, 2, &[fresh])), Ok(1));
    assert_eq!(n.mark(t0, 5).remaining, Duration::from_secs(3));
}

#[test]
fn a_filter_cannot_stamp_a_record_out_of_every_receivers_bounds() {
    let t0 = Instant::now();
    let mut n = node(1, t0);
    let mut old = mark(0, 1, 2, 3_000);
    old.timing_us = WALL - 3_600_000_000;
    let query = Record::new(Code::QUERY_SESSION, [1, 0, 0, 0]);
    let mut req = old.to_bytes().to_vec();
    req.extend_from_slice(&query.to_bytes());
    let mut reply = Vec::new();
    n.handle_local(t0, &req, &mut reply);
    let first = Record::decode_slice(&reply[..64]).expect("reply");
    assert_eq!(first.code, Code::REPLY_ERROR);
    assert_eq!(first.fields[0], shoal_core::LocalError::BadRecord as u64);
    assert_eq!(n.mark(t0, 1).mark, 0, "not applied");
    let mut out = Vec::new();
    n.flush();
    assert!(!n.poll_transmit(&mut out), "not sent");
}

// ---------------------------------------------------------------------------
// Item 4: replay follows the live rule (the last record applied wins).

fn store_params(id: u32) -> NodeParams {
    NodeParams {
        store: Some(shoal_core::BacklogLimits {
            capacity: 100,
            batch: 100,
        }),
        ..params(id)
    }
}

#[test]
fn replay_gives_the_live_outcome_not_the_timing_order() {
    let t0 = Instant::now();
    let mut first = Node::new(store_params(1), t0, WALL, WALL);
    let mut peer = node(2, t0);
    let local = |n: &mut Node, at: Instant, mark: u64, timing_us: u64| {
        let r = Record {
            timing_us,
            ttl_ms: 60_000,
            op: Op::SEND_SAVE,
            ..Record::new(Code::SESSION_MARK, [42, mark, 0, 0])
        };
        let mut reply = Vec::new();
        n.handle_local(at, &r.to_bytes(), &mut reply);
        assert!(reply.is_empty());
    };
    // Legitimate, then suspicious with an older filter-supplied timing.
    local(&mut first, t0, 1, WALL);
    let t1 = t0 + Duration::from_millis(3);
    local(&mut first, t1, 2, WALL - 1_000);
    first.flush();
    let mut buf = Vec::new();
    while first.poll_transmit(&mut buf) {
        peer.receive(t1, &buf).expect("accepted");
    }
    assert_eq!(first.mark(t1, 42).mark, 2, "live: the last one wins");
    assert_eq!(peer.mark(t1, 42).mark, 2);

    let mut rows = Vec::new();
    let mut all = Vec::new();
    while let Some(b) = first.take_save_batch(&mut rows) {
        all.extend_from_slice(&rows);
        first.save_acked(b);
    }
    // kill -9, restart, replay (the store returns rows in key order).
    all.reverse();
    let t2 = t0 + Duration::from_secs(1);
    let mut again = Node::new(store_params(1), t2, WALL + 1_000_000, WALL + 1_000_000);
    assert_eq!(again.replay(t2, "n1", all.iter().map(|r| ("n1", *r))), 2);
    assert_eq!(again.mark(t2, 42).mark, peer.mark(t2, 42).mark);
}

// ---------------------------------------------------------------------------
// Item 5: a datagram with this node's id is checked like any other first.

#[test]
fn junk_with_this_nodes_id_is_counted_as_junk() {
    let t0 = Instant::now();
    let mut n = node(1, t0);
    let bad_crc = |n: &Node| {
        n.counters().rejected[DecodeError::LABELS
            .iter()
            .position(|l| *l == "bad_crc")
            .expect("label")]
    };
    // Junk whose bytes 12..16 say 1.
    let mut junk = datagram(1, WALL, 1, &[load(1, 1, 1)]);
    junk[50] ^= 0xff;
    assert!(matches!(n.receive(t0, &junk), Err(Refused::Decode(_))));
    assert_eq!(bad_crc(&n), 1);
    assert_eq!(n.counters().own_looped, 0);
    // A node with the same id in another cluster: wrong cluster.
    let mut w = DatagramWriter::new(CLUSTER + 1, 1, WALL, 1400, None);
    w.push(&load(1, 1, 1));
    let other = w.finish().expect("one").to_vec();
    assert!(matches!(
        n.receive(t0, &other),
        Err(Refused::Decode(DecodeError::WrongCluster { .. }))
    ));
    assert_eq!(n.counters().own_looped, 0);
    // Its own datagram, looped back: counted as such, nothing applied.
    n.handle_local(t0, &load(0, 3, 10).to_bytes(), &mut Vec::new());
    n.flush();
    let mut own = Vec::new();
    assert!(n.poll_transmit(&mut own));
    assert_eq!(n.receive(t0, &own), Ok(0));
    assert_eq!(n.counters().own_looped, 1);
    // A second node of this cluster configured with the same id.
    let twin = datagram(1, WALL + 5, 1, &[load(1, 1, 1)]);
    assert!(matches!(n.receive(t0, &twin), Err(Refused::OwnId { .. })));
    assert_eq!(n.counters().own_id_conflict, 1);
}

// ---------------------------------------------------------------------------
// Item 6: two claims at one level: every node names the same winner.

#[test]
fn every_node_names_the_same_winner() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_millis(300);
    let claim2 = datagram(2, WALL, 1, &[mode(2, 5, 2, 3_000)]);
    let mut claim3_rec = mode(3, 5, 2, 3_000);
    claim3_rec.timing_us = WALL + 300_000;
    let claim3 = datagram(3, WALL, 1, &[claim3_rec]);
    // Node 1 hears node 2 first, node 4 hears node 3 first.
    let mut n1 = node(1, t0);
    n1.receive(t0, &claim2).expect("2");
    n1.receive(later, &claim3).expect("3");
    let mut n4 = node(4, t0);
    n4.receive(t0, &claim3).expect("3");
    n4.receive(later, &claim2).expect("2");
    let at = later + Duration::from_millis(10);
    assert_eq!(n1.mode(at, 5).level, 2);
    assert_eq!(n1.mode(at, 5).origin, n4.mode(at, 5).origin);
    assert_eq!(n1.mode(at, 5).origin, 2, "the lowest origin");
}

// ---------------------------------------------------------------------------
// docs/wire.md section 7.6: what a receiver does with the documented bytes.

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire.md");
/// `T` of section 7.6.
const T: u64 = 1_767_225_600_000_000;

fn doc_vector(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(DOC_PATH).expect("docs/wire.md");
    let mut v = shoal_wire::hex_vectors(&text).expect("vectors");
    v.remove(name)
        .unwrap_or_else(|| panic!("wire.md lacks {name}"))
}

/// Node `id` of cluster 42 (the vectors' cluster) whose clock reads `wall`.
fn doc_node(id: u32, t: Instant, wall: u64, store: bool) -> Node {
    let mut p = if store { store_params(id) } else { params(id) };
    p.cluster = 42;
    Node::new(p, t, wall, wall)
}

#[test]
fn documented_origin_and_relay_vectors() {
    let t = Instant::now();
    let mut n = doc_node(2, t, T + 1_000_000, false);
    assert_eq!(n.receive(t, &doc_vector("d-forged-origin")), Ok(1));
    assert_eq!(n.load(t, 0x0123_4567_89ab_cdef).total, 0, "forged gauge");
    let m = n.mark(t, 0xdead_beef_cafe_f00d);
    assert_eq!((m.mark, m.origin), (2, 77));
    assert_eq!(m.remaining, Duration::from_secs(60));
    assert_eq!(refused(&n, "origin"), 1);

    let mut n = doc_node(2, t, T + 2_000_000, false);
    assert_eq!(n.receive(t, &doc_vector("e-relayed")), Ok(1));
    let m = n.mode(t, 0x0123_4567_89ab_cdef);
    assert_eq!((m.level, m.origin), (2, 0x0000_0002_0000_0004));
    assert_eq!(m.remaining, Duration::from_secs(9));
    assert_eq!(refused(&n, "relay_form"), 1);
}

#[test]
fn documented_age_vector() {
    let f = doc_vector("f-aged");
    let t10 = T + 10_000_000;
    for (clock, expect) in [
        (t10 - 600_000, Err("future")),
        (t10 - 400_000, Ok(3_000)),
        (t10, Ok(3_000)),
        (t10 + 400_000, Ok(3_000)),
        (t10 + 2_700_000, Ok(800)),
        (t10 + 3_500_000, Err("too_old")),
    ] {
        let t = Instant::now();
        let mut n = doc_node(2, t, clock, false);
        let got = n.receive(t, &f).expect("accepted");
        match expect {
            Ok(ms) => {
                assert_eq!(got, 1, "clock {clock}");
                let m = n.mark(t, 4242);
                assert_eq!(m.mark, 2);
                assert_eq!(m.remaining, Duration::from_millis(ms), "clock {clock}");
            }
            Err(reason) => {
                assert_eq!(got, 0, "clock {clock}");
                assert_eq!(refused(&n, reason), 1, "clock {clock}");
            }
        }
    }
}

#[test]
fn documented_replay_order_vector() {
    let g = doc_vector("g-replay-order");
    let t0 = Instant::now();
    let mut first = doc_node(1, t0, T + 20_000_000, true);
    let mut peer = doc_node(2, t0, T + 20_000_000, false);
    // One record per local datagram, in order.
    for r in g.chunks(64) {
        let mut reply = Vec::new();
        first.handle_local(t0, r, &mut reply);
        assert!(reply.is_empty());
    }
    first.flush();
    let mut buf = Vec::new();
    while first.poll_transmit(&mut buf) {
        peer.receive(t0, &buf).expect("accepted");
    }
    assert_eq!(first.mark(t0, 42).mark, 2);
    assert_eq!(peer.mark(t0, 42).mark, 2);
    let mut rows = Vec::new();
    let mut all = Vec::new();
    while let Some(b) = first.take_save_batch(&mut rows) {
        all.extend_from_slice(&rows);
        first.save_acked(b);
    }
    all.reverse();
    let t1 = t0 + Duration::from_secs(1);
    let mut again = doc_node(1, t1, T + 21_000_000, true);
    assert_eq!(
        again.replay(t1, "c42-n1", all.iter().map(|r| ("c42-n1", *r))),
        2
    );
    assert_eq!(
        again.mark(t1, 42).mark,
        2,
        "replay says what the cluster says"
    );
}

#[test]
fn documented_own_id_examples() {
    let b = doc_vector("b-unsigned");
    let t = Instant::now();
    let mut own = doc_node(3, t, T, false);
    assert_eq!(own.receive(t, &b), Ok(0));
    assert_eq!(own.counters().own_looped, 1);
    let mut p = params(3);
    p.cluster = 42;
    let mut twin = Node::new(p, t, T, T + 1);
    assert!(matches!(twin.receive(t, &b), Err(Refused::OwnId { .. })));
    assert_eq!(twin.counters().own_id_conflict, 1);
    let mut flipped = b.clone();
    flipped[64] ^= 0x01;
    assert!(matches!(
        own.receive(t, &flipped),
        Err(Refused::Decode(DecodeError::BadCrc { .. }))
    ));
    let mut p = params(3);
    p.cluster = 43;
    let mut other = Node::new(p, t, T, T);
    assert!(matches!(
        other.receive(t, &b),
        Err(Refused::Decode(DecodeError::WrongCluster { .. }))
    ));
    for n in [&own, &twin, &other] {
        assert_eq!(n.state().counts(), (0, 0, 0), "nothing applied");
    }
    assert_eq!(own.counters().own_looped, 1);
}
