//! Measurement: latency histograms and counters kept by each load
//! generator, the per-second progress line, CPU time, engine counters and
//! the final summary (human text and one JSON line).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histograms track exactly (longer ones saturate).
const LATENCY_US_MAX: u64 = 600_000_000;

/// A latency histogram in microseconds (3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

/// Whether an operation was a write or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A `Put` (SET).
    Write,
    /// A `Get` (GET).
    Read,
}

/// Counters and histograms of one load generator (one client executor or
/// one connection thread). Not shared: each generator owns one and sends
/// copies to the main thread.
pub struct Recorder {
    /// Operations completed in the current one-second interval.
    pub interval: Tally,
    /// Operations completed inside the measured window.
    pub measured: Tally,
    measure_start: Instant,
    measure_end: Instant,
}

/// Operations, errors and latencies over some period.
#[derive(Clone)]
pub struct Tally {
    /// Successful writes.
    pub writes: u64,
    /// Successful reads.
    pub reads: u64,
    /// Failed operations (gave up, or the state machine returned an error).
    pub errors: u64,
    /// Retries (not-leader redirects, busy, dropped, timeouts).
    pub retries: u64,
    /// Latency of successful writes, µs.
    pub write_us: Histogram<u64>,
    /// Latency of successful reads, µs.
    pub read_us: Histogram<u64>,
    /// Issue lateness of successful operations, µs: when the generator
    /// actually sent the request minus when it was due (open loop: its
    /// scheduled time; closed loop: 0). A growing lateness means the
    /// generator, not the system, fell behind the schedule.
    pub issue_lateness_us: Histogram<u64>,
    /// Service time of successful operations, µs: completion minus actual
    /// issue (what the system took, without the generator's queueing).
    pub service_us: Histogram<u64>,
    /// Failures by kind (at most [`ERROR_KINDS_MAX`] kinds; the rest are
    /// counted under `other`).
    pub error_kinds: BTreeMap<String, u64>,
}

/// Distinct error kinds a tally keeps apart.
pub const ERROR_KINDS_MAX: usize = 16;

impl Default for Tally {
    fn default() -> Self {
        Tally {
            writes: 0,
            reads: 0,
            errors: 0,
            retries: 0,
            write_us: new_histogram(),
            read_us: new_histogram(),
            issue_lateness_us: new_histogram(),
            service_us: new_histogram(),
            error_kinds: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        self.writes += other.writes;
        self.reads += other.reads;
        self.errors += other.errors;
        self.retries += other.retries;
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.write_us.add(&other.write_us);
        let _ = self.read_us.add(&other.read_us);
        let _ = self.issue_lateness_us.add(&other.issue_lateness_us);
        let _ = self.service_us.add(&other.service_us);
        for (kind, n) in &other.error_kinds {
            self.count_error_kind(kind, *n);
        }
    }

    fn count_error_kind(&mut self, kind: &str, n: u64) {
        let key = if self.error_kinds.len() < ERROR_KINDS_MAX || self.error_kinds.contains_key(kind)
        {
            kind
        } else {
            "other"
        };
        *self.error_kinds.entry(key.to_string()).or_insert(0) += n;
    }

    /// Latencies of writes and reads together.
    pub fn all_us(&self) -> Histogram<u64> {
        let mut all = self.write_us.clone();
        let _ = all.add(&self.read_us);
        all
    }

    fn record(&mut self, kind: OpKind, latency: Duration, lateness: Duration, service: Duration) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        // 0 is a valid lateness (closed loop).
        self.issue_lateness_us
            .saturating_record((lateness.as_micros() as u64).min(LATENCY_US_MAX));
        self.service_us.saturating_record(us(service));
        let us = us(latency);
        match kind {
            OpKind::Write => {
                self.writes += 1;
                self.write_us.saturating_record(us);
            }
            OpKind::Read => {
                self.reads += 1;
                self.read_us.saturating_record(us);
            }
        }
    }
}

impl Recorder {
    /// A recorder that counts into `measured` what completes in
    /// `[measure_start, measure_end)`.
    pub fn new(measure_start: Instant, measure_end: Instant) -> Self {
        Recorder {
            interval: Tally::default(),
            measured: Tally::default(),
            measure_start,
            measure_end,
        }
    }

