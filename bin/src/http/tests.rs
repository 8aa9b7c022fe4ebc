//! Tests of the HTTP API: pure helpers, and real nodes (a `NodeHost` with
//! its shards, an HTTP executor serving `serve_until` on 127.0.0.1:0)
//! driven by a small HTTP/1.1 client over `std::net::TcpStream` from the
//! test thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::kv::KvClient;
use flotilla::{GroupId, HostError, NodeHost, NodeHostConfig, NodeId, Placement, RequestError};
use hyper::StatusCode;
use serde_json::{json, Value};

use super::error::ApiError;
use super::metrics::{escape_label, prometheus_text};
use super::routes::{base64, merge_scans, percent_decode, Params};
use super::{serve_until, HttpOptions, HttpState};

// ------------------------------------------------------------ pure helpers

#[test]
fn percent_decoding_accepts_escapes_and_rejects_bad_ones() {
    assert_eq!(percent_decode("a%2Fb%20c", false).unwrap(), b"a/b c");
    assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
    assert_eq!(percent_decode("a+b", true).unwrap(), b"a b");
    assert_eq!(percent_decode("%ff%00", false).unwrap(), [0xff, 0]);
    for bad in ["%", "%2", "%zz", "a%g0"] {
        let e = percent_decode(bad, false).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "bad_encoding"),
            "{bad}"
        );
    }
    let p = Params::parse("key=a%20b&value=x+y&key=second&flag").unwrap();
    assert_eq!(
        p.bytes("key").unwrap(),
        b"a b",
        "the first of a repeated name wins"
    );
    assert_eq!(p.str("value").unwrap(), Some("x y"));
    assert_eq!(p.str("flag").unwrap(), Some(""));
    assert!(Params::parse("k=%zz").is_err());
    assert_eq!(
        Params::parse("consistency=lease")
            .unwrap()
            .consistency()
            .unwrap(),
        Some(flotilla::ReadConsistency::Lease)
    );
    assert_eq!(Params::parse("").unwrap().consistency().unwrap(), None);
    assert_eq!(
        Params::parse("consistency=x")
            .unwrap()
            .consistency()
            .unwrap_err()
            .code,
        "bad_request"
    );
}

