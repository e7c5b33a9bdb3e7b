//! Cluster-wide rate limits: `hashlimit` semantics (rate, burst, table
//! size, idle expiry per key) for a cluster that spreads one client over
//! every node, decided locally with no round trip.
//!
//! Each node counts a key's hits in a [`KeyRates`] table (`keyrate`),
//! announces its own rate of the keys that matter and learns the others'.
//! The share rule: a node refills the key's token bucket at
//! `rate × own / (own + peers)` and caps it at `burst × own / (own +
//! peers)` (at least one hit), where `own` and `peers` are the decayed
//! rates of *offered* hits (allowed or not). The shares of all nodes add
//! up to 1, so a key over its limit is admitted at about `rate` cluster
//! wide however it is spread; a key under its limit is admitted in full
//! everywhere. A key new to a node gets the share `1 / nodes` (and that
//! share of the burst) until the peers announce it or it has been busy
//! here for [`SETTLE`] with no peer announcing it (then all of it), so a
//! burst spread over the cluster is honoured once, not once per node; a
//! key that went quiet keeps its last share for when it comes back. `Scope::Node` limits skip the sharing
//! (`hashlimit` on every node: up to N times the rate cluster-wide).

use std::time::{Duration, Instant};

use shoal_wire::Prefix;

pub use crate::escalate::Escalate;
use crate::escalate::{Episodes, EscalateCounters};
use crate::hash::{Map, SeededState};
use crate::keyrate::{
    domain, name_id, table_id, KeyRateCounters, KeyRateParams, KeyRateRecord, KeyRates, KeyView,
};

/// How often heavy keys are announced.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);
/// How long receivers hold an announced rate: 5 rounds, so 4 lost
/// datagrams in a row lose nothing.
pub const ANNOUNCE_TTL: Duration = Duration::from_millis(250);
/// A key is announced once a node's own rate reaches this fraction of
/// the limit's fair share (`rate / nodes`). Keys under it on every node
/// add up to at most this fraction of the limit, so leaving them out
/// costs at most that much accuracy.
pub const ANNOUNCE_FRACTION: f64 = 0.05;
/// A key busy on this node for this long with no peer announcing it is
/// taken to be this node's alone: two announce rounds and the network.
pub const SETTLE: Duration = Duration::from_millis(150);
/// Slots an idle sweep looks at per limit and tick.
const SWEEP_BUDGET: usize = 1024;

/// What a limit's keys are. The filter sends the key in `f1`; the sidecar
/// applies the prefix of an address key before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A source address: IPv4 as the low 64 bits of its IPv4-mapped IPv6
    /// form (`0x0000_ffff_xxxx_xxxx`), IPv6 as its high 64 bits. Counted
    /// per `/v4_prefix` (0..=32) or `/v6_prefix` (0..=64).
    Addr { v4_prefix: u8, v6_prefix: u8 },
    /// A session key (the same 64-bit key as `SESSION_MARK`).
    Session,
    /// A resource id (as `LOAD`).
    Resource,
    /// Any 64-bit key the filter chooses.
    Opaque,
}

impl KeyKind {
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::Addr { .. } => "addr",
            KeyKind::Session => "session",
            KeyKind::Resource => "resource",
            KeyKind::Opaque => "opaque",
        }
    }

    /// The key as counted: an address with its prefix applied.
    pub fn normalize(self, key: u64) -> u64 {
        match self {
            KeyKind::Addr {
                v4_prefix,
                v6_prefix,
            } => {
                if key >> 32 == 0xffff {
                    let p = u32::from(v4_prefix.min(32));
                    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                    (0xffff << 32) | u64::from(key as u32 & mask)
                } else {
                    let p = u32::from(v6_prefix.min(64));
                    let mask = if p == 0 { 0 } else { u64::MAX << (64 - p) };
                    key & mask
                }
            }
            _ => key,
        }
    }

    /// The prefix an address key (as counted) stands for: what an
    /// escalation blocks. `None` for other kinds.
    pub fn prefix(self, key: u64) -> Option<Prefix> {
        let KeyKind::Addr {
            v4_prefix,
            v6_prefix,
        } = self
        else {
            return None;
        };
        let key = self.normalize(key);
        if key >> 32 == 0xffff {
            let ip = std::net::Ipv4Addr::from(key as u32);
            Prefix::new(ip.into(), v4_prefix.min(32)).ok()
        } else {
            let ip = std::net::Ipv6Addr::from(u128::from(key) << 64);
            Prefix::new(ip.into(), v6_prefix.min(64)).ok()
        }
    }

    /// The key of a source address, as the filter sends it.
    pub fn addr_key(ip: std::net::IpAddr) -> u64 {
        match ip {
            std::net::IpAddr::V4(a) => (0xffff << 32) | u64::from(u32::from(a)),
            std::net::IpAddr::V6(a) => (u128::from(a) >> 64) as u64,
        }
    }
}

