//! The Redis data types of the KV store: lists, hashes, sets, sorted sets
//! and streams, each a deterministic in-memory structure behind one
//! [`Value::Typed`] slot of the hash index.
//!
//! ```text
//!  Collection ─┬─ List    VecDeque<Elem>                        LPUSH/RPOP: O(1)
//!              ├─ Hash    BTreeMap<field Elem, value Elem>      field order
//!              ├─ Set     members: Vec<Elem>                    a uniform pick by index
//!              │          index: BTreeMap<Elem, position>       (SPOP, SRANDMEMBER)
//!              ├─ ZSet    scores: BTreeMap<member, f64>         ZSCORE
//!              │          order:  BTreeSet<(Score, member)>     ZRANGE, ZPOPMIN
//!              └─ Stream  BTreeMap<StreamId, [field, value]*>   XRANGE
//!                         last: StreamId (survives trimming)
//! ```
//! No hash-order iteration anywhere: every order a client can observe is a
//! function of the commands alone, so replicas agree byte for byte.
//! Elements are [`Elem`]s: a [`Value`] string (inline up to 23 bytes, no
//! allocation), copied out of the command buffer.
//!
//! Every structure keeps `bytes`, the sum of its element lengths, so the
//! store's byte count stays O(1) to maintain.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::value::Value;

/// A collection's kind (what `TYPE` answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    List,
    Hash,
    Set,
    ZSet,
    Stream,
}

impl Kind {
    /// The name Redis' `TYPE` answers.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::Stream => "stream",
        }
    }
}

/// An element of a collection: a byte string, inline when short. Ordered
/// by its bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Elem(Value);

impl Elem {
    /// A copy of `b`.
    pub(crate) fn new(b: &[u8]) -> Self {
        Elem(Value::copy(b))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        self.0.to_bytes()
    }
}

impl Ord for Elem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl PartialOrd for Elem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::borrow::Borrow<[u8]> for Elem {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct List {
    pub(crate) items: VecDeque<Elem>,
    pub(crate) bytes: usize,
}

/// A hash: fields to values, in field order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hash {
    pub(crate) map: BTreeMap<Elem, Elem>,
    pub(crate) bytes: usize,
}

/// A set: its members in an order of their own (insertion order, changed
/// by removals: the last member moves into the hole), and an index from
/// member to position. The order is part of the state (snapshots keep it):
/// a pick by index is then the same on every replica.
///
/// Invariant: `index[members[i]] == i` for every `i`, and nothing else is
/// in `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Set {
    pub(crate) members: Vec<Elem>,
    pub(crate) index: BTreeMap<Elem, usize>,
    pub(crate) bytes: usize,
}

/// A score of a sorted set: an `f64` that is never NaN (and never `-0.0`:
/// stored as `0.0`), so it has a total order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Score(pub(crate) f64);

impl Score {
    /// `None` for NaN; `-0.0` becomes `0.0`.
    pub(crate) fn new(f: f64) -> Option<Score> {
        if f.is_nan() {
            None
        } else if f == 0.0 {
            Some(Score(0.0))
        } else {
            Some(Score(f))
        }
    }
}

impl Eq for Score {}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A sorted set: ordered by score, then member bytes (as Redis).
///
/// Invariant: `order` holds exactly `(scores[m], m)` for every member `m`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ZSet {
    pub(crate) scores: BTreeMap<Elem, Score>,
    pub(crate) order: BTreeSet<(Score, Elem)>,
    pub(crate) bytes: usize,
}

/// A stream entry id: milliseconds and sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    /// The text form, `<ms>-<seq>`.
    pub(crate) fn to_bytes(self) -> Bytes {
        Bytes::from(format!("{}-{}", self.ms, self.seq))
    }

    /// The next id, if any.
    pub(crate) fn next(self) -> Option<StreamId> {
        if self.seq < u64::MAX {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            })
        } else if self.ms < u64::MAX {
            Some(StreamId {
                ms: self.ms + 1,
                seq: 0,
            })
        } else {
            None
        }
    }
}

/// A stream: entries by id, each a list of field, value, field, value...
///
/// Invariant: every id `<= last`; `last` only grows (it survives trimming,
/// as in Redis).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stream {
    pub(crate) entries: BTreeMap<StreamId, Vec<Elem>>,
    pub(crate) last: StreamId,
    pub(crate) bytes: usize,
}

