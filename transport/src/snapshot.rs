//! Snapshot streams: one dedicated connection per snapshot.
//!
//! ```text
//!  sender (send_snapshot)                     receiver (SnapshotHandler)
//!    | Hello{kind=Snapshot} ----------------->  | handshake as for messages
//!    | <------------------------------ HelloAck |
//!    | SnapshotBegin(header) ----------------->  | handler.open(from, header) -> sink | reject
//!    | <----------------- SnapshotReply(status) |
//!    | SnapshotChunk(seq=0, data) ------------>  | sink.write_all(data)
//!    | SnapshotChunk(seq=1, data) ------------>  |   ... at most `window` chunks un-acked
//!    | <------------------ SnapshotChunkAck(0)  | (ack = chunk written into the sink)
//!    | ...                                      |
//!    | SnapshotEnd(total, chunks, crc32) ----->  | verify length + end-to-end CRC,
//!    |                                          | sink.close() (durable), handler.finished(Ok)
//!    | <------------------ SnapshotDone(status) |
//! ```
//!
//! Frame payloads (inside the usual frame header of [`crate::wire`]):
//!
//! ```text
//! SnapshotBegin    | opaque header bytes                      |
//! SnapshotReply    | status u8 (0 accept, 1 reject) | reason utf8 |
//! SnapshotChunk    | seq u64 | data                           |
//! SnapshotChunkAck | seq u64 (every chunk <= seq is in the sink) |
//! SnapshotEnd      | total_bytes u64 | chunks u64 | crc32 u32 (of all data) |
//! SnapshotDone     | status u8 (0 durable, 1 failed) | reason utf8 |
//! ```
//!
//! Flow control is the window of un-acknowledged chunks (so the receiver
//! holds at most `window` chunks in memory, however slow its sink) plus TCP
//! backpressure. Any failure — connection broken, idle timeout, bad frame,
//! sink or source error, CRC mismatch — ends the stream on both sides: the
//! sender's `send_snapshot` returns the error and the receiver's handler
//! gets `finished(Err(..))`. The caller retries from the start.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::{info, warn};

use crate::conn::{dial, FrameReader, ReadError};
use crate::error::{DialError, SnapshotError};
use crate::ids::PeerId;
use crate::transport::Inner;
use crate::wire::{
    put_frame_header, read_u32, read_u64, ConnectionKind, FrameKind, FRAME_HEADER_BYTES,
};

/// Where a received snapshot is written. `close()` must make the data
/// durable (e.g. fdatasync a file) before it returns `Ok`.
pub type SnapshotSink = Box<dyn AsyncWrite + Unpin>;

/// What [`SnapshotHandler::open`] returns.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<SnapshotSink, String>>>>;

/// The receiving side of snapshot streams, registered with
/// [`crate::Transport::set_snapshot_handler`].
pub trait SnapshotHandler {
    /// A peer opens a stream with `header`: return the sink to write it to,
    /// or a reason to reject it (sent back to the sender).
    fn open(&self, from: PeerId, header: Bytes) -> OpenFuture;

    /// Called exactly once for every stream `open` accepted: `Ok` once the
    /// sink is closed (durable) and verified, before the sender is told;
    /// `Err` if the stream broke (the sink was dropped unclosed: discard it).
    fn finished(
        &self,
        from: PeerId,
        header: Bytes,
        outcome: Result<SnapshotReceived, SnapshotError>,
    );
}

/// A snapshot delivered to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Payload bytes streamed (not counting the header).
    pub bytes: u64,
    /// Chunks streamed.
    pub chunks: u64,
    /// CRC32 of the payload.
    pub crc: u32,
}

/// A snapshot received into a closed sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReceived {
    /// Payload bytes written into the sink.
    pub bytes: u64,
    /// Chunks received.
    pub chunks: u64,
    /// CRC32 of the payload (matches the sender's).
    pub crc: u32,
}

/// Appends a complete frame of `kind` with the payload `parts` concatenated.
fn encode(out: &mut BytesMut, kind: FrameKind, parts: &[&[u8]]) {
    out.clear();
    out.resize(FRAME_HEADER_BYTES, 0);
    for p in parts {
        out.extend_from_slice(p);
    }
    let (h, p) = out.split_at_mut(FRAME_HEADER_BYTES);
    let mut tmp = [0u8; FRAME_HEADER_BYTES];
    put_frame_header(&mut tmp, 0, kind, p);
    h.copy_from_slice(&tmp);
}

