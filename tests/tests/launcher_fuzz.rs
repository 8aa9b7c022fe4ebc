//! Wrong requests never take a node down: a `flotilla node` answers
//! thousands of random commands — every command it lists in `COMMAND`,
//! mostly with a valid number of arguments and keys where keys go, drawn
//! from keys, numbers, keywords and random bytes, plus blocking pops and
//! mostly well-formed `BITFIELD` / `BITFIELD_RO` lines and Lua scripts
//! that write (some at random, some through random commands) — random HTTP requests
//! (every route, bad ids, bad JSON) and random malformed protocol streams;
//! no answer is a broken connection or an HTTP 500, and afterwards the node
//! still answers PING, reads back what a plain SET wrote, and shuts down
//! cleanly. A panic anywhere on the request path (argument parsing, the
//! state machine's apply, reply formatting, HTTP routing) kills the shard's
//! executor (the process, in release builds), which this test sees as a
//! dropped connection, and reports with the commands that led to it and
//! the node's panic message.
//!
//! `FLOTILLA_FUZZ_SEED` picks the seed (default: a fixed one),
//! `FLOTILLA_FUZZ_COMMANDS` the number of commands (default 6,000),
//! `FLOTILLA_FUZZ_SHOW_ERRORS` prints every error reply (with
//! `--nocapture`).

mod launcher_support;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use launcher_support::*;
use redis::Value;

/// SplitMix64: a small deterministic generator (the seed is printed, so a
/// failure replays).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Commands left out of the random draw: they block on purpose (a random
/// timeout of 0 is "forever"; [`blocking`] sends them with short
/// timeouts), end the connection or the process, switch the connection
/// to a protocol the test client does not parse, or answer more than once.
const SKIPPED: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BLMOVE",
    "BRPOPLPUSH",
    "BZPOPMIN",
    "BZPOPMAX",
    "BLMPOP",
    "BZMPOP",
    "XREAD",
    "SHUTDOWN",
    "QUIT",
    "HELLO",
    "MONITOR",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    // One reply per channel named (as in Redis): not one per command.
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "DEBUG",
    "CLIENT",
];

/// Mostly one hash tag, so that multi-key commands reach the state machine
/// (other keys hash to other groups: CROSSSLOT).
const KEYS: &[&str] = &[
    "{t}a",
    "{t}b",
    "{t}c",
    "{t}d",
    "{t}",
    "{t}a",
    "{t}b",
    "k0",
    "",
    "k:with:colons",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "100",
    "-100",
    "1.5",
    "-0.5",
    "inf",
    "-inf",
    "+inf",
    "nan",
    "1e308",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "4294967296",
    "0x10",
    "99999999999999999999999",
];

const WORDS: &[&str] = &[
    "LIMIT",
    "WITHSCORES",
    "REV",
    "BYSCORE",
    "BYLEX",
    "EX",
    "PX",
    "EXAT",
    "PXAT",
    "KEEPTTL",
    "NX",
    "XX",
    "GT",
    "LT",
    "CH",
    "INCR",
    "COUNT",
    "MATCH",
    "TYPE",
    "WITHVALUES",
    "LEFT",
    "RIGHT",
    "BEFORE",
    "AFTER",
    "AND",
    "OR",
    "XOR",
    "NOT",
    "BY",
    "GET",
    "STORE",
    "ALPHA",
    "ASC",
    "DESC",
    "LEN",
    "IDX",
    "MINMATCHLEN",
    "WITHMATCHLEN",
    "PERSIST",
    "MAXLEN",
    "MINID",
    "~",
    "=",
    "*",
    "$",
    ">",
    "-",
    "+",
    "(1",
    "[a",
    "(a",
    "[",
    "(",
    "STREAMS",
    "ID",
    "WEIGHTS",
    "AGGREGATE",
    "SUM",
    "MIN",
    "MAX",
    "RANK",
    "NOMKSTREAM",
    "JUSTID",
    "IDLE",
    "RETRYCOUNT",
    "FORCE",
    "ENCODING",
    "REFCOUNT",
    "IDLETIME",
    "FREQ",
    "HELP",
    "USAGE",
    "SAMPLES",
    "BIT",
    "BYTE",
    "INFO",
    "LIST",
    "RESETSTAT",
    "SET",
    "CREATE",
    "SETID",
    "DESTROY",
    "CREATECONSUMER",
    "DELCONSUMER",
    "STREAM",
    "GROUPS",
    "CONSUMERS",
    "GETKEYS",
    "DOCS",
    "STATS",
    "ASYNC",
    "SYNC",
    "SCHEDULE",
    "KEYSPACE",
    "ALL",
    "0-1",
    "1-0",
    "0-0",
    "18446744073709551615-0",
    "MKSTREAM",
    "ENTRIESREAD",
    "FULL",
    "linearizable",
    "lease",
    "stale",
    "save",
    "maxmemory",
    "appendonly",
    "*x*",
    "k?",
    "[a-z]*",
    "\\",
    "{",
    "}",
    "{}",
];

