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
//! This slice runs groups from a fresh start only: recovery of groups found
//! in the WAL at start, snapshots and membership persistence come next.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use flotilla_rsm::{KvStore, Rsm};
use flotilla_storage as storage;
use flotilla_transport as transport;
use tracing::{debug, info, warn};

use super::group::{GroupReplica, ReplicaLimits, Reply};
use crate::error::RequestError;
use crate::raft::{
    self, Entry, EntryKind, GroupId, HardState, Member, MemberKind, Membership, Message, NodeId,
    Raft,
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
    pub(crate) decode_errors: u64,
    pub(crate) unknown_group_messages: u64,
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
            decode_errors: 0,
            unknown_group_messages: 0,
        }
    }

    pub(crate) fn transport(&self) -> Rc<transport::Transport> {
        self.transport.clone()
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
        for (id, addr) in members {
            if *id != self.node {
                self.transport.registry().set_node(
                    transport::NodeId(id.0),
                    *addr,
                    self.shard_count as u32,
                );
            }
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
        let mut cfg = self.raft_defaults.clone();
        cfg.id = self.node;
        cfg.group = group;
        // Must differ on every start of this replica (see raft::Config::seed).
        cfg.seed = self.boot_nanos ^ group.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.node.0;
        let raft = Raft::new(cfg, membership);
        let rsm = Rsm::new(Box::new(KvStore::new()), Default::default());
        self.groups.insert(
            group,
            GroupReplica::new(raft, Some(rsm), ReplicaLimits::default()),
        );
        self.dirty.insert(group);
        info!(group = group.0, node = self.node.0, "group started");
        Ok(())
    }

    pub(crate) fn propose(&mut self, group: GroupId, cmd: Bytes, reply: Reply<Bytes>) {
        match self.groups.get_mut(&group) {
            Some(g) => {
                g.propose(cmd, reply);
                self.dirty.insert(group);
            }
            None => {
                let _ = reply.send(Err(RequestError::GroupNotFound { group }));
            }
        }
    }

    pub(crate) fn read(&mut self, group: GroupId, query: Bytes, reply: Reply<Bytes>) {
        match self.groups.get_mut(&group) {
            Some(g) => {
                g.read(query, reply);
                self.dirty.insert(group);
            }
            None => {
                let _ = reply.send(Err(RequestError::GroupNotFound { group }));
            }
        }
    }

    /// Leader, term, commit, applied index and waiting requests of `group`.
    pub(crate) fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        self.groups.get(&group).map(|g| {
            let (proposals_pending, reads_pending) = g.pending();
            GroupStatus {
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
    pub(crate) fn tick(&mut self) {
        for (id, g) in self.groups.iter_mut() {
            if g.raft.is_quiesced() {
                continue;
            }
            g.raft.tick();
            self.dirty.insert(*id);
        }
    }

    /// Steps one received frame's messages into their groups.
    pub(crate) fn on_inbound(&mut self, batch: transport::InboundBatch) {
        for bytes in batch.messages {
            let msg = match wire::decode(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    self.decode_errors += 1;
                    warn!(from = batch.from.node.0, error = %e, "undecodable raft message dropped");
                    continue;
                }
            };
            let group = msg.group;
            match self.groups.get_mut(&group) {
                Some(g) => {
                    if let Err(e) = g.raft.step(msg) {
                        debug!(group = group.0, error = %e, "message refused");
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
            let peer = transport::PeerId::new(m.to.0, super::shard_of(m.group.0, self.shard_count));
            let bytes = self.encoder.encode_to_bytes(&m);
            if let Err(e) = self.transport.send(peer, bytes) {
                debug!(group = m.group.0, to = m.to.0, error = %e, "raft message not queued");
            }
        }
    }

    /// Takes every dirty group's Ready: sends what may go now and returns the
    /// WAL batch plus what waits for it.
    fn collect(&mut self) -> (storage::Batch, Vec<Pending>) {
        let mut batch = storage::Batch::new();
        let mut pending = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            g.end_turn();
            let Some(rd) = g.raft.ready() else {
                continue;
            };
            let messages = rd.messages;
            if !rd.entries.is_empty() {
                batch.append(id.0, rd.entries.iter().map(to_wal_entry).collect());
            }
            if let Some(hs) = rd.hard_state.as_ref() {
                batch.set_hard_state(id.0, to_wal_hard_state(hs));
            }
            pending.push(Pending {
                group: id,
                number: rd.number,
                persisted_messages: rd.persisted_messages,
                committed: rd.committed_entries,
                read_states: rd.read_states,
                dropped_reads: rd.dropped_reads,
                fetches: rd.fetches,
            });
            self.send(messages);
        }
        (batch, pending)
    }

    /// After the batch is durable: send, apply, answer, advance.
    fn finish(&mut self, pending: Vec<Pending>) -> Vec<(GroupId, raft::FetchRequest)> {
        let mut fetches = Vec::new();
        for p in pending {
            let persisted = p.persisted_messages;
            if let Some(g) = self.groups.get_mut(&p.group) {
                g.on_read_states(&p.read_states, &p.dropped_reads);
                g.apply(&p.committed);
                g.raft.advance(p.number);
                if g.raft.has_ready() {
                    self.dirty.insert(p.group);
                }
                fetches.extend(p.fetches.into_iter().map(|f| (p.group, f)));
            }
            self.send(persisted);
        }
        fetches
    }

    /// Fails every waiting request (shutdown).
    pub(crate) fn fail_all(&mut self) {
        for g in self.groups.values_mut() {
            g.fail_all();
        }
    }
}

/// The state of one group replica, as `NodeHost::group_status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
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

struct Pending {
    group: GroupId,
    number: raft::ReadyNumber,
    persisted_messages: Vec<Message>,
    committed: Vec<Entry>,
    read_states: Vec<raft::ReadState>,
    dropped_reads: Vec<u64>,
    fetches: Vec<raft::FetchRequest>,
}

/// Runs driver turns until `stop`: waits for a kick, then collects, writes,
/// finishes. Returns when stopped.
pub(crate) async fn drive(
    driver: SharedDriver,
    kick: Rc<glommio::sync::Semaphore>,
    stop: Rc<std::cell::Cell<bool>>,
) {
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
        let (batch, pending) = driver.borrow_mut().collect();
        if !batch.is_empty() {
            let wal = driver.borrow().wal.clone();
            if let Err(e) = wal.write(batch).await {
                // Nothing acknowledged can be trusted past a failed write:
                // stop the shard's raft work rather than lie.
                tracing::error!(error = %e, "WAL write failed; shard stops serving raft");
                driver.borrow_mut().fail_all();
                stop.set(true);
                break;
            }
        }
        let fetches = driver.borrow_mut().finish(pending);
        for (group, req) in fetches {
            let wal = driver.borrow().wal.clone();
            let loaded = wal
                .entries(group.0, req.lo..req.hi + 1, req.bytes_max as u64)
                .await;
            let mut d = driver.borrow_mut();
            match loaded {
                Ok(entries) => {
                    let entries: Result<Vec<Entry>, String> =
                        entries.into_iter().map(from_wal_entry).collect();
                    match entries {
                        Ok(entries) => {
                            if let Some(g) = d.groups.get_mut(&group) {
                                g.raft.entries_loaded(req, entries);
                                d.dirty.insert(group);
                            }
                        }
                        Err(e) => warn!(group = group.0, error = %e, "corrupt entry in WAL"),
                    }
                }
                Err(e) => warn!(group = group.0, error = %e, "WAL read failed"),
            }
        }
        if !driver.borrow().dirty.is_empty() {
            kick.signal(1);
        }
        glommio::yield_if_needed().await;
    }
}
