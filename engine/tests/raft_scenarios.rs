//! Hand-written scenarios from the Raft paper and thesis, as small scripts.
//!
//! Each test drives a tiny in-memory cluster (`Cluster`): messages go into
//! one FIFO queue, `stabilize()` delivers until nothing is left, writes are
//! durable as soon as a Ready is taken (unless a test says otherwise). Every
//! test prints a transcript (`cargo test -p flotilla --test raft_scenarios --
//! --nocapture`) and asserts what the paper says must happen.

use bytes::Bytes;
use flotilla::raft::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

struct Cluster {
    nodes: BTreeMap<u64, Raft>,
    queue: VecDeque<Message>,
    blocked: BTreeSet<(u64, u64)>,
    applied: BTreeMap<u64, Vec<(Index, Term, Bytes)>>,
    reads: BTreeMap<u64, Vec<ReadState>>,
    /// Every entry each replica persisted (its WAL), for fetches.
    disk: BTreeMap<u64, BTreeMap<Index, Entry>>,
    sent: usize,
    /// Links whose messages are held (a paused process) rather than lost.
    paused: BTreeSet<(u64, u64)>,
    held: Vec<Message>,
    /// Appends carrying entries delivered, per (from, to).
    appends: BTreeMap<(u64, u64), usize>,
    /// Heartbeats sent.
    heartbeats: usize,
    /// The next this many fetches fail (answered with no entries).
    failing_fetches: usize,
    transcript: Vec<String>,
}

fn cfg(id: u64, tweak: &dyn Fn(&mut Config)) -> Config {
    let mut c = Config::new(NodeId(id), GroupId(1));
    c.seed = id;
    tweak(&mut c);
    c
}

fn ent(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("e{index}@{term}")),
    }
}

impl Cluster {
    fn new(ids: &[u64], tweak: &dyn Fn(&mut Config)) -> Cluster {
        let m = Membership::voters(ids);
        let nodes = ids
            .iter()
            .map(|&i| (i, Raft::new(cfg(i, tweak), m.clone())))
            .collect();
        Cluster::with(nodes)
    }

    fn with(nodes: BTreeMap<u64, Raft>) -> Cluster {
        Cluster {
            nodes,
            queue: VecDeque::new(),
            blocked: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            disk: BTreeMap::new(),
            sent: 0,
            paused: BTreeSet::new(),
            held: Vec::new(),
            appends: BTreeMap::new(),
            heartbeats: 0,
            failing_fetches: 0,
            transcript: Vec::new(),
        }
    }

    /// A replica restarted with the given log (`terms[k]` is the term of entry k+1).
    fn restarted(
        id: u64,
        ids: &[u64],
        term: Term,
        terms: &[Term],
        tweak: &dyn Fn(&mut Config),
    ) -> Raft {
        let mut runs: Vec<(Index, Term)> = Vec::new();
        let tail: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(k, &t)| ent(k as u64 + 1, t))
            .collect();
        for e in &tail {
            if runs.last().map(|r| r.1) != Some(e.term) {
                runs.push((e.index, e.term));
            }
        }
        let st = PersistedState {
            hard_state: HardState {
                term,
                vote: None,
                commit: 0,
            },
            membership: Membership::voters(ids),
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership: Membership::voters(ids),
            },
            last_index: terms.len() as u64,
            term_runs: runs,
            tail,
            applied: 0,
        };
        Raft::restart(cfg(id, tweak), st).unwrap()
    }

    fn say(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("{s}");
        self.transcript.push(s);
    }

    fn node(&mut self, id: u64) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Takes every Ready of `id`: persists at once, queues messages, applies.
    fn drain(&mut self, id: u64) {
        let Some(r) = self.nodes.get_mut(&id) else {
            return;
        };
        while let Some(rd) = r.ready() {
            for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                if m.kind == MessageType::Heartbeat {
                    self.heartbeats += 1;
                }
                self.queue.push_back(m);
            }
            let disk = self.disk.entry(id).or_default();
            if let Some(f) = rd.entries.first() {
                let _ = disk.split_off(&f.index);
            }
            for e in &rd.entries {
                disk.insert(e.index, e.clone());
            }
            let ap = self.applied.entry(id).or_default();
            for e in &rd.committed_entries {
                ap.push((e.index, e.term, e.data.clone()));
            }
            if let Some(l) = rd.committed_entries.last() {
                let l = l.index;
                r.advance(rd.number);
                r.applied_to(l);
            } else {
                r.advance(rd.number);
            }
            self.reads.entry(id).or_default().extend(rd.read_states);
            for f in rd.fetches {
                let got: Vec<Entry> = if self.failing_fetches > 0 {
                    self.failing_fetches -= 1;
                    Vec::new()
                } else {
                    disk_range(&self.disk[&id], f.lo, f.hi)
                };
                r.entries_loaded(f, got);
            }
        }
    }

    fn drain_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
    }

    fn deliver(&mut self, m: Message) {
        let (f, t) = (m.from.0, m.to.0);
        if self.blocked.contains(&(f, t)) || !self.nodes.contains_key(&t) {
            return;
        }
        if self.paused.contains(&(f, t)) {
            self.held.push(m);
            return;
        }
        if m.kind == MessageType::Append && !m.entries.is_empty() {
            *self.appends.entry((f, t)).or_default() += 1;
        }

        self.sent += 1;
        self.node(t).step(m).unwrap();
        self.drain(t);
    }

    fn stabilize(&mut self) {
        self.drain_all();
        let mut n = 0;
        while let Some(m) = self.queue.pop_front() {
            self.deliver(m);
            n += 1;
            assert!(n < 100_000, "cluster does not stabilize");
        }
    }

    /// Ticks `id` until it starts an election (its timeout elapses).
    fn campaign(&mut self, id: u64) {
        for _ in 0..40 {
            self.node(id).tick();
            if self.node(id).role() != Role::Follower {
                break;
            }
        }
        self.drain(id);
        self.stabilize();
    }

    fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
                self.drain(id);
            }
            self.stabilize();
        }
    }

    fn isolate(&mut self, a: u64) {
        for &b in self.nodes.keys() {
            if b != a {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
        self.say(format!("-- isolate {a}"));
    }

    /// `a` stops (SIGSTOP): what is sent to it waits, it sends nothing.
    fn pause(&mut self, a: u64) {
        for &b in self.nodes.keys() {
            if b != a {
                self.paused.insert((b, a));
                self.blocked.insert((a, b));
            }
        }
        self.say(format!("-- pause {a}"));
    }

    /// `a` continues and reads everything that waited for it.
    fn resume(&mut self, a: u64) {
        self.paused.retain(|&(_, t)| t != a);
        self.blocked.retain(|&(f, _)| f != a);
        let held = std::mem::take(&mut self.held);
        self.say(format!("-- resume {a}: {} messages waited", held.len()));
        self.queue.extend(held);
    }

    fn heal(&mut self) {
        self.blocked.clear();
        self.say("-- heal");
    }

    fn propose(&mut self, id: u64, s: &str) -> Result<Index, ProposeError> {
        let r = self.node(id).propose(Bytes::from(s.to_string()));
        self.drain(id);
        r
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.is_leader())
            .max_by_key(|(_, r)| r.term())
            .map(|(&i, _)| i)
    }

    fn status(&mut self) {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, r)| {
                let terms: Vec<String> = (r.snapshot_index() + 1..=r.last_index())
                    .map(|i| r.term_at(i).unwrap().to_string())
                    .collect();
                format!(
                    "  {id}: {:?} term {} commit {} log [{}]",
                    r.role(),
                    r.term(),
                    r.commit(),
                    terms.join(" ")
                )
            })
            .collect();
        for l in lines {
            self.say(l);
        }
    }

    fn log_terms(&self, id: u64) -> Vec<Term> {
        let r = &self.nodes[&id];
        (1..=r.last_index())
            .map(|i| r.term_at(i).unwrap())
            .collect()
    }
}

