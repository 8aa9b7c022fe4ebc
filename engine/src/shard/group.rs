//! One group replica inside a shard: its Raft core, its replicated state
//! machine, and the requests waiting on them.
//!
//! ```text
//!  propose ──► Raft::propose ──► PendingProposal{index, term} ─┐
//!                                                               │ committed entry
//!  read ──► Raft::read_index(ctx) ──► ReadState{ctx, index} ──┐ │ (index, term)
//!                                                              ▼ ▼
//!                                           apply ──► Rsm::apply ──► replies
//! ```
//!
//! A proposal succeeds when the entry at its index *with its term* is
//! applied; if another leader's entry is applied at that index instead, the
//! proposal was definitely not applied and fails with
//! [`RequestError::Dropped`] (safe to retry). A linearizable read is served
//! once the state machine has applied the read index Raft confirmed for it.
//! This module does no I/O: the shard persists, sends and loads.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use flotilla_rsm::{Applied, Rsm};

use crate::error::RequestError;
use crate::raft::{ConfChange, Entry, EntryKind, GroupId, Index, Raft, ReadState, Term};

pub(crate) use super::reply::Reply;

struct PendingProposal {
    index: Index,
    term: Term,
    /// A membership change (decided by a config-change entry, not a
    /// normal one): answered with an empty result when it applies.
    conf_change: bool,
    reply: Reply<Bytes>,
}

struct PendingRead {
    query: Bytes,
    reply: Reply<Bytes>,
}

/// Bounds on what one replica keeps waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaLimits {
    /// Proposals waiting for their entry to apply.
    pub(crate) proposals_pending_max: usize,
    /// Reads waiting for confirmation or apply.
    pub(crate) reads_pending_max: usize,
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        ReplicaLimits {
            proposals_pending_max: 1 << 16,
            reads_pending_max: 1 << 16,
        }
    }
}

/// A group replica: Raft + state machine + waiting requests.
pub(crate) struct GroupReplica {
    group: GroupId,
    pub(crate) raft: Raft,
    /// `None` on a witness, which keeps no state machine.
    rsm: Option<Rsm>,
    limits: ReplicaLimits,
    /// Ordered by index (proposals are appended in index order).
    proposals: VecDeque<PendingProposal>,
    /// At most the lowest term among `proposals` (exact after each
    /// [`GroupReplica::drop_unreachable`]).
    proposals_min_term: Term,
    /// Reads waiting for Raft to confirm a read index, by context.
    reads_unconfirmed: BTreeMap<u64, Vec<PendingRead>>,
    /// Reads with a confirmed index, waiting for the state machine to apply it.
    reads_confirmed: BTreeMap<Index, Vec<PendingRead>>,
    reads_pending: usize,
    /// The read context of this turn's batch (all reads of one turn share
    /// one ReadIndex round).
    read_ctx_open: Option<u64>,
    /// The same for this turn's lease reads.
    lease_ctx_open: Option<u64>,
    read_ctx_next: u64,
    applied_scratch: Vec<Applied>,
    /// Readys of this group whose WAL write is not durable yet (the driver
    /// finishes a group's Readys in order).
    pub(crate) readys_in_flight: u32,
    /// Of those, the ones that apply or answer reads when durable (a
    /// snapshot's Ready, and what follows it): later Readys' applies wait
    /// behind them so that a group applies in order.
    pub(crate) applies_in_flight: u32,
    /// Term and vote of the last hard state handed to the WAL (`None`: not
    /// known, so the next hard state is written before its Ready finishes).
    pub(crate) written_term_vote: Option<(Term, Option<crate::raft::NodeId>)>,
    /// Index of the last entry handed to the WAL (0: none yet); a Ready
    /// whose entries start at or below it overwrites the log from there.
    last_emitted_index: Index,
    /// Requests this node forwarded to the leader whose entry it has not
    /// been told of: tag → the leader's term (the only term the leader may
    /// append them in). See [`GroupReplica::want_tag`].
    tags_wanted: HashMap<u64, Term>,
    /// Outcomes of wanted tags found while applying, for the driver.
    tags_settled: Vec<(u64, Result<Bytes, RequestError>)>,
    /// Callers waiting for the applied index to pass theirs (see
    /// [`GroupReplica::wait_applied`]).
    apply_waiters: Vec<(Index, super::reply::ReplyTx<Index>)>,
}

