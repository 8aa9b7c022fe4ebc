//! The KV store's map: byte-string keys to `Bytes`, ordered, with a cheap
//! copy-on-write clone and point operations that cost about one cache miss.
//!
//! ```text
//!  CowMap ─┬─ values:  CowHash  key → value   every get / put / incr / delete
//!          │                                   (hash.rs: ~1 cache miss); the
//!          │                                   authority on which keys exist
//!          ├─ order:   CowTree<()>            keys in byte order as of the last
//!          │                                   merge (tree.rs)
//!          └─ pending: [(Key, Insert|Delete)]  keys created / deleted since, in
//!                                              apply order (unsorted, bounded)
//! ```
//! A point write touches only the hash index; creating or deleting a key
//! also appends one entry to `pending` (a sequential write, no tree
//! search). The tree catches up in bulk, when `pending` passes
//! [`pending_max`] (a quarter of the tree, 32..=32,768 entries): `pending` is
//! sorted (stable, so the operations on one key stay in apply order) and
//! merged into the tree in key order, so consecutive tree updates land in
//! the same (cached) branch and leaf instead of one random tree search per
//! new key; the net creations go in leaf by leaf
//! ([`CowTree::insert_sorted`]: one search and one in-place merge per leaf).
//!
//! Ordered reads (`iter`, `range`: scans, snapshots, `Debug`) take `&self`
//! and do not merge: they sort `pending` in place if needed (interior
//! mutability, see [`Pending`]) and walk the union of the tree's keys and
//! `pending`'s keys in byte order, each key once, asking the hash index for
//! its value and skipping keys it does not hold (deleted since the merge).
//! So an ordered read sees exactly the current state whatever is pending.
//!
//! Both halves clone by copying their top level (a snapshot view costs
//! microseconds; `pending` is copied, ≤ 32,768 entries) and copy a chunk /
//! leaf on the first write after a capture.
//!
//! Invariants: the tree's keys, with `pending`'s operations replayed in
//! order, are exactly the keys of `values`; per key the operations
//! alternate (an insert only of an absent key, a delete only of a present
//! one). Every observable order is byte order; the hash index's layout
//! depends on random seeds and is never iterated.

use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use super::hash::{CowHash, Seeds, Upserted};
use super::key::Key;
use super::tree::CowTree;
use super::value::Value;

/// Fewest pending operations that trigger a merge (small stores: idle
/// groups keep at most this many, ~1.3 KB).
const PENDING_MIN: usize = 32;
/// Most pending operations: bounds the sort an ordered read may do (~0.5 ms)
/// and the memory of the buffer (40 bytes an entry).
const PENDING_MAX: usize = 32768;

/// A map of at most this many keys picks a random key by walking them.
const RANDOM_SCAN_KEYS_MAX: usize = 1024;
/// Most samples of the order tree a random pick takes.
const RANDOM_SAMPLES_MAX: usize = 8;

/// SplitMix64: the next of a sequence of well-mixed numbers.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Most net insertions a merge hands to the tree at once (bounds the
/// merge's key buffer: 32 bytes a key).
const PENDING_RUN_MAX: usize = 1024;

/// Pending operations that trigger a merge into a tree of `tree_len` keys:
/// a quarter of the tree (so a merge visits each leaf for ~12 keys, and
/// the sort stays cheap next to the tree updates it saves), within
/// [`PENDING_MIN`]..=[`PENDING_MAX`].
fn pending_max(tree_len: usize) -> usize {
    (tree_len / 4).clamp(PENDING_MIN, PENDING_MAX)
}

/// Key creations and deletions not yet merged into the tree, in apply
/// order, or sorted by key (stable: per key still in apply order). Behind
/// an `Rc`, so a capture shares it (copied on the next push, once per view).
///
/// Sorting does not change what the buffer means (only the order of
/// operations on the *same* key matters, and a stable sort keeps it), so
/// ordered reads sort it through `&self`. A `RefCell` borrow is taken
/// mutably only to sort, and only when `sorted` is false; every shared
/// borrow (held by a live ordered iterator) is taken after a sort. `sorted`
/// turns false only in a push, through `&mut` and `Rc::make_mut`: on a
/// buffer no other map shares (a shared one is copied first) and that no
/// iterator borrows (`&mut`). So the mutable borrow never meets a shared
/// one.
#[derive(Clone, Default)]
struct Pending(Rc<PendingOps>);

