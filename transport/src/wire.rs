//! The wire format: frames, batches and the connection handshake.
//!
//! Everything is little-endian. No `usize` crosses the wire. Decoders take
//! arbitrary bytes and return typed errors; they never panic (a proptest
//! fuzzer in `tests/fuzz.rs` checks this).
//!
//! ```text
//! A connection:
//!
//!   dialer                                   listener
//!     | ---- Hello (44 bytes) ---------------> |   validate cluster, nodes, shard,
//!     | <--- HelloAck (12 bytes) ------------- |   version, kind; reject => close
//!     | ---- Frame, Frame, ... --------------> |   (message connection: one way)
//!     | <--> Frame ... (snapshot connection: both ways, see snapshot.rs)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::ids::{ClusterId, NodeId, PeerId, ShardId};

/// The only wire format version this build speaks.
pub const WIRE_VERSION: u8 = 1;

/// `b"FLTF"` read as a little-endian u32: starts every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"FLTF");
/// `b"FLTH"`: starts a Hello.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"FLTH");
/// `b"FLTA"`: starts a HelloAck.
pub const HELLO_ACK_MAGIC: u32 = u32::from_le_bytes(*b"FLTA");

/// Size of a frame header in bytes.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Size of a Hello in bytes.
pub const HELLO_BYTES: usize = 44;
/// Size of a HelloAck in bytes.
pub const HELLO_ACK_BYTES: usize = 12;
/// Per-message overhead inside a batch (its length prefix).
pub const MESSAGE_PREFIX_BYTES: usize = 4;
/// Overhead of a batch payload before its first message (the count).
pub const BATCH_PREFIX_BYTES: usize = 4;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A batch of opaque messages (message connections).
    Batch = 1,
    /// Snapshot: the opaque snapshot header; opens a stream.
    SnapshotBegin = 2,
    /// Snapshot: receiver's answer to `SnapshotBegin` (status + reason).
    SnapshotReply = 3,
    /// Snapshot: `seq u64` then a chunk of snapshot bytes.
    SnapshotChunk = 4,
    /// Snapshot: receiver acknowledges every chunk up to `seq u64`.
    SnapshotChunkAck = 5,
    /// Snapshot: end of stream, `total_bytes u64, chunks u64, crc32 u32`.
    SnapshotEnd = 6,
    /// Snapshot: the receiver's final verdict after its sink is closed.
    SnapshotDone = 7,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Batch,
            2 => Self::SnapshotBegin,
            3 => Self::SnapshotReply,
            4 => Self::SnapshotChunk,
            5 => Self::SnapshotChunkAck,
            6 => Self::SnapshotEnd,
            7 => Self::SnapshotDone,
            _ => return None,
        })
    }
}

/// Why bytes on a connection could not be decoded. Each one closes the
/// connection it arrived on, is logged and is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame did not start with [`FRAME_MAGIC`].
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The four bytes found instead.
        found: u32,
    },
    /// The frame's version is not the one negotiated in the handshake.
    #[error("unsupported frame version {found} (speaking {expected})")]
    BadVersion {
        /// Version in the frame.
        found: u8,
        /// Version negotiated for this connection.
        expected: u8,
    },
    /// Unknown frame kind, or a kind that does not belong on this connection.
    #[error("unexpected frame kind {found}")]
    BadKind {
        /// The kind byte.
        found: u8,
    },
    /// Reserved header bits were set.
    #[error("reserved frame flags {found:#06x} set")]
    BadFlags {
        /// The flags found.
        found: u16,
    },
    /// The payload is larger than this transport accepts.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length announced by the header.
        len: u32,
        /// The configured `frame_bytes_max`.
        max: u32,
    },
    /// The payload does not match the header's CRC32.
    #[error("frame crc mismatch: header {expected:#010x}, payload {actual:#010x}")]
    BadCrc {
        /// CRC in the header.
        expected: u32,
        /// CRC computed over the payload received.
        actual: u32,
    },
    /// A message or field inside the payload runs past its end, or bytes are
    /// left over after the last message.
    #[error("malformed payload: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload holds.
    pub kind: FrameKind,
    /// Payload length in bytes (already checked against the limit).
    pub payload_len: u32,
    /// CRC32 (crc32fast, IEEE) of the payload.
    pub crc: u32,
}

