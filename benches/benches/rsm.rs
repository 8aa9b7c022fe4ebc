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
//!    copy-on-write cost of applying while a snapshot view is alive;
//! 4. the engine's pattern (`flotilla bench`: 3 nodes x 48 groups): 144
//!    stores, 12-byte keys (4-byte group prefix + 8-byte big-endian random
//!    number below 20,834 per store), 16-byte values, through
//!    [`KvStore::execute`] / [`KvStore::get`] in a random store each op:
//!    (a) fill (every key once, random order: all inserts), (b) random
//!    overwrites, (b') overwrites with a snapshot view of every store alive,
//!    (c) random gets, (d) random gets through `KvStore::read`, (d') through
//!    the engine's read path (`StateMachine::query`, encoded), (e) delete
//!    and re-insert; then through the engine's entry point, `Rsm::apply`,
//!    in runs of 32 no-session put entries per group (payloads sliced out
//!    of one buffer; `FLOTILLA_BENCH_APPLY_RUN` sets the run length): (f)
//!    fill, (g) overwrite, (h) random puts into fresh stores (creations
//!    and overwrites mixed, as `flotilla bench` from its start).
//!    `FLOTILLA_BENCH_ENGINE_ONLY=1` runs only this section,
//!    `FLOTILLA_BENCH_APPLY_ONLY=1` only its `Rsm::apply` rows.
//!
//! 5. one big map (`flotilla bench --groups 1`): one store, 1,000,000
//!    random 12-byte keys (`FLOTILLA_BENCH_BIG_KEYS`), (a) fill, (b) random
//!    overwrites; `FLOTILLA_BENCH_BIG_MAP_ONLY=1` runs only this section.
//!
//! `FLOTILLA_BENCH_SNAPSHOT_ONLY=1` runs only section 2 and the in-memory
//! rows of section 3.
//!
//! `cargo bench -p flotilla-benches --bench rsm`. `FLOTILLA_BENCH_KEYS` sets
//! the number of commands per 16 B apply row (default 1,000,000; the 1 KiB
//! rows use a quarter), `FLOTILLA_BENCH_SNAPSHOT_KEYS` the snapshot map size
//! (default 3,000,000). Compare rows as ratios within one run: the machine is
//! noisy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_rsm::{
    encode_noop, ClientSession, KvCommand, KvQuery, KvStore, Rsm, SessionConfig, StateMachine,
};
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

