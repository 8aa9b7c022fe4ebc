//! A hash index of byte-string keys to values whose clone is cheap: linear
//! hashing over copy-on-write chunks, each a small open-addressing table.
//!
//! ```text
//!  pages: Vec<Rc<[Chunk]>>     ~ n / 8,000 pages of 64 chunks (cloned at capture: one
//!    │                            Rc bump each; a shared page is copied on first write)
//!    └─ Chunk { slots: Rc<[Slot]>, len }   24 bytes
//!    └─ slots: cap = 2 × len when built, ≤ 3/4 full; linear probing,
//!              backward-shift deletion (no tombstones); a slot is one
//!              64 bytes: Option<(Key, Value)>, key and value inline when
//!              short (≤ 24 / ≤ 23 bytes)
//!
//!  hash h (64 bits, keyed) ─┬─ low bits     → chunk (linear hashing: h mod 2^level,
//!                           │                 or mod 2^(level+1) below the split pointer)
//!                           └─ high 32 bits → home slot in the chunk (h_hi × cap / 2^32)
//! ```
//!
//! A lookup reads the chunk's directory entry (pointer, capacity, length:
//! 24 bytes per ~100 keys, so the directory of many stores stays in cache)
//! and then the slots from the home on, usually one or two adjacent cache
//! lines: about one cache miss, where a B-tree search costs one per probe.
//! A write also reads the slots' reference count (copy-on-write check), a
//! line of the same allocation. Measured alternatives: a separate tag byte array per
//! chunk behind an `Rc<Chunk>` header cost two more misses per lookup (the
//! header and the tags) than it saved in probing; chunks of ~40 keys (the
//! first choice) made the directory 3x larger, and its misses made every
//! get, overwrite and insert 5–15% dearer (engine pattern, 144 stores).
//!
//! Growth is incremental: when the average chunk holds more than
//! [`CHUNK_LEN_SPLIT`] entries, the chunk at the split pointer is split in
//! two by the next hash bit (~128 entries move); when it falls below
//! [`CHUNK_LEN_MERGE`], the last chunk merges back. A chunk that fills past
//! 3/4 (or empties below 1/8) is rebuilt alone, half full. No operation
//! ever rehashes the whole table.
//!
//! Cloning copies the chunk pointers; the first write to a chunk that a
//! clone still shares copies that chunk (≈ 128 pairs, ~16 KB), once per
//! view.
//!
//! The hash is keyed with random seeds (per table, from std's
//! `RandomState`), so clients cannot choose keys that collide. Nothing may
//! depend on the order of the chunks or slots: this index answers point
//! questions only, and everything ordered (scans, snapshots) goes through the
//! key order kept next to it (see `map.rs`). Seeds are not part of the state:
//! replicas with different seeds hold the same map.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

use super::key::Key;
use super::value::Value;

/// A split happens when the average chunk holds more than this.
const CHUNK_LEN_SPLIT: usize = 128;
/// The last chunk merges back when the average falls below this.
const CHUNK_LEN_MERGE: usize = 32;
/// Most partitions of [`CowHash::from_entries`].
const BUILD_PARTITIONS: usize = 256;
/// Smallest chunk capacity.
const CHUNK_CAP_MIN: usize = 8;

/// One slot of a chunk: a key and its value, or empty: 64 bytes. Not
/// aligned to a cache line (so a slot spans two lines, behind the `Rc`'s
/// 16-byte header): a 64-byte alignment makes every slot allocation a
/// `posix_memalign`, whose split-off remainders fragmented glibc's heap
/// (in `flotilla bench`, `_int_malloc` rose from 2.1% to 3.7% of the shard
/// threads' CPU, `unlink_chunk` appeared), while the benchmark measured no
/// gain from the alignment next to the prefetch of two adjacent slots.
#[derive(Clone, Default)]
struct Slot(Option<(Key, Value)>);

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// Asks the CPU to bring the line at `p` into the cache (a hint: no effect
/// on the program's meaning; a no-op off x86_64).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and writes nothing, whatever the
    // address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The keyed hash function of one table.
#[derive(Clone, Copy)]
pub(crate) struct Seeds([u64; 3]);