impl GroupReplica {
    /// A replica around `raft`, applying into `rsm` (`None` for a witness).
    pub(crate) fn new(raft: Raft, rsm: Option<Rsm>, limits: ReplicaLimits) -> Self {
        GroupReplica {
            group: raft.group(),
            raft,
            rsm,
            limits,
            proposals: VecDeque::new(),
            proposals_min_term: Term::MAX,
            reads_unconfirmed: BTreeMap::new(),
            reads_confirmed: BTreeMap::new(),
            reads_pending: 0,
            read_ctx_open: None,
            lease_ctx_open: None,
            read_ctx_next: 1,
            applied_scratch: Vec::new(),
            readys_in_flight: 0,
            applies_in_flight: 0,
            written_term_vote: None,
            last_emitted_index: 0,
            tags_wanted: HashMap::new(),
            tags_settled: Vec::new(),
            apply_waiters: Vec::new(),
        }
    }

    /// Watches this replica's applies for the entry of a forwarded request
    /// tagged `tag` (see `flotilla_rsm::Envelope::Tagged`) that a leader of
    /// `term` may append (the leader refuses it in any other term). Settled
    /// with the entry's result when it applies here; `Dropped` once an entry
    /// of a later term applies without it (Log Matching: a committed entry
    /// of `term` can only sit below it); `Indeterminate` if a snapshot
    /// covers what it could be in. False on a witness (it applies nothing).
    pub(crate) fn want_tag(&mut self, tag: u64, term: Term) -> bool {
        if self.rsm.is_none() {
            return false;
        }
        self.tags_wanted.insert(tag, term);
        true
    }

    /// Stops watching for `tag` (the leader answered, or refused it).
    pub(crate) fn unwant_tag(&mut self, tag: u64) {
        self.tags_wanted.remove(&tag);
    }

    /// The wanted tags settled since the last call.
    pub(crate) fn take_settled_tags(&mut self) -> Vec<(u64, Result<Bytes, RequestError>)> {
        std::mem::take(&mut self.tags_settled)
    }

    /// The state machine's applied index (the Raft applied index on a witness).
    pub(crate) fn applied_index(&self) -> Index {
        match &self.rsm {
            Some(rsm) => rsm.applied_index(),
            None => self.raft.applied(),
        }
    }

    /// Proposes `cmd` (an encoded rsm envelope); `reply` gets the result once
    /// it is applied.
    /// Proposes `cmd`; `reply` gets its result once applied. Returns the
    /// entry's (index, term) when it was appended.
    pub(crate) fn propose(&mut self, cmd: Bytes, reply: Reply<Bytes>) -> Option<(Index, Term)> {
        if self.proposals.len() >= self.limits.proposals_pending_max {
            let _ = reply.send(Err(RequestError::Rejected(
                crate::raft::ProposeError::Busy {
                    group: self.group,
                    uncommitted: self.proposals.len() as u64,
                },
            )));
            return None;
        }
        match self.raft.propose(cmd) {
            Ok(index) => {
                let term = self.raft.term();
                self.insert_proposal(PendingProposal {
                    index,
                    term,
                    conf_change: false,
                    reply,
                });
                Some((index, term))
            }
            Err(e) => {
                let _ = reply.send(Err(RequestError::from(e)));
                None
            }
        }
    }

    /// Keeps the proposals sorted by index. A leader's own proposals come in
    /// index order; a watched one (see [`GroupReplica::watch`]) may sit
    /// past the end of a log a new leader rewrites.
    fn insert_proposal(&mut self, p: PendingProposal) {
        self.proposals_min_term = self.proposals_min_term.min(p.term);
        if self.proposals.back().is_none_or(|b| b.index < p.index) {
            self.proposals.push_back(p);
        } else {
            let at = self.proposals.partition_point(|q| q.index <= p.index);
            self.proposals.insert(at, p);
        }
    }

    /// Answers `reply` when this replica applies the entry at `index`: with
    /// its result if that entry has `term` (another node's leader appended
    /// it for a request this node forwarded), `Dropped` if another entry
    /// took its place. Gives `reply` back if `index` is applied already.
    pub(crate) fn watch(
        &mut self,
        index: Index,
        term: Term,
        reply: Reply<Bytes>,
    ) -> Result<(), Reply<Bytes>> {
        if index <= self.applied_index() {
            return Err(reply);
        }
        self.insert_proposal(PendingProposal {
            index,
            term,
            conf_change: false,
            reply,
        });
        Ok(())
    }

    /// Answers the watched proposal at (`index`, `term`) with `result` (the
    /// leader's answer came before this replica applied the entry); false
    /// if it is no longer waiting.
    pub(crate) fn complete_watched(
        &mut self,
        index: Index,
        term: Term,
        result: Result<Bytes, RequestError>,
    ) -> bool {
        let Some(at) = self
            .proposals
            .iter()
            .position(|p| p.index == index && p.term == term && !p.conf_change)
        else {
            return false;
        };
        let p = self.proposals.remove(at).expect("position is in range");
        let _ = p.reply.send(result);
        true
    }

