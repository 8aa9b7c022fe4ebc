//! FIFO acceptance: `Wal::write` accepts batches in the order it was called,
//! whatever order the returned futures are polled in, with bounded
//! backpressure (`pending_bytes_max`) that keeps that order.

mod common;

use std::rc::Rc;

use common::*;
use flotilla_storage::{Batch, InvalidOp, Wal, WalError, WalOptions};

/// Small queue bound, so most of the writes below wait for room.
fn fifo_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 256 * 1024,
        frame_bytes_max: 32 * 1024,
        pending_bytes_max: 12 * 1024,
        ..small_opts()
    }
}

/// `(first, count, payload bytes)` of batch `k`: sizes vary so that small
/// batches come right after large ones that do not fit (a small one would
/// fit and must still not overtake).
fn shape(k: u64) -> (u64, u64, usize) {
    let count = 1 + (k * 7) % 9;
    let len = [40usize, 1800, 90, 2600, 10][(k % 5) as usize];
    let first = 1 + (0..k).map(|j| 1 + (j * 7) % 9).sum::<u64>();
    (first, count, len)
}

fn batch(group: u64, k: u64) -> Batch {
    let (first, count, len) = shape(k);
    let mut b = Batch::new();
    b.append(
        group,
        (first..first + count)
            .map(|i| entry(group, i, 1, len))
            .collect(),
    );
    b
}

/// Many writers for one group, each appending the next contiguous range,
/// issued in order without awaiting each other and then awaited from tasks
/// spawned in *reverse* order (the last batch's future is polled first).
/// Every batch is accepted (no `Gap`), backpressure was really exercised,
/// and both the live WAL and a reopen return the entries in order.
#[test]
fn writes_are_accepted_in_call_order_whatever_the_poll_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, fifo_opts()).await.unwrap();
        let wal = Rc::new(wal);
        const N: u64 = 160;
        let futures: Vec<_> = (0..N).map(|k| wal.write(batch(1, k))).collect();
        let waiting = wal.stats().batches_waiting;
        assert!(
            waiting > N / 2,
            "backpressure not exercised: only {waiting} of {N} batches wait"
        );
        // Accepted at call time (or queued in order): the first batch is
        // already in the index before anything was awaited.
        assert_eq!(wal.last_index(1), Some(shape(0).1));
        let tasks: Vec<_> = futures
            .into_iter()
            .enumerate()
            .rev()
            .map(|(k, f)| {
                glommio::spawn_local(async move {
                    if let Err(e) = f.await {
                        panic!("batch {k} refused: {e}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let (last_first, last_count, _) = shape(N - 1);
        let last = last_first + last_count - 1;
        assert_eq!(wal.last_index(1), Some(last));
        let s = wal.stats();
        assert_eq!(s.batches, N);
        assert_eq!(s.batches_waiting, 0);
        Rc::try_unwrap(wal).ok().unwrap().close().await.unwrap();

        let (wal, rec) = Wal::open(&path, no_cache(fifo_opts())).await.unwrap();
        assert_eq!(rec.groups.len(), 1);
        assert_eq!(
            (rec.groups[0].first_index, rec.groups[0].last_index),
            (1, last)
        );
        let mut want = Vec::new();
        for k in 0..N {
            let (first, count, len) = shape(k);
            want.extend((first..first + count).map(|i| entry(1, i, 1, len)));
        }
        let mut got = Vec::new();
        while (got.len() as u64) < last {
            let lo = got.len() as u64 + 1;
            got.extend(wal.entries(1, lo..last + 1, 64 * 1024).await.unwrap());
        }
        assert_eq!(got, want);
        wal.close().await.unwrap();
    });
}

/// A waiting batch whose future is dropped is still appended in its turn,
/// so the batch issued after it (continuing its range) is accepted; an
/// invalid batch in the line is refused alone; a barrier issued behind
/// waiting batches resolves only once they are durable.
#[test]
fn dropped_refused_and_barrier_writes_keep_their_place_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, fifo_opts()).await.unwrap();
        let big = |first: u64| {
            let mut b = Batch::new();
            b.append(
                2,
                (first..first + 4).map(|i| entry(2, i, 1, 3000)).collect(),
            );
            b
        };
        let w1 = wal.write(big(1)); // accepted at once (nothing pending)
        let w2 = wal.write(big(5)); // waits: 12 KiB would exceed the bound
        let mut gap = Batch::new();
        gap.append(2, vec![entry(2, 100, 1, 10)]);
        let w_gap = wal.write(gap); // waits; refused in its turn (Gap)
        let w3 = wal.write(big(9)); // continues w2's range
        let barrier = wal.write(Batch::new());
        assert_eq!(wal.stats().batches_waiting, 4);
        assert_eq!(wal.last_index(2), Some(4));
        drop(w2);
        let mut barrier = Box::pin(barrier);
        assert!(futures_lite::future::poll_once(&mut barrier)
            .await
            .is_none());
        barrier.await.unwrap();
        // Everything before the barrier is durable: those futures are ready.
        let mut w1 = Box::pin(w1);
        let mut w3 = Box::pin(w3);
        let mut w_gap = Box::pin(w_gap);
        assert!(matches!(
            futures_lite::future::poll_once(&mut w1).await,
            Some(Ok(()))
        ));
        assert!(matches!(
            futures_lite::future::poll_once(&mut w3).await,
            Some(Ok(()))
        ));
        match futures_lite::future::poll_once(&mut w_gap).await {
            Some(Err(WalError::InvalidOp {
                group: 2,
                reason:
                    InvalidOp::Gap {
                        last: 8,
                        first: 100,
                    },
            })) => {}
            other => panic!("expected Gap after index 8, got {other:?}"),
        }
        assert_eq!(wal.last_index(2), Some(12));
        assert_eq!(wal.stats().batches, 3);
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(&path, fifo_opts()).await.unwrap();
        assert_eq!(
            (rec.groups[0].first_index, rec.groups[0].last_index),
            (1, 12)
        );
        wal.close().await.unwrap();
    });
}

/// `close` waits for batches still waiting for room: they are written, not
/// lost; a write issued after `close` fails.
#[test]
fn close_writes_every_waiting_batch_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (wal, _) = Wal::open(&path, fifo_opts()).await.unwrap();
        let wal = Rc::new(wal);
        let tasks: Vec<_> = (0..40)
            .map(|k| glommio::spawn_local(wal.write(batch(3, k))))
            .collect();
        assert!(wal.stats().batches_waiting > 0);
        wal.close().await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(matches!(
            wal.write(batch(3, 40)).await,
            Err(WalError::Poisoned { .. })
        ));
        let (first, count, _) = shape(39);
        let (wal, rec) = Wal::open(&path, fifo_opts()).await.unwrap();
        assert_eq!(rec.groups[0].last_index, first + count - 1);
        wal.close().await.unwrap();
    });
}
