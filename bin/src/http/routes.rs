//! One connection (hyper HTTP/1.1) and the routes of the API.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::kv::KvClient;
use flotilla::{
    GroupId, GroupStatus, HostError, MemberKind, MembershipInfo, NodeId, ReadConsistency, Role,
};
use flotilla_rsm::{KvCommand, KvQuery, KvResult, PutCondition};
use futures_lite::future;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tracing::debug;

use super::error::ApiError;
use super::io::GlommioIo;
use super::metrics::{http_text, prometheus_text};
use super::{bump, get, HttpState};

type Resp = Response<Full<Bytes>>;
type ApiResult = Result<Resp, ApiError>;

/// A request body over the limit is still read (and dropped) up to this
/// many times the limit, so the client sees the 413 on a connection that
/// stays usable; beyond it the connection is closed.
const DRAIN_FACTOR: usize = 8;

/// Decrements the open-connection gauge when the connection task ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "connections_open underflow");
    }
}

/// Whether a connection is between requests, and since when.
struct Idle {
    in_flight: Cell<u32>,
    since: Cell<Instant>,
}

/// Marks a request in flight for as long as it lives.
struct InFlight(Rc<Idle>);

impl InFlight {
    fn new(idle: &Rc<Idle>) -> Self {
        idle.in_flight.set(idle.in_flight.get() + 1);
        InFlight(idle.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.get();
        debug_assert!(n > 0, "in-flight count underflow");
        self.0.in_flight.set(n.saturating_sub(1));
        self.0.since.set(Instant::now());
    }
}

/// Serves one connection until the client closes it, it stays without a
/// request in flight for `idle_timeout` (an idle keep-alive connection, or
/// a client that trickles its headers: the clock runs from the end of the
/// previous request, not from the last byte), or the server stops
/// (`stopping` closed: finish the current request, then close). A request
/// being served is never cut by the idle timer; its body read is bounded
/// by the request deadline instead.
pub(super) async fn serve_connection(
    stream: TcpStream,
    state: Rc<HttpState>,
    stopping: Rc<Semaphore>,
) {
    // `serve_until` counted this connection as open.
    let _guard = OpenGuard(&state.counters.connections_open);
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let idle = Rc::new(Idle {
        in_flight: Cell::new(0),
        since: Cell::new(Instant::now()),
    });
    let svc_state = state.clone();
    let svc_idle = idle.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let st = svc_state.clone();
        let in_flight = InFlight::new(&svc_idle);
        async move {
            let resp = handle(&st, req).await;
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // glommio sends only the first slice of a vectored write.
    builder.writev(false).keep_alive(true);
    let mut conn = pin!(builder.serve_connection(GlommioIo::new(stream), service));
    let idle_timeout = state.options.idle_timeout;
    let watchdog = async {
        let tick = (idle_timeout / 4).max(Duration::from_millis(10));
        loop {
            glommio::timer::sleep(tick).await;
            if idle.in_flight.get() == 0 && idle.since.get().elapsed() >= idle_timeout {
                return Ending::Idle;
            }
        }
    };
    let first = future::or(
        future::or(async { Ending::Done(conn.as_mut().await) }, async {
            // Resolves (with an error) when `stopping` is closed.
            let _ = stopping.acquire(1).await;
            Ending::Stop
        }),
        watchdog,
    )
    .await;
    let outcome = match first {
        Ending::Done(outcome) => outcome,
        Ending::Stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        Ending::Idle => {
            debug!(?peer, "closing an idle http connection");
            Ok(())
        }
    };
    if let Err(e) = outcome {
        debug!(?peer, error = %e, "http connection ended with an error");
    }
}

enum Ending {
    Done(hyper::Result<()>),
    Stop,
    Idle,
}

/// Answers one request; never fails (errors become JSON answers).
pub(super) async fn handle(state: &HttpState, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match route(state, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                debug!(%method, %path, code = e.code, message = %e.message, "http request failed");
            }
            error_response(&e)
        }
    };
    let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    bump(&state.counters.responses_by_class[class]);
    resp
}

