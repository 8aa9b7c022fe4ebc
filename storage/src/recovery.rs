//! Recovery: open the manifest first (glommio 0.9.0 bug 1), list the
//! directory, scan every segment in order, check every CRC, replay every
//! frame into the index, drop a torn tail, and refuse damage anywhere else.
//!
//! ```text
//! segment k:  | hdr | f | f | f | X?? | ... free ... |
//!                                  ^ first frame that does not check (or end)
//!   forward scan: any valid frame of this segment (batch_seq > last) after X
//!                 => damage before the tail => Corrupt { file, X, BadFrame }
//!                 (run at once for the last segments, the tail and spares;
//!                 for an earlier segment only if the next segment's first
//!                 frame does not continue the batch sequence: if it does,
//!                 nothing valid can follow X)
//!   otherwise X is the end of segment k. Across segments the batch sequence
//!   must continue (last of k + 1 == first of the next segment with frames),
//!   else frames were lost at the end of k => Corrupt { k, X, MissingFrames }.
//! The last segment with frames is the tail: writing resumes at its X.
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Corruption, WalError};
use crate::format::{
    self, align_up, decode_frame_body, decode_frame_header, DecodedRecord, SegmentHeaderFault,
    BLOCK_BYTES, FRAME_HEADER_BYTES,
};
use crate::fsutil;
use crate::index::{GroupMap, GroupState, Index, Slot};
use crate::types::{HardState, SnapshotMarker};
use crate::wal::{parse_segment_name, AlignedBuf, SegFile, WalOptions, MANIFEST_NAME};

pub(crate) struct Recovered {
    pub index: Index,
    pub segments: BTreeMap<u64, SegFile>,
    pub current: u64,
    pub write_offset: u64,
    pub spares: std::collections::VecDeque<SegFile>,
    pub next_batch_seq: u64,
    pub bytes_scanned: u64,
    pub frame_bytes: u64,
    pub truncated_bytes: u64,
}

fn corrupt(path: &Path, offset: u64, kind: Corruption) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        kind,
    }
}

/// A window read on glommio's blocking thread: the buffer comes back with
/// the bytes read (or the error).
type WindowRead =
    std::pin::Pin<Box<dyn std::future::Future<Output = (AlignedBuf, std::io::Result<usize>)>>>;

/// Reads one segment front to back through aligned windows. A range that
/// crosses windows (a frame larger than the window or across a boundary) is
/// stitched in `scratch`.
///
/// Windows are read with `pread` on a duplicate of the segment's O_DIRECT
/// descriptor, on glommio's blocking thread, into two reused aligned
/// buffers: no fresh DMA buffer (and page faults) per window, and the next
/// window is read while this executor checks the current one (a job on the
/// blocking thread runs without waiting for the executor to poll its
/// rings; a read-ahead *task* was tried before and executors were seen to
/// park for good with it). At most one read is in flight; it is awaited
/// before the reader is dropped (`finish`).
struct Reader {
    file: Rc<DmaFile>,
    /// Duplicate descriptor for the blocking thread (made on first read).
    fd: Option<Arc<std::fs::File>>,
    path: PathBuf,
    /// Readable end of the segment.
    end: u64,
    window_bytes: u64,
    start: u64,
    buf: Option<AlignedBuf>,
    /// A buffer not in use (recycled from the previous window).
    spare: Option<AlignedBuf>,
    /// The window being read ahead: `(offset, size, read)`.
    ahead: Option<(u64, u64, WindowRead)>,
    scratch: Vec<u8>,
    /// Bytes read from disk and used.
    bytes_read: u64,
}

/// `pread` until `buf` is full or the file ends.
fn pread_full(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // O_DIRECT: a short read ends at the end of the file (or a block
        // boundary); continue only from an aligned position.
        if done % BLOCK_BYTES as usize != 0 {
            break;
        }
    }
    Ok(done)
}

impl Reader {
    fn new(file: Rc<DmaFile>, path: PathBuf, end: u64, window_bytes: u64) -> Self {
        Self {
            file,
            fd: None,
            path,
            end,
            // O_DIRECT reads need block multiples.
            window_bytes: (window_bytes - window_bytes % BLOCK_BYTES).max(BLOCK_BYTES),
            start: 0,
            buf: None,
            spare: None,
            ahead: None,
            scratch: Vec::new(),
            bytes_read: 0,
        }
    }

