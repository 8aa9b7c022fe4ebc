//! The configuration of `flotilla node`: flags, `FLOTILLA_*` environment
//! variables, a TOML file, defaults.
//!
//! Precedence, highest first: **command-line flag > environment variable >
//! config file (`--config`) > built-in default**. clap resolves the first
//! two (a flag wins over its `FLOTILLA_*` variable), [`NodeArgs::resolve`]
//! fills whatever is still unset from the file and then from
//! [`NodeConfig::default`]. `flotilla node --print-config` prints the
//! effective result as TOML, which is itself a valid config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla::{GroupId, NodeHostConfig, NodeId, Placement, ReadConsistency};
use serde::{Deserialize, Serialize};

/// Largest `max_value_bytes` (the KV store's own limit).
pub const VALUE_BYTES_CEILING: usize = flotilla_rsm::kv::VALUE_BYTES_MAX;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Default read consistency of client requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// ReadIndex: linearizable, no clock assumption.
    #[default]
    Linearizable,
    /// Leader lease: linearizable while clocks advance at the same rate.
    Lease,
    /// Whatever this replica has applied.
    Stale,
}

impl Consistency {
    /// The engine's value.
    pub fn engine(self) -> ReadConsistency {
        match self {
            Consistency::Linearizable => ReadConsistency::Linearizable,
            Consistency::Lease => ReadConsistency::Lease,
            Consistency::Stale => ReadConsistency::Stale,
        }
    }
}

/// Where the shard executors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    /// Shard i on CPU (first_cpu + i) % cpus: production.
    #[default]
    Pinned,
    /// Let the kernel schedule the shards (more shards than cores).
    Unbound,
}

/// The effective configuration of one node (also the TOML file format,
/// every field optional there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub node_id: u64,
    /// Cluster id: nodes of other clusters are refused.
    pub cluster_id: u64,
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// Raft address of shard 0 (shard s listens on port + s).
    pub raft_addr: SocketAddr,
    /// Redis-protocol address ("" or absent in the file: default).
    pub resp_addr: SocketAddr,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// Shards (cores) of this node; the same on every node of a cluster.
    pub shards: usize,
    /// Founding members `id=host:port` (raft addresses), this node included.
    /// Empty: a one-node cluster of this node.
    pub members: Vec<String>,
    /// HTTP address of a running node to join through (instead of founding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// Number of KV groups (keys are hashed onto them); the same on every
    /// node, never changed after the first start.
    pub kv_groups: u32,
    /// Largest value (and request argument) a client may send.
    pub max_value_bytes: usize,
    /// Deadline of one client request.
    pub request_timeout_ms: u64,
    /// Default read consistency of client reads.
    pub read_consistency: Consistency,
    /// Most concurrent client connections (per protocol).
    pub max_clients: usize,
    /// How long a start waits for a listening address that is still in use
    /// (a node killed a moment ago may still hold it) before failing.
    pub port_wait_ms: u64,
    /// Executors serving client connections (0: the shard executors serve
    /// them, seastar style).
    pub client_threads: usize,
    /// Shard placement.
    pub placement: PlacementKind,
    /// CPU of shard 0 with pinned placement.
    pub first_cpu: usize,
    /// Raft tick length.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Size of a WAL segment file.
    pub wal_segment_bytes: u64,
    /// WAL flushes as one O_DSYNC write (true) or a write and an fdatasync.
    pub wal_dsync: bool,
    /// How often each shard moves a leadership towards a node that leads
    /// fewer groups (0: never).
    pub leader_balance_ms: u64,
    /// Pinned I/O memory per shard executor.
    pub io_memory_bytes: usize,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for NodeConfig {
    fn default() -> Self {
        // Raft timing and storage sizes: the engine's defaults.
        let engine = NodeHostConfig::new(1, ".");
        NodeConfig {
            node_id: 1,
            cluster_id: 1,
            data_dir: PathBuf::from("./flotilla-data"),
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 7100)),
            resp_addr: SocketAddr::from(([127, 0, 0, 1], 6379)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: flotilla::available_cpus(),
            members: Vec::new(),
            join: None,
            kv_groups: 16,
            max_value_bytes: 8 << 20,
            request_timeout_ms: 5_000,
            read_consistency: Consistency::Linearizable,
            max_clients: 10_000,
            port_wait_ms: 10_000,
            client_threads: 0,
            placement: PlacementKind::Pinned,
            first_cpu: 0,
            tick_ms: engine.tick_interval.as_millis() as u64,
            election_ticks: engine.election_timeout_ticks,
            heartbeat_ticks: engine.heartbeat_interval_ticks,
            wal_segment_bytes: engine.wal_segment_bytes,
            wal_dsync: engine.wal_dsync_writes,
            leader_balance_ms: engine.leader_balance_interval.as_millis() as u64,
            io_memory_bytes: engine.io_memory_bytes,
            log_format: LogFormat::Text,
        }
    }
}

