//! `flotilla local`: a cluster of three nodes in this process on loopback,
//! for trying flotilla out.
//!
//! Node i (1-based) keeps its data in `<data-dir>/node-i`, serves the Redis
//! protocol on `127.0.0.1:<resp-port-base + i>` (6381, 6382, 6383 by
//! default), HTTP on `127.0.0.1:<http-port-base + i>` (8081..8083) and raft on `127.0.0.1:<raft-port-base + 10 i>` (+ shard).
//! Running it again with the same data directory resumes that cluster.
//!
//! Each data directory is its own cluster: a random cluster id, kept in
//! `<data-dir>/cluster-id`, so that the nodes of two `flotilla local` runs
//! never accept each other's connections (a node that dials an address the
//! other run took over is refused at the handshake).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Consistency, LogFormat, NodeConfig, PlacementKind};
use crate::node::{self, RunningNode};
use crate::service::{self, Signals};

/// Options of `flotilla local`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Data directory (one sub-directory per node).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "./flotilla-data")]
    pub data_dir: PathBuf,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Shards per node. Default: the count an existing data directory was
    /// created with, else the CPUs shared among the nodes, at least 1 each
    /// (every node of `local` runs on this machine: more executors than
    /// cores only adds context switches; on 2 cores, 1 shard per node served
    /// 1.4-1.6x the SETs of 2).
    #[arg(long)]
    pub shards: Option<usize>,
    /// KV groups (keep it the same between runs).
    #[arg(long, default_value_t = 16)]
    pub kv_groups: u32,
    /// Node i serves the Redis protocol on 127.0.0.1:<this + i>.
    #[arg(long, default_value_t = 6380)]
    pub resp_port_base: u16,
    /// Node i serves HTTP on 127.0.0.1:<this + i>.
    #[arg(long, default_value_t = 8080)]
    pub http_port_base: u16,
    /// Node i's shard s listens for raft on 127.0.0.1:<this + 10 i + s>.
    #[arg(long, default_value_t = 7100)]
    pub raft_port_base: u16,
    /// Largest value a client may send, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_value_bytes: usize,
    /// Executors (threads) per node serving clients; 0 (the default here)
    /// serves them on the node's shard executors, seastar style.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=256))]
    pub client_threads: u64,
    /// Default consistency of client reads (a connection may change its
    /// own with `CONSISTENCY`, an HTTP request with `?consistency=`).
    #[arg(
        long,
        env = "FLOTILLA_READ_CONSISTENCY",
        default_value = "linearizable"
    )]
    pub read_consistency: Consistency,
    /// Most concurrent client connections per node and protocol.
    #[arg(long, env = "FLOTILLA_MAX_CLIENTS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_clients: u64,
    /// Log format (level from RUST_LOG).
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// `--shards`; else the count the cluster's data was created with (a
/// resumed cluster keeps it: groups map to shards by it); else the
/// machine's CPUs shared among the nodes (at least 1).
fn shards_per_node(args: &LocalArgs) -> usize {
    args.shards
        .or_else(|| {
            flotilla::shards_on_disk(&args.data_dir.join("node-1"))
                .ok()
                .flatten()
        })
        .unwrap_or_else(|| (flotilla::available_cpus() / args.nodes as usize).clamp(1, 10))
}

fn port(base: u16, add: u64) -> Result<u16, String> {
    u16::try_from(u64::from(base) + add).map_err(|_| format!("port {base} + {add} is past 65535"))
}

/// The configuration of node `i` of the local cluster.
fn node_config(args: &LocalArgs, i: u64) -> Result<NodeConfig, String> {
    let raft = |n: u64| -> Result<SocketAddr, String> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            port(args.raft_port_base, 10 * n)?,
        )))
    };
    let mut members = Vec::new();
    for n in 1..=args.nodes {
        members.push(format!("{n}={}", raft(n)?));
    }
    let shards = shards_per_node(args);
    if shards > 10 {
        return Err(format!(
            "--shards {shards} is over 10 (raft ports are 10 apart)"
        ));
    }
    Ok(NodeConfig {
        node_id: i,
        data_dir: args.data_dir.join(format!("node-{i}")),
        raft_addr: raft(i)?,
        resp_addr: SocketAddr::from(([127, 0, 0, 1], port(args.resp_port_base, i)?)),
        http_addr: SocketAddr::from(([127, 0, 0, 1], port(args.http_port_base, i)?)),
        shards,
        members,
        kv_groups: args.kv_groups,
        max_value_bytes: args.max_value_bytes,
        client_threads: args.client_threads as usize,
        placement: PlacementKind::Unbound,
        io_memory_bytes: 1 << 20,
        log_format: args.log_format,
        read_consistency: args.read_consistency,
        max_clients: args.max_clients as usize,
        ..NodeConfig::default()
    })
}

