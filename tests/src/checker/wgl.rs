//! The linearizability search of one key's sub-history (Wing & Gong with
//! Lowe's memoisation, as in Knossos' `wgl` and porcupine).
//!
//! ```text
//!  events, sorted by time (a call before a return at the same instant):
//!    call a · call b · ret a · call c · ret b · ret c · ret d(+inf) ...
//!  walk the list from its head:
//!    at a call:   if the op can take effect now (the model accepts its
//!                 answer) and (linearized ∪ {op}, new state) was never
//!                 seen: linearize it (push, unlink its call and return),
//!                 restart from the head; else try the next call
//!    at a return: that op had to take effect before here and none of the
//!                 ways tried worked: pop the last linearized op, relink
//!                 it, and try the call after it
//!  success: every op with a known outcome is linearized
//!  failure: a return is reached with nothing left to pop
//! ```
//!
//! Ops with an unknown outcome return at +infinity (after every real
//! return), so they may be linearized anywhere after their call, or left
//! for the end where they change nothing that anyone observed.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use super::model::{apply, step, State};
use super::{Call, Op, Outcome, Ret};

/// Bounds of the search.
#[derive(Clone, Debug)]
pub struct CheckLimits {
    /// Most distinct configurations (linearized set, state) one key may
    /// visit before its result is `Inconclusive`.
    pub configurations_max: u64,
    /// Most bytes the memo of one key may hold (each configuration keeps
    /// its set of linearized ops: one bit per op); the effective bound on
    /// configurations is the smaller of the two.
    pub memo_bytes_max: u64,
    /// Keys checked at once.
    pub threads: usize,
}

impl Default for CheckLimits {
    fn default() -> CheckLimits {
        CheckLimits {
            configurations_max: 2_000_000,
            memo_bytes_max: 1 << 30,
            threads: 2,
        }
    }
}

/// The verdict on one key.
#[derive(Debug)]
pub enum KeyResult {
    /// A linearization exists.
    Linearizable {
        /// Configurations the search visited.
        configurations: u64,
    },
    /// The search bound was hit: neither shown linearizable nor not.
    Inconclusive {
        /// Configurations the search visited.
        configurations: u64,
    },
    /// No linearization exists.
    Violation(Box<Violation>),
}

/// Why a key's history is not linearizable: the longest linearizable
/// prefix the search found and the op that cannot follow it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Ops of the key's sub-history the search considered (fails and
    /// unknown reads dropped).
    pub ops: usize,
    /// The longest linearizable prefix found, in linearization order, with
    /// the register's state after each op.
    pub prefix: Vec<(Op, State)>,
    /// The op whose completion came before it could take effect: no
    /// pending op can be linearized next without contradicting an answer.
    pub blocking: Op,
    /// The ops not in the prefix that were invoked before `blocking`
    /// completed (the candidates for the next place), by invocation.
    pub pending: Vec<Op>,
    /// The window of the failure: every op whose interval meets
    /// [earliest invocation of `blocking` and `pending` ops, completion of
    /// `blocking`], by invocation, each with its position in the prefix
    /// (`None`: not linearized).
    pub window: Vec<(Op, Option<usize>)>,
    /// The register's state before the first prefix op of the window.
    pub state_before_window: State,
}

