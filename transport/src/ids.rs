//! Identifiers: who talks to whom.

use std::fmt;

/// One flotilla process, reached at one address (see the registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// One core of a node, running one glommio executor and one [`crate::Transport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

/// Identifies one flotilla cluster. Connections between different clusters are
/// refused during the handshake, so two clusters sharing hosts can never mix
/// their traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

/// A message endpoint: one shard of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// The node.
    pub node: NodeId,
    /// The shard of that node.
    pub shard: ShardId,
}

impl PeerId {
    /// The peer `(node, shard)`.
    pub const fn new(node: u64, shard: u32) -> Self {
        Self {
            node: NodeId(node),
            shard: ShardId(shard),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.shard)
    }
}
