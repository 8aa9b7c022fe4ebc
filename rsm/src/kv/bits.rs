//! Bit operations on strings (Redis `SETBIT`, `BITOP`) and the description
//! of a key that Redis' `OBJECT ENCODING` and `MEMORY USAGE` give.
//!
//! Bits are numbered as Redis numbers them: bit 0 is the most significant
//! bit of byte 0.

use bytes::Bytes;

use super::collection::Collection;
use super::command::{BitOperation, KvError, KvResult, VALUE_BYTES_MAX};
use super::key::{Key, INLINE_BYTES};
use super::value::{Value, INLINE_VALUE_BYTES};
use super::{check_key, KvStore};

/// Bytes of one slot of the hash index (a key and its value inline).
const SLOT_BYTES: u64 = 64;
/// Bytes a deadline costs (its entry in the deadline index, by key and by
/// time).
const DEADLINE_BYTES: u64 = 48;
/// Bytes an element of a collection costs besides its own bytes, per
/// kind: a list's `Elem` in its deque; a hash's pair in a B-tree; a set's
/// member in its vector and its index; a sorted set's member by name and
/// by score; a stream's entry.
const LIST_ELEM_BYTES: u64 = 32;
const HASH_PAIR_BYTES: u64 = 80;
const SET_MEMBER_BYTES: u64 = 88;
const ZSET_MEMBER_BYTES: u64 = 104;
const STREAM_ENTRY_BYTES: u64 = 64;

/// Redis' thresholds for its compact encodings (`*-max-listpack-entries`,
/// `*-max-listpack-value`, `set-max-intset-entries`, `list-max-listpack-size
/// -2`: 8 KiB) at their defaults.
const LISTPACK_ENTRIES_MAX: usize = 128;
const LISTPACK_VALUE_BYTES_MAX: usize = 64;
const INTSET_ENTRIES_MAX: usize = 512;
const LIST_LISTPACK_BYTES_MAX: usize = 8 << 10;
/// Redis' `OBJ_ENCODING_EMBSTR_SIZE_LIMIT`.
const EMBSTR_BYTES_MAX: usize = 44;

impl KvStore {
    /// `SETBIT key offset value` (see [`KvCommand::SetBit`](super::KvCommand::SetBit)).
    pub(super) fn set_bit(&mut self, key: &[u8], offset: u64, bit: bool) -> KvResult {
        if let Some(e) = check_key(key) {
            return KvResult::Error(e);
        }
        let byte = offset / 8;
        if byte >= VALUE_BYTES_MAX as u64 {
            return KvResult::Error(KvError::ValueTooLarge);
        }
        let byte = byte as usize;
        let mask = 0x80u8 >> (offset % 8);
        self.map.upsert(key, |cur| {
            if cur.is_some_and(Value::is_typed) {
                return (None, KvResult::Error(KvError::WrongType));
            }
            let old = cur.map_or(&[][..], |c| c.as_slice());
            let was = old.get(byte).is_some_and(|b| b & mask != 0);
            if cur.is_some() && was == bit {
                // Nothing changes (Redis still creates a missing key).
                return (None, KvResult::Int(i64::from(was)));
            }
            let mut buf = old.to_vec();
            if buf.len() <= byte {
                buf.resize(byte + 1, 0);
            }
            if bit {
                buf[byte] |= mask;
            } else {
                buf[byte] &= !mask;
            }
            (Some(Value::from(buf)), KvResult::Int(i64::from(was)))
        })
    }

    /// `BITOP op dst sources...` (see [`KvCommand::BitOp`](super::KvCommand::BitOp)).
    pub(super) fn bit_op(&mut self, op: BitOperation, dst: &[u8], sources: &[Bytes]) -> KvResult {
        if let Some(e) = check_key(dst) {
            return KvResult::Error(e);
        }
        let mut values: Vec<&[u8]> = Vec::with_capacity(sources.len());
        for s in sources {
            match self.map.get(s) {
                Some(v) if v.is_typed() => return KvResult::Error(KvError::WrongType),
                Some(v) => values.push(v.as_slice()),
                None => values.push(&[]),
            }
        }
        let len = values.iter().map(|v| v.len()).max().unwrap_or(0);
        debug_assert!(len <= VALUE_BYTES_MAX, "a stored value is within bounds");
        let at = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
        let out: Vec<u8> = match (op, values.split_first()) {
            (_, None) => Vec::new(),
            (BitOperation::Not, Some((first, _))) => first.iter().map(|b| !b).collect(),
            (op, Some((first, rest))) => (0..len)
                .map(|i| {
                    rest.iter().fold(at(first, i), |acc, v| match op {
                        BitOperation::And => acc & at(v, i),
                        BitOperation::Or => acc | at(v, i),
                        _ => acc ^ at(v, i),
                    })
                })
                .collect(),
        };
        let n = out.len() as u64;
        // The destination is replaced whatever it held (its deadline goes
        // with it), or deleted by an empty result, as Redis does.
        self.remove_key(dst);
        if !out.is_empty() {
            self.map.upsert(dst, |_| (Some(Value::from(out)), ()));
        }
        KvResult::Len(n)
    }

