//! The rate limits' face to operators and the kernel: their metrics
//! collector, their part of `/status` (the busiest keys of each limit),
//! and the thread that keeps the kernel meters (`kernel = true`, through
//! `nft_meter`) and feeds their drops to escalation. The decisions are the
//! core's (`shoal_core::ratelimit`, `shoal_core::escalate`): this module
//! copies numbers out of the node and reports what the kernel did.
//!
//! The thread runs when a limit has `kernel` or `escalate`:
//! - at start it installs the meters (the node does not start without
//!   them, as with the enforcer);
//! - every [`POLL`] it reads the `over_` sets of escalating kernel limits
//!   back and hands each source's last drop to the node as a denial, and
//!   logs what became of due escalations;
//! - every `[enforce] reconcile_ms` it checks the `ratelimit` chain and puts
//!   missing or changed rules back (counted).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use shoal_core::escalate::Outcome;
use shoal_core::ratelimit::{KeyKind, LimitSnapshot, Scope, TopKey};
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::collector;
use crate::nft::{HookPoint, NftError, TableSpec};
use crate::nft_meter::Meter;
use crate::server::Shared;

/// How often the kernel's drops are read back and escalations logged.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// The kernel meters' numbers (outside the node's lock).
#[derive(Debug, Default)]
pub(crate) struct MeterStats {
    /// Meter rules the kernel held at the last check.
    pub(crate) rules: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) readbacks: AtomicU64,
    /// Kernel drops handed to escalation.
    pub(crate) denials: AtomicU64,
    /// Sources in each limit's `over_` sets at the last read.
    pub(crate) dropping: Mutex<Vec<(String, u64)>>,
}

/// Starts the thread when some limit has `kernel` or `escalate`; installs
/// the meters first (unless `[enforce] dry_run`).
pub(crate) fn start(
    cfg: &Config,
    shared: Arc<Shared>,
    span: tracing::Span,
) -> Result<Option<JoinHandle<()>>, NftError> {
    let kernel: Vec<_> = cfg.limits.iter().filter_map(|l| l.kernel_limit()).collect();
    let escalating = cfg.limits.iter().any(|l| l.escalate.is_some());
    let (Some(enf), true) = (&cfg.enforce, escalating || !kernel.is_empty()) else {
        return Ok(None);
    };
    // Kernel limits whose drops feed escalation: (meter index, limit id).
    let feed: Vec<(String, u32)> = cfg
        .limits
        .iter()
        .filter(|l| l.kernel && l.escalate.is_some())
        .map(|l| (l.name.clone(), shoal_core::keyrate::name_id(&l.name)))
        .collect();
    let mut meter = if kernel.is_empty() || enf.dry_run {
        if !kernel.is_empty() {
            info!(
                limits = kernel.len(),
                "enforce dry run: kernel meters not installed"
            );
        }
        None
    } else {
        let spec = TableSpec {
            table: enf.table.clone(),
            hook: HookPoint::parse(&enf.hook).unwrap_or(HookPoint::Prerouting),
            priority: enf.priority,
        };
        let mut m = Meter::open(spec, kernel)?;
        m.install()?;
        shared
            .io
            .meter
            .rules
            .store(2 * m.limits().len() as u64, Ordering::Relaxed);
        for l in m.limits() {
            info!(
                limit = %l.name,
                rate = l.rate,
                per_s = l.unit_s,
                burst = l.burst,
                "kernel meter installed"
            );
        }
        Some(m)
    };
    let reconcile = Duration::from_millis(enf.reconcile_ms);
    let t = std::thread::Builder::new()
        .name("shoal-limits".into())
        .spawn(move || {
            let _e = span.enter();
            run(meter.as_mut(), &feed, &shared, reconcile);
        })
        .map_err(NftError::Socket)?;
    Ok(Some(t))
}