async fn route(state: &HttpState, req: Request<Incoming>) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let params = Params::parse(req.uri().query().unwrap_or(""))?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        [""] if get => Ok(index(state)),
        [""] => Err(method_not_allowed(&method, &path)),
        ["health"] if get => health(state).await,
        ["status"] if get => status(state, &params).await,
        ["metrics"] if get => metrics(state, &params).await,
        ["kv"] | ["kv", ""] if get => scan(state, &params).await,
        ["kv"] => Err(method_not_allowed(&method, &path)),
        ["kv", ..] => {
            // `segments` has a second element, so the path has a `/` after
            // `kv` (an empty key is refused by `decode_key`).
            let raw = path.strip_prefix("/kv/").unwrap_or("");
            if method == Method::POST {
                match raw.strip_suffix("/cas") {
                    Some(key) => {
                        let key = decode_key(key)?;
                        let body = read_body(state, req).await?;
                        cas(state, &params, key, body).await
                    }
                    None => Err(method_not_allowed(&method, &path)),
                }
            } else {
                let key = decode_key(raw)?;
                match method {
                    Method::GET | Method::HEAD => get_key(state, &params, key).await,
                    Method::PUT => {
                        let body = read_body(state, req).await?;
                        put_key(state, &params, key, body).await
                    }
                    Method::DELETE => delete_key(state, &params, key).await,
                    _ => Err(method_not_allowed(&method, &path)),
                }
            }
        }
        ["clusters"] if method == Method::POST => {
            let body = read_body(state, req).await?;
            start_cluster(state, &params, body).await
        }
        ["cluster", id] => {
            let group = GroupId(parse_id(id, "group id")?);
            match method {
                Method::PUT => cluster_put(state, &params, group).await,
                Method::GET => cluster_get(state, &params, group).await,
                _ => Err(method_not_allowed(&method, &path)),
            }
        }
        ["groups"] if get => list_groups(state, &params).await,
        ["groups", id, rest @ ..] => {
            let group = GroupId(parse_id(id, "group id")?);
            match (&method, rest) {
                (&Method::GET, []) => one_group(state, &params, group).await,
                (&Method::DELETE, []) => stop_group(state, &params, group).await,
                (&Method::GET, ["members"]) => members(state, &params, group).await,
                (&Method::POST, ["members"]) => {
                    let body = read_body(state, req).await?;
                    add_member(state, &params, group, body).await
                }
                (&Method::DELETE, ["members", node]) => {
                    let node = NodeId(parse_id(node, "node id")?);
                    remove_member(state, &params, group, node).await
                }
                (&Method::POST, ["members", node, "promote"]) => {
                    let node = NodeId(parse_id(node, "node id")?);
                    promote(state, &params, group, node).await
                }
                (&Method::POST, ["transfer"]) => {
                    let body = read_body(state, req).await?;
                    transfer(state, &params, group, body).await
                }
                (&Method::POST, ["join"]) => {
                    let body = read_body(state, req).await?;
                    join(state, &params, group, body).await
                }
                (&Method::POST, ["snapshot"]) => snapshot(state, &params, group).await,
                (
                    _,
                    []
                    | ["members"]
                    | ["members", _]
                    | ["members", _, "promote"]
                    | ["transfer"]
                    | ["join"]
                    | ["snapshot"],
                ) => Err(method_not_allowed(&method, &path)),
                _ => Err(ApiError::no_route(&method, &path)),
            }
        }
        ["health"] | ["status"] | ["metrics"] | ["clusters"] | ["groups"] => {
            Err(method_not_allowed(&method, &path))
        }
        _ => Err(ApiError::no_route(&method, &path)),
    }
}

// ---------------------------------------------------------------- index

/// Every route, as `GET /` lists it (the README's table has the details).
pub(crate) const ROUTES: &[&str] = &[
    "GET /kv/{key}",
    "PUT /kv/{key}",
    "DELETE /kv/{key}",
    "POST /kv/{key}/cas",
    "GET /kv?prefix=P&start=K&limit=N&keys_only=true",
    "POST /clusters",
    "PUT /cluster/{id}?key=K&value=V",
    "GET /cluster/{id}?key=K",
    "GET /groups",
    "GET /groups/{id}",
    "GET /groups/{id}/members",
    "POST /groups/{id}/members",
    "POST /groups/{id}/members/{node}/promote",
    "DELETE /groups/{id}/members/{node}",
    "DELETE /groups/{id}",
    "POST /groups/{id}/transfer",
    "POST /groups/{id}/join",
    "POST /groups/{id}/snapshot",
    "GET /status",
    "GET /health",
    "GET /metrics",
];

/// `GET /`: what this is and where to go (for someone trying `curl` on
/// the port).
fn index(state: &HttpState) -> Resp {
    json_response(
        StatusCode::OK,
        &json!({
            "service": "flotilla",
            "version": env!("CARGO_PKG_VERSION"),
            "node": state.node_id(),
            "routes": ROUTES,
        }),
    )
}

// ---------------------------------------------------------------- health

async fn health(state: &HttpState) -> ApiResult {
    let deadline = Duration::from_secs(1).min(state.options.timeout);
    match state.host().stats(deadline).await {
        Ok(stats) => Ok(json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "node": state.node_id(), "shards": stats.len() }),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            format!("the shards do not answer: {e}"),
        )),
    }
}

