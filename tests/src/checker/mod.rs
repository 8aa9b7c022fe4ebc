//! A Jepsen-style history checker for the KV store: linearizability of
//! integer registers, per key.
//!
//! A client test records every operation it issues as one [`Op`]: which
//! logical process issued it, the key, the call ([`Call`]), when it was
//! invoked and when it completed, and its [`Outcome`]:
//!
//! - `Ok(ret)`: the server answered; `ret` is what it answered.
//! - `Fail`: the operation definitely did not take effect (the server said
//!   so); the checker drops it.
//! - `Info`: the outcome is unknown (timeout, connection reset, node
//!   killed): it may or may not have taken effect, at any time after its
//!   invocation. The checker treats it as completing at +infinity with an
//!   unknown result. An `Info` read has no effect and is dropped.
//!
//! [`check`] splits the history by key (linearizability is compositional:
//! a history is linearizable iff every key's sub-history is) and searches
//! each key's sub-history for a linearization with the algorithm of Wing &
//! Gong as improved by Lowe (and implemented by Knossos and porcupine):
//! depth-first over the call/return events in real-time order, memoising
//! every visited (set of linearized ops, register state) pair so that no
//! configuration is explored twice. The search is bounded
//! ([`CheckLimits`]); a key whose search exceeds the bound is reported as
//! inconclusive, never as linearizable.
//!
//! ```text
//!  time ─────────────────────────────────────────────────────────►
//!  p1  |── write 3 ──|
//!  p2        |──────── read → 3 ───────|
//!  p3                  |── write 4 ─?    (info: maybe applied, at any
//!                                          time after its invocation)
//!  p1                          |── read → 4 ──|
//!  one linearization: write 3 · read→3 · write 4 · read→4
//! ```
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use flotilla_tests::checker::{check, Call, CheckLimits, Op, Outcome, Ret};
//!
//! let ms = Duration::from_millis;
//! let history = vec![
//!     Op::new(1, "k", Call::Write(3), ms(0), Some(ms(10)), Outcome::Ok(Ret::Unit)),
//!     // A read that starts after the write completed must see it.
//!     Op::new(2, "k", Call::Read, ms(20), Some(ms(30)), Outcome::Ok(Ret::Value(None))),
//! ];
//! let report = check(&history, &CheckLimits::default());
//! assert!(!report.is_valid());
//! println!("{report}"); // names the key and the ops that cannot be linearized
//! ```

mod model;
mod wgl;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use model::{apply, step, State};
pub use wgl::{check_key, CheckLimits, KeyResult, Violation};

/// What an operation asked for. Registers hold an `i64` or are absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `GET`: returns [`Ret::Value`].
    Read,
    /// `SET key v`: returns [`Ret::Unit`].
    Write(i64),
    /// `DEL key`: returns [`Ret::Int`] (keys removed, 0 or 1).
    Delete,
    /// `INCRBY key d` (absent counts as 0): returns [`Ret::Int`], the new
    /// value.
    Incr(i64),
    /// `GETSET key v` / `SET key v GET`: returns [`Ret::Value`], the
    /// previous value.
    Swap(i64),
    /// `SETNX key v`: returns [`Ret::Bool`] (whether it was set).
    SetNx(i64),
    /// Compare-and-set: set `new` if the value is `expect` (`None`: absent);
    /// returns [`Ret::Bool`].
    Cas {
        /// Expected current value.
        expect: Option<i64>,
        /// Value to set.
        new: i64,
    },
}

/// What the server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// Nothing but success (`+OK`).
    Unit,
    /// A value or absent (nil).
    Value(Option<i64>),
    /// An integer.
    Int(i64),
    /// A yes/no answer.
    Bool(bool),
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed with this answer.
    Ok(Ret),
    /// Definitely not applied.
    Fail,
    /// Unknown: maybe applied (at any time after the invocation), maybe
    /// not.
    Info,
}

