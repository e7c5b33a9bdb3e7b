//! The state log and the save path's master choice.
//!
//! - [`StateLog`]: one master of the cluster's state store as the save
//!   path needs it: save a batch (acknowledged at an [`AckLevel`]), replay
//!   the live rows, health, ping. `shoal-tarantool` implements it over
//!   IPROTO; [`FakeLog`] here, in memory with injected faults, serves unit
//!   tests and the simulator.
//! - [`SavePath`]: the sans-IO decision of where the next batch goes. Fed
//!   `now`, connection changes and the outcome of every request, it
//!   answers which master to send to, which master to ping, and when to
//!   be woken. Rules: at start only the preferred master (first) for a
//!   grace period; then the active master while it is healthy, else the
//!   next healthy one (a failover); a master is *suspect* after
//!   `suspect_after` consecutive timeouts or lost requests (a hung master
//!   stays "connected": only the silence says it is gone) and healthy
//!   again after a ping answers or a fresh connection is made; the
//!   preferred master is taken back once it has been healthy for
//!   `failback_after`; a master that refuses (answers with an error) is
//!   backed off from, not failed over from.
//!
//! The backlog itself (batches, in flight, retry in front) is
//! [`Backlog`](crate::Backlog), in the node; the driver moves batches
//! between the two.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::store::Row;

/// How far a batch must have got before it counts as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Committed to the master's WAL.
    Local,
    /// Committed on the master and acknowledged by its peer: a master
    /// lost with its disk loses no saved batch.
    Replicated,
}

/// How far a saved batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `Local` was asked.
    NotAsked,
    /// The peer has the batch.
    Confirmed,
    /// The peer is not replicating from this master: saved locally only.
    PeerDown,
    /// The peer did not confirm within the master's wait: saved locally
    /// only.
    TimedOut,
}

impl Replication {
    /// Whether `Replicated` was asked and could not be had.
    pub fn fell_back(self) -> bool {
        matches!(self, Replication::PeerDown | Replication::TimedOut)
    }
}

/// A master's answer to a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveAck {
    /// Rows the master committed (all of the batch, or an error).
    pub rows: u64,
    pub replication: Replication,
}

/// Why a state-log request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// No connection now; nothing was sent.
    #[error("not connected")]
    Disconnected,
    /// Sent, and no answer in time: it may or may not have been done.
    #[error("no answer within {0:?}, outcome unknown")]
    Timeout(Duration),
    /// The connection dropped with the request in flight.
    #[error("connection lost, outcome unknown: {0}")]
    Lost(String),
    /// The master answered with an error.
    #[error("refused by the store: {0}")]
    Refused(String),
    /// The master's answer is not what the procedure returns.
    #[error("unexpected answer: {0}")]
    BadReply(String),
}

/// What a failure says about the master, for [`SavePath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer (timeout, lost connection, not connected): counts
    /// towards suspicion.
    Silent,
    /// It answered, with an error: back off, stay.
    Refused,
}

impl LogError {
    pub fn failure(&self) -> Failure {
        match self {
            LogError::Disconnected | LogError::Timeout(_) | LogError::Lost(_) => Failure::Silent,
            LogError::Refused(_) | LogError::BadReply(_) => Failure::Refused,
        }
    }
}

/// One master's replication as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub read_only: bool,
    pub log_len: u64,
    /// Per peer: (upstream, downstream) status, e.g. `follow`.
    pub peers: Vec<(String, String)>,
}

/// One master of the state store.
///
/// Methods are `async fn`-style (no runtime here): the driver owns the
/// timeouts. Saving is idempotent: a batch saved twice, or on both
/// masters, writes the same tuples under the same keys.
pub trait StateLog: Send + Sync {
    /// The master's address, for logs and metrics.
    fn addr(&self) -> &str;

    /// Whether a connection is up now.
    fn is_connected(&self) -> bool;

    /// Saves `rows` under `node`'s keys in one transaction and answers
    /// once they are committed at `ack` (or once the master gave up
    /// waiting for its peer, see [`Replication`]).
    fn save(
        &self,
        node: &str,
        rows: &[Row],
        ack: AckLevel,
    ) -> impl Future<Output = Result<SaveAck, LogError>> + Send;

    /// Every live row (expiry after `now_wall_us`) of every node.
    fn replay(
        &self,
        now_wall_us: u64,
    ) -> impl Future<Output = Result<Vec<(String, Row)>, LogError>> + Send;

