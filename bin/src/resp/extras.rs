//! The commands `redis-cli` users reach for beyond the data types: `WAIT`,
//! `RANDOMKEY`, `OBJECT`, `MEMORY USAGE`, the bit commands (`SETBIT`,
//! `GETBIT`, `BITCOUNT`, `BITPOS`, `BITOP`, `BITFIELD`, `BITFIELD_RO`), `LCS`, `ZRANGESTORE`, `SORT`,
//! `SORT_RO` and the HyperLogLog commands (`PFADD`, `PFCOUNT`, `PFMERGE`:
//! the node hashes the elements, the log carries register ranks, and
//! `PFCOUNT` reads the values and estimates here).
//!
//! [`prepare`] parses a command (arity, options, numbers, with Redis'
//! error texts) into KV requests, and [`finish`] turns their results into
//! Redis' reply; both are pure and tested below without a node. Writes
//! (`SETBIT`, `BITOP`, `BITFIELD` with a `SET` or `INCRBY`, `ZRANGESTORE`,
//! `SORT ... STORE`) are one command of their group's log; the reads are
//! queries: `GETBIT`, `BITCOUNT`, `BITPOS`, `LCS` and `BITFIELD(_RO)` of
//! only `GET`s read the strings and compute here. Commands of
//! several keys need them in one group (a hash tag), else `-CROSSSLOT`.

use bytes::Bytes;
use flotilla::GroupId;
use flotilla_rsm::kv::hll::{hll_estimate, hll_register, hll_registers};
use flotilla_rsm::kv::{bitfield_get, BITFIELD_OPS_MAX, KEYS_PER_COMMAND_MAX, VALUE_BYTES_MAX};
use flotilla_rsm::{
    BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType, BitOperation, KvCommand, KvQuery,
    KvResult, TypedCommand, TypedQuery,
};

use super::command::{crossslot, CommandInfo, Op, Sub};
use super::reply::Reply;
use super::types;

/// Commands of this module: name, arity, flags, first key, last key, step
/// (the fields of a COMMAND reply).
pub const COMMANDS: &[CommandInfo] = &[
    ("wait", 3, &["noscript"], 0, 0, 0),
    ("randomkey", 1, &["readonly", "random"], 0, 0, 0),
    ("object", -2, &["readonly", "random"], 2, 2, 1),
    ("memory", -2, &["readonly"], 0, 0, 0),
    ("setbit", 4, &["write", "denyoom"], 1, 1, 1),
    ("getbit", 3, &["readonly", "fast"], 1, 1, 1),
    ("bitcount", -2, &["readonly"], 1, 1, 1),
    ("bitpos", -3, &["readonly"], 1, 1, 1),
    ("bitop", -4, &["write", "denyoom"], 2, -1, 1),
    ("bitfield", -2, &["write", "denyoom"], 1, 1, 1),
    ("bitfield_ro", -2, &["readonly", "fast"], 1, 1, 1),
    ("lcs", -3, &["readonly"], 1, 2, 1),
    ("zrangestore", -5, &["write", "denyoom"], 1, 2, 1),
    ("sort", -2, &["write", "denyoom", "movablekeys"], 1, 1, 1),
    ("sort_ro", -2, &["readonly", "movablekeys"], 1, 1, 1),
    ("pfadd", -2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("pfcount", -2, &["readonly"], 1, -1, 1),
    ("pfmerge", -2, &["write", "denyoom"], 1, -1, 1),
];

/// Most cells (`(len a + 1) × (len b + 1)`) of LCS's table: 64 MiB of
/// `u32`, some tens of milliseconds of one executor.
pub const LCS_CELLS_MAX: u64 = 16 << 20;

/// What a command of this module needs.
#[derive(Debug)]
pub enum Outcome {
    /// Answered at once.
    Reply(Reply),
    /// KV requests and how their results become the reply.
    Plan(Vec<Sub>, Finish),
    /// `WAIT`: how many replicas hold this connection's writes (the node
    /// knows: see [`wait_replicas`]).
    Wait,
}

/// How a plan's results become its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// RANDOMKEY: one `Value` per group; the pick among non-empty groups.
    RandomKey {
        /// Picks the group.
        seed: u64,
    },
    /// OBJECT ENCODING / REFCOUNT / IDLETIME / FREQ, MEMORY USAGE: from
    /// the key's description.
    Object(ObjectField),
    /// GETBIT: a bit of the value.
    GetBit {
        /// The bit.
        offset: u64,
    },
    /// BITCOUNT: set bits in a range.
    BitCount {
        /// `(start, end, bits)`: the range and whether it counts bits.
        range: Option<(i64, i64, bool)>,
    },
    /// BITPOS: the first bit of a value in a range.
    BitPos {
        /// The bit looked for.
        bit: bool,
        /// Start (and end) of the range, and whether they count bits.
        start: Option<i64>,
        /// End of the range.
        end: Option<i64>,
        /// BIT unit.
        bits: bool,
    },
    /// BITFIELD / BITFIELD_RO of only GETs: the fields of the value.
    BitFieldRead {
        /// The GETs.
        ops: Vec<BitFieldOp>,
    },
    /// BITFIELD with a write: `Ints` as integers and nils.
    BitField,
    /// BITOP and the STORE forms: `Len` / `Count` as an integer.
    Int,
    /// LCS: the types of both keys, then both values.
    Lcs(LcsMode),
    /// SORT / SORT_RO: `Items`, each repeated `gets` times (`GET #`).
    Sorted {
        /// How many `GET #` (0: the elements once).
        gets: usize,
    },
    /// PFCOUNT: one `Value` per key; the estimate of their union.
    HllCount,
    /// `Ok` as `+OK`.
    Okay,
}

/// What OBJECT / MEMORY answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectField {
    /// OBJECT ENCODING.
    Encoding,
    /// OBJECT REFCOUNT.
    Refcount,
    /// OBJECT IDLETIME.
    Idletime,
    /// OBJECT FREQ.
    Freq,
    /// MEMORY USAGE.
    Usage,
}

/// LCS's reply shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LcsMode {
    /// LEN.
    pub len: bool,
    /// IDX.
    pub idx: bool,
    /// MINMATCHLEN.
    pub min_match_len: u64,
    /// WITHMATCHLEN.
    pub with_match_len: bool,
}

fn err(text: &str) -> Outcome {
    Outcome::Reply(Reply::err(text))
}

