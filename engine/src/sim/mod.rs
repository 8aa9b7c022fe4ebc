//! A seeded, deterministic cluster simulator for the Raft core.
//!
//! ```text
//!  seed ─> Rng ─> events: deliver | duplicate | tick | persist | crash | restart
//!                         | partition | heal | propose | read | conf change
//!                         | transfer | compact | fetch | foreign-group message
//!           ┌──────────┐   messages (drop, dup, reorder, delay, partitions)   ┌──────────┐
//!           │ replica  │ <──────────────────── Net ─────────────────────────> │ replica  │
//!           │ Raft+Disk│   disk keeps only what was persisted before a crash  │ Raft+Disk│
//!           └──────────┘                                                      └──────────┘
//!  after every event: election safety, log matching, leader completeness,
//!  state machine safety, committed entries never lost, linearizable reads,
//!  and each replica's own `check_invariants()`.
//!  then: liveness phase (heal, restart, no faults): a leader and a commit in bounded ticks.
//! ```
//! Everything is driven by one seed; the same seed gives the same trace hash.

use crate::raft::*;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The simulator's own RNG (splitmix64); nothing else is random.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`; `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Knobs of one simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Events in the faulty safety phase.
    pub safety_steps: u64,
    /// Ticks the liveness phase may take to elect a leader and commit.
    pub liveness_ticks_max: u64,
    pub planted_bug: Option<PlantedBug>,
    /// Keep this many events for the printed trace.
    pub trace_keep: usize,
    /// Force heavy leader churn with one entry per append on every seed
    /// (the fault mix that exposes Figure-8 style bugs fastest).
    pub leader_churn: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            safety_steps: 1500,
            liveness_ticks_max: 300,
            planted_bug: None,
            trace_keep: 200,
            leader_churn: false,
        }
    }
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub seed: u64,
    pub steps: u64,
    pub violation: Option<String>,
    /// Hash of every event, for reproducibility checks.
    pub trace_hash: u64,
    /// The last events, rendered.
    pub trace: Vec<String>,
    pub commits: u64,
    pub reads: u64,
}

#[derive(Default, Clone)]
struct Disk {
    hs: HardState,
    membership: Membership,
    snapshot: SnapshotMeta,
    entries: BTreeMap<Index, Entry>,
}

struct PendingWrite {
    number: ReadyNumber,
    hs: Option<HardState>,
    membership: Option<Membership>,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    messages: Vec<Message>,
}

struct Replica {
    raft: Option<Raft>,
    disk: Disk,
    pending: VecDeque<PendingWrite>,
    applied: Index,
    fetches: VecDeque<FetchRequest>,
    /// (ctx -> floor index) of outstanding reads.
    reads: BTreeMap<u64, Index>,
    witness: bool,
}

struct InFlight {
    msg: Message,
    ready_at: u64,
}

/// Everything observed globally, for the safety checks.
#[derive(Default)]
struct Oracle {
    leaders: BTreeMap<Term, NodeId>,
    leader_checked: BTreeSet<(Term, u64)>,
    /// Applied somewhere: index -> (term, kind, data).
    committed: BTreeMap<Index, (Term, EntryKind, Bytes)>,
    /// Per committed index, the highest term any replica had reached when
    /// it was first applied: at least the term in which it was committed.
    commit_term_max: BTreeMap<Index, Term>,
    /// The highest term any replica has reached.
    max_term: Term,
    /// Persisted somewhere: (index, term) -> (prev term, kind, data).
    logged: BTreeMap<(Index, Term), (Term, EntryKind, Bytes)>,
    max_applied: Index,
    commits: u64,
    reads: u64,
}

const GROUP: GroupId = GroupId(1);
const FOREIGN: GroupId = GroupId(2);

/// One simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    reps: Vec<Replica>,
    net: Vec<InFlight>,
    blocked: BTreeSet<(u64, u64)>,
    drop_pct: u64,
    dup_pct: u64,
    quiesce_ticks: u64,
    stagger: bool,
    /// `raft::Config::lazy_commit_notify` for every replica.
    lazy_commit: bool,
    /// `raft::Config::skip_busy_heartbeats` for every replica.
    skip_busy_heartbeats: bool,
    oracle: Oracle,
    trace: VecDeque<String>,
    trace_hash: u64,
    next_ctx: u64,
    next_payload: u64,
    steps: u64,
    /// Ids that were removed; never re-added.
    removed: BTreeSet<u64>,
    cache_bytes_max: usize,
    cache_replicated_bytes_max: usize,
    append_bytes_max: usize,
    inflight_bytes_max: u64,
    pre_vote: bool,
    crash_pct: u64,
    /// Heavy leader churn (isolations of the current leader).
    churn: bool,
    /// Leaders that have not committed anything in their term yet.
    fresh_leaders: BTreeSet<u64>,
    /// In the liveness phase: no more faults.
    healing: bool,
    /// Starts so far (each start gets a fresh RNG seed).
    boots: u64,
}

