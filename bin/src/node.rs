//! One running node: the engine (`NodeHost`), the KV groups, and the client
//! servers (on the shard executors by default, or on `client_threads`
//! executors of their own).
//!
//! ```text
//!  main thread ── checks: data dir writable, client + raft ports free
//!              ── NodeHost::start (shard executors)
//!              ── start_group(g, members) for every KV group (idempotent)
//!              ── client executors (glommio, unbound): RESP and HTTP accept
//!                 loops on shared listening sockets, each request a call
//!                 into Arc<NodeHost>; with client_threads = 0 the same
//!                 loops run on the shard executors (NodeHost::spawn_on_shard)
//!  stop()      ── close the stop channel: accept loops end, connections
//!                 finish their pipeline in flight and close; join the
//!                 client executors; NodeHost::shutdown (shards sync, exit)
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::rc::Rc;

use flotilla::kv::KvClient;
use flotilla::{HostError, NodeHost};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::config::NodeConfig;
use crate::http::{self, HttpOptions, HttpState};
use crate::resp;
use crate::resp::command::Shared;

mod join;

/// Deadline of bootstrapping one group at start.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// Timers a client executor keeps armed (GLOMMIO.md bug 2): as a shard.
const CLIENT_TIMER_RESERVE: usize = flotilla::shard::TIMER_RESERVE;
/// Pinned I/O memory of a client executor (it does no disk I/O).
const CLIENT_IO_MEMORY_BYTES: usize = 512 << 10;
/// Pause between two attempts on a held port.
const PORT_RETRY: Duration = Duration::from_millis(20);

/// Why a node could not start: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration problem found at start.
    #[error("{0}")]
    Config(String),
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {error}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A listen address cannot be bound.
    #[error("{what} address {addr}: {error}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why (port in use, address not available...).
        error: std::io::Error,
    },
    /// The engine did not start.
    #[error("cannot start the node: {0}")]
    Host(HostError),
    /// Joining through another node's HTTP API failed.
    #[error("cannot join through {via}: {reason}")]
    Join {
        /// The HTTP address given to --join.
        via: String,
        /// Why.
        reason: String,
    },
    /// The KV groups could not be started.
    #[error("cannot start KV group {group}: {error}")]
    Bootstrap {
        /// The group.
        group: u64,
        /// Why.
        error: HostError,
    },
    /// A client executor could not be created.
    #[error("cannot start a client executor: {0}")]
    Executor(String),
}

/// The addresses a node serves.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Node id.
    pub node_id: u64,
    /// Raft address of shard 0.
    pub raft: SocketAddr,
    /// Redis protocol.
    pub resp: SocketAddr,
    /// HTTP API.
    pub http: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
}

/// A started node; [`RunningNode::stop`] stops it.
pub struct RunningNode {
    host: Arc<NodeHost>,
    shared: Option<Arc<Shared>>,
    stop_tx: Option<flume::Sender<()>>,
    clients: Vec<flotilla::exec::ExecutorHandle<()>>,
    /// Servers running on the shards: each closes its channel when done.
    on_shards: Vec<flume::Receiver<()>>,
    /// Where it serves.
    pub endpoints: Endpoints,
}

/// The file in a data directory that records its number of KV groups.
const KV_GROUPS_FILE: &str = "kv-groups";

/// Refuses to serve a data directory with another number of KV groups than
/// it was created with: keys hash over the KV groups, so with another count
/// most keys would be looked for in groups that do not hold them (they
/// seemed lost, and writes went to the wrong groups). Data from before the
/// file existed is accepted once and the file written.
fn check_kv_groups(dir: &Path, kv_groups: u32) -> Result<(), StartError> {
    let path = dir.join(KV_GROUPS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StartError::DataDir { path, error }),
    };
    let recorded: u32 = text.trim().parse().map_err(|_| {
        StartError::Config(format!(
            "{}: {:?} is not a number of KV groups",
            path.display(),
            text.trim()
        ))
    })?;
    if recorded != kv_groups {
        return Err(StartError::Config(format!(
            "{} was created with {recorded} KV groups, not {kv_groups}: keys hash over the KV \
             groups, so restart with --kv-groups {recorded}",
            dir.display()
        )));
    }
    Ok(())
}

/// Records the number of KV groups once the node serves them.
fn remember_kv_groups(dir: &Path, kv_groups: u32) -> Result<(), StartError> {
    let path = dir.join(KV_GROUPS_FILE);
    if path.exists() {
        return Ok(());
    }
    std::fs::write(&path, format!("{kv_groups}\n"))
        .map_err(|error| StartError::DataDir { path, error })
}

