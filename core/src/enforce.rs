//! The enforcer's decisions, sans-IO: what the kernel's drop sets should
//! hold (the *desired* set, from the live blocks and this node's safety
//! rules) against what they hold (the *observed* set: read back from the
//! kernel, or what the last good batch left there), turned into one batch
//! of deletes then adds that the netlink edge applies atomically.
//!
//! - Desired: live blocks, minus prefixes overlapping the allowlist or
//!   shorter than the minimum length, minus prefixes inside another
//!   desired prefix of the same family (interval sets refuse overlaps; the
//!   inner one is added when the outer one expires, see
//!   [`Desired::next_change`]), capped at `max_elements`.
//! - Policy when more blocks are live than `max_elements`: the broadest
//!   prefixes are kept first, then the longest-lived; the rest are not
//!   enforced and reported as `over_capacity` until room frees up.
//! - Each element's kernel timeout is the block's remaining lifetime, so
//!   the kernel drops an expired block by itself even if this process is
//!   gone. An element whose kernel timeout differs from the block's by more
//!   than `ttl_tolerance` is re-asserted (deleted and added in the same
//!   batch: no gap), the CrowdSec failure mode of a kernel TTL drifting
//!   from the store's.
//! - Which kernel set holds an element is decided here too
//!   ([`SetKind::of`]): a full-length address (/32, /128), almost every
//!   block, goes in a hash set (one element, O(1) to add); a shorter prefix
//!   in an interval set (two elements, a tree). An element found in the
//!   other set of its family (a table from an older layout, a hand edit) is
//!   deleted there and added where it belongs in the same batch.
//! - A batch is outstanding until the driver reports it: on success the
//!   belief of what the kernel holds moves; on failure it stays (the
//!   kernel rolled the whole batch back) and a retry is due after
//!   `retry`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_wire::Prefix;

/// This node's enforcement rules (from `[enforce]`).
#[derive(Debug, Clone)]
pub struct EnforceRules {
    /// Never blocked: a block overlapping any of these is refused.
    pub allowlist: Vec<Prefix>,
    /// Shortest prefix enforced per family (never below 1: /0 is always
    /// refused).
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// Most elements across both sets.
    pub max_elements: usize,
    /// Kernel timeout drift tolerated before an element is re-asserted.
    pub ttl_tolerance: Duration,
    /// Wait after a failed batch before the next try.
    pub retry: Duration,
}

impl Default for EnforceRules {
    fn default() -> EnforceRules {
        EnforceRules {
            allowlist: Vec::new(),
            min_prefix_v4: 16,
            min_prefix_v6: 48,
            max_elements: 65_536,
            ttl_tolerance: Duration::from_secs(2),
            retry: Duration::from_secs(1),
        }
    }
}

/// Why a prefix is never enforced on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{prefix} overlaps the allowlisted {allowed}")]
    Allowlisted { prefix: Prefix, allowed: Prefix },
    #[error("{prefix} is shorter than the /{min} minimum for its family")]
    TooShort { prefix: Prefix, min: u8 },
}

impl EnforceRules {
    /// Whether `p` may be enforced here; the API asks this before taking
    /// a block so that the caller gets the reason.
    pub fn check(&self, p: &Prefix) -> Result<(), Refusal> {
        let min = if p.is_v4() {
            self.min_prefix_v4
        } else {
            self.min_prefix_v6
        }
        .max(1);
        if p.prefix_len() < min {
            return Err(Refusal::TooShort { prefix: *p, min });
        }
        match self
            .allowlist
            .iter()
            .find(|a| a.contains(p) || p.contains(a))
        {
            Some(a) => Err(Refusal::Allowlisted {
                prefix: *p,
                allowed: *a,
            }),
            None => Ok(()),
        }
    }
}

/// The kernel set an element lives in: per family, a hash set of full
/// addresses and an interval set of shorter prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// IPv4 /32.
    Addr4,
    /// IPv4 shorter than /32.
    Net4,
    /// IPv6 /128.
    Addr6,
    /// IPv6 shorter than /128.
    Net6,
}

impl SetKind {
    pub const ALL: [SetKind; 4] = [SetKind::Addr4, SetKind::Net4, SetKind::Addr6, SetKind::Net6];