fn disk_range(d: &BTreeMap<Index, Entry>, lo: Index, hi: Index) -> Vec<Entry> {
    d.range(lo..=hi).map(|(_, e)| e.clone()).collect()
}

/// Replicas 1–3, 1 leading, one write committed everywhere.
fn warm_cluster(tweak: &dyn Fn(&mut Config)) -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], tweak);
    c.campaign(1);
    c.propose(1, "warm").unwrap();
    c.stabilize();
    c
}

fn default() -> impl Fn(&mut Config) {
    |_c: &mut Config| {}
}

// ---------------------------------------------------------------------------

/// Figure 7: a new leader brings followers with missing, extra and
/// conflicting entries to exactly its own log.
#[test]
fn figure7_leader_repairs_divergent_followers() {
    let ids = [1, 2, 3, 4, 5, 6, 7];
    let t = &|c: &mut Config| c.check_quorum = false;
    // Leader's log from Figure 7 (terms of entries 1..10), term 8.
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let logs: [&[Term]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra from term 7
        &[1, 1, 1, 4, 4, 4, 4],                // (e) conflicting term-4 tail
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) conflicting terms 2-3
    ];
    let mut nodes = BTreeMap::new();
    nodes.insert(1, Cluster::restarted(1, &ids, 7, &leader_log, t));
    for (k, l) in logs.iter().enumerate() {
        nodes.insert(
            k as u64 + 2,
            Cluster::restarted(k as u64 + 2, &ids, 7, l, t),
        );
    }
    let mut c = Cluster::with(nodes);
    c.say("# Figure 7: followers (a)-(f) diverge from the leader in every possible way");
    c.status();
    // (d) is more up to date than the leader: it would win a fair election.
    // Let node 1 win: (c), (d) stay out of the vote, (a), (b), (e) vote for it.
    c.isolate(4);
    c.isolate(5);
    c.campaign(1);
    assert!(
        c.node(1).is_leader(),
        "node 1 should win with (a), (b), (e), (f)"
    );
    c.heal();
    c.tick_all(3);
    c.say("after the leader replicated its log:");
    c.status();
    let want = c.log_terms(1);
    assert_eq!(&want[..10], &leader_log[..]);
    for id in 2..=7 {
        assert_eq!(
            c.log_terms(id),
            want,
            "follower {id} must match the leader exactly"
        );
    }
}

/// Figure 8: an entry from an earlier term replicated on a majority is NOT
/// committed by counting replicas; a later leader may still overwrite it.
/// With the planted bug the leader commits (and applies) it, and the next
/// leader lacks it: a committed entry is lost.
/// Returns (S1's commit after replicating 2@2, S1 applied index 2, S3's term at 2 as leader).
fn figure8(bug: bool) -> (Index, bool, Option<Term>) {
    let ids = [1, 2, 3];
    let t = move |c: &mut Config| {
        c.append_bytes_max = 1; // one entry per append
        c.pre_vote = false;
        c.check_quorum = false;
        if bug {
            c.planted_bug = Some(PlantedBug::CommitPreviousTerm);
        }
    };
    // S1 led term 2 and wrote entry 2 only locally; S3 led term 3 and wrote
    // its own entry 2 only locally. S2 has only entry 1.
    let mut nodes = BTreeMap::new();
    nodes.insert(1, Cluster::restarted(1, &ids, 3, &[1, 2], &t));
    nodes.insert(2, Cluster::restarted(2, &ids, 3, &[1], &t));
    nodes.insert(3, Cluster::restarted(3, &ids, 3, &[1, 3], &t));
    let mut c = Cluster::with(nodes);
    c.say(format!("# Figure 8 (planted bug: {bug})"));
    c.status();
    c.isolate(3);
    // Term 4, votes from S2; every append carrying S1's term-4 no-op is lost.
    for _ in 0..40 {
        c.node(1).tick();
        if c.node(1).role() != Role::Follower {
            break;
        }
    }
    c.drain(1);
    while let Some(mut m) = c.queue.pop_front() {
        // The term-4 suffix of every append is lost on the way.
        m.entries.retain(|e| e.term != 4);
        c.deliver(m);
    }
    assert!(c.node(1).is_leader());
    assert_eq!(c.log_terms(2), vec![1, 2], "S2 got 2@2 but not the no-op");
    c.status();
    let s1_commit = c.nodes[&1].commit();
    c.say(format!(
        "S1 commit after replicating 2@2 to S2: {s1_commit}"
    ));
    let s1_applied_2 = c
        .applied
        .get(&1)
        .is_some_and(|a| a.iter().any(|e| e.0 == 2 && e.1 == 2));
    // S1 crashes; S3 comes back and wins: its last term 3 beats S2's 2.
    c.nodes.remove(&1);
    c.heal();
    for _ in 0..100 {
        c.node(3).tick();
        c.drain(3);
        // Only election traffic: S3 must win before it replicates anything.
        let votes: Vec<Message> = c.queue.drain(..).collect();
        for m in votes {
            if matches!(
                m.kind,
                MessageType::RequestVote | MessageType::RequestVoteResponse
            ) {
                c.deliver(m);
            }
        }
        c.queue.retain(|m| {
            matches!(
                m.kind,
                MessageType::RequestVote | MessageType::RequestVoteResponse
            )
        });
        if c.node(3).is_leader() {
            break;
        }
    }
    c.status();
    assert!(c.node(3).is_leader(), "S3 wins with S2's vote");
    (s1_commit, s1_applied_2, c.nodes[&3].term_at(2))
}

