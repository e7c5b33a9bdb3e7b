//! Block records through real `Node`s with no I/O: a block sent by one
//! node of a signed cluster is held by the others, saved and replayed by
//! a restarted node (an unblock replayed after it lifts it), refused in an
//! unsigned cluster unless allowed, and malformed ones never held.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::blocks::BlockRules;
use shoal_core::{BacklogLimits, LocalError, ModeRules, Node, NodeParams, Row, StateLimits};
use shoal_wire::{reason_to_field, Code, MacKey, MacKeys, Op, Prefix, Record, RECORD_LEN};

const WALL: u64 = 1_767_225_600_000_000;

fn params(id: u32, signed: bool) -> NodeParams {
    NodeParams {
        id,
        cluster: 1,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: signed.then(|| MacKeys {
            current: MacKey::derive(1, b"block test secret"),
            previous: None,
        }),
        limits: StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 1000,
            session_capacity: 1000,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        },
        max_peers: 16,
        modes: ModeRules::default(),
        store: Some(BacklogLimits {
            capacity: 100,
            batch: 10,
        }),
        relay_capacity: shoal_core::DEFAULT_RELAY_CAPACITY,
        hash_seed: 7,
    }
}

fn block(code: Code, prefix: &str, ttl_ms: u32, reason: &str) -> Record {
    let p: Prefix = prefix.parse().expect("prefix");
    let [f0, f1, f2] = p.to_fields(0);
    Record {
        op: Op::SEND_SAVE,
        ttl_ms,
        ..Record::new(code, [f0, f1, f2, reason_to_field(reason).expect("reason")])
    }
}

fn send_local(n: &mut Node, now: Instant, r: &Record) -> Vec<Record> {
    let mut reply = Vec::new();
    // A query alongside makes the node answer even when all is well.
    let q = Record::new(Code::QUERY_LOAD, [1, 0, 0, 0]).to_bytes();
    let mut req = r.to_bytes().to_vec();
    req.extend_from_slice(&q);
    n.handle_local(now, &req, &mut reply);
    reply
        .chunks_exact(RECORD_LEN)
        .map(|c| Record::decode_slice(c).expect("reply"))
        .filter(|r| r.code == Code::REPLY_ERROR)
        .collect()
}

fn deliver(from: &mut Node, to: &mut Node, now: Instant) {
    from.flush();
    let mut buf = Vec::new();
    while from.poll_transmit(&mut buf) {
        to.receive(now, &buf).expect("accepted");
    }
}

fn rows(n: &mut Node) -> Vec<Row> {
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while let Some(id) = n.take_save_batch(&mut buf) {
        all.extend_from_slice(&buf);
        n.save_acked(id);
    }
    all
}

fn held(n: &Node, now: Instant) -> Vec<(String, u64)> {
    let mut v: Vec<_> = n
        .blocks()
        .live(now)
        .map(|(p, b)| (p.to_string(), (b.expires - now).as_millis() as u64))
        .collect();
    v.sort();
    v
}

