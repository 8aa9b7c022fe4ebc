//! Lua scripts: `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO`,
//! `SCRIPT LOAD | EXISTS | FLUSH | KILL`.
//!
//! A script runs once, on the node the client talks to, and what it wrote
//! is replicated as its effects (as Redis does since 5.0): never the Lua
//! code, so no replica ever runs Lua while it applies the log, and nothing
//! a script does (time, randomness, an error half-way) can make replicas
//! differ.
//!
//! ```text
//!  EVAL s 2 {u}a {u}b x      connection (client executor)
//!   │ KvQuery::Script ──────► the group's replica on this node (its shard),
//!   │                         with the connection's read consistency:
//!   │                         ScriptRunner: scratch = store.scratch()
//!   │                         (copy-on-write), run the script; every
//!   │                         redis.call is prepared as a client command
//!   │                         and executed on the scratch copy (reads see
//!   │                         the script's own writes); answer: the reply,
//!   │                         the write commands, the digests of KEYS
//!   │ ◄──────────────────────  as they were before the script
//!   ├─ no writes: the reply
//!   └─ writes: KvCommand::Batch { guards: KEYS' digests, commands } ──► log
//!        Batch results ─► the reply computed on the scratch copy
//!        Aborted (a KEY changed meanwhile) ─► run again (linearizable read)
//! ```
//! The guards make the two steps one atomic step: the batch applies only
//! if every key the script could have touched still holds what the script
//! saw, so its commands do on every replica exactly what they did on the
//! scratch copy. That is why a script may touch only the keys it declares
//! in `KEYS` (Redis asks the same of scripts, and Redis Cluster enforces
//! it for keys of other slots); all of them must live in one group (a hash
//! tag: `{user:7}:a`, `{user:7}:b`), as for `MULTI`.
//!
//! Limits: a script runs at most [`SCRIPT_RUN_TIME_MAX`] (it runs on a
//! shard, which serves nothing else meanwhile; a stopped script changed
//! nothing) in at most [`LUA_MEMORY_MAX`] of Lua memory; a script conflicts
//! at most [`ATTEMPTS_MAX`] times with concurrent writes before the client
//! gets an error. Lua 5.1 as in Redis, with the `string`, `table` and
//! `math` libraries and `redis.call`, `pcall`, `error_reply`,
//! `status_reply`, `sha1hex`, `log`, `setresp(2)`, `set_repl` and
//! `replicate_commands`, `cjson` (`lua_json.rs`) and `bit`
//! (`lua_bit.rs`); no `cmsgpack` or `struct`.
//! Scripts may not create globals. The script cache is per client
//! executor: `EVALSHA` on a connection of another executor answers
//! `NOSCRIPT` until the script is loaded there (clients load and retry).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flotilla::{GroupId, ReadConsistency};
use flotilla_rsm::{KvCommand, KvQuery, KvResult, KvStore, BATCH_COMMANDS_MAX};
use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};

use super::command::{self, Conn, Op, Prepared, Shared};
use super::reply::Reply;

/// Longest a script runs before it is stopped (it runs on a shard, which
/// serves nothing else meanwhile).
pub const SCRIPT_RUN_TIME_MAX: Duration = Duration::from_millis(100);
/// Most Lua memory per executor.
pub const LUA_MEMORY_MAX: usize = 64 << 20;
/// Lua memory in use past which a run ends with a full collection.
const GC_AFTER_BYTES: usize = 4 << 20;
/// How many times a script runs at most when concurrent writes keep
/// changing its keys between its run and its batch (each retry waits a
/// random time, up to [`RETRY_WAIT_MAX`], and all of them together at most
/// the node's request timeout).
pub const ATTEMPTS_MAX: usize = 100;
/// Longest wait before a conflicting script runs again.
const RETRY_WAIT_MAX: Duration = Duration::from_millis(20);
/// Most scripts an executor keeps (loaded or run); past it the cache is
/// emptied (clients reload on `NOSCRIPT`).
pub const SCRIPT_CACHE_MAX: usize = 4096;
/// Lua instructions between two looks at the clock.
const HOOK_INSTRUCTIONS: u32 = 10_000;

/// What `INFO stats` tells of scripts.
#[derive(Debug, Default)]
pub struct ScriptCounters {
    /// Scripts answered (whatever the answer).
    pub answered: AtomicU64,
    /// Runs whose batch a changed key aborted (each ran again).
    pub conflicted: AtomicU64,
    /// Runs the time limit stopped.
    pub stopped: AtomicU64,
}

/// A script to run (the connection's half).
#[derive(Debug)]
pub struct Eval {
    script: Bytes,
    sha: [u8; 20],
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
    read_only: bool,
    group: GroupId,
}

/// The SHA-1 of a script, in lower-case hex (what `EVALSHA` names).
pub fn sha1_hex(script: &[u8]) -> String {
    sha1_smol::Sha1::from(script).digest().to_string()
}

thread_local! {
    /// Scripts loaded or run on this executor, by SHA-1 (lower-case hex).
    static SCRIPTS: RefCell<HashMap<String, Bytes>> = RefCell::new(HashMap::new());
    /// Scripts (by SHA-1) whose last run here wrote nothing: they start
    /// with the connection's read consistency (see [`run`]).
    static READERS: RefCell<std::collections::HashSet<[u8; 20]>> =
        RefCell::new(std::collections::HashSet::new());
    /// This thread's Lua (client executors compile `SCRIPT LOAD`s, shards
    /// run scripts).
    static RUNNER: RefCell<Option<Runner>> = const { RefCell::new(None) };
    /// Nodes' shared state, by [`Shared::script_env`], as this thread last
    /// found them in [`ENVS`].
    static ENV_CACHE: RefCell<HashMap<u64, Weak<Shared>>> = RefCell::new(HashMap::new());
}

