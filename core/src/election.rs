//! The forwarder's election and its forwarding rounds, as a sans-IO state
//! machine: fed `now` and the store's replies, it says which store calls
//! to make ([`Output::Send`]) and which to give up ([`Output::Cancel`]).
//! `node/src/forwarder.rs` runs it on tokio over `shoal-tarantool`; the
//! simulator runs it over [`crate::fakes`].
//!
//! The rules (each one a review finding of the I/O version):
//!
//! - The lease is asked for every third of `lease` (renewal, or takeover
//!   once it expired); the store bumps a fencing epoch when the holder
//!   changes. A new epoch for this node makes its whole relay ring pending
//!   again: the previous forwarder may not have published it.
//! - The lease is valid by this node's own clock until `lease` after the
//!   renewal was *sent* (the store's expiry is later than that). When that
//!   time passes without a renewal the node stands down, whatever the
//!   store says later; when a write answers [`StoreError::Fenced`] it
//!   stands down at once.
//! - Lease calls and forwarding calls are two lanes: a forwarding round
//!   never delays a renewal. Every call gives up after `request_timeout`,
//!   which is at most `lease` (a hung renewal cannot outlive the lease).
//! - A round, every `poll` while holding: publish what the relay ring holds
//!   unpublished (`batch` at most), fetch the other clusters' messages,
//!   inject each as a `REMOTE_MODE` record, ack the highest sequence per
//!   origin. A failed step ends the round; all steps are idempotent, so
//!   the next round redoes what is missing.
//! - Failover is bounded: a dead holder's lease runs out at most `lease`
//!   after its last renewal, and every candidate asks every `lease / 3`,
//!   so another node takes over within `lease + lease / 3` plus a call.
//! - Stopping releases a held lease, so a planned restart hands over at
//!   once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::node::Node;
use crate::ports::{CrossQueue, Lease, LeaseState, Published, QueuedMsg, StoreError};
use crate::relay::RelayMsg;

/// Messages per publish or fetch when the caller does not say.
pub const DEFAULT_BATCH: usize = 500;

/// What the election needs to know.
#[derive(Debug, Clone)]
pub struct ElectionParams {
    pub cluster: u32,
    /// This node's name as lease holder.
    pub name: String,
    pub lease: Duration,
    /// Pause between forwarding rounds.
    pub poll: Duration,
    /// Longest wait for a store call (capped at `lease`).
    pub request_timeout: Duration,
    /// Messages per publish or fetch.
    pub batch: usize,
}

/// Names one store call, so a late reply to a call given up is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

/// A store call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Acquire {
        cluster: u32,
        node: String,
        ttl_ms: u64,
    },
    Release {
        cluster: u32,
        node: String,
    },
    Publish {
        cluster: u32,
        node: String,
        epoch: u64,
        msgs: Vec<RelayMsg>,
    },
    Fetch {
        consumer: u32,
        limit: usize,
    },
    Ack {
        consumer: u32,
        node: String,
        epoch: u64,
        origin: u64,
        seq: u64,
    },
}

impl Request {
    /// Lease calls (acquire, release) and forwarding calls run side by
    /// side: at most one of each in flight.
    pub fn is_lease(&self) -> bool {
        matches!(self, Request::Acquire { .. } | Request::Release { .. })
    }
}

/// A store call's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Lease(Result<LeaseState, StoreError>),
    Released(Result<bool, StoreError>),
    Published(Result<Published, StoreError>),
    Fetched(Result<Vec<QueuedMsg>, StoreError>),
    Acked(Result<u64, StoreError>),
}

/// Makes the call `req` on `port`. The one place requests meet the traits.
pub async fn execute<P: Lease + CrossQueue + ?Sized>(port: &P, req: &Request) -> Reply {
    match req {
        Request::Acquire {
            cluster,
            node,
            ttl_ms,
        } => Reply::Lease(port.acquire(*cluster, node, *ttl_ms).await),
        Request::Release { cluster, node } => Reply::Released(port.release(*cluster, node).await),
        Request::Publish {
            cluster,
            node,
            epoch,
            msgs,
        } => Reply::Published(port.publish(*cluster, node, *epoch, msgs).await),
        Request::Fetch { consumer, limit } => Reply::Fetched(port.fetch(*consumer, *limit).await),
        Request::Ack {
            consumer,
            node,
            epoch,
            origin,
            seq,
        } => Reply::Acked(port.ack(*consumer, node, *epoch, *origin, *seq).await),
    }
}