#[derive(Clone, Default)]
struct PendingOps {
    ops: RefCell<Vec<(Key, Op)>>,
    sorted: Cell<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Insert,
    Delete,
}

impl Pending {
    fn len(&self) -> usize {
        self.0.ops.borrow().len()
    }

    fn push(&mut self, key: Key, op: Op) {
        let p = Rc::make_mut(&mut self.0);
        let ops = p.ops.get_mut();
        if ops.is_empty() {
            p.sorted.set(true);
        } else if p.sorted.get() && ops.last().is_some_and(|(l, _)| *l > key) {
            p.sorted.set(false);
        }
        ops.push((key, op));
    }

    /// The operations sorted by key (per key in apply order).
    fn sorted(&self) -> Ref<'_, Vec<(Key, Op)>> {
        if !self.0.sorted.get() {
            // Runs first (the live part is usually a sorted prefix from the
            // previous ordered read plus an appended tail): the stable sort
            // merges them.
            self.0.ops.borrow_mut().sort_by(|a, b| a.0.cmp(&b.0));
            self.0.sorted.set(true);
        }
        self.0.ops.borrow()
    }

    /// Takes the operations out, sorted, leaving the buffer empty.
    fn take_sorted(&mut self) -> Vec<(Key, Op)> {
        let p = Rc::make_mut(&mut self.0);
        if !p.sorted.get() {
            p.ops.get_mut().sort_by(|a, b| a.0.cmp(&b.0));
        }
        p.sorted.set(true);
        std::mem::take(p.ops.get_mut())
    }

    /// Gives an emptied buffer back, so a busy store does not regrow it
    /// (an idle store's small one is dropped instead).
    fn recycle(&mut self, mut ops: Vec<(Key, Op)>) {
        if ops.capacity() > 4 * PENDING_MIN {
            ops.clear();
            let p = Rc::make_mut(&mut self.0);
            if p.ops.get_mut().is_empty() {
                *p.ops.get_mut() = ops;
            }
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct CowMap {
    values: CowHash,
    order: CowTree<()>,
    pending: Pending,
    /// Sum of key and value lengths.
    bytes: u64,
}

impl Default for CowMap {
    fn default() -> Self {
        CowMap {
            values: CowHash::new(Seeds::random()),
            order: CowTree::default(),
            pending: Pending::default(),
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

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Value> {
        self.values.get(key)
    }

    /// A key picked with `seed`, `None` if the map is empty. A small map
    /// (at most [`RANDOM_SCAN_KEYS_MAX`] keys) picks uniformly; a larger
    /// one samples the order tree (see [`CowTree::sample`]), skipping keys
    /// deleted since its last merge, and falls back to one of its first
    /// keys (keys created since the merge are found only that way).
    pub(crate) fn random_key(&self, seed: u64) -> Option<&[u8]> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let mut r = seed;
        if n > RANDOM_SCAN_KEYS_MAX {
            for _ in 0..RANDOM_SAMPLES_MAX {
                r = splitmix(r);
                if let Some(k) = self.order.sample(r) {
                    if self.values.get(k.as_slice()).is_some() {
                        return Some(k.as_slice());
                    }
                }
            }
        }
        let at = (splitmix(r) % n.min(RANDOM_SCAN_KEYS_MAX) as u64) as usize;
        self.iter().nth(at).map(|(k, _)| k)
    }

    /// Starts loading the index lines a write of `key` will touch (see
    /// [`CowHash::prefetch`]): a hint, no effect on any result.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        self.values.prefetch(key);
    }

    /// Starts loading the chunk directory entry of `key` (see
    /// [`CowHash::prefetch_directory`]): a hint.
    pub(crate) fn prefetch_directory(&self, key: &[u8]) {
        self.values.prefetch_directory(key);
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Inserts, returning the previous value.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: &[u8], value: Bytes) -> Option<Bytes> {
        self.upsert(key, |cur| (Some(value.into()), cur.map(Value::to_bytes)))
    }

    /// Looks `key` up once and lets `f` decide from its current value
    /// whether to write a new one (`Some`) or leave it (`None`); returns
    /// `f`'s second output.
    pub(crate) fn upsert<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(Option<&Value>) -> (Option<Value>, R),
    ) -> R {
        let (r, done) = self.values.upsert(key, f);
        match done {
            Upserted::Unchanged => {}
            Upserted::Replaced { old_len, new_len } => {
                self.bytes = self.bytes + new_len as u64 - old_len as u64;
            }
            Upserted::Inserted { key, value_len } => {
                self.bytes += (key.as_slice().len() + value_len) as u64;
                self.pend(key, Op::Insert);
            }
        }
        r
    }

    /// Removes, returning the value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let (k, v) = self.values.remove(key)?;
        self.bytes -= (k.as_slice().len() + v.len()) as u64;
        self.pend(k, Op::Delete);
        Some(v)
    }

    fn pend(&mut self, key: Key, op: Op) {
        self.pending.push(key, op);
        if self.pending.len() >= pending_max(self.order.len()) {
            self.merge();
        }
    }

    /// Brings the tree up to date with the pending operations, in key
    /// order. Per key only the net effect reaches the tree: operations
    /// alternate, so the first and the last say whether the key was in
    /// the tree and whether it must be.
    pub(crate) fn merge(&mut self) {
        let ops = self.pending.take_sorted();
        // Net insertions go into the tree in runs (between two deletions),
        // leaf by leaf: `CowTree::insert_sorted`.
        let mut run: Vec<Key> = Vec::with_capacity(ops.len().min(PENDING_RUN_MAX));
        let mut i = 0;
        while i < ops.len() {
            let (key, first) = &ops[i];
            let mut j = i + 1;
            while j < ops.len() && ops[j].0 == *key {
                debug_assert_ne!(ops[j].1, ops[j - 1].1, "operations on a key alternate");
                j += 1;
            }
            let last = ops[j - 1].1;
            match (first, last) {
                (Op::Insert, Op::Insert) => {
                    run.push(key.clone());
                    if run.len() == PENDING_RUN_MAX {
                        self.order.insert_sorted(&run, ());
                        run.clear();
                    }
                }
                (Op::Delete, Op::Delete) => {
                    self.order.insert_sorted(&run, ());
                    run.clear();
                    let had = self.order.remove(key);
                    debug_assert!(had.is_some(), "a deleted key was not in the tree");
                }
                // Deleted and re-created, or created and deleted: the tree
                // is already right.
                _ => {}
            }
            i = j;
        }
        self.order.insert_sorted(&run, ());
        debug_assert_eq!(self.order.len(), self.values.len());
        self.pending.recycle(ops);
    }

    /// Pairs with `start <= key < end` in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Value)> + 'a {
        let pending = self.pending.sorted();
        let from = pending.partition_point(|(k, _)| k.as_slice() < start);
        let to = match end {
            Some(e) => pending.partition_point(|(k, _)| k.as_slice() < e).max(from),
            None => pending.len(),
        };
        Ordered::new(
            self.order.range(start, end).map(|(k, _)| k),
            pending,
            from..to,
            &self.values,
        )
    }

    /// Every pair in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Value)> + '_ {
        let pending = self.pending.sorted();
        let to = pending.len();
        Ordered::new(
            self.order.iter().map(|(k, _)| k),
            pending,
            0..to,
            &self.values,
        )
    }

    /// Builds a map from pairs in strictly increasing key order.
    pub(crate) fn from_sorted(pairs: Vec<(Key, Value)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let bytes = pairs
            .iter()
            .map(|(k, v)| (k.as_slice().len() + v.len()) as u64)
            .sum();
        let keys = pairs.iter().map(|(k, _)| (k.clone(), ())).collect();
        CowMap {
            values: CowHash::from_entries(pairs, Seeds::random()),
            order: CowTree::from_sorted(keys),
            pending: Pending::default(),
            bytes,
        }
    }

    /// Number of pending operations (tests).
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Checks the invariants (O(n); tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.values.check_invariants();
        self.order.check_invariants();
        assert!(self.pending.len() < pending_max(self.order.len()));
        // Replay the pending operations on the tree's keys: exactly the
        // index's keys, every operation possible when it was made.
        let mut keys: std::collections::BTreeSet<Key> =
            self.order.iter().map(|(k, _)| k.clone()).collect();
        let ops = self.pending.0.ops.borrow();
        if self.pending.0.sorted.get() {
            assert!(ops.windows(2).all(|w| w[0].0 <= w[1].0), "flagged sorted");
        }
        for (k, op) in ops.iter() {
            match op {
                Op::Insert => assert!(keys.insert(k.clone()), "insert of a present key"),
                Op::Delete => assert!(keys.remove(k), "delete of an absent key"),
            }
        }
        drop(ops);
        assert_eq!(keys.len(), self.values.len());
        for k in &keys {
            assert!(
                self.values.get_key(k).is_some(),
                "key {k:?} not in the index"
            );
        }
        let listed: Vec<&[u8]> = self.iter().map(|(k, _)| k).collect();
        assert!(listed.iter().map(|k| Key::new(k)).eq(keys.iter().cloned()));
        let bytes: u64 = self.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(bytes, self.bytes);
    }
}