/// One random argument.
fn arg(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=2 => rng.pick(KEYS).as_bytes().to_vec(),
        3..=4 => rng.pick(NUMBERS).as_bytes().to_vec(),
        5..=7 => rng.pick(WORDS).as_bytes().to_vec(),
        8 => {
            let n = rng.below(24);
            (0..n).map(|_| rng.next() as u8).collect()
        }
        _ => {
            let n = [0usize, 1, 64, 1000, 70_000][rng.below(5)];
            vec![b'a' + (rng.next() % 26) as u8; n]
        }
    }
}

/// A blocking pop with a short timeout (≤ 0.2 s) on random keys.
fn blocking(rng: &mut Rng) -> Vec<Vec<u8>> {
    let key = |rng: &mut Rng| rng.pick(KEYS).to_string();
    let timeout = rng
        .pick(&["0.01", "0.05", "0.2", "-1", "x", "1e-9"])
        .to_string();
    let end = rng.pick(&["LEFT", "RIGHT", "MIDDLE"]).to_string();
    let words: Vec<String> = match rng.below(7) {
        0 => vec!["BLPOP".into(), key(rng), key(rng), timeout],
        1 => vec!["BRPOP".into(), key(rng), timeout],
        2 => vec!["BRPOPLPUSH".into(), key(rng), key(rng), timeout],
        3 => vec![
            "BLMOVE".into(),
            key(rng),
            key(rng),
            end.clone(),
            end,
            timeout,
        ],
        4 => vec!["BZPOPMIN".into(), key(rng), key(rng), timeout],
        5 => vec!["BZPOPMAX".into(), key(rng), timeout],
        _ => vec![
            rng.pick(&["BLMPOP", "BZMPOP"]).into(),
            timeout,
            rng.pick(&["1", "2", "0", "-1"]).into(),
            key(rng),
            key(rng),
            rng.pick(&["LEFT", "RIGHT", "MIN", "MAX"]).into(),
            rng.pick(&["COUNT", "x"]).into(),
            rng.pick(NUMBERS).into(),
        ],
    };
    words.into_iter().map(String::into_bytes).collect()
}

