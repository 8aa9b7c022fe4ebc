//! The on-disk format of WAL segments: encoders and decoders, with the
//! layouts drawn at the encoders. All integers are little endian.
//!
//! ```text
//! segment file  {seq:020}.wal, `segment_bytes` long, preallocated
//! +--------------------+---------+---------+-----+------------------------+
//! | segment header     | frame 1 | frame 2 | ... | free (zeros or stale)  |
//! | block 0 (4096 B)   | 4K-aligned, padded to 4K  |                        |
//! +--------------------+---------+---------+-----+------------------------+
//! ```
//!
//! One frame is one flush: every batch coalesced into one DMA write and one
//! fdatasync. A frame is all-or-nothing at recovery.

use bytes::Bytes;

use crate::types::{HardState, Op, SnapshotMarker, META_BYTES_MAX};

/// Direct I/O block: offsets and lengths of every write are multiples of it.
pub const BLOCK_BYTES: u64 = 4096;
/// On-disk format version, in every segment header and frame header.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"FLOTWAL\0";
pub(crate) const MANIFEST_MAGIC: [u8; 8] = *b"FLOTMANI";
pub(crate) const SEGMENT_HEADER_BYTES: usize = 48;
pub(crate) const FRAME_MAGIC: u32 = 0x4D52_4654; // "TFRM"
pub(crate) const FRAME_HEADER_BYTES: usize = 32;
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
pub(crate) const ENTRIES_FIXED_BYTES: usize = RECORD_HEADER_BYTES + 8;
pub(crate) const ENTRY_META_BYTES: usize = 20;

pub(crate) const KIND_ENTRIES: u8 = 1;
pub(crate) const KIND_HARD_STATE: u8 = 2;
pub(crate) const KIND_SNAPSHOT: u8 = 3;
pub(crate) const KIND_REMOVE: u8 = 4;
pub(crate) const KIND_META: u8 = 5;

/// Rounds `v` up to the next multiple of [`BLOCK_BYTES`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Encodes the manifest (a one-block file that marks the directory as a WAL
/// and is the first file opened by `open`, see GLOMMIO.md bug 1).
///
/// ```text
/// 0        8         12      16
/// | magic  | version | crc32 |   crc32 over bytes 0..12, rest of block zero
/// ```
pub(crate) fn encode_manifest(b: &mut [u8]) {
    b[..BLOCK_BYTES as usize].fill(0);
    b[0..8].copy_from_slice(&MANIFEST_MAGIC);
    put_u32(b, 8, FORMAT_VERSION);
    let crc = crc32fast::hash(&b[0..12]);
    put_u32(b, 12, crc);
}

/// Checks a manifest block. `Err(Some(v))` for a wrong version.
pub(crate) fn decode_manifest(b: &[u8]) -> Result<(), Option<u32>> {
    if b.len() < 16 || b[0..8] != MANIFEST_MAGIC || crc32fast::hash(&b[0..12]) != get_u32(b, 12) {
        return Err(None);
    }
    match get_u32(b, 8) {
        FORMAT_VERSION => Ok(()),
        v => Err(Some(v)),
    }
}

/// Encodes a segment header into block 0 of a segment.
///
/// ```text
/// 0        8         12      16            24              32          48
/// | magic  | version | crc32 | segment_seq | segment_bytes | reserved 0 |
/// ```
/// crc32 covers bytes 16..48. The rest of block 0 is zero and not checked.
pub(crate) fn encode_segment_header(b: &mut [u8], segment_seq: u64, segment_bytes: u64) {
    b[..BLOCK_BYTES as usize].fill(0);
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    put_u32(b, 8, FORMAT_VERSION);
    put_u64(b, 16, segment_seq);
    put_u64(b, 24, segment_bytes);
    let crc = crc32fast::hash(&b[16..SEGMENT_HEADER_BYTES]);
    put_u32(b, 12, crc);
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub segment_seq: u64,
    pub segment_bytes: u64,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentHeaderFault {
    Bad,
    Version(u32),
}

pub(crate) fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderFault> {
    if b.len() < SEGMENT_HEADER_BYTES || b[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderFault::Bad);
    }
    if crc32fast::hash(&b[16..SEGMENT_HEADER_BYTES]) != get_u32(b, 12) {
        return Err(SegmentHeaderFault::Bad);
    }
    let version = get_u32(b, 8);
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderFault::Version(version));
    }
    let segment_bytes = get_u64(b, 24);
    if segment_bytes < 2 * BLOCK_BYTES || segment_bytes % BLOCK_BYTES != 0 {
        return Err(SegmentHeaderFault::Bad);
    }
    Ok(SegmentHeader {
        segment_seq: get_u64(b, 16),
        segment_bytes,
    })
}