/// Writes a frame header for `payload` at `buf[at..at + 16]`.
///
/// ```text
/// 0        4     5      6        8             12            16
/// +--------+-----+------+--------+-------------+-------------+----------------+
/// | magic  | ver | kind | flags  | payload_len | crc32       | payload ...    |
/// | "FLTF" | u8  | u8   | u16 =0 | u32         | of payload  | payload_len B  |
/// +--------+-----+------+--------+-------------+-------------+----------------+
/// ```
///
/// # Panics
/// If `buf` is shorter than `at + 16`.
pub fn put_frame_header(buf: &mut [u8], at: usize, kind: FrameKind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload over 4 GiB");
    let crc = crc32fast::hash(payload);
    let h = &mut buf[at..at + FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4] = WIRE_VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one complete frame (header + `payload`) to `out`.
pub fn encode_frame(out: &mut BytesMut, kind: FrameKind, payload: &[u8]) {
    let at = out.len();
    out.resize(at + FRAME_HEADER_BYTES, 0);
    put_frame_header(out, at, kind, payload);
    out.extend_from_slice(payload);
}

/// Parses a frame header from the first 16 bytes of `buf`.
///
/// # Errors
/// [`FrameError`] for a bad magic, version, kind, flags or an oversized
/// payload (`payload_len > frame_bytes_max`).
///
/// # Panics
/// If `buf` is shorter than [`FRAME_HEADER_BYTES`].
pub fn parse_frame_header(buf: &[u8], frame_bytes_max: u32) -> Result<FrameHeader, FrameError> {
    let magic = read_u32(buf, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if buf[4] != WIRE_VERSION {
        return Err(FrameError::BadVersion {
            found: buf[4],
            expected: WIRE_VERSION,
        });
    }
    let kind = FrameKind::from_u8(buf[5]).ok_or(FrameError::BadKind { found: buf[5] })?;
    let flags = u16::from_le_bytes([buf[6], buf[7]]);
    if flags != 0 {
        return Err(FrameError::BadFlags { found: flags });
    }
    let payload_len = read_u32(buf, 8);
    if payload_len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: payload_len,
            max: frame_bytes_max,
        });
    }
    Ok(FrameHeader {
        kind,
        payload_len,
        crc: read_u32(buf, 12),
    })
}

