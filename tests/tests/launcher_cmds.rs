//! The commands of `bin/src/resp/extras.rs` through the real binary: three
//! `flotilla node` processes, the `redis` crate as the client. WAIT,
//! RANDOMKEY, OBJECT, MEMORY USAGE, the bit commands, LCS, ZRANGESTORE
//! and SORT with the redis.io examples' replies and Redis' error words;
//! another node reads what the first wrote. BITFIELD has a test of its own:
//! written through node 1, read through node 3.

mod launcher_support;

use launcher_support::*;
use redis::Value::{self, Int, Nil};

fn q(c: &mut redis::Connection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn qb(c: &mut redis::Connection, args: &[&[u8]]) -> Value {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error of a command that must fail, as `CODE detail`.
fn err(c: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(c) {
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn bulks(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| bulk(s)).collect())
}

fn status_or_bulk(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

fn ints(v: &[i64]) -> Value {
    Value::Array(v.iter().map(|n| Int(*n)).collect())
}

#[test]
fn bitfield_writes_through_one_node_and_reads_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &[]);
    let mut first = nodes[0].redis();
    let mut third = nodes[2].redis();

    // The redis.io examples, written through node 1.
    assert_eq!(
        q(
            &mut first,
            &["BITFIELD", "bf", "INCRBY", "i5", "100", "1", "GET", "u4", "0"]
        ),
        ints(&[1, 0])
    );
    for want in [[1, 1], [2, 2], [3, 3], [0, 3]] {
        let line = [
            "BITFIELD", "bo", "incrby", "u2", "100", "1", "OVERFLOW", "SAT", "incrby", "u2", "102",
            "1",
        ];
        assert_eq!(q(&mut first, &line), ints(&want));
    }
    // FAIL answers nil and writes nothing; SET answers the old value.
    assert_eq!(
        q(
            &mut first,
            &[
                "BITFIELD", "bf", "OVERFLOW", "FAIL", "SET", "u8", "#1", "256", "SET", "i8", "#1",
                "-128", "SET", "i8", "#1", "5"
            ]
        ),
        Value::Array(vec![Nil, Int(0), Int(-128)])
    );

    // Node 3 reads it: BITFIELD_RO, BITFIELD of only GETs, GET.
    assert_eq!(
        q(
            &mut third,
            &[
                "BITFIELD_RO",
                "bf",
                "GET",
                "i5",
                "100",
                "GET",
                "i8",
                "#1",
                "GET",
                "u16",
                "4"
            ]
        ),
        ints(&[1, 5, 0x0050])
    );
    assert_eq!(
        q(
            &mut third,
            &["BITFIELD", "bo", "GET", "u2", "100", "GET", "u2", "102", "GET", "i64", "99"]
        ),
        ints(&[0, 3, 3 << 59])
    );
    let mut want = vec![0u8; 14];
    want[1] = 5;
    want[13] = 0x80;
    assert_eq!(q(&mut third, &["GET", "bf"]), Value::BulkString(want));
    assert_eq!(
        q(&mut third, &["BITFIELD_RO", "missing", "GET", "i64", "#3"]),
        ints(&[0])
    );
    assert_eq!(q(&mut third, &["EXISTS", "missing"]), Int(0));

    // Errors in Redis' words.
    assert_eq!(
        err(&mut third, &["BITFIELD_RO", "bf", "SET", "i8", "0", "1"]),
        "ERR BITFIELD_RO only supports the GET subcommand"
    );
    assert_eq!(
        err(&mut first, &["BITFIELD", "bf", "GET", "u64", "0"]),
        "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is."
    );
    assert_eq!(
        err(
            &mut first,
            &["BITFIELD", "bf", "GET", "i64", "#9223372036854775807"]
        ),
        "ERR bit offset is not an integer or out of range"
    );
    assert_eq!(
        err(&mut first, &["BITFIELD", "bf", "OVERFLOW", "NONE"]),
        "ERR Invalid OVERFLOW type specified"
    );
    q(&mut first, &["RPUSH", "bl", "a"]);
    assert!(err(&mut third, &["BITFIELD", "bl", "SET", "i8", "0", "1"]).starts_with("WRONGTYPE"));
    assert!(err(&mut third, &["BITFIELD_RO", "bl", "GET", "i8", "0"]).starts_with("WRONGTYPE"));

    // Inside MULTI: one entry with the rest of the transaction.
    let (a, b): (Vec<i64>, Vec<i64>) = redis::pipe()
        .atomic()
        .cmd("BITFIELD")
        .arg(&["bm", "SET", "u8", "0", "200"])
        .cmd("BITFIELD")
        .arg(&["bm", "INCRBY", "i8", "0", "1"])
        .query(&mut first)
        .expect("EXEC");
    assert_eq!((a, b), (vec![0], vec![-55]));
    assert_eq!(
        q(&mut third, &["BITFIELD_RO", "bm", "GET", "u8", "0"]),
        ints(&[201])
    );

    for n in nodes.iter_mut() {
        n.terminate();
    }
}

#[test]
fn extra_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &[]);
    let mut c = nodes[0].redis();

    // WAIT: three voters per group, so every acknowledged write is on at
    // least one replica besides the leader; answered at once.
    q(&mut c, &["SET", "w", "1"]);
    assert_eq!(q(&mut c, &["WAIT", "2", "0"]), Int(1));
    assert_eq!(err(&mut c, &["WAIT", "1", "-1"]), "ERR timeout is negative");

    // RANDOMKEY: nil on an empty db, else an existing key.
    q(&mut c, &["FLUSHALL"]);
    assert_eq!(q(&mut c, &["RANDOMKEY"]), Nil);
    for i in 0..20 {
        q(&mut c, &["SET", &format!("rk{i}"), "v"]);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let k = status_or_bulk(&q(&mut c, &["RANDOMKEY"]));
        assert!(k.starts_with("rk"), "{k}");
        seen.insert(k);
    }
    assert!(seen.len() >= 5, "RANDOMKEY spreads: {seen:?}");

    // OBJECT and MEMORY USAGE.
    q(&mut c, &["SET", "n", "12345"]);
    q(&mut c, &["SET", "s", "hello"]);
    q(&mut c, &["SET", "big", &"x".repeat(100)]);
    q(&mut c, &["RPUSH", "l", "a", "b"]);
    q(&mut c, &["SADD", "si", "1", "2"]);
    q(&mut c, &["ZADD", "z", "1", "a"]);
    q(&mut c, &["HSET", "h", "f", "v"]);
    for (key, enc) in [
        ("n", "int"),
        ("s", "embstr"),
        ("big", "raw"),
        ("l", "listpack"),
        ("si", "intset"),
        ("z", "listpack"),
        ("h", "listpack"),
    ] {
        assert_eq!(
            status_or_bulk(&q(&mut c, &["OBJECT", "ENCODING", key])),
            enc,
            "{key}"
        );
    }
    assert_eq!(q(&mut c, &["OBJECT", "ENCODING", "missing"]), Nil);
    assert_eq!(q(&mut c, &["OBJECT", "REFCOUNT", "s"]), Int(1));
    assert_eq!(q(&mut c, &["OBJECT", "IDLETIME", "s"]), Int(0));
    assert!(err(&mut c, &["OBJECT", "FREQ", "s"]).starts_with("ERR An LFU maxmemory policy"));
    assert!(matches!(q(&mut c, &["OBJECT", "HELP"]), Value::Array(_)));
    let usage = |c: &mut redis::Connection, k: &str| match q(c, &["MEMORY", "USAGE", k]) {
        Int(n) => n,
        other => panic!("MEMORY USAGE {k}: {other:?}"),
    };
    let (small, large) = (usage(&mut c, "s"), usage(&mut c, "big"));
    assert!(small > 0 && large >= small + 100, "{small} {large}");
    assert_eq!(q(&mut c, &["MEMORY", "USAGE", "missing"]), Nil);
    assert_eq!(
        q(&mut c, &["MEMORY", "USAGE", "s", "SAMPLES", "0"]),
        Int(small)
    );

    // Bits (redis.io examples).
    assert_eq!(q(&mut c, &["SETBIT", "bk", "7", "1"]), Int(0));
    assert_eq!(q(&mut c, &["SETBIT", "bk", "7", "0"]), Int(1));
    assert_eq!(q(&mut c, &["GET", "bk"]), bulk("\0"));
    assert_eq!(q(&mut c, &["SETBIT", "bk", "7", "1"]), Int(0));
    assert_eq!(q(&mut c, &["GETBIT", "bk", "7"]), Int(1));
    assert_eq!(q(&mut c, &["GETBIT", "bk", "0"]), Int(0));
    assert_eq!(q(&mut c, &["GETBIT", "bk", "100"]), Int(0));
    q(&mut c, &["SET", "fb", "foobar"]);
    assert_eq!(q(&mut c, &["BITCOUNT", "fb"]), Int(26));
    assert_eq!(q(&mut c, &["BITCOUNT", "fb", "0", "0"]), Int(4));
    assert_eq!(q(&mut c, &["BITCOUNT", "fb", "1", "1"]), Int(6));
    assert_eq!(q(&mut c, &["BITCOUNT", "fb", "1", "1", "BYTE"]), Int(6));
    assert_eq!(q(&mut c, &["BITCOUNT", "fb", "5", "30", "BIT"]), Int(17));
    qb(&mut c, &[b"SET", b"bp", b"\xff\xf0\x00"]);
    assert_eq!(q(&mut c, &["BITPOS", "bp", "0"]), Int(12));
    qb(&mut c, &[b"SET", b"bp", b"\x00\xff\xf0"]);
    assert_eq!(q(&mut c, &["BITPOS", "bp", "1", "0"]), Int(8));
    assert_eq!(q(&mut c, &["BITPOS", "bp", "1", "2"]), Int(16));
    assert_eq!(
        q(&mut c, &["BITPOS", "bp", "1", "2", "-1", "BYTE"]),
        Int(16)
    );
    assert_eq!(q(&mut c, &["BITPOS", "bp", "1", "7", "15", "BIT"]), Int(8));
    assert_eq!(q(&mut c, &["BITPOS", "nobits", "1"]), Int(-1));
    q(&mut c, &["SET", "{b}1", "foobar"]);
    q(&mut c, &["SET", "{b}2", "abcdef"]);
    assert_eq!(
        q(&mut c, &["BITOP", "AND", "{b}dest", "{b}1", "{b}2"]),
        Int(6)
    );
    assert_eq!(q(&mut c, &["GET", "{b}dest"]), bulk("`bc`ab"));
    assert_eq!(
        q(&mut c, &["BITOP", "NOT", "{b}dest", "{b}missing"]),
        Int(0)
    );
    assert_eq!(q(&mut c, &["EXISTS", "{b}dest"]), Int(0));
    assert!(err(&mut c, &["SETBIT", "l", "1", "1"]).starts_with("WRONGTYPE"));
    assert_eq!(
        err(&mut c, &["SETBIT", "bk", "-1", "1"]),
        "ERR bit offset is not an integer or out of range"
    );
    assert_eq!(
        err(&mut c, &["BITPOS", "bp", "2"]),
        "ERR The bit argument must be 1 or 0."
    );

    // LCS.
    q(
        &mut c,
        &["MSET", "{lcs}1", "ohmytext", "{lcs}2", "mynewtext"],
    );
    assert_eq!(q(&mut c, &["LCS", "{lcs}1", "{lcs}2"]), bulk("mytext"));
    assert_eq!(q(&mut c, &["LCS", "{lcs}1", "{lcs}2", "LEN"]), Int(6));
    let pair = |a: i64, b: i64| Value::Array(vec![Int(a), Int(b)]);
    assert_eq!(
        q(
            &mut c,
            &[
                "LCS",
                "{lcs}1",
                "{lcs}2",
                "IDX",
                "MINMATCHLEN",
                "4",
                "WITHMATCHLEN"
            ]
        ),
        Value::Array(vec![
            bulk("matches"),
            Value::Array(vec![Value::Array(vec![pair(4, 7), pair(5, 8), Int(4)])]),
            bulk("len"),
            Int(6),
        ])
    );
    q(&mut c, &["RPUSH", "{lcs}l", "x"]);
    assert_eq!(
        err(&mut c, &["LCS", "{lcs}1", "{lcs}l"]),
        "ERR The specified keys must contain string values"
    );

    // ZRANGESTORE.
    q(
        &mut c,
        &[
            "ZADD", "{z}src", "1", "one", "2", "two", "3", "three", "4", "four",
        ],
    );
    assert_eq!(
        q(&mut c, &["ZRANGESTORE", "{z}dst", "{z}src", "2", "-1"]),
        Int(2)
    );
    assert_eq!(
        q(&mut c, &["ZRANGE", "{z}dst", "0", "-1", "WITHSCORES"]),
        bulks(&["three", "3", "four", "4"])
    );
    assert_eq!(
        q(
            &mut c,
            &[
                "ZRANGESTORE",
                "{z}dst",
                "{z}src",
                "(1",
                "+inf",
                "BYSCORE",
                "LIMIT",
                "0",
                "1"
            ]
        ),
        Int(1)
    );
    assert_eq!(q(&mut c, &["ZRANGE", "{z}dst", "0", "-1"]), bulks(&["two"]));

    // SORT and SORT_RO.
    q(&mut c, &["RPUSH", "{s}l", "3", "1", "10", "2"]);
    assert_eq!(q(&mut c, &["SORT", "{s}l"]), bulks(&["1", "2", "3", "10"]));
    assert_eq!(
        q(&mut c, &["SORT", "{s}l", "DESC", "LIMIT", "0", "2"]),
        bulks(&["10", "3"])
    );
    assert_eq!(
        q(&mut c, &["SORT_RO", "{s}l", "ALPHA"]),
        bulks(&["1", "10", "2", "3"])
    );
    assert_eq!(q(&mut c, &["SORT", "{s}l", "STORE", "{s}out"]), Int(4));
    assert_eq!(
        q(&mut c, &["LRANGE", "{s}out", "0", "-1"]),
        bulks(&["1", "2", "3", "10"])
    );
    q(&mut c, &["RPUSH", "{s}w", "b", "a"]);
    assert_eq!(
        err(&mut c, &["SORT", "{s}w"]),
        "ERR One or more scores can't be converted into double"
    );

    // Keys of two groups are refused: with 4 groups, some key of
    // k0..k39 is in another group than `k`.
    let crossed = (0..40)
        .filter(|i| {
            let other = format!("k{i}");
            match redis::cmd("BITOP")
                .arg("OR")
                .arg("k")
                .arg(&other)
                .query::<Value>(&mut c)
            {
                Ok(_) => false,
                Err(e) => {
                    assert_eq!(e.code(), Some("CROSSSLOT"), "{other}: {e}");
                    true
                }
            }
        })
        .count();
    assert!(crossed > 0, "no key of another group among 40");

    // Another node reads what this one wrote (through the log).
    let mut other = nodes[1].redis();
    assert_eq!(q(&mut other, &["GET", "{b}1"]), bulk("foobar"));
    assert_eq!(q(&mut other, &["GETBIT", "bk", "7"]), Int(1));
    assert_eq!(
        q(&mut other, &["LRANGE", "{s}out", "0", "-1"]),
        bulks(&["1", "2", "3", "10"])
    );

    for n in nodes.iter_mut() {
        n.terminate();
    }
}
