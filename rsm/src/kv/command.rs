//! Typed KV commands, queries and results, and their byte encodings.
//!
//! Everything is little-endian; `bytes` is `len u32 | data`, `opt` is
//! `0u8` (none) or `1u8 | bytes`, `list` is `count u32 | item *`.
//!
//! ```text
//! command  0x01 Put          | key bytes | value bytes | condition u8 (0 always, 1 if absent, 2 if present) | return_previous u8 |
//!          0x02 Delete       | keys list<bytes> |
//!          0x03 Append       | key bytes | value bytes |
//!          0x04 CompareAndSet| key bytes | expected opt | new_value opt |
//!          0x05 Increment    | key bytes | delta i64 |
//!          0x06 MultiPut     | pairs list<key bytes, value bytes> |
//!          0x07 Clear        |
//!          0x08 Take         | key bytes |
//!          0x09 PutExpiring  | (as Put) | expire_at opt<u64> (none: keep the key's deadline) |
//!          0x0a Expire       | key bytes | at_ms u64 | now_ms u64 | condition u8 (0 always, 1 NX, 2 XX, 3 GT, 4 LT) |
//!          0x0b Persist      | key bytes |
//!          0x0c ExpireDue    | now_ms u64 |
//!          0x0d Batch        | guards list<key bytes, digest u64> | commands list<command bytes> |
//!                            (a command of a batch is no batch)
//!          0x0e IncrementFloat | key bytes | delta f64 (bits, u64) |
//!          0x0f GetExpiring  | key bytes | change u8 (0 keep, 1 clear, 2 at) | [at_ms u64 if 2] | now_ms u64 |
//!          0x10 Rename       | from bytes | to bytes | only_if_absent u8 |
//!          0x11 Copy         | from bytes | to bytes | replace u8 |
//!          0x12 SetRange     | key bytes | offset u64 | value bytes |
//!          0x13 SetBit       | key bytes | offset u64 (bit) | bit u8 (0/1) |
//!          0x14 BitOp        | op u8 (0 and, 1 or, 2 xor, 3 not) | dst bytes | sources list<bytes> |
//!          0x15 HllAdd       | key bytes | count u32 | (register u16 | rank u8) * |
//!          0x16 HllMerge     | dst bytes | sources list<bytes> |
//!          0x17 Publish      | channel bytes | message bytes |
//!          0x18 BitField     | key bytes | count u32 | (action u8 (0 get, 1 set, 2 incrby) |
//!                            signed u8 | bits u8 | offset u64 (bit) | overflow u8 (0 wrap,
//!                            1 sat, 2 fail) | value i64 (0 for get)) * |
//!          0x20..=0x2c       a query (below), executed in log order
//!          0x30..=0x54       a typed command (lists, sets, hashes, sorted
//!                            sets, streams: drawn in `typed.rs`)
//!          0x60..=0x90       a typed query, executed in log order
//! query    0x20 Get          | key bytes |
//!          0x21 MultiGet     | keys list<bytes> |
//!          0x22 Exists       | keys list<bytes> |
//!          0x23 Scan         | start bytes | end opt | limit u32 | keys_only u8 |
//!          0x24 Count        |
//!          0x25 Deadline     | key bytes |
//!          0x26 NextDeadline |
//!          0x27 Digest       | key bytes |
//!          0x28 Stats        |
//!          0x29 Describe     | key bytes |
//!          0x2a RandomKey    | seed u64 |
//!          0x2b Messages     | after u64 | limit u32 |
//!          0x2c Script       | payload bytes |  (run by the installed
//!                            [`ScriptRunner`](super::ScriptRunner))
//!          0x60..=0x90       a typed query (drawn in `typed.rs`)
//! result   0x00 Ok
//!          0x01 Value        | value opt |
//!          0x02 Values       | values list<opt> |
//!          0x03 Count        | n u64 |
//!          0x04 Int          | n i64 |
//!          0x05 Put          | written u8 | previous opt |
//!          0x06 Cas          | swapped u8 | previous opt |
//!          0x07 Entries      | pairs list<key bytes, value bytes> | next opt |
//!          0x08 Len          | n u64 |
//!          0x09 Items        | items list<bytes> |
//!          0x0a Records      | count u32 | (id bytes | fields list<bytes>) * |
//!          0x0b Batch        | results list<result bytes> |
//!          0x0c Aborted
//!          0x0d Digest       | digest u64 |
//!          0x0e Stats        | keys u64 | expiring u64 | data_bytes u64 |
//!          0x0f Messages     | through u64 | evicted u64 | count u32 |
//!                            (index u64 | channel bytes | message bytes) * |
//!          0x10 Ints         | count u32 | (0u8 | 1u8 n i64) * |
//!          0x7f Error        | code u8 |
//! ```
//! Error codes: 1 not an integer, 2 overflow, 3 key too large, 4 value too
//! large, 5 malformed, 6 result too large, 7 wrong type, 8 not a float,
//! 9 NaN score, 10 index out of range, 11 no such key, 12 hash value not an
//! integer, 13 stream id too small, 14 stream id 0-0, 15 stream ids
//! exhausted, 16 NaN or infinity, 17 hash value not a float, 18 an element
//! that SORT cannot read as a number, 19 a string that is not a
//! HyperLogLog, 20 XSETID id below the stream's top entry, 21 XSETID
//! entries_added below the stream's length, 22 no script runner installed.

use bytes::{BufMut, Bytes, BytesMut};

pub use super::typed::{
    StreamTrim, TrimThreshold, TypedCommand, TypedQuery, XAddId, ZAddCompare, ZAddCondition,
};
use crate::codec::{put_bytes, put_count, Reader};
use crate::error::DecodeError;

/// Largest key the store accepts.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Largest value the store accepts (also after an append).
pub const VALUE_BYTES_MAX: usize = 64 << 20;
/// Most keys in one multi-key command or query.
pub const KEYS_PER_COMMAND_MAX: u32 = 65_536;
/// Largest scan limit; larger requests are clamped.
pub const SCAN_LIMIT_MAX: u32 = 100_000;
/// A scan stops once its result holds this many key and value bytes (and
/// returns a continuation key).
pub const SCAN_BYTES_MAX: usize = 4 << 20;
/// A multi-get whose values add up to more than this fails with
/// [`KvError::ResultTooLarge`] (results are cached by sessions and shipped
/// in one reply).
pub const RESULT_BYTES_MAX: usize = 128 << 20;
/// Most items of one result ([`KvResult::Items`], [`KvResult::Records`]):
/// a larger range read fails with [`KvError::ResultTooLarge`].
pub const ITEMS_PER_RESULT_MAX: u32 = 1 << 24;

/// Most messages a replica keeps for subscribers ([`KvCommand::Publish`]).
pub const MESSAGES_KEPT_MAX: usize = 4096;
/// Most message bytes (channels and messages) a replica keeps for
/// subscribers; the newest entry's messages are kept whatever their size.
pub const MESSAGE_BYTES_KEPT_MAX: usize = 16 << 20;
/// A [`KvQuery::Messages`] result stops once it holds this many bytes.
pub const MESSAGE_BYTES_READ_MAX: usize = 4 << 20;

/// Most commands of one [`KvCommand::Batch`].
pub const BATCH_COMMANDS_MAX: u32 = 100_000;

/// Most operations of one [`KvCommand::BitField`] (a Redis command of the
/// most arguments a connection accepts has fewer).
pub const BITFIELD_OPS_MAX: u32 = 1 << 20;

pub(super) const DECODE_BYTES_MAX: u32 = VALUE_BYTES_MAX as u32;

/// The condition of a [`KvCommand::Put`] (Redis `SET ... NX` / `XX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutCondition {
    /// Always write.
    Always,
    /// Write only if the key is absent (`NX`).
    IfAbsent,
    /// Write only if the key is present (`XX`).
    IfPresent,
}

/// The condition of a [`KvCommand::Expire`] (Redis `EXPIRE ... NX | XX |
/// GT | LT`; a key without a deadline counts as expiring never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    /// Always set.
    Always,
    /// Only if the key has no deadline (`NX`).
    IfNone,
    /// Only if the key has a deadline (`XX`).
    IfSome,
    /// Only if the new deadline is later than the current one (`GT`).
    Later,
    /// Only if the new deadline is earlier than the current one (`LT`).
    Earlier,
}

/// A change of a key's deadline ([`KvCommand::GetExpiring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineChange {
    /// Leave it.
    Keep,
    /// Remove it (`PERSIST`).
    Clear,
    /// Set it to this Unix millisecond; one not after the command's
    /// `now_ms` deletes the key.
    At(u64),
}

/// Latest deadline a key can have (deadlines are replied as `i64`).
pub const DEADLINE_MS_MAX: u64 = i64::MAX as u64;

