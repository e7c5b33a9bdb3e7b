//! The protection-mode controller: per-resource thresholds with
//! hysteresis and a minimum hold. It decides this node's own claim from the
//! local rate and the cluster total; the cluster's effective mode is the
//! highest live claim of any node (see `state`). Plain code fed `now`.
//!
//! Driven by deadlines, not by a scan: a resource is decided again only
//! when its load changes ([`ModeController::evaluate`]) or when one of its
//! timers fires ([`ModeController::due`] then [`ModeController::fire`]):
//! the keep-alive (a third of the claim's TTL after it was last sent), the
//! end of the minimum hold, or the moment a gauge behind the total turns
//! stale. Timers live in one min-heap with lazy deletion, so the work per
//! timer is O(log n) whatever the number of active claims. Changes of this
//! node's claims are bounded per second; the excess is counted and tried
//! again later, so a flood of distinct resources cannot turn protection
//! into a flood of claims.

use crate::hash::{Map, SeededState};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// One level of a rule: where it switches on and where it may switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub level: u8,
    /// Cluster total (requests/s) at which this level switches on.
    pub total_up: u64,
    /// Cluster total below which it may switch off again.
    pub total_down: u64,
    /// This node's own rate at which it switches on; `None`: never alone.
    pub local_up: Option<u64>,
    pub local_down: Option<u64>,
}

/// A rule: its levels, the minimum hold and the claim TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub min_hold: Duration,
    pub claim_ttl: Duration,
    pub levels: Vec<Level>,
}

/// Every rule of a node: one for all resources, and overrides by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeRules {
    pub default: Option<Rule>,
    pub resources: Vec<(u64, Rule)>,
    /// Most changes of this node's claims (raise, lower, release) per
    /// second; 0: unbounded. Keep-alives of held claims are not changes.
    pub max_changes_per_s: u32,
}

impl Rule {
    /// The highest level whose switch-on condition holds.
    fn wanted(&self, local: u64, total: u64) -> u8 {
        self.levels
            .iter()
            .filter(|l| total >= l.total_up || l.local_up.is_some_and(|u| local >= u))
            .map(|l| l.level)
            .max()
            .unwrap_or(0)
    }

    /// The highest level whose switch-off condition does not hold yet.
    fn still_needed(&self, local: u64, total: u64) -> u8 {
        self.levels
            .iter()
            .filter(|l| {
                total >= l.total_down
                    || match (l.local_up, l.local_down) {
                        (Some(_), Some(d)) => local >= d,
                        (Some(u), None) => local >= u,
                        _ => false,
                    }
            })
            .map(|l| l.level)
            .max()
            .unwrap_or(0)
    }
}

/// A claim to broadcast: this node's level for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub resource: u64,
    pub level: u8,
    pub ttl: Duration,
    /// A change of this node's claim (not a keep-alive of a held one).
    pub change: bool,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    level: u8,
    since: Instant,
    last_sent: Instant,
    /// When this claim must be looked at again.
    due: Instant,
    /// The time of this resource's live heap entry (at most `due`), if
    /// any; heap entries at any other time are dead and skipped.
    queued: Option<Instant>,
}

/// Decides this node's mode claims.
#[derive(Debug)]
pub struct ModeController {
    default: Option<Rule>,
    rules: Map<u64, Rule>,
    active: Map<u64, Active>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    max_changes_per_s: u32,
    window_start: Option<Instant>,
    changes_in_window: u32,
    /// Changes refused by the per-second bound (tried again later).
    pub changes_deferred: u64,
}

const SECOND: Duration = Duration::from_secs(1);

impl ModeController {
    pub fn new(rules: &ModeRules, hasher: SeededState) -> ModeController {
        let mut by_id = Map::with_hasher(hasher);
        by_id.extend(rules.resources.iter().cloned());
        ModeController {
            default: rules.default.clone(),
            rules: by_id,
            active: Map::with_hasher(hasher),
            timers: BinaryHeap::new(),
            max_changes_per_s: rules.max_changes_per_s,
            window_start: None,
            changes_in_window: 0,
            changes_deferred: 0,
        }
    }

    fn rule(&self, resource: u64) -> Option<&Rule> {
        self.rules.get(&resource).or(self.default.as_ref())
    }

    /// Whether any rule could apply to `resource`.
    pub fn watches(&self, resource: u64) -> bool {
        self.rule(resource).is_some()
    }