impl Seeds {
    /// Fresh random seeds.
    pub(crate) fn random() -> Self {
        let state = RandomState::new();
        let seed = |i: u64| {
            let mut h = state.build_hasher();
            h.write_u64(i);
            h.finish()
        };
        Seeds([seed(0), seed(1), seed(2)])
    }

    /// Fixed seeds (tests that need reproducible layouts).
    #[cfg(test)]
    pub(crate) fn fixed(n: u64) -> Self {
        Seeds([n, n.rotate_left(21) ^ 0x9e37_79b9_7f4a_7c15, !n])
    }

    /// A folded-multiply hash (the construction of foldhash/wyhash): 16
    /// bytes per multiplication, the length mixed in first so that the
    /// overlapping tail reads are unambiguous.
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        const K: u64 = 0x243f_6a88_85a3_08d3;
        let [s0, s1, s2] = self.0;
        let mut acc = s0 ^ (key.len() as u64).wrapping_mul(K);
        let mut rest = key;
        while rest.len() > 16 {
            acc = fold_mul(read8(rest, 0) ^ s1 ^ acc, read8(rest, 8) ^ s2);
            rest = &rest[16..];
        }
        let n = rest.len();
        let (a, b) = if n >= 8 {
            (read8(rest, 0), read8(rest, n - 8))
        } else if n >= 4 {
            (read4(rest, 0), read4(rest, n - 4))
        } else if n > 0 {
            let a = (rest[0] as u64) << 16 | (rest[n / 2] as u64) << 8 | rest[n - 1] as u64;
            (a, 0)
        } else {
            (0, 0)
        };
        acc = fold_mul(a ^ s1 ^ acc, b ^ s2);
        fold_mul(acc ^ s0, K)
    }
}

fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