/// Most keys one [`KvCommand::ExpireDue`] deletes (the leader proposes
/// another while more are due).
pub const EXPIRE_DUE_KEYS_MAX: usize = 10_000;

/// A command to the KV store: proposed through raft and applied in log
/// order on every replica.
#[derive(Debug, Clone, PartialEq)]
pub enum KvCommand {
    /// Set `key` to `value` if `condition` holds. Result
    /// [`KvResult::Put`] (`previous` only if `return_previous`, like
    /// `SET ... GET`).
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// When to write.
        condition: PutCondition,
        /// Return the previous value.
        return_previous: bool,
    },
    /// Delete keys. Result [`KvResult::Count`] of keys that existed.
    Delete {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Append `value` to the value of `key` (absent = empty). Result
    /// [`KvResult::Len`], the new length.
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
    },
    /// Set `key` to `new_value` (`None` deletes it) only if its current
    /// value is `expected` (`None`: only if absent). Result
    /// [`KvResult::Cas`] with the value found before.
    CompareAndSet {
        /// The key.
        key: Bytes,
        /// The value the key must hold.
        expected: Option<Bytes>,
        /// The value to set; `None` deletes.
        new_value: Option<Bytes>,
    },
    /// Add `delta` to the decimal integer at `key` (absent = 0). Result
    /// [`KvResult::Int`], or [`KvError::NotInteger`] / [`KvError::Overflow`].
    Increment {
        /// The key.
        key: Bytes,
        /// The amount to add (may be negative).
        delta: i64,
    },
    /// Set every pair, atomically. Result [`KvResult::Ok`].
    MultiPut {
        /// The pairs, applied in order.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Delete every key (Redis `FLUSHDB` on one group). Result
    /// [`KvResult::Ok`].
    Clear,
    /// Delete `key` and return its value (Redis `GETDEL`). Result
    /// [`KvResult::Value`] (`None`: there was none), or
    /// [`KvError::WrongType`] for a collection, which stays.
    Take {
        /// The key.
        key: Bytes,
    },
    /// [`KvCommand::Put`] that also sets the key's deadline (Redis `SET
    /// ... EX | PX | EXAT | PXAT`) or keeps it (`KEEPTTL`: `None`). A plain
    /// `Put` clears it. Deadlines are absolute Unix milliseconds (see
    /// `expiry.rs`), capped at [`DEADLINE_MS_MAX`].
    PutExpiring {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// When to write.
        condition: PutCondition,
        /// Return the previous value.
        return_previous: bool,
        /// The deadline; `None` keeps the key's current one.
        expire_at_ms: Option<u64>,
    },
    /// Set the deadline of an existing key if `condition` holds; a deadline
    /// not after `now_ms` (the proposer's clock) deletes the key at once.
    /// Result [`KvResult::Int`]: 1 if set (or deleted), 0 if the key is
    /// absent or the condition failed.
    Expire {
        /// The key.
        key: Bytes,
        /// The new deadline.
        at_ms: u64,
        /// The proposer's clock.
        now_ms: u64,
        /// When to set it.
        condition: ExpireCondition,
    },
    /// Remove the deadline of `key`. Result [`KvResult::Int`]: 1 if it had
    /// one.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// Delete keys whose deadline is at most `now_ms` (the proposing
    /// leader's clock), earliest first, at most [`EXPIRE_DUE_KEYS_MAX`].
    /// Result [`KvResult::Count`] of keys deleted.
    ExpireDue {
        /// The proposer's clock.
        now_ms: u64,
    },
    /// Add `delta` to the decimal number at `key` (absent = 0; Redis
    /// `INCRBYFLOAT`). Result [`KvResult::Value`], the new value as stored
    /// ([`format_float`]), or [`KvError::NotFloat`] (the value is not a
    /// number), [`KvError::NanOrInfinity`], [`KvError::WrongType`]. The
    /// key keeps its deadline.
    IncrementFloat {
        /// The key.
        key: Bytes,
        /// The amount to add.
        delta: f64,
    },
    /// The value of `key`, and a change of its deadline (Redis `GETEX`).
    /// Result [`KvResult::Value`]; a collection answers
    /// [`KvError::WrongType`] and is left as it is.
    GetExpiring {
        /// The key.
        key: Bytes,
        /// What happens to its deadline.
        deadline: DeadlineChange,
        /// The proposer's clock.
        now_ms: u64,
    },
    /// Move `from` (of any type, with its deadline) to `to`, replacing
    /// what `to` held (Redis `RENAME`), or only if `to` is absent
    /// (`RENAMENX`). Result [`KvResult::Int`]: 1 if moved, 0 if `to`
    /// exists and `only_if_absent` (or `from == to` with it); or
    /// [`KvError::NoSuchKey`] if `from` is absent.
    Rename {
        /// The key to move.
        from: Bytes,
        /// Its new name.
        to: Bytes,
        /// Only if `to` is absent.
        only_if_absent: bool,
    },
    /// Copy `from` (of any type, with its deadline) to `to` (Redis
    /// `COPY`). Result [`KvResult::Int`]: 1 if copied; 0 if `from` is
    /// absent, `from == to`, or `to` exists without `replace`.
    Copy {
        /// The key to copy.
        from: Bytes,
        /// The copy's name.
        to: Bytes,
        /// Replace what `to` holds.
        replace: bool,
    },
    /// Overwrite the string at `key` from byte `offset` with `value`,
    /// padding with zero bytes (Redis `SETRANGE`). Result
    /// [`KvResult::Len`], the new length; an empty `value` changes nothing
    /// (and creates no key). The key keeps its deadline.
    SetRange {
        /// The key.
        key: Bytes,
        /// Where to write.
        offset: u64,
        /// The bytes to write.
        value: Bytes,
    },
    /// Set or clear bit `offset` of the string at `key` (Redis `SETBIT`:
    /// bit 0 is the most significant bit of byte 0), zero-padding the
    /// string as needed. Result [`KvResult::Int`], the bit's previous value.
    /// The key keeps its deadline; a collection answers
    /// [`KvError::WrongType`], an offset past [`VALUE_BYTES_MAX`] bytes
    /// [`KvError::ValueTooLarge`].
    SetBit {
        /// The key.
        key: Bytes,
        /// The bit's position.
        offset: u64,
        /// The new bit.
        value: bool,
    },
    /// `dst = op(sources...)` bytewise (Redis `BITOP`): an absent source
    /// reads as the empty string, a shorter one is zero-padded to the
    /// longest; `NOT` takes one source. Result [`KvResult::Len`], the
    /// length of the result. `dst` is replaced whatever it held (its
    /// deadline goes) or deleted if the result is empty; a collection
    /// among the sources answers [`KvError::WrongType`] and changes
    /// nothing.
    BitOp {
        /// The operation.
        op: BitOperation,
        /// Where the result goes.
        dst: Bytes,
        /// The operands, at most [`KEYS_PER_COMMAND_MAX`].
        sources: Vec<Bytes>,
    },
    /// Raise registers of the HyperLogLog at `key` to at least the given
    /// ranks (Redis `PFADD`, the elements hashed by the caller with
    /// [`hll_register`](super::hll::hll_register)), creating it empty if
    /// absent. Result [`KvResult::Int`]: 1 if a register changed or the
    /// key was created, else 0. The key keeps its deadline; a collection
    /// answers [`KvError::WrongType`], another string
    /// [`KvError::NotHyperLogLog`].
    HllAdd {
        /// The key.
        key: Bytes,
        /// `(register, rank)`: register below
        /// [`HLL_REGISTERS`](super::hll::HLL_REGISTERS), rank in
        /// `1..=`[`HLL_RANK_MAX`](super::hll::HLL_RANK_MAX).
        registers: Vec<(u16, u8)>,
    },
    /// `dst` = the union of `dst` and `sources` (Redis `PFMERGE`): every
    /// register the largest of theirs; absent keys count as empty, `dst`
    /// is created if absent and keeps its deadline. Result
    /// [`KvResult::Ok`]; errors as [`KvCommand::HllAdd`], and nothing
    /// changes then.
    HllMerge {
        /// Where the union goes.
        dst: Bytes,
        /// The other HyperLogLogs, at most [`KEYS_PER_COMMAND_MAX`].
        sources: Vec<Bytes>,
    },
    /// Reads and writes integers of 1 to 64 bits at any bit offset of the
    /// string at `key`, in order (Redis `BITFIELD` with a `SET` or
    /// `INCRBY`). A missing key reads as zeros. If any operation writes,
    /// the string is first zero-padded to hold the last bit any write
    /// touches (a missing key is created so, even if every write is
    /// refused by [`BitFieldOverflow::Fail`], as Redis does). Result
    /// [`KvResult::Ints`], one per operation: `GET` the field, `SET` its
    /// previous value, `INCRBY` its new value, `None` for a write that
    /// `Fail` refused. The key keeps its deadline; a collection answers
    /// [`KvError::WrongType`], a write past [`VALUE_BYTES_MAX`] bytes
    /// [`KvError::ValueTooLarge`], and nothing changes then.
    BitField {
        /// The key.
        key: Bytes,
        /// The operations, at most [`BITFIELD_OPS_MAX`].
        ops: Vec<BitFieldOp>,
    },
    /// Publishes `message` on `channel` (Redis `PUBLISH`): the store keeps
    /// it, with its log index, in a bounded ring of recent messages that
    /// subscribers read with [`KvQuery::Messages`]. The ring is not part of
    /// the data: no key changes, snapshots leave it out, and the oldest
    /// messages go once it holds [`MESSAGES_KEPT_MAX`] messages or
    /// [`MESSAGE_BYTES_KEPT_MAX`] bytes. Result [`KvResult::Ok`];
    /// [`KvError::ValueTooLarge`] for a message over [`VALUE_BYTES_MAX`].
    Publish {
        /// The channel (any bytes).
        channel: Bytes,
        /// The message.
        message: Bytes,
    },
    /// A read, executed in log order (a read through the log).
    Read(KvQuery),
    /// A write to a list, set, hash, sorted set or stream.
    Typed(TypedCommand),
    /// Commands applied as one entry (Redis `MULTI` ... `EXEC`): nothing
    /// else runs between them. If every guard holds, the commands run in
    /// order and the result is [`KvResult::Batch`] of their results (a
    /// command that fails does not undo the ones before it, as in Redis);
    /// if a guard fails, none runs and the result is
    /// [`KvResult::Aborted`]. A batch holds no batch.
    Batch {
        /// Keys and the digest ([`KvQuery::Digest`]) each must still have
        /// (Redis `WATCH`: the transaction runs only on the values it saw).
        guards: Vec<(Bytes, u64)>,
        /// The commands, at most [`BATCH_COMMANDS_MAX`].
        commands: Vec<KvCommand>,
    },
}

