//! The shard's raft driver: steps messages into groups, collects every
//! group's `Ready`, makes them durable with one WAL write (one fdatasync for
//! the whole shard), sends, applies and advances.
//!
//! ```text
//!   ticker ─┐       inbound frames ─┐       mailbox ─┐
//!           ▼                       ▼                ▼
//!       tick live groups      decode + step     propose / read / start
//!           └───────────── mark dirty + kick ────────┘
//!                                  ▼
//!   driver turn: for each dirty group take its Ready
//!       send `messages` now (the leader's appends go out before its fsync)
//!       add entries + hard state to one WAL batch
//!   one wal.write(batch).await  ─── one DMA write + one fdatasync
//!       send `persisted_messages`, apply committed entries, answer reads,
//!       advance; load fetched entries from the WAL
//! ```
//!
//! A group stopped on this node ([`Driver::stop_group`]) leaves the driver
//! at once; its removal record goes into the next turn's batch, ahead of
//! anything else, so it is ordered after every earlier write of the group.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use flotilla_rsm::{KvStore, Rsm};
use flotilla_storage as storage;
use flotilla_transport as transport;
use tracing::{debug, info, warn};

use super::forward::{self, ClientOp};
use super::group::{GroupReplica, ReplicaLimits, Reply};
use super::meta::GroupMeta;
use crate::api::{MembershipInfo, ReadConsistency};
use crate::error::RequestError;
use crate::raft::{
    self, Entry, EntryKind, GroupId, HardState, Member, MemberKind, Membership, Message, NodeId,
    Raft, Role, StepError,
};
use crate::wire;

/// Converts a raft entry for the WAL (the payload is shared, not copied).
fn to_wal_entry(e: &Entry) -> storage::Entry {
    storage::Entry {
        index: e.index,
        term: e.term,
        kind: match e.kind {
            EntryKind::Normal => 0,
            EntryKind::Noop => 1,
            EntryKind::ConfChange => 2,
        },
        payload: e.data.clone(),
    }
}

/// Converts a WAL entry back.
///
/// # Errors
/// An unknown kind byte (a corrupt or foreign WAL).
fn from_wal_entry(e: storage::Entry) -> Result<Entry, String> {
    let kind = match e.kind {
        0 => EntryKind::Normal,
        1 => EntryKind::Noop,
        2 => EntryKind::ConfChange,
        k => return Err(format!("unknown entry kind {k} at index {}", e.index)),
    };
    Ok(Entry {
        index: e.index,
        term: e.term,
        kind,
        data: e.payload,
    })
}

fn to_wal_hard_state(hs: &HardState) -> storage::HardState {
    storage::HardState {
        term: hs.term,
        vote: hs.vote.map_or(0, |v| v.0),
        commit: hs.commit,
    }
}

/// One turn's work, from [`Driver::collect`].
struct Collected {
    /// The WAL batches, in order.
    batches: Vec<storage::Batch>,
    /// Readys that finish once the batches are durable.
    pending: Vec<Pending>,
    /// Readys that persist nothing (or only a commit index): finish now.
    immediate: Vec<Pending>,
    /// Groups whose removal record is in `batches`: their stop finishes
    /// once the batches are durable.
    removed: Vec<GroupId>,
}

/// The shard's groups and the I/O handles they use.
pub(crate) struct Driver {
    node: NodeId,
    shard_count: usize,
    raft_defaults: raft::Config,
    groups: BTreeMap<GroupId, GroupReplica>,
    /// Groups that may have work (a Ready) after the last input.
    dirty: BTreeSet<GroupId>,
    encoder: wire::Encoder,
    transport: Rc<transport::Transport>,
    wal: Rc<storage::Wal>,
    boot_nanos: u64,
    /// Largest command of a proposal (`NodeHostConfig::entry_limit_bytes`).
    pub(crate) entry_bytes_max: usize,
    /// Lease reads are refused until this tick: the shard's clock stalled
    /// (a paused process, a starved thread), so a lease measured in ticks
    /// may have expired in real time.
    lease_blocked_until_tick: u64,
    ticks: u64,
    pub(crate) counters: DriverCounters,
    pub(crate) decode_errors: u64,
    pub(crate) unknown_group_messages: u64,
    snapshot_dir: std::path::PathBuf,
    snapshot_entries: u64,
    snapshot_log_ratio: f64,
    compaction_overhead: u64,
    /// Ticks between two rounds of leader balancing (0: never).
    balance_every_ticks: u64,
    /// Bumped whenever a group's leader or membership may have changed here
    /// (a Ready with soft state or membership, a group added or removed).
    leadership_epoch: u64,
    /// `leadership_epoch` when the balancer last found the shard balanced:
    /// while it has not moved, a round skips its walk over every group
    /// (the largest cost of 10,000 idle groups: 17 % of their CPU).
    balanced_at_epoch: Option<u64>,
    /// Each group's newest snapshot (file, or compaction point of a
    /// witness) and the log applied since.
    last_snapshot: BTreeMap<GroupId, SnapshotPace>,
    snapshots_due: BTreeSet<GroupId>,
    snapshots_running: BTreeSet<GroupId>,
    snapshot_waiters: BTreeMap<GroupId, Vec<Reply<u64>>>,
    /// `InstallSnapshot` messages to stream, and how many streams run.
    snapshot_sends: Vec<Message>,
    snapshot_sends_running: usize,
    /// What each group keeps in the WAL's metadata record.
    metas: BTreeMap<GroupId, GroupMeta>,
    /// Groups whose metadata must go into the next WAL batch.
    meta_dirty: BTreeSet<GroupId>,
    /// Groups that are not quiesced: the ones the tick visits.
    live: BTreeSet<GroupId>,
    /// Set once the node began stopping ([`Driver::hand_off_leadership`]):
    /// leadership transfers to it are refused.
    stopping: bool,
    /// Commit-only hard states not written yet (see [`Driver::collect`]).
    lazy_hard_states: BTreeMap<GroupId, storage::HardState>,
    /// Set by the tick every [`LAZY_FLUSH_TICKS`]: the next turn writes the
    /// lazy hard states even if it writes nothing else.
    lazy_flush_due: bool,
    /// Requests sent to a leader on another node, by request id.
    forwarded: std::collections::HashMap<u64, Waiting>,
    /// Forwarded proposals the leader appended, by request id: (group,
    /// index, term). Their callers wait in the group's proposals.
    watched: std::collections::HashMap<u64, (GroupId, u64, u64)>,
    /// Requests waiting for their group to elect a leader.
    parked: Vec<(GroupId, Waiting)>,
    /// Requests whose round of forwarding attempts ended in refusals (the
    /// nodes disagree on the leader while it moves): retried each tick.
    parked_rounds: Vec<(GroupId, Waiting)>,
    forward_id_next: u64,
    /// Forwarded proposals that carry a tag (`tag_base ^ id`), by request
    /// id: the group watching for it (see `GroupReplica::want_tag`).
    forward_tags: std::collections::HashMap<u64, GroupId>,
    /// Random per shard run, so that tags of different nodes (and runs)
    /// do not meet in one group's log.
    tag_base: u64,
    /// Answers to requests other nodes forwarded here, queued by their
    /// replies' hooks and sent by [`Driver::flush_remote_answers`] in the
    /// turn that produced them (with the turn's other messages to that
    /// node, in one frame).
    remote_answers: RemoteAnswers,
    /// Groups stopped here whose removal (WAL record, snapshot files) has
    /// not finished, with the callers waiting for it. Such a group cannot
    /// be started again until then.
    stopping_groups: BTreeMap<GroupId, Vec<super::reply::ReplyTx<()>>>,
    /// Stopped groups whose removal record goes into the next batch.
    removals: Vec<GroupId>,
    /// Received snapshots being installed (their files written) per
    /// group: a stopped group's files are deleted only once none is.
    snapshot_file_writes: BTreeMap<GroupId, u32>,
    /// The shard's bulk task queue, once [`drive`] runs: snapshot work
    /// belongs there (see [`Driver::on_bulk_queue`]).
    bulk_queue: Option<glommio::TaskQueueHandle>,
}

/// Answers to forwarded requests, waiting to be sent: the request and its
/// result.
type RemoteAnswers = Rc<RefCell<Vec<(wire::Forward, Result<Bytes, RequestError>)>>>;

/// A client request on its way to a leader.
struct Waiting {
    op: ClientOp,
    reply: Reply<Bytes>,
    attempts: u8,
}

/// Bytes of one WAL batch (well under the WAL's 4 MiB frame limit); a
/// turn with more is written as several batches, in order.
const BATCH_BYTES_MAX: usize = 1 << 20;

/// Splits a turn's writes into WAL batches of bounded size, keeping their
/// order (a group's entries before its hard state; an append split in two
/// continues where the first part ended, so it truncates nothing).
struct BatchBuilder {
    done: Vec<storage::Batch>,
    current: storage::Batch,
    bytes: usize,
    bytes_max: usize,
}

impl BatchBuilder {
    fn new(bytes_max: usize) -> Self {
        BatchBuilder {
            done: Vec::new(),
            current: storage::Batch::new(),
            bytes: 0,
            bytes_max,
        }
    }

    fn account(&mut self, bytes: usize) {
        if self.bytes > 0 && self.bytes + bytes > self.bytes_max {
            self.done
                .push(std::mem::replace(&mut self.current, storage::Batch::new()));
            self.bytes = 0;
        }
        self.bytes += bytes;
    }

