//! # flotilla
//!
//! A thread-per-core, shared-nothing multi-raft engine in the seastar style,
//! built on glommio (io_uring). See `../shared/DESIGN.md` for the architecture.
//!
//! - [`raft`]: the Raft protocol for one group replica as a pure,
//!   deterministic state machine (tick / step / propose / `Ready` / advance).

pub mod raft;
#[doc(hidden)]
pub mod sim;

mod api;
mod config;
mod error;
pub mod exec;
mod host;
pub mod kv;
pub mod shard;
#[doc(hidden)]
pub mod test_util;
pub mod wire;

pub use api::{MemberInfo, MembershipInfo, ReadConsistency};
pub use config::{available_cpus, shards_on_disk, ConfigError, NodeHostConfig, Placement};
pub use error::RequestError;
/// WAL statistics types that appear in [`ShardStats`].
pub use flotilla_storage::{LatencyHistogram, WalStats, FLUSH_LATENCY_BOUNDS_US};
pub use host::{HostError, NodeHost, PROPOSE_BATCH_MAX};
pub use raft::{GroupId, MemberKind, NodeId, Role};
pub use shard::driver::GroupStatus;
pub use shard::{shard_of, ShardId, ShardStats};
