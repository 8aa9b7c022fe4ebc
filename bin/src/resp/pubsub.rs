//! Pub/Sub: `PUBLISH`, `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`,
//! `PUNSUBSCRIBE`, `PUBSUB`.
//!
//! A message goes through the log of its channel's group (the group its
//! name hashes to, as a key's), so every node of the cluster sees every
//! message, in one order per group:
//!
//! ```text
//!  PUBLISH ch m ─► KvCommand::Publish through ch's group's log
//!                  each replica keeps (index, ch, m) in a bounded ring
//!
//!  subscriber (any node) ─► where do new messages start? (linearizable)
//!        ▼
//!  wait until the local replica applies more (NodeHost::wait_applied)
//!        ▼
//!  read the ring after the last index seen (this node, no log entry)
//!  ─► "message" / "pmessage" to the client ─► wait again
//! ```
//!
//! As in Redis, delivery is at most once: a subscriber gets what is
//! published after its `SUBSCRIBE` answered, in each group's log order,
//! unless it falls more than the ring (4,096 messages or 16 MiB per group)
//! behind, or its node's replica of the group installs a snapshot; a lost
//! stretch is counted in `INFO stats` (`pubsub_messages_lost`). A group
//! this node does not replicate is read through its leader every 100 ms.
//!
//! `PUBLISH` answers how many subscriptions of this node the channel
//! reaches (Redis Cluster likewise counts only its own node's), and
//! `PUBSUB CHANNELS | NUMSUB | NUMPAT` report this node's. Each client
//! executor keeps the node's subscription counts: a change is applied
//! locally and sent to the node's other executors as a message ([`Delta`],
//! see [`link`]), so answering never waits on another thread.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flotilla::{GroupId, HostError, ReadConsistency};
use flotilla_rsm::{KvQuery, KvResult};
use futures::stream::{FuturesUnordered, StreamExt};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::command::{CommandInfo, Conn, Shared};
use super::parse::{Parsed, Parser};
use super::reply::Reply;