#[test]
fn figure8_only_current_term_entries_commit_by_counting() {
    let (commit, applied, s3_term_at_2) = figure8(false);
    assert!(
        commit < 2,
        "2@2 must not commit by counting replicas in term 4"
    );
    assert!(!applied);
    assert_eq!(
        s3_term_at_2,
        Some(3),
        "S3 may overwrite 2@2: it was never committed"
    );
}

#[test]
fn figure8_planted_bug_loses_a_committed_entry() {
    let (commit, applied, s3_term_at_2) = figure8(true);
    assert!(commit >= 2, "the planted bug commits 2@2 by counting");
    assert!(applied, "and S1 applies it");
    assert_eq!(
        s3_term_at_2,
        Some(3),
        "the next leader lacks the applied entry: leader completeness is violated"
    );
}

/// §6.4/§9.6: a leader cut off from the majority cannot commit, steps down
/// after an election timeout (check quorum) and its entries are replaced.
#[test]
fn stale_leader_after_partition() {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    assert!(c.node(1).is_leader());
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.isolate(1);
    let i = c.propose(1, "lost").unwrap();
    c.tick_all(25);
    let new = c.leader().unwrap();
    c.say(format!(
        "new leader {new}; old leader role {:?}",
        c.nodes[&1].role()
    ));
    assert_ne!(new, 1);
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "check quorum makes the stale leader step down"
    );
    assert!(!c.node(1).lease_valid());
    assert!(c.node(1).commit() < i);
    c.propose(new, "y").unwrap();
    c.heal();
    c.tick_all(3);
    c.status();
    assert_eq!(c.log_terms(1), c.log_terms(new));
    let applied: Vec<Bytes> = c.applied[&1].iter().map(|a| a.2.clone()).collect();
    assert!(!applied.contains(&Bytes::from("lost")));
    assert!(applied.contains(&Bytes::from("y")));
}

/// A peer acknowledging entries the leader never had speaks for another
/// log (in CI: a node of another `flotilla local` that took over a port
/// this cluster dialed). The leader refuses that answer instead of moving
/// the peer's next index past its own log, which then tried to send a
/// snapshot that did not exist and panicked; replication goes on.
#[test]
fn an_acknowledgement_past_the_leaders_log_is_refused() {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    assert!(c.node(1).is_leader());
    c.propose(1, "a").unwrap();
    c.stabilize();
    let (term, last) = (c.node(1).term(), c.node(1).last_index());
    let mut m = Message::new(
        GroupId(1),
        MessageType::AppendResponse,
        NodeId(2),
        NodeId(1),
        term,
    );
    m.index = last + 100;
    let err = c.node(1).step(m).unwrap_err();
    c.say(format!("leader refuses: {err}"));
    assert_eq!(
        err,
        StepError::AckPastLog {
            from: NodeId(2),
            index: last + 100,
            last
        }
    );
    assert_eq!(c.node(1).stats().messages_rejected_impossible, 1);
    let i = c.propose(1, "b").unwrap();
    c.tick_all(3);
    c.status();
    for id in [1, 2, 3] {
        assert!(c.node(id).commit() >= i, "node {id} commits {i}");
        assert_eq!(c.log_terms(id), c.log_terms(1), "node {id}'s log");
    }
}

fn rejoin(pre_vote: bool) -> (Term, Term, u64) {
    let t = move |c: &mut Config| c.pre_vote = pre_vote;
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.say(format!("# disruptive rejoin, pre_vote={pre_vote}"));
    c.campaign(1);
    let term_before = c.node(1).term();
    c.isolate(3);
    c.tick_all(60); // node 3 keeps timing out alone
    c.say(format!(
        "isolated node 3 reached term {}",
        c.nodes[&3].term()
    ));
    c.heal();
    c.tick_all(30);
    c.status();
    (term_before, c.node(1).term(), c.leader().unwrap())
}

/// Thesis §9.6: without PreVote a rejoining node's inflated term deposes a
/// healthy leader; with PreVote it does not.
#[test]
fn disruptive_rejoin_with_and_without_prevote() {
    let (before, after, leader) = rejoin(true);
    assert_eq!(before, after, "PreVote: the healthy leader keeps its term");
    assert_eq!(leader, 1);
    let (before, after, _) = rejoin(false);
    assert!(
        after > before,
        "without PreVote the rejoining node forces a new term"
    );
}

/// Nodes 1..=3 with node 1 leading, after it removed `node` and the
/// cluster settled; the index of the removal.
fn removed_by_leader_1(node: u64) -> (Cluster, Index) {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    c.stabilize();
    let i = c
        .node(1)
        .propose_conf_change(ConfChange {
            kind: ConfChangeKind::RemoveNode,
            node: NodeId(node),
            address: Bytes::new(),
        })
        .unwrap();
    c.stabilize();
    (c, i)
}

/// Thesis §4.2.2: a leader removed from the group steps down once the
/// change commits; the rest elect a new leader.
#[test]
fn leader_removal_steps_down() {
    let (mut c, i) = removed_by_leader_1(1);
    c.say(format!(
        "removal at {i} committed; node 1 role {:?}",
        c.nodes[&1].role()
    ));
    assert!(c.node(1).commit() >= i);
    assert_eq!(c.node(1).role(), Role::Follower);
    c.tick_all(40);
    assert!(c.node(2).membership().get(NodeId(1)).is_none());
    let l = c.leader().unwrap();
    assert!(l == 2 || l == 3);
    let j = c.propose(l, "after").unwrap();
    c.stabilize();
    assert!(c.node(l).commit() >= j);
    assert!(
        c.node(1).role() == Role::Follower,
        "a removed node never campaigns"
    );
}

