//! The bundled key-value store: an in-memory ordered map of byte strings
//! with Redis-like commands, as a [`StateMachine`]. A key holds a string
//! or one of the Redis data types (list, hash, set, sorted set, stream:
//! see [`TypedCommand`] and [`TypedQuery`]).

mod bits;
mod collection;
mod command;
mod exec;
mod expiry;
mod hash;
pub mod hll;
mod key;
mod map;
mod pubsub;
mod tree;
mod typed;
mod value;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use bits::{bitfield_get, bitfield_written};
use collection::{Collection, Elem, Score, StreamId};
pub use command::{
    format_float, prefix_end, BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType,
    BitOperation, DeadlineChange, ExpireCondition, KvCommand, KvError, KvQuery, KvResult,
    PutCondition, ResultBytes, StreamTrim, TrimThreshold, TypedCommand, TypedQuery, XAddId,
    ZAddCompare, ZAddCondition, BATCH_COMMANDS_MAX, BITFIELD_OPS_MAX, DEADLINE_MS_MAX,
    EXPIRE_DUE_KEYS_MAX, ITEMS_PER_RESULT_MAX, KEYS_PER_COMMAND_MAX, KEY_BYTES_MAX,
    MESSAGES_KEPT_MAX, MESSAGE_BYTES_KEPT_MAX, MESSAGE_BYTES_READ_MAX, RESULT_BYTES_MAX,
    SCAN_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_BYTES_MAX,
};
use expiry::Deadlines;
use std::rc::Rc;

use key::Key;
use map::CowMap;
use tree::CowTree;
use value::Value;

use crate::error::{DecodeError, QueryError, SnapshotError};
use crate::state_machine::{LocalBoxFuture, SmEntry, SmSnapshot, StateMachine};

/// The kind name the KV store records in its snapshots.
pub const KV_KIND: &str = "flotilla.kv/1";

/// Snapshot data is written in pieces of about this size; the writer yields
/// to the executor after each.
const WRITE_PIECE_BYTES: usize = 64 << 10;
/// Recovery yields to the executor after this many pairs (~0.1 ms of work,
/// as GLOMMIO.md asks of every CPU loop). This does not make glommio 0.9's
/// park race (GLOMMIO.md bug 2) impossible: see the README's glommio notes.
const YIELD_EVERY_ENTRIES: u64 = 256;

