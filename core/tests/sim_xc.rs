//! Two clusters on a virtual clock: real `Node`s and `Election`s, each
//! cluster's verdict store a `FakeStore` shared by its nodes, the stores
//! joined by a `FakeLink` in each direction (replication with a delay, can
//! be cut). Every node is a forwarder candidate; mode records are injected
//! at random nodes of both clusters all along.
//!
//! Scenarios: the forwarder is killed (another takes over within
//! `lease + lease / 3 + poll`), the forwarder hangs right after it
//! multicast fetched messages and before its ack (it stands down by its
//! own clock, its late ack is fenced, its successor delivers the same
//! messages again and every node applies them once), and the clusters are
//! partitioned then healed (every mode record crosses exactly once), and
//! a cluster's store hangs for a while (nobody forwards, then a forwarder
//! republishes its ring and nothing is lost). Each
//! is deterministic for a seed: run twice, the traces are equal.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use shoal_core::election::{self, Election, ElectionParams, Event, OpId, Output, Reply};
use shoal_core::fakes::{poll_once, FakeLink, FakeStore, Fault};
use shoal_core::{ModeRules, Node, NodeParams, StateLimits};
use shoal_wire::{Code, Datagram, Op, Record};

const WALL: u64 = 1_767_225_600_000_000;
const LEASE: Duration = Duration::from_millis(600);
const POLL: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(1);
const NODES: u32 = 3;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*; never zero.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A store call on its way back.
struct Call {
    id: OpId,
    /// None: the store never answers.
    reply: Option<Reply>,
    at: Duration,
}

struct Member {
    node: Node,
    election: Election,
    alive: bool,
    paused: bool,
    calls: Vec<Call>,
    inbox: Vec<Vec<u8>>,
    /// Pause as soon as a fetch with messages has been handled (before the
    /// ack it triggers leaves).
    pause_after_fetch: bool,
}

struct Cluster {
    id: u32,
    store: Arc<FakeStore>,
    members: Vec<Member>,
}

struct World {
    t0: Instant,
    now: Duration,
    clusters: Vec<Cluster>,
    /// 0: cluster 1 -> 2, 1: cluster 2 -> 1.
    links: Vec<FakeLink>,
    rng: Rng,
    trace: Vec<String>,
    /// (cluster, origin node, oseq) of every mode record injected.
    injected: BTreeSet<(u32, u64, u64)>,
    next_resource: u64,
    /// (time, cluster, node) of every Leader event.
    leaders: Vec<(Duration, u32, u32)>,
}

fn params(cluster: u32, id: u32, seed: u64) -> NodeParams {
    NodeParams {
        id,
        cluster,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: None,
        limits: StateLimits {
            load_stale: Duration::from_millis(500),
            max_resources: 100_000,
            session_capacity: 100,
            default_ttl: Duration::from_secs(60),
            clock_skew: Duration::from_millis(500),
        },
        max_peers: 16,
        modes: ModeRules::default(),
        store: None,
        relay_capacity: 4096,
        hash_seed: u128::from(seed) << 32 | u128::from(cluster) << 8 | u128::from(id),
    }
}

fn name(cluster: u32, id: u32) -> String {
    format!("c{cluster}-n{id}")
}

impl World {
    fn new(seed: u64) -> World {
        let t0 = Instant::now();
        let clusters: Vec<Cluster> = [1u32, 2]
            .into_iter()
            .map(|c| Cluster {
                id: c,
                store: Arc::new(FakeStore::new(c)),
                members: (1..=NODES)
                    .map(|id| Member {
                        node: Node::new(params(c, id, seed), t0, WALL, WALL),
                        election: Election::new(
                            ElectionParams {
                                cluster: c,
                                name: name(c, id),
                                lease: LEASE,
                                poll: POLL,
                                request_timeout: Duration::from_millis(200),
                                batch: 50,
                            },
                            t0,
                        ),
                        alive: true,
                        paused: false,
                        calls: Vec::new(),
                        inbox: Vec::new(),
                        pause_after_fetch: false,
                    })
                    .collect(),
            })
            .collect();
        let links = vec![
            FakeLink::new(clusters[0].store.clone(), clusters[1].store.clone(), 20_000),
            FakeLink::new(clusters[1].store.clone(), clusters[0].store.clone(), 20_000),
        ];
        World {
            t0,
            now: Duration::ZERO,
            clusters,
            links,
            rng: Rng(seed | 1),
            trace: Vec::new(),
            injected: BTreeSet::new(),
            next_resource: 1,
            leaders: Vec::new(),
        }
    }