fn arity(name: &str) -> Outcome {
    Outcome::Reply(Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn syntax() -> Outcome {
    err("syntax error")
}

/// An integer as Redis reads one (`string2ll`).
fn int(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

const NOT_INTEGER: &str = "value is not an integer or out of range";
const BAD_OFFSET: &str = "bit offset is not an integer or out of range";

/// A bit offset (SETBIT, GETBIT): within the largest value.
fn bit_offset(b: &[u8]) -> Option<u64> {
    int(b)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n < VALUE_BYTES_MAX as u64 * 8)
}

const BAD_BITFIELD_TYPE: &str =
    "Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";

/// A BITFIELD type (`getBitfieldTypeFromArgument`): `i1`..`i64` or
/// `u1`..`u63`, lower case only (Redis 7.0 refuses `I8`); Redis reads the
/// width up to a NUL byte.
fn bitfield_type(b: &[u8]) -> Option<BitFieldType> {
    let (first, rest) = b.split_first()?;
    let signed = match first {
        b'i' => true,
        b'u' => false,
        _ => return None,
    };
    let digits = rest.split(|c| *c == 0).next().unwrap_or_default();
    let bits = u8::try_from(int(digits)?).ok()?;
    BitFieldType::new(signed, bits)
}

/// A BITFIELD offset (`getBitOffsetFromArgument`): bits, or `#n` for `n`
/// fields of the type; within the largest value, as SETBIT's.
fn bitfield_offset(b: &[u8], ty: BitFieldType) -> Option<u64> {
    let offset = match b.strip_prefix(b"#") {
        Some(n) => int(n)?.checked_mul(i64::from(ty.bits()))?,
        None => int(b)?,
    };
    u64::try_from(offset)
        .ok()
        .filter(|n| *n < VALUE_BYTES_MAX as u64 * 8)
}

/// The operations of `BITFIELD key ops...` (`args` after the key), read as
/// Redis reads them: in order, the first error wins.
fn bitfield_ops(args: &[Bytes]) -> Result<Vec<BitFieldOp>, Outcome> {
    let mut ops = Vec::new();
    let mut overflow = BitFieldOverflow::Wrap;
    let mut j = 0;
    while j < args.len() {
        let remaining = args.len() - j - 1;
        let get = match args[j].to_ascii_uppercase().as_slice() {
            b"GET" if remaining >= 2 => true,
            b"SET" | b"INCRBY" if remaining >= 3 => false,
            b"OVERFLOW" if remaining >= 1 => {
                overflow = match args[j + 1].to_ascii_uppercase().as_slice() {
                    b"WRAP" => BitFieldOverflow::Wrap,
                    b"SAT" => BitFieldOverflow::Sat,
                    b"FAIL" => BitFieldOverflow::Fail,
                    _ => return Err(err("Invalid OVERFLOW type specified")),
                };
                j += 2;
                continue;
            }
            _ => return Err(syntax()),
        };
        let ty = bitfield_type(&args[j + 1]).ok_or_else(|| err(BAD_BITFIELD_TYPE))?;
        let offset = bitfield_offset(&args[j + 2], ty).ok_or_else(|| err(BAD_OFFSET))?;
        let action = if get {
            BitFieldAction::Get
        } else {
            // A write must end within the largest value too.
            if offset + u64::from(ty.bits()) > VALUE_BYTES_MAX as u64 * 8 {
                return Err(err(BAD_OFFSET));
            }
            let value = int(&args[j + 3]).ok_or_else(|| err(NOT_INTEGER))?;
            if args[j].eq_ignore_ascii_case(b"SET") {
                BitFieldAction::Set(value)
            } else {
                BitFieldAction::IncrBy(value)
            }
        };
        ops.push(BitFieldOp {
            action,
            ty,
            offset,
            overflow,
        });
        j += if get { 3 } else { 4 };
    }
    if ops.len() > BITFIELD_OPS_MAX as usize {
        return Err(err("too many BITFIELD operations"));
    }
    Ok(ops)
}

/// Parses a command of this module (`name` upper case, `args` after the
/// name). `None` if `name` is not one. `group_for` routes a key,
/// `kv_groups` are every KV group, `seed` a fresh random number.
pub fn prepare(
    name: &str,
    args: &[Bytes],
    group_for: &dyn Fn(&[u8]) -> GroupId,
    kv_groups: &[GroupId],
    seed: u64,
) -> Option<Outcome> {
    let info = COMMANDS.iter().find(|c| c.0.eq_ignore_ascii_case(name))?;
    if !super::command::arity_ok(info, args.len()) {
        return Some(arity(name));
    }
    let read = |key: &Bytes, q: KvQuery| Sub {
        group: group_for(key),
        op: Op::Read(q),
    };
    let write = |key: &Bytes, c: KvCommand| Sub {
        group: group_for(key),
        op: Op::Write(c),
    };
    let get = |key: &Bytes| read(key, KvQuery::Get { key: key.clone() });
    Some(match name {
        "WAIT" => {
            // Redis reads the timeout first, then the count.
            match int(&args[1]) {
                None => return Some(err("timeout is not an integer or out of range")),
                Some(t) if t < 0 => return Some(err("timeout is negative")),
                Some(_) => {}
            }
            if int(&args[0]).is_none() {
                return Some(err(NOT_INTEGER));
            }
            Outcome::Wait
        }
        "RANDOMKEY" => Outcome::Plan(
            kv_groups
                .iter()
                .enumerate()
                .map(|(i, g)| Sub {
                    group: *g,
                    op: Op::Read(KvQuery::RandomKey {
                        seed: seed.rotate_left(i as u32 + 1) ^ i as u64,
                    }),
                })
                .collect(),
            Finish::RandomKey { seed },
        ),
        "OBJECT" => prepare_object(args, &read),
        "MEMORY" => prepare_memory(args, &read),
        "SETBIT" => {
            let Some(offset) = bit_offset(&args[1]) else {
                return Some(err(BAD_OFFSET));
            };
            let value = match int(&args[2]) {
                Some(0) => false,
                Some(1) => true,
                _ => return Some(err("bit is not an integer or out of range")),
            };
            let cmd = KvCommand::SetBit {
                key: args[0].clone(),
                offset,
                value,
            };
            Outcome::Plan(vec![write(&args[0], cmd)], Finish::Int)
        }
        "GETBIT" => {
            let Some(offset) = bit_offset(&args[1]) else {
                return Some(err(BAD_OFFSET));
            };
            Outcome::Plan(vec![get(&args[0])], Finish::GetBit { offset })
        }
        "BITCOUNT" => {
            let range = match &args[1..] {
                [] => None,
                [start, end, unit @ ..] if unit.len() <= 1 => {
                    let (Some(start), Some(end)) = (int(start), int(end)) else {
                        return Some(err(NOT_INTEGER));
                    };
                    let bits = match unit.first() {
                        None => false,
                        Some(u) => match unit_of(u) {
                            Some(bits) => bits,
                            None => return Some(syntax()),
                        },
                    };
                    Some((start, end, bits))
                }
                _ => return Some(syntax()),
            };
            Outcome::Plan(vec![get(&args[0])], Finish::BitCount { range })
        }
        "BITPOS" => {
            let bit = match int(&args[1]) {
                None => return Some(err(NOT_INTEGER)),
                Some(0) => false,
                Some(1) => true,
                Some(_) => return Some(err("The bit argument must be 1 or 0.")),
            };
            if args.len() > 5 {
                return Some(syntax());
            }
            let mut numbers = [None, None];
            for (slot, a) in numbers.iter_mut().zip(&args[2..]) {
                match int(a) {
                    Some(n) => *slot = Some(n),
                    None => return Some(err(NOT_INTEGER)),
                }
            }
            let bits = match args.get(4) {
                None => false,
                Some(u) => match unit_of(u) {
                    Some(bits) => bits,
                    None => return Some(syntax()),
                },
            };
            Outcome::Plan(
                vec![get(&args[0])],
                Finish::BitPos {
                    bit,
                    start: numbers[0],
                    end: numbers[1],
                    bits,
                },
            )
        }
        "BITOP" => {
            let op = match args[0].to_ascii_uppercase().as_slice() {
                b"AND" => BitOperation::And,
                b"OR" => BitOperation::Or,
                b"XOR" => BitOperation::Xor,
                b"NOT" => BitOperation::Not,
                _ => return Some(syntax()),
            };
            let (dst, sources) = (&args[1], &args[2..]);
            if op == BitOperation::Not && sources.len() != 1 {
                return Some(err("BITOP NOT must be called with a single source key."));
            }
            if sources.len() > KEYS_PER_COMMAND_MAX as usize {
                return Some(err("too many keys"));
            }
            let group = group_for(dst);
            if sources.iter().any(|k| group_for(k) != group) {
                return Some(Outcome::Reply(crossslot()));
            }
            let cmd = KvCommand::BitOp {
                op,
                dst: dst.clone(),
                sources: sources.to_vec(),
            };
            Outcome::Plan(vec![write(dst, cmd)], Finish::Int)
        }
        "BITFIELD" | "BITFIELD_RO" => {
            let ops = match bitfield_ops(&args[1..]) {
                Ok(ops) => ops,
                Err(e) => return Some(e),
            };
            if !ops.iter().any(BitFieldOp::writes) {
                // Only GETs: a read of the value, computed here.
                Outcome::Plan(vec![get(&args[0])], Finish::BitFieldRead { ops })
            } else if name == "BITFIELD_RO" {
                return Some(err("BITFIELD_RO only supports the GET subcommand"));
            } else {
                let cmd = KvCommand::BitField {
                    key: args[0].clone(),
                    ops,
                };
                Outcome::Plan(vec![write(&args[0], cmd)], Finish::BitField)
            }
        }
        "LCS" => prepare_lcs(args, group_for),
        "PFADD" => {
            // Hashed here: the log carries (register, rank) pairs, the
            // largest rank per register.
            let mut ranks: std::collections::BTreeMap<u16, u8> = Default::default();
            for e in &args[1..] {
                let (register, rank) = hll_register(e);
                let slot = ranks.entry(register).or_default();
                *slot = (*slot).max(rank);
            }
            let cmd = KvCommand::HllAdd {
                key: args[0].clone(),
                registers: ranks.into_iter().collect(),
            };
            Outcome::Plan(vec![write(&args[0], cmd)], Finish::Int)
        }
        "PFCOUNT" | "PFMERGE" => {
            if args.len() > KEYS_PER_COMMAND_MAX as usize {
                return Some(err("too many keys"));
            }
            let group = group_for(&args[0]);
            if args.iter().any(|k| group_for(k) != group) {
                return Some(Outcome::Reply(crossslot()));
            }
            if name == "PFMERGE" {
                let cmd = KvCommand::HllMerge {
                    dst: args[0].clone(),
                    sources: args[1..].to_vec(),
                };
                Outcome::Plan(vec![write(&args[0], cmd)], Finish::Okay)
            } else {
                // One GET a key (not MGET, which reads a list as nil): a
                // collection is WRONGTYPE, as in Redis.
                Outcome::Plan(args.iter().map(get).collect(), Finish::HllCount)
            }
        }
        "ZRANGESTORE" => {
            let (dst, src) = (&args[0], &args[1]);
            if args[4..]
                .iter()
                .any(|a| a.eq_ignore_ascii_case(b"WITHSCORES"))
            {
                return Some(syntax());
            }
            let range = match types::prepare("ZRANGE", &args[1..], 0, 0) {
                Some(Ok(p)) => match p.op {
                    Op::Read(KvQuery::Typed(q)) => q,
                    _ => return Some(err("internal error: ZRANGE is a typed query")),
                },
                Some(Err(reply)) => return Some(Outcome::Reply(reply)),
                None => return Some(err("internal error: ZRANGE not found")),
            };
            if group_for(dst) != group_for(src) {
                return Some(Outcome::Reply(crossslot()));
            }
            let cmd = KvCommand::Typed(TypedCommand::ZRangeStore {
                key: dst.clone(),
                range,
            });
            Outcome::Plan(vec![write(dst, cmd)], Finish::Int)
        }
        "SORT" | "SORT_RO" => prepare_sort(name == "SORT_RO", args, group_for),
        _ => return None,
    })
}

/// `BYTE` (false) or `BIT` (true).
fn unit_of(b: &[u8]) -> Option<bool> {
    match b.to_ascii_uppercase().as_slice() {
        b"BYTE" => Some(false),
        b"BIT" => Some(true),
        _ => None,
    }
}

/// OBJECT's help lines (Redis 7).
const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Print this help.",
];

/// MEMORY's help lines (the subcommands served).
const MEMORY_HELP: &[&str] = &[
    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "USAGE <key> [SAMPLES <count>]",
    "    Return memory in bytes used by <key> and its value. Nested values are",
    "    sampled up to <count> times (default: 5, 0 means sample all).",
    "HELP",
    "    Print this help.",
];

fn help(lines: &[&str]) -> Outcome {
    Outcome::Reply(Reply::Array(
        lines.iter().map(|l| Reply::Simple((*l).into())).collect(),
    ))
}

fn unknown_subcommand(command: &str, sub: &[u8]) -> Outcome {
    err(&format!(
        "unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(&sub[..sub.len().min(128)])
    ))
}

fn sub_arity(command: &str, sub: &str) -> Outcome {
    err(&format!(
        "wrong number of arguments for '{}|{}' command",
        command.to_ascii_lowercase(),
        sub.to_ascii_lowercase()
    ))
}

/// `OBJECT ENCODING|REFCOUNT|IDLETIME|FREQ key`, `OBJECT HELP`.
fn prepare_object(args: &[Bytes], read: &dyn Fn(&Bytes, KvQuery) -> Sub) -> Outcome {
    let sub = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let field = match sub.as_str() {
        "HELP" if args.len() == 1 => return help(OBJECT_HELP),
        "HELP" => return sub_arity("OBJECT", "HELP"),
        "ENCODING" => ObjectField::Encoding,
        "REFCOUNT" => ObjectField::Refcount,
        "IDLETIME" => ObjectField::Idletime,
        "FREQ" => ObjectField::Freq,
        _ => return unknown_subcommand("OBJECT", &args[0]),
    };
    let [_, key] = args else {
        return sub_arity("OBJECT", &sub);
    };
    Outcome::Plan(
        vec![read(key, KvQuery::Describe { key: key.clone() })],
        Finish::Object(field),
    )
}

/// `MEMORY USAGE key [SAMPLES count]`, `MEMORY HELP`. Every element is
/// counted whatever SAMPLES says (the store keeps each collection's byte
/// total: exact and O(1)).
fn prepare_memory(args: &[Bytes], read: &dyn Fn(&Bytes, KvQuery) -> Sub) -> Outcome {
    let sub = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    match sub.as_str() {
        "HELP" if args.len() == 1 => return help(MEMORY_HELP),
        "HELP" => return sub_arity("MEMORY", "HELP"),
        "USAGE" => {}
        _ => return unknown_subcommand("MEMORY", &args[0]),
    }
    let Some(key) = args.get(1) else {
        return sub_arity("MEMORY", "USAGE");
    };
    match &args[2..] {
        [] => {}
        [opt, n] if opt.eq_ignore_ascii_case(b"SAMPLES") => {
            if int(n).is_none() {
                return err(NOT_INTEGER);
            }
        }
        _ => return syntax(),
    }
    Outcome::Plan(
        vec![read(key, KvQuery::Describe { key: key.clone() })],
        Finish::Object(ObjectField::Usage),
    )
}

/// `LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]`: the types
/// of both keys and both values, in one group.
fn prepare_lcs(args: &[Bytes], group_for: &dyn Fn(&[u8]) -> GroupId) -> Outcome {
    let (a, b) = (&args[0], &args[1]);
    let mut mode = LcsMode {
        len: false,
        idx: false,
        min_match_len: 0,
        with_match_len: false,
    };
    let mut i = 2;
    while i < args.len() {
        let left = args.len() - i - 1;
        match args[i].to_ascii_uppercase().as_slice() {
            b"IDX" => mode.idx = true,
            b"LEN" => mode.len = true,
            b"WITHMATCHLEN" => mode.with_match_len = true,
            b"MINMATCHLEN" if left >= 1 => {
                let Some(n) = int(&args[i + 1]) else {
                    return err(NOT_INTEGER);
                };
                mode.min_match_len = u64::try_from(n).unwrap_or(0);
                i += 1;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    if mode.len && mode.idx {
        return err("If you want both the length and indexes, please just use IDX.");
    }
    let group = group_for(a);
    if group_for(b) != group {
        return Outcome::Reply(crossslot());
    }
    let sub = |q: KvQuery| Sub {
        group,
        op: Op::Read(q),
    };
    Outcome::Plan(
        vec![
            sub(KvQuery::Typed(TypedQuery::Type { key: a.clone() })),
            sub(KvQuery::Typed(TypedQuery::Type { key: b.clone() })),
            sub(KvQuery::MultiGet {
                keys: vec![a.clone(), b.clone()],
            }),
        ],
        Finish::Lcs(mode),
    )
}

const SORT_BY_DENIED: &str = "BY option of SORT denied in Cluster mode when keys formed from the pattern may be in different slots.";
const SORT_GET_DENIED: &str = "GET option of SORT denied in Cluster mode when keys formed from the pattern may be in different slots.";

/// `SORT key [BY pattern] [LIMIT offset count] [GET pattern ...]
/// [ASC|DESC] [ALPHA] [STORE dst]` (`SORT_RO` without STORE), as Redis'
/// `sortCommandGeneric` reads it. `BY` takes only a pattern without `*`
/// (`nosort`), `GET` only `#`: the keys other patterns name may live in
/// other groups, refused as Redis Cluster refuses them.
fn prepare_sort(read_only: bool, args: &[Bytes], group_for: &dyn Fn(&[u8]) -> GroupId) -> Outcome {
    let key = &args[0];
    let (mut desc, mut alpha, mut sorted) = (false, false, true);
    let (mut offset, mut count) = (0u64, None);
    let mut store: Option<&Bytes> = None;
    let mut gets = 0usize;
    let mut j = 1;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_uppercase().as_slice() {
            b"ASC" => desc = false,
            b"DESC" => desc = true,
            b"ALPHA" => alpha = true,
            b"LIMIT" if left >= 2 => {
                let (Some(start), Some(n)) = (int(&args[j + 1]), int(&args[j + 2])) else {
                    return err(NOT_INTEGER);
                };
                offset = u64::try_from(start).unwrap_or(0);
                count = u64::try_from(n).ok();
                j += 2;
            }
            b"STORE" if left >= 1 && !read_only => {
                store = Some(&args[j + 1]);
                j += 1;
            }
            b"BY" if left >= 1 => {
                if args[j + 1].contains(&b'*') {
                    return err(SORT_BY_DENIED);
                }
                sorted = false;
                j += 1;
            }
            b"GET" if left >= 1 => {
                if &args[j + 1][..] != b"#" {
                    return err(SORT_GET_DENIED);
                }
                gets += 1;
                j += 1;
            }
            _ => return syntax(),
        }
        j += 1;
    }
    let sort = TypedQuery::Sort {
        key: key.clone(),
        alpha,
        desc,
        sorted,
        offset,
        count,
    };
    let group = group_for(key);
    match store {
        None => Outcome::Plan(
            vec![Sub {
                group,
                op: Op::Read(KvQuery::Typed(sort)),
            }],
            Finish::Sorted { gets },
        ),
        Some(_) if gets > 1 => err("SORT ... STORE takes at most one GET # here"),
        Some(dst) if group_for(dst) != group => Outcome::Reply(crossslot()),
        Some(dst) => Outcome::Plan(
            vec![Sub {
                group,
                op: Op::Write(KvCommand::Typed(TypedCommand::SortStore {
                    key: dst.clone(),
                    sort,
                })),
            }],
            Finish::Int,
        ),
    }
}

/// The `[start, end]` byte or bit range of a `len`-long (bytes or bits)
/// value that `start end` select (Redis' BITCOUNT / BITPOS rules:
/// negative from the end, clamped); `None` if empty.
fn range_of(start: i64, end: i64, len: u64) -> Option<(u64, u64)> {
    let len = len as i64;
    let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x };
    let (start, end) = (norm(start), norm(end).min(len - 1));
    (len > 0 && start <= end).then_some((start as u64, end as u64))
}

fn bit_at(v: &[u8], i: u64) -> bool {
    v.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// BITCOUNT of `v`.
pub fn bit_count(v: &[u8], range: Option<(i64, i64, bool)>) -> i64 {
    match range {
        None => v.iter().map(|b| b.count_ones() as i64).sum(),
        Some((start, end, false)) => range_of(start, end, v.len() as u64).map_or(0, |(a, b)| {
            v[a as usize..=b as usize]
                .iter()
                .map(|b| b.count_ones() as i64)
                .sum()
        }),
        Some((start, end, true)) => range_of(start, end, v.len() as u64 * 8)
            .map_or(0, |(a, b)| (a..=b).filter(|i| bit_at(v, *i)).count() as i64),
    }
}

/// BITPOS of `v` (`None`: the key is absent).
pub fn bit_pos(
    v: Option<&[u8]>,
    bit: bool,
    start: Option<i64>,
    end: Option<i64>,
    bits: bool,
) -> i64 {
    let Some(v) = v else {
        return if bit { -1 } else { 0 };
    };
    let len = v.len() as u64 * if bits { 8 } else { 1 };
    let Some((a, b)) = range_of(start.unwrap_or(0), end.unwrap_or(-1), len) else {
        return -1;
    };
    let (first, last) = if bits { (a, b) } else { (a * 8, b * 8 + 7) };
    if let Some(i) = (first..=last).find(|i| bit_at(v, *i) == bit) {
        return i as i64;
    }
    // Looking for a clear bit without an end: the string goes on with
    // zeros.
    if !bit && end.is_none() {
        (last + 1) as i64
    } else {
        -1
    }
}

/// LCS's reply for `a` and `b` (Redis' `lcsCommand`: the table, then the
/// matches from the end).
pub fn lcs(a: &[u8], b: &[u8], mode: LcsMode) -> Reply {
    let cells = (a.len() as u64 + 1) * (b.len() as u64 + 1);
    if cells > LCS_CELLS_MAX {
        return Reply::err(format!(
            "LCS of strings this long is refused here ((len1+1) x (len2+1) must be at most {LCS_CELLS_MAX})"
        ));
    }
    let (alen, blen) = (a.len(), b.len());
    let w = blen + 1;
    let mut dp = vec![0u32; (alen + 1) * w];
    for i in 1..=alen {
        for j in 1..=blen {
            dp[i * w + j] = if a[i - 1] == b[j - 1] {
                dp[(i - 1) * w + j - 1] + 1
            } else {
                dp[(i - 1) * w + j].max(dp[i * w + j - 1])
            };
        }
    }
    let total = dp[alen * w + blen] as usize;
    if mode.len {
        return Reply::Int(total as i64);
    }
    let mut result = vec![0u8; total];
    let mut idx = total;
    let mut matches = Vec::new();
    let (mut i, mut j) = (alen, blen);
    let (mut a_start, mut a_end, mut b_start, mut b_end) = (alen, 0, 0, 0);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[idx - 1] = a[i - 1];
            if a_start == alen {
                (a_start, a_end, b_start, b_end) = (i - 1, i - 1, j - 1, j - 1);
            } else if a_start == i && b_start == j {
                a_start -= 1;
                b_start -= 1;
            } else {
                emit = true;
            }
            if a_start == 0 || b_start == 0 {
                emit = true;
            }
            idx -= 1;
            i -= 1;
            j -= 1;
        } else {
            if dp[(i - 1) * w + j] > dp[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            if a_start != alen {
                emit = true;
            }
        }
        if emit {
            let match_len = (a_end - a_start + 1) as u64;
            if mode.min_match_len == 0 || match_len >= mode.min_match_len {
                let mut m = vec![
                    Reply::Array(vec![Reply::Int(a_start as i64), Reply::Int(a_end as i64)]),
                    Reply::Array(vec![Reply::Int(b_start as i64), Reply::Int(b_end as i64)]),
                ];
                if mode.with_match_len {
                    m.push(Reply::Int(match_len as i64));
                }
                matches.push(Reply::Array(m));
            }
            a_start = alen;
        }
    }
    if mode.idx {
        // A map in RESP3, as Redis answers.
        Reply::Map(vec![
            (Reply::text("matches"), Reply::Array(matches)),
            (Reply::text("len"), Reply::Int(total as i64)),
        ])
    } else {
        Reply::Bulk(Bytes::from(result))
    }
}

fn unexpected(r: &KvResult) -> Reply {
    tracing::error!(result = ?r, "unexpected KV result kind");
    Reply::err("internal error: unexpected result kind")
}

/// The reply of a plan of this module from its (non-error) results, in
/// the order of its requests.
pub fn finish(f: Finish, results: Vec<KvResult>) -> Reply {
    let first = results.first();
    let value = || match first {
        Some(KvResult::Value(v)) => Ok(v.clone()),
        Some(r) => Err(unexpected(r)),
        None => Ok(None),
    };
    match f {
        Finish::RandomKey { seed } => {
            let mut keys = Vec::with_capacity(results.len());
            for r in &results {
                match r {
                    KvResult::Value(Some(k)) => keys.push(k.clone()),
                    KvResult::Value(None) => {}
                    r => return unexpected(r),
                }
            }
            // A non-empty group at random (groups of a large keyspace hold
            // about as many keys each).
            if keys.is_empty() {
                Reply::Nil
            } else {
                Reply::Bulk(keys.swap_remove((seed % keys.len() as u64) as usize))
            }
        }
        Finish::Object(field) => match first {
            Some(KvResult::Items(items)) if items.is_empty() => Reply::Nil,
            Some(KvResult::Items(items)) if items.len() == 3 => match field {
                ObjectField::Encoding => Reply::Bulk(items[1].clone()),
                ObjectField::Refcount => Reply::Int(1),
                ObjectField::Idletime => Reply::Int(0),
                ObjectField::Freq => Reply::err(
                    "An LFU maxmemory policy is not selected, access frequency not tracked. \
                     Please note that when switching between policies at runtime LRU and LFU \
                     data will take some time to adjust.",
                ),
                ObjectField::Usage => match std::str::from_utf8(&items[2])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => Reply::Int(n),
                    None => Reply::err("internal error: not a size"),
                },
            },
            Some(r) => unexpected(r),
            None => Reply::Nil,
        },
        Finish::GetBit { offset } => match value() {
            Ok(v) => Reply::Int(i64::from(v.is_some_and(|v| bit_at(&v, offset)))),
            Err(r) => r,
        },
        Finish::BitCount { range } => match value() {
            Ok(v) => Reply::Int(v.map_or(0, |v| bit_count(&v, range))),
            Err(r) => r,
        },
        Finish::BitPos {
            bit,
            start,
            end,
            bits,
        } => match value() {
            Ok(v) => Reply::Int(bit_pos(v.as_deref(), bit, start, end, bits)),
            Err(r) => r,
        },
        Finish::BitFieldRead { ops } => match value() {
            Ok(v) => {
                let v = v.unwrap_or_default();
                let fields = ops.iter().map(|op| bitfield_get(&v, op.ty, op.offset));
                Reply::Array(fields.map(Reply::Int).collect())
            }
            Err(r) => r,
        },
        Finish::BitField => match first {
            Some(KvResult::Ints(fields)) => Reply::Array(
                fields
                    .iter()
                    .map(|f| f.map_or(Reply::Nil, Reply::Int))
                    .collect(),
            ),
            Some(r) => unexpected(r),
            None => Reply::Array(Vec::new()),
        },
        Finish::HllCount => {
            let mut sets = Vec::with_capacity(results.len());
            for r in &results {
                match r {
                    KvResult::Value(None) => {}
                    KvResult::Value(Some(v)) => match hll_registers(v) {
                        Some(registers) => sets.push(registers),
                        None => {
                            return Reply::Error(
                                "WRONGTYPE Key is not a valid HyperLogLog string value.".into(),
                            )
                        }
                    },
                    r => return unexpected(r),
                }
            }
            Reply::Int(hll_estimate(&sets) as i64)
        }
        Finish::Okay => match first {
            Some(KvResult::Ok) => Reply::Ok,
            Some(r) => unexpected(r),
            None => Reply::Ok,
        },
        Finish::Int => match first {
            Some(KvResult::Int(n)) => Reply::Int(*n),
            Some(KvResult::Len(n) | KvResult::Count(n)) => Reply::Int(*n as i64),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::Lcs(mode) => match results.as_slice() {
            [KvResult::Value(ta), KvResult::Value(tb), KvResult::Values(values)]
                if values.len() == 2 =>
            {
                let is_string = |t: &Option<Bytes>| t.as_deref().is_none_or(|t| t == b"string");
                if !is_string(ta) || !is_string(tb) {
                    return Reply::err("The specified keys must contain string values");
                }
                let a = values[0].clone().unwrap_or_default();
                let b = values[1].clone().unwrap_or_default();
                lcs(&a, &b, mode)
            }
            _ => Reply::err("internal error: unexpected LCS results"),
        },
        Finish::Sorted { gets } => match first {
            Some(KvResult::Items(items)) => Reply::Array(
                items
                    .iter()
                    .flat_map(|i| std::iter::repeat_n(i, gets.max(1)))
                    .cloned()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            Some(r) => unexpected(r),
            None => Reply::Array(Vec::new()),
        },
    }
}

/// WAIT's answer: how many replicas besides the leader surely hold every
/// write this connection was answered for. A write is answered once a
/// majority of its group's voters (witnesses included) has it durably, so
/// at least `quorum - witnesses - 1` replicas other than the leader hold
/// its data: the smallest such number over the KV groups `memberships`
/// describe (this node's view of each), 0 if none.
pub fn wait_replicas(memberships: &[flotilla::MembershipInfo]) -> i64 {
    memberships
        .iter()
        .map(|m| {
            let voting = m
                .members
                .iter()
                .filter(|x| {
                    matches!(
                        x.kind,
                        flotilla::MemberKind::Voter | flotilla::MemberKind::Witness
                    )
                })
                .count();
            let witnesses = m
                .members
                .iter()
                .filter(|x| matches!(x.kind, flotilla::MemberKind::Witness))
                .count();
            (voting / 2 + 1).saturating_sub(witnesses + 1) as i64
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    /// Keys route by their first byte: `a...` to group 1, anything else
    /// to group 2.
    fn route(k: &[u8]) -> GroupId {
        GroupId(if k.first() == Some(&b'a') { 1 } else { 2 })
    }

    fn outcome(line: &str) -> Outcome {
        let words = args(line);
        let name = String::from_utf8_lossy(&words[0]).to_ascii_uppercase();
        prepare(&name, &words[1..], &route, &[GroupId(1), GroupId(2)], 7).expect("one of ours")
    }

    fn err_of(line: &str) -> String {
        match outcome(line) {
            Outcome::Reply(Reply::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn plan_of(line: &str) -> (Vec<Sub>, Finish) {
        match outcome(line) {
            Outcome::Plan(subs, f) => (subs, f),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn hyperloglog_commands_plan_register_writes_and_count_reads() {
        // PFADD hashes here: one (register, rank) per register, the
        // largest rank of the elements that fall in it.
        let (subs, f) = plan_of("pfadd bk x y x");
        assert_eq!(f, Finish::Int);
        match &subs[..] {
            [Sub {
                group: GroupId(2),
                op: Op::Write(KvCommand::HllAdd { key, registers }),
            }] => {
                assert_eq!(key, "bk");
                let mut want = vec![hll_register(b"x"), hll_register(b"y")];
                want.sort();
                want.dedup_by_key(|(r, _)| *r);
                assert_eq!(registers, &want);
            }
            other => panic!("{other:?}"),
        }
        let (subs, f) = plan_of("pfcount b1 b2");
        assert_eq!(f, Finish::HllCount);
        assert!(matches!(
            &subs[..],
            [
                Sub {
                    op: Op::Read(KvQuery::Get { .. }),
                    ..
                },
                Sub {
                    op: Op::Read(KvQuery::Get { .. }),
                    ..
                }
            ]
        ));
        let (subs, f) = plan_of("pfmerge bd b1 b2");
        assert_eq!(f, Finish::Okay);
        assert!(
            matches!(&subs[..], [Sub { op: Op::Write(KvCommand::HllMerge { dst, sources }), .. }] if dst == "bd" && sources.len() == 2)
        );
        // Keys of two groups cannot be counted or merged together.
        assert!(err_of("pfcount a1 b1").starts_with("CROSSSLOT"));
        assert!(err_of("pfmerge a1 b1").starts_with("CROSSSLOT"));
        assert_eq!(
            err_of("pfcount"),
            "ERR wrong number of arguments for 'pfcount' command"
        );
        // PFCOUNT of absent keys is 0; of a plain string, Redis' error.
        let absent = || KvResult::Value(None);
        assert_eq!(
            finish(Finish::HllCount, vec![absent(), absent()]),
            Reply::Int(0)
        );
        let plain = KvResult::Value(Some(b("plain")));
        assert_eq!(
            finish(Finish::HllCount, vec![absent(), plain]),
            Reply::Error("WRONGTYPE Key is not a valid HyperLogLog string value.".into())
        );
    }

    #[test]
    fn not_ours() {
        assert!(prepare("GET", &args("k"), &route, &[GroupId(1)], 0).is_none());
    }

    #[test]
    fn arity_and_argument_errors_are_redis_words() {
        for (line, want) in [
            ("wait 1", "ERR wrong number of arguments for 'wait' command"),
            ("wait x 0", "ERR value is not an integer or out of range"),
            ("wait 1 x", "ERR timeout is not an integer or out of range"),
            ("wait x -1", "ERR timeout is negative"),
            ("randomkey x", "ERR wrong number of arguments for 'randomkey' command"),
            ("object", "ERR wrong number of arguments for 'object' command"),
            ("object encoding", "ERR wrong number of arguments for 'object|encoding' command"),
            ("object foo k", "ERR unknown subcommand 'foo'. Try OBJECT HELP."),
            ("memory usage", "ERR wrong number of arguments for 'memory|usage' command"),
            ("memory usage k samples", "ERR syntax error"),
            ("memory usage k samples x", "ERR value is not an integer or out of range"),
            ("memory doctor", "ERR unknown subcommand 'doctor'. Try MEMORY HELP."),
            ("setbit k 1", "ERR wrong number of arguments for 'setbit' command"),
            ("setbit k -1 1", "ERR bit offset is not an integer or out of range"),
            ("setbit k x 1", "ERR bit offset is not an integer or out of range"),
            ("setbit k 536870912 1", "ERR bit offset is not an integer or out of range"),
            ("setbit k 1 2", "ERR bit is not an integer or out of range"),
            ("getbit k x", "ERR bit offset is not an integer or out of range"),
            ("bitcount k 1", "ERR syntax error"),
            ("bitcount k 1 x", "ERR value is not an integer or out of range"),
            ("bitcount k 0 1 bits", "ERR syntax error"),
            ("bitcount k 0 1 bit x", "ERR syntax error"),
            ("bitpos k 2", "ERR The bit argument must be 1 or 0."),
            ("bitpos k x", "ERR value is not an integer or out of range"),
            ("bitpos k 1 0 x", "ERR value is not an integer or out of range"),
            ("bitpos k 1 0 1 nibble", "ERR syntax error"),
            ("bitpos k 1 0 1 bit x", "ERR syntax error"),
            ("bitop and d", "ERR wrong number of arguments for 'bitop' command"),
            ("bitop nand d s", "ERR syntax error"),
            ("bitop not d s t", "ERR BITOP NOT must be called with a single source key."),
            ("bitop or d a", "CROSSSLOT Keys in request don't hash to the same slot"),
            ("lcs k", "ERR wrong number of arguments for 'lcs' command"),
            ("lcs k1 k2 len idx", "ERR If you want both the length and indexes, please just use IDX."),
            ("lcs k1 k2 minmatchlen", "ERR syntax error"),
            ("lcs k1 k2 minmatchlen x", "ERR value is not an integer or out of range"),
            ("lcs k1 k2 foo", "ERR syntax error"),
            ("lcs k1 a", "CROSSSLOT Keys in request don't hash to the same slot"),
            ("zrangestore d s 0", "ERR wrong number of arguments for 'zrangestore' command"),
            ("zrangestore d s 0 -1 withscores", "ERR syntax error"),
            ("zrangestore d s 0 x", "ERR value is not an integer or out of range"),
            ("zrangestore d s x y byscore", "ERR min or max is not a float"),
            (
                "zrangestore d s 0 1 limit 0 1",
                "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
            ),
            ("zrangestore d a 0 1", "CROSSSLOT Keys in request don't hash to the same slot"),
            ("sort", "ERR wrong number of arguments for 'sort' command"),
            ("sort k limit 0", "ERR syntax error"),
            ("sort k limit x 1", "ERR value is not an integer or out of range"),
            ("sort k foo", "ERR syntax error"),
            ("sort_ro k store d", "ERR syntax error"),
            ("sort k by w_*", SORT_BY_DENIED),
            ("sort k get w_*", SORT_GET_DENIED),
            ("sort k store a", "CROSSSLOT Keys in request don't hash to the same slot"),
        ] {
            let got = err_of(line);
            let want = if want.starts_with("ERR") || want.starts_with("CROSSSLOT") {
                want.to_string()
            } else {
                format!("ERR {want}")
            };
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn commands_become_their_requests() {
        assert!(matches!(outcome("wait 0 0"), Outcome::Wait));
        assert!(matches!(outcome("WAIT 2 100"), Outcome::Wait));
        let (subs, f) = plan_of("randomkey");
        assert_eq!(subs.len(), 2, "one pick per group");
        assert_eq!(f, Finish::RandomKey { seed: 7 });
        let (subs, f) = plan_of("setbit k 7 1");
        assert_eq!(subs[0].group, GroupId(2));
        assert!(matches!(
            &subs[0].op,
            Op::Write(KvCommand::SetBit { key, offset: 7, value: true }) if key == "k"
        ));
        assert_eq!(f, Finish::Int);
        let (subs, _) = plan_of("bitop XOR d s t");
        assert!(matches!(
            &subs[0].op,
            Op::Write(KvCommand::BitOp { op: BitOperation::Xor, dst, sources })
                if dst == "d" && sources == &vec![b("s"), b("t")]
        ));
        let (_, f) = plan_of("bitcount k 1 -1 BIT");
        assert_eq!(
            f,
            Finish::BitCount {
                range: Some((1, -1, true))
            }
        );
        let (_, f) = plan_of("bitpos k 0 2");
        assert_eq!(
            f,
            Finish::BitPos {
                bit: false,
                start: Some(2),
                end: None,
                bits: false
            }
        );
        let (subs, f) = plan_of("object encoding k");
        assert!(matches!(&subs[0].op, Op::Read(KvQuery::Describe { key }) if key == "k"));
        assert_eq!(f, Finish::Object(ObjectField::Encoding));
        let (_, f) = plan_of("memory usage k samples 0");
        assert_eq!(f, Finish::Object(ObjectField::Usage));
        let (subs, _) = plan_of("zrangestore dst src (1 +inf byscore rev limit 0 2");
        match &subs[0].op {
            Op::Write(KvCommand::Typed(TypedCommand::ZRangeStore { key, range })) => {
                assert_eq!(key, "dst");
                assert!(matches!(
                    range,
                    TypedQuery::ZRangeByScore {
                        rev: true,
                        with_scores: false,
                        count: Some(2),
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        let (subs, f) = plan_of("sort k by nosort limit -1 -1 desc alpha get # get #");
        assert_eq!(f, Finish::Sorted { gets: 2 });
        assert!(matches!(
            &subs[0].op,
            Op::Read(KvQuery::Typed(TypedQuery::Sort {
                alpha: true,
                desc: true,
                sorted: false,
                offset: 0,
                count: None,
                ..
            }))
        ));
        let (subs, f) = plan_of("sort k limit 1 2 store d");
        assert_eq!(f, Finish::Int);
        assert!(matches!(
            &subs[0].op,
            Op::Write(KvCommand::Typed(TypedCommand::SortStore { key, .. })) if key == "d"
        ));
        let (subs, f) = plan_of("lcs k1 k2 idx minmatchlen 4 withmatchlen");
        assert_eq!(subs.len(), 3);
        assert_eq!(
            f,
            Finish::Lcs(LcsMode {
                len: false,
                idx: true,
                min_match_len: 4,
                with_match_len: true
            })
        );
    }

    #[test]
    fn bitfield_errors_are_redis_words_in_argument_order() {
        const TYPE: &str = "ERR Invalid bitfield type. Use something like i16 u8. \
                            Note that u64 is not supported but i64 is.";
        const OFFSET: &str = "ERR bit offset is not an integer or out of range";
        for (line, want) in [
            (
                "bitfield",
                "ERR wrong number of arguments for 'bitfield' command",
            ),
            (
                "bitfield_ro",
                "ERR wrong number of arguments for 'bitfield_ro' command",
            ),
            ("bitfield k get i8", "ERR syntax error"),
            ("bitfield k set i8 0", "ERR syntax error"),
            ("bitfield k incrby i8 0", "ERR syntax error"),
            ("bitfield k overflow", "ERR syntax error"),
            ("bitfield k foo i8 0", "ERR syntax error"),
            ("bitfield k get i8 0 get", "ERR syntax error"),
            (
                "bitfield k overflow bar",
                "ERR Invalid OVERFLOW type specified",
            ),
            (
                "bitfield k overflow bar get i99 0",
                "ERR Invalid OVERFLOW type specified",
            ),
            ("bitfield k get i99 0 overflow bar", TYPE),
            ("bitfield k get u64 0", TYPE),
            ("bitfield k get i65 0", TYPE),
            ("bitfield k get i0 0", TYPE),
            ("bitfield k get u-1 0", TYPE),
            ("bitfield k get i08 0", TYPE),
            ("bitfield k get x8 0", TYPE),
            ("bitfield k get I8 0", TYPE),
            ("bitfield k get U8 0", TYPE),
            ("bitfield k get i 0", TYPE),
            ("bitfield k set 8 0 1", TYPE),
            ("bitfield k get i8 -1", OFFSET),
            ("bitfield k get i8 x", OFFSET),
            ("bitfield k get i8 #", OFFSET),
            ("bitfield k get i8 #-1", OFFSET),
            ("bitfield k get i8 ##1", OFFSET),
            ("bitfield k get i8 +1", OFFSET),
            ("bitfield k get i8 536870912", OFFSET),
            ("bitfield k get i8 #67108864", OFFSET),
            // n × width past i64: an error, not a wrapped offset.
            ("bitfield k get i64 #9223372036854775807", OFFSET),
            ("bitfield k get u2 #4611686018427387904", OFFSET),
            // A write must end within the largest value.
            ("bitfield k set u8 536870905 1", OFFSET),
            ("bitfield k incrby i64 #8388608 1", OFFSET),
            (
                "bitfield k set i8 0 x",
                "ERR value is not an integer or out of range",
            ),
            (
                "bitfield k incrby i8 0 1.5",
                "ERR value is not an integer or out of range",
            ),
            (
                "bitfield k set i8 0 9223372036854775808",
                "ERR value is not an integer or out of range",
            ),
            ("bitfield k set i8 x y", OFFSET),
            (
                "bitfield_ro k set i8 0 1",
                "ERR BITFIELD_RO only supports the GET subcommand",
            ),
            (
                "bitfield_ro k get i8 0 incrby u2 0 1",
                "ERR BITFIELD_RO only supports the GET subcommand",
            ),
            // Parse errors come before the BITFIELD_RO check.
            (
                "bitfield_ro k set i8 0 x",
                "ERR value is not an integer or out of range",
            ),
            ("bitfield_ro k set i8 0 1 get", "ERR syntax error"),
        ] {
            assert_eq!(err_of(line), want, "{line}");
        }
    }

    #[test]
    fn bitfield_becomes_one_write_or_one_read() {
        use BitFieldOverflow::{Fail, Sat, Wrap};
        let ty = |signed, bits| BitFieldType::new(signed, bits).expect("a type");
        let (subs, f) = plan_of("BITFIELD k set u8 #2 -1 overflow SAT incrby i64 100 -5 oVeRfLoW fail get i3 7 set u63 0 9223372036854775807");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].group, GroupId(2));
        assert_eq!(f, Finish::BitField);
        let Op::Write(KvCommand::BitField { key, ops }) = &subs[0].op else {
            panic!("{:?}", subs[0].op);
        };
        assert_eq!(key, "k");
        assert_eq!(
            ops,
            &vec![
                BitFieldOp {
                    action: BitFieldAction::Set(-1),
                    ty: ty(false, 8),
                    offset: 16,
                    overflow: Wrap
                },
                BitFieldOp {
                    action: BitFieldAction::IncrBy(-5),
                    ty: ty(true, 64),
                    offset: 100,
                    overflow: Sat
                },
                BitFieldOp {
                    action: BitFieldAction::Get,
                    ty: ty(true, 3),
                    offset: 7,
                    overflow: Fail
                },
                BitFieldOp {
                    action: BitFieldAction::Set(i64::MAX),
                    ty: ty(false, 63),
                    offset: 0,
                    overflow: Fail
                },
            ]
        );
        // Only GETs (and OVERFLOW): a read, for BITFIELD and BITFIELD_RO.
        for line in [
            "bitfield a get u4 #3 overflow sat get i64 536870848",
            "bitfield_ro a get u4 12 overflow sat get i64 536870848",
        ] {
            let (subs, f) = plan_of(line);
            assert!(
                matches!(&subs[..], [Sub { group: GroupId(1), op: Op::Read(KvQuery::Get { key }) }] if key == "a"),
                "{line}"
            );
            assert_eq!(
                f,
                Finish::BitFieldRead {
                    ops: vec![
                        BitFieldOp {
                            action: BitFieldAction::Get,
                            ty: ty(false, 4),
                            offset: 12,
                            overflow: Wrap
                        },
                        BitFieldOp {
                            action: BitFieldAction::Get,
                            ty: ty(true, 64),
                            offset: 536870848,
                            overflow: Sat
                        },
                    ]
                },
                "{line}"
            );
        }
        let (_, f) = plan_of("bitfield k");
        assert_eq!(f, Finish::BitFieldRead { ops: vec![] });
        // The last bit of the largest value can be written.
        let (subs, _) = plan_of("bitfield k set u8 536870904 1");
        assert!(matches!(&subs[0].op, Op::Write(KvCommand::BitField { .. })));
    }

    #[test]
    fn bitfield_replies_are_integers_and_nils() {
        let ops = match plan_of("bitfield k get i8 0 get u4 4 get i16 4 get u8 100") {
            (_, Finish::BitFieldRead { ops }) => ops,
            other => panic!("{other:?}"),
        };
        let read = |v: Option<&'static [u8]>| {
            finish(
                Finish::BitFieldRead { ops: ops.clone() },
                vec![KvResult::Value(v.map(Bytes::from_static))],
            )
        };
        let ints = |v: &[i64]| Reply::Array(v.iter().map(|n| Reply::Int(*n)).collect());
        assert_eq!(read(Some(b"\xf5\x30")), ints(&[-11, 5, 0x5300, 0]));
        assert_eq!(read(None), ints(&[0, 0, 0, 0]));
        assert_eq!(
            finish(
                Finish::BitField,
                vec![KvResult::Ints(vec![Some(-1), None, Some(7)])]
            ),
            Reply::Array(vec![Reply::Int(-1), Reply::Nil, Reply::Int(7)])
        );
        assert_eq!(
            finish(Finish::BitField, vec![KvResult::Int(1)]),
            Reply::err("internal error: unexpected result kind")
        );
    }

    #[test]
    fn bits_count_and_positions_like_redis() {
        // redis.io BITCOUNT: "foobar".
        let v = b"foobar";
        assert_eq!(bit_count(v, None), 26);
        assert_eq!(bit_count(v, Some((0, 0, false))), 4);
        assert_eq!(bit_count(v, Some((1, 1, false))), 6);
        assert_eq!(bit_count(v, Some((1, 1, true))), 1);
        assert_eq!(bit_count(v, Some((5, 30, true))), 17);
        assert_eq!(bit_count(v, Some((-2, -1, false))), 7);
        assert_eq!(bit_count(v, Some((3, 1, false))), 0);
        assert_eq!(bit_count(b"", Some((0, -1, false))), 0);
        // redis.io BITPOS: "\xff\xf0\x00".
        let v = b"\xff\xf0\x00";
        assert_eq!(bit_pos(Some(v), false, None, None, false), 12);
        let v = b"\x00\xff\xf0";
        assert_eq!(bit_pos(Some(v), true, Some(0), None, false), 8);
        assert_eq!(bit_pos(Some(v), true, Some(2), None, false), 16);
        assert_eq!(bit_pos(Some(v), true, Some(2), Some(-1), false), 16);
        assert_eq!(
            bit_pos(Some(b"\x00\x00\x00"), true, Some(7), Some(-3), true),
            -1
        );
        assert_eq!(bit_pos(Some(v), true, Some(7), Some(15), true), 8);
        assert_eq!(bit_pos(Some(v), true, Some(9), Some(-3), true), 9);
        assert_eq!(bit_pos(Some(b"\x00\x00\x00"), true, None, None, false), -1);
        // Clear bits: the string goes on with zeros unless an end is given.
        assert_eq!(bit_pos(Some(b"\xff\xff"), false, None, None, false), 16);
        assert_eq!(bit_pos(Some(b"\xff\xff"), false, Some(0), None, false), 16);
        assert_eq!(
            bit_pos(Some(b"\xff\xff"), false, Some(0), Some(-1), false),
            -1
        );
        assert_eq!(
            bit_pos(Some(b"\xff\xff"), false, Some(3), Some(9), true),
            -1
        );
        assert_eq!(bit_pos(None, true, None, None, false), -1);
        assert_eq!(bit_pos(None, false, None, None, false), 0);
        assert_eq!(bit_pos(Some(b"\xff"), true, Some(2), Some(1), false), -1);
    }

    fn mode(len: bool, idx: bool, min: u64, with: bool) -> LcsMode {
        LcsMode {
            len,
            idx,
            min_match_len: min,
            with_match_len: with,
        }
    }

    fn i2(a: i64, b: i64) -> Reply {
        Reply::Array(vec![Reply::Int(a), Reply::Int(b)])
    }

    #[test]
    fn lcs_answers_redis_io_examples() {
        let (a, b) = (&b"ohmytext"[..], &b"mynewtext"[..]);
        assert_eq!(
            lcs(a, b, mode(false, false, 0, false)),
            Reply::text("mytext")
        );
        assert_eq!(lcs(a, b, mode(true, false, 0, false)), Reply::Int(6));
        let m = |a0, a1, b0, b1| Reply::Array(vec![i2(a0, a1), i2(b0, b1)]);
        assert_eq!(
            lcs(a, b, mode(false, true, 0, false)),
            Reply::Map(vec![
                (
                    Reply::text("matches"),
                    Reply::Array(vec![m(4, 7, 5, 8), m(2, 3, 0, 1)])
                ),
                (Reply::text("len"), Reply::Int(6)),
            ])
        );
        assert_eq!(
            lcs(a, b, mode(false, true, 4, true)),
            Reply::Map(vec![
                (
                    Reply::text("matches"),
                    Reply::Array(vec![Reply::Array(vec![i2(4, 7), i2(5, 8), Reply::Int(4)])])
                ),
                (Reply::text("len"), Reply::Int(6)),
            ])
        );
        assert_eq!(
            lcs(b"", b"abc", mode(false, false, 0, false)),
            Reply::text("")
        );
        let long = vec![b'x'; 5000];
        assert!(matches!(
            lcs(&long, &long, mode(true, false, 0, false)),
            Reply::Error(_)
        ));
    }

    #[test]
    fn finishes_shape_replies() {
        let f = |f, r: Vec<KvResult>| finish(f, r);
        assert_eq!(
            f(
                Finish::RandomKey { seed: 3 },
                vec![KvResult::Value(None), KvResult::Value(None)]
            ),
            Reply::Nil
        );
        assert_eq!(
            f(
                Finish::RandomKey { seed: 3 },
                vec![KvResult::Value(None), KvResult::Value(Some(b("k")))]
            ),
            Reply::Bulk(b("k"))
        );
        let described = || vec![KvResult::Items(vec![b("string"), b("embstr"), b("70")])];
        assert_eq!(
            f(Finish::Object(ObjectField::Encoding), described()),
            Reply::Bulk(b("embstr"))
        );
        assert_eq!(
            f(Finish::Object(ObjectField::Usage), described()),
            Reply::Int(70)
        );
        assert_eq!(
            f(Finish::Object(ObjectField::Refcount), described()),
            Reply::Int(1)
        );
        assert_eq!(
            f(Finish::Object(ObjectField::Idletime), described()),
            Reply::Int(0)
        );
        assert!(matches!(
            f(Finish::Object(ObjectField::Freq), described()),
            Reply::Error(e) if e.starts_with("ERR An LFU maxmemory policy is not selected")
        ));
        assert_eq!(
            f(
                Finish::Object(ObjectField::Usage),
                vec![KvResult::Items(vec![])]
            ),
            Reply::Nil
        );
        assert_eq!(
            f(
                Finish::GetBit { offset: 7 },
                vec![KvResult::Value(Some(b("\u{1}")))]
            ),
            Reply::Int(1)
        );
        assert_eq!(
            f(Finish::GetBit { offset: 700 }, vec![KvResult::Value(None)]),
            Reply::Int(0)
        );
        let lcs_results = |ta: Option<&str>| {
            vec![
                KvResult::Value(ta.map(b)),
                KvResult::Value(None),
                KvResult::Values(vec![Some(b("ab")), None]),
            ]
        };
        let m = mode(true, false, 0, false);
        assert_eq!(
            f(Finish::Lcs(m), lcs_results(Some("string"))),
            Reply::Int(0)
        );
        assert_eq!(
            f(Finish::Lcs(m), lcs_results(Some("list"))),
            Reply::err("The specified keys must contain string values")
        );
        assert_eq!(
            f(
                Finish::Sorted { gets: 2 },
                vec![KvResult::Items(vec![b("1"), b("2")])]
            ),
            Reply::Array(vec![
                Reply::Bulk(b("1")),
                Reply::Bulk(b("1")),
                Reply::Bulk(b("2")),
                Reply::Bulk(b("2")),
            ])
        );
    }

    #[test]
    fn wait_counts_replicas_beyond_the_quorums_leader() {
        use flotilla::{MemberInfo, MemberKind, MembershipInfo, NodeId};
        let group = |kinds: &[MemberKind]| MembershipInfo {
            config_index: 0,
            members: kinds
                .iter()
                .enumerate()
                .map(|(i, k)| MemberInfo {
                    node: NodeId(i as u64 + 1),
                    kind: *k,
                    address: String::new(),
                })
                .collect(),
        };
        use MemberKind::{Observer, Voter, Witness};
        assert_eq!(wait_replicas(&[]), 0);
        assert_eq!(wait_replicas(&[group(&[Voter])]), 0);
        assert_eq!(wait_replicas(&[group(&[Voter, Voter, Voter])]), 1);
        assert_eq!(wait_replicas(&[group(&[Voter; 5])]), 2);
        assert_eq!(wait_replicas(&[group(&[Voter, Voter, Voter, Observer])]), 1);
        assert_eq!(wait_replicas(&[group(&[Voter, Voter, Witness])]), 0);
        assert_eq!(
            wait_replicas(&[group(&[Voter; 5]), group(&[Voter, Voter, Voter])]),
            1,
            "the smallest over the groups"
        );
    }
}