#[test]
fn block_crosses_the_cluster_and_survives_a_restart_then_unblock_replays_too() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    let mut b = Node::new(params(2, true), t0, WALL, WALL);
    let r = block(Code::BLOCK, "192.0.2.0/24", 60_000, "scan");
    assert!(send_local(&mut a, t0, &r).is_empty());
    deliver(&mut a, &mut b, t0);
    assert_eq!(held(&a, t0), [("192.0.2.0/24".to_string(), 60_000)]);
    assert_eq!(held(&b, t0), [("192.0.2.0/24".to_string(), 60_000)]);
    assert_eq!(
        b.blocks()
            .live(t0)
            .next()
            .map(|(_, x)| (x.origin, x.reason)),
        Some((1, reason_to_field("scan").expect("reason")))
    );

    // A restart 10 s later: the saved row brings the block back with what
    // is left of its TTL.
    let saved = rows(&mut a);
    assert_eq!(saved.len(), 1);
    let t1 = t0 + Duration::from_secs(10);
    let mut a2 = Node::new(params(1, true), t1, WALL + 10_000_000, WALL + 10_000_000);
    assert_eq!(a2.replay(t1, "n1", saved.iter().map(|r| ("n1", *r))), 1);
    assert_eq!(held(&a2, t1), [("192.0.2.0/24".to_string(), 50_000)]);

    // An unblock is saved after the block: replaying both lifts it.
    let u = block(Code::UNBLOCK, "192.0.2.0/24", 50_000, "");
    assert!(send_local(&mut a2, t1 + Duration::from_millis(1), &u).is_empty());
    deliver(&mut a2, &mut b, t1);
    assert!(held(&b, t1).is_empty(), "the unblock reached b");
    let mut all = saved.clone();
    all.extend(rows(&mut a2));
    let t2 = t1 + Duration::from_secs(1);
    let mut a3 = Node::new(params(1, true), t2, WALL + 11_000_000, WALL + 11_000_000);
    assert_eq!(
        a3.replay(t2, "n1", all.iter().map(|r| ("n1", *r))),
        2,
        "{all:?}"
    );
    assert!(held(&a3, t2).is_empty(), "replayed unblock lifts the block");
    assert_eq!(a3.blocks().counters.lifted, 1);
}

#[test]
fn unsigned_cluster_refuses_blocks_unless_allowed() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, false), t0, WALL, WALL);
    let mut b = Node::new(params(2, false), t0, WALL, WALL);
    let r = block(Code::BLOCK, "2001:db8::/32", 60_000, "x");
    let errs = send_local(&mut a, t0, &r);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].fields[0], LocalError::BlocksUnsigned as u64);
    assert!(held(&a, t0).is_empty());

    // Allowed on the sender only: the receiver still refuses it.
    a.set_block_rules(BlockRules {
        accept_unsigned: true,
        ..BlockRules::default()
    });
    assert!(send_local(&mut a, t0, &r).is_empty());
    deliver(&mut a, &mut b, t0);
    assert_eq!(held(&a, t0).len(), 1);
    assert!(held(&b, t0).is_empty());
    assert_eq!(b.blocks().counters.refused_unsigned, 1);
}

#[test]
fn malformed_blocks_are_refused() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    let mut bad = Vec::new();
    // No lifetime.
    bad.push(block(Code::BLOCK, "192.0.2.0/24", 0, ""));
    // Host bits below the prefix.
    let mut r = block(Code::BLOCK, "192.0.2.0/24", 1000, "");
    r.fields[1] |= 1;
    bad.push(r);
    // Reason not text.
    let mut r = block(Code::BLOCK, "192.0.2.0/24", 1000, "");
    r.fields[3] = 0x01;
    bad.push(r);
    // A cluster in f2 of a local BLOCK.
    let mut r = block(Code::BLOCK, "192.0.2.0/24", 1000, "");
    r.fields[2] |= 5 << 32;
    bad.push(r);
    for r in bad {
        let errs = send_local(&mut a, t0, &r);
        assert_eq!(errs.len(), 1, "{r:?}");
        assert_eq!(errs[0].fields[0], LocalError::BadRecord as u64);
    }
    assert!(held(&a, t0).is_empty());
}