/// Keys looked up per batch by [`Ordered`].
const LOOKAHEAD_KEYS: usize = 16;

/// A candidate key of an ordered walk: from the tree, or the index of a
/// pending operation.
enum Candidate<'a> {
    Tree(&'a Key),
    Pending(usize),
}

/// Pairs in key order: the union of the tree's keys and the pending keys
/// (each key once), looked up in the index [`LOOKAHEAD_KEYS`] at a time,
/// keys the index does not hold skipped. Keys in order are scattered over
/// the hash index, so one lookup after another waits for one cache miss
/// after another; a batch first loads every key's home slot, then every
/// value's first byte, and the misses of a batch overlap (measured:
/// snapshot save and scans several times faster on maps larger than the
/// cache).
struct Ordered<'a, I: Iterator<Item = &'a Key>> {
    tree: std::iter::Peekable<I>,
    pending: Ref<'a, Vec<(Key, Op)>>,
    next_pending: usize,
    end_pending: usize,
    values: &'a CowHash,
    batch: std::collections::VecDeque<(&'a [u8], &'a Value)>,
    candidates: Vec<Candidate<'a>>,
}

impl<'a, I: Iterator<Item = &'a Key>> Ordered<'a, I> {
    fn new(
        tree: I,
        pending: Ref<'a, Vec<(Key, Op)>>,
        pending_range: std::ops::Range<usize>,
        values: &'a CowHash,
    ) -> Self {
        Ordered {
            tree: tree.peekable(),
            pending,
            next_pending: pending_range.start,
            end_pending: pending_range.end,
            values,
            batch: std::collections::VecDeque::new(),
            candidates: Vec::new(),
        }
    }

    /// The next key of the union, each key once.
    fn next_candidate(&mut self) -> Option<Candidate<'a>> {
        let p = (self.next_pending < self.end_pending).then_some(self.next_pending);
        let c = match (self.tree.peek(), p) {
            (None, None) => return None,
            (Some(_), None) => Candidate::Tree(self.tree.next().expect("peeked")),
            (None, Some(p)) => Candidate::Pending(p),
            (Some(t), Some(p)) => {
                let pk = &self.pending[p].0;
                if *t <= pk {
                    Candidate::Tree(self.tree.next().expect("peeked"))
                } else {
                    Candidate::Pending(p)
                }
            }
        };
        // Skip the pending operations on the same key.
        let key = match &c {
            Candidate::Tree(k) => *k,
            Candidate::Pending(p) => &self.pending[*p].0,
        };
        let mut q = self.next_pending;
        while q < self.end_pending && self.pending[q].0 <= *key {
            q += 1;
        }
        self.next_pending = q;
        Some(c)
    }
}

