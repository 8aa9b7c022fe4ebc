//! Redis commands: parse an argument vector into a plan of KV requests per
//! group, run a pipeline's plans concurrently, and turn results into
//! replies.
//!
//! ```text
//!  pipeline of commands ─► prepare() each, in order (connection state
//!                           changes like CLIENT SETNAME apply in order)
//!        │  Plan { subs: [(group, Write(KvCommand) | Read(KvQuery))], finish }
//!        ▼
//!  run_wave(): every sub of every plan issued at once, in order
//!        (a read of a group that the same wave writes goes through the log
//!         as KvCommand::Read, so it is ordered with the writes: a pipeline
//!         keeps Redis' in-order semantics per group)
//!        ▼
//!  finish() each plan with its results ─► replies, in command order
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::kv::KvClient;
use flotilla::{GroupId, HostError, NodeHost, ReadConsistency, RequestError, Role};
use flotilla_rsm::kv::{prefix_end, KEYS_PER_COMMAND_MAX, KEY_BYTES_MAX};
use flotilla_rsm::{
    DeadlineChange, ExpireCondition, KvCommand, KvError, KvQuery, KvResult, PutCondition,
    TypedQuery, DEADLINE_MS_MAX,
};

use super::glob;
use super::multi;
use super::reply::Reply;
use super::types;

/// What every connection of a node shares (`Send + Sync`: one per node,
/// used by every client executor).
pub struct Shared {
    /// The node.
    pub host: Arc<NodeHost>,
    /// The KV groups, in routing order.
    pub kv_groups: Vec<GroupId>,
    /// Largest argument a client may send.
    pub max_value_bytes: usize,
    /// Deadline of one request (retries included).
    pub request_timeout: Duration,
    /// Default read consistency.
    pub read_consistency: ReadConsistency,
    /// Most concurrent connections.
    pub max_clients: usize,
    /// Where the RESP server listens.
    pub resp_addr: std::net::SocketAddr,
    /// When the node started.
    pub started: Instant,
    /// Connections open now.
    pub clients_connected: AtomicUsize,
    /// Connections accepted since start.
    pub clients_accepted: AtomicU64,
    /// Commands answered since start.
    pub commands_processed: AtomicU64,
    /// Connections waiting in a blocking command (BLPOP...).
    pub clients_blocked: AtomicUsize,
    /// Looks of blocked connections at their keys' lengths since start
    /// (one per change of a key's group, and one a second).
    pub blocking_looks: AtomicU64,
    /// Published messages sent to subscribers since start (one per
    /// receiving subscription).
    pub pubsub_messages_delivered: AtomicU64,
    /// Times a subscriber fell behind its group's message ring and missed
    /// messages.
    pub pubsub_messages_lost: AtomicU64,
    /// Scripts (`EVAL`...) answered, and how many of their runs were
    /// thrown away because a key changed before their batch applied, or
    /// stopped by the time limit (see `script.rs`).
    pub scripts: super::script::ScriptCounters,
    /// How the node's client executors tell each other their pub/sub
    /// subscriptions (see `pubsub::link`).
    pub pubsub_links: super::pubsub::Links,
    /// Unix seconds of the last SAVE / BGSAVE that finished (LASTSAVE);
    /// the start of the node until then. Shared with BGSAVE's task.
    pub last_save_secs: Arc<AtomicU64>,
    next_client_id: AtomicU64,
    /// This node's id among the process's nodes for script queries (see
    /// `script.rs`).
    pub script_env: u64,
    /// Per KV group (routing order): a command of this node gave a key a
    /// deadline since the expiry task last looked (see `expiry.rs`).
    expiry_hints: Vec<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// State for a node serving the KV store on `kv_groups`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: Arc<NodeHost>,
        kv_groups: Vec<GroupId>,
        max_value_bytes: usize,
        request_timeout: Duration,
        read_consistency: ReadConsistency,
        max_clients: usize,
        resp_addr: std::net::SocketAddr,
    ) -> Shared {
        assert!(!kv_groups.is_empty(), "at least one KV group");
        Shared {
            host,
            max_value_bytes,
            request_timeout,
            read_consistency,
            max_clients,
            resp_addr,
            started: Instant::now(),
            clients_connected: AtomicUsize::new(0),
            clients_accepted: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            clients_blocked: AtomicUsize::new(0),
            blocking_looks: AtomicU64::new(0),
            pubsub_messages_delivered: AtomicU64::new(0),
            pubsub_messages_lost: AtomicU64::new(0),
            scripts: Default::default(),
            pubsub_links: super::pubsub::Links::new(0),
            last_save_secs: Arc::new(AtomicU64::new(crate::expiry::unix_ms() / 1000)),
            next_client_id: AtomicU64::new(1),
            script_env: super::script::next_env(),
            expiry_hints: kv_groups
                .iter()
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            kv_groups,
        }
    }

    /// Notes that a command of this node gave a key of `group` a deadline.
    fn hint_expiry(&self, group: GroupId) {
        if let Some(i) = self.kv_groups.iter().position(|g| *g == group) {
            self.expiry_hints[i].store(true, Ordering::Relaxed);
        }
    }

    /// Takes the hint of the KV group at `index` (routing order).
    pub fn take_expiry_hint(&self, index: usize) -> bool {
        self.expiry_hints[index].swap(false, Ordering::Relaxed)
    }
}

/// SCAN cursors a connection remembers (the oldest is forgotten).
const CURSORS_MAX: usize = 64;
/// Largest SCAN COUNT.
const SCAN_COUNT_MAX: u32 = 10_000;
/// KEYS refuses to return more keys than this.
const KEYS_RESULT_MAX: usize = 1_000_000;

/// One connection's state.
pub struct Conn {
    /// Client id (CLIENT ID).
    pub id: u64,
    name: Option<Bytes>,
    pub(super) kv: KvClient,
    /// The transaction being queued (after `MULTI`).
    pub(super) multi: Option<multi::Multi>,
    /// Keys `WATCH`ed for the next `EXEC`.
    pub(super) watched: Vec<multi::Watched>,
    cursors: VecDeque<(u64, Bytes)>,
    next_cursor: u64,
    /// Seeds SPOP / SRANDMEMBER picks (a SplitMix64 state).
    seed: u64,
    /// Peer address, for CLIENT INFO.
    pub peer: String,
    /// Channels and patterns subscribed to (`None`: not in subscribed
    /// mode).
    pub(super) pubsub: Option<Box<super::pubsub::Subscriptions>>,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
}

impl Conn {
    /// A new connection of `shared`'s node.
    pub fn new(shared: &Shared, peer: String) -> Conn {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        Conn::with_id(shared, peer, id)
    }

    /// The connection a Lua script's commands are prepared on: client id
    /// 0 (it takes none from the node's clients).
    pub(super) fn for_script(shared: &Shared, seed: u64) -> Conn {
        let mut conn = Conn::with_id(shared, "lua".into(), 0);
        conn.seed = seed;
        conn
    }

    fn with_id(shared: &Shared, peer: String, id: u64) -> Conn {
        let mut kv = KvClient::new(shared.host.clone(), shared.kv_groups.clone())
            .expect("at least one KV group");
        kv.timeout = shared.request_timeout;
        kv.consistency = shared.read_consistency;
        Conn {
            id,
            name: None,
            kv,
            multi: None,
            watched: Vec::new(),
            cursors: VecDeque::new(),
            next_cursor: 1,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ (peer_hash(&peer) << 1),
            peer,
            pubsub: None,
            resp3: false,
        }
    }

    /// `RESET`: the state of a new connection (no transaction, nothing
    /// watched, no subscription, no name, the node's read consistency).
    pub(super) fn reset(&mut self, shared: &Shared) {
        self.multi = None;
        self.watched.clear();
        self.pubsub = None;
        self.name = None;
        self.cursors.clear();
        self.kv.consistency = shared.read_consistency;
        self.resp3 = false;
    }
}

/// A KV request to one group.
#[derive(Debug, Clone)]
pub enum Op {
    /// Through the log.
    Write(KvCommand),
    /// A query with the connection's consistency.
    Read(KvQuery),
}

/// One request of a plan.
#[derive(Debug, Clone)]
pub struct Sub {
    pub(super) group: GroupId,
    pub(super) op: Op,
}

/// How a plan's results become its reply.
#[derive(Debug)]
enum Finish {
    Get,
    /// PUBLISH: how many subscriptions here the channel reaches.
    Published(Bytes),
    Set {
        get: bool,
    },
    SetNx,
    GetSet,
    SumCount,
    Int,
    Len,
    Strlen,
    Type,
    /// For each key in request order: (sub index, position in its result).
    MGet(Vec<(usize, usize)>),
    AllOk,
    Scan {
        count: usize,
        pattern: Option<Bytes>,
    },
    /// SCAN with TYPE: each group examined `count` keys and returned those
    /// of the type; the scan goes on from the smallest key a group has not
    /// examined.
    ScanTyped {
        pattern: Option<Bytes>,
    },
    /// A data-type command (types.rs).
    Typed(super::types::Finish),
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME from a key's deadline.
    Ttl {
        millis: bool,
        absolute: bool,
    },
    /// WATCH: remember each key's digest (one sub per key, in order).
    Watch(Vec<Bytes>),
    /// GETRANGE: a slice of the value, Redis' index rules.
    GetRange {
        start: i64,
        end: i64,
    },
    /// RENAME: `OK`.
    Renamed,
    /// MSETNX: 1 if the batch ran, 0 if a key existed.
    SetAll,
    /// A command of `extras.rs`.
    Extra(super::extras::Finish),
    Geo(super::geo::Finish),
}

