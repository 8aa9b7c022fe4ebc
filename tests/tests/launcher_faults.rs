//! Jepsen-style fault test of three real `flotilla node` processes.
//!
//! Six client threads issue random GET / SET / INCRBY / GETSET / SETNX /
//! DEL over ten keys through the Redis protocol (short timeouts, any node),
//! while a nemesis thread kills -9 and restarts a node, pauses one (or the
//! leader of a group) with SIGSTOP for a few seconds and resumes it with
//! SIGCONT. At the end every fault is healed, the cluster gets time to
//! settle, and every key is read from every node. The recorded history
//! must be linearizable per key (`flotilla_tests::checker`), every
//! acknowledged write must be the final value or overwritten, no node may
//! have crashed on its own, and the cluster must serve again after the
//! heal.
//!
//! Outcomes: a reply is `ok`; `-TRYAGAIN` / `-NOTLEADER` (the server says
//! the request was not applied) is `fail`; a timeout, a dropped connection
//! or any other error is `info` (maybe applied, at any later time), after
//! which the client reconnects as a new process.
//!
//! Knobs: `FLOTILLA_SOAK_SECS=N` runs the workload N seconds (default 40);
//! `FLOTILLA_FAULTS_CONSISTENCY=lease|stale` reads with that consistency
//! (to show what the checker catches; the default is linearizable);
//! `FLOTILLA_FAULTS_SEED=S` replays a nemesis and client schedule;
//! `FLOTILLA_FAULTS_HISTORY=path` only checks a saved history file.
//! On failure the history and the node logs are saved to a directory under
//! the system temp dir, named in the failure message.

mod launcher_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_tests::checker::{
    check, format_history, lost_writes, parse_history, Call, CheckLimits, Op, Outcome, Recorder,
    Ret,
};
use launcher_support::*;

const READY: Duration = Duration::from_secs(60);
const CLIENTS: u64 = 6;
const KEYS: u64 = 10;
/// Server-side deadline of one request.
const REQUEST_TIMEOUT_MS: u64 = 1_500;
/// Client-side read timeout: past the server's deadline, so that a reply
/// normally arrives (timeouts then mostly mean a paused or dead node).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(2_500);

/// xorshift64*: seeded, replayable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn key_name(k: u64) -> String {
    format!("jk{k}")
}

