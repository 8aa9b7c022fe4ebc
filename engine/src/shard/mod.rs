//! One shard: a glommio executor that owns a disjoint set of groups.
//!
//! ```text
//!            API mailbox (flume, from any thread)      transport inbound
//!                         │                                   │
//!                         ▼                                   ▼
//!   ┌──────────────── raft task queue (1000 shares) ────────────────────┐
//!   │ ticker (always armed: glommio 0.9 bug 2) · mailbox · step ·       │
//!   │ driver turns: Ready, WAL batch, send, apply committed entries     │
//!   │ group by group (yielding whenever the preempt timer says so)      │
//!   └───────────────────────────────────────────────────────────────────┘
//!   ┌──────────── client task queue (500 shares) ───────────────────────┐
//!   │ tasks callers spawn here (NodeHost::spawn_on_shard): a node's     │
//!   │ Redis/HTTP connections, `flotilla bench` load generators          │
//!   └───────────────────────────────────────────────────────────────────┘
//!   ┌──────────── bulk task queue (250 shares) ─────────────────────────┐
//!   │ snapshots: capture + file, streaming one to a follower            │
//!   └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! When all are busy the raft queue gets four times the CPU of the bulk
//! queue and twice the client queue's, and the short preempt timer (see
//! [`crate::NodeHostConfig`]) bounds how late a tick or a message is seen
//! while other work runs. Applying committed entries stays on the raft
//! queue: it is ordered with the turns (a Ready's entries apply before the
//! next Ready of the group is taken) and bounded per group by the
//! pipeline; between groups it yields. Installing a received snapshot
//! stays there too: it hands Raft the `InstallSnapshot` message right
//! after the state machine, and on the bulk queue that gap widened (see
//! docs/benchmark-log.md, session 20).

pub mod driver;
pub(crate) mod forward;
pub(crate) mod group;
pub(crate) mod meta;
pub(crate) mod reply;
pub(crate) mod snapshot;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::{Latency, Shares};
use tracing::{debug, error, info, warn};