    /// The set `p` belongs in.
    pub fn of(p: &Prefix) -> SetKind {
        match (p.is_v4(), p.prefix_len()) {
            (true, 32) => SetKind::Addr4,
            (true, _) => SetKind::Net4,
            (false, 128) => SetKind::Addr6,
            (false, _) => SetKind::Net6,
        }
    }

    pub fn is_v4(self) -> bool {
        matches!(self, SetKind::Addr4 | SetKind::Net4)
    }

    /// An interval set (prefixes as ranges) rather than a hash set.
    pub fn is_interval(self) -> bool {
        matches!(self, SetKind::Net4 | SetKind::Net6)
    }
}

/// One element as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub prefix: Prefix,
    /// Time left before the kernel expires it; `None`: no timeout.
    pub remaining: Option<Duration>,
    /// The set it was found in.
    pub set: SetKind,
}

/// The set the kernel should hold, with what was left out and why.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Prefix → when its block ends.
    pub elements: BTreeMap<Prefix, Instant>,
    pub refused_allowlist: usize,
    pub refused_short: usize,
    /// Inside another desired prefix (enforced by that one).
    pub covered: usize,
    /// Live blocks left out by the `max_elements` cap.
    pub over_capacity: usize,
    /// When the set must be computed again even if no block changes: an
    /// outer prefix expires and the ones it covered must go in, or room
    /// frees up under the cap.
    pub next_change: Option<Instant>,
}

/// One atomic kernel batch: every delete, then every add. A re-asserted
/// element is in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    /// Prefix and the set to delete it from (an element found in the
    /// wrong set is deleted from where it is).
    pub deletes: Vec<(Prefix, SetKind)>,
    /// Prefix, kernel timeout (the block's remaining lifetime), and the
    /// instant it ends (kept for the belief); it goes in
    /// [`SetKind::of`] the prefix.
    pub adds: Vec<(Prefix, Duration, Instant)>,
    /// How many of the adds are re-asserts and repairs (for the counters).
    pub reasserts: usize,
    pub repaired_missing: usize,
    pub repaired_extra: usize,
    /// Re-asserts found by a read-back (kernel timeout drifted).
    pub repaired_ttl: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.adds.is_empty()
    }

    pub fn len(&self) -> usize {
        self.deletes.len() + self.adds.len()
    }
}

/// Counters; they only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnforceCounters {
    pub batches_ok: u64,
    pub batches_failed: u64,
    pub elements_added: u64,
    pub elements_deleted: u64,
    /// Elements whose kernel timeout was set again (drift or extension).
    pub reasserted: u64,
    /// Read-back repairs: an element the kernel lost (a hand `nft flush`,
    /// another program) put back.
    pub repaired_missing: u64,
    /// Read-back repairs: an element nobody decided, removed.
    pub repaired_extra: u64,
    /// Read-back repairs: a kernel timeout that drifted, re-asserted.
    pub repaired_ttl: u64,
    /// Elements the kernel expired by itself (belief entries past their
    /// end).
    pub expired: u64,
    /// Dry run: elements that would have been added or deleted.
    pub dry_run_adds: u64,
    pub dry_run_deletes: u64,
}

/// The enforcer's state: rules, the belief of what the kernel holds, the
/// outstanding batch and the counters.
#[derive(Debug)]
pub struct Enforcer {
    rules: EnforceRules,
    dry_run: bool,
    /// What the kernel holds after the last good batch: prefix → end.
    applied: BTreeMap<Prefix, Instant>,
    outstanding: Option<u64>,
    next_id: u64,
    retry_at: Option<Instant>,
    /// While a read-back is under way: the prefixes batches changed since
    /// it started (the read may have seen them before or after).
    touched: Option<std::collections::BTreeSet<Prefix>>,
    pub counters: EnforceCounters,
    /// From the last [`Enforcer::desired`] call, for the metrics.
    pub last_desired: DesiredStats,
}

/// The gauges of the last desired set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DesiredStats {
    pub elements_v4: usize,
    pub elements_v6: usize,
    pub refused_allowlist: usize,
    pub refused_short: usize,
    pub covered: usize,
    pub over_capacity: usize,
}