fn read8(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read4(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
}

/// The home slot of hash `h` in a chunk of `cap` slots.
fn home(h: u64, cap: usize) -> usize {
    debug_assert!(cap > 0 && cap <= u32::MAX as usize);
    (((h >> 32) * cap as u64) >> 32) as usize
}

/// Capacity for a chunk about to hold `len` entries (half full).
fn cap_for(len: usize) -> usize {
    (2 * len).max(CHUNK_CAP_MIN)
}

/// True if a chunk of `cap` slots may hold `len` entries.
fn fits(len: usize, cap: usize) -> bool {
    len * 4 <= cap * 3
}

/// One open-addressing table (linear probing) and its length.
///
/// Invariants: `len` slots are full; every key is reachable by probing
/// forward from its home without crossing an empty slot; `fits(len, cap)`.
/// The length lives here, in the directory, next to the slice's pointer
/// and capacity, so a lookup reads nothing of the chunk but its slots.
#[derive(Clone)]
struct Chunk {
    slots: Rc<[Slot]>,
    len: usize,
}

/// `Ok(slot)` of `key`, or `Err(empty slot)` where it would go.
fn find(slots: &[Slot], h: u64, key: &Key) -> Result<usize, usize> {
    let cap = slots.len();
    let mut i = home(h, cap);
    loop {
        match &slots[i].0 {
            None => return Err(i),
            Some((k, _)) if k == key => return Ok(i),
            Some(_) => {}
        }
        i += 1;
        if i == cap {
            i = 0;
        }
    }
}

/// Puts a key known to be absent into slots with room.
fn put_absent(slots: &mut [Slot], h: u64, key: Key, value: Value) {
    let i = find(slots, h, &key).expect_err("absent");
    slots[i].0 = Some((key, value));
}

/// Empties slot `i` and shifts the rest of its probe run back, so no
/// tombstones are needed.
fn remove_at(slots: &mut [Slot], mut i: usize, seeds: &Seeds) -> (Key, Value) {
    let cap = slots.len();
    let out = slots[i].0.take().expect("removing a full slot");
    let mut j = i;
    loop {
        j = if j + 1 == cap { 0 } else { j + 1 };
        let Some((k, _)) = &slots[j].0 else {
            return out;
        };
        let from_home = (j + cap - home(seeds.hash(k.as_slice()), cap)) % cap;
        let from_gap = (j + cap - i) % cap;
        // The entry at j may move back to the gap at i unless its home lies
        // after the gap (cyclically in (i, j]).
        if from_home >= from_gap {
            slots[i].0 = slots[j].0.take();
            i = j;
        }
    }
}

impl Chunk {
    fn empty() -> Self {
        Chunk::build(Vec::new())
    }

    /// Padding of the last directory page: no slots (never addressed).
    fn placeholder() -> Self {
        Chunk {
            slots: Rc::from(Vec::new()),
            len: 0,
        }
    }

    /// Empty slots for `len` entries (half full), one allocation.
    fn new_slots(len: usize) -> Rc<[Slot]> {
        (0..cap_for(len)).map(|_| Slot::default()).collect()
    }

    /// Rebuilds the chunk alone at the capacity for its length, moving its
    /// entries into one new allocation (no intermediate vector).
    fn resize(&mut self, seeds: &Seeds) {
        let len = self.len;
        let mut rc = Chunk::new_slots(len);
        let slots = Rc::get_mut(&mut rc).expect("just allocated");
        self.drain(seeds, |h, k, v| put_absent(slots, h, k, v));
        *self = Chunk { slots: rc, len };
    }

    /// Builds a chunk from entries with distinct keys and their hashes.
    fn build(entries: Vec<(u64, Key, Value)>) -> Self {
        let len = entries.len();
        // Collected straight into the `Rc` allocation (no copy from a Vec).
        let mut rc: Rc<[Slot]> = Chunk::new_slots(len);
        let slots = Rc::get_mut(&mut rc).expect("just allocated");
        for (h, k, v) in entries {
            let i = find(slots, h, &k).expect_err("distinct keys");
            slots[i].0 = Some((k, v));
        }
        Chunk { slots: rc, len }
    }

    /// Hands every entry with its hash to `f`: moved out if this is the
    /// only reference, cloned (leaving the shared slots to their other
    /// owners) otherwise. Leaves the chunk empty of entries.
    fn drain(&mut self, seeds: &Seeds, mut f: impl FnMut(u64, Key, Value)) {
        self.len = 0;
        match Rc::get_mut(&mut self.slots) {
            Some(slots) => {
                for (k, v) in slots.iter_mut().filter_map(|s| s.0.take()) {
                    f(seeds.hash(k.as_slice()), k, v);
                }
            }
            None => {
                for (k, v) in self.slots.iter().filter_map(|s| s.0.as_ref()) {
                    f(seeds.hash(k.as_slice()), k.clone(), v.clone());
                }
            }
        }
    }
}

/// Chunks per directory page.
const PAGE_CHUNKS: usize = 64;

/// The chunks, in pages of [`PAGE_CHUNKS`] behind an `Rc`: a clone copies
/// one pointer per page (~8,000 keys) instead of one per chunk, so a capture
/// touches n / 8,000 reference counts, not n / 128 (each a likely cache
/// miss). The first write to a shared page copies it (64 `Rc` bumps). A
/// page is one allocation (`Rc<[Chunk]>`, no `Vec` in between, so a lookup
/// follows one pointer more than a flat directory); the last page grows by
/// doubling (1, 2, 4, … 64 chunks), padded with empty chunks.
#[derive(Clone, Default)]
struct Directory {
    pages: Vec<Rc<[Chunk]>>,
    len: usize,
}

impl Directory {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, b: usize) -> &Chunk {
        debug_assert!(b < self.len);
        &self.pages[b / PAGE_CHUNKS][b % PAGE_CHUNKS]
    }

    fn get_mut(&mut self, b: usize) -> &mut Chunk {
        debug_assert!(b < self.len);
        &mut Rc::make_mut(&mut self.pages[b / PAGE_CHUNKS])[b % PAGE_CHUNKS]
    }

    fn push(&mut self, c: Chunk) {
        let at = self.len % PAGE_CHUNKS;
        if at == 0 {
            // A new page starts with one chunk: a small store (most idle
            // groups) keeps a few dozen bytes of directory, not a full page.
            self.pages.push(Rc::from([Chunk::placeholder()]));
        } else {
            let last = self.pages.last_mut().expect("a page holds chunk len - 1");
            if last.len() == at {
                // Full: double it (up to a page), copying the chunk handles.
                let cap = (2 * at).min(PAGE_CHUNKS);
                let placeholder = Chunk::placeholder();
                let grown: Rc<[Chunk]> = last
                    .iter()
                    .cloned()
                    .chain((at..cap).map(|_| placeholder.clone()))
                    .collect();
                *last = grown;
            }
        }
        self.len += 1;
        *self.get_mut(self.len - 1) = c;
    }

    fn pop(&mut self) -> Option<Chunk> {
        if self.len == 0 {
            return None;
        }
        let c = std::mem::replace(self.get_mut(self.len - 1), Chunk::placeholder());
        self.len -= 1;
        if self.len % PAGE_CHUNKS == 0 {
            self.pages.pop();
        }
        Some(c)
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.pages.iter().flat_map(|p| p.iter()).take(self.len)
    }
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct CowHash {
    /// Linear hashing: `chunks.len() == 2^level + split` (or 0 when empty).
    chunks: Directory,
    level: u32,
    /// The next chunk to split; `split < 2^level`.
    split: usize,
    len: usize,
    seeds: Seeds,
}

/// What [`CowHash::upsert`] did.
pub(crate) enum Upserted {
    /// Nothing written.
    Unchanged,
    /// An existing value of `old_len` bytes was replaced by a new one of
    /// `new_len` bytes.
    Replaced { old_len: usize, new_len: usize },
    /// A new key (a clone of the stored one) with a value of `value_len`.
    Inserted { key: Key, value_len: usize },
}

impl CowHash {
    /// An empty table hashing with `seeds`.
    pub(crate) fn new(seeds: Seeds) -> Self {
        CowHash {
            chunks: Directory::default(),
            level: 0,
            split: 0,
            len: 0,
            seeds,
        }
    }

    /// A table of `entries` (distinct keys) built in one pass: the final
    /// number of chunks is chosen up front and each chunk is built once (a
    /// recovery of millions of keys must not pay a random-access insert and
    /// the growth of every chunk per key). Entries are first appended to
    /// one of at most [`BUILD_PARTITIONS`] partitions of consecutive chunk
    /// indexes (few append streams: the writes stay sequential), then each
    /// partition, small enough for the cache, is sorted by chunk index and
    /// cut into chunks.
    pub(crate) fn from_entries(entries: Vec<(Key, Value)>, seeds: Seeds) -> Self {
        let mut m = CowHash::new(seeds);
        if entries.is_empty() {
            return m;
        }
        let n = entries.len();
        m.len = n;
        let count = n.div_ceil(CHUNK_LEN_SPLIT);
        m.level = count.ilog2();
        m.split = count - (1 << m.level);
        let per_part = count.div_ceil(BUILD_PARTITIONS);
        let parts_len = count.div_ceil(per_part);
        let part_cap = n / parts_len + n / parts_len / 8 + 16;
        let mut parts: Vec<Vec<(usize, u64, Key, Value)>> = (0..parts_len)
            .map(|_| Vec::with_capacity(part_cap))
            .collect();
        for (k, v) in entries {
            let h = seeds.hash(k.as_slice());
            let b = m.chunk_index(h);
            parts[b / per_part].push((b, h, k, v));
        }
        let mut next = 0;
        for (p, mut part) in parts.into_iter().enumerate() {
            part.sort_unstable_by_key(|e| e.0);
            let mut part = part.into_iter().peekable();
            while next < count.min((p + 1) * per_part) {
                let mut bucket = Vec::new();
                while let Some((_, h, k, v)) = part.next_if(|e| e.0 == next) {
                    bucket.push((h, k, v));
                }
                m.chunks.push(Chunk::build(bucket));
                next += 1;
            }
            debug_assert!(part.next().is_none(), "every entry placed");
        }
        debug_assert_eq!(m.chunks.len(), (1 << m.level) + m.split);
        m
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn chunk_index(&self, h: u64) -> usize {
        let low = (1usize << self.level) - 1;
        let b = h as usize & low;
        if b < self.split {
            h as usize & (low << 1 | 1)
        } else {
            b
        }
    }

    /// (chunk, slot) of `key`.
    fn locate(&self, h: u64, key: &Key) -> Option<(usize, usize)> {
        if self.chunks.is_empty() {
            return None;
        }
        let b = self.chunk_index(h);
        find(&self.chunks.get(b).slots, h, key).ok().map(|i| (b, i))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Value> {
        self.get_key(&Key::new(key))
    }

    /// Loads the home slot of `key` and returns something of it for
    /// `black_box`: a prefetch without `unsafe`. Loads of many keys do not
    /// depend on each other, so their cache misses overlap (see
    /// `map.rs`, which does this before looking up a batch in key order).
    pub(crate) fn touch(&self, key: &Key) -> usize {
        if self.chunks.is_empty() {
            return 0;
        }
        let h = self.seeds.hash(key.as_slice());
        let slots = &self.chunks.get(self.chunk_index(h)).slots;
        usize::from(slots[home(h, slots.len())].0.is_some())
    }

    /// Starts loading what a write of `key` will read: its home slot and
    /// the next one (a hit is ~1.5 probes away on average), and the slots'
    /// reference count (the copy-on-write check). Reads the directory entry
    /// (usually cached) and nothing else, so the misses of the next keys of
    /// a batch overlap with the work on the current one. A hint: it never
    /// changes a result.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        if self.chunks.is_empty() {
            return;
        }
        let h = self.seeds.hash(key);
        let slots = &self.chunks.get(self.chunk_index(h)).slots;
        let i = home(h, slots.len());
        let base = slots.as_ptr();
        prefetch(base.wrapping_add(i));
        if i + 1 < slots.len() {
            prefetch(base.wrapping_add(i + 1));
        }
        // The `Rc`'s counts sit right before the slots (two words, padded
        // to the slots' alignment).
        let header = 16usize.next_multiple_of(std::mem::align_of::<Slot>());
        prefetch(base.cast::<u8>().wrapping_sub(header));
    }

    /// Starts loading the directory entry of `key`'s chunk, reading only
    /// the page table of the directory (one pointer per page, cached): the
    /// first stage of a batch's prefetch, some keys before [`prefetch`]
    /// reads that entry. A hint.
    ///
    /// [`prefetch`]: CowHash::prefetch
    pub(crate) fn prefetch_directory(&self, key: &[u8]) {
        if self.chunks.is_empty() {
            return;
        }
        let h = self.seeds.hash(key);
        prefetch(self.chunks.get(self.chunk_index(h)));
    }

    pub(crate) fn get_key(&self, key: &Key) -> Option<&Value> {
        self.get_entry(key).map(|(_, v)| v)
    }

    /// The stored key and value of `key`.
    pub(crate) fn get_entry(&self, key: &Key) -> Option<(&Key, &Value)> {
        let h = self.seeds.hash(key.as_slice());
        let (b, i) = self.locate(h, key)?;
        self.chunks.get(b).slots[i].0.as_ref().map(|(k, v)| (k, v))
    }

    /// Looks `key` up once and lets `f` decide from its current value
    /// whether to write a new one (`Some`) or leave it (`None`).
    pub(crate) fn upsert<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(Option<&Value>) -> (Option<Value>, R),
    ) -> (R, Upserted) {
        let h = self.seeds.hash(key);
        let key = Key::new(key);
        let found = self.locate(h, &key);
        let current = found.map(|(b, i)| &self.chunks.get(b).slots[i].0.as_ref().expect("found").1);
        let (new, r) = f(current);
        let Some(value) = new else {
            return (r, Upserted::Unchanged);
        };
        let new_len = value.len();
        if let Some((b, i)) = found {
            let slots = Rc::make_mut(&mut self.chunks.get_mut(b).slots);
            let slot = slots[i].0.as_mut().expect("found");
            let old_len = std::mem::replace(&mut slot.1, value).len();
            return (r, Upserted::Replaced { old_len, new_len });
        }
        self.insert_new(h, key.clone(), value);
        (
            r,
            Upserted::Inserted {
                key,
                value_len: new_len,
            },
        )
    }

    /// Inserts a key known to be absent.
    fn insert_new(&mut self, h: u64, key: Key, value: Value) {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::empty());
        }
        let b = self.chunk_index(h);
        let c = self.chunks.get_mut(b);
        if fits(c.len + 1, c.slots.len()) {
            let slots = Rc::make_mut(&mut c.slots);
            let i = find(slots, h, &key).expect_err("absent");
            slots[i].0 = Some((key, value));
            c.len += 1;
        } else {
            // Grow: move everything into slots for one more entry.
            let seeds = self.seeds;
            c.len += 1;
            c.resize(&seeds);
            put_absent(
                Rc::get_mut(&mut c.slots).expect("just built"),
                h,
                key,
                value,
            );
        }
        self.len += 1;
        if self.len > self.chunks.len() * CHUNK_LEN_SPLIT {
            self.split_one();
        }
    }

    /// Removes `key`, returning its stored key and value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<(Key, Value)> {
        let h = self.seeds.hash(key);
        let (b, i) = self.locate(h, &Key::new(key))?;
        let c = self.chunks.get_mut(b);
        let out = remove_at(Rc::make_mut(&mut c.slots), i, &self.seeds);
        c.len -= 1;
        self.len -= 1;
        if c.slots.len() > CHUNK_CAP_MIN && c.len * 8 < c.slots.len() {
            let seeds = self.seeds;
            c.resize(&seeds);
        }
        if self.len == 0 {
            *self = CowHash::new(self.seeds);
        } else if self.chunks.len() > 1 && self.len < self.chunks.len() * CHUNK_LEN_MERGE {
            self.merge_one();
        }
        Some(out)
    }

    /// Splits the chunk at the split pointer by hash bit `level`.
    fn split_one(&mut self) {
        let s = self.split;
        let bit = 1u64 << self.level;
        let seeds = self.seeds;
        let c = self.chunks.get_mut(s);
        // Count first (hashing twice is cheaper than a vector of entries),
        // then move each entry straight into its new slots.
        let high_len = c
            .slots
            .iter()
            .filter_map(|s| s.0.as_ref())
            .filter(|(k, _)| seeds.hash(k.as_slice()) & bit != 0)
            .count();
        let low_len = c.len - high_len;
        let (mut low, mut high) = (Chunk::new_slots(low_len), Chunk::new_slots(high_len));
        {
            let low = Rc::get_mut(&mut low).expect("just allocated");
            let high = Rc::get_mut(&mut high).expect("just allocated");
            c.drain(&seeds, |h, k, v| {
                put_absent(if h & bit != 0 { &mut *high } else { &mut *low }, h, k, v)
            });
        }
        *c = Chunk {
            slots: low,
            len: low_len,
        };
        self.chunks.push(Chunk {
            slots: high,
            len: high_len,
        });
        self.split += 1;
        if self.split == 1 << self.level {
            self.level += 1;
            self.split = 0;
        }
        debug_assert_eq!(self.chunks.len(), (1 << self.level) + self.split);
    }

    /// Undoes the last split: the last chunk merges into its sibling.
    fn merge_one(&mut self) {
        debug_assert!(self.chunks.len() > 1);
        if self.split == 0 {
            self.level -= 1;
            self.split = 1 << self.level;
        }
        self.split -= 1;
        let mut last = self.chunks.pop().expect("more than one chunk");
        debug_assert_eq!(self.chunks.len(), (1 << self.level) + self.split);
        let s = self.split;
        let seeds = self.seeds;
        let c = self.chunks.get_mut(s);
        let len = c.len + last.len;
        let mut rc = Chunk::new_slots(len);
        {
            let slots = Rc::get_mut(&mut rc).expect("just allocated");
            c.drain(&seeds, |h, k, v| put_absent(slots, h, k, v));
            last.drain(&seeds, |h, k, v| put_absent(slots, h, k, v));
        }
        *c = Chunk { slots: rc, len };
    }

    /// Checks the invariants (O(n); tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        if self.chunks.is_empty() {
            assert_eq!((self.len, self.level, self.split), (0, 0, 0));
            return;
        }
        assert_eq!(self.chunks.len(), (1 << self.level) + self.split);
        assert!(self.split < 1 << self.level);
        let mut len = 0;
        for (b, c) in self.chunks.iter().enumerate() {
            assert!(c.slots.len() >= CHUNK_CAP_MIN && fits(c.len, c.slots.len()));
            let mut n = 0;
            for (i, s) in c.slots.iter().enumerate() {
                if let Some((k, _)) = &s.0 {
                    let h = self.seeds.hash(k.as_slice());
                    assert_eq!(self.chunk_index(h), b, "key in the wrong chunk");
                    assert_eq!(find(&c.slots, h, k), Ok(i), "key unreachable");
                    n += 1;
                }
            }
            assert_eq!(n, c.len);
            len += n;
        }
        assert_eq!(len, self.len);
    }

    /// Largest chunk length (tests of the spread).
    #[cfg(test)]
    fn chunk_len_max(&self) -> usize {
        self.chunks.iter().map(|c| c.len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    fn b(k: &[u8]) -> Bytes {
        Bytes::copy_from_slice(k)
    }

    fn put(m: &mut CowHash, k: &[u8], v: Bytes) -> Option<Bytes> {
        let (prev, _) = m.upsert(k, |cur| (Some(v.into()), cur.map(Value::to_bytes)));
        prev
    }

    fn get(m: &CowHash, k: &[u8]) -> Option<Bytes> {
        m.get(k).map(Value::to_bytes)
    }

    fn same(m: &CowHash, model: &Model<Bytes, Bytes>) {
        m.check_invariants();
        assert_eq!(m.len(), model.len());
        for (k, v) in model {
            assert_eq!(get(m, k).as_ref(), Some(v), "key {k:?}");
        }
    }

    proptest! {
        /// Inserts, overwrites, conditional writes and removals over a small
        /// key space (so chunks split, merge, grow and shrink), with clones
        /// taken along the way that must not move.
        #[test]
        fn behaves_like_a_map(
            ops in proptest::collection::vec((0u8..6, 0u16..600, any::<u8>()), 0..2000),
            seed in any::<u64>(),
        ) {
            let mut m = CowHash::new(Seeds::fixed(seed));
            let mut model: Model<Bytes, Bytes> = Model::new();
            let mut clones = Vec::new();
            for (i, (op, k, v)) in ops.iter().enumerate() {
                // Keys of 0..=40 bytes: inline and heap keys, every tail case.
                let len = (*k as usize * 7) % 41;
                let key: Vec<u8> = (0..len).map(|j| (*k as usize + j) as u8).chain(k.to_le_bytes()).collect();
                // Values of 0..=39 bytes: inline and heap values.
                let val = b(&vec![*v; *v as usize % 40]);
                match op {
                    0 | 1 => prop_assert_eq!(put(&mut m, &key, val.clone()), model.insert(b(&key), val)),
                    2 => {
                        // Write only when absent.
                        let (had, up) = m.upsert(&key, |cur| (cur.is_none().then(|| val.clone().into()), cur.is_some()));
                        prop_assert_eq!(had, model.contains_key(&key[..]));
                        prop_assert_eq!(matches!(up, Upserted::Inserted { .. }), !had);
                        model.entry(b(&key)).or_insert(val);
                    }
                    _ => prop_assert_eq!(m.remove(&key).map(|(_, v)| v.to_bytes()), model.remove(&key[..])),
                }
                if i % 250 == 0 {
                    clones.push((m.clone(), model.clone()));
                }
                prop_assert_eq!(get(&m, &key), model.get(&key[..]).cloned());
            }
            same(&m, &model);
            for (c, cm) in &clones {
                same(c, cm);
            }
        }
    }

    /// Sequential and random 12-byte keys spread evenly over the chunks;
    /// growth to 100,000 keys and back down to none keeps the invariants.
    #[test]
    fn directory_pages_grow_by_doubling_and_index_every_chunk() {
        let mut d = Directory::default();
        d.push(Chunk::placeholder());
        assert_eq!(d.pages.len(), 1);
        assert_eq!(d.pages[0].len(), 1, "a small store keeps a one-chunk page");
        for n in 2..=(2 * PAGE_CHUNKS + 3) {
            d.push(Chunk {
                slots: Rc::from(Vec::new()),
                len: n,
            });
            assert_eq!(d.len(), n);
            assert_eq!(d.get(n - 1).len, n, "chunk {n} reachable");
            let last = d.pages.last().unwrap().len();
            let at = (n - 1) % PAGE_CHUNKS + 1;
            assert!(last >= at && last <= 2 * at.max(1), "{n}: last page {last}");
        }
        for n in (1..=(2 * PAGE_CHUNKS + 3)).rev() {
            let c = d.pop().unwrap();
            assert_eq!(c.len, if n == 1 { 0 } else { n });
            assert_eq!(d.len(), n - 1);
        }
        assert!(d.pages.is_empty());
    }

    #[test]
    fn grows_and_shrinks_evenly() {
        let mut m = CowHash::new(Seeds::random());
        let mut model = Model::new();
        for n in 0..100_000u64 {
            let key = [&7u32.to_be_bytes()[..], &n.to_be_bytes()].concat();
            put(&mut m, &key, b(&n.to_le_bytes()));
            model.insert(b(&key), b(&n.to_le_bytes()));
        }
        same(&m, &model);
        assert!(
            m.chunk_len_max() <= 4 * CHUNK_LEN_SPLIT,
            "uneven spread: a chunk of {}",
            m.chunk_len_max()
        );
        let snapshot = m.clone();
        for n in (0..100_000u64).rev() {
            if n % 3 != 0 {
                let key = [&7u32.to_be_bytes()[..], &n.to_be_bytes()].concat();
                assert!(m.remove(&key).is_some());
                model.remove(&key[..]);
            }
        }
        same(&m, &model);
        assert!(m.chunks.len() * CHUNK_LEN_MERGE <= m.len() + CHUNK_LEN_MERGE);
        for n in 0..100_000u64 {
            let key = [&7u32.to_be_bytes()[..], &n.to_be_bytes()].concat();
            m.remove(&key);
        }
        assert_eq!(m.len(), 0);
        m.check_invariants();
        assert_eq!(snapshot.len(), 100_000);
        snapshot.check_invariants();
    }

    /// A table built in one pass has the invariants of one grown key by key
    /// and keeps growing and shrinking correctly.
    #[test]
    fn built_in_one_pass() {
        let s = CHUNK_LEN_SPLIT;
        for n in [
            0usize,
            1,
            s - 1,
            s,
            s + 1,
            2 * s - 1,
            2 * s,
            2 * s + 1,
            1000,
            20_000,
        ] {
            let entries: Vec<(Key, Value)> = (0..n as u64)
                .map(|i| {
                    (
                        Key::new(&i.to_be_bytes()),
                        b(&i.to_le_bytes().repeat(4)[..(i % 33) as usize]).into(),
                    )
                })
                .collect();
            let model: Model<Bytes, Bytes> = entries
                .iter()
                .map(|(k, v)| (b(k.as_slice()), v.to_bytes()))
                .collect();
            let mut m = CowHash::from_entries(entries, Seeds::random());
            same(&m, &model);
            let mut model = model;
            for i in (0..n as u64).step_by(3) {
                assert!(m.remove(&i.to_be_bytes()).is_some());
                model.remove(&i.to_be_bytes()[..]);
            }
            for i in n as u64..n as u64 + 500 {
                put(&mut m, &i.to_be_bytes(), b(b"x"));
                model.insert(b(&i.to_be_bytes()), b(b"x"));
            }
            same(&m, &model);
        }
    }

    #[test]
    fn hash_reads_every_byte() {
        let s = Seeds::fixed(1);
        for len in 0..40usize {
            let key: Vec<u8> = (0..len as u8).collect();
            let h = s.hash(&key);
            for i in 0..len {
                let mut other = key.clone();
                other[i] ^= 1;
                assert_ne!(s.hash(&other), h, "len {len} byte {i}");
            }
            let mut longer = key.clone();
            longer.push(0);
            assert_ne!(s.hash(&longer), h, "len {len} vs zero-extended");
        }
    }
}
