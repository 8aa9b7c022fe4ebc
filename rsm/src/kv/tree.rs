//! An ordered map of byte-string keys whose clone is cheap: a two-level
//! copy-on-write B-tree. The KV store keeps its key order in one (with `()`
//! values: see `map.rs`); values live in the hash index.
//!
//! ```text
//!  root: BTreeMap<Key, Rc<Branch>>            ~ n / 2,500 entries (cloned at capture)
//!    └─ Branch: [(Key, Rc<Leaf>)]  ≤ 64 leaves  (copied on first write after a capture)
//!         └─ Leaf: [(Key, V)]      ≤ 64 pairs   (copied on first write after a capture)
//! ```
//! Cloning copies only the root (one `Rc` per branch: ~400 bumps for a
//! million keys). A write to a branch and leaf that a clone still shares
//! copies that branch (≤ 64 `Rc` bumps) and that leaf (≤ 64 pairs). So a
//! snapshot view costs microseconds at capture, and later writes pay at most
//! one branch and one leaf copy each, once per view.
//!
//! Keys of the root, of branches and of leaves are lower bounds: every key
//! in a leaf is ≥ its key in the branch and < the next leaf's key (the next
//! leaf may be in the next branch); the first leaf of a branch also holds
//! keys between the branch's root key and its own key. Invariants: no empty
//! branch or leaf, at most 64 of anything, keys strictly increasing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use super::key::Key;

/// Most pairs per leaf.
const LEAF_MAX: usize = 64;
/// Most leaves per branch.
const BRANCH_MAX: usize = 64;
/// A leaf or branch below a quarter of its maximum merges with its
/// successor when both fit.
const LEAF_MIN: usize = LEAF_MAX / 4;
const BRANCH_MIN: usize = BRANCH_MAX / 4;
/// Fill of nodes built by [`CowTree::from_sorted`].
const LEAF_FILL: usize = LEAF_MAX * 3 / 4;
const BRANCH_FILL: usize = BRANCH_MAX * 3 / 4;

type Leaf<V> = Vec<(Key, V)>;
type Branch<V> = Vec<(Key, Rc<Leaf<V>>)>;

/// See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct CowTree<V> {
    root: BTreeMap<Key, Rc<Branch<V>>>,
    len: usize,
}

impl<V> Default for CowTree<V> {
    fn default() -> Self {
        CowTree {
            root: BTreeMap::new(),
            len: 0,
        }
    }
}

/// Splits an overfull node: after an append at its end (sequential keys)
/// the left part stays full; otherwise in halves.
fn split_node<T>(node: &mut Vec<T>, inserted_at: usize, max: usize) -> Vec<T> {
    debug_assert!(node.len() > max);
    let at = if inserted_at == node.len() - 1 {
        node.len() - 1
    } else {
        node.len() / 2
    };
    node.split_off(at)
}

/// Index of the leaf of `branch` that covers `key`.
fn leaf_index<V>(branch: &Branch<V>, key: &Key) -> usize {
    branch
        .partition_point(|(lk, _)| lk <= key)
        .saturating_sub(1)
}

/// Reads the start of every other entry of `node` (so every cache line of
/// it) before a binary search: these loads do not depend on each other, so
/// their cache misses overlap, where the probes of a binary search miss one
/// after another. The nodes of a large map are rarely in cache.
fn touch<V>(node: &[(Key, V)]) {
    let mut lens = 0usize;
    for (k, _) in node.iter().step_by(2) {
        lens += k.as_slice().len();
    }
    std::hint::black_box(lens);
}

/// Merges `new` (strictly increasing, none in `leaf`) into the sorted
/// `leaf` in place: appends the new entries, then fills the node from the
/// back, moving each old entry that ends above a new one once (a swap
/// with a not-yet-placed slot), so no temporary node is allocated.
fn merge_into<V: Clone>(leaf: &mut Leaf<V>, new: &[Key], value: &V) {
    let mut a = leaf.len(); // old entries [0, a) not yet placed
    let mut b = new.len(); // new keys [0, b) not yet placed
    leaf.extend(new.iter().map(|k| (k.clone(), value.clone())));
    // Invariant: a + b == w; slots [a, w) are free (their contents are
    // overwritten or moved below a), slots [w, len) are final.
    let mut w = leaf.len();
    while b > 0 {
        debug_assert_eq!(a + b, w);
        if a > 0 && leaf[a - 1].0 > new[b - 1] {
            leaf.swap(a - 1, w - 1);
            a -= 1;
        } else {
            debug_assert!(
                a == 0 || leaf[a - 1].0 < new[b - 1],
                "key already in the leaf"
            );
            leaf[w - 1] = (new[b - 1].clone(), value.clone());
            b -= 1;
        }
        w -= 1;
    }
    debug_assert!(leaf.windows(2).all(|p| p[0].0 < p[1].0));
}

