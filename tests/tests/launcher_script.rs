//! Lua scripts (`EVAL`, `EVALSHA`, `SCRIPT`) through the real binary:
//! three `flotilla node` processes, the `redis` crate as the client. A
//! script's writes reach every replica; it reads its own writes; it is
//! atomic against scripts running on other nodes at the same time (the
//! guarded batch of `bin/src/resp/script.rs`); it may touch only the keys
//! it declares; errors, the time limit and the script cache behave as
//! Redis' do.

mod launcher_support;

use launcher_support::*;
use redis::Value::{self, Int, Nil};

fn eval(c: &mut redis::Connection, script: &str, keys: &[&str], args: &[&str]) -> Value {
    try_eval(c, script, keys, args).unwrap_or_else(|e| panic!("{script}: {e}"))
}

fn try_eval(
    c: &mut redis::Connection,
    script: &str,
    keys: &[&str],
    args: &[&str],
) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd.query(c)
}

/// The error of a script that must fail, as `CODE detail`.
fn eval_err(c: &mut redis::Connection, script: &str, keys: &[&str], args: &[&str]) -> String {
    match try_eval(c, script, keys, args) {
        Ok(v) => panic!("{script}: expected an error, got {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn get(c: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(c).unwrap()
}

#[test]
fn scripts_write_read_their_writes_and_fail_like_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &[]);
    let mut first = nodes[0].redis();
    let mut third = nodes[2].redis();

    // A write, replicated: node 3 reads it.
    assert_eq!(
        eval(
            &mut first,
            "return redis.call('SET', KEYS[1], ARGV[1])",
            &["{s}a"],
            &["hello"]
        ),
        Value::Okay
    );
    assert_eq!(get(&mut third, "{s}a").as_deref(), Some("hello"));

    // The script reads its own writes; every write of it lands.
    let script = "redis.call('INCR', KEYS[1]); redis.call('INCR', KEYS[1]); \
                  redis.call('RPUSH', KEYS[2], 'x', 'y'); \
                  return {redis.call('GET', KEYS[1]), redis.call('LLEN', KEYS[2])}";
    assert_eq!(
        eval(&mut first, script, &["{s}n", "{s}l"], &[]),
        Value::Array(vec![bulk("2"), Int(2)])
    );
    assert_eq!(get(&mut third, "{s}n").as_deref(), Some("2"));
    let list: Vec<String> = redis::cmd("LRANGE")
        .arg("{s}l")
        .arg(0)
        .arg(-1)
        .query(&mut third)
        .unwrap();
    assert_eq!(list, ["x", "y"]);

    // A script that only reads is linearizable: it sees a write acknowledged
    // through another node a moment before (a follower learns of commits
    // late, so a stale read would miss them).
    for i in 0..30 {
        let v = format!("v{i}");
        let _: () = redis::cmd("SET")
            .arg("{s}fresh")
            .arg(&v)
            .query(&mut first)
            .unwrap();
        assert_eq!(
            eval(
                &mut third,
                "return redis.call('GET', KEYS[1])",
                &["{s}fresh"],
                &[]
            ),
            bulk(&v)
        );
    }

    // The lock-release idiom (redis-py's Lock, Redlock): delete only if
    // the token matches.
    let release = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                   return redis.call('del', KEYS[1]) else return 0 end";
    let _: () = redis::cmd("SET")
        .arg("{s}lock")
        .arg("me")
        .query(&mut first)
        .unwrap();
    assert_eq!(eval(&mut third, release, &["{s}lock"], &["you"]), Int(0));
    assert_eq!(get(&mut first, "{s}lock").as_deref(), Some("me"));
    assert_eq!(eval(&mut third, release, &["{s}lock"], &["me"]), Int(1));
    assert_eq!(get(&mut first, "{s}lock"), None);

    // Conversions: numbers truncate, false is nil, nil ends an array,
    // status and error tables.
    assert_eq!(
        eval(
            &mut first,
            "return {1, 2.7, 'three', {4}, false, true}",
            &[],
            &[]
        ),
        Value::Array(vec![
            Int(1),
            Int(2),
            bulk("three"),
            Value::Array(vec![Int(4)]),
            Nil,
            Int(1)
        ])
    );
    assert_eq!(
        eval(&mut first, "return redis.status_reply('FINE')", &[], &[]),
        Value::SimpleString("FINE".into())
    );
    assert_eq!(
        eval_err(
            &mut first,
            "return redis.error_reply('MYERR it broke')",
            &[],
            &[]
        ),
        "MYERR it broke"
    );
    assert_eq!(
        eval(
            &mut first,
            "return redis.call('GET', KEYS[1])",
            &["{s}none"],
            &[]
        ),
        Nil
    );
    assert_eq!(
        eval(&mut first, "return redis.sha1hex('')", &[], &[]),
        bulk("da39a3ee5e6b4b0d3255bfef95601890afd80709")
    );

    // cjson, as scripts use it to keep records in one key.
    let script = "local r = cjson.decode(ARGV[1]); r.n = r.n + 1; \
                  redis.call('SET', KEYS[1], cjson.encode(r)); return redis.call('GET', KEYS[1])";
    assert_eq!(
        eval(&mut first, script, &["{s}json"], &[r#"{"n":41}"#]),
        bulk(r#"{"n":42}"#)
    );

    assert_eq!(
        eval(&mut first, "return bit.band(ARGV[1], 0xff)", &[], &["4660"]),
        Int(0x34)
    );

    // A command's error raises (call) or is returned (pcall).
    let _: () = redis::cmd("SET")
        .arg("{s}word")
        .arg("abc")
        .query(&mut first)
        .unwrap();
    assert_eq!(
        eval_err(
            &mut first,
            "return redis.call('INCR', KEYS[1])",
            &["{s}word"],
            &[]
        ),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        eval(
            &mut first,
            "local r = redis.pcall('INCR', KEYS[1]); return r['err']",
            &["{s}word"],
            &[]
        ),
        bulk("ERR value is not an integer or out of range")
    );

    // pcall around redis.call catches Redis' error table.
    assert_eq!(
        eval(
            &mut first,
            "local ok, e = pcall(redis.call, 'INCR', KEYS[1]) return {tostring(ok), e.err}",
            &["{s}word"],
            &[]
        ),
        Value::Array(vec![
            bulk("false"),
            bulk("ERR value is not an integer or out of range")
        ])
    );

    // Keys: declared only, one group only.
    let e = eval_err(
        &mut first,
        "return redis.call('GET', 'undeclared')",
        &[],
        &[],
    );
    assert!(e.contains("not in KEYS"), "{e}");
    let many: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(eval_err(&mut first, "return 1", &many, &[]).starts_with("CROSSSLOT"));
    let e = eval_err(&mut first, "return redis.call('NOSUCH', 'x')", &[], &[]);
    assert!(
        e.contains("Unknown Redis command called from script"),
        "{e}"
    );
    let e = eval_err(&mut first, "return redis.call('KEYS', '*')", &[], &[]);
    assert!(e.contains("not allowed from script"), "{e}");

    // Lua errors.
    let e = eval_err(&mut first, "return +", &[], &[]);
    assert!(e.starts_with("ERR Error compiling script"), "{e}");
    let e = eval_err(&mut first, "x = 1", &[], &[]);
    assert!(e.contains("create global variable 'x'"), "{e}");
    for tamper in [
        "string.len = nil",
        "_G.x = 1",
        "redis.call = nil",
        "rawset(_G, 'x', 1)",
    ] {
        let e = eval_err(&mut first, tamper, &[], &[]);
        assert!(e.starts_with("ERR Error running script"), "{tamper}: {e}");
    }
    assert_eq!(
        eval(
            &mut first,
            "return {string.len('abc'), loadstring == nil and 1 or 0}",
            &[],
            &[]
        ),
        Value::Array(vec![Int(3), Int(1)])
    );
    let e = eval_err(&mut first, "return nosuch()", &[], &[]);
    assert!(e.starts_with("ERR Error running script"), "{e}");
    let e = eval_err(
        &mut first,
        "return redis.call('EVAL', 'return 1', 0)",
        &[],
        &[],
    );
    assert!(e.contains("not allowed from script"), "{e}");

    // A runaway script is stopped, wrote nothing, and the node serves on.
    let e = eval_err(
        &mut first,
        "redis.call('SET', KEYS[1], 'half'); while true do end",
        &["{s}runaway"],
        &[],
    );
    assert!(e.starts_with("BUSY"), "{e}");
    assert_eq!(get(&mut first, "{s}runaway"), None);
    let info: String = redis::cmd("INFO").arg("stats").query(&mut first).unwrap();
    assert!(info.contains("script_runs_stopped:1\r\n"), "{info}");
    assert_eq!(get(&mut first, "{s}a").as_deref(), Some("hello"));

    // Scripts that run out of memory or stack fail alone: the next ones
    // (on the same shard's Lua) run.
    for bomb in [
        "return string.rep('x', 200 * 1024 * 1024)",
        "local t = {} for i = 1, 1e8 do t[i] = i end return 1",
        "local function f(n) return f(n + 1) + 1 end return f(1)",
    ] {
        let e = eval_err(&mut first, bomb, &[], &[]);
        // Out of memory, or (on a loaded machine) out of time first.
        assert!(
            e.starts_with("ERR Error running script") || e.starts_with("BUSY"),
            "{bomb}: {e}"
        );
        assert_eq!(
            eval(&mut first, "return 'still here'", &[], &[]),
            bulk("still here")
        );
    }

    // A script that fails after writing keeps its writes (as Redis).
    let e = eval_err(
        &mut first,
        "redis.call('SET', KEYS[1], 'kept'); return redis.call('INCR', KEYS[2])",
        &["{s}kept", "{s}word"],
        &[],
    );
    assert!(e.starts_with("ERR value is not an integer"), "{e}");
    assert_eq!(get(&mut third, "{s}kept").as_deref(), Some("kept"));

    // EVAL_RO reads and refuses writes.
    let mut ro = redis::cmd("EVAL_RO");
    ro.arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("{s}a");
    assert_eq!(ro.query::<Value>(&mut first).unwrap(), bulk("hello"));
    let mut ro = redis::cmd("EVAL_RO");
    ro.arg("return redis.call('SET', KEYS[1], 'no')")
        .arg(1)
        .arg("{s}a");
    let e = ro.query::<Value>(&mut first).unwrap_err();
    assert!(e.to_string().contains("read-only scripts"), "{e}");

    // The script cache: SCRIPT LOAD, EVALSHA, EXISTS, FLUSH, NOSCRIPT.
    let body = "return ARGV[1] .. ARGV[2]";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(body)
        .query(&mut first)
        .unwrap();
    assert_eq!(sha.len(), 40);
    let v: String = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .arg("a")
        .arg("b")
        .query(&mut first)
        .unwrap();
    assert_eq!(v, "ab");
    let v: String = redis::cmd("EVALSHA")
        .arg(sha.to_uppercase())
        .arg(0)
        .arg("c")
        .arg("d")
        .query(&mut first)
        .unwrap();
    assert_eq!(v, "cd");
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000000000000000000000000000000000000000")
        .query(&mut first)
        .unwrap();
    assert_eq!(exists, [1, 0]);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut first).unwrap();
    let e = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .query::<Value>(&mut first)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOSCRIPT"), "{e}");
    // The redis crate's Script: EVALSHA, then SCRIPT LOAD on NOSCRIPT.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let n: i64 = script.key("{s}count").arg(5).invoke(&mut third).unwrap();
    assert_eq!(n, 5);
    let n: i64 = script.key("{s}count").arg(5).invoke(&mut third).unwrap();
    assert_eq!(n, 10);

    // Scripts take no client ids: the next connection gets the next one.
    let id =
        |c: &mut redis::Connection| -> i64 { redis::cmd("CLIENT").arg("ID").query(c).unwrap() };
    let before = id(&mut nodes[1].redis());
    let mut second = nodes[1].redis();
    for _ in 0..5 {
        eval(
            &mut second,
            "return redis.call('GET', KEYS[1])",
            &["{s}a"],
            &[],
        );
    }
    assert_eq!(id(&mut nodes[1].redis()), before + 2);

    for n in &mut nodes {
        n.terminate();
    }
}

#[test]
fn concurrent_scripts_on_three_nodes_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &[]);
    // A read-modify-write in Lua: atomic only if nothing runs between the
    // GET and the SET. Three clients, one per node, at the same time.
    let script = "local v = tonumber(redis.call('GET', KEYS[1]) or '0') + 1; \
                  redis.call('SET', KEYS[1], v); redis.call('RPUSH', KEYS[2], v); return v";
    const PER_CLIENT: i64 = 60;
    let seen: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                let mut c = n.redis();
                s.spawn(move || {
                    (0..PER_CLIENT)
                        .map(|_| match eval(&mut c, script, &["{c}n", "{c}log"], &[]) {
                            Int(v) => v,
                            other => panic!("script answered {other:?}"),
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<i64> = seen.into_iter().flatten().collect();
    all.sort_unstable();
    let want: Vec<i64> = (1..=3 * PER_CLIENT).collect();
    assert_eq!(all, want, "every script saw a distinct count");
    let mut c = nodes[1].redis();
    assert_eq!(get(&mut c, "{c}n"), Some((3 * PER_CLIENT).to_string()));
    let conflicts: u64 = nodes
        .iter()
        .map(|n| {
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query(&mut n.redis())
                .unwrap();
            let field = |name: &str| -> u64 {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} in {info}"))
            };
            assert_eq!(field("scripts_answered:"), PER_CLIENT as u64);
            field("script_runs_conflicted:")
        })
        .sum();
    eprintln!(
        "{conflicts} runs of the {} scripts conflicted",
        3 * PER_CLIENT
    );
    let log: Vec<i64> = redis::cmd("LRANGE")
        .arg("{c}log")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(log, want, "the list holds the counts in order");
    for n in &mut nodes {
        n.terminate();
    }
}
