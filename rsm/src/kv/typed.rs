//! Commands and queries of the Redis data types (lists, hashes, sets,
//! sorted sets, streams) and their byte encodings.
//!
//! They travel inside [`KvCommand::Typed`](super::KvCommand::Typed) and
//! [`KvQuery::Typed`](super::KvQuery::Typed) with tags of their own, next to
//! the string commands' tags (which are unchanged). Same conventions as
//! the string commands: little-endian; `bytes` is `len u32 | data`; `list`
//! is `count u32 | bytes *`; `pairs` is `count u32 | (bytes bytes) *`;
//! `ou64` is `0u8` or `1u8 | u64`; `f64` is its IEEE-754 bits as a `u64`;
//! flags are `u8` 0/1.
//!
//! ```text
//! command 0x30 ListPush   | key | left u8 | only_existing u8 | values list |
//!         0x31 ListPop    | key | left u8 | count ou64 |
//!         0x32 ListSet    | key | index i64 | value bytes |
//!         0x33 ListRem    | key | count i64 | value bytes |
//!         0x34 ListTrim   | key | start i64 | stop i64 |
//!         0x35 ListInsert | key | after u8 | pivot bytes | value bytes |
//!         0x36 ListMove   | src key | dst bytes | from_left u8 | to_left u8 |
//!         0x37 MultiPop   | keys list (≥ 1) | zset u8 | end u8 | count u64 |
//!         0x38 SetAdd     | key | members list |
//!         0x39 SetRem     | key | members list |
//!         0x3a SetPop     | key | count ou64 | seed u64 |
//!         0x3b SetMove    | src key | dst bytes | member bytes |
//!         0x3c SetInterStore | dst key | sources list |   0x3d SetUnionStore (same)
//!         0x3e SetDiffStore  | dst key | sources list |
//!         0x40 HashSet    | key | only_new u8 | pairs |
//!         0x41 HashDel    | key | fields list |
//!         0x42 HashIncrBy | key | field bytes | delta i64 |
//!         0x43 HashIncrByFloat | key | field bytes | delta f64 |
//!         0x44 ZUnionStore | dst key | sources list | weights | aggregate u8 (0 sum, 1 min, 2 max) |
//!         0x45 ZInterStore (same)          0x46 ZDiffStore | dst key | sources list |
//!         0x48 ZAdd       | key | condition u8 (0 always, 1 NX, 2 XX) |
//!                         | compare u8 (0 none, 1 GT, 2 LT) | changed u8 | incr u8 |
//!                         | count u32 | (score f64 | member bytes) * |
//!         0x49 ZRem       | key | members list |
//!         0x4a ZPop       | key | max u8 | count ou64 |
//!         0x4b ZRemRangeByScore | key | range |
//!         0x4c ZRemRangeByRank  | key | start i64 | stop i64 |
//!         0x4d ZRemRangeByLex   | key | min bytes | max bytes |
//!         0x47 ZRangeStore | dst key | range bytes (an encoded ZRange, ZRangeByScore or ZRangeByLex query) |
//!         0x4e SortStore  | dst key | sort bytes (an encoded Sort query) |
//!         0x50 XAdd       | key | id kind u8 (0 auto, 1 explicit, 2 auto seq) | ms u64 | seq u64 |
//!                         | maxlen ou64 | no_mkstream u8 | fields list |
//!                         (an XAdd without a trim or with a MAXLEN trim without LIMIT)
//!         0x52 XAdd       | key | id kind u8 | ms u64 | seq u64 | trim | no_mkstream u8 | fields list |
//!                         (any other XAdd)
//!         0x51 XTrim      | key | trim |
//!         0x53 XDel       | key | count u32 | (ms u64 | seq u64) * |
//!         0x54 XSetId     | key | ms u64 | seq u64 | entries_added ou64 |
//! query   0x60 Type       | key |
//!         0x61 ListLen    | key |          0x62 ListRange | key | start i64 | stop i64 |
//!         0x63 ListIndex  | key | index i64 |
//!         0x65 Sort       | key | alpha u8 | desc u8 | sorted u8 | offset u64 | count ou64 |
//!         0x64 ListPos    | key | element bytes | rank i64 | count ou64 | maxlen u64 |
//!         0x68 SetMembers | key |          0x69 SetIsMember | key | member bytes |
//!         0x6a SetCard    | key |          0x6b SetRandMember | key | count 0u8 or 1u8 i64 | seed u64 |
//!         0x6c SetInter   | key | others list |   0x6d SetUnion (same)   0x6e SetDiff (same)
//!         0x6f SetInterCard | key | others list | limit u64 (0: none) |
//!         0x70 HashGet    | key | field |  0x71 HashMGet | key | fields list |
//!         0x72 HashLen    | key |          0x73 HashExists | key | field |
//!         0x74 HashGetAll | key |          0x75 HashKeys | key |   0x76 HashVals | key |
//!         0x77 HashStrLen | key | field |
//!         0x78 ZScore     | key | member | 0x79 ZCard | key |
//!         0x7a ZRange     | key | start i64 | stop i64 | rev u8 | with_scores u8 |
//!         0x7b ZRank      | key | member | rev u8 |
//!         0x7c ZRangeByScore | key | range | rev u8 | with_scores u8 | offset u64 | count ou64 |
//!         0x7d ZCount     | key | range |      0x7e ZMScore | key | members list |
//!         0x7f ZRangeByLex | key | min bytes | max bytes | rev u8 | offset u64 | count ou64 |
//!         0x80 StreamLen  | key |
//!         0x81 StreamRange| key | start ms u64 seq u64 | end ms u64 seq u64 | count ou64 | rev u8 |
//!         0x88 ScanType   | start bytes | end opt | limit u32 | type bytes |
//!         0x89 HashRandField | key | count 0u8 or 1u8 i64 | with_values u8 | seed u64 |
//!         0x8a SetMIsMember  | key | members list |
//!         0x8b ZLexCount     | key | min bytes | max bytes |
//!         0x8c ZRandMember   | key | count 0u8 or 1u8 i64 | with_scores u8 | seed u64 |
//!         0x8d ZUnion        | key | others list | weights | aggregate u8 | with_scores u8 |
//!         0x8e ZInter (same)   0x8f ZDiff | key | others list | with_scores u8 |
//!         0x90 ZInterCard    | key | others list | limit u64 (0: none) |
//! ```
//! (`key` is `bytes`; `range` is `min f64 | min_exclusive u8 | max f64 |
//! max_exclusive u8`, Redis' `(` bounds; a lex `min`/`max` is Redis'
//! text, `-`, `+`, `[member` or `(member`, anything else refused;
//! `weights` is `count u32 | f64 *`, none or one per source; `trim` is
//! `kind u8 (0 MAXLEN, 1 MINID) | len or ms u64 | seq u64 (0 for MAXLEN) |
//! limit u64`.) Free tags:
//! commands 0x37, 0x3f, 0x4f, 0x55..=0x5f; queries
//! 0x66, 0x67, 0x82..=0x87, 0x91..=0x9f. Unknown tags and flag bytes other than 0/1 are
//! rejected with a [`DecodeError`], never a panic.

use bytes::{BufMut, Bytes, BytesMut};

use super::collection::LexBound;
use super::command::{
    get_bool, get_keys, get_opt, put_keys, put_opt, DECODE_BYTES_MAX, KEYS_PER_COMMAND_MAX,
};
use crate::codec::{put_bytes, put_count, Reader};
use crate::error::DecodeError;

/// How far a stream trim goes (`MAXLEN` / `MINID` of XADD and XTRIM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimThreshold {
    /// Keep at most this many entries (`MAXLEN`).
    MaxLen(u64),
    /// Evict the entries with ids below `ms-seq` (`MINID`).
    MinId {
        /// Milliseconds part.
        ms: u64,
        /// Sequence part.
        seq: u64,
    },
}

/// A stream trim of [`TypedCommand::XAdd`] or [`TypedCommand::XTrim`].
///
/// Redis' approximate trim (`~`) evicts only whole radix-tree nodes; the
/// streams here have no nodes, so `~` trims entry by entry, exactly like
/// `=`, except that `limit` caps the entries it evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTrim {
    /// Where to trim to.
    pub threshold: TrimThreshold,
    /// Evict at most this many entries (`~ ... LIMIT n`); 0: no limit.
    pub limit: u64,
}

impl StreamTrim {
    /// `MAXLEN len`, without a limit.
    pub fn max_len(len: u64) -> Self {
        StreamTrim {
            threshold: TrimThreshold::MaxLen(len),
            limit: 0,
        }
    }
}

fn put_trim(out: &mut BytesMut, t: &StreamTrim) {
    let (kind, a, b) = match t.threshold {
        TrimThreshold::MaxLen(n) => (0, n, 0),
        TrimThreshold::MinId { ms, seq } => (1, ms, seq),
    };
    out.put_u8(kind);
    out.put_u64_le(a);
    out.put_u64_le(b);
    out.put_u64_le(t.limit);
}

