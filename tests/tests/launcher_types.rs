//! The collection commands of session 11 through the real binary: three
//! `flotilla node` processes, the `redis` crate as the client. Each
//! command once with Redis' reply shape (the redis.io examples), errors
//! as Redis words them, multi-key commands on hash-tagged keys, and
//! `-CROSSSLOT` for keys of two groups.

mod launcher_support;

use std::time::Duration;

use launcher_support::*;
use redis::Value::{self, Int, Nil};

fn q(c: &mut redis::Connection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error text of a command that must fail (code and message).
fn err(c: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(c) {
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
        Err(e) => {
            let code = e.code().unwrap_or("?").to_string();
            let detail = e.detail().unwrap_or("").to_string();
            format!("{code} {detail}")
        }
    }
}

fn text(v: &[&str]) -> Value {
    Value::Array(
        v.iter()
            .map(|s| Value::BulkString(s.as_bytes().to_vec()))
            .collect(),
    )
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn ints(v: &[i64]) -> Value {
    Value::Array(v.iter().map(|n| Int(*n)).collect())
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Array(mut items) => {
            items.sort_by_key(|i| format!("{i:?}"));
            Value::Array(items)
        }
        v => v,
    }
}

#[test]
fn collection_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = ready_cluster(dir.path(), 3, 4);
    let mut c = nodes[0].redis();

    // Sorted sets by score.
    assert_eq!(
        q(
            &mut c,
            &["ZADD", "myzset", "1", "one", "2", "two", "3", "three"]
        ),
        Int(3)
    );
    assert_eq!(
        q(&mut c, &["ZRANGEBYSCORE", "myzset", "-inf", "+inf"]),
        text(&["one", "two", "three"])
    );
    assert_eq!(
        q(&mut c, &["ZRANGEBYSCORE", "myzset", "(1", "2"]),
        text(&["two"])
    );
    assert_eq!(
        q(&mut c, &["ZRANGEBYSCORE", "myzset", "(1", "(2"]),
        text(&[])
    );
    assert_eq!(
        q(
            &mut c,
            &[
                "ZRANGEBYSCORE",
                "myzset",
                "-inf",
                "inf",
                "WITHSCORES",
                "LIMIT",
                "1",
                "1"
            ]
        ),
        text(&["two", "2"])
    );
    assert_eq!(
        q(&mut c, &["ZREVRANGEBYSCORE", "myzset", "+inf", "(1"]),
        text(&["three", "two"])
    );
    assert_eq!(
        q(
            &mut c,
            &[
                "ZRANGE",
                "myzset",
                "(3",
                "1",
                "BYSCORE",
                "REV",
                "WITHSCORES"
            ]
        ),
        text(&["two", "2", "one", "1"])
    );
    assert_eq!(q(&mut c, &["ZCOUNT", "myzset", "(1", "3"]), Int(2));
    assert_eq!(
        q(&mut c, &["ZRANDMEMBER", "myzset", "5", "WITHSCORES"]),
        text(&["one", "1", "two", "2", "three", "3"])
    );
    assert_eq!(
        q(&mut c, &["ZMSCORE", "myzset", "one", "nofield"]),
        Value::Array(vec![bulk("1"), Nil])
    );
    assert_eq!(
        err(&mut c, &["ZCOUNT", "myzset", "x", "1"]),
        "ERR min or max is not a float"
    );
    assert_eq!(
        q(&mut c, &["ZREMRANGEBYSCORE", "myzset", "-inf", "(2"]),
        Int(1)
    );
    assert_eq!(q(&mut c, &["ZREMRANGEBYRANK", "myzset", "0", "0"]), Int(1));
    assert_eq!(
        q(&mut c, &["ZRANGE", "myzset", "0", "-1", "WITHSCORES"]),
        text(&["three", "3"])
    );

    // Sorted set algebra (redis.io's ZUNIONSTORE example), hash-tagged.
    q(&mut c, &["ZADD", "{z}1", "1", "one", "2", "two"]);
    q(
        &mut c,
        &["ZADD", "{z}2", "1", "one", "2", "two", "3", "three"],
    );
    assert_eq!(
        q(
            &mut c,
            &[
                "ZUNIONSTORE",
                "{z}out",
                "2",
                "{z}1",
                "{z}2",
                "WEIGHTS",
                "2",
                "3"
            ]
        ),
        Int(3)
    );
    assert_eq!(
        q(&mut c, &["ZRANGE", "{z}out", "0", "-1", "WITHSCORES"]),
        text(&["one", "5", "three", "9", "two", "10"])
    );
    assert_eq!(
        q(
            &mut c,
            &[
                "ZINTER",
                "2",
                "{z}1",
                "{z}2",
                "AGGREGATE",
                "MAX",
                "WITHSCORES"
            ]
        ),
        text(&["one", "1", "two", "2"])
    );
    assert_eq!(q(&mut c, &["ZDIFF", "2", "{z}2", "{z}1"]), text(&["three"]));
    assert_eq!(q(&mut c, &["ZINTERCARD", "2", "{z}1", "{z}2"]), Int(2));
    assert_eq!(
        err(&mut c, &["ZUNIONSTORE", "{z}out", "0", "{z}1"]),
        "ERR at least 1 input key is needed for 'zunionstore' command"
    );

    // Sorted sets by member (all scores equal).
    q(
        &mut c,
        &[
            "ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d", "0", "e",
        ],
    );
    assert_eq!(
        q(&mut c, &["ZRANGEBYLEX", "lex", "-", "[c"]),
        text(&["a", "b", "c"])
    );
    assert_eq!(
        q(
            &mut c,
            &["ZREVRANGEBYLEX", "lex", "+", "(c", "LIMIT", "0", "1"]
        ),
        text(&["e"])
    );
    assert_eq!(
        q(&mut c, &["ZRANGE", "lex", "[d", "(b", "BYLEX", "REV"]),
        text(&["d", "c"])
    );
    assert_eq!(q(&mut c, &["ZLEXCOUNT", "lex", "[b", "[d"]), Int(3));
    assert_eq!(q(&mut c, &["ZREMRANGEBYLEX", "lex", "-", "(c"]), Int(2));
    assert_eq!(
        err(&mut c, &["ZLEXCOUNT", "lex", "b", "+"]),
        "ERR min or max not valid string range item"
    );

    // Hashes.
    assert_eq!(q(&mut c, &["HSET", "mykey", "field", "10.50"]), Int(1));
    assert_eq!(
        q(&mut c, &["HINCRBYFLOAT", "mykey", "field", "0.1"]),
        bulk("10.6")
    );
    assert_eq!(
        q(&mut c, &["HINCRBYFLOAT", "mykey", "field", "-5"]),
        bulk("5.6")
    );
    assert_eq!(
        q(&mut c, &["HINCRBYFLOAT", "mykey", "sum", "0.1"]),
        bulk("0.1")
    );
    assert_eq!(
        q(&mut c, &["HINCRBYFLOAT", "mykey", "sum", "0.2"]),
        bulk("0.3")
    );
    q(&mut c, &["HSET", "mykey", "word", "hello"]);
    assert_eq!(
        err(&mut c, &["HINCRBYFLOAT", "mykey", "word", "1"]),
        "ERR hash value is not a float"
    );
    assert_eq!(
        err(&mut c, &["HINCRBYFLOAT", "mykey", "field", "inf"]),
        "ERR value is NaN or Infinity"
    );
    assert_eq!(q(&mut c, &["HSET", "mykey", "huge", "1e308"]), Int(1));
    assert_eq!(
        err(&mut c, &["HINCRBYFLOAT", "mykey", "huge", "1e308"]),
        "ERR increment would produce NaN or Infinity"
    );
    assert_eq!(q(&mut c, &["HSTRLEN", "mykey", "word"]), Int(5));
    assert_eq!(q(&mut c, &["HSTRLEN", "mykey", "nope"]), Int(0));
    let Value::BulkString(field) = q(&mut c, &["HRANDFIELD", "mykey"]) else {
        panic!("HRANDFIELD without a count answers one field");
    };
    assert!(
        ["field", "sum", "word", "huge"].contains(&std::str::from_utf8(&field).unwrap()),
        "{field:?}"
    );
    let Value::Array(pairs) = q(&mut c, &["HRANDFIELD", "mykey", "-6", "WITHVALUES"]) else {
        panic!("an array");
    };
    assert_eq!(pairs.len(), 12);
    assert_eq!(
        sorted(q(&mut c, &["HRANDFIELD", "mykey", "10"])),
        sorted(text(&["field", "sum", "word", "huge"]))
    );
    assert_eq!(q(&mut c, &["HRANDFIELD", "nosuch"]), Nil);
    assert_eq!(
        q(&mut c, &["HSCAN", "mykey", "0", "MATCH", "s*"]),
        Value::Array(vec![bulk("0"), text(&["sum", "0.3"])])
    );
    assert_eq!(
        q(&mut c, &["ZSCAN", "myzset", "0", "COUNT", "1"]),
        Value::Array(vec![bulk("0"), text(&["three", "3"])])
    );
    assert_eq!(
        q(&mut c, &["SSCAN", "nosuch", "0"]),
        Value::Array(vec![bulk("0"), text(&[])])
    );

    // Sets.
    q(&mut c, &["SADD", "{s}1", "a", "b", "c", "d"]);
    q(&mut c, &["SADD", "{s}2", "c"]);
    q(&mut c, &["SADD", "{s}3", "a", "c", "e"]);
    assert_eq!(q(&mut c, &["SMISMEMBER", "{s}1", "a", "z"]), ints(&[1, 0]));
    assert_eq!(q(&mut c, &["SINTER", "{s}1", "{s}2", "{s}3"]), text(&["c"]));
    assert_eq!(
        sorted(q(&mut c, &["SUNION", "{s}1", "{s}2", "{s}3"])),
        text(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(
        sorted(q(&mut c, &["SDIFF", "{s}1", "{s}2", "{s}3"])),
        text(&["b", "d"])
    );
    assert_eq!(q(&mut c, &["SINTERCARD", "2", "{s}1", "{s}3"]), Int(2));
    assert_eq!(
        q(&mut c, &["SINTERCARD", "2", "{s}1", "{s}3", "LIMIT", "1"]),
        Int(1)
    );
    assert_eq!(
        q(&mut c, &["SUNIONSTORE", "{s}dst", "{s}1", "{s}3"]),
        Int(5)
    );
    assert_eq!(q(&mut c, &["SCARD", "{s}dst"]), Int(5));
    assert_eq!(
        q(&mut c, &["SINTERSTORE", "{s}dst", "{s}2", "{s}nosuch"]),
        Int(0)
    );
    assert_eq!(q(&mut c, &["EXISTS", "{s}dst"]), Int(0));
    assert_eq!(q(&mut c, &["SDIFFSTORE", "{s}dst", "{s}1", "{s}3"]), Int(2));
    assert_eq!(q(&mut c, &["SMOVE", "{s}1", "{s}2", "a"]), Int(1));
    assert_eq!(q(&mut c, &["SMOVE", "{s}1", "{s}2", "a"]), Int(0));
    assert_eq!(
        err(&mut c, &["SINTERCARD", "0", "{s}1"]),
        "ERR numkeys should be greater than 0"
    );

    // Lists.
    q(
        &mut c,
        &["RPUSH", "mylist", "a", "b", "c", "1", "2", "3", "c", "c"],
    );
    assert_eq!(q(&mut c, &["LPOS", "mylist", "c"]), Int(2));
    assert_eq!(q(&mut c, &["LPOS", "mylist", "c", "RANK", "2"]), Int(6));
    assert_eq!(
        q(&mut c, &["LPOS", "mylist", "c", "COUNT", "0", "RANK", "-1"]),
        ints(&[7, 6, 2])
    );
    assert_eq!(q(&mut c, &["LPOS", "mylist", "x"]), Nil);
    assert_eq!(
        err(&mut c, &["LPOS", "mylist", "c", "RANK", "0"]),
        "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... \
         or use negative to start from the end of the list"
    );
    q(&mut c, &["RPUSH", "{l}src", "Hello", "World"]);
    assert_eq!(
        q(&mut c, &["LINSERT", "{l}src", "BEFORE", "World", "There"]),
        Int(3)
    );
    assert_eq!(
        q(&mut c, &["LINSERT", "{l}src", "AFTER", "nope", "x"]),
        Int(-1)
    );
    assert_eq!(q(&mut c, &["RPOPLPUSH", "{l}src", "{l}dst"]), bulk("World"));
    assert_eq!(
        q(&mut c, &["LMOVE", "{l}src", "{l}dst", "LEFT", "RIGHT"]),
        bulk("Hello")
    );
    assert_eq!(
        q(&mut c, &["LMOVE", "{l}dst", "{l}dst", "LEFT", "RIGHT"]),
        bulk("World")
    );
    assert_eq!(
        q(&mut c, &["LRANGE", "{l}dst", "0", "-1"]),
        text(&["Hello", "World"])
    );
    assert_eq!(q(&mut c, &["RPOPLPUSH", "{l}nosuch", "{l}dst"]), Nil);

    // In a transaction: one log entry of the keys' group.
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("LMOVE")
        .arg("{l}dst")
        .arg("{l}other")
        .arg("RIGHT")
        .arg("LEFT")
        .cmd("SMOVE")
        .arg("{l}set")
        .arg("{l}set2")
        .arg("m")
        .cmd("LPOS")
        .arg("{l}other")
        .arg("World")
        .query(&mut c)
        .expect("MULTI/EXEC");
    assert_eq!(replies, vec![bulk("World"), Int(0), Int(0)]);
    assert_eq!(
        q(&mut c, &["LMOVE", "{l}other", "{l}dst", "LEFT", "RIGHT"]),
        bulk("World")
    );

    // Keys of two groups: refused, nothing moved. With 4 groups, some key
    // of k0..k39 is in another group than `k`.
    q(&mut c, &["SADD", "k", "m"]);
    let mut crossed = 0;
    for i in 0..40 {
        let other = format!("k{i}");
        match redis::cmd("SMOVE")
            .arg("k")
            .arg(&other)
            .arg("nope")
            .query::<Value>(&mut c)
        {
            Ok(v) => assert_eq!(v, Int(0), "{other}"),
            Err(e) => {
                assert_eq!(e.code(), Some("CROSSSLOT"), "{other}: {e}");
                assert_eq!(
                    e.detail(),
                    Some("Keys in request don't hash to the same slot")
                );
                crossed += 1;
            }
        }
    }
    assert!(crossed > 0, "no key of another group among 40");

    // Wrong types keep Redis' WRONGTYPE.
    assert!(err(&mut c, &["LPOS", "{s}1", "a"]).starts_with("WRONGTYPE"));
    assert!(err(&mut c, &["ZCOUNT", "mylist", "0", "1"]).starts_with("WRONGTYPE"));

    // Another node reads what the first wrote (the writes went through
    // the log of each key's group).
    let mut c2 = nodes[1].redis();
    wait_for(
        "node 2 to read the moved list",
        Duration::from_secs(20),
        || {
            (q(&mut c2, &["LRANGE", "{l}dst", "0", "-1"]) == text(&["Hello", "World"]))
                .then_some(())
        },
    );
    assert_eq!(
        q(&mut c2, &["HGET", "mykey", "sum"]),
        bulk("0.3"),
        "the float text is stored, identical on every replica"
    );
    assert_eq!(q(&mut c2, &["ZCOUNT", "myzset", "-inf", "+inf"]), Int(1));

    // HyperLogLogs: Redis' counts for Redis' documented examples, through
    // different nodes; a string that is not one is refused.
    assert_eq!(
        q(&mut c, &["PFADD", "hll", "a", "b", "c", "d", "e", "f", "g"]),
        Int(1)
    );
    assert_eq!(q(&mut c2, &["PFCOUNT", "hll"]), Int(7));
    assert_eq!(q(&mut c, &["PFADD", "{h}1", "foo", "bar", "zap"]), Int(1));
    assert_eq!(q(&mut c, &["PFADD", "{h}1", "zap", "zap", "zap"]), Int(0));
    assert_eq!(q(&mut c, &["PFADD", "{h}2", "1", "2", "3"]), Int(1));
    assert_eq!(q(&mut c2, &["PFCOUNT", "{h}1", "{h}2"]), Int(6));
    assert_eq!(q(&mut c, &["PFMERGE", "{h}u", "{h}1", "{h}2"]), Value::Okay);
    assert_eq!(q(&mut c2, &["PFCOUNT", "{h}u"]), Int(6));
    assert_eq!(q(&mut c, &["SET", "plain", "v"]), Value::Okay);
    assert!(err(&mut c, &["PFADD", "plain", "x"])
        .starts_with("WRONGTYPE Key is not a valid HyperLogLog"));
    assert!(err(&mut c, &["PFCOUNT", "plain"]).starts_with("WRONGTYPE"));
    assert_eq!(q(&mut c, &["RPUSH", "{h}list", "x"]), Int(1));
    assert!(err(&mut c, &["PFCOUNT", "{h}1", "{h}list"]).starts_with("WRONGTYPE"));
    assert!(err(&mut c, &["PFADD", "{h}list", "x"]).starts_with("WRONGTYPE"));
    let many: Vec<String> = (0..5000).map(|i| format!("user:{i}")).collect();
    let mut pfadd = vec!["PFADD", "{h}many"];
    pfadd.extend(many.iter().map(String::as_str));
    assert_eq!(q(&mut c, &pfadd), Int(1));
    match q(&mut c2, &["PFCOUNT", "{h}many"]) {
        Int(n) => assert!((4900..=5100).contains(&n), "5000 distinct counted as {n}"),
        other => panic!("PFCOUNT: {other:?}"),
    }

    // COMMAND knows the new commands and their keys.
    let Value::Array(info) = q(&mut c, &["COMMAND", "INFO", "lmove", "sintercard"]) else {
        panic!("COMMAND INFO answers an array");
    };
    assert_eq!(info.len(), 2);
    let Value::Array(lmove) = &info[0] else {
        panic!("{info:?}")
    };
    assert_eq!(lmove[1], Int(5));
    assert_eq!(&lmove[3..6], &[Int(1), Int(2), Int(1)]);

    // GEO: sorted sets of geohash scores, written on node 1, read on node 3
    // (a linearizable read there sees the write); redis.io's example, with
    // the replies of Redis 7.0.
    assert_eq!(
        q(
            &mut c,
            &[
                "GEOADD",
                "Sicily",
                "13.361389",
                "38.115556",
                "Palermo",
                "15.087269",
                "37.502669",
                "Catania"
            ]
        ),
        Int(2)
    );
    let mut c3 = nodes[2].redis();
    assert_eq!(
        q(&mut c3, &["GEODIST", "Sicily", "Palermo", "Catania", "km"]),
        bulk("166.2742")
    );
    assert_eq!(
        q(
            &mut c3,
            &["GEOHASH", "Sicily", "Palermo", "Catania", "Nope"]
        ),
        Value::Array(vec![bulk("sqc8b49rny0"), bulk("sqdtr74hyu0"), Nil])
    );
    assert_eq!(
        q(&mut c3, &["GEOPOS", "Sicily", "Palermo"]),
        Value::Array(vec![text(&[
            "13.36138933897018433",
            "38.11555639549629859"
        ])])
    );
    assert_eq!(
        q(
            &mut c3,
            &[
                "GEOSEARCH",
                "Sicily",
                "FROMLONLAT",
                "15",
                "37",
                "BYRADIUS",
                "200",
                "km",
                "ASC",
                "WITHDIST"
            ]
        ),
        Value::Array(vec![
            Value::Array(vec![bulk("Catania"), bulk("56.4413")]),
            Value::Array(vec![bulk("Palermo"), bulk("190.4424")]),
        ])
    );
    assert_eq!(
        q(
            &mut c3,
            &["GEORADIUSBYMEMBER", "Sicily", "Palermo", "100", "km"]
        ),
        text(&["Palermo"])
    );
    assert_eq!(
        q(&mut c3, &["ZSCORE", "Sicily", "Palermo"]),
        bulk("3479099956230698")
    );
    q(&mut c, &["SET", "notgeo", "x"]);
    assert!(
        err(&mut c3, &["GEOPOS", "notgeo", "a"]).starts_with("WRONGTYPE"),
        "GEOPOS on a string"
    );

    for n in nodes.iter_mut() {
        assert!(n.terminate().success());
    }
}

/// The number `field` of section `section` of a node's `INFO`.
fn info_number(c: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info = match q(c, &["INFO", section]) {
        Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("INFO {section}: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// `blocked_clients` of a node's `INFO clients`.
fn blocked_clients(c: &mut redis::Connection) -> u64 {
    info_number(c, "clients", "blocked_clients")
}

/// `blocking_looks` of a node's `INFO stats`.
fn blocking_looks(c: &mut redis::Connection) -> u64 {
    info_number(c, "stats", "blocking_looks")
}

/// BLPOP, BRPOP, BZPOPMIN/MAX, BLMOVE and BRPOPLPUSH through the binary: an
/// element already there comes at once, a blocked client wakes on a push
/// made through another node, one element goes to one of two blocked
/// clients, a timeout answers the nil array, a client that leaves while
/// blocked pops nothing, and commands pipelined after a blocking one run
/// after it.
#[test]
fn blocking_pops_end_to_end() {
    use std::io::Write;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let nodes = ready_cluster(dir.path(), 3, 4);
    let mut c = nodes[0].redis();
    let mut c3 = nodes[2].redis();

    // Timeout: the nil array, not before the timeout.
    let began = Instant::now();
    assert_eq!(q(&mut c, &["BLPOP", "empty", "0.3"]), Nil);
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!(q(&mut c, &["BZPOPMIN", "emptyz", "0.05"]), Nil);

    // Elements already there: the first key in order that has one.
    assert_eq!(q(&mut c, &["RPUSH", "b", "x", "y"]), Int(2));
    assert_eq!(q(&mut c, &["BLPOP", "a", "b", "1"]), text(&["b", "x"]));
    assert_eq!(q(&mut c, &["BRPOP", "a", "b", "1"]), text(&["b", "y"]));
    assert_eq!(q(&mut c, &["EXISTS", "b"]), Int(0));
    assert_eq!(q(&mut c, &["ZADD", "z", "1", "m1", "2.5", "m2"]), Int(2));
    assert_eq!(q(&mut c, &["BZPOPMIN", "z", "1"]), text(&["z", "m1", "1"]));
    assert_eq!(
        q(&mut c, &["BZPOPMAX", "z", "1"]),
        text(&["z", "m2", "2.5"])
    );
    assert_eq!(q(&mut c, &["RPUSH", "{q}src", "1", "2"]), Int(2));
    assert_eq!(
        q(
            &mut c,
            &["BLMOVE", "{q}src", "{q}dst", "LEFT", "RIGHT", "1"]
        ),
        bulk("1")
    );
    assert_eq!(
        q(&mut c, &["BRPOPLPUSH", "{q}src", "{q}dst", "1"]),
        bulk("2")
    );
    assert_eq!(
        q(&mut c, &["LRANGE", "{q}dst", "0", "-1"]),
        text(&["2", "1"])
    );
    assert_eq!(q(&mut c, &["BRPOPLPUSH", "{q}src", "{q}dst", "0.05"]), Nil);

    // Errors as Redis words them.
    assert_eq!(q(&mut c, &["SET", "str", "v"]), Value::Okay);
    assert!(err(&mut c, &["BLPOP", "str", "1"]).starts_with("WRONGTYPE"));
    assert!(err(&mut c, &["BLPOP", "k", "-1"]).contains("timeout is negative"));
    assert!(err(&mut c, &["BLPOP", "k", "soon"]).contains("timeout is not a float"));

    // A blocked client wakes on a push through another node.
    let mut c1 = nodes[0].redis();
    let waiter = std::thread::spawn(move || q(&mut c1, &["BLPOP", "jobs", "15"]));
    wait_for("the client to block", Duration::from_secs(10), || {
        (blocked_clients(&mut c) == 1).then_some(())
    });
    assert_eq!(q(&mut c3, &["RPUSH", "jobs", "job1"]), Int(1));
    assert_eq!(waiter.join().unwrap(), text(&["jobs", "job1"]));
    assert_eq!(blocked_clients(&mut c), 0);

    // A client blocked on an empty list adds nothing to the log after its
    // first pop: its length checks are reads. (A real pop once a second
    // used to add an entry per second to the key's group.) Measured as the
    // largest growth of any group's log on node 1: the first pop, and at
    // most one more entry (a leader-balancing hand-over's no-op).
    let last_indexes = || -> Vec<u64> {
        let (status, body) = http(nodes[0].http, "GET", "/groups", "");
        assert_eq!(status, 200, "{body}");
        body.split("\"last_index\":")
            .skip(1)
            .map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().unwrap()
            })
            .collect()
    };
    let before = last_indexes();
    let looks_before = blocking_looks(&mut c);
    assert_eq!(q(&mut c, &["BLPOP", "idle", "3.5"]), Nil);
    // Woken by its group's applies, not by a timer: about one look a
    // second on an idle key (polling with a 100 ms backoff made ~40).
    let looks = blocking_looks(&mut c) - looks_before;
    assert!(
        looks <= 10,
        "{looks} looks at an idle key in 3.5 s: the blocked client polls"
    );
    std::thread::park_timeout(Duration::from_millis(300));
    let grown = last_indexes()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .max()
        .unwrap();
    assert!(
        grown <= 2,
        "a group's log grew by {grown} entries while a client was blocked on an empty list"
    );

    // Next to a stream of writes to other keys of its group, a blocked
    // client looks less and less often (the gap widens to 64 ms): a few
    // dozen looks in 2 s, not one per apply.
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (writes, stop) = (writes.clone(), stop.clone());
        let mut w = nodes[0].redis();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(q(&mut w, &["SET", "{calm}other", "v"]), Value::Okay);
                writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let looks_before = blocking_looks(&mut c);
    assert_eq!(q(&mut c, &["BLPOP", "{calm}list", "2"]), Nil);
    let looks = blocking_looks(&mut c) - looks_before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let writes = writes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{looks} looks while {writes} writes went to the blocked key's group");
    assert!(
        looks <= 60 && writes > 200,
        "{looks} looks at a key while {writes} writes went to other keys of its group"
    );

    // Clients blocked on one key of one node are served in the order they
    // blocked, one element each, as in Redis: also when the first one has
    // waited long next to a stream of writes to its group (so it looks
    // least often) and the others just came.
    let mut c2 = nodes[1].redis();
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let busy = busy.clone();
        let mut w = nodes[1].redis();
        std::thread::spawn(move || {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(q(&mut w, &["SET", "{line}other", "v"]), Value::Okay);
            }
        })
    };
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let mut w = nodes[1].redis();
            let waiter = std::thread::spawn(move || q(&mut w, &["BRPOP", "{line}", "20"]));
            wait_for(
                &format!("client {i} to block"),
                Duration::from_secs(10),
                || (blocked_clients(&mut c2) == i + 1).then_some(()),
            );
            if i == 0 {
                std::thread::park_timeout(Duration::from_millis(1_000));
            }
            waiter
        })
        .collect();
    if test_shards() == 1 {
        for (i, waiter) in waiters.into_iter().enumerate() {
            let element = format!("e{i}");
            assert_eq!(q(&mut c, &["LPUSH", "{line}", &element]), Int(1));
            assert_eq!(
                waiter.join().unwrap(),
                text(&["{line}", &element]),
                "the client that blocked {i}th gets the {i}th element"
            );
        }
    } else {
        // Clients on different executors race (the order holds within
        // one): each element still goes to exactly one client.
        for i in 0..3 {
            q(&mut c, &["LPUSH", "{line}", &format!("e{i}")]);
        }
        let mut got: Vec<Value> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort_by_key(|v| format!("{v:?}"));
        let want: Vec<Value> = (0..3)
            .map(|i| text(&["{line}", &format!("e{i}")]))
            .collect();
        assert_eq!(got, want, "one element each");
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    // One element, two blocked clients: one gets it, the other times out.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let mut w = nodes[1].redis();
            std::thread::spawn(move || q(&mut w, &["BRPOP", "one", "3"]))
        })
        .collect();
    wait_for("two clients to block", Duration::from_secs(10), || {
        (blocked_clients(&mut c2) == 2).then_some(())
    });
    assert_eq!(q(&mut c, &["LPUSH", "one", "e"]), Int(1));
    let got: Vec<Value> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        got.contains(&Nil) && got.contains(&text(&["one", "e"])),
        "one element for one of two clients: {got:?}"
    );

    // A client that leaves while blocked pops nothing.
    let mut raw = std::net::TcpStream::connect(nodes[0].resp).unwrap();
    raw.write_all(b"*3\r\n$5\r\nBLPOP\r\n$4\r\ngone\r\n$1\r\n0\r\n")
        .unwrap();
    wait_for("the raw client to block", Duration::from_secs(10), || {
        (blocked_clients(&mut c) == 1).then_some(())
    });
    drop(raw);
    wait_for("the server to notice", Duration::from_secs(10), || {
        (blocked_clients(&mut c) == 0).then_some(())
    });
    assert_eq!(q(&mut c, &["RPUSH", "gone", "kept"]), Int(1));
    std::thread::park_timeout(Duration::from_millis(300));
    assert_eq!(q(&mut c, &["LRANGE", "gone", "0", "-1"]), text(&["kept"]));

    // Commands pipelined behind a blocking one wait for it, then run.
    let mut raw = std::net::TcpStream::connect(nodes[0].resp).unwrap();
    raw.write_all(b"*3\r\n$5\r\nBLPOP\r\n$4\r\npipe\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n")
        .unwrap();
    wait_for(
        "the pipelining client to block",
        Duration::from_secs(10),
        || (blocked_clients(&mut c) == 1).then_some(()),
    );
    assert_eq!(q(&mut c3, &["RPUSH", "pipe", "v"]), Int(1));
    let answer = raw_exchange(&mut raw, b"", 6);
    assert_eq!(answer, "*2\r\n$4\r\npipe\r\n$1\r\nv\r\n+PONG\r\n");

    // SAVE snapshots every KV group's replica on the node; BGSAVE does it
    // in the background; LASTSAVE moves; ROLE answers as a master.
    let taken = |n: &NodeProc| -> f64 {
        let (status, body) = http(n.http, "GET", "/metrics", "");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| l.starts_with("flotilla_snapshots_taken_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = taken(&nodes[0]);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(q(&mut c, &["SAVE"]), Value::Okay);
    assert!(taken(&nodes[0]) > before, "SAVE took snapshots");
    match q(&mut c, &["LASTSAVE"]) {
        Int(t) => assert!(t >= since, "LASTSAVE {t} >= {since}"),
        other => panic!("LASTSAVE: {other:?}"),
    }
    assert_eq!(
        q(&mut c, &["BGSAVE"]),
        Value::SimpleString("Background saving started".into())
    );
    assert_eq!(
        q(&mut c, &["ROLE"]),
        Value::Array(vec![bulk("master"), Int(0), Value::Array(vec![])])
    );

    // Not inside a transaction (it would block the group's batch).
    assert_eq!(q(&mut c, &["MULTI"]), Value::Okay);
    assert!(err(&mut c, &["BLPOP", "k", "1"]).contains("transaction"));
    assert!(err(&mut c, &["EXEC"]).starts_with("EXECABORT"));
}

/// XTRIM, XDEL, XSETID and XADD MINID: written through node 1, read
/// through node 3 (linearizable reads see every acknowledged write).
#[test]
fn stream_trim_del_setid_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = ready_cluster(dir.path(), 3, 4);
    let mut w = nodes[0].redis();
    let mut r = nodes[2].redis();
    for ms in 1..=6 {
        let id = format!("{ms}-0");
        assert_eq!(q(&mut w, &["XADD", "s", &id, "f", "v"]), bulk(&id));
    }
    let ids = |r: &mut redis::Connection| match q(r, &["XRANGE", "s", "-", "+"]) {
        Value::Array(entries) => entries
            .into_iter()
            .map(|e| match e {
                Value::Array(mut pair) => match pair.remove(0) {
                    Value::BulkString(id) => String::from_utf8(id).unwrap(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    // XTRIM MAXLEN and MINID; `~` with LIMIT evicts at most LIMIT.
    assert_eq!(q(&mut w, &["XTRIM", "s", "MAXLEN", "=", "5"]), Int(1));
    assert_eq!(
        q(&mut w, &["XTRIM", "s", "MINID", "~", "5", "LIMIT", "1"]),
        Int(1)
    );
    assert_eq!(q(&mut w, &["XTRIM", "s", "MINID", "5"]), Int(2));
    assert_eq!(q(&mut w, &["XTRIM", "nostream", "MAXLEN", "0"]), Int(0));
    assert_eq!(ids(&mut r), ["5-0", "6-0"]);
    assert_eq!(
        err(&mut w, &["XTRIM", "s", "MAXLEN", "1", "LIMIT", "1"]),
        "ERR syntax error, LIMIT cannot be used without the special ~ option"
    );
    assert_eq!(
        err(&mut w, &["XTRIM", "s", "MAXLEN", "-1"]),
        "ERR The MAXLEN argument must be >= 0."
    );
    assert_eq!(
        err(&mut w, &["XTRIM", "s", "MINID", "x"]),
        "ERR Invalid stream ID specified as stream command argument"
    );
    // XADD MINID trims after adding.
    assert_eq!(
        q(&mut w, &["XADD", "s", "MINID", "6", "7-0", "f", "v"]),
        bulk("7-0")
    );
    assert_eq!(ids(&mut r), ["6-0", "7-0"]);
    // XDEL counts what it deleted; the emptied stream stays.
    assert_eq!(q(&mut w, &["XDEL", "s", "6", "6-0", "9-9"]), Int(1));
    assert_eq!(q(&mut w, &["XDEL", "nostream", "+"]), Int(0));
    assert_eq!(
        err(&mut w, &["XDEL", "s", "+"]),
        "ERR Invalid stream ID specified as stream command argument"
    );
    assert_eq!(q(&mut w, &["XDEL", "s", "7"]), Int(1));
    assert_eq!(q(&mut r, &["XLEN", "s"]), Int(0));
    assert_eq!(
        q(&mut r, &["TYPE", "s"]),
        Value::SimpleString("stream".into())
    );
    // XSETID moves the last id; XADD must then go past it.
    assert_eq!(
        q(&mut w, &["XSETID", "s", "100-0", "ENTRIESADDED", "9"]),
        Value::Okay
    );
    assert_eq!(
        err(&mut w, &["XADD", "s", "100-0", "f", "v"]),
        "ERR The ID specified in XADD is equal or smaller than the target stream top item"
    );
    assert_eq!(q(&mut w, &["XADD", "s", "100-*", "f", "v"]), bulk("100-1"));
    assert_eq!(
        err(&mut w, &["XSETID", "s", "99"]),
        "ERR The ID specified in XSETID is smaller than the target stream top item"
    );
    assert_eq!(err(&mut w, &["XSETID", "nostream", "1"]), "ERR no such key");
    assert_eq!(q(&mut r, &["XRANGE", "s", "-", "+", "COUNT", "1"]), {
        Value::Array(vec![Value::Array(vec![bulk("100-1"), text(&["f", "v"])])])
    });
}