    fn append(&mut self, group: u64, entries: &[Entry]) {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            let room = self.bytes_max.saturating_sub(self.bytes).max(1);
            while end < entries.len()
                && (end == start || bytes + entries[end].size_bytes() + 16 <= room)
            {
                bytes += entries[end].size_bytes() + 16;
                end += 1;
            }
            self.account(bytes);
            self.current.append(
                group,
                entries[start..end].iter().map(to_wal_entry).collect(),
            );
            start = end;
        }
    }

    fn set_hard_state(&mut self, group: u64, hs: storage::HardState) {
        self.account(48);
        self.current.set_hard_state(group, hs);
    }

    fn set_snapshot(&mut self, group: u64, marker: storage::SnapshotMarker) {
        self.account(48);
        self.current.set_snapshot(group, marker);
    }

    fn set_meta(&mut self, group: u64, meta: Bytes) {
        self.account(32 + meta.len());
        self.current.set_meta(group, meta);
    }

    fn remove_group(&mut self, group: u64) {
        self.account(16);
        self.current.remove_group(group);
    }

    fn is_empty(&self) -> bool {
        self.done.is_empty() && self.current.is_empty()
    }

    fn finish(mut self) -> Vec<storage::Batch> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Ticks between writes of the lazily kept commit indexes (see
/// [`Driver::collect`]) when nothing else is written.
const LAZY_FLUSH_TICKS: u64 = 50;

/// WAL segments beyond which the groups pinning the oldest are snapshotted.
const SEGMENTS_PINNED_MAX: u64 = 8;

/// Voters of `g` other than `me` that a leadership may move to now: in
/// `Replicate` state (answering appends).
fn transfer_targets(
    g: &GroupReplica,
    me: NodeId,
) -> impl Iterator<Item = (NodeId, raft::ProgressStats)> {
    g.raft.progress().into_iter().filter(move |(n, p)| {
        *n != me && p.kind == MemberKind::Voter && p.state == raft::ProgressState::Replicate
    })
}

/// Fewest leadership transfers one shard may start per balancing round.
const BALANCE_MOVES_MIN: usize = 2;

/// Most leadership transfers one shard starts per balancing round. Between
/// the two, a round moves a quarter of this node's excess over the mean: a
/// restarted node of 10,000 groups gets its third back in minutes, not the
/// better part of an hour, and no round refuses proposals in more than this
/// many groups.
const BALANCE_MOVES_MAX: usize = 64;

/// When a group's next automatic snapshot is due: after
/// `snapshot_entries` applied entries, and once the log applied since the
/// last snapshot is `snapshot_log_ratio` times that snapshot's size.
///
/// The second rule keeps the cost of snapshots proportional to the writes:
/// a snapshot of a large state machine costs a walk over all of it, and
/// taking one every 100,000 entries of a group holding 1 M keys spent a
/// fifth of the CPU of a one-group benchmark on snapshots.
#[derive(Clone, Copy, Debug, Default)]
struct SnapshotPace {
    /// Index of the newest snapshot.
    index: u64,
    /// Its size (0: not known, e.g. a witness).
    bytes: u64,
    /// Payload bytes of the entries applied since.
    log_bytes: u64,
}

impl SnapshotPace {
    fn at(index: u64, bytes: u64) -> Self {
        SnapshotPace {
            index,
            bytes,
            log_bytes: 0,
        }
    }

    /// A snapshot at `index` of `bytes` bytes is durable.
    fn taken(&mut self, index: u64, bytes: u64) {
        if index > self.index {
            *self = SnapshotPace::at(index, bytes);
        }
    }

    fn is_due(&self, applied: u64, every_entries: u64, log_ratio: f64) -> bool {
        applied >= self.index + every_entries
            && self.log_bytes as f64 >= self.bytes as f64 * log_ratio
    }
}

/// Shared by the shard's tasks (one executor, so `Rc<RefCell<_>>`; no borrow
/// is ever held across an `.await`).
pub(crate) type SharedDriver = Rc<RefCell<Driver>>;

impl Driver {
    pub(crate) fn new(
        node: NodeId,
        shard_count: usize,
        raft_defaults: raft::Config,
        transport: Rc<transport::Transport>,
        wal: Rc<storage::Wal>,
    ) -> Self {
        let boot_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Driver {
            node,
            shard_count,
            raft_defaults,
            groups: BTreeMap::new(),
            dirty: BTreeSet::new(),
            encoder: wire::Encoder::new(),
            transport,
            wal,
            boot_nanos,
            entry_bytes_max: usize::MAX,
            lease_blocked_until_tick: 0,
            ticks: 0,
            counters: DriverCounters::default(),
            decode_errors: 0,
            unknown_group_messages: 0,
            snapshot_dir: std::path::PathBuf::new(),
            snapshot_entries: 0,
            snapshot_log_ratio: 0.0,
            balance_every_ticks: 0,
            leadership_epoch: 0,
            balanced_at_epoch: None,
            compaction_overhead: 0,
            last_snapshot: BTreeMap::new(),
            snapshots_due: BTreeSet::new(),
            snapshots_running: BTreeSet::new(),
            snapshot_waiters: BTreeMap::new(),
            snapshot_sends: Vec::new(),
            snapshot_sends_running: 0,
            metas: BTreeMap::new(),
            meta_dirty: BTreeSet::new(),
            live: BTreeSet::new(),
            stopping: false,
            lazy_hard_states: BTreeMap::new(),
            lazy_flush_due: false,
            forwarded: std::collections::HashMap::new(),
            watched: std::collections::HashMap::new(),
            parked: Vec::new(),
            parked_rounds: Vec::new(),
            forward_id_next: 1,
            forward_tags: std::collections::HashMap::new(),
            tag_base: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(node.0);
                h.write_u64(boot_nanos);
                h.finish()
            },
            remote_answers: Rc::default(),
            stopping_groups: BTreeMap::new(),
            removals: Vec::new(),
            snapshot_file_writes: BTreeMap::new(),
            bulk_queue: None,
        }
    }

    pub(crate) fn transport(&self) -> Rc<transport::Transport> {
        self.transport.clone()
    }

    /// Where snapshot files go, how often they are taken, how many entries
    /// stay behind them.
    pub(crate) fn configure_snapshots(
        &mut self,
        dir: std::path::PathBuf,
        every_entries: u64,
        log_ratio: f64,
        overhead_entries: u64,
    ) {
        debug_assert!(log_ratio >= 0.0);
        self.snapshot_dir = dir;
        self.snapshot_entries = every_entries;
        self.snapshot_log_ratio = log_ratio;
        self.compaction_overhead = overhead_entries;
    }

    /// Balances leadership every `every_ticks` ticks (0: never).
    pub(crate) fn configure_balance(&mut self, every_ticks: u64) {
        self.balance_every_ticks = every_ticks;
    }

    /// Whether the running task is on the shard's bulk task queue (true
    /// before [`drive`] set it up, as in unit tests of a bare driver).
    pub(crate) fn on_bulk_queue(&self) -> bool {
        self.bulk_queue
            .is_none_or(|q| glommio::executor().current_task_queue() == q)
    }

    pub(crate) fn snapshot_dir(&self) -> std::path::PathBuf {
        self.snapshot_dir.clone()
    }

    pub(crate) fn group(&self, group: GroupId) -> Option<&GroupReplica> {
        self.groups.get(&group)
    }

    pub(crate) fn is_witness(&self, group: GroupId) -> bool {
        self.metas.get(&group).is_some_and(|m| m.witness)
    }

    /// The shard of `node` that hosts `group`.
    pub(crate) fn peer_of(&self, group: GroupId, node: NodeId) -> transport::PeerId {
        transport::PeerId::new(node.0, super::shard_of(group.0, self.shard_count))
    }

    /// Asks for a snapshot of `group` now; `reply` gets its index.
    pub(crate) fn request_snapshot(&mut self, group: GroupId, reply: Reply<u64>) {
        if !self.groups.contains_key(&group) {
            let _ = reply.send(Err(RequestError::GroupNotFound { group }));
            return;
        }
        self.snapshot_waiters.entry(group).or_default().push(reply);
        self.snapshots_due.insert(group);
    }

    /// Snapshots to take and streams to start now (within the limits);
    /// streams over the limit are reported failed so Raft retries later.
    pub(crate) fn take_snapshot_work(&mut self) -> (Vec<GroupId>, Vec<Message>) {
        let mut take = Vec::new();
        if self.snapshots_running.is_empty() {
            if let Some(g) = self.snapshots_due.pop_first() {
                self.snapshots_running.insert(g);
                take.push(g);
            }
        }
        let mut sends = Vec::new();
        for m in std::mem::take(&mut self.snapshot_sends) {
            if self.snapshot_sends_running < super::snapshot::SENDS_MAX {
                self.snapshot_sends_running += 1;
                sends.push(m);
            } else if let Some(g) = self.groups.get_mut(&m.group) {
                g.raft.report_snapshot(m.to, false);
                self.dirty.insert(m.group);
            }
        }
        (take, sends)
    }

    /// Whether snapshot work waits for the driver.
    pub(crate) fn has_snapshot_work(&self) -> bool {
        (self.snapshots_running.is_empty() && !self.snapshots_due.is_empty())
            || !self.snapshot_sends.is_empty()
    }

    /// A snapshot of `group` finished (or failed).
    /// `outcome`: the snapshot's index and size in bytes.
    pub(crate) fn snapshot_taken(&mut self, group: GroupId, outcome: &Result<(u64, u64), String>) {
        self.snapshots_running.remove(&group);
        match outcome {
            Ok(_) if !self.groups.contains_key(&group) => {}
            Ok((index, bytes)) => {
                self.counters.snapshots_taken += 1;
                self.last_snapshot
                    .entry(group)
                    .or_default()
                    .taken(*index, *bytes);
            }
            Err(e) => warn!(group = group.0, error = %e, "snapshot failed"),
        }
        for w in self.snapshot_waiters.remove(&group).unwrap_or_default() {
            let _ = w.send(
                outcome
                    .clone()
                    .map(|(index, _)| index)
                    .map_err(|message| RequestError::Remote { group, message }),
            );
        }
    }

    /// After a durable snapshot at `index`: compacts Raft's log to `index`
    /// minus the configured overhead and returns the WAL batch that records
    /// it (marker + the membership at the new base).
    pub(crate) fn compact_behind(
        &mut self,
        group: GroupId,
        index: u64,
    ) -> Result<(Option<storage::Batch>, Rc<storage::Wal>), String> {
        let wal = self.wal.clone();
        let to = index.saturating_sub(self.compaction_overhead);
        let g = self.groups.get_mut(&group).ok_or("group stopped")?;
        if self.metas.get(&group).is_some_and(|m| m.witness) {
            self.last_snapshot.entry(group).or_default().taken(index, 0);
        }
        if to <= g.raft.snapshot_index() {
            return Ok((None, wal));
        }
        let meta = g.raft.compact(to).map_err(|e| e.to_string())?;
        let mut batch = storage::Batch::new();
        batch.set_snapshot(
            group.0,
            storage::SnapshotMarker {
                index: meta.index,
                term: meta.term,
            },
        );
        if let Some(m) = self.metas.get_mut(&group) {
            m.base = meta.membership;
            batch.set_meta(group.0, m.encode());
        }
        debug!(group = group.0, to, "log compacted");
        Ok((Some(batch), wal))
    }

    /// A snapshot stream to `to` ended.
    pub(crate) fn snapshot_sent(&mut self, group: GroupId, to: NodeId, ok: bool) {
        self.snapshot_sends_running -= 1;
        if ok {
            self.counters.snapshots_sent += 1;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.raft.report_snapshot(to, ok);
            self.dirty.insert(group);
        }
    }

    /// Installs a received snapshot's state (`None` for a witness) of
    /// `bytes` bytes.
    pub(crate) fn install_snapshot(
        &mut self,
        group: GroupId,
        index: u64,
        bytes: u64,
        loaded: Option<flotilla_rsm::LoadedSnapshot>,
    ) -> Result<(), String> {
        let g = self.groups.get_mut(&group).ok_or("group stopped")?;
        if let Some(loaded) = loaded {
            g.install(loaded)?;
            let settled = g.take_settled_tags();
            self.settle_tags(settled);
        }
        self.last_snapshot
            .insert(group, SnapshotPace::at(index, bytes));
        self.counters.snapshots_installed += 1;
        Ok(())
    }

    /// When the WAL holds more than [`SEGMENTS_PINNED_MAX`] segments, the
    /// groups whose live entries keep the oldest ones alive are snapshotted
    /// (and compacted), so a cold or lagging group does not pin the log.
    fn snapshot_pinning_groups(&mut self) {
        if self.wal.stats().segments <= SEGMENTS_PINNED_MAX {
            return;
        }
        for p in self.wal.groups_pinning_oldest(4) {
            let group = GroupId(p.group);
            let Some(g) = self.groups.get(&group) else {
                continue;
            };
            if g.applied_index() > self.last_snapshot.get(&group).map_or(0, |s| s.index) {
                debug!(
                    group = group.0,
                    segment = p.segment,
                    "snapshot to release old WAL segments"
                );
                self.snapshots_due.insert(group);
            }
        }
    }

    /// Hands leadership of a few groups this replica leads to members that
    /// lead fewer of the shard's groups, so that leaders (and the work of
    /// leading) spread over the nodes: elections place them at random, and
    /// a restarted node would otherwise lead nothing until the next
    /// failure.
    ///
    /// Counts come from this shard's view of its groups' leaders (every
    /// node hosts the same groups on the same shard, so per-shard balance
    /// is node balance). A group moves only to a voter at least two
    /// leaderships behind this node, in `Replicate` state and holding every
    /// committed entry, and at most [`BALANCE_MOVES_MAX`] per round (a
    /// quarter of the excess over the mean, at least [`BALANCE_MOVES_MIN`]): a
    /// transfer refuses proposals for the short while it takes (clients
    /// retry them; see `RequestError::Rejected`), and every move strictly
    /// narrows the gap, so rounds converge and never oscillate.
    fn balance_leaders(&mut self) {
        if self.balanced_at_epoch == Some(self.leadership_epoch) {
            return; // balanced, and no leader or membership moved since
        }
        self.counters.balance_walks += 1;
        let mut led: BTreeMap<NodeId, u64> = BTreeMap::new();
        for g in self.groups.values() {
            for m in &g.raft.membership().members {
                if m.kind == MemberKind::Voter {
                    led.entry(m.id).or_default();
                }
            }
            if let Some(l) = g.raft.leader() {
                *led.entry(l).or_default() += 1;
            }
        }
        let mine = led.get(&self.node).copied().unwrap_or(0);
        if led.values().all(|&n| n + 2 > mine) {
            self.balanced_at_epoch = Some(self.leadership_epoch);
            return; // balanced: the usual case
        }
        let mean = led.values().sum::<u64>() / led.len().max(1) as u64;
        let budget = usize::try_from(mine.saturating_sub(mean) / 4)
            .unwrap_or(usize::MAX)
            .clamp(BALANCE_MOVES_MIN, BALANCE_MOVES_MAX);
        let mut moves = Vec::new();
        for (id, g) in &self.groups {
            if moves.len() >= budget {
                break;
            }
            let mine = led.get(&self.node).copied().unwrap_or(0);
            if mine < 2 {
                break;
            }
            if !g.raft.is_leader()
                || g.raft.transferee().is_some()
                || g.raft.pending_conf_index().is_some()
            {
                continue;
            }
            let commit = g.raft.commit();
            let target = transfer_targets(g, self.node)
                .filter(|(_, p)| p.match_index >= commit)
                .map(|(n, _)| (led.get(&n).copied().unwrap_or(0), n))
                .min();
            let Some((theirs, to)) = target else {
                continue;
            };
            if theirs + 2 > mine {
                continue;
            }
            *led.entry(self.node).or_default() -= 1;
            *led.entry(to).or_default() += 1;
            moves.push((*id, to, mine, theirs));
        }
        for (id, to, mine, theirs) in moves {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            match g.raft.transfer_leader(to) {
                Ok(()) => {
                    self.counters.balance_transfers += 1;
                    info!(
                        group = id.0,
                        to = to.0,
                        led_here = mine,
                        led_there = theirs,
                        "leadership handed over to balance leaders"
                    );
                    self.dirty.insert(id);
                }
                Err(e) => debug!(group = id.0, to = to.0, error = %e, "balance transfer refused"),
            }
        }
    }

    /// Starts a leadership transfer for every group led here (the node is
    /// stopping), each to its most caught-up voter in `Replicate` state;
    /// returns how many groups led here have a transfer under way (started
    /// now or earlier). Call it again while they do: a transfer can time
    /// out, and a group may come back here before this node refuses
    /// transfers (see [`Driver::on_inbound`]).
    pub(crate) fn hand_off_leadership(&mut self) -> usize {
        self.stopping = true;
        let mut moving = 0;
        for (id, g) in &mut self.groups {
            if !g.raft.is_leader() {
                continue;
            }
            if g.raft.transferee().is_some() {
                moving += 1;
                continue;
            }
            let target = transfer_targets(g, self.node)
                .max_by_key(|(_, p)| p.match_index)
                .map(|(n, _)| n);
            let Some(to) = target else {
                // No voter to hand it to: at least wake the followers of a
                // quiesced group (a heartbeat without the quiesce flag), so
                // that they tick and elect a leader once this one is gone.
                g.raft.wake_up();
                self.dirty.insert(*id);
                continue;
            };
            if g.raft.transfer_leader(to).is_ok() {
                debug!(
                    group = id.0,
                    to = to.0,
                    "leadership handed off: node stopping"
                );
                self.dirty.insert(*id);
                moving += 1;
            }
        }
        moving
    }

    /// Wakes the idle followers here whose leader is `node`: its connection
    /// to this shard ended, so it may be gone. A quiesced follower does not
    /// tick and would otherwise wait for a request before it noticed; awake,
    /// it elects a new leader after an election timeout of silence (and
    /// costs nothing more if the leader is in fact alive: its next message
    /// simply finds the follower awake). Returns how many woke.
    pub(crate) fn peer_lost(&mut self, node: NodeId) -> usize {
        let mut woken = 0;
        for (id, g) in &mut self.groups {
            if g.raft.is_quiesced() && !g.raft.is_leader() && g.raft.leader() == Some(node) {
                g.raft.report_unreachable(node);
                debug_assert!(!g.raft.is_quiesced(), "group {id} still quiesced");
                debug!(
                    group = id.0,
                    leader = node.0,
                    "leader's connection lost: follower woken"
                );
                self.dirty.insert(*id);
                woken += 1;
            }
        }
        self.counters.peer_loss_wakes += woken as u64;
        woken
    }

    /// Whether this replica leads any group.
    pub(crate) fn leads_any(&self) -> bool {
        self.groups.values().any(|g| g.raft.is_leader())
    }

    /// Steps one raft message into its group.
    pub(crate) fn step_message(&mut self, msg: Message) {
        let group = msg.group;
        if let Some(g) = self.groups.get_mut(&group) {
            if let Err(e) = g.raft.step(msg) {
                debug!(group = group.0, error = %e, "message refused");
            }
            self.dirty.insert(group);
        }
    }

    /// Starts `group` as a founding member with `members` (node id, raft
    /// address of the node).
    pub(crate) fn start_group(
        &mut self,
        group: GroupId,
        members: &[(NodeId, SocketAddr)],
    ) -> Result<(), RequestError> {
        if self.groups.contains_key(&group) {
            return Ok(());
        }
        if self.stopping_groups.contains_key(&group) {
            return Err(RequestError::ShuttingDown { group });
        }
        for (id, addr) in members {
            self.check_address(group, *id, *addr)?;
        }
        let membership = Membership::new(
            0,
            members
                .iter()
                .map(|(id, addr)| Member {
                    id: *id,
                    kind: MemberKind::Voter,
                    address: Bytes::from(addr.to_string()),
                })
                .collect(),
        );
        self.learn_addresses(&membership);
        let raft = Raft::new(self.raft_config(group), membership.clone());
        self.insert_group(
            group,
            raft,
            GroupMeta {
                witness: false,
                base: membership.clone(),
                latest: membership,
            },
        );
        info!(group = group.0, node = self.node.0, "group started");
        Ok(())
    }

    /// Starts an empty replica of `group` that waits for the leader to add
    /// it (as a voter, observer or witness) and send it the log or a
    /// snapshot. `peers` are addresses of current members, so this replica
    /// can answer before it learns the membership.
    pub(crate) fn join_group(
        &mut self,
        group: GroupId,
        peers: &[(NodeId, SocketAddr)],
        witness: bool,
    ) -> Result<(), RequestError> {
        if self.groups.contains_key(&group) {
            return Ok(());
        }
        if self.stopping_groups.contains_key(&group) {
            return Err(RequestError::ShuttingDown { group });
        }
        for (id, addr) in peers {
            self.check_address(group, *id, *addr)?;
        }
        for (id, addr) in peers {
            self.set_address(*id, *addr);
        }
        let raft = Raft::new(self.raft_config(group), Membership::default());
        self.insert_group(
            group,
            raft,
            GroupMeta {
                witness,
                ..GroupMeta::default()
            },
        );
        info!(
            group = group.0,
            node = self.node.0,
            witness,
            "group joining"
        );
        Ok(())
    }

    /// Stops this node's replica of `group` and removes its data: the
    /// replica leaves the driver now (its waiting requests fail with
    /// `ShuttingDown`, messages for it are dropped as for an unknown
    /// group), its WAL removal record goes into the next turn's batch, and
    /// [`Driver::finish_stop`] deletes its snapshot files once that is
    /// durable and no snapshot file of the group is being written; then
    /// `reply` is answered. A group not hosted here answers at once.
    pub(crate) fn stop_group(&mut self, group: GroupId, reply: super::reply::ReplyTx<()>) {
        if let Some(waiting) = self.stopping_groups.get_mut(&group) {
            waiting.push(reply);
            return;
        }
        self.leadership_epoch += 1;
        let Some(mut g) = self.groups.remove(&group) else {
            let _ = reply.send(Ok(()));
            return;
        };
        g.fail_all();
        let led = g.raft.is_leader();
        drop(g);
        self.dirty.remove(&group);
        self.live.remove(&group);
        self.metas.remove(&group);
        self.meta_dirty.remove(&group);
        self.lazy_hard_states.remove(&group);
        self.last_snapshot.remove(&group);
        self.snapshots_due.remove(&group);
        for w in self.snapshot_waiters.remove(&group).unwrap_or_default() {
            let _ = w.send(Err(RequestError::ShuttingDown { group }));
        }
        self.snapshot_sends.retain(|m| m.group != group);
        self.watched.retain(|_, (g, _, _)| *g != group);
        self.forward_tags.retain(|_, g| *g != group);
        for list in [&mut self.parked, &mut self.parked_rounds] {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(g, _)| *g == group);
            *list = kept;
            for (_, w) in gone {
                let _ = w.reply.send(Err(RequestError::ShuttingDown { group }));
            }
        }
        self.removals.push(group);
        self.stopping_groups.insert(group, vec![reply]);
        info!(
            group = group.0,
            node = self.node.0,
            led,
            "group stopped; removing its data"
        );
    }

    /// Whether `group`'s stop waits for snapshot files being written.
    pub(crate) fn snapshot_files_busy(&self, group: GroupId) -> bool {
        self.snapshot_file_writes.contains_key(&group) || self.snapshots_running.contains(&group)
    }

    /// Whether a received snapshot of `group` is being installed.
    pub(crate) fn installing_snapshot(&self, group: GroupId) -> bool {
        self.snapshot_file_writes.contains_key(&group)
    }

    /// A snapshot file of `group` starts (`true`) or stops (`false`) being
    /// written.
    pub(crate) fn snapshot_file_write(&mut self, group: GroupId, starts: bool) {
        if starts {
            *self.snapshot_file_writes.entry(group).or_default() += 1;
        } else if let std::collections::btree_map::Entry::Occupied(mut e) =
            self.snapshot_file_writes.entry(group)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The stop of `group` ended (its data is gone, or removing it failed):
    /// answers its callers; the group may be started again.
    pub(crate) fn finish_stop(&mut self, group: GroupId, result: Result<(), RequestError>) {
        for reply in self.stopping_groups.remove(&group).unwrap_or_default() {
            let _ = reply.send(result.clone());
        }
        match result {
            Ok(()) => info!(group = group.0, node = self.node.0, "group removed"),
            Err(e) => {
                warn!(group = group.0, node = self.node.0, error = %e, "group removal failed")
            }
        }
    }

    fn raft_config(&self, group: GroupId) -> raft::Config {
        let mut cfg = self.raft_defaults.clone();
        cfg.id = self.node;
        cfg.group = group;
        // Must differ on every start of this replica (see raft::Config::seed).
        cfg.seed = self.boot_nanos ^ group.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.node.0;
        cfg
    }

    fn insert_group(&mut self, group: GroupId, raft: Raft, meta: GroupMeta) {
        self.leadership_epoch += 1;
        let rsm = (!meta.witness).then(|| Rsm::new(Box::new(KvStore::new()), Default::default()));
        self.groups.insert(
            group,
            GroupReplica::new(raft, rsm, ReplicaLimits::default()),
        );
        self.metas.insert(group, meta);
        self.meta_dirty.insert(group);
        self.dirty.insert(group);
        self.live.insert(group);
    }

    /// Adds a group recovered from the WAL (its metadata is already there).
    fn insert_restored(&mut self, group: GroupId, raft: Raft, meta: GroupMeta) {
        self.learn_addresses(&meta.base);
        self.learn_addresses(&meta.latest);
        self.insert_group(group, raft, meta);
        self.meta_dirty.remove(&group);
    }

    /// The raft address the groups hosted here give `node`: this node's
    /// own, else the one in the latest membership of a group listing it.
    fn known_address(&self, node: NodeId) -> Option<SocketAddr> {
        if node == self.node {
            return self
                .transport
                .registry()
                .node(transport::NodeId(node.0))
                .and_then(|a| a.base);
        }
        self.metas
            .values()
            .flat_map(|m| m.latest.members.iter())
            .filter(|m| m.id == node)
            .find_map(|m| std::str::from_utf8(&m.address).ok()?.parse().ok())
    }

    /// Refuses `addr` for `node` when the groups hosted here know it at
    /// another address (see [`RequestError::AddressConflict`]; found by
    /// `launcher_fuzz`: a join naming a live node at a bogus address made
    /// this node dial it there for every group, cutting it off).
    fn check_address(
        &self,
        group: GroupId,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<(), RequestError> {
        // The common case in O(1): the transport already routes `node`
        // there. Only a different (or no) address scans the memberships
        // (starting 10,000 groups must not be quadratic).
        let routed = self
            .transport
            .registry()
            .node(transport::NodeId(node.0))
            .and_then(|a| a.base);
        if routed == Some(addr) {
            return Ok(());
        }
        match self.known_address(node) {
            Some(known) if known != addr => Err(RequestError::AddressConflict {
                group,
                node,
                known,
                given: addr,
            }),
            _ => Ok(()),
        }
    }

    fn set_address(&self, node: NodeId, addr: SocketAddr) {
        if node != self.node {
            self.transport.registry().set_node(
                transport::NodeId(node.0),
                addr,
                self.shard_count as u32,
            );
        }
    }

    /// Registers the raft address of every member (addresses travel in the
    /// membership, so a node added at run time needs no configuration).
    fn learn_addresses(&self, membership: &Membership) {
        for m in &membership.members {
            match std::str::from_utf8(&m.address)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                Some(addr) => self.set_address(m.id, addr),
                None if m.address.is_empty() => {}
                None => warn!(node = m.id.0, "member address is not ip:port; ignored"),
            }
        }
    }

    /// Runs `op` on `group`: here if this replica leads, else (with
    /// `forward`) on the leader's node, waiting for a leader if none is known.
    pub(crate) fn submit(
        &mut self,
        group: GroupId,
        op: ClientOp,
        forward: bool,
        reply: Reply<Bytes>,
    ) {
        self.submit_attempt(group, op, forward, reply, 0);
    }

    /// Runs `op` here or sends it to the leader; returns the (index, term)
    /// of the entry when this replica appended a proposal.
    fn submit_attempt(
        &mut self,
        group: GroupId,
        op: ClientOp,
        forward: bool,
        reply: Reply<Bytes>,
        attempts: u8,
    ) -> Option<(u64, u64)> {
        if let ClientOp::ConfChange(cc) = &op {
            // Checked here and at the leader: an added member's address
            // must not contradict what this node's groups know of it.
            let given = std::str::from_utf8(&cc.address)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let Some(Err(e)) = given.map(|a| self.check_address(group, cc.node, a)) {
                let _ = reply.send(Err(e));
                return None;
            }
        }
        let Some(g) = self.groups.get_mut(&group) else {
            let _ = reply.send(Err(RequestError::GroupNotFound { group }));
            return None;
        };
        if let ClientOp::Propose(cmd) = &op {
            // Checked before anything is appended or forwarded: an entry
            // larger than a WAL frame would stop every replica's shard.
            if cmd.len() > self.entry_bytes_max {
                let _ = reply.send(Err(RequestError::EntryTooLarge {
                    group,
                    bytes: cmd.len(),
                    max: self.entry_bytes_max,
                }));
                return None;
            }
        }
        if let ClientOp::Read(query, consistency) = op {
            // Reads are never forwarded: any replica serves them once raft
            // confirmed its read index (the core asks the leader).
            if consistency == ReadConsistency::Stale {
                let _ = reply.send(g.read_stale(&query));
                return None;
            }
            if g.raft.leader().is_some() || !forward {
                let lease = consistency == ReadConsistency::Lease
                    && self.ticks >= self.lease_blocked_until_tick;
                g.read(query, lease, reply);
                self.dirty.insert(group);
            } else if self.parked.len() >= forward::PARKED_MAX {
                let _ = reply.send(Err(RequestError::NotLeader {
                    group,
                    leader: None,
                }));
            } else {
                self.parked.push((
                    group,
                    Waiting {
                        op: ClientOp::Read(query, consistency),
                        reply,
                        attempts,
                    },
                ));
            }
            return None;
        }
        if g.raft.is_leader() || !forward {
            let appended = match op {
                ClientOp::Read(..) => unreachable!("reads are handled above"),
                ClientOp::Propose(cmd) => g.propose(cmd, reply),
                ClientOp::ConfChange(cc) => {
                    g.propose_conf_change(cc, reply);
                    None
                }
                ClientOp::Transfer(to) => {
                    let _ = reply.send(
                        g.raft
                            .transfer_leader(to)
                            .map(|()| Bytes::new())
                            .map_err(RequestError::from),
                    );
                    None
                }
            };
            self.dirty.insert(group);
            return appended;
        }
        // A quiesced follower does not tick: without this, a request for a
        // group whose leader died while the group was idle would be sent to
        // the dead leader forever. Awake, it notices the silence and elects.
        g.raft.wake_up();
        self.dirty.insert(group);
        let waiting = Waiting {
            op,
            reply,
            attempts,
        };
        match g.raft.leader() {
            Some(leader) if leader != self.node => {
                if attempts >= forward::FORWARD_ATTEMPTS_MAX {
                    // Leadership is moving and the nodes' views disagree
                    // (seen while a stopping node hands its groups over):
                    // wait for this replica to learn of a change, then
                    // start a new round (the caller's deadline bounds it).
                    // Every refusal so far was a `NotLeader`: nothing was
                    // appended.
                    debug!(
                        group = group.0,
                        leader = leader.0,
                        "forwarding round exhausted; waiting"
                    );
                    if self.parked.len() >= forward::PARKED_MAX {
                        let _ = waiting.reply.send(Err(RequestError::NotLeader {
                            group,
                            leader: Some(leader),
                        }));
                    } else {
                        self.parked_rounds.push((
                            group,
                            Waiting {
                                attempts: 0,
                                ..waiting
                            },
                        ));
                    }
                    return None;
                }
                self.forward_to(group, leader, waiting);
            }
            _ => {
                if self.parked.len() >= forward::PARKED_MAX {
                    let _ = waiting.reply.send(Err(RequestError::NotLeader {
                        group,
                        leader: None,
                    }));
                } else {
                    self.parked.push((group, waiting));
                }
            }
        }
        None
    }

    /// Sends a waiting request to `leader` (one more attempt).
    fn forward_to(&mut self, group: GroupId, leader: NodeId, waiting: Waiting) {
        let id = self.forward_id_next;
        self.forward_id_next += 1;
        let mut f = wire::Forward {
            group,
            from: self.node,
            to: leader,
            reply: false,
            id,
            op: 0,
            status: 0,
            node: 0,
            index: 0,
            payload: Bytes::new(),
        };
        waiting.op.encode_into(&mut f);
        if let (ClientOp::Propose(cmd), Some(g)) = (&waiting.op, self.groups.get_mut(&group)) {
            // Tagged, with the leader's term, so that this replica can tell
            // the request's fate from its own log if the leader fails
            // before answering (see `GroupReplica::want_tag`).
            let tag = self.tag_base ^ id;
            let term = g.raft.term();
            if let Some(tagged) = flotilla_rsm::tag_noop(cmd, tag) {
                if g.want_tag(tag, term) {
                    f.payload = tagged;
                    f.index = term;
                    self.forward_tags.insert(id, group);
                }
            }
        }
        self.send_forward(&f);
        self.forwarded.insert(
            id,
            Waiting {
                attempts: waiting.attempts + 1,
                ..waiting
            },
        );
    }

    fn send_forward(&mut self, f: &wire::Forward) {
        let peer = transport::PeerId::new(f.to.0, super::shard_of(f.group.0, self.shard_count));
        let bytes = self.encoder.encode_forward(f);
        if let Err(e) = self.transport.send(peer, bytes) {
            debug!(group = f.group.0, to = f.to.0, error = %e, "forwarded request not queued");
        }
    }

    /// The request forwarded as `id`, no longer waiting for its tag.
    fn take_forwarded(&mut self, id: u64) -> Option<Waiting> {
        if let Some(group) = self.forward_tags.remove(&id) {
            if let Some(g) = self.groups.get_mut(&group) {
                g.unwant_tag(self.tag_base ^ id);
            }
        }
        self.forwarded.remove(&id)
    }

    /// Answers the forwarded requests whose tagged entry a group replica
    /// found (or ruled out) while applying (see `GroupReplica::want_tag`).
    fn settle_tags(&mut self, settled: Vec<(u64, Result<Bytes, RequestError>)>) {
        for (tag, result) in settled {
            let id = tag ^ self.tag_base;
            self.forward_tags.remove(&id);
            if let Some(w) = self.forwarded.remove(&id) {
                self.counters.forwards_settled_from_log += 1;
                let _ = w.reply.send(result);
            }
        }
    }

    /// A forwarded request or answer arrived.
    fn on_forward(&mut self, f: wire::Forward) {
        if f.reply {
            self.on_forward_answer(f);
            return;
        }
        let tx = self.remote_reply(&f);
        let stale_term = f.op == forward::OP_PROPOSE
            && f.index != 0
            && self
                .groups
                .get(&f.group)
                .is_some_and(|g| g.raft.term() != f.index);
        if stale_term {
            // Sent for a leadership of another term: appending it now
            // would put it where the origin does not look for it.
            let leader = self.groups.get(&f.group).and_then(|g| g.raft.leader());
            let _ = tx.send(Err(RequestError::NotLeader {
                group: f.group,
                leader,
            }));
            return;
        }
        match ClientOp::decode(&f) {
            Some(op) => {
                let appended =
                    self.submit_attempt(f.group, op, false, tx, forward::FORWARD_ATTEMPTS_MAX);
                if let Some((index, term)) = appended {
                    // Tell the origin where the entry is: if this leader
                    // fails before answering, the origin learns the outcome
                    // from its own replica's log instead of waiting out its
                    // deadline.
                    let mut a = wire::Forward {
                        from: self.node,
                        to: f.from,
                        reply: true,
                        payload: Bytes::new(),
                        ..f.clone()
                    };
                    forward::encode_accepted(index, term, &mut a);
                    self.send_forward(&a);
                }
            }
            None => {
                let _ = tx.send(Err(RequestError::Remote {
                    group: f.group,
                    message: format!("malformed forwarded request (op {})", f.op),
                }));
            }
        }
    }

    /// The reply of request `f`, forwarded here by another node: its answer
    /// (or `ShuttingDown` if it is dropped unanswered) waits in
    /// `remote_answers` for [`Driver::flush_remote_answers`].
    fn remote_reply(&self, f: &wire::Forward) -> Reply<Bytes> {
        let out = self.remote_answers.clone();
        let req = wire::Forward {
            payload: Bytes::new(),
            ..f.clone()
        };
        Reply::hook(move |answer| {
            let group = req.group;
            let result = answer.unwrap_or(Err(RequestError::ShuttingDown { group }));
            out.borrow_mut().push((req, result));
        })
    }

    /// Sends the answers of forwarded requests decided since the last call.
    pub(crate) fn flush_remote_answers(&mut self) {
        if self.remote_answers.borrow().is_empty() {
            return;
        }
        let answers = std::mem::take(&mut *self.remote_answers.borrow_mut());
        for (req, result) in answers {
            self.answer_remote(req, result);
        }
    }

    /// An answer to a request this replica forwarded.
    fn on_forward_answer(&mut self, f: wire::Forward) {
        if let Some((index, term)) = forward::decode_accepted(&f) {
            // The leader appended it at (index, term): from now on this
            // replica's own apply of that index decides (see
            // `GroupReplica::watch`), whatever becomes of that leader.
            let Some(w) = self.take_forwarded(f.id) else {
                return;
            };
            let watched = match (&w.op, self.groups.get_mut(&f.group)) {
                (ClientOp::Propose(_), Some(g)) => g.watch(index, term, w.reply),
                (_, _) => Err(w.reply),
            };
            match watched {
                Ok(()) => {
                    debug!(
                        group = f.group.0,
                        index,
                        term,
                        id = f.id,
                        "forwarded proposal accepted; watching its index"
                    );
                    self.watched.insert(f.id, (f.group, index, term));
                }
                Err(reply) => {
                    // Applied here already (or not a proposal): wait for
                    // the leader's answer.
                    self.forwarded.insert(f.id, Waiting { reply, ..w });
                }
            }
            return;
        }
        if let Some((group, index, term)) = self.watched.remove(&f.id) {
            // The leader's answer came first. Only a result settles it: an
            // error from a leader stepping down or stopping says nothing
            // about whether its entry commits under the next one, which
            // the local apply will tell.
            let result = forward::decode_result(&f);
            if matches!(result, Ok(_) | Err(RequestError::Apply { .. })) {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.complete_watched(index, term, result);
                }
            }
            return;
        }
        let Some(w) = self.take_forwarded(f.id) else {
            return; // the caller gave up, or a duplicate
        };
        match forward::decode_result(&f) {
            Err(RequestError::NotLeader { leader: hint, .. }) => {
                // The leader moved: try again where the refusing node says
                // it is (it may know before this replica does: it handed
                // its leadership over), else where this replica thinks it
                // is (bounded by `attempts`).
                match hint {
                    Some(l)
                        if l != f.from
                            && l != self.node
                            && w.attempts < forward::FORWARD_ATTEMPTS_MAX =>
                    {
                        self.forward_to(f.group, l, w);
                    }
                    _ => {
                        self.submit_attempt(f.group, w.op, true, w.reply, w.attempts);
                    }
                }
            }
            result => {
                let _ = w.reply.send(result);
            }
        }
    }

    /// Sends the answer to forwarded request `req`.
    fn answer_remote(&mut self, req: wire::Forward, result: Result<Bytes, RequestError>) {
        let mut f = wire::Forward {
            from: self.node,
            to: req.from,
            reply: true,
            ..req
        };
        forward::encode_result(result, &mut f);
        self.send_forward(&f);
    }

    /// Retries parked requests of groups that now know a leader, and forgets
    /// requests whose caller gave up.
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for (group, w) in parked {
            if w.reply.is_canceled() {
                continue;
            }
            let has_leader = self
                .groups
                .get(&group)
                .is_some_and(|g| g.raft.leader().is_some());
            if has_leader {
                self.submit_attempt(group, w.op, true, w.reply, w.attempts);
            } else {
                self.parked.push((group, w));
            }
        }
    }

    pub(crate) fn read(
        &mut self,
        group: GroupId,
        query: Bytes,
        consistency: ReadConsistency,
        reply: Reply<Bytes>,
    ) {
        self.submit(group, ClientOp::Read(query, consistency), true, reply);
    }

    /// Answers `reply` with `group`'s applied index here once it is above
    /// `after` (see [`GroupReplica::wait_applied`]).
    pub(crate) fn wait_applied(
        &mut self,
        group: GroupId,
        after: u64,
        reply: super::reply::ReplyTx<u64>,
    ) {
        match self.groups.get_mut(&group) {
            Some(g) => g.wait_applied(after, reply),
            None => {
                let _ = reply.send(Err(RequestError::GroupNotFound { group }));
            }
        }
    }

    /// The membership this replica knows of `group`.
    pub(crate) fn membership(&self, group: GroupId) -> Option<MembershipInfo> {
        self.groups
            .get(&group)
            .map(|g| MembershipInfo::from_raft(g.raft.membership()))
    }

    /// Status of every group of this shard.
    pub(crate) fn all_status(&self) -> Vec<GroupStatus> {
        self.groups
            .keys()
            .filter_map(|g| self.group_status(*g))
            .collect()
    }

    /// Leader, term, commit, applied index and waiting requests of `group`.
    pub(crate) fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        self.groups.get(&group).map(|g| {
            let (proposals_pending, reads_pending) = g.pending();
            GroupStatus {
                group,
                role: g.raft.role(),
                last_index: g.raft.last_index(),
                leader: g.raft.leader(),
                term: g.raft.term(),
                commit: g.raft.commit(),
                applied: g.applied_index(),
                proposals_pending,
                reads_pending,
            }
        })
    }

    /// One tick for every live group.
    ///
    /// `late` is how far behind schedule this tick fired: a late tick means
    /// the shard's clock stalled, and lease reads wait for an election
    /// timeout of good ticks before they are trusted again.
    pub(crate) fn tick(&mut self, late: std::time::Duration, tick_interval: std::time::Duration) {
        self.ticks += 1;
        if late > tick_interval {
            self.lease_blocked_until_tick =
                self.ticks + 2 * self.raft_defaults.election_timeout_ticks;
        }
        if self.ticks % 256 == 0 && self.snapshot_entries > 0 {
            self.snapshot_pinning_groups();
        }
        if self.balance_every_ticks > 0 && self.ticks % self.balance_every_ticks == 0 {
            self.balance_leaders();
        }
        for peer in self.transport.take_lost_peers() {
            self.peer_lost(NodeId(peer.node.0));
        }
        for (group, w) in std::mem::take(&mut self.parked_rounds) {
            if !w.reply.is_canceled() {
                self.submit_attempt(group, w.op, true, w.reply, 0);
            }
        }
        if self.ticks % 64 == 0 {
            let canceled: Vec<u64> = self
                .forwarded
                .iter()
                .filter(|(_, w)| w.reply.is_canceled())
                .map(|(&id, _)| id)
                .collect();
            for id in canceled {
                self.take_forwarded(id);
            }
            let groups = &self.groups;
            self.watched.retain(|_, (group, index, _)| {
                groups
                    .get(group)
                    .is_some_and(|g| g.applied_index() < *index)
            });
            self.parked.retain(|(_, w)| !w.reply.is_canceled());
        }
        if self.ticks % LAZY_FLUSH_TICKS == 0 && !self.lazy_hard_states.is_empty() {
            self.lazy_flush_due = true;
        }
        // Only live groups: a quiesced group costs nothing per tick (it
        // rejoins `live` when an input makes it dirty, see `collect`).
        let groups = &mut self.groups;
        let dirty = &mut self.dirty;
        self.live.retain(|id| {
            let Some(g) = groups.get_mut(id) else {
                return false;
            };
            if g.raft.is_quiesced() {
                return false;
            }
            g.raft.tick();
            // Most ticks change nothing visible (a follower's election
            // clock, a leader between heartbeats): `collect` need not
            // visit those groups.
            if g.raft.has_ready() {
                dirty.insert(*id);
            }
            true
        });
    }

    /// Steps one received frame's messages into their groups.
    pub(crate) fn on_inbound(&mut self, batch: transport::InboundBatch) {
        for bytes in batch.messages {
            let msg = match wire::decode_inbound(&bytes) {
                Ok(wire::Inbound::Raft(m)) => m,
                Ok(wire::Inbound::Forward(f)) => {
                    self.on_forward(f);
                    continue;
                }
                Err(e) => {
                    self.decode_errors += 1;
                    warn!(from = batch.from.node.0, error = %e, "undecodable raft message dropped");
                    continue;
                }
            };
            let group = msg.group;
            if self.stopping && msg.kind == raft::MessageType::TimeoutNow {
                // A stopping node takes no leadership: another node's
                // balancer does not know it is going away. The sender's
                // transfer times out and its leader carries on.
                self.counters.transfers_refused_stopping += 1;
                debug!(
                    group = group.0,
                    from = batch.from.node.0,
                    "leadership transfer refused: node stopping"
                );
                continue;
            }
            match self.groups.get_mut(&group) {
                Some(g) => {
                    match g.raft.step(msg) {
                        Ok(()) => {}
                        Err(e @ StepError::AckPastLog { .. }) => {
                            // Warned at powers of two: a foreign peer sends many.
                            self.counters.impossible_messages += 1;
                            let n = self.counters.impossible_messages;
                            if n.is_power_of_two() {
                                warn!(group = group.0, from = batch.from.node.0, error = %e, refused = n, "impossible message refused");
                            }
                        }
                        Err(e) => debug!(group = group.0, error = %e, "message refused"),
                    }
                    self.dirty.insert(group);
                }
                None => {
                    self.unknown_group_messages += 1;
                    debug!(group = group.0, "message for a group not hosted here");
                }
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.kind == raft::MessageType::InstallSnapshot {
                // The data travels on its own stream (see shard::snapshot).
                self.snapshot_sends.push(m);
                continue;
            }
            let peer = transport::PeerId::new(m.to.0, super::shard_of(m.group.0, self.shard_count));
            if let Err(e) = self.transport.send_slice(peer, self.encoder.encode(&m)) {
                debug!(group = m.group.0, to = m.to.0, error = %e, "raft message not queued");
                // Stop pipelining to a peer that is not taking what it is
                // sent (its queue is full: paused, slow or gone): the leader
                // falls back to probing rather than building appends that
                // would be dropped too.
                if let Some(g) = self.groups.get_mut(&m.group) {
                    g.raft.report_unreachable(m.to);
                }
            }
        }
    }

    /// Takes every dirty group's Ready: sends what may go now and returns the
    /// WAL batch, what waits for it, and what may finish at once.
    ///
    /// A Ready that persists nothing but a new commit index, of a group with
    /// no earlier Ready still in flight, finishes without waiting for the
    /// WAL (its committed entries are durable already: Raft hands out only
    /// persisted ones). Raft needs no durable commit index, so that hard
    /// state is written lazily, with the next batch that is written anyway
    /// (or by the periodic flush, see `lazy_flush_due`): a leader answers its
    /// clients one fdatasync sooner, and a follower spends no fdatasync on
    /// learning the commit index.
    fn collect(&mut self) -> Collected {
        self.retry_parked();
        let mut batch = BatchBuilder::new(BATCH_BYTES_MAX);
        let mut pending = Vec::new();
        let mut immediate = Vec::new();
        // First: a group started again under a stopped group's id writes
        // after the removal.
        let removed = std::mem::take(&mut self.removals);
        for id in &removed {
            batch.remove_group(id.0);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            g.end_turn();
            if !g.raft.is_quiesced() {
                self.live.insert(id);
            }
            let Some(rd) = g.raft.ready() else {
                continue;
            };
            let messages = rd.messages;
            if rd.membership.is_some() || rd.soft_state.is_some() {
                self.leadership_epoch += 1;
            }
            if let Some(m) = rd.membership.as_ref() {
                self.learn_addresses(m);
                if let Some(meta) = self.metas.get_mut(&id) {
                    meta.latest = m.clone();
                    self.meta_dirty.insert(id);
                }
            }
            if let Some(ss) = rd.soft_state.as_ref() {
                if ss.role == Role::Leader {
                    self.counters.leader_elected += 1;
                }
            }
            if let Some(snap) = rd.snapshot.as_ref() {
                batch.set_snapshot(
                    id.0,
                    storage::SnapshotMarker {
                        index: snap.index,
                        term: snap.term,
                    },
                );
                if let Some(meta) = self.metas.get_mut(&id) {
                    meta.base = snap.membership.clone();
                    self.meta_dirty.insert(id);
                }
            }
            let meta_write = self.meta_dirty.remove(&id);
            // The membership before the hard state: a commit index must
            // never be durable ahead of the membership it made effective.
            if meta_write {
                if let Some(meta) = self.metas.get(&id) {
                    batch.set_meta(id.0, meta.encode());
                }
            }
            self.counters.entries_appended += rd.entries.len() as u64;
            self.counters.entries_committed += rd.committed_entries.len() as u64;
            let g = self.groups.get_mut(&id).expect("looked up above");
            if !rd.entries.is_empty() {
                g.on_entries_emitted(&rd.entries);
                batch.append(id.0, &rd.entries);
            }
            let term_vote_changed = rd
                .hard_state
                .as_ref()
                .is_some_and(|hs| g.written_term_vote != Some((hs.term, hs.vote)));
            let must_wait = !rd.entries.is_empty()
                || rd.snapshot.is_some()
                || meta_write
                || term_vote_changed
                || g.readys_in_flight > 0;
            if let Some(hs) = rd.hard_state.as_ref() {
                if must_wait {
                    batch.set_hard_state(id.0, to_wal_hard_state(hs));
                    g.written_term_vote = Some((hs.term, hs.vote));
                    self.lazy_hard_states.remove(&id);
                } else {
                    debug_assert!(hs.commit <= g.raft.persisted_index());
                    self.lazy_hard_states.insert(id, to_wal_hard_state(hs));
                }
            }
            let mut p = Pending {
                group: id,
                number: rd.number,
                in_flight: must_wait,
                advance: true,
                holds_apply: false,
                persisted_messages: rd.persisted_messages,
                committed: rd.committed_entries,
                read_states: rd.read_states,
                dropped_reads: rd.dropped_reads,
                fetches: rd.fetches,
            };
            if !must_wait {
                immediate.push(p);
            } else if rd.snapshot.is_some() || g.applies_in_flight > 0 {
                // A snapshot's Ready (and everything after it until it is
                // durable) applies in order after the write.
                g.readys_in_flight += 1;
                if p.has_apply_work() {
                    p.holds_apply = true;
                    g.applies_in_flight += 1;
                }
                pending.push(p);
            } else {
                // The committed entries are durable already (Raft hands out
                // none beyond the persisted index) and read states need no
                // write: apply and answer now, while this Ready's own
                // writes sync; only `advance` waits for them.
                g.readys_in_flight += 1;
                if p.has_apply_work() {
                    debug_assert!(p
                        .committed
                        .last()
                        .is_none_or(|e| e.index <= g.raft.persisted_index()));
                    immediate.push(p.split_apply());
                }
                pending.push(p);
            }
            self.send(messages);
        }
        for id in std::mem::take(&mut self.meta_dirty) {
            if let Some(meta) = self.metas.get(&id) {
                batch.set_meta(id.0, meta.encode());
            }
        }
        if !self.lazy_hard_states.is_empty() && (!batch.is_empty() || self.lazy_flush_due) {
            for (id, hs) in std::mem::take(&mut self.lazy_hard_states) {
                batch.set_hard_state(id.0, hs);
            }
        }
        self.lazy_flush_due = false;
        // Answers decided outside a turn (a tick's timeouts, a group that
        // stopped) go with this turn's messages.
        self.flush_remote_answers();
        Collected {
            batches: batch.finish(),
            pending,
            immediate,
            removed,
        }
    }

    /// After the batch is durable: send, apply, answer, advance.
    /// Sends every message that waited for this turn's durability (votes,
    /// append acknowledgements): before any apply, so the leaders can commit
    /// while this shard applies.
    fn send_persisted(&mut self, pending: &mut [Pending]) {
        for p in pending.iter_mut() {
            let msgs = std::mem::take(&mut p.persisted_messages);
            self.send(msgs);
        }
    }

    /// Applies one group's committed entries, answers its reads and
    /// advances it.
    fn finish_one(&mut self, p: Pending) -> Vec<(GroupId, raft::FetchRequest)> {
        debug_assert!(p.persisted_messages.is_empty(), "sent by send_persisted");
        let Some(g) = self.groups.get_mut(&p.group) else {
            return Vec::new();
        };
        if p.in_flight {
            debug_assert!(g.readys_in_flight > 0);
            g.readys_in_flight -= 1;
        }
        if p.holds_apply {
            debug_assert!(g.applies_in_flight > 0);
            g.applies_in_flight -= 1;
        }
        g.on_read_states(&p.read_states, &p.dropped_reads);
        g.apply(&p.committed);
        let settled = g.take_settled_tags();
        if !settled.is_empty() {
            self.settle_tags(settled);
        }
        let Some(g) = self.groups.get_mut(&p.group) else {
            return Vec::new();
        };
        if self.snapshot_entries > 0 && !p.committed.is_empty() {
            let pace = self.last_snapshot.entry(p.group).or_default();
            pace.log_bytes += p.committed.iter().map(|e| e.data.len() as u64).sum::<u64>();
            // Not again while one runs: it would be taken right after.
            if pace.is_due(
                g.applied_index(),
                self.snapshot_entries,
                self.snapshot_log_ratio,
            ) && !self.snapshots_running.contains(&p.group)
            {
                self.snapshots_due.insert(p.group);
            }
        }
        if p.advance {
            g.raft.advance(p.number);
        }
        if g.raft.has_ready() {
            self.dirty.insert(p.group);
        }
        p.fetches.into_iter().map(|f| (p.group, f)).collect()
    }

    /// The shard's counters.
    pub(crate) fn stats(
        &self,
        shard: super::ShardId,
        ticks: u64,
        tick_lateness_max: std::time::Duration,
    ) -> super::ShardStats {
        let mut leaders = 0;
        let mut live = 0;
        let mut pending = 0;
        for g in self.groups.values() {
            leaders += u64::from(g.raft.is_leader());
            live += u64::from(!g.raft.is_quiesced());
            let (p, r) = g.pending();
            pending += (p + r) as u64;
        }
        super::ShardStats {
            shard,
            ticks,
            tick_lateness_max,
            groups: self.groups.len() as u64,
            leaders,
            live_groups: live,
            entries_appended: self.counters.entries_appended,
            entries_committed: self.counters.entries_committed,
            leader_elected: self.counters.leader_elected,
            turns: self.counters.turns,
            requests_pending: pending,
            decode_errors: self.decode_errors,
            snapshots_taken: self.counters.snapshots_taken,
            balance_transfers: self.counters.balance_transfers,
            balance_walks: self.counters.balance_walks,
            forwards_settled_from_log: self.counters.forwards_settled_from_log,
            impossible_messages: self.counters.impossible_messages,
            peer_loss_wakes: self.counters.peer_loss_wakes,
            transfers_refused_stopping: self.counters.transfers_refused_stopping,
            snapshots_sent: self.counters.snapshots_sent,
            snapshots_installed: self.counters.snapshots_installed,
            wal: self.wal.stats(),
            transport: self.transport.metrics(),
        }
    }

    /// Fails every waiting request (shutdown).
    pub(crate) fn fail_all(&mut self) {
        for g in self.groups.values_mut() {
            g.fail_all();
        }
        self.forward_tags.clear();
        for (_, w) in self.forwarded.drain() {
            let _ = w
                .reply
                .send(Err(RequestError::ShuttingDown { group: GroupId(0) }));
        }
        for (group, w) in self.parked.drain(..) {
            let _ = w.reply.send(Err(RequestError::ShuttingDown { group }));
        }
        for (group, w) in self.parked_rounds.drain(..) {
            let _ = w.reply.send(Err(RequestError::ShuttingDown { group }));
        }
        // The nodes that forwarded requests here learn of the stop now
        // rather than at their deadlines.
        self.flush_remote_answers();
    }
}