/// The config file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    cluster_id: Option<u64>,
    data_dir: Option<PathBuf>,
    raft_addr: Option<SocketAddr>,
    resp_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    shards: Option<usize>,
    members: Option<Vec<String>>,
    join: Option<String>,
    kv_groups: Option<u32>,
    max_value_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    read_consistency: Option<Consistency>,
    max_clients: Option<usize>,
    port_wait_ms: Option<u64>,
    client_threads: Option<usize>,
    placement: Option<PlacementKind>,
    first_cpu: Option<usize>,
    tick_ms: Option<u64>,
    election_ticks: Option<u64>,
    heartbeat_ticks: Option<u64>,
    wal_segment_bytes: Option<u64>,
    wal_dsync: Option<bool>,
    leader_balance_ms: Option<u64>,
    io_memory_bytes: Option<usize>,
    log_format: Option<LogFormat>,
}

/// Flags of `flotilla node`. Every flag can also be set by the environment
/// variable shown in `--help` and by the same key (snake_case) in the
/// `--config` file. Precedence: flag > environment > file > default.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// TOML config file (keys as the long flags, in snake_case; see
    /// bin/flotilla.example.toml).
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This node's id: non-zero, unique in the cluster [default: 1].
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    pub node_id: Option<u64>,
    /// Cluster id; nodes of another cluster are refused [default: 1].
    #[arg(long, env = "FLOTILLA_CLUSTER_ID")]
    pub cluster_id: Option<u64>,
    /// Data directory (WAL, snapshots) [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Raft listen address of shard 0; shard s listens on port+s
    /// [default: 127.0.0.1:7100].
    #[arg(long, env = "FLOTILLA_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// Redis-protocol (RESP) listen address [default: 127.0.0.1:6379].
    #[arg(long, env = "FLOTILLA_RESP_ADDR")]
    pub resp_addr: Option<SocketAddr>,
    /// HTTP API listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "FLOTILLA_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Shards (one executor per core); must be equal on every node
    /// [default: the count an existing data directory was created with,
    /// else the number of CPUs].
    #[arg(long, env = "FLOTILLA_SHARDS")]
    pub shards: Option<usize>,
    /// Founding members as id=host:port raft addresses, comma separated,
    /// this node included (e.g. 1=10.0.0.1:7100,2=10.0.0.2:7100,...).
    /// Empty: a single-node cluster.
    #[arg(long, env = "FLOTILLA_MEMBERS", value_delimiter = ',')]
    pub members: Option<Vec<String>>,
    /// Join a running cluster through the HTTP address of one of its nodes
    /// instead of founding one.
    #[arg(long, env = "FLOTILLA_JOIN")]
    pub join: Option<String>,
    /// Number of KV groups keys are hashed onto; equal on every node and
    /// never changed after the first start [default: 16].
    #[arg(long, env = "FLOTILLA_KV_GROUPS")]
    pub kv_groups: Option<u32>,
    /// Largest value / request argument a client may send, in bytes
    /// [default: 8388608 (8 MiB); at most 64 MiB].
    #[arg(long, env = "FLOTILLA_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Deadline of one client request in ms [default: 5000].
    #[arg(long, env = "FLOTILLA_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Default consistency of client reads [default: linearizable].
    #[arg(long, env = "FLOTILLA_READ_CONSISTENCY")]
    pub read_consistency: Option<Consistency>,
    /// Most concurrent client connections per protocol [default: 10000].
    #[arg(long, env = "FLOTILLA_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// Milliseconds a start waits for a listening address still in use (a
    /// node killed a moment ago may still hold its ports) before failing
    /// [default: 10000].
    #[arg(long, env = "FLOTILLA_PORT_WAIT_MS")]
    pub port_wait_ms: Option<u64>,
    /// Executors (threads) serving client connections; 0 serves them on the
    /// shard executors themselves, seastar style [default: 0].
    #[arg(long, env = "FLOTILLA_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
    /// Shard placement: pinned (one core each) or unbound [default: pinned].
    #[arg(long, env = "FLOTILLA_PLACEMENT")]
    pub placement: Option<PlacementKind>,
    /// CPU of shard 0 with pinned placement [default: 0].
    #[arg(long, env = "FLOTILLA_FIRST_CPU")]
    pub first_cpu: Option<usize>,
    /// Raft tick in ms [default: 10].
    #[arg(long, env = "FLOTILLA_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Election timeout in ticks [default: the engine's, 30].
    #[arg(long, env = "FLOTILLA_ELECTION_TICKS")]
    pub election_ticks: Option<u64>,
    /// Leader heartbeat interval in ticks [default: the engine's, 3].
    #[arg(long, env = "FLOTILLA_HEARTBEAT_TICKS")]
    pub heartbeat_ticks: Option<u64>,
    /// WAL segment file size in bytes [default: 67108864].
    #[arg(long, env = "FLOTILLA_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// WAL flushes as one O_DSYNC write (true) or as a write and an
    /// fdatasync (false: a better tail when the cores are oversubscribed)
    /// [default: true].
    #[arg(long, env = "FLOTILLA_WAL_DSYNC")]
    pub wal_dsync: Option<bool>,
    /// Milliseconds between two rounds of leader balancing: each shard
    /// hands at most two of its leaderships to nodes leading at least two
    /// fewer groups, so leaders spread over the nodes (also after a
    /// restart); 0 turns it off [default: 2000].
    #[arg(long, env = "FLOTILLA_LEADER_BALANCE_MS")]
    pub leader_balance_ms: Option<u64>,
    /// Pinned I/O memory per shard executor in bytes [default: 2097152].
    #[arg(long, env = "FLOTILLA_IO_MEMORY_BYTES")]
    pub io_memory_bytes: Option<usize>,
    /// Log format; the level comes from RUST_LOG [default: text].
    #[arg(long, env = "FLOTILLA_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// A configuration that cannot be used: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this format.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error, on one line.
        message: String,
    },
    /// A field has a bad value.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl NodeArgs {
    /// The effective configuration: flags/env, then the file, then defaults;
    /// validated.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the field.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = NodeConfig::default();
        macro_rules! pick {
            ($f:ident) => {
                self.$f.clone().or(file.$f).unwrap_or(d.$f)
            };
        }
        let data_dir: PathBuf = pick!(data_dir);
        // A restarted node keeps the shard count of its data (groups map to
        // shards by it); the engine refuses a different one.
        let shards = match self.shards.or(file.shards) {
            Some(n) => n,
            None => flotilla::shards_on_disk(&data_dir)
                .ok()
                .flatten()
                .unwrap_or(d.shards),
        };
        let cfg = NodeConfig {
            node_id: pick!(node_id),
            cluster_id: pick!(cluster_id),
            data_dir,
            raft_addr: pick!(raft_addr),
            resp_addr: pick!(resp_addr),
            http_addr: pick!(http_addr),
            shards,
            members: pick!(members),
            join: self.join.clone().or(file.join),
            kv_groups: pick!(kv_groups),
            max_value_bytes: pick!(max_value_bytes),
            request_timeout_ms: pick!(request_timeout_ms),
            read_consistency: pick!(read_consistency),
            max_clients: pick!(max_clients),
            port_wait_ms: pick!(port_wait_ms),
            client_threads: pick!(client_threads),
            placement: pick!(placement),
            first_cpu: pick!(first_cpu),
            tick_ms: pick!(tick_ms),
            election_ticks: pick!(election_ticks),
            heartbeat_ticks: pick!(heartbeat_ticks),
            wal_segment_bytes: pick!(wal_segment_bytes),
            wal_dsync: pick!(wal_dsync),
            leader_balance_ms: pick!(leader_balance_ms),
            io_memory_bytes: pick!(io_memory_bytes),
            log_format: pick!(log_format),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })
}

