//! `GET /metrics`: the node's counters in the Prometheus text exposition
//! format (version 0.0.4).
//!
//! ```text
//! # HELP flotilla_wal_fsyncs_total fdatasync calls of the shard's WAL.
//! # TYPE flotilla_wal_fsyncs_total counter
//! flotilla_wal_fsyncs_total{node="1",shard="0"} 42
//! flotilla_wal_fsyncs_total{node="1",shard="1"} 40
//! ```
//! One `# HELP` and one `# TYPE` line per family, then every sample of that
//! family; label values escaped (`\\`, `\"`, `\n`). Counters end in
//! `_total`, durations are in seconds. The WAL's flush latency (DMA write +
//! fdatasync) is a histogram, `flotilla_wal_flush_seconds` (`_bucket{le}`,
//! `_sum`, `_count` per shard).

use std::fmt::Write as _;

use flotilla::{GroupStatus, Role, ShardStats};

use super::{get, HttpCounters};

/// Renders shard counters and group states as Prometheus text.
///
/// # Examples
/// ```ignore
/// let text = prometheus_text(&host.stats(d).await?, &host.groups(d).await?, 1);
/// assert!(text.contains("# TYPE flotilla_wal_fsyncs_total counter"));
/// ```
pub fn prometheus_text(stats: &[ShardStats], groups: &[GroupStatus], node_id: u64) -> String {
    let mut out = Exposition::default();
    let node = node_id.to_string();
    let shard_labels =
        |s: &ShardStats| vec![("node", node.clone()), ("shard", s.shard.to_string())];

    // Raft work per shard.
    type ShardField = fn(&ShardStats) -> Value;
    let shard_families: &[(&str, &str, Kind, ShardField)] = &[
        ("flotilla_shard_ticks_total", "Raft ticks fired on the shard.", Kind::Counter, |s| Value::U(s.ticks)),
        ("flotilla_shard_tick_lateness_max_seconds", "Latest a tick has fired after its due time.", Kind::Gauge, |s| Value::F(s.tick_lateness_max.as_secs_f64())),
        ("flotilla_shard_groups", "Groups hosted by the shard.", Kind::Gauge, |s| Value::U(s.groups)),
        ("flotilla_shard_leaders", "Groups of the shard this node leads.", Kind::Gauge, |s| Value::U(s.leaders)),
        ("flotilla_shard_live_groups", "Groups not quiesced (ticked every tick).", Kind::Gauge, |s| Value::U(s.live_groups)),
        ("flotilla_proposals_total", "Log entries appended by the shard's replicas (proposals as leader, replication as follower).", Kind::Counter, |s| Value::U(s.entries_appended)),
        ("flotilla_commits_total", "Committed entries handed to the state machines (applied).", Kind::Counter, |s| Value::U(s.entries_committed)),
        ("flotilla_leader_elections_total", "Times a group of the shard became leader on this node (leader changes to here).", Kind::Counter, |s| Value::U(s.leader_elected)),
        ("flotilla_shard_turns_total", "Driver turns (collect readys, one WAL write, apply).", Kind::Counter, |s| Value::U(s.turns)),
        ("flotilla_shard_requests_pending", "Proposals and reads waiting in the shard's groups (queue depth).", Kind::Gauge, |s| Value::U(s.requests_pending)),
        ("flotilla_shard_decode_errors_total", "Raft messages that did not decode (dropped).", Kind::Counter, |s| Value::U(s.decode_errors)),
        // WAL.
        ("flotilla_wal_batches_total", "Non-empty batches written to the WAL.", Kind::Counter, |s| Value::U(s.wal.batches)),
        ("flotilla_wal_flushes_total", "WAL frames written (one write + one fdatasync each).", Kind::Counter, |s| Value::U(s.wal.flushes)),
        ("flotilla_wal_fsyncs_total", "fdatasync calls of the shard's WAL, segment preparation included.", Kind::Counter, |s| Value::U(s.wal.fdatasyncs)),
        ("flotilla_wal_bytes_written_total", "Bytes written by WAL flushes, padding included.", Kind::Counter, |s| Value::U(s.wal.bytes_written)),
        ("flotilla_wal_record_bytes_total", "Bytes of WAL records written (no padding).", Kind::Counter, |s| Value::U(s.wal.record_bytes)),
        ("flotilla_wal_entries_written_total", "Log entries written to the WAL.", Kind::Counter, |s| Value::U(s.wal.entries_written)),
        ("flotilla_wal_prepare_bytes_written_total", "Bytes written preparing WAL segments.", Kind::Counter, |s| Value::U(s.wal.prepare_bytes_written)),
        ("flotilla_wal_segments", "Live WAL segments.", Kind::Gauge, |s| Value::U(s.wal.segments)),
        ("flotilla_wal_segments_created_total", "WAL segments created.", Kind::Counter, |s| Value::U(s.wal.segments_created)),
        ("flotilla_wal_segments_recycled_total", "WAL segments reused.", Kind::Counter, |s| Value::U(s.wal.segments_recycled)),
        ("flotilla_wal_segments_deleted_total", "WAL segments deleted.", Kind::Counter, |s| Value::U(s.wal.segments_deleted)),
        ("flotilla_wal_cache_bytes", "Entry payload bytes cached in memory.", Kind::Gauge, |s| Value::U(s.wal.cache_bytes)),
        ("flotilla_wal_disk_reads_total", "WAL reads that went to disk.", Kind::Counter, |s| Value::U(s.wal.disk_reads)),
        ("flotilla_wal_disk_read_bytes_total", "Bytes read from WAL segments on disk.", Kind::Counter, |s| Value::U(s.wal.disk_read_bytes)),
        ("flotilla_wal_recovery_seconds", "Time the WAL spent recovering at start.", Kind::Gauge, |s| Value::F(s.wal.recovery_duration.as_secs_f64())),
        ("flotilla_wal_recovery_truncated_bytes", "Bytes of a torn tail dropped at recovery.", Kind::Gauge, |s| Value::U(s.wal.recovery_truncated_bytes)),
        // Transport, shard level.
        ("flotilla_transport_connections_accepted_total", "Inbound raft connections accepted.", Kind::Counter, |s| Value::U(s.transport.connections_accepted)),
        ("flotilla_transport_connections_open", "Inbound raft connections open.", Kind::Gauge, |s| Value::U(s.transport.connections_open)),
        ("flotilla_transport_connections_lost_total", "Inbound raft connections that ended while the transport ran (peer stopped, died or reconnected).", Kind::Counter, |s| Value::U(s.transport.connections_lost)),
        ("flotilla_transport_inbound_queue_depth", "Received message batches waiting for the shard.", Kind::Gauge, |s| Value::U(s.transport.inbound_queue_depth)),
        // Snapshots.
        ("flotilla_snapshots_taken_total", "Snapshots taken by the shard's replicas.", Kind::Counter, |s| Value::U(s.snapshots_taken)),
        ("flotilla_snapshots_sent_total", "Snapshots streamed to followers.", Kind::Counter, |s| Value::U(s.snapshots_sent)),
        ("flotilla_snapshots_installed_total", "Snapshots received and installed.", Kind::Counter, |s| Value::U(s.snapshots_installed)),
        ("flotilla_leader_balance_transfers_total", "Leadership transfers started to balance leaders over the nodes.", Kind::Counter, |s| Value::U(s.balance_transfers)),
        ("flotilla_forwards_settled_from_log_total", "Forwarded writes answered from this node's own log after their leader failed.", Kind::Counter, |s| Value::U(s.forwards_settled_from_log)),
        ("flotilla_raft_messages_impossible_total", "Raft messages refused as impossible for their group's log (another cluster's node?).", Kind::Counter, |s| Value::U(s.impossible_messages)),
        ("flotilla_peer_loss_wakes_total", "Idle followers woken because their leader's connection ended.", Kind::Counter, |s| Value::U(s.peer_loss_wakes)),
        ("flotilla_transfers_refused_stopping_total", "Leadership transfers refused because this node was stopping.", Kind::Counter, |s| Value::U(s.transfers_refused_stopping)),
        ("flotilla_snapshot_streams_sent_total", "Snapshot streams sent and acknowledged as durable by the receiver.", Kind::Counter, |s| Value::U(s.transport.snapshots.sent)),
        ("flotilla_snapshot_streams_send_failed_total", "Snapshot streams whose sending failed.", Kind::Counter, |s| Value::U(s.transport.snapshots.send_failed)),
        ("flotilla_snapshot_streams_received_total", "Snapshot streams received completely.", Kind::Counter, |s| Value::U(s.transport.snapshots.received)),
        ("flotilla_snapshot_streams_receive_failed_total", "Snapshot streams received that broke or were rejected.", Kind::Counter, |s| Value::U(s.transport.snapshots.receive_failed)),
        ("flotilla_snapshot_bytes_sent_total", "Snapshot payload bytes sent.", Kind::Counter, |s| Value::U(s.transport.snapshots.bytes_sent)),
        ("flotilla_snapshot_bytes_received_total", "Snapshot payload bytes received.", Kind::Counter, |s| Value::U(s.transport.snapshots.bytes_received)),
    ];
    for (name, help, kind, field) in shard_families {
        out.family(
            name,
            help,
            *kind,
            stats.iter().map(|s| (shard_labels(s), field(s))),
        );
    }

    // WAL flush (DMA write + fdatasync) latency, per shard.
    out.histogram(
        "flotilla_wal_flush_seconds",
        "Latency of WAL frame flushes: one DMA write plus its fdatasync.",
        stats
            .iter()
            .map(|s| (shard_labels(s), s.wal.flush_latency.clone())),
    );

    // Inbound connections closed for a reason.
    out.family(
        "flotilla_transport_rejected_total",
        "Inbound raft connections closed because of bad input or a refused handshake, by reason.",
        Kind::Counter,
        stats.iter().flat_map(|s| {
            let r = &s.transport.rejected;
            [
                ("handshake_garbage", r.handshake_garbage),
                ("handshake_timeout", r.handshake_timeout),
                ("cluster_mismatch", r.cluster_mismatch),
                ("unknown_node", r.unknown_node),
                ("wrong_target", r.wrong_target),
                ("unsupported_version", r.unsupported_version),
                ("bad_magic", r.bad_magic),
                ("bad_version", r.bad_version),
                ("bad_kind", r.bad_kind),
                ("too_large", r.too_large),
                ("bad_crc", r.bad_crc),
                ("malformed", r.malformed),
                ("truncated", r.truncated),
                ("too_many_connections", r.too_many_connections),
            ]
            .into_iter()
            .map(|(reason, v)| {
                let mut labels = shard_labels(s);
                labels.push(("reason", reason.to_string()));
                (labels, Value::U(v))
            })
            .collect::<Vec<_>>()
        }),
    );

    // Transport per peer.
    type PeerField = fn(&PeerRow) -> Value;
    let peers = peer_rows(stats, node_id);
    let peer_families: &[(&str, &str, Kind, PeerField)] = &[
        (
            "flotilla_transport_frames_sent_total",
            "Frames written to the peer.",
            Kind::Counter,
            |p| Value::U(p.frames_sent),
        ),
        (
            "flotilla_transport_frames_received_total",
            "Frames received from the peer.",
            Kind::Counter,
            |p| Value::U(p.frames_received),
        ),
        (
            "flotilla_transport_messages_sent_total",
            "Raft messages written to the peer.",
            Kind::Counter,
            |p| Value::U(p.messages_sent),
        ),
        (
            "flotilla_transport_messages_received_total",
            "Raft messages received from the peer.",
            Kind::Counter,
            |p| Value::U(p.messages_received),
        ),
        (
            "flotilla_transport_bytes_sent_total",
            "Bytes written to the peer, frame headers included.",
            Kind::Counter,
            |p| Value::U(p.bytes_sent),
        ),
        (
            "flotilla_transport_bytes_received_total",
            "Bytes received from the peer, frame headers included.",
            Kind::Counter,
            |p| Value::U(p.bytes_received),
        ),
        (
            "flotilla_transport_messages_dropped_total",
            "Messages refused because the peer's queue was full.",
            Kind::Counter,
            |p| Value::U(p.messages_dropped),
        ),
        (
            "flotilla_transport_messages_lost_total",
            "Messages accepted but lost (no address, failed write).",
            Kind::Counter,
            |p| Value::U(p.messages_lost),
        ),
        (
            "flotilla_transport_reconnects_total",
            "Successful connections to the peer after the first.",
            Kind::Counter,
            |p| Value::U(p.reconnects),
        ),
        (
            "flotilla_transport_dial_failures_total",
            "Failed dials and handshakes to the peer.",
            Kind::Counter,
            |p| Value::U(p.dial_failures),
        ),
        (
            "flotilla_transport_queue_depth",
            "Messages queued for the peer.",
            Kind::Gauge,
            |p| Value::U(p.queue_depth),
        ),
        (
            "flotilla_transport_queue_bytes",
            "Payload bytes queued for the peer.",
            Kind::Gauge,
            |p| Value::U(p.queue_bytes),
        ),
        (
            "flotilla_transport_connected",
            "1 if an outbound connection to the peer is established.",
            Kind::Gauge,
            |p| Value::U(u64::from(p.connected)),
        ),
    ];
    for (name, help, kind, field) in peer_families {
        out.family(
            name,
            help,
            *kind,
            peers.iter().map(|p| (p.labels.clone(), field(p))),
        );
    }

    // Per group.
    type GroupField = fn(&GroupStatus) -> Value;
    let group_families: &[(&str, &str, Kind, GroupField)] = &[
        (
            "flotilla_group_term",
            "Current raft term of this node's replica.",
            Kind::Gauge,
            |g| Value::U(g.term),
        ),
        (
            "flotilla_group_commit_index",
            "Commit index of this node's replica.",
            Kind::Gauge,
            |g| Value::U(g.commit),
        ),
        (
            "flotilla_group_applied_index",
            "Applied index of this node's replica.",
            Kind::Gauge,
            |g| Value::U(g.applied),
        ),
        (
            "flotilla_group_last_index",
            "Last log index of this node's replica.",
            Kind::Gauge,
            |g| Value::U(g.last_index),
        ),
        (
            "flotilla_group_is_leader",
            "1 if this node leads the group.",
            Kind::Gauge,
            |g| Value::U(u64::from(g.role == Role::Leader)),
        ),
        (
            "flotilla_group_leader",
            "Node id of the leader this replica knows (0: none).",
            Kind::Gauge,
            |g| Value::U(g.leader.map_or(0, |n| n.0)),
        ),
        (
            "flotilla_group_proposals_pending",
            "Proposals waiting for their entry to apply.",
            Kind::Gauge,
            |g| Value::U(g.proposals_pending as u64),
        ),
        (
            "flotilla_group_reads_pending",
            "Reads waiting for confirmation or apply.",
            Kind::Gauge,
            |g| Value::U(g.reads_pending as u64),
        ),
    ];
    for (name, help, kind, field) in group_families {
        out.family(
            name,
            help,
            *kind,
            groups.iter().map(|g| {
                (
                    vec![
                        ("node", node_id.to_string()),
                        ("group", g.group.0.to_string()),
                    ],
                    field(g),
                )
            }),
        );
    }
    out.text
}