/// The state of one group replica, as `NodeHost::group_status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This replica's role.
    pub role: Role,
    /// Its last log index.
    pub last_index: u64,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Its state machine's applied index.
    pub applied: u64,
    /// Proposals waiting for their entry to apply.
    pub proposals_pending: usize,
    /// Reads waiting for confirmation or apply.
    pub reads_pending: usize,
}

/// Counters of a shard's raft work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DriverCounters {
    pub(crate) snapshots_taken: u64,
    pub(crate) snapshots_sent: u64,
    pub(crate) snapshots_installed: u64,
    pub(crate) entries_appended: u64,
    pub(crate) entries_committed: u64,
    /// Leadership transfers started to balance leaders.
    pub(crate) balance_transfers: u64,
    /// Balancing rounds that walked every group.
    pub(crate) balance_walks: u64,
    /// Forwarded requests answered from this replica's own log (their
    /// leader had not said where it appended them).
    pub(crate) forwards_settled_from_log: u64,
    /// Raft messages refused as impossible for their group's log.
    pub(crate) impossible_messages: u64,
    /// Idle followers woken because their leader's connection ended.
    pub(crate) peer_loss_wakes: u64,
    /// Leadership transfers to this node refused because it is stopping.
    pub(crate) transfers_refused_stopping: u64,
    pub(crate) leader_elected: u64,
    pub(crate) turns: u64,
    pub(crate) wal_writes: u64,
}

