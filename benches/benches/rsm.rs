//! Benchmark of flotilla-rsm: apply throughput (plain and with exactly-once
//! sessions), query throughput, snapshot capture cost (vs. cloning a plain
//! map), the copy-on-write cost of applying while a snapshot view is alive,
//! and snapshot write/recover throughput (memory and a glommio file).
//!
//! `cargo bench -p flotilla-benches --bench rsm`; `FLOTILLA_BENCH_KEYS`
//! sets the key count (default 1,000,000); `FLOTILLA_BENCH_PROFILE=1` runs
//! only the overwrite loop (for `perf record`). Compare rows as ratios within one
//! run: the machine is noisy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_rsm::{encode_noop, ClientSession, KvCommand, KvQuery, KvStore, Rsm, SessionConfig};
use futures_lite::future::block_on;

const BATCH: usize = 256;

fn keys() -> usize {
    std::env::var("FLOTILLA_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{:012}", i))
}

fn kv() -> Rsm {
    Rsm::new(Box::new(KvStore::new()), SessionConfig::default())
}

fn row(name: &str, ops: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{:<52} {:>12.0} ops/s {:>9.1} ns/op  ({} ops in {:.3} s)",
        name,
        ops as f64 / secs,
        secs * 1e9 / ops as f64,
        ops,
        secs
    );
}

/// Applies `entries` in batches starting after the current applied index.
fn apply_all(rsm: &mut Rsm, payloads: &[Bytes]) -> Duration {
    let mut out = Vec::with_capacity(BATCH);
    let mut index = rsm.applied_index();
    let start = Instant::now();
    for chunk in payloads.chunks(BATCH) {
        out.clear();
        rsm.apply(
            chunk.iter().map(|p| {
                index += 1;
                (index, p.clone())
            }),
            &mut out,
        );
        debug_assert!(out.iter().all(|a| a.result.is_ok()));
    }
    start.elapsed()
}

fn main() {
    let n = keys();
    println!("flotilla-rsm benchmark: {n} keys, 16-byte values, batches of {BATCH}");

    // 1. Plain puts (no session): insert n new keys, then overwrite them.
    let value = Bytes::from_static(b"0123456789abcdef");
    let puts: Vec<Bytes> = (0..n)
        .map(|i| encode_noop(&KvCommand::put(key(i), value.clone()).encode()))
        .collect();
    let mut rsm = kv();
    row(
        "apply put, new keys (no session)",
        n,
        apply_all(&mut rsm, &puts),
    );
    row(
        "apply put, overwrite (no session)",
        n,
        apply_all(&mut rsm, &puts),
    );
    if std::env::var("FLOTILLA_BENCH_PROFILE").is_ok() {
        // For `perf record`: only the overwrite loop.
        for _ in 0..10 {
            row(
                "apply put, overwrite (no session)",
                n,
                apply_all(&mut rsm, &puts),
            );
        }
        let start = Instant::now();
        for _ in 0..20 {
            drop(rsm.capture(Bytes::new()));
        }
        println!("capture x20: {:?}", start.elapsed());
        return;
    }

    // 2. Puts through exactly-once sessions (1,000 clients, round robin).
    let mut clients: Vec<ClientSession> = (1..=1000u64).map(ClientSession::new).collect();
    let registers: Vec<Bytes> = clients.iter().map(|c| c.register()).collect();
    apply_all(&mut rsm, &registers);
    let session_puts: Vec<Bytes> = (0..n)
        .map(|i| {
            let c = &mut clients[i % 1000];
            let p = c.propose(&KvCommand::put(key(i), value.clone()).encode());
            c.completed();
            p
        })
        .collect();
    row(
        "apply put, overwrite (session, 1000 clients)",
        n,
        apply_all(&mut rsm, &session_puts),
    );

    // 3. Increments and reads through the log.
    let incrs: Vec<Bytes> = (0..n)
        .map(|i| {
            encode_noop(
                &KvCommand::Increment {
                    key: key(i % 1000),
                    delta: 1,
                }
                .encode(),
            )
        })
        .collect();
    row(
        "apply increment (no session)",
        n,
        apply_all(&mut rsm, &incrs),
    );

    // 4. Queries (read path).
    let gets: Vec<Bytes> = (0..n)
        .map(|i| KvQuery::Get { key: key(i) }.encode())
        .collect();
    let start = Instant::now();
    let mut found = 0usize;
    for q in &gets {
        found += rsm.query(q).expect("query").len();
    }
    row("query get", n, start.elapsed());
    assert!(found > 0);
    let scans = 10_000;
    let start = Instant::now();
    for i in 0..scans {
        let q = KvQuery::Scan {
            start: key(i * 97 % n),
            end: None,
            limit: 100,
            keys_only: false,
        }
        .encode();
        rsm.query(&q).expect("scan");
    }
    row("query scan, 100 pairs", scans, start.elapsed());

    // 5. Snapshot capture: copy-on-write view vs. cloning a plain BTreeMap
    // of the same data (what "clone the map of Bytes" would cost).
    let start = Instant::now();
    let writer = rsm.capture(Bytes::from_static(b"membership"));
    let capture_time = start.elapsed();
    let plain: BTreeMap<Bytes, Bytes> = (0..n).map(|i| (key(i), value.clone())).collect();
    let start = Instant::now();
    let cloned = plain.clone();
    let clone_time = start.elapsed();
    drop(cloned);
    drop(plain);
    println!(
        "{:<52} {:>12.1} µs  (BTreeMap<Bytes, Bytes> clone of the same data: {:.1} µs, {:.0}x)",
        "snapshot capture (sync, stop-the-world part)",
        capture_time.as_secs_f64() * 1e6,
        clone_time.as_secs_f64() * 1e6,
        clone_time.as_secs_f64() / capture_time.as_secs_f64()
    );

    // 6. Applying while the view is alive: first writes copy shared leaves.
    row(
        "apply put, overwrite, snapshot view alive",
        n,
        apply_all(&mut rsm, &puts),
    );
    row(
        "apply put, overwrite, after (leaves unshared)",
        n,
        apply_all(&mut rsm, &puts),
    );

    // 7. Snapshot write and recover through memory.
    let mut buf = Vec::new();
    let start = Instant::now();
    let info = block_on(writer.write_to(&mut buf)).expect("write");
    let write_time = start.elapsed();
    drop(writer);
    let mib = info.total_bytes as f64 / (1 << 20) as f64;
    println!(
        "{:<52} {:>12.0} MiB/s ({:.1} MiB in {:.3} s)",
        "snapshot write to memory",
        mib / write_time.as_secs_f64(),
        mib,
        write_time.as_secs_f64()
    );
    let mut replica = kv();
    let start = Instant::now();
    block_on(replica.recover(&mut &buf[..])).expect("recover");
    let read_time = start.elapsed();
    println!(
        "{:<52} {:>12.0} MiB/s ({:.0} keys/s)",
        "snapshot recover from memory (verify + rebuild)",
        mib / read_time.as_secs_f64(),
        n as f64 / read_time.as_secs_f64()
    );

    // 8. Through a real file on a glommio executor.
    file_round_trip(buf);
}