/// The in-memory ordered KV store.
///
/// Keys and values are copied out of the command buffer when stored, so a
/// stored 16-byte value never pins a large network or WAL buffer.
///
/// # Examples
/// ```
/// use flotilla_rsm::{KvCommand, KvQuery, KvResult, KvStore};
/// let mut kv = KvStore::new();
/// assert_eq!(kv.execute(&KvCommand::Increment { key: "n".into(), delta: 5 }), KvResult::Int(5));
/// assert_eq!(kv.read(&KvQuery::Get { key: "n".into() }), KvResult::Value(Some("5".into())));
///
/// // A list (Redis LPUSH / LRANGE); a string command on it is refused.
/// use flotilla_rsm::{KvError, TypedCommand, TypedQuery};
/// let push = TypedCommand::ListPush {
///     key: "l".into(), left: true, only_existing: false, values: vec!["a".into(), "b".into()],
/// };
/// assert_eq!(kv.execute(&KvCommand::Typed(push)), KvResult::Len(2));
/// let range = TypedQuery::ListRange { key: "l".into(), start: 0, stop: -1 };
/// assert_eq!(kv.read(&KvQuery::Typed(range)), KvResult::Items(vec!["b".into(), "a".into()]));
/// assert_eq!(kv.read(&KvQuery::Get { key: "l".into() }), KvResult::Error(KvError::WrongType));
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvStore {
    /// Every key; a key holding a collection has [`Value::typed_marker`].
    map: CowMap,
    /// The collections, by key (copy-on-write like `map`: a capture is
    /// cheap, and a collection a view shares is copied on its next write).
    /// Invariant: exactly the keys marked in `map`.
    typed: CowTree<Rc<Collection>>,
    /// Sum of the collections' element bytes.
    typed_bytes: u64,
    /// Keys that expire, and when (see `expiry.rs`). Invariant: only keys
    /// present in `map`.
    deadlines: Deadlines,
    /// Recently published messages (not data: see `pubsub.rs`).
    messages: pubsub::Ring,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Total bytes of keys and values (a collection counts its elements).
    pub fn data_bytes(&self) -> u64 {
        self.map.bytes() + self.typed_bytes
    }

    /// The string value of `key` (`None` if absent or a collection).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map
            .get(key)
            .filter(|v| !v.is_typed())
            .map(Value::as_slice)
    }

    /// Every pair in key order (a collection's value reads as empty).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.map
            .iter()
            .map(|(k, v)| (k, if v.is_typed() { &[][..] } else { v.as_slice() }))
    }

    /// Removes `key` (of any type); true if it existed.
    fn remove_key(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            None => false,
            Some(v) => {
                self.deadlines.clear(key);
                if v.is_typed() {
                    self.drop_collection(key);
                }
                true
            }
        }
    }

    /// Forgets the collection of `key`, whose marker was just removed or
    /// overwritten in `map`.
    fn drop_collection(&mut self, key: &[u8]) {
        let c = self
            .typed
            .remove(&Key::new(key))
            .expect("a marked key has a collection");
        self.typed_bytes -= c.bytes() as u64;
    }

    /// Executes a command (writes and reads) against the store.
    pub fn execute(&mut self, cmd: &KvCommand) -> KvResult {
        match cmd {
            KvCommand::Put {
                key,
                value,
                condition,
                return_previous,
            } => self.put(key, value, *condition, *return_previous),
            KvCommand::Delete { keys } => {
                let n = keys.iter().filter(|k| self.remove_key(k)).count();
                KvResult::Count(n as u64)
            }
            KvCommand::Append { key, value } => {
                if let Some(e) = check_key(key) {
                    return KvResult::Error(e);
                }
                self.map.upsert(key, |cur| {
                    if cur.is_some_and(Value::is_typed) {
                        return (None, KvResult::Error(KvError::WrongType));
                    }
                    let old = cur.map_or(&[][..], |c| &c[..]);
                    if let Some(e) = check_value(old.len() + value.len()) {
                        return (None, KvResult::Error(e));
                    }
                    let len = (old.len() + value.len()) as u64;
                    let v = if len as usize <= value::INLINE_VALUE_BYTES {
                        Value::copy(&[old, &value[..]].concat())
                    } else {
                        let mut v = BytesMut::with_capacity(old.len() + value.len());
                        v.put_slice(old);
                        v.put_slice(value);
                        Value::Heap(v.freeze())
                    };
                    (Some(v), KvResult::Len(len))
                })
            }
            KvCommand::CompareAndSet {
                key,
                expected,
                new_value,
            } => {
                if let Some(e) =
                    check_key(key).or_else(|| new_value.as_ref().and_then(|v| check_value(v.len())))
                {
                    return KvResult::Error(e);
                }
                if self.map.get(key).is_some_and(Value::is_typed) {
                    return KvResult::Error(KvError::WrongType);
                }
                match new_value {
                    Some(new_value) => {
                        let r = self.map.upsert(key, |cur| {
                            let swapped = cur.map(|c| &c[..]) == expected.as_deref();
                            (
                                swapped.then(|| Value::copy(new_value)),
                                KvResult::Cas {
                                    swapped,
                                    previous: cur.map(Value::to_bytes),
                                },
                            )
                        });
                        if matches!(r, KvResult::Cas { swapped: true, .. }) {
                            // A new value, as SET: no deadline.
                            self.deadlines.clear(key);
                        }
                        r
                    }
                    None => {
                        let previous = self.map.get(key).map(Value::to_bytes);
                        let swapped = previous.as_deref() == expected.as_deref();
                        if swapped && previous.is_some() {
                            self.remove_key(key);
                        }
                        KvResult::Cas { swapped, previous }
                    }
                }
            }
            KvCommand::Increment { key, delta } => {
                if let Some(e) = check_key(key) {
                    return KvResult::Error(e);
                }
                self.map.upsert(key, |cur| {
                    let current = match cur {
                        None => 0,
                        Some(v) if v.is_typed() => {
                            return (None, KvResult::Error(KvError::WrongType))
                        }
                        Some(v) => match command::parse_i64(v) {
                            Some(n) => n,
                            None => return (None, KvResult::Error(KvError::NotInteger)),
                        },
                    };
                    match current.checked_add(*delta) {
                        Some(n) => (Some(format_i64(n)), KvResult::Int(n)),
                        None => (None, KvResult::Error(KvError::Overflow)),
                    }
                })
            }
            KvCommand::MultiPut { pairs } => {
                // Validate everything first: all or nothing.
                for (k, v) in pairs {
                    if let Some(e) = check_key(k).or_else(|| check_value(v.len())) {
                        return KvResult::Error(e);
                    }
                }
                for (k, v) in pairs {
                    let was_typed = self.map.upsert(k, |cur| {
                        (Some(Value::copy(v)), cur.is_some_and(Value::is_typed))
                    });
                    if was_typed {
                        self.drop_collection(k);
                    }
                    self.deadlines.clear(k);
                }
                KvResult::Ok
            }
            KvCommand::Clear => {
                // A capture shares the old maps and keeps them.
                self.map = CowMap::default();
                self.typed = CowTree::default();
                self.typed_bytes = 0;
                self.deadlines.reset();
                KvResult::Ok
            }
            KvCommand::Take { key } => match self.map.get(key) {
                None => KvResult::Value(None),
                Some(v) if v.is_typed() => KvResult::Error(KvError::WrongType),
                Some(v) => {
                    let previous = v.to_bytes();
                    self.remove_key(key);
                    KvResult::Value(Some(previous))
                }
            },
            KvCommand::PutExpiring {
                key,
                value,
                condition,
                return_previous,
                expire_at_ms,
            } => {
                let r = self.put_keeping_deadline(key, value, *condition, *return_previous);
                if matches!(r, KvResult::Put { written: true, .. }) {
                    if let Some(at) = expire_at_ms {
                        self.deadlines.set(key, (*at).min(DEADLINE_MS_MAX));
                    }
                }
                r
            }
            KvCommand::Expire {
                key,
                at_ms,
                now_ms,
                condition,
            } => {
                if !self.map.contains_key(key) {
                    return KvResult::Int(0);
                }
                let at = (*at_ms).min(DEADLINE_MS_MAX);
                let current = self.deadlines.get(key);
                let ok = match condition {
                    ExpireCondition::Always => true,
                    ExpireCondition::IfNone => current.is_none(),
                    ExpireCondition::IfSome => current.is_some(),
                    // No deadline: never expires, later than anything.
                    ExpireCondition::Later => current.is_some_and(|c| at > c),
                    ExpireCondition::Earlier => current.is_none_or(|c| at < c),
                };
                if !ok {
                    return KvResult::Int(0);
                }
                if at <= *now_ms {
                    self.remove_key(key);
                } else {
                    self.deadlines.set(key, at);
                }
                KvResult::Int(1)
            }
            KvCommand::Persist { key } => {
                KvResult::Int(i64::from(self.deadlines.clear(key).is_some()))
            }
            KvCommand::ExpireDue { now_ms } => {
                let due = self.deadlines.due(*now_ms, EXPIRE_DUE_KEYS_MAX);
                for k in &due {
                    let existed = self.remove_key(k);
                    debug_assert!(existed, "a key with a deadline exists");
                }
                KvResult::Count(due.len() as u64)
            }
            KvCommand::IncrementFloat { key, delta } => {
                if let Some(e) = check_key(key) {
                    return KvResult::Error(e);
                }
                self.map.upsert(key, |cur| {
                    let current = match cur {
                        None => 0.0,
                        Some(v) if v.is_typed() => {
                            return (None, KvResult::Error(KvError::WrongType))
                        }
                        Some(v) => match collection::parse_float(v.as_slice()) {
                            Some(f) => f,
                            None => return (None, KvResult::Error(KvError::NotFloat)),
                        },
                    };
                    let n = current + delta;
                    if !n.is_finite() {
                        return (None, KvResult::Error(KvError::NanOrInfinity));
                    }
                    let text = collection::format_incr_float(n);
                    (Some(Value::copy(&text)), KvResult::Value(Some(text)))
                })
            }
            KvCommand::GetExpiring {
                key,
                deadline,
                now_ms,
            } => match self.map.get(key) {
                None => KvResult::Value(None),
                Some(v) if v.is_typed() => KvResult::Error(KvError::WrongType),
                Some(v) => {
                    let value = v.to_bytes();
                    match *deadline {
                        DeadlineChange::Keep => {}
                        DeadlineChange::Clear => {
                            self.deadlines.clear(key);
                        }
                        DeadlineChange::At(at) if at <= *now_ms => {
                            self.remove_key(key);
                        }
                        DeadlineChange::At(at) => self.deadlines.set(key, at.min(DEADLINE_MS_MAX)),
                    }
                    KvResult::Value(Some(value))
                }
            },
            KvCommand::Rename {
                from,
                to,
                only_if_absent,
            } => self.rename(from, to, *only_if_absent),
            KvCommand::Copy { from, to, replace } => self.copy(from, to, *replace),
            KvCommand::SetRange { key, offset, value } => {
                if let Some(e) = check_key(key) {
                    return KvResult::Error(e);
                }
                let current = match self.map.get(key) {
                    Some(v) if v.is_typed() => return KvResult::Error(KvError::WrongType),
                    v => v.map_or(0, |v| v.as_slice().len()),
                };
                if value.is_empty() {
                    return KvResult::Len(current as u64);
                }
                let end = match offset.checked_add(value.len() as u64) {
                    Some(end) if end <= VALUE_BYTES_MAX as u64 => end as usize,
                    _ => return KvResult::Error(KvError::ValueTooLarge),
                };
                let start = end - value.len();
                self.map.upsert(key, |cur| {
                    let mut buf = cur.map_or_else(Vec::new, |c| c.as_slice().to_vec());
                    if buf.len() < end {
                        buf.resize(end, 0);
                    }
                    buf[start..end].copy_from_slice(value);
                    let len = buf.len() as u64;
                    (Some(Value::from(Bytes::from(buf))), KvResult::Len(len))
                })
            }
            KvCommand::SetBit { key, offset, value } => self.set_bit(key, *offset, *value),
            KvCommand::BitOp { op, dst, sources } => self.bit_op(*op, dst, sources),
            KvCommand::HllAdd { key, registers } => self.hll_add(key, registers),
            KvCommand::HllMerge { dst, sources } => self.hll_merge(dst, sources),
            KvCommand::BitField { key, ops } => self.bit_field(key, ops),
            KvCommand::Publish { channel, message } => {
                if let Some(e) = check_value(message.len()).or_else(|| check_key(channel)) {
                    return KvResult::Error(e);
                }
                self.messages.publish(channel, message);
                KvResult::Ok
            }
            KvCommand::Read(q) => self.read(q),
            KvCommand::Typed(c) => self.execute_typed(c),
            KvCommand::Batch { guards, commands } => {
                if guards.iter().any(|(key, d)| self.digest(key) != *d) {
                    return KvResult::Aborted;
                }
                KvResult::Batch(
                    commands
                        .iter()
                        .map(|c| match c {
                            // The decoder refuses these; a caller building
                            // one by hand gets an error, not a recursion.
                            KvCommand::Batch { .. } => KvResult::Error(KvError::Malformed),
                            c => self.execute(c),
                        })
                        .collect(),
                )
            }
        }
    }

    /// [`KvCommand::Rename`].
    fn rename(&mut self, from: &[u8], to: &[u8], only_if_absent: bool) -> KvResult {
        if let Some(e) = check_key(to) {
            return KvResult::Error(e);
        }
        if !self.map.contains_key(from) {
            return KvResult::Error(KvError::NoSuchKey);
        }
        if from == to {
            return KvResult::Int(i64::from(!only_if_absent));
        }
        if only_if_absent && self.map.contains_key(to) {
            return KvResult::Int(0);
        }
        let deadline = self.deadlines.clear(from);
        let value = self.map.remove(from).expect("checked above");
        // Moved, not dropped: `typed_bytes` still counts it.
        let collection = value
            .is_typed()
            .then(|| self.typed.remove(&Key::new(from)))
            .flatten();
        self.remove_key(to);
        self.map.upsert(to, |_| (Some(value), ()));
        if let Some(c) = collection {
            self.typed.insert(Key::new(to), c);
        }
        if let Some(at) = deadline {
            self.deadlines.set(to, at);
        }
        KvResult::Int(1)
    }

    /// [`KvCommand::Copy`].
    fn copy(&mut self, from: &[u8], to: &[u8], replace: bool) -> KvResult {
        if let Some(e) = check_key(to) {
            return KvResult::Error(e);
        }
        let Some(value) = self.map.get(from).cloned() else {
            return KvResult::Int(0);
        };
        if from == to || (!replace && self.map.contains_key(to)) {
            return KvResult::Int(0);
        }
        // Shared until either side is written (copy on write).
        let collection = value
            .is_typed()
            .then(|| self.typed.get(&Key::new(from)).cloned())
            .flatten();
        let deadline = self.deadlines.get(from);
        self.remove_key(to);
        self.map.upsert(to, |_| (Some(value), ()));
        if let Some(c) = collection {
            self.typed_bytes += c.bytes() as u64;
            self.typed.insert(Key::new(to), c);
        }
        if let Some(at) = deadline {
            self.deadlines.set(to, at);
        }
        KvResult::Int(1)
    }

    /// The digest of `key` ([`KvQuery::Digest`]): 64-bit FNV-1a of its
    /// deadline and its value in the snapshot encoding's element order; 0
    /// if the key is absent (a present key never digests to 0).
    pub fn digest(&self, key: &[u8]) -> u64 {
        let Some(v) = self.map.get(key) else {
            return 0;
        };
        let mut h = Fnv::new();
        match self.deadlines.get(key) {
            None => h.u64(0),
            Some(at) => {
                h.u64(1);
                h.u64(at);
            }
        }
        if !v.is_typed() {
            h.u64(0);
            h.elem(v.as_slice());
        } else {
            match &**self
                .typed
                .get(&Key::new(key))
                .expect("a marked key has a collection")
            {
                Collection::List(l) => {
                    h.u64(u64::from(MARK_LIST));
                    h.u64(l.items.len() as u64);
                    l.items.iter().for_each(|e| h.elem(e.as_slice()));
                }
                Collection::Hash(m) => {
                    h.u64(u64::from(MARK_HASH));
                    h.u64(m.map.len() as u64);
                    for (f, v) in &m.map {
                        h.elem(f.as_slice());
                        h.elem(v.as_slice());
                    }
                }
                Collection::Set(s) => {
                    h.u64(u64::from(MARK_SET));
                    h.u64(s.members.len() as u64);
                    s.members.iter().for_each(|e| h.elem(e.as_slice()));
                }
                Collection::ZSet(z) => {
                    h.u64(u64::from(MARK_ZSET));
                    h.u64(z.order.len() as u64);
                    for (score, m) in &z.order {
                        h.u64(score.0.to_bits());
                        h.elem(m.as_slice());
                    }
                }
                Collection::Stream(s) => {
                    h.u64(u64::from(MARK_STREAM));
                    h.u64(s.last.ms);
                    h.u64(s.last.seq);
                    h.u64(s.entries.len() as u64);
                    for (id, fields) in &s.entries {
                        h.u64(id.ms);
                        h.u64(id.seq);
                        h.u64(fields.len() as u64);
                        fields.iter().for_each(|f| h.elem(f.as_slice()));
                    }
                }
            }
        }
        h.0.max(1)
    }

    /// `KvCommand::Put`, from borrowed key and value: a written value has
    /// no deadline (Redis `SET` without `KEEPTTL`).
    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: PutCondition,
        return_previous: bool,
    ) -> KvResult {
        let r = self.put_keeping_deadline(key, value, condition, return_previous);
        if self.deadlines.len() > 0 && matches!(r, KvResult::Put { written: true, .. }) {
            self.deadlines.clear(key);
        }
        r
    }

    /// A put that leaves the key's deadline as it is.
    fn put_keeping_deadline(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: PutCondition,
        return_previous: bool,
    ) -> KvResult {
        if let Some(e) = check_key(key).or_else(|| check_value(value.len())) {
            return KvResult::Error(e);
        }
        let mut was_typed = false;
        let r = self.map.upsert(key, |cur| {
            // SET replaces a key of any type; SET ... GET reads the old
            // value as a string first.
            if cur.is_some_and(Value::is_typed) {
                if return_previous {
                    return (None, KvResult::Error(KvError::WrongType));
                }
                was_typed = condition != PutCondition::IfAbsent;
            }
            let written = match condition {
                PutCondition::Always => true,
                PutCondition::IfAbsent => cur.is_none(),
                PutCondition::IfPresent => cur.is_some(),
            };
            let previous = if return_previous {
                cur.map(Value::to_bytes)
            } else {
                None
            };
            (
                written.then(|| Value::copy(value)),
                KvResult::Put { written, previous },
            )
        });
        if was_typed {
            self.drop_collection(key);
        }
        r
    }

    /// Answers a query.
    pub fn read(&self, q: &KvQuery) -> KvResult {
        match q {
            KvQuery::Get { key } => match self.map.get(key) {
                Some(v) if v.is_typed() => KvResult::Error(KvError::WrongType),
                v => KvResult::Value(v.map(Value::to_bytes)),
            },
            KvQuery::MultiGet { keys } => {
                let mut bytes = 0usize;
                let mut values = Vec::with_capacity(keys.len());
                for k in keys {
                    // As Redis' MGET: a key of another type reads as nil.
                    let v = self
                        .map
                        .get(k)
                        .filter(|v| !v.is_typed())
                        .map(Value::to_bytes);
                    bytes += v.as_ref().map_or(0, Bytes::len);
                    if bytes > RESULT_BYTES_MAX {
                        return KvResult::Error(KvError::ResultTooLarge);
                    }
                    values.push(v);
                }
                KvResult::Values(values)
            }
            KvQuery::Exists { keys } => {
                KvResult::Count(keys.iter().filter(|k| self.map.contains_key(k)).count() as u64)
            }
            KvQuery::Deadline { key } => KvResult::Int(if !self.map.contains_key(key) {
                -2
            } else {
                self.deadlines.get(key).map_or(-1, |at| at as i64)
            }),
            KvQuery::NextDeadline => {
                KvResult::Int(self.deadlines.next().map_or(-1, |at| at as i64))
            }
            KvQuery::Digest { key } => KvResult::Digest(self.digest(key)),
            KvQuery::Stats => KvResult::Stats {
                keys: self.map.len() as u64,
                expiring: self.deadlines.len() as u64,
                data_bytes: self.data_bytes(),
            },
            KvQuery::Scan {
                start,
                end,
                limit,
                keys_only,
            } => {
                let limit = (*limit).min(SCAN_LIMIT_MAX) as usize;
                let mut entries = Vec::new();
                let mut bytes = 0usize;
                let mut next = None;
                for (k, v) in self.map.range(start, end.as_deref()) {
                    if entries.len() >= limit || (bytes >= SCAN_BYTES_MAX && !entries.is_empty()) {
                        next = Some(Bytes::copy_from_slice(k));
                        break;
                    }
                    let v = if *keys_only || v.is_typed() {
                        Bytes::new()
                    } else {
                        v.to_bytes()
                    };
                    bytes += k.len() + v.len();
                    entries.push((Bytes::copy_from_slice(k), v));
                }
                KvResult::Entries { entries, next }
            }
            KvQuery::Count => KvResult::Count(self.map.len() as u64),
            KvQuery::Describe { key } => self.describe(key),
            KvQuery::RandomKey { seed } => {
                KvResult::Value(self.map.random_key(*seed).map(Bytes::copy_from_slice))
            }
            KvQuery::Messages { after, limit } => self.messages.read(*after, *limit),
            KvQuery::Script { payload } => match SCRIPT_RUNNER.get() {
                Some(run) => KvResult::Value(Some(run(self, payload))),
                None => KvResult::Error(KvError::NoScriptRunner),
            },
            KvQuery::Typed(q) => self.read_typed(q),
        }
    }

    /// A copy to try commands on: every key shared copy-on-write (a write
    /// to the copy copies only the chunk or leaf it changes), no published
    /// messages. What a [`ScriptRunner`] runs a script's commands against
    /// before they are proposed.
    pub fn scratch(&self) -> KvStore {
        KvStore {
            map: self.map.clone(),
            typed: self.typed.clone(),
            typed_bytes: self.typed_bytes,
            deadlines: self.deadlines.clone(),
            messages: pubsub::Ring::default(),
        }
    }
}

