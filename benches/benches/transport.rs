//! Transport benchmark: two shards (two executors, one per core) over
//! loopback, one connection, one direction. 16-byte and 1 KiB messages,
//! batched (the real path: the sender task packs everything queued into one
//! frame) versus one frame (and one write) per message.
//!
//! `cargo bench -p flotilla-benches --bench transport`
//! (`FLOTILLA_BENCH_SECS` scales the message counts, default 1;
//! `FLOTILLA_BENCH_SIZE=16|1024` runs one size; `FLOTILLA_BENCH_BATCH_BYTES`
//! overrides the sender's `batch_bytes_max`.)

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::{ClusterId, PeerId, Registry, SendError, Transport, TransportConfig};
use glommio::{LocalExecutorBuilder, Placement};

const CLUSTER: ClusterId = ClusterId(42);
const SENDER: PeerId = PeerId::new(1, 0);
const RECEIVER: PeerId = PeerId::new(2, 0);
/// Messages the producer queues per turn before yielding.
const TURN_MESSAGES: u64 = 4096;

struct Outcome {
    messages: u64,
    /// Messages the sender lost to broken connections (re-dialled).
    lost: u64,
    payload_bytes: u64,
    elapsed: Duration,
    frames: u64,
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

fn run_case(size: usize, batched: bool, messages: u64) -> Outcome {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (sender_addr_tx, sender_addr_rx) = mpsc::channel();
    // The sender tells the receiver how many messages it wrote in the end,
    // so a connection lost mid-run (counted) cannot hang the benchmark.
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let receiver = executor(1, "bench-rx")
        .spawn(move || async move {
            let _t = tickers();
            let reg = Registry::new();
            let mut c = TransportConfig::new(CLUSTER, RECEIVER);
            c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
            let t = Transport::new(c, reg.clone()).unwrap();
            addr_tx.send(t.local_addr()).unwrap();
            reg.set_shard_addr(SENDER, wait_for(&sender_addr_rx).await);
            let mut got = 0u64;
            let mut bytes = 0u64;
            let mut first = None;
            let mut target = messages;
            let mut last = Instant::now();
            while got < target {
                let b = futures_lite::future::or(async { t.recv().await }, async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    None
                })
                .await;
                if let Some(b) = b {
                    first.get_or_insert_with(Instant::now);
                    got += b.messages.len() as u64;
                    bytes += b.messages.iter().map(|m| m.len() as u64).sum::<u64>();
                    while let Some(b) = t.try_recv() {
                        got += b.messages.len() as u64;
                        bytes += b.messages.iter().map(|m| m.len() as u64).sum::<u64>();
                    }
                    last = Instant::now();
                }
                if let Ok(written) = done_rx.try_recv() {
                    target = written;
                }
            }
            let elapsed = last - first.unwrap_or(last);
            let frames = t.metrics().peer(SENDER).frames_received;
            t.shutdown().await;
            Outcome {
                messages: got,
                lost: 0,
                payload_bytes: bytes,
                elapsed,
                frames,
            }
        })
        .unwrap();
    let sender = executor(0, "bench-tx")
        .spawn(move || async move {
            let _t = tickers();
            let reg = Registry::new();
            let mut c = TransportConfig::new(CLUSTER, SENDER);
            c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
            if !batched {
                c.frame_messages_max = 1;
            }
            if let Some(b) = env_u64("FLOTILLA_BENCH_BATCH_BYTES") {
                c.batch_bytes_max = b as u32;
            }
            let queue_max = c.send_queue_messages_max as usize;
            let t = Transport::new(c, reg.clone()).unwrap();
            sender_addr_tx.send(t.local_addr()).unwrap();
            reg.set_shard_addr(RECEIVER, wait_for(&addr_rx).await);
            // Connect before measuring.
            let payload = Bytes::from(vec![0xA5u8; size]);
            let mut sent = 0u64;
            while sent < messages {
                if t.queue_depth(RECEIVER) > queue_max / 2 {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                    continue;
                }
                match t.send(RECEIVER, payload.clone()) {
                    Ok(()) => sent += 1,
                    Err(SendError::QueueFull { .. }) => {
                        glommio::timer::sleep(Duration::from_micros(100)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
                // One "shard turn" of sends, then let the sender task run
                // (as the engine's loop does when it awaits its WAL write).
                if sent % TURN_MESSAGES == 0 {
                    futures_lite::future::yield_now().await;
                }
            }
            // Stay up until everything is written (or lost and counted).
            let m = loop {
                let m = t.metrics().peer(RECEIVER);
                if m.messages_sent + m.messages_lost >= messages {
                    break m;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            };
            let _ = done_tx.send(m.messages_sent); // the receiver may be done already
            glommio::timer::sleep(Duration::from_millis(20)).await;
            t.shutdown().await;
            m.messages_lost
        })
        .unwrap();
    let mut outcome = receiver.join().unwrap();
    outcome.lost = sender.join().unwrap();
    outcome
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let scale: f64 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let cases = [
        (16usize, 4_000_000u64, 300_000u64),
        (1024, 1_000_000, 200_000),
    ];
    // Warm-up (first timers, page faults, TCP slow start).
    run_case(16, true, 200_000);

    println!("transport benchmark: 2 executors (Fixed cpu 0 and 1), loopback, one connection, one direction");
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>14} {:>9} {:>10} {:>10} {:>6}",
        "size", "mode", "messages", "secs", "messages/s", "MB/s", "frames", "msgs/frame", "lost"
    );
    let only_size = env_u64("FLOTILLA_BENCH_SIZE");
    for (size, n_batched, n_single) in cases {
        if only_size.is_some_and(|s| s != size as u64) {
            continue;
        }
        let mut rates = vec![];
        for (batched, n) in [(true, n_batched), (false, n_single)] {
            let n = ((n as f64) * scale).max(1000.0) as u64;
            let o = run_case(size, batched, n);
            let secs = o.elapsed.as_secs_f64();
            let rate = o.messages as f64 / secs;
            rates.push(rate);
            println!(
                "{:>6} {:>10} {:>10} {:>9.3} {:>14.0} {:>9.1} {:>10} {:>10.1} {:>6}",
                size,
                if batched { "batched" } else { "1/frame" },
                o.messages,
                secs,
                rate,
                o.payload_bytes as f64 / secs / 1e6,
                o.frames,
                o.messages as f64 / o.frames.max(1) as f64,
                o.lost,
            );
        }
        println!(
            "{size:>6} batched / one-frame-per-message = {:.1}x",
            rates[0] / rates[1]
        );
    }
}
