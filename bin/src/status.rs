//! `flotilla status --node ADDR`: groups, leaders, terms, commit/apply
//! indexes and lag of a running node, read over its Redis-protocol port
//! (`INFO`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Options of `flotilla status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The node's Redis-protocol address (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub node: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the raw INFO text instead of a table.
    #[arg(long)]
    pub raw: bool,
}

/// Reads and prints the node's status.
///
/// # Errors
/// One line: unreachable node, bad reply.
pub fn run(args: StatusArgs) -> Result<(), String> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let addr: SocketAddr = args
        .node
        .to_socket_addrs()
        .map_err(|e| format!("node address {:?}: {e}", args.node))?
        .next()
        .ok_or_else(|| format!("node address {:?} resolves to nothing", args.node))?;
    let text = fetch_info(addr, timeout).map_err(|e| {
        format!(
            "node {addr}: {e} (`--node` is a node's Redis address; `flotilla local` serves \
             127.0.0.1:6381..6383)"
        )
    })?;
    if args.raw {
        print!("{}", text.replace("\r\n", "\n"));
        return Ok(());
    }
    print!("{}", render(&text));
    Ok(())
}

/// Sends `INFO` and returns the bulk reply.
fn fetch_info(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"*1\r\n$4\r\nINFO\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut header = String::new();
    r.read_line(&mut header).map_err(|e| e.to_string())?;
    let header = header.trim_end();
    if let Some(err) = header.strip_prefix('-') {
        return Err(format!("the node answered an error: {err}"));
    }
    let len: usize = header
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= 64 << 20)
        .ok_or_else(|| format!("not a Redis-protocol INFO reply: {header:?}"))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    String::from_utf8(body).map_err(|_| "the INFO reply is not UTF-8".into())
}

/// A table of the node and its groups from INFO text.
fn render(info: &str) -> String {
    let mut out = String::new();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    out.push_str(&format!(
        "node {} (cluster {}), {} shards, {} KV groups, up {} s, flotilla {}\n",
        field("node_id"),
        field("cluster_id"),
        field("shards"),
        field("kv_groups"),
        field("uptime_in_seconds"),
        field("flotilla_version"),
    ));
    out.push_str(&format!(
        "{:>8} {:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}\n",
        "group", "role", "leader", "term", "commit", "applied", "last", "lag", "props", "reads"
    ));
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("group_") else {
            continue;
        };
        let Some((id, kv)) = rest.split_once(':') else {
            continue;
        };
        let get = |k: &str| {
            kv.split(',')
                .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("?")
                .to_string()
        };
        out.push_str(&format!(
            "{:>8} {:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}\n",
            id,
            get("role"),
            get("leader"),
            get("term"),
            get("commit"),
            get("applied"),
            get("last_index"),
            get("apply_lag"),
            get("proposals_pending"),
            get("reads_pending"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_groups_from_info() {
        let info = "# Server\r\nnode_id:2\r\ncluster_id:1\r\nshards:2\r\nkv_groups:16\r\n\r\n# Raft\r\n\
                    group_3:role=leader,leader=2,term=4,commit=10,applied=9,last_index=10,apply_lag=1,proposals_pending=0,reads_pending=0\r\n";
        let t = render(info);
        assert!(
            t.starts_with("node 2 (cluster 1), 2 shards, 16 KV groups"),
            "{t}"
        );
        let row = t.lines().nth(2).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            ["3", "leader", "2", "4", "10", "9", "10", "1", "0", "0"]
        );
    }
}
