//! Shared helpers of the `launcher_*` tests: find (and build if needed) the
//! `flotilla` binary, allocate loopback ports, run `flotilla node`
//! processes, wait with deadlines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `flotilla` binary of this workspace's target directory. `cargo test
/// --workspace` builds it (the bin crate has an integration test, so cargo
/// builds its binary first); when a test of this crate runs alone, it is
/// built here with the same cargo and target directory.
pub fn flotilla_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join("flotilla");
        if let Ok(cargo) = std::env::var("CARGO") {
            let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "flotilla-cli",
                "--bin",
                "flotilla",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            match cmd.status() {
                Ok(s) if s.success() => {}
                other => eprintln!(
                    "building flotilla failed ({other:?}); using {}",
                    bin.display()
                ),
            }
        }
        assert!(
            bin.exists(),
            "{} does not exist: run `cargo build -p flotilla-cli` first",
            bin.display()
        );
        bin
    })
    .clone()
}

/// How long a started node may take to answer PING and accept a write of
/// every group. A fresh node writes its first WAL segment full of zeros
/// before it serves; twelve nodes starting at once on a slow CI disk took
/// long enough that 30 s failed once (with nothing in the node's log yet).
pub const READY: Duration = Duration::from_secs(60);

/// WAL segment size of test nodes: 8 MiB instead of the default 64 MiB, so
/// that a fresh node zero-fills (and prepares as its spare) 16 MiB, not
/// 128 MiB, and a dozen nodes starting at once do not queue on the disk.
pub const TEST_WAL_SEGMENT_BYTES: u64 = 8 << 20;