use crate::api::{MembershipInfo, ReadConsistency};
use crate::raft::{ConfChange, GroupId, NodeId};

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
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ShardStats {
    /// The shard's index in its node.
    pub shard: ShardId,
    /// Ticks fired since start.
    pub ticks: u64,
    /// The latest a tick has fired after its due time.
    pub tick_lateness_max: Duration,
    /// Groups hosted by the shard.
    pub groups: u64,
    /// Of which this node leads.
    pub leaders: u64,
    /// Groups not quiesced (ticked every tick).
    pub live_groups: u64,
    /// Entries appended to the shard's logs (as leader or follower).
    pub entries_appended: u64,
    /// Committed entries handed to the state machines.
    pub entries_committed: u64,
    /// Times a group on this shard became leader here.
    pub leader_elected: u64,
    /// Driver turns (each: collect Readys, one WAL write, apply).
    pub turns: u64,
    /// Proposals and reads waiting in the shard's groups.
    pub requests_pending: u64,
    /// Raft messages that did not decode (dropped, counted).
    pub decode_errors: u64,
    /// Snapshots taken here.
    pub snapshots_taken: u64,
    /// Leadership transfers started here to balance leaders over nodes.
    pub balance_transfers: u64,
    /// Balancing rounds that counted the leaders of every group (the others
    /// found nothing changed since the shard was last balanced).
    pub balance_walks: u64,
    /// Forwarded requests answered from this node's own log because their
    /// leader failed before saying where it appended them.
    pub forwards_settled_from_log: u64,
    /// Raft messages refused because they cannot belong to their group's
    /// log (e.g. from a node of another cluster on a reused address).
    pub impossible_messages: u64,
    /// Idle followers woken because their leader's connection to this shard
    /// ended (it may have stopped or died).
    pub peer_loss_wakes: u64,
    /// Leadership transfers to this node refused because it was stopping.
    pub transfers_refused_stopping: u64,
    /// Snapshots streamed to followers.
    pub snapshots_sent: u64,
    /// Snapshots received and installed.
    pub snapshots_installed: u64,
    /// The shard's WAL counters.
    pub wal: flotilla_storage::WalStats,
    /// The shard's transport counters, per peer.
    pub transport: flotilla_transport::TransportMetrics,
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
    /// Start a group as a founding member.
    StartGroup {
        group: GroupId,
        members: Vec<(NodeId, SocketAddr)>,
        reply: reply::ReplyTx<()>,
    },
    /// Stop this node's replica of a group and remove its data.
    StopGroup {
        group: GroupId,
        reply: reply::ReplyTx<()>,
    },
    /// Start an empty replica that waits to be added.
    JoinGroup {
        group: GroupId,
        peers: Vec<(NodeId, SocketAddr)>,
        witness: bool,
        reply: reply::ReplyTx<()>,
    },
    /// Propose an encoded rsm command (forwarded to the leader if `forward`).
    Propose {
        group: GroupId,
        cmd: Bytes,
        forward: bool,
        reply: reply::ReplyTx<Bytes>,
    },
    /// Propose every command of `cmds` (as `Propose` each), answered
    /// together on one channel, each with its own result.
    ProposeBatch {
        group: GroupId,
        cmds: Vec<Bytes>,
        forward: bool,
        reply: reply::BatchTx<Bytes>,
    },
    /// A read.
    Read {
        group: GroupId,
        query: Bytes,
        consistency: ReadConsistency,
        reply: reply::ReplyTx<Bytes>,
    },
    /// Propose a membership change.
    ChangeMembership {
        group: GroupId,
        change: ConfChange,
        reply: reply::ReplyTx<Bytes>,
    },
    /// Start a leadership transfer.
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: reply::ReplyTx<Bytes>,
    },
    /// The membership a replica knows.
    Membership {
        group: GroupId,
        reply: oneshot::Sender<Option<MembershipInfo>>,
    },
    /// Take a snapshot of a group now.
    Snapshot {
        group: GroupId,
        reply: reply::ReplyTx<u64>,
    },
    /// Status of every group of the shard.
    AllStatus {
        reply: oneshot::Sender<Vec<driver::GroupStatus>>,
    },
    /// Answer with the group's applied index here once it is above `after`.
    WaitApplied {
        group: GroupId,
        after: u64,
        reply: reply::ReplyTx<u64>,
    },
    /// Leader, term, commit and applied index of a group.
    Status {
        group: GroupId,
        reply: oneshot::Sender<Option<driver::GroupStatus>>,
    },
    /// Run a caller's task on this shard's executor (its client queue).
    Spawn {
        make: SpawnFn,
        reply: oneshot::Sender<()>,
    },
    /// Stop: finish the shard's tasks and answer.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Deletes snapshot files of groups the WAL does not hold: left by a stop
/// whose WAL removal became durable before its files were deleted (a crash
/// in between). A group started again under that id must not find them.
async fn remove_orphan_snapshots(driver: &driver::SharedDriver, node_id: u64, shard: ShardId) {
    let dir = driver.borrow().snapshot_dir();
    let files = match flotilla_storage::snapshot::list_snapshots(&dir).await {
        Ok(files) => files,
        Err(e) => {
            warn!(node = node_id, shard, error = %e, "cannot list snapshot files");
            return;
        }
    };
    let mut orphans: Vec<u64> = files
        .iter()
        .map(|f| f.group)
        .filter(|g| driver.borrow().group(GroupId(*g)).is_none())
        .collect();
    orphans.dedup();
    for group in orphans {
        match flotilla_storage::snapshot::remove_older_snapshots(&dir, group, u64::MAX, u64::MAX)
            .await
        {
            Ok(n) => info!(
                node = node_id,
                shard,
                group,
                files = n,
                "removed snapshot files of a group the WAL no longer holds"
            ),
            Err(e) => {
                warn!(node = node_id, shard, group, error = %e, "cannot remove orphan snapshot files")
            }
        }
    }
}

