//! Three real `flotilla node` processes on loopback, driven with the `redis`
//! crate (and raw sockets for malformed input): every supported command,
//! pipelines, every bad-input case, HTTP health, and start-up failures
//! (bad config, port in use, unusable data directory) that must exit
//! non-zero with one clear line.

mod launcher_support;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use launcher_support::*;
use redis::Commands;

#[test]
fn three_nodes_serve_the_redis_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 4, &["--max-value-bytes", "65536"]);
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_ready(READY);
    }
    let mut c1 = nodes[0].redis();
    let mut c2 = nodes[1].redis();
    let mut c3 = nodes[2].redis();

    // Basic commands; writes on one node are read on the others
    // (linearizable reads, forwarded writes).
    let _: () = c1.set("greeting", "hello").unwrap();
    let got: Option<String> = c2.get("greeting").unwrap();
    assert_eq!(
        got.as_deref(),
        Some("hello"),
        "GET on node 2 after SET on node 1"
    );
    let got: Option<String> = c3.get("missing").unwrap();
    assert_eq!(got, None, "GET of an absent key is nil");
    assert_eq!(c2.incr::<_, _, i64>("counter", 1).unwrap(), 1);
    assert_eq!(c3.incr::<_, _, i64>("counter", 41).unwrap(), 42);
    assert_eq!(c1.decr::<_, _, i64>("counter", 2).unwrap(), 40);
    let err = c1.incr::<_, _, i64>("greeting", 1).unwrap_err();
    assert!(
        err.to_string().contains("not an integer"),
        "INCR of a non-integer: {err}"
    );
    assert_eq!(c1.append::<_, _, i64>("greeting", " world").unwrap(), 11);
    assert_eq!(
        c3.get::<_, String>("greeting").unwrap(),
        "hello world",
        "APPEND"
    );
    let pairs: Vec<(String, String)> = (0..20)
        .map(|i| (format!("m{i}"), format!("v{i}")))
        .collect();
    let _: () = c2.mset(&pairs).unwrap();
    let keys: Vec<String> = pairs
        .iter()
        .map(|p| p.0.clone())
        .chain(["nope".into()])
        .collect();
    let values: Vec<Option<String>> = c3.mget(&keys).unwrap();
    let mut want: Vec<Option<String>> = pairs.iter().map(|p| Some(p.1.clone())).collect();
    want.push(None);
    assert_eq!(values, want, "MGET after MSET across groups");
    assert_eq!(
        c1.exists::<_, i64>(&["m1", "m2", "nope", "m1"]).unwrap(),
        3,
        "EXISTS counts"
    );
    assert_eq!(
        c1.del::<_, i64>(&["m1", "m2", "nope"]).unwrap(),
        2,
        "DEL counts"
    );
    assert_eq!(c2.exists::<_, i64>("m1").unwrap(), 0, "deleted");
    // SET options.
    let r: Option<String> = redis::cmd("SET")
        .arg("nx")
        .arg("1")
        .arg("NX")
        .query(&mut c1)
        .unwrap();
    assert_eq!(r.as_deref(), Some("OK"));
    let r: Option<String> = redis::cmd("SET")
        .arg("nx")
        .arg("2")
        .arg("NX")
        .query(&mut c1)
        .unwrap();
    assert_eq!(r, None, "SET NX on an existing key is nil");
    let r: Option<String> = redis::cmd("SET")
        .arg("nx")
        .arg("3")
        .arg("GET")
        .query(&mut c1)
        .unwrap();
    assert_eq!(r.as_deref(), Some("1"), "SET GET returns the old value");
    let ok: String = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg("10")
        .query(&mut c1)
        .unwrap();
    assert_eq!(ok, "OK");
    let ttl: i64 = redis::cmd("TTL").arg("k").query(&mut c1).unwrap();
    assert!((9..=10).contains(&ttl), "TTL {ttl} after SET EX 10");

    // A pipeline: many commands in one write, answered in order, with a
    // read-your-writes GET of each key after its SET.
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("p{i}"), i).ignore();
        pipe.get(format!("p{i}"));
    }
    pipe.incr("pcount", 1).incr("pcount", 1).get("pcount");
    let out: Vec<redis::Value> = pipe.query(&mut c2).unwrap();
    assert_eq!(out.len(), 503);
    for (i, v) in out.iter().take(500).enumerate() {
        let got: i64 = redis::from_redis_value(v.clone())
            .unwrap_or_else(|e| panic!("pipeline GET p{i}: {v:?}: {e}"));
        assert_eq!(got, i as i64, "pipeline GET p{i} sees the SET before it");
    }
    let last: String = redis::from_redis_value(out[502].clone()).unwrap();
    assert_eq!(last, "2", "INCR INCR GET in one pipeline");
    // Everything is visible from another node.
    let vals: Vec<Option<i64>> = c3
        .mget((0..500).map(|i| format!("p{i}")).collect::<Vec<_>>())
        .unwrap();
    assert!(
        vals.iter().enumerate().all(|(i, v)| *v == Some(i as i64)),
        "pipelined writes read back from node 3"
    );

    // DBSIZE, SCAN (full iteration) and KEYS agree.
    let size: i64 = redis::cmd("DBSIZE").query(&mut c1).unwrap();
    let mut scanned: Vec<String> = c3.scan().unwrap().collect::<Result<_, _>>().unwrap();
    scanned.sort();
    scanned.dedup();
    assert_eq!(scanned.len() as i64, size, "SCAN returns every key once");
    let mut pkeys: Vec<String> = c2.keys("p*").unwrap();
    pkeys.sort();
    assert_eq!(pkeys.len(), 501, "KEYS p* (p0..p499 and pcount)");
    let mut matched: Vec<String> = c1
        .scan_match("m1*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    matched.sort();
    assert_eq!(
        matched,
        ["m10", "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19"]
    );

    // Server commands clients send.
    let pong: String = redis::cmd("PING").query(&mut c1).unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut c1).unwrap();
    assert_eq!(echo, "hi");
    let info: String = redis::cmd("INFO").query(&mut c1).unwrap();
    assert!(
        info.contains("redis_version:") && info.contains("# Raft"),
        "{info}"
    );
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut c1)
        .unwrap();
    assert_eq!(cfg, ["save", ""]);
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query(&mut c1)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut c1).unwrap();
    assert_eq!(name, "tester");
    let n: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut c1).unwrap();
    assert!(n > 20, "COMMAND COUNT {n}");
    let hello = redis::cmd("HELLO").arg("4").query::<redis::Value>(&mut c1);
    assert!(hello.is_err(), "HELLO 4 is refused: {hello:?}");
    let _: () = redis::cmd("CONSISTENCY")
        .arg("stale")
        .query(&mut c1)
        .unwrap();
    let got: Option<String> = c1.get("counter").unwrap();
    assert!(
        got.is_some(),
        "stale read of a key written long ago on this node"
    );

    // Bad inputs: errors, and the connection stays usable.
    let err = redis::cmd("NOSUCH")
        .arg("x")
        .query::<String>(&mut c2)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    let big = vec![b'x'; 70_000];
    let err = c2.set::<_, _, String>("big", &big[..]).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the limit"),
        "oversized value: {err}"
    );
    let err = redis::cmd("GET").query::<String>(&mut c2).unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    let pong: String = redis::cmd("PING").query(&mut c2).unwrap();
    assert_eq!(pong, "PONG", "connection usable after errors");
    assert_eq!(
        c2.exists::<_, i64>("big").unwrap(),
        0,
        "oversized SET not applied"
    );

    // A protocol error answers the error and closes the connection (the
    // stream is out of step: the rest must not run as commands). Commands
    // before it in the same read are answered first.
    let _: () = c2.set("keep", "1").unwrap();
    let mut raw = TcpStream::connect(nodes[0].resp).unwrap();
    let out = raw_exchange(&mut raw, b"PING\r\n*x\r\nFLUSHALL\r\n", 2);
    assert!(
        out.starts_with("+PONG\r\n-ERR Protocol error"),
        "malformed header: {out:?}"
    );
    assert_closed(&mut raw);
    let mut raw = TcpStream::connect(nodes[0].resp).unwrap();
    let out = raw_exchange(&mut raw, b"*2\r\n$3\r\nGET\r\n$3\r\nabcdef\r\n", 1);
    assert!(
        out.starts_with("-ERR Protocol error"),
        "bad bulk terminator: {out:?}"
    );
    assert_closed(&mut raw);
    assert_eq!(
        c2.exists::<_, i64>("keep").unwrap(),
        1,
        "the FLUSHALL after the broken frame did not run"
    );
    let mut raw = TcpStream::connect(nodes[0].resp).unwrap();
    let out = raw_exchange(&mut raw, b"PING\r\nECHO hi\r\n", 3);
    assert_eq!(out, "+PONG\r\n$2\r\nhi\r\n", "inline commands");
    let out = raw_exchange(&mut raw, b"QUIT\r\n", 1);
    assert_eq!(out, "+OK\r\n");

    // HTTP answers on the same node.
    let (status, body) = http(nodes[0].http, "GET", "/health", "");
    assert_eq!(status, 200, "GET /health: {body}");

    // SIGTERM: graceful stop, exit 0.
    for n in &mut nodes {
        let status = n.terminate();
        assert!(
            status.success(),
            "node {} exit status {status:?}\n{}",
            n.id,
            n.log_tail()
        );
    }
}

