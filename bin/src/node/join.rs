//! `flotilla node --join HTTP_ADDR`: become a member of every KV group of a
//! running cluster through the HTTP admin API of one of its nodes.
//!
//! For each KV group g: `GET /groups/{g}/members` (current members and their
//! raft addresses) → `join_group(g, members)` here (an empty replica that
//! waits for the leader) → `POST /groups/{g}/members {"node", "addr"}` on the
//! existing node (forwarded to g's leader, which then sends the log or a
//! snapshot). A node that already is a member (a restart) only starts its
//! replica.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use flotilla::{GroupId, NodeHost, NodeId};

use super::{StartError, BOOTSTRAP_TIMEOUT};
use crate::config::NodeConfig;

/// Deadline of one HTTP call to the node we join through.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep retrying a group's membership change (one change at a
/// time per group; a leader election may be in progress).
const ADD_RETRY_FOR: Duration = Duration::from_secs(30);

pub(super) fn join_cluster(
    host: &NodeHost,
    cfg: &NodeConfig,
    via: &str,
    groups: &[GroupId],
) -> Result<(), StartError> {
    let fail = |reason: String| StartError::Join {
        via: via.to_string(),
        reason,
    };
    let addr: SocketAddr = via
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .map_err(|e| fail(format!("bad address: {e}")))?
        .next()
        .ok_or_else(|| fail("the address resolves to nothing".into()))?;
    let (status, body) =
        http(addr, "GET", "/status", "").map_err(|e| fail(format!("GET /status: {e}")))?;
    if status != 200 {
        return Err(fail(format!("GET /status: {status} {}", body.trim())));
    }
    check_same_cluster(&body, cfg.cluster_id, cfg.shards, cfg.kv_groups).map_err(fail)?;
    let me = NodeId(cfg.node_id);
    for g in groups {
        let (status, body) = http(addr, "GET", &format!("/groups/{}/members", g.0), "")
            .map_err(|e| fail(format!("group {}: {e}", g.0)))?;
        if status != 200 {
            return Err(fail(format!(
                "GET /groups/{}/members: {status} {body}",
                g.0
            )));
        }
        let members = parse_members(&body).map_err(|e| fail(format!("group {}: {e}", g.0)))?;
        if members.iter().any(|(id, _)| *id == me) {
            futures_lite::future::block_on(host.join_group(*g, members, false, BOOTSTRAP_TIMEOUT))
                .or_else(|e| already_hosted(host, *g, e))
                .map_err(|e| fail(format!("group {}: {e}", g.0)))?;
            continue;
        }
        futures_lite::future::block_on(host.join_group(*g, members, false, BOOTSTRAP_TIMEOUT))
            .or_else(|e| already_hosted(host, *g, e))
            .map_err(|e| fail(format!("group {}: {e}", g.0)))?;
        let request = serde_json::json!({ "node": cfg.node_id, "addr": cfg.raft_addr.to_string() })
            .to_string();
        let started = Instant::now();
        loop {
            let (status, body) = http(addr, "POST", &format!("/groups/{}/members", g.0), &request)
                .map_err(|e| fail(format!("group {}: {e}", g.0)))?;
            if status == 200 {
                break;
            }
            if started.elapsed() > ADD_RETRY_FOR || !(status == 409 || status >= 500) {
                return Err(fail(format!(
                    "POST /groups/{}/members: {status} {}",
                    g.0,
                    body.trim()
                )));
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
        tracing::info!(group = g.0, "joined group");
    }
    Ok(())
}

fn already_hosted(
    host: &NodeHost,
    g: GroupId,
    e: flotilla::HostError,
) -> Result<(), flotilla::HostError> {
    match futures_lite::future::block_on(host.group_status(g, BOOTSTRAP_TIMEOUT)) {
        Ok(Some(_)) => Ok(()),
        _ => Err(e),
    }
}

/// Refuses to join a cluster of another id (its nodes would refuse every
/// connection of ours: each group would gain a voter that never answers) or
/// of another shard count. `status` is the body of the node's `/status`.
fn check_same_cluster(
    status: &str,
    cluster_id: u64,
    shards: usize,
    kv_groups: u32,
) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(status).map_err(|e| format!("/status is not JSON: {e}"))?;
    let theirs = v
        .get("cluster_id")
        .and_then(|c| c.as_u64())
        .ok_or("/status has no `cluster_id`")?;
    if theirs != cluster_id {
        return Err(format!(
            "that cluster's id is {theirs}, this node's {cluster_id}: start it with \
             --cluster-id {theirs} (nothing was changed)"
        ));
    }
    let their_shards = v
        .get("shard_count")
        .and_then(|c| c.as_u64())
        .ok_or("/status has no `shard_count`")?;
    if their_shards != shards as u64 {
        return Err(format!(
            "that cluster's nodes run {their_shards} shards, this node {shards}: start it \
             with --shards {their_shards} (nothing was changed)"
        ));
    }
    let their_groups = v
        .pointer("/groups/kv_groups")
        .and_then(|g| g.as_array())
        .map(|g| g.len())
        .ok_or("/status has no `groups.kv_groups`")?;
    if their_groups != kv_groups as usize {
        return Err(format!(
            "that cluster serves {their_groups} KV groups, this node {kv_groups}: start it \
             with --kv-groups {their_groups} (nothing was changed)"
        ));
    }
    Ok(())
}

/// `{"members": [{"node": 1, "addr": "ip:port", ...}, ...]}`.
fn parse_members(body: &str) -> Result<Vec<(NodeId, SocketAddr)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("membership is not JSON: {e}"))?;
    let list = v
        .get("members")
        .and_then(|m| m.as_array())
        .ok_or("membership has no `members` list")?;
    list.iter()
        .map(|m| {
            let node = m
                .get("node")
                .and_then(|n| n.as_u64())
                .ok_or("member without `node`")?;
            let addr = m
                .get("addr")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
                .ok_or("member without a valid `addr`")?;
            Ok((NodeId(node), addr))
        })
        .collect()
}

/// One blocking HTTP/1.1 request (this runs on the main thread at start,
/// never on an executor): (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", &text[..text.len().min(80)]))?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_checks_the_cluster_id_and_shard_count_first() {
        let status = r#"{"cluster_id":77,"shard_count":2,"node":1,"groups":{"kv_groups":[1,2,3]}}"#;
        assert_eq!(check_same_cluster(status, 77, 2, 3), Ok(()));
        let e = check_same_cluster(status, 1, 2, 3).unwrap_err();
        assert!(e.contains("--cluster-id 77"), "{e}");
        let e = check_same_cluster(status, 77, 1, 3).unwrap_err();
        assert!(e.contains("--shards 2"), "{e}");
        let e = check_same_cluster(status, 77, 2, 16).unwrap_err();
        assert!(e.contains("--kv-groups 3"), "{e}");
        assert!(check_same_cluster("{}", 77, 2, 3).is_err());
        assert!(check_same_cluster("not json", 77, 2, 3).is_err());
    }

    #[test]
    fn members_parse_from_the_http_membership() {
        let body = r#"{"config_index":0,"members":[{"node":1,"kind":"voter","addr":"127.0.0.1:7100"},{"node":2,"kind":"voter","addr":"127.0.0.1:7110"}]}"#;
        let m = parse_members(body).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], (NodeId(2), "127.0.0.1:7110".parse().unwrap()));
        assert!(parse_members("{}").is_err());
        assert!(parse_members("nope").is_err());
    }
}
