//! Typed errors at the crate's edge.

use std::io;
use std::net::SocketAddr;

use crate::ids::PeerId;
use crate::wire::{FrameError, HandshakeError, HelloStatus};

/// Creating a transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The configuration is incoherent.
    #[error("invalid transport config: {0}")]
    Config(&'static str),
    /// No `listen_addr` given and the registry has no address for this shard.
    #[error("no listen address for {0}: set listen_addr or register the node")]
    NoListenAddress(PeerId),
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// `send` refused a message. The caller is never blocked; Raft treats a
/// refused message as lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is at its message or byte bound.
    #[error("send queue to {peer} full: message dropped")]
    QueueFull {
        /// The destination.
        peer: PeerId,
    },
    /// The message cannot fit in one frame.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    MessageTooLarge {
        /// Message length.
        len: usize,
        /// Largest message that fits a frame.
        max: usize,
    },
    /// `peers_max` peers already have queues.
    #[error("too many peers: cannot add a queue for {peer}")]
    TooManyPeers {
        /// The destination.
        peer: PeerId,
    },
    /// The transport is shutting down.
    #[error("transport shutting down")]
    ShuttingDown,
}

/// Dialling a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The registry has no address for the peer.
    #[error("no address known for {0}")]
    NoAddress(PeerId),
    /// TCP connect failed or timed out.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The handshake failed in transit (timeout, reset, close).
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The address dialled.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The peer answered with bytes that are not a HelloAck.
    #[error("bad handshake reply from {addr}: {source}")]
    BadAck {
        /// The address dialled.
        addr: SocketAddr,
        /// What was wrong.
        source: HandshakeError,
    },
    /// The peer refused the connection.
    #[error("{addr} refused the connection: {status:?}")]
    Rejected {
        /// The address dialled.
        addr: SocketAddr,
        /// Its reason.
        status: HelloStatus,
    },
}

/// A snapshot stream failed. Reported to the sender by
/// [`crate::Transport::send_snapshot`] and to the receiver's
/// [`crate::SnapshotHandler::finished`]; the stream can be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Could not reach the peer.
    #[error("dial: {0}")]
    Dial(#[from] DialError),
    /// The connection broke.
    #[error("connection: {0}")]
    Io(io::Error),
    /// The peer sent an undecodable frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of the stream.
    #[error("connection closed by peer mid-stream")]
    Closed,
    /// No progress within `snapshot_idle_timeout`.
    #[error("snapshot stream stalled (no progress within the idle timeout)")]
    Timeout,
    /// The peer broke the snapshot protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The receiver refused the snapshot (no handler, or its handler said no).
    #[error("rejected by the receiver: {0}")]
    Rejected(String),
    /// The receiver failed after accepting (sink error, CRC mismatch...).
    #[error("receiver failed: {0}")]
    Remote(String),
    /// Reading the local source failed.
    #[error("reading the snapshot source: {0}")]
    Source(io::Error),
    /// Writing or closing the local sink failed.
    #[error("writing the snapshot sink: {0}")]
    Sink(io::Error),
    /// The data received does not match the sender's end-to-end CRC or length.
    #[error("end-to-end check failed: got {bytes} bytes crc {crc:#010x}, sender says {expected_bytes} bytes crc {expected_crc:#010x}")]
    Mismatch {
        /// Bytes received.
        bytes: u64,
        /// CRC of the bytes received.
        crc: u32,
        /// Bytes the sender sent.
        expected_bytes: u64,
        /// CRC the sender computed.
        expected_crc: u32,
    },
    /// The transport is shutting down.
    #[error("transport shutting down")]
    ShuttingDown,
}
