//! The snapshot stream format: writer, reader and their chunk framing.
//!
//! A snapshot is written in two steps (see [`crate::Rsm::capture`]): a
//! synchronous capture of a consistent view, then an asynchronous write of
//! that view to any `AsyncWrite` while the live state machine keeps applying.
//! Recovery reads and verifies the whole stream into fresh state and only
//! then replaces the live state ([`crate::Rsm::install`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::ready;

use crate::error::SnapshotError;
use crate::session::{SessionConfig, SessionTable};
use crate::state_machine::{SmSnapshot, StateMachine};

/// First 8 bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FLOTSNAP";
/// Last 8 bytes of every snapshot.
pub const SNAPSHOT_END_MAGIC: [u8; 8] = *b"FLOTEND\n";
/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Data bytes per chunk the writer emits.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Largest chunk the reader accepts.
pub const CHUNK_BYTES_MAX: u32 = 4 << 20;
/// Largest state-machine kind name.
pub const KIND_BYTES_MAX: u16 = 255;
/// Largest membership blob.
pub const MEMBERSHIP_BYTES_MAX: u32 = 16 << 20;

const CHUNK_HEADER_BYTES: usize = 8;
/// Piece size for reading length-prefixed header fields, so a corrupt length
/// never allocates more than the stream actually holds (plus one piece).
const READ_PIECE_BYTES: usize = 64 << 10;

/// What a snapshot says about the log: the index it covers and the group's
/// membership at that index (opaque bytes owned by the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Every entry up to and including this index is in the snapshot.
    pub applied_index: u64,
    /// The membership as of `applied_index`, as given to
    /// [`crate::Rsm::capture`].
    pub membership: Bytes,
}

/// Sizes of a written snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Total bytes written to the sink.
    pub total_bytes: u64,
    /// Bytes of state-machine data (before chunk framing).
    pub data_bytes: u64,
    /// The CRC32 stored in the trailer.
    pub stream_crc: u32,
}