struct Pending {
    group: GroupId,
    number: raft::ReadyNumber,
    /// Counted in the group's `readys_in_flight` (waited for the WAL).
    in_flight: bool,
    /// Calls `Raft::advance(number)` when finished (false for the apply
    /// half of a split Ready: its other half advances once durable).
    advance: bool,
    /// Counted in the group's `applies_in_flight`.
    holds_apply: bool,
    persisted_messages: Vec<Message>,
    committed: Vec<Entry>,
    read_states: Vec<raft::ReadState>,
    dropped_reads: Vec<u64>,
    fetches: Vec<raft::FetchRequest>,
}

impl Pending {
    fn has_apply_work(&self) -> bool {
        !self.committed.is_empty()
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || !self.fetches.is_empty()
    }

    /// Moves the work that needs no durability (apply, reads, fetches) into
    /// a Pending of its own that finishes at once and does not advance.
    fn split_apply(&mut self) -> Pending {
        Pending {
            group: self.group,
            number: self.number,
            in_flight: false,
            advance: false,
            holds_apply: false,
            persisted_messages: Vec::new(),
            committed: std::mem::take(&mut self.committed),
            read_states: std::mem::take(&mut self.read_states),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
            fetches: std::mem::take(&mut self.fetches),
        }
    }
}

