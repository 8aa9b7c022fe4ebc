//! Connection plumbing shared by message and snapshot connections: the
//! framed reader, dialling with the handshake, and the re-dial backoff.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::TransportConfig;
use crate::error::DialError;
use crate::ids::PeerId;
use crate::wire::{
    check_crc, parse_frame_header, ConnectionKind, FrameError, FrameHeader, Hello, HelloAck,
    HelloStatus, FRAME_HEADER_BYTES, HELLO_ACK_BYTES, WIRE_VERSION,
};

/// Smallest staging region.
const REGION_BYTES_MIN: usize = 4096;
/// A frame whose payload is at least this long (and is not already whole
/// in the staging region) is read straight into a buffer of its own;
/// shorter ones are copied out of the staging region.
const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 << 10;
/// Small payloads are copied into arenas of this size, one after another;
/// an arena is freed once every payload in it is dropped (or reused by the
/// reader if that happens before it needs the next one).
const ARENA_BYTES: usize = 64 << 10;
/// Payloads longer than this get an exact-size allocation of their own.
const ARENA_PAYLOAD_BYTES_MAX: usize = ARENA_BYTES / 4;

/// Why a framed read ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Reads frames off a stream and hands out each payload as a `Bytes` that
/// shares no memory with the read buffer.
///
/// ```text
///  socket --read--> staging region (one per connection, zeroed once, reused)
///                    | whole frame, CRC checked
///                    +--copy--> 64 KiB arena, payloads back to back   (payload <= 16 KiB)
///                    +--copy--> exact-size buffer of its own          (16 KiB < payload < 64 KiB)
///  socket --read--> zeroed buffer of its own, reads end at the frame  (payload >= 64 KiB, not yet whole)
/// ```
///
/// Why not hand out slices of the read region (as before): consumers keep
/// payloads alive for long (a follower keeps the entries it receives in its
/// in-memory log until compaction), so a region whose slices were handed out
/// could rarely be reused, nearly every read went into fresh memory that had
/// to be zero-filled first (a safe read needs initialised memory: a memset
/// plus a page fault per 4 KiB), and one retained message pinned a whole
/// 1 MiB region. Now the staging region stays hot in cache, copies go to
/// memory written by `extend_from_slice` (never zero-filled) that the
/// allocator recycles from freed payloads, and a retained message pins at
/// most a 64 KiB arena. A large frame is read straight into its own buffer
/// (`BytesMut::zeroed`, i.e. `calloc`, which skips the memset on fresh pages).
///
/// Invariants: `start <= end <= region.len()`; `region[start..end]` is data
/// received and not yet returned; while `direct` is set the staging region
/// is empty; `arena` is empty between calls (its spare capacity is where the
/// next small payload goes).
pub(crate) struct FrameReader {
    region: Vec<u8>,
    region_bytes: usize,
    start: usize,
    end: usize,
    frame_bytes_max: u32,
    /// `DIRECT_PAYLOAD_BYTES_MIN`, lowered for small regions so that any
    /// frame that is not read directly fits in the staging region.
    direct_payload_bytes_min: usize,
    direct: Option<DirectFrame>,
    /// Where small payloads are copied to.
    arena: BytesMut,
}

/// A large frame being read straight into a buffer of its own.
struct DirectFrame {
    header: FrameHeader,
    /// Invariant: `payload.len() == header.payload_len`; `payload[..filled]`
    /// has been received.
    payload: BytesMut,
    filled: usize,
}

impl FrameReader {
    /// `region_bytes`: the staging region (at least 4 KiB), allocated on the
    /// first read; the most one read takes off the socket.
    pub(crate) fn new(region_bytes: usize, frame_bytes_max: u32) -> Self {
        let region_bytes = region_bytes.max(REGION_BYTES_MIN);
        Self {
            region: Vec::new(),
            region_bytes,
            start: 0,
            end: 0,
            frame_bytes_max,
            direct_payload_bytes_min: DIRECT_PAYLOAD_BYTES_MIN
                .min(region_bytes - FRAME_HEADER_BYTES),
            direct: None,
            arena: BytesMut::new(),
        }
    }

    /// Bytes received and not yet returned as frames.
    pub(crate) fn buffered(&self) -> usize {
        let direct = self
            .direct
            .as_ref()
            .map_or(0, |d| FRAME_HEADER_BYTES + d.filled);
        self.end - self.start + direct
    }

