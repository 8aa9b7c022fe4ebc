//! State-machine snapshot files, streamed in both directions so a snapshot
//! never has to fit in memory.
//!
//! One file per snapshot, `snap-{group:020}-{index:020}-{term:020}.snap`, in a
//! directory of the caller's choice (not the WAL directory). Written under
//! `<name>.tmp`, synced, renamed, and the directory synced; only then are
//! older snapshots of the group removed.
//!
//! # Examples
//! ```no_run
//! use flotilla_storage::snapshot::{SnapshotReader, SnapshotWriter};
//! # async fn demo(dir: &std::path::Path) -> Result<(), flotilla_storage::SnapshotError> {
//! let mut w = SnapshotWriter::create(dir, 7, 100, 3).await?;
//! w.write(b"state machine bytes...").await?;
//! let file = w.finish().await?; // durable; older snapshots of group 7 removed
//! let mut r = SnapshotReader::open(&file.path).await?;
//! while let Some(chunk) = r.next_chunk().await? {
//!     // feed `chunk` to the state machine or the transport; an error at the
//!     // end (CRC mismatch) invalidates everything read.
//!     let _ = chunk;
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaBuffer, DmaFile};

use crate::error::SnapshotError;
use crate::format::{align_up, get_u32, get_u64, BLOCK_BYTES};
use crate::fsutil;
use crate::types::GroupId;

const MAGIC: [u8; 8] = *b"FLOTSNAP";
/// Snapshot file format version.
pub const SNAPSHOT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
/// Bytes buffered per DMA write / read.
const CHUNK_BYTES: usize = 1 << 20;

/// A durable snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The group.
    pub group: GroupId,
    /// Last index the snapshot covers.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
    /// Where it is.
    pub path: PathBuf,
}

/// What a snapshot header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The group.
    pub group: GroupId,
    /// Last index the snapshot covers.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
    /// Data bytes (header and padding excluded).
    pub length: u64,
}

fn file_name(group: GroupId, index: u64, term: u64) -> String {
    format!("snap-{group:020}-{index:020}-{term:020}.snap")
}

/// `<name>.<writer nonce>.tmp`, unique within the process (and unlikely to
/// meet a leftover of an earlier run, which `remove_temporary` deletes).
fn temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}.{:08x}{n:08x}.tmp", std::process::id())
}

/// The snapshot a temporary file was being written for: `<name>.tmp` (older
/// releases) or `<name>.<nonce>.tmp`.
fn parse_temp_name(name: &str) -> Option<(GroupId, u64, u64)> {
    let stem = name.strip_suffix(".tmp")?;
    parse_name(stem).or_else(|| {
        let (base, nonce) = stem.rsplit_once('.')?;
        (!nonce.is_empty() && nonce.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| parse_name(base))
            .flatten()
    })
}