    /// Records a successful operation that completed at `now`, was due at
    /// `intended` (open loop: its scheduled time, so a stalled system is
    /// charged for the queueing it causes) and actually went out at
    /// `issued` (`issued - intended` is the generator's lateness, `now -
    /// issued` the service time).
    pub fn success(&mut self, kind: OpKind, intended: Instant, issued: Instant, now: Instant) {
        let latency = now.saturating_duration_since(intended);
        let lateness = issued.saturating_duration_since(intended);
        let service = now.saturating_duration_since(issued);
        self.interval.record(kind, latency, lateness, service);
        if self.in_window(now) {
            self.measured.record(kind, latency, lateness, service);
        }
    }

    /// Records a failed operation and what failed it (a short, bounded
    /// label such as `Timeout` or `Request(NotLeader`).
    pub fn error(&mut self, now: Instant, kind: &str) {
        self.interval.errors += 1;
        self.interval.count_error_kind(kind, 1);
        if self.in_window(now) {
            self.measured.errors += 1;
            self.measured.count_error_kind(kind, 1);
        }
    }

    /// Records a retry.
    pub fn retry(&mut self, now: Instant) {
        self.interval.retries += 1;
        if self.in_window(now) {
            self.measured.retries += 1;
        }
    }

    /// Hands out the interval tally and starts a new one.
    pub fn take_interval(&mut self) -> Tally {
        std::mem::take(&mut self.interval)
    }

    fn in_window(&self, now: Instant) -> bool {
        now >= self.measure_start && now < self.measure_end
    }
}

/// Messages from load generators to the main thread.
pub enum Report {
    /// The tally of second `second` (counted from the load start).
    Interval {
        /// Seconds since the load started (1-based: the interval that ends
        /// then).
        second: u64,
        /// What completed in it.
        tally: Box<Tally>,
        /// Requests in flight at the end of the interval.
        in_flight: u64,
    },
    /// The generator stopped; what it measured in the window.
    Done {
        /// Completed inside the measured window.
        measured: Box<Tally>,
    },
    /// The generator failed before finishing.
    Failed(String),
}

/// One progress line.
pub fn progress_line(second: u64, tally: &Tally, in_flight: u64, warming_up: bool) -> String {
    let all = tally.all_us();
    let mut line = format!(
        "[{second:>4}s] writes/s {:>9} reads/s {:>9} p50 {:>7}us p99 {:>7}us max {:>8}us in-flight {in_flight:>6}",
        tally.writes,
        tally.reads,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.max(),
    );
    if tally.errors > 0 || tally.retries > 0 {
        let _ = write!(line, " errors {} retries {}", tally.errors, tally.retries);
    }
    if warming_up {
        line.push_str(" (warm-up)");
    }
    line
}

/// User + system CPU time of the whole process so far.
pub fn process_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid
    // `rusage` (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the process's threads, grouped by the prefix of their name
/// (`flotilla-n1-s0` → shard, `bench-*` → load generators, the rest),
/// read from `/proc/self/task`. Resolution: one clock tick (10 ms).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadCpu {
    /// Shard executors (`flotilla-*`).
    pub shards: Duration,
    /// Load generators (`bench-*`).
    pub clients: Duration,
    /// Everything else (main thread, async-io reactor, blocking pools...).
    pub other: Duration,
    /// The busiest threads: (name, cpu).
    pub threads: Vec<(String, Duration)>,
}

impl ThreadCpu {
    /// Reads `/proc/self/task/*/stat` (empty on failure).
    pub fn sample() -> ThreadCpu {
        let mut out = ThreadCpu::default();
        // SAFETY: sysconf has no preconditions.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return out;
        };
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((name, ticks)) = parse_task_stat(&stat) {
                let cpu = Duration::from_micros(ticks * 1_000_000 / ticks_per_sec);
                out.add(
                    &format!("{name}#{}", entry.file_name().to_string_lossy()),
                    cpu,
                );
            }
        }
        out
    }

    fn add(&mut self, name: &str, cpu: Duration) {
        if name.starts_with("flotilla-") {
            self.shards += cpu;
        } else if name.starts_with("bench-") {
            self.clients += cpu;
        } else {
            self.other += cpu;
        }
        self.threads.push((name.to_string(), cpu));
    }

    /// The CPU each thread used between `earlier` and `self`.
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        let mut out = ThreadCpu::default();
        for (name, cpu) in &self.threads {
            let before = earlier
                .threads
                .iter()
                .find(|(n, _)| n == name)
                .map_or(Duration::ZERO, |(_, c)| *c);
            out.add(name, cpu.saturating_sub(before));
        }
        out.threads.sort_by_key(|t| std::cmp::Reverse(t.1));
        out
    }
}