async fn write_frame(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    kind: FrameKind,
    parts: &[&[u8]],
) -> Result<(), SnapshotError> {
    encode(out, kind, parts);
    stream.write_all(out).await.map_err(SnapshotError::Io)
}

async fn read_frame(
    inner: &Inner,
    reader: &mut FrameReader,
    stream: &mut TcpStream,
) -> Result<(FrameKind, Bytes), SnapshotError> {
    let idle = inner.config.snapshot_idle_timeout;
    let next = or(async { Some(reader.next(stream).await) }, async {
        glommio::timer::sleep(idle).await;
        None
    })
    .await;
    match next {
        None => Err(SnapshotError::Timeout),
        Some(Ok(Some((h, p)))) => Ok((h.kind, p)),
        Some(Ok(None)) => Err(SnapshotError::Closed),
        Some(Err(e)) => {
            inner.count_read_error(&e);
            Err(match e {
                ReadError::Io(e) => SnapshotError::Io(e),
                ReadError::Frame(f) => SnapshotError::Frame(f),
                ReadError::Truncated { .. } => SnapshotError::Closed,
            })
        }
    }
}

fn status_payload(p: &Bytes) -> Result<(u8, String), SnapshotError> {
    let Some((&status, reason)) = p.split_first() else {
        return Err(SnapshotError::Protocol("empty status frame"));
    };
    Ok((status, String::from_utf8_lossy(reason).into_owned()))
}

