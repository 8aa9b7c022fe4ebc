//! Jepsen-style fault test of three real `flotilla node` processes.
//!
//! Six client threads issue random GET / SET / INCRBY / GETSET / SETNX /
//! DEL over ten keys through the Redis protocol and compare-and-set through
//! HTTP (`POST /kv/{key}/cas`) (short timeouts, any node); a third of the
//! reads, increments, swaps, set-if-absents and compare-and-sets are Lua
//! scripts instead (`EVAL`: read-modify-writes of one key, see [`LUA`]),
//! which must be as atomic as the commands they stand for,
//! while a nemesis thread, one fault at a time, kills -9 and restarts a
//! node, the leader of a group, two nodes or all three, or pauses a node,
//! a leader or two nodes with SIGSTOP for a few seconds and resumes them
//! with SIGCONT. At the end every fault is healed, the cluster gets time to
//! settle, and every key is read from every node. The recorded history
//! must be linearizable per key (`flotilla_tests::checker`), every
//! acknowledged write must be the final value or overwritten, no node may
//! have crashed on its own, and the cluster must serve again after the
//! heal.
//!
//! Outcomes: a reply is `ok`; `-TRYAGAIN` / `-NOTLEADER` (the server says
//! the request was not applied) is `fail`; a timeout, a dropped connection
//! or any other error is `info` (maybe applied, at any later time), after
//! which the client reconnects as a new process. Over HTTP, 200 and 409
//! `cas_failed` are answers, 503 `no_leader` / `not_leader` / `busy` /
//! `retry` are `fail`, anything else `info`.
//!
//! Knobs: `FLOTILLA_SOAK_SECS=N` runs the workload N seconds (default 40);
//! `FLOTILLA_FAULTS_CONSISTENCY=lease|stale` reads with that consistency
//! (to show what the checker catches; the default is linearizable);
//! `FLOTILLA_FAULTS_SEED=S` replays a nemesis and client schedule;
//! `FLOTILLA_FAULTS_HISTORY=path` only checks a saved history file;
//! `FLOTILLA_FAULTS_CONFIGS=N` lets the checker search N configurations
//! per key (default 5,000,000) before it calls a key inconclusive.
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

const CLIENTS: u64 = 6;
const KEYS: u64 = 10;
/// Every epoch the clients move to ten fresh keys, so that one key's
/// history stays short enough to check exhaustively however long the soak
/// (the cluster, its logs and snapshots keep everything written before).
const EPOCH: Duration = Duration::from_secs(30);
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

fn key_name(epoch: u64, k: u64) -> String {
    format!("jk{epoch}.{k}")
}

/// How a Redis reply or error becomes an outcome.
fn outcome_of_error(e: &redis::RedisError) -> Outcome {
    match e.code() {
        // The server says the request was not applied.
        Some("TRYAGAIN" | "NOTLEADER") => Outcome::Fail,
        _ => Outcome::Info,
    }
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

/// Runs `call` on `key` over `conn` (as a Lua script if `lua`); returns
/// the outcome (the caller drops the connection unless it is `Ok` or
/// `Fail`).
fn run(conn: &mut redis::Connection, key: &str, call: Call, lua: bool) -> Outcome {
    match command(key, call, lua).query::<redis::Value>(conn) {
        Ok(v) => value_outcome(call, v),
        Err(e) => outcome_of_error(&e),
    }
}

/// Lua scripts standing for the workload's operations: each reads the key
/// and writes it from what it read, so only an atomic script gives a
/// register's answers. `ARGV[1]` of compare-and-set is the expected value
/// (empty: the key must be absent), `ARGV[2]` the new one.
const LUA: [(&str, &str); 5] = [
    ("read", "return redis.call('GET', KEYS[1])"),
    (
        "incr",
        "local v = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1]) \
         redis.call('SET', KEYS[1], v) return v",
    ),
    (
        "swap",
        "local old = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], ARGV[1]) return old",
    ),
    (
        "setnx",
        "if redis.call('GET', KEYS[1]) then return 0 end \
         redis.call('SET', KEYS[1], ARGV[1]) return 1",
    ),
    (
        "cas",
        "local cur = redis.call('GET', KEYS[1]) \
         if (ARGV[1] == '' and not cur) or cur == ARGV[1] then \
           redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
    ),
];

fn lua_script(name: &str) -> &'static str {
    LUA.iter()
        .find(|(n, _)| *n == name)
        .expect("a workload script")
        .1
}