/// `(comm, utime + stime ticks)` of one `/proc/<pid>/task/<tid>/stat` line.
fn parse_task_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After ")": state(3) ppid(4) ... utime(14) stime(15).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Buckets of the WAL flush latency histogram.
pub const FLUSH_BUCKETS: usize = flotilla::FLUSH_LATENCY_BOUNDS_US.len() + 1;

/// The bucket bound (µs) under which quantile `q` of the flushes in
/// `buckets` completed (`None`: no flushes; `u64::MAX`: slower than every
/// bound).
pub fn flush_quantile_bound_us(buckets: &[u64; FLUSH_BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                flotilla::FLUSH_LATENCY_BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(u64::MAX),
            );
        }
    }
    Some(u64::MAX)
}

/// Engine counters summed over every shard of every node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// WAL fdatasync calls.
    pub fdatasyncs: u64,
    /// WAL frames (one write + one sync each).
    pub wal_flushes: u64,
    /// Entries written to the WAL.
    pub wal_entries: u64,
    /// Bytes written to the WAL.
    pub wal_bytes: u64,
    /// WAL frame flushes (DMA write + fdatasync) per latency bucket
    /// (`flotilla::FLUSH_LATENCY_BOUNDS_US`, the last: slower than all).
    pub wal_flush_buckets: [u64; FLUSH_BUCKETS],
    /// Sum of those flush latencies, µs.
    pub wal_flush_sum_us: u64,
    /// Transport frames sent.
    pub frames_sent: u64,
    /// Transport messages sent.
    pub messages_sent: u64,
    /// Transport bytes sent.
    pub transport_bytes: u64,
    /// Driver turns.
    pub turns: u64,
    /// Shard tick timer firings.
    pub ticks: u64,
    /// Entries committed.
    pub entries_committed: u64,
    /// Times a replica became leader (elections won).
    pub leader_elected: u64,
    /// The latest any shard's tick fired after its due time, since the
    /// node started (a max, not a counter: `since` keeps the later value).
    pub tick_lateness_max_us: u64,
}

impl EngineCounters {
    /// Adds the counters of one shard.
    pub fn add_shard(&mut self, s: &flotilla::ShardStats) {
        self.fdatasyncs += s.wal.fdatasyncs;
        self.wal_flushes += s.wal.flushes;
        self.wal_entries += s.wal.entries_written;
        self.wal_bytes += s.wal.bytes_written;
        for (sum, n) in self
            .wal_flush_buckets
            .iter_mut()
            .zip(s.wal.flush_latency.buckets.iter())
        {
            *sum += n;
        }
        self.wal_flush_sum_us += s.wal.flush_latency.sum_us;
        for p in &s.transport.peers {
            self.frames_sent += p.frames_sent;
            self.messages_sent += p.messages_sent;
            self.transport_bytes += p.bytes_sent;
        }
        self.turns += s.turns;
        self.ticks += s.ticks;
        self.entries_committed += s.entries_committed;
        self.leader_elected += s.leader_elected;
        self.tick_lateness_max_us = self
            .tick_lateness_max_us
            .max(s.tick_lateness_max.as_micros() as u64);
    }

    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &EngineCounters) -> EngineCounters {
        EngineCounters {
            fdatasyncs: self.fdatasyncs.saturating_sub(earlier.fdatasyncs),
            wal_flushes: self.wal_flushes.saturating_sub(earlier.wal_flushes),
            wal_entries: self.wal_entries.saturating_sub(earlier.wal_entries),
            wal_bytes: self.wal_bytes.saturating_sub(earlier.wal_bytes),
            wal_flush_buckets: std::array::from_fn(|i| {
                self.wal_flush_buckets[i].saturating_sub(earlier.wal_flush_buckets[i])
            }),
            wal_flush_sum_us: self
                .wal_flush_sum_us
                .saturating_sub(earlier.wal_flush_sum_us),
            frames_sent: self.frames_sent.saturating_sub(earlier.frames_sent),
            messages_sent: self.messages_sent.saturating_sub(earlier.messages_sent),
            transport_bytes: self.transport_bytes.saturating_sub(earlier.transport_bytes),
            turns: self.turns.saturating_sub(earlier.turns),
            ticks: self.ticks.saturating_sub(earlier.ticks),
            entries_committed: self
                .entries_committed
                .saturating_sub(earlier.entries_committed),
            leader_elected: self.leader_elected.saturating_sub(earlier.leader_elected),
            tick_lateness_max_us: self.tick_lateness_max_us,
        }
    }
}

