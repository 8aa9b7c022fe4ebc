//! `flotilla bench --idle`: what quiesced groups cost.
//!
//! ```text
//!  RSS + heap ─► start G groups on every node (bounded: --start-concurrency in flight)
//!   sample       ─► wait for every leader ─► --idle-writes proposals per group
//!                ─► wait until no group replica is live (quiesced) ─► --warmup
//!                ─► RSS + heap, CPU, engine counters ─► --duration window ─► again
//!  summary: CPU as % of one core, messages/frames/ticks/fdatasyncs per second,
//!           RSS and heap growth per group replica (growth / (groups × nodes))
//! ```
//!
//! No load generator runs: the only work in the window is the engine's own
//! (shard ticks walking their groups, whatever heartbeats quiesce leaves)
//! plus one `NodeHost::stats` call per node at each edge of the window.
//! The main thread waits with `std::thread::park_timeout` (it is not an
//! executor) and drives the async `NodeHost` calls with `block_on`.

use std::io::Write;
use std::time::{Duration, Instant};

use flotilla::{GroupId, NodeHost, Role};
use flotilla_rsm::{encode_noop, KvCommand};
use futures::StreamExt;
use futures_lite::future::block_on;
use serde::Serialize;

use super::inproc::Cluster;
use super::stats::{self, EngineCounters, ThreadCpu};
use super::{BenchOptions, ConfigEcho};

/// Deadline of one control call (stats, status) during the idle run.
const CONTROL_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts per start-up write before it counts as failed.
const WRITE_ATTEMPTS: usize = 5;
/// First pause between attempts of one write (then 2×, 3×...).
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How often the quiesce wait polls the shards.
const QUIESCE_POLL: Duration = Duration::from_millis(200);

/// Result of an idle run; serialized as the JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdleSummary {
    /// The run's configuration.
    pub config: ConfigEcho,
    /// Always `idle`.
    pub idle: bool,
    /// Group replicas measured (groups × nodes).
    pub group_replicas: u64,
    /// Seconds to start every group on every node.
    pub start_groups_s: f64,
    /// Seconds from the last start until every group had a leader.
    pub elect_s: f64,
    /// Seconds the start-up writes took.
    pub writes_s: f64,
    /// Seconds from the last write until every replica quiesced (or the
    /// quiesce timeout).
    pub quiesce_s: f64,
    /// Start-up writes acknowledged.
    pub entries_written: u64,
    /// Start-up writes that failed after every attempt.
    pub write_errors: u64,
    /// Group replicas still live (ticked every tick) when the window opened.
    pub live_groups_at_start: u64,
    /// Group replicas live when the window closed.
    pub live_groups_at_end: u64,
    /// Length of the window, seconds.
    pub elapsed_s: f64,
    /// Process CPU (user + sys, every thread) over the window, as percent
    /// of one core.
    pub idle_cpu_percent_of_core: f64,
    /// Of which shard executors (`flotilla-*` threads), percent of a core
    /// (10 ms /proc resolution).
    pub shard_cpu_percent_of_core: f64,
    /// Of which every other thread (main, async-io, io_uring workers).
    pub other_cpu_percent_of_core: f64,
    /// Transport messages sent per second, all nodes.
    pub messages_per_sec: f64,
    /// Transport frames sent per second, all nodes.
    pub frames_per_sec: f64,
    /// Transport bytes sent per second, all nodes.
    pub transport_bytes_per_sec: f64,
    /// Shard tick timer firings per second, all shards (each walks the
    /// shard's groups; quiesced ones are skipped).
    pub ticks_per_sec: f64,
    /// Driver turns per second, all shards.
    pub turns_per_sec: f64,
    /// WAL fdatasyncs per second, all shards.
    pub fsyncs_per_sec: f64,
    /// Elections won during the window (0 when idle groups stay quiet).
    pub leader_elections: u64,
    /// Times per second the shard threads went to sleep and woke again
    /// (voluntary context switches, all shards): the unit an idle shard
    /// pays for, whatever woke it (tick, armed-timer reserve, message).
    pub shard_wakeups_per_sec: f64,
    /// Shard CPU per wake-up, µs.
    pub shard_cpu_us_per_wakeup: f64,
    /// Process RSS before any group existed (nodes started), bytes.
    pub rss_before_bytes: u64,
    /// Process RSS when the window opened (groups written and quiesced).
    pub rss_quiesced_bytes: u64,
    /// Process RSS when the window closed.
    pub rss_end_bytes: u64,
    /// RSS growth per group replica, bytes: (RSS at the window's end −
    /// RSS before the groups) / (groups × nodes). Includes allocator
    /// fragmentation and what start-up left behind.
    pub bytes_per_group_replica: f64,
    /// Heap in use per group replica (glibc `mallinfo2`: `uordblks +
    /// hblkhd` growth / replicas), bytes: what is actually allocated.
    pub heap_bytes_per_group_replica: Option<f64>,
    /// RSS growth per group replica after `malloc_trim(0)` at the end
    /// (free heap returned to the system; taken after the window).
    pub trimmed_bytes_per_group_replica: Option<f64>,
}

