//! The cross-cluster relay through real `Node` state machines (no I/O): a
//! cluster's mode records enter every node's relay ring whoever made them,
//! relayed modes do not, and a relayed message multicast twice (two
//! forwarders for a moment) is applied once on every node.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
use shoal_wire::{Code, Op, Record};

const WALL: u64 = 1_767_225_600_000_000;

fn node(id: u32) -> Node {
    let p = NodeParams {
        id,
        cluster: 1,
        max_datagram: 1400,
        flush: Duration::ZERO,
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
        relay_capacity: 16,
        hash_seed: u128::from(id),
    };
    Node::new(p, Instant::now(), WALL, WALL)
}

/// Moves every ready datagram of `from` into `to`.
fn deliver(from: &mut Node, to: &mut Node, now: Instant) {
    from.flush();
    let mut buf = Vec::new();
    while from.poll_transmit(&mut buf) {
        to.receive(now, &buf).expect("accepted");
    }
}

fn remote(resource: u64, level: u64, seq: u64) -> Record {
    let mut r = Record::new(Code::REMOTE_MODE, [resource, level, 2 << 32 | 7, seq]);
    r.ttl_ms = 60_000;
    r.op = Op::SEND;
    r
}

#[test]
fn local_modes_enter_every_ring_and_relayed_ones_apply_once() {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    let mut mode = Record::new(Code::MODE, [10, 2, 0, 0]);
    mode.op = Op::SEND;
    a.inject(now, mode).expect("mode");
    deliver(&mut a, &mut b, now);
    for n in [&a, &b] {
        let (p, _) = n.relay().pending(10);
        assert_eq!(p.len(), 1, "node {}", n.id());
        // Sequences start at the wall clock, so they stay unique across
        // restarts; the ttl 0 of the record became the default TTL.
        assert_eq!((p[0].node, p[0].oseq, p[0].fields[0]), (1, WALL + 1, 10));
        assert_eq!(p[0].ttl_ms, 10_000);
    }

    // Forwarder a multicasts message 1 of cluster 2; a second forwarder
    // (b, after a takeover) sends it again, then message 2.
    a.inject(now, remote(20, 3, 1)).expect("remote");
    deliver(&mut a, &mut b, now);
    b.inject(now, remote(20, 3, 1)).expect("remote again");
    b.inject(now, remote(21, 4, 2)).expect("remote");
    deliver(&mut b, &mut a, now);
    for n in [&a, &b] {
        let c = n.relay().counters();
        assert_eq!((c.applied, c.duplicates), (2, 1), "node {}", n.id());
        let m = n.mode(now, 20);
        assert_eq!((m.level, m.origin), (3, 2 << 32 | 7));
        assert_eq!(n.mode(now, 21).level, 4);
        // Relayed modes never go back out through the ring.
        assert_eq!(n.relay().pending(10).0.len(), 1);
    }
}

#[test]
fn relayed_records_with_a_bad_claimant_or_sequence_are_refused() {
    let now = Instant::now();
    let mut a = node(1);
    let mut bad = remote(1, 2, 1);
    bad.fields[2] = 7; // cluster 0
    assert!(a.inject(now, bad).is_err());
    let mut bad = remote(1, 2, 1);
    bad.fields[3] = 0;
    assert!(a.inject(now, bad).is_err());
    let mut bad = remote(1, 300, 1);
    bad.op = Op::SEND;
    assert!(a.inject(now, bad).is_err(), "level over 255");
    assert_eq!(a.mode(now, 1).level, 0);
    assert_eq!(a.relay().counters().applied, 0);
}

#[test]
fn a_filter_cannot_send_a_relayed_mode() {
    let now = Instant::now();
    let mut a = node(1);
    let mut reply = Vec::new();
    let mut r = remote(1, 2, u64::MAX);
    r.op = Op::SEND;
    a.handle_local(now, &r.to_bytes(), &mut reply);
    let unknown = shoal_core::LocalError::UnknownCode as usize - 1;
    assert_eq!(a.counters().local_rejected[unknown], 1, "refused, counted");
    assert_eq!(a.mode(now, 1).level, 0);
    // The forwarder's path still takes sequence 1 of that cluster.
    a.inject(now, remote(1, 2, 1)).expect("forwarder");
    assert_eq!(a.mode(now, 1).level, 2);
    // docs/wire.md 2.1: the fields are checked first, so a filter's
    // REMOTE_MODE not in the relay's form is reason 2, one in it reason 3.
    let reason = |a: &mut shoal_core::Node, r: Record| {
        let mut req = r.to_bytes().to_vec();
        req.extend_from_slice(&Record::new(Code::QUERY_MODE, [1, 0, 0, 0]).to_bytes());
        let mut reply = Vec::new();
        a.handle_local(now, &req, &mut reply);
        let e = Record::decode_slice(&reply[..64]).expect("error record");
        assert_eq!(e.code, Code::REPLY_ERROR);
        e.fields[0]
    };
    assert_eq!(reason(&mut a, remote(1, 2, 5)), 3);
    let mut no_cluster = remote(1, 2, 5);
    no_cluster.fields[2] = 7;
    assert_eq!(reason(&mut a, no_cluster), 2);
    assert_eq!(reason(&mut a, remote(1, 2, 0)), 2);
    assert_eq!(reason(&mut a, remote(1, 256, 5)), 2);
}
