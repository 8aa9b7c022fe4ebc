//! The per-shard WAL: group commit, segments, reads, compaction and
//! segment reclamation.
//!
//! ```text
//!  write(batch) ──validate+apply to index──► queue ──┐   (callers await durability)
//!  write(batch) ──validate+apply to index──► queue ──┤
//!                                                    ▼
//!                       committer task (one per WAL, runs while there is work)
//!                       take queued batches ─► encode ONE frame ─► ONE write
//!                       ─► ONE fdatasync ─► durable_op = last op ─► wake waiters
//!                       (with `dsync_writes`, the default, the segment is
//!                       O_DSYNC: the write itself carries the flush)
//!                       (io_uring; a frame built while another is in flight:
//!                       glommio's blocking thread, written right after
//!                       fdatasync of the previous frame, never before)
//!                       between flushes: prepare the spare segment, reclaim
//!                       (recycle or delete) segments no group needs any more
//! ```
//!
//! The in-memory index is updated when a batch is accepted, so queries see
//! every accepted write (durable or still in flight) and the next batch is
//! validated against it. Payloads stay cached until they are durable. If a
//! flush fails the WAL is poisoned (fail-stop) and refuses every later write.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Corruption, InvalidOp, WalError};
use crate::format::{self, align_up, BLOCK_BYTES, FRAME_HEADER_BYTES};
use crate::fsutil;
use crate::index::{CacheTrim, Change, Index, Loc};
use crate::notify::Notify;
use crate::recovery;
use crate::types::{Batch, Entry, GroupId, HardState, Op, SnapshotMarker};

pub(crate) const MANIFEST_NAME: &str = "MANIFEST";
const SPARE_CHUNK_BYTES: u64 = 256 * 1024;
/// Frames handed to the I/O thread at most (one written, one waiting).
const PIPELINE_FRAMES_MAX: usize = 2;
/// Queued bytes that start the next frame while one is in flight; below
/// this, batches wait for the flush and are grouped into the next frame.
const PIPELINE_BYTES_MIN: u64 = 64 * 1024;
/// Frames longer than this go to the I/O thread's reusable buffers even
/// when nothing is in flight. Through io_uring a frame needs a glommio DMA
/// buffer; one larger than what is free of the executor's pinned
/// `io_memory` (2 MiB by default in the engine) is a fresh heap allocation:
/// every page of it faulted in and zeroed, and unmapped again (TLB
/// shootdown IPIs) once written. For a 4 MiB frame that cost more executor
/// CPU than encoding it (measured: storage/README.md, session 14), while the
/// hand-off to the thread costs ~50 µs of latency once.
const DMA_FRAME_BYTES_MAX: u64 = 1 << 20;

/// A 4 KiB-aligned, reusable byte buffer that can travel to the I/O thread.
pub(crate) struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(capacity: usize) -> Self {
        // Zero-initialised allocations of this size are fresh zero pages,
        // faulted in on first use only.
        let vec = vec![0u8; capacity + BLOCK_BYTES as usize];
        let start = vec.as_ptr().align_offset(BLOCK_BYTES as usize);
        Self {
            vec,
            start,
            len: capacity,
        }
    }
    pub(crate) fn capacity(&self) -> usize {
        self.vec.len() - self.start
    }
    /// Sets the length in use (at most the capacity).
    pub(crate) fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity());
        self.len = len;
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// Orders the I/O thread's frames: frame N+1 is written only after frame
/// N's fdatasync returned (and not at all if it failed).
#[derive(Default)]
pub(crate) struct ChainLink {
    done: std::sync::Mutex<Option<bool>>,
    cv: std::sync::Condvar,
}

impl ChainLink {
    fn finish(&self, ok: bool) {
        if let Ok(mut d) = self.done.lock() {
            *d = Some(ok);
        }
        self.cv.notify_all();
    }
    /// Waits (on the I/O thread) for the previous frame.
    fn wait(&self) -> std::io::Result<()> {
        let err = |m: &str| std::io::Error::other(m.to_string());
        let mut d = self.done.lock().map_err(|_| err("chain lock poisoned"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match *d {
                Some(true) => return Ok(()),
                Some(false) => return Err(err("the previous frame failed")),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err("the previous frame was not written within 60 s"));
            }
            d = self
                .cv
                .wait_timeout(d, left)
                .map_err(|_| err("chain lock poisoned"))?
                .0;
        }
    }
}

/// Finishes a link as failed if the frame's future is dropped unfinished
/// (so a frame chained on it fails fast instead of waiting out the timeout).
struct LinkGuard(Option<Arc<ChainLink>>);

impl LinkGuard {
    fn finish(mut self, ok: bool) {
        if let Some(l) = self.0.take() {
            l.finish(ok);
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.finish(false);
        }
    }
}

enum FrameBuf {
    Dma(glommio::io::DmaBuffer),
    Thread(AlignedBuf),
}

/// What to do once a frame is durable.
struct FrameDone {
    last_op: u64,
    /// Bytes written (padded).
    len: u64,
    /// Header + records.
    frame_bytes: u64,
}

struct Frame {
    seg: SegFile,
    offset: u64,
    buf: FrameBuf,
    done: FrameDone,
}

/// The I/O thread's buffer back (`None` for an io_uring frame), and how
/// long the write + fdatasync took.
type IoResult = (Option<AlignedBuf>, std::io::Result<Duration>);

/// A frame handed to the I/O thread.
struct InFlight {
    io: std::pin::Pin<Box<dyn std::future::Future<Output = IoResult>>>,
    path: PathBuf,
    done: FrameDone,
}

/// Tuning of a [`Wal`]. Every bound has a unit in its name.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of every segment file (multiple of 4096, at least 64 KiB).
    pub segment_bytes: u64,
    /// Largest frame (one DMA write) a flush produces; a single batch larger
    /// than this (or than a segment) is refused with `BatchTooLarge`.
    pub frame_bytes_max: u64,
    /// Accepted-but-not-yet-written bytes above which `write` waits.
    pub pending_bytes_max: u64,
    /// Memory budget of the entry cache across all groups (payload bytes).
    /// Entries that are not yet durable are always cached and may exceed it
    /// by up to `pending_bytes_max` plus one frame.
    pub cache_bytes_max: u64,
    /// Payload bytes of recent entries kept cached per group.
    pub cache_group_bytes_max: u64,
    /// Reuse reclaimed segments as the next segment instead of deleting them:
    /// writes then overwrite already-allocated blocks (cheaper fdatasync).
    pub recycle_segments: bool,
    /// Prepared (or recycled) segments kept ready beyond the current one.
    pub spare_segments_max: usize,
    /// Write zeros over a new segment once before use instead of only
    /// fallocating it, for the same reason.
    pub prefill_segments: bool,
    /// Open segments with `O_DSYNC`: a frame's write returns once it is
    /// durable (the kernel issues the write and the device cache flush back
    /// to back), so a flush is one request instead of a write, a return to
    /// the executor, then an fdatasync. Off: write, then fdatasync. On this
    /// machine's virtio disk it raised `redis-benchmark` SETs on a 3-process
    /// cluster by 35-50 % (each hand-back to a busy executor costs 0.5-3 ms).
    pub dsync_writes: bool,
    /// Read size used by recovery; the next window is read ahead while one
    /// is checked (two windows of memory per segment being read).
    pub recovery_read_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            frame_bytes_max: 4 << 20,
            pending_bytes_max: 32 << 20,
            cache_bytes_max: 64 << 20,
            cache_group_bytes_max: 256 << 10,
            recycle_segments: true,
            spare_segments_max: 2,
            prefill_segments: true,
            dsync_writes: true,
            recovery_read_bytes: 2 << 20,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        if self.segment_bytes < 64 * 1024 || self.segment_bytes % BLOCK_BYTES != 0 {
            return Err(WalError::InvalidOptions(
                "segment_bytes must be a multiple of 4096 and >= 64 KiB",
            ));
        }
        if self.frame_bytes_max < 2 * BLOCK_BYTES || self.frame_bytes_max % BLOCK_BYTES != 0 {
            return Err(WalError::InvalidOptions(
                "frame_bytes_max must be a multiple of 4096 and >= 8 KiB",
            ));
        }
        if self.spare_segments_max == 0 {
            return Err(WalError::InvalidOptions("spare_segments_max must be >= 1"));
        }
        if self.recovery_read_bytes < BLOCK_BYTES {
            return Err(WalError::InvalidOptions(
                "recovery_read_bytes must be >= 4096",
            ));
        }
        Ok(())
    }

    /// Largest frame, header included.
    pub(crate) fn frame_limit_bytes(&self) -> u64 {
        self.frame_bytes_max.min(self.segment_bytes - BLOCK_BYTES)
    }
}