/// Checks that `dir` exists (creating it) and is writable.
fn check_data_dir(dir: &Path) -> Result<(), StartError> {
    let fail = |error| StartError::DataDir {
        path: dir.to_path_buf(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".flotilla-write-probe");
    std::fs::write(&probe, b"probe").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    Ok(())
}

/// Runs `attempt` until it fails with something other than "address in
/// use" or succeeds, for up to `wait`. A node killed with SIGKILL keeps its
/// listening sockets for a moment after it is reaped (io_uring tears its
/// ring down, and with it the files its pending accepts hold,
/// asynchronously): a restart right after the kill found its Redis port
/// "in use" and exited (fault soak, seed 7104).
fn while_in_use<T>(
    what: &'static str,
    addr: SocketAddr,
    wait: Duration,
    mut attempt: impl FnMut() -> std::io::Result<T>,
) -> Result<T, StartError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match attempt() {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < wait =>
            {
                if !warned {
                    warn!(what, %addr, ?wait, "address in use: waiting for it (a killed earlier run may still hold it)");
                    warned = true;
                }
                // `start` runs on a plain thread, never on an executor.
                std::thread::park_timeout(PORT_RETRY);
            }
            result => {
                if warned && result.is_ok() {
                    info!(what, %addr, waited = ?started.elapsed(), "address free");
                }
                return result.map_err(|error| StartError::Bind { what, addr, error });
            }
        }
    }
}

/// Binds `addr`, waiting up to `wait` while it is in use.
fn bind_waiting(
    what: &'static str,
    addr: SocketAddr,
    wait: Duration,
) -> Result<StdListener, StartError> {
    let l = while_in_use(what, addr, wait, || StdListener::bind(addr))?;
    l.set_nonblocking(true)
        .map_err(|error| StartError::Bind { what, addr, error })?;
    Ok(l)
}

/// Fails if something listens on `addr` after waiting up to `wait` for it
/// to go away. A plain bind also fails on connections of an earlier run
/// left in TIME_WAIT (the transport binds with SO_REUSEADDR, so they do not
/// block it): then a connect tells whether anyone really listens.
fn probe_raft_port_waiting(addr: SocketAddr, wait: Duration) -> Result<(), StartError> {
    while_in_use("raft", addr, wait, || match StdListener::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => Err(e),
                Err(_) => Ok(()),
            }
        }
        other => other.map(drop),
    })
}