    fn health(&self) -> impl Future<Output = Result<Health, LogError>> + Send;

    /// A round trip that does nothing.
    fn ping(&self) -> impl Future<Output = Result<(), LogError>> + Send;
}

// ------------------------------------------------------------ the machine

/// The save path's rules, from `[store]`.
#[derive(Debug, Clone, Copy)]
pub struct SavePathParams {
    /// Masters, preferred first (at least one).
    pub masters: usize,
    /// Batches in flight at most.
    pub in_flight: usize,
    /// Consecutive silent failures (timeouts, lost requests, failed
    /// pings) after which a master is suspect.
    pub suspect_after: u32,
    /// From start, only the preferred master is used for this long: all
    /// connections start at once, and it should not lose to whichever
    /// handshake happens to finish first.
    pub preferred_grace: Duration,
    /// A master with no request for this long is pinged; a suspect one
    /// is pinged this often.
    pub ping_every: Duration,
    /// The preferred master is taken back after being healthy this long.
    pub failback_after: Duration,
    /// Back-off after a refusal, doubling up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl SavePathParams {
    /// Defaults for `masters` masters and `in_flight` batches.
    pub fn new(masters: usize, in_flight: usize) -> SavePathParams {
        SavePathParams {
            masters,
            in_flight,
            suspect_after: 2,
            preferred_grace: Duration::from_millis(500),
            ping_every: Duration::from_millis(500),
            failback_after: Duration::from_secs(5),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_secs(1),
        }
    }
}

/// What the machine decided, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveEvent {
    /// Saves go to `to` now instead of `from`.
    Failover { from: usize, to: usize },
    /// A master stopped answering: no batch goes to it until it answers.
    Suspect(usize),
    /// A suspect master answered again.
    Recovered(usize),
}

/// Counters (they never go down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavePathCounters {
    pub failovers: u64,
    pub suspects: u64,
    pub recoveries: u64,
}

#[derive(Debug, Clone)]
struct MasterState {
    connected: bool,
    suspect: bool,
    /// Consecutive silent failures.
    silent: u32,
    /// Healthy (connected, not suspect) since.
    healthy_since: Option<Instant>,
    /// Last request sent or answer received.
    last_io: Instant,
    ping_in_flight: bool,
    last_ping: Option<Instant>,
}

impl MasterState {
    fn healthy(&self) -> bool {
        self.connected && !self.suspect
    }
}

/// Where batches go. See the module docs for the rules.
#[derive(Debug)]
pub struct SavePath {
    p: SavePathParams,
    started: Instant,
    masters: Vec<MasterState>,
    active: usize,
    in_flight: usize,
    retry: Duration,
    backoff_until: Option<Instant>,
    events: VecDeque<SaveEvent>,
    counters: SavePathCounters,
}

impl SavePath {
    pub fn new(p: SavePathParams, now: Instant) -> SavePath {
        let p = SavePathParams {
            masters: p.masters.max(1),
            in_flight: p.in_flight.max(1),
            suspect_after: p.suspect_after.max(1),
            ..p
        };
        let m = MasterState {
            connected: false,
            suspect: false,
            silent: 0,
            healthy_since: None,
            last_io: now,
            ping_in_flight: false,
            last_ping: None,
        };
        SavePath {
            masters: vec![m; p.masters],
            started: now,
            active: 0,
            in_flight: 0,
            retry: p.retry_min,
            backoff_until: None,
            events: VecDeque::new(),
            counters: SavePathCounters::default(),
            p,
        }
    }

    /// The master saves go to (or went to last).
    pub fn active(&self) -> usize {
        self.active
    }

    pub fn is_suspect(&self, m: usize) -> bool {
        self.masters.get(m).is_some_and(|s| s.suspect)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another batch may be in flight.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.p.in_flight
    }

    pub fn counters(&self) -> SavePathCounters {
        self.counters
    }

    /// The next decision to report.
    pub fn poll_event(&mut self) -> Option<SaveEvent> {
        self.events.pop_front()
    }

