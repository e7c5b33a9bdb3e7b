//! The log responder's decisions, sans-IO: which rule a log line matches
//! and the address it names, the leaky bucket per (rule, address), and
//! the action when a bucket overflows.
//!
//! - Patterns are anchored to the whole message (`^(?:...)$`) and name
//!   the address with `<ADDR>` exactly once, so text a user controls (a
//!   user name, a URL) cannot supply the address unless the rule's own
//!   structure puts it there: the fail2ban CVE-2013-7176 class.
//! - All message patterns are compiled into one `RegexSet`; only a rule it
//!   selects runs its captures, so the cost per line does not grow with
//!   the number of rules that do not match.
//! - Buckets sit behind [`Buckets`]; [`ClusterBuckets`] counts on the
//!   cluster's shared per-key counters (`keyrate`), so attempts spread
//!   over the nodes fill one bucket.
//!
//! `now` is passed in; config parsing (TOML) is the node's.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use regex::{Regex, RegexSet};
use shoal_wire::Prefix;

use crate::hash::{Map, SeededState};
use crate::keyrate::{domain, name_id, table_id, KeyRateParams, KeyRateRecord, KeyRates};

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// A network that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network {0:?}: want ADDR or ADDR/PREFIX")]
pub struct NetError(pub String);

impl std::str::FromStr for Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Net, NetError> {
        let err = || NetError(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Net { addr, prefix })
    }
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(a.to_bits()), u128::from(b.to_bits()), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

/// A list of networks.
#[derive(Debug, Clone, Default)]
pub struct NetList(pub Vec<Net>);

impl NetList {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }
}

/// What a rule does when its bucket overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionSpec {
    /// Block the prefix around the address for `ttl`: a BLOCK record of
    /// the address with its host bits past `prefix_v4` / `prefix_v6`
    /// cleared ([`block_prefix`]).
    Block {
        ttl: Duration,
        prefix_v4: u8,
        prefix_v6: u8,
    },
    /// Mark the session keyed by the address ([`addr_key`]).
    Mark { suspicious: bool, ttl: Duration },
    /// Raise a resource's protection mode.
    Mode {
        resource: u64,
        level: u8,
        ttl: Duration,
    },
}

/// One rule as written (the node reads it from TOML).
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    /// Regex on the host name (whole field); any host when absent.
    pub host: Option<String>,
    /// Regex on the program (5424 APP-NAME, 3164 TAG; whole field).
    pub program: Option<String>,
    /// Regex on the whole message with `<ADDR>` exactly once.
    pub pattern: String,
    /// Events the bucket holds; the one that finds it full fires.
    pub capacity: u32,
    /// Time for one event to leak out.
    pub leak_every: Duration,
    pub action: ActionSpec,
}

impl RuleSpec {
    /// fail2ban's `maxretry` within `findtime`: capacity `maxretry - 1`
    /// so the `maxretry`-th event fires, leaking `maxretry` per `findtime`.
    pub fn leak_from_findtime(maxretry: u32, findtime: Duration) -> (u32, Duration) {
        let n = maxretry.max(1);
        (n - 1, findtime / n)
    }
}

/// Why a rule set was refused; names the rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {rule:?}: {what}")]
    Rule { rule: String, what: String },
    #[error("rules: {0}")]
    Set(String),
}

/// The address capture `<ADDR>` expands to: IPv4 dotted quad or an IPv6
/// text form; std's parser then decides (a near-miss is not an address).
const ADDR_RE: &str =
    r"(?P<addr>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,44})";

/// Most rules a set may hold.
pub const MAX_RULES: usize = 4096;

struct Compiled {
    name: String,
    host: Option<Regex>,
    program: Option<Regex>,
    pattern: Regex,
    capacity: u32,
    leak_every: Duration,
    action: ActionSpec,
}

/// The rules compiled together.
pub struct RuleSet {
    set: RegexSet,
    rules: Vec<Compiled>,
    ignore: NetList,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// A line a rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub addr: IpAddr,
}

