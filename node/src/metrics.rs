//! The `/metrics` page and the `/status` page.
//!
//! Metrics are encoded by `prometheus-client` (Prometheus text format
//! 0.0.4, every name prefixed `shoal_`) from a [`Registry`] built for each
//! scrape: the core's numbers are copied out under the node's lock
//! ([`Node::snapshot`]) and the lock is released before anything is
//! formatted; then each component registers a collector holding a copy of
//! its own values ([`IoStats::register`], `StoreIo`, `ApiStats`,
//! `ForwarderStats`, each next to the code that counts). Counters are
//! encoded as counters (`_total`, never decreasing), gauges as gauges; the
//! list with help texts is `docs/metrics.md`, which a test keeps in step.
//!
//! `/status` is the operator's page: peers with their loss and the busiest
//! resources (a bounded selection under the lock, formatted after it).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::{self, Write};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_core::{LoadView, LocalError, ModeView, Node, NodeSnapshot, RecordRefusal};
use shoal_wire::DecodeError;

use crate::server::Shared;

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Resources listed on `/status`.
pub(crate) const STATUS_TOP: usize = 50;

/// Counters and gauges kept by the I/O driver, outside the node's lock.
/// Fields named as counters only ever grow (`fetch_add`).
#[derive(Debug, Default)]
pub(crate) struct IoStats {
    pub(crate) rcvbuf_requested: AtomicU64,
    pub(crate) rcvbuf_effective: AtomicU64,
    /// 1 when the kernel gave less receive buffer than configured.
    pub(crate) rcvbuf_capped: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) recv_errors: AtomicU64,
    pub(crate) local_reply_errors: AtomicU64,
    /// HTTP connections closed at accept: at the cap and every open one
    /// in a handler.
    pub(crate) http_refused: AtomicU64,
    /// HTTP connections closed to make room for a new one at the cap.
    pub(crate) http_evicted: AtomicU64,
    /// HTTP requests whose head (header-read timeout) or body (deadline)
    /// came too slowly.
    pub(crate) http_timeouts: AtomicU64,
    /// Microseconds the start-up took before the node answered its filter.
    pub(crate) startup_us: AtomicU64,
    /// 1 with `[auth]` (signed datagrams), 0 without: alert on 0.
    pub(crate) auth_enabled: AtomicU64,
    /// The Tarantool side, when a store is configured.
    pub(crate) store: crate::storage::StoreIo,
    /// The post-markup API and the forwarder, with `[verdicts]`.
    pub(crate) api: crate::verdicts::ApiStats,
    pub(crate) forwarder: crate::forwarder::ForwarderStats,
    /// The syslog edge and the responder, with `[syslog]`.
    pub(crate) syslog: crate::syslog::SyslogStats,
    /// The block table and the enforcer (`enforce`).
    pub(crate) enforce: std::sync::Mutex<crate::enforce::EnforceStats>,
    /// The kernel meters of `[[limits]]` (`limits`).
    pub(crate) meter: crate::limits::MeterStats,
}

impl IoStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the driver's values as they are now, then those of the
    /// store, the API and the forwarder.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let [requested, effective, capped, send, recv, reply, http, evicted, timeouts, startup_us, auth] =
            [
                &self.rcvbuf_requested,
                &self.rcvbuf_effective,
                &self.rcvbuf_capped,
                &self.send_errors,
                &self.recv_errors,
                &self.local_reply_errors,
                &self.http_refused,
                &self.http_evicted,
                &self.http_timeouts,
                &self.startup_us,
                &self.auth_enabled,
            ]
            .map(|a| a.load(Ordering::Relaxed));
        reg.register_collector(collector(move |o| {
            o.gauge(
                "rcvbuf_requested_bytes",
                "Receive buffer asked for in the config.",
                requested,
            )?;
            o.gauge(
                "rcvbuf_effective_bytes",
                "Receive buffer the kernel granted.",
                effective,
            )?;
            o.gauge(
                "rcvbuf_capped",
                "1 when the kernel capped the receive buffer (raise net.core.rmem_max).",
                capped,
            )?;
            o.counter("send_errors", "Multicast sends that failed.", send)?;
            o.counter("recv_errors", "Multicast receives that failed.", recv)?;
            o.counter(
                "local_reply_errors",
                "Replies to the filter that could not be sent.",
                reply,
            )?;
            o.counter(
                "http_refused",
                "HTTP connections closed at accept: at the cap with every open one in a handler.",
                http,
            )?;
            o.counter(
                "http_evicted",
                "HTTP connections closed to make room for a new one at the cap.",
                evicted,
            )?;
            o.counter(
                "http_timeouts",
                "HTTP requests whose head or body came too slowly.",
                timeouts,
            )?;
            o.gauge(
                "startup_seconds",
                "Time from start to answering the filter.",
                startup_us as f64 / 1e6,
            )?;
            o.gauge(
                "auth_enabled",
                "1 when datagrams are signed ([auth]); 0 trusts every host on the segment.",
                auth,
            )
        }));
        self.store.register(reg);
        self.api.register(reg);
        self.forwarder.register(reg);
        self.syslog.register(reg);
        crate::enforce::register(&self.enforce, reg);
        crate::limits::register_meter(&self.meter, reg);
    }
}

/// Writes typed samples through a `prometheus-client` encoder; names are
/// given without the `shoal_` prefix and, for counters, without `_total`
/// (the encoder adds both).
pub(crate) struct Out<'a>(DescriptorEncoder<'a>);

