//! The node logic on a virtual clock: N `Node`s joined by simulated links
//! with loss and delay, no sockets, no real time. Exact and fast.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use shoal_core::{Level, ModeRules, Node, NodeParams, Refused, Rule, StateLimits};
use shoal_wire::{Code, DatagramWriter, MacKey, MacKeys, Record, ReplayVerdict, RECORD_LEN};

const CLUSTER: u32 = 5;
const SECRET: &[u8] = b"simulated cluster secret";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    delay: Duration,
    jitter: Duration,
}

/// In flight: (arrival time, tie-break order, destination, datagram).
type Flight = Reverse<(Duration, u64, usize, Vec<u8>)>;

struct Sim {
    t0: Instant,
    now: Duration,
    nodes: Vec<Node>,
    up: Vec<bool>,
    link: Link,
    queue: BinaryHeap<Flight>,
    order: u64,
    rng: Rng,
    /// `dropped[from][to]`: datagrams the links lost.
    dropped: Vec<Vec<u64>>,
    /// Every datagram put on the wire, for replay attacks.
    captured: Vec<Vec<u8>>,
}

fn rule() -> Rule {
    Rule {
        min_hold: ms(1_000),
        claim_ttl: ms(3_000),
        levels: vec![
            Level {
                level: 1,
                total_up: 10_000,
                total_down: 8_000,
                local_up: Some(5_000),
                local_down: Some(4_000),
            },
            Level {
                level: 2,
                total_up: 50_000,
                total_down: 40_000,
                local_up: None,
                local_down: None,
            },
        ],
    }
}

fn params(id: u32) -> NodeParams {
    NodeParams {
        id,
        cluster: CLUSTER,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: Some(MacKeys {
            current: MacKey::derive(1, SECRET),
            previous: None,
        }),
        limits: StateLimits {
            load_stale: ms(500),
            max_resources: 1000,
            session_capacity: 100,
            default_ttl: ms(10_000),
            clock_skew: ms(500),
        },
        max_peers: 16,
        modes: ModeRules {
            default: Some(rule()),
            resources: vec![],
            max_changes_per_s: 0,
        },
        store: None,
        relay_capacity: 64,
        hash_seed: 0x5eed,
    }
}

impl Sim {
    fn new(n: usize, link: Link) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: Duration::ZERO,
            nodes: (1..=n as u32)
                .map(|id| Node::new(params(id), t0, 1_700_000_000_000_000, 1_700_000_000_000_000))
                .collect(),
            up: vec![true; n],
            link,
            queue: BinaryHeap::new(),
            order: 0,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            dropped: vec![vec![0; n]; n],
            captured: Vec::new(),
        }
    }

    fn at(&self) -> Instant {
        self.t0 + self.now
    }

    fn transmit(&mut self, from: usize) {
        let mut buf = Vec::new();
        while self.nodes[from].poll_transmit(&mut buf) {
            self.captured.push(buf.clone());
            for to in 0..self.nodes.len() {
                if to == from {
                    continue;
                }
                if self.rng.chance(self.link.loss) {
                    self.dropped[from][to] += 1;
                    continue;
                }
                let jitter = if self.link.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(self.rng.next() % self.link.jitter.as_micros() as u64)
                };
                self.order += 1;
                self.queue.push(Reverse((
                    self.now + self.link.delay + jitter,
                    self.order,
                    to,
                    buf.clone(),
                )));
            }
        }
    }

    /// Runs every event due up to `now + d`.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let timer = (0..self.nodes.len())
                .filter(|&i| self.up[i])
                .map(|i| (self.nodes[i].poll_timeout() - self.t0, i))
                .min();
            let packet = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next = match (timer, packet) {
                (Some((tt, _)), Some(pt)) => tt.min(pt),
                (Some((tt, _)), None) => tt,
                (None, Some(pt)) => pt,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if packet == Some(next) {
                let Some(Reverse((_, _, to, bytes))) = self.queue.pop() else {
                    unreachable!()
                };
                if self.up[to] {
                    let now = self.at();
                    let _ = self.nodes[to].receive(now, &bytes);
                    self.transmit(to);
                }
            } else if let Some((_, i)) = timer {
                let now = self.at();
                self.nodes[i].handle_timeout(now);
                self.transmit(i);
            }
        }
        self.now = end;
    }

    fn local(&mut self, i: usize, records: &[Record]) -> Vec<u8> {
        let bytes: Vec<u8> = records.iter().flat_map(|r| r.to_bytes()).collect();
        let mut reply = Vec::new();
        let now = self.at();
        self.nodes[i].handle_local(now, &bytes, &mut reply);
        self.transmit(i);
        reply
    }

    fn load(&mut self, i: usize, resource: u64, rate: u64) {
        self.local(i, &[Record::new(Code::LOAD, [resource, rate, 0, 0])]);
    }

    fn total(&self, i: usize, resource: u64) -> (u64, u32) {
        let v = self.nodes[i].load(self.at(), resource);
        (v.total, v.nodes)
    }

    fn level(&self, i: usize, resource: u64) -> u8 {
        self.nodes[i].mode(self.at(), resource).level
    }
}