/// Collapses a multi-line message (TOML errors draw the offending line)
/// into one line.
fn one_line(s: &str) -> String {
    let mut out = String::new();
    for part in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if part.chars().all(|c| c == '|' || c == '^' || c == ' ') {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    out
}

impl NodeConfig {
    /// Checks every field and the member list.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be non-zero"));
        }
        if self.kv_groups == 0 || self.kv_groups > 65_536 {
            return Err(invalid(
                "kv_groups",
                format!("{} is not in 1..=65536", self.kv_groups),
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > VALUE_BYTES_CEILING {
            return Err(invalid(
                "max_value_bytes",
                format!(
                    "{} is not in 1..={VALUE_BYTES_CEILING}",
                    self.max_value_bytes
                ),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "must be positive"));
        }
        if self.max_clients == 0 {
            return Err(invalid("max_clients", "must be positive"));
        }
        if self.client_threads > 256 {
            return Err(invalid(
                "client_threads",
                format!("{} is not in 0..=256", self.client_threads),
            ));
        }
        if self.resp_addr == self.http_addr {
            return Err(invalid(
                "http_addr",
                format!("{} is also resp_addr", self.http_addr),
            ));
        }
        let raft_ports =
            u32::from(self.raft_addr.port())..u32::from(self.raft_addr.port()) + self.shards as u32;
        for (field, addr) in [("resp_addr", self.resp_addr), ("http_addr", self.http_addr)] {
            if addr.ip() == self.raft_addr.ip() && raft_ports.contains(&u32::from(addr.port())) {
                return Err(invalid(
                    field,
                    format!("{addr} collides with the raft ports of {}", self.raft_addr),
                ));
            }
        }
        self.host_config().validate().map_err(|e| match e {
            flotilla::ConfigError::Invalid { field, reason } => invalid(field, reason),
            other => invalid("node", other.to_string()),
        })?;
        let members = self.member_list()?;
        if self.join.is_some() && !self.members.is_empty() {
            return Err(invalid(
                "join",
                "give either members (found a cluster) or join (join one), not both",
            ));
        }
        debug_assert!(members.iter().any(|(id, _)| id.0 == self.node_id));
        Ok(())
    }

    /// The founding members, parsed: `(id, raft address)`, this node
    /// included (a one-node list of this node if `members` is empty).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a malformed entry, a duplicate id or
    /// address, or a list without this node (or with another address for it).
    pub fn member_list(&self) -> Result<Vec<(NodeId, SocketAddr)>, ConfigError> {
        if self.members.is_empty() {
            return Ok(vec![(NodeId(self.node_id), self.raft_addr)]);
        }
        let mut out: Vec<(NodeId, SocketAddr)> = Vec::with_capacity(self.members.len());
        for entry in &self.members {
            let (id, addr) = entry
                .split_once('=')
                .ok_or_else(|| invalid("members", format!("{entry:?} is not id=host:port")))?;
            let id: u64 = id
                .trim()
                .parse()
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| {
                    invalid(
                        "members",
                        format!("{entry:?}: node id must be a positive integer"),
                    )
                })?;
            let addr = resolve_addr(addr.trim())
                .map_err(|reason| invalid("members", format!("{entry:?}: {reason}")))?;
            if out.iter().any(|(i, _)| i.0 == id) {
                return Err(invalid("members", format!("node id {id} appears twice")));
            }
            if out.iter().any(|(_, a)| *a == addr) {
                return Err(invalid("members", format!("address {addr} appears twice")));
            }
            out.push((NodeId(id), addr));
        }
        match out.iter().find(|(id, _)| id.0 == self.node_id) {
            None => Err(invalid(
                "members",
                format!("this node (id {}) is not in the list", self.node_id),
            )),
            Some((_, addr)) if addr.port() != self.raft_addr.port() => Err(invalid(
                "members",
                format!(
                    "this node's entry has port {} but raft_addr is {}",
                    addr.port(),
                    self.raft_addr
                ),
            )),
            Some(_) => Ok(out),
        }
    }

    /// The KV groups: `1..=kv_groups`.
    pub fn kv_group_ids(&self) -> Vec<GroupId> {
        (1..=u64::from(self.kv_groups)).map(GroupId).collect()
    }

    /// Deadline of one client request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The engine's configuration.
    pub fn host_config(&self) -> NodeHostConfig {
        let mut h = NodeHostConfig::new(self.node_id, self.data_dir.clone());
        h.cluster_id = self.cluster_id;
        h.shard_count = self.shards;
        h.raft_addr = self.raft_addr;
        h.placement = match self.placement {
            PlacementKind::Pinned => Placement::Pinned {
                first_cpu: self.first_cpu,
            },
            PlacementKind::Unbound => Placement::Unbound,
        };
        h.tick_interval = Duration::from_millis(self.tick_ms);
        h.election_timeout_ticks = self.election_ticks;
        h.heartbeat_interval_ticks = self.heartbeat_ticks;
        h.wal_segment_bytes = self.wal_segment_bytes;
        // A command holds a value and its key (up to 64 KiB) and headers.
        h.entry_bytes_max = h.entry_bytes_max.max(self.max_value_bytes + (1 << 20));
        h.wal_dsync_writes = self.wal_dsync;
        h.leader_balance_interval = Duration::from_millis(self.leader_balance_ms);
        h.io_memory_bytes = self.io_memory_bytes;
        h
    }

    /// The configuration as TOML (what `--print-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// Parses `host:port` (a name is resolved once, at start).
fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs::default()
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = args().resolve().unwrap();
        assert_eq!(cfg, NodeConfig::default());
        assert_eq!(cfg.member_list().unwrap(), vec![(NodeId(1), cfg.raft_addr)]);
        assert_eq!(cfg.kv_group_ids().len(), 16);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "node_id = 2\nkv_groups = 4\nraft_addr = \"127.0.0.1:7200\"\n\
             members = [\"1=127.0.0.1:7100\", \"2=127.0.0.1:7200\"]\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        a.kv_groups = Some(8);
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.node_id, 2, "from the file");
        assert_eq!(cfg.kv_groups, 8, "the flag wins over the file");
        assert_eq!(cfg.max_value_bytes, 8 << 20, "default");
        assert_eq!(cfg.member_list().unwrap().len(), 2);
        // The printed config reads back as the same config.
        let back: NodeConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn a_restarted_node_keeps_the_shard_count_of_its_data_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args();
        a.data_dir = Some(dir.path().to_path_buf());
        assert_eq!(a.resolve().unwrap().shards, flotilla::available_cpus());
        for s in 0..5 {
            std::fs::create_dir(dir.path().join(format!("shard-{s}"))).unwrap();
        }
        assert_eq!(a.resolve().unwrap().shards, 5, "from the data directory");
        a.shards = Some(2);
        assert_eq!(a.resolve().unwrap().shards, 2, "the flag wins");
    }

    #[test]
    fn the_wal_durability_mode_reaches_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args();
        a.data_dir = Some(dir.path().to_path_buf());
        assert!(
            a.resolve().unwrap().host_config().wal_dsync_writes,
            "default"
        );
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "wal_dsync = false\n").unwrap();
        a.config = Some(path);
        assert!(!a.resolve().unwrap().host_config().wal_dsync_writes, "file");
        a.wal_dsync = Some(true);
        assert!(a.resolve().unwrap().host_config().wal_dsync_writes, "flag");
    }

    #[test]
    fn the_leader_balance_interval_reaches_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args();
        a.data_dir = Some(dir.path().to_path_buf());
        let interval = |a: &NodeArgs| a.resolve().unwrap().host_config().leader_balance_interval;
        assert_eq!(interval(&a), Duration::from_secs(2), "default");
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "leader_balance_ms = 0\n").unwrap();
        a.config = Some(path);
        assert_eq!(interval(&a), Duration::ZERO, "file: off");
        a.leader_balance_ms = Some(500);
        assert_eq!(interval(&a), Duration::from_millis(500), "flag");
    }

    #[test]
    fn the_sample_config_is_valid() {
        let mut a = args();
        a.config = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("flotilla.example.toml"));
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.member_list().unwrap().len(), 3);
        assert_eq!(cfg.kv_groups, 16);
    }

    #[test]
    fn bad_files_and_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "node_id = \"x\"\n").unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let e = a.resolve().unwrap_err().to_string();
        assert!(e.contains("bad.toml") && !e.contains('\n'), "{e}");

        std::fs::write(&path, "nodeid = 3\n").unwrap();
        let e = a.resolve().unwrap_err().to_string();
        assert!(e.contains("nodeid"), "{e}");

        a.config = Some(dir.path().join("missing.toml"));
        assert!(matches!(a.resolve(), Err(ConfigError::Read { .. })));

        let mut a = args();
        a.node_id = Some(0);
        assert!(a.resolve().unwrap_err().to_string().contains("node_id"));

        let mut a = args();
        a.members = Some(vec!["2=127.0.0.1:7100".into()]);
        let e = a.resolve().unwrap_err().to_string();
        assert!(e.contains("not in the list"), "{e}");

        let mut a = args();
        a.members = Some(vec!["1=127.0.0.1:7100".into(), "1=127.0.0.1:7200".into()]);
        assert!(a.resolve().unwrap_err().to_string().contains("twice"));

        let mut a = args();
        a.members = Some(vec!["one".into()]);
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("id=host:port"));

        let mut a = args();
        a.max_value_bytes = Some(VALUE_BYTES_CEILING + 1);
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("max_value_bytes"));
    }
}