/// A removed follower learns that its removal committed (the leader's
/// farewell heartbeat): without it, it held the change uncommitted, kept
/// itself in the membership and stayed leaderless for good once nobody
/// sent to it any more.
#[test]
fn a_removed_follower_learns_its_removal() {
    let (mut c, i) = removed_by_leader_1(3);
    let commit3 = c.node(3).commit();
    let members3: Vec<u64> = c
        .node(3)
        .membership()
        .members
        .iter()
        .map(|m| m.id.0)
        .collect();
    c.say(format!(
        "removal of 3 at {i}: node 3 commit {commit3}, members {members3:?}"
    ));
    assert!(c.node(3).commit() >= i, "node 3 heard the commit");
    assert!(
        c.node(3).membership().get(NodeId(3)).is_none(),
        "node 3 knows it is out"
    );
    c.tick_all(100);
    assert_eq!(c.node(3).role(), Role::Follower, "and never campaigns");
    let j = c.propose(1, "after").unwrap();
    c.stabilize();
    assert!(c.node(2).commit() >= j);
}

/// The single-server change bug (Ongaro, raft-dev 2015): a new leader must
/// commit an entry of its own term before starting a membership change.
#[test]
fn single_server_change_waits_for_noop_commit() {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    // Node 1 wins but its no-op has not reached anyone yet.
    for _ in 0..40 {
        c.node(1).tick();
        if c.node(1).role() != Role::Follower {
            break;
        }
    }
    c.drain(1);
    // Deliver only vote traffic: pre-votes and votes, not the no-op.
    for _ in 0..4 {
        let msgs: Vec<Message> = c.queue.drain(..).collect();
        for m in msgs {
            if m.kind == MessageType::Append {
                c.queue.push_back(m);
                continue;
            }
            c.deliver(m);
        }
        if c.node(1).is_leader() {
            break;
        }
    }
    assert!(c.node(1).is_leader());
    let cc = ConfChange {
        kind: ConfChangeKind::AddVoter,
        node: NodeId(4),
        address: Bytes::new(),
    };
    let r = c.node(1).propose_conf_change(cc.clone());
    c.say(format!("change before the no-op commits: {r:?}"));
    assert!(matches!(r, Err(ProposeError::NotCommittedInTerm { .. })));
    c.stabilize();
    let r = c.node(1).propose_conf_change(cc.clone());
    c.say(format!("change after the no-op commits: {r:?}"));
    assert!(r.is_ok());
    let again = c.node(1).propose_conf_change(ConfChange {
        kind: ConfChangeKind::AddObserver,
        node: NodeId(5),
        address: Bytes::new(),
    });
    assert!(matches!(again, Err(ProposeError::ConfChangePending { .. })));
    // Not "in effect" while uncommitted: a retry must wait for the answer.
    assert!(!c.node(1).conf_change_in_effect(&cc));
    c.stabilize();
    // Committed: the same change again is a no-op, not an error (a client
    // retrying after a lost answer); other changes of that node are not.
    assert!(c.node(1).conf_change_in_effect(&cc));
    for other in [
        ConfChangeKind::AddObserver,
        ConfChangeKind::RemoveNode,
        ConfChangeKind::PromoteObserver,
    ] {
        let promote_of_voter = other == ConfChangeKind::PromoteObserver;
        let o = ConfChange {
            kind: other,
            ..cc.clone()
        };
        assert_eq!(
            c.node(1).conf_change_in_effect(&o),
            promote_of_voter,
            "{other:?}"
        );
    }
    let moved = ConfChange {
        address: Bytes::from_static(b"127.0.0.1:4"),
        ..cc.clone()
    };
    assert!(!c.node(1).conf_change_in_effect(&moved), "another address");
    let gone = ConfChange {
        kind: ConfChangeKind::RemoveNode,
        node: NodeId(9),
        address: Bytes::new(),
    };
    assert!(c.node(1).conf_change_in_effect(&gone));
    assert!(
        !c.node(2).conf_change_in_effect(&gone),
        "only a leader vouches"
    );
}

/// Leadership transfer: the target catches up and wins; proposals are
/// refused meanwhile; an unreachable target makes the transfer abort.
#[test]
fn leader_transfer_and_abort() {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    c.propose(1, "a").unwrap();
    c.node(1).transfer_leader(NodeId(2)).unwrap();
    assert!(matches!(
        c.node(1).propose(Bytes::from_static(b"b")),
        Err(ProposeError::TransferInProgress { .. })
    ));
    c.stabilize();
    assert_eq!(c.leader(), Some(2));
    assert_eq!(c.node(1).role(), Role::Follower);
    c.isolate(3);
    c.node(2).transfer_leader(NodeId(3)).unwrap();
    c.stabilize();
    c.tick_all(10);
    assert_eq!(
        c.node(2).transferee(),
        None,
        "transfer aborted after an election timeout"
    );
    assert!(c.node(2).is_leader());
    assert!(c.propose(2, "c").is_ok());
}