/// The server closed `raw`: a read returns end of stream.
fn assert_closed(raw: &mut TcpStream) {
    use std::io::Read;
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    match raw.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the error: {rest:?}"),
        Err(e) => panic!("the connection stayed open after a protocol error: {e}"),
    }
}

/// Runs `flotilla <args>` to completion: (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(flotilla_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn flotilla");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_failure(args: &[&str], must_contain: &str) {
    let (code, _, stderr) = run(args, &[]);
    assert_ne!(code, 0, "flotilla {args:?} must fail; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one line of error for {args:?}, got: {stderr}"
    );
    assert!(
        lines[0].contains(must_contain),
        "error for {args:?} names {must_contain:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn bad_starts_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base = [
        "node",
        "--data-dir",
        data.as_str(),
        "--shards",
        "1",
        "--placement",
        "unbound",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let check = |extra: &[&str], want: &str| {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_failure(&refs, want);
    };
    check(&["--node-id", "0"], "node_id");
    check(&["--members", "2=127.0.0.1:7100"], "not in the list");
    check(&["--members", "garbage"], "id=host:port");
    check(&["--kv-groups", "0"], "kv_groups");

    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "node_id = 1\nno_such_key = 3\n").unwrap();
    check(&["--config", bad_toml.to_str().unwrap()], "no_such_key");
    check(&["--config", "/nonexistent/flotilla.toml"], "config file");

    // A port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let raft = free_addr().to_string();
    check(
        &[
            "--resp-addr",
            &busy_addr,
            "--raft-addr",
            &raft,
            "--http-addr",
            &free_addr().to_string(),
            "--port-wait-ms",
            "0",
        ],
        "in use",
    );
    // An unusable data directory (a path below a regular file).
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("data").display().to_string();
    assert_one_line_failure(
        &[
            "node",
            "--data-dir",
            &under_file,
            "--shards",
            "1",
            "--resp-addr",
            &free_addr().to_string(),
            "--http-addr",
            &free_addr().to_string(),
            "--raft-addr",
            &raft,
        ],
        "data directory",
    );
    drop(busy);
}