/// Builds, on the shard's thread, a task to run there (see
/// [`crate::NodeHost::spawn_on_shard`]).
pub type SpawnFn =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// What a shard needs to start.
pub(crate) struct ShardSetup {
    pub(crate) node_id: u64,
    pub(crate) cluster_id: u64,
    pub(crate) shard: ShardId,
    pub(crate) shard_count: usize,
    pub(crate) tick_interval: Duration,
    pub(crate) mailbox: flume::Receiver<ShardRequest>,
    pub(crate) raft_addr: SocketAddr,
    pub(crate) wal_dir: PathBuf,
    pub(crate) snapshot_dir: PathBuf,
    pub(crate) snapshot_entries: u64,
    pub(crate) snapshot_log_ratio: f64,
    pub(crate) leader_balance_interval: Duration,
    pub(crate) compaction_overhead_entries: u64,
    pub(crate) wal_options: flotilla_storage::WalOptions,
    /// Largest command of a proposal (`NodeHostConfig::entry_limit_bytes`).
    pub(crate) entry_bytes_max: usize,
    pub(crate) raft_defaults: crate::raft::Config,
    pub(crate) started: oneshot::Sender<Result<(), String>>,
}

struct Counters {
    ticks: Cell<u64>,
    tick_lateness_max: Cell<Duration>,
}

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
    /// Set on every glommio executor thread of ours (shards, and any
    /// executor running [`keep_timers_armed`]): deadlines there use glommio
    /// timers rather than a round trip through async-io's reactor thread.
    static GLOMMIO_TIMERS: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread runs a glommio executor of ours, whose timers
/// `host::sleep_anywhere` may use.
pub(crate) fn glommio_timers_here() -> bool {
    GLOMMIO_TIMERS.with(Cell::get)
}

/// Whether the calling thread runs a flotilla shard executor.
#[cfg(test)]
pub(crate) fn on_shard_thread() -> bool {
    ON_SHARD.with(Cell::get)
}