fn get_trim(r: &mut Reader) -> Result<StreamTrim, DecodeError> {
    let kind = r.u8()?;
    let a = r.u64()?;
    let b = r.u64()?;
    let limit = r.u64()?;
    let threshold = match kind {
        0 if b == 0 => TrimThreshold::MaxLen(a),
        0 => {
            return Err(DecodeError::Invalid {
                what: "maxlen trim with a sequence",
            })
        }
        1 => TrimThreshold::MinId { ms: a, seq: b },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "stream trim kind",
                tag,
            })
        }
    };
    Ok(StreamTrim { threshold, limit })
}

/// The condition of a [`TypedCommand::ZAdd`] (`NX` / `XX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZAddCondition {
    /// Add new members and update existing ones.
    Always,
    /// Only add new members (`NX`).
    IfAbsent,
    /// Only update existing members (`XX`).
    IfPresent,
}

/// The score comparison of a [`TypedCommand::ZAdd`] (`GT` / `LT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZAddCompare {
    /// Update whatever the new score.
    None,
    /// Update only if the new score is greater (`GT`).
    Greater,
    /// Update only if the new score is less (`LT`).
    Less,
}

/// The id of a [`TypedCommand::XAdd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAddId {
    /// `*`: the proposer's wall clock `now_ms`; the stream assigns
    /// `max(now_ms-0, last + 1)`, so the id is the same on every replica.
    Auto {
        /// Milliseconds since the Unix epoch at the proposer.
        now_ms: u64,
    },
    /// `<ms>-<seq>`: must be greater than the stream's last id.
    Explicit {
        /// Milliseconds part.
        ms: u64,
        /// Sequence part.
        seq: u64,
    },
    /// `<ms>-*`: the next sequence number within `ms`.
    AutoSeq {
        /// Milliseconds part.
        ms: u64,
    },
}

