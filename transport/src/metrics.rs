//! Counters the engine exports. Plain data: copy them out with
//! [`crate::Transport::metrics`].

use crate::ids::PeerId;

/// Counters of one peer `(node, shard)`, both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The peer.
    pub peer: Option<PeerId>,
    /// Frames written to the peer.
    pub frames_sent: u64,
    /// Messages written to the peer.
    pub messages_sent: u64,
    /// Bytes written to the peer (frames, headers included).
    pub bytes_sent: u64,
    /// Frames received from the peer.
    pub frames_received: u64,
    /// Messages received from the peer.
    pub messages_received: u64,
    /// Bytes received from the peer (frames, headers included).
    pub bytes_received: u64,
    /// Messages refused by `send` because the queue was full (or the message
    /// larger than a frame).
    pub messages_dropped: u64,
    /// Messages accepted by `send` but lost: queued for a peer with no known
    /// address, or in a frame whose write failed.
    pub messages_lost: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
    /// Failed dials and handshakes.
    pub dial_failures: u64,
    /// Messages currently queued for the peer.
    pub queue_depth: u64,
    /// Payload bytes currently queued for the peer.
    pub queue_bytes: u64,
    /// Whether an outbound connection is established now.
    pub connected: bool,
}

/// Inbound connections closed because of bad input or a refused handshake,
/// by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectMetrics {
    /// Handshake bytes that do not parse (bad magic, CRC, fields).
    pub handshake_garbage: u64,
    /// Connected but sent no complete handshake in time.
    pub handshake_timeout: u64,
    /// Hello from another cluster.
    pub cluster_mismatch: u64,
    /// Hello from a node not in the registry.
    pub unknown_node: u64,
    /// Hello addressed to another node or shard.
    pub wrong_target: u64,
    /// Hello with no common version.
    pub unsupported_version: u64,
    /// Frame with a wrong magic.
    pub bad_magic: u64,
    /// Frame with an unknown version.
    pub bad_version: u64,
    /// Frame with a bad or misplaced kind, or reserved flags set.
    pub bad_kind: u64,
    /// Frame over `frame_bytes_max`.
    pub too_large: u64,
    /// Frame whose payload fails its CRC.
    pub bad_crc: u64,
    /// Frame whose payload does not decode (a truncated message, trailing bytes).
    pub malformed: u64,
    /// Connection closed in the middle of a frame.
    pub truncated: u64,
    /// Refused because `inbound_connections_max` were open.
    pub too_many_connections: u64,
}

impl RejectMetrics {
    /// Sum of all reasons.
    pub fn total(&self) -> u64 {
        self.handshake_garbage
            + self.handshake_timeout
            + self.cluster_mismatch
            + self.unknown_node
            + self.wrong_target
            + self.unsupported_version
            + self.bad_magic
            + self.bad_version
            + self.bad_kind
            + self.too_large
            + self.bad_crc
            + self.malformed
            + self.truncated
            + self.too_many_connections
    }
}

/// Snapshot stream counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMetrics {
    /// Streams sent and acknowledged as durable by the receiver.
    pub sent: u64,
    /// Streams this side sent that failed.
    pub send_failed: u64,
    /// Streams received completely into a closed sink.
    pub received: u64,
    /// Streams received that broke or were rejected.
    pub receive_failed: u64,
    /// Snapshot payload bytes sent.
    pub bytes_sent: u64,
    /// Snapshot payload bytes received into sinks.
    pub bytes_received: u64,
}

/// Everything one shard's transport counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportMetrics {
    /// Per peer, sorted by peer.
    pub peers: Vec<PeerMetrics>,
    /// Inbound connections accepted (handshake passed).
    pub connections_accepted: u64,
    /// Inbound connections currently open.
    pub connections_open: u64,
    /// Inbound message connections that ended while the transport ran
    /// (see [`crate::Transport::take_lost_peers`]).
    pub connections_lost: u64,
    /// Inbound connections closed for a reason, by reason.
    pub rejected: RejectMetrics,
    /// Batches waiting for the consumer.
    pub inbound_queue_depth: u64,
    /// Snapshot streams.
    pub snapshots: SnapshotMetrics,
}

impl TransportMetrics {
    /// The counters of `peer` (zeroes if never seen).
    pub fn peer(&self, peer: PeerId) -> PeerMetrics {
        self.peers
            .iter()
            .find(|p| p.peer == Some(peer))
            .cloned()
            .unwrap_or(PeerMetrics {
                peer: Some(peer),
                ..PeerMetrics::default()
            })
    }
}
