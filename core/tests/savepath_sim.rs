//! The save path on a virtual clock: a node's [`Backlog`] and the
//! [`SavePath`] machine driven as `node/src/storage.rs` drives them, over
//! the in-memory [`FakeStore`] with faults (a hung master, a flapping
//! one, a lost disk). Every millisecond: connection states in, pings and
//! batches out, answers polled, deadlines applied. Deterministic: the same
//! scenario gives the same trace.
#![allow(clippy::disallowed_methods)] // a base instant; time is virtual from it

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use shoal_core::{
    AckLevel, Backlog, BacklogLimits, BatchId, FakeStore, Fault, LogError, Row, SaveAck, SavePath,
    SavePathParams, StateLog,
};

type Reply<T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send>>;

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

struct Sim {
    t0: Instant,
    now: Instant,
    store: FakeStore,
    path: SavePath,
    backlog: Backlog,
    ack: AckLevel,
    timeout: Duration,
    calls: Vec<(BatchId, usize, Instant, Reply<SaveAck>)>,
    pings: Vec<(usize, Instant, Reply<()>)>,
    next_id: u64,
    /// (ms, master) of every acknowledged batch.
    acks: Vec<(u64, usize)>,
    trace: Vec<String>,
    fallbacks: u64,
}

fn row(id: u64) -> Row {
    [u64::MAX / 2 + id, id, 0, 3, 3, 1, id, 1, 0, 0]
}

impl Sim {
    fn new(ack: AckLevel) -> Sim {
        let t0 = Instant::now();
        let params = SavePathParams {
            suspect_after: 2,
            preferred_grace: Duration::from_millis(500),
            ping_every: Duration::from_millis(200),
            failback_after: Duration::from_secs(2),
            ..SavePathParams::new(2, 4)
        };
        let store = FakeStore::new(2);
        store.set_now(t0);
        Sim {
            t0,
            now: t0,
            store,
            path: SavePath::new(params, t0),
            backlog: Backlog::new(BacklogLimits {
                capacity: 1_000_000,
                batch: 100,
            }),
            ack,
            timeout: Duration::from_millis(1000),
            calls: Vec::new(),
            pings: Vec::new(),
            next_id: 0,
            acks: Vec::new(),
            trace: Vec::new(),
            fallbacks: 0,
        }
    }

    fn ms(&self) -> u64 {
        self.now.duration_since(self.t0).as_millis() as u64
    }

    fn offer(&mut self, n: u64) {
        for _ in 0..n {
            self.backlog.offer(row(self.next_id));
            self.next_id += 1;
        }
    }