/// The configuration echoed in the summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigEcho {
    /// `in-process` or `target`.
    pub mode: String,
    /// Nodes (in-process) or endpoints (target).
    pub nodes: usize,
    /// Shards per node (in-process).
    pub shards_per_node: Option<usize>,
    /// Groups (in-process).
    pub groups: Option<usize>,
    /// Value size in bytes.
    pub payload_bytes: usize,
    /// Requests in flight per group (in-process) or per connection (target).
    pub concurrency: usize,
    /// Open-loop rate in ops/s (`None`: closed loop).
    pub rate: Option<u64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up before the window, seconds.
    pub warmup_s: f64,
    /// Share of reads.
    pub reads: f64,
    /// Read consistency (in-process).
    pub read_consistency: String,
    /// Shard placement (in-process).
    pub placement: String,
    /// Load generator executors of their own (in-process; 0 when the
    /// generators run on the shards) or connections (target).
    pub clients: usize,
    /// The load generators run on the shard executors (in-process).
    pub clients_on_shards: bool,
    /// Key space.
    pub keys: u64,
    /// Target endpoints (target mode).
    pub targets: Vec<String>,
    /// CPUs available to the process.
    pub cpus: usize,
}

/// The final result of a run; serialized as the JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// The run's configuration.
    pub config: ConfigEcho,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    /// Writes completed in the window.
    pub writes: u64,
    /// Reads completed in the window.
    pub reads: u64,
    /// Failed operations in the window.
    pub errors: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Writes per second.
    pub writes_per_sec: f64,
    /// Reads per second.
    pub reads_per_sec: f64,
    /// All operations per second.
    pub ops_per_sec: f64,
    /// Latency of all operations, µs.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Issue lateness (actual issue − scheduled issue), p50, µs: 0 in a
    /// closed loop; in an open loop, how far behind its schedule the load
    /// generator sent requests.
    pub issue_lateness_p50_us: u64,
    /// Issue lateness, p99.
    pub issue_lateness_p99_us: u64,
    /// Issue lateness, maximum.
    pub issue_lateness_max_us: u64,
    /// Service time (completion − actual issue), p50, µs: the latency
    /// without the generator's own delay.
    pub service_p50_us: u64,
    /// Service time, p99.
    pub service_p99_us: u64,
    /// Service time, p99.9.
    pub service_p999_us: u64,
    /// Writes only: p50 / p99, µs.
    pub write_p50_us: u64,
    /// Writes only: p99.
    pub write_p99_us: u64,
    /// Reads only: p50, µs.
    pub read_p50_us: u64,
    /// Reads only: p99.
    pub read_p99_us: u64,
    /// WAL fdatasyncs per second, all shards of all nodes (in-process).
    pub fsyncs_per_sec: Option<f64>,
    /// Entries written per fdatasync (in-process).
    pub entries_per_fsync: Option<f64>,
    /// WAL MiB written per second (in-process).
    pub wal_mib_per_sec: Option<f64>,
    /// Mean WAL frame flush (DMA write + fdatasync), µs (in-process).
    pub wal_flush_mean_us: Option<f64>,
    /// Half of the WAL flushes took at most this long, µs (a bucket bound
    /// of `flotilla::FLUSH_LATENCY_BOUNDS_US`; in-process).
    pub wal_flush_p50_le_us: Option<u64>,
    /// 99 % of the WAL flushes took at most this long, µs (bucket bound).
    pub wal_flush_p99_le_us: Option<u64>,
    /// Transport frames per message (in-process; lower is better batching).
    pub frames_per_message: Option<f64>,
    /// Transport messages per frame.
    pub messages_per_frame: Option<f64>,
    /// Driver turns per second, all shards (in-process).
    pub turns_per_sec: Option<f64>,
    /// Process CPU (user + sys, all threads) per operation, µs.
    pub cpu_us_per_op: f64,
    /// Of which load generator threads, µs per operation.
    pub client_cpu_us_per_op: f64,
    /// Of which shard executors, µs per operation (in-process).
    pub shard_cpu_us_per_op: Option<f64>,
    /// CPU seconds per million operations (the issue's unit).
    pub cpu_s_per_million_ops: f64,
    /// Cores busy on average (process CPU / wall time).
    pub cores_busy: f64,
    /// Leaders per node at the start (in-process).
    pub leaders_per_node: Vec<usize>,
    /// Elections won during the window (in-process; 0 in a healthy run).
    pub leader_elections: Option<u64>,
    /// Latest tick of any shard since start, µs (in-process): how long a
    /// shard went without running its timer.
    pub tick_lateness_max_us: Option<u64>,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
}