type Check = Result<(), String>;

fn data_eq(a_kind: EntryKind, a: &Bytes, b: &Bytes) -> bool {
    // A witness stores normal entries without payload.
    a == b || (a_kind == EntryKind::Normal && (a.is_empty() || b.is_empty()))
}

impl Sim {
    /// A cluster of 3–7 machines; 1, 3 or 5 initial voters, the rest spares.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let machines = if cfg.leader_churn {
            3
        } else {
            3 + rng.below(5) as usize
        };
        let voters = match machines {
            3 | 4 => 3,
            _ => {
                if rng.pct(50) {
                    5
                } else {
                    3
                }
            }
        };
        let initial = Membership::voters(&(1..=voters as u64).collect::<Vec<_>>());
        let quiesce_ticks = if rng.pct(30) { 15 } else { 0 };
        let cache_bytes_max = if rng.pct(50) { 300 } else { 1 << 20 };
        // From the seed, not the RNG, so earlier seeds replay unchanged.
        let cache_replicated_bytes_max = [0, 120, cache_bytes_max][(cfg.seed % 3) as usize];
        let append_bytes_max = [40, 200, 1000][rng.below(3) as usize];
        let inflight_bytes_max = [1 << 20, 100, 500][((cfg.seed / 3) % 3) as usize];
        let stagger = (cfg.seed / 9) % 2 == 1;
        let lazy_commit = (cfg.seed / 18) % 2 == 1;
        let skip_busy_heartbeats = (cfg.seed / 36) % 2 == 1;
        let pre_vote = rng.pct(70);
        let crash_pct = [30, 60, 100][rng.below(3) as usize];
        let churn = rng.pct(30);
        let (append_bytes_max, churn) = if cfg.leader_churn {
            (40, true)
        } else {
            (append_bytes_max, churn)
        };
        let drop_pct = if cfg.leader_churn { 20 } else { rng.below(10) };
        let mut sim = Sim {
            drop_pct,
            dup_pct: rng.below(5),
            rng,
            now: 0,
            reps: Vec::new(),
            net: Vec::new(),
            blocked: BTreeSet::new(),
            quiesce_ticks,
            stagger,
            lazy_commit,
            skip_busy_heartbeats,
            oracle: Oracle::default(),
            trace: VecDeque::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            next_ctx: 1,
            next_payload: 1,
            steps: 0,
            removed: BTreeSet::new(),
            cache_bytes_max,
            cache_replicated_bytes_max,
            append_bytes_max,
            inflight_bytes_max,
            pre_vote,
            crash_pct,
            churn,
            fresh_leaders: BTreeSet::new(),
            healing: false,
            boots: 0,
            cfg,
        };
        for i in 1..=machines as u64 {
            let m = if i as usize <= voters {
                initial.clone()
            } else {
                Membership::default()
            };
            let disk = Disk {
                membership: m.clone(),
                snapshot: SnapshotMeta {
                    index: 0,
                    term: 0,
                    membership: m.clone(),
                },
                ..Default::default()
            };
            let raft = Raft::new(sim.raft_config(i), m);
            sim.reps.push(Replica {
                raft: Some(raft),
                disk,
                pending: VecDeque::new(),
                applied: 0,
                fetches: VecDeque::new(),
                reads: BTreeMap::new(),
                witness: false,
            });
        }
        sim.event(format!(
            "start machines={machines} voters={voters} drop={}% dup={}% quiesce={} cache={}/{} append={} inflight_bytes={} prevote={} crash={} churn={} stagger={} lazy_commit={} skip_busy_heartbeats={}",
            sim.drop_pct, sim.dup_pct, sim.quiesce_ticks, sim.cache_bytes_max, sim.cache_replicated_bytes_max, sim.append_bytes_max, sim.inflight_bytes_max, sim.pre_vote, sim.crash_pct, sim.churn, sim.stagger, sim.lazy_commit, sim.skip_busy_heartbeats
        ));
        sim
    }

    fn raft_config(&mut self, id: u64) -> Config {
        self.boots += 1;
        let mut c = Config::new(NodeId(id), GROUP);
        c.election_timeout_ticks = 10;
        c.heartbeat_interval_ticks = 2;
        c.append_bytes_max = self.append_bytes_max;
        c.pre_vote = self.pre_vote;
        c.inflight_max = 4;
        c.inflight_bytes_max = self.inflight_bytes_max;
        c.cache_bytes_max = self.cache_bytes_max;
        c.cache_replicated_bytes_max = self.cache_replicated_bytes_max;
        c.apply_bytes_max = 400;
        c.quiesce_ticks = self.quiesce_ticks;
        c.stagger_first_election = self.stagger;
        c.lazy_commit_notify = self.lazy_commit;
        c.skip_busy_heartbeats = self.skip_busy_heartbeats;
        c.promote_lag_max = 5;
        c.uncommitted_entries_max = 200;
        c.seed =
            self.cfg.seed.wrapping_mul(31).wrapping_add(id) ^ self.boots.wrapping_mul(0x9e37_79b9);
        c.planted_bug = self.cfg.planted_bug;
        c
    }

    fn event(&mut self, s: String) {
        for b in s.as_bytes() {
            self.trace_hash ^= *b as u64;
            self.trace_hash = self.trace_hash.wrapping_mul(0x100_0000_01b3);
        }
        if self.trace.len() >= self.cfg.trace_keep {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} t{}] {}", self.steps, self.now, s));
    }

    fn idx(id: u64) -> usize {
        (id - 1) as usize
    }

    fn alive(&self) -> Vec<u64> {
        (1..=self.reps.len() as u64)
            .filter(|&i| self.reps[Self::idx(i)].raft.is_some())
            .collect()
    }

    fn leader(&self) -> Option<u64> {
        // The live leader with the highest term.
        self.alive()
            .into_iter()
            .filter(|&i| self.reps[Self::idx(i)].raft.as_ref().unwrap().is_leader())
            .max_by_key(|&i| self.reps[Self::idx(i)].raft.as_ref().unwrap().term())
    }

    /// Runs the safety phase then the liveness phase.
    pub fn run(mut self) -> SimOutcome {
        let res = self.run_inner();
        let violation = res.err().map(|v| {
            self.event(format!("VIOLATION: {v}"));
            v
        });
        SimOutcome {
            seed: self.cfg.seed,
            steps: self.steps,
            violation,
            trace_hash: self.trace_hash,
            trace: self.trace.iter().cloned().collect(),
            commits: self.oracle.commits,
            reads: self.oracle.reads,
        }
    }

    fn run_inner(&mut self) -> Check {
        for _ in 0..self.cfg.safety_steps {
            self.steps += 1;
            self.random_event()?;
            self.check_all()?;
        }
        self.liveness()
    }

    fn random_event(&mut self) -> Check {
        if self.churn && self.rng.pct(if self.cfg.leader_churn { 15 } else { 8 }) {
            // Leader churn: cut off whoever leads now, or heal.
            return match self.leader() {
                Some(l) if self.rng.pct(60) => {
                    self.isolate(l);
                    Ok(())
                }
                _ if self.rng.pct(50) => self.heal(),
                _ => {
                    // Reconnect one replica to every replica that is not isolated.
                    let n = self.reps.len() as u64;
                    let a = 1 + self.rng.below(n);
                    let isolated = |s: &BTreeSet<(u64, u64)>, x: u64| {
                        (1..=n).filter(|&y| y != x).all(|y| s.contains(&(x, y)))
                    };
                    let others: Vec<u64> = (1..=n)
                        .filter(|&b| b != a && !isolated(&self.blocked, b))
                        .collect();
                    for b in others {
                        self.blocked.remove(&(a, b));
                        self.blocked.remove(&(b, a));
                    }
                    self.event(format!("reconnect {a}"));
                    Ok(())
                }
            };
        }
        let r = self.rng.below(1000);
        match r {
            0..=339 => self.deliver_one(),
            340..=359 => self.duplicate_one(),
            360..=499 => self.tick_all(),
            500..=649 => self.persist_one(),
            650..=759 => self.propose(),
            760..=809 => self.read(),
            810..=829 => self.conf_change(),
            830..=839 => self.transfer(),
            840..=859 => self.compact(),
            860..=899 => self.answer_fetch(),
            900..=924 => self.crash(),
            925..=944 => self.restart(),
            945..=952 => self.partition(),
            953..=959 => self.reboot(),
            960..=984 => self.heal(),
            _ => self.foreign(),
        }
    }

    // ------------------------------------------------------------------ events

    fn send(&mut self, m: Message) {
        if self.rng.pct(self.drop_pct) {
            self.on_dropped(&m);
            return;
        }
        let delay = self.rng.below(3);
        self.net.push(InFlight {
            msg: m,
            ready_at: self.now + delay,
        });
    }

    fn on_dropped(&mut self, m: &Message) {
        if m.kind == MessageType::InstallSnapshot {
            if let Some(r) = self.reps[Self::idx(m.from.0)].raft.as_mut() {
                r.report_snapshot(m.to, false);
            }
        }
    }

    fn deliver_one(&mut self) -> Check {
        let ready: Vec<usize> = (0..self.net.len())
            .filter(|&i| self.net[i].ready_at <= self.now)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let k = ready[self.rng.below(ready.len() as u64) as usize];
        let f = self.net.swap_remove(k);
        self.deliver(f.msg)
    }

    fn deliver(&mut self, m: Message) -> Check {
        let (from, to) = (m.from.0, m.to.0);
        if self.blocked.contains(&(from, to)) || self.reps[Self::idx(to)].raft.is_none() {
            self.on_dropped(&m);
            return Ok(());
        }
        self.event(format!(
            "deliver {:?} {}->{} t{} i{} lt{} n{} c{} rej{} ctx{}",
            m.kind,
            from,
            to,
            m.term,
            m.index,
            m.log_term,
            m.entries.len(),
            m.commit,
            m.reject,
            m.context
        ));
        let snap = m.kind == MessageType::InstallSnapshot;
        let raft = self.reps[Self::idx(to)].raft.as_mut().unwrap();
        raft.step(m)
            .map_err(|e| format!("step error on own group: {e}"))?;
        if snap {
            if let Some(r) = self.reps[Self::idx(from)].raft.as_mut() {
                r.report_snapshot(NodeId(to), true);
            }
            self.drain(from)?;
        }
        self.drain(to)
    }

    fn duplicate_one(&mut self) -> Check {
        if self.net.is_empty() || !self.rng.pct(self.dup_pct * 20) {
            return Ok(());
        }
        let k = self.rng.below(self.net.len() as u64) as usize;
        let m = self.net[k].msg.clone();
        self.event(format!("duplicate {:?} {}->{}", m.kind, m.from.0, m.to.0));
        self.net.push(InFlight {
            msg: m,
            ready_at: self.now + 2,
        });
        Ok(())
    }

    fn tick_all(&mut self) -> Check {
        self.now += 1;
        self.event("tick".into());
        for id in self.alive() {
            self.reps[Self::idx(id)].raft.as_mut().unwrap().tick();
            self.drain(id)?;
        }
        Ok(())
    }

    fn persist_one(&mut self) -> Check {
        let cands: Vec<u64> = self
            .alive()
            .into_iter()
            .filter(|&i| !self.reps[Self::idx(i)].pending.is_empty())
            .collect();
        if cands.is_empty() {
            return Ok(());
        }
        let id = cands[self.rng.below(cands.len() as u64) as usize];
        self.persist(id)
    }

    fn persist(&mut self, id: u64) -> Check {
        let rep = &mut self.reps[Self::idx(id)];
        let Some(w) = rep.pending.pop_front() else {
            return Ok(());
        };
        if let Some(hs) = w.hs {
            rep.disk.hs = hs;
        }
        if let Some(m) = w.membership {
            rep.disk.membership = m;
        }
        if let Some(s) = w.snapshot {
            rep.disk.entries.clear();
            rep.disk.snapshot = s;
        }
        if let Some(first) = w.entries.first() {
            let _ = rep.disk.entries.split_off(&first.index);
            if first.index > rep.disk.snapshot.index + 1
                && !rep.disk.entries.contains_key(&(first.index - 1))
            {
                return Err(format!(
                    "replica {id}: WAL gap before entry {}",
                    first.index
                ));
            }
        }
        for e in w.entries {
            let prev_term = if e.index == rep.disk.snapshot.index + 1 {
                rep.disk.snapshot.term
            } else {
                rep.disk
                    .entries
                    .get(&(e.index - 1))
                    .map(|p| p.term)
                    .unwrap_or(0)
            };
            // Log Matching: one (index, term) has one content and one predecessor term.
            match self.oracle.logged.get(&(e.index, e.term)) {
                Some((pt, k, d)) => {
                    if *pt != prev_term || *k != e.kind || !data_eq(e.kind, d, &e.data) {
                        return Err(format!(
                            "log matching: replica {id} persisted entry {}@{} differing from an earlier copy",
                            e.index, e.term
                        ));
                    }
                }
                None => {
                    self.oracle
                        .logged
                        .insert((e.index, e.term), (prev_term, e.kind, e.data.clone()));
                }
            }
            rep.disk.entries.insert(e.index, e);
        }
        rep.raft.as_mut().unwrap().advance(w.number);
        self.event(format!("persist {id} ready {}", w.number));
        for m in w.messages {
            self.send(m);
        }
        self.drain(id)
    }

    fn propose(&mut self) -> Check {
        let id = match self.leader() {
            Some(l) if self.rng.pct(90) => l,
            _ => {
                let a = self.alive();
                if a.is_empty() {
                    return Ok(());
                }
                a[self.rng.below(a.len() as u64) as usize]
            }
        };
        let n = 1 + self.rng.below(4);
        let mut batch = Vec::new();
        for _ in 0..n {
            let p = self.next_payload;
            self.next_payload += 1;
            batch.push(Bytes::from(format!("p{}-{p}", self.cfg.seed).into_bytes()));
        }
        let r = self.reps[Self::idx(id)]
            .raft
            .as_mut()
            .unwrap()
            .propose_batch(batch);
        self.event(format!("propose {n} at {id}: {r:?}"));
        self.drain(id)
    }

    fn read(&mut self) -> Check {
        let a = self.alive();
        if a.is_empty() {
            return Ok(());
        }
        let id = match self.leader() {
            Some(l) if self.rng.pct(60) => l,
            _ => a[self.rng.below(a.len() as u64) as usize],
        };
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let floor = self.oracle.max_applied;
        let r = self.reps[Self::idx(id)]
            .raft
            .as_mut()
            .unwrap()
            .read_index(ctx);
        self.event(format!("read ctx{ctx} at {id} floor {floor}: {r:?}"));
        if r.is_ok() {
            self.reps[Self::idx(id)].reads.insert(ctx, floor);
        }
        self.drain(id)
    }

    fn conf_change(&mut self) -> Check {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let raft = self.reps[Self::idx(l)].raft.as_ref().unwrap();
        let m = raft.membership().clone();
        let voters: Vec<u64> = m
            .members
            .iter()
            .filter(|x| x.kind == MemberKind::Voter)
            .map(|x| x.id.0)
            .collect();
        let witnesses = m
            .members
            .iter()
            .filter(|x| x.kind == MemberKind::Witness)
            .count();
        let observers: Vec<u64> = m
            .members
            .iter()
            .filter(|x| x.kind == MemberKind::Observer)
            .map(|x| x.id.0)
            .collect();
        let spares: Vec<u64> = (1..=self.reps.len() as u64)
            .filter(|i| m.get(NodeId(*i)).is_none() && !self.removed.contains(i))
            .collect();
        let choice = self.rng.below(5);
        let cc = match choice {
            0 if !spares.is_empty() => Some(ConfChange {
                kind: ConfChangeKind::AddObserver,
                node: NodeId(spares[0]),
                address: Bytes::from(format!("127.0.0.1:{}", spares[0])),
            }),
            1 if !observers.is_empty() => Some(ConfChange {
                kind: ConfChangeKind::PromoteObserver,
                node: NodeId(observers[0]),
                address: Bytes::new(),
            }),
            2 if !spares.is_empty()
                && voters.len() >= 2
                && witnesses == 0
                && !self.any_witness_ever() =>
            {
                Some(ConfChange {
                    kind: ConfChangeKind::AddWitness,
                    node: NodeId(spares[0]),
                    address: Bytes::new(),
                })
            }
            3 if voters.len() >= 3 => {
                let v = voters[self.rng.below(voters.len() as u64) as usize];
                Some(ConfChange {
                    kind: ConfChangeKind::RemoveNode,
                    node: NodeId(v),
                    address: Bytes::new(),
                })
            }
            4 if !spares.is_empty() => Some(ConfChange {
                kind: ConfChangeKind::AddVoter,
                node: NodeId(spares[0]),
                address: Bytes::new(),
            }),
            _ => None,
        };
        let Some(cc) = cc else { return Ok(()) };
        let r = self.reps[Self::idx(l)]
            .raft
            .as_mut()
            .unwrap()
            .propose_conf_change(cc.clone());
        self.event(format!(
            "conf change {:?} {} at {l}: {r:?}",
            cc.kind, cc.node.0
        ));
        if r.is_ok() {
            match cc.kind {
                ConfChangeKind::RemoveNode => {
                    self.removed.insert(cc.node.0);
                }
                ConfChangeKind::AddWitness => self.reps[Self::idx(cc.node.0)].witness = true,
                _ => {}
            }
        }
        self.drain(l)
    }

    fn any_witness_ever(&self) -> bool {
        self.reps.iter().any(|r| r.witness)
    }

    fn transfer(&mut self) -> Check {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let m = self.reps[Self::idx(l)]
            .raft
            .as_ref()
            .unwrap()
            .membership()
            .clone();
        let voters: Vec<u64> = m
            .members
            .iter()
            .filter(|x| x.kind == MemberKind::Voter && x.id.0 != l)
            .map(|x| x.id.0)
            .collect();
        if voters.is_empty() {
            return Ok(());
        }
        let to = voters[self.rng.below(voters.len() as u64) as usize];
        let r = self.reps[Self::idx(l)]
            .raft
            .as_mut()
            .unwrap()
            .transfer_leader(NodeId(to));
        self.event(format!("transfer {l}->{to}: {r:?}"));
        self.drain(l)
    }

    fn compact(&mut self) -> Check {
        let a = self.alive();
        if a.is_empty() {
            return Ok(());
        }
        let id = a[self.rng.below(a.len() as u64) as usize];
        let rep = &mut self.reps[Self::idx(id)];
        let raft = rep.raft.as_mut().unwrap();
        let index = rep.applied.min(raft.persisted_index());
        if index <= raft.snapshot_index() {
            return Ok(());
        }
        let meta = raft
            .compact(index)
            .map_err(|e| format!("compact at {id}: {e}"))?;
        // The engine writes the snapshot, then drops WAL entries up to it.
        rep.disk.snapshot = meta;
        rep.disk.entries = rep.disk.entries.split_off(&(index + 1));
        self.event(format!("compact {id} to {index}"));
        Ok(())
    }

    fn answer_fetch(&mut self) -> Check {
        let cands: Vec<u64> = self
            .alive()
            .into_iter()
            .filter(|&i| !self.reps[Self::idx(i)].fetches.is_empty())
            .collect();
        if cands.is_empty() {
            return Ok(());
        }
        let id = cands[self.rng.below(cands.len() as u64) as usize];
        self.fetch(id)
    }

    fn fetch(&mut self, id: u64) -> Check {
        let rep = &mut self.reps[Self::idx(id)];
        let Some(req) = rep.fetches.pop_front() else {
            return Ok(());
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for i in req.lo..=req.hi {
            match rep.disk.entries.get(&i) {
                Some(e) if bytes <= req.bytes_max => {
                    bytes += e.size_bytes();
                    out.push(e.clone());
                }
                _ => break,
            }
        }
        let n = out.len();
        rep.raft.as_mut().unwrap().entries_loaded(req, out);
        self.event(format!("fetch {id} [{}, {}] -> {n}", req.lo, req.hi));
        self.drain(id)
    }

    fn crash(&mut self) -> Check {
        let a = self.alive();
        // Keep a majority of machines up most of the time.
        if a.len() * 2 <= self.reps.len() + 1 || !self.rng.pct(self.crash_pct) {
            return Ok(());
        }
        let id = match self.leader() {
            Some(l) if self.rng.pct(40) => l,
            _ => a[self.rng.below(a.len() as u64) as usize],
        };
        self.crash_node(id);
        Ok(())
    }

    /// Crash and restart at once, preferring a leader or candidate.
    fn reboot(&mut self) -> Check {
        if !self.rng.pct(self.crash_pct) {
            return Ok(());
        }
        let a = self.alive();
        let busy: Vec<u64> = a
            .iter()
            .copied()
            .filter(|&i| self.reps[Self::idx(i)].raft.as_ref().unwrap().role() != Role::Follower)
            .collect();
        let pool = if !busy.is_empty() && self.rng.pct(70) {
            busy
        } else {
            a
        };
        if pool.is_empty() {
            return Ok(());
        }
        let id = pool[self.rng.below(pool.len() as u64) as usize];
        self.crash_node(id);
        self.restart_node(id)
    }

    fn crash_node(&mut self, id: u64) {
        let rep = &mut self.reps[Self::idx(id)];
        rep.raft = None;
        rep.pending.clear();
        rep.fetches.clear();
        rep.reads.clear();
        self.event(format!("crash {id}"));
        for other in self.alive() {
            self.reps[Self::idx(other)]
                .raft
                .as_mut()
                .unwrap()
                .report_unreachable(NodeId(id));
        }
    }

    fn restart(&mut self) -> Check {
        let dead: Vec<u64> = (1..=self.reps.len() as u64)
            .filter(|&i| self.reps[Self::idx(i)].raft.is_none())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let id = dead[self.rng.below(dead.len() as u64) as usize];
        self.restart_node(id)
    }

    fn restart_node(&mut self, id: u64) -> Check {
        let cfg = self.raft_config(id);
        let rep = &mut self.reps[Self::idx(id)];
        let d = &rep.disk;
        let last_index = d
            .entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(d.snapshot.index);
        let mut runs: Vec<(Index, Term)> = Vec::new();
        for e in d.entries.values() {
            if runs.last().map(|r| r.1) != Some(e.term) {
                runs.push((e.index, e.term));
            }
        }
        let tail_from = d.hs.commit.max(d.snapshot.index) + 1;
        let tail: Vec<Entry> = d
            .entries
            .range(tail_from..)
            .map(|(_, e)| e.clone())
            .collect();
        let st = PersistedState {
            hard_state: d.hs,
            membership: d.membership.clone(),
            snapshot: d.snapshot.clone(),
            last_index,
            term_runs: runs,
            tail,
            applied: d.snapshot.index,
        };
        let raft = Raft::restart(cfg, st).map_err(|e| format!("restart {id}: {e}"))?;
        rep.applied = d.snapshot.index;
        rep.raft = Some(raft);
        self.event(format!("restart {id} last {last_index}"));
        self.drain(id)
    }

    fn partition(&mut self) -> Check {
        let n = self.reps.len() as u64;
        let a = match self.leader() {
            Some(l) if self.rng.pct(50) => l,
            _ => 1 + self.rng.below(n),
        };
        if self.rng.pct(50) {
            self.isolate(a);
        } else {
            let b = 1 + self.rng.below(n);
            if a != b {
                self.blocked.insert((a, b));
                self.event(format!("block {a}->{b}"));
            }
        }
        Ok(())
    }

    fn isolate(&mut self, a: u64) {
        for b in 1..=self.reps.len() as u64 {
            if b != a {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
        self.event(format!("isolate {a}"));
    }

    fn heal(&mut self) -> Check {
        if !self.blocked.is_empty() {
            self.blocked.clear();
            self.event("heal".into());
        }
        Ok(())
    }

    /// A message of another group arrives; the core must refuse it.
    fn foreign(&mut self) -> Check {
        let a = self.alive();
        if a.is_empty() {
            return Ok(());
        }
        let id = a[self.rng.below(a.len() as u64) as usize];
        let raft = self.reps[Self::idx(id)].raft.as_mut().unwrap();
        let from = NodeId(if id == 1 { 2 } else { 1 });
        let mut m = Message::new(
            FOREIGN,
            MessageType::Append,
            from,
            NodeId(id),
            raft.term().max(1),
        );
        m.index = raft.last_index();
        m.log_term = raft.last_term();
        m.commit = raft.last_index() + 2;
        for k in 1..=2 {
            m.entries.push(Entry {
                index: raft.last_index() + k,
                term: raft.term().max(1),
                kind: EntryKind::Normal,
                data: Bytes::from_static(b"foreign-group-data"),
            });
        }
        let res = raft.step(m);
        self.event(format!("foreign append to {id}"));
        match res {
            Err(StepError::WrongGroup { .. }) => Ok(()),
            other => {
                if self.cfg.planted_bug != Some(PlantedBug::AcceptOtherGroup) {
                    return Err(format!(
                        "replica {id} accepted a message of another group: {other:?}"
                    ));
                }
                self.drain(id)
            }
        }
    }

    // ------------------------------------------------------------------ ready

    fn drain(&mut self, id: u64) -> Check {
        loop {
            let rep = &mut self.reps[Self::idx(id)];
            let Some(raft) = rep.raft.as_mut() else {
                return Ok(());
            };
            let Some(rd) = raft.ready() else { break };
            let snap = rd.snapshot.clone();
            if let Some(s) = &snap {
                // The snapshot data is local: install it in the state machine.
                rep.applied = s.index;
            }
            for e in &rd.committed_entries {
                if e.index != rep.applied + 1 {
                    return Err(format!(
                        "replica {id} applies {} after {}",
                        e.index, rep.applied
                    ));
                }
                rep.applied = e.index;
                match self.oracle.committed.get(&e.index) {
                    Some((t, k, d)) => {
                        if *t != e.term || *k != e.kind || !data_eq(e.kind, d, &e.data) {
                            return Err(format!(
                                "state machine safety: replica {id} applied {}@{} but {}@{t} was applied elsewhere",
                                e.index, e.term, e.index
                            ));
                        }
                    }
                    None => {
                        self.oracle
                            .committed
                            .insert(e.index, (e.term, e.kind, e.data.clone()));
                        self.oracle
                            .commit_term_max
                            .insert(e.index, self.oracle.max_term.max(raft.term()));
                        self.oracle.commits += 1;
                    }
                }
                self.oracle.max_applied = self.oracle.max_applied.max(e.index);
            }
            if !rd.committed_entries.is_empty() {
                raft.applied_to(rep.applied);
            }
            for rs in &rd.read_states {
                let Some(floor) = rep.reads.remove(&rs.ctx) else {
                    return Err(format!(
                        "replica {id}: read state for unknown ctx {}",
                        rs.ctx
                    ));
                };
                self.oracle.reads += 1;
                if rs.index < floor {
                    return Err(format!(
                        "stale read: replica {id} ctx {} index {} but {floor} was applied before the read began",
                        rs.ctx, rs.index
                    ));
                }
            }
            for ctx in &rd.dropped_reads {
                rep.reads.remove(ctx);
            }
            rep.fetches.extend(rd.fetches.iter().copied());
            rep.pending.push_back(PendingWrite {
                number: rd.number,
                hs: rd.hard_state,
                membership: rd.membership,
                snapshot: snap,
                entries: rd.entries,
                messages: rd.persisted_messages,
            });
            let mut cut_off = false;
            let had_commits = !rd.committed_entries.is_empty();
            if let Some(ss) = rd.soft_state {
                self.event(format!(
                    "replica {id} {:?} term {} leader {:?}",
                    ss.role,
                    ss.term,
                    ss.leader.map(|l| l.0)
                ));
                // Leader churn: a fresh leader is sometimes cut off at once,
                // before its no-op reaches anyone.
                cut_off = ss.role == Role::Leader
                    && self.cfg.leader_churn
                    && !self.healing
                    && self.rng.pct(30);
                if ss.role == Role::Leader {
                    self.fresh_leaders.insert(id);
                }
            }
            // ... or right after its first commit, before it tells anyone.
            if had_commits && self.fresh_leaders.remove(&id) {
                cut_off |= self.cfg.leader_churn && !self.healing && self.rng.pct(50);
            }
            for m in rd.messages {
                self.send(m);
            }
            if cut_off {
                self.isolate(id);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ checks

    fn check_all(&mut self) -> Check {
        for id in self.alive() {
            let raft = self.reps[Self::idx(id)].raft.as_ref().unwrap();
            self.oracle.max_term = self.oracle.max_term.max(raft.term());
            raft.check_invariants()
                .map_err(|e| format!("replica {id}: {e}"))?;
            // Election Safety.
            if raft.is_leader() {
                let t = raft.term();
                match self.oracle.leaders.get(&t) {
                    Some(&l) if l != NodeId(id) => {
                        return Err(format!(
                            "election safety: {} and {id} both lead term {t}",
                            l.0
                        ));
                    }
                    _ => {
                        self.oracle.leaders.insert(t, NodeId(id));
                    }
                }
                // Leader Completeness, once per (term, leader): every entry
                // committed in a term below `t` is in its log. An entry is
                // checked only if every replica was below `t` when it was
                // first applied (so it was committed below `t`): a leader
                // of an old term may still win its election (a late vote)
                // after a newer term committed entries it never saw.
                if self.oracle.leader_checked.insert((t, id)) {
                    for (&i, (ct, _, _)) in self.oracle.committed.range(raft.snapshot_index() + 1..)
                    {
                        let committed_below_t =
                            self.oracle.commit_term_max.get(&i).is_some_and(|&m| m < t);
                        if committed_below_t && raft.term_at(i) != Some(*ct) {
                            return Err(format!(
                                "leader completeness: leader {id} of term {t} lacks committed entry {i}@{ct} (has {:?})",
                                raft.term_at(i)
                            ));
                        }
                    }
                }
            }
            // Committed entries are never lost: the replica's log holds what it calls committed.
            let c = raft.commit();
            if c > raft.snapshot_index() {
                if let Some((ct, _, _)) = self.oracle.committed.get(&c) {
                    if raft.term_at(c) != Some(*ct) {
                        return Err(format!(
                            "replica {id}: committed entry {c}@{ct} lost (has {:?})",
                            raft.term_at(c)
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ liveness

    fn liveness(&mut self) -> Check {
        self.event("liveness phase: heal, restart all, no faults".into());
        self.blocked.clear();
        self.drop_pct = 0;
        self.healing = true;
        for id in 1..=self.reps.len() as u64 {
            if self.reps[Self::idx(id)].raft.is_none() {
                self.restart_node(id)?;
            }
        }
        let start = self.now;
        let mut marker: Option<(u64, Index, Term)> = None;
        while self.now - start < self.cfg.liveness_ticks_max {
            self.steps += 1;
            self.tick_all()?;
            self.settle()?;
            self.check_all()?;
            if let Some((l, i, t)) = marker {
                let r = self.reps[Self::idx(l)].raft.as_ref().unwrap();
                if r.commit() >= i && r.term_at(i) == Some(t) {
                    self.event(format!("liveness: {i}@{t} committed"));
                    return Ok(());
                }
                if !r.is_leader() || r.term() != t {
                    marker = None;
                }
            } else if let Some(l) = self.leader() {
                let r = self.reps[Self::idx(l)].raft.as_mut().unwrap();
                let t = r.term();
                if let Ok(i) = r.propose(Bytes::from_static(b"liveness")) {
                    marker = Some((l, i, t));
                }
                self.drain(l)?;
            }
        }
        let mut state = String::new();
        for id in self.alive() {
            let r = self.reps[Self::idx(id)].raft.as_ref().unwrap();
            state += &format!(
                "\n  {id}: {:?} term {} commit {} last {} persisted {} snap {} members {:?} progress {:?}",
                r.role(),
                r.term(),
                r.commit(),
                r.last_index(),
                r.persisted_index(),
                r.snapshot_index(),
                r.membership().members.iter().map(|m| (m.id.0, m.kind)).collect::<Vec<_>>(),
                r.progress()
            );
        }
        Err(format!(
            "liveness: no leader committed a new proposal within {} ticks after healing{state}",
            self.cfg.liveness_ticks_max
        ))
    }

    /// Delivers, persists and fetches until quiet (bounded).
    fn settle(&mut self) -> Check {
        for _ in 0..50 {
            let mut progress = false;
            while !self.net.is_empty() {
                progress = true;
                let f = self.net.remove(0);
                self.deliver(f.msg)?;
            }
            for id in self.alive() {
                while !self.reps[Self::idx(id)].pending.is_empty() {
                    progress = true;
                    self.persist(id)?;
                }
                while !self.reps[Self::idx(id)].fetches.is_empty() {
                    progress = true;
                    self.fetch(id)?;
                }
            }
            if !progress {
                break;
            }
        }
        Ok(())
    }
}

/// Runs one seed with default knobs.
pub fn run_seed(seed: u64, bug: Option<PlantedBug>) -> SimOutcome {
    let mut cfg = SimConfig::new(seed);
    cfg.planted_bug = bug;
    run_config(cfg)
}

/// Runs one seed; an assertion failing inside the core counts as a violation.
pub fn run_config(cfg: SimConfig) -> SimOutcome {
    let seed = cfg.seed;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg).run())) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            SimOutcome {
                seed,
                steps: 0,
                violation: Some(format!("assertion failed in the core: {msg}")),
                trace_hash: 0,
                trace: vec!["(trace lost in panic; rerun the seed)".into()],
                commits: 0,
                reads: 0,
            }
        }
    }
}
