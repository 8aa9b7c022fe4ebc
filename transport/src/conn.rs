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

/// Smallest read worth issuing; below this the buffer is refreshed first.
const READ_BYTES_MIN: usize = 4096;
/// Retired read regions kept for reuse per connection.
const SPARE_REGIONS_MAX: usize = 4;

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

/// Reads frames off a stream into one growing buffer and hands out payloads
/// as zero-copy `Bytes` slices of it.
///
/// Invariant: `filled <= buf.len()`; `buf[..filled]` is data received and not
/// yet handed out, `buf[filled..]` is zeroed space the next read fills (so no
/// read ever targets uninitialised memory, and each byte is zeroed once).
pub(crate) struct FrameReader {
    buf: BytesMut,
    filled: usize,
    read_bytes: usize,
    frame_bytes_max: u32,
    /// Retired regions, reused once the consumer has dropped their frames.
    spares: Vec<BytesMut>,
}

impl FrameReader {
    pub(crate) fn new(read_bytes: usize, frame_bytes_max: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            filled: 0,
            read_bytes: read_bytes.max(READ_BYTES_MIN),
            frame_bytes_max,
            spares: Vec::new(),
        }
    }

    /// Bytes received and not yet returned as frames.
    pub(crate) fn buffered(&self) -> usize {
        self.filled
    }

    /// The next frame: `Ok(None)` on a clean end of stream at a frame boundary.
    /// Returns the header, the payload and the frame's size on the wire.
    pub(crate) async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<(FrameHeader, Bytes)>, ReadError> {
        loop {
            let need_total = if self.filled >= FRAME_HEADER_BYTES {
                let header =
                    parse_frame_header(&self.buf[..FRAME_HEADER_BYTES], self.frame_bytes_max)?;
                let total = FRAME_HEADER_BYTES + header.payload_len as usize;
                if self.filled >= total {
                    let mut frame = self.buf.split_to(total).freeze();
                    self.filled -= total;
                    let payload = frame.split_off(FRAME_HEADER_BYTES);
                    check_crc(&header, &payload)?;
                    return Ok(Some((header, payload)));
                }
                total
            } else {
                FRAME_HEADER_BYTES
            };
            self.make_room(need_total);
            debug_assert!(self.buf.len() > self.filled);
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return if self.filled == 0 {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated {
                        buffered: self.filled,
                    })
                };
            }
            self.filled += n;
            debug_assert!(self.filled <= self.buf.len());
        }
    }

    /// Makes `buf[filled..]` large enough to read the rest of a frame of
    /// `need_total` bytes (and at least a useful read).
    ///
    /// Frames handed out keep their region alive until the consumer drops
    /// them, so a new region is often needed. Regions are recycled: a
    /// retired region is kept (up to `SPARE_REGIONS_MAX`) and reused once
    /// all its frames are gone, so steady state allocates nothing and takes
    /// no page faults.
    fn make_room(&mut self, need_total: usize) {
        debug_assert!(need_total > self.filled);
        if self.buf.len() >= need_total
            && self.buf.len() - self.filled >= READ_BYTES_MIN.min(need_total - self.filled)
        {
            return;
        }
        let want = need_total.max(self.filled + self.read_bytes);
        self.buf.truncate(self.filled);
        if !self.buf.try_reclaim(want - self.filled) {
            let recycled = self
                .spares
                .iter_mut()
                .position(|s| s.try_reclaim(want))
                .map(|i| self.spares.swap_remove(i));
            let mut next = recycled.unwrap_or_else(|| BytesMut::with_capacity(want));
            debug_assert!(next.is_empty());
            next.extend_from_slice(&self.buf[..self.filled]);
            let mut old = std::mem::replace(&mut self.buf, next);
            old.clear();
            if self.spares.len() < SPARE_REGIONS_MAX {
                self.spares.push(old);
            }
        }
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
        debug_assert!(self.buf.len() >= need_total);
    }
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

    /// Reads every frame; keeps every `keep_every`-th payload alive (so
    /// regions are retired while shared, then recycled).
    fn read_all(data: Vec<u8>, piece: usize, keep_every: usize) -> (Vec<Bytes>, Option<String>) {
        let mut reader = FrameReader::new(4096, 1 << 16);
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

    proptest! {
        #[test]
        fn frame_reader_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..2048), piece in 1usize..300) {
            let _ = read_all(data, piece, 2);
        }

        #[test]
        fn frame_reader_round_trips_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..9000), 0..12),
            piece in 1usize..20_000,
            keep_every in 1usize..4,
        ) {
            let mut stream = BytesMut::new();
            for p in &payloads {
                encode_frame(&mut stream, FrameKind::Batch, p);
            }
            let (got, err) = read_all(stream.to_vec(), piece, keep_every);
            prop_assert_eq!(err, None);
            let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, payloads);
        }
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