/// A memory reading: RSS and (glibc) heap in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size, bytes (`/proc/self/statm`).
    pub rss_bytes: u64,
    /// Heap bytes in use (`mallinfo2`), where the allocator tells.
    pub heap_bytes: Option<u64>,
}

impl Memory {
    /// Reads both now.
    pub fn sample() -> Memory {
        Memory {
            rss_bytes: rss_bytes().unwrap_or(0),
            heap_bytes: heap_in_use_bytes(),
        }
    }
}

/// Resident set size of this process from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    parse_statm_resident_pages(&statm).map(|pages| pages * page.max(1) as u64)
}

/// The resident pages field (second) of a `/proc/<pid>/statm` line.
fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// glibc's view of the heap in use: `uordblks` (allocated in arenas) +
/// `hblkhd` (mmapped chunks), summed over every arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct; it
    // locks each arena internally.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

/// Not glibc: no cheap allocator view.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> Option<u64> {
    None
}

/// Returns free heap to the system (glibc); false elsewhere.
fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Voluntary context switches (each one a sleep, so later one wake-up) of
/// each shard thread (`flotilla-*`) by thread id, from
/// `/proc/self/task/*/status`.
pub fn shard_wakeups() -> std::collections::HashMap<String, u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let (name, n) = parse_status_switches(&status)?;
            name.starts_with("flotilla-")
                .then(|| (e.file_name().to_string_lossy().to_string(), n))
        })
        .collect()
}

