//! The syslog edge of the responder: UDP and TCP listeners, the bounded
//! queue between them and the rules, and the worker that turns a rule's
//! action into a record on the node (send+save, like a filter's).
//!
//! Parsing and framing are `shoal_core::syslog`, the decisions
//! `shoal_core::rules`; this module owns sockets, threads and limits:
//!
//! - senders outside `[syslog] allow` are refused (UDP datagram dropped,
//!   TCP connection closed), counted;
//! - one bounded queue: a full queue drops UDP messages (counted) and
//!   stops reading TCP connections until there is room (back-pressure: the
//!   kernel's window closes on the sender);
//! - messages over `max_message` are counted and skipped, never buffered;
//! - at most `max_connections` TCP connections, `max_per_source` from one
//!   address; one idle for `idle_timeout_ms`, or sitting on a partial
//!   message for `frame_timeout_ms` (slowloris), is closed, counted.
//!
//! Every line is counted once by what became of it (`shoal_syslog_*`,
//! `shoal_responder_*`): nothing is lost silently.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde::Deserialize;
use shoal_core::rules::{
    addr_key, block_prefix, ActionSpec, ClusterBuckets, Miss, Net, NetList, Outcome, Responder,
    RuleSet,
};
use shoal_core::syslog::{self, Frame, Framer};
use shoal_core::{LocalError, Node};
use shoal_wire::{Code, Op, Record};
use tracing::{debug, info, warn};

use crate::config::ConfigError;
use crate::metrics::collector;
use crate::server::Shared;

/// `[syslog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSection {
    /// `host:port` for UDP; absent: no UDP.
    #[serde(default)]
    pub udp: Option<String>,
    /// `host:port` for TCP (octet counting or LF framing); absent: no TCP.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Source networks accepted; required (no default trust).
    pub allow: Vec<String>,
    /// The rules file.
    pub rules: PathBuf,
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_per_source")]
    pub max_per_source: usize,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// Buckets tracked at once over all rules (a key is a rule and an
    /// address), shared equally; each takes about 100 bytes, allocated at
    /// start.
    #[serde(default = "default_buckets")]
    pub buckets: usize,
    /// Whether a line that came over UDP may count toward any rule. Off
    /// by default: a UDP source address can be forged from anywhere on the
    /// path, and `allow` cannot tell; turn it on only where spoofed sources
    /// are filtered before they reach the node (BCP 38, rp_filter).
    #[serde(default)]
    pub trust_udp: bool,
}

fn default_max_message() -> usize {
    8192
}
fn default_queue() -> usize {
    16_384
}
fn default_max_connections() -> usize {
    256
}
fn default_max_per_source() -> usize {
    16
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_frame_timeout_ms() -> u64 {
    10_000
}
fn default_buckets() -> usize {
    262_144
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("syslog.{key}"),
        message: message.into(),
    }
}