/// The shard's main future: runs until a `Shutdown` request.
pub(crate) async fn run(setup: ShardSetup) {
    ON_SHARD.with(|f| f.set(true));
    GLOMMIO_TIMERS.with(|f| f.set(true));
    let ShardSetup {
        node_id,
        cluster_id,
        shard,
        shard_count,
        tick_interval,
        mailbox,
        raft_addr,
        wal_dir,
        snapshot_dir,
        snapshot_entries,
        snapshot_log_ratio,
        leader_balance_interval,
        compaction_overhead_entries,
        wal_options,
        entry_bytes_max,
        raft_defaults,
        started,
    } = setup;
    let ex = glommio::executor();
    let raft_tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "raft");
    // Bulk work: taking snapshots (capture + file) and streaming them to
    // followers.
    let bulk_tq = ex.create_task_queue(Shares::Static(250), Latency::NotImportant, "bulk");
    // Tasks callers run on the shard (a node's client connections): half
    // the raft queue's share when both are busy.
    let client_tq = ex.create_task_queue(Shares::Static(500), Latency::NotImportant, "client");
    let counters = Rc::new(Counters {
        ticks: Cell::new(0),
        tick_lateness_max: Cell::new(Duration::ZERO),
    });
    let stop = Rc::new(Cell::new(false));

    // Before any I/O: a reserve of armed timers (see `keep_timers_armed`),
    // or the executor can park for good while the WAL opens (bug 2).
    // Its own stop flag: the reserve must stay armed through shutdown too
    // (transport and WAL close await I/O; a parked executor would never
    // finish them — seen as a shutdown hanging for minutes).
    let keepalive_stop = Rc::new(Cell::new(false));
    let keepalive = glommio::spawn_local_into(
        keep_timers_armed(tick_interval, TIMER_RESERVE, keepalive_stop.clone()),
        raft_tq,
    )
    .expect("raft task queue exists");
    // The reserve is armed only once its task first runs: an executor that
    // parks before that (bug 2) would never run it, and a fresh node then
    // hung before its first log line (CI: "node starting", then 60 s of
    // silence, the shard thread in io_cqring_wait). These timers are armed
    // now, by this task, and kept until the shard's loop is running.
    let mut bridge: Vec<glommio::timer::Timer> = (1..=TIMER_RESERVE as u32)
        .map(|i| glommio::timer::Timer::new(tick_interval * i))
        .collect();
    for t in bridge.iter_mut() {
        let _ = futures_lite::future::poll_once(t).await;
    }

    // The WAL first: its open works around glommio 0.9.0 bug 1.
    let (wal, recovered) = match flotilla_storage::Wal::open(&wal_dir, wal_options).await {
        Ok((wal, recovery)) => (Rc::new(wal), recovery.groups),
        Err(e) => {
            // Close the mailbox first: a host that hears of the failure
            // and sends `Shutdown` finds it closed instead of waiting for
            // an answer from a shard that has stopped reading.
            drop(mailbox);
            let _ = started.send(Err(format!(
                "shard {shard}: WAL {}: {e}",
                wal_dir.display()
            )));
            stop.set(true);
            keepalive_stop.set(true);
            keepalive.await;
            return;
        }
    };
    let registry = flotilla_transport::Registry::new();
    registry.set_node(
        flotilla_transport::NodeId(node_id),
        raft_addr,
        shard_count as u32,
    );
    let mut tcfg = flotilla_transport::TransportConfig::new(
        flotilla_transport::ClusterId(cluster_id),
        flotilla_transport::PeerId::new(node_id, shard),
    );
    tcfg.task_queue = Some(raft_tq);
    // A message carrying the largest entry (or its forwarded proposal).
    let frame_bytes = entry_bytes_max.saturating_add(crate::config::ENTRY_OVERHEAD_BYTES);
    tcfg.frame_bytes_max = tcfg
        .frame_bytes_max
        .max(u32::try_from(frame_bytes).unwrap_or(u32::MAX));
    let transport = match flotilla_transport::Transport::new(tcfg, registry) {
        Ok(t) => Rc::new(t),
        Err(e) => {
            drop(mailbox); // closed before reporting (see the WAL failure)
            let _ = started.send(Err(format!("shard {shard}: raft listener: {e}")));
            bounded(wal.close(), node_id, shard, "WAL close").await;
            stop.set(true);
            keepalive_stop.set(true);
            keepalive.await;
            return;
        }
    };
    let driver: driver::SharedDriver = Rc::new(std::cell::RefCell::new(driver::Driver::new(
        NodeId(node_id),
        shard_count,
        raft_defaults,
        transport,
        wal.clone(),
    )));
    driver.borrow_mut().entry_bytes_max = entry_bytes_max;
    driver.borrow_mut().configure_snapshots(
        snapshot_dir,
        snapshot_entries,
        snapshot_log_ratio,
        compaction_overhead_entries,
    );
    if !leader_balance_interval.is_zero() {
        let ticks = leader_balance_interval.as_nanos() / tick_interval.as_nanos().max(1);
        driver
            .borrow_mut()
            .configure_balance(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
    }
    match driver::restore_groups(&driver, recovered).await {
        Ok(n) => {
            if n > 0 {
                info!(node = node_id, shard, groups = n, "groups recovered");
            }
            remove_orphan_snapshots(&driver, node_id, shard).await;
        }
        Err(e) => {
            error!(node = node_id, shard, error = %e, "recovery failed");
            drop(mailbox); // closed before reporting (see the WAL failure)
            let _ = started.send(Err(format!("shard {shard}: recovery: {e}")));
            let transport = driver.borrow().transport();
            bounded(transport.shutdown(), node_id, shard, "transport shutdown").await;
            bounded(wal.close(), node_id, shard, "WAL close").await;
            stop.set(true);
            keepalive_stop.set(true);
            keepalive.await;
            return;
        }
    }
    let kick = Rc::new(glommio::sync::Semaphore::new(1));
    driver
        .borrow()
        .transport()
        .set_snapshot_handler(Rc::new(snapshot::Inbox::new(driver.clone(), kick.clone())));
    let _ = started.send(Ok(()));
    info!(node = node_id, shard, "shard started");

    let driver_task = glommio::spawn_local_into(
        driver::drive(driver.clone(), kick.clone(), stop.clone(), bulk_tq),
        raft_tq,
    )
    .expect("raft task queue exists");
    drop(bridge);

    // Inbound raft traffic: decode and step, then kick the driver.
    let inbound = {
        let driver = driver.clone();
        let kick = kick.clone();
        let stop = stop.clone();
        glommio::spawn_local_into(
            async move {
                let recv = driver.borrow().transport();
                while !stop.get() {
                    let Some(batch) = recv.recv().await else {
                        break;
                    };
                    driver.borrow_mut().on_inbound(batch);
                    while let Some(batch) = recv.try_recv() {
                        driver.borrow_mut().on_inbound(batch);
                    }
                    // Answers decided at once (refusals) go now; the
                    // others go in the turn that applies their entry.
                    driver.borrow_mut().flush_remote_answers();
                    kick.signal(1);
                }
            },
            raft_tq,
        )
        .expect("raft task queue exists")
    };

    // The ticker: one timer for all groups, and from now on also the
    // reserve of armed timers (bug 2): its reserve timers are the ticks, so
    // an idle shard wakes once per tick, not once per tick plus once per
    // reserve timer. The start-up reserve stops (it served the WAL open and
    // the restore); a new one covers the shutdown after the ticker ends.
    keepalive_stop.set(true);
    let ticker = {
        let counters = counters.clone();
        let stop = stop.clone();
        let driver = driver.clone();
        let kick = kick.clone();
        glommio::spawn_local_into(
            armed_ticks(tick_interval, TIMER_RESERVE, stop, move |late| {
                if late > counters.tick_lateness_max.get() {
                    counters.tick_lateness_max.set(late);
                }
                counters.ticks.set(counters.ticks.get() + 1);
                driver.borrow_mut().tick(late, tick_interval);
                kick.signal(1);
            }),
            raft_tq,
        )
        .expect("raft task queue exists")
    };

    /// Longest a stopping shard waits for its leaderships to move.
    const HAND_OFF_WAIT: Duration = Duration::from_secs(2);
    let mut shutdown_reply = None;
    while let Ok(req) = mailbox.recv_async().await {
        match req {
            ShardRequest::Stats { reply } => {
                let d = driver.borrow();
                let _ = reply.send(d.stats(
                    shard,
                    counters.ticks.get(),
                    counters.tick_lateness_max.get(),
                ));
            }
            ShardRequest::JoinGroup {
                group,
                peers,
                witness,
                reply,
            } => {
                let r = driver.borrow_mut().join_group(group, &peers, witness);
                let _ = reply.send(r);
                kick.signal(1);
            }
            ShardRequest::ChangeMembership {
                group,
                change,
                reply,
            } => {
                driver.borrow_mut().submit(
                    group,
                    forward::ClientOp::ConfChange(change),
                    true,
                    reply.into(),
                );
                kick.signal(1);
            }
            ShardRequest::TransferLeader { group, to, reply } => {
                driver.borrow_mut().submit(
                    group,
                    forward::ClientOp::Transfer(to),
                    true,
                    reply.into(),
                );
                kick.signal(1);
            }
            ShardRequest::Membership { group, reply } => {
                let _ = reply.send(driver.borrow().membership(group));
            }
            ShardRequest::Snapshot { group, reply } => {
                driver.borrow_mut().request_snapshot(group, reply.into());
                kick.signal(1);
            }
            ShardRequest::AllStatus { reply } => {
                let _ = reply.send(driver.borrow().all_status());
            }
            ShardRequest::StartGroup {
                group,
                members,
                reply,
            } => {
                let r = driver.borrow_mut().start_group(group, &members);
                let _ = reply.send(r);
                kick.signal(1);
            }
            ShardRequest::Propose {
                group,
                cmd,
                forward,
                reply,
            } => {
                driver.borrow_mut().submit(
                    group,
                    forward::ClientOp::Propose(cmd),
                    forward,
                    reply.into(),
                );
                kick.signal(1);
            }
            ShardRequest::ProposeBatch {
                group,
                cmds,
                forward,
                reply,
            } => {
                let batch = reply::BatchAnswer::new(cmds.len(), reply);
                let mut d = driver.borrow_mut();
                for (slot, cmd) in cmds.into_iter().enumerate() {
                    d.submit(
                        group,
                        forward::ClientOp::Propose(cmd),
                        forward,
                        reply::Reply::in_batch(&batch, slot),
                    );
                }
                drop(d);
                kick.signal(1);
            }
            ShardRequest::Read {
                group,
                query,
                consistency,
                reply,
            } => {
                driver
                    .borrow_mut()
                    .read(group, query, consistency, reply.into());
                kick.signal(1);
            }
            ShardRequest::StopGroup { group, reply } => {
                driver.borrow_mut().stop_group(group, reply);
                kick.signal(1);
            }
            ShardRequest::WaitApplied {
                group,
                after,
                reply,
            } => {
                driver.borrow_mut().wait_applied(group, after, reply);
            }
            ShardRequest::Status { group, reply } => {
                let _ = reply.send(driver.borrow().group_status(group));
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
                    bulk_tq,
                )
                .expect("bulk task queue exists")
                .detach();
            }
            ShardRequest::Spawn { make, reply } => {
                match glommio::spawn_local_into(make(), client_tq) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => {
                        error!(node = node_id, shard, error = %e, "cannot spawn a client task")
                    }
                }
                let _ = reply.send(());
            }
            ShardRequest::Shutdown { reply } => {
                // Hand the groups led here to caught-up followers first, so
                // that their clients (and requests other nodes forwarded
                // here) carry on with a new leader instead of waiting out an
                // election timeout or their deadlines.
                // Again each tick while transfers are under way: one may
                // time out, or a group may have come back before this node
                // began refusing transfers.
                let deadline = std::time::Instant::now() + HAND_OFF_WAIT;
                let mut moving = driver.borrow_mut().hand_off_leadership();
                let handed = moving;
                while moving > 0 && std::time::Instant::now() < deadline {
                    kick.signal(1);
                    glommio::timer::sleep(tick_interval).await;
                    moving = driver.borrow_mut().hand_off_leadership();
                }
                // Flush what the last call queued (heartbeats waking the
                // followers of groups nobody could take over).
                kick.signal(1);
                if handed > 0 {
                    debug!(
                        node = node_id,
                        shard,
                        handed,
                        still_leading = driver.borrow().leads_any(),
                        "leadership handed off before shutdown"
                    );
                }
                shutdown_reply = Some(reply);
                break;
            }
        }
    }
    // Shutdown (or every sender gone): stop the tasks, fail what waits,
    // close the transport and the WAL.
    stop.set(true);
    kick.signal(1);
    keepalive.await;
    // The ticker's reserve ends with it: arm a new one for the rest of the
    // shutdown (transport and WAL close await I/O).
    let keepalive_stop = Rc::new(Cell::new(false));
    let keepalive = glommio::spawn_local_into(
        keep_timers_armed(tick_interval, TIMER_RESERVE, keepalive_stop.clone()),
        raft_tq,
    )
    .expect("raft task queue exists");
    ticker.await;
    driver_task.await;
    driver.borrow_mut().fail_all();
    let transport = driver.borrow().transport();
    transport.shutdown().await;
    inbound.await;
    if let Err(e) = wal.close().await {
        error!(node = node_id, shard, error = %e, "WAL close failed");
    }
    keepalive_stop.set(true);
    keepalive.await;
    debug!(node = node_id, shard, "shard stopped");
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
}

