//! An ordered map of byte-string keys to `Bytes` whose clone is cheap: a copy-on-write
//! B-tree of leaves.
//!
//! ```text
//!  leaves: BTreeMap<lower bound Key, Rc<Leaf>>   (Key: inline up to 24 bytes)
//!     "a" ─► Rc[ (a,1) (ab,2) ... ≤ 64 sorted pairs ]
//!     "m" ─► Rc[ (m,5) (mo,6) ... ]       ◄── shared with a snapshot view
//!     "t" ─► Rc[ ... ]
//! ```
//! Cloning copies only the outer index (one `Rc` per leaf, ~1/48 of the
//! entries); a write to a leaf that a clone still shares copies that one leaf
//! (≤ 64 reference-count bumps). So a snapshot view costs O(n / 48) at
//! capture and at most one leaf copy per later write.
//!
//! Invariants: every leaf is non-empty and sorted; every key of a leaf is
//! ≥ its index key and < the next leaf's index key.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use bytes::Bytes;

use super::key::Key;

/// Most pairs a leaf holds before it splits.
const LEAF_MAX: usize = 64;
/// A leaf below this merges with its successor when they fit in one.
const LEAF_MIN: usize = LEAF_MAX / 4;

type Leaf = Vec<(Key, Bytes)>;

/// See the module documentation.
#[derive(Clone, Default, Debug)]
pub(crate) struct CowMap {
    leaves: BTreeMap<Key, Rc<Leaf>>,
    len: usize,
    /// Sum of key and value lengths.
    bytes: u64,
}

impl CowMap {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The leaf that holds or would hold `key`, with its index key.
    fn leaf_of(&self, key: &Key) -> Option<(&Key, &Rc<Leaf>)> {
        self.leaves
            .range::<Key, _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
    }