/// The commands served here, as `COMMAND` lists them.
pub const COMMANDS: &[CommandInfo] = &[
    (
        "publish",
        3,
        &["pubsub", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "subscribe",
        -2,
        &["pubsub", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    (
        "psubscribe",
        -2,
        &["pubsub", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    (
        "unsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    (
        "punsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    (
        "pubsub",
        -2,
        &["pubsub", "random", "loading", "stale"],
        0,
        0,
        0,
    ),
];

/// Most messages one ring read returns.
const READ_LIMIT: u32 = 1024;
/// How often a group whose applies cannot be waited for here (not
/// replicated on this node) is read through its leader instead.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long one wait for an apply lasts before it is renewed.
const WAIT_FOR: Duration = Duration::from_secs(10);
/// Most bytes a subscribed client may send ahead of its answers.
const PENDING_INPUT_MAX: usize = 64 << 20;
/// Replies are written once this many bytes are ready.
const WRITE_AT_BYTES: usize = 64 << 10;

thread_local! {
    /// Subscriptions of the node's clients, per channel (this executor's
    /// at once, the others' as their deltas arrive)...
    static CHANNELS: RefCell<HashMap<Bytes, usize>> = RefCell::new(HashMap::new());
    /// ...and per pattern.
    static PATTERNS: RefCell<HashMap<Bytes, usize>> = RefCell::new(HashMap::new());
    /// Where this executor's changes go: the node's other executors.
    static PEERS: RefCell<Vec<flume::Sender<Delta>>> = const { RefCell::new(Vec::new()) };
}

/// A change of one executor's subscriptions, for the node's others.
#[derive(Debug, Clone)]
pub struct Delta {
    patterns: bool,
    name: Bytes,
    subscribed: bool,
}

/// Channels between a node's client executors: one inbox each.
pub struct Links(Vec<(flume::Sender<Delta>, flume::Receiver<Delta>)>);

impl Links {
    /// Inboxes for `executors` client executors.
    pub fn new(executors: usize) -> Links {
        Links((0..executors).map(|_| flume::unbounded()).collect())
    }
}

/// Joins this thread to the node's other client executors as executor
/// `index` of `links`: from now on its subscription changes reach them,
/// and theirs (received until `stop` fires) update this thread's counts.
pub async fn link(links: &Links, index: usize, stop: flume::Receiver<()>) {
    let Some((_, inbox)) = links.0.get(index) else {
        return;
    };
    set_peers(links, index);
    loop {
        let next = futures_lite::future::or(async { inbox.recv_async().await.ok() }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        match next {
            Some(d) => count(d.patterns, &d.name, d.subscribed),
            None => break,
        }
    }
    PEERS.with(|p| p.borrow_mut().clear());
}

fn registry(patterns: bool) -> &'static std::thread::LocalKey<RefCell<HashMap<Bytes, usize>>> {
    if patterns {
        &PATTERNS
    } else {
        &CHANNELS
    }
}

/// Sends this thread's subscription changes to the other executors of
/// `links` from now on.
fn set_peers(links: &Links, index: usize) {
    PEERS.with(|p| {
        *p.borrow_mut() = links
            .0
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, (tx, _))| tx.clone())
            .collect();
    });
}

/// Counts one subscription more (or less) to `name`.
fn count(patterns: bool, name: &Bytes, subscribed: bool) {
    registry(patterns).with(|r| {
        let mut r = r.borrow_mut();
        if subscribed {
            *r.entry(name.clone()).or_insert(0) += 1;
        } else if let Some(n) = r.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                r.remove(name);
            }
        }
    });
}

/// A subscription of this executor: counted here and on the others.
fn register(patterns: bool, name: &Bytes) {
    change(patterns, name, true);
}

fn unregister(patterns: bool, name: &Bytes) {
    change(patterns, name, false);
}

fn change(patterns: bool, name: &Bytes, subscribed: bool) {
    count(patterns, name, subscribed);
    PEERS.with(|p| {
        for tx in p.borrow().iter() {
            let _ = tx.send(Delta {
                patterns,
                name: name.clone(),
                subscribed,
            });
        }
    });
}

/// Subscriptions of this node that a message on `channel` reaches (one
/// per matching channel or pattern subscription, as Redis counts).
pub fn receivers(channel: &[u8]) -> i64 {
    let direct = CHANNELS.with(|r| r.borrow().get(channel).copied().unwrap_or(0));
    let patterns = PATTERNS.with(|r| {
        r.borrow()
            .iter()
            .filter(|(p, _)| super::glob::matches(p, channel))
            .map(|(_, n)| *n)
            .sum::<usize>()
    });
    (direct + patterns) as i64
}

/// A subscription command, run by [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SUBSCRIBE` (`patterns`: `PSUBSCRIBE`) these names.
    Subscribe {
        /// Patterns, not channels.
        patterns: bool,
        /// At least one.
        names: Vec<Bytes>,
    },
    /// `UNSUBSCRIBE` (`PUNSUBSCRIBE`) these names, or all if none.
    Unsubscribe {
        /// Patterns, not channels.
        patterns: bool,
        /// Empty: every one.
        names: Vec<Bytes>,
    },
}

/// Where a subscriber is in one group's messages.
#[derive(Debug)]
struct Cursor {
    /// Messages up to this log index were delivered or predate the
    /// subscription; `None` until known (the first read failed).
    through: Option<u64>,
    /// The applied index to wait past.
    applied: u64,
    /// Applies of this group can be waited for on this node.
    waitable: bool,
    /// A wait for this group is pending.
    waiting: bool,
    /// Tells this cursor's waits from a removed one's.
    generation: u64,
    /// Last read through the leader (not waitable, or not yet known).
    last_poll: Instant,
}

/// A connection's subscriptions; dropping it unregisters them.
#[derive(Debug, Default)]
pub struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    cursors: HashMap<GroupId, Cursor>,
    generations: u64,
}

