//! `flotilla local`: starts three nodes in one process, serves the Redis
//! protocol and HTTP on the advertised ports, stops on SIGTERM with exit
//! code 0, and a second run on the same data directory still has the data.

mod launcher_support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use launcher_support::*;
use redis::Commands;

/// Port bases such that every port `flotilla local` will bind is free now.
fn free_bases() -> (u16, u16, u16) {
    // Tests of this file run in parallel threads of one process: each call
    // starts from its own seed, or two tests pick the same ports (both probe
    // before either binds) and their clusters dial each other.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut seed = u64::from(std::process::id()) * 7919 + 17 + call * 0x9E37_79B9;
    wait_for("a free block of ports", Duration::from_secs(10), || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = |s: u64, k: u64| 20_000 + ((s >> (16 * k)) % 20_000) as u16;
        let (resp, http, raft) = (pick(seed, 0), pick(seed, 1), pick(seed, 2));
        let mut ports: Vec<u16> = (1..=3).map(|i| resp + i).collect();
        ports.extend((1..=3).map(|i| http + i));
        ports.extend((1..=3).map(|i| raft + 10 * i));
        let all_free = ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
        let distinct = {
            let mut s = ports.clone();
            s.sort();
            s.dedup();
            s.len() == ports.len()
        };
        (all_free && distinct).then_some((resp, http, raft))
    })
}

/// A `flotilla local` process, killed if the test panics before it stops
/// it (a leaked child would keep running, and keep the test's output pipe
/// open).
struct Local(Child);

