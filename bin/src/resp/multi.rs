//! Transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
//!
//! A transaction becomes one log entry of one group
//! (`KvCommand::Batch`), so nothing runs between its commands on any
//! replica. Its keys must therefore live in one group, as they must share
//! a hash slot in Redis Cluster: use a hash tag (`{user:7}:cart`,
//! `{user:7}:total`). A command whose keys fall in another group than the
//! transaction's so far is refused with `CROSSSLOT` when it is queued, and
//! the transaction is then discarded at `EXEC`.
//!
//! ```text
//!  MULTI            conn.multi = Some(Multi)              +OK
//!  SET {a}x 1       prepared as usual, then queued        +QUEUED
//!  INCR {a}y        (its subs all in the transaction's group)
//!  EXEC             Batch { guards: WATCHed keys and their digests,
//!                           commands: every queued sub in order }
//!                   ─► one proposal ─► Batch(results) ─► each command's
//!                   reply, as an array; Aborted (a WATCHed key changed)
//!                   ─► the null array
//! ```
//!
//! `WATCH` reads the key's digest (`KvQuery::Digest`: its type, value and
//! deadline) with the connection's read consistency; `EXEC` sends the
//! digests as guards, so the transaction runs only if every watched key
//! still holds what the client saw. Unlike Redis, a key rewritten with the
//! value it had does not abort the transaction: the guard is on content,
//! which is what optimistic check-and-set needs.
//!
//! As Redis: an unknown command or a wrong number of arguments while
//! queueing discards the transaction (`EXECABORT` at `EXEC`); other errors
//! found while preparing a command (a bad option, a non-integer argument)
//! are queued and become that command's reply inside the `EXEC` array,
//! like runtime errors, which do not undo the commands around them.
//! Differences: connection commands (`CLIENT SETNAME`, `SELECT`, ...)
//! take effect when queued; `KEYS`, `INFO` and the commands that visit
//! every group (`SCAN`, `DBSIZE`, `FLUSHALL`, a multi-key command over
//! several groups) and `MSETNX` (itself a guarded batch: a batch holds no
//! batch) cannot be part of a transaction.

use bytes::Bytes;
use flotilla::GroupId;
use flotilla_rsm::{KvCommand, KvQuery, KvResult, BATCH_COMMANDS_MAX};

use super::command::{self, crossslot, Conn, FinishBox, Op, Prepared, Shared, Sub};
use super::reply::Reply;

/// A transaction being queued (between `MULTI` and `EXEC`).
#[derive(Debug, Default)]
pub struct Multi {
    items: Vec<Queued>,
    /// The group of every key queued so far.
    group: Option<GroupId>,
    /// A command was refused while queueing: `EXEC` discards it all.
    dirty: bool,
}

impl Multi {
    /// Commands queued so far (`CLIENT INFO`'s `multi`).
    pub fn queued(&self) -> usize {
        self.items.len()
    }
}

/// One queued command.
#[derive(Debug)]
enum Queued {
    /// Its reply is known already (`PING`, or an error found while
    /// preparing it).
    Reply(Reply),
    /// KV requests, all to the transaction's group.
    Plan(Vec<Sub>, FinishBox),
}

/// A watched key and the digest it had.
#[derive(Debug, Clone)]
pub struct Watched {
    pub(super) key: Bytes,
    pub(super) group: GroupId,
    pub(super) digest: u64,
}

/// A queued transaction, run by [`exec`].
#[derive(Debug)]
pub struct Transaction(Multi);

/// True for the commands this module answers.
pub fn is_transaction_command(name: &[u8]) -> bool {
    ["MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"]
        .iter()
        .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
}

/// `MULTI`, `EXEC`, `DISCARD`, `WATCH` or `UNWATCH` (`name` in upper case).
pub fn prepare(name: &str, args: &[Bytes], conn: &mut Conn) -> Prepared {
    let arity = |n: &str| {
        Prepared::Reply(Reply::err(format!(
            "wrong number of arguments for '{}' command",
            n.to_ascii_lowercase()
        )))
    };
    match name {
        "WATCH" if args.is_empty() => arity(name),
        "WATCH" if conn.multi.is_some() => {
            Prepared::Reply(Reply::err("WATCH inside MULTI is not allowed"))
        }
        "WATCH" => {
            let subs = args
                .iter()
                .map(|key| Sub {
                    group: conn.kv.group_for(key),
                    op: Op::Read(KvQuery::Digest { key: key.clone() }),
                })
                .collect();
            command::plan_watch(subs, args.to_vec())
        }
        _ if !args.is_empty() => {
            if let Some(m) = conn.multi.as_mut() {
                m.dirty = true;
            }
            arity(name)
        }
        "MULTI" if conn.multi.is_some() => {
            Prepared::Reply(Reply::err("MULTI calls can not be nested"))
        }
        "MULTI" => {
            conn.multi = Some(Multi::default());
            Prepared::Reply(Reply::Ok)
        }
        "EXEC" => match conn.multi.take() {
            None => Prepared::Reply(Reply::err("EXEC without MULTI")),
            Some(m) if m.dirty => {
                // EXEC forgets the watched keys, whatever its outcome.
                Prepared::Unwatch(Reply::Error(
                    "EXECABORT Transaction discarded because of previous errors.".into(),
                ))
            }
            Some(m) => Prepared::Exec(Transaction(m)),
        },
        "DISCARD" => match conn.multi.take() {
            None => Prepared::Reply(Reply::err("DISCARD without MULTI")),
            Some(_) => Prepared::Unwatch(Reply::Ok),
        },
        // UNWATCH inside MULTI is queued and does nothing (as Redis).
        _ if conn.multi.is_some() => queue(Prepared::Reply(Reply::Ok), conn),
        _ => Prepared::Unwatch(Reply::Ok),
    }
}