    fn at(&self) -> Instant {
        self.t0 + self.now
    }

    fn log(&mut self, c: u32, id: u32, what: String) {
        self.trace
            .push(format!("{:>6} c{c}n{id} {what}", self.now.as_millis()));
    }

    /// A mode record from the filter of a random running node of cluster
    /// `ci`.
    fn inject(&mut self, ci: usize) {
        let n = self.clusters[ci].members.len() as u64;
        let mi = self.rng.below(n) as usize;
        let m = &self.clusters[ci].members[mi];
        if !m.alive || m.paused {
            return;
        }
        let resource = self.next_resource;
        self.next_resource += 1;
        let mut r = Record::new(Code::MODE, [resource, 1 + resource % 3, 0, 0]);
        r.ttl_ms = 60_000;
        r.op = Op::SEND;
        let now = self.at();
        let m = &mut self.clusters[ci].members[mi];
        m.node.inject(now, r).expect("a mode record");
        m.node.flush();
    }

    /// One tick of everything.
    fn tick(&mut self) {
        self.now += TICK;
        let now = self.at();
        let wall = WALL + self.now.as_micros() as u64;
        for c in &self.clusters {
            c.store.set_now(wall);
        }
        for l in &mut self.links {
            l.tick(wall);
        }
        for ci in 0..self.clusters.len() {
            for mi in 0..self.clusters[ci].members.len() {
                self.step_member(ci, mi, now);
            }
            self.multicast(ci);
        }
    }

    fn step_member(&mut self, ci: usize, mi: usize, now: Instant) {
        let cid = self.clusters[ci].id;
        let m = &mut self.clusters[ci].members[mi];
        if !m.alive || m.paused {
            return;
        }
        let id = m.node.id();
        for bytes in std::mem::take(&mut m.inbox) {
            let _ = m.node.receive(now, &bytes);
        }
        if m.node.poll_timeout() <= now {
            m.node.handle_timeout(now);
        }
        // Outputs first: a resumed process goes on where it stopped.
        self.drain(ci, mi);
        let t = self.now;
        let m = &mut self.clusters[ci].members[mi];
        let due: Vec<Call> = {
            let (due, later) = std::mem::take(&mut m.calls)
                .into_iter()
                .partition(|c| c.reply.is_some() && c.at <= t);
            m.calls = later;
            due
        };
        for c in due {
            let m = &mut self.clusters[ci].members[mi];
            let fetched = matches!(&c.reply, Some(Reply::Fetched(Ok(rows))) if !rows.is_empty());
            let reply = c.reply.expect("due calls have a reply");
            m.election.handle_reply(now, c.id, reply, &mut m.node);
            if fetched && m.pause_after_fetch && m.election.is_leader() {
                m.pause_after_fetch = false;
                m.paused = true;
                self.log(cid, id, "paused after multicasting a fetch".into());
                return;
            }
            self.drain(ci, mi);
        }
        let m = &mut self.clusters[ci].members[mi];
        if m.election.poll_timeout().is_some_and(|d| d <= now) {
            m.election.handle_timeout(now, &mut m.node);
        }
        self.drain(ci, mi);
    }