impl<'a, I: Iterator<Item = &'a Key>> Iterator for Ordered<'a, I> {
    type Item = (&'a [u8], &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        while self.batch.is_empty() {
            while self.candidates.len() < LOOKAHEAD_KEYS {
                match self.next_candidate() {
                    Some(c) => self.candidates.push(c),
                    None => break,
                }
            }
            if self.candidates.is_empty() {
                return None;
            }
            let mut touched = 0usize;
            for c in &self.candidates {
                touched += match c {
                    Candidate::Tree(k) => self.values.touch(k),
                    Candidate::Pending(p) => self.values.touch(&self.pending[*p].0),
                };
            }
            std::hint::black_box(touched);
            let mut first_bytes = 0usize;
            for c in self.candidates.drain(..) {
                let found = match c {
                    Candidate::Tree(k) => self.values.get_entry(k),
                    Candidate::Pending(p) => self.values.get_entry(&self.pending[p].0),
                };
                // Absent: deleted since the last merge.
                if let Some((k, v)) = found {
                    first_bytes += usize::from(v.first().copied().unwrap_or(0));
                    self.batch.push_back((k.as_slice(), v));
                }
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
        prop_assert!(m
            .iter()
            .map(|(k, v)| (k, v.as_slice()))
            .eq(model.iter().map(|(k, v)| (&k[..], &v[..]))));
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
            ops in proptest::collection::vec((0u8..11, 0u16..500, any::<u8>()), 0..1500),
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
                // Short (inline) and long (heap) values.
                let val = b(&vec![*v; if v % 4 == 0 { 20 + *v as usize % 9 } else { *v as usize % 5 }]);
                match op {
                    0 | 1 => prop_assert_eq!(m.insert(&key, val.clone()), model.insert(key.clone(), val)),
                    2 => {
                        // Write only if absent or different, through upsert.
                        let prev = m.upsert(&key, |cur| {
                            let write = cur.is_none_or(|c| c.as_slice() != &val[..]);
                            (write.then(|| val.clone().into()), cur.map(Value::to_bytes))
                        });
                        prop_assert_eq!(prev, model.insert(key.clone(), val));
                    }
                    3 | 4 => prop_assert_eq!(m.remove(&key).map(|v| v.to_bytes()), model.remove(&key)),
                    5 => {
                        let end = b(format!("{:05}", k + u16::from(*v)).as_bytes());
                        let end = (v % 4 != 0).then_some(&end[..]);
                        let got: Vec<_> = m.range(&key, end).map(|(k, v)| (b(k), v.to_bytes())).collect();
                        prop_assert_eq!(got, range_model(&model, &key, end));
                    }
                    6 => clones.push((m.clone(), model.clone())),
                    8 => {
                        // A full ordered walk with whatever is pending, then
                        // (sometimes) the merge.
                        prop_assert!(m.iter().map(|(k, v)| (k, v.as_slice())).eq(model.iter().map(|(k, v)| (&k[..], &v[..]))));
                        if v % 3 == 0 {
                            m.merge();
                            prop_assert_eq!(m.pending_len(), 0);
                        }
                    }
                    9 => {
                        // Create and delete keys that only the pending buffer
                        // knows, with an ordered read while they are there.
                        let fresh = b(format!("{k:05}~{v}").as_bytes());
                        prop_assert_eq!(m.insert(&fresh, val.clone()), model.insert(fresh.clone(), val.clone()));
                        let got: Vec<_> = m.range(&key, None).take(3).map(|(k, v)| (b(k), v.to_bytes())).collect();
                        let want: Vec<_> = range_model(&model, &key, None).into_iter().take(3).collect();
                        prop_assert_eq!(got, want);
                        if v % 2 == 0 {
                            prop_assert_eq!(m.remove(&fresh).map(|v| v.to_bytes()), model.remove(&fresh));
                        }
                    }
                    _ => {
                        // Write to a clone: the original must not see it.
                        if let Some((c, cm)) = clones.last_mut() {
                            prop_assert_eq!(c.insert(&key, val.clone()), cm.insert(key.clone(), val));
                            if v % 2 == 0 {
                                let other = b(format!("{:05}", v).as_bytes());
                                prop_assert_eq!(c.remove(&other).map(|v| v.to_bytes()), cm.remove(&other));
                            }
                        }
                    }
                }
                prop_assert_eq!(m.get(&key).map(Value::to_bytes), model.get(&key).cloned());
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
                    assert_eq!(m.remove(&k).map(|v| v.to_bytes()), model.remove(&k));
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
                    .map(|(k, v)| (b(k), v.to_bytes()))
                    .collect();
                assert_eq!(got, range_model(&model, &s, Some(&e)));
                assert_eq!(m.get(&s).map(Value::to_bytes), model.get(&s).cloned());
            }
        }
        for (c, cm) in &clones {
            same(c, cm).unwrap();
        }
    }

    /// The deferred path on a large tree: creations, deletions of keys
    /// that only the pending buffer holds, of tree keys, re-creations of
    /// those, with ordered reads and clones in between, all below the merge
    /// bound; then the merge. Clones keep their state throughout.
    #[test]
    fn pending_operations_against_a_model() {
        let key = |n: u64| b(&[&9u32.to_be_bytes()[..], &(n * 2).to_be_bytes()].concat());
        let pairs: Vec<(Key, Value)> = (0..20_000u64)
            .map(|n| (Key::new(&key(n)), Value::copy(&n.to_le_bytes())))
            .collect();
        let mut model: Model<Bytes, Bytes> = pairs
            .iter()
            .map(|(k, v)| (b(k.as_slice()), v.to_bytes()))
            .collect();
        let mut m = CowMap::from_sorted(pairs);
        let mut clones = vec![(m.clone(), model.clone())];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Odd numbers are keys absent from the tree (between its keys).
        let mut created = Vec::new();
        for step in 0..4_000u64 {
            let r = next();
            match r % 8 {
                0..=3 => {
                    let k = b(&[
                        &9u32.to_be_bytes()[..],
                        &(((r >> 8) % 40_000) | 1).to_be_bytes(),
                    ]
                    .concat());
                    created.push(k.clone());
                    assert_eq!(m.insert(&k, b(b"new")), model.insert(k, b(b"new")));
                }
                4 if !created.is_empty() => {
                    // A key created since the merge (maybe deleted already).
                    let k = created.swap_remove((r >> 8) as usize % created.len());
                    assert_eq!(m.remove(&k).map(|v| v.to_bytes()), model.remove(&k));
                }
                5 => {
                    let k = key((r >> 8) % 20_000);
                    assert_eq!(m.remove(&k).map(|v| v.to_bytes()), model.remove(&k));
                }
                6 => {
                    let k = key((r >> 8) % 20_000);
                    assert_eq!(m.insert(&k, b(b"again")), model.insert(k, b(b"again")));
                }
                _ => {
                    let s = key((r >> 8) % 20_000);
                    let got: Vec<_> = m
                        .range(&s, None)
                        .take(50)
                        .map(|(k, v)| (b(k), v.to_bytes()))
                        .collect();
                    let want: Vec<_> = range_model(&model, &s, None).into_iter().take(50).collect();
                    assert_eq!(got, want);
                }
            }
            if step % 1_000 == 0 {
                clones.push((m.clone(), model.clone()));
            }
        }
        assert!(
            m.pending_len() > 1_000,
            "the buffer was used: {}",
            m.pending_len()
        );
        same(&m, &model).unwrap();
        m.merge();
        assert_eq!(m.pending_len(), 0);
        same(&m, &model).unwrap();
        for (c, cm) in &clones {
            same(c, cm).unwrap();
        }
        // A clone merges on its own without disturbing the original.
        let (mut c, cm) = clones.pop().unwrap();
        c.merge();
        same(&c, &cm).unwrap();
        same(&m, &model).unwrap();
    }

    /// A view walked in key order while the original keeps changing (the
    /// snapshot writer's situation): the view shares the pending buffer,
    /// the original pushes, reads in order and merges meanwhile, and the
    /// view's walk still yields exactly the state at its capture.
    #[test]
    fn a_view_walks_its_state_while_the_original_changes() {
        let mut m = CowMap::default();
        let mut model: Model<Bytes, Bytes> = Model::new();
        for n in 0..3_000u32 {
            let k = b(&n.wrapping_mul(2_654_435_761).to_be_bytes());
            m.insert(&k, b(&n.to_le_bytes()));
            model.insert(k, b(&n.to_le_bytes()));
        }
        assert!(m.pending_len() > 0, "some keys still pending");
        let view = m.clone();
        let mut walk = view.iter();
        let mut seen: Vec<(Bytes, Bytes)> = walk
            .by_ref()
            .take(100)
            .map(|(k, v)| (b(k), v.to_bytes()))
            .collect();
        for n in 3_000..6_000u32 {
            let k = b(&n.wrapping_mul(2_654_435_761).to_be_bytes());
            m.insert(&k, b(b"later"));
            if n % 500 == 0 {
                assert!(m.range(&k, None).next().is_some());
            }
        }
        for n in (0..3_000u32).step_by(3) {
            m.remove(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        }
        m.merge();
        seen.extend(walk.map(|(k, v)| (b(k), v.to_bytes())));
        let want: Vec<(Bytes, Bytes)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(seen, want);
        m.check_invariants();
        view.check_invariants();
    }

    /// Two maps with the same contents but different hash seeds iterate
    /// identically (the hash layout is never observable).
    #[test]
    fn iteration_does_not_depend_on_seeds() {
        let mut a = CowMap::default();
        let mut c = CowMap {
            values: CowHash::new(Seeds::fixed(42)),
            order: CowTree::default(),
            pending: Pending::default(),
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