/// Everything the summary is computed from.
pub struct Measured<'a> {
    /// The run's configuration.
    pub config: ConfigEcho,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// What the generators counted in the window.
    pub tally: &'a Tally,
    /// Process CPU over the window.
    pub process_cpu: Duration,
    /// Per-thread CPU over the window.
    pub threads: &'a ThreadCpu,
    /// Engine counters over the window (in-process).
    pub engine: Option<EngineCounters>,
    /// Leaders per node.
    pub leaders_per_node: Vec<usize>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Computes the summary.
pub fn summarize(m: &Measured<'_>) -> Summary {
    let secs = m.elapsed.as_secs_f64();
    let t = m.tally;
    let all = t.all_us();
    let ops = (t.writes + t.reads) as f64;
    let cpu_us = m.process_cpu.as_secs_f64() * 1e6;
    let engine = m.engine;
    Summary {
        config: m.config.clone(),
        elapsed_s: secs,
        writes: t.writes,
        reads: t.reads,
        errors: t.errors,
        retries: t.retries,
        writes_per_sec: ratio(t.writes as f64, secs),
        reads_per_sec: ratio(t.reads as f64, secs),
        ops_per_sec: ratio(ops, secs),
        p50_us: all.value_at_quantile(0.5),
        p90_us: all.value_at_quantile(0.9),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        mean_us: if all.is_empty() { 0.0 } else { all.mean() },
        issue_lateness_p50_us: t.issue_lateness_us.value_at_quantile(0.5),
        issue_lateness_p99_us: t.issue_lateness_us.value_at_quantile(0.99),
        issue_lateness_max_us: t.issue_lateness_us.max(),
        service_p50_us: t.service_us.value_at_quantile(0.5),
        service_p99_us: t.service_us.value_at_quantile(0.99),
        service_p999_us: t.service_us.value_at_quantile(0.999),
        write_p50_us: t.write_us.value_at_quantile(0.5),
        write_p99_us: t.write_us.value_at_quantile(0.99),
        read_p50_us: t.read_us.value_at_quantile(0.5),
        read_p99_us: t.read_us.value_at_quantile(0.99),
        fsyncs_per_sec: engine.map(|e| ratio(e.fdatasyncs as f64, secs)),
        entries_per_fsync: engine.map(|e| ratio(e.wal_entries as f64, e.fdatasyncs as f64)),
        wal_mib_per_sec: engine.map(|e| ratio(e.wal_bytes as f64 / (1 << 20) as f64, secs)),
        wal_flush_mean_us: engine.and_then(|e| {
            let n: u64 = e.wal_flush_buckets.iter().sum();
            (n > 0).then(|| e.wal_flush_sum_us as f64 / n as f64)
        }),
        wal_flush_p50_le_us: engine
            .and_then(|e| flush_quantile_bound_us(&e.wal_flush_buckets, 0.5)),
        wal_flush_p99_le_us: engine
            .and_then(|e| flush_quantile_bound_us(&e.wal_flush_buckets, 0.99)),
        frames_per_message: engine.map(|e| ratio(e.frames_sent as f64, e.messages_sent as f64)),
        messages_per_frame: engine.map(|e| ratio(e.messages_sent as f64, e.frames_sent as f64)),
        turns_per_sec: engine.map(|e| ratio(e.turns as f64, secs)),
        cpu_us_per_op: ratio(cpu_us, ops),
        client_cpu_us_per_op: ratio(m.threads.clients.as_secs_f64() * 1e6, ops),
        shard_cpu_us_per_op: engine.map(|_| ratio(m.threads.shards.as_secs_f64() * 1e6, ops)),
        cpu_s_per_million_ops: ratio(cpu_us, ops),
        cores_busy: ratio(m.process_cpu.as_secs_f64(), secs),
        leaders_per_node: m.leaders_per_node.clone(),
        leader_elections: engine.map(|e| e.leader_elected),
        tick_lateness_max_us: engine.map(|e| e.tick_lateness_max_us),
        error_kinds: t.error_kinds.clone(),
    }
}