    /// Runs the election's outputs: calls go to the cluster's store now,
    /// replies come back 1 to 3 ms later.
    fn drain(&mut self, ci: usize, mi: usize) {
        let cid = self.clusters[ci].id;
        let store = self.clusters[ci].store.clone();
        loop {
            let m = &mut self.clusters[ci].members[mi];
            let id = m.node.id();
            let Some(out) = m.election.poll_output() else {
                break;
            };
            match out {
                Output::Send(op, req) => {
                    let fut = election::execute(&*store, &req);
                    let mut fut = std::pin::pin!(fut);
                    let reply = match poll_once(fut.as_mut()) {
                        Poll::Ready(r) => Some(r),
                        Poll::Pending => None,
                    };
                    let at = self.now + Duration::from_millis(1 + self.rng.below(3));
                    let line = format!("{req:?} -> {reply:?}");
                    self.clusters[ci].members[mi]
                        .calls
                        .push(Call { id: op, reply, at });
                    self.log(cid, id, line);
                }
                Output::Cancel(op) => {
                    m.calls.retain(|c| c.id != op);
                    self.log(cid, id, format!("cancel {op:?}"));
                }
                Output::Event(ev) => {
                    if let Event::Leader { .. } = ev {
                        self.leaders.push((self.now, cid, id));
                    }
                    self.log(cid, id, format!("{ev:?}"));
                }
            }
        }
        let m = &mut self.clusters[ci].members[mi];
        m.node.flush();
    }

    /// Datagrams of cluster `ci`'s running nodes reach its other nodes.
    fn multicast(&mut self, ci: usize) {
        let members = &mut self.clusters[ci].members;
        let mut sent: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            if !m.alive || m.paused {
                continue;
            }
            let mut buf = Vec::new();
            while m.node.poll_transmit(&mut buf) {
                sent.push((i, buf.clone()));
            }
        }
        // What was multicast is the truth of what must cross: every MODE
        // record (relayed ones are REMOTE_MODE).
        let cid = self.clusters[ci].id;
        for (_, bytes) in &sent {
            let d = Datagram::parse(bytes, cid, None).expect("a node's own datagram");
            for r in d.records().flatten() {
                if r.code == Code::MODE {
                    self.injected.insert((cid, u64::from(r.origin), r.seq));
                }
            }
        }
        let members = &mut self.clusters[ci].members;
        for (from, bytes) in sent {
            for (i, m) in members.iter_mut().enumerate() {
                if i != from && m.alive {
                    m.inbox.push(bytes.clone());
                }
            }
        }
    }

    /// Runs for `d`, injecting a mode record every `every` (if any) at a
    /// random node of a random cluster.
    fn run(&mut self, d: Duration, every: Option<Duration>) {
        let end = self.now + d;
        while self.now < end {
            self.tick();
            if let Some(e) = every {
                if self.now.as_millis() % e.as_millis() == 0 {
                    let ci = self.rng.below(2) as usize;
                    self.inject(ci);
                }
            }
        }
    }

    fn leader(&self, ci: usize) -> Option<usize> {
        let ms = &self.clusters[ci].members;
        let l: Vec<usize> = (0..ms.len())
            .filter(|&i| ms[i].alive && !ms[i].paused && ms[i].election.is_leader())
            .collect();
        assert!(l.len() <= 1, "two running leaders in cluster {ci}: {l:?}");
        l.first().copied()
    }

    /// Every injected mode record of each cluster is in the other
    /// cluster's store exactly once, and every running node of the other
    /// cluster applied each of them once. Returns the duplicates seen.
    fn check_exactly_once(&self) -> u64 {
        let mut dups = 0;
        for (ci, c) in self.clusters.iter().enumerate() {
            let other = &self.clusters[1 - ci];
            let sent: BTreeSet<(u64, u64)> = self
                .injected
                .iter()
                .filter(|(k, ..)| *k == c.id)
                .map(|&(_, n, o)| (n, o))
                .collect();
            assert!(!sent.is_empty(), "cluster {} injected nothing", c.id);
            let queued = other.store.messages(c.id);
            let mut seen: BTreeMap<(u64, u64), u32> = BTreeMap::new();
            for m in &queued {
                *seen.entry((m.node, m.oseq)).or_default() += 1;
            }
            assert!(seen.values().all(|&n| n == 1), "a record queued twice");
            let crossed: BTreeSet<_> = seen.keys().copied().collect();
            assert_eq!(crossed, sent, "records of cluster {} that crossed", c.id);
            assert_eq!(
                other.store.cursor(c.id),
                queued.last().map(|m| m.seq),
                "cluster {} acked all of cluster {}'s queue",
                other.id,
                c.id
            );
            for m in other.members.iter().filter(|m| m.alive) {
                let r = m.node.relay().counters();
                assert_eq!(
                    r.applied,
                    sent.len() as u64,
                    "node {} of cluster {} applied each message of cluster {} once",
                    m.node.id(),
                    other.id,
                    c.id
                );
                let hwm: Vec<_> = m.node.relay().applied().collect();
                assert_eq!(hwm, [(c.id, queued.last().map_or(0, |m| m.seq))]);
                dups += r.duplicates;
            }
        }
        dups
    }

    /// A digest of the whole run: trace and final counters.
    fn fingerprint(&self) -> Vec<String> {
        let mut t = self.trace.clone();
        for c in &self.clusters {
            for m in &c.members {
                // Peers in the node's map order: the order follows the
                // hash seed alone, never a key drawn behind the core's back.
                let peers: Vec<u32> = m.node.peers().map(|(id, _)| id).collect();
                t.push(format!(
                    "c{} n{} {:?} {:?} {:?} peers {peers:?}",
                    c.id,
                    m.node.id(),
                    m.election.counters(),
                    m.node.relay().counters(),
                    m.node.relay().applied().collect::<Vec<_>>()
                ));
            }
        }
        t
    }
}