impl Enforcer {
    pub fn new(rules: EnforceRules, dry_run: bool) -> Enforcer {
        Enforcer {
            rules,
            dry_run,
            applied: BTreeMap::new(),
            outstanding: None,
            next_id: 1,
            retry_at: None,
            touched: None,
            counters: EnforceCounters::default(),
            last_desired: DesiredStats::default(),
        }
    }

    pub fn rules(&self) -> &EnforceRules {
        &self.rules
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// What the kernel holds as far as the last good batch says.
    pub fn applied(&self) -> &BTreeMap<Prefix, Instant> {
        &self.applied
    }

    /// Computes the desired set from live blocks (prefix, end).
    pub fn desired(
        &mut self,
        now: Instant,
        blocks: impl IntoIterator<Item = (Prefix, Instant)>,
    ) -> Desired {
        let mut d = Desired::default();
        let mut live: Vec<(Prefix, Instant)> = Vec::new();
        for (p, end) in blocks {
            // Less than a millisecond left: the kernel could not hold it.
            if end <= now + Duration::from_millis(1) {
                continue;
            }
            match self.rules.check(&p) {
                Ok(()) => live.push((p, end)),
                Err(Refusal::Allowlisted { .. }) => d.refused_allowlist += 1,
                Err(Refusal::TooShort { .. }) => d.refused_short += 1,
            }
        }
        // Sorted by family, address, then length: an outer prefix comes
        // right before the prefixes inside it (prefixes nest or are
        // disjoint), so comparing with the last kept one is enough.
        live.sort_unstable_by_key(|(p, _)| (!p.is_v4(), p.range().0, p.prefix_len()));
        let mut kept: Vec<(Prefix, Instant)> = Vec::with_capacity(live.len());
        for (p, end) in live {
            if let Some((outer, outer_end)) = kept.last() {
                if outer.contains(&p) {
                    d.covered += 1;
                    if end > *outer_end {
                        d.next_change = earliest(d.next_change, *outer_end);
                    }
                    continue;
                }
            }
            kept.push((p, end));
        }
        if kept.len() > self.rules.max_elements {
            // Broadest first, then longest-lived.
            kept.sort_unstable_by_key(|(p, end)| (p.prefix_len(), std::cmp::Reverse(*end), *p));
            d.over_capacity = kept.len() - self.rules.max_elements;
            kept.truncate(self.rules.max_elements);
            if let Some(first) = kept.iter().map(|(_, e)| *e).min() {
                d.next_change = earliest(d.next_change, first);
            }
        }
        d.elements = kept.into_iter().collect();
        self.last_desired = DesiredStats {
            elements_v4: d.elements.keys().filter(|p| p.is_v4()).count(),
            elements_v6: d.elements.keys().filter(|p| !p.is_v4()).count(),
            refused_allowlist: d.refused_allowlist,
            refused_short: d.refused_short,
            covered: d.covered,
            over_capacity: d.over_capacity,
        };
        d
    }

    /// A read-back of the kernel starts; batches may go on while it runs
    /// (a large set's read takes seconds). Until its result is planned
    /// with, every prefix a successful batch changes is remembered, and
    /// for those the belief wins over what the read saw.
    pub fn readback_started(&mut self) {
        self.touched = Some(Default::default());
    }

    /// Whether a batch may be planned now (none outstanding, no retry
    /// pending).
    pub fn ready(&self, now: Instant) -> bool {
        self.outstanding.is_none() && self.retry_at.is_none_or(|t| now >= t)
    }

    /// The batch taking the kernel from what it holds to `desired`.
    /// `observed` is the kernel's read-back when the driver has one (a
    /// reconcile: differences from the belief are repairs), else the
    /// belief is used. `None` when nothing is to change or a batch is
    /// outstanding or a retry not yet due.
    pub fn plan(
        &mut self,
        now: Instant,
        desired: &Desired,
        observed: Option<&[Observed]>,
    ) -> Option<Batch> {
        if !self.ready(now) {
            return None;
        }
        self.retry_at = None;
        // Belief entries past their end: the kernel expired them itself.
        let before = self.applied.len();
        self.applied.retain(|_, end| *end > now);
        self.counters.expired += (before - self.applied.len()) as u64;

        let mut b = Batch::default();
        let tol = self.rules.ttl_tolerance;
        let remaining = |end: Instant| end.saturating_duration_since(now);
        let mut held: BTreeMap<Prefix, Option<Instant>> = BTreeMap::new();
        match observed {
            Some(obs) => {
                let touched = self.touched.take().unwrap_or_default();
                for o in obs.iter().filter(|o| !touched.contains(&o.prefix)) {
                    if o.set != SetKind::of(&o.prefix) {
                        // In the other set of its family (an older layout,
                        // a hand edit): nobody put it there. Deleted from
                        // there; added where it belongs below, if desired.
                        b.deletes.push((o.prefix, o.set));
                        b.repaired_extra += 1;
                        continue;
                    }
                    held.insert(o.prefix, o.remaining.map(|r| now + r));
                }
                // Changed by a batch while the read ran: the belief.
                for p in &touched {
                    if let Some(end) = self.applied.get(p) {
                        held.insert(*p, Some(*end));
                    }
                }
            }
            None => held.extend(self.applied.iter().map(|(p, e)| (*p, Some(*e)))),
        }
        for p in held.keys() {
            if !desired.elements.contains_key(p) {
                b.deletes.push((*p, SetKind::of(p)));
                if observed.is_some() && !self.applied.contains_key(p) {
                    b.repaired_extra += 1;
                }
            }
        }
        for (p, end) in &desired.elements {
            match held.get(p) {
                None => {
                    b.adds.push((*p, remaining(*end), *end));
                    if observed.is_some() && self.applied.contains_key(p) {
                        b.repaired_missing += 1;
                    }
                }
                Some(kernel_end) => {
                    let drift = match kernel_end {
                        None => true,
                        Some(k) => k.max(end).saturating_duration_since(*k.min(end)) > tol,
                    };
                    if drift {
                        b.deletes.push((*p, SetKind::of(p)));
                        b.adds.push((*p, remaining(*end), *end));
                        b.reasserts += 1;
                        b.repaired_ttl += observed.is_some() as usize;
                    }
                }
            }
        }
        if b.is_empty() {
            if observed.is_some() {
                // The kernel is right: believe it.
                self.applied = desired.elements.clone();
            }
            return None;
        }
        b.id = self.next_id;
        self.next_id += 1;
        self.outstanding = Some(b.id);
        Some(b)
    }

    /// The kernel took the batch (or, in a dry run, the driver logged it).
    pub fn batch_ok(&mut self, b: &Batch) {
        if self.outstanding != Some(b.id) {
            return;
        }
        self.outstanding = None;
        if let Some(t) = &mut self.touched {
            t.extend(b.deletes.iter().map(|d| d.0));
            t.extend(b.adds.iter().map(|a| a.0));
        }
        for (p, set) in &b.deletes {
            if *set == SetKind::of(p) {
                self.applied.remove(p);
            }
        }
        for (p, _, end) in &b.adds {
            self.applied.insert(*p, *end);
        }
        let c = &mut self.counters;
        if self.dry_run {
            c.dry_run_adds += b.adds.len() as u64;
            c.dry_run_deletes += b.deletes.len() as u64;
            return;
        }
        c.batches_ok += 1;
        c.elements_added += (b.adds.len() - b.reasserts) as u64;
        c.elements_deleted += (b.deletes.len() - b.reasserts) as u64;
        c.reasserted += b.reasserts as u64;
        c.repaired_missing += b.repaired_missing as u64;
        c.repaired_extra += b.repaired_extra as u64;
        c.repaired_ttl += b.repaired_ttl as u64;
    }

    /// The kernel refused the batch: it rolled all of it back, so the
    /// belief stays as it was; a retry is due after `retry`.
    pub fn batch_failed(&mut self, now: Instant, b: &Batch) {
        if self.outstanding != Some(b.id) {
            return;
        }
        self.outstanding = None;
        self.counters.batches_failed += 1;
        self.retry_at = Some(now + self.rules.retry);
    }

    /// When a failed batch may be retried.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn rules() -> EnforceRules {
        EnforceRules {
            allowlist: vec![p("10.9.0.0/16"), p("fd00::/64")],
            min_prefix_v4: 8,
            min_prefix_v6: 32,
            max_elements: 100,
            ttl_tolerance: S,
            retry: S,
        }
    }