async fn status(state: &HttpState, params: &Params) -> ApiResult {
    let deadline = params.timeout(state)?;
    let host = state.host();
    let stats = host.stats(deadline).await?;
    let groups = host.groups(deadline).await?;
    let kv_groups: Vec<u64> = state.kv().groups().iter().map(|g| g.0).collect();
    let leading = groups.iter().filter(|g| g.role == Role::Leader).count();
    let without_leader: Vec<u64> = groups
        .iter()
        .filter(|g| g.leader.is_none())
        .map(|g| g.group.0)
        .collect();
    let shards: Vec<Value> = stats
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "groups": s.groups,
                "leaders": s.leaders,
                "live_groups": s.live_groups,
                "requests_pending": s.requests_pending,
                "ticks": s.ticks,
                "tick_lateness_max_ms": s.tick_lateness_max.as_secs_f64() * 1e3,
                "entries_appended": s.entries_appended,
                "entries_committed": s.entries_committed,
                "leader_elected": s.leader_elected,
                "wal_fsyncs": s.wal.fdatasyncs,
                "wal_bytes_written": s.wal.bytes_written,
                "peers_connected": s.transport.peers.iter().filter(|p| p.connected).count(),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "node": state.node_id(),
            "raft_addr": host.config().raft_addr.to_string(),
            "cluster_id": host.config().cluster_id,
            "shard_count": host.shard_count(),
            "shards": shards,
            "groups": {
                "total": groups.len(),
                "leading": leading,
                "without_leader": without_leader,
                "kv_groups": kv_groups,
            },
            "http": {
                "connections_open": get(&state.counters.connections_open),
                "connections_accepted": get(&state.counters.connections_accepted),
            },
        }),
    ))
}

async fn metrics(state: &HttpState, params: &Params) -> ApiResult {
    let deadline = params.timeout(state)?;
    let stats = state.host().stats(deadline).await?;
    let groups = state.host().groups(deadline).await?;
    let mut text = prometheus_text(&stats, &groups, state.node_id());
    text.push_str(&http_text(&state.counters, state.node_id()));
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

// ---------------------------------------------------------------- KV

/// The KV client with this request's deadline and read consistency.
fn kv_for(state: &HttpState, params: &Params) -> Result<KvClient, ApiError> {
    let mut kv = state.kv().clone();
    kv.timeout = params.timeout(state)?;
    if let Some(c) = params.consistency()? {
        kv.consistency = c;
    }
    Ok(kv)
}

async fn get_key(state: &HttpState, params: &Params, key: Bytes) -> ApiResult {
    let kv = kv_for(state, params)?;
    // A key that holds a list, set, hash, ... (made through the Redis
    // protocol) is a 409 `wrong_type` (`RequestError::Kv`).
    match kv.get(key).await? {
        Some(value) => {
            let mut resp = Response::new(Full::new(value));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(resp)
        }
        None => Err(ApiError::key_not_found()),
    }
}

async fn put_key(state: &HttpState, params: &Params, key: Bytes, value: Bytes) -> ApiResult {
    let kv = kv_for(state, params)?;
    let condition = match params.str("if")? {
        None => PutCondition::Always,
        Some("absent") => PutCondition::IfAbsent,
        Some("present") => PutCondition::IfPresent,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "if={other}: expected `absent` or `present`"
            )))
        }
    };
    let group = kv.group_for(&key);
    let cmd = KvCommand::Put {
        key,
        value,
        condition,
        return_previous: false,
    };
    match kv.execute(group, &cmd).await? {
        KvResult::Put { written: true, .. } => {
            Ok(json_response(StatusCode::OK, &json!({ "written": true })))
        }
        KvResult::Put { written: false, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "condition_failed",
            match condition {
                PutCondition::IfAbsent => "the key exists (if=absent)",
                _ => "the key does not exist (if=present)",
            },
        )),
        other => Err(unexpected_result(other)),
    }
}

async fn delete_key(state: &HttpState, params: &Params, key: Bytes) -> ApiResult {
    let kv = kv_for(state, params)?;
    if kv.delete(key).await? {
        Ok(json_response(StatusCode::OK, &json!({ "deleted": true })))
    } else {
        Err(ApiError::key_not_found())
    }
}

async fn cas(state: &HttpState, params: &Params, key: Bytes, body: Bytes) -> ApiResult {
    let kv = kv_for(state, params)?;
    let body = parse_json(&body)?;
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request("expected a JSON object {\"expected\": ..., \"new\": ...}")
    })?;
    let field = |name: &str| -> Result<Option<Bytes>, ApiError> {
        match obj.get(name) {
            None => Err(ApiError::bad_request(format!(
                "missing field `{name}` (use null for an absent key)"
            ))),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(Bytes::from(s.clone()))),
            Some(_) => Err(ApiError::bad_request(format!(
                "field `{name}` must be a string or null"
            ))),
        }
    };
    let expected = field("expected")?;
    let new_value = field("new")?;
    let group = kv.group_for(&key);
    let cmd = KvCommand::CompareAndSet {
        key,
        expected,
        new_value,
    };
    match kv.execute(group, &cmd).await? {
        KvResult::Cas {
            swapped: true,
            previous,
        } => Ok(json_response(
            StatusCode::OK,
            &json!({ "swapped": true, "previous": opt_bytes_json(previous.as_ref()) }),
        )),
        KvResult::Cas {
            swapped: false,
            previous,
        } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cas_failed",
            "the key does not hold the expected value",
        )
        .with(json!({ "current": opt_bytes_json(previous.as_ref()) }))),
        other => Err(unexpected_result(other)),
    }
}