/// One operation of a history. Times are offsets from the history's start
/// on one monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Logical process (client) that issued it.
    pub process: u64,
    /// The key (register) it touched.
    pub key: String,
    /// What it asked for.
    pub call: Call,
    /// When it was invoked.
    pub invoke: Duration,
    /// When it completed; `None`: never (an `Info` op whose client gave up).
    pub complete: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// An op; see the fields.
    pub fn new(
        process: u64,
        key: &str,
        call: Call,
        invoke: Duration,
        complete: Option<Duration>,
        outcome: Outcome,
    ) -> Op {
        Op {
            process,
            key: key.to_string(),
            call,
            invoke,
            complete,
            outcome,
        }
    }
}

fn fmt_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Read => write!(f, "read"),
            Call::Write(v) => write!(f, "write {v}"),
            Call::Delete => write!(f, "delete"),
            Call::Incr(d) => write!(f, "incr {d}"),
            Call::Swap(v) => write!(f, "swap {v}"),
            Call::SetNx(v) => write!(f, "setnx {v}"),
            Call::Cas { expect, new } => write!(f, "cas {} {new}", fmt_opt(*expect)),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Unit => write!(f, "ok"),
            Ret::Value(v) => write!(f, "value {}", fmt_opt(*v)),
            Ret::Int(i) => write!(f, "int {i}"),
            Ret::Bool(b) => write!(f, "bool {b}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(r) => write!(f, "{r}"),
            Outcome::Fail => write!(f, "fail"),
            Outcome::Info => write!(f, "info"),
        }
    }
}

/// One line of the history file format:
///
/// ```text
/// <process> <key> <invoke_ns> <complete_ns|inf> <call> -> <outcome>
/// 3 k7 1200345 1900877 write 3000012 -> ok
/// 5 k2 1300000 inf incr 1 -> info
/// 1 k2 1400000 1500000 read -> value nil
/// 2 k1 1400000 1500000 cas nil 4 -> bool true
/// ```
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = self
            .complete
            .map_or_else(|| "inf".to_string(), |c| c.as_nanos().to_string());
        write!(
            f,
            "{} {} {} {} {} -> {}",
            self.process,
            self.key,
            self.invoke.as_nanos(),
            complete,
            self.call,
            self.outcome
        )
    }
}

/// A line of a history file that does not parse.
#[derive(Debug)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line.
    pub text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history line {}: {}: {:?}",
            self.line, self.reason, self.text
        )
    }
}

impl std::error::Error for ParseError {}

fn parse_opt(s: &str) -> Option<Option<i64>> {
    if s == "nil" {
        Some(None)
    } else {
        s.parse().ok().map(Some)
    }
}