    fn names(v: &[Prefix]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        v.sort();
        v
    }

    fn adds(b: &Batch) -> Vec<String> {
        names(&b.adds.iter().map(|a| a.0).collect::<Vec<_>>())
    }

    /// Deletes, each checked to be from the prefix's own set.
    fn dels(b: &Batch) -> Vec<String> {
        assert!(b.deletes.iter().all(|(p, s)| *s == SetKind::of(p)));
        names(&b.deletes.iter().map(|d| d.0).collect::<Vec<_>>())
    }

    fn obs(s: &str, remaining: Option<Duration>) -> Observed {
        let prefix = p(s);
        Observed {
            prefix,
            remaining,
            set: SetKind::of(&prefix),
        }
    }

    #[test]
    fn safety_rules_refuse_allowlisted_and_short_prefixes() {
        let r = rules();
        assert!(r.check(&p("192.0.2.0/24")).is_ok());
        assert_eq!(
            r.check(&p("10.0.0.0/8")),
            Err(Refusal::Allowlisted {
                prefix: p("10.0.0.0/8"),
                allowed: p("10.9.0.0/16")
            })
        );
        assert!(matches!(
            r.check(&p("10.9.1.1")),
            Err(Refusal::Allowlisted { .. })
        ));
        assert_eq!(
            r.check(&p("0.0.0.0/0")),
            Err(Refusal::TooShort {
                prefix: p("0.0.0.0/0"),
                min: 8
            })
        );
        let zero = EnforceRules {
            min_prefix_v6: 0,
            ..rules()
        };
        assert!(
            zero.check(&p("::/0")).is_err(),
            "/0 is refused whatever the minimum"
        );
        assert_eq!(
            Refusal::TooShort {
                prefix: p("0.0.0.0/0"),
                min: 8
            }
            .to_string(),
            "0.0.0.0/0 is shorter than the /8 minimum for its family"
        );
    }