/// How a Redis reply or error becomes an outcome.
fn outcome_of_error(e: &redis::RedisError) -> Outcome {
    match e.code() {
        // The server says the request was not applied.
        Some("TRYAGAIN" | "NOTLEADER") => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// A GET reply value: absent, an integer, or something the workload never
/// wrote (recorded as a value no op writes, so the checker flags it).
fn int_value(v: Option<String>) -> Option<i64> {
    v.map(|s| s.parse::<i64>().unwrap_or(i64::MIN))
}

fn connect(addr: SocketAddr) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    let mut conn = conn;
    if let Ok(c) = std::env::var("FLOTILLA_FAULTS_CONSISTENCY") {
        redis::cmd("CONSISTENCY")
            .arg(&c)
            .query::<String>(&mut conn)
            .ok()?;
    }
    Some(conn)
}

/// Runs `call` on `key` over `conn`; returns the outcome (the caller
/// drops the connection unless it is `Ok` or `Fail`).
fn run(conn: &mut redis::Connection, key: &str, call: Call) -> Outcome {
    let r: Result<Ret, redis::RedisError> = match call {
        Call::Read => redis::cmd("GET")
            .arg(key)
            .query::<Option<String>>(conn)
            .map(|v| Ret::Value(int_value(v))),
        Call::Write(v) => redis::cmd("SET")
            .arg(key)
            .arg(v)
            .query::<String>(conn)
            .map(|_| Ret::Unit),
        Call::Delete => redis::cmd("DEL").arg(key).query::<i64>(conn).map(Ret::Int),
        Call::Incr(d) => redis::cmd("INCRBY")
            .arg(key)
            .arg(d)
            .query::<i64>(conn)
            .map(Ret::Int),
        Call::Swap(v) => redis::cmd("GETSET")
            .arg(key)
            .arg(v)
            .query::<Option<String>>(conn)
            .map(|p| Ret::Value(int_value(p))),
        Call::SetNx(v) => redis::cmd("SETNX")
            .arg(key)
            .arg(v)
            .query::<i64>(conn)
            .map(|n| Ret::Bool(n == 1)),
        Call::Cas { .. } => unreachable!("no compare-and-set in the Redis protocol"),
    };
    match r {
        Ok(ret) => Outcome::Ok(ret),
        Err(e) => outcome_of_error(&e),
    }
}

/// One client thread: random ops until `stop`.
fn client(
    index: u64,
    seed: u64,
    addrs: Vec<SocketAddr>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(seed ^ (index + 1).wrapping_mul(0x9E37_79B9));
    let mut process = index;
    let mut seq = 0u64;
    let mut conn: Option<redis::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = connect(addrs[rng.below(addrs.len() as u64) as usize]);
            if conn.is_none() {
                std::thread::park_timeout(Duration::from_millis(50));
                continue;
            }
        }
        let key = key_name(rng.below(KEYS));
        seq += 1;
        // Unique values, 1000 apart, so increments rarely collide.
        let value = ((index + 1) * 1_000_000_000 + seq * 1_000) as i64;
        let call = match rng.below(100) {
            0..=39 => Call::Read,
            40..=64 => Call::Write(value),
            65..=79 => Call::Incr(1 + rng.below(3) as i64),
            80..=89 => Call::Swap(value),
            90..=94 => Call::SetNx(value),
            _ => Call::Delete,
        };
        let pending = rec.invoke(process, &key, call);
        let outcome = run(conn.as_mut().expect("connected"), &key, call);
        rec.complete(pending, outcome);
        match outcome {
            Outcome::Ok(_) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Fail => std::thread::park_timeout(Duration::from_millis(10)),
            Outcome::Info => {
                // This process may still have an op in flight: a new one
                // takes over, on a new connection.
                conn = None;
                process += CLIENTS;
            }
        }
    }
}

/// What the nemesis did and saw.
#[derive(Default)]
struct NemesisLog {
    events: Vec<String>,
    crashes: Vec<String>,
}

/// The leader of KV group `group` as node `n` sees it.
fn leader_of(n: &NodeProc, group: u64) -> Option<u64> {
    let client = redis::Client::open(format!("redis://{}/", n.resp)).ok()?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let info: String = redis::cmd("INFO").arg("raft").query(&mut c).ok()?;
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("group_{group}:")))?;
    let leader = line.split(',').find_map(|p| p.strip_prefix("leader="))?;
    leader.parse().ok().filter(|l| *l != 0)
}

/// Nodes that exited although the nemesis did not kill them.
fn check_crashes(nodes: &mut [NodeProc], log: &mut NemesisLog, t: Duration) {
    for n in nodes.iter_mut() {
        if let Some(c) = n.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                log.crashes.push(format!(
                    "{t:?}: node {} exited on its own: {status:?}\n{}",
                    n.id,
                    n.log_tail()
                ));
                n.child = None;
                n.start();
            }
        }
    }
}

fn sleep_checking(
    nodes: &mut [NodeProc],
    log: &mut NemesisLog,
    t0: Instant,
    d: Duration,
    stop: &AtomicBool,
) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(Duration::from_millis(100).min(until - Instant::now()));
        check_crashes(nodes, log, t0.elapsed());
    }
}