/// A captured snapshot, ready to be written (by [`crate::Rsm::capture`]).
/// Owns everything it needs (`'static`), so it can be moved into a task.
/// Drop it once written: while it lives, the live state machine copies each
/// node it shares with it on the first write to that node.
pub struct SnapshotWriter {
    pub(crate) meta: SnapshotMeta,
    pub(crate) kind: String,
    pub(crate) sessions: Bytes,
    pub(crate) data: Box<dyn SmSnapshot>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("meta", &self.meta)
            .field("kind", &self.kind)
            .field("sessions_bytes", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// The snapshot's applied index and membership.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Writes the snapshot to `sink` and flushes it. Calling it again writes
    /// byte-identical output. The sink is not closed (nor synced: syncing a
    /// file is the caller's job).
    ///
    /// ```text
    /// header  | magic "FLOTSNAP" | version u16 = 1 | flags u16 = 0 | applied_index u64 |
    ///         | kind_len u16 | kind (utf-8)  | membership_len u32 | membership |
    ///         | sessions_len u32 | session table (SessionTable::encode) |
    ///         | header_crc u32 = crc32(every header byte before it) |
    /// data    | chunk * | where chunk = | len u32 (1..=4 MiB) | crc32(data) u32 | data |
    ///         | 0u32 | 0u32 |              (terminator: a chunk of length 0)
    /// trailer | data_bytes u64 | stream_crc u32 | "FLOTEND\n" |
    /// ```
    /// All integers little-endian; `stream_crc` is the CRC32 of every byte
    /// before it. The chunked data section is what the state machine's
    /// [`SmSnapshot::write_to`] wrote, cut into 64 KiB chunks.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the sink fails.
    pub async fn write_to(
        &self,
        sink: &mut (dyn AsyncWrite + Unpin),
    ) -> Result<SnapshotInfo, SnapshotError> {
        let header = encode_header(&self.meta, &self.kind, &self.sessions);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        sink.write_all(&header).await?;
        let mut cw = ChunkWriter::new(sink, crc);
        self.data.write_to(&mut cw).await?;
        let (mut crc, data_bytes, frame_bytes) = cw.finish().await?;
        let mut trailer = [0u8; 20];
        trailer[..8].copy_from_slice(&data_bytes.to_le_bytes());
        crc.update(&trailer[..8]);
        let stream_crc = crc.finalize();
        trailer[8..12].copy_from_slice(&stream_crc.to_le_bytes());
        trailer[12..].copy_from_slice(&SNAPSHOT_END_MAGIC);
        sink.write_all(&trailer).await?;
        sink.flush().await?;
        Ok(SnapshotInfo {
            total_bytes: header.len() as u64 + frame_bytes + trailer.len() as u64,
            data_bytes,
            stream_crc,
        })
    }
}

fn encode_header(meta: &SnapshotMeta, kind: &str, sessions: &[u8]) -> Vec<u8> {
    assert!(kind.len() <= KIND_BYTES_MAX as usize, "kind name too long");
    assert!(
        meta.membership.len() <= MEMBERSHIP_BYTES_MAX as usize,
        "membership too large"
    );
    assert!(
        u32::try_from(sessions.len()).is_ok(),
        "session table over 4 GiB"
    );
    let mut h = Vec::with_capacity(40 + kind.len() + meta.membership.len() + sessions.len());
    h.extend_from_slice(&SNAPSHOT_MAGIC);
    h.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&meta.applied_index.to_le_bytes());
    h.extend_from_slice(&(kind.len() as u16).to_le_bytes());
    h.extend_from_slice(kind.as_bytes());
    h.extend_from_slice(&(meta.membership.len() as u32).to_le_bytes());
    h.extend_from_slice(&meta.membership);
    h.extend_from_slice(&(sessions.len() as u32).to_le_bytes());
    h.extend_from_slice(sessions);
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Reads `n` bytes, hashing them into `crcs`.
async fn read_hashed<const N: usize>(
    src: &mut (dyn AsyncRead + Unpin),
    crcs: &mut [&mut crc32fast::Hasher],
) -> Result<[u8; N], SnapshotError> {
    let mut b = [0u8; N];
    src.read_exact(&mut b).await?;
    for c in crcs.iter_mut() {
        c.update(&b);
    }
    Ok(b)
}

/// Reads a `len`-byte field in pieces (see [`READ_PIECE_BYTES`]).
async fn read_field(
    src: &mut (dyn AsyncRead + Unpin),
    len: usize,
    crcs: &mut [&mut crc32fast::Hasher],
) -> Result<Vec<u8>, SnapshotError> {
    let mut v = Vec::with_capacity(len.min(READ_PIECE_BYTES));
    while v.len() < len {
        let start = v.len();
        let piece = (len - start).min(READ_PIECE_BYTES);
        v.resize(start + piece, 0);
        src.read_exact(&mut v[start..]).await?;
    }
    for c in crcs.iter_mut() {
        c.update(&v);
    }
    Ok(v)
}

/// The verified pieces of a snapshot stream.
pub(crate) struct ReadSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) sessions: SessionTable,
}

