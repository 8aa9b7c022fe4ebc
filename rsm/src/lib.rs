//! # flotilla-rsm
//!
//! The replicated state machine layer of flotilla: the [`StateMachine`]
//! interface, exactly-once client sessions, the bundled key-value store
//! ([`KvStore`]: strings and the Redis data types — lists, sets, hashes,
//! sorted sets, streams, see [`TypedCommand`]) and the snapshot format. It
//! knows nothing of Raft beyond "committed commands arrive in index order":
//! the engine hands every
//! committed entry of a group to that group's [`Rsm`], which
//!
//! 1. decodes the command [`Envelope`] (no session, a session command with
//!    `client_id / series_id / responded_to`, or a session register /
//!    unregister),
//! 2. drops retries of commands already applied — returning their cached
//!    result — so a command is applied at most once however often a client
//!    retries it ([`SessionTable`]),
//! 3. hands the rest to the [`StateMachine`] in batches, and
//! 4. returns one [`Applied`] result per entry, for the engine to route to
//!    the waiting proposal.
//!
//! Snapshots are split in two so that they never stop the world for long:
//! [`Rsm::capture`] synchronously takes a consistent, cheap view (the KV store
//! shares its data copy-on-write), and [`SnapshotWriter::write_to`] streams it
//! to any `AsyncWrite` while applying continues. [`Rsm::loader`] reads and
//! verifies a whole snapshot into fresh state; [`Rsm::install`] swaps it in, so
//! a corrupt stream leaves the current state untouched. The stream format is
//! drawn at [`SnapshotWriter::write_to`].
//!
//! Everything is deterministic: the same entries give the same state, the
//! same results and byte-identical snapshots on every replica; a malformed
//! entry gives the same error result everywhere and changes nothing.
//!
//! A user state machine implements [`StateMachine`]; its documentation says
//! what one may and may not do (deterministic; runs on the shard's executor
//! and must not block) and carries a complete example.
//!
//! ## Example
//! ```
//! use bytes::Bytes;
//! use flotilla_rsm::{ClientSession, KvCommand, KvQuery, KvResult, KvStore, Rsm};
//!
//! let mut rsm = Rsm::new(Box::new(KvStore::new()), Default::default());
//! let mut client = ClientSession::new(0x5eed);
//! let incr = KvCommand::Increment { key: "hits".into(), delta: 1 }.encode();
//!
//! let mut out = Vec::new();
//! rsm.apply([(1, client.register()), (2, client.propose(&incr))], &mut out);
//! // The client timed out and retried: same bytes, committed again.
//! rsm.apply([(3, client.propose(&incr))], &mut out);
//! assert_eq!(KvResult::decode(out[2].result.as_ref().unwrap()).unwrap(), KvResult::Int(1));
//! client.completed();
//!
//! let answer = rsm.query(&KvQuery::Get { key: "hits".into() }.encode()).unwrap();
//! assert_eq!(KvResult::decode(answer).unwrap(), KvResult::Value(Some(Bytes::from("1"))));
//!
//! // Snapshot into memory and recover into another replica.
//! let snap = rsm.capture(Bytes::from("membership"));
//! let mut buf = Vec::new();
//! futures_lite::future::block_on(snap.write_to(&mut buf)).unwrap();
//! let mut other = Rsm::new(Box::new(KvStore::new()), Default::default());
//! let meta = futures_lite::future::block_on(other.recover(&mut &buf[..])).unwrap();
//! assert_eq!((meta.applied_index, &meta.membership[..]), (3, &b"membership"[..]));
//! ```

mod codec;
mod envelope;
mod error;
pub mod kv;
mod manager;
mod session;
pub mod snapshot;
mod state_machine;

pub use envelope::{encode_noop, tag_noop, tag_of, ClientSession, Envelope, SESSION_HEADER_BYTES};
pub use error::{ApplyError, DecodeError, QueryError, SnapshotError};
pub use kv::{
    install_script_runner, BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType,
    BitOperation, DeadlineChange, ExpireCondition, KvCommand, KvError, KvQuery, KvResult, KvStore,
    PutCondition, ScriptRunner, StreamTrim, TrimThreshold, TypedCommand, TypedQuery, XAddId,
    ZAddCompare, ZAddCondition, BATCH_COMMANDS_MAX, DEADLINE_MS_MAX, EXPIRE_DUE_KEYS_MAX,
};
pub use manager::{Applied, LoadedSnapshot, Rsm, RsmStats, SnapshotLoader};
pub use session::{SessionConfig, SessionTable};
pub use snapshot::{SnapshotInfo, SnapshotMeta, SnapshotWriter};
pub use state_machine::{LocalBoxFuture, SmEntry, SmSnapshot, StateMachine};
