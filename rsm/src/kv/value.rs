//! `Value`: a stored value, kept inline in the hash index's slot when short.
//!
//! Most values of a KV store are small (counters, flags, ids, the 16-byte
//! values of `flotilla bench`). Stored as a `Bytes`, each was an allocation
//! of its own: a put paid a `malloc`, an overwrite the `free` of the old
//! value (a write into a line last touched when that value was stored: a
//! cache miss on a store larger than the cache), and a get one more pointer
//! to follow. Inline, the value lives in the same 64-byte slot as its key:
//! a put of a short value neither allocates nor frees, and a lookup reads
//! the slot and nothing else.
//!
//! ```text
//!  Value (32 bytes) ─┬─ Inline { len: u8, buf: [u8; 23] }   len ≤ 23
//!                    └─ Heap(Bytes)                          len > 23
//! ```
//! Canonical form: a value of at most [`INLINE_VALUE_BYTES`] bytes is always
//! `Inline` (so what a value is does not depend on how it was stored).
//!
//! A key holding a collection (list, hash, set, sorted set, stream) holds
//! [`Value::typed_marker`] here: a `Heap` value pointing at one static
//! buffer, which no string can (strings are copied when stored), and the
//! collection itself lives in the store's typed tree (`mod.rs`). So the
//! string hot path keeps its 32-byte slot and pays one pointer comparison
//! where a string command must refuse a collection.

use bytes::Bytes;

/// Values up to this many bytes are stored inline.
pub(crate) const INLINE_VALUE_BYTES: usize = 23;

/// The static buffer of [`Value::typed_marker`] (longer than
/// [`INLINE_VALUE_BYTES`], so the marker is a canonical `Heap` value).
static TYPED_MARKER: [u8; 24] = *b"\0flotilla:collection\0\0\0\0";

/// A stored value (see the module documentation).
#[derive(Clone)]
pub(crate) enum Value {
    Inline {
        len: u8,
        buf: [u8; INLINE_VALUE_BYTES],
    },
    Heap(Bytes),
}

// Key (32) + Value (32) fill one cache-line slot of the hash index.
const _: () = assert!(std::mem::size_of::<Value>() == 32);

impl Value {
    /// The value of a key that holds a collection (see the module
    /// documentation).
    pub(crate) fn typed_marker() -> Self {
        Value::Heap(Bytes::from_static(&TYPED_MARKER))
    }

    /// True if this is [`Value::typed_marker`]: the key holds a collection.
    #[inline]
    pub(crate) fn is_typed(&self) -> bool {
        matches!(self, Value::Heap(b) if std::ptr::eq(b.as_ptr(), TYPED_MARKER.as_ptr()))
    }

    /// A value holding a copy of `v` (no allocation when short).
    pub(crate) fn copy(v: &[u8]) -> Self {
        if v.len() <= INLINE_VALUE_BYTES {
            let mut buf = [0u8; INLINE_VALUE_BYTES];
            buf[..v.len()].copy_from_slice(v);
            Value::Inline {
                len: v.len() as u8,
                buf,
            }
        } else {
            Value::Heap(Bytes::copy_from_slice(v))
        }
    }

    /// The value's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Value::Inline { len, buf } => &buf[..*len as usize],
            Value::Heap(b) => b,
        }
    }

    /// A `Bytes` of the value: a copy when inline (short), a reference
    /// count otherwise.
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            Value::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Value::Heap(b) => b.clone(),
        }
    }
}

impl From<Bytes> for Value {
    /// Short values are copied inline (the `Bytes`, perhaps a slice of a
    /// large buffer, is released); long ones are kept as they are.
    fn from(b: Bytes) -> Self {
        if b.len() <= INLINE_VALUE_BYTES {
            Value::copy(&b)
        } else {
            Value::Heap(b)
        }
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= INLINE_VALUE_BYTES {
            Value::copy(&v)
        } else {
            Value::Heap(Bytes::from(v))
        }
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Value {}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(self.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_inline_long_ones_shared() {
        for len in 0..60usize {
            let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) | 1).collect();
            let bytes = Bytes::from(data.clone());
            for v in [
                Value::copy(&data),
                Value::from(bytes.clone()),
                Value::from(data.clone()),
            ] {
                assert_eq!(v.as_slice(), &data[..], "len {len}");
                assert_eq!(&v.to_bytes()[..], &data[..]);
                assert_eq!(
                    matches!(v, Value::Inline { .. }),
                    len <= INLINE_VALUE_BYTES,
                    "canonical form at len {len}"
                );
                assert_eq!(v, Value::copy(&data));
            }
            if len > INLINE_VALUE_BYTES {
                // A long value is kept, not copied.
                let Value::Heap(h) = Value::from(bytes.clone()) else {
                    panic!("heap");
                };
                assert_eq!(h.as_ptr(), bytes.as_ptr());
            }
        }
        assert_ne!(Value::copy(b"a"), Value::copy(b"a\0"));
    }

    #[test]
    fn only_the_marker_is_typed() {
        let m = Value::typed_marker();
        assert!(m.is_typed());
        assert!(m.clone().is_typed());
        // The same bytes stored as a string are a string.
        assert!(!Value::copy(&m).is_typed());
        assert!(!Value::from(m.to_vec()).is_typed());
        assert!(!Value::copy(b"list").is_typed());
    }
}