fn search<V>(leaf: &Leaf<V>, key: &Key) -> Result<usize, usize> {
    leaf.binary_search_by(|(k, _)| k.cmp(key))
}

impl<V: Clone> CowTree<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn branch_of(&self, key: &Key) -> Option<(&Key, &Rc<Branch<V>>)> {
        self.root
            .range::<Key, _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
    }

    /// A key picked by `r` (a random number): a branch, a leaf of it and
    /// a pair of that leaf, each uniformly. Not exactly uniform over the
    /// keys (a key of a sparse leaf is likelier), as Redis' own sampling
    /// of its hash buckets is not. O(root entries): about n / 2,500.
    pub(crate) fn sample(&self, r: u64) -> Option<&Key> {
        let n = self.root.len() as u64;
        if n == 0 {
            return None;
        }
        let (_, branch) = self.root.iter().nth((r % n) as usize)?;
        let r = r / n;
        let leaf = &branch[(r % branch.len() as u64) as usize].1;
        let r = r / branch.len() as u64;
        Some(&leaf[(r % leaf.len() as u64) as usize].0)
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&V> {
        let (_, branch) = self.branch_of(key)?;
        let leaf = &branch[leaf_index(branch, key)].1;
        search(leaf, key).ok().map(|i| &leaf[i].1)
    }

    /// The value of `key`, to change in place: the branch and leaf are
    /// copied first if a clone shares them.
    pub(crate) fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        let (_, rb) = self
            .root
            .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let j = leaf_index(rb, key);
        let i = search(&rb[j].1, key).ok()?;
        let branch = Rc::make_mut(rb);
        let leaf = Rc::make_mut(&mut branch[j].1);
        Some(&mut leaf[i].1)
    }

    /// Inserts, returning the previous value.
    pub(crate) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        self.upsert(key, |cur| (Some(value), cur.cloned()))
    }

    /// Looks `key` up once and lets `f` decide from its current value
    /// whether to write a new one (`Some`) or leave it (`None`); returns
    /// `f`'s second output.
    pub(crate) fn upsert<R>(
        &mut self,
        key: Key,
        f: impl FnOnce(Option<&V>) -> (Option<V>, R),
    ) -> R {
        match self.root.first_key_value() {
            None => {
                let (new, r) = f(None);
                if let Some(v) = new {
                    self.len = 1;
                    let leaf = Rc::new(vec![(key.clone(), v)]);
                    self.root.insert(key.clone(), Rc::new(vec![(key, leaf)]));
                }
                return r;
            }
            Some((first, _)) if key < *first => {
                // Below every root key: the first branch takes it, re-keyed
                // (still a lower bound of everything in it).
                let (_, b) = self.root.pop_first().expect("not empty");
                self.root.insert(key.clone(), b);
            }
            Some(_) => {}
        }
        let (rk, rb) = self
            .root
            .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(&key)))
            .next_back()
            .expect("a root key <= key exists");
        touch(rb);
        let j = leaf_index(rb, &key);
        touch(&rb[j].1);
        let found = search(&rb[j].1, &key);
        let current = found.ok().map(|i| &rb[j].1[i].1);
        let (new, r) = f(current);
        let Some(v) = new else { return r };
        let branch = Rc::make_mut(rb);
        let leaf = Rc::make_mut(&mut branch[j].1);
        match found {
            Ok(i) => {
                leaf[i].1 = v;
                return r;
            }
            Err(i) => {
                self.len += 1;
                leaf.insert(i, (key, v));
                if leaf.len() <= LEAF_MAX {
                    return r;
                }
                let right = split_node(leaf, i, LEAF_MAX);
                branch.insert(j + 1, (right[0].0.clone(), Rc::new(right)));
                if branch.len() <= BRANCH_MAX {
                    return r;
                }
                let right = split_node(branch, j + 1, BRANCH_MAX);
                let rk = rk.clone();
                debug_assert!(right[0].0 > rk);
                self.root.insert(right[0].0.clone(), Rc::new(right));
            }
        }
        r
    }

    /// Inserts `keys` (strictly increasing, none in the tree yet), each
    /// with a clone of `value`. Consecutive keys that fall into the same
    /// leaf go in together: one branch and leaf search, one copy-on-write
    /// check and one in-place merge (each moved entry moved once) for the
    /// whole group, instead of a search and a shift per key. A key that
    /// finds its leaf full goes through [`CowTree::insert`] (which splits).
    pub(crate) fn insert_sorted(&mut self, keys: &[Key], value: V) {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let mut i = 0;
        while i < keys.len() {
            let key = &keys[i];
            let below_first = self.root.first_key_value().is_none_or(|(f, _)| key < f);
            if below_first {
                let had = self.insert(key.clone(), value.clone());
                debug_assert!(had.is_none(), "insert_sorted of a present key");
                i += 1;
                continue;
            }
            // The first key of the next branch bounds this branch's last leaf.
            let next_root = self
                .root
                .range::<Key, _>((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone());
            let (_, rb) = self
                .root
                .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(key)))
                .next_back()
                .expect("a root key <= key exists");
            touch(rb);
            let j = leaf_index(rb, key);
            let bound = rb.get(j + 1).map(|(k, _)| k.clone()).or(next_root);
            let room = LEAF_MAX - rb[j].1.len();
            let group = keys[i..]
                .iter()
                .take(room)
                .take_while(|k| bound.as_ref().is_none_or(|b| *k < b))
                .count();
            if group == 0 {
                // Full leaf: the single-key path splits it.
                let had = self.insert(key.clone(), value.clone());
                debug_assert!(had.is_none(), "insert_sorted of a present key");
                i += 1;
                continue;
            }
            let new = &keys[i..i + group];
            let branch = Rc::make_mut(rb);
            let leaf = Rc::make_mut(&mut branch[j].1);
            merge_into(leaf, new, &value);
            debug_assert!(leaf.len() <= LEAF_MAX);
            self.len += group;
            i += group;
        }
    }

    /// Removes, returning the value.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<V> {
        let (rk, rb) = self
            .root
            .range_mut::<Key, _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        touch(rb);
        let j = leaf_index(rb, key);
        touch(&rb[j].1);
        let i = search(&rb[j].1, key).ok()?;
        let rk = rk.clone();
        let branch = Rc::make_mut(rb);
        let leaf = Rc::make_mut(&mut branch[j].1);
        let (_, v) = leaf.remove(i);
        let remaining = leaf.len();
        self.len -= 1;
        if remaining == 0 {
            branch.remove(j);
        } else if remaining < LEAF_MIN
            && j + 1 < branch.len()
            && remaining + branch[j + 1].1.len() <= LEAF_MAX
        {
            let (_, next) = branch.remove(j + 1);
            let leaf = Rc::make_mut(&mut branch[j].1);
            leaf.extend(next.iter().cloned());
        }
        if branch.is_empty() {
            self.root.remove(&rk);
        } else if branch.len() < BRANCH_MIN {
            let next = self
                .root
                .range::<Key, _>((Bound::Excluded(&rk), Bound::Unbounded))
                .next()
                .map(|(k, b)| (k.clone(), b.len()));
            if let Some((nk, nlen)) = next {
                let here = self.root[&rk].len();
                if here + nlen <= BRANCH_MAX {
                    let next = self.root.remove(&nk).expect("next branch");
                    let branch = Rc::make_mut(self.root.get_mut(&rk).expect("branch"));
                    let at = branch.len();
                    branch.extend(next.iter().cloned());
                    // The next branch's first leaf may hold keys below its
                    // own leaf key (down to the branch's root key): as a
                    // middle leaf it must be keyed by that root key.
                    branch[at].0 = nk;
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
    ) -> impl Iterator<Item = (&'a Key, &'a V)> + 'a {
        let start = Key::new(start);
        let end = end.map(Key::new);
        let (from, first_leaf) = match self.branch_of(&start) {
            Some((rk, b)) => (Bound::Included(rk.clone()), leaf_index(b, &start)),
            None => (Bound::Unbounded, 0),
        };
        self.root
            .range::<Key, _>((from, Bound::Unbounded))
            .enumerate()
            .flat_map(move |(n, (_, b))| b[if n == 0 { first_leaf } else { 0 }..].iter())
            .flat_map(|(_, leaf)| leaf.iter())
            .skip_while(move |(k, _)| *k < start)
            .take_while(move |(k, _)| end.as_ref().is_none_or(|e| k < e))
            .map(|(k, v)| (k, v))
    }

    /// Every pair in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> + '_ {
        self.root
            .values()
            .flat_map(|b| b.iter())
            .flat_map(|(_, leaf)| leaf.iter())
            .map(|(k, v)| (k, v))
    }

    /// Builds a map from pairs in strictly increasing key order.
    pub(crate) fn from_sorted(pairs: Vec<(Key, V)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let mut m = CowTree {
            len: pairs.len(),
            ..CowTree::default()
        };
        let mut pairs = pairs.into_iter().peekable();
        let mut leaves = std::iter::from_fn(|| {
            pairs.peek()?;
            let leaf: Leaf<V> = pairs.by_ref().take(LEAF_FILL).collect();
            Some((leaf[0].0.clone(), Rc::new(leaf)))
        })
        .peekable();
        while leaves.peek().is_some() {
            let branch: Branch<V> = leaves.by_ref().take(BRANCH_FILL).collect();
            m.root.insert(branch[0].0.clone(), Rc::new(branch));
        }
        m
    }

    /// Checks the invariants (O(n); tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut prev: Option<&Key> = None;
        let mut len = 0;
        for (rk, branch) in &self.root {
            assert!(
                !branch.is_empty() && branch.len() <= BRANCH_MAX,
                "branch size {}",
                branch.len()
            );
            assert!(
                prev.is_none_or(|p| p < rk),
                "root key not above the previous branch"
            );
            assert!(branch[0].0 >= *rk, "root key above its branch");
            for (n, (lk, leaf)) in branch.iter().enumerate() {
                assert!(
                    !leaf.is_empty() && leaf.len() <= LEAF_MAX,
                    "leaf size {}",
                    leaf.len()
                );
                if n > 0 {
                    assert!(leaf[0].0 >= *lk, "leaf key above its first key");
                    assert!(
                        prev.is_none_or(|p| p < lk),
                        "leaf key not above the previous leaf"
                    );
                }
                for (k, _) in leaf.iter() {
                    assert!(k >= rk);
                    if let Some(p) = prev {
                        assert!(p < k, "keys out of order");
                    }
                    prev = Some(k);
                    len += 1;
                }
            }
        }
        assert_eq!(len, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    use bytes::Bytes;

    fn b(k: &[u8]) -> Bytes {
        Bytes::copy_from_slice(k)
    }

    fn pairs(m: &CowTree<Bytes>) -> impl Iterator<Item = (&[u8], &Bytes)> {
        m.iter().map(|(k, v)| (k.as_slice(), v))
    }

    proptest! {
        #[test]
        fn behaves_like_btreemap(ops in proptest::collection::vec((0u8..5, 0u16..400, any::<u8>()), 0..1500)) {
            let mut m: CowTree<Bytes> = CowTree::default();
            let mut model: Model<Bytes, Bytes> = Model::new();
            let mut snapshots = Vec::new();
            for (i, (op, k, v)) in ops.iter().enumerate() {
                let key = b(format!("{k:05}").as_bytes());
                match op {
                    0 | 2 => prop_assert_eq!(m.insert(Key::new(&key), b(&[*v])), model.insert(key, b(&[*v]))),
                    1 => {
                        // Write only if absent or different, through upsert.
                        let prev = m.upsert(Key::new(&key), |cur| {
                            let write = cur.is_none_or(|c| c[0] != *v);
                            (write.then(|| b(&[*v])), cur.cloned())
                        });
                        prop_assert_eq!(prev, model.insert(key, b(&[*v])));
                    }
                    _ => prop_assert_eq!(m.remove(&Key::new(&key)), model.remove(&key)),
                }
                if i % 200 == 0 {
                    snapshots.push((m.clone(), model.clone()));
                }
            }
            m.check_invariants();
            prop_assert!(pairs(&m).eq(model.iter().map(|(k, v)| (&k[..], v))));
            let got: Vec<_> = m.range(b"00100", Some(b"00200")).map(|(k, v)| (b(k.as_slice()), v.clone())).collect();
            let want: Vec<_> = model.range(b("00100".as_bytes())..b("00200".as_bytes())).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(got, want);
            // Clones taken earlier are unaffected by later writes.
            for (snap, snap_model) in &snapshots {
                snap.check_invariants();
                prop_assert!(pairs(snap).eq(snap_model.iter().map(|(k, v)| (&k[..], v))));
            }
        }
    }

    proptest! {
        /// `insert_sorted` (leaf-grouped, in-place merges) ends in the same
        /// state as inserting the keys one by one, on a tree of any shape,
        /// and leaves a clone taken before it untouched.
        #[test]
        fn insert_sorted_matches_single_inserts(
            base in proptest::collection::btree_set(0u32..20_000, 0..3000),
            removed in proptest::collection::vec(0u32..20_000, 0..300),
            new in proptest::collection::btree_set(0u32..20_000, 0..3000),
        ) {
            let k = |n: u32| Key::new(format!("{:05}", n).as_bytes());
            let mut m: CowTree<Bytes> = CowTree::from_sorted(
                base.iter().map(|&n| (k(n), b(b"base"))).collect(),
            );
            let mut model: Model<Bytes, Bytes> =
                base.iter().map(|&n| (b(format!("{:05}", n).as_bytes()), b(b"base"))).collect();
            for n in removed {
                let key = format!("{:05}", n);
                prop_assert_eq!(m.remove(&Key::new(key.as_bytes())), model.remove(key.as_bytes()));
            }
            let before = m.clone();
            let before_model = model.clone();
            let keys: Vec<Key> = new
                .iter()
                .filter(|&&n| !model.contains_key(format!("{:05}", n).as_bytes()))
                .map(|&n| k(n))
                .collect();
            for key in &keys {
                model.insert(b(key.as_slice()), b(b"new"));
            }
            m.insert_sorted(&keys, b(b"new"));
            m.check_invariants();
            prop_assert_eq!(m.len(), model.len());
            prop_assert!(pairs(&m).eq(model.iter().map(|(k, v)| (&k[..], v))));
            before.check_invariants();
            prop_assert!(pairs(&before).eq(before_model.iter().map(|(k, v)| (&k[..], v))));
        }
    }

    /// Enough keys for many branches: splits, merges and removals at both
    /// levels, random ranges, and clones that must not move.
    #[test]
    fn many_keys_against_a_model() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut m: CowTree<Bytes> = CowTree::default();
        let mut model: Model<Bytes, Bytes> = Model::new();
        let mut clones = Vec::new();
        let key = |n: u64| b(format!("{:06}", n % 20_000).as_bytes());
        for phase in 0..3 {
            // Phase 0 inserts, 1 mixes, 2 mostly removes; one sequential run.
            for step in 0..40_000u64 {
                let r = next();
                let k = if phase == 0 && step < 8_000 {
                    key(step)
                } else {
                    key(r >> 8)
                };
                let remove = match phase {
                    0 => r % 10 == 0,
                    1 => r % 2 == 0,
                    _ => r % 10 != 0,
                };
                if remove {
                    assert_eq!(m.remove(&Key::new(&k)), model.remove(&k));
                } else {
                    let v = b(&r.to_le_bytes()[..(r % 8) as usize]);
                    assert_eq!(m.insert(Key::new(&k), v.clone()), model.insert(k, v));
                }
                if step % 10_000 == 0 {
                    clones.push((m.clone(), model.clone()));
                }
            }
            m.check_invariants();
            assert!(pairs(&m).eq(model.iter().map(|(k, v)| (&k[..], v))));
            for _ in 0..200 {
                let (s, e) = (key(next()), key(next()));
                let got: Vec<_> = m
                    .range(&s, Some(&e))
                    .map(|(k, v)| (b(k.as_slice()), v.clone()))
                    .collect();
                let want: Vec<_> = if s <= e {
                    model
                        .range(s.clone()..e)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want);
                assert_eq!(m.get(&Key::new(&s)), model.get(&s));
            }
        }
        assert!(
            m.root.len() < 40,
            "merges keep the root small: {}",
            m.root.len()
        );
        for (c, cm) in &clones {
            c.check_invariants();
            assert!(pairs(c).eq(cm.iter().map(|(k, v)| (&k[..], v))));
        }
    }

    #[test]
    fn key_below_every_leaf_and_range_edges() {
        let mut m: CowTree<Bytes> = CowTree::default();
        for i in (100..300u32).rev() {
            m.insert(Key::new(&i.to_be_bytes()), b(b"v"));
        }
        m.insert(Key::new(&5u32.to_be_bytes()), b(b"low"));
        m.check_invariants();
        assert_eq!(m.get(&Key::new(&5u32.to_be_bytes())).unwrap(), &b(b"low"));
        assert_eq!(m.range(&0u32.to_be_bytes(), None).count(), 201);
        assert_eq!(
            m.range(&150u32.to_be_bytes(), Some(&160u32.to_be_bytes()))
                .count(),
            10
        );
        assert_eq!(m.range(&400u32.to_be_bytes(), None).count(), 0);
        let sorted: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let rebuilt = CowTree::from_sorted(sorted);
        rebuilt.check_invariants();
        assert!(pairs(&rebuilt).eq(pairs(&m)));
    }
}
