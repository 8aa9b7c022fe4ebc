//! Where peers live: node id → address and shard count, changeable at run time.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::ids::{NodeId, PeerId, ShardId};

/// One node's addresses.
///
/// Shard `s` of a node listens on `base` with port `base.port() + s`, unless
/// an explicit per-shard address overrides it (used when ports are chosen by
/// the OS, as in tests that bind port 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// Address of shard 0; shard `s` is at port `base.port() + s`. `None` when
    /// only explicit per-shard addresses are known.
    pub base: Option<SocketAddr>,
    /// Number of shards the node runs.
    pub shard_count: u32,
    /// Explicit per-shard addresses, overriding `base`.
    pub shard_addrs: BTreeMap<ShardId, SocketAddr>,
    /// Bumped on every change of this entry; senders re-dial when it moves.
    pub generation: u64,
}

impl NodeAddress {
    /// The address of `shard`, if it is a shard of this node and has one.
    pub fn shard_addr(&self, shard: ShardId) -> Option<SocketAddr> {
        if shard.0 >= self.shard_count {
            return None;
        }
        if let Some(a) = self.shard_addrs.get(&shard) {
            return Some(*a);
        }
        let base = self.base?;
        let port = u16::try_from(u32::from(base.port()) + shard.0).ok()?;
        let mut a = base;
        a.set_port(port);
        Some(a)
    }
}

/// The registry of one shard: node id → [`NodeAddress`].
///
/// A cheap `Rc` handle: clone it into the engine so it can update addresses
/// as membership changes; the transport reads it at every dial and
/// handshake. It is per shard (not `Send`): each shard keeps its own copy and
/// the engine applies the same updates to each.
///
/// # Examples
/// ```
/// use flotilla_transport::{NodeId, PeerId, Registry};
/// let reg = Registry::new();
/// reg.set_node(NodeId(2), "10.0.0.2:7000".parse().unwrap(), 4);
/// assert_eq!(reg.resolve(PeerId::new(2, 3)), Some("10.0.0.2:7003".parse().unwrap()));
/// assert_eq!(reg.resolve(PeerId::new(2, 4)), None); // no shard 4
/// ```
#[derive(Clone, Debug, Default)]
pub struct Registry {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<NodeId, NodeAddress>,
    generation: u64,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) a node's base address and shard count, keeping
    /// explicit per-shard addresses of shards that still exist.
    pub fn set_node(&self, node: NodeId, base: SocketAddr, shard_count: u32) {
        let mut inner = self.inner.borrow_mut();
        inner.generation += 1;
        let generation = inner.generation;
        let e = inner.nodes.entry(node).or_insert_with(|| NodeAddress {
            base: None,
            shard_count: 0,
            shard_addrs: BTreeMap::new(),
            generation,
        });
        e.base = Some(base);
        e.shard_count = shard_count;
        e.shard_addrs.retain(|s, _| s.0 < shard_count);
        e.generation = generation;
    }

    /// Sets the explicit address of one shard (e.g. one bound to port 0).
    /// Creates the node if unknown; raises its shard count to cover `peer.shard`.
    pub fn set_shard_addr(&self, peer: PeerId, addr: SocketAddr) {
        let mut inner = self.inner.borrow_mut();
        inner.generation += 1;
        let generation = inner.generation;
        let e = inner.nodes.entry(peer.node).or_insert_with(|| NodeAddress {
            base: None,
            shard_count: 0,
            shard_addrs: BTreeMap::new(),
            generation,
        });
        e.shard_count = e.shard_count.max(peer.shard.0.saturating_add(1));
        e.shard_addrs.insert(peer.shard, addr);
        e.generation = generation;
    }

    /// Forgets a node. Its send queue drains into drops until it returns.
    pub fn remove_node(&self, node: NodeId) {
        let mut inner = self.inner.borrow_mut();
        inner.generation += 1;
        inner.nodes.remove(&node);
    }

    /// The address of `peer`, if known.
    pub fn resolve(&self, peer: PeerId) -> Option<SocketAddr> {
        self.inner
            .borrow()
            .nodes
            .get(&peer.node)?
            .shard_addr(peer.shard)
    }

    /// Whether `node` is known.
    pub fn contains(&self, node: NodeId) -> bool {
        self.inner.borrow().nodes.contains_key(&node)
    }

    /// The node's entry.
    pub fn node(&self, node: NodeId) -> Option<NodeAddress> {
        self.inner.borrow().nodes.get(&node).cloned()
    }

    /// The generation of `node`'s entry (`None` if unknown). It changes
    /// whenever the entry does.
    pub fn generation(&self, node: NodeId) -> Option<u64> {
        self.inner.borrow().nodes.get(&node).map(|n| n.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_port_plus_shard_and_overrides() {
        let r = Registry::new();
        assert_eq!(r.resolve(PeerId::new(1, 0)), None);
        r.set_node(NodeId(1), "127.0.0.1:65534".parse().unwrap(), 3);
        assert_eq!(
            r.resolve(PeerId::new(1, 1)),
            Some("127.0.0.1:65535".parse().unwrap())
        );
        assert_eq!(
            r.resolve(PeerId::new(1, 2)),
            None,
            "port overflow is no address"
        );
        let g = r.generation(NodeId(1)).unwrap();
        r.set_shard_addr(PeerId::new(1, 2), "127.0.0.1:9".parse().unwrap());
        assert!(r.generation(NodeId(1)).unwrap() > g);
        assert_eq!(
            r.resolve(PeerId::new(1, 2)),
            Some("127.0.0.1:9".parse().unwrap())
        );
        r.set_node(NodeId(1), "127.0.0.1:100".parse().unwrap(), 2);
        assert_eq!(
            r.resolve(PeerId::new(1, 2)),
            None,
            "shard removed with the count"
        );
        r.set_shard_addr(PeerId::new(5, 3), "127.0.0.1:7".parse().unwrap());
        assert_eq!(r.node(NodeId(5)).unwrap().shard_count, 4);
        assert_eq!(r.resolve(PeerId::new(5, 0)), None, "no base, no override");
        r.remove_node(NodeId(1));
        assert!(!r.contains(NodeId(1)));
    }
}
