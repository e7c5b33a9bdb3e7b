//! What a receiving `Node` does with each kind of record in an accepted
//! datagram, as `docs/wire.md` section 3 lists it: malformed ones and
//! local-API or reserved codes are skipped and counted apart, extension
//! records are counted and change nothing, the records around a bad one
//! are applied.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
use shoal_wire::{Code, DatagramWriter, Record};

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

/// A record of node 2, as node 2's sidecar would stamp it.
fn from2(code: Code, fields: [u64; 4]) -> Record {
    Record {
        origin: 2,
        seq: 1,
        timing_us: WALL,
        ttl_ms: 60_000,
        ..Record::new(code, fields)
    }
}

#[test]
fn each_kind_of_received_record_is_applied_skipped_or_counted_as_documented() {
    let now = Instant::now();
    let mut n = node(1, now);
    let records = [
        from2(Code::LOAD, [10, 500, 0, 0]),
        from2(Code::MODE, [11, 256, 0, 0]),       // level over 255
        from2(Code::SESSION_MARK, [12, 3, 0, 0]), // mark not 1 or 2
        from2(Code::REMOTE_MODE, [13, 2, 7, 1]),  // claimant cluster 0
        from2(Code::REMOTE_MODE, [13, 2, 2 << 32 | 7, 0]), // queue seq 0
        from2(Code::QUERY_LOAD, [10, 0, 0, 0]),   // local API only
        from2(Code::REPLY_ERROR, [1, 0, 0, 0]),   // local API only
        from2(Code(0x0009), [0; 4]),              // reserved
        from2(Code(0x8001), [14, 1, 2, 3]),       // extension
        from2(Code::MODE, [11, 255, 0, 0]),
        from2(Code::SESSION_MARK, [12, Record::MARK_LEGITIMATE, 0, 0]),
    ];
    let mut w = DatagramWriter::new(CLUSTER, 2, WALL, 1400, None);
    for r in &records {
        assert!(w.push(r));
    }
    let bytes = w.finish().expect("a datagram").to_vec();
    assert_eq!(n.receive(now, &bytes), Ok(4), "load, mode, mark, extension");
    let c = n.counters();
    assert_eq!(c.records_bad, 4, "malformed fields");
    assert_eq!(c.records_unknown_code, 3, "local API and reserved codes");
    assert_eq!(c.records_extension, 1);
    assert_eq!(c.records_applied, 4);
    // The good records around the bad ones took effect, the bad ones none.
    assert_eq!(n.load(now, 10).total, 500);
    assert_eq!(n.mode(now, 11).level, 255);
    assert_eq!(n.mark(now, 12).mark, Record::MARK_LEGITIMATE);
    assert_eq!(n.mode(now, 13).level, 0);
    assert_eq!(n.relay().counters().applied, 0);
    // An extension record changes no state: nothing under its f0.
    assert_eq!(n.load(now, 14).total, 0);
    assert_eq!(n.mode(now, 14).level, 0);
    assert_eq!(n.mark(now, 14).mark, 0);
}

#[test]
fn queries_only_is_true_for_well_formed_datagrams_of_questions_alone() {
    use shoal_core::queries_only;
    let q = |c, k| Record::new(c, [k, 0, 0, 0]).to_bytes();
    let mut two = q(Code::QUERY_LOAD, 1).to_vec();
    two.extend_from_slice(&q(Code::QUERY_MODE, 2));
    assert!(queries_only(&two));
    let mut mixed = two.clone();
    mixed.extend_from_slice(&q(Code::LOAD, 3));
    assert!(!queries_only(&mixed), "a report inside");
    assert!(!queries_only(&[]), "empty");
    assert!(!queries_only(&two[..100]), "not whole records");
    let many: Vec<u8> = (0..65).flat_map(|k| q(Code::QUERY_LOAD, k)).collect();
    assert!(!queries_only(&many), "more records than a filter may send");
}