    #[test]
    fn desired_drops_refused_and_covered_and_caps_broadest_first() {
        let t0 = Instant::now();
        let mut e = Enforcer::new(
            EnforceRules {
                max_elements: 3,
                ..rules()
            },
            false,
        );
        let d = e.desired(
            t0,
            [
                (p("192.0.2.0/24"), t0 + 10 * S),
                (p("192.0.2.7"), t0 + 20 * S), // inside, outlives the /24
                (p("10.9.3.0/24"), t0 + 10 * S), // allowlisted
                (p("2.0.0.0/7"), t0 + 10 * S), // too short
                (p("2001:db8::/32"), t0 + 10 * S),
                (p("198.51.100.1"), t0 + 5 * S),
                (p("203.0.113.1"), t0 + 50 * S),
                (p("203.0.113.2"), t0), // already over
            ],
        );
        assert_eq!(
            d.elements.keys().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["192.0.2.0/24", "203.0.113.1/32", "2001:db8::/32"]
        );
        assert_eq!((d.refused_allowlist, d.refused_short), (1, 1));
        assert_eq!((d.covered, d.over_capacity), (1, 1));
        // The earliest of: the /24 ends (its /32 must go in), the cap.
        assert_eq!(d.next_change, Some(t0 + 10 * S));
        assert_eq!(e.last_desired.elements_v4, 2);
        assert_eq!(e.last_desired.elements_v6, 1);
    }