/// What a command needs.
#[derive(Debug)]
pub enum Prepared {
    /// Answered at once.
    Reply(Reply),
    /// KV requests.
    Plan(Vec<Sub>, FinishBox),
    /// INFO [section].
    Info(Option<String>),
    /// KEYS pattern.
    Keys(Bytes),
    /// QUIT: answer OK and close.
    Quit,
    /// EXEC of a queued transaction.
    Exec(multi::Transaction),
    /// Forget the watched keys (in pipeline order), then answer this.
    Unwatch(Reply),
    /// A blocking pop (BLPOP...): waits for an element or its timeout.
    Block(super::blocking::Blocking),
    /// WAIT: how many replicas hold the connection's writes.
    Wait,
    /// SAVE / BGSAVE: snapshot every KV group's replica on this node.
    Save {
        /// BGSAVE: answer at once, snapshot in the background.
        background: bool,
    },
    /// SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE.
    PubSub(super::pubsub::Change),
    /// XREAD (may block).
    XRead(super::xread::XRead),
    /// EVAL and its kin: a Lua script.
    Script(super::script::Eval),
}

/// Opaque finisher of a plan.
#[derive(Debug)]
pub struct FinishBox(Finish);

fn plan(subs: Vec<Sub>, f: Finish) -> Prepared {
    Prepared::Plan(subs, FinishBox(f))
}

/// The plan of `WATCH keys`: `subs` read each key's digest, in order.
pub(super) fn plan_watch(subs: Vec<Sub>, keys: Vec<Bytes>) -> Prepared {
    debug_assert_eq!(subs.len(), keys.len());
    plan(subs, Finish::Watch(keys))
}

fn syntax() -> Prepared {
    Prepared::Reply(Reply::err("syntax error"))
}

