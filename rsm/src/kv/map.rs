//! The KV store's map: byte-string keys to `Bytes`, ordered, with a cheap
//! copy-on-write clone and point operations that cost about one cache miss.
//!
//! ```text
//!  CowMap ─┬─ values: CowHash  key → value   every get / put / incr / delete
//!          │                                  (hash.rs: ~1 cache miss)
//!          └─ order:  CowTree<()>  keys only  touched only when a key is
//!                                             created or deleted; scans and
//!                                             snapshots walk it in byte order
//!                                             and fetch each value from `values`
//! ```
//! Both halves clone by copying their top level (a snapshot view costs
//! microseconds) and copy a chunk / leaf on the first write after a capture.
//!
//! Invariant: `order` holds exactly the keys of `values`. Every observable
//! order (iteration, scans, snapshots) is the key order of `order`; the hash
//! index's layout depends on random seeds and is never iterated.

use bytes::Bytes;

use super::hash::{CowHash, Seeds, Upserted};
use super::key::Key;
use super::tree::CowTree;

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct CowMap {
    values: CowHash,
    order: CowTree<()>,
    /// Sum of key and value lengths.
    bytes: u64,
}

impl Default for CowMap {
    fn default() -> Self {
        CowMap {
            values: CowHash::new(Seeds::random()),
            order: CowTree::default(),
            bytes: 0,
        }
    }
}

impl std::fmt::Debug for CowMap {
    /// In key order (never the hash layout).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (Bytes::copy_from_slice(k), v)))
            .finish()
    }
}

impl CowMap {
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.values.get(key)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Inserts, returning the previous value.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: &[u8], value: Bytes) -> Option<Bytes> {
        self.upsert(key, |cur| (Some(value), cur.cloned()))
    }

    /// Looks `key` up once and lets `f` decide from its current value
    /// whether to write a new one (`Some`) or leave it (`None`); returns
    /// `f`'s second output.
    pub(crate) fn upsert<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(Option<&Bytes>) -> (Option<Bytes>, R),
    ) -> R {
        let (r, done) = self.values.upsert(key, f);
        match done {
            Upserted::Unchanged => {}
            Upserted::Replaced { old, new_len } => {
                self.bytes = self.bytes + new_len as u64 - old.len() as u64;
            }
            Upserted::Inserted { key, value_len } => {
                self.bytes += (key.as_slice().len() + value_len) as u64;
                let had = self.order.insert(key, ());
                debug_assert!(had.is_none(), "a new key was already in the order");
            }
        }
        debug_assert_eq!(self.values.len(), self.order.len());
        r
    }

    /// Removes, returning the value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let (k, v) = self.values.remove(key)?;
        self.bytes -= (k.as_slice().len() + v.len()) as u64;
        let had = self.order.remove(&k);
        debug_assert!(had.is_some(), "a removed key was not in the order");
        Some(v)
    }

    /// Pairs with `start <= key < end` in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Bytes)> + 'a {
        Lookahead::new(self.order.range(start, end).map(|(k, _)| k), &self.values)
    }

    /// Every pair in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Bytes)> + '_ {
        Lookahead::new(self.order.iter().map(|(k, _)| k), &self.values)
    }

    /// Builds a map from pairs in strictly increasing key order.
    pub(crate) fn from_sorted(pairs: Vec<(Key, Bytes)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let bytes = pairs
            .iter()
            .map(|(k, v)| (k.as_slice().len() + v.len()) as u64)
            .sum();
        let keys = pairs.iter().map(|(k, _)| (k.clone(), ())).collect();
        CowMap {
            values: CowHash::from_entries(pairs, Seeds::random()),
            order: CowTree::from_sorted(keys),
            bytes,
        }
    }

    /// Checks the invariants (O(n); tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.values.check_invariants();
        self.order.check_invariants();
        assert_eq!(self.values.len(), self.order.len());
        let bytes: u64 = self.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(bytes, self.bytes);
    }
}