/// Whether a limit is shared by the cluster or applied by each node alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Node,
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    pub name: String,
    pub kind: KeyKind,
    /// Hits per second admitted per key (cluster-wide for `Scope::Cluster`).
    pub rate: f64,
    /// Hits admitted at once after the key was quiet (at least 1).
    pub burst: f64,
    /// Keys counted per node (fixed memory).
    pub max_keys: usize,
    /// A key not hit for this long is forgotten (its bucket full again).
    pub idle: Duration,
    pub scope: Scope,
    /// Block a key denied continuously for long enough (address keys).
    pub escalate: Option<Escalate>,
}

impl LimitRule {
    /// The id filters use (`f0` of `QUERY_LIMIT`): FNV-1a 32 of the name.
    pub fn id(&self) -> u32 {
        name_id(&self.name)
    }
}

/// What a hit gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Allow,
    /// Not now; `retry_after` is when this node's share will have
    /// refilled enough for the same hits.
    Deny {
        retry_after: Duration,
    },
    /// More hits at once than the burst: never admitted.
    Never,
}

impl Verdict {
    /// `f2` of a `QUERY_LIMIT` reply.
    pub fn code(self) -> u64 {
        match self {
            Verdict::Allow => 1,
            Verdict::Deny { .. } => 2,
            Verdict::Never => 3,
        }
    }
}

/// A key's token bucket on this node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    /// This node's share last known (see `Limiter::hit`).
    share: f64,
    /// Since when the key's own rate here is at least the announce
    /// threshold.
    busy_since: Option<Instant>,
}

/// Monotonic counters of one limit (hits counted one by one, a query of
/// `n` hits counts `n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounters {
    pub queries: u64,
    pub hits: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Hits of queries larger than the burst (also in `denied`).
    pub never: u64,
    pub announced: u64,
}

/// One limit on one node.
#[derive(Debug)]
pub struct Limiter {
    rule: LimitRule,
    id: u32,
    table: u64,
    rates: KeyRates<Bucket>,
    counters: LimitCounters,
    episodes: Option<Episodes>,
}

/// A limit's numbers for metrics.
#[derive(Debug, Clone)]
pub struct LimitSnapshot {
    pub name: String,
    pub id: u32,
    pub scope: Scope,
    pub kind: KeyKind,
    pub rate: f64,
    pub burst: f64,
    pub counters: LimitCounters,
    pub rates: KeyRateCounters,
    pub keys: usize,
    pub max_keys: usize,
    pub peer_keys: usize,
    /// Escalations (zeros without `escalate`).
    pub escalate: EscalateCounters,
    /// Keys in an escalation episode now.
    pub episodes: usize,
}

/// A busy key of a limit, for `status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopKey {
    pub key: u64,
    /// Own, peers' and cluster rates, hits/s.
    pub local: f64,
    pub peers: f64,
    pub origins: usize,
    /// This node's share of the limit at the key's last hit here (0..=1;
    /// 0 when not tracked here).
    pub share: f64,
}