/// A free loopback port (bound and released; another process could take it
/// in between, which is unlikely in practice).
///
/// Never the same port twice in one test process: the kernel may hand a
/// just-released port out again at once, and two of a node's addresses
/// (or two tests' nodes) then collide (CI saw a node refuse an HTTP address
/// equal to its raft address).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if GIVEN.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// Ports handed out by this test process.
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A loopback address whose port and the `n - 1` ports after it are free
/// and were never handed out: a node's raft address (shard s listens on
/// port + s).
pub fn free_addr_block(n: usize) -> SocketAddr {
    loop {
        let port = free_port();
        let rest: Vec<u16> = (1..n as u16).filter_map(|i| port.checked_add(i)).collect();
        if rest.len() + 1 != n {
            continue;
        }
        let mut given = GIVEN.lock().expect("port set");
        let free = rest.iter().all(|p| {
            !given.contains(p) && TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *p))).is_ok()
        });
        if free {
            given.extend(rest);
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

/// Shards of each test node: `FLOTILLA_TEST_SHARDS` (1 to 8), default 1.
/// With 2, the launcher tests run nodes as `flotilla node` starts them by
/// default on a 2-CPU machine (clients served on both shards, requests
/// crossing executors).
pub fn test_shards() -> usize {
    std::env::var("FLOTILLA_TEST_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=8).contains(n))
        .unwrap_or(1)
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit within `deadline`; kills it and fails if it
/// does not.
pub fn wait_exit(child: &mut Child, what: &str, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to `child`.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{signal} {} failed", child.id());
}

/// One `flotilla node` process of a test cluster.
pub struct NodeProc {
    /// Node id.
    pub id: u64,
    /// Redis-protocol address.
    pub resp: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Raft address.
    pub raft: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Its stderr goes here.
    pub log: PathBuf,
    /// Flags of every start.
    pub args: Vec<String>,
    /// The process, while running.
    pub child: Option<Child>,
}

impl NodeProc {
    /// Starts (or restarts) the process.
    pub fn start(&mut self) {
        let mut cmd = Command::new(flotilla_bin());
        cmd.arg("node");
        self.spawn(cmd);
    }

    /// Starts the process with its open-file limit (`ulimit -n`, soft and
    /// hard) set to `files`.
    pub fn start_with_open_files(&mut self, files: u64) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" node \"$@\""))
            .arg(flotilla_bin());
        self.spawn(cmd);
    }

    /// Runs `cmd` (which starts `flotilla node`) with this node's flags,
    /// its stderr appended to the node's log.
    fn spawn(&mut self, mut cmd: Command) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", "info,glommio::reactor=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla node");
        self.child = Some(child);
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A Redis connection to it.
    pub fn redis(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/", self.resp)).expect("client");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to node {}: {e}\n{}", self.id, self.log_tail()));
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        conn
    }

    /// Waits until it answers PING and a KV write of every group works.
    pub fn wait_ready(&self, deadline: Duration) {
        let start = Instant::now();
        let resp = self.resp;
        loop {
            let pong = redis::Client::open(format!("redis://{resp}/"))
                .ok()
                .and_then(|client| {
                    client
                        .get_connection_with_timeout(Duration::from_millis(500))
                        .ok()
                })
                .and_then(|mut c| {
                    // A node that listens but does not serve yet must not
                    // hold this loop past its deadline.
                    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                    redis::cmd("PING").query::<String>(&mut c).ok()
                });
            if pong.is_some() {
                break;
            }
            assert!(
                start.elapsed() < deadline && !self.exited(),
                "node {} did not answer on {resp} (waited {:?} of {deadline:?}); {}\nits log:\n{}",
                self.id,
                start.elapsed(),
                self.diagnosis(),
                self.log_tail()
            );
            std::thread::park_timeout(Duration::from_millis(50));
        }
        let left = deadline.saturating_sub(start.elapsed());
        wait_for(
            &format!("node {} to accept writes", self.id),
            left.max(Duration::from_secs(1)),
            || {
                let mut c = self.redis();
                redis::cmd("SET")
                    .arg(format!("ready:{}", self.id))
                    .arg("1")
                    .query::<String>(&mut c)
                    .ok()
            },
        );
    }

    /// Whether the process has exited (a zombie not reaped yet, or gone).
    fn exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
            // "pid (comm) state ...": `comm` may hold spaces and parens.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
            Err(_) => true,
        }
    }

    /// What the process is doing, for a node that does not get ready:
    /// whether it runs, each thread's state and kernel wait channel, and
    /// its data directory's files (a WAL segment still being zero-filled
    /// shows as a `.tmp`).
    pub fn diagnosis(&self) -> String {
        let Some(child) = &self.child else {
            return "not started".into();
        };
        let pid = child.id();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let mut out = String::new();
        match std::fs::read_dir(proc.join("task")) {
            Err(e) => out.push_str(&format!("process {pid} is gone ({e})")),
            Ok(tasks) => {
                out.push_str(&format!("process {pid} threads:"));
                for task in tasks.flatten() {
                    let read = |f: &str| {
                        std::fs::read_to_string(task.path().join(f))
                            .unwrap_or_default()
                            .trim()
                            .to_string()
                    };
                    // stat: "tid (comm) state ..."
                    let stat = read("stat");
                    let state = stat
                        .rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("?"))
                        .unwrap_or("?");
                    out.push_str(&format!(
                        "\n  {} {}: {state} in {}",
                        task.file_name().to_string_lossy(),
                        read("comm"),
                        read("wchan")
                    ));
                }
            }
        }
        out.push_str(&format!("\ndata dir {}:", self.data_dir.display()));
        let mut dirs = vec![self.data_dir.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(e.path()),
                    Ok(m) => out.push_str(&format!("\n  {} {}", e.path().display(), m.len())),
                    Err(_) => {}
                }
            }
        }
        out
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "KILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(&c, "TERM");
        wait_exit(
            &mut c,
            &format!("node {}", self.id),
            Duration::from_secs(20),
        )
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` nodes ([`test_shards`] shards each, `kv_groups` groups) in `dir`,
/// not started.
pub fn cluster(dir: &Path, n: u64, kv_groups: u32, extra: &[&str]) -> Vec<NodeProc> {
    let shards = test_shards();
    let raft: Vec<SocketAddr> = (0..n).map(|_| free_addr_block(shards)).collect();
    let members: Vec<String> = raft
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    (1..=n)
        .map(|id| {
            let resp = free_addr();
            let http = free_addr();
            let data_dir = dir.join(format!("node-{id}"));
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--raft-addr".into(),
                raft[id as usize - 1].to_string(),
                "--resp-addr".into(),
                resp.to_string(),
                "--http-addr".into(),
                http.to_string(),
                "--members".into(),
                members.join(","),
                "--shards".into(),
                shards.to_string(),
                "--placement".into(),
                "unbound".into(),
                "--kv-groups".into(),
                kv_groups.to_string(),
                "--io-memory-bytes".into(),
                (1 << 20).to_string(),
                "--wal-segment-bytes".into(),
                TEST_WAL_SEGMENT_BYTES.to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            NodeProc {
                id,
                resp,
                http,
                raft: raft[id as usize - 1],
                log: dir.join(format!("node-{id}.log")),
                data_dir,
                args,
                child: None,
            }
        })
        .collect()
}

/// [`cluster`], started, every node ready.
/// `n` started `flotilla node`s with `kv_groups` KV groups, each ready
/// (answers PING, and a write of every group works).
pub fn ready_cluster(dir: &Path, n: u64, kv_groups: u32) -> Vec<NodeProc> {
    let mut nodes = cluster(dir, n, kv_groups, &[]);
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in &nodes {
        node.wait_ready(READY);
    }
    nodes
}

pub fn started_cluster(dir: &Path, n: u64, kv_groups: u32, extra: &[&str]) -> Vec<NodeProc> {
    let mut nodes = cluster(dir, n, kv_groups, extra);
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in &nodes {
        node.wait_ready(READY);
    }
    nodes
}

/// One HTTP/1.1 request over a plain socket; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("http connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("http write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("http read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Sends raw bytes on a socket and reads until `expect_replies` RESP lines
/// starting with + - : $ * arrived (or 5 s passed).
pub fn raw_exchange(s: &mut TcpStream, send: &[u8], want_prefix_count: usize) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(send).expect("raw write");
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let text = String::from_utf8_lossy(&out);
        if text.matches("\r\n").count() >= want_prefix_count {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