/// The HTTP server's own counters as Prometheus text (appended to
/// [`prometheus_text`] by the route).
pub(crate) fn http_text(c: &HttpCounters, node_id: u64) -> String {
    let mut out = Exposition::default();
    let node = || vec![("node", node_id.to_string())];
    out.family(
        "flotilla_http_connections_accepted_total",
        "HTTP connections accepted.",
        Kind::Counter,
        [(node(), Value::U(get(&c.connections_accepted)))],
    );
    out.family(
        "flotilla_http_connections_refused_total",
        "HTTP connections closed at once because connections_max were open.",
        Kind::Counter,
        [(node(), Value::U(get(&c.connections_refused)))],
    );
    out.family(
        "flotilla_http_connections_open",
        "HTTP connections open.",
        Kind::Gauge,
        [(node(), Value::U(get(&c.connections_open)))],
    );
    out.family(
        "flotilla_http_responses_total",
        "HTTP responses by status class.",
        Kind::Counter,
        c.responses_by_class.iter().enumerate().map(|(i, v)| {
            let mut labels = node();
            labels.push(("class", format!("{}xx", i + 1)));
            (labels, Value::U(get(v)))
        }),
    );
    out.text
}

/// One peer's transport counters, copied out of `ShardStats` (its type
/// lives in `flotilla-transport`, which `bin` does not depend on).
struct PeerRow {
    labels: Vec<(&'static str, String)>,
    frames_sent: u64,
    frames_received: u64,
    messages_sent: u64,
    messages_received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    messages_dropped: u64,
    messages_lost: u64,
    reconnects: u64,
    dial_failures: u64,
    queue_depth: u64,
    queue_bytes: u64,
    connected: bool,
}

fn peer_rows(stats: &[ShardStats], node_id: u64) -> Vec<PeerRow> {
    let mut rows = Vec::new();
    for s in stats {
        for p in &s.transport.peers {
            let (peer_node, peer_shard) = match p.peer {
                Some(id) => (id.node.0.to_string(), id.shard.0.to_string()),
                None => ("unknown".to_string(), "unknown".to_string()),
            };
            rows.push(PeerRow {
                labels: vec![
                    ("node", node_id.to_string()),
                    ("shard", s.shard.to_string()),
                    ("peer_node", peer_node),
                    ("peer_shard", peer_shard),
                ],
                frames_sent: p.frames_sent,
                frames_received: p.frames_received,
                messages_sent: p.messages_sent,
                messages_received: p.messages_received,
                bytes_sent: p.bytes_sent,
                bytes_received: p.bytes_received,
                messages_dropped: p.messages_dropped,
                messages_lost: p.messages_lost,
                reconnects: p.reconnects,
                dial_failures: p.dial_failures,
                queue_depth: p.queue_depth,
                queue_bytes: p.queue_bytes,
                connected: p.connected,
            });
        }
    }
    rows
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

enum Value {
    U(u64),
    F(f64),
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family<L>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        samples: impl IntoIterator<Item = (L, Value)>,
    ) where
        L: AsRef<[(&'static str, String)]>,
    {
        debug_assert!(valid_name(name), "bad metric name {name}");
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            let labels = labels.as_ref();
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
                }
                self.text.push('}');
            }
            match value {
                Value::U(v) => {
                    let _ = writeln!(self.text, " {v}");
                }
                Value::F(v) => {
                    let _ = writeln!(self.text, " {v}");
                }
            }
        }
    }
}

impl Exposition {
    /// A histogram family: cumulative `_bucket{le}` series, `_sum` and
    /// `_count` per label set.
    fn histogram<L>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, flotilla::LatencyHistogram)>,
    ) where
        L: AsRef<[(&'static str, String)]>,
    {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} histogram");
        for (labels, h) in series {
            let labels = labels.as_ref();
            let mut base = String::new();
            for (k, v) in labels {
                let _ = write!(base, "{k}=\"{}\",", escape_label(v));
            }
            let mut cumulative = 0;
            for (i, count) in h.buckets.iter().enumerate() {
                cumulative += count;
                let le = match flotilla::FLUSH_LATENCY_BOUNDS_US.get(i) {
                    Some(us) => format!("{}", *us as f64 / 1e6),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(self.text, "{name}_bucket{{{base}le=\"{le}\"}} {cumulative}");
            }
            let plain = base.trim_end_matches(',');
            let _ = writeln!(self.text, "{name}_sum{{{plain}}} {}", h.sum_us as f64 / 1e6);
            let _ = writeln!(self.text, "{name}_count{{{plain}}} {}", h.count);
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}
