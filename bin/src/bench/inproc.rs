//! The in-process cluster: N `NodeHost`s on loopback, G groups on every
//! node, and load generators on their own glommio executors that send each
//! request to the group's current leader (cached; refreshed on
//! `NotLeader`), as dragonboat's benchmark does.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flotilla::{
    GroupId, HostError, NodeHost, NodeHostConfig, NodeId, Placement, ReadConsistency, RequestError,
    Role,
};
use flotilla_rsm::{encode_noop, Envelope, KvCommand, KvQuery, KvResult};
use futures_lite::future::block_on;
use glommio::{LocalExecutorBuilder, Task};

use super::stats::{EngineCounters, OpKind, Recorder, Report, Summary};
use super::{BenchOptions, Consistency, Outcome, PlacementArg, Rng, Timeline};

/// Deadline of control calls (start_group, group_status, stats).
const CONTROL_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for the leaders to spread over the nodes before the load.
const BALANCE_WAIT: Duration = Duration::from_secs(20);

/// How long the cluster may take to elect a leader for every group.
const ELECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Period of a load generator's reserve of armed timers (GLOMMIO.md bug 2).
const CLIENT_TIMER_PERIOD: Duration = Duration::from_millis(1);
/// Timers in that reserve.
const CLIENT_TIMER_RESERVE: usize = 8;
/// Back-off after a failed attempt before retrying.
const RETRY_BACKOFF: Duration = Duration::from_millis(1);

/// How long the cluster may take to elect a leader for every one of
/// `groups` groups (elections of thousands of groups at once take longer).
pub(super) fn election_deadline(groups: usize) -> Duration {
    ELECTION_DEADLINE.max(Duration::from_millis(10) * groups as u32)
}

/// The nodes of the in-process cluster and where their data lives.
pub(super) struct Cluster {
    pub(super) hosts: Vec<Arc<NodeHost>>,
    data_dir: PathBuf,
    remove_data: bool,
}