impl Limiter {
    pub fn new(rule: LimitRule, now: Instant, hasher: SeededState) -> Limiter {
        let id = rule.id();
        let params = KeyRateParams {
            capacity: rule.max_keys.max(1),
            announce_min: rule.rate * ANNOUNCE_FRACTION,
            peer_capacity: rule.max_keys.clamp(1, 65_536),
            ..KeyRateParams::default()
        };
        Limiter {
            id,
            table: table_id(domain::LIMIT, id),
            rates: KeyRates::new(params, now, hasher),
            episodes: rule
                .escalate
                .map(|e| Episodes::new(e, rule.max_keys.clamp(1, 65_536), hasher)),
            rule,
            counters: LimitCounters::default(),
        }
    }

    pub fn rule(&self) -> &LimitRule {
        &self.rule
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// `f0` of this limit's `KEY_RATE` records.
    pub fn table(&self) -> u64 {
        self.table
    }

    /// Counts `n` hits of `key` at `now` and decides. `nodes` is how many
    /// nodes the cluster has now (this one included; at least 1).
    pub fn hit(&mut self, now: Instant, key: u64, n: u64, nodes: usize) -> Verdict {
        let key = self.rule.kind.normalize(key);
        self.counters.queries += 1;
        self.counters.hits += n;
        let (rate, burst, scope) = (self.rule.rate, self.rule.burst.max(1.0), self.rule.scope);
        let need = n as f64;
        if need > burst {
            // Counted as demand all the same: the client is offering it.
            self.rates.hit(now, key, n);
            self.counters.never += n;
            self.counters.denied += n;
            if let Some(e) = self.episodes.as_mut() {
                e.denied(now, key);
            }
            return Verdict::Never;
        }
        let nodes = nodes.max(1) as f64;
        let busy_min = rate * ANNOUNCE_FRACTION / nodes;
        let h = self.rates.hit(now, key, n);
        let b = h.value;
        if h.fresh || b.last.is_none() {
            // Nothing known yet: assume an even spread until the peers
            // speak or the key proves to be this node's alone.
            b.share = if scope == Scope::Node {
                1.0
            } else {
                1.0 / nodes
            };
            b.busy_since = None;
            b.tokens = (burst * b.share).max(1.0);
            b.last = Some(now);
        }
        b.busy_since = match (h.local >= busy_min, b.busy_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
        };
        // The share: from the peers' rates when they announce the key;
        // all of it when the key stayed busy here for `SETTLE` and nobody
        // else announced it; otherwise the share last known (a key that
        // went quiet and comes back is assumed spread as before).
        let s = if scope == Scope::Node {
            1.0
        } else if h.peers > 0.0 {
            h.local / (h.local + h.peers)
        } else if b
            .busy_since
            .is_some_and(|t| now.saturating_duration_since(t) >= SETTLE)
        {
            1.0
        } else {
            b.share
        };
        b.share = s;
        let refill = rate * s;
        let cap = (burst * s).max(1.0);
        if let Some(last) = b.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            b.tokens = (b.tokens + refill * dt).min(cap);
        }
        b.last = Some(now);
        if b.tokens >= need {
            b.tokens -= need;
            self.counters.allowed += n;
            Verdict::Allow
        } else {
            self.counters.denied += n;
            if let Some(e) = self.episodes.as_mut() {
                e.denied(now, key);
            }
            let secs = if refill > 0.0 {
                (need - b.tokens) / refill
            } else {
                self.rule.idle.as_secs_f64()
            };
            Verdict::Deny {
                retry_after: Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)),
            }
        }
    }

    /// One announce round (cluster limits only): `emit` gets a `KEY_RATE`
    /// record per heavy key. Also sweeps idle keys.
    pub fn tick(&mut self, now: Instant, nodes: usize, mut emit: impl FnMut(KeyRateRecord)) {
        self.rates.sweep(now, self.rule.idle, SWEEP_BUDGET);
        if let Some(e) = self.episodes.as_mut() {
            e.sweep(now);
        }
        if self.rule.scope == Scope::Node {
            return;
        }
        self.rates
            .set_announce_min(self.rule.rate * ANNOUNCE_FRACTION / nodes.max(1) as f64);
        let table = self.table;
        let ttl_ms = ANNOUNCE_TTL.as_millis() as u32;
        let mut sent = 0;
        self.rates.announce(now, |key, rate| {
            sent += 1;
            emit(KeyRateRecord {
                table,
                key,
                rate,
                ttl_ms,
            })
        });
        self.counters.announced += sent;
    }

    /// A peer's rate of one of this limit's keys.
    pub fn absorb(&mut self, now: Instant, origin: u32, key: u64, rate: f64, until: Instant) {
        if self.rule.scope == Scope::Cluster {
            self.rates.absorb(now, origin, key, rate, until);
        }
    }

    pub fn counters(&self) -> LimitCounters {
        self.counters
    }

    /// The kernel's meter for this limit dropped a new connection from
    /// `key` (a source address key) at `at`: a denial like the filter's,
    /// for escalation only (the kernel's meter is per node and its hits
    /// are not counted here).
    pub fn kernel_denied(&mut self, at: Instant, key: u64) {
        let key = self.rule.kind.normalize(key);
        if let Some(e) = self.episodes.as_mut() {
            e.denied(at, key);
        }
    }

    /// Keys whose escalation is due (see `escalate`), as their prefixes;
    /// `ready(key, crossed_at)` says whether this node's turn came.
    pub fn due_escalations(&mut self, ready: impl Fn(u64, Instant) -> bool, out: &mut Vec<Prefix>) {
        let Some(e) = self.episodes.as_mut() else {
            return;
        };
        let mut keys = Vec::new();
        e.due(ready, &mut keys);
        out.extend(keys.into_iter().filter_map(|k| self.rule.kind.prefix(k)));
    }

    /// The escalation counters, to be moved by `Node` as it acts.
    pub fn escalate_counters_mut(&mut self) -> Option<&mut EscalateCounters> {
        self.episodes.as_mut().map(|e| &mut e.counters)
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        LimitSnapshot {
            name: self.rule.name.clone(),
            id: self.id,
            scope: self.rule.scope,
            kind: self.rule.kind,
            rate: self.rule.rate,
            burst: self.rule.burst,
            counters: self.counters,
            rates: self.rates.counters(),
            keys: self.rates.len(),
            max_keys: self.rates.params().capacity,
            peer_keys: self.rates.peer_len(),
            escalate: self
                .episodes
                .as_ref()
                .map(|e| e.counters)
                .unwrap_or_default(),
            episodes: self.episodes.as_ref().map_or(0, |e| e.len()),
        }
    }

    /// The busiest keys (heavy here or announced by peers), by cluster rate.
    pub fn top(&self, now: Instant, n: usize) -> Vec<TopKey> {
        self.rates
            .top(now, n)
            .into_iter()
            .map(|v: KeyView| TopKey {
                key: v.key,
                local: v.local,
                peers: v.peers,
                origins: v.origins,
                share: self.rates.value(v.key).map_or(0.0, |b| b.share),
            })
            .collect()
    }

    /// A key's numbers without counting a hit.
    pub fn view(&self, now: Instant, key: u64) -> KeyView {
        self.rates.view(now, self.rule.kind.normalize(key))
    }
}

