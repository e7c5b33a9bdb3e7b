//! In-memory fakes of the verdict store's traits ([`crate::ports`]) for the
//! simulator and unit tests: one [`FakeStore`] per cluster, shared by that
//! cluster's nodes, with the real store's rules (lease epochs and fencing,
//! publish dedup by origin, cursors that never go back, one writer per
//! key), its own clock set by the caller, and faults on command. A
//! [`FakeLink`] replicates between two clusters' stores with a delay and
//! can be cut and healed.
//!
//! Calls answer at once (ready futures) or, with [`Fault::Hang`], never.
//! [`poll_once`] drives them without a runtime.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use crate::ports::{
    CrossQueue, Lease, LeaseState, Published, QueuedMsg, StoreError, StoredVerdict, VerdictRow,
    VerdictStore,
};
use crate::relay::RelayMsg;

/// What the store does with the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Every call fails at once ([`StoreError::Unavailable`]), nothing done.
    Fail,
    /// Every call is left unanswered forever, nothing done.
    Hang,
}

/// A call's answer: ready at once, or never.
#[derive(Debug)]
pub enum FakeReply<T> {
    Ready(Option<T>),
    Hang,
}

impl<T: Unpin> Future for FakeReply<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            FakeReply::Ready(v) => match v.take() {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            },
            FakeReply::Hang => Poll::Pending,
        }
    }
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls `f` once with a waker that does nothing: enough for futures that
/// are ready at once (the fakes') or never.
pub fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Noop));
    f.poll(&mut Context::from_waker(&waker))
}

/// A row written here, for the replication link.
#[derive(Debug, Clone)]
enum Change {
    Verdict(StoredVerdict),
    Xmsg(QueuedMsg),
}

#[derive(Debug, Default)]
struct Inner {
    now_us: u64,
    fault: Fault,
    calls: u64,
    verdicts: BTreeMap<(String, u64, u64), StoredVerdict>,
    xmsg: BTreeMap<(u64, u64), QueuedMsg>,
    origins: BTreeSet<(u64, u64, u64)>,
    /// (consumer, origin) -> (seq, epoch)
    cursors: BTreeMap<(u64, u64), (u64, u64)>,
    /// holder, epoch, expires_us
    lease: Option<(String, u64, u64)>,
    /// This store's own writes, in order, for replication.
    log: Vec<Change>,
}

/// One cluster's verdict store, in memory.
#[derive(Debug)]
pub struct FakeStore {
    cluster: u32,
    inner: Mutex<Inner>,
}

