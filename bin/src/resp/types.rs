//! The Redis data-type commands: lists, sets, hashes, sorted sets and
//! streams. [`prepare`] parses a command's arguments (arity, options,
//! numbers, with Redis' error texts) into one KV request for its key's
//! group, and [`finish`] turns the result into Redis' reply shape. Both
//! are pure functions, tested below without a node.
//!
//! A command of several keys (`LMOVE`, `SMOVE`, `SINTER`, the STORE
//! forms...) is one request too, applied atomically by one group: its
//! keys must all live in that group, as they must share a hash slot in
//! Redis Cluster (use a hash tag: `{user:7}:a`, `{user:7}:b`). [`group`]
//! checks it and answers `-CROSSSLOT` otherwise.
//!
//! Randomness and time are chosen here, by the node that receives the
//! command, and carried in it: SPOP / SRANDMEMBER take a `seed`, `XADD *`
//! takes `now_ms`; the state machine then gives the same answer on every
//! replica.

use bytes::Bytes;
use flotilla_rsm::kv::KEYS_PER_COMMAND_MAX;
use flotilla_rsm::{
    KvCommand, KvQuery, KvResult, StreamTrim, TrimThreshold, TypedCommand as C, TypedQuery as Q,
    XAddId, ZAddCompare, ZAddCondition,
};

use super::command::Op;
use super::glob;
use super::reply::Reply;

/// How a typed command's result becomes its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// `Len`, `Count` or `Int` as an integer.
    Int,
    /// `Value` as a bulk string or nil.
    Bulk,
    /// Anything as `+OK` (HMSET).
    Ok,
    /// `Items` / `Values` as an array of bulk strings (nil for absent).
    Array,
    /// `Items` as an array, `Value(None)` as the nil array (LPOP with a
    /// count on an absent key).
    ArrayOrNilArray,
    /// `Int` as an integer, `Value(None)` as nil (ZRANK).
    IntOrNil,
    /// Stream entries: `[[id, [field, value, ...]], ...]`.
    Records,
    /// XRANGE ... COUNT 0 from the key's `Type`: the nil array for a
    /// stream, the empty array for no key, WRONGTYPE otherwise (Redis 7).
    NoRecords,
    /// XDEL with an id that does not parse, from the key's `Type`: 0 for
    /// no key, the invalid-id error for a stream, WRONGTYPE otherwise
    /// (Redis looks the key up before it reads the ids).
    XDelBadId,
    /// `Items` of decimal integers as an array of integers (LPOS with a
    /// count, SMISMEMBER).
    IntArray,
    /// HINCRBYFLOAT: `Value` as a bulk string.
    IncrFloat,
    /// `Items` of pairs as a map (HGETALL: a map in RESP3).
    Map,
    /// `Items` as a set (SMEMBERS: a set in RESP3).
    Set,
    /// `Value` as a double or nil (ZSCORE, ZINCRBY, ZADD INCR: a double
    /// in RESP3).
    Double,
    /// `Values` as doubles or nils (ZMSCORE).
    Doubles,
    /// `Items` of pairs as pairs (RESP3 nests them), the second of each a
    /// double if `scored` (ZRANGE ... WITHSCORES, HRANDFIELD ...
    /// WITHVALUES).
    Pairs {
        /// The second of each pair is a score.
        scored: bool,
    },
    /// LMPOP / ZMPOP: `Items` `[key, popped...]` as `[key, [elements]]`
    /// (sorted sets: `[key, [[member, score], ...]]`), empty as the nil
    /// array.
    MultiPop {
        /// Sorted-set pairs.
        zset: bool,
    },
    /// `Items` of member, score pairs: ZPOPMIN / ZPOPMAX with a count
    /// (`counted`: pairs) or without (one flat member, score).
    Popped {
        /// A count was given.
        counted: bool,
    },
    /// HSCAN, SSCAN, ZSCAN: `Items` (pairs if `pairs`) as `["0", [...]]`,
    /// keeping what `pattern` matches (the first of a pair), without the
    /// second of each pair if `only_firsts`.
    Scan {
        /// MATCH.
        pattern: Option<Bytes>,
        /// The items are pairs (field, value / member, score).
        pairs: bool,
        /// NOVALUES: only the fields.
        only_firsts: bool,
    },
}

/// A parsed typed command: its key, its request and its reply shape.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The key (routes the request to its group).
    pub key: Bytes,
    /// The command's other keys, which must live in `key`'s group.
    pub others: Vec<Bytes>,
    /// The request.
    pub op: Op,
    /// The reply shape.
    pub finish: Finish,
}