impl Out<'_> {
    pub(crate) fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let c = ConstCounter::new(v);
        c.encode(
            self.0
                .encode_descriptor(name, help, None, c.metric_type())?,
        )
    }

    pub(crate) fn gauge(
        &mut self,
        name: &str,
        help: &str,
        v: impl EncodeGaugeValue,
    ) -> fmt::Result {
        let g = ConstGauge::new(v);
        g.encode(
            self.0
                .encode_descriptor(name, help, None, g.metric_type())?,
        )
    }

    /// A constant 1 labelled with facts, named `<name>_info`.
    pub(crate) fn info<L>(&mut self, name: &str, help: &str, labels: L) -> fmt::Result
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq,
    {
        let i = Info::new(labels);
        i.encode(
            self.0
                .encode_descriptor(name, help, None, i.metric_type())?,
        )
    }

    /// A labelled counter family; nothing at all when `rows` is empty.
    pub(crate) fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
        self.family(name, help, MetricType::Counter, rows)
    }

    /// A labelled gauge family; nothing at all when `rows` is empty.
    pub(crate) fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, V)>,
    ) -> fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
        self.family(name, help, MetricType::Gauge, rows)
    }

    fn family<L: EncodeLabelSet, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        rows: impl Iterator<Item = (L, M)>,
    ) -> fmt::Result {
        let mut rows = rows.peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let mut family = self.0.encode_descriptor(name, help, None, kind)?;
        for (labels, metric) in rows {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A collector writing what `f` captured when it was registered: the
/// values of one scrape, copied, so encoding holds no lock.
pub(crate) fn collector<F>(f: F) -> Box<dyn Collector>
where
    F: Fn(&mut Out<'_>) -> fmt::Result + Send + Sync + 'static,
{
    struct FnCollector<F>(F);
    impl<F> fmt::Debug for FnCollector<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("FnCollector")
        }
    }
    impl<F> Collector for FnCollector<F>
    where
        F: Fn(&mut Out<'_>) -> fmt::Result + Send + Sync + 'static,
    {
        fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
            (self.0)(&mut Out(encoder))
        }
    }
    Box::new(FnCollector(f))
}

/// The core's numbers of one scrape and the instant they were taken.
#[derive(Debug)]
struct CoreMetrics {
    node: NodeSnapshot,
    now: Instant,
}

impl Collector for CoreMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut o = Out(encoder);
        let (n, c) = (&self.node, &self.node.counters);
        o.info(
            "node",
            "This node's id and cluster.",
            [("node", n.id), ("cluster", n.cluster)],
        )?;
        o.counter(
            "datagrams_sent",
            "Datagrams multicast by this node.",
            c.datagrams_sent,
        )?;
        o.counter(
            "records_sent",
            "Records multicast by this node.",
            c.records_sent,
        )?;
        o.counter(
            "local_datagrams",
            "Datagrams received from the local filter.",
            c.local_datagrams,
        )?;
        o.counter(
            "local_records",
            "Records accepted from the local filter.",
            c.local_records,
        )?;
        o.counter(
            "local_queries",
            "Queries answered on the local socket.",
            c.local_queries,
        )?;
        o.counters(
            "local_rejected",
            "Local records or datagrams refused, by reason.",
            LocalError::LABELS
                .iter()
                .zip(c.local_rejected)
                .map(|(l, v)| ([("reason", *l)], v)),
        )?;
        o.counter(
            "records_unsaved",
            "Records asking for save that were not persisted (no store configured).",
            c.records_unsaved,
        )?;
        o.counters(
            "datagrams_rejected",
            "Cluster datagrams refused before any record was read, by reason.",
            DecodeError::LABELS
                .iter()
                .zip(c.rejected)
                .map(|(l, v)| ([("reason", *l)], v)),
        )?;
        o.counter(
            "replay_rejected",
            "Datagrams refused by the replay window (duplicates and stale).",
            c.replay_rejected,
        )?;
        o.counter(
            "own_looped",
            "This node's own datagrams received back through multicast loop.",
            c.own_looped,
        )?;
        // issue 9 (trust): own-id conflicts and records refused by the
        // origin and age rules (docs/wire.md section 7).
        o.counter(
            "own_id_conflict",
            "Valid datagrams of this cluster carrying this node's id from another incarnation: a second node configured with the same id.",
            c.own_id_conflict,
        )?;
        o.counters(
            "records_refused",
            "Cluster or stored records refused by the origin and age rules, by reason.",
            RecordRefusal::LABELS
                .iter()
                .zip(c.records_refused)
                .map(|(l, v)| ([("reason", *l)], v)),
        )?;
        o.counter(
            "peer_table_full",
            "Datagrams from new senders refused because the peer table is full.",
            c.peer_table_full,
        )?;
        o.counter(
            "records_applied",
            "Cluster records applied to the state.",
            c.records_applied,
        )?;
        o.counter(
            "records_bad",
            "Cluster records skipped as malformed.",
            c.records_bad,
        )?;
        o.counter(
            "records_unknown_code",
            "Records skipped for an unknown code.",
            c.records_unknown_code,
        )?;
        o.counter(
            "records_extension",
            "Extension-range records seen.",
            c.records_extension,
        )?;
        o.counter(
            "resource_table_full",
            "Records for new resources refused because the table is full.",
            c.resource_table_full,
        )?;
        o.counter(
            "mode_claims_sent",
            "Protection-mode claims broadcast by this node's controller.",
            c.mode_claims_sent,
        )?;
        o.counter(
            "mode_changes_deferred",
            "Claim changes over modes.max_changes_per_s, deferred (tried again later).",
            c.mode_changes_deferred,
        )?;
        o.gauge("resources", "Resources with a load gauge.", n.resources)?;
        o.gauge("modes_active", "Resources with a live mode claim.", n.modes)?;
        o.gauge("sessions", "Session marks held.", n.sessions)?;
        o.counter(
            "session_evictions",
            "Session marks evicted (oldest first) to respect the capacity.",
            n.session_evictions,
        )?;
        self.encode_peers(&mut o)?;
        let r = &n.relay;
        o.counter(
            "relay_observed",
            "Mode records of this cluster taken into the relay ring.",
            r.observed,
        )?;
        o.counter(
            "relay_overflowed",
            "Relay ring entries dropped before this node published them.",
            r.overflowed,
        )?;
        o.counter(
            "xc_applied",
            "Relayed messages from other clusters applied here.",
            r.applied,
        )?;
        o.counter(
            "xc_duplicates",
            "Relayed messages received again and not re-applied.",
            r.duplicates,
        )?;
        if let Some(b) = &n.backlog {
            let c = &b.counters;
            o.gauge(
                "store_backlog",
                "Records waiting for the store (queued and in flight).",
                b.len,
            )?;
            o.gauge(
                "store_backlog_capacity",
                "Records the backlog holds before it drops load and refuses saves ([store] backlog).",
                b.capacity,
            )?;
            o.gauge(
                "store_batches_in_flight",
                "Save batches sent and not yet answered.",
                b.batches_in_flight,
            )?;
            o.counter(
                "store_taken",
                "Records taken into the save backlog.",
                c.taken,
            )?;
            o.counter("store_saved", "Records the store acknowledged.", c.saved)?;
            o.counter(
                "store_batches_saved",
                "Save batches committed.",
                c.batches_saved,
            )?;
            o.counter(
                "store_batches_failed",
                "Save batches failed or timed out (retried).",
                c.batches_failed,
            )?;
            o.counter(
                "store_dropped_load",
                "Load records dropped from a full backlog.",
                c.dropped_load,
            )?;
            o.counter(
                "store_refused",
                "Save records refused by a full backlog (the filter is told).",
                c.refused,
            )?;
        }
        Ok(())
    }
}