/// Witness: votes and counts for commit, gets entries without payloads,
/// never leads. Observer: gets everything, does not count, is promoted once
/// caught up.
#[test]
fn witness_and_observer_membership() {
    let t = |c: &mut Config| c.promote_lag_max = 0;
    let mut c = Cluster::new(&[1, 2], &t);
    c.campaign(1);
    for (id, kind) in [
        (3, ConfChangeKind::AddWitness),
        (4, ConfChangeKind::AddObserver),
    ] {
        c.nodes
            .insert(id, Raft::new(cfg(id, &t), Membership::default()));
        c.node(1)
            .propose_conf_change(ConfChange {
                kind,
                node: NodeId(id),
                address: Bytes::from(format!("127.0.0.1:{id}")),
            })
            .unwrap();
        c.stabilize();
        c.tick_all(2);
    }
    let m = c.node(1).membership().clone();
    assert_eq!(m.kind(NodeId(3)), Some(MemberKind::Witness));
    assert_eq!(m.kind(NodeId(4)), Some(MemberKind::Observer));
    assert_eq!(
        c.node(4).membership(),
        &m,
        "the joiner learned the membership from the log"
    );
    assert_eq!(
        m.get(NodeId(4)).unwrap().address,
        Bytes::from("127.0.0.1:4")
    );
    let i = c.propose(1, "payload").unwrap();
    c.stabilize();
    c.tick_all(1);
    let w: Vec<_> = c.applied[&3].iter().filter(|a| a.0 == i).collect();
    assert!(w[0].2.is_empty(), "a witness stores no payload");
    let o: Vec<_> = c.applied[&4].iter().filter(|a| a.0 == i).collect();
    assert_eq!(o[0].2, Bytes::from("payload"));
    // Node 2 down: leader 1 + witness 3 still commit (2 of 3 voting members).
    c.isolate(2);
    let j = c.propose(1, "with witness").unwrap();
    c.stabilize();
    assert!(c.node(1).commit() >= j, "the witness counts toward commit");
    // Leader down: the witness never campaigns.
    c.heal();
    c.tick_all(3);
    c.isolate(1);
    c.tick_all(60);
    c.status();
    assert_ne!(c.node(3).role(), Role::Leader);
    assert!(c.node(2).is_leader(), "node 2 wins with the witness' vote");
    c.heal();
    c.tick_all(3);
    let p = c.node(2).propose_conf_change(ConfChange {
        kind: ConfChangeKind::PromoteObserver,
        node: NodeId(4),
        address: Bytes::new(),
    });
    assert!(p.is_ok(), "{p:?}");
    c.stabilize();
    assert_eq!(
        c.node(2).membership().kind(NodeId(4)),
        Some(MemberKind::Voter)
    );
}

/// ReadIndex: many reads ride on one heartbeat round; with a valid lease the
/// leader answers without any message; followers forward to the leader.
#[test]
fn read_index_batched_lease_and_forwarded() {
    let t = |c: &mut Config| c.lease_read = false;
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.propose(1, "v").unwrap();
    c.stabilize();
    let sent = c.sent;
    for ctx in 0..100 {
        c.node(1).read_index(ctx).unwrap();
    }
    c.stabilize();
    let msgs = c.sent - sent;
    c.say(format!("100 reads took {msgs} messages"));
    assert_eq!(c.reads[&1].len(), 100);
    assert!(
        msgs <= 4,
        "one heartbeat round (2 heartbeats + 2 responses), saw {msgs}"
    );
    let commit = c.node(1).commit();
    assert!(c.reads[&1].iter().all(|r| r.index == commit));
    // Follower read: forwarded once, answered once.
    c.node(3).read_index(7).unwrap();
    c.node(3).read_index(8).unwrap();
    c.stabilize();
    let r3: Vec<u64> = c.reads[&3].iter().map(|r| r.ctx).collect();
    assert_eq!(r3, vec![7, 8]);

    // Lease reads: no messages at all.
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    c.tick_all(2);
    assert!(c.node(1).lease_valid());
    let sent = c.sent;
    c.node(1).read_index(1).unwrap();
    c.stabilize();
    assert_eq!(c.sent, sent);
    assert_eq!(c.reads[&1].len(), 1);
    assert_eq!(c.node(1).stats().lease_reads, 1);
    c.isolate(1);
    c.tick_all(10);
    assert!(!c.node(1).lease_valid(), "the lease expires without acks");
}

/// Ready contract: votes and append acks wait for persistence; a second
/// Ready before advance never repeats entries or messages.
#[test]
fn ready_separates_persisted_messages_and_never_repeats() {
    let mut c = Cluster::new(&[1, 2, 3], &default());
    c.campaign(1);
    c.stabilize();
    c.node(1).propose(Bytes::from_static(b"a")).unwrap();
    let rd1 = c.node(1).ready().unwrap();
    assert_eq!(rd1.entries.len(), 1);
    assert!(rd1.messages.iter().all(|m| m.kind == MessageType::Append));
    assert!(
        !rd1.messages.is_empty(),
        "the leader sends before its own write is durable"
    );
    let rd2 = c.node(1).ready();
    assert!(rd2.is_none(), "nothing new: {rd2:?}");
    // Follower: the ack is a persisted message.
    let app = rd1
        .messages
        .iter()
        .find(|m| m.to == NodeId(2))
        .unwrap()
        .clone();
    c.node(2).step(app).unwrap();
    let f = c.node(2).ready().unwrap();
    assert_eq!(f.entries.len(), 1);
    assert!(f.messages.is_empty());
    assert_eq!(f.persisted_messages[0].kind, MessageType::AppendResponse);
    // Leader does not count itself until its own write is durable.
    c.node(1).step(f.persisted_messages[0].clone()).unwrap();
    let c1 = c.node(1).commit();
    c.node(1).advance(rd1.number);
    assert!(c.node(1).commit() > c1 || c1 >= rd1.entries[0].index);
}

/// Quiesce: an idle group stops heartbeating; a proposal wakes it without
/// an election.
#[test]
fn quiesce_and_wake_without_election() {
    let t = |c: &mut Config| c.quiesce_ticks = 5;
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.tick_all(10);
    assert!(
        c.nodes.values().all(|r| r.is_quiesced()),
        "all replicas quiesced"
    );
    let sent = c.sent;
    let term = c.node(1).term();
    c.tick_all(100);
    assert_eq!(c.sent, sent, "a quiesced group sends nothing");
    let i = c.propose(1, "wake").unwrap();
    c.stabilize();
    c.tick_all(30);
    assert_eq!(c.node(1).term(), term, "no election on wake");
    assert!(c.node(1).is_leader());
    assert!(c.node(2).commit() >= i);
}

/// The entry cache keeps what a replica may still need (up to
/// `cache_bytes_max`) and only `cache_replicated_bytes_max` of what every
/// replica already has: a follower that was away catches up from memory,
/// and once it has, the leader's cache shrinks.
#[test]
fn the_cache_keeps_what_followers_still_need() {
    let t = |c: &mut Config| {
        c.cache_bytes_max = 1 << 20;
        c.cache_replicated_bytes_max = 0;
    };
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.isolate(3);
    for k in 0..50 {
        c.propose(1, &format!("value-{k:04}")).unwrap();
    }
    c.stabilize();
    let held = c.node(1).cache_bytes();
    c.say(format!("leader caches {held} bytes while node 3 is away"));
    assert!(held >= 50 * 10, "node 3 still needs them: {held}");
    assert!(
        c.node(2).cache_bytes() < held / 10,
        "a follower keeps no replicated entries: {}",
        c.node(2).cache_bytes()
    );
    c.heal();
    c.tick_all(10);
    assert_eq!(c.node(3).commit(), c.node(1).commit());
    assert_eq!(
        c.node(1).stats().fetches_requested,
        0,
        "node 3 caught up from memory"
    );
    let after = c.node(1).cache_bytes();
    c.say(format!(
        "leader caches {after} bytes once every replica has them"
    ));
    assert!(after < held / 10, "{after} of {held} bytes still cached");
}