/// A read-only query to the KV store (also usable as a command through
/// [`KvCommand::Read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvQuery {
    /// The value of a key. Result [`KvResult::Value`].
    Get {
        /// The key.
        key: Bytes,
    },
    /// The values of keys. Result [`KvResult::Values`].
    MultiGet {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// How many of `keys` exist (a key named twice counts twice, as in
    /// Redis `EXISTS`). Result [`KvResult::Count`].
    Exists {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Pairs with `start <= key < end` in key order, at most `limit` (and at
    /// most [`SCAN_BYTES_MAX`] bytes). Result [`KvResult::Entries`] whose
    /// `next` is where to continue, if anything is left.
    Scan {
        /// First key (inclusive).
        start: Bytes,
        /// End key (exclusive); `None` for the end of the keyspace.
        end: Option<Bytes>,
        /// Most pairs to return (clamped to [`SCAN_LIMIT_MAX`]).
        limit: u32,
        /// Return empty values.
        keys_only: bool,
    },
    /// Number of keys. Result [`KvResult::Count`].
    Count,
    /// The deadline of `key` (Redis `TTL`, `PTTL`, `EXPIRETIME`). Result
    /// [`KvResult::Int`]: -2 if the key is absent, -1 if it has no
    /// deadline, else the deadline in Unix milliseconds.
    Deadline {
        /// The key.
        key: Bytes,
    },
    /// The earliest deadline of any key. Result [`KvResult::Int`]: -1 if no
    /// key has one.
    NextDeadline,
    /// A digest of `key`'s type, value and deadline. Result
    /// [`KvResult::Digest`]: 0 if the key is absent. The same state gives
    /// the same digest on every replica and every version (64-bit FNV-1a
    /// of a fixed encoding); a [`KvCommand::Batch`] guard compares it.
    Digest {
        /// The key.
        key: Bytes,
    },
    /// How many keys there are, how many of them have a deadline, and
    /// their bytes. Result [`KvResult::Stats`].
    Stats,
    /// What Redis' `OBJECT ENCODING` and `MEMORY USAGE` tell of `key`.
    /// Result [`KvResult::Items`]: empty if the key is absent, else
    /// `[type, encoding, bytes]` — the type as `TYPE` names it, the
    /// encoding Redis would use for such a value (see
    /// `KvStore::describe`), and an estimate in decimal of the bytes the
    /// key takes in this store.
    Describe {
        /// The key.
        key: Bytes,
    },
    /// A key picked with `seed` (Redis `RANDOMKEY`). Result
    /// [`KvResult::Value`], `None` if the store is empty. A store of up to
    /// 1,024 keys picks uniformly; a larger one samples its key order's
    /// leaves (nearly uniform). A replica whose tree differs may pick
    /// another key for the same seed: no state depends on it.
    RandomKey {
        /// Picks the key.
        seed: u64,
    },
    /// The published messages ([`KvCommand::Publish`]) this replica keeps
    /// whose log index is above `after`, oldest first: at most `limit`,
    /// whole entries only (a `MULTI` that published twice is never split),
    /// and at most [`MESSAGE_BYTES_READ_MAX`] bytes (at least one entry's
    /// messages). Result [`KvResult::Messages`]. `after = u64::MAX` reads
    /// none: only where new messages will start.
    Messages {
        /// Messages at or below this index are not wanted.
        after: u64,
        /// Most messages to return.
        limit: u32,
    },
    /// Runs `payload` through the process's
    /// [`ScriptRunner`](super::ScriptRunner) on this replica's state (the
    /// Redis layer's Lua scripts: the runner tries a script on a
    /// copy-on-write scratch copy and reports its reply and the commands
    /// it would write, which the caller then proposes as a guarded
    /// [`KvCommand::Batch`]). Result [`KvResult::Value`] holding the
    /// runner's answer, or [`KvError::NoScriptRunner`].
    Script {
        /// The runner's request (its own encoding).
        payload: Bytes,
    },
    /// A read of a list, set, hash, sorted set or stream (or `TYPE`).
    Typed(TypedQuery),
}

/// The operation of a [`KvCommand::BitOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOperation {
    /// `AND`.
    And,
    /// `OR`.
    Or,
    /// `XOR`.
    Xor,
    /// `NOT` (one source).
    Not,
}

impl BitOperation {
    fn code(self) -> u8 {
        match self {
            BitOperation::And => 0,
            BitOperation::Or => 1,
            BitOperation::Xor => 2,
            BitOperation::Not => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            0 => BitOperation::And,
            1 => BitOperation::Or,
            2 => BitOperation::Xor,
            3 => BitOperation::Not,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "bit operation",
                    tag,
                })
            }
        })
    }
}

/// The integer type of a [`BitFieldOp`]: Redis' `i1`..`i64` (signed,
/// two's complement) or `u1`..`u63` (unsigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitFieldType {
    signed: bool,
    bits: u8,
}

impl BitFieldType {
    /// `i<bits>` (`signed`) or `u<bits>`; `None` unless `1 <= bits <= 64`
    /// (signed) or `<= 63` (unsigned, so that every value is an `i64`).
    pub fn new(signed: bool, bits: u8) -> Option<BitFieldType> {
        let max = if signed { 64 } else { 63 };
        (1..=max)
            .contains(&bits)
            .then_some(BitFieldType { signed, bits })
    }

    /// Signed.
    pub fn signed(self) -> bool {
        self.signed
    }

    /// The width in bits (1..=64).
    pub fn bits(self) -> u8 {
        self.bits
    }
}

/// What `BITFIELD ... OVERFLOW` does with a `SET` or `INCRBY` result the
/// type cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitFieldOverflow {
    /// Keep the low bits (modulo 2^bits; the default).
    Wrap,
    /// Saturate at the type's minimum or maximum.
    Sat,
    /// Write nothing and answer nil.
    Fail,
}

/// What one [`BitFieldOp`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitFieldAction {
    /// Read the field.
    Get,
    /// Write this value (an unsigned type reads it as a `u64`, as Redis
    /// does: `SET u8 0 -1` overflows).
    Set(i64),
    /// Add this to the field.
    IncrBy(i64),
}

/// One operation of a [`KvCommand::BitField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitFieldOp {
    /// What it does.
    pub action: BitFieldAction,
    /// The field's type.
    pub ty: BitFieldType,
    /// The field's first bit (bit 0 is the most significant bit of byte 0).
    pub offset: u64,
    /// The overflow rule for a `Set` or `IncrBy`.
    pub overflow: BitFieldOverflow,
}

impl BitFieldOp {
    /// A `Set` or `IncrBy`.
    pub fn writes(&self) -> bool {
        !matches!(self.action, BitFieldAction::Get)
    }
}