impl CoreMetrics {
    fn encode_peers(&self, o: &mut Out<'_>) -> fmt::Result {
        let peers = &self.node.peers;
        type Field = fn(&shoal_core::PeerSnapshot) -> u64;
        let counters: [(&str, &str, Field); 7] = [
            ("peer_datagrams", "Datagrams accepted from the peer.", |p| {
                p.datagrams
            }),
            (
                "peer_records",
                "Records carried by accepted datagrams.",
                |p| p.records,
            ),
            (
                "peer_lost",
                "Datagrams of the peer lost: skipped and still missing when 128 newer ones had arrived, or when the peer restarted.",
                |p| p.lost,
            ),
            (
                "peer_reordered",
                "Datagrams of the peer that arrived after a newer one (within the window).",
                |p| p.late,
            ),
            (
                "peer_duplicates",
                "Duplicate datagrams of the peer refused.",
                |p| p.duplicates,
            ),
            (
                "peer_stale",
                "Datagrams of the peer refused as too old (or replayed).",
                |p| p.stale,
            ),
            (
                "peer_restarts",
                "Times the peer came back with a new incarnation.",
                |p| p.restarts,
            ),
        ];
        for (name, help, f) in counters {
            o.counters(name, help, peers.iter().map(|p| ([("peer", p.id)], f(p))))?;
        }
        o.gauges(
            "peer_missing",
            "Datagrams of the peer skipped, still inside the window: lost or not yet here.",
            peers.iter().map(|p| ([("peer", p.id)], p.missing as i64)),
        )?;
        o.gauges(
            "peer_last_seen_seconds",
            "Seconds since the peer's last accepted datagram.",
            peers.iter().map(|p| {
                let age = self.now.saturating_duration_since(p.last_seen);
                ([("peer", p.id)], age.as_secs_f64())
            }),
        )
    }
}

/// The registry of one scrape: the core's snapshot, then each component.
fn registry(mut node: NodeSnapshot, now: Instant, io: &IoStats) -> Registry {
    node.peers.sort_unstable_by_key(|p| p.id);
    let mut reg = Registry::with_prefix("shoal");
    crate::limits::register(
        &mut reg,
        std::mem::take(&mut node.limits),
        node.key_rate_unknown_table,
    );
    reg.register_collector(Box::new(CoreMetrics { node, now }));
    io.register(&mut reg);
    reg
}

fn encode(reg: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    if let Err(e) = prometheus_text::encode(&mut out, reg) {
        // Writing to a String does not fail; a collector would have to.
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// Renders `/metrics`. The node's lock is held only to copy its numbers.
pub(crate) fn render(s: &Shared) -> String {
    let node = {
        let n = s.lock();
        crate::enforce::copy_blocks(&n, &s.io.enforce);
        n.snapshot()
    };
    encode(&registry(node, Instant::now(), &s.io))
}

/// One line of the status page's resource table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResourceRow {
    pub(crate) resource: u64,
    pub(crate) load: LoadView,
    pub(crate) mode: ModeView,
}

/// What `/status` shows, copied out of the node.
#[derive(Debug)]
pub(crate) struct StatusView {
    pub(crate) node: NodeSnapshot,
    /// Resources with a fresh gauge or a live claim.
    pub(crate) resources: usize,
    /// The busiest (unordered: sorted by whoever formats them).
    pub(crate) top: Vec<ResourceRow>,
    /// The busiest keys of each limit, and the live nodes.
    pub(crate) limit_top: Vec<(String, Vec<shoal_core::ratelimit::TopKey>)>,
    pub(crate) live_nodes: usize,
    pub(crate) now: Instant,
}

impl StatusView {
    /// `lock` gives the node; each call is one short hold of its lock.
    fn take<G: Deref<Target = Node>>(lock: impl Fn() -> G, now: Instant, top: usize) -> StatusView {
        let (resources, top) = busiest(&lock, now, top);
        let node = lock();
        StatusView {
            limit_top: node.limit_top(now, crate::limits::STATUS_TOP_KEYS),
            live_nodes: node.live_nodes(),
            node: node.snapshot(),
            resources,
            top,
            now,
        }
    }
}

/// Resources whose load is summed per hold of the node's lock: a
/// resource's total costs ~0.4 µs with 16 origins (cold cache), so a hold
/// stays near 50 µs however many resources there are, and the hot paths
/// get the lock between chunks (`metrics::figures`).
const STATUS_CHUNK: usize = 128;

/// Counts the resources and picks the `n` with the highest total load
/// (ties: lowest id first) with a heap of at most `n` entries, O(R log n).
/// The ids are copied in one hold and their loads summed in chunks of
/// [`STATUS_CHUNK`], so the page is not one instant's view: a resource
/// gone meanwhile shows a total of 0. Rows come back unordered.
fn busiest<G: Deref<Target = Node>>(
    lock: &impl Fn() -> G,
    now: Instant,
    n: usize,
) -> (usize, Vec<ResourceRow>) {
    let ids: Vec<u64> = lock().state().resource_ids().collect();
    if n == 0 {
        return (ids.len(), Vec::new());
    }
    // Min-heap on (total, Reverse(id)): the root is the first to go.
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<u64>)>> = BinaryHeap::with_capacity(n + 1);
    for chunk in ids.chunks(STATUS_CHUNK) {
        let node = lock();
        for &r in chunk {
            let key = (node.load(now, r).total, Reverse(r));
            if heap.len() == n && heap.peek().is_some_and(|Reverse(min)| key <= *min) {
                continue;
            }
            heap.push(Reverse(key));
            if heap.len() > n {
                heap.pop();
            }
        }
    }
    let node = lock();
    let rows = heap
        .into_iter()
        .map(|Reverse((_, Reverse(r)))| ResourceRow {
            resource: r,
            load: node.load(now, r),
            mode: node.mode(now, r),
        })
        .collect();
    (ids.len(), rows)
}