/// A follower that does not answer costs the leader a bounded window, in
/// bytes as well as in messages: the leader stops building appends for it
/// once `inflight_bytes_max` is out, and the rest goes when it answers.
#[test]
fn the_replication_window_is_bounded_in_bytes() {
    let t = |c: &mut Config| {
        c.append_bytes_max = 100;
        c.inflight_bytes_max = 300;
        c.cache_replicated_bytes_max = 0;
    };
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.propose(1, "first").unwrap();
    c.stabilize();
    c.isolate(3);
    for k in 0..100 {
        c.propose(1, &format!("value-{k:04}")).unwrap();
        c.stabilize();
    }
    let (_, pr) = c
        .node(1)
        .progress()
        .into_iter()
        .find(|(id, _)| *id == NodeId(3))
        .unwrap();
    c.say(format!("progress of node 3 while away: {pr:?}"));
    assert_eq!(pr.state, ProgressState::Replicate);
    assert!(
        pr.inflight_bytes <= 300 + 100,
        "{} bytes in flight to a silent follower",
        pr.inflight_bytes
    );
    let last = c.node(1).last_index();
    assert!(pr.next_index < last, "the leader stopped sending: {pr:?}");
    c.heal();
    c.tick_all(20);
    assert_eq!(c.node(3).last_index(), last);
    assert_eq!(c.node(3).commit(), c.node(1).commit());
}

/// A follower paused for many heartbeat rounds answers all the heartbeats
/// that waited for it at once. Only answers to heartbeats sent after the
/// leader's last append may release another append: each of those answers
/// used to send another full-size append, gigabytes in one turn.
#[test]
fn a_resumed_follower_answering_old_heartbeats_gets_few_appends() {
    let t = |c: &mut Config| {
        c.append_bytes_max = 200;
        c.inflight_max = 2;
        c.check_quorum = false;
    };
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.pause(3);
    for k in 0..20 {
        c.propose(1, &format!("value-{k:04}")).unwrap();
        c.stabilize();
    }
    c.tick_all(100);
    // The appends were lost (a full transport queue drops them, and the
    // leader falls back to probing); the small heartbeats waited.
    c.held.retain(|m| m.kind != MessageType::Append);
    c.node(1).report_unreachable(NodeId(3));
    let before = c.appends.get(&(1, 3)).copied().unwrap_or(0);
    c.resume(3);
    c.stabilize();
    let sent = c.appends.get(&(1, 3)).copied().unwrap_or(0) - before;
    c.say(format!(
        "appends with entries to node 3 after it resumed: {sent}"
    ));
    // One probe, then what catching up needs: 20 entries of 34 bytes at
    // 200 bytes per append.
    assert!(sent <= 1 + 4 + 2, "{sent} appends for 20 entries");
    assert_eq!(c.node(3).commit(), c.node(1).commit());
}

/// Node 1 leads, node 3 is cut off while 20 entries commit, and node 1
/// compacts its log up to what it applied: node 3 can only catch up by
/// snapshot. Returns the compacted index and the snapshot's metadata.
fn leader_compacts_past_isolated_3(c: &mut Cluster) -> (Index, SnapshotMeta) {
    c.campaign(1);
    c.isolate(3);
    for k in 0..20 {
        c.propose(1, &format!("v{k}")).unwrap();
    }
    c.stabilize();
    let applied = c.node(1).applied();
    let meta = c.node(1).compact(applied).unwrap();
    (applied, meta)
}

/// Compaction + snapshot: a follower that fell behind the snapshot gets
/// InstallSnapshot; one behind the cache gets entries fetched from disk.
#[test]
fn snapshot_and_fetch_for_lagging_followers() {
    let t = |c: &mut Config| c.cache_bytes_max = 0;
    let mut c = Cluster::new(&[1, 2, 3], &t);
    let (applied, meta) = leader_compacts_past_isolated_3(&mut c);
    assert_eq!(meta.index, applied);
    assert_eq!(meta.membership, Membership::voters(&[1, 2, 3]));
    c.heal();
    c.tick_all(20);
    assert_eq!(c.node(3).snapshot_index(), applied);
    assert_eq!(c.node(3).commit(), c.node(1).commit());
    assert!(c.node(1).stats().snapshots_sent >= 1);
    // Now node 2 falls behind, but not below the snapshot: its entries are
    // only on the leader's disk (cache budget 0) and get fetched.
    c.isolate(2);
    for k in 0..10 {
        c.propose(1, &format!("w{k}")).unwrap();
    }
    c.stabilize();
    c.heal();
    c.tick_all(10);
    assert!(
        c.node(1).stats().fetches_requested >= 1,
        "entries below the cache were fetched"
    );
    assert_eq!(c.node(2).commit(), c.node(1).commit());
    let last = c.node(1).last_index();
    assert_eq!(c.node(2).last_index(), last);
    assert_eq!(c.node(2).term_at(last), c.node(1).term_at(last));
}

