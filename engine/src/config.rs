//! Node-level configuration: how many shards, where they run, how often they
//! tick, and the limits that bound every queue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a node's shard executors run.
///
/// Production pins one shard per core. Tests that start several nodes in one
/// process on a 2-core machine run more executors than cores: they use
/// [`Placement::Pinned`] with an offset (shard `i` of the process goes to core
/// `(first_cpu + i) % ncpu`) or [`Placement::Unbound`] (see `GLOMMIO.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Shard `i` runs on CPU `(first_cpu + i) % available_cpus`.
    Pinned {
        /// The CPU of shard 0.
        first_cpu: usize,
    },
    /// Shards float over all CPUs (the kernel schedules them).
    Unbound,
}

impl Placement {
    /// The glommio placement of shard `shard` given `cpus` available CPUs.
    pub(crate) fn for_shard(self, shard: usize, cpus: usize) -> glommio::Placement {
        match self {
            Placement::Pinned { first_cpu } => {
                glommio::Placement::Fixed((first_cpu + shard) % cpus.max(1))
            }
            Placement::Unbound => glommio::Placement::Unbound,
        }
    }
}

/// Room next to the largest entry in a WAL frame and in a transport frame:
/// record and frame headers, a hard state written in the same batch, and
/// the envelope of a forwarded proposal.
pub const ENTRY_OVERHEAD_BYTES: usize = 256 << 10;

/// Configuration of one node (one flotilla process, or one `NodeHost` in a
/// test process).
///
/// Use [`NodeHostConfig::new`] for defaults and then adjust fields; call
/// [`NodeHostConfig::validate`] (done by `NodeHost::start`) to check it.
#[derive(Debug, Clone)]
pub struct NodeHostConfig {
    /// This node's id: non-zero, unique in the cluster.
    pub node_id: u64,
    /// Cluster id: nodes of another cluster are refused at the handshake.
    pub cluster_id: u64,
    /// Where the shards keep their WALs and snapshots (one sub-directory per
    /// shard).
    pub data_dir: PathBuf,
    /// Number of shards (executors). Default: the number of available CPUs.
    /// Must be the same on every node of a cluster: a group lives on shard
    /// `shard_of(group, shard_count)` everywhere.
    pub shard_count: usize,
    /// Raft address of shard 0; shard `s` listens on port `port + s`.
    pub raft_addr: SocketAddr,
    /// Ticks without hearing from a leader before a follower campaigns
    /// (randomized up to twice this).
    pub election_timeout_ticks: u64,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_interval_ticks: u64,
    /// Size of each WAL segment file.
    pub wal_segment_bytes: u64,
    /// Largest command one proposal may carry; a larger one fails at once
    /// with `RequestError::EntryTooLarge` (nothing is appended). The WAL's
    /// frames and the transport's frames are sized to hold one such entry
    /// with its headers. Capped at the WAL segment size less
    /// [`ENTRY_OVERHEAD_BYTES`] (see [`NodeHostConfig::entry_limit_bytes`]).
    pub entry_bytes_max: usize,
    /// WAL flushes as one `O_DSYNC` write (default) instead of a write and
    /// an fdatasync; see `flotilla_storage::WalOptions::dsync_writes`.
    pub wal_dsync_writes: bool,
    /// Where shard executors run.
    pub placement: Placement,
    /// Length of one raft tick.
    pub tick_interval: Duration,
    /// glommio preempt timer: bounds how late timers, mailboxes and sockets
    /// are seen while a shard is busy (GLOMMIO.md recommends 1-2 ms).
    pub preempt_timer: Duration,
    /// Pinned DMA memory per shard executor.
    pub io_memory_bytes: usize,
    /// Capacity of each shard's API mailbox (requests beyond it wait).
    pub mailbox_capacity: usize,
    /// Report tasks that block an executor (glommio stall detection). Meant
    /// for tests and debugging.
    pub detect_stalls: bool,
    /// Ticks a group may stay idle (everything committed and acknowledged)
    /// before it quiesces: no more ticks or heartbeats until a message or a
    /// request wakes it (0: never).
    pub quiesce_ticks: u64,
    /// A group's state machine is snapshotted every this many applied
    /// entries (0: never automatically)...
    pub snapshot_entries: u64,
    /// ...and once the entries applied since its last snapshot hold at
    /// least this many times that snapshot's size in payload bytes (0: the
    /// entry count alone decides). A snapshot walks the whole state, so
    /// this keeps the cost of snapshots of a large state machine
    /// proportional to the bytes written; the log kept meanwhile is at most
    /// this multiple of the state's size (and a group pinning old WAL
    /// segments is snapshotted regardless).
    pub snapshot_log_ratio: f64,
    /// How often each shard hands leadership of a group it leads to a
    /// member that leads fewer groups (at most 2 per round, only to a
    /// caught-up voter at least two leaderships behind), so that leaders
    /// spread evenly over the nodes, also after a node restarts. Zero:
    /// never (leaders stay where elections put them).
    pub leader_balance_interval: Duration,
    /// Entries kept in the log behind a snapshot, so a follower slightly
    /// behind catches up from the log rather than a snapshot.
    pub compaction_overhead_entries: u64,
}