/// Why a line did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No rule matched.
    NoRule,
    /// A rule matched but its capture is not an address.
    BadAddress,
    /// The address is on the ignore list.
    Ignored,
    /// A rule matched a line from a transport not trusted to act (a UDP
    /// source address can be forged): not counted at all, so forged lines
    /// cannot fill a bucket that a genuine line then trips.
    Untrusted,
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

impl RuleSet {
    pub fn compile(specs: &[RuleSpec], ignore: NetList) -> Result<RuleSet, RuleError> {
        if specs.len() > MAX_RULES {
            return Err(RuleError::Set(format!(
                "{} rules, at most {MAX_RULES}",
                specs.len()
            )));
        }
        let mut patterns = Vec::with_capacity(specs.len());
        let mut rules = Vec::with_capacity(specs.len());
        for s in specs {
            let bad = |what: String| RuleError::Rule {
                rule: s.name.clone(),
                what,
            };
            if s.pattern.matches("<ADDR>").count() != 1 {
                return Err(bad("pattern must hold <ADDR> exactly once".into()));
            }
            if s.pattern.contains("?P<addr>") || s.pattern.contains("?<addr>") {
                return Err(bad("the group name addr is reserved for <ADDR>".into()));
            }
            if s.leak_every.is_zero() {
                return Err(bad("leak time must be above zero".into()));
            }
            if let ActionSpec::Block {
                prefix_v4,
                prefix_v6,
                ..
            } = s.action
            {
                // /0 would block everyone; the enforcer's own minimum is
                // checked where the enforcer's rules are known.
                if !(1..=32).contains(&prefix_v4) || !(1..=128).contains(&prefix_v6) {
                    return Err(bad("block prefix lengths: v4 1..=32, v6 1..=128".into()));
                }
            }
            let pat = anchored(&s.pattern.replace("<ADDR>", ADDR_RE));
            let pattern = Regex::new(&pat).map_err(|e| bad(format!("pattern: {e}")))?;
            let field = |re: &Option<String>, what: &str| {
                re.as_deref()
                    .map(|r| Regex::new(&anchored(r)).map_err(|e| bad(format!("{what}: {e}"))))
                    .transpose()
            };
            rules.push(Compiled {
                name: s.name.clone(),
                host: field(&s.host, "host")?,
                program: field(&s.program, "program")?,
                pattern,
                capacity: s.capacity,
                leak_every: s.leak_every,
                action: s.action,
            });
            patterns.push(pat);
        }
        let set = RegexSet::new(&patterns).map_err(|e| RuleError::Set(e.to_string()))?;
        Ok(RuleSet { set, rules, ignore })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn name(&self, rule: usize) -> &str {
        &self.rules[rule].name
    }

    pub fn action(&self, rule: usize) -> ActionSpec {
        self.rules[rule].action
    }

    /// The first rule (in file order) whose message, host and program
    /// patterns all match, and the address it captured.
    pub fn find(&self, host: &str, program: &str, msg: &str) -> Result<Hit, Miss> {
        // The set answers for every message pattern in one pass; host and
        // program are checked only for the rules it selected.
        for i in self.set.matches(msg).iter() {
            let r = &self.rules[i];
            if r.host.as_ref().is_some_and(|h| !h.is_match(host))
                || r.program.as_ref().is_some_and(|p| !p.is_match(program))
            {
                continue;
            }
            let Some(addr) = r.pattern.captures(msg).and_then(|c| c.name("addr")) else {
                continue;
            };
            let Ok(addr) = addr.as_str().parse::<IpAddr>() else {
                return Err(Miss::BadAddress);
            };
            if self.ignore.contains(addr) {
                return Err(Miss::Ignored);
            }
            return Ok(Hit { rule: i, addr });
        }
        Err(Miss::NoRule)
    }
}

/// A session-mark key for an address: IPv4 as its 32 bits, IPv6 by its
/// /64 (the unit one subscriber holds). IPv4-mapped IPv6 reads as IPv4.
pub fn addr_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(v4.to_bits()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(v4.to_bits()),
            None => (v6.to_bits() >> 64) as u64,
        },
    }
}

