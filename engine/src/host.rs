//! `NodeHost`: starts one glommio executor per shard and routes API calls to
//! the shard that owns a group.
//!
//! A `NodeHost` is `Send + Sync`: its methods can be called from any thread
//! or executor. Each call becomes a request in the owning shard's mailbox
//! (a bounded MPSC channel) and its answer comes back on a oneshot channel;
//! glommio wakes the shard's task from a foreign thread through its notifier.
//!
//! glommio 0.9.0 bug 2 (an executor parked with runnable work) is handled
//! inside each shard by a reserve of armed timers; see
//! `shard::keep_timers_armed` and the stress test below.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use futures_channel::oneshot;
use glommio::LocalExecutorBuilder;
use tracing::{error, info};

use crate::api::{MembershipInfo, ReadConsistency};
use crate::config::{available_cpus, ConfigError, NodeHostConfig};
use crate::error::RequestError;
use crate::raft::{ConfChange, ConfChangeKind, GroupId, MemberKind, NodeId};
use crate::shard::driver::GroupStatus;
use crate::shard::{self, ShardId, ShardRequest, ShardSetup, ShardStats};

/// Errors of the `NodeHost` API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The configuration was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A shard executor could not be created.
    #[error("shard {shard}: cannot start its executor: {reason}")]
    ShardStart {
        /// The shard.
        shard: ShardId,
        /// What glommio said.
        reason: String,
    },
    /// The node is shutting down (or a shard has stopped).
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The group refused or failed the request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No answer came within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One flotilla node: its shards and the API that reaches them.
///
/// # Examples
/// ```no_run
/// use flotilla::{NodeHost, NodeHostConfig, Placement};
/// let mut cfg = NodeHostConfig::new(1, "/tmp/flotilla-doc");
/// cfg.shard_count = 2;
/// cfg.placement = Placement::Unbound;
/// let host = NodeHost::start(cfg).unwrap();
/// futures_lite::future::block_on(host.shutdown());
/// ```
pub struct NodeHost {
    config: NodeHostConfig,
    mailboxes: Vec<flume::Sender<ShardRequest>>,
    /// Taken (and joined) by the first `shutdown`.
    threads: std::sync::Mutex<Vec<crate::exec::ExecutorHandle<()>>>,
}

/// Longest a stopping leader tries to hand its leadership over.
const STOP_HAND_OVER_MAX: Duration = Duration::from_secs(2);

