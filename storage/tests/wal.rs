//! WAL behaviour end to end on real files: round trips, truncation,
//! compaction, reclamation, group commit, and bad inputs.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use common::*;
use flotilla_storage::{
    Batch, Corruption, Entry, HardState, InvalidOp, SnapshotMarker, Wal, WalError, WalOptions,
};

async fn all_entries(wal: &Wal, group: u64) -> Vec<Entry> {
    let (first, last) = (
        wal.first_index(group).unwrap(),
        wal.last_index(group).unwrap(),
    );
    if last < first {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut lo = first;
    while lo <= last {
        let part = wal.entries(group, lo..last + 1, 4096).await.unwrap();
        assert!(!part.is_empty());
        lo += part.len() as u64;
        out.extend(part);
    }
    out
}

/// glommio 0.9.0 bug 1 regression: a fresh directory on a fresh executor can
/// write, sync, read back from disk (not the cache), reopen and replay.
#[test]
fn fresh_directory_on_fresh_executor_writes_reads_back_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let p = path.clone();
    run(move || async move {
        let opts = no_cache(small_opts());
        let (wal, rec) = Wal::open(&p, opts.clone()).await.unwrap();
        assert!(rec.groups.is_empty());
        let mut b = Batch::new();
        b.append(1, (1..=3).map(|i| entry(1, i, 1, 100)).collect());
        b.set_hard_state(
            1,
            HardState {
                term: 1,
                vote: 2,
                commit: 3,
            },
        );
        wal.write(b).await.unwrap();
        let s = wal.stats();
        assert_eq!(
            (s.flushes, s.cache_bytes),
            (1, 0),
            "payloads must be evicted so the read hits the disk"
        );
        let got = wal.entries(1, 1..4, u64::MAX).await.unwrap();
        assert_eq!(
            got,
            (1..=3).map(|i| entry(1, i, 1, 100)).collect::<Vec<_>>()
        );
        assert_eq!(wal.stats().disk_reads, 1);
        wal.close().await.unwrap();
    });
    // A second fresh executor: the first DMA file it opens is the existing manifest.
    run(move || async move {
        let (wal, rec) = Wal::open(&path, no_cache(small_opts())).await.unwrap();
        assert_eq!(rec.groups.len(), 1);
        let g = rec.groups[0].clone();
        assert_eq!((g.group, g.first_index, g.last_index), (1, 1, 3));
        assert_eq!(
            g.hard_state,
            Some(HardState {
                term: 1,
                vote: 2,
                commit: 3
            })
        );
        let got = wal.entries(1, 1..4, u64::MAX).await.unwrap();
        assert_eq!(
            got,
            (1..=3).map(|i| entry(1, i, 1, 100)).collect::<Vec<_>>()
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn every_record_kind_many_groups_interleaved_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        // 40 groups, 30 rounds; each round one batch touching every group.
        for round in 1..=30u64 {
            let mut b = Batch::new();
            for g in 1..=40u64 {
                if g == 40 && round > 20 {
                    continue; // removed below in round 20
                }
                b.append(
                    g,
                    vec![entry(g, round, 1 + round / 10, (g * 7 % 50) as usize)],
                );
                if round % 5 == 0 && !(g == 40 && round == 20) {
                    b.set_hard_state(
                        g,
                        HardState {
                            term: round,
                            vote: g,
                            commit: round - 1,
                        },
                    );
                }
            }
            if round == 20 {
                for g in (1..=40).step_by(4) {
                    b.set_snapshot(g, SnapshotMarker { index: 10, term: 2 });
                }
                b.remove_group(40);
            }
            wal.write(b).await.unwrap();
        }
        let check = |wal: Rc<Wal>| async move {
            assert_eq!(wal.groups(), (1..=39).collect::<Vec<_>>());
            for g in 1..=39u64 {
                let hs = wal.hard_state(g).unwrap();
                assert_eq!(
                    hs,
                    HardState {
                        term: 30,
                        vote: g,
                        commit: 29
                    }
                );
                let compacted = g % 4 == 1;
                assert_eq!(wal.first_index(g), Some(if compacted { 11 } else { 1 }));
                assert_eq!(wal.last_index(g), Some(30));
                if compacted {
                    assert_eq!(wal.term(g, 10), Some(2));
                    assert_eq!(wal.term(g, 9), None);
                }
                let want: Vec<Entry> = (wal.first_index(g).unwrap()..=30)
                    .map(|i| entry(g, i, 1 + i / 10, (g * 7 % 50) as usize))
                    .collect();
                assert_eq!(all_entries(&wal, g).await, want, "group {g}");
            }
        };
        let wal = Rc::new(wal);
        check(wal.clone()).await;
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(rec.groups.len(), 39);
        let wal = Rc::new(wal);
        check(wal.clone()).await;
        wal.close().await.unwrap();
    });
}

#[test]
fn conflict_truncation_replaces_the_suffix_and_recovery_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut b = Batch::new();
        b.append(5, (1..=10).map(|i| entry(5, i, 1, 64)).collect());
        wal.write(b).await.unwrap();
        // A new leader overwrites 6.. with term 2, then 8.. with term 3 in one batch.
        let mut b = Batch::new();
        b.append(5, (6..=12).map(|i| entry(5, i, 2, 64)).collect());
        b.append(5, (8..=9).map(|i| entry(5, i, 3, 64)).collect());
        wal.write(b).await.unwrap();
        let want: Vec<Entry> = (1..=5)
            .map(|i| entry(5, i, 1, 64))
            .chain((6..=7).map(|i| entry(5, i, 2, 64)))
            .chain((8..=9).map(|i| entry(5, i, 3, 64)))
            .collect();
        assert_eq!(wal.last_index(5), Some(9));
        assert_eq!(all_entries(&wal, 5).await, want);
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, no_cache(opts)).await.unwrap();
        assert_eq!(rec.groups[0].last_index, 9);
        assert_eq!(all_entries(&wal, 5).await, want);
        assert_eq!(wal.term(5, 10), None);
        wal.close().await.unwrap();
    });
}