    /// A master's connection went up or down. A fresh connection (a
    /// handshake answered) clears suspicion.
    pub fn set_connected(&mut self, m: usize, up: bool, now: Instant) {
        let Some(s) = self.masters.get_mut(m) else {
            return;
        };
        if s.connected == up {
            return;
        }
        s.connected = up;
        s.silent = 0;
        if up {
            s.last_io = now;
            if s.suspect {
                s.suspect = false;
                self.counters.recoveries += 1;
                self.events.push_back(SaveEvent::Recovered(m));
            }
            s.healthy_since = Some(now);
        } else {
            s.healthy_since = None;
            s.ping_in_flight = false;
        }
    }

    /// The master to read from (replay) or save to now, failing over or
    /// back as the rules say; `None` when none may be used.
    pub fn choose(&mut self, now: Instant) -> Option<usize> {
        let n = self.masters.len();
        let preferred = 0;
        let in_grace = now.saturating_duration_since(self.started) < self.p.preferred_grace;
        let to = if in_grace {
            self.masters[preferred].healthy().then_some(preferred)
        } else {
            let back = self.active != preferred
                && self.masters[preferred].healthy_since.is_some_and(|t| {
                    self.masters[preferred].healthy()
                        && now.saturating_duration_since(t) >= self.p.failback_after
                });
            if back {
                Some(preferred)
            } else {
                (0..n)
                    .map(|k| (self.active + k) % n)
                    .find(|&i| self.masters[i].healthy())
            }
        }?;
        if to != self.active {
            self.events.push_back(SaveEvent::Failover {
                from: self.active,
                to,
            });
            self.counters.failovers += 1;
            self.active = to;
        }
        Some(to)
    }

    /// Whether a batch may be sent now and where; on `Some` the batch
    /// counts as in flight until [`saved`](SavePath::saved) or
    /// [`failed`](SavePath::failed).
    pub fn next_send(&mut self, now: Instant) -> Option<usize> {
        if self.in_flight >= self.p.in_flight {
            return None;
        }
        if self.backoff_until.is_some_and(|t| now < t) {
            return None;
        }
        let m = self.choose(now)?;
        self.in_flight += 1;
        self.masters[m].last_io = now;
        Some(m)
    }

    /// Whether batches wait for a usable master (not for a free slot).
    pub fn stalled(&self, now: Instant) -> bool {
        let in_grace = now.saturating_duration_since(self.started) < self.p.preferred_grace;
        if in_grace {
            !self.masters[0].healthy()
        } else {
            !self.masters.iter().any(MasterState::healthy)
        }
    }