/// Encoded size of one operation's record.
pub(crate) fn record_bytes(op: &Op) -> u64 {
    match op {
        Op::Append { entries, .. } => {
            (ENTRIES_FIXED_BYTES + ENTRY_META_BYTES * entries.len()) as u64
                + entries.iter().map(|e| e.payload.len() as u64).sum::<u64>()
        }
        Op::HardState { .. } => RECORD_HEADER_BYTES as u64 + 24,
        Op::Snapshot { .. } => RECORD_HEADER_BYTES as u64 + 16,
        Op::Remove { .. } => RECORD_HEADER_BYTES as u64,
        Op::Meta { meta, .. } => (RECORD_HEADER_BYTES + meta.len()) as u64,
    }
}

/// Encodes a frame header at the start of `b`.
///
/// ```text
/// 0       4            8         10      12         16            24          32
/// | magic | header_crc | version | flags | body_len | segment_seq | batch_seq |
/// ```
/// header_crc covers bytes 8..32. `body_len` records follow the header; the
/// frame is then zero-padded to the next 4 KiB boundary. `batch_seq` grows by
/// one per frame across segments, so a missing frame is detected.
pub(crate) fn encode_frame_header(b: &mut [u8], body_len: u32, segment_seq: u64, batch_seq: u64) {
    put_u32(b, 0, FRAME_MAGIC);
    put_u16(b, 8, FORMAT_VERSION as u16);
    put_u16(b, 10, 0);
    put_u32(b, 12, body_len);
    put_u64(b, 16, segment_seq);
    put_u64(b, 24, batch_seq);
    let crc = crc32fast::hash(&b[8..FRAME_HEADER_BYTES]);
    put_u32(b, 4, crc);
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub body_len: u32,
    pub segment_seq: u64,
    pub batch_seq: u64,
}

impl FrameHeader {
    /// Frame bytes without padding.
    pub(crate) fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + self.body_len as u64
    }
}

/// Decodes a frame header; `None` if it is not a valid header of segment
/// `segment_seq`.
pub(crate) fn decode_frame_header(b: &[u8], segment_seq: u64) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER_BYTES || get_u32(b, 0) != FRAME_MAGIC {
        return None;
    }
    if crc32fast::hash(&b[8..FRAME_HEADER_BYTES]) != get_u32(b, 4) {
        return None;
    }
    if get_u16(b, 8) as u32 != FORMAT_VERSION || get_u16(b, 10) != 0 {
        return None;
    }
    let h = FrameHeader {
        body_len: get_u32(b, 12),
        segment_seq: get_u64(b, 16),
        batch_seq: get_u64(b, 24),
    };
    (h.segment_seq == segment_seq).then_some(h)
}

fn record_crc(segment_seq: u64, batch_seq: u64, covered: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_seq.to_le_bytes());
    h.update(&batch_seq.to_le_bytes());
    h.update(covered);
    h.finalize()
}