fn cache_script(sha: String, script: Bytes) {
    SCRIPTS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SCRIPT_CACHE_MAX && !s.contains_key(&sha) {
            s.clear();
        }
        s.insert(sha, script);
    });
}

fn cached_script(sha: &[u8]) -> Option<Bytes> {
    let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
    SCRIPTS.with(|s| s.borrow().get(&sha).cloned())
}

/// Every node's shared state in this process, by [`Shared::script_env`]:
/// how a shard running a script's query finds the node's command layer.
/// Written when a node's RESP server starts; read once per node by each
/// thread that runs scripts (then [`ENV_CACHE`]), so never contended.
static ENVS: RwLock<Vec<(u64, Weak<Shared>)>> = RwLock::new(Vec::new());
static NEXT_ENV: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a node's [`Shared::script_env`].
pub fn next_env() -> u64 {
    NEXT_ENV.fetch_add(1, Ordering::Relaxed)
}

/// Makes `shared`'s node able to run scripts (idempotent; called by each
/// RESP accept loop) and installs the process's script runner.
pub fn register(shared: &Arc<Shared>) {
    flotilla_rsm::install_script_runner(run_query);
    let mut envs = ENVS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    envs.retain(|(_, w)| w.strong_count() > 0);
    if !envs.iter().any(|(id, _)| *id == shared.script_env) {
        envs.push((shared.script_env, Arc::downgrade(shared)));
    }
}

/// The shared state of the node whose connection asked (`id`), or of any
/// node of this process: a query for a group this node does not replicate
/// runs on its leader's node, and every node of a cluster routes keys to
/// the same groups.
fn find_env(id: u64) -> Option<Arc<Shared>> {
    if let Some(s) = ENV_CACHE.with(|c| c.borrow().get(&id).and_then(Weak::upgrade)) {
        return Some(s);
    }
    let weak = {
        let envs = ENVS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let live = |(_, w): &&(u64, Weak<Shared>)| w.strong_count() > 0;
        envs.iter()
            .filter(live)
            .find(|(e, _)| *e == id)
            .or_else(|| envs.iter().find(live))
            .map(|(_, w)| w.clone())?
    };
    let shared = weak.upgrade()?;
    ENV_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|_, w| w.strong_count() > 0);
        c.insert(id, weak);
    });
    Some(shared)
}

fn syntax_reply(text: &str) -> Prepared {
    Prepared::Reply(Reply::err(text))
}