impl Op {
    /// Parses one line written by `Display` (the history file format).
    ///
    /// # Errors
    /// [`ParseError`] naming what is malformed.
    pub fn parse(line_no: usize, line: &str) -> Result<Op, ParseError> {
        let err = |reason| ParseError {
            line: line_no,
            reason,
            text: line.to_string(),
        };
        let (left, outcome) = line.split_once(" -> ").ok_or_else(|| err("no ' -> '"))?;
        let mut w = left.split_whitespace();
        let process = w.next().and_then(|s| s.parse().ok());
        let key = w.next();
        let invoke = w.next().and_then(|s| s.parse::<u64>().ok());
        let complete = match w.next() {
            Some("inf") => Some(None),
            Some(s) => s.parse::<u64>().ok().map(|n| Some(Duration::from_nanos(n))),
            None => None,
        };
        let (Some(process), Some(key), Some(invoke), Some(complete)) =
            (process, key, invoke, complete)
        else {
            return Err(err("bad process, key or times"));
        };
        let words: Vec<&str> = w.collect();
        let int = |s: Option<&&str>| s.and_then(|s| s.parse::<i64>().ok());
        let call = match words.as_slice() {
            ["read"] => Some(Call::Read),
            ["delete"] => Some(Call::Delete),
            ["write", v] => int(Some(v)).map(Call::Write),
            ["incr", v] => int(Some(v)).map(Call::Incr),
            ["swap", v] => int(Some(v)).map(Call::Swap),
            ["setnx", v] => int(Some(v)).map(Call::SetNx),
            ["cas", e, n] => match (parse_opt(e), int(Some(n))) {
                (Some(expect), Some(new)) => Some(Call::Cas { expect, new }),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| err("bad call"))?;
        let o: Vec<&str> = outcome.split_whitespace().collect();
        let outcome = match o.as_slice() {
            ["ok"] => Some(Outcome::Ok(Ret::Unit)),
            ["fail"] => Some(Outcome::Fail),
            ["info"] => Some(Outcome::Info),
            ["value", v] => parse_opt(v).map(|v| Outcome::Ok(Ret::Value(v))),
            ["int", v] => v.parse().ok().map(|v| Outcome::Ok(Ret::Int(v))),
            ["bool", v] => v.parse().ok().map(|v| Outcome::Ok(Ret::Bool(v))),
            _ => None,
        }
        .ok_or_else(|| err("bad outcome"))?;
        Ok(Op {
            process,
            key: key.to_string(),
            call,
            invoke: Duration::from_nanos(invoke),
            complete,
            outcome,
        })
    }
}

/// Parses a whole history file (blank lines and `#` comments skipped).
///
/// # Errors
/// The first malformed line.
pub fn parse_history(text: &str) -> Result<Vec<Op>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| Op::parse(i + 1, l))
        .collect()
}

/// Renders a history in the file format, one op per line, sorted by
/// invocation time.
pub fn format_history(history: &[Op]) -> String {
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|o| o.invoke);
    let mut out = String::new();
    for op in ops {
        out.push_str(&op.to_string());
        out.push('\n');
    }
    out
}

/// Records a history from many client threads: [`Recorder::invoke`] before
/// sending a request, [`Recorder::complete`] with its outcome.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

/// Handle of an invoked, not yet completed op.
#[derive(Debug)]
#[must_use = "complete the op, or it stays invoked with an unknown outcome"]
pub struct Pending(usize);

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Time since the history started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records the invocation of `call` on `key` by `process`. Until it is
    /// completed, the op's outcome is `Info` with no completion.
    pub fn invoke(&self, process: u64, key: &str, call: Call) -> Pending {
        let mut ops = self.ops.lock().expect("recorder lock");
        // The clock is read under the lock so that ops are stored in
        // invocation order.
        let invoke = self.start.elapsed();
        ops.push(Op::new(process, key, call, invoke, None, Outcome::Info));
        Pending(ops.len() - 1)
    }

    /// Records how `pending` ended and returns the completed op. An `Info`
    /// outcome keeps no completion time (it may take effect at any later
    /// time).
    pub fn complete(&self, pending: Pending, outcome: Outcome) -> Op {
        let complete = self.start.elapsed();
        let mut ops = self.ops.lock().expect("recorder lock");
        let op = &mut ops[pending.0];
        op.outcome = outcome;
        op.complete = match outcome {
            Outcome::Info => None,
            _ => Some(complete),
        };
        op.clone()
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().expect("recorder lock").clone()
    }
}

/// The verdict on a whole history.
#[derive(Debug)]
pub struct Report {
    /// Ops in the history.
    pub ops: usize,
    /// Per key, in key order.
    pub keys: BTreeMap<String, KeyResult>,
}

impl Report {
    /// Every key linearizable (none violated, none inconclusive).
    pub fn is_valid(&self) -> bool {
        self.keys
            .values()
            .all(|r| matches!(r, KeyResult::Linearizable { .. }))
    }

