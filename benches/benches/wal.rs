//! WAL benchmark: the per-shard WAL against the raw device measured the same
//! way, for batches of 1, 16, 256 and 4096 entries with 16 B, 128 B and
//! 1 KiB payloads spread over 1, 100 and 10,000 groups.
//!
//! The WAL runs in both of its durability modes, each against the raw
//! baseline that does the same thing without any WAL logic (same aligned
//! write size, queue depth 1, into an already-written file):
//!
//! | WAL mode                                  | raw baseline                              |
//! |-------------------------------------------|-------------------------------------------|
//! | `dsync_writes: true` (default): segments  | `DmaFile` opened `O_DSYNC`: one `write_at`|
//! | opened `O_DSYNC`, one write per frame     | per op, no fdatasync                      |
//! | `dsync_writes: false`: write + fdatasync  | `DmaFile` `write_at` + `fdatasync`        |
//!
//! The default WAL is also reported against the write + fdatasync baseline
//! (the one issue #3's targets name), so the tables show what `O_DSYNC`
//! buys. Within each cell, the six runs (two WALs × latency/throughput, two
//! raws) are interleaved, and the second round runs them in reverse order,
//! so that machine noise and drift hit every column alike.
//!
//! Also: 4 KiB write cost into fallocated vs already-written blocks and with
//! `O_DSYNC` (why segments are prefilled and recycled), group commit with 8
//! concurrent writers in both modes, and recovery scan speed.
//!
//! Run: `cargo bench -p flotilla-benches --bench wal`. Environment:
//! `FLOTILLA_BENCH_MS` time per cell and mode (default 300; 100 is a quick
//! run), `FLOTILLA_BENCH_CELLS=4096x1024x1,...` only those cells,
//! `FLOTILLA_BENCH_DEPTH` batches in flight in the throughput runs (default
//! 2), `FLOTILLA_BENCH_RECOVERY_READ` recovery window bytes,
//! `FLOTILLA_BENCH_DIR` where the files go (default /tmp).

use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_storage::{Batch, Entry, SnapshotMarker, Wal, WalOptions};
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

const BLOCK: u64 = 4096;
const RAW_FILE_BYTES: u64 = 256 << 20;

/// Index of the default (`O_DSYNC`) WAL and its raw baseline in the arrays below.
const DSYNC: usize = 0;
/// Index of the write + fdatasync WAL and its raw baseline.
const FSYNC: usize = 1;