impl Violation {
    /// The register's state after the prefix.
    pub fn state(&self) -> State {
        self.prefix.last().and_then(|(_, s)| *s)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn describe(op: &Op) -> String {
    let complete = op.complete.map_or_else(|| "?".to_string(), ms);
    format!(
        "p{} [{} .. {}] {} -> {}",
        op.process,
        ms(op.invoke),
        complete,
        op.call,
        op.outcome
    )
}

fn state_text(s: State) -> String {
    s.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

/// How many prefix ops and pending ops a report shows.
const REPORT_PREFIX_OPS: usize = 12;
const REPORT_PENDING_OPS: usize = 24;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  key {}: NOT LINEARIZABLE ({} ops considered; longest linearizable prefix {} ops)",
            self.key,
            self.ops,
            self.prefix.len()
        )?;
        let first_in_window = self
            .window
            .iter()
            .filter_map(|(_, p)| *p)
            .min()
            .unwrap_or(self.prefix.len());
        let shown = first_in_window.min(REPORT_PREFIX_OPS / 2);
        writeln!(
            f,
            "    prefix before the window, last {shown} ops (=> state after):"
        )?;
        for (op, s) in &self.prefix[first_in_window - shown..first_in_window] {
            writeln!(f, "      {}  => {}", describe(op), state_text(*s))?;
        }
        writeln!(
            f,
            "    state before the window: {}",
            state_text(self.state_before_window)
        )?;
        writeln!(
            f,
            "    window ({} ops; #n: n-th op of the longest prefix, ----: not linearizable there):",
            self.window.len()
        )?;
        for (op, pos) in self.window.iter().take(REPORT_PENDING_OPS) {
            let mark = if *op == self.blocking {
                "BLOCKING".to_string()
            } else {
                pos.map_or_else(|| "----".to_string(), |p| format!("#{}", p + 1))
            };
            let after = pos
                .map(|p| format!("  => {}", state_text(self.prefix[p].1)))
                .unwrap_or_default();
            writeln!(f, "      {mark:>8} {}{after}", describe(op))?;
        }
        if self.window.len() > REPORT_PENDING_OPS {
            writeln!(
                f,
                "      ... {} more",
                self.window.len() - REPORT_PENDING_OPS
            )?;
        }
        let state = self.state();
        let (_, would) = apply(state, self.blocking.call);
        writeln!(
            f,
            "    after the prefix (state {}), the blocking op would answer {}; no pending op can go first without contradicting an answer",
            state_text(state),
            would.map_or_else(|| "an error".to_string(), |r| r.to_string())
        )
    }
}

/// Identity hasher for the Zobrist keys of the cache.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b) ^ (self.0 >> 56);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn state_hash(s: State) -> u64 {
    match s {
        None => 0x5555_0000_AAAA_FFFF,
        Some(v) => splitmix(v as u64 ^ 0x1234_5678),
    }
}

/// The set of linearized ops with a known outcome, numbered in
/// invocation order. Such a set is mostly a prefix: it is kept as a
/// bitset plus the first op not in it (`low`), and memoised compactly as
/// `low` and the members above it.
struct KnownSet {
    bits: Vec<u64>,
    low: usize,
}

impl KnownSet {
    fn flip(&mut self, b: usize) {
        self.bits[b / 64] ^= 1 << (b % 64);
        if self.contains(b) {
            if b == self.low {
                while self.contains(self.low) {
                    self.low += 1;
                }
            }
        } else if b < self.low {
            self.low = b;
        }
    }

    fn contains(&self, b: usize) -> bool {
        self.bits
            .get(b / 64)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// The members above `low`, into `out`.
    fn above_low(&self, out: &mut Vec<u32>) {
        out.clear();
        for (w, &word) in self.bits.iter().enumerate().skip(self.low / 64) {
            let mut word = word;
            while word != 0 {
                let bit = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                if bit > self.low {
                    out.push(bit as u32);
                }
            }
        }
    }
}

/// The memo of visited configurations: (linearized ops with a known
/// outcome as `low` + members above it, linearized unknown-outcome ops,
/// state), found by their Zobrist hash.
struct Cache {
    map: HashMap<u64, Vec<u32>, BuildHasherDefault<IdHasher>>,
    keys: Vec<Configuration>,
    bytes: u64,
}

/// (first known op not linearized, known ops linearized above it, unknown
/// ops linearized, state).
type Configuration = (u32, Box<[u32]>, Box<[u64]>, State);

impl Cache {
    /// Records a configuration; false if it was visited before.
    fn insert(
        &mut self,
        hash: u64,
        low: usize,
        above: &[u32],
        unknown: &[u64],
        state: State,
    ) -> bool {
        let h = hash ^ state_hash(state);
        let slot = self.map.entry(h).or_default();
        let seen = slot.iter().any(|&i| {
            let (l, k, u, s) = &self.keys[i as usize];
            *s == state && *l as usize == low && **k == *above && **u == *unknown
        });
        if seen {
            return false;
        }
        slot.push(self.keys.len() as u32);
        self.keys
            .push((low as u32, above.into(), unknown.into(), state));
        self.bytes += 72 + 4 * above.len() as u64 + 8 * unknown.len() as u64;
        true
    }
}

const NIL: usize = usize::MAX;

/// Checks one key's ops (all of `ops` must be of `key`).
pub fn check_key(key: &str, ops: &[Op], limits: &CheckLimits) -> KeyResult {
    // Fails never happened; an unknown read changed nothing.
    let ops: Vec<Op> = ops
        .iter()
        .filter(|o| {
            debug_assert_eq!(o.key, key);
            match o.outcome {
                Outcome::Fail => false,
                Outcome::Info => o.call != Call::Read,
                Outcome::Ok(_) => true,
            }
        })
        .cloned()
        .collect();
    let mut ops = ops;
    ops.sort_by_key(|o| o.invoke);
    let n = ops.len();
    let ret_of = |o: &Op| -> Option<Ret> {
        match o.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    };
    let known = |o: &Op| matches!(o.outcome, Outcome::Ok(_));
    let time = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1);

