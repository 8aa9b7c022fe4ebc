//! Plain types of the `NodeHost` API: read consistency, membership views.

use crate::raft::{MemberKind, Membership, NodeId};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Linearizable: the read observes every write acknowledged before it
    /// started. Confirmed with a heartbeat round (ReadIndex), never with a
    /// clock; served by any replica once it applied the confirmed index.
    #[default]
    Linearizable,
    /// Linearizable as long as clocks advance at the same rate: the leader
    /// answers from its lease without a heartbeat round. A shard whose clock
    /// stalled (a paused process) stops trusting its lease for two election
    /// timeouts. Falls back to ReadIndex when the lease does not hold.
    Lease,
    /// Whatever this replica has applied: fast, possibly stale, never
    /// waits for the network.
    Stale,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its node.
    pub node: NodeId,
    /// Voter, observer or witness.
    pub kind: MemberKind,
    /// Its raft address (`ip:port` of the node's first shard).
    pub address: String,
}

/// A group's membership as one replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipInfo {
    /// Log index of the membership change that produced it (0: founding).
    pub config_index: u64,
    /// Members sorted by node id.
    pub members: Vec<MemberInfo>,
}

impl MembershipInfo {
    pub(crate) fn from_raft(m: &Membership) -> Self {
        MembershipInfo {
            config_index: m.config_index,
            members: m
                .members
                .iter()
                .map(|x| MemberInfo {
                    node: x.id,
                    kind: x.kind,
                    address: String::from_utf8_lossy(&x.address).into_owned(),
                })
                .collect(),
        }
    }

    /// The member of `node`, if any.
    pub fn get(&self, node: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.node == node)
    }
}