/// `Raft::would_restore` says exactly when stepping an InstallSnapshot
/// restores the replica (the engine installs the state machine only then):
/// yes for the leader's current term past the follower's commit; no once
/// the follower's term moved past the message's (Raft ignores a stale
/// message: installing the state machine from it would put it ahead of
/// the log), and no for a snapshot the follower's log already commits.
#[test]
fn would_restore_agrees_with_what_stepping_the_snapshot_does() {
    let mut c = Cluster::new(&[1, 2, 3], &|_: &mut Config| {});
    let (_, meta) = leader_compacts_past_isolated_3(&mut c);
    let term = c.node(1).term();
    let group = c.node(1).group();
    let install = |term: Term, meta: &SnapshotMeta| {
        let mut m = Message::new(
            group,
            MessageType::InstallSnapshot,
            NodeId(1),
            NodeId(3),
            term,
        );
        m.snapshot = Some(meta.clone());
        m
    };
    let stale_commit = c.node(3).commit();
    assert!(stale_commit < meta.index, "node 3 is behind the snapshot");
    // Already committed on node 3: only the commit index could move.
    let old = SnapshotMeta {
        index: stale_commit,
        term,
        membership: meta.membership.clone(),
    };
    assert!(!c.node(3).would_restore(&install(term, &old)));
    // Node 3 hears of a newer term (another leader's heartbeat): the
    // snapshot message of the old term is stale now.
    let mut hb = Message::new(
        group,
        MessageType::Heartbeat,
        NodeId(2),
        NodeId(3),
        term + 1,
    );
    hb.commit = 0;
    c.node(3).step(hb).unwrap();
    assert_eq!(c.node(3).term(), term + 1);
    let stale = install(term, &meta);
    assert!(!c.node(3).would_restore(&stale), "stale term");
    let last = c.node(3).last_index();
    c.node(3).step(stale).unwrap();
    assert_eq!(
        c.node(3).last_index(),
        last,
        "a stale snapshot restores nothing"
    );
    assert_eq!(c.node(3).snapshot_index(), 0);
    // The same snapshot in the current term restores.
    let fresh = install(term + 1, &meta);
    assert!(c.node(3).would_restore(&fresh));
    c.node(3).step(fresh).unwrap();
    assert_eq!(c.node(3).last_index(), meta.index, "restored");
    assert_eq!(c.node(3).snapshot_index(), meta.index);
    // And once restored, the same message would not restore again.
    assert!(!c.node(3).would_restore(&install(term + 1, &meta)));
    // The leader of the message's term never restores from it.
    assert!(!c.node(1).would_restore(&Message {
        to: NodeId(1),
        ..install(term, &meta)
    }));
}

/// A fetch that fails (the engine answers it with no entries) is asked
/// again: neither replication to a lagging follower nor apply waits for it
/// forever.
#[test]
fn a_failed_fetch_is_asked_again() {
    let t = |c: &mut Config| c.cache_bytes_max = 0;
    let mut c = Cluster::new(&[1, 2, 3], &t);
    c.campaign(1);
    c.isolate(3);
    for k in 0..10 {
        c.propose(1, &format!("w{k}")).unwrap();
    }
    c.stabilize();
    c.failing_fetches = 2;
    c.heal();
    c.tick_all(20);
    assert_eq!(c.failing_fetches, 0, "the leader fetched");
    assert!(
        c.node(1).stats().fetches_requested >= 3,
        "failed fetches were asked again: {}",
        c.node(1).stats().fetches_requested
    );
    assert_eq!(c.node(3).commit(), c.node(1).commit());
    assert_eq!(c.node(3).last_index(), c.node(1).last_index());
}

/// Restart: membership comes from the persisted membership plus the
/// uncommitted config entries in the tail; a tail that does not cover the
/// uncommitted suffix is refused.
#[test]
fn restart_rebuilds_membership_and_pending_change() {
    let base = Membership::voters(&[1]);
    let cc = ConfChange {
        kind: ConfChangeKind::AddObserver,
        node: NodeId(2),
        address: Bytes::from_static(b"10.0.0.2:7000"),
    };
    let next = base.applied(&cc, 2).unwrap();
    let tail = vec![
        Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        },
        Entry {
            index: 2,
            term: 1,
            kind: EntryKind::ConfChange,
            data: cc.encode(&next),
        },
    ];
    let st = PersistedState {
        hard_state: HardState {
            term: 1,
            vote: Some(NodeId(1)),
            commit: 1,
        },
        membership: base.clone(),
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership: base.clone(),
        },
        last_index: 2,
        term_runs: vec![(1, 1)],
        tail: tail.clone(),
        applied: 0,
    };
    let mut short = st.clone();
    short.tail = tail[1..].to_vec();
    short.hard_state.commit = 0;
    assert!(matches!(
        Raft::restart(cfg(1, &default()), short),
        Err(StateError::Inconsistent(_))
    ));
    let mut r = Raft::restart(cfg(1, &default()), st).unwrap();
    assert_eq!(r.pending_conf_index(), Some(2));
    assert_eq!(r.membership(), &base);
    let mut persisted_membership = None;
    let mut applied = Vec::new();
    for _ in 0..40 {
        r.tick();
        while let Some(rd) = r.ready() {
            if let Some(m) = rd.membership {
                persisted_membership = Some(m);
            }
            applied.extend(rd.committed_entries.iter().map(|e| (e.index, e.kind)));
            r.advance(rd.number);
            if let Some(&(l, _)) = applied.last() {
                r.applied_to(l);
            }
        }
    }
    assert!(r.is_leader());
    assert_eq!(r.term(), 2);
    assert_eq!(r.pending_conf_index(), None);
    assert_eq!(r.membership().kind(NodeId(2)), Some(MemberKind::Observer));
    assert_eq!(
        persisted_membership.unwrap().config_index,
        2,
        "the engine is told to persist it"
    );
    assert_eq!(
        applied[..2],
        [(1, EntryKind::Noop), (2, EntryKind::ConfChange)]
    );
}