    /// One millisecond of the driver.
    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        self.store.set_now(now);
        for m in 0..2 {
            self.path
                .set_connected(m, self.store.log(m).is_connected(), now);
        }
        if self.ms() % 10 == 0 {
            self.store.replicate();
        }
        while let Some(m) = self.path.poll_ping(now) {
            let log = self.store.log(m);
            self.pings.push((
                m,
                now + self.timeout,
                Box::pin(async move { log.ping().await }),
            ));
        }
        let mut buf = Vec::new();
        while self.backlog.queued() > 0 {
            let Some(m) = self.path.next_send(now) else {
                break;
            };
            let id = self.backlog.next_batch(&mut buf).expect("queued");
            let log = self.store.log(m);
            let (rows, ack) = (buf.clone(), self.ack);
            self.calls.push((
                id,
                m,
                now + self.timeout,
                Box::pin(async move { log.save("n1", &rows, ack).await }),
            ));
        }
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let mut i = 0;
        while i < self.calls.len() {
            let (id, m, deadline, f) = &mut self.calls[i];
            let done = match f.as_mut().poll(&mut cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending if now >= *deadline => Some(Err(LogError::Timeout(self.timeout))),
                Poll::Pending => None,
            };
            let (id, m) = (*id, *m);
            match done {
                None => i += 1,
                Some(r) => {
                    drop(self.calls.remove(i));
                    match r {
                        Ok(a) => {
                            if a.replication.fell_back() {
                                self.fallbacks += 1;
                            }
                            self.backlog.ack(id);
                            self.path.saved(m, now);
                            self.acks.push((self.ms(), m));
                        }
                        Err(e) => {
                            self.backlog.fail(id);
                            self.path.failed(m, e.failure(), now);
                        }
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.pings.len() {
            let (m, deadline, f) = &mut self.pings[i];
            let done = match f.as_mut().poll(&mut cx) {
                Poll::Ready(r) => Some(r.is_ok()),
                Poll::Pending if now >= *deadline => Some(false),
                Poll::Pending => None,
            };
            match done {
                None => i += 1,
                Some(ok) => {
                    let m = *m;
                    drop(self.pings.remove(i));
                    self.path.pinged(m, ok, now);
                }
            }
        }
        while let Some(e) = self.path.poll_event() {
            let line = format!("{} {e:?}", self.ms());
            self.trace.push(line);
        }
    }

    fn run_ms(&mut self, ms: u64, per_ms: u64) {
        for _ in 0..ms {
            self.offer(per_ms);
            self.tick();
        }
    }

    /// Runs without new records until the backlog is empty (or 30 s).
    fn drain(&mut self) {
        for _ in 0..30_000 {
            if self.backlog.is_empty() {
                return;
            }
            self.tick();
        }
        panic!("backlog not drained: {} left", self.backlog.len());
    }

    fn ids_on(&self, m: usize) -> std::collections::BTreeSet<u64> {
        self.store.ids(m).into_iter().map(|(_, id)| id).collect()
    }
}

fn up(sim: &mut Sim) {
    // Both masters connected; the grace for the preferred one passes.
    sim.run_ms(600, 0);
}

#[test]
fn a_hung_master_is_failed_over_from_within_the_request_timeout() {
    let mut sim = Sim::new(AckLevel::Replicated);
    up(&mut sim);
    sim.run_ms(1000, 20);
    assert!(sim.acks.iter().all(|&(_, m)| m == 0), "a preferred");
    // SIGSTOP: connected, never answers.
    sim.store.set_fault(0, Fault::Hung);
    let hung_at = sim.ms();
    sim.run_ms(3000, 20);
    sim.drain();
    let first_on_b = sim
        .acks
        .iter()
        .find(|&&(_, m)| m == 1)
        .map(|&(t, _)| t)
        .expect("saves moved to b");
    let gap = first_on_b - hung_at;
    // Bound: the batches in flight time out (1000 ms), the machine turns
    // suspect on the second, the next batch goes to b at once.
    assert!(gap <= 1_000 + 5, "failed over after {gap} ms");
    assert!(sim.path.is_suspect(0));
    assert_eq!(
        sim.backlog.counters().saved,
        sim.next_id,
        "every record saved"
    );
    // b holds everything: what a acknowledged was confirmed by b.
    let on_b = sim.ids_on(1);
    assert_eq!(on_b.len() as u64, sim.next_id);
    assert!(sim.fallbacks > 0, "b saved without its peer: counted");
    assert!(
        sim.trace.iter().any(|l| l.ends_with("Suspect(0)")),
        "{:?}",
        sim.trace
    );
    // The stopped master resumes: pings answer, it recovers, and after
    // failback_after it is the active master again.
    sim.store.set_fault(0, Fault::None);
    sim.run_ms(3000, 5);
    sim.drain();
    assert!(!sim.path.is_suspect(0));
    assert_eq!(
        sim.path.active(),
        0,
        "preferred master back: {:?}",
        sim.trace
    );
    assert!(sim.acks.last().is_some_and(|&(_, m)| m == 0));
}

#[test]
fn a_flapping_master_loses_nothing_and_does_not_thrash() {
    let mut sim = Sim::new(AckLevel::Replicated);
    up(&mut sim);
    for k in 0..20 {
        let f = if k % 2 == 0 { Fault::Down } else { Fault::None };
        sim.store.set_fault(0, f);
        sim.run_ms(150, 10);
    }
    sim.store.set_fault(0, Fault::None);
    sim.drain();
    sim.store.replicate();
    assert_eq!(sim.backlog.counters().saved, sim.next_id);
    assert_eq!(sim.ids_on(0).len() as u64, sim.next_id);
    assert_eq!(sim.ids_on(1).len() as u64, sim.next_id);
    // Each time a comes back it must stay healthy for failback_after
    // (2 s) before it is taken back: 150 ms up-phases never qualify, so
    // one switch to b, none back while it flaps.
    let failovers = sim.path.counters().failovers;
    assert_eq!(failovers, 1, "{:?}", sim.trace);
    sim.run_ms(2_100, 1);
    assert_eq!(sim.path.active(), 0, "back once steady");
}

#[test]
fn preferred_master_is_waited_for_at_start_then_passed_over() {
    let mut sim = Sim::new(AckLevel::Local);
    sim.store.set_fault(0, Fault::Down);
    sim.run_ms(400, 10);
    assert!(sim.acks.is_empty(), "grace: waits for a");
    sim.run_ms(200, 10);
    assert!(sim.acks.iter().all(|&(t, m)| m == 1 && t >= 500));
    assert!(!sim.acks.is_empty());
}

/// The acknowledgement levels against a lost disk: a master that
/// acknowledged batches disappears with its disk before replicating
/// them. Under `local` some acknowledged records exist nowhere; under
/// `replicated` none.
fn lose_active_disk(ack: AckLevel) -> (u64, u64) {
    let mut sim = Sim::new(ack);
    up(&mut sim);
    // Replication runs every 10 ms; kill between two rounds.
    sim.run_ms(1_005, 30);
    sim.store.set_fault(0, Fault::Down);
    sim.store.lose_disk(0);
    sim.run_ms(500, 30);
    sim.drain();
    let saved = sim.backlog.counters().saved;
    let on_b = sim.ids_on(1).len() as u64;
    (saved, on_b)
}

#[test]
fn replicated_acks_survive_a_lost_disk_local_ones_do_not() {
    let (saved, on_b) = lose_active_disk(AckLevel::Replicated);
    assert_eq!(on_b, saved, "replicated: every acknowledged record on b");
    let (saved, on_b) = lose_active_disk(AckLevel::Local);
    assert!(
        on_b < saved,
        "local: the unreplicated tail is gone ({on_b} of {saved})"
    );
}

#[test]
fn the_same_scenario_gives_the_same_trace() {
    let run = || {
        let mut sim = Sim::new(AckLevel::Replicated);
        up(&mut sim);
        sim.run_ms(500, 10);
        sim.store.set_fault(0, Fault::Hung);
        sim.run_ms(1500, 10);
        sim.store
            .set_fault(0, Fault::Slow(Duration::from_millis(50)));
        sim.run_ms(3000, 10);
        sim.drain();
        (sim.trace, sim.acks)
    };
    let (a, b) = (run(), run());
    assert!(!a.0.is_empty());
    assert_eq!(a, b);
}