fn cell_time() -> Duration {
    let ms = std::env::var("FLOTILLA_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_millis(ms)
}

/// Batches in flight in the throughput runs (`FLOTILLA_BENCH_DEPTH`, default 2).
fn thr_depth() -> usize {
    std::env::var("FLOTILLA_BENCH_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&d: &usize| d >= 2)
        .unwrap_or(2)
}

/// `FLOTILLA_BENCH_CELLS=4096x1024x1,1x16x100` runs only those cells
/// (entries x payload x groups); default: all.
fn cell_selected(entries: usize, payload: usize, groups: usize) -> bool {
    match std::env::var("FLOTILLA_BENCH_CELLS") {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .any(|c| c.trim() == format!("{entries}x{payload}x{groups}")),
        _ => true,
    }
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (a
/// procfs read: instant, it never waits for a device).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// The 1-minute load average, to print next to the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `min–max (median m)` of a list of ratios.
fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    let m = median(&mut s);
    match (s.first(), s.last()) {
        (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2} (median {m:.2}, {} cells)", s.len()),
        _ => "no cells".into(),
    }
}

struct Sample {
    /// CPU time of the executor thread during the run.
    cpu: Duration,
    /// Of `cpu`, the time the bench spent building its batches (throughput
    /// runs only; 0 in latency runs, which do not measure it).
    build: Duration,
    /// Time the device spent on this run's writes (+ fdatasyncs).
    busy: Duration,
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Sample {
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// Share of the wall time the device was busy with this run's I/O.
    fn busy_pct(&self) -> f64 {
        100.0 * self.busy.as_secs_f64() / self.elapsed.as_secs_f64()
    }
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
    fn build_us_per_op(&self) -> f64 {
        self.build.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// A raw baseline file and how it makes each write durable.
struct RawFile {
    file: DmaFile,
    /// Opened `O_DSYNC`: every write is durable when it returns; no fdatasync.
    dsync: bool,
    /// Where the next sequential write goes (wraps at `RAW_FILE_BYTES`).
    pos: u64,
}

/// A raw file of `RAW_FILE_BYTES`, fallocated, and zero-filled once if
/// `prefill` (the state of the WAL's prefilled and recycled segments).
async fn raw_file(path: &Path, prefill: bool, dsync: bool) -> RawFile {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
        .dma_open(path)
        .await
        .unwrap();
    file.pre_allocate(RAW_FILE_BYTES, false).await.unwrap();
    if prefill {
        let chunk = 4 << 20;
        let mut pos = 0;
        while pos < RAW_FILE_BYTES {
            let mut b = file.alloc_dma_buffer(chunk);
            b.as_bytes_mut().fill(0);
            file.write_at(b, pos).await.unwrap();
            pos += chunk as u64;
        }
        file.fdatasync().await.unwrap();
    }
    RawFile {
        file,
        dsync,
        pos: 0,
    }
}

/// Sequential aligned writes of `size` bytes at queue depth 1, each made
/// durable before the next: followed by fdatasync, or alone on an `O_DSYNC`
/// file.
async fn raw_run(raw: &mut RawFile, size: u64, dur: Duration) -> Sample {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut busy = Duration::ZERO;
    let mut ops = 0;
    while start.elapsed() < dur || ops < 3 {
        if raw.pos + size > RAW_FILE_BYTES {
            raw.pos = 0;
        }
        let mut b = raw.file.alloc_dma_buffer(size as usize);
        b.as_bytes_mut()[..64].fill(ops as u8);
        let t = Instant::now();
        let n = raw.file.write_at(b, raw.pos).await.unwrap();
        assert_eq!(n as u64, size, "short raw write");
        if !raw.dsync {
            raw.file.fdatasync().await.unwrap();
        }
        busy += t.elapsed();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        raw.pos += size;
        ops += 1;
    }
    Sample {
        cpu: thread_cpu() - cpu0,
        build: Duration::ZERO,
        busy,
        ops,
        bytes: ops * size,
        elapsed: start.elapsed(),
        hist,
    }
}

struct Load {
    /// Group ids are `base + 1 ..= base + next_index.len()`.
    base: u64,
    next_index: Vec<u64>,
    cursor: usize,
    payload: Bytes,
}

impl Load {
    fn batch(&mut self, entries: usize) -> Batch {
        // One append per group: at most `entries` operations.
        let ops = entries.min(self.next_index.len());
        self.batch_into(Batch::with_capacity(ops), entries)
    }

    /// Adds `entries` appends to `b`.
    fn batch_into(&mut self, mut b: Batch, entries: usize) -> Batch {
        let groups = self.next_index.len();
        let mut left = entries;
        while left > 0 {
            let g = self.cursor % groups;
            // Spread: with fewer groups than entries, each group gets a run.
            let run = entries.div_ceil(groups.min(entries)).min(left);
            let first = self.next_index[g];
            let es = (0..run as u64)
                .map(|k| Entry {
                    index: first + k,
                    term: 1,
                    kind: 0,
                    payload: self.payload.clone(),
                })
                .collect();
            b.append(self.base + g as u64 + 1, es);
            self.next_index[g] += run as u64;
            self.cursor += 1;
            left -= run;
        }
        b
    }

    /// Snapshot markers compacting every group up to its last entry.
    fn compaction(&self) -> Batch {
        let mut b = Batch::new();
        for (g, &next) in self.next_index.iter().enumerate() {
            if next > 1 {
                b.set_snapshot(
                    self.base + g as u64 + 1,
                    SnapshotMarker {
                        index: next - 1,
                        term: 1,
                    },
                );
            }
        }
        b
    }
}

/// The bench's WAL: 64 MiB segments; `dsync` selects the durability mode
/// (`true` is the default: segments opened `O_DSYNC`).
fn wal_options(dsync: bool) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 20,
        frame_bytes_max: 8 << 20,
        pending_bytes_max: 64 << 20,
        cache_bytes_max: 32 << 20,
        dsync_writes: dsync,
        ..WalOptions::default()
    }
}

/// One writer with up to `depth` batches in flight: with 1, latency per
/// batch; with 2, the writer builds (and submits) the next batch while the
/// previous one is being flushed, as the engine's shard loop does. Returns
/// the sample, the average frame and the number of frames.
///
/// Every 48 MiB the next batch also carries snapshot markers compacting
/// every group (as an engine that snapshots regularly piggybacks them on its
/// next write), so old segments are reclaimed and recycled: the WAL runs in
/// steady state and the pipeline is never drained for it.
async fn wal_run(
    wal: &Rc<Wal>,
    load: &mut Load,
    entries: usize,
    depth: usize,
    dur: Duration,
) -> (Sample, u64, u64) {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let before = wal.stats();
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut ops = 0;
    let mut build = Duration::ZERO;
    let mut compact_at = before.bytes_written + (48 << 20);
    let mut inflight: VecDeque<(Instant, glommio::Task<()>)> = VecDeque::new();
    let mut next_batch = |load: &mut Load| {
        let stats = wal.stats();
        if stats.bytes_written >= compact_at {
            compact_at = stats.bytes_written + (48 << 20);
            load.batch_into(load.compaction(), entries)
        } else {
            load.batch(entries)
        }
    };
    loop {
        let running = start.elapsed() < dur || ops < 3;
        if depth == 1 {
            if !running {
                break;
            }
            // No task hop: the caller awaits its write directly.
            let b = next_batch(load);
            let t = Instant::now();
            wal.write(b).await.unwrap();
            hist.record(t.elapsed().as_nanos() as u64).unwrap();
            ops += 1;
            continue;
        }
        while running && inflight.len() < depth {
            let t0 = flotilla_benches::thread_cpu_time();
            let b = next_batch(load);
            build += flotilla_benches::thread_cpu_time() - t0;
            let w = wal.clone();
            let t = Instant::now();
            inflight.push_back((
                t,
                glommio::spawn_local(async move { w.write(b).await.unwrap() }),
            ));
        }
        let Some((t, task)) = inflight.pop_front() else {
            break;
        };
        task.await;
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        ops += 1;
    }
    let elapsed = start.elapsed();
    let after = wal.stats();
    let bytes = after.bytes_written - before.bytes_written;
    let flushes = (after.flushes - before.flushes).max(1);
    let frame = (bytes / flushes).div_ceil(BLOCK).max(1) * BLOCK;
    (
        Sample {
            cpu: thread_cpu() - cpu0,
            build,
            busy: after.flush_io_time - before.flush_io_time,
            ops,
            bytes,
            elapsed,
            hist,
        },
        frame,
        flushes,
    )
}

/// Adds `s` into `acc`.
fn merge(acc: &mut Option<Sample>, s: Sample) {
    match acc {
        None => *acc = Some(s),
        Some(a) => {
            a.cpu += s.cpu;
            a.build += s.build;
            a.busy += s.busy;
            a.ops += s.ops;
            a.bytes += s.bytes;
            a.elapsed += s.elapsed;
            a.hist.add(&s.hist).unwrap();
        }
    }
}

/// Writes and compacts enough to cycle through every segment the cells will
/// use, so that the measured cells run in steady state (recycled segments,
/// as a long-running shard does) rather than on fresh fallocated files.
async fn warm_up(wal: &Rc<Wal>) {
    let mut load = Load {
        base: 900_000_000,
        next_index: vec![1; 1],
        cursor: 0,
        payload: Bytes::from(vec![9u8; 1024]),
    };
    let target = wal.stats().bytes_written + 6 * wal_options(true).segment_bytes;
    while wal.stats().bytes_written < target {
        wal.write(load.batch(4096)).await.unwrap();
        wal.write(load.compaction()).await.unwrap();
    }
    // Let the spare segments be recycled.
    for _ in 0..50 {
        wal.write(Batch::new()).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// One run of a cell. A cell runs these in this order, then again in
/// reverse, so that drift during the cell hits every column alike.
#[derive(Clone, Copy)]
enum Step {
    /// WAL `i` with one batch in flight.
    Latency(usize),
    /// Raw baseline `i` writing the cell's frame size.
    Raw(usize),
    /// WAL `i` with `thr_depth()` batches in flight.
    Throughput(usize),
}

const STEPS: [Step; 6] = [
    Step::Latency(DSYNC),
    Step::Raw(DSYNC),
    Step::Latency(FSYNC),
    Step::Raw(FSYNC),
    Step::Throughput(DSYNC),
    Step::Throughput(FSYNC),
];

/// What one cell measured; arrays are indexed by `DSYNC` / `FSYNC` (the
/// WAL in that mode, or the raw baseline that matches it).
struct Cell {
    entries: usize,
    payload: usize,
    groups: usize,
    /// Average frame of the default WAL's latency run (the raw write size).
    frame: u64,
    wal_p50_us: [f64; 2],
    wal_p99_us: [f64; 2],
    raw_p50_us: [f64; 2],
    raw_mbps: [f64; 2],
    raw_cpu_us: [f64; 2],
    entries_per_s: [f64; 2],
    payload_mbps: [f64; 2],
    disk_mbps: [f64; 2],
    frames_per_s: [f64; 2],
    cpu_us_per_batch: [f64; 2],
    /// Of `cpu_us_per_batch`, the bench building the batch.
    build_us_per_batch: [f64; 2],
    busy_pct: [f64; 2],
}

impl Cell {
    fn name(&self) -> String {
        format!("{}x{}x{}", self.entries, self.payload, self.groups)
    }

    fn latency_row(&self) -> String {
        let (d, f) = (DSYNC, FSYNC);
        format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.entries,
            self.payload,
            self.groups,
            self.frame / 1024,
            self.wal_p50_us[d],
            self.wal_p99_us[d],
            self.raw_p50_us[d],
            self.wal_p50_us[f],
            self.wal_p99_us[f],
            self.raw_p50_us[f],
            self.wal_p50_us[d] / self.raw_p50_us[d],
            self.wal_p50_us[d] / self.raw_p50_us[f],
            self.wal_p50_us[f] / self.raw_p50_us[f],
            self.wal_p50_us[f] / self.wal_p50_us[d],
        )
    }

    fn throughput_row(&self) -> String {
        let (d, f) = (DSYNC, FSYNC);
        format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {:.0} / {:.0} |",
            self.entries,
            self.payload,
            self.groups,
            self.entries_per_s[d],
            self.payload_mbps[d],
            self.disk_mbps[d],
            self.frames_per_s[d],
            self.entries_per_s[f],
            self.disk_mbps[f],
            self.frames_per_s[f],
            self.raw_mbps[d],
            self.raw_mbps[f],
            self.disk_mbps[d] / self.raw_mbps[d],
            self.disk_mbps[d] / self.raw_mbps[f],
            self.disk_mbps[f] / self.raw_mbps[f],
            self.entries_per_s[d] / self.entries_per_s[f],
            self.cpu_us_per_batch[d],
            self.cpu_us_per_batch[f],
            self.raw_cpu_us[d],
            self.raw_cpu_us[f],
            self.busy_pct[d],
            self.busy_pct[f],
            self.build_us_per_batch[d],
            self.build_us_per_batch[f],
        )
    }
}

/// One accumulated sample per mode (`DSYNC`, `FSYNC`).
type PerMode = [Option<Sample>; 2];

/// Runs one cell: two rounds of `STEPS` (the second reversed), each run
/// `dur / 2` long.
async fn run_cell(
    wals: &[Rc<Wal>; 2],
    loads: &mut [Load; 2],
    raws: &mut [RawFile; 2],
    (entries, payload, groups): (usize, usize, usize),
    dur: Duration,
) -> Cell {
    let (mut lat, mut thr, mut raw): (PerMode, PerMode, PerMode) = Default::default();
    let mut frame = None;
    let mut thr_flushes = [0u64; 2];
    for round in 0..2 {
        let order: Vec<Step> = if round == 0 {
            STEPS.to_vec()
        } else {
            STEPS.iter().rev().copied().collect()
        };
        for step in order {
            match step {
                Step::Latency(i) => {
                    let (s, f, _) = wal_run(&wals[i], &mut loads[i], entries, 1, dur / 2).await;
                    if i == DSYNC && frame.is_none() {
                        frame = Some(f);
                    }
                    merge(&mut lat[i], s);
                }
                Step::Raw(i) => {
                    let size = frame.expect("the default WAL's latency run comes first");
                    merge(&mut raw[i], raw_run(&mut raws[i], size, dur / 2).await);
                }
                Step::Throughput(i) => {
                    let (s, _, fl) =
                        wal_run(&wals[i], &mut loads[i], entries, thr_depth(), dur / 2).await;
                    thr_flushes[i] += fl;
                    merge(&mut thr[i], s);
                }
            }
        }
    }
    // Compact what the cell left so its segments can be reclaimed.
    for (wal, load) in wals.iter().zip(loads.iter()) {
        let c = load.compaction();
        if !c.is_empty() {
            wal.write(c).await.unwrap();
        }
    }
    let [lat, thr, raw] = [lat, thr, raw].map(|a| a.map(|s| s.expect("two rounds ran")));
    let per = |f: &dyn Fn(usize) -> f64| [f(DSYNC), f(FSYNC)];
    Cell {
        entries,
        payload,
        groups,
        frame: frame.unwrap_or(BLOCK),
        wal_p50_us: per(&|i| lat[i].p(0.5)),
        wal_p99_us: per(&|i| lat[i].p(0.99)),
        raw_p50_us: per(&|i| raw[i].p(0.5)),
        raw_mbps: per(&|i| raw[i].per_sec(raw[i].bytes) / 1e6),
        raw_cpu_us: per(&|i| raw[i].cpu_us_per_op()),
        entries_per_s: per(&|i| thr[i].per_sec(thr[i].ops * entries as u64)),
        payload_mbps: per(&|i| thr[i].per_sec(thr[i].ops * (entries * payload) as u64) / 1e6),
        disk_mbps: per(&|i| thr[i].per_sec(thr[i].bytes) / 1e6),
        frames_per_s: per(&|i| thr[i].per_sec(thr_flushes[i])),
        cpu_us_per_batch: per(&|i| thr[i].cpu_us_per_op()),
        build_us_per_batch: per(&|i| thr[i].build_us_per_op()),
        busy_pct: per(&|i| thr[i].busy_pct()),
    }
}

/// 8 concurrent writers, 16 entries x 128 B each over their own 100 groups
/// (`base + w * 100 ..`), for `dur`. Returns (batches, frames, seconds).
async fn group_commit(wal: &Rc<Wal>, base: u64, dur: Duration) -> (u64, u64, f64) {
    let before = wal.stats();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let wal = wal.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut load = Load {
                base: base + w * 100,
                next_index: vec![1; 100],
                cursor: 0,
                payload: Bytes::from(vec![1u8; 128]),
            };
            let mut n = 0u64;
            while start.elapsed() < dur {
                let g = load.cursor % 100;
                let first = load.next_index[g];
                let es = (0..16)
                    .map(|k| Entry {
                        index: first + k,
                        term: 1,
                        kind: 0,
                        payload: load.payload.clone(),
                    })
                    .collect();
                let mut b = Batch::new();
                b.append(load.base + g as u64, es);
                load.next_index[g] += 16;
                load.cursor += 1;
                wal.write(b).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut batches = 0;
    for t in tasks {
        batches += t.await;
    }
    let frames = wal.stats().flushes - before.flushes;
    (batches, frames, start.elapsed().as_secs_f64())
}

fn print_summary(cells: &[Cell], recovery_mbps: &[f64]) {
    let (d, f) = (DSYNC, FSYNC);
    let ratios = |sel: &dyn Fn(&Cell) -> bool, r: &dyn Fn(&Cell) -> f64| -> Vec<f64> {
        cells.iter().filter(|c| sel(c)).map(r).collect()
    };
    let count = |v: &[f64], ok: &dyn Fn(f64) -> bool| v.iter().filter(|&&x| ok(x)).count();
    println!("\n## Issue #3 targets in this run\n");
    let one = |c: &Cell| c.entries == 1;
    for (label, v) in [
        (
            "default (O_DSYNC) WAL / raw O_DSYNC write",
            ratios(&one, &|c| c.wal_p50_us[d] / c.raw_p50_us[d]),
        ),
        (
            "default (O_DSYNC) WAL / raw 4 KiB write + fdatasync",
            ratios(&one, &|c| c.wal_p50_us[d] / c.raw_p50_us[f]),
        ),
        (
            "fdatasync WAL / raw 4 KiB write + fdatasync",
            ratios(&one, &|c| c.wal_p50_us[f] / c.raw_p50_us[f]),
        ),
    ] {
        println!(
            "- 1-entry batch p50, {label}: {} of {} cells <= 1.3; {}",
            count(&v, &|x| x <= 1.3),
            v.len(),
            spread(&v)
        );
    }
    let large = |c: &Cell| c.entries == 4096;
    for (label, v) in [
        (
            "default WAL / raw O_DSYNC",
            ratios(&large, &|c| c.disk_mbps[d] / c.raw_mbps[d]),
        ),
        (
            "default WAL / raw write + fdatasync",
            ratios(&large, &|c| c.disk_mbps[d] / c.raw_mbps[f]),
        ),
        (
            "fdatasync WAL / raw write + fdatasync",
            ratios(&large, &|c| c.disk_mbps[f] / c.raw_mbps[f]),
        ),
    ] {
        println!(
            "- 4096-entry batches, disk MB/s {label}: {} of {} cells >= 0.85; {}",
            count(&v, &|x| x >= 0.85),
            v.len(),
            spread(&v)
        );
    }
    for (label, i) in [("default WAL", d), ("fdatasync WAL", f)] {
        let v = ratios(&large, &|c| c.busy_pct[i] / 100.0);
        println!(
            "- 4096-entry batches, device busy share of the {label} (raw: ~1.00): {} of {} cells >= 0.85; {}",
            count(&v, &|x| x >= 0.85),
            v.len(),
            spread(&v)
        );
    }
    let mut r = recovery_mbps.to_vec();
    println!(
        "- recovery read MB/s: {} of {} reopens >= 500; min {:.0}, median {:.0}",
        count(&r, &|x| x >= 500.0),
        r.len(),
        r.iter().copied().fold(f64::INFINITY, f64::min),
        median(&mut r)
    );
    println!("\n## What O_DSYNC buys in this run (all cells)\n");
    let all = |_: &Cell| true;
    println!(
        "- raw: p50 write + fdatasync / O_DSYNC write: {}",
        spread(&ratios(&all, &|c| c.raw_p50_us[f] / c.raw_p50_us[d]))
    );
    println!(
        "- WAL: p50 fdatasync mode / O_DSYNC mode (one batch in flight): {}",
        spread(&ratios(&all, &|c| c.wal_p50_us[f] / c.wal_p50_us[d]))
    );
    println!(
        "- WAL: entries/s O_DSYNC mode / fdatasync mode (pipelined): {}",
        spread(&ratios(&all, &|c| c.entries_per_s[d] / c.entries_per_s[f]))
    );
    println!(
        "- WAL: executor CPU us/batch O_DSYNC mode / fdatasync mode: {}",
        spread(&ratios(&all, &|c| c.cpu_us_per_batch[d] / c.cpu_us_per_batch[f]))
    );
}

fn main() {
    let dir =
        tempfile::tempdir_in(std::env::var("FLOTILLA_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .unwrap();
    let root = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .preempt_timer(Duration::from_millis(2))
        .spawn(move || async move {
            // Bug 2 workaround: keep a reserve of timers armed (one due
            // every 5 ms, 8 registered ahead), as the storage tests do. With
            // a single 10 ms ticker one run in ~30 slept in io_uring_enter
            // with no timer firing (the watchdog below could not fire
            // either) until a signal interrupted the wait.
            // The engine's guard; never stopped (the executor ends with the run).
            let _ticker = glommio::spawn_local(flotilla::shard::keep_timers_armed(
                Duration::from_millis(5),
                8,
                std::rc::Rc::new(std::cell::Cell::new(false)),
            ))
            .detach();
            let dur = cell_time();
            println!("load average at start: {}\n", load_average());
            // The default WAL is opened first: its manifest is this
            // executor's first DMA file (bug 1).
            let (wal_d, _) = Wal::open(root.join("wal-dsync"), wal_options(true)).await.unwrap();
            let (wal_f, _) = Wal::open(root.join("wal-fdatasync"), wal_options(false)).await.unwrap();
            glommio::timer::sleep(Duration::from_millis(5)).await;

            println!("## A 4 KiB write made durable: fallocated vs already-written blocks, fdatasync vs O_DSYNC\n");
            // Interleaved rounds so that machine noise hits all alike.
            let mut fresh = raw_file(&root.join("raw-fallocated"), false, false).await;
            let raw_f = raw_file(&root.join("raw-prefilled"), true, false).await;
            let raw_d = raw_file(&root.join("raw-prefilled-dsync"), true, true).await;
            let mut raws = [raw_d, raw_f];
            let mut acc: [Option<Sample>; 3] = Default::default();
            for _ in 0..4 {
                merge(&mut acc[0], raw_run(&mut fresh, BLOCK, dur / 4).await);
                merge(&mut acc[1], raw_run(&mut raws[FSYNC], BLOCK, dur / 4).await);
                merge(&mut acc[2], raw_run(&mut raws[DSYNC], BLOCK, dur / 4).await);
            }
            fresh.file.close().await.unwrap();
            println!("| blocks | durability | p50 us | p99 us | writes/s |\n|---|---|---|---|---|");
            for (s, label) in acc.iter().flatten().zip([
                "fallocated, never written | write + fdatasync",
                "written once (prefilled / recycled) | write + fdatasync",
                "written once (prefilled / recycled) | O_DSYNC write",
            ]) {
                println!("| {label} | {:.0} | {:.0} | {:.0} |", s.p(0.5), s.p(0.99), s.per_sec(s.ops));
            }
            println!();

            let wals = [Rc::new(wal_d), Rc::new(wal_f)];
            // Watchdog: names the phase and exits if neither WAL flushes.
            let phase = Rc::new(std::cell::RefCell::new(String::from("warm-up")));
            {
                let weak = [Rc::downgrade(&wals[0]), Rc::downgrade(&wals[1])];
                let phase = phase.clone();
                glommio::spawn_local(async move {
                    let mut last = (0, Instant::now());
                    loop {
                        let stats: Vec<_> = weak.iter().filter_map(|w| w.upgrade()).map(|w| w.stats()).collect();
                        if stats.is_empty() {
                            break;
                        }
                        let flushes: u64 = stats.iter().map(|s| s.flushes).sum();
                        if flushes != last.0 {
                            last = (flushes, Instant::now());
                        } else if last.1.elapsed() > Duration::from_secs(20) {
                            eprintln!("watchdog: no flush for 20 s in {}: {stats:?}", phase.borrow());
                            std::process::exit(2);
                        }
                        glommio::timer::sleep(Duration::from_millis(500)).await;
                    }
                })
                .detach();
            }
            for wal in &wals {
                warm_up(wal).await;
            }
            println!("load average after warm-up: {}\n", load_average());
            println!("## WAL vs raw device\n");
            println!("Two WALs: the default one (segments opened O_DSYNC: one write per frame) and one with");
            println!("`dsync_writes: false` (write + fdatasync per frame). Two raw baselines, each a DmaFile");
            println!("write_at of the default WAL's average frame size (4 KiB-aligned), queue depth 1, into an");
            println!("already-written file: through an O_DSYNC descriptor, or followed by fdatasync. Within each");
            println!("cell the six runs are interleaved (and reversed in the second round).");
            println!("Latency: one writer, one batch in flight. Throughput: one writer, {} batches in flight", thr_depth());
            println!("(it builds the next batch while the previous one is flushed, as the shard loop does).");
            println!("CPU = CPU time of the executor thread per batch in the throughput run (building the batch");
            println!("included, and shown apart in the last column; the WAL's I/O thread not) and per raw write. device busy = share of the wall time");
            println!("with one of the WAL's frame writes (+ fdatasyncs) in flight (raw: ~100 % by construction).\n");
            let mut cells = Vec::new();
            let mut cell_no = 0u64;
            for &groups in &[1usize, 100, 10_000] {
                for &payload in &[16usize, 128, 1024] {
                    cell_no += 1;
                    let load = || Load {
                        base: cell_no * 100_000,
                        next_index: vec![1; groups],
                        cursor: 0,
                        payload: Bytes::from(vec![7u8; payload]),
                    };
                    let mut loads = [load(), load()];
                    for &entries in &[1usize, 16, 256, 4096] {
                        if !cell_selected(entries, payload, groups) {
                            continue;
                        }
                        *phase.borrow_mut() = format!("cell {entries}x{payload}x{groups}");
                        let cell = run_cell(&wals, &mut loads, &mut raws, (entries, payload, groups), dur).await;
                        let (sd, sf) = (wals[DSYNC].stats(), wals[FSYNC].stats());
                        eprintln!(
                            "cell {}: p50 us WAL dsync {:.0} raw dsync {:.0} WAL fdatasync {:.0} raw fdatasync {:.0}; segments (dsync/fdatasync) live {}/{} created {}/{} recycled {}/{} deleted {}/{}; pipelined frames {}/{}; load {}",
                            cell.name(), cell.wal_p50_us[DSYNC], cell.raw_p50_us[DSYNC], cell.wal_p50_us[FSYNC], cell.raw_p50_us[FSYNC],
                            sd.segments, sf.segments, sd.segments_created, sf.segments_created, sd.segments_recycled, sf.segments_recycled,
                            sd.segments_deleted, sf.segments_deleted, sd.pipelined_frames, sf.pipelined_frames, load_average()
                        );
                        cells.push(cell);
                    }
                }
            }
            println!("### Latency (one batch in flight), p50 / p99 us\n");
            println!("| entries/batch | payload B | groups | frame KiB | WAL O_DSYNC p50 | WAL O_DSYNC p99 | raw O_DSYNC p50 | WAL fdatasync p50 | WAL fdatasync p99 | raw write+fdatasync p50 | p50 WAL O_DSYNC / raw O_DSYNC | p50 WAL O_DSYNC / raw write+fdatasync | p50 WAL fdatasync / raw write+fdatasync | p50 WAL fdatasync / WAL O_DSYNC |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for c in &cells {
                println!("{}", c.latency_row());
            }
            println!("\n### Throughput ({} batches in flight)\n", thr_depth());
            println!("| entries/batch | payload B | groups | WAL O_DSYNC entries/s | WAL O_DSYNC payload MB/s | WAL O_DSYNC disk MB/s | WAL O_DSYNC frames/s | WAL fdatasync entries/s | WAL fdatasync disk MB/s | WAL fdatasync frames/s | raw O_DSYNC MB/s | raw write+fdatasync MB/s | disk MB/s WAL O_DSYNC / raw O_DSYNC | WAL O_DSYNC / raw write+fdatasync | WAL fdatasync / raw write+fdatasync | entries/s WAL O_DSYNC / WAL fdatasync | WAL O_DSYNC CPU us/batch | WAL fdatasync CPU us/batch | raw CPU us/write O_DSYNC / fdatasync | WAL O_DSYNC device busy % | WAL fdatasync device busy % | of the CPU us/batch: the bench building the batch, O_DSYNC / fdatasync |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for c in &cells {
                println!("{}", c.throughput_row());
            }
            println!("\nload average after the cells: {}", load_average());

            *phase.borrow_mut() = "group commit".into();
            println!("\n## Group commit: 8 concurrent writers, 16 entries x 128 B each, 100 groups each\n");
            {
                let mut acc = [(0u64, 0u64, 0f64); 2];
                for round in 0..2u64 {
                    for i in [DSYNC, FSYNC] {
                        let (b, fr, s) = group_commit(&wals[i], 10_000_000 + round * 10_000, dur / 2).await;
                        acc[i].0 += b;
                        acc[i].1 += fr;
                        acc[i].2 += s;
                    }
                }
                println!("| WAL | batches/s | entries/s | frames/s | batches per frame |\n|---|---|---|---|---|");
                for (label, (b, fr, s)) in ["O_DSYNC (default)", "write + fdatasync"].iter().zip(acc) {
                    println!(
                        "| {label} | {:.0} | {:.0} | {:.0} | {:.1} |",
                        b as f64 / s,
                        (b * 16) as f64 / s,
                        fr as f64 / s,
                        b as f64 / fr.max(1) as f64
                    );
                }
                println!();
                for (label, wal) in ["O_DSYNC", "fdatasync"].iter().zip(&wals) {
                    let s = wal.stats();
                    println!(
                        "WAL {label} totals: {} flushes ({} pipelined), {} MB written, {} segments live, {} created, {} recycled, {} deleted",
                        s.flushes, s.pipelined_frames, s.bytes_written >> 20, s.segments, s.segments_created, s.segments_recycled, s.segments_deleted
                    );
                }
                *phase.borrow_mut() = "close".into();
                for wal in &wals {
                    wal.close().await.unwrap();
                }
            }
            for raw in raws {
                raw.file.close().await.unwrap();
            }

            *phase.borrow_mut() = "recovery".into();
            println!("\n## Recovery scan\n");
            // A WAL (default options) of ~128 MiB of 1 KiB entries over 100
            // groups, never compacted.
            let rdir = root.join("recovery");
            {
                let (wal, _) = Wal::open(&rdir, wal_options(true)).await.unwrap();
                let mut load = Load { base: 0, next_index: vec![1; 100], cursor: 0, payload: Bytes::from(vec![3u8; 1024]) };
                while wal.stats().bytes_written < (128 << 20) {
                    wal.write(load.batch(4096)).await.unwrap();
                }
                wal.close().await.unwrap();
            }
            // Three reopens: recovery reads every segment (the tail's and the
            // spares' free space included: only a scan proves it holds no
            // frame), checks every CRC and rebuilds the index.
            println!("| run | bytes read MiB | log (frames) MiB | time ms | read MB/s | log MB/s | groups | entries |");
            println!("|---|---|---|---|---|---|---|---|");
            let mut recovery_mbps = Vec::new();
            for run in 1..=3 {
                let mut o = wal_options(true);
                if let Some(b) = std::env::var("FLOTILLA_BENCH_RECOVERY_READ").ok().and_then(|v| v.parse().ok()) {
                    o.recovery_read_bytes = b;
                }
                let (wal, rec) = Wal::open(&rdir, o).await.unwrap();
                let secs = rec.duration.as_secs_f64();
                let entries: u64 = rec.groups.iter().map(|g| g.last_index + 1 - g.first_index).sum();
                let read_mbps = rec.bytes_scanned as f64 / secs / 1e6;
                recovery_mbps.push(read_mbps);
                println!(
                    "| {run} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {} |",
                    rec.bytes_scanned >> 20,
                    rec.frame_bytes >> 20,
                    secs * 1e3,
                    read_mbps,
                    rec.frame_bytes as f64 / secs / 1e6,
                    rec.groups.len(),
                    entries
                );
                wal.close().await.unwrap();
            }
            print_summary(&cells, &recovery_mbps);
            println!("\nload average at the end: {}", load_average());
        })
        .unwrap()
        .join()
        .unwrap();
}