/// Commands of this module: name, arity, flags, first key, last key, step
/// (the fields of a COMMAND reply).
pub const COMMANDS: &[super::command::CommandInfo] = &[
    ("lpush", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("rpush", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("lpushx", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("rpushx", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("lpop", -2, &["write", "fast"], 1, 1, 1),
    ("rpop", -2, &["write", "fast"], 1, 1, 1),
    ("llen", 2, &["readonly", "fast"], 1, 1, 1),
    ("lrange", 4, &["readonly"], 1, 1, 1),
    ("lindex", 3, &["readonly"], 1, 1, 1),
    ("lset", 4, &["write", "denyoom"], 1, 1, 1),
    ("lrem", 4, &["write"], 1, 1, 1),
    ("ltrim", 4, &["write"], 1, 1, 1),
    ("lpos", -3, &["readonly"], 1, 1, 1),
    ("linsert", 5, &["write", "denyoom"], 1, 1, 1),
    ("rpoplpush", 3, &["write", "denyoom"], 1, 2, 1),
    ("lmove", 5, &["write", "denyoom"], 1, 2, 1),
    ("sadd", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("srem", -3, &["write", "fast"], 1, 1, 1),
    ("spop", -2, &["write", "fast"], 1, 1, 1),
    ("smembers", 2, &["readonly"], 1, 1, 1),
    ("sismember", 3, &["readonly", "fast"], 1, 1, 1),
    ("scard", 2, &["readonly", "fast"], 1, 1, 1),
    ("srandmember", -2, &["readonly"], 1, 1, 1),
    ("smismember", -3, &["readonly", "fast"], 1, 1, 1),
    ("smove", 4, &["write", "fast"], 1, 2, 1),
    ("sinter", -2, &["readonly"], 1, -1, 1),
    ("sunion", -2, &["readonly"], 1, -1, 1),
    ("sdiff", -2, &["readonly"], 1, -1, 1),
    ("sintercard", -3, &["readonly", "movablekeys"], 0, 0, 0),
    ("lmpop", -4, &["write", "movablekeys"], 0, 0, 0),
    ("zmpop", -4, &["write", "movablekeys"], 0, 0, 0),
    ("sinterstore", -3, &["write", "denyoom"], 1, -1, 1),
    ("sunionstore", -3, &["write", "denyoom"], 1, -1, 1),
    ("sdiffstore", -3, &["write", "denyoom"], 1, -1, 1),
    ("hset", -4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hmset", -4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hsetnx", 4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hget", 3, &["readonly", "fast"], 1, 1, 1),
    ("hmget", -3, &["readonly", "fast"], 1, 1, 1),
    ("hdel", -3, &["write", "fast"], 1, 1, 1),
    ("hlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("hexists", 3, &["readonly", "fast"], 1, 1, 1),
    ("hgetall", 2, &["readonly"], 1, 1, 1),
    ("hkeys", 2, &["readonly"], 1, 1, 1),
    ("hvals", 2, &["readonly"], 1, 1, 1),
    ("hincrby", 4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hincrbyfloat", 4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hstrlen", 3, &["readonly", "fast"], 1, 1, 1),
    ("hrandfield", -2, &["readonly"], 1, 1, 1),
    ("zadd", -4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("zincrby", 4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("zrem", -3, &["write", "fast"], 1, 1, 1),
    ("zscore", 3, &["readonly", "fast"], 1, 1, 1),
    ("zcard", 2, &["readonly", "fast"], 1, 1, 1),
    ("zrange", -4, &["readonly"], 1, 1, 1),
    ("zrevrange", -4, &["readonly"], 1, 1, 1),
    ("zrank", 3, &["readonly", "fast"], 1, 1, 1),
    ("zrevrank", 3, &["readonly", "fast"], 1, 1, 1),
    ("zpopmin", -2, &["write", "fast"], 1, 1, 1),
    ("zpopmax", -2, &["write", "fast"], 1, 1, 1),
    ("zrangebyscore", -4, &["readonly"], 1, 1, 1),
    ("zrevrangebyscore", -4, &["readonly"], 1, 1, 1),
    ("zcount", 4, &["readonly", "fast"], 1, 1, 1),
    ("zmscore", -3, &["readonly", "fast"], 1, 1, 1),
    ("zrandmember", -2, &["readonly"], 1, 1, 1),
    ("zremrangebyscore", 4, &["write"], 1, 1, 1),
    ("zremrangebyrank", 4, &["write"], 1, 1, 1),
    ("zrangebylex", -4, &["readonly"], 1, 1, 1),
    ("zrevrangebylex", -4, &["readonly"], 1, 1, 1),
    ("zlexcount", 4, &["readonly", "fast"], 1, 1, 1),
    ("zremrangebylex", 4, &["write"], 1, 1, 1),
    (
        "zunionstore",
        -4,
        &["write", "denyoom", "movablekeys"],
        1,
        1,
        1,
    ),
    (
        "zinterstore",
        -4,
        &["write", "denyoom", "movablekeys"],
        1,
        1,
        1,
    ),
    (
        "zdiffstore",
        -4,
        &["write", "denyoom", "movablekeys"],
        1,
        1,
        1,
    ),
    ("zunion", -3, &["readonly", "movablekeys"], 0, 0, 0),
    ("zinter", -3, &["readonly", "movablekeys"], 0, 0, 0),
    ("zdiff", -3, &["readonly", "movablekeys"], 0, 0, 0),
    ("zintercard", -3, &["readonly", "movablekeys"], 0, 0, 0),
    ("hscan", -3, &["readonly"], 1, 1, 1),
    ("sscan", -3, &["readonly"], 1, 1, 1),
    ("zscan", -3, &["readonly"], 1, 1, 1),
    ("xadd", -5, &["write", "denyoom", "fast"], 1, 1, 1),
    ("xtrim", -4, &["write"], 1, 1, 1),
    ("xdel", -3, &["write", "fast"], 1, 1, 1),
    ("xsetid", -3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("xlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("xrange", -4, &["readonly"], 1, 1, 1),
    ("xrevrange", -4, &["readonly"], 1, 1, 1),
];

/// The group of a planned command: its key's, if every other key of the
/// command lives there too (`group_for` maps a key to its group).
///
/// # Errors
/// `-CROSSSLOT` if the keys fall in different groups.
pub fn group<G: PartialEq>(p: &Planned, group_for: impl Fn(&[u8]) -> G) -> Result<G, Reply> {
    let g = group_for(&p.key);
    if p.others.iter().any(|k| group_for(k) != g) {
        return Err(super::command::crossslot());
    }
    Ok(g)
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn not_float() -> Reply {
    Reply::err("value is not a valid float")
}

fn must_be_positive() -> Reply {
    Reply::err("value is out of range, must be positive")
}

fn invalid_id() -> Reply {
    Reply::err("Invalid stream ID specified as stream command argument")
}

/// An integer as Redis reads one (`string2ll`: optional `-`, digits, no
/// leading zeros or spaces, within i64).
fn int(b: &[u8]) -> Result<i64, Reply> {
    let s = std::str::from_utf8(b).map_err(|_| not_integer())?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return Err(not_integer());
    }
    s.parse().map_err(|_| not_integer())
}

/// A float as Redis reads a score: decimal or exponent notation, `inf`,
/// `+inf`, `-inf` (any case); never NaN, no spaces.
fn score(b: &[u8]) -> Result<f64, Reply> {
    let s = std::str::from_utf8(b).map_err(|_| not_float())?;
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return Err(not_float());
    }
    let lower = s.to_ascii_lowercase();
    let lower = lower.strip_prefix('+').unwrap_or(&lower);
    let f = match lower {
        "inf" | "infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ if lower.contains("inf") || lower.contains("nan") => return Err(not_float()),
        _ => s.parse::<f64>().map_err(|_| not_float())?,
    };
    if f.is_nan() {
        return Err(not_float());
    }
    Ok(f)
}

/// A count that must not be negative (LPOP, SPOP, ZPOPMIN).
fn positive_count(b: &[u8]) -> Result<u64, Reply> {
    let n = int(b).map_err(|_| must_be_positive())?;
    u64::try_from(n).map_err(|_| must_be_positive())
}

/// A stream id `<ms>[-<seq>]`; `seq` is `None` if absent.
pub(super) fn stream_id(b: &[u8]) -> Result<(u64, Option<u64>), Reply> {
    let s = std::str::from_utf8(b).map_err(|_| invalid_id())?;
    let num = |t: &str| -> Result<u64, Reply> {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(invalid_id());
        }
        t.parse().map_err(|_| invalid_id())
    };
    match s.split_once('-') {
        None => Ok((num(s)?, None)),
        Some((ms, seq)) => Ok((num(ms)?, Some(num(seq)?))),
    }
}

/// A range bound of XRANGE: `-`, `+`, `[(]<ms>[-<seq>]`. `None` if an
/// exclusive bound leaves nothing (after the last / before the first id).
fn range_bound(b: &[u8], is_start: bool) -> Result<Option<(u64, u64)>, Reply> {
    match b {
        b"-" => return Ok(Some((0, 0))),
        b"+" => return Ok(Some((u64::MAX, u64::MAX))),
        _ => {}
    }
    let (exclusive, body) = match b.strip_prefix(b"(") {
        Some(rest) => (true, rest),
        None => (false, b),
    };
    let (ms, seq) = stream_id(body)?;
    let id = (ms, seq.unwrap_or(if is_start { 0 } else { u64::MAX }));
    if !exclusive {
        return Ok(Some(id));
    }
    Ok(if is_start {
        match id {
            (u64::MAX, u64::MAX) => None,
            (ms, u64::MAX) => Some((ms + 1, 0)),
            (ms, seq) => Some((ms, seq + 1)),
        }
    } else {
        match id {
            (0, 0) => None,
            (ms, 0) => Some((ms - 1, u64::MAX)),
            (ms, seq) => Some((ms, seq - 1)),
        }
    })
}

fn too_many(n: usize) -> Result<(), Reply> {
    if n > KEYS_PER_COMMAND_MAX as usize {
        return Err(Reply::err(format!(
            "too many elements in one command (at most {KEYS_PER_COMMAND_MAX})"
        )));
    }
    Ok(())
}

fn write(key: &Bytes, c: C, finish: Finish) -> Result<Planned, Reply> {
    Ok(Planned {
        key: key.clone(),
        others: Vec::new(),
        op: Op::Write(KvCommand::Typed(c)),
        finish,
    })
}

fn read(key: &Bytes, q: Q, finish: Finish) -> Result<Planned, Reply> {
    Ok(Planned {
        key: key.clone(),
        others: Vec::new(),
        op: Op::Read(KvQuery::Typed(q)),
        finish,
    })
}

/// `plan` with more keys, which must live in its key's group.
fn with_others(plan: Result<Planned, Reply>, others: &[Bytes]) -> Result<Planned, Reply> {
    let mut p = plan?;
    p.others = others.to_vec();
    Ok(p)
}

fn not_a_float_range() -> Reply {
    Reply::err("min or max is not a float")
}

/// A bound of a score range (`ZRANGEBYSCORE`, `ZCOUNT`...): a float as
/// [`score`] reads it, `(` in front for an exclusive bound.
fn score_bound(b: &[u8]) -> Result<(f64, bool), Reply> {
    let (body, exclusive) = match b.strip_prefix(b"(") {
        Some(rest) => (rest, true),
        None => (b, false),
    };
    let f = score(body).map_err(|_| not_a_float_range())?;
    Ok((f, exclusive))
}

/// `LEFT` or `RIGHT` (LMOVE): true for left.
fn side(b: &[u8]) -> Result<bool, Reply> {
    match b.to_ascii_uppercase().as_slice() {
        b"LEFT" => Ok(true),
        b"RIGHT" => Ok(false),
        _ => Err(syntax()),
    }
}

/// A number that must not be negative, with the command's own message
/// for anything else (`getPositiveLongFromObjectOrReply`).
fn non_negative(b: &[u8], msg: &str) -> Result<u64, Reply> {
    int(b)
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| Reply::err(msg))
}

/// An integer in `-i64::MAX..=i64::MAX` (Redis' `-LONG_MAX, LONG_MAX`
/// ranges: RANK, HRANDFIELD's count).
fn symmetric_int(b: &[u8]) -> Result<i64, Reply> {
    match int(b)? {
        i64::MIN => Err(Reply::err(format!(
            "value is out of range, value must between {} and {}",
            -i64::MAX,
            i64::MAX
        ))),
        n => Ok(n),
    }
}

/// Parses a data-type command (`name` upper case, `args` after the name).
/// `None` if `name` is not one; `Err` is the reply for a bad command.
/// `now_ms` is this node's clock (XADD `*`), `seed` a fresh random number
/// (SPOP, SRANDMEMBER).
pub fn prepare(
    name: &str,
    args: &[Bytes],
    now_ms: u64,
    seed: u64,
) -> Option<Result<Planned, Reply>> {
    let info = COMMANDS.iter().find(|c| c.0.eq_ignore_ascii_case(name))?;
    if !super::command::arity_ok(info, args.len()) {
        return Some(Err(arity(name)));
    }
    Some(prepare_checked(name, args, now_ms, seed))
}

fn prepare_checked(name: &str, args: &[Bytes], now_ms: u64, seed: u64) -> Result<Planned, Reply> {
    let key = &args[0];
    let rest = &args[1..];
    let k = || key.clone();
    match name {
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => {
            too_many(rest.len())?;
            write(
                key,
                C::ListPush {
                    key: k(),
                    left: name.starts_with('L'),
                    only_existing: name.ends_with('X'),
                    values: rest.to_vec(),
                },
                Finish::Int,
            )
        }
        "LPOP" | "RPOP" | "SPOP" | "ZPOPMIN" | "ZPOPMAX" => {
            let count = match rest {
                [] => None,
                [c] => Some(positive_count(c)?),
                _ => {
                    return Err(if name.ends_with("POP") {
                        arity(name)
                    } else {
                        syntax()
                    })
                }
            };
            match name {
                "SPOP" => write(
                    key,
                    C::SetPop {
                        key: k(),
                        count,
                        seed,
                    },
                    if count.is_some() {
                        Finish::Set
                    } else {
                        Finish::Bulk
                    },
                ),
                "ZPOPMIN" | "ZPOPMAX" => write(
                    key,
                    C::ZPop {
                        key: k(),
                        max: name == "ZPOPMAX",
                        count,
                    },
                    Finish::Popped {
                        counted: count.is_some(),
                    },
                ),
                _ => write(
                    key,
                    C::ListPop {
                        key: k(),
                        left: name == "LPOP",
                        count,
                    },
                    if count.is_some() {
                        Finish::ArrayOrNilArray
                    } else {
                        Finish::Bulk
                    },
                ),
            }
        }
        "LLEN" => read(key, Q::ListLen { key: k() }, Finish::Int),
        "LRANGE" => read(
            key,
            Q::ListRange {
                key: k(),
                start: int(&rest[0])?,
                stop: int(&rest[1])?,
            },
            Finish::Array,
        ),
        "LINDEX" => read(
            key,
            Q::ListIndex {
                key: k(),
                index: int(&rest[0])?,
            },
            Finish::Bulk,
        ),
        "LPOS" => prepare_lpos(key, rest),
        "LINSERT" => {
            let after = match rest[0].to_ascii_uppercase().as_slice() {
                b"BEFORE" => false,
                b"AFTER" => true,
                _ => return Err(syntax()),
            };
            write(
                key,
                C::ListInsert {
                    key: k(),
                    after,
                    pivot: rest[1].clone(),
                    value: rest[2].clone(),
                },
                Finish::Int,
            )
        }
        "RPOPLPUSH" | "LMOVE" => {
            let (from_left, to_left) = match name {
                "LMOVE" => (side(&rest[1])?, side(&rest[2])?),
                _ => (false, true),
            };
            with_others(
                write(
                    key,
                    C::ListMove {
                        key: k(),
                        dst: rest[0].clone(),
                        from_left,
                        to_left,
                    },
                    Finish::Bulk,
                ),
                &rest[..1],
            )
        }
        "LSET" => write(
            key,
            C::ListSet {
                key: k(),
                index: int(&rest[0])?,
                value: rest[1].clone(),
            },
            Finish::Ok,
        ),
        "LREM" => write(
            key,
            C::ListRem {
                key: k(),
                count: int(&rest[0])?,
                value: rest[1].clone(),
            },
            Finish::Int,
        ),
        "LTRIM" => write(
            key,
            C::ListTrim {
                key: k(),
                start: int(&rest[0])?,
                stop: int(&rest[1])?,
            },
            Finish::Ok,
        ),
        "SADD" | "SREM" => {
            too_many(rest.len())?;
            let members = rest.to_vec();
            let c = if name == "SADD" {
                C::SetAdd { key: k(), members }
            } else {
                C::SetRem { key: k(), members }
            };
            write(key, c, Finish::Int)
        }
        "SMEMBERS" => read(key, Q::SetMembers { key: k() }, Finish::Set),
        "SMISMEMBER" => {
            too_many(rest.len())?;
            read(
                key,
                Q::SetMIsMember {
                    key: k(),
                    members: rest.to_vec(),
                },
                Finish::IntArray,
            )
        }
        "SMOVE" => with_others(
            write(
                key,
                C::SetMove {
                    key: k(),
                    dst: rest[0].clone(),
                    member: rest[1].clone(),
                },
                Finish::Int,
            ),
            &rest[..1],
        ),
        "SINTER" | "SUNION" | "SDIFF" => {
            too_many(args.len())?;
            let others = rest.to_vec();
            let q = match name {
                "SINTER" => Q::SetInter { key: k(), others },
                "SUNION" => Q::SetUnion { key: k(), others },
                _ => Q::SetDiff { key: k(), others },
            };
            with_others(read(key, q, Finish::Set), rest)
        }
        "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            too_many(rest.len())?;
            let sources = rest.to_vec();
            let c = match name {
                "SINTERSTORE" => C::SetInterStore { key: k(), sources },
                "SUNIONSTORE" => C::SetUnionStore { key: k(), sources },
                _ => C::SetDiffStore { key: k(), sources },
            };
            with_others(write(key, c, Finish::Int), rest)
        }
        "SINTERCARD" => prepare_sintercard(args),
        "LMPOP" | "ZMPOP" => {
            let zset = name == "ZMPOP";
            let (keys, end, count) = parse_mpop(zset, args)?;
            with_others(
                write(
                    &keys[0],
                    C::MultiPop {
                        keys: keys.clone(),
                        zset,
                        end,
                        count,
                    },
                    Finish::MultiPop { zset },
                ),
                &keys[1..],
            )
        }
        "HSCAN" | "SSCAN" | "ZSCAN" => prepare_scan(name, key, rest),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" | "ZUNION" | "ZINTER" | "ZDIFF"
        | "ZINTERCARD" => prepare_zcombine(name, args),
        "SISMEMBER" => read(
            key,
            Q::SetIsMember {
                key: k(),
                member: rest[0].clone(),
            },
            Finish::Int,
        ),
        "SCARD" => read(key, Q::SetCard { key: k() }, Finish::Int),
        "SRANDMEMBER" => {
            let count = match rest {
                [] => None,
                [c] => Some(int(c)?),
                _ => return Err(syntax()),
            };
            read(
                key,
                Q::SetRandMember {
                    key: k(),
                    count,
                    seed,
                },
                if count.is_some() {
                    Finish::Array
                } else {
                    Finish::Bulk
                },
            )
        }
        "HSET" | "HMSET" => {
            if rest.len() % 2 != 0 {
                return Err(arity(name));
            }
            too_many(rest.len() / 2)?;
            let pairs = rest
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            write(
                key,
                C::HashSet {
                    key: k(),
                    only_new: false,
                    pairs,
                },
                if name == "HSET" {
                    Finish::Int
                } else {
                    Finish::Ok
                },
            )
        }
        "HSETNX" => write(
            key,
            C::HashSet {
                key: k(),
                only_new: true,
                pairs: vec![(rest[0].clone(), rest[1].clone())],
            },
            Finish::Int,
        ),
        "HGET" => read(
            key,
            Q::HashGet {
                key: k(),
                field: rest[0].clone(),
            },
            Finish::Bulk,
        ),
        "HMGET" => {
            too_many(rest.len())?;
            read(
                key,
                Q::HashMGet {
                    key: k(),
                    fields: rest.to_vec(),
                },
                Finish::Array,
            )
        }
        "HDEL" => {
            too_many(rest.len())?;
            write(
                key,
                C::HashDel {
                    key: k(),
                    fields: rest.to_vec(),
                },
                Finish::Int,
            )
        }
        "HLEN" => read(key, Q::HashLen { key: k() }, Finish::Int),
        "HEXISTS" => read(
            key,
            Q::HashExists {
                key: k(),
                field: rest[0].clone(),
            },
            Finish::Int,
        ),
        "HGETALL" => read(key, Q::HashGetAll { key: k() }, Finish::Map),
        "HKEYS" => read(key, Q::HashKeys { key: k() }, Finish::Array),
        "HVALS" => read(key, Q::HashVals { key: k() }, Finish::Array),
        "HINCRBY" => write(
            key,
            C::HashIncrBy {
                key: k(),
                field: rest[0].clone(),
                delta: int(&rest[1])?,
            },
            Finish::Int,
        ),
        "HINCRBYFLOAT" => {
            let delta = score(&rest[1])?;
            if delta.is_infinite() {
                return Err(Reply::err("value is NaN or Infinity"));
            }
            write(
                key,
                C::HashIncrByFloat {
                    key: k(),
                    field: rest[0].clone(),
                    delta,
                },
                Finish::IncrFloat,
            )
        }
        "HSTRLEN" => read(
            key,
            Q::HashStrLen {
                key: k(),
                field: rest[0].clone(),
            },
            Finish::Int,
        ),
        "HRANDFIELD" | "ZRANDMEMBER" => {
            let with_word: &[u8] = if name == "HRANDFIELD" {
                b"WITHVALUES"
            } else {
                b"WITHSCORES"
            };
            let (count, with) = match rest {
                [] => (None, false),
                [c] => (Some(symmetric_int(c)?), false),
                [c, opt] => {
                    let c = symmetric_int(c)?;
                    if !opt.eq_ignore_ascii_case(with_word) {
                        return Err(syntax());
                    }
                    if !(-i64::MAX / 2..=i64::MAX / 2).contains(&c) {
                        return Err(Reply::err("value is out of range"));
                    }
                    (Some(c), true)
                }
                _ => return Err(syntax()),
            };
            let q = if name == "HRANDFIELD" {
                Q::HashRandField {
                    key: k(),
                    count,
                    with_values: with,
                    seed,
                }
            } else {
                Q::ZRandMember {
                    key: k(),
                    count,
                    with_scores: with,
                    seed,
                }
            };
            read(
                key,
                q,
                match count {
                    None => Finish::Bulk,
                    Some(_) if with => Finish::Pairs {
                        scored: name == "ZRANDMEMBER",
                    },
                    Some(_) => Finish::Array,
                },
            )
        }
        "ZADD" => prepare_zadd(key, rest),
        "ZINCRBY" => write(
            key,
            C::ZAdd {
                key: k(),
                condition: ZAddCondition::Always,
                compare: ZAddCompare::None,
                changed: false,
                incr: true,
                pairs: vec![(score(&rest[0])?, rest[1].clone())],
            },
            Finish::Double,
        ),
        "ZREM" => {
            too_many(rest.len())?;
            write(
                key,
                C::ZRem {
                    key: k(),
                    members: rest.to_vec(),
                },
                Finish::Int,
            )
        }
        "ZSCORE" => read(
            key,
            Q::ZScore {
                key: k(),
                member: rest[0].clone(),
            },
            Finish::Double,
        ),
        "ZCARD" => read(key, Q::ZCard { key: k() }, Finish::Int),
        "ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE" | "ZREVRANGEBYSCORE" | "ZRANGEBYLEX"
        | "ZREVRANGEBYLEX" => prepare_zrange(name, key, rest),
        "ZLEXCOUNT" => read(
            key,
            Q::ZLexCount {
                key: k(),
                min: lex_bound(&rest[0])?,
                max: lex_bound(&rest[1])?,
            },
            Finish::Int,
        ),
        "ZREMRANGEBYLEX" => write(
            key,
            C::ZRemRangeByLex {
                key: k(),
                min: lex_bound(&rest[0])?,
                max: lex_bound(&rest[1])?,
            },
            Finish::Int,
        ),
        "ZCOUNT" | "ZREMRANGEBYSCORE" => {
            let (min, min_exclusive) = score_bound(&rest[0])?;
            let (max, max_exclusive) = score_bound(&rest[1])?;
            if name == "ZCOUNT" {
                read(
                    key,
                    Q::ZCount {
                        key: k(),
                        min,
                        min_exclusive,
                        max,
                        max_exclusive,
                    },
                    Finish::Int,
                )
            } else {
                write(
                    key,
                    C::ZRemRangeByScore {
                        key: k(),
                        min,
                        min_exclusive,
                        max,
                        max_exclusive,
                    },
                    Finish::Int,
                )
            }
        }
        "ZREMRANGEBYRANK" => write(
            key,
            C::ZRemRangeByRank {
                key: k(),
                start: int(&rest[0])?,
                stop: int(&rest[1])?,
            },
            Finish::Int,
        ),
        "ZMSCORE" => {
            too_many(rest.len())?;
            read(
                key,
                Q::ZMScore {
                    key: k(),
                    members: rest.to_vec(),
                },
                Finish::Doubles,
            )
        }
        "ZRANK" | "ZREVRANK" => read(
            key,
            Q::ZRank {
                key: k(),
                member: rest[0].clone(),
                rev: name == "ZREVRANK",
            },
            Finish::IntOrNil,
        ),
        "XADD" => prepare_xadd(key, rest, now_ms),
        "XTRIM" => {
            let args = trim_args(rest, None)?;
            let trim = args.trim.ok_or_else(syntax)?;
            write(key, C::XTrim { key: k(), trim }, Finish::Int)
        }
        "XDEL" => {
            too_many(rest.len())?;
            let mut ids = Vec::with_capacity(rest.len());
            for a in rest {
                match strict_id(a) {
                    Ok(id) => ids.push(id),
                    Err(_) => return read(key, Q::Type { key: k() }, Finish::XDelBadId),
                }
            }
            write(key, C::XDel { key: k(), ids }, Finish::Int)
        }
        "XSETID" => {
            let last = strict_id(&rest[0])?;
            let mut entries_added = None;
            let mut i = 1;
            while i < rest.len() {
                let more = rest.len() - 1 - i;
                let opt = rest[i].to_ascii_uppercase();
                if opt == b"ENTRIESADDED" && more > 0 {
                    let n = int(&rest[i + 1])?;
                    if n < 0 {
                        return Err(Reply::err("entries_added must be positive"));
                    }
                    entries_added = Some(n as u64);
                } else if opt == b"MAXDELETEDID" && more > 0 {
                    // Checked, not kept: a stream here has no max deleted id.
                    if last < strict_id(&rest[i + 1])? {
                        return Err(Reply::err(
                            "The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
                        ));
                    }
                } else {
                    return Err(syntax());
                }
                i += 2;
            }
            write(
                key,
                C::XSetId {
                    key: k(),
                    last,
                    entries_added,
                },
                Finish::Ok,
            )
        }
        "XLEN" => read(key, Q::StreamLen { key: k() }, Finish::Int),
        "XRANGE" | "XREVRANGE" => {
            let rev = name == "XREVRANGE";
            let (first, second) = (&rest[0], &rest[1]);
            let (start, end) = if rev {
                (second, first)
            } else {
                (first, second)
            };
            let count = match &rest[2..] {
                [] => None,
                [opt, n] if opt.eq_ignore_ascii_case(b"COUNT") => Some(int(n)?.max(0) as u64),
                _ => return Err(syntax()),
            };
            // An exclusive bound that cannot step (past the last id, before
            // the first) is an error, as in Redis.
            let start = range_bound(start, true)?
                .ok_or_else(|| Reply::err("invalid start ID for the interval"))?;
            let end = range_bound(end, false)?
                .ok_or_else(|| Reply::err("invalid end ID for the interval"))?;
            if count == Some(0) {
                return read(key, Q::Type { key: k() }, Finish::NoRecords);
            }
            read(
                key,
                Q::StreamRange {
                    key: k(),
                    start,
                    end,
                    count,
                    rev,
                },
                Finish::Records,
            )
        }
        _ => Err(Reply::err(format!("unknown command '{name}'"))),
    }
}

/// What a `ZRANGE`-like command ranges over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeBy {
    Rank,
    Score,
    Lex,
}

/// A bound of a lex range: `-`, `+`, `[member`, `(member`.
fn lex_bound(b: &Bytes) -> Result<Bytes, Reply> {
    match b.split_first() {
        Some((b'-' | b'+', [])) | Some((b'[' | b'(', _)) => Ok(b.clone()),
        _ => Err(Reply::err("min or max not valid string range item")),
    }
}

/// `ZRANGE`, `ZREVRANGE`, `ZRANGEBYSCORE`, `ZREVRANGEBYSCORE`,
/// `ZRANGEBYLEX`, `ZREVRANGEBYLEX`, as Redis' `zrangeGenericCommand`:
/// options first (syntax errors, LIMIT's numbers), then their conflicts,
/// then the range itself.
fn prepare_zrange(name: &str, key: &Bytes, rest: &[Bytes]) -> Result<Planned, Reply> {
    let generic = name == "ZRANGE";
    let mut rev = (!generic).then_some(name.starts_with("ZREV"));
    let mut by = match name {
        "ZRANGE" => None,
        "ZREVRANGE" => Some(RangeBy::Rank),
        _ if name.ends_with("BYSCORE") => Some(RangeBy::Score),
        _ => Some(RangeBy::Lex),
    };
    let mut with_scores = false;
    // LIMIT offset count; count -1 is Redis' "no LIMIT".
    let mut limit: (i64, i64) = (0, -1);
    let mut i = 2;
    while i < rest.len() {
        let left = rest.len() - i - 1;
        match rest[i].to_ascii_uppercase().as_slice() {
            b"WITHSCORES" => with_scores = true,
            b"LIMIT" if left >= 2 => {
                limit = (int(&rest[i + 1])?, int(&rest[i + 2])?);
                i += 2;
            }
            b"REV" if rev.is_none() => rev = Some(true),
            b"BYSCORE" if by.is_none() => by = Some(RangeBy::Score),
            b"BYLEX" if by.is_none() => by = Some(RangeBy::Lex),
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let rev = rev.unwrap_or(false);
    let by = by.unwrap_or(RangeBy::Rank);
    if limit.1 != -1 && by == RangeBy::Rank {
        return Err(Reply::err(
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by == RangeBy::Lex {
        return Err(Reply::err(
            "syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    if by == RangeBy::Rank {
        return read(
            key,
            Q::ZRange {
                key: key.clone(),
                start: int(&rest[0])?,
                stop: int(&rest[1])?,
                rev,
                with_scores,
            },
            scored(with_scores),
        );
    }
    // A reversed range is written end first.
    let (lo, hi) = if rev {
        (&rest[1], &rest[0])
    } else {
        (&rest[0], &rest[1])
    };
    // A negative offset answers nothing (after the type check), a
    // negative count everything, as in Redis.
    let offset = u64::try_from(limit.0).unwrap_or(u64::MAX);
    let count = u64::try_from(limit.1).ok();
    if by == RangeBy::Lex {
        return read(
            key,
            Q::ZRangeByLex {
                key: key.clone(),
                min: lex_bound(lo)?,
                max: lex_bound(hi)?,
                rev,
                offset,
                count,
            },
            Finish::Array,
        );
    }
    let (min, min_exclusive) = score_bound(lo)?;
    let (max, max_exclusive) = score_bound(hi)?;
    read(
        key,
        Q::ZRangeByScore {
            key: key.clone(),
            min,
            min_exclusive,
            max,
            max_exclusive,
            rev,
            with_scores,
            offset,
            count,
        },
        scored(with_scores),
    )
}

/// `ZUNION`, `ZINTER`, `ZDIFF`, their STORE forms and `ZINTERCARD`, as
/// Redis' `zunionInterDiffGenericCommand` reads them: `[dst] numkeys key
/// ... [WEIGHTS w ...] [AGGREGATE SUM|MIN|MAX] [WITHSCORES] [LIMIT n]`,
/// each option only where Redis takes it (`args` after the name).
fn prepare_zcombine(name: &str, args: &[Bytes]) -> Result<Planned, Reply> {
    let store = name.ends_with("STORE");
    let (dst, rest) = if store {
        (Some(&args[0]), &args[1..])
    } else {
        (None, args)
    };
    let numkeys = int(&rest[0])?;
    if numkeys < 1 {
        return Err(Reply::err(format!(
            "at least 1 input key is needed for '{}' command",
            name.to_ascii_lowercase()
        )));
    }
    if numkeys > rest.len() as i64 - 1 {
        return Err(syntax());
    }
    let (keys, options) = rest[1..].split_at(numkeys as usize);
    too_many(keys.len())?;
    let diff = name.starts_with("ZDIFF");
    let card = name == "ZINTERCARD";
    let mut weights = Vec::new();
    let mut aggregate = 0;
    let mut with_scores = false;
    let mut limit = 0;
    let mut i = 0;
    while i < options.len() {
        let left = options.len() - i - 1;
        match options[i].to_ascii_uppercase().as_slice() {
            b"WEIGHTS" if !diff && !card && left >= keys.len() => {
                weights = options[i + 1..=i + keys.len()]
                    .iter()
                    .map(|w| score(w).map_err(|_| Reply::err("weight value is not a float")))
                    .collect::<Result<_, _>>()?;
                i += keys.len();
            }
            b"AGGREGATE" if !diff && !card && left >= 1 => {
                aggregate = match options[i + 1].to_ascii_uppercase().as_slice() {
                    b"SUM" => 0,
                    b"MIN" => 1,
                    b"MAX" => 2,
                    _ => return Err(syntax()),
                };
                i += 1;
            }
            b"WITHSCORES" if !store && !card => with_scores = true,
            b"LIMIT" if card && left >= 1 => {
                limit = non_negative(&options[i + 1], "LIMIT can't be negative")?;
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let key = keys[0].clone();
    let others = keys[1..].to_vec();
    let plan = match (name, dst) {
        (_, Some(dst)) => {
            let sources = keys.to_vec();
            let c = match name {
                "ZUNIONSTORE" => C::ZUnionStore {
                    key: dst.clone(),
                    sources,
                    weights,
                    aggregate,
                },
                "ZINTERSTORE" => C::ZInterStore {
                    key: dst.clone(),
                    sources,
                    weights,
                    aggregate,
                },
                _ => C::ZDiffStore {
                    key: dst.clone(),
                    sources,
                },
            };
            return with_others(write(dst, c, Finish::Int), keys);
        }
        ("ZINTERCARD", None) => read(
            &key,
            Q::ZInterCard {
                key: key.clone(),
                others,
                limit,
            },
            Finish::Int,
        ),
        ("ZUNION", None) => read(
            &key,
            Q::ZUnion {
                key: key.clone(),
                others,
                weights,
                aggregate,
                with_scores,
            },
            scored(with_scores),
        ),
        ("ZINTER", None) => read(
            &key,
            Q::ZInter {
                key: key.clone(),
                others,
                weights,
                aggregate,
                with_scores,
            },
            scored(with_scores),
        ),
        _ => read(
            &key,
            Q::ZDiff {
                key: key.clone(),
                others,
                with_scores,
            },
            scored(with_scores),
        ),
    };
    with_others(plan, &keys[1..])
}

/// `HSCAN`/`SSCAN`/`ZSCAN key cursor [MATCH p] [COUNT n] [NOVALUES]`.
///
/// One call answers the whole collection and the cursor 0, as Redis does
/// for its small encodings: every guarantee of SCAN holds (each element
/// present throughout is returned, once), COUNT is the hint Redis says it
/// is, and a collection whose reply would pass the result bounds answers
/// `-ERR result too large`. A non-zero cursor (never handed out here)
/// starts over.
fn prepare_scan(name: &str, key: &Bytes, rest: &[Bytes]) -> Result<Planned, Reply> {
    let valid_cursor = std::str::from_utf8(&rest[0])
        .ok()
        .is_some_and(|c| c.parse::<u64>().is_ok());
    if !valid_cursor {
        return Err(Reply::err("invalid cursor"));
    }
    let mut pattern = None;
    let mut only_firsts = false;
    let mut i = 1;
    while i < rest.len() {
        let left = rest.len() - i - 1;
        match rest[i].to_ascii_uppercase().as_slice() {
            b"COUNT" if left >= 1 => {
                if int(&rest[i + 1])? < 1 {
                    return Err(syntax());
                }
                i += 1;
            }
            b"MATCH" if left >= 1 => {
                // `*` matches everything: no filter.
                pattern = (&rest[i + 1][..] != b"*").then(|| rest[i + 1].clone());
                i += 1;
            }
            b"NOVALUES" if name == "HSCAN" => only_firsts = true,
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let k = key.clone();
    let (q, pairs) = match name {
        "HSCAN" => (Q::HashGetAll { key: k }, true),
        "SSCAN" => (Q::SetMembers { key: k }, false),
        _ => (
            Q::ZRange {
                key: k,
                start: 0,
                stop: -1,
                rev: false,
                with_scores: true,
            },
            true,
        ),
    };
    read(
        key,
        q,
        Finish::Scan {
            pattern,
            pairs,
            only_firsts,
        },
    )
}

/// `LPOS key element [RANK r] [COUNT n] [MAXLEN m]`.
fn prepare_lpos(key: &Bytes, rest: &[Bytes]) -> Result<Planned, Reply> {
    let mut rank = 1;
    let mut count = None;
    let mut maxlen = 0;
    let mut i = 1;
    while i < rest.len() {
        let Some(value) = rest.get(i + 1) else {
            return Err(syntax());
        };
        match rest[i].to_ascii_uppercase().as_slice() {
            b"RANK" => {
                rank = symmetric_int(value)?;
                if rank == 0 {
                    return Err(Reply::err(
                        "RANK can't be zero: use 1 to start from the first match, 2 from the \
                         second ... or use negative to start from the end of the list",
                    ));
                }
            }
            b"COUNT" => count = Some(non_negative(value, "COUNT can't be negative")?),
            b"MAXLEN" => maxlen = non_negative(value, "MAXLEN can't be negative")?,
            _ => return Err(syntax()),
        }
        i += 2;
    }
    read(
        key,
        Q::ListPos {
            key: key.clone(),
            element: rest[0].clone(),
            rank,
            count,
            maxlen,
        },
        if count.is_some() {
            Finish::IntArray
        } else {
            Finish::IntOrNil
        },
    )
}

/// `SINTERCARD numkeys key [key ...] [LIMIT limit]` (`args` after the
/// name).
/// `numkeys key... LEFT|RIGHT [COUNT n]` (`MIN|MAX` for sorted sets) of
/// LMPOP / ZMPOP and their blocking forms: the keys, the end (head /
/// highest), the count (1 if not given). Redis' errors.
pub(super) fn parse_mpop(zset: bool, args: &[Bytes]) -> Result<(Vec<Bytes>, bool, u64), Reply> {
    let numkeys = args
        .first()
        .and_then(|n| int(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| Reply::err("numkeys should be greater than 0"))?;
    let rest = &args[1..];
    if numkeys >= rest.len() as i64 {
        return Err(syntax());
    }
    let (keys, options) = rest.split_at(numkeys as usize);
    too_many(keys.len())?;
    let end = match (zset, options[0].to_ascii_uppercase().as_slice()) {
        (false, b"LEFT") | (true, b"MAX") => true,
        (false, b"RIGHT") | (true, b"MIN") => false,
        _ => return Err(syntax()),
    };
    let count = match &options[1..] {
        [] => 1,
        [word, n] if word.eq_ignore_ascii_case(b"COUNT") => int(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Reply::err("count should be greater than 0"))?
            as u64,
        _ => return Err(syntax()),
    };
    Ok((keys.to_vec(), end, count))
}

/// The reply of LMPOP / ZMPOP (and BLMPOP / BZMPOP) for a `MultiPop`'s
/// `[key, popped...]`: `[key, [elements]]`, for sorted sets `[key,
/// [[member, score], ...]]` (scores are doubles in RESP3); nothing popped
/// is the nil array.
pub(super) fn mpop_reply(zset: bool, items: Vec<Bytes>) -> Reply {
    let mut it = items.into_iter();
    let Some(key) = it.next() else {
        return Reply::NilArray;
    };
    let popped: Vec<Bytes> = it.collect();
    let elements = if zset {
        pairs(popped, true)
            .into_iter()
            .map(|(m, s)| Reply::Array(vec![m, s]))
            .collect()
    } else {
        popped.into_iter().map(Reply::Bulk).collect()
    };
    Reply::Array(vec![Reply::Bulk(key), Reply::Array(elements)])
}

fn prepare_sintercard(args: &[Bytes]) -> Result<Planned, Reply> {
    let numkeys = int(&args[0])
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Reply::err("numkeys should be greater than 0"))?;
    let keys_and_options = &args[1..];
    if numkeys > keys_and_options.len() as i64 {
        return Err(Reply::err(
            "Number of keys can't be greater than number of args",
        ));
    }
    let (keys, options) = keys_and_options.split_at(numkeys as usize);
    too_many(keys.len())?;
    let mut limit = 0;
    let mut i = 0;
    while i < options.len() {
        match options.get(i + 1) {
            Some(n) if options[i].eq_ignore_ascii_case(b"LIMIT") => {
                limit = non_negative(n, "LIMIT can't be negative")?;
            }
            _ => return Err(syntax()),
        }
        i += 2;
    }
    let key = &keys[0];
    with_others(
        read(
            key,
            Q::SetInterCard {
                key: key.clone(),
                others: keys[1..].to_vec(),
                limit,
            },
            Finish::Int,
        ),
        &keys[1..],
    )
}

fn prepare_zadd(key: &Bytes, rest: &[Bytes]) -> Result<Planned, Reply> {
    let mut condition = ZAddCondition::Always;
    let mut compare = ZAddCompare::None;
    let (mut nx, mut xx, mut changed, mut incr) = (false, false, false, false);
    let mut i = 0;
    while i < rest.len() {
        match rest[i].to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => compare = ZAddCompare::Greater,
            b"LT" => {
                if compare == ZAddCompare::Greater {
                    return Err(Reply::err(
                        "GT, LT, and/or NX options at the same time are not compatible",
                    ));
                }
                compare = ZAddCompare::Less;
            }
            b"CH" => changed = true,
            b"INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs_args = &rest[i..];
    if pairs_args.is_empty() || pairs_args.len() % 2 != 0 {
        return Err(syntax());
    }
    if nx && xx {
        return Err(Reply::err(
            "XX and NX options at the same time are not compatible",
        ));
    }
    if nx && compare != ZAddCompare::None {
        return Err(Reply::err(
            "GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if nx {
        condition = ZAddCondition::IfAbsent;
    } else if xx {
        condition = ZAddCondition::IfPresent;
    }
    if incr && pairs_args.len() != 2 {
        return Err(Reply::err(
            "INCR option supports a single increment-element pair",
        ));
    }
    too_many(pairs_args.len() / 2)?;
    let mut pairs = Vec::with_capacity(pairs_args.len() / 2);
    for p in pairs_args.chunks(2) {
        pairs.push((score(&p[0])?, p[1].clone()));
    }
    write(
        key,
        C::ZAdd {
            key: key.clone(),
            condition,
            compare,
            changed,
            incr,
            pairs,
        },
        if incr { Finish::Double } else { Finish::Int },
    )
}

/// A strict stream id (no `-` / `+`): `<ms>[-<seq>]`, the sequence 0
/// if absent (`streamParseStrictIDOrReply`).
fn strict_id(b: &[u8]) -> Result<(u64, u64), Reply> {
    let (ms, seq) = stream_id(b)?;
    Ok((ms, seq.unwrap_or(0)))
}

/// The options of XADD and XTRIM, as Redis' `streamParseAddOrTrimArgsOrReply`
/// reads them.
struct TrimArgs {
    trim: Option<StreamTrim>,
    no_mkstream: bool,
    /// XADD: the id, if there is one (read before the options are
    /// checked, as Redis does), and its index in `rest`.
    id: Option<XAddId>,
    id_at: usize,
}

/// Reads `MAXLEN|MINID [=|~] threshold`, `LIMIT n` (and for XADD
/// `NOMKSTREAM`) from `rest` (XADD, `xadd_now_ms` its clock: up to its
/// id), with Redis' errors in Redis' order.
fn trim_args(rest: &[Bytes], xadd_now_ms: Option<u64>) -> Result<TrimArgs, Reply> {
    let xadd = xadd_now_ms.is_some();
    let mut id = None;
    let incompatible =
        || Reply::err("syntax error, MAXLEN and MINID options at the same time are not compatible");
    let mut threshold = None;
    let mut approx = false;
    let mut limit: Option<u64> = None;
    let mut no_mkstream = false;
    let mut i = 0;
    while i < rest.len() {
        let more = rest.len() - 1 - i;
        let opt = rest[i].to_ascii_uppercase();
        if let (Some(now_ms), b"*") = (xadd_now_ms, &opt[..]) {
            id = Some(XAddId::Auto { now_ms });
            break;
        } else if (opt == b"MAXLEN" || opt == b"MINID") && more > 0 {
            if threshold.is_some() {
                return Err(incompatible());
            }
            approx = false;
            let next = &rest[i + 1][..];
            if more >= 2 && next == b"~" {
                approx = true;
                i += 1;
            } else if more >= 2 && next == b"=" {
                i += 1;
            }
            let arg = &rest[i + 1];
            threshold = Some(if opt == b"MAXLEN" {
                let n = int(arg)?;
                if n < 0 {
                    return Err(Reply::err("The MAXLEN argument must be >= 0."));
                }
                TrimThreshold::MaxLen(n as u64)
            } else {
                let (ms, seq) = strict_id(arg)?;
                TrimThreshold::MinId { ms, seq }
            });
            i += 1;
        } else if opt == b"LIMIT" && more > 0 {
            let n = int(&rest[i + 1])?;
            if n < 0 {
                return Err(Reply::err("The LIMIT argument must be >= 0."));
            }
            limit = Some(n as u64);
            i += 1;
        } else if xadd && opt == b"NOMKSTREAM" {
            no_mkstream = true;
        } else if let Some(now_ms) = xadd_now_ms {
            id = Some(xadd_id(&rest[i], now_ms)?);
            break;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    if limit.is_some_and(|n| n != 0) && threshold.is_none() {
        return Err(Reply::err(
            "syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && threshold.is_none() {
        return Err(Reply::err(
            "syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    if limit.is_some() && !approx {
        return Err(Reply::err(
            "syntax error, LIMIT cannot be used without the special ~ option",
        ));
    }
    // `~` trims entry by entry here (see `StreamTrim`); without LIMIT it
    // has no cap (Redis': 100 × stream-node-max-entries).
    Ok(TrimArgs {
        trim: threshold.map(|threshold| StreamTrim {
            threshold,
            limit: limit.unwrap_or(0),
        }),
        no_mkstream,
        id,
        id_at: i,
    })
}

/// The id of an XADD: `*`, `<ms>-*` or a strict id.
fn xadd_id(id_arg: &[u8], now_ms: u64) -> Result<XAddId, Reply> {
    Ok(if id_arg == b"*" {
        XAddId::Auto { now_ms }
    } else if let Some(ms) = id_arg.strip_suffix(b"-*") {
        match stream_id(ms)? {
            (ms, None) => XAddId::AutoSeq { ms },
            _ => return Err(invalid_id()),
        }
    } else {
        let (ms, seq) = stream_id(id_arg)?;
        XAddId::Explicit {
            ms,
            seq: seq.unwrap_or(0),
        }
    })
}

fn prepare_xadd(key: &Bytes, rest: &[Bytes], now_ms: u64) -> Result<Planned, Reply> {
    let args = trim_args(rest, Some(now_ms))?;
    let i = args.id_at;
    let Some(id) = args.id else {
        return Err(arity("XADD"));
    };
    let fields = &rest[i + 1..];
    if fields.is_empty() || fields.len() % 2 != 0 {
        return Err(arity("XADD"));
    }
    if id == (XAddId::Explicit { ms: 0, seq: 0 }) {
        // Before the key is looked up (NOMKSTREAM on no key too).
        return Err(Reply::err(
            "The ID specified in XADD must be greater than 0-0",
        ));
    }
    too_many(fields.len())?;
    write(
        key,
        C::XAdd {
            key: key.clone(),
            id,
            trim: args.trim,
            no_mkstream: args.no_mkstream,
            fields: fields.to_vec(),
        },
        Finish::Bulk,
    )
}

/// The reply of a typed command from its (non-error) result.
/// The reply shape of a range: pairs with scores, or members.
fn scored(with_scores: bool) -> Finish {
    if with_scores {
        Finish::Pairs { scored: true }
    } else {
        Finish::Array
    }
}

/// Flat `[a, b, a, b, ...]` as pairs, each `b` a double if `scored`.
fn pairs(items: Vec<Bytes>, scored: bool) -> Vec<(Reply, Reply)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        let b = if scored {
            Reply::Double(b)
        } else {
            Reply::Bulk(b)
        };
        out.push((Reply::Bulk(a), b));
    }
    out
}

pub fn finish(f: Finish, r: Option<KvResult>) -> Reply {
    let Some(r) = r else {
        return Reply::err("internal error: missing result");
    };
    let bulks = |items: Vec<Bytes>| Reply::Array(items.into_iter().map(Reply::Bulk).collect());
    match (f, r) {
        (Finish::Int, KvResult::Len(n) | KvResult::Count(n)) => Reply::Int(n as i64),
        (Finish::Int | Finish::IntOrNil, KvResult::Int(n)) => Reply::Int(n),
        (Finish::IntOrNil | Finish::Bulk, KvResult::Value(v)) => Reply::opt(v),
        (Finish::Ok, _) => Reply::Ok,
        (Finish::Array | Finish::ArrayOrNilArray, KvResult::Items(items)) => bulks(items),
        (Finish::Array, KvResult::Values(values)) => {
            Reply::Array(values.into_iter().map(Reply::opt).collect())
        }
        (Finish::ArrayOrNilArray, KvResult::Value(None)) => Reply::NilArray,
        (Finish::Records, KvResult::Records(records)) => Reply::Array(
            records
                .into_iter()
                .map(|(id, fields)| Reply::Array(vec![Reply::Bulk(id), bulks(fields)]))
                .collect(),
        ),
        (Finish::NoRecords, KvResult::Value(t)) => match t.as_deref() {
            None => Reply::Array(Vec::new()),
            Some(b"stream") => Reply::NilArray,
            Some(_) => super::command::kv_error_reply(flotilla_rsm::KvError::WrongType),
        },
        (Finish::XDelBadId, KvResult::Value(t)) => match t.as_deref() {
            None => Reply::Int(0),
            Some(b"stream") => invalid_id(),
            Some(_) => super::command::kv_error_reply(flotilla_rsm::KvError::WrongType),
        },
        (Finish::IntArray, KvResult::Items(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                match std::str::from_utf8(&i).ok().and_then(|s| s.parse().ok()) {
                    Some(n) => out.push(Reply::Int(n)),
                    None => return Reply::err("internal error: not an integer"),
                }
            }
            Reply::Array(out)
        }
        (
            Finish::Scan {
                pattern,
                pairs,
                only_firsts,
            },
            KvResult::Items(items),
        ) => {
            let stride = if pairs { 2 } else { 1 };
            let keep = if only_firsts { 1 } else { stride };
            let mut out = Vec::with_capacity(items.len());
            for chunk in items.chunks(stride) {
                if pattern.as_ref().is_none_or(|p| glob::matches(p, &chunk[0])) {
                    out.extend(chunk.iter().take(keep).cloned().map(Reply::Bulk));
                }
            }
            Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"0")),
                Reply::Array(out),
            ])
        }
        (Finish::IncrFloat, KvResult::Value(v)) => Reply::opt(v),
        (Finish::Map, KvResult::Items(items)) => Reply::Map(pairs(items, false)),
        (Finish::Set, KvResult::Items(items)) => {
            Reply::Set(items.into_iter().map(Reply::Bulk).collect())
        }
        (Finish::Double, KvResult::Value(v)) => v.map_or(Reply::Nil, Reply::Double),
        (Finish::Doubles, KvResult::Values(values)) => Reply::Array(
            values
                .into_iter()
                .map(|v| v.map_or(Reply::Nil, Reply::Double))
                .collect(),
        ),
        (Finish::Pairs { scored }, KvResult::Items(items)) => Reply::Pairs(pairs(items, scored)),
        (Finish::MultiPop { zset }, KvResult::Items(items)) => mpop_reply(zset, items),
        (Finish::Popped { counted: true }, KvResult::Items(items)) => {
            Reply::Pairs(pairs(items, true))
        }
        (Finish::Popped { counted: false }, KvResult::Items(items)) => Reply::Array(
            pairs(items, true)
                .into_iter()
                .flat_map(|(m, s)| [m, s])
                .collect(),
        ),
        (f, r) => {
            tracing::error!(?f, result = ?r, "unexpected KV result kind for a typed command");
            Reply::err("internal error: unexpected result kind")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn plan(line: &str) -> Result<Planned, Reply> {
        let words: Vec<&str> = line.split_whitespace().collect();
        prepare(&words[0].to_ascii_uppercase(), &args(&words[1..]), 1234, 99)
            .expect("a typed command")
    }

    fn err(line: &str) -> String {
        match plan(line) {
            Err(Reply::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn cmd(line: &str) -> C {
        match plan(line) {
            Ok(Planned {
                op: Op::Write(KvCommand::Typed(c)),
                ..
            }) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn query(line: &str) -> Q {
        match plan(line) {
            Ok(Planned {
                op: Op::Read(KvQuery::Typed(q)),
                ..
            }) => q,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn not_ours() {
        assert!(prepare("GET", &args(&["k"]), 0, 0).is_none());
        assert!(prepare("BLPOP", &args(&["k", "0"]), 0, 0).is_none());
    }

    #[test]
    fn arity_errors_name_the_command() {
        for (line, name) in [
            ("lpush k", "lpush"),
            ("LRANGE k 0", "lrange"),
            ("hset k f", "hset"),
            ("hset k f v g", "hset"),
            ("zadd k 1", "zadd"),
            ("xadd s *", "xadd"),
            ("xadd s * f", "xadd"),
            ("llen", "llen"),
            ("lpop k 1 2", "lpop"),
            ("smembers a b", "smembers"),
        ] {
            assert_eq!(
                err(line),
                format!("ERR wrong number of arguments for '{name}' command"),
                "{line}"
            );
        }
    }

    #[test]
    fn multi_key_pops_parse_like_redis() {
        match plan("lmpop 2 a b right count 3") {
            Ok(Planned {
                op:
                    Op::Write(KvCommand::Typed(C::MultiPop {
                        keys,
                        zset,
                        end,
                        count,
                    })),
                others,
                ..
            }) => {
                assert_eq!(
                    (keys, zset, end, count),
                    (args(&["a", "b"]), false, false, 3)
                );
                assert_eq!(others, args(&["b"]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan("zmpop 1 z MAX").map(|p| p.op),
            Ok(Op::Write(KvCommand::Typed(C::MultiPop {
                zset: true,
                end: true,
                count: 1,
                ..
            })))
        ));
        assert_eq!(
            err("lmpop 0 a left"),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(
            err("lmpop x a left"),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(err("lmpop 2 a left"), "ERR syntax error");
        assert_eq!(err("lmpop 1 a up"), "ERR syntax error");
        assert_eq!(
            err("lmpop 1 a left count 0"),
            "ERR count should be greater than 0"
        );
        assert_eq!(err("lmpop 1 a left count"), "ERR syntax error");
        assert_eq!(err("lmpop 1 a left count 1 count 2"), "ERR syntax error");
        assert_eq!(err("zmpop 1 z left"), "ERR syntax error");
        assert_eq!(mpop_reply(false, Vec::new()), Reply::NilArray);
        assert_eq!(
            mpop_reply(false, args(&["k", "a", "b"])),
            Reply::Array(vec![
                Reply::text("k"),
                Reply::Array(vec![Reply::text("a"), Reply::text("b")])
            ])
        );
    }

    #[test]
    fn the_benchmark_commands_parse() {
        // What redis-benchmark's default suite sends.
        assert_eq!(
            cmd("LPUSH mylist xxx"),
            C::ListPush {
                key: b("mylist"),
                left: true,
                only_existing: false,
                values: vec![b("xxx")]
            }
        );
        assert!(matches!(
            cmd("RPOP mylist"),
            C::ListPop {
                left: false,
                count: None,
                ..
            }
        ));
        assert_eq!(
            cmd("SADD myset element:__rand_int__"),
            C::SetAdd {
                key: b("myset"),
                members: vec![b("element:__rand_int__")]
            }
        );
        assert_eq!(
            cmd("SPOP myset"),
            C::SetPop {
                key: b("myset"),
                count: None,
                seed: 99
            }
        );
        assert_eq!(
            cmd("HSET myhash element:__rand_int__ xxx"),
            C::HashSet {
                key: b("myhash"),
                only_new: false,
                pairs: vec![(b("element:__rand_int__"), b("xxx"))]
            }
        );
        assert_eq!(
            cmd("ZADD myzset 0 element:__rand_int__"),
            C::ZAdd {
                key: b("myzset"),
                condition: ZAddCondition::Always,
                compare: ZAddCompare::None,
                changed: false,
                incr: false,
                pairs: vec![(0.0, b("element:__rand_int__"))]
            }
        );
        assert_eq!(
            cmd("ZPOPMIN myzset"),
            C::ZPop {
                key: b("myzset"),
                max: false,
                count: None
            }
        );
        assert_eq!(
            query("LRANGE mylist 0 599"),
            Q::ListRange {
                key: b("mylist"),
                start: 0,
                stop: 599
            }
        );
        assert_eq!(
            cmd("XADD mystream * myfield xxx"),
            C::XAdd {
                key: b("mystream"),
                id: XAddId::Auto { now_ms: 1234 },
                trim: None,
                no_mkstream: false,
                fields: vec![b("myfield"), b("xxx")]
            }
        );
    }

    #[test]
    fn options_and_numbers() {
        assert_eq!(
            err("lrange k a 1"),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err("lrange k 01 1"),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err("lpop k -1"),
            "ERR value is out of range, must be positive"
        );
        assert_eq!(
            err("zpopmin k -1"),
            "ERR value is out of range, must be positive"
        );
        assert!(matches!(cmd("lpop k 0"), C::ListPop { count: Some(0), .. }));
        assert_eq!(err("zadd k x m"), "ERR value is not a valid float");
        assert_eq!(err("zadd k nan m"), "ERR value is not a valid float");
        assert_eq!(err("zadd k 1 m 2"), "ERR syntax error");
        assert_eq!(
            err("zadd k nx xx 1 m"),
            "ERR XX and NX options at the same time are not compatible"
        );
        assert_eq!(
            err("zadd k nx gt 1 m"),
            "ERR GT, LT, and/or NX options at the same time are not compatible"
        );
        assert_eq!(
            err("zadd k incr 1 m 2 n"),
            "ERR INCR option supports a single increment-element pair"
        );
        match cmd("zadd k XX ch Gt 1.5 a -inf b +inf c 1e3 d") {
            C::ZAdd {
                condition,
                compare,
                changed,
                pairs,
                ..
            } => {
                assert_eq!(condition, ZAddCondition::IfPresent);
                assert_eq!(compare, ZAddCompare::Greater);
                assert!(changed);
                let scores: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                assert_eq!(scores, vec![1.5, f64::NEG_INFINITY, f64::INFINITY, 1000.0]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan("zincrby k 2 m").unwrap().finish,
            Finish::Double
        ));
        assert_eq!(
            query("zrange k 0 -1 withscores"),
            Q::ZRange {
                key: b("k"),
                start: 0,
                stop: -1,
                rev: false,
                with_scores: true
            }
        );
        assert!(matches!(
            query("zrevrange k 0 1"),
            Q::ZRange {
                rev: true,
                with_scores: false,
                ..
            }
        ));
        assert_eq!(err("zrange k 0 1 foo"), "ERR syntax error");
        assert!(matches!(
            query("srandmember k -5"),
            Q::SetRandMember {
                count: Some(-5),
                ..
            }
        ));
        assert_eq!(plan("srandmember k").unwrap().finish, Finish::Bulk);
        assert_eq!(plan("srandmember k 2").unwrap().finish, Finish::Array);
        assert_eq!(plan("lpop k").unwrap().finish, Finish::Bulk);
        assert_eq!(plan("lpop k 2").unwrap().finish, Finish::ArrayOrNilArray);
        assert_eq!(plan("hmset k a 1 b 2").unwrap().finish, Finish::Ok);
        assert!(matches!(
            cmd("hsetnx k f v"),
            C::HashSet { only_new: true, .. }
        ));
    }

    #[test]
    fn score_ranges_parse_like_redis() {
        let by_score = |min: f64, min_exclusive, max: f64, max_exclusive| Q::ZRangeByScore {
            key: b("z"),
            min,
            min_exclusive,
            max,
            max_exclusive,
            rev: false,
            with_scores: false,
            offset: 0,
            count: None,
        };
        assert_eq!(
            query("zrangebyscore z -inf +inf"),
            by_score(f64::NEG_INFINITY, false, f64::INFINITY, false)
        );
        assert_eq!(
            query("zrangebyscore z (1.5 (2"),
            by_score(1.5, true, 2.0, true)
        );
        assert_eq!(
            query("ZRANGE z 1 (5 BYSCORE"),
            by_score(1.0, false, 5.0, true)
        );
        // Reversed: max first; options in any order and case.
        let rev = Q::ZRangeByScore {
            key: b("z"),
            min: 1.0,
            min_exclusive: true,
            max: 9.0,
            max_exclusive: false,
            rev: true,
            with_scores: true,
            offset: 2,
            count: Some(3),
        };
        assert_eq!(query("zrevrangebyscore z 9 (1 WITHSCORES limit 2 3"), rev);
        assert_eq!(query("zrange z 9 (1 limit 2 3 rev withscores byscore"), rev);
        // LIMIT: a negative count is everything, a negative offset nothing.
        assert!(matches!(
            query("zrangebyscore z 0 1 limit 0 -1"),
            Q::ZRangeByScore {
                offset: 0,
                count: None,
                ..
            }
        ));
        assert!(matches!(
            query("zrangebyscore z 0 1 limit -1 5"),
            Q::ZRangeByScore {
                offset: u64::MAX,
                count: Some(5),
                ..
            }
        ));
        for bad in [
            "zrangebyscore z x 1",
            "zrangebyscore z 1 (x",
            "zrangebyscore z nan 1",
            "zcount z 1 ((2",
            "zremrangebyscore z 1 (1x",
            "zrange z a b byscore",
        ] {
            assert_eq!(err(bad), "ERR min or max is not a float", "{bad}");
        }
        for bad in [
            "zrangebyscore z 0 1 rev",
            "zrangebyscore z 0 1 byscore",
            "zrangebyscore z 0 1 limit 0",
            "zrevrange z 0 1 rev",
            "zrevrange z 0 1 byscore",
            "zrange z 0 1 foo",
        ] {
            assert_eq!(err(bad), "ERR syntax error", "{bad}");
        }
        assert_eq!(
            err("zrange z 0 1 limit 0 2"),
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        );
        assert_eq!(
            err("zrangebyscore z 0 1 limit x 2"),
            "ERR value is not an integer or out of range"
        );
        // The options are checked before the range.
        assert_eq!(err("zrangebyscore z x y foo"), "ERR syntax error");
        assert!(matches!(
            query("zrange z 0 -1 rev"),
            Q::ZRange {
                rev: true,
                start: 0,
                stop: -1,
                ..
            }
        ));
        assert_eq!(
            query("zcount z (1 +inf"),
            Q::ZCount {
                key: b("z"),
                min: 1.0,
                min_exclusive: true,
                max: f64::INFINITY,
                max_exclusive: false
            }
        );
        assert_eq!(
            cmd("zremrangebyrank z 0 -2"),
            C::ZRemRangeByRank {
                key: b("z"),
                start: 0,
                stop: -2
            }
        );
        assert_eq!(
            query("zmscore z a b"),
            Q::ZMScore {
                key: b("z"),
                members: vec![b("a"), b("b")]
            }
        );
        assert_eq!(
            err("zmscore z"),
            "ERR wrong number of arguments for 'zmscore' command"
        );
    }

    #[test]
    fn lex_ranges_parse_like_redis() {
        let lex =
            |min: &str, max: &str, rev: bool, offset: u64, count: Option<u64>| Q::ZRangeByLex {
                key: b("z"),
                min: b(min),
                max: b(max),
                rev,
                offset,
                count,
            };
        assert_eq!(query("zrangebylex z - [c"), lex("-", "[c", false, 0, None));
        assert_eq!(
            query("zrevrangebylex z [c - limit 1 2"),
            lex("-", "[c", true, 1, Some(2))
        );
        assert_eq!(
            query("zrange z (g [aaa bylex rev"),
            lex("[aaa", "(g", true, 0, None)
        );
        assert_eq!(
            query("zlexcount z - +"),
            Q::ZLexCount {
                key: b("z"),
                min: b("-"),
                max: b("+")
            }
        );
        assert_eq!(
            cmd("zremrangebylex z [a (b"),
            C::ZRemRangeByLex {
                key: b("z"),
                min: b("[a"),
                max: b("(b")
            }
        );
        for bad in [
            "zrangebylex z a [c",
            "zrangebylex z - c",
            "zlexcount z -- +",
            "zremrangebylex z +x +",
            "zrange z a b bylex",
        ] {
            assert_eq!(
                err(bad),
                "ERR min or max not valid string range item",
                "{bad}"
            );
        }
        assert_eq!(
            err("zrangebylex z - + withscores"),
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX"
        );
        assert_eq!(err("zrange z - + bylex byscore"), "ERR syntax error");
        assert_eq!(err("zrangebylex z - + bylex"), "ERR syntax error");
    }

    #[test]
    fn hashes_lists_and_sets_parse_like_redis() {
        assert_eq!(
            cmd("hincrbyfloat h f 5.0e3"),
            C::HashIncrByFloat {
                key: b("h"),
                field: b("f"),
                delta: 5000.0
            }
        );
        assert_eq!(err("hincrbyfloat h f x"), "ERR value is not a valid float");
        assert_eq!(
            err("hincrbyfloat h f nan"),
            "ERR value is not a valid float"
        );
        assert_eq!(err("hincrbyfloat h f inf"), "ERR value is NaN or Infinity");
        assert_eq!(
            query("hrandfield h -5 withvalues"),
            Q::HashRandField {
                key: b("h"),
                count: Some(-5),
                with_values: true,
                seed: 99
            }
        );
        assert_eq!(plan("hrandfield h").unwrap().finish, Finish::Bulk);
        assert_eq!(
            query("zrandmember z -2 WithScores"),
            Q::ZRandMember {
                key: b("z"),
                count: Some(-2),
                with_scores: true,
                seed: 99
            }
        );
        assert_eq!(err("zrandmember z 1 withvalues"), "ERR syntax error");
        assert_eq!(err("hrandfield h 1 withscores"), "ERR syntax error");
        assert_eq!(plan("hrandfield h 1").unwrap().finish, Finish::Array);
        assert_eq!(err("hrandfield h 1 foo"), "ERR syntax error");
        assert_eq!(err("hrandfield h 1 withvalues x"), "ERR syntax error");
        assert_eq!(
            err("hrandfield h -9223372036854775808"),
            "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"
        );
        assert_eq!(
            err("hrandfield h 9223372036854775807 withvalues"),
            "ERR value is out of range"
        );
        assert_eq!(
            query("lpos l e rank -2 count 0 maxlen 7"),
            Q::ListPos {
                key: b("l"),
                element: b("e"),
                rank: -2,
                count: Some(0),
                maxlen: 7
            }
        );
        assert_eq!(plan("lpos l e").unwrap().finish, Finish::IntOrNil);
        assert_eq!(plan("lpos l e count 1").unwrap().finish, Finish::IntArray);
        assert_eq!(
            err("lpos l e rank 0"),
            "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... \
             or use negative to start from the end of the list"
        );
        assert_eq!(err("lpos l e count -1"), "ERR COUNT can't be negative");
        assert_eq!(err("lpos l e count x"), "ERR COUNT can't be negative");
        assert_eq!(err("lpos l e maxlen -1"), "ERR MAXLEN can't be negative");
        assert_eq!(err("lpos l e rank"), "ERR syntax error");
        assert_eq!(err("lpos l e foo 1"), "ERR syntax error");
        assert_eq!(
            cmd("linsert l AFTER p v"),
            C::ListInsert {
                key: b("l"),
                after: true,
                pivot: b("p"),
                value: b("v")
            }
        );
        assert_eq!(err("linsert l middle p v"), "ERR syntax error");
        assert_eq!(
            cmd("rpoplpush a b"),
            C::ListMove {
                key: b("a"),
                dst: b("b"),
                from_left: false,
                to_left: true
            }
        );
        assert_eq!(
            cmd("lmove a b left RIGHT"),
            C::ListMove {
                key: b("a"),
                dst: b("b"),
                from_left: true,
                to_left: false
            }
        );
        assert_eq!(err("lmove a b up left"), "ERR syntax error");
        assert_eq!(plan("lmove a b left left").unwrap().others, vec![b("b")]);
        assert_eq!(
            cmd("smove a b m"),
            C::SetMove {
                key: b("a"),
                dst: b("b"),
                member: b("m")
            }
        );
        assert_eq!(
            query("sinter a b c"),
            Q::SetInter {
                key: b("a"),
                others: vec![b("b"), b("c")]
            }
        );
        assert_eq!(plan("sdiff a b c").unwrap().others, vec![b("b"), b("c")]);
        assert_eq!(
            cmd("sunionstore d a b"),
            C::SetUnionStore {
                key: b("d"),
                sources: vec![b("a"), b("b")]
            }
        );
        assert_eq!(plan("sdiffstore d a").unwrap().others, vec![b("a")]);
        assert_eq!(
            query("sintercard 2 a b limit 3"),
            Q::SetInterCard {
                key: b("a"),
                others: vec![b("b")],
                limit: 3
            }
        );
        assert_eq!(plan("sintercard 2 a b").unwrap().key, b("a"));
        for (bad, want) in [
            ("sintercard 0 a", "ERR numkeys should be greater than 0"),
            ("sintercard x a", "ERR numkeys should be greater than 0"),
            (
                "sintercard 3 a b",
                "ERR Number of keys can't be greater than number of args",
            ),
            ("sintercard 1 a limit -1", "ERR LIMIT can't be negative"),
            ("sintercard 1 a limit", "ERR syntax error"),
            ("sintercard 1 a b", "ERR syntax error"),
        ] {
            assert_eq!(err(bad), want, "{bad}");
        }
        assert_eq!(
            query("smismember s a b"),
            Q::SetMIsMember {
                key: b("s"),
                members: vec![b("a"), b("b")]
            }
        );
        assert_eq!(plan("smismember s a").unwrap().finish, Finish::IntArray);
        assert_eq!(
            query("hstrlen h f"),
            Q::HashStrLen {
                key: b("h"),
                field: b("f")
            }
        );
        for (line, name) in [
            ("rpoplpush a", "rpoplpush"),
            ("lmove a b left", "lmove"),
            ("smove a b", "smove"),
            ("sinter", "sinter"),
            ("sinterstore d", "sinterstore"),
            ("sintercard 1", "sintercard"),
            ("linsert l before p", "linsert"),
            ("lpos l", "lpos"),
            ("hstrlen h", "hstrlen"),
            ("zcount z 1", "zcount"),
        ] {
            assert_eq!(
                err(line),
                format!("ERR wrong number of arguments for '{name}' command"),
                "{line}"
            );
        }
    }

    #[test]
    fn keys_of_several_groups_are_refused() {
        let group_of = |k: &[u8]| k.first().copied();
        let same = plan("smove {a}x {a}y m").unwrap();
        let p = plan("smove ax by m").unwrap();
        // A toy mapping: the group is the key's first byte.
        assert_eq!(group(&same, group_of), Ok(Some(b'{')));
        assert_eq!(
            group(&p, group_of),
            Err(Reply::Error(
                "CROSSSLOT Keys in request don't hash to the same slot".into()
            ))
        );
        assert_eq!(
            group(&plan("sunion a1 a2 a3").unwrap(), group_of),
            Ok(Some(b'a'))
        );
        assert!(group(&plan("sinterstore d a").unwrap(), group_of).is_err());
        assert!(group(&plan("sintercard 2 a b").unwrap(), group_of).is_err());
        assert!(group(&plan("llen anything").unwrap(), group_of).is_ok());
    }

    #[test]
    fn sorted_set_algebra_parses_like_redis() {
        assert_eq!(
            cmd("zunionstore out 2 zset1 zset2 WEIGHTS 2 3"),
            C::ZUnionStore {
                key: b("out"),
                sources: vec![b("zset1"), b("zset2")],
                weights: vec![2.0, 3.0],
                aggregate: 0
            }
        );
        assert_eq!(
            plan("zinterstore out 2 a b aggregate max").unwrap().others,
            vec![b("a"), b("b")]
        );
        assert!(matches!(
            cmd("zinterstore out 2 a b aggregate max weights 1 -inf"),
            C::ZInterStore { aggregate: 2, ref weights, .. } if weights[1] == f64::NEG_INFINITY
        ));
        assert_eq!(
            cmd("zdiffstore out 2 a b"),
            C::ZDiffStore {
                key: b("out"),
                sources: vec![b("a"), b("b")]
            }
        );
        assert_eq!(
            query("zunion 2 a b withscores aggregate min"),
            Q::ZUnion {
                key: b("a"),
                others: vec![b("b")],
                weights: vec![],
                aggregate: 1,
                with_scores: true
            }
        );
        assert_eq!(plan("zinter 2 a b").unwrap().others, vec![b("b")]);
        assert_eq!(
            query("zdiff 1 a withscores"),
            Q::ZDiff {
                key: b("a"),
                others: vec![],
                with_scores: true
            }
        );
        assert_eq!(
            query("zintercard 2 a b limit 5"),
            Q::ZInterCard {
                key: b("a"),
                others: vec![b("b")],
                limit: 5
            }
        );
        for (bad, want) in [
            (
                "zunionstore out 0 a",
                "ERR at least 1 input key is needed for 'zunionstore' command",
            ),
            (
                "zinter 0 a",
                "ERR at least 1 input key is needed for 'zinter' command",
            ),
            ("zunion x a", "ERR value is not an integer or out of range"),
            ("zunion 3 a b", "ERR syntax error"),
            ("zunion 2 a b weights 1", "ERR syntax error"),
            (
                "zunion 2 a b weights 1 x",
                "ERR weight value is not a float",
            ),
            ("zunion 2 a b aggregate avg", "ERR syntax error"),
            ("zunionstore o 2 a b withscores", "ERR syntax error"),
            ("zdiff 2 a b weights 1 2", "ERR syntax error"),
            ("zdiff 2 a b aggregate sum", "ERR syntax error"),
            ("zintercard 2 a b withscores", "ERR syntax error"),
            ("zintercard 1 a limit -1", "ERR LIMIT can't be negative"),
            ("zunion 1 a limit 1", "ERR syntax error"),
        ] {
            assert_eq!(err(bad), want, "{bad}");
        }
        let group_of = |k: &[u8]| k.first().copied();
        assert!(group(&plan("zunionstore {x}o 2 {x}a {x}b").unwrap(), group_of).is_ok());
        assert!(group(&plan("zunionstore o 2 a x").unwrap(), group_of).is_err());
        assert!(group(&plan("zdiffstore o 1 x").unwrap(), group_of).is_err());
    }

    #[test]
    fn collection_scans_answer_everything_at_once() {
        assert_eq!(
            plan("hscan h 0 match f* count 5 novalues").unwrap().finish,
            Finish::Scan {
                pattern: Some(b("f*")),
                pairs: true,
                only_firsts: true
            }
        );
        assert_eq!(query("hscan h 0"), Q::HashGetAll { key: b("h") });
        assert_eq!(query("sscan s 17"), Q::SetMembers { key: b("s") });
        assert!(matches!(
            query("zscan z 0 MATCH *"),
            Q::ZRange {
                start: 0,
                stop: -1,
                with_scores: true,
                ..
            }
        ));
        assert_eq!(
            plan("zscan z 0 MATCH *").unwrap().finish,
            Finish::Scan {
                pattern: None,
                pairs: true,
                only_firsts: false
            }
        );
        assert_eq!(err("sscan s x"), "ERR invalid cursor");
        assert_eq!(err("sscan s -1"), "ERR invalid cursor");
        assert_eq!(err("sscan s 0 count 0"), "ERR syntax error");
        assert_eq!(
            err("sscan s 0 count x"),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(err("sscan s 0 novalues"), "ERR syntax error");
        assert_eq!(err("sscan s 0 match"), "ERR syntax error");
        assert_eq!(err("hscan h 0 type hash"), "ERR syntax error");
        let scan = |pattern: Option<&str>, pairs, only_firsts, items: &[&str]| {
            finish(
                Finish::Scan {
                    pattern: pattern.map(b),
                    pairs,
                    only_firsts,
                },
                Some(KvResult::Items(items.iter().map(|s| b(s)).collect())),
            )
        };
        let reply = |items: &[&str]| {
            Reply::Array(vec![
                Reply::Bulk(b("0")),
                Reply::Array(items.iter().map(|s| Reply::Bulk(b(s))).collect()),
            ])
        };
        assert_eq!(
            scan(Some("f*"), true, false, &["f1", "v1", "g", "f", "f2", "v2"]),
            reply(&["f1", "v1", "f2", "v2"])
        );
        assert_eq!(
            scan(None, true, true, &["f1", "v1", "g", "f"]),
            reply(&["f1", "g"])
        );
        assert_eq!(
            scan(Some("?"), false, false, &["a", "bb", "c"]),
            reply(&["a", "c"])
        );
        assert_eq!(scan(None, false, false, &[]), reply(&[]));
    }

    #[test]
    fn new_reply_shapes() {
        assert_eq!(
            finish(
                Finish::IntArray,
                Some(KvResult::Items(vec![b("1"), b("0"), b("12")]))
            ),
            Reply::Array(vec![Reply::Int(1), Reply::Int(0), Reply::Int(12)])
        );
        assert!(matches!(
            finish(Finish::IntArray, Some(KvResult::Items(vec![b("x")]))),
            Reply::Error(_)
        ));
        assert_eq!(
            finish(Finish::IncrFloat, Some(KvResult::Value(Some(b("10.6"))))),
            Reply::Bulk(b("10.6"))
        );
        assert!(matches!(
            finish(Finish::IncrFloat, Some(KvResult::Count(3))),
            Reply::Error(_)
        ));
    }

    #[test]
    fn stream_trims() {
        let trim = |threshold, limit| Some(StreamTrim { threshold, limit });
        let minid = |ms, seq| TrimThreshold::MinId { ms, seq };
        assert_eq!(
            cmd("xtrim s MAXLEN 5"),
            C::XTrim {
                key: b("s"),
                trim: StreamTrim::max_len(5)
            }
        );
        assert_eq!(
            cmd("xtrim s minid ~ 7 limit 3"),
            C::XTrim {
                key: b("s"),
                trim: trim(minid(7, 0), 3).unwrap()
            }
        );
        assert_eq!(
            cmd("xtrim s minid = 7-2"),
            C::XTrim {
                key: b("s"),
                trim: trim(minid(7, 2), 0).unwrap()
            }
        );
        // XADD MINID, LIMIT before the threshold, options in any order.
        assert!(matches!(
            cmd("xadd s limit 2 minid ~ 9-1 nomkstream 10-* f v"),
            C::XAdd { trim: t, no_mkstream: true, id: XAddId::AutoSeq { ms: 10 }, .. }
                if t == trim(minid(9, 1), 2)
        ));
        for (bad, msg) in [
            (
                "xtrim s maxlen 5 limit 2",
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ),
            (
                "xtrim s maxlen = 5 limit 2",
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ),
            (
                "xadd s minid 5 limit 2 * f v",
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ),
            ("xtrim s limit 2 x", "ERR syntax error"),
            (
                "xtrim s limit 2 limit 3",
                "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
            ),
            (
                "xtrim s limit 0 limit 0",
                "ERR syntax error, XTRIM must be called with a trimming strategy",
            ),
            (
                "xadd s maxlen 1 limit 1 x f v",
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                "xadd s limit 0 * f v",
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ),
            (
                "xadd s limit 1 * f v",
                "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
            ),
            ("xtrim s maxlen -1", "ERR The MAXLEN argument must be >= 0."),
            (
                "xtrim s maxlen ~ x",
                "ERR value is not an integer or out of range",
            ),
            (
                "xtrim s maxlen ~ 1 limit -1",
                "ERR The LIMIT argument must be >= 0.",
            ),
            (
                "xtrim s minid -",
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                "xtrim s minid 1-x",
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                "xtrim s maxlen 1 minid 1",
                "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
            ),
            (
                "xadd s maxlen 1 minid 1 * f v",
                "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
            ),
            (
                "xtrim s maxlen",
                "ERR wrong number of arguments for 'xtrim' command",
            ),
            (
                "xtrim s maxlen ~",
                "ERR value is not an integer or out of range",
            ),
            ("xtrim s maxlen 1 x", "ERR syntax error"),
            (
                "xadd s maxlen 1",
                "ERR wrong number of arguments for 'xadd' command",
            ),
            (
                "xadd s nomkstream 0 f v",
                "ERR The ID specified in XADD must be greater than 0-0",
            ),
        ] {
            assert_eq!(err(bad), msg, "{bad}");
        }
    }

    #[test]
    fn stream_del_and_setid() {
        assert_eq!(
            cmd("xdel s 1 2-3 1"),
            C::XDel {
                key: b("s"),
                ids: vec![(1, 0), (2, 3), (1, 0)]
            }
        );
        // A bad id asks for the key's type first, as Redis looks the key
        // up before it reads the ids.
        let p = plan("xdel s 1 +").unwrap();
        assert!(matches!(
            p.op,
            Op::Read(KvQuery::Typed(Q::Type { ref key })) if key == "s"
        ));
        assert_eq!(p.finish, Finish::XDelBadId);
        let type_is = |t: Option<&str>| Some(KvResult::Value(t.map(b)));
        assert_eq!(finish(Finish::XDelBadId, type_is(None)), Reply::Int(0));
        assert_eq!(
            finish(Finish::XDelBadId, type_is(Some("stream"))),
            Reply::err("Invalid stream ID specified as stream command argument")
        );
        assert!(matches!(
            finish(Finish::XDelBadId, type_is(Some("list"))),
            Reply::Error(e) if e.starts_with("WRONGTYPE")
        ));
        assert_eq!(
            cmd("xsetid s 5-1"),
            C::XSetId {
                key: b("s"),
                last: (5, 1),
                entries_added: None
            }
        );
        assert_eq!(
            cmd("xsetid s 5 entriesadded 3 maxdeletedid 4-9"),
            C::XSetId {
                key: b("s"),
                last: (5, 0),
                entries_added: Some(3)
            }
        );
        for (bad, msg) in [
            (
                "xsetid s +",
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                "xsetid s 5 entriesadded -1",
                "ERR entries_added must be positive",
            ),
            (
                "xsetid s 5 entriesadded x",
                "ERR value is not an integer or out of range",
            ),
            (
                "xsetid s 5 maxdeletedid 5-1",
                "ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
            ),
            (
                "xsetid s 5 maxdeletedid x",
                "ERR Invalid stream ID specified as stream command argument",
            ),
            ("xsetid s 5 entriesadded", "ERR syntax error"),
            ("xsetid s 5 foo 1", "ERR syntax error"),
            (
                "xsetid s",
                "ERR wrong number of arguments for 'xsetid' command",
            ),
            ("xdel s", "ERR wrong number of arguments for 'xdel' command"),
        ] {
            assert_eq!(err(bad), msg, "{bad}");
        }
    }

    #[test]
    fn stream_ids_and_ranges() {
        assert!(matches!(
            cmd("xadd s 5-3 f v"),
            C::XAdd {
                id: XAddId::Explicit { ms: 5, seq: 3 },
                ..
            }
        ));
        assert!(matches!(
            cmd("xadd s 5 f v"),
            C::XAdd {
                id: XAddId::Explicit { ms: 5, seq: 0 },
                ..
            }
        ));
        assert!(matches!(
            cmd("xadd s 7-* f v"),
            C::XAdd {
                id: XAddId::AutoSeq { ms: 7 },
                ..
            }
        ));
        assert!(matches!(
            cmd("xadd s nomkstream maxlen ~ 10 limit 5 * f v"),
            C::XAdd {
                trim: Some(StreamTrim {
                    threshold: TrimThreshold::MaxLen(10),
                    limit: 5
                }),
                no_mkstream: true,
                id: XAddId::Auto { now_ms: 1234 },
                ..
            }
        ));
        assert!(matches!(
            cmd("xadd s MAXLEN 3 * f v"),
            C::XAdd {
                trim: Some(StreamTrim {
                    threshold: TrimThreshold::MaxLen(3),
                    limit: 0
                }),
                ..
            }
        ));
        for bad in [
            "xadd s 1-x f v",
            "xadd s -1 f v",
            "xadd s 1-2-3 f v",
            "xrange s x +",
        ] {
            assert_eq!(
                err(bad),
                "ERR Invalid stream ID specified as stream command argument",
                "{bad}"
            );
        }
        assert_eq!(
            err("xadd s maxlen -1 * f v"),
            "ERR The MAXLEN argument must be >= 0."
        );
        assert_eq!(
            query("xrange s - +"),
            Q::StreamRange {
                key: b("s"),
                start: (0, 0),
                end: (u64::MAX, u64::MAX),
                count: None,
                rev: false
            }
        );
        assert_eq!(
            query("xrange s 5 (7-0 COUNT 2"),
            Q::StreamRange {
                key: b("s"),
                start: (5, 0),
                end: (6, u64::MAX),
                count: Some(2),
                rev: false
            }
        );
        assert_eq!(
            query("xrevrange s + (5-5"),
            Q::StreamRange {
                key: b("s"),
                start: (5, 6),
                end: (u64::MAX, u64::MAX),
                count: None,
                rev: true
            }
        );
        // An exclusive bound past the ends is Redis' error; COUNT 0 is
        // answered at once, with Redis 7's null array.
        assert_eq!(
            plan("xrange s (0-0 (0-0").err(),
            Some(Reply::err("invalid end ID for the interval"))
        );
        assert_eq!(
            plan("xrevrange s + (18446744073709551615-18446744073709551615").err(),
            Some(Reply::err("invalid start ID for the interval"))
        );
        // COUNT 0 (or less) asks for the key's type: the nil array for a
        // stream, the empty array for no key, WRONGTYPE otherwise.
        for cmd in ["xrange s - + count 0", "xrevrange s + - count -3"] {
            let p = plan(cmd).unwrap();
            assert!(
                matches!(&p.op, Op::Read(KvQuery::Typed(Q::Type { key })) if key == &b("s")),
                "{cmd}: {:?}",
                p.op
            );
            assert_eq!(p.finish, Finish::NoRecords);
        }
        let type_is = |t: Option<&str>| Some(KvResult::Value(t.map(b)));
        assert_eq!(
            finish(Finish::NoRecords, type_is(Some("stream"))),
            Reply::NilArray
        );
        assert_eq!(
            finish(Finish::NoRecords, type_is(None)),
            Reply::Array(vec![])
        );
        assert!(matches!(
            finish(Finish::NoRecords, type_is(Some("string"))),
            Reply::Error(e) if e.starts_with("WRONGTYPE")
        ));
    }

    #[test]
    fn reply_shapes() {
        let items = |v: &[&str]| KvResult::Items(v.iter().map(|s| b(s)).collect());
        assert_eq!(finish(Finish::Int, Some(KvResult::Len(3))), Reply::Int(3));
        assert_eq!(finish(Finish::Int, Some(KvResult::Count(0))), Reply::Int(0));
        assert_eq!(finish(Finish::Int, Some(KvResult::Int(-4))), Reply::Int(-4));
        assert_eq!(
            finish(Finish::Bulk, Some(KvResult::Value(None))),
            Reply::Nil
        );
        assert_eq!(
            finish(Finish::Bulk, Some(KvResult::Value(Some(b("1.5"))))),
            Reply::Bulk(b("1.5"))
        );
        assert_eq!(finish(Finish::Ok, Some(KvResult::Count(2))), Reply::Ok);
        assert_eq!(
            finish(Finish::Array, Some(items(&["a", "b"]))),
            Reply::Array(vec![Reply::Bulk(b("a")), Reply::Bulk(b("b"))])
        );
        assert_eq!(
            finish(Finish::Array, Some(items(&[]))),
            Reply::Array(vec![])
        );
        assert_eq!(
            finish(
                Finish::Array,
                Some(KvResult::Values(vec![None, Some(b("v"))]))
            ),
            Reply::Array(vec![Reply::Nil, Reply::Bulk(b("v"))])
        );
        assert_eq!(
            finish(Finish::ArrayOrNilArray, Some(KvResult::Value(None))),
            Reply::NilArray
        );
        assert_eq!(
            finish(Finish::IntOrNil, Some(KvResult::Value(None))),
            Reply::Nil
        );
        assert_eq!(
            finish(Finish::IntOrNil, Some(KvResult::Int(2))),
            Reply::Int(2)
        );
        assert_eq!(
            finish(
                Finish::Records,
                Some(KvResult::Records(vec![(b("1-0"), vec![b("f"), b("v")])]))
            ),
            Reply::Array(vec![Reply::Array(vec![
                Reply::Bulk(b("1-0")),
                Reply::Array(vec![Reply::Bulk(b("f")), Reply::Bulk(b("v"))])
            ])])
        );
        // A mismatched kind is an internal error, not a panic.
        assert!(matches!(
            finish(Finish::Records, Some(KvResult::Ok)),
            Reply::Error(_)
        ));
        let mut out = bytes::BytesMut::new();
        Reply::NilArray.encode_as(&mut out, false);
        assert_eq!(&out[..], b"*-1\r\n");
    }
}