/// A deterministic error result of a KV command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The value is not a decimal 64-bit integer.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// The increment overflows a 64-bit integer.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A key over [`KEY_BYTES_MAX`].
    #[error("key too large")]
    KeyTooLarge,
    /// A value over [`VALUE_BYTES_MAX`].
    #[error("value too large")]
    ValueTooLarge,
    /// The command could not be decoded.
    #[error("malformed command")]
    Malformed,
    /// The result would exceed [`RESULT_BYTES_MAX`] or
    /// [`ITEMS_PER_RESULT_MAX`].
    #[error("result too large")]
    ResultTooLarge,
    /// A command of one type on a key holding another.
    #[error("Operation against a key holding the wrong kind of value")]
    WrongType,
    /// A score that is not a valid float (a NaN in the command).
    #[error("value is not a valid float")]
    NotFloat,
    /// A score increment that ends in NaN (`inf` + `-inf`).
    #[error("resulting score is not a number (NaN)")]
    ScoreNaN,
    /// `LSET` outside the list.
    #[error("index out of range")]
    IndexOutOfRange,
    /// `LSET` on an absent key.
    #[error("no such key")]
    NoSuchKey,
    /// `HINCRBY` of a field that is not an integer.
    #[error("hash value is not an integer")]
    HashNotInteger,
    /// `XADD` with an id not greater than the stream's last.
    #[error("The ID specified in XADD is equal or smaller than the target stream top item")]
    StreamIdTooSmall,
    /// `XADD` with the id 0-0.
    #[error("The ID specified in XADD must be greater than 0-0")]
    StreamIdZero,
    /// `XADD *` after the id u64::MAX-u64::MAX.
    #[error("The stream has exhausted the last possible ID, unable to add more items")]
    StreamIdExhausted,
    /// A float increment whose result is not a finite number.
    #[error("increment would produce NaN or Infinity")]
    NanOrInfinity,
    /// `HINCRBYFLOAT` of a field that is not a number.
    #[error("hash value is not a float")]
    HashNotFloat,
    /// `SORT` (without `ALPHA`) of an element that is not a number.
    #[error("One or more scores can't be converted into double")]
    NotSortable,
    /// `PFADD` / `PFCOUNT` / `PFMERGE` of a string that is not a
    /// HyperLogLog.
    #[error("Key is not a valid HyperLogLog string value.")]
    NotHyperLogLog,
    /// `XSETID` with an id below the stream's greatest entry.
    #[error("The ID specified in XSETID is smaller than the target stream top item")]
    XSetIdTooSmall,
    /// `XSETID ... ENTRIESADDED n` with `n` below the stream's length.
    #[error("The entries_added specified in XSETID is smaller than the target stream length")]
    XSetIdEntriesAdded,
    /// A [`KvQuery::Script`] on a node with no script runner installed
    /// (see [`install_script_runner`](super::install_script_runner)).
    #[error("scripts are not available on this node")]
    NoScriptRunner,
}

impl KvError {
    fn code(self) -> u8 {
        match self {
            KvError::NotInteger => 1,
            KvError::Overflow => 2,
            KvError::KeyTooLarge => 3,
            KvError::ValueTooLarge => 4,
            KvError::Malformed => 5,
            KvError::ResultTooLarge => 6,
            KvError::WrongType => 7,
            KvError::NotFloat => 8,
            KvError::ScoreNaN => 9,
            KvError::IndexOutOfRange => 10,
            KvError::NoSuchKey => 11,
            KvError::HashNotInteger => 12,
            KvError::StreamIdTooSmall => 13,
            KvError::StreamIdZero => 14,
            KvError::StreamIdExhausted => 15,
            KvError::NanOrInfinity => 16,
            KvError::HashNotFloat => 17,
            KvError::NotSortable => 18,
            KvError::NotHyperLogLog => 19,
            KvError::XSetIdTooSmall => 20,
            KvError::XSetIdEntriesAdded => 21,
            KvError::NoScriptRunner => 22,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => KvError::NotInteger,
            2 => KvError::Overflow,
            3 => KvError::KeyTooLarge,
            4 => KvError::ValueTooLarge,
            5 => KvError::Malformed,
            6 => KvError::ResultTooLarge,
            7 => KvError::WrongType,
            8 => KvError::NotFloat,
            9 => KvError::ScoreNaN,
            10 => KvError::IndexOutOfRange,
            11 => KvError::NoSuchKey,
            12 => KvError::HashNotInteger,
            13 => KvError::StreamIdTooSmall,
            14 => KvError::StreamIdZero,
            15 => KvError::StreamIdExhausted,
            16 => KvError::NanOrInfinity,
            17 => KvError::HashNotFloat,
            18 => KvError::NotSortable,
            19 => KvError::NotHyperLogLog,
            20 => KvError::XSetIdTooSmall,
            21 => KvError::XSetIdEntriesAdded,
            22 => KvError::NoScriptRunner,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv error",
                    tag,
                })
            }
        })
    }
}

/// The result of a KV command or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResult {
    /// Done, nothing to return.
    Ok,
    /// One value (`None`: absent).
    Value(Option<Bytes>),
    /// Values in request order.
    Values(Vec<Option<Bytes>>),
    /// A count.
    Count(u64),
    /// An integer (after an increment).
    Int(i64),
    /// A length (after an append).
    Len(u64),
    /// Outcome of a put.
    Put {
        /// The value was written.
        written: bool,
        /// The previous value, if asked for.
        previous: Option<Bytes>,
    },
    /// Outcome of a compare-and-set.
    Cas {
        /// The new value was set.
        swapped: bool,
        /// The value found before.
        previous: Option<Bytes>,
    },
    /// Pairs of a scan.
    Entries {
        /// The pairs, in key order.
        entries: Vec<(Bytes, Bytes)>,
        /// The key to continue from, if more remain.
        next: Option<Bytes>,
    },
    /// Byte strings: a range of a collection, its members, popped
    /// elements, interleaved pairs (field, value / member, score).
    Items(Vec<Bytes>),
    /// Stream entries: id and its fields (field, value, ...).
    Records(Vec<(Bytes, Vec<Bytes>)>),
    /// The results of a [`KvCommand::Batch`], in command order.
    Batch(Vec<KvResult>),
    /// A [`KvCommand::Batch`] whose guard failed: nothing ran.
    Aborted,
    /// A key's digest ([`KvQuery::Digest`]).
    Digest(u64),
    /// Integers or nils in request order ([`KvCommand::BitField`]).
    Ints(Vec<Option<i64>>),
    /// Published messages ([`KvQuery::Messages`]).
    Messages {
        /// The result holds every message the replica kept with an index
        /// up to this one (the next read continues after it).
        through: u64,
        /// The highest index of a message the ring dropped (0: none); a
        /// reader whose last `through` is below it missed messages.
        evicted: u64,
        /// `(log index, channel, message)`, in log order.
        messages: Vec<(u64, Bytes, Bytes)>,
    },
    /// The store's size ([`KvQuery::Stats`]).
    Stats {
        /// Keys.
        keys: u64,
        /// Keys with a deadline.
        expiring: u64,
        /// Bytes of keys and values ([`KvStore::data_bytes`](super::KvStore::data_bytes)).
        data_bytes: u64,
    },
    /// A deterministic error.
    Error(KvError),
}

const MAX_KEYS: u32 = KEYS_PER_COMMAND_MAX;

pub(super) fn put_opt(out: &mut BytesMut, v: &Option<Bytes>) {
    match v {
        None => out.put_u8(0),
        Some(b) => {
            out.put_u8(1);
            put_bytes(out, b);
        }
    }
}

pub(super) fn get_opt(r: &mut Reader, what: &'static str) -> Result<Option<Bytes>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.bytes(what, DECODE_BYTES_MAX)?)),
        _ => Err(DecodeError::Invalid {
            what: "option flag",
        }),
    }
}

pub(super) fn get_bool(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid { what: "bool" }),
    }
}

pub(super) fn put_keys(out: &mut BytesMut, keys: &[Bytes]) {
    put_count(out, keys.len());
    for k in keys {
        put_bytes(out, k);
    }
}

pub(super) fn get_keys(r: &mut Reader) -> Result<Vec<Bytes>, DecodeError> {
    let n = r.count("keys", MAX_KEYS, 4)?;
    (0..n).map(|_| r.bytes("key", DECODE_BYTES_MAX)).collect()
}

