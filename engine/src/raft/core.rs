//! The Raft state machine of one group replica.
//!
//! ```text
//!  inputs                         Raft                        outputs (Ready)
//!  tick() ─────────┐   ┌──────────────────────────┐   ┌─> hard_state, membership   (persist)
//!  step(msg) ──────┤   │ election │ log │ progress │   ├─> snapshot, entries        (persist)
//!  propose*(..) ───┼──>│ reads │ membership │ apply │──>├─> messages                 (send now)
//!  read_index(ctx) ┤   └──────────────────────────┘   ├─> persisted_messages       (send after persist)
//!  entries_loaded ─┘                                   ├─> committed_entries, read_states
//!                                                      └─> fetches (entries only on disk)
//!  advance(ready_number): those writes are durable.   applied_to(i): the engine applied up to i.
//! ```
//!
//! Rules enforced here (paper = Ongaro & Ousterhout 2014, thesis = Ongaro 2014):
//! - §5.2 elections with randomized timeouts; thesis §9.6 PreVote and the
//!   check-quorum/leader-lease rule (no vote while a live leader was heard).
//! - §5.3 log matching on append; a committed entry is never truncated.
//! - §5.4.2 (Figure 8): only current-term entries commit by counting replicas.
//! - thesis §4.1: single-server membership changes, one pending at a time, and
//!   only after the leader committed an entry of its own term. Changes take
//!   effect when committed (etcd-style "on apply", done by the core itself).
//! - thesis §6.4 ReadIndex batched on one heartbeat round; §6.4.1 lease reads.
//! - thesis §3.10 leadership transfer via TimeoutNow.

use super::log::{RaftLog, Slice};
use super::progress::{Progress, ProgressState, ProgressStats, Window};
use super::types::*;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// The role of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A bug the simulator must catch, planted on purpose (tests only).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Commit a previous-term entry by counting replicas (Figure 8).
    CommitPreviousTerm,
    /// Acknowledge an append before it is persisted.
    AckBeforePersist,
    /// Never persist the vote.
    ForgetVote,
    /// Truncate the log after an append even without a conflict, dropping
    /// committed entries when a stale append arrives.
    TruncateCommitted,
    /// Accept messages addressed to another group.
    AcceptOtherGroup,
}

/// Configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub group: GroupId,
    /// Followers campaign after a random timeout in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`.
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Serve reads from the leader lease when it holds (requires check_quorum).
    pub lease_read: bool,
    /// Ticks of safety margin for clock drift subtracted from the lease.
    pub lease_margin_ticks: u64,
    /// Byte budget of the entries of one append message.
    pub append_bytes_max: usize,
    /// Appends in flight per follower in the replicate state.
    pub inflight_max: usize,
    /// Entry bytes in flight per follower in the replicate state (at least
    /// one append is always allowed). Bounds what a leader builds for a
    /// follower that is far behind or not reading.
    pub inflight_bytes_max: u64,
    /// Byte budget of the in-memory entry cache.
    pub cache_bytes_max: usize,
    /// Of that cache, bytes of entries every replica already has (applied
    /// here and, on a leader, acknowledged by every follower) kept anyway,
    /// for a follower that falls slightly behind. Entries someone may still
    /// need stay up to `cache_bytes_max`; the rest are read from the WAL.
    /// Keeping everything up to `cache_bytes_max` in every group held
    /// hundreds of MB of fresh memory per second of load, whose page faults
    /// cost a fifth of the engine's CPU with 1 KiB payloads.
    pub cache_replicated_bytes_max: usize,
    /// Byte budget of committed entries handed out in one Ready.
    pub apply_bytes_max: usize,
    /// Proposals are refused while this many entries are uncommitted.
    pub uncommitted_entries_max: u64,
    /// Pending read requests (leader queue and follower batches).
    pub pending_reads_max: usize,
    /// An observer may be promoted once it is at most this far behind.
    pub promote_lag_max: u64,
    /// Idle ticks before quiescing (0 disables quiesce).
    pub quiesce_ticks: u64,
    /// A brand-new group (term 0, empty log) elects a designated first
    /// leader: the voter at `group % voters` in id order times out after
    /// exactly `election_timeout_ticks`, the others only after 2 to 3 times
    /// that. Many groups created at once then spread their leaders evenly
    /// over the nodes instead of where the timers happened to fire first
    /// (which left one node leading 97 % of 10,000 groups, to be moved two
    /// at a time by the engine's balancer). Timeouts only: safety is
    /// unchanged, and if the designated voter is down another is elected
    /// one timeout later.
    pub stagger_first_election: bool,
    /// A leader whose commit index advanced on an acknowledgement does not
    /// send every follower an append just to carry the new commit index:
    /// followers learn it from the next append or heartbeat (at most
    /// `heartbeat_interval_ticks` later; a quiescing group's last heartbeat
    /// carries it too). At low load that message, and its acknowledgement,
    /// woke every follower and the leader once more per write for nothing
    /// the client waits on (the leader answers once it applied); followers
    /// now apply up to a heartbeat later and in larger batches. Safety is
    /// unchanged (commit knowledge only ever lags), and a follower's
    /// linearizable read is unaffected: the heartbeat round that confirms
    /// its read index carries the commit index ahead of the answer.
    pub lazy_commit_notify: bool,
    /// The heartbeat timer's rounds skip the followers that accepted an
    /// append since the previous round and were sent the commit index: the
    /// appends reset their election timers and carried the commit, and
    /// every append carries the current round number, which the follower
    /// echoes, so its answer counts for that round (ReadIndex, lease)
    /// exactly like a heartbeat's. A busy group then sends no heartbeats.
    /// Measured with 2,000 busy groups (`flotilla bench --groups 2000
    /// --concurrency 3`): 60–64 k writes/s at 24–26 CPU-µs/write without,
    /// 78–80 k at 19 with.
    pub skip_busy_heartbeats: bool,
    /// Seed of the RNG (election timeouts, read-batch ids). Must differ
    /// between starts of the same replica (mix in a boot counter or the wall
    /// clock), so a read answer addressed to an earlier incarnation is never
    /// mistaken for one of ours.
    pub seed: u64,
    #[doc(hidden)]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// Defaults suitable for a 10 ms tick.
    pub fn new(id: NodeId, group: GroupId) -> Self {
        Config {
            id,
            group,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_read: true,
            lease_margin_ticks: 1,
            append_bytes_max: 1 << 20,
            inflight_max: 256,
            inflight_bytes_max: 4 << 20,
            cache_bytes_max: 16 << 20,
            cache_replicated_bytes_max: 256 << 10,
            apply_bytes_max: 4 << 20,
            uncommitted_entries_max: 1 << 20,
            pending_reads_max: 1 << 16,
            promote_lag_max: 64,
            quiesce_ticks: 0,
            stagger_first_election: false,
            lazy_commit_notify: false,
            skip_busy_heartbeats: false,
            seed: 0,
            planted_bug: None,
        }
    }

    fn window(&self) -> Window {
        Window {
            appends: self.inflight_max,
            bytes: self.inflight_bytes_max,
        }
    }

    fn bug(&self, b: PlantedBug) -> bool {
        self.planted_bug == Some(b)
    }
}

/// Errors of proposals, reads, membership changes and transfers. An `Err`
/// leaves the replica unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("not the leader of group {group}; last known leader: {leader:?}")]
    NotLeader {
        group: GroupId,
        leader: Option<NodeId>,
    },
    #[error("group {group}: leadership transfer in progress")]
    TransferInProgress { group: GroupId },
    #[error("group {group}: {uncommitted} entries uncommitted, refusing more")]
    Busy { group: GroupId, uncommitted: u64 },
    #[error("group {group}: a membership change at index {index} is still pending")]
    ConfChangePending { group: GroupId, index: Index },
    #[error("group {group}: the leader has not committed an entry of its term yet")]
    NotCommittedInTerm { group: GroupId },
    #[error("membership change refused: {0}")]
    ConfChange(#[from] ConfChangeError),
    #[error("observer {node} is not caught up (match {match_index}, last {last_index})")]
    NotCaughtUp {
        node: NodeId,
        match_index: Index,
        last_index: Index,
    },
    #[error("{node} cannot take leadership")]
    InvalidTarget { node: NodeId },
    #[error("group {group}: too many pending reads")]
    TooManyReads { group: GroupId },
}

/// Errors of [`Raft::step`]; the message was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("message for group {got} delivered to group {expected}")]
    WrongGroup { expected: GroupId, got: GroupId },
    #[error("message for {got} delivered to {expected}")]
    WrongRecipient { expected: NodeId, got: NodeId },
    /// A follower acknowledged entries this leader never had: the message
    /// comes from another log than this group's (a node of another cluster
    /// reached through a reused address, or a bug). Acting on it would
    /// replicate from past the end of the log.
    #[error("{from} acknowledged index {index} past this leader's last index {last}")]
    AckPastLog {
        from: NodeId,
        index: Index,
        last: Index,
    },
}