impl Subscriptions {
    /// Channels subscribed to.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Patterns subscribed to.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    fn names(&mut self, patterns: bool) -> &mut HashSet<Bytes> {
        if patterns {
            &mut self.patterns
        } else {
            &mut self.channels
        }
    }

    /// The groups whose messages the subscriptions need.
    fn groups(&self, conn_groups: &dyn Fn(&[u8]) -> GroupId, all: &[GroupId]) -> Vec<GroupId> {
        if !self.patterns.is_empty() {
            return all.to_vec();
        }
        let mut out: Vec<GroupId> = self.channels.iter().map(|c| conn_groups(c)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Appends the replies a message on `channel` makes for this client.
    fn deliver(&self, channel: &Bytes, message: &Bytes, out: &mut BytesMut, resp3: bool) -> bool {
        let mut any = false;
        if self.channels.contains(channel) {
            super::reply::encode_push(out, resp3, &[b"message", channel, message]);
            any = true;
        }
        for p in &self.patterns {
            if super::glob::matches(p, channel) {
                super::reply::encode_push(out, resp3, &[b"pmessage", p, channel, message]);
                any = true;
            }
        }
        any
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for c in &self.channels {
            unregister(false, c);
        }
        for p in &self.patterns {
            unregister(true, p);
        }
    }
}

/// The parsed form of the commands served here (`None`: not one of them).
pub fn parse(name: &str, args: &[Bytes]) -> Option<Result<Change, Reply>> {
    let patterns = name.starts_with('P');
    Some(match name {
        "SUBSCRIBE" | "PSUBSCRIBE" if args.is_empty() => Err(arity(name)),
        "SUBSCRIBE" | "PSUBSCRIBE" => Ok(Change::Subscribe {
            patterns,
            names: args.to_vec(),
        }),
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" => Ok(Change::Unsubscribe {
            patterns,
            names: args.to_vec(),
        }),
        _ => return None,
    })
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// `PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT`, from this
/// node's subscriptions.
pub fn pubsub(args: &[Bytes]) -> Reply {
    let sub = args
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    match (sub.as_deref(), &args[1.min(args.len())..]) {
        (Some("CHANNELS"), rest) if rest.len() <= 1 => {
            let mut names: Vec<Bytes> = CHANNELS.with(|r| {
                r.borrow()
                    .keys()
                    .filter(|c| rest.first().is_none_or(|p| super::glob::matches(p, c)))
                    .cloned()
                    .collect()
            });
            names.sort_unstable();
            Reply::Array(names.into_iter().map(Reply::Bulk).collect())
        }
        (Some("NUMSUB"), rest) => Reply::Array(
            rest.iter()
                .flat_map(|c| {
                    let n = CHANNELS.with(|r| r.borrow().get(c).copied().unwrap_or(0));
                    [Reply::Bulk(c.clone()), Reply::Int(n as i64)]
                })
                .collect(),
        ),
        (Some("NUMPAT"), []) => Reply::Int(PATTERNS.with(|r| r.borrow().len()) as i64),
        (Some("HELP"), []) => Reply::Array(
            [
                "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CHANNELS [<pattern>]",
                "    Return the currently active channels matching a <pattern> (default: '*').",
                "NUMPAT",
                "    Return number of subscriptions to patterns.",
                "NUMSUB [<channel> ...]",
                "    Return the number of subscribers for the specified channels.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.into()))
            .collect(),
        ),
        (Some(s), _) => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            s.to_ascii_lowercase()
        )),
        (None, _) => arity("PUBSUB"),
    }
}