/// Whether `call` may run as a Lua script.
fn has_lua(call: Call) -> bool {
    matches!(
        call,
        Call::Read | Call::Incr(_) | Call::Swap(_) | Call::SetNx(_) | Call::Cas { .. }
    )
}

/// The Redis command of `call`: a Lua script if `lua` (and [`has_lua`]),
/// else the command itself (not compare-and-set, which then goes over
/// HTTP).
fn command(key: &str, call: Call, lua: bool) -> redis::Cmd {
    if lua && has_lua(call) {
        let (name, args) = match call {
            Call::Read => ("read", vec![]),
            Call::Incr(d) => ("incr", vec![d.to_string()]),
            Call::Swap(v) => ("swap", vec![v.to_string()]),
            Call::SetNx(v) => ("setnx", vec![v.to_string()]),
            Call::Cas { expect, new } => (
                "cas",
                vec![
                    expect.map_or(String::new(), |e| e.to_string()),
                    new.to_string(),
                ],
            ),
            _ => unreachable!("has_lua"),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(lua_script(name)).arg(1).arg(key);
        for a in args {
            cmd.arg(a);
        }
        return cmd;
    }
    let (name, arg) = match call {
        Call::Read => ("GET", None),
        Call::Write(v) => ("SET", Some(v)),
        Call::Delete => ("DEL", None),
        Call::Incr(d) => ("INCRBY", Some(d)),
        Call::Swap(v) => ("GETSET", Some(v)),
        Call::SetNx(v) => ("SETNX", Some(v)),
        Call::Cas { .. } => unreachable!("compare-and-set goes over HTTP or Lua"),
    };
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    cmd
}

/// The outcome of `call` from its reply. A reply of the wrong type is
/// recorded as an answer no register can give, so the checker flags it.
fn value_outcome(call: Call, v: redis::Value) -> Outcome {
    use redis::Value as V;
    let bogus = Outcome::Ok(Ret::Int(i64::MIN));
    let value = |v: V| match v {
        V::Nil => Some(None),
        V::BulkString(b) => Some(Some(
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(i64::MIN),
        )),
        _ => None,
    };
    if let V::ServerError(e) = &v {
        return match e.code() {
            "TRYAGAIN" | "NOTLEADER" => Outcome::Fail,
            _ => Outcome::Info,
        };
    }
    match call {
        Call::Read | Call::Swap(_) => value(v).map_or(bogus, |x| Outcome::Ok(Ret::Value(x))),
        Call::Write(_) => match v {
            V::Okay | V::SimpleString(_) => Outcome::Ok(Ret::Unit),
            _ => bogus,
        },
        Call::Delete | Call::Incr(_) => match v {
            V::Int(n) => Outcome::Ok(Ret::Int(n)),
            _ => bogus,
        },
        Call::SetNx(_) | Call::Cas { .. } => match v {
            V::Int(n) => Outcome::Ok(Ret::Bool(n == 1)),
            _ => bogus,
        },
    }
}

/// Runs `calls` as one pipeline; every op is concurrent with the others
/// (invoked when the pipeline is sent, completed when its last reply
/// arrives). A transport error makes every outcome unknown.
fn run_pipeline(conn: &mut redis::Connection, calls: &[(String, Call, bool)]) -> Vec<Outcome> {
    let mut pipe = redis::pipe();
    for (key, call, lua) in calls {
        pipe.add_command(command(key, *call, *lua));
    }
    match pipe.ignore_errors().query::<Vec<redis::Value>>(conn) {
        Ok(values) if values.len() == calls.len() => calls
            .iter()
            .zip(values)
            .map(|((_, c, _), v)| value_outcome(*c, v))
            .collect(),
        Ok(_) => vec![Outcome::Ok(Ret::Int(i64::MIN)); calls.len()],
        Err(_) => vec![Outcome::Info; calls.len()],
    }
}

/// One HTTP request on a new connection with the client timeouts; `None`
/// if it could not be sent, `Some(None)` if no complete answer arrived.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Option<Option<(u16, String)>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return Some(None);
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return Some(None);
    }
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Some(status.map(|st| (st, body)))
}