/// Bytes a stream entry accounts for.
pub(crate) fn stream_entry_bytes(fields: &[Elem]) -> usize {
    16 + fields.iter().map(Elem::len).sum::<usize>()
}

/// One collection (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Collection {
    List(List),
    Hash(Hash),
    Set(Set),
    ZSet(ZSet),
    Stream(Stream),
}

impl Collection {
    /// An empty collection of `kind`.
    pub(crate) fn new(kind: Kind) -> Self {
        match kind {
            Kind::List => Collection::List(List::default()),
            Kind::Hash => Collection::Hash(Hash::default()),
            Kind::Set => Collection::Set(Set::default()),
            Kind::ZSet => Collection::ZSet(ZSet::default()),
            Kind::Stream => Collection::Stream(Stream::default()),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Collection::List(_) => Kind::List,
            Collection::Hash(_) => Kind::Hash,
            Collection::Set(_) => Kind::Set,
            Collection::ZSet(_) => Kind::ZSet,
            Collection::Stream(_) => Kind::Stream,
        }
    }

    /// Sum of the element lengths.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Collection::List(l) => l.bytes,
            Collection::Hash(h) => h.bytes,
            Collection::Set(s) => s.bytes,
            Collection::ZSet(z) => z.bytes,
            Collection::Stream(s) => s.bytes,
        }
    }

    /// Number of elements (entries of a stream, pairs of a hash).
    pub(crate) fn len(&self) -> usize {
        match self {
            Collection::List(l) => l.items.len(),
            Collection::Hash(h) => h.map.len(),
            Collection::Set(s) => s.members.len(),
            Collection::ZSet(z) => z.scores.len(),
            Collection::Stream(s) => s.entries.len(),
        }
    }

    /// True if an emptied collection must disappear (every kind but a
    /// stream, which Redis keeps with its last id).
    pub(crate) fn vanishes(&self) -> bool {
        self.len() == 0 && self.kind() != Kind::Stream
    }

    /// Checks the structure's invariants (tests, debug builds).
    pub(crate) fn check_invariants(&self) {
        match self {
            Collection::List(l) => {
                assert_eq!(l.bytes, l.items.iter().map(Elem::len).sum::<usize>());
            }
            Collection::Hash(h) => {
                let b: usize = h.map.iter().map(|(f, v)| f.len() + v.len()).sum();
                assert_eq!(h.bytes, b);
            }
            Collection::Set(s) => {
                assert_eq!(s.members.len(), s.index.len());
                for (i, m) in s.members.iter().enumerate() {
                    assert_eq!(s.index.get(m.as_slice()), Some(&i));
                }
                assert_eq!(s.bytes, s.members.iter().map(Elem::len).sum::<usize>());
            }
            Collection::ZSet(z) => {
                assert_eq!(z.scores.len(), z.order.len());
                for (m, s) in &z.scores {
                    assert!(z.order.contains(&(*s, m.clone())));
                }
                let b: usize = z.scores.keys().map(|m| m.len() + 8).sum();
                assert_eq!(z.bytes, b);
            }
            Collection::Stream(s) => {
                if let Some((id, _)) = s.entries.last_key_value() {
                    assert!(*id <= s.last);
                }
                let b: usize = s.entries.values().map(|f| stream_entry_bytes(f)).sum();
                assert_eq!(s.bytes, b);
            }
        }
    }
}

impl List {
    pub(crate) fn push(&mut self, v: &[u8], left: bool) {
        self.bytes += v.len();
        if left {
            self.items.push_front(Elem::new(v));
        } else {
            self.items.push_back(Elem::new(v));
        }
    }

    pub(crate) fn pop(&mut self, left: bool) -> Option<Elem> {
        let e = if left {
            self.items.pop_front()
        } else {
            self.items.pop_back()
        }?;
        self.bytes -= e.len();
        Some(e)
    }
}

impl Hash {
    /// Sets `field`; true if it is new.
    pub(crate) fn set(&mut self, field: &[u8], value: &[u8]) -> bool {
        match self.map.get_mut(field) {
            Some(v) => {
                self.bytes = self.bytes + value.len() - v.len();
                *v = Elem::new(value);
                false
            }
            None => {
                self.bytes += field.len() + value.len();
                self.map.insert(Elem::new(field), Elem::new(value));
                true
            }
        }
    }

    pub(crate) fn remove(&mut self, field: &[u8]) -> bool {
        match self.map.remove_entry(field) {
            Some((f, v)) => {
                self.bytes -= f.len() + v.len();
                true
            }
            None => false,
        }
    }
}

