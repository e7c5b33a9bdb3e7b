//! The protection-mode controller: per-resource thresholds with
//! hysteresis and a minimum hold. It decides this node's own claim from the
//! local rate and the cluster total; the cluster's effective mode is the
//! highest live claim of any node (see `state`). Plain code fed `now`.

use crate::hash::{Map, SeededState};
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
}

#[derive(Debug, Clone, Copy)]
struct Active {
    level: u8,
    since: Instant,
    last_sent: Instant,
}

/// Decides this node's mode claims.
#[derive(Debug)]
pub struct ModeController {
    default: Option<Rule>,
    rules: Map<u64, Rule>,
    active: Map<u64, Active>,
}

impl ModeController {
    pub fn new(rules: &ModeRules, hasher: SeededState) -> ModeController {
        let mut by_id = Map::with_hasher(hasher);
        by_id.extend(rules.resources.iter().cloned());
        ModeController {
            default: rules.default.clone(),
            rules: by_id,
            active: Map::with_hasher(hasher),
        }
    }

    fn rule(&self, resource: u64) -> Option<&Rule> {
        self.rules.get(&resource).or(self.default.as_ref())
    }

    /// Whether any rule could apply to `resource`.
    pub fn watches(&self, resource: u64) -> bool {
        self.rule(resource).is_some()
    }

    /// Re-decides `resource` after its load changed. Raising is immediate;
    /// lowering waits for the hysteresis threshold and the minimum hold.
    pub fn evaluate(
        &mut self,
        now: Instant,
        resource: u64,
        local: u64,
        total: u64,
    ) -> Option<Decision> {
        let rule = self.rule(resource)?;
        let (min_hold, ttl) = (rule.min_hold, rule.claim_ttl);
        let wanted = rule.wanted(local, total);
        let needed = rule.still_needed(local, total);
        let current = self.active.get(&resource).map_or(0, |a| a.level);
        let next = if wanted > current {
            wanted
        } else if needed < current {
            let since = self.active.get(&resource).map_or(now, |a| a.since);
            if now.saturating_duration_since(since) < min_hold {
                return None;
            }
            needed.max(wanted)
        } else {
            return None;
        };
        if next == 0 {
            self.active.remove(&resource);
        } else {
            self.active.insert(
                resource,
                Active {
                    level: next,
                    since: now,
                    last_sent: now,
                },
            );
        }
        Some(Decision {
            resource,
            level: next,
            ttl,
        })
    }

    /// Claims that must be re-broadcast so they do not expire while held
    /// (every third of their TTL), and the resources whose active claim
    /// must be re-evaluated because no load arrives any more.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Decision>) -> Vec<u64> {
        let mut recheck = Vec::new();
        for (&resource, a) in self.active.iter_mut() {
            let Some(rule) = self.rules.get(&resource).or(self.default.as_ref()) else {
                continue;
            };
            recheck.push(resource);
            if now.saturating_duration_since(a.last_sent) >= rule.claim_ttl / 3 {
                a.last_sent = now;
                out.push(Decision {
                    resource,
                    level: a.level,
                    ttl: rule.claim_ttl,
                });
            }
        }
        recheck
    }

    /// This node's active claim on `resource`.
    pub fn level(&self, resource: u64) -> u8 {
        self.active.get(&resource).map_or(0, |a| a.level)
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
        assert_eq!(c.evaluate(t0, 7, 100, 900), None);
        let d = c.evaluate(t0, 7, 450, 900).expect("local spike raises");
        assert_eq!((d.level, d.ttl), (1, ms(3_000)));
        let d = c
            .evaluate(t0, 7, 450, 6_000)
            .expect("total spike raises further");
        assert_eq!(d.level, 2);
        assert_eq!(
            c.evaluate(t0, 99, 1 << 40, 1 << 40),
            None,
            "no rule, no claim"
        );
        assert!(!c.watches(99));
    }

    #[test]
    fn hysteresis_and_minimum_hold() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 1_200).expect("raise");
        // Below total_up but above total_down: stays.
        assert_eq!(c.evaluate(t0 + ms(2_000), 7, 0, 900), None);
        // Below total_down, but the hold has not elapsed.
        assert_eq!(c.evaluate(t0 + ms(500), 7, 0, 100), None);
        assert_eq!(c.level(7), 1);
        let d = c.evaluate(t0 + ms(1_000), 7, 0, 100).expect("release");
        assert_eq!(d.level, 0);
        assert_eq!(c.level(7), 0);
        // From level 2 down to 1 when the total sits between the bands.
        c.evaluate(t0, 7, 0, 6_000).expect("raise to 2");
        let d = c.evaluate(t0 + ms(1_500), 7, 0, 3_000).expect("step down");
        assert_eq!(d.level, 1);
    }

    #[test]
    fn keepalive_every_third_of_ttl() {
        let mut c = controller();
        let t0 = Instant::now();
        c.evaluate(t0, 7, 0, 2_000).expect("raise");
        let mut out = Vec::new();
        assert_eq!(c.tick(t0 + ms(500), &mut out), vec![7]);
        assert!(out.is_empty());
        c.tick(t0 + ms(1_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].level, 1);
    }
}