#[test]
fn every_route_of_the_index_is_documented() {
    let readme = include_str!("README.md");
    for route in super::routes::ROUTES {
        let row = format!("| `{route}` |");
        assert!(
            readme.contains(&row),
            "{route} is not in bin/src/http/README.md"
        );
    }
    let rows = readme.lines().filter(|l| l.starts_with("| `")).count();
    assert!(rows >= super::routes::ROUTES.len());
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

fn kv(pairs: &[&str]) -> Vec<(Bytes, Bytes)> {
    pairs
        .iter()
        .map(|k| {
            (
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::from_static(b"v"),
            )
        })
        .collect()
}

fn keys(entries: &[(Bytes, Bytes)]) -> Vec<&str> {
    entries
        .iter()
        .map(|(k, _)| std::str::from_utf8(k).unwrap())
        .collect()
}

#[test]
fn merged_scans_are_ordered_limited_and_never_skip_a_key() {
    // Two groups, complete answers: merged in order, cut at the limit.
    let (entries, next) = merge_scans(
        vec![(kv(&["a", "c", "e"]), None), (kv(&["b", "d"]), None)],
        3,
    );
    assert_eq!(keys(&entries), ["a", "b", "c"]);
    assert_eq!(next.as_deref(), Some(&b"d"[..]));
    let (entries, next) = merge_scans(vec![(kv(&["a", "c"]), None), (kv(&["b"]), None)], 10);
    assert_eq!(keys(&entries), ["a", "b", "c"]);
    assert_eq!(next, None);
    // Group 2 stopped at "c" (byte budget): nothing from "c" on may be
    // returned, even though group 1 has "d", and "c" is the continuation.
    let (entries, next) = merge_scans(
        vec![
            (kv(&["a", "d"]), None),
            (kv(&["b"]), Some(Bytes::from_static(b"c"))),
        ],
        10,
    );
    assert_eq!(keys(&entries), ["a", "b"]);
    assert_eq!(next.as_deref(), Some(&b"c"[..]));
}

#[test]
fn engine_errors_map_to_stable_codes_and_statuses() {
    let g = GroupId(3);
    let cases: Vec<(HostError, StatusCode, &str)> = vec![
        (
            HostError::Timeout(Duration::from_secs(1)),
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
        ),
        (
            HostError::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
        ),
        (
            HostError::Request(RequestError::NotLeader {
                group: g,
                leader: Some(NodeId(2)),
            }),
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
        ),
        (
            HostError::Request(RequestError::NotLeader {
                group: g,
                leader: None,
            }),
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
        ),
        (
            HostError::Request(RequestError::GroupNotFound { group: g }),
            StatusCode::NOT_FOUND,
            "group_not_found",
        ),
        (
            HostError::Request(RequestError::AddressConflict {
                group: g,
                node: NodeId(2),
                known: "127.0.0.1:7100".parse().unwrap(),
                given: "127.0.0.1:1".parse().unwrap(),
            }),
            StatusCode::CONFLICT,
            "address_conflict",
        ),
        (
            HostError::Request(RequestError::ReadAborted { group: g }),
            StatusCode::SERVICE_UNAVAILABLE,
            "retry",
        ),
        (
            HostError::Request(RequestError::Dropped { group: g, index: 4 }),
            StatusCode::SERVICE_UNAVAILABLE,
            "retry",
        ),
        (
            HostError::Request(RequestError::Rejected(
                flotilla::raft::ProposeError::ConfChangePending { group: g, index: 9 },
            )),
            StatusCode::CONFLICT,
            "conf_change_pending",
        ),
        (
            HostError::Request(RequestError::Rejected(flotilla::raft::ProposeError::Busy {
                group: g,
                uncommitted: 9,
            })),
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
        ),
    ];
    for (err, status, code) in cases {
        let text = err.to_string();
        let api = ApiError::from(err);
        assert_eq!((api.status, api.code), (status, code), "{text}");
        let body = api.body();
        assert_eq!(body["code"], code);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let api = ApiError::from(HostError::Request(RequestError::NotLeader {
        group: g,
        leader: Some(NodeId(2)),
    }));
    assert_eq!(api.body()["leader"], 2, "the known leader is named");
    let api = ApiError::from(flotilla_rsm::KvError::ValueTooLarge);
    assert_eq!(
        (api.status, api.code),
        (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
    );
    let api = ApiError::from(flotilla_rsm::KvError::WrongType);
    assert_eq!(
        (api.status, api.code),
        (StatusCode::CONFLICT, "wrong_type"),
        "a GET of a list key is the client's mistake, not a 500"
    );
    // The same error through the engine (`KvClient` helpers) maps the same.
    let api = ApiError::from(HostError::Request(RequestError::Kv {
        group: g,
        error: flotilla_rsm::KvError::KeyTooLarge,
    }));
    assert_eq!(
        (api.status, api.code),
        (StatusCode::BAD_REQUEST, "key_too_large")
    );
}

// ------------------------------------------------------------ Prometheus

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Checks Prometheus text exposition: every sample line is
/// `name{label="value",...} number`, label values escaped correctly, each
/// family's `# HELP` and `# TYPE` come before its samples, a family's
/// samples are contiguous and no series repeats. Returns the samples.
fn check_prometheus(text: &str) -> Vec<Sample> {
    use std::collections::BTreeSet;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut histograms: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{at}");
            assert!(helped.insert(name.to_string()), "{at}: second HELP");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap_or("");
            assert!(valid_name(name), "{at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(parts.next().is_none(), "{at}");
            assert!(typed.insert(name.to_string()), "{at}: second TYPE");
            if kind == "histogram" {
                histograms.insert(name.to_string());
            }
            continue;
        }
        assert!(!line.starts_with('#') || line.starts_with("# "), "{at}");
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // name{labels} value
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{at}: no value"));
        let name = &line[..name_end];
        assert!(valid_name(name), "{at}: bad name");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            match r.strip_prefix('}') {
                Some(after) => rest = after,
                None => {
                    let (parsed, after) = parse_labels_tail(r, &at);
                    labels = parsed;
                    rest = after;
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before value"));
        let value = value.split(' ').next().unwrap();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("{at}: value {v:?}")),
        };
        // A histogram's samples are `<family>_bucket`, `_sum` and `_count`.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| histograms.contains(*f))
            })
            .unwrap_or(name);
        if family != name && name.ends_with("_bucket") {
            assert!(
                labels.iter().any(|(k, _)| k == "le"),
                "{at}: histogram bucket without le"
            );
        }
        let sample_name = name;
        let name = family;
        assert!(helped.contains(name), "{at}: sample before its HELP");
        assert!(typed.contains(name), "{at}: sample before its TYPE");
        if current.as_deref() != Some(name) {
            assert!(
                !finished.contains(name),
                "{at}: family {name} is not contiguous"
            );
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            current = Some(name.to_string());
        }
        let mut sorted = labels.clone();
        sorted.sort();
        assert!(
            series.insert((sample_name.to_string(), sorted)),
            "{at}: duplicate series"
        );
        samples.push((sample_name.to_string(), labels, v));
    }
    samples
}

/// Parses `name="value",...}` (after the opening brace); returns the
/// labels and what follows the closing brace.
fn parse_labels_tail<'a>(mut r: &'a str, at: &str) -> (Vec<(String, String)>, &'a str) {
    let mut labels = Vec::new();
    loop {
        let eq = r
            .find('=')
            .unwrap_or_else(|| panic!("{at}: label without ="));
        let lname = r[..eq].to_string();
        assert!(
            lname
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{at}: label name {lname:?}"
        );
        let b = r.as_bytes();
        assert_eq!(b.get(eq + 1), Some(&b'"'), "{at}: unquoted label");
        let mut pos = eq + 2;
        let mut value = String::new();
        loop {
            match b.get(pos) {
                None => panic!("{at}: unterminated label value"),
                Some(b'"') => break,
                Some(b'\\') => {
                    match b.get(pos + 1) {
                        Some(b'\\') => value.push('\\'),
                        Some(b'"') => value.push('"'),
                        Some(b'n') => value.push('\n'),
                        other => panic!("{at}: bad escape {other:?}"),
                    }
                    pos += 2;
                }
                Some(_) => {
                    let c = r[pos..].chars().next().unwrap();
                    assert!(c != '\n', "{at}: raw newline in a label value");
                    value.push(c);
                    pos += c.len_utf8();
                }
            }
        }
        labels.push((lname, value));
        pos += 1;
        match b.get(pos) {
            Some(b',') => r = &r[pos + 1..],
            Some(b'}') => return (labels, &r[pos + 1..]),
            other => panic!("{at}: expected , or }} got {other:?}"),
        }
    }
}

