//! Every metric the node exposes, registered and rendered in one place as
//! Prometheus text (all names prefixed `shoal_`), plus the human status
//! page printed by `shoal status`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use shoal_wire::DecodeError;

use shoal_core::Backlog;
use shoal_core::{LocalError, Node};

/// Counters kept by the I/O driver, outside the node's lock.
#[derive(Debug, Default)]
pub struct IoStats {
    pub rcvbuf_requested: AtomicU64,
    pub rcvbuf_effective: AtomicU64,
    /// 1 when the kernel gave less receive buffer than configured.
    pub rcvbuf_capped: AtomicU64,
    pub send_errors: AtomicU64,
    pub recv_errors: AtomicU64,
    pub local_reply_errors: AtomicU64,
    /// HTTP connections closed at accept: too many open.
    pub http_refused: AtomicU64,
    /// Microseconds the start-up took before the node answered its filter.
    pub startup_us: AtomicU64,
    /// 1 with `[auth]` (signed datagrams), 0 without: alert on 0.
    pub auth_enabled: AtomicU64,
    /// The Tarantool side, when a store is configured.
    pub store: StoreIo,
    /// The post-markup API and the forwarder, with `[verdicts]`.
    pub(crate) api: crate::verdicts::ApiStats,
    pub(crate) forwarder: crate::forwarder::ForwarderStats,
}

/// What the storage driver reports (its backlog lives in the node).
#[derive(Debug, Default)]
pub struct StoreIo {
    pub failovers: AtomicU64,
    /// Records loaded from the store at start, and how long it took.
    pub replay_records: AtomicU64,
    pub replay_us: AtomicU64,
    /// 1 when the start-up replay completed.
    pub replay_ok: AtomicU64,
    pub masters: Mutex<Vec<MasterStats>>,
}

/// One master of the cluster's store, as last seen.
#[derive(Debug, Clone, Default)]
pub struct MasterStats {
    pub addr: String,
    pub connected: bool,
    /// Saves go here now.
    pub active: bool,
    pub batches: u64,
    pub errors: u64,
    /// From `shoal_stats()` on the master.
    pub log_len: u64,
    pub log_bytes: u64,
    pub lua_memory: u64,
    pub expirer: Option<ExpirerStats>,
}

/// The native expiry worker's counters on one master.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpirerStats {
    pub deleted: u64,
    pub scanned: u64,
    pub batches: u64,
    pub lag_ms: u64,
}

impl IoStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP shoal_{name} {help}\n# TYPE shoal_{name} {kind}\nshoal_{name} {value}"
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP shoal_{name} {help}\n# TYPE shoal_{name} {kind}"
    );
}

