//! Blocking list and sorted-set pops: `BLPOP`, `BRPOP`, `BLMOVE`,
//! `BRPOPLPUSH`, `BZPOPMIN`, `BZPOPMAX`.
//!
//! A blocked connection waits on its own, woken by its keys' groups:
//!
//! ```text
//!  pop through the log ─► got one? answer [key, value]
//!        │ no
//!        ▼
//!  wait until a key's group applies something on this node
//!  (NodeHost::wait_applied; looks 1 ms apart, widening to 64 ms while
//!  the group stays busy), watching the client, shutdown and the timeout
//!        ▼
//!  read of that group's keys' lengths on this node's replica (no log
//!  entry) ─► all empty? wait again, from the index just seen
//!        │ one is not
//!        ▼
//!  pop through the log ...                 ... until the timeout: nil array
//! ```
//!
//! Every pop is an ordinary replicated write, so what a blocked client gets
//! is exactly what `LPOP` would have given it at that point of the log; the
//! length checks only save log entries while the lists stay empty. Each
//! wait starts from the applied index the last look saw, so a push applied
//! between a look and the next wait answers that wait at once: no push is
//! missed, and nothing polls (a push through any node wakes the client
//! when this node's replica applies it, about a millisecond). The local
//! replica can lag (cut off from its leader), so once a second the look is
//! a linearizable read through the leader instead.
//! Clients of one executor blocked on one key are served in the order they
//! blocked, as in Redis: only the first in line looks at the key and pops
//! it (see [`Queued`]). Clients on different executors or nodes race:
//! whoever pops first after a push wins.
//!
//! A client that closes its connection while blocked stops polling at
//! once, so it never pops an element it cannot receive; commands it sends
//! while blocked wait in its buffer and run after the blocking one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flotilla::{GroupId, HostError, ReadConsistency};
use flotilla_rsm::{KvCommand, KvQuery, KvResult, TypedCommand as C, TypedQuery as Q};
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use super::command::{outcome_reply, Conn, Shared};
use super::reply::Reply;

/// Shortest time between two looks at the keys that applies woke.
const LOOK_GAP_MIN: Duration = Duration::from_millis(1);
/// Longest: under a stream of writes to other keys of the keys' groups,
/// the gap doubles after each look that finds nothing, up to this, so a
/// blocked client costs at most ~16 reads a second however busy its
/// groups are (and a push to its key waits at most this long then).
const LOOK_GAP_MAX: Duration = Duration::from_millis(64);
/// How often the keys of a group whose applies cannot be waited for (the
/// wait failed) are looked at instead.
const POLL_FALLBACK: Duration = Duration::from_millis(100);
/// The length check is a linearizable read at least this often (the local
/// replica may lag behind the leader).
const CONFIRMED_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Most bytes a blocked client may send before its command returns.
const PENDING_INPUT_MAX: usize = 64 << 20;

/// What a blocking command pops, and how its answer looks.
#[derive(Debug, Clone, PartialEq)]
pub enum Pop {
    /// BLPOP / BRPOP: `[key, value]`.
    List {
        /// From the head.
        left: bool,
    },
    /// BZPOPMIN / BZPOPMAX: `[key, member, score]`.
    ZSet {
        /// The highest score.
        max: bool,
    },
    /// BLMPOP / BZMPOP: `[key, [elements]]` (sorted sets: `[key,
    /// [[member, score], ...]]`).
    Multi {
        /// Sorted sets, not lists.
        zset: bool,
        /// Lists: the head; sorted sets: the highest scores.
        end: bool,
        /// Most elements.
        count: u64,
    },
    /// BLMOVE / BRPOPLPUSH: the moved element.
    Move {
        /// Where it goes (in the source's group).
        dst: Bytes,
        /// Pop from the head.
        from_left: bool,
        /// Push at the head.
        to_left: bool,
    },
}

/// A parsed blocking command.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocking {
    /// The keys, tried in order.
    pub keys: Vec<Bytes>,
    /// What is popped from them.
    pub pop: Pop,
    /// How long to wait; `None` waits for ever (timeout 0).
    pub timeout: Option<Duration>,
}

