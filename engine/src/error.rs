//! The errors of requests to a group: proposals, reads and membership
//! operations. One enum at the crate edge; variants carry data.

use flotilla_rsm::{ApplyError, KvError, QueryError};

use crate::raft::{GroupId, NodeId, ProposeError};

/// Why a request to a group did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// This replica is not the leader (and the caller asked not to forward).
    #[error("group {group}: not the leader; last known leader: {leader:?}")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The last known leader, if any.
        leader: Option<NodeId>,
    },
    /// No group with this id runs on this node.
    #[error("group {group} is not hosted on this node")]
    GroupNotFound {
        /// The group.
        group: GroupId,
    },
    /// The proposal's log entry was replaced by another leader's entry: it
    /// was definitely not applied. Safe to retry.
    #[error("group {group}: proposal at index {index} was overwritten by a new leader")]
    Dropped {
        /// The group.
        group: GroupId,
        /// The index the proposal had.
        index: u64,
    },
    /// A read could not be confirmed (leadership changed while it waited).
    /// Safe to retry.
    #[error("group {group}: read aborted by a leadership change")]
    ReadAborted {
        /// The group.
        group: GroupId,
    },
    /// Raft refused the request (busy, transfer in progress, membership
    /// change pending, ...).
    #[error(transparent)]
    Rejected(ProposeError),
    /// The state machine refused the command (deterministically, on every
    /// replica).
    #[error("group {group}: command not applied: {error}")]
    Apply {
        /// The group.
        group: GroupId,
        /// Why.
        error: ApplyError,
    },
    /// The state machine could not answer the query.
    #[error("group {group}: query failed: {error}")]
    Query {
        /// The group.
        group: GroupId,
        /// Why.
        error: QueryError,
    },
    /// This replica is a witness: it stores no state machine to read.
    #[error("group {group}: a witness cannot serve reads")]
    Witness {
        /// The group.
        group: GroupId,
    },
    /// The leader refused a forwarded request for a reason that does not
    /// travel as a typed error (its text is kept).
    #[error("group {group}: the leader refused the request: {message}")]
    Remote {
        /// The group.
        group: GroupId,
        /// The leader's error, as text.
        message: String,
    },
    /// The proposal's entry may or may not have been applied: a snapshot
    /// replaced the part of the log that held it before this replica saw
    /// its outcome. Not safe to retry blindly (read the state to find out).
    #[error("group {group}: the outcome of the proposal at index {index} is unknown (a snapshot covered it)")]
    Indeterminate {
        /// The group.
        group: GroupId,
        /// The index the proposal had.
        index: u64,
    },
    /// The command is larger than the node's entry limit
    /// (`NodeHostConfig::entry_bytes_max`); nothing was appended.
    #[error("group {group}: a command of {bytes} bytes exceeds the entry limit of {max} bytes")]
    EntryTooLarge {
        /// The group.
        group: GroupId,
        /// The command's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The group is stopping or the node is shutting down.
    #[error("group {group} is shutting down")]
    ShuttingDown {
        /// The group.
        group: GroupId,
    },
    /// This node's storage failed while serving the request (e.g. deleting
    /// a stopped group's snapshot files).
    #[error("group {group}: storage failed: {message}")]
    Storage {
        /// The group.
        group: GroupId,
        /// What failed.
        message: String,
    },
    /// The KV state machine answered with an error, the same on every
    /// replica (a value over the size limit, a read of a key holding a
    /// list as a string, ...): the store is unchanged.
    #[error("group {group}: {error}")]
    Kv {
        /// The group.
        group: GroupId,
        /// The KV error.
        error: KvError,
    },
    /// The request gives a node another raft address than the groups
    /// hosted here give it. A node has one address for all its groups: a
    /// wrong one in any membership would send every group's messages for
    /// that node there.
    #[error("group {group}: node {node} is at {known}, not {given}")]
    AddressConflict {
        /// The group.
        group: GroupId,
        /// The node.
        node: NodeId,
        /// Its address here.
        known: std::net::SocketAddr,
        /// The address in the request.
        given: std::net::SocketAddr,
    },
}

impl From<ProposeError> for RequestError {
    /// `NotLeader` becomes [`RequestError::NotLeader`] (one variant for
    /// callers to match); every other refusal is [`RequestError::Rejected`].
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { group, leader } => RequestError::NotLeader { group, leader },
            other => RequestError::Rejected(other),
        }
    }
}