/// Keys looked up per batch by [`Lookahead`].
const LOOKAHEAD_KEYS: usize = 16;

/// Pairs in key order: the values of keys from the order, looked up
/// [`LOOKAHEAD_KEYS`] at a time. Keys in order are scattered over the hash
/// index, so one lookup after another waits for one cache miss after
/// another; a batch first loads every key's home slot, then every value's
/// first byte, and the misses of a batch overlap (measured: snapshot save
/// and scans several times faster on maps larger than the cache).
struct Lookahead<'a, I> {
    keys: I,
    values: &'a CowHash,
    batch: std::collections::VecDeque<(&'a [u8], &'a Bytes)>,
    next_keys: Vec<&'a Key>,
}

impl<'a, I: Iterator<Item = &'a Key>> Lookahead<'a, I> {
    fn new(keys: I, values: &'a CowHash) -> Self {
        Lookahead {
            keys,
            values,
            batch: std::collections::VecDeque::new(),
            next_keys: Vec::new(),
        }
    }
}

impl<'a, I: Iterator<Item = &'a Key>> Iterator for Lookahead<'a, I> {
    type Item = (&'a [u8], &'a Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        if self.batch.is_empty() {
            self.next_keys
                .extend(self.keys.by_ref().take(LOOKAHEAD_KEYS));
            let touched: usize = self.next_keys.iter().map(|k| self.values.touch(k)).sum();
            std::hint::black_box(touched);
            let mut first_bytes = 0usize;
            for k in self.next_keys.drain(..) {
                let v = self
                    .values
                    .get_key(k)
                    .expect("every key of the order is in the index");
                first_bytes += usize::from(v.first().copied().unwrap_or(0));
                self.batch.push_back((k.as_slice(), v));
            }
            std::hint::black_box(first_bytes);
        }
        self.batch.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    fn b(k: &[u8]) -> Bytes {
        Bytes::copy_from_slice(k)
    }

    fn same(m: &CowMap, model: &Model<Bytes, Bytes>) -> Result<(), TestCaseError> {
        m.check_invariants();
        prop_assert_eq!(m.len(), model.len());
        prop_assert!(m.iter().eq(model.iter().map(|(k, v)| (&k[..], v))));
        let bytes: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        prop_assert_eq!(m.bytes(), bytes);
        Ok(())
    }

    fn range_model(model: &Model<Bytes, Bytes>, s: &[u8], e: Option<&[u8]>) -> Vec<(Bytes, Bytes)> {
        use std::ops::Bound;
        if e.is_some_and(|e| e <= s) {
            return Vec::new();
        }
        let end = e.map_or(Bound::Unbounded, |e| Bound::Excluded(b(e)));
        model
            .range((Bound::Included(b(s)), end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    proptest! {
        /// Every operation against a `BTreeMap`, with clones taken and
        /// written to in between (copy-on-write in both directions), range
        /// scans from random bounds, and a rebuild from sorted pairs.
        #[test]
        fn behaves_like_btreemap(
            ops in proptest::collection::vec((0u8..8, 0u16..500, any::<u8>()), 0..1500),
        ) {
            let mut m = CowMap::default();
            let mut model: Model<Bytes, Bytes> = Model::new();
            // (clone, its model): written to as well, not only read.
            let mut clones: Vec<(CowMap, Model<Bytes, Bytes>)> = Vec::new();
            for (i, (op, k, v)) in ops.iter().enumerate() {
                let key = if k % 7 == 0 {
                    // Long keys (heap-stored).
                    b(format!("{k:05}-a-key-longer-than-twenty-four-bytes").as_bytes())
                } else {
                    b(format!("{k:05}").as_bytes())
                };
                let val = b(&vec![*v; *v as usize % 5]);
                match op {
                    0 | 1 => prop_assert_eq!(m.insert(&key, val.clone()), model.insert(key.clone(), val)),
                    2 => {
                        // Write only if absent or different, through upsert.
                        let prev = m.upsert(&key, |cur| {
                            let write = cur.is_none_or(|c| *c != val);
                            (write.then(|| val.clone()), cur.cloned())
                        });
                        prop_assert_eq!(prev, model.insert(key.clone(), val));
                    }
                    3 | 4 => prop_assert_eq!(m.remove(&key), model.remove(&key)),
                    5 => {
                        let end = b(format!("{:05}", k + u16::from(*v)).as_bytes());
                        let end = (v % 4 != 0).then_some(&end[..]);
                        let got: Vec<_> = m.range(&key, end).map(|(k, v)| (b(k), v.clone())).collect();
                        prop_assert_eq!(got, range_model(&model, &key, end));
                    }
                    6 => clones.push((m.clone(), model.clone())),
                    _ => {
                        // Write to a clone: the original must not see it.
                        if let Some((c, cm)) = clones.last_mut() {
                            prop_assert_eq!(c.insert(&key, val.clone()), cm.insert(key.clone(), val));
                            if v % 2 == 0 {
                                let other = b(format!("{:05}", v).as_bytes());
                                prop_assert_eq!(c.remove(&other), cm.remove(&other));
                            }
                        }
                    }
                }
                prop_assert_eq!(m.get(&key), model.get(&key));
                if i % 300 == 0 {
                    same(&m, &model)?;
                }
            }
            same(&m, &model)?;
            for (c, cm) in &clones {
                same(c, cm)?;
            }
            let rebuilt = CowMap::from_sorted(m.iter().map(|(k, v)| (Key::new(k), v.clone())).collect());
            same(&rebuilt, &model)?;
        }
    }

    /// Enough keys for many chunks and branches: splits and merges in both
    /// halves, random ranges, clones that must not move.
    #[test]
    fn many_keys_against_a_model() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut m = CowMap::default();
        let mut model: Model<Bytes, Bytes> = Model::new();
        let mut clones = Vec::new();
        let key = |n: u64| {
            let mut k = 3u32.to_be_bytes().to_vec();
            k.extend_from_slice(&(n % 20_000).to_be_bytes());
            Bytes::from(k)
        };
        for phase in 0..3 {
            for step in 0..40_000u64 {
                let r = next();
                let k = key(r >> 8);
                let remove = match phase {
                    0 => r % 10 == 0,
                    1 => r % 2 == 0,
                    _ => r % 10 != 0,
                };
                if remove {
                    assert_eq!(m.remove(&k), model.remove(&k));
                } else {
                    let v = b(&r.to_le_bytes()[..(r % 9) as usize]);
                    assert_eq!(m.insert(&k, v.clone()), model.insert(k, v));
                }
                if step % 10_000 == 0 {
                    clones.push((m.clone(), model.clone()));
                }
            }
            same(&m, &model).unwrap();
            for _ in 0..200 {
                let (s, e) = (key(next()), key(next()));
                let got: Vec<_> = m
                    .range(&s, Some(&e))
                    .map(|(k, v)| (b(k), v.clone()))
                    .collect();
                assert_eq!(got, range_model(&model, &s, Some(&e)));
                assert_eq!(m.get(&s), model.get(&s));
            }
        }
        for (c, cm) in &clones {
            same(c, cm).unwrap();
        }
    }

    /// Two maps with the same contents but different hash seeds iterate
    /// identically (the hash layout is never observable).
    #[test]
    fn iteration_does_not_depend_on_seeds() {
        let mut a = CowMap::default();
        let mut c = CowMap {
            values: CowHash::new(Seeds::fixed(42)),
            order: CowTree::default(),
            bytes: 0,
        };
        for n in (0..5_000u32).rev() {
            let k = n.wrapping_mul(2_654_435_761).to_be_bytes();
            a.insert(&k, b(&k[..2]));
            c.insert(&k, b(&k[..2]));
        }
        assert!(a.iter().eq(c.iter()));
        assert_eq!(format!("{a:?}"), format!("{c:?}"));
        assert_eq!(a.bytes(), c.bytes());
    }
}