fn parse_name(name: &str) -> Option<(GroupId, u64, u64)> {
    let stem = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let mut it = stem.split('-');
    let (g, i, t) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some()
        || [g, i, t]
            .iter()
            .any(|s| s.len() != 20 || !s.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    Some((g.parse().ok()?, i.parse().ok()?, t.parse().ok()?))
}

/// Encodes the header block.
///
/// ```text
/// block 0 (4096 B):
/// 0       8         12           16      24      32     40       48         52      64
/// | magic | version | header_crc | group | index | term | length | data_crc | 0 x12 |
/// data: bytes 4096 .. 4096 + length, zero-padded to a 4 KiB boundary
/// ```
/// header_crc covers bytes 16..64; data_crc is crc32 of the data.
fn encode_header(b: &mut [u8], meta: &SnapshotMeta, data_crc: u32) {
    b[..BLOCK_BYTES as usize].fill(0);
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&meta.group.to_le_bytes());
    b[24..32].copy_from_slice(&meta.index.to_le_bytes());
    b[32..40].copy_from_slice(&meta.term.to_le_bytes());
    b[40..48].copy_from_slice(&meta.length.to_le_bytes());
    b[48..52].copy_from_slice(&data_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[16..HEADER_BYTES]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn decode_header(b: &[u8], path: &Path) -> Result<(SnapshotMeta, u32), SnapshotError> {
    let bad = || SnapshotError::BadHeader {
        path: path.to_path_buf(),
    };
    if b.len() < HEADER_BYTES
        || b[0..8] != MAGIC
        || crc32fast::hash(&b[16..HEADER_BYTES]) != get_u32(b, 12)
    {
        return Err(bad());
    }
    let version = get_u32(b, 8);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::WrongVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok((
        SnapshotMeta {
            group: get_u64(b, 16),
            index: get_u64(b, 24),
            term: get_u64(b, 32),
            length: get_u64(b, 40),
        },
        get_u32(b, 48),
    ))
}

/// Streams one snapshot to disk. Nothing is visible under the final name
/// until [`SnapshotWriter::finish`] returns.
pub struct SnapshotWriter {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    file: DmaFile,
    meta: SnapshotMeta,
    buf: DmaBuffer,
    buf_len: usize,
    file_pos: u64,
    crc: crc32fast::Hasher,
}

impl SnapshotWriter {
    /// Starts the snapshot of `group` at `index`/`term` in `dir` (created if
    /// missing). The file is opened write-only with `DmaFile::create`, which is
    /// safe as an executor's first DMA file (glommio 0.9.0 bug 1).
    ///
    /// # Errors
    /// `Io`.
    pub async fn create(
        dir: impl AsRef<Path>,
        group: GroupId,
        index: u64,
        term: u64,
    ) -> Result<Self, SnapshotError> {
        let dir = fsutil::absolute(dir.as_ref()).map_err(|e| SnapshotError::io(dir.as_ref(), e))?;
        fsutil::create_dir_all(&dir)
            .await
            .map_err(|e| SnapshotError::io(&dir, e))?;
        let name = file_name(group, index, term);
        let path = dir.join(&name);
        // A name of its own: two writers of the same snapshot (a transfer
        // retried while the first is still being written) must not write
        // into one temporary file; the rename makes one of them win whole.
        let tmp = dir.join(temp_name(&name));
        let file = DmaFile::create(&tmp)
            .await
            .map_err(|e| SnapshotError::io(&tmp, e))?;
        let buf = file.alloc_dma_buffer(CHUNK_BYTES);
        Ok(Self {
            dir,
            tmp,
            path,
            file,
            meta: SnapshotMeta {
                group,
                index,
                term,
                length: 0,
            },
            buf,
            buf_len: 0,
            file_pos: BLOCK_BYTES,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Appends `data` to the snapshot.
    ///
    /// # Errors
    /// `Io`.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), SnapshotError> {
        self.crc.update(data);
        self.meta.length += data.len() as u64;
        while !data.is_empty() {
            let n = (CHUNK_BYTES - self.buf_len).min(data.len());
            self.buf.as_bytes_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == CHUNK_BYTES {
                self.flush_buf().await?;
            }
        }
        Ok(())
    }

    async fn flush_buf(&mut self) -> Result<(), SnapshotError> {
        if self.buf_len == 0 {
            return Ok(());
        }
        let len = align_up(self.buf_len as u64) as usize;
        let mut buf = std::mem::replace(&mut self.buf, self.file.alloc_dma_buffer(CHUNK_BYTES));
        buf.as_bytes_mut()[self.buf_len..len].fill(0);
        buf.trim_to_size(len);
        let n = self
            .file
            .write_at(buf, self.file_pos)
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))?;
        if n != len {
            return Err(SnapshotError::io(
                &self.tmp,
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        self.file_pos += len as u64;
        self.buf_len = 0;
        Ok(())
    }

    /// Bytes written so far.
    pub fn length(&self) -> u64 {
        self.meta.length
    }

    /// Writes the header, syncs, renames to the final name, syncs the
    /// directory, then removes older snapshots of the same group.
    ///
    /// # Errors
    /// `Io`; on error the temporary file may remain (removed by
    /// [`remove_temporary`]).
    pub async fn finish(mut self) -> Result<SnapshotFile, SnapshotError> {
        self.flush_buf().await?;
        let mut h = self.file.alloc_dma_buffer(BLOCK_BYTES as usize);
        let crc = self.crc.clone().finalize();
        encode_header(h.as_bytes_mut(), &self.meta, crc);
        self.file
            .write_at(h, 0)
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))?;
        self.file
            .close()
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))?;
        fsutil::rename(&self.tmp, &self.path)
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))?;
        fsutil::sync_dir(&self.dir)
            .await
            .map_err(|e| SnapshotError::io(&self.dir, e))?;
        let m = self.meta;
        tracing::debug!(
            group = m.group,
            index = m.index,
            bytes = m.length,
            "snapshot durable"
        );
        remove_older_snapshots(&self.dir, m.group, m.index, m.term).await?;
        Ok(SnapshotFile {
            group: m.group,
            index: m.index,
            term: m.term,
            path: self.path,
        })
    }

    /// Abandons the snapshot and removes its temporary file.
    ///
    /// # Errors
    /// `Io`.
    pub async fn abort(self) -> Result<(), SnapshotError> {
        let _ = self.file.close().await;
        fsutil::remove(&self.tmp)
            .await
            .map_err(|e| SnapshotError::io(&self.tmp, e))
    }
}

