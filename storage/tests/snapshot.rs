//! Snapshot files: streaming round trips, CRC and header checks, keep-latest.

mod common;

use common::*;
use flotilla_storage::snapshot::{
    latest_snapshot, list_snapshots, remove_temporary, SnapshotReader, SnapshotWriter,
};
use flotilla_storage::SnapshotError;

fn data(len: usize) -> Vec<u8> {
    payload(9, 9, 9, len).to_vec()
}

#[test]
fn streams_a_multi_chunk_snapshot_both_ways_on_a_fresh_executor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snaps");
    run(move || async move {
        // The writer's DmaFile::create is this executor's first DMA file (bug 1 safe).
        let want = data(3 * 1024 * 1024 + 777);
        let mut w = SnapshotWriter::create(&path, 7, 100, 3).await.unwrap();
        for chunk in want.chunks(100_003) {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(w.length(), want.len() as u64);
        let f = w.finish().await.unwrap();
        assert_eq!((f.group, f.index, f.term), (7, 100, 3));
        let mut r = SnapshotReader::open(&f.path).await.unwrap();
        let m = r.meta();
        assert_eq!(
            (m.group, m.index, m.term, m.length),
            (7, 100, 3, want.len() as u64)
        );
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(c) = r.next_chunk().await.unwrap() {
            assert!(c.len() <= 1 << 20);
            got.extend_from_slice(&c);
            chunks += 1;
        }
        assert_eq!(chunks, 4);
        assert_eq!(got, want);
        r.close().await.unwrap();
        // An empty snapshot is valid too.
        let f = SnapshotWriter::create(&path, 8, 1, 1)
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let mut r = SnapshotReader::open(&f.path).await.unwrap();
        assert_eq!(r.read_to_end().await.unwrap(), Vec::<u8>::new());
        r.close().await.unwrap();
    });
}

/// Snapshots in a directory given relative to the working directory: write
/// (which syncs the directory and removes the older one), list, read back.
#[test]
fn a_relative_directory_works_like_an_absolute_one() {
    let dir = tempfile::tempdir().unwrap();
    let rel = relative_to_cwd(&dir.path().join("snaps"));
    run(move || async move {
        for index in [10, 20] {
            let mut w = SnapshotWriter::create(&rel, 4, index, 1).await.unwrap();
            w.write(&data(5000)).await.unwrap();
            w.finish().await.unwrap();
        }
        // The second one's finish removed the first (and synced the directory).
        let all = list_snapshots(&rel).await.unwrap();
        assert_eq!(all.iter().map(|f| f.index).collect::<Vec<_>>(), [20]);
        assert!(all[0].path.is_absolute(), "{:?}", all[0].path);
        let latest = latest_snapshot(&rel, 4).await.unwrap().unwrap();
        let mut r = SnapshotReader::open(&latest.path).await.unwrap();
        assert_eq!(r.read_to_end().await.unwrap(), data(5000));
        r.close().await.unwrap();
    });
}

#[test]
fn a_flipped_data_bit_fails_the_crc_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut w = SnapshotWriter::create(&path, 1, 10, 1).await.unwrap();
        w.write(&data(2 * 1024 * 1024)).await.unwrap();
        let f = w.finish().await.unwrap();
        let mut bytes = read_file(&f.path).await;
        bytes[4096 + 1_500_000] ^= 0x10;
        write_file(&f.path, bytes).await;
        let mut r = SnapshotReader::open(&f.path).await.unwrap();
        assert!(
            r.next_chunk().await.unwrap().is_some(),
            "first chunk is unaffected"
        );
        match r.next_chunk().await {
            Err(SnapshotError::BadCrc { .. }) => {}
            other => panic!("expected BadCrc, got {other:?}"),
        }
        r.close().await.unwrap();
    });
}

#[test]
fn bad_headers_and_truncation_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut w = SnapshotWriter::create(&path, 1, 10, 1).await.unwrap();
        w.write(&data(50_000)).await.unwrap();
        let f = w.finish().await.unwrap();
        let good = read_file(&f.path).await;

        let mut bad = good.clone();
        bad[20] ^= 1; // group id, covered by the header CRC
        write_file(&f.path, bad).await;
        assert!(matches!(
            SnapshotReader::open(&f.path).await,
            Err(SnapshotError::BadHeader { .. })
        ));

        let mut bad = good.clone();
        bad[8] = 9;
        write_file(&f.path, bad).await;
        assert!(matches!(
            SnapshotReader::open(&f.path).await,
            Err(SnapshotError::WrongVersion { found: 9, .. })
        ));

        write_file(&f.path, good[..4096 + 20_000].to_vec()).await;
        let mut r = SnapshotReader::open(&f.path).await.unwrap();
        assert!(matches!(
            r.read_to_end().await,
            Err(SnapshotError::Truncated {
                expected: 50_000,
                ..
            })
        ));
        r.close().await.unwrap();

        write_file(&f.path, Vec::new()).await;
        assert!(matches!(
            SnapshotReader::open(&f.path).await,
            Err(SnapshotError::BadHeader { .. })
        ));
    });
}

#[test]
fn a_newer_snapshot_replaces_older_ones_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        for (index, term) in [(10, 1), (20, 1), (20, 2)] {
            let mut w = SnapshotWriter::create(&path, 5, index, term).await.unwrap();
            w.write(&data(1000)).await.unwrap();
            w.finish().await.unwrap();
        }
        let other = SnapshotWriter::create(&path, 6, 3, 1)
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let all = list_snapshots(&path).await.unwrap();
        assert_eq!(
            all.iter()
                .map(|s| (s.group, s.index, s.term))
                .collect::<Vec<_>>(),
            vec![(5, 20, 2), (6, 3, 1)]
        );
        assert_eq!(latest_snapshot(&path, 6).await.unwrap(), Some(other));
        assert_eq!(latest_snapshot(&path, 9).await.unwrap(), None);
        // An abandoned snapshot leaves nothing behind; a crashed one is cleaned up.
        let mut w = SnapshotWriter::create(&path, 5, 30, 2).await.unwrap();
        w.write(b"partial").await.unwrap();
        w.abort().await.unwrap();
        let mut w = SnapshotWriter::create(&path, 5, 40, 2).await.unwrap();
        w.write(b"crash before finish").await.unwrap();
        drop(w);
        assert_eq!(remove_temporary(&path).await.unwrap(), 1);
        assert_eq!(list_snapshots(&path).await.unwrap().len(), 2);
    });
}

#[test]
fn two_writers_of_one_snapshot_leave_one_whole_file() {
    // A transfer retried while the first copy is still being written: both
    // write the same (group, index, term). They used to share a temporary
    // file, and the survivor could be a torn mix ("bad snapshot header" at
    // the next start).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snaps");
    run(move || async move {
        let want = data(2 * 1024 * 1024 + 5);
        let mut a = SnapshotWriter::create(&path, 4, 300, 1).await.unwrap();
        a.write(&want[..1_000_000]).await.unwrap();
        let mut b = SnapshotWriter::create(&path, 4, 300, 1).await.unwrap();
        b.write(&want[..1_500_000]).await.unwrap();
        a.write(&want[1_000_000..]).await.unwrap();
        let fa = a.finish().await.unwrap();
        b.write(&want[1_500_000..]).await.unwrap();
        let fb = b.finish().await.unwrap();
        assert_eq!(fa.path, fb.path);
        let files = list_snapshots(&path).await.unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let mut r = SnapshotReader::open(&files[0].path).await.unwrap();
        assert_eq!(r.read_to_end().await.unwrap(), want);
        assert_eq!(remove_temporary(&path).await.unwrap(), 0);
    });
}