    /// `[type, encoding, bytes]` of `key`, or nothing if it is absent (see
    /// [`KvQuery::Describe`](super::KvQuery::Describe)).
    ///
    /// The encoding is the one Redis 7 would report for a value of this
    /// type, size and content with its default thresholds: a string is
    /// `int` (a decimal `i64` of at most 20 bytes), `embstr` (at most 44
    /// bytes) or `raw`; a list `listpack` (at most 8 KiB of elements) or
    /// `quicklist`; a set `intset` (at most 512 integers), `listpack` (at
    /// most 128 members of at most 64 bytes) or `hashtable`; a hash
    /// `listpack` or `hashtable` and a sorted set `listpack` or `skiplist`
    /// by the same 128 / 64 rule; a stream `stream`. Redis never converts
    /// back to the compact form when a collection shrinks; this answer
    /// follows the current size.
    ///
    /// The bytes are an estimate of what the key takes here: its slot of
    /// the index, the key and value bytes stored outside it, a deadline,
    /// and for a collection its element bytes plus a fixed overhead per
    /// element of its kind. O(1) but for a small collection's encoding
    /// (O(n), n at most 512).
    pub(super) fn describe(&self, key: &[u8]) -> KvResult {
        let Some(v) = self.map.get(key) else {
            return KvResult::Items(Vec::new());
        };
        let mut bytes = SLOT_BYTES;
        if key.len() > INLINE_BYTES {
            bytes += key.len() as u64;
        }
        if self.deadlines.get(key).is_some() {
            bytes += DEADLINE_BYTES + key.len() as u64;
        }
        let (kind, encoding) = if !v.is_typed() {
            let s = v.as_slice();
            if s.len() > INLINE_VALUE_BYTES {
                bytes += s.len() as u64;
            }
            let encoding = if s.len() <= 20 && super::command::parse_i64(s).is_some() {
                "int"
            } else if s.len() <= EMBSTR_BYTES_MAX {
                "embstr"
            } else {
                "raw"
            };
            ("string", encoding)
        } else {
            let c = self
                .typed
                .get(&Key::new(key))
                .expect("a marked key has a collection");
            let n = c.len();
            fn compact(n: usize, mut lens: impl Iterator<Item = usize>) -> bool {
                n <= LISTPACK_ENTRIES_MAX && lens.all(|l| l <= LISTPACK_VALUE_BYTES_MAX)
            }
            let (per_elem, encoding) = match &**c {
                Collection::List(l) => (
                    LIST_ELEM_BYTES,
                    if l.bytes + 2 * n <= LIST_LISTPACK_BYTES_MAX {
                        "listpack"
                    } else {
                        "quicklist"
                    },
                ),
                Collection::Hash(h) => (
                    HASH_PAIR_BYTES,
                    if compact(n, h.map.iter().map(|(f, v)| f.len().max(v.len()))) {
                        "listpack"
                    } else {
                        "hashtable"
                    },
                ),
                Collection::Set(s) => {
                    let ints = n <= INTSET_ENTRIES_MAX
                        && s.members
                            .iter()
                            .all(|m| super::command::parse_i64(m.as_slice()).is_some());
                    (
                        SET_MEMBER_BYTES,
                        if ints {
                            "intset"
                        } else if compact(n, s.members.iter().map(|m| m.len())) {
                            "listpack"
                        } else {
                            "hashtable"
                        },
                    )
                }
                Collection::ZSet(z) => (
                    ZSET_MEMBER_BYTES,
                    if compact(n, z.scores.keys().map(|m| m.len())) {
                        "listpack"
                    } else {
                        "skiplist"
                    },
                ),
                Collection::Stream(_) => (STREAM_ENTRY_BYTES, "stream"),
            };
            bytes += c.bytes() as u64 + per_elem * n as u64;
            (c.kind().name(), encoding)
        };
        KvResult::Items(vec![
            Bytes::from_static(kind.as_bytes()),
            Bytes::from_static(encoding.as_bytes()),
            Bytes::from(bytes.to_string()),
        ])
    }
}