    /// Takes one change from this second's budget, or counts a refusal.
    fn take_change(&mut self, now: Instant) -> bool {
        if self.max_changes_per_s == 0 {
            return true;
        }
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < SECOND => {}
            _ => {
                self.window_start = Some(now);
                self.changes_in_window = 0;
            }
        }
        if self.changes_in_window < self.max_changes_per_s {
            self.changes_in_window += 1;
            true
        } else {
            self.changes_deferred += 1;
            false
        }
    }

    /// When the change budget refills.
    fn budget_back(&self, now: Instant) -> Instant {
        self.window_start.map_or(now, |s| s + SECOND)
    }

    /// Re-decides `resource` after its load changed. Raising is immediate;
    /// lowering waits for the hysteresis threshold and the minimum hold.
    /// `stale_at` is when the view next changes by itself (a gauge behind
    /// it turns stale), `None` when it cannot.
    pub fn evaluate(
        &mut self,
        now: Instant,
        resource: u64,
        local: u64,
        total: u64,
        stale_at: Option<Instant>,
    ) -> Option<Decision> {
        let rule = self.rule(resource)?;
        let (min_hold, ttl) = (rule.min_hold, rule.claim_ttl);
        let wanted = rule.wanted(local, total);
        let needed = rule.still_needed(local, total);
        let held = self.active.get(&resource).copied();
        let current = held.map_or(0, |a| a.level);
        let next = if wanted > current {
            Some(wanted)
        } else if needed < current {
            let since = held.map_or(now, |a| a.since);
            (now.saturating_duration_since(since) >= min_hold).then_some(needed.max(wanted))
        } else {
            None
        };
        let mut decision = None;
        match next {
            Some(level) if self.take_change(now) => {
                decision = Some(Decision {
                    resource,
                    level,
                    ttl,
                    change: true,
                });
                if level == 0 {
                    // Its heap entries die with it.
                    self.active.remove(&resource);
                    return decision;
                }
                let queued = held.and_then(|a| a.queued);
                self.active.insert(
                    resource,
                    Active {
                        level,
                        since: now,
                        last_sent: now,
                        due: now,
                        queued,
                    },
                );
            }
            Some(_) if held.is_some() => {
                // Over the budget: look again when it refills.
                self.schedule(resource, Some(self.budget_back(now)), now, min_hold, ttl);
                return None;
            }
            // A resource with no claim is tried again on its next load.
            Some(_) => return None,
            None if held.is_none() => return None,
            None => {}
        }
        self.schedule(resource, stale_at, now, min_hold, ttl);
        decision
    }

    /// Sets the next deadline of an active claim: its keep-alive, or the
    /// first moment a lowering could be decided (the view changes by
    /// itself and the minimum hold is over).
    fn schedule(
        &mut self,
        resource: u64,
        stale_at: Option<Instant>,
        now: Instant,
        min_hold: Duration,
        ttl: Duration,
    ) {
        let Some(a) = self.active.get_mut(&resource) else {
            return;
        };
        let keepalive = a.last_sent + ttl / 3;
        let hold_end = a.since + min_hold;
        let recheck = match stale_at {
            Some(t) => Some(t.max(hold_end)),
            None if hold_end > now => Some(hold_end),
            None => None,
        };
        let due = recheck.map_or(keepalive, |r| r.min(keepalive)).max(now);
        a.due = due;
        // A new heap entry only when the live one would fire too late:
        // pushing on every load would grow the heap by one per record.
        let earlier = match a.queued {
            Some(q) => due < q,
            None => true,
        };
        if earlier {
            a.queued = Some(due);
            self.timers.push(Reverse((due, resource)));
        }
    }

    /// When the next timer fires (possibly a dead entry: firing it is a
    /// no-op), or `None` when no claim is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops up to `max` resources whose timer is due at `now` into `out`;
    /// each must then be given to [`fire`](Self::fire) with its view.
    pub fn due(&mut self, now: Instant, max: usize, out: &mut Vec<u64>) {
        while out.len() < max {
            let Some(&Reverse((t, resource))) = self.timers.peek() else {
                return;
            };
            if t > now {
                return;
            }
            self.timers.pop();
            let Some(a) = self.active.get_mut(&resource) else {
                continue;
            };
            if a.queued != Some(t) {
                continue;
            }
            if a.due > now {
                // Moved later since it was queued: queue it again.
                a.queued = Some(a.due);
                self.timers.push(Reverse((a.due, resource)));
                continue;
            }
            a.queued = None;
            out.push(resource);
        }
    }

    /// Runs a due resource's timer: re-decides it from its current view,
    /// and re-sends a held claim whose keep-alive is due.
    pub fn fire(
        &mut self,
        now: Instant,
        resource: u64,
        local: u64,
        total: u64,
        stale_at: Option<Instant>,
    ) -> Option<Decision> {
        let ttl = self.rule(resource)?.claim_ttl;
        let a = self.active.get_mut(&resource)?;
        // The keep-alive is stamped first so that the deadline set by
        // `evaluate` already counts from it.
        let mut keepalive = None;
        if now.saturating_duration_since(a.last_sent) >= ttl / 3 {
            a.last_sent = now;
            keepalive = Some(Decision {
                resource,
                level: a.level,
                ttl,
                change: false,
            });
        }
        // A change is itself sent, and supersedes the keep-alive.
        self.evaluate(now, resource, local, total, stale_at)
            .or(keepalive)
    }

    /// This node's active claim on `resource`.
    pub fn level(&self, resource: u64) -> u8 {
        self.active.get(&resource).map_or(0, |a| a.level)
    }

    /// Claims this node holds.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Timer entries, live and dead (bounded by a small multiple of
    /// [`active`](Self::active)).
    pub fn timers(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    fn controller() -> ModeController {
        let rule = Rule {
            min_hold: ms(1_000),
            claim_ttl: ms(3_000),
            levels: vec![
                Level {
                    level: 1,
                    total_up: 1_000,
                    total_down: 800,
                    local_up: Some(400),
                    local_down: Some(300),
                },
                Level {
                    level: 2,
                    total_up: 5_000,
                    total_down: 4_000,
                    local_up: None,
                    local_down: None,
                },
            ],
        };
        ModeController::new(
            &ModeRules {
                default: None,
                resources: vec![(7, rule)],
                max_changes_per_s: 0,
            },
            SeededState::new(1),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn raises_at_once_on_total_or_local_spike() {
        let mut c = controller();
        let t0 = Instant::now();
        assert_eq!(c.evaluate(t0, 7, 100, 900, None), None);
        let d = c
            .evaluate(t0, 7, 450, 900, None)
            .expect("local spike raises");
        assert_eq!((d.level, d.ttl), (1, ms(3_000)));
        let d = c
            .evaluate(t0, 7, 450, 6_000, None)
            .expect("total spike raises further");
        assert_eq!(d.level, 2);
        assert_eq!(
            c.evaluate(t0, 99, 1 << 40, 1 << 40, None),
            None,
            "no rule, no claim"
        );
        assert!(!c.watches(99));
    }

    #[test]
    fn hysteresis_and_minimum_hold() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 1_200, None).expect("raise");
        // Below total_up but above total_down: stays.
        assert_eq!(c.evaluate(t0 + ms(2_000), 7, 0, 900, None), None);
        // Below total_down, but the hold has not elapsed.
        assert_eq!(c.evaluate(t0 + ms(500), 7, 0, 100, None), None);
        assert_eq!(c.level(7), 1);
        let d = c
            .evaluate(t0 + ms(1_000), 7, 0, 100, None)
            .expect("release");
        assert_eq!(d.level, 0);
        assert_eq!(c.level(7), 0);
        // From level 2 down to 1 when the total sits between the bands.
        c.evaluate(t0, 7, 0, 6_000, None).expect("raise to 2");
        let d = c
            .evaluate(t0 + ms(1_500), 7, 0, 3_000, None)
            .expect("step down");
        assert_eq!(d.level, 1);
    }

    /// Runs every timer due at `now`, like the node does.
    fn fire_due(c: &mut ModeController, now: Instant, view: (u64, u64)) -> Vec<Decision> {
        let mut due = Vec::new();
        c.due(now, usize::MAX, &mut due);
        due.into_iter()
            .filter_map(|r| c.fire(now, r, view.0, view.1, None))
            .collect()
    }

    #[test]
    fn keepalive_every_third_of_ttl() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 2_000, None).expect("raise");
        // Nothing is due before the keep-alive (which is also the end of
        // the hold): no timer runs at 500 ms.
        assert_eq!(c.next_deadline(), Some(t0 + ms(1_000)));
        let mut due = Vec::new();
        c.due(t0 + ms(999), usize::MAX, &mut due);
        assert!(due.is_empty());
        let out = fire_due(&mut c, t0 + ms(1_000), (0, 2_000));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].level, out[0].change), (1, false));
        assert_eq!(c.next_deadline(), Some(t0 + ms(2_000)));
        assert!(fire_due(&mut c, t0 + ms(1_000), (0, 2_000)).is_empty());
    }

    #[test]
    fn keepalive_fires_at_its_deadline_and_not_before() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 2_000, None).expect("raise");
        let mut sent = Vec::new();
        // Walk the deadlines for 3.5 s with the load held high.
        let mut now = t0;
        while let Some(t) = c.next_deadline() {
            if t > t0 + ms(3_500) {
                break;
            }
            now = now.max(t);
            for d in fire_due(&mut c, now, (0, 2_000)) {
                assert!(!d.change);
                assert_eq!(d.level, 1);
                sent.push(now - t0);
            }
        }
        assert_eq!(sent, vec![ms(1_000), ms(2_000), ms(3_000)]);
    }

    #[test]
    fn a_stale_gauge_releases_the_claim_at_its_deadline() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 2_000, Some(t0 + ms(300)))
            .expect("raise");
        // The gauge goes stale at 300 ms, but the hold runs to 1 s.
        assert_eq!(c.next_deadline(), Some(t0 + ms(1_000)));
        let out = fire_due(&mut c, t0 + ms(1_000), (0, 0));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].level, out[0].change), (0, true));
        assert_eq!(c.active(), 0);
        // Its remaining heap entries are dead: firing them does nothing.
        assert!(fire_due(&mut c, t0 + ms(10_000), (0, 0)).is_empty());
        assert_eq!(c.timers(), 0);
    }

    #[test]
    fn a_later_stale_time_defers_the_recheck() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 2_000, Some(t0 + ms(1_200)))
            .expect("raise");
        assert_eq!(c.next_deadline(), Some(t0 + ms(1_000)), "keep-alive first");
        // A fresh load at 1.1 s moves the staleness to 1.6 s: no new entry.
        assert_eq!(
            c.evaluate(t0 + ms(1_100), 7, 0, 2_000, Some(t0 + ms(1_600))),
            None
        );
        assert_eq!(c.timers(), 1);
    }

    #[test]
    fn changes_are_bounded_per_second_and_counted() {
        let rule = controller().rules[&7].clone();
        let mut c = ModeController::new(
            &ModeRules {
                default: Some(rule),
                resources: vec![],
                max_changes_per_s: 3,
            },
            SeededState::new(1),
        );
        let t0 = Instant::now();
        let raised = (0..10)
            .filter(|r| c.evaluate(t0, *r, 0, 2_000, None).is_some())
            .count();
        assert_eq!(raised, 3);
        assert_eq!(c.changes_deferred, 7);
        assert_eq!(c.active(), 3);
        // The next second has a new budget.
        let raised = (3..10)
            .filter(|r| c.evaluate(t0 + ms(1_000), *r, 0, 2_000, None).is_some())
            .count();
        assert_eq!(raised, 3);
        // A held claim's release over the budget is retried when it refills.
        let t2 = t0 + ms(2_000);
        for r in 0..3 {
            assert!(c.evaluate(t2, r, 0, 0, None).is_some(), "release {r}");
        }
        assert_eq!(c.evaluate(t2, 3, 0, 0, None), None, "over the budget");
        assert_eq!(c.level(3), 1);
        let out = fire_due(&mut c, t0 + ms(3_000), (0, 0));
        assert!(out.iter().any(|d| d.resource == 3 && d.level == 0));
    }

    #[test]
    fn timers_stay_bounded_under_many_loads() {
        let rule = controller().rules[&7].clone();
        let mut c = ModeController::new(
            &ModeRules {
                default: Some(rule),
                resources: vec![],
                max_changes_per_s: 0,
            },
            SeededState::new(1),
        );
        let t0 = Instant::now();
        for r in 0..1_000 {
            c.evaluate(t0, r, 0, 2_000, Some(t0 + ms(500)))
                .expect("raise");
        }
        // Every resource gets a fresh load every millisecond for a second.
        for step in 1..1_000u64 {
            let now = t0 + ms(step);
            for r in (0..1_000).step_by(97) {
                c.evaluate(now, r, 0, 2_000, Some(now + ms(500)));
            }
            fire_due(&mut c, now, (0, 2_000));
        }
        assert_eq!(c.active(), 1_000);
        assert!(c.timers() <= 2 * c.active(), "{} timers", c.timers());
    }
}