impl FakeStore {
    pub fn new(cluster: u32) -> FakeStore {
        FakeStore {
            cluster,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cluster(&self) -> u32 {
        self.cluster
    }

    /// Sets the store's clock (µs); it never goes back.
    pub fn set_now(&self, now_us: u64) {
        let mut i = self.lock();
        i.now_us = i.now_us.max(now_us);
    }

    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Calls answered so far (failed ones included, hung ones not).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// The lease: holder, epoch, expiry (µs of this store's clock).
    pub fn lease(&self) -> Option<(String, u64, u64)> {
        self.lock().lease.clone()
    }

    /// Every queued message of `cluster` held here, in seq order.
    pub fn messages(&self, cluster: u32) -> Vec<QueuedMsg> {
        let c = u64::from(cluster);
        self.lock()
            .xmsg
            .range((c, 0)..=(c, u64::MAX))
            .map(|(_, m)| *m)
            .collect()
    }

    /// The cursor of this cluster on `origin`.
    pub fn cursor(&self, origin: u32) -> Option<u64> {
        let key = (u64::from(self.cluster), u64::from(origin));
        self.lock().cursors.get(&key).map(|c| c.0)
    }

    /// Runs `f` unless a fault says otherwise.
    fn call<T: Unpin>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> FakeReply<Result<T, StoreError>> {
        let mut i = self.lock();
        match i.fault {
            Fault::Hang => FakeReply::Hang,
            Fault::Fail => {
                i.calls += 1;
                FakeReply::Ready(Some(Err(StoreError::Unavailable("fault injected".into()))))
            }
            Fault::None => {
                i.calls += 1;
                FakeReply::Ready(Some(f(&mut i)))
            }
        }
    }

    fn own(&self, what: &str, cluster: u32) -> Result<(), StoreError> {
        if cluster == self.cluster {
            Ok(())
        } else {
            Err(StoreError::Refused(format!(
                "{what} {cluster} is not this store's cluster ({})",
                self.cluster
            )))
        }
    }
}

impl Inner {
    /// Fencing: `node` holds the lease at `epoch` and it has not expired.
    fn fence(&self, node: &str, epoch: u64) -> Result<(), StoreError> {
        match &self.lease {
            Some((h, e, exp)) if h == node && *e == epoch && *exp > self.now_us => Ok(()),
            Some((h, e, _)) => Err(StoreError::Fenced(format!(
                "lease held by {h} at epoch {e}, not {node} at {epoch} (or expired)"
            ))),
            None => Err(StoreError::Fenced("no lease".into())),
        }
    }

    fn insert_xmsg(&mut self, m: QueuedMsg) -> bool {
        if !self.origins.insert((m.cluster, m.node, m.oseq)) {
            return false;
        }
        self.xmsg.insert((m.cluster, m.seq), m);
        true
    }
}

impl VerdictStore for FakeStore {
    fn put(
        &self,
        node: &str,
        rows: &[VerdictRow],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let cluster = self.cluster;
        self.call(|i| {
            if let Some(r) = rows.iter().find(|r| r.cluster != cluster) {
                return Err(StoreError::Refused(format!(
                    "cluster {} is not this store's cluster ({cluster})",
                    r.cluster
                )));
            }
            let first = i
                .verdicts
                .range((node.to_string(), 0, 0)..)
                .next()
                .filter(|(k, _)| k.0 == node);
            if let Some((_, v)) = first {
                if v.cluster != u64::from(cluster) {
                    return Err(StoreError::Refused(format!(
                        "node name {node} is in use by cluster {}",
                        v.cluster
                    )));
                }
            }
            for r in rows {
                let v = StoredVerdict {
                    node: node.to_string(),
                    expires_us: r.expires_us,
                    id: r.id,
                    subject: r.subject,
                    verdict: r.verdict as u64,
                    score: u64::from(r.score),
                    at_us: r.at_us,
                    cluster: u64::from(r.cluster),
                    source: r.source.clone(),
                };
                i.verdicts
                    .insert((v.node.clone(), v.expires_us, v.id), v.clone());
                i.log.push(Change::Verdict(v));
            }
            Ok(rows.len() as u64)
        })
    }

    fn get(
        &self,
        subject: u64,
    ) -> impl Future<Output = Result<Option<StoredVerdict>, StoreError>> + Send {
        self.call(|i| {
            let now = i.now_us;
            Ok(i.verdicts
                .values()
                .filter(|v| v.subject == subject && v.expires_us > now)
                .max_by(|a, b| (a.at_us, &a.node).cmp(&(b.at_us, &b.node)))
                .cloned())
        })
    }
}

impl CrossQueue for FakeStore {
    fn publish(
        &self,
        cluster: u32,
        node: &str,
        epoch: u64,
        msgs: &[RelayMsg],
    ) -> impl Future<Output = Result<Published, StoreError>> + Send {
        let checked = self.own("cluster", cluster);
        self.call(|i| {
            checked?;
            i.fence(node, epoch)?;
            let c = u64::from(cluster);
            let mut seq = i
                .xmsg
                .range((c, 0)..=(c, u64::MAX))
                .next_back()
                .map_or(0, |(k, _)| k.1);
            let mut p = Published::default();
            for m in msgs {
                let q = QueuedMsg {
                    cluster: c,
                    seq: seq + 1,
                    node: u64::from(m.node),
                    oseq: m.oseq,
                    code: u64::from(m.code),
                    ttl_ms: u64::from(m.ttl_ms),
                    at_us: m.at_us.min(i.now_us),
                    fields: m.fields,
                };
                if i.insert_xmsg(q) {
                    seq += 1;
                    p.inserted += 1;
                    i.log.push(Change::Xmsg(q));
                } else {
                    p.skipped += 1;
                }
            }
            Ok(p)
        })
    }

    fn fetch(
        &self,
        consumer: u32,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<QueuedMsg>, StoreError>> + Send {
        self.call(|i| {
            let consumer = u64::from(consumer);
            let mut out = Vec::new();
            for (&(c, seq), m) in &i.xmsg {
                if out.len() >= limit {
                    break;
                }
                let from = i.cursors.get(&(consumer, c)).map_or(0, |x| x.0);
                if c != consumer && seq > from {
                    out.push(*m);
                }
            }
            Ok(out)
        })
    }

    fn ack(
        &self,
        consumer: u32,
        node: &str,
        epoch: u64,
        origin: u64,
        seq: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let checked = self.own("consumer", consumer);
        self.call(|i| {
            checked?;
            let c = u64::from(consumer);
            if origin == c {
                return Err(StoreError::Refused("origin is the consumer itself".into()));
            }
            let top = i
                .xmsg
                .range((origin, 0)..=(origin, u64::MAX))
                .next_back()
                .map_or(0, |(k, _)| k.1);
            if seq > top {
                return Err(StoreError::Refused(format!(
                    "seq {seq} is past the last message of cluster {origin} here ({top})"
                )));
            }
            i.fence(node, epoch)?;
            let cur = i.cursors.entry((c, origin)).or_insert((0, epoch));
            *cur = (cur.0.max(seq), epoch);
            Ok(cur.0)
        })
    }
}

impl Lease for FakeStore {
    fn acquire(
        &self,
        cluster: u32,
        node: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<LeaseState, StoreError>> + Send {
        let checked = self.own("cluster", cluster);
        self.call(|i| {
            checked?;
            if ttl_ms == 0 {
                return Err(StoreError::Refused("ttl_ms must be at least 1".into()));
            }
            let now = i.now_us;
            let take = match &i.lease {
                None => Some(1),
                Some((h, e, _)) if h == node => Some(*e),
                Some((_, e, exp)) if *exp <= now => Some(e + 1),
                Some(_) => None,
            };
            if let Some(epoch) = take {
                i.lease = Some((node.to_string(), epoch, now + ttl_ms.saturating_mul(1000)));
            }
            let (holder, epoch, expires_us) = i.lease.clone().unwrap_or_default();
            Ok(LeaseState {
                holder,
                epoch,
                expires_us,
                now_us: now,
            })
        })
    }

    fn release(
        &self,
        cluster: u32,
        node: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let checked = self.own("cluster", cluster);
        self.call(|i| {
            checked?;
            match &mut i.lease {
                Some((h, _, exp)) if h == node => {
                    *exp = 0;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }
}

/// One direction of replication: what `from` wrote reaches `to` `delay_us`
/// later, in order, unless the link is cut; nothing is lost while cut
/// (like Tarantool's replication, it resumes where it stopped).
#[derive(Debug)]
pub struct FakeLink {
    from: Arc<FakeStore>,
    to: Arc<FakeStore>,
    delay_us: u64,
    sent: usize,
    in_flight: VecDeque<(u64, Change)>,
    cut: bool,
}

impl FakeLink {
    pub fn new(from: Arc<FakeStore>, to: Arc<FakeStore>, delay_us: u64) -> FakeLink {
        FakeLink {
            from,
            to,
            delay_us,
            sent: 0,
            in_flight: VecDeque::new(),
            cut: false,
        }
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_cut(&mut self, cut: bool) {
        self.cut = cut;
    }

    /// Moves replication on to time `now_us`; returns rows delivered.
    pub fn tick(&mut self, now_us: u64) -> usize {
        if self.cut {
            return 0;
        }
        let new: Vec<Change> = self.from.lock().log[self.sent..].to_vec();
        self.sent += new.len();
        for c in new {
            self.in_flight.push_back((now_us + self.delay_us, c));
        }
        let mut n = 0;
        let mut to = self.to.lock();
        while self.in_flight.front().is_some_and(|(at, _)| *at <= now_us) {
            let Some((_, c)) = self.in_flight.pop_front() else {
                break;
            };
            match c {
                Change::Verdict(v) => {
                    to.verdicts.insert((v.node.clone(), v.expires_us, v.id), v);
                }
                Change::Xmsg(m) => {
                    to.insert_xmsg(m);
                }
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready<T>(f: impl Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        match poll_once(f.as_mut()) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a fake answered nothing"),
        }
    }

    fn msg(node: u32, oseq: u64) -> RelayMsg {
        RelayMsg {
            node,
            oseq,
            code: 2,
            ttl_ms: 1000,
            at_us: 5,
            fields: [7, 1, 0, 0],
        }
    }

    #[test]
    fn the_lease_moves_only_when_free_and_fences_the_old_holder() {
        let s = FakeStore::new(1);
        s.set_now(1_000);
        let l = ready(s.acquire(1, "a", 10)).unwrap();
        assert_eq!((l.holder.as_str(), l.epoch, l.expires_us), ("a", 1, 11_000));
        assert_eq!(ready(s.acquire(1, "b", 10)).unwrap().holder, "a");
        assert!(matches!(
            ready(s.acquire(2, "a", 10)),
            Err(StoreError::Refused(_))
        ));
        assert_eq!(
            ready(s.publish(1, "a", 1, &[msg(1, 1)])).unwrap().inserted,
            1
        );
        s.set_now(11_000);
        let l = ready(s.acquire(1, "b", 10)).unwrap();
        assert_eq!((l.holder.as_str(), l.epoch), ("b", 2));
        assert!(matches!(
            ready(s.publish(1, "a", 1, &[msg(1, 2)])),
            Err(StoreError::Fenced(_))
        ));
        assert!(ready(s.release(1, "b")).unwrap());
        assert!(!ready(s.release(1, "a")).unwrap());
        assert_eq!(ready(s.acquire(1, "a", 10)).unwrap().epoch, 3);
    }

    #[test]
    fn publish_dedups_by_origin_and_cursors_never_go_back() {
        let (a, b) = (Arc::new(FakeStore::new(1)), Arc::new(FakeStore::new(2)));
        ready(a.acquire(1, "a", 1000)).unwrap();
        ready(b.acquire(2, "b", 1000)).unwrap();
        let p = ready(a.publish(1, "a", 1, &[msg(1, 1), msg(1, 2), msg(1, 1)])).unwrap();
        assert_eq!((p.inserted, p.skipped), (2, 1));
        let mut link = FakeLink::new(a.clone(), b.clone(), 20);
        assert_eq!(link.tick(0), 0);
        link.set_cut(true);
        assert_eq!(link.tick(100), 0);
        link.set_cut(false);
        assert_eq!(link.tick(100), 2);
        let got = ready(b.fetch(2, 10)).unwrap();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(
            ready(b.fetch(1, 10)).unwrap().is_empty(),
            "its own messages"
        );
        assert_eq!(ready(b.ack(2, "b", 1, 1, 2)).unwrap(), 2);
        assert_eq!(ready(b.ack(2, "b", 1, 1, 1)).unwrap(), 2);
        assert!(matches!(
            ready(b.ack(2, "b", 1, 1, 3)),
            Err(StoreError::Refused(_))
        ));
        assert!(matches!(
            ready(b.ack(2, "x", 1, 1, 1)),
            Err(StoreError::Fenced(_))
        ));
        assert!(ready(b.fetch(2, 10)).unwrap().is_empty());
    }

    #[test]
    fn faults_fail_or_hang_and_do_nothing() {
        let s = FakeStore::new(1);
        s.set_fault(Fault::Fail);
        assert!(matches!(
            ready(s.acquire(1, "a", 10)),
            Err(StoreError::Unavailable(_))
        ));
        s.set_fault(Fault::Hang);
        let mut f = std::pin::pin!(s.acquire(1, "a", 10));
        assert!(poll_once(f.as_mut()).is_pending());
        s.set_fault(Fault::None);
        assert_eq!(s.lease(), None);
        assert_eq!(s.calls(), 1);
    }
}