fn arity(name: &str) -> Prepared {
    Prepared::Reply(Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn key_ok(k: &[u8]) -> bool {
    k.len() <= KEY_BYTES_MAX
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Longest command name [`upper_on_stack`] handles (every known command).
const NAME_ON_STACK_BYTES_MAX: usize = 32;

/// What [`upper`] gives, in `out` (no allocation per command); `None` for
/// a name that is long or not ASCII.
fn upper_on_stack<'a>(b: &[u8], out: &'a mut [u8; NAME_ON_STACK_BYTES_MAX]) -> Option<&'a str> {
    if b.len() > out.len() || !b.is_ascii() {
        return None;
    }
    let out = &mut out[..b.len()];
    out.copy_from_slice(b);
    out.make_ascii_uppercase();
    std::str::from_utf8(out).ok()
}

/// A command's name, arity, flags, first key, last key, key step (the
/// fields of a COMMAND reply).
pub type CommandInfo = (&'static str, i64, &'static [&'static str], i64, i64, i64);

/// Whether `args` arguments after the name fit `info`'s arity (Redis'
/// convention: exactly `n`, or at least `-n` when negative, name included).
pub fn arity_ok(info: &CommandInfo, args: usize) -> bool {
    let n = args as i64 + 1;
    if info.1 >= 0 {
        n == info.1
    } else {
        n >= -info.1
    }
}

/// Commands with their arity, flags and key positions (COMMAND output).
const COMMANDS: &[CommandInfo] = &[
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("eval", -3, &["noscript", "movablekeys"], 0, 0, 0),
    ("evalsha", -3, &["noscript", "movablekeys"], 0, 0, 0),
    (
        "eval_ro",
        -3,
        &["noscript", "readonly", "movablekeys"],
        0,
        0,
        0,
    ),
    (
        "evalsha_ro",
        -3,
        &["noscript", "readonly", "movablekeys"],
        0,
        0,
        0,
    ),
    ("script", -2, &["noscript"], 0, 0, 0),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("setex", 4, &["write", "denyoom"], 1, 1, 1),
    ("psetex", 4, &["write", "denyoom"], 1, 1, 1),
    ("expire", -3, &["write", "fast"], 1, 1, 1),
    ("pexpire", -3, &["write", "fast"], 1, 1, 1),
    ("expireat", -3, &["write", "fast"], 1, 1, 1),
    ("pexpireat", -3, &["write", "fast"], 1, 1, 1),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("expiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("pexpiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrbyfloat", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getex", -2, &["write", "fast"], 1, 1, 1),
    ("getrange", 4, &["readonly"], 1, 1, 1),
    ("substr", 4, &["readonly"], 1, 1, 1),
    ("setrange", 4, &["write", "denyoom"], 1, 1, 1),
    ("rename", 3, &["write"], 1, 2, 1),
    ("renamenx", 3, &["write", "fast"], 1, 2, 1),
    ("copy", -3, &["write", "denyoom"], 1, 2, 1),
    ("msetnx", -3, &["write", "denyoom"], 1, -1, 2),
    ("touch", -2, &["readonly", "fast"], 1, -1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("type", 2, &["readonly", "fast"], 1, 1, 1),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("flushall", -1, &["write"], 0, 0, 0),
    ("flushdb", -1, &["write"], 0, 0, 0),
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("time", 1, &["random", "fast"], 0, 0, 0),
    ("save", 1, &["admin", "noscript"], 0, 0, 0),
    ("bgsave", -1, &["admin", "noscript"], 0, 0, 0),
    ("lastsave", 1, &["random", "fast"], 0, 0, 0),
    (
        "role",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("client", -2, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin", "loading", "stale"], 0, 0, 0),
    ("hello", -1, &["fast", "loading", "stale"], 0, 0, 0),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    ("readonly", 1, &["fast"], 0, 0, 0),
    ("readwrite", 1, &["fast"], 0, 0, 0),
    ("consistency", -1, &["fast"], 0, 0, 0),
    ("quit", -1, &["fast"], 0, 0, 0),
    (
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        0,
        0,
        0,
    ),
    (
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast"],
        1,
        -1,
        1,
    ),
    (
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
];

/// Parses one command (non-empty `argv`) into what it needs. Connection
/// state commands (CLIENT SETNAME, READONLY, ...) take effect here, in
/// pipeline order.
pub fn prepare(argv: Vec<Bytes>, conn: &mut Conn, shared: &Shared) -> Prepared {
    if argv[0].eq_ignore_ascii_case(b"RESET") {
        // Ends a transaction too, so it is never queued.
        if argv.len() != 1 {
            return arity("RESET");
        }
        conn.reset(shared);
        return Prepared::Reply(Reply::Simple("RESET".into()));
    }
    if multi::is_transaction_command(&argv[0]) {
        return multi::prepare(&upper(&argv[0]), &argv[1..], conn);
    }
    let prepared = prepare_one(argv, conn, shared);
    if let Prepared::Plan(subs, _) = &prepared {
        for sub in subs {
            if let Op::Write(
                KvCommand::PutExpiring {
                    expire_at_ms: Some(_),
                    ..
                }
                | KvCommand::Expire { .. }
                | KvCommand::GetExpiring {
                    deadline: DeadlineChange::At(_),
                    ..
                },
            ) = &sub.op
            {
                shared.hint_expiry(sub.group);
            }
        }
    }
    if conn.multi.is_some() {
        return multi::queue(prepared, conn);
    }
    prepared
}

fn prepare_one(argv: Vec<Bytes>, conn: &mut Conn, shared: &Shared) -> Prepared {
    debug_assert!(!argv.is_empty());
    let mut name_bytes = [0u8; NAME_ON_STACK_BYTES_MAX];
    let long_name;
    let name: &str = match upper_on_stack(&argv[0], &mut name_bytes) {
        Some(name) => name,
        None => {
            long_name = upper(&argv[0]);
            &long_name
        }
    };
    let args = &argv[1..];
    let kv = &conn.kv;
    let one = |cmd: KvCommand, key: &Bytes| Sub {
        group: kv.group_for(key),
        op: Op::Write(cmd),
    };
    match name {
        "GET" | "STRLEN" | "TYPE" => {
            if args.len() != 1 {
                return arity(name);
            }
            let key = args[0].clone();
            let (op, f) = match name {
                "GET" => (Op::Read(KvQuery::Get { key: key.clone() }), Finish::Get),
                "STRLEN" => (Op::Read(KvQuery::Get { key: key.clone() }), Finish::Strlen),
                _ => (
                    Op::Read(KvQuery::Typed(TypedQuery::Type { key: key.clone() })),
                    Finish::Type,
                ),
            };
            let sub = Sub {
                group: kv.group_for(&key),
                op,
            };
            plan(vec![sub], f)
        }
        "SET" => prepare_set(args, conn),
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" => {
            super::script::prepare_eval(name, args, conn)
        }
        "SCRIPT" => Prepared::Reply(super::script::prepare_script(args)),
        "SETNX" | "GETSET" => {
            if args.len() != 2 {
                return arity(name);
            }
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let nx = name == "SETNX";
            let cmd = KvCommand::Put {
                key: args[0].clone(),
                value: args[1].clone(),
                condition: if nx {
                    PutCondition::IfAbsent
                } else {
                    PutCondition::Always
                },
                return_previous: !nx,
            };
            plan(
                vec![one(cmd, &args[0])],
                if nx { Finish::SetNx } else { Finish::GetSet },
            )
        }
        "SETEX" | "PSETEX" => {
            if args.len() != 3 {
                return arity(name);
            }
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let opt = if name == "SETEX" { "EX" } else { "PX" };
            let at = match set_deadline(opt, &args[1], &name.to_lowercase()) {
                Ok(at) => at,
                Err(reply) => return Prepared::Reply(reply),
            };
            let cmd = KvCommand::PutExpiring {
                key: args[0].clone(),
                value: args[2].clone(),
                condition: PutCondition::Always,
                return_previous: false,
                expire_at_ms: Some(at),
            };
            plan(vec![one(cmd, &args[0])], Finish::Set { get: false })
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => prepare_expire(name, args, conn),
        "PERSIST" => {
            if args.len() != 1 {
                return arity(name);
            }
            let cmd = KvCommand::Persist {
                key: args[0].clone(),
            };
            plan(vec![one(cmd, &args[0])], Finish::Int)
        }
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
            if args.len() != 1 {
                return arity(name);
            }
            let key = args[0].clone();
            plan(
                vec![Sub {
                    group: kv.group_for(&key),
                    op: Op::Read(KvQuery::Deadline { key }),
                }],
                Finish::Ttl {
                    millis: name.starts_with('P'),
                    absolute: name.ends_with("TIME"),
                },
            )
        }
        "GETDEL" => {
            if args.len() != 1 {
                return arity(name);
            }
            let cmd = KvCommand::Take {
                key: args[0].clone(),
            };
            plan(vec![one(cmd, &args[0])], Finish::Get)
        }
        "APPEND" => {
            if args.len() != 2 {
                return arity(name);
            }
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let cmd = KvCommand::Append {
                key: args[0].clone(),
                value: args[1].clone(),
            };
            plan(vec![one(cmd, &args[0])], Finish::Len)
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = name.ends_with("BY");
            if args.len() != if by { 2 } else { 1 } {
                return arity(name);
            }
            let delta = if by {
                match parse_i64(&args[1]) {
                    Some(d) => d,
                    None => return Prepared::Reply(not_integer()),
                }
            } else {
                1
            };
            let delta = if name.starts_with("DECR") {
                match delta.checked_neg() {
                    Some(d) => d,
                    None => {
                        return Prepared::Reply(Reply::err("decrement would overflow"));
                    }
                }
            } else {
                delta
            };
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let cmd = KvCommand::Increment {
                key: args[0].clone(),
                delta,
            };
            plan(vec![one(cmd, &args[0])], Finish::Int)
        }
        "INCRBYFLOAT" => {
            if args.len() != 2 {
                return arity(name);
            }
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let Some(delta) = std::str::from_utf8(&args[1])
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .filter(|d| !d.is_nan())
            else {
                return Prepared::Reply(Reply::err("value is not a valid float"));
            };
            if delta.is_infinite() {
                return Prepared::Reply(Reply::err("increment would produce NaN or Infinity"));
            }
            let cmd = KvCommand::IncrementFloat {
                key: args[0].clone(),
                delta,
            };
            plan(vec![one(cmd, &args[0])], Finish::Get)
        }
        "GETEX" => prepare_getex(args, conn),
        "GETRANGE" | "SUBSTR" => {
            if args.len() != 3 {
                return arity(name);
            }
            let (Some(start), Some(end)) = (parse_i64(&args[1]), parse_i64(&args[2])) else {
                return Prepared::Reply(not_integer());
            };
            let sub = Sub {
                group: kv.group_for(&args[0]),
                op: Op::Read(KvQuery::Get {
                    key: args[0].clone(),
                }),
            };
            plan(vec![sub], Finish::GetRange { start, end })
        }
        "SETRANGE" => {
            if args.len() != 3 {
                return arity(name);
            }
            if !key_ok(&args[0]) {
                return Prepared::Reply(Reply::err("key too large"));
            }
            let Some(offset) = parse_i64(&args[1]) else {
                return Prepared::Reply(not_integer());
            };
            if offset < 0 {
                return Prepared::Reply(Reply::err("offset is out of range"));
            }
            let cmd = KvCommand::SetRange {
                key: args[0].clone(),
                offset: offset as u64,
                value: args[2].clone(),
            };
            plan(vec![one(cmd, &args[0])], Finish::Len)
        }
        "RENAME" | "RENAMENX" | "COPY" => prepare_move(name, args, conn),
        "MSETNX" => {
            if args.is_empty() || args.len() % 2 != 0 {
                return arity(name);
            }
            if args.len() / 2 > KEYS_PER_COMMAND_MAX as usize {
                return Prepared::Reply(Reply::err(format!(
                    "too many keys (at most {KEYS_PER_COMMAND_MAX})"
                )));
            }
            let group = kv.group_for(&args[0]);
            let mut pairs = Vec::with_capacity(args.len() / 2);
            for pair in args.chunks(2) {
                if !key_ok(&pair[0]) {
                    return Prepared::Reply(Reply::err("key too large"));
                }
                if kv.group_for(&pair[0]) != group {
                    return Prepared::Reply(crossslot());
                }
                pairs.push((pair[0].clone(), pair[1].clone()));
            }
            // Every key absent (digest 0), then all of them set: one entry.
            let cmd = KvCommand::Batch {
                guards: pairs.iter().map(|(k, _)| (k.clone(), 0)).collect(),
                commands: vec![KvCommand::MultiPut { pairs }],
            };
            plan(
                vec![Sub {
                    group,
                    op: Op::Write(cmd),
                }],
                Finish::SetAll,
            )
        }
        "DEL" | "UNLINK" | "EXISTS" | "MGET" | "TOUCH" => {
            if args.is_empty() {
                return arity(name);
            }
            if args.len() > KEYS_PER_COMMAND_MAX as usize {
                return Prepared::Reply(Reply::err(format!(
                    "too many keys (at most {KEYS_PER_COMMAND_MAX})"
                )));
            }
            // Group the keys, keeping request order inside each group.
            let mut by_group: BTreeMap<GroupId, Vec<Bytes>> = BTreeMap::new();
            let mut slots = Vec::with_capacity(args.len());
            let mut order: Vec<GroupId> = Vec::new();
            for k in args {
                let g = kv.group_for(k);
                let list = by_group.entry(g).or_insert_with(|| {
                    order.push(g);
                    Vec::new()
                });
                slots.push((g, list.len()));
                list.push(k.clone());
            }
            let index_of = |g: GroupId| order.iter().position(|x| *x == g).unwrap_or(0);
            let subs: Vec<Sub> = order
                .iter()
                .map(|g| {
                    let keys = by_group.remove(g).unwrap_or_default();
                    let op = match name {
                        "DEL" | "UNLINK" => Op::Write(KvCommand::Delete { keys }),
                        "EXISTS" | "TOUCH" => Op::Read(KvQuery::Exists { keys }),
                        _ => Op::Read(KvQuery::MultiGet { keys }),
                    };
                    Sub { group: *g, op }
                })
                .collect();
            if name == "MGET" {
                let slots = slots.iter().map(|(g, i)| (index_of(*g), *i)).collect();
                plan(subs, Finish::MGet(slots))
            } else {
                plan(subs, Finish::SumCount)
            }
        }
        "MSET" => {
            if args.is_empty() || args.len() % 2 != 0 {
                return arity(name);
            }
            if args.len() / 2 > KEYS_PER_COMMAND_MAX as usize {
                return Prepared::Reply(Reply::err(format!(
                    "too many keys (at most {KEYS_PER_COMMAND_MAX})"
                )));
            }
            let mut by_group: BTreeMap<GroupId, Vec<(Bytes, Bytes)>> = BTreeMap::new();
            let mut order = Vec::new();
            for pair in args.chunks(2) {
                if !key_ok(&pair[0]) {
                    return Prepared::Reply(Reply::err("key too large"));
                }
                let g = kv.group_for(&pair[0]);
                by_group
                    .entry(g)
                    .or_insert_with(|| {
                        order.push(g);
                        Vec::new()
                    })
                    .push((pair[0].clone(), pair[1].clone()));
            }
            let subs = order
                .iter()
                .map(|g| Sub {
                    group: *g,
                    op: Op::Write(KvCommand::MultiPut {
                        pairs: by_group.remove(g).unwrap_or_default(),
                    }),
                })
                .collect();
            plan(subs, Finish::AllOk)
        }
        "DBSIZE" => {
            if !args.is_empty() {
                return arity(name);
            }
            let subs = shared
                .kv_groups
                .iter()
                .map(|g| Sub {
                    group: *g,
                    op: Op::Read(KvQuery::Count),
                })
                .collect();
            plan(subs, Finish::SumCount)
        }
        "FLUSHALL" | "FLUSHDB" => {
            // One database: both clear every KV group, each through its
            // log (ASYNC and SYNC are accepted; the answer comes once
            // every group applied it).
            match args {
                [] => {}
                [mode] if matches!(upper(mode).as_str(), "ASYNC" | "SYNC") => {}
                _ => return Prepared::Reply(Reply::err("syntax error")),
            }
            let subs = shared
                .kv_groups
                .iter()
                .map(|g| Sub {
                    group: *g,
                    op: Op::Write(KvCommand::Clear),
                })
                .collect();
            plan(subs, Finish::AllOk)
        }
        "SCAN" => prepare_scan(args, conn, shared),
        "KEYS" => {
            if args.len() != 1 {
                return arity(name);
            }
            Prepared::Keys(args[0].clone())
        }
        "PING" => match args.len() {
            0 => Prepared::Reply(Reply::Simple("PONG".into())),
            1 => Prepared::Reply(Reply::Bulk(args[0].clone())),
            _ => arity(name),
        },
        "SAVE" | "BGSAVE" => match (name, args) {
            ("SAVE", []) => Prepared::Save { background: false },
            ("BGSAVE", []) => Prepared::Save { background: true },
            ("BGSAVE", [s]) if s.eq_ignore_ascii_case(b"SCHEDULE") => {
                Prepared::Save { background: true }
            }
            ("BGSAVE", [_]) => syntax(),
            _ => arity(name),
        },
        "LASTSAVE" => match args {
            [] => Prepared::Reply(Reply::Int(
                shared.last_save_secs.load(Ordering::Relaxed) as i64
            )),
            _ => arity(name),
        },
        // One node of a raft cluster: every node takes writes (forwarding
        // them to each group's leader), so each answers as a master
        // without replicas of its own.
        "ROLE" => match args {
            [] => Prepared::Reply(Reply::Array(vec![
                Reply::text("master"),
                Reply::Int(0),
                Reply::Array(Vec::new()),
            ])),
            _ => arity(name),
        },
        "TIME" => match args {
            [] => {
                // This node's clock, as Redis answers: seconds, microseconds.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Prepared::Reply(Reply::Array(vec![
                    Reply::text(now.as_secs().to_string()),
                    Reply::text(now.subsec_micros().to_string()),
                ]))
            }
            _ => arity(name),
        },
        "ECHO" => match args {
            [m] => Prepared::Reply(Reply::Bulk(m.clone())),
            _ => arity(name),
        },
        "INFO" => Prepared::Info(
            args.first()
                .map(|s| String::from_utf8_lossy(s).to_lowercase()),
        ),
        "QUIT" => Prepared::Quit,
        "PUBLISH" => match args {
            [channel, message] => plan(
                vec![Sub {
                    group: kv.group_for(channel),
                    op: Op::Write(KvCommand::Publish {
                        channel: channel.clone(),
                        message: message.clone(),
                    }),
                }],
                Finish::Published(channel.clone()),
            ),
            _ => arity(name),
        },
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
            match super::pubsub::parse(name, args) {
                Some(Ok(change)) => Prepared::PubSub(change),
                Some(Err(reply)) => Prepared::Reply(reply),
                None => Prepared::Reply(Reply::err("internal error: pubsub command not found")),
            }
        }
        "PUBSUB" => Prepared::Reply(super::pubsub::pubsub(args)),
        "XREAD" => match super::xread::parse(args) {
            Ok(x) => Prepared::XRead(x),
            Err(reply) => Prepared::Reply(reply),
        },
        "SELECT" => match args {
            [db] if &db[..] == b"0" => Prepared::Reply(Reply::Ok),
            [db] if parse_i64(db).is_some() => {
                Prepared::Reply(Reply::err("DB index is out of range"))
            }
            [_] => Prepared::Reply(not_integer()),
            _ => arity(name),
        },
        "READONLY" => {
            conn.kv.consistency = ReadConsistency::Stale;
            Prepared::Reply(Reply::Ok)
        }
        "READWRITE" => {
            conn.kv.consistency = shared.read_consistency;
            Prepared::Reply(Reply::Ok)
        }
        "CONSISTENCY" => match args {
            [] => Prepared::Reply(Reply::text(consistency_name(conn.kv.consistency))),
            [mode] => {
                let c = match upper(mode).as_str() {
                    "LINEARIZABLE" => ReadConsistency::Linearizable,
                    "LEASE" => ReadConsistency::Lease,
                    "STALE" => ReadConsistency::Stale,
                    _ => {
                        return Prepared::Reply(Reply::err(
                            "consistency must be linearizable, lease or stale",
                        ))
                    }
                };
                conn.kv.consistency = c;
                Prepared::Reply(Reply::Ok)
            }
            _ => arity(name),
        },
        "HELLO" => prepare_hello(args, conn),
        "AUTH" => Prepared::Reply(Reply::err(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        )),
        "CLIENT" => prepare_client(args, conn),
        "CONFIG" => prepare_config(args, shared),
        "COMMAND" => prepare_command(args),
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP"
        | "BZMPOP" => match super::blocking::parse(name, args) {
            Some(Ok(b)) => Prepared::Block(b),
            Some(Err(reply)) => Prepared::Reply(reply),
            None => Prepared::Reply(Reply::err("internal error: blocking command not found")),
        },
        _ if types::COMMANDS
            .iter()
            .any(|c| c.0.eq_ignore_ascii_case(name)) =>
        {
            let seed = conn.next_seed();
            match types::prepare(name, args, crate::expiry::unix_ms(), seed) {
                Some(Ok(p)) => match types::group(&p, |k| conn.kv.group_for(k)) {
                    Ok(group) => plan(vec![Sub { group, op: p.op }], Finish::Typed(p.finish)),
                    Err(reply) => Prepared::Reply(reply),
                },
                Some(Err(reply)) => Prepared::Reply(reply),
                None => Prepared::Reply(Reply::err("internal error: typed command not found")),
            }
        }
        _ if super::extras::COMMANDS
            .iter()
            .any(|c| c.0.eq_ignore_ascii_case(name)) =>
        {
            let seed = conn.next_seed();
            let kv = &conn.kv;
            match super::extras::prepare(name, args, &|k| kv.group_for(k), &shared.kv_groups, seed)
            {
                Some(super::extras::Outcome::Reply(r)) => Prepared::Reply(r),
                Some(super::extras::Outcome::Plan(subs, f)) => plan(subs, Finish::Extra(f)),
                Some(super::extras::Outcome::Wait) => Prepared::Wait,
                None => Prepared::Reply(Reply::err("internal error: command not found")),
            }
        }
        _ if super::geo::COMMANDS
            .iter()
            .any(|c| c.0.eq_ignore_ascii_case(name)) =>
        {
            let kv = &conn.kv;
            match super::geo::prepare(name, args, &|k| kv.group_for(k)) {
                Some(super::geo::Outcome::Reply(r)) => Prepared::Reply(r),
                Some(super::geo::Outcome::Plan(sub, f)) => plan(vec![sub], Finish::Geo(f)),
                None => Prepared::Reply(Reply::err("internal error: command not found")),
            }
        }
        _ => {
            let shown: Vec<String> = args
                .iter()
                .take(8)
                .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(64)])))
                .collect();
            Prepared::Reply(Reply::err(format!(
                "unknown command '{}', with args beginning with: {}",
                String::from_utf8_lossy(&argv[0][..argv[0].len().min(64)]),
                shown.join(" ")
            )))
        }
    }
}