    fn buf_end(&self) -> u64 {
        self.start + self.buf.as_ref().map_or(0, |b| b.as_slice().len() as u64)
    }

    fn window_at(&self, at: u64) -> u64 {
        self.window_bytes.min(align_up(self.end).saturating_sub(at))
    }

    fn fd(&mut self) -> Result<Arc<std::fs::File>, WalError> {
        if let Some(f) = &self.fd {
            return Ok(f.clone());
        }
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor belongs to `self.file`, open for as long
        // as this reader holds it; it is only duplicated here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.file.as_raw_fd()) };
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| WalError::io(&self.path, e))?;
        let f = Arc::new(std::fs::File::from(owned));
        self.fd = Some(f.clone());
        Ok(f)
    }

    /// Starts reading `size` bytes at `at` on the blocking thread.
    async fn start_read(&mut self, at: u64, size: u64) -> Result<WindowRead, WalError> {
        let fd = self.fd()?;
        let mut buf = match self.spare.take() {
            Some(b) if b.capacity() >= size as usize => b,
            _ => AlignedBuf::new(self.window_bytes as usize),
        };
        buf.set_len(size as usize);
        let mut read: WindowRead = Box::pin(glommio::executor().spawn_blocking(move || {
            let r = pread_full(&fd, buf.as_mut_slice(), at);
            (buf, r)
        }));
        // The first poll hands the job to the thread.
        if let Some(done) = futures_lite::future::poll_once(&mut read).await {
            read = Box::pin(std::future::ready(done));
        }
        Ok(read)
    }

    /// Makes the window starting at `at` (aligned) current, and starts
    /// reading the one after it.
    async fn load(&mut self, at: u64, size: u64) -> Result<(), WalError> {
        debug_assert_eq!(at % BLOCK_BYTES, 0);
        if let Some(old) = self.buf.take() {
            self.spare = Some(old);
        }
        let read = match self.ahead.take() {
            Some((a, s, read)) if a == at && s == size => read,
            Some((_, _, other)) => {
                // Not the window wanted (the scan jumped): drop its bytes.
                let (b, _) = other.await;
                self.spare = Some(b);
                self.start_read(at, size).await?
            }
            None => self.start_read(at, size).await?,
        };
        let (mut buf, res) = read.await;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                self.spare = Some(buf);
                return Err(WalError::io(&self.path, e));
            }
        };
        buf.set_len(n);
        self.bytes_read += n as u64;
        self.start = at;
        self.buf = Some(buf);
        let next = at + n as u64;
        let next_size = self.window_at(next);
        if n as u64 == size && next_size > 0 {
            let read = self.start_read(next, next_size).await?;
            self.ahead = Some((next, next_size, read));
        }
        Ok(())
    }

    /// Bytes `[pos, pos + len)`, or fewer if the segment ends first. Meant
    /// for forward scans (any position works, at the cost of a new read); a
    /// range longer than the window or crossing windows is stitched.
    async fn get(&mut self, pos: u64, len: u64) -> Result<&[u8], WalError> {
        let want_end = pos.saturating_add(len).min(self.end);
        if pos >= want_end {
            return Ok(&[]);
        }
        loop {
            let (start, buf_end) = (self.start, self.buf_end());
            let inside = self.buf.is_some() && pos >= start && pos < buf_end;
            if inside && want_end <= buf_end {
                let b = self.buf.as_ref().expect("checked").as_slice();
                return Ok(&b[(pos - start) as usize..(want_end - start) as usize]);
            }
            if inside && buf_end % BLOCK_BYTES == 0 {
                // Crosses into the following windows: stitch.
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let b = self.buf.as_ref().expect("checked").as_slice();
                scratch.extend_from_slice(&b[(pos - start) as usize..]);
                loop {
                    let at = self.buf_end();
                    let size = self.window_at(at);
                    if size == 0 || at >= want_end {
                        break;
                    }
                    self.load(at, size).await?;
                    let b = self.buf.as_ref().expect("loaded").as_slice();
                    let need = ((want_end - at) as usize).min(b.len());
                    scratch.extend_from_slice(&b[..need]);
                    if (b.len() as u64) < size {
                        break; // short read: the file ends here
                    }
                }
                self.scratch = scratch;
                return Ok(&self.scratch);
            }
            if inside {
                return Ok(&[]); // a short read ended the file before `want_end`
            }
            let aligned = pos - pos % BLOCK_BYTES;
            let size = self.window_at(aligned);
            self.load(aligned, size).await?;
            if pos >= self.buf_end() {
                return Ok(&[]); // the file ends before `pos` (never loops)
            }
        }
    }

    /// Releases the window; waits for a read still in flight.
    async fn finish(&mut self) {
        self.buf = None;
        if let Some((_, _, read)) = self.ahead.take() {
            let _ = read.await;
        }
    }
}