/// Upper bounds, in µs, of the buckets of [`LatencyHistogram`]; one more
/// bucket holds everything slower.
pub const FLUSH_LATENCY_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Latencies in fixed buckets (see [`FLUSH_LATENCY_BOUNDS_US`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Count per bucket (not cumulative); the last one is "slower than
    /// every bound".
    pub buckets: [u64; FLUSH_LATENCY_BOUNDS_US.len() + 1],
    /// Sum of all recorded latencies, µs.
    pub sum_us: u64,
    /// Number of recorded latencies.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one latency of `us` microseconds.
    pub fn record(&mut self, us: u64) {
        let i = FLUSH_LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(FLUSH_LATENCY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }
}

/// Counters of one WAL since it was opened.
#[derive(Debug, Clone, Default)]
pub struct WalStats {
    /// Non-empty batches accepted by `write`.
    pub batches: u64,
    /// Batches waiting for room right now (FIFO backpressure, see
    /// [`Wal::write`]).
    pub batches_waiting: u64,
    /// Frames written (each one DMA write + one fdatasync).
    pub flushes: u64,
    /// Frames built while the previous frame was still being written (the
    /// pipelined path through the I/O thread).
    pub pipelined_frames: u64,
    /// Frames written by the I/O thread: the pipelined ones, and frames
    /// larger than 1 MiB built with nothing in flight (the others of those
    /// go through io_uring on the executor).
    pub thread_frames: u64,
    /// fdatasync calls, including segment preparation.
    pub fdatasyncs: u64,
    /// Latency of each frame flush: its DMA write plus its fdatasync (for a
    /// pipelined frame, from the start of its write, not from when it was
    /// queued behind the previous frame).
    pub flush_latency: LatencyHistogram,
    /// Time the device spent on frame writes and their fdatasyncs (summed;
    /// frames never overlap). Over a busy period, this divided by the wall
    /// time is how much of the device the WAL keeps busy.
    pub flush_io_time: Duration,
    /// Bytes written by flushes, padding included.
    pub bytes_written: u64,
    /// Bytes of records written (no padding).
    pub record_bytes: u64,
    /// Entries written.
    pub entries_written: u64,
    /// Bytes written preparing segments (headers, zero fill).
    pub prepare_bytes_written: u64,
    /// Live segments (the spare excluded).
    pub segments: u64,
    /// Sequence number of the segment being written.
    pub current_segment: u64,
    /// Offset in the current segment where the next frame goes.
    pub write_offset: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments reused as the next segment.
    pub segments_recycled: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Live groups re-written forward by `rewrite_groups`.
    pub groups_rewritten: u64,
    /// Payload bytes currently cached.
    pub cache_bytes: u64,
    /// Disk reads by `entries`.
    pub disk_reads: u64,
    /// Bytes read by `entries` from disk.
    pub disk_read_bytes: u64,
    /// Time `open` spent recovering.
    pub recovery_duration: Duration,
    /// Segment bytes `open` read.
    pub recovery_bytes: u64,
    /// Bytes dropped from a torn tail at recovery.
    pub recovery_truncated_bytes: u64,
}

/// What recovery found for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredGroup {
    /// The group.
    pub group: GroupId,
    /// Latest hard state, if one was ever written.
    pub hard_state: Option<HardState>,
    /// Snapshot / compaction marker (`{0, 0}` if none).
    pub snapshot: SnapshotMarker,
    /// First index with an entry (`snapshot.index + 1`).
    pub first_index: u64,
    /// Last index (`snapshot.index` if there is no entry).
    pub last_index: u64,
    /// Latest metadata written with [`Batch::set_meta`], if any.
    pub meta: Option<Bytes>,
}

/// The result of `open`: every group found, sorted by group.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Every group with state in the WAL, sorted by id.
    pub groups: Vec<RecoveredGroup>,
    /// Bytes read from segment files (free space of the tail included;
    /// free space of a segment followed by one that continues the batch
    /// sequence is not read).
    pub bytes_scanned: u64,
    /// Bytes of the valid frames replayed (padding included): the log.
    pub frame_bytes: u64,
    /// Time spent.
    pub duration: Duration,
    /// Bytes of a torn tail that were dropped (0 after a clean shutdown).
    pub truncated_bytes: u64,
}

/// A group holding an old segment alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinningGroup {
    /// The group.
    pub group: GroupId,
    /// Oldest segment holding one of its live records.
    pub segment: u64,
    /// Live entries (last - first + 1).
    pub live_entries: u64,
}

/// One open segment file.
#[derive(Clone)]
pub(crate) struct SegFile {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Rc<DmaFile>,
    pub bytes: u64,
}

/// What became of a batch that waited for room (FIFO backpressure).
/// `Ok(Some(op))`: accepted, durable once `durable_op >= op`; `Ok(None)`:
/// its guard failed (nothing applied); `Err`: refused or the WAL failed.
type AdmitResult = Result<Option<u64>, WalError>;

/// Shared between a waiting batch in `State::waiting` and its caller.
type AdmitSlot = Rc<RefCell<Option<AdmitResult>>>;

/// A batch waiting for room in the queue, in call order.
struct Waiting {
    batch: Batch,
    bytes: u64,
    /// Accept only if each group's `last_op` is still the given one.
    guard: Option<Vec<(GroupId, u64)>>,
    slot: AdmitSlot,
}

/// How `Inner::enqueue` left a batch: decided at once, or waiting in line.
enum Admission {
    Done(AdmitResult),
    Waiting(AdmitSlot),
}

struct Pending {
    /// The batch's operations; the `k`-th has op id `first_op + k`.
    ops: Vec<Op>,
    /// The payload CRC of every entry of the batch, in order (computed
    /// when it was accepted, for the index; the encoder reuses them).
    crcs: Vec<u32>,
    first_op: u64,
    bytes: u64,
    last_op: u64,
}

/// A spare segment being prepared, one chunk per committer turn.
struct SparePrep {
    seg: SegFile,
    tmp_path: PathBuf,
    filled: u64,
}

pub(crate) struct State {
    pub index: Index,
    queue: VecDeque<Pending>,
    queue_bytes: u64,
    /// Batches waiting for room (FIFO backpressure): admitted strictly in
    /// call order, each once `queue_bytes` leaves room for it.
    waiting: VecDeque<Waiting>,
    next_op: u64,
    durable_op: u64,
    pub next_batch_seq: u64,
    pub segments: BTreeMap<u64, SegFile>,
    pub current: u64,
    pub write_offset: u64,
    pub spares: VecDeque<SegFile>,
    spare_prep: Option<SparePrep>,
    committer_running: bool,
    /// Frames handed to the I/O thread and not yet acknowledged.
    inflight_frames: usize,
    poisoned: Option<String>,
    closed: bool,
    gc_dirty: bool,
    gc_urgent: bool,
    flushes_since_gc: u32,
    /// Look for entry-less groups pinning the oldest segment (once per roll).
    relocate_due: bool,
    gc_candidate: Option<(u64, u64)>,
    cache_rr: VecDeque<GroupId>,
    /// Scratch vectors of `accept`, kept to avoid allocating per batch.
    undo_scratch: Vec<crate::index::Undo>,
    pin_scratch: Vec<crate::index::PinMove>,
    rr_scratch: Vec<GroupId>,
    unplaced_scratch: Vec<GroupId>,
    /// How many groups have each segment as their oldest live record's
    /// segment (`GroupState::min_segment`). The oldest segment can be
    /// reclaimed when its count is zero.
    pins: BTreeMap<u64, u64>,
    pub stats: WalStats,
}

/// Moves one group's pin from `old` to `new`.
fn pin_move(pins: &mut BTreeMap<u64, u64>, old: Option<u64>, new: Option<u64>) {
    if old == new {
        return;
    }
    if let Some(o) = old {
        let c = pins.get_mut(&o).expect("a pinned segment has a count");
        *c -= 1;
        if *c == 0 {
            pins.remove(&o);
        }
    }
    if let Some(n) = new {
        *pins.entry(n).or_insert(0) += 1;
    }
}

struct Inner {
    dir: PathBuf,
    opts: WalOptions,
    st: RefCell<State>,
    notify: Notify,
    /// Wakes the committer when a batch is queued.
    work: Notify,
    /// Completion of the last frame handed to the I/O thread.
    io_chain: RefCell<Option<Arc<ChainLink>>>,
    /// Duplicate descriptor of the current segment for the I/O thread.
    io_file: RefCell<Option<(u64, Arc<std::fs::File>)>>,
    /// Reusable frame buffers of the I/O thread path (faulted in once).
    bufs: RefCell<Vec<AlignedBuf>>,
}

/// The write-ahead log of one shard. See the crate documentation.
///
/// `Wal` is `!Send`: it lives on the executor that opened it. Cheap queries are
/// synchronous; `write`, `entries`, `compact` and friends are async.
pub struct Wal {
    inner: Rc<Inner>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    let (stem, tmp) = match name.strip_suffix(".wal.tmp") {
        Some(s) => (s, true),
        None => (name.strip_suffix(".wal")?, false),
    };
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, tmp))
}

async fn open_rw(path: &Path, create: bool, dsync: bool) -> Result<DmaFile, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
        .dma_open(path)
        .await
        .map_err(|e| WalError::io(path, e))
}

/// Writes `buf` at `pos`; a short write is an error (it only happens when the
/// device is full or failing).
async fn write_all(
    file: &DmaFile,
    path: &Path,
    buf: glommio::io::DmaBuffer,
    pos: u64,
) -> Result<(), WalError> {
    let len = buf.len();
    let n = file
        .write_at(buf, pos)
        .await
        .map_err(|e| WalError::io(path, e))?;
    if n != len {
        return Err(WalError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {len} bytes at {pos}"),
            ),
        ));
    }
    Ok(())
}