/// Runs the local cluster until SIGINT/SIGTERM.
///
/// # Errors
/// One line naming the problem.
pub fn run(args: LocalArgs) -> Result<(), String> {
    let signals = Signals::install()?;
    service::init_logging(args.log_format);
    let max_clients = service::fit_max_clients(args.max_clients as usize, args.nodes as usize);
    let cluster_id = cluster_id_of(&args.data_dir)?;
    let mut configs = Vec::new();
    for i in 1..=args.nodes {
        let mut cfg = node_config(&args, i)?;
        cfg.cluster_id = cluster_id;
        cfg.max_clients = max_clients;
        cfg.validate().map_err(|e| format!("node {i}: {e}"))?;
        configs.push(cfg);
    }
    let mut nodes: Vec<RunningNode> = Vec::new();
    for cfg in &configs {
        match node::start(cfg) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                stop_all(nodes);
                return Err(format!("node {}: {e}", cfg.node_id));
            }
        }
    }
    println!(
        "flotilla local: {} nodes, data in {}",
        nodes.len(),
        args.data_dir.display()
    );
    for n in &nodes {
        let e = &n.endpoints;
        println!(
            "  node {}: redis {}  http {}  raft {}  data {}",
            e.node_id,
            e.resp,
            e.http,
            e.raft,
            e.data_dir.display()
        );
    }
    if let Some(first) = nodes.first() {
        println!(
            "try: redis-cli -p {} set a 1 && curl http://{}/kv/a",
            first.endpoints.resp.port(),
            first.endpoints.http
        );
    }
    println!("serving; Ctrl-C (SIGINT) or SIGTERM stops");
    let sig = signals.wait();
    tracing::info!(signal = sig, "stopping the local cluster");
    stop_all(nodes);
    println!("flotilla local: stopped");
    Ok(())
}

const CLUSTER_ID_FILE: &str = "cluster-id";

/// The cluster id of the local cluster in `data_dir`: read from its
/// `cluster-id` file; for a new directory a random one, written there; for
/// data written before the file existed, 1 (the id it was created with).
fn cluster_id_of(data_dir: &std::path::Path) -> Result<u64, String> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return match text.trim().parse::<u64>() {
                Ok(id) if id != 0 => Ok(id),
                _ => Err(format!(
                    "{}: not a cluster id (a non-zero integer): {:?}",
                    path.display(),
                    text.trim()
                )),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let id = if data_dir.join("node-1").exists() {
        1
    } else {
        random_cluster_id()
    };
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let tmp = data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(id)
}

/// A non-zero id unlikely to be any other cluster's: std's per-process
/// random hash keys, the clock and the process id.
fn random_cluster_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish().max(2)
}

fn stop_all(nodes: Vec<RunningNode>) {
    // Stop in parallel: a node stopping alone can wait on its peers.
    let threads: Vec<_> = nodes
        .into_iter()
        .map(|n| std::thread::spawn(move || n.stop()))
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        local: LocalArgs,
    }

    fn args(argv: &[&str]) -> LocalArgs {
        Cli::try_parse_from(std::iter::once("local").chain(argv.iter().copied()))
            .expect("valid arguments")
            .local
    }

    #[test]
    fn by_default_the_nodes_share_the_cpus_and_serve_clients_on_their_shards() {
        let cpus = flotilla::available_cpus();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let cfg = node_config(&args(&["--data-dir", data]), 2).unwrap();
        assert_eq!(cfg.shards, (cpus / 3).clamp(1, 10));
        assert_eq!(cfg.client_threads, 0);
        let one = node_config(&args(&["--data-dir", data, "--nodes", "1"]), 1).unwrap();
        assert_eq!(one.shards, cpus.clamp(1, 10));
    }

    #[test]
    fn a_resumed_cluster_keeps_the_shard_count_of_its_data() {
        let dir = tempfile::tempdir().unwrap();
        for s in 0..3 {
            std::fs::create_dir_all(dir.path().join(format!("node-1/shard-{s}"))).unwrap();
        }
        let data = dir.path().to_str().unwrap();
        let cfg = node_config(&args(&["--data-dir", data]), 2).unwrap();
        assert_eq!(cfg.shards, 3);
        let cfg = node_config(&args(&["--data-dir", data, "--shards", "1"]), 2).unwrap();
        assert_eq!(
            cfg.shards, 1,
            "an explicit count wins (the engine then refuses it)"
        );
    }

    #[test]
    fn each_data_directory_is_a_cluster_of_its_own() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let id_a = cluster_id_of(&a.path().join("new")).unwrap();
        let id_b = cluster_id_of(b.path()).unwrap();
        assert_ne!(id_a, id_b, "two new clusters share an id");
        assert_ne!(id_a, 1, "1 is what every cluster used before");
        assert_eq!(
            cluster_id_of(&a.path().join("new")).unwrap(),
            id_a,
            "resumed"
        );
        // Data from before the file existed keeps the id it was made with.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("node-1/shard-0")).unwrap();
        assert_eq!(cluster_id_of(old.path()).unwrap(), 1);
        assert_eq!(cluster_id_of(old.path()).unwrap(), 1);
        std::fs::write(b.path().join(CLUSTER_ID_FILE), "zero\n").unwrap();
        let err = cluster_id_of(b.path()).unwrap_err();
        assert!(err.contains("not a cluster id"), "{err}");
    }

    #[test]
    fn read_consistency_and_max_clients_reach_every_node() {
        let cfg = node_config(&args(&[]), 1).unwrap();
        assert_eq!(cfg.read_consistency, Consistency::Linearizable);
        assert_eq!(cfg.max_clients, 10_000);
        let a = args(&["--read-consistency", "lease", "--max-clients", "64"]);
        for i in 1..=3 {
            let cfg = node_config(&a, i).unwrap();
            assert_eq!(
                (cfg.read_consistency, cfg.max_clients),
                (Consistency::Lease, 64)
            );
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("local").chain(argv.iter().copied())).map(|_| ())
        };
        assert!(parse(&["--read-consistency", "eventual"]).is_err());
        assert!(parse(&["--max-clients", "0"]).is_err());
    }

    #[test]
    fn explicit_shards_and_client_threads_are_kept_and_checked() {
        let cfg = node_config(&args(&["--shards", "4", "--client-threads", "2"]), 1).unwrap();
        assert_eq!((cfg.shards, cfg.client_threads), (4, 2));
        let err = node_config(&args(&["--shards", "11"]), 1).unwrap_err();
        assert!(err.contains("over 10"), "{err}");
    }
}