/// Whether a valid frame of segment `seq` newer than `last` starts at any
/// block after `x`: then the bad frame at `x` is damage before the tail.
async fn valid_frame_after(
    r: &mut Reader,
    seq: u64,
    x: u64,
    last: Option<u64>,
) -> Result<bool, WalError> {
    let mut b = x + BLOCK_BYTES;
    let end = r.end;
    while b + FRAME_HEADER_BYTES as u64 <= end {
        let hb = r.get(b, FRAME_HEADER_BYTES as u64).await?;
        if let Some(h) = decode_frame_header(hb, seq) {
            if last.is_none_or(|l| h.batch_seq > l) && b + h.frame_bytes() <= end {
                let fb = r.get(b, h.frame_bytes()).await?;
                if decode_frame_body(fb, &h).is_some() {
                    return Ok(true);
                }
            }
        }
        b += BLOCK_BYTES;
    }
    Ok(false)
}

/// A segment whose frames end at `x` before its end: it is only known to
/// hold nothing valid after `x` once a later segment continues the batch
/// sequence; otherwise (tail, or a gap) the rest of it is scanned.
struct Unchecked {
    seq: u64,
    path: PathBuf,
    file: Rc<DmaFile>,
    end: u64,
    x: u64,
    last: Option<u64>,
}

/// Scans the rest of every unchecked segment; `Corrupt BadFrame` at the
/// first one that holds a valid frame after its end of frames.
async fn check_unchecked(
    unchecked: &mut Vec<Unchecked>,
    window_bytes: u64,
    bytes_read: &mut u64,
) -> Result<(), WalError> {
    for u in unchecked.drain(..) {
        let mut r = Reader::new(u.file.clone(), u.path.clone(), u.end, window_bytes);
        let found = valid_frame_after(&mut r, u.seq, u.x, u.last).await;
        r.finish().await;
        *bytes_read += r.bytes_read;
        if found? {
            return Err(corrupt(&u.path, u.x, Corruption::BadFrame));
        }
    }
    Ok(())
}

async fn open_segment(path: &Path, dsync: bool) -> Result<DmaFile, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
        .dma_open(path)
        .await
        .map_err(|e| WalError::io(path, e))
}

/// Opens the manifest first, creating it (write-only) in a fresh directory.
async fn check_manifest(dir: &Path, has_segments: bool) -> Result<(), WalError> {
    let path = dir.join(MANIFEST_NAME);
    let len = fsutil::file_len(&path)
        .await
        .map_err(|e| WalError::io(&path, e))?;
    match len {
        Some(n) if n > 0 => {
            // An existing, non-empty file opened for reading (bug 1 workaround).
            let f = DmaFile::open(&path)
                .await
                .map_err(|e| WalError::io(&path, e))?;
            let r = f.read_at_aligned(0, BLOCK_BYTES as usize).await;
            let _ = f.close().await;
            let r = r.map_err(|e| WalError::io(&path, e))?;
            match format::decode_manifest(&r) {
                Ok(()) => Ok(()),
                Err(Some(found)) => Err(corrupt(&path, 0, Corruption::WrongVersion { found })),
                Err(None) => Err(corrupt(&path, 0, Corruption::BadManifest)),
            }
        }
        _ if has_segments => Err(corrupt(&path, 0, Corruption::BadManifest)),
        _ => {
            // Fresh directory: a write-only DmaFile::create (bug 1 workaround).
            let f = DmaFile::create(&path)
                .await
                .map_err(|e| WalError::io(&path, e))?;
            let mut b = f.alloc_dma_buffer(BLOCK_BYTES as usize);
            format::encode_manifest(b.as_bytes_mut());
            let w = f.write_at(b, 0).await.map_err(|e| WalError::io(&path, e))?;
            if w != BLOCK_BYTES as usize {
                return Err(WalError::io(
                    &path,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ));
            }
            f.fdatasync().await.map_err(|e| WalError::io(&path, e))?;
            f.close().await.map_err(|e| WalError::io(&path, e))?;
            fsutil::sync_dir(dir)
                .await
                .map_err(|e| WalError::io(dir, e))?;
            Ok(())
        }
    }
}