/// Streams one snapshot from disk, verifying its CRC at the end.
pub struct SnapshotReader {
    path: PathBuf,
    file: DmaFile,
    meta: SnapshotMeta,
    data_crc: u32,
    pos: u64,
    crc: crc32fast::Hasher,
}

impl SnapshotReader {
    /// Opens a snapshot and checks its header.
    ///
    /// # Errors
    /// `BadHeader`, `WrongVersion`, `Io`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let path =
            fsutil::absolute(path.as_ref()).map_err(|e| SnapshotError::io(path.as_ref(), e))?;
        let len = fsutil::file_len(&path)
            .await
            .map_err(|e| SnapshotError::io(&path, e))?;
        if len.unwrap_or(0) < BLOCK_BYTES {
            // Also keeps an empty file from being an executor's first read (bug 1).
            return match len {
                None => Err(SnapshotError::io(
                    &path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )),
                Some(_) => Err(SnapshotError::BadHeader { path }),
            };
        }
        let file = DmaFile::open(&path)
            .await
            .map_err(|e| SnapshotError::io(&path, e))?;
        let h = file
            .read_at_aligned(0, BLOCK_BYTES as usize)
            .await
            .map_err(|e| SnapshotError::io(&path, e))?;
        let (meta, data_crc) = match decode_header(&h, &path) {
            Ok(x) => x,
            Err(e) => {
                drop(h);
                let _ = file.close().await;
                return Err(e);
            }
        };
        drop(h);
        Ok(Self {
            path,
            file,
            meta,
            data_crc,
            pos: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// The header.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// The next chunk of data (at most 1 MiB), `None` at the end. The last
    /// chunk is returned only after the CRC of the whole data checked.
    ///
    /// # Errors
    /// `BadCrc` at the end on mismatch (everything read is invalid),
    /// `Truncated`, `Io`.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SnapshotError> {
        if self.pos >= self.meta.length {
            return Ok(None);
        }
        let n = (self.meta.length - self.pos).min(CHUNK_BYTES as u64);
        let r = self
            .file
            .read_at_aligned(BLOCK_BYTES + self.pos, align_up(n) as usize)
            .await
            .map_err(|e| SnapshotError::io(&self.path, e))?;
        if (r.len() as u64) < n {
            return Err(SnapshotError::Truncated {
                path: self.path.clone(),
                expected: self.meta.length,
                found: self.pos + r.len() as u64,
            });
        }
        let mut b = BytesMut::with_capacity(n as usize);
        b.extend_from_slice(&r[..n as usize]);
        self.crc.update(&b);
        self.pos += n;
        if self.pos == self.meta.length {
            let computed = self.crc.clone().finalize();
            if computed != self.data_crc {
                return Err(SnapshotError::BadCrc {
                    path: self.path.clone(),
                    expected: self.data_crc,
                    computed,
                });
            }
        }
        Ok(Some(b.freeze()))
    }

    /// Reads the whole snapshot into memory (for small snapshots and tests).
    ///
    /// # Errors
    /// As [`SnapshotReader::next_chunk`].
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(self.meta.length.min(64 << 20) as usize);
        while let Some(c) = self.next_chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// Closes the file.
    ///
    /// # Errors
    /// `Io`.
    pub async fn close(self) -> Result<(), SnapshotError> {
        self.file
            .close()
            .await
            .map_err(|e| SnapshotError::io(&self.path, e))
    }
}

/// Every durable snapshot file in `dir` (by name), sorted by group, index, term.
///
/// # Errors
/// `Io`.
pub async fn list_snapshots(dir: impl AsRef<Path>) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let dir = fsutil::absolute(dir.as_ref()).map_err(|e| SnapshotError::io(dir.as_ref(), e))?;
    let dir = dir.as_path();
    let names = match fsutil::list_dir(dir).await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io(dir, e)),
    };
    let mut v: Vec<SnapshotFile> = names
        .iter()
        .filter_map(|n| {
            parse_name(n).map(|(group, index, term)| SnapshotFile {
                group,
                index,
                term,
                path: dir.join(n),
            })
        })
        .collect();
    v.sort_by_key(|s| (s.group, s.index, s.term));
    Ok(v)
}