/// Renders the Prometheus text exposition.
pub fn render(node: &Node, io: &IoStats, now: Instant) -> String {
    let mut o = String::with_capacity(8 << 10);
    let c = node.counters();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(o, "# shoal node {}", node.id());
    metric(
        &mut o,
        "datagrams_sent_total",
        "counter",
        "Datagrams multicast by this node.",
        c.datagrams_sent,
    );
    metric(
        &mut o,
        "records_sent_total",
        "counter",
        "Records multicast by this node.",
        c.records_sent,
    );
    metric(
        &mut o,
        "local_datagrams_total",
        "counter",
        "Datagrams received from the local filter.",
        c.local_datagrams,
    );
    metric(
        &mut o,
        "local_records_total",
        "counter",
        "Records accepted from the local filter.",
        c.local_records,
    );
    metric(
        &mut o,
        "local_queries_total",
        "counter",
        "Queries answered on the local socket.",
        c.local_queries,
    );
    header(
        &mut o,
        "local_rejected_total",
        "counter",
        "Local records or datagrams refused, by reason.",
    );
    for (i, l) in LocalError::LABELS.iter().enumerate() {
        let _ = writeln!(
            o,
            "shoal_local_rejected_total{{reason=\"{l}\"}} {}",
            c.local_rejected[i]
        );
    }
    metric(
        &mut o,
        "records_unsaved_total",
        "counter",
        "Records asking for save that were not persisted (no store configured).",
        c.records_unsaved,
    );
    header(
        &mut o,
        "datagrams_rejected_total",
        "counter",
        "Cluster datagrams refused before any record was read, by reason.",
    );
    for (i, l) in DecodeError::LABELS.iter().enumerate() {
        let _ = writeln!(
            o,
            "shoal_datagrams_rejected_total{{reason=\"{l}\"}} {}",
            c.rejected[i]
        );
    }
    metric(
        &mut o,
        "replay_rejected_total",
        "counter",
        "Datagrams refused by the replay window (duplicates and stale).",
        c.replay_rejected,
    );
    metric(
        &mut o,
        "own_looped_total",
        "counter",
        "This node's own datagrams received back through multicast loop.",
        c.own_looped,
    );
    metric(
        &mut o,
        "peer_table_full_total",
        "counter",
        "Datagrams from new senders refused because the peer table is full.",
        c.peer_table_full,
    );
    metric(
        &mut o,
        "records_applied_total",
        "counter",
        "Cluster records applied to the state.",
        c.records_applied,
    );
    metric(
        &mut o,
        "records_bad_total",
        "counter",
        "Cluster records skipped as malformed.",
        c.records_bad,
    );
    metric(
        &mut o,
        "records_unknown_code_total",
        "counter",
        "Records skipped for an unknown code.",
        c.records_unknown_code,
    );
    metric(
        &mut o,
        "records_extension_total",
        "counter",
        "Extension-range records seen.",
        c.records_extension,
    );
    metric(
        &mut o,
        "resource_table_full_total",
        "counter",
        "Records for new resources refused because the table is full.",
        c.resource_table_full,
    );
    metric(
        &mut o,
        "mode_claims_sent_total",
        "counter",
        "Protection-mode claims broadcast by this node's controller.",
        c.mode_claims_sent,
    );
    let (resources, modes, sessions) = node.state().counts();
    metric(
        &mut o,
        "resources",
        "gauge",
        "Resources with a load gauge.",
        resources as u64,
    );
    metric(
        &mut o,
        "modes_active",
        "gauge",
        "Resources with a live mode claim.",
        modes as u64,
    );
    metric(
        &mut o,
        "sessions",
        "gauge",
        "Session marks held.",
        sessions as u64,
    );
    metric(
        &mut o,
        "session_evictions_total",
        "counter",
        "Session marks evicted (oldest first) to respect the capacity.",
        node.session_evictions(),
    );
    metric(
        &mut o,
        "rcvbuf_requested_bytes",
        "gauge",
        "Receive buffer asked for in the config.",
        g(&io.rcvbuf_requested),
    );
    metric(
        &mut o,
        "rcvbuf_effective_bytes",
        "gauge",
        "Receive buffer the kernel granted.",
        g(&io.rcvbuf_effective),
    );
    metric(
        &mut o,
        "rcvbuf_capped",
        "gauge",
        "1 when the kernel capped the receive buffer (raise net.core.rmem_max).",
        g(&io.rcvbuf_capped),
    );
    metric(
        &mut o,
        "send_errors_total",
        "counter",
        "Multicast sends that failed.",
        g(&io.send_errors),
    );
    metric(
        &mut o,
        "recv_errors_total",
        "counter",
        "Multicast receives that failed.",
        g(&io.recv_errors),
    );
    metric(
        &mut o,
        "local_reply_errors_total",
        "counter",
        "Replies to the filter that could not be sent.",
        g(&io.local_reply_errors),
    );
    metric(
        &mut o,
        "startup_microseconds",
        "gauge",
        "Time from start to answering the filter.",
        g(&io.startup_us),
    );
    metric(
        &mut o,
        "auth_enabled",
        "gauge",
        "1 when datagrams are signed ([auth]); 0 trusts every host on the segment.",
        g(&io.auth_enabled),
    );
    let mut peers: Vec<_> = node.peers().collect();
    peers.sort_by_key(|(id, _)| *id);
    type PeerField = fn(&shoal_core::PeerStats) -> u64;
    let per_peer: [(&str, &str, PeerField); 7] = [
        (
            "peer_datagrams_total",
            "Datagrams accepted from the peer.",
            |p| p.datagrams,
        ),
        (
            "peer_records_total",
            "Records carried by accepted datagrams.",
            |p| p.records,
        ),
        (
            "peer_lost_total",
            "Datagrams of the peer lost (sequence gaps not filled later).",
            |p| p.lost(),
        ),
        (
            "peer_reordered_total",
            "Datagrams of the peer that arrived late but within the window.",
            |p| p.late,
        ),
        (
            "peer_duplicates_total",
            "Duplicate datagrams of the peer refused.",
            |p| p.duplicates,
        ),
        (
            "peer_stale_total",
            "Datagrams of the peer refused as too old (or replayed).",
            |p| p.stale,
        ),
        (
            "peer_restarts_total",
            "Times the peer came back with a new incarnation.",
            |p| p.restarts,
        ),
    ];
    for (name, help, f) in per_peer {
        header(&mut o, name, "counter", help);
        for (id, p) in &peers {
            let _ = writeln!(o, "shoal_{name}{{peer=\"{id}\"}} {}", f(p));
        }
    }
    header(
        &mut o,
        "peer_last_seen_seconds",
        "gauge",
        "Seconds since the peer's last accepted datagram.",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o,
            "shoal_peer_last_seen_seconds{{peer=\"{id}\"}} {:.3}",
            now.saturating_duration_since(p.last_seen).as_secs_f64()
        );
    }
    if let Some(b) = node.backlog() {
        render_store(&mut o, b, &io.store);
    }
    render_xc(&mut o, node, io);
    o
}