fn zeroed_buffer(file: &DmaFile, len: usize) -> glommio::io::DmaBuffer {
    let mut b = file.alloc_dma_buffer(len);
    b.as_bytes_mut().fill(0);
    b
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` and recovers it.
    ///
    /// The first DMA file opened is the manifest: an existing non-empty file
    /// opened for reading, or a new one created write-only. Either way the
    /// executor's device probe does not hit glommio 0.9.0 bug 1, so reads of
    /// fresh (empty) segments work afterwards.
    ///
    /// # Errors
    /// `Corrupt` naming the file and offset for damage before the tail, a
    /// bad or foreign file, or a wrong format version; `Io` on I/O failure.
    /// A torn tail is not an error: it is dropped and reported in
    /// [`Recovery::truncated_bytes`].
    ///
    /// # Panics
    /// When called outside a glommio executor.
    pub async fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(Wal, Recovery), WalError> {
        options.validate()?;
        let started = Instant::now();
        let dir = fsutil::absolute(dir.as_ref()).map_err(|e| WalError::io(dir.as_ref(), e))?;
        let rec = recovery::recover(&dir, &options).await?;
        let recovery::Recovered {
            index,
            segments,
            current,
            write_offset,
            spares,
            next_batch_seq,
            bytes_scanned,
            frame_bytes,
            truncated_bytes,
        } = rec;
        let duration = started.elapsed();
        let mut groups: Vec<RecoveredGroup> = index
            .groups
            .iter()
            .map(|(&group, g)| RecoveredGroup {
                group,
                hard_state: g.hard_state,
                snapshot: g.marker,
                first_index: g.first_index(),
                last_index: g.last_index(),
                meta: g.meta.clone(),
            })
            .collect();
        groups.sort_by_key(|g| g.group);
        let stats = WalStats {
            segments: segments.len() as u64,
            recovery_duration: duration,
            recovery_bytes: bytes_scanned,
            recovery_truncated_bytes: truncated_bytes,
            ..WalStats::default()
        };
        let mut pins = BTreeMap::new();
        for g in index.groups.values() {
            pin_move(&mut pins, None, g.min_segment(&index.placements));
        }
        let st = State {
            index,
            queue: VecDeque::new(),
            queue_bytes: 0,
            next_op: 0,
            durable_op: 0,
            next_batch_seq,
            segments,
            current,
            write_offset,
            spares,
            spare_prep: None,
            waiting: VecDeque::new(),
            committer_running: false,
            inflight_frames: 0,
            poisoned: None,
            closed: false,
            gc_dirty: true,
            gc_urgent: true,
            flushes_since_gc: 0,
            relocate_due: true,
            gc_candidate: None,
            cache_rr: VecDeque::new(),
            undo_scratch: Vec::new(),
            pin_scratch: Vec::new(),
            rr_scratch: Vec::new(),
            unplaced_scratch: Vec::new(),
            pins,
            stats,
        };
        tracing::info!(
            dir = %dir.display(),
            groups = groups.len(),
            segments = st.segments.len(),
            bytes_scanned,
            truncated_bytes,
            duration_us = duration.as_micros() as u64,
            "wal recovered"
        );
        let wal = Wal {
            inner: Rc::new(Inner {
                dir,
                opts: options,
                st: RefCell::new(st),
                notify: Notify::default(),
                work: Notify::default(),
                io_chain: RefCell::new(None),
                io_file: RefCell::new(None),
                bufs: RefCell::new(Vec::new()),
            }),
        };
        // Prepare the spare segment and reclaim what recovery left behind.
        Inner::kick(&wal.inner);
        let recovery = Recovery {
            groups,
            bytes_scanned,
            frame_bytes,
            duration,
            truncated_bytes,
        };
        Ok((wal, recovery))
    }

    /// Makes `batch` durable. Concurrent callers are coalesced: every batch
    /// queued while a flush is in flight goes into the next frame, written
    /// with one DMA write and exactly one fdatasync. The returned future
    /// resolves when the batch is durable.
    ///
    /// # Ordering (FIFO acceptance)
    /// Batches are accepted — validated against the index and appended to
    /// the log — **in the order `write` was called**, not in the order the
    /// returned futures are first polled: the call itself either accepts the
    /// batch at once (the in-memory index reflects it before `write`
    /// returns, and `WalStats::batches` counts it) or, under backpressure,
    /// puts it at the end of a FIFO of waiting batches. Batches later in
    /// that FIFO are never accepted before earlier ones, even if they would
    /// fit. So a caller may issue the next contiguous append of a group
    /// without awaiting the previous write: it is validated after it, never
    /// refused with `Gap` because it overtook it. Durability follows the
    /// same order (frames become durable as a prefix).
    ///
    /// # Backpressure
    /// Batches accepted but not yet handed to a frame are bounded by
    /// `WalOptions::pending_bytes_max` (a batch is always accepted when
    /// nothing is pending). Beyond that, callers wait in the FIFO; each
    /// waiting batch is admitted as frames drain the queue. The FIFO holds
    /// one entry per caller whose write has not been accepted yet, so its
    /// memory is the memory of those callers' batches.
    /// [`WalStats::batches_waiting`] reports its length.
    ///
    /// Dropping the future does not withdraw the batch: once `write` is
    /// called, the batch is accepted (or refused) in its turn and written.
    ///
    /// An empty batch is a barrier: it resolves once every batch written
    /// before it is durable, without an fdatasync of its own.
    ///
    /// # Errors
    /// `InvalidOp` (nothing of the batch applied), `BatchTooLarge`,
    /// `Poisoned` after an earlier I/O failure or once closed, `Io` if this
    /// flush failed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn f(wal: &flotilla_storage::Wal, b1: flotilla_storage::Batch, b2: flotilla_storage::Batch) {
    /// // b2 continues b1's entries: both issued at once, accepted in order.
    /// let w1 = wal.write(b1);
    /// let w2 = wal.write(b2);
    /// let (r1, r2) = futures_lite::future::zip(w2, w1).await; // polled in any order
    /// # }
    /// ```
    pub fn write(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<(), WalError>> + 'static {
        let inner = self.inner.clone();
        let admission = Inner::enqueue(&inner, batch, None);
        async move { Inner::finish(&inner, admission).await.map(|_| ()) }
    }

    /// Reads entries `range` of `group`: from the cache where possible, from
    /// disk otherwise (payload CRCs verified). Stops once the payloads exceed
    /// `max_bytes`, but always returns at least one entry if the range is
    /// not empty.
    ///
    /// # Errors
    /// `GroupNotFound`, `Compacted` (range starts below the first index),
    /// `Unavailable` (range ends after the last index), `Corrupt` for a
    /// payload that fails its CRC, `Io`.
    pub async fn entries(
        &self,
        group: GroupId,
        range: Range<u64>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, WalError> {
        for _ in 0..8 {
            if let Some(v) = self.try_entries(group, range.clone(), max_bytes).await? {
                return Ok(v);
            }
        }
        // The group keeps changing under us: report what the caller can act on.
        let st = self.inner.st.borrow();
        let g = st
            .index
            .groups
            .get(&group)
            .ok_or(WalError::GroupNotFound { group })?;
        Err(WalError::Compacted {
            group,
            index: range.start,
            first: g.first_index(),
        })
    }

    async fn try_entries(
        &self,
        group: GroupId,
        range: Range<u64>,
        max_bytes: u64,
    ) -> Result<Option<Vec<Entry>>, WalError> {
        enum Src {
            Mem(Bytes),
            Disk(Loc),
        }
        struct Want {
            index: u64,
            term: u64,
            kind: u8,
            op_id: u64,
            src: Src,
        }
        let wants: Vec<Want> = {
            let st = self.inner.st.borrow();
            let g = st
                .index
                .groups
                .get(&group)
                .ok_or(WalError::GroupNotFound { group })?;
            if range.start < g.first_index() {
                return Err(WalError::Compacted {
                    group,
                    index: range.start,
                    first: g.first_index(),
                });
            }
            if range.end > g.last_index() + 1 {
                return Err(WalError::Unavailable {
                    group,
                    index: range.end - 1,
                    last: g.last_index(),
                });
            }
            let mut out = Vec::new();
            let mut total = 0u64;
            for index in range.clone() {
                let s = g.slot(index).expect("range checked above");
                let (src, n) = match (&s.payload, s.loc(&st.index.placements)) {
                    (Some(p), _) => (Src::Mem(p.clone()), p.len() as u64),
                    (None, Some(loc)) => (Src::Disk(loc), loc.bytes as u64),
                    (None, None) => unreachable!("an entry without a location is always cached"),
                };
                if !out.is_empty() && total + n > max_bytes {
                    break;
                }
                total += n;
                out.push(Want {
                    index,
                    term: s.term,
                    kind: s.kind,
                    op_id: s.op_id,
                    src,
                });
                if total >= max_bytes {
                    break;
                }
            }
            out
        };
        // Read runs of adjacent payloads in one read each.
        let mut payloads: Vec<Option<Bytes>> = wants
            .iter()
            .map(|w| match &w.src {
                Src::Mem(b) => Some(b.clone()),
                Src::Disk(_) => None,
            })
            .collect();
        let mut i = 0;
        while i < wants.len() {
            let Src::Disk(first) = wants[i].src else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            let mut end = first.offset + first.bytes as u64;
            while j < wants.len() {
                match wants[j].src {
                    Src::Disk(l)
                        if l.segment == first.segment
                            && l.offset >= end
                            && l.offset - end <= BLOCK_BYTES =>
                    {
                        end = l.offset + l.bytes as u64;
                        j += 1;
                    }
                    _ => break,
                }
            }
            let seg = self.inner.st.borrow().segments.get(&first.segment).cloned();
            let Some(seg) = seg else {
                return Ok(None); // reclaimed meanwhile: re-plan
            };
            let len = (end - first.offset) as usize;
            let data = if len == 0 {
                Bytes::new()
            } else {
                let r = seg
                    .file
                    .read_at(first.offset, len)
                    .await
                    .map_err(|e| WalError::io(&seg.path, e))?;
                if r.len() != len {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: first.offset + r.len() as u64,
                        kind: Corruption::BadPayloadCrc,
                    });
                }
                let mut b = BytesMut::with_capacity(len);
                b.extend_from_slice(&r);
                b.freeze()
            };
            {
                let mut st = self.inner.st.borrow_mut();
                st.stats.disk_reads += 1;
                st.stats.disk_read_bytes += len as u64;
            }
            for k in i..j {
                let Src::Disk(l) = wants[k].src else {
                    unreachable!()
                };
                let at = (l.offset - first.offset) as usize;
                let p = data.slice(at..at + l.bytes as usize);
                if crc32fast::hash(&p) != l.crc {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: l.offset,
                        kind: Corruption::BadPayloadCrc,
                    });
                }
                payloads[k] = Some(p);
            }
            i = j;
        }
        // Re-check that nothing read from disk was replaced or compacted
        // (and its segment reused) while we were reading.
        let st = self.inner.st.borrow();
        let g = st
            .index
            .groups
            .get(&group)
            .ok_or(WalError::GroupNotFound { group })?;
        for w in &wants {
            if let Src::Disk(l) = w.src {
                match g.slot(w.index) {
                    Some(s) if s.op_id == w.op_id && s.loc(&st.index.placements) == Some(l) => {}
                    _ => return Ok(None),
                }
            }
        }
        Ok(Some(
            wants
                .into_iter()
                .zip(payloads)
                .map(|(w, p)| Entry {
                    index: w.index,
                    term: w.term,
                    kind: w.kind,
                    payload: p.expect("every payload resolved"),
                })
                .collect(),
        ))
    }

    /// Compacts `group` up to `index` (inclusive): writes a snapshot marker
    /// `{index, term(index)}` and waits until it is durable. A no-op if the
    /// group is already compacted that far.
    ///
    /// # Errors
    /// `GroupNotFound`; `InvalidOp::UnknownTerm` if `index` is beyond the last
    /// index; write errors.
    pub async fn compact(&self, group: GroupId, index: u64) -> Result<(), WalError> {
        let marker = {
            let st = self.inner.st.borrow();
            let g = st
                .index
                .groups
                .get(&group)
                .ok_or(WalError::GroupNotFound { group })?;
            if index <= g.marker.index {
                return Ok(());
            }
            let term = g.term(index).ok_or(WalError::InvalidOp {
                group,
                reason: InvalidOp::UnknownTerm { index },
            })?;
            SnapshotMarker { index, term }
        };
        let mut b = Batch::new();
        b.set_snapshot(group, marker);
        self.write(b).await
    }

    /// Removes every trace of `group` and waits until that is durable.
    ///
    /// # Errors
    /// Write errors.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), WalError> {
        let mut b = Batch::new();
        b.remove_group(group);
        self.write(b).await
    }

    /// First index holding an entry (`snapshot.index + 1`), if the group exists.
    pub fn first_index(&self, group: GroupId) -> Option<u64> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .map(|g| g.first_index())
    }

    /// Last index (`snapshot.index` if there is no entry), if the group exists.
    pub fn last_index(&self, group: GroupId) -> Option<u64> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .map(|g| g.last_index())
    }

    /// Term of the entry at `index`, or of the snapshot marker if `index` is
    /// its index; `None` if compacted, beyond the log or the group is unknown.
    pub fn term(&self, group: GroupId, index: u64) -> Option<u64> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .and_then(|g| g.term(index))
    }

    /// Latest hard state of `group`.
    pub fn hard_state(&self, group: GroupId) -> Option<HardState> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .and_then(|g| g.hard_state)
    }

    /// Latest metadata of `group` written with [`Batch::set_meta`] (accepted,
    /// possibly not yet durable), from memory.
    pub fn meta(&self, group: GroupId) -> Option<Bytes> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .and_then(|g| g.meta.clone())
    }

    /// Snapshot marker of `group` (`{0, 0}` if none), if the group exists.
    pub fn snapshot(&self, group: GroupId) -> Option<SnapshotMarker> {
        self.inner
            .st
            .borrow()
            .index
            .groups
            .get(&group)
            .map(|g| g.marker)
    }

    /// Every group with state, sorted.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut v: Vec<GroupId> = self
            .inner
            .st
            .borrow()
            .index
            .groups
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let st = self.inner.st.borrow();
        let mut s = st.stats.clone();
        s.segments = st.segments.len() as u64;
        s.current_segment = st.current;
        s.write_offset = st.write_offset;
        s.cache_bytes = st.index.cached_bytes_total;
        s.batches_waiting = st.waiting.len() as u64;
        s
    }

    /// Sequence numbers of the live segments, oldest first.
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.inner.st.borrow().segments.keys().copied().collect()
    }

    /// Up to `n` groups holding the oldest segments alive (by oldest segment,
    /// then group), excluding groups whose records are all in the current
    /// segment. Snapshot-and-compact them, or `rewrite_groups` the small ones,
    /// so their segments can be reclaimed.
    pub fn groups_pinning_oldest(&self, n: usize) -> Vec<PinningGroup> {
        let st = self.inner.st.borrow();
        let mut v: Vec<PinningGroup> = st
            .index
            .groups
            .iter()
            .filter_map(|(&group, g)| {
                let segment = g.min_segment(&st.index.placements)?;
                (segment < st.current).then_some(PinningGroup {
                    group,
                    segment,
                    live_entries: g.slots.len() as u64,
                })
            })
            .collect();
        v.sort_unstable_by_key(|p| (p.segment, p.group));
        v.truncate(n);
        v
    }

    /// Re-writes the live state of each listed group (snapshot marker, every
    /// live entry, hard state) into the current segment, so that old
    /// segments it alone kept alive can be reclaimed. Groups whose live
    /// payloads exceed `group_bytes_max`, that are already only in the current
    /// segment, or that change while being read, are skipped. Returns the
    /// number of groups re-written.
    ///
    /// # Errors
    /// Read or write errors.
    pub async fn rewrite_groups(
        &self,
        groups: &[GroupId],
        group_bytes_max: u64,
    ) -> Result<usize, WalError> {
        let mut done = 0;
        for &group in groups {
            let plan = {
                let st = self.inner.st.borrow();
                let Some(g) = st.index.groups.get(&group) else {
                    continue;
                };
                match g.min_segment(&st.index.placements) {
                    Some(s) if s < st.current => {}
                    _ => continue,
                }
                let bytes: u64 = g
                    .slots
                    .iter()
                    .map(|s| {
                        s.payload
                            .as_ref()
                            .map_or(s.bytes as u64, |p| p.len() as u64)
                    })
                    .sum();
                if bytes > group_bytes_max {
                    continue;
                }
                (
                    g.last_op,
                    g.marker,
                    g.has_marker_record(),
                    g.hard_state,
                    g.first_index(),
                    g.last_index(),
                    g.meta.clone(),
                )
            };
            let (last_op, marker, had_marker, hs, first, last, meta) = plan;
            let entries = if last >= first {
                self.entries(group, first..last + 1, u64::MAX).await?
            } else {
                Vec::new()
            };
            let mut b = Batch::new();
            if had_marker || marker.index > 0 {
                b.set_snapshot(group, marker);
            }
            if !entries.is_empty() {
                b.append(group, entries);
            }
            if let Some(hs) = hs {
                b.set_hard_state(group, hs);
            }
            if let Some(meta) = meta {
                b.set_meta(group, meta);
            }
            let frame: u64 =
                FRAME_HEADER_BYTES as u64 + b.ops.iter().map(format::record_bytes).sum::<u64>();
            if b.is_empty() || frame > self.inner.opts.frame_limit_bytes() {
                continue; // nothing to move, or more than one frame: snapshot it instead
            }
            let admission = Inner::enqueue(&self.inner, b, Some(vec![(group, last_op)]));
            if Inner::finish(&self.inner, admission).await? {
                done += 1;
                self.inner.st.borrow_mut().stats.groups_rewritten += 1;
            }
        }
        Ok(done)
    }

    /// Waits for every accepted write and pending maintenance, then closes
    /// every file. Later writes fail.
    ///
    /// # Errors
    /// `Io` if closing a file fails; the first write error if one happened.
    pub async fn close(&self) -> Result<(), WalError> {
        let inner = &self.inner;
        {
            let mut st = inner.st.borrow_mut();
            // Finish the spare (if started) but start no new reclamation.
            st.gc_dirty = false;
            st.gc_urgent = false;
        }
        inner
            .notify
            .wait_until(|| {
                let st = inner.st.borrow();
                !st.committer_running
                    && ((st.queue.is_empty() && st.waiting.is_empty()) || st.poisoned.is_some())
            })
            .await;
        let (segs, spares, prep, poisoned) = {
            let mut st = inner.st.borrow_mut();
            st.closed = true;
            Inner::admit_waiting(&mut st, &inner.opts);
            let segs: Vec<SegFile> = std::mem::take(&mut st.segments).into_values().collect();
            (
                segs,
                std::mem::take(&mut st.spares),
                st.spare_prep.take(),
                st.poisoned.clone(),
            )
        };
        inner.io_file.borrow_mut().take();
        inner.io_chain.borrow_mut().take();
        inner.bufs.borrow_mut().clear();
        inner.notify.notify_all();
        for seg in segs.into_iter().chain(spares).chain(prep.map(|p| p.seg)) {
            let path = seg.path.clone();
            seg.file
                .close_rc()
                .await
                .map_err(|e| WalError::io(&path, e))?;
        }
        match poisoned {
            Some(reason) => Err(WalError::Poisoned { reason }),
            None => Ok(()),
        }
    }

    /// The directory of this WAL.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// Whether `batch` (of `bytes` record bytes) may be accepted now without