/// Random faults, one at a time, until `stop`; returns with every node
/// running and resumed.
fn nemesis(
    nodes: &mut [NodeProc],
    seed: u64,
    t0: Instant,
    stop: &AtomicBool,
    kv_groups: u64,
) -> NemesisLog {
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut log = NemesisLog::default();
    while !stop.load(Ordering::Relaxed) {
        let quiet = rng.millis(1_000, 3_000);
        sleep_checking(nodes, &mut log, t0, quiet, stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let fault = rng.below(4);
        // Target: a random node, or the leader of a random group.
        let target = if fault >= 2 {
            let g = 1 + rng.below(kv_groups);
            match leader_of(&nodes[rng.below(3) as usize], g) {
                Some(l) => (l - 1) as usize,
                None => rng.below(3) as usize,
            }
        } else {
            rng.below(3) as usize
        };
        let down = rng.millis(1_000, 4_000);
        let id = nodes[target].id;
        if fault % 2 == 0 {
            log.events.push(format!(
                "{:?}: kill -9 node {id}, restart after {down:?}",
                t0.elapsed()
            ));
            nodes[target].kill9();
            sleep_checking(nodes, &mut log, t0, down, stop);
            nodes[target].start();
            log.events
                .push(format!("{:?}: restarted node {id}", t0.elapsed()));
        } else {
            log.events.push(format!(
                "{:?}: SIGSTOP node {id} for {down:?}",
                t0.elapsed()
            ));
            if let Some(c) = nodes[target].child.as_ref() {
                signal(c, "STOP");
            }
            sleep_checking(nodes, &mut log, t0, down, stop);
            if let Some(c) = nodes[target].child.as_ref() {
                signal(c, "CONT");
            }
            log.events
                .push(format!("{:?}: SIGCONT node {id}", t0.elapsed()));
        }
    }
    log
}

/// Saves the history and the node logs; returns the directory.
fn save_evidence(history: &[Op], nodes: &[NodeProc], extra: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("flotilla-faults-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("evidence dir");
    std::fs::write(dir.join("history.txt"), format_history(history)).expect("save history");
    std::fs::write(dir.join("report.txt"), extra).expect("save report");
    for n in nodes {
        let _ = std::fs::copy(&n.log, dir.join(format!("node-{}.log", n.id)));
    }
    dir
}

fn limits() -> CheckLimits {
    CheckLimits {
        configurations_max: 5_000_000,
        threads: 2,
    }
}

#[test]
fn histories_under_kill_pause_and_restart_are_linearizable() {
    if let Ok(path) = std::env::var("FLOTILLA_FAULTS_HISTORY") {
        let text = std::fs::read_to_string(&path).expect("read history file");
        let history = parse_history(&text).expect("parse history file");
        let report = check(&history, &limits());
        eprintln!("{report}");
        assert!(report.is_valid(), "{path}: not linearizable");
        return;
    }
    let workload = Duration::from_secs(
        std::env::var("FLOTILLA_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40),
    );
    let seed = std::env::var("FLOTILLA_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("FLOTILLA_FAULTS_SEED={seed} workload {workload:?}");
    let kv_groups = 4u64;
    let dir = tempfile::tempdir().unwrap();
    let timeout = REQUEST_TIMEOUT_MS.to_string();
    let mut nodes = cluster(
        dir.path(),
        3,
        kv_groups as u32,
        &["--request-timeout-ms", &timeout],
    );
    for n in &mut nodes {
        n.start();
    }
    let started = Instant::now();
    for n in &nodes {
        n.wait_ready(READY);
    }
    eprintln!("cluster ready in {:?}", started.elapsed());
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.resp).collect();
    let rec = Arc::new(Recorder::new());
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_nemesis = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addrs, rec, stop, acked) = (
                addrs.clone(),
                rec.clone(),
                stop_clients.clone(),
                acked.clone(),
            );
            std::thread::spawn(move || client(i, seed, addrs, rec, stop, acked))
        })
        .collect();
    let nemesis_thread = {
        let stop = stop_nemesis.clone();
        std::thread::spawn(move || {
            let log = nemesis(&mut nodes, seed, t0, &stop, kv_groups);
            (nodes, log)
        })
    };
    while t0.elapsed() < workload {
        std::thread::park_timeout(workload - t0.elapsed().min(workload));
    }
    stop_nemesis.store(true, Ordering::Relaxed);
    let (mut nodes, mut nlog) = nemesis_thread.join().expect("nemesis thread");
    eprintln!(
        "{:?}: healed; {} acknowledged ops so far",
        t0.elapsed(),
        acked.load(Ordering::Relaxed)
    );
    // Healed: every node must serve again, with the clients still running.
    let acked_at_heal = acked.load(Ordering::Relaxed);
    let mut not_ready = Vec::new();
    for n in &nodes {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| n.wait_ready(READY)));
        if r.is_err() {
            not_ready.push(format!(
                "node {} not ready after heal\n{}",
                n.id,
                n.log_tail()
            ));
        }
    }
    let settle = Instant::now();
    while acked.load(Ordering::Relaxed) < acked_at_heal + 50 && settle.elapsed() < READY {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let acked_after_heal = acked.load(Ordering::Relaxed) - acked_at_heal;
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    check_crashes(&mut nodes, &mut nlog, t0.elapsed());

    // Final reads: every key from every node, after every op completed or
    // was given up.
    let mut final_reads = Vec::new();
    for n in &nodes {
        let mut conn: Option<redis::Connection> = None;
        for k in 0..KEYS {
            let key = key_name(k);
            let start = Instant::now();
            loop {
                if conn.is_none() {
                    conn = connect(n.resp);
                }
                let pending = rec.invoke(1_000_000 + n.id, &key, Call::Read);
                let outcome = match conn.as_mut() {
                    Some(c) => run(c, &key, Call::Read),
                    None => Outcome::Info,
                };
                rec.complete(pending, outcome);
                if matches!(outcome, Outcome::Ok(_)) {
                    let h = rec.history();
                    final_reads.push(h.last().expect("just recorded").clone());
                    break;
                }
                conn = None;
                if start.elapsed() > READY {
                    not_ready.push(format!(
                        "final read of {key} from node {} failed for {READY:?}",
                        n.id
                    ));
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
    }
    let history = rec.history();
    let ok = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let info = history
        .iter()
        .filter(|o| o.outcome == Outcome::Info)
        .count();
    let fail = history.len() - ok - info;
    eprintln!(
        "{:?}: {} ops ({ok} ok, {fail} fail, {info} info), {acked_after_heal} acknowledged after the heal; checking",
        t0.elapsed(),
        history.len()
    );
    for e in &nlog.events {
        eprintln!("  nemesis {e}");
    }
    let checked = Instant::now();
    let report = check(&history, &limits());
    let lost = lost_writes(&history, &final_reads);
    eprintln!("checked in {:?}: {report}", checked.elapsed());

    let mut problems = Vec::new();
    if !report.is_valid() {
        problems.push(report.to_string());
    }
    problems.extend(lost.iter().map(|l| l.to_string()));
    problems.extend(nlog.crashes.iter().cloned());
    problems.extend(not_ready);
    if ok < 100 {
        problems.push(format!(
            "only {ok} ops completed: the cluster barely served"
        ));
    }
    if !problems.is_empty() {
        let text = format!(
            "seed {seed}\nnemesis:\n{}\n\n{}",
            nlog.events.join("\n"),
            problems.join("\n")
        );
        let saved = save_evidence(&history, &nodes, &text);
        panic!(
            "FLOTILLA_FAULTS_SEED={seed}: {} problem(s); history, report and node logs saved in {}\n{text}",
            problems.len(),
            saved.display()
        );
    }
    let stopping = Instant::now();
    for n in &mut nodes {
        let status = n.terminate();
        assert!(
            status.success(),
            "node {} exit {status:?}\n{}",
            n.id,
            n.log_tail()
        );
    }
    eprintln!("nodes stopped in {:?}", stopping.elapsed());
}