/// `GET /kv?prefix=P&start=K&limit=N&keys_only=true`: keys of every KV
/// group, merged in key order.
async fn scan(state: &HttpState, params: &Params) -> ApiResult {
    let kv = kv_for(state, params)?;
    let prefix = Bytes::from(params.bytes("prefix").unwrap_or_default());
    let end = match KvQuery::prefix(prefix.clone(), 0) {
        KvQuery::Scan { end, .. } => end,
        _ => None,
    };
    let start = match params.bytes("start") {
        Some(s) if s.as_slice() > prefix.as_ref() => Bytes::from(s),
        _ => prefix.clone(),
    };
    let limit = match params.str("limit")? {
        None => state.options.scan_limit_default,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit={s}: expected a positive integer"))
            })?
            .min(state.options.scan_limit_max),
    };
    let keys_only = params.flag("keys_only")?;
    let empty = matches!(&end, Some(e) if start >= *e);
    let mut parts = Vec::with_capacity(kv.groups().len());
    if !empty {
        let tasks: Vec<_> = kv
            .groups()
            .iter()
            .map(|g| {
                let (kv, group) = (kv.clone(), *g);
                let query = KvQuery::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit,
                    keys_only,
                };
                glommio::spawn_local(async move { kv.query(group, &query).await })
            })
            .collect();
        for task in tasks {
            match task.await? {
                KvResult::Entries { entries, next } => parts.push((entries, next)),
                KvResult::Error(e) => return Err(e.into()),
                other => return Err(unexpected_result(other)),
            }
        }
    }
    let (entries, next) = merge_scans(parts, limit as usize);
    // A list, set, hash, ... (made through the Redis protocol) scans as an
    // empty value: name its type instead (one more read per such key).
    let kinds: Vec<_> = entries
        .iter()
        .map(|(k, v)| {
            (!keys_only && v.is_empty()).then(|| {
                let (kv, key) = (kv.clone(), k.clone());
                glommio::spawn_local(async move {
                    let group = kv.group_for(&key);
                    kv.query(group, &KvQuery::Describe { key }).await
                })
            })
        })
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    for ((k, v), kind) in entries.iter().zip(kinds) {
        // The type of a key that is not a string, if it was asked.
        let typed = match kind {
            None => None,
            Some(task) => match task.await? {
                KvResult::Items(items) => items.into_iter().next(),
                KvResult::Error(e) => return Err(e.into()),
                other => return Err(unexpected_result(other)),
            },
        }
        .filter(|t| t.as_ref() != b"string");
        let value = (!keys_only && typed.is_none()).then_some(v.as_ref());
        let mut entry = entry_json(k, value);
        if let (Some(t), Value::Object(obj)) = (typed, &mut entry) {
            obj.insert(
                "type".into(),
                Value::String(String::from_utf8_lossy(&t).into_owned()),
            );
        }
        out.push(entry);
    }
    let entries = out;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "entries": entries, "next": opt_bytes_json(next.as_ref()) }),
    ))
}

/// Pairs in key order and the key to continue from, if any.
pub(super) type ScanPart = (Vec<(Bytes, Bytes)>, Option<Bytes>);

/// Merges per-group scan results (each sorted, each possibly cut short at
/// its `next`) into at most `limit` pairs in key order. A group that
/// stopped at `next` has not looked past it, so nothing at or beyond the
/// smallest such `next` may be returned; that key is where to continue.
pub(super) fn merge_scans(parts: Vec<ScanPart>, limit: usize) -> ScanPart {
    let cutoff: Option<Bytes> = parts.iter().filter_map(|(_, next)| next.clone()).min();
    let mut all: Vec<(Bytes, Bytes)> = parts
        .into_iter()
        .flat_map(|(entries, _)| entries)
        .filter(|(k, _)| cutoff.as_ref().is_none_or(|c| k < c))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    debug_assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "a key in two groups"
    );
    if all.len() > limit {
        let next = all[limit].0.clone();
        all.truncate(limit);
        (all, Some(next))
    } else {
        (all, cutoff)
    }
}

// ---------------------------------------------------------------- rafter demo

