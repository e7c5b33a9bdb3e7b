//! The rate limits' face to operators: their metrics collector and their
//! part of `/status` (the busiest keys of each limit). The decisions are
//! the core's (`shoal_core::ratelimit`); this module only formats numbers
//! copied out of the node.

use std::fmt::Write;

use prometheus_client::registry::Registry;
use shoal_core::ratelimit::{KeyKind, LimitSnapshot, Scope, TopKey};

use crate::metrics::collector;

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