/// The relay, the post-markup API and the forwarder.
fn render_xc(o: &mut String, node: &Node, io: &IoStats) {
    let r = node.relay().counters();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (a, f) = (&io.api, &io.forwarder);
    let series: [(&str, &str, &str, u64); 22] = [
        (
            "http_refused_total",
            "counter",
            "HTTP connections closed at accept because too many were open.",
            g(&io.http_refused),
        ),
        (
            "relay_observed_total",
            "counter",
            "Mode records of this cluster taken into the relay ring.",
            r.observed,
        ),
        (
            "relay_overflowed_total",
            "counter",
            "Relay ring entries dropped before this node published them.",
            r.overflowed,
        ),
        (
            "xc_applied_total",
            "counter",
            "Relayed messages from other clusters applied here.",
            r.applied,
        ),
        (
            "xc_duplicates_total",
            "counter",
            "Relayed messages received again and not re-applied.",
            r.duplicates,
        ),
        (
            "verdicts_accepted_total",
            "counter",
            "Verdicts stored and acknowledged (201).",
            g(&a.accepted),
        ),
        (
            "verdicts_bad_request_total",
            "counter",
            "API requests refused as malformed (400).",
            g(&a.bad_request),
        ),
        (
            "api_unauthorized_total",
            "counter",
            "API requests without an accepted bearer token (401).",
            g(&a.unauthorized),
        ),
        (
            "verdicts_store_errors_total",
            "counter",
            "API requests the verdict store did not serve (503).",
            g(&a.store_errors),
        ),
        (
            "verdicts_reads_total",
            "counter",
            "Verdict reads.",
            g(&a.reads),
        ),
        (
            "tokens_valid_total",
            "counter",
            "Session tokens verified valid.",
            g(&a.tokens_valid),
        ),
        (
            "tokens_invalid_total",
            "counter",
            "Session tokens refused (forged, expired, unknown key).",
            g(&a.tokens_invalid),
        ),
        (
            "forwarder_leader",
            "gauge",
            "1 while this node holds the cluster's forwarder lease.",
            g(&f.leader),
        ),
        (
            "forwarder_epoch",
            "gauge",
            "Fencing epoch of the lease as last seen.",
            g(&f.epoch),
        ),
        (
            "forwarder_takeovers_total",
            "counter",
            "Times this node became the forwarder.",
            g(&f.takeovers),
        ),
        (
            "forwarder_lease_errors_total",
            "counter",
            "Lease requests that failed.",
            g(&f.lease_errors),
        ),
        (
            "forwarder_fenced_total",
            "counter",
            "Queue writes refused because the lease had moved on.",
            g(&f.fenced),
        ),
        (
            "xc_published_total",
            "counter",
            "Messages this node added to the cross-cluster queue.",
            g(&f.published),
        ),
        (
            "xc_publish_skipped_total",
            "counter",
            "Messages published again and already queued.",
            g(&f.publish_skipped),
        ),
        (
            "xc_fetched_total",
            "counter",
            "Messages fetched from other clusters by this forwarder.",
            g(&f.fetched),
        ),
        (
            "xc_dropped_total",
            "counter",
            "Fetched messages not relayed (expired, or not a mode).",
            g(&f.dropped),
        ),
        (
            "forwarder_errors_total",
            "counter",
            "Forwarding rounds that failed and were retried.",
            g(&f.errors),
        ),
    ];
    for (name, kind, help, v) in series {
        metric(o, name, kind, help, v);
    }
}

