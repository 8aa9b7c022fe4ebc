//! The Raft protocol core: pure, deterministic, sans-I/O.
//!
//! One [`Raft`] per group replica, in the etcd-raft / raft-rs shape: feed it
//! [`Raft::tick`], [`Raft::step`], proposals and reads; take a [`Ready`];
//! persist, send and apply what it says; call [`Raft::advance`]. No clock, no
//! I/O, no global state; its only randomness is a splitmix64 seeded from
//! [`Config::seed`].
//!
//! # Examples
//! ```
//! use flotilla::raft::{Config, GroupId, Membership, NodeId, Raft};
//! use bytes::Bytes;
//! let mut r = Raft::new(Config::new(NodeId(1), GroupId(1)), Membership::voters(&[1]));
//! while !r.is_leader() { r.tick(); }
//! let index = r.propose(Bytes::from_static(b"hello")).unwrap();
//! let mut applied = Vec::new();
//! while let Some(rd) = r.ready() {
//!     // persist rd.hard_state / rd.entries, send rd.messages, then:
//!     applied.extend(rd.committed_entries.iter().map(|e| e.index));
//!     r.advance(rd.number);
//! }
//! assert!(applied.contains(&index));
//! ```

mod core;
mod log;
mod progress;
mod types;

pub use self::core::{
    Config, FetchPurpose, FetchRequest, PersistedState, PlantedBug, ProposeError, Raft, RaftStats,
    ReadState, Ready, ReadyNumber, Role, SoftState, StateError, StepError,
};
pub use self::progress::{ProgressState, ProgressStats};
pub use self::types::*;