/// Checks a payload against its header's CRC.
///
/// # Errors
/// [`FrameError::BadCrc`].
pub fn check_crc(header: &FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    debug_assert_eq!(payload.len(), header.payload_len as usize);
    let actual = crc32fast::hash(payload);
    if actual != header.crc {
        return Err(FrameError::BadCrc {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// Takes one complete frame off the front of `buf`, if `buf` holds one.
///
/// Returns `Ok(None)` when more bytes are needed. The payload is a zero-copy
/// slice of `buf`'s memory.
///
/// # Errors
/// Any [`FrameError`] of the header or the CRC.
pub fn take_frame(
    buf: &mut BytesMut,
    frame_bytes_max: u32,
) -> Result<Option<(FrameHeader, Bytes)>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let header = parse_frame_header(buf, frame_bytes_max)?;
    let total = FRAME_HEADER_BYTES + header.payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let payload = frame.split_off(FRAME_HEADER_BYTES);
    check_crc(&header, &payload)?;
    Ok(Some((header, payload)))
}

/// Encodes a batch payload (no frame header) into `out`.
///
/// ```text
/// +-----------+---------+-----------+---------+-----------+-----
/// | count u32 | len u32 | msg bytes | len u32 | msg bytes | ...
/// +-----------+---------+-----------+---------+-----------+-----
/// ```
/// The payload ends exactly after the `count`-th message.
pub fn encode_batch_payload<'a>(
    out: &mut BytesMut,
    messages: impl ExactSizeIterator<Item = &'a [u8]>,
) {
    out.put_u32_le(u32::try_from(messages.len()).expect("batch count over u32"));
    for m in messages {
        out.put_u32_le(u32::try_from(m.len()).expect("message over 4 GiB"));
        out.extend_from_slice(m);
    }
}

/// Splits a batch payload into its messages: zero-copy slices of `payload`.
///
/// # Errors
/// [`FrameError::Malformed`] if a length runs past the payload, the count
/// does not match, or bytes are left over.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<Bytes>, FrameError> {
    if payload.len() < BATCH_PREFIX_BYTES {
        return Err(FrameError::Malformed {
            what: "batch shorter than its count",
        });
    }
    let count = read_u32(payload, 0) as usize;
    // Each message needs at least its prefix: never trust `count` for the allocation.
    let plausible = (payload.len() - BATCH_PREFIX_BYTES) / MESSAGE_PREFIX_BYTES;
    if count > plausible {
        return Err(FrameError::Malformed {
            what: "batch count larger than the payload can hold",
        });
    }
    let mut messages = Vec::with_capacity(count);
    let mut at = BATCH_PREFIX_BYTES;
    for _ in 0..count {
        if payload.len() - at < MESSAGE_PREFIX_BYTES {
            return Err(FrameError::Malformed {
                what: "message length prefix truncated",
            });
        }
        let len = read_u32(payload, at) as usize;
        at += MESSAGE_PREFIX_BYTES;
        if payload.len() - at < len {
            return Err(FrameError::Malformed {
                what: "message runs past the end of the batch",
            });
        }
        messages.push(payload.slice(at..at + len));
        at += len;
    }
    if at != payload.len() {
        return Err(FrameError::Malformed {
            what: "trailing bytes after the last message",
        });
    }
    debug_assert_eq!(messages.len(), count);
    Ok(messages)
}

/// What a connection is for, announced in the Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionKind {
    /// One-way stream of message batches.
    Messages = 1,
    /// One snapshot stream (both ways: chunks out, acks back).
    Snapshot = 2,
}

/// The first bytes a dialer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest wire version the dialer speaks.
    pub version_min: u8,
    /// Highest wire version the dialer speaks.
    pub version_max: u8,
    /// What the connection is for.
    pub kind: ConnectionKind,
    /// The dialer's cluster.
    pub cluster: ClusterId,
    /// The dialer's (node, shard).
    pub from: PeerId,
    /// The (node, shard) the dialer means to reach.
    pub to: PeerId,
}

/// Why a Hello or HelloAck could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Fewer bytes than the fixed size.
    #[error("handshake truncated: {len} bytes")]
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// Wrong magic: not a flotilla peer (or not this message).
    #[error("bad handshake magic {found:#010x}")]
    BadMagic {
        /// The four bytes found.
        found: u32,
    },
    /// The handshake's own CRC does not match.
    #[error("handshake crc mismatch")]
    BadCrc,
    /// A field holds a value no version defines.
    #[error("malformed handshake: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
}