/// Runs a subscription change; its replies (one per name, as Redis).
/// A new subscription's groups learn where their new messages start
/// before this returns, so everything published after the reply reaches
/// the client.
pub async fn apply(change: Change, conn: &mut Conn, shared: &Shared) -> Reply {
    let mut replies = Vec::new();
    let subs = conn.pubsub.get_or_insert_with(Box::default);
    match change {
        Change::Subscribe { patterns, names } => {
            let kind = if patterns { "psubscribe" } else { "subscribe" };
            for name in names {
                if subs.names(patterns).insert(name.clone()) {
                    register(patterns, &name);
                }
                replies.push(Reply::Push(vec![
                    Reply::text(kind),
                    Reply::Bulk(name),
                    Reply::Int(subs.count()),
                ]));
            }
        }
        Change::Unsubscribe { patterns, names } => {
            let kind = if patterns {
                "punsubscribe"
            } else {
                "unsubscribe"
            };
            let names = if names.is_empty() {
                let mut all: Vec<Bytes> = subs.names(patterns).iter().cloned().collect();
                all.sort_unstable();
                all
            } else {
                names
            };
            if names.is_empty() {
                replies.push(Reply::Push(vec![
                    Reply::text(kind),
                    Reply::Nil,
                    Reply::Int(subs.count()),
                ]));
            }
            for name in names {
                if subs.names(patterns).remove(&name) {
                    unregister(patterns, &name);
                }
                replies.push(Reply::Push(vec![
                    Reply::text(kind),
                    Reply::Bulk(name),
                    Reply::Int(subs.count()),
                ]));
            }
        }
    }
    // The groups to follow now: new ones start where their messages end.
    let kv = conn.kv.clone();
    let wanted = subs.groups(&|c| kv.group_for(c), &shared.kv_groups);
    subs.cursors.retain(|g, _| wanted.contains(g));
    let mut fresh = Vec::new();
    for g in wanted {
        if let std::collections::hash_map::Entry::Vacant(e) = subs.cursors.entry(g) {
            subs.generations += 1;
            e.insert(Cursor {
                through: None,
                applied: 0,
                waitable: true,
                waiting: false,
                generation: subs.generations,
                last_poll: Instant::now(),
            });
            fresh.push(g);
        }
    }
    let starts = futures::future::join_all(fresh.iter().map(|g| start(&kv, *g))).await;
    for (g, through) in fresh.into_iter().zip(starts) {
        if let Some(c) = subs.cursors.get_mut(&g) {
            c.through = through;
        }
    }
    if subs.count() == 0 {
        conn.pubsub = None;
    }
    Reply::Many(replies)
}

/// Where `group`'s new messages will start: the index its leader applied
/// (this node's replica if the leader cannot be reached).
async fn start(kv: &flotilla::kv::KvClient, group: GroupId) -> Option<u64> {
    let q = KvQuery::Messages {
        after: u64::MAX,
        limit: 0,
    };
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
        let mut kv = kv.clone();
        kv.consistency = consistency;
        if let Ok(KvResult::Messages { through, .. }) = kv.query(group, &q).await {
            return Some(through);
        }
    }
    None
}

/// What a subscribed connection's wait ended with.
enum Woke {
    Input(std::io::Result<usize>),
    Stop,
    /// A group's wait: (group, generation, applied index or error).
    Applied(GroupId, u64, Result<u64, HostError>),
    Timer,
}

/// How [`serve`] ended.
pub enum Left {
    /// Every subscription is gone: the connection goes on as usual with
    /// what is left in its buffer.
    Normal,
    /// Close the connection (QUIT, the client left, a broken frame, the
    /// node stops).
    Close,
}

type Wait = Pin<Box<dyn Future<Output = (GroupId, u64, Result<u64, HostError>)>>>;