    /// Proposes a membership change; `reply` gets an empty result once the
    /// change is applied (it is effective from then on).
    pub(crate) fn propose_conf_change(&mut self, cc: ConfChange, reply: Reply<Bytes>) {
        if self.raft.conf_change_in_effect(&cc) {
            tracing::debug!(group = self.group.0, change = ?cc, "membership change already in effect");
            let _ = reply.send(Ok(Bytes::new()));
            return;
        }
        match self.raft.propose_conf_change(cc) {
            Ok(index) => {
                self.insert_proposal(PendingProposal {
                    index,
                    term: self.raft.term(),
                    conf_change: true,
                    reply,
                });
            }
            Err(e) => {
                let _ = reply.send(Err(RequestError::from(e)));
            }
        }
    }

    /// Answers `reply` with the applied index once it is above `after`: at
    /// once if it is already, else at the first apply (or snapshot install)
    /// past it. Lets a caller sleep until the state machine changes instead
    /// of polling it (a blocked `BLPOP`): read what it needs *after* the
    /// answer, then wait again with the index it got, and no change slips
    /// in between. Waiters whose caller left are pruned here now and then
    /// (and dropped when woken); at most `reads_pending_max` wait.
    pub(crate) fn wait_applied(&mut self, after: Index, reply: super::reply::ReplyTx<Index>) {
        let applied = self.applied_index();
        if applied > after {
            let _ = reply.send(Ok(applied));
            return;
        }
        // Every 64 registrations (amortized: a wake re-registers every
        // waiter of the group).
        if self.apply_waiters.len() % 64 == 63 {
            self.apply_waiters.retain(|(_, tx)| !tx.is_canceled());
        }
        if self.apply_waiters.len() >= self.limits.reads_pending_max {
            let _ = reply.send(Err(RequestError::Rejected(
                crate::raft::ProposeError::TooManyReads { group: self.group },
            )));
            return;
        }
        self.apply_waiters.push((after, reply));
    }

    /// Answers the apply waiters the applied index has passed.
    fn wake_apply_waiters(&mut self) {
        if self.apply_waiters.is_empty() {
            return;
        }
        let applied = self.applied_index();
        let (passed, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.apply_waiters)
            .into_iter()
            .partition(|(after, _)| *after < applied);
        self.apply_waiters = waiting;
        for (_, tx) in passed {
            let _ = tx.send(Ok(applied));
        }
    }

    /// A linearizable read of `query`: confirmed through ReadIndex (or the
    /// leader lease), answered once applied.
    ///
    /// With `lease`, a leader whose lease holds answers without a heartbeat
    /// round (the caller checked that the shard's clock did not stall).
    pub(crate) fn read(&mut self, query: Bytes, lease: bool, reply: Reply<Bytes>) {
        if self.rsm.is_none() {
            let _ = reply.send(Err(RequestError::Witness { group: self.group }));
            return;
        }
        if self.reads_pending >= self.limits.reads_pending_max {
            let _ = reply.send(Err(RequestError::Rejected(
                crate::raft::ProposeError::TooManyReads { group: self.group },
            )));
            return;
        }
        let open = if lease {
            self.lease_ctx_open
        } else {
            self.read_ctx_open
        };
        let ctx = match open {
            Some(ctx) => ctx,
            None => {
                let ctx = self.read_ctx_next;
                let started = if lease {
                    self.raft.read_index_lease(ctx)
                } else {
                    self.raft.read_index(ctx)
                };
                if let Err(e) = started {
                    let _ = reply.send(Err(RequestError::from(e)));
                    return;
                }
                self.read_ctx_next += 1;
                if lease {
                    self.lease_ctx_open = Some(ctx);
                } else {
                    self.read_ctx_open = Some(ctx);
                }
                ctx
            }
        };
        self.reads_pending += 1;
        self.reads_unconfirmed
            .entry(ctx)
            .or_default()
            .push(PendingRead { query, reply });
    }

    /// Answers `query` from local state, whatever its staleness.
    pub(crate) fn read_stale(&self, query: &[u8]) -> Result<Bytes, RequestError> {
        let rsm = self
            .rsm
            .as_ref()
            .ok_or(RequestError::Witness { group: self.group })?;
        rsm.query(query).map_err(|error| RequestError::Query {
            group: self.group,
            error,
        })
    }