/// The commands of this module, for COMMAND (name, arity, flags, first key,
/// last key, step).
pub const COMMANDS: &[super::command::CommandInfo] = &[
    ("blpop", -3, &["write", "noscript", "blocking"], 1, -2, 1),
    ("brpop", -3, &["write", "noscript", "blocking"], 1, -2, 1),
    (
        "bzpopmin",
        -3,
        &["write", "noscript", "blocking", "fast"],
        1,
        -2,
        1,
    ),
    (
        "bzpopmax",
        -3,
        &["write", "noscript", "blocking", "fast"],
        1,
        -2,
        1,
    ),
    (
        "brpoplpush",
        4,
        &["write", "denyoom", "noscript", "blocking"],
        1,
        2,
        1,
    ),
    (
        "blmove",
        6,
        &["write", "denyoom", "noscript", "blocking"],
        1,
        2,
        1,
    ),
    ("blmpop", -5, &["write", "blocking", "movablekeys"], 0, 0, 0),
    ("bzmpop", -5, &["write", "blocking", "movablekeys"], 0, 0, 0),
];

/// Parses a blocking command (`name` upper case, `args` after it). `None`
/// if `name` is not one; `Err` is the reply for a bad command.
pub fn parse(name: &str, args: &[Bytes]) -> Option<Result<Blocking, Reply>> {
    let info = COMMANDS.iter().find(|c| c.0.eq_ignore_ascii_case(name))?;
    if !super::command::arity_ok(info, args.len()) {
        return Some(Err(Reply::err(format!(
            "wrong number of arguments for '{}' command",
            info.0
        ))));
    }
    Some(parse_checked(name, args))
}

fn parse_checked(name: &str, args: &[Bytes]) -> Result<Blocking, Reply> {
    if name == "BLMPOP" || name == "BZMPOP" {
        // The timeout comes first here.
        let timeout = timeout(&args[0])?;
        let zset = name == "BZMPOP";
        let (keys, end, count) = super::types::parse_mpop(zset, &args[1..])?;
        return Ok(Blocking {
            keys,
            pop: Pop::Multi { zset, end, count },
            timeout,
        });
    }
    let (last, rest) = args.split_last().expect("arity checked");
    let timeout = timeout(last)?;
    let side = |b: &Bytes| match b.to_ascii_uppercase().as_slice() {
        b"LEFT" => Ok(true),
        b"RIGHT" => Ok(false),
        _ => Err(Reply::err("syntax error")),
    };
    let (keys, pop) = match name {
        "BLPOP" | "BRPOP" => (
            rest.to_vec(),
            Pop::List {
                left: name == "BLPOP",
            },
        ),
        "BZPOPMIN" | "BZPOPMAX" => (
            rest.to_vec(),
            Pop::ZSet {
                max: name == "BZPOPMAX",
            },
        ),
        "BRPOPLPUSH" => (
            vec![rest[0].clone()],
            Pop::Move {
                dst: rest[1].clone(),
                from_left: false,
                to_left: true,
            },
        ),
        "BLMOVE" => (
            vec![rest[0].clone()],
            Pop::Move {
                dst: rest[1].clone(),
                from_left: side(&rest[2])?,
                to_left: side(&rest[3])?,
            },
        ),
        _ => return Err(Reply::err("internal error: not a blocking command")),
    };
    Ok(Blocking { keys, pop, timeout })
}

/// Redis' timeout argument: seconds, a float, 0 for ever.
fn timeout(b: &[u8]) -> Result<Option<Duration>, Reply> {
    let secs: f64 = std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|f: &f64| f.is_finite())
        .ok_or_else(|| Reply::err("timeout is not a float or out of range"))?;
    if secs < 0.0 {
        return Err(Reply::err("timeout is negative"));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| Reply::err("timeout is out of range"))
}