/// Renders `/status`: the busiest [`STATUS_TOP`] resources are picked in
/// short holds of the node's lock, then sorted and formatted without it.
pub(crate) fn status(s: &Shared) -> String {
    let mut page = format_status(status_view(s));
    crate::enforce::copy_blocks(&s.lock(), &s.io.enforce);
    page.push_str(&crate::enforce::status_text(
        &s.io.enforce,
        s.enforce.get().is_some(),
    ));
    page
}

/// What `/status` and the HTML page (`status_page`) show, taken as
/// `/status` takes it.
pub(crate) fn status_view(s: &Shared) -> StatusView {
    StatusView::take(|| s.lock(), Instant::now(), STATUS_TOP)
}

fn format_status(mut v: StatusView) -> String {
    let mut o = String::new();
    let (n, c) = (&v.node, &v.node.counters);
    let _ = writeln!(
        o,
        "node {}  sent {} datagrams / {} records  applied {} records",
        n.id, c.datagrams_sent, c.records_sent, c.records_applied
    );
    v.node.peers.sort_unstable_by_key(|p| p.id);
    let peers = &v.node.peers;
    let _ = writeln!(o, "\npeers: {}", peers.len());
    let _ = writeln!(
        o,
        "{:>8} {:>12} {:>12} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "peer", "datagrams", "records", "lost", "loss%", "late", "dups", "seen_ms"
    );
    for p in peers {
        let _ = writeln!(
            o,
            "{:>8} {:>12} {:>12} {:>10} {:>8.3} {:>8} {:>8} {:>10}",
            p.id,
            p.datagrams,
            p.records,
            p.lost,
            p.loss_ratio() * 100.0,
            p.late,
            p.duplicates,
            v.now.saturating_duration_since(p.last_seen).as_millis()
        );
    }
    v.top
        .sort_unstable_by_key(|r| (Reverse(r.load.total), r.resource));
    let _ = writeln!(
        o,
        "\nresources: {} (the {} busiest by total load)",
        v.resources,
        v.top.len()
    );
    let _ = writeln!(
        o,
        "{:>20} {:>12} {:>12} {:>6} {:>6} {:>8} {:>10}",
        "resource", "total", "local", "nodes", "mode", "by", "mode_ms"
    );
    for r in &v.top {
        let _ = writeln!(
            o,
            "{:>20} {:>12} {:>12} {:>6} {:>6} {:>8} {:>10}",
            r.resource,
            r.load.total,
            r.load.local,
            r.load.nodes,
            r.mode.level,
            r.mode.origin,
            r.mode.remaining.as_millis()
        );
    }
    crate::limits::format_status(&mut o, &v.node.limits, &v.limit_top, v.live_nodes);
    if let Some(b) = &v.node.backlog {
        let c = &b.counters;
        let _ = writeln!(
            o,
            "\nstore: backlog {}  saved {}  failed batches {}  dropped load {}  refused {}",
            b.len, c.saved, c.batches_failed, c.dropped_load, c.refused
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use shoal_core::keyrate::KeyRateCounters;
    use shoal_core::ratelimit::{KeyKind, LimitCounters, LimitSnapshot, Scope};
    use shoal_core::{
        BacklogCounters, BacklogLimits, BacklogSnapshot, Counters, ModeRules, NodeParams,
        PeerSnapshot, RelayCounters, StateLimits,
    };
    use shoal_wire::{Code, Op, Record};

    use super::*;
    use crate::storage::{ExpirerStats, MasterStats};

    /// One parsed exposition page: families by name, samples by series
    /// (`name{k="v",...}` with label values unescaped).
    #[derive(Debug, Default)]
    struct Page {
        help: HashMap<String, String>,
        kind: HashMap<String, String>,
        /// Family names in the order their TYPE line came.
        order: Vec<String>,
        samples: BTreeMap<String, f64>,
    }

    impl Page {
        fn get(&self, series: &str) -> f64 {
            *self
                .samples
                .get(series)
                .unwrap_or_else(|| panic!("no sample {series}"))
        }
    }

    /// Parses Prometheus text 0.0.4 strictly enough to catch what a
    /// scraper would refuse: a sample before its family's TYPE, a family
    /// declared twice, a TYPE without HELP, bad escapes, a stray line.
    fn parse(text: &str) -> Page {
        let mut p = Page::default();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(
                    p.help.insert(name.into(), help.into()).is_none(),
                    "HELP twice for {name}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(p.help.contains_key(name), "TYPE before HELP: {name}");
                assert!(
                    p.kind.insert(name.into(), kind.into()).is_none(),
                    "TYPE twice for {name}"
                );
                p.order.push(name.into());
                current = Some(name.into());
            } else {
                assert!(!line.starts_with('#'), "stray comment: {line}");
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("}"))),
                    None => (series, Vec::new()),
                };
                assert_eq!(
                    current.as_deref(),
                    Some(name),
                    "sample outside its family: {line}"
                );
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
                let key = if labels.is_empty() {
                    name.to_string()
                } else {
                    let l: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    format!("{name}{{{}}}", l.join(","))
                };
                assert!(p.samples.insert(key, value).is_none(), "twice: {line}");
            }
        }
        p
    }

    fn parse_labels(s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut chars = s.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label {key} not quoted");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        e => panic!("bad escape {e:?}"),
                    },
                    c => value.push(c),
                }
            }
            out.push((key, value));
            match chars.next() {
                Some(',') | None => {}
                c => panic!("after a label: {c:?}"),
            }
        }
        out
    }

    /// A snapshot where every number is different, so a value rendered
    /// under the wrong name cannot pass.
    fn snapshot(now: Instant) -> NodeSnapshot {
        let mut c = Counters {
            datagrams_sent: 101,
            records_sent: 102,
            local_datagrams: 103,
            local_records: 104,
            local_queries: 105,
            records_unsaved: 106,
            replayed: 107,
            replay_skipped: 108,
            own_looped: 109,
            replay_rejected: 110,
            peer_table_full: 111,
            records_applied: 112,
            records_bad: 113,
            records_unknown_code: 114,
            records_extension: 115,
            resource_table_full: 116,
            mode_claims_sent: 117,
            mode_changes_deferred: 118,
            ..Counters::default()
        };
        for (i, v) in c.local_rejected.iter_mut().enumerate() {
            *v = 200 + i as u64;
        }
        for (i, v) in c.rejected.iter_mut().enumerate() {
            *v = 300 + i as u64;
        }
        c.own_id_conflict = 118;
        for (i, v) in c.records_refused.iter_mut().enumerate() {
            *v = 350 + i as u64;
        }
        let peer = |id: u32, base: u64, ago_ms: u64| PeerSnapshot {
            id,
            datagrams: base + 1,
            records: base + 2,
            lost: base + 3,
            missing: base + 8,
            late: base + 4,
            duplicates: base + 5,
            stale: base + 6,
            restarts: base + 7,
            last_seen: now - Duration::from_millis(ago_ms),
        };
        NodeSnapshot {
            id: 7,
            cluster: 3,
            counters: c,
            relay: RelayCounters {
                observed: 401,
                overflowed: 402,
                applied: 403,
                duplicates: 404,
            },
            session_evictions: 405,
            resources: 406,
            modes: 407,
            sessions: 408,
            // Out of order, as a HashMap gives them.
            peers: vec![peer(9, 600, 2_500), peer(2, 500, 1_250)],
            limits: vec![LimitSnapshot {
                name: "login".into(),
                id: 0xc97f_2f32,
                scope: Scope::Cluster,
                kind: KeyKind::Opaque,
                rate: 100.0,
                burst: 20.0,
                counters: LimitCounters {
                    queries: 801,
                    hits: 802,
                    allowed: 803,
                    denied: 804,
                    never: 805,
                    announced: 806,
                },
                rates: KeyRateCounters {
                    hits: 811,
                    evictions: 812,
                    expired: 813,
                    peer_updates: 814,
                    peer_dropped: 815,
                    announce_overflow: 816,
                },
                keys: 821,
                max_keys: 822,
                peer_keys: 823,
                escalate: shoal_core::escalate::EscalateCounters {
                    crossed: 841,
                    blocked: 842,
                    already_blocked: 843,
                    refused: 844,
                    table_full: 845,
                    pending_dropped: 846,
                },
                episodes: 847,
            }],
            key_rate_unknown_table: 830,
            backlog: Some(BacklogSnapshot {
                len: 701,
                capacity: 709,
                batches_in_flight: 702,
                counters: BacklogCounters {
                    taken: 703,
                    saved: 704,
                    batches_saved: 705,
                    batches_failed: 706,
                    dropped_load: 707,
                    refused: 708,
                },
            }),
        }
    }

    /// Driver-side stats, every number different, one master address
    /// that needs escaping.
    fn io() -> IoStats {
        let io = IoStats::default();
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&io.rcvbuf_requested, 801);
        set(&io.rcvbuf_effective, 802);
        set(&io.rcvbuf_capped, 1);
        set(&io.send_errors, 804);
        set(&io.recv_errors, 805);
        set(&io.local_reply_errors, 806);
        set(&io.http_refused, 807);
        set(&io.http_evicted, 808);
        set(&io.http_timeouts, 809);
        set(&io.startup_us, 1_500_000);
        set(&io.auth_enabled, 1);
        set(&io.meter.rules, 2);
        *io.meter.dropping.lock().unwrap() = vec![("login".into(), 3)];
        set(&io.store.failovers, 901);
        set(&io.store.suspects, 903);
        set(&io.store.recoveries, 904);
        set(&io.store.ack_fallbacks, 905);
        set(&io.store.ack_replicated, 1);
        set(&io.store.replay_records, 902);
        set(&io.store.replay_us, 2_250_000);
        set(&io.store.replay_ok, 1);
        let a = &io.api;
        for (f, v) in [
            (&a.accepted, 1001),
            (&a.bad_request, 1002),
            (&a.unauthorized, 1003),
            (&a.store_errors, 1004),
            (&a.reads, 1005),
            (&a.tokens_valid, 1006),
            (&a.tokens_invalid, 1007),
        ] {
            set(f, v);
        }
        let f = &io.forwarder;
        for (a, v) in [
            (&f.leader, 1),
            (&f.epoch, 1102),
            (&f.takeovers, 1103),
            (&f.lease_errors, 1104),
            (&f.fenced, 1105),
            (&f.published, 1106),
            (&f.publish_skipped, 1107),
            (&f.fetched, 1108),
            (&f.dropped, 1109),
            (&f.errors, 1110),
        ] {
            set(a, v);
        }
        *io.store.masters.lock().expect("fresh") = vec![
            MasterStats {
                addr: "10.0.0.1:3301".into(),
                connected: true,
                active: true,
                suspect: false,
                batches: 1201,
                errors: 1202,
                log_len: 1203,
                log_bytes: 1204,
                lua_memory: 1205,
                expirer: Some(ExpirerStats {
                    deleted: 1206,
                    scanned: 1207,
                    batches: 1208,
                    lag_ms: 1_750,
                }),
            },
            MasterStats {
                addr: "odd\"name\\x".into(),
                errors: 1302,
                ..MasterStats::default()
            },
        ];
        io
    }

    fn render_page(node: NodeSnapshot, now: Instant, io: &IoStats) -> (String, Page) {
        let text = encode(&registry(node, now, io));
        let page = parse(&text);
        (text, page)
    }

    #[test]
    fn every_family_is_typed_and_counters_end_in_total() {
        let now = Instant::now();
        let (text, page) = render_page(snapshot(now), now, &io());
        assert!(page.order.len() > 60, "{text}");
        for name in &page.order {
            assert!(name.starts_with("shoal_"), "{name}");
            assert!(!page.help[name].is_empty(), "{name} has no help");
            let kind = page.kind[name].as_str();
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
            assert!(matches!(kind, "counter" | "gauge"), "{name}: {kind}");
            assert!(
                page.samples
                    .keys()
                    .any(|s| s == name || s.starts_with(&format!("{name}{{"))),
                "{name} has no sample"
            );
        }
    }

    #[test]
    fn values_match_the_snapshot() {
        let now = Instant::now();
        let snap = snapshot(now);
        let (text, p) = render_page(snap.clone(), now, &io());
        let c = &snap.counters;
        let plain = [
            ("shoal_datagrams_sent_total", c.datagrams_sent),
            ("shoal_records_sent_total", c.records_sent),
            ("shoal_local_datagrams_total", c.local_datagrams),
            ("shoal_local_records_total", c.local_records),
            ("shoal_local_queries_total", c.local_queries),
            ("shoal_records_unsaved_total", c.records_unsaved),
            ("shoal_replay_rejected_total", c.replay_rejected),
            ("shoal_own_looped_total", c.own_looped),
            ("shoal_own_id_conflict_total", c.own_id_conflict),
            ("shoal_peer_table_full_total", c.peer_table_full),
            ("shoal_records_applied_total", c.records_applied),
            ("shoal_records_bad_total", c.records_bad),
            ("shoal_records_unknown_code_total", c.records_unknown_code),
            ("shoal_records_extension_total", c.records_extension),
            ("shoal_resource_table_full_total", c.resource_table_full),
            ("shoal_mode_claims_sent_total", c.mode_claims_sent),
            ("shoal_mode_changes_deferred_total", c.mode_changes_deferred),
            ("shoal_resources", 406),
            ("shoal_modes_active", 407),
            ("shoal_sessions", 408),
            ("shoal_session_evictions_total", 405),
            ("shoal_relay_observed_total", 401),
            ("shoal_relay_overflowed_total", 402),
            ("shoal_xc_applied_total", 403),
            ("shoal_xc_duplicates_total", 404),
            ("shoal_store_backlog", 701),
            ("shoal_store_batches_in_flight", 702),
            ("shoal_store_taken_total", 703),
            ("shoal_store_saved_total", 704),
            ("shoal_store_batches_saved_total", 705),
            ("shoal_store_batches_failed_total", 706),
            ("shoal_store_dropped_load_total", 707),
            ("shoal_store_refused_total", 708),
            ("shoal_store_backlog_capacity", 709),
            ("shoal_rcvbuf_requested_bytes", 801),
            ("shoal_rcvbuf_effective_bytes", 802),
            ("shoal_rcvbuf_capped", 1),
            ("shoal_send_errors_total", 804),
            ("shoal_recv_errors_total", 805),
            ("shoal_local_reply_errors_total", 806),
            ("shoal_http_refused_total", 807),
            ("shoal_http_evicted_total", 808),
            ("shoal_http_timeouts_total", 809),
            ("shoal_auth_enabled", 1),
            ("shoal_store_failovers_total", 901),
            ("shoal_store_suspects_total", 903),
            ("shoal_store_recoveries_total", 904),
            ("shoal_store_ack_fallbacks_total", 905),
            ("shoal_store_ack_replicated", 1),
            ("shoal_replay_records", 902),
            ("shoal_replay_ok", 1),
            ("shoal_verdicts_accepted_total", 1001),
            ("shoal_verdicts_bad_request_total", 1002),
            ("shoal_api_unauthorized_total", 1003),
            ("shoal_verdicts_store_errors_total", 1004),
            ("shoal_verdicts_reads_total", 1005),
            ("shoal_tokens_valid_total", 1006),
            ("shoal_tokens_invalid_total", 1007),
            ("shoal_forwarder_leader", 1),
            ("shoal_forwarder_epoch", 1102),
            ("shoal_forwarder_takeovers_total", 1103),
            ("shoal_forwarder_lease_errors_total", 1104),
            ("shoal_forwarder_fenced_total", 1105),
            ("shoal_xc_published_total", 1106),
            ("shoal_xc_publish_skipped_total", 1107),
            ("shoal_xc_fetched_total", 1108),
            ("shoal_xc_dropped_total", 1109),
            ("shoal_forwarder_errors_total", 1110),
            ("shoal_node_info{node=\"7\",cluster=\"3\"}", 1),
        ];
        for (series, v) in plain {
            assert_eq!(p.get(series), v as f64, "{series}\n{text}");
        }
        assert_eq!(p.get("shoal_startup_seconds"), 1.5);
        assert_eq!(p.get("shoal_replay_seconds"), 2.25);
        for (i, l) in LocalError::LABELS.iter().enumerate() {
            let s = format!("shoal_local_rejected_total{{reason=\"{l}\"}}");
            assert_eq!(p.get(&s), c.local_rejected[i] as f64);
        }
        for (i, l) in DecodeError::LABELS.iter().enumerate() {
            let s = format!("shoal_datagrams_rejected_total{{reason=\"{l}\"}}");
            assert_eq!(p.get(&s), c.rejected[i] as f64);
        }
        for (i, l) in RecordRefusal::LABELS.iter().enumerate() {
            let s = format!("shoal_records_refused_total{{reason=\"{l}\"}}");
            assert_eq!(p.get(&s), c.records_refused[i] as f64);
        }
        for peer in &snap.peers {
            let s = |n: &str| format!("shoal_peer_{n}{{peer=\"{}\"}}", peer.id);
            assert_eq!(p.get(&s("datagrams_total")), peer.datagrams as f64);
            assert_eq!(p.get(&s("records_total")), peer.records as f64);
            assert_eq!(p.get(&s("lost_total")), peer.lost as f64);
            assert_eq!(p.get(&s("reordered_total")), peer.late as f64);
            assert_eq!(p.get(&s("duplicates_total")), peer.duplicates as f64);
            assert_eq!(p.get(&s("stale_total")), peer.stale as f64);
            assert_eq!(p.get(&s("restarts_total")), peer.restarts as f64);
            assert_eq!(p.get(&s("missing")), peer.missing as f64);
        }
        assert_eq!(p.get("shoal_peer_last_seen_seconds{peer=\"2\"}"), 1.25);
        assert_eq!(p.get("shoal_peer_last_seen_seconds{peer=\"9\"}"), 2.5);
        // Peers in id order within each family.
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s}"));
        assert!(at("shoal_peer_lost_total{peer=\"2\"}") < at("shoal_peer_lost_total{peer=\"9\"}"));
        let m = |n: &str| format!("shoal_{n}{{master=\"10.0.0.1:3301\"}}");
        for (n, v) in [
            ("store_master_up", 1.0),
            ("store_master_active", 1.0),
            ("store_master_batches_total", 1201.0),
            ("store_master_errors_total", 1202.0),
            ("store_log_tuples", 1203.0),
            ("store_log_bytes", 1204.0),
            ("store_lua_memory_bytes", 1205.0),
            ("expirer_deleted_total", 1206.0),
            ("expirer_scanned_total", 1207.0),
            ("expirer_batches_total", 1208.0),
            ("expirer_lag_seconds", 1.75),
        ] {
            assert_eq!(p.get(&m(n)), v, "{n}");
        }
        // The library escapes label values; the parser undoes it.
        let odd = "shoal_store_master_errors_total{master=\"odd\"name\\x\"}";
        assert_eq!(p.get(odd), 1302.0);
        assert_eq!(p.get("shoal_store_master_up{master=\"odd\"name\\x\"}"), 0.0);
        // A master without an expirer has no expirer series.
        assert!(!p
            .samples
            .keys()
            .any(|k| k.starts_with("shoal_expirer") && k.contains("odd")));
    }

    #[test]
    fn unconfigured_parts_render_nothing() {
        let now = Instant::now();
        let mut snap = snapshot(now);
        snap.backlog = None;
        snap.peers.clear();
        let (text, p) = render_page(snap, now, &IoStats::default());
        let absent = [
            "shoal_store_",
            "shoal_replay_",
            "shoal_expirer_",
            "shoal_peer_",
        ];
        for name in &p.order {
            let part_of = |prefix: &&str| name.starts_with(prefix);
            // Counted by the core whatever is configured.
            let core = ["shoal_peer_table_full_total", "shoal_replay_rejected_total"];
            assert!(
                core.contains(&name.as_str()) || !absent.iter().any(part_of),
                "{name} in\n{text}"
            );
        }
        assert_eq!(p.get("shoal_verdicts_accepted_total"), 0.0);
        assert_eq!(p.get("shoal_records_sent_total"), 102.0);
    }

    #[test]
    fn limit_values_match_the_snapshot() {
        let now = Instant::now();
        let (_, p) = render_page(snapshot(now), now, &io());
        for (name, v) in [
            ("limit_hits_total", 802.0),
            ("limit_allowed_total", 803.0),
            ("limit_denied_total", 804.0),
            ("limit_too_large_total", 805.0),
            ("limit_announced_total", 806.0),
            ("limit_evictions_total", 812.0),
            ("limit_expired_total", 813.0),
            ("limit_peer_rates_total", 814.0),
            ("limit_peer_dropped_total", 815.0),
            ("limit_keys", 821.0),
            ("limit_max_keys", 822.0),
            ("limit_peer_keys", 823.0),
        ] {
            assert_eq!(
                p.get(&format!("shoal_{name}{{limit=\"login\"}}")),
                v,
                "{name}"
            );
        }
        assert_eq!(p.get("shoal_key_rate_unknown_table_total"), 830.0);
    }

    /// Every family rendered is listed in `docs/metrics.md` with its type,
    /// and the page lists nothing that is not rendered.
    #[test]
    fn docs_list_every_family() {
        let now = Instant::now();
        let (_, p) = render_page(snapshot(now), now, &io());
        let doc = include_str!("../../docs/metrics.md");
        let mut listed = BTreeMap::new();
        for line in doc.lines().filter(|l| l.starts_with("| `shoal_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            assert!(
                listed
                    .insert(name.to_string(), cells[2].to_string())
                    .is_none(),
                "listed twice: {name}"
            );
        }
        for name in &p.order {
            assert_eq!(
                listed.get(name).map(String::as_str),
                Some(p.kind[name].as_str()),
                "docs/metrics.md: {name} missing or wrong type"
            );
        }
        for name in listed.keys() {
            assert!(
                p.kind.contains_key(name),
                "docs list {name}, never rendered"
            );
        }
    }

    fn node(id: u32) -> Node {
        Node::new(
            NodeParams {
                id,
                cluster: 1,
                max_datagram: 1400,
                flush: Duration::from_micros(200),
                keys: None,
                limits: StateLimits {
                    load_stale: Duration::from_secs(60),
                    max_resources: 100_000,
                    session_capacity: 100,
                    default_ttl: Duration::from_secs(10),
                    clock_skew: Duration::from_millis(500),
                },
                max_peers: 16,
                modes: ModeRules::default(),
                store: Some(BacklogLimits {
                    capacity: 1000,
                    batch: 10,
                }),
                relay_capacity: 64,
                hash_seed: 0x5eed,
            },
            Instant::now(),
            1_700_000_000_000_000,
            1_700_000_000_000_000,
        )
    }

    fn load(resource: u64, rate: u64) -> Record {
        Record::new(Code::LOAD, [resource, rate, 0, 0])
    }

    /// Moves every datagram `from` has ready into `to`.
    fn deliver(from: &mut Node, to: &mut Node, now: Instant) {
        from.flush();
        let mut buf = Vec::new();
        while from.poll_transmit(&mut buf) {
            to.receive(now, &buf).expect("accepted");
        }
    }

    #[test]
    fn counters_never_decrease_across_renders() {
        let t0 = Instant::now();
        let (mut a, mut b) = (node(1), node(2));
        let io = io();
        for r in 0..20 {
            b.inject(t0, load(r, 10)).expect("load");
        }
        deliver(&mut b, &mut a, t0);
        let mut saved = Record::new(Code::SESSION_MARK, [5, Record::MARK_SUSPICIOUS, 0, 0]);
        saved.op = Op::SEND_SAVE;
        a.inject(t0, saved).expect("mark");
        let (_, first) = render_page(a.snapshot(), t0, &io);

        let t1 = t0 + Duration::from_millis(50);
        for r in 0..40 {
            b.inject(t1, load(r, 20)).expect("load");
            a.inject(t1, load(1000 + r, 5)).expect("load");
        }
        deliver(&mut b, &mut a, t1);
        a.receive(t1, b"garbage").expect_err("refused");
        a.flush();
        let mut buf = Vec::new();
        while a.poll_transmit(&mut buf) {}
        let (text, second) = render_page(a.snapshot(), t1, &io);

        let mut grew = Vec::new();
        for (series, v1) in &first.samples {
            let family = series.split('{').next().unwrap_or_default();
            if first.kind.get(family).map(String::as_str) != Some("counter") {
                continue;
            }
            let v2 = second.get(series);
            assert!(v2 >= *v1, "{series} went from {v1} to {v2}\n{text}");
            if v2 > *v1 {
                grew.push(series.clone());
            }
        }
        // The test means something only if the node did count meanwhile.
        for s in [
            "shoal_records_applied_total",
            "shoal_peer_datagrams_total{peer=\"2\"}",
            "shoal_local_records_total",
            "shoal_datagrams_sent_total",
            "shoal_datagrams_rejected_total{reason=\"too_short\"}",
        ] {
            assert!(grew.iter().any(|g| g == s), "{s} did not grow: {grew:?}");
        }
        assert_eq!(second.get("shoal_store_taken_total"), 1.0);
    }

    /// The `n` busiest by brute force: every resource's total, full sort.
    fn expected_top(node: &Node, now: Instant, ids: &[u64], n: usize) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = ids.iter().map(|&r| (r, node.load(now, r).total)).collect();
        all.sort_unstable_by_key(|&(r, total)| (Reverse(total), r));
        all.truncate(n);
        all
    }

    #[test]
    fn status_lists_the_busiest_resources() {
        let now = Instant::now();
        let (mut a, mut b) = (node(1), node(2));
        let mut ids = Vec::new();
        // Deterministic spread with many ties: rate = (r * 7919) % 97.
        for r in 1..=3000u64 {
            a.inject(now, load(r, (r * 7919) % 97)).expect("load");
            ids.push(r);
        }
        // Another node adds to some totals.
        for r in (1..=3000u64).step_by(5) {
            b.inject(now, load(r, 50)).expect("load");
        }
        deliver(&mut b, &mut a, now);
        // A resource with a mode claim and no load is counted once.
        let mut m = Record::new(Code::MODE, [9_000_000, 2, 0, 0]);
        m.ttl_ms = 60_000;
        a.inject(now, m).expect("mode");
        ids.push(9_000_000);

        for n in [0, 1, 7, 50, 3000, 3001, 5000] {
            let (count, mut rows) = busiest(&|| &a, now, n);
            assert_eq!(count, 3001);
            rows.sort_unstable_by_key(|r| (Reverse(r.load.total), r.resource));
            let got: Vec<(u64, u64)> = rows.iter().map(|r| (r.resource, r.load.total)).collect();
            assert_eq!(got, expected_top(&a, now, &ids, n), "n = {n}");
        }
        let (_, rows) = busiest(&|| &a, now, 3001);
        let claimed = rows
            .iter()
            .find(|r| r.resource == 9_000_000)
            .expect("listed");
        assert_eq!((claimed.mode.level, claimed.mode.origin), (2, 1));

        let page = format_status(StatusView::take(|| &a, now, 3));
        assert!(
            page.contains("resources: 3001 (the 3 busiest by total load)"),
            "{page}"
        );
        let listed: Vec<u64> = page
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("resource "))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .expect("id")
            })
            .collect();
        let want: Vec<u64> = expected_top(&a, now, &ids, 3).iter().map(|e| e.0).collect();
        assert_eq!(listed, want, "{page}");
        assert!(page.contains("peers: 1"), "{page}");
    }
}