    #[test]
    fn batches_move_the_belief_only_when_applied() {
        let t0 = Instant::now();
        let mut e = Enforcer::new(rules(), false);
        let d = e.desired(t0, [(p("192.0.2.0/24"), t0 + 10 * S)]);
        let b = e.plan(t0, &d, None).expect("first batch");
        assert_eq!(adds(&b), ["192.0.2.0/24"]);
        assert_eq!(b.adds[0].1, 10 * S, "timeout = remaining TTL");
        assert!(e.plan(t0, &d, None).is_none(), "one batch outstanding");
        // The kernel refuses it: nothing moves, retry after `retry`.
        e.batch_failed(t0, &b);
        assert!(e.applied().is_empty());
        assert_eq!(e.counters.batches_failed, 1);
        assert!(e.plan(t0 + S / 2, &d, None).is_none(), "retry not due");
        let b = e.plan(t0 + S, &d, None).expect("retry");
        assert_eq!(b.adds[0].1, 9 * S, "timeout counted from the retry");
        e.batch_ok(&b);
        assert_eq!(e.applied().len(), 1);
        assert!(e.plan(t0 + S, &d, None).is_none(), "nothing left to do");

        // A block extended past the tolerance is re-asserted; one lifted
        // is deleted.
        let d = e.desired(
            t0 + 2 * S,
            [
                (p("192.0.2.0/24"), t0 + 60 * S),
                (p("2001:db8::/48"), t0 + 9 * S),
            ],
        );
        let b = e.plan(t0 + 2 * S, &d, None).expect("extend");
        assert_eq!(b.reasserts, 1);
        assert_eq!(dels(&b), ["192.0.2.0/24"]);
        assert_eq!(adds(&b), ["192.0.2.0/24", "2001:db8::/48"]);
        e.batch_ok(&b);
        let d = e.desired(t0 + 3 * S, [(p("2001:db8::/48"), t0 + 9 * S)]);
        let b = e.plan(t0 + 3 * S, &d, None).expect("lift");
        assert_eq!(dels(&b), ["192.0.2.0/24"]);
        assert!(b.adds.is_empty());
        e.batch_ok(&b);
        assert_eq!(
            e.counters,
            EnforceCounters {
                batches_ok: 3,
                batches_failed: 1,
                elements_added: 2,
                elements_deleted: 1,
                reasserted: 1,
                ..EnforceCounters::default()
            }
        );
        // Past its end the kernel expired it: counted, nothing sent.
        let d = e.desired(t0 + 10 * S, []);
        assert!(e.plan(t0 + 10 * S, &d, None).is_none());
        assert_eq!(e.counters.expired, 1);
    }

    #[test]
    fn reconcile_repairs_what_the_kernel_lost_or_gained_and_ttl_drift() {
        let t0 = Instant::now();
        let mut e = Enforcer::new(rules(), false);
        let d = e.desired(
            t0,
            [
                (p("192.0.2.0/24"), t0 + 100 * S),
                (p("198.51.100.0/24"), t0 + 100 * S),
                (p("203.0.113.0/24"), t0 + 100 * S),
            ],
        );
        let b = e.plan(t0, &d, None).expect("load");
        e.batch_ok(&b);
        // Read back: one element lost (hand flush of an element), one
        // foreign element, one timeout drifted, one correct.
        let observed = [
            obs("198.51.100.0/24", Some(40 * S)),
            obs("203.0.113.0/24", Some(100 * S)),
            obs("100.64.0.0/10", None),
        ];
        let b = e.plan(t0, &d, Some(&observed)).expect("repair");
        assert_eq!(dels(&b), ["100.64.0.0/10", "198.51.100.0/24"]);
        assert_eq!(adds(&b), ["192.0.2.0/24", "198.51.100.0/24"]);
        assert_eq!(
            (b.repaired_missing, b.repaired_extra, b.reasserts),
            (1, 1, 1)
        );
        e.batch_ok(&b);
        assert_eq!(e.counters.repaired_missing, 1);
        assert_eq!(e.counters.repaired_extra, 1);
        assert_eq!(e.counters.repaired_ttl, 1);

        // At a restart the belief is empty: elements already right in the
        // kernel are left alone (no gap), only the wrong ones change.
        let mut fresh = Enforcer::new(rules(), false);
        let d = fresh.desired(t0, [(p("192.0.2.0/24"), t0 + 100 * S)]);
        let kernel = [obs(
            "192.0.2.0/24",
            Some(100 * S - Duration::from_millis(300)),
        )];
        assert!(fresh.plan(t0, &d, Some(&kernel)).is_none());
        assert_eq!(fresh.applied().len(), 1, "believes the kernel now");
    }