/// A write to a collection key (Redis list, set, hash, sorted set and
/// stream commands). Applied in log order; a key of another type answers
/// [`KvError::WrongType`](super::KvError::WrongType); a collection emptied
/// by a command disappears (streams excepted, as in Redis).
#[derive(Debug, Clone, PartialEq)]
pub enum TypedCommand {
    /// `LPUSH`/`RPUSH` (`LPUSHX`/`RPUSHX` with `only_existing`): result
    /// [`KvResult::Len`](super::KvResult::Len), the new length (0 if
    /// `only_existing` and absent).
    ListPush {
        /// The key.
        key: Bytes,
        /// Push at the head.
        left: bool,
        /// Only if the list exists.
        only_existing: bool,
        /// The values, pushed one after the other.
        values: Vec<Bytes>,
    },
    /// `LPOP`/`RPOP`: without count [`KvResult::Value`](super::KvResult::Value);
    /// with count [`KvResult::Items`](super::KvResult::Items), or
    /// `Value(None)` if the key is absent (Redis' nil array).
    ListPop {
        /// The key.
        key: Bytes,
        /// Pop from the head.
        left: bool,
        /// How many (`None`: one, replied as a single value).
        count: Option<u64>,
    },
    /// `LSET`: result `Ok`, or `NoSuchKey` / `IndexOutOfRange`.
    ListSet {
        /// The key.
        key: Bytes,
        /// The index (negative from the end).
        index: i64,
        /// The new value.
        value: Bytes,
    },
    /// `LREM`: result `Count` of removed elements.
    ListRem {
        /// The key.
        key: Bytes,
        /// > 0: first `count` from the head; < 0: from the tail; 0: all.
        count: i64,
        /// The value to remove.
        value: Bytes,
    },
    /// `LTRIM`: result `Ok`.
    ListTrim {
        /// The key.
        key: Bytes,
        /// First index kept.
        start: i64,
        /// Last index kept.
        stop: i64,
    },
    /// `LINSERT`: result `Int`, the new length, -1 if `pivot` is not in
    /// the list, 0 if the key is absent.
    ListInsert {
        /// The key.
        key: Bytes,
        /// Insert after the pivot (else before).
        after: bool,
        /// The first element equal to this is the pivot.
        pivot: Bytes,
        /// The element inserted.
        value: Bytes,
    },
    /// `LMOVE` (`RPOPLPUSH`: from the right, to the left): pops an element
    /// of `key` and pushes it on `dst` (which may be `key`: a rotation).
    /// Result `Value`, the element moved (`None` if `key` is absent).
    /// Both keys must live in one group (the RESP layer checks).
    ListMove {
        /// The source list.
        key: Bytes,
        /// The destination list.
        dst: Bytes,
        /// Pop from the head of the source.
        from_left: bool,
        /// Push at the head of the destination.
        to_left: bool,
    },
    /// `SADD`: result `Count` of new members.
    SetAdd {
        /// The key.
        key: Bytes,
        /// The members.
        members: Vec<Bytes>,
    },
    /// `SREM`: result `Count` of removed members.
    SetRem {
        /// The key.
        key: Bytes,
        /// The members.
        members: Vec<Bytes>,
    },
    /// `SPOP`: members picked by a pseudo-random sequence seeded with
    /// `seed` (chosen by the proposer: the same picks on every replica).
    /// Without count `Value`; with count `Items`.
    SetPop {
        /// The key.
        key: Bytes,
        /// How many (`None`: one, replied as a single value).
        count: Option<u64>,
        /// The proposer's random seed.
        seed: u64,
    },
    /// `SMOVE`: result `Count` 1 if `member` moved from `key` to `dst`
    /// (or is in `key` when `dst == key`), else 0.
    SetMove {
        /// The source set.
        key: Bytes,
        /// The destination set.
        dst: Bytes,
        /// The member.
        member: Bytes,
    },
    /// `SINTERSTORE`: `key` becomes the intersection of `sources` (in the
    /// order of [`TypedQuery::SetInter`]), whatever it held before (its
    /// deadline dropped); an empty result deletes it. Result `Count`, the
    /// new size.
    SetInterStore {
        /// The destination.
        key: Bytes,
        /// The sets (at least one).
        sources: Vec<Bytes>,
    },
    /// `SUNIONSTORE`: as [`TypedCommand::SetInterStore`], the union.
    SetUnionStore {
        /// The destination.
        key: Bytes,
        /// The sets (at least one).
        sources: Vec<Bytes>,
    },
    /// `SDIFFSTORE`: as [`TypedCommand::SetInterStore`], the members of
    /// the first source in none of the others.
    SetDiffStore {
        /// The destination.
        key: Bytes,
        /// The sets (at least one).
        sources: Vec<Bytes>,
    },
    /// `HSET` (`HSETNX` with `only_new`): result `Count` of new fields.
    HashSet {
        /// The key.
        key: Bytes,
        /// Set only fields that do not exist.
        only_new: bool,
        /// Field, value pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `HDEL`: result `Count` of removed fields.
    HashDel {
        /// The key.
        key: Bytes,
        /// The fields.
        fields: Vec<Bytes>,
    },
    /// `HINCRBY`: result `Int`, or `HashNotInteger` / `Overflow`.
    HashIncrBy {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The amount.
        delta: i64,
    },
    /// `HINCRBYFLOAT`: result `Value`, the new value as stored (see
    /// `format_incr_float`: 15 significant digits, fixed notation), or
    /// [`KvError::HashNotFloat`](super::KvError::HashNotFloat) /
    /// [`KvError::NanOrInfinity`](super::KvError::NanOrInfinity); then
    /// nothing changes.
    HashIncrByFloat {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// The amount (finite; the RESP layer checks).
        delta: f64,
    },
    /// `ZADD` (and `ZINCRBY`: `incr` with one pair): result `Count` of added
    /// (with `changed`: added or updated) members; with `incr` the new score
    /// as `Value` (`None` if the conditions stopped it).
    ZAdd {
        /// The key.
        key: Bytes,
        /// NX / XX.
        condition: ZAddCondition,
        /// GT / LT.
        compare: ZAddCompare,
        /// CH: count updated members too.
        changed: bool,
        /// INCR: add the score to the current one.
        incr: bool,
        /// Score, member pairs.
        pairs: Vec<(f64, Bytes)>,
    },
    /// `ZREM`: result `Count`.
    ZRem {
        /// The key.
        key: Bytes,
        /// The members.
        members: Vec<Bytes>,
    },
    /// `LMPOP` / `ZMPOP`: pops up to `count` elements from the first of
    /// `keys` that holds any, as [`TypedCommand::ListPop`] (from the head
    /// if `end`) or [`TypedCommand::ZPop`] (the highest scores if `end`)
    /// with that count would. Result `Items`: that key, then what was
    /// popped (member, score, ... for a sorted set); empty if every key is
    /// absent. A key of the wrong type on the way answers `WrongType`.
    MultiPop {
        /// The keys, in order (at least one; the first routes it).
        keys: Vec<Bytes>,
        /// Sorted sets, not lists.
        zset: bool,
        /// Lists: the head (`LEFT`); sorted sets: the highest (`MAX`).
        end: bool,
        /// Most elements (at least 1).
        count: u64,
    },
    /// `ZPOPMIN` / `ZPOPMAX`: result `Items`, member, score, member, score...
    ZPop {
        /// The key.
        key: Bytes,
        /// Pop the highest scores.
        max: bool,
        /// How many (`None`: one).
        count: Option<u64>,
    },
    /// `ZREMRANGEBYSCORE`: result `Count` of removed members.
    ZRemRangeByScore {
        /// The key.
        key: Bytes,
        /// Lowest score.
        min: f64,
        /// `(min`: scores equal to `min` are out.
        min_exclusive: bool,
        /// Highest score.
        max: f64,
        /// `(max`: scores equal to `max` are out.
        max_exclusive: bool,
    },
    /// `ZREMRANGEBYRANK`: result `Count` of removed members (ranks as
    /// `ZRANGE`'s indexes).
    ZRemRangeByRank {
        /// The key.
        key: Bytes,
        /// First rank.
        start: i64,
        /// Last rank (inclusive).
        stop: i64,
    },
    /// `ZUNIONSTORE`: `key` becomes the union of `sources` (sorted sets,
    /// or sets whose members score 1; absent keys are empty), each score
    /// times its source's weight (none: all 1; a NaN product is 0),
    /// combined by `aggregate` (0 SUM, where `inf + -inf` is 0; 1 MIN; 2
    /// MAX), in source order; whatever `key` held before is replaced (its
    /// deadline dropped), an empty result deletes it. Result `Count`, the
    /// new size.
    ZUnionStore {
        /// The destination.
        key: Bytes,
        /// The sources (at least one).
        sources: Vec<Bytes>,
        /// One per source, or none.
        weights: Vec<f64>,
        /// 0 SUM, 1 MIN, 2 MAX.
        aggregate: u8,
    },
    /// `ZINTERSTORE`: as [`TypedCommand::ZUnionStore`], the members in
    /// every source.
    ZInterStore {
        /// The destination.
        key: Bytes,
        /// The sources (at least one).
        sources: Vec<Bytes>,
        /// One per source, or none.
        weights: Vec<f64>,
        /// 0 SUM, 1 MIN, 2 MAX.
        aggregate: u8,
    },
    /// `ZDIFFSTORE`: as [`TypedCommand::ZUnionStore`], the members of the
    /// first source in none of the others, with their first score.
    ZDiffStore {
        /// The destination.
        key: Bytes,
        /// The sources (at least one).
        sources: Vec<Bytes>,
    },
    /// `ZREMRANGEBYLEX`: result `Count` of removed members (see
    /// [`TypedQuery::ZRangeByLex`] for the range).
    ZRemRangeByLex {
        /// The key.
        key: Bytes,
        /// `-`, `[member` or `(member`.
        min: Bytes,
        /// `+`, `[member` or `(member`.
        max: Bytes,
    },
    /// `ZRANGESTORE`: the members `range` (a [`TypedQuery::ZRange`],
    /// [`TypedQuery::ZRangeByScore`] or [`TypedQuery::ZRangeByLex`] of the
    /// source) selects, with their scores, replace `key` whatever it held
    /// (its deadline dropped); an empty selection deletes `key`. Result
    /// `Count`, the members stored.
    ZRangeStore {
        /// The destination.
        key: Bytes,
        /// What to copy.
        range: TypedQuery,
    },
    /// `SORT ... STORE key`: what `sort` (a [`TypedQuery::Sort`]) answers
    /// replaces `key` as a list (its deadline dropped); an empty answer
    /// deletes `key`. Result `Count`, the elements stored.
    SortStore {
        /// The destination.
        key: Bytes,
        /// The sort.
        sort: TypedQuery,
    },
    /// `XADD`: result `Value`, the new entry's id (`None` if `no_mkstream`
    /// and absent), or `StreamIdTooSmall` / `StreamIdZero`.
    XAdd {
        /// The key.
        key: Bytes,
        /// The id.
        id: XAddId,
        /// Trim after adding.
        trim: Option<StreamTrim>,
        /// Do not create the stream.
        no_mkstream: bool,
        /// Field, value, field, value...
        fields: Vec<Bytes>,
    },
    /// `XTRIM`: result `Count`, the entries evicted (0 for an absent key,
    /// which stays absent).
    XTrim {
        /// The key.
        key: Bytes,
        /// The trim.
        trim: StreamTrim,
    },
    /// `XDEL`: result `Count`, the entries deleted. The stream stays,
    /// even empty (as in Redis).
    XDel {
        /// The key.
        key: Bytes,
        /// The ids (ms, seq) to delete.
        ids: Vec<(u64, u64)>,
    },
    /// `XSETID`: sets the stream's last id. Result `Ok`, or `NoSuchKey`
    /// (absent key), `XSetIdTooSmall` (below the stream's greatest
    /// entry), `XSetIdEntriesAdded` (`entries_added` below its length).
    /// `entries_added` is only checked: a stream keeps no count of the
    /// entries ever added (nor a max deleted id).
    XSetId {
        /// The key.
        key: Bytes,
        /// The new last id (ms, seq).
        last: (u64, u64),
        /// `ENTRIESADDED`.
        entries_added: Option<u64>,
    },
}

/// A read of a collection key. A key of another type answers
/// [`KvError::WrongType`](super::KvError::WrongType); an absent key reads
/// as an empty collection.
///
/// Two queries are equal if their encodings are: score bounds compare by
/// their bits, so equality is total (`Eq`) although some carry `f64`s.
#[derive(Debug, Clone)]
pub enum TypedQuery {
    /// `TYPE`: `Value(Some(name))` (`string`, `list`, `hash`, `set`,
    /// `zset`, `stream`) or `Value(None)`.
    Type {
        /// The key.
        key: Bytes,
    },
    /// `LLEN`: `Len`.
    ListLen {
        /// The key.
        key: Bytes,
    },
    /// `LRANGE`: `Items`.
    ListRange {
        /// The key.
        key: Bytes,
        /// First index.
        start: i64,
        /// Last index (inclusive).
        stop: i64,
    },
    /// `LINDEX`: `Value`.
    ListIndex {
        /// The key.
        key: Bytes,
        /// The index.
        index: i64,
    },
    /// `LPOS`: the indexes of the elements equal to `element`, skipping
    /// the first `|rank| - 1` matches (from the tail if `rank < 0`) and
    /// looking at no more than `maxlen` elements (0: all). Without
    /// `count`: `Int` or `Value(None)`; with `count` (0: all matches):
    /// `Items`, each index in decimal.
    ListPos {
        /// The key.
        key: Bytes,
        /// The element looked for.
        element: Bytes,
        /// Which match comes first (not 0).
        rank: i64,
        /// How many matches.
        count: Option<u64>,
        /// How many elements to compare at most (0: no limit).
        maxlen: u64,
    },
    /// `SMEMBERS`: `Items`.
    SetMembers {
        /// The key.
        key: Bytes,
    },
    /// `SISMEMBER`: `Count` 0 or 1.
    SetIsMember {
        /// The key.
        key: Bytes,
        /// The member.
        member: Bytes,
    },
    /// `SCARD`: `Count`.
    SetCard {
        /// The key.
        key: Bytes,
    },
    /// `SRANDMEMBER`: without count `Value`; with count `Items` (count > 0:
    /// distinct members; < 0: `-count` picks, repeats allowed).
    SetRandMember {
        /// The key.
        key: Bytes,
        /// The count.
        count: Option<i64>,
        /// The reader's random seed.
        seed: u64,
    },
    /// `SMISMEMBER`: `Items`, `"1"` or `"0"` for each member.
    SetMIsMember {
        /// The key.
        key: Bytes,
        /// The members.
        members: Vec<Bytes>,
    },
    /// `SINTER`: `Items`, the members of all the sets (absent keys are
    /// empty sets), in the order of the smallest set (the first of the
    /// smallest).
    SetInter {
        /// The first set.
        key: Bytes,
        /// The other sets.
        others: Vec<Bytes>,
    },
    /// `SUNION`: `Items`, the members of the first set in its order, then
    /// those of each following set not seen before.
    SetUnion {
        /// The first set.
        key: Bytes,
        /// The other sets.
        others: Vec<Bytes>,
    },
    /// `SDIFF`: `Items`, the members of the first set (in its order) that
    /// are in none of the others.
    SetDiff {
        /// The first set.
        key: Bytes,
        /// The other sets.
        others: Vec<Bytes>,
    },
    /// `SINTERCARD`: `Count`, the size of the intersection, counting no
    /// further than `limit` (0: no limit).
    SetInterCard {
        /// The first set.
        key: Bytes,
        /// The other sets.
        others: Vec<Bytes>,
        /// Stop counting here (0: never).
        limit: u64,
    },
    /// `HGET`: `Value`.
    HashGet {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `HMGET`: `Values`.
    HashMGet {
        /// The key.
        key: Bytes,
        /// The fields.
        fields: Vec<Bytes>,
    },
    /// `HLEN`: `Count`.
    HashLen {
        /// The key.
        key: Bytes,
    },
    /// `HEXISTS`: `Count` 0 or 1.
    HashExists {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `HGETALL`: `Items`, field, value, field, value... in field order.
    HashGetAll {
        /// The key.
        key: Bytes,
    },
    /// `HKEYS`: `Items`.
    HashKeys {
        /// The key.
        key: Bytes,
    },
    /// `HVALS`: `Items`.
    HashVals {
        /// The key.
        key: Bytes,
    },
    /// `HSTRLEN`: `Count`, the length of the field's value (0 if absent).
    HashStrLen {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// `HRANDFIELD`: as [`TypedQuery::SetRandMember`] over the fields (in
    /// field order); `with_values` interleaves each field's value.
    HashRandField {
        /// The key.
        key: Bytes,
        /// The count.
        count: Option<i64>,
        /// Interleave the values (only with a count).
        with_values: bool,
        /// The reader's random seed.
        seed: u64,
    },
    /// `ZSCORE`: `Value`, the score as Redis formats it.
    ZScore {
        /// The key.
        key: Bytes,
        /// The member.
        member: Bytes,
    },
    /// `ZCARD`: `Count`.
    ZCard {
        /// The key.
        key: Bytes,
    },
    /// `ZRANGE` by index (`ZREVRANGE` with `rev`): `Items`, with scores
    /// interleaved if `with_scores`.
    ZRange {
        /// The key.
        key: Bytes,
        /// First index.
        start: i64,
        /// Last index (inclusive).
        stop: i64,
        /// Highest score first.
        rev: bool,
        /// Interleave the scores.
        with_scores: bool,
    },
    /// `ZRANK` (`ZREVRANK` with `rev`): `Int`, or `Value(None)` if absent.
    ZRank {
        /// The key.
        key: Bytes,
        /// The member.
        member: Bytes,
        /// Rank from the highest score.
        rev: bool,
    },
    /// `ZRANGEBYSCORE` (`ZREVRANGEBYSCORE` and `ZRANGE ... BYSCORE [REV]`
    /// with `rev`): `Items`, the members with `min <= score <= max`
    /// (`(` bounds exclusive), skipping `offset`, at most `count`.
    ZRangeByScore {
        /// The key.
        key: Bytes,
        /// Lowest score.
        min: f64,
        /// `(min`.
        min_exclusive: bool,
        /// Highest score.
        max: f64,
        /// `(max`.
        max_exclusive: bool,
        /// Highest score first.
        rev: bool,
        /// Interleave the scores.
        with_scores: bool,
        /// Members skipped first (`LIMIT offset`).
        offset: u64,
        /// Most members (`LIMIT ... count`; `None`: all).
        count: Option<u64>,
    },
    /// `ZCOUNT`: `Count` of members with a score in the range.
    ZCount {
        /// The key.
        key: Bytes,
        /// Lowest score.
        min: f64,
        /// `(min`.
        min_exclusive: bool,
        /// Highest score.
        max: f64,
        /// `(max`.
        max_exclusive: bool,
    },
    /// `ZMSCORE`: `Values`, each member's score (or `None`).
    ZMScore {
        /// The key.
        key: Bytes,
        /// The members.
        members: Vec<Bytes>,
    },
    /// `ZRANGEBYLEX` (`ZREVRANGEBYLEX` and `ZRANGE ... BYLEX [REV]` with
    /// `rev`): `Items`, the members between `min` and `max` (Redis'
    /// syntax: `-`, `+`, `[m`, `(m`), skipping `offset`, at most `count`.
    /// Meant, as in Redis, for sets whose scores are all equal; otherwise
    /// every member in the range, in score order.
    ZRangeByLex {
        /// The key.
        key: Bytes,
        /// Start bound.
        min: Bytes,
        /// End bound.
        max: Bytes,
        /// From the end.
        rev: bool,
        /// Members skipped first.
        offset: u64,
        /// Most members (`None`: all).
        count: Option<u64>,
    },
    /// `ZRANDMEMBER`: as [`TypedQuery::SetRandMember`] over the members
    /// (in score order); `with_scores` interleaves each member's score.
    ZRandMember {
        /// The key.
        key: Bytes,
        /// The count.
        count: Option<i64>,
        /// Interleave the scores (only with a count).
        with_scores: bool,
        /// The reader's random seed.
        seed: u64,
    },
    /// `ZUNION`: `Items`, the union as [`TypedCommand::ZUnionStore`]
    /// computes it, in score order, scores interleaved if `with_scores`.
    ZUnion {
        /// The first source.
        key: Bytes,
        /// The other sources.
        others: Vec<Bytes>,
        /// One per source, or none.
        weights: Vec<f64>,
        /// 0 SUM, 1 MIN, 2 MAX.
        aggregate: u8,
        /// Interleave the scores.
        with_scores: bool,
    },
    /// `ZINTER`: as [`TypedQuery::ZUnion`], the intersection.
    ZInter {
        /// The first source.
        key: Bytes,
        /// The other sources.
        others: Vec<Bytes>,
        /// One per source, or none.
        weights: Vec<f64>,
        /// 0 SUM, 1 MIN, 2 MAX.
        aggregate: u8,
        /// Interleave the scores.
        with_scores: bool,
    },
    /// `ZDIFF`: as [`TypedQuery::ZUnion`], the difference.
    ZDiff {
        /// The first source.
        key: Bytes,
        /// The other sources.
        others: Vec<Bytes>,
        /// Interleave the scores.
        with_scores: bool,
    },
    /// `ZINTERCARD`: `Count`, the size of the intersection, counting no
    /// further than `limit` (0: no limit).
    ZInterCard {
        /// The first source.
        key: Bytes,
        /// The other sources.
        others: Vec<Bytes>,
        /// Stop counting here (0: never).
        limit: u64,
    },
    /// `ZLEXCOUNT`: `Count` of members between `min` and `max`.
    ZLexCount {
        /// The key.
        key: Bytes,
        /// Start bound.
        min: Bytes,
        /// End bound.
        max: Bytes,
    },
    /// `SORT` / `SORT_RO` of a list, set or sorted set: `Items`, the
    /// elements (a set in its order, a sorted set by score) sorted by
    /// value — as numbers (`NotSortable` if one is not), ties by bytes,
    /// or by bytes with `alpha` — descending with `desc`, not sorted at
    /// all without `sorted` (`BY nosort`); then `offset` skipped and at
    /// most `count` kept. An absent key is empty; a string or stream is
    /// `WrongType`.
    Sort {
        /// The key.
        key: Bytes,
        /// `ALPHA`: compare bytes.
        alpha: bool,
        /// `DESC`.
        desc: bool,
        /// False for `BY nosort`.
        sorted: bool,
        /// `LIMIT offset`.
        offset: u64,
        /// `LIMIT count` (`None`: all).
        count: Option<u64>,
    },
    /// `XLEN`: `Len`.
    StreamLen {
        /// The key.
        key: Bytes,
    },
    /// `SCAN ... TYPE t`: of at most `limit` keys with `start <= key <
    /// end`, those of type `type_name` (`string`, `list`, ...), as
    /// [`KvResult::Entries`](super::KvResult::Entries) with empty values;
    /// `next` is the first key not examined, if any is left.
    ScanType {
        /// First key (inclusive).
        start: Bytes,
        /// End key (exclusive); `None` for the end of the keyspace.
        end: Option<Bytes>,
        /// Most keys examined (clamped to `SCAN_LIMIT_MAX`).
        limit: u32,
        /// The type name.
        type_name: Bytes,
    },
    /// `XRANGE` (`XREVRANGE` with `rev`): `Records`, entries with
    /// `start <= id <= end` (`(ms, seq)` pairs).
    StreamRange {
        /// The key.
        key: Bytes,
        /// First id (inclusive).
        start: (u64, u64),
        /// Last id (inclusive).
        end: (u64, u64),
        /// Most entries.
        count: Option<u64>,
        /// From the end.
        rev: bool,
    },
}

fn put_ou64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        None => out.put_u8(0),
        Some(n) => {
            out.put_u8(1);
            out.put_u64_le(n);
        }
    }
}

fn get_ou64(r: &mut Reader) -> Result<Option<u64>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.u64()?)),
        _ => Err(DecodeError::Invalid {
            what: "option flag",
        }),
    }
}