impl SyslogSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.udp.is_none() && self.tcp.is_none() {
            return Err(invalid("udp", "give udp, tcp or both"));
        }
        for (k, v) in [("udp", &self.udp), ("tcp", &self.tcp)] {
            if let Some(a) = v {
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid(k, format!("`{a}` is not ip:port")))?;
            }
        }
        if self.allow.is_empty() {
            return Err(invalid(
                "allow",
                "list the source networks (e.g. \"10.0.0.0/8\")",
            ));
        }
        self.allow_list()?;
        let range = |k: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(invalid(k, format!("{lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range("max_message", self.max_message as u64, 480, 65_536)?;
        range("queue", self.queue as u64, 1, 1 << 20)?;
        range("max_connections", self.max_connections as u64, 1, 65_536)?;
        range("max_per_source", self.max_per_source as u64, 1, 65_536)?;
        range("idle_timeout_ms", self.idle_timeout_ms, 100, 86_400_000)?;
        range("frame_timeout_ms", self.frame_timeout_ms, 100, 3_600_000)?;
        range("buckets", self.buckets as u64, 1, 50_000_000)?;
        Ok(())
    }

    fn allow_list(&self) -> Result<NetList, ConfigError> {
        self.allow
            .iter()
            .map(|s| {
                s.parse::<Net>()
                    .map_err(|e| invalid("allow", e.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(NetList)
    }
}

/// The edge's counters; they only grow.
#[derive(Debug, Default)]
pub(crate) struct SyslogStats {
    udp_messages: AtomicU64,
    tcp_messages: AtomicU64,
    refused_source: AtomicU64,
    queue_full: AtomicU64,
    backpressure: AtomicU64,
    oversized: AtomicU64,
    tcp_refused: AtomicU64,
    tcp_timeouts: AtomicU64,
    tcp_broken: AtomicU64,
    malformed: [AtomicU64; MALFORMED.len()],
    unmatched: AtomicU64,
    ignored: AtomicU64,
    untrusted: AtomicU64,
    bad_address: AtomicU64,
    counted: AtomicU64,
    bucket_full: AtomicU64,
    actions: AtomicU64,
    already: AtomicU64,
    action_errors: AtomicU64,
    blocks: [AtomicU64; BLOCK_RESULTS.len()],
    rates_sent: AtomicU64,
    rates_absorbed: AtomicU64,
    rates_refused: AtomicU64,
    /// Copies of monotonic counters kept elsewhere (the node's inbox, the
    /// keyrate tables), refreshed each announce round.
    inbox_dropped: AtomicU64,
    evictions: AtomicU64,
    tcp_open: AtomicUsize,
}

const MALFORMED: [&str; 8] = [
    "empty",
    "no_pri",
    "bad_pri",
    "bad_version",
    "bad_timestamp",
    "bad_field",
    "bad_structured_data",
    "not_utf8",
];

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Transport {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

impl SyslogStats {
    /// Registers the edge's counters as they are now.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let messages = [
            (Transport { transport: "udp" }, l(&self.udp_messages)),
            (Transport { transport: "tcp" }, l(&self.tcp_messages)),
        ];
        let dropped = [
            ("source", l(&self.refused_source)),
            ("queue_full", l(&self.queue_full)),
            ("oversized", l(&self.oversized)),
        ]
        .map(|(reason, v)| (Reason { reason }, v));
        let malformed: Vec<_> = MALFORMED
            .iter()
            .zip(&self.malformed)
            .map(|(reason, v)| (Reason { reason }, l(v)))
            .collect();
        let lines = [
            ("unmatched", l(&self.unmatched)),
            ("ignored", l(&self.ignored)),
            ("untrusted_transport", l(&self.untrusted)),
            ("bad_address", l(&self.bad_address)),
            ("counted", l(&self.counted)),
            ("bucket_table_full", l(&self.bucket_full)),
            ("acted", l(&self.actions)),
            ("already_acted", l(&self.already)),
        ]
        .map(|(result, v)| (Result_ { result }, v));
        let (bp, refused, timeouts, broken, errors) = (
            l(&self.backpressure),
            l(&self.tcp_refused),
            l(&self.tcp_timeouts),
            l(&self.tcp_broken),
            l(&self.action_errors),
        );
        let open = self.tcp_open.load(Ordering::Relaxed) as u64;
        let rates = [
            ("sent", l(&self.rates_sent)),
            ("absorbed", l(&self.rates_absorbed)),
            ("refused", l(&self.rates_refused)),
            ("inbox_full", l(&self.inbox_dropped)),
        ]
        .map(|(result, v)| (Result_ { result }, v));
        let evictions = l(&self.evictions);
        let blocks: Vec<_> = BLOCK_RESULTS
            .iter()
            .zip(&self.blocks)
            .map(|(result, v)| (Result_ { result }, l(v)))
            .collect();
        reg.register_collector(collector(move |o| {
            o.counters(
                "syslog_messages",
                "Syslog messages received, by transport (before any check).",
                messages.clone(),
            )?;
            o.counters(
                "syslog_dropped",
                "Syslog messages dropped before parsing: source not allowed, queue full (UDP), over max_message.",
                dropped.clone(),
            )?;
            o.counters(
                "syslog_malformed",
                "Syslog messages refused by the parser, by reason.",
                malformed.clone(),
            )?;
            o.counter(
                "syslog_backpressure",
                "Times a TCP connection waited for room in the queue (reading paused).",
                bp,
            )?;
            o.counter(
                "syslog_tcp_refused",
                "TCP connections closed at accept: source not allowed or too many connections.",
                refused,
            )?;
            o.counter(
                "syslog_tcp_timeouts",
                "TCP connections closed idle or slow (a partial message held too long).",
                timeouts,
            )?;
            o.counter(
                "syslog_tcp_broken",
                "TCP connections closed on a framing error (bad octet count).",
                broken,
            )?;
            o.gauge("syslog_tcp_connections", "TCP syslog connections open.", open)?;
            o.counters(
                "responder_lines",
                "Parsed lines by what the rules made of them.",
                lines.clone(),
            )?;
            o.counters(
                "responder_counts",
                "Cluster bucket counts (KEY_RATE, domain 2): sent, taken from peers, refused (not our rules or peer table full), dropped before the responder read them.",
                rates.clone(),
            )?;
            o.counter(
                "responder_bucket_evictions",
                "Addresses whose count gave way to a heavier one in a full bucket table.",
                evictions,
            )?;
            o.counter(
                "responder_action_errors",
                "Actions the node refused (the record is counted here, not applied).",
                errors,
            )?;
            o.counters(
                "responder_blocks",
                "Block actions by result: issued (send+save), not_saved (sent, the save backlog full), refused_prefix (allowlisted or under the [enforce] minimum), refused_unsigned, refused_other.",
                blocks.clone(),
            )?;
            Ok(())
        }))
    }
}

/// One message on its way to the rules.
struct Msg {
    from: IpAddr,
    bytes: Vec<u8>,
    /// Came over UDP (its source address may be forged).
    udp: bool,
}

/// The running edge; [`SyslogEdge::stop`] joins its threads.
pub(crate) struct SyslogEdge {
    threads: Vec<JoinHandle<()>>,
}

impl SyslogEdge {
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds the listeners and starts the threads. Shutdown follows the
/// node's flag.
pub(crate) fn start(
    cfg: &SyslogSection,
    rules: RuleSet,
    seed: u128,
    shared: &Arc<Shared>,
) -> Result<SyslogEdge, std::io::Error> {
    let allow = Arc::new(cfg.allow_list().map_err(std::io::Error::other)?);
    check_block_rules(&rules, shared)?;
    if cfg.udp.is_some() && !cfg.trust_udp {
        warn!("rules count only lines that came over TCP: UDP sources can be forged (set [syslog] trust_udp = true where they cannot)");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(cfg.queue);
    let mut threads = Vec::new();
    if let Some(a) = &cfg.udp {
        let sock = UdpSocket::bind(a)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        info!(addr = %sock.local_addr()?, "syslog udp listening");
        let (s, allow, tx, max) = (
            Arc::clone(shared),
            Arc::clone(&allow),
            tx.clone(),
            cfg.max_message,
        );
        threads.push(spawn("shoal-syslog-udp", move || {
            udp_loop(&s, &sock, &allow, &tx, max)
        })?);
    }
    if let Some(a) = &cfg.tcp {
        let l = TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        info!(addr = %l.local_addr()?, "syslog tcp listening");
        let (s, allow, tx, c) = (
            Arc::clone(shared),
            Arc::clone(&allow),
            tx.clone(),
            cfg.clone(),
        );
        threads.push(spawn("shoal-syslog-tcp", move || {
            accept_loop(&s, &l, &allow, &tx, &c)
        })?);
    }
    drop(tx);
    let per_rule = (cfg.buckets / rules.len().max(1)).max(1024);
    let buckets = ClusterBuckets::new(&rules, per_rule, Instant::now(), seed);
    let responder = Responder::new(rules, buckets);
    shared.with_node(Node::enable_responder_rates);
    let s = Arc::clone(shared);
    let trust_udp = cfg.trust_udp;
    threads.push(spawn("shoal-syslog", move || {
        worker(&s, rx, responder, trust_udp)
    })?);
    Ok(SyslogEdge { threads })
}

/// Refuses at start a block rule this node could never carry out: in a
/// cluster whose nodes refuse blocks (no `[auth]`, no `allow_unsigned`),
/// or with a prefix shorter than this node's `[enforce]` minimum. (An
/// allowlisted address is refused per block, counted.)
fn check_block_rules(rules: &RuleSet, shared: &Shared) -> std::io::Result<()> {
    let accepted = shared.with_node(|n| n.blocks_accepted());
    let enforce = shared.enforce.get().map(|e| Arc::clone(&e.rules));
    for i in 0..rules.len() {
        let ActionSpec::Block {
            prefix_v4,
            prefix_v6,
            ..
        } = rules.action(i)
        else {
            continue;
        };
        let name = rules.name(i);
        let refuse = |what: String| {
            Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("rules[{name}]: {what}"),
            ))
        };
        if !accepted {
            return refuse(
                "action block needs [auth] (or [enforce] allow_unsigned): unsigned clusters refuse blocks"
                    .into(),
            );
        }
        if let Some(e) = &enforce {
            if prefix_v4 < e.min_prefix_v4 || prefix_v6 < e.min_prefix_v6 {
                return refuse(format!(
                    "prefix_v4 {prefix_v4} / prefix_v6 {prefix_v6} is shorter than [enforce] min_prefix_v4 {} / min_prefix_v6 {}: every block would be refused",
                    e.min_prefix_v4, e.min_prefix_v6
                ));
            }
        }
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

fn udp_loop(s: &Shared, sock: &UdpSocket, allow: &NetList, tx: &SyncSender<Msg>, max: usize) {
    let st = &s.io.syslog;
    // One byte more than allowed tells an oversized datagram from a full one.
    let mut buf = vec![0u8; max + 1];
    while !s.stopping() {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                debug!(error = %e, "syslog udp receive failed");
                continue;
            }
        };
        inc(&st.udp_messages);
        if !allow.contains(from.ip()) {
            inc(&st.refused_source);
            continue;
        }
        if n > max {
            inc(&st.oversized);
            continue;
        }
        let m = Msg {
            from: from.ip(),
            bytes: buf[..n].to_vec(),
            udp: true,
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(m) {
            inc(&st.queue_full);
        }
    }
}

fn accept_loop(
    s: &Arc<Shared>,
    l: &TcpListener,
    allow: &Arc<NetList>,
    tx: &SyncSender<Msg>,
    cfg: &SyslogSection,
) {
    let per_source: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let st = &s.io.syslog;
    while !s.stopping() {
        let (conn, peer) = match l.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                debug!(error = %e, "syslog accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let ip = peer.ip();
        if !allow.contains(ip) {
            inc(&st.refused_source);
            inc(&st.tcp_refused);
            continue;
        }
        {
            let mut m = per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= cfg.max_per_source
                || st.tcp_open.load(Ordering::Relaxed) >= cfg.max_connections
            {
                if *n == 0 {
                    m.remove(&ip);
                }
                inc(&st.tcp_refused);
                continue;
            }
            *n += 1;
        }
        st.tcp_open.fetch_add(1, Ordering::Relaxed);
        // Released when the connection's thread ends, or at once if it
        // cannot be started (the closure is dropped unrun).
        let slot = Slot {
            shared: Arc::clone(s),
            per: Arc::clone(&per_source),
            ip,
        };
        let (tx, c) = (tx.clone(), cfg.clone());
        let spawned = spawn("shoal-syslog-conn", move || {
            conn_loop(&slot.shared, conn, ip, &tx, &c);
            drop(slot);
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a syslog connection thread");
        }
    }
}

/// One TCP connection's place in the limits.
struct Slot {
    shared: Arc<Shared>,
    per: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared
            .io
            .syslog
            .tcp_open
            .fetch_sub(1, Ordering::Relaxed);
        let mut m = self.per.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn conn_loop(
    s: &Shared,
    mut conn: TcpStream,
    from: IpAddr,
    tx: &SyncSender<Msg>,
    cfg: &SyslogSection,
) {
    let st = &s.io.syslog;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let frame_limit = Duration::from_millis(cfg.frame_timeout_ms);
    // Short reads so shutdown and the timeouts are looked at often.
    if conn
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return;
    }
    let mut framer = Framer::new(cfg.max_message);
    let mut buf = vec![0u8; 16 << 10];
    let mut last_data = Instant::now();
    let mut partial_since: Option<Instant> = None;
    while !s.stopping() {
        let room = framer.room().min(buf.len()).max(1);
        match conn.read(&mut buf[..room]) {
            Ok(0) => return,
            Ok(n) => {
                last_data = Instant::now();
                framer.push(&buf[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        let mut waited = false;
        loop {
            let m = match framer.next_frame() {
                None => break,
                Some(Frame::Message(m)) => m.to_vec(),
                Some(Frame::Oversized) => {
                    inc(&st.tcp_messages);
                    inc(&st.oversized);
                    continue;
                }
                Some(Frame::Broken) => {
                    inc(&st.tcp_broken);
                    return;
                }
            };
            inc(&st.tcp_messages);
            match tx.try_send(Msg {
                from,
                bytes: m,
                udp: false,
            }) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    // Back-pressure: stop reading until the worker has
                    // room; the kernel's window closes on the sender.
                    inc(&st.backpressure);
                    waited = true;
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        let now = Instant::now();
        if waited {
            // Time spent waiting for the queue is ours, not the sender's.
            last_data = now;
            partial_since = None;
        }
        partial_since = match (framer.pending() > 0, partial_since) {
            (true, None) => Some(now),
            (true, p) => p,
            (false, _) => None,
        };
        let slow = partial_since.is_some_and(|p| now.duration_since(p) > frame_limit);
        if slow || now.duration_since(last_data) > idle {
            inc(&st.tcp_timeouts);
            return;
        }
    }
}

/// The reason field a rule's BLOCK carries: the rule name's first eight
/// bytes (what `shoal blocks` shows), or `syslog` when the name cannot be
/// one.
fn block_reason(rule: &str) -> u64 {
    let cut = rule.get(..rule.len().min(8)).unwrap_or("syslog");
    shoal_wire::reason_to_field(cut)
        .or_else(|_| shoal_wire::reason_to_field("syslog"))
        .unwrap_or(0)
}

/// The record an action makes, op send+save: the same record `shoal
/// block` (or the filter, for marks and modes) would send through the
/// local API. `None` only for a block prefix the rules' compile refuses.
pub(crate) fn action_record(action: ActionSpec, addr: IpAddr, rule: &str) -> Option<Record> {
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let (code, fields, ttl) = match action {
        ActionSpec::Mark { suspicious, ttl } => (
            Code::SESSION_MARK,
            [
                addr_key(addr),
                if suspicious {
                    Record::MARK_SUSPICIOUS
                } else {
                    Record::MARK_LEGITIMATE
                },
                0,
                0,
            ],
            ttl,
        ),
        ActionSpec::Mode {
            resource,
            level,
            ttl,
        } => (Code::MODE, [resource, u64::from(level), 0, 0], ttl),
        ActionSpec::Block {
            ttl,
            prefix_v4,
            prefix_v6,
        } => {
            let p = block_prefix(addr, prefix_v4, prefix_v6)?;
            let [f0, f1, f2] = p.to_fields(0);
            (Code::BLOCK, [f0, f1, f2, block_reason(rule)], ttl)
        }
    };
    let mut r = Record::new(code, fields);
    r.ttl_ms = ms(ttl);
    r.op = Op::SEND_SAVE;
    Some(r)
}

/// True when the action is in force already with at least half its TTL
/// left (set by this node or another): acting again would only repeat it.
fn in_force(node: &Node, now: Instant, action: ActionSpec, addr: IpAddr) -> bool {
    match action {
        ActionSpec::Mark { suspicious, ttl } => {
            let want = if suspicious {
                Record::MARK_SUSPICIOUS
            } else {
                Record::MARK_LEGITIMATE
            };
            let m = node.mark(now, addr_key(addr));
            m.mark == want && m.remaining >= ttl / 2
        }
        ActionSpec::Mode {
            resource,
            level,
            ttl,
        } => {
            let m = node.mode(now, resource);
            m.level >= level && m.remaining >= ttl / 2
        }
        // The same prefix held (from this rule on any node, or by hand),
        // or a broader one that covers it.
        ActionSpec::Block {
            ttl,
            prefix_v4,
            prefix_v6,
        } => block_prefix(addr, prefix_v4, prefix_v6)
            .and_then(|p| block_left(node, now, &p))
            .is_some_and(|left| left >= ttl / 2),
    }
}

/// Time left on the longest-held block covering `p` (`p` itself or a
/// shorter prefix around it): one table look-up per prefix length, so at
/// most 32 (IPv4) or 128 (IPv6), and only when a bucket overflows.
fn block_left(node: &Node, now: Instant, p: &shoal_wire::Prefix) -> Option<Duration> {
    (1..=p.prefix_len())
        .filter_map(|len| shoal_wire::Prefix::masked(p.ip(), len).ok())
        .filter_map(|q| node.blocks().get(now, &q))
        .map(|b| b.expires.saturating_duration_since(now))
        .max()
}

/// Takes the peers' counts, announces ours: one round.
fn exchange(
    s: &Shared,
    r: &mut Responder,
    inbox: &mut Vec<(u32, shoal_core::keyrate::KeyRateRecord)>,
) {
    let st = &s.io.syslog;
    inbox.clear();
    let dropped = s.with_node(|n| {
        n.take_responder_rates(inbox);
        n.responder_inbox_dropped()
    });
    st.inbox_dropped.store(dropped, Ordering::Relaxed);
    let now = Instant::now();
    for (origin, k) in inbox.iter() {
        if r.buckets.absorb(now, *origin, k) {
            inc(&st.rates_absorbed);
        } else {
            inc(&st.rates_refused);
        }
    }
    let mut out = Vec::new();
    r.buckets.announce(now, |k| out.push(k));
    st.evictions.store(r.buckets.evictions(), Ordering::Relaxed);
    if !out.is_empty() {
        st.rates_sent.fetch_add(out.len() as u64, Ordering::Relaxed);
        s.with_node(|n| {
            for k in &out {
                n.send_key_rate(now, k);
            }
            n.flush();
        });
    }
}

fn worker(s: &Shared, rx: Receiver<Msg>, mut responder: Responder, trust_udp: bool) {
    let st = &s.io.syslog;
    let mut from_text = String::new();
    let mut inbox = Vec::new();
    while !s.stopping() {
        let due = responder.buckets.next_announce();
        if Instant::now() >= due {
            exchange(s, &mut responder, &mut inbox);
        }
        let wait = responder
            .buckets
            .next_announce()
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        let m = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let line = match syslog::parse(&m.bytes) {
            Ok(l) => l,
            Err(e) => {
                if let Some(i) = MALFORMED.iter().position(|r| *r == e.label()) {
                    inc(&st.malformed[i]);
                }
                debug!(from = %m.from, error = %e, "syslog message refused");
                continue;
            }
        };
        // A line without a host name is the sender's own.
        let host = if line.host.is_empty() {
            use std::fmt::Write;
            from_text.clear();
            let _ = write!(from_text, "{}", m.from);
            from_text.as_str()
        } else {
            line.host
        };
        let now = Instant::now();
        let trusted = trust_udp || !m.udp;
        match responder.observe_from(now, host, line.app, line.msg, trusted) {
            Outcome::Miss(Miss::NoRule) => inc(&st.unmatched),
            Outcome::Miss(Miss::Ignored) => inc(&st.ignored),
            Outcome::Miss(Miss::Untrusted) => inc(&st.untrusted),
            Outcome::Miss(Miss::BadAddress) => inc(&st.bad_address),
            Outcome::Counted { .. } => inc(&st.counted),
            Outcome::Dropped { .. } => inc(&st.bucket_full),
            Outcome::Act { hit, action } => {
                let rule = responder.rules.name(hit.rule);
                act(s, now, rule, host, hit.addr, action);
            }
        }
    }
}

/// Applies a rule's action through [`Node::inject`]: the path of a
/// record from the local API (`shoal block` included), so it is applied
/// here, multicast, saved, relayed to other clusters (modes and blocks)
/// and replayed after a restart. Not repeated while in force.
fn act(s: &Shared, now: Instant, rule: &str, host: &str, addr: IpAddr, action: ActionSpec) {
    let st = &s.io.syslog;
    let is_block = matches!(action, ActionSpec::Block { .. });
    let Some(rec) = action_record(action, addr, rule) else {
        inc(&st.action_errors);
        if is_block {
            inc(&st.blocks[BlockResult::RefusedOther as usize]);
        }
        warn!(rule, %addr, "responder action has no record (bad block prefix length)");
        return;
    };
    let done = s.with_node(|node| {
        if in_force(node, now, action, addr) {
            return None;
        }
        let r = node.inject(now, rec);
        node.flush();
        Some(r)
    });
    let what = crate::rulesfile::describe(action, addr);
    match done {
        None => inc(&st.already),
        Some(Ok(())) => {
            inc(&st.actions);
            if is_block {
                inc(&st.blocks[BlockResult::Issued as usize]);
            }
            info!(rule, %addr, host, action = %what, "responder acted");
        }
        Some(Err(e)) => {
            inc(&st.action_errors);
            if is_block {
                let r = match e {
                    LocalError::BlockRefused => BlockResult::RefusedPrefix,
                    LocalError::BlocksUnsigned => BlockResult::RefusedUnsigned,
                    LocalError::StoreFull => BlockResult::NotSaved,
                    _ => BlockResult::RefusedOther,
                };
                inc(&st.blocks[r as usize]);
            }
            warn!(rule, %addr, host, action = %what, error = ?e, "responder action refused by the node");
        }
    }
}

/// What became of a block action (`shoal_responder_blocks_total`).
#[derive(Clone, Copy)]
enum BlockResult {
    /// Applied, multicast and queued for the store.
    Issued = 0,
    /// Applied and multicast, but the save backlog was full: not saved.
    NotSaved = 1,
    /// Allowlisted, or shorter than this node's `[enforce]` minimum.
    RefusedPrefix = 2,
    /// The cluster is unsigned and `[enforce] allow_unsigned` is off.
    RefusedUnsigned = 3,
    /// Any other refusal (a record no receiver would take).
    RefusedOther = 4,
}

const BLOCK_RESULTS: [&str; 5] = [
    "issued",
    "not_saved",
    "refused_prefix",
    "refused_unsigned",
    "refused_other",
];

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[node]\nid = 1\ncluster = 7\n[multicast]\ngroup = \"239.77.0.1\"\nport = 7700\ninterface = \"127.0.0.1\"\n[local]\nsocket = \"/tmp/shoal.sock\"\n";

    fn with(syslog: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}[syslog]\n{syslog}")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_readme_section_parses_with_its_defaults() {
        let c = with(
            "udp = \"0.0.0.0:514\"\ntcp = \"0.0.0.0:514\"\nallow = [\"10.0.0.0/8\"]\nrules = \"/etc/shoal/rules.toml\"\n",
        )
        .expect("valid");
        let s = c.syslog.expect("section");
        assert_eq!(
            (s.max_message, s.queue, s.max_connections),
            (8192, 16_384, 256)
        );
        assert_eq!(
            (s.max_per_source, s.idle_timeout_ms, s.frame_timeout_ms),
            (16, 300_000, 10_000)
        );
        assert_eq!(s.buckets, 262_144);
    }

    #[test]
    fn bad_sections_name_the_key() {
        let ok = "allow = [\"10.0.0.0/8\"]\nrules = \"r.toml\"\n";
        for (text, key) in [
            (ok.to_string(), "syslog.udp"),
            (format!("udp = \"nope\"\n{ok}"), "syslog.udp"),
            (format!("tcp = \"1.2.3.4\"\n{ok}"), "syslog.tcp"),
            (
                "udp = \"127.0.0.1:514\"\nallow = []\nrules = \"r\"\n".into(),
                "syslog.allow",
            ),
            (
                "udp = \"127.0.0.1:514\"\nallow = [\"10/8\"]\nrules = \"r\"\n".into(),
                "syslog.allow",
            ),
            (
                format!("udp = \"127.0.0.1:514\"\nmax_message = 10\n{ok}"),
                "syslog.max_message",
            ),
            (
                format!("udp = \"127.0.0.1:514\"\nqueue = 0\n{ok}"),
                "syslog.queue",
            ),
            (
                format!("udp = \"127.0.0.1:514\"\nframe_timeout_ms = 1\n{ok}"),
                "syslog.frame_timeout_ms",
            ),
        ] {
            let e = with(&text).expect_err(&text);
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(
            with("udp = \"127.0.0.1:514\"\nrules = \"r\"\n").is_err(),
            "allow is required"
        );
        assert!(with(&format!("udp = \"127.0.0.1:514\"\nnope = 1\n{ok}")).is_err());
    }

    #[test]
    fn actions_make_send_save_records() {
        use shoal_core::rules::ActionSpec;
        use shoal_wire::{Code, Op, Record};
        use std::time::Duration;
        let a = "10.1.2.3".parse().expect("addr");
        let r = super::action_record(
            ActionSpec::Mark {
                suspicious: true,
                ttl: Duration::from_secs(60),
            },
            a,
            "r",
        )
        .expect("record");
        assert_eq!(
            (r.code, r.op, r.ttl_ms),
            (Code::SESSION_MARK, Op::SEND_SAVE, 60_000)
        );
        assert_eq!(r.fields, [0x0a01_0203, Record::MARK_SUSPICIOUS, 0, 0]);
        let r = super::action_record(
            ActionSpec::Mode {
                resource: 9,
                level: 2,
                ttl: Duration::from_secs(5),
            },
            a,
            "r",
        )
        .expect("record");
        assert_eq!(
            (r.code, r.fields, r.ttl_ms),
            (Code::MODE, [9, 2, 0, 0], 5_000)
        );
        let r = super::action_record(
            ActionSpec::Block {
                ttl: Duration::from_secs(90),
                prefix_v4: 24,
                prefix_v6: 64,
            },
            a,
            "sshd-failed",
        )
        .expect("record");
        // The record `shoal block 10.1.2.0/24 --ttl 90s --reason sshd-fai`
        // sends.
        let p: shoal_wire::Prefix = "10.1.2.0/24".parse().expect("prefix");
        let [f0, f1, f2] = p.to_fields(0);
        let reason = shoal_wire::reason_to_field("sshd-fai").expect("reason");
        assert_eq!(
            (r.code, r.op, r.ttl_ms, r.fields),
            (Code::BLOCK, Op::SEND_SAVE, 90_000, [f0, f1, f2, reason])
        );
        assert_eq!(
            super::block_reason("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
            shoal_wire::reason_to_field("syslog").expect("reason")
        );
    }
}