/// The prefix a block of `addr` covers: `prefix_v4` bits of an IPv4
/// address (an IPv4-mapped IPv6 address reads as IPv4), `prefix_v6` bits
/// of an IPv6 one, host bits cleared. `None` only for a length past the
/// family's width, which [`RuleSet::compile`] refuses.
pub fn block_prefix(addr: IpAddr, prefix_v4: u8, prefix_v6: u8) -> Option<Prefix> {
    let (ip, len) = match addr {
        IpAddr::V4(v4) => (IpAddr::V4(v4), prefix_v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix_v4),
            None => (IpAddr::V6(v6), prefix_v6),
        },
    };
    Prefix::masked(ip, len).ok()
}

/// The bucket of one (rule, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub rule: u32,
    pub addr: IpAddr,
}

/// A bucket's shape, from its rule.
#[derive(Debug, Clone, Copy)]
pub struct BucketShape {
    pub capacity: u32,
    pub leak_every: Duration,
}

/// What adding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Held; the level after (events, rounded down).
    Held(u32),
    /// Overflowed: act. The bucket is emptied.
    Overflow,
    /// No bucket for the key (a rule without a table): counted, not
    /// acted on.
    TableFull,
}

/// Where events are counted ([`ClusterBuckets`]; tests may count
/// otherwise).
pub trait Buckets {
    fn add(&mut self, now: Instant, key: BucketKey, shape: BucketShape) -> Fill;
}

/// The buckets counted across the cluster on `keyrate` tables, one per
/// rule (`KEY_RATE` table `domain::RESPONDER << 32 | name_id(rule)`).
///
/// A cluster bucket leaks exponentially rather than linearly: each node
/// keeps a decayed count per address with time constant
/// `tau = max(capacity, 1) * leak_every` (the same sustained rate
/// overflows it as the linear bucket, `1 / leak_every`, and a burst of
/// `capacity + 1` within a small part of `tau` does), announces it while
/// it is at least half an event, and holds the other nodes' counts for
/// [`ANNOUNCE_TTL`]. The event that brings the cluster's count (own plus
/// peers') to `capacity + 1` (rounded to the nearest event) overflows.
///
/// On the wire the `f2` of a responder `KEY_RATE` carries the sender's
/// decayed count in thousandths of an event (not hits/s): rules with a
/// `findtime` of hours would lose every event to rounding otherwise.
pub struct ClusterBuckets {
    tables: Vec<KeyRates<()>>,
    ids: Vec<u64>,
    by_id: Map<u64, usize>,
    taus: Vec<f64>,
    next_announce: Instant,
    sweep_idle: Vec<Duration>,
}

impl std::fmt::Debug for ClusterBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuckets")
            .field("tables", &self.tables.len())
            .finish()
    }
}

/// How often a node announces its responder counts.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);
/// How long a peer's announced count is held.
pub const ANNOUNCE_TTL: Duration = Duration::from_millis(1000);

impl ClusterBuckets {
    /// One table per rule of `rules`, `per_rule` keys each (the tables take
    /// their memory now).
    pub fn new(rules: &RuleSet, per_rule: usize, now: Instant, seed: u128) -> ClusterBuckets {
        let hasher = SeededState::new(seed);
        let mut b = ClusterBuckets {
            tables: Vec::with_capacity(rules.len()),
            ids: Vec::with_capacity(rules.len()),
            by_id: Map::with_hasher(hasher),
            taus: Vec::with_capacity(rules.len()),
            next_announce: now,
            sweep_idle: Vec::with_capacity(rules.len()),
        };
        for (i, r) in rules.rules.iter().enumerate() {
            let tau = r.leak_every.saturating_mul(r.capacity.max(1));
            let tau_s = tau.as_secs_f64().max(1e-3);
            let p = KeyRateParams {
                capacity: per_rule,
                tau,
                announce_min: 0.5 / tau_s,
                max_announce: 512,
                peer_capacity: per_rule.min(65_536),
                max_origins: 64,
            };
            let id = table_id(domain::RESPONDER, name_id(&r.name));
            b.tables.push(KeyRates::new(p, now, hasher));
            b.by_id.insert(id, i);
            b.ids.push(id);
            b.taus.push(tau_s);
            // A count is below 1/1000 of an event after 7 tau.
            b.sweep_idle.push(tau.saturating_mul(7));
        }
        b
    }