/// Runs a clean-up step of a failed start for at most 5 s: the start error
/// must reach the caller even if a step cannot finish.
async fn bounded<T>(
    step: impl std::future::Future<Output = T>,
    node: u64,
    shard: ShardId,
    what: &str,
) {
    let done = crate::host::with_deadline(
        async {
            step.await;
            Ok(())
        },
        Duration::from_secs(5),
    )
    .await
    .is_ok();
    if !done {
        error!(
            node,
            shard, "{what} did not finish within 5 s after a failed start"
        );
    }
}

/// How many timers [`keep_timers_armed`] keeps registered ahead.
pub const TIMER_RESERVE: usize = 64;

/// Keeps `reserve` timers armed at `period` intervals ahead of now.
///
/// glommio 0.9.0 can park an executor whose task queues are runnable (bug 2
/// in GLOMMIO.md): it finds `need_preempt()` already set (its thread was
/// descheduled past the preempt timer), runs nothing, and sleeps until an
/// armed timer or a foreign wake-up. One periodic timer is not enough: once
/// it fires, the task that would re-arm it is itself waiting in a runnable
/// queue, so if the executor parks again no timer is armed and it sleeps for
/// good. Measured with `no_shard_stalls_under_load_with_more_executors_than_cores`
/// (3 nodes × 2 shards on 2 CPUs, 1 ms preempt timer): with one tick timer
/// (and even with a watchdog thread poking the mailbox) 1 run in 2 to 6
/// parked a shard for the whole deadline; with this reserve, 0 in 55 runs.
/// A stuck executor is woken every `period` for `reserve` periods, and the
/// first time this task runs the reserve is topped up again.
///
/// Public so that other executors of a flotilla process (client-facing
/// servers, benchmark load generators) can run the same guard: spawn it
/// first thing on the executor and set `stop` when the executor ends.
/// While it runs there, `NodeHost` deadlines on that executor are glommio
/// timers (without it they go through async-io's reactor thread: a
/// cross-thread wake-up and a timer-tree insert per request).
pub async fn keep_timers_armed(period: Duration, reserve: usize, stop: Rc<Cell<bool>>) {
    GLOMMIO_TIMERS.with(|f| f.set(true));
    armed_ticks(period, reserve, stop, |_| {}).await;
}

