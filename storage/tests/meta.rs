//! Per-group opaque metadata (`Batch::set_meta`, `Wal::meta`,
//! `RecoveredGroup::meta`): round trip, latest wins, reopen, removal, size
//! limit, and survival across segment reclamation.

mod common;

use bytes::Bytes;
use common::*;
use flotilla_storage::{
    Batch, HardState, InvalidOp, SnapshotMarker, Wal, WalError, WalOptions, META_BYTES_MAX,
};

fn meta(tag: &str) -> Bytes {
    Bytes::from(format!("membership:{tag}"))
}

#[test]
fn meta_round_trips_latest_wins_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        assert_eq!(wal.meta(1), None);
        let mut b = Batch::new();
        b.set_meta(1, meta("a"));
        b.append(2, vec![entry(2, 1, 1, 10)]);
        b.set_meta(2, meta("x"));
        b.set_meta(2, meta("y")); // the later one in a batch wins
        b.set_meta(3, Bytes::new()); // empty metadata is metadata
        wal.write(b).await.unwrap();
        assert_eq!(wal.meta(1), Some(meta("a")));
        assert_eq!(wal.meta(2), Some(meta("y")));
        assert_eq!(wal.meta(3), Some(Bytes::new()));
        // A group with only metadata exists.
        assert_eq!(wal.groups(), vec![1, 2, 3]);
        assert_eq!((wal.first_index(1), wal.last_index(1)), (Some(1), Some(0)));
        let mut b = Batch::new();
        b.set_meta(1, meta("b"));
        wal.write(b).await.unwrap();
        assert_eq!(wal.meta(1), Some(meta("b")));
        wal.close().await.unwrap();

        let (wal, rec) = Wal::open(&path, opts.clone()).await.unwrap();
        let metas: Vec<(u64, Option<Bytes>)> = rec
            .groups
            .iter()
            .map(|g| (g.group, g.meta.clone()))
            .collect();
        assert_eq!(
            metas,
            vec![
                (1, Some(meta("b"))),
                (2, Some(meta("y"))),
                (3, Some(Bytes::new()))
            ]
        );
        assert_eq!(wal.meta(2), Some(meta("y")));
        assert_eq!(rec.groups[1].last_index, 1);
        // Meta is independent of hard state, entries and snapshot markers.
        let mut b = Batch::new();
        b.set_hard_state(
            1,
            HardState {
                term: 4,
                vote: 1,
                commit: 0,
            },
        );
        b.set_snapshot(2, SnapshotMarker { index: 10, term: 3 });
        wal.write(b).await.unwrap();
        assert_eq!(wal.meta(1), Some(meta("b")));
        assert_eq!(wal.meta(2), Some(meta("y")));
        wal.close().await.unwrap();
        let (wal, _) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(wal.meta(1), Some(meta("b")));
        assert_eq!(wal.meta(2), Some(meta("y")));
        assert_eq!(wal.snapshot(2), Some(SnapshotMarker { index: 10, term: 3 }));
        wal.close().await.unwrap();
    });
}

#[test]
fn meta_is_removed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut b = Batch::new();
        b.set_meta(5, meta("five"));
        b.set_meta(6, meta("six"));
        b.append(5, vec![entry(5, 1, 1, 10)]);
        wal.write(b).await.unwrap();
        wal.remove_group(5).await.unwrap();
        assert_eq!(wal.meta(5), None);
        // Re-created without metadata: the old one does not come back.
        let mut b = Batch::new();
        b.append(5, vec![entry(5, 1, 2, 10)]);
        wal.write(b).await.unwrap();
        assert_eq!(wal.meta(5), None);
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts.clone()).await.unwrap();
        assert_eq!(rec.groups.len(), 2);
        assert_eq!(rec.groups[0].meta, None);
        assert_eq!(wal.meta(5), None);
        assert_eq!(wal.meta(6), Some(meta("six")));
        wal.remove_group(6).await.unwrap();
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(rec.groups.len(), 1);
        assert_eq!(wal.meta(6), None);
        wal.close().await.unwrap();
    });
}

