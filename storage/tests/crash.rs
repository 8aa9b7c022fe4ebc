//! Crash consistency: cut the last segment at (densely sampled) byte offsets
//! of its final frames and flip single bits anywhere; recovery must return
//! exactly the durable prefix for tail damage, an error for damage before the
//! tail, never an entry whose CRC did not check, and never panic.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use flotilla_storage::{Batch, Corruption, HardState, Wal, WalError, WalOptions};

/// Every frame of these tests is exactly 8192 bytes: one append of one entry
/// (32 + 20 + payload), one hard state (48) and one meta record (24 + 16)
/// after the 32-byte frame header.
const PAYLOAD: usize = 8192 - 32 - 52 - 48 - 40;
const FRAME: u64 = 8192;

/// Group 1's metadata after frame `i` (16 bytes).
fn meta_of(i: u64) -> Bytes {
    Bytes::from(format!("members-{i:08}"))
}

/// Frame `i`: group 1 entry i, hard state commit i, meta `meta_of(i)`.
fn frame_batch(i: u64) -> Batch {
    let mut b = Batch::new();
    b.append(1, vec![entry(1, i, 1, PAYLOAD)]);
    b.set_hard_state(
        1,
        HardState {
            term: 1,
            vote: 1,
            commit: i,
        },
    );
    b.set_meta(1, meta_of(i));
    b
}

fn opts() -> WalOptions {
    WalOptions {
        prefill_segments: false,
        ..small_opts()
    }
}

/// Writes `n` frames (`frame_batch(1..=n)`) into a
/// fresh WAL; returns the offset where each frame starts.
async fn write_frames(dir: &Path, n: u64) -> Vec<u64> {
    let (wal, _) = Wal::open(dir, opts()).await.unwrap();
    let mut starts = Vec::new();
    for i in 1..=n {
        starts.push(wal.stats().write_offset);
        wal.write(frame_batch(i)).await.unwrap();
        assert_eq!(
            wal.stats().write_offset,
            starts.last().unwrap() + FRAME,
            "frame size"
        );
    }
    assert_eq!(wal.stats().current_segment, 1);
    wal.close().await.unwrap();
    starts
}

/// Opens a copy of `pristine` after `damage` and returns what was recovered:
/// Ok(number of entries of group 1, all verified) or the error.
async fn recover_copy(
    pristine: &Path,
    work: &Path,
    damage: impl FnOnce(&mut Vec<u8>),
) -> Result<u64, WalError> {
    copy_dir(pristine, work).await;
    let seg = seg_path(work, 1);
    let mut bytes = read_file(&seg).await;
    damage(&mut bytes);
    write_file(&seg, bytes).await;
    let (wal, rec) = Wal::open(work, no_cache(opts())).await?;
    let n = rec.groups.first().map_or(0, |g| g.last_index);
    if n > 0 {
        // Every entry read back is checked against its payload CRC and content.
        let got = wal.entries(1, 1..n + 1, u64::MAX).await.unwrap();
        for (i, e) in got.iter().enumerate() {
            assert_eq!(*e, entry(1, i as u64 + 1, 1, PAYLOAD));
        }
        assert_eq!(wal.hard_state(1).unwrap().commit, n);
        assert_eq!(wal.meta(1), Some(meta_of(n)));
    }
    // The recovered WAL accepts writes, and a second recovery agrees.
    let mut b = Batch::new();
    b.append(1, vec![entry(1, n + 1, 2, 10)]);
    wal.write(b).await.unwrap();
    wal.close().await.unwrap();
    let (wal, rec) = Wal::open(work, opts()).await.unwrap();
    assert_eq!(rec.groups[0].last_index, n + 1);
    assert_eq!(wal.term(1, n + 1), Some(2));
    assert_eq!(wal.meta(1), (n > 0).then(|| meta_of(n)));
    wal.close().await.unwrap();
    Ok(n)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncating_the_tail_at_any_offset_recovers_exactly_the_whole_frames() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let pristine = root.join("pristine");
        let starts = write_frames(&pristine, 5).await;
        let from = starts[3]; // the last two frames
        let to = starts[4] + FRAME;
        // Every offset near block and record boundaries, plus a random sample.
        let mut cuts: Vec<u64> = Vec::new();
        for b in (from..=to).step_by(4096) {
            cuts.extend(b.saturating_sub(40)..=(b + 40).min(to));
        }
        let mut rng = Rng(0x5EED);
        cuts.extend((0..150).map(|_| from + rng.next() % (to - from)));
        cuts.sort_unstable();
        cuts.dedup();
        for (k, &cut) in cuts.iter().enumerate() {
            let work = root.join(format!("w{k}"));
            let got = recover_copy(&pristine, &work, |b| b.truncate(cut as usize)).await;
            let want = starts.iter().filter(|&&s| s + FRAME <= cut).count() as u64;
            match got {
                Ok(n) => assert_eq!(n, want, "cut at {cut}"),
                Err(e) => panic!("cut at {cut}: tail damage must not be an error: {e}"),
            }
            blocking(move || std::fs::remove_dir_all(work).unwrap()).await;
        }
    });
}