impl Set {
    /// Adds `m`; true if it is new.
    pub(crate) fn add(&mut self, m: &[u8]) -> bool {
        if self.index.contains_key(m) {
            return false;
        }
        let e = Elem::new(m);
        self.bytes += e.len();
        self.index.insert(e.clone(), self.members.len());
        self.members.push(e);
        true
    }

    /// Removes `m`; true if it was there.
    pub(crate) fn remove(&mut self, m: &[u8]) -> bool {
        match self.index.get(m) {
            Some(&i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Removes the member at position `i` (the last one takes its place).
    pub(crate) fn remove_at(&mut self, i: usize) -> Elem {
        let e = self.members.swap_remove(i);
        self.index.remove(e.as_slice());
        if let Some(moved) = self.members.get(i) {
            *self
                .index
                .get_mut(moved.as_slice())
                .expect("indexed member") = i;
        }
        self.bytes -= e.len();
        e
    }
}

impl ZSet {
    /// Sets the score of `m`; true if `m` is new.
    pub(crate) fn set(&mut self, m: &[u8], score: Score) -> bool {
        match self.scores.get_mut(m) {
            Some(s) => {
                let old = *s;
                if old != score {
                    *s = score;
                    let e = Elem::new(m);
                    self.order.remove(&(old, e.clone()));
                    self.order.insert((score, e));
                }
                false
            }
            None => {
                let e = Elem::new(m);
                self.bytes += e.len() + 8;
                self.scores.insert(e.clone(), score);
                self.order.insert((score, e));
                true
            }
        }
    }

    pub(crate) fn remove(&mut self, m: &[u8]) -> bool {
        match self.scores.remove_entry(m) {
            Some((e, s)) => {
                self.bytes -= e.len() + 8;
                self.order.remove(&(s, e));
                true
            }
            None => false,
        }
    }

    /// Removes and returns the lowest (or highest) member.
    pub(crate) fn pop(&mut self, max: bool) -> Option<(Elem, Score)> {
        let (s, e) = if max {
            self.order.pop_last()
        } else {
            self.order.pop_first()
        }?;
        self.scores.remove(e.as_slice());
        self.bytes -= e.len() + 8;
        Some((e, s))
    }
}

/// A score range as `ZRANGEBYSCORE` takes it: `min <= score <= max`,
/// either end exclusive with Redis' `(`. A NaN end makes it empty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ScoreRange {
    pub(crate) min: f64,
    pub(crate) min_exclusive: bool,
    pub(crate) max: f64,
    pub(crate) max_exclusive: bool,
}

/// The next `f64` up (`f64::next_up`, newer than our MSRV); `None` for
/// `+inf` and NaN.
fn next_up(f: f64) -> Option<f64> {
    if f.is_nan() || f == f64::INFINITY {
        None
    } else if f == 0.0 {
        Some(f64::from_bits(1))
    } else if f > 0.0 {
        Some(f64::from_bits(f.to_bits() + 1))
    } else {
        Some(f64::from_bits(f.to_bits() - 1))
    }
}

impl ScoreRange {
    /// True if `s` is in the range.
    pub(crate) fn contains(&self, s: f64) -> bool {
        let above = if self.min_exclusive {
            s > self.min
        } else {
            s >= self.min
        };
        let below = if self.max_exclusive {
            s < self.max
        } else {
            s <= self.max
        };
        above && below
    }
}

impl ZSet {
    /// The `(score, member)` pairs with a score in `range`, in order:
    /// O(log n) to the first, then O(1) each.
    pub(crate) fn by_score(
        &self,
        range: &ScoreRange,
    ) -> impl DoubleEndedIterator<Item = &(Score, Elem)> + '_ {
        use std::ops::Bound;
        // Every member sorts after the empty one: `(s, "")` is the first
        // position of score `s`. Scores are never NaN nor -0.0.
        let at = |f: f64| (Score(if f == 0.0 { 0.0 } else { f }), Elem::new(b""));
        let lo = if self.order.is_empty() || range.min.is_nan() || range.max.is_nan() {
            None
        } else if range.min_exclusive {
            next_up(range.min)
        } else {
            Some(range.min)
        };
        // The end: the first position past the range (`None`: the end).
        let hi = if range.max_exclusive {
            Some(range.max)
        } else {
            next_up(range.max)
        };
        let r = lo.and_then(|lo| {
            let start = at(lo);
            match hi {
                None => Some(self.order.range((Bound::Included(start), Bound::Unbounded))),
                Some(hi) => {
                    let end = at(hi);
                    // `range` panics on a reversed range: empty instead.
                    (start <= end).then(|| {
                        self.order
                            .range((Bound::Included(start), Bound::Excluded(end)))
                    })
                }
            }
        });
        debug_assert!(r
            .clone()
            .into_iter()
            .flatten()
            .all(|(s, _)| range.contains(s.0)));
        r.into_iter().flatten()
    }
}

/// A bound of a lex range (`ZRANGEBYLEX`), as Redis writes it: `-` (before
/// everything), `+` (after everything), `[m` (inclusive), `(m`
/// (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LexBound<'a> {
    Min,
    Max,
    Inclusive(&'a [u8]),
    Exclusive(&'a [u8]),
}

impl<'a> LexBound<'a> {
    /// `None` unless `b` is a bound in Redis' syntax.
    pub(crate) fn parse(b: &'a [u8]) -> Option<Self> {
        match b.split_first()? {
            (b'-', []) => Some(LexBound::Min),
            (b'+', []) => Some(LexBound::Max),
            (b'[', m) => Some(LexBound::Inclusive(m)),
            (b'(', m) => Some(LexBound::Exclusive(m)),
            _ => None,
        }
    }

    /// True if `m` is above this bound taken as a range's start.
    fn admits_above(self, m: &[u8]) -> bool {
        match self {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Inclusive(x) => m >= x,
            LexBound::Exclusive(x) => m > x,
        }
    }

    /// True if `m` is below this bound taken as a range's end.
    fn admits_below(self, m: &[u8]) -> bool {
        match self {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Inclusive(x) => m <= x,
            LexBound::Exclusive(x) => m < x,
        }
    }
}

impl ZSet {
    /// The `(score, member)` pairs whose member lies between `min` and
    /// `max`, in order. Redis defines lex ranges for sets whose scores are
    /// all equal: then O(log n) to the first; otherwise every member in
    /// the range, in the set's order (O(n)).
    pub(crate) fn by_lex<'a>(
        &'a self,
        min: LexBound<'a>,
        max: LexBound<'a>,
    ) -> Box<dyn DoubleEndedIterator<Item = &'a (Score, Elem)> + 'a> {
        use std::ops::Bound;
        let (Some(first), Some(last)) = (self.order.first(), self.order.last()) else {
            return Box::new(std::iter::empty());
        };
        if first.0 != last.0 {
            return Box::new(self.order.iter().filter(move |(_, m)| {
                min.admits_above(m.as_slice()) && max.admits_below(m.as_slice())
            }));
        }
        let s = first.0;
        let lo = match min {
            LexBound::Min => Bound::Unbounded,
            LexBound::Max => return Box::new(std::iter::empty()),
            LexBound::Inclusive(x) => Bound::Included((s, Elem::new(x))),
            LexBound::Exclusive(x) => Bound::Excluded((s, Elem::new(x))),
        };
        let hi = match max {
            LexBound::Max => Bound::Unbounded,
            LexBound::Min => return Box::new(std::iter::empty()),
            LexBound::Inclusive(x) => Bound::Included((s, Elem::new(x))),
            LexBound::Exclusive(x) => Bound::Excluded((s, Elem::new(x))),
        };
        // `range` panics on a reversed range (or an empty one with both
        // ends excluded): empty instead.
        let ordered = match (&lo, &hi) {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a < b || (a == b && !matches!((&lo, &hi), (Bound::Excluded(_), Bound::Excluded(_))))
            }
            _ => true,
        };
        if !ordered {
            return Box::new(std::iter::empty());
        }
        Box::new(self.order.range((lo, hi)))
    }
}