/// Starts a node (blocking: call it from a plain thread, not an executor).
///
/// # Errors
/// [`StartError`], one line naming the problem; everything already started
/// is stopped again.
pub fn start(cfg: &NodeConfig) -> Result<RunningNode, StartError> {
    cfg.validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let members = cfg
        .member_list()
        .map_err(|e| StartError::Config(e.to_string()))?;
    check_data_dir(&cfg.data_dir)?;
    check_kv_groups(&cfg.data_dir, cfg.kv_groups)?;
    info!(
        node = cfg.node_id,
        shards = cfg.shards,
        data_dir = %cfg.data_dir.display(),
        "node starting"
    );
    // Client listeners first (kept), raft ports probed: the shards bind
    // those themselves (exclusively, see the transport), and waiting here
    // for a port still held by an earlier run fails with one clear error
    // before any executor starts.
    let port_wait = Duration::from_millis(cfg.port_wait_ms);
    let resp_listener = bind_waiting("redis (resp)", cfg.resp_addr, port_wait)?;
    let resp_addr = resp_listener
        .local_addr()
        .map_err(|error| StartError::Bind {
            what: "redis (resp)",
            addr: cfg.resp_addr,
            error,
        })?;
    let http_listener = bind_waiting("http", cfg.http_addr, port_wait)?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|error| StartError::Bind {
            what: "http",
            addr: cfg.http_addr,
            error,
        })?;
    for s in 0..cfg.shards {
        let mut addr = cfg.raft_addr;
        addr.set_port(cfg.raft_addr.port() + s as u16);
        probe_raft_port_waiting(addr, port_wait)?;
    }

    let host = Arc::new(NodeHost::start(cfg.host_config()).map_err(StartError::Host)?);
    let groups = cfg.kv_group_ids();
    if let Some(via) = &cfg.join {
        if let Err(e) = join::join_cluster(&host, cfg, via, &groups) {
            shutdown_host(host);
            return Err(e);
        }
    } else {
        let bootstrap = futures_lite::future::block_on(futures::future::join_all(
            groups
                .iter()
                .map(|g| host.start_group(*g, members.clone(), BOOTSTRAP_TIMEOUT)),
        ));
        if let Some((g, Err(error))) = groups.iter().zip(bootstrap).find(|(_, r)| r.is_err()) {
            shutdown_host(host);
            return Err(StartError::Bootstrap { group: g.0, error });
        }
    }

    remember_kv_groups(&cfg.data_dir, cfg.kv_groups)?;

    let servers = if cfg.client_threads == 0 {
        host.shard_count()
    } else {
        cfg.client_threads
    };
    let mut shared = Shared::new(
        host.clone(),
        groups,
        cfg.max_value_bytes,
        cfg.request_timeout(),
        cfg.read_consistency.engine(),
        cfg.max_clients,
        resp_addr,
    );
    shared.pubsub_links = crate::resp::pubsub::Links::new(servers);
    let shared = Arc::new(shared);
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let mut node = RunningNode {
        host,
        shared: Some(shared.clone()),
        stop_tx: Some(stop_tx),
        clients: Vec::new(),
        on_shards: Vec::new(),
        endpoints: Endpoints {
            node_id: cfg.node_id,
            raft: cfg.raft_addr,
            resp: resp_addr,
            http: http_addr,
            data_dir: cfg.data_dir.clone(),
        },
    };
    let http_options = HttpOptions {
        body_bytes_max: cfg.max_value_bytes + 4096,
        timeout: cfg.request_timeout(),
        connections_max: cfg.max_clients,
        ..HttpOptions::default()
    };
    for i in 0..servers {
        let fds: (OwnedFd, OwnedFd) = match (resp_listener.try_clone(), http_listener.try_clone()) {
            (Ok(r), Ok(h)) => (r.into(), h.into()),
            (Err(e), _) | (_, Err(e)) => {
                node.stop();
                return Err(StartError::Executor(format!(
                    "cannot share the listeners: {e}"
                )));
            }
        };
        let server = ClientServer {
            fds,
            shared: shared.clone(),
            stop: stop_rx.clone(),
            http_options: http_options.clone(),
            node_id: cfg.node_id,
            expiry: i == 0,
            index: i,
        };
        if cfg.client_threads == 0 {
            // Seastar style: each shard accepts and serves connections
            // itself, so a request to one of its own groups needs no
            // cross-thread wake-up.
            let (done_tx, done_rx) = flume::bounded::<()>(1);
            let spawned = futures_lite::future::block_on(node.host.spawn_on_shard(
                i as flotilla::shard::ShardId,
                Box::new(move || {
                    Box::pin(async move {
                        server.run().await;
                        drop(done_tx);
                    })
                }),
            ));
            if let Err(e) = spawned {
                node.stop();
                return Err(StartError::Executor(format!("shard {i}: {e}")));
            }
            node.on_shards.push(done_rx);
            continue;
        }
        let builder = LocalExecutorBuilder::new(Placement::Unbound)
            .preempt_timer(Duration::from_millis(2))
            .io_memory(CLIENT_IO_MEMORY_BYTES);
        let name = format!("flotilla-n{}-client{i}", cfg.node_id);
        let spawned = flotilla::exec::spawn(builder, name, move || async move {
            // glommio 0.9.0 bug 2 (an executor parked with runnable
            // work): the engine's reserve of armed timers guards this
            // executor too.
            let armed_stop = Rc::new(std::cell::Cell::new(false));
            let armed = glommio::spawn_local(flotilla::shard::keep_timers_armed(
                Duration::from_millis(10),
                CLIENT_TIMER_RESERVE,
                armed_stop.clone(),
            ));
            server.run().await;
            armed_stop.set(true);
            armed.await;
        });
        match spawned {
            Ok(h) => node.clients.push(h),
            Err(e) => {
                node.stop();
                return Err(StartError::Executor(e.to_string()));
            }
        }
    }
    drop(resp_listener);
    drop(http_listener);
    info!(
        node = cfg.node_id,
        resp = %resp_addr,
        http = %http_addr,
        raft = %cfg.raft_addr,
        kv_groups = cfg.kv_groups,
        data_dir = %cfg.data_dir.display(),
        "node serving"
    );
    Ok(node)
}