#[test]
fn print_config_follows_flag_env_file_default_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    let mut f = std::fs::File::create(&file).unwrap();
    writeln!(
        f,
        "node_id = 3\nkv_groups = 5\ncluster_id = 9\nraft_addr = \"127.0.0.1:9100\""
    )
    .unwrap();
    drop(f);
    let cfg = file.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "node",
            "--config",
            cfg,
            "--print-config",
            "--cluster-id",
            "11",
        ],
        &[("FLOTILLA_KV_GROUPS", "7"), ("FLOTILLA_CLUSTER_ID", "10")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node_id = 3\n"), "file value: {out}");
    assert!(out.contains("kv_groups = 7\n"), "env beats file: {out}");
    assert!(out.contains("cluster_id = 11\n"), "flag beats env: {out}");
    assert!(
        out.contains("max_value_bytes = 8388608\n"),
        "default: {out}"
    );
    // The printed config is itself a valid config file.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    let (code, out2, err) = run(
        &[
            "node",
            "--config",
            printed.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out2, out, "round trip of --print-config");
}

#[test]
fn a_fourth_node_joins_a_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 2, &[]);
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_ready(READY);
    }
    let mut c1 = nodes[0].redis();
    let _: () = c1.set("before-join", "yes").unwrap();
    let raft = free_addr_block(test_shards());
    let resp = free_addr();
    let http_addr = free_addr();
    let data_dir = dir.path().join("node-4");
    let mut n4 = NodeProc {
        id: 4,
        resp,
        http: http_addr,
        raft,
        log: dir.path().join("node-4.log"),
        args: vec![
            "--node-id".into(),
            "4".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--raft-addr".into(),
            raft.to_string(),
            "--resp-addr".into(),
            resp.to_string(),
            "--http-addr".into(),
            http_addr.to_string(),
            "--shards".into(),
            test_shards().to_string(),
            "--placement".into(),
            "unbound".into(),
            "--kv-groups".into(),
            "2".into(),
            "--io-memory-bytes".into(),
            (1 << 20).to_string(),
            "--wal-segment-bytes".into(),
            TEST_WAL_SEGMENT_BYTES.to_string(),
            "--join".into(),
            nodes[0].http.to_string(),
        ],
        data_dir,
        child: None,
    };
    // First with another cluster id: refused before anything changes (it
    // used to be added as a voter of every group, then could not connect).
    let mut wrong = NodeProc {
        id: 4,
        resp,
        http: http_addr,
        raft,
        log: dir.path().join("node-4-wrong.log"),
        args: n4
            .args
            .iter()
            .map(|a| {
                if *a == n4.data_dir.display().to_string() {
                    dir.path().join("node-4-wrong").display().to_string()
                } else {
                    a.clone()
                }
            })
            .chain(["--cluster-id".to_string(), "999".to_string()])
            .collect(),
        data_dir: dir.path().join("node-4-wrong"),
        child: None,
    };
    wrong.start();
    let mut child = wrong.child.take().unwrap();
    let status = wait_exit(&mut child, "a join with the wrong cluster id", READY);
    assert!(!status.success(), "refused: {status:?}");
    assert!(
        wrong.log_tail().contains("--cluster-id 1"),
        "says which id to use:\n{}",
        wrong.log_tail()
    );
    assert!(
        !wrong.log_tail().contains('\u{1b}'),
        "a log file gets no colour codes:\n{}",
        wrong.log_tail()
    );
    for g in 1..=2 {
        let (_, body) = http(nodes[0].http, "GET", &format!("/groups/{g}/members"), "");
        assert!(!body.contains("\"node\":4"), "group {g} unchanged: {body}");
    }
    n4.start();
    n4.wait_ready(READY);
    let mut c4 = n4.redis();
    let got: Option<String> = wait_for("node 4 reads a write from before it joined", READY, || {
        c4.get::<_, Option<String>>("before-join").ok().flatten()
    })
    .into();
    assert_eq!(got.as_deref(), Some("yes"));
    for g in 1..=2 {
        let (status, body) = http(nodes[1].http, "GET", &format!("/groups/{g}/members"), "");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"node\":4"),
            "group {g} lists node 4: {body}"
        );
    }
    let status = n4.terminate();
    assert!(
        status.success(),
        "node 4 exit {status:?}\n{}",
        n4.log_tail()
    );
    for n in &mut nodes {
        let status = n.terminate();
        assert!(status.success(), "node {} exit {status:?}", n.id);
    }
}