fn key(r: &mut Reader) -> Result<Bytes, DecodeError> {
    r.bytes("key", DECODE_BYTES_MAX)
}

fn elem(r: &mut Reader) -> Result<Bytes, DecodeError> {
    r.bytes("element", DECODE_BYTES_MAX)
}

/// A query inside a command, as `bytes`.
fn put_nested(out: &mut BytesMut, q: &TypedQuery) {
    let at = out.len();
    out.put_u32_le(0);
    q.encode_into(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// A query inside a command, which `allowed` must accept.
fn get_nested(
    r: &mut Reader,
    allowed: impl Fn(&TypedQuery) -> bool,
) -> Result<TypedQuery, DecodeError> {
    let mut inner = Reader::new(r.bytes("nested query", DECODE_BYTES_MAX)?);
    let tag = inner.u8()?;
    if !TypedQuery::is_tag(tag) {
        return Err(DecodeError::UnknownTag {
            what: "nested query",
            tag,
        });
    }
    let q = TypedQuery::decode_tagged(tag, &mut inner)?;
    inner.finish()?;
    if !allowed(&q) {
        return Err(DecodeError::Invalid {
            what: "nested query of another kind",
        });
    }
    Ok(q)
}

fn put_flag(out: &mut BytesMut, b: bool) {
    out.put_u8(u8::from(b));
}

/// A score range: `min f64 | min_exclusive u8 | max f64 | max_exclusive u8`.
fn put_range(out: &mut BytesMut, min: f64, min_exclusive: bool, max: f64, max_exclusive: bool) {
    out.put_u64_le(min.to_bits());
    put_flag(out, min_exclusive);
    out.put_u64_le(max.to_bits());
    put_flag(out, max_exclusive);
}

/// Weights: `count u32 | f64 *`.
fn put_weights(out: &mut BytesMut, weights: &[f64]) {
    put_count(out, weights.len());
    for w in weights {
        out.put_u64_le(w.to_bits());
    }
}

/// Weights for `sources` sources: none, or one each.
fn get_weights(r: &mut Reader, sources: usize) -> Result<Vec<f64>, DecodeError> {
    let n = r.count("weights", KEYS_PER_COMMAND_MAX, 8)?;
    if n != 0 && n != sources {
        return Err(DecodeError::Invalid {
            what: "weights, not one per source",
        });
    }
    (0..n).map(|_| Ok(f64::from_bits(r.u64()?))).collect()
}

/// An aggregate: 0 SUM, 1 MIN, 2 MAX.
fn get_aggregate(r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        a @ 0..=2 => Ok(a),
        tag => Err(DecodeError::UnknownTag {
            what: "aggregate",
            tag,
        }),
    }
}

/// A lex bound (`-`, `+`, `[m`, `(m`); anything else is refused.
fn lex_bound(r: &mut Reader) -> Result<Bytes, DecodeError> {
    let b = r.bytes("lex bound", DECODE_BYTES_MAX)?;
    match LexBound::parse(&b) {
        Some(_) => Ok(b),
        None => Err(DecodeError::Invalid { what: "lex bound" }),
    }
}

fn get_range(r: &mut Reader) -> Result<(f64, bool, f64, bool), DecodeError> {
    Ok((
        f64::from_bits(r.u64()?),
        get_bool(r)?,
        f64::from_bits(r.u64()?),
        get_bool(r)?,
    ))
}

impl TypedCommand {
    /// The key the command writes.
    pub fn key(&self) -> &Bytes {
        match self {
            TypedCommand::ListPush { key, .. }
            | TypedCommand::ListPop { key, .. }
            | TypedCommand::ListSet { key, .. }
            | TypedCommand::ListRem { key, .. }
            | TypedCommand::ListTrim { key, .. }
            | TypedCommand::ListInsert { key, .. }
            | TypedCommand::ListMove { key, .. }
            | TypedCommand::SetMove { key, .. }
            | TypedCommand::SetInterStore { key, .. }
            | TypedCommand::SetUnionStore { key, .. }
            | TypedCommand::SetDiffStore { key, .. }
            | TypedCommand::HashIncrByFloat { key, .. }
            | TypedCommand::ZRemRangeByScore { key, .. }
            | TypedCommand::ZRemRangeByRank { key, .. }
            | TypedCommand::ZRemRangeByLex { key, .. }
            | TypedCommand::ZUnionStore { key, .. }
            | TypedCommand::ZInterStore { key, .. }
            | TypedCommand::ZDiffStore { key, .. }
            | TypedCommand::ZRangeStore { key, .. }
            | TypedCommand::SortStore { key, .. }
            | TypedCommand::SetAdd { key, .. }
            | TypedCommand::SetRem { key, .. }
            | TypedCommand::SetPop { key, .. }
            | TypedCommand::HashSet { key, .. }
            | TypedCommand::HashDel { key, .. }
            | TypedCommand::HashIncrBy { key, .. }
            | TypedCommand::ZAdd { key, .. }
            | TypedCommand::ZRem { key, .. }
            | TypedCommand::ZPop { key, .. }
            | TypedCommand::XAdd { key, .. }
            | TypedCommand::XTrim { key, .. }
            | TypedCommand::XDel { key, .. }
            | TypedCommand::XSetId { key, .. } => key,
            TypedCommand::MultiPop { keys, .. } => &keys[0],
        }
    }

    /// Appends the encoding (see the module documentation).
    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            TypedCommand::ListPush {
                key,
                left,
                only_existing,
                values,
            } => {
                out.put_u8(0x30);
                put_bytes(out, key);
                put_flag(out, *left);
                put_flag(out, *only_existing);
                put_keys(out, values);
            }
            TypedCommand::ListPop { key, left, count } => {
                out.put_u8(0x31);
                put_bytes(out, key);
                put_flag(out, *left);
                put_ou64(out, *count);
            }
            TypedCommand::ListSet { key, index, value } => {
                out.put_u8(0x32);
                put_bytes(out, key);
                out.put_i64_le(*index);
                put_bytes(out, value);
            }
            TypedCommand::ListRem { key, count, value } => {
                out.put_u8(0x33);
                put_bytes(out, key);
                out.put_i64_le(*count);
                put_bytes(out, value);
            }
            TypedCommand::ListTrim { key, start, stop } => {
                out.put_u8(0x34);
                put_bytes(out, key);
                out.put_i64_le(*start);
                out.put_i64_le(*stop);
            }
            TypedCommand::SetAdd { key, members } => {
                out.put_u8(0x38);
                put_bytes(out, key);
                put_keys(out, members);
            }
            TypedCommand::SetRem { key, members } => {
                out.put_u8(0x39);
                put_bytes(out, key);
                put_keys(out, members);
            }
            TypedCommand::SetPop { key, count, seed } => {
                out.put_u8(0x3a);
                put_bytes(out, key);
                put_ou64(out, *count);
                out.put_u64_le(*seed);
            }
            TypedCommand::HashSet {
                key,
                only_new,
                pairs,
            } => {
                out.put_u8(0x40);
                put_bytes(out, key);
                put_flag(out, *only_new);
                put_count(out, pairs.len());
                for (f, v) in pairs {
                    put_bytes(out, f);
                    put_bytes(out, v);
                }
            }
            TypedCommand::HashDel { key, fields } => {
                out.put_u8(0x41);
                put_bytes(out, key);
                put_keys(out, fields);
            }
            TypedCommand::HashIncrBy { key, field, delta } => {
                out.put_u8(0x42);
                put_bytes(out, key);
                put_bytes(out, field);
                out.put_i64_le(*delta);
            }
            TypedCommand::ZAdd {
                key,
                condition,
                compare,
                changed,
                incr,
                pairs,
            } => {
                out.put_u8(0x48);
                put_bytes(out, key);
                out.put_u8(match condition {
                    ZAddCondition::Always => 0,
                    ZAddCondition::IfAbsent => 1,
                    ZAddCondition::IfPresent => 2,
                });
                out.put_u8(match compare {
                    ZAddCompare::None => 0,
                    ZAddCompare::Greater => 1,
                    ZAddCompare::Less => 2,
                });
                put_flag(out, *changed);
                put_flag(out, *incr);
                put_count(out, pairs.len());
                for (s, m) in pairs {
                    out.put_u64_le(s.to_bits());
                    put_bytes(out, m);
                }
            }
            TypedCommand::ZRem { key, members } => {
                out.put_u8(0x49);
                put_bytes(out, key);
                put_keys(out, members);
            }
            TypedCommand::ZPop { key, max, count } => {
                out.put_u8(0x4a);
                put_bytes(out, key);
                put_flag(out, *max);
                put_ou64(out, *count);
            }
            TypedCommand::ListInsert {
                key,
                after,
                pivot,
                value,
            } => {
                out.put_u8(0x35);
                put_bytes(out, key);
                put_flag(out, *after);
                put_bytes(out, pivot);
                put_bytes(out, value);
            }
            TypedCommand::ListMove {
                key,
                dst,
                from_left,
                to_left,
            } => {
                out.put_u8(0x36);
                put_bytes(out, key);
                put_bytes(out, dst);
                put_flag(out, *from_left);
                put_flag(out, *to_left);
            }
            TypedCommand::SetMove { key, dst, member } => {
                out.put_u8(0x3b);
                put_bytes(out, key);
                put_bytes(out, dst);
                put_bytes(out, member);
            }
            TypedCommand::SetInterStore { key, sources }
            | TypedCommand::SetUnionStore { key, sources }
            | TypedCommand::SetDiffStore { key, sources } => {
                out.put_u8(match self {
                    TypedCommand::SetInterStore { .. } => 0x3c,
                    TypedCommand::SetUnionStore { .. } => 0x3d,
                    _ => 0x3e,
                });
                put_bytes(out, key);
                put_keys(out, sources);
            }
            TypedCommand::HashIncrByFloat { key, field, delta } => {
                out.put_u8(0x43);
                put_bytes(out, key);
                put_bytes(out, field);
                out.put_u64_le(delta.to_bits());
            }
            TypedCommand::ZRemRangeByScore {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
            } => {
                out.put_u8(0x4b);
                put_bytes(out, key);
                put_range(out, *min, *min_exclusive, *max, *max_exclusive);
            }
            TypedCommand::ZRemRangeByRank { key, start, stop } => {
                out.put_u8(0x4c);
                put_bytes(out, key);
                out.put_i64_le(*start);
                out.put_i64_le(*stop);
            }
            TypedCommand::ZUnionStore {
                key,
                sources,
                weights,
                aggregate,
            }
            | TypedCommand::ZInterStore {
                key,
                sources,
                weights,
                aggregate,
            } => {
                out.put_u8(if matches!(self, TypedCommand::ZUnionStore { .. }) {
                    0x44
                } else {
                    0x45
                });
                put_bytes(out, key);
                put_keys(out, sources);
                put_weights(out, weights);
                out.put_u8(*aggregate);
            }
            TypedCommand::ZDiffStore { key, sources } => {
                out.put_u8(0x46);
                put_bytes(out, key);
                put_keys(out, sources);
            }
            TypedCommand::ZRemRangeByLex { key, min, max } => {
                out.put_u8(0x4d);
                put_bytes(out, key);
                put_bytes(out, min);
                put_bytes(out, max);
            }
            TypedCommand::ZRangeStore { key, range } => {
                out.put_u8(0x47);
                put_bytes(out, key);
                put_nested(out, range);
            }
            TypedCommand::SortStore { key, sort } => {
                out.put_u8(0x4e);
                put_bytes(out, key);
                put_nested(out, sort);
            }
            TypedCommand::XAdd {
                key,
                id,
                trim,
                no_mkstream,
                fields,
            } => {
                // The first encoding when it can say it (the log written
                // before MINID and LIMIT), else the second.
                let maxlen = match trim {
                    None => Some(None),
                    Some(StreamTrim {
                        threshold: TrimThreshold::MaxLen(n),
                        limit: 0,
                    }) => Some(Some(*n)),
                    Some(_) => None,
                };
                out.put_u8(if maxlen.is_some() { 0x50 } else { 0x52 });
                put_bytes(out, key);
                let (kind, ms, seq) = match *id {
                    XAddId::Auto { now_ms } => (0, now_ms, 0),
                    XAddId::Explicit { ms, seq } => (1, ms, seq),
                    XAddId::AutoSeq { ms } => (2, ms, 0),
                };
                out.put_u8(kind);
                out.put_u64_le(ms);
                out.put_u64_le(seq);
                match (maxlen, trim) {
                    (Some(maxlen), _) => put_ou64(out, maxlen),
                    (None, Some(t)) => put_trim(out, t),
                    (None, None) => unreachable!("no trim has the first encoding"),
                }
                put_flag(out, *no_mkstream);
                put_keys(out, fields);
            }
            TypedCommand::XTrim { key, trim } => {
                out.put_u8(0x51);
                put_bytes(out, key);
                put_trim(out, trim);
            }
            TypedCommand::XDel { key, ids } => {
                out.put_u8(0x53);
                put_bytes(out, key);
                put_count(out, ids.len());
                for (ms, seq) in ids {
                    out.put_u64_le(*ms);
                    out.put_u64_le(*seq);
                }
            }
            TypedCommand::XSetId {
                key,
                last,
                entries_added,
            } => {
                out.put_u8(0x54);
                put_bytes(out, key);
                out.put_u64_le(last.0);
                out.put_u64_le(last.1);
                put_ou64(out, *entries_added);
            }
            TypedCommand::MultiPop {
                keys,
                zset,
                end,
                count,
            } => {
                out.put_u8(0x37);
                put_keys(out, keys);
                put_flag(out, *zset);
                put_flag(out, *end);
                out.put_u64_le(*count);
            }
        }
    }

    /// True if `tag` is a typed command's tag.
    pub(crate) fn is_tag(tag: u8) -> bool {
        matches!(tag, 0x30..=0x3e | 0x40..=0x4e | 0x50..=0x54)
    }

    /// Decodes the body of a command whose tag was read; the caller checks
    /// that nothing is left over.
    pub(crate) fn decode_tagged(tag: u8, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(match tag {
            0x30 => TypedCommand::ListPush {
                key: key(r)?,
                left: get_bool(r)?,
                only_existing: get_bool(r)?,
                values: get_keys(r)?,
            },
            0x31 => TypedCommand::ListPop {
                key: key(r)?,
                left: get_bool(r)?,
                count: get_ou64(r)?,
            },
            0x37 => {
                let keys = get_keys(r)?;
                if keys.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "multi-key pop without a key",
                    });
                }
                if let Some(k) = keys.iter().find(|k| k.len() > super::KEY_BYTES_MAX) {
                    return Err(DecodeError::TooLarge {
                        what: "key",
                        len: k.len() as u64,
                        max: super::KEY_BYTES_MAX as u64,
                    });
                }
                let (zset, end) = (get_bool(r)?, get_bool(r)?);
                let count = r.u64()?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "multi-key pop of 0 elements",
                    });
                }
                TypedCommand::MultiPop {
                    keys,
                    zset,
                    end,
                    count,
                }
            }
            0x32 => TypedCommand::ListSet {
                key: key(r)?,
                index: r.i64()?,
                value: elem(r)?,
            },
            0x33 => TypedCommand::ListRem {
                key: key(r)?,
                count: r.i64()?,
                value: elem(r)?,
            },
            0x34 => TypedCommand::ListTrim {
                key: key(r)?,
                start: r.i64()?,
                stop: r.i64()?,
            },
            0x35 => TypedCommand::ListInsert {
                key: key(r)?,
                after: get_bool(r)?,
                pivot: elem(r)?,
                value: elem(r)?,
            },
            0x36 => TypedCommand::ListMove {
                key: key(r)?,
                dst: key(r)?,
                from_left: get_bool(r)?,
                to_left: get_bool(r)?,
            },
            0x3b => TypedCommand::SetMove {
                key: key(r)?,
                dst: key(r)?,
                member: elem(r)?,
            },
            0x3c..=0x3e => {
                let key = key(r)?;
                let sources = get_keys(r)?;
                if sources.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "set store without sources",
                    });
                }
                match tag {
                    0x3c => TypedCommand::SetInterStore { key, sources },
                    0x3d => TypedCommand::SetUnionStore { key, sources },
                    _ => TypedCommand::SetDiffStore { key, sources },
                }
            }
            0x43 => TypedCommand::HashIncrByFloat {
                key: key(r)?,
                field: elem(r)?,
                delta: f64::from_bits(r.u64()?),
            },
            0x4b => {
                let key = key(r)?;
                let (min, min_exclusive, max, max_exclusive) = get_range(r)?;
                TypedCommand::ZRemRangeByScore {
                    key,
                    min,
                    min_exclusive,
                    max,
                    max_exclusive,
                }
            }
            0x4c => TypedCommand::ZRemRangeByRank {
                key: key(r)?,
                start: r.i64()?,
                stop: r.i64()?,
            },
            0x44..=0x46 => {
                let key = key(r)?;
                let sources = get_keys(r)?;
                if sources.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "sorted set store without sources",
                    });
                }
                if tag == 0x46 {
                    TypedCommand::ZDiffStore { key, sources }
                } else {
                    let weights = get_weights(r, sources.len())?;
                    let aggregate = get_aggregate(r)?;
                    if tag == 0x44 {
                        TypedCommand::ZUnionStore {
                            key,
                            sources,
                            weights,
                            aggregate,
                        }
                    } else {
                        TypedCommand::ZInterStore {
                            key,
                            sources,
                            weights,
                            aggregate,
                        }
                    }
                }
            }
            0x47 => TypedCommand::ZRangeStore {
                key: key(r)?,
                range: get_nested(r, |q| {
                    matches!(
                        q,
                        TypedQuery::ZRange { .. }
                            | TypedQuery::ZRangeByScore { .. }
                            | TypedQuery::ZRangeByLex { .. }
                    )
                })?,
            },
            0x4e => TypedCommand::SortStore {
                key: key(r)?,
                sort: get_nested(r, |q| matches!(q, TypedQuery::Sort { .. }))?,
            },
            0x4d => TypedCommand::ZRemRangeByLex {
                key: key(r)?,
                min: lex_bound(r)?,
                max: lex_bound(r)?,
            },
            0x38 => TypedCommand::SetAdd {
                key: key(r)?,
                members: get_keys(r)?,
            },
            0x39 => TypedCommand::SetRem {
                key: key(r)?,
                members: get_keys(r)?,
            },
            0x3a => TypedCommand::SetPop {
                key: key(r)?,
                count: get_ou64(r)?,
                seed: r.u64()?,
            },
            0x40 => {
                let key = key(r)?;
                let only_new = get_bool(r)?;
                let n = r.count("pairs", KEYS_PER_COMMAND_MAX, 8)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((elem(r)?, elem(r)?));
                }
                TypedCommand::HashSet {
                    key,
                    only_new,
                    pairs,
                }
            }
            0x41 => TypedCommand::HashDel {
                key: key(r)?,
                fields: get_keys(r)?,
            },
            0x42 => TypedCommand::HashIncrBy {
                key: key(r)?,
                field: elem(r)?,
                delta: r.i64()?,
            },
            0x48 => {
                let key = key(r)?;
                let condition = match r.u8()? {
                    0 => ZAddCondition::Always,
                    1 => ZAddCondition::IfAbsent,
                    2 => ZAddCondition::IfPresent,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "zadd condition",
                            tag,
                        })
                    }
                };
                let compare = match r.u8()? {
                    0 => ZAddCompare::None,
                    1 => ZAddCompare::Greater,
                    2 => ZAddCompare::Less,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "zadd comparison",
                            tag,
                        })
                    }
                };
                let changed = get_bool(r)?;
                let incr = get_bool(r)?;
                let n = r.count("pairs", KEYS_PER_COMMAND_MAX, 12)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((f64::from_bits(r.u64()?), elem(r)?));
                }
                TypedCommand::ZAdd {
                    key,
                    condition,
                    compare,
                    changed,
                    incr,
                    pairs,
                }
            }
            0x49 => TypedCommand::ZRem {
                key: key(r)?,
                members: get_keys(r)?,
            },
            0x4a => TypedCommand::ZPop {
                key: key(r)?,
                max: get_bool(r)?,
                count: get_ou64(r)?,
            },
            0x50 | 0x52 => {
                let key = key(r)?;
                let kind = r.u8()?;
                let ms = r.u64()?;
                let seq = r.u64()?;
                let id = match kind {
                    0 => XAddId::Auto { now_ms: ms },
                    1 => XAddId::Explicit { ms, seq },
                    2 => XAddId::AutoSeq { ms },
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "xadd id kind",
                            tag,
                        })
                    }
                };
                let trim = if tag == 0x50 {
                    get_ou64(r)?.map(StreamTrim::max_len)
                } else {
                    let t = get_trim(r)?;
                    if let TrimThreshold::MaxLen(_) = t.threshold {
                        if t.limit == 0 {
                            return Err(DecodeError::Invalid {
                                what: "xadd trim in the second encoding",
                            });
                        }
                    }
                    Some(t)
                };
                TypedCommand::XAdd {
                    key,
                    id,
                    trim,
                    no_mkstream: get_bool(r)?,
                    fields: get_keys(r)?,
                }
            }
            0x51 => TypedCommand::XTrim {
                key: key(r)?,
                trim: get_trim(r)?,
            },
            0x53 => {
                let key = key(r)?;
                let n = r.count("stream ids", KEYS_PER_COMMAND_MAX, 16)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push((r.u64()?, r.u64()?));
                }
                TypedCommand::XDel { key, ids }
            }
            0x54 => TypedCommand::XSetId {
                key: key(r)?,
                last: (r.u64()?, r.u64()?),
                entries_added: get_ou64(r)?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv command",
                    tag,
                })
            }
        })
    }
}