    fn search(leaf: &Leaf, key: &Key) -> Result<usize, usize> {
        leaf.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        let key = Key::new(key);
        let (_, leaf) = self.leaf_of(&key)?;
        Self::search(leaf, &key).ok().map(|i| &leaf[i].1)
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
        let key = Key::new(key);
        let split = {
            let Some((lk, rc)) = self
                .leaves
                .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(&key)))
                .next_back()
            else {
                // Below every index key (or empty): the rare slow path.
                let (new, r) = f(None);
                if let Some(v) = new {
                    self.insert_below_all(key, v);
                }
                return r;
            };
            match Self::search(rc, &key) {
                Ok(i) => {
                    let (new, r) = f(Some(&rc[i].1));
                    if let Some(v) = new {
                        let leaf = Rc::make_mut(rc);
                        self.bytes = self.bytes + v.len() as u64 - leaf[i].1.len() as u64;
                        leaf[i].1 = v;
                    }
                    return r;
                }
                Err(i) => {
                    let (new, r) = f(None);
                    let Some(v) = new else { return r };
                    let leaf = Rc::make_mut(rc);
                    self.bytes += (key.as_slice().len() + v.len()) as u64;
                    self.len += 1;
                    leaf.insert(i, (key, v));
                    if leaf.len() <= LEAF_MAX {
                        return r;
                    }
                    (lk.clone(), r)
                }
            }
        };
        let (lk, r) = split;
        let leaf = Rc::make_mut(self.leaves.get_mut(&lk).expect("leaf exists"));
        let right = leaf.split_off(leaf.len() / 2);
        self.leaves.insert(right[0].0.clone(), Rc::new(right));
        r
    }

    /// Inserts a key smaller than every index key: the first leaf takes it
    /// and is re-keyed.
    fn insert_below_all(&mut self, key: Key, value: Bytes) {
        self.bytes += (key.as_slice().len() + value.len()) as u64;
        self.len += 1;
        let mut leaf = match self.leaves.pop_first() {
            Some((_, leaf)) => leaf,
            None => Rc::new(Vec::new()),
        };
        let l = Rc::make_mut(&mut leaf);
        debug_assert!(l.first().is_none_or(|(k, _)| key < *k));
        l.insert(0, (key.clone(), value));
        if l.len() > LEAF_MAX {
            let right = l.split_off(l.len() / 2);
            self.leaves.insert(right[0].0.clone(), Rc::new(right));
        }
        self.leaves.insert(key, leaf);
    }

    /// Removes, returning the value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let key = Key::new(key);
        let (lk, rc) = self
            .leaves
            .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(&key)))
            .next_back()?;
        let i = Self::search(rc, &key).ok()?;
        let lk = lk.clone();
        let leaf = Rc::make_mut(rc);
        let (k, v) = leaf.remove(i);
        self.len -= 1;
        self.bytes -= (k.as_slice().len() + v.len()) as u64;
        let remaining = leaf.len();
        if remaining == 0 {
            self.leaves.remove(&lk);
        } else if remaining < LEAF_MIN {
            let next = self
                .leaves
                .range::<Key, _>((Bound::Excluded(&lk), Bound::Unbounded))
                .next()
                .map(|(k, l)| (k.clone(), l.len()));
            if let Some((nk, nlen)) = next {
                if remaining + nlen <= LEAF_MAX {
                    let next_leaf = self.leaves.remove(&nk).expect("next leaf exists");
                    let leaf = Rc::make_mut(self.leaves.get_mut(&lk).expect("leaf exists"));
                    leaf.extend(next_leaf.iter().cloned());
                }
            }
        }
        Some(v)
    }

    /// Pairs with `start <= key < end` in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Bytes)> + 'a {
        let start = Key::new(start);
        let end = end.map(Key::new);
        let from = match self.leaf_of(&start) {
            Some((lk, _)) => Bound::Included(lk.clone()),
            None => Bound::Unbounded,
        };
        self.leaves
            .range::<Key, _>((from, Bound::Unbounded))
            .flat_map(|(_, leaf)| leaf.iter())
            .skip_while(move |(k, _)| *k < start)
            .take_while(move |(k, _)| end.as_ref().is_none_or(|e| k < e))
            .map(|(k, v)| (k.as_slice(), v))
    }

    /// Every pair in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Bytes)> + '_ {
        self.leaves
            .values()
            .flat_map(|leaf| leaf.iter())
            .map(|(k, v)| (k.as_slice(), v))
    }

    /// Builds a map from pairs in strictly increasing key order.
    pub(crate) fn from_sorted(pairs: Vec<(Key, Bytes)>) -> Self {
        let mut m = CowMap::default();
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        m.len = pairs.len();
        m.bytes = pairs
            .iter()
            .map(|(k, v)| (k.as_slice().len() + v.len()) as u64)
            .sum();
        let per_leaf = LEAF_MAX * 3 / 4;
        let mut it = pairs.into_iter().peekable();
        while it.peek().is_some() {
            let leaf: Leaf = it.by_ref().take(per_leaf).collect();
            m.leaves.insert(leaf[0].0.clone(), Rc::new(leaf));
        }
        m
    }

    /// Checks the invariants (O(n); tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut prev: Option<&Key> = None;
        let mut len = 0;
        let mut bytes = 0u64;
        for (lk, leaf) in &self.leaves {
            assert!(!leaf.is_empty(), "empty leaf at {lk:?}");
            assert!(leaf.len() <= LEAF_MAX);
            assert!(leaf[0].0 >= *lk, "leaf key above its first key");
            for (k, v) in leaf.iter() {
                if let Some(p) = prev {
                    assert!(p < k, "keys out of order");
                }
                prev = Some(k);
                len += 1;
                bytes += (k.as_slice().len() + v.len()) as u64;
            }
        }
        assert_eq!(len, self.len);
        assert_eq!(bytes, self.bytes);
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

    proptest! {
        #[test]
        fn behaves_like_btreemap(ops in proptest::collection::vec((0u8..5, 0u16..400, any::<u8>()), 0..1500)) {
            let mut m = CowMap::default();
            let mut model: Model<Bytes, Bytes> = Model::new();
            let mut snapshots = Vec::new();
            for (i, (op, k, v)) in ops.iter().enumerate() {
                let key = b(format!("{k:05}").as_bytes());
                match op {
                    0 | 2 => prop_assert_eq!(m.insert(&key, b(&[*v])), model.insert(key, b(&[*v]))),
                    1 => {
                        // Write only if absent or different, through upsert.
                        let prev = m.upsert(&key, |cur| {
                            let write = cur.is_none_or(|c| c[0] != *v);
                            (write.then(|| b(&[*v])), cur.cloned())
                        });
                        prop_assert_eq!(prev, model.insert(key, b(&[*v])));
                    }
                    _ => prop_assert_eq!(m.remove(&key), model.remove(&key)),
                }
                if i % 200 == 0 {
                    snapshots.push((m.clone(), model.clone()));
                }
            }
            m.check_invariants();
            prop_assert!(m.iter().eq(model.iter().map(|(k, v)| (&k[..], v))));
            let got: Vec<_> = m.range(b"00100", Some(b"00200")).map(|(k, v)| (b(k), v.clone())).collect();
            let want: Vec<_> = model.range(b("00100".as_bytes())..b("00200".as_bytes())).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(got, want);
            // Clones taken earlier are unaffected by later writes.
            for (snap, snap_model) in &snapshots {
                snap.check_invariants();
                prop_assert!(snap.iter().eq(snap_model.iter().map(|(k, v)| (&k[..], v))));
            }
        }
    }

    #[test]
    fn key_below_every_leaf_and_range_edges() {
        let mut m = CowMap::default();
        for i in (100..300u32).rev() {
            m.insert(&i.to_be_bytes(), b(b"v"));
        }
        m.insert(&5u32.to_be_bytes(), b(b"low"));
        m.check_invariants();
        assert_eq!(m.get(&5u32.to_be_bytes()).unwrap(), &b(b"low"));
        assert_eq!(m.range(&0u32.to_be_bytes(), None).count(), 201);
        assert_eq!(
            m.range(&150u32.to_be_bytes(), Some(&160u32.to_be_bytes()))
                .count(),
            10
        );
        assert_eq!(m.range(&400u32.to_be_bytes(), None).count(), 0);
        let sorted: Vec<_> = m.iter().map(|(k, v)| (Key::new(k), v.clone())).collect();
        let rebuilt = CowMap::from_sorted(sorted);
        rebuilt.check_invariants();
        assert!(rebuilt.iter().eq(m.iter()));
    }
}