fn consistency_name(c: ReadConsistency) -> &'static str {
    match c {
        ReadConsistency::Linearizable => "linearizable",
        ReadConsistency::Lease => "lease",
        ReadConsistency::Stale => "stale",
    }
}

fn prepare_set(args: &[Bytes], conn: &Conn) -> Prepared {
    if args.len() < 2 {
        return arity("SET");
    }
    let (key, value) = (args[0].clone(), args[1].clone());
    if !key_ok(&key) {
        return Prepared::Reply(Reply::err("key too large"));
    }
    let mut condition = PutCondition::Always;
    let mut get = false;
    // None: no option (the deadline goes); Some(None): KEEPTTL.
    let mut expiry: Option<Option<u64>> = None;
    let mut i = 2;
    while i < args.len() {
        let opt = upper(&args[i]);
        match opt.as_str() {
            "NX" if condition == PutCondition::Always => condition = PutCondition::IfAbsent,
            "XX" if condition == PutCondition::Always => condition = PutCondition::IfPresent,
            "GET" => get = true,
            "KEEPTTL" if expiry.is_none() => expiry = Some(None),
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() => {
                i += 1;
                let Some(v) = args.get(i) else {
                    return syntax();
                };
                match set_deadline(&opt, v, "set") {
                    Ok(at) => expiry = Some(Some(at)),
                    Err(reply) => return Prepared::Reply(reply),
                }
            }
            _ => return syntax(),
        }
        i += 1;
    }
    let cmd = match expiry {
        None => KvCommand::Put {
            key: key.clone(),
            value,
            condition,
            return_previous: get,
        },
        Some(expire_at_ms) => KvCommand::PutExpiring {
            key: key.clone(),
            value,
            condition,
            return_previous: get,
            expire_at_ms,
        },
    };
    plan(
        vec![Sub {
            group: conn.kv.group_for(&key),
            op: Op::Write(cmd),
        }],
        Finish::Set { get },
    )
}