    fn key(addr: IpAddr) -> u64 {
        addr_key(addr)
    }

    /// Counts that gave way to heavier ones in full tables (monotonic).
    pub fn evictions(&self) -> u64 {
        self.tables.iter().map(|t| t.counters().evictions).sum()
    }

    /// When [`ClusterBuckets::announce`] is next due.
    pub fn next_announce(&self) -> Instant {
        self.next_announce
    }

    /// If due, the records to send: each table's addresses holding at
    /// least half an event, with their counts; sweeps idle keys too.
    pub fn announce(&mut self, now: Instant, mut emit: impl FnMut(KeyRateRecord)) {
        if now < self.next_announce {
            return;
        }
        self.next_announce = now + ANNOUNCE_EVERY;
        let ttl_ms = ANNOUNCE_TTL.as_millis() as u32;
        for (i, t) in self.tables.iter_mut().enumerate() {
            let (table, tau) = (self.ids[i], self.taus[i]);
            t.announce(now, |key, rate| {
                emit(KeyRateRecord {
                    table,
                    key,
                    rate: rate * tau,
                    ttl_ms,
                })
            });
            t.sweep(now, self.sweep_idle[i], 1024);
        }
    }

    /// Takes another node's announced count. False when the table is not
    /// one of ours (another rule set) or the peer table is full.
    pub fn absorb(&mut self, now: Instant, origin: u32, k: &KeyRateRecord) -> bool {
        let Some(&i) = self.by_id.get(&k.table) else {
            return false;
        };
        let until = now + Duration::from_millis(u64::from(k.ttl_ms).min(10_000));
        let rate = k.rate / self.taus[i];
        self.tables[i].absorb(now, origin, k.key, rate, until)
    }

    /// The cluster count of an address under a rule (own plus peers').
    pub fn level(&self, now: Instant, rule: usize, addr: IpAddr) -> f64 {
        self.tables[rule]
            .view(now, ClusterBuckets::key(addr))
            .cluster()
            * self.taus[rule]
    }
}

impl Buckets for ClusterBuckets {
    fn add(&mut self, now: Instant, key: BucketKey, shape: BucketShape) -> Fill {
        let i = key.rule as usize;
        let Some(t) = self.tables.get_mut(i) else {
            return Fill::TableFull;
        };
        let h = t.hit(now, ClusterBuckets::key(key.addr), 1);
        let level = (h.local + h.peers) * self.taus[i];
        // Rounded: decay between the events of a burst takes a little
        // off each.
        let events = (level + 0.5).floor();
        if events > f64::from(shape.capacity) {
            Fill::Overflow
        } else {
            Fill::Held(events as u32)
        }
    }
}

/// What one log line came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Miss(Miss),
    /// Counted in its bucket, below the limit.
    Counted {
        hit: Hit,
        level: u32,
    },
    /// The bucket overflowed: apply the rule's action to the address.
    Act {
        hit: Hit,
        action: ActionSpec,
    },
    /// Matched, but no bucket could count it: not acted on.
    Dropped {
        hit: Hit,
    },
}

/// The rules and their buckets.
#[derive(Debug)]
pub struct Responder<B: Buckets = ClusterBuckets> {
    pub rules: RuleSet,
    pub buckets: B,
}

impl<B: Buckets> Responder<B> {
    pub fn new(rules: RuleSet, buckets: B) -> Responder<B> {
        Responder { rules, buckets }
    }

    /// Matches a line, counts it in its bucket and says what to do.
    pub fn observe(&mut self, now: Instant, host: &str, program: &str, msg: &str) -> Outcome {
        self.observe_from(now, host, program, msg, true)
    }