/// Serves a connection in subscribed mode: commands it sends (only the
/// subscription commands, `PING`, `QUIT` and `RESET` are allowed, as in
/// Redis' RESP2) and the messages of its subscriptions, until it has none.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    parser: &mut Parser,
    conn: &mut Conn,
    shared: &Shared,
    stop: &flume::Receiver<()>,
    out: &mut BytesMut,
) -> Left {
    let mut waits: FuturesUnordered<Wait> = FuturesUnordered::new();
    let mut scratch = vec![0u8; 16 << 10];
    loop {
        // Commands first, in order.
        loop {
            if conn.pubsub.is_none() {
                break;
            }
            match parser.next(buf) {
                Parsed::Command(argv) if conn.resp3 && !subscribed_mode_command(&argv[0]) => {
                    // RESP3 (as Redis 7): any command runs in subscribed
                    // mode, its reply in line with the pushes.
                    if run_normally(argv, stream, buf, conn, shared, stop, out).await {
                        let _ = stream.write_all(out).await;
                        out.clear();
                        return Left::Close;
                    }
                }
                Parsed::Command(argv) => {
                    if let Some(left) = command(argv, conn, shared, out).await {
                        let _ = stream.write_all(out).await;
                        out.clear();
                        return left;
                    }
                }
                Parsed::Rejected(m) => Reply::Error(m).encode_as(out, conn.resp3),
                Parsed::Broken(m) => {
                    Reply::err(m).encode_as(out, conn.resp3);
                    let _ = stream.write_all(out).await;
                    out.clear();
                    return Left::Close;
                }
                Parsed::Incomplete => break,
            }
        }
        let Some(subs) = conn.pubsub.as_mut() else {
            if !out.is_empty() && stream.write_all(out).await.is_err() {
                return Left::Close;
            }
            out.clear();
            return Left::Normal;
        };
        // Start a wait for every group that has none.
        for (g, c) in subs.cursors.iter_mut() {
            if c.waitable && !c.waiting && c.through.is_some() {
                c.waiting = true;
                let (host, group, after, generation) =
                    (shared.host.clone(), *g, c.applied, c.generation);
                waits.push(Box::pin(async move {
                    (
                        group,
                        generation,
                        host.wait_applied(group, after, WAIT_FOR).await,
                    )
                }));
            }
        }
        if !out.is_empty() {
            if stream.write_all(out).await.is_err() {
                return Left::Close;
            }
            out.clear();
        }
        let polled = subs
            .cursors
            .values()
            .any(|c| !c.waitable || c.through.is_none());
        let nap = if polled { POLL_EVERY } else { WAIT_FOR };
        let woke = futures_lite::future::or(
            async { Woke::Input(stream.read(&mut scratch).await) },
            futures_lite::future::or(
                async {
                    let _ = stop.recv_async().await;
                    Woke::Stop
                },
                futures_lite::future::or(
                    async {
                        match waits.next().await {
                            Some((g, generation, r)) => Woke::Applied(g, generation, r),
                            None => futures_lite::future::pending().await,
                        }
                    },
                    async {
                        glommio::timer::sleep(nap).await;
                        Woke::Timer
                    },
                ),
            ),
        )
        .await;
        match woke {
            Woke::Input(Ok(n)) if n > 0 => {
                if buf.len() + n > PENDING_INPUT_MAX {
                    return Left::Close;
                }
                buf.extend_from_slice(&scratch[..n]);
            }
            Woke::Input(_) | Woke::Stop => return Left::Close,
            Woke::Applied(g, generation, result) => {
                let Some(c) = conn
                    .pubsub
                    .as_mut()
                    .and_then(|s| s.cursors.get_mut(&g))
                    .filter(|c| c.generation == generation)
                else {
                    continue; // unsubscribed meanwhile
                };
                c.waiting = false;
                match result {
                    Ok(applied) => {
                        c.applied = applied;
                        read(g, ReadConsistency::Stale, conn, shared, stream, out).await;
                    }
                    Err(HostError::Timeout(_)) => {}
                    Err(e) => {
                        tracing::debug!(group = g.0, error = %e, "pubsub: cannot wait for applies here: reading through the leader");
                        c.waitable = false;
                    }
                }
            }
            Woke::Timer => {
                let kv = conn.kv.clone();
                let due: Vec<(GroupId, bool)> = conn.pubsub.as_ref().map_or(Vec::new(), |s| {
                    s.cursors
                        .iter()
                        .filter(|(_, c)| {
                            (!c.waitable || c.through.is_none())
                                && c.last_poll.elapsed() >= POLL_EVERY
                        })
                        .map(|(g, c)| (*g, c.through.is_none()))
                        .collect()
                });
                for (g, unknown) in due {
                    if unknown {
                        let through = start(&kv, g).await;
                        if let Some(c) = conn.pubsub.as_mut().and_then(|s| s.cursors.get_mut(&g)) {
                            c.through = through;
                            c.last_poll = Instant::now();
                        }
                    } else {
                        read(g, ReadConsistency::Linearizable, conn, shared, stream, out).await;
                        if let Some(c) = conn.pubsub.as_mut().and_then(|s| s.cursors.get_mut(&g)) {
                            c.last_poll = Instant::now();
                        }
                    }
                }
            }
        }
    }
}