fn clean() -> Link {
    Link {
        loss: 0.0,
        delay: Duration::from_micros(100),
        jitter: Duration::ZERO,
    }
}

#[test]
fn totals_converge_within_a_millisecond() {
    let mut sim = Sim::new(5, clean());
    for i in 0..5 {
        sim.load(i, 7, 100 * (i as u64 + 1));
    }
    sim.run(Duration::from_micros(400));
    for i in 0..5 {
        assert_eq!(sim.total(i, 7), (1_500, 5), "node {}", i + 1);
    }
    // A new gauge replaces the old one; it is not added to it.
    sim.load(0, 7, 1_100);
    sim.run(ms(1));
    for i in 0..5 {
        assert_eq!(sim.total(i, 7), (2_500, 5));
    }
}

#[test]
fn query_replies_over_the_local_api() {
    let mut sim = Sim::new(3, clean());
    sim.load(1, 9, 40);
    sim.load(2, 9, 2);
    sim.run(ms(1));
    let mut q = Record::new(Code::QUERY_LOAD, [9, 0, 0, 0]);
    q.seq = 77;
    let reply = sim.local(0, &[q]);
    assert_eq!(reply.len(), RECORD_LEN);
    let r = Record::decode_slice(&reply).expect("reply record");
    assert_eq!((r.code, r.seq, r.origin), (Code::QUERY_LOAD, 77, 1));
    assert_eq!(r.fields, [9, 42, 0, 2]);
    // A bad record next to a query is answered with an error in place.
    let mut bad = Record::new(Code(0x0042), [0; 4]).to_bytes().to_vec();
    bad.extend_from_slice(&q.to_bytes());
    let mut reply = Vec::new();
    let now = sim.at();
    sim.nodes[0].handle_local(now, &bad, &mut reply);
    let err = Record::decode_slice(&reply[..RECORD_LEN]).expect("error record");
    assert_eq!(
        (err.code, err.fields[0], err.fields[1]),
        (Code::REPLY_ERROR, 3, 0)
    );
    assert_eq!(reply.len(), 2 * RECORD_LEN);
    // Ingest-only garbage gets no reply but is counted.
    sim.nodes[0].handle_local(now, &[1, 2, 3], &mut reply);
    assert_eq!(
        reply.len(),
        RECORD_LEN,
        "unreadable datagram: one error record"
    );
    let before = sim.nodes[0].counters().local_rejected;
    sim.nodes[0].handle_local(
        now,
        &Record::new(Code(0x0042), [0; 4]).to_bytes(),
        &mut reply,
    );
    assert!(reply.is_empty());
    assert_eq!(sim.nodes[0].counters().local_rejected[2], before[2] + 1);
}

#[test]
fn a_local_spike_arms_every_node_before_it_spreads() {
    let mut sim = Sim::new(4, clean());
    for i in 0..4 {
        sim.load(i, 3, 1_000);
    }
    sim.run(ms(1));
    assert!((0..4).all(|i| sim.level(i, 3) == 0));
    // Only node 1 sees the spike (local_up = 5000); the cluster total is
    // still under total_up, yet every node is armed one link delay later.
    sim.load(0, 3, 6_000);
    sim.run(Duration::from_micros(150));
    for i in 0..4 {
        assert_eq!(sim.level(i, 3), 1, "node {} armed", i + 1);
    }
    // The total passes the level-2 threshold: level 2 everywhere.
    for i in 1..4 {
        sim.load(i, 3, 20_000);
    }
    sim.run(ms(1));
    assert!((0..4).all(|i| sim.level(i, 3) == 2));
}