/// A float as Redis reads a hash value for `HINCRBYFLOAT` (`string2ld`):
/// decimal or exponent notation, `inf`; no spaces, never NaN.
pub(crate) fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() >= 5 * 1024 {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    (!f.is_nan()).then_some(f)
}

/// The text `HINCRBYFLOAT` stores and replies: an integer below 2^53 in
/// full; else fixed notation rounded to 15 significant digits and to at
/// most 17 decimals, trailing zeros (and a trailing `.`) trimmed; `-0` as
/// `0`.
///
/// Redis prints its `long double` sum with `%.17Lf` and trims the zeros;
/// its 64-bit mantissa makes short decimal sums come out short (`0.1` +
/// `0.2` is `0.3`). Rounding our `f64` sum to 15 significant digits gives
/// the same text whenever the exact decimal result has at most 15
/// significant digits (and at most 17 decimals), which covers the common
/// cases, and integers below 2^53 are exact in both; longer results
/// differ from Redis' in their last digits.
pub(crate) fn format_incr_float(f: f64) -> Bytes {
    debug_assert!(f.is_finite());
    if f == 0.0 {
        return Bytes::from_static(b"0");
    }
    const EXACT_MAX: f64 = (1u64 << 53) as f64;
    if f.fract() == 0.0 && f.abs() < EXACT_MAX {
        return Bytes::from((f as i64).to_string());
    }
    let sci = format!("{f:.14e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let mut s = if exp >= 14 {
        // No decimals: the 15 digits, then zeros (not the binary value's
        // noise digits).
        let mut s: String = mantissa.chars().filter(|c| *c != '.').collect();
        for _ in 14..exp {
            s.push('0');
        }
        s
    } else {
        let decimals = (14 - exp).min(17) as usize;
        format!("{f:.decimals$}")
    };
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    if s == "-0" {
        s = "0".into();
    }
    Bytes::from(s)
}