    /// The next frame: `Ok(None)` on a clean end of stream at a frame
    /// boundary. Returns the header and the payload.
    ///
    /// Cancel-safe: dropping the future loses no received byte.
    pub(crate) async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<(FrameHeader, Bytes)>, ReadError> {
        loop {
            if let Some(d) = &mut self.direct {
                if d.filled == d.payload.len() {
                    let d = self.direct.take().expect("checked above");
                    let payload = d.payload.freeze();
                    check_crc(&d.header, &payload)?;
                    return Ok(Some((d.header, payload)));
                }
                let n = stream.read(&mut d.payload[d.filled..]).await?;
                if n == 0 {
                    return Err(ReadError::Truncated {
                        buffered: self.buffered(),
                    });
                }
                d.filled += n;
                debug_assert!(d.filled <= d.payload.len());
                continue;
            }
            let avail = self.end - self.start;
            if avail >= FRAME_HEADER_BYTES {
                let at = self.start;
                let header = parse_frame_header(
                    &self.region[at..at + FRAME_HEADER_BYTES],
                    self.frame_bytes_max,
                )?;
                let payload_len = header.payload_len as usize;
                let total = FRAME_HEADER_BYTES + payload_len;
                if avail >= total {
                    let payload = &self.region[at + FRAME_HEADER_BYTES..at + total];
                    check_crc(&header, payload)?;
                    let payload = copy_out(&mut self.arena, payload);
                    self.consume(total);
                    return Ok(Some((header, payload)));
                }
                if payload_len >= self.direct_payload_bytes_min {
                    let mut payload = BytesMut::zeroed(payload_len);
                    let have = avail - FRAME_HEADER_BYTES;
                    payload[..have]
                        .copy_from_slice(&self.region[at + FRAME_HEADER_BYTES..self.end]);
                    self.consume(avail);
                    self.direct = Some(DirectFrame {
                        header,
                        payload,
                        filled: have,
                    });
                    continue;
                }
            }
            self.make_room();
            let n = stream.read(&mut self.region[self.end..]).await?;
            if n == 0 {
                return if self.end == self.start {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated {
                        buffered: self.buffered(),
                    })
                };
            }
            self.end += n;
            debug_assert!(self.end <= self.region.len());
        }
    }

    /// Marks `n` staged bytes returned.
    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the partial frame in the staging region (if any) to its front,
    /// so every read lands in the same, cache-hot memory.
    fn make_room(&mut self) {
        if self.region.is_empty() {
            self.region = vec![0; self.region_bytes];
        }
        if self.start > 0 {
            self.region.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // The partial frame is shorter than the region: a header needs 16
        // bytes, and a frame that is not read directly is shorter than
        // `direct_payload_bytes_min + 16 <= region_bytes`.
        debug_assert!(self.end < self.region.len(), "staging region full");
    }
}

/// Copies a small payload out of the staging region into `arena` (written
/// through `extend_from_slice`, so its memory is never zero-filled first), or
/// a larger one into an exact-size buffer of its own.
fn copy_out(arena: &mut BytesMut, payload: &[u8]) -> Bytes {
    if payload.len() > ARENA_PAYLOAD_BYTES_MAX {
        return Bytes::copy_from_slice(payload);
    }
    debug_assert!(arena.is_empty());
    if arena.capacity() < payload.len() && !arena.try_reclaim(ARENA_BYTES) {
        // Payloads still alive pin the old arena; it is freed with the last.
        *arena = BytesMut::with_capacity(ARENA_BYTES);
    }
    arena.extend_from_slice(payload);
    arena.split().freeze()
}