impl Cluster {
    fn start(args: &BenchOptions, out: &mut dyn Write) -> Result<Cluster, String> {
        let shards = args.shards_per_node();
        let (data_dir, remove_data) = match &args.data_dir {
            Some(d) => (d.clone(), false),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                (
                    std::env::temp_dir()
                        .join(format!("flotilla-bench-{}-{nanos}", std::process::id())),
                    true,
                )
            }
        };
        let mut cluster = Cluster {
            hosts: Vec::with_capacity(args.nodes),
            data_dir,
            remove_data,
        };
        let _ = writeln!(
            out,
            "starting {} nodes x {} shards ({:?}) in {}",
            args.nodes,
            shards,
            args.placement,
            cluster.data_dir.display()
        );
        for i in 0..args.nodes {
            let node_id = i as u64 + 1;
            let mut cfg =
                NodeHostConfig::new(node_id, cluster.data_dir.join(format!("node-{node_id}")));
            cfg.raft_addr = flotilla::test_util::free_port_block(shards);
            cfg.shard_count = shards;
            cfg.placement = match args.placement {
                PlacementArg::Pinned => Placement::Pinned {
                    first_cpu: i * shards,
                },
                PlacementArg::Unbound => Placement::Unbound,
            };
            cfg.io_memory_bytes = args.io_memory;
            cfg.preempt_timer = args.preempt_timer;
            // Settle the leaders quickly before the load (see
            // `wait_balanced`).
            cfg.leader_balance_interval = Duration::from_millis(500);
            match NodeHost::start(cfg) {
                Ok(h) => cluster.hosts.push(Arc::new(h)),
                Err(e) => {
                    cluster.shutdown();
                    return Err(format!("node {node_id} did not start: {e}"));
                }
            }
        }
        Ok(cluster)
    }

    pub(super) fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        self.hosts
            .iter()
            .map(|h| (NodeId(h.config().node_id), h.config().raft_addr))
            .collect()
    }

    /// Starts every group on every node (`--start-concurrency` calls in
    /// flight) and waits until each has a leader; returns the leader's node
    /// index per group.
    fn start_groups(
        &self,
        groups: &[GroupId],
        args: &BenchOptions,
        out: &mut dyn Write,
    ) -> Result<Vec<usize>, String> {
        super::idle::start_groups(self, groups, args.start_concurrency, out)?;
        let leaders =
            super::idle::wait_for_leaders(self, groups, election_deadline(groups.len()), out)?;
        Ok(self.wait_balanced(groups, leaders, args.shards_per_node()))
    }

    /// Lets the nodes' leader balancing spread the leaders (elections place
    /// them at random) before the load starts, so that the run measures a
    /// balanced cluster and the clients' leader caches are right; gives up
    /// after [`BALANCE_WAIT`]. Each shard balances its own groups, so node
    /// totals may differ by up to the shard count.
    fn wait_balanced(
        &self,
        groups: &[GroupId],
        mut leaders: Vec<usize>,
        shards: usize,
    ) -> Vec<usize> {
        let interval = self
            .hosts
            .first()
            .map_or(Duration::ZERO, |h| h.config().leader_balance_interval);
        if interval.is_zero() || self.hosts.len() < 2 {
            return leaders;
        }
        let started = Instant::now();
        loop {
            let mut per_node = vec![0usize; self.hosts.len()];
            for l in &leaders {
                per_node[*l] += 1;
            }
            let spread = per_node.iter().max().unwrap_or(&0) - per_node.iter().min().unwrap_or(&0);
            if spread <= shards || started.elapsed() >= BALANCE_WAIT {
                return leaders;
            }
            // Not an executor: the main thread may wait.
            std::thread::park_timeout(Duration::from_millis(100));
            match super::idle::leaders_of(&self.hosts, groups) {
                Ok(now) if now.iter().all(Option::is_some) => {
                    leaders = now.into_iter().map(|l| l.unwrap_or(0)).collect();
                }
                _ => {}
            }
        }
    }

    pub(super) fn engine_counters(&self) -> Option<EngineCounters> {
        let mut total = EngineCounters::default();
        for h in &self.hosts {
            let shards = block_on(h.stats(CONTROL_DEADLINE)).ok()?;
            for s in &shards {
                total.add_shard(s);
            }
        }
        Some(total)
    }

    fn shutdown(self) {
        for h in self.hosts {
            match Arc::try_unwrap(h) {
                Ok(h) => block_on(h.shutdown()),
                Err(h) => tracing::warn!(
                    node = h.config().node_id,
                    "node still referenced at shutdown; leaving it running"
                ),
            }
        }
        if self.remove_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// The node index of `group`'s leader as its replicas report it.
async fn find_leader(hosts: &[Arc<NodeHost>], group: GroupId) -> Option<usize> {
    let mut reported = None;
    for (i, h) in hosts.iter().enumerate() {
        if let Ok(Some(status)) = h.group_status(group, CONTROL_DEADLINE).await {
            if status.role == Role::Leader {
                return Some(i);
            }
            if let Some(l) = status.leader {
                reported = node_index(hosts, l);
            }
        }
    }
    reported
}

fn node_index(hosts: &[Arc<NodeHost>], node: NodeId) -> Option<usize> {
    hosts.iter().position(|h| h.config().node_id == node.0)
}

/// Runs the in-process benchmark (load, or `--idle`).
pub(super) fn run(args: &BenchOptions, out: &mut dyn Write) -> Result<Outcome, String> {
    let cluster = Cluster::start(args, out)?;
    let outcome = if args.idle {
        super::idle::run(args, &cluster, out).map(|s| Outcome::Idle(Box::new(s)))
    } else {
        drive(args, &cluster, out).map(|s| Outcome::Load(Box::new(s)))
    };
    cluster.shutdown();
    outcome
}

fn drive(args: &BenchOptions, cluster: &Cluster, out: &mut dyn Write) -> Result<Summary, String> {
    let groups: Vec<GroupId> = (1..=args.groups as u64).map(GroupId).collect();
    let started = Instant::now();
    let leaders = cluster.start_groups(&groups, args, out)?;
    let mut leaders_per_node = vec![0usize; cluster.hosts.len()];
    for l in &leaders {
        leaders_per_node[*l] += 1;
    }
    let _ = writeln!(
        out,
        "{} groups started; every group has a leader after {:.0} ms (leaders per node {:?})",
        groups.len(),
        started.elapsed().as_secs_f64() * 1e3,
        leaders_per_node
    );
    let value = Bytes::from(
        (0..args.payload)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    // Start a little in the future so every generator begins together.
    let timeline = Timeline::new(args, Instant::now() + Duration::from_millis(50));
    let (report_tx, report_rx) = flume::bounded(4096);
    // Each generator's groups (with their leaders) and the (node, shard)
    // it runs on (`None` with `--clients`: an executor of its own).
    let shards = args.shards_per_node();
    let plan: Vec<Generator> = if let Some(clients) = args.clients {
        let clients = clients.min(groups.len());
        (0..clients)
            .map(|k| {
                let mine = groups
                    .iter()
                    .zip(&leaders)
                    .enumerate()
                    .filter(|(i, _)| i % clients == k)
                    .map(|(_, (g, l))| (*g, *l))
                    .collect();
                Generator {
                    at: None,
                    groups: mine,
                }
            })
            .collect()
    } else {
        let mut by_shard: std::collections::BTreeMap<ShardAt, Vec<_>> = Default::default();
        for (g, l) in groups.iter().zip(&leaders) {
            by_shard
                .entry((*l, flotilla::shard_of(g.0, shards)))
                .or_default()
                .push((*g, *l));
        }
        by_shard
            .into_iter()
            .map(|(at, groups)| Generator {
                at: Some(at),
                groups,
            })
            .collect()
    };
    let generators = plan.len();
    let mut handles = Vec::with_capacity(generators);
    for (k, Generator { at, groups: mine }) in plan.into_iter().enumerate() {
        let setup = ClientSetup {
            index: k,
            hosts: cluster.hosts.clone(),
            rate_share: args
                .rate
                .map(|r| r as f64 * mine.len() as f64 / groups.len() as f64),
            phase: k as f64 / generators as f64,
            groups: mine,
            value: value.clone(),
            concurrency: args.concurrency,
            reads: args.reads,
            consistency: match args.read_consistency {
                Consistency::Linearizable => ReadConsistency::Linearizable,
                Consistency::Lease => ReadConsistency::Lease,
                Consistency::Stale => ReadConsistency::Stale,
            },
            keys_per_group: (args.keys / args.groups as u64).max(1),
            timeout: args.timeout,
            timeline,
            reports: report_tx.clone(),
            on_shard: at.is_some(),
        };
        if let Some((node, shard)) = at {
            let spawned = block_on(
                cluster.hosts[node]
                    .spawn_on_shard(shard, Box::new(move || Box::pin(client_main(setup)))),
            );
            if let Err(e) = spawned {
                return Err(format!(
                    "cannot start load generator {k} on node {} shard {shard}: {e}",
                    node + 1
                ));
            }
            continue;
        }
        let builder = LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 << 10)
            .preempt_timer(Duration::from_millis(5));
        let spawned = flotilla::exec::spawn(builder, format!("bench-client-{k}"), move || {
            client_main(setup)
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => return Err(format!("cannot start load generator {k}: {e}")),
        }
    }
    drop(report_tx);
    let mut sample = || cluster.engine_counters();
    let collected = super::collect(
        timeline,
        generators,
        &report_rx,
        out,
        &mut sample,
        args.timeout + Duration::from_secs(10),
    );
    for h in handles {
        if h.join().is_err() {
            return Err("a load generator panicked".into());
        }
    }
    super::finish(
        args,
        "in-process",
        timeline,
        collected?,
        leaders_per_node,
        out,
    )
}

/// A shard a generator runs on: (node index, shard).
type ShardAt = (usize, flotilla::ShardId);

/// One load generator: where it runs (`None`: an executor of its own) and
/// its groups with their leaders' node indexes.
struct Generator {
    at: Option<ShardAt>,
    groups: Vec<(GroupId, usize)>,
}

/// What a load generator executor gets.
struct ClientSetup {
    index: usize,
    hosts: Vec<Arc<NodeHost>>,
    /// (group, node index of its leader).
    groups: Vec<(GroupId, usize)>,
    value: Bytes,
    concurrency: usize,
    rate_share: Option<f64>,
    /// Where in its period this generator's open-loop schedule starts
    /// (0..1): generators take turns instead of issuing at the same
    /// instants.
    phase: f64,
    reads: f64,
    consistency: ReadConsistency,
    keys_per_group: u64,
    timeout: Duration,
    timeline: Timeline,
    reports: flume::Sender<Report>,
    /// Runs on a shard executor (which keeps its own timers armed).
    on_shard: bool,
}

/// A load generator's state, shared by its tasks (one executor: `Rc`).
struct Client {
    setup: ClientSetup,
    /// Leader node index per group (by position in `setup.groups`).
    leaders: Vec<Cell<usize>>,
    recorder: RefCell<Recorder>,
    in_flight: Cell<u64>,
    finished: Cell<bool>,
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InFlight<'a>(&'a Cell<u64>, u64);

impl<'a> InFlight<'a> {
    fn enter(c: &'a Cell<u64>) -> Self {
        Self::enter_n(c, 1)
    }

    /// `n` requests at once (a batch).
    fn enter_n(c: &'a Cell<u64>, n: u64) -> Self {
        c.set(c.get() + n);
        InFlight(c, n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - self.1);
    }
}

async fn client_main(setup: ClientSetup) {
    let timeline = setup.timeline;
    let client = Rc::new(Client {
        leaders: setup.groups.iter().map(|(_, l)| Cell::new(*l)).collect(),
        recorder: RefCell::new(Recorder::new(timeline.measure_start, timeline.measure_end)),
        in_flight: Cell::new(0),
        finished: Cell::new(false),
        setup,
    });
    // GLOMMIO.md bug 2: the engine's reserve of armed timers, 1 ms apart,
    // so a missed wake-up costs at most a millisecond. While it runs, the
    // engine also treats this executor as one of its own: `NodeHost`
    // deadlines become glommio timers instead of async-io ones (each of
    // which is a round trip through async-io's reactor thread).
    let keepalive_stop = Rc::new(Cell::new(false));
    let keepalive = (!client.setup.on_shard).then(|| {
        glommio::spawn_local(flotilla::shard::keep_timers_armed(
            CLIENT_TIMER_PERIOD,
            CLIENT_TIMER_RESERVE,
            keepalive_stop.clone(),
        ))
    });
    let reporter = glommio::spawn_local(report_every_second(client.clone()));
    sleep_until(timeline.start).await;
    match client.setup.rate_share {
        // Writes only: each group's requests travel as batches (one
        // mailbox message, one channel, one deadline timer per batch),
        // each still answered, timed and retried on its own.
        None if client.setup.reads <= 0.0 => closed_loop_batched(&client).await,
        None => closed_loop(&client).await,
        Some(rate) => open_loop(&client, rate).await,
    }
    client.finished.set(true);
    reporter.await;
    keepalive_stop.set(true);
    if let Some(k) = keepalive {
        k.await;
    }
    let measured = Box::new(client.recorder.borrow().measured.clone());
    let _ = client
        .setup
        .reports
        .send_async(Report::Done { measured })
        .await;
}

async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        glommio::timer::sleep(t - now).await;
    }
}