/// `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO` (`name` upper case).
pub fn prepare_eval(name: &str, args: &[Bytes], conn: &Conn) -> Prepared {
    if args.len() < 2 {
        return Prepared::Reply(Reply::err(format!(
            "wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        )));
    }
    let script = if name.starts_with("EVALSHA") {
        match cached_script(&args[0]) {
            Some(s) => s,
            None => {
                return Prepared::Reply(Reply::Error(
                    "NOSCRIPT No matching script. Please use EVAL.".into(),
                ))
            }
        }
    } else {
        args[0].clone()
    };
    let numkeys = match std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(n) if n < 0 => return syntax_reply("Number of keys can't be negative"),
        Some(n) if n as usize > args.len() - 2 => {
            return syntax_reply("Number of keys can't be greater than number of args")
        }
        Some(n) => n as usize,
        None => return syntax_reply("value is not an integer or out of range"),
    };
    let keys = args[2..2 + numkeys].to_vec();
    let mut group = None;
    for k in &keys {
        let g = conn.kv.group_for(k);
        match group {
            None => group = Some(g),
            Some(first) if first != g => return Prepared::Reply(command::crossslot()),
            Some(_) => {}
        }
    }
    let sha = sha1_smol::Sha1::from(&script[..]).digest();
    if !name.starts_with("EVALSHA") {
        cache_script(sha.to_string(), script.clone());
    }
    Prepared::Script(Eval {
        script,
        sha: sha.bytes(),
        args: args[2 + numkeys..].to_vec(),
        group: group.unwrap_or_else(|| conn.kv.group_for(b"")),
        keys,
        read_only: name.ends_with("_RO"),
    })
}

/// `SCRIPT LOAD | EXISTS | FLUSH | KILL`.
pub fn prepare_script(args: &[Bytes]) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::err("wrong number of arguments for 'script' command");
    };
    match (sub.to_ascii_uppercase().as_slice(), &args[1..]) {
        (b"LOAD", [script]) => {
            if let Err(e) = with_runner(|r| r.compile(script).map(|_| ())) {
                return Reply::Error(e);
            }
            let sha = sha1_hex(script);
            cache_script(sha.clone(), script.clone());
            Reply::text(sha)
        }
        (b"EXISTS", shas) if !shas.is_empty() => Reply::Array(
            shas.iter()
                .map(|s| Reply::Int(i64::from(cached_script(s).is_some())))
                .collect(),
        ),
        (b"FLUSH", []) => {
            SCRIPTS.with(|s| s.borrow_mut().clear());
            Reply::Ok
        }
        (b"FLUSH", [mode])
            if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") =>
        {
            SCRIPTS.with(|s| s.borrow_mut().clear());
            Reply::Ok
        }
        (b"KILL", []) => Reply::Error("NOTBUSY No scripts in execution right now.".into()),
        _ => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for 'SCRIPT|{}'",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// Runs a script (see the module documentation) and gives its reply.
///
/// A script that writes needs no fresh read: its guards check, when its
/// batch applies, that its keys still hold what it saw. So it first runs
/// on this node's replica as it is (a stale read: no round to the leader)
/// and costs one log round like a plain write; if the replica lagged, the
/// batch aborts and the next run reads linearizably. A script that wrote
/// nothing is answered from a read with the connection's consistency:
/// after a stale first run it runs again with it, and the executor
/// remembers to start it that way next time.
pub async fn run(e: Eval, conn: &mut Conn, shared: &Shared) -> Reply {
    let reply = run_attempts(e, conn, shared).await;
    shared.scripts.answered.fetch_add(1, Ordering::Relaxed);
    reply
}

async fn run_attempts(e: Eval, conn: &mut Conn, shared: &Shared) -> Reply {
    let saved = conn.kv.consistency;
    let known_reader = READERS.with(|r| r.borrow().contains(&e.sha));
    let mut consistency = if e.read_only || known_reader {
        saved
    } else {
        ReadConsistency::Stale
    };
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let payload = Request {
            env: shared.script_env,
            seed: conn.next_seed(),
            read_only: e.read_only,
            resp3: conn.resp3,
            group: e.group,
            script: e.script.clone(),
            keys: e.keys.clone(),
            args: e.args.clone(),
        }
        .encode();
        let query = KvQuery::Script { payload };
        conn.kv.consistency = consistency;
        let outcome =
            command::call(&conn.kv, e.group, &Op::Read(query), shared.request_timeout).await;
        conn.kv.consistency = saved;
        let answer = match outcome {
            Ok(KvResult::Value(Some(answer))) => answer,
            other => return command::outcome_reply(other),
        };
        let Some(answer) = Answer::decode(answer) else {
            return Reply::err("internal error: malformed script answer");
        };
        if answer.commands.is_empty() {
            if consistency != saved && !answer.settled {
                // Read stale, wrote nothing: read as the client asked.
                remember_reader(e.sha, true);
                consistency = saved;
                continue;
            }
            return Reply::Raw(answer.reply);
        }
        if known_reader {
            remember_reader(e.sha, false);
        }
        let batch = KvCommand::Batch {
            guards: answer.guards,
            commands: answer.commands,
        };
        match command::call_write(conn, e.group, batch, shared).await {
            Ok(KvResult::Batch(_)) => return Reply::Raw(answer.reply),
            Ok(KvResult::Aborted) => {
                shared.scripts.conflicted.fetch_add(1, Ordering::Relaxed);
            }
            other => return command::outcome_reply(other),
        }
        attempt += 1;
        // Scripts racing for the same keys back off at random, so one of
        // them gets through (exponentially longer waits, capped).
        let cap = RETRY_WAIT_MAX.min(Duration::from_micros(250 << attempt.min(16)));
        let wait = Duration::from_micros(conn.next_seed() % cap.as_micros().max(1) as u64);
        if attempt == ATTEMPTS_MAX || started.elapsed() + wait >= shared.request_timeout {
            return Reply::err(format!(
                "the script's keys kept changing under it ({attempt} runs); try again"
            ));
        }
        glommio::timer::sleep(wait).await;
        // The replica may lag: the next run reads what the leader knows.
        consistency = ReadConsistency::Linearizable;
    }
}

fn remember_reader(sha: [u8; 20], reader: bool) {
    READERS.with(|r| {
        let mut r = r.borrow_mut();
        if !reader {
            r.remove(&sha);
            return;
        }
        if r.len() >= SCRIPT_CACHE_MAX {
            r.clear();
        }
        r.insert(sha);
    });
}

/// What the connection asks the runner.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    env: u64,
    seed: u64,
    read_only: bool,
    resp3: bool,
    group: GroupId,
    script: Bytes,
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_list(out: &mut BytesMut, items: &[Bytes]) {
    out.put_u32_le(items.len() as u32);
    for i in items {
        put_bytes(out, i);
    }
}

/// A reader of [`put_bytes`] and [`put_list`]'s encodings; `None` on a
/// short or malformed input.
struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32_le())
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        (self.0.remaining() >= n).then(|| self.0.split_to(n))
    }
    fn list(&mut self) -> Option<Vec<Bytes>> {
        let n = self.u32()? as usize;
        // Each item takes at least its 4-byte length.
        if n > self.0.remaining() / 4 {
            return None;
        }
        (0..n).map(|_| self.bytes()).collect()
    }
    fn finish(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

impl Request {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u64_le(self.env);
        out.put_u64_le(self.seed);
        out.put_u8(u8::from(self.read_only) | u8::from(self.resp3) << 1);
        out.put_u64_le(self.group.0);
        put_bytes(&mut out, &self.script);
        put_list(&mut out, &self.keys);
        put_list(&mut out, &self.args);
        out.freeze()
    }

    fn decode(b: Bytes) -> Option<Request> {
        let mut r = Reader(b);
        let env = r.u64()?;
        let seed = r.u64()?;
        let flags = r.u8()?;
        let req = Request {
            env,
            seed,
            read_only: flags & 1 != 0,
            resp3: flags & 2 != 0,
            group: GroupId(r.u64()?),
            script: r.bytes()?,
            keys: r.list()?,
            args: r.list()?,
        };
        r.finish()?;
        Some(req)
    }
}