/// Creates segment `seq` under a temporary name, syncs, renames. With
/// `prefill_segments` every block is written (zeros) before use, else it is only
/// fallocated: on ext4 a write into fallocated, never-written blocks turns
/// each fdatasync into a metadata update too (an unwritten extent becomes
/// written), several times slower than overwriting written blocks.
pub(crate) async fn create_segment(
    dir: &Path,
    seq: u64,
    opts: &WalOptions,
) -> Result<SegFile, WalError> {
    let bytes = opts.segment_bytes;
    let name = format!("{seq:020}.wal");
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(&name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| WalError::io(&tmp, e))?;
    let mut b = file.alloc_dma_buffer(BLOCK_BYTES as usize);
    format::encode_segment_header(b.as_bytes_mut(), seq, bytes);
    file.write_at(b, 0)
        .await
        .map_err(|e| WalError::io(&tmp, e))?;
    file.pre_allocate(bytes, false)
        .await
        .map_err(|e| WalError::io(&tmp, e))?;
    if opts.prefill_segments {
        zero_fill(&file, &tmp, BLOCK_BYTES, bytes).await?;
    }
    file.fdatasync().await.map_err(|e| WalError::io(&tmp, e))?;
    fsutil::rename(&tmp, &path)
        .await
        .map_err(|e| WalError::io(&tmp, e))?;
    fsutil::sync_dir(dir)
        .await
        .map_err(|e| WalError::io(dir, e))?;
    // Filled without O_DSYNC (no flush per chunk); written with the WAL's
    // flags from now on.
    let file = if opts.dsync_writes {
        let _ = file.close().await;
        open_segment(&path, true).await?
    } else {
        file
    };
    Ok(SegFile {
        seq,
        path,
        file: Rc::new(file),
        bytes,
    })
}

/// Writes zeros over `from..to` of `file` in 1 MiB writes (64 MiB takes
/// about 70 ms on this machine's disk).
async fn zero_fill(file: &DmaFile, path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    const CHUNK_BYTES: u64 = 1 << 20;
    debug_assert!(from % BLOCK_BYTES == 0 && to % BLOCK_BYTES == 0);
    let mut offset = from;
    while offset < to {
        let len = CHUNK_BYTES.min(to - offset);
        let mut b = file.alloc_dma_buffer(len as usize);
        b.as_bytes_mut().fill(0);
        let n = file
            .write_at(b, offset)
            .await
            .map_err(|e| WalError::io(path, e))?;
        if n as u64 != len {
            return Err(WalError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes at {offset}"),
                ),
            ));
        }
        offset += len;
    }
    Ok(())
}

/// One group as replay rebuilds it. Segments are only ever reclaimed oldest
/// first, so the records on disk are a suffix of the WAL's history: replay
/// starts from "nothing known" and lets entries have holes while it runs.
/// Every entry of the final log is live, hence in a kept segment; a hole left
/// at the end is therefore corruption.
#[derive(Default)]
struct ReplayGroup {
    hard_state: Option<HardState>,
    hs_seg: Option<u64>,
    marker: SnapshotMarker,
    marker_seg: Option<u64>,
    meta: Option<bytes::Bytes>,
    meta_seg: Option<u64>,
    slots: ReplaySlots,
    /// Where the group was last changed (for error reports).
    last_at: (u64, u64),
}