    /// [`Responder::observe`] for a line whose sender may not be trusted
    /// (`trusted` false, e.g. a forgeable UDP source): a match is then
    /// [`Miss::Untrusted`] and counts nowhere, whatever the rule's action
    /// (a forged line must not block, raise a mode or mark).
    pub fn observe_from(
        &mut self,
        now: Instant,
        host: &str,
        program: &str,
        msg: &str,
        trusted: bool,
    ) -> Outcome {
        let hit = match self.rules.find(host, program, msg) {
            Ok(h) => h,
            Err(m) => return Outcome::Miss(m),
        };
        let r = &self.rules.rules[hit.rule];
        if !trusted {
            return Outcome::Miss(Miss::Untrusted);
        }
        let shape = BucketShape {
            capacity: r.capacity,
            leak_every: r.leak_every,
        };
        let key = BucketKey {
            rule: hit.rule as u32,
            addr: hit.addr,
        };
        match self.buckets.add(now, key, shape) {
            Fill::Held(level) => Outcome::Counted { hit, level },
            Fill::Overflow => Outcome::Act {
                hit,
                action: r.action,
            },
            Fill::TableFull => Outcome::Dropped { hit },
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    const SSHD: &str =
        r"Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?";

    fn rule(name: &str, pattern: &str, maxretry: u32) -> RuleSpec {
        let (capacity, leak_every) =
            RuleSpec::leak_from_findtime(maxretry, Duration::from_secs(600));
        RuleSpec {
            name: name.into(),
            host: None,
            program: Some("sshd".into()),
            pattern: pattern.into(),
            capacity,
            leak_every,
            action: ActionSpec::Mark {
                suspicious: true,
                ttl: Duration::from_secs(60),
            },
        }
    }

    fn nets(s: &[&str]) -> NetList {
        NetList(s.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn the_address_comes_from_the_structure_not_a_user_field() {
        let set = RuleSet::compile(&[rule("sshd", SSHD, 3)], NetList::default()).unwrap();
        let want = |a: &str| {
            Ok(Hit {
                rule: 0,
                addr: a.parse().unwrap(),
            })
        };
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "Failed password for invalid user 1.2.3.4 from 5.6.7.8 port 22"
            ),
            want("5.6.7.8")
        );
        // The CVE-2013-7176 shape: the user name carries a whole
        // "from ADDR port N"; anchored with \S+ it matches nothing.
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "Failed password for invalid user x from 1.2.3.4 port 22 from 5.6.7.8 port 22 ssh2"
            ),
            Err(Miss::NoRule)
        );
        // Trailing or leading text is not accepted either (anchored).
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "Failed password for root from 5.6.7.8 port 22 ssh2 1.2.3.4"
            ),
            Err(Miss::NoRule)
        );
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "x Failed password for root from 5.6.7.8 port 22"
            ),
            Err(Miss::NoRule)
        );
        // Program must match.
        assert_eq!(
            set.find(
                "h",
                "sshd2",
                "Failed password for root from 5.6.7.8 port 22"
            ),
            Err(Miss::NoRule)
        );
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "Failed password for root from 2001:db8::1 port 22 ssh2"
            ),
            want("2001:db8::1")
        );
        assert_eq!(
            set.find(
                "h",
                "sshd",
                "Failed password for root from 999.1.1.1 port 22"
            ),
            Err(Miss::BadAddress)
        );
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        for (pat, what) in [
            ("no address", "exactly once"),
            ("<ADDR> <ADDR>", "exactly once"),
            ("(?P<addr>x) <ADDR>", "reserved"),
            ("([ <ADDR>", "pattern"),
        ] {
            let e = RuleSet::compile(&[rule("r1", pat, 3)], NetList::default()).unwrap_err();
            let s = e.to_string();
            assert!(s.contains("r1") && s.contains(what), "{s}");
        }
    }

    #[test]
    fn first_matching_rule_in_order_and_ignore_list() {
        let mut specs = vec![
            rule("a", r"Accepted \S+ for \S+ from <ADDR> port [0-9]+.*", 1),
            rule("b", SSHD, 3),
        ];
        specs[0].host = Some("fw[0-9]+".into());
        let set = RuleSet::compile(&specs, nets(&["10.0.0.0/8", "2001:db8::/32"])).unwrap();
        assert_eq!(
            set.find(
                "fw1",
                "sshd",
                "Accepted publickey for a from 1.1.1.1 port 1 ssh2"
            ),
            Ok(Hit {
                rule: 0,
                addr: "1.1.1.1".parse().unwrap()
            })
        );
        assert_eq!(
            set.find(
                "db1",
                "sshd",
                "Accepted publickey for a from 1.1.1.1 port 1 ssh2"
            ),
            Err(Miss::NoRule)
        );
        assert_eq!(
            set.find(
                "fw1",
                "sshd",
                "Failed password for root from 10.2.3.4 port 1"
            ),
            Err(Miss::Ignored)
        );
        assert_eq!(
            set.find(
                "fw1",
                "sshd",
                "Failed password for root from 2001:db8::7 port 1"
            ),
            Err(Miss::Ignored)
        );
    }

    #[test]
    fn maxretry_within_findtime_alone() {
        let set = RuleSet::compile(&[rule("sshd", SSHD, 3)], NetList::default()).unwrap();
        let t0 = Instant::now();
        let b = ClusterBuckets::new(&set, 16, t0, 1);
        let mut r = Responder::new(set, b);
        let line = |a: &str| format!("Failed password for root from {a} port 22");
        let l = line("5.6.7.8");
        let s = Duration::from_secs(1);
        assert!(matches!(
            r.observe(t0, "h", "sshd", &l),
            Outcome::Counted { level: 1, .. }
        ));
        assert!(matches!(
            r.observe(t0 + s, "h", "sshd", &l),
            Outcome::Counted { level: 2, .. }
        ));
        // Another address has its own bucket.
        assert!(matches!(
            r.observe(t0 + s, "h", "sshd", &line("5.6.7.9")),
            Outcome::Counted { level: 1, .. }
        ));
        assert!(matches!(
            r.observe(t0 + 2 * s, "h", "sshd", &l),
            Outcome::Act { .. }
        ));
        // Spread thinner than maxretry per findtime (3 per 600 s; tau
        // 400 s): one every 400 s never acts.
        let far = line("5.6.7.10");
        for k in 0..20 {
            let o = r.observe(t0 + 400 * k * s, "h", "sshd", &far);
            assert!(matches!(o, Outcome::Counted { .. }), "{k}: {o:?}");
        }
    }

    #[test]
    fn cluster_buckets_fill_one_bucket_from_three_nodes() {
        let spec = rule("sshd", SSHD, 5); // capacity 4: the 5th event acts
        let set = || RuleSet::compile(std::slice::from_ref(&spec), NetList::default()).unwrap();
        let t0 = Instant::now();
        let mut nodes: Vec<Responder<ClusterBuckets>> = (0..3)
            .map(|i| {
                let rules = set();
                let b = ClusterBuckets::new(&rules, 1024, t0, i);
                Responder::new(rules, b)
            })
            .collect();
        let line = "Failed password for root from 7.7.7.7 port 22";
        let mut acted = Vec::new();
        // Ten attempts, 0.3 s apart, round robin over the nodes; every
        // 100 ms each node announces and the others absorb.
        let mut t = t0;
        for n in 0..10 {
            for _ in 0..3 {
                t += Duration::from_millis(100);
                let mut sent = Vec::new();
                for (i, r) in nodes.iter_mut().enumerate() {
                    r.buckets.announce(t, |k| sent.push((i as u32, k)));
                }
                for (from, k) in &sent {
                    for (i, r) in nodes.iter_mut().enumerate() {
                        if i as u32 != *from {
                            assert!(r.buckets.absorb(t, *from, k));
                        }
                    }
                }
            }
            let i = n % 3;
            if let Outcome::Act { .. } = nodes[i].observe(t, "h", "sshd", line) {
                acted.push(n);
            }
        }
        // The fifth attempt overall overflows (it is node 1's second);
        // later ones overflow too (the count stays high): the edge
        // suppresses those while the action is in force.
        assert_eq!(acted.first(), Some(&4), "{acted:?}");
        let lvl = nodes[0].buckets.level(t, 0, "7.7.7.7".parse().unwrap());
        assert!((9.5..=10.5).contains(&lvl), "{lvl}");
        // Alone, one node would have needed five of its own.
        let rules = set();
        let b = ClusterBuckets::new(&rules, 1024, t0, 9);
        let mut alone = Responder::new(rules, b);
        let outs: Vec<_> = (0..5)
            .map(|k| alone.observe(t0 + Duration::from_secs(k), "h", "sshd", line))
            .collect();
        assert!(
            outs[..4]
                .iter()
                .all(|o| matches!(o, Outcome::Counted { .. })),
            "{outs:?}"
        );
        assert!(matches!(outs[4], Outcome::Act { .. }));
        // A table id that is not ours is refused.
        let k = KeyRateRecord {
            table: 1,
            key: 1,
            rate: 1.0,
            ttl_ms: 100,
        };
        assert!(!alone.buckets.absorb(t0, 2, &k));
    }

    #[test]
    fn block_prefixes_and_their_bounds() {
        let p = |a: &str, v4, v6| {
            block_prefix(a.parse().unwrap(), v4, v6)
                .unwrap()
                .to_string()
        };
        assert_eq!(p("203.0.113.77", 24, 64), "203.0.113.0/24");
        assert_eq!(p("203.0.113.77", 32, 64), "203.0.113.77/32");
        // An IPv4-mapped address is blocked as the IPv4 it is.
        assert_eq!(p("::ffff:203.0.113.77", 24, 64), "203.0.113.0/24");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 24, 64), "2001:db8:1:2::/64");
        assert_eq!(
            p("2001:db8:1:2:3:4:5:6", 24, 128),
            "2001:db8:1:2:3:4:5:6/128"
        );
        assert!(block_prefix("1.2.3.4".parse().unwrap(), 33, 64).is_none());
        let block = |v4, v6| {
            let mut r = rule("b", SSHD, 3);
            r.action = ActionSpec::Block {
                ttl: Duration::from_secs(60),
                prefix_v4: v4,
                prefix_v6: v6,
            };
            RuleSet::compile(&[r], NetList::default())
        };
        assert!(block(32, 128).is_ok());
        assert!(block(24, 64).is_ok());
        for (v4, v6) in [(0, 64), (33, 64), (24, 0), (24, 129)] {
            let e = block(v4, v6).unwrap_err().to_string();
            assert!(e.contains("rule \"b\"") && e.contains("prefix"), "{e}");
        }
    }

    #[test]
    fn forged_transport_never_counts_toward_any_rule() {
        let mut b = rule("b", SSHD, 2); // capacity 1: the 2nd event acts
        b.action = ActionSpec::Block {
            ttl: Duration::from_secs(60),
            prefix_v4: 32,
            prefix_v6: 64,
        };
        let m = rule("m", r"Invalid user \S+ from <ADDR>", 2);
        let set = RuleSet::compile(&[b, m], NetList::default()).unwrap();
        let t0 = Instant::now();
        let buckets = ClusterBuckets::new(&set, 16, t0, 1);
        let mut r = Responder::new(set, buckets);
        let bad = "Failed password for root from 9.9.9.9 port 22";
        // Any number of untrusted lines: nothing counted, nothing acts.
        for _ in 0..10 {
            let o = r.observe_from(t0, "h", "sshd", bad, false);
            assert_eq!(o, Outcome::Miss(Miss::Untrusted));
        }
        // So the first trusted line starts the bucket from empty.
        let o = r.observe_from(t0, "h", "sshd", bad, true);
        assert!(matches!(o, Outcome::Counted { level: 1, .. }), "{o:?}");
        // Nor does a rule that marks or raises a mode: a forged line
        // must not act at all.
        let mark = "Invalid user x from 9.9.9.9";
        let o = r.observe_from(t0, "h", "sshd", mark, false);
        assert_eq!(o, Outcome::Miss(Miss::Untrusted));
    }

    #[test]
    fn networks() {
        let n: Net = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Net = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "10.0.0.0/+1", "::/129"] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
        assert_eq!(addr_key("1.2.3.4".parse().unwrap()), 0x01020304);
        assert_eq!(addr_key("::ffff:1.2.3.4".parse().unwrap()), 0x01020304);
        assert_eq!(
            addr_key("2001:db8:1:2::5".parse().unwrap()),
            0x20010db800010002
        );
    }
}