/// Restarts every group found in the WAL: hard state, memberships, term
/// runs from the WAL index, the uncommitted tail read back from disk. The
/// state machines start empty and Raft hands them the committed entries
/// again (fetched from the WAL) — until snapshots, from index 1.
///
/// # Errors
/// A message naming the group when its persisted state does not fit
/// together (corruption is reported, the shard does not start).
pub(crate) async fn restore_groups(
    driver: &SharedDriver,
    recovered: Vec<storage::RecoveredGroup>,
) -> Result<usize, String> {
    let wal = driver.borrow().wal.clone();
    let count = recovered.len();
    for rg in recovered {
        let group = GroupId(rg.group);
        let meta = match rg.meta.clone() {
            Some(bytes) => GroupMeta::decode(bytes).map_err(|e| format!("group {group}: {e}"))?,
            None => {
                return Err(format!(
                    "group {group}: the WAL holds its log but no membership record"
                ))
            }
        };
        let hs = rg.hard_state.unwrap_or_default();
        let snap = rg.snapshot;
        let last = rg.last_index;
        let mut commit = hs.commit.max(snap.index);
        let dir = driver.borrow().snapshot_dir();
        let mut applied = snap.index;
        let mut snapshot_bytes = 0;
        let mut loaded = None;
        if !meta.witness {
            match super::snapshot::load_for_restart(&dir, group)
                .await
                .map_err(|e| format!("group {group}: {e}"))?
            {
                Some((index, bytes, state)) if index >= snap.index => {
                    // A snapshot holds only applied, so committed, entries.
                    // Applies run ahead of the durable hard state (its
                    // commit index is written lazily, and a Ready's committed
                    // entries are applied while its own writes sync), so the
                    // file may be past the commit index the WAL recorded:
                    // the file proves the commit.
                    applied = index;
                    commit = commit.max(index);
                    snapshot_bytes = bytes;
                    loaded = Some(state);
                }
                _ if snap.index > 0 => {
                    return Err(format!(
                        "group {group}: the log is compacted to {} but no snapshot file covers it",
                        snap.index
                    ))
                }
                _ => {}
            }
        }
        let mut term_runs: Vec<(u64, u64)> = Vec::new();
        for i in snap.index + 1..=last {
            let t = wal
                .term(rg.group, i)
                .ok_or_else(|| format!("group {group}: no term for index {i} in the WAL index"))?;
            if term_runs.last().is_none_or(|(_, lt)| *lt != t) {
                term_runs.push((i, t));
            }
        }
        let tail = if commit < last {
            let entries = wal
                .entries(rg.group, commit + 1..last + 1, u64::MAX)
                .await
                .map_err(|e| format!("group {group}: reading the log tail: {e}"))?;
            entries
                .into_iter()
                .map(from_wal_entry)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("group {group}: {e}"))?
        } else {
            Vec::new()
        };
        let st = raft::PersistedState {
            hard_state: HardState {
                term: hs.term,
                vote: (hs.vote != 0).then_some(NodeId(hs.vote)),
                commit,
            },
            membership: meta.latest.clone(),
            snapshot: raft::SnapshotMeta {
                index: snap.index,
                term: snap.term,
                membership: meta.base.clone(),
            },
            last_index: last,
            term_runs,
            tail,
            applied,
        };
        let mut d = driver.borrow_mut();
        let cfg = d.raft_config(group);
        let raft = Raft::restart(cfg, st).map_err(|e| format!("group {group}: {e}"))?;
        info!(
            group = group.0,
            term = hs.term,
            commit,
            last_index = last,
            "group recovered from the WAL"
        );
        d.insert_restored(group, raft, meta);
        if let Some(state) = loaded {
            d.install_snapshot(group, applied, snapshot_bytes, Some(state))?;
            d.counters.snapshots_installed -= 1;
        }
        d.last_snapshot
            .insert(group, SnapshotPace::at(applied, snapshot_bytes));
    }
    Ok(count)
}