/// What happened, for logs and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node holds the lease at a new epoch.
    Leader { epoch: u64 },
    /// Another node holds it.
    Lost { holder: String, epoch: u64 },
    /// The lease ran out by this node's clock before it was renewed.
    RanOut { epoch: u64 },
    /// A write under the lease was refused.
    Fenced { error: StoreError },
    /// A call failed or got no answer in time (counted; retried later).
    Failed { lease: bool, error: StoreError },
    /// Stopped; `released` says whether the store confirmed the release.
    Stopped { released: bool },
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(OpId, Request),
    /// Drop the call (its reply, if any, would be ignored).
    Cancel(OpId),
    Event(Event),
}

/// Counters, for metrics. They only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElectionCounters {
    pub takeovers: u64,
    pub lease_errors: u64,
    pub fenced: u64,
    /// Times the lease ran out by this node's clock.
    pub ran_out: u64,
    pub published: u64,
    pub publish_skipped: u64,
    pub fetched: u64,
    /// Fetched messages not injected: expired on arrival, or a code or
    /// value this version does not relay.
    pub dropped: u64,
    /// Forwarding calls that failed or timed out.
    pub errors: u64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    /// By this node's clock: the store's expiry is later than this.
    valid_until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: OpId,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Publish { through: u64 },
    Fetch,
    Ack,
}

#[derive(Debug)]
enum Round {
    /// No round running; the next one starts at this time (if holding).
    Idle { next: Instant },
    Running {
        op: InFlight,
        step: Step,
        epoch: u64,
    },
}

/// The election and forwarding state of one node.
#[derive(Debug)]
pub struct Election {
    p: ElectionParams,
    held: Option<Held>,
    /// Last epoch seen in a lease answer (for metrics).
    epoch: u64,
    next_lease: Instant,
    lease_op: Option<(InFlight, Instant)>,
    round: Round,
    acks: VecDeque<(u64, u64)>,
    next_id: u64,
    out: VecDeque<Output>,
    stopping: bool,
    release_op: Option<InFlight>,
    done: bool,
    counters: ElectionCounters,
}

impl Election {
    /// A candidate starting at `now`; it asks for the lease at once.
    pub fn new(mut p: ElectionParams, now: Instant) -> Election {
        // Degenerate values would make it spin; the config refuses them.
        p.lease = p.lease.max(Duration::from_millis(3));
        p.poll = p.poll.max(Duration::from_millis(1));
        p.request_timeout = p.request_timeout.min(p.lease);
        p.batch = p.batch.max(1);
        Election {
            p,
            held: None,
            epoch: 0,
            next_lease: now,
            lease_op: None,
            round: Round::Idle { next: now },
            acks: VecDeque::new(),
            next_id: 0,
            out: VecDeque::new(),
            stopping: false,
            release_op: None,
            done: false,
            counters: ElectionCounters::default(),
        }
    }

    pub fn counters(&self) -> ElectionCounters {
        self.counters
    }

    /// Whether this node acts as the forwarder now.
    pub fn is_leader(&self) -> bool {
        self.held.is_some()
    }