#[test]
fn invalid_batches_are_refused_whole_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, small_opts()).await.unwrap();
        let mut b = Batch::new();
        b.append(1, (1..=3).map(|i| entry(1, i, 1, 8)).collect());
        wal.write(b).await.unwrap();
        let flushes = wal.stats().flushes;
        // Valid ops first, then a gap: nothing may be applied.
        let mut b = Batch::new();
        b.append(1, vec![entry(1, 2, 9, 8)]);
        b.set_hard_state(
            1,
            HardState {
                term: 9,
                vote: 0,
                commit: 0,
            },
        );
        b.append(2, vec![entry(2, 1, 1, 8)]);
        b.append(1, vec![entry(1, 7, 9, 8)]);
        match wal.write(b).await {
            Err(WalError::InvalidOp {
                group: 1,
                reason: InvalidOp::Gap { last: 2, first: 7 },
            }) => {}
            other => panic!("expected a gap error, got {other:?}"),
        }
        assert_eq!(wal.last_index(1), Some(3));
        assert_eq!(wal.term(1, 2), Some(1));
        assert_eq!(wal.hard_state(1), None);
        assert_eq!(wal.groups(), vec![1]);
        let mut b = Batch::new();
        b.append(1, vec![entry(1, 4, 1, 8), entry(1, 6, 1, 8)]);
        assert!(matches!(
            wal.write(b).await,
            Err(WalError::InvalidOp {
                reason: InvalidOp::NonConsecutive,
                ..
            })
        ));
        wal.compact(1, 2).await.unwrap();
        let mut b = Batch::new();
        b.append(1, vec![entry(1, 2, 1, 8)]);
        assert!(matches!(
            wal.write(b).await,
            Err(WalError::InvalidOp {
                reason: InvalidOp::BelowSnapshot { .. },
                ..
            })
        ));
        assert!(matches!(
            wal.compact(1, 99).await,
            Err(WalError::InvalidOp {
                reason: InvalidOp::UnknownTerm { index: 99 },
                ..
            })
        ));
        let mut b = Batch::new();
        b.append(
            1,
            vec![Entry {
                index: 4,
                term: 1,
                kind: 0,
                payload: Bytes::from(vec![0u8; 40_000]),
            }],
        );
        assert!(matches!(
            wal.write(b).await,
            Err(WalError::BatchTooLarge { .. })
        ));
        assert!(matches!(
            wal.entries(1, 1..3, 10).await,
            Err(WalError::Compacted { first: 3, .. })
        ));
        assert!(matches!(
            wal.entries(1, 3..5, 10).await,
            Err(WalError::Unavailable { last: 3, .. })
        ));
        assert!(matches!(
            wal.entries(9, 1..2, 10).await,
            Err(WalError::GroupNotFound { group: 9 })
        ));
        assert_eq!(
            wal.stats().flushes,
            flushes + 1,
            "only the compaction was written"
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn concurrent_writers_share_one_fdatasync_per_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, small_opts()).await.unwrap();
        let wal = Rc::new(wal);
        // Let the spare segment be prepared so only flushes sync below.
        wal.write(Batch::new()).await.unwrap();
        let t0 = std::time::Instant::now();
        while wal.stats().segments_created == 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "no spare segment after 60 s: {:?}",
                wal.stats()
            );
            // A barrier: fails if the spare's preparation poisoned the WAL.
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let before = wal.stats();
        let tasks: Vec<_> = (1..=64u64)
            .map(|g| {
                let wal = wal.clone();
                glommio::spawn_local(async move {
                    let mut b = Batch::new();
                    b.append(g, vec![entry(g, 1, 1, 32)]);
                    wal.write(b).await.unwrap();
                    // Durable means: visible and with a location.
                    assert_eq!(wal.last_index(g), Some(1));
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let after = wal.stats();
        let flushes = after.flushes - before.flushes;
        assert_eq!(after.batches - before.batches, 64);
        assert!(
            (1..64).contains(&flushes),
            "64 concurrent batches took {flushes} flushes"
        );
        assert_eq!(
            after.fdatasyncs - before.fdatasyncs,
            flushes,
            "exactly one fdatasync per flush"
        );
        wal.close().await.unwrap();
    });
}

/// Large concurrent batches from many writers: every write resolves only
/// after a flush completed, and a reopen returns every entry in order across
/// many segment rolls.
#[test]
fn large_batches_from_many_writers_recover_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = WalOptions {
            segment_bytes: 512 * 1024,
            frame_bytes_max: 128 * 1024,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let wal = Rc::new(wal);
        let tasks: Vec<_> = (1..=8u64)
            .map(|g| {
                let wal = wal.clone();
                glommio::spawn_local(async move {
                    for round in 0..24u64 {
                        let first = round * 10 + 1;
                        let mut b = Batch::new();
                        b.append(
                            g,
                            (first..first + 10).map(|i| entry(g, i, 1, 2000)).collect(),
                        );
                        let flushes = wal.stats().flushes;
                        wal.write(b).await.unwrap();
                        assert!(
                            wal.stats().flushes > flushes,
                            "resolved before any flush completed"
                        );
                        if round % 8 == 7 && round < 20 {
                            wal.compact(g, first).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let s = wal.stats();
        assert!(s.segments_recycled + s.segments_deleted > 0, "{s:?}");
        Rc::try_unwrap(wal).ok().unwrap().close().await.unwrap();
        let (wal, rec) = Wal::open(&path, no_cache(opts)).await.unwrap();
        assert_eq!(rec.groups.len(), 8);
        for g in 1..=8u64 {
            assert_eq!(
                (wal.first_index(g), wal.last_index(g)),
                (Some(152), Some(240))
            );
            let got = all_entries(&wal, g).await;
            assert_eq!(
                got,
                (152..=240)
                    .map(|i| entry(g, i, 1, 2000))
                    .collect::<Vec<_>>()
            );
        }
        wal.close().await.unwrap();
    });
}

/// Large frames go through the I/O thread, the next one built while the
/// previous is written (pipelined): every write resolves only once its own
/// frame is durable, each frame still has exactly one fdatasync, frames
/// land in order across segment rolls, and disk reads and a reopen return
/// exactly what was written.
#[test]
fn pipelined_large_frames_are_durable_in_order() {
    pipelined_large_frames(true);
}

/// The same with write + fdatasync instead of `O_DSYNC` writes.
#[test]
fn pipelined_large_frames_without_dsync_are_durable_in_order() {
    pipelined_large_frames(false);
}

fn pipelined_large_frames(dsync_writes: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = WalOptions {
            segment_bytes: 2 << 20,
            frame_bytes_max: 512 * 1024,
            dsync_writes,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let wal = Rc::new(wal);
        // One writer keeping three batches of ~200 KiB in flight.
        let mut inflight = std::collections::VecDeque::new();
        for round in 0..40u64 {
            let mut b = Batch::new();
            let g = 1 + round % 3;
            let first = (round / 3) * 50 + 1;
            b.append(
                g,
                (first..first + 50).map(|i| entry(g, i, 1, 4000)).collect(),
            );
            let w = wal.clone();
            inflight.push_back(glommio::spawn_local(async move {
                let before = w.stats();
                w.write(b).await.unwrap();
                let after = w.stats();
                assert!(after.flushes > before.flushes, "resolved before its flush");
            }));
            if inflight.len() == 3 {
                inflight.pop_front().unwrap().await;
            }
        }
        for t in inflight {
            t.await;
        }
        let s = wal.stats();
        assert!(s.pipelined_frames > 0, "{s:?}");
        assert!(
            s.segments > 1 || s.segments_recycled + s.segments_created > 1,
            "no roll: {s:?}"
        );
        // One fdatasync per frame, plus segment preparation (2 per segment
        // created or recycled, 1 per deletion).
        let prep = 2 * (s.segments_created + s.segments_recycled) + s.segments_deleted;
        assert!(s.fdatasyncs <= s.flushes + prep, "{s:?}");
        Rc::try_unwrap(wal).ok().unwrap().close().await.unwrap();
        for cache in [false, true] {
            let o = if cache {
                opts.clone()
            } else {
                no_cache(opts.clone())
            };
            let (wal, rec) = Wal::open(&path, o).await.unwrap();
            assert_eq!(rec.truncated_bytes, 0);
            for g in 1..=3u64 {
                let rounds = (0..40u64).filter(|r| 1 + r % 3 == g).count() as u64;
                assert_eq!(
                    (wal.first_index(g), wal.last_index(g)),
                    (Some(1), Some(rounds * 50))
                );
                let got = all_entries(&wal, g).await;
                assert_eq!(
                    got,
                    (1..=rounds * 50)
                        .map(|i| entry(g, i, 1, 4000))
                        .collect::<Vec<_>>()
                );
            }
            wal.close().await.unwrap();
        }
    });
}

/// A frame larger than 1 MiB built with nothing in flight goes to the I/O
/// thread's reusable buffers (not a fresh DMA buffer for io_uring); smaller
/// ones still go through io_uring. One writer awaiting each write, so no
/// frame is pipelined; both kinds read back from disk and after a reopen.
#[test]
fn large_frames_with_nothing_in_flight_use_the_io_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = WalOptions {
            segment_bytes: 16 << 20,
            frame_bytes_max: 4 << 20,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        // 300 x 4000 B: a ~1.2 MiB frame; then 10 x 4000 B: ~40 KiB.
        let sizes = [300u64, 10, 300, 10];
        let mut next = 1;
        for (k, &n) in sizes.iter().enumerate() {
            let before = wal.stats();
            let mut b = Batch::new();
            b.append(1, (next..next + n).map(|i| entry(1, i, 1, 4000)).collect());
            wal.write(b).await.unwrap();
            next += n;
            let after = wal.stats();
            assert_eq!(after.flushes - before.flushes, 1, "write {k}: {after:?}");
            let by_thread = after.thread_frames - before.thread_frames;
            assert_eq!(
                by_thread,
                u64::from(n == 300),
                "write {k} of {n} entries: {after:?}"
            );
            assert_eq!(after.pipelined_frames, 0, "{after:?}");
        }
        let want: Vec<Entry> = (1..next).map(|i| entry(1, i, 1, 4000)).collect();
        assert_eq!(all_entries(&wal, 1).await, want);
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, no_cache(opts)).await.unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(all_entries(&wal, 1).await, want);
        wal.close().await.unwrap();
    });
}

/// Under sustained load (the queue is never empty, so a fresh spare's
/// zero-fill never finishes), reclaimed segments must still be recycled
/// instead of deleted while new ones are created (fallocated blocks make
/// every fdatasync slower).
#[test]
fn segments_are_recycled_under_sustained_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = WalOptions {
            segment_bytes: 4 << 20,
            frame_bytes_max: 1 << 20,
            pending_bytes_max: 4 << 20,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, opts).await.unwrap();
        let wal = Rc::new(wal);
        let tasks: Vec<_> = (1..=2u64)
            .map(|g| {
                let wal = wal.clone();
                glommio::spawn_local(async move {
                    for round in 0..40u64 {
                        let first = round * 8 + 1;
                        let mut b = Batch::new();
                        b.append(
                            g,
                            (first..first + 8).map(|i| entry(g, i, 1, 60_000)).collect(),
                        );
                        if round % 10 == 9 {
                            // Compacting now and then: segments pile up
                            // (spares run out), then several are reclaimed.
                            b.set_snapshot(
                                g,
                                SnapshotMarker {
                                    index: first + 6,
                                    term: 1,
                                },
                            );
                        }
                        wal.write(b).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let s = wal.stats();
        assert!(s.current_segment >= 4, "{s:?}");
        assert!(
            s.segments_recycled >= 2,
            "nothing recycled under load: {s:?}"
        );
        assert!(
            s.segments_created <= 4,
            "fresh segments created while reclaimed ones were deleted: {s:?}"
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn compaction_reclaims_segments_and_recycles_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut index = 0u64;
        for _ in 0..60 {
            let mut b = Batch::new();
            b.append(
                1,
                (index + 1..=index + 4)
                    .map(|i| entry(1, i, 1, 1000))
                    .collect(),
            );
            b.set_hard_state(
                1,
                HardState {
                    term: 1,
                    vote: 1,
                    commit: index + 4,
                },
            );
            index += 4;
            wal.write(b).await.unwrap();
        }
        let s = wal.stats();
        assert!(
            s.segments >= 4,
            "240 KB of entries in 64 KiB segments: {} segments",
            s.segments
        );
        wal.compact(1, index - 2).await.unwrap();
        // Reclamation runs in the background after the marker is durable.
        for _ in 0..200 {
            if wal.stats().segments == 1 {
                break;
            }
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let s = wal.stats();
        assert_eq!(
            s.segments,
            1,
            "only the current segment is still needed: {:?}",
            wal.segment_seqs()
        );
        assert!(
            s.segments_recycled >= 1,
            "a reclaimed segment becomes the spare: {s:?}"
        );
        // Keep writing: the recycled segments are written again.
        for _ in 0..40 {
            let mut b = Batch::new();
            b.append(
                1,
                (index + 1..=index + 4)
                    .map(|i| entry(1, i, 1, 1000))
                    .collect(),
            );
            index += 4;
            wal.write(b).await.unwrap();
        }
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, no_cache(opts)).await.unwrap();
        let g = rec.groups[0].clone();
        assert_eq!((g.first_index, g.last_index), (239, index));
        assert_eq!(
            g.snapshot,
            SnapshotMarker {
                index: 238,
                term: 1
            }
        );
        assert_eq!(
            all_entries(&wal, 1).await,
            (239..=index)
                .map(|i| entry(1, i, 1, 1000))
                .collect::<Vec<_>>()
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn a_cold_group_pins_old_segments_until_rewritten_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        // Group 7 writes once and goes cold.
        let mut b = Batch::new();
        b.append(7, vec![entry(7, 1, 1, 10), entry(7, 2, 1, 10)]);
        b.set_hard_state(
            7,
            HardState {
                term: 1,
                vote: 7,
                commit: 2,
            },
        );
        wal.write(b).await.unwrap();
        // Group 1 is busy and compacts everything it writes.
        let mut index = 0;
        for _ in 0..40 {
            let mut b = Batch::new();
            b.append(
                1,
                (index + 1..=index + 4)
                    .map(|i| entry(1, i, 1, 1000))
                    .collect(),
            );
            index += 4;
            wal.write(b).await.unwrap();
            wal.compact(1, index).await.unwrap();
        }
        for _ in 0..20 {
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let seqs = wal.segment_seqs();
        assert!(
            seqs.len() >= 3,
            "group 7 keeps segment {} alive: {seqs:?}",
            seqs[0]
        );
        let pin = wal.groups_pinning_oldest(5);
        assert_eq!(pin.len(), 1);
        assert_eq!(
            (pin[0].group, pin[0].segment, pin[0].live_entries),
            (7, seqs[0], 2)
        );
        // Too big for the budget: skipped. Within budget: moved forward.
        assert_eq!(wal.rewrite_groups(&[7], 5).await.unwrap(), 0);
        assert_eq!(wal.rewrite_groups(&[7], 1 << 20).await.unwrap(), 1);
        for _ in 0..200 {
            if wal.stats().segments == 1 {
                break;
            }
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(wal.stats().segments, 1, "segments {:?}", wal.segment_seqs());
        assert!(wal.groups_pinning_oldest(5).is_empty());
        wal.close().await.unwrap();
        let (wal, _) = Wal::open(&path, no_cache(opts)).await.unwrap();
        assert_eq!(
            wal.hard_state(7),
            Some(HardState {
                term: 1,
                vote: 7,
                commit: 2
            })
        );
        assert_eq!(
            all_entries(&wal, 7).await,
            vec![entry(7, 1, 1, 10), entry(7, 2, 1, 10)]
        );
        assert_eq!(
            (wal.first_index(1), wal.last_index(1)),
            (Some(index + 1), Some(index))
        );
        assert_eq!(wal.term(1, index), Some(1));
        wal.close().await.unwrap();
    });
}

#[test]
fn idle_groups_without_entries_are_moved_forward_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        // 50 idle groups: a hard state and a snapshot marker each, no entries.
        let mut b = Batch::new();
        for g in 100..150 {
            b.set_hard_state(
                g,
                HardState {
                    term: 3,
                    vote: g,
                    commit: 9,
                },
            );
            b.set_snapshot(g, SnapshotMarker { index: 9, term: 3 });
        }
        wal.write(b).await.unwrap();
        // A busy group that compacts everything it writes.
        let mut index = 0;
        for _ in 0..60 {
            let mut b = Batch::new();
            b.append(
                1,
                (index + 1..=index + 4)
                    .map(|i| entry(1, i, 1, 1000))
                    .collect(),
            );
            index += 4;
            wal.write(b).await.unwrap();
            wal.compact(1, index).await.unwrap();
        }
        for _ in 0..50 {
            if wal.stats().segments <= 2 {
                break;
            }
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let s = wal.stats();
        assert!(
            s.segments <= 2,
            "idle groups still pin {:?}",
            wal.segment_seqs()
        );
        assert!(s.groups_rewritten >= 50, "{s:?}");
        assert!(s.segments_recycled + s.segments_deleted >= 3, "{s:?}");
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(rec.groups.len(), 51);
        for g in 100..150 {
            assert_eq!(
                wal.hard_state(g),
                Some(HardState {
                    term: 3,
                    vote: g,
                    commit: 9
                })
            );
            assert_eq!(wal.snapshot(g), Some(SnapshotMarker { index: 9, term: 3 }));
            assert_eq!(wal.last_index(g), Some(9));
        }
        wal.close().await.unwrap();
    });
}

#[test]
fn reopening_with_larger_segments_and_frames_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, small_opts()).await.unwrap();
        let mut b = Batch::new();
        b.append(1, vec![entry(1, 1, 1, 100)]);
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
        // Spares of 64 KiB exist; frames may now be 128 KiB.
        let big = WalOptions {
            segment_bytes: 512 * 1024,
            frame_bytes_max: 128 * 1024,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, big.clone()).await.unwrap();
        let mut b = Batch::new();
        b.append(1, (2..=11).map(|i| entry(1, i, 1, 10_000)).collect());
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, big).await.unwrap();
        assert_eq!(rec.groups[0].last_index, 11);
        assert_eq!(
            wal.entries(1, 11..12, 0).await.unwrap(),
            vec![entry(1, 11, 1, 10_000)]
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn removed_groups_stay_removed_and_can_be_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut b = Batch::new();
        b.append(3, (1..=5).map(|i| entry(3, i, 1, 10)).collect());
        b.append(4, (1..=5).map(|i| entry(4, i, 1, 10)).collect());
        wal.write(b).await.unwrap();
        wal.remove_group(3).await.unwrap();
        wal.remove_group(4).await.unwrap();
        let mut b = Batch::new();
        b.set_snapshot(4, SnapshotMarker { index: 50, term: 5 });
        b.append(4, vec![entry(4, 51, 5, 10)]);
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(rec.groups.len(), 1);
        assert_eq!(
            (
                rec.groups[0].group,
                rec.groups[0].first_index,
                rec.groups[0].last_index
            ),
            (4, 51, 51)
        );
        assert_eq!(
            wal.entries(4, 51..52, 0).await.unwrap(),
            vec![entry(4, 51, 5, 10)]
        );
        assert_eq!(wal.term(4, 50), Some(5));
        wal.close().await.unwrap();
    });
}

#[test]
fn entries_respects_max_bytes_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, no_cache(small_opts())).await.unwrap();
        let mut b = Batch::new();
        b.append(1, (1..=10).map(|i| entry(1, i, 1, 100)).collect());
        wal.write(b).await.unwrap();
        assert_eq!(wal.entries(1, 1..11, 0).await.unwrap().len(), 1);
        assert_eq!(wal.entries(1, 1..11, 250).await.unwrap().len(), 2);
        assert_eq!(wal.entries(1, 1..11, 300).await.unwrap().len(), 3);
        assert_eq!(wal.entries(1, 4..11, u64::MAX).await.unwrap().len(), 7);
        assert_eq!(wal.entries(1, 4..4, u64::MAX).await.unwrap().len(), 0);
        wal.close().await.unwrap();
    });
}