impl NodeHostConfig {
    /// Defaults for node `node_id` keeping its data in `data_dir`.
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        NodeHostConfig {
            node_id,
            cluster_id: 1,
            data_dir: data_dir.into(),
            shard_count: available_cpus(),
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 7100)),
            // 300-600 ms to notice a dead leader; long enough that a shard
            // starved for a few hundred ms on a loaded machine does not
            // depose healthy leaders (measured with `flotilla bench`).
            election_timeout_ticks: 30,
            heartbeat_interval_ticks: 3,
            wal_segment_bytes: 64 << 20,
            entry_bytes_max: 12 << 20,
            wal_dsync_writes: true,
            placement: Placement::Pinned { first_cpu: 0 },
            tick_interval: Duration::from_millis(10),
            preempt_timer: Duration::from_millis(2),
            io_memory_bytes: 2 << 20,
            mailbox_capacity: 4096,
            detect_stalls: false,
            quiesce_ticks: 100,
            snapshot_entries: 100_000,
            snapshot_log_ratio: 1.0,
            leader_balance_interval: Duration::from_secs(2),
            compaction_overhead_entries: 10_000,
        }
    }

    /// The largest command a proposal may carry: `entry_bytes_max`, at
    /// most what a WAL segment holds next to the headers.
    pub fn entry_limit_bytes(&self) -> usize {
        let segment_room = usize::try_from(self.wal_segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(4096 + ENTRY_OVERHEAD_BYTES);
        self.entry_bytes_max.min(segment_room)
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::Invalid {
                field: "node_id",
                reason: "must be non-zero".into(),
            });
        }
        if self.shard_count == 0 || self.shard_count > 256 {
            return Err(ConfigError::Invalid {
                field: "shard_count",
                reason: format!("{} is not in 1..=256", self.shard_count),
            });
        }
        if self.tick_interval < Duration::from_millis(1) {
            return Err(ConfigError::Invalid {
                field: "tick_interval",
                reason: format!("{:?} is below 1ms", self.tick_interval),
            });
        }
        if self.preempt_timer.is_zero() || self.preempt_timer > Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                field: "preempt_timer",
                reason: format!("{:?} is not in (0, 100ms]", self.preempt_timer),
            });
        }
        if !(self.snapshot_log_ratio >= 0.0 && self.snapshot_log_ratio <= 1000.0) {
            return Err(ConfigError::Invalid {
                field: "snapshot_log_ratio",
                reason: format!("{} is not in [0, 1000]", self.snapshot_log_ratio),
            });
        }
        if self.io_memory_bytes < (512 << 10) {
            return Err(ConfigError::Invalid {
                field: "io_memory_bytes",
                reason: format!("{} is below 512 KiB", self.io_memory_bytes),
            });
        }
        if self.heartbeat_interval_ticks == 0
            || self.election_timeout_ticks <= self.heartbeat_interval_ticks
        {
            return Err(ConfigError::Invalid {
                field: "election_timeout_ticks",
                reason: format!(
                    "{} must exceed heartbeat_interval_ticks {} (> 0)",
                    self.election_timeout_ticks, self.heartbeat_interval_ticks
                ),
            });
        }
        if u32::from(self.raft_addr.port()) + self.shard_count as u32 > 65535 {
            return Err(ConfigError::Invalid {
                field: "raft_addr",
                reason: format!(
                    "port {} + {} shards runs past 65535",
                    self.raft_addr.port(),
                    self.shard_count
                ),
            });
        }
        if self.entry_limit_bytes() < 4096 || self.entry_bytes_max > (1 << 30) {
            return Err(ConfigError::Invalid {
                field: "entry_bytes_max",
                reason: format!(
                    "{} (limited to {} by wal_segment_bytes) is not in 4 KiB..=1 GiB",
                    self.entry_bytes_max,
                    self.entry_limit_bytes()
                ),
            });
        }
        if self.mailbox_capacity == 0 {
            return Err(ConfigError::Invalid {
                field: "mailbox_capacity",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }
}

/// The number of CPUs this process may run on (at least 1).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The number of shards a node's data directory was created with: the
/// count of its `shard-<n>` WAL directories (`None` for a new or empty
/// directory). Groups map to shards by their id and the shard count, so a
/// node must restart with the count its data has.
///
/// # Errors
/// The directory cannot be listed, or its shard directories are not
/// `shard-0 ..= shard-<n-1>` (one is missing).
pub fn shards_on_disk(data_dir: &std::path::Path) -> std::io::Result<Option<usize>> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("shard-"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            found.push(n);
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    found.sort_unstable();
    if let Some(missing) = (0..found.len()).find(|&i| found[i] != i) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} has shard directories {:?} but no shard-{missing}",
                data_dir.display(),
                found
            ),
        ));
    }
    Ok(Some(found.len()))
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value outside its domain.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        let cfg = NodeHostConfig::new(1, "/tmp/x");
        assert_eq!(cfg.validate(), Ok(()));
        let mut bad = cfg.clone();
        bad.node_id = 0;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "node_id",
                ..
            })
        ));
        let mut bad = cfg.clone();
        bad.shard_count = 0;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "shard_count",
                ..
            })
        ));
        for ratio in [-1.0, f64::NAN, 1e9] {
            let mut bad = cfg.clone();
            bad.snapshot_log_ratio = ratio;
            assert!(matches!(
                bad.validate(),
                Err(ConfigError::Invalid {
                    field: "snapshot_log_ratio",
                    ..
                })
            ));
        }
        let mut bad = cfg;
        bad.preempt_timer = Duration::ZERO;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "preempt_timer",
                ..
            })
        ));
    }

    #[test]
    fn pinned_placement_wraps_around_cpus() {
        let p = Placement::Pinned { first_cpu: 3 };
        assert_eq!(p.for_shard(0, 2), glommio::Placement::Fixed(1));
        assert_eq!(p.for_shard(1, 2), glommio::Placement::Fixed(0));
        assert_eq!(
            Placement::Unbound.for_shard(5, 2),
            glommio::Placement::Unbound
        );
    }
}