impl PartialEq for TypedQuery {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        self.encode_into(&mut a);
        other.encode_into(&mut b);
        a == b
    }
}

impl Eq for TypedQuery {}

impl TypedQuery {
    /// The key the query reads.
    pub fn key(&self) -> &Bytes {
        match self {
            TypedQuery::Type { key }
            | TypedQuery::ListLen { key }
            | TypedQuery::Sort { key, .. }
            | TypedQuery::ListRange { key, .. }
            | TypedQuery::ListIndex { key, .. }
            | TypedQuery::SetMembers { key }
            | TypedQuery::SetIsMember { key, .. }
            | TypedQuery::SetCard { key }
            | TypedQuery::SetRandMember { key, .. }
            | TypedQuery::HashGet { key, .. }
            | TypedQuery::HashMGet { key, .. }
            | TypedQuery::HashLen { key }
            | TypedQuery::HashExists { key, .. }
            | TypedQuery::HashGetAll { key }
            | TypedQuery::HashKeys { key }
            | TypedQuery::HashVals { key }
            | TypedQuery::ZScore { key, .. }
            | TypedQuery::ZCard { key }
            | TypedQuery::ZRange { key, .. }
            | TypedQuery::ZRank { key, .. }
            | TypedQuery::StreamLen { key }
            | TypedQuery::StreamRange { key, .. }
            | TypedQuery::ListPos { key, .. }
            | TypedQuery::SetMIsMember { key, .. }
            | TypedQuery::SetInter { key, .. }
            | TypedQuery::SetUnion { key, .. }
            | TypedQuery::SetDiff { key, .. }
            | TypedQuery::SetInterCard { key, .. }
            | TypedQuery::HashStrLen { key, .. }
            | TypedQuery::HashRandField { key, .. }
            | TypedQuery::ZRangeByScore { key, .. }
            | TypedQuery::ZCount { key, .. }
            | TypedQuery::ZMScore { key, .. }
            | TypedQuery::ZRangeByLex { key, .. }
            | TypedQuery::ZLexCount { key, .. }
            | TypedQuery::ZRandMember { key, .. }
            | TypedQuery::ZUnion { key, .. }
            | TypedQuery::ZInter { key, .. }
            | TypedQuery::ZDiff { key, .. }
            | TypedQuery::ZInterCard { key, .. } => key,
            TypedQuery::ScanType { start, .. } => start,
        }
    }