/// Wake-ups between two [`shard_wakeups`] readings, per thread (threads
/// that ended in between drop out; new ones count from zero).
pub fn wakeups_since(
    later: &std::collections::HashMap<String, u64>,
    earlier: &std::collections::HashMap<String, u64>,
) -> u64 {
    later
        .iter()
        .map(|(tid, n)| n.saturating_sub(earlier.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// `(Name, voluntary_ctxt_switches)` of a `/proc/<pid>/task/<tid>/status`.
fn parse_status_switches(status: &str) -> Option<(String, u64)> {
    let mut name = None;
    let mut switches = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
            switches = v.trim().parse().ok();
        }
    }
    Some((name?, switches?))
}

/// Prints a progress line at most once a second.
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last: Instant::now(),
        }
    }

    fn due(&mut self) -> bool {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

fn line(out: &mut dyn Write, text: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(text);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Starts `groups` on every node with at most `in_flight` start calls
/// outstanding, printing progress.
pub(super) fn start_groups(
    cluster: &Cluster,
    groups: &[GroupId],
    in_flight: usize,
    out: &mut dyn Write,
) -> Result<(), String> {
    let members = cluster.members();
    let hosts = &cluster.hosts;
    let total = groups.len() * hosts.len();
    let calls = groups
        .iter()
        .flat_map(|g| hosts.iter().map(move |h| (*g, h)))
        .map(|(g, h)| {
            let members = members.clone();
            async move {
                h.start_group(g, members, CONTROL_DEADLINE)
                    .await
                    .map_err(|e| format!("group {g} on node {}: {e}", h.config().node_id))
            }
        });
    let mut stream = futures::stream::iter(calls).buffer_unordered(in_flight.max(1));
    let mut progress = Progress::new();
    let mut done = 0usize;
    block_on(async {
        while let Some(r) = stream.next().await {
            r?;
            done += 1;
            if progress.due() {
                line(
                    out,
                    format_args!("  started {done} of {total} group replicas"),
                );
            }
        }
        Ok::<(), String>(())
    })
}

/// The node index of every group's leader (by position in `groups`), from
/// one status listing per node; `None` where no replica reports a leader.
pub(super) fn leaders_of(
    hosts: &[std::sync::Arc<NodeHost>],
    groups: &[GroupId],
) -> Result<Vec<Option<usize>>, String> {
    let index: std::collections::HashMap<GroupId, usize> =
        groups.iter().enumerate().map(|(i, g)| (*g, i)).collect();
    let mut leaders = vec![None; groups.len()];
    let mut reported = vec![None; groups.len()];
    for (node, h) in hosts.iter().enumerate() {
        let all = block_on(h.groups(CONTROL_DEADLINE))
            .map_err(|e| format!("status of node {}: {e}", h.config().node_id))?;
        for s in all {
            let Some(&i) = index.get(&s.group) else {
                continue;
            };
            if s.role == Role::Leader {
                leaders[i] = Some(node);
            } else if let Some(l) = s.leader {
                reported[i] = hosts.iter().position(|h| h.config().node_id == l.0);
            }
        }
    }
    Ok(leaders
        .into_iter()
        .zip(reported)
        .map(|(l, r)| l.or(r))
        .collect())
}

/// Waits until every group has a leader (progress every second); returns
/// the leader's node index per group.
pub(super) fn wait_for_leaders(
    cluster: &Cluster,
    groups: &[GroupId],
    deadline: Duration,
    out: &mut dyn Write,
) -> Result<Vec<usize>, String> {
    let started = Instant::now();
    let mut progress = Progress::new();
    loop {
        let leaders = leaders_of(&cluster.hosts, groups)?;
        let missing = leaders.iter().filter(|l| l.is_none()).count();
        if missing == 0 {
            return Ok(leaders.into_iter().map(|l| l.unwrap_or(0)).collect());
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "{missing} of {} groups have no leader after {deadline:?}",
                groups.len()
            ));
        }
        if progress.due() {
            line(
                out,
                format_args!(
                    "  {} of {} groups have a leader",
                    groups.len() - missing,
                    groups.len()
                ),
            );
        }
        // Not an executor: the main thread may wait.
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Group replicas not quiesced, over every shard of every node.
fn live_groups(cluster: &Cluster) -> Result<u64, String> {
    let mut live = 0;
    for h in &cluster.hosts {
        let shards = block_on(h.stats(CONTROL_DEADLINE))
            .map_err(|e| format!("stats of node {}: {e}", h.config().node_id))?;
        live += shards.iter().map(|s| s.live_groups).sum::<u64>();
    }
    Ok(live)
}

/// Runs the idle measurement on a started cluster (no groups yet).
pub(super) fn run(
    args: &BenchOptions,
    cluster: &Cluster,
    out: &mut dyn Write,
) -> Result<IdleSummary, String> {
    let groups: Vec<GroupId> = (1..=args.groups as u64).map(GroupId).collect();
    let replicas = (groups.len() * cluster.hosts.len()) as u64;
    // Let the nodes' start-up allocations settle before the baseline.
    std::thread::park_timeout(Duration::from_millis(200));
    let before = Memory::sample();
    line(
        out,
        format_args!(
            "idle mode: {} groups x {} nodes = {replicas} group replicas; RSS before groups {:.1} MiB",
            groups.len(),
            cluster.hosts.len(),
            before.rss_bytes as f64 / (1 << 20) as f64
        ),
    );

    let t0 = Instant::now();
    start_groups(cluster, &groups, args.start_concurrency, out)?;
    let start_groups_s = t0.elapsed().as_secs_f64();
    line(
        out,
        format_args!("started {replicas} group replicas in {start_groups_s:.2} s"),
    );

    let t1 = Instant::now();
    let election_deadline = super::inproc::election_deadline(groups.len());
    let leaders = wait_for_leaders(cluster, &groups, election_deadline, out)?;
    let elect_s = t1.elapsed().as_secs_f64();
    line(
        out,
        format_args!("every group has a leader after {elect_s:.2} s more"),
    );

    let t2 = Instant::now();
    let (entries_written, write_errors) = write_every_group(args, cluster, &groups, &leaders, out);
    let writes_s = t2.elapsed().as_secs_f64();
    line(
        out,
        format_args!(
            "wrote {entries_written} entries ({} per group, {write_errors} failed) in {writes_s:.2} s",
            args.idle_writes
        ),
    );

    let t3 = Instant::now();
    let mut progress = Progress::new();
    let mut live = live_groups(cluster)?;
    while live > 0 && t3.elapsed() < args.quiesce_timeout {
        if progress.due() {
            line(
                out,
                format_args!("  quiescing: {live} of {replicas} group replicas still live"),
            );
        }
        std::thread::park_timeout(QUIESCE_POLL);
        live = live_groups(cluster)?;
    }
    let quiesce_s = t3.elapsed().as_secs_f64();
    if live == 0 {
        line(
            out,
            format_args!("every group replica quiesced after {quiesce_s:.2} s"),
        );
    } else {
        line(
            out,
            format_args!(
                "{live} of {replicas} group replicas still live after {:?}; measuring anyway",
                args.quiesce_timeout
            ),
        );
    }
    std::thread::park_timeout(args.warmup);

    // The window.
    let live_groups_at_start = live_groups(cluster)?;
    let quiesced = Memory::sample();
    let engine_first = cluster
        .engine_counters()
        .ok_or("the nodes did not report their counters")?;
    let threads_first = ThreadCpu::sample();
    let wakeups_first = shard_wakeups();
    let cpu_first = stats::process_cpu();
    let window_start = Instant::now();
    let window_end = window_start + args.duration;
    let mut second = 1u64;
    let mut cpu_prev = cpu_first;
    loop {
        let next = (window_start + Duration::from_secs(second)).min(window_end);
        let now = Instant::now();
        if next > now {
            std::thread::park_timeout(next - now);
            continue;
        }
        let cpu = stats::process_cpu();
        let span = if next == window_end {
            args.duration.as_secs_f64() - (second - 1) as f64
        } else {
            1.0
        };
        line(
            out,
            format_args!(
                "[{second:>4}s] idle: process CPU {:.2}% of a core, RSS {:.1} MiB",
                (cpu - cpu_prev).as_secs_f64() * 100.0 / span.max(1e-3),
                rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
            ),
        );
        cpu_prev = cpu;
        if next == window_end {
            break;
        }
        second += 1;
    }
    let cpu_last = stats::process_cpu();
    let wakeups_last = shard_wakeups();
    let threads_last = ThreadCpu::sample();
    let elapsed = window_start.elapsed();
    let engine_last = cluster
        .engine_counters()
        .ok_or("the nodes did not report their counters")?;
    let end = Memory::sample();
    let live_groups_at_end = live_groups(cluster)?;
    let trimmed = trim_heap().then(|| rss_bytes().unwrap_or(0));

    let summary = summarize(&IdleMeasured {
        config: args.echo("in-process idle"),
        replicas,
        phases: [start_groups_s, elect_s, writes_s, quiesce_s],
        entries_written,
        write_errors,
        live: [live_groups_at_start, live_groups_at_end],
        elapsed,
        process_cpu: cpu_last.saturating_sub(cpu_first),
        threads: threads_last.since(&threads_first),
        shard_wakeups: wakeups_since(&wakeups_last, &wakeups_first),
        engine: engine_last.since(&engine_first),
        memory: [before, quiesced, end],
        trimmed_rss_bytes: trimmed,
    });
    let io = |e: std::io::Error| format!("cannot write the results: {e}");
    writeln!(out, "{}", render(&summary)).map_err(io)?;
    if args.json {
        let json = serde_json::to_string(&summary).map_err(|e| format!("JSON: {e}"))?;
        writeln!(out, "{json}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(summary)
}

/// `--idle-writes` puts per group, sent to each group's leader with at
/// most `--start-concurrency` in flight; returns (acknowledged, failed).
fn write_every_group(
    args: &BenchOptions,
    cluster: &Cluster,
    groups: &[GroupId],
    leaders: &[usize],
    out: &mut dyn Write,
) -> (u64, u64) {
    let value = bytes::Bytes::from(vec![b'i'; args.payload]);
    let hosts = &cluster.hosts;
    let total = groups.len() * args.idle_writes;
    let writes = groups
        .iter()
        .zip(leaders)
        .flat_map(|(g, l)| (0..args.idle_writes).map(move |k| (*g, *l, k)))
        .map(|(g, l, k)| {
            let mut key = [0u8; 12];
            key[..4].copy_from_slice(&(g.0 as u32).to_be_bytes());
            key[4..].copy_from_slice(&(k as u64).to_be_bytes());
            let cmd = encode_noop(
                &KvCommand::put(bytes::Bytes::copy_from_slice(&key), value.clone()).encode(),
            );
            let host = &hosts[l];
            async move {
                for attempt in 0..WRITE_ATTEMPTS {
                    // Forwarding on: a leader that moved is found.
                    if host.propose(g, cmd.clone(), args.timeout).await.is_ok() {
                        return true;
                    }
                    // A leadership transfer (the balancer) refuses
                    // proposals for a moment: back off before retrying.
                    let pause = RETRY_PAUSE * (attempt as u32 + 1);
                    async_io::Timer::after(pause).await;
                }
                false
            }
        });
    let mut stream = futures::stream::iter(writes).buffer_unordered(args.start_concurrency.max(1));
    let mut progress = Progress::new();
    let (mut ok, mut failed) = (0u64, 0u64);
    block_on(async {
        while let Some(written) = stream.next().await {
            if written {
                ok += 1;
            } else {
                failed += 1;
            }
            if progress.due() {
                line(
                    out,
                    format_args!("  {} of {total} writes done", ok + failed),
                );
            }
        }
    });
    (ok, failed)
}

/// Everything the idle summary is computed from.
struct IdleMeasured {
    config: ConfigEcho,
    replicas: u64,
    /// Start, elect, write and quiesce durations, seconds.
    phases: [f64; 4],
    entries_written: u64,
    write_errors: u64,
    /// Live group replicas at the window's start and end.
    live: [u64; 2],
    elapsed: Duration,
    process_cpu: Duration,
    threads: ThreadCpu,
    shard_wakeups: u64,
    engine: EngineCounters,
    /// Before the groups, at the window's start, at its end.
    memory: [Memory; 3],
    trimmed_rss_bytes: Option<u64>,
}

fn summarize(m: &IdleMeasured) -> IdleSummary {
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    let per_sec = |n: u64| n as f64 / secs;
    let percent = |d: Duration| d.as_secs_f64() * 100.0 / secs;
    let replicas = m.replicas.max(1) as f64;
    let [before, quiesced, end] = m.memory;
    let growth = |after: u64, base: u64| (after as f64 - base as f64) / replicas;
    IdleSummary {
        config: m.config.clone(),
        idle: true,
        group_replicas: m.replicas,
        start_groups_s: m.phases[0],
        elect_s: m.phases[1],
        writes_s: m.phases[2],
        quiesce_s: m.phases[3],
        entries_written: m.entries_written,
        write_errors: m.write_errors,
        live_groups_at_start: m.live[0],
        live_groups_at_end: m.live[1],
        elapsed_s: m.elapsed.as_secs_f64(),
        idle_cpu_percent_of_core: percent(m.process_cpu),
        shard_cpu_percent_of_core: percent(m.threads.shards),
        other_cpu_percent_of_core: percent(m.threads.other + m.threads.clients),
        messages_per_sec: per_sec(m.engine.messages_sent),
        frames_per_sec: per_sec(m.engine.frames_sent),
        transport_bytes_per_sec: per_sec(m.engine.transport_bytes),
        ticks_per_sec: per_sec(m.engine.ticks),
        turns_per_sec: per_sec(m.engine.turns),
        fsyncs_per_sec: per_sec(m.engine.fdatasyncs),
        leader_elections: m.engine.leader_elected,
        shard_wakeups_per_sec: per_sec(m.shard_wakeups),
        shard_cpu_us_per_wakeup: if m.shard_wakeups > 0 {
            m.threads.shards.as_secs_f64() * 1e6 / m.shard_wakeups as f64
        } else {
            0.0
        },
        rss_before_bytes: before.rss_bytes,
        rss_quiesced_bytes: quiesced.rss_bytes,
        rss_end_bytes: end.rss_bytes,
        bytes_per_group_replica: growth(end.rss_bytes, before.rss_bytes),
        heap_bytes_per_group_replica: match (end.heap_bytes, before.heap_bytes) {
            (Some(e), Some(b)) => Some(growth(e, b)),
            _ => None,
        },
        trimmed_bytes_per_group_replica: m.trimmed_rss_bytes.map(|t| growth(t, before.rss_bytes)),
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// The human summary (several lines, no trailing newline).
pub fn render(s: &IdleSummary) -> String {
    use std::fmt::Write as _;
    let c = &s.config;
    let mut out = String::new();
    let _ = writeln!(out, "---- flotilla bench summary (idle) ----");
    let _ = writeln!(
        out,
        "config     nodes {} shards/node {} groups {} ({} group replicas) placement {} window {:.1} s",
        c.nodes,
        c.shards_per_node.map_or("-".into(), |v| v.to_string()),
        c.groups.map_or("-".into(), |v| v.to_string()),
        s.group_replicas,
        c.placement,
        s.elapsed_s
    );
    let _ = writeln!(
        out,
        "start-up   start {:.2} s, elect {:.2} s, {} writes in {:.2} s ({} failed), quiesce {:.2} s; live replicas at window start {} end {}",
        s.start_groups_s,
        s.elect_s,
        s.entries_written,
        s.writes_s,
        s.write_errors,
        s.quiesce_s,
        s.live_groups_at_start,
        s.live_groups_at_end
    );
    let _ = writeln!(
        out,
        "cpu        {:.2}% of one core (shards {:.2}%, other threads {:.2}%); shard wake-ups/s {:.0} at {:.1} us of shard CPU each",
        s.idle_cpu_percent_of_core,
        s.shard_cpu_percent_of_core,
        s.other_cpu_percent_of_core,
        s.shard_wakeups_per_sec,
        s.shard_cpu_us_per_wakeup
    );
    let _ = writeln!(
        out,
        "traffic    messages/s {:.1}  frames/s {:.1}  bytes/s {:.0}  shard ticks/s {:.0}  driver turns/s {:.0}  fdatasyncs/s {:.1}  elections {}",
        s.messages_per_sec,
        s.frames_per_sec,
        s.transport_bytes_per_sec,
        s.ticks_per_sec,
        s.turns_per_sec,
        s.fsyncs_per_sec,
        s.leader_elections
    );
    let _ = writeln!(
        out,
        "memory     per group replica: RSS {}  heap in use {}  RSS after malloc_trim {}  (RSS {:.1} MiB before groups, {:.1} MiB quiesced, {:.1} MiB at end)",
        kib(s.bytes_per_group_replica),
        s.heap_bytes_per_group_replica.map_or("n/a".into(), kib),
        s.trimmed_bytes_per_group_replica.map_or("n/a".into(), kib),
        s.rss_before_bytes as f64 / (1 << 20) as f64,
        s.rss_quiesced_bytes as f64 / (1 << 20) as f64,
        s.rss_end_bytes as f64 / (1 << 20) as f64
    );
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Consistency, PlacementArg};

    #[test]
    fn statm_parsing_and_memory_readings() {
        assert_eq!(
            parse_statm_resident_pages("12345 678 90 1 0 200 0\n"),
            Some(678)
        );
        assert_eq!(parse_statm_resident_pages("12345"), None);
        assert_eq!(parse_statm_resident_pages("1 x 2"), None);
        let status = "Name:\tflotilla-n1-s0\nState:\tS\nvoluntary_ctxt_switches:\t4321\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_status_switches(status),
            Some(("flotilla-n1-s0".to_string(), 4321))
        );
        assert_eq!(parse_status_switches("Name:\tx\n"), None);
        let earlier = [("1".to_string(), 10), ("2".to_string(), 5)].into();
        let later = [("1".to_string(), 15), ("3".to_string(), 7)].into();
        assert_eq!(wakeups_since(&later, &earlier), 12);
        let m = Memory::sample();
        assert!(m.rss_bytes > 0, "{m:?}");
        // A live allocation shows in the heap view (glibc). Absolute, not a
        // delta: tests in other threads allocate and free meanwhile.
        if heap_in_use_bytes().is_some() {
            let block = vec![1u8; 64 << 20];
            let after = heap_in_use_bytes().unwrap_or(0);
            assert!(after >= 64 << 20, "{after}");
            assert_eq!(block[block.len() - 1], 1);
        }
    }

    #[test]
    fn idle_summary_math() {
        let gib = 1u64 << 30;
        let s = summarize(&IdleMeasured {
            config: crate::bench::parse_for_tests(&["--idle"]).echo("in-process idle"),
            replicas: 1000,
            phases: [1.0, 2.0, 3.0, 4.0],
            entries_written: 1000,
            write_errors: 0,
            live: [0, 1],
            elapsed: Duration::from_secs(4),
            process_cpu: Duration::from_millis(200),
            threads: ThreadCpu {
                shards: Duration::from_millis(120),
                clients: Duration::ZERO,
                other: Duration::from_millis(80),
                threads: vec![],
            },
            shard_wakeups: 600,
            engine: EngineCounters {
                messages_sent: 40,
                frames_sent: 8,
                ticks: 1200,
                ..Default::default()
            },
            memory: [
                Memory {
                    rss_bytes: gib,
                    heap_bytes: Some(1 << 20),
                },
                Memory {
                    rss_bytes: gib + 9_000_000,
                    heap_bytes: Some(3 << 20),
                },
                Memory {
                    rss_bytes: gib + 10_240_000,
                    heap_bytes: Some((1 << 20) + 8_192_000),
                },
            ],
            trimmed_rss_bytes: Some(gib + 8_192_000),
        });
        assert!((s.idle_cpu_percent_of_core - 5.0).abs() < 1e-9);
        assert!((s.shard_cpu_percent_of_core - 3.0).abs() < 1e-9);
        assert_eq!(s.messages_per_sec, 10.0);
        assert_eq!(s.frames_per_sec, 2.0);
        assert_eq!(s.ticks_per_sec, 300.0);
        assert_eq!(s.shard_wakeups_per_sec, 150.0);
        assert!((s.shard_cpu_us_per_wakeup - 200.0).abs() < 1e-9);
        assert_eq!(s.bytes_per_group_replica, 10_240.0);
        assert_eq!(s.heap_bytes_per_group_replica, Some(8_192.0));
        assert_eq!(s.trimmed_bytes_per_group_replica, Some(8_192.0));
        let text = render(&s);
        assert!(text.contains("5.00% of one core"), "{text}");
        assert!(text.contains("RSS 10.0 KiB"), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(v["idle_cpu_percent_of_core"], 5.0);
        assert_eq!(v["config"]["mode"], "in-process idle");
        let _ = (Consistency::Linearizable, PlacementArg::Unbound);
    }

    /// The idle mode end to end on a tiny cluster: 3 nodes × 50 groups,
    /// unbound, 1 MiB of DMA memory per shard, a 1 s window. Every group
    /// gets its writes, quiesces, and the JSON line carries the figures.
    #[test]
    fn tiny_idle_run_quiesces_and_reports_json() {
        let dir = tempfile::tempdir().unwrap();
        // The shared tiny setup; its 300 ms warm-up is the idle mode's
        // settle time before the window.
        let args = crate::bench::tiny_run_for_tests(
            dir.path(),
            &[
                "--idle",
                "--groups",
                "50",
                "--idle-writes",
                "2",
                "--quiesce-timeout",
                "20s",
            ],
        );
        let mut out = Vec::new();
        let outcome = crate::bench::execute(&args, &mut out);
        let text = String::from_utf8(out).unwrap();
        let summary = match outcome {
            Ok(crate::bench::Outcome::Idle(s)) => *s,
            Ok(crate::bench::Outcome::Load(_)) => panic!("a load run instead of idle:\n{text}"),
            Err(e) => panic!("idle run failed: {e}\n{text}"),
        };
        assert_eq!(summary.group_replicas, 150, "{text}");
        assert_eq!(summary.entries_written, 100, "{text}");
        assert_eq!(summary.write_errors, 0, "{text}");
        let last = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}\n{text}"));
        for field in [
            "idle_cpu_percent_of_core",
            "bytes_per_group_replica",
            "messages_per_sec",
            "frames_per_sec",
            "ticks_per_sec",
            "live_groups_at_start",
            "start_groups_s",
            "shard_wakeups_per_sec",
        ] {
            assert!(v[field].is_number(), "missing {field} in {last}");
        }
        let cpu = v["idle_cpu_percent_of_core"].as_f64().unwrap();
        assert!((0.0..=200.0 * 2.0).contains(&cpu), "{last}");
        // 150 replicas with logs, state machines and raft state: the
        // process grew.
        assert!(
            v["bytes_per_group_replica"].as_f64().unwrap() > 0.0,
            "{last}"
        );
        assert!(v["ticks_per_sec"].as_f64().unwrap() > 0.0, "{last}");
        // Every shard wakes at least for its ticks.
        assert!(v["shard_wakeups_per_sec"].as_f64().unwrap() > 0.0, "{last}");
        assert_eq!(v["config"]["groups"], 50);
        assert!(text.contains("% of one core"), "{text}");
    }
}