/// Runs a [`KvQuery::Script`]: the store of the replica that serves the
/// query and the query's payload in, the answer out. It is called on the
/// shard's thread, inside the query, so it must be quick (the Redis
/// layer's runner stops a script after a time limit).
pub type ScriptRunner = fn(&KvStore, &[u8]) -> Bytes;

static SCRIPT_RUNNER: std::sync::OnceLock<ScriptRunner> = std::sync::OnceLock::new();

/// Installs the process's [`ScriptRunner`] (the first one installed
/// stays; false if one was installed already). Without one,
/// [`KvQuery::Script`] answers [`KvError::NoScriptRunner`].
pub fn install_script_runner(runner: ScriptRunner) -> bool {
    SCRIPT_RUNNER.set(runner).is_ok()
}

/// The encoded `WrongType` result (out of line: the GET lane stays small).
#[cold]
#[inline(never)]
fn wrong_type_result() -> Bytes {
    KvResult::Error(KvError::WrongType).encode()
}

/// Decimal text of `n`, without going through `fmt` (at most 20 bytes:
/// stored inline, no allocation).
fn format_i64(n: i64) -> Value {
    let mut buf = [0u8; 21];
    let mut at = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    Value::copy(&buf[at..])
}

/// How many entries ahead [`StateMachine::apply`] prefetches a put's index
/// slots (reading the chunk's directory entry, prefetched
/// [`PREFETCH_DIRECTORY_AHEAD`] entries ahead).
const PREFETCH_SLOTS_AHEAD: usize = 8;
/// How many entries ahead [`StateMachine::apply`] prefetches a put's chunk
/// directory entry.
const PREFETCH_DIRECTORY_AHEAD: usize = 16;

impl KvStore {
    /// Prefetches the index lines of `cmd`'s key if it is a put (a hint):
    /// the directory entry of its chunk, or (`slots`) its home slots.
    fn prefetch_put(&self, cmd: &[u8], slots: bool) {
        if let Some((key, ..)) = command::put_in_place(cmd) {
            if slots {
                self.map.prefetch(key);
            } else {
                self.map.prefetch_directory(key);
            }
        }
    }
}

fn check_key(key: &[u8]) -> Option<KvError> {
    (key.len() > KEY_BYTES_MAX).then_some(KvError::KeyTooLarge)
}

fn check_value(len: usize) -> Option<KvError> {
    (len > VALUE_BYTES_MAX).then_some(KvError::ValueTooLarge)
}

impl StateMachine for KvStore {
    fn kind(&self) -> &str {
        KV_KIND
    }

    fn apply(&mut self, entries: &mut [SmEntry]) {
        // The index lines of later puts are requested before each put (two
        // stages: a chunk's directory entry, then, once it is cached, the
        // slots it points to): on a store larger than the cache every put
        // waits for ~3 misses (and TLB misses), and this way the misses of
        // successive puts overlap instead of queueing.
        for e in entries.iter().take(PREFETCH_DIRECTORY_AHEAD) {
            self.prefetch_put(&e.cmd, false);
        }
        for e in entries.iter().take(PREFETCH_SLOTS_AHEAD) {
            self.prefetch_put(&e.cmd, true);
        }
        for i in 0..entries.len() {
            if let Some(ahead) = entries.get(i + PREFETCH_DIRECTORY_AHEAD) {
                self.prefetch_put(&ahead.cmd, false);
            }
            if let Some(ahead) = entries.get(i + PREFETCH_SLOTS_AHEAD) {
                self.prefetch_put(&ahead.cmd, true);
            }
            let e = &mut entries[i];
            self.messages.at = e.index;
            // Puts, the common command, are read in place (no slices of
            // the entry, no command value); everything else is decoded.
            if let Some((key, value, condition, return_previous)) = command::put_in_place(&e.cmd) {
                e.result = self.put(key, value, condition, return_previous).encode();
                continue;
            }
            let result = match KvCommand::decode(std::mem::take(&mut e.cmd)) {
                Ok(cmd) => self.execute(&cmd),
                Err(err) => {
                    tracing::debug!(index = e.index, error = %err, "malformed kv command");
                    KvResult::Error(KvError::Malformed)
                }
            };
            e.result = result.encode();
        }
    }

    fn query(&self, query: &[u8]) -> Result<Bytes, QueryError> {
        // Gets, the common query, are read in place and answered straight
        // from the stored value (no copy of the query, no clone of the
        // value, one allocation: the result).
        if let Some(key) = command::get_in_place(query) {
            return Ok(match self.map.get(key) {
                Some(v) if v.is_typed() => wrong_type_result(),
                v => command::encode_value_result(v.map(|v| &v[..])),
            });
        }
        let q = KvQuery::decode(Bytes::copy_from_slice(query)).map_err(|e| match e {
            DecodeError::UnknownTag { .. }
                if query
                    .first()
                    .is_some_and(|t| (0x01..=0x1f).contains(t) || TypedCommand::is_tag(*t)) =>
            {
                QueryError::Unsupported
            }
            e => QueryError::Malformed(e),
        })?;
        Ok(self.read(&q).encode())
    }

    fn capture(&self) -> Box<dyn SmSnapshot> {
        Box::new(KvSnapshot {
            map: self.map.clone(),
            typed: self.typed.clone(),
            deadlines: self.deadlines.clone(),
        })
    }

    fn fresh(&self) -> Box<dyn StateMachine> {
        Box::new(KvStore::new())
    }

    fn recover<'a>(
        &'a mut self,
        src: &'a mut (dyn AsyncRead + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
        Box::pin(async move {
            let (map, typed, deadlines) = read_kv_data(src).await?;
            self.typed_bytes = typed.iter().map(|(_, c)| c.bytes() as u64).sum();
            self.map = map;
            self.typed = typed;
            self.deadlines = deadlines;
            Ok(())
        })
    }
}

