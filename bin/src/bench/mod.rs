//! `flotilla bench`: starts a cluster in this process and drives it, or
//! (`--target`) drives an already-running cluster through its Redis-protocol
//! endpoints.
//!
//! ```text
//!  main thread ───────────── timeline: start ─warm-up─► window ──────► end
//!   │ starts N NodeHosts (real TCP on loopback, real WAL + fdatasync)
//!   │ starts G groups on every node, waits for every leader
//!   │ spawns load generators ──► bench-client-k (glommio executors):
//!   │                             closed loop: `concurrency` tasks per group
//!   │                             open loop: a pacer spawning due requests
//!   │                             each request → the group's leader's NodeHost
//!   │ ◄── Report::Interval every second (flume): progress line
//!   │ samples getrusage, /proc/self/task and NodeHost::stats at the window
//!   │ edges; ◄── Report::Done: the window's histograms
//!   └ prints the summary, and with --json one JSON object as the last line
//! ```
//!
//! See `bin/src/bench/README.md` for the commands and measured figures.

mod idle;
mod inproc;
mod parse;
mod resp;
mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use stats::{ConfigEcho, Report, Summary, Tally, ThreadCpu};

/// Options of `flotilla bench` (boxed: the subcommand enum stays small).
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  flotilla bench                                   # defaults: 3 nodes x 48 groups, 16 B, closed loop, 10 s\n  flotilla bench --groups 1 --concurrency 512\n  flotilla bench --payload 1KiB --duration 20s --json\n  flotilla bench --rate 100k                       # open loop: latency at a fixed rate\n  flotilla bench --idle --groups 10000             # what 10,000 quiesced groups per node cost\n  flotilla bench --target 127.0.0.1:6381,127.0.0.1:6382,127.0.0.1:6383"
)]
pub struct BenchArgs {
    /// The options.
    #[command(flatten)]
    pub options: Box<BenchOptions>,
}

/// The options of `flotilla bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Nodes of the in-process cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Shards (glommio executors) per node. Default: CPUs / nodes, rounded
    /// up (at least 1).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Raft groups; every node is a founding member of each.
    #[arg(long, default_value_t = 48)]
    pub groups: usize,
    /// Value size of each write (`16`, `1KiB`).
    #[arg(long, default_value = "16", value_parser = parse::bytes)]
    pub payload: usize,
    /// Requests in flight per group (in-process), or pipeline depth per
    /// connection (--target). Closed loop: always this many; open loop: the
    /// cap on outstanding requests (beyond it, requests queue and their
    /// latency counts from their scheduled time).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Open loop at this total rate in ops/s (`150000`, `150k`). Without it:
    /// closed loop (maximum throughput).
    #[arg(long, value_parser = parse::rate)]
    pub rate: Option<u64>,
    /// Length of the measured window (`30s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub duration: Duration,
    /// Load before the measured window (leader caches, WAL segments, TCP
    /// connections warm up; not counted).
    #[arg(long, default_value = "2s", value_parser = parse::duration)]
    pub warmup: Duration,
    /// Share of reads, 0.0..=1.0 (`0.1` or `10%`); the rest are writes.
    #[arg(long, default_value = "0", value_parser = parse::fraction)]
    pub reads: f64,
    /// Consistency of in-process reads.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub read_consistency: Consistency,
    /// Distinct keys written (spread over the groups).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Shard placement: `pinned` (shard s of node i on CPU (i*shards+s) %
    /// CPUs) or `unbound` (the kernel schedules).
    #[arg(long, value_enum, default_value_t = PlacementArg::Pinned)]
    pub placement: PlacementArg,
    /// Load generators on executors of their own (in-process), each
    /// driving a share of the groups; unbound. Without it the generators
    /// run on the shard executors (one per shard that leads groups when
    /// the load starts, driving those groups), as `flotilla node` serves
    /// its clients: no generator thread competes for the CPUs, and a
    /// request to a group of the generator's own shard costs no
    /// cross-thread wake-up.
    #[arg(long, conflicts_with = "target")]
    pub clients: Option<usize>,
    /// Pinned DMA memory per shard (`2MiB`).
    #[arg(long, default_value = "2MiB", value_parser = parse::bytes)]
    pub io_memory: usize,
    /// glommio preempt timer of every shard.
    #[arg(long, default_value = "2ms", value_parser = parse::duration)]
    pub preempt_timer: Duration,
    /// Keep the nodes' data here (default: a temporary directory, removed
    /// afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Deadline of each request (a request still failing after it counts
    /// as an error).
    #[arg(long, default_value = "5s", value_parser = parse::duration)]
    pub timeout: Duration,
    /// Print one JSON object with the results as the last line.
    #[arg(long)]
    pub json: bool,
    /// Drive an already-running cluster through its Redis-protocol
    /// endpoints instead (`host:port,host:port,...`): SET/GET over
    /// pipelined RESP2 connections.
    #[arg(long, value_parser = parse_targets)]
    pub target: Option<Targets>,
    /// Connections per endpoint (--target).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Idle mode (in-process): start `--groups` groups, write
    /// `--idle-writes` entries to each, wait until every replica quiesces,
    /// then measure over `--duration` what the idle cluster costs: CPU as
    /// % of one core, messages/frames/ticks per second, and memory per
    /// group replica. No load runs in the window.
    #[arg(long, conflicts_with_all = ["rate", "target"])]
    pub idle: bool,
    /// Idle mode: writes per group before quiescing (so logs and state
    /// machines are not empty).
    #[arg(long, default_value_t = 4)]
    pub idle_writes: usize,
    /// Group starts (and idle-mode writes) in flight at once while the
    /// cluster is set up.
    #[arg(long, default_value_t = 256)]
    pub start_concurrency: usize,
    /// Idle mode: how long to wait for every group replica to quiesce
    /// before measuring anyway (the live count is reported).
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    pub quiesce_timeout: Duration,
}