/// A BITFIELD or BITFIELD_RO of mostly well-formed subcommands (random
/// arguments seldom make one): types at and past the limits, offsets as
/// bits or `#n` (some past the largest value, some whose `n × width`
/// overflows), values near the limits, every OVERFLOW mode.
fn bitfield(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut words: Vec<String> = vec![
        rng.pick(&["BITFIELD", "BITFIELD", "BITFIELD_RO"]).into(),
        rng.pick(KEYS).into(),
    ];
    for _ in 0..rng.below(6) {
        let ty = rng
            .pick(&[
                "i1", "u1", "i8", "u8", "i17", "u31", "i63", "u63", "i64", "u64", "i0", "I8", "x",
            ])
            .to_string();
        let offset = match rng.below(6) {
            0 => format!("#{}", rng.below(40)),
            1 => rng
                .pick(&[
                    "-1",
                    "x",
                    "#",
                    "#9223372036854775807",
                    "536870911",
                    "536870912",
                    "4294967295",
                ])
                .into(),
            _ => rng.below(200).to_string(),
        };
        match rng.below(8) {
            0 => {
                words.push("OVERFLOW".into());
                words.push(rng.pick(&["WRAP", "SAT", "FAIL", "fail", "NONE"]).into());
            }
            1..=3 => words.extend(["GET".into(), ty, offset]),
            4..=5 => words.extend(["SET".into(), ty, offset, rng.pick(NUMBERS).into()]),
            6 => words.extend(["INCRBY".into(), ty, offset, rng.pick(NUMBERS).into()]),
            _ => words.push(String::from_utf8_lossy(&arg(rng)).into_owned()),
        }
    }
    words.into_iter().map(String::into_bytes).collect()
}

/// An `EVAL` of a script that does something (random arguments seldom
/// make one): random writes decided by `math.random` (replicas must still
/// agree: a script's effects are replicated, not the script), a write then
/// a failing command, a random command of the table through `pcall`.
fn script(rng: &mut Rng, table: &[Spec]) -> Vec<Vec<u8>> {
    const SCRIPTS: &[&str] = &[
        "local n = math.random(1, 3) for i = 1, n do \
         redis.call('RPUSH', KEYS[1], math.random(100)) end return redis.call('LLEN', KEYS[1])",
        "redis.call('SET', KEYS[1], ARGV[1]) redis.call('INCR', KEYS[2]) \
         return redis.call('GET', KEYS[2])",
        "local v = redis.call('GET', KEYS[1]) if v then redis.call('SET', KEYS[2], v) end return v",
        "redis.call('HSET', KEYS[1], 'f', ARGV[1]) redis.call('PEXPIRE', KEYS[1], 100000) \
         return redis.call('HGETALL', KEYS[1])",
        "return cjson.encode({redis.call('EXISTS', KEYS[1]), ARGV[1]})",
        "return redis.pcall(ARGV[1], KEYS[1], ARGV[2])",
        "return redis.pcall(ARGV[1], KEYS[1], KEYS[2], ARGV[2], ARGV[2])",
    ];
    let name = table[rng.below(table.len())].name.clone();
    let mut line: Vec<Vec<u8>> = vec![
        rng.pick(&["EVAL", "EVAL", "EVAL_RO"]).into(),
        rng.pick(SCRIPTS).into(),
        b"2".to_vec(),
        rng.pick(KEYS).into(),
        rng.pick(KEYS).into(),
    ];
    if rng.below(2) == 0 {
        line.push(name.into_bytes());
    } else {
        line.push(rng.pick(NUMBERS).into());
    }
    line.push(arg(rng));
    line
}

/// What `COMMAND` says of a command: name, Redis arity, and where its
/// keys are (first, last — negative counts from the end — and step; 0 when
/// it takes none).
struct Spec {
    name: String,
    arity: i64,
    first_key: i64,
    last_key: i64,
    step: i64,
}

impl Spec {
    /// Whether argument `i` (0 = the first after the name) of a line of
    /// `n` arguments is a key.
    fn is_key(&self, i: usize, n: usize) -> bool {
        if self.first_key <= 0 || self.step <= 0 {
            return false;
        }
        let pos = i as i64 + 1;
        let last = if self.last_key < 0 {
            n as i64 + 1 + self.last_key
        } else {
            self.last_key
        };
        pos >= self.first_key && pos <= last && (pos - self.first_key) % self.step == 0
    }
}