#[test]
fn prometheus_text_of_synthetic_counters_parses() {
    let mut s0 = flotilla::ShardStats::default();
    s0.shard = 0;
    s0.wal.fdatasyncs = 7;
    s0.transport.peers.push(Default::default());
    s0.transport.peers[0].frames_sent = 3;
    let mut s1 = s0.clone();
    s1.shard = 1;
    s1.wal.fdatasyncs = 9;
    let text = prometheus_text(&[s0, s1], &[], 4);
    let samples = check_prometheus(&text);
    let fsyncs: Vec<f64> = samples
        .iter()
        .filter(|(n, _, _)| n == "flotilla_wal_fsyncs_total")
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(fsyncs, [7.0, 9.0]);
    assert!(text.contains(
        "flotilla_transport_frames_sent_total{node=\"4\",shard=\"0\",peer_node=\"unknown\",peer_shard=\"unknown\"} 3"
    ));
    assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    // The checker itself rejects what it must.
    for bad in [
        "x 1\n",                                    // no HELP/TYPE
        "# HELP x h\n# TYPE x gauge\nx{a=\"1} 2\n", // unterminated label
        "# HELP x h\n# TYPE x gauge\nx{a=1} 2\n",   // unquoted label
        "# HELP x h\n# TYPE x gauge\nx one\n",      // bad value
        "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n",   // duplicate series
    ] {
        assert!(
            std::panic::catch_unwind(|| check_prometheus(bad)).is_err(),
            "checker accepted {bad:?}"
        );
    }
}

// ------------------------------------------------------------ a tiny client

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer: status and JSON code.
    fn expect_error(&self, status: u16, code: &str) -> Value {
        let body = self.json();
        assert_eq!(
            (self.status, body["code"].as_str()),
            (status, Some(code)),
            "body: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the http server");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write request");
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Answer {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.send_raw(&req);
        self.read_answer()
            .unwrap_or_else(|| panic!("{method} {path}: connection closed"))
    }

    /// Reads one response; `None` if the server closed the connection.
    fn read_answer(&mut self) -> Option<Answer> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a response: {e}"),
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("header with a colon");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).expect("read body");
        Some(Answer {
            status,
            headers,
            body,
        })
    }

    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    Client::connect(addr).request(method, path, body)
}

fn call_json(addr: SocketAddr, method: &str, path: &str, body: Value) -> Answer {
    call(addr, method, path, body.to_string().as_bytes())
}

/// Retries `f` until it returns `Ok`, for up to `within`; `Err` carries
/// what was seen, reported if time runs out.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(seen) => assert!(
                start.elapsed() < within,
                "{what}: not reached within {within:?} ({attempts} attempts); last seen: {seen}"
            ),
        }
        // No sleep in this workspace (clippy): park the test thread instead.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// `Err` with the answer's status and body (for [`eventually`]).
fn seen(a: &Answer) -> String {
    format!("{} {}", a.status, text(a))
}

// ------------------------------------------------------------ real nodes

struct TestNode {
    host: Arc<NodeHost>,
    raft: SocketAddr,
    http: SocketAddr,
}

/// Nodes with their shards plus one HTTP executor serving every node.
struct TestCluster {
    nodes: Vec<TestNode>,
    stop: Option<flume::Sender<()>>,
    http_thread: Option<flotilla::exec::ExecutorHandle<()>>,
    _dir: tempfile::TempDir,
}

const KV_GROUPS: [u64; 2] = [1, 2];

impl TestCluster {
    /// `nodes` nodes with `shards` shards each; on node 1 the KV groups
    /// are started as single-member groups (the other nodes host nothing).
    fn start(nodes: u64, shards: usize, options: HttpOptions) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut started = Vec::new();
        for id in 1..=nodes {
            let mut cfg = NodeHostConfig::new(id, dir.path().join(format!("node-{id}")));
            cfg.raft_addr = flotilla::test_util::free_port_block(shards);
            cfg.shard_count = shards;
            cfg.placement = Placement::Unbound;
            cfg.tick_interval = Duration::from_millis(5);
            cfg.preempt_timer = Duration::from_millis(2);
            cfg.io_memory_bytes = 512 << 10;
            cfg.wal_segment_bytes = 4 << 20;
            cfg.detect_stalls = true;
            let raft = cfg.raft_addr;
            let host = Arc::new(NodeHost::start(cfg).expect("start the node"));
            started.push((id, host, raft));
        }
        let (_, host1, raft1) = &started[0];
        futures_lite::future::block_on(async {
            for g in KV_GROUPS {
                host1
                    .start_group(
                        GroupId(g),
                        vec![(NodeId(1), *raft1)],
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("start a KV group");
            }
        });
        let groups: Vec<GroupId> = KV_GROUPS.iter().map(|g| GroupId(*g)).collect();
        let states: Vec<(u64, KvClient)> = started
            .iter()
            .map(|(id, host, _)| (*id, KvClient::new(host.clone(), groups.clone()).unwrap()))
            .collect();
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let http_thread = flotilla::exec::spawn(
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(512 << 10)
                .preempt_timer(Duration::from_millis(2)),
            "http-test".into(),
            move || async move {
                let mut servers = Vec::new();
                for (id, kv) in states {
                    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    let state = Rc::new(HttpState::with_options(kv, id, options.clone()));
                    let stop = stop_rx.clone();
                    servers.push(glommio::spawn_local(async move {
                        serve_until(listener, state, async move {
                            let _ = stop.recv_async().await;
                        })
                        .await
                    }));
                }
                for s in servers {
                    s.await;
                }
            },
        )
        .expect("start the http executor");
        let nodes = started
            .into_iter()
            .map(|(_, host, raft)| TestNode {
                host,
                raft,
                http: addr_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            })
            .collect();
        TestCluster {
            nodes,
            stop: Some(stop_tx),
            http_thread: Some(http_thread),
            _dir: dir,
        }
    }