    /// A consistent view of the state machine for a snapshot (`None` on a
    /// witness).
    pub(crate) fn capture(&self) -> Option<flotilla_rsm::SnapshotWriter> {
        self.rsm.as_ref().map(|r| r.capture(Bytes::new()))
    }

    /// Replaces the state machine's state with a snapshot's.
    pub(crate) fn install(&mut self, loaded: flotilla_rsm::LoadedSnapshot) -> Result<(), String> {
        let rsm = self.rsm.as_mut().ok_or("a witness has no state machine")?;
        rsm.install(loaded).map_err(|e| e.to_string())?;
        // Entries the snapshot covers are never applied here one by one:
        // whether a waiting proposal's entry is among them is unknown (its
        // term is not kept), so it must not be reported `Dropped`.
        let applied = self.applied_index();
        while self.proposals.front().is_some_and(|p| p.index <= applied) {
            let p = self.proposals.pop_front().expect("front exists");
            let _ = p.reply.send(Err(RequestError::Indeterminate {
                group: self.group,
                index: p.index,
            }));
        }
        // Likewise for forwarded requests whose entry may be in it.
        for (tag, _) in self.tags_wanted.drain() {
            self.tags_settled.push((
                tag,
                Err(RequestError::Indeterminate {
                    group: self.group,
                    index: applied,
                }),
            ));
        }
        self.serve_reads();
        self.wake_apply_waiters();
        Ok(())
    }

    /// Ends this turn's read batch: later reads start a new ReadIndex round.
    pub(crate) fn end_turn(&mut self) {
        self.read_ctx_open = None;
        self.lease_ctx_open = None;
    }