impl std::ops::Deref for Local {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Local {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_local(data: &str, bases: (u16, u16, u16), extra: &[&str]) -> Local {
    start_local_in(None, Some(data), bases, extra)
}

/// The `flotilla local` command line of these tests: one shard per node,
/// `kv_groups` groups, ports from `bases`.
fn local_command(
    cwd: Option<&std::path::Path>,
    data: Option<&str>,
    bases: (u16, u16, u16),
    kv_groups: u32,
) -> Command {
    let mut cmd = Command::new(flotilla_bin());
    cmd.arg("local");
    if let Some(data) = data {
        cmd.args(["--data-dir", data]);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args([
        "--shards",
        "1",
        "--kv-groups",
        &kv_groups.to_string(),
        "--resp-port-base",
        &bases.0.to_string(),
        "--http-port-base",
        &bases.1.to_string(),
        "--raft-port-base",
        &bases.2.to_string(),
    ]);
    cmd
}

/// `flotilla local` with the working directory `cwd` and, without `data`,
/// its default data directory (`./flotilla-data`, as the README runs it).
fn start_local_in(
    cwd: Option<&std::path::Path>,
    data: Option<&str>,
    bases: (u16, u16, u16),
    extra: &[&str],
) -> Local {
    let mut child = local_command(cwd, data, bases, 4)
        .args(extra)
        .env("RUST_LOG", "warn,glommio::reactor=off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn flotilla local");
    // Wait for the "serving" line (the endpoints are printed before it).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("serving") {
                let _ = tx.send(printed.clone());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(printed) => {
            for i in 1..=3 {
                let want = format!("redis 127.0.0.1:{}", bases.0 + i);
                assert!(
                    printed.contains(&want),
                    "endpoints printed ({want}): {printed}"
                );
            }
        }
        Err(_) => {
            let _ = child.kill();
            panic!("flotilla local did not print its endpoints within 30 s");
        }
    }
    Local(child)
}

fn redis_at(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

#[test]
fn local_starts_serves_stops_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flotilla-data").display().to_string();
    let bases = free_bases();

    // First run as the README has it: no --data-dir, so the data goes to
    // `./flotilla-data`, a relative path (glommio refused those with EBADF
    // and the node did not start). The second run names it absolutely.
    let mut child = start_local_in(Some(dir.path()), None, bases, &[]);
    let mut c1 = redis_at(bases.0 + 1);
    wait_for("a write through node 1", Duration::from_secs(30), || {
        c1.set::<_, _, String>("k0", "v0").ok()
    });
    for i in 1..50 {
        let _: () = c1.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let mut c3 = redis_at(bases.0 + 3);
    let got: Option<String> = c3.get("k49").unwrap();
    assert_eq!(got.as_deref(), Some("v49"), "node 3 reads node 1's write");
    let (status, body) = http(
        std::net::SocketAddr::from(([127, 0, 0, 1], bases.1 + 2)),
        "GET",
        "/health",
        "",
    );
    assert_eq!(status, 200, "HTTP of node 2: {body}");
    drop((c1, c3));

    signal(&child, "TERM");
    let status = wait_exit(
        &mut child,
        "flotilla local after SIGTERM",
        Duration::from_secs(30),
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );

    // Another number of KV groups on this data is refused (keys hash over
    // the groups: most would be looked for where they are not).
    let mut wrong = local_command(None, Some(&data), bases, 8)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flotilla local");
    let status = wait_exit(
        &mut wrong,
        "flotilla local with another --kv-groups",
        Duration::from_secs(30),
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut wrong.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "refused: {status:?}");
    assert!(
        said.contains("created with 4 KV groups, not 8"),
        "names the problem: {said}"
    );

    // Second run on the same data, this time serving clients on a client
    // executor of their own (the first served them on the shard executors,
    // `local`'s default): every acknowledged write is there, and new writes
    // go through.
    let mut child = start_local(&data, bases, &["--client-threads", "1"]);
    let mut c2 = redis_at(bases.0 + 2);
    let values: Vec<Option<String>> =
        wait_for("reads after restart", Duration::from_secs(30), || {
            c2.mget::<_, Vec<Option<String>>>((0..50).map(|i| format!("k{i}")).collect::<Vec<_>>())
                .ok()
        });
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            v.as_deref(),
            Some(format!("v{i}").as_str()),
            "k{i} after restart"
        );
    }
    let mut c3 = redis_at(bases.0 + 3);
    for i in 50..80 {
        let _: () = c3.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let got: Option<String> = c2.get("k79").unwrap();
    assert_eq!(got.as_deref(), Some("v79"), "node 2 reads node 3's write");
    drop((c2, c3));
    signal(&child, "INT");
    let status = wait_exit(
        &mut child,
        "flotilla local after SIGINT",
        Duration::from_secs(30),
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT: {status:?}"
    );
}

/// `kill -9` of `flotilla local` (all three nodes at once: one process)
/// under load from three clients, one per node, each writing its own keys,
/// pushing onto its own list and incrementing one shared counter until its
/// first error. A restart on the same data has every acknowledged write:
/// each acknowledged SET with its value, each list exactly 0..m with m at
/// least the acknowledged pushes and at most the attempted ones (no gap, no
/// duplicate), the counter between the acknowledged and the attempted
/// increments.
#[test]
fn local_killed_under_load_restarts_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let bases = free_bases();
    let mut child = start_local(&data, bases, &[]);
    for i in 1..=3 {
        let mut c = redis_at(bases.0 + i);
        wait_for(
            "a write through every node",
            Duration::from_secs(30),
            || c.set::<_, _, String>(format!("ready{i}"), "1").ok(),
        );
    }
    #[derive(Default, Debug)]
    struct Tally {
        sets_acked: u64,
        pushes_acked: u64,
        pushes_tried: u64,
        incrs_acked: u64,
        incrs_tried: u64,
    }
    // SETs acknowledged so far, per writer: the kill comes once each has
    // a few hundred.
    let progress: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>> =
        (0..3).map(|_| Default::default()).collect();
    let writers: Vec<_> = (1..=3u16)
        .map(|t| {
            let port = bases.0 + t;
            let progress = progress[usize::from(t) - 1].clone();
            std::thread::spawn(move || {
                let mut c = redis_at(port);
                let mut tally = Tally::default();
                for i in 0u64.. {
                    let set: redis::RedisResult<()> = c.set(format!("w{t}:{i}"), i);
                    if set.is_err() {
                        break;
                    }
                    tally.sets_acked += 1;
                    progress.store(tally.sets_acked, std::sync::atomic::Ordering::Relaxed);
                    tally.pushes_tried += 1;
                    let push: redis::RedisResult<u64> = c.rpush(format!("list{t}"), i);
                    if push.is_err() {
                        break;
                    }
                    tally.pushes_acked += 1;
                    tally.incrs_tried += 1;
                    let incr: redis::RedisResult<u64> = c.incr("counter", 1);
                    if incr.is_err() {
                        break;
                    }
                    tally.incrs_acked += 1;
                }
                tally
            })
        })
        .collect();
    wait_for(
        "300 acknowledged SETs per writer",
        Duration::from_secs(60),
        || {
            progress
                .iter()
                .all(|p| p.load(std::sync::atomic::Ordering::Relaxed) >= 300)
                .then_some(())
        },
    );
    child.kill().expect("SIGKILL flotilla local");
    let _ = child.wait();
    let tallies: Vec<Tally> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (t, tally) in tallies.iter().enumerate() {
        assert!(
            tally.sets_acked > 10,
            "writer {} barely wrote: {tally:?}",
            t + 1
        );
    }

    let _child = start_local(&data, bases, &[]);
    let mut c = redis_at(bases.0 + 2);
    wait_for("a read after the restart", Duration::from_secs(30), || {
        c.get::<_, Option<String>>("ready1").ok()
    });
    for (k, tally) in tallies.iter().enumerate() {
        let t = k + 1;
        let ids: Vec<u64> = (0..tally.sets_acked).collect();
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("w{t}:{i}")).collect();
            let got: Vec<Option<u64>> = c.mget(&keys).unwrap();
            for (i, v) in chunk.iter().zip(got) {
                assert_eq!(v, Some(*i), "acknowledged SET w{t}:{i} after kill -9");
            }
        }
        let list: Vec<u64> = c.lrange(format!("list{t}"), 0, -1).unwrap();
        let expect: Vec<u64> = (0..list.len() as u64).collect();
        assert_eq!(list, expect, "list{t} is 0..m without gaps or duplicates");
        let m = list.len() as u64;
        assert!(
            (tally.pushes_acked..=tally.pushes_tried).contains(&m),
            "list{t} has {m} elements; {tally:?}"
        );
    }
    let counter: u64 = c.get("counter").unwrap();
    let acked: u64 = tallies.iter().map(|t| t.incrs_acked).sum();
    let tried: u64 = tallies.iter().map(|t| t.incrs_tried).sum();
    assert!(
        (acked..=tried).contains(&counter),
        "counter {counter}: {acked} increments acknowledged, {tried} tried"
    );
}