/// Figures, not assertions: `cargo test --release -p shoal-node --lib
/// metrics::figures -- --ignored --nocapture`.
#[cfg(test)]
mod figures {
    use std::time::Duration;

    use shoal_core::{BacklogLimits, ModeRules, NodeParams, StateLimits};
    use shoal_wire::{Code, Record};

    use super::*;

    fn node(id: u32) -> Node {
        let limits = StateLimits {
            load_stale: Duration::from_secs(600),
            max_resources: 100_000,
            session_capacity: 100,
            default_ttl: Duration::from_secs(600),
            clock_skew: Duration::from_millis(500),
        };
        let params = NodeParams {
            id,
            cluster: 1,
            max_datagram: 1400,
            flush: Duration::from_micros(200),
            keys: None,
            limits,
            max_peers: 64,
            modes: ModeRules::default(),
            store: Some(BacklogLimits {
                capacity: 1000,
                batch: 10,
            }),
            relay_capacity: 64,
            hash_seed: 0x5eed,
        };
        Node::new(
            params,
            Instant::now(),
            1_700_000_000_000_000,
            1_700_000_000_000_000,
        )
    }

    /// Microseconds per call of `f`, best of 5 rounds of `n` calls.
    fn time<R>(n: u32, mut f: impl FnMut() -> R) -> f64 {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    std::hint::black_box(f());
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .fold(f64::MAX, f64::min)
    }

