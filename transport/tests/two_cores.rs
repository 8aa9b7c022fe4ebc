//! Two transports on two executors (two threads, as two shards of two nodes
//! would be): a bulk one-way stream, batched and one frame per message, each
//! with a deadline enforced from outside the executors, so a parked executor
//! (glommio 0.9's lost wake-up) fails the test instead of hanging it.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_transport::{ClusterId, PeerId, Registry, SendError, Transport, TransportConfig};
use glommio::{LocalExecutorBuilder, Placement};

const SENDER: PeerId = PeerId::new(1, 0);
const RECEIVER: PeerId = PeerId::new(2, 0);

/// The engine's executor watchdog (`flotilla::exec`), compiled in from the
/// same file: this crate cannot depend on the engine.
#[path = "../../engine/src/exec.rs"]
#[allow(dead_code)]
mod exec;

fn builder() -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .preempt_timer(Duration::from_millis(2))
}

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
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

fn config(local: PeerId, frame_messages_max: u32) -> TransportConfig {
    let mut c = TransportConfig::new(ClusterId(3), local);
    c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    c.frame_messages_max = frame_messages_max;
    c.reconnect_backoff_min = Duration::from_millis(5);
    c
}

/// Streams `n` messages; returns (received in order, frames received).
fn stream(n: u64, frame_messages_max: u32) -> (u64, u64) {
    let (rx_addr_tx, rx_addr_rx) = mpsc::channel();
    let (tx_addr_tx, tx_addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx2 = done_tx.clone();
    let receiver = exec::spawn(builder(), "two-cores-rx".into(), move || async move {
        let _t = tickers();
        let reg = Registry::new();
        let t = Transport::new(config(RECEIVER, frame_messages_max), reg.clone()).unwrap();
        rx_addr_tx.send(t.local_addr()).unwrap();
        reg.set_shard_addr(SENDER, wait_for(&tx_addr_rx).await);
        let mut next = 0u64;
        while next < n {
            let b = t.recv().await.unwrap();
            assert_eq!(b.from, SENDER);
            for m in b.messages {
                assert_eq!(
                    &m[..],
                    &next.to_le_bytes()[..],
                    "message {next} out of order"
                );
                next += 1;
            }
        }
        let frames = t.metrics().peer(SENDER).frames_received;
        t.shutdown().await;
        done_tx.send(("rx", next, frames)).unwrap();
    })
    .unwrap();
    let sender = exec::spawn(builder(), "two-cores-tx".into(), move || async move {
        let _t = tickers();
        let reg = Registry::new();
        let t = Transport::new(config(SENDER, frame_messages_max), reg.clone()).unwrap();
        tx_addr_tx.send(t.local_addr()).unwrap();
        reg.set_shard_addr(RECEIVER, wait_for(&rx_addr_rx).await);
        let mut i = 0u64;
        while i < n {
            match t.send(RECEIVER, Bytes::copy_from_slice(&i.to_le_bytes())) {
                Ok(()) => i += 1,
                Err(SendError::QueueFull { .. }) => {
                    glommio::timer::sleep(Duration::from_micros(200)).await
                }
                Err(e) => panic!("{e}"),
            }
            if i % 1024 == 0 {
                futures_lite::future::yield_now().await;
            }
        }
        while t.metrics().peer(RECEIVER).messages_sent < n {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let m = t.metrics().peer(RECEIVER);
        assert_eq!(m.messages_lost, 0);
        glommio::timer::sleep(Duration::from_millis(50)).await;
        t.shutdown().await;
        done_tx2
            .send(("tx", m.messages_sent, m.frames_sent))
            .unwrap();
    })
    .unwrap();
    let mut got = None;
    for _ in 0..2 {
        let (who, count, frames) = done_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("stream of {n} messages did not finish within 60 s (an executor parked?)")
            });
        if who == "rx" {
            got = Some((count, frames));
        }
    }
    receiver.join().unwrap();
    sender.join().unwrap();
    got.unwrap()
}

#[test]
fn bulk_stream_between_two_executors_batched() {
    let (n, frames) = stream(500_000, 65_536);
    assert_eq!(n, 500_000);
    assert!(
        frames < 5_000,
        "{frames} frames for 500,000 messages: batching failed"
    );
}

#[test]
fn bulk_stream_between_two_executors_one_frame_per_message() {
    let (n, frames) = stream(50_000, 1);
    assert_eq!((n, frames), (50_000, 50_000));
}