fn run(
    mut meter: Option<&mut Meter>,
    feed: &[(String, u32)],
    shared: &Shared,
    reconcile: Duration,
) {
    let stats = &shared.io.meter;
    let mut next_check = Instant::now() + reconcile;
    let mut events = Vec::new();
    while !shared.stopping() {
        std::thread::sleep(POLL);
        let now = Instant::now();
        if let (Some(m), false) = (meter.as_deref_mut(), feed.is_empty()) {
            match m.dropped() {
                Ok(list) => {
                    stats.readbacks.fetch_add(1, Ordering::Relaxed);
                    let mut per: Vec<(String, u64)> =
                        feed.iter().map(|(n, _)| (n.clone(), 0)).collect();
                    let mut node = shared.lock();
                    for d in &list {
                        let Some(&(_, id)) = feed.iter().find(|(n, _)| *n == d.limit) else {
                            continue;
                        };
                        if let Some(p) = per.iter_mut().find(|(n, _)| *n == d.limit) {
                            p.1 += 1;
                        }
                        let at = now
                            .checked_sub(Duration::from_millis(d.ago_ms))
                            .unwrap_or(now);
                        node.limit_kernel_denied(id, at, KeyKind::addr_key(d.addr));
                    }
                    drop(node);
                    stats
                        .denials
                        .fetch_add(list.len() as u64, Ordering::Relaxed);
                    *stats.dropping.lock().unwrap_or_else(|p| p.into_inner()) = per;
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "kernel meters: reading the drops back failed");
                }
            }
        }
        shared.lock().take_escalation_events(&mut events);
        for e in events.drain(..) {
            match e.outcome {
                Outcome::Blocked { ttl } => warn!(
                    limit = %e.limit,
                    prefix = %e.prefix,
                    ttl_ms = ttl.as_millis() as u64,
                    "rate limit escalated: blocked (sent send+save to the cluster)"
                ),
                Outcome::AlreadyBlocked => info!(
                    limit = %e.limit,
                    prefix = %e.prefix,
                    "rate limit escalation: already blocked"
                ),
                Outcome::Refused(why) => warn!(
                    limit = %e.limit,
                    prefix = %e.prefix,
                    reason = %why,
                    "rate limit escalation refused by the block rules"
                ),
            }
        }
        if now >= next_check {
            next_check = now + reconcile;
            if let Some(m) = meter.as_deref_mut() {
                let ok = m.rules_ok();
                match ok {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!("kernel meters: the ratelimit chain was missing or changed; putting it back");
                        stats.rules.store(0, Ordering::Relaxed);
                        match m.repair() {
                            Ok(()) => {
                                stats.repaired.fetch_add(1, Ordering::Relaxed);
                                stats
                                    .rules
                                    .store(2 * m.limits().len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, "kernel meters: cannot put the rules back");
                            }
                        }
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "kernel meters: reading the rules back failed");
                    }
                }
            }
        }
    }
}

/// Registers the kernel meters' families.
pub(crate) fn register_meter(stats: &MeterStats, reg: &mut Registry) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (rules, repaired, failed, readbacks, denials) = (
        load(&stats.rules),
        load(&stats.repaired),
        load(&stats.failed),
        load(&stats.readbacks),
        load(&stats.denials),
    );
    let dropping = stats
        .dropping
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    reg.register_collector(collector(move |o| {
        o.gauge(
            "limit_kernel_rules",
            "Kernel meter rules (one per kernel limit and family) in force at the last check.",
            rules,
        )?;
        o.counter(
            "limit_kernel_repaired",
            "Times the kernel meters' chain was found missing or changed and put back.",
            repaired,
        )?;
        o.counter(
            "limit_kernel_failures",
            "Kernel meter read-backs or repairs that failed.",
            failed,
        )?;
        o.counter(
            "limit_kernel_readbacks",
            "Reads of the kernel meters' dropped sources.",
            readbacks,
        )?;
        o.counter(
            "limit_kernel_drops_read",
            "Dropped sources read back from the kernel and handed to escalation (one per source and read).",
            denials,
        )?;
        o.gauges(
            "limit_kernel_dropping",
            "Sources the kernel meter of a limit dropped within the last 2 s, at the last read.",
            dropping.iter().map(|(n, v)| ([("limit", n.clone())], *v)).collect::<Vec<_>>(),
        )
    }));
}

/// Keys per limit on `/status`.
pub(crate) const STATUS_TOP_KEYS: usize = 10;

