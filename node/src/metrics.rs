//! Every metric the node exposes, registered and rendered in one place as
//! Prometheus text (all names prefixed `shoal_`), plus the human status
//! page printed by `shoal status`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shoal_wire::DecodeError;

use crate::node::{LocalError, Node};

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
    /// Microseconds the start-up took before the node answered its filter.
    pub startup_us: AtomicU64,
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
    let mut peers: Vec<_> = node.peers().collect();
    peers.sort_by_key(|(id, _)| *id);
    type PeerField = fn(&crate::node::PeerStats) -> u64;
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
    o
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
    o
}