impl Blocking {
    /// The write that pops from `key`.
    fn pop_command(&self, key: &Bytes) -> KvCommand {
        KvCommand::Typed(match &self.pop {
            Pop::List { left } => C::ListPop {
                key: key.clone(),
                left: *left,
                count: None,
            },
            Pop::ZSet { max } => C::ZPop {
                key: key.clone(),
                max: *max,
                count: None,
            },
            Pop::Multi { zset, end, count } => C::MultiPop {
                keys: vec![key.clone()],
                zset: *zset,
                end: *end,
                count: *count,
            },
            Pop::Move {
                dst,
                from_left,
                to_left,
            } => C::ListMove {
                key: key.clone(),
                dst: dst.clone(),
                from_left: *from_left,
                to_left: *to_left,
            },
        })
    }

    /// The read of how many elements `key` holds.
    fn len_query(&self, key: &Bytes) -> KvQuery {
        KvQuery::Typed(match self.pop {
            Pop::ZSet { .. } | Pop::Multi { zset: true, .. } => Q::ZCard { key: key.clone() },
            _ => Q::ListLen { key: key.clone() },
        })
    }

    /// The answer for a pop's result: `Some` if it popped something.
    fn answer(&self, key: &Bytes, result: KvResult) -> Option<Reply> {
        match (&self.pop, result) {
            (Pop::List { .. }, KvResult::Value(Some(v))) => {
                Some(Reply::Array(vec![Reply::Bulk(key.clone()), Reply::Bulk(v)]))
            }
            (Pop::Move { .. }, KvResult::Value(Some(v))) => Some(Reply::Bulk(v)),
            (Pop::ZSet { .. }, KvResult::Items(mut items)) if items.len() == 2 => {
                let score = items.pop().expect("two items");
                let member = items.pop().expect("two items");
                Some(Reply::Array(vec![
                    Reply::Bulk(key.clone()),
                    Reply::Bulk(member),
                    Reply::Double(score),
                ]))
            }
            (Pop::Multi { zset, .. }, KvResult::Items(items)) if !items.is_empty() => {
                Some(super::types::mpop_reply(*zset, items))
            }
            (_, KvResult::Value(None)) => None,
            (_, KvResult::Items(items)) if items.is_empty() => None,
            (_, other) => Some(outcome_reply(Ok(other))),
        }
    }
}

/// What the connection lends a blocked command: its socket (to notice the
/// client leaving), its input buffer (for what the client sends meanwhile)
/// and the node's stop signal.
pub struct Client<'a> {
    /// The client's socket.
    pub stream: &'a mut TcpStream,
    /// Input not parsed yet.
    pub input: &'a mut BytesMut,
    /// Fires when the node stops.
    pub stop: &'a flume::Receiver<()>,
}

/// Counts a blocked connection for `INFO clients` while it lives.
struct BlockedGuard<'a>(&'a Shared);

impl<'a> BlockedGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.clients_blocked.fetch_add(1, Ordering::Relaxed);
        BlockedGuard(shared)
    }
}

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        self.0.clients_blocked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a wait ended.
enum Woke {
    Timer,
    Input(std::io::Result<usize>),
    Stop,
    /// The `i`th watched group applied something (its applied index), or
    /// its wait failed.
    Applied(usize, Result<u64, HostError>),
    /// The client became first in line for a key (see [`Queued`]).
    Turn,
}