/// exceeding `pending_bytes_max`. A barrier always may; anything may when
/// nothing is pending (so a batch larger than the bound still goes through).
fn has_room(st: &State, opts: &WalOptions, batch: &Batch, bytes: u64) -> bool {
    batch.is_empty() || st.queue_bytes == 0 || st.queue_bytes + bytes <= opts.pending_bytes_max
}

/// Accepts `batch` now (its turn has come): `Ok(Some(op))` once durable
/// when `durable_op >= op`, `Ok(None)` if `guard` failed.
fn admit(
    st: &mut State,
    opts: &WalOptions,
    batch: Batch,
    bytes: u64,
    guard: Option<&[(GroupId, u64)]>,
) -> AdmitResult {
    if st.closed {
        return Err(WalError::Poisoned {
            reason: "the WAL is closed".into(),
        });
    }
    if let Some(reason) = &st.poisoned {
        return Err(WalError::Poisoned {
            reason: reason.clone(),
        });
    }
    if let Some(guard) = guard {
        let changed = guard
            .iter()
            .any(|(g, op)| st.index.groups.get(g).map(|s| s.last_op) != Some(*op));
        if changed {
            return Ok(None);
        }
    }
    if !batch.is_empty() {
        accept(st, opts, batch, bytes)?;
    }
    Ok(Some(st.next_op))
}