    /// A send from [`next_send`](SavePath::next_send) did not happen
    /// (nothing to send after all).
    pub fn cancel(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A request to `m` outside the batches (e.g. the replay) failed.
    pub fn note_failure(&mut self, m: usize, why: Failure, now: Instant) {
        match why {
            Failure::Silent => self.silent(m, now),
            Failure::Refused => self.answered(m, now),
        }
    }

    /// A batch sent to `m` was saved.
    pub fn saved(&mut self, m: usize, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.retry = self.p.retry_min;
        self.backoff_until = None;
        self.answered(m, now);
    }

    /// A batch sent to `m` failed (it goes back to the backlog).
    pub fn failed(&mut self, m: usize, why: Failure, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match why {
            Failure::Silent => self.silent(m, now),
            Failure::Refused => {
                // It answered: alive, but do not spin on it.
                self.answered(m, now);
                self.backoff_until = Some(now + self.retry);
                self.retry = (self.retry * 2).min(self.p.retry_max);
            }
        }
    }

    fn answered(&mut self, m: usize, now: Instant) {
        let Some(s) = self.masters.get_mut(m) else {
            return;
        };
        s.silent = 0;
        s.last_io = now;
        if s.suspect && s.connected {
            s.suspect = false;
            s.healthy_since = Some(now);
            self.counters.recoveries += 1;
            self.events.push_back(SaveEvent::Recovered(m));
        }
    }

    fn silent(&mut self, m: usize, _now: Instant) {
        let Some(s) = self.masters.get_mut(m) else {
            return;
        };
        s.silent = s.silent.saturating_add(1);
        if s.silent >= self.p.suspect_after && !s.suspect {
            s.suspect = true;
            s.healthy_since = None;
            self.counters.suspects += 1;
            self.events.push_back(SaveEvent::Suspect(m));
        }
    }

    /// A master to ping now: a connected one idle for `ping_every`, or a
    /// suspect one every `ping_every`. Answer with
    /// [`pinged`](SavePath::pinged).
    pub fn poll_ping(&mut self, now: Instant) -> Option<usize> {
        let every = self.p.ping_every;
        let m = self.masters.iter().position(|s| {
            s.connected
                && !s.ping_in_flight
                && s.last_ping
                    .is_none_or(|t| now.saturating_duration_since(t) >= every)
                && (s.suspect || now.saturating_duration_since(s.last_io) >= every)
        })?;
        let s = &mut self.masters[m];
        s.ping_in_flight = true;
        s.last_ping = Some(now);
        Some(m)
    }

    /// The outcome of a ping from [`poll_ping`](SavePath::poll_ping).
    pub fn pinged(&mut self, m: usize, ok: bool, now: Instant) {
        if let Some(s) = self.masters.get_mut(m) {
            s.ping_in_flight = false;
        }
        if ok {
            self.answered(m, now);
        } else {
            self.silent(m, now);
        }
    }

    /// When, after `now`, the machine wants to be asked again at the
    /// latest (the end of the start-up grace, a back-off, a ping due, a
    /// failback); `None` when nothing is pending.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| {
            if x > now {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        at(self.started + self.p.preferred_grace);
        if let Some(b) = self.backoff_until {
            at(b);
        }
        let every = self.p.ping_every;
        for s in &self.masters {
            if s.connected && !s.ping_in_flight {
                let after_ping = s.last_ping.map(|p| p + every);
                let idle = s.last_io + every;
                at(match (s.suspect, after_ping) {
                    (true, Some(p)) => p,
                    (true, None) => now,
                    (false, Some(p)) => p.max(idle),
                    (false, None) => idle,
                });
            }
        }
        if self.active != 0 {
            if let Some(h) = self.masters[0].healthy_since {
                at(h + self.p.failback_after);
            }
        }
        t
    }
}

// ------------------------------------------------------------- the fake

/// A fault injected into a [`FakeLog`] master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers at once.
    None,
    /// Not connected: requests fail with [`LogError::Disconnected`].
    Down,
    /// Connected, never answers (SIGSTOP, a blackholed link).
    Hung,
    /// Answers after this long on the fake's clock.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct FakeMaster {
    fault: Option<Fault>,
    /// `(node, expires_us, id) -> row`, what this master's disk holds.
    rows: BTreeMap<(String, u64, u64), Row>,
    /// Rows saved here and not yet sent to the peer (async replication).
    outbox: Vec<(String, Row)>,
    saves: u64,
}

#[derive(Debug)]
struct FakeInner {
    now: Option<Instant>,
    masters: Vec<FakeMaster>,
}

/// An in-memory store of several masters replicating each other (all
/// pairs), with faults; cheap to clone, clones share it. Asynchronous
/// replication happens when [`FakeStore::replicate`] is called; a
/// `Replicated` save copies its rows to every working peer at once (or
/// reports [`Replication::PeerDown`]).
#[derive(Debug, Clone)]
pub struct FakeStore {
    inner: Arc<Mutex<FakeInner>>,
}

fn lock(m: &Mutex<FakeInner>) -> MutexGuard<'_, FakeInner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeStore {
    pub fn new(masters: usize) -> FakeStore {
        FakeStore {
            inner: Arc::new(Mutex::new(FakeInner {
                now: None,
                masters: (0..masters).map(|_| FakeMaster::default()).collect(),
            })),
        }
    }

    /// A [`StateLog`] handle on master `m`.
    pub fn log(&self, m: usize) -> FakeLog {
        FakeLog {
            store: self.clone(),
            m,
            addr: format!("fake-{m}"),
        }
    }

    /// The clock `Fault::Slow` answers by (the simulator's).
    pub fn set_now(&self, now: Instant) {
        lock(&self.inner).now = Some(now);
    }

    pub fn set_fault(&self, m: usize, fault: Fault) {
        if let Some(x) = lock(&self.inner).masters.get_mut(m) {
            x.fault = Some(fault);
        }
    }

    pub fn fault(&self, m: usize) -> Fault {
        lock(&self.inner)
            .masters
            .get(m)
            .and_then(|x| x.fault)
            .unwrap_or(Fault::None)
    }

    /// The master loses its disk (and what it had not replicated).
    pub fn lose_disk(&self, m: usize) {
        if let Some(x) = lock(&self.inner).masters.get_mut(m) {
            x.rows.clear();
            x.outbox.clear();
        }
    }

    /// Sends every working master's pending rows to its working peers.
    pub fn replicate(&self) {
        let mut g = lock(&self.inner);
        let n = g.masters.len();
        for from in 0..n {
            if !works(g.masters[from].fault) {
                continue;
            }
            let out = std::mem::take(&mut g.masters[from].outbox);
            let mut kept = Vec::new();
            for (node, row) in out {
                let mut all = true;
                for to in (0..n).filter(|&t| t != from) {
                    if works(g.masters[to].fault) {
                        put(&mut g.masters[to], &node, &row);
                    } else {
                        all = false;
                    }
                }
                if !all {
                    kept.push((node, row));
                }
            }
            g.masters[from].outbox = kept;
        }
    }

    /// The keys `(node, id)` master `m` holds.
    pub fn ids(&self, m: usize) -> Vec<(String, u64)> {
        lock(&self.inner)
            .masters
            .get(m)
            .map(|x| x.rows.keys().map(|k| (k.0.clone(), k.2)).collect())
            .unwrap_or_default()
    }

    /// Save calls master `m` executed.
    pub fn saves(&self, m: usize) -> u64 {
        lock(&self.inner).masters.get(m).map_or(0, |x| x.saves)
    }
}