/// A score as Redis replies it: `inf`, `-inf`, or the shortest decimal
/// that reads back as the same `f64`, in `%.17g` style (`1`, `1.5`,
/// `0.0001`, `1e+20`, `1.5e-07`).
pub(crate) fn format_score(f: f64) -> Bytes {
    if f.is_infinite() {
        return Bytes::from_static(if f > 0.0 { b"inf" } else { b"-inf" });
    }
    if f == 0.0 {
        return Bytes::from_static(b"0");
    }
    // Shortest round-trip digits and exponent: "d.ddddde<exp>".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(24);
    if negative {
        out.push('-');
    }
    if (-4..17).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.push('0');
        }
        out.push_str(&a.to_string());
    }
    Bytes::from(out)
}

/// A deterministic pseudo-random sequence (SplitMix64) from a seed the
/// proposer chose: picks of SPOP and SRANDMEMBER.
pub(crate) struct Picker(u64);

impl Picker {
    pub(crate) fn new(seed: u64) -> Self {
        Picker(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Redis' index normalization for a range `start..=stop` over `len`
/// elements (negative counts from the end): the inclusive range, or `None`
/// if it is empty.
pub(crate) fn normalize_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut start = if start < 0 { start + len } else { start };
    let mut stop = if stop < 0 { stop + len } else { stop };
    if start < 0 {
        start = 0;
    }
    if start > stop || start >= len {
        return None;
    }
    if stop >= len {
        stop = len - 1;
    }
    Some((start as usize, stop as usize))
}

/// Redis' normalization of one index (negative counts from the end).
pub(crate) fn normalize_index(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { index + len as i64 } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_format_like_redis() {
        for (f, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.0, "0"),
            (-0.0, "0"),
            (100.0, "100"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (1.25e20, "1.25e+20"),
            (123456789.125, "123456789.125"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(&format_score(f)[..], want.as_bytes(), "{f}");
        }
        // Round trip of awkward values.
        for f in [0.1 + 0.2, 1.0 / 3.0, f64::MAX, f64::MIN_POSITIVE, 5e-324] {
            let s = format_score(f);
            let back: f64 = std::str::from_utf8(&s).unwrap().parse().unwrap();
            assert_eq!(back, f, "{s:?}");
        }
    }

    #[test]
    fn incr_floats_format_like_redis() {
        for (f, want) in [
            (0.1 + 0.2, "0.3"),
            (10.5 + 0.1, "10.6"),
            (10.6 - 5.0, "5.6"),
            (5000.0 + 200.0, "5200"),
            (3.0, "3"),
            (-2.5, "-2.5"),
            (1e20, "100000000000000000000"),
            (1.5e25, "15000000000000000000000000"),
            (1.0 / 3.0, "0.333333333333333"),
            (123456.789, "123456.789"),
            (1e-17, "0.00000000000000001"),
            (1e-20, "0"),
            (-1e-20, "0"),
            (999.9999999999999999, "1000"),
            (1234567890123457.0, "1234567890123457"),
            (-9007199254740991.0, "-9007199254740991"),
            (9007199254740992.0, "9007199254740990"),
        ] {
            assert_eq!(&format_incr_float(f)[..], want.as_bytes(), "{f:e}");
        }
        assert_eq!(parse_float(b"1.5"), Some(1.5));
        assert_eq!(parse_float(b"5.0e3"), Some(5000.0));
        assert_eq!(parse_float(b"-inf"), Some(f64::NEG_INFINITY));
        for bad in [&b""[..], b" 1", b"1 ", b"nan", b"abc", b"1.5x", b"\xff"] {
            assert_eq!(parse_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn score_ranges_match_their_predicate() {
        let mut z = ZSet::default();
        let scores = [
            f64::NEG_INFINITY,
            -1.0,
            0.0,
            0.5,
            1.0,
            1.0,
            2.0,
            f64::INFINITY,
        ];
        for (i, s) in scores.iter().enumerate() {
            z.set(format!("m{i}").as_bytes(), Score::new(*s).unwrap());
        }
        let ends = [
            f64::NEG_INFINITY,
            -1.0,
            -0.0,
            0.0,
            0.7,
            1.0,
            2.0,
            f64::INFINITY,
            f64::NAN,
        ];
        for min in ends {
            for max in ends {
                for (min_exclusive, max_exclusive) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let r = ScoreRange {
                        min,
                        min_exclusive,
                        max,
                        max_exclusive,
                    };
                    let got: Vec<_> = z.by_score(&r).cloned().collect();
                    let want: Vec<_> = z
                        .order
                        .iter()
                        .filter(|(s, _)| r.contains(s.0))
                        .cloned()
                        .collect();
                    assert_eq!(got, want, "{r:?}");
                    let back: Vec<_> = z.by_score(&r).rev().cloned().collect();
                    assert_eq!(back, want.into_iter().rev().collect::<Vec<_>>(), "{r:?}");
                }
            }
        }
    }

    #[test]
    fn lex_ranges_match_their_predicate() {
        let bounds: Vec<&[u8]> = vec![
            b"-", b"+", b"[", b"(", b"[a", b"(a", b"[b", b"(b", b"[bb", b"(c", b"[z",
        ];
        for same_scores in [true, false] {
            let mut z = ZSet::default();
            for (i, m) in ["a", "b", "ba", "bb", "c"].iter().enumerate() {
                let s = if same_scores { 0.0 } else { (i % 2) as f64 };
                z.set(m.as_bytes(), Score::new(s).unwrap());
            }
            for lo in &bounds {
                for hi in &bounds {
                    let (min, max) = (LexBound::parse(lo).unwrap(), LexBound::parse(hi).unwrap());
                    let got: Vec<_> = z.by_lex(min, max).cloned().collect();
                    let want: Vec<_> = z
                        .order
                        .iter()
                        .filter(|(_, m)| {
                            min.admits_above(m.as_slice()) && max.admits_below(m.as_slice())
                        })
                        .cloned()
                        .collect();
                    assert_eq!(got, want, "{lo:?} {hi:?}");
                    let back: Vec<_> = z.by_lex(min, max).rev().cloned().collect();
                    assert_eq!(back, want.into_iter().rev().collect::<Vec<_>>());
                }
            }
        }
        for bad in [&b""[..], b"a", b"--", b"+a", b"]a"] {
            assert_eq!(LexBound::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_normalize_like_redis() {
        assert_eq!(normalize_range(0, -1, 3), Some((0, 2)));
        assert_eq!(normalize_range(-100, 100, 3), Some((0, 2)));
        assert_eq!(normalize_range(2, 1, 3), None);
        assert_eq!(normalize_range(3, 5, 3), None);
        assert_eq!(normalize_range(0, 0, 0), None);
        assert_eq!(normalize_range(-2, -1, 3), Some((1, 2)));
        assert_eq!(normalize_range(i64::MIN, i64::MAX, 3), Some((0, 2)));
        assert_eq!(normalize_index(-1, 3), Some(2));
        assert_eq!(normalize_index(3, 3), None);
        assert_eq!(normalize_index(-4, 3), None);
    }

    #[test]
    fn set_keeps_its_index() {
        let mut s = Set::default();
        for m in ["a", "b", "c", "d"] {
            assert!(s.add(m.as_bytes()));
        }
        assert!(!s.add(b"b"));
        assert!(s.remove(b"a"));
        assert!(!s.remove(b"a"));
        let c = Collection::Set(s.clone());
        c.check_invariants();
        assert_eq!(s.members[0].as_slice(), b"d");
        let e = s.remove_at(0);
        assert_eq!(e.as_slice(), b"d");
        Collection::Set(s).check_invariants();
    }

    #[test]
    fn picker_is_uniform_enough() {
        let mut p = Picker::new(7);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[p.below(4)] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }
}