/// Errors of [`Raft::restart`] and [`Raft::compact`]: the supplied state is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("inconsistent persisted state: {0}")]
    Inconsistent(String),
    #[error("cannot compact to {index}: {reason}")]
    Compact { index: Index, reason: &'static str },
}

/// What the engine persisted, handed back on restart.
///
/// The engine must supply: the last persisted [`HardState`]; the last
/// persisted [`Ready::membership`] (or the bootstrap membership); the last
/// installed or taken snapshot's metadata (index 0 if none); the log's last
/// index and its term runs over `(snapshot.index, last_index]` (a run starts
/// wherever the term changes; the WAL index has them without reading
/// payloads); a contiguous tail of entries ending at `last_index` that covers
/// at least `(max(hard_state.commit, snapshot.index), last_index]` (the
/// uncommitted suffix, so pending membership changes are known); and the
/// state machine's applied index (normally `snapshot.index`). Older committed
/// entries are fetched with [`FetchRequest`]s as needed.
#[derive(Clone, Debug, Default)]
pub struct PersistedState {
    pub hard_state: HardState,
    pub membership: Membership,
    pub snapshot: SnapshotMeta,
    pub last_index: Index,
    pub term_runs: Vec<(Index, Term)>,
    pub tail: Vec<Entry>,
    pub applied: Index,
}

/// Monotonic number of a [`Ready`].
pub type ReadyNumber = u64;

/// A read request's answer: linearizable once the state machine applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// Why entries are requested from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchPurpose {
    /// To replicate to this follower.
    Replicate(NodeId),
    /// To hand out as committed entries.
    Apply,
}

/// Load entries `[lo, hi]` (at most about `bytes_max`) from the WAL and give
/// them back with [`Raft::entries_loaded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub lo: Index,
    pub hi: Index,
    pub bytes_max: usize,
    pub purpose: FetchPurpose,
}

/// Role, leader and term, reported when any changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
}

/// Work for the engine. Persist `hard_state`, `membership`, `snapshot` and
/// `entries` (the first entry's index `i` replaces the log from `i`); send
/// `messages` now; send `persisted_messages` only once this Ready's writes
/// (and all earlier Readys' writes) are durable; apply `committed_entries`;
/// answer `read_states`; start `fetches`; then call [`Raft::advance`].
#[derive(Debug, Default)]
pub struct Ready {
    pub number: ReadyNumber,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub membership: Option<Membership>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of reads that will never be answered (leadership changed).
    pub dropped_reads: Vec<u64>,
    pub fetches: Vec<FetchRequest>,
}

#[derive(Debug)]
struct InFlightReady {
    number: ReadyNumber,
    last: Option<(Index, Term)>,
}

#[derive(Debug, Clone, Copy)]
enum ReadOrigin {
    Local(u64),
    Remote { from: NodeId, batch: u64 },
}

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    origin: ReadOrigin,
    /// The commit index when the read arrived (None: wait for the leader to
    /// commit an entry of its term first).
    index: Option<Index>,
    /// The heartbeat round that confirms leadership (0: not yet sent).
    seq: u64,
}

/// Counters for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftStats {
    pub elections_started: u64,
    pub messages_rejected_wrong_group: u64,
    /// Messages that cannot come from this group's log ([`StepError::AckPastLog`]).
    pub messages_rejected_impossible: u64,
    pub lease_reads: u64,
    pub quorum_reads: u64,
    pub fetches_requested: u64,
    pub snapshots_sent: u64,
}

/// One group replica's Raft state machine. See the module docs.
pub struct Raft {
    cfg: Config,
    id: NodeId,
    group: GroupId,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,

    /// Effective membership: as of the commit index.
    membership: Membership,
    /// Uncommitted config entries: (index, membership they produce).
    pending_conf: VecDeque<(Index, Membership)>,
    /// Membership along the apply stream, for snapshot metadata.
    applied_memberships: VecDeque<Membership>,
    membership_dirty: bool,

    election_elapsed: u64,
    randomized_timeout: u64,
    rng: u64,
    votes: BTreeMap<NodeId, bool>,
    /// Refuse votes for one election timeout after start (we may have
    /// heard from a leader just before crashing).
    startup_guard: bool,

    progress: BTreeMap<NodeId, Progress>,
    noop_index: Index,
    now_ticks: u64,
    heartbeat_elapsed: u64,
    hb_seq: u64,
    /// (sequence, tick sent) of recent heartbeat rounds, bounded.
    hb_sent: VecDeque<(u64, u64)>,
    lease_floor_seq: u64,
    lease_disabled: bool,
    transfer: Option<(NodeId, u64)>,
    need_broadcast: bool,

    reads: VecDeque<PendingRead>,
    reads_need_round: bool,
    follower_reads: Vec<u64>,
    follower_batches: BTreeMap<u64, Vec<u64>>,
    next_batch: u64,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,

    applied: Index,
    apply_emitted: Index,
    apply_fetching: bool,
    apply_loaded: Vec<Entry>,

    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    fetches: Vec<FetchRequest>,
    hs_emitted: HardState,
    soft_emitted: SoftState,
    snapshot_pending: Option<SnapshotMeta>,
    in_flight: VecDeque<InFlightReady>,
    next_ready: ReadyNumber,

    quiesced: bool,
    idle_ticks: u64,
    active_since_tick: bool,
    scratch: Vec<u64>,
    stats: RaftStats,
}