/// Reads `group`'s new messages and turns them into replies in `out`
/// (written as they pile up).
async fn read(
    group: GroupId,
    consistency: ReadConsistency,
    conn: &mut Conn,
    shared: &Shared,
    stream: &mut TcpStream,
    out: &mut BytesMut,
) {
    let mut kv = conn.kv.clone();
    kv.consistency = consistency;
    loop {
        let Some(after) = conn
            .pubsub
            .as_ref()
            .and_then(|s| s.cursors.get(&group))
            .and_then(|c| c.through)
        else {
            return;
        };
        let q = KvQuery::Messages {
            after,
            limit: READ_LIMIT,
        };
        let (through, evicted, messages) = match kv.query(group, &q).await {
            Ok(KvResult::Messages {
                through,
                evicted,
                messages,
            }) => (through, evicted, messages),
            Ok(other) => {
                tracing::warn!(group = group.0, result = ?other, "pubsub: unexpected ring read result");
                return;
            }
            Err(e) => {
                tracing::debug!(group = group.0, error = %e, "pubsub: ring read failed");
                return;
            }
        };
        let resp3 = conn.resp3;
        let Some(subs) = conn.pubsub.as_mut() else {
            return;
        };
        if evicted > after {
            shared.pubsub_messages_lost.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                group = group.0,
                after,
                evicted,
                "pubsub: a subscriber fell behind the ring: messages lost"
            );
        }
        let mut delivered = 0u64;
        for (index, channel, message) in &messages {
            debug_assert!(*index > after, "the ring reads after the cursor");
            if subs.deliver(channel, message, out, resp3) {
                delivered += 1;
            }
        }
        shared
            .pubsub_messages_delivered
            .fetch_add(delivered, Ordering::Relaxed);
        if let Some(c) = subs.cursors.get_mut(&group) {
            c.through = Some(through.max(after));
        }
        if out.len() >= WRITE_AT_BYTES {
            if stream.write_all(out).await.is_err() {
                return;
            }
            out.clear();
        }
        if messages.is_empty() || through <= after {
            return;
        }
    }
}