// ---- bad inputs ----

fn open_err(path: std::path::PathBuf, opts: WalOptions) -> WalError {
    run(move || async move {
        match Wal::open(&path, opts).await {
            Ok((wal, _)) => {
                wal.close().await.unwrap();
                panic!("open of a damaged directory succeeded")
            }
            Err(e) => e.to_string() + "\u{0}" + &format!("{e:?}"),
        }
    });
    unreachable!()
}

/// Writes a small valid WAL into `path` and closes it.
fn seed(path: &std::path::Path) {
    let p = path.to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&p, small_opts()).await.unwrap();
        let mut b = Batch::new();
        b.append(1, (1..=3).map(|i| entry(1, i, 1, 100)).collect());
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
    });
}

fn open_result(path: std::path::PathBuf) -> Result<usize, WalError> {
    run(move || async move {
        let (wal, rec) = Wal::open(&path, small_opts()).await?;
        wal.close().await.unwrap();
        Ok(rec.groups.len())
    })
}

/// A relative directory (`flotilla local`'s default `./flotilla-data`) works
/// like an absolute one: glommio 0.9 opens directories with `openat(-1,
/// ..)`, which refused relative paths with EBADF until the crate resolved
/// them.
#[test]
fn a_relative_directory_works_like_an_absolute_one() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("wal");
    let rel = relative_to_cwd(&abs);
    run(move || async move {
        let (wal, _) = Wal::open(&rel, small_opts()).await.unwrap();
        let mut b = Batch::new();
        b.append(3, (1..=5).map(|i| entry(3, i, 1, 64)).collect());
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&abs, small_opts()).await.unwrap();
        assert_eq!(rec.groups.len(), 1);
        assert_eq!(
            all_entries(&wal, 3).await,
            (1..=5).map(|i| entry(3, i, 1, 64)).collect::<Vec<_>>()
        );
        wal.close().await.unwrap();
    });
}