/// A `Put` read in place from its encoding: `(key, value, condition,
/// return_previous)`. The apply path's fast lane (no `Bytes` slices, no
/// command value). Accepts exactly the encodings that
/// [`KvCommand::decode`] turns into a `Put`; `None` for anything else
/// (other commands, malformed input), which then goes through `decode`.
pub(crate) fn put_in_place(buf: &[u8]) -> Option<(&[u8], &[u8], PutCondition, bool)> {
    let (&tag, rest) = buf.split_first()?;
    if tag != 0x01 {
        return None;
    }
    let (key, rest) = bytes_in_place(rest)?;
    let (value, rest) = bytes_in_place(rest)?;
    let &[condition, return_previous] = rest else {
        return None;
    };
    let condition = match condition {
        0 => PutCondition::Always,
        1 => PutCondition::IfAbsent,
        2 => PutCondition::IfPresent,
        _ => return None,
    };
    let return_previous = match return_previous {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some((key, value, condition, return_previous))
}

/// A `bytes` field read in place: (the bytes, what follows).
fn bytes_in_place(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
    if len > DECODE_BYTES_MAX {
        return None;
    }
    let rest = &buf[4..];
    let len = len as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The key of a `Get` query read in place from its encoding (the read
/// path's fast lane). Accepts exactly the encodings that
/// [`KvQuery::decode`] turns into a `Get`; `None` for anything else.
pub(crate) fn get_in_place(buf: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = buf.split_first()?;
    if tag != 0x20 {
        return None;
    }
    let (key, rest) = bytes_in_place(rest)?;
    rest.is_empty().then_some(key)
}

/// Encodes `KvResult::Value(value)` straight from a borrowed value (one
/// allocation, no clone of the stored `Bytes`).
pub(crate) fn encode_value_result(value: Option<&[u8]>) -> Bytes {
    match value {
        None => KvResult::Value(None).encode(),
        Some(v) => {
            let mut out = BytesMut::with_capacity(6 + v.len());
            out.put_u8(0x01);
            out.put_u8(1);
            out.put_u32_le(v.len() as u32);
            out.put_slice(v);
            out.freeze()
        }
    }
}

impl KvCommand {
    /// `Put` with [`PutCondition::Always`], not returning the previous value.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        KvCommand::Put {
            key: key.into(),
            value: value.into(),
            condition: PutCondition::Always,
            return_previous: false,
        }
    }

    /// A `Get` read through the log.
    pub fn get(key: impl Into<Bytes>) -> Self {
        KvCommand::Read(KvQuery::Get { key: key.into() })
    }

    /// `Delete` of one key.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        KvCommand::Delete {
            keys: vec![key.into()],
        }
    }

    /// Encodes the command (see the module documentation).
    ///
    /// # Examples
    /// ```
    /// use flotilla_rsm::KvCommand;
    /// let c = KvCommand::Increment { key: "n".into(), delta: -2 };
    /// assert_eq!(KvCommand::decode(c.encode()).unwrap(), c);
    /// ```
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            KvCommand::Put {
                key,
                value,
                condition,
                return_previous,
            } => {
                out.reserve(11 + key.len() + value.len());
                out.put_u8(0x01);
                put_bytes(out, key);
                put_bytes(out, value);
                out.put_u8(put_condition_code(*condition));
                out.put_u8(u8::from(*return_previous));
            }
            KvCommand::Delete { keys } => {
                out.put_u8(0x02);
                put_keys(out, keys);
            }
            KvCommand::Append { key, value } => {
                out.put_u8(0x03);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            KvCommand::CompareAndSet {
                key,
                expected,
                new_value,
            } => {
                out.put_u8(0x04);
                put_bytes(out, key);
                put_opt(out, expected);
                put_opt(out, new_value);
            }
            KvCommand::Increment { key, delta } => {
                out.put_u8(0x05);
                put_bytes(out, key);
                out.put_i64_le(*delta);
            }
            KvCommand::MultiPut { pairs } => {
                out.put_u8(0x06);
                put_count(out, pairs.len());
                for (k, v) in pairs {
                    put_bytes(out, k);
                    put_bytes(out, v);
                }
            }
            KvCommand::Clear => out.put_u8(0x07),
            KvCommand::Take { key } => {
                out.put_u8(0x08);
                put_bytes(out, key);
            }
            KvCommand::PutExpiring {
                key,
                value,
                condition,
                return_previous,
                expire_at_ms,
            } => {
                out.put_u8(0x09);
                put_bytes(out, key);
                put_bytes(out, value);
                out.put_u8(put_condition_code(*condition));
                out.put_u8(u8::from(*return_previous));
                match expire_at_ms {
                    None => out.put_u8(0),
                    Some(at) => {
                        out.put_u8(1);
                        out.put_u64_le(*at);
                    }
                }
            }
            KvCommand::Expire {
                key,
                at_ms,
                now_ms,
                condition,
            } => {
                out.put_u8(0x0a);
                put_bytes(out, key);
                out.put_u64_le(*at_ms);
                out.put_u64_le(*now_ms);
                out.put_u8(match condition {
                    ExpireCondition::Always => 0,
                    ExpireCondition::IfNone => 1,
                    ExpireCondition::IfSome => 2,
                    ExpireCondition::Later => 3,
                    ExpireCondition::Earlier => 4,
                });
            }
            KvCommand::Persist { key } => {
                out.put_u8(0x0b);
                put_bytes(out, key);
            }
            KvCommand::ExpireDue { now_ms } => {
                out.put_u8(0x0c);
                out.put_u64_le(*now_ms);
            }
            KvCommand::IncrementFloat { key, delta } => {
                out.put_u8(0x0e);
                put_bytes(out, key);
                out.put_u64_le(delta.to_bits());
            }
            KvCommand::GetExpiring {
                key,
                deadline,
                now_ms,
            } => {
                out.put_u8(0x0f);
                put_bytes(out, key);
                match deadline {
                    DeadlineChange::Keep => out.put_u8(0),
                    DeadlineChange::Clear => out.put_u8(1),
                    DeadlineChange::At(at) => {
                        out.put_u8(2);
                        out.put_u64_le(*at);
                    }
                }
                out.put_u64_le(*now_ms);
            }
            KvCommand::Rename {
                from,
                to,
                only_if_absent,
            } => {
                out.put_u8(0x10);
                put_bytes(out, from);
                put_bytes(out, to);
                out.put_u8(u8::from(*only_if_absent));
            }
            KvCommand::Copy { from, to, replace } => {
                out.put_u8(0x11);
                put_bytes(out, from);
                put_bytes(out, to);
                out.put_u8(u8::from(*replace));
            }
            KvCommand::SetRange { key, offset, value } => {
                out.put_u8(0x12);
                put_bytes(out, key);
                out.put_u64_le(*offset);
                put_bytes(out, value);
            }
            KvCommand::SetBit { key, offset, value } => {
                out.put_u8(0x13);
                put_bytes(out, key);
                out.put_u64_le(*offset);
                out.put_u8(u8::from(*value));
            }
            KvCommand::BitOp { op, dst, sources } => {
                out.put_u8(0x14);
                out.put_u8(op.code());
                put_bytes(out, dst);
                put_keys(out, sources);
            }
            KvCommand::HllAdd { key, registers } => {
                out.put_u8(0x15);
                put_bytes(out, key);
                put_count(out, registers.len());
                for (register, rank) in registers {
                    out.put_u16_le(*register);
                    out.put_u8(*rank);
                }
            }
            KvCommand::HllMerge { dst, sources } => {
                out.put_u8(0x16);
                put_bytes(out, dst);
                put_keys(out, sources);
            }
            KvCommand::Publish { channel, message } => {
                out.put_u8(0x17);
                put_bytes(out, channel);
                put_bytes(out, message);
            }
            KvCommand::BitField { key, ops } => {
                out.put_u8(0x18);
                put_bytes(out, key);
                put_count(out, ops.len());
                for op in ops {
                    let (action, value) = match op.action {
                        BitFieldAction::Get => (0, 0),
                        BitFieldAction::Set(v) => (1, v),
                        BitFieldAction::IncrBy(v) => (2, v),
                    };
                    out.put_u8(action);
                    out.put_u8(u8::from(op.ty.signed));
                    out.put_u8(op.ty.bits);
                    out.put_u64_le(op.offset);
                    out.put_u8(match op.overflow {
                        BitFieldOverflow::Wrap => 0,
                        BitFieldOverflow::Sat => 1,
                        BitFieldOverflow::Fail => 2,
                    });
                    out.put_i64_le(value);
                }
            }
            KvCommand::Read(q) => q.encode_into(out),
            KvCommand::Typed(c) => c.encode_into(out),
            KvCommand::Batch { guards, commands } => {
                out.put_u8(0x0d);
                put_count(out, guards.len());
                for (key, digest) in guards {
                    put_bytes(out, key);
                    out.put_u64_le(*digest);
                }
                put_count(out, commands.len());
                for c in commands {
                    debug_assert!(!matches!(c, KvCommand::Batch { .. }), "a batch in a batch");
                    // Length-prefixed, as `bytes`.
                    let at = out.len();
                    out.put_u32_le(0);
                    c.encode_into(out);
                    let len = (out.len() - at - 4) as u32;
                    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
    }

    /// Decodes a command; keys and values are zero-copy slices of `buf`.
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input (never panics).
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = r.u8()?;
        let cmd = match tag {
            0x01 => {
                let key = r.bytes("key", DECODE_BYTES_MAX)?;
                let value = r.bytes("value", DECODE_BYTES_MAX)?;
                KvCommand::Put {
                    key,
                    value,
                    condition: get_put_condition(&mut r)?,
                    return_previous: get_bool(&mut r)?,
                }
            }
            0x02 => KvCommand::Delete {
                keys: get_keys(&mut r)?,
            },
            0x03 => KvCommand::Append {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                value: r.bytes("value", DECODE_BYTES_MAX)?,
            },
            0x04 => KvCommand::CompareAndSet {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                expected: get_opt(&mut r, "expected value")?,
                new_value: get_opt(&mut r, "new value")?,
            },
            0x05 => KvCommand::Increment {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                delta: r.i64()?,
            },
            0x06 => {
                let n = r.count("pairs", MAX_KEYS, 8)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((
                        r.bytes("key", DECODE_BYTES_MAX)?,
                        r.bytes("value", DECODE_BYTES_MAX)?,
                    ));
                }
                KvCommand::MultiPut { pairs }
            }
            0x07 => KvCommand::Clear,
            0x08 => KvCommand::Take {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x09 => {
                let key = r.bytes("key", DECODE_BYTES_MAX)?;
                let value = r.bytes("value", DECODE_BYTES_MAX)?;
                let condition = get_put_condition(&mut r)?;
                let return_previous = get_bool(&mut r)?;
                let expire_at_ms = match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "deadline option",
                            tag,
                        })
                    }
                };
                KvCommand::PutExpiring {
                    key,
                    value,
                    condition,
                    return_previous,
                    expire_at_ms,
                }
            }
            0x0a => KvCommand::Expire {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                at_ms: r.u64()?,
                now_ms: r.u64()?,
                condition: match r.u8()? {
                    0 => ExpireCondition::Always,
                    1 => ExpireCondition::IfNone,
                    2 => ExpireCondition::IfSome,
                    3 => ExpireCondition::Later,
                    4 => ExpireCondition::Earlier,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "expire condition",
                            tag,
                        })
                    }
                },
            },
            0x0b => KvCommand::Persist {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x0c => KvCommand::ExpireDue { now_ms: r.u64()? },
            0x0d => {
                let n = r.count("guards", MAX_KEYS, 12)?;
                let mut guards = Vec::with_capacity(n);
                for _ in 0..n {
                    guards.push((r.bytes("key", DECODE_BYTES_MAX)?, r.u64()?));
                }
                let n = r.count("batch commands", BATCH_COMMANDS_MAX, 5)?;
                let mut commands = Vec::with_capacity(n);
                for _ in 0..n {
                    let c = KvCommand::decode(r.bytes("batch command", DECODE_BYTES_MAX)?)?;
                    if matches!(c, KvCommand::Batch { .. }) {
                        return Err(DecodeError::Invalid {
                            what: "batch in a batch",
                        });
                    }
                    commands.push(c);
                }
                KvCommand::Batch { guards, commands }
            }
            0x0e => KvCommand::IncrementFloat {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                delta: f64::from_bits(r.u64()?),
            },
            0x0f => {
                let key = r.bytes("key", DECODE_BYTES_MAX)?;
                let deadline = match r.u8()? {
                    0 => DeadlineChange::Keep,
                    1 => DeadlineChange::Clear,
                    2 => DeadlineChange::At(r.u64()?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "deadline change",
                            tag,
                        })
                    }
                };
                KvCommand::GetExpiring {
                    key,
                    deadline,
                    now_ms: r.u64()?,
                }
            }
            0x10 => KvCommand::Rename {
                from: r.bytes("key", DECODE_BYTES_MAX)?,
                to: r.bytes("key", DECODE_BYTES_MAX)?,
                only_if_absent: get_bool(&mut r)?,
            },
            0x11 => KvCommand::Copy {
                from: r.bytes("key", DECODE_BYTES_MAX)?,
                to: r.bytes("key", DECODE_BYTES_MAX)?,
                replace: get_bool(&mut r)?,
            },
            0x12 => KvCommand::SetRange {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                offset: r.u64()?,
                value: r.bytes("value", DECODE_BYTES_MAX)?,
            },
            0x13 => KvCommand::SetBit {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
                offset: r.u64()?,
                value: get_bool(&mut r)?,
            },
            0x14 => {
                let op = BitOperation::from_code(r.u8()?)?;
                let dst = r.bytes("key", DECODE_BYTES_MAX)?;
                let sources = get_keys(&mut r)?;
                if op == BitOperation::Not && sources.len() != 1 {
                    return Err(DecodeError::Invalid {
                        what: "BITOP NOT of other than one source",
                    });
                }
                KvCommand::BitOp { op, dst, sources }
            }
            0x15 => {
                let key = r.bytes("key", DECODE_BYTES_MAX)?;
                let n = r.count("registers", super::hll::HLL_REGISTERS as u32, 3)?;
                let mut registers = Vec::with_capacity(n);
                for _ in 0..n {
                    let register = u16::from_le_bytes([r.u8()?, r.u8()?]);
                    let rank = r.u8()?;
                    if usize::from(register) >= super::hll::HLL_REGISTERS
                        || rank == 0
                        || rank > super::hll::HLL_RANK_MAX
                    {
                        return Err(DecodeError::Invalid {
                            what: "HyperLogLog register or rank out of range",
                        });
                    }
                    registers.push((register, rank));
                }
                KvCommand::HllAdd { key, registers }
            }
            0x16 => KvCommand::HllMerge {
                dst: r.bytes("key", DECODE_BYTES_MAX)?,
                sources: get_keys(&mut r)?,
            },
            0x17 => KvCommand::Publish {
                channel: r.bytes("channel", DECODE_BYTES_MAX)?,
                message: r.bytes("message", DECODE_BYTES_MAX)?,
            },
            0x18 => {
                let key = r.bytes("key", DECODE_BYTES_MAX)?;
                let n = r.count("bitfield operations", BITFIELD_OPS_MAX, 20)?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    let action = r.u8()?;
                    let signed = get_bool(&mut r)?;
                    let ty = BitFieldType::new(signed, r.u8()?).ok_or(DecodeError::Invalid {
                        what: "bitfield type",
                    })?;
                    let offset = r.u64()?;
                    let overflow = match r.u8()? {
                        0 => BitFieldOverflow::Wrap,
                        1 => BitFieldOverflow::Sat,
                        2 => BitFieldOverflow::Fail,
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                what: "bitfield overflow",
                                tag,
                            })
                        }
                    };
                    let value = r.i64()?;
                    let action = match action {
                        0 if value == 0 => BitFieldAction::Get,
                        0 => {
                            return Err(DecodeError::Invalid {
                                what: "bitfield GET with a value",
                            })
                        }
                        1 => BitFieldAction::Set(value),
                        2 => BitFieldAction::IncrBy(value),
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                what: "bitfield action",
                                tag,
                            })
                        }
                    };
                    ops.push(BitFieldOp {
                        action,
                        ty,
                        offset,
                        overflow,
                    });
                }
                KvCommand::BitField { key, ops }
            }
            0x20..=0x2c => return Ok(KvCommand::Read(KvQuery::decode_tagged(tag, r)?)),
            tag if TypedQuery::is_tag(tag) => {
                return Ok(KvCommand::Read(KvQuery::decode_tagged(tag, r)?))
            }
            tag if TypedCommand::is_tag(tag) => {
                KvCommand::Typed(TypedCommand::decode_tagged(tag, &mut r)?)
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv command",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(cmd)
    }
}