#[test]
fn modes_hold_then_release_and_die_with_their_claimer() {
    let mut sim = Sim::new(3, clean());
    sim.load(0, 5, 12_000);
    sim.run(ms(1));
    assert!((0..3).all(|i| sim.level(i, 5) == 1));
    // Load falls under total_down at once, but the mode is held 1 s.
    sim.load(0, 5, 100);
    sim.run(ms(500));
    assert!((0..3).all(|i| sim.level(i, 5) == 1), "held");
    sim.load(0, 5, 100);
    sim.run(ms(600));
    assert!(
        (0..3).all(|i| sim.level(i, 5) == 0),
        "released after the hold"
    );

    // A claimer that crashes stops refreshing its claim: it expires.
    sim.load(0, 5, 12_000);
    sim.run(ms(1));
    assert!((0..3).all(|i| sim.level(i, 5) == 1));
    sim.up[0] = false;
    sim.run(ms(2_000));
    assert_eq!(sim.level(1, 5), 1, "claim refreshed before the crash holds");
    sim.run(ms(1_500));
    assert_eq!(sim.level(1, 5), 0, "claim TTL (3 s) ran out");
    assert_eq!(sim.level(2, 5), 0);
}

#[test]
fn held_claims_are_refreshed_and_survive_their_ttl() {
    let mut sim = Sim::new(3, clean());
    for step in 0..20 {
        sim.load(0, 6, 12_000);
        sim.run(ms(500));
        assert_eq!(sim.level(2, 6), 1, "step {step}");
    }
}

#[test]
fn silent_peer_stops_counting() {
    let mut sim = Sim::new(3, clean());
    for i in 0..3 {
        sim.load(i, 8, 10);
    }
    sim.run(ms(1));
    assert_eq!(sim.total(0, 8), (30, 3));
    sim.up[2] = false;
    for _ in 0..6 {
        sim.load(0, 8, 10);
        sim.load(1, 8, 10);
        sim.run(ms(100));
    }
    assert_eq!(sim.total(0, 8), (20, 2), "stale gauge of node 3 dropped");
}

#[test]
fn loss_is_counted_exactly_and_gauges_still_converge() {
    let mut sim = Sim::new(
        3,
        Link {
            loss: 0.0,
            delay: ms(1),
            jitter: Duration::ZERO,
        },
    );
    for round in 0..200u64 {
        // The first round is lossless: a window starts at the first
        // datagram it sees, so nothing before it can be counted.
        sim.link.loss = if round == 0 { 0.0 } else { 0.3 };
        for i in 0..3 {
            sim.load(i, 1, round * 10 + i as u64);
        }
        sim.run(ms(5));
    }
    // Lossless rounds until every hole has left the replay window (128
    // datagrams): a loss is counted, for good, only then.
    sim.link.loss = 0.0;
    for round in 0..130u64 {
        for i in 0..3 {
            sim.load(i, 1, 5_000 + round * 10 + i as u64);
        }
        sim.run(ms(5));
    }
    for i in 0..3 {
        assert_eq!(sim.total(i, 1), (15_003 + 129 * 30, 3));
    }
    for to in 0..3 {
        for (id, p) in sim.nodes[to].peers() {
            let from = id as usize - 1;
            assert_eq!(p.lost(), sim.dropped[from][to], "{from}->{to}");
            assert_eq!(p.missing(), 0);
            assert_eq!(p.duplicates, 0);
        }
    }
    let total_dropped: u64 = sim.dropped.iter().flatten().sum();
    assert!(total_dropped > 100, "the links did drop: {total_dropped}");
}