    fn http(&self, node: usize) -> SocketAddr {
        self.nodes[node - 1].http
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.http_thread.take() {
            let joined = t.join();
            if !std::thread::panicking() {
                assert!(joined.is_ok(), "the http executor panicked");
            }
        }
        for node in self.nodes.drain(..) {
            futures_lite::future::block_on(node.host.shutdown());
        }
    }
}

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

#[test]
fn kv_routes_on_one_node() {
    let c = TestCluster::start(1, 2, HttpOptions::default());
    let h = c.http(1);

    let a = call(h, "GET", "/health", b"");
    assert_eq!((a.status, a.json()["status"].as_str()), (200, Some("ok")));
    let a = call(h, "GET", "/", b"");
    assert_eq!(a.status, 200);
    let index = a.json();
    assert_eq!(
        (index["service"].as_str(), index["node"].as_u64()),
        (Some("flotilla"), Some(1))
    );
    assert_eq!(
        index["routes"].as_array().map(Vec::len),
        Some(super::routes::ROUTES.len())
    );
    call(h, "DELETE", "/", b"").expect_error(405, "method_not_allowed");

    // Put, get, overwrite; values are raw bytes.
    let a = call(h, "PUT", "/kv/alpha", b"one");
    assert_eq!((a.status, a.json()), (200, json!({"written": true})));
    let a = call(h, "GET", "/kv/alpha", b"");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"one"[..]));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    call(h, "PUT", "/kv/alpha", b"two");
    assert_eq!(call(h, "GET", "/kv/alpha", b"").body, b"two");
    let binary = [0u8, 0xff, 0x80, b'\n'];
    assert_eq!(call(h, "PUT", "/kv/bin", &binary).status, 200);
    assert_eq!(call(h, "GET", "/kv/bin", b"").body, binary);

    // Keys are percent-decoded and may contain '/'.
    assert_eq!(call(h, "PUT", "/kv/dir%2Fx%20y", b"slash").status, 200);
    assert_eq!(call(h, "GET", "/kv/dir/x%20y", b"").body, b"slash");

    // Consistency per request.
    for c in ["linearizable", "lease", "stale"] {
        let a = call(h, "GET", &format!("/kv/alpha?consistency={c}"), b"");
        assert_eq!((a.status, a.body.as_slice()), (200, &b"two"[..]), "{c}");
    }
    call(h, "GET", "/kv/alpha?consistency=eventual", b"").expect_error(400, "bad_request");
    call(h, "GET", "/kv/alpha?timeout_ms=zero", b"").expect_error(400, "bad_request");

    // Missing keys, bad keys.
    call(h, "GET", "/kv/nope", b"").expect_error(404, "key_not_found");
    call(h, "GET", "/kv/%zz", b"").expect_error(400, "bad_encoding");
    call(h, "GET", "/kv/a?x=%4", b"").expect_error(400, "bad_encoding");
    call(h, "PUT", "/kv/", b"v").expect_error(400, "bad_key");

    // Conditional puts.
    call(h, "PUT", "/kv/alpha?if=absent", b"x").expect_error(409, "condition_failed");
    call(h, "PUT", "/kv/fresh?if=present", b"x").expect_error(409, "condition_failed");
    assert_eq!(call(h, "PUT", "/kv/fresh?if=absent", b"x").status, 200);
    call(h, "PUT", "/kv/fresh?if=maybe", b"x").expect_error(400, "bad_request");

    // Delete.
    let a = call(h, "DELETE", "/kv/fresh", b"");
    assert_eq!((a.status, a.json()), (200, json!({"deleted": true})));
    call(h, "DELETE", "/kv/fresh", b"").expect_error(404, "key_not_found");

    // Compare-and-set.
    let a = call_json(
        h,
        "POST",
        "/kv/counter/cas",
        json!({"expected": null, "new": "1"}),
    );
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"swapped": true, "previous": null}))
    );
    let a = call_json(
        h,
        "POST",
        "/kv/counter/cas",
        json!({"expected": null, "new": "9"}),
    );
    assert_eq!(a.expect_error(409, "cas_failed")["current"], "1");
    let a = call_json(
        h,
        "POST",
        "/kv/counter/cas",
        json!({"expected": "1", "new": "2"}),
    );
    assert_eq!((a.status, a.json()["previous"].as_str()), (200, Some("1")));
    assert_eq!(call(h, "GET", "/kv/counter", b"").body, b"2");
    let a = call_json(
        h,
        "POST",
        "/kv/counter/cas",
        json!({"expected": "2", "new": null}),
    );
    assert_eq!(a.status, 200, "null deletes");
    call(h, "GET", "/kv/counter", b"").expect_error(404, "key_not_found");
    call(h, "POST", "/kv/counter/cas", b"{not json").expect_error(400, "invalid_json");
    call_json(h, "POST", "/kv/counter/cas", json!({"new": "1"})).expect_error(400, "bad_request");
    call_json(
        h,
        "POST",
        "/kv/counter/cas",
        json!({"expected": 5, "new": "1"}),
    )
    .expect_error(400, "bad_request");
    call_json(h, "POST", "/kv/counter/cas", json!([1])).expect_error(400, "bad_request");
    call(h, "POST", "/kv/counter", b"").expect_error(405, "method_not_allowed");

    // Scan across both KV groups, merged in key order, paged.
    for i in 0..25 {
        assert_eq!(
            call(
                h,
                "PUT",
                &format!("/kv/scan%2F{i:02}"),
                format!("v{i}").as_bytes()
            )
            .status,
            200
        );
    }
    let mut seen = Vec::new();
    let mut start = String::new();
    let mut pages = 0;
    loop {
        let a = call(
            h,
            "GET",
            &format!("/kv?prefix=scan%2F&limit=10&start={start}"),
            b"",
        );
        assert_eq!(a.status, 200, "{}", text(&a));
        let body = a.json();
        for e in body["entries"].as_array().unwrap() {
            let k = e["key"].as_str().unwrap().to_string();
            let i: usize = k["scan/".len()..].parse().unwrap();
            assert_eq!(e["value"], format!("v{i}"));
            seen.push(k);
        }
        pages += 1;
        match body["next"].as_str() {
            Some(n) => start = n.replace('/', "%2F"),
            None => break,
        }
        assert!(pages < 10, "scan does not end");
    }
    let expected: Vec<String> = (0..25).map(|i| format!("scan/{i:02}")).collect();
    assert_eq!(seen, expected, "every key once, in order");
    assert_eq!(pages, 3);
    let a = call(h, "GET", "/kv?prefix=scan/&limit=2&keys_only=true", b"");
    let entries = a.json()["entries"].clone();
    assert_eq!(entries, json!([{"key": "scan/00"}, {"key": "scan/01"}]));
    let a = call(h, "GET", "/kv?prefix=bin", b"");
    assert_eq!(
        a.json()["entries"],
        json!([{"key": "Ymlu", "value": base64(&binary), "encoding": "base64"}])
    );
    // A list (made through the Redis protocol) scans with its type, no
    // value; an empty string keeps its empty value.
    let groups: Vec<GroupId> = KV_GROUPS.iter().map(|g| GroupId(*g)).collect();
    let kv = KvClient::new(c.nodes[0].host.clone(), groups).unwrap();
    let push = flotilla_rsm::KvCommand::Typed(flotilla_rsm::TypedCommand::ListPush {
        key: Bytes::from_static(b"typed/list"),
        left: false,
        only_existing: false,
        values: vec![Bytes::from_static(b"x")],
    });
    let group = kv.group_for(b"typed/list");
    futures_lite::future::block_on(kv.execute(group, &push)).unwrap();
    assert_eq!(call(h, "PUT", "/kv/typed%2Fempty", b"").status, 200);
    let a = call(h, "GET", "/kv?prefix=typed/", b"");
    assert_eq!(
        a.json()["entries"],
        json!([{"key": "typed/empty", "value": ""}, {"key": "typed/list", "type": "list"}])
    );
    call(h, "GET", "/kv?limit=0", b"").expect_error(400, "bad_request");
    call(h, "GET", "/kv?limit=many", b"").expect_error(400, "bad_request");

    // Unknown routes and methods.
    call(h, "GET", "/nope", b"").expect_error(404, "not_found");
    call(h, "GET", "/kv/a/b/cas/x?y", b"").expect_error(404, "key_not_found");
    call(h, "POST", "/health", b"").expect_error(405, "method_not_allowed");
    call(h, "PATCH", "/kv/alpha", b"").expect_error(405, "method_not_allowed");
}

