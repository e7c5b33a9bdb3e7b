//! Cluster-wide rate limits on a virtual clock: 16 `Node`s joined by
//! lossy, delayed links, filters asking their own node only
//! (`QUERY_LIMIT` through `handle_local`), the nodes sharing per-key
//! rates (`KEY_RATE`). One key at 10 times its limit, spread evenly and
//! 80 % to one node: the rate admitted cluster-wide after the first second
//! stays within 10 % of the limit, where a per-node limit in the same run
//! admits what each node's own limit lets through. Fixed seed.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use shoal_core::ratelimit::{Escalate, KeyKind, LimitRule, Scope};
use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
use shoal_wire::{Code, MacKey, MacKeys, Record, RECORD_LEN};

const CLUSTER: u32 = 5;
const N: usize = 16;
const LIMIT: f64 = 1_000.0;
const BURST: f64 = 500.0;
const KEY: u64 = 0xdead_beef;
const WALL: u64 = 1_700_000_000_000_000;

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
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0
    }
}

type Flight = Reverse<(Duration, u64, usize, Vec<u8>)>;

struct Sim {
    t0: Instant,
    now: Duration,
    nodes: Vec<Node>,
    queue: BinaryHeap<Flight>,
    order: u64,
    rng: Rng,
    loss: f64,
    delay: Duration,
    jitter: Duration,
}

fn rule(name: &str, scope: Scope) -> LimitRule {
    LimitRule {
        name: name.into(),
        kind: KeyKind::Opaque,
        rate: LIMIT,
        burst: BURST,
        max_keys: 4096,
        idle: ms(30_000),
        scope,
        escalate: None,
    }
}

fn params(id: u32) -> NodeParams {
    NodeParams {
        id,
        cluster: CLUSTER,
        max_datagram: 1400,
        flush: Duration::from_micros(500),
        keys: Some(MacKeys {
            current: MacKey::derive(1, b"ratelimit sim secret"),
            previous: None,
        }),
        limits: StateLimits {
            load_stale: ms(500),
            max_resources: 1000,
            session_capacity: 100,
            default_ttl: ms(10_000),
            clock_skew: ms(500),
        },
        max_peers: 32,
        modes: ModeRules {
            default: None,
            resources: vec![],
            max_changes_per_s: 0,
        },
        store: None,
        relay_capacity: 64,
        hash_seed: 0x5eed ^ u128::from(id),
    }
}

/// An address limit that escalates a key denied for 2 s to a 5 s block.
fn escalating() -> LimitRule {
    LimitRule {
        kind: KeyKind::Addr {
            v4_prefix: 32,
            v6_prefix: 64,
        },
        escalate: Some(Escalate {
            after: ms(2_000),
            ttl: ms(5_000),
            gap: ms(1_000),
        }),
        ..rule("esc", Scope::Cluster)
    }
}

impl Sim {
    fn new(loss: f64, seed: u64) -> Sim {
        let t0 = Instant::now();
        let nodes = (1..=N as u32)
            .map(|id| {
                let mut n = Node::new(params(id), t0, WALL, WALL);
                n.set_limits(
                    t0,
                    vec![
                        rule("cluster", Scope::Cluster),
                        rule("node", Scope::Node),
                        escalating(),
                    ],
                    u128::from(id),
                )
                .expect("distinct limits");
                n
            })
            .collect();
        Sim {
            t0,
            now: Duration::ZERO,
            nodes,
            queue: BinaryHeap::new(),
            order: 0,
            rng: Rng(seed),
            loss,
            delay: ms(1),
            jitter: ms(4),
        }
    }

    fn at(&self) -> Instant {
        self.t0 + self.now
    }