    /// Keys that are not linearizable, with their violation.
    pub fn violations(&self) -> impl Iterator<Item = (&String, &Violation)> {
        self.keys.iter().filter_map(|(k, r)| match r {
            KeyResult::Violation(v) => Some((k, &**v)),
            _ => None,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad = self
            .keys
            .values()
            .filter(|r| !matches!(r, KeyResult::Linearizable { .. }))
            .count();
        writeln!(
            f,
            "{} ops over {} keys: {}",
            self.ops,
            self.keys.len(),
            if bad == 0 {
                "linearizable".to_string()
            } else {
                format!("{bad} key(s) NOT shown linearizable")
            }
        )?;
        for (key, r) in &self.keys {
            match r {
                KeyResult::Linearizable { configurations } => {
                    writeln!(f, "  key {key}: linearizable ({configurations} configurations)")?
                }
                KeyResult::Inconclusive { configurations } => writeln!(
                    f,
                    "  key {key}: INCONCLUSIVE: search bound hit after {configurations} configurations"
                )?,
                KeyResult::Violation(v) => write!(f, "{v}")?,
            }
        }
        Ok(())
    }
}

/// Checks every key of `history` for linearizability (keys in parallel
/// threads, at most `limits.threads` at a time).
pub fn check(history: &[Op], limits: &CheckLimits) -> Report {
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let keys: Vec<(String, Vec<Op>)> = by_key.into_iter().collect();
    let threads = limits.threads.max(1);
    let mut results = BTreeMap::new();
    for chunk in keys.chunks(threads) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(k, ops)| (k, s.spawn(move || check_key(k, ops, limits))))
                .collect();
            for (k, h) in handles {
                results.insert(k.clone(), h.join().expect("checker thread"));
            }
        });
    }
    Report {
        ops: history.len(),
        keys: results,
    }
}

/// A lost acknowledged write, found by [`lost_writes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    /// The acknowledged write (or swap, or successful setnx/cas).
    pub write: Op,
    /// The final read of its key.
    pub final_read: Op,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LOST WRITE on key {}: acknowledged [{}], but the final read [{}] returned another value and no op that could have overwritten it ran after the write",
            self.write.key, self.write, self.final_read
        )
    }
}

/// True when `op` may have changed the register (so may have overwritten
/// an earlier write).
fn may_write(op: &Op) -> bool {
    let no_effect = matches!(
        (op.call, op.outcome),
        (Call::Read, _)
            | (_, Outcome::Fail)
            | (
                Call::SetNx(_) | Call::Cas { .. },
                Outcome::Ok(Ret::Bool(false))
            )
            | (Call::Delete, Outcome::Ok(Ret::Int(0)))
    );
    !no_effect
}

/// Lost-write check (a necessary condition of linearizability, with a
/// more direct report): for every key with a final read (`final_reads`,
/// one per key, issued after every other op of that key completed or was
/// given up), every acknowledged write that set the register to a value
/// must either be what the final read returned, or some other op that may
/// have written the key must be able to follow it in real time (not have
/// completed before the write was invoked).
pub fn lost_writes(history: &[Op], final_reads: &[Op]) -> Vec<LostWrite> {
    let mut lost = Vec::new();
    for fr in final_reads {
        let Outcome::Ok(Ret::Value(final_value)) = fr.outcome else {
            continue;
        };
        let same_key: Vec<&Op> = history.iter().filter(|o| o.key == fr.key).collect();
        for w in &same_key {
            let wrote = match (w.call, w.outcome) {
                (Call::Write(v) | Call::Swap(v), Outcome::Ok(_)) => Some(v),
                (Call::SetNx(v), Outcome::Ok(Ret::Bool(true))) => Some(v),
                (Call::Cas { new, .. }, Outcome::Ok(Ret::Bool(true))) => Some(new),
                _ => None,
            };
            let Some(v) = wrote else { continue };
            if final_value == Some(v) {
                continue;
            }
            let w_invoke = w.invoke;
            let overwritten = same_key.iter().any(|o| {
                !std::ptr::eq(*o, *w)
                    && may_write(o)
                    && o.complete.is_none_or(|c| c >= w_invoke)
                    && o.invoke <= fr.complete.unwrap_or(Duration::MAX)
            });
            if !overwritten {
                lost.push(LostWrite {
                    write: (*w).clone(),
                    final_read: fr.clone(),
                });
            }
        }
    }
    lost
}