/// The sending side; see [`crate::Transport::send_snapshot`].
pub(crate) async fn send<R: AsyncRead + Unpin>(
    inner: &Rc<Inner>,
    to: PeerId,
    header: Bytes,
    mut source: R,
) -> Result<SnapshotSent, SnapshotError> {
    let config = &inner.config;
    if header.len() > config.frame_bytes_max as usize {
        return Err(SnapshotError::Protocol(
            "snapshot header larger than frame_bytes_max",
        ));
    }
    let addr = inner.registry.resolve(to).ok_or(DialError::NoAddress(to))?;
    let mut stream = dial(config, to, addr, ConnectionKind::Snapshot).await?;
    let _ = stream.set_write_timeout(Some(config.snapshot_idle_timeout));
    let mut reader = FrameReader::new(4096, config.frame_bytes_max);
    let mut out = BytesMut::new();
    write_frame(&mut stream, &mut out, FrameKind::SnapshotBegin, &[&header]).await?;
    match read_frame(inner, &mut reader, &mut stream).await? {
        (FrameKind::SnapshotReply, p) => {
            let (status, reason) = status_payload(&p)?;
            if status != 0 {
                return Err(SnapshotError::Rejected(reason));
            }
        }
        _ => return Err(SnapshotError::Protocol("expected SnapshotReply")),
    }
    info!(local = %config.local, peer = %to, "snapshot stream started");

    let chunk_bytes = config.snapshot_chunk_bytes as usize;
    let window = u64::from(config.snapshot_window_chunks);
    let mut next_seq: u64 = 0; // chunks sent
    let mut acked: u64 = 0; // chunks acknowledged; invariant: acked <= next_seq
    let mut crc = crc32fast::Hasher::new();
    let mut total: u64 = 0;
    let mut eof = false;
    let mut frame = BytesMut::new();
    loop {
        while !eof && next_seq - acked < window {
            // Read the chunk straight into the frame buffer, behind its header.
            let at = FRAME_HEADER_BYTES + 8;
            frame.clear();
            frame.resize(at + chunk_bytes, 0);
            let mut n = 0;
            while n < chunk_bytes {
                let k = source
                    .read(&mut frame[at + n..])
                    .await
                    .map_err(SnapshotError::Source)?;
                if k == 0 {
                    eof = true;
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            frame.truncate(at + n);
            frame[FRAME_HEADER_BYTES..at].copy_from_slice(&next_seq.to_le_bytes());
            crc.update(&frame[at..]);
            total += n as u64;
            let (h, p) = frame.split_at_mut(FRAME_HEADER_BYTES);
            let mut tmp = [0u8; FRAME_HEADER_BYTES];
            put_frame_header(&mut tmp, 0, FrameKind::SnapshotChunk, p);
            h.copy_from_slice(&tmp);
            if let Err(e) = stream.write_all(&frame).await {
                // The receiver may have failed and said why before closing.
                return Err(remote_reason(inner, &mut reader, &mut stream)
                    .await
                    .unwrap_or(SnapshotError::Io(e)));
            }
            next_seq += 1;
            glommio::yield_if_needed().await;
        }
        if eof && acked == next_seq {
            break;
        }
        match read_frame(inner, &mut reader, &mut stream).await? {
            (FrameKind::SnapshotChunkAck, p) if p.len() == 8 => {
                let seq = read_u64(&p, 0);
                if seq < acked || seq >= next_seq {
                    return Err(SnapshotError::Protocol("ack for a chunk not in flight"));
                }
                acked = seq + 1;
            }
            (FrameKind::SnapshotDone, p) => {
                let (_, reason) = status_payload(&p)?;
                return Err(SnapshotError::Remote(reason));
            }
            _ => return Err(SnapshotError::Protocol("expected SnapshotChunkAck")),
        }
    }
    let crc = crc.finalize();
    write_frame(
        &mut stream,
        &mut out,
        FrameKind::SnapshotEnd,
        &[
            &total.to_le_bytes(),
            &next_seq.to_le_bytes(),
            &crc.to_le_bytes(),
        ],
    )
    .await?;
    match read_frame(inner, &mut reader, &mut stream).await? {
        (FrameKind::SnapshotDone, p) => {
            let (status, reason) = status_payload(&p)?;
            if status != 0 {
                return Err(SnapshotError::Remote(reason));
            }
        }
        _ => return Err(SnapshotError::Protocol("expected SnapshotDone")),
    }
    info!(local = %config.local, peer = %to, bytes = total, chunks = next_seq, "snapshot sent");
    Ok(SnapshotSent {
        bytes: total,
        chunks: next_seq,
        crc,
    })
}

/// The receiving side: serves one accepted snapshot connection.
pub(crate) async fn receive(inner: &Rc<Inner>, mut stream: TcpStream, from: PeerId) {
    let config = &inner.config;
    let _ = stream.set_write_timeout(Some(config.snapshot_idle_timeout));
    let mut reader = FrameReader::new(
        config.snapshot_chunk_bytes as usize + 64,
        config.frame_bytes_max,
    );
    let mut out = BytesMut::new();
    let header = match inner
        .until_shutdown(read_frame(inner, &mut reader, &mut stream))
        .await
    {
        None => return,
        Some(Ok((FrameKind::SnapshotBegin, header))) => header,
        Some(Ok(_)) => {
            inner.rejected.borrow_mut().bad_kind += 1;
            warn!(local = %config.local, %from, "snapshot connection did not start with SnapshotBegin");
            return;
        }
        Some(Err(e)) => {
            warn!(local = %config.local, %from, error = %e, "snapshot connection failed before its header");
            return;
        }
    };
    let handler = inner.snapshot_handler.borrow().clone();
    let opened = match handler {
        None => Err("no snapshot handler registered".to_string()),
        Some(h) => match inner.until_shutdown(h.open(from, header.clone())).await {
            None => return,
            Some(r) => r.map(|sink| (h, sink)),
        },
    };
    let (handler, sink) = match opened {
        Ok(x) => x,
        Err(reason) => {
            inner.snapshot_metrics.borrow_mut().receive_failed += 1;
            warn!(local = %config.local, %from, %reason, "snapshot rejected");
            let _ = write_frame(
                &mut stream,
                &mut out,
                FrameKind::SnapshotReply,
                &[&[1], reason.as_bytes()],
            )
            .await;
            return;
        }
    };
    let body = async {
        write_frame(&mut stream, &mut out, FrameKind::SnapshotReply, &[&[0]]).await?;
        receive_body(inner, &mut stream, &mut reader, &mut out, sink).await
    };
    let outcome = match inner.until_shutdown(body).await {
        None => Err(SnapshotError::ShuttingDown),
        Some(r) => r,
    };
    match outcome {
        Ok(received) => {
            {
                let mut m = inner.snapshot_metrics.borrow_mut();
                m.received += 1;
                m.bytes_received += received.bytes;
            }
            info!(local = %config.local, %from, bytes = received.bytes, "snapshot received");
            handler.finished(from, header, Ok(received));
            let _ = write_frame(&mut stream, &mut out, FrameKind::SnapshotDone, &[&[0]]).await;
            // Wait for the sender to close, so it surely read the verdict.
            let _ = or(
                async { reader.next(&mut stream).await.map(|_| ()) },
                async {
                    glommio::timer::sleep(config.snapshot_idle_timeout).await;
                    Ok(())
                },
            )
            .await;
        }
        Err(e) => {
            inner.snapshot_metrics.borrow_mut().receive_failed += 1;
            warn!(local = %config.local, %from, error = %e, "snapshot receive failed");
            let reason = e.to_string();
            handler.finished(from, header, Err(e));
            // Best effort: the connection may be what broke.
            let _ = or(
                write_frame(
                    &mut stream,
                    &mut out,
                    FrameKind::SnapshotDone,
                    &[&[1], reason.as_bytes()],
                ),
                async {
                    glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
                    Ok(())
                },
            )
            .await;
            // Half-close and drain what the sender still has in flight, so
            // our close does not reset the connection and discard the
            // verdict before the sender reads it.
            let _ = futures_lite::AsyncWriteExt::close(&mut stream).await;
            let mut scratch = vec![0u8; 64 << 10];
            let _ = or(
                async {
                    while let Ok(n) = stream.read(&mut scratch).await {
                        if n == 0 {
                            break;
                        }
                    }
                },
                glommio::timer::sleep(std::time::Duration::from_secs(1)),
            )
            .await;
        }
    }
}

/// After a failed write: the receiver's `SnapshotDone` verdict, if it sent
/// one before closing. Skips acks still in the pipe (at most one window of
/// them); gives up after 500 ms.
async fn remote_reason(
    inner: &Inner,
    reader: &mut FrameReader,
    stream: &mut TcpStream,
) -> Option<SnapshotError> {
    let frames_max = inner.config.snapshot_window_chunks as usize + 2;
    let search = async {
        for _ in 0..frames_max {
            match reader.next(stream).await {
                Ok(Some((h, p))) if h.kind == FrameKind::SnapshotDone => {
                    return status_payload(&p)
                        .ok()
                        .map(|(_, r)| SnapshotError::Remote(r));
                }
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
        None
    };
    or(search, async {
        glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
        None
    })
    .await
}

async fn receive_body(
    inner: &Inner,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    out: &mut BytesMut,
    mut sink: SnapshotSink,
) -> Result<SnapshotReceived, SnapshotError> {
    let mut crc = crc32fast::Hasher::new();
    let mut total: u64 = 0;
    let mut next_seq: u64 = 0;
    let mut ack = BytesMut::with_capacity(8);
    loop {
        match read_frame(inner, reader, stream).await? {
            (FrameKind::SnapshotChunk, p) if p.len() >= 8 => {
                let seq = read_u64(&p, 0);
                if seq != next_seq {
                    return Err(SnapshotError::Protocol("snapshot chunk out of sequence"));
                }
                let data = p.slice(8..);
                sink.write_all(&data).await.map_err(SnapshotError::Sink)?;
                crc.update(&data);
                total += data.len() as u64;
                next_seq += 1;
                ack.clear();
                ack.put_u64_le(seq);
                write_frame(stream, out, FrameKind::SnapshotChunkAck, &[&ack]).await?;
            }
            (FrameKind::SnapshotEnd, p) if p.len() == 20 => {
                let expected_bytes = read_u64(&p, 0);
                let expected_chunks = read_u64(&p, 8);
                let expected_crc = read_u32(&p, 16);
                let crc = crc.finalize();
                if expected_bytes != total || expected_crc != crc || expected_chunks != next_seq {
                    return Err(SnapshotError::Mismatch {
                        bytes: total,
                        crc,
                        expected_bytes,
                        expected_crc,
                    });
                }
                sink.close().await.map_err(SnapshotError::Sink)?;
                return Ok(SnapshotReceived {
                    bytes: total,
                    chunks: next_seq,
                    crc,
                });
            }
            _ => {
                inner.rejected.borrow_mut().bad_kind += 1;
                return Err(SnapshotError::Protocol(
                    "expected SnapshotChunk or SnapshotEnd",
                ));
            }
        }
    }
}
