//! Benchmark of flotilla-rsm, in one run:
//!
//! 1. KV apply throughput (commands/s) through the manager, [`Rsm::apply`]
//!    (envelope decode, session check, KV decode and apply, result encode):
//!    16 B and 1 KiB values × batches of 1 and 1,024 entries per call, for
//!    new keys, overwrites, and overwrites through exactly-once sessions;
//! 2. increments and the query path (get, scan);
//! 3. snapshots of a map of a few million keys (default 3,000,000): the
//!    synchronous capture, save and recover speed (MB/s, MB = 10^6 bytes)
//!    to/from memory (this thread) and a real file on a glommio executor,
//!    and the
//!    copy-on-write cost of applying while a snapshot view is alive.
//!
//! `cargo bench -p flotilla-benches --bench rsm`. `FLOTILLA_BENCH_KEYS` sets
//! the number of commands per 16 B apply row (default 1,000,000; the 1 KiB
//! rows use a quarter), `FLOTILLA_BENCH_SNAPSHOT_KEYS` the snapshot map size
//! (default 3,000,000). Compare rows as ratios within one run: the machine is
//! noisy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_rsm::{encode_noop, ClientSession, KvCommand, KvQuery, KvStore, Rsm, SessionConfig};
use futures_lite::future::block_on;

const SESSION_CLIENTS: u64 = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{:012}", i))
}

fn value(len: usize, i: usize) -> Bytes {
    let mut v = vec![b'v'; len];
    let tag = (i as u64).to_le_bytes();
    let n = len.min(8);
    v[..n].copy_from_slice(&tag[..n]);
    Bytes::from(v)
}

fn kv() -> Rsm {
    Rsm::new(Box::new(KvStore::new()), SessionConfig::default())
}

fn row(name: &str, ops: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{:<58} {:>10.0} commands/s {:>8.1} ns/command  ({} in {:.3} s)",
        name,
        ops as f64 / secs,
        secs * 1e9 / ops as f64,
        ops,
        secs
    );
}

fn mb_row(name: &str, bytes: u64, elapsed: Duration, extra: &str) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{:<58} {:>10.0} MB/s  ({:.1} MB in {:.3} s{})",
        name,
        bytes as f64 / 1e6 / secs,
        bytes as f64 / 1e6,
        secs,
        extra
    );
}

/// Applies `payloads` in calls of `batch` entries after the current applied
/// index; every result must be a success.
fn apply_all(rsm: &mut Rsm, payloads: &[Bytes], batch: usize) -> Duration {
    let mut out = Vec::with_capacity(batch);
    let mut index = rsm.applied_index();
    let mut failed = 0usize;
    let start = Instant::now();
    for chunk in payloads.chunks(batch) {
        out.clear();
        rsm.apply(
            chunk.iter().map(|p| {
                index += 1;
                (index, p.clone())
            }),
            &mut out,
        );
        failed += out.iter().filter(|a| a.result.is_err()).count();
    }
    let elapsed = start.elapsed();
    assert_eq!(failed, 0, "apply errors in the benchmark");
    elapsed
}

fn puts(n: usize, value_len: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| encode_noop(&KvCommand::put(key(i), value(value_len, i)).encode()))
        .collect()
}

/// Registers `SESSION_CLIENTS` sessions and returns puts of `n` keys
/// proposed round robin through them (each client acknowledges its previous
/// response, as a pipelining client would).
fn session_puts(rsm: &mut Rsm, n: usize, value_len: usize) -> Vec<Bytes> {
    let mut clients: Vec<ClientSession> = (1..=SESSION_CLIENTS).map(ClientSession::new).collect();
    let registers: Vec<Bytes> = clients.iter().map(|c| c.register()).collect();
    apply_all(rsm, &registers, 1024);
    (0..n)
        .map(|i| {
            let c = &mut clients[i % SESSION_CLIENTS as usize];
            let p = c.propose(&KvCommand::put(key(i), value(value_len, i)).encode());
            c.completed();
            p
        })
        .collect()
}

fn apply_section(n16: usize) {
    println!("## KV apply through Rsm::apply (16-byte keys, noop envelope unless stated)");
    for value_len in [16usize, 1024] {
        let n = if value_len == 16 { n16 } else { n16 / 4 };
        let payloads = puts(n, value_len);
        for batch in [1usize, 1024] {
            let label = |what: &str| format!("put {value_len} B, batch {batch}: {what}");
            let mut rsm = kv();
            row(&label("new keys"), n, apply_all(&mut rsm, &payloads, batch));
            row(
                &label("overwrite"),
                n,
                apply_all(&mut rsm, &payloads, batch),
            );
            let sp = session_puts(&mut rsm, n, value_len);
            row(
                &label("overwrite, sessions"),
                n,
                apply_all(&mut rsm, &sp, batch),
            );
        }
    }
}

fn read_section(n: usize) {
    println!("## increments and the query path ({n} keys)");
    let mut rsm = kv();
    apply_all(&mut rsm, &puts(n, 16), 1024);
    let incrs: Vec<Bytes> = (0..n)
        .map(|i| {
            encode_noop(
                &KvCommand::Increment {
                    key: Bytes::from(format!("ctr:{}", i % 1000)),
                    delta: 1,
                }
                .encode(),
            )
        })
        .collect();
    row(
        "increment, batch 1024",
        n,
        apply_all(&mut rsm, &incrs, 1024),
    );
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
}