#[test]
fn local_blocks_the_enforcer_would_refuse_are_refused_and_unblock_0_outlives_the_block() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    a.set_enforce_rules(shoal_core::enforce::EnforceRules {
        allowlist: vec!["10.0.0.0/8".parse().expect("prefix")],
        min_prefix_v4: 16,
        ..shoal_core::enforce::EnforceRules::default()
    });
    for bad in ["10.1.2.0/24", "192.0.0.0/8"] {
        let errs = send_local(&mut a, t0, &block(Code::BLOCK, bad, 60_000, ""));
        assert_eq!(errs.len(), 1, "{bad}");
        assert_eq!(errs[0].fields[0], LocalError::BlockRefused as u64, "{bad}");
    }
    assert!(held(&a, t0).is_empty());
    assert!(send_local(&mut a, t0, &block(Code::BLOCK, "192.0.2.0/24", 90_000, "")).is_empty());
    rows(&mut a);
    let t1 = t0 + Duration::from_secs(30);
    assert!(send_local(&mut a, t1, &block(Code::UNBLOCK, "192.0.2.0/24", 0, "")).is_empty());
    let saved = rows(&mut a);
    assert_eq!(saved.len(), 1);
    // Expires when the block would have: 60 s left of its 90.
    let wall_t1 = WALL + 30_000_000;
    assert_eq!(saved[0][0], wall_t1 + 60_000_000);
}

/// The trust rules (`docs/wire.md` section 7) hold for blocks: the origin
/// must be the sender, the lifetime counts from the record's timing, a
/// relayed block claiming the receiver's own cluster is refused, and a
/// filter cannot send a relayed block.
#[test]
fn blocks_obey_the_origin_timing_and_relay_rules() {
    let t0 = Instant::now();
    let keys = params(2, true).keys;
    let mut b = Node::new(params(2, true), t0, WALL, WALL);
    let dgram = |records: &[Record], seq: u64| {
        let mut w = shoal_wire::DatagramWriter::new(
            1,
            3,
            WALL,
            1400,
            keys.as_ref().map(|k| k.current.clone()),
        );
        for _ in 1..seq {
            w.push(&records[0]);
            w.finish();
        }
        for r in records {
            assert!(w.push(r));
        }
        w.finish().expect("datagram").to_vec()
    };
    let stamped = |prefix: &str, origin: u32, age_ms: u64, ttl_ms: u32| Record {
        origin,
        seq: 1,
        timing_us: WALL - age_ms * 1000,
        ..block(Code::BLOCK, prefix, ttl_ms, "t")
    };
    let records = [
        stamped("192.0.2.1", 3, 0, 60_000),      // fine
        stamped("192.0.2.2", 9, 0, 60_000),      // origin is not the sender
        stamped("192.0.2.3", 3, 20_000, 60_000), // 20 s old: 40 s left
        stamped("192.0.2.4", 3, 90_000, 60_000), // older than its TTL
    ];
    // A first datagram: the first one a node hears from a peer takes
    // no block older than the skew allowance (a replay would pass any
    // window then).
    let hello = Record {
        origin: 3,
        seq: 1,
        timing_us: WALL,
        ..Record::new(Code::LOAD, [1, 1, 0, 0])
    };
    b.receive(t0, &dgram(&[hello], 1)).expect("accepted");
    b.receive(t0, &dgram(&records, 2)).expect("accepted");
    assert_eq!(
        held(&b, t0),
        [
            ("192.0.2.1/32".to_string(), 60_000),
            ("192.0.2.3/32".to_string(), 40_500), // + the skew allowance
        ]
    );
    let refused = b.counters().records_refused;
    assert_eq!(refused[shoal_core::RecordRefusal::Origin as usize], 1);
    assert_eq!(refused[shoal_core::RecordRefusal::TooOld as usize], 1);

    // A REMOTE_BLOCK naming the receiver's own cluster (1) is refused.
    let p: Prefix = "198.51.100.0/24".parse().expect("prefix");
    let [f0, f1, f2] = p.to_fields(1);
    let own = Record {
        origin: 3,
        seq: 2,
        timing_us: WALL,
        ttl_ms: 60_000,
        ..Record::new(Code::REMOTE_BLOCK, [f0, f1, f2, 5])
    };
    b.receive(t0, &dgram(&[own], 3)).expect("accepted");
    assert_eq!(held(&b, t0).len(), 2);
    assert_eq!(
        b.counters().records_refused[shoal_core::RecordRefusal::RelayForm as usize],
        1
    );
    // From another cluster it is taken; its unblock (bit 16) lifts it.
    let [f0, f1, f2] = p.to_fields(7);
    let other = Record {
        fields: [f0, f1, f2, 5],
        seq: 3,
        ..own
    };
    b.receive(t0, &dgram(&[other], 4)).expect("accepted");
    assert_eq!(b.blocks().get(t0, &p).map(|x| x.origin), Some(7 << 32));
    let lift = Record {
        fields: [f0, f1, f2 | shoal_core::REMOTE_UNBLOCK, 6],
        seq: 4,
        ..own
    };
    b.receive(t0, &dgram(&[lift], 5)).expect("accepted");
    assert!(b.blocks().get(t0, &p).is_none());

    // A filter's REMOTE_BLOCK is refused as an unknown code.
    let errs = send_local(
        &mut b,
        t0,
        &Record {
            op: Op::SEND,
            ..other
        },
    );
    assert_eq!(errs[0].fields[0], LocalError::UnknownCode as u64);
}