    fn transmit(&mut self, from: usize) {
        let mut buf = Vec::new();
        while self.nodes[from].poll_transmit(&mut buf) {
            for to in 0..N {
                if to == from || self.rng.unit() < self.loss {
                    continue;
                }
                let jitter =
                    Duration::from_micros(self.rng.next() % self.jitter.as_micros() as u64);
                self.order += 1;
                self.queue.push(Reverse((
                    self.now + self.delay + jitter,
                    self.order,
                    to,
                    buf.clone(),
                )));
            }
        }
    }

    /// Runs timers and deliveries due up to `until`.
    fn run_to(&mut self, until: Duration) {
        loop {
            let timer = (0..N)
                .map(|i| (self.nodes[i].poll_timeout() - self.t0, i))
                .min();
            let packet = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next = match (timer, packet) {
                (Some((tt, _)), Some(pt)) => tt.min(pt),
                (Some((tt, _)), None) => tt,
                (None, _) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if packet == Some(next) {
                let Some(Reverse((_, _, to, bytes))) = self.queue.pop() else {
                    unreachable!()
                };
                let now = self.at();
                let _ = self.nodes[to].receive(now, &bytes);
                self.transmit(to);
            } else if let Some((_, i)) = timer {
                let now = self.at();
                self.nodes[i].handle_timeout(now);
                self.transmit(i);
            }
        }
        self.now = until;
    }

    /// `n` single hits of `key` under `limit` at node `i`, batched in one
    /// datagram; returns how many were allowed.
    fn hits(&mut self, i: usize, limit: &str, key: u64, n: usize) -> usize {
        let id = rule(limit, Scope::Cluster).id();
        let mut allowed = 0;
        let mut left = n;
        while left > 0 {
            let batch = left.min(64);
            left -= batch;
            let req: Vec<u8> = (0..batch)
                .flat_map(|s| {
                    let mut r = Record::new(Code::QUERY_LIMIT, [u64::from(id), key, 1, 0]);
                    r.seq = s as u64 + 1;
                    r.op = Default::default();
                    r.to_bytes()
                })
                .collect();
            let mut reply = Vec::new();
            let now = self.at();
            self.nodes[i].handle_local(now, &req, &mut reply);
            assert_eq!(reply.len(), batch * RECORD_LEN);
            for c in reply.chunks_exact(RECORD_LEN) {
                let r = Record::decode_slice(c).expect("reply record");
                assert_eq!(r.code, Code::QUERY_LIMIT, "{r:?}");
                match r.fields[2] {
                    1 => allowed += 1,
                    2 => assert!(r.fields[3] > 0, "a denial says when to retry"),
                    v => panic!("verdict {v}"),
                }
            }
        }
        self.transmit(i);
        allowed
    }

    /// Every node reports a load every 100 ms (what filters do), so that
    /// the nodes know each other.
    fn heartbeat(&mut self) {
        for i in 0..N {
            let now = self.at();
            let mut reply = Vec::new();
            let r = Record::new(Code::LOAD, [1, 10, 0, 0]).to_bytes();
            self.nodes[i].handle_local(now, &r, &mut reply);
            self.transmit(i);
        }
    }
}

/// Where one hit goes.
#[derive(Clone, Copy)]
enum Spread {
    Even,
    /// 80 % to node 0, the rest evenly over the others.
    Skewed,
}

struct Outcome {
    /// Admitted per second after the first second, by limit.
    cluster: f64,
    per_node: f64,
    offered: f64,
}

/// Offers `factor × LIMIT` hits/s of one key for `secs` seconds (after a
/// warm-up in which the nodes learn of each other); counts what each
/// limit admitted from the second second on.
fn run(spread: Spread, factor: f64, loss: f64, secs: u64) -> Outcome {
    let mut sim = Sim::new(loss, 0x9e37_79b9_7f4a_7c15);
    for _ in 0..3 {
        sim.heartbeat();
        let t = sim.now + ms(100);
        sim.run_to(t);
    }
    let start = sim.now;
    let per_ms = factor * LIMIT / 1000.0;
    let mut carry = 0.0;
    let (mut cluster, mut per_node, mut offered) = (0usize, 0usize, 0usize);
    let mut counts = [0usize; N];
    for step in 1..=secs * 1000 {
        if step % 100 == 0 {
            sim.heartbeat();
        }
        carry += per_ms;
        let n = carry as usize;
        carry -= n as f64;
        counts.fill(0);
        for _ in 0..n {
            let i = match spread {
                Spread::Even => (sim.rng.next() % N as u64) as usize,
                Spread::Skewed if sim.rng.unit() < 0.8 => 0,
                Spread::Skewed => 1 + (sim.rng.next() % (N as u64 - 1)) as usize,
            };
            counts[i] += 1;
        }
        let counted = step > 1000;
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let a = sim.hits(i, "cluster", KEY, c);
            let b = sim.hits(i, "node", KEY, c);
            if counted {
                cluster += a;
                per_node += b;
                offered += c;
            }
        }
        let t = start + ms(step);
        sim.run_to(t);
    }
    let d = (secs - 1) as f64;
    Outcome {
        cluster: cluster as f64 / d,
        per_node: per_node as f64 / d,
        offered: offered as f64 / d,
    }
}

fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= want * tol
}

#[test]
fn a_key_spread_evenly_is_admitted_at_its_limit_cluster_wide() {
    // 10x the limit over 16 nodes: 625/s per node, under a per-node
    // limit of 1000/s, so per-node limiting admits everything.
    let o = run(Spread::Even, 10.0, 0.05, 4);
    println!(
        "even 10x: offered {:.0}/s, cluster limit admitted {:.0}/s, per-node limits {:.0}/s",
        o.offered, o.cluster, o.per_node
    );
    assert!(within(o.cluster, LIMIT, 0.10), "cluster {:.0}/s", o.cluster);
    assert!(
        within(o.per_node, o.offered, 0.02),
        "per node {:.0}/s",
        o.per_node
    );
}

#[test]
fn a_key_80_percent_on_one_node_is_admitted_at_its_limit_cluster_wide() {
    let o = run(Spread::Skewed, 10.0, 0.05, 4);
    println!(
        "skewed 10x: offered {:.0}/s, cluster limit admitted {:.0}/s, per-node limits {:.0}/s",
        o.offered, o.cluster, o.per_node
    );
    assert!(within(o.cluster, LIMIT, 0.10), "cluster {:.0}/s", o.cluster);
    // Per node: node 0 admits its 1000/s, the 15 others all of their
    // 2000/s together.
    assert!(
        within(o.per_node, 3.0 * LIMIT, 0.05),
        "per node {:.0}/s",
        o.per_node
    );
}

#[test]
fn at_32x_per_node_limits_admit_n_times_the_limit() {
    let o = run(Spread::Even, 32.0, 0.05, 3);
    println!(
        "even 32x: offered {:.0}/s, cluster limit admitted {:.0}/s, per-node limits {:.0}/s",
        o.offered, o.cluster, o.per_node
    );
    assert!(within(o.cluster, LIMIT, 0.10), "cluster {:.0}/s", o.cluster);
    assert!(
        within(o.per_node, N as f64 * LIMIT, 0.05),
        "per node {:.0}/s",
        o.per_node
    );
}

#[test]
fn a_burst_spread_over_the_cluster_is_honoured_once() {
    let mut sim = Sim::new(0.05, 7);
    for _ in 0..3 {
        sim.heartbeat();
        let t = sim.now + ms(100);
        sim.run_to(t);
    }
    // 3 × the burst at once, over all nodes, for a key never seen.
    let per_node = (3.0 * BURST) as usize / N;
    let mut cluster = 0;
    let mut per_node_admitted = 0;
    for i in 0..N {
        cluster += sim.hits(i, "cluster", KEY, per_node);
        per_node_admitted += sim.hits(i, "node", KEY, per_node);
    }
    println!(
        "burst {BURST}: cluster limit admitted {cluster}, per-node limits {per_node_admitted}"
    );
    assert!(within(cluster as f64, BURST, 0.10), "{cluster}");
    // Each node alone lets its whole share through (93 < 500 each).
    assert_eq!(per_node_admitted, per_node * N);
    // A second burst 10 s later, once the key went quiet, is honoured again.
    let t = sim.now + ms(10_000);
    sim.run_to(t);
    let again: usize = (0..N).map(|i| sim.hits(i, "cluster", KEY, per_node)).sum();
    assert!(within(again as f64, BURST, 0.15), "{again}");
}

