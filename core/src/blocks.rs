//! The blocks a cluster decided: prefixes to drop in the kernel until
//! their expiry. A bounded table fed `now`; the node applies `BLOCK`,
//! `UNBLOCK` and `REMOTE_BLOCK` records into it and the enforcer
//! (`enforce`) turns its live entries into kernel set elements.
//!
//! Policy when full: a new prefix is refused and counted; live blocks are
//! never evicted to make room, because evicting one would silently let an
//! attacker back in. Extending or lifting an existing block always works.

use std::time::{Duration, Instant};

use shoal_wire::Prefix;

use crate::hash::{Map, SeededState};

/// How the node treats block records.
#[derive(Debug, Clone)]
pub struct BlockRules {
    /// Most prefixes held at once.
    pub capacity: usize,
    /// Take blocks in a cluster without `[auth]`: anyone on the segment
    /// could then make every node drop any address.
    pub accept_unsigned: bool,
    /// Longest TTL a block may ask for.
    pub max_ttl: Duration,
}

impl Default for BlockRules {
    fn default() -> BlockRules {
        BlockRules {
            capacity: 65_536,
            accept_unsigned: false,
            max_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One live block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub expires: Instant,
    /// Who asked: a node of this cluster, or `cluster << 32 | node` for a
    /// block relayed from another cluster (node 0 there).
    pub origin: u64,
    /// The record's reason field (see [`shoal_wire::reason_from_field`]).
    pub reason: u64,
}

/// Counters of the table; they only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// New prefixes taken.
    pub added: u64,
    /// Existing prefixes whose expiry moved later.
    pub extended: u64,
    /// Lifted by an unblock.
    pub lifted: u64,
    /// Reached their expiry.
    pub expired: u64,
    /// New prefixes refused: the table was full.
    pub refused_full: u64,
    /// Block records refused: the cluster is unsigned and
    /// `accept_unsigned` is off.
    pub refused_unsigned: u64,
    /// Block records whose fields are not a valid prefix, or TTL 0.
    pub refused_bad: u64,
}

/// What applying a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    Added,
    Extended,
    /// Already held at least as long.
    Unchanged,
    Lifted,
    /// An unblock for a prefix not held.
    NotHeld,
    Full,
    /// Not taken: unsigned cluster, or no lifetime.
    Refused,
}

impl BlockOutcome {
    /// Whether the block is now held.
    pub fn held(self) -> bool {
        matches!(
            self,
            BlockOutcome::Added | BlockOutcome::Extended | BlockOutcome::Unchanged
        )
    }
}

/// The table.
#[derive(Debug)]
pub struct BlockTable {
    capacity: usize,
    entries: Map<Prefix, Block>,
    /// Grows on every change of the live set, so a driver can tell when
    /// to flush the enforcer without comparing sets.
    generation: u64,
    pub counters: BlockCounters,
}

impl BlockTable {
    pub fn new(capacity: usize, hasher: SeededState) -> BlockTable {
        BlockTable {
            capacity,
            entries: Map::with_hasher(hasher),
            generation: 0,
            counters: BlockCounters::default(),
        }
    }

    /// Blocks `p` until `now + ttl` (or later, if already held longer:
    /// blocks from several origins add up to the longest).
    pub fn block(
        &mut self,
        now: Instant,
        p: Prefix,
        ttl: Duration,
        origin: u64,
        reason: u64,
    ) -> BlockOutcome {
        let expires = now + ttl;
        if let Some(b) = self.entries.get_mut(&p) {
            if b.expires > now {
                if expires <= b.expires {
                    return BlockOutcome::Unchanged;
                }
                *b = Block {
                    expires,
                    origin,
                    reason,
                };
                self.counters.extended += 1;
                self.generation += 1;
                return BlockOutcome::Extended;
            }
            // Expired but not purged yet: a fresh block.
            self.entries.remove(&p);
            self.counters.expired += 1;
        }
        if self.entries.len() >= self.capacity {
            self.purge(now);
            if self.entries.len() >= self.capacity {
                self.counters.refused_full += 1;
                return BlockOutcome::Full;
            }
        }
        self.entries.insert(
            p,
            Block {
                expires,
                origin,
                reason,
            },
        );
        self.counters.added += 1;
        self.generation += 1;
        BlockOutcome::Added
    }

    /// Lifts the block on exactly `p` (not on prefixes inside it).
    pub fn unblock(&mut self, p: &Prefix) -> BlockOutcome {
        match self.entries.remove(p) {
            Some(_) => {
                self.counters.lifted += 1;
                self.generation += 1;
                BlockOutcome::Lifted
            }
            None => BlockOutcome::NotHeld,
        }
    }

    /// The live block on exactly `p`.
    pub fn get(&self, now: Instant, p: &Prefix) -> Option<Block> {
        self.entries.get(p).filter(|b| b.expires > now).copied()
    }

    /// Every live block, in no particular order.
    pub fn live(&self, now: Instant) -> impl Iterator<Item = (Prefix, Block)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, b)| b.expires > now)
            .map(|(p, b)| (*p, *b))
    }

    /// Drops expired entries; returns how many.
    pub fn purge(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, b| b.expires > now);
        let n = before - self.entries.len();
        if n > 0 {
            self.counters.expired += n as u64;
            self.generation += 1;
        }
        n
    }

    /// Entries held (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the bound (held entries stay even above a smaller one; new
    /// prefixes are refused until it is respected).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs a base instant
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    #[test]
    fn longest_wins_unblock_lifts_and_expiry_purges() {
        let t0 = Instant::now();
        let mut t = BlockTable::new(4, SeededState::new(1));
        let a = p("192.0.2.0/24");
        let s = Duration::from_secs(1);
        assert_eq!(t.block(t0, a, 10 * s, 1, 0), BlockOutcome::Added);
        assert_eq!(t.block(t0, a, 5 * s, 2, 0), BlockOutcome::Unchanged);
        assert_eq!(t.block(t0, a, 20 * s, 2, 0), BlockOutcome::Extended);
        assert_eq!(t.get(t0, &a).map(|b| b.origin), Some(2));
        assert_eq!(t.unblock(&a), BlockOutcome::Lifted);
        assert_eq!(t.unblock(&a), BlockOutcome::NotHeld);
        t.block(t0, a, s, 1, 0);
        assert_eq!(t.live(t0 + 2 * s).count(), 0);
        assert_eq!(t.purge(t0 + 2 * s), 1);
        assert_eq!(t.counters.expired, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_refuses_new_prefixes_but_keeps_live_ones() {
        let t0 = Instant::now();
        let mut t = BlockTable::new(2, SeededState::new(1));
        let s = Duration::from_secs(1);
        t.block(t0, p("10.0.0.1"), 10 * s, 1, 0);
        t.block(t0, p("10.0.0.2"), s, 1, 0);
        assert_eq!(t.block(t0, p("10.0.0.3"), s, 1, 0), BlockOutcome::Full);
        assert_eq!(t.counters.refused_full, 1);
        // Extending a held prefix still works when full.
        assert_eq!(
            t.block(t0, p("10.0.0.1"), 20 * s, 1, 0),
            BlockOutcome::Extended
        );
        // Once one expires, a new prefix takes its place.
        assert_eq!(
            t.block(t0 + 2 * s, p("10.0.0.3"), s, 1, 0),
            BlockOutcome::Added
        );
        assert_eq!(t.len(), 2);
    }
}