impl Hello {
    /// Encodes the Hello.
    ///
    /// ```text
    /// 0      4     5     6    7    8          16        24        28        36        40      44
    /// +------+-----+-----+----+----+----------+---------+---------+---------+---------+-------+
    /// |"FLTH"|vmin |vmax |kind|rsv | cluster  |from node|from shrd| to node | to shard| crc32 |
    /// | u32  | u8  | u8  | u8 | =0 | u64      | u64     | u32     | u64     | u32     | [0,40)|
    /// +------+-----+-----+----+----+----------+---------+---------+---------+---------+-------+
    /// ```
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4] = self.version_min;
        b[5] = self.version_max;
        b[6] = self.kind as u8;
        b[7] = 0;
        b[8..16].copy_from_slice(&self.cluster.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.from.node.0.to_le_bytes());
        b[24..28].copy_from_slice(&self.from.shard.0.to_le_bytes());
        b[28..36].copy_from_slice(&self.to.node.0.to_le_bytes());
        b[36..40].copy_from_slice(&self.to.shard.0.to_le_bytes());
        let crc = crc32fast::hash(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a Hello from the first [`HELLO_BYTES`] of `buf`.
    ///
    /// # Errors
    /// [`HandshakeError`] for short input, bad magic, bad CRC or undefined
    /// field values. Semantic checks (cluster, nodes, versions) are the
    /// listener's job.
    pub fn decode(buf: &[u8]) -> Result<Self, HandshakeError> {
        if buf.len() < HELLO_BYTES {
            return Err(HandshakeError::Truncated { len: buf.len() });
        }
        let magic = read_u32(buf, 0);
        if magic != HELLO_MAGIC {
            return Err(HandshakeError::BadMagic { found: magic });
        }
        if crc32fast::hash(&buf[0..40]) != read_u32(buf, 40) {
            return Err(HandshakeError::BadCrc);
        }
        let kind = match buf[6] {
            1 => ConnectionKind::Messages,
            2 => ConnectionKind::Snapshot,
            _ => {
                return Err(HandshakeError::Malformed {
                    what: "unknown connection kind",
                })
            }
        };
        if buf[7] != 0 {
            return Err(HandshakeError::Malformed {
                what: "reserved byte set",
            });
        }
        if buf[4] > buf[5] {
            return Err(HandshakeError::Malformed {
                what: "version_min above version_max",
            });
        }
        Ok(Self {
            version_min: buf[4],
            version_max: buf[5],
            kind,
            cluster: ClusterId(read_u64(buf, 8)),
            from: PeerId {
                node: NodeId(read_u64(buf, 16)),
                shard: ShardId(read_u32(buf, 24)),
            },
            to: PeerId {
                node: NodeId(read_u64(buf, 28)),
                shard: ShardId(read_u32(buf, 36)),
            },
        })
    }
}

/// The listener's verdict on a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HelloStatus {
    /// Accepted: frames may follow.
    Accepted = 0,
    /// The dialer belongs to another cluster.
    ClusterMismatch = 1,
    /// The dialer's node is not in the listener's registry.
    UnknownNode = 2,
    /// The dialer addressed another node or shard than this listener's.
    WrongTarget = 3,
    /// No wire version in common.
    UnsupportedVersion = 4,
    /// The listener is shutting down or has no room for the connection.
    Unavailable = 5,
}

impl HelloStatus {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Accepted,
            1 => Self::ClusterMismatch,
            2 => Self::UnknownNode,
            3 => Self::WrongTarget,
            4 => Self::UnsupportedVersion,
            5 => Self::Unavailable,
            _ => return None,
        })
    }
}

/// The listener's answer to a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// The wire version both sides will speak (meaningful when accepted).
    pub version: u8,
    /// The verdict.
    pub status: HelloStatus,
}