fn cpu_row(name: &str, ops: usize, cpu_ns: u64) {
    println!(
        "{:<58} {:>8.1} ns/op CPU ({} ops)",
        name,
        cpu_ns as f64 / ops as f64,
        ops
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
    let cpu = thread_cpu_ns();
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
    cpu_row(
        "query scan, 100 pairs: CPU",
        scans,
        thread_cpu_ns().saturating_sub(cpu),
    );
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
    let cpu = thread_cpu_ns();
    let info = block_on(writer.write_to(&mut buf)).expect("write");
    let cpu = thread_cpu_ns().saturating_sub(cpu);
    mb_row(
        "save to memory",
        info.total_bytes,
        start.elapsed(),
        &format!(
            ", {:.0} MB/s of CPU time",
            info.total_bytes as f64 * 1e3 / cpu as f64
        ),
    );

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
    let cpu = thread_cpu_ns();
    block_on(replica.recover(&mut &buf[..])).expect("recover");
    let cpu = thread_cpu_ns().saturating_sub(cpu);
    let t = start.elapsed();
    let keys_per_s = format!(
        ", {:.2} M keys/s, {:.0} MB/s of CPU time",
        n as f64 / 1e6 / t.as_secs_f64(),
        info.total_bytes as f64 * 1e3 / cpu as f64
    );
    mb_row(
        "recover from memory (verify + rebuild)",
        info.total_bytes,
        t,
        &keys_per_s,
    );
    drop(replica);
    drop(buf);
    drop(payloads);
    if std::env::var("FLOTILLA_BENCH_SNAPSHOT_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
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

/// Stores, keys per store and ops per row of the engine-pattern section.
const ENGINE_STORES: usize = 144;
const ENGINE_KEYS_PER_STORE: u64 = 20_834;
/// Ops are generated (outside the timed part) in batches of this many.
const ENGINE_BATCH_OPS: usize = 100_000;

/// xorshift64*: a seeded, cheap generator (no RNG crate in the benches).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One batch of ops: (store, key, value), the keys and values sliced out of
/// one buffer (as the engine's commands are slices of a WAL/network buffer).
fn engine_batch(ops: impl Iterator<Item = (usize, u64)>, tag: u64) -> Vec<(usize, Bytes, Bytes)> {
    let ops: Vec<(usize, u64)> = ops.collect();
    let mut buf = Vec::with_capacity(ops.len() * 28);
    for &(store, n) in &ops {
        buf.extend_from_slice(&(store as u32 / 3).to_be_bytes());
        buf.extend_from_slice(&n.to_be_bytes());
        buf.extend_from_slice(&(n ^ tag).to_le_bytes());
        buf.extend_from_slice(&tag.to_le_bytes());
    }
    let buf = Bytes::from(buf);
    ops.iter()
        .enumerate()
        .map(|(i, &(store, _))| {
            let at = i * 28;
            (store, buf.slice(at..at + 12), buf.slice(at + 12..at + 28))
        })
        .collect()
}

/// This thread's CPU time (ns), from `/proc/thread-self/schedstat`: on a
/// loaded machine the wall clock also counts the time the thread waited for
/// a core. 0 if unavailable.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Wall and CPU time of the timed parts of a row.
#[derive(Default)]
struct Timed {
    wall: Duration,
    cpu_ns: u64,
}

impl Timed {
    fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        let r = f();
        self.wall += start.elapsed();
        self.cpu_ns += thread_cpu_ns().saturating_sub(cpu);
        r
    }
}

fn ns_row(name: &str, ops: usize, t: &Timed) {
    let secs = t.wall.as_secs_f64();
    println!(
        "{:<58} {:>8.1} ns/op CPU {:>8.1} ns/op wall  ({} in {:.3} s)",
        name,
        t.cpu_ns as f64 / ops as f64,
        secs * 1e9 / ops as f64,
        ops,
        secs
    );
}

/// Puts `batch` into `stores`, timing only `execute`.
fn engine_puts(stores: &mut [KvStore], batch: Vec<(usize, Bytes, Bytes)>, t: &mut Timed) {
    let cmds: Vec<(usize, KvCommand)> = batch
        .into_iter()
        .map(|(s, k, v)| (s, KvCommand::put(k, v)))
        .collect();
    t.run(|| {
        for (s, cmd) in &cmds {
            std::hint::black_box(stores[*s].execute(cmd));
        }
    });
}

fn engine_section() {
    let total = ENGINE_STORES * ENGINE_KEYS_PER_STORE as usize;
    println!(
        "## engine pattern: {ENGINE_STORES} stores x {ENGINE_KEYS_PER_STORE} keys of 12 B, 16 B values"
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stores: Vec<KvStore> = (0..ENGINE_STORES).map(|_| KvStore::new()).collect();
    // (a) Fill: every (store, key) once in a random order (Fisher-Yates).
    let mut all: Vec<(u32, u32)> = (0..ENGINE_STORES as u32)
        .flat_map(|s| (0..ENGINE_KEYS_PER_STORE as u32).map(move |n| (s, n)))
        .collect();
    for i in (1..all.len()).rev() {
        all.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut t = Timed::default();
    for chunk in all.chunks(ENGINE_BATCH_OPS) {
        let batch = engine_batch(chunk.iter().map(|&(s, n)| (s as usize, n as u64)), 1);
        engine_puts(&mut stores, batch, &mut t);
    }
    drop(all);
    ns_row("engine (a) fill: put new keys, random order", total, &t);
    assert_eq!(stores.iter().map(KvStore::len).sum::<usize>(), total);
    let random_ops = |rng: &mut Rng, n: usize| -> Vec<(usize, u64)> {
        (0..n)
            .map(|_| {
                let r = rng.next();
                (
                    (r % ENGINE_STORES as u64) as usize,
                    (r >> 20) % ENGINE_KEYS_PER_STORE,
                )
            })
            .collect()
    };
    // (b) Overwrites of existing keys.
    let mut t = Timed::default();
    for round in 0..total / ENGINE_BATCH_OPS {
        let batch = engine_batch(
            random_ops(&mut rng, ENGINE_BATCH_OPS).into_iter(),
            round as u64,
        );
        engine_puts(&mut stores, batch, &mut t);
    }
    let n = total / ENGINE_BATCH_OPS * ENGINE_BATCH_OPS;
    ns_row("engine (b) put overwrite, random", n, &t);
    // (b') The same with a snapshot view of every store alive (every first
    // write to a shared part copies it).
    let views: Vec<_> = stores.iter().map(|s| StateMachine::capture(s)).collect();
    let mut t = Timed::default();
    for round in 0..total / ENGINE_BATCH_OPS {
        let batch = engine_batch(
            random_ops(&mut rng, ENGINE_BATCH_OPS).into_iter(),
            round as u64,
        );
        engine_puts(&mut stores, batch, &mut t);
    }
    ns_row(
        "engine (b') put overwrite, views of all stores alive",
        n,
        &t,
    );
    drop(views);
    // (c) Gets of existing keys (the map only), (d) through the query path.
    let mut t = Timed::default();
    let mut tq = Timed::default();
    let mut tqe = Timed::default();
    let mut found = 0usize;
    for _ in 0..total / ENGINE_BATCH_OPS {
        let batch = engine_batch(random_ops(&mut rng, ENGINE_BATCH_OPS).into_iter(), 0);
        t.run(|| {
            for (s, k, _) in &batch {
                found += stores[*s].get(k).map_or(0, <[u8]>::len);
            }
        });
        let queries: Vec<(usize, KvQuery)> = batch
            .into_iter()
            .map(|(s, k, _)| (s, KvQuery::Get { key: k }))
            .collect();
        tq.run(|| {
            for (s, q) in &queries {
                std::hint::black_box(stores[*s].read(q));
            }
        });
        let encoded: Vec<(usize, Bytes)> = queries.iter().map(|(s, q)| (*s, q.encode())).collect();
        tqe.run(|| {
            for (s, q) in &encoded {
                std::hint::black_box(StateMachine::query(&stores[*s], q).expect("get"));
            }
        });
    }
    assert_eq!(found, n * 16, "every key present");
    ns_row("engine (c) get (KvStore::get), random", n, &t);
    ns_row(
        "engine (d) get (KvStore::read, KvQuery::Get), random",
        n,
        &tq,
    );
    ns_row(
        "engine (d') get (StateMachine::query, encoded Get), random",
        n,
        &tqe,
    );
    // (e) Delete a random key and re-insert it: both halves touch the order.
    let mut t = Timed::default();
    let rounds = (total / ENGINE_BATCH_OPS / 2).max(1);
    for round in 0..rounds {
        let batch = engine_batch(
            random_ops(&mut rng, ENGINE_BATCH_OPS / 2).into_iter(),
            round as u64,
        );
        let cmds: Vec<(usize, KvCommand, KvCommand)> = batch
            .into_iter()
            .map(|(s, k, v)| {
                (
                    s,
                    KvCommand::Delete {
                        keys: vec![k.clone()],
                    },
                    KvCommand::put(k, v),
                )
            })
            .collect();
        t.run(|| {
            for (s, del, put) in &cmds {
                std::hint::black_box(stores[*s].execute(del));
                std::hint::black_box(stores[*s].execute(put));
            }
        });
    }
    ns_row(
        "engine (e) delete + re-insert (per command)",
        rounds * ENGINE_BATCH_OPS,
        &t,
    );
    assert_eq!(stores.iter().map(KvStore::len).sum::<usize>(), total);
    drop(stores);
    engine_apply_section(&mut rng);
}

/// Entries per `Rsm::apply` call in the engine-pattern apply rows (one
/// group's committed run in one shard turn); `FLOTILLA_BENCH_APPLY_RUN`.
fn engine_apply_batch() -> usize {
    env_usize("FLOTILLA_BENCH_APPLY_RUN", 32).max(1)
}

/// Runs of `FLOTILLA_BENCH_APPLY_RUN` no-session put entries, each run for one
/// store, the payloads sliced out of one buffer (as committed entries are
/// slices of a WAL / network buffer).
fn engine_runs(runs: &[(usize, Vec<u64>)], tag: u64) -> Vec<(usize, Vec<Bytes>)> {
    let mut buf = bytes::BytesMut::new();
    let mut spans = Vec::new();
    for (store, keys) in runs {
        let mut run = Vec::with_capacity(keys.len());
        for &n in keys {
            let mut key = (*store as u32 / 3).to_be_bytes().to_vec();
            key.extend_from_slice(&n.to_be_bytes());
            let mut value = (n ^ tag).to_le_bytes().to_vec();
            value.extend_from_slice(&tag.to_le_bytes());
            let at = buf.len();
            buf.extend_from_slice(&encode_noop(&KvCommand::put(key, value).encode()));
            run.push(at..buf.len());
        }
        spans.push((*store, run));
    }
    let buf = buf.freeze();
    spans
        .into_iter()
        .map(|(s, run)| (s, run.into_iter().map(|r| buf.slice(r)).collect()))
        .collect()
}

/// Applies runs to their stores' managers (timed), checking the results.
fn engine_apply(rsms: &mut [Rsm], runs: Vec<(usize, Vec<Bytes>)>, t: &mut Timed) {
    let mut out = Vec::with_capacity(engine_apply_batch());
    let mut failed = 0usize;
    t.run(|| {
        for (s, run) in runs {
            let rsm = &mut rsms[s];
            let mut index = rsm.applied_index();
            out.clear();
            rsm.apply(
                run.into_iter().map(|p| {
                    index += 1;
                    (index, p)
                }),
                &mut out,
            );
            failed += out.iter().filter(|a| a.result.is_err()).count();
        }
    });
    assert_eq!(failed, 0, "apply errors in the benchmark");
}

/// The engine's apply path: `Rsm::apply` (envelope, KV decode, map,
/// result) with runs of `FLOTILLA_BENCH_APPLY_RUN` entries per group: (f) fill,
/// (g) overwrite.
fn engine_apply_section(rng: &mut Rng) {
    let apply_run = engine_apply_batch();
    let total = ENGINE_STORES * ENGINE_KEYS_PER_STORE as usize;
    let mut rsms: Vec<Rsm> = (0..ENGINE_STORES).map(|_| kv()).collect();
    // Per store its keys in a random order; runs go to random stores.
    let mut left: Vec<Vec<u64>> = (0..ENGINE_STORES)
        .map(|_| {
            let mut keys: Vec<u64> = (0..ENGINE_KEYS_PER_STORE).collect();
            for i in (1..keys.len()).rev() {
                keys.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            keys
        })
        .collect();
    let mut live: Vec<usize> = (0..ENGINE_STORES).collect();
    let mut t = Timed::default();
    while !live.is_empty() {
        let mut runs = Vec::new();
        while runs.len() * apply_run < ENGINE_BATCH_OPS && !live.is_empty() {
            let at = (rng.next() % live.len() as u64) as usize;
            let s = live[at];
            let keys = &mut left[s];
            let run = keys.split_off(keys.len().saturating_sub(apply_run));
            if keys.is_empty() {
                live.swap_remove(at);
            }
            runs.push((s, run));
        }
        engine_apply(&mut rsms, engine_runs(&runs, 1), &mut t);
    }
    ns_row(
        &format!("engine (f) fill via Rsm::apply, runs of {apply_run}"),
        total,
        &t,
    );
    let mut t = Timed::default();
    let rounds = total / ENGINE_BATCH_OPS;
    for round in 0..rounds {
        let runs: Vec<(usize, Vec<u64>)> = (0..ENGINE_BATCH_OPS / apply_run)
            .map(|_| {
                let s = (rng.next() % ENGINE_STORES as u64) as usize;
                let keys = (0..apply_run)
                    .map(|_| (rng.next() >> 20) % ENGINE_KEYS_PER_STORE)
                    .collect();
                (s, keys)
            })
            .collect();
        engine_apply(&mut rsms, engine_runs(&runs, round as u64), &mut t);
    }
    let n = rounds * (ENGINE_BATCH_OPS / apply_run) * apply_run;
    ns_row(
        &format!("engine (g) overwrite via Rsm::apply, runs of {apply_run}"),
        n,
        &t,
    );
    engine_mixed_row(rng, apply_run);
    let keys: usize = rsms
        .iter()
        .map(|r| {
            let q = r.query(&KvQuery::Count.encode()).expect("count");
            match flotilla_rsm::KvResult::decode(q).expect("count result") {
                flotilla_rsm::KvResult::Count(n) => n as usize,
                other => panic!("count: {other:?}"),
            }
        })
        .sum();
    assert_eq!(keys, total);
}

/// (h) `flotilla bench`'s own pattern from its start: fresh stores, every
/// put a uniformly random key of its store's 20,834 (so early puts create
/// keys and later ones mostly overwrite: 1.5 puts per key leave ~78% of the
/// keys created, ~52% of the puts creations), through `Rsm::apply` in runs
/// of `run` entries to random stores.
fn engine_mixed_row(rng: &mut Rng, run: usize) {
    let total = ENGINE_STORES * ENGINE_KEYS_PER_STORE as usize;
    let mut rsms: Vec<Rsm> = (0..ENGINE_STORES).map(|_| kv()).collect();
    let mut t = Timed::default();
    let rounds = total * 3 / 2 / ENGINE_BATCH_OPS;
    let per_round = (ENGINE_BATCH_OPS / run).max(1);
    for round in 0..rounds {
        let runs: Vec<(usize, Vec<u64>)> = (0..per_round)
            .map(|_| {
                let s = (rng.next() % ENGINE_STORES as u64) as usize;
                let keys = (0..run)
                    .map(|_| (rng.next() >> 20) % ENGINE_KEYS_PER_STORE)
                    .collect();
                (s, keys)
            })
            .collect();
        engine_apply(&mut rsms, engine_runs(&runs, round as u64), &mut t);
    }
    ns_row(
        &format!("engine (h) random puts from empty via Rsm::apply, runs of {run}"),
        rounds * per_round * run,
        &t,
    );
}

/// The single-group pattern (`flotilla bench --groups 1`): one store,
/// `FLOTILLA_BENCH_BIG_KEYS` (default 1,000,000) random 12-byte keys, 16-byte
/// values, through [`KvStore::execute`]: (a) fill (all inserts), (b) random
/// overwrites of the filled keys.
fn big_map_section() {
    let n = env_usize("FLOTILLA_BENCH_BIG_KEYS", 1_000_000);
    println!("## one store, {n} random keys of 12 B, 16 B values");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let keys: Vec<u64> = (0..n).map(|_| rng.next()).collect();
    let mut store = KvStore::new();
    let mut t = Timed::default();
    for chunk in keys.chunks(ENGINE_BATCH_OPS) {
        let batch = engine_batch(chunk.iter().map(|&k| (0, k)), 1);
        engine_puts(std::slice::from_mut(&mut store), batch, &mut t);
    }
    ns_row("big map (a) fill: put new keys, random order", n, &t);
    assert!(store.len() > n - n / 1000);
    let mut t = Timed::default();
    for round in 0..n / ENGINE_BATCH_OPS {
        let ops: Vec<u64> = (0..ENGINE_BATCH_OPS)
            .map(|_| keys[(rng.next() % n as u64) as usize])
            .collect();
        let batch = engine_batch(ops.into_iter().map(|k| (0, k)), round as u64);
        engine_puts(std::slice::from_mut(&mut store), batch, &mut t);
    }
    ns_row(
        "big map (b) put overwrite, random",
        n / ENGINE_BATCH_OPS * ENGINE_BATCH_OPS,
        &t,
    );
}

fn main() {
    if std::env::var("FLOTILLA_BENCH_BIG_MAP_ONLY").is_ok_and(|v| v == "1") {
        big_map_section();
        return;
    }
    if std::env::var("FLOTILLA_BENCH_APPLY_ONLY").is_ok_and(|v| v == "1") {
        println!("## engine pattern through Rsm::apply only");
        engine_apply_section(&mut Rng(0x9e37_79b9_7f4a_7c15));
        return;
    }
    if std::env::var("FLOTILLA_BENCH_ENGINE_ONLY").is_ok_and(|v| v == "1") {
        engine_section();
        return;
    }
    let n16 = env_usize("FLOTILLA_BENCH_KEYS", 1_000_000);
    let snapshot_keys = env_usize("FLOTILLA_BENCH_SNAPSHOT_KEYS", 3_000_000);
    println!(
        "flotilla-rsm benchmark: {n16} commands per 16 B row, {} per 1 KiB row, \
         {SESSION_CLIENTS} session clients, snapshot of {snapshot_keys} keys",
        n16 / 4
    );
    if std::env::var("FLOTILLA_BENCH_SNAPSHOT_ONLY").is_ok_and(|v| v == "1") {
        read_section(n16);
        snapshot_section(snapshot_keys);
        return;
    }
    apply_section(n16);
    read_section(n16);
    snapshot_section(snapshot_keys);
    engine_section();
    big_map_section();
}
