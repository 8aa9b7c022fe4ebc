//! The sequential specification: one integer register that may be absent,
//! with the semantics the Redis commands of the workload have.

use super::{Call, Ret};

/// The register: absent or an integer.
pub type State = Option<i64>;

/// What `call` does in `state`: the state after it and its answer (`None`:
/// the server refuses it, changing nothing, e.g. an increment that would
/// overflow; the workload never gets near that).
pub fn apply(state: State, call: Call) -> (State, Option<Ret>) {
    match call {
        Call::Read => (state, Some(Ret::Value(state))),
        Call::Write(v) => (Some(v), Some(Ret::Unit)),
        Call::Delete => (None, Some(Ret::Int(i64::from(state.is_some())))),
        Call::Incr(d) => match state.unwrap_or(0).checked_add(d) {
            Some(n) => (Some(n), Some(Ret::Int(n))),
            None => (state, None),
        },
        Call::Swap(v) => (Some(v), Some(Ret::Value(state))),
        Call::SetNx(v) => match state {
            None => (Some(v), Some(Ret::Bool(true))),
            Some(_) => (state, Some(Ret::Bool(false))),
        },
        Call::Cas { expect, new } => {
            if state == expect {
                (Some(new), Some(Ret::Bool(true)))
            } else {
                (state, Some(Ret::Bool(false)))
            }
        }
    }
}

/// Applies `call` to `state` as the single-threaded server would.
///
/// `ret` is what the server answered, `None` if unknown (an `Info` op).
/// Returns the state after the op if the answer is what the specification
/// produces from `state` (an unknown answer always matches), `None` if the
/// op cannot have answered `ret` in `state`.
pub fn step(state: State, call: Call, ret: Option<Ret>) -> Option<State> {
    let (next, expected) = apply(state, call);
    match ret {
        None => Some(next),
        Some(r) if Some(r) == expected => Some(next),
        Some(_) => None,
    }
}