    #[test]
    fn full_addresses_go_in_the_hash_sets_and_strays_are_moved() {
        assert_eq!(SetKind::of(&p("192.0.2.7")), SetKind::Addr4);
        assert_eq!(SetKind::of(&p("192.0.2.0/31")), SetKind::Net4);
        assert_eq!(SetKind::of(&p("2001:db8::1")), SetKind::Addr6);
        assert_eq!(SetKind::of(&p("2001:db8::/127")), SetKind::Net6);
        assert!(SetKind::Net6.is_interval() && !SetKind::Addr4.is_interval());
        assert!(SetKind::Net4.is_v4() && !SetKind::Addr6.is_v4());

        let t0 = Instant::now();
        let mut e = Enforcer::new(rules(), false);
        let d = e.desired(
            t0,
            [
                (p("192.0.2.7"), t0 + 100 * S),
                (p("2001:db8::1"), t0 + 100 * S),
            ],
        );
        // A restart onto a table of the older layout: the /32 sits in the
        // interval set, with the right timeout; a stale /128 is in the
        // IPv6 interval set and nobody wants it. The /32 moves to the hash
        // set in the same batch (no gap); the /128 is deleted from where
        // it is; the IPv6 address goes in.
        let kernel = [
            Observed {
                prefix: p("192.0.2.7"),
                remaining: Some(100 * S),
                set: SetKind::Net4,
            },
            Observed {
                prefix: p("2001:db8::9"),
                remaining: Some(100 * S),
                set: SetKind::Net6,
            },
        ];
        let b = e.plan(t0, &d, Some(&kernel)).expect("move");
        let mut deletes = b.deletes.clone();
        deletes.sort();
        assert_eq!(
            deletes,
            [
                (p("192.0.2.7"), SetKind::Net4),
                (p("2001:db8::9"), SetKind::Net6)
            ]
        );
        assert_eq!(adds(&b), ["192.0.2.7/32", "2001:db8::1/128"]);
        assert!(b.adds.iter().all(|a| a.1 == 100 * S));
        assert_eq!(b.repaired_extra, 2);
        e.batch_ok(&b);
        assert_eq!(e.applied().len(), 2);
        assert_eq!(e.counters.elements_added, 2);
        assert_eq!(e.counters.elements_deleted, 2);
        // Both now read back where they belong: nothing to do.
        let kernel = [
            obs("192.0.2.7", Some(100 * S)),
            obs("2001:db8::1", Some(100 * S)),
        ];
        assert!(e.plan(t0, &d, Some(&kernel)).is_none());
    }

    #[test]
    fn batches_during_a_read_back_are_not_taken_for_drift() {
        let t0 = Instant::now();
        let mut e = Enforcer::new(rules(), false);
        let d = e.desired(
            t0,
            [
                (p("192.0.2.1"), t0 + 100 * S),
                (p("192.0.2.2"), t0 + 100 * S),
            ],
        );
        let b = e.plan(t0, &d, None).expect("load");
        e.batch_ok(&b);
        // A read starts; meanwhile .3 is blocked and .2 lifted, applied.
        e.readback_started();
        let d = e.desired(
            t0,
            [
                (p("192.0.2.1"), t0 + 100 * S),
                (p("192.0.2.3"), t0 + 100 * S),
            ],
        );
        let b = e.plan(t0, &d, None).expect("change");
        assert_eq!(
            (adds(&b), dels(&b)),
            (vec!["192.0.2.3/32".into()], vec!["192.0.2.2/32".into()])
        );
        e.batch_ok(&b);
        // The read saw the kernel before that batch (.2 there, .3 not)
        // and, independently, lost .1 (a hand delete): only .1 is a repair.
        let seen = [obs("192.0.2.2", Some(100 * S))];
        let b = e.plan(t0, &d, Some(&seen)).expect("repair .1");
        assert_eq!(adds(&b), ["192.0.2.1/32"]);
        assert!(b.deletes.is_empty());
        assert_eq!((b.repaired_missing, b.repaired_extra), (1, 0));
        e.batch_ok(&b);
        // Without a read under way, the same stale view would be drift.
        let b = e
            .plan(t0, &d, Some(&seen))
            .expect("stale read, no read-back marked");
        assert_eq!(b.repaired_extra, 1);
    }

    #[test]
    fn dry_run_counts_what_it_would_apply() {
        let t0 = Instant::now();
        let mut e = Enforcer::new(rules(), true);
        let d = e.desired(t0, [(p("192.0.2.0/24"), t0 + 10 * S)]);
        let b = e.plan(t0, &d, None).expect("would add");
        e.batch_ok(&b);
        assert_eq!(e.counters.dry_run_adds, 1);
        assert_eq!(e.counters.batches_ok, 0);
        assert!(e.plan(t0, &d, None).is_none(), "not repeated");
    }
}