fn works(f: Option<Fault>) -> bool {
    matches!(f, None | Some(Fault::None) | Some(Fault::Slow(_)))
}

fn put(m: &mut FakeMaster, node: &str, row: &Row) {
    m.rows.insert((node.to_owned(), row[0], row[1]), *row);
}

/// One master of a [`FakeStore`].
#[derive(Debug, Clone)]
pub struct FakeLog {
    store: FakeStore,
    m: usize,
    addr: String,
}

/// The answer of a fake request: ready, after the fake clock reaches a
/// time, or never.
enum Answer<T> {
    Now(Option<T>),
    At(Instant, Option<T>, FakeStore),
    Never,
}

/// A future over an [`Answer`]; `Slow` answers are polled again until the
/// fake clock passes (the simulator polls every tick).
pub struct FakeReply<T>(Answer<T>);

impl<T: Unpin> Future for FakeReply<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        match &mut this.0 {
            Answer::Now(v) => match v.take() {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            },
            Answer::At(at, v, store) => {
                let now = lock(&store.inner).now;
                if now.is_some_and(|n| n >= *at) {
                    if let Some(v) = v.take() {
                        return Poll::Ready(v);
                    }
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Answer::Never => Poll::Pending,
        }
    }
}

impl FakeLog {
    /// Runs `f` on the master now (as the store would when the request
    /// arrives) and answers as the fault says.
    fn request<T>(
        &self,
        f: impl FnOnce(&mut FakeInner, usize) -> Result<T, LogError>,
    ) -> FakeReply<Result<T, LogError>> {
        let mut g = lock(&self.store.inner);
        let fault = g.masters[self.m].fault.unwrap_or(Fault::None);
        match fault {
            Fault::Down => FakeReply(Answer::Now(Some(Err(LogError::Disconnected)))),
            Fault::Hung => FakeReply(Answer::Never),
            Fault::None => FakeReply(Answer::Now(Some(f(&mut g, self.m)))),
            Fault::Slow(d) => {
                let at = g.now.map_or_else(|| None, |n| Some(n + d));
                let v = f(&mut g, self.m);
                match at {
                    Some(at) => FakeReply(Answer::At(at, Some(v), self.store.clone())),
                    None => FakeReply(Answer::Now(Some(v))),
                }
            }
        }
    }
}

impl StateLog for FakeLog {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn is_connected(&self) -> bool {
        self.store.fault(self.m) != Fault::Down
    }

    fn save(
        &self,
        node: &str,
        rows: &[Row],
        ack: AckLevel,
    ) -> impl Future<Output = Result<SaveAck, LogError>> + Send {
        self.request(|g, m| {
            let n = g.masters.len();
            g.masters[m].saves += 1;
            for r in rows {
                put(&mut g.masters[m], node, r);
            }
            let replication = match ack {
                AckLevel::Local => {
                    g.masters[m]
                        .outbox
                        .extend(rows.iter().map(|r| (node.to_owned(), *r)));
                    Replication::NotAsked
                }
                AckLevel::Replicated => {
                    let peers: Vec<usize> = (0..n).filter(|&t| t != m).collect();
                    if peers.iter().all(|&t| works(g.masters[t].fault)) {
                        for &t in &peers {
                            for r in rows {
                                put(&mut g.masters[t], node, r);
                            }
                        }
                        Replication::Confirmed
                    } else {
                        g.masters[m]
                            .outbox
                            .extend(rows.iter().map(|r| (node.to_owned(), *r)));
                        Replication::PeerDown
                    }
                }
            };
            Ok(SaveAck {
                rows: rows.len() as u64,
                replication,
            })
        })
    }