/// A random command line for `spec`: mostly of a valid length with keys
/// where keys go (so the commands reach the state machine), now and then
/// any length.
fn command(rng: &mut Rng, spec: &Spec) -> Vec<Vec<u8>> {
    let fixed = spec.arity.unsigned_abs().saturating_sub(1) as usize;
    let n = if rng.below(10) < 8 {
        fixed + if spec.arity < 0 { rng.below(6) } else { 0 }
    } else {
        rng.below(fixed + 4)
    };
    let mut line = vec![spec.name.as_bytes().to_vec()];
    for i in 0..n {
        if spec.is_key(i, n) && rng.below(10) < 9 {
            line.push(rng.pick(KEYS).as_bytes().to_vec());
        } else {
            line.push(arg(rng));
        }
    }
    line
}

/// Every command the node lists in `COMMAND` (but [`SKIPPED`]).
fn commands(c: &mut redis::Connection) -> Vec<Spec> {
    let Value::Array(items) = redis::cmd("COMMAND").query::<Value>(c).expect("COMMAND") else {
        panic!("COMMAND did not answer an array")
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };
    let mut out: Vec<Spec> = items
        .iter()
        .filter_map(|item| {
            let Value::Array(f) = item else { return None };
            let name = match f.first()? {
                Value::BulkString(n) => String::from_utf8_lossy(n).to_uppercase(),
                Value::SimpleString(n) => n.to_uppercase(),
                _ => return None,
            };
            Some(Spec {
                name,
                arity: int(f.get(1))?,
                first_key: int(f.get(3)).unwrap_or(0),
                last_key: int(f.get(4)).unwrap_or(0),
                step: int(f.get(5)).unwrap_or(0),
            })
        })
        .filter(|s| !SKIPPED.contains(&s.name.as_str()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn show(line: &[Vec<u8>]) -> String {
    line.iter()
        .map(|a| {
            let s = String::from_utf8_lossy(a);
            if s.len() > 40 {
                format!(
                    "{:?}…({} bytes)",
                    s.chars().take(40).collect::<String>(),
                    a.len()
                )
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Random protocol garbage: malformed headers, lengths that lie, binary.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"*",
        b"$",
        b"\r\n",
        b"\n",
        b"\r",
        b"-1",
        b"*-5\r\n",
        b"*1\r\n$-1\r\n",
        b"$99999999999999999999\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*2147483648\r\n",
        b"*1\r\n:5\r\n",
        b"*1\r\n*1\r\n$4\r\nPING\r\n",
        b"\"unterminated quote",
        b"SET 'a' \"b\\x\"\r\n",
        b"PING\r\n",
        b"\x00\xff\xfe",
        b"$4\r\nPING\r\n",
        b"*1\r\n$4\r\nPINGxx\r\n",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(8) {
        if rng.below(4) == 0 {
            out.extend((0..rng.below(32)).map(|_| rng.next() as u8));
        } else {
            out.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    out
}

/// Group ids the HTTP requests use: the node's KV groups (1..=4, where
/// membership changes are not sent: a second voter that never comes would
/// stall the store for the rest of the test), groups the fuzz may create,
/// and ids that are not numbers or not hosted.
const GROUP_IDS: &[&str] = &[
    "1",
    "2",
    "3",
    "4",
    "100",
    "101",
    "102",
    "0",
    "-1",
    "abc",
    "18446744073709551615",
    "99999999999999999999",
    "",
];

const NODE_IDS: &[&str] = &["1", "2", "0", "-3", "x", "18446744073709551616"];

/// A random JSON-ish body: the API's shapes with random values, or junk.
fn http_body(rng: &mut Rng) -> String {
    let group = rng.pick(&["100", "101", "102", "1", "0", "-5", "\"x\"", "null"]);
    let node = rng.pick(&["1", "2", "0", "null", "\"1\"", "1.5"]);
    let addr = rng.pick(&["\"127.0.0.1:1\"", "\"nonsense\"", "null", "7"]);
    let val = rng.pick(&["\"v\"", "null", "1", "[]", "{}", "\"\\u0000\""]);
    match rng.below(9) {
        0 => format!("{{\"group\": {group}, \"members\": [{{\"node\": {node}, \"addr\": {addr}}}]}}"),
        1 => format!("{{\"clusterId\": {group}, \"nodeId\": {node}, \"peers\": [{{\"nodeId\": {node}, \"address\": {addr}}}]}}"),
        2 => format!("{{\"node\": {node}, \"addr\": {addr}, \"kind\": \"{}\"}}", rng.pick(&["voter", "observer", "witness", "king"])),
        3 => format!("{{\"to\": {node}}}"),
        4 => format!("{{\"expected\": {val}, \"new\": {val}}}"),
        5 => format!("{{\"peers\": [{{\"node\": {node}, \"addr\": {addr}}}], \"witness\": {}}}", rng.pick(&["true", "false", "1"])),
        6 => String::new(),
        7 => "{\"unclosed\": [1, 2".to_string(),
        _ => (0..rng.below(40)).map(|_| char::from(32 + (rng.next() % 95) as u8)).collect(),
    }
}

/// A random HTTP request line and body.
fn http_request(rng: &mut Rng) -> (String, String, String) {
    let g = rng.pick(GROUP_IDS);
    let spare = rng.pick(&["100", "101", "102", "abc", "0"]);
    let n = rng.pick(NODE_IDS);
    let key = rng.pick(&["a", "%7Bt%7Da", "%ff%fe", "a%2Fb", "", "..%2F..", "k?x"]);
    let path = match rng.below(16) {
        0 => format!("/kv/{key}"),
        1 => format!(
            "/kv/{key}?if={}",
            rng.pick(&["absent", "present", "maybe", ""])
        ),
        2 => format!("/kv/{key}/cas"),
        3 => format!(
            "/kv?prefix={key}&start={key}&limit={}&keys_only={}",
            rng.pick(NUMBERS),
            rng.pick(&["true", "false", "yes"])
        ),
        4 => "/clusters".to_string(),
        5 => format!("/cluster/{g}?key={key}&value={}", rng.pick(NUMBERS)),
        6 => format!("/groups/{g}"),
        7 => format!("/groups/{spare}/members"),
        8 => format!("/groups/{spare}/members/{n}"),
        9 => format!("/groups/{spare}/members/{n}/promote"),
        10 => format!("/groups/{g}/transfer"),
        11 => format!("/groups/{spare}/join"),
        12 => format!("/groups/{g}/snapshot"),
        13 => rng
            .pick(&[
                "/status", "/health", "/metrics", "/groups", "/", "//", "/groups/",
            ])
            .to_string(),
        14 => format!("/groups/{spare}"),
        _ => format!("/{}", rng.pick(WORDS)),
    };
    let method = rng.pick(&["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]);
    (method.to_string(), path, http_body(rng))
}

/// Sends one HTTP/1.1 request; returns the status code.
fn http_status(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))
}

/// A node's whole keyspace read from its own replica (stale reads): per key
/// its type, absolute expiry and content (set members and hash fields
/// sorted).
fn dump(node: &NodeProc) -> Vec<(Vec<u8>, String)> {
    let mut c = node.redis();
    let _: () = redis::cmd("CONSISTENCY")
        .arg("stale")
        .query(&mut c)
        .unwrap();
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.sort();
    let q = |c: &mut redis::Connection, args: &[&[u8]]| -> Value {
        to_cmd(args)
            .query(c)
            .unwrap_or_else(|e| Value::SimpleString(format!("error {e}")))
    };
    let sorted = |v: Value| match v {
        Value::Array(mut items) => {
            items.sort_by_key(|i| format!("{i:?}"));
            Value::Array(items)
        }
        other => other,
    };
    keys.into_iter()
        .map(|k| {
            let ty = match q(&mut c, &[b"TYPE", &k]) {
                Value::SimpleString(t) => t,
                other => format!("{other:?}"),
            };
            let content = match ty.as_str() {
                "string" => q(&mut c, &[b"GET", &k]),
                "list" => q(&mut c, &[b"LRANGE", &k, b"0", b"-1"]),
                "hash" => sorted(q(&mut c, &[b"HGETALL", &k])),
                "zset" => q(&mut c, &[b"ZRANGE", &k, b"0", b"-1", b"WITHSCORES"]),
                "set" => sorted(q(&mut c, &[b"SMEMBERS", &k])),
                "stream" => q(&mut c, &[b"XRANGE", &k, b"-", b"+"]),
                _ => Value::Nil,
            };
            let expiry = q(&mut c, &[b"PEXPIRETIME", &k]);
            (k, format!("{ty} {expiry:?} {content:?}"))
        })
        .collect()
}

/// Waits (up to 30 s: followers apply a little behind, keys expire) until
/// every node's replica holds the same keyspace; fails with the first
/// difference.
fn replicas_agree(nodes: &[NodeProc], seed: u64) {
    let start = std::time::Instant::now();
    loop {
        let dumps: Vec<_> = nodes.iter().map(dump).collect();
        let first_difference = dumps[1..].iter().zip(&nodes[1..]).find_map(|(d, n)| {
            if *d == dumps[0] {
                return None;
            }
            let at = d
                .iter()
                .zip(&dumps[0])
                .position(|(a, b)| a != b)
                .unwrap_or(d.len().min(dumps[0].len()));
            Some(format!(
                "node {} differs from node 1 ({} vs {} keys) at {:?} vs {:?}",
                n.id,
                d.len(),
                dumps[0].len(),
                d.get(at),
                dumps[0].get(at)
            ))
        });
        match first_difference {
            None => {
                eprintln!("replicas agree on {} keys", dumps[0].len());
                return;
            }
            Some(diff) if start.elapsed() > Duration::from_secs(30) => {
                for (d, n) in dumps.iter().zip(nodes) {
                    eprintln!("node {} (RESP {}, HTTP {}):", n.id, n.resp, n.http);
                    for (k, v) in d {
                        eprintln!(
                            "  {:?} {}",
                            String::from_utf8_lossy(k),
                            v.chars().take(300).collect::<String>()
                        );
                    }
                }
                if let Some(secs) = std::env::var("FLOTILLA_FUZZ_HOLD")
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    eprintln!("holding the cluster for {secs} s");
                    std::thread::park_timeout(Duration::from_secs(secs));
                }
                panic!("replicas disagree (seed {seed}): {diff}")
            }
            Some(_) => std::thread::park_timeout(Duration::from_millis(500)),
        }
    }
}

/// `FLOTILLA_FUZZ_SEED`, else a fixed seed.
fn seed() -> u64 {
    std::env::var("FLOTILLA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f10c)
}

/// The command of a line (name first).
fn to_cmd<A: AsRef<[u8]>>(line: &[A]) -> redis::Cmd {
    let mut cmd = redis::cmd(std::str::from_utf8(line[0].as_ref()).expect("ASCII name"));
    for a in &line[1..] {
        cmd.arg(a.as_ref());
    }
    cmd
}

/// The panic messages in the node's log (the log's tail is its backtrace).
fn panics(node: &NodeProc) -> String {
    let text = std::fs::read_to_string(&node.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            out.extend(lines[i..(i + 2).min(lines.len())].iter().copied());
        }
    }
    out.join("\n")
}

#[test]
fn random_commands_and_garbage_never_take_a_node_down() {
    let seed = seed();
    let total: usize = std::env::var("FLOTILLA_FUZZ_COMMANDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_000);
    eprintln!("fuzz seed {seed} ({total} commands)");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &[]);
    let mut conns: Vec<redis::Connection> = nodes.iter().map(|n| n.redis()).collect();
    let table = commands(&mut conns[0]);
    assert!(
        table.len() > 100,
        "COMMAND listed only {} commands",
        table.len()
    );
    // `FLOTILLA_FUZZ_TRACE_FROM=N` prints every command from the N-th on.
    let trace_from: Option<usize> = std::env::var("FLOTILLA_FUZZ_TRACE_FROM")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut rng = Rng(seed);
    let mut recent: VecDeque<String> = VecDeque::new();
    let mut errors = 0usize;
    for i in 0..total {
        if i > 0 && i % 2000 == 0 {
            replicas_agree(&nodes, seed);
        }
        // Any node: most commands are forwarded to their group's leader.
        let at = rng.below(nodes.len());
        let node = &nodes[at];
        let c = &mut conns[at];
        let mut spec = &table[rng.below(table.len())];
        // Emptying everything makes the replica comparison see little:
        // FLUSHALL / FLUSHDB are drawn a tenth as often.
        while spec.name.starts_with("FLUSH") && rng.below(10) != 0 {
            spec = &table[rng.below(table.len())];
        }
        let line = if rng.below(50) == 0 {
            blocking(&mut rng)
        } else if rng.below(25) == 0 {
            bitfield(&mut rng)
        } else if rng.below(20) == 0 {
            script(&mut rng, &table)
        } else {
            command(&mut rng, spec)
        };
        recent.push_back(show(&line));
        if recent.len() > 12 {
            recent.pop_front();
        }
        let cmd = to_cmd(&line);
        if trace_from.is_some_and(|from| i >= from) {
            eprintln!("command {i} to node {}: {}", node.id, show(&line));
        }
        let t0 = std::time::Instant::now();
        let answer = cmd.query::<Value>(c);
        let took = t0.elapsed();
        if took > Duration::from_millis(200) {
            eprintln!("slow ({took:?}) at node {}: {}", node.id, show(&line));
        }
        match answer {
            Ok(_) => {}
            // An error reply: the node refused the command, as it should
            // refuse most of these.
            Err(e) if e.code().is_some() => {
                errors += 1;
                if std::env::var_os("FLOTILLA_FUZZ_SHOW_ERRORS").is_some() {
                    eprintln!("error: {} -> {e}", recent.back().unwrap());
                }
            }
            Err(e) => panic!(
                "command {i} (seed {seed}) to node {} failed with {e} ({:?}); the last commands:\n{}\nnode panics:\n{}",
                node.id,
                e.kind(),
                recent.iter().cloned().collect::<Vec<_>>().join("\n"),
                panics(node)
            ),
        }
        // And an HTTP request: any answer but a 500 (an internal error)
        // or a broken connection.
        if i % 8 == 0 {
            let (method, path, body) = http_request(&mut rng);
            match http_status(node.http, &method, &path, &body) {
                Ok(status) if status != 500 => {}
                other => panic!(
                    "{method} {path} {body:?} (seed {seed}): {other:?}\nnode panics:\n{}",
                    panics(node)
                ),
            }
        }
        // Now and then a burst of protocol garbage on a connection of its
        // own: answered with errors or closed, never fatal.
        if i % 40 == 0 {
            let bytes = garbage(&mut rng);
            let mut s = TcpStream::connect_timeout(&node.resp, Duration::from_secs(5))
                .expect("connect for garbage");
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&bytes);
            // End of input: the node answers what it could parse and
            // closes (a read that times out means it kept a half-closed
            // connection open).
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut reply = Vec::new();
            if let Err(e) = s.read_to_end(&mut reply) {
                assert!(
                    e.kind() == std::io::ErrorKind::ConnectionReset,
                    "garbage {:?}: no close after end of input ({e})",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
    eprintln!(
        "{total} commands over {} command names, {errors} answered with an error",
        table.len()
    );
    // Every replica holds the same data (the state machine applied the
    // same log the same way everywhere).
    replicas_agree(&nodes, seed);
    // Still whole: a fresh connection works, a write reads back, clean exit.
    let mut fresh = nodes[0].redis();
    let pong: String = redis::cmd("PING")
        .query(&mut fresh)
        .expect("PING after the fuzz");
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("fuzz")
        .query(&mut fresh)
        .expect("SET after the fuzz");
    let v: String = redis::cmd("GET").arg("after").query(&mut fresh).unwrap();
    assert_eq!(v, "fuzz");
    // Requests the fuzz found killing the node or failing with a 500:
    // `/kv` with another method than GET, an HTTP read of a key that
    // holds a list, a rafter-demo write of a key into a KV group it does
    // not hash to (it then showed in two groups' scans).
    let _: i64 = redis::cmd("RPUSH")
        .arg("a-list")
        .arg("x")
        .query(&mut fresh)
        .unwrap();
    for (method, path, want) in [
        ("POST", "/kv", 405),
        ("PUT", "/kv", 405),
        ("GET", "/kv/a-list", 409),
        ("GET", "/kv/after", 200),
    ] {
        assert_eq!(
            http_status(nodes[0].http, method, path, ""),
            Ok(want),
            "{method} {path}"
        );
    }
    let statuses: Vec<Result<u16, String>> = (1..=4)
        .map(|g| {
            http_status(
                nodes[0].http,
                "PUT",
                &format!("/cluster/{g}?key=after&value=x"),
                "",
            )
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Ok(200)).count(),
        1,
        "a key goes into its own KV group only: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == Ok(409)).count(),
        3,
        "{statuses:?}"
    );
    for n in nodes.iter_mut() {
        assert!(
            n.terminate().success(),
            "node {} did not exit cleanly:\n{}",
            n.id,
            n.log_tail()
        );
    }
}

/// Without a quorum nothing can commit and no read can be confirmed, but
/// every command still answers — an error or what it can answer locally —
/// within the request deadline: no command waits for a leader forever.
#[test]
fn every_command_answers_within_its_deadline_without_a_quorum() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path(), 3, 4, &["--request-timeout-ms", "400"]);
    let mut c = nodes[0].redis();
    let table = commands(&mut c);
    for (i, key) in ["{t}a", "{t}b", "k0"].iter().enumerate() {
        let _: () = redis::cmd("SET").arg(*key).arg(i).query(&mut c).unwrap();
    }
    nodes[1].kill9();
    nodes[2].kill9();
    let mut rng = Rng(seed);
    let mut slowest = (Duration::ZERO, String::new());
    for round in 0..3 {
        for spec in &table {
            let line = command(&mut rng, spec);
            let cmd = to_cmd(&line);
            let t0 = std::time::Instant::now();
            let answer = cmd.query::<Value>(&mut c);
            let took = t0.elapsed();
            if took > slowest.0 {
                slowest = (took, show(&line));
            }
            // The deadline is 400 ms; a command of several groups waits
            // for them together. 5 s means something waited unbounded.
            assert!(
                took < Duration::from_secs(5),
                "round {round}: {} took {took:?} without a quorum",
                show(&line)
            );
            if let Err(e) = answer {
                assert!(
                    e.code().is_some(),
                    "{}: {e} (not an error reply)\nnode panics:\n{}",
                    show(&line),
                    panics(&nodes[0])
                );
            }
        }
        for _ in 0..20 {
            let line = blocking(&mut rng);
            let cmd = to_cmd(&line);
            let t0 = std::time::Instant::now();
            let _ = cmd.query::<Value>(&mut c);
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{} took {:?} without a quorum",
                show(&line),
                t0.elapsed()
            );
        }
    }
    eprintln!("slowest without a quorum: {:?} {}", slowest.0, slowest.1);
    assert!(
        nodes[0].terminate().success(),
        "node 1 did not exit cleanly:\n{}",
        nodes[0].log_tail()
    );
}