/// The absolute deadline (Unix ms) of a `SET`/`SETEX`-style expiry option
/// `opt` (`EX`, `PX`, `EXAT`, `PXAT`) with argument `v`: Redis' rules (a
/// positive integer, no overflow).
/// The byte range `GETRANGE start end` selects of a `len`-byte value
/// (Redis' rules: negative from the end, clamped; empty if inverted).
fn string_range(len: usize, start: i64, end: i64) -> (usize, usize) {
    let len = len as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return (0, 0);
    }
    let start = if start < 0 { len + start } else { start }.max(0);
    let end = if end < 0 { len + end } else { end }.max(0).min(len - 1);
    if start > end {
        return (0, 0);
    }
    (start as usize, end as usize + 1)
}

/// The error of a command whose keys are in more than one group.
pub(super) fn crossslot() -> Reply {
    Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
}

/// `GETEX key [EX s | PX ms | EXAT ts | PXAT ms-ts | PERSIST]`.
fn prepare_getex(args: &[Bytes], conn: &Conn) -> Prepared {
    let Some(key) = args.first() else {
        return arity("GETEX");
    };
    let deadline = match &args[1..] {
        [] => DeadlineChange::Keep,
        [opt] if upper(opt) == "PERSIST" => DeadlineChange::Clear,
        [opt, t] if matches!(upper(opt).as_str(), "EX" | "PX" | "EXAT" | "PXAT") => {
            match set_deadline(&upper(opt), t, "getex") {
                Ok(at) => DeadlineChange::At(at),
                Err(reply) => return Prepared::Reply(reply),
            }
        }
        _ => return syntax(),
    };
    let cmd = KvCommand::GetExpiring {
        key: key.clone(),
        deadline,
        now_ms: crate::expiry::unix_ms(),
    };
    plan(
        vec![Sub {
            group: conn.kv.group_for(key),
            op: Op::Write(cmd),
        }],
        Finish::Get,
    )
}

/// `RENAME src dst`, `RENAMENX src dst`, `COPY src dst [DB 0] [REPLACE]`:
/// both keys in one group (one command of that group).
fn prepare_move(name: &str, args: &[Bytes], conn: &Conn) -> Prepared {
    if args.len() < 2 || (name != "COPY" && args.len() != 2) {
        return arity(name);
    }
    let (from, to) = (args[0].clone(), args[1].clone());
    let group = conn.kv.group_for(&from);
    if conn.kv.group_for(&to) != group {
        return Prepared::Reply(crossslot());
    }
    if !key_ok(&to) {
        return Prepared::Reply(Reply::err("key too large"));
    }
    let (cmd, f) = match name {
        "COPY" => {
            let mut replace = false;
            let mut opts = args[2..].iter();
            while let Some(opt) = opts.next() {
                match upper(opt).as_str() {
                    "REPLACE" => replace = true,
                    "DB" => match opts.next() {
                        Some(db) if &db[..] == b"0" => {}
                        Some(db) if parse_i64(db).is_some() => {
                            return Prepared::Reply(Reply::err("DB index is out of range"))
                        }
                        Some(_) => return Prepared::Reply(not_integer()),
                        None => return syntax(),
                    },
                    _ => return syntax(),
                }
            }
            if from == to {
                return Prepared::Reply(Reply::err("source and destination objects are the same"));
            }
            (KvCommand::Copy { from, to, replace }, Finish::Int)
        }
        _ => (
            KvCommand::Rename {
                from,
                to,
                only_if_absent: name == "RENAMENX",
            },
            if name == "RENAME" {
                Finish::Renamed
            } else {
                Finish::Int
            },
        ),
    };
    plan(
        vec![Sub {
            group,
            op: Op::Write(cmd),
        }],
        f,
    )
}