    #[test]
    #[ignore = "prints figures; run in release"]
    fn render_10k_resources_16_nodes() {
        let now = Instant::now();
        let mut a = node(1);
        let mut buf = Vec::new();
        for id in 2..=16 {
            let mut b = node(id);
            for r in 0..10_000u64 {
                let rec = Record::new(Code::LOAD, [r, (r * 7919 + id as u64) % 1000, 0, 0]);
                b.inject(now, rec).expect("load");
            }
            b.flush();
            while b.poll_transmit(&mut buf) {
                a.receive(now, &buf).expect("accepted");
            }
        }
        let io = IoStats::default();
        let snap_us = time(200, || a.snapshot());
        let encode_us = time(200, || encode(&registry(a.snapshot(), now, &io)));
        let status_us = time(20, || {
            format_status(StatusView::take(|| &a, now, STATUS_TOP))
        });
        // The holds while /status runs: one copying the ids, then one per
        // chunk of loads (average: the chunks are cold in cache).
        let ids_us = time(20, || a.state().resource_ids().collect::<Vec<u64>>());
        let chunks = a.state().resource_ids().count().div_ceil(STATUS_CHUNK);
        let chunk_us = (status_us - ids_us) / chunks as f64;
        // The old /status held the lock for a sort of every id, then
        // formatted (the first 50 ids, not the busiest) under it.
        let full_sort_us = time(20, || a.state().resources());
        println!(
            "10k resources x 16 origins, 15 peers:\n  \
             /metrics {encode_us:.1} us, lock held {snap_us:.2} us (snapshot)\n  \
             /status {status_us:.1} us in {} holds: ids {ids_us:.1} us, then \
             {chunks} chunks of {STATUS_CHUNK} at {chunk_us:.1} us on average\n  \
             old /status: sort of all ids alone {full_sort_us:.1} us under the lock",
            chunks + 3
        );
    }
}