impl HelloAck {
    /// Encodes the HelloAck.
    ///
    /// ```text
    /// 0      4       5        6         8        12
    /// +------+-------+--------+---------+--------+
    /// |"FLTA"|version| status | rsv u16 | crc32  |
    /// | u32  | u8    | u8     | =0      | [0,8)  |
    /// +------+-------+--------+---------+--------+
    /// ```
    pub fn encode(&self) -> [u8; HELLO_ACK_BYTES] {
        let mut b = [0u8; HELLO_ACK_BYTES];
        b[0..4].copy_from_slice(&HELLO_ACK_MAGIC.to_le_bytes());
        b[4] = self.version;
        b[5] = self.status as u8;
        let crc = crc32fast::hash(&b[0..8]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a HelloAck.
    ///
    /// # Errors
    /// [`HandshakeError`] for short input, bad magic, bad CRC or an unknown status.
    pub fn decode(buf: &[u8]) -> Result<Self, HandshakeError> {
        if buf.len() < HELLO_ACK_BYTES {
            return Err(HandshakeError::Truncated { len: buf.len() });
        }
        let magic = read_u32(buf, 0);
        if magic != HELLO_ACK_MAGIC {
            return Err(HandshakeError::BadMagic { found: magic });
        }
        if crc32fast::hash(&buf[0..8]) != read_u32(buf, 8) {
            return Err(HandshakeError::BadCrc);
        }
        if buf[6] != 0 || buf[7] != 0 {
            return Err(HandshakeError::Malformed {
                what: "reserved bytes set",
            });
        }
        let status = HelloStatus::from_u8(buf[5]).ok_or(HandshakeError::Malformed {
            what: "unknown status",
        })?;
        Ok(Self {
            version: buf[4],
            status,
        })
    }
}

/// Picks the version to speak with a dialer offering `[min, max]`.
pub fn negotiate_version(min: u8, max: u8) -> Option<u8> {
    (min..=max).contains(&WIRE_VERSION).then_some(WIRE_VERSION)
}

pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_golden_bytes() {
        let mut out = BytesMut::new();
        let mut payload = BytesMut::new();
        encode_batch_payload(&mut payload, [&b"ab"[..], &b""[..]].into_iter());
        encode_frame(&mut out, FrameKind::Batch, &payload);
        let crc = crc32fast::hash(&payload).to_le_bytes();
        let mut expected = vec![b'F', b'L', b'T', b'F', 1, 1, 0, 0, 14, 0, 0, 0];
        expected.extend_from_slice(&crc);
        expected.extend_from_slice(&[2, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(&out[..], &expected[..]);
        let (h, p) = take_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(h.kind, FrameKind::Batch);
        assert!(out.is_empty());
        let msgs = decode_batch(&p).unwrap();
        assert_eq!(msgs, vec![Bytes::from_static(b"ab"), Bytes::new()]);
    }

    #[test]
    fn header_rejections() {
        let mut f = BytesMut::new();
        encode_frame(&mut f, FrameKind::Batch, &[0, 0, 0, 0]);
        let good = f.clone();
        assert!(parse_frame_header(&good, 4).is_ok());
        assert_eq!(
            parse_frame_header(&good, 3),
            Err(FrameError::TooLarge { len: 4, max: 3 })
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            parse_frame_header(&bad, 64),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = good.clone();
        bad[4] = 9;
        assert!(matches!(
            parse_frame_header(&bad, 64),
            Err(FrameError::BadVersion { found: 9, .. })
        ));
        let mut bad = good.clone();
        bad[5] = 0;
        assert!(matches!(
            parse_frame_header(&bad, 64),
            Err(FrameError::BadKind { found: 0 })
        ));
        let mut bad = good.clone();
        bad[7] = 1;
        assert!(matches!(
            parse_frame_header(&bad, 64),
            Err(FrameError::BadFlags { .. })
        ));
        let mut bad = good.clone();
        bad[17] ^= 1;
        assert!(matches!(
            take_frame(&mut bad, 64),
            Err(FrameError::BadCrc { .. })
        ));
        let mut partial = BytesMut::from(&good[..good.len() - 1]);
        assert_eq!(take_frame(&mut partial, 64), Ok(None));
    }

    #[test]
    fn batch_rejections() {
        let cases: &[(&[u8], &str)] = &[
            (&[1, 0], "short"),
            (&[1, 0, 0, 0], "count too large"),
            (&[1, 0, 0, 0, 5, 0, 0, 0, 1], "runs past"),
            (&[0, 0, 0, 0, 7], "trailing"),
            (&[255, 255, 255, 255, 0, 0, 0, 0], "huge count"),
        ];
        for (bytes, why) in cases {
            let r = decode_batch(&Bytes::copy_from_slice(bytes));
            assert!(
                matches!(r, Err(FrameError::Malformed { .. })),
                "{why}: {r:?}"
            );
        }
    }

    #[test]
    fn hello_round_trip_and_golden() {
        let h = Hello {
            version_min: 1,
            version_max: 1,
            kind: ConnectionKind::Snapshot,
            cluster: ClusterId(7),
            from: PeerId::new(1, 2),
            to: PeerId::new(3, 4),
        };
        let b = h.encode();
        assert_eq!(&b[0..8], &[b'F', b'L', b'T', b'H', 1, 1, 2, 0]);
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        assert_eq!(Hello::decode(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 0x40;
        assert_eq!(Hello::decode(&bad), Err(HandshakeError::BadCrc));
        assert!(matches!(
            Hello::decode(&b[..43]),
            Err(HandshakeError::Truncated { len: 43 })
        ));
        let ack = HelloAck {
            version: 1,
            status: HelloStatus::UnknownNode,
        };
        assert_eq!(HelloAck::decode(&ack.encode()), Ok(ack));
        assert_eq!(negotiate_version(1, 3), Some(1));
        assert_eq!(negotiate_version(2, 3), None);
    }
}