/// The forwarder of cluster 1 dies; another node of cluster 1 takes over
/// within `lease + lease / 3 + poll` (plus the store calls' 3 ms).
fn forwarder_kill(seed: u64) -> World {
    let mut w = World::new(seed);
    let every = Some(Duration::from_millis(25));
    w.run(Duration::from_secs(2), every);
    let dead = w.leader(0).expect("cluster 1 elected a forwarder");
    w.clusters[0].members[dead].alive = false;
    let killed_at = w.now;
    let id = w.clusters[0].members[dead].node.id();
    w.log(1, id, "killed".into());
    w.run(Duration::from_secs(3), every);
    let (took_at, _, by) = *w
        .leaders
        .iter()
        .find(|(t, c, _)| *t > killed_at && *c == 1)
        .expect("a new forwarder in cluster 1");
    assert_ne!(by, id);
    println!(
        "seed {seed:#x}: c1n{id} killed at {:?}, c1n{by} forwarder {:?} later",
        killed_at,
        took_at - killed_at
    );
    let bound = LEASE + LEASE / 3 + POLL + Duration::from_millis(6);
    assert!(
        took_at - killed_at <= bound,
        "takeover after {:?}, bound {bound:?}",
        took_at - killed_at
    );
    w.run(Duration::from_secs(3), None);
    w.check_exactly_once();
    w
}

/// Cluster 2's forwarder hangs after it multicast fetched messages and
/// before its ack left; it is resumed after two leases.
fn hung_forwarder(seed: u64) -> World {
    let mut w = World::new(seed);
    let every = Some(Duration::from_millis(25));
    w.run(Duration::from_secs(2), every);
    let l = w.leader(1).expect("cluster 2 elected a forwarder");
    w.clusters[1].members[l].pause_after_fetch = true;
    let id = w.clusters[1].members[l].node.id();
    let start = w.now;
    while !w.clusters[1].members[l].paused {
        assert!(
            w.now - start < Duration::from_secs(5),
            "no fetch to pause after"
        );
        w.run(TICK, every);
    }
    w.run(LEASE * 2, every);
    let took = w.leader(1).expect("another forwarder took over");
    assert_ne!(took, l);
    let before = w.clusters[1].members[l].election.counters();
    w.clusters[1].members[l].paused = false;
    w.log(2, id, "resumed".into());
    let resumed = w.trace.len();
    w.run(Duration::from_secs(2), every);
    let after = w.clusters[1].members[l].election.counters();
    assert_eq!(
        after.ran_out,
        before.ran_out + 1,
        "stood down by its own clock"
    );
    // It sent the ack it had pending when it resumed; the store refused it
    // (the machine gave that call up when it stood down a moment later).
    let me = format!("c2n{id} ");
    assert!(
        w.trace[resumed..]
            .iter()
            .any(|l| l.contains(&me) && l.contains("Ack {") && l.contains("Err(Fenced(")),
        "its late ack was fenced"
    );
    assert_eq!(w.leader(1), Some(took), "the successor kept the lease");
    w.run(Duration::from_secs(3), None);
    let dups = w.check_exactly_once();
    assert!(
        dups > 0,
        "the successor multicast again what the hung one had"
    );
    w
}