/// Registers the limits' values of one scrape (copied already).
pub(crate) fn register(reg: &mut Registry, limits: Vec<LimitSnapshot>, unknown_table: u64) {
    reg.register_collector(collector(move |o| {
        let by = |f: fn(&LimitSnapshot) -> u64| {
            limits
                .iter()
                .map(move |l| ([("limit", l.name.clone())], f(l)))
                .collect::<Vec<_>>()
        };
        o.counters(
            "limit_hits",
            "Hits asked about per limit (a query of n hits counts n).",
            by(|l| l.counters.hits),
        )?;
        o.counters(
            "limit_allowed",
            "Hits allowed per limit.",
            by(|l| l.counters.allowed),
        )?;
        o.counters(
            "limit_denied",
            "Hits denied per limit (over this node's share, or more at once than the burst).",
            by(|l| l.counters.denied),
        )?;
        o.counters(
            "limit_too_large",
            "Hits denied per limit because one query asked for more than the burst.",
            by(|l| l.counters.never),
        )?;
        o.gauges(
            "limit_keys",
            "Keys counted on this node per limit.",
            by(|l| l.keys as u64),
        )?;
        o.gauges(
            "limit_max_keys",
            "Keys a limit may count on this node (max_keys).",
            by(|l| l.max_keys as u64),
        )?;
        o.counters(
            "limit_evictions",
            "Keys pushed out of a full limit table by new keys (the lightest go).",
            by(|l| l.rates.evictions),
        )?;
        o.counters(
            "limit_expired",
            "Keys forgotten after idle_ms without hits.",
            by(|l| l.rates.expired),
        )?;
        o.gauges(
            "limit_peer_keys",
            "Keys of a limit for which peers' rates are held.",
            by(|l| l.peer_keys as u64),
        )?;
        o.counters(
            "limit_peer_rates",
            "Peer rates (KEY_RATE records) taken per limit.",
            by(|l| l.rates.peer_updates),
        )?;
        o.counters(
            "limit_peer_dropped",
            "Peer rates not held: the peer table was full of live keys, or the key had too many origins.",
            by(|l| l.rates.peer_dropped),
        )?;
        o.counters(
            "limit_announced",
            "KEY_RATE records this node sent per limit (its own rate of a heavy key).",
            by(|l| l.counters.announced),
        )?;
        o.counters(
            "limit_escalations",
            "Escalations due on this node per limit, by outcome: blocked (a BLOCK sent), \
             already_blocked (another node or a hand was first), refused (the block rules).",
            limits
                .iter()
                .flat_map(|l| {
                    let e = &l.escalate;
                    [
                        ("blocked", e.blocked),
                        ("already_blocked", e.already_blocked),
                        ("refused", e.refused),
                    ]
                    .map(|(o, v)| ([("limit", l.name.clone()), ("outcome", o.to_string())], v))
                })
                .collect::<Vec<_>>(),
        )?;
        o.counters(
            "limit_escalation_crossed",
            "Keys denied continuously for escalate.after_ms on this node (each then waits its turn).",
            by(|l| l.escalate.crossed),
        )?;
        o.counters(
            "limit_escalation_untracked",
            "Denials not followed for escalation: every episode slot live, or too many waiting.",
            by(|l| l.escalate.table_full + l.escalate.pending_dropped),
        )?;
        o.gauges(
            "limit_escalation_episodes",
            "Keys in an escalation episode (denied lately) per limit.",
            by(|l| l.episodes as u64),
        )?;
        o.counter(
            "key_rate_unknown_table",
            "KEY_RATE records for a limit this node does not have (ignored).",
            unknown_table,
        )
    }));
}

fn kind(k: KeyKind) -> String {
    match k {
        KeyKind::Addr {
            v4_prefix,
            v6_prefix,
        } => format!("addr/{v4_prefix},/{v6_prefix}"),
        other => other.label().to_string(),
    }
}

/// Formats a key of a limit: addresses as addresses.
fn key_text(k: KeyKind, key: u64) -> String {
    match k {
        KeyKind::Addr { .. } if key >> 32 == 0xffff => {
            std::net::Ipv4Addr::from(key as u32).to_string()
        }
        KeyKind::Addr { .. } => {
            let hi = u128::from(key) << 64;
            format!("{}/64", std::net::Ipv6Addr::from(hi))
        }
        _ => format!("{key:#018x}"),
    }
}

/// The `/status` section: each limit with its counters and busiest keys.
pub(crate) fn format_status(
    o: &mut String,
    limits: &[LimitSnapshot],
    top: &[(String, Vec<TopKey>)],
    nodes: usize,
) {
    if limits.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nlimits: {} (nodes live: {nodes})", limits.len());
    for l in limits {
        let c = &l.counters;
        let scope = match l.scope {
            Scope::Cluster => "cluster",
            Scope::Node => "node",
        };
        let _ = writeln!(
            o,
            "\nlimit {} (id {:#010x}, {}, {} {}/s burst {})  hits {}  allowed {}  denied {}  keys {}/{}  evicted {}",
            l.name,
            l.id,
            kind(l.kind),
            scope,
            l.rate,
            l.burst,
            c.hits,
            c.allowed,
            c.denied,
            l.keys,
            l.max_keys,
            l.rates.evictions
        );
        let e = &l.escalate;
        if e.crossed + e.refused + l.episodes as u64 > 0 {
            let _ = writeln!(
                o,
                "  escalation: episodes {}  crossed {}  blocked {}  already blocked {}  refused {}",
                l.episodes, e.crossed, e.blocked, e.already_blocked, e.refused
            );
        }
        let Some((_, keys)) = top.iter().find(|(n, _)| *n == l.name) else {
            continue;
        };
        if keys.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "{:>42} {:>12} {:>12} {:>12} {:>8} {:>7}",
            "key", "cluster/s", "local/s", "peers/s", "origins", "share"
        );
        for k in keys {
            let _ = writeln!(
                o,
                "{:>42} {:>12.1} {:>12.1} {:>12.1} {:>8} {:>7.3}",
                key_text(l.kind, k.key),
                k.local + k.peers,
                k.local,
                k.peers,
                k.origins,
                k.share
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_as_addresses() {
        let a = KeyKind::Addr {
            v4_prefix: 24,
            v6_prefix: 48,
        };
        assert_eq!(key_text(a, 0x0000_ffff_c000_0200), "192.0.2.0");
        assert_eq!(key_text(a, 0x2001_0db8_0001_0000), "2001:db8:1::/64");
        assert_eq!(key_text(KeyKind::Opaque, 255), "0x00000000000000ff");
    }
}