/// A captured view of a [`KvStore`] (shares its hash chunks and tree nodes
/// copy-on-write).
struct KvSnapshot {
    map: CowMap,
    typed: CowTree<Rc<Collection>>,
    deadlines: Deadlines,
}

impl SmSnapshot for KvSnapshot {
    /// Writes the pairs in strictly increasing key order, followed by the
    /// CRC32 of every byte before it (so the KV data verifies itself even
    /// outside the snapshot stream's chunk framing). A string value is
    /// written as it always was; a collection takes a marker in place of
    /// the value length (a length no string can have: strings are at most
    /// [`VALUE_BYTES_MAX`], 64 MiB), then its elements.
    ///
    /// A key with a deadline has `0xFFFF_FF10 | deadline_ms u64` before its
    /// value (snapshots of stores without deadlines are as they always
    /// were; a reader that predates deadlines refuses the marker).
    ///
    /// ```text
    /// | count u64 | (key_len u32 | key | [0xFFFF_FF10 | deadline u64] value) * count | crc32 u32 |
    /// value: value_len u32 (≤ 64 MiB) | value bytes                   a string
    ///      | 0xFFFF_FF01 | n u64 | elem * n                           a list, head first
    ///      | 0xFFFF_FF02 | n u64 | (field elem | value elem) * n      a hash, field order
    ///      | 0xFFFF_FF03 | n u64 | elem * n                           a set, pick order
    ///      | 0xFFFF_FF04 | n u64 | (score f64 bits u64 | member elem) * n
    ///                                                                 a sorted set, (score, member) order
    ///      | 0xFFFF_FF05 | last_ms u64 | last_seq u64 | n u64 |
    ///        (ms u64 | seq u64 | fields u32 | elem * fields) * n      a stream, id order
    /// elem:  len u32 (≤ 64 MiB) | bytes
    /// ```
    /// A list, hash, set or sorted set has at least one element (an empty
    /// one does not exist); the recovery checks every order above.
    fn write_to<'a>(
        &'a self,
        sink: &'a mut (dyn AsyncWrite + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
        Box::pin(async move {
            let mut out = Out {
                sink,
                crc: crc32fast::Hasher::new(),
                buf: Vec::with_capacity(WRITE_PIECE_BYTES + 64),
            };
            out.buf
                .extend_from_slice(&(self.map.len() as u64).to_le_bytes());
            let mut prev: Option<&[u8]> = None;
            for (k, v) in self.map.iter() {
                debug_assert!(prev.is_none_or(|p| p < k), "map iterates in key order");
                prev = Some(k);
                out.buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.buf.extend_from_slice(k);
                if let Some(at) = self.deadlines.get(k) {
                    out.u32(MARK_DEADLINE);
                    out.u64(at);
                }
                match v {
                    v if v.is_typed() => {
                        let c = self
                            .typed
                            .get(&Key::new(k))
                            .expect("a marked key has a collection");
                        write_collection(&mut out, c).await?;
                    }
                    v => {
                        let v = v.as_slice();
                        out.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        if v.len() >= WRITE_PIECE_BYTES {
                            out.flush().await?;
                            out.crc.update(v);
                            out.sink.write_all(v).await?;
                            futures_lite::future::yield_now().await;
                        } else {
                            out.buf.extend_from_slice(v);
                        }
                    }
                }
                if out.buf.len() >= WRITE_PIECE_BYTES {
                    out.flush_if_full().await?;
                }
            }
            out.crc.update(&out.buf);
            let crc = out.crc.clone().finalize();
            out.buf.extend_from_slice(&crc.to_le_bytes());
            out.sink.write_all(&out.buf).await?;
            Ok(())
        })
    }
}

/// The snapshot writer's buffer: bytes are hashed and written in pieces of
/// about [`WRITE_PIECE_BYTES`], with a yield after each.
struct Out<'a> {
    sink: &'a mut (dyn AsyncWrite + Unpin),
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
}

impl Out<'_> {
    async fn flush(&mut self) -> Result<(), SnapshotError> {
        self.crc.update(&self.buf);
        self.sink.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    async fn flush_if_full(&mut self) -> Result<(), SnapshotError> {
        if self.buf.len() >= WRITE_PIECE_BYTES {
            self.flush().await?;
            // Let the executor run other work (and preempt) even if the
            // sink never blocks.
            futures_lite::future::yield_now().await;
        }
        Ok(())
    }

    fn u32(&mut self, n: u32) {
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn u64(&mut self, n: u64) {
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn elem(&mut self, e: &Elem) {
        self.u32(e.len() as u32);
        self.buf.extend_from_slice(e.as_slice());
    }
}

/// 64-bit FNV-1a: a hash fixed by its definition (the same on every
/// replica, build and platform), for [`KvStore::digest`].
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, n: u64) {
        self.bytes(&n.to_le_bytes());
    }

    /// Length-prefixed, so that element boundaries count.
    fn elem(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.bytes(b);
    }
}

/// Markers of the collection kinds in place of a value length.
const MARK_LIST: u32 = 0xFFFF_FF01;
const MARK_HASH: u32 = 0xFFFF_FF02;
const MARK_SET: u32 = 0xFFFF_FF03;
const MARK_ZSET: u32 = 0xFFFF_FF04;
const MARK_STREAM: u32 = 0xFFFF_FF05;
/// Before a value: the key's deadline follows.
const MARK_DEADLINE: u32 = 0xFFFF_FF10;

