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
use shoal_core::{LoadView, LocalError, ModeView, Node, NodeSnapshot};
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
    /// HTTP connections closed at accept: too many open.
    pub(crate) http_refused: AtomicU64,
    /// Microseconds the start-up took before the node answered its filter.
    pub(crate) startup_us: AtomicU64,
    /// 1 with `[auth]` (signed datagrams), 0 without: alert on 0.
    pub(crate) auth_enabled: AtomicU64,
    /// The Tarantool side, when a store is configured.
    pub(crate) store: crate::storage::StoreIo,
    /// The post-markup API and the forwarder, with `[verdicts]`.
    pub(crate) api: crate::verdicts::ApiStats,
    pub(crate) forwarder: crate::forwarder::ForwarderStats,
}

impl IoStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the driver's values as they are now, then those of the
    /// store, the API and the forwarder.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let [requested, effective, capped, send, recv, reply, http, startup_us, auth] = [
            &self.rcvbuf_requested,
            &self.rcvbuf_effective,
            &self.rcvbuf_capped,
            &self.send_errors,
            &self.recv_errors,
            &self.local_reply_errors,
            &self.http_refused,
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
                "HTTP connections closed at accept because too many were open.",
                http,
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
        o.0.encode_descriptor(
            "node",
            "This node's id and cluster.",
            None,
            MetricType::Info,
        )
        .and_then(|m| Info::new([("node", n.id), ("cluster", n.cluster)]).encode(m))?;
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
        let mut peers = self.node.peers.clone();
        peers.sort_unstable_by_key(|p| p.id);
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
                "Datagrams of the peer lost (sequence gaps not filled later).",
                |p| p.lost,
            ),
            (
                "peer_reordered",
                "Datagrams of the peer that arrived late but within the window.",
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
fn registry(node: NodeSnapshot, now: Instant, io: &IoStats) -> Registry {
    let mut reg = Registry::with_prefix("shoal");
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
    let node = s.lock().snapshot();
    encode(&registry(node, Instant::now(), &s.io))
}

/// One line of the status page's resource table.
#[derive(Debug, Clone, Copy)]
struct ResourceRow {
    resource: u64,
    load: LoadView,
    mode: ModeView,
}

/// What `/status` shows, copied out of the node.
#[derive(Debug)]
struct StatusView {
    node: NodeSnapshot,
    /// Resources with a fresh gauge or a live claim.
    resources: usize,
    /// The busiest, busiest first.
    top: Vec<ResourceRow>,
    now: Instant,
}

impl StatusView {
    fn take(node: &Node, now: Instant, top: usize) -> StatusView {
        let (resources, top) = busiest(node, now, top);
        StatusView {
            node: node.snapshot(),
            resources,
            top,
            now,
        }
    }
}

/// Counts the resources and picks the `n` with the highest total load
/// (ties: lowest id first) with a heap of at most `n` entries: O(R log n)
/// time and O(n) memory however many resources there are. Rows come back
/// unordered.
fn busiest(node: &Node, now: Instant, n: usize) -> (usize, Vec<ResourceRow>) {
    // Min-heap on (total, Reverse(id)): the root is the first to go.
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<u64>)>> = BinaryHeap::with_capacity(n + 1);
    let mut count = 0;
    for r in node.state().resource_ids() {
        count += 1;
        if n == 0 {
            continue;
        }
        let key = (node.load(now, r).total, Reverse(r));
        if heap.len() == n && heap.peek().is_some_and(|Reverse(min)| key <= *min) {
            continue;
        }
        heap.push(Reverse(key));
        if heap.len() > n {
            heap.pop();
        }
    }
    let rows = heap
        .into_iter()
        .map(|Reverse((_, Reverse(r)))| ResourceRow {
            resource: r,
            load: node.load(now, r),
            mode: node.mode(now, r),
        })
        .collect();
    (count, rows)
}

/// Renders `/status`: the busiest [`STATUS_TOP`] resources are picked
/// under the node's lock, and everything is sorted and formatted after it.
pub(crate) fn status(s: &Shared) -> String {
    let now = Instant::now();
    let view = StatusView::take(&s.lock(), now, STATUS_TOP);
    format_status(view)
}

fn format_status(mut v: StatusView) -> String {
    let mut o = String::new();
    let (n, c) = (&v.node, &v.node.counters);
    let _ = writeln!(
        o,
        "node {}  sent {} datagrams / {} records  applied {} records",
        n.id, c.datagrams_sent, c.records_sent, c.records_applied
    );
    let mut peers = n.peers.clone();
    peers.sort_unstable_by_key(|p| p.id);
    let _ = writeln!(o, "\npeers: {}", peers.len());
    let _ = writeln!(
        o,
        "{:>8} {:>12} {:>12} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "peer", "datagrams", "records", "lost", "loss%", "late", "dups", "seen_ms"
    );
    for p in &peers {
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