/// The clusters cannot reach each other for 5 s, then can again.
fn partition(seed: u64) -> World {
    let mut w = World::new(seed);
    let every = Some(Duration::from_millis(25));
    w.run(Duration::from_secs(2), every);
    for l in &mut w.links {
        l.set_cut(true);
    }
    w.trace.push("partition".into());
    w.run(Duration::from_secs(5), every);
    let c1 = w.clusters[1].store.messages(1).len();
    for l in &mut w.links {
        l.set_cut(false);
    }
    w.trace.push("healed".into());
    w.run(Duration::from_secs(3), every);
    assert!(
        w.clusters[1].store.messages(1).len() > c1 + 100,
        "the backlog crossed"
    );
    w.run(Duration::from_secs(3), None);
    w.check_exactly_once();
    w
}

/// Cluster 1's store stops answering for 3 s (calls hang): its forwarder
/// gives the calls up, stands down by its own clock and nobody forwards;
/// once the store answers again a forwarder takes over, publishes its
/// whole ring again (the queue skips what it holds) and nothing is lost.
fn hung_store(seed: u64) -> World {
    let mut w = World::new(seed);
    let every = Some(Duration::from_millis(25));
    w.run(Duration::from_secs(2), every);
    let l = w.leader(0).expect("cluster 1 elected a forwarder");
    let before = w.clusters[0].members[l].election.counters();
    w.clusters[0].store.set_fault(Fault::Hang);
    w.trace.push("store 1 hangs".into());
    w.run(LEASE + Duration::from_millis(50), every);
    assert_eq!(w.leader(0), None, "no forwarder while the store hangs");
    let hung = w.clusters[0].members[l].election.counters();
    assert_eq!(hung.ran_out, before.ran_out + 1);
    assert!(hung.lease_errors > before.lease_errors, "renewals given up");
    w.run(Duration::from_secs(2), every);
    w.clusters[0].store.set_fault(Fault::None);
    w.trace.push("store 1 answers".into());
    w.run(Duration::from_secs(2), every);
    let now = w.leader(0).expect("a forwarder again");
    let c = w.clusters[0].members[now].election.counters();
    assert!(c.takeovers >= 1 && c.publish_skipped > 0, "{c:?}");
    w.run(Duration::from_secs(3), None);
    w.check_exactly_once();
    w
}

fn deterministic(scenario: fn(u64) -> World) {
    let a = scenario(0x5eed).fingerprint();
    let b = scenario(0x5eed).fingerprint();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "same seed, same trace");
    }
    let c = scenario(0xfeed_beef).fingerprint();
    assert_ne!(a, c, "another seed, another run");
}

#[test]
fn forwarder_kill_fails_over_within_the_bound_and_loses_nothing() {
    deterministic(forwarder_kill);
}

#[test]
fn a_hung_forwarder_stands_down_and_its_messages_apply_once() {
    deterministic(hung_forwarder);
}

#[test]
fn partition_then_heal_every_mode_crosses_exactly_once() {
    deterministic(partition);
}

#[test]
fn a_hung_store_stops_forwarding_until_it_answers_and_loses_nothing() {
    deterministic(hung_store);
}