/// Offers `factor × LIMIT` hits/s of `key` under `limit`, spread evenly,
/// for `dur`.
fn offer(sim: &mut Sim, limit: &str, key: u64, factor: f64, dur: Duration) {
    let start = sim.now;
    let per_ms = factor * LIMIT / 1000.0;
    let mut carry = 0.0;
    for step in 1..=dur.as_millis() as u64 {
        if step % 100 == 0 {
            sim.heartbeat();
        }
        carry += per_ms;
        let n = carry as usize;
        carry -= n as f64;
        let mut counts = [0usize; N];
        for _ in 0..n {
            counts[(sim.rng.next() % N as u64) as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                sim.hits(i, limit, key, c);
            }
        }
        let t = start + ms(step);
        sim.run_to(t);
    }
}

/// Idle time with heartbeats only.
fn idle(sim: &mut Sim, dur: Duration) {
    let end = sim.now + dur;
    while sim.now < end {
        sim.heartbeat();
        let t = (sim.now + ms(100)).min(end);
        sim.run_to(t);
    }
}

/// Two episodes of one key at 10x its limit; returns the BLOCKs sent in
/// each (summed over the nodes).
fn escalation_episodes(loss: f64, seed: u64) -> (u64, u64) {
    let mut sim = Sim::new(loss, seed);
    idle(&mut sim, ms(300));
    let src: std::net::IpAddr = "192.0.2.7".parse().expect("address");
    let key = KeyKind::addr_key(src);
    let prefix: shoal_wire::Prefix = "192.0.2.7/32".parse().expect("address");
    let totals = |sim: &Sim| {
        let mut t = shoal_core::escalate::EscalateCounters::default();
        for n in &sim.nodes {
            let s = n
                .limit_snapshots()
                .into_iter()
                .find(|l| l.name == "esc")
                .expect("the esc limit");
            t.crossed += s.escalate.crossed;
            t.blocked += s.escalate.blocked;
            t.already_blocked += s.escalate.already_blocked;
            t.refused += s.escalate.refused;
        }
        t
    };
    // Under its limit for 3 s: never denied, never escalated.
    offer(&mut sim, "esc", key, 0.5, ms(3_000));
    assert_eq!(totals(&sim).crossed, 0);
    // 10x its limit, spread evenly, for 1.5 s: denied, not long enough.
    offer(&mut sim, "esc", key, 10.0, ms(1_500));
    assert_eq!(totals(&sim).crossed, 0);
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.blocks().get(sim.at(), &prefix).is_none()));
    // Going on to 3 s: every node denying it crosses; one BLOCK is sent
    // and every node holds it.
    offer(&mut sim, "esc", key, 10.0, ms(1_500));
    idle(&mut sim, ms(1_000));
    let t = totals(&sim);
    let first = t.blocked;
    println!("loss {loss}: first episode: {t:?}");
    assert!(t.blocked >= 1, "{t:?}");
    assert!(t.crossed >= N as u64 / 2, "{t:?}");
    assert_eq!(t.refused, 0);
    assert_eq!(t.crossed, t.blocked + t.already_blocked, "{t:?}");
    let now = sim.at();
    for (i, n) in sim.nodes.iter().enumerate() {
        let b = n
            .blocks()
            .get(now, &prefix)
            .unwrap_or_else(|| panic!("node {i} holds the block"));
        assert!(b.expires > now + ms(3_000));
    }
    let mut events = Vec::new();
    for n in &mut sim.nodes {
        n.take_escalation_events(&mut events);
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.outcome, shoal_core::escalate::Outcome::Blocked { .. }))
            .count() as u64,
        first
    );
    assert!(events
        .iter()
        .all(|e| e.limit == "esc" && e.prefix == prefix));
    // Blocked, the source reaches no filter (the kernel drops it). After
    // the TTL it comes back as hard: a new episode, one more block.
    idle(&mut sim, ms(4_500));
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.blocks().get(sim.at(), &prefix).is_none()));
    offer(&mut sim, "esc", key, 10.0, ms(3_000));
    idle(&mut sim, ms(1_000));
    let t = totals(&sim);
    println!("loss {loss}: both episodes: {t:?}");
    assert!(t.blocked > first, "{t:?}");
    assert_eq!(t.crossed, t.blocked + t.already_blocked, "{t:?}");
    (first, t.blocked - first)
}