fn file_round_trip(expected: Vec<u8>) {
    use glommio::io::{DmaFile, ImmutableFileBuilder};
    use glommio::{LocalExecutorBuilder, Placement};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot");
    let probe = dir.path().join("probe");
    let n = keys();
    let h = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(4 << 20)
        .preempt_timer(Duration::from_millis(2))
        .spawn(move || async move {
            // GLOMMIO.md bug 1: a write-only file first.
            DmaFile::create(&probe)
                .await
                .unwrap()
                .close()
                .await
                .unwrap();
            let mut rsm = kv();
            let value = Bytes::from_static(b"0123456789abcdef");
            let mut out = Vec::new();
            let mut index = 0;
            for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
                out.clear();
                rsm.apply(
                    chunk.iter().map(|&i| {
                        index += 1;
                        (
                            index,
                            encode_noop(&KvCommand::put(key(i), value.clone()).encode()),
                        )
                    }),
                    &mut out,
                );
            }
            let writer = rsm.capture(Bytes::from_static(b"membership"));
            let start = Instant::now();
            let mut sink = ImmutableFileBuilder::new(&path).build_sink().await.unwrap();
            let info = writer.write_to(&mut sink).await.unwrap();
            let file = sink.seal().await.unwrap();
            let write_time = start.elapsed();
            let start = Instant::now();
            let mut reader = file.stream_reader().build();
            let mut replica = kv();
            replica.recover(&mut reader).await.unwrap();
            let read_time = start.elapsed();
            reader.close().await.unwrap();
            file.close().await.unwrap();
            (info, write_time, read_time)
        })
        .unwrap();
    let (info, write_time, read_time) = h.join().unwrap();
    let mib = info.total_bytes as f64 / (1 << 20) as f64;
    assert!(info.total_bytes as usize >= expected.len() / 2);
    println!(
        "{:<52} {:>12.0} MiB/s (incl. seal = fdatasync)",
        "snapshot write to glommio ImmutableFile",
        mib / write_time.as_secs_f64()
    );
    println!(
        "{:<52} {:>12.0} MiB/s",
        "snapshot recover from glommio DmaStreamReader",
        mib / read_time.as_secs_f64()
    );
}