fn set_deadline(opt: &str, v: &[u8], cmd: &str) -> Result<u64, Reply> {
    let invalid = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    let n = parse_i64(v).ok_or_else(not_integer)?;
    if n <= 0 {
        return Err(invalid());
    }
    let n = n as u64;
    let at = match opt {
        "EX" => n
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(crate::expiry::unix_ms())),
        "PX" => n.checked_add(crate::expiry::unix_ms()),
        "EXAT" => n.checked_mul(1000),
        _ => Some(n),
    };
    at.filter(|at| *at <= DEADLINE_MS_MAX).ok_or_else(invalid)
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT key t [NX|XX|GT|LT]`.
fn prepare_expire(name: &str, args: &[Bytes], conn: &Conn) -> Prepared {
    if args.len() < 2 {
        return arity(name);
    }
    let Some(t) = parse_i64(&args[1]) else {
        return Prepared::Reply(not_integer());
    };
    let invalid = || {
        Prepared::Reply(Reply::err(format!(
            "invalid expire time in '{}' command",
            name.to_lowercase()
        )))
    };
    let now = crate::expiry::unix_ms();
    let millis = name.starts_with('P');
    let absolute = name.ends_with("AT");
    let t = if millis {
        Some(i128::from(t))
    } else {
        i128::from(t).checked_mul(1000)
    };
    let at = match t.map(|t| if absolute { t } else { t + i128::from(now) }) {
        // In the past: the key goes at once (0 is before any clock).
        Some(at) if at < 0 => 0,
        Some(at) if at <= i128::from(DEADLINE_MS_MAX) => at as u64,
        _ => return invalid(),
    };
    let mut condition = ExpireCondition::Always;
    for opt in &args[2..] {
        let next = match upper(opt).as_str() {
            "NX" => ExpireCondition::IfNone,
            "XX" => ExpireCondition::IfSome,
            "GT" => ExpireCondition::Later,
            "LT" => ExpireCondition::Earlier,
            _ => {
                return Prepared::Reply(Reply::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )))
            }
        };
        use ExpireCondition::{Always, Earlier, IfNone, IfSome, Later};
        condition = match (condition, next) {
            (Always, n) => n,
            (a, b) if a == b => a,
            (IfNone, _) | (_, IfNone) => {
                return Prepared::Reply(Reply::err(
                    "NX and XX, GT or LT options at the same time are not compatible",
                ))
            }
            (Later, Earlier) | (Earlier, Later) => {
                return Prepared::Reply(Reply::err(
                    "GT and LT options at the same time are not compatible",
                ))
            }
            // GT already needs a deadline (none counts as never).
            (IfSome, Later) | (Later, IfSome) => Later,
            (IfSome, Earlier) | (Earlier, IfSome) => {
                return Prepared::Reply(Reply::err(
                    "XX with LT is not supported: a key without a deadline fails XX, use LT alone or XX alone",
                ))
            }
            (a, _) => a,
        };
    }
    let key = args[0].clone();
    let cmd = KvCommand::Expire {
        key: key.clone(),
        at_ms: at,
        now_ms: now,
        condition,
    };
    plan(
        vec![Sub {
            group: conn.kv.group_for(&key),
            op: Op::Write(cmd),
        }],
        Finish::Int,
    )
}

fn prepare_scan(args: &[Bytes], conn: &mut Conn, shared: &Shared) -> Prepared {
    let Some(cursor) = args.first() else {
        return arity("SCAN");
    };
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Prepared::Reply(Reply::err("invalid cursor"));
    };
    let mut count: u32 = 10;
    let mut pattern: Option<Bytes> = None;
    let mut type_name: Option<Bytes> = None;
    let mut i = 1;
    while i < args.len() {
        let opt = upper(&args[i]);
        let Some(v) = args.get(i + 1) else {
            return syntax();
        };
        match opt.as_str() {
            "COUNT" => match parse_i64(v) {
                Some(n) if n >= 1 => count = n.min(i64::from(SCAN_COUNT_MAX)) as u32,
                _ => return Prepared::Reply(not_integer()),
            },
            "MATCH" => pattern = Some(v.clone()),
            "TYPE" => type_name = Some(v.clone()),
            _ => return syntax(),
        }
        i += 2;
    }
    let start = if cursor == 0 {
        Bytes::new()
    } else {
        match conn.cursors.iter().find(|(id, _)| *id == cursor) {
            Some((_, k)) => k.clone(),
            None => return Prepared::Reply(Reply::err("invalid cursor")),
        }
    };
    let (start, end) = match &pattern {
        Some(p) => {
            let prefix = glob::literal_prefix(p);
            let start = if start[..] < prefix[..] {
                Bytes::from(prefix.clone())
            } else {
                start
            };
            (start, prefix_end(&prefix))
        }
        None => (start, None),
    };
    let subs = shared
        .kv_groups
        .iter()
        .map(|g| Sub {
            group: *g,
            op: Op::Read(match &type_name {
                None => KvQuery::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit: count,
                    keys_only: true,
                },
                Some(t) => KvQuery::Typed(TypedQuery::ScanType {
                    start: start.clone(),
                    end: end.clone(),
                    limit: count,
                    type_name: t.clone(),
                }),
            }),
        })
        .collect();
    match type_name {
        None => plan(
            subs,
            Finish::Scan {
                count: count as usize,
                pattern,
            },
        ),
        Some(_) => plan(subs, Finish::ScanTyped { pattern }),
    }
}

fn prepare_hello(args: &[Bytes], conn: &mut Conn) -> Prepared {
    let mut i = 0;
    let mut resp3 = conn.resp3;
    if let Some(v) = args.first() {
        match parse_i64(v) {
            Some(2) => (i, resp3) = (1, false),
            Some(3) => (i, resp3) = (1, true),
            Some(_) => {
                return Prepared::Reply(Reply::Error("NOPROTO unsupported protocol version".into()))
            }
            None => {
                return Prepared::Reply(Reply::err(
                    "Protocol version is not an integer or out of range",
                ))
            }
        }
    }
    while i < args.len() {
        match upper(&args[i]).as_str() {
            // No passwords: any credentials are accepted as the default user.
            "AUTH" if i + 2 < args.len() => i += 3,
            "SETNAME" if i + 1 < args.len() => {
                conn.name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => return syntax(),
        }
    }
    // The reply already speaks the protocol asked for.
    conn.resp3 = resp3;
    Prepared::Reply(Reply::Map(vec![
        (Reply::text("server"), Reply::text("redis")),
        (Reply::text("version"), Reply::text(REDIS_VERSION)),
        (Reply::text("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
        (Reply::text("id"), Reply::Int(conn.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(Vec::new())),
    ]))
}

/// The Redis version flotilla reports to clients (the command set it
/// mimics).
pub const REDIS_VERSION: &str = "7.2.0";

fn prepare_client(args: &[Bytes], conn: &mut Conn) -> Prepared {
    let Some(sub) = args.first() else {
        return arity("CLIENT");
    };
    match (upper(sub).as_str(), &args[1..]) {
        ("SETNAME", [name]) => {
            if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                return Prepared::Reply(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            conn.name = if name.is_empty() {
                None
            } else {
                Some(name.clone())
            };
            Prepared::Reply(Reply::Ok)
        }
        ("GETNAME", []) => Prepared::Reply(Reply::opt(conn.name.clone())),
        ("ID", []) => Prepared::Reply(Reply::Int(conn.id as i64)),
        ("SETINFO", [_, _]) | ("NO-EVICT", [_]) | ("NO-TOUCH", [_]) => Prepared::Reply(Reply::Ok),
        ("INFO", []) | ("LIST", _) => Prepared::Reply(Reply::text(format!(
            "id={} addr={} name={} db=0 sub={} psub={} multi={} resp={} consistency={}\n",
            conn.id,
            conn.peer,
            conn.name
                .as_ref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default(),
            conn.pubsub.as_ref().map_or(0, |s| s.channel_count()),
            conn.pubsub.as_ref().map_or(0, |s| s.pattern_count()),
            conn.multi.as_ref().map_or(-1, |m| m.queued() as i64),
            if conn.resp3 { 3 } else { 2 },
            consistency_name(conn.kv.consistency)
        ))),
        (s, _) => Prepared::Reply(Reply::err(format!(
            "unknown subcommand or wrong number of arguments for 'CLIENT|{s}'"
        ))),
    }
}

fn prepare_config(args: &[Bytes], shared: &Shared) -> Prepared {
    let Some(sub) = args.first() else {
        return arity("CONFIG");
    };
    match upper(sub).as_str() {
        "GET" if args.len() >= 2 => {
            let table: [(&str, String); 8] = [
                ("save", String::new()),
                ("appendonly", "no".into()),
                ("databases", "1".into()),
                ("maxmemory", "0".into()),
                ("maxclients", shared.max_clients.to_string()),
                ("proto-max-bulk-len", shared.max_value_bytes.to_string()),
                ("timeout", "0".into()),
                ("port", shared.resp_addr.port().to_string()),
            ];
            let mut out = Vec::new();
            for (name, value) in &table {
                if args[1..]
                    .iter()
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    out.push((Reply::text(*name), Reply::text(value.clone())));
                }
            }
            Prepared::Reply(Reply::Map(out))
        }
        "RESETSTAT" => Prepared::Reply(Reply::Ok),
        "SET" => Prepared::Reply(Reply::err(
            "CONFIG SET is not supported: configure flotilla with flags, FLOTILLA_* or its config file",
        )),
        s => Prepared::Reply(Reply::err(format!(
            "unknown subcommand or wrong number of arguments for 'CONFIG|{s}'"
        ))),
    }
}

/// The table entry of the command `name` (upper or lower case).
pub(super) fn find_command(name: &str) -> Option<&'static CommandInfo> {
    all_commands().find(|c| c.0.eq_ignore_ascii_case(name))
}

/// Every command served: strings and connection commands, then the data
/// types.
fn all_commands() -> impl Iterator<Item = &'static CommandInfo> {
    COMMANDS
        .iter()
        .chain(types::COMMANDS.iter())
        .chain(super::blocking::COMMANDS.iter())
        .chain(super::extras::COMMANDS.iter())
        .chain(super::geo::COMMANDS.iter())
        .chain(super::pubsub::COMMANDS.iter())
        .chain(super::xread::COMMANDS.iter())
}

/// FNV-1a of a peer address: mixes connections' seeds apart.
fn peer_hash(peer: &str) -> u64 {
    peer.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Conn {
    /// A fresh random number for SPOP / SRANDMEMBER (SplitMix64 over the
    /// connection's seed, itself from the clock and the peer).
    pub(super) fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn command_info(c: &CommandInfo) -> Reply {
    Reply::Array(vec![
        Reply::text(c.0),
        Reply::Int(c.1),
        Reply::Array(c.2.iter().map(|f| Reply::Simple((*f).into())).collect()),
        Reply::Int(c.3),
        Reply::Int(c.4),
        Reply::Int(c.5),
    ])
}

fn prepare_command(args: &[Bytes]) -> Prepared {
    let sub = args.first().map(|s| upper(s));
    Prepared::Reply(match sub.as_deref() {
        None => Reply::Array(all_commands().map(command_info).collect()),
        Some("COUNT") => Reply::Int(all_commands().count() as i64),
        // No documentation is served; clients (redis-cli) fall back. (An
        // empty map: RESP3 has `%0`, RESP2 an empty array.)
        Some("DOCS") => Reply::Map(Vec::new()),
        Some("INFO") => Reply::Array(
            args[1..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    all_commands()
                        .find(|c| c.0 == n)
                        .map_or(Reply::Nil, command_info)
                })
                .collect(),
        ),
        Some("LIST") => Reply::Array(all_commands().map(|c| Reply::text(c.0)).collect()),
        Some(s) => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for 'COMMAND|{s}'"
        )),
    })
}

/// Runs one request, retrying what is safe to retry (no leader yet, an
/// entry overwritten by a new leader, an aborted read, a busy group) until
/// the deadline.
pub(super) async fn call(
    kv: &KvClient,
    group: GroupId,
    op: &Op,
    timeout: Duration,
) -> Result<KvResult, HostError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(2);
    loop {
        let outcome = match op {
            Op::Write(cmd) => kv.execute(group, cmd).await,
            Op::Read(q) => kv.query(group, q).await,
        };
        let retry = matches!(
            &outcome,
            Err(HostError::Request(
                RequestError::NotLeader { leader: None, .. }
                    | RequestError::Dropped { .. }
                    | RequestError::ReadAborted { .. }
                    | RequestError::Rejected(
                        flotilla::raft::ProposeError::Busy { .. }
                            | flotilla::raft::ProposeError::TransferInProgress { .. }
                    )
            ))
        );
        if !retry || started.elapsed() + backoff >= timeout {
            return outcome;
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// SAVE: snapshots (and compacts the log of) this node's replica of every
/// KV group; `OK` when all are durable. BGSAVE answers at once and does the
/// same on this executor in the background.
pub async fn save(background: bool, shared: &Shared) -> Reply {
    let host = shared.host.clone();
    let groups = shared.kv_groups.clone();
    let timeout = shared.request_timeout.max(Duration::from_secs(60));
    let last = shared.last_save_secs.clone();
    let run = async move {
        let done = futures::future::join_all(
            groups
                .iter()
                .map(|g| async { (*g, host.request_snapshot(*g, timeout).await) }),
        )
        .await;
        if let Some((g, Err(e))) = done.into_iter().find(|(_, r)| r.is_err()) {
            tracing::warn!(group = g.0, error = %e, "SAVE: snapshot failed");
            return Reply::err(format!("snapshot of group {} failed: {e}", g.0));
        }
        last.store(crate::expiry::unix_ms() / 1000, Ordering::Relaxed);
        Reply::Ok
    };
    if background {
        glommio::spawn_local(run).detach();
        Reply::Simple("Background saving started".into())
    } else {
        run.await
    }
}

/// The reply for an engine error.
pub fn host_error_reply(e: &HostError) -> Reply {
    match e {
        HostError::Request(RequestError::NotLeader {
            group,
            leader: Some(l),
        }) => Reply::Error(format!(
            "NOTLEADER group {group} is led by node {l} (leadership is moving); try again"
        )),
        HostError::Request(RequestError::NotLeader {
            group,
            leader: None,
        }) => Reply::Error(format!("TRYAGAIN group {group} has no leader right now")),
        HostError::Request(
            r @ (RequestError::Dropped { .. }
            | RequestError::ReadAborted { .. }
            | RequestError::Rejected(_)),
        ) => Reply::Error(format!("TRYAGAIN {r}")),
        HostError::Timeout(d) => Reply::Error(format!(
            "TIMEOUT no answer within {d:?}; a write may or may not have been applied"
        )),
        HostError::ShuttingDown => Reply::Error("SHUTDOWN the node is shutting down".into()),
        other => Reply::err(other.to_string()),
    }
}

pub(super) fn kv_error_reply(e: KvError) -> Reply {
    match e {
        KvError::NotInteger => not_integer(),
        KvError::Overflow => Reply::err("increment or decrement would overflow"),
        KvError::KeyTooLarge => Reply::err("key too large"),
        KvError::ValueTooLarge => Reply::err("string exceeds maximum allowed size"),
        KvError::ResultTooLarge => Reply::err("result too large"),
        KvError::WrongType => {
            Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
        }
        KvError::NotHyperLogLog => {
            Reply::Error("WRONGTYPE Key is not a valid HyperLogLog string value.".into())
        }
        other => Reply::err(other.to_string()),
    }
}

fn unexpected(r: &KvResult) -> Reply {
    tracing::error!(result = ?r, "unexpected KV result kind");
    Reply::err("internal error: unexpected result kind")
}

/// Runs every plan of a wave at once and finishes them in order: takes
/// the plans out of `plans` and appends one reply per plan to `replies`.
pub async fn run_wave(
    plans: &mut Vec<(Vec<Sub>, FinishBox)>,
    conn: &mut Conn,
    shared: &Shared,
    replies: &mut Vec<Reply>,
) {
    let timeout = shared.request_timeout;
    // One request (a pipeline of one command, the usual case): nothing to
    // order it with, so no set of written groups, no copy of the request
    // and no join.
    if let [(subs, _)] = plans.as_slice() {
        if let [sub] = subs.as_slice() {
            let outcome = call(&conn.kv, sub.group, &sub.op, timeout).await;
            let (_, FinishBox(f)) = plans.pop().expect("a wave of one plan");
            replies.push(finish(f, vec![outcome], conn));
            return;
        }
    }
    // Reads of a group this wave writes go through the log (in order with
    // the writes).
    let written: HashSet<GroupId> = plans
        .iter()
        .flat_map(|(subs, _)| subs.iter())
        .filter(|s| matches!(s.op, Op::Write(_)))
        .map(|s| s.group)
        .collect();
    let ops: Vec<(GroupId, Op)> = plans
        .iter()
        .flat_map(|(subs, _)| subs.iter())
        .map(|s| {
            let op = match &s.op {
                Op::Read(q) if written.contains(&s.group) => Op::Write(KvCommand::Read(q.clone())),
                op => op.clone(),
            };
            (s.group, op)
        })
        .collect();
    let results = {
        let kv = &conn.kv;
        futures::future::join_all(ops.iter().map(|(g, op)| call(kv, *g, op, timeout))).await
    };
    let mut results = results.into_iter();
    for (subs, FinishBox(f)) in plans.drain(..) {
        let mine: Vec<_> = results.by_ref().take(subs.len()).collect();
        replies.push(finish(f, mine, conn));
    }
}

/// Proposes `cmd` to `group` (with the retries of any write).
pub(super) async fn call_write(
    conn: &Conn,
    group: GroupId,
    cmd: KvCommand,
    shared: &Shared,
) -> Result<KvResult, HostError> {
    call(&conn.kv, group, &Op::Write(cmd), shared.request_timeout).await
}

/// The reply for an outcome no plan expected: an error, or a result of
/// the wrong kind.
pub(super) fn outcome_reply(outcome: Result<KvResult, HostError>) -> Reply {
    match outcome {
        Ok(KvResult::Error(e)) => kv_error_reply(e),
        Ok(r) => unexpected(&r),
        Err(e) => host_error_reply(&e),
    }
}

/// Finishes one plan with its results.
pub(super) fn finish_plan(
    f: FinishBox,
    results: Vec<Result<KvResult, HostError>>,
    conn: &mut Conn,
) -> Reply {
    finish(f.0, results, conn)
}

fn finish(f: Finish, results: Vec<Result<KvResult, HostError>>, conn: &mut Conn) -> Reply {
    let mut ok = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(KvResult::Error(e)) => return kv_error_reply(e),
            Ok(r) => ok.push(r),
            Err(e) => return host_error_reply(&e),
        }
    }
    let first = ok.first();
    match f {
        Finish::Get => match first {
            Some(KvResult::Value(v)) => Reply::opt(v.clone()),
            Some(r) => unexpected(r),
            None => Reply::Nil,
        },
        Finish::Strlen => match first {
            Some(KvResult::Value(v)) => Reply::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::Type => match first {
            Some(KvResult::Value(v)) => Reply::Simple(
                v.as_ref()
                    .map_or("none".into(), |t| String::from_utf8_lossy(t).into_owned()),
            ),
            Some(r) => unexpected(r),
            None => Reply::Simple("none".into()),
        },
        Finish::Set { get } => match first {
            Some(KvResult::Put { written, previous }) => {
                if get {
                    Reply::opt(previous.clone())
                } else if *written {
                    Reply::Ok
                } else {
                    Reply::Nil
                }
            }
            Some(r) => unexpected(r),
            None => Reply::Nil,
        },
        Finish::SetNx => match first {
            Some(KvResult::Put { written, .. }) => Reply::Int(i64::from(*written)),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::GetSet => match first {
            Some(KvResult::Put { previous, .. }) => Reply::opt(previous.clone()),
            Some(r) => unexpected(r),
            None => Reply::Nil,
        },
        Finish::Ttl { millis, absolute } => match first {
            Some(KvResult::Int(n)) if *n < 0 => Reply::Int(*n),
            Some(KvResult::Int(at)) => {
                let at = *at as u64;
                // A deadline that passed still counts until the leader's
                // expiry entry applies: the key is there, about to go.
                let ms = if absolute {
                    at
                } else {
                    at.saturating_sub(crate::expiry::unix_ms())
                };
                Reply::Int(if millis {
                    ms as i64
                } else if absolute {
                    (ms / 1000) as i64
                } else {
                    // As Redis: rounded to the nearest second.
                    (ms.saturating_add(500) / 1000) as i64
                })
            }
            Some(r) => unexpected(r),
            None => Reply::Int(-2),
        },
        Finish::Int => match first {
            Some(KvResult::Int(n)) => Reply::Int(*n),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::GetRange { start, end } => match first {
            Some(KvResult::Value(v)) => {
                let v = v.clone().unwrap_or_default();
                let (a, b) = string_range(v.len(), start, end);
                Reply::Bulk(v.slice(a..b))
            }
            Some(r) => unexpected(r),
            None => Reply::text(""),
        },
        Finish::Renamed => match first {
            Some(KvResult::Int(_)) => Reply::Ok,
            Some(r) => unexpected(r),
            None => Reply::Ok,
        },
        Finish::SetAll => match first {
            Some(KvResult::Batch(_)) => Reply::Int(1),
            Some(KvResult::Aborted) => Reply::Int(0),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::Len => match first {
            Some(KvResult::Len(n)) => Reply::Int(*n as i64),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::SumCount => {
            let mut sum = 0u64;
            for r in &ok {
                match r {
                    KvResult::Count(n) => sum += n,
                    r => return unexpected(r),
                }
            }
            Reply::Int(sum as i64)
        }
        Finish::Watch(keys) => {
            let mut watched = Vec::with_capacity(keys.len());
            for (key, r) in keys.into_iter().zip(&ok) {
                match r {
                    KvResult::Digest(digest) => watched.push(multi::Watched {
                        group: conn.kv.group_for(&key),
                        key,
                        digest: *digest,
                    }),
                    r => return unexpected(r),
                }
            }
            conn.watched.extend(watched);
            Reply::Ok
        }
        Finish::Published(channel) => match first {
            Some(KvResult::Ok) => Reply::Int(super::pubsub::receivers(&channel)),
            Some(r) => unexpected(r),
            None => Reply::Int(0),
        },
        Finish::AllOk => match ok.iter().find(|r| !matches!(r, KvResult::Ok)) {
            Some(r) => unexpected(r),
            None => Reply::Ok,
        },
        Finish::MGet(slots) => {
            let mut lists = Vec::with_capacity(ok.len());
            for r in ok {
                match r {
                    KvResult::Values(v) => lists.push(v),
                    r => return unexpected(&r),
                }
            }
            Reply::Array(
                slots
                    .iter()
                    .map(|(s, i)| {
                        lists
                            .get(*s)
                            .and_then(|l| l.get(*i))
                            .cloned()
                            .flatten()
                            .map_or(Reply::Nil, Reply::Bulk)
                    })
                    .collect(),
            )
        }
        Finish::Typed(f) => types::finish(f, ok.into_iter().next()),
        Finish::Extra(f) => super::extras::finish(f, ok),
        Finish::Geo(f) => super::geo::finish(f, ok.into_iter().next()),
        Finish::ScanTyped { pattern } => {
            let mut keys: Vec<Bytes> = Vec::new();
            let mut resume: Option<Bytes> = None;
            for r in ok {
                match r {
                    KvResult::Entries { entries, next } => {
                        keys.extend(entries.into_iter().map(|(k, _)| k));
                        if let Some(n) = next {
                            if resume.as_ref().is_none_or(|r| n < *r) {
                                resume = Some(n);
                            }
                        }
                    }
                    r => return unexpected(&r),
                }
            }
            // Keys at or past the smallest unexamined key are found again
            // from there (SCAN may repeat a key, never miss one).
            if let Some(r) = &resume {
                keys.retain(|k| k < r);
            }
            keys.sort_unstable();
            let cursor = match resume {
                Some(next) => {
                    let id = conn.next_cursor;
                    conn.next_cursor += 1;
                    if conn.cursors.len() == CURSORS_MAX {
                        conn.cursors.pop_front();
                    }
                    conn.cursors.push_back((id, next));
                    id
                }
                None => 0,
            };
            if let Some(p) = pattern {
                keys.retain(|k| glob::matches(&p, k));
            }
            Reply::Array(vec![
                Reply::text(cursor.to_string()),
                Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
            ])
        }
        Finish::Scan { count, pattern } => {
            let mut keys: Vec<Bytes> = Vec::new();
            let mut more = false;
            for r in ok {
                match r {
                    KvResult::Entries { entries, next } => {
                        more |= next.is_some();
                        keys.extend(entries.into_iter().map(|(k, _)| k));
                    }
                    r => return unexpected(&r),
                }
            }
            keys.sort_unstable();
            if keys.len() > count {
                keys.truncate(count);
                more = true;
            }
            let cursor = match (more, keys.last()) {
                (true, Some(last)) => {
                    let mut next = last.to_vec();
                    next.push(0);
                    let id = conn.next_cursor;
                    conn.next_cursor += 1;
                    if conn.cursors.len() == CURSORS_MAX {
                        conn.cursors.pop_front();
                    }
                    conn.cursors.push_back((id, Bytes::from(next)));
                    id
                }
                _ => 0,
            };
            if let Some(p) = pattern {
                keys.retain(|k| glob::matches(&p, k));
            }
            Reply::Array(vec![
                Reply::text(cursor.to_string()),
                Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
            ])
        }
    }
}

/// WAIT: answered at once (see [`super::extras::wait_replicas`]): every
/// write this connection was answered for is already on a majority of its
/// group's voters.
pub async fn wait(shared: &Shared) -> Reply {
    let mut memberships = Vec::with_capacity(shared.kv_groups.len());
    for g in &shared.kv_groups {
        match shared.host.membership(*g, shared.request_timeout).await {
            Ok(Some(m)) => memberships.push(m),
            Ok(None) => {}
            Err(e) => return host_error_reply(&e),
        }
    }
    Reply::Int(super::extras::wait_replicas(&memberships))
}

/// KEYS pattern: scans every group to the end.
pub async fn keys(pattern: Bytes, conn: &Conn, shared: &Shared) -> Reply {
    let prefix = glob::literal_prefix(&pattern);
    let end = prefix_end(&prefix);
    let mut out = Vec::new();
    for g in &shared.kv_groups {
        let mut start = Bytes::from(prefix.clone());
        loop {
            let q = KvQuery::Scan {
                start: start.clone(),
                end: end.clone(),
                limit: 10_000,
                keys_only: true,
            };
            match call(&conn.kv, *g, &Op::Read(q), shared.request_timeout).await {
                Ok(KvResult::Entries { entries, next }) => {
                    out.extend(
                        entries
                            .into_iter()
                            .map(|(k, _)| k)
                            .filter(|k| glob::matches(&pattern, k)),
                    );
                    if out.len() > KEYS_RESULT_MAX {
                        return Reply::err(format!(
                            "KEYS would return more than {KEYS_RESULT_MAX} keys; use SCAN"
                        ));
                    }
                    match next {
                        Some(n) => start = n,
                        None => break,
                    }
                }
                Ok(KvResult::Error(e)) => return kv_error_reply(e),
                Ok(r) => return unexpected(&r),
                Err(e) => return host_error_reply(&e),
            }
        }
    }
    out.sort_unstable();
    Reply::Array(out.into_iter().map(Reply::Bulk).collect())
}

/// INFO [section]: server, clients, raft (per group), replication, keyspace.
pub async fn info(section: Option<String>, shared: &Shared) -> Reply {
    use std::fmt::Write;
    let want = |s: &str| match section.as_deref() {
        None | Some("all") | Some("everything") | Some("default") => true,
        Some(x) => x == s,
    };
    let mut out = String::new();
    let cfg = shared.host.config();
    if want("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nflotilla_version:{}\r\nredis_mode:standalone\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
             node_id:{}\r\ncluster_id:{}\r\nshards:{}\r\nkv_groups:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.resp_addr.port(),
            shared.started.elapsed().as_secs(),
            cfg.node_id,
            cfg.cluster_id,
            cfg.shard_count,
            shared.kv_groups.len()
        );
    }
    if want("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.clients_connected.load(Ordering::Relaxed),
            shared.clients_blocked.load(Ordering::Relaxed),
            shared.max_clients
        );
    }
    if want("stats") {
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nblocking_looks:{}\r\npubsub_messages_delivered:{}\r\npubsub_messages_lost:{}\r\nscripts_answered:{}\r\nscript_runs_conflicted:{}\r\nscript_runs_stopped:{}\r\n\r\n",
            shared.clients_accepted.load(Ordering::Relaxed),
            shared.commands_processed.load(Ordering::Relaxed),
            shared.blocking_looks.load(Ordering::Relaxed),
            shared.pubsub_messages_delivered.load(Ordering::Relaxed),
            shared.pubsub_messages_lost.load(Ordering::Relaxed),
            shared.scripts.answered.load(Ordering::Relaxed),
            shared.scripts.conflicted.load(Ordering::Relaxed),
            shared.scripts.stopped.load(Ordering::Relaxed)
        );
    }
    if want("memory") || want("keyspace") {
        // This replica's KV groups, read locally (no network): what this
        // node holds now.
        let (mut keys, mut expiring, mut bytes) = (0u64, 0u64, 0u64);
        for g in &shared.kv_groups {
            let answer = shared
                .host
                .read_with(
                    *g,
                    KvQuery::Stats.encode(),
                    ReadConsistency::Stale,
                    shared.request_timeout,
                )
                .await
                .map(KvResult::decode);
            if let Ok(Ok(KvResult::Stats {
                keys: k,
                expiring: e,
                data_bytes: b,
            })) = answer
            {
                keys += k;
                expiring += e;
                bytes += b;
            }
        }
        if want("memory") {
            let _ = write!(
                out,
                "# Memory\r\nused_memory:{bytes}\r\nused_memory_human:{:.2}M\r\n\
                 used_memory_dataset:{bytes}\r\n\r\n",
                bytes as f64 / (1 << 20) as f64
            );
        }
        if want("keyspace") {
            let _ = write!(out, "# Keyspace\r\n");
            if keys > 0 {
                let _ = write!(out, "db0:keys={keys},expires={expiring},avg_ttl=0\r\n");
            }
            let _ = write!(out, "\r\n");
        }
    }
    let groups = if want("raft") || want("replication") {
        match shared.host.groups(shared.request_timeout).await {
            Ok(g) => g,
            Err(e) => return host_error_reply(&e),
        }
    } else {
        Vec::new()
    };
    if want("replication") {
        let kv: HashSet<GroupId> = shared.kv_groups.iter().copied().collect();
        let led = groups
            .iter()
            .filter(|g| kv.contains(&g.group) && g.role == Role::Leader)
            .count();
        let _ = write!(
            out,
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nkv_groups_led:{led}\r\n\r\n"
        );
    }
    if want("raft") {
        let leaders = groups.iter().filter(|g| g.role == Role::Leader).count();
        let _ = write!(
            out,
            "# Raft\r\nnode_id:{}\r\ngroups:{}\r\ngroups_led:{leaders}\r\n",
            cfg.node_id,
            groups.len()
        );
        for g in &groups {
            let _ = write!(
                out,
                "group_{}:role={},leader={},term={},commit={},applied={},last_index={},apply_lag={},proposals_pending={},reads_pending={}\r\n",
                g.group.0,
                role_name(g.role),
                g.leader.map_or(0, |l| l.0),
                g.term,
                g.commit,
                g.applied,
                g.last_index,
                g.commit.saturating_sub(g.applied),
                g.proposals_pending,
                g.reads_pending
            );
        }
        out.push_str("\r\n");
    }
    Reply::Bulk(Bytes::from(out))
}

/// Lower-case role name.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_on_stack_is_upper_or_nothing() {
        let mut out = [0u8; NAME_ON_STACK_BYTES_MAX];
        for name in [&b"get"[..], b"GeT", b"SET", b"", b"client|setname"] {
            assert_eq!(upper_on_stack(name, &mut out), Some(upper(name).as_str()));
        }
        // Long or not ASCII: left to `upper` (lossy UTF-8).
        assert_eq!(upper_on_stack(&[b'a'; 33], &mut out), None);
        assert_eq!(upper_on_stack(b"g\xffet", &mut out), None);
        assert_eq!(upper_on_stack("gét".as_bytes(), &mut out), None);
        let exact = [b'a'; NAME_ON_STACK_BYTES_MAX];
        assert_eq!(
            upper_on_stack(&exact, &mut out),
            Some("A".repeat(NAME_ON_STACK_BYTES_MAX).as_str())
        );
    }
}