#[test]
fn reordering_is_counted_as_late_not_lost() {
    let mut sim = Sim::new(
        2,
        Link {
            loss: 0.0,
            delay: Duration::from_micros(100),
            jitter: ms(3),
        },
    );
    for round in 0..500u64 {
        sim.load(0, 1, round);
        sim.run(Duration::from_micros(300));
    }
    sim.run(ms(10));
    let (_, p) = sim.nodes[1].peers().next().expect("peer 1");
    assert!(p.late > 0, "jitter reordered some datagrams");
    assert_eq!(p.lost(), 0);
    assert_eq!(p.datagrams, sim.nodes[0].counters().datagrams_sent);
    assert_eq!(
        sim.total(1, 1),
        (499, 1),
        "the newest gauge wins even when late ones arrive"
    );
}

#[test]
fn sessions_spread_and_the_table_stays_bounded() {
    let mut sim = Sim::new(3, clean());
    let mut mark = Record::new(Code::SESSION_MARK, [0xfeed, Record::MARK_LEGITIMATE, 0, 0]);
    mark.ttl_ms = 60_000;
    sim.local(2, &[mark]);
    sim.run(ms(1));
    for i in 0..3 {
        let m = sim.nodes[i].mark(sim.at(), 0xfeed);
        assert_eq!((m.mark, m.origin), (Record::MARK_LEGITIMATE, 3));
    }
    // Capacity is 100: 150 more sessions evict the 51 oldest, first ours.
    for k in 0..150u64 {
        let mut r = Record::new(Code::SESSION_MARK, [k, Record::MARK_SUSPICIOUS, 0, 0]);
        r.ttl_ms = 60_000;
        sim.local(0, &[r]);
    }
    sim.run(ms(5));
    for i in 0..3 {
        assert_eq!(sim.nodes[i].state().counts().2, 100);
        assert_eq!(sim.nodes[i].session_evictions(), 51);
        assert_eq!(sim.nodes[i].mark(sim.at(), 0xfeed).mark, 0);
        assert_eq!(
            sim.nodes[i].mark(sim.at(), 149).mark,
            Record::MARK_SUSPICIOUS
        );
    }
}

#[test]
fn forged_replayed_truncated_and_flipped_datagrams_never_change_state() {
    let mut sim = Sim::new(2, clean());
    sim.load(0, 4, 100);
    sim.run(ms(1));
    let real = sim.captured.last().expect("a datagram went out").clone();
    let view = |sim: &Sim| (sim.total(1, 4), sim.level(1, 4));
    let before = view(&sim);
    let now = sim.at();
    let victim = &mut sim.nodes[1];

    // Replay of a real, correctly signed datagram.
    assert_eq!(
        victim.receive(now, &real),
        Err(Refused::Replay(ReplayVerdict::Duplicate))
    );
    // A forger with the wrong key, claiming a huge load and a mode.
    let mut w = DatagramWriter::new(
        CLUSTER,
        1,
        u64::MAX,
        1400,
        Some(MacKey::derive(1, b"wrong key")),
    );
    w.push(&Record::new(Code::LOAD, [4, 1 << 40, 0, 0]));
    w.push(&Record::new(Code::MODE, [4, 9, 0, 0]));
    let forged = w.finish().expect("batch").to_vec();
    assert!(matches!(
        victim.receive(now, &forged),
        Err(Refused::Decode(_))
    ));
    // Unsigned, with a fresh incarnation and a valid CRC.
    let mut w = DatagramWriter::new(CLUSTER, 1, u64::MAX, 1400, None);
    w.push(&Record::new(Code::LOAD, [4, 1 << 40, 0, 0]));
    assert!(matches!(
        victim.receive(now, w.finish().expect("batch")),
        Err(Refused::Decode(_))
    ));
    // Truncated and bit-flipped copies of the real one.
    for len in [0, 10, 43, real.len() - 1] {
        assert!(victim.receive(now, &real[..len]).is_err());
    }
    for bit in (0..real.len() * 8).step_by(7) {
        let mut b = real.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(victim.receive(now, &b).is_err(), "bit {bit}");
    }
    let c = victim.counters();
    let rejected: u64 = c.rejected.iter().sum();
    assert!(rejected > 100);
    assert_eq!(c.replay_rejected, 1);
    assert_eq!(view(&sim), before, "state untouched");
}