    /// Appends the encoding (see the module documentation).
    pub fn encode_into(&self, out: &mut BytesMut) {
        let key_only = |out: &mut BytesMut, tag: u8, key: &Bytes| {
            out.put_u8(tag);
            put_bytes(out, key);
        };
        match self {
            TypedQuery::Type { key } => key_only(out, 0x60, key),
            TypedQuery::ListLen { key } => key_only(out, 0x61, key),
            TypedQuery::Sort {
                key,
                alpha,
                desc,
                sorted,
                offset,
                count,
            } => {
                key_only(out, 0x65, key);
                put_flag(out, *alpha);
                put_flag(out, *desc);
                put_flag(out, *sorted);
                out.put_u64_le(*offset);
                put_ou64(out, *count);
            }
            TypedQuery::ListRange { key, start, stop } => {
                key_only(out, 0x62, key);
                out.put_i64_le(*start);
                out.put_i64_le(*stop);
            }
            TypedQuery::ListIndex { key, index } => {
                key_only(out, 0x63, key);
                out.put_i64_le(*index);
            }
            TypedQuery::SetMembers { key } => key_only(out, 0x68, key),
            TypedQuery::SetIsMember { key, member } => {
                key_only(out, 0x69, key);
                put_bytes(out, member);
            }
            TypedQuery::SetCard { key } => key_only(out, 0x6a, key),
            TypedQuery::SetRandMember { key, count, seed } => {
                key_only(out, 0x6b, key);
                match count {
                    None => out.put_u8(0),
                    Some(c) => {
                        out.put_u8(1);
                        out.put_i64_le(*c);
                    }
                }
                out.put_u64_le(*seed);
            }
            TypedQuery::HashGet { key, field } => {
                key_only(out, 0x70, key);
                put_bytes(out, field);
            }
            TypedQuery::HashMGet { key, fields } => {
                key_only(out, 0x71, key);
                put_keys(out, fields);
            }
            TypedQuery::HashLen { key } => key_only(out, 0x72, key),
            TypedQuery::HashExists { key, field } => {
                key_only(out, 0x73, key);
                put_bytes(out, field);
            }
            TypedQuery::HashGetAll { key } => key_only(out, 0x74, key),
            TypedQuery::HashKeys { key } => key_only(out, 0x75, key),
            TypedQuery::HashVals { key } => key_only(out, 0x76, key),
            TypedQuery::ZScore { key, member } => {
                key_only(out, 0x78, key);
                put_bytes(out, member);
            }
            TypedQuery::ZCard { key } => key_only(out, 0x79, key),
            TypedQuery::ZRange {
                key,
                start,
                stop,
                rev,
                with_scores,
            } => {
                key_only(out, 0x7a, key);
                out.put_i64_le(*start);
                out.put_i64_le(*stop);
                put_flag(out, *rev);
                put_flag(out, *with_scores);
            }
            TypedQuery::ZRank { key, member, rev } => {
                key_only(out, 0x7b, key);
                put_bytes(out, member);
                put_flag(out, *rev);
            }
            TypedQuery::StreamLen { key } => key_only(out, 0x80, key),
            TypedQuery::StreamRange {
                key,
                start,
                end,
                count,
                rev,
            } => {
                key_only(out, 0x81, key);
                out.put_u64_le(start.0);
                out.put_u64_le(start.1);
                out.put_u64_le(end.0);
                out.put_u64_le(end.1);
                put_ou64(out, *count);
                put_flag(out, *rev);
            }
            TypedQuery::ListPos {
                key,
                element,
                rank,
                count,
                maxlen,
            } => {
                key_only(out, 0x64, key);
                put_bytes(out, element);
                out.put_i64_le(*rank);
                put_ou64(out, *count);
                out.put_u64_le(*maxlen);
            }
            TypedQuery::SetMIsMember { key, members } => {
                key_only(out, 0x8a, key);
                put_keys(out, members);
            }
            TypedQuery::SetInter { key, others }
            | TypedQuery::SetUnion { key, others }
            | TypedQuery::SetDiff { key, others } => {
                let tag = match self {
                    TypedQuery::SetInter { .. } => 0x6c,
                    TypedQuery::SetUnion { .. } => 0x6d,
                    _ => 0x6e,
                };
                key_only(out, tag, key);
                put_keys(out, others);
            }
            TypedQuery::SetInterCard { key, others, limit } => {
                key_only(out, 0x6f, key);
                put_keys(out, others);
                out.put_u64_le(*limit);
            }
            TypedQuery::HashStrLen { key, field } => {
                key_only(out, 0x77, key);
                put_bytes(out, field);
            }
            TypedQuery::HashRandField {
                key,
                count,
                with_values: with,
                seed,
            }
            | TypedQuery::ZRandMember {
                key,
                count,
                with_scores: with,
                seed,
            } => {
                let tag = match self {
                    TypedQuery::HashRandField { .. } => 0x89,
                    _ => 0x8c,
                };
                key_only(out, tag, key);
                match count {
                    None => out.put_u8(0),
                    Some(c) => {
                        out.put_u8(1);
                        out.put_i64_le(*c);
                    }
                }
                put_flag(out, *with);
                out.put_u64_le(*seed);
            }
            TypedQuery::ZRangeByScore {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
                rev,
                with_scores,
                offset,
                count,
            } => {
                key_only(out, 0x7c, key);
                put_range(out, *min, *min_exclusive, *max, *max_exclusive);
                put_flag(out, *rev);
                put_flag(out, *with_scores);
                out.put_u64_le(*offset);
                put_ou64(out, *count);
            }
            TypedQuery::ZCount {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
            } => {
                key_only(out, 0x7d, key);
                put_range(out, *min, *min_exclusive, *max, *max_exclusive);
            }
            TypedQuery::ZMScore { key, members } => {
                key_only(out, 0x7e, key);
                put_keys(out, members);
            }
            TypedQuery::ZRangeByLex {
                key,
                min,
                max,
                rev,
                offset,
                count,
            } => {
                key_only(out, 0x7f, key);
                put_bytes(out, min);
                put_bytes(out, max);
                put_flag(out, *rev);
                out.put_u64_le(*offset);
                put_ou64(out, *count);
            }
            TypedQuery::ZUnion {
                key,
                others,
                weights,
                aggregate,
                with_scores,
            }
            | TypedQuery::ZInter {
                key,
                others,
                weights,
                aggregate,
                with_scores,
            } => {
                let tag = if matches!(self, TypedQuery::ZUnion { .. }) {
                    0x8d
                } else {
                    0x8e
                };
                key_only(out, tag, key);
                put_keys(out, others);
                put_weights(out, weights);
                out.put_u8(*aggregate);
                put_flag(out, *with_scores);
            }
            TypedQuery::ZDiff {
                key,
                others,
                with_scores,
            } => {
                key_only(out, 0x8f, key);
                put_keys(out, others);
                put_flag(out, *with_scores);
            }
            TypedQuery::ZInterCard { key, others, limit } => {
                key_only(out, 0x90, key);
                put_keys(out, others);
                out.put_u64_le(*limit);
            }
            TypedQuery::ZLexCount { key, min, max } => {
                key_only(out, 0x8b, key);
                put_bytes(out, min);
                put_bytes(out, max);
            }
            TypedQuery::ScanType {
                start,
                end,
                limit,
                type_name,
            } => {
                key_only(out, 0x88, start);
                put_opt(out, end);
                out.put_u32_le(*limit);
                put_bytes(out, type_name);
            }
        }
    }