/// `POST /clusters` with rafter's body (`clusterId`, `nodeId`, `peers:
/// [{nodeId, address}]`; election/heartbeat/snapshot fields are accepted
/// and ignored: this node's configuration decides them) or ours (`group`,
/// `members: [{node, addr}]`).
async fn start_cluster(state: &HttpState, params: &Params, body: Bytes) -> ApiResult {
    let deadline = params.timeout(state)?;
    let body = parse_json(&body)?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("expected a JSON object"))?;
    let group = u64_field(obj, &["clusterId", "group"])?
        .ok_or_else(|| ApiError::bad_request("missing `clusterId` (or `group`)"))?;
    if group == 0 {
        return Err(ApiError::bad_request("group id 0 is reserved"));
    }
    if let Some(node) = u64_field(obj, &["nodeId", "node"])? {
        if node != state.node_id() {
            return Err(ApiError::bad_request(format!(
                "nodeId {node} is not this node ({}); send the request to node {node}",
                state.node_id()
            )));
        }
    }
    let peers = obj
        .get("peers")
        .or_else(|| obj.get("members"))
        .ok_or_else(|| ApiError::bad_request("missing `peers` (or `members`)"))?;
    let members = parse_peers(peers)?;
    if members.is_empty() {
        return Err(ApiError::bad_request("`peers` is empty"));
    }
    if !members.iter().any(|(n, _)| n.0 == state.node_id()) {
        return Err(ApiError::bad_request(format!(
            "`peers` must include this node ({})",
            state.node_id()
        )));
    }
    state
        .host()
        .start_group(GroupId(group), members.clone(), deadline)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "group": group,
            "node": state.node_id(),
            "members": members.iter().map(|(n, a)| json!({"node": n.0, "addr": a.to_string()})).collect::<Vec<_>>(),
            "started": true,
        }),
    ))
}

async fn cluster_put(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let kv = kv_for(state, params)?;
    let key = params.required_key()?;
    let value = params
        .bytes("value")
        .ok_or_else(|| ApiError::bad_request("missing query parameter `value`"))?;
    // A KV group holds only the keys that hash to it: a key written into
    // another one would be read from neither `/kv` nor the Redis protocol,
    // and would show twice in scans.
    let home = kv.group_for(&key);
    if kv.groups().contains(&group) && home != group {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_group",
            format!(
                "group {} is a KV group and this key belongs to group {}",
                group.0, home.0
            ),
        ));
    }
    match kv.execute(group, &KvCommand::put(key, value)).await? {
        KvResult::Put { .. } | KvResult::Ok => Ok(json_response(
            StatusCode::OK,
            &json!({ "status": "completed", "result": "OK" }),
        )),
        other => Err(unexpected_result(other)),
    }
}

async fn cluster_get(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let kv = kv_for(state, params)?;
    let key = params.required_key()?;
    match kv.query(group, &KvQuery::Get { key: key.clone() }).await? {
        KvResult::Value(Some(v)) => {
            let mut body = entry_json(&key, Some(&v));
            body["status"] = json!("completed");
            Ok(json_response(StatusCode::OK, &body))
        }
        KvResult::Value(None) => Err(ApiError::key_not_found()),
        other => Err(unexpected_result(other)),
    }
}

// ---------------------------------------------------------------- admin

async fn list_groups(state: &HttpState, params: &Params) -> ApiResult {
    let deadline = params.timeout(state)?;
    let host = state.host();
    let groups = host.groups(deadline).await?;
    let mut out = Vec::with_capacity(groups.len());
    for g in &groups {
        let membership = host.membership(g.group, deadline).await?;
        out.push(group_json(state, g, membership.as_ref()));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "node": state.node_id(), "groups": out }),
    ))
}

async fn one_group(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let deadline = params.timeout(state)?;
    let host = state.host();
    let status = host
        .group_status(group, deadline)
        .await?
        .ok_or_else(|| group_not_found(group))?;
    let membership = host.membership(group, deadline).await?;
    Ok(json_response(
        StatusCode::OK,
        &group_json(state, &status, membership.as_ref()),
    ))
}

async fn members(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let deadline = params.timeout(state)?;
    let membership = state
        .host()
        .membership(group, deadline)
        .await?
        .ok_or_else(|| group_not_found(group))?;
    Ok(json_response(StatusCode::OK, &membership_json(&membership)))
}

async fn add_member(state: &HttpState, params: &Params, group: GroupId, body: Bytes) -> ApiResult {
    let deadline = params.timeout(state)?;
    let body = parse_json(&body)?;
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request(
            "expected {\"node\": n, \"addr\": \"ip:port\", \"kind\": \"voter|observer|witness\"}",
        )
    })?;
    let node = u64_field(obj, &["node"])?.ok_or_else(|| ApiError::bad_request("missing `node`"))?;
    let addr = addr_field(obj, &["addr", "address"])?;
    let kind = match obj.get("kind") {
        None | Some(Value::Null) => MemberKind::Voter,
        Some(Value::String(k)) => parse_kind(k)?,
        Some(_) => return Err(ApiError::bad_request("`kind` must be a string")),
    };
    let added = state
        .host()
        .add_member(group, NodeId(node), addr, kind, deadline)
        .await;
    let want = |m: &MembershipInfo| m.get(NodeId(node)).is_some_and(|x| x.kind == kind);
    settle(state, group, deadline, added, want).await
}