/// WAL writes one shard keeps in flight (turns collected while earlier
/// turns' writes and fdatasyncs run).
const WRITES_IN_FLIGHT_MAX: usize = 4;

/// With [`WRITES_IN_FLIGHT_MAX`] writes in flight, a turn is still
/// collected once this long has passed since the last: a WAL write stalled
/// by the disk (hundreds of ms happen on a busy machine) must not hold back
/// the heartbeats, votes and acknowledgements of every group of the shard,
/// or the other nodes elect new leaders for all of them.
const COLLECT_INTERVAL_WHEN_FULL: std::time::Duration = std::time::Duration::from_millis(10);

const WRITING: u8 = 0;
const DURABLE: u8 = 1;
const FAILED: u8 = 2;

/// One collected turn waiting for its WAL write.
struct Turn {
    state: Rc<std::cell::Cell<u8>>,
    write: Option<glommio::task::JoinHandle<()>>,
    pending: Vec<Pending>,
    /// Stopped groups whose removal record this turn writes.
    removed: Vec<GroupId>,
}

/// Runs driver turns until `stop`: on each kick, finishes (in order) the
/// turns whose WAL write is durable, then collects a new turn and starts
/// its write without waiting for it — so the next batch is built, and the
/// leader's appends for it go out, while the previous one syncs (at most
/// [`WRITES_IN_FLIGHT_MAX`] in flight; Raft allows several Readys in
/// flight). Fetches and snapshot work run as their own tasks.
pub(crate) async fn drive(
    driver: SharedDriver,
    kick: Rc<glommio::sync::Semaphore>,
    stop: Rc<std::cell::Cell<bool>>,
    bulk: glommio::TaskQueueHandle,
) {
    driver.borrow_mut().bulk_queue = Some(bulk);
    let mut turns: std::collections::VecDeque<Turn> = std::collections::VecDeque::new();
    let mut last_collect = std::time::Instant::now();
    while !stop.get() {
        // Wait for at least one kick, then take all of them: one turn serves
        // every input that arrived meanwhile.
        if kick.acquire(1).await.is_err() {
            break;
        }
        let extra = kick.available();
        if extra > 0 {
            let _ = kick.try_acquire(extra);
        }
        // 1. Finish durable turns, oldest first.
        let mut failed = false;
        while let Some(front) = turns.front() {
            match front.state.get() {
                WRITING => break,
                FAILED => {
                    failed = true;
                    break;
                }
                _ => {
                    let turn = turns.pop_front().expect("front exists");
                    if let Some(w) = turn.write {
                        let _ = w.await;
                    }
                    finish_turn(&driver, &kick, turn.pending).await;
                    for group in turn.removed {
                        glommio::spawn_local(finish_removal(driver.clone(), group)).detach();
                    }
                }
            }
        }
        if failed {
            // Nothing acknowledged can be trusted past a failed write: stop
            // the shard's raft work rather than lie.
            tracing::error!("WAL write failed; shard stops serving raft");
            driver.borrow_mut().fail_all();
            stop.set(true);
            break;
        }
        // 2. Collect a new turn and start its write.
        if turns.len() < WRITES_IN_FLIGHT_MAX
            || last_collect.elapsed() >= COLLECT_INTERVAL_WHEN_FULL
        {
            last_collect = std::time::Instant::now();
            let Collected {
                batches: batch,
                pending,
                immediate,
                removed,
            } = driver.borrow_mut().collect();
            debug_assert!(removed.is_empty() || !batch.is_empty());
            driver.borrow_mut().counters.turns += 1;
            if batch.is_empty() && turns.is_empty() {
                finish_turn(&driver, &kick, pending).await;
            } else if batch.is_empty() {
                turns.push_back(Turn {
                    state: Rc::new(std::cell::Cell::new(DURABLE)),
                    write: None,
                    pending,
                    removed,
                });
            } else {
                driver.borrow_mut().counters.wal_writes += 1;
                let wal = driver.borrow().wal.clone();
                // The WAL must accept batches in turn order (a group's
                // entries continue where its previous append ended): each is
                // submitted here, in order, and the next only once the WAL
                // has taken this one (at once, unless it applies
                // backpressure). Durability is awaited by the task below.
                let mut writes = Vec::with_capacity(batch.len());
                for b in batch {
                    let wal2 = wal.clone();
                    let mut write: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> =
                        Box::pin(async move { wal2.write(b).await });
                    let accepted_before = wal.stats().batches;
                    let early = std::future::poll_fn(|cx| match write.as_mut().poll(cx) {
                        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                        std::task::Poll::Pending if wal.stats().batches != accepted_before => {
                            std::task::Poll::Ready(None)
                        }
                        std::task::Poll::Pending => std::task::Poll::Pending,
                    })
                    .await;
                    writes.push((early, write));
                }
                let state = Rc::new(std::cell::Cell::new(WRITING));
                let done = state.clone();
                let kick = kick.clone();
                let write = glommio::spawn_local(async move {
                    let mut outcome = DURABLE;
                    for (early, write) in writes {
                        let result = match early {
                            Some(r) => r,
                            None => write.await,
                        };
                        if let Err(e) = result {
                            tracing::error!(error = %e, "WAL write failed");
                            outcome = FAILED;
                            break;
                        }
                    }
                    done.set(outcome);
                    kick.signal(1);
                })
                .detach();
                turns.push_back(Turn {
                    state,
                    write: Some(write),
                    pending,
                    removed,
                });
            }
            // After the write started: the apply overlaps the fdatasync.
            if !immediate.is_empty() {
                finish_turn(&driver, &kick, immediate).await;
            }
        }
        if driver.borrow().has_snapshot_work() {
            let (take, sends) = driver.borrow_mut().take_snapshot_work();
            // Bulk work (capturing and writing a state machine, streaming
            // its file) runs on the bulk task queue: when both are busy the
            // raft queue (ticks, messages, turns) gets four times its CPU.
            for group in take {
                let driver = driver.clone();
                let kick = kick.clone();
                spawn_bulk(bulk, async move {
                    let _ = super::snapshot::take(driver, group).await;
                    kick.signal(1);
                });
            }
            for msg in sends {
                spawn_bulk(
                    bulk,
                    super::snapshot::send(driver.clone(), kick.clone(), msg),
                );
            }
        }
        let durable_front = turns.front().is_some_and(|t| t.state.get() != WRITING);
        if durable_front
            || (turns.len() < WRITES_IN_FLIGHT_MAX && !driver.borrow().dirty.is_empty())
        {
            kick.signal(1);
        }
        glommio::yield_if_needed().await;
    }
    // Let writes in flight end before the WAL closes.
    for t in turns {
        if let Some(w) = t.write {
            let _ = w.await;
        }
    }
}