#[test]
fn bad_input_leaves_the_connection_and_node_healthy() {
    let options = HttpOptions {
        body_bytes_max: 64 << 10,
        idle_timeout: Duration::from_secs(3),
        connections_max: 8,
        ..HttpOptions::default()
    };
    let c = TestCluster::start(1, 1, options);
    let h = c.http(1);

    // Keep-alive: several requests on one connection, errors included.
    let mut conn = Client::connect(h);
    assert_eq!(conn.request("PUT", "/kv/k", b"v").status, 200);
    conn.request("POST", "/kv/k/cas", b"{\"expected\":")
        .expect_error(400, "invalid_json");
    conn.request("GET", "/kv/%", b"")
        .expect_error(400, "bad_encoding");
    // `/kv` itself takes only GET (a scan); other methods used to slice
    // past its end and kill the shard (found by `launcher_fuzz`).
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        conn.request(method, "/kv", b"{}")
            .expect_error(405, "method_not_allowed");
    }
    conn.request("PUT", "//kv/", b"v")
        .expect_error(400, "bad_key");
    conn.request("PUT", "//kv//x", b"v")
        .expect_error(400, "bad_key");
    // A body over the limit (but within the drain bound) is read and
    // refused; the connection stays usable.
    let big = vec![b'x'; (64 << 10) + 1];
    conn.request("PUT", "/kv/big", &big)
        .expect_error(413, "body_too_large");
    assert_eq!(conn.request("GET", "/kv/k", b"").body, b"v");
    call(h, "GET", "/kv/big", b"").expect_error(404, "key_not_found");

    // A chunked body over the limit (no Content-Length) is refused too.
    let mut conn = Client::connect(h);
    let chunk = vec![b'y'; 40 << 10];
    let mut req =
        b"PUT /kv/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    conn.send_raw(&req);
    conn.read_answer()
        .unwrap()
        .expect_error(413, "body_too_large");

    // A body far over the limit: 413, then the server closes.
    let mut conn = Client::connect(h);
    conn.send_raw(b"PUT /kv/huge HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
    let a = conn.read_answer().expect("a 413 before the close");
    a.expect_error(413, "body_too_large");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(conn.closed(), "connection closed after an unread body");

    // Garbage instead of HTTP: hyper answers 400 and closes; the node is fine.
    let mut conn = Client::connect(h);
    conn.send_raw(b"\x00\x01GARBAGE garbage\r\n\r\n");
    if let Some(a) = conn.read_answer() {
        assert_eq!(a.status, 400);
    }
    assert!(conn.closed());

    // A JSON body that is not an object, a huge number, a wrong type.
    call(h, "POST", "/clusters", b"[]").expect_error(400, "bad_request");
    call(
        h,
        "POST",
        "/clusters",
        b"{\"clusterId\": -1, \"peers\": []}",
    )
    .expect_error(400, "bad_request");
    call(h, "POST", "/clusters", b"{\"clusterId\": 1e400}").expect_error(400, "invalid_json");
    call(h, "POST", "/clusters", b"\xff\xfe").expect_error(400, "invalid_json");

    // A client that sends half a request and stalls is cut off after
    // `idle_timeout` (slow senders cannot pin connections).
    let mut slow = Client::connect(h);
    slow.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n");
    let start = Instant::now();
    assert!(slow.closed(), "a stalled request must be cut off");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(25),
        "cut off after {waited:?}, idle_timeout is 3 s"
    );

    // connections_max = 8: hold connections until one is refused with a
    // 503 answer; once they close, the node serves again.
    let mut held = Vec::new();
    let refused = loop {
        let mut c = Client::connect(h);
        c.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let a = c.read_answer().expect("an answer, even when refused");
        if a.status == 503 {
            break a;
        }
        assert_eq!(a.status, 200);
        held.push(c);
        assert!(held.len() <= 8, "connections_max is not enforced");
    };
    refused.expect_error(503, "too_many_connections");
    drop(held);
    eventually(
        Duration::from_secs(10),
        "serving after the connections closed",
        || {
            let a = call(h, "GET", "/health", b"");
            if a.status == 200 {
                Ok(())
            } else {
                Err(seen(&a))
            }
        },
    );
    assert_eq!(call(h, "GET", "/kv/k", b"").body, b"v");
}

