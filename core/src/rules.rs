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
//! - Buckets sit behind [`Buckets`]: [`LocalBuckets`] counts on this node;
//!   a cluster-wide counter can take its place without touching the rules.
//!
//! `now` is passed in; config parsing (TOML) is the node's.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use regex::{Regex, RegexSet};

use crate::hash::{Map, SeededState};

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
    /// Block the address for `ttl` (BLOCK record; pending in this build:
    /// refused by [`RuleSet::compile`]).
    Block { ttl: Duration },
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
            if let ActionSpec::Block { .. } = s.action {
                return Err(bad(
                    "action block needs BLOCK records, not in this build yet: use mark or mode"
                        .into(),
                ));
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
    /// No room to track a new key: counted, not acted on.
    TableFull,
}

/// Where events are counted: [`LocalBuckets`] on this node, or a
/// cluster-wide counter fed by every node's events.
pub trait Buckets {
    fn add(&mut self, now: Instant, key: BucketKey, shape: BucketShape) -> Fill;
}

#[derive(Debug, Clone, Copy)]
struct Level {
    /// Events held, in units of 1/1024 event (so leaking is exact enough
    /// without floats).
    milli: u64,
    at: Instant,
    leak_every: Duration,
}

const UNIT: u64 = 1024;

/// Leaky buckets on this node, at most `capacity` keys; when full, keys
/// that have leaked empty are dropped first, and a new key is refused
/// (counted) if none has.
#[derive(Debug)]
pub struct LocalBuckets {
    map: Map<BucketKey, Level>,
    max: usize,
}

impl LocalBuckets {
    pub fn new(max: usize, seed: u128) -> LocalBuckets {
        LocalBuckets {
            map: Map::with_hasher(SeededState::new(seed)),
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn leaked(l: Level, now: Instant) -> u64 {
        let dt = now.saturating_duration_since(l.at).as_nanos();
        let per = l.leak_every.as_nanos().max(1);
        let out = dt.saturating_mul(u128::from(UNIT)) / per;
        l.milli
            .saturating_sub(u64::try_from(out).unwrap_or(u64::MAX))
    }
}

impl Buckets for LocalBuckets {
    fn add(&mut self, now: Instant, key: BucketKey, shape: BucketShape) -> Fill {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            // Sweep: whatever leaked empty by now goes. O(n) but only when
            // full, and it frees every empty key at once.
            self.map.retain(|_, l| LocalBuckets::leaked(*l, now) > 0);
            if self.map.len() >= self.max {
                return Fill::TableFull;
            }
        }
        let l = self.map.entry(key).or_insert(Level {
            milli: 0,
            at: now,
            leak_every: shape.leak_every,
        });
        let level = LocalBuckets::leaked(*l, now);
        if level + UNIT > u64::from(shape.capacity) * UNIT {
            self.map.remove(&key);
            return Fill::Overflow;
        }
        *l = Level {
            milli: level + UNIT,
            at: now,
            leak_every: shape.leak_every,
        };
        Fill::Held(((level + UNIT) / UNIT) as u32)
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
    /// Matched, but the bucket table had no room: not acted on.
    Dropped {
        hit: Hit,
    },
}

/// The rules and their buckets.
#[derive(Debug)]
pub struct Responder<B: Buckets = LocalBuckets> {
    pub rules: RuleSet,
    pub buckets: B,
}

impl<B: Buckets> Responder<B> {
    pub fn new(rules: RuleSet, buckets: B) -> Responder<B> {
        Responder { rules, buckets }
    }

    pub fn observe(&mut self, now: Instant, host: &str, program: &str, msg: &str) -> Outcome {
        let hit = match self.rules.find(host, program, msg) {
            Ok(h) => h,
            Err(m) => return Outcome::Miss(m),
        };
        let r = &self.rules.rules[hit.rule];
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
    fn leaky_bucket_maxretry_findtime() {
        let set = RuleSet::compile(&[rule("sshd", SSHD, 3)], NetList::default()).unwrap();
        let mut r = Responder::new(set, LocalBuckets::new(16, 1));
        let t0 = Instant::now();
        let line = |a: &str| format!("Failed password for root from {a} port 22");
        let l = line("5.6.7.8");
        assert!(matches!(
            r.observe(t0, "h", "sshd", &l),
            Outcome::Counted { level: 1, .. }
        ));
        assert!(matches!(
            r.observe(t0, "h", "sshd", &l),
            Outcome::Counted { level: 2, .. }
        ));
        // Another address has its own bucket.
        assert!(matches!(
            r.observe(t0, "h", "sshd", &line("5.6.7.9")),
            Outcome::Counted { level: 1, .. }
        ));
        assert!(matches!(
            r.observe(t0, "h", "sshd", &l),
            Outcome::Act { .. }
        ));
        // Emptied after acting.
        assert!(matches!(
            r.observe(t0, "h", "sshd", &l),
            Outcome::Counted { level: 1, .. }
        ));
        // 3 per 600 s leak: after 400 s two events are gone.
        let t1 = t0 + Duration::from_secs(400);
        assert!(matches!(
            r.observe(t1, "h", "sshd", &l),
            Outcome::Counted { level: 1, .. }
        ));
        assert!(matches!(
            r.observe(t1, "h", "sshd", &l),
            Outcome::Counted { level: 2, .. }
        ));
        assert!(matches!(
            r.observe(t1, "h", "sshd", &l),
            Outcome::Act { .. }
        ));
    }

    #[test]
    fn bucket_table_is_bounded() {
        let mut b = LocalBuckets::new(2, 1);
        let shape = BucketShape {
            capacity: 5,
            leak_every: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let k = |n: u8| BucketKey {
            rule: 0,
            addr: IpAddr::from([1, 1, 1, n]),
        };
        assert_eq!(b.add(t0, k(1), shape), Fill::Held(1));
        assert_eq!(b.add(t0, k(2), shape), Fill::Held(1));
        assert_eq!(b.add(t0, k(3), shape), Fill::TableFull);
        assert_eq!(b.len(), 2);
        // Once the others leaked empty, a new key gets in.
        assert_eq!(
            b.add(t0 + Duration::from_secs(2), k(3), shape),
            Fill::Held(1)
        );
        assert_eq!(b.len(), 1);
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