/// A replayed group's entries by index. Live logs only ever extend or
/// truncate-and-extend a contiguous run (`Run`, a deque: one push per
/// entry); a record that would leave a hole (only a damaged log has one)
/// switches the group to an exact map (`Map`) so that the final check
/// reports it exactly as before. Both hold the same key set at all times.
enum ReplaySlots {
    /// Entries `base .. base + slots.len()`.
    Run {
        base: u64,
        slots: VecDeque<Slot>,
    },
    Map(BTreeMap<u64, Slot>),
}

impl Default for ReplaySlots {
    fn default() -> Self {
        ReplaySlots::Run {
            base: 0,
            slots: VecDeque::new(),
        }
    }
}

impl ReplaySlots {
    /// Removes every entry at or above `index` (conflict truncation) and
    /// appends `new` at `index..`.
    fn append(&mut self, index: u64, new: impl Iterator<Item = Slot>) {
        match self {
            ReplaySlots::Run { base, slots } => {
                let end = *base + slots.len() as u64;
                if slots.is_empty() || index <= *base {
                    slots.clear();
                    *base = index;
                } else if index <= end {
                    slots.truncate((index - *base) as usize);
                } else {
                    // A hole: keep exact keys from now on.
                    let map: BTreeMap<u64, Slot> = (*base..).zip(std::mem::take(slots)).collect();
                    *self = ReplaySlots::Map(map);
                    return self.append(index, new);
                }
                slots.extend(new);
            }
            ReplaySlots::Map(m) => {
                m.split_off(&index);
                m.extend((index..).zip(new));
            }
        }
    }

    fn clear(&mut self) {
        *self = ReplaySlots::default();
    }

    /// Drops every entry at or below `index`.
    fn drop_through(&mut self, index: u64) {
        let keep_from = index.saturating_add(1);
        match self {
            ReplaySlots::Run { base, slots } => {
                if keep_from > *base {
                    let n = ((keep_from - *base) as usize).min(slots.len());
                    slots.drain(..n);
                    *base = keep_from;
                }
            }
            ReplaySlots::Map(m) => *m = m.split_off(&keep_from),
        }
    }

    /// The entries in index order if they are exactly `from..` with no
    /// hole (or there are none), else `None`.
    fn into_contiguous(self, from: u64) -> Option<VecDeque<Slot>> {
        match self {
            ReplaySlots::Run { slots, .. } if slots.is_empty() => Some(slots),
            ReplaySlots::Run { base, slots } => (base == from).then_some(slots),
            ReplaySlots::Map(m) => {
                if (from..).zip(m.keys()).all(|(want, &k)| k == want) {
                    Some(m.into_values().collect())
                } else {
                    None
                }
            }
        }
    }
}

fn replay(groups: &mut GroupMap<ReplayGroup>, seq: u64, frame_pos: u64, recs: Vec<DecodedRecord>) {
    for r in recs {
        match r {
            DecodedRecord::Entries {
                group,
                first_index,
                metas,
            } => {
                let g = groups.entry(group).or_default();
                g.slots.append(
                    first_index,
                    metas.iter().map(|m| Slot {
                        term: m.term,
                        kind: m.kind,
                        op_id: 0,
                        segment: seq,
                        offset: frame_pos + m.payload_offset,
                        bytes: m.payload_bytes,
                        crc: m.payload_crc,
                        payload: None,
                    }),
                );
                g.last_at = (seq, frame_pos);
            }
            DecodedRecord::HardState { group, state } => {
                let g = groups.entry(group).or_default();
                g.hard_state = Some(state);
                g.hs_seg = Some(seq);
                g.last_at = (seq, frame_pos);
            }
            DecodedRecord::Snapshot {
                group,
                marker,
                drop_all,
            } => {
                let g = groups.entry(group).or_default();
                if drop_all {
                    g.slots.clear();
                } else {
                    g.slots.drop_through(marker.index);
                }
                g.marker = marker;
                g.marker_seg = Some(seq);
                g.last_at = (seq, frame_pos);
            }
            DecodedRecord::Meta { group, meta } => {
                let g = groups.entry(group).or_default();
                g.meta = Some(meta);
                g.meta_seg = Some(seq);
                g.last_at = (seq, frame_pos);
            }
            DecodedRecord::Remove { group } => {
                groups.remove(&group);
            }
        }
    }
}