/// Compare-and-set over HTTP (`POST /kv/{key}/cas`), on a new connection.
fn http_cas(addr: SocketAddr, key: &str, expect: Option<i64>, new: i64) -> Outcome {
    let expected = expect.map_or_else(|| "null".to_string(), |v| format!("\"{v}\""));
    let body = format!("{{\"expected\": {expected}, \"new\": \"{new}\"}}");
    let path = format!("/kv/{key}/cas?timeout_ms={REQUEST_TIMEOUT_MS}");
    let (status, body) = match http_request(addr, "POST", &path, &body) {
        // Not sent at all.
        None => return Outcome::Fail,
        Some(None) => return Outcome::Info,
        Some(Some(answer)) => answer,
    };
    let code = |c: &str| {
        body.contains(&format!("\"code\":\"{c}\"")) || body.contains(&format!("\"code\": \"{c}\""))
    };
    match status {
        200 if body.contains("\"swapped\":true") || body.contains("\"swapped\": true") => {
            Outcome::Ok(Ret::Bool(true))
        }
        409 if code("cas_failed") => Outcome::Ok(Ret::Bool(false)),
        // The server says it was not applied.
        503 if ["no_leader", "not_leader", "busy", "retry"]
            .iter()
            .any(|c| code(c)) =>
        {
            Outcome::Fail
        }
        _ => Outcome::Info,
    }
}

/// What the client threads share.
struct World {
    /// Redis-protocol addresses of the nodes.
    addrs: Vec<SocketAddr>,
    /// HTTP addresses of the nodes.
    http_addrs: Vec<SocketAddr>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    t0: Instant,
}

/// A random op of the workload on `key`; `value` is unique to it.
fn random_call(rng: &mut Rng, value: i64, expect: Option<i64>, cas: bool) -> Call {
    match rng.below(if cas { 100 } else { 95 }) {
        0..=34 => Call::Read,
        35..=59 => Call::Write(value),
        60..=74 => Call::Incr(1 + rng.below(3) as i64),
        75..=84 => Call::Swap(value),
        85..=89 => Call::SetNx(value),
        90..=94 => Call::Delete,
        _ => Call::Cas { expect, new: value },
    }
}

/// What the client learns of a key's value from an answer.
fn observed(call: Call, outcome: Outcome) -> Option<Option<i64>> {
    match (call, outcome) {
        (Call::Read, Outcome::Ok(Ret::Value(v))) => Some(v),
        (Call::Incr(_), Outcome::Ok(Ret::Int(v))) => Some(Some(v)),
        (Call::Write(v) | Call::Swap(v), Outcome::Ok(_)) => Some(Some(v)),
        (Call::Cas { new, .. }, Outcome::Ok(Ret::Bool(true))) => Some(Some(new)),
        _ => None,
    }
}