    /// Entries of a Ready, about to be written. If they overwrite the log
    /// (a deposed leader's uncommitted tail replaced by the new leader's
    /// entries), every proposal whose entry is gone fails as `Dropped` now:
    /// its entry can never commit, and waiting for an apply at its index
    /// could wait until the deadline (nothing may ever reach that index if
    /// the clients moved on).
    pub(crate) fn on_entries_emitted(&mut self, entries: &[Entry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let overwrites = first.index <= self.last_emitted_index;
        self.last_emitted_index = last.index;
        if !overwrites {
            return;
        }
        let from = self.proposals.partition_point(|p| p.index < first.index);
        let tail: Vec<PendingProposal> = self.proposals.drain(from..).collect();
        for p in tail {
            let kept = entries
                .get((p.index - first.index) as usize)
                .is_some_and(|e| e.index == p.index && e.term == p.term);
            if kept {
                self.proposals.push_back(p);
            } else {
                tracing::debug!(
                    group = self.group.0,
                    index = p.index,
                    "proposal overwritten"
                );
                let _ = p.reply.send(Err(RequestError::Dropped {
                    group: self.group,
                    index: p.index,
                }));
            }
        }
    }

    /// Raft confirmed read indexes (`states`) or gave up on some (`dropped`).
    pub(crate) fn on_read_states(&mut self, states: &[ReadState], dropped: &[u64]) {
        for rs in states {
            if let Some(reads) = self.reads_unconfirmed.remove(&rs.ctx) {
                self.reads_confirmed
                    .entry(rs.index)
                    .or_default()
                    .extend(reads);
            }
        }
        for ctx in dropped {
            if let Some(reads) = self.reads_unconfirmed.remove(ctx) {
                self.reads_pending -= reads.len();
                for r in reads {
                    let _ = r
                        .reply
                        .send(Err(RequestError::ReadAborted { group: self.group }));
                }
            }
            if self.read_ctx_open == Some(*ctx) {
                self.read_ctx_open = None;
            }
            if self.lease_ctx_open == Some(*ctx) {
                self.lease_ctx_open = None;
            }
        }
        self.serve_reads();
    }

    /// Applies committed entries in order, completes the proposals they
    /// decide and the reads they make servable, and tells Raft.
    pub(crate) fn apply(&mut self, committed: &[Entry]) {
        // Entries a snapshot installed since this Ready was collected already
        // cover (pipelined turns) are not applied twice.
        let applied = self.applied_index();
        let skip = committed.iter().take_while(|e| e.index <= applied).count();
        let committed = &committed[skip..];
        let Some(last) = committed.last() else {
            return;
        };
        debug_assert!(committed.windows(2).all(|w| w[1].index == w[0].index + 1));
        if let Some(rsm) = self.rsm.as_mut() {
            // Runs of normal entries go to the state machine as one batch;
            // no-ops and membership entries only advance the applied index.
            let mut i = 0;
            while i < committed.len() {
                if committed[i].kind != EntryKind::Normal {
                    rsm.advance_to(committed[i].index);
                    i += 1;
                    continue;
                }
                let run_end = committed[i..]
                    .iter()
                    .position(|e| e.kind != EntryKind::Normal)
                    .map_or(committed.len(), |p| i + p);
                self.applied_scratch.clear();
                rsm.apply(
                    committed[i..run_end]
                        .iter()
                        .map(|e| (e.index, e.data.clone())),
                    &mut self.applied_scratch,
                );
                debug_assert_eq!(self.applied_scratch.len(), run_end - i);
                for (entry, applied) in committed[i..run_end]
                    .iter()
                    .zip(self.applied_scratch.drain(..))
                {
                    debug_assert_eq!(entry.index, applied.index);
                    if !self.tags_wanted.is_empty() {
                        if let Some(tag) = flotilla_rsm::tag_of(&entry.data) {
                            if self.tags_wanted.remove(&tag).is_some() {
                                let result = match &applied.result {
                                    Ok(bytes) => Ok(bytes.clone()),
                                    Err(error) => Err(RequestError::Apply {
                                        group: self.group,
                                        error: error.clone(),
                                    }),
                                };
                                self.tags_settled.push((tag, result));
                            }
                        }
                    }
                    complete_proposals(
                        self.group,
                        &mut self.proposals,
                        entry.index,
                        entry.term,
                        Some(applied.result),
                    );
                }
                i = run_end;
            }
        }
        // Whatever is left at or below the last index (membership entries,
        // no-ops, a witness's entries) is decided too.
        for e in committed {
            complete_proposals(self.group, &mut self.proposals, e.index, e.term, None);
        }
        if self.proposals_min_term < last.term {
            self.drop_unreachable(last.index, last.term);
        }
        if !self.tags_wanted.is_empty() {
            let (group, settled) = (self.group, &mut self.tags_settled);
            self.tags_wanted.retain(|&tag, &mut term| {
                if term >= last.term {
                    return true;
                }
                tracing::debug!(
                    group = group.0,
                    tag,
                    term,
                    "forwarded request was not appended"
                );
                settled.push((
                    tag,
                    Err(RequestError::Dropped {
                        group,
                        index: last.index,
                    }),
                ));
                false
            });
        }
        self.raft.applied_to(last.index);
        self.serve_reads();
        self.wake_apply_waiters();
    }

    /// With (`index`, `term`) applied, no entry of a lower term can ever be
    /// committed past `index` (Log Matching: every later entry of a log that
    /// holds (`index`, `term`) has a term of at least `term`), so waiting
    /// proposals of lower terms past `index` are `Dropped` now. Without
    /// this, a proposal of a leader that went away (watched here for the
    /// node that forwarded it, or this replica's own as a deposed leader)
    /// would wait for an index that nothing may ever reach again.
    fn drop_unreachable(&mut self, index: Index, term: Term) {
        let mut min_term = Term::MAX;
        let mut kept = VecDeque::with_capacity(self.proposals.len());
        for p in self.proposals.drain(..) {
            if p.index > index && p.term < term {
                tracing::debug!(
                    group = self.group.0,
                    index = p.index,
                    term = p.term,
                    "proposal of an earlier term cannot commit any more"
                );
                let _ = p.reply.send(Err(RequestError::Dropped {
                    group: self.group,
                    index: p.index,
                }));
            } else {
                min_term = min_term.min(p.term);
                kept.push_back(p);
            }
        }
        self.proposals = kept;
        self.proposals_min_term = min_term;
    }

    /// Fails every waiting request (the group is stopping).
    pub(crate) fn fail_all(&mut self) {
        for p in self.proposals.drain(..) {
            let _ = p
                .reply
                .send(Err(RequestError::ShuttingDown { group: self.group }));
        }
        let unconfirmed = std::mem::take(&mut self.reads_unconfirmed);
        let confirmed = std::mem::take(&mut self.reads_confirmed);
        for r in unconfirmed
            .into_values()
            .chain(confirmed.into_values())
            .flatten()
        {
            let _ = r
                .reply
                .send(Err(RequestError::ShuttingDown { group: self.group }));
        }
        self.reads_pending = 0;
        for (_, tx) in self.apply_waiters.drain(..) {
            let _ = tx.send(Err(RequestError::ShuttingDown { group: self.group }));
        }
    }

    /// Number of proposals and reads waiting.
    pub(crate) fn pending(&self) -> (usize, usize) {
        (self.proposals.len(), self.reads_pending)
    }

    fn serve_reads(&mut self) {
        let applied = self.applied_index();
        while let Some(entry) = self.reads_confirmed.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let reads = entry.remove();
            self.reads_pending -= reads.len();
            for r in reads {
                let answer = self.read_stale(&r.query);
                let _ = r.reply.send(answer);
            }
        }
    }
}