/// The answer to a membership change: the membership after it. A change
/// that failed may still be in place -- typically the retry of a change
/// that went through but answered 504 -- so when this replica's
/// membership already shows what was asked (`want`), the answer is 200 as
/// if it had just happened: retrying a change is safe.
async fn settle(
    state: &HttpState,
    group: GroupId,
    deadline: Duration,
    outcome: Result<(), HostError>,
    want: impl Fn(&MembershipInfo) -> bool,
) -> ApiResult {
    let err = match outcome {
        Ok(()) => {
            // Committed by the leader; this replica applies it a moment
            // later (a removed replica hears of it from the leader's
            // farewell heartbeat). Answer with the membership after it.
            let until = std::time::Instant::now() + Duration::from_secs(1).min(deadline);
            while std::time::Instant::now() < until {
                match state.host().membership(group, deadline).await {
                    Ok(Some(m)) if want(&m) => break,
                    _ => glommio::timer::sleep(Duration::from_millis(10)).await,
                }
            }
            return membership_answer(state, group, deadline).await;
        }
        Err(e) => ApiError::from(e),
    };
    let check = Duration::from_secs(1).min(state.options.timeout);
    match state.host().membership(group, check).await {
        Ok(Some(m)) if want(&m) => Ok(json_response(StatusCode::OK, &membership_json(&m))),
        _ => Err(err),
    }
}

async fn remove_member(
    state: &HttpState,
    params: &Params,
    group: GroupId,
    node: NodeId,
) -> ApiResult {
    let deadline = params.timeout(state)?;
    let removed = state.host().remove_member(group, node, deadline).await;
    settle(state, group, deadline, removed, |m| m.get(node).is_none()).await
}

async fn promote(state: &HttpState, params: &Params, group: GroupId, node: NodeId) -> ApiResult {
    let deadline = params.timeout(state)?;
    let promoted = state.host().promote_observer(group, node, deadline).await;
    let want = |m: &MembershipInfo| m.get(node).is_some_and(|x| x.kind == MemberKind::Voter);
    settle(state, group, deadline, promoted, want).await
}

async fn transfer(state: &HttpState, params: &Params, group: GroupId, body: Bytes) -> ApiResult {
    let deadline = params.timeout(state)?;
    let body = parse_json(&body)?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("expected {\"to\": n}"))?;
    let to = u64_field(obj, &["to"])?.ok_or_else(|| ApiError::bad_request("missing `to`"))?;
    if let Err(e) = state
        .host()
        .transfer_leader(group, NodeId(to), deadline)
        .await
    {
        // Already done (a retry after a 504, or `to` leads already)?
        let check = Duration::from_secs(1).min(state.options.timeout);
        match state.host().group_status(group, check).await {
            Ok(Some(s)) if s.leader == Some(NodeId(to)) => {}
            _ => return Err(e.into()),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "group": group.0, "leader": to }),
    ))
}

/// `POST /groups/{id}/snapshot`: snapshot this replica now (and compact
/// its log behind it).
async fn snapshot(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let deadline = params.timeout(state)?;
    let index = state.host().request_snapshot(group, deadline).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "group": group.0, "node": state.node_id(), "index": index }),
    ))
}

/// `DELETE /groups/{g}`: stops this node's replica of a group and deletes
/// its data here (not the KV groups: they serve the node's keys).
async fn stop_group(state: &HttpState, params: &Params, group: GroupId) -> ApiResult {
    let deadline = params.timeout(state)?;
    if state.kv().groups().contains(&group) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "kv_group",
            format!("group {group} is one of this node's KV groups and cannot be stopped"),
        ));
    }
    state.host().stop_group(group, deadline).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "group": group.0, "node": state.node_id(), "stopped": true }),
    ))
}

async fn join(state: &HttpState, params: &Params, group: GroupId, body: Bytes) -> ApiResult {
    let deadline = params.timeout(state)?;
    let body = if body.is_empty() {
        json!({})
    } else {
        parse_json(&body)?
    };
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request(
            "expected {\"peers\": [{\"node\": n, \"addr\": \"ip:port\"}], \"witness\": false}",
        )
    })?;
    let peers = match obj.get("peers").or_else(|| obj.get("members")) {
        Some(p) => parse_peers(p)?,
        None => Vec::new(),
    };
    let witness = match obj.get("witness") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`witness` must be a boolean")),
    };
    state
        .host()
        .join_group(group, peers, witness, deadline)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "group": group.0, "node": state.node_id(), "joined": true, "witness": witness }),
    ))
}