/// Name, type, help and value of a per-master series.
type MasterSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MasterStats) -> Option<u64>,
);

fn render_store(o: &mut String, b: &Backlog, io: &StoreIo) {
    let c = b.counters();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let plain: [(&str, &str, &str, u64); 10] = [
        (
            "store_backlog",
            "gauge",
            "Records waiting for the store (queued and in flight).",
            b.len() as u64,
        ),
        (
            "store_batches_in_flight",
            "gauge",
            "Save batches sent and not yet answered.",
            b.batches_in_flight() as u64,
        ),
        (
            "store_taken_total",
            "counter",
            "Records taken into the save backlog.",
            c.taken,
        ),
        (
            "store_saved_total",
            "counter",
            "Records the store acknowledged.",
            c.saved,
        ),
        (
            "store_batches_saved_total",
            "counter",
            "Save batches committed.",
            c.batches_saved,
        ),
        (
            "store_batches_failed_total",
            "counter",
            "Save batches failed or timed out (retried).",
            c.batches_failed,
        ),
        (
            "store_dropped_load_total",
            "counter",
            "Load records dropped from a full backlog.",
            c.dropped_load,
        ),
        (
            "store_refused_total",
            "counter",
            "Save records refused by a full backlog (the filter is told).",
            c.refused,
        ),
        (
            "store_failovers_total",
            "counter",
            "Switches of the active master.",
            g(&io.failovers),
        ),
        (
            "replay_records",
            "gauge",
            "Records replayed from the store at start.",
            g(&io.replay_records),
        ),
    ];
    for (name, kind, help, v) in plain {
        metric(o, name, kind, help, v);
    }
    header(
        o,
        "replay_seconds",
        "gauge",
        "Time the start-up replay took.",
    );
    let _ = writeln!(
        o,
        "shoal_replay_seconds {:.6}",
        g(&io.replay_us) as f64 / 1e6
    );
    metric(
        o,
        "replay_ok",
        "gauge",
        "1 when the start-up replay completed.",
        g(&io.replay_ok),
    );
    let masters = io.masters.lock().map(|m| m.clone()).unwrap_or_default();
    let per_master: [MasterSeries; 10] = [
        (
            "store_master_up",
            "gauge",
            "1 when connected and authenticated.",
            |m| Some(m.connected as u64),
        ),
        (
            "store_master_active",
            "gauge",
            "1 for the master saves go to.",
            |m| Some(m.active as u64),
        ),
        (
            "store_master_batches_total",
            "counter",
            "Save batches committed by this master.",
            |m| Some(m.batches),
        ),
        (
            "store_master_errors_total",
            "counter",
            "Failed requests to this master.",
            |m| Some(m.errors),
        ),
        (
            "store_log_tuples",
            "gauge",
            "Tuples in shoal_log on this master.",
            |m| Some(m.log_len),
        ),
        (
            "store_log_bytes",
            "gauge",
            "Bytes of shoal_log on this master.",
            |m| Some(m.log_bytes),
        ),
        (
            "store_lua_memory_bytes",
            "gauge",
            "Lua memory of this master.",
            |m| Some(m.lua_memory),
        ),
        (
            "expirer_deleted_total",
            "counter",
            "Tuples deleted by the expiry worker.",
            |m| m.expirer.map(|e| e.deleted),
        ),
        (
            "expirer_scanned_total",
            "counter",
            "Tuples looked at by the expiry worker.",
            |m| m.expirer.map(|e| e.scanned),
        ),
        (
            "expirer_lag_seconds",
            "gauge",
            "Age of the oldest expired tuple still present.",
            |m| m.expirer.map(|e| e.lag_ms),
        ),
    ];
    for (name, kind, help, f) in per_master {
        header(o, name, kind, help);
        for m in &masters {
            if let Some(v) = f(m) {
                if name == "expirer_lag_seconds" {
                    let _ = writeln!(
                        o,
                        "shoal_{name}{{master=\"{}\"}} {:.3}",
                        m.addr,
                        v as f64 / 1e3
                    );
                } else {
                    let _ = writeln!(o, "shoal_{name}{{master=\"{}\"}} {v}", m.addr);
                }
            }
        }
    }
    header(
        o,
        "expirer_batches_total",
        "counter",
        "Expiry transactions committed.",
    );
    for m in &masters {
        if let Some(e) = m.expirer {
            let _ = writeln!(
                o,
                "shoal_expirer_batches_total{{master=\"{}\"}} {}",
                m.addr, e.batches
            );
        }
    }
}