#[test]
fn single_bit_flips_are_dropped_at_the_tail_and_refused_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let pristine = root.join("pristine");
        let starts = write_frames(&pristine, 4).await;
        let end = starts[3] + FRAME;
        let mut rng = Rng(0xF11F);
        let mut positions: Vec<u64> = (0..64).collect(); // the segment header
        positions.extend((0..260).map(|_| rng.next() % (end + 8192))); // frames and free space
        for (k, &pos) in positions.iter().enumerate() {
            let bit = (rng.next() % 8) as u8;
            let work: PathBuf = root.join(format!("f{k}"));
            let got = recover_copy(&pristine, &work, |b| b[pos as usize] ^= 1 << bit).await;
            let frame = starts.iter().position(|&s| pos >= s && pos < s + FRAME);
            match (pos, frame, got) {
                (
                    0..48,
                    _,
                    Err(WalError::Corrupt {
                        offset: 0, kind, ..
                    }),
                ) => {
                    assert!(matches!(
                        kind,
                        Corruption::BadSegmentHeader | Corruption::WrongVersion { .. }
                    ))
                }
                (48..4096, _, Ok(n)) => assert_eq!(n, 4, "flip in unused header bytes at {pos}"),
                (_, Some(3), Ok(n)) => assert_eq!(n, 3, "flip in the tail frame at {pos}"),
                (
                    _,
                    Some(i),
                    Err(WalError::Corrupt {
                        offset,
                        kind: Corruption::BadFrame,
                        ..
                    }),
                ) => {
                    assert_eq!(
                        offset, starts[i],
                        "flip at {pos} reported at the damaged frame"
                    )
                }
                (_, None, Ok(n)) if pos >= 4096 => assert_eq!(n, 4, "flip in free space at {pos}"),
                (pos, frame, got) => panic!("flip at {pos} (frame {frame:?}): unexpected {got:?}"),
            }
            blocking(move || std::fs::remove_dir_all(work).unwrap()).await;
        }
    });
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_missing_frames() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let path = root.join("wal");
        let (wal, _) = Wal::open(&path, opts()).await.unwrap();
        let mut i = 0;
        let mut last_start_in_1 = 0;
        while wal.stats().current_segment == 1 {
            i += 1;
            let before = wal.stats().write_offset;
            wal.write(frame_batch(i)).await.unwrap();
            if wal.stats().current_segment == 1 {
                last_start_in_1 = before;
            }
        }
        wal.close().await.unwrap();
        let seg = seg_path(&path, 1);
        let mut bytes = read_file(&seg).await;
        bytes[last_start_in_1 as usize + 100] ^= 4;
        write_file(&seg, bytes).await;
        match Wal::open(&path, opts()).await {
            Err(WalError::Corrupt {
                path,
                offset,
                kind: Corruption::MissingFrames { .. },
            }) => {
                assert!(path.ends_with("00000000000000000001.wal"));
                assert_eq!(offset, last_start_in_1);
            }
            Ok(_) => panic!("damage in a sealed segment went unnoticed"),
            Err(e) => panic!("unexpected error {e}"),
        }
    });
}

/// Damage to an early frame of a sealed segment (valid frames follow it in
/// that segment, later segments continue): recovery sees the batch sequence
/// jump at the next segment, scans the damaged segment and names the frame.
#[test]
fn damage_inside_a_sealed_segment_is_a_bad_frame() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let path = root.join("wal");
        let (wal, _) = Wal::open(&path, opts()).await.unwrap();
        let mut i = 0;
        while wal.stats().current_segment < 3 {
            i += 1;
            wal.write(frame_batch(i)).await.unwrap();
        }
        wal.close().await.unwrap();
        // Intact: everything comes back, reading no more than the segments.
        let (wal, rec) = Wal::open(&path, opts()).await.unwrap();
        assert_eq!(rec.groups[0].last_index, i);
        assert_eq!(rec.frame_bytes, i * FRAME);
        // 3 live segments and at most 2 spares, each read at most once.
        assert!(rec.bytes_scanned <= 5 * opts().segment_bytes, "{rec:?}");
        wal.close().await.unwrap();
        let seg = seg_path(&path, 1);
        let mut bytes = read_file(&seg).await;
        bytes[4096 + FRAME as usize + 200] ^= 0x10; // the second frame
        write_file(&seg, bytes).await;
        match Wal::open(&path, opts()).await {
            Err(WalError::Corrupt {
                path,
                offset,
                kind: Corruption::BadFrame,
            }) => {
                assert!(path.ends_with("00000000000000000001.wal"));
                assert_eq!(offset, 4096 + FRAME);
            }
            Ok(_) => panic!("damage in a sealed segment went unnoticed"),
            Err(e) => panic!("unexpected error {e}"),
        }
    });
}
