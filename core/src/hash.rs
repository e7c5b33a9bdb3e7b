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

#[cfg(test)]
mod tests {
    use super::*;

    fn order(seed: u128) -> Vec<u64> {
        let mut m: Map<u64, ()> = Map::with_hasher(SeededState::new(seed));
        m.extend((0..64).map(|k| (k, ())));
        m.keys().copied().collect()
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