/// The Redis data types through the real binary: lists, sets, hashes,
/// sorted sets and streams with Redis' reply shapes, WRONGTYPE, a list
/// that disappears with its last element, a write on node 1 read on
/// node 3; then, if `redis-benchmark` is installed, its whole default
/// suite runs to the end (it used to abort at LPUSH).
#[test]
fn local_serves_the_redis_data_types_and_redis_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flotilla-data").display().to_string();
    let bases = free_bases();
    let mut child = start_local(&data, bases, &[]);
    let mut c = redis_at(bases.0 + 1);
    wait_for("a write through node 1", Duration::from_secs(30), || {
        c.set::<_, _, String>("ready", "1").ok()
    });
    let q = |c: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let text = |v: &[&str]| {
        redis::Value::Array(
            v.iter()
                .map(|s| redis::Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    };
    use redis::Value::Int;
    assert_eq!(q(&mut c, &["LPUSH", "l", "a", "b", "c"]), Int(3));
    assert_eq!(q(&mut c, &["RPUSH", "l", "d"]), Int(4));
    assert_eq!(
        q(&mut c, &["LRANGE", "l", "0", "-1"]),
        text(&["c", "b", "a", "d"])
    );
    assert_eq!(q(&mut c, &["LRANGE", "nosuch", "0", "-1"]), text(&[]));
    assert_eq!(q(&mut c, &["SADD", "s", "x", "y", "x"]), Int(2));
    assert_eq!(q(&mut c, &["SISMEMBER", "s", "y"]), Int(1));
    assert_eq!(q(&mut c, &["HSET", "h", "f1", "v1", "f2", "v2"]), Int(2));
    assert_eq!(
        q(&mut c, &["HGETALL", "h"]),
        text(&["f1", "v1", "f2", "v2"])
    );
    assert_eq!(q(&mut c, &["HGET", "h", "nope"]), redis::Value::Nil);
    assert_eq!(q(&mut c, &["ZADD", "z", "1", "a", "2.5", "b"]), Int(2));
    assert_eq!(
        q(&mut c, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        text(&["a", "1", "b", "2.5"])
    );
    assert_eq!(q(&mut c, &["ZPOPMIN", "z"]), text(&["a", "1"]));
    let id = match q(&mut c, &["XADD", "x", "*", "f", "v"]) {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("XADD answered {other:?}"),
    };
    assert!(id.ends_with("-0") || id.contains('-'), "stream id {id}");
    // GETDEL: the value, then gone; a collection refuses it and stays.
    assert_eq!(q(&mut c, &["SET", "gd", "v1"]), redis::Value::Okay);
    assert_eq!(
        q(&mut c, &["GETDEL", "gd"]),
        redis::Value::BulkString(b"v1".to_vec())
    );
    assert_eq!(q(&mut c, &["GETDEL", "gd"]), redis::Value::Nil);
    assert_eq!(q(&mut c, &["EXISTS", "gd"]), Int(0));
    let wrong = redis::cmd("GETDEL").arg("l").query::<redis::Value>(&mut c);
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.to_string().contains("WRONGTYPE")),
        "GETDEL of a list: {wrong:?}"
    );
    // TIME: this node's clock, seconds and microseconds.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        secs.abs_diff(now) <= 5 && micros < 1_000_000,
        "TIME {secs} {micros}"
    );
    // Key expiry: deadlines in the log, keys deleted by the leader's expiry
    // entry, seen the same way through every node.
    let int = |c: &mut redis::Connection, args: &[&str]| -> i64 {
        match q(c, args) {
            Int(n) => n,
            other => panic!("{args:?}: {other:?}"),
        }
    };
    assert_eq!(
        q(&mut c, &["SET", "ttl1", "v", "PX", "400"]),
        redis::Value::Okay
    );
    let pttl = int(&mut c, &["PTTL", "ttl1"]);
    assert!((1..=400).contains(&pttl), "PTTL {pttl}");
    assert_eq!(int(&mut c, &["TTL", "ttl1"]), 0, "400 ms rounds to 0 s");
    assert_eq!(
        q(&mut c, &["SETEX", "ttl2", "100", "v"]),
        redis::Value::Okay
    );
    let ttl = int(&mut c, &["TTL", "ttl2"]);
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    assert_eq!(int(&mut c, &["PERSIST", "ttl2"]), 1);
    assert_eq!(int(&mut c, &["TTL", "ttl2"]), -1);
    assert_eq!(int(&mut c, &["TTL", "nosuchkey"]), -2);
    assert_eq!(int(&mut c, &["EXPIRE", "nosuchkey", "10"]), 0);
    assert_eq!(
        int(&mut c, &["EXPIRE", "ttl2", "10", "XX"]),
        0,
        "no deadline"
    );
    assert_eq!(int(&mut c, &["EXPIRE", "ttl2", "10", "NX"]), 1);
    assert_eq!(int(&mut c, &["EXPIRE", "ttl2", "5", "GT"]), 0);
    assert_eq!(int(&mut c, &["PEXPIRE", "ttl2", "20000", "GT"]), 1);
    let at = int(&mut c, &["PEXPIRETIME", "ttl2"]);
    assert!(at > 0 && int(&mut c, &["EXPIRETIME", "ttl2"]) == at / 1000);
    // INCR keeps the deadline, SET drops it, KEEPTTL keeps it.
    assert_eq!(
        q(&mut c, &["SET", "ttl3", "1", "EX", "50"]),
        redis::Value::Okay
    );
    assert_eq!(int(&mut c, &["INCR", "ttl3"]), 2);
    assert!(int(&mut c, &["TTL", "ttl3"]) > 0);
    assert_eq!(
        q(&mut c, &["SET", "ttl3", "x", "KEEPTTL"]),
        redis::Value::Okay
    );
    assert!(int(&mut c, &["TTL", "ttl3"]) > 0);
    assert_eq!(q(&mut c, &["SET", "ttl3", "y"]), redis::Value::Okay);
    assert_eq!(int(&mut c, &["TTL", "ttl3"]), -1);
    // A deadline in the past deletes at once; a collection expires too.
    assert_eq!(int(&mut c, &["EXPIRE", "ttl3", "-1"]), 1);
    assert_eq!(int(&mut c, &["EXISTS", "ttl3"]), 0);
    assert_eq!(int(&mut c, &["RPUSH", "ttl-list", "a"]), 1);
    assert_eq!(int(&mut c, &["PEXPIRE", "ttl-list", "300"]), 1);
    for bad in [
        &["SET", "k", "v", "EX", "0"][..],
        &["SET", "k", "v", "EX", "x"],
        &["SET", "k", "v", "EX", "1", "PX", "1"],
        &["SET", "k", "v", "EX"],
        &["SETEX", "k", "-5", "v"],
        &["EXPIRE", "ttl2", "1", "NX", "XX"],
        &["EXPIRE", "ttl2", "1", "GT", "LT"],
    ] {
        let mut cmd = redis::cmd(bad[0]);
        for a in &bad[1..] {
            cmd.arg(*a);
        }
        let r = cmd.query::<redis::Value>(&mut c);
        assert!(r.is_err(), "{bad:?} answered {r:?}");
    }
    // The expired keys are gone on every node, with no request to them.
    let mut others = [redis_at(bases.0 + 2), redis_at(bases.0 + 3)];
    wait_for("ttl1 and ttl-list expire", Duration::from_secs(10), || {
        let gone = |c: &mut redis::Connection| {
            int(c, &["EXISTS", "ttl1"]) == 0 && int(c, &["EXISTS", "ttl-list"]) == 0
        };
        (gone(&mut c) && others.iter_mut().all(gone)).then_some(())
    });
    assert_eq!(q(&mut c, &["GET", "ttl1"]), redis::Value::Nil);
    assert_eq!(int(&mut others[1], &["TTL", "ttl1"]), -2);
    assert!(
        int(&mut others[0], &["TTL", "ttl2"]) > 0,
        "ttl2 still there"
    );
    assert_eq!(int(&mut c, &["DEL", "ttl2"]), 1);
    assert_eq!(q(&mut c, &["XLEN", "x"]), Int(1));
    assert_eq!(
        q(&mut c, &["XRANGE", "x", "-", "+"]),
        redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::BulkString(id.clone().into_bytes()),
            text(&["f", "v"]),
        ])])
    );
    for (key, t) in [
        ("l", "list"),
        ("s", "set"),
        ("h", "hash"),
        ("z", "zset"),
        ("x", "stream"),
        ("ready", "string"),
        ("none", "none"),
    ] {
        assert_eq!(
            q(&mut c, &["TYPE", key]),
            redis::Value::SimpleString(t.into()),
            "TYPE {key}"
        );
    }
    // SCAN ... TYPE walks every group to the end (small COUNT: several
    // rounds) and returns exactly the keys of the type.
    let scan_type = |c: &mut redis::Connection, t: &str| {
        let mut cursor = 0u64;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, mut got): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(2)
                .arg("TYPE")
                .arg(t)
                .query(c)
                .unwrap();
            keys.append(&mut got);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    };
    assert_eq!(scan_type(&mut c, "hash"), vec!["h".to_string()]);
    assert_eq!(scan_type(&mut c, "string"), vec!["ready".to_string()]);
    assert_eq!(scan_type(&mut c, "zset"), vec!["z".to_string()]);
    let err = redis::cmd("GET")
        .arg("l")
        .query::<Option<String>>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "GET on a list: {err}");
    let err = redis::cmd("LPUSH")
        .arg("ready")
        .arg("v")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "LPUSH on a string: {err}");
    // Node 3 reads node 1's writes; the list vanishes with its last element.
    let mut c3 = redis_at(bases.0 + 3);
    assert_eq!(q(&mut c3, &["LLEN", "l"]), Int(4));
    assert_eq!(
        q(&mut c3, &["LPOP", "l", "10"]),
        text(&["c", "b", "a", "d"])
    );
    assert_eq!(q(&mut c3, &["EXISTS", "l"]), Int(0));
    assert_eq!(q(&mut c3, &["LPOP", "l", "2"]), redis::Value::Nil);
    // FLUSHALL through node 3 clears every group, strings and collections
    // alike; node 1 sees an empty database and can write again.
    let redis::Value::Int(before) = q(&mut c, &["DBSIZE"]) else {
        panic!("DBSIZE is an integer");
    };
    assert!(before >= 3, "{before} keys before FLUSHALL");
    assert_eq!(q(&mut c3, &["FLUSHALL"]), redis::Value::Okay);
    assert_eq!(q(&mut c, &["DBSIZE"]), Int(0));
    assert_eq!(q(&mut c, &["EXISTS", "h", "z", "ready"]), Int(0));
    assert_eq!(q(&mut c, &["HSET", "h", "f", "v"]), Int(1));
    assert_eq!(q(&mut c, &["FLUSHDB", "ASYNC"]), redis::Value::Okay);
    assert_eq!(q(&mut c3, &["DBSIZE"]), Int(0));
    let err = redis::cmd("FLUSHALL")
        .arg("LATER")
        .query::<String>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    drop((c, c3));

    let version = Command::new("redis-benchmark").arg("--version").output();
    match version {
        Err(_) => {
            println!("note: redis-benchmark is not on PATH; its part of this test is skipped")
        }
        Ok(v) => {
            let version = String::from_utf8_lossy(&v.stdout).into_owned();
            let out = Command::new("timeout")
                .args([
                    "120",
                    "redis-benchmark",
                    "-p",
                    &(bases.0 + 1).to_string(),
                    "-n",
                    "200",
                    "-c",
                    "4",
                    "-q",
                ])
                .output()
                .expect("run redis-benchmark");
            let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "redis-benchmark failed: {:?}\n{stdout}\n{stderr}",
                out.status
            );
            assert!(
                !stdout.contains("Error") && !stderr.contains("ERR"),
                "errors:\n{stdout}\n{stderr}"
            );
            let line = |name: &str| {
                stdout
                    .lines()
                    .any(|l| l.starts_with(name) && l.contains("requests per second"))
            };
            for name in [
                "PING_INLINE",
                "SET:",
                "LPUSH:",
                "LPOP:",
                "SADD:",
                "HSET:",
                "SPOP:",
                "ZADD:",
                "ZPOPMIN:",
                "LRANGE_600",
                "MSET",
            ] {
                assert!(line(name), "no result line for {name}:\n{stdout}");
            }
            // redis-benchmark 7.0 has no XADD test; 7.2 and later do.
            let has_xadd =
                !version.contains("redis-benchmark 7.0") && !version.contains("redis-benchmark 6.");
            if has_xadd {
                assert!(line("XADD"), "no result line for XADD:\n{stdout}");
            } else {
                println!("note: {} has no XADD test", version.trim());
            }
        }
    }
    signal(&child, "TERM");
    let status = wait_exit(
        &mut child,
        "flotilla local after SIGTERM",
        Duration::from_secs(30),
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
}