    /// True if `tag` is a typed query's tag.
    pub(crate) fn is_tag(tag: u8) -> bool {
        matches!(
            tag,
            0x60..=0x65 | 0x68..=0x6f | 0x70..=0x77 | 0x78..=0x7f | 0x80 | 0x81 | 0x88..=0x90
        )
    }

    /// Decodes the body of a query whose tag was read; the caller checks
    /// that nothing is left over.
    pub(crate) fn decode_tagged(tag: u8, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(match tag {
            0x60 => TypedQuery::Type { key: key(r)? },
            0x61 => TypedQuery::ListLen { key: key(r)? },
            0x65 => TypedQuery::Sort {
                key: key(r)?,
                alpha: get_bool(r)?,
                desc: get_bool(r)?,
                sorted: get_bool(r)?,
                offset: r.u64()?,
                count: get_ou64(r)?,
            },
            0x62 => TypedQuery::ListRange {
                key: key(r)?,
                start: r.i64()?,
                stop: r.i64()?,
            },
            0x63 => TypedQuery::ListIndex {
                key: key(r)?,
                index: r.i64()?,
            },
            0x64 => TypedQuery::ListPos {
                key: key(r)?,
                element: elem(r)?,
                rank: r.i64()?,
                count: get_ou64(r)?,
                maxlen: r.u64()?,
            },
            0x8a => TypedQuery::SetMIsMember {
                key: key(r)?,
                members: get_keys(r)?,
            },
            0x6c => TypedQuery::SetInter {
                key: key(r)?,
                others: get_keys(r)?,
            },
            0x6d => TypedQuery::SetUnion {
                key: key(r)?,
                others: get_keys(r)?,
            },
            0x6e => TypedQuery::SetDiff {
                key: key(r)?,
                others: get_keys(r)?,
            },
            0x6f => TypedQuery::SetInterCard {
                key: key(r)?,
                others: get_keys(r)?,
                limit: r.u64()?,
            },
            0x77 => TypedQuery::HashStrLen {
                key: key(r)?,
                field: elem(r)?,
            },
            0x89 | 0x8c => {
                let key = key(r)?;
                let count = match r.u8()? {
                    0 => None,
                    1 => Some(r.i64()?),
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "option flag",
                        })
                    }
                };
                let (with, seed) = (get_bool(r)?, r.u64()?);
                if tag == 0x89 {
                    TypedQuery::HashRandField {
                        key,
                        count,
                        with_values: with,
                        seed,
                    }
                } else {
                    TypedQuery::ZRandMember {
                        key,
                        count,
                        with_scores: with,
                        seed,
                    }
                }
            }
            0x7c => {
                let key = key(r)?;
                let (min, min_exclusive, max, max_exclusive) = get_range(r)?;
                TypedQuery::ZRangeByScore {
                    key,
                    min,
                    min_exclusive,
                    max,
                    max_exclusive,
                    rev: get_bool(r)?,
                    with_scores: get_bool(r)?,
                    offset: r.u64()?,
                    count: get_ou64(r)?,
                }
            }
            0x7d => {
                let key = key(r)?;
                let (min, min_exclusive, max, max_exclusive) = get_range(r)?;
                TypedQuery::ZCount {
                    key,
                    min,
                    min_exclusive,
                    max,
                    max_exclusive,
                }
            }
            0x7e => TypedQuery::ZMScore {
                key: key(r)?,
                members: get_keys(r)?,
            },
            0x7f => TypedQuery::ZRangeByLex {
                key: key(r)?,
                min: lex_bound(r)?,
                max: lex_bound(r)?,
                rev: get_bool(r)?,
                offset: r.u64()?,
                count: get_ou64(r)?,
            },
            0x8d | 0x8e => {
                let key = key(r)?;
                let others = get_keys(r)?;
                let weights = get_weights(r, others.len() + 1)?;
                let aggregate = get_aggregate(r)?;
                let with_scores = get_bool(r)?;
                if tag == 0x8d {
                    TypedQuery::ZUnion {
                        key,
                        others,
                        weights,
                        aggregate,
                        with_scores,
                    }
                } else {
                    TypedQuery::ZInter {
                        key,
                        others,
                        weights,
                        aggregate,
                        with_scores,
                    }
                }
            }
            0x8f => TypedQuery::ZDiff {
                key: key(r)?,
                others: get_keys(r)?,
                with_scores: get_bool(r)?,
            },
            0x90 => TypedQuery::ZInterCard {
                key: key(r)?,
                others: get_keys(r)?,
                limit: r.u64()?,
            },
            0x8b => TypedQuery::ZLexCount {
                key: key(r)?,
                min: lex_bound(r)?,
                max: lex_bound(r)?,
            },
            0x68 => TypedQuery::SetMembers { key: key(r)? },
            0x69 => TypedQuery::SetIsMember {
                key: key(r)?,
                member: elem(r)?,
            },
            0x6a => TypedQuery::SetCard { key: key(r)? },
            0x6b => {
                let key = key(r)?;
                let count = match r.u8()? {
                    0 => None,
                    1 => Some(r.i64()?),
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "option flag",
                        })
                    }
                };
                TypedQuery::SetRandMember {
                    key,
                    count,
                    seed: r.u64()?,
                }
            }
            0x70 => TypedQuery::HashGet {
                key: key(r)?,
                field: elem(r)?,
            },
            0x71 => TypedQuery::HashMGet {
                key: key(r)?,
                fields: get_keys(r)?,
            },
            0x72 => TypedQuery::HashLen { key: key(r)? },
            0x73 => TypedQuery::HashExists {
                key: key(r)?,
                field: elem(r)?,
            },
            0x74 => TypedQuery::HashGetAll { key: key(r)? },
            0x75 => TypedQuery::HashKeys { key: key(r)? },
            0x76 => TypedQuery::HashVals { key: key(r)? },
            0x78 => TypedQuery::ZScore {
                key: key(r)?,
                member: elem(r)?,
            },
            0x79 => TypedQuery::ZCard { key: key(r)? },
            0x7a => TypedQuery::ZRange {
                key: key(r)?,
                start: r.i64()?,
                stop: r.i64()?,
                rev: get_bool(r)?,
                with_scores: get_bool(r)?,
            },
            0x7b => TypedQuery::ZRank {
                key: key(r)?,
                member: elem(r)?,
                rev: get_bool(r)?,
            },
            0x80 => TypedQuery::StreamLen { key: key(r)? },
            0x81 => TypedQuery::StreamRange {
                key: key(r)?,
                start: (r.u64()?, r.u64()?),
                end: (r.u64()?, r.u64()?),
                count: get_ou64(r)?,
                rev: get_bool(r)?,
            },
            0x88 => TypedQuery::ScanType {
                start: key(r)?,
                end: get_opt(r, "end key")?,
                limit: r.u32()?,
                type_name: r.bytes("type name", 64)?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv query",
                    tag,
                })
            }
        })
    }
}