async fn write_collection(out: &mut Out<'_>, c: &Collection) -> Result<(), SnapshotError> {
    match c {
        Collection::List(l) => {
            out.u32(MARK_LIST);
            out.u64(l.items.len() as u64);
            for e in &l.items {
                out.elem(e);
                out.flush_if_full().await?;
            }
        }
        Collection::Hash(h) => {
            out.u32(MARK_HASH);
            out.u64(h.map.len() as u64);
            for (f, v) in &h.map {
                out.elem(f);
                out.elem(v);
                out.flush_if_full().await?;
            }
        }
        Collection::Set(s) => {
            out.u32(MARK_SET);
            out.u64(s.members.len() as u64);
            for e in &s.members {
                out.elem(e);
                out.flush_if_full().await?;
            }
        }
        Collection::ZSet(z) => {
            out.u32(MARK_ZSET);
            out.u64(z.order.len() as u64);
            for (s, m) in &z.order {
                out.u64(s.0.to_bits());
                out.elem(m);
                out.flush_if_full().await?;
            }
        }
        Collection::Stream(s) => {
            out.u32(MARK_STREAM);
            out.u64(s.last.ms);
            out.u64(s.last.seq);
            out.u64(s.entries.len() as u64);
            for (id, fields) in &s.entries {
                out.u64(id.ms);
                out.u64(id.seq);
                out.u32(fields.len() as u32);
                for f in fields {
                    out.elem(f);
                }
                out.flush_if_full().await?;
            }
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, hashing them into `crc`.
async fn read_hashed(
    src: &mut (dyn AsyncRead + Unpin),
    buf: &mut [u8],
    crc: &mut crc32fast::Hasher,
) -> Result<(), SnapshotError> {
    src.read_exact(buf).await?;
    crc.update(buf);
    Ok(())
}

async fn read_u32(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
) -> Result<u32, SnapshotError> {
    let mut b = [0u8; 4];
    read_hashed(src, &mut b, crc).await?;
    Ok(u32::from_le_bytes(b))
}

async fn read_u64(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
) -> Result<u64, SnapshotError> {
    let mut b = [0u8; 8];
    read_hashed(src, &mut b, crc).await?;
    Ok(u64::from_le_bytes(b))
}

fn too_large(what: &'static str, len: usize, max: usize) -> SnapshotError {
    SnapshotError::Corrupt {
        section: "kv data",
        error: DecodeError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        },
    }
}

fn invalid(what: &'static str) -> SnapshotError {
    SnapshotError::Corrupt {
        section: "kv data",
        error: DecodeError::Invalid { what },
    }
}

async fn read_len(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
    what: &'static str,
    max: usize,
) -> Result<usize, SnapshotError> {
    let len = read_u32(src, crc).await? as usize;
    if len > max {
        return Err(too_large(what, len, max));
    }
    Ok(len)
}

/// Reads `len` bytes into a value (short ones straight into their inline
/// form: no allocation).
async fn read_value(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
    len: usize,
) -> Result<Value, SnapshotError> {
    Ok(if len <= value::INLINE_VALUE_BYTES {
        let mut buf = [0u8; value::INLINE_VALUE_BYTES];
        read_hashed(src, &mut buf[..len], crc).await?;
        Value::copy(&buf[..len])
    } else {
        let mut v = vec![0u8; len];
        read_hashed(src, &mut v, crc).await?;
        Value::from(v)
    })
}

async fn read_elem(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
) -> Result<Elem, SnapshotError> {
    let len = read_len(src, crc, "element", VALUE_BYTES_MAX).await?;
    let mut buf = [0u8; value::INLINE_VALUE_BYTES];
    if len <= buf.len() {
        read_hashed(src, &mut buf[..len], crc).await?;
        Ok(Elem::new(&buf[..len]))
    } else {
        let mut v = vec![0u8; len];
        read_hashed(src, &mut v, crc).await?;
        Ok(Elem::new(&v))
    }
}

/// Reads a collection after its marker; checks its orders and that it is
/// not empty (a stream may be).
async fn read_collection(
    src: &mut (dyn AsyncRead + Unpin),
    crc: &mut crc32fast::Hasher,
    mark: u32,
) -> Result<Collection, SnapshotError> {
    let mut last = StreamId::default();
    if mark == MARK_STREAM {
        last.ms = read_u64(src, crc).await?;
        last.seq = read_u64(src, crc).await?;
    }
    let n = read_u64(src, crc).await?;
    if n == 0 && mark != MARK_STREAM {
        return Err(invalid("empty collection"));
    }
    let mut c = Collection::new(match mark {
        MARK_LIST => collection::Kind::List,
        MARK_HASH => collection::Kind::Hash,
        MARK_SET => collection::Kind::Set,
        MARK_ZSET => collection::Kind::ZSet,
        MARK_STREAM => collection::Kind::Stream,
        _ => return Err(invalid("collection marker")),
    });
    for i in 0..n {
        if i % YIELD_EVERY_ENTRIES == YIELD_EVERY_ENTRIES - 1 {
            futures_lite::future::yield_now().await;
        }
        match &mut c {
            Collection::List(l) => {
                let e = read_elem(src, crc).await?;
                l.bytes += e.len();
                l.items.push_back(e);
            }
            Collection::Hash(h) => {
                let f = read_elem(src, crc).await?;
                let v = read_elem(src, crc).await?;
                if h.map.last_key_value().is_some_and(|(p, _)| *p >= f) {
                    return Err(invalid("hash field order"));
                }
                h.bytes += f.len() + v.len();
                h.map.insert(f, v);
            }
            Collection::Set(s) => {
                let e = read_elem(src, crc).await?;
                if s.index.contains_key(e.as_slice()) {
                    return Err(invalid("duplicate set member"));
                }
                s.bytes += e.len();
                s.index.insert(e.clone(), s.members.len());
                s.members.push(e);
            }
            Collection::ZSet(z) => {
                let bits = read_u64(src, crc).await?;
                let m = read_elem(src, crc).await?;
                let score = Score::new(f64::from_bits(bits))
                    .filter(|s| s.0.to_bits() == bits)
                    .ok_or_else(|| invalid("sorted set score"))?;
                let entry = (score, m);
                if z.order.last().is_some_and(|p| *p >= entry)
                    || z.scores.contains_key(entry.1.as_slice())
                {
                    return Err(invalid("sorted set order"));
                }
                z.bytes += entry.1.len() + 8;
                z.scores.insert(entry.1.clone(), score);
                z.order.insert(entry);
            }
            Collection::Stream(s) => {
                let id = StreamId {
                    ms: read_u64(src, crc).await?,
                    seq: read_u64(src, crc).await?,
                };
                if id > last || s.entries.last_key_value().is_some_and(|(p, _)| *p >= id) {
                    return Err(invalid("stream id order"));
                }
                let m = read_u32(src, crc).await?;
                if m > KEYS_PER_COMMAND_MAX {
                    return Err(too_large(
                        "stream entry fields",
                        m as usize,
                        KEYS_PER_COMMAND_MAX as usize,
                    ));
                }
                let mut fields = Vec::with_capacity((m as usize).min(64));
                for _ in 0..m {
                    fields.push(read_elem(src, crc).await?);
                }
                s.bytes += collection::stream_entry_bytes(&fields);
                s.entries.insert(id, fields);
            }
        }
    }
    if let Collection::Stream(s) = &mut c {
        s.last = last;
    }
    Ok(c)
}

/// Reads what [`KvSnapshot::write_to`] wrote: checks the key order, the
/// bounds and the trailing CRC before the map is handed back.
async fn read_kv_data(
    src: &mut (dyn AsyncRead + Unpin),
) -> Result<(CowMap, CowTree<Rc<Collection>>, Deadlines), SnapshotError> {
    let mut crc = crc32fast::Hasher::new();
    let count = read_u64(src, &mut crc).await?;
    let mut pairs: Vec<(Key, Value)> = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut typed: Vec<(Key, Rc<Collection>)> = Vec::new();
    let mut deadlines: Vec<(Key, u64)> = Vec::new();
    let mut key = Vec::new();
    // Yield every YIELD_EVERY_ENTRIES pairs or WRITE_PIECE_BYTES of values,
    // whichever comes first.
    let mut since_yield_bytes = 0usize;
    for i in 0..count {
        if i % YIELD_EVERY_ENTRIES == YIELD_EVERY_ENTRIES - 1
            || since_yield_bytes >= WRITE_PIECE_BYTES
        {
            since_yield_bytes = 0;
            futures_lite::future::yield_now().await;
        }
        let klen = read_len(src, &mut crc, "key", KEY_BYTES_MAX).await?;
        key.resize(klen, 0);
        read_hashed(src, &mut key, &mut crc).await?;
        let mut vlen = read_u32(src, &mut crc).await?;
        if vlen == MARK_DEADLINE {
            let at = read_u64(src, &mut crc).await?;
            if at > DEADLINE_MS_MAX {
                return Err(invalid("deadline"));
            }
            deadlines.push((Key::new(&key), at));
            vlen = read_u32(src, &mut crc).await?;
        }
        let value = match vlen {
            MARK_LIST..=MARK_STREAM => {
                let c = read_collection(src, &mut crc, vlen).await?;
                since_yield_bytes += c.bytes();
                typed.push((Key::new(&key), Rc::new(c)));
                Value::typed_marker()
            }
            vlen if vlen as usize > VALUE_BYTES_MAX => {
                return Err(too_large("value", vlen as usize, VALUE_BYTES_MAX))
            }
            vlen => {
                since_yield_bytes += vlen as usize;
                read_value(src, &mut crc, vlen as usize).await?
            }
        };
        since_yield_bytes += klen;
        if let Some((prev, _)) = pairs.last() {
            if prev.as_slice() >= &key[..] {
                return Err(invalid("key order"));
            }
        }
        pairs.push((Key::new(&key), value));
    }
    let computed = crc.finalize();
    let mut b = [0u8; 4];
    src.read_exact(&mut b).await?;
    let stored = u32::from_le_bytes(b);
    if stored != computed {
        return Err(SnapshotError::Checksum {
            section: "kv data",
            offset: 0,
            stored,
            computed,
        });
    }
    Ok((
        CowMap::from_sorted(pairs),
        CowTree::from_sorted(typed),
        Deadlines::from_sorted(deadlines),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn count_keys_runner(store: &KvStore, payload: &[u8]) -> Bytes {
        Bytes::from(format!("{} keys, {} bytes", store.len(), payload.len()))
    }

    #[test]
    fn script_queries_go_to_the_installed_runner() {
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::put("a", "1"));
        let q = KvQuery::Script { payload: k("xyz") };
        assert_eq!(kv.read(&q), KvResult::Error(KvError::NoScriptRunner));
        assert!(install_script_runner(count_keys_runner));
        assert!(!install_script_runner(count_keys_runner), "installed once");
        assert_eq!(kv.read(&q), KvResult::Value(Some(k("1 keys, 3 bytes"))));
        // Through the log too (a read in log order), changing nothing.
        assert_eq!(
            kv.execute(&KvCommand::Read(q)),
            KvResult::Value(Some(k("1 keys, 3 bytes")))
        );
        assert_eq!(kv.len(), 1);
    }

    #[test]
    fn a_scratch_copy_takes_writes_without_touching_the_store() {
        use crate::kv::TypedCommand;
        let mut kv = KvStore::new();
        for i in 0..2000 {
            kv.execute(&KvCommand::put(format!("k{i}"), "v"));
        }
        let push = |key: &str, v: &str| {
            KvCommand::Typed(TypedCommand::ListPush {
                key: k(key),
                left: false,
                only_existing: false,
                values: vec![k(v)],
            })
        };
        kv.execute(&push("l", "a"));
        kv.messages.at = 5;
        kv.execute(&KvCommand::Publish {
            channel: k("c"),
            message: k("m"),
        });
        let before = kv.read(&KvQuery::Digest { key: k("l") });
        let mut scratch = kv.scratch();
        scratch.execute(&KvCommand::put("k7", "changed"));
        scratch.execute(&KvCommand::put("new", "x"));
        scratch.execute(&push("l", "b"));
        scratch.execute(&KvCommand::Delete {
            keys: vec![k("k8")],
        });
        assert_eq!(scratch.get(b"k7"), Some(&b"changed"[..]));
        assert_eq!(scratch.len(), 2001 + 1 - 1);
        assert_eq!(kv.get(b"k7"), Some(&b"v"[..]));
        assert_eq!(kv.get(b"k8"), Some(&b"v"[..]));
        assert_eq!(kv.get(b"new"), None);
        assert_eq!(kv.len(), 2001);
        assert_eq!(kv.read(&KvQuery::Digest { key: k("l") }), before);
        assert_ne!(scratch.read(&KvQuery::Digest { key: k("l") }), before);
        // No published messages in the copy.
        let messages = |s: &KvStore| match s.read(&KvQuery::Messages {
            after: 0,
            limit: 10,
        }) {
            KvResult::Messages { messages, .. } => messages.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!((messages(&kv), messages(&scratch)), (1, 0));
    }

    #[test]
    fn incrbyfloat_getex_setrange_follow_redis() {
        let mut kv = KvStore::new();
        let incr = |kv: &mut KvStore, key: &str, delta: f64| {
            kv.execute(&KvCommand::IncrementFloat { key: k(key), delta })
        };
        let value = |s: &str| KvResult::Value(Some(k(s)));
        assert_eq!(incr(&mut kv, "f", 10.5), value("10.5"));
        assert_eq!(incr(&mut kv, "f", 0.1), value("10.6"));
        assert_eq!(incr(&mut kv, "g", 0.1), value("0.1"));
        assert_eq!(incr(&mut kv, "g", 0.2), value("0.3"));
        assert_eq!(incr(&mut kv, "g", -0.3), value("0"));
        kv.execute(&KvCommand::put("e", "5.0e3"));
        assert_eq!(incr(&mut kv, "e", 200.0), value("5200"));
        kv.execute(&KvCommand::put("s", "abc"));
        assert_eq!(incr(&mut kv, "s", 1.0), KvResult::Error(KvError::NotFloat));
        kv.execute(&KvCommand::put("big", "1e308"));
        assert_eq!(
            incr(&mut kv, "big", 1e308),
            KvResult::Error(KvError::NanOrInfinity)
        );
        assert_eq!(kv.get(b"big"), Some(&b"1e308"[..]), "unchanged");
        assert_eq!(
            incr(&mut kv, "f", f64::NAN),
            KvResult::Error(KvError::NanOrInfinity)
        );

        // GETEX: the value, and the deadline changed as asked.
        let getex = |kv: &mut KvStore, key: &str, deadline| {
            kv.execute(&KvCommand::GetExpiring {
                key: k(key),
                deadline,
                now_ms: 100,
            })
        };
        assert_eq!(getex(&mut kv, "f", DeadlineChange::At(500)), value("10.6"));
        assert_eq!(kv.deadlines.get(b"f"), Some(500));
        assert_eq!(getex(&mut kv, "f", DeadlineChange::Keep), value("10.6"));
        assert_eq!(kv.deadlines.get(b"f"), Some(500));
        assert_eq!(getex(&mut kv, "f", DeadlineChange::Clear), value("10.6"));
        assert_eq!(kv.deadlines.get(b"f"), None);
        assert_eq!(getex(&mut kv, "f", DeadlineChange::At(100)), value("10.6"));
        assert_eq!(kv.get(b"f"), None, "a past deadline deletes");
        assert_eq!(
            getex(&mut kv, "nope", DeadlineChange::Clear),
            KvResult::Value(None)
        );

        // SETRANGE: zero padding, overwrite in place, nothing for "".
        let setrange = |kv: &mut KvStore, key: &str, offset: u64, v: &str| {
            kv.execute(&KvCommand::SetRange {
                key: k(key),
                offset,
                value: k(v),
            })
        };
        assert_eq!(setrange(&mut kv, "r", 3, "ab"), KvResult::Len(5));
        assert_eq!(kv.get(b"r"), Some(&b"\0\0\0ab"[..]));
        assert_eq!(setrange(&mut kv, "r", 0, "xy"), KvResult::Len(5));
        assert_eq!(kv.get(b"r"), Some(&b"xy\0ab"[..]));
        assert_eq!(setrange(&mut kv, "none", 10, ""), KvResult::Len(0));
        assert_eq!(kv.get(b"none"), None);
        assert_eq!(
            setrange(&mut kv, "r", VALUE_BYTES_MAX as u64, "z"),
            KvResult::Error(KvError::ValueTooLarge)
        );
        assert_eq!(
            setrange(&mut kv, "r", u64::MAX, "z"),
            KvResult::Error(KvError::ValueTooLarge)
        );
    }

    #[test]
    fn rename_and_copy_move_any_type_with_its_deadline() {
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("l"),
            left: false,
            only_existing: false,
            values: vec![k("a"), k("b")],
        }));
        kv.execute(&KvCommand::Expire {
            key: k("l"),
            at_ms: 900,
            now_ms: 0,
            condition: ExpireCondition::Always,
        });
        kv.execute(&KvCommand::put("s", "v"));
        let bytes = kv.typed_bytes;
        let digest = kv.digest(b"l");
        let rename = |kv: &mut KvStore, from: &str, to: &str, nx| {
            kv.execute(&KvCommand::Rename {
                from: k(from),
                to: k(to),
                only_if_absent: nx,
            })
        };
        assert_eq!(rename(&mut kv, "l", "s", true), KvResult::Int(0));
        assert_eq!(rename(&mut kv, "l", "l", false), KvResult::Int(1));
        assert_eq!(rename(&mut kv, "l", "m", false), KvResult::Int(1));
        assert_eq!(kv.digest(b"m"), digest, "the list and its deadline moved");
        assert_eq!(kv.digest(b"l"), 0);
        assert_eq!(kv.typed_bytes, bytes);
        // Over a string: the string goes.
        assert_eq!(rename(&mut kv, "m", "s", false), KvResult::Int(1));
        assert_eq!(kv.digest(b"s"), digest);
        assert_eq!(kv.len(), 1);
        assert_eq!(
            rename(&mut kv, "nope", "x", false),
            KvResult::Error(KvError::NoSuchKey)
        );
        // A copy is independent of its source.
        let copy = |kv: &mut KvStore, from: &str, to: &str, replace| {
            kv.execute(&KvCommand::Copy {
                from: k(from),
                to: k(to),
                replace,
            })
        };
        assert_eq!(copy(&mut kv, "s", "c", false), KvResult::Int(1));
        assert_eq!(kv.digest(b"c"), digest);
        assert_eq!(kv.typed_bytes, 2 * bytes);
        assert_eq!(copy(&mut kv, "s", "c", false), KvResult::Int(0));
        assert_eq!(copy(&mut kv, "s", "s", true), KvResult::Int(0));
        assert_eq!(copy(&mut kv, "nope", "c", true), KvResult::Int(0));
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("c"),
            left: false,
            only_existing: false,
            values: vec![k("c")],
        }));
        assert_eq!(kv.digest(b"s"), digest, "the source did not change");
        assert_eq!(
            kv.read(&KvQuery::Stats),
            KvResult::Stats {
                keys: 2,
                expiring: 2,
                data_bytes: kv.data_bytes(),
            },
            "s and its copy c, both with the list's deadline"
        );
        kv.execute(&KvCommand::put("str", "1"));
        assert_eq!(copy(&mut kv, "str", "c", true), KvResult::Int(1));
        assert_eq!(kv.get(b"c"), Some(&b"1"[..]));
        assert_eq!(kv.typed_bytes, bytes);
        kv.deadlines.check_invariants();
    }

    #[test]
    fn a_batch_runs_in_order_and_a_failed_guard_runs_nothing() {
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::put("n", "x"));
        let batch = |guards| KvCommand::Batch {
            guards,
            commands: vec![
                KvCommand::put("a", "1"),
                KvCommand::Increment {
                    key: k("a"),
                    delta: 2,
                },
                // Fails; the others still run (no rollback, as Redis).
                KvCommand::Increment {
                    key: k("n"),
                    delta: 1,
                },
                KvCommand::get("a"),
            ],
        };
        assert_eq!(
            kv.execute(&batch(vec![(k("n"), 7)])),
            KvResult::Aborted,
            "a digest that is not n's"
        );
        assert_eq!(kv.get(b"a"), None, "an aborted batch wrote nothing");
        assert_eq!(
            kv.execute(&batch(vec![(k("n"), kv.digest(b"n")), (k("a"), 0)])),
            KvResult::Batch(vec![
                KvResult::Put {
                    written: true,
                    previous: None
                },
                KvResult::Int(3),
                KvResult::Error(KvError::NotInteger),
                KvResult::Value(Some(k("3"))),
            ])
        );
        // `a` exists now: the guard "absent" fails.
        assert_eq!(kv.execute(&batch(vec![(k("a"), 0)])), KvResult::Aborted);
        assert_eq!(kv.get(b"a"), Some(&b"3"[..]));
    }

    #[test]
    fn a_digest_follows_every_change_of_a_key_and_survives_a_snapshot() {
        let mut kv = KvStore::new();
        assert_eq!(kv.digest(b"a"), 0, "absent");
        kv.execute(&KvCommand::put("a", "1"));
        let one = kv.digest(b"a");
        assert_ne!(one, 0);
        kv.execute(&KvCommand::put("b", "1"));
        assert_eq!(kv.digest(b"b"), one, "the value, not the name");
        let mut seen = vec![0, one];
        let mut other = KvStore::new();
        let mut changed = |kv: &mut KvStore, key: &str, cmd: KvCommand| {
            assert!(!matches!(kv.execute(&cmd), KvResult::Error(_)), "{cmd:?}");
            let d = kv.digest(key.as_bytes());
            assert!(
                !seen.contains(&d),
                "{cmd:?} left the digest at a seen value"
            );
            seen.push(d);
        };
        changed(&mut kv, "a", KvCommand::put("a", "2"));
        changed(
            &mut kv,
            "a",
            KvCommand::Expire {
                key: k("a"),
                at_ms: 1_000,
                now_ms: 0,
                condition: ExpireCondition::Always,
            },
        );
        let l = |values: Vec<Bytes>| {
            KvCommand::Typed(TypedCommand::ListPush {
                key: k("l"),
                left: false,
                only_existing: false,
                values,
            })
        };
        changed(&mut kv, "l", l(vec![k("ab")]));
        // Element boundaries count: [ab, c] is not [a, bc].
        changed(&mut kv, "l", l(vec![k("c")]));
        changed(&mut other, "l", l(vec![k("a"), k("bc")]));
        changed(
            &mut kv,
            "h",
            KvCommand::Typed(TypedCommand::HashSet {
                key: k("h"),
                only_new: false,
                pairs: vec![(k("f"), k("v"))],
            }),
        );
        changed(
            &mut kv,
            "h",
            KvCommand::Typed(TypedCommand::HashSet {
                key: k("h"),
                only_new: false,
                pairs: vec![(k("f"), k("w"))],
            }),
        );
        changed(
            &mut kv,
            "s",
            KvCommand::Typed(TypedCommand::SetAdd {
                key: k("s"),
                members: vec![k("m")],
            }),
        );
        let zadd = |score| {
            KvCommand::Typed(TypedCommand::ZAdd {
                key: k("z"),
                condition: ZAddCondition::Always,
                compare: ZAddCompare::None,
                changed: false,
                incr: false,
                pairs: vec![(score, k("m"))],
            })
        };
        changed(&mut kv, "z", zadd(1.0));
        changed(&mut kv, "z", zadd(2.0));
        changed(
            &mut kv,
            "x",
            KvCommand::Typed(TypedCommand::XAdd {
                key: k("x"),
                id: XAddId::Explicit { ms: 1, seq: 1 },
                trim: None,
                no_mkstream: false,
                fields: vec![k("f"), k("v")],
            }),
        );
        // The same state read back from a snapshot digests the same.
        let mut bytes = Vec::new();
        futures_lite::future::block_on(StateMachine::capture(&kv).write_to(&mut bytes)).unwrap();
        let mut restored = KvStore::new();
        futures_lite::future::block_on(StateMachine::recover(&mut restored, &mut &bytes[..]))
            .unwrap();
        for key in ["a", "b", "l", "h", "s", "z", "x", "nope"] {
            assert_eq!(
                restored.digest(key.as_bytes()),
                kv.digest(key.as_bytes()),
                "{key}"
            );
        }
        assert_eq!(
            kv.read(&KvQuery::Digest { key: k("b") }),
            KvResult::Digest(one)
        );
    }

    #[test]
    fn clear_empties_strings_and_collections_and_a_capture_keeps_them() {
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::MultiPut {
            pairs: vec![(k("a"), k("1")), (k("b"), k("2"))],
        });
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("l"),
            left: false,
            only_existing: false,
            values: vec![k("x"), k("y")],
        }));
        assert_eq!(kv.len(), 3);
        let before = StateMachine::capture(&kv);
        assert_eq!(kv.execute(&KvCommand::Clear), KvResult::Ok);
        assert_eq!(kv.len(), 0);
        assert_eq!(kv.typed_bytes, 0);
        assert_eq!(kv.read(&KvQuery::Count), KvResult::Count(0));
        assert_eq!(kv.get(b"a"), None);
        assert_eq!(
            kv.read(&KvQuery::Typed(TypedQuery::ListLen { key: k("l") })),
            KvResult::Len(0)
        );
        // Usable again, also for a collection under a cleared name.
        kv.execute(&KvCommand::put("l", "s"));
        assert_eq!(kv.get(b"l"), Some(&b"s"[..]));
        // The capture taken before still holds everything.
        let mut bytes = Vec::new();
        futures_lite::future::block_on(before.write_to(&mut bytes)).unwrap();
        let mut restored = KvStore::new();
        futures_lite::future::block_on(StateMachine::recover(&mut restored, &mut &bytes[..]))
            .unwrap();
        assert_eq!(restored.len(), 3);
        assert_eq!(restored.get(b"b"), Some(&b"2"[..]));
        assert_eq!(
            KvCommand::decode(KvCommand::Clear.encode()),
            Ok(KvCommand::Clear)
        );
    }

    fn deadline(kv: &KvStore, key: &str) -> KvResult {
        kv.read(&KvQuery::Deadline { key: k(key) })
    }

    fn expire(key: &str, at_ms: u64, now_ms: u64, condition: ExpireCondition) -> KvCommand {
        KvCommand::Expire {
            key: k(key),
            at_ms,
            now_ms,
            condition,
        }
    }

    fn put_ex(key: &str, value: &str, at: Option<u64>) -> KvCommand {
        KvCommand::PutExpiring {
            key: k(key),
            value: k(value),
            condition: PutCondition::Always,
            return_previous: false,
            expire_at_ms: at,
        }
    }

    #[test]
    fn deadlines_follow_redis_rules_and_expire_only_through_the_log() {
        use ExpireCondition::*;
        let mut kv = KvStore::new();
        assert_eq!(
            kv.execute(&expire("a", 100, 0, Always)),
            KvResult::Int(0),
            "absent"
        );
        assert_eq!(deadline(&kv, "a"), KvResult::Int(-2));
        kv.execute(&put_ex("a", "1", Some(1_000)));
        assert_eq!(deadline(&kv, "a"), KvResult::Int(1_000));
        // KEEPTTL keeps it, a plain SET drops it.
        kv.execute(&put_ex("a", "2", None));
        assert_eq!(deadline(&kv, "a"), KvResult::Int(1_000));
        kv.execute(&KvCommand::put("a", "3"));
        assert_eq!(deadline(&kv, "a"), KvResult::Int(-1));
        // NX / XX / GT / LT; no deadline counts as never.
        assert_eq!(kv.execute(&expire("a", 500, 0, IfSome)), KvResult::Int(0));
        assert_eq!(kv.execute(&expire("a", 500, 0, Later)), KvResult::Int(0));
        assert_eq!(kv.execute(&expire("a", 500, 0, Earlier)), KvResult::Int(1));
        assert_eq!(kv.execute(&expire("a", 400, 0, IfNone)), KvResult::Int(0));
        assert_eq!(kv.execute(&expire("a", 900, 0, Later)), KvResult::Int(1));
        assert_eq!(kv.execute(&expire("a", 950, 0, Earlier)), KvResult::Int(0));
        assert_eq!(deadline(&kv, "a"), KvResult::Int(900));
        // INCR and APPEND keep the deadline (as Redis).
        kv.execute(&KvCommand::Increment {
            key: k("a"),
            delta: 1,
        });
        assert_eq!(deadline(&kv, "a"), KvResult::Int(900));
        assert_eq!(
            kv.execute(&KvCommand::Persist { key: k("a") }),
            KvResult::Int(1)
        );
        assert_eq!(
            kv.execute(&KvCommand::Persist { key: k("a") }),
            KvResult::Int(0)
        );
        // A deadline already past when proposed deletes at once.
        assert_eq!(kv.execute(&expire("a", 50, 60, Always)), KvResult::Int(1));
        assert_eq!(kv.get(b"a"), None);
        // Keys stay until an ExpireDue entry covers them, earliest first.
        kv.execute(&put_ex("x", "1", Some(300)));
        kv.execute(&put_ex("y", "1", Some(200)));
        kv.execute(&put_ex("z", "1", Some(400)));
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("l"),
            left: false,
            only_existing: false,
            values: vec![k("e")],
        }));
        assert_eq!(kv.execute(&expire("l", 250, 0, Always)), KvResult::Int(1));
        assert_eq!(kv.read(&KvQuery::NextDeadline), KvResult::Int(200));
        assert_eq!(
            kv.execute(&KvCommand::ExpireDue { now_ms: 299 }),
            KvResult::Count(2)
        );
        assert_eq!((kv.get(b"y"), kv.get(b"x").is_some()), (None, true));
        assert_eq!(deadline(&kv, "l"), KvResult::Int(-2), "the list expired");
        assert_eq!(kv.read(&KvQuery::NextDeadline), KvResult::Int(300));
        // Deleting or overwriting a key forgets its deadline: a new key of
        // the same name does not inherit it.
        kv.execute(&KvCommand::Delete { keys: vec![k("x")] });
        kv.execute(&KvCommand::put("x", "new"));
        kv.execute(&KvCommand::MultiPut {
            pairs: vec![(k("z"), k("new"))],
        });
        assert_eq!(kv.read(&KvQuery::NextDeadline), KvResult::Int(-1));
        assert_eq!(
            kv.execute(&KvCommand::ExpireDue { now_ms: u64::MAX }),
            KvResult::Count(0)
        );
        assert_eq!(kv.len(), 2);
        kv.deadlines.check_invariants();
        // A list that empties forgets its deadline too.
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("l"),
            left: false,
            only_existing: false,
            values: vec![k("e")],
        }));
        kv.execute(&expire("l", 700, 0, Always));
        kv.execute(&KvCommand::Typed(TypedCommand::ListPop {
            key: k("l"),
            left: true,
            count: None,
        }));
        assert_eq!(kv.deadlines.len(), 0);
    }

    #[test]
    fn deadlines_survive_a_snapshot_and_a_capture_keeps_its_own() {
        let mut kv = KvStore::new();
        kv.execute(&put_ex("a", "1", Some(10)));
        kv.execute(&KvCommand::put("b", "2"));
        kv.execute(&KvCommand::Typed(TypedCommand::HashSet {
            key: k("h"),
            pairs: vec![(k("f"), k("v"))],
            only_new: false,
        }));
        kv.execute(&expire("h", 20, 0, ExpireCondition::Always));
        let view = StateMachine::capture(&kv);
        kv.execute(&KvCommand::ExpireDue { now_ms: 100 });
        assert_eq!(kv.len(), 1);
        let mut bytes = Vec::new();
        futures_lite::future::block_on(view.write_to(&mut bytes)).unwrap();
        let mut restored = KvStore::new();
        futures_lite::future::block_on(StateMachine::recover(&mut restored, &mut &bytes[..]))
            .unwrap();
        assert_eq!(restored.len(), 3);
        assert_eq!(deadline(&restored, "a"), KvResult::Int(10));
        assert_eq!(deadline(&restored, "b"), KvResult::Int(-1));
        assert_eq!(deadline(&restored, "h"), KvResult::Int(20));
        restored.deadlines.check_invariants();
        assert_eq!(
            restored.execute(&KvCommand::ExpireDue { now_ms: 15 }),
            KvResult::Count(1)
        );
        // A deadline past the cap is refused, not wrapped.
        let at = bytes.len() - 4;
        let pos = bytes
            .windows(4)
            .position(|w| w == MARK_DEADLINE.to_le_bytes())
            .unwrap();
        bytes[pos + 4..pos + 12].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
        let r = futures_lite::future::block_on(StateMachine::recover(
            &mut KvStore::new(),
            &mut &bytes[..],
        ));
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn take_returns_and_deletes_a_string_and_refuses_a_collection() {
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::put("a", "1"));
        let take = |key: &str| KvCommand::Take { key: k(key) };
        assert_eq!(kv.execute(&take("a")), KvResult::Value(Some(k("1"))));
        assert_eq!(kv.get(b"a"), None);
        assert_eq!(kv.len(), 0);
        assert_eq!(kv.execute(&take("a")), KvResult::Value(None));
        kv.execute(&KvCommand::Typed(TypedCommand::ListPush {
            key: k("l"),
            left: false,
            only_existing: false,
            values: vec![k("x")],
        }));
        assert_eq!(kv.execute(&take("l")), KvResult::Error(KvError::WrongType));
        assert_eq!(
            kv.read(&KvQuery::Typed(TypedQuery::ListLen { key: k("l") })),
            KvResult::Len(1),
            "a refused GETDEL keeps the list"
        );
        assert_eq!(KvCommand::decode(take("a").encode()), Ok(take("a")));
    }

    #[test]
    fn commands() {
        let mut kv = KvStore::new();
        let put_nx = |v: &str| KvCommand::Put {
            key: k("a"),
            value: k(v),
            condition: PutCondition::IfAbsent,
            return_previous: true,
        };
        assert_eq!(
            kv.execute(&put_nx("1")),
            KvResult::Put {
                written: true,
                previous: None
            }
        );
        assert_eq!(
            kv.execute(&put_nx("2")),
            KvResult::Put {
                written: false,
                previous: Some(k("1"))
            }
        );
        let put_xx = KvCommand::Put {
            key: k("b"),
            value: k("x"),
            condition: PutCondition::IfPresent,
            return_previous: false,
        };
        assert_eq!(
            kv.execute(&put_xx),
            KvResult::Put {
                written: false,
                previous: None
            }
        );
        assert_eq!(
            kv.execute(&KvCommand::Append {
                key: k("a"),
                value: k("23")
            }),
            KvResult::Len(3)
        );
        assert_eq!(
            kv.execute(&KvCommand::Increment {
                key: k("a"),
                delta: -124
            }),
            KvResult::Int(-1)
        );
        assert_eq!(
            kv.execute(&KvCommand::Append {
                key: k("s"),
                value: k("x")
            }),
            KvResult::Len(1)
        );
        assert_eq!(
            kv.execute(&KvCommand::Increment {
                key: k("s"),
                delta: 1
            }),
            KvResult::Error(KvError::NotInteger)
        );
        kv.execute(&KvCommand::put("m", i64::MAX.to_string()));
        for n in [0, 7, -7, 10, -100, i64::MAX, i64::MIN] {
            assert_eq!(&format_i64(n)[..], n.to_string().as_bytes());
        }
        assert_eq!(
            kv.execute(&KvCommand::Increment {
                key: k("m"),
                delta: 1
            }),
            KvResult::Error(KvError::Overflow)
        );
        let cas = |exp: Option<&str>, new: Option<&str>| KvCommand::CompareAndSet {
            key: k("c"),
            expected: exp.map(k),
            new_value: new.map(k),
        };
        assert_eq!(
            kv.execute(&cas(Some("z"), Some("1"))),
            KvResult::Cas {
                swapped: false,
                previous: None
            }
        );
        assert_eq!(
            kv.execute(&cas(None, Some("1"))),
            KvResult::Cas {
                swapped: true,
                previous: None
            }
        );
        assert_eq!(
            kv.execute(&cas(Some("1"), None)),
            KvResult::Cas {
                swapped: true,
                previous: Some(k("1"))
            }
        );
        assert_eq!(kv.get(b"c"), None);
        assert_eq!(
            kv.execute(&KvCommand::MultiPut {
                pairs: vec![(k("p/1"), k("1")), (k("p/2"), k("2"))]
            }),
            KvResult::Ok
        );
        assert_eq!(
            kv.read(&KvQuery::MultiGet {
                keys: vec![k("p/1"), k("nope"), k("p/2")]
            }),
            KvResult::Values(vec![Some(k("1")), None, Some(k("2"))])
        );
        assert_eq!(
            kv.read(&KvQuery::Exists {
                keys: vec![k("p/1"), k("p/1"), k("q")]
            }),
            KvResult::Count(2)
        );
        assert_eq!(
            kv.read(&KvQuery::prefix("p/", 1)),
            KvResult::Entries {
                entries: vec![(k("p/1"), k("1"))],
                next: Some(k("p/2"))
            }
        );
        assert_eq!(
            kv.execute(&KvCommand::Delete {
                keys: vec![k("p/1"), k("p/1"), k("zz")]
            }),
            KvResult::Count(1)
        );
        assert_eq!(kv.read(&KvQuery::Count), KvResult::Count(4));
        let big = Bytes::from(vec![0u8; KEY_BYTES_MAX + 1]);
        assert_eq!(
            kv.execute(&KvCommand::put(big, "v")),
            KvResult::Error(KvError::KeyTooLarge)
        );
        // MultiPut is all or nothing.
        let bad = KvCommand::MultiPut {
            pairs: vec![
                (k("ok"), k("1")),
                (Bytes::from(vec![1u8; KEY_BYTES_MAX + 1]), k("1")),
            ],
        };
        assert_eq!(kv.execute(&bad), KvResult::Error(KvError::KeyTooLarge));
        assert_eq!(kv.get(b"ok"), None);
    }

    #[test]
    fn query_path_rejects_writes_and_garbage() {
        let kv = KvStore::new();
        assert_eq!(
            kv.query(&KvCommand::put("a", "b").encode()),
            Err(QueryError::Unsupported)
        );
        assert!(matches!(kv.query(&[0x99]), Err(QueryError::Malformed(_))));
        let r = kv.query(&KvQuery::Count.encode()).unwrap();
        assert_eq!(KvResult::decode(&r).unwrap(), KvResult::Count(0));
        // Gets take the in-place lane: same bytes as the typed path.
        let mut kv = KvStore::new();
        kv.execute(&KvCommand::put("a", "1"));
        kv.execute(&KvCommand::put("e", ""));
        for key in ["a", "e", "missing"] {
            let q = KvQuery::Get { key: k(key) };
            assert_eq!(
                kv.query(&q.encode()).unwrap(),
                kv.read(&q).encode(),
                "{key}"
            );
        }
        assert_eq!(
            KvResult::decode(kv.query(&KvQuery::Get { key: k("a") }.encode()).unwrap()).unwrap(),
            KvResult::Value(Some(k("1")))
        );
    }

    #[test]
    fn malformed_command_is_a_result() {
        let mut kv = KvStore::new();
        let mut entries = vec![SmEntry {
            index: 1,
            cmd: Bytes::from_static(&[0x01, 9]),
            result: Bytes::new(),
        }];
        kv.apply(&mut entries);
        assert_eq!(
            KvResult::decode(&entries[0].result).unwrap(),
            KvResult::Error(KvError::Malformed)
        );
        assert!(kv.is_empty());
    }

    /// Values of every length around the inline limit (0..=40 bytes)
    /// survive a snapshot and recovery byte for byte (recovery reads short
    /// values straight into their inline form).
    #[test]
    fn values_around_the_inline_limit_recover_exactly() {
        let mut kv = KvStore::new();
        for len in 0..=40usize {
            let value: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(29) ^ 0xa5).collect();
            kv.execute(&KvCommand::put(vec![len as u8; 3], value));
        }
        let data = kv_data(&kv);
        let back = recover(&data).unwrap();
        assert_eq!(kv_data(&back), data);
        for len in 0..=40usize {
            let want: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(29) ^ 0xa5).collect();
            assert_eq!(back.get(&[len as u8; 3]), Some(&want[..]), "len {len}");
        }
        assert_eq!(back.data_bytes(), kv.data_bytes());
    }

    /// A long batch through `StateMachine::apply` (its look-ahead prefetch
    /// of later puts' index lines, while earlier ones grow, split and
    /// rebuild chunks) ends exactly where executing each command alone
    /// ends: same results, same state, and a view taken before unchanged.
    /// Values of every length around the inline limit.
    #[test]
    fn batched_apply_matches_one_by_one() {
        let mut batched = KvStore::new();
        for n in 0..3000u32 {
            batched.execute(&KvCommand::put(n.to_be_bytes().to_vec(), vec![1u8; 5]));
        }
        let mut single = batched.clone();
        let view = batched.clone();
        let view_data = kv_data(&view);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut cmds = Vec::new();
        for i in 0..2000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = ((rng % 6000) as u32).to_be_bytes().to_vec();
            let value = vec![i as u8; (rng >> 40) as usize % 40];
            cmds.push(match rng >> 58 {
                0 => KvCommand::Delete {
                    keys: vec![key.into()],
                },
                1 => KvCommand::Increment {
                    key: key.into(),
                    delta: 3,
                },
                2 => KvCommand::Put {
                    key: key.into(),
                    value: value.into(),
                    condition: PutCondition::IfAbsent,
                    return_previous: true,
                },
                3 => KvCommand::Append {
                    key: key.into(),
                    value: value.into(),
                },
                _ => KvCommand::put(key, value),
            });
        }
        let mut entries: Vec<SmEntry> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| SmEntry {
                index: i as u64 + 1,
                cmd: c.encode(),
                result: Bytes::new(),
            })
            .collect();
        batched.apply(&mut entries);
        for (e, c) in entries.iter().zip(&cmds) {
            assert_eq!(e.result, single.execute(c).encode(), "command {c:?}");
        }
        assert_eq!(kv_data(&batched), kv_data(&single));
        assert_eq!(batched.data_bytes(), single.data_bytes());
        assert_eq!(kv_data(&view), view_data, "the view moved");
        batched.map.check_invariants();
    }

    fn kv_data(kv: &KvStore) -> Vec<u8> {
        let mut buf = Vec::new();
        futures_lite::future::block_on(kv.capture().write_to(&mut buf)).unwrap();
        buf
    }

    fn recover(data: &[u8]) -> Result<KvStore, SnapshotError> {
        let mut kv = KvStore::new();
        futures_lite::future::block_on(StateMachine::recover(&mut kv, &mut &data[..]))?;
        Ok(kv)
    }

    /// The KV data section on its own: sorted pairs and a CRC32 that catches
    /// any flipped byte, a wrong order and a truncation.
    #[test]
    fn kv_data_is_sorted_and_checksummed() {
        let mut kv = KvStore::new();
        // Inserted out of order, long and short keys, an empty value.
        for key in ["m", "a", "zz", "b-a-much-longer-key-than-24-bytes", "c"] {
            kv.execute(&KvCommand::put(k(key), k(&key.repeat(2))));
        }
        kv.execute(&KvCommand::put(k("e"), Bytes::new()));
        let data = kv_data(&kv);
        let mut want = Vec::new();
        want.extend_from_slice(&6u64.to_le_bytes());
        let mut sorted: Vec<(&[u8], &[u8])> = kv.iter().collect();
        sorted.sort();
        for (key, value) in &sorted {
            want.extend_from_slice(&(key.len() as u32).to_le_bytes());
            want.extend_from_slice(key);
            want.extend_from_slice(&(value.len() as u32).to_le_bytes());
            want.extend_from_slice(value);
        }
        assert_eq!(sorted[0].0, b"a");
        let crc = crc32fast::hash(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(data, want);

        let back = recover(&data).unwrap();
        assert!(back.iter().eq(kv.iter()));

        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x20;
            let err = recover(&bad)
                .err()
                .unwrap_or_else(|| panic!("flip at {i} accepted"));
            assert!(
                matches!(
                    err,
                    SnapshotError::Checksum {
                        section: "kv data",
                        ..
                    } | SnapshotError::Corrupt { .. }
                        | SnapshotError::Truncated
                ),
                "flip at {i}: {err:?}"
            );
        }
        for len in 0..data.len() {
            assert!(matches!(
                recover(&data[..len]),
                Err(SnapshotError::Truncated)
            ));
        }
        // A value flip that keeps every length valid is caught by the CRC.
        let mut bad = data.clone();
        let at = data.len() - 4 - 1;
        bad[at] ^= 1;
        assert!(matches!(
            recover(&bad),
            Err(SnapshotError::Checksum {
                section: "kv data",
                ..
            })
        ));
    }

    #[test]
    fn kv_data_out_of_order_is_rejected() {
        // Two pairs written in the wrong order, with a correct CRC.
        let mut data = Vec::new();
        data.extend_from_slice(&2u64.to_le_bytes());
        for key in [b"b", b"a"] {
            data.extend_from_slice(&1u32.to_le_bytes());
            data.extend_from_slice(key);
            data.extend_from_slice(&0u32.to_le_bytes());
        }
        let crc = crc32fast::hash(&data);
        data.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            recover(&data),
            Err(SnapshotError::Corrupt {
                section: "kv data",
                error: DecodeError::Invalid { what: "key order" }
            })
        ));
    }
}