const HB_SENT_MAX: usize = 64;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Raft {
    /// A brand-new replica: bootstrap members pass the initial membership; a
    /// replica joining an existing group passes an empty one (it learns the
    /// membership from the log or a snapshot).
    ///
    /// # Examples
    /// ```
    /// use flotilla::raft::{Config, GroupId, Membership, NodeId, Raft};
    /// let mut r = Raft::new(Config::new(NodeId(1), GroupId(7)), Membership::voters(&[1]));
    /// for _ in 0..40 { r.tick(); }
    /// assert!(r.is_leader());
    /// ```
    pub fn new(cfg: Config, membership: Membership) -> Raft {
        let state = PersistedState {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership: membership.clone(),
            },
            membership,
            ..Default::default()
        };
        Self::restart(cfg, state).expect("empty state is consistent")
    }

    /// A replica restarted from what was persisted (see [`PersistedState`]).
    ///
    /// # Errors
    /// [`StateError::Inconsistent`] if the pieces do not fit together.
    pub fn restart(cfg: Config, st: PersistedState) -> Result<Raft, StateError> {
        let bad = |s: String| StateError::Inconsistent(s);
        assert!(cfg.election_timeout_ticks > cfg.heartbeat_interval_ticks);
        assert!(cfg.inflight_max > 0);
        assert!(cfg.inflight_bytes_max > 0);
        let hs = st.hard_state;
        let snap = st.snapshot;
        let mut log =
            RaftLog::restore_from(snap.index, snap.term, st.last_index, st.term_runs, st.tail)
                .map_err(bad)?;
        if hs.commit > log.last_index && hs.commit > snap.index {
            return Err(bad(format!(
                "commit {} past last index {}",
                hs.commit, log.last_index
            )));
        }
        let commit = hs.commit.max(snap.index);
        if log.cache_first() > commit + 1 {
            return Err(bad(format!(
                "tail starts at {} but must cover the uncommitted suffix from {}",
                log.cache_first(),
                commit + 1
            )));
        }
        if st.applied < snap.index || st.applied > commit {
            return Err(bad(format!(
                "applied {} outside [{}, {}]",
                st.applied, snap.index, commit
            )));
        }
        log.commit = commit;
        let membership = if snap.membership.config_index > st.membership.config_index {
            snap.membership.clone()
        } else {
            st.membership
        };
        let mut pending_conf = VecDeque::new();
        for i in commit + 1..=log.last_index {
            let e = log.cached(i).expect("tail covers uncommitted suffix");
            if e.kind == EntryKind::ConfChange {
                let (_, m) =
                    ConfChange::decode(&e.data, i).map_err(|e| bad(format!("entry {i}: {e}")))?;
                pending_conf.push_back((i, m));
            }
        }
        let floor = if membership.config_index <= st.applied {
            membership.clone()
        } else {
            snap.membership.clone()
        };
        let mut rng =
            cfg.seed ^ cfg.id.0.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ cfg.group.0.rotate_left(17);
        let _ = splitmix(&mut rng);
        let mut r = Raft {
            id: cfg.id,
            group: cfg.group,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            log,
            membership,
            pending_conf,
            applied_memberships: VecDeque::from([floor]),
            membership_dirty: false,
            election_elapsed: 0,
            randomized_timeout: cfg.election_timeout_ticks,
            rng,
            votes: BTreeMap::new(),
            // A replica that never saw a term cannot have acked a leader.
            startup_guard: hs.term > 0,
            progress: BTreeMap::new(),
            noop_index: 0,
            now_ticks: 0,
            heartbeat_elapsed: 0,
            hb_seq: 0,
            hb_sent: VecDeque::new(),
            lease_floor_seq: 0,
            lease_disabled: false,
            transfer: None,
            need_broadcast: false,
            reads: VecDeque::new(),
            reads_need_round: false,
            follower_reads: Vec::new(),
            follower_batches: BTreeMap::new(),
            next_batch: 1,
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            applied: st.applied,
            apply_emitted: st.applied,
            apply_fetching: false,
            apply_loaded: Vec::new(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            fetches: Vec::new(),
            hs_emitted: hs,
            soft_emitted: SoftState {
                role: Role::Follower,
                leader: None,
                term: hs.term,
            },
            snapshot_pending: None,
            in_flight: VecDeque::new(),
            next_ready: 1,
            quiesced: false,
            idle_ticks: 0,
            active_since_tick: false,
            scratch: Vec::new(),
            stats: RaftStats::default(),
            cfg,
        };
        r.reset_randomized_timeout();
        if r.cfg.stagger_first_election && hs.term == 0 && r.log.last_index == 0 {
            r.stagger_first_timeout();
        }
        r.next_batch = splitmix(&mut r.rng) >> 1;
        tracing::debug!(
            group = r.group.0,
            replica = r.id.0,
            term = r.term,
            last = r.log.last_index,
            "raft replica started"
        );
        Ok(r)
    }

    // ------------------------------------------------------------------ queries

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn group(&self) -> GroupId {
        self.group
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn commit(&self) -> Index {
        self.log.commit
    }
    pub fn applied(&self) -> Index {
        self.applied
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index
    }
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    pub fn persisted_index(&self) -> Index {
        self.log.persisted
    }
    pub fn snapshot_index(&self) -> Index {
        self.log.snapshot_index
    }
    /// Term of entry `i` if it is above the snapshot (or is the snapshot point).
    pub fn term_at(&self, i: Index) -> Option<Term> {
        self.log.term(i)
    }
    /// The effective membership (as of the commit index).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// Index of the uncommitted membership change, if any.
    pub fn pending_conf_index(&self) -> Option<Index> {
        self.pending_conf.back().map(|p| p.0)
    }
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }
    pub fn stats(&self) -> RaftStats {
        self.stats
    }
    pub fn cache_bytes(&self) -> usize {
        self.log.cache_bytes()
    }
    /// The leader's view of each follower.
    pub fn progress(&self) -> Vec<(NodeId, ProgressStats)> {
        self.progress
            .iter()
            .map(|(&id, p)| (id, p.stats()))
            .collect()
    }
    /// The leader transfer in progress, if any.
    pub fn transferee(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.0)
    }

    /// True while this leader may serve reads from its lease: a quorum
    /// acknowledged heartbeats sent within the last election timeout minus
    /// the drift margin, and no transfer was started in this term.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || !self.cfg.check_quorum
            || self.lease_disabled
            || self.transfer.is_some()
        {
            return false;
        }
        if self.quiesced {
            return false;
        }
        let mut ticks: Vec<u64> = Vec::with_capacity(self.membership.members.len());
        for m in &self.membership.members {
            if m.kind == MemberKind::Observer {
                continue;
            }
            if m.id == self.id {
                ticks.push(self.now_ticks);
                continue;
            }
            let Some(pr) = self.progress.get(&m.id) else {
                continue;
            };
            if pr.hb_seq_acked <= self.lease_floor_seq {
                continue;
            }
            if let Some(&(_, t)) = self.hb_sent.iter().find(|(s, _)| *s == pr.hb_seq_acked) {
                ticks.push(t);
            }
        }
        let q = self.membership.quorum();
        if ticks.len() < q {
            return false;
        }
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        let t = ticks[q - 1];
        t + self
            .cfg
            .election_timeout_ticks
            .saturating_sub(self.cfg.lease_margin_ticks)
            > self.now_ticks
    }

    fn promotable(&self) -> bool {
        self.membership.kind(self.id) == Some(MemberKind::Voter)
    }

    fn committed_in_term(&self) -> bool {
        self.role == Role::Leader && self.log.commit >= self.noop_index
    }

    // ------------------------------------------------------------------ inputs

    /// Advances the logical clock by one tick. Does nothing while quiesced.
    pub fn tick(&mut self) {
        if self.quiesced {
            return;
        }
        self.now_ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.startup_guard = false;
        }
        if self.election_elapsed >= self.randomized_timeout && self.promotable() {
            self.election_elapsed = 0;
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some((_, started)) = self.transfer {
            if self.now_ticks - started >= self.cfg.election_timeout_ticks {
                tracing::debug!(
                    group = self.group.0,
                    replica = self.id.0,
                    "leader transfer aborted"
                );
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let q = self.membership.quorum();
                let id = self.id;
                let active = self
                    .membership
                    .members
                    .iter()
                    .filter(|m| m.kind != MemberKind::Observer)
                    .filter(|m| {
                        m.id == id || self.progress.get(&m.id).is_some_and(|p| p.recent_active)
                    })
                    .count();
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
                if active < q {
                    tracing::info!(
                        group = self.group.0,
                        replica = self.id.0,
                        term = self.term,
                        "leader lost quorum; stepping down"
                    );
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(0, true);
        }
        if self.cfg.quiesce_ticks > 0 {
            if self.is_idle() {
                self.idle_ticks += 1;
                if self.idle_ticks >= self.cfg.quiesce_ticks {
                    self.broadcast_heartbeat(FLAG_QUIESCE, false);
                    self.quiesced = true;
                    tracing::debug!(group = self.group.0, replica = self.id.0, "group quiesced");
                }
            } else {
                self.idle_ticks = 0;
            }
            self.active_since_tick = false;
        }
    }

    fn is_idle(&self) -> bool {
        let last = self.log.last_index;
        !self.active_since_tick
            && self.log.commit == last
            && self.log.persisted == last
            && self.reads.is_empty()
            && self.transfer.is_none()
            && self.pending_conf.is_empty()
            && self.progress.values().all(|p| p.match_index == last)
    }

    /// Leaves quiescence (if quiesced) and counts as activity: the engine
    /// calls it when a request for the group arrives that does not reach
    /// the core itself (one forwarded to the leader), so a quiesced follower
    /// starts ticking again and notices a dead leader.
    pub fn wake_up(&mut self) {
        self.wake();
    }

    fn wake(&mut self) {
        self.active_since_tick = true;
        self.idle_ticks = 0;
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.election_elapsed = 0;
        tracing::debug!(group = self.group.0, replica = self.id.0, "group woke up");
        if self.role == Role::Leader {
            // Time passed unseen: only acks of rounds sent from now on count.
            self.lease_floor_seq = self.hb_seq;
            self.broadcast_heartbeat(0, false);
        }
    }

    /// Steps a message from a peer.
    ///
    /// # Errors
    /// A message for another group or replica is ignored and reported.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.group != self.group && !self.cfg.bug(PlantedBug::AcceptOtherGroup) {
            self.stats.messages_rejected_wrong_group += 1;
            return Err(StepError::WrongGroup {
                expected: self.group,
                got: m.group,
            });
        }
        if m.to != self.id {
            return Err(StepError::WrongRecipient {
                expected: self.id,
                got: m.to,
            });
        }
        if self.quiesced && m.kind != MessageType::HeartbeatResponse {
            // Answers to our quiesce heartbeat must not wake us up again.
            self.wake();
        }
        if m.term > self.term {
            let is_vote = matches!(
                m.kind,
                MessageType::RequestVote | MessageType::RequestPreVote
            );
            if is_vote && m.flags & FLAG_TRANSFER == 0 && self.in_lease() {
                // Thesis §4.2.3: a live leader was heard recently; ignore.
                return Ok(());
            }
            match m.kind {
                MessageType::RequestPreVote => {}
                MessageType::RequestPreVoteResponse if !m.reject => {}
                MessageType::Append | MessageType::Heartbeat | MessageType::InstallSnapshot => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.kind {
                MessageType::Append | MessageType::Heartbeat
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term.
                    let r = Message::new(
                        self.group,
                        MessageType::AppendResponse,
                        self.id,
                        m.from,
                        self.term,
                    );
                    self.msgs.push(r);
                }
                MessageType::RequestPreVote => {
                    let mut r = Message::new(
                        self.group,
                        MessageType::RequestPreVoteResponse,
                        self.id,
                        m.from,
                        self.term,
                    );
                    r.reject = true;
                    self.msgs.push(r);
                }
                _ => {}
            }
            return Ok(());
        }
        if self.role == Role::Leader
            && m.kind == MessageType::AppendResponse
            && !m.reject
            && m.index > self.log.last_index
        {
            self.stats.messages_rejected_impossible += 1;
            return Err(StepError::AckPastLog {
                from: m.from,
                index: m.index,
                last: self.log.last_index,
            });
        }
        match m.kind {
            MessageType::RequestVote | MessageType::RequestPreVote => self.handle_vote_request(m),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
        Ok(())
    }

    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader.is_some() || self.startup_guard)
            && self.election_elapsed < self.cfg.election_timeout_ticks
    }

    fn handle_vote_request(&mut self, m: Message) {
        let pre = m.kind == MessageType::RequestPreVote;
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && m.term > self.term);
        let resp_kind = if pre {
            MessageType::RequestPreVoteResponse
        } else {
            MessageType::RequestVoteResponse
        };
        if can_vote && self.log.is_up_to_date(m.index, m.log_term) {
            let r = Message::new(self.group, resp_kind, self.id, m.from, m.term);
            if pre {
                self.msgs.push(r);
            } else {
                assert!(
                    self.vote.is_none() || self.vote == Some(m.from),
                    "second vote in term {}",
                    self.term
                );
                self.election_elapsed = 0;
                self.vote = Some(m.from);
                // The vote is durable before the grant leaves the node.
                self.persisted_msgs.push(r);
            }
        } else {
            let mut r = Message::new(self.group, resp_kind, self.id, m.from, self.term);
            r.reject = true;
            self.msgs.push(r);
        }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        self.stats.elections_started += 1;
        let term = if pre {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        let kind = if pre {
            MessageType::RequestPreVote
        } else {
            MessageType::RequestVote
        };
        if self.tally() >= self.membership.quorum() {
            self.on_won(pre);
            return;
        }
        let (li, lt) = (self.log.last_index, self.log.last_term());
        for mem in &self.membership.members {
            if mem.id == self.id || mem.kind == MemberKind::Observer {
                continue;
            }
            let mut r = Message::new(self.group, kind, self.id, mem.id, term);
            r.index = li;
            r.log_term = lt;
            if transfer {
                r.flags |= FLAG_TRANSFER;
            }
            if pre {
                self.msgs.push(r);
            } else {
                // Our own vote must be durable before we ask for others'.
                self.persisted_msgs.push(r);
            }
        }
    }

    fn tally(&self) -> usize {
        let mut granted = 0;
        for m in &self.membership.members {
            if m.kind != MemberKind::Observer
                && (m.id == self.id || self.votes.get(&m.id) == Some(&true))
            {
                granted += 1;
            }
        }
        granted
    }

    fn on_won(&mut self, pre: bool) {
        if pre {
            self.campaign(false, false);
        } else {
            self.become_leader();
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.kind {
            MessageType::Append | MessageType::Heartbeat | MessageType::InstallSnapshot => {
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m);
            }
            MessageType::RequestPreVoteResponse | MessageType::RequestVoteResponse => {
                let want = if self.role == Role::PreCandidate {
                    MessageType::RequestPreVoteResponse
                } else {
                    MessageType::RequestVoteResponse
                };
                if m.kind != want || !self.membership.is_voting(m.from) {
                    return;
                }
                self.votes.entry(m.from).or_insert(!m.reject);
                let q = self.membership.quorum();
                let rejected = self.votes.values().filter(|v| !**v).count();
                if self.tally() >= q {
                    self.on_won(self.role == Role::PreCandidate);
                } else if rejected >= q {
                    self.become_follower(self.term, None);
                }
            }
            MessageType::ReadIndex => self.reject_read_index(&m),
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.kind {
            MessageType::Append => {
                self.election_elapsed = 0;
                self.set_leader(Some(m.from));
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.set_leader(Some(m.from));
                let c = m.commit.min(self.log.last_index);
                if c > self.log.commit {
                    self.commit_to(c);
                }
                let mut r = Message::new(
                    self.group,
                    MessageType::HeartbeatResponse,
                    self.id,
                    m.from,
                    self.term,
                );
                r.context = m.context;
                self.msgs.push(r);
                if m.flags & FLAG_QUIESCE != 0 && self.cfg.quiesce_ticks > 0 {
                    self.quiesced = true;
                }
            }
            MessageType::InstallSnapshot => {
                self.election_elapsed = 0;
                self.set_leader(Some(m.from));
                self.handle_snapshot(m);
            }
            MessageType::TimeoutNow if self.promotable() => {
                tracing::info!(
                    group = self.group.0,
                    replica = self.id.0,
                    "campaigning on leader transfer"
                );
                self.campaign(false, true);
            }
            MessageType::ReadIndexResponse => {
                if let Some(ctxs) = self.follower_batches.remove(&m.context) {
                    if m.reject {
                        self.dropped_reads.extend(ctxs);
                    } else {
                        self.read_states
                            .extend(ctxs.into_iter().map(|ctx| ReadState {
                                ctx,
                                index: m.index,
                            }));
                    }
                }
            }
            MessageType::ReadIndex => self.reject_read_index(&m),
            _ => {}
        }
    }

    fn reject_read_index(&mut self, m: &Message) {
        let mut r = Message::new(
            self.group,
            MessageType::ReadIndexResponse,
            self.id,
            m.from,
            self.term,
        );
        r.context = m.context;
        r.reject = true;
        self.msgs.push(r);
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            self.drop_follower_reads();
            self.leader = leader;
        }
    }

    fn drop_follower_reads(&mut self) {
        let reads = std::mem::take(&mut self.follower_reads);
        self.dropped_reads.extend(reads);
        let batches = std::mem::take(&mut self.follower_batches);
        for (_, v) in batches {
            self.dropped_reads.extend(v);
        }
    }

    fn handle_append(&mut self, m: Message) {
        let mut r = Message::new(
            self.group,
            MessageType::AppendResponse,
            self.id,
            m.from,
            self.term,
        );
        // The leader's heartbeat round (see `send_append`).
        r.context = m.context;
        if m.index < self.log.commit {
            r.index = self.log.commit;
        } else if self.log.match_term(m.index, m.log_term) {
            let last_new = m.index + m.entries.len() as u64;
            // Find the first entry that is new or conflicting (§5.3).
            let mut skip = 0;
            for e in &m.entries {
                if self.log.match_term(e.index, e.term) {
                    skip += 1;
                } else {
                    break;
                }
            }
            let truncate_anyway = self.cfg.bug(PlantedBug::TruncateCommitted);
            if skip < m.entries.len() {
                let from = m.entries[skip].index;
                if from <= self.log.last_index {
                    if !truncate_anyway {
                        assert!(
                            from > self.log.commit,
                            "group={} truncating committed entry {} (commit {})",
                            self.group,
                            from,
                            self.log.commit
                        );
                    }
                    tracing::debug!(
                        group = self.group.0,
                        replica = self.id.0,
                        from,
                        "truncating conflicting suffix"
                    );
                    self.truncate_from(from);
                }
                let mut entries = m.entries;
                entries.drain(..skip);
                self.append_follower(entries);
            } else if truncate_anyway && last_new < self.log.last_index {
                self.truncate_from(last_new + 1);
            }
            let c = m.commit.min(last_new);
            if c > self.log.commit {
                self.commit_to(c);
            }
            r.index = last_new;
        } else {
            let hint = self
                .log
                .find_conflict_by_term(m.index.min(self.log.last_index), m.log_term);
            r.reject = true;
            r.index = m.index;
            r.reject_hint = hint;
            r.log_term = self.log.term(hint).unwrap_or(0);
        }
        if self.cfg.bug(PlantedBug::AckBeforePersist) {
            self.msgs.push(r);
        } else {
            self.persisted_msgs.push(r);
        }
    }

    fn truncate_from(&mut self, from: Index) {
        self.log.truncate_from(from);
        while self.pending_conf.back().is_some_and(|p| p.0 >= from) {
            self.pending_conf.pop_back();
        }
    }

    fn append_follower(&mut self, entries: Vec<Entry>) {
        for e in &entries {
            if e.kind == EntryKind::ConfChange {
                match ConfChange::decode(&e.data, e.index) {
                    Ok((_, m)) => self.pending_conf.push_back((e.index, m)),
                    Err(err) => {
                        tracing::error!(group = self.group.0, index = e.index, %err, "undecodable config entry")
                    }
                }
            }
        }
        self.log.append(entries);
    }

    fn handle_snapshot(&mut self, m: Message) {
        let Some(meta) = m.snapshot else { return };
        let mut r = Message::new(
            self.group,
            MessageType::AppendResponse,
            self.id,
            m.from,
            self.term,
        );
        if meta.index <= self.log.commit {
            r.index = self.log.commit;
        } else if !self.restores_from(&meta) {
            // Already in the log: only the commit index moves.
            self.commit_to(meta.index);
            r.index = meta.index;
        } else {
            tracing::info!(
                group = self.group.0,
                replica = self.id.0,
                index = meta.index,
                term = meta.term,
                "installing snapshot"
            );
            self.log.restore_snapshot(meta.index, meta.term);
            self.pending_conf.clear();
            self.membership = meta.membership.clone();
            self.membership_dirty = true;
            self.applied_memberships.clear();
            self.applied_memberships.push_back(meta.membership.clone());
            self.applied = meta.index;
            self.apply_emitted = meta.index;
            self.apply_loaded.clear();
            self.apply_fetching = false;
            r.index = meta.index;
            self.snapshot_pending = Some(meta);
        }
        self.persisted_msgs.push(r);
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        match m.kind {
            MessageType::AppendResponse => {
                let Some(pr) = self.progress.get_mut(&from) else {
                    // A replica removed before its acknowledgement of the
                    // change arrived.
                    if !m.reject {
                        self.farewell(from, m.index);
                    }
                    return;
                };
                pr.recent_active = true;
                // Any answer shows the follower heard this leader after the
                // round the append carried (`send_append`) began.
                let round_acked = m.context > pr.hb_seq_acked;
                pr.hb_seq_acked = pr.hb_seq_acked.max(m.context);
                if !m.reject {
                    pr.accepted_since_round = true;
                }
                // Once per round, not per answer: the reads it may confirm,
                // then the progress again (the borrow ended for them).
                let pr = if round_acked {
                    self.confirm_reads();
                    let Some(pr) = self.progress.get_mut(&from) else {
                        return;
                    };
                    pr
                } else {
                    pr
                };
                if m.reject {
                    let mut probe_from = m.reject_hint;
                    if m.log_term > 0 {
                        probe_from = self.log.find_conflict_by_term(m.reject_hint, m.log_term);
                    }
                    if pr.maybe_decr_to(m.index, probe_from) {
                        if pr.state == ProgressState::Replicate {
                            pr.become_probe();
                        }
                        self.send_append(from, true);
                    }
                    return;
                }
                let window = self.cfg.window();
                let old_paused = pr.is_paused(window);
                if !pr.maybe_update(m.index) {
                    if old_paused && !pr.is_paused(window) {
                        self.send_appends_to(from);
                    }
                    return;
                }
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot { index } if pr.match_index >= index => {
                        pr.become_probe();
                        pr.become_replicate();
                    }
                    _ => {}
                }
                if self.maybe_commit() && !self.cfg.lazy_commit_notify {
                    self.need_broadcast = true;
                }
                // The slowest follower may acknowledge after the entries
                // were applied: let them go now rather than at the next apply.
                if self.log.cache_bytes() > self.cfg.cache_replicated_bytes_max {
                    self.trim_cache();
                }
                self.send_appends_to(from);
                if self.transfer.map(|t| t.0) == Some(from)
                    && self.progress[&from].match_index == self.log.last_index
                {
                    self.send_timeout_now(from);
                }
            }
            MessageType::HeartbeatResponse => {
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.recent_active = true;
                pr.hb_seq_acked = pr.hb_seq_acked.max(m.context);
                let fresh = pr.on_heartbeat_response(self.cfg.window(), m.context);
                if fresh && pr.match_index < self.log.last_index {
                    // Possibly empty: a follower that lost appends rejects it
                    // and replication falls back to probing.
                    if self.send_append(from, true) {
                        self.send_appends_to(from);
                    }
                }
                self.confirm_reads();
            }
            MessageType::ReadIndex => {
                if self.reads.len() >= self.cfg.pending_reads_max {
                    self.reject_read_index(&m);
                    return;
                }
                self.add_read(ReadOrigin::Remote {
                    from,
                    batch: m.context,
                });
            }
            _ => {}
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_disabled = true;
        let r = Message::new(self.group, MessageType::TimeoutNow, self.id, to, self.term);
        self.msgs.push(r);
    }

    // ------------------------------------------------------------------ role changes

    /// See [`Config::stagger_first_election`].
    fn stagger_first_timeout(&mut self) {
        let voters: Vec<NodeId> = self
            .membership
            .members
            .iter()
            .filter(|m| m.kind == MemberKind::Voter)
            .map(|m| m.id)
            .collect();
        if voters.len() < 2 || !voters.contains(&self.id) {
            return;
        }
        let et = self.cfg.election_timeout_ticks;
        let first = voters[(self.group.0 % voters.len() as u64) as usize];
        self.randomized_timeout = if first == self.id {
            et
        } else {
            2 * et + splitmix(&mut self.rng) % et
        };
    }

    fn reset_randomized_timeout(&mut self) {
        let et = self.cfg.election_timeout_ticks;
        self.randomized_timeout = et + splitmix(&mut self.rng) % et;
    }

    fn reset(&mut self, term: Term) {
        if term != self.term {
            assert!(
                term > self.term,
                "group={} term regressed {} -> {}",
                self.group,
                self.term,
                term
            );
            self.term = term;
            self.vote = None;
        }
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.transfer = None;
        if self.role == Role::Leader {
            for r in std::mem::take(&mut self.reads) {
                if let ReadOrigin::Local(ctx) = r.origin {
                    self.dropped_reads.push(ctx);
                }
            }
        }
        self.progress.clear();
        self.reads_need_round = false;
        self.lease_disabled = false;
        self.need_broadcast = false;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader || term != self.term {
            tracing::debug!(
                group = self.group.0,
                replica = self.id.0,
                term,
                ?leader,
                "became follower"
            );
        }
        self.reset(term);
        self.role = Role::Follower;
        self.set_leader(leader);
        debug_assert!(self.progress.is_empty());
    }

    fn become_pre_candidate(&mut self) {
        assert!(self.role != Role::Leader);
        // PreVote does not change term or vote.
        self.votes.clear();
        self.role = Role::PreCandidate;
        self.set_leader(None);
        self.reset_randomized_timeout();
        self.election_elapsed = 0;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader);
        self.reset(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.set_leader(None);
    }

    fn become_leader(&mut self) {
        assert!(self.role == Role::Candidate);
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.startup_guard = false;
        tracing::info!(
            group = self.group.0,
            replica = self.id.0,
            term = self.term,
            "became leader"
        );
        let next = self.log.last_index + 1;
        for m in &self.membership.members {
            if m.id != self.id {
                let mut p = Progress::new(next, m.kind);
                p.recent_active = true;
                self.progress.insert(m.id, p);
            }
        }
        self.lease_floor_seq = self.hb_seq;
        self.noop_index = next;
        self.append_new(std::iter::once((EntryKind::Noop, Bytes::new())));
        self.broadcast_append();
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
    }

    // ------------------------------------------------------------------ replication

    fn append_new(
        &mut self,
        items: impl IntoIterator<Item = (EntryKind, Bytes)>,
    ) -> (Index, Index) {
        let first = self.log.last_index + 1;
        let term = self.term;
        let mut idx = self.log.last_index;
        let entries = items.into_iter().map(|(kind, data)| {
            idx += 1;
            Entry {
                index: idx,
                term,
                kind,
                data,
            }
        });
        self.log.append(entries);
        (first, self.log.last_index)
    }

    fn send_appends_to(&mut self, to: NodeId) {
        // Bounded by the in-flight window.
        while self.send_append(to, false) {}
    }

    fn broadcast_append(&mut self) {
        self.need_broadcast = false;
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            if !self.send_append(id, true) {
                continue;
            }
            self.send_appends_to(id);
        }
    }

    /// Sends one append (or a snapshot) to `to`. Returns true if it sent entries.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let window = self.cfg.window();
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused(window) || pr.fetching {
            return false;
        }
        let next = pr.next_index;
        let prev = next - 1;
        let Some(prev_term) = self.log.term(prev) else {
            self.send_snapshot(to);
            return false;
        };
        let entries = if next > self.log.last_index {
            Vec::new()
        } else {
            match self
                .log
                .slice(next, self.log.last_index, self.cfg.append_bytes_max)
            {
                Slice::Entries(v) => v,
                Slice::Compacted => {
                    self.send_snapshot(to);
                    return false;
                }
                Slice::OnDisk { hi } => {
                    pr.fetching = true;
                    self.stats.fetches_requested += 1;
                    self.fetches.push(FetchRequest {
                        lo: next,
                        hi,
                        bytes_max: self.cfg.append_bytes_max,
                        purpose: FetchPurpose::Replicate(to),
                    });
                    return false;
                }
            }
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        self.emit_append(to, prev, prev_term, entries)
    }

    fn emit_append(
        &mut self,
        to: NodeId,
        prev: Index,
        prev_term: Term,
        mut entries: Vec<Entry>,
    ) -> bool {
        let pr = self.progress.get_mut(&to).expect("progress");
        let has = !entries.is_empty();
        let last = prev + entries.len() as u64;
        if pr.kind == MemberKind::Witness {
            for e in entries.iter_mut() {
                if e.kind == EntryKind::Normal {
                    e.data = Bytes::new();
                }
            }
        }
        let bytes = entries.iter().map(|e| e.size_bytes() as u64).sum();
        pr.sent(last, has, bytes, self.hb_seq);
        pr.appended_since_round = true;
        pr.sent_commit = pr.sent_commit.max(self.log.commit);
        let mut m = Message::new(self.group, MessageType::Append, self.id, to, self.term);
        m.index = prev;
        m.log_term = prev_term;
        m.entries = entries;
        m.commit = self.log.commit;
        // The current heartbeat round: the follower echoes it, so an
        // accepted append counts like an answered heartbeat of that round
        // (reads, lease), and a busy group needs no heartbeats at all.
        m.context = self.hb_seq;
        self.msgs.push(m);
        has
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let meta = SnapshotMeta {
            index: self.log.snapshot_index,
            term: self.log.snapshot_term,
            membership: self.membership_at(self.log.snapshot_index),
        };
        debug_assert!(meta.index > 0, "snapshot needed before any compaction");
        let pr = self.progress.get_mut(&to).expect("progress");
        pr.become_snapshot(meta.index);
        self.stats.snapshots_sent += 1;
        tracing::debug!(
            group = self.group.0,
            replica = self.id.0,
            to = to.0,
            index = meta.index,
            "sending snapshot"
        );
        let mut m = Message::new(
            self.group,
            MessageType::InstallSnapshot,
            self.id,
            to,
            self.term,
        );
        m.snapshot = Some(meta);
        m.commit = self.log.commit;
        self.msgs.push(m);
    }

    /// The membership in effect at applied index `index` (at or above the
    /// snapshot index; the oldest one known below it).
    pub fn membership_at(&self, index: Index) -> Membership {
        self.applied_memberships
            .iter()
            .rev()
            .find(|m| m.config_index <= index)
            .or(self.applied_memberships.front())
            .cloned()
            .unwrap_or_default()
    }

    /// Starts heartbeat round `hb_seq + 1`. A `periodic` round (the
    /// heartbeat timer's) skips the followers whose appends did its work.
    fn broadcast_heartbeat(&mut self, flags: u32, periodic: bool) {
        self.hb_seq += 1;
        let seq = self.hb_seq;
        if self.hb_sent.len() >= HB_SENT_MAX {
            self.hb_sent.pop_front();
        }
        self.hb_sent.push_back((seq, self.now_ticks));
        for r in self.reads.iter_mut() {
            if r.index.is_some() && r.seq == 0 {
                r.seq = seq;
            }
        }
        self.reads_need_round = false;
        let commit = self.log.commit;
        // A periodic round skips the followers that accepted an append since
        // the last round and were sent the commit index: the appends did a
        // heartbeat's work (election timers, commit; their answers count for
        // this round, see `send_append`). Not when reads wait for this
        // round: nothing says another append will go out to confirm them.
        let skip_busy =
            periodic && self.cfg.skip_busy_heartbeats && !self.reads.iter().any(|r| r.seq == seq);
        for (&id, pr) in self.progress.iter_mut() {
            let busy = pr.appended_since_round
                && pr.accepted_since_round
                && pr.sent_commit >= commit.min(pr.match_index);
            pr.appended_since_round = false;
            pr.accepted_since_round = false;
            if skip_busy && busy {
                continue;
            }
            let mut m = Message::new(self.group, MessageType::Heartbeat, self.id, id, self.term);
            m.commit = commit.min(pr.match_index);
            m.context = seq;
            m.flags = flags;
            self.msgs.push(m);
        }
        self.confirm_reads();
    }

    /// Commit index from the quorum's match indexes (§5.3, §5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        for m in &self.membership.members {
            if m.kind == MemberKind::Observer {
                continue;
            }
            if m.id == self.id {
                // The leader counts only what it has persisted itself.
                v.push(self.log.persisted);
            } else if let Some(p) = self.progress.get(&m.id) {
                v.push(p.match_index);
            } else {
                v.push(0);
            }
        }
        let q = self.membership.quorum();
        let mut changed = false;
        if v.len() >= q && q > 0 {
            v.sort_unstable_by(|a, b| b.cmp(a));
            let mci = v[q - 1];
            let term_ok = self.log.term(mci) == Some(self.term)
                || self.cfg.bug(PlantedBug::CommitPreviousTerm);
            if mci > self.log.commit && term_ok {
                self.commit_to(mci);
                changed = true;
            }
        }
        self.scratch = v;
        changed
    }

    fn commit_to(&mut self, c: Index) {
        assert!(
            c >= self.log.commit,
            "group={} commit regressed {} -> {}",
            self.group,
            self.log.commit,
            c
        );
        debug_assert!(c <= self.log.last_index || self.cfg.planted_bug.is_some());
        let was_committed_in_term = self.committed_in_term();
        self.log.commit = c;
        while self.pending_conf.front().is_some_and(|p| p.0 <= c) {
            let (index, m) = self.pending_conf.pop_front().unwrap();
            self.apply_membership(index, m);
        }
        if self.role == Role::Leader && !was_committed_in_term && self.committed_in_term() {
            let commit = self.log.commit;
            for r in self.reads.iter_mut() {
                if r.index.is_none() {
                    r.index = Some(commit);
                    self.reads_need_round = true;
                }
            }
        }
    }

    /// Tells a replica that is no longer a member how far the log is
    /// committed (up to `matched`, what it holds of this leader's log). It
    /// holds the change that removed it but would never hear that it
    /// committed -- nobody sends to it any more -- and so stayed in the old
    /// membership, leaderless, for good. Committed there, the change tells
    /// it that it is out: it no longer campaigns.
    fn farewell(&mut self, to: NodeId, matched: Index) {
        let mut m = Message::new(self.group, MessageType::Heartbeat, self.id, to, self.term);
        m.commit = self.log.commit.min(matched);
        self.msgs.push(m);
    }

    fn apply_membership(&mut self, index: Index, m: Membership) {
        tracing::info!(
            group = self.group.0,
            replica = self.id.0,
            index,
            members = m.members.len(),
            "membership changed"
        );
        self.membership = m;
        self.membership_dirty = true;
        if self.role != Role::Leader {
            return;
        }
        // Sync progress with the new membership.
        let next = self.log.last_index + 1;
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            if self.membership.get(id).is_none() {
                let p = self.progress.remove(&id).expect("listed");
                if p.match_index >= index {
                    self.farewell(id, p.match_index);
                }
            }
        }
        for mem in &self.membership.members {
            if mem.id == self.id {
                continue;
            }
            let p = self.progress.entry(mem.id).or_insert_with(|| {
                let mut p = Progress::new(next, mem.kind);
                p.recent_active = true;
                p
            });
            p.kind = mem.kind;
        }
        if let Some((t, _)) = self.transfer {
            if !self.membership.is_voting(t) {
                self.transfer = None;
            }
        }
        if self.membership.kind(self.id) != Some(MemberKind::Voter) {
            tracing::info!(
                group = self.group.0,
                replica = self.id.0,
                "leader removed from the group; stepping down"
            );
            // Tell the others the change committed, and hand leadership to
            // the most up-to-date voter so the group does not wait for an
            // election timeout.
            self.broadcast_append();
            let last = self.log.last_index;
            let heir = self
                .progress
                .iter()
                .filter(|(id, p)| {
                    self.membership.kind(**id) == Some(MemberKind::Voter) && p.match_index == last
                })
                .map(|(id, _)| *id)
                .next();
            if let Some(h) = heir {
                self.send_timeout_now(h);
            }
            self.become_follower(self.term, None);
            return;
        }
        self.need_broadcast = true;
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
    }

    // ------------------------------------------------------------------ client API

    fn not_leader(&self) -> ProposeError {
        ProposeError::NotLeader {
            group: self.group,
            leader: self.leader,
        }
    }

    fn check_proposable(&self, n: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress { group: self.group });
        }
        let uncommitted = self.log.last_index - self.log.commit;
        if uncommitted + n > self.cfg.uncommitted_entries_max {
            return Err(ProposeError::Busy {
                group: self.group,
                uncommitted,
            });
        }
        Ok(())
    }

    /// Proposes one command; returns its index (it is committed if an entry
    /// with this index *and* the current term is later applied).
    ///
    /// # Errors
    /// Not the leader, transfer in progress, or too many uncommitted entries.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        self.wake();
        self.check_proposable(1)?;
        let (i, _) = self.append_new(std::iter::once((EntryKind::Normal, data)));
        self.need_broadcast = true;
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        Ok(i)
    }

    /// Proposes a batch of commands as consecutive entries; returns
    /// `(first, last)` indexes. An empty batch returns `(last+1, last)`.
    ///
    /// # Errors
    /// As [`Raft::propose`]; nothing is appended on error.
    pub fn propose_batch<I>(&mut self, batch: I) -> Result<(Index, Index), ProposeError>
    where
        I: IntoIterator<Item = Bytes>,
        I::IntoIter: ExactSizeIterator,
    {
        self.wake();
        let it = batch.into_iter();
        self.check_proposable(it.len() as u64)?;
        let r = self.append_new(it.map(|d| (EntryKind::Normal, d)));
        self.need_broadcast = true;
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        Ok(r)
    }

    /// Proposes a single-server membership change; returns its index.
    ///
    /// # Errors
    /// Not the leader; the leader has not committed an entry of its term
    /// (thesis §4.1 bug fix); another change pending; an invalid change; an
    /// observer promoted before it caught up.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<Index, ProposeError> {
        self.wake();
        self.check_proposable(1)?;
        if !self.committed_in_term() {
            return Err(ProposeError::NotCommittedInTerm { group: self.group });
        }
        if let Some(&(index, _)) = self.pending_conf.back() {
            return Err(ProposeError::ConfChangePending {
                group: self.group,
                index,
            });
        }
        let index = self.log.last_index + 1;
        let next = self.membership.applied(&cc, index)?;
        if cc.kind == ConfChangeKind::PromoteObserver {
            let m = self
                .progress
                .get(&cc.node)
                .map(|p| p.match_index)
                .unwrap_or(0);
            if m + self.cfg.promote_lag_max < self.log.last_index {
                return Err(ProposeError::NotCaughtUp {
                    node: cc.node,
                    match_index: m,
                    last_index: self.log.last_index,
                });
            }
        }
        let data = cc.encode(&next);
        self.append_new(std::iter::once((EntryKind::ConfChange, data)));
        self.pending_conf.push_back((index, next));
        self.need_broadcast = true;
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        Ok(index)
    }

    /// Whether `cc` is already in effect in a membership this leader knows
    /// to be committed (no change pending, an entry of its term committed).
    /// Such a change is answered as done rather than refused: a client that
    /// retries a change whose first answer was lost (the leader changed
    /// while the request was forwarded, or the deadline passed just as it
    /// committed) must not be told it failed.
    pub fn conf_change_in_effect(&self, cc: &ConfChange) -> bool {
        self.committed_in_term()
            && self.transfer.is_none()
            && self.pending_conf.is_empty()
            && self.membership.in_effect(cc)
    }

    /// Starts a leadership transfer to `to` (thesis §3.10): catch it up, then
    /// send TimeoutNow. Proposals are refused until it completes or aborts
    /// (after an election timeout).
    ///
    /// # Errors
    /// Not the leader, or `to` is not a voter other than this replica.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.wake();
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if to == self.id || self.membership.kind(to) != Some(MemberKind::Voter) {
            return Err(ProposeError::InvalidTarget { node: to });
        }
        if self.transfer.map(|t| t.0) == Some(to) {
            return Ok(());
        }
        self.transfer = Some((to, self.now_ticks));
        self.election_elapsed = 0;
        tracing::info!(
            group = self.group.0,
            replica = self.id.0,
            to = to.0,
            "leader transfer started"
        );
        if self.progress[&to].match_index == self.log.last_index {
            self.send_timeout_now(to);
        } else {
            self.send_appends_to(to);
        }
        Ok(())
    }

    /// Requests a linearizable read: a [`ReadState`] with this `ctx` comes out
    /// in a later Ready; serve it once the state machine applied its index.
    /// Reads are batched on one heartbeat round, served from the lease when
    /// it holds, and forwarded to the leader from followers.
    ///
    /// # Errors
    /// No known leader, or too many pending reads.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.wake();
        match self.role {
            Role::Leader => {
                if self.reads.len() >= self.cfg.pending_reads_max {
                    return Err(ProposeError::TooManyReads { group: self.group });
                }
                self.add_read(ReadOrigin::Local(ctx));
                Ok(())
            }
            _ => {
                if self.leader.is_none() {
                    return Err(self.not_leader());
                }
                if self.follower_reads.len() + self.follower_batches.len()
                    >= self.cfg.pending_reads_max
                {
                    return Err(ProposeError::TooManyReads { group: self.group });
                }
                self.follower_reads.push(ctx);
                Ok(())
            }
        }
    }

    /// As [`Raft::read_index`], but a leader whose lease holds answers at
    /// once even if `Config::lease_read` is off: the caller opts into lease
    /// reads per request (followers still forward to the leader, which
    /// confirms with a heartbeat round unless its own config allows leases).
    ///
    /// # Errors
    /// As [`Raft::read_index`].
    pub fn read_index_lease(&mut self, ctx: u64) -> Result<(), ProposeError> {
        let configured = self.cfg.lease_read;
        self.cfg.lease_read = true;
        let started = self.read_index(ctx);
        self.cfg.lease_read = configured;
        started
    }

    fn add_read(&mut self, origin: ReadOrigin) {
        if self.committed_in_term() {
            let commit = self.log.commit;
            if self.cfg.lease_read && self.lease_valid() {
                self.stats.lease_reads += 1;
                self.answer_read(origin, commit);
                return;
            }
            self.stats.quorum_reads += 1;
            self.reads.push_back(PendingRead {
                origin,
                index: Some(commit),
                seq: 0,
            });
            self.reads_need_round = true;
            self.confirm_reads();
        } else {
            self.reads.push_back(PendingRead {
                origin,
                index: None,
                seq: 0,
            });
        }
    }

    fn answer_read(&mut self, origin: ReadOrigin, index: Index) {
        match origin {
            ReadOrigin::Local(ctx) => self.read_states.push(ReadState { ctx, index }),
            ReadOrigin::Remote { from, batch } => {
                let mut m = Message::new(
                    self.group,
                    MessageType::ReadIndexResponse,
                    self.id,
                    from,
                    self.term,
                );
                m.context = batch;
                m.index = index;
                self.msgs.push(m);
            }
        }
    }

    /// Answers reads whose heartbeat round a quorum acknowledged.
    fn confirm_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        for m in &self.membership.members {
            if m.kind == MemberKind::Observer {
                continue;
            }
            if m.id == self.id {
                v.push(self.hb_seq);
            } else if let Some(p) = self.progress.get(&m.id) {
                // Only acks of this term's rounds count.
                v.push(if p.hb_seq_acked > self.lease_floor_seq {
                    p.hb_seq_acked
                } else {
                    0
                });
            }
        }
        let q = self.membership.quorum();
        let acked = if v.len() >= q {
            v.sort_unstable_by(|a, b| b.cmp(a));
            v[q - 1]
        } else {
            0
        };
        self.scratch = v;
        while let Some(r) = self.reads.front() {
            match r.index {
                Some(i) if r.seq != 0 && r.seq <= acked => {
                    let o = r.origin;
                    self.reads.pop_front();
                    self.answer_read(o, i);
                }
                _ => break,
            }
        }
    }

    /// Entries requested by a [`FetchRequest`] were loaded (possibly fewer,
    /// or none if unavailable). Stale or inconsistent results are ignored.
    pub fn entries_loaded(&mut self, req: FetchRequest, entries: Vec<Entry>) {
        let consistent = entries.first().is_some_and(|e| e.index == req.lo)
            && entries.iter().enumerate().all(|(k, e)| {
                e.index == req.lo + k as u64 && self.log.term(e.index) == Some(e.term)
            });
        match req.purpose {
            FetchPurpose::Replicate(to) => {
                if self.role != Role::Leader {
                    return;
                }
                let Some(pr) = self.progress.get_mut(&to) else {
                    return;
                };
                pr.fetching = false;
                if !consistent || pr.next_index != req.lo || pr.is_paused(self.cfg.window()) {
                    return;
                }
                let Some(prev_term) = self.log.term(req.lo - 1) else {
                    self.send_snapshot(to);
                    return;
                };
                self.emit_append(to, req.lo - 1, prev_term, entries);
                self.send_appends_to(to);
            }
            FetchPurpose::Apply => {
                self.apply_fetching = false;
                if consistent && req.lo == self.apply_emitted + 1 {
                    self.apply_loaded = entries;
                }
            }
        }
    }

    /// Whether stepping `m` now would restore this replica from the
    /// snapshot it carries: an `InstallSnapshot` for this replica, of a term
    /// at least its own (a stale one is ignored), past its commit index and
    /// not already in its log (those only advance the commit index). The
    /// engine installs the snapshot's state machine only when this holds,
    /// right before stepping `m`, so that the state machine never runs
    /// ahead of the log.
    pub fn would_restore(&self, m: &Message) -> bool {
        let Some(meta) = m.snapshot.as_ref() else {
            return false;
        };
        m.kind == MessageType::InstallSnapshot
            && m.group == self.group
            && m.to == self.id
            && (m.term > self.term || (m.term == self.term && self.role != Role::Leader))
            && self.restores_from(meta)
    }

    /// Whether a snapshot at `meta` replaces this replica's log (what
    /// [`Raft::handle_snapshot`] restores from): past the commit index and
    /// not an entry the log already holds.
    fn restores_from(&self, meta: &SnapshotMeta) -> bool {
        meta.index > self.log.commit && !self.log.match_term(meta.index, meta.term)
    }

    /// A snapshot sent to `peer` was delivered (`ok`) or failed.
    pub fn report_snapshot(&mut self, peer: NodeId, ok: bool) {
        let Some(pr) = self.progress.get_mut(&peer) else {
            return;
        };
        if let ProgressState::Snapshot { .. } = pr.state {
            if !ok {
                pr.state = ProgressState::Probe;
                pr.next_index = pr.match_index + 1;
                pr.probe_sent = false;
            } else {
                pr.become_probe();
                pr.probe_sent = true;
            }
        }
    }

    /// The transport could not reach `peer`.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role == Role::Leader {
            if let Some(pr) = self.progress.get_mut(&peer) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
            }
        } else if self.leader == Some(peer) && self.quiesced {
            self.wake();
        }
    }

    /// The state machine applied everything up to `index`.
    pub fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.apply_emitted,
            "applied {index} beyond handed-out {}",
            self.apply_emitted
        );
        if index > self.applied {
            self.applied = index;
            self.trim_cache();
        }
    }

    /// Evicts cached entries: those every replica has down to
    /// `cache_replicated_bytes_max`, any applied one down to `cache_bytes_max`.
    fn trim_cache(&mut self) {
        let mut everywhere = self.applied + 1;
        if self.role == Role::Leader {
            for pr in self.progress.values() {
                everywhere = everywhere.min(pr.match_index + 1);
            }
        }
        self.log
            .evict(everywhere, self.cfg.cache_replicated_bytes_max);
        self.log.evict(self.applied + 1, self.cfg.cache_bytes_max);
    }

    /// The engine took a snapshot at `index` (≤ applied): drop entries up to
    /// it. Returns the snapshot's metadata (term and membership at `index`)
    /// to store with the snapshot data.
    ///
    /// # Errors
    /// `index` is not applied and persisted, or not above the current snapshot.
    pub fn compact(&mut self, index: Index) -> Result<SnapshotMeta, StateError> {
        if index <= self.log.snapshot_index {
            return Err(StateError::Compact {
                index,
                reason: "not above the current snapshot",
            });
        }
        if index > self.applied || index > self.log.persisted {
            return Err(StateError::Compact {
                index,
                reason: "not applied and persisted",
            });
        }
        self.log.compact(index);
        while self.applied_memberships.len() > 1
            && self.applied_memberships[1].config_index <= index
        {
            self.applied_memberships.pop_front();
        }
        Ok(SnapshotMeta {
            index,
            term: self.log.snapshot_term,
            membership: self.membership_at(index),
        })
    }

    // ------------------------------------------------------------------ Ready

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }

    fn flush(&mut self) {
        if self.role == Role::Leader {
            if self.need_broadcast {
                self.broadcast_append();
            }
            if self.reads_need_round {
                self.broadcast_heartbeat(0, false);
            }
        }
        if !self.follower_reads.is_empty() {
            if let (Some(l), true) = (self.leader, self.role != Role::Leader) {
                let batch = self.next_batch;
                self.next_batch += 1;
                let mut m = Message::new(self.group, MessageType::ReadIndex, self.id, l, self.term);
                m.context = batch;
                self.msgs.push(m);
                self.follower_batches
                    .insert(batch, std::mem::take(&mut self.follower_reads));
            }
        }
    }

    /// True if [`Raft::ready`] would return work.
    pub fn has_ready(&mut self) -> bool {
        self.flush();
        self.hard_state() != self.hs_emitted
            || self.soft_state() != self.soft_emitted
            || self.membership_dirty
            || self.snapshot_pending.is_some()
            || self.log.emitted < self.log.last_index
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || !self.fetches.is_empty()
            || self.can_apply()
    }

    fn can_apply(&self) -> bool {
        self.apply_emitted < self.log.commit.min(self.log.persisted)
            && (!self.apply_loaded.is_empty()
                || !self.apply_fetching
                || self.log.cache_first() <= self.apply_emitted + 1)
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// Collects the work to do; `None` if there is none. A Ready never
    /// repeats the work of an earlier one, acknowledged or not.
    pub fn ready(&mut self) -> Option<Ready> {
        if !self.has_ready() {
            return None;
        }
        let mut rd = Ready {
            number: self.next_ready,
            ..Default::default()
        };
        self.next_ready += 1;
        let hs = self.hard_state();
        if hs != self.hs_emitted {
            let mut out = hs;
            if self.cfg.bug(PlantedBug::ForgetVote) {
                out.vote = None;
            }
            rd.hard_state = Some(out);
            self.hs_emitted = hs;
        }
        let ss = self.soft_state();
        if ss != self.soft_emitted {
            rd.soft_state = Some(ss);
            self.soft_emitted = ss;
        }
        if self.membership_dirty {
            self.membership_dirty = false;
            rd.membership = Some(self.membership.clone());
        }
        rd.snapshot = self.snapshot_pending.take();
        rd.entries = self.log.take_unstable();
        let last = rd.entries.last().map(|e| (e.index, e.term));
        rd.messages = std::mem::take(&mut self.msgs);
        rd.persisted_messages = std::mem::take(&mut self.persisted_msgs);
        rd.read_states = std::mem::take(&mut self.read_states);
        rd.dropped_reads = std::mem::take(&mut self.dropped_reads);
        rd.committed_entries = self.take_committed();
        rd.fetches = std::mem::take(&mut self.fetches);
        debug_assert!(self.in_flight.len() < 1 << 16, "readys never advanced");
        self.in_flight.push_back(InFlightReady {
            number: rd.number,
            last,
        });
        Some(rd)
    }

    fn take_committed(&mut self) -> Vec<Entry> {
        let hi = self.log.commit.min(self.log.persisted);
        if self.apply_emitted >= hi {
            return Vec::new();
        }
        let lo = self.apply_emitted + 1;
        let mut out = if !self.apply_loaded.is_empty() {
            let mut v = std::mem::take(&mut self.apply_loaded);
            v.retain(|e| e.index <= hi);
            v
        } else {
            match self.log.slice(lo, hi, self.cfg.apply_bytes_max) {
                Slice::Entries(v) => v,
                Slice::OnDisk { hi: h } => {
                    if !self.apply_fetching {
                        self.apply_fetching = true;
                        self.stats.fetches_requested += 1;
                        self.fetches.push(FetchRequest {
                            lo,
                            hi: h,
                            bytes_max: self.cfg.apply_bytes_max,
                            purpose: FetchPurpose::Apply,
                        });
                    }
                    Vec::new()
                }
                Slice::Compacted => unreachable!(
                    "apply cursor {lo} below snapshot {}",
                    self.log.snapshot_index
                ),
            }
        };
        out.retain(|e| e.index >= lo);
        if let Some(l) = out.last() {
            debug_assert_eq!(out[0].index, lo);
            self.apply_emitted = l.index;
        }
        for e in &out {
            if e.kind == EntryKind::ConfChange {
                if let Ok((_, m)) = ConfChange::decode(&e.data, e.index) {
                    self.applied_memberships.push_back(m);
                }
            }
        }
        out
    }

    /// Acknowledges that the writes of every Ready up to `number` are durable.
    ///
    /// # Panics
    /// If `number` was never handed out.
    pub fn advance(&mut self, number: ReadyNumber) {
        assert!(
            number < self.next_ready,
            "advance({number}) of a Ready never handed out"
        );
        while self.in_flight.front().is_some_and(|r| r.number <= number) {
            let r = self.in_flight.pop_front().unwrap();
            if let Some((i, t)) = r.last {
                if i <= self.log.emitted && self.log.match_term(i, t) && i > self.log.persisted {
                    self.log.persisted = i;
                }
            }
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.need_broadcast = true;
        }
    }

    /// Checks internal invariants (for the simulator; O(log cache)).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.log.check()?;
        if self.log.commit > self.log.last_index {
            return Err(format!(
                "commit {} beyond last index {}",
                self.log.commit, self.log.last_index
            ));
        }
        if self.applied > self.apply_emitted || self.apply_emitted > self.log.commit {
            return Err(format!(
                "applied {} emitted {} commit {}",
                self.applied, self.apply_emitted, self.log.commit
            ));
        }
        if self.role == Role::Leader {
            if self.leader != Some(self.id) {
                return Err("leader does not know itself".into());
            }
            for (id, p) in &self.progress {
                if p.match_index >= p.next_index {
                    return Err(format!(
                        "progress of {id}: match {} >= next {}",
                        p.match_index, p.next_index
                    ));
                }
            }
        }
        Ok(())
    }
}