/// Dials `to` at `addr`, performs the handshake and returns a ready stream
/// (TCP_NODELAY on, write timeout set).
pub(crate) async fn dial(
    config: &TransportConfig,
    to: PeerId,
    addr: SocketAddr,
    kind: ConnectionKind,
) -> Result<TcpStream, DialError> {
    let mut stream = TcpStream::connect_timeout(addr, config.dial_timeout)
        .await
        .map_err(|e| DialError::Connect {
            addr,
            source: e.into(),
        })?;
    stream.set_nodelay(true).map_err(|e| DialError::Connect {
        addr,
        source: e.into(),
    })?;
    let hello = Hello {
        version_min: WIRE_VERSION,
        version_max: WIRE_VERSION,
        kind,
        cluster: config.cluster,
        from: config.local,
        to,
    };
    let io_err = |e: io::Error| DialError::Handshake { addr, source: e };
    stream
        .set_write_timeout(Some(config.handshake_timeout))
        .map_err(|e| io_err(e.into()))?;
    stream
        .set_read_timeout(Some(config.handshake_timeout))
        .map_err(|e| io_err(e.into()))?;
    stream.write_all(&hello.encode()).await.map_err(io_err)?;
    let mut ack = [0u8; HELLO_ACK_BYTES];
    stream.read_exact(&mut ack).await.map_err(io_err)?;
    let ack = HelloAck::decode(&ack).map_err(|e| DialError::BadAck { addr, source: e })?;
    if ack.status != HelloStatus::Accepted {
        return Err(DialError::Rejected {
            addr,
            status: ack.status,
        });
    }
    if ack.version != WIRE_VERSION {
        return Err(DialError::Rejected {
            addr,
            status: HelloStatus::UnsupportedVersion,
        });
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| io_err(e.into()))?;
    stream
        .set_write_timeout(Some(config.write_timeout))
        .map_err(|e| io_err(e.into()))?;
    Ok(stream)
}