fn bound(v: Option<u64>) -> String {
    match v {
        None => "n/a".into(),
        Some(u64::MAX) => "inf".into(),
        Some(b) => b.to_string(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

/// The human summary (several lines, no trailing newline).
pub fn render(s: &Summary, threads: &ThreadCpu) -> String {
    let c = &s.config;
    let mut out = String::new();
    let _ = writeln!(out, "---- flotilla bench summary ({}) ----", c.mode);
    let _ = writeln!(
        out,
        "config     nodes {} shards/node {} groups {} payload {} B concurrency {} {} reads {:.2} placement {} clients {}",
        c.nodes,
        c.shards_per_node.map_or("-".into(), |v| v.to_string()),
        c.groups.map_or("-".into(), |v| v.to_string()),
        c.payload_bytes,
        c.concurrency,
        c.rate.map_or("closed loop".to_string(), |r| format!("open loop {r} ops/s")),
        c.reads,
        c.placement,
        if c.clients_on_shards {
            "on the shards".to_string()
        } else {
            c.clients.to_string()
        },
    );
    let _ = writeln!(
        out,
        "throughput writes/s {:.0}  reads/s {:.0}  ({} writes, {} reads, {} errors, {} retries in {:.2} s)",
        s.writes_per_sec, s.reads_per_sec, s.writes, s.reads, s.errors, s.retries, s.elapsed_s
    );
    let _ = writeln!(
        out,
        "latency    p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us  mean {:.0} us",
        s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.mean_us
    );
    if c.rate.is_some() {
        let _ = writeln!(
            out,
            "open loop  issue lateness (generator behind schedule) p50 {} us  p99 {} us  max {} us; service time (from actual issue) p50 {} us  p99 {} us  p99.9 {} us",
            s.issue_lateness_p50_us,
            s.issue_lateness_p99_us,
            s.issue_lateness_max_us,
            s.service_p50_us,
            s.service_p99_us,
            s.service_p999_us
        );
    }
    let _ = writeln!(
        out,
        "wal        fdatasyncs/s {}  entries/fdatasync {}  MiB/s {}  flush (write + fdatasync) mean {} us, p50 <= {} us, p99 <= {} us",
        opt(s.fsyncs_per_sec, 0),
        opt(s.entries_per_fsync, 1),
        opt(s.wal_mib_per_sec, 1),
        opt(s.wal_flush_mean_us, 0),
        bound(s.wal_flush_p50_le_us),
        bound(s.wal_flush_p99_le_us)
    );
    let _ = writeln!(
        out,
        "transport  frames/message {}  messages/frame {}  driver turns/s {}",
        opt(s.frames_per_message, 4),
        opt(s.messages_per_frame, 1),
        opt(s.turns_per_sec, 0)
    );
    let _ = writeln!(
        out,
        "cpu        {:.2} us/op ({:.2} CPU-s per million ops; shards {} us/op, load generators {:.2} us/op, other {:.2} us/op), {:.2} cores busy",
        s.cpu_us_per_op,
        s.cpu_s_per_million_ops,
        opt(s.shard_cpu_us_per_op, 2),
        s.client_cpu_us_per_op,
        ratio(threads.other.as_secs_f64() * 1e6, (s.writes + s.reads) as f64),
        s.cores_busy
    );
    let busiest: Vec<String> = threads
        .threads
        .iter()
        .take(8)
        .map(|(n, c)| format!("{n} {:.0}%", ratio(c.as_secs_f64() * 100.0, s.elapsed_s)))
        .collect();
    let _ = writeln!(out, "threads    {}", busiest.join(", "));
    if !s.leaders_per_node.is_empty() {
        let _ = writeln!(
            out,
            "leaders    per node at start {:?}; elections during the window {}; latest tick {} us late",
            s.leaders_per_node,
            s.leader_elections.map_or("n/a".into(), |n| n.to_string()),
            s.tick_lateness_max_us.map_or("n/a".into(), |n| n.to_string())
        );
    }
    if !s.error_kinds.is_empty() {
        let kinds: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = writeln!(out, "errors     {}", kinds.join(", "));
    }
    out.pop();
    out
}

/// The JSON line.
pub fn json_line(s: &Summary) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> ConfigEcho {
        ConfigEcho {
            mode: "in-process".into(),
            nodes: 3,
            shards_per_node: Some(1),
            groups: Some(48),
            payload_bytes: 16,
            concurrency: 64,
            rate: None,
            duration_s: 2.0,
            warmup_s: 1.0,
            reads: 0.25,
            read_consistency: "linearizable".into(),
            placement: "pinned".into(),
            clients: 1,
            clients_on_shards: false,
            keys: 1000,
            targets: vec![],
            cpus: 2,
        }
    }

    #[test]
    fn recorder_counts_only_the_measured_window() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_secs(1);
        let end = t0 + Duration::from_secs(3);
        let mut r = Recorder::new(start, end);
        // Before the window: interval only.
        r.success(OpKind::Write, t0, t0, t0 + Duration::from_millis(1));
        // In the window: both.
        r.success(
            OpKind::Write,
            start,
            start + Duration::from_micros(40),
            start + Duration::from_micros(100),
        );
        r.success(
            OpKind::Read,
            start,
            start,
            start + Duration::from_micros(300),
        );
        r.error(start + Duration::from_millis(5), "Timeout");
        r.retry(start + Duration::from_millis(5));
        // At the end (exclusive): interval only.
        r.success(OpKind::Write, end, end, end);
        assert_eq!(r.measured.writes, 1);
        assert_eq!(r.measured.reads, 1);
        assert_eq!(r.measured.errors, 1);
        assert_eq!(r.measured.error_kinds.get("Timeout"), Some(&1));
        assert_eq!(r.measured.retries, 1);
        assert_eq!(r.interval.writes, 3);
        let taken = r.take_interval();
        assert_eq!(taken.writes, 3);
        assert_eq!(r.interval.writes, 0);
        // Open loop: latency counts from the intended time.
        assert_eq!(r.measured.write_us.max(), 100);
        assert!((299..=301).contains(&r.measured.read_us.max()));
        // Issue lateness and service time split the write's 100 µs.
        assert_eq!(r.measured.issue_lateness_us.max(), 40);
        assert_eq!(r.measured.service_us.min(), 60);
        assert!((299..=301).contains(&r.measured.service_us.max()));
    }

    #[test]
    fn summary_math() {
        let mut tally = Tally::default();
        for us in 1..=1000u64 {
            tally.write_us.record(us).unwrap();
        }
        tally.writes = 1000;
        tally.reads = 1000;
        for _ in 0..1000 {
            tally.read_us.record(2000).unwrap();
        }
        let threads = ThreadCpu {
            shards: Duration::from_millis(3),
            clients: Duration::from_millis(1),
            other: Duration::ZERO,
            threads: vec![],
        };
        let s = summarize(&Measured {
            config: echo(),
            elapsed: Duration::from_secs(2),
            tally: &tally,
            process_cpu: Duration::from_millis(4),
            threads: &threads,
            engine: Some(EngineCounters {
                fdatasyncs: 100,
                wal_entries: 3000,
                leader_elected: 2,
                frames_sent: 50,
                messages_sent: 200,
                ..Default::default()
            }),
            leaders_per_node: vec![16, 16, 16],
        });
        assert_eq!(s.writes_per_sec, 500.0);
        assert_eq!(s.reads_per_sec, 500.0);
        assert_eq!(s.ops_per_sec, 1000.0);
        // Half the samples are 1..=1000, half are 2000.
        assert!((995..=1001).contains(&s.p50_us), "{}", s.p50_us);
        assert!((1995..=2001).contains(&s.p99_us), "{}", s.p99_us);
        assert!((1995..=2001).contains(&s.max_us), "{}", s.max_us);
        assert_eq!(s.write_p99_us, 990);
        assert_eq!(s.fsyncs_per_sec, Some(50.0));
        assert_eq!(s.leader_elections, Some(2));
        assert_eq!(s.entries_per_fsync, Some(30.0));
        assert_eq!(s.frames_per_message, Some(0.25));
        assert_eq!(s.messages_per_frame, Some(4.0));
        // 4 ms of CPU over 2000 ops = 2 µs/op.
        assert_eq!(s.cpu_us_per_op, 2.0);
        assert_eq!(s.shard_cpu_us_per_op, Some(1.5));
        assert_eq!(s.client_cpu_us_per_op, 0.5);
        assert!((s.cores_busy - 0.002).abs() < 1e-9);
        let text = render(&s, &threads);
        assert!(text.contains("writes/s 500"), "{text}");
    }

    #[test]
    fn flush_quantiles_are_bucket_bounds() {
        let mut b = [0u64; FLUSH_BUCKETS];
        assert_eq!(flush_quantile_bound_us(&b, 0.5), None);
        // 60 flushes ≤ 500 µs (bucket 2), 39 ≤ 2.5 ms (bucket 4), 1 slower
        // than every bound.
        b[2] = 60;
        b[4] = 39;
        b[FLUSH_BUCKETS - 1] = 1;
        assert_eq!(flush_quantile_bound_us(&b, 0.5), Some(500));
        assert_eq!(flush_quantile_bound_us(&b, 0.99), Some(2_500));
        assert_eq!(flush_quantile_bound_us(&b, 1.0), Some(u64::MAX));
        let mut later = EngineCounters {
            wal_flush_buckets: b,
            wal_flush_sum_us: 1000,
            ..Default::default()
        };
        let mut earlier = EngineCounters::default();
        earlier.wal_flush_buckets[2] = 10;
        later.fdatasyncs = 100;
        let d = later.since(&earlier);
        assert_eq!(d.wal_flush_buckets[2], 50);
        assert_eq!(d.wal_flush_sum_us, 1000);
    }

    #[test]
    fn empty_run_does_not_divide_by_zero() {
        let tally = Tally::default();
        let s = summarize(&Measured {
            config: echo(),
            elapsed: Duration::ZERO,
            tally: &tally,
            process_cpu: Duration::ZERO,
            threads: &ThreadCpu::default(),
            engine: None,
            leaders_per_node: vec![],
        });
        assert_eq!(s.writes_per_sec, 0.0);
        assert_eq!(s.cpu_us_per_op, 0.0);
        assert_eq!(s.fsyncs_per_sec, None);
        let v: serde_json::Value = serde_json::from_str(&json_line(&s)).unwrap();
        assert!(v["fsyncs_per_sec"].is_null());
    }

    #[test]
    fn json_line_has_the_required_fields() {
        let mut tally = Tally {
            writes: 10,
            ..Tally::default()
        };
        tally.write_us.record(42).unwrap();
        let s = summarize(&Measured {
            config: echo(),
            elapsed: Duration::from_secs(1),
            tally: &tally,
            process_cpu: Duration::from_micros(50),
            threads: &ThreadCpu::default(),
            engine: Some(EngineCounters::default()),
            leaders_per_node: vec![1, 0, 1],
        });
        let line = json_line(&s);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "writes_per_sec",
            "reads_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "fsyncs_per_sec",
            "entries_per_fsync",
            "frames_per_message",
            "cpu_us_per_op",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {line}");
        }
        assert_eq!(v["writes_per_sec"], 10.0);
        assert_eq!(v["p50_us"], 42);
        assert_eq!(v["cpu_us_per_op"], 5.0);
        assert_eq!(v["config"]["groups"], 48);
        assert_eq!(v["config"]["reads"], 0.25);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut t = Tally::default();
        for i in 0..40 {
            t.count_error_kind(&format!("kind{i}"), 1);
        }
        t.count_error_kind("kind0", 5);
        assert_eq!(t.error_kinds.len(), ERROR_KINDS_MAX + 1);
        assert_eq!(t.error_kinds.get("kind0"), Some(&6));
        assert_eq!(
            t.error_kinds.get("other"),
            Some(&(40 - ERROR_KINDS_MAX as u64))
        );
        let mut merged = Tally::default();
        merged.merge(&t);
        assert_eq!(merged.error_kinds, t.error_kinds);
    }

    #[test]
    fn task_stat_parsing() {
        let line = "1234 (flotilla-n1-s0) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(
            parse_task_stat(line),
            Some(("flotilla-n1-s0".to_string(), 300))
        );
        // A name with spaces and parentheses.
        let line = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0";
        assert_eq!(parse_task_stat(line), Some(("a (b) c".to_string(), 3)));
        assert_eq!(parse_task_stat("garbage"), None);
        let mut t = ThreadCpu::default();
        t.add("flotilla-n1-s0#1", Duration::from_millis(5));
        t.add("bench-client-0#2", Duration::from_millis(2));
        t.add("main#3", Duration::from_millis(1));
        let mut earlier = ThreadCpu::default();
        earlier.add("flotilla-n1-s0#1", Duration::from_millis(1));
        let d = t.since(&earlier);
        assert_eq!(d.shards, Duration::from_millis(4));
        assert_eq!(d.clients, Duration::from_millis(2));
        assert_eq!(d.other, Duration::from_millis(1));
        assert_eq!(d.threads[0].0, "flotilla-n1-s0#1");
    }
}