#[test]
fn meta_over_64_kib_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = WalOptions {
            segment_bytes: 1 << 20,
            frame_bytes_max: 256 * 1024,
            ..small_opts()
        };
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut b = Batch::new();
        b.set_meta(1, meta("old"));
        wal.write(b).await.unwrap();
        let too_big = Bytes::from(vec![7u8; META_BYTES_MAX + 1]);
        let mut b = Batch::new();
        b.append(1, vec![entry(1, 1, 1, 10)]);
        b.set_meta(1, too_big);
        match wal.write(b).await {
            Err(WalError::InvalidOp {
                group: 1,
                reason: InvalidOp::MetaTooLarge { bytes, limit },
            }) => assert_eq!((bytes, limit), (65537, 65536)),
            other => panic!("expected MetaTooLarge, got {other:?}"),
        }
        assert_eq!(wal.meta(1), Some(meta("old")));
        assert_eq!(
            wal.last_index(1),
            Some(0),
            "the append of the refused batch"
        );
        // Exactly the limit is fine and round trips.
        let max = payload(1, 2, 3, META_BYTES_MAX);
        let mut b = Batch::new();
        b.set_meta(1, max.clone());
        wal.write(b).await.unwrap();
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, opts).await.unwrap();
        assert_eq!(rec.groups[0].meta.as_ref(), Some(&max));
        assert_eq!(wal.meta(1), Some(max));
        wal.close().await.unwrap();
    });
}

/// Idle groups holding only metadata, and a busy group whose metadata was
/// written once at the start, must not pin the oldest segment forever: their
/// meta records are re-written forward and old segments are reclaimed, over
/// many rolls, and recovery still finds the latest meta of every group.
#[test]
fn meta_survives_segment_reclamation_over_many_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = small_opts();
        let (wal, _) = Wal::open(&path, opts.clone()).await.unwrap();
        let mut b = Batch::new();
        for g in 100..140 {
            b.set_meta(g, meta(&format!("idle-{g}")));
        }
        // Group 1: metadata once, then only entries and compactions that
        // keep the last two entries (it always has live entries).
        b.set_meta(1, meta("busy"));
        wal.write(b).await.unwrap();
        // A group with meta and hard state whose meta changes mid-way.
        let mut b = Batch::new();
        b.set_meta(
            2,
            Bytes::from(vec![2u8; 20_000]), // large: a third of a segment
        );
        b.set_hard_state(
            2,
            HardState {
                term: 1,
                vote: 2,
                commit: 0,
            },
        );
        wal.write(b).await.unwrap();
        let first_segment = wal.segment_seqs()[0];
        let mut index = 0;
        for round in 0..150 {
            let mut b = Batch::new();
            b.append(
                1,
                (index + 1..=index + 4)
                    .map(|i| entry(1, i, 1, 1000))
                    .collect(),
            );
            index += 4;
            if round == 75 {
                b.set_meta(2, meta("two-later"));
            }
            wal.write(b).await.unwrap();
            wal.compact(1, index - 2).await.unwrap(); // keeps live entries
            if round % 25 == 0 {
                // Checked live, mid-way: the index never loses the meta.
                assert_eq!(wal.meta(1), Some(meta("busy")));
                assert_eq!(wal.meta(120), Some(meta("idle-120")));
            }
        }
        for _ in 0..100 {
            if wal.stats().segments <= 2 {
                break;
            }
            wal.write(Batch::new()).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let s = wal.stats();
        assert!(
            s.current_segment >= first_segment + 8,
            "many rolls expected: {s:?}"
        );
        assert!(
            s.segments <= 2,
            "meta records pin old segments: {:?} pinning {:?}",
            wal.segment_seqs(),
            wal.groups_pinning_oldest(5)
        );
        assert!(s.segments_recycled + s.segments_deleted >= 6, "{s:?}");
        assert!(!wal.segment_seqs().contains(&first_segment));
        wal.close().await.unwrap();

        let (wal, rec) = Wal::open(&path, opts.clone()).await.unwrap();
        assert_eq!(rec.groups.len(), 42);
        for g in 100..140 {
            assert_eq!(wal.meta(g), Some(meta(&format!("idle-{g}"))), "group {g}");
        }
        assert_eq!(wal.meta(1), Some(meta("busy")));
        assert_eq!(wal.meta(2), Some(meta("two-later")));
        assert_eq!(wal.hard_state(2).map(|h| h.vote), Some(2));
        assert_eq!(
            (wal.first_index(1), wal.last_index(1)),
            (Some(index - 1), Some(index))
        );
        assert_eq!(
            wal.entries(1, index - 1..index + 1, u64::MAX)
                .await
                .unwrap(),
            vec![entry(1, index - 1, 1, 1000), entry(1, index, 1, 1000)]
        );
        wal.close().await.unwrap();
    });
}
