//! Pub/Sub, RESP3, XREAD and LMPOP/ZMPOP through the real binary: three `flotilla
//! node` processes, raw sockets, and every reply compared byte for byte
//! with what Redis sends.

mod launcher_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use launcher_support::*;

/// A client socket that checks replies byte for byte.
struct Raw(TcpStream);

impl Raw {
    fn connect(node: &NodeProc) -> Raw {
        let s = TcpStream::connect(node.resp).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Raw(s)
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.write_all(out.as_bytes()).expect("write");
    }

    /// Reads exactly as many bytes as `want` has (10 s at most) and
    /// compares.
    fn expect(&mut self, want: &str) {
        let got = self.read_n(want.len(), Duration::from_secs(10));
        assert_eq!(got, want, "reply");
    }

    fn read_n(&mut self, n: usize, deadline: Duration) -> String {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; n];
        while got.len() < n && start.elapsed() < deadline {
            match self.0.read(&mut buf[..n - got.len()]) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Whatever arrives within `wait`.
    fn drain(&mut self, wait: Duration) -> String {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < wait {
            if let Ok(k) = self.0.read(&mut buf) {
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    fn call(&mut self, args: &[&str], want: &str) {
        self.send(args);
        self.expect(want);
    }
}

fn message(channel: &str, payload: &str) -> String {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    )
}

/// Sends `args` to the node at `addr` from a thread of its own, 300 ms
/// from now (to wake a blocked client).
fn later(addr: std::net::SocketAddr, args: &[&str]) -> std::thread::JoinHandle<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // A plain thread of the test, not a shard: it may sleep.
    #[allow(clippy::disallowed_methods)]
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        let _: redis::Value = cmd.query(&mut c).unwrap();
    })
}

fn publish(c: &mut redis::Connection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(c)
        .unwrap_or_else(|e| panic!("PUBLISH {channel}: {e}"))
}