/// A block crosses clusters the way modes do: every node puts its
/// cluster's blocks in the relay ring, the queue message becomes a
/// `REMOTE_BLOCK` in the other cluster, and the unblock follows it.
#[test]
fn blocks_cross_clusters_through_the_relay_like_modes() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    let mut other = params(5, true);
    other.cluster = 2;
    let mut b = Node::new(other, t0, WALL, WALL);
    assert!(send_local(
        &mut a,
        t0,
        &block(Code::BLOCK, "2001:db8::/48", 60_000, "x")
    )
    .is_empty());
    let t1 = t0 + Duration::from_secs(1);
    assert!(send_local(&mut a, t1, &block(Code::UNBLOCK, "2001:db8::/48", 0, "")).is_empty());
    let (msgs, _) = a.relay().pending(10);
    assert_eq!(msgs.len(), 2, "the block and the unblock are in the ring");
    let queued = |i: usize, seq: u64| shoal_core::ports::QueuedMsg {
        cluster: 1,
        seq,
        node: msgs[i].node.into(),
        oseq: msgs[i].oseq,
        code: msgs[i].code.into(),
        ttl_ms: msgs[i].ttl_ms.into(),
        at_us: msgs[i].at_us,
        fields: msgs[i].fields,
    };
    // Delivered 10 s after it was published: 50 s left.
    let t2 = t0 + Duration::from_secs(10);
    let now_us = WALL + 10_000_000;
    let r = queued(0, 1).to_record(now_us).expect("a block record");
    assert_eq!(r.code, Code::REMOTE_BLOCK);
    b.inject(t2, r).expect("taken");
    let p: Prefix = "2001:db8::/48".parse().expect("prefix");
    let held_b = b.blocks().get(t2, &p).expect("held in cluster 2");
    assert_eq!(held_b.origin, 1 << 32);
    assert_eq!((held_b.expires - t2).as_millis(), 50_000);
    // Applied once: the same message again changes nothing.
    b.inject(t2, queued(0, 1).to_record(now_us).expect("record"))
        .expect("taken");
    assert_eq!(b.blocks().counters.added, 1);
    // The unblock lifts it.
    b.inject(t2, queued(1, 2).to_record(now_us).expect("unblock"))
        .expect("taken");
    assert!(b.blocks().get(t2, &p).is_none());
    // An expired block does not cross.
    assert!(queued(0, 3).to_record(WALL + 61_000_000).is_none());
}