/// Renders the operator's status page: peers with their loss, resources
/// with their totals and modes.
pub fn status(node: &Node, now: Instant, max_resources: usize) -> String {
    let mut o = String::new();
    let c = node.counters();
    let _ = writeln!(
        o,
        "node {}  sent {} datagrams / {} records  applied {} records",
        node.id(),
        c.datagrams_sent,
        c.records_sent,
        c.records_applied
    );
    let mut peers: Vec<_> = node.peers().collect();
    peers.sort_by_key(|(id, _)| *id);
    let _ = writeln!(o, "\npeers: {}", peers.len());
    let _ = writeln!(
        o,
        "{:>8} {:>12} {:>12} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "peer", "datagrams", "records", "lost", "loss%", "late", "dups", "seen_ms"
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o,
            "{:>8} {:>12} {:>12} {:>10} {:>8.3} {:>8} {:>8} {:>10}",
            id,
            p.datagrams,
            p.records,
            p.lost(),
            p.loss_ratio() * 100.0,
            p.late,
            p.duplicates,
            now.saturating_duration_since(p.last_seen).as_millis()
        );
    }
    let resources = node.state().resources();
    let _ = writeln!(
        o,
        "\nresources: {} (showing up to {max_resources})",
        resources.len()
    );
    let _ = writeln!(
        o,
        "{:>20} {:>12} {:>12} {:>6} {:>6} {:>8} {:>10}",
        "resource", "total", "local", "nodes", "mode", "by", "mode_ms"
    );
    for r in resources.into_iter().take(max_resources) {
        let l = node.load(now, r);
        let m = node.mode(now, r);
        let _ = writeln!(
            o,
            "{:>20} {:>12} {:>12} {:>6} {:>6} {:>8} {:>10}",
            r,
            l.total,
            l.local,
            l.nodes,
            m.level,
            m.origin,
            m.remaining.as_millis()
        );
    }
    if let Some(b) = node.backlog() {
        let c = b.counters();
        let _ = writeln!(
            o,
            "\nstore: backlog {}  saved {}  failed batches {}  dropped load {}  refused {}",
            b.len(),
            c.saved,
            c.batches_failed,
            c.dropped_load,
            c.refused
        );
    }
    o
}
