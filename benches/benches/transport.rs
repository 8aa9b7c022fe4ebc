//! Transport benchmark: shards on two executors (one per core) over
//! loopback.
//!
//! * **one connection, one direction**, 16-byte and 1 KiB messages, batched
//!   (the real path: the sender task packs everything queued into one frame)
//!   versus one frame (and one write) per message;
//! * **fan-out** (the engine's pattern): one shard sends small messages to
//!   two peers (two transports on the other executor), `FANOUT_TURN_MESSAGES`
//!   per peer per turn, then yields, as a shard turn over 48 groups does;
//!   the receivers keep the last `FANOUT_RETAINED_BATCHES` batches alive, as
//!   a follower keeps received entries in its in-memory log until
//!   compaction.
//!
//! Every row reports CPU-ns per message: the CPU time of both executor
//! threads (`CLOCK_THREAD_CPUTIME_ID`) over the run, divided by the
//! messages delivered, and the receiving thread's share alone (rx-ns/msg).
//!
//! `cargo bench -p flotilla-benches --bench transport`
//! (`FLOTILLA_BENCH_SECS` scales the message counts, default 1;
//! `FLOTILLA_BENCH_SIZE=16|1024` runs one size of the one-connection cases;
//! `FLOTILLA_BENCH_FANOUT_ONLY=1` runs only the fan-out case;
//! `FLOTILLA_BENCH_REPEAT=n` repeats every case n times;
//! `FLOTILLA_BENCH_BATCH_BYTES` overrides the sender's `batch_bytes_max`.)

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::{
    ClusterId, InboundBatch, PeerId, Registry, SendError, Transport, TransportConfig,
};
use glommio::{LocalExecutorBuilder, Placement};

const CLUSTER: ClusterId = ClusterId(42);
const SENDER: PeerId = PeerId::new(1, 0);
const RECEIVERS: [PeerId; 2] = [PeerId::new(2, 0), PeerId::new(3, 0)];
/// Messages the producer queues per turn (per peer) before yielding, in the
/// one-connection cases.
const TURN_MESSAGES: u64 = 4096;
/// Fan-out case: messages per peer per turn (one per group of a shard
/// leading 48 groups), their size (a small append with one 16-byte entry),
/// and how many received batches stay alive (the follower's log).
const FANOUT_TURN_MESSAGES: u64 = 48;
const FANOUT_MESSAGE_BYTES: usize = 96;
const FANOUT_RETAINED_BATCHES: usize = 4096;

/// What one case sends.
#[derive(Clone, Copy)]
struct Case {
    size: usize,
    batched: bool,
    /// 1 or 2 receiving peers (on the second executor).
    peers: usize,
    /// Messages per peer per producer turn.
    turn_messages: u64,
    /// Received batches kept alive by the receiver.
    retained_batches: usize,
    /// Total messages (over all peers).
    messages: u64,
}

struct Outcome {
    messages: u64,
    /// Messages the sender lost to broken connections (re-dialled).
    lost: u64,
    payload_bytes: u64,
    elapsed: Duration,
    frames: u64,
    /// CPU time of both executor threads over the run.
    cpu: Duration,
    /// CPU time of the receiving executor's thread.
    cpu_rx: Duration,
}

fn executor(cpu: usize, name: &str) -> LocalExecutorBuilder {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    LocalExecutorBuilder::new(Placement::Fixed(cpu % ncpu))
        .name(name)
        .io_memory(2 << 20)
        .preempt_timer(Duration::from_millis(2))
}

/// Keeps timers armed at all times (glommio 0.9 lost-wake-up workaround, as
/// the engine's tick does). Two tickers with different periods: when glommio
/// parks an executor that still has runnable tasks, the timer that woke it
/// may belong to the very task left unrun; the other timer is still armed
/// and wakes it again. With a single ticker we saw the sender executor park
/// forever under CPU contention.
fn tickers() -> [glommio::Task<()>; 2] {
    [5, 7].map(|ms| {
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
            }
        })
    })
}

async fn wait_for<T>(rx: &mpsc::Receiver<T>) -> T {
    loop {
        if let Ok(v) = rx.try_recv() {
            return v;
        }
        glommio::timer::sleep(Duration::from_micros(200)).await;
    }
}