/// The endpoints of `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<std::net::SocketAddr>);

fn parse_targets(s: &str) -> Result<Targets, String> {
    parse::endpoints(s).map(Targets)
}

/// Read consistency flag.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex.
    Linearizable,
    /// Leader lease.
    Lease,
    /// Local, possibly stale.
    Stale,
}

/// Placement flag.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementArg {
    /// One CPU per shard, round robin over the CPUs.
    Pinned,
    /// Shards float over every CPU.
    Unbound,
}

impl BenchOptions {
    /// Shards per node after applying the default.
    pub fn shards_per_node(&self) -> usize {
        self.shards
            .unwrap_or_else(|| flotilla::available_cpus().div_ceil(self.nodes.max(1)))
            .max(1)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--nodes", self.nodes),
            ("--groups", self.groups),
            ("--concurrency", self.concurrency),
            ("--clients", self.clients.unwrap_or(1)),
            ("--connections", self.connections),
            ("--start-concurrency", self.start_concurrency),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.nodes > 64 {
            return Err(format!("--nodes {} is more than 64", self.nodes));
        }
        if self.concurrency > 1 << 16 {
            return Err(format!("--concurrency {} is over 65536", self.concurrency));
        }
        if self.payload > 64 << 20 {
            return Err(format!(
                "--payload {} is over the 64 MiB value limit",
                self.payload
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.idle && (self.target.is_some() || self.rate.is_some()) {
            return Err("--idle runs no load: it takes neither --target nor --rate".into());
        }
        if self.groups > 1_000_000 {
            return Err(format!("--groups {} is over 1,000,000", self.groups));
        }
        Ok(())
    }

    fn echo(&self, mode: &str) -> ConfigEcho {
        let target = self.target.clone().map(|t| t.0).unwrap_or_default();
        let in_process = target.is_empty();
        ConfigEcho {
            mode: mode.to_string(),
            nodes: if in_process { self.nodes } else { target.len() },
            shards_per_node: in_process.then(|| self.shards_per_node()),
            groups: in_process.then_some(self.groups),
            payload_bytes: self.payload,
            concurrency: self.concurrency,
            rate: self.rate,
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            reads: self.reads,
            read_consistency: format!("{:?}", self.read_consistency).to_lowercase(),
            clients_on_shards: in_process && self.clients.is_none(),
            placement: if in_process {
                format!("{:?}", self.placement).to_lowercase()
            } else {
                "-".into()
            },
            clients: if in_process {
                self.clients.map_or(0, |c| c.min(self.groups))
            } else {
                target.len() * self.connections
            },
            keys: self.keys,
            targets: target.iter().map(ToString::to_string).collect(),
            cpus: flotilla::available_cpus(),
        }
    }
}

/// Runs the benchmark, printing progress, the summary and (with `--json`)
/// the JSON line on stdout.
///
/// # Errors
/// A message for the user when the cluster cannot start or the load fails.
pub fn run(args: BenchArgs) -> Result<(), String> {
    // Engine logs only when asked (`RUST_LOG=warn`), on stderr: stdout
    // stays progress, summary and the JSON line.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::service::init_logging(crate::config::LogFormat::Text);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    execute(&args.options, &mut out).map(|_| ())
}

/// What a run measured (printed by the run; tests inspect it).
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Outcome {
    /// A load run (closed or open loop).
    Load(Box<Summary>),
    /// An idle run (`--idle`).
    Idle(Box<idle::IdleSummary>),
}

/// When request `n` of an open-loop schedule of `rate` per second from
/// `start` is due, the schedule starting at `phase` (0..1) of its period:
/// several generators or connections, each at its own phase, take turns
/// instead of all issuing at the same instants.
pub(super) fn due_at(start: Instant, rate: f64, phase: f64, n: u64) -> Instant {
    start + Duration::from_secs_f64((n as f64 + phase) / rate)
}

#[cfg(test)]
impl Outcome {
    /// The load summary (panics on an idle outcome: tests only).
    pub(crate) fn load(self) -> Summary {
        match self {
            Outcome::Load(s) => *s,
            Outcome::Idle(s) => panic!("an idle outcome where a load run was expected: {s:?}"),
        }
    }
}

/// Runs the benchmark writing to `out`; returns the summary.
pub(crate) fn execute(args: &BenchOptions, out: &mut dyn Write) -> Result<Outcome, String> {
    args.validate()?;
    if args.target.is_some() {
        resp::run(args, out).map(|s| Outcome::Load(Box::new(s)))
    } else {
        inproc::run(args, out)
    }
}

/// Parses `flotilla bench` flags (tests).
#[cfg(test)]
pub(crate) fn parse_for_tests(args: &[&str]) -> BenchOptions {
    use clap::Parser;
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    *Cli::try_parse_from(all)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .bench
        .options
}

/// The options of a tiny in-process run for tests (1 s, 300 ms of warm-up,
/// one unbound shard per node with 1 MiB of DMA memory and a 1 ms preempt
/// timer, JSON, data in `dir`) plus `extra`.
#[cfg(test)]
pub(crate) fn tiny_run_for_tests(dir: &std::path::Path, extra: &[&str]) -> BenchOptions {
    let dir = dir.to_string_lossy().to_string();
    let mut args = vec![
        "--shards",
        "1",
        "--placement",
        "unbound",
        "--io-memory",
        "1MiB",
        "--preempt-timer",
        "1ms",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--json",
        "--data-dir",
        &dir,
    ];
    args.extend_from_slice(extra);
    parse_for_tests(&args)
}

/// Timeline of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    /// Load starts.
    pub start: Instant,
    /// The measured window opens.
    pub measure_start: Instant,
    /// The window closes; generators stop issuing.
    pub measure_end: Instant,
}

impl Timeline {
    fn new(args: &BenchOptions, start: Instant) -> Timeline {
        let measure_start = start + args.warmup;
        Timeline {
            start,
            measure_start,
            measure_end: measure_start + args.duration,
        }
    }
}

/// What the main thread samples at each edge of the window.
pub(crate) struct Sample {
    process_cpu: Duration,
    threads: ThreadCpu,
    engine: Option<stats::EngineCounters>,
}

/// What `collect` hands back.
pub(crate) struct Collected {
    tally: Tally,
    process_cpu: Duration,
    threads: ThreadCpu,
    engine: Option<stats::EngineCounters>,
}

/// The main thread's loop: prints a progress line per second as the
/// generators report, samples CPU and engine counters at the window's
/// edges (`sample_engine`), and gathers the generators' final tallies.
pub(crate) fn collect(
    timeline: Timeline,
    generators: usize,
    reports: &flume::Receiver<Report>,
    out: &mut dyn Write,
    sample_engine: &mut dyn FnMut() -> Option<stats::EngineCounters>,
    drain_deadline: Duration,
) -> Result<Collected, String> {
    let sample = |engine: &mut dyn FnMut() -> Option<stats::EngineCounters>| {
        let process_cpu = stats::process_cpu();
        let threads = ThreadCpu::sample();
        Sample {
            process_cpu,
            threads,
            engine: engine(),
        }
    };
    let mut first: Option<Sample> = None;
    let mut last: Option<Sample> = None;
    // Interval tallies by second until every generator reported it.
    let mut pending: std::collections::BTreeMap<u64, (usize, Tally, u64)> = Default::default();
    let mut done = 0usize;
    let mut measured = Tally::default();
    let mut failure: Option<String> = None;
    let hard_end = timeline.measure_end + drain_deadline;
    while done < generators {
        let now = Instant::now();
        if first.is_none() && now >= timeline.measure_start {
            first = Some(sample(sample_engine));
            continue;
        }
        if last.is_none() && now >= timeline.measure_end {
            last = Some(sample(sample_engine));
            continue;
        }
        if now >= hard_end {
            return Err(format!(
                "{} of {generators} load generators did not finish within {:?} after the window",
                generators - done,
                drain_deadline
            ));
        }
        let wake = if first.is_none() {
            timeline.measure_start
        } else if last.is_none() {
            timeline.measure_end
        } else {
            hard_end
        };
        match reports.recv_deadline(wake) {
            Ok(Report::Interval {
                second,
                tally,
                in_flight,
            }) => {
                let entry = pending
                    .entry(second)
                    .or_insert_with(|| (0, Tally::default(), 0));
                entry.0 += 1;
                entry.1.merge(&tally);
                entry.2 += in_flight;
                if entry.0 == generators {
                    let (_, tally, in_flight) = pending.remove(&second).unwrap_or_default();
                    let at = timeline.start + Duration::from_secs(second);
                    if at <= timeline.measure_end + Duration::from_millis(500) {
                        let warming = at <= timeline.measure_start;
                        let _ = writeln!(
                            out,
                            "{}",
                            stats::progress_line(second, &tally, in_flight, warming)
                        );
                        let _ = out.flush();
                    }
                }
            }
            Ok(Report::Done { measured: m, .. }) => {
                done += 1;
                measured.merge(&m);
            }
            Ok(Report::Failed(reason)) => {
                done += 1;
                failure.get_or_insert(reason);
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => {
                if done < generators {
                    return Err(failure.unwrap_or_else(|| {
                        "a load generator exited without reporting".to_string()
                    }));
                }
            }
        }
    }
    if let Some(reason) = failure {
        return Err(reason);
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err("the load generators stopped before the measured window ended".into());
    };
    Ok(Collected {
        tally: measured,
        process_cpu: last.process_cpu.saturating_sub(first.process_cpu),
        threads: last.threads.since(&first.threads),
        engine: match (last.engine, first.engine) {
            (Some(l), Some(f)) => Some(l.since(&f)),
            _ => None,
        },
    })
}

/// Summarizes and prints (summary, then the JSON line last).
pub(crate) fn finish(
    args: &BenchOptions,
    mode: &str,
    timeline: Timeline,
    collected: Collected,
    leaders_per_node: Vec<usize>,
    out: &mut dyn Write,
) -> Result<Summary, String> {
    let summary = stats::summarize(&stats::Measured {
        config: args.echo(mode),
        elapsed: timeline.measure_end - timeline.measure_start,
        tally: &collected.tally,
        process_cpu: collected.process_cpu,
        threads: &collected.threads,
        engine: collected.engine,
        leaders_per_node,
    });
    let io = |e: std::io::Error| format!("cannot write the results: {e}");
    writeln!(out, "{}", stats::render(&summary, &collected.threads)).map_err(io)?;
    if args.json {
        writeln!(out, "{}", stats::json_line(&summary)).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(summary)
}

/// A small, fast, seedable PRNG (splitmix64) for keys and the read/write
/// mix: the benchmark needs spread, not cryptography.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchOptions, clap::Error> {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| *c.bench.options)
    }

    #[test]
    fn defaults_reproduce_the_issue_setup() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.nodes, 3);
        assert_eq!(a.groups, 48);
        assert_eq!(a.payload, 16);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.reads, 0.0);
        assert_eq!(a.rate, None);
        assert!(!a.json);
        assert!(a.target.is_none());
        let cpus = flotilla::available_cpus();
        assert_eq!(a.shards_per_node(), cpus.div_ceil(3).max(1));
        assert!(a.validate().is_ok());
    }

    #[test]
    fn flags_parse_units_and_mixes() {
        let a = parse(&[
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--payload",
            "1KiB",
            "--reads",
            "0.3",
            "--rate",
            "50k",
            "--shards",
            "2",
            "--placement",
            "unbound",
            "--read-consistency",
            "lease",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.warmup, Duration::ZERO);
        assert_eq!(a.payload, 1024);
        assert_eq!(a.reads, 0.3);
        assert_eq!(a.rate, Some(50_000));
        assert_eq!(a.shards_per_node(), 2);
        assert_eq!(a.placement, PlacementArg::Unbound);
        assert_eq!(a.read_consistency, Consistency::Lease);
        assert!(a.json);
        let echo = a.echo("in-process");
        assert_eq!(echo.rate, Some(50_000));
        assert_eq!(echo.placement, "unbound");
        assert_eq!(echo.read_consistency, "lease");

        assert!(parse(&["--reads", "1.5"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--groups", "0"]).unwrap().validate().is_err());
        assert!(parse(&["--duration", "0s"]).unwrap().validate().is_err());
        let idle = parse(&["--idle", "--groups", "10000"]).unwrap();
        assert!(idle.idle && idle.validate().is_ok());
        assert_eq!(idle.idle_writes, 4);
        assert_eq!(idle.start_concurrency, 256);
        assert!(parse(&["--clients", "2", "--target", "127.0.0.1:6381"]).is_err());
        assert!(parse(&["--clients", "0"]).unwrap().validate().is_err());
        assert!(parse(&["--idle", "--rate", "10"]).is_err());
        assert!(parse(&["--idle", "--target", "127.0.0.1:6381"]).is_err());
        assert!(parse(&["--start-concurrency", "0"])
            .unwrap()
            .validate()
            .is_err());

        let t = parse(&["--target", "127.0.0.1:6381,127.0.0.1:6382"]).unwrap();
        assert_eq!(t.target.as_ref().map(|t| t.0.len()), Some(2));
        let echo = t.echo("target");
        assert_eq!(echo.nodes, 2);
        assert_eq!(echo.clients, 8);
        assert_eq!(echo.groups, None);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_500..10_500).contains(c)),
            "{counts:?}"
        );
        let mean: f64 = (0..10_000).map(|_| r.unit()).sum::<f64>() / 10_000.0;
        assert!((0.48..0.52).contains(&mean), "{mean}");
    }
}