/// The snapshot rows: capture, save and recover through memory (on this
/// thread, pure CPU: encode + CRC, verify + rebuild), then through a real
/// file on a glommio executor.
fn snapshot_section(n: usize) {
    println!("## snapshots of {n} keys (16-byte keys and values)");
    let payloads = puts(n, 16);
    let mut rsm = kv();
    row(
        "build: put 16 B, batch 1024, new keys",
        n,
        apply_all(&mut rsm, &payloads, 1024),
    );

    let start = Instant::now();
    let writer = rsm.capture(Bytes::from_static(b"membership"));
    println!(
        "{:<58} {:>10.3} ms",
        "capture (synchronous, stop-the-world part)",
        start.elapsed().as_secs_f64() * 1e3
    );

    let mut buf = Vec::new();
    let start = Instant::now();
    let info = block_on(writer.write_to(&mut buf)).expect("write");
    mb_row("save to memory", info.total_bytes, start.elapsed(), "");

    // The live map diverges from the view: first writes copy shared nodes.
    row(
        "put 16 B, batch 1024, overwrite, snapshot view alive",
        n,
        apply_all(&mut rsm, &payloads, 1024),
    );
    drop(writer);
    row(
        "put 16 B, batch 1024, overwrite, after (unshared)",
        n,
        apply_all(&mut rsm, &payloads, 1024),
    );
    drop(rsm);

    let mut replica = kv();
    let start = Instant::now();
    block_on(replica.recover(&mut &buf[..])).expect("recover");
    let t = start.elapsed();
    let keys_per_s = format!(", {:.2} M keys/s", n as f64 / 1e6 / t.as_secs_f64());
    mb_row(
        "recover from memory (verify + rebuild)",
        info.total_bytes,
        t,
        &keys_per_s,
    );
    drop(replica);
    drop(buf);
    drop(payloads);
    file_rows(n, info.total_bytes);
}

/// Save to a glommio `ImmutableFile` and recover through a `DmaStreamReader`
/// (the map is rebuilt on the executor: an `Rsm` is not `Send`).
fn file_rows(n: usize, expected_bytes: u64) {
    use glommio::io::{DmaFile, ImmutableFileBuilder};
    use glommio::{LocalExecutorBuilder, Placement};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot");
    let probe = dir.path().join("probe");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The phase the executor is in, for the watchdog's message.
    let phase = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let phase_in = phase.clone();
    const PHASES: [&str; 5] = ["start", "build", "write file", "recover file", "close"];
    let set = move |p: usize| phase_in.store(p, std::sync::atomic::Ordering::Relaxed);
    let _h = LocalExecutorBuilder::new(Placement::Unbound)
        .name("rsm-bench")
        .io_memory(4 << 20)
        .preempt_timer(Duration::from_millis(2))
        .spawn(move || async move {
            // GLOMMIO.md bug 2: an executor can park with runnable work; a
            // timer kept armed is the documented workaround.
            glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach();
            // GLOMMIO.md bug 1: the first DMA file must be a write-only one.
            DmaFile::create(&probe)
                .await
                .expect("probe")
                .close()
                .await
                .expect("close probe");
            set(1);
            let mut rsm = kv();
            apply_all(&mut rsm, &puts(n, 16), 1024);
            let writer = rsm.capture(Bytes::from_static(b"membership"));
            drop(rsm);
            set(2);
            let start = Instant::now();
            let mut sink = ImmutableFileBuilder::new(&path)
                .build_sink()
                .await
                .expect("sink");
            let info = writer.write_to(&mut sink).await.expect("write file");
            let file = sink.seal().await.expect("seal");
            let write_time = start.elapsed();
            drop(writer);
            set(3);
            let start = Instant::now();
            let mut reader = file.stream_reader().build();
            let mut replica = kv();
            replica.recover(&mut reader).await.expect("recover file");
            let read_time = start.elapsed();
            set(4);
            reader.close().await.expect("close reader");
            file.close().await.expect("close file");
            let _ = done_tx.send((info, write_time, read_time));
        })
        .expect("spawn executor");
    // A watchdog, so that a glommio hang (GLOMMIO.md bug 2) ends the run
    // with a message instead of never.
    match done_rx.recv_timeout(Duration::from_secs(300)) {
        Ok((info, write_time, read_time)) => {
            assert_eq!(info.total_bytes, expected_bytes, "same state, same bytes");
            mb_row(
                "save to glommio ImmutableFile (incl. seal = fdatasync)",
                info.total_bytes,
                write_time,
                "",
            );
            let keys_per_s = format!(", {:.2} M keys/s", n as f64 / 1e6 / read_time.as_secs_f64());
            mb_row(
                "recover from glommio DmaStreamReader",
                info.total_bytes,
                read_time,
                &keys_per_s,
            );
        }
        Err(e) => {
            let p = PHASES[phase.load(std::sync::atomic::Ordering::Relaxed)];
            println!(
                "glommio file rows: no result after 300 s ({e}): executor hung in phase \"{p}\" \
                 (GLOMMIO.md bug 2?)"
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let n16 = env_usize("FLOTILLA_BENCH_KEYS", 1_000_000);
    let snapshot_keys = env_usize("FLOTILLA_BENCH_SNAPSHOT_KEYS", 3_000_000);
    println!(
        "flotilla-rsm benchmark: {n16} commands per 16 B row, {} per 1 KiB row, \
         {SESSION_CLIENTS} session clients, snapshot of {snapshot_keys} keys",
        n16 / 4
    );
    apply_section(n16);
    read_section(n16);
    snapshot_section(snapshot_keys);
}
