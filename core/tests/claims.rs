//! Many protection-mode claims through a real `Node` (no I/O, virtual
//! clock): claims share full datagrams, held claims cost nothing between
//! their deadlines, the per-second bound on changes holds and counts the
//! excess, and a lone record waits in the batch only until the driver
//! says its input is drained.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::{Level, ModeRules, Node, NodeParams, Rule, StateLimits};
use shoal_wire::{Code, Record, RECORD_LEN};

const WALL: u64 = 1_767_225_600_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn node(max_changes_per_s: u32, t0: Instant) -> Node {
    let rule = Rule {
        min_hold: ms(1_000),
        claim_ttl: ms(3_000),
        levels: vec![Level {
            level: 1,
            total_up: 1_000,
            total_down: 800,
            local_up: Some(1_000),
            local_down: Some(800),
        }],
    };
    let p = NodeParams {
        id: 1,
        cluster: 1,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: None,
        limits: StateLimits {
            load_stale: ms(60_000),
            max_resources: 200_000,
            session_capacity: 1000,
            default_ttl: Duration::from_secs(10),
            clock_skew: ms(500),
        },
        max_peers: 16,
        modes: ModeRules {
            default: Some(rule),
            resources: vec![],
            max_changes_per_s,
        },
        store: None,
        relay_capacity: 16,
        hash_seed: 0x5eed,
    };
    Node::new(p, t0, WALL, WALL)
}

/// Feeds a load above the threshold for `n` distinct resources, 64 per
/// local datagram, as a filter would.
fn flood(node: &mut Node, now: Instant, first: u64, n: u64) {
    let mut reply = Vec::new();
    let mut req = Vec::new();
    for r in first..first + n {
        req.extend_from_slice(&Record::new(Code::LOAD, [r, 5_000, 0, 0]).to_bytes());
        if req.len() == 64 * RECORD_LEN {
            node.handle_local(now, &req, &mut reply);
            req.clear();
        }
    }
    if !req.is_empty() {
        node.handle_local(now, &req, &mut reply);
    }
    node.flush();
}

/// Runs the node's timers up to `end` as a driver would; returns the
/// number of `handle_timeout` calls.
fn run_until(node: &mut Node, end: Instant) -> usize {
    let mut calls = 0;
    loop {
        let t = node.poll_timeout();
        if t > end {
            return calls;
        }
        node.handle_timeout(t);
        calls += 1;
    }
}

#[test]
fn claims_share_full_datagrams() {
    let t0 = Instant::now();
    let mut n = node(0, t0);
    flood(&mut n, t0, 0, 10_000);
    let c = n.counters();
    assert_eq!(c.mode_claims_sent, 10_000);
    // 10 000 loads and 10 000 claims, 20 records per 1400-byte datagram:
    // about 1 000 datagrams, not one per claim.
    assert!(
        c.datagrams_sent <= 1_010,
        "{} datagrams for {} records",
        c.datagrams_sent,
        c.records_sent
    );
    assert_eq!(c.records_sent, 20_000);
    assert_eq!(n.claims().0, 10_000);
}

#[test]
fn held_claims_cost_nothing_between_deadlines_and_keepalives_are_batched() {
    let t0 = Instant::now();
    let mut n = node(0, t0);
    flood(&mut n, t0, 0, 10_000);
    let sent = n.counters().records_sent;
    let dgrams = n.counters().datagrams_sent;
    // Between the claims and their first keep-alive (1 s = TTL / 3) the
    // node only purges every 10 ms: no timer per claim fires.
    let calls = run_until(&mut n, t0 + ms(999));
    assert!(calls <= 110, "{calls} timeouts in 999 ms");
    assert_eq!(n.counters().records_sent, sent, "nothing sent while held");
    // At 1 s every claim is kept alive, in slices, in full datagrams.
    run_until(&mut n, t0 + ms(1_000));
    n.flush();
    let c = n.counters();
    assert_eq!(c.records_sent - sent, 10_000);
    assert!(
        c.datagrams_sent - dgrams <= 501,
        "{} datagrams for 10 000 keep-alives",
        c.datagrams_sent - dgrams
    );
    // The timer heap stays near one entry per claim.
    let (active, timers) = n.claims();
    assert_eq!(active, 10_000);
    assert!(timers <= 2 * active, "{timers} timers");
}

#[test]
fn claim_changes_are_bounded_per_second_and_the_excess_counted() {
    let t0 = Instant::now();
    let mut n = node(1_000, t0);
    flood(&mut n, t0, 0, 5_000);
    assert_eq!(n.counters().mode_claims_sent, 1_000);
    assert_eq!(n.counters().mode_changes_deferred, 4_000);
    assert_eq!(n.claims().0, 1_000);
    // The next second, the same load raises the next thousand.
    flood(&mut n, t0 + ms(1_000), 0, 5_000);
    assert_eq!(n.claims().0, 2_000);
    assert_eq!(n.counters().mode_changes_deferred, 7_000);
}

#[test]
fn a_released_load_ends_the_claim_at_its_deadline_without_a_scan() {
    let t0 = Instant::now();
    let mut n = node(0, t0);
    flood(&mut n, t0, 0, 100);
    // The load drops for half of them; the hold keeps the claims until
    // 1 s, then the deadline releases them.
    let mut reply = Vec::new();
    for r in 0..50u64 {
        let req = Record::new(Code::LOAD, [r, 10, 0, 0]).to_bytes();
        n.handle_local(t0 + ms(100), &req, &mut reply);
    }
    assert_eq!(n.claims().0, 100);
    run_until(&mut n, t0 + ms(1_001));
    assert_eq!(n.claims().0, 50);
    assert_eq!(n.mode(t0 + ms(1_001), 0).level, 0);
    assert_eq!(n.mode(t0 + ms(1_001), 99).level, 1);
}

#[test]
fn a_lone_record_leaves_when_the_input_is_drained() {
    let t0 = Instant::now();
    let mut n = node(0, t0);
    let mut reply = Vec::new();
    let req = Record::new(Code::LOAD, [1, 1, 0, 0]).to_bytes();
    n.handle_local(t0, &req, &mut reply);
    assert!(n.has_batch());
    // Without a flush it would wait for company until `flush` (200 us).
    assert_eq!(n.poll_timeout(), t0 + Duration::from_micros(200));
    n.flush();
    let mut out = Vec::new();
    assert!(n.poll_transmit(&mut out));
    assert_eq!(out.len(), 40 + RECORD_LEN + 4);
    assert!(!n.has_batch());
}
