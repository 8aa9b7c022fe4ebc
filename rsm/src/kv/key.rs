//! `Key`: a map key stored inline when short, so that comparisons during a
//! lookup neither follow a pointer nor call `memcmp`.

use std::cmp::Ordering;
use std::rc::Rc;

/// Keys up to this many bytes are stored inline.
pub(crate) const INLINE_BYTES: usize = 24;

/// A byte-string key ordered like `[u8]`.
///
/// Invariant (canonical form): a key of at most [`INLINE_BYTES`] bytes is
/// always `Inline`, with the unused bytes of `buf` zero; a longer one is
/// always `Heap`. So equal keys have equal representations.
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, buf: [u8; INLINE_BYTES] },
    Heap(Rc<[u8]>),
}

impl Key {
    pub(crate) fn new(k: &[u8]) -> Self {
        if k.len() <= INLINE_BYTES {
            let mut buf = [0u8; INLINE_BYTES];
            buf[..k.len()].copy_from_slice(k);
            Key::Inline {
                len: k.len() as u8,
                buf,
            }
        } else {
            Key::Heap(Rc::from(k))
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, buf } => &buf[..*len as usize],
            Key::Heap(h) => h,
        }
    }
}

fn words(buf: &[u8; INLINE_BYTES]) -> [u64; 3] {
    [
        u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")),
        u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")),
    ]
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Zero-padded big-endian words compare like the byte strings
            // (a proper prefix pads with zeros and then loses on length).
            (Key::Inline { len: a, buf: x }, Key::Inline { len: b, buf: y }) => {
                words(x).cmp(&words(y)).then(a.cmp(b))
            }
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Canonical form: equal keys have equal representations, and
            // the unused bytes are zero.
            (Key::Inline { len: a, buf: x }, Key::Inline { len: b, buf: y }) => a == b && x == y,
            (Key::Heap(x), Key::Heap(y)) => x == y,
            _ => false,
        }
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", bytes::Bytes::copy_from_slice(self.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn orders_like_byte_slices(a in proptest::collection::vec(any::<u8>(), 0..40),
                                   b in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40)) {
            let (ka, kb) = (Key::new(&a), Key::new(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka.as_slice(), &a[..]);
            prop_assert_eq!(ka == kb, a == b);
        }
    }

    #[test]
    fn prefixes_and_zero_bytes() {
        let k = |s: &[u8]| Key::new(s);
        assert!(k(b"a") < k(b"a\0"));
        assert!(k(b"") < k(b"\0"));
        assert!(k(b"ab") < k(b"a\xff"));
        assert!(k(&[1u8; 24]) < k(&[1u8; 25]));
        assert!(k(&[2u8; 24]) > k(&[1u8; 25]));
    }
}