/// The commands RESP2 allows in subscribed mode (RESP3 allows every
/// command; these keep their subscribed-mode meaning there too).
fn subscribed_mode_command(name: &[u8]) -> bool {
    [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "PING",
        "QUIT",
        "RESET",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Runs one command as outside subscribed mode (RESP3); its reply goes to
/// `out`. True if the connection must close (QUIT-like, or the client left
/// while it blocked).
async fn run_normally(
    argv: Vec<Bytes>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    conn: &mut Conn,
    shared: &Shared,
    stop: &flume::Receiver<()>,
    out: &mut BytesMut,
) -> bool {
    let mut pipeline = super::Pipeline::default();
    pipeline
        .batch
        .push(super::command::prepare(argv, conn, shared));
    let mut client = super::blocking::Client {
        stream,
        input: buf,
        stop,
    };
    let quit = super::execute(&mut pipeline, conn, shared, out, &mut client).await;
    shared.commands_processed.fetch_add(1, Ordering::Relaxed);
    quit
}

/// One command in subscribed mode; `Some` if the mode ends with it.
async fn command(
    argv: Vec<Bytes>,
    conn: &mut Conn,
    shared: &Shared,
    out: &mut BytesMut,
) -> Option<Left> {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_uppercase();
    let args = &argv[1..];
    let resp3 = conn.resp3;
    let reply = match name.as_str() {
        // RESP3 answers PING as usual; RESP2 as a message-shaped array.
        "PING" if args.len() > 1 => arity("PING"),
        "PING" if resp3 => args
            .first()
            .map_or(Reply::Simple("PONG".into()), |a| Reply::Bulk(a.clone())),
        "PING" => Reply::Array(vec![
            Reply::text("pong"),
            Reply::Bulk(args.first().cloned().unwrap_or_default()),
        ]),
        "QUIT" => {
            Reply::Ok.encode_as(out, resp3);
            return Some(Left::Close);
        }
        "RESET" => {
            conn.reset(shared);
            Reply::Simple("RESET".into()).encode_as(out, resp3);
            return Some(Left::Normal);
        }
        _ => match parse(&name, args) {
            Some(Ok(change)) => apply(change, conn, shared).await,
            Some(Err(reply)) => reply,
            None => Reply::err(format!(
                "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                name.to_ascii_lowercase()
            )),
        },
    };
    reply.encode_as(out, resp3);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn counts_receivers_by_channel_and_pattern() {
        let before = receivers(b"news.1");
        register(false, &b("news.1"));
        register(false, &b("news.1"));
        register(true, &b("news.*"));
        register(true, &b("sport.*"));
        assert_eq!(receivers(b"news.1") - before, 3);
        assert_eq!(receivers(b"sport.x"), 1);
        match pubsub(&[b("NUMSUB"), b("news.1"), b("none")]) {
            Reply::Array(items) => assert_eq!(
                items,
                vec![
                    Reply::Bulk(b("news.1")),
                    Reply::Int(2),
                    Reply::Bulk(b("none")),
                    Reply::Int(0)
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pubsub(&[b("CHANNELS"), b("news*")]),
            Reply::Array(vec![Reply::Bulk(b("news.1"))])
        );
        unregister(false, &b("news.1"));
        unregister(false, &b("news.1"));
        unregister(true, &b("news.*"));
        unregister(true, &b("sport.*"));
        assert_eq!(receivers(b"news.1"), before);
        assert_eq!(pubsub(&[b("NUMPAT")]), Reply::Int(0));
        assert!(matches!(pubsub(&[b("NOPE")]), Reply::Error(_)));
    }

    #[test]
    fn delivers_to_channels_and_patterns_and_unregisters_on_drop() {
        let mut s = Subscriptions::default();
        for (p, n) in [(false, "a"), (true, "a*"), (true, "*z")] {
            s.names(p).insert(b(n));
            register(p, &b(n));
        }
        let mut out = BytesMut::new();
        assert!(s.deliver(&b("a"), &b("m"), &mut out, false));
        assert_eq!(
            &out[..],
            &b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$1\r\na\r\n$1\r\nm\r\n"[..]
        );
        out.clear();
        assert!(!s.deliver(&b("b"), &b("m"), &mut out, false));
        assert!(out.is_empty());
        assert!(s.deliver(&b("a"), &b("m"), &mut out, true));
        assert!(out.starts_with(b">3\r\n$7\r\nmessage\r\n"));
        out.clear();
        assert_eq!(receivers(b"az"), 2);
        drop(s);
        assert_eq!(receivers(b"az"), 0);
    }

    #[test]
    fn changes_reach_the_other_executors() {
        let links = Links::new(3);
        set_peers(&links, 0);
        register(false, &b("news"));
        register(true, &b("n*"));
        register(false, &b("news"));
        unregister(false, &b("news"));
        // Executors 1 and 2 (threads of their own) apply what arrived.
        for peer in 1..3 {
            let inbox = links.0[peer].1.clone();
            let seen = std::thread::spawn(move || {
                for d in inbox.try_iter() {
                    count(d.patterns, &d.name, d.subscribed);
                }
                (
                    receivers(b"news"),
                    pubsub(&[b("NUMPAT")]),
                    pubsub(&[b("CHANNELS")]),
                )
            })
            .join()
            .unwrap();
            assert_eq!(
                seen,
                (2, Reply::Int(1), Reply::Array(vec![Reply::Bulk(b("news"))])),
                "executor {peer}"
            );
        }
        assert!(links.0[0].1.is_empty(), "nothing sent to itself");
        assert_eq!(receivers(b"news"), 2);
        unregister(false, &b("news"));
        unregister(true, &b("n*"));
        PEERS.with(|p| p.borrow_mut().clear());
    }

    #[test]
    fn parses_subscription_commands() {
        assert_eq!(
            parse("SUBSCRIBE", &[b("a"), b("b")]),
            Some(Ok(Change::Subscribe {
                patterns: false,
                names: vec![b("a"), b("b")]
            }))
        );
        assert_eq!(
            parse("PUNSUBSCRIBE", &[]),
            Some(Ok(Change::Unsubscribe {
                patterns: true,
                names: vec![]
            }))
        );
        assert!(matches!(parse("PSUBSCRIBE", &[]), Some(Err(_))));
        assert_eq!(parse("PUBLISH", &[]), None);
    }
}
