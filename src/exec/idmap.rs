//! A hash table from the engine's own 64-bit numbers (instance ids, index hashes) to a value,
//! with each key stored beside its value.
//!
//! Why not the standard table: it keeps one control byte per entry in an array apart from the
//! entries, so a lookup in a large table touches two cache lines (and, without huge pages, two
//! pages) where this one touches one. At a million waiting instances every line is a cache and
//! TLB miss, and a `correlate` makes three lookups (the correlation index, the instance table,
//! the key index): the control bytes were a sixth of its time.
//!
//! Open addressing with linear probing, at most three quarters full, removal by backward shift
//! (no tombstones: a table that sees many inserts and removals keeps short probes). Keys are
//! spread by one folded multiplication, as [`super::IdHasher`]: they are the engine's numbers
//! and hashes, not input an attacker picks. An entry is a key and an `Option<V>`; a value type
//! with a niche (an `Arc`, a `NonZeroU64`) makes it 16 bytes.

/// A map from `u64` keys to `V` (see the module docs).
pub(crate) struct IdMap<V> {
    /// A power of two in length (or empty); an entry whose value is `None` is free.
    entries: Box<[(u64, Option<V>)]>,
    len: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> IdMap<V> {
        IdMap {
            entries: Box::default(),
            len: 0,
        }
    }
}

/// Spreads a key over the table's bits (the low ones index it).
fn spread(key: u64) -> u64 {
    let product = u128::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (product as u64) ^ ((product >> 64) as u64)
}

impl<V> IdMap<V> {
    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.entries.len().wrapping_sub(1)
    }

    fn home(&self, key: u64) -> usize {
        spread(key) as usize & self.mask()
    }

    /// Where `key` is: probing from its home ends at the key or at a free entry, and there is
    /// always a free entry (the table is at most three quarters full).
    fn find(&self, key: u64) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            match &self.entries[i] {
                (_, None) => return None,
                (k, Some(_)) if *k == key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Reads the entry where a probe for `key` starts and gives its key: a caller about to
    /// look up many keys reads them all first, so that their cache misses overlap (a load
    /// whose result nothing waits for does not stall the ones after it).
    pub(crate) fn touch(&self, key: u64) -> u64 {
        if self.len == 0 {
            return 0;
        }
        self.entries[self.home(key)].0
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.find(key).and_then(|i| self.entries[i].1.as_ref())
    }

    /// The value under `key`, to change in place.
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let i = self.find(key)?;
        self.entries[i].1.as_mut()
    }

    /// Whether it holds `key`.
    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.find(key).is_some()
    }

    /// Puts `value` under `key`; gives the value it replaced.
    pub(crate) fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if let Some(i) = self.find(key) {
            return self.entries[i].1.replace(value);
        }
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        self.place(key, value);
        self.len += 1;
        None
    }

    /// Puts a key known to be absent in the first free entry from its home.
    fn place(&mut self, key: u64, value: V) {
        let mask = self.mask();
        let mut i = self.home(key);
        while self.entries[i].1.is_some() {
            i = (i + 1) & mask;
        }
        self.entries[i] = (key, Some(value));
    }

    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(8);
        let old = std::mem::replace(
            &mut self.entries,
            (0..capacity).map(|_| (0, None)).collect(),
        );
        for (key, value) in old.into_vec() {
            if let Some(value) = value {
                self.place(key, value);
            }
        }
    }

    /// Takes the value under `key` out. The entries after it that probed past it move back
    /// into the hole, so that every key stays reachable from its home without tombstones.
    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        let mut hole = self.find(key)?;
        let out = self.entries[hole].1.take();
        self.len -= 1;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let home = match &self.entries[j] {
                (_, None) => break,
                (k, Some(_)) => self.home(*k),
            };
            // The entry at `j` may fill the hole when the hole lies between its home and `j`
            // (cyclically): it is no further from its home there.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.entries.swap(hole, j);
                hole = j;
            }
        }
        out
    }

    /// Every key and its value, in the table's order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }

    /// Every key, in the table's order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every value, in the table's order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::IdMap;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys (and some that collide after spreading into small tables), so
        // that removals hit and probes run long; and the extremes of the range.
        let key = prop_oneof![0u64..64, Just(0), Just(u64::MAX), any::<u64>()];
        prop_oneof![
            (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            key.prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The table answers as the standard map after any sequence of inserts and removals.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut map = IdMap::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(map.remove(k), model.remove(&k)),
                }
                prop_assert_eq!(map.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(map.get(*k), Some(v));
            }
            let mut listed: Vec<(u64, u32)> = map.iter().map(|(k, v)| (k, *v)).collect();
            let mut expected: Vec<(u64, u32)> = model.into_iter().collect();
            listed.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn an_entry_is_sixteen_bytes_with_a_niche() {
        assert_eq!(
            std::mem::size_of::<(u64, Option<std::num::NonZeroU64>)>(),
            16
        );
        assert_eq!(std::mem::size_of::<(u64, Option<std::sync::Arc<u8>>)>(), 16);
    }

    #[test]
    fn many_keys_stay_reachable_through_growth_and_removal() {
        let mut map = IdMap::default();
        for k in 1..=10_000u64 {
            map.insert(k, k * 2);
        }
        for k in (1..=10_000u64).step_by(2) {
            assert_eq!(map.remove(k), Some(k * 2));
        }
        assert_eq!(map.len(), 5_000);
        for k in 1..=10_000u64 {
            assert_eq!(map.get(k).copied(), (k % 2 == 0).then_some(k * 2));
        }
        assert!(map.get_mut(2).is_some_and(|v| {
            *v = 7;
            true
        }));
        assert_eq!(map.get(2), Some(&7));
        assert!(!map.contains_key(1) && map.contains_key(4));
    }
}