/// What the runner answers: the reply (encoded for the client), the
/// guards and the commands to propose (none for a script that wrote
/// nothing or failed).
#[derive(Debug, PartialEq)]
struct Answer {
    reply: Bytes,
    guards: Vec<(Bytes, u64)>,
    commands: Vec<KvCommand>,
    /// The reply holds whatever the replica's state: the script did not
    /// compile, or the time limit stopped it (a run on a fresher state
    /// would answer the same, so none is made).
    settled: bool,
}

impl Answer {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(u8::from(self.settled));
        put_bytes(&mut out, &self.reply);
        out.put_u32_le(self.guards.len() as u32);
        for (k, d) in &self.guards {
            put_bytes(&mut out, k);
            out.put_u64_le(*d);
        }
        out.put_u32_le(self.commands.len() as u32);
        for c in &self.commands {
            put_bytes(&mut out, &c.encode());
        }
        out.freeze()
    }

    fn decode(b: Bytes) -> Option<Answer> {
        let mut r = Reader(b);
        let settled = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let reply = r.bytes()?;
        let n = r.u32()? as usize;
        let mut guards = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            guards.push((r.bytes()?, r.u64()?));
        }
        let n = r.u32()? as usize;
        let mut commands = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            commands.push(KvCommand::decode(r.bytes()?).ok()?);
        }
        r.finish()?;
        Some(Answer {
            reply,
            guards,
            commands,
            settled,
        })
    }

    fn reply_only(reply: &Reply, resp3: bool) -> Answer {
        let mut out = BytesMut::new();
        reply.encode_as(&mut out, resp3);
        Answer {
            reply: out.freeze(),
            guards: Vec::new(),
            commands: Vec::new(),
            settled: false,
        }
    }

    fn settled(mut self) -> Answer {
        self.settled = true;
        self
    }
}

/// The [`flotilla_rsm::ScriptRunner`] of this process.
fn run_query(store: &KvStore, payload: &[u8]) -> Bytes {
    let Some(req) = Request::decode(Bytes::copy_from_slice(payload)) else {
        return Answer::reply_only(&Reply::err("malformed script request"), false).encode();
    };
    let Some(shared) = find_env(req.env) else {
        return Answer::reply_only(
            &Reply::err("scripts run only on nodes that serve the Redis protocol"),
            req.resp3,
        )
        .encode();
    };
    let mut conn = Conn::for_script(&shared, req.seed);
    match with_runner(|r| Ok(r.run(store, &req, &mut conn, &shared))) {
        Ok(answer) => answer.encode(),
        Err(e) => Answer::reply_only(&Reply::Error(e), req.resp3).encode(),
    }
}

fn with_runner<T>(f: impl FnOnce(&mut Runner) -> Result<T, String>) -> Result<T, String> {
    RUNNER.with(|r| {
        let mut r = r
            .try_borrow_mut()
            .map_err(|_| "ERR scripts cannot run scripts".to_string())?;
        if r.is_none() {
            *r = Some(Runner::new().map_err(|e| format!("ERR cannot start Lua: {e}"))?);
        }
        f(r.as_mut().expect("just set"))
    })
}

/// A thread's Lua state and compiled scripts.
struct Runner {
    lua: Lua,
    /// The read-only view of the globals every script's own globals fall
    /// back to.
    globals: Table,
    /// The `redis` table behind its read-only view (`call` and `pcall` are
    /// set in it for each run).
    redis: Table,
    /// Compiled scripts by SHA-1, each with its own globals table.
    compiled: HashMap<[u8; 20], (mlua::Function, Table)>,
    /// When the running script must stop (read by the instruction hook).
    deadline: Rc<Cell<Option<Instant>>>,
}