/// A `flotilla local` in a temporary directory (keep the directory and the
/// process alive) that took a write through node 1, and that connection.
fn ready_local() -> (tempfile::TempDir, Local, (u16, u16, u16), redis::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flotilla-data").display().to_string();
    let bases = free_bases();
    let child = start_local(&data, bases, &[]);
    let mut c = redis_at(bases.0 + 1);
    wait_for("a write through node 1", Duration::from_secs(30), || {
        c.set::<_, _, String>("ready", "1").ok()
    });
    (dir, child, bases, c)
}

/// One command, its arguments as text.
fn q(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

/// MULTI / EXEC / WATCH through the real binary: a transaction is one
/// entry of one group (hash tags pick the group); WATCH aborts it when
/// another client changed a watched key through another node; and
/// check-and-set increments from six clients on three nodes lose nothing.
#[test]
fn local_runs_transactions_atomically_and_watch_guards_them() {
    let (_dir, _child, bases, mut c) = ready_local();
    use redis::Value::{Array, BulkString, Int, Nil, Okay, SimpleString};
    let queued = SimpleString("QUEUED".into());

    // Commands queue, then run in order as one: results as an array; a
    // runtime error is that command's reply and undoes nothing.
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["SET", "{u}a", "1"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["INCR", "{u}a"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["RPUSH", "{u}l", "x"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["INCR", "{u}l"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["GET", "{u}a"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["PING"]).unwrap(), queued);
    // The raw reply: the crate turns an array holding an error into an
    // error of the whole.
    let exec =
        redis::ConnectionLike::req_packed_command(&mut c, &redis::cmd("EXEC").get_packed_command())
            .unwrap();
    let Array(items) = exec else {
        panic!("EXEC answered {exec:?}")
    };
    assert_eq!(items.len(), 6, "{items:?}");
    assert_eq!(items[0], Okay);
    assert_eq!(items[1], Int(2));
    assert_eq!(items[2], Int(1));
    assert!(
        matches!(&items[3], redis::Value::ServerError(e) if e.code() == "WRONGTYPE"),
        "{:?}",
        items[3]
    );
    assert_eq!(items[4], BulkString(b"2".to_vec()));
    assert_eq!(items[5], SimpleString("PONG".into()));
    // The redis crate's own atomic pipeline.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{u}a", 10)
        .incr("{u}b", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (12, 1));

    // Errors found while queueing discard the transaction.
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert!(q(&mut c, &["SET", "{u}a"]).is_err(), "arity");
    assert_eq!(q(&mut c, &["SET", "{u}a", "0"]).unwrap(), queued);
    let e = q(&mut c, &["EXEC"]).unwrap_err();
    assert_eq!(e.code(), Some("EXECABORT"), "{e}");
    assert_eq!(
        q(&mut c, &["GET", "{u}a"]).unwrap(),
        BulkString(b"12".to_vec())
    );
    assert!(q(&mut c, &["EXEC"]).is_err(), "EXEC without MULTI");
    assert!(q(&mut c, &["DISCARD"]).is_err(), "DISCARD without MULTI");
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert!(q(&mut c, &["MULTI"]).is_err(), "nested");
    assert_eq!(q(&mut c, &["SET", "{u}a", "0"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["DISCARD"]).unwrap(), Okay);
    assert_eq!(
        q(&mut c, &["GET", "{u}a"]).unwrap(),
        BulkString(b"12".to_vec())
    );

    // Keys of two groups cannot share a transaction (4 groups: some pair
    // of tags among a few lands apart).
    let mut crossslot = 0;
    for t in 0..12 {
        assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
        assert_eq!(q(&mut c, &["SET", "{t0}k", "1"]).unwrap(), queued);
        match q(&mut c, &["SET", &format!("{{t{t}}}k"), "1"]) {
            Ok(v) => {
                assert_eq!(v, queued);
                assert!(matches!(q(&mut c, &["EXEC"]).unwrap(), Array(_)));
            }
            Err(e) => {
                assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
                assert_eq!(q(&mut c, &["EXEC"]).unwrap_err().code(), Some("EXECABORT"));
                crossslot += 1;
            }
        }
    }
    assert!(crossslot > 0, "no pair of tags in different groups");

    // WATCH: a change through another node aborts EXEC (null array, no
    // write); without one, EXEC runs; EXEC forgets the watched keys.
    let mut other = redis_at(bases.0 + 3);
    assert_eq!(q(&mut c, &["WATCH", "{w}n", "{w}m"]).unwrap(), Okay);
    assert_eq!(q(&mut other, &["SET", "{w}n", "100"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["SET", "{w}m", "1"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["EXEC"]).unwrap(), Nil, "aborted");
    assert_eq!(q(&mut c, &["GET", "{w}m"]).unwrap(), Nil);
    assert_eq!(q(&mut c, &["WATCH", "{w}n"]).unwrap(), Okay);
    assert_eq!(
        q(&mut other, &["GET", "{w}n"]).unwrap(),
        BulkString(b"100".to_vec())
    );
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["INCR", "{w}n"]).unwrap(), queued);
    assert_eq!(q(&mut c, &["EXEC"]).unwrap(), Array(vec![Int(101)]));
    assert_eq!(q(&mut other, &["SET", "{w}n", "0"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["INCR", "{w}n"]).unwrap(), queued);
    assert_eq!(
        q(&mut c, &["EXEC"]).unwrap(),
        Array(vec![Int(1)]),
        "no longer watched"
    );
    assert_eq!(q(&mut c, &["WATCH", "{w}n"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["UNWATCH"]).unwrap(), Okay);
    assert_eq!(q(&mut other, &["SET", "{w}n", "5"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["MULTI"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["INCR", "{w}n"]).unwrap(), queued);
    assert_eq!(
        q(&mut c, &["EXEC"]).unwrap(),
        Array(vec![Int(6)]),
        "unwatched"
    );

    // Check-and-set under contention: GET, then SET value + 1 guarded by
    // WATCH, retried on abort, by six clients over three nodes. Every
    // successful EXEC counts once: nothing lost, nothing doubled.
    const CLIENTS: u16 = 6;
    const EACH: i64 = 15;
    let aborts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let port = bases.0 + 1 + i % 3;
            let aborts = aborts.clone();
            std::thread::spawn(move || {
                let mut c = redis_at(port);
                for _ in 0..EACH {
                    loop {
                        let _: () = redis::cmd("WATCH").arg("{cas}n").query(&mut c).unwrap();
                        let n: Option<i64> = c.get("{cas}n").unwrap();
                        let done: Option<(i64,)> = redis::pipe()
                            .atomic()
                            .set("{cas}n", n.unwrap_or(0) + 1)
                            .ignore()
                            .get("{cas}n")
                            .query(&mut c)
                            .unwrap();
                        match done {
                            Some((v,)) => {
                                assert_eq!(v, n.unwrap_or(0) + 1);
                                break;
                            }
                            None => {
                                aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a check-and-set client failed");
    }
    let n: i64 = c.get("{cas}n").unwrap();
    assert_eq!(
        n,
        i64::from(CLIENTS) * EACH,
        "every successful EXEC counted once"
    );
    eprintln!(
        "check-and-set: {n} increments, {} aborted attempts",
        aborts.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// INCRBYFLOAT, GETEX, GETRANGE, SETRANGE, RENAME(NX), COPY, MSETNX and
/// TOUCH through the real binary, with Redis' replies and errors; a value
/// written through node 1 is read back through node 2.
#[test]
fn local_serves_the_string_and_key_commands() {
    let (_dir, _child, bases, mut c) = ready_local();
    let mut c2 = redis_at(bases.0 + 2);
    use redis::Value::{BulkString, Int, Nil, Okay};
    let bulk = |s: &str| BulkString(s.as_bytes().to_vec());
    let err = |c: &mut redis::Connection, args: &[&str]| -> String {
        match q(c, args) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{args:?} answered {v:?}"),
        }
    };

    assert_eq!(q(&mut c, &["SET", "f", "10.50"]).unwrap(), Okay);
    assert_eq!(
        q(&mut c, &["INCRBYFLOAT", "f", "0.1"]).unwrap(),
        bulk("10.6")
    );
    assert_eq!(
        q(&mut c, &["INCRBYFLOAT", "g", "0.1"]).unwrap(),
        bulk("0.1")
    );
    assert_eq!(
        q(&mut c, &["INCRBYFLOAT", "g", "0.2"]).unwrap(),
        bulk("0.3")
    );
    assert_eq!(
        q(&mut c, &["INCRBYFLOAT", "g", "5e3"]).unwrap(),
        bulk("5000.3")
    );
    assert_eq!(q(&mut c2, &["GET", "g"]).unwrap(), bulk("5000.3"));
    assert!(err(&mut c, &["INCRBYFLOAT", "g", "x"]).contains("not a valid float"));
    assert!(err(&mut c, &["INCRBYFLOAT", "g", "inf"]).contains("NaN or Infinity"));
    assert_eq!(q(&mut c, &["SET", "s", "hello"]).unwrap(), Okay);
    assert!(err(&mut c, &["INCRBYFLOAT", "s", "1"]).contains("not a valid float"));

    assert_eq!(
        q(&mut c, &["GETRANGE", "s", "0", "-1"]).unwrap(),
        bulk("hello")
    );
    assert_eq!(
        q(&mut c, &["GETRANGE", "s", "-3", "-1"]).unwrap(),
        bulk("llo")
    );
    assert_eq!(q(&mut c, &["GETRANGE", "s", "10", "20"]).unwrap(), bulk(""));
    assert_eq!(q(&mut c, &["GETRANGE", "s", "-1", "-5"]).unwrap(), bulk(""));
    assert_eq!(q(&mut c, &["SUBSTR", "s", "1", "2"]).unwrap(), bulk("el"));
    assert_eq!(
        q(&mut c, &["GETRANGE", "nope", "0", "5"]).unwrap(),
        bulk("")
    );
    assert_eq!(
        q(&mut c, &["SETRANGE", "s", "6", "world"]).unwrap(),
        Int(11)
    );
    assert_eq!(q(&mut c2, &["GET", "s"]).unwrap(), bulk("hello\0world"));
    assert_eq!(q(&mut c, &["SETRANGE", "pad", "2", "x"]).unwrap(), Int(3));
    assert_eq!(q(&mut c, &["GET", "pad"]).unwrap(), bulk("\0\0x"));
    assert_eq!(q(&mut c, &["SETRANGE", "n", "0", ""]).unwrap(), Int(0));
    assert_eq!(q(&mut c, &["EXISTS", "n"]).unwrap(), Int(0));
    assert!(err(&mut c, &["SETRANGE", "s", "-1", "x"]).contains("out of range"));

    assert_eq!(
        q(&mut c, &["GETEX", "s", "EX", "100"]).unwrap(),
        bulk("hello\0world")
    );
    assert_eq!(q(&mut c2, &["TTL", "s"]).unwrap(), Int(100));
    assert_eq!(q(&mut c, &["GETEX", "s"]).unwrap(), bulk("hello\0world"));
    assert_eq!(
        q(&mut c, &["TTL", "s"]).unwrap(),
        Int(100),
        "no option keeps it"
    );
    assert_eq!(
        q(&mut c, &["GETEX", "s", "PERSIST"]).unwrap(),
        bulk("hello\0world")
    );
    assert_eq!(q(&mut c, &["TTL", "s"]).unwrap(), Int(-1));
    assert_eq!(q(&mut c, &["GETEX", "nope", "PX", "10"]).unwrap(), Nil);
    assert!(err(&mut c, &["GETEX", "s", "EX", "0"]).contains("invalid expire time"));
    assert!(err(&mut c, &["GETEX", "s", "FOO"]).contains("syntax"));
    assert_eq!(q(&mut c, &["RPUSH", "list", "a"]).unwrap(), Int(1));
    assert!(err(&mut c, &["GETEX", "list", "EX", "5"]).contains("WRONGTYPE"));
    assert_eq!(q(&mut c, &["TTL", "list"]).unwrap(), Int(-1), "untouched");

    // RENAME moves any type with its deadline; keys share a group (tag).
    assert_eq!(q(&mut c, &["RPUSH", "{r}l", "a", "b"]).unwrap(), Int(2));
    assert_eq!(q(&mut c, &["EXPIRE", "{r}l", "500"]).unwrap(), Int(1));
    assert_eq!(q(&mut c, &["RENAME", "{r}l", "{r}m"]).unwrap(), Okay);
    assert_eq!(
        q(&mut c2, &["LRANGE", "{r}m", "0", "-1"]).unwrap(),
        redis::Value::Array(vec![bulk("a"), bulk("b")])
    );
    assert_eq!(q(&mut c2, &["TTL", "{r}m"]).unwrap(), Int(500));
    assert_eq!(q(&mut c, &["EXISTS", "{r}l"]).unwrap(), Int(0));
    assert!(err(&mut c, &["RENAME", "{r}l", "{r}x"]).contains("no such key"));
    assert_eq!(q(&mut c, &["SET", "{r}s", "v"]).unwrap(), Okay);
    assert_eq!(q(&mut c, &["RENAMENX", "{r}m", "{r}s"]).unwrap(), Int(0));
    assert_eq!(q(&mut c, &["COPY", "{r}m", "{r}c"]).unwrap(), Int(1));
    assert_eq!(q(&mut c, &["COPY", "{r}m", "{r}c"]).unwrap(), Int(0));
    assert_eq!(q(&mut c, &["RPUSH", "{r}c", "z"]).unwrap(), Int(3));
    assert_eq!(
        q(&mut c, &["LLEN", "{r}m"]).unwrap(),
        Int(2),
        "a copy is its own"
    );
    assert_eq!(
        q(&mut c, &["COPY", "{r}s", "{r}c", "REPLACE"]).unwrap(),
        Int(1)
    );
    assert_eq!(q(&mut c2, &["GET", "{r}c"]).unwrap(), bulk("v"));
    assert!(err(&mut c, &["COPY", "{r}s", "{r}s"]).contains("same"));
    // MSETNX: all or nothing, in one group.
    assert_eq!(
        q(&mut c, &["MSETNX", "{m}1", "a", "{m}2", "b"]).unwrap(),
        Int(1)
    );
    assert_eq!(
        q(&mut c, &["MSETNX", "{m}2", "c", "{m}3", "d"]).unwrap(),
        Int(0)
    );
    assert_eq!(q(&mut c2, &["EXISTS", "{m}3"]).unwrap(), Int(0));
    assert_eq!(q(&mut c2, &["GET", "{m}2"]).unwrap(), bulk("b"));
    assert_eq!(
        q(&mut c, &["TOUCH", "{m}1", "{m}2", "nope"]).unwrap(),
        Int(2)
    );
    // Keys of two groups (4 groups: some pair of tags lands apart).
    let apart = (1..12).any(|t| {
        q(&mut c, &["RENAME", "{m}1", &format!("{{t{t}}}x")])
            .is_err_and(|e| e.code() == Some("CROSSSLOT"))
    });
    assert!(apart, "RENAME across groups is refused with CROSSSLOT");

    // INFO keyspace and memory (what `redis-cli --stat` reads): this
    // node's replicas, counted locally.
    assert_eq!(q(&mut c, &["SET", "ttl", "1", "EX", "100"]).unwrap(), Okay);
    let dbsize = match q(&mut c, &["DBSIZE"]).unwrap() {
        Int(n) => n,
        other => panic!("DBSIZE {other:?}"),
    };
    let mut c3 = redis_at(bases.0 + 3);
    let want = format!("db0:keys={dbsize},expires=2,");
    wait_for("INFO keyspace on node 3", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO").arg("keyspace").query(&mut c3).ok()?;
        info.contains(&want).then_some(())
    });
    let info: String = redis::cmd("INFO").query(&mut c3).unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(used.is_some_and(|b| b > 20), "{info}");
    assert!(info.contains("blocked_clients:0"), "{info}");
}
