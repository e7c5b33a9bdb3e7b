//! The core's hash maps: keyed SipHash-1-3 (the algorithm std's
//! `RandomState` uses) with a key the caller chooses, instead of one drawn
//! from the OS behind the core's back.
//!
//! Two reasons. Flooding: resource ids and session keys come from hostile
//! traffic, so the key must be secret and per process; the binary draws it
//! from the OS at start (`NodeParams::hash_seed`). Determinism: iteration
//! order follows the key, so the simulator, which passes its own seed, gets
//! the same run, trace for trace, every time.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;

use siphasher::sip::SipHasher13;

/// Builds keyed SipHash-1-3 hashers. `Debug` does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    /// Hashers keyed with the 128 bits of `seed`.
    pub fn new(seed: u128) -> SeededState {
        SeededState {
            k0: seed as u64,
            k1: (seed >> 64) as u64,
        }
    }
}

impl fmt::Debug for SeededState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededState { .. }")
    }
}

impl BuildHasher for SeededState {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// The core's map type.
pub type Map<K, V> = HashMap<K, V, SeededState>;

/// Tables of a [`ShardedMap`]; a power of two.
const SHARDS: usize = 64;

/// A shard this small is never shrunk (not worth a rehash).
const SHRINK_FROM: usize = 64;

/// A map of `u64` keys (resources) split by the keyed hash into
/// [`SHARDS`] tables that each grow on their own.
///
/// Why not one table sized for the bound up front: a table sized for a
/// million resources spreads a few thousand live ones over tens of MB, so
/// every lookup misses the cache and the TLB (a fifth of a receiving
/// node's CPU at 1,000 resources). Why not one table that grows: growing
/// rehashes every entry at once, a stall of tens of ms under the very
/// flood that fills it. Here memory follows the live entries (a shard
/// shrinks again when an eighth full) and a growth step rehashes one
/// shard, 1/64 of them. The key is hashed once; the
/// shard comes from bits the tables themselves do not use.
#[derive(Debug)]
pub struct ShardedMap<V> {
    shards: Box<[hashbrown::HashTable<(u64, V)>]>,
    state: SeededState,
    len: usize,
}

impl<V> ShardedMap<V> {
    pub fn new(state: SeededState) -> ShardedMap<V> {
        ShardedMap {
            shards: (0..SHARDS).map(|_| hashbrown::HashTable::new()).collect(),
            state,
            len: 0,
        }
    }

    /// The hash and the shard of `key`. hashbrown takes a bucket from the
    /// low bits and a tag from the top 7; the shard uses bits 50..56.
    fn locate(&self, key: u64) -> (u64, usize) {
        let h = self.state.hash_one(key);
        (h, (h >> 50) as usize & (SHARDS - 1))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &u64) -> Option<&V> {
        let (h, s) = self.locate(*key);
        self.shards[s].find(h, |e| e.0 == *key).map(|e| &e.1)
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let (h, s) = self.locate(*key);
        self.shards[s]
            .find_mut(h, |e| e.0 == *key)
            .map(|e| &mut e.1)
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` for a `key` the caller knows is absent.
    pub fn insert_new(&mut self, key: u64, value: V) -> &mut V {
        let (h, s) = self.locate(key);
        let state = self.state;
        self.len += 1;
        let e = self.shards[s].insert_unique(h, (key, value), |e| state.hash_one(e.0));
        &mut e.into_mut().1
    }

    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let (h, s) = self.locate(*key);
        let state = self.state;
        let t = &mut self.shards[s];
        let e = t.find_entry(h, |e| e.0 == *key).ok()?;
        self.len -= 1;
        let v = e.remove().0 .1;
        // Give back what a flood grew once it has gone: at an eighth of
        // its capacity a shard is rebuilt at twice what it holds (a
        // rehash of that little; growing back takes +75 %, no flapping).
        if t.capacity() > SHRINK_FROM && t.len() * 8 < t.capacity() {
            t.shrink_to(t.len() * 2, |e| state.hash_one(e.0));
        }
        Some(v)
    }

    /// Entries the shards have room for without growing (for tests and
    /// the memory an operator may ask about).
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|t| t.capacity()).sum()
    }

    /// Every key, shard by shard (an order the hash key decides).
    pub fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.shards.iter().flat_map(|t| t.iter().map(|e| &e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(seed: u128) -> Vec<u64> {
        let mut m: Map<u64, ()> = Map::with_hasher(SeededState::new(seed));
        m.extend((0..64).map(|k| (k, ())));
        m.keys().copied().collect()
    }

    #[test]
    fn sharded_map_keeps_what_a_map_keeps() {
        let mut m: ShardedMap<u64> = ShardedMap::new(SeededState::new(9));
        let mut want: Map<u64, u64> = Map::with_hasher(SeededState::new(1));
        for k in 0..5_000u64 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            m.insert_new(key, k);
            want.insert(key, k);
        }
        for k in (0..5_000u64).step_by(3) {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(m.remove(&key), want.remove(&key));
        }
        assert_eq!(m.remove(&7), None);
        *m.get_mut(&0x9e37_79b9_7f4a_7c15).expect("key 1") += 10;
        *want.get_mut(&0x9e37_79b9_7f4a_7c15).expect("key 1") += 10;
        assert_eq!(m.len(), want.len());
        let mut keys: Vec<u64> = m.keys().copied().collect();
        keys.sort_unstable();
        let mut expect: Vec<u64> = want.keys().copied().collect();
        expect.sort_unstable();
        assert_eq!(keys, expect);
        for k in &expect {
            assert_eq!(m.get(k), want.get(k));
            assert!(m.contains_key(k));
        }
        // Every shard is used: the shard bits are not constant.
        assert!(m.shards.iter().all(|t| !t.is_empty()));
    }

    #[test]
    fn sharded_map_gives_memory_back_after_a_flood() {
        let mut m: ShardedMap<u64> = ShardedMap::new(SeededState::new(3));
        for k in 0..200_000u64 {
            m.insert_new(k, k);
        }
        let flooded = m.capacity();
        assert!(flooded >= 200_000);
        for k in 1_000..200_000u64 {
            assert_eq!(m.remove(&k), Some(k));
        }
        assert_eq!(m.len(), 1_000);
        assert!(
            m.capacity() * 20 < flooded,
            "{} of {flooded} kept",
            m.capacity()
        );
        for k in 0..1_000u64 {
            assert_eq!(m.get(&k), Some(&k));
        }
    }

    #[test]
    fn the_seed_alone_decides_the_order() {
        assert_eq!(order(7), order(7));
        assert_ne!(order(7), order(8));
        let s = SeededState::new(1 << 64 | 2);
        assert_ne!(s.hash_one(5u64), SeededState::new(2).hash_one(5u64));
        assert_eq!(format!("{s:?}"), "SeededState { .. }");
    }
}