async fn membership_answer(state: &HttpState, group: GroupId, deadline: Duration) -> ApiResult {
    let membership = state
        .host()
        .membership(group, deadline)
        .await?
        .ok_or_else(|| group_not_found(group))?;
    Ok(json_response(StatusCode::OK, &membership_json(&membership)))
}

fn group_json(state: &HttpState, g: &GroupStatus, membership: Option<&MembershipInfo>) -> Value {
    json!({
        "group": g.group.0,
        "role": role_name(g.role),
        "leader": g.leader.map(|n| n.0),
        "term": g.term,
        "commit": g.commit,
        "applied": g.applied,
        "last_index": g.last_index,
        "proposals_pending": g.proposals_pending,
        "reads_pending": g.reads_pending,
        "kv": state.kv().groups().contains(&g.group),
        "membership": membership.map(membership_json),
    })
}

fn membership_json(m: &MembershipInfo) -> Value {
    json!({
        "config_index": m.config_index,
        "members": m.members.iter().map(|x| json!({
            "node": x.node.0,
            "kind": kind_name(x.kind),
            "addr": x.address,
        })).collect::<Vec<_>>(),
    })
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    }
}

fn kind_name(k: MemberKind) -> &'static str {
    match k {
        MemberKind::Voter => "voter",
        MemberKind::Observer => "observer",
        MemberKind::Witness => "witness",
    }
}

fn parse_kind(k: &str) -> Result<MemberKind, ApiError> {
    match k {
        "voter" => Ok(MemberKind::Voter),
        "observer" => Ok(MemberKind::Observer),
        "witness" => Ok(MemberKind::Witness),
        other => Err(ApiError::bad_request(format!(
            "kind `{other}`: expected voter, observer or witness"
        ))),
    }
}

fn group_not_found(group: GroupId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "group_not_found",
        format!("group {} is not hosted on this node", group.0),
    )
}

// ---------------------------------------------------------------- helpers

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

fn unexpected_result(r: KvResult) -> ApiError {
    match r {
        KvResult::Error(e) => e.into(),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected state machine result {other:?}"),
        ),
    }
}

impl From<glommio::GlommioError<()>> for ApiError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Resp {
    let mut resp = json_response(e.status, &e.body());
    if e.close_connection {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads the request body, at most `body_bytes_max` bytes (else 413).
async fn read_body(state: &HttpState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let max = state.options.body_bytes_max;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body();
    if let Some(len) = declared {
        if len > max as u64 {
            return Err(too_large(body, max, len, state.options.timeout_max).await);
        }
    }
    let deadline = state.options.timeout_max;
    let read = async { Some(Limited::new(body, max).collect().await) };
    let timed = future::or(read, async {
        glommio::timer::sleep(deadline).await;
        None
    });
    let Some(collected) = timed.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {deadline:?}"),
        )
        .closing());
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {max} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// A 413 for a body that declared `len > max` bytes. Bodies up to
/// `DRAIN_FACTOR × max` are read and dropped so the connection stays
/// usable; larger ones close the connection after the answer.
async fn too_large(mut body: Incoming, max: usize, len: u64, deadline: Duration) -> ApiError {
    let message = format!("request body of {len} bytes is over the limit of {max} bytes");
    if len <= (max * DRAIN_FACTOR) as u64 {
        let drain = async {
            let mut seen: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(data) = f.data_ref() {
                            seen += data.len() as u64;
                        }
                        if seen > len {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
            true
        };
        let drained = future::or(drain, async {
            glommio::timer::sleep(deadline).await;
            false
        })
        .await;
        let e = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message);
        if drained {
            e
        } else {
            e.closing()
        }
    } else {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            .with(json!({ "connection": "closed" }))
            .closing()
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON: {e}"),
        )
    })
}

fn u64_field(obj: &Map<String, Value>, names: &[&str]) -> Result<Option<u64>, ApiError> {
    for name in names {
        match obj.get(*name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v.as_u64().map(Some).ok_or_else(|| {
                    ApiError::bad_request(format!("`{name}` must be a non-negative integer"))
                })
            }
        }
    }
    Ok(None)
}

fn addr_field(obj: &Map<String, Value>, names: &[&str]) -> Result<SocketAddr, ApiError> {
    for name in names {
        if let Some(v) = obj.get(*name) {
            let s = v.as_str().ok_or_else(|| {
                ApiError::bad_request(format!("`{name}` must be a string \"ip:port\""))
            })?;
            return s.parse::<SocketAddr>().map_err(|_| {
                ApiError::bad_request(format!("`{name}`: `{s}` is not an ip:port address"))
            });
        }
    }
    Err(ApiError::bad_request(format!("missing `{}`", names[0])))
}