/// A node started under a low open-file limit lowers `max_clients` to fit
/// it (and says so): a client past it is refused at once with Redis' `max
/// number of clients reached` instead of waiting, unaccepted, for a file
/// descriptor, and the clients it kept are served.
#[test]
fn a_low_open_file_limit_lowers_max_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, 4, &[]);
    let node = &mut nodes[0];
    // 700 files: (700 - 256 reserved) / 2 = 222 clients per protocol.
    node.start_with_open_files(700);
    node.wait_ready(READY);
    let logged = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        logged.contains("max_clients lowered") && logged.contains("max_clients=222"),
        "no warning about the lowered max_clients:\n{}",
        node.log_tail()
    );
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..240 {
        let mut s = TcpStream::connect(node.resp).expect("connect");
        let reply = raw_exchange(&mut s, b"PING\r\n", 1);
        if reply.starts_with("+PONG") {
            kept.push(s);
        } else {
            assert_eq!(reply, "-ERR max number of clients reached\r\n");
            refused += 1;
        }
    }
    // wait_ready's connections may still be closing: at most a few more
    // refused than 240 - 222.
    assert!(
        (18..=22).contains(&refused),
        "{refused} of 240 refused, {} kept",
        kept.len()
    );
    for s in kept.iter_mut().step_by(37) {
        assert_eq!(raw_exchange(s, b"PING\r\n", 1), "+PONG\r\n");
    }
    kept.truncate(100);
    let mut c = wait_for(
        "a connection after others closed",
        Duration::from_secs(10),
        || {
            let mut s = TcpStream::connect(node.resp).ok()?;
            raw_exchange(&mut s, b"SET k v\r\n", 1)
                .starts_with("+OK")
                .then_some(s)
        },
    );
    assert_eq!(raw_exchange(&mut c, b"GET k\r\n", 2), "$1\r\nv\r\n");
}