/// Red team: a block asking for more than `max_ttl` is held for
/// `max_ttl` everywhere, but its row was saved with the TTL asked for; a
/// node restarted after `max_ttl` replays the row and drops the prefix
/// again for up to another `max_ttl`, alone in its cluster.
#[test]
fn a_block_longer_than_max_ttl_does_not_come_back_after_a_restart() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    let max = Duration::from_secs(60);
    let rules = BlockRules {
        max_ttl: max,
        ..BlockRules::default()
    };
    a.set_block_rules(rules.clone());
    let r = block(Code::BLOCK, "192.0.2.0/24", u32::MAX, "long");
    assert!(send_local(&mut a, t0, &r).is_empty());
    assert_eq!(held(&a, t0), [("192.0.2.0/24".to_string(), 60_000)]);
    let saved = rows(&mut a);
    assert_eq!(saved.len(), 1);
    // Ten minutes later the block has ended on every node.
    let t1 = t0 + Duration::from_secs(600);
    assert!(held(&a, t1).is_empty());
    let wall1 = WALL + 600_000_000;
    let mut a2 = Node::new(params(1, true), t1, wall1, wall1);
    a2.set_block_rules(rules);
    a2.replay(t1, "n1", saved.iter().map(|r| ("n1", *r)));
    assert!(
        held(&a2, t1).is_empty(),
        "a block past its max_ttl came back after a restart: {:?} (saved to expire {} s after it was made)",
        held(&a2, t1),
        (saved[0][0] - WALL) / 1_000_000
    );
}

/// Red team: an unblock whose own TTL is shorter than what is left of the
/// block is forgotten by the store first; a node restarted after that
/// replays the block alone and drops the prefix the cluster lifted.
#[test]
fn a_short_lived_unblock_does_not_let_the_block_come_back_after_a_restart() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    assert!(send_local(&mut a, t0, &block(Code::BLOCK, "192.0.2.0/24", 600_000, "")).is_empty());
    let t1 = t0 + Duration::from_secs(1);
    assert!(send_local(&mut a, t1, &block(Code::UNBLOCK, "192.0.2.0/24", 1_000, "")).is_empty());
    assert!(held(&a, t1).is_empty());
    let saved = rows(&mut a);
    assert_eq!(saved.len(), 2);
    let t2 = t0 + Duration::from_secs(60);
    let wall2 = WALL + 60_000_000;
    let mut a2 = Node::new(params(1, true), t2, wall2, wall2);
    a2.replay(t2, "n1", saved.iter().map(|r| ("n1", *r)));
    assert!(
        held(&a2, t2).is_empty(),
        "the lifted block came back after a restart: {:?}",
        held(&a2, t2)
    );
}

/// Red team: a signed datagram captured on the segment is replayed to a
/// node that restarted (its replay windows start empty, so the first
/// datagram it hears from a peer is taken as fresh). A `BLOCK` the
/// cluster lifted since comes back on that node for the rest of its TTL.
#[test]
fn a_captured_block_datagram_replayed_to_a_restarted_node_is_refused() {
    let t0 = Instant::now();
    let mut a = Node::new(params(1, true), t0, WALL, WALL);
    let mut b = Node::new(params(2, true), t0, WALL, WALL);
    assert!(send_local(
        &mut a,
        t0,
        &block(Code::BLOCK, "192.0.2.0/24", 3_600_000, "")
    )
    .is_empty());
    a.flush();
    let mut captured = Vec::new();
    assert!(a.poll_transmit(&mut captured));
    b.receive(t0, &captured).expect("accepted");
    let t1 = t0 + Duration::from_secs(60);
    assert!(send_local(&mut a, t1, &block(Code::UNBLOCK, "192.0.2.0/24", 0, "")).is_empty());
    deliver(&mut a, &mut b, t1);
    assert!(held(&b, t1).is_empty(), "lifted on b");
    // b restarts ten minutes later (same store replayed: block, unblock).
    let saved = rows(&mut a);
    let t2 = t0 + Duration::from_secs(600);
    let wall2 = WALL + 600_000_000;
    let mut b2 = Node::new(params(2, true), t2, wall2, wall2);
    b2.replay(t2, "n2", saved.iter().map(|r| ("n1", *r)));
    assert!(held(&b2, t2).is_empty(), "the store agrees: lifted");
    // The attacker replays the captured datagram before a's next one.
    let _ = b2.receive(t2, &captured);
    assert!(
        held(&b2, t2).is_empty(),
        "a replayed datagram brought a lifted block back: {:?}",
        held(&b2, t2)
    );
}