thread_local! {
    /// Per key, the blocked clients of this executor in the order they
    /// blocked (see [`Queued`]).
    static LINES: std::cell::RefCell<std::collections::HashMap<Bytes, std::collections::VecDeque<InLine>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static NEXT_TICKET: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

/// One blocked client in a key's line.
struct InLine {
    ticket: u64,
    /// Told when the client becomes first in line.
    turn: flume::Sender<()>,
}

/// A blocked client's place in the lines of its keys, on this executor:
/// only the first client of a key's line looks at and pops the key, so
/// the clients of one executor blocked on one key are served in the
/// order they blocked (as in Redis), and a push wakes one of them, not
/// all. Clients on other executors or nodes still race for it.
struct Queued {
    ticket: u64,
    keys: Vec<Bytes>,
    turn: flume::Receiver<()>,
}

impl Queued {
    /// Joins the end of each key's line.
    fn new(keys: &[Bytes]) -> Queued {
        let ticket = NEXT_TICKET.with(|t| {
            let id = t.get();
            t.set(id + 1);
            id
        });
        let (tx, turn) = flume::bounded(1);
        let mut mine: Vec<Bytes> = Vec::new();
        LINES.with(|lines| {
            let mut lines = lines.borrow_mut();
            for k in keys {
                if mine.contains(k) {
                    continue;
                }
                mine.push(k.clone());
                lines.entry(k.clone()).or_default().push_back(InLine {
                    ticket,
                    turn: tx.clone(),
                });
            }
        });
        Queued {
            ticket,
            keys: mine,
            turn,
        }
    }

    /// Whether this client is first in `key`'s line.
    fn first(&self, key: &Bytes) -> bool {
        LINES.with(|lines| {
            lines
                .borrow()
                .get(key)
                .and_then(|line| line.front())
                .is_some_and(|f| f.ticket == self.ticket)
        })
    }
}

impl Drop for Queued {
    /// Leaves every line; the next client of a line it led looks at once.
    fn drop(&mut self) {
        LINES.with(|lines| {
            let mut lines = lines.borrow_mut();
            for k in &self.keys {
                let Some(line) = lines.get_mut(k) else {
                    continue;
                };
                let led = line.front().is_some_and(|f| f.ticket == self.ticket);
                line.retain(|c| c.ticket != self.ticket);
                match line.front() {
                    None => {
                        lines.remove(k);
                    }
                    Some(next) if led => {
                        let _ = next.turn.try_send(());
                    }
                    Some(_) => {}
                }
            }
        });
    }
}

/// Runs a blocking command to its answer. `None` if the client left or the
/// node is stopping (the connection then closes without an answer).
pub async fn run(
    b: Blocking,
    conn: &mut Conn,
    shared: &Shared,
    client: &mut Client<'_>,
) -> Option<Reply> {
    let _blocked = BlockedGuard::new(shared);
    let started = Instant::now();
    let deadline = b.timeout.map(|t| started + t);
    let groups: Vec<GroupId> = b.keys.iter().map(|k| conn.kv.group_for(k)).collect();
    if let Pop::Move { dst, .. } = &b.pop {
        if conn.kv.group_for(dst) != groups[0] {
            return Some(super::command::crossslot());
        }
    }
    // Each group of the keys once, with the applied index its keys were
    // last looked at (0: not yet); `None` while its wake-up cannot be
    // waited for (its keys are polled instead).
    let mut watched: Vec<(GroupId, Option<u64>)> = Vec::new();
    for g in &groups {
        if !watched.iter().any(|(w, _)| w == g) {
            watched.push((*g, Some(0)));
        }
    }
    let mut last_look = started;
    let mut look_gap = LOOK_GAP_MIN;
    let mut last_look_confirmed = started;
    let mut scratch = vec![0u8; 16 << 10];
    let queued = Queued::new(&b.keys);
    // The first round pops without looking (most blocking pops find an
    // element at once), from the keys no earlier client waits on here.
    let mut candidates: Vec<usize> = (0..b.keys.len())
        .filter(|&i| queued.first(&b.keys[i]))
        .collect();
    loop {
        for &i in &candidates {
            let (key, group) = (&b.keys[i], groups[i]);
            let outcome = super::command::call_write(conn, group, b.pop_command(key), shared).await;
            match outcome {
                Ok(r) => {
                    if let Some(reply) = b.answer(key, r) {
                        return Some(reply);
                    }
                }
                Err(e) => return Some(outcome_reply(Err(e))),
            }
        }
        // Nothing to pop: wait for a change, then look again.
        loop {
            let now = Instant::now();
            // Look at most once per gap (a change meanwhile answers the
            // next wait at once, so the gap delays, never loses, a
            // wake-up). The client and shutdown are watched throughout.
            let gap = (last_look + look_gap).saturating_duration_since(now);
            if deadline.is_some_and(|d| now >= d) {
                return Some(Reply::NilArray);
            }
            let mut next_timed = last_look_confirmed + CONFIRMED_LOOK_EVERY;
            if watched.iter().any(|(_, after)| after.is_none()) {
                next_timed = next_timed.min(last_look + POLL_FALLBACK);
            }
            let until = deadline.map_or(next_timed, |d| next_timed.min(d));
            let nap = until.saturating_duration_since(now);
            // Only the keys this client is first in line for here are
            // looked at; the groups of those are waited on.
            let first: Vec<bool> = b.keys.iter().map(|k| queued.first(k)).collect();
            let active: Vec<bool> = watched
                .iter()
                .map(|(g, _)| (0..b.keys.len()).any(|i| first[i] && groups[i] == *g))
                .collect();
            let woke = futures_lite::future::or(
                async {
                    glommio::timer::sleep(nap).await;
                    Woke::Timer
                },
                futures_lite::future::or(
                    async { Woke::Input(client.stream.read(&mut scratch).await) },
                    futures_lite::future::or(
                        async {
                            let _ = client.stop.recv_async().await;
                            Woke::Stop
                        },
                        futures_lite::future::or(
                            async {
                                let _ = queued.turn.recv_async().await;
                                Woke::Turn
                            },
                            // The timer above ends the wait first.
                            applied(shared, &watched, &active, gap, nap + Duration::from_secs(1)),
                        ),
                    ),
                ),
            )
            .await;
            // Which keys to look at, and how.
            let (look, consistency): (Vec<usize>, ReadConsistency) = match woke {
                Woke::Input(Ok(n)) if n > 0 => {
                    if client.input.len() + n > PENDING_INPUT_MAX {
                        return None;
                    }
                    client.input.extend_from_slice(&scratch[..n]);
                    continue;
                }
                Woke::Input(_) | Woke::Stop => return None,
                Woke::Applied(w, Ok(index)) => {
                    let group = watched[w].0;
                    watched[w].1 = Some(index);
                    let keys = (0..b.keys.len()).filter(|&i| first[i] && groups[i] == group);
                    (keys.collect(), ReadConsistency::Stale)
                }
                Woke::Turn => (
                    (0..b.keys.len()).filter(|&i| first[i]).collect(),
                    ReadConsistency::Stale,
                ),
                Woke::Applied(_, Err(HostError::Timeout(_))) => continue,
                Woke::Applied(w, Err(e)) => {
                    tracing::debug!(group = watched[w].0 .0, error = %e, "cannot wait for applies: polling the group's keys");
                    watched[w].1 = None;
                    continue;
                }
                Woke::Timer => {
                    // The local replica can lag: once a second the lengths
                    // are read linearizably (through the leader, no log
                    // entry); waits that failed are tried again then.
                    let consistency = if last_look_confirmed.elapsed() >= CONFIRMED_LOOK_EVERY {
                        last_look_confirmed = Instant::now();
                        for (_, after) in watched.iter_mut() {
                            after.get_or_insert(0);
                        }
                        ReadConsistency::Linearizable
                    } else {
                        ReadConsistency::Stale
                    };
                    (
                        (0..b.keys.len()).filter(|&i| first[i]).collect(),
                        consistency,
                    )
                }
            };
            if look.is_empty() {
                continue;
            }
            // Looks in quick succession (a busy group) widen the gap; a
            // look after a quiet spell narrows it again.
            let now = Instant::now();
            look_gap = if now.duration_since(last_look) < look_gap * 4 {
                (look_gap * 2).min(LOOK_GAP_MAX)
            } else {
                LOOK_GAP_MIN
            };
            last_look = now;
            shared.blocking_looks.fetch_add(1, Ordering::Relaxed);
            candidates = match nonempty(&b, &groups, &look, conn, consistency).await {
                Ok(c) => c,
                Err(reply) => return Some(reply),
            };
            if !candidates.is_empty() {
                break;
            }
        }
    }
}

/// After `gap`, waits until one of the `watched` groups that is `active`
/// and has an index applies past it on this node; pending for ever if none
/// qualifies.
async fn applied(
    shared: &Shared,
    watched: &[(GroupId, Option<u64>)],
    active: &[bool],
    gap: Duration,
    deadline: Duration,
) -> Woke {
    if !gap.is_zero() {
        glommio::timer::sleep(gap).await;
    }
    let (w, applied) = any_applied(shared, watched, active, deadline).await;
    Woke::Applied(w, applied)
}

/// Waits until one of the `watched` groups that is `active` and has an
/// index applies past it on this node: its position in `watched` and the
/// wait's outcome (the applied index). Pending for ever if none
/// qualifies.
pub(super) async fn any_applied(
    shared: &Shared,
    watched: &[(GroupId, Option<u64>)],
    active: &[bool],
    deadline: Duration,
) -> (usize, Result<u64, HostError>) {
    let waits: Vec<_> = watched
        .iter()
        .zip(active)
        .enumerate()
        .filter_map(|(w, ((group, after), active))| {
            let after = (*after).filter(|_| *active)?;
            let host = &shared.host;
            Some(Box::pin(async move {
                (w, host.wait_applied(*group, after, deadline).await)
            }))
        })
        .collect();
    if waits.is_empty() {
        return futures_lite::future::pending().await;
    }
    futures::future::select_all(waits).await.0
}

/// The keys among `look` (by position) that hold an element, read with
/// `consistency` (stale: this node's replica; linearizable: confirmed by
/// the leader); no log entry either way. A key of the wrong type is the
/// command's error, as in Redis.
async fn nonempty(
    b: &Blocking,
    groups: &[GroupId],
    look: &[usize],
    conn: &mut Conn,
    consistency: ReadConsistency,
) -> Result<Vec<usize>, Reply> {
    let mut local = conn.kv.clone();
    local.consistency = consistency;
    let mut out = Vec::new();
    for &i in look {
        let key = &b.keys[i];
        match local.query(groups[i], &b.len_query(key)).await {
            Ok(KvResult::Len(0) | KvResult::Count(0)) => {}
            Ok(KvResult::Len(_) | KvResult::Count(_)) => out.push(i),
            Ok(KvResult::Error(e)) => return Err(outcome_reply(Ok(KvResult::Error(e)))),
            Ok(other) => return Err(outcome_reply(Ok(other))),
            // The local replica cannot answer now: try the real pop.
            Err(HostError::Timeout(_) | HostError::Request(_)) => out.push(i),
            Err(e) => return Err(outcome_reply(Err(e))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn parsed(name: &str, a: &[&str]) -> Result<Blocking, Reply> {
        parse(name, &args(a)).expect("a blocking command")
    }

    #[test]
    fn parses_keys_pops_and_timeouts() {
        let b = parsed("BLPOP", &["a", "b", "1.5"]).unwrap();
        assert_eq!(b.keys, args(&["a", "b"]));
        assert_eq!(b.pop, Pop::List { left: true });
        assert_eq!(b.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(parsed("BRPOP", &["a", "0"]).unwrap().timeout, None);
        assert_eq!(
            parsed("BZPOPMAX", &["z", "2"]).unwrap().pop,
            Pop::ZSet { max: true }
        );
        let m = parsed("BLMOVE", &["s", "d", "left", "RIGHT", "0.01"]).unwrap();
        assert_eq!(m.keys, args(&["s"]));
        assert_eq!(
            m.pop,
            Pop::Move {
                dst: Bytes::from_static(b"d"),
                from_left: true,
                to_left: false
            }
        );
        let r = parsed("BRPOPLPUSH", &["s", "d", "3"]).unwrap();
        assert_eq!(
            r.pop,
            Pop::Move {
                dst: Bytes::from_static(b"d"),
                from_left: false,
                to_left: true
            }
        );
        assert!(parse("LPOP", &args(&["a"])).is_none());
    }

    #[test]
    fn parses_multi_key_pops_with_the_timeout_first() {
        let b = parsed("BLMPOP", &["0.5", "2", "a", "b", "RIGHT", "COUNT", "3"]).unwrap();
        assert_eq!(b.keys, args(&["a", "b"]));
        assert_eq!(
            b.pop,
            Pop::Multi {
                zset: false,
                end: false,
                count: 3
            }
        );
        assert_eq!(b.timeout, Some(Duration::from_millis(500)));
        let z = parsed("BZMPOP", &["0", "1", "z", "max"]).unwrap();
        assert_eq!(
            z.pop,
            Pop::Multi {
                zset: true,
                end: true,
                count: 1
            }
        );
        assert_eq!(z.timeout, None);
        assert_eq!(
            z.len_query(&args(&["z"])[0]),
            KvQuery::Typed(Q::ZCard {
                key: args(&["z"])[0].clone()
            })
        );
        let err = |name: &str, a: &[&str]| match parsed(name, a) {
            Err(Reply::Error(e)) => e,
            other => panic!("{name} {a:?}: {other:?}"),
        };
        assert_eq!(
            err("BLMPOP", &["-1", "1", "a", "LEFT"]),
            "ERR timeout is negative"
        );
        assert_eq!(
            err("BLMPOP", &["1", "0", "a", "LEFT"]),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(err("BLMPOP", &["1", "2", "a", "LEFT"]), "ERR syntax error");
        assert_eq!(err("BZMPOP", &["1", "1", "a", "LEFT"]), "ERR syntax error");
        // What a pop returns, as Redis answers it.
        let k = Bytes::from_static(b"k");
        assert_eq!(
            z.answer(&k, KvResult::Items(args(&["k", "m", "2.5"]))),
            Some(Reply::Array(vec![
                Reply::Bulk(k.clone()),
                Reply::Array(vec![Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"m")),
                    Reply::Double(Bytes::from_static(b"2.5"))
                ])])
            ]))
        );
        assert_eq!(z.answer(&k, KvResult::Items(Vec::new())), None);
    }

    #[test]
    fn refuses_bad_arguments_with_redis_errors() {
        let err = |name: &str, a: &[&str]| match parsed(name, a) {
            Err(Reply::Error(e)) => e,
            other => panic!("{name} {a:?}: {other:?}"),
        };
        assert_eq!(
            err("BLPOP", &["a"]),
            "ERR wrong number of arguments for 'blpop' command"
        );
        assert_eq!(
            err("BLPOP", &["a", "x"]),
            "ERR timeout is not a float or out of range"
        );
        assert_eq!(err("BLPOP", &["a", "-1"]), "ERR timeout is negative");
        assert_eq!(
            err("BZPOPMIN", &["a", "inf"]),
            "ERR timeout is not a float or out of range"
        );
        assert_eq!(
            err("BLMOVE", &["s", "d", "UP", "LEFT", "1"]),
            "ERR syntax error"
        );
        assert_eq!(
            err("BRPOPLPUSH", &["s", "d"]),
            "ERR wrong number of arguments for 'brpoplpush' command"
        );
    }

    #[test]
    fn answers_have_redis_shapes() {
        let key = Bytes::from_static(b"k");
        let list = parsed("BLPOP", &["k", "1"]).unwrap();
        assert_eq!(
            list.answer(&key, KvResult::Value(Some(Bytes::from_static(b"v")))),
            Some(Reply::Array(vec![
                Reply::Bulk(key.clone()),
                Reply::Bulk(Bytes::from_static(b"v"))
            ]))
        );
        assert_eq!(list.answer(&key, KvResult::Value(None)), None);
        let z = parsed("BZPOPMIN", &["k", "1"]).unwrap();
        assert_eq!(
            z.answer(&key, KvResult::Items(args(&["m", "1.5"]))),
            Some(Reply::Array(vec![
                Reply::Bulk(key.clone()),
                Reply::Bulk(Bytes::from_static(b"m")),
                Reply::Double(Bytes::from_static(b"1.5"))
            ]))
        );
        assert_eq!(z.answer(&key, KvResult::Items(Vec::new())), None);
        let mv = parsed("BLMOVE", &["k", "d", "LEFT", "LEFT", "1"]).unwrap();
        assert_eq!(
            mv.answer(&key, KvResult::Value(Some(Bytes::from_static(b"e")))),
            Some(Reply::Bulk(Bytes::from_static(b"e")))
        );
        assert!(matches!(
            list.answer(&key, KvResult::Error(flotilla_rsm::KvError::WrongType)),
            Some(Reply::Error(e)) if e.starts_with("WRONGTYPE")
        ));
    }
}