impl KvQuery {
    /// A scan of every key starting with `prefix`.
    ///
    /// # Examples
    /// ```
    /// use flotilla_rsm::KvQuery;
    /// match KvQuery::prefix("user/", 10) {
    ///     KvQuery::Scan { end, .. } => assert_eq!(end.unwrap(), "user0"),
    ///     _ => unreachable!(),
    /// }
    /// ```
    pub fn prefix(prefix: impl Into<Bytes>, limit: u32) -> Self {
        let start: Bytes = prefix.into();
        KvQuery::Scan {
            end: prefix_end(&start),
            start,
            limit,
            keys_only: false,
        }
    }

    /// Encodes the query (see the module documentation).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            KvQuery::Get { key } => {
                out.put_u8(0x20);
                put_bytes(out, key);
            }
            KvQuery::MultiGet { keys } => {
                out.put_u8(0x21);
                put_keys(out, keys);
            }
            KvQuery::Exists { keys } => {
                out.put_u8(0x22);
                put_keys(out, keys);
            }
            KvQuery::Scan {
                start,
                end,
                limit,
                keys_only,
            } => {
                out.put_u8(0x23);
                put_bytes(out, start);
                put_opt(out, end);
                out.put_u32_le(*limit);
                out.put_u8(u8::from(*keys_only));
            }
            KvQuery::Count => out.put_u8(0x24),
            KvQuery::Deadline { key } => {
                out.put_u8(0x25);
                put_bytes(out, key);
            }
            KvQuery::NextDeadline => out.put_u8(0x26),
            KvQuery::Digest { key } => {
                out.put_u8(0x27);
                put_bytes(out, key);
            }
            KvQuery::Stats => out.put_u8(0x28),
            KvQuery::Describe { key } => {
                out.put_u8(0x29);
                put_bytes(out, key);
            }
            KvQuery::RandomKey { seed } => {
                out.put_u8(0x2a);
                out.put_u64_le(*seed);
            }
            KvQuery::Messages { after, limit } => {
                out.put_u8(0x2b);
                out.put_u64_le(*after);
                out.put_u32_le(*limit);
            }
            KvQuery::Script { payload } => {
                out.put_u8(0x2c);
                put_bytes(out, payload);
            }
            KvQuery::Typed(q) => q.encode_into(out),
        }
    }

    /// Decodes a query.
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input, including a command tag.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = r.u8()?;
        Self::decode_tagged(tag, r)
    }

    fn decode_tagged(tag: u8, mut r: Reader) -> Result<Self, DecodeError> {
        let q = match tag {
            0x20 => KvQuery::Get {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x21 => KvQuery::MultiGet {
                keys: get_keys(&mut r)?,
            },
            0x22 => KvQuery::Exists {
                keys: get_keys(&mut r)?,
            },
            0x23 => KvQuery::Scan {
                start: r.bytes("start key", DECODE_BYTES_MAX)?,
                end: get_opt(&mut r, "end key")?,
                limit: r.u32()?,
                keys_only: get_bool(&mut r)?,
            },
            0x24 => KvQuery::Count,
            0x25 => KvQuery::Deadline {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x26 => KvQuery::NextDeadline,
            0x27 => KvQuery::Digest {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x28 => KvQuery::Stats,
            0x29 => KvQuery::Describe {
                key: r.bytes("key", DECODE_BYTES_MAX)?,
            },
            0x2a => KvQuery::RandomKey { seed: r.u64()? },
            0x2b => KvQuery::Messages {
                after: r.u64()?,
                limit: r.u32()?,
            },
            0x2c => KvQuery::Script {
                payload: r.bytes("script payload", DECODE_BYTES_MAX)?,
            },
            tag if TypedQuery::is_tag(tag) => {
                KvQuery::Typed(TypedQuery::decode_tagged(tag, &mut r)?)
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv query",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(q)
    }
}

fn put_condition_code(c: PutCondition) -> u8 {
    match c {
        PutCondition::Always => 0,
        PutCondition::IfAbsent => 1,
        PutCondition::IfPresent => 2,
    }
}

fn get_put_condition(r: &mut Reader) -> Result<PutCondition, DecodeError> {
    Ok(match r.u8()? {
        0 => PutCondition::Always,
        1 => PutCondition::IfAbsent,
        2 => PutCondition::IfPresent,
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "put condition",
                tag,
            })
        }
    })
}

/// A number as `INCRBYFLOAT` and `HINCRBYFLOAT` store it: an integer
/// below 2^53 in full, else fixed notation rounded to 15 significant
/// digits (see `format_incr_float` in `collection.rs` for why this gives
/// Redis' text in the usual cases).
///
/// # Examples
/// ```
/// use flotilla_rsm::kv::format_float;
/// assert_eq!(format_float(0.1 + 0.2), "0.3");
/// assert_eq!(format_float(5.0e3), "5000");
/// assert_eq!(format_float(-1.5), "-1.5");
/// assert_eq!(format_float(1e20), "100000000000000000000");
/// ```
pub fn format_float(v: f64) -> String {
    String::from_utf8_lossy(&super::collection::format_incr_float(v)).into_owned()
}

/// The smallest key greater than every key starting with `prefix`, or
/// `None` if there is none (empty prefix or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

impl KvResult {
    /// Encodes the result (see the module documentation).
    pub fn encode(&self) -> Bytes {
        // The most common results need no allocation.
        match self {
            KvResult::Ok => return Bytes::from_static(&[0x00]),
            KvResult::Put {
                written: true,
                previous: None,
            } => return Bytes::from_static(&[0x05, 1, 0]),
            KvResult::Put {
                written: false,
                previous: None,
            } => return Bytes::from_static(&[0x05, 0, 0]),
            KvResult::Value(None) => return Bytes::from_static(&[0x01, 0]),
            _ => {}
        }
        let mut out = BytesMut::new();
        match self {
            KvResult::Ok => out.put_u8(0x00),
            KvResult::Value(v) => {
                out.reserve(6 + v.as_ref().map_or(0, Bytes::len));
                out.put_u8(0x01);
                put_opt(&mut out, v);
            }
            KvResult::Values(vs) => {
                out.put_u8(0x02);
                put_count(&mut out, vs.len());
                for v in vs {
                    put_opt(&mut out, v);
                }
            }
            KvResult::Count(n) => {
                out.put_u8(0x03);
                out.put_u64_le(*n);
            }
            KvResult::Int(n) => {
                out.put_u8(0x04);
                out.put_i64_le(*n);
            }
            KvResult::Put { written, previous } => {
                out.put_u8(0x05);
                out.put_u8(u8::from(*written));
                put_opt(&mut out, previous);
            }
            KvResult::Cas { swapped, previous } => {
                out.put_u8(0x06);
                out.put_u8(u8::from(*swapped));
                put_opt(&mut out, previous);
            }
            KvResult::Entries { entries, next } => {
                out.put_u8(0x07);
                put_count(&mut out, entries.len());
                for (k, v) in entries {
                    put_bytes(&mut out, k);
                    put_bytes(&mut out, v);
                }
                put_opt(&mut out, next);
            }
            KvResult::Len(n) => {
                out.put_u8(0x08);
                out.put_u64_le(*n);
            }
            KvResult::Items(items) => {
                out.reserve(5 + items.iter().map(|i| 4 + i.len()).sum::<usize>());
                out.put_u8(0x09);
                put_keys(&mut out, items);
            }
            KvResult::Records(records) => {
                out.put_u8(0x0a);
                put_count(&mut out, records.len());
                for (id, fields) in records {
                    put_bytes(&mut out, id);
                    put_keys(&mut out, fields);
                }
            }
            KvResult::Batch(results) => {
                out.put_u8(0x0b);
                put_count(&mut out, results.len());
                for r in results {
                    put_bytes(&mut out, &r.encode());
                }
            }
            KvResult::Aborted => out.put_u8(0x0c),
            KvResult::Ints(ns) => {
                out.reserve(5 + 9 * ns.len());
                out.put_u8(0x10);
                put_count(&mut out, ns.len());
                for n in ns {
                    match n {
                        None => out.put_u8(0),
                        Some(n) => {
                            out.put_u8(1);
                            out.put_i64_le(*n);
                        }
                    }
                }
            }
            KvResult::Digest(d) => {
                out.put_u8(0x0d);
                out.put_u64_le(*d);
            }
            KvResult::Stats {
                keys,
                expiring,
                data_bytes,
            } => {
                out.put_u8(0x0e);
                out.put_u64_le(*keys);
                out.put_u64_le(*expiring);
                out.put_u64_le(*data_bytes);
            }
            KvResult::Messages {
                through,
                evicted,
                messages,
            } => {
                out.reserve(
                    21 + messages
                        .iter()
                        .map(|m| 16 + m.1.len() + m.2.len())
                        .sum::<usize>(),
                );
                out.put_u8(0x0f);
                out.put_u64_le(*through);
                out.put_u64_le(*evicted);
                put_count(&mut out, messages.len());
                for (index, channel, message) in messages {
                    out.put_u64_le(*index);
                    put_bytes(&mut out, channel);
                    put_bytes(&mut out, message);
                }
            }
            KvResult::Error(e) => {
                out.put_u8(0x7f);
                out.put_u8(e.code());
            }
        }
        out.freeze()
    }

    /// Decodes a result; accepts `&[u8]` or `Bytes` (zero-copy for the
    /// latter).
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input.
    pub fn decode(buf: impl Into<ResultBytes>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf.into().0);
        let res = match r.u8()? {
            0x00 => KvResult::Ok,
            0x01 => KvResult::Value(get_opt(&mut r, "value")?),
            0x02 => {
                let n = r.count("values", MAX_KEYS, 1)?;
                KvResult::Values(
                    (0..n)
                        .map(|_| get_opt(&mut r, "value"))
                        .collect::<Result<_, _>>()?,
                )
            }
            0x03 => KvResult::Count(r.u64()?),
            0x04 => KvResult::Int(r.i64()?),
            0x05 => KvResult::Put {
                written: get_bool(&mut r)?,
                previous: get_opt(&mut r, "previous value")?,
            },
            0x06 => KvResult::Cas {
                swapped: get_bool(&mut r)?,
                previous: get_opt(&mut r, "previous value")?,
            },
            0x07 => {
                let n = r.count("entries", SCAN_LIMIT_MAX, 8)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push((
                        r.bytes("key", DECODE_BYTES_MAX)?,
                        r.bytes("value", DECODE_BYTES_MAX)?,
                    ));
                }
                KvResult::Entries {
                    entries,
                    next: get_opt(&mut r, "next key")?,
                }
            }
            0x08 => KvResult::Len(r.u64()?),
            0x09 => {
                let n = r.count("items", ITEMS_PER_RESULT_MAX, 4)?;
                KvResult::Items(
                    (0..n)
                        .map(|_| r.bytes("item", DECODE_BYTES_MAX))
                        .collect::<Result<_, _>>()?,
                )
            }
            0x0a => {
                let n = r.count("records", ITEMS_PER_RESULT_MAX, 8)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.bytes("record id", DECODE_BYTES_MAX)?;
                    let m = r.count("fields", ITEMS_PER_RESULT_MAX, 4)?;
                    let fields = (0..m)
                        .map(|_| r.bytes("field", DECODE_BYTES_MAX))
                        .collect::<Result<_, _>>()?;
                    records.push((id, fields));
                }
                KvResult::Records(records)
            }
            0x0b => {
                let n = r.count("batch results", BATCH_COMMANDS_MAX, 5)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    let b = r.bytes("batch result", DECODE_BYTES_MAX)?;
                    let one = KvResult::decode(b)?;
                    if matches!(one, KvResult::Batch(_)) {
                        return Err(DecodeError::Invalid {
                            what: "batch result in a batch result",
                        });
                    }
                    results.push(one);
                }
                KvResult::Batch(results)
            }
            0x0c => KvResult::Aborted,
            0x10 => {
                let n = r.count("integers", BITFIELD_OPS_MAX, 1)?;
                let mut ns = Vec::with_capacity(n);
                for _ in 0..n {
                    ns.push(match r.u8()? {
                        0 => None,
                        1 => Some(r.i64()?),
                        _ => {
                            return Err(DecodeError::Invalid {
                                what: "option flag",
                            })
                        }
                    });
                }
                KvResult::Ints(ns)
            }
            0x0d => KvResult::Digest(r.u64()?),
            0x0e => KvResult::Stats {
                keys: r.u64()?,
                expiring: r.u64()?,
                data_bytes: r.u64()?,
            },
            0x0f => {
                let through = r.u64()?;
                let evicted = r.u64()?;
                let n = r.count("messages", ITEMS_PER_RESULT_MAX, 16)?;
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    messages.push((
                        r.u64()?,
                        r.bytes("channel", DECODE_BYTES_MAX)?,
                        r.bytes("message", DECODE_BYTES_MAX)?,
                    ));
                }
                KvResult::Messages {
                    through,
                    evicted,
                    messages,
                }
            }
            0x7f => KvResult::Error(KvError::from_code(r.u8()?)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv result",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(res)
    }
}