/// Operations of a batch whose groups `accept` asks the CPU to fetch at
/// once, ahead of applying them.
const PREFETCH_OPS: usize = 16;

/// Validates and applies a batch to the index and queues it. Operation ids
/// are consecutive: the `k`-th op of the batch is `first_op + k`.
///
/// Per entry: one slot pushed onto its group's deque (payload cached); per
/// op: one hash lookup of its group. Scratch vectors live in `State` and are
/// reused, so a large batch allocates nothing but its groups' deques.
fn accept(st: &mut State, opts: &WalOptions, batch: Batch, bytes: u64) -> Result<(), WalError> {
    let mut batch = batch;
    let first_op = st.next_op + 1;
    let mut undo = std::mem::take(&mut st.undo_scratch);
    let mut pin_moves = std::mem::take(&mut st.pin_scratch);
    let mut rr = std::mem::take(&mut st.rr_scratch);
    let mut unplaced = std::mem::take(&mut st.unplaced_scratch);
    debug_assert!(undo.is_empty() && pin_moves.is_empty() && rr.is_empty() && unplaced.is_empty());
    let entries: usize = batch
        .ops
        .iter()
        .map(|op| match op {
            Op::Append { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    let mut crcs = Vec::with_capacity(entries);
    let cache = CacheTrim {
        durable_op: st.durable_op,
        keep_bytes: opts.cache_group_bytes_max,
    };
    let mut result = Ok(());
    let mut urgent = false;
    // Offset of the op's record from the batch's first record.
    let mut record_at = 0u64;
    for k in 0..batch.ops.len() {
        if k % PREFETCH_OPS == 0 {
            // The next appends' groups, fetched together (see
            // `Index::prefetch_append`).
            for op in batch.ops.iter().skip(k).take(PREFETCH_OPS) {
                if let Op::Append { group, .. } = op {
                    st.index.prefetch_append(*group);
                }
            }
        }
        let op = &mut batch.ops[k];
        let op_id = first_op + k as u64;
        let group = op.group();
        let at = record_at;
        let applied = match op {
            Op::Append { entries, .. } => {
                let first_index = entries.first().map_or(0, |e| e.index);
                let payload_bytes = entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
                record_at += (format::ENTRIES_FIXED_BYTES
                    + format::ENTRY_META_BYTES * entries.len()) as u64
                    + payload_bytes;
                if entries
                    .iter()
                    .enumerate()
                    .any(|(i, e)| e.index != first_index + i as u64)
                {
                    Err(InvalidOp::NonConsecutive)
                } else {
                    st.index
                        .append_entries(group, op_id, entries, at, &mut crcs, cache, &mut undo)
                        .map(|(pin, queue, none_placed)| {
                            if queue {
                                rr.push(group);
                            }
                            if none_placed {
                                unplaced.push(group);
                            }
                            pin
                        })
                }
            }
            Op::Snapshot {
                marker, drop_all, ..
            } => {
                urgent = true;
                *drop_all = st.index.snapshot_drops_all(group, *marker);
                let change = Change::Snapshot { marker: *marker };
                st.index.apply(group, op_id, change, Some(&mut undo))
            }
            Op::HardState { state, .. } => {
                let change = Change::HardState { state: *state };
                st.index.apply(group, op_id, change, Some(&mut undo))
            }
            Op::Meta { meta, .. } => {
                let change = Change::Meta { meta: meta.clone() };
                st.index.apply(group, op_id, change, Some(&mut undo))
            }
            Op::Remove { .. } => {
                urgent = true;
                st.index
                    .apply(group, op_id, Change::Remove, Some(&mut undo))
            }
        };
        if !matches!(op, Op::Append { .. }) {
            record_at += format::record_bytes(op);
        }
        match applied {
            Ok((before, after)) => {
                if before != after {
                    pin_moves.push((before, after));
                }
                // Its record waits for a frame and nothing else of the
                // group is in one: look again once the batch is placed.
                if after.is_none() && !matches!(op, Op::Append { .. } | Op::Remove { .. }) {
                    unplaced.push(group);
                }
            }
            Err(reason) => {
                result = Err(WalError::InvalidOp { group, reason });
                break;
            }
        }
    }
    if result.is_err() {
        st.index.revert(std::mem::take(&mut undo));
        pin_moves.clear();
        rr.clear();
        unplaced.clear();
    } else {
        debug_assert_eq!(record_at, bytes);
        st.index.unplaced.append(&mut unplaced);
        st.next_op = first_op + batch.ops.len() as u64 - 1;
        for (old, new) in pin_moves.drain(..) {
            pin_move(&mut st.pins, old, new);
        }
        st.cache_rr.extend(rr.drain(..));
        // Removed groups leave stale entries behind; keep the queue bounded.
        if st.cache_rr.len() > 2 * st.index.groups.len() + 64 {
            let index = &st.index;
            let mut seen = std::collections::HashSet::new();
            st.cache_rr
                .retain(|g| index.groups.get(g).is_some_and(|s| s.in_rr) && seen.insert(*g));
        }
        if urgent {
            st.gc_urgent = true;
        }
        // Compactions keep their groups' slot buffers (else each one
        // regrows, and faults in, its log after every compaction).
        st.index.commit_undo(&mut undo);
    }
    undo.clear();
    st.undo_scratch = undo;
    st.pin_scratch = pin_moves;
    st.rr_scratch = rr;
    st.unplaced_scratch = unplaced;
    result?;
    st.stats.batches += 1;
    st.gc_dirty = true;
    st.queue_bytes += bytes;
    st.queue.push_back(Pending {
        ops: batch.ops,
        crcs,
        first_op,
        bytes,
        last_op: st.next_op,
    });
    debug_assert!(st.queue_bytes <= opts.pending_bytes_max.max(bytes) + opts.pending_bytes_max);
    Ok(())
}

impl Inner {
    /// The synchronous half of `write`: at call time, either decides the
    /// batch (accepted or refused) or puts it at the end of the FIFO of
    /// waiting batches. A batch is accepted at once only if nobody waits
    /// ahead of it and the queue has room, so acceptance follows call order.
    fn enqueue(this: &Rc<Inner>, batch: Batch, guard: Option<Vec<(GroupId, u64)>>) -> Admission {
        let bytes: u64 = batch.ops.iter().map(format::record_bytes).sum();
        let limit = this.opts.frame_limit_bytes();
        if FRAME_HEADER_BYTES as u64 + bytes > limit {
            return Admission::Done(Err(WalError::BatchTooLarge {
                bytes: FRAME_HEADER_BYTES as u64 + bytes,
                limit,
            }));
        }
        let result = {
            let mut st = this.st.borrow_mut();
            let st = &mut *st;
            if st.waiting.is_empty() && has_room(st, &this.opts, &batch, bytes) {
                admit(st, &this.opts, batch, bytes, guard.as_deref())
            } else {
                let slot: AdmitSlot = Rc::new(RefCell::new(None));
                st.waiting.push_back(Waiting {
                    batch,
                    bytes,
                    guard,
                    slot: slot.clone(),
                });
                return Admission::Waiting(slot);
            }
        };
        if matches!(result, Ok(Some(_))) {
            Inner::kick(this);
        }
        Admission::Done(result)
    }

    /// The asynchronous half of `write`: waits for the batch's turn (if it
    /// waits in the FIFO), then for its durability. `Ok(false)`: its guard
    /// failed.
    async fn finish(this: &Rc<Inner>, admission: Admission) -> Result<bool, WalError> {
        let result = match admission {
            Admission::Done(r) => r,
            Admission::Waiting(slot) => {
                this.notify.wait_until(|| slot.borrow().is_some()).await;
                let r = slot.borrow_mut().take();
                r.expect("decided above")
            }
        };
        let Some(target) = result? else {
            return Ok(false);
        };
        this.notify
            .wait_until(|| {
                let st = this.st.borrow();
                st.durable_op >= target || st.poisoned.is_some()
            })
            .await;
        let st = this.st.borrow();
        if st.durable_op >= target {
            Ok(true)
        } else {
            Err(WalError::Poisoned {
                reason: st.poisoned.clone().unwrap_or_default(),
            })
        }
    }

    /// Decides waiting batches, front first, while the queue has room (all
    /// of them, with an error, once the WAL is closed or poisoned). Returns
    /// how many were decided; the caller wakes the writers.
    fn admit_waiting(st: &mut State, opts: &WalOptions) -> usize {
        let mut decided = 0;
        while let Some(w) = st.waiting.front() {
            let stopped = st.closed || st.poisoned.is_some();
            if !stopped && !has_room(st, opts, &w.batch, w.bytes) {
                break;
            }
            let w = st.waiting.pop_front().expect("front exists");
            let result = admit(st, opts, w.batch, w.bytes, w.guard.as_deref());
            if let (Err(e), 1) = (&result, Rc::strong_count(&w.slot)) {
                // Its caller dropped the future: nobody else will hear of it.
                tracing::warn!(error = %e, "wal batch refused after its writer went away");
            }
            *w.slot.borrow_mut() = Some(result);
            decided += 1;
        }
        debug_assert!(st.waiting.is_empty() || !(st.closed || st.poisoned.is_some()));
        decided
    }

    /// [`Inner::admit_waiting`], then wakes the writers if any was decided.
    fn admit_waiting_and_wake(&self) {
        let decided = {
            let mut st = self.st.borrow_mut();
            if st.waiting.is_empty() {
                return;
            }
            Inner::admit_waiting(&mut st, &self.opts)
        };
        if decided > 0 {
            self.notify.notify_all();
        }
    }

    /// Starts the committer task unless it runs already.
    fn kick(this: &Rc<Inner>) {
        {
            let mut st = this.st.borrow_mut();
            if st.committer_running || st.closed || st.poisoned.is_some() {
                drop(st);
                this.work.notify_all();
                return;
            }
            st.committer_running = true;
        }
        let inner = this.clone();
        glommio::spawn_local(async move { inner.run_committer().await }).detach();
    }

    async fn run_committer(self: Rc<Self>) {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let result = self.commit_loop(&mut inflight).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "wal write failed; poisoning the WAL");
            {
                let mut st = self.st.borrow_mut();
                st.poisoned = Some(e.to_string());
                // Every batch still waiting for room fails now.
                Inner::admit_waiting(&mut st, &self.opts);
            }
            // Frames still queued on the I/O thread fail fast (their
            // predecessor failed); wait for them so no write outlives us.
            while let Some(f) = inflight.pop_front() {
                let _ = f.io.await;
            }
        }
        {
            let mut st = self.st.borrow_mut();
            st.inflight_frames = 0;
            st.committer_running = false;
        }
        self.notify.notify_all();
    }

    /// The committer: builds frames from queued batches, writes each with one
    /// DMA write and one fdatasync, acknowledges, and does maintenance in
    /// between. Returns when there is nothing left to do.
    ///
    /// ```text
    ///  executor (this task)                    I/O thread (glommio blocking pool)
    ///  build frame N ──hand over──────────────► pwrite N, fdatasync N ─┐
    ///  build frame N+1 (while N is written) ──► (waits for N) pwrite N+1, fdatasync N+1
    ///  ack N ◄──────────────────────────────────────────────────────────┘
    /// ```
    /// A frame built with nothing in flight goes through io_uring on the
    /// executor (lowest latency). A frame built while another is in flight
    /// goes to the I/O thread: there, each write follows
    /// the previous frame's fdatasync immediately, without waiting for this
    /// executor to submit it (glommio 0.9 submits io_uring requests only when
    /// the executor polls, i.e. after the CPU work of every runnable task).
    /// Frame N+1 is still written only after fdatasync N returned, so the
    /// disk never holds frame N+1 without frame N.
    async fn commit_loop(&self, inflight: &mut VecDeque<InFlight>) -> Result<(), WalError> {
        loop {
            let (queued, queue_bytes) = {
                let st = self.st.borrow();
                (!st.queue.is_empty(), st.queue_bytes)
            };
            let build = queued
                && (inflight.is_empty()
                    || (inflight.len() < PIPELINE_FRAMES_MAX && queue_bytes >= PIPELINE_BYTES_MIN));
            if build {
                let frame = self.build_frame(!inflight.is_empty()).await?;
                // The queue drained into the frame: the next waiting batches
                // (FIFO backpressure) may be accepted now.
                self.admit_waiting_and_wake();
                match frame.buf {
                    FrameBuf::Dma(buf) => {
                        // Through io_uring on this executor (lowest latency
                        // when nothing else is going on); a frame built while
                        // it is in flight goes to the I/O thread and waits
                        // for this one's link.
                        debug_assert!(inflight.is_empty());
                        let link = Arc::new(ChainLink::default());
                        *self.io_chain.borrow_mut() = Some(link.clone());
                        let file = frame.seg.file.clone();
                        let offset = frame.offset;
                        let guard = LinkGuard(Some(link));
                        let dsync = self.opts.dsync_writes;
                        let io = async move {
                            let started = Instant::now();
                            let res = async {
                                let len = buf.len();
                                let n = file.write_at(buf, offset).await?;
                                if n != len {
                                    return Err(std::io::Error::new(
                                        std::io::ErrorKind::WriteZero,
                                        format!("short write: {n} of {len} bytes at {offset}"),
                                    ));
                                }
                                if !dsync {
                                    file.fdatasync().await?;
                                }
                                Ok(started.elapsed())
                            }
                            .await;
                            guard.finish(res.is_ok());
                            (None, res)
                        };
                        inflight.push_back(InFlight {
                            io: Box::pin(io),
                            path: frame.seg.path.clone(),
                            done: frame.done,
                        });
                        self.st.borrow_mut().inflight_frames = inflight.len();
                    }
                    FrameBuf::Thread(buf) => {
                        let mut f = self.dispatch(&frame.seg, frame.offset, buf, frame.done)?;
                        // The first poll hands the frame to the I/O thread.
                        if let Some(res) = futures_lite::future::poll_once(&mut f.io).await {
                            // Only if it ran already; keep the order anyway.
                            f.io = Box::pin(std::future::ready(res));
                        }
                        inflight.push_back(f);
                        self.st.borrow_mut().inflight_frames = inflight.len();
                    }
                }
                glommio::yield_if_needed().await;
                continue;
            }
            let can_build = inflight.len() < PIPELINE_FRAMES_MAX;
            if let Some(front) = inflight.front_mut() {
                // Wait for the oldest frame, or for enough new work to build
                // the next one while it is in flight.
                let done = futures_lite::future::or(async { Some((&mut front.io).await) }, async {
                    if can_build {
                        self.work
                            .wait_until(|| {
                                let st = self.st.borrow();
                                st.queue_bytes >= PIPELINE_BYTES_MIN
                            })
                            .await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                    None
                })
                .await;
                if let Some((buf, res)) = done {
                    let f = inflight.pop_front().expect("front exists");
                    self.st.borrow_mut().inflight_frames = inflight.len();
                    let io_time = res.map_err(|e| WalError::io(&f.path, e))?;
                    if let Some(buf) = buf {
                        self.recycle_buffer(buf);
                    }
                    self.complete(&f.done, io_time);
                    self.maintain_step(inflight.is_empty()).await?;
                }
                continue;
            }
            // Nothing queued, nothing in flight: maintenance, or stop.
            if !self.maintain_step(true).await? {
                let mut st = self.st.borrow_mut();
                if st.queue.is_empty() {
                    st.committer_running = false;
                    return Ok(());
                }
            }
        }
    }

    /// Takes queued batches into one frame: rolls the segment if needed,
    /// encodes every record, records where each entry lands. With `pipelined`
    /// (another frame in flight), or if it is longer than
    /// [`DMA_FRAME_BYTES_MAX`], the frame goes to the I/O thread's reusable
    /// buffer, else into a DMA buffer for io_uring.
    async fn build_frame(&self, pipelined: bool) -> Result<Frame, WalError> {
        let first_bytes = {
            let st = self.st.borrow();
            FRAME_HEADER_BYTES as u64 + st.queue.front().expect("called with work").bytes
        };
        // Roll until the frame fits (a spare left by a run with a smaller
        // `segment_bytes` may be too small; fresh and recycled ones never are).
        for _ in 0..=self.opts.spare_segments_max + 1 {
            let needs_roll = {
                let st = self.st.borrow();
                let seg_bytes = st.segments[&st.current].bytes;
                st.write_offset + align_up(first_bytes) > seg_bytes
            };
            if !needs_roll {
                break;
            }
            self.roll().await?;
        }
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let seg = st.segments[&st.current].clone();
        let offset = st.write_offset;
        let room = (seg.bytes - offset).min(self.opts.frame_limit_bytes());
        let mut body = 0u64;
        let mut taken = Vec::new();
        while let Some(p) = st.queue.front() {
            if !taken.is_empty() && align_up(FRAME_HEADER_BYTES as u64 + body + p.bytes) > room {
                break;
            }
            body += p.bytes;
            st.queue_bytes -= p.bytes;
            taken.push(st.queue.pop_front().expect("front exists"));
        }
        let frame_bytes = FRAME_HEADER_BYTES as u64 + body;
        let len = align_up(frame_bytes);
        assert!(
            offset + len <= seg.bytes,
            "frame overruns segment {} at {offset}",
            seg.seq
        );
        let via_thread = pipelined || len > DMA_FRAME_BYTES_MAX;
        let mut buf = if via_thread {
            FrameBuf::Thread(self.take_buffer(len as usize))
        } else {
            FrameBuf::Dma(seg.file.alloc_dma_buffer(len as usize))
        };
        let b = match &mut buf {
            FrameBuf::Dma(d) => d.as_bytes_mut(),
            FrameBuf::Thread(t) => t.as_mut_slice(),
        };
        let batch_seq = st.next_batch_seq;
        format::encode_frame_header(b, body as u32, seg.seq, batch_seq);
        let mut at = FRAME_HEADER_BYTES;
        let mut entries = 0u64;
        for p in &taken {
            // Every slot and record of the batch finds its place through
            // this run: no group is looked up here.
            st.index
                .place(p.first_op, p.last_op, seg.seq, offset + at as u64);
            let batch_at = at;
            let mut crcs = &p.crcs[..];
            for op in &p.ops {
                let op_crcs = match op {
                    Op::Append { entries: es, .. } => {
                        entries += es.len() as u64;
                        let (mine, rest) = crcs.split_at(es.len());
                        crcs = rest;
                        mine
                    }
                    _ => &[],
                };
                at += format::encode_record(&mut b[at..], seg.seq, batch_seq, op, op_crcs);
            }
            debug_assert!(crcs.is_empty());
            debug_assert_eq!((at - batch_at) as u64, p.bytes);
        }
        debug_assert_eq!(at as u64, frame_bytes);
        // Groups that had no record in a frame may have one now.
        let mut moves = std::mem::take(&mut st.pin_scratch);
        st.index.repin_unplaced(&mut moves);
        for (old, new) in moves.drain(..) {
            pin_move(&mut st.pins, old, new);
        }
        st.pin_scratch = moves;
        b[at..].fill(0);
        st.next_batch_seq += 1;
        st.write_offset = offset + len;
        st.stats.entries_written += entries;
        if pipelined {
            st.stats.pipelined_frames += 1;
        }
        if via_thread {
            st.stats.thread_frames += 1;
        }
        let last_op = taken.last().expect("at least one batch").last_op;
        Ok(Frame {
            seg,
            offset,
            buf,
            done: FrameDone {
                last_op,
                len,
                frame_bytes,
            },
        })
    }

    /// Hands a frame to the I/O thread: wait for the previous frame's
    /// fdatasync, write, fdatasync. The returned future must be polled once
    /// right away (that enqueues the job).
    fn dispatch(
        &self,
        seg: &SegFile,
        offset: u64,
        buf: AlignedBuf,
        done: FrameDone,
    ) -> Result<InFlight, WalError> {
        let file = self.thread_file(seg)?;
        let prev = self.io_chain.borrow_mut().take();
        let link = Arc::new(ChainLink::default());
        *self.io_chain.borrow_mut() = Some(link.clone());
        let len = done.len as usize;
        let dsync = self.opts.dsync_writes;
        let io = glommio::executor().spawn_blocking(move || {
            let res = (|| {
                if let Some(prev) = prev {
                    prev.wait()?;
                }
                let io_started = Instant::now();
                use std::os::unix::fs::FileExt;
                let n = file.write_at(&buf.as_slice()[..len], offset)?;
                if n != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write: {n} of {len} bytes at {offset}"),
                    ));
                }
                if !dsync {
                    // O_DSYNC (shared by the duplicated descriptor) made the
                    // write durable already.
                    file.sync_data()?;
                }
                Ok(io_started.elapsed())
            })();
            link.finish(res.is_ok());
            (Some(buf), res)
        });
        Ok(InFlight {
            io: Box::pin(io),
            path: seg.path.clone(),
            done,
        })
    }

    /// A duplicate descriptor of `seg`'s file for the I/O thread (shares the
    /// open file description, so it is O_DIRECT too).
    fn thread_file(&self, seg: &SegFile) -> Result<Arc<std::fs::File>, WalError> {
        let mut cache = self.io_file.borrow_mut();
        if let Some((seq, f)) = &*cache {
            if *seq == seg.seq {
                return Ok(f.clone());
            }
        }
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor belongs to `seg.file`, which is open and
        // outlives this call; it is only duplicated here.
        let fd = unsafe { BorrowedFd::borrow_raw(seg.file.as_raw_fd()) };
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| WalError::io(&seg.path, e))?;
        let f = Arc::new(std::fs::File::from(owned));
        *cache = Some((seg.seq, f.clone()));
        Ok(f)
    }

    fn take_buffer(&self, len: usize) -> AlignedBuf {
        let cap = self.opts.frame_limit_bytes() as usize;
        debug_assert!(len <= cap);
        let mut pool = self.bufs.borrow_mut();
        let mut b = pool.pop().unwrap_or_else(|| AlignedBuf::new(cap));
        b.len = len;
        b
    }

    fn recycle_buffer(&self, buf: AlignedBuf) {
        let mut pool = self.bufs.borrow_mut();
        if pool.len() < PIPELINE_FRAMES_MAX
            && buf.capacity() >= self.opts.frame_limit_bytes() as usize
        {
            pool.push(buf);
        }
    }

    /// Marks a frame durable: stats, cache eviction, wakes the writers.
    fn complete(&self, done: &FrameDone, io_time: Duration) {
        {
            let mut st = self.st.borrow_mut();
            st.stats.flush_io_time += io_time;
            st.stats.flush_latency.record(io_time.as_micros() as u64);
            debug_assert!(done.last_op > st.durable_op);
            st.durable_op = done.last_op;
            st.flushes_since_gc += 1;
            st.stats.flushes += 1;
            st.stats.fdatasyncs += 1;
            st.stats.bytes_written += done.len;
            st.stats.record_bytes += done.frame_bytes;
            self.evict(&mut st);
        }
        self.notify.notify_all();
    }

    /// Keeps the cache within `cache_bytes_max`: evicts whole groups in
    /// round robin. (Each group is trimmed to `cache_group_bytes_max` when
    /// its next append is encoded, see `Index::set_locations`.)
    fn evict(&self, st: &mut State) {
        let durable = st.durable_op;
        let mut budget = st.cache_rr.len();
        while st.index.cached_bytes_total > self.opts.cache_bytes_max && budget > 0 {
            budget -= 1;
            let Some(g) = st.cache_rr.pop_front() else {
                break;
            };
            st.index.evict(g, durable, 0);
            if let Some(s) = st.index.groups.get_mut(&g) {
                if s.cached_bytes > 0 {
                    st.cache_rr.push_back(g);
                } else {
                    s.in_rr = false;
                }
            }
        }
    }

    /// Makes the spare segment current (preparing it first if needed).
    async fn roll(&self) -> Result<(), WalError> {
        while self.st.borrow().spares.is_empty() {
            self.prepare_spare_step(true).await?;
        }
        let mut st = self.st.borrow_mut();
        let spare = st.spares.pop_front().expect("prepared above");
        debug_assert_eq!(spare.seq, st.current + 1);
        tracing::debug!(from = st.current, to = spare.seq, "wal segment roll");
        st.current = spare.seq;
        st.write_offset = BLOCK_BYTES;
        st.segments.insert(spare.seq, spare);
        st.gc_urgent = true;
        st.relocate_due = true;
        Ok(())
    }

    /// One bounded piece of background work. `Ok(false)`: nothing to do.
    /// `idle`: no frame in flight (spare preparation waits for that).
    async fn maintain_step(&self, idle: bool) -> Result<bool, WalError> {
        if self.st.borrow().closed {
            return Ok(false);
        }
        // 1. Reclaim a segment no group needs, once that fact is durable.
        let ready = {
            let mut st = self.st.borrow_mut();
            let due = st.gc_urgent || st.gc_dirty;
            if st.gc_candidate.is_none() && due {
                st.gc_dirty = false;
                st.gc_urgent = false;
                st.flushes_since_gc = 0;
                st.gc_candidate = gc_candidate(&st);
            }
            match st.gc_candidate {
                Some((seq, op)) if st.durable_op >= op => {
                    st.gc_candidate = None;
                    st.gc_urgent = true; // the next one may be free too
                    Some(seq)
                }
                _ => None,
            }
        };
        if let Some(seq) = ready {
            self.reclaim(seq).await?;
            return Ok(true);
        }
        // 1b. Groups without entries whose snapshot marker or hard state is all
        // that keeps the oldest segment alive (idle groups) are re-written
        // forward automatically: it needs no disk read. Groups with entries
        // are left to the engine (`groups_pinning_oldest`, `rewrite_groups`).
        if self.relocate_idle_groups() {
            return Ok(true);
        }
        // 2. Prepare the next segment ahead of time, while idle: zero-filling
        // must not compete with flushes for the disk. Under sustained load the
        // roll fallocates whatever is left instead.
        let idle = idle && self.st.borrow().queue.is_empty();
        if idle && self.st.borrow().spares.is_empty() {
            self.prepare_spare_step(false).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Queues a batch re-writing forward the marker, hard state and meta of
    /// groups that pin the oldest segment with those records only (no entry
    /// of theirs lives there: idle groups, and busy groups whose membership
    /// or marker was written long ago). Returns whether one was queued.
    fn relocate_idle_groups(&self) -> bool {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if !st.relocate_due || st.gc_candidate.is_some() || st.segments.len() < 3 || st.closed {
            return false;
        }
        st.relocate_due = false;
        let oldest = *st.segments.keys().next().expect("at least 3 segments");
        if !st.pins.contains_key(&oldest) {
            return false;
        }
        let limit = self.opts.frame_limit_bytes() - FRAME_HEADER_BYTES as u64;
        let mut batch = Batch::new();
        let mut bytes = 0u64;
        let mut ops = Batch::new();
        let pl = &st.index.placements;
        for (&group, g) in &st.index.groups {
            if g.min_segment(pl) != Some(oldest) {
                continue;
            }
            // Entries there need a disk read: left to the engine
            // (`groups_pinning_oldest`, `rewrite_groups`).
            if g.front_segment(pl) == Some(oldest) {
                continue;
            }
            ops.ops.clear();
            if g.marker_segment(pl) == Some(oldest) {
                ops.set_snapshot(group, g.marker);
            }
            if g.hs_segment(pl) == Some(oldest) {
                if let Some(hs) = g.hard_state {
                    ops.set_hard_state(group, hs);
                }
            }
            if g.meta_segment(pl) == Some(oldest) {
                if let Some(meta) = &g.meta {
                    ops.set_meta(group, meta.clone());
                }
            }
            let n: u64 = ops.ops.iter().map(format::record_bytes).sum();
            if bytes + n > limit {
                if batch.is_empty() {
                    tracing::warn!(
                        group,
                        bytes = n,
                        "group state too large to re-write forward"
                    );
                    continue;
                }
                st.relocate_due = true; // more next time
                break;
            }
            bytes += n;
            batch.ops.append(&mut ops.ops);
        }
        if batch.is_empty() {
            return false;
        }
        let moved = batch.len();
        match accept(st, &self.opts, batch, bytes) {
            Ok(()) => {
                tracing::debug!(
                    segment = oldest,
                    records = moved,
                    "re-writing idle groups forward"
                );
                st.stats.groups_rewritten += moved as u64;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-write idle groups");
                false
            }
        }
    }

    /// Deletes segment `seq`, or recycles it as the spare.
    async fn reclaim(&self, seq: u64) -> Result<(), WalError> {
        let (seg, recycle_as, abandoned) = {
            let mut st = self.st.borrow_mut();
            let Some(seg) = st.segments.remove(&seq) else {
                return Ok(());
            };
            // No live record is left there (it was unpinned): forget where
            // the batches written to it went.
            let oldest = st.segments.keys().next().copied().unwrap_or(st.current);
            st.index.placements.trim(oldest);
            let recycle = self.opts.recycle_segments
                && st.spares.len() < self.opts.spare_segments_max
                && seg.bytes == self.opts.segment_bytes;
            // A reclaimed segment beats a fresh one still being zero-filled
            // (that only progresses while idle, so under sustained load it
            // would block recycling for good).
            let abandoned = if recycle { st.spare_prep.take() } else { None };
            (
                seg,
                recycle.then_some(st.current + st.spares.len() as u64 + 1),
                abandoned,
            )
        };
        if let Some(prep) = abandoned {
            debug_assert_eq!(Some(prep.seg.seq), recycle_as);
            let _ = prep.seg.file.close_rc().await;
            fsutil::remove(&prep.tmp_path)
                .await
                .map_err(|e| WalError::io(&prep.tmp_path, e))?;
            tracing::debug!(
                seq = prep.seg.seq,
                "unfinished spare replaced by a recycled segment"
            );
        }
        debug_assert!(seq < self.st.borrow().current);
        match recycle_as {
            Some(new_seq) => {
                let tmp = fsutil::join(&self.dir, &format!("{}.tmp", segment_name(new_seq)));
                let path = fsutil::join(&self.dir, &segment_name(new_seq));
                fsutil::rename(&seg.path, &tmp)
                    .await
                    .map_err(|e| WalError::io(&seg.path, e))?;
                let mut b = zeroed_buffer(&seg.file, BLOCK_BYTES as usize);
                format::encode_segment_header(b.as_bytes_mut(), new_seq, seg.bytes);
                write_all(&seg.file, &tmp, b, 0).await?;
                seg.file
                    .fdatasync()
                    .await
                    .map_err(|e| WalError::io(&tmp, e))?;
                fsutil::rename(&tmp, &path)
                    .await
                    .map_err(|e| WalError::io(&tmp, e))?;
                fsutil::sync_dir(&self.dir)
                    .await
                    .map_err(|e| WalError::io(&self.dir, e))?;
                let mut st = self.st.borrow_mut();
                st.stats.fdatasyncs += 2;
                st.stats.prepare_bytes_written += BLOCK_BYTES;
                st.stats.segments_recycled += 1;
                tracing::debug!(old = seq, new = new_seq, "wal segment recycled");
                // Only the committer rolls, and it is here: the order holds.
                assert_eq!(
                    st.current + st.spares.len() as u64 + 1,
                    new_seq,
                    "segment rolled during recycling"
                );
                st.spares.push_back(SegFile {
                    seq: new_seq,
                    path,
                    file: seg.file,
                    bytes: seg.bytes,
                });
            }
            None => {
                fsutil::remove(&seg.path)
                    .await
                    .map_err(|e| WalError::io(&seg.path, e))?;
                fsutil::sync_dir(&self.dir)
                    .await
                    .map_err(|e| WalError::io(&self.dir, e))?;
                self.st.borrow_mut().stats.fdatasyncs += 1;
                self.st.borrow_mut().stats.segments_deleted += 1;
                tracing::debug!(seq, "wal segment deleted");
                let _ = seg.file.close_rc().await;
            }
        }
        Ok(())
    }

    /// Prepares the spare segment (`current + 1`) one chunk at a time; with
    /// `finish`, to the end. Created under a temporary name, zero-filled or
    /// fallocated, synced, renamed, directory synced.
    async fn prepare_spare_step(&self, finish: bool) -> Result<(), WalError> {
        let existing = self.st.borrow_mut().spare_prep.take();
        let mut prep = match existing {
            Some(p) => p,
            None => {
                let seq = self.st.borrow().current + 1;
                let tmp = fsutil::join(&self.dir, &format!("{}.tmp", segment_name(seq)));
                let path = fsutil::join(&self.dir, &segment_name(seq));
                let bytes = self.opts.segment_bytes;
                // Prepared without O_DSYNC (zero-fill chunks need no flush
                // each); reopened with the WAL's flags once it is ready.
                let file = open_rw(&tmp, true, false).await?;
                let mut b = zeroed_buffer(&file, BLOCK_BYTES as usize);
                format::encode_segment_header(b.as_bytes_mut(), seq, bytes);
                write_all(&file, &tmp, b, 0).await?;
                if !self.opts.prefill_segments {
                    file.pre_allocate(bytes, false)
                        .await
                        .map_err(|e| WalError::io(&tmp, e))?;
                }
                self.st.borrow_mut().stats.prepare_bytes_written += BLOCK_BYTES;
                SparePrep {
                    seg: SegFile {
                        seq,
                        path,
                        file: Rc::new(file),
                        bytes,
                    },
                    tmp_path: tmp,
                    filled: if self.opts.prefill_segments {
                        BLOCK_BYTES
                    } else {
                        bytes
                    },
                }
            }
        };
        loop {
            if finish && prep.filled < prep.seg.bytes {
                // A roll is waiting: do not zero-fill the rest inline.
                prep.seg
                    .file
                    .pre_allocate(prep.seg.bytes, false)
                    .await
                    .map_err(|e| WalError::io(&prep.tmp_path, e))?;
                prep.filled = prep.seg.bytes;
            }
            if prep.filled < prep.seg.bytes {
                let n = SPARE_CHUNK_BYTES.min(prep.seg.bytes - prep.filled);
                let b = zeroed_buffer(&prep.seg.file, n as usize);
                write_all(&prep.seg.file, &prep.tmp_path, b, prep.filled).await?;
                prep.filled += n;
                self.st.borrow_mut().stats.prepare_bytes_written += n;
                if !finish && prep.filled < prep.seg.bytes {
                    self.st.borrow_mut().spare_prep = Some(prep);
                    return Ok(());
                }
                continue;
            }
            break;
        }
        let seg = prep.seg;
        seg.file
            .fdatasync()
            .await
            .map_err(|e| WalError::io(&prep.tmp_path, e))?;
        fsutil::rename(&prep.tmp_path, &seg.path)
            .await
            .map_err(|e| WalError::io(&prep.tmp_path, e))?;
        fsutil::sync_dir(&self.dir)
            .await
            .map_err(|e| WalError::io(&self.dir, e))?;
        let mut seg = seg;
        if self.opts.dsync_writes {
            let file = open_rw(&seg.path, false, true).await?;
            let prep_file = std::mem::replace(&mut seg.file, Rc::new(file));
            let _ = prep_file.close_rc().await;
        }
        let mut st = self.st.borrow_mut();
        st.stats.fdatasyncs += 2;
        st.stats.segments_created += 1;
        debug_assert_eq!(seg.seq, st.current + 1);
        tracing::debug!(seq = seg.seq, "wal spare segment ready");
        debug_assert!(st.spares.is_empty());
        st.spares.push_back(seg);
        Ok(())
    }
}

/// The oldest sealed segment no group needs any more, with the op id after
/// which that is durable.
fn gc_candidate(st: &State) -> Option<(u64, u64)> {
    let (&oldest, _) = st.segments.iter().next()?;
    if oldest >= st.current {
        return None;
    }
    let pinned = st.pins.contains_key(&oldest);
    debug_assert!(
        st.pins.keys().all(|&s| s >= oldest),
        "a group pins a reclaimed segment"
    );
    debug_assert_eq!(
        pinned,
        st.index
            .groups
            .values()
            .filter_map(|g| g.min_segment(&st.index.placements))
            .any(|s| s <= oldest),
        "pin counts out of date"
    );
    (!pinned).then_some((oldest, st.next_op))
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn chain_links_order_and_fail_fast() {
        // Finished ok: the next frame may go.
        let l = Arc::new(ChainLink::default());
        LinkGuard(Some(l.clone())).finish(true);
        assert!(l.wait().is_ok());
        // Failed, or its frame's future dropped unfinished: the next frame
        // must not be written (and must not wait out the timeout).
        let l = Arc::new(ChainLink::default());
        LinkGuard(Some(l.clone())).finish(false);
        assert!(l.wait().is_err());
        let l = Arc::new(ChainLink::default());
        drop(LinkGuard(Some(l.clone())));
        let t = Instant::now();
        assert!(l.wait().is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        // Waiting on another thread is released by the finish.
        let l = Arc::new(ChainLink::default());
        let waiter = {
            let l = l.clone();
            std::thread::spawn(move || l.wait().is_ok())
        };
        l.finish(true);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn aligned_buffers_are_block_aligned() {
        let mut b = AlignedBuf::new(3 * BLOCK_BYTES as usize);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK_BYTES as usize, 0);
        assert!(b.capacity() >= 3 * BLOCK_BYTES as usize);
        b.len = BLOCK_BYTES as usize;
        assert_eq!(b.as_mut_slice().len(), BLOCK_BYTES as usize);
    }

    #[test]
    fn latencies_land_in_their_buckets() {
        let mut h = LatencyHistogram::default();
        h.record(0);
        h.record(100);
        h.record(101);
        h.record(2_000_000);
        assert_eq!(h.buckets[0], 2, "<= 100 µs");
        assert_eq!(h.buckets[1], 1, "(100, 250] µs");
        assert_eq!(
            h.buckets[FLUSH_LATENCY_BOUNDS_US.len()],
            1,
            "slower than every bound"
        );
        assert_eq!((h.count, h.sum_us), (4, 2_000_201));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some((42, false)));
        assert_eq!(
            parse_segment_name("00000000000000000042.wal.tmp"),
            Some((42, true))
        );
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
    }
}