/// Reads and verifies a whole snapshot from `src`, loading the state-machine
/// data into `sm` (a fresh instance). Nothing outside `sm` is touched.
pub(crate) async fn read_snapshot(
    src: &mut (dyn AsyncRead + Unpin),
    sm: &mut dyn StateMachine,
    session_config: SessionConfig,
) -> Result<ReadSnapshot, SnapshotError> {
    let mut stream = crc32fast::Hasher::new();
    let mut header = crc32fast::Hasher::new();
    let magic: [u8; 8] = read_hashed(src, &mut [&mut stream, &mut header]).await?;
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic { found: magic });
    }
    let fixed: [u8; 14] = read_hashed(src, &mut [&mut stream, &mut header]).await?;
    let version = u16::from_le_bytes([fixed[0], fixed[1]]);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { version });
    }
    let applied_index = u64::from_le_bytes(fixed[4..12].try_into().expect("8 bytes"));
    let kind_len = u16::from_le_bytes([fixed[12], fixed[13]]);
    if kind_len > KIND_BYTES_MAX {
        return Err(SnapshotError::TooLarge {
            what: "kind",
            len: u64::from(kind_len),
            max: u64::from(KIND_BYTES_MAX),
        });
    }
    let kind = read_field(src, kind_len as usize, &mut [&mut stream, &mut header]).await?;
    let membership_len =
        u32::from_le_bytes(read_hashed(src, &mut [&mut stream, &mut header]).await?);
    if membership_len > MEMBERSHIP_BYTES_MAX {
        return Err(SnapshotError::TooLarge {
            what: "membership",
            len: u64::from(membership_len),
            max: u64::from(MEMBERSHIP_BYTES_MAX),
        });
    }
    let membership = read_field(
        src,
        membership_len as usize,
        &mut [&mut stream, &mut header],
    )
    .await?;
    let sessions_len = u32::from_le_bytes(read_hashed(src, &mut [&mut stream, &mut header]).await?);
    // Any u32 length: `read_field` allocates only as bytes arrive.
    let sessions = read_field(src, sessions_len as usize, &mut [&mut stream, &mut header]).await?;
    let header_len =
        8 + 14 + u64::from(kind_len) + 4 + u64::from(membership_len) + 4 + u64::from(sessions_len);
    let stored = u32::from_le_bytes(read_hashed(src, &mut [&mut stream]).await?);
    let computed = header.finalize();
    if stored != computed {
        return Err(SnapshotError::Checksum {
            section: "header",
            offset: 0,
            stored,
            computed,
        });
    }
    let kind = String::from_utf8_lossy(&kind).into_owned();
    if kind != sm.kind() {
        return Err(SnapshotError::KindMismatch {
            expected: sm.kind().to_owned(),
            found: kind,
        });
    }
    let sessions =
        SessionTable::decode(session_config, Bytes::from(sessions)).map_err(|error| {
            SnapshotError::Corrupt {
                section: "session table",
                error,
            }
        })?;

    let mut cr = ChunkReader::new(src, stream, header_len + 4);
    let recovered = sm.recover(&mut cr).await;
    if let Some(fault) = cr.fault.take() {
        return Err(fault);
    }
    recovered?;
    // The state machine must have consumed its whole section.
    let mut scratch = [0u8; 4096];
    let mut leftover = 0u64;
    loop {
        let n = match cr.read(&mut scratch).await {
            Ok(n) => n,
            Err(e) => return Err(cr.fault.take().unwrap_or(SnapshotError::from(e))),
        };
        if n == 0 {
            break;
        }
        leftover += n as u64;
    }
    if leftover > 0 {
        return Err(SnapshotError::TrailingData { len: leftover });
    }
    let (mut stream, data_read, _) = cr.into_parts();
    let data_bytes_raw: [u8; 8] = read_hashed(src, &mut [&mut stream]).await?;
    let data_bytes = u64::from_le_bytes(data_bytes_raw);
    let stored: [u8; 4] = read_hashed(src, &mut []).await?;
    let stored = u32::from_le_bytes(stored);
    let computed = stream.finalize();
    if stored != computed {
        return Err(SnapshotError::Checksum {
            section: "stream",
            offset: 0,
            stored,
            computed,
        });
    }
    if data_bytes != data_read {
        return Err(SnapshotError::Mismatch {
            what: "data bytes",
            stored: data_bytes,
            read: data_read,
        });
    }
    let end: [u8; 8] = read_hashed(src, &mut []).await?;
    if end != SNAPSHOT_END_MAGIC {
        return Err(SnapshotError::BadMagic { found: end });
    }
    Ok(ReadSnapshot {
        meta: SnapshotMeta {
            applied_index,
            membership: Bytes::from(membership),
        },
        sessions,
    })
}