async fn report_every_second(client: Rc<Client>) {
    let start = client.setup.timeline.start;
    let mut second = 1u64;
    while !client.finished.get() {
        sleep_until(start + Duration::from_secs(second)).await;
        let tally = Box::new(client.recorder.borrow_mut().take_interval());
        // Progress is best effort: a full channel drops a line.
        let _ = client.setup.reports.try_send(Report::Interval {
            second,
            tally,
            in_flight: client.in_flight.get(),
        });
        second += 1;
    }
}

/// `concurrency` tasks per group, each issuing its next request as soon as
/// the previous one completes, until the window closes.
async fn closed_loop(client: &Rc<Client>) {
    let end = client.setup.timeline.measure_end;
    let mut tasks: Vec<Task<()>> = Vec::new();
    let mut seeds = Rng::new(client.setup.index as u64 + 1);
    for gi in 0..client.setup.groups.len() {
        for _ in 0..client.setup.concurrency {
            let c = client.clone();
            let mut rng = Rng::new(seeds.next_u64());
            tasks.push(glommio::spawn_local(async move {
                while Instant::now() < end {
                    one_request(&c, gi, &mut rng, Instant::now()).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await;
    }
}

/// A write of the batched closed loop: its key (the command is encoded
/// again for a retry) and when it first went out.
struct BatchedWrite {
    key: [u8; 12],
    /// When it was due (the open loop's schedule; `issued` in a closed
    /// loop): latency counts from here.
    intended: Instant,
    issued: Instant,
    deadline: Instant,
}

/// The closed loop for writes only: one task per group keeps
/// `concurrency` writes in flight through `NodeHost::propose_batch`. Every
/// write whose answer came back is replaced by a new one in the group's
/// next batch, as `concurrency` tasks of one request each would replace
/// theirs (the answers of one apply come back together either way); each
/// write is still its own proposal, timed from when it first went out and
/// retried on its own.
async fn closed_loop_batched(client: &Rc<Client>) {
    let mut tasks: Vec<Task<()>> = Vec::new();
    let mut seeds = Rng::new(client.setup.index as u64 + 1);
    for gi in 0..client.setup.groups.len() {
        let c = client.clone();
        let mut rng = Rng::new(seeds.next_u64());
        tasks.push(glommio::spawn_local(async move {
            group_batches(&c, gi, &mut rng).await;
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// Group `gi`'s batches until the window closes and its last writes are
/// answered (or their deadlines passed).
async fn group_batches(client: &Client, gi: usize, rng: &mut Rng) {
    let s = &client.setup;
    let end = s.timeline.measure_end;
    let group = s.groups[gi].0;
    let mut batch: Vec<BatchedWrite> = Vec::with_capacity(s.concurrency);
    let mut retries: Vec<BatchedWrite> = Vec::new();
    loop {
        let issued = Instant::now();
        batch.append(&mut retries);
        if issued < end {
            while batch.len() < s.concurrency {
                batch.push(BatchedWrite {
                    key: random_key(group, s.keys_per_group, rng),
                    intended: issued,
                    issued,
                    deadline: issued + s.timeout,
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        batch_round(client, gi, &mut batch, &mut retries).await;
    }
}

/// Proposes `batch` to group `gi` as one `propose_batch`, records every
/// answer, and moves the writes to retry (refused, deadline not passed)
/// to `retries`, after pointing the group at its new leader or backing
/// off.
async fn batch_round(
    client: &Client,
    gi: usize,
    batch: &mut Vec<BatchedWrite>,
    retries: &mut Vec<BatchedWrite>,
) {
    let s = &client.setup;
    let group = s.groups[gi].0;
    let issued = Instant::now();
    let Some(first_deadline) = batch.iter().map(|w| w.deadline).min() else {
        return;
    };
    let node = client.leaders[gi].get();
    let cmds = put_commands(batch.iter().map(|w| &w.key), &s.value);
    let answers = {
        let _in_flight = InFlight::enter_n(&client.in_flight, batch.len() as u64);
        s.hosts[node]
            .propose_batch(
                group,
                cmds,
                first_deadline.saturating_duration_since(issued),
            )
            .await
    };
    debug_assert_eq!(answers.len(), batch.len());
    let now = Instant::now();
    let mut moved_to = None;
    {
        let mut rec = client.recorder.borrow_mut();
        for (w, answer) in batch.drain(..).zip(answers) {
            let error = match answer {
                Ok(bytes) => {
                    match KvResult::decode(bytes) {
                        Ok(KvResult::Error(e)) => rec.error(now, &label(&format!("Kv({e:?}"))),
                        Err(_) => rec.error(now, "malformed result"),
                        Ok(_) => rec.success(OpKind::Write, w.intended, w.issued, now),
                    }
                    continue;
                }
                Err(e) => e,
            };
            if now >= w.deadline || matches!(error, HostError::ShuttingDown) {
                rec.error(now, &label(&format!("{error:?}")));
                continue;
            }
            rec.retry(now);
            if let HostError::Request(RequestError::NotLeader {
                leader: Some(l), ..
            }) = error
            {
                moved_to = node_index(&s.hosts, l).filter(|i| *i != node).or(moved_to);
            }
            retries.push(w);
        }
    }
    if retries.is_empty() {
        return;
    }
    match moved_to {
        Some(l) => client.leaders[gi].set(l),
        None => {
            glommio::timer::sleep(RETRY_BACKOFF).await;
            if let Some(l) = find_leader(&s.hosts, group).await {
                client.leaders[gi].set(l);
            }
        }
    }
}

/// A random key of `group`: its id, then one of `keys_per_group` numbers.
fn random_key(group: GroupId, keys_per_group: u64, rng: &mut Rng) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&(group.0 as u32).to_be_bytes());
    key[4..].copy_from_slice(&rng.below(keys_per_group).to_be_bytes());
    key
}

/// The encoded rsm command that puts `value` at `key`.
fn put_command(key: &[u8; 12], value: &Bytes) -> Bytes {
    encode_noop(&KvCommand::put(Bytes::copy_from_slice(key), value.clone()).encode())
}

/// The encoded rsm commands that put `value` at each of `keys`, all in one
/// buffer (each command a view of it): a few allocations per batch instead
/// of three per write, and commands the shards clone without promoting them
/// to shared storage first. The bytes are `put_command`'s.
fn put_commands<'a>(
    keys: impl ExactSizeIterator<Item = &'a [u8; 12]>,
    value: &Bytes,
) -> Vec<Bytes> {
    let mut cmds = Vec::with_capacity(keys.len());
    let mut scratch = BytesMut::new();
    let mut out = BytesMut::new();
    for key in keys {
        scratch.extend_from_slice(key);
        let key = scratch.split().freeze();
        KvCommand::put(key, value.clone()).encode_into(&mut scratch);
        let payload = scratch.split().freeze();
        let envelope = Envelope::NoOp { payload };
        if out.capacity() < envelope.encoded_len() {
            out.reserve(envelope.encoded_len() * (cmds.capacity() - cmds.len()));
        }
        envelope.encode_into(&mut out);
        cmds.push(out.split().freeze());
    }
    cmds
}

/// Shortest sleep of the open-loop pacer: above ~3k/s per generator it
/// issues the requests due in each such slice together instead of arming
/// a timer per request (their lateness, at most this, is measured,
/// reported and counted in their latency). The generators share the
/// shard executors, so each pacer wake-up is an executor wake-up: with
/// 50 µs slices `--rate 100k` measured p99 11–32 ms, with 1 ms 6–16 ms.
const PACER_SLEEP_MIN: Duration = Duration::from_millis(1);
/// How often the pacer looks again while the in-flight cap holds it back.
const PACER_CAP_POLL: Duration = Duration::from_micros(100);

/// Issues requests at `rate` ops/s on their schedule (to random groups of
/// this generator), whatever the latency; at most `concurrency` × groups
/// in flight, the rest wait and are charged from their scheduled time.
///
/// The pacer sleeps until the next request is due (not a fixed poll
/// interval), so at low rates each request leaves on time and the executor
/// sleeps in between; every request records its issue lateness (actual −
/// scheduled send time), so a generator that falls behind shows up in the
/// summary instead of silently lowering the offered load.
async fn open_loop(client: &Rc<Client>, rate: f64) {
    let timeline = client.setup.timeline;
    let cap = (client.setup.concurrency * client.setup.groups.len()) as u64;
    let mut rng = Rng::new(client.setup.index as u64 + 1);
    let mut issued: u64 = 0;
    let phase = client.setup.phase;
    let scheduled = |n: u64| super::due_at(timeline.start, rate, phase, n);
    loop {
        let now = Instant::now();
        if now >= timeline.measure_end {
            break;
        }
        // Writes only: the due writes of each group go as one batch.
        let batched = client.setup.reads <= 0.0;
        if batched {
            issued = issue_due_batches(client, issued, now, cap, &mut rng, &scheduled);
        }
        while !batched && scheduled(issued) <= now && client.in_flight.get() < cap {
            let intended = scheduled(issued);
            let gi = rng.below(client.setup.groups.len() as u64) as usize;
            let mut task_rng = Rng::new(rng.next_u64());
            let c = client.clone();
            glommio::spawn_local(async move {
                one_request(&c, gi, &mut task_rng, intended).await;
            })
            .detach();
            issued += 1;
        }
        let pause = if client.in_flight.get() >= cap {
            PACER_CAP_POLL
        } else {
            scheduled(issued)
                .saturating_duration_since(Instant::now())
                .max(PACER_SLEEP_MIN)
        };
        glommio::timer::sleep(pause).await;
    }
    // Let the requests in flight finish (each is bounded by its deadline).
    let drain_end = Instant::now() + client.setup.timeout + Duration::from_secs(1);
    while client.in_flight.get() > 0 && Instant::now() < drain_end {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// The open loop's writes due by `now` (from number `issued` on, within
/// the in-flight `cap`), as one batch per group (one task each: a
/// `propose_batch`, retried per write until answered); returns the next
/// number to issue. Each write's latency counts from its scheduled time.
fn issue_due_batches(
    client: &Rc<Client>,
    mut issued: u64,
    now: Instant,
    cap: u64,
    rng: &mut Rng,
    scheduled: &dyn Fn(u64) -> Instant,
) -> u64 {
    let s = &client.setup;
    let room = cap.saturating_sub(client.in_flight.get());
    let mut due: Vec<Vec<BatchedWrite>> = (0..s.groups.len()).map(|_| Vec::new()).collect();
    let mut taken = 0;
    while taken < room && scheduled(issued) <= now {
        let gi = rng.below(s.groups.len() as u64) as usize;
        due[gi].push(BatchedWrite {
            key: random_key(s.groups[gi].0, s.keys_per_group, rng),
            intended: scheduled(issued),
            issued: now,
            deadline: now + s.timeout,
        });
        issued += 1;
        taken += 1;
    }
    for (gi, mut batch) in due.into_iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        let c = client.clone();
        glommio::spawn_local(async move {
            let mut retries = Vec::new();
            loop {
                batch_round(&c, gi, &mut batch, &mut retries).await;
                if retries.is_empty() {
                    return;
                }
                batch.append(&mut retries);
            }
        })
        .detach();
    }
    issued
}

/// One write or read against group `gi`, sent to its cached leader and
/// retried (leader refresh, back-off) until it succeeds or its deadline
/// passes.
async fn one_request(client: &Client, gi: usize, rng: &mut Rng, intended: Instant) {
    let _in_flight = InFlight::enter(&client.in_flight);
    let s = &client.setup;
    let group = s.groups[gi].0;
    let kind = if s.reads > 0.0 && rng.unit() < s.reads {
        OpKind::Read
    } else {
        OpKind::Write
    };
    let key = random_key(group, s.keys_per_group, rng);
    let request = match kind {
        OpKind::Read => KvQuery::Get {
            key: Bytes::copy_from_slice(&key),
        }
        .encode(),
        OpKind::Write => put_command(&key, &s.value),
    };
    let issued = Instant::now();
    let deadline = issued + s.timeout;
    loop {
        let node = client.leaders[gi].get();
        let host = &s.hosts[node];
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match kind {
            OpKind::Read => {
                host.read_with(group, request.clone(), s.consistency, left)
                    .await
            }
            OpKind::Write => host.propose(group, request.clone(), left).await,
        };
        let now = Instant::now();
        let error = match answer {
            Ok(bytes) => {
                let mut rec = client.recorder.borrow_mut();
                match KvResult::decode(bytes) {
                    Ok(KvResult::Error(e)) => rec.error(now, &label(&format!("Kv({e:?}"))),
                    Err(_) => rec.error(now, "malformed result"),
                    Ok(_) => rec.success(kind, intended, issued, now),
                }
                return;
            }
            Err(e) => e,
        };
        if now >= deadline || matches!(error, HostError::ShuttingDown) {
            client
                .recorder
                .borrow_mut()
                .error(now, &label(&format!("{error:?}")));
            return;
        }
        client.recorder.borrow_mut().retry(now);
        match error {
            HostError::Request(RequestError::NotLeader {
                leader: Some(l), ..
            }) if node_index(&s.hosts, l).is_some_and(|i| i != node) => {
                client.leaders[gi].set(node_index(&s.hosts, l).unwrap_or(node));
            }
            _ => {
                glommio::timer::sleep(RETRY_BACKOFF).await;
                if let Some(l) = find_leader(&s.hosts, group).await {
                    client.leaders[gi].set(l);
                }
            }
        }
    }
}

/// A bounded label of an error's `Debug` text: its variant path without
/// the fields (`Request(NotLeader { group: .. })` → `Request(NotLeader`).
fn label(debug: &str) -> String {
    let bytes = debug.as_bytes();
    let mut end = debug.len();
    for (i, b) in bytes.iter().enumerate() {
        let fields_start = match b {
            b' ' | b'{' => true,
            // `Variant(Inner` continues; `Timeout(5s)` stops.
            b'(' => !bytes.get(i + 1).is_some_and(u8::is_ascii_uppercase),
            _ => false,
        };
        if fields_start {
            end = i;
            break;
        }
    }
    debug[..end.min(48)].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_drop_the_fields() {
        let e = HostError::Request(RequestError::NotLeader {
            group: GroupId(3),
            leader: None,
        });
        assert_eq!(label(&format!("{e:?}")), "Request(NotLeader");
        let e = HostError::Timeout(Duration::from_secs(5));
        assert_eq!(label(&format!("{e:?}")), "Timeout");
    }

    /// A tiny in-process run end to end: 3 nodes, 2 groups, 1 s, unbound
    /// shards with 1 MiB of DMA memory; writes happen and the last line of
    /// the output is the JSON summary.
    #[test]
    fn tiny_in_process_bench_writes_and_ends_with_json() {
        let dir = tempfile::tempdir().unwrap();
        let args = BenchOptions {
            nodes: 3,
            shards: Some(1),
            groups: 2,
            payload: 16,
            concurrency: 8,
            rate: None,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(300),
            reads: 0.2,
            read_consistency: Consistency::Linearizable,
            keys: 1000,
            placement: PlacementArg::Unbound,
            clients: Some(1),
            io_memory: 1 << 20,
            preempt_timer: Duration::from_millis(1),
            data_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_secs(5),
            json: true,
            target: None,
            connections: 1,
            idle: false,
            idle_writes: 0,
            start_concurrency: 16,
            quiesce_timeout: Duration::from_secs(1),
        };
        let mut out = Vec::new();
        let outcome = super::super::execute(&args, &mut out);
        let text = String::from_utf8(out).unwrap();
        let summary = match outcome {
            Ok(Outcome::Load(s)) => *s,
            other => panic!("{other:?}\n{text}"),
        };
        assert!(summary.writes_per_sec > 0.0, "{text}");
        assert!(summary.reads > 0, "{text}");
        assert!(summary.fsyncs_per_sec.is_some_and(|f| f > 0.0), "{text}");
        let last = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}\n{text}"));
        assert!(v["writes_per_sec"].as_f64().unwrap() > 0.0, "{last}");
        assert!(v["p99_us"].as_u64().unwrap() > 0, "{last}");
        assert_eq!(v["config"]["groups"], 2);
        assert!(text.contains("writes/s"), "{text}");
    }

    /// A batch's commands are byte for byte the commands `put_command`
    /// encodes one by one.
    #[test]
    fn batched_commands_are_the_single_commands() {
        let value = Bytes::from_static(b"0123456789abcdef");
        let keys: Vec<[u8; 12]> = (0..100u8).map(|i| [i; 12]).collect();
        let cmds = put_commands(keys.iter(), &value);
        assert_eq!(cmds.len(), keys.len());
        for (key, cmd) in keys.iter().zip(&cmds) {
            assert_eq!(cmd, &put_command(key, &value));
        }
        assert!(put_commands([].iter(), &value).is_empty());
    }

    /// Writes only (the default mix) go through the batched closed loop:
    /// every write is acknowledged, none fails, and no more than
    /// `concurrency` per group are ever in flight.
    #[test]
    fn tiny_write_only_run_goes_through_batches() {
        let dir = tempfile::tempdir().unwrap();
        let args = crate::bench::tiny_run_for_tests(
            dir.path(),
            &["--groups", "2", "--concurrency", "8", "--keys", "1000"],
        );
        assert_eq!(args.reads, 0.0);
        let mut out = Vec::new();
        let outcome = super::super::execute(&args, &mut out);
        let text = String::from_utf8(out).unwrap();
        let s = match outcome {
            Ok(Outcome::Load(s)) => *s,
            other => panic!("{other:?}\n{text}"),
        };
        assert!(s.writes > 0, "{text}");
        assert_eq!((s.reads, s.errors), (0, 0), "{text}");
        let progress: Vec<&str> = text.lines().filter(|l| l.contains("in-flight")).collect();
        assert!(!progress.is_empty(), "no progress line: {text}");
        for line in progress {
            let in_flight: u64 = line
                .split("in-flight")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no in-flight count in {line}"));
            assert!(in_flight <= 16, "{in_flight} in flight for 2 x 8: {line}");
        }
    }

    /// The in-process open loop: never issues ahead of its schedule, and
    /// splits each latency into issue lateness and service time, neither
    /// of which can exceed the scheduled latency.
    #[test]
    fn tiny_open_loop_keeps_to_its_schedule_and_splits_latency() {
        let dir = tempfile::tempdir().unwrap();
        let args =
            crate::bench::tiny_run_for_tests(dir.path(), &["--groups", "2", "--rate", "300"]);
        let mut out = Vec::new();
        let outcome = super::super::execute(&args, &mut out);
        let text = String::from_utf8(out).unwrap();
        let s = match outcome {
            Ok(Outcome::Load(s)) => *s,
            other => panic!("{other:?}\n{text}"),
        };
        // The pacer issues nothing ahead of its schedule: by the window's
        // end it has issued at most 300/s × (0.3 s warm-up + 1 s window),
        // so the window cannot complete more than that.
        assert!(s.writes > 0, "{text}");
        assert!(
            s.writes <= 391,
            "{} writes by the end of a 1.3 s schedule at 300/s\n{text}",
            s.writes
        );
        // Per request: lateness + service = scheduled latency, so their
        // quantiles cannot exceed the latency's.
        assert!(s.service_p50_us <= s.p50_us, "{text}");
        assert!(s.service_p99_us <= s.p99_us, "{text}");
        assert!(s.issue_lateness_p50_us <= s.p50_us, "{text}");
        assert!(s.issue_lateness_max_us <= s.max_us, "{text}");
        assert!(text.contains("issue lateness"), "{text}");
        let last = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        for field in [
            "issue_lateness_p50_us",
            "issue_lateness_p99_us",
            "service_p50_us",
            "service_p999_us",
            "wal_flush_mean_us",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {last}");
        }
        assert_eq!(v["config"]["rate"], 300);
    }

    /// By default the generators run on the shard executors
    /// (spawned through `NodeHost::spawn_on_shard`, one per leading
    /// shard); open loop and closed loop both complete every write, and
    /// the summary says where the load came from. (CPU per thread is not
    /// checked: tests in parallel share the process.)
    #[test]
    fn generators_on_the_shards_write_without_threads_of_their_own() {
        for rate in [Some("300"), None] {
            let dir = tempfile::tempdir().unwrap();
            let mut flags = vec!["--groups", "6", "--concurrency", "4"];
            if let Some(r) = rate {
                flags.extend(["--rate", r]);
            }
            let args = crate::bench::tiny_run_for_tests(dir.path(), &flags);
            let mut out = Vec::new();
            let outcome = super::super::execute(&args, &mut out);
            let text = String::from_utf8(out).unwrap();
            let s = match outcome {
                Ok(Outcome::Load(s)) => *s,
                other => panic!("{other:?}\n{text}"),
            };
            assert!(s.writes > 0, "{text}");
            assert_eq!(s.errors, 0, "{text}");
            assert!(s.config.clients_on_shards, "{text}");
            assert!(text.contains("clients on the shards"), "{text}");
        }
    }
}