/// Bytes to decode a [`KvResult`] from (from `Bytes`, `&Bytes` or `&[u8]`).
#[derive(Debug)]
pub struct ResultBytes(Bytes);

impl From<Bytes> for ResultBytes {
    fn from(b: Bytes) -> Self {
        ResultBytes(b)
    }
}

impl From<&Bytes> for ResultBytes {
    fn from(b: &Bytes) -> Self {
        ResultBytes(b.clone())
    }
}

impl From<&[u8]> for ResultBytes {
    fn from(b: &[u8]) -> Self {
        ResultBytes(Bytes::copy_from_slice(b))
    }
}

/// Parses a value as Redis does for `INCR`: an optional `-`, then decimal
/// digits without leading zeros, within `i64`.
pub(crate) fn parse_i64(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || neg) {
        return None;
    }
    // Accumulate negatively so i64::MIN parses.
    let mut n: i64 = 0;
    for d in digits {
        n = n.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg {
        Some(n)
    } else {
        n.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The decoder's answer for a put, in the fast lane's shape.
    fn decoded_put(buf: &[u8]) -> Option<(Vec<u8>, Vec<u8>, PutCondition, bool)> {
        match KvCommand::decode(Bytes::copy_from_slice(buf)) {
            Ok(KvCommand::Put {
                key,
                value,
                condition,
                return_previous,
            }) => Some((key.to_vec(), value.to_vec(), condition, return_previous)),
            _ => None,
        }
    }

    proptest! {
        /// `put_in_place` accepts exactly what `decode` turns into a `Put`,
        /// with the same fields: well-formed puts with every condition and
        /// flag byte (valid or not), cut short or extended, with corrupt
        /// lengths, and arbitrary bytes.
        #[test]
        fn put_in_place_agrees_with_decode(
            key in proptest::collection::vec(any::<u8>(), 0..30),
            value in proptest::collection::vec(any::<u8>(), 0..30),
            condition in 0u8..4,
            flag in 0u8..3,
            cut in 0usize..80,
            extra in proptest::collection::vec(any::<u8>(), 0..3),
            len_patch in proptest::option::of((0usize..10, any::<u8>())),
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = vec![0x01];
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(&key);
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(&value);
            buf.extend_from_slice(&[condition, flag]);
            let mut variants = vec![buf.clone(), buf[..cut.min(buf.len())].to_vec()];
            let mut longer = buf.clone();
            longer.extend_from_slice(&extra);
            variants.push(longer);
            if let Some((at, byte)) = len_patch {
                let mut patched = buf.clone();
                let at = 1 + at % (patched.len() - 1);
                patched[at] = byte;
                variants.push(patched);
            }
            let mut random = garbage.clone();
            if let Some(first) = random.first_mut() {
                *first = 0x01;
            }
            variants.push(random);
            variants.push(garbage);
            for v in &variants {
                let fast = put_in_place(v).map(|(k, val, c, r)| (k.to_vec(), val.to_vec(), c, r));
                prop_assert_eq!(fast, decoded_put(v), "bytes {:?}", v);
            }
            prop_assert!(put_in_place(&buf).is_some() == (condition < 3 && flag < 2));
        }

        /// `get_in_place` accepts exactly what `KvQuery::decode` turns into
        /// a `Get`, with the same key; the directly encoded value result is
        /// the `KvResult` encoding.
        #[test]
        fn get_in_place_agrees_with_decode(
            key in proptest::collection::vec(any::<u8>(), 0..30),
            cut in 0usize..40,
            extra in proptest::collection::vec(any::<u8>(), 0..3),
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
        ) {
            let buf = KvQuery::Get { key: Bytes::copy_from_slice(&key) }.encode().to_vec();
            let mut longer = buf.clone();
            longer.extend_from_slice(&extra);
            let mut random = garbage.clone();
            if let Some(first) = random.first_mut() {
                *first = 0x20;
            }
            for v in [buf.clone(), buf[..cut.min(buf.len())].to_vec(), longer, random, garbage] {
                let decoded = match KvQuery::decode(Bytes::copy_from_slice(&v)) {
                    Ok(KvQuery::Get { key }) => Some(key.to_vec()),
                    _ => None,
                };
                prop_assert_eq!(get_in_place(&v).map(<[u8]>::to_vec), decoded, "bytes {:?}", v);
            }
            prop_assert_eq!(get_in_place(&buf), Some(&key[..]));
            let typed = KvResult::Value(value.clone().map(Bytes::from)).encode();
            prop_assert_eq!(encode_value_result(value.as_deref()), typed);
        }
    }

    #[test]
    fn parse_i64_like_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1.0",
            b"9223372036854775808",
            b"abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefix_end_edges() {
        assert_eq!(prefix_end(b"ab").unwrap(), "ac");
        assert_eq!(prefix_end(b"a\xff").unwrap(), "b");
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn golden_put() {
        let c = KvCommand::Put {
            key: "k".into(),
            value: "vv".into(),
            condition: PutCondition::IfAbsent,
            return_previous: true,
        };
        assert_eq!(
            &c.encode()[..],
            &[0x01, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'v', b'v', 1, 1]
        );
        assert_eq!(
            &KvResult::Error(KvError::NotInteger).encode()[..],
            &[0x7f, 1]
        );
    }
}