/// Builds the index from replayed groups; a hole in a final log is an error.
fn finish_replay(dir: &Path, groups: GroupMap<ReplayGroup>) -> Result<Index, WalError> {
    let mut index = Index::default();
    for (group, g) in groups {
        let Some(slots) = g.slots.into_contiguous(g.marker.index + 1) else {
            tracing::error!(group, "recovered log has a hole");
            let (seq, pos) = g.last_at;
            return Err(corrupt(
                &dir.join(format!("{seq:020}.wal")),
                pos,
                Corruption::InvalidReplay,
            ));
        };
        let state = GroupState {
            hard_state: g.hard_state,
            marker: g.marker,
            slots,
            hs_seg: g.hs_seg,
            marker_seg: g.marker_seg,
            meta: g.meta,
            meta_seg: g.meta_seg,
            ..GroupState::default()
        };
        index.groups.insert(group, state);
    }
    Ok(index)
}

pub(crate) async fn recover(dir: &Path, opts: &WalOptions) -> Result<Recovered, WalError> {
    fsutil::create_dir_all(dir)
        .await
        .map_err(|e| WalError::io(dir, e))?;
    let names = fsutil::list_dir(dir)
        .await
        .map_err(|e| WalError::io(dir, e))?;
    let mut seqs: Vec<u64> = Vec::new();
    let mut tmps: Vec<PathBuf> = Vec::new();
    for name in &names {
        if name == MANIFEST_NAME {
            continue;
        }
        match parse_segment_name(name) {
            Some((seq, false)) => seqs.push(seq),
            Some((_, true)) => tmps.push(dir.join(name)),
            None => {
                return Err(WalError::ForeignFile {
                    path: dir.join(name),
                })
            }
        }
    }
    check_manifest(dir, !seqs.is_empty()).await?;
    for t in &tmps {
        tracing::info!(path = %t.display(), "removing unfinished segment");
        fsutil::remove(t).await.map_err(|e| WalError::io(t, e))?;
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            let missing = w[0] + 1;
            return Err(corrupt(
                &dir.join(format!("{missing:020}.wal")),
                0,
                Corruption::MissingSegment { seq: missing },
            ));
        }
    }
    if seqs.is_empty() {
        let index = Index::default();
        // The first segment is zero-filled before anything is served (up
        // to a second for 64 MiB; longer on a busy disk): say so, or a
        // slow first start looks like a hang with an empty log.
        tracing::info!(
            dir = %dir.display(),
            segment_bytes = opts.segment_bytes,
            prefill = opts.prefill_segments,
            "new wal: creating its first segment"
        );
        let seg = create_segment(dir, 1, opts).await?;
        let mut segments = BTreeMap::new();
        segments.insert(1, seg);
        return Ok(Recovered {
            index,
            segments,
            current: 1,
            write_offset: BLOCK_BYTES,
            spares: Default::default(),
            next_batch_seq: 1,
            bytes_scanned: 0,
            frame_bytes: 0,
            truncated_bytes: 0,
        });
    }

    let mut replayed: GroupMap<ReplayGroup> = GroupMap::default();
    let mut all: Vec<(SegFile, u64, bool)> = Vec::new(); // (segment, end of frames, has frames)
    let mut last_seq: Option<u64> = None;
    let mut prev_end: Option<(PathBuf, u64)> = None;
    let mut bytes_scanned = 0u64;
    let mut frame_bytes = 0u64;
    let mut truncated_bytes = 0u64;
    let mut unchecked: Vec<Unchecked> = Vec::new();
    let window_bytes = opts.recovery_read_bytes;
    let last_file_seq = *seqs.last().expect("not empty");
    for &seq in &seqs {
        let path = dir.join(format!("{seq:020}.wal"));
        let file = open_segment(&path, opts.dsync_writes).await?;
        let len = file.file_size().await.map_err(|e| WalError::io(&path, e))?;
        if len < BLOCK_BYTES {
            let _ = file.close().await;
            return Err(corrupt(&path, 0, Corruption::BadSegmentHeader));
        }
        let hdr = file
            .read_at_aligned(0, BLOCK_BYTES as usize)
            .await
            .map_err(|e| WalError::io(&path, e))?;
        let header = match format::decode_segment_header(&hdr) {
            Ok(h) => h,
            Err(SegmentHeaderFault::Bad) => {
                return Err(corrupt(&path, 0, Corruption::BadSegmentHeader))
            }
            Err(SegmentHeaderFault::Version(found)) => {
                return Err(corrupt(&path, 0, Corruption::WrongVersion { found }))
            }
        };
        drop(hdr);
        if header.segment_seq != seq {
            return Err(corrupt(
                &path,
                16,
                Corruption::SegmentSeqMismatch {
                    expected: seq,
                    found: header.segment_seq,
                },
            ));
        }
        let end = header.segment_bytes.min(len);
        let file = Rc::new(file);
        let mut w = Reader::new(file.clone(), path.clone(), end, window_bytes);
        let mut pos = BLOCK_BYTES;
        let mut first_in_seg = true;
        let mut stop: Option<u64> = None;
        let mut torn_bytes = 0u64;
        let scanned = async {
            loop {
                if pos + FRAME_HEADER_BYTES as u64 > end {
                    break;
                }
                let hb = w.get(pos, FRAME_HEADER_BYTES as u64).await?;
                let Some(h) = decode_frame_header(hb, seq) else {
                    stop = Some(pos);
                    break;
                };
                let in_order = match last_seq {
                    None => true,
                    Some(l) if first_in_seg => h.batch_seq > l,
                    Some(l) => h.batch_seq == l + 1,
                };
                if !in_order {
                    stop = Some(pos);
                    break;
                }
                let recs = if pos + h.frame_bytes() <= end {
                    let fb = w.get(pos, h.frame_bytes()).await?;
                    if fb.len() as u64 == h.frame_bytes() {
                        decode_frame_body(fb, &h)
                    } else {
                        None
                    }
                } else {
                    None
                };
                let Some(recs) = recs else {
                    stop = Some(pos);
                    torn_bytes = h.frame_bytes();
                    break;
                };
                if first_in_seg {
                    if let Some(l) = last_seq {
                        if h.batch_seq == l + 1 {
                            // The sequence continues: nothing valid can follow
                            // the end of frames of any earlier segment.
                            unchecked.clear();
                        } else if let Some((ppath, poff)) = &prev_end {
                            check_unchecked(&mut unchecked, window_bytes, &mut bytes_scanned)
                                .await?;
                            return Err(corrupt(
                                ppath,
                                *poff,
                                Corruption::MissingFrames {
                                    expected: l + 1,
                                    found: h.batch_seq,
                                },
                            ));
                        }
                    }
                }
                replay(&mut replayed, seq, pos, recs);
                last_seq = Some(h.batch_seq);
                first_in_seg = false;
                frame_bytes += align_up(h.frame_bytes());
                pos += align_up(h.frame_bytes());
            }
            Ok::<(), WalError>(())
        }
        .await;
        // The last few segments (the tail and the spares after it) are
        // scanned at once, with the same reader (no second read); earlier
        // ones only if no later segment continues the batch sequence.
        let near_end = last_file_seq - seq <= opts.spare_segments_max as u64;
        let mut damaged = Ok(false);
        if let (Ok(()), Some(x), true) = (&scanned, stop, near_end) {
            damaged = valid_frame_after(&mut w, seq, x, last_seq).await;
        }
        w.finish().await;
        bytes_scanned += w.bytes_read;
        scanned?;
        if damaged? {
            return Err(corrupt(&path, stop.expect("scanned"), Corruption::BadFrame));
        }
        if let (Some(x), false) = (stop, near_end) {
            unchecked.push(Unchecked {
                seq,
                path: path.clone(),
                file: file.clone(),
                end,
                x,
                last: last_seq,
            });
        }
        let has_frames = !first_in_seg;
        if has_frames {
            prev_end = Some((path.clone(), pos));
            truncated_bytes = torn_bytes;
        }
        all.push((
            SegFile {
                seq,
                path,
                file,
                bytes: header.segment_bytes,
            },
            pos,
            has_frames,
        ));
    }
    // Whatever no later segment vouched for.
    check_unchecked(&mut unchecked, window_bytes, &mut bytes_scanned).await?;

    let index = finish_replay(dir, replayed)?;
    // The tail is the last segment with frames; later (empty) segments are
    // spares: the first one is kept, the others removed.
    let tail_at = all.iter().rposition(|(_, _, has)| *has).unwrap_or(0);
    let current = all[tail_at].0.seq;
    let write_offset = all[tail_at].1;
    let mut segments = BTreeMap::new();
    let mut spares = std::collections::VecDeque::new();
    for (i, (seg, _, _)) in all.into_iter().enumerate() {
        if i <= tail_at {
            segments.insert(seg.seq, seg);
        } else if i <= tail_at + opts.spare_segments_max {
            spares.push_back(seg);
        } else {
            tracing::info!(path = %seg.path.display(), "removing surplus empty segment");
            fsutil::remove(&seg.path)
                .await
                .map_err(|e| WalError::io(&seg.path, e))?;
            let _ = seg.file.close_rc().await;
        }
    }
    if truncated_bytes > 0 {
        tracing::info!(
            segment = current,
            offset = write_offset,
            bytes = truncated_bytes,
            "recovery dropped a torn tail frame"
        );
    }
    Ok(Recovered {
        index,
        segments,
        current,
        write_offset,
        spares,
        next_batch_seq: last_seq.map_or(1, |l| l + 1),
        bytes_scanned,
        frame_bytes,
        truncated_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(term: u64) -> Slot {
        Slot {
            term,
            kind: 0,
            op_id: 0,
            segment: 0,
            offset: 0,
            bytes: 0,
            crc: 0,
            payload: None,
        }
    }

    /// `ReplaySlots` (a run, or an exact map after a hole) holds exactly
    /// the keys and terms of a plain map under random appends (with
    /// conflict truncation and holes), compactions and clears, and reports
    /// a hole above the marker exactly when the map has one.
    #[test]
    fn replay_slots_match_an_exact_map() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut holes, mut runs) = (0, 0);
        for case in 0..400 {
            let mut fast = ReplaySlots::default();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut marker = 0u64;
            for step in 0..30 {
                match next(10) {
                    0..=6 => {
                        // Mostly contiguous or truncating appends, sometimes a hole.
                        let last = model.keys().next_back().copied().unwrap_or(marker);
                        let at = match next(8) {
                            0 => last + 2 + next(5),
                            1 => 1 + next(last + 1),
                            _ => last + 1,
                        };
                        let n = 1 + next(4);
                        let term = case * 100 + step;
                        fast.append(at, (0..n).map(|_| slot(term)));
                        model.split_off(&at);
                        model.extend((at..at + n).map(|i| (i, term)));
                    }
                    7 | 8 => {
                        marker =
                            marker.max(next(model.keys().next_back().copied().unwrap_or(1) + 2));
                        fast.drop_through(marker);
                        model = model.split_off(&(marker + 1));
                    }
                    _ => {
                        fast.clear();
                        model.clear();
                    }
                }
                let keys: Vec<(u64, u64)> = match &fast {
                    ReplaySlots::Run { base, slots } => {
                        (*base..).zip(slots.iter().map(|s| s.term)).collect()
                    }
                    ReplaySlots::Map(m) => m.iter().map(|(k, s)| (*k, s.term)).collect(),
                };
                let want: Vec<(u64, u64)> = model.iter().map(|(k, t)| (*k, *t)).collect();
                assert_eq!(keys, want, "case {case} step {step}");
            }
            let contiguous = (marker + 1..).zip(model.keys()).all(|(w, &k)| k == w);
            if matches!(fast, ReplaySlots::Map(_)) {
                holes += 1;
            } else {
                runs += 1;
            }
            let got = fast.into_contiguous(marker + 1);
            assert_eq!(got.is_some(), contiguous, "case {case}");
            if let Some(v) = got {
                assert_eq!(
                    v.iter().map(|s| s.term).collect::<Vec<_>>(),
                    model.values().copied().collect::<Vec<_>>()
                );
            }
        }
        assert!(holes > 20 && runs > 20, "holes {holes} runs {runs}");
    }
}
