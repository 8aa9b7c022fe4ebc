//! # flotilla-tests
//!
//! Multi-node, multi-process and fault tests for flotilla. This library is
//! the in-process cluster harness the engine tests (`tests/engine_*.rs`)
//! share: several [`NodeHost`]s in one process on loopback, real TCP, real
//! WAL in a temp dir, nodes stopped and restarted from their data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::kv::KvClient;
use flotilla::{GroupId, HostError, NodeHost, NodeHostConfig, NodeId, Placement};
use futures_lite::future::block_on;

pub mod checker;

/// Deadline of every single call in the harness.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// A cluster of nodes in this process.
pub struct Cluster {
    /// Keeps the data while the cluster lives.
    pub dir: tempfile::TempDir,
    configs: Vec<NodeHostConfig>,
    hosts: Vec<Option<Arc<NodeHost>>>,
}

impl Cluster {
    /// `nodes` nodes of `shards` shards each (not started; see
    /// [`Cluster::start_all`]).
    pub fn new(nodes: u64, shards: usize) -> Cluster {
        Cluster::with(nodes, shards, |_| {})
    }

    /// As [`Cluster::new`], with `adjust` applied to every node's config.
    pub fn with(nodes: u64, shards: usize, adjust: impl Fn(&mut NodeHostConfig)) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let configs = (1..=nodes)
            .map(|n| {
                let mut cfg = node_config(&dir, n, shards);
                adjust(&mut cfg);
                cfg
            })
            .collect::<Vec<_>>();
        let hosts = configs.iter().map(|_| None).collect();
        Cluster {
            dir,
            configs,
            hosts,
        }
    }

    /// Adds the config of one more node (not started).
    pub fn add_node(&mut self, shards: usize) -> NodeId {
        let n = self.configs.len() as u64 + 1;
        self.configs.push(node_config(&self.dir, n, shards));
        self.hosts.push(None);
        NodeId(n)
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) {
        for i in 0..self.configs.len() {
            if self.hosts[i].is_none() {
                self.start(NodeId(i as u64 + 1));
            }
        }
    }

    /// Starts (or restarts, from its data directory) `node`.
    pub fn start(&mut self, node: NodeId) {
        let i = node.0 as usize - 1;
        assert!(self.hosts[i].is_none(), "{node} already runs");
        let host = NodeHost::start(self.configs[i].clone())
            .unwrap_or_else(|e| panic!("{node} does not start: {e}"));
        self.hosts[i] = Some(Arc::new(host));
    }

    /// Starts (or restarts) `node`, returning the start error instead of
    /// panicking.
    pub fn try_start(&mut self, node: NodeId) -> Result<(), HostError> {
        let i = node.0 as usize - 1;
        assert!(self.hosts[i].is_none(), "{node} already runs");
        let host = NodeHost::start(self.configs[i].clone())?;
        self.hosts[i] = Some(Arc::new(host));
        Ok(())
    }

    /// The data directory of `node`.
    pub fn data_dir(&self, node: NodeId) -> &std::path::Path {
        &self.configs[node.0 as usize - 1].data_dir
    }

    /// Stops `node` gracefully (its data stays).
    pub fn stop(&mut self, node: NodeId) {
        let i = node.0 as usize - 1;
        let host = self.hosts[i]
            .take()
            .unwrap_or_else(|| panic!("{node} is not running"));
        block_on(host.shutdown());
    }

    /// The running node `node`.
    pub fn host(&self, node: NodeId) -> &Arc<NodeHost> {
        self.hosts[node.0 as usize - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("{node} is not running"))
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        (0..self.hosts.len())
            .filter(|i| self.hosts[*i].is_some())
            .map(|i| NodeId(i as u64 + 1))
            .collect()
    }

    /// Node id and raft address of `nodes`.
    pub fn members(&self, nodes: &[NodeId]) -> Vec<(NodeId, SocketAddr)> {
        nodes
            .iter()
            .map(|n| (*n, self.configs[n.0 as usize - 1].raft_addr))
            .collect()
    }

    /// Raft address of `node`.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.configs[node.0 as usize - 1].raft_addr
    }

    /// Starts `groups` on every node of `nodes`, all of them founding
    /// members.
    pub fn start_groups(&self, groups: &[GroupId], nodes: &[NodeId]) {
        let members = self.members(nodes);
        for g in groups {
            for n in nodes {
                block_on(
                    self.host(*n)
                        .start_group(*g, members.clone(), CALL_DEADLINE),
                )
                .unwrap_or_else(|e| panic!("{n}: start {g}: {e}"));
            }
        }
    }

    /// Waits until every running node that hosts `group` agrees on one
    /// leader among the running nodes; returns it.
    pub fn wait_leader(&self, group: GroupId, within: Duration) -> NodeId {
        let start = Instant::now();
        loop {
            let mut seen = Vec::new();
            for n in self.running() {
                if let Ok(Some(s)) = block_on(self.host(n).group_status(group, CALL_DEADLINE)) {
                    seen.push((n, s.leader));
                }
            }
            if let Some((_, Some(l))) = seen.first() {
                if seen.iter().all(|(_, x)| *x == Some(*l)) && self.running().contains(l) {
                    return *l;
                }
            }
            assert!(
                start.elapsed() < within,
                "{group}: no agreed leader within {within:?}; (node, leader) seen: {seen:?}"
            );
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// A KV client of `groups` talking to `node`.
    pub fn kv(&self, node: NodeId, groups: &[GroupId]) -> KvClient {
        let mut kv = KvClient::new(self.host(node).clone(), groups.to_vec()).expect("groups");
        kv.timeout = CALL_DEADLINE;
        kv
    }

    /// Stops every running node.
    pub fn shutdown(mut self) {
        for n in self.running() {
            self.stop(n);
        }
    }
}

fn node_config(dir: &tempfile::TempDir, n: u64, shards: usize) -> NodeHostConfig {
    let mut cfg = NodeHostConfig::new(n, dir.path().join(format!("node-{n}")));
    cfg.shard_count = shards;
    cfg.placement = Placement::Unbound;
    cfg.raft_addr = flotilla::test_util::free_port_block(shards);
    cfg.tick_interval = Duration::from_millis(10);
    cfg.io_memory_bytes = 1 << 20;
    cfg.wal_segment_bytes = 1 << 20;
    cfg
}

/// Retries `op` while it fails with an error that is safe to retry
/// (no leader yet, dropped by a leader change, timeout), until `within`.
pub fn retry<T>(within: Duration, what: &str, mut op: impl FnMut() -> Result<T, HostError>) -> T {
    let start = Instant::now();
    loop {
        match op() {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    start.elapsed() < within,
                    "{what}: still failing after {within:?}: {e}"
                );
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
    }
}

/// Sends logs to the test output, filtered by `RUST_LOG` (once per process).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `value` as bytes.
pub fn b(value: impl Into<String>) -> Bytes {
    Bytes::from(value.into())
}
