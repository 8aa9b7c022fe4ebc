//! The interface every replicated state machine implements.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};

use crate::error::{QueryError, SnapshotError};

/// A boxed, local (not `Send`) future: everything runs on one shard's
/// executor thread.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One command handed to [`StateMachine::apply`]: its log index, the command
/// bytes (the envelope already stripped) and the slot for its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmEntry {
    /// The raft log index of the entry.
    pub index: u64,
    /// The command (zero-copy slice of the committed entry). The state
    /// machine may take it (`std::mem::take`): the manager does not read it
    /// after `apply`.
    pub cmd: Bytes,
    /// Filled by the state machine: the command's result. Errors that are a
    /// deterministic function of the command and the state (e.g. "value is
    /// not an integer") are encoded in here: they are results too, cached by
    /// sessions like any other.
    pub result: Bytes,
}

/// A replicated state machine.
///
/// Dyn-compatible: the engine keeps `Box<dyn StateMachine>` per group.
///
/// # Contract
/// - **Deterministic**: the same sequence of `apply` calls gives the same
///   state, the same results and a byte-identical snapshot on every replica.
///   No clocks, randomness, I/O or `HashMap` iteration order in `apply`.
/// - `apply` is synchronous CPU work and must not block; the engine yields
///   between batches.
/// - A failure that is not a function of the command and state (out of
///   memory, a bug) panics: a replica that cannot apply must not go on.
pub trait StateMachine {
    /// A stable name of the state machine's kind and data format, recorded
    /// in snapshots so that one kind never loads another's data.
    fn kind(&self) -> &str;

    /// Applies `entries` in order, filling each `result`.
    fn apply(&mut self, entries: &mut [SmEntry]);

    /// Answers a read-only query against the current state.
    ///
    /// # Errors
    /// [`QueryError`] if the query is malformed or unsupported.
    fn query(&self, query: &[u8]) -> Result<Bytes, QueryError>;

    /// Captures a consistent view of the current state for a snapshot. Runs
    /// synchronously between apply batches, so it must be cheap (clone an
    /// `Rc` of a persistent structure, not the data); the returned view is
    /// written out asynchronously while `apply` goes on.
    fn capture(&self) -> Box<dyn SmSnapshot>;

    /// A new, empty state machine of the same kind and configuration: the
    /// target of a snapshot recovery.
    fn fresh(&self) -> Box<dyn StateMachine>;

    /// Loads state written by a [`SmSnapshot::write_to`] of the same kind
    /// from `src`. Called only on an instance made by
    /// [`StateMachine::fresh`], which is discarded if this fails, so a failed
    /// recovery never touches the live state. `src` reads EOF at the end of
    /// this state machine's data.
    ///
    /// # Errors
    /// [`SnapshotError`] on an I/O error or malformed data; must never panic
    /// on bad input.
    fn recover<'a>(
        &'a mut self,
        src: &'a mut (dyn AsyncRead + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>>;
}

/// A captured, immutable view of a state machine, written out while the live
/// state machine keeps applying.
pub trait SmSnapshot {
    /// Writes the view to `sink`. Can be called more than once (each call
    /// writes the same bytes).
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the sink fails.
    fn write_to<'a>(
        &'a self,
        sink: &'a mut (dyn AsyncWrite + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>>;
}
