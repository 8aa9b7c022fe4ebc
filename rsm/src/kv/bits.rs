//! Bit operations on strings (Redis `SETBIT`, `BITOP`, `BITFIELD`) and the
//! description of a key that Redis' `OBJECT ENCODING` and `MEMORY USAGE`
//! give.
//!
//! Bits are numbered as Redis numbers them: bit 0 is the most significant
//! bit of byte 0. A `BITFIELD` field of `n` bits at bit `o` is the
//! big-endian integer of bits `o..o + n`, whatever bytes it spans.

use bytes::Bytes;

use super::collection::Collection;
use super::command::{
    BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType, BitOperation, KvError, KvResult,
    VALUE_BYTES_MAX,
};
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

/// Bytes a field is read and written through: a field of up to 64 bits
/// starting at any bit of its first byte ends within 9 bytes.
const FIELD_WINDOW_BYTES: u64 = 9;

/// The bits of a field's window (`FIELD_WINDOW_BYTES` bytes from the
/// field's first byte, big-endian; bytes past the end of `value` read as
/// zeros) and how far the field sits from the window's low end.
fn field_window(value: &[u8], ty: BitFieldType, offset: u64) -> (u128, u32) {
    let first = offset / 8;
    let mut window = 0u128;
    for i in 0..FIELD_WINDOW_BYTES {
        let byte = usize::try_from(first + i)
            .ok()
            .and_then(|j| value.get(j))
            .copied()
            .unwrap_or(0);
        window = (window << 8) | u128::from(byte);
    }
    let low = FIELD_WINDOW_BYTES as u32 * 8 - (offset % 8) as u32 - u32::from(ty.bits());
    (window, low)
}

/// The mask of a field's `bits` low bits.
fn field_mask(ty: BitFieldType) -> u64 {
    u64::MAX >> (64 - u32::from(ty.bits()))
}

/// The field of type `ty` at bit `offset` of `value` (Redis `BITFIELD ...
/// GET`): bits past the end of `value` read as zeros, a signed type is
/// sign-extended.
pub fn bitfield_get(value: &[u8], ty: BitFieldType, offset: u64) -> i64 {
    let (window, low) = field_window(value, ty, offset);
    let mask = field_mask(ty);
    let raw = (window >> low) as u64 & mask;
    let negative = ty.signed() && raw >> (ty.bits() - 1) & 1 == 1;
    if negative {
        (raw | !mask) as i64
    } else {
        raw as i64
    }
}

/// Writes `field` (its low `ty.bits()` bits) at bit `offset` of `buf`.
///
/// # Panics
/// If `buf` does not hold the field's last bit (the caller grows it first).
fn bitfield_put(buf: &mut [u8], ty: BitFieldType, offset: u64, field: i64) {
    let last = (offset + u64::from(ty.bits()) - 1) / 8;
    assert!(last < buf.len() as u64, "the string holds the field");
    let (mut window, low) = field_window(buf, ty, offset);
    let mask = u128::from(field_mask(ty)) << low;
    window = (window & !mask) | ((u128::from(field as u64) << low) & mask);
    let first = offset / 8;
    for i in 0..FIELD_WINDOW_BYTES {
        let shift = 8 * (FIELD_WINDOW_BYTES - 1 - i);
        if let Some(b) = usize::try_from(first + i).ok().and_then(|j| buf.get_mut(j)) {
            *b = (window >> shift) as u8;
        }
    }
}