#[test]
fn an_empty_directory_is_a_fresh_wal() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open_result(dir.path().to_path_buf()).unwrap(), 0);
    assert_eq!(open_result(dir.path().to_path_buf()).unwrap(), 0);
    let _ = open_err; // (helper kept for symmetry)
}

#[test]
fn a_foreign_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::ForeignFile { path }) => assert!(path.ends_with("notes.txt")),
        other => panic!("expected ForeignFile, got {other:?}"),
    }
}

#[test]
fn garbage_in_a_segment_name_slot_is_a_bad_header() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    std::fs::write(seg_path(dir.path(), 1), vec![0xAB; 8192]).unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            path,
            offset: 0,
            kind: Corruption::BadSegmentHeader,
        }) => {
            assert!(path.ends_with("00000000000000000001.wal"))
        }
        other => panic!("expected BadSegmentHeader, got {other:?}"),
    }
}

#[test]
fn a_wrong_version_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let p = seg_path(dir.path(), 1);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8] = 7; // version field; the CRC does not cover it, the version check does
    std::fs::write(&p, bytes).unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            offset: 0,
            kind: Corruption::WrongVersion { found: 7 },
            ..
        }) => {}
        other => panic!("expected WrongVersion, got {other:?}"),
    }
}

#[test]
fn a_zero_length_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    std::fs::write(seg_path(dir.path(), 3), b"").unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            path,
            kind: Corruption::BadSegmentHeader,
            ..
        }) => {
            assert!(path.ends_with("00000000000000000003.wal"))
        }
        other => panic!("expected BadSegmentHeader, got {other:?}"),
    }
}