    /// The last epoch the store reported.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Stopped, and the release (if any) answered or given up.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Election::handle_timeout`] wants to run next (None once done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        if self.stopping {
            return self.release_op.map(|op| op.deadline);
        }
        let mut t = match self.lease_op {
            Some((op, _)) => op.deadline,
            None => self.next_lease,
        };
        if let Some(h) = self.held {
            t = t.min(h.valid_until);
            t = t.min(match &self.round {
                Round::Idle { next } => *next,
                Round::Running { op, .. } => op.deadline,
            });
        }
        Some(t)
    }

    /// Timers: renewal due, lease run out, calls given up, rounds.
    pub fn handle_timeout(&mut self, now: Instant, node: &mut Node) {
        if self.stopping {
            if self.release_op.is_some_and(|op| now >= op.deadline) {
                let op = self.release_op.take().map(|op| op.id);
                self.finish(op, false);
            }
            return;
        }
        if let Some((op, _)) = self.lease_op {
            if now >= op.deadline {
                self.lease_op = None;
                self.out.push_back(Output::Cancel(op.id));
                self.counters.lease_errors += 1;
                self.event(Event::Failed {
                    lease: true,
                    error: timed_out(self.p.request_timeout),
                });
            }
        }
        if let Round::Running { op, .. } = self.round {
            if now >= op.deadline {
                self.out.push_back(Output::Cancel(op.id));
                self.counters.errors += 1;
                self.event(Event::Failed {
                    lease: false,
                    error: timed_out(self.p.request_timeout),
                });
                self.end_round(now);
            }
        }
        self.step(now, node);
    }

    /// The answer to call `id`; answers to calls given up are ignored.
    pub fn handle_reply(&mut self, now: Instant, id: OpId, reply: Reply, node: &mut Node) {
        if self.release_op.is_some_and(|op| op.id == id) {
            self.release_op = None;
            let released = matches!(reply, Reply::Released(Ok(true)));
            self.finish(None, released);
            return;
        }
        if self.stopping {
            return;
        }
        match self.lease_op {
            Some((op, sent)) if op.id == id => {
                self.lease_op = None;
                if let Reply::Lease(r) = reply {
                    self.on_lease(now, sent, r, node);
                }
            }
            _ => match self.round {
                Round::Running { op, step, epoch } if op.id == id => {
                    self.on_step(now, step, epoch, reply, node)
                }
                _ => return,
            },
        }
        self.step(now, node);
    }

    /// Stops: gives up every call and releases a lease this node holds (or
    /// may have just taken). Run until [`Election::is_done`].
    pub fn stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if let Round::Running { op, .. } = self.round {
            self.out.push_back(Output::Cancel(op.id));
        }
        self.round = Round::Idle { next: now };
        let asking = self.lease_op.take();
        if let Some((op, _)) = asking {
            self.out.push_back(Output::Cancel(op.id));
        }
        if self.held.is_none() && asking.is_none() {
            self.finish(None, false);
            return;
        }
        let id = self.send(Request::Release {
            cluster: self.p.cluster,
            node: self.p.name.clone(),
        });
        self.release_op = Some(InFlight {
            id,
            deadline: now + self.p.request_timeout,
        });
    }

    fn finish(&mut self, cancel: Option<OpId>, released: bool) {
        if let Some(id) = cancel {
            self.out.push_back(Output::Cancel(id));
        }
        self.held = None;
        self.done = true;
        self.event(Event::Stopped { released });
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn send(&mut self, req: Request) -> OpId {
        self.next_id += 1;
        let id = OpId(self.next_id);
        self.out.push_back(Output::Send(id, req));
        id
    }

    fn in_flight(&self, id: OpId, now: Instant) -> InFlight {
        InFlight {
            id,
            deadline: now + self.p.request_timeout,
        }
    }

    /// Issues what is due now.
    fn step(&mut self, now: Instant, node: &mut Node) {
        if let Some(h) = self.held {
            if now >= h.valid_until {
                self.counters.ran_out += 1;
                self.event(Event::RanOut { epoch: h.epoch });
                self.stand_down(now);
            }
        }
        if self.lease_op.is_none() && now >= self.next_lease {
            self.next_lease = now + self.p.lease / 3;
            let id = self.send(Request::Acquire {
                cluster: self.p.cluster,
                node: self.p.name.clone(),
                ttl_ms: u64::try_from(self.p.lease.as_millis()).unwrap_or(u64::MAX),
            });
            self.lease_op = Some((self.in_flight(id, now), now));
        }
        if let (Some(h), Round::Idle { next }) = (self.held, &self.round) {
            if now >= *next {
                self.start_round(now, h.epoch, node);
            }
        }
    }

    fn stand_down(&mut self, now: Instant) {
        self.held = None;
        if let Round::Running { op, .. } = self.round {
            self.out.push_back(Output::Cancel(op.id));
        }
        self.round = Round::Idle { next: now };
        self.acks.clear();
    }

    fn end_round(&mut self, now: Instant) {
        self.round = Round::Idle {
            next: now + self.p.poll,
        };
        self.acks.clear();
    }

    fn run(&mut self, now: Instant, step: Step, epoch: u64, req: Request) {
        let id = self.send(req);
        self.round = Round::Running {
            op: self.in_flight(id, now),
            step,
            epoch,
        };
    }

    fn start_round(&mut self, now: Instant, epoch: u64, node: &mut Node) {
        let (msgs, through) = node.relay().pending(self.p.batch);
        if msgs.is_empty() {
            self.fetch(now, epoch);
        } else {
            let req = Request::Publish {
                cluster: self.p.cluster,
                node: self.p.name.clone(),
                epoch,
                msgs,
            };
            self.run(now, Step::Publish { through }, epoch, req);
        }
    }

    fn fetch(&mut self, now: Instant, epoch: u64) {
        let req = Request::Fetch {
            consumer: self.p.cluster,
            limit: self.p.batch,
        };
        self.run(now, Step::Fetch, epoch, req);
    }

    fn ack_next(&mut self, now: Instant, epoch: u64) {
        match self.acks.pop_front() {
            Some((origin, seq)) => {
                let req = Request::Ack {
                    consumer: self.p.cluster,
                    node: self.p.name.clone(),
                    epoch,
                    origin,
                    seq,
                };
                self.run(now, Step::Ack, epoch, req);
            }
            None => self.end_round(now),
        }
    }

    fn on_lease(
        &mut self,
        now: Instant,
        sent: Instant,
        r: Result<LeaseState, StoreError>,
        node: &mut Node,
    ) {
        let l = match r {
            Ok(l) => l,
            Err(error) => {
                // Keep acting only while the old lease is valid by our clock.
                self.counters.lease_errors += 1;
                self.event(Event::Failed { lease: true, error });
                return;
            }
        };
        self.epoch = l.epoch;
        if l.holder != self.p.name {
            if self.held.is_some() {
                self.event(Event::Lost {
                    holder: l.holder,
                    epoch: l.epoch,
                });
            }
            self.stand_down(now);
            return;
        }
        if self.held.map(|h| h.epoch) != Some(l.epoch) {
            if self.held.is_some() {
                // Lost and retaken between two renewals: a new round.
                self.stand_down(now);
            }
            self.counters.takeovers += 1;
            self.event(Event::Leader { epoch: l.epoch });
            // What the previous holder may not have published.
            node.relay_mut().restart();
        }
        self.held = Some(Held {
            epoch: l.epoch,
            valid_until: sent + self.p.lease,
        });
    }

    fn on_step(&mut self, now: Instant, step: Step, epoch: u64, reply: Reply, node: &mut Node) {
        let current = self.held.is_some_and(|h| h.epoch == epoch);
        let error = match (step, reply) {
            (Step::Publish { through }, Reply::Published(Ok(p))) => {
                // True whoever holds the lease now: they are in the queue.
                node.relay_mut().published(through);
                self.counters.published += p.inserted;
                self.counters.publish_skipped += p.skipped;
                if current {
                    self.fetch(now, epoch);
                } else {
                    self.end_round(now);
                }
                return;
            }
            (Step::Fetch, Reply::Fetched(Ok(rows))) => {
                if current {
                    self.deliver(now, &rows, node);
                    self.ack_next(now, epoch);
                } else {
                    self.end_round(now);
                }
                return;
            }
            (Step::Ack, Reply::Acked(Ok(_))) => {
                if current {
                    self.ack_next(now, epoch);
                } else {
                    self.end_round(now);
                }
                return;
            }
            (_, Reply::Published(Err(e)) | Reply::Fetched(Err(e)) | Reply::Acked(Err(e))) => e,
            (_, other) => StoreError::BadReply(format!("unexpected reply {other:?}")),
        };
        if let StoreError::Fenced(_) = error {
            self.counters.fenced += 1;
            self.event(Event::Fenced { error });
            if current {
                self.stand_down(now);
            }
        } else {
            self.counters.errors += 1;
            self.event(Event::Failed {
                lease: false,
                error,
            });
        }
        self.end_round(now);
    }

    /// Multicasts fetched messages into the cluster and queues the acks
    /// (the highest sequence per origin, dropped rows included).
    fn deliver(&mut self, now: Instant, rows: &[QueuedMsg], node: &mut Node) {
        self.counters.fetched += rows.len() as u64;
        let now_us = node.wall_us(now);
        for m in rows {
            match self.acks.back_mut() {
                Some((c, s)) if *c == m.cluster => *s = (*s).max(m.seq),
                _ => self.acks.push_back((m.cluster, m.seq)),
            }
            match m.to_record(now_us) {
                Some(r) => {
                    // Refused only for a record this code built wrong.
                    if node.inject(now, r).is_err() {
                        self.counters.dropped += 1;
                    }
                }
                None => self.counters.dropped += 1,
            }
        }
        if !rows.is_empty() {
            node.flush();
        }
    }
}

