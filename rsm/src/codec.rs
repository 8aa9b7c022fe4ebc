//! Little-endian binary reader and writer helpers shared by every format of
//! this crate (envelope, KV commands and results, session table, snapshot).
//!
//! All integers are fixed-width little-endian; byte strings are prefixed by a
//! `u32` length. No `usize` ever reaches the wire.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// A cursor over a `Bytes` buffer; byte strings are returned as zero-copy
/// slices of it. Every read is bounds checked and returns a typed error.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                needed: n as u64,
                remaining: self.remaining() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A `u32`-length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes(&mut self, what: &'static str, max: u32) -> Result<Bytes, DecodeError> {
        let len = self.u32()?;
        if len > max {
            return Err(DecodeError::TooLarge {
                what,
                len: u64::from(len),
                max: u64::from(max),
            });
        }
        let len = len as usize;
        if self.remaining() < len {
            return Err(DecodeError::Truncated {
                needed: len as u64,
                remaining: self.remaining() as u64,
            });
        }
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// An element count of at most `max`, also checked against the bytes
    /// left (each element takes at least `min_elem_bytes`), so a corrupt
    /// count never drives a huge allocation.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        max: u32,
        min_elem_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32()?;
        if n > max {
            return Err(DecodeError::TooLarge {
                what,
                len: u64::from(n),
                max: u64::from(max),
            });
        }
        let n = n as usize;
        if n.saturating_mul(min_elem_bytes) > self.remaining() {
            return Err(DecodeError::Truncated {
                needed: (n * min_elem_bytes) as u64,
                remaining: self.remaining() as u64,
            });
        }
        Ok(n)
    }

    /// Everything not read yet, consuming the reader: the buffer itself,
    /// advanced (no reference-count traffic, unlike a slice).
    pub(crate) fn into_rest(self) -> Bytes {
        let mut buf = self.buf;
        bytes::Buf::advance(&mut buf, self.pos);
        buf
    }

    /// Fails if bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                len: self.remaining() as u64,
            });
        }
        Ok(())
    }
}

/// Appends a `u32`-length-prefixed byte string.
///
/// # Panics
/// If `b` is 4 GiB or longer (callers bound their inputs far below that).
pub(crate) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("byte string under 4 GiB");
    out.put_u32_le(len);
    out.put_slice(b);
}

/// Appends a `u32` element count.
///
/// # Panics
/// If `n` does not fit a `u32`.
pub(crate) fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u32_le(u32::try_from(n).expect("count fits u32"));
}
