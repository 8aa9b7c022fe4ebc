//! One shard: a glommio executor that owns a disjoint set of groups.
//!
//! ```text
//!            API mailbox (flume, from any thread)      transport inbound
//!                         │                                   │
//!                         ▼                                   ▼
//!   ┌──────────────── raft task queue (1000 shares) ────────────────────┐
//!   │ ticker (always armed: glommio 0.9 bug 2) · mailbox · step · Ready │
//!   └───────────────────────────────┬───────────────────────────────────┘
//!                                   │ committed entries
//!   ┌──────────── apply task queue (250 shares, NotImportant) ──────────┐
//!   │ apply batches through rsm · snapshots · compaction                │
//!   └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The raft queue gets four times the CPU of the apply queue when both are
//! busy, and the short preempt timer (see [`crate::NodeHostConfig`]) bounds
//! how late a tick or a message is seen while bulk work runs.

// The shard event loop that drives GroupReplica (WAL, transport, apply
// queue) is the next slice of the engine issue; until it lands the glue is
// exercised by its own tests only.
#[allow(dead_code)]
pub(crate) mod group;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::{Latency, Shares};
use tracing::{debug, info};

/// Identifies a shard within a node (0-based).
pub type ShardId = u32;

/// Maps a group to the shard that owns it, on every node alike.
///
/// One deterministic function of the group id and the shard count: a
/// multiplicative (Fibonacci) hash so that consecutive group ids spread over
/// shards rather than striding.
///
/// # Panics
/// If `shard_count` is zero.
pub fn shard_of(group: u64, shard_count: usize) -> ShardId {
    assert!(shard_count > 0, "shard_count must be positive");
    let h = group.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Multiply-shift range reduction: unbiased and division-free.
    ((u128::from(h) * shard_count as u128) >> 64) as ShardId
}

/// Counters a shard keeps about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard's index in its node.
    pub shard: ShardId,
    /// Ticks fired since start.
    pub ticks: u64,
    /// The latest a tick has fired after its due time.
    pub tick_lateness_max: Duration,
}

/// Requests carried by a shard's mailbox.
pub(crate) enum ShardRequest {
    /// Report the shard's counters.
    Stats { reply: oneshot::Sender<ShardStats> },
    /// Run `units` slices of about 100 µs of CPU work on the apply queue,
    /// yielding between slices, then answer. Lets tests and benchmarks load
    /// a shard the way bulk apply does.
    #[cfg(test)]
    Burn {
        units: u32,
        reply: oneshot::Sender<()>,
    },
    /// Sent by the host's watchdog when the shard's ticks stop advancing: the
    /// message alone wakes a parked executor (see [`crate::host`]).
    Poke,
    /// Stop: finish the shard's tasks and answer.
    Shutdown { reply: oneshot::Sender<()> },
}

/// What a shard needs to start.
pub(crate) struct ShardSetup {
    pub(crate) node_id: u64,
    pub(crate) shard: ShardId,
    pub(crate) tick_interval: Duration,
    pub(crate) mailbox: flume::Receiver<ShardRequest>,
    /// Ticks fired so far, read by the host's watchdog thread.
    pub(crate) progress: Arc<AtomicU64>,
}

struct Counters {
    ticks: Cell<u64>,
    tick_lateness_max: Cell<Duration>,
}

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread runs a flotilla shard executor.
pub(crate) fn on_shard_thread() -> bool {
    ON_SHARD.with(Cell::get)
}

/// The shard's main future: runs until a `Shutdown` request.
pub(crate) async fn run(setup: ShardSetup) {
    ON_SHARD.with(|f| f.set(true));
    let ShardSetup {
        node_id,
        shard,
        tick_interval,
        mailbox,
        progress,
    } = setup;
    let ex = glommio::executor();
    let raft_tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "raft");
    let apply_tq = ex.create_task_queue(Shares::Static(250), Latency::NotImportant, "apply");
    let counters = Rc::new(Counters {
        ticks: Cell::new(0),
        tick_lateness_max: Cell::new(Duration::ZERO),
    });
    let stop = Rc::new(Cell::new(false));
    info!(node = node_id, shard, "shard started");

    // The ticker: one timer for all groups, never disarmed (bug 2 in
    // GLOMMIO.md: a parked executor still wakes for its timers).
    let ticker = {
        let counters = counters.clone();
        let stop = stop.clone();
        glommio::spawn_local_into(
            async move {
                let mut next = Instant::now() + tick_interval;
                while !stop.get() {
                    let now = Instant::now();
                    if next > now {
                        glommio::timer::sleep(next - now).await;
                    }
                    let late = Instant::now().saturating_duration_since(next);
                    if late > counters.tick_lateness_max.get() {
                        counters.tick_lateness_max.set(late);
                    }
                    counters.ticks.set(counters.ticks.get() + 1);
                    progress.store(counters.ticks.get(), Ordering::Relaxed);
                    // Fixed-rate schedule; after a long stall skip the missed
                    // ticks instead of firing a burst of them.
                    next += tick_interval;
                    if next < Instant::now() {
                        next = Instant::now() + tick_interval;
                    }
                }
            },
            raft_tq,
        )
        .expect("raft task queue exists")
    };

    while let Ok(req) = mailbox.recv_async().await {
        match req {
            ShardRequest::Stats { reply } => {
                let _ = reply.send(ShardStats {
                    shard,
                    ticks: counters.ticks.get(),
                    tick_lateness_max: counters.tick_lateness_max.get(),
                });
            }
            #[cfg(test)]
            ShardRequest::Burn { units, reply } => {
                glommio::spawn_local_into(
                    async move {
                        for _ in 0..units {
                            burn_cpu(Duration::from_micros(100));
                            glommio::yield_if_needed().await;
                        }
                        let _ = reply.send(());
                    },
                    apply_tq,
                )
                .expect("apply task queue exists")
                .detach();
            }
            ShardRequest::Poke => {}
            ShardRequest::Shutdown { reply } => {
                stop.set(true);
                ticker.await;
                debug!(node = node_id, shard, "shard stopped");
                let _ = reply.send(());
                return;
            }
        }
    }
    // Every sender is gone: the host was dropped without a shutdown.
    stop.set(true);
    ticker.await;
    let _ = apply_tq;
}

#[cfg(test)]
fn burn_cpu(d: Duration) {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < d {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_spreads() {
        assert_eq!(shard_of(7, 1), 0);
        let mut counts = [0usize; 4];
        for g in 1..=4000u64 {
            let s = shard_of(g, 4) as usize;
            assert!(s < 4);
            assert_eq!(shard_of(g, 4) as usize, s, "deterministic");
            counts[s] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