/// Every limit of a node, by id.
#[derive(Debug)]
pub struct Limits {
    limiters: Vec<Limiter>,
    by_id: Map<u32, usize>,
    /// `KEY_RATE` records for a limit this node does not have.
    pub unknown_table: u64,
}

/// Why a set of limits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("limits {0:?} and {1:?} have the same id {2:#010x}: rename one")]
    SameId(String, String, u32),
}

impl Limits {
    pub fn new(
        rules: Vec<LimitRule>,
        now: Instant,
        hasher: SeededState,
    ) -> Result<Limits, LimitsError> {
        let mut by_id: Map<u32, usize> = Map::with_hasher(hasher);
        let mut limiters = Vec::with_capacity(rules.len());
        for (i, rule) in rules.into_iter().enumerate() {
            let id = rule.id();
            if let Some(&j) = by_id.get(&id) {
                let other: &Limiter = &limiters[j];
                return Err(LimitsError::SameId(
                    other.rule.name.clone(),
                    rule.name.clone(),
                    id,
                ));
            }
            by_id.insert(id, i);
            limiters.push(Limiter::new(rule, now, hasher));
        }
        Ok(Limits {
            limiters,
            by_id,
            unknown_table: 0,
        })
    }

    pub fn empty(hasher: SeededState) -> Limits {
        Limits {
            limiters: Vec::new(),
            by_id: Map::with_hasher(hasher),
            unknown_table: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Limiter> {
        let i = *self.by_id.get(&id)?;
        self.limiters.get_mut(i)
    }

    pub fn get(&self, id: u32) -> Option<&Limiter> {
        let i = *self.by_id.get(&id)?;
        self.limiters.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Limiter> {
        self.limiters.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Limiter> {
        self.limiters.iter_mut()
    }

    /// A received `KEY_RATE` of domain `LIMIT`.
    pub fn absorb(&mut self, now: Instant, origin: u32, rec: &KeyRateRecord) {
        let until = now + Duration::from_millis(rec.ttl_ms.into());
        match self.get_mut(rec.table as u32) {
            Some(l) if rec.table >> 32 == u64::from(domain::LIMIT) => {
                l.absorb(now, origin, rec.key, rec.rate, until)
            }
            _ => self.unknown_table += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rule(scope: Scope) -> LimitRule {
        LimitRule {
            name: "login".into(),
            kind: KeyKind::Opaque,
            rate: 100.0,
            burst: 20.0,
            max_keys: 1024,
            idle: ms(10_000),
            scope,
            escalate: None,
        }
    }

    fn t0() -> Instant {
        // Not the core's clock: any base instant serves a test.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    #[test]
    fn alone_it_is_hashlimit_burst_then_rate() {
        let t0 = t0();
        let mut l = Limiter::new(rule(Scope::Cluster), t0, SeededState::new(1));
        // A quiet key may burst 20 at once (one node: all of it).
        let burst = (0..50)
            .filter(|_| l.hit(t0, 9, 1, 1) == Verdict::Allow)
            .count();
        assert_eq!(burst, 20);
        // Then 1000/s offered for 5 s: about 100/s admitted.
        let mut allowed = 0;
        for i in 1..=5_000u64 {
            if l.hit(t0 + ms(i), 9, 1, 1) == Verdict::Allow {
                allowed += 1;
            }
        }
        assert!((495..=505).contains(&allowed), "{allowed}");
        match l.hit(t0 + ms(5_000), 9, 1, 1) {
            Verdict::Deny { retry_after } => assert!(retry_after <= ms(10), "{retry_after:?}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(l.hit(t0 + ms(5_000), 9, 21, 1), Verdict::Never);
        let c = l.counters();
        assert_eq!(c.hits, 50 + 5_000 + 1 + 21);
        assert_eq!(c.allowed + c.denied, c.hits);
        assert_eq!(c.never, 21);
    }

    #[test]
    fn a_peer_taking_most_of_the_traffic_takes_most_of_the_share() {
        let t0 = t0();
        let mut l = Limiter::new(rule(Scope::Cluster), t0, SeededState::new(1));
        // This node sees 400/s; a peer says it sees 1600/s: this node's
        // share is 1/5 of 100/s.
        let mut allowed = 0;
        for i in 1..=4_000u64 {
            let now = t0 + ms(i * 5 / 2);
            if i % 20 == 0 {
                l.absorb(now, 2, 9, 1_600.0, now + ANNOUNCE_TTL);
            }
            if l.hit(now, 9, 1, 2) == Verdict::Allow && i > 400 {
                allowed += 1;
            }
        }
        // 9 s after the first second: 20/s.
        assert!((170..=200).contains(&allowed), "{allowed}");
        // Per-node scope ignores peers.
        let mut l = Limiter::new(rule(Scope::Node), t0, SeededState::new(1));
        l.absorb(t0, 2, 9, 800.0, t0 + ms(100_000));
        let allowed = (1..=2_000u64)
            .filter(|i| l.hit(t0 + ms(i * 5 / 2), 9, 1, 2) == Verdict::Allow)
            .count();
        // 5 s at 100/s plus the burst of 20.
        assert!((515..=525).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_new_key_starts_with_its_share_of_the_burst() {
        let t0 = t0();
        let mut l = Limiter::new(rule(Scope::Cluster), t0, SeededState::new(1));
        let first = (0..50)
            .filter(|_| l.hit(t0, 5, 1, 4) == Verdict::Allow)
            .count();
        assert_eq!(first, 5);
    }

    #[test]
    fn announces_heavy_keys_and_forgets_idle_ones() {
        let t0 = t0();
        let mut l = Limiter::new(rule(Scope::Cluster), t0, SeededState::new(1));
        for i in 0..1_000u64 {
            l.hit(t0 + ms(i), 77, 1, 4);
            l.hit(t0 + ms(i), 1_000 + i, 1, 4);
        }
        let mut out = Vec::new();
        l.tick(t0 + ms(1_000), 4, |r| out.push(r));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].key, 77);
        assert_eq!(out[0].table, table_id(domain::LIMIT, name_id("login")));
        assert!((out[0].rate - 1_000.0).abs() < 50.0, "{out:?}");
        assert_eq!(l.counters().announced, 1);
        // Idle for longer than `idle`: swept.
        l.tick(t0 + ms(12_000), 4, |_| {});
        assert_eq!(l.snapshot().keys, 0);
    }

    #[test]
    fn address_keys_are_counted_per_prefix() {
        let k = KeyKind::Addr {
            v4_prefix: 24,
            v6_prefix: 48,
        };
        assert_eq!(k.normalize(0x0000_ffff_c000_0201), 0x0000_ffff_c000_0200);
        assert_eq!(k.normalize(0x2001_0db8_1234_5678), 0x2001_0db8_1234_0000);
        let all = KeyKind::Addr {
            v4_prefix: 0,
            v6_prefix: 0,
        };
        assert_eq!(all.normalize(0x0000_ffff_c000_0201), 0x0000_ffff_0000_0000);
        assert_eq!(all.normalize(0x2001_0db8_1234_5678), 0);
        assert_eq!(KeyKind::Opaque.normalize(42), 42);
    }

    #[test]
    fn an_address_key_blocks_its_counted_prefix() {
        let k = KeyKind::Addr {
            v4_prefix: 24,
            v6_prefix: 48,
        };
        let v4 = KeyKind::addr_key("192.0.2.77".parse().expect("v4"));
        assert_eq!(v4, 0x0000_ffff_c000_024d);
        assert_eq!(
            k.prefix(v4).map(|p| p.to_string()).as_deref(),
            Some("192.0.2.0/24")
        );
        let v6 = KeyKind::addr_key("2001:db8:1:2:3::9".parse().expect("v6"));
        assert_eq!(v6, 0x2001_0db8_0001_0002);
        assert_eq!(
            k.prefix(v6).map(|p| p.to_string()).as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(KeyKind::Opaque.prefix(v4), None);
    }

    #[test]
    fn limits_route_by_id_and_refuse_duplicates() {
        let t0 = t0();
        let mut a = rule(Scope::Cluster);
        let mut ls = Limits::new(vec![a.clone()], t0, SeededState::new(1)).unwrap();
        let rec = KeyRateRecord {
            table: table_id(domain::LIMIT, a.id()),
            key: 3,
            rate: 50.0,
            ttl_ms: 250,
        };
        ls.absorb(t0, 2, &rec);
        assert_eq!(ls.get(a.id()).unwrap().view(t0, 3).peers, 50.0);
        ls.absorb(t0, 2, &KeyRateRecord { table: 7, ..rec });
        ls.absorb(
            t0,
            2,
            &KeyRateRecord {
                table: table_id(domain::RESPONDER, a.id()),
                ..rec
            },
        );
        assert_eq!(ls.unknown_table, 2);
        a.rate = 5.0;
        let e = Limits::new(vec![a.clone(), a], t0, SeededState::new(1)).unwrap_err();
        assert!(matches!(e, LimitsError::SameId(..)));
    }
}
