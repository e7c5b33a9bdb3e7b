//! The status page for people: `GET /status.html` on the HTTP listener,
//! the cluster at a glance as one small HTML document (no script, no
//! external resource, refreshed by the browser every 5 s): this node,
//! its peers and their loss, the busiest resources and their modes, the
//! save backlog and the store's masters, the forwarder. It shows what
//! `/status` shows (taken the same way: short holds of the node's lock,
//! formatting after) plus the driver's, store's and forwarder's state.
//! Every string that is not ours (a master's address) is escaped.

use std::cmp::Reverse;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::metrics::{self, StatusView};
use crate::server::Shared;
use crate::storage::MasterStats;

pub(crate) const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// What the page shows besides the node's own view.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub(crate) auth: bool,
    pub(crate) rcvbuf_capped: bool,
    pub(crate) masters: Vec<MasterStats>,
    pub(crate) replay_ok: Option<bool>,
    pub(crate) forwarder_leader: bool,
    pub(crate) forwarder_epoch: u64,
}

pub(crate) fn render(s: &Shared) -> String {
    let view = metrics::status_view(s);
    let io = &s.io;
    let masters = match io.store.masters.lock() {
        Ok(m) => m.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let extra = Extra {
        auth: io.auth_enabled.load(Ordering::Relaxed) == 1,
        rcvbuf_capped: io.rcvbuf_capped.load(Ordering::Relaxed) == 1,
        replay_ok: (!masters.is_empty()).then(|| io.store.replay_ok.load(Ordering::Relaxed) == 1),
        masters,
        forwarder_leader: io.forwarder.leader.load(Ordering::Relaxed) == 1,
        forwarder_epoch: io.forwarder.epoch.load(Ordering::Relaxed),
    };
    format(view, &extra)
}

/// `&`, `<`, `>`, `"` and `'` as entities.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn yes_no(ok: bool, yes: &str, no: &str) -> String {
    let (class, text) = if ok { ("ok", yes) } else { ("bad", no) };
    format!("<span class=\"{class}\">{text}</span>")
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.4em}\
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}\
th{background:#f3f3f3}.ok{color:#17692b;font-weight:600}.bad{color:#b00020;font-weight:600}\
.mode{font-weight:600}";

pub(crate) fn format(mut v: StatusView, x: &Extra) -> String {
    let mut o = String::with_capacity(8 << 10);
    let n = &v.node;
    let _ = write!(
        o,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>shoal node {id} (cluster {cl})</title><style>{STYLE}</style></head><body>\
<h1 id=\"node\">shoal node {id}, cluster {cl}</h1>\
<p>multicast signed: {auth} &middot; receive buffer: {rcv} &middot; sent {ds} datagrams / {rs} records &middot; applied {ra} records &middot; sessions {se}</p>",
        id = n.id,
        cl = n.cluster,
        auth = yes_no(x.auth, "yes", "NO ([auth] missing)"),
        rcv = yes_no(!x.rcvbuf_capped, "as configured", "CAPPED (raise net.core.rmem_max)"),
        ds = n.counters.datagrams_sent,
        rs = n.counters.records_sent,
        ra = n.counters.records_applied,
        se = n.sessions,
    );

    v.node.peers.sort_unstable_by_key(|p| p.id);
    let _ = write!(
        o,
        "<h2>Peers: <span id=\"peer-count\">{}</span></h2><table id=\"peers\"><tr><th>peer</th><th>datagrams</th><th>records</th><th>lost</th><th>loss %</th><th>late</th><th>duplicates</th><th>restarts</th><th>last seen</th></tr>",
        v.node.peers.len()
    );
    for p in &v.node.peers {
        let seen = v.now.saturating_duration_since(p.last_seen).as_millis();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td></tr>",
            p.id,
            p.datagrams,
            p.records,
            p.lost,
            p.loss_ratio() * 100.0,
            p.late,
            p.duplicates,
            p.restarts,
            seen
        );
    }
    o.push_str("</table>");

    v.top
        .sort_unstable_by_key(|r| (Reverse(r.load.total), r.resource));
    let _ = write!(
        o,
        "<h2>Resources: {} (the {} busiest)</h2><table id=\"resources\"><tr><th>resource</th><th>total req/s</th><th>local</th><th>nodes</th><th>mode</th><th>claimed by</th><th>mode left</th></tr>",
        v.resources,
        v.top.len()
    );
    for r in &v.top {
        let by = match r.mode.origin >> 32 {
            0 if r.mode.level == 0 => String::new(),
            0 => format!("node {}", r.mode.origin),
            c => format!("cluster {c} node {}", r.mode.origin & 0xffff_ffff),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mode\">{}</td><td>{}</td><td>{} ms</td></tr>",
            r.resource,
            r.load.total,
            r.load.local,
            r.load.nodes,
            r.mode.level,
            by,
            r.mode.remaining.as_millis()
        );
    }
    o.push_str("</table>");

    o.push_str("<h2>Store</h2>");
    match &v.node.backlog {
        None => o.push_str("<p id=\"store\">no [store]: nothing is saved</p>"),
        Some(b) => {
            let c = &b.counters;
            let _ = write!(
                o,
                "<p id=\"store\">backlog {} of {} &middot; saved {} &middot; failed batches {} &middot; dropped load {} &middot; refused {} &middot; replay {}</p>",
                b.len,
                b.capacity,
                c.saved,
                c.batches_failed,
                c.dropped_load,
                c.refused,
                match x.replay_ok {
                    Some(ok) => yes_no(ok, "completed", "NOT completed"),
                    None => "-".into(),
                }
            );
            o.push_str("<table id=\"masters\"><tr><th>master</th><th>connected</th><th>active</th><th>batches</th><th>errors</th><th>log tuples</th></tr>");
            for m in &x.masters {
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&m.addr),
                    yes_no(m.connected, "up", "DOWN"),
                    if m.active { "active" } else { "" },
                    m.batches,
                    m.errors,
                    m.log_len
                );
            }
            o.push_str("</table>");
        }
    }

    let _ = writeln!(
        o,
        "<h2>Forwarder</h2><p id=\"forwarder\">{} &middot; lease epoch {}</p></body></html>",
        if x.forwarder_leader {
            "<span class=\"ok\">this node forwards for its cluster</span>"
        } else {
            "another node (or none) forwards"
        },
        x.forwarder_epoch
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_open_markup() {
        assert_eq!(
            escape("<a href='x'>\"&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
    }
}
