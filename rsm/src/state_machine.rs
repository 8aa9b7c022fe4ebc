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

/// A replicated state machine: the interface an embedding application
/// implements for its own state. The engine drives it through [`crate::Rsm`],
/// which strips the command envelope, answers session retries from its cache
/// and hands the remaining commands here in log-index order.
///
/// Dyn-compatible: the engine keeps `Box<dyn StateMachine>` per group.
///
/// # What a state machine must do
/// - **Be deterministic.** The same sequence of [`apply`](Self::apply) calls
///   must give the same state, the same results and a byte-identical
///   snapshot on every replica, whatever the batching (the manager may cut
///   the same entries into different batches on different replicas). The
///   result of a command may depend only on the state and the command
///   (including its `index`): no clocks, no randomness, no environment, no
///   I/O, no `HashMap`/`HashSet` iteration order, no addresses, no
///   platform-dependent floating point, no state shared with other groups.
///   A clock or random seed the application needs must be chosen by the
///   proposer and carried inside the command.
/// - **Turn bad input into results.** A malformed or inapplicable command
///   (it came from a client, so it can be anything) produces an error
///   *result* encoded in [`SmEntry::result`], identical on every replica,
///   and leaves the state unchanged. Never panic on a command, a query or
///   snapshot bytes; never silently skip a command.
/// - **Answer queries read-only.** [`query`](Self::query) takes `&self`:
///   no interior mutability that changes what later commands see.
/// - **Write and read snapshots faithfully.** The captured view must be a
///   point-in-time copy that later `apply`s do not change;
///   [`recover`](Self::recover) must verify what it reads, consume exactly
///   the bytes its writer wrote and reject anything else with a
///   [`SnapshotError`].
///
/// # Where it runs, and what it must not do
/// Every method runs on the group's shard: one thread of a glommio
/// executor (thread-per-core, shared-nothing) that also runs raft, the WAL
/// and the network for every other group on that core. So:
/// - [`apply`](Self::apply), [`query`](Self::query),
///   [`capture`](Self::capture) and [`fresh`](Self::fresh) are synchronous
///   CPU work and **must not block**: no `std::fs`, `std::net`,
///   `std::thread::sleep`, blocking locks or channels, no waiting on
///   another thread. They should be short (the manager hands at most one
///   committed batch at a time; the engine yields between batches); a
///   command that needs long work should be split by the application.
/// - The futures of [`SmSnapshot::write_to`] and [`recover`](Self::recover)
///   run as tasks on the same executor (nothing is `Send`; `Rc`/`RefCell`
///   are fine). They must do I/O only through the given sink/source and
///   should `yield` every few tens of KiB so that apply and raft keep
///   running.
/// - It must not spawn tasks or threads that change its state, and must not
///   share state with other shards (`Arc<Mutex<_>>` between shards is out).
/// - A failure that is *not* a function of the command and state (out of
///   memory, a bug) panics: a replica that cannot apply must not go on.
///
/// # Example: a user state machine
/// A replicated counter: a command is an `i64` delta (8 bytes, little
/// endian) and returns the new total; the query returns the total; the
/// snapshot is the total. Malformed commands give a deterministic error
/// result and change nothing.
///
/// ```
/// use bytes::Bytes;
/// use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
/// use flotilla_rsm::{
///     encode_noop, ClientSession, LocalBoxFuture, QueryError, Rsm, SmEntry, SmSnapshot,
///     SnapshotError, StateMachine,
/// };
///
/// #[derive(Default)]
/// struct Counter {
///     total: i64,
/// }
///
/// /// The captured view: a copy of the total (cheap for this state).
/// struct CounterView(i64);
///
/// impl SmSnapshot for CounterView {
///     fn write_to<'a>(
///         &'a self,
///         sink: &'a mut (dyn AsyncWrite + Unpin),
///     ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
///         Box::pin(async move {
///             sink.write_all(&self.0.to_le_bytes()).await.map_err(SnapshotError::from)
///         })
///     }
/// }
///
/// impl StateMachine for Counter {
///     fn kind(&self) -> &str {
///         "example.counter/1"
///     }
///
///     fn apply(&mut self, entries: &mut [SmEntry]) {
///         for e in entries {
///             // Deterministic: depends only on the state and the command.
///             e.result = match <[u8; 8]>::try_from(&e.cmd[..]) {
///                 Ok(b) => match self.total.checked_add(i64::from_le_bytes(b)) {
///                     Some(total) => {
///                         self.total = total;
///                         Bytes::copy_from_slice(&total.to_le_bytes())
///                     }
///                     None => Bytes::from_static(b"error: overflow"),
///                 },
///                 // Bad input is a result, never a panic.
///                 Err(_) => Bytes::from_static(b"error: malformed"),
///             };
///         }
///     }
///
///     fn query(&self, _query: &[u8]) -> Result<Bytes, QueryError> {
///         Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
///     }
///
///     fn capture(&self) -> Box<dyn SmSnapshot> {
///         Box::new(CounterView(self.total))
///     }
///
///     fn fresh(&self) -> Box<dyn StateMachine> {
///         Box::new(Counter::default())
///     }
///
///     fn recover<'a>(
///         &'a mut self,
///         src: &'a mut (dyn AsyncRead + Unpin),
///     ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
///         Box::pin(async move {
///             let mut b = [0u8; 8];
///             src.read_exact(&mut b).await?; // a short stream is `Truncated`
///             self.total = i64::from_le_bytes(b);
///             Ok(())
///         })
///     }
/// }
///
/// // The engine's side: committed entries in index order.
/// let mut rsm = Rsm::new(Box::new(Counter::default()), Default::default());
/// let mut client = ClientSession::new(7);
/// let add5 = 5i64.to_le_bytes();
/// let mut out = Vec::new();
/// rsm.apply(
///     [
///         (1, client.register()),
///         (2, client.propose(&add5)),
///         (3, client.propose(&add5)), // a retry of index 2: not applied again
///         (4, encode_noop(&2i64.to_le_bytes())), // no session needed
///         (5, encode_noop(b"bad")),
///     ],
///     &mut out,
/// );
/// assert_eq!(out[2].result, out[1].result);
/// assert_eq!(out[3].result.as_deref().unwrap(), &7i64.to_le_bytes()[..]);
/// assert_eq!(out[4].result.as_deref().unwrap(), b"error: malformed");
/// assert_eq!(rsm.query(b"").unwrap(), Bytes::copy_from_slice(&7i64.to_le_bytes()));
///
/// // Snapshot (state + applied index + membership + sessions) and restore.
/// let mut buf = Vec::new();
/// futures_lite::future::block_on(rsm.capture(Bytes::new()).write_to(&mut buf)).unwrap();
/// let mut replica = Rsm::new(Box::new(Counter::default()), Default::default());
/// let meta = futures_lite::future::block_on(replica.recover(&mut &buf[..])).unwrap();
/// assert_eq!((meta.applied_index, replica.query(b"").unwrap()), (5, rsm.query(b"").unwrap()));
/// // The session table came along: a late retry of index 2 committed after
/// // the restore is answered from it, not applied a second time.
/// replica.apply([(6, client.propose(&add5))], &mut out);
/// assert_eq!(out[5].result, out[1].result);
/// assert_eq!(replica.query(b"").unwrap(), rsm.query(b"").unwrap());
/// client.completed();
/// ```
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