fn timed_out(after: Duration) -> StoreError {
    StoreError::OutcomeUnknown(format!("no answer within {after:?}"))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;
    use crate::node::NodeParams;
    use crate::state::StateLimits;
    use crate::ModeRules;

    const LEASE: Duration = Duration::from_millis(900);

    fn node(now: Instant) -> Node {
        let p = NodeParams {
            id: 1,
            cluster: 1,
            max_datagram: 1400,
            flush: Duration::ZERO,
            keys: None,
            limits: StateLimits {
                load_stale: Duration::from_millis(500),
                max_resources: 100,
                session_capacity: 100,
                default_ttl: Duration::from_secs(10),
                clock_skew: Duration::from_millis(500),
            },
            max_peers: 4,
            modes: ModeRules::default(),
            store: None,
            relay_capacity: 16,
            hash_seed: 1,
        };
        Node::new(p, now, 1_000_000, 1_000_000)
    }

    fn election(now: Instant, request_timeout: Duration) -> Election {
        Election::new(
            ElectionParams {
                cluster: 1,
                name: "me".into(),
                lease: LEASE,
                poll: Duration::from_millis(20),
                request_timeout,
                batch: 10,
            },
            now,
        )
    }

    fn sends(e: &mut Election) -> Vec<(OpId, Request)> {
        let mut v = Vec::new();
        while let Some(o) = e.poll_output() {
            if let Output::Send(id, r) = o {
                v.push((id, r));
            }
        }
        v
    }

    fn granted(holder: &str, epoch: u64) -> Reply {
        Reply::Lease(Ok(LeaseState {
            holder: holder.into(),
            epoch,
            expires_us: 0,
            now_us: 0,
        }))
    }

    /// Takes the lease at `t0` (answered 100 ms later); returns the fetch
    /// of the first round, in flight.
    fn lead(e: &mut Election, n: &mut Node, t0: Instant) -> OpId {
        e.handle_timeout(t0, n);
        let s = sends(e);
        assert!(matches!(s[..], [(_, Request::Acquire { ttl_ms: 900, .. })]));
        e.handle_reply(t0 + Duration::from_millis(100), s[0].0, granted("me", 4), n);
        assert!(e.is_leader());
        let s = sends(e);
        assert!(matches!(
            s[..],
            [(
                _,
                Request::Fetch {
                    consumer: 1,
                    limit: 10
                }
            )]
        ));
        s[0].0
    }

    #[test]
    fn a_forwarding_call_in_flight_never_delays_renewal() {
        let t0 = Instant::now();
        let (mut n, mut e) = (node(t0), election(t0, LEASE));
        let _fetch = lead(&mut e, &mut n, t0);
        // The fetch hangs; at lease/3 the renewal goes out beside it.
        assert_eq!(e.poll_timeout(), Some(t0 + LEASE / 3));
        e.handle_timeout(t0 + LEASE / 3, &mut n);
        let s = sends(&mut e);
        assert!(matches!(s[..], [(_, Request::Acquire { .. })]), "{s:?}");
    }

    #[test]
    fn the_lease_runs_out_by_its_own_clock_from_when_the_renewal_was_sent() {
        let t0 = Instant::now();
        let (mut n, mut e) = (node(t0), election(t0, Duration::from_millis(50)));
        lead(&mut e, &mut n, t0);
        let mut t = t0;
        while t < t0 + LEASE {
            t += Duration::from_millis(10);
            e.handle_timeout(t, &mut n);
            for (id, r) in sends(&mut e) {
                if r.is_lease() {
                    let err = StoreError::Unavailable("down".into());
                    e.handle_reply(t, id, Reply::Lease(Err(err)), &mut n);
                }
            }
            // Valid until t0 + lease (sent at t0), not t0 + 100 ms + lease.
            assert_eq!(e.is_leader(), t < t0 + LEASE, "at {:?}", t - t0);
        }
        let c = e.counters();
        assert_eq!((c.ran_out, c.takeovers), (1, 1));
        assert!(c.lease_errors >= 2);
    }

    #[test]
    fn fenced_stands_down_at_once_and_hung_calls_are_given_up() {
        let t0 = Instant::now();
        let (mut n, mut e) = (node(t0), election(t0, Duration::from_secs(60)));
        let fetch = lead(&mut e, &mut n, t0);
        let t = t0 + Duration::from_millis(150);
        let rows = vec![QueuedMsg {
            cluster: 2,
            seq: 3,
            node: 9,
            oseq: 1,
            code: 2,
            ttl_ms: 60_000,
            at_us: 1_000_000,
            fields: [5, 1, 0, 0],
        }];
        e.handle_reply(t, fetch, Reply::Fetched(Ok(rows)), &mut n);
        assert_eq!(n.mode(t, 5).level, 1, "the fetched mode is applied");
        let s = sends(&mut e);
        let [(
            _,
            Request::Ack {
                origin: 2,
                seq: 3,
                epoch: 4,
                ..
            },
        )] = s[..]
        else {
            panic!("{s:?}");
        };
        // request_timeout is capped at the lease: a hung ack is given up.
        assert_eq!(e.poll_timeout(), Some(t0 + LEASE / 3));
        e.handle_timeout(t0 + LEASE / 3, &mut n);
        let renew = sends(&mut e)[0].0;
        e.handle_reply(t0 + LEASE / 3, renew, granted("me", 4), &mut n);
        e.handle_timeout(t + LEASE, &mut n);
        assert!(e.counters().errors == 1 && e.is_leader());
        // The next round's fetch answers fenced: stand down at once.
        let mut t = t + LEASE;
        let fetch = loop {
            t += Duration::from_millis(10);
            e.handle_timeout(t, &mut n);
            if let Some((id, _)) = sends(&mut e).into_iter().find(|(_, r)| !r.is_lease()) {
                break id;
            }
        };
        let fenced = StoreError::Fenced("fenced: taken".into());
        e.handle_reply(t, fetch, Reply::Fetched(Err(fenced)), &mut n);
        assert!(!e.is_leader());
        assert_eq!(e.counters().fenced, 1);
    }

    #[test]
    fn stopping_releases_a_held_lease() {
        let t0 = Instant::now();
        let (mut n, mut e) = (node(t0), election(t0, LEASE));
        lead(&mut e, &mut n, t0);
        e.stop(t0 + Duration::from_millis(200));
        let s = sends(&mut e);
        assert!(matches!(s[..], [(_, Request::Release { .. })]), "{s:?}");
        assert!(!e.is_done());
        let t = t0 + Duration::from_millis(210);
        e.handle_reply(t, s[0].0, Reply::Released(Ok(true)), &mut n);
        assert!(e.is_done() && !e.is_leader());
        assert_eq!(e.poll_timeout(), None);
    }
}