#[test]
fn a_key_over_its_limit_for_long_escalates_to_one_block_per_episode() {
    // No loss: exactly one BLOCK per episode in the whole cluster, for
    // every seed.
    for seed in [11, 12, 13, 14] {
        assert_eq!(escalation_episodes(0.0, seed), (1, 1), "seed {seed}");
    }
    // 5 % loss: a node that lost the first BLOCK sends its own in its
    // slot (nothing repairs a lost datagram); a few at most.
    let mut total = 0;
    for seed in [11, 12, 13, 14] {
        let (a, b) = escalation_episodes(0.05, seed);
        total += a + b;
    }
    println!("5 % loss: {total} BLOCKs for 8 episodes");
    assert!((8..=16).contains(&total), "{total}");
}

#[test]
fn an_escalation_the_block_rules_refuse_is_counted_with_its_reason() {
    let mut sim = Sim::new(0.0, 21);
    for n in &mut sim.nodes {
        n.set_enforce_rules(shoal_core::enforce::EnforceRules {
            allowlist: vec!["192.0.2.0/24".parse().expect("address")],
            ..Default::default()
        });
    }
    idle(&mut sim, ms(300));
    let key = KeyKind::addr_key("192.0.2.9".parse().expect("address"));
    offer(&mut sim, "esc", key, 10.0, ms(3_000));
    idle(&mut sim, ms(1_500));
    let (mut refused, mut blocked, mut crossed) = (0, 0, 0);
    let mut events = Vec::new();
    for n in &mut sim.nodes {
        let s = n
            .limit_snapshots()
            .into_iter()
            .find(|l| l.name == "esc")
            .expect("the esc limit");
        refused += s.escalate.refused;
        blocked += s.escalate.blocked;
        crossed += s.escalate.crossed;
        n.take_escalation_events(&mut events);
        assert!(n.blocks().is_empty());
    }
    println!(
        "allowlisted: crossed {crossed}, refused {refused}, {:?}",
        events.first()
    );
    assert_eq!(blocked, 0);
    // Every node that crossed refused once (nothing reached the others).
    assert!(crossed >= N as u64 / 2);
    assert_eq!(refused, crossed);
    assert_eq!(events.len() as u64, refused);
    assert!(events.iter().all(|e| matches!(
        &e.outcome,
        shoal_core::escalate::Outcome::Refused(why) if why.contains("192.0.2.0/24")
    )));
}

