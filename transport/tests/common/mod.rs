//! Shared harness: one glommio executor per test, transports on loopback
//! port 0, and deadlines that fail with what was expected and what was seen.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::{ClusterId, PeerId, Registry, Transport, TransportConfig};
use futures_lite::future::or;
use glommio::{LocalExecutorBuilder, Placement};

pub const CLUSTER: ClusterId = ClusterId(0xF10);

/// The engine's executor watchdog (`flotilla::exec`), compiled into these
/// tests from the same file: this crate cannot depend on the engine.
#[path = "../../../engine/src/exec.rs"]
pub mod exec;

/// Runs `f` on a fresh executor (small io_memory, 2 ms preempt timer, stall
/// detection) with a hard deadline enforced from the test thread, outside
/// the executor. glommio 0.9 can park an executor with runnable tasks (bug
/// 2); two guards: the executor runs under the engine's watchdog
/// (`exec::spawn`: a signal ends the sleep when its heartbeat stops), and
/// periodic timers stay armed (as the engine's tick does).
pub fn run<F, Fut>(name: &str, deadline: Duration, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let builder = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .preempt_timer(Duration::from_millis(2))
        .detect_stalls(Some(Box::new(glommio::DefaultStallDetectionHandler {})));
    // Tests care little for idle wake-ups: a quick heartbeat and limit.
    let (beat, stall) = (Duration::from_millis(20), Duration::from_millis(100));
    let handle = exec::spawn_watched(builder, name.to_string(), beat, stall, move || async move {
        // Two tickers: if glommio parks with runnable tasks right after
        // one ticker's timer fired, the other's timer is still armed.
        let tickers = [5, 7].map(|ms| {
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(ms)).await;
                }
            })
        });
        f().await;
        drop(tickers);
    })
    .expect("spawn executor");
    let t0 = Instant::now();
    while !handle.is_finished() {
        assert!(
            t0.elapsed() < deadline,
            "test {name} did not finish within {deadline:?}"
        );
        std::thread::park_timeout(Duration::from_millis(2));
    }
    handle.join().expect("test executor panicked");
}

/// A config for tests: port 0 and short timeouts.
pub fn config(node: u64, shard: u32) -> TransportConfig {
    let mut c = TransportConfig::new(CLUSTER, PeerId::new(node, shard));
    c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    c.handshake_timeout = Duration::from_millis(300);
    c.dial_timeout = Duration::from_millis(500);
    c.reconnect_backoff_min = Duration::from_millis(5);
    c.reconnect_backoff_max = Duration::from_millis(50);
    c.snapshot_idle_timeout = Duration::from_secs(5);
    c
}

/// Starts a transport with `config` and publishes its address in `registry`.
pub fn start(config: TransportConfig, registry: &Registry) -> Transport {
    let local = config.local;
    let t = Transport::new(config, registry.clone()).expect("transport starts");
    registry.set_shard_addr(local, t.local_addr());
    t
}

/// Receives until `n` messages arrived or `deadline` passed; returns them
/// with their sender, in arrival order.
pub async fn recv_n(t: &Transport, n: usize, deadline: Duration) -> Vec<(PeerId, Bytes)> {
    let mut got = Vec::with_capacity(n);
    let until = Instant::now() + deadline;
    while got.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let b = or(async { t.recv().await }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match b {
            Some(b) => got.extend(b.messages.into_iter().map(|m| (b.from, m))),
            None => break,
        }
    }
    got
}

/// Polls `cond` every millisecond until it holds; panics after `deadline`
/// with `what` and the last observation.
pub async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    deadline: Duration,
    mut observe: impl FnMut() -> T,
    cond: impl Fn(&T) -> bool,
) -> T {
    let until = Instant::now() + deadline;
    loop {
        let seen = observe();
        if cond(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < until,
            "waited {deadline:?} for {what}; last seen: {seen:?}"
        );
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

pub fn msg(i: u64) -> Bytes {
    Bytes::from(format!("m{i:08}"))
}