    fn replay(
        &self,
        now_wall_us: u64,
    ) -> impl Future<Output = Result<Vec<(String, Row)>, LogError>> + Send {
        self.request(|g, m| {
            Ok(g.masters[m]
                .rows
                .iter()
                .filter(|(k, _)| k.1 > now_wall_us)
                .map(|(k, r)| (k.0.clone(), *r))
                .collect())
        })
    }

    fn health(&self) -> impl Future<Output = Result<Health, LogError>> + Send {
        self.request(|g, m| {
            let peers = (0..g.masters.len())
                .filter(|&t| t != m)
                .map(|t| {
                    let s = if works(g.masters[t].fault) {
                        "follow"
                    } else {
                        "disconnected"
                    };
                    (s.to_owned(), s.to_owned())
                })
                .collect();
            Ok(Health {
                read_only: false,
                log_len: g.masters[m].rows.len() as u64,
                peers,
            })
        })
    }

    fn ping(&self) -> impl Future<Output = Result<(), LogError>> + Send {
        self.request(|_, _| Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    fn params() -> SavePathParams {
        SavePathParams {
            suspect_after: 2,
            preferred_grace: Duration::from_millis(500),
            ping_every: Duration::from_millis(200),
            failback_after: Duration::from_secs(2),
            ..SavePathParams::new(2, 4)
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn waits_for_the_preferred_master_during_the_grace() {
        let t0 = Instant::now();
        let mut p = SavePath::new(params(), t0);
        p.set_connected(1, true, t0);
        assert_eq!(p.next_send(ms(t0, 100)), None, "b is up, a preferred");
        assert!(p.stalled(ms(t0, 100)));
        assert_eq!(p.next_send(ms(t0, 500)), Some(1), "grace over: b");
        assert_eq!(p.poll_event(), Some(SaveEvent::Failover { from: 0, to: 1 }));
        p.set_connected(0, true, ms(t0, 600));
        p.saved(1, ms(t0, 600));
        assert_eq!(p.next_send(ms(t0, 700)), Some(1), "not back yet");
        assert_eq!(p.next_send(ms(t0, 2_600)), Some(0), "a healthy 2 s: back");
        assert_eq!(p.counters().failovers, 2);
    }

    #[test]
    fn consecutive_timeouts_make_a_connected_master_suspect() {
        let t0 = Instant::now();
        let mut p = SavePath::new(params(), t0);
        p.set_connected(0, true, t0);
        p.set_connected(1, true, t0);
        for _ in 0..4 {
            assert_eq!(p.next_send(t0), Some(0));
        }
        assert_eq!(p.next_send(t0), None, "four in flight at most");
        p.failed(0, Failure::Silent, ms(t0, 1000));
        assert!(!p.is_suspect(0), "one timeout is not enough");
        p.failed(0, Failure::Silent, ms(t0, 1000));
        assert!(p.is_suspect(0));
        assert_eq!(p.poll_event(), Some(SaveEvent::Suspect(0)));
        assert_eq!(p.next_send(ms(t0, 1000)), Some(1), "failed over");
        // A late answer from the hung master's queue does not clear it...
        p.failed(0, Failure::Silent, ms(t0, 1000));
        p.failed(0, Failure::Silent, ms(t0, 1000));
        // ...a ping that answers does.
        assert_eq!(p.poll_ping(ms(t0, 1000)), Some(0));
        assert_eq!(p.poll_ping(ms(t0, 1000)), None, "one ping at a time");
        p.pinged(0, false, ms(t0, 1100));
        assert!(p.is_suspect(0));
        assert_eq!(p.poll_ping(ms(t0, 1100)), None, "not before ping_every");
        assert_eq!(p.poll_ping(ms(t0, 1200)), Some(0));
        p.pinged(0, true, ms(t0, 1710));
        assert!(!p.is_suspect(0));
        assert_eq!(p.counters().suspects, 1);
        assert_eq!(p.counters().recoveries, 1);
        // b stays active until a has been healthy for failback_after.
        assert_eq!(p.next_send(ms(t0, 2000)), Some(1));
        assert_eq!(p.next_send(ms(t0, 3710)), Some(0));
    }

    #[test]
    fn a_refusal_backs_off_on_the_same_master() {
        let t0 = Instant::now();
        let mut p = SavePath::new(params(), t0);
        p.set_connected(0, true, t0);
        p.set_connected(1, true, t0);
        assert_eq!(p.next_send(t0), Some(0));
        p.failed(0, Failure::Refused, t0);
        assert_eq!(p.next_send(ms(t0, 10)), None, "backing off");
        assert_eq!(p.next_send(ms(t0, 20)), Some(0), "same master");
        p.failed(0, Failure::Refused, ms(t0, 20));
        assert_eq!(p.next_send(ms(t0, 50)), None, "doubled");
        assert_eq!(p.next_send(ms(t0, 60)), Some(0));
        assert!(!p.is_suspect(0));
        assert_eq!(p.counters().failovers, 0);
    }

    #[test]
    fn idle_masters_are_pinged_and_a_reconnect_clears_suspicion() {
        let t0 = Instant::now();
        let mut p = SavePath::new(params(), t0);
        p.set_connected(0, true, t0);
        p.set_connected(1, true, t0);
        assert_eq!(p.poll_ping(ms(t0, 100)), None, "not idle yet");
        assert_eq!(p.poll_timeout(ms(t0, 100)), Some(ms(t0, 200)));
        let a = p.poll_ping(ms(t0, 200));
        let b = p.poll_ping(ms(t0, 200));
        assert_eq!((a, b), (Some(0), Some(1)), "both, the standby too");
        p.pinged(1, false, ms(t0, 300));
        p.pinged(0, true, ms(t0, 300));
        assert_eq!(p.poll_ping(ms(t0, 400)), Some(1));
        p.pinged(1, false, ms(t0, 500));
        assert!(p.is_suspect(1), "a standby that never answers is suspect");
        p.set_connected(1, false, ms(t0, 600));
        p.set_connected(1, true, ms(t0, 700));
        assert!(!p.is_suspect(1), "a fresh handshake answered");
    }

    #[test]
    fn no_usable_master_stalls() {
        let t0 = Instant::now();
        let mut p = SavePath::new(params(), t0);
        assert!(p.stalled(ms(t0, 600)));
        assert_eq!(p.next_send(ms(t0, 600)), None);
        p.set_connected(1, true, ms(t0, 700));
        assert!(!p.stalled(ms(t0, 700)));
        assert_eq!(p.next_send(ms(t0, 700)), Some(1));
    }

    fn ready<T>(f: impl Future<Output = T>) -> T {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn the_fake_replicates_as_asked_and_loses_a_disk() {
        let s = FakeStore::new(2);
        let (a, b) = (s.log(0), s.log(1));
        let row = |id: u64| [10_000 + id, id, 0, 3, 3, 1, id, 1, 0, 0];
        let ack = ready(a.save("n1", &[row(1), row(2)], AckLevel::Local)).unwrap();
        assert_eq!(ack.replication, Replication::NotAsked);
        let ack = ready(a.save("n1", &[row(3)], AckLevel::Replicated)).unwrap();
        assert_eq!(ack.replication, Replication::Confirmed);
        assert_eq!(s.ids(1).len(), 1, "only the replicated batch on b");
        s.lose_disk(0);
        assert_eq!(s.ids(0).len(), 0);
        assert_eq!(ready(b.replay(10_000)).unwrap().len(), 1);
        s.set_fault(1, Fault::Down);
        assert!(matches!(ready(b.ping()), Err(LogError::Disconnected)));
        let ack = ready(a.save("n1", &[row(4)], AckLevel::Replicated)).unwrap();
        assert_eq!(ack.replication, Replication::PeerDown);
        s.set_fault(1, Fault::None);
        s.replicate();
        assert_eq!(s.ids(1).len(), 2, "the fallen-back batch follows later");
        let h = ready(b.health()).unwrap();
        assert_eq!(h.peers, vec![("follow".into(), "follow".into())]);
    }
}