/// One RESP + HTTP server: a share of the node's listening sockets, served
/// on the executor it runs on (a client executor or a shard).
struct ClientServer {
    fds: (OwnedFd, OwnedFd),
    shared: Arc<Shared>,
    stop: flume::Receiver<()>,
    http_options: HttpOptions,
    node_id: u64,
    /// Runs the node's key expiry task (one server of the node does).
    expiry: bool,
    /// Its position among the node's client servers.
    index: usize,
}

impl ClientServer {
    /// Serves until the node's stop channel closes and the connections in
    /// flight finish.
    async fn run(self) {
        use std::os::fd::FromRawFd;
        let ClientServer {
            fds: (resp_fd, http_fd),
            shared,
            stop,
            http_options,
            node_id,
            expiry,
            index,
        } = self;
        // SAFETY: both are owned, bound, listening, non-blocking TCP sockets;
        // ownership moves into the glommio listeners.
        let resp_listener =
            unsafe { glommio::net::TcpListener::from_raw_fd(resp_fd.into_raw_fd()) };
        let http_listener =
            unsafe { glommio::net::TcpListener::from_raw_fd(http_fd.into_raw_fd()) };
        let mut kv = KvClient::new(shared.host.clone(), shared.kv_groups.clone())
            .expect("at least one KV group");
        kv.timeout = shared.request_timeout;
        kv.consistency = shared.read_consistency;
        let http_state = Rc::new(HttpState::with_options(kv, node_id, http_options));
        let http_stop = stop.clone();
        let http = glommio::spawn_local(http::serve_until(http_listener, http_state, async move {
            let _ = http_stop.recv_async().await;
        }));
        let expiry =
            expiry.then(|| glommio::spawn_local(crate::expiry::run(shared.clone(), stop.clone())));
        let pubsub = glommio::spawn_local({
            let (shared, stop) = (shared.clone(), stop.clone());
            async move { crate::resp::pubsub::link(&shared.pubsub_links, index, stop).await }
        });
        resp::serve(resp_listener, shared, stop).await;
        http.await;
        pubsub.await;
        if let Some(task) = expiry {
            task.await;
        }
    }
}

fn shutdown_host(host: Arc<NodeHost>) {
    futures_lite::future::block_on(host.shutdown());
}

impl RunningNode {
    /// Stops accepting, lets in-flight requests finish, stops the engine.
    pub fn stop(mut self) {
        let node = self.endpoints.node_id;
        info!(node, "node stopping");
        drop(self.stop_tx.take());
        for h in self.clients.drain(..) {
            if let Err(reason) = h.join() {
                error!(node, %reason, "a client executor failed");
            }
        }
        for done in self.on_shards.drain(..) {
            // Disconnected once the server's task ends (or its shard died).
            let _ = done.recv();
        }
        drop(self.shared.take());
        shutdown_host(self.host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> (StdListener, SocketAddr) {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// Closes `l` after `d`, on a thread of its own.
    fn release_after(l: StdListener, d: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let until = Instant::now() + d;
            while Instant::now() < until {
                std::thread::park_timeout(until - Instant::now());
            }
            drop(l);
        })
    }

    #[test]
    fn a_port_held_for_a_moment_is_waited_for() {
        let (l, addr) = held();
        let started = Instant::now();
        let release = release_after(l, Duration::from_millis(300));
        let got = bind_waiting("test", addr, Duration::from_secs(10)).expect("bound once free");
        assert_eq!(got.local_addr().unwrap(), addr);
        assert!(started.elapsed() >= Duration::from_millis(250));
        release.join().unwrap();
    }

    #[test]
    fn a_port_held_for_good_fails_after_the_wait() {
        let (_l, addr) = held();
        let started = Instant::now();
        match bind_waiting("test", addr, Duration::from_millis(200)) {
            Err(StartError::Bind { error, .. }) => {
                assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse)
            }
            other => panic!("expected address in use, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        match probe_raft_port_waiting(addr, Duration::from_millis(200)) {
            Err(StartError::Bind { what: "raft", .. }) => {}
            other => panic!("expected address in use, got {other:?}"),
        }
    }

    #[test]
    fn a_raft_port_held_for_a_moment_is_waited_for() {
        let (l, addr) = held();
        let release = release_after(l, Duration::from_millis(300));
        probe_raft_port_waiting(addr, Duration::from_secs(10)).expect("free once released");
        release.join().unwrap();
    }
}
