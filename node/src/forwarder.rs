//! The cross-cluster queue forwarder: the tokio driver of
//! `shoal_core::election::Election` over the verdict store's traits
//! (`shoal_tarantool::verdict::VerdictClient` in the binary).
//!
//! Every node with `[verdicts] forwarder = true` runs one. The machine
//! decides everything (when to ask for the lease, when to stand down, what
//! to publish, fetch and ack: see its module docs); this driver only runs
//! the calls it asks for, at most one lease call and one forwarding call at
//! a time, drops the ones it gives up, feeds it the clock and the replies
//! under the node's lock (so fetched messages are multicast at once), logs
//! its events and copies its counters into the metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use shoal_core::election::{
    self, Election, ElectionParams, Event, OpId, Output, Reply, DEFAULT_BATCH,
};
use shoal_core::ports::{CrossQueue, Lease};
use tracing::{debug, info, warn};

use crate::metrics;
use crate::server::Shared;

/// Counters of the forwarder, for metrics.
#[derive(Debug, Default)]
pub(crate) struct ForwarderStats {
    /// 1 while this node holds the lease.
    pub(crate) leader: AtomicU64,
    pub(crate) epoch: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) lease_errors: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_skipped: AtomicU64,
    pub(crate) fetched: AtomicU64,
    /// Fetched messages not multicast: expired on arrival, or a code this
    /// version does not relay.
    pub(crate) dropped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl ForwarderStats {
    /// Registers the forwarder's values as they are now.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let [leader, epoch, takeovers, lease_errors, fenced, published, skipped, fetched, dropped, errors] =
            [
                &self.leader,
                &self.epoch,
                &self.takeovers,
                &self.lease_errors,
                &self.fenced,
                &self.published,
                &self.publish_skipped,
                &self.fetched,
                &self.dropped,
                &self.errors,
            ]
            .map(|a| a.load(Ordering::Relaxed));
        reg.register_collector(metrics::collector(move |o| {
            o.gauge(
                "forwarder_leader",
                "1 while this node holds the cluster's forwarder lease.",
                leader,
            )?;
            o.gauge(
                "forwarder_epoch",
                "Fencing epoch of the lease as last seen.",
                epoch,
            )?;
            o.counter(
                "forwarder_takeovers",
                "Times this node became the forwarder.",
                takeovers,
            )?;
            o.counter(
                "forwarder_lease_errors",
                "Lease requests that failed.",
                lease_errors,
            )?;
            o.counter(
                "forwarder_fenced",
                "Queue writes refused because the lease had moved on.",
                fenced,
            )?;
            o.counter(
                "xc_published",
                "Messages this node added to the cross-cluster queue.",
                published,
            )?;
            o.counter(
                "xc_publish_skipped",
                "Messages published again and already queued.",
                skipped,
            )?;
            o.counter(
                "xc_fetched",
                "Messages fetched from other clusters by this forwarder.",
                fetched,
            )?;
            o.counter(
                "xc_dropped",
                "Fetched messages not relayed (expired, or not a mode).",
                dropped,
            )?;
            o.counter(
                "forwarder_errors",
                "Forwarding rounds that failed and were retried.",
                errors,
            )
        }));
    }
}

pub(crate) struct Forwarder<P> {
    pub(crate) port: P,
    pub(crate) name: String,
    pub(crate) cluster: u32,
    pub(crate) lease: Duration,
    pub(crate) poll: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) shared: Arc<Shared>,
}

type Call = Pin<Box<dyn Future<Output = (OpId, Reply)> + Send>>;

/// The call in flight on one lane, if any.
async fn next(lane: &mut Option<Call>) -> (OpId, Reply) {
    match lane {
        Some(f) => {
            let r = f.await;
            *lane = None;
            r
        }
        None => std::future::pending().await,
    }
}

impl<P> Forwarder<P>
where
    P: Lease + CrossQueue + Clone + 'static,
{
    pub(crate) async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut e = Election::new(
            ElectionParams {
                cluster: self.cluster,
                name: self.name.clone(),
                lease: self.lease,
                poll: self.poll,
                request_timeout: self.request_timeout,
                batch: DEFAULT_BATCH,
            },
            Instant::now(),
        );
        let mut lanes: [(Option<OpId>, Option<Call>); 2] = [(None, None), (None, None)];
        let mut stopping = false;
        self.shared
            .with_node(|n| e.handle_timeout(Instant::now(), n));
        loop {
            while let Some(out) = e.poll_output() {
                match out {
                    Output::Send(id, req) => {
                        let lane = usize::from(!req.is_lease());
                        let port = self.port.clone();
                        lanes[lane] = (
                            Some(id),
                            Some(Box::pin(async move {
                                (id, election::execute(&port, &req).await)
                            })),
                        );
                    }
                    Output::Cancel(id) => {
                        for l in &mut lanes {
                            if l.0 == Some(id) {
                                *l = (None, None);
                            }
                        }
                    }
                    Output::Event(ev) => log(&ev),
                }
            }
            self.publish_stats(&e);
            let Some(deadline) = e.poll_timeout() else {
                break;
            };
            let [(_, lease_lane), (_, fwd_lane)] = &mut lanes;
            tokio::select! {
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    e.stop(Instant::now());
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.shared.with_node(|n| e.handle_timeout(Instant::now(), n));
                }
                (id, r) = next(lease_lane) => {
                    self.shared.with_node(|n| e.handle_reply(Instant::now(), id, r, n));
                }
                (id, r) = next(fwd_lane) => {
                    self.shared.with_node(|n| e.handle_reply(Instant::now(), id, r, n));
                }
            }
        }
        self.stats().leader.store(0, Ordering::Relaxed);
    }

    fn stats(&self) -> &ForwarderStats {
        &self.shared.io.forwarder
    }

    /// Copies the machine's counters (they only grow) into the metrics.
    fn publish_stats(&self, e: &Election) {
        let s = self.stats();
        let c = e.counters();
        s.leader.store(u64::from(e.is_leader()), Ordering::Relaxed);
        s.epoch.store(e.epoch(), Ordering::Relaxed);
        for (a, v) in [
            (&s.takeovers, c.takeovers),
            (&s.lease_errors, c.lease_errors),
            (&s.fenced, c.fenced),
            (&s.published, c.published),
            (&s.publish_skipped, c.publish_skipped),
            (&s.fetched, c.fetched),
            (&s.dropped, c.dropped),
            (&s.errors, c.errors),
        ] {
            a.store(v, Ordering::Relaxed);
        }
    }
}

fn log(ev: &Event) {
    match ev {
        Event::Leader { epoch } => info!(epoch, "this node is the cluster's forwarder"),
        Event::Lost { holder, epoch } => info!(holder = %holder, epoch, "forwarder lease lost"),
        Event::RanOut { epoch } => {
            warn!(
                epoch,
                "forwarder lease ran out before it was renewed; standing down"
            )
        }
        Event::Fenced { error } => {
            warn!(error = %error, "fenced: another node holds the lease now")
        }
        Event::Failed { lease: true, error } => debug!(error = %error, "lease request failed"),
        Event::Failed {
            lease: false,
            error,
        } => {
            debug!(error = %error, "forwarding failed; retrying")
        }
        Event::Stopped { released } => info!(released, "forwarder stopped"),
    }
}