/// The newest durable snapshot of `group` in `dir`.
///
/// # Errors
/// `Io`.
pub async fn latest_snapshot(
    dir: impl AsRef<Path>,
    group: GroupId,
) -> Result<Option<SnapshotFile>, SnapshotError> {
    Ok(list_snapshots(dir)
        .await?
        .into_iter()
        .rfind(|s| s.group == group))
}

/// Removes every snapshot of `group` older than (`index`, `term`). Returns how
/// many were removed.
///
/// # Errors
/// `Io`.
pub async fn remove_older_snapshots(
    dir: impl AsRef<Path>,
    group: GroupId,
    index: u64,
    term: u64,
) -> Result<usize, SnapshotError> {
    let dir = fsutil::absolute(dir.as_ref()).map_err(|e| SnapshotError::io(dir.as_ref(), e))?;
    let dir = dir.as_path();
    let mut n = 0;
    for s in list_snapshots(dir).await? {
        if s.group == group && (s.index, s.term) < (index, term) {
            fsutil::remove(&s.path)
                .await
                .map_err(|e| SnapshotError::io(&s.path, e))?;
            n += 1;
        }
    }
    if n > 0 {
        fsutil::sync_dir(dir)
            .await
            .map_err(|e| SnapshotError::io(dir, e))?;
    }
    Ok(n)
}

/// Removes unfinished (`.tmp`) snapshot files, e.g. at startup. Returns how
/// many were removed.
///
/// # Errors
/// `Io`.
pub async fn remove_temporary(dir: impl AsRef<Path>) -> Result<usize, SnapshotError> {
    let dir = fsutil::absolute(dir.as_ref()).map_err(|e| SnapshotError::io(dir.as_ref(), e))?;
    let dir = dir.as_path();
    let names = match fsutil::list_dir(dir).await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SnapshotError::io(dir, e)),
    };
    let mut n = 0;
    for name in names {
        if parse_temp_name(&name).is_some() {
            let p = dir.join(&name);
            fsutil::remove(&p)
                .await
                .map_err(|e| SnapshotError::io(&p, e))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = file_name(3, 100, 7);
        assert_eq!(parse_name(&n), Some((3, 100, 7)));
        assert_eq!(parse_name("snap-1-2-3.snap"), None);
        assert_eq!(parse_name(&format!("{n}.tmp")), None);
        let t = temp_name(&n);
        assert_ne!(t, temp_name(&n), "every writer gets its own temporary file");
        assert_eq!(parse_name(&t), None);
        assert_eq!(parse_temp_name(&t), Some((3, 100, 7)));
        assert_eq!(parse_temp_name(&format!("{n}.tmp")), Some((3, 100, 7)));
        assert_eq!(parse_temp_name(&format!("{n}.xyz.tmp")), None);
        assert_eq!(parse_temp_name(&n), None);
    }

    #[test]
    fn header_round_trip_and_every_bit_covered() {
        let meta = SnapshotMeta {
            group: 1,
            index: 2,
            term: 3,
            length: 4,
        };
        let mut b = vec![0u8; BLOCK_BYTES as usize];
        encode_header(&mut b, &meta, 0xdead_beef);
        let p = Path::new("x");
        assert_eq!(decode_header(&b, p).unwrap(), (meta, 0xdead_beef));
        for bit in 0..HEADER_BYTES * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(&c, p).is_err(), "bit {bit}");
        }
    }
}