/// Decides the proposals at or below `index` given that the entry applied
/// at `index` has term `term`: the one with this exact (index, term) gets
/// `result`; any other is overwritten, hence dropped.
fn complete_proposals(
    group: GroupId,
    proposals: &mut VecDeque<PendingProposal>,
    index: Index,
    term: Term,
    mut result: Option<Result<Bytes, flotilla_rsm::ApplyError>>,
) {
    while let Some(front) = proposals.front() {
        if front.index > index {
            break;
        }
        let p = proposals.pop_front().expect("front exists");
        let answer = if p.index == index && p.term == term {
            match result.take() {
                _ if p.conf_change => Ok(Bytes::new()),
                Some(Ok(bytes)) => Ok(bytes),
                Some(Err(error)) => Err(RequestError::Apply { group, error }),
                // A proposal is always a normal entry; a non-normal entry at
                // its index means another leader's entry replaced it.
                None => Err(RequestError::Dropped {
                    group,
                    index: p.index,
                }),
            }
        } else {
            Err(RequestError::Dropped {
                group,
                index: p.index,
            })
        };
        let _ = p.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Config, Membership, NodeId};
    use flotilla_rsm::{encode_noop, KvCommand, KvQuery, KvResult, KvStore};
    use futures_channel::oneshot;
    use futures_lite::future::block_on;

    fn single_voter() -> GroupReplica {
        let mut raft = Raft::new(Config::new(NodeId(1), GroupId(7)), Membership::voters(&[1]));
        while !raft.is_leader() {
            raft.tick();
        }
        let rsm = Rsm::new(Box::new(KvStore::new()), Default::default());
        let mut g = GroupReplica::new(raft, Some(rsm), ReplicaLimits::default());
        drive(&mut g);
        g
    }

    /// Persists (instantly), applies and advances until Raft is idle.
    fn drive(g: &mut GroupReplica) {
        while let Some(rd) = g.raft.ready() {
            g.on_read_states(&rd.read_states, &rd.dropped_reads);
            g.apply(&rd.committed_entries);
            g.raft.advance(rd.number);
        }
        g.end_turn();
    }

    fn put(key: &str, value: &str) -> Bytes {
        encode_noop(
            &KvCommand::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                condition: flotilla_rsm::PutCondition::Always,
                return_previous: false,
            }
            .encode(),
        )
    }

    #[test]
    fn proposals_complete_with_their_results_and_reads_see_them() {
        let mut g = single_voter();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        g.propose(put("a", "1"), tx1.into());
        g.propose(put("b", "2"), tx2.into());
        assert_eq!(g.pending().0, 2);
        drive(&mut g);
        assert_eq!(g.pending().0, 0);
        assert!(block_on(rx1).unwrap().is_ok());
        assert!(block_on(rx2).unwrap().is_ok());

        let (tx, rx) = oneshot::channel();
        g.read(KvQuery::Get { key: "a".into() }.encode(), false, tx.into());
        drive(&mut g);
        let answer = block_on(rx).unwrap().unwrap();
        assert_eq!(
            KvResult::decode(answer).unwrap(),
            KvResult::Value(Some(Bytes::from("1")))
        );
    }

    #[test]
    fn a_malformed_command_fails_alone() {
        let mut g = single_voter();
        let (bad_tx, bad_rx) = oneshot::channel();
        let (ok_tx, ok_rx) = oneshot::channel();
        g.propose(Bytes::from_static(b"\xffgarbage"), bad_tx.into());
        g.propose(put("k", "v"), ok_tx.into());
        drive(&mut g);
        assert!(matches!(
            block_on(bad_rx).unwrap(),
            Err(RequestError::Apply { .. })
        ));
        assert!(block_on(ok_rx).unwrap().is_ok());
    }

    #[test]
    fn an_overwritten_proposal_is_dropped_not_answered_with_another_result() {
        let mut proposals = VecDeque::new();
        let (tx_old, rx_old) = oneshot::channel();
        let (tx_same, rx_same) = oneshot::channel();
        proposals.push_back(PendingProposal {
            index: 5,
            term: 2,
            conf_change: false,
            reply: tx_old.into(),
        });
        proposals.push_back(PendingProposal {
            index: 6,
            term: 3,
            conf_change: false,
            reply: tx_same.into(),
        });
        // Index 5 was replaced by a term-3 entry; index 6 is ours.
        complete_proposals(GroupId(1), &mut proposals, 5, 3, Some(Ok(Bytes::from("x"))));
        complete_proposals(GroupId(1), &mut proposals, 6, 3, Some(Ok(Bytes::from("y"))));
        assert_eq!(
            block_on(rx_old).unwrap(),
            Err(RequestError::Dropped {
                group: GroupId(1),
                index: 5
            })
        );
        assert_eq!(block_on(rx_same).unwrap(), Ok(Bytes::from("y")));
        assert!(proposals.is_empty());
    }

    #[test]
    fn proposals_whose_entries_a_new_leader_overwrites_fail_at_once() {
        let mut g = single_voter();
        let entry = |index, term| Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        // As a leader of term 2 this replica appended 5..=7 for its clients.
        g.on_entries_emitted(&[entry(5, 2), entry(6, 2), entry(7, 2)]);
        let mut answers = Vec::new();
        for index in 5..=7 {
            let (tx, rx) = oneshot::channel();
            g.proposals.push_back(PendingProposal {
                index,
                term: 2,
                conf_change: false,
                reply: tx.into(),
            });
            answers.push(rx);
        }
        // Appending after the last entry overwrites nothing.
        g.on_entries_emitted(&[entry(8, 2)]);
        assert_eq!(g.proposals.len(), 3);
        // A term-3 leader keeps index 5 and replaces 6 (and so 7 and 8).
        g.on_entries_emitted(&[entry(5, 2), entry(6, 3)]);
        assert_eq!(g.proposals.len(), 1, "only index 5 still waits");
        let mut answers = answers.into_iter();
        let five = answers.next().unwrap();
        for (rx, index) in answers.zip(6..) {
            assert_eq!(
                block_on(rx).unwrap(),
                Err(RequestError::Dropped {
                    group: GroupId(7),
                    index
                })
            );
        }
        drop(g);
        assert!(block_on(five).is_err(), "index 5 was still pending");
    }

    #[test]
    fn a_watched_proposal_completes_from_the_local_log() {
        let mut g = single_voter();
        let applied = g.applied_index();
        let term = g.raft.term();
        // Applied already: the caller keeps waiting for the leader.
        let (tx, _rx) = oneshot::channel();
        assert!(g.watch(applied, term, tx.into()).is_err());
        // An entry appended for a request (as another node's leader would
        // have), watched here at its (index, term).
        let index = g.raft.propose(put("w", "1")).unwrap();
        let (tx, rx) = oneshot::channel();
        assert!(g.watch(index, term, tx.into()).is_ok());
        assert_eq!(g.pending().0, 1);
        drive(&mut g);
        assert!(block_on(rx).unwrap().is_ok(), "answered by the local apply");
        // The leader's answer may come first.
        let index = g.raft.propose(put("w", "2")).unwrap();
        let (tx, rx) = oneshot::channel();
        g.watch(index, term, tx.into()).unwrap();
        assert!(g.complete_watched(index, term, Ok(Bytes::from("r"))));
        assert_eq!(block_on(rx).unwrap(), Ok(Bytes::from("r")));
        assert!(!g.complete_watched(index, term, Ok(Bytes::new())));
        drive(&mut g);
    }

    #[test]
    fn apply_waiters_wake_on_the_first_apply_past_their_index() {
        let mut g = single_voter();
        let now = g.applied_index();
        assert!(now > 0, "the leader's no-op is applied");
        // Passed already: answered at once with the current index.
        let (tx, mut rx) = oneshot::channel();
        g.wait_applied(now - 1, tx);
        assert_eq!(rx.try_recv(), Ok(Some(Ok(now))));
        // Not passed: waits for the next apply, which answers every waiter.
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        g.wait_applied(now, tx1);
        g.wait_applied(now, tx2);
        drive(&mut g);
        assert_eq!(rx1.try_recv(), Ok(None), "nothing applied, nobody woken");
        let (ptx, _prx) = oneshot::channel();
        g.propose(put("k", "v"), ptx.into());
        drive(&mut g);
        assert_eq!(rx1.try_recv(), Ok(Some(Ok(now + 1))));
        assert_eq!(rx2.try_recv(), Ok(Some(Ok(now + 1))));
        // Waiters whose callers left are pruned as registrations go on.
        for _ in 0..63 {
            let (gone, gone_rx) = oneshot::channel();
            g.wait_applied(now + 1, gone);
            drop(gone_rx);
        }
        let (tx, mut rx) = oneshot::channel();
        g.wait_applied(now + 1, tx);
        assert_eq!(g.apply_waiters.len(), 1, "the abandoned waiters are gone");
        // Stopping fails the waiters.
        g.fail_all();
        assert!(matches!(
            rx.try_recv(),
            Ok(Some(Err(RequestError::ShuttingDown { .. })))
        ));
    }

    #[test]
    fn a_wanted_tag_settles_with_its_entrys_result_or_as_dropped_past_its_term() {
        let mut g = single_voter();
        let term = g.raft.term();
        assert!(term >= 1);
        // The leader of `term` appended the tagged request: its result.
        assert!(g.want_tag(11, term));
        let tagged = flotilla_rsm::tag_noop(&put("t", "1"), 11).unwrap();
        g.raft.propose(tagged).unwrap();
        // A tag nobody appended, wanted from a leader of an earlier term:
        // this entry of `term` applying without it rules it out.
        assert!(g.want_tag(12, term - 1));
        // One of this term not seen yet keeps waiting.
        assert!(g.want_tag(13, term));
        drive(&mut g);
        let mut settled = g.take_settled_tags();
        settled.sort_by_key(|(tag, _)| *tag);
        assert_eq!(settled.len(), 2, "{settled:?}");
        assert_eq!(settled[0].0, 11);
        let result = settled[0].1.clone().expect("applied");
        let (tx, rx) = oneshot::channel();
        g.propose(put("t", "1"), tx.into());
        drive(&mut g);
        assert_eq!(
            Ok(result),
            block_on(rx).unwrap(),
            "the result of the same command untagged"
        );
        assert!(
            matches!(
                settled[1],
                (
                    12,
                    Err(RequestError::Dropped {
                        group: GroupId(7),
                        ..
                    })
                )
            ),
            "{settled:?}"
        );
        assert!(g.take_settled_tags().is_empty());
        assert_eq!(g.tags_wanted.len(), 1, "13 still waits");
        g.unwant_tag(13);
        assert!(g.tags_wanted.is_empty());
        // The tagged entry read back applies like the untagged command.
        let read = g
            .read_stale(&KvQuery::Get { key: "t".into() }.encode())
            .unwrap();
        assert_eq!(
            KvResult::decode(&read).unwrap(),
            KvResult::Value(Some(Bytes::from("1")))
        );
        // A witness applies nothing: it cannot tell, so it does not watch.
        let raft = Raft::new(Config::new(NodeId(1), GroupId(8)), Membership::voters(&[1]));
        let mut w = GroupReplica::new(raft, None, ReplicaLimits::default());
        assert!(!w.want_tag(1, 1));
    }

    #[test]
    fn proposals_of_an_earlier_term_past_an_applied_entry_of_a_later_one_are_dropped() {
        let mut g = single_voter();
        let applied = g.applied_index();
        let term = g.raft.term();
        let (tx_far, rx_far) = oneshot::channel();
        let (tx_later, rx_later) = oneshot::channel();
        // Watched at `term` far past the log, and one of a later term.
        g.watch(applied + 5, term, tx_far.into()).unwrap();
        g.watch(applied + 6, term + 1, tx_later.into()).unwrap();
        // A leader of term + 1 committed an entry at applied + 1: no entry
        // of `term` can commit past it any more.
        g.drop_unreachable(applied + 1, term + 1);
        assert_eq!(
            block_on(rx_far).unwrap(),
            Err(RequestError::Dropped {
                group: GroupId(7),
                index: applied + 5
            })
        );
        assert_eq!(g.pending().0, 1, "the later term's proposal still waits");
        assert_eq!(g.proposals_min_term, term + 1);
        drop(g);
        assert!(block_on(rx_later).is_err());
    }

    #[test]
    fn a_follower_refuses_proposals_and_stopping_fails_waiters() {
        let raft = Raft::new(
            Config::new(NodeId(1), GroupId(3)),
            Membership::voters(&[1, 2, 3]),
        );
        let rsm = Rsm::new(Box::new(KvStore::new()), Default::default());
        let mut g = GroupReplica::new(raft, Some(rsm), ReplicaLimits::default());
        let (tx, rx) = oneshot::channel();
        g.propose(put("a", "1"), tx.into());
        assert!(matches!(
            block_on(rx).unwrap(),
            Err(RequestError::NotLeader { .. })
        ));

        let mut g = single_voter();
        let (tx, rx) = oneshot::channel();
        g.propose(put("a", "1"), tx.into());
        g.fail_all();
        assert!(matches!(
            block_on(rx).unwrap(),
            Err(RequestError::ShuttingDown { .. })
        ));
    }
}