/// Spawns `work` on the shard's bulk task queue (created with the shard,
/// never removed).
fn spawn_bulk(
    bulk: glommio::TaskQueueHandle,
    work: impl std::future::Future<Output = ()> + 'static,
) {
    glommio::spawn_local_into(work, bulk)
        .expect("bulk task queue exists")
        .detach();
}

/// Ends the stop of `group` once its WAL removal is durable: waits for
/// snapshot files of the group still being written, deletes every snapshot
/// file of the group, then answers the callers.
async fn finish_removal(driver: SharedDriver, group: GroupId) {
    while driver.borrow().snapshot_files_busy(group) {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    let dir = driver.borrow().snapshot_dir();
    let result = storage::snapshot::remove_older_snapshots(&dir, group.0, u64::MAX, u64::MAX)
        .await
        .map(|_| ())
        .map_err(|e| RequestError::Storage {
            group,
            message: format!("removing snapshot files: {e}"),
        });
    driver.borrow_mut().finish_stop(group, result);
}

/// Finishes a durable turn: acknowledgements out first, then each group's
/// apply, yielding to the ticker, the inbound task and the mailbox between
/// groups when the preempt timer says so (a long apply never delays ticks by
/// more than one group's batch).
async fn finish_turn(
    driver: &SharedDriver,
    kick: &Rc<glommio::sync::Semaphore>,
    mut pending: Vec<Pending>,
) {
    driver.borrow_mut().send_persisted(&mut pending);
    for p in pending {
        let fetches = driver.borrow_mut().finish_one(p);
        spawn_fetches(driver, kick, fetches);
        if glommio::executor().need_preempt() {
            // What this turn decided so far goes out before the yield.
            driver.borrow_mut().flush_remote_answers();
            glommio::yield_if_needed().await;
        }
    }
    driver.borrow_mut().flush_remote_answers();
}

/// Loads entries Raft asked for from the WAL, each fetch on its own task.
fn spawn_fetches(
    driver: &SharedDriver,
    kick: &Rc<glommio::sync::Semaphore>,
    fetches: Vec<(GroupId, raft::FetchRequest)>,
) {
    for (group, req) in fetches {
        let driver = driver.clone();
        let kick = kick.clone();
        glommio::spawn_local(async move {
            let wal = driver.borrow().wal.clone();
            let loaded = wal
                .entries(group.0, req.lo..req.hi + 1, req.bytes_max as u64)
                .await;
            let mut d = driver.borrow_mut();
            let read = match loaded {
                Ok(entries) => entries
                    .into_iter()
                    .map(from_wal_entry)
                    .collect::<Result<Vec<Entry>, String>>()
                    .map_err(|e| warn!(group = group.0, error = %e, "corrupt entry in WAL")),
                Err(e) => {
                    warn!(group = group.0, error = %e, "WAL read failed");
                    Err(())
                }
            };
            // Always answered, with nothing on failure: Raft clears its
            // fetch-in-flight flag and asks again (or sends a snapshot)
            // rather than waiting for this fetch forever. A failure does
            // not mark the group dirty, so a fetch that keeps failing is
            // retried at the pace of the group's other work (ticks,
            // messages), not once per turn.
            if let Some(g) = d.groups.get_mut(&group) {
                let ok = read.is_ok();
                g.raft.entries_loaded(req, read.unwrap_or_default());
                if ok {
                    d.dirty.insert(group);
                }
            }
            drop(d);
            kick.signal(1);
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, n: u64, bytes: usize) -> Vec<Entry> {
        (from..from + n)
            .map(|index| Entry {
                index,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![7u8; bytes]),
            })
            .collect()
    }

    #[test]
    fn batches_split_at_the_budget_and_keep_order() {
        let mut b = BatchBuilder::new(10_000);
        b.append(1, &entries(1, 100, 1000)); // ~104 KB: about 11 batches
        b.set_hard_state(
            1,
            storage::HardState {
                term: 1,
                vote: 0,
                commit: 100,
            },
        );
        b.append(2, &entries(1, 1, 50_000)); // one entry over the budget: alone
        let batches = b.finish();
        assert!(batches.len() >= 11, "{} batches", batches.len());
        assert!(batches.iter().all(|x| !x.is_empty()));
        // Everything is there, once: 100 + 1 appends' entries and the hard state.
        let ops: usize = batches.iter().map(|x| x.len()).sum();
        assert!(ops >= 12);

        let mut small = BatchBuilder::new(1 << 20);
        small.append(1, &entries(1, 10, 16));
        small.set_hard_state(1, storage::HardState::default());
        assert_eq!(small.finish().len(), 1, "small turns stay one batch");
    }
}