/// `stagger_first_election`: in a brand-new group the voter at `group %
/// voters` times out first (after exactly `election_timeout_ticks`), the
/// others only after two to three times that, so groups created together
/// spread their first leaders evenly; without it, whoever's random timer
/// fires first wins. A group whose designated voter is down still elects
/// another, later.
#[test]
fn a_new_group_elects_its_designated_first_leader() {
    let ids = [1u64, 2, 3];
    let mut led = BTreeMap::<u64, u64>::new();
    for g in 1..=30u64 {
        let stagger = move |c: &mut Config| {
            c.group = GroupId(g);
            c.seed = c.seed.wrapping_mul(1000) + g;
            c.stagger_first_election = true;
        };
        // Alone (no message delivered), each replica's first campaign
        // comes at its first timeout.
        let et = Config::new(NodeId(1), GroupId(g)).election_timeout_ticks;
        let designated = ids[(g % 3) as usize];
        for &id in &ids {
            let mut r = Raft::new(cfg(id, &stagger), Membership::voters(&ids));
            let mut ticks = 0;
            while r.role() == Role::Follower {
                r.tick();
                ticks += 1;
                assert!(ticks <= 3 * et, "group {g} replica {id} never campaigned");
            }
            if id == designated {
                assert_eq!(ticks, et, "group {g}: designated {id} campaigned late");
            } else {
                assert!(ticks >= 2 * et, "group {g}: {id} campaigned after {ticks}");
            }
        }
        let mut c = Cluster::new(&ids, &stagger);
        let mut ticks = 0;
        while c.leader().is_none() {
            c.tick_all(1);
            ticks += 1;
            assert!(ticks < 10 * et, "group {g}: no leader");
        }
        assert_eq!(c.leader(), Some(designated), "group {g}");
        *led.entry(c.leader().unwrap()).or_default() += 1;
    }
    assert_eq!(led.values().copied().collect::<Vec<_>>(), vec![10, 10, 10]);

    // The designated voter is down: another one is elected all the same.
    let g = 4u64; // designated: ids[1] = 2
    let stagger = move |c: &mut Config| {
        c.group = GroupId(g);
        c.stagger_first_election = true;
    };
    let mut c = Cluster::new(&ids, &stagger);
    c.isolate(2);
    let et = Config::new(NodeId(1), GroupId(g)).election_timeout_ticks;
    let mut ticks = 0;
    while c.leader().is_none_or(|l| l == 2) {
        c.tick_all(1);
        ticks += 1;
        assert!(ticks < 20 * et, "no leader without the designated voter");
    }
    assert!(ticks >= 2 * et, "elected after {ticks} ticks");
}

/// `lazy_commit_notify`: a write that commits costs two appends and two
/// acknowledgements, without the two commit-only appends (and their two
/// acknowledgements) that woke every replica once more; the followers learn the commit from the next
/// heartbeat (or append), and a follower's linearizable read still waits
/// for nothing more than its heartbeat round.
#[test]
fn lazy_commit_notify_leaves_the_commit_to_the_next_heartbeat() {
    // Messages for one committed write, and the followers' commit after it.
    let one_write = |lazy: bool| {
        let t = move |c: &mut Config| {
            c.lazy_commit_notify = lazy;
            c.lease_read = false;
        };
        let mut c = warm_cluster(&t);
        let sent = c.sent;
        let index = c.propose(1, "v").unwrap();
        c.stabilize();
        assert_eq!(c.node(1).commit(), index, "lazy={lazy}: the leader commits");
        let followers = [c.node(2).commit(), c.node(3).commit()];
        (c, sent, index, followers)
    };
    let (eager, before, index, followers) = one_write(false);
    assert_eq!(
        eager.sent - before,
        8,
        "eager: appends, acks, then commit appends and their acks"
    );
    assert_eq!(followers, [index, index]);

    let (mut lazy, before, index, followers) = one_write(true);
    assert_eq!(lazy.sent - before, 4, "lazy: appends and acks only");
    assert!(
        followers.iter().all(|&f| f < index),
        "followers learn the commit later, saw {followers:?}"
    );
    assert!(lazy.applied[&2].iter().all(|e| e.0 < index));
    // The next heartbeat carries it.
    lazy.tick_all(1);
    assert_eq!(
        [lazy.node(2).commit(), lazy.node(3).commit()],
        [index, index]
    );
    assert!(lazy.applied[&2].iter().any(|e| e.0 == index));

    // A follower read right after a write: its heartbeat round brings the
    // commit before the read index, so the read is answered at once.
    let index = lazy.propose(1, "w").unwrap();
    lazy.stabilize();
    assert!(lazy.node(3).commit() < index);
    lazy.node(3).read_index(9).unwrap();
    lazy.stabilize();
    let r = lazy.reads[&3]
        .last()
        .expect("the follower read is answered");
    assert_eq!((r.ctx, r.index), (9, index));
    assert_eq!(lazy.node(3).commit(), index);
}

/// `skip_busy_heartbeats`: while every follower accepts appends that carry
/// the commit index, the heartbeat timer sends nothing, and the append
/// answers keep the lease; once the group is idle, heartbeats resume; a
/// commit that no append carried still goes out with the next round.
#[test]
fn busy_followers_get_no_heartbeats_and_their_answers_keep_the_lease() {
    // One write per tick for 30 ticks (three election timeouts).
    let busy = |skip: bool, lazy: bool| {
        let t = move |c: &mut Config| {
            c.skip_busy_heartbeats = skip;
            c.lazy_commit_notify = lazy;
        };
        let mut c = warm_cluster(&t);
        c.tick_all(1);
        let before = c.heartbeats;
        for k in 0..30 {
            c.propose(1, &format!("w{k}")).unwrap();
            c.stabilize();
            c.tick_all(1);
        }
        let during = c.heartbeats - before;
        c.say(format!(
            "skip={skip} lazy={lazy}: {during} heartbeats in 30 busy ticks"
        ));
        (c, during)
    };
    let (_, without) = busy(false, false);
    assert_eq!(without, 60, "one round per tick to two followers");

    let (mut c, with) = busy(true, false);
    assert_eq!(with, 0, "the appends did the heartbeats' work");
    assert!(
        c.node(1).lease_valid(),
        "append answers renewed the lease for three election timeouts"
    );
    let sent = c.sent;
    c.node(1).read_index(1).unwrap();
    c.stabilize();
    assert_eq!(c.sent, sent, "a lease read needs no message");
    assert_eq!(c.reads[&1].len(), 1);
    // Idle (nothing appended since the last round): the timer heartbeats
    // again at once.
    let before = c.heartbeats;
    c.tick_all(3);
    assert_eq!(c.heartbeats - before, 6);
    assert!(c.node(1).lease_valid());

    // Lazy commit: the last write's commit went out in no append, so the
    // next round is not skipped and brings it to the followers.
    let (mut c, _) = busy(true, true);
    let index = c.propose(1, "last").unwrap();
    c.stabilize();
    assert!(c.node(2).commit() < index && c.node(3).commit() < index);
    let before = c.heartbeats;
    c.tick_all(1);
    assert_eq!(c.heartbeats - before, 2);
    assert_eq!([c.node(2).commit(), c.node(3).commit()], [index, index]);

    // A follower that stops answering gets heartbeats again.
    let (mut c, _) = busy(true, false);
    c.pause(3);
    let before = c.heartbeats;
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.tick_all(2);
    assert!(
        c.heartbeats - before >= 1,
        "the silent follower is sent a heartbeat"
    );
}