#[test]
fn a_key_inside_a_broader_block_is_not_blocked_again() {
    let mut sim = Sim::new(0.0, 31);
    idle(&mut sim, ms(300));
    // A /24 blocked by hand on node 0 (as `shoal block` would), held by
    // every node.
    let p: shoal_wire::Prefix = "192.0.2.0/24".parse().expect("prefix");
    let [f0, f1, f2] = p.to_fields(0);
    let mut r = Record::new(Code::BLOCK, [f0, f1, f2, 0]);
    r.ttl_ms = 60_000;
    r.op = shoal_wire::Op::SEND_SAVE;
    let now = sim.at();
    sim.nodes[0].inject(now, r).expect("block taken");
    sim.nodes[0].flush();
    sim.transmit(0);
    idle(&mut sim, ms(100));
    // The filters still see the source (say, a node without [enforce]).
    let key = KeyKind::addr_key("192.0.2.9".parse().expect("address"));
    offer(&mut sim, "esc", key, 10.0, ms(3_000));
    idle(&mut sim, ms(1_500));
    let (mut crossed, mut blocked, mut already) = (0, 0, 0);
    for n in &sim.nodes {
        let s = n
            .limit_snapshots()
            .into_iter()
            .find(|l| l.name == "esc")
            .expect("the esc limit");
        crossed += s.escalate.crossed;
        blocked += s.escalate.blocked;
        already += s.escalate.already_blocked;
        assert_eq!(n.blocks().len(), 1, "only the /24");
    }
    assert!(crossed >= N as u64 / 2);
    assert_eq!((blocked, already), (0, crossed));
}

#[test]
fn bad_limit_queries_and_a_filter_s_key_rate_are_refused_with_reasons() {
    let mut sim = Sim::new(0.0, 1);
    let id = u64::from(rule("cluster", Scope::Cluster).id());
    let ask = |sim: &mut Sim, r: Record| {
        let mut reply = Vec::new();
        let now = sim.at();
        sim.nodes[0].handle_local(now, &r.to_bytes(), &mut reply);
        Record::decode_slice(&reply).expect("one reply record")
    };
    let q = |f: [u64; 4]| Record {
        seq: 9,
        ..Record::new(Code::QUERY_LIMIT, f)
    };
    // 0 hits, more than 2^32 - 1 hits, an id over 32 bits: bad_record (2).
    for f in [[id, 1, 0, 0], [id, 1, 1 << 32, 0], [id | 1 << 32, 1, 1, 0]] {
        let r = ask(&mut sim, q(f));
        assert_eq!(
            (r.code, r.fields[0], r.seq),
            (Code::REPLY_ERROR, 2, 9),
            "{f:?}"
        );
    }
    // A limit this node does not have: unknown_limit (8).
    let r = ask(&mut sim, q([id ^ 1, 1, 1, 0]));
    assert_eq!(
        (r.code, r.fields[0], r.fields[1]),
        (Code::REPLY_ERROR, 8, id ^ 1)
    );
    // More hits at once than the burst: never (3).
    let r = ask(&mut sim, q([id, 1, BURST as u64 + 1, 0]));
    assert_eq!((r.code, r.fields[2]), (Code::QUERY_LIMIT, 3));
    // A filter may not announce rates: refused as unknown_code (3) when a
    // query rides along, and nothing reaches the table.
    let rate = shoal_core::keyrate::KeyRateRecord {
        table: shoal_core::keyrate::table_id(1, id as u32),
        key: 77,
        rate: 5_000.0,
        ttl_ms: 250,
    }
    .to_record();
    let bytes: Vec<u8> = [rate.to_bytes(), q([id, 77, 1, 0]).to_bytes()].concat();
    let mut reply = Vec::new();
    let now = sim.at();
    sim.nodes[0].handle_local(now, &bytes, &mut reply);
    let first = Record::decode_slice(&reply[..RECORD_LEN]).unwrap();
    assert_eq!((first.code, first.fields[0]), (Code::REPLY_ERROR, 3));
    let snaps = sim.nodes[0].limit_snapshots();
    assert_eq!(snaps[0].peer_keys, 0);
    let c = sim.nodes[0].counters();
    assert_eq!(c.local_rejected[1], 3);
    assert_eq!(c.local_rejected[2], 1);
    assert_eq!(c.local_rejected[7], 1);
}