impl Runner {
    fn new() -> mlua::Result<Runner> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::new(),
        )?;
        lua.set_memory_limit(LUA_MEMORY_MAX)?;
        let redis = redis_table(&lua)?;
        lua.globals().raw_set("redis", redis.clone())?;
        lua.globals()
            .raw_set("cjson", super::lua_json::table(&lua)?)?;
        lua.globals().raw_set("bit", super::lua_bit::table(&lua)?)?;
        // Scripts share this state: they see the globals and the libraries
        // through read-only views, and lose what could write around them
        // (`rawset`, function environments, compiling code in the real
        // globals) or reach outside (files, modules, printing).
        let globals: Table = lua.load(SANDBOX).set_name("=sandbox").call(())?;
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let hook_deadline = deadline.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_INSTRUCTIONS),
            move |_, _| match hook_deadline.get() {
                Some(d) if Instant::now() > d => Err(mlua::Error::RuntimeError(format!(
                    "{TIME_LIMIT_MARK}the script ran longer than {} ms and was stopped (it changed nothing)",
                    SCRIPT_RUN_TIME_MAX.as_millis()
                ))),
                _ => Ok(VmState::Continue),
            },
        )?;
        Ok(Runner {
            lua,
            globals,
            redis,
            compiled: HashMap::new(),
            deadline,
        })
    }

    /// Collects Lua's garbage if `failed` or if much is in use. Lua 5.1
    /// collects nothing when an allocation fails: without this, a script
    /// that ran out of memory would leave none to the scripts after it.
    fn tidy(&self, failed: bool) {
        if failed || self.lua.used_memory() > GC_AFTER_BYTES {
            if let Err(e) = self.lua.gc_collect() {
                tracing::warn!(error = %e, "lua: garbage collection failed");
            }
        }
    }

    /// The compiled function of `script` (compiled now if new).
    fn compile(&mut self, script: &[u8]) -> Result<(mlua::Function, Table), String> {
        let sha = sha1_smol::Sha1::from(script).digest().bytes();
        if let Some(f) = self.compiled.get(&sha) {
            return Ok(f.clone());
        }
        let compiled = self.compile_new(script).or_else(|e| match e {
            mlua::Error::MemoryError(_) => {
                self.tidy(true);
                self.compile_new(script)
            }
            e => Err(e),
        });
        let compiled = compiled.map_err(|e| {
            format!(
                "ERR Error compiling script (new function): {}",
                lua_message(&e)
            )
        })?;
        if self.compiled.len() >= SCRIPT_CACHE_MAX {
            self.compiled.clear();
        }
        self.compiled.insert(sha, compiled.clone());
        Ok(compiled)
    }

    /// Compiles `script` with its own globals table.
    fn compile_new(&self, script: &[u8]) -> mlua::Result<(mlua::Function, Table)> {
        let env = self.lua.create_table()?;
        let meta = self.lua.create_table()?;
        meta.raw_set("__index", self.globals.clone())?;
        meta.raw_set(
            "__newindex",
            self.lua
                .create_function(|_, (_t, k, _v): (Value, Value, Value)| {
                    Err::<(), _>(mlua::Error::RuntimeError(format!(
                        "Script attempted to create global variable '{}'",
                        k.to_string().unwrap_or_default()
                    )))
                })?,
        )?;
        env.set_metatable(Some(meta))?;
        let f = self
            .lua
            .load(script)
            .set_name("=user_script")
            .set_environment(env.clone())
            .into_function()?;
        Ok((f, env))
    }

    fn run(&mut self, store: &KvStore, req: &Request, conn: &mut Conn, shared: &Shared) -> Answer {
        let (f, env) = match self.compile(&req.script) {
            Ok(c) => c,
            Err(e) => return Answer::reply_only(&Reply::Error(e), req.resp3).settled(),
        };
        let state = RefCell::new(CallState {
            store,
            scratch: None,
            writes: Vec::new(),
            group: req.group,
            read_only: req.read_only,
            keys: &req.keys,
            conn,
            shared,
        });
        self.deadline
            .set(Some(Instant::now() + SCRIPT_RUN_TIME_MAX));
        let result = self.lua.scope(|scope| {
            for (name, items) in [("KEYS", &req.keys), ("ARGV", &req.args)] {
                let strings = items
                    .iter()
                    .map(|b| self.lua.create_string(b))
                    .collect::<mlua::Result<Vec<_>>>()?;
                env.raw_set(name, self.lua.create_sequence_from(strings)?)?;
            }
            let redis = &self.redis;
            // `redis.call` (set once, in Lua) raises what this returns
            // when it is an error table.
            let pcall = scope.create_function(|lua, args: MultiValue| {
                let reply = state.borrow_mut().call(args);
                to_lua(lua, &reply)
            })?;
            redis.raw_set("pcall", pcall)?;
            let value = f.call::<Value>(())?;
            Ok(from_lua(&value))
        });
        self.deadline.set(None);
        // Scripts must not keep each other's arguments alive.
        let _ = env.raw_set("KEYS", Value::Nil);
        let _ = env.raw_set("ARGV", Value::Nil);
        let stopped = matches!(&result, Err(e) if lua_message(e).contains(TIME_LIMIT_MARK));
        if stopped {
            state
                .borrow()
                .shared
                .scripts
                .stopped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.tidy(result.is_err());
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => error_reply(&e),
        };
        let state = state.into_inner();
        // As in Redis, what a failing script wrote before its error stays
        // (its writes are proposed, its reply is the error); a script the
        // time limit stopped changed nothing.
        let mut answer = Answer::reply_only(&reply, req.resp3);
        answer.settled = stopped;
        if !stopped && !state.writes.is_empty() {
            if state.writes.len() > BATCH_COMMANDS_MAX as usize {
                return Answer::reply_only(
                    &Reply::err(format!(
                        "a script may write at most {BATCH_COMMANDS_MAX} commands"
                    )),
                    req.resp3,
                );
            }
            let mut guards: Vec<(Bytes, u64)> = Vec::with_capacity(req.keys.len());
            for k in &req.keys {
                if guards.iter().any(|(g, _)| g == k) {
                    continue;
                }
                let digest = match store.read(&KvQuery::Digest { key: k.clone() }) {
                    KvResult::Digest(d) => d,
                    _ => 0,
                };
                guards.push((k.clone(), digest));
            }
            answer.guards = guards;
            answer.commands = state.writes;
        }
        answer
    }
}

/// Turns the libraries and the globals into read-only views and removes
/// what scripts must not have; returns the view of the globals.
const SANDBOX: &str = r#"
local function readonly(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k) error("Attempt to modify a readonly table: " .. name, 2) end,
    __metatable = false,
  })
end
for _, lib in ipairs({"string", "table", "math", "redis", "cjson", "bit"}) do
  _G[lib] = readonly(assert(_G[lib], lib), lib)