/// Encodes one operation as a record at the start of `b` (exactly
/// [`record_bytes`] long; returns that length). For an append, `crcs` holds
/// the CRC of each entry's payload, computed when the batch was accepted
/// (the index keeps them too), or is empty: then they are computed here.
///
/// ```text
/// record header (24 B), every kind:
/// 0     4      8      9       12      16      24
/// | len | crc  | kind | pad 0 | count | group |
///
/// kind 1 entries:    | first_index u64 | count x meta | payloads, concatenated |
///     meta (20 B):   | term u64 | payload_len u32 | payload_crc u32 | entry kind u8 | pad 0 x3 |
/// kind 2 hard state: | term u64 | vote u64 | commit u64 |
/// kind 3 snapshot:   | index u64 | term u64 |   count 1: drop every entry,
///                                                 count 0: drop entries <= index
/// kind 4 remove:     (nothing)
/// kind 5 meta:       | opaque bytes (len - 24, at most 64 KiB) |   count 0
/// ```
/// `len` is the whole record. `crc` = crc32(segment_seq ‖ batch_seq ‖ bytes
/// 8.. of the record up to the payloads), so a stale record of a recycled
/// segment or an older frame never checks; each payload is covered by its own
/// `payload_crc`, which lets a single entry be verified when read back alone.
pub(crate) fn encode_record(
    b: &mut [u8],
    segment_seq: u64,
    batch_seq: u64,
    op: &Op,
    crcs: &[u32],
) -> usize {
    let len = record_bytes(op) as usize;
    debug_assert!(b.len() >= len);
    b[8..RECORD_HEADER_BYTES].fill(0);
    put_u32(b, 0, len as u32);
    put_u64(b, 16, op.group());
    let covered_end = match op {
        Op::Append { entries, .. } => {
            b[8] = KIND_ENTRIES;
            put_u32(b, 12, entries.len() as u32);
            put_u64(b, 24, entries.first().map_or(0, |e| e.index));
            let mut meta = ENTRIES_FIXED_BYTES;
            let mut payload = ENTRIES_FIXED_BYTES + ENTRY_META_BYTES * entries.len();
            let covered_end = payload;
            assert!(
                crcs.is_empty() || crcs.len() == entries.len(),
                "{} payload CRCs for {} entries",
                crcs.len(),
                entries.len()
            );
            // One CPU-feature probe per record, not per entry.
            let crc_proto = crc32fast::Hasher::new();
            for (k, e) in entries.iter().enumerate() {
                let plen = e.payload.len();
                b[payload..payload + plen].copy_from_slice(&e.payload);
                let crc = match crcs.get(k) {
                    Some(&crc) => crc,
                    None => {
                        let mut h = crc_proto.clone();
                        h.update(&e.payload);
                        h.finalize()
                    }
                };
                debug_assert_eq!(crc, crc32fast::hash(&e.payload), "stale payload CRC");
                put_u64(b, meta, e.term);
                put_u32(b, meta + 8, plen as u32);
                put_u32(b, meta + 12, crc);
                b[meta + 16] = e.kind;
                b[meta + 17..meta + 20].fill(0);
                meta += ENTRY_META_BYTES;
                payload += plen;
            }
            debug_assert_eq!(payload, len);
            covered_end
        }
        Op::HardState { state, .. } => {
            b[8] = KIND_HARD_STATE;
            put_u64(b, 24, state.term);
            put_u64(b, 32, state.vote);
            put_u64(b, 40, state.commit);
            len
        }
        Op::Snapshot {
            marker, drop_all, ..
        } => {
            b[8] = KIND_SNAPSHOT;
            put_u32(b, 12, u32::from(*drop_all));
            put_u64(b, 24, marker.index);
            put_u64(b, 32, marker.term);
            len
        }
        Op::Remove { .. } => {
            b[8] = KIND_REMOVE;
            len
        }
        Op::Meta { meta, .. } => {
            b[8] = KIND_META;
            b[RECORD_HEADER_BYTES..len].copy_from_slice(meta);
            len
        }
    };
    let crc = record_crc(segment_seq, batch_seq, &b[8..covered_end]);
    put_u32(b, 4, crc);
    len
}

/// One entry as found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub term: u64,
    pub kind: u8,
    pub payload_crc: u32,
    pub payload_bytes: u32,
    /// Offset of the payload relative to the frame start.
    pub payload_offset: u64,
}

/// One record as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodedRecord {
    Entries {
        group: u64,
        first_index: u64,
        metas: Vec<EntryMeta>,
    },
    HardState {
        group: u64,
        state: HardState,
    },
    Snapshot {
        group: u64,
        marker: SnapshotMarker,
        drop_all: bool,
    },
    Remove {
        group: u64,
    },
    Meta {
        group: u64,
        meta: Bytes,
    },
}