fn run_case(case: Case) -> Outcome {
    let peers = &RECEIVERS[..case.peers];
    let (addr_tx, addr_rx) = mpsc::channel();
    let (sender_addr_tx, sender_addr_rx) = mpsc::channel();
    // The sender tells the receiver how many messages it wrote in the end,
    // so a connection lost mid-run (counted) cannot hang the benchmark.
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let receiver = executor(1, "bench-rx")
        .spawn(move || async move {
            let _t = tickers();
            let reg = Registry::new();
            let ts: Vec<Transport> = peers
                .iter()
                .map(|&p| {
                    let mut c = TransportConfig::new(CLUSTER, p);
                    c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
                    Transport::new(c, reg.clone()).unwrap()
                })
                .collect();
            addr_tx
                .send(ts.iter().map(|t| t.local_addr()).collect::<Vec<_>>())
                .unwrap();
            reg.set_shard_addr(SENDER, wait_for(&sender_addr_rx).await);
            let cpu_start = flotilla_benches::thread_cpu_time();
            let mut got = 0u64;
            let mut bytes = 0u64;
            let mut first = None;
            let mut target = case.messages;
            let mut last = Instant::now();
            let mut retained: VecDeque<InboundBatch> = VecDeque::new();
            while got < target {
                let mut any = false;
                for t in &ts {
                    while let Some(b) = t.try_recv() {
                        any = true;
                        got += b.messages.len() as u64;
                        bytes += b.messages.iter().map(|m| m.len() as u64).sum::<u64>();
                        if case.retained_batches > 0 {
                            if retained.len() == case.retained_batches {
                                retained.pop_front();
                            }
                            retained.push_back(b);
                        }
                    }
                }
                if any {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                } else {
                    let readable = async {
                        match &ts[..] {
                            [a] => a.readable().await,
                            [a, b] => futures_lite::future::or(a.readable(), b.readable()).await,
                            _ => unreachable!("one or two receivers"),
                        }
                    };
                    futures_lite::future::or(readable, async {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    })
                    .await;
                }
                if let Ok(written) = done_rx.try_recv() {
                    target = written;
                }
            }
            let cpu = flotilla_benches::thread_cpu_time() - cpu_start;
            let elapsed = last - first.unwrap_or(last);
            let frames = ts
                .iter()
                .map(|t| t.metrics().peer(SENDER).frames_received)
                .sum();
            drop(retained);
            for t in &ts {
                t.shutdown().await;
            }
            Outcome {
                messages: got,
                lost: 0,
                payload_bytes: bytes,
                elapsed,
                frames,
                cpu,
                cpu_rx: cpu,
            }
        })
        .unwrap();
    let sender = executor(0, "bench-tx")
        .spawn(move || async move {
            let _t = tickers();
            let reg = Registry::new();
            let mut c = TransportConfig::new(CLUSTER, SENDER);
            c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
            if !case.batched {
                c.frame_messages_max = 1;
            }
            if let Some(b) = env_u64("FLOTILLA_BENCH_BATCH_BYTES") {
                c.batch_bytes_max = b as u32;
            }
            let queue_max = c.send_queue_messages_max as usize;
            let t = Transport::new(c, reg.clone()).unwrap();
            sender_addr_tx.send(t.local_addr()).unwrap();
            for (p, addr) in peers.iter().zip(wait_for(&addr_rx).await) {
                reg.set_shard_addr(*p, addr);
            }
            let cpu_start = flotilla_benches::thread_cpu_time();
            let payload = Bytes::from(vec![0xA5u8; case.size]);
            let mut sent = 0u64;
            'produce: while sent < case.messages {
                if peers.iter().any(|&p| t.queue_depth(p) > queue_max / 2) {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                    continue;
                }
                // One "shard turn" of sends to every peer, then let the
                // sender tasks run (as the engine's loop does when it awaits
                // its WAL write).
                for &p in peers {
                    for _ in 0..case.turn_messages {
                        if sent == case.messages {
                            break 'produce;
                        }
                        // Each message is its own allocation, as the engine's
                        // encoder makes them.
                        let msg = if case.peers > 1 {
                            Bytes::copy_from_slice(&payload)
                        } else {
                            payload.clone()
                        };
                        match t.send(p, msg) {
                            Ok(()) => sent += 1,
                            Err(SendError::QueueFull { .. }) => {
                                glommio::timer::sleep(Duration::from_micros(100)).await;
                                continue 'produce;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                futures_lite::future::yield_now().await;
            }
            // Stay up until everything is written (or lost and counted).
            let (written, lost) = loop {
                let m = t.metrics();
                let (w, l) = peers.iter().fold((0, 0), |(w, l), &p| {
                    let m = m.peer(p);
                    (w + m.messages_sent, l + m.messages_lost)
                });
                if w + l >= case.messages {
                    break (w, l);
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            };
            let cpu = flotilla_benches::thread_cpu_time() - cpu_start;
            let _ = done_tx.send(written); // the receiver may be done already
            glommio::timer::sleep(Duration::from_millis(20)).await;
            t.shutdown().await;
            (lost, cpu)
        })
        .unwrap();
    let mut outcome = receiver.join().unwrap();
    let (lost, cpu) = sender.join().unwrap();
    outcome.lost = lost;
    outcome.cpu += cpu;
    outcome
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn print_row(label: &str, case: Case, o: &Outcome) -> f64 {
    let secs = o.elapsed.as_secs_f64();
    let rate = o.messages as f64 / secs;
    println!(
        "{:>6} {:>10} {:>10} {:>8.3} {:>12.0} {:>8.1} {:>10.0} {:>9.0} {:>8} {:>10.1} {:>5}",
        case.size,
        label,
        o.messages,
        secs,
        rate,
        o.payload_bytes as f64 / secs / 1e6,
        o.cpu.as_nanos() as f64 / o.messages.max(1) as f64,
        o.cpu_rx.as_nanos() as f64 / o.messages.max(1) as f64,
        o.frames,
        o.messages as f64 / o.frames.max(1) as f64,
        o.lost,
    );
    rate
}

fn main() {
    let scale: f64 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let scaled = |n: u64| ((n as f64) * scale).max(1000.0) as u64;
    let repeat = env_u64("FLOTILLA_BENCH_REPEAT").unwrap_or(1).max(1);
    let one = |size, batched, messages| Case {
        size,
        batched,
        peers: 1,
        turn_messages: TURN_MESSAGES,
        retained_batches: 0,
        messages: scaled(messages),
    };
    let fanout = Case {
        size: FANOUT_MESSAGE_BYTES,
        batched: true,
        peers: 2,
        turn_messages: FANOUT_TURN_MESSAGES,
        retained_batches: FANOUT_RETAINED_BATCHES,
        messages: scaled(2_000_000),
    };
    // Warm-up (first timers, page faults, TCP slow start).
    run_case(Case {
        messages: 200_000,
        ..one(16, true, 200_000)
    });

    println!("transport benchmark: 2 executors (Fixed cpu 0 and 1), loopback");
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>12} {:>8} {:>10} {:>9} {:>8} {:>10} {:>5}",
        "size",
        "mode",
        "messages",
        "secs",
        "messages/s",
        "MB/s",
        "CPU-ns/msg",
        "rx-ns/msg",
        "frames",
        "msgs/frame",
        "lost"
    );
    let only_size = env_u64("FLOTILLA_BENCH_SIZE");
    let fanout_only = env_u64("FLOTILLA_BENCH_FANOUT_ONLY").is_some_and(|v| v != 0);
    for _ in 0..repeat {
        if !fanout_only {
            for (size, n_batched, n_single) in [
                (16usize, 4_000_000u64, 300_000u64),
                (1024, 1_000_000, 200_000),
            ] {
                if only_size.is_some_and(|s| s != size as u64) {
                    continue;
                }
                let b = one(size, true, n_batched);
                let rb = print_row("batched", b, &run_case(b));
                let s = one(size, false, n_single);
                let rs = print_row("1/frame", s, &run_case(s));
                println!(
                    "{size:>6} batched / one-frame-per-message = {:.1}x",
                    rb / rs
                );
            }
        }
        print_row("fan-out x2", fanout, &run_case(fanout));
    }
    println!(
        "fan-out x2: one sender, 2 peers, {FANOUT_TURN_MESSAGES} messages of \
         {FANOUT_MESSAGE_BYTES} B per peer per turn, receivers keep the last \
         {FANOUT_RETAINED_BATCHES} batches"
    );
}
