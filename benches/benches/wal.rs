//! WAL benchmark: the per-shard WAL against the raw device measured the same
//! way (a DmaFile write of the same aligned size followed by fdatasync, no WAL
//! logic), for batches of 1, 16, 256 and 4096 entries with 16 B, 128 B and
//! 1 KiB payloads spread over 1, 100 and 10,000 groups. Also: fdatasync cost
//! of fallocated vs already-written blocks (why segments are prefilled and
//! recycled), pipelined group commit, and recovery scan speed.
//!
//! Run: `cargo bench -p flotilla-benches --bench wal` (FLOTILLA_BENCH_MS sets
//! the time per cell, default 300).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_storage::{Batch, Entry, SnapshotMarker, Wal, WalOptions};
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

const BLOCK: u64 = 4096;
const RAW_FILE_BYTES: u64 = 256 << 20;

fn cell_time() -> Duration {
    let ms = std::env::var("FLOTILLA_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_millis(ms)
}

struct Sample {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Sample {
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

async fn raw_file(path: &Path, prefill: bool) -> DmaFile {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .unwrap();
    f.pre_allocate(RAW_FILE_BYTES, false).await.unwrap();
    if prefill {
        let chunk = 4 << 20;
        let mut pos = 0;
        while pos < RAW_FILE_BYTES {
            let mut b = f.alloc_dma_buffer(chunk);
            b.as_bytes_mut().fill(0);
            f.write_at(b, pos).await.unwrap();
            pos += chunk as u64;
        }
        f.fdatasync().await.unwrap();
    }
    f
}

/// Sequential aligned writes of `size` bytes, each followed by fdatasync.
async fn raw_run(f: &DmaFile, size: u64, dur: Duration, pos: &mut u64) -> Sample {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < dur || ops < 3 {
        if *pos + size > RAW_FILE_BYTES {
            *pos = 0;
        }
        let mut b = f.alloc_dma_buffer(size as usize);
        b.as_bytes_mut()[..64].fill(ops as u8);
        let t = Instant::now();
        f.write_at(b, *pos).await.unwrap();
        f.fdatasync().await.unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        *pos += size;
        ops += 1;
    }
    Sample {
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
        let groups = self.next_index.len();
        let mut b = Batch::new();
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

fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 20,
        frame_bytes_max: 8 << 20,
        pending_bytes_max: 64 << 20,
        cache_bytes_max: 32 << 20,
        ..WalOptions::default()
    }
}

/// One writer, one batch at a time: latency per batch.
async fn wal_run(wal: &Wal, load: &mut Load, entries: usize, dur: Duration) -> (Sample, u64) {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let before = wal.stats();
    let start = Instant::now();
    let mut ops = 0;
    let mut since_compact = 0u64;
    while start.elapsed() < dur || ops < 3 {
        let b = load.batch(entries);
        let t = Instant::now();
        wal.write(b).await.unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        ops += 1;
        since_compact += 1;
        if since_compact >= 64 {
            // Keep the WAL in steady state: compact everything so old
            // segments are reclaimed and recycled.
            let c = load.compaction();
            if !c.is_empty() {
                wal.write(c).await.unwrap();
            }
            since_compact = 0;
        }
    }
    let elapsed = start.elapsed();
    let after = wal.stats();
    // Average frame of this cell, rounded to the block (compaction frames included).
    let frame =
        (after.bytes_written - before.bytes_written) / (after.flushes - before.flushes).max(1);
    let frame = frame.div_ceil(BLOCK).max(1) * BLOCK;
    (
        Sample {
            ops,
            bytes: 0,
            elapsed,
            hist,
        },
        frame,
    )
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
            // Bug 2 workaround: keep a timer armed.
            let _ticker = glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            })
            .detach();
            let dur = cell_time();
            // The WAL is opened first: its manifest is this executor's first DMA file (bug 1).
            let (wal, _) = Wal::open(root.join("wal"), wal_options()).await.unwrap();
            glommio::timer::sleep(Duration::from_millis(5)).await;

            println!("## fdatasync after a 4 KiB write: fallocated vs already-written blocks\n");
            // Interleaved rounds so that machine noise hits both alike.
            let fresh = raw_file(&root.join("raw-fallocated"), false).await;
            let raw = raw_file(&root.join("raw-prefilled"), true).await;
            let (mut pos, mut rpos) = (0, 0);
            let mut a = raw_run(&fresh, BLOCK, dur / 4, &mut pos).await;
            let mut b = raw_run(&raw, BLOCK, dur / 4, &mut rpos).await;
            for _ in 0..3 {
                let x = raw_run(&fresh, BLOCK, dur / 4, &mut pos).await;
                let y = raw_run(&raw, BLOCK, dur / 4, &mut rpos).await;
                for (acc, s) in [(&mut a, x), (&mut b, y)] {
                    acc.ops += s.ops;
                    acc.bytes += s.bytes;
                    acc.elapsed += s.elapsed;
                    acc.hist.add(&s.hist).unwrap();
                }
            }
            fresh.close().await.unwrap();
            println!("| blocks | p50 us | p99 us | writes/s |\n|---|---|---|---|");
            println!("| fallocated, never written | {:.0} | {:.0} | {:.0} |", a.p(0.5), a.p(0.99), a.per_sec(a.ops));
            println!("| written once (prefilled / recycled) | {:.0} | {:.0} | {:.0} |\n", b.p(0.5), b.p(0.99), b.per_sec(b.ops));

            println!("## WAL vs raw device (one writer, one batch in flight)\n");
            println!("| entries/batch | payload B | groups | frame KiB | WAL entries/s | WAL payload MB/s | WAL disk MB/s | WAL fsync/s | WAL p50 us | WAL p99 us | raw p50 us | raw MB/s | WAL/raw (fsync/s) |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            let mut cell = 0u64;
            for &groups in &[1usize, 100, 10_000] {
                for &payload in &[16usize, 128, 1024] {
                    cell += 1;
                    let mut load = Load {
                        base: cell * 100_000,
                        next_index: vec![1; groups],
                        cursor: 0,
                        payload: Bytes::from(vec![7u8; payload]),
                    };
                    for &entries in &[1usize, 16, 256, 4096] {
                        let (w, frame) = wal_run(&wal, &mut load, entries, dur).await;
                        // Compact what the cell left so its segments can be reclaimed.
                        let c = load.compaction();
                        if !c.is_empty() {
                            wal.write(c).await.unwrap();
                        }
                        let r = raw_run(&raw, frame, dur, &mut rpos).await;
                        let user_bytes = w.ops * (entries * payload) as u64;
                        println!(
                            "| {entries} | {payload} | {groups} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} |",
                            frame / 1024,
                            w.per_sec(w.ops * entries as u64),
                            w.per_sec(user_bytes) / 1e6,
                            w.per_sec(w.ops * frame) / 1e6,
                            w.per_sec(w.ops),
                            w.p(0.5),
                            w.p(0.99),
                            r.p(0.5),
                            r.per_sec(r.bytes) / 1e6,
                            w.per_sec(w.ops) / r.per_sec(r.ops),
                        );
                    }
                }
            }

            println!("\n## Group commit: 8 concurrent writers, 16 entries x 128 B each, 100 groups\n");
            {
                let wal = std::rc::Rc::new(wal);
                let before = wal.stats();
                let start = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..8u64 {
                    let wal = wal.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let mut load = Load {
                            base: 0,
                            next_index: vec![1; 100],
                            cursor: 0,
                            payload: Bytes::from(vec![1u8; 128]),
                        };
                        let mut n = 0u64;
                        while start.elapsed() < dur {
                            // Each writer owns its own groups (10_000 + w * 100 ..).
                            let mut b = Batch::new();
                            let g = load.cursor % 100;
                            let first = load.next_index[g];
                            let es = (0..16)
                                .map(|k| Entry { index: first + k, term: 1, kind: 0, payload: load.payload.clone() })
                                .collect();
                            b.append(10_000 + w * 100 + g as u64, es);
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
                let s = wal.stats();
                let secs = start.elapsed().as_secs_f64();
                let syncs = s.fdatasyncs - before.fdatasyncs;
                println!("| batches/s | entries/s | fdatasyncs/s | batches per fdatasync |\n|---|---|---|---|");
                println!("| {:.0} | {:.0} | {:.0} | {:.1} |", batches as f64 / secs, (batches * 16) as f64 / secs, syncs as f64 / secs, batches as f64 / syncs.max(1) as f64);
                let s = wal.stats();
                println!("\nWAL totals: {} flushes, {} fdatasyncs, {} MB written, {} segments live, {} created, {} recycled, {} deleted",
                    s.flushes, s.fdatasyncs, s.bytes_written >> 20, s.segments, s.segments_created, s.segments_recycled, s.segments_deleted);
                wal.close().await.unwrap();
            }
            raw.close().await.unwrap();

            println!("\n## Recovery scan\n");
            // A WAL of ~128 MiB of 1 KiB entries over 100 groups, never compacted.
            let rdir = root.join("recovery");
            {
                let (wal, _) = Wal::open(&rdir, wal_options()).await.unwrap();
                let mut load = Load { base: 0, next_index: vec![1; 100], cursor: 0, payload: Bytes::from(vec![3u8; 1024]) };
                while wal.stats().bytes_written < (128 << 20) {
                    wal.write(load.batch(4096)).await.unwrap();
                }
                wal.close().await.unwrap();
            }
            let (wal, rec) = Wal::open(&rdir, wal_options()).await.unwrap();
            let mbps = rec.bytes_scanned as f64 / rec.duration.as_secs_f64() / 1e6;
            println!("| bytes scanned | time ms | MB/s | groups | entries |\n|---|---|---|---|---|");
            let entries: u64 = rec.groups.iter().map(|g| g.last_index + 1 - g.first_index).sum();
            println!("| {} MiB | {:.1} | {:.0} | {} | {} |", rec.bytes_scanned >> 20, rec.duration.as_secs_f64() * 1e3, mbps, rec.groups.len(), entries);
            wal.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}
