//! The engine's usage on a glommio shard: the `Rsm` lives in an
//! `Rc<RefCell<_>>`; a snapshot is captured synchronously and written to a
//! file by a task in a low-share queue while the apply task keeps applying.
//! No `RefCell` borrow is held across an `.await`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

/// The engine's executor watchdog (`flotilla::exec`), compiled in from the
/// same file: this crate cannot depend on the engine.
#[path = "../../engine/src/exec.rs"]
#[allow(dead_code)]
mod exec;
use flotilla_rsm::{encode_noop, KvCommand, KvQuery, KvResult, KvStore, Rsm, SessionConfig};
use glommio::io::{DmaFile, ImmutableFileBuilder};
use glommio::{executor, Latency, LocalExecutorBuilder, Placement, Shares};

fn put(i: u64) -> Bytes {
    encode_noop(&KvCommand::put(format!("k{:06}", i % 5_000), i.to_string()).encode())
}

fn count(rsm: &Rsm) -> KvResult {
    KvResult::decode(rsm.query(&KvQuery::Count.encode()).unwrap()).unwrap()
}

#[test]
fn snapshot_written_while_applying() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    let probe = dir.path().join("probe");
    let h = exec::spawn(
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .preempt_timer(Duration::from_millis(2)),
        "rsm-shard-test".into(),
        move || async move {
            // GLOMMIO.md bug 2: keep a timer armed so that a missed wake-up
            // costs at most a millisecond instead of hanging the test.
            glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach();
            // GLOMMIO.md bug 1: a write-only file first.
            DmaFile::create(&probe)
                .await
                .unwrap()
                .close()
                .await
                .unwrap();
            let rsm = Rc::new(RefCell::new(Rsm::new(
                Box::new(KvStore::new()),
                SessionConfig::default(),
            )));
            let mut out = Vec::new();
            rsm.borrow_mut()
                .apply((1..=20_000).map(|i| (i, put(i))), &mut out);
            let snapshot_queue = executor().create_task_queue(
                Shares::Static(250),
                Latency::NotImportant,
                "snapshot",
            );
            let writer = rsm.borrow().capture(Bytes::from_static(b"members"));
            let captured_at = writer.meta().applied_index;
            let path2 = path.clone();
            let write_task = glommio::spawn_local_into(
                async move {
                    let mut sink = ImmutableFileBuilder::new(&path2)
                        .build_sink()
                        .await
                        .unwrap();
                    writer.write_to(&mut sink).await.unwrap();
                    sink.seal().await.unwrap().close().await.unwrap();
                },
                snapshot_queue,
            )
            .unwrap();
            // Keep applying meanwhile: new keys and overwrites.
            let mut index = captured_at;
            for _ in 0..50 {
                out.clear();
                let batch: Vec<_> = (0..200)
                    .map(|_| {
                        index += 1;
                        (
                            index,
                            encode_noop(&KvCommand::put(format!("new{index}"), "x").encode()),
                        )
                    })
                    .collect();
                rsm.borrow_mut().apply(batch, &mut out);
                glommio::yield_if_needed().await;
            }
            write_task.await;
            assert_eq!(count(&rsm.borrow()), KvResult::Count(5_000 + 10_000));

            let file = ImmutableFileBuilder::new(&path)
                .build_existing()
                .await
                .unwrap();
            let mut reader = file.stream_reader().build();
            let loader = rsm.borrow().loader();
            let loaded = loader.load(&mut reader).await.unwrap();
            reader.close().await.unwrap();
            file.close().await.unwrap();
            let mut replica = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
            let meta = replica.install(loaded).unwrap();
            (captured_at, meta.applied_index, count(&replica))
        },
    )
    .unwrap();
    let (captured_at, recovered_at, recovered_count) = h.join().expect("executor panicked");
    assert_eq!(captured_at, 20_000);
    assert_eq!(recovered_at, 20_000);
    assert_eq!(
        recovered_count,
        KvResult::Count(5_000),
        "the snapshot holds the captured state only"
    );
}

/// Regression test for a glommio 0.9 park (GLOMMIO.md bug 2, which an armed
/// timer does not cure): recovering a big snapshot from memory on an
/// executor — a CPU loop whose only awaits are the KV reader's yields — hung
/// the executor forever when those yields were milliseconds apart. A
/// watchdog turns a hang into a failure.
#[test]
fn in_memory_recovery_on_an_executor_does_not_park() {
    const KEYS: u64 = 300_000;
    let (tx, rx) = std::sync::mpsc::channel();
    let _h = exec::spawn(
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .preempt_timer(Duration::from_millis(2)),
        "rsm-park-test".into(),
        move || async move {
            glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach();
            let mut rsm = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
            let mut out = Vec::new();
            rsm.apply(
                (1..=KEYS).map(|i| {
                    let cmd = KvCommand::put(format!("key:{i:012}"), "0123456789abcdef");
                    (i, encode_noop(&cmd.encode()))
                }),
                &mut out,
            );
            let mut buf = Vec::new();
            rsm.capture(Bytes::new()).write_to(&mut buf).await.unwrap();
            for round in 0..3 {
                let mut replica = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
                replica.recover(&mut &buf[..]).await.unwrap();
                let n = count(&replica);
                tx.send((round, n)).unwrap();
            }
        },
    )
    .unwrap();
    for round in 0..3 {
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("executor parked in recovery round {round}: {e}"));
        assert_eq!(got, (round, KvResult::Count(KEYS)));
    }
}