/// What a field of type `ty` that holds `old` holds after `action` under
/// `overflow`: `Set(v)` writes `v` (an unsigned type reads `v` as a
/// `u64`), `IncrBy(d)` adds `d` to `old`; a result outside the type wraps
/// modulo 2^bits (`Wrap`, sign-extended for a signed type), saturates
/// (`Sat`), or is refused: `None` (`Fail`). `Get` leaves `old`.
///
/// This is Redis 7.0's `checkSignedBitfieldOverflow` /
/// `checkUnsignedBitfieldOverflow` line for line, their wrapping
/// arithmetic included, so that it saturates as Redis does where Redis
/// errs: a signed `SET` of a value below `i64::MIN + 2^(bits-1)` (whose
/// `max - value` wraps) saturates at the type's *maximum* (`BITFIELD k
/// OVERFLOW SAT SET i8 0 -9223372036854775808` stores 127 in Redis).
pub fn bitfield_written(
    ty: BitFieldType,
    overflow: BitFieldOverflow,
    old: i64,
    action: BitFieldAction,
) -> Option<i64> {
    let bits = u32::from(ty.bits());
    let (value, incr) = match action {
        BitFieldAction::Get => return Some(old),
        BitFieldAction::Set(v) => (v, 0),
        BitFieldAction::IncrBy(d) => (old, d),
    };
    // `limit`: the bound Sat stores, if the result overflows.
    let (limit, wrapped) = if ty.signed() {
        let max = if bits == 64 {
            i64::MAX
        } else {
            (1i64 << (bits - 1)) - 1
        };
        let min = -max - 1;
        let max_incr = (max as u64).wrapping_sub(value as u64) as i64;
        let min_incr = min.wrapping_sub(value);
        let limit = if value > max
            || (bits != 64 && incr > max_incr)
            || (value >= 0 && incr > 0 && incr > max_incr)
        {
            Some(max)
        } else if value < min
            || (bits != 64 && incr < min_incr)
            || (value < 0 && incr < 0 && incr < min_incr)
        {
            Some(min)
        } else {
            None
        };
        let sum = (value as u64).wrapping_add(incr as u64);
        let high = u64::MAX.checked_shl(bits).unwrap_or(0);
        let negative = sum >> (bits - 1) & 1 == 1;
        let wrapped = if negative { sum | high } else { sum & !high };
        (limit, wrapped as i64)
    } else {
        let value = value as u64;
        let max = (1u64 << bits) - 1;
        let max_incr = max.wrapping_sub(value) as i64;
        let min_incr = value.wrapping_neg() as i64;
        let limit = if value > max || (incr > 0 && incr > max_incr) {
            Some(max as i64)
        } else if incr < 0 && incr < min_incr {
            Some(0)
        } else {
            None
        };
        (limit, (value.wrapping_add(incr as u64) & max) as i64)
    };
    match (limit, overflow) {
        // In range: the sum itself.
        (None, _) | (Some(_), BitFieldOverflow::Wrap) => Some(wrapped),
        (Some(limit), BitFieldOverflow::Sat) => Some(limit),
        (Some(_), BitFieldOverflow::Fail) => None,
    }
}