#[test]
fn a_missing_middle_segment_or_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    // segments 1 (data) and 2 (spare) exist; add 4 -> 3 is missing.
    std::fs::copy(seg_path(dir.path(), 2), seg_path(dir.path(), 4)).unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            kind: Corruption::MissingSegment { seq: 3 },
            ..
        }) => {}
        other => panic!("expected MissingSegment, got {other:?}"),
    }
    std::fs::remove_file(seg_path(dir.path(), 4)).unwrap();
    std::fs::write(dir.path().join("MANIFEST"), vec![1u8; 4096]).unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            kind: Corruption::BadManifest,
            ..
        }) => {}
        other => panic!("expected BadManifest, got {other:?}"),
    }
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    match open_result(dir.path().to_path_buf()) {
        Err(WalError::Corrupt {
            kind: Corruption::BadManifest,
            ..
        }) => {}
        other => panic!("expected BadManifest for a missing manifest, got {other:?}"),
    }
}

/// Whether any extent of `path` is allocated but never written (ext4's
/// unwritten extents, from `FS_IOC_FIEMAP`).
fn has_unwritten_extents(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS_MAX: usize = 256;
    const EXTENT_WORDS: usize = 7; // 56-byte struct fiemap_extent
    let file = std::fs::File::open(path).unwrap();
    // struct fiemap (32 bytes) followed by the extent array, as u64 words.
    let mut buf = vec![0u64; 4 + EXTENTS_MAX * EXTENT_WORDS];
    // fm_length: the whole file; fm_extent_count: the low half of word 3.
    buf[1] = u64::MAX;
    buf[3] = EXTENTS_MAX as u64;
    // SAFETY: `buf` is a struct fiemap with room for EXTENTS_MAX extents.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
    assert_eq!(r, 0, "FIEMAP: {}", std::io::Error::last_os_error());
    let mapped = (buf[2] >> 32) as usize; // fm_mapped_extents
    (0..mapped.min(EXTENTS_MAX)).any(|i| {
        let flags_word = buf[4 + i * EXTENT_WORDS + 5];
        (flags_word as u32) & FIEMAP_EXTENT_UNWRITTEN != 0
    })
}

/// The first segment of a fresh WAL is written (zeros) before use, as
/// spares are: a write into fallocated, never-written blocks makes every
/// flush convert an extent too. Without prefill it stays fallocated (the
/// check can tell the two apart).
#[test]
fn the_first_segment_of_a_fresh_wal_is_prefilled() {
    for prefill in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let p = path.clone();
        run(move || async move {
            let opts = WalOptions {
                prefill_segments: prefill,
                ..small_opts()
            };
            let (wal, _) = Wal::open(&p, opts).await.unwrap();
            wal.close().await.unwrap();
        });
        assert_eq!(
            has_unwritten_extents(&seg_path(&path, 1)),
            !prefill,
            "prefill_segments = {prefill}"
        );
    }
}