fn parse_peers(v: &Value) -> Result<Vec<(NodeId, SocketAddr)>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::bad_request("`peers` must be an array"))?;
    if list.len() > 1024 {
        return Err(ApiError::bad_request("too many peers (at most 1024)"));
    }
    let mut out: Vec<(NodeId, SocketAddr)> = Vec::with_capacity(list.len());
    for p in list {
        let obj = p.as_object().ok_or_else(|| {
            ApiError::bad_request("each peer must be {\"nodeId\": n, \"address\": \"ip:port\"}")
        })?;
        let node = u64_field(obj, &["nodeId", "node"])?
            .ok_or_else(|| ApiError::bad_request("a peer lacks `nodeId` (or `node`)"))?;
        if node == 0 {
            return Err(ApiError::bad_request("node id 0 is reserved"));
        }
        let addr = addr_field(obj, &["address", "addr"])?;
        if out.iter().any(|(n, _)| n.0 == node) {
            return Err(ApiError::bad_request(format!(
                "node {node} is listed twice"
            )));
        }
        out.push((NodeId(node), addr));
    }
    Ok(out)
}

fn parse_id(s: &str, what: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("`{s}` is not a valid {what}")))
}

/// A key from the (percent-encoded) path; may contain `/`.
fn decode_key(raw: &str) -> Result<Bytes, ApiError> {
    let key = percent_decode(raw, false)?;
    if key.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "empty key",
        ));
    }
    Ok(Bytes::from(key))
}

/// Decodes `%XX` escapes (and `+` as a space in query strings).
///
/// # Errors
/// 400 `bad_encoding` for a `%` not followed by two hex digits.
pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_encoding",
                            format!("bad percent-encoding at byte {i} of `{s}`"),
                        ))
                    }
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Query parameters, decoded; the first of a repeated name wins.
pub(super) struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    pub(super) fn parse(query: &str) -> Result<Params, ApiError> {
        let mut out = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = String::from_utf8(percent_decode(name, true)?).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_encoding",
                    "a parameter name is not UTF-8",
                )
            })?;
            out.push((name, percent_decode(value, true)?));
        }
        if out.len() > 64 {
            return Err(ApiError::bad_request(
                "too many query parameters (at most 64)",
            ));
        }
        Ok(Params(out))
    }

    pub(super) fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub(super) fn str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v).map(Some).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_encoding",
                    format!("`{name}` is not UTF-8"),
                )
            }),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.str(name)? {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name}={other}: expected true or false"
            ))),
        }
    }

    fn required_key(&self) -> Result<Bytes, ApiError> {
        match self.bytes("key") {
            Some(k) if !k.is_empty() => Ok(Bytes::from(k)),
            _ => Err(ApiError::bad_request("missing query parameter `key`")),
        }
    }

    /// `?consistency=linearizable|lease|stale` (`None`: the node's default,
    /// the consistency of its `KvClient`).
    pub(super) fn consistency(&self) -> Result<Option<ReadConsistency>, ApiError> {
        match self.str("consistency")? {
            None => Ok(None),
            Some("linearizable") => Ok(Some(ReadConsistency::Linearizable)),
            Some("lease") => Ok(Some(ReadConsistency::Lease)),
            Some("stale") => Ok(Some(ReadConsistency::Stale)),
            Some(other) => Err(ApiError::bad_request(format!(
                "consistency={other}: expected linearizable, lease or stale"
            ))),
        }
    }

    /// `?timeout_ms=N` (default `options.timeout`, at most `timeout_max`).
    fn timeout(&self, state: &HttpState) -> Result<Duration, ApiError> {
        match self.str("timeout_ms")? {
            None => Ok(state.options.timeout),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms).min(state.options.timeout_max))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("timeout_ms={s}: expected a positive integer"))
                }),
        }
    }
}

/// `{"key": k, "value": v}` with UTF-8 strings, or both base64 and
/// `"encoding": "base64"` if either is not UTF-8.
pub(super) fn entry_json(key: &[u8], value: Option<&[u8]>) -> Value {
    let utf8 =
        std::str::from_utf8(key).is_ok() && value.is_none_or(|v| std::str::from_utf8(v).is_ok());
    let enc = |b: &[u8]| -> Value {
        if utf8 {
            Value::String(String::from_utf8_lossy(b).into_owned())
        } else {
            Value::String(base64(b))
        }
    };
    let mut obj = Map::new();
    obj.insert("key".into(), enc(key));
    if let Some(v) = value {
        obj.insert("value".into(), enc(v));
    }
    if !utf8 {
        obj.insert("encoding".into(), json!("base64"));
    }
    Value::Object(obj)
}

/// A value as JSON: a string if UTF-8, `{"base64": "..."}` otherwise;
/// `null` if absent.
pub(super) fn opt_bytes_json(b: Option<&Bytes>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!({ "base64": base64(b) }),
        },
    }
}

/// Standard base64 with padding (RFC 4648).
pub(super) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