/// Decodes and verifies every record of a frame. `frame` starts at the frame
/// header and holds at least `header.frame_bytes()` bytes. Returns `None` if
/// any byte of the frame fails its CRC or any length is out of bounds: a frame
/// is all or nothing.
pub(crate) fn decode_frame_body(frame: &[u8], header: &FrameHeader) -> Option<Vec<DecodedRecord>> {
    let end = usize::try_from(header.frame_bytes()).ok()?;
    if frame.len() < end {
        return None;
    }
    let mut at = FRAME_HEADER_BYTES;
    let mut out = Vec::new();
    while at < end {
        let rest = &frame[at..end];
        if rest.len() < RECORD_HEADER_BYTES {
            return None;
        }
        let len = get_u32(rest, 0) as usize;
        if len < RECORD_HEADER_BYTES || len > rest.len() {
            return None;
        }
        let rec = &rest[..len];
        let kind = rec[8];
        if rec[9..12] != [0, 0, 0] {
            return None;
        }
        let count = get_u32(rec, 12) as usize;
        let group = get_u64(rec, 16);
        let covered_end = match kind {
            KIND_ENTRIES => {
                let metas_end = count
                    .checked_mul(ENTRY_META_BYTES)?
                    .checked_add(ENTRIES_FIXED_BYTES)?;
                if metas_end > len {
                    return None;
                }
                metas_end
            }
            KIND_HARD_STATE if len == RECORD_HEADER_BYTES + 24 && count == 0 => len,
            KIND_SNAPSHOT if len == RECORD_HEADER_BYTES + 16 && count <= 1 => len,
            KIND_REMOVE if len == RECORD_HEADER_BYTES && count == 0 => len,
            KIND_META if len - RECORD_HEADER_BYTES <= META_BYTES_MAX && count == 0 => len,
            _ => return None,
        };
        if record_crc(header.segment_seq, header.batch_seq, &rec[8..covered_end]) != get_u32(rec, 4)
        {
            return None;
        }
        let decoded = match kind {
            KIND_ENTRIES => {
                let first_index = get_u64(rec, 24);
                if count == 0 || first_index == 0 || first_index.checked_add(count as u64).is_none()
                {
                    return None;
                }
                let mut metas = Vec::with_capacity(count);
                let mut payload = covered_end;
                for i in 0..count {
                    let m = ENTRIES_FIXED_BYTES + i * ENTRY_META_BYTES;
                    let plen = get_u32(rec, m + 8) as usize;
                    if rec[m + 17..m + 20] != [0, 0, 0] || payload.checked_add(plen)? > len {
                        return None;
                    }
                    let crc = get_u32(rec, m + 12);
                    if crc32fast::hash(&rec[payload..payload + plen]) != crc {
                        return None;
                    }
                    metas.push(EntryMeta {
                        term: get_u64(rec, m),
                        kind: rec[m + 16],
                        payload_crc: crc,
                        payload_bytes: plen as u32,
                        payload_offset: (at + payload) as u64,
                    });
                    payload += plen;
                }
                if payload != len {
                    return None;
                }
                DecodedRecord::Entries {
                    group,
                    first_index,
                    metas,
                }
            }
            KIND_HARD_STATE => DecodedRecord::HardState {
                group,
                state: HardState {
                    term: get_u64(rec, 24),
                    vote: get_u64(rec, 32),
                    commit: get_u64(rec, 40),
                },
            },
            KIND_SNAPSHOT => DecodedRecord::Snapshot {
                group,
                marker: SnapshotMarker {
                    index: get_u64(rec, 24),
                    term: get_u64(rec, 32),
                },
                drop_all: count == 1,
            },
            KIND_META => DecodedRecord::Meta {
                group,
                meta: Bytes::copy_from_slice(&rec[RECORD_HEADER_BYTES..]),
            },
            _ => DecodedRecord::Remove { group },
        };
        out.push(decoded);
        at += len;
    }
    (at == end).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Entry;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frame_of(ops: &[Op], seg: u64, batch: u64) -> Vec<u8> {
        let body: u64 = ops.iter().map(record_bytes).sum();
        let mut b = vec![0u8; FRAME_HEADER_BYTES + body as usize];
        encode_frame_header(&mut b, body as u32, seg, batch);
        let mut at = FRAME_HEADER_BYTES;
        for op in ops {
            at += encode_record(&mut b[at..], seg, batch, op, &[]);
        }
        b
    }

    fn sample_ops() -> Vec<Op> {
        vec![
            Op::Append {
                group: 3,
                entries: vec![
                    Entry {
                        index: 5,
                        term: 2,
                        kind: 1,
                        payload: Bytes::from_static(b"hello"),
                    },
                    Entry {
                        index: 6,
                        term: 2,
                        kind: 0,
                        payload: Bytes::new(),
                    },
                ],
            },
            Op::HardState {
                group: 3,
                state: HardState {
                    term: 2,
                    vote: 1,
                    commit: 5,
                },
            },
            Op::Snapshot {
                group: 4,
                marker: SnapshotMarker { index: 9, term: 1 },
                drop_all: true,
            },
            Op::Remove { group: 5 },
            Op::Meta {
                group: 3,
                meta: Bytes::from_static(b"voters=1,2,3"),
            },
            Op::Meta {
                group: 6,
                meta: Bytes::new(),
            },
        ]
    }

    #[test]
    fn frame_round_trip_and_golden_header() {
        let b = frame_of(&sample_ops(), 7, 42);
        let h = decode_frame_header(&b, 7).expect("header");
        assert_eq!(h.segment_seq, 7);
        assert_eq!(h.batch_seq, 42);
        assert_eq!(&b[0..4], b"TFRM");
        let recs = decode_frame_body(&b, &h).expect("body");
        assert_eq!(recs.len(), 6);
        match &recs[0] {
            DecodedRecord::Entries {
                group,
                first_index,
                metas,
            } => {
                assert_eq!((*group, *first_index, metas.len()), (3, 5, 2));
                let m = metas[0];
                let off = m.payload_offset as usize;
                assert_eq!(&b[off..off + m.payload_bytes as usize], b"hello");
                assert_eq!((m.term, m.kind), (2, 1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            recs[1],
            DecodedRecord::HardState {
                group: 3,
                state: HardState {
                    term: 2,
                    vote: 1,
                    commit: 5
                }
            }
        );
        assert_eq!(
            recs[2],
            DecodedRecord::Snapshot {
                group: 4,
                marker: SnapshotMarker { index: 9, term: 1 },
                drop_all: true,
            }
        );
        assert_eq!(recs[3], DecodedRecord::Remove { group: 5 });
        assert_eq!(
            recs[4],
            DecodedRecord::Meta {
                group: 3,
                meta: Bytes::from_static(b"voters=1,2,3")
            }
        );
        assert_eq!(
            recs[5],
            DecodedRecord::Meta {
                group: 6,
                meta: Bytes::new()
            }
        );
        // A frame of another segment (a recycled file) or another batch never checks.
        assert!(decode_frame_header(&b, 8).is_none());
    }

    #[test]
    fn every_bit_of_a_frame_is_covered() {
        let b = frame_of(&sample_ops(), 1, 1);
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            let ok = decode_frame_header(&c, 1).and_then(|h| decode_frame_body(&c, &h));
            assert!(ok.is_none(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trip() {
        let mut b = vec![0u8; BLOCK_BYTES as usize];
        encode_segment_header(&mut b, 12, 1 << 20);
        assert_eq!(
            decode_segment_header(&b),
            Ok(SegmentHeader {
                segment_seq: 12,
                segment_bytes: 1 << 20
            })
        );
        b[8] = 9;
        assert_eq!(
            decode_segment_header(&b),
            Err(SegmentHeaderFault::Version(9))
        );
        b[8] = 1;
        b[20] ^= 1;
        assert_eq!(decode_segment_header(&b), Err(SegmentHeaderFault::Bad));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), seg in 0u64..3) {
            if let Some(h) = decode_frame_header(&bytes, seg) {
                let _ = decode_frame_body(&bytes, &h);
            }
            let fake = FrameHeader { body_len: bytes.len().saturating_sub(FRAME_HEADER_BYTES) as u32, segment_seq: seg, batch_seq: 0 };
            let _ = decode_frame_body(&bytes, &fake);
            let _ = decode_segment_header(&bytes);
            let _ = decode_manifest(&bytes);
        }
    }
}