impl NodeHost {
    /// Validates `config` and starts its shards.
    ///
    /// # Errors
    /// [`HostError::Config`] for a bad configuration, [`HostError::ShardStart`]
    /// when an executor cannot be created (already started shards are
    /// stopped again).
    pub fn start(mut config: NodeHostConfig) -> Result<NodeHost, HostError> {
        config.validate()?;
        // glommio 0.9 opens directories with `openat(-1, path)`: a relative
        // path fails with EBADF (`flotilla local`'s default `./flotilla-data`
        // did). Resolve it against the working directory once, here.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| {
            HostError::Config(ConfigError::Invalid {
                field: "data_dir",
                reason: format!("{}: {e}", config.data_dir.display()),
            })
        })?;
        // Groups map to shards by id and shard count: data written with
        // another count would be recovered on shards that no longer own
        // its groups (found by nobody, as if lost).
        match crate::config::shards_on_disk(&config.data_dir) {
            Ok(None) => {}
            Ok(Some(n)) if n == config.shard_count => {}
            Ok(Some(n)) => {
                return Err(HostError::Config(ConfigError::Invalid {
                    field: "shard_count",
                    reason: format!(
                        "{} was created with {n} shards, not {}: restart the node with \
                         {n} shards",
                        config.data_dir.display(),
                        config.shard_count
                    ),
                }))
            }
            Err(e) => {
                return Err(HostError::Config(ConfigError::Invalid {
                    field: "data_dir",
                    reason: e.to_string(),
                }))
            }
        }
        let cpus = available_cpus();
        let mut host = NodeHost {
            mailboxes: Vec::with_capacity(config.shard_count),
            threads: std::sync::Mutex::new(Vec::with_capacity(config.shard_count)),
            config,
        };
        let mut started = Vec::with_capacity(host.config.shard_count);
        for shard in 0..host.config.shard_count {
            let (tx, rx) = flume::bounded(host.config.mailbox_capacity);
            let wal_dir = host.config.data_dir.join(format!("shard-{shard}"));
            let snapshot_dir = host
                .config
                .data_dir
                .join(format!("shard-{shard}-snapshots"));
            // On the calling thread, before any executor runs: creating the
            // directories may block.
            if let Err(e) = std::fs::create_dir_all(&wal_dir)
                .and_then(|()| std::fs::create_dir_all(&snapshot_dir))
            {
                let err = HostError::ShardStart {
                    shard: shard as ShardId,
                    reason: format!("cannot create {}: {e}", wal_dir.display()),
                };
                futures_lite::future::block_on(host.shutdown());
                return Err(err);
            }
            let mut raft_defaults = crate::raft::Config::new(
                crate::raft::NodeId(host.config.node_id),
                crate::raft::GroupId(0),
            );
            raft_defaults.election_timeout_ticks = host.config.election_timeout_ticks;
            raft_defaults.heartbeat_interval_ticks = host.config.heartbeat_interval_ticks;
            // Linearizable reads never trust a clock; `ReadConsistency::Lease`
            // opts into the lease per request.
            raft_defaults.lease_read = false;
            raft_defaults.quiesce_ticks = host.config.quiesce_ticks;
            // Groups created together spread their first leaders evenly.
            raft_defaults.stagger_first_election = true;
            // Followers learn a commit from the next append or heartbeat
            // rather than from a message of its own (one wake-up less per
            // follower and write at low load).
            raft_defaults.lazy_commit_notify = true;
            // A busy group's appends do its heartbeats' work.
            raft_defaults.skip_busy_heartbeats = true;
            let entry_bytes_max = host.config.entry_limit_bytes();
            let defaults = flotilla_storage::WalOptions::default();
            // One frame holds the largest entry with its headers.
            let frame_bytes = (entry_bytes_max + crate::config::ENTRY_OVERHEAD_BYTES) as u64;
            let wal_options = flotilla_storage::WalOptions {
                segment_bytes: host.config.wal_segment_bytes,
                dsync_writes: host.config.wal_dsync_writes,
                frame_bytes_max: defaults
                    .frame_bytes_max
                    .max(frame_bytes.next_multiple_of(4096)),
                ..defaults
            };
            let (started_tx, started_rx) = oneshot::channel();
            started.push(started_rx);
            let setup = ShardSetup {
                node_id: host.config.node_id,
                cluster_id: host.config.cluster_id,
                shard: shard as ShardId,
                shard_count: host.config.shard_count,
                tick_interval: host.config.tick_interval,
                mailbox: rx,
                raft_addr: host.config.raft_addr,
                wal_dir,
                snapshot_dir,
                snapshot_entries: host.config.snapshot_entries,
                snapshot_log_ratio: host.config.snapshot_log_ratio,
                leader_balance_interval: host.config.leader_balance_interval,
                compaction_overhead_entries: host.config.compaction_overhead_entries,
                wal_options,
                entry_bytes_max,
                raft_defaults,
                started: started_tx,
            };
            let mut builder =
                LocalExecutorBuilder::new(host.config.placement.for_shard(shard, cpus))
                    .preempt_timer(host.config.preempt_timer)
                    .io_memory(host.config.io_memory_bytes);
            if host.config.detect_stalls {
                builder =
                    builder.detect_stalls(Some(Box::new(glommio::DefaultStallDetectionHandler {})));
            }
            let name = format!("flotilla-n{}-s{}", host.config.node_id, shard);
            match crate::exec::spawn(builder, name, move || shard::run(setup)) {
                Ok(handle) => {
                    host.mailboxes.push(tx);
                    host.threads
                        .get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(handle);
                }
                Err(e) => {
                    let err = HostError::ShardStart {
                        shard: shard as ShardId,
                        reason: e.to_string(),
                    };
                    error!(node = host.config.node_id, shard, error = %err, "shard start failed");
                    host.shutdown_after_failed_start();
                    return Err(err);
                }
            }
        }
        for (shard, rx) in started.into_iter().enumerate() {
            let outcome = futures_lite::future::block_on(rx)
                .unwrap_or_else(|_| Err("the shard exited during start".to_string()));
            if let Err(reason) = outcome {
                error!(node = host.config.node_id, shard, %reason, "shard start failed");
                host.shutdown_after_failed_start();
                return Err(HostError::ShardStart {
                    shard: shard as ShardId,
                    reason,
                });
            }
        }
        info!(
            node = host.config.node_id,
            shards = host.config.shard_count,
            "node started"
        );
        Ok(host)
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeHostConfig {
        &self.config
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Counters of shard `shard`.
    ///
    /// # Errors
    /// [`HostError::ShuttingDown`] if the shard has stopped,
    /// [`HostError::Timeout`] if it does not answer within `deadline`.
    pub async fn shard_stats(
        &self,
        shard: ShardId,
        deadline: Duration,
    ) -> Result<ShardStats, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(shard, ShardRequest::Stats { reply }, rx, deadline)
            .await
    }

    fn shard_for(&self, group: GroupId) -> ShardId {
        shard::shard_of(group.0, self.mailboxes.len().max(1))
    }

    /// Starts `group` on this node as a founding member; `members` lists
    /// every founding member's node id and raft address (this node's too).
    /// Starting a group that already runs here is a no-op.
    ///
    /// # Errors
    /// [`HostError::ShuttingDown`], [`HostError::Timeout`], or the group's
    /// [`RequestError`].
    pub async fn start_group(
        &self,
        group: GroupId,
        members: Vec<(NodeId, SocketAddr)>,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::StartGroup {
                group,
                members,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// Stops this node's replica of `group` and deletes its data here (its
    /// log and state in the WAL, its snapshot files); answers once that is
    /// durable. Requests waiting on the replica fail with
    /// [`RequestError::ShuttingDown`]; messages for it are dropped from then
    /// on, and a restart of the node does not bring it back. Stopping a
    /// group that does not run here is a no-op; the group may be started
    /// (or joined) again once this returns.
    ///
    /// A leader first hands its leadership to another voter (for at most
    /// half the deadline, 2 s at most), so the group does not wait out an
    /// election timeout. Stopping a replica that is still a member takes a
    /// voter away from its group: remove it first ([`NodeHost::remove_member`], called on
    /// any member), or stop the group on every member to drop it. Start a
    /// group under the id of a dropped one only once every member stopped
    /// it: a replica left with the old log would meet the new one.
    ///
    /// # Errors
    /// [`HostError::ShuttingDown`], [`HostError::Timeout`] (the stop still
    /// completes), or [`RequestError::Storage`] when the snapshot files
    /// could not be deleted.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(host: &flotilla::NodeHost) -> Result<(), flotilla::HostError> {
    /// use std::time::Duration;
    /// let g = flotilla::GroupId(7);
    /// let me = flotilla::NodeId(host.config().node_id);
    /// host.remove_member(g, me, Duration::from_secs(5)).await?;
    /// host.stop_group(g, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn stop_group(&self, group: GroupId, deadline: Duration) -> Result<(), HostError> {
        let started = std::time::Instant::now();
        self.hand_over_before_stop(group, (deadline / 2).min(STOP_HAND_OVER_MAX))
            .await;
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::StopGroup { group, reply },
            rx,
            deadline.saturating_sub(started.elapsed()),
        )
        .await?
        .map_err(HostError::Request)
    }

    /// If this node leads `group`, hands the leadership to another voter
    /// (the first that takes it within `budget`), so that the group does
    /// not wait out an election timeout once the replica stops. Best
    /// effort: the stop goes on either way.
    async fn hand_over_before_stop(&self, group: GroupId, budget: Duration) {
        let started = std::time::Instant::now();
        let me = NodeId(self.config.node_id);
        let leads = matches!(
            self.group_status(group, budget).await,
            Ok(Some(s)) if s.leader == Some(me)
        );
        if !leads {
            return;
        }
        let Ok(Some(m)) = self.membership(group, budget).await else {
            return;
        };
        for member in &m.members {
            if member.node == me || member.kind != MemberKind::Voter {
                continue;
            }
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                return;
            }
            match self.transfer_leader(group, member.node, left).await {
                Ok(()) => {
                    tracing::info!(
                        group = group.0,
                        to = member.node.0,
                        "leadership handed over before the stop"
                    );
                    return;
                }
                Err(e) => {
                    tracing::debug!(group = group.0, to = member.node.0, error = %e, "hand-over before the stop failed")
                }
            }
        }
    }

    /// Starts an empty replica of `group` on this node that waits for the
    /// group's leader to add it ([`NodeHost::add_member`], called on any
    /// member) and to send it the log or a snapshot. `peers` are the raft
    /// addresses of (some) current members, so this replica can answer them
    /// before it learns the membership; `witness` makes it a replica without
    /// a state machine (add it with [`MemberKind::Witness`]).
    ///
    /// # Errors
    /// As [`NodeHost::start_group`].
    pub async fn join_group(
        &self,
        group: GroupId,
        peers: Vec<(NodeId, SocketAddr)>,
        witness: bool,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::JoinGroup {
                group,
                peers,
                witness,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// Proposes an encoded rsm command (see `flotilla_rsm::encode_noop` and
    /// `ClientSession`) to `group`; returns the state machine's result once
    /// the command is committed and applied by the leader. A replica that
    /// is not the leader forwards the command to the leader's node (and on
    /// to a newer leader at most twice more); with no leader known it waits
    /// for an election until `deadline`.
    ///
    /// # Errors
    /// [`HostError::Request`] with the group's error, [`HostError::Timeout`]
    /// (the command may or may not have been applied),
    /// [`HostError::ShuttingDown`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(host: &flotilla::NodeHost) -> Result<(), flotilla::HostError> {
    /// use flotilla_rsm::{encode_noop, KvCommand, KvResult};
    /// let cmd = encode_noop(&KvCommand::put("k", "v").encode());
    /// let answer = host.propose(flotilla::GroupId(1), cmd, std::time::Duration::from_secs(2)).await?;
    /// assert!(matches!(KvResult::decode(answer), Ok(KvResult::Put { written: true, .. })));
    /// # Ok(()) }
    /// ```
    pub async fn propose(
        &self,
        group: GroupId,
        cmd: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, HostError> {
        self.propose_with(group, cmd, true, deadline).await
    }

    /// As [`NodeHost::propose`]; with `forward == false` a replica that is
    /// not the leader answers `NotLeader { leader }` instead of forwarding.
    ///
    /// # Errors
    /// As [`NodeHost::propose`].
    pub async fn propose_with(
        &self,
        group: GroupId,
        cmd: Bytes,
        forward: bool,
        deadline: Duration,
    ) -> Result<Bytes, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::Propose {
                group,
                cmd,
                forward,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// Proposes every command of `cmds` to `group`, as [`NodeHost::propose`]
    /// does each, and answers each on its own, in the order of `cmds`:
    /// entry `i` of the result is the outcome of `cmds[i]`. The commands go
    /// to the shard in one mailbox message per [`PROPOSE_BATCH_MAX`] of them
    /// and come back in one answer each, under one deadline: a caller with
    /// many commands for one group saves a channel, a timer and a wake-up per
    /// command. The commands are appended in order, but each one commits,
    /// applies and fails on its own (a batch is not a transaction).
    ///
    /// The answers of one mailbox message come back together, once its last
    /// command is decided. When `deadline` passes first, every command of
    /// the messages not answered yet gets [`HostError::Timeout`], also those
    /// the group had decided already (each may or may not have been
    /// applied): a batch waits for its slowest command (e.g. one forwarded
    /// to a leader that died), so a caller that wants the answers of the
    /// others first sends them in batches of their own.
    ///
    /// # Errors
    /// None for the batch as a whole; each entry has the errors of
    /// [`NodeHost::propose`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(host: &flotilla::NodeHost) {
    /// use flotilla_rsm::{encode_noop, KvCommand, KvResult};
    /// let cmds = ["a", "b", "c"]
    ///     .map(|k| encode_noop(&KvCommand::put(k, "v").encode()))
    ///     .to_vec();
    /// let answers = host
    ///     .propose_batch(flotilla::GroupId(1), cmds, std::time::Duration::from_secs(2))
    ///     .await;
    /// for answer in answers {
    ///     assert!(matches!(answer.map(KvResult::decode), Ok(Ok(KvResult::Put { .. }))));
    /// }
    /// # }
    /// ```
    pub async fn propose_batch(
        &self,
        group: GroupId,
        cmds: Vec<Bytes>,
        deadline: Duration,
    ) -> Vec<Result<Bytes, HostError>> {
        let len = cmds.len();
        if len == 0 {
            return Vec::new();
        }
        let Some(mailbox) = self.mailboxes.get(self.shard_for(group) as usize) else {
            return (0..len).map(|_| Err(HostError::ShuttingDown)).collect();
        };
        let mut answers: Vec<Result<Bytes, HostError>> = Vec::with_capacity(len);
        let work = async {
            let mut receivers = Vec::with_capacity(len.div_ceil(PROPOSE_BATCH_MAX));
            let mut cmds = cmds.into_iter();
            loop {
                let chunk: Vec<Bytes> = cmds.by_ref().take(PROPOSE_BATCH_MAX).collect();
                if chunk.is_empty() {
                    break;
                }
                let (reply, rx) = oneshot::channel();
                let n = chunk.len();
                let req = ShardRequest::ProposeBatch {
                    group,
                    cmds: chunk,
                    forward: true,
                    reply,
                };
                if mailbox.send_async(req).await.is_err() {
                    break;
                }
                receivers.push((n, rx));
            }
            for (n, rx) in receivers {
                match rx.await {
                    Ok(results) => {
                        debug_assert_eq!(results.len(), n);
                        answers.extend(results.into_iter().map(|r| match r {
                            Some(r) => r.map_err(HostError::Request),
                            None => Err(HostError::ShuttingDown),
                        }));
                    }
                    Err(_) => answers.extend((0..n).map(|_| Err(HostError::ShuttingDown))),
                }
            }
            Ok(())
        };
        let outcome = with_deadline(work, deadline).await;
        // What the deadline (or a closed mailbox) cut off.
        let missing = match outcome {
            Ok(()) => HostError::ShuttingDown,
            Err(e) => e,
        };
        while answers.len() < len {
            answers.push(Err(match &missing {
                HostError::Timeout(d) => HostError::Timeout(*d),
                _ => HostError::ShuttingDown,
            }));
        }
        answers
    }

    /// A linearizable read (ReadIndex) of `query` against `group`'s state
    /// machine; any replica that is not a witness can serve it.
    ///
    /// # Errors
    /// As [`NodeHost::propose`].
    pub async fn read(
        &self,
        group: GroupId,
        query: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, HostError> {
        self.read_with(group, query, ReadConsistency::Linearizable, deadline)
            .await
    }

    /// A read of `query` with the chosen consistency.
    ///
    /// # Errors
    /// As [`NodeHost::propose`].
    pub async fn read_with(
        &self,
        group: GroupId,
        query: Bytes,
        consistency: ReadConsistency,
        deadline: Duration,
    ) -> Result<Bytes, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::Read {
                group,
                query,
                consistency,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// Adds `node` (raft address `addr`) to `group` as a voter, observer or
    /// witness; returns once the change is committed and applied on this
    /// replica. Start the new replica with [`NodeHost::join_group`] on its
    /// node (before or after). One change at a time per group.
    ///
    /// Idempotent: a change already in effect in the group's committed
    /// membership (the node is that kind of member at that address; for
    /// removal, absent; for promotion, a voter) returns `Ok` at once. So a
    /// caller whose request failed ambiguously (a timeout, or a leader
    /// change while it was forwarded: the change may have committed) simply
    /// retries it.
    ///
    /// # Errors
    /// As [`NodeHost::propose`]; `Rejected(ConfChangePending)` while another
    /// change is in flight; `Rejected` with the conflicting membership when
    /// the change contradicts it (adding a node that is another kind of
    /// member, or promoting a node that is not an observer).
    pub async fn add_member(
        &self,
        group: GroupId,
        node: NodeId,
        addr: SocketAddr,
        kind: MemberKind,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let kind = match kind {
            MemberKind::Voter => ConfChangeKind::AddVoter,
            MemberKind::Observer => ConfChangeKind::AddObserver,
            MemberKind::Witness => ConfChangeKind::AddWitness,
        };
        self.change_membership(
            group,
            ConfChange {
                kind,
                node,
                address: Bytes::from(addr.to_string()),
            },
            deadline,
        )
        .await
    }

    /// Promotes observer `node` of `group` to voter (it must be caught up).
    ///
    /// # Errors
    /// As [`NodeHost::add_member`].
    pub async fn promote_observer(
        &self,
        group: GroupId,
        node: NodeId,
        deadline: Duration,
    ) -> Result<(), HostError> {
        self.change_membership(
            group,
            ConfChange {
                kind: ConfChangeKind::PromoteObserver,
                node,
                address: Bytes::new(),
            },
            deadline,
        )
        .await
    }

    /// Removes `node` from `group`.
    ///
    /// # Errors
    /// As [`NodeHost::add_member`].
    pub async fn remove_member(
        &self,
        group: GroupId,
        node: NodeId,
        deadline: Duration,
    ) -> Result<(), HostError> {
        self.change_membership(
            group,
            ConfChange {
                kind: ConfChangeKind::RemoveNode,
                node,
                address: Bytes::new(),
            },
            deadline,
        )
        .await
    }

    async fn change_membership(
        &self,
        group: GroupId,
        change: ConfChange,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::ChangeMembership {
                group,
                change,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map(|_| ())
        .map_err(HostError::Request)
    }

    /// Transfers the leadership of `group` to `to` and waits until this
    /// replica sees `to` lead.
    ///
    /// # Errors
    /// As [`NodeHost::propose`]; `Timeout` if `to` did not take over.
    pub async fn transfer_leader(
        &self,
        group: GroupId,
        to: NodeId,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::TransferLeader { group, to, reply },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)?;
        // The transfer ran on the leader (maybe another node): wait until
        // this replica sees the new leader.
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(HostError::Timeout(deadline));
            }
            match self.group_status(group, left).await? {
                Some(s) if s.leader == Some(to) => return Ok(()),
                Some(_) => sleep_anywhere(Duration::from_millis(5).min(left)).await,
                None => {
                    return Err(HostError::Request(RequestError::GroupNotFound { group }));
                }
            }
        }
    }

    /// Takes a snapshot of this replica of `group` now (and compacts its log
    /// behind it, keeping the configured overhead); returns the snapshot's
    /// index.
    ///
    /// # Errors
    /// As [`NodeHost::propose`]; `Remote` with the reason if writing failed.
    pub async fn request_snapshot(
        &self,
        group: GroupId,
        deadline: Duration,
    ) -> Result<u64, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::Snapshot { group, reply },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// The membership of `group` as this replica knows it (`None`: not
    /// hosted here).
    ///
    /// # Errors
    /// [`HostError::Timeout`], [`HostError::ShuttingDown`].
    pub async fn membership(
        &self,
        group: GroupId,
        deadline: Duration,
    ) -> Result<Option<MembershipInfo>, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::Membership { group, reply },
            rx,
            deadline,
        )
        .await
    }

    /// Status of every group hosted on this node, sorted by group.
    ///
    /// # Errors
    /// [`HostError::Timeout`], [`HostError::ShuttingDown`].
    pub async fn groups(&self, deadline: Duration) -> Result<Vec<GroupStatus>, HostError> {
        let mut all = Vec::new();
        for shard in 0..self.mailboxes.len() as ShardId {
            let (reply, rx) = oneshot::channel();
            all.extend(
                self.request(shard, ShardRequest::AllStatus { reply }, rx, deadline)
                    .await?,
            );
        }
        all.sort_by_key(|s| s.group);
        Ok(all)
    }

    /// Counters of every shard (WAL, transport, raft work).
    ///
    /// # Errors
    /// [`HostError::Timeout`], [`HostError::ShuttingDown`].
    pub async fn stats(&self, deadline: Duration) -> Result<Vec<ShardStats>, HostError> {
        let mut all = Vec::with_capacity(self.mailboxes.len());
        for shard in 0..self.mailboxes.len() as ShardId {
            all.push(self.shard_stats(shard, deadline).await?);
        }
        Ok(all)
    }

    /// Leader, term, commit and applied index of this node's replica of
    /// `group` (`None`: not hosted here).
    ///
    /// # Errors
    /// [`HostError::Timeout`], [`HostError::ShuttingDown`].
    pub async fn group_status(
        &self,
        group: GroupId,
        deadline: Duration,
    ) -> Result<Option<GroupStatus>, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::Status { group, reply },
            rx,
            deadline,
        )
        .await
    }

    /// Waits until this node's replica of `group` has applied past index
    /// `after`; returns its applied index then (at once if it already has).
    /// A caller that waits for the state machine to change (a blocked
    /// `BLPOP`) reads what it needs with [`ReadConsistency::Stale`] after
    /// each answer and waits again with the index it got: a change applied
    /// in between answers the next wait at once, so none is missed, and
    /// nothing polls. `after = 0` asks for the current index (of a replica
    /// that applied anything).
    ///
    /// # Errors
    /// [`HostError::Timeout`] when nothing is applied within `deadline`
    /// (the usual outcome on an idle group); [`HostError::ShuttingDown`];
    /// [`RequestError::GroupNotFound`]; `Rejected(TooManyReads)` when
    /// `reads_pending_max` callers wait already.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(host: &flotilla::NodeHost) -> Result<(), flotilla::HostError> {
    /// use std::time::Duration;
    /// let g = flotilla::GroupId(1);
    /// let now = host.wait_applied(g, 0, Duration::from_secs(1)).await?;
    /// // ... read the state machine (stale reads see at least `now`) ...
    /// match host.wait_applied(g, now, Duration::from_secs(1)).await {
    ///     Ok(later) => assert!(later > now),
    ///     Err(flotilla::HostError::Timeout(_)) => {} // nothing changed
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_applied(
        &self,
        group: GroupId,
        after: u64,
        deadline: Duration,
    ) -> Result<u64, HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            self.shard_for(group),
            ShardRequest::WaitApplied {
                group,
                after,
                reply,
            },
            rx,
            deadline,
        )
        .await?
        .map_err(HostError::Request)
    }

    /// Runs a task on shard `shard`'s executor: `make` is called on the
    /// shard's thread and the future it returns is spawned there, in a task
    /// queue of its own (half the raft queue's share when both are busy).
    /// This is how a node serves its clients on the shards themselves
    /// (seastar style): a request to a group of that shard then costs no
    /// cross-thread wake-up. The task may call this `NodeHost` (it must hold
    /// its own `Arc`); it is dropped when the shard stops, so stop it first.
    ///
    /// # Errors
    /// [`HostError::ShuttingDown`] if the shard is gone or `shard` does not
    /// exist.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(host: &flotilla::NodeHost) -> Result<(), flotilla::HostError> {
    /// host.spawn_on_shard(0, Box::new(|| Box::pin(async {
    ///     tracing::info!("running on shard 0");
    /// }))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn spawn_on_shard(
        &self,
        shard: ShardId,
        make: crate::shard::SpawnFn,
    ) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            shard,
            ShardRequest::Spawn { make, reply },
            rx,
            Duration::from_secs(30),
        )
        .await
    }

    #[cfg(test)]
    pub(crate) async fn burn(&self, shard: ShardId, units: u32) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            shard,
            ShardRequest::Burn { units, reply },
            rx,
            Duration::from_secs(120),
        )
        .await
    }

    async fn request<T>(
        &self,
        shard: ShardId,
        req: ShardRequest,
        rx: oneshot::Receiver<T>,
        deadline: Duration,
    ) -> Result<T, HostError> {
        let mailbox = self
            .mailboxes
            .get(shard as usize)
            .ok_or(HostError::ShuttingDown)?;
        let answer = async {
            mailbox
                .send_async(req)
                .await
                .map_err(|_| HostError::ShuttingDown)?;
            rx.await.map_err(|_| HostError::ShuttingDown)
        };
        with_deadline(answer, deadline).await
    }

    /// After a failed start: stops the shards that did start, but waits
    /// for them only so long, so that the caller gets the start error
    /// rather than a hang (a shard still busy in its own failed start is
    /// left to end on its own).
    fn shutdown_after_failed_start(&self) {
        let stopped = futures_lite::future::block_on(with_deadline(
            async {
                self.shutdown().await;
                Ok(())
            },
            FAILED_START_SHUTDOWN_WAIT,
        ))
        .is_ok();
        if !stopped {
            error!(
                node = self.config.node_id,
                "shards did not stop within {FAILED_START_SHUTDOWN_WAIT:?} after a failed start"
            );
        }
    }

    /// Stops every shard: each fails its waiting requests, finishes its
    /// tasks, closes its WAL and its thread exits. Waits for the threads.
    /// Later calls (and every request after it) find the node stopped.
    /// Takes `&self` so a host shared in an `Arc` can be stopped.
    pub async fn shutdown(&self) {
        let mut acks = Vec::new();
        for mailbox in &self.mailboxes {
            let (reply, rx) = oneshot::channel();
            if mailbox
                .send_async(ShardRequest::Shutdown { reply })
                .await
                .is_ok()
            {
                acks.push(rx);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (shard, thread) in threads.into_iter().enumerate() {
            if let Err(reason) = thread.join() {
                error!(node = self.config.node_id, shard, %reason, "shard thread failed");
            }
        }
        info!(node = self.config.node_id, "node stopped");
    }
}

/// Commands of [`NodeHost::propose_batch`] per mailbox message (a batch
/// with more is sent as several messages).
pub const PROPOSE_BATCH_MAX: usize = 1024;

/// How long a failed start waits for the shards it started to stop.
const FAILED_START_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Runs `fut`, or fails with [`HostError::Timeout`] after `deadline`.
pub(crate) async fn with_deadline<T>(
    fut: impl std::future::Future<Output = Result<T, HostError>>,
    deadline: Duration,
) -> Result<T, HostError> {
    if deadline.is_zero() {
        // No time at all: nothing is started. (Raced against a zero
        // timer, a fast shard's answer could win: seen once in CI, where
        // `propose_batch(.., Duration::ZERO)` was applied and answered.)
        return Err(HostError::Timeout(deadline));
    }
    futures_lite::future::or(fut, async {
        sleep_anywhere(deadline).await;
        Err(HostError::Timeout(deadline))
    })
    .await
}

/// A sleep that works inside a shard (a glommio timer) and on any other
/// thread or runtime (`async-io`'s timer, driven by its own reactor thread).
pub(crate) async fn sleep_anywhere(d: Duration) {
    if shard::glommio_timers_here() {
        glommio::timer::sleep(d).await;
    } else {
        async_io::Timer::after(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Placement;
    use futures_lite::future::block_on;

    fn test_config(
        node: u64,
        shards: usize,
        first_cpu: usize,
        dir: &tempfile::TempDir,
    ) -> NodeHostConfig {
        let mut cfg = NodeHostConfig::new(node, dir.path().join(format!("node-{node}")));
        cfg.raft_addr = crate::test_util::free_port_block(shards);
        cfg.shard_count = shards;
        cfg.placement = Placement::Pinned { first_cpu };
        cfg.tick_interval = Duration::from_millis(5);
        cfg.preempt_timer = Duration::from_millis(1);
        cfg.io_memory_bytes = 512 << 10;
        cfg.detect_stalls = false;
        cfg
    }

    /// Groups map to shards by id and shard count: a node restarted with
    /// another count would not find the groups of its data, so it refuses
    /// to start and names the count its data has.
    #[test]
    fn a_zero_deadline_times_out_without_starting_anything() {
        let started = std::cell::Cell::new(false);
        let answer = block_on(with_deadline(
            async {
                started.set(true);
                Ok(7)
            },
            Duration::ZERO,
        ));
        assert!(matches!(answer, Err(HostError::Timeout(_))), "{answer:?}");
        assert!(!started.get(), "nothing started");
        // Any other deadline lets a ready answer through.
        let answer = block_on(with_deadline(async { Ok(7) }, Duration::from_millis(1)));
        assert_eq!(answer.ok(), Some(7));
    }

    #[test]
    fn a_node_restarted_with_another_shard_count_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let host = NodeHost::start(test_config(1, 2, 0, &dir)).unwrap();
        block_on(host.shutdown());
        assert_eq!(
            crate::shards_on_disk(&dir.path().join("node-1")).unwrap(),
            Some(2)
        );
        match NodeHost::start(test_config(1, 1, 0, &dir)) {
            Err(HostError::Config(ConfigError::Invalid { field, reason })) => {
                assert_eq!(field, "shard_count");
                assert!(reason.contains("created with 2 shards"), "{reason}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(h) => {
                block_on(h.shutdown());
                panic!("started with 1 shard on data of 2");
            }
        }
        // Its own count still starts; a hole in the shard directories is
        // reported, never guessed around.
        let host = NodeHost::start(test_config(1, 2, 0, &dir)).unwrap();
        block_on(host.shutdown());
        std::fs::create_dir(dir.path().join("node-1/shard-3")).unwrap();
        let err = crate::shards_on_disk(&dir.path().join("node-1")).unwrap_err();
        assert!(err.to_string().contains("no shard-2"), "{err}");
        assert!(NodeHost::start(test_config(1, 2, 0, &dir)).is_err());
        assert_eq!(
            crate::shards_on_disk(&dir.path().join("absent")).unwrap(),
            None
        );
    }

    /// glommio 0.9.0 can park an executor that still has runnable work (bug 2
    /// in GLOMMIO.md). Three nodes × two shards on this machine's CPUs, a
    /// 1 ms preempt timer, bulk work on every shard and ticks everywhere: every
    /// shard must keep ticking and finish its work before the deadline.
    /// Without the timer reserve of `shard::keep_timers_armed` this failed in
    /// 1 run out of 2 to 6 here.
    #[test]
    fn no_shard_stalls_under_load_with_more_executors_than_cores() {
        let dir = tempfile::tempdir().unwrap();
        let hosts: Vec<NodeHost> = (0..3)
            .map(|n| NodeHost::start(test_config(n as u64 + 1, 2, n * 2, &dir)).unwrap())
            .collect();
        block_on(async {
            for round in 0..5 {
                let before: Vec<u64> = stats_of(&hosts).await.iter().map(|s| s.ticks).collect();
                let burns = hosts
                    .iter()
                    .flat_map(|h| (0..2).map(move |s| h.burn(s, 1500)));
                let results = with_deadline(
                    async { Ok(futures::future::join_all(burns).await) },
                    Duration::from_secs(60),
                )
                .await;
                let results = match results {
                    Ok(r) => r,
                    Err(e) => {
                        let stats = stats_of(&hosts).await;
                        panic!("round {round}: bulk work did not finish: {e}; shards: {stats:?}")
                    }
                };
                assert!(
                    results.iter().all(|r| r.is_ok()),
                    "round {round}: {results:?}"
                );
                let after = stats_of(&hosts).await;
                for (i, s) in after.iter().enumerate() {
                    assert!(
                        s.ticks > before[i],
                        "round {round}: shard {i} did not tick (before {}, after {})",
                        before[i],
                        s.ticks
                    );
                }
            }
        });
        for h in hosts {
            block_on(h.shutdown());
        }
    }

    async fn stats_of(hosts: &[NodeHost]) -> Vec<ShardStats> {
        let mut out = Vec::new();
        for h in hosts {
            for s in 0..h.shard_count() as ShardId {
                out.push(
                    h.shard_stats(s, Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|e| panic!("shard {s} of node {}: {e}", h.config.node_id)),
                );
            }
        }
        out
    }

    /// A task spawned on a shard runs on that shard's thread, and can call
    /// the node from there (here: every shard, its own included).
    #[test]
    fn tasks_spawned_on_a_shard_run_there_and_can_call_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(1, 2, 0, &dir);
        cfg.placement = Placement::Unbound;
        let host = std::sync::Arc::new(NodeHost::start(cfg).unwrap());
        let (tx, rx) = flume::bounded(2);
        for shard in 0..2 {
            let tx = tx.clone();
            let h = host.clone();
            block_on(host.spawn_on_shard(
                shard,
                Box::new(move || {
                    Box::pin(async move {
                        let name = std::thread::current().name().map(String::from);
                        // Every shard answers: its own and the other one.
                        let stats = h.stats(Duration::from_secs(10)).await;
                        let all = stats.is_ok_and(|s| s.len() == 2);
                        let _ = tx.send((shard, shard::on_shard_thread(), name, all));
                    })
                }),
            ))
            .unwrap();
        }
        for _ in 0..2 {
            let (shard, on_shard, name, stats_ok) =
                rx.recv_timeout(Duration::from_secs(30)).expect("task ran");
            assert!(on_shard, "shard {shard}'s task ran on a shard thread");
            let name = name.unwrap_or_default();
            assert!(
                name.contains(&format!("s{shard}")),
                "shard {shard} ran on {name}"
            );
            assert!(stats_ok, "shard {shard}'s task called the node");
        }
        assert!(matches!(
            block_on(host.spawn_on_shard(7, Box::new(|| Box::pin(async {})))),
            Err(HostError::ShuttingDown)
        ));
        block_on(host.shutdown());
    }

    #[test]
    fn bad_config_is_rejected_before_any_executor_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(0, 1, 0, &dir);
        cfg.node_id = 0;
        assert!(matches!(NodeHost::start(cfg), Err(HostError::Config(_))));
    }
}