#[test]
fn rafter_demo_admin_status_and_metrics_on_two_nodes() {
    let c = TestCluster::start(2, 1, HttpOptions::default());
    let (h1, h2) = (c.http(1), c.http(2));
    let (r1, r2) = (c.nodes[0].raft, c.nodes[1].raft);

    // rafter's demo, as in its README.
    let body = json!({
        "clusterId": 7, "nodeId": 1, "electionRTT": 50, "heartbeatRTT": 5,
        "snapshotInterval": 0, "compactionOverhead": 0,
        "peers": [{"nodeId": 1, "address": r1.to_string()}],
    });
    let a = call_json(h1, "POST", "/clusters", body.clone());
    assert_eq!(
        (a.status, a.json()["started"].as_bool()),
        (200, Some(true)),
        "{}",
        text(&a)
    );
    assert_eq!(
        call_json(h1, "POST", "/clusters", body).status,
        200,
        "idempotent"
    );
    let a = call(h1, "PUT", "/cluster/7?key=hello&value=world", b"");
    assert_eq!(
        (a.status, a.json()["result"].as_str()),
        (200, Some("OK")),
        "{}",
        text(&a)
    );
    let a = call(h1, "GET", "/cluster/7?key=hello", b"");
    assert_eq!(
        (
            a.status,
            a.json()["value"].as_str(),
            a.json()["status"].as_str()
        ),
        (200, Some("world"), Some("completed"))
    );
    call(h1, "GET", "/cluster/7?key=not_set", b"").expect_error(404, "key_not_found");
    call(h1, "GET", "/cluster/7", b"").expect_error(400, "bad_request");
    call(h1, "GET", "/cluster/99?key=a", b"").expect_error(404, "group_not_found");
    call(h1, "GET", "/cluster/x?key=a", b"").expect_error(400, "bad_request");
    let wrong_node =
        json!({"clusterId": 8, "nodeId": 2, "peers": [{"nodeId": 2, "address": r2.to_string()}]});
    call_json(h1, "POST", "/clusters", wrong_node).expect_error(400, "bad_request");
    let bad_addr = json!({"clusterId": 8, "peers": [{"nodeId": 1, "address": "nowhere"}]});
    call_json(h1, "POST", "/clusters", bad_addr).expect_error(400, "bad_request");
    call(h1, "POST", "/clusters", b"{").expect_error(400, "invalid_json");

    // Group listing.
    let a = call(h1, "GET", "/groups", b"");
    assert_eq!(a.status, 200);
    let groups = a.json()["groups"].clone();
    let ids: Vec<u64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 7]);
    let g7 = &groups[2];
    assert_eq!(
        (
            g7["role"].as_str(),
            g7["leader"].as_u64(),
            g7["kv"].as_bool()
        ),
        (Some("leader"), Some(1), Some(false))
    );
    assert!(
        g7["commit"].as_u64().unwrap() >= 2 && g7["applied"].as_u64().unwrap() >= 2,
        "{g7}"
    );
    assert_eq!(
        g7["membership"]["members"],
        json!([{"node": 1, "kind": "voter", "addr": r1.to_string()}])
    );
    call(h1, "GET", "/groups/99", b"").expect_error(404, "group_not_found");
    call(h1, "GET", "/groups/abc", b"").expect_error(400, "bad_request");
    let a = call(h1, "POST", "/groups/7/snapshot", b"");
    assert_eq!(a.status, 200, "{}", text(&a));
    assert!(a.json()["index"].as_u64().unwrap() >= 2, "{}", text(&a));
    call(h1, "POST", "/groups/99/snapshot", b"").expect_error(404, "group_not_found");
    call(h1, "GET", "/groups/7/nothing", b"").expect_error(404, "not_found");

    // Membership: node 2 joins group 7 as an observer, is promoted, takes
    // the lead, and removes node 1.
    let a = call_json(
        h2,
        "POST",
        "/groups/7/join",
        json!({"peers": [{"node": 1, "addr": r1.to_string()}]}),
    );
    assert_eq!(
        (a.status, a.json()["joined"].as_bool()),
        (200, Some(true)),
        "{}",
        text(&a)
    );
    call_json(
        h1,
        "POST",
        "/groups/7/members",
        json!({"node": 2, "addr": r2.to_string(), "kind": "sometimes"}),
    )
    .expect_error(400, "bad_request");
    call_json(h1, "POST", "/groups/7/members", json!({"node": 2})).expect_error(400, "bad_request");
    let a = call_json(
        h1,
        "POST",
        "/groups/7/members",
        json!({"node": 2, "addr": r2.to_string(), "kind": "observer"}),
    );
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(
        a.json()["members"],
        json!([{"node": 1, "kind": "voter", "addr": r1.to_string()}, {"node": 2, "kind": "observer", "addr": r2.to_string()}])
    );
    // The observer catches up; promote it (409 not_caught_up until then).
    eventually(Duration::from_secs(20), "promote node 2", || {
        let a = call(h1, "POST", "/groups/7/members/2/promote", b"");
        match a.status {
            200 => Ok(()),
            409 | 503 | 504 => Err(seen(&a)),
            _ => panic!("promote: {}", seen(&a)),
        }
    });
    let a = call(h1, "GET", "/groups/7/members", b"");
    assert_eq!(a.json()["members"][1]["kind"], "voter");
    // Node 2 replicated the data.
    eventually(Duration::from_secs(20), "node 2 applies the log", || {
        let a = call(h2, "GET", "/cluster/7?key=hello&consistency=stale", b"");
        if a.status == 200 {
            Ok(())
        } else {
            Err(seen(&a))
        }
    });
    // Node 2 must know it became a voter before it can take over.
    eventually(
        Duration::from_secs(20),
        "node 2 sees itself a voter",
        || {
            let a = call(h2, "GET", "/groups/7/members", b"");
            if a.status == 200 && a.json()["members"][1]["kind"] == "voter" {
                Ok(())
            } else {
                Err(seen(&a))
            }
        },
    );
    // A transfer can miss (the target may not know yet that it became a
    // voter, and ignores the hand-over): 504 after `timeout_ms`, retried.
    let a = eventually(Duration::from_secs(20), "transfer to node 2", || {
        let a = call_json(
            h1,
            "POST",
            "/groups/7/transfer?timeout_ms=1000",
            json!({"to": 2}),
        );
        match (a.status, a.json()["code"].as_str()) {
            (200, _) => Ok(a),
            (504, Some("timeout")) | (503, _) | (409, _) => Err(seen(&a)),
            _ => panic!("transfer: {}", seen(&a)),
        }
    });
    assert_eq!(a.json()["leader"].as_u64(), Some(2));
    call_json(h1, "POST", "/groups/7/transfer", json!({})).expect_error(400, "bad_request");
    let a = call(h2, "GET", "/groups/7", b"");
    assert_eq!(
        (a.json()["role"].as_str(), a.json()["leader"].as_u64()),
        (Some("leader"), Some(2))
    );
    // A new leader accepts membership changes once it committed an entry
    // of its term: until then 503 `retry`, which clients retry.
    let a = eventually(Duration::from_secs(20), "remove node 1", || {
        let a = call(h2, "DELETE", "/groups/7/members/1", b"");
        match (a.status, a.json()["code"].as_str()) {
            (200, _) => Ok(a),
            (503, _) | (504, _) | (409, _) => Err(seen(&a)),
            _ => panic!("remove: {}", seen(&a)),
        }
    });
    assert_eq!(
        a.json()["members"],
        json!([{"node": 2, "kind": "voter", "addr": r2.to_string()}])
    );
    call(h2, "DELETE", "/groups/7/members/2", b"").expect_error(400, "invalid_membership_change");
    // The removed node hears that its removal committed (the leader's
    // farewell heartbeat): it used to keep the old membership, leaderless.
    eventually(
        Duration::from_secs(10),
        "node 1 sees itself removed",
        || {
            let a = call(h1, "GET", "/groups/7/members", b"");
            if a.status == 200
                && a.json()["members"]
                    == json!([{"node": 2, "kind": "voter", "addr": r2.to_string()}])
            {
                Ok(())
            } else {
                Err(seen(&a))
            }
        },
    );
    let a = call(h2, "PUT", "/cluster/7?key=after&value=removal", b"");
    assert_eq!(a.status, 200, "{}", text(&a));
    // Node 1, removed, drops its replica (a second DELETE is a no-op); the
    // KV groups serve the node's keys and cannot be stopped.
    call(h1, "DELETE", "/groups/1", b"").expect_error(409, "kv_group");
    for _ in 0..2 {
        let a = call(h1, "DELETE", "/groups/7", b"");
        assert_eq!(
            (a.status, a.json()["stopped"].as_bool()),
            (200, Some(true)),
            "{}",
            text(&a)
        );
    }
    call(h1, "GET", "/groups/7", b"").expect_error(404, "group_not_found");
    let a = call(h2, "GET", "/cluster/7?key=after", b"");
    assert_eq!(a.json()["value"].as_str(), Some("removal"), "{}", text(&a));

    // Status.
    let a = call(h1, "GET", "/status", b"");
    let s = a.json();
    assert_eq!(
        (a.status, s["node"].as_u64(), s["shard_count"].as_u64()),
        (200, Some(1), Some(1))
    );
    assert_eq!(s["groups"]["kv_groups"], json!([1, 2]));
    assert_eq!(s["shards"].as_array().unwrap().len(), 1);

    // Metrics parse, and carry the families the issue names.
    let a = call(h1, "GET", "/metrics", b"");
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = check_prometheus(&text(&a));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    };
    for family in [
        "flotilla_proposals_total",
        "flotilla_commits_total",
        "flotilla_leader_elections_total",
        "flotilla_wal_fsyncs_total",
        "flotilla_wal_bytes_written_total",
        "flotilla_shard_requests_pending",
        "flotilla_snapshots_sent_total",
        "flotilla_snapshots_taken_total",
    ] {
        assert!(
            value(family, &[("node", "1"), ("shard", "0")]).is_some(),
            "{family} missing"
        );
    }
    assert!(value("flotilla_wal_fsyncs_total", &[("node", "1")]).unwrap() > 0.0);
    // The flush latency histogram: every flush is in the +Inf bucket and
    // in the count.
    let flushes = value(
        "flotilla_wal_flush_seconds_count",
        &[("node", "1"), ("shard", "0")],
    )
    .expect("flush latency histogram");
    assert!(flushes > 0.0);
    assert_eq!(
        value(
            "flotilla_wal_flush_seconds_bucket",
            &[("node", "1"), ("shard", "0"), ("le", "+Inf")]
        ),
        Some(flushes)
    );
    assert!(
        value("flotilla_snapshots_taken_total", &[("node", "1")]).unwrap() >= 1.0,
        "the snapshot asked for over HTTP is counted"
    );
    assert!(value("flotilla_commits_total", &[("node", "1")]).unwrap() > 0.0);
    assert!(
        value(
            "flotilla_transport_messages_sent_total",
            &[("node", "1"), ("peer_node", "2")]
        )
        .unwrap()
            > 0.0,
        "per-peer transport counters"
    );
    assert!(value("flotilla_group_applied_index", &[("group", "1")]).is_some());
    // Group 1 is never written in this test: its applied index moves once
    // the no-op of its first election commits, which can come after this
    // point (seen in CI: 0 at the first scrape). Scrape until it has.
    eventually(Duration::from_secs(20), "group 1 applied on node 1", || {
        let samples = check_prometheus(&text(&call(h1, "GET", "/metrics", b"")));
        let applied = samples
            .iter()
            .find(|(n, l, _)| {
                n == "flotilla_group_applied_index"
                    && l.iter().any(|(k, v)| k == "group" && v == "1")
            })
            .map(|(_, _, v)| *v);
        match applied {
            Some(v) if v > 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(value("flotilla_http_responses_total", &[("class", "4xx")]).unwrap() > 0.0);
}

/// Many keep-alive connections at once, each writing its own keys and
/// reading them back (every read must see its own write, linearizable by
/// default). With `FLOTILLA_HTTP_MEASURE=1` it runs 3 s per case and prints
/// throughput and latency (the README's table).
#[test]
fn concurrent_connections_read_their_writes() {
    let measure = std::env::var("FLOTILLA_HTTP_MEASURE").is_ok();
    let c = TestCluster::start(1, 2, HttpOptions::default());
    let h = c.http(1);
    let cases: &[(&str, usize)] = if measure {
        &[
            ("", 1),
            ("", 16),
            ("?consistency=lease", 1),
            ("?consistency=lease", 16),
            ("?consistency=stale", 16),
        ]
    } else {
        &[("", 8), ("?consistency=lease", 4)]
    };
    for (case, (consistency, conns)) in cases.iter().enumerate() {
        let run_for = Duration::from_secs(if measure { 3 } else { 0 });
        let start = Instant::now();
        let workers: Vec<_> = (0..*conns)
            .map(|t| {
                let consistency = consistency.to_string();
                std::thread::spawn(move || {
                    let mut conn = Client::connect(h);
                    let (mut puts, mut gets) = (Vec::new(), Vec::new());
                    let mut i = 0u64;
                    while i < 20 || start.elapsed() < run_for {
                        let key = format!("/kv/c{case}-t{t}-{}", i % 1000);
                        let value = format!("{i:0>100}");
                        let s = Instant::now();
                        let a = conn.request("PUT", &key, value.as_bytes());
                        assert_eq!(a.status, 200, "{}", text(&a));
                        puts.push(s.elapsed());
                        let s = Instant::now();
                        let a = conn.request("GET", &format!("{key}{consistency}"), b"");
                        assert_eq!((a.status, text(&a)), (200, value), "{key}");
                        gets.push(s.elapsed());
                        i += 1;
                    }
                    (puts, gets)
                })
            })
            .collect();
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        for w in workers {
            let (p, g) = w.join().expect("a client thread failed");
            puts.extend(p);
            gets.extend(g);
        }
        assert!(puts.len() >= 20 * conns);
        if measure {
            let secs = start.elapsed().as_secs_f64();
            for (what, lat) in [("PUT 100 B", &mut puts), ("GET", &mut gets)] {
                lat.sort();
                let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
                println!(
                    "{what:9} {consistency:20} conns={conns:2} {:7.0} req/s  p50 {:>9.3?}  p99 {:>9.3?}",
                    lat.len() as f64 / secs,
                    q(0.5),
                    q(0.99)
                );
            }
        }
    }
}

#[test]
fn refused_connection_answer_is_well_formed() {
    let text = std::str::from_utf8(super::REFUSED_RESPONSE).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 503 "));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["code"], "too_many_connections");
}