/// Jittered exponential backoff: delays double from `min` to `max`, each
/// one drawn uniformly from `[d/2, d]` so peers that failed together do not
/// re-dial together.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        debug_assert!(min <= max);
        Self {
            min,
            max,
            current: min,
            rng: seed | 1,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { r % (nanos + 1) };
        half + Duration::from_nanos(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, FrameKind};
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out `data` at most `piece` bytes per read, like a socket.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.piece).min(self.data.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    /// Reads every frame through a reader with a `region_bytes` staging
    /// region; keeps some payloads alive for a while (as a follower's log
    /// does).
    fn read_all(
        data: Vec<u8>,
        region_bytes: usize,
        piece: usize,
        keep_every: usize,
    ) -> (Vec<Bytes>, Option<String>) {
        let mut reader = FrameReader::new(region_bytes, 1 << 20);
        let mut src = Pieces {
            data,
            at: 0,
            piece: piece.max(1),
        };
        let mut out = vec![];
        let mut kept = vec![];
        loop {
            match futures_lite::future::block_on(reader.next(&mut src)) {
                Ok(Some((h, p))) => {
                    assert_eq!(h.payload_len as usize, p.len());
                    if out.len() % keep_every.max(1) == 0 {
                        kept.push(p.clone());
                    }
                    out.push(p);
                    if out.len() % 3 == 0 {
                        kept.clear();
                    }
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    fn frames(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = BytesMut::new();
        for p in payloads {
            encode_frame(&mut stream, FrameKind::Batch, p);
        }
        stream.to_vec()
    }

    /// Deterministic pseudo-random bytes.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn within(p: &[u8], region: &[u8]) -> bool {
        let r = region.as_ptr_range();
        let q = p.as_ptr_range();
        !p.is_empty() && q.start < r.end && r.start < q.end
    }

    proptest! {
        #[test]
        fn frame_reader_never_panics_on_arbitrary_bytes(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            piece in 1usize..300,
            big_region in any::<bool>(),
        ) {
            let region = if big_region { 1 << 17 } else { 4096 };
            let _ = read_all(data, region, piece, 2);
        }

        #[test]
        fn frame_reader_round_trips_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..9000), 0..12),
            piece in 1usize..20_000,
            keep_every in 1usize..4,
            big_region in any::<bool>(),
        ) {
            // 4 KiB: payloads over 4080 B go direct; 128 KiB: all copied out.
            let region = if big_region { 1 << 17 } else { 4096 };
            let (got, err) = read_all(frames(&payloads), region, piece, keep_every);
            prop_assert_eq!(err, None);
            let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, payloads);
        }
    }

    #[test]
    fn small_frames_are_copied_out_and_the_staging_region_is_reused() {
        let payloads: Vec<Vec<u8>> = (0..2000)
            .map(|i| pattern((i * 37) % 3000, i as u64))
            .collect();
        let mut reader = FrameReader::new(64 << 10, 1 << 20);
        // Odd piece sizes split headers and payloads at every offset.
        let mut src = Pieces {
            data: frames(&payloads),
            at: 0,
            piece: 6_999,
        };
        let mut kept = vec![];
        let mut region_at = None;
        while let Some((_, p)) = futures_lite::future::block_on(reader.next(&mut src)).unwrap() {
            assert_eq!(reader.region.len(), 64 << 10, "the region never grows");
            let at = *region_at.get_or_insert(reader.region.as_ptr());
            assert_eq!(at, reader.region.as_ptr(), "the same region for every read");
            assert!(
                !within(&p, &reader.region),
                "a payload must not borrow the staging region"
            );
            assert!(reader.direct.is_none());
            kept.push(p); // every payload stays alive, as in a follower's log
        }
        assert_eq!(kept.len(), payloads.len());
        for (i, (got, want)) in kept.iter().zip(&payloads).enumerate() {
            assert_eq!(&got[..], &want[..], "payload {i}");
        }
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn small_payloads_share_an_arena_that_is_reused_once_they_are_dropped() {
        let read = |reader: &mut FrameReader, payloads: &[Vec<u8>]| {
            let mut src = Pieces {
                data: frames(payloads),
                at: 0,
                piece: 1_500,
            };
            let mut out = vec![];
            while let Some((_, p)) = futures_lite::future::block_on(reader.next(&mut src)).unwrap()
            {
                assert!(!within(&p, &reader.region));
                out.push(p);
            }
            let got: Vec<Vec<u8>> = out.iter().map(|b| b.to_vec()).collect();
            assert_eq!(&got[..], payloads);
            out
        };
        // Four payloads fill 64,000 of the arena's 65,536 bytes, back to back.
        let fill: Vec<Vec<u8>> = (0..4).map(|i| pattern(16_000, i)).collect();
        let next = vec![pattern(2_000, 9)];

        let mut reader = FrameReader::new(64 << 10, 1 << 20);
        let held = read(&mut reader, &fill);
        for w in held.windows(2) {
            assert_eq!(w[0].as_ptr_range().end, w[1].as_ptr());
        }
        // Still held: the next payload goes to a new arena.
        let other = read(&mut reader, &next);
        let arena = held[0].as_ptr()..held[3].as_ptr_range().end;
        assert!(!arena.contains(&other[0].as_ptr()));
        assert_eq!(
            &held[1][..],
            &fill[1][..],
            "held payloads are never overwritten"
        );

        // All dropped before the arena runs out: it is reused from its start.
        let mut reader = FrameReader::new(64 << 10, 1 << 20);
        let dropped = read(&mut reader, &fill);
        let base = dropped[0].as_ptr();
        drop(dropped);
        let again = read(&mut reader, &next);
        assert_eq!(again[0].as_ptr(), base, "arena not reclaimed");
    }

    #[test]
    fn a_large_frame_split_across_many_reads_lands_in_its_own_buffer() {
        let payloads = vec![
            pattern(100, 1),
            pattern(200 << 10, 2),
            pattern(300, 3),
            pattern(70 << 10, 4),
            pattern(10, 5),
        ];
        for piece in [1_000, 4_096, 65_537, 1 << 20] {
            let mut reader = FrameReader::new(16 << 10, 1 << 20);
            let mut src = Pieces {
                data: frames(&payloads),
                at: 0,
                piece,
            };
            let mut got = vec![];
            while let Some((h, p)) = futures_lite::future::block_on(reader.next(&mut src)).unwrap()
            {
                assert!(!within(&p, &reader.region));
                if p.len() >= DIRECT_PAYLOAD_BYTES_MIN.min(reader.region_bytes - 16) {
                    assert_eq!(h.payload_len as usize, p.len());
                    // Direct reads stop at the frame's end: nothing of the
                    // next frame was read with it.
                    assert_eq!(reader.buffered(), 0, "piece {piece}");
                }
                got.push(p.to_vec());
            }
            assert_eq!(got, payloads, "piece {piece}");
        }
    }

    #[test]
    fn garbage_after_a_valid_frame_is_an_error_after_the_frame() {
        for (len, region) in [(50usize, 4096usize), (100 << 10, 4096), (3000, 1 << 20)] {
            let good = pattern(len, 9);
            let mut data = frames(std::slice::from_ref(&good));
            data.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let mut reader = FrameReader::new(region, 1 << 20);
            let mut src = Pieces {
                data,
                at: 0,
                piece: 777,
            };
            let (_, p) = futures_lite::future::block_on(reader.next(&mut src))
                .unwrap()
                .expect("the valid frame first");
            assert_eq!(&p[..], &good[..]);
            let e = futures_lite::future::block_on(reader.next(&mut src)).unwrap_err();
            assert!(
                matches!(e, ReadError::Frame(FrameError::BadMagic { .. })),
                "len {len}: {e}"
            );
        }
    }

    #[test]
    fn a_corrupt_or_cut_large_frame_is_rejected() {
        let good = pattern(100 << 10, 7);
        let data = frames(std::slice::from_ref(&good));
        // One flipped payload byte: the CRC catches it after the direct read.
        let mut bad = data.clone();
        bad[50_000] ^= 0x40;
        let mut reader = FrameReader::new(4096, 1 << 20);
        let mut src = Pieces {
            data: bad,
            at: 0,
            piece: 5_000,
        };
        let e = futures_lite::future::block_on(reader.next(&mut src)).unwrap_err();
        assert!(
            matches!(e, ReadError::Frame(FrameError::BadCrc { .. })),
            "{e}"
        );
        // Cut half-way: truncated, with what was buffered.
        let mut reader = FrameReader::new(4096, 1 << 20);
        let mut src = Pieces {
            data: data[..60_000].to_vec(),
            at: 0,
            piece: 5_000,
        };
        let e = futures_lite::future::block_on(reader.next(&mut src)).unwrap_err();
        assert!(
            matches!(e, ReadError::Truncated { buffered: 60_000 }),
            "{e}"
        );
        // Cut inside a small frame after a good one.
        let mut data = frames(&[pattern(10, 1), pattern(500, 2)]);
        data.truncate(data.len() - 1);
        let mut reader = FrameReader::new(4096, 1 << 20);
        let mut src = Pieces {
            data,
            at: 0,
            piece: 64,
        };
        assert!(futures_lite::future::block_on(reader.next(&mut src))
            .unwrap()
            .is_some());
        let e = futures_lite::future::block_on(reader.next(&mut src)).unwrap_err();
        assert!(matches!(e, ReadError::Truncated { buffered: 515 }), "{e}");
    }

    /// Like `Pieces`, but every other read is pending first (and wakes).
    struct Stalling(Pieces, bool);

    impl AsyncRead for Stalling {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.1 = !self.1;
            if self.1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[test]
    fn dropping_a_pending_read_loses_no_byte() {
        let payloads = vec![
            pattern(10, 1),
            pattern(90 << 10, 2),
            pattern(3000, 3),
            pattern(0, 4),
            pattern(70 << 10, 5),
        ];
        let mut reader = FrameReader::new(8192, 1 << 20);
        let mut src = Stalling(
            Pieces {
                data: frames(&payloads),
                at: 0,
                piece: 3_333,
            },
            false,
        );
        let mut got = vec![];
        let mut polls = 0;
        loop {
            polls += 1;
            assert!(polls < 100_000, "no progress");
            // Poll once and drop the future whether or not it finished.
            let once = futures_lite::future::block_on(futures_lite::future::poll_once(
                reader.next(&mut src),
            ));
            match once {
                None => continue,
                Some(Ok(Some((_, p)))) => got.push(p.to_vec()),
                Some(Ok(None)) => break,
                Some(Err(e)) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        let mut b = Backoff::new(min, max, 42);
        let mut ceilings = vec![];
        for _ in 0..8 {
            let d = b.next_delay();
            ceilings.push(d);
        }
        let expect_ceiling = [10, 20, 40, 80, 100, 100, 100, 100];
        for (d, c) in ceilings.iter().zip(expect_ceiling) {
            let c = Duration::from_millis(c);
            assert!(
                *d >= c / 2 && *d <= c,
                "delay {d:?} outside [{:?}, {c:?}]",
                c / 2
            );
        }
        assert!(
            ceilings[4..].windows(2).any(|w| w[0] != w[1]),
            "jitter varies: {ceilings:?}"
        );
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