/// One client thread: random ops until `stop`; one in six rounds is a
/// pipeline of 2..=6 ops over random keys.
fn client(index: u64, seed: u64, world: Arc<World>) {
    let World {
        addrs,
        http_addrs,
        rec,
        stop,
        acked,
        t0,
    } = &*world;
    let t0 = *t0;
    let mut rng = Rng::new(seed ^ (index + 1).wrapping_mul(0x9E37_79B9));
    let mut process = index;
    let mut seq = 0u64;
    let mut conn: Option<redis::Connection> = None;
    // The last value this client saw per key: what its CAS expects.
    let mut seen: std::collections::HashMap<String, Option<i64>> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = connect(addrs[rng.below(addrs.len() as u64) as usize]);
            if conn.is_none() {
                std::thread::park_timeout(Duration::from_millis(50));
                continue;
            }
        }
        let batch = if rng.below(6) == 0 {
            2 + rng.below(5)
        } else {
            1
        };
        let calls: Vec<(String, Call, bool)> = (0..batch)
            .map(|_| {
                let epoch = t0.elapsed().as_secs() / EPOCH.as_secs();
                let key = key_name(epoch, rng.below(KEYS));
                seq += 1;
                // Unique values, 1000 apart, so increments rarely collide.
                let value = ((index + 1) * 1_000_000_000 + seq * 1_000) as i64;
                let expect = seen.get(&key).copied().flatten();
                let call = random_call(&mut rng, value, expect, batch == 1);
                let lua = has_lua(call) && rng.below(3) == 0;
                (key, call, lua)
            })
            .collect();
        let pending: Vec<_> = calls
            .iter()
            .map(|(key, call, _)| rec.invoke(process, key, *call))
            .collect();
        let c = conn.as_mut().expect("connected");
        let outcomes = match (calls[0].1, calls[0].2) {
            (Call::Cas { expect, new }, false) => {
                let node = rng.below(http_addrs.len() as u64) as usize;
                vec![http_cas(http_addrs[node], &calls[0].0, expect, new)]
            }
            (call, lua) if batch == 1 => vec![run(c, &calls[0].0, call, lua)],
            _ => run_pipeline(c, &calls),
        };
        let mut unknown = false;
        for ((p, (key, call, _)), outcome) in pending.into_iter().zip(&calls).zip(outcomes) {
            rec.complete(p, outcome);
            if let Some(v) = observed(*call, outcome) {
                seen.insert(key.clone(), v);
            }
            match outcome {
                Outcome::Ok(_) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Fail => {}
                Outcome::Info => unknown = true,
            }
        }
        if unknown {
            // This process may still have an op in flight: a new one
            // takes over, on a new connection.
            conn = None;
            process += CLIENTS;
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
    long_soak: bool,
) -> NemesisLog {
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut log = NemesisLog::default();
    while !stop.load(Ordering::Relaxed) {
        let quiet = rng.millis(1_000, 3_000);
        sleep_checking(nodes, &mut log, t0, quiet, stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Targets: one random node, the leader of a random group, two
        // nodes (no majority left), or all three (a cluster-wide crash:
        // every acknowledged write must come back from disk).
        let fault = rng.below(10);
        let leader = |rng: &mut Rng, nodes: &[NodeProc]| {
            let g = 1 + rng.below(kv_groups);
            match leader_of(&nodes[rng.below(3) as usize], g) {
                Some(l) => (l - 1) as usize,
                None => rng.below(3) as usize,
            }
        };
        let (targets, kill): (Vec<usize>, bool) = match fault {
            0..=2 => (vec![rng.below(3) as usize], true),
            3 | 4 => (vec![rng.below(3) as usize], false),
            5 | 6 => (vec![leader(&mut rng, nodes)], true),
            7 => (vec![leader(&mut rng, nodes)], false),
            8 => ((0..3).collect(), true),
            _ => {
                let spared = rng.below(3) as usize;
                ((0..3).filter(|i| *i != spared).collect(), rng.below(2) == 0)
            }
        };
        // Now and then a snapshot (and log compaction) of every KV group on
        // one node first, so that restarts recover from a snapshot.
        if rng.below(3) == 0 {
            let n = &nodes[rng.below(3) as usize];
            let answers: Vec<String> = (1..=kv_groups)
                .map(|g| {
                    let path = format!("/groups/{g}/snapshot?timeout_ms=2000");
                    match http_request(n.http, "POST", &path, "") {
                        Some(Some((status, _))) => status.to_string(),
                        _ => "-".to_string(),
                    }
                })
                .collect();
            log.events.push(format!(
                "{:?}: snapshot of groups 1..={kv_groups} on node {}: {}",
                t0.elapsed(),
                n.id,
                answers.join(" ")
            ));
        }
        // Long soaks sometimes keep a node down long enough to fall behind
        // the compacted log (catch-up by snapshot transfer).
        let down = if long_soak && rng.below(6) == 0 {
            rng.millis(20_000, 40_000)
        } else {
            rng.millis(1_000, 4_000)
        };
        let ids: Vec<u64> = targets.iter().map(|&i| nodes[i].id).collect();
        if kill {
            log.events.push(format!(
                "{:?}: kill -9 nodes {ids:?}, restart after {down:?}",
                t0.elapsed()
            ));
            for &i in &targets {
                nodes[i].kill9();
            }
            sleep_checking(nodes, &mut log, t0, down, stop);
            for &i in &targets {
                nodes[i].start();
            }
            log.events
                .push(format!("{:?}: restarted nodes {ids:?}", t0.elapsed()));
        } else {
            log.events.push(format!(
                "{:?}: SIGSTOP nodes {ids:?} for {down:?}",
                t0.elapsed()
            ));
            for &i in &targets {
                if let Some(c) = nodes[i].child.as_ref() {
                    signal(c, "STOP");
                }
            }
            sleep_checking(nodes, &mut log, t0, down, stop);
            for &i in &targets {
                if let Some(c) = nodes[i].child.as_ref() {
                    signal(c, "CONT");
                }
            }
            log.events
                .push(format!("{:?}: SIGCONT nodes {ids:?}", t0.elapsed()));
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
        configurations_max: std::env::var("FLOTILLA_FAULTS_CONFIGS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000_000),
        memo_bytes_max: 2 << 30,
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
    let http_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let rec = Arc::new(Recorder::new());
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_nemesis = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let world = Arc::new(World {
        addrs,
        http_addrs,
        rec: rec.clone(),
        stop: stop_clients.clone(),
        acked: acked.clone(),
        t0,
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let world = world.clone();
            std::thread::spawn(move || client(i, seed, world))
        })
        .collect();
    let nemesis_thread = {
        let stop = stop_nemesis.clone();
        std::thread::spawn(move || {
            let long_soak = workload >= Duration::from_secs(120);
            let log = nemesis(&mut nodes, seed, t0, &stop, kv_groups, long_soak);
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
    eprintln!(
        "{:?}: every node ready and {acked_after_heal} ops acknowledged after the heal",
        t0.elapsed()
    );
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    check_crashes(&mut nodes, &mut nlog, t0.elapsed());

    // Final reads: every key from every node, after every op completed or
    // was given up.
    let epochs = t0.elapsed().as_secs() / EPOCH.as_secs();
    let mut final_reads = Vec::new();
    for n in &nodes {
        let mut conn: Option<redis::Connection> = None;
        for (epoch, k) in (0..=epochs).flat_map(|e| (0..KEYS).map(move |k| (e, k))) {
            let key = key_name(epoch, k);
            let start = Instant::now();
            loop {
                if conn.is_none() {
                    conn = connect(n.resp);
                }
                let pending = rec.invoke(1_000_000 + n.id, &key, Call::Read);
                let outcome = match conn.as_mut() {
                    Some(c) => run(c, &key, Call::Read, false),
                    None => Outcome::Info,
                };
                let done = rec.complete(pending, outcome);
                if matches!(outcome, Outcome::Ok(_)) {
                    final_reads.push(done);
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
    eprintln!(
        "{:?}: final reads of {} keys from every node done",
        t0.elapsed(),
        (epochs + 1) * KEYS
    );
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