end
for _, name in ipairs({"dofile", "loadfile", "loadstring", "load", "print", "module",
                       "require", "rawset", "getfenv", "setfenv", "newproxy", "collectgarbage",
                       "gcinfo"}) do
  _G[name] = nil
end
local view = readonly(_G, "_G")
_G._G = view
return view
"#;

/// Starts the message of a `redis.call` error (so the script's reply is
/// that error as Redis gives it, not a Lua error about it).
const CALL_ERROR_MARK: &str = "\u{1}redis:";
/// Starts the message of the time limit's error.
const TIME_LIMIT_MARK: &str = "\u{1}limit:";

/// The innermost message of a Lua error.
fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        mlua::Error::MemoryError(m) => format!("out of memory: {m}"),
        other => other.to_string(),
    }
}

/// The reply of a script that failed with `e`.
fn error_reply(e: &mlua::Error) -> Reply {
    let m = lua_message(e);
    // A redis.call error raised through Lua arrives as a message holding
    // the marker (possibly after Lua's position prefix).
    // (An error text is one line; Lua's traceback follows it.)
    let line = |at: usize| m[at..].lines().next().unwrap_or("").to_string();
    if let Some(at) = m.find(CALL_ERROR_MARK) {
        return Reply::Error(line(at + CALL_ERROR_MARK.len()));
    }
    if let Some(at) = m.find(TIME_LIMIT_MARK) {
        return Reply::Error(format!("BUSY {}", line(at + TIME_LIMIT_MARK.len())));
    }
    Reply::Error(format!(
        "ERR Error running script: {}",
        m.replace(['\r', '\n'], " ")
    ))
}

/// The state of one script's run that `redis.call` works on.
struct CallState<'a> {
    store: &'a KvStore,
    /// The copy the script's writes go to (made at its first write).
    scratch: Option<KvStore>,
    writes: Vec<KvCommand>,
    group: GroupId,
    read_only: bool,
    keys: &'a [Bytes],
    conn: &'a mut Conn,
    shared: &'a Shared,
}

/// Commands a script may not call (they act on the connection, on other
/// groups, on the node, or block).
const DENIED: &[&str] = &[
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "SCRIPT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "RESET",
    "QUIT",
    "HELLO",
    "AUTH",
    "SELECT",
    "CLIENT",
    "CONFIG",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
    "WAIT",
    "SAVE",
    "BGSAVE",
    "SHUTDOWN",
    "MONITOR",
    "SYNC",
    "PSYNC",
    "READONLY",
    "READWRITE",
    "CONSISTENCY",
    "INFO",
    "KEYS",
    "SCAN",
    "DBSIZE",
    "FLUSHALL",
    "FLUSHDB",
    "RANDOMKEY",
    "DEBUG",
    "OBJECT",
    "MEMORY",
];

impl CallState<'_> {
    fn call(&mut self, args: MultiValue) -> Reply {
        let mut argv = Vec::with_capacity(args.len());
        for a in args {
            match a {
                Value::String(s) => argv.push(Bytes::copy_from_slice(&s.as_bytes())),
                Value::Integer(n) => argv.push(Bytes::from(n.to_string())),
                Value::Number(n) => argv.push(Bytes::from(lua_number_text(n))),
                _ => {
                    return Reply::err(
                        "Lua redis lib command arguments must be strings or integers",
                    )
                }
            }
        }
        if argv.is_empty() {
            return Reply::err("Please specify at least one argument for this redis lib call");
        }
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_uppercase();
        if DENIED.contains(&name.as_str()) {
            return Reply::err("This Redis command is not allowed from script");
        }
        match command_keys(&name, &argv) {
            Err(reply) => return reply,
            Ok(keys) => {
                if let Some(k) = keys.iter().find(|k| !self.keys.contains(k)) {
                    return Reply::err(format!(
                        "Script attempted to access key '{}' that is not in KEYS (every key a script touches must be declared)",
                        String::from_utf8_lossy(k)
                    ));
                }
            }
        }
        match command::prepare(argv, self.conn, self.shared) {
            Prepared::Reply(r) => r,
            Prepared::Plan(subs, finish) => {
                let mut results = Vec::with_capacity(subs.len());
                for sub in subs {
                    if sub.group != self.group {
                        return Reply::Error(
                            "CROSSSLOT Script attempted to access keys of another group".into(),
                        );
                    }
                    match sub.op {
                        Op::Read(q) => {
                            let view = self.scratch.as_ref().unwrap_or(self.store);
                            results.push(Ok(view.read(&q)));
                        }
                        Op::Write(cmd) => {
                            if self.read_only {
                                return Reply::err(
                                    "Write commands are not allowed from read-only scripts.",
                                );
                            }
                            let store = self.store;
                            let scratch = self.scratch.get_or_insert_with(|| store.scratch());
                            results.push(Ok(scratch.execute(&cmd)));
                            self.writes.push(cmd);
                        }
                    }
                }
                command::finish_plan(finish, results, self.conn)
            }
            _ => Reply::err("This Redis command is not allowed from script"),
        }
    }
}

