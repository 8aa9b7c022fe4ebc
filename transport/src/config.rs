//! Tunables of one shard's transport.

use std::net::SocketAddr;
use std::time::Duration;

use glommio::TaskQueueHandle;

use crate::ids::{ClusterId, PeerId};

/// Configuration of one shard's [`crate::Transport`].
///
/// Every queue and batch is bounded by one of these fields.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This cluster; peers of another cluster are refused.
    pub cluster: ClusterId,
    /// This shard: `(node, shard)`.
    pub local: PeerId,
    /// Where this shard listens. `None`: the registry's address of `local`
    /// (base port + shard). Tests pass `127.0.0.1:0` and publish the bound
    /// address with [`crate::Registry::set_shard_addr`].
    pub listen_addr: Option<SocketAddr>,
    /// Task queue for the accept loop, connection readers and per-peer
    /// senders. `None`: the queue of the task that creates the transport.
    pub task_queue: Option<TaskQueueHandle>,
    /// Largest frame payload sent or accepted, in bytes. Larger inbound
    /// frames close the connection; larger outbound messages are refused.
    pub frame_bytes_max: u32,
    /// Most messages packed in one outbound frame (1 = one frame per message).
    pub frame_messages_max: u32,
    /// The sender stops packing a frame once its payload reaches this many
    /// bytes (a single larger message still goes alone, up to
    /// `frame_bytes_max`). Past a few hundred KiB bigger frames buy nothing
    /// and cost cache misses and large allocations on the receiver.
    pub batch_bytes_max: u32,
    /// Per-peer send queue bound, in messages. When full, `send` drops.
    pub send_queue_messages_max: u32,
    /// Per-peer send queue bound, in payload bytes. When full, `send` drops.
    pub send_queue_bytes_max: u64,
    /// Most peers this shard sends to (one queue and one task each).
    pub peers_max: u32,
    /// Received batches waiting for the consumer; readers stop reading their
    /// sockets (TCP backpressure) while the inbound queue is full.
    pub inbound_batches_max: u32,
    /// Received payload bytes waiting for the consumer (same backpressure).
    pub inbound_bytes_max: u64,
    /// Most concurrently open inbound connections (messages + snapshots).
    pub inbound_connections_max: u32,
    /// Staging region per inbound message connection: the most one read
    /// takes off the socket. Frames are copied out of it (or, from 64 KiB,
    /// read into a buffer of their own), so it is allocated once and reused
    /// for the connection's life.
    pub read_buffer_bytes: u32,
    /// A peer that connects and does not complete the handshake within this
    /// is disconnected. Also bounds the dialer's wait for the HelloAck.
    pub handshake_timeout: Duration,
    /// Dial (TCP connect) timeout.
    pub dial_timeout: Duration,
    /// A frame write that makes no progress for this long breaks the
    /// connection (dead peer); it is then re-dialled.
    pub write_timeout: Duration,
    /// First re-dial delay after a failure; doubles up to `reconnect_backoff_max`,
    /// each delay jittered to a random value in `[d/2, d]`.
    pub reconnect_backoff_min: Duration,
    /// Largest re-dial delay.
    pub reconnect_backoff_max: Duration,
    /// Accept connections from nodes not (yet) in the registry.
    pub accept_unknown_nodes: bool,
    /// Snapshot chunk size in bytes (must leave room for the chunk header
    /// within `frame_bytes_max`).
    pub snapshot_chunk_bytes: u32,
    /// Snapshot chunks in flight without an acknowledgement.
    pub snapshot_window_chunks: u32,
    /// A snapshot stream with no progress for this long is broken.
    pub snapshot_idle_timeout: Duration,
}

impl TransportConfig {
    /// Defaults suitable for production, for shard `local` of `cluster`.
    pub fn new(cluster: ClusterId, local: PeerId) -> Self {
        Self {
            cluster,
            local,
            listen_addr: None,
            task_queue: None,
            frame_bytes_max: 8 << 20,
            frame_messages_max: 65_536,
            batch_bytes_max: 256 << 10,
            send_queue_messages_max: 65_536,
            send_queue_bytes_max: 64 << 20,
            peers_max: 4096,
            inbound_batches_max: 1024,
            inbound_bytes_max: 64 << 20,
            inbound_connections_max: 4096,
            read_buffer_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(10),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(2),
            accept_unknown_nodes: false,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_window_chunks: 8,
            snapshot_idle_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the bounds are coherent.
    ///
    /// # Errors
    /// A description of the first violated constraint.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.frame_bytes_max < 64 {
            return Err("frame_bytes_max must be at least 64");
        }
        if self.batch_bytes_max == 0 {
            return Err("batch_bytes_max must be positive");
        }
        if self.frame_messages_max == 0 {
            return Err("frame_messages_max must be at least 1");
        }
        if self.send_queue_messages_max == 0 || self.send_queue_bytes_max == 0 {
            return Err("send queue bounds must be positive");
        }
        if self.inbound_batches_max == 0 || self.inbound_bytes_max == 0 {
            return Err("inbound queue bounds must be positive");
        }
        if self.snapshot_chunk_bytes == 0
            || u64::from(self.snapshot_chunk_bytes) + 8 > u64::from(self.frame_bytes_max)
        {
            return Err("snapshot_chunk_bytes must be in 1..=frame_bytes_max - 8");
        }
        if self.snapshot_window_chunks == 0 {
            return Err("snapshot_window_chunks must be at least 1");
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return Err("need 0 < reconnect_backoff_min <= reconnect_backoff_max");
        }
        if self.handshake_timeout.is_zero()
            || self.dial_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return Err("timeouts must be positive");
        }
        Ok(())
    }
}