impl KvStore {
    /// `BITFIELD key ops...` (see [`KvCommand::BitField`](super::KvCommand::BitField)).
    pub(super) fn bit_field(&mut self, key: &[u8], ops: &[BitFieldOp]) -> KvResult {
        if let Some(e) = check_key(key) {
            return KvResult::Error(e);
        }
        // The string must hold the last bit any write touches.
        let mut len_min: Option<usize> = None;
        for op in ops.iter().filter(|op| op.writes()) {
            match op.offset.checked_add(u64::from(op.ty.bits()) - 1) {
                Some(last) if last / 8 < VALUE_BYTES_MAX as u64 => {
                    let len = (last / 8) as usize + 1;
                    len_min = Some(len_min.map_or(len, |l| l.max(len)));
                }
                _ => return KvResult::Error(KvError::ValueTooLarge),
            }
        }
        let Some(len_min) = len_min else {
            // Only reads: a missing key stays missing.
            let value = match self.map.get(key) {
                Some(v) if v.is_typed() => return KvResult::Error(KvError::WrongType),
                v => v.map_or(&[][..], |v| v.as_slice()),
            };
            let fields = ops
                .iter()
                .map(|op| Some(bitfield_get(value, op.ty, op.offset)));
            return KvResult::Ints(fields.collect());
        };
        self.map.upsert(key, |cur| {
            if cur.is_some_and(Value::is_typed) {
                return (None, KvResult::Error(KvError::WrongType));
            }
            let old = cur.map_or(&[][..], |c| c.as_slice());
            let mut buf = old.to_vec();
            if buf.len() < len_min {
                buf.resize(len_min, 0);
            }
            let mut fields = Vec::with_capacity(ops.len());
            for op in ops {
                let field = bitfield_get(&buf, op.ty, op.offset);
                match (
                    op.action,
                    bitfield_written(op.ty, op.overflow, field, op.action),
                ) {
                    (BitFieldAction::Get, _) => fields.push(Some(field)),
                    (_, None) => fields.push(None),
                    (action, Some(new)) => {
                        bitfield_put(&mut buf, op.ty, op.offset, new);
                        let set = matches!(action, BitFieldAction::Set(_));
                        fields.push(Some(if set { field } else { new }));
                    }
                }
            }
            let changed = cur.is_none() || buf != old;
            (changed.then(|| Value::from(buf)), KvResult::Ints(fields))
        })
    }

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
            if cur.is_some() && was == bit && byte < old.len() {
                // Nothing changes (Redis still creates a missing key, and
                // pads a short one even to clear a bit past its end).
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

#[cfg(test)]
mod tests {
    use super::*;
    use BitFieldAction::{Get, IncrBy, Set};
    use BitFieldOverflow::{Fail, Sat, Wrap};

    fn i(bits: u8) -> BitFieldType {
        BitFieldType::new(true, bits).expect("a signed width")
    }

    fn u(bits: u8) -> BitFieldType {
        BitFieldType::new(false, bits).expect("an unsigned width")
    }

    /// The least and greatest value of a signed field of `bits` bits.
    fn signed_range(bits: u8) -> (i64, i64) {
        let max = if bits == 64 {
            i64::MAX
        } else {
            (1i64 << (bits - 1)) - 1
        };
        (-max - 1, max)
    }

    #[test]
    fn types_are_i1_to_i64_and_u1_to_u63() {
        assert!(BitFieldType::new(true, 0).is_none());
        assert!(BitFieldType::new(false, 0).is_none());
        assert!(BitFieldType::new(true, 65).is_none());
        assert!(BitFieldType::new(false, 64).is_none());
        assert_eq!(i(64).bits(), 64);
        assert!(i(64).signed());
        assert_eq!(u(63).bits(), 63);
        assert!(!u(63).signed());
    }

    #[test]
    fn get_reads_big_endian_fields_across_bytes_and_sign_extends() {
        let v = [0b1010_0101, 0b1100_0011, 0xff];
        assert_eq!(bitfield_get(&v, u(1), 0), 1);
        assert_eq!(bitfield_get(&v, i(1), 0), -1, "i1 holds -1 and 0");
        assert_eq!(bitfield_get(&v, u(1), 1), 0);
        assert_eq!(bitfield_get(&v, u(4), 0), 0b1010);
        assert_eq!(bitfield_get(&v, i(4), 0), -6);
        assert_eq!(bitfield_get(&v, u(8), 4), 0b0101_1100, "crosses a byte");
        assert_eq!(bitfield_get(&v, i(8), 4), 0b0101_1100);
        assert_eq!(bitfield_get(&v, i(8), 6), 0b0111_0000u8 as i8 as i64);
        assert_eq!(bitfield_get(&v, u(16), 0), 0xa5c3);
        assert_eq!(bitfield_get(&v, i(16), 0), 0xa5c3u16 as i16 as i64);
        // Past the end: zeros.
        assert_eq!(bitfield_get(&v, u(8), 20), 0xf0);
        assert_eq!(bitfield_get(&v, u(8), 24), 0);
        assert_eq!(bitfield_get(&v, i(64), 1 << 40), 0);
        assert_eq!(bitfield_get(&v, i(64), u64::MAX - 10), 0);
        assert_eq!(bitfield_get(&[], u(63), 0), 0);
        // Every width at every bit of a byte, against a bit-by-bit reading.
        let v: Vec<u8> = (0u8..12).map(|b| b.wrapping_mul(0x9d) ^ 0x5a).collect();
        let bit = |n: u64| u64::from(v[(n / 8) as usize] >> (7 - n % 8) & 1);
        for bits in 1..=64u8 {
            for offset in 0..16u64 {
                let raw = (offset..offset + u64::from(bits)).fold(0u64, |a, n| a << 1 | bit(n));
                let signed = if bits < 64 && raw >> (bits - 1) == 1 {
                    (raw | u64::MAX << bits) as i64
                } else {
                    raw as i64
                };
                assert_eq!(
                    bitfield_get(&v, i(bits), offset),
                    signed,
                    "i{bits} at {offset}"
                );
                if bits < 64 {
                    assert_eq!(bitfield_get(&v, u(bits), offset), raw as i64, "u{bits}");
                }
            }
        }
    }

    #[test]
    fn put_writes_only_the_field() {
        let mut buf = vec![0xff; 3];
        bitfield_put(&mut buf, u(8), 4, 0);
        assert_eq!(buf, [0xf0, 0x0f, 0xff]);
        bitfield_put(&mut buf, i(4), 8, -1);
        assert_eq!(buf, [0xf0, 0xff, 0xff]);
        let mut buf = vec![0; 9];
        bitfield_put(&mut buf, i(64), 7, -1);
        assert_eq!(buf, [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(bitfield_get(&buf, i(64), 7), -1);
        // Only the low bits of the value are written.
        let mut buf = vec![0; 2];
        bitfield_put(&mut buf, u(3), 6, 0b1111_1101);
        assert_eq!(buf, [0b0000_0010, 0b1000_0000]);
        // Every width at every bit: what is written reads back, the rest
        // is untouched.
        for bits in 1..=64u8 {
            for offset in 0..16u64 {
                let mut buf = vec![0x5a; 11];
                let value = i64::MIN >> (64 - bits) | 0x1234_5678_9abc_def0 >> (64 - bits);
                bitfield_put(&mut buf, i(bits), offset, value);
                let want = bitfield_written(i(bits), Wrap, 0, Set(value)).unwrap();
                assert_eq!(bitfield_get(&buf, i(bits), offset), want);
                // Every other bit is as it was.
                let field = offset..offset + u64::from(bits);
                for n in (0..88u64).filter(|n| !field.contains(n)) {
                    let was = bitfield_get(&[0x5a; 11], u(1), n);
                    assert_eq!(
                        bitfield_get(&buf, u(1), n),
                        was,
                        "i{bits} at {offset}: bit {n}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "the string holds the field")]
    fn put_past_the_end_is_a_bug() {
        bitfield_put(&mut [0], u(2), 7, 1);
    }

    #[test]
    fn signed_set_at_every_width_boundary() {
        for bits in 1..=64u8 {
            let (min, max) = signed_range(bits);
            let t = i(bits);
            for v in [min, max, 0, -1i64.max(min)] {
                for o in [Wrap, Sat, Fail] {
                    assert_eq!(bitfield_written(t, o, 5, Set(v)), Some(v), "i{bits} {v}");
                }
            }
            if bits < 64 {
                assert_eq!(
                    bitfield_written(t, Wrap, 0, Set(max + 1)),
                    Some(min),
                    "i{bits}"
                );
                assert_eq!(
                    bitfield_written(t, Wrap, 0, Set(min - 1)),
                    Some(max),
                    "i{bits}"
                );
                assert_eq!(bitfield_written(t, Sat, 0, Set(max + 1)), Some(max));
                // (For i63, min - 1 is in the range of Redis' quirk below.)
                let below = if bits < 63 { min } else { max };
                assert_eq!(bitfield_written(t, Sat, 0, Set(min - 1)), Some(below));
                // Redis' quirk: below i64::MIN + 2^(bits-1), `max - value`
                // wraps and SAT stores the maximum.
                assert_eq!(
                    bitfield_written(t, Sat, 0, Set(i64::MIN)),
                    Some(max),
                    "i{bits}"
                );
                assert_eq!(bitfield_written(t, Sat, 0, Set(i64::MIN + max)), Some(max));
                assert_eq!(
                    bitfield_written(t, Sat, 0, Set(i64::MIN + max + 1)),
                    Some(min)
                );
                assert_eq!(bitfield_written(t, Wrap, 0, Set(i64::MIN)), Some(0));
                assert_eq!(bitfield_written(t, Fail, 0, Set(i64::MIN)), None);
                assert_eq!(bitfield_written(t, Fail, 0, Set(max + 1)), None);
                assert_eq!(bitfield_written(t, Fail, 0, Set(min - 1)), None);
            }
        }
        // Redis: BITFIELD k SET i8 0 200 stores -56; i1 holds 0 and -1.
        assert_eq!(bitfield_written(i(8), Wrap, 0, Set(200)), Some(-56));
        assert_eq!(bitfield_written(i(1), Wrap, 0, Set(1)), Some(-1));
        assert_eq!(bitfield_written(i(1), Sat, 0, Set(1)), Some(0));
        assert_eq!(bitfield_written(i(1), Sat, 0, Set(-5)), Some(-1));
        // Redis 7.0.15: OVERFLOW SAT SET i8 0 v for these v stores 127,
        // 127, -128; i63 and i64 as their own rule says.
        assert_eq!(bitfield_written(i(8), Sat, 0, Set(i64::MIN)), Some(127));
        assert_eq!(
            bitfield_written(i(8), Sat, 0, Set(-9223372036854775681)),
            Some(127)
        );
        assert_eq!(
            bitfield_written(i(8), Sat, 0, Set(-9223372036854775680)),
            Some(-128)
        );
        assert_eq!(
            bitfield_written(i(63), Sat, 0, Set(i64::MIN)),
            Some((1 << 62) - 1)
        );
        assert_eq!(
            bitfield_written(i(64), Sat, 0, Set(i64::MIN)),
            Some(i64::MIN)
        );
        assert_eq!(bitfield_written(i(4), Wrap, 0, Set(i64::MAX)), Some(-1));
        assert_eq!(bitfield_written(i(4), Wrap, 0, Set(i64::MIN)), Some(0));
    }

    #[test]
    fn unsigned_set_reads_the_value_as_u64() {
        for bits in 1..=63u8 {
            let max = i64::MAX >> (63 - bits);
            let t = u(bits);
            for o in [Wrap, Sat, Fail] {
                assert_eq!(bitfield_written(t, o, 3, Set(max)), Some(max), "u{bits}");
                assert_eq!(bitfield_written(t, o, 3, Set(0)), Some(0));
            }
            // (For u63, max + 1 is i64::MIN: 2^63 as a u64.)
            let over = max.wrapping_add(1);
            assert_eq!(bitfield_written(t, Wrap, 0, Set(over)), Some(0), "u{bits}");
            assert_eq!(bitfield_written(t, Sat, 0, Set(over)), Some(max));
            assert_eq!(bitfield_written(t, Fail, 0, Set(over)), None);
            // -1 is u64::MAX: too large, never too small.
            assert_eq!(bitfield_written(t, Wrap, 0, Set(-1)), Some(max));
            assert_eq!(bitfield_written(t, Sat, 0, Set(-1)), Some(max));
            assert_eq!(bitfield_written(t, Fail, 0, Set(-1)), None);
            assert_eq!(bitfield_written(t, Sat, 0, Set(i64::MIN)), Some(max));
        }
        assert_eq!(bitfield_written(u(8), Wrap, 0, Set(-2)), Some(254));
        assert_eq!(bitfield_written(u(8), Wrap, 0, Set(0x1ff)), Some(255));
        assert_eq!(bitfield_written(u(63), Wrap, 0, Set(i64::MIN)), Some(0));
    }

    #[test]
    fn incrby_wraps_saturates_or_fails_at_both_ends() {
        // Redis' BITFIELD page: u2 from 3 by 1 wraps to 0, saturates at 3.
        assert_eq!(bitfield_written(u(2), Wrap, 3, IncrBy(1)), Some(0));
        assert_eq!(bitfield_written(u(2), Sat, 3, IncrBy(1)), Some(3));
        assert_eq!(bitfield_written(u(2), Fail, 3, IncrBy(1)), None);
        assert_eq!(bitfield_written(u(2), Wrap, 0, IncrBy(-1)), Some(3));
        assert_eq!(bitfield_written(u(2), Sat, 0, IncrBy(-1)), Some(0));
        assert_eq!(bitfield_written(u(2), Fail, 0, IncrBy(-1)), None);
        assert_eq!(
            bitfield_written(u(8), Wrap, 100, IncrBy(1000)),
            Some(1100 % 256)
        );
        assert_eq!(bitfield_written(u(8), Wrap, 10, IncrBy(-300)), Some(222));
        for bits in 1..=64u8 {
            let (min, max) = signed_range(bits);
            let t = i(bits);
            assert_eq!(bitfield_written(t, Fail, max - 1, IncrBy(1)), Some(max));
            assert_eq!(bitfield_written(t, Fail, min + 1, IncrBy(-1)), Some(min));
            assert_eq!(
                bitfield_written(t, Wrap, max, IncrBy(1)),
                Some(min),
                "i{bits}"
            );
            assert_eq!(
                bitfield_written(t, Wrap, min, IncrBy(-1)),
                Some(max),
                "i{bits}"
            );
            assert_eq!(bitfield_written(t, Sat, max, IncrBy(1)), Some(max));
            assert_eq!(bitfield_written(t, Sat, min, IncrBy(-1)), Some(min));
            assert_eq!(bitfield_written(t, Sat, 0, IncrBy(i64::MAX)), Some(max));
            assert_eq!(bitfield_written(t, Sat, 0, IncrBy(i64::MIN)), Some(min));
            assert_eq!(bitfield_written(t, Fail, max, IncrBy(1)), None);
            assert_eq!(bitfield_written(t, Fail, min, IncrBy(-1)), None);
            assert_eq!(bitfield_written(t, Sat, max, IncrBy(min)), Some(-1));
        }
        assert_eq!(
            bitfield_written(i(64), Wrap, i64::MAX, IncrBy(i64::MAX)),
            Some(-2)
        );
        assert_eq!(
            bitfield_written(i(64), Wrap, i64::MIN, IncrBy(i64::MIN)),
            Some(0)
        );
        for bits in 1..=63u8 {
            let max = i64::MAX >> (63 - bits);
            let t = u(bits);
            assert_eq!(bitfield_written(t, Fail, max - 1, IncrBy(1)), Some(max));
            assert_eq!(
                bitfield_written(t, Wrap, max, IncrBy(1)),
                Some(0),
                "u{bits}"
            );
            assert_eq!(
                bitfield_written(t, Wrap, 0, IncrBy(-1)),
                Some(max),
                "u{bits}"
            );
            assert_eq!(bitfield_written(t, Sat, max, IncrBy(i64::MAX)), Some(max));
            assert_eq!(bitfield_written(t, Sat, 1, IncrBy(i64::MIN)), Some(0));
            assert_eq!(bitfield_written(t, Fail, max, IncrBy(1)), None);
            assert_eq!(bitfield_written(t, Fail, 0, IncrBy(-1)), None);
            assert_eq!(bitfield_written(t, Wrap, 1, IncrBy(i64::MIN)), Some(1));
        }
        assert_eq!(bitfield_written(i(8), Fail, 7, Get), Some(7));
    }
}