/// Cuts what the state machine writes into CRC-checked chunks (see
/// [`SnapshotWriter::write_to`] for the layout).
struct ChunkWriter<'a> {
    inner: &'a mut (dyn AsyncWrite + Unpin),
    stream_crc: crc32fast::Hasher,
    /// A chunk header slot followed by up to `CHUNK_BYTES` of data.
    buf: Vec<u8>,
    /// `buf` holds a finished chunk being written to `inner`.
    sealed: bool,
    /// Bytes of the sealed chunk already written.
    written: usize,
    data_bytes: u64,
    frame_bytes: u64,
}

impl<'a> ChunkWriter<'a> {
    fn new(inner: &'a mut (dyn AsyncWrite + Unpin), stream_crc: crc32fast::Hasher) -> Self {
        let mut buf = Vec::with_capacity(CHUNK_HEADER_BYTES + CHUNK_BYTES);
        buf.resize(CHUNK_HEADER_BYTES, 0);
        Self {
            inner,
            stream_crc,
            buf,
            sealed: false,
            written: 0,
            data_bytes: 0,
            frame_bytes: 0,
        }
    }

    fn seal(&mut self) {
        debug_assert!(!self.sealed);
        let len = self.buf.len() - CHUNK_HEADER_BYTES;
        debug_assert!(len > 0 && len <= CHUNK_BYTES);
        let crc = crc32fast::hash(&self.buf[CHUNK_HEADER_BYTES..]);
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.stream_crc.update(&self.buf);
        self.sealed = true;
        self.written = 0;
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.sealed);
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.frame_bytes += self.buf.len() as u64;
        self.buf.truncate(CHUNK_HEADER_BYTES);
        self.sealed = false;
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.sealed && self.buf.len() > CHUNK_HEADER_BYTES {
            self.seal();
        }
        if self.sealed {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the last chunk and the terminator; returns the stream CRC so
    /// far, the data bytes and the framed bytes written.
    async fn finish(mut self) -> io::Result<(crc32fast::Hasher, u64, u64)> {
        futures_lite::future::poll_fn(|cx| self.poll_write_out(cx)).await?;
        let terminator = [0u8; CHUNK_HEADER_BYTES];
        self.stream_crc.update(&terminator);
        self.inner.write_all(&terminator).await?;
        Ok((
            self.stream_crc,
            self.data_bytes,
            self.frame_bytes + CHUNK_HEADER_BYTES as u64,
        ))
    }
}

impl AsyncWrite for ChunkWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.sealed {
                ready!(this.poll_drain(cx))?;
            }
            let space = CHUNK_BYTES - (this.buf.len() - CHUNK_HEADER_BYTES);
            if space == 0 {
                this.seal();
                continue;
            }
            let n = space.min(data.len());
            this.buf.extend_from_slice(&data[..n]);
            this.data_bytes += n as u64;
            return Poll::Ready(Ok(n));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    /// Same as flush: the snapshot continues after the data section.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Header,
    Body,
    Serve,
    End,
    Failed,
}

/// Reads the chunked data section, verifying each chunk's CRC before any of
/// its bytes are handed out; reads EOF at the terminator.
struct ChunkReader<'a> {
    inner: &'a mut (dyn AsyncRead + Unpin),
    stream_crc: crc32fast::Hasher,
    /// Stream offset of the next byte read from `inner`.
    offset: u64,
    state: ReadState,
    hdr: [u8; CHUNK_HEADER_BYTES],
    hdr_filled: usize,
    chunk_offset: u64,
    chunk_crc: u32,
    buf: Vec<u8>,
    filled: usize,
    pos: usize,
    data_bytes: u64,
    /// Why reading failed (the reader returns a generic io error).
    fault: Option<SnapshotError>,
}

