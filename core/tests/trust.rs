//! Trust and failure (issue 9): what a node accepts from its cluster and
//! its store. Each test drives real `Node`s with datagrams built by the
//! wire crate, on a virtual clock; no I/O.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
use shoal_wire::{Code, DatagramWriter, Op, Record};

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