/// Queues a prepared command of a connection inside `MULTI`; the reply to
/// give now.
pub fn queue(prepared: Prepared, conn: &mut Conn) -> Prepared {
    let Some(m) = conn.multi.as_mut() else {
        return prepared;
    };
    let refuse = |m: &mut Multi, reply: Reply| {
        m.dirty = true;
        Prepared::Reply(reply)
    };
    match prepared {
        Prepared::Reply(Reply::Error(e))
            if e.starts_with("ERR unknown command") || e.starts_with("ERR wrong number") =>
        {
            refuse(m, Reply::Error(e))
        }
        Prepared::Reply(r) => {
            m.items.push(Queued::Reply(r));
            Prepared::Reply(Reply::Simple("QUEUED".into()))
        }
        Prepared::Plan(subs, f) => {
            if subs
                .iter()
                .any(|s| matches!(s.op, Op::Write(KvCommand::Batch { .. })))
            {
                // A batch holds no batch.
                return refuse(m, Reply::err("MSETNX cannot be part of a transaction"));
            }
            for s in &subs {
                match m.group {
                    None => m.group = Some(s.group),
                    Some(g) if g != s.group => return refuse(m, crossslot()),
                    Some(_) => {}
                }
            }
            m.items.push(Queued::Plan(subs, f));
            Prepared::Reply(Reply::Simple("QUEUED".into()))
        }
        Prepared::Info(_) | Prepared::Keys(_) => refuse(
            m,
            Reply::err("INFO and KEYS cannot be part of a transaction"),
        ),
        Prepared::Wait => refuse(m, Reply::err("WAIT cannot be part of a transaction here")),
        Prepared::Save { .. } => refuse(
            m,
            Reply::err("SAVE and BGSAVE cannot be part of a transaction"),
        ),
        Prepared::XRead(_) => refuse(m, Reply::err("XREAD cannot be part of a transaction here")),
        Prepared::Script(_) => refuse(
            m,
            Reply::err("EVAL cannot be part of a transaction here (a script is atomic itself)"),
        ),
        Prepared::PubSub(_) => refuse(
            m,
            Reply::err("SUBSCRIBE and UNSUBSCRIBE cannot be part of a transaction here"),
        ),
        Prepared::Block(_) => refuse(
            m,
            Reply::err("blocking commands cannot be part of a transaction here"),
        ),
        // Nothing to queue: these act at once (QUIT closes the connection,
        // and the transaction with it).
        p @ (Prepared::Quit | Prepared::Exec(_) | Prepared::Unwatch(_)) => p,
    }
}

/// Notes a command the parser refused while a transaction is queued.
pub fn refused(conn: &mut Conn) {
    if let Some(m) = conn.multi.as_mut() {
        m.dirty = true;
    }
}

/// Runs a transaction: one `Batch` proposal to its group, guarded by the
/// connection's watched keys (which `EXEC` forgets).
pub async fn exec(t: Transaction, conn: &mut Conn, shared: &Shared) -> Reply {
    let Transaction(m) = t;
    let watched = std::mem::take(&mut conn.watched);
    let mut group = m.group;
    for w in &watched {
        match group {
            None => group = Some(w.group),
            Some(g) if g != w.group => return crossslot(),
            Some(_) => {}
        }
    }
    let commands: Vec<KvCommand> = m
        .items
        .iter()
        .filter_map(|q| match q {
            Queued::Plan(subs, _) => Some(subs),
            Queued::Reply(_) => None,
        })
        .flatten()
        .map(|s| match &s.op {
            Op::Write(c) => c.clone(),
            Op::Read(q) => KvCommand::Read(q.clone()),
        })
        .collect();
    if commands.len() > BATCH_COMMANDS_MAX as usize {
        return Reply::err(format!(
            "a transaction holds at most {BATCH_COMMANDS_MAX} KV operations"
        ));
    }
    let results = match group {
        // Nothing touches a key: only the queued replies.
        None => Vec::new(),
        Some(group) => {
            let n = commands.len();
            let batch = KvCommand::Batch {
                guards: watched.into_iter().map(|w| (w.key, w.digest)).collect(),
                commands,
            };
            match command::call_write(conn, group, batch, shared).await {
                Ok(KvResult::Batch(results)) if results.len() == n => results,
                Ok(KvResult::Aborted) => return Reply::NilArray,
                other => return command::outcome_reply(other),
            }
        }
    };
    let mut results = results.into_iter();
    let mut replies = Vec::with_capacity(m.items.len());
    for q in m.items {
        replies.push(match q {
            Queued::Reply(r) => r,
            Queued::Plan(subs, f) => {
                let mine = results.by_ref().take(subs.len()).map(Ok).collect();
                command::finish_plan(f, mine, conn)
            }
        });
    }
    Reply::Array(replies)
}