/// Calls `on_tick(lateness)` every `period` until `stop`, from a reserve of
/// `reserve` timers armed ahead (see [`keep_timers_armed`]). Fixed rate:
/// after a stall the missed ticks are skipped, not fired as a burst.
async fn armed_ticks(
    period: Duration,
    reserve: usize,
    stop: Rc<Cell<bool>>,
    mut on_tick: impl FnMut(Duration),
) {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    debug_assert!(reserve > 0 && !period.is_zero());
    let mut armed: std::collections::VecDeque<(Instant, glommio::timer::Timer)> =
        std::collections::VecDeque::with_capacity(reserve);
    let mut last_due = Instant::now();
    while !stop.get() {
        let now = Instant::now();
        if last_due < now {
            last_due = now;
        }
        let mut fresh = Vec::new();
        while armed.len() + fresh.len() < reserve {
            last_due += period;
            fresh.push((last_due, glommio::timer::Timer::new(last_due - now)));
        }
        // Register the new timers with this task's waker without waiting.
        std::future::poll_fn(|cx| {
            for (_, t) in fresh.iter_mut() {
                let _ = Pin::new(t).poll(cx);
            }
            Poll::Ready(())
        })
        .await;
        armed.extend(fresh);
        let Some((due, front)) = armed.front_mut() else {
            break;
        };
        let due = *due;
        front.await;
        armed.pop_front();
        let now = Instant::now();
        // Skip the ticks a stall made us miss (their timers are due).
        while armed.front().is_some_and(|(d, _)| *d <= now) {
            armed.pop_front();
        }
        if stop.get() {
            break;
        }
        on_tick(now.saturating_duration_since(due));
    }
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

    /// Deadlines on an executor that runs the timer reserve are glommio
    /// timers; elsewhere they go through async-io (checked both ways, and
    /// that `sleep_anywhere` works in each place).
    #[test]
    fn executors_with_the_timer_reserve_use_glommio_timers() {
        assert!(!glommio_timers_here());
        futures_lite::future::block_on(crate::host::sleep_anywhere(Duration::from_millis(1)));
        let builder =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(1 << 20);
        let handle = crate::exec::spawn(builder, "timers-test".into(), || async {
            let before = glommio_timers_here();
            let stop = Rc::new(Cell::new(false));
            let armed =
                glommio::spawn_local(keep_timers_armed(Duration::from_millis(1), 4, stop.clone()));
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::from_millis(2)).await;
            let after = glommio_timers_here();
            crate::host::sleep_anywhere(Duration::from_millis(1)).await;
            stop.set(true);
            armed.await;
            (before, after)
        })
        .expect("executor starts");
        assert_eq!(handle.join().expect("executor runs"), (false, true));
    }
}