#[test]
fn pubsub_and_resp3_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = ready_cluster(dir.path(), 3, 4);
    let mut publisher = nodes[2].redis();

    // A RESP2 subscriber on node 1, a RESP3 pattern subscriber on node 2.
    let mut s1 = Raw::connect(&nodes[0]);
    s1.call(
        &["SUBSCRIBE", "news", "sport"],
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n",
    );
    let mut s2 = Raw::connect(&nodes[1]);
    s2.send(&["HELLO", "3"]);
    let hello = s2.drain(Duration::from_millis(500));
    assert!(
        hello.starts_with("%7\r\n"),
        "HELLO 3 answers a map: {hello:?}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello:?}");
    s2.call(
        &["PSUBSCRIBE", "n*"],
        ">3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n",
    );

    // A message published through the third node reaches both, in the
    // protocol each speaks; nobody on the publisher's node listens.
    assert_eq!(publish(&mut publisher, "news", "hello"), 0);
    s1.expect(&message("news", "hello"));
    s2.expect(">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n");

    // Many messages, published from two nodes: each channel's arrive in
    // the order they were published.
    let mut other = nodes[1].redis();
    let mut want = String::new();
    for i in 0..60 {
        let (c, channel) = if i % 2 == 0 {
            (&mut publisher, "news")
        } else {
            (&mut other, "sport")
        };
        publish(c, channel, &i.to_string());
        want.push_str(&message(channel, &i.to_string()));
    }
    // "news" and "sport" may live in different groups: compare per channel.
    let got = s1.read_n(want.len(), Duration::from_secs(10));
    let per_channel = |text: &str, channel: &str| -> Vec<String> {
        text.split("*3\r\n")
            .filter(|m| m.contains(&format!("\r\n{channel}\r\n")))
            .map(str::to_owned)
            .collect()
    };
    for channel in ["news", "sport"] {
        assert_eq!(
            per_channel(&got, channel),
            per_channel(&want, channel),
            "{channel} in order"
        );
    }
    // The pattern subscriber got the 30 "news" ones, not "sport".
    let news = s2.read_n(30 * 48, Duration::from_secs(10));
    assert_eq!(news.matches("pmessage").count(), 30, "{news}");
    assert!(!news.contains("sport"));

    // Subscribed mode in RESP2: only the subscription commands, PING (as
    // an array), QUIT and RESET. In RESP3 (as Redis 7) every command runs.
    s1.call(
        &["GET", "k"],
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    s1.call(&["PING"], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    s2.call(&["PING"], "+PONG\r\n");
    s2.call(&["SET", "in-sub-mode", "v"], "+OK\r\n");
    s2.call(&["GET", "in-sub-mode"], "$1\r\nv\r\n");
    s2.call(&["HGETALL", "no-hash"], "%0\r\n");
    {
        // PUBLISH counts this node's subscribers (whichever executor holds
        // their connections), PUBSUB reports them.
        let mut local = nodes[0].redis();
        assert_eq!(publish(&mut local, "sport", "here"), 1);
        s1.expect(&message("sport", "here"));
        // Several connections (spread over the node's executors when it
        // has several) are all counted.
        let mut many: Vec<Raw> = (0..4).map(|_| Raw::connect(&nodes[0])).collect();
        for m in many.iter_mut() {
            m.call(
                &["SUBSCRIBE", "many"],
                "*3\r\n$9\r\nsubscribe\r\n$4\r\nmany\r\n:1\r\n",
            );
        }
        assert_eq!(publish(&mut local, "many", "x"), 4);
        for m in many.iter_mut() {
            m.expect(&message("many", "x"));
        }
        drop(many);
        wait_for(
            "closed subscribers uncounted",
            Duration::from_secs(10),
            || (publish(&mut local, "many", "y") == 0).then_some(()),
        );
        let numsub: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .arg("none")
            .query(&mut local)
            .unwrap();
        assert_eq!(
            numsub,
            vec![
                redis::Value::BulkString(b"news".to_vec()),
                redis::Value::Int(1),
                redis::Value::BulkString(b"none".to_vec()),
                redis::Value::Int(0)
            ]
        );
    }

    // Every delivery is counted where the subscriber is.
    let mut stats = nodes[0].redis();
    let info: String = redis::cmd("INFO").arg("stats").query(&mut stats).unwrap();
    assert!(
        info.lines()
            .filter_map(|l| l.strip_prefix("pubsub_messages_delivered:"))
            .any(|n| n.trim().parse::<u64>().unwrap() >= 31),
        "{info}"
    );

    // Leaving every channel ends subscribed mode: commands work again and
    // no message comes any more.
    s1.call(
        &["UNSUBSCRIBE"],
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$5\r\nsport\r\n:0\r\n",
    );
    s1.call(&["SET", "k", "v"], "+OK\r\n");
    publish(&mut publisher, "news", "late");
    s1.call(&["GET", "k"], "$1\r\nv\r\n");
    assert_eq!(s1.drain(Duration::from_millis(300)), "");
    s2.expect(">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$4\r\nlate\r\n");

    // RESET leaves subscribed mode and RESP3.
    s2.call(&["RESET"], "+RESET\r\n");
    s2.call(&["GET", "missing"], "$-1\r\n");
    s2.call(
        &["UNSUBSCRIBE"],
        "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
    );

    // RESP3 reply types (HELLO 3 again, on a fresh connection).
    let mut r = Raw::connect(&nodes[0]);
    r.send(&["HELLO", "3"]);
    assert!(r.drain(Duration::from_millis(500)).starts_with("%7\r\n"));
    r.send(&["CLIENT", "INFO"]);
    let info = r.drain(Duration::from_millis(300));
    assert!(info.contains(" sub=0 psub=0 multi=-1 resp=3 "), "{info:?}");
    r.call(&["GET", "missing"], "_\r\n");
    r.call(&["HSET", "h", "f", "v"], ":1\r\n");
    r.call(&["HGETALL", "h"], "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    r.call(&["ZADD", "z", "1.5", "a", "2", "b"], ":2\r\n");
    r.call(&["ZSCORE", "z", "a"], ",1.5\r\n");
    r.call(&["ZSCORE", "z", "nope"], "_\r\n");
    r.call(
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        "*2\r\n*2\r\n$1\r\na\r\n,1.5\r\n*2\r\n$1\r\nb\r\n,2\r\n",
    );
    r.call(&["ZINCRBY", "z", "1", "a"], ",2.5\r\n");
    r.call(&["ZMSCORE", "z", "a", "nope"], "*2\r\n,2.5\r\n_\r\n");
    r.call(&["ZPOPMIN", "z"], "*2\r\n$1\r\nb\r\n,2\r\n");
    r.call(&["ZPOPMIN", "z", "5"], "*1\r\n*2\r\n$1\r\na\r\n,2.5\r\n");
    r.call(&["SADD", "s", "x"], ":1\r\n");
    r.call(&["SMEMBERS", "s"], "~1\r\n$1\r\nx\r\n");
    r.call(
        &["CONFIG", "GET", "maxmemory"],
        "%1\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n",
    );
    r.call(&["LPOP", "nolist", "2"], "_\r\n");
    // And the same commands in RESP2 after HELLO 2.
    r.send(&["HELLO", "2"]);
    assert!(r.drain(Duration::from_millis(500)).starts_with("*14\r\n"));
    r.call(&["HGETALL", "h"], "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    r.call(&["ZADD", "z", "1.5", "a"], ":1\r\n");
    r.call(&["ZSCORE", "z", "a"], "$3\r\n1.5\r\n");
    r.call(
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        "*2\r\n$1\r\na\r\n$3\r\n1.5\r\n",
    );
    r.call(&["GET", "missing"], "$-1\r\n");

    // XREAD: entries after an id, streams in different groups, `$`, and
    // BLOCK woken by an XADD through another node.
    r.call(&["XADD", "sa", "1-1", "f", "v"], "$3\r\n1-1\r\n");
    r.call(&["XADD", "sb", "2-0", "g", "w"], "$3\r\n2-0\r\n");
    r.call(&["XADD", "sb", "3-0", "h", "x"], "$3\r\n3-0\r\n");
    let entry = |id: &str, f: &str, v: &str| {
        format!("*2\r\n$3\r\n{id}\r\n*2\r\n$1\r\n{f}\r\n$1\r\n{v}\r\n")
    };
    r.call(
        &["XREAD", "STREAMS", "sa", "sb", "0", "2-0"],
        &format!(
            "*2\r\n*2\r\n$2\r\nsa\r\n*1\r\n{}*2\r\n$2\r\nsb\r\n*1\r\n{}",
            entry("1-1", "f", "v"),
            entry("3-0", "h", "x")
        ),
    );
    r.call(
        &["XREAD", "COUNT", "1", "STREAMS", "sb", "0"],
        &format!("*1\r\n*2\r\n$2\r\nsb\r\n*1\r\n{}", entry("2-0", "g", "w")),
    );
    r.call(&["XREAD", "STREAMS", "sa", "$"], "*-1\r\n");
    let began = Instant::now();
    r.call(&["XREAD", "BLOCK", "200", "STREAMS", "sa", "$"], "*-1\r\n");
    assert!(began.elapsed() >= Duration::from_millis(200));
    let adder = later(nodes[2].resp, &["XADD", "sa", "9-0", "n", "m"]);
    let began = Instant::now();
    r.call(
        &["XREAD", "BLOCK", "10000", "STREAMS", "sb", "sa", "$", "$"],
        &format!("*1\r\n*2\r\n$2\r\nsa\r\n*1\r\n{}", entry("9-0", "n", "m")),
    );
    assert!(began.elapsed() >= Duration::from_millis(250));
    adder.join().unwrap();
    // RESP3: a map of stream to entries, null when nothing came.
    r.send(&["HELLO", "3"]);
    assert!(r.drain(Duration::from_millis(500)).starts_with("%7\r\n"));
    r.call(
        &["XREAD", "STREAMS", "sa", "1-1"],
        &format!("%1\r\n$2\r\nsa\r\n*1\r\n{}", entry("9-0", "n", "m")),
    );
    r.call(&["XREAD", "STREAMS", "sa", "9-0"], "_\r\n");
    r.call(&["COMMAND", "DOCS", "get"], "%0\r\n");
    r.call(&["ZADD", "{q}rz", "1", "a"], ":1\r\n");
    r.call(
        &["ZMPOP", "1", "{q}rz", "MIN"],
        "*2\r\n$5\r\n{q}rz\r\n*1\r\n*2\r\n$1\r\na\r\n,1\r\n",
    );

    // LMPOP / ZMPOP (one command of the keys' group), BLMPOP / BZMPOP.
    let mut m = Raw::connect(&nodes[1]);
    m.call(&["RPUSH", "{q}a", "1", "2", "3"], ":3\r\n");
    m.call(
        &["LMPOP", "2", "{q}none", "{q}a", "LEFT", "COUNT", "2"],
        "*2\r\n$4\r\n{q}a\r\n*2\r\n$1\r\n1\r\n$1\r\n2\r\n",
    );
    m.call(&["LMPOP", "1", "{q}none", "LEFT"], "*-1\r\n");
    m.call(&["ZADD", "{q}z", "1", "a", "2.5", "b"], ":2\r\n");
    m.call(
        &["ZMPOP", "1", "{q}z", "MAX"],
        "*2\r\n$4\r\n{q}z\r\n*1\r\n*2\r\n$1\r\nb\r\n$3\r\n2.5\r\n",
    );
    m.call(&["LMPOP", "1", "{q}a", "UP"], "-ERR syntax error\r\n");
    let began = Instant::now();
    m.call(&["BZMPOP", "0.1", "1", "{q}nz", "MIN"], "*-1\r\n");
    assert!(began.elapsed() >= Duration::from_millis(100));
    let pusher = later(nodes[2].resp, &["RPUSH", "{q}b", "v"]);
    let began = Instant::now();
    m.call(
        &["BLMPOP", "10", "2", "{q}none", "{q}b", "RIGHT"],
        "*2\r\n$4\r\n{q}b\r\n*1\r\n$1\r\nv\r\n",
    );
    assert!(began.elapsed() >= Duration::from_millis(250));
    pusher.join().unwrap();
    // RESET outside subscribed mode: back to RESP2, transaction dropped.
    r.call(&["MULTI"], "+OK\r\n");
    r.call(&["RESET"], "+RESET\r\n");
    r.call(&["GET", "missing"], "$-1\r\n");
    r.call(&["EXEC"], "-ERR EXEC without MULTI\r\n");
    r.call(&["XREAD", "STREAMS", "sa"], "-ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.\r\n");
}