impl<'a> ChunkReader<'a> {
    fn new(
        inner: &'a mut (dyn AsyncRead + Unpin),
        stream_crc: crc32fast::Hasher,
        offset: u64,
    ) -> Self {
        Self {
            inner,
            stream_crc,
            offset,
            state: ReadState::Header,
            hdr: [0; CHUNK_HEADER_BYTES],
            hdr_filled: 0,
            chunk_offset: 0,
            chunk_crc: 0,
            buf: Vec::new(),
            filled: 0,
            pos: 0,
            data_bytes: 0,
            fault: None,
        }
    }

    fn fail(&mut self, e: SnapshotError) -> Poll<io::Result<usize>> {
        self.fault = Some(e);
        self.state = ReadState::Failed;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt snapshot data section",
        )))
    }

    fn into_parts(self) -> (crc32fast::Hasher, u64, u64) {
        debug_assert_eq!(self.state, ReadState::End);
        (self.stream_crc, self.data_bytes, self.offset)
    }
}

impl AsyncRead for ChunkReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.state {
                ReadState::Header => {
                    while this.hdr_filled < CHUNK_HEADER_BYTES {
                        let n = match ready!(Pin::new(&mut *this.inner)
                            .poll_read(cx, &mut this.hdr[this.hdr_filled..]))
                        {
                            Ok(n) => n,
                            Err(e) => return this.fail(SnapshotError::from(e)),
                        };
                        if n == 0 {
                            return this.fail(SnapshotError::Truncated);
                        }
                        this.hdr_filled += n;
                    }
                    this.hdr_filled = 0;
                    this.stream_crc.update(&this.hdr);
                    this.chunk_offset = this.offset;
                    this.offset += CHUNK_HEADER_BYTES as u64;
                    let len = u32::from_le_bytes(this.hdr[..4].try_into().expect("4 bytes"));
                    this.chunk_crc = u32::from_le_bytes(this.hdr[4..].try_into().expect("4 bytes"));
                    if len == 0 {
                        if this.chunk_crc != 0 {
                            return this.fail(SnapshotError::Checksum {
                                section: "terminator",
                                offset: this.chunk_offset,
                                stored: this.chunk_crc,
                                computed: 0,
                            });
                        }
                        this.state = ReadState::End;
                        continue;
                    }
                    if len > CHUNK_BYTES_MAX {
                        return this.fail(SnapshotError::TooLarge {
                            what: "chunk",
                            len: u64::from(len),
                            max: u64::from(CHUNK_BYTES_MAX),
                        });
                    }
                    this.buf.clear();
                    this.buf.resize(len as usize, 0);
                    this.filled = 0;
                    this.state = ReadState::Body;
                }
                ReadState::Body => {
                    while this.filled < this.buf.len() {
                        let n =
                            match ready!(Pin::new(&mut *this.inner)
                                .poll_read(cx, &mut this.buf[this.filled..]))
                            {
                                Ok(n) => n,
                                Err(e) => return this.fail(SnapshotError::from(e)),
                            };
                        if n == 0 {
                            return this.fail(SnapshotError::Truncated);
                        }
                        this.filled += n;
                    }
                    let computed = crc32fast::hash(&this.buf);
                    if computed != this.chunk_crc {
                        let e = SnapshotError::Checksum {
                            section: "chunk",
                            offset: this.chunk_offset,
                            stored: this.chunk_crc,
                            computed,
                        };
                        return this.fail(e);
                    }
                    this.stream_crc.update(&this.buf);
                    this.offset += this.buf.len() as u64;
                    this.pos = 0;
                    this.state = ReadState::Serve;
                }
                ReadState::Serve => {
                    if out.is_empty() {
                        return Poll::Ready(Ok(0));
                    }
                    let n = out.len().min(this.buf.len() - this.pos);
                    out[..n].copy_from_slice(&this.buf[this.pos..this.pos + n]);
                    this.pos += n;
                    this.data_bytes += n as u64;
                    if this.pos == this.buf.len() {
                        this.state = ReadState::Header;
                    }
                    return Poll::Ready(Ok(n));
                }
                ReadState::End => return Poll::Ready(Ok(0)),
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt snapshot data section",
                    )))
                }
            }
        }
    }
}
