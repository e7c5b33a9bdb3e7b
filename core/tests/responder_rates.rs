//! The log responder's `KEY_RATE` records (domain 2) on a receiving
//! `Node`: held for the responder once it runs, judged by their own
//! timing like any record with a lifetime, bounded, and an unknown table
//! (counted) on a node without a responder; other domains are left to
//! the rate limits.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::keyrate::{domain, name_id, table_id, KeyRateRecord};
use shoal_core::{ModeRules, Node, NodeParams, StateLimits, RESPONDER_INBOX};
use shoal_wire::{DatagramWriter, Record};

const CLUSTER: u32 = 3;
const WALL: u64 = 1_767_225_600_000_000;

fn node(id: u32, now: Instant) -> Node {
    let p = NodeParams {
        id,
        cluster: CLUSTER,
        max_datagram: 1400,
        flush: Duration::ZERO,
        keys: None,
        limits: StateLimits {
            load_stale: Duration::from_secs(2),
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
    Node::new(p, now, WALL, WALL)
}

fn rate(table: u64, key: u64, timing_us: u64, seq: u64) -> Record {
    Record {
        origin: 2,
        seq,
        timing_us,
        ..KeyRateRecord {
            table,
            key,
            rate: 4.5,
            ttl_ms: 1000,
        }
        .to_record()
    }
}

fn datagram(seq: u64, records: &[Record]) -> Vec<u8> {
    let mut w = DatagramWriter::new(CLUSTER, 2, WALL, 65_000, None);
    w.set_next_seq(seq);
    for r in records {
        assert!(w.push(r));
    }
    w.finish().expect("a datagram").to_vec()
}

#[test]
fn responder_counts_are_held_judged_and_bounded() {
    let now = Instant::now();
    let ours = table_id(domain::RESPONDER, name_id("sshd"));
    let limits = table_id(domain::LIMIT, name_id("login"));

    // No responder: an unknown table, counted, nothing held.
    let mut plain = node(1, now);
    assert_eq!(
        plain.receive(now, &datagram(1, &[rate(ours, 7, WALL, 1)])),
        Ok(1)
    );
    assert_eq!(plain.key_rate_unknown_table(), 1);
    let mut none = Vec::new();
    plain.take_responder_rates(&mut none);
    assert!(none.is_empty());

    let mut n = node(1, now);
    n.enable_responder_rates();
    let d = datagram(
        1,
        &[
            rate(ours, 7, WALL, 1),
            rate(ours, 8, WALL - 700_000, 2), // 200 ms beyond the skew allowance
            rate(ours, 9, WALL - 2_000_000, 3), // older than its TTL
            rate(ours, 10, WALL + 2_000_000, 4), // from the future
            rate(limits, 11, WALL, 5),        // another domain: not ours
        ],
    );
    // The two live ones of ours and the limit's (refused by age: 2).
    assert_eq!(n.receive(now, &d), Ok(3));
    let mut got = Vec::new();
    n.take_responder_rates(&mut got);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, 2, "origin = sender");
    assert_eq!(
        (got[0].1.key, got[0].1.ttl_ms, got[0].1.rate),
        (7, 1000, 4.5)
    );
    assert_eq!(
        (got[1].1.key, got[1].1.ttl_ms),
        (8, 800),
        "held for what is left"
    );
    assert_eq!(
        n.key_rate_unknown_table(),
        1,
        "the limit's record: no such limit here"
    );
    n.take_responder_rates(&mut got);
    assert_eq!(got.len(), 2, "drained once");

    // Bounded: what the responder has not taken is dropped and counted.
    let per = 1000;
    let mut seq = 10;
    let mut sent = 0;
    while sent < RESPONDER_INBOX + 5 {
        let batch: Vec<Record> = (0..per)
            .map(|i| rate(ours, (sent + i) as u64, WALL, seq + i as u64))
            .collect();
        let _ = n.receive(now, &datagram(seq, &batch));
        seq += per as u64;
        sent += per;
    }
    assert_eq!(n.responder_inbox_dropped(), (sent - RESPONDER_INBOX) as u64);
    got.clear();
    n.take_responder_rates(&mut got);
    assert_eq!(got.len(), RESPONDER_INBOX);
}

#[test]
fn a_node_sends_its_counts_stamped_as_its_own() {
    let now = Instant::now();
    let mut a = node(2, now);
    let k = KeyRateRecord {
        table: table_id(domain::RESPONDER, 1),
        key: 42,
        rate: 3.25,
        ttl_ms: 1000,
    };
    a.send_key_rate(now, &k);
    a.flush();
    let mut out = Vec::new();
    assert!(a.poll_transmit(&mut out));
    let mut b = node(1, now);
    b.enable_responder_rates();
    assert_eq!(b.receive(now, &out), Ok(1));
    let mut got = Vec::new();
    b.take_responder_rates(&mut got);
    assert_eq!(got, vec![(2, k)]);
}