    // Events: (time, 0 = call / 1 = return, op). Unknown ops return at
    // +infinity; an op completed must not be recorded before its call.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        let invoke = time(o.invoke);
        let complete = match (o.outcome, o.complete) {
            (Outcome::Ok(_), Some(c)) => time(c).max(invoke),
            _ => u64::MAX,
        };
        events.push((invoke, 0, i));
        events.push((complete, 1, i));
    }
    events.sort_unstable();
    // Doubly linked list over the events; node `head` is the sentinel.
    let head = events.len();
    let mut next = vec![NIL; events.len() + 1];
    let mut prev = vec![NIL; events.len() + 1];
    let mut ret_node = vec![NIL; n];
    let mut call_node = vec![NIL; n];
    let mut last = head;
    for (ix, &(_, kind, op)) in events.iter().enumerate() {
        next[last] = ix;
        prev[ix] = last;
        last = ix;
        if kind == 0 {
            call_node[op] = ix;
        } else {
            ret_node[op] = ix;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = x;
        if q != NIL {
            prev[q] = x;
        }
    };

    // Ops with a known outcome and unknown ones are numbered apart.
    let mut slot_of = vec![0usize; n];
    let (mut known_count, mut unknown_count) = (0usize, 0usize);
    for (i, o) in ops.iter().enumerate() {
        if known(o) {
            slot_of[i] = known_count;
            known_count += 1;
        } else {
            slot_of[i] = unknown_count;
            unknown_count += 1;
        }
    }
    let zobrist: Vec<u64> = (0..n as u64).map(|i| splitmix(i ^ 0xDEAD_BEEF)).collect();
    let mut cache = Cache {
        map: HashMap::default(),
        keys: Vec::new(),
        bytes: 0,
    };
    let known_words = known_count.div_ceil(64).max(1);
    let unknown_words = unknown_count.div_ceil(64).max(1);
    let mut known_set = KnownSet {
        bits: vec![0u64; known_words],
        low: 0,
    };
    let mut above = Vec::new();
    let mut unknown_set = vec![0u64; unknown_words];
    let flip = |known_set: &mut KnownSet, unknown_set: &mut Vec<u64>, op: usize| {
        let b = slot_of[op];
        if known(&ops[op]) {
            known_set.flip(b);
        } else {
            unknown_set[b / 64] ^= 1 << (b % 64);
        }
    };
    let mut hash = 0u64;
    let mut state: State = None;
    // Linearized ops: (op, state before it, pass it was chosen in).
    let mut stack: Vec<(usize, State, u8)> = Vec::new();
    let mut known_left = known_count;
    let mut configurations = 0u64;
    let mut best: Option<(Vec<usize>, usize)> = None;
    let mut entry = next[head];
    // The candidates to go next are the calls before the first return in
    // the list; pass 0 tries those with a known outcome, pass 1 the
    // unknown ones: an order that needs no unknown op is found first, and
    // an unknown op is placed only where an answer needs it.
    let mut pass = 0u8;
    loop {
        if known_left == 0 {
            return KeyResult::Linearizable { configurations };
        }
        if entry == NIL {
            // Unreachable: every call has a return after it.
            debug_assert!(false, "walked off the event list");
            break;
        }
        let (_, kind, op) = events[entry];
        if kind == 0 {
            let o = &ops[op];
            if known(o) == (pass == 0) {
                if let Some(after) = step(state, o.call, ret_of(o)) {
                    flip(&mut known_set, &mut unknown_set, op);
                    let h = hash ^ zobrist[op];
                    known_set.above_low(&mut above);
                    if cache.insert(h, known_set.low, &above, &unknown_set, after) {
                        configurations += 1;
                        if configurations > limits.configurations_max
                            || cache.bytes > limits.memo_bytes_max
                        {
                            return KeyResult::Inconclusive { configurations };
                        }
                        stack.push((op, state, pass));
                        state = after;
                        hash = h;
                        if known(o) {
                            known_left -= 1;
                        }
                        unlink(&mut next, &mut prev, entry);
                        unlink(&mut next, &mut prev, ret_node[op]);
                        entry = next[head];
                        pass = 0;
                        continue;
                    }
                    flip(&mut known_set, &mut unknown_set, op);
                }
            }
            entry = next[entry];
        } else if pass == 0 {
            pass = 1;
            entry = next[head];
        } else {
            // `op` completed and every way of placing it before here failed.
            debug_assert!(known(&ops[op]), "unknown ops return after all others");
            if best.as_ref().is_none_or(|(p, _)| stack.len() > p.len()) {
                best = Some((stack.iter().map(|(o, _, _)| *o).collect(), op));
            }
            let Some((top, before, top_pass)) = stack.pop() else {
                break;
            };
            flip(&mut known_set, &mut unknown_set, top);
            hash ^= zobrist[top];
            if known(&ops[top]) {
                known_left += 1;
            }
            state = before;
            relink(&mut next, &mut prev, ret_node[top]);
            relink(&mut next, &mut prev, call_node[top]);
            entry = next[call_node[top]];
            pass = top_pass;
        }
    }
    let (order, blocking) = best.expect("a failed search hit a return");
    let mut s: State = None;
    let prefix: Vec<(Op, State)> = order
        .iter()
        .map(|&i| {
            s = step(s, ops[i].call, ret_of(&ops[i])).expect("prefix replays");
            (ops[i].clone(), s)
        })
        .collect();
    let in_prefix: std::collections::HashSet<usize> = order.iter().copied().collect();
    let blocking_op = ops[blocking].clone();
    let until = blocking_op.complete.unwrap_or(Duration::MAX);
    let mut pending: Vec<Op> = (0..n)
        .filter(|i| !in_prefix.contains(i) && *i != blocking && ops[*i].invoke <= until)
        .map(|i| ops[i].clone())
        .collect();
    pending.sort_by_key(|o| o.invoke);
    let from = pending
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .map(|o| o.invoke)
        .chain([blocking_op.invoke])
        .min()
        .unwrap_or(blocking_op.invoke);
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    // The last prefix position of an op that completed before the window.
    let base = order
        .iter()
        .enumerate()
        .filter(|(_, &i)| {
            matches!(ops[i].outcome, Outcome::Ok(_)) && ops[i].complete.is_some_and(|c| c < from)
        })
        .map(|(p, _)| p)
        .max();
    let mut window: Vec<(Op, Option<usize>)> = (0..n)
        .filter(|&i| {
            let o = &ops[i];
            let end = match o.outcome {
                Outcome::Ok(_) => o.complete.unwrap_or(Duration::MAX),
                _ => Duration::MAX,
            };
            o.invoke <= until && end >= from
        })
        // Unknown ops stretch to +infinity: only those invoked inside the
        // window, or linearized after every op that completed before it.
        .filter(|&i| {
            matches!(ops[i].outcome, Outcome::Ok(_))
                || ops[i].invoke >= from
                || position
                    .get(&i)
                    .is_some_and(|&p| base.is_none_or(|b| p > b))
        })
        .map(|i| (ops[i].clone(), position.get(&i).copied()))
        .collect();
    window.sort_by_key(|(o, _)| o.invoke);
    let first = window.iter().filter_map(|(_, p)| *p).min();
    let state_before_window = match first {
        Some(0) => None,
        Some(p) => prefix[p - 1].1,
        None => prefix.last().and_then(|(_, s)| *s),
    };
    KeyResult::Violation(Box::new(Violation {
        key: key.to_string(),
        ops: n,
        prefix,
        blocking: blocking_op,
        pending,
        window,
        state_before_window,
    }))
}