/// A Lua number as Redis passes it to a command (integers without a
/// fraction, as Lua 5.1's `%.14g`).
fn lua_number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The keys `argv` (a command, name first) touches, from the command
/// table's key positions and, for commands whose keys move, from their
/// `numkeys`; an error (the reply) if they cannot be told.
fn command_keys<'a>(name: &str, argv: &'a [Bytes]) -> Result<Vec<&'a Bytes>, Reply> {
    let numkeys_at = |at: usize| -> Result<Vec<&'a Bytes>, Reply> {
        let n: usize = argv
            .get(at)
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Reply::err("value is not an integer or out of range"))?;
        argv.get(at + 1..at + 1 + n)
            .map(|keys| keys.iter().collect())
            .ok_or_else(|| Reply::err("Number of keys can't be greater than number of args"))
    };
    let too_few = || {
        Reply::err(format!(
            "wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ))
    };
    match name {
        "SINTERCARD" | "LMPOP" | "ZMPOP" | "ZINTER" | "ZUNION" | "ZDIFF" | "ZINTERCARD" => {
            return numkeys_at(1)
        }
        "ZINTERSTORE" | "ZUNIONSTORE" | "ZDIFFSTORE" => {
            let mut keys = numkeys_at(2)?;
            keys.push(argv.get(1).ok_or_else(too_few)?);
            return Ok(keys);
        }
        "SORT" | "SORT_RO" => {
            let pattern = || {
                Reply::err(
                    "SORT with BY or GET patterns is not allowed from scripts here (the keys they name cannot be checked)",
                )
            };
            let mut keys = vec![argv.get(1).ok_or_else(too_few)?];
            let mut i = 2;
            while i < argv.len() {
                let next = argv.get(i + 1);
                match argv[i].to_ascii_uppercase().as_slice() {
                    // Patterns name other keys: only the "no sort" and
                    // "the element itself" forms can be checked.
                    b"BY" if next.is_some_and(|p| p.contains(&b'*')) => return Err(pattern()),
                    b"GET" if next.is_some_and(|p| &p[..] != b"#") => return Err(pattern()),
                    b"STORE" => keys.push(next.ok_or_else(|| Reply::err("syntax error"))?),
                    _ => {}
                }
                i += 1;
            }
            return Ok(keys);
        }
        _ => {}
    }
    let info = command::find_command(name)
        .ok_or_else(|| Reply::err("Unknown Redis command called from script"))?;
    if info.2.contains(&"movablekeys") {
        return Err(Reply::err(format!(
            "{name} is not allowed from scripts here: the keys it touches cannot be checked"
        )));
    }
    let (first, last, step) = (info.3, info.4, info.5);
    if first <= 0 {
        return Ok(Vec::new());
    }
    let len = argv.len() as i64;
    let last = if last < 0 {
        len + last
    } else {
        last.min(len - 1)
    };
    let mut keys = Vec::new();
    let mut i = first;
    while i <= last && i < len {
        keys.push(&argv[i as usize]);
        i += step.max(1);
    }
    Ok(keys)
}

/// A command's reply as Lua sees it (Redis' RESP2 conversion).
fn to_lua(lua: &Lua, r: &Reply) -> mlua::Result<Value> {
    Ok(match r {
        Reply::Ok => Value::Table(field_table(lua, "ok", "OK")?),
        Reply::Simple(s) => Value::Table(field_table(lua, "ok", s.as_str())?),
        Reply::Error(e) => Value::Table(field_table(lua, "err", e.as_str())?),
        Reply::Int(n) => Value::Integer(*n),
        Reply::Bulk(b) | Reply::Double(b) => Value::String(lua.create_string(b)?),
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Array(items) | Reply::Set(items) | Reply::Push(items) | Reply::Many(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            let t = lua.create_table_with_capacity(pairs.len() * 2, 0)?;
            for (i, (a, b)) in pairs.iter().enumerate() {
                t.raw_set(2 * i + 1, to_lua(lua, a)?)?;
                t.raw_set(2 * i + 2, to_lua(lua, b)?)?;
            }
            Value::Table(t)
        }
        Reply::Raw(_) => Value::Boolean(false),
    })
}

/// `{field = value}`: how Lua holds a status (`ok`) or error (`err`) reply.
fn field_table(lua: &Lua, field: &str, value: impl mlua::IntoLua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(field, value)?;
    Ok(t)
}

/// A script's return value as a reply (Redis' conversion).
fn from_lua(v: &Value) -> Reply {
    match v {
        Value::Nil | Value::Boolean(false) => Reply::Nil,
        Value::Boolean(true) => Reply::Int(1),
        Value::Integer(n) => Reply::Int(*n),
        Value::Number(n) => Reply::Int(if n.is_finite() { *n as i64 } else { 0 }),
        Value::String(s) => Reply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                let e = e.to_string_lossy().replace(['\r', '\n'], " ");
                // As Redis: an error without a code gets ERR.
                let code = e.split(' ').next().unwrap_or("");
                if !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase()) {
                    return Reply::Error(e);
                }
                return Reply::Error(format!("ERR {e}"));
            }
            if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
                return Reply::Simple(s.to_string_lossy().replace(['\r', '\n'], " "));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(v) => items.push(from_lua(&v)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

/// `redis.call`: `redis.pcall`, raising an error reply as Redis does (a
/// table `{err = text}`, which a script's `pcall` catches as such; its
/// string form, which ends the script otherwise, carries
/// [`CALL_ERROR_MARK`] so that the client gets the error as it was).
const REDIS_CALL: &str = r#"
local redis, mark = ...
local raised = {__tostring = function(e) return mark .. e.err end}
return function(...)
  local r = redis.pcall(...)
  if type(r) == "table" and rawget(r, "err") ~= nil then
    error(setmetatable(r, raised), 0)
  end
  return r
end
"#;

/// The `redis` table, without `pcall` (set for each run).
fn redis_table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let call: mlua::Function = lua
        .load(REDIS_CALL)
        .set_name("=redis.call")
        .call((t.clone(), CALL_ERROR_MARK))?;
    t.raw_set("call", call)?;
    for (name, field) in [("error_reply", "err"), ("status_reply", "ok")] {
        t.raw_set(
            name,
            lua.create_function(move |lua, msg: mlua::LuaString| field_table(lua, field, msg))?,
        )?;
    }
    t.raw_set(
        "sha1hex",
        lua.create_function(|_, s: mlua::LuaString| Ok(sha1_hex(&s.as_bytes())))?,
    )?;
    t.raw_set(
        "log",
        lua.create_function(|_, (level, msg): (i64, mlua::LuaString)| {
            tracing::info!(level, message = %msg.to_string_lossy(), "lua script log");
            Ok(())
        })?,
    )?;
    t.raw_set(
        "setresp",
        lua.create_function(|_, v: i64| match v {
            2 => Ok(()),
            _ => Err(mlua::Error::RuntimeError(
                "flotilla scripts see replies as RESP2 only (redis.setresp(2))".into(),
            )),
        })?,
    )?;
    t.raw_set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    t.raw_set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
    for (name, v) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
        ("REPL_NONE", 0),
        ("REPL_SLAVE", 1),
        ("REPL_REPLICA", 1),
        ("REPL_AOF", 2),
        ("REPL_ALL", 3),
    ] {
        t.raw_set(name, v)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_and_refuse_garbage() {
        let req = Request {
            env: 7,
            seed: 9,
            read_only: true,
            resp3: false,
            group: GroupId(12),
            script: Bytes::from_static(b"return 1"),
            keys: vec![Bytes::from_static(b"k")],
            args: vec![Bytes::from_static(b"a"), Bytes::new()],
        };
        let enc = req.encode();
        assert_eq!(Request::decode(enc.clone()), Some(req));
        for cut in 0..enc.len() {
            assert_eq!(Request::decode(enc.slice(..cut)), None, "cut at {cut}");
        }
        let answer = Answer {
            reply: Bytes::from_static(b":1\r\n"),
            guards: vec![(Bytes::from_static(b"k"), 42)],
            commands: vec![KvCommand::Increment {
                key: "k".into(),
                delta: 1,
            }],
            settled: true,
        };
        let enc = answer.encode();
        assert_eq!(Answer::decode(enc.clone()), Some(answer));
        let mut longer = BytesMut::from(&enc[..]);
        longer.put_u8(0);
        assert_eq!(Answer::decode(longer.freeze()), None);
    }

    #[test]
    fn lua_values_convert_as_redis_converts_them() {
        let lua = Lua::new();
        let v: Value = lua
            .load("return {1, 'two', {3}, true, false, 4}")
            .eval()
            .unwrap();
        assert_eq!(
            from_lua(&v),
            Reply::Array(vec![
                Reply::Int(1),
                Reply::text("two"),
                Reply::Array(vec![Reply::Int(3)]),
                Reply::Int(1),
                Reply::Nil,
                Reply::Int(4),
            ])
        );
        let v: Value = lua.load("return 3.99").eval().unwrap();
        assert_eq!(from_lua(&v), Reply::Int(3));
        let v: Value = lua.load("return {err='WRONG thing'}").eval().unwrap();
        assert_eq!(from_lua(&v), Reply::Error("WRONG thing".into()));
        let v: Value = lua.load("return {err='no code'}").eval().unwrap();
        assert_eq!(from_lua(&v), Reply::Error("ERR no code".into()));
        let v: Value = lua.load("return {ok='FINE'}").eval().unwrap();
        assert_eq!(from_lua(&v), Reply::Simple("FINE".into()));
        let back = to_lua(&lua, &Reply::Array(vec![Reply::Int(5), Reply::Nil])).unwrap();
        assert_eq!(
            from_lua(&back),
            Reply::Array(vec![Reply::Int(5), Reply::Nil])
        );
    }

    #[test]
    fn keys_come_from_the_command_table() {
        let argv = |s: &str| {
            s.split(' ')
                .map(|w| Bytes::from(w.to_string()))
                .collect::<Vec<_>>()
        };
        let keys = |s: &str| {
            let a = argv(s);
            let name = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
            command_keys(&name, &a).ok().map(|k| {
                k.iter()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(keys("get a"), Some(vec!["a".to_string()]));
        assert_eq!(
            keys("mset a 1 b 2"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            keys("del a b c"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            keys("zunionstore d 2 a b"),
            Some(vec!["a".into(), "b".into(), "d".into()])
        );
        assert_eq!(keys("ping"), Some(vec![]));
        assert_eq!(keys("sort l by w_*"), None);
        assert_eq!(keys("zintercard x a"), None, "numkeys not a number");
        assert_eq!(keys("zintercard 3 a b"), None, "fewer keys than numkeys");
        assert_eq!(keys("nosuchcommand a"), None);
        let err = |s: &str| {
            let a = argv(s);
            let name = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
            command_keys(&name, &a).unwrap_err()
        };
        assert_eq!(
            err("nosuch a"),
            Reply::err("Unknown Redis command called from script")
        );
        assert_eq!(
            err("zintercard x a"),
            Reply::err("value is not an integer or out of range")
        );
        assert_eq!(keys("sort l store d"), Some(vec!["l".into(), "d".into()]));
    }
}
