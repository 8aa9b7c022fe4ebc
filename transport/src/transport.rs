//! One shard's transport: listener, per-connection readers, per-peer senders.
//!
//! ```text
//!              send(peer, msg) (sync, never blocks)
//!                     |
//!        +------------v-------------+      one per destination (node, shard)
//!        | Peer: bounded queue, in  |----> sender task: dial + handshake,
//!        |  frame layout (drop +    |      queue prefix -> one frame -> write_all,
//!        |  count when full)        |
//!        +--------------------------+      re-dial with jittered backoff
//!
//!   TcpListener (one port per shard) --accept--> reader task per connection:
//!        handshake (timeout) -> frames -> InboundBatch { from, messages }
//!                                              |  (Bytes slices of the frame's payload)
//!        try_recv() / recv().await  <--- bounded inbound queue (readers pause
//!                                        reading their socket while it is full)
//! ```
//!
//! Why one listening port per shard (base port + shard index) rather than one
//! port per node with a hand-off: the kernel then delivers each connection
//! straight to the executor that owns it, so no accepted socket and no byte
//! crosses a core; a shard's listener lives and dies with its shard; and no
//! shard is a single accept bottleneck. The cost is `shard_count` ports per
//! node, which the registry expresses as one base address.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Gate;
use glommio::TaskQueueHandle;
use tracing::{debug, info, warn};

use crate::config::TransportConfig;
use crate::conn::{dial, Backoff, FrameReader, ReadError};
use crate::error::{SendError, TransportError};
use crate::ids::PeerId;
use crate::metrics::{PeerMetrics, RejectMetrics, SnapshotMetrics, TransportMetrics};
use crate::notify::Notify;
use crate::snapshot::{self, SnapshotHandler};
use crate::wire::{
    decode_batch, negotiate_version, put_frame_header, ConnectionKind, FrameError, FrameKind,
    Hello, HelloAck, HelloStatus, BATCH_PREFIX_BYTES, FRAME_HEADER_BYTES, HELLO_BYTES,
    MESSAGE_PREFIX_BYTES, WIRE_VERSION,
};

/// A map keyed by peer id. `send` looks its peer up once per message, where
/// the default SipHash cost as much as queueing the message (measured:
/// about 5 % of the fan-out benchmark's CPU); ids are small integers that
/// this shard chose or that an authenticated handshake named, so a fast
/// multiplicative hash is enough.
type PeerMap<V> = HashMap<PeerId, V, BuildHasherDefault<IdHasher>>;

/// FxHash-style hasher (rotate, xor, multiply per word) for integer ids.
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Messages received from one peer in one frame, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundBatch {
    /// The sending shard, as authenticated by the handshake.
    pub from: PeerId,
    /// The messages: zero-copy slices of the frame's payload, which lives in
    /// a 64 KiB arena shared with neighbouring small frames or, for larger
    /// frames, in a buffer of its own (so keeping a message alive pins at
    /// most 64 KiB or its own frame, never the connection's read buffer).
    pub messages: Vec<Bytes>,
}

/// One shard's transport. Create it inside the shard's executor; it is
/// `!Send` and its tasks run on that executor only.
///
/// See the crate documentation for an example.
pub struct Transport {
    inner: Rc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: TransportConfig,
    pub(crate) registry: crate::Registry,
    local_addr: SocketAddr,
    task_queue: TaskQueueHandle,
    gate: Gate,
    shutting_down: Cell<bool>,
    pub(crate) shutdown: Notify,
    peers: RefCell<PeerMap<Rc<Peer>>>,
    inbound: InboundQueue,
    inbound_stats: RefCell<PeerMap<InboundStats>>,
    pub(crate) rejected: RefCell<RejectMetrics>,
    connections_accepted: Cell<u64>,
    connections_open: Cell<u64>,
    /// Inbound message connections that ended while the transport ran.
    connections_lost: Cell<u64>,
    /// Peers whose inbound message connection ended since the last
    /// [`Transport::take_lost_peers`], each once.
    lost: RefCell<Vec<PeerId>>,
    pub(crate) snapshot_handler: RefCell<Option<Rc<dyn SnapshotHandler>>>,
    pub(crate) snapshot_metrics: RefCell<SnapshotMetrics>,
    seed: Cell<u64>,
}

#[derive(Default, Clone, Copy)]
struct InboundStats {
    frames: u64,
    messages: u64,
    bytes: u64,
}

/// Messages waiting for a peer's next frame, already in frame layout: each
/// one a `u32` length and its bytes. `send_slice` copies a message straight
/// in (no allocation per message); a frame takes a prefix in one copy.
#[derive(Default)]
struct SendQueue {
    bytes: BytesMut,
    /// Messages in `bytes`.
    len: usize,
}

impl SendQueue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, msg: &[u8]) {
        self.bytes.reserve(MESSAGE_PREFIX_BYTES + msg.len());
        self.bytes.put_u32_le(msg.len() as u32);
        self.bytes.extend_from_slice(msg);
        self.len += 1;
    }

    fn clear(&mut self) {
        *self = SendQueue::default();
    }
}

/// A peer's queue keeps at most this much memory once it is empty again
/// (a burst's larger buffer is let go).
const SEND_QUEUE_KEEP_BYTES: usize = 1 << 20;

/// The outbound side of one peer.
struct Peer {
    id: PeerId,
    /// Invariant: `queue_bytes` = sum of the queued messages' lengths.
    queue: RefCell<SendQueue>,
    queue_bytes: Cell<u64>,
    wake: Notify,
    stats: RefCell<PeerMetrics>,
    /// Set by `remove_peer`: the sender task closes its connection and ends.
    removed: Cell<bool>,
}

struct InboundQueue {
    batches: RefCell<VecDeque<(InboundBatch, u64)>>,
    bytes: Cell<u64>,
    arrived: Notify,
    space: Notify,
}

/// Binds a listener on `addr` that no other socket shares.
///
/// glommio's `TcpListener::bind` sets SO_REUSEPORT, so a second process
/// binding the same address succeeds and the kernel spreads the incoming
/// connections over both: peers of one cluster then talk to the nodes of
/// another (same cluster id and node ids, different logs), which a raft
/// group cannot survive. SO_REUSEADDR alone still lets a restarted node
/// bind over connections of its previous run left in TIME_WAIT.
fn bind_exclusive(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose
    // ownership moves to the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

impl Transport {
    /// Binds this shard's listener and starts its accept loop.
    ///
    /// The listen address is `config.listen_addr`, or else the registry's
    /// address of `config.local`. Must be called inside a glommio executor.
    ///
    /// # Errors
    /// [`TransportError`] for an invalid config, no address, or a failed bind.
    pub fn new(config: TransportConfig, registry: crate::Registry) -> Result<Self, TransportError> {
        config.validate().map_err(TransportError::Config)?;
        let addr = match config.listen_addr {
            Some(a) => a,
            None => registry
                .resolve(config.local)
                .ok_or(TransportError::NoListenAddress(config.local))?,
        };
        let listener =
            bind_exclusive(addr).map_err(|source| TransportError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|e| TransportError::Bind {
            addr,
            source: e.into(),
        })?;
        let task_queue = config
            .task_queue
            .unwrap_or_else(|| glommio::executor().current_task_queue());
        let seed = config.local.node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(config.local.shard.0).rotate_left(32)
            ^ u64::from(local_addr.port())
            ^ u64::from(std::process::id());
        let inner = Rc::new(Inner {
            config,
            registry,
            local_addr,
            task_queue,
            gate: Gate::new(),
            shutting_down: Cell::new(false),
            shutdown: Notify::default(),
            peers: RefCell::new(PeerMap::default()),
            inbound: InboundQueue {
                batches: RefCell::new(VecDeque::new()),
                bytes: Cell::new(0),
                arrived: Notify::default(),
                space: Notify::default(),
            },
            inbound_stats: RefCell::new(PeerMap::default()),
            rejected: RefCell::new(RejectMetrics::default()),
            connections_accepted: Cell::new(0),
            connections_open: Cell::new(0),
            connections_lost: Cell::new(0),
            lost: RefCell::new(Vec::new()),
            snapshot_handler: RefCell::new(None),
            snapshot_metrics: RefCell::new(SnapshotMetrics::default()),
            seed: Cell::new(seed),
        });
        info!(local = %inner.config.local, addr = %local_addr, "transport listening");
        let accept_inner = inner.clone();
        inner
            .spawn(accept_loop(accept_inner, listener))
            .expect("a fresh gate is open");
        Ok(Self { inner })
    }

    /// The address the listener is bound to (publish it in the registry when
    /// it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This shard's identity.
    pub fn local(&self) -> PeerId {
        self.inner.config.local
    }

    /// The registry this transport dials from (a shared `Rc` handle).
    pub fn registry(&self) -> &crate::Registry {
        &self.inner.registry
    }

    /// Queues `msg` for `to`. Never blocks, never awaits: the peer's sender
    /// task packs everything queued into its next frame.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] (the message is dropped and counted),
    /// [`SendError::MessageTooLarge`], [`SendError::TooManyPeers`],
    /// [`SendError::ShuttingDown`].
    pub fn send(&self, to: PeerId, msg: Bytes) -> Result<(), SendError> {
        self.send_slice(to, &msg)
    }

    /// [`Transport::send`] for a message in a borrowed buffer (say, an
    /// encoder's): it is copied into the peer's queue, which is laid out as
    /// the next frame, so queueing it allocates nothing.
    ///
    /// # Errors
    /// As [`Transport::send`].
    pub fn send_slice(&self, to: PeerId, msg: &[u8]) -> Result<(), SendError> {
        // Fast path: a known peer, looked up without cloning its `Rc`.
        if !self.inner.shutting_down.get() {
            if let Some(peer) = self.inner.peers.borrow().get(&to) {
                return peer.enqueue(msg, &self.inner.config);
            }
        }
        self.inner.peer(to)?.enqueue(msg, &self.inner.config)
    }

    /// Queues several messages for one peer; returns how many were accepted
    /// (the rest were dropped and counted, e.g. because the queue filled).
    pub fn send_batch(&self, to: PeerId, msgs: impl IntoIterator<Item = Bytes>) -> usize {
        let peer = match self.inner.peer(to) {
            Ok(p) => p,
            Err(_) => return 0,
        };
        let was_empty = peer.queue.borrow().is_empty();
        let mut accepted = 0;
        for m in msgs {
            if peer.push(&m, &self.inner.config).is_ok() {
                accepted += 1;
            }
        }
        if was_empty && accepted > 0 {
            peer.wake.notify();
        }
        accepted
    }

    /// Forgets `to` (e.g. removed from the membership): drops its queue,
    /// closes its connection and ends its sender task. Its counters go with
    /// it. A later `send` to it starts afresh. Returns whether it was known.
    pub fn remove_peer(&self, to: PeerId) -> bool {
        let Some(peer) = self.inner.peers.borrow_mut().remove(&to) else {
            return false;
        };
        peer.removed.set(true);
        peer.clear();
        peer.wake.notify();
        true
    }

    /// Messages currently queued for `to`.
    pub fn queue_depth(&self, to: PeerId) -> usize {
        self.inner
            .peers
            .borrow()
            .get(&to)
            .map_or(0, |p| p.queue.borrow().len())
    }

    /// The next received batch, if one is waiting. Never awaits.
    pub fn try_recv(&self) -> Option<InboundBatch> {
        self.inner.inbound.pop()
    }

    /// Waits for the next received batch; `None` once the transport is shut
    /// down and the queue is empty.
    pub async fn recv(&self) -> Option<InboundBatch> {
        loop {
            if let Some(b) = self.inner.inbound.pop() {
                return Some(b);
            }
            if self.inner.shutting_down.get() {
                return None;
            }
            or(
                self.inner.inbound.arrived.notified(),
                self.inner.shutdown.notified(),
            )
            .await;
        }
    }

    /// Waits until a batch is waiting (without taking it), or shutdown.
    pub async fn readable(&self) {
        while self.inner.inbound.batches.borrow().is_empty() && !self.inner.shutting_down.get() {
            or(
                self.inner.inbound.arrived.notified(),
                self.inner.shutdown.notified(),
            )
            .await;
        }
    }

    /// Peers whose inbound message connection ended (closed by the peer,
    /// broken, or cut for a bad frame) since the last call, each once. Never
    /// awaits.
    ///
    /// A hint, not a verdict: the peer may be down (a killed process's
    /// connections are closed by its kernel) or may just be reconnecting.
    /// Raft uses it to wake idle groups that would otherwise never notice a
    /// silent leader.
    pub fn take_lost_peers(&self) -> Vec<PeerId> {
        std::mem::take(&mut *self.inner.lost.borrow_mut())
    }

    /// Registers the receiver of inbound snapshot streams (replacing any
    /// previous one). Without a handler, snapshot streams are refused.
    pub fn set_snapshot_handler(&self, handler: Rc<dyn SnapshotHandler>) {
        *self.inner.snapshot_handler.borrow_mut() = Some(handler);
    }

    /// Streams a snapshot to `to` over a dedicated connection: the opaque
    /// `header` first (at most `frame_bytes_max` bytes), then `source` in
    /// chunks of `snapshot_chunk_bytes` with at most `snapshot_window_chunks`
    /// unacknowledged, then an end-to-end CRC32. Returns once the receiver
    /// reports its sink closed (durable) and its handler told.
    ///
    /// # Errors
    /// [`crate::SnapshotError`]: any failure of the connection, the source or
    /// the receiver. The receiver is told too; the call can simply be retried.
    pub async fn send_snapshot<R: AsyncRead + Unpin>(
        &self,
        to: PeerId,
        header: Bytes,
        source: R,
    ) -> Result<crate::SnapshotSent, crate::SnapshotError> {
        let inner = self.inner.clone();
        if inner.shutting_down.get() {
            return Err(crate::SnapshotError::ShuttingDown);
        }
        let r = match inner
            .until_shutdown(snapshot::send(&inner, to, header, source))
            .await
        {
            Some(r) => r,
            None => Err(crate::SnapshotError::ShuttingDown),
        };
        let mut m = inner.snapshot_metrics.borrow_mut();
        match &r {
            Ok(sent) => {
                m.sent += 1;
                m.bytes_sent += sent.bytes;
            }
            Err(e) => {
                m.send_failed += 1;
                warn!(local = %inner.config.local, peer = %to, error = %e, "snapshot send failed");
            }
        }
        r
    }

    /// A copy of every counter.
    pub fn metrics(&self) -> TransportMetrics {
        let inner = &self.inner;
        let mut peers: HashMap<PeerId, PeerMetrics> = HashMap::new();
        for (id, p) in inner.peers.borrow().iter() {
            let mut m = p.stats.borrow().clone();
            m.peer = Some(*id);
            m.queue_depth = p.queue.borrow().len() as u64;
            m.queue_bytes = p.queue_bytes.get();
            peers.insert(*id, m);
        }
        for (id, s) in inner.inbound_stats.borrow().iter() {
            let m = peers.entry(*id).or_insert_with(|| PeerMetrics {
                peer: Some(*id),
                ..PeerMetrics::default()
            });
            m.frames_received = s.frames;
            m.messages_received = s.messages;
            m.bytes_received = s.bytes;
        }
        let mut peers: Vec<PeerMetrics> = peers.into_values().collect();
        peers.sort_by_key(|p| p.peer);
        TransportMetrics {
            peers,
            connections_accepted: inner.connections_accepted.get(),
            connections_open: inner.connections_open.get(),
            connections_lost: inner.connections_lost.get(),
            rejected: inner.rejected.borrow().clone(),
            inbound_queue_depth: inner.inbound.batches.borrow().len() as u64,
            snapshots: inner.snapshot_metrics.borrow().clone(),
        }
    }

    /// Stops accepting, closes every connection, ends every task and waits
    /// for them. Queued messages are dropped. Received batches not yet taken
    /// stay available to `try_recv`.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        // Err only if already closed by an earlier shutdown.
        let _ = self.inner.gate.close().await;
        info!(local = %self.inner.config.local, "transport stopped");
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // Tasks notice and exit on their own; nobody waits for them here.
        self.inner.begin_shutdown();
    }
}

impl Inner {
    fn begin_shutdown(&self) {
        if !self.shutting_down.replace(true) {
            self.shutdown.notify();
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    fn spawn(&self, fut: impl Future<Output = ()> + 'static) -> Result<(), ()> {
        match self.gate.spawn_into(fut, self.task_queue) {
            Ok(task) => {
                task.detach();
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// Runs `fut` unless shutdown begins first (`None`).
    pub(crate) async fn until_shutdown<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        if self.shutting_down.get() {
            return None;
        }
        or(async { Some(fut.await) }, async {
            self.shutdown.notified().await;
            None
        })
        .await
    }

    pub(crate) fn next_seed(&self) -> u64 {
        let s = self.seed.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.seed.set(s);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        s ^ now
    }

    fn peer(self: &Rc<Self>, to: PeerId) -> Result<Rc<Peer>, SendError> {
        if self.shutting_down.get() {
            return Err(SendError::ShuttingDown);
        }
        if let Some(p) = self.peers.borrow().get(&to) {
            return Ok(p.clone());
        }
        if self.peers.borrow().len() >= self.config.peers_max as usize {
            return Err(SendError::TooManyPeers { peer: to });
        }
        let peer = Rc::new(Peer {
            id: to,
            queue: RefCell::new(SendQueue::default()),
            queue_bytes: Cell::new(0),
            wake: Notify::default(),
            stats: RefCell::new(PeerMetrics {
                peer: Some(to),
                ..PeerMetrics::default()
            }),
            removed: Cell::new(false),
        });
        if self.spawn(run_sender(self.clone(), peer.clone())).is_err() {
            return Err(SendError::ShuttingDown);
        }
        self.peers.borrow_mut().insert(to, peer.clone());
        Ok(peer)
    }

    fn count_frame_error(&self, e: &FrameError) {
        let mut r = self.rejected.borrow_mut();
        match e {
            FrameError::BadMagic { .. } => r.bad_magic += 1,
            FrameError::BadVersion { .. } => r.bad_version += 1,
            FrameError::BadKind { .. } | FrameError::BadFlags { .. } => r.bad_kind += 1,
            FrameError::TooLarge { .. } => r.too_large += 1,
            FrameError::BadCrc { .. } => r.bad_crc += 1,
            FrameError::Malformed { .. } => r.malformed += 1,
        }
    }

    pub(crate) fn count_read_error(&self, e: &ReadError) {
        match e {
            ReadError::Frame(f) => self.count_frame_error(f),
            ReadError::Truncated { .. } => self.rejected.borrow_mut().truncated += 1,
            ReadError::Io(_) => {}
        }
    }
}

impl Peer {
    /// Queues one message and wakes the sender task if it may be idle.
    fn enqueue(&self, msg: &[u8], config: &TransportConfig) -> Result<(), SendError> {
        let was_empty = self.queue.borrow().is_empty();
        let r = self.push(msg, config);
        if was_empty && r.is_ok() {
            self.wake.notify();
        }
        r
    }

    fn push(&self, msg: &[u8], config: &TransportConfig) -> Result<(), SendError> {
        let max = config.frame_bytes_max as usize - BATCH_PREFIX_BYTES - MESSAGE_PREFIX_BYTES;
        if msg.len() > max {
            self.stats.borrow_mut().messages_dropped += 1;
            return Err(SendError::MessageTooLarge {
                len: msg.len(),
                max,
            });
        }
        let mut q = self.queue.borrow_mut();
        let bytes = self.queue_bytes.get() + msg.len() as u64;
        if q.len() >= config.send_queue_messages_max as usize
            || (bytes > config.send_queue_bytes_max && !q.is_empty())
        {
            self.stats.borrow_mut().messages_dropped += 1;
            return Err(SendError::QueueFull { peer: self.id });
        }
        self.queue_bytes.set(bytes);
        q.push(msg);
        Ok(())
    }

    /// Moves queued messages into one frame in `buf` (cleared first): at most
    /// `frame_messages_max` messages and `batch_bytes_max` payload bytes (a
    /// single message bigger than that goes alone; `send` bounded it by
    /// `frame_bytes_max`).
    /// Returns the number of messages packed.
    fn drain_into_frame(&self, buf: &mut BytesMut, config: &TransportConfig) -> u64 {
        buf.clear();
        buf.resize(FRAME_HEADER_BYTES + BATCH_PREFIX_BYTES, 0);
        let mut q = self.queue.borrow_mut();
        let mut count: u32 = 0;
        let mut payload_bytes = BATCH_PREFIX_BYTES;
        // The prefix of the queue that fits (queue layout = frame layout).
        let mut cut = 0;
        while (count as usize) < q.len() {
            let at = &q.bytes[cut..];
            debug_assert!(at.len() >= MESSAGE_PREFIX_BYTES);
            let len = u32::from_le_bytes([at[0], at[1], at[2], at[3]]) as usize;
            let need = MESSAGE_PREFIX_BYTES + len;
            if count > 0
                && (payload_bytes + need > config.frame_bytes_max as usize
                    || payload_bytes + need > config.batch_bytes_max as usize
                    || count >= config.frame_messages_max)
            {
                break;
            }
            payload_bytes += need;
            cut += need;
            count += 1;
        }
        debug_assert!(payload_bytes <= config.frame_bytes_max as usize);
        buf.extend_from_slice(&q.bytes[..cut]);
        bytes::Buf::advance(&mut q.bytes, cut);
        q.len -= count as usize;
        let drained_bytes = (cut - count as usize * MESSAGE_PREFIX_BYTES) as u64;
        self.queue_bytes.set(self.queue_bytes.get() - drained_bytes);
        if q.is_empty() {
            debug_assert!(q.bytes.is_empty() && self.queue_bytes.get() == 0);
            if q.bytes.capacity() > SEND_QUEUE_KEEP_BYTES {
                q.clear();
            } else {
                q.bytes.clear();
            }
        }
        buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 4].copy_from_slice(&count.to_le_bytes());
        let (header, payload) = buf.split_at_mut(FRAME_HEADER_BYTES);
        seal_header(header, FrameKind::Batch, payload);
        u64::from(count)
    }

    /// Drops everything queued (no address); returns how many.
    fn clear(&self) -> u64 {
        let mut q = self.queue.borrow_mut();
        let n = q.len() as u64;
        q.clear();
        self.queue_bytes.set(0);
        n
    }
}

fn seal_header(header: &mut [u8], kind: FrameKind, payload: &[u8]) {
    let mut tmp = [0u8; FRAME_HEADER_BYTES];
    put_frame_header(&mut tmp, 0, kind, payload);
    header.copy_from_slice(&tmp);
}

impl InboundQueue {
    fn pop(&self) -> Option<InboundBatch> {
        let (b, bytes) = self.batches.borrow_mut().pop_front()?;
        self.bytes.set(self.bytes.get() - bytes);
        self.space.notify();
        Some(b)
    }

    fn has_room(&self, bytes: u64, config: &TransportConfig) -> bool {
        let q = self.batches.borrow();
        q.is_empty()
            || (q.len() < config.inbound_batches_max as usize
                && self.bytes.get() + bytes <= config.inbound_bytes_max)
    }
}

/// Why a sender's connection ended.
enum PumpEnd {
    Shutdown,
    AddressChanged,
    PeerClosed,
    Io(io::Error),
    Unexpected,
}

async fn run_sender(inner: Rc<Inner>, peer: Rc<Peer>) {
    let config = &inner.config;
    let mut backoff = Backoff::new(
        config.reconnect_backoff_min,
        config.reconnect_backoff_max,
        inner.next_seed(),
    );
    let mut connected_before = false;
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        if inner.is_shutting_down() || peer.removed.get() {
            break;
        }
        if peer.queue.borrow().is_empty() {
            or(peer.wake.notified(), inner.shutdown.notified()).await;
            continue;
        }
        let Some(addr) = inner.registry.resolve(peer.id) else {
            let lost = peer.clear();
            peer.stats.borrow_mut().messages_lost += lost;
            debug!(local = %config.local, peer = %peer.id, lost, "no address for peer: queue dropped");
            continue;
        };
        let generation = inner.registry.generation(peer.id.node);
        let dialled = inner
            .until_shutdown(dial(config, peer.id, addr, ConnectionKind::Messages))
            .await;
        let stream = match dialled {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                peer.stats.borrow_mut().dial_failures += 1;
                let delay = backoff.next_delay();
                debug!(local = %config.local, peer = %peer.id, error = %e, ?delay, "dial failed");
                if inner
                    .until_shutdown(glommio::timer::sleep(delay))
                    .await
                    .is_none()
                {
                    break;
                }
                continue;
            }
        };
        {
            let mut s = peer.stats.borrow_mut();
            if connected_before {
                s.reconnects += 1;
            }
            s.connected = true;
        }
        connected_before = true;
        debug!(local = %config.local, peer = %peer.id, %addr, "connected");
        let started = Instant::now();
        let end = pump(&inner, &peer, stream, generation, &mut buf).await;
        peer.stats.borrow_mut().connected = false;
        match end {
            PumpEnd::Shutdown => break,
            PumpEnd::AddressChanged => {
                debug!(local = %config.local, peer = %peer.id, "address changed: re-dialling");
                backoff.reset();
                continue;
            }
            PumpEnd::PeerClosed => {
                debug!(local = %config.local, peer = %peer.id, "peer closed the connection")
            }
            PumpEnd::Io(e) => {
                warn!(local = %config.local, peer = %peer.id, error = %e, "connection to peer failed")
            }
            PumpEnd::Unexpected => {
                warn!(local = %config.local, peer = %peer.id, "peer sent bytes on a one-way connection")
            }
        }
        // A connection that lived a while earns an immediate re-dial; one
        // that broke at once backs off like a failed dial.
        if started.elapsed() > Duration::from_secs(1) {
            backoff.reset();
        } else {
            let delay = backoff.next_delay();
            if inner
                .until_shutdown(glommio::timer::sleep(delay))
                .await
                .is_none()
            {
                break;
            }
        }
    }
    let lost = peer.clear();
    peer.stats.borrow_mut().messages_lost += lost;
}

async fn pump(
    inner: &Inner,
    peer: &Peer,
    mut stream: TcpStream,
    generation: Option<u64>,
    buf: &mut BytesMut,
) -> PumpEnd {
    enum Event {
        Wake,
        Read(io::Result<usize>),
        Shutdown,
    }
    let mut probe = [0u8; 1];
    loop {
        if inner.is_shutting_down() || peer.removed.get() {
            return PumpEnd::Shutdown;
        }
        if inner.registry.generation(peer.id.node) != generation {
            return PumpEnd::AddressChanged;
        }
        if peer.queue.borrow().is_empty() {
            // Idle: wait for work, and notice the peer closing meanwhile.
            let event = or(
                or(
                    async {
                        peer.wake.notified().await;
                        Event::Wake
                    },
                    async { Event::Read(stream.read(&mut probe).await) },
                ),
                async {
                    inner.shutdown.notified().await;
                    Event::Shutdown
                },
            )
            .await;
            match event {
                Event::Wake => {
                    // Woken by the first message of a batch: let the tasks
                    // that are runnable now (the shard's driver turn, which
                    // usually follows the message that woke us) queue theirs
                    // first, so that one frame and one write carry them all.
                    // A yield within the task queue: no syscall, no timer.
                    futures_lite::future::yield_now().await;
                    continue;
                }
                Event::Shutdown => return PumpEnd::Shutdown,
                Event::Read(Ok(0)) => return PumpEnd::PeerClosed,
                Event::Read(Ok(_)) => return PumpEnd::Unexpected,
                Event::Read(Err(e)) => return PumpEnd::Io(e),
            }
        }
        let count = peer.drain_into_frame(buf, &inner.config);
        debug_assert!(count > 0);
        let written = or(async { Some(stream.write_all(buf).await) }, async {
            inner.shutdown.notified().await;
            None
        })
        .await;
        match written {
            None => {
                peer.stats.borrow_mut().messages_lost += count;
                return PumpEnd::Shutdown;
            }
            Some(Err(e)) => {
                peer.stats.borrow_mut().messages_lost += count;
                return PumpEnd::Io(e);
            }
            Some(Ok(())) => {
                let mut s = peer.stats.borrow_mut();
                s.frames_sent += 1;
                s.messages_sent += count;
                s.bytes_sent += buf.len() as u64;
            }
        }
        // Let other tasks (and the producer) run between frames when due.
        glommio::yield_if_needed().await;
    }
}

async fn accept_loop(inner: Rc<Inner>, listener: TcpListener) {
    loop {
        let accepted = match inner.until_shutdown(listener.accept()).await {
            None => break,
            Some(a) => a,
        };
        match accepted {
            Ok(stream) => {
                if inner.connections_open.get() >= u64::from(inner.config.inbound_connections_max) {
                    inner.rejected.borrow_mut().too_many_connections += 1;
                    warn!(local = %inner.config.local, "too many inbound connections: refusing one");
                    drop(stream);
                    continue;
                }
                let remote = stream.peer_addr().ok();
                inner.connections_open.set(inner.connections_open.get() + 1);
                let conn_inner = inner.clone();
                let spawned = inner.spawn(async move {
                    serve_connection(&conn_inner, stream, remote).await;
                    conn_inner
                        .connections_open
                        .set(conn_inner.connections_open.get() - 1);
                });
                if spawned.is_err() {
                    inner.connections_open.set(inner.connections_open.get() - 1);
                    break;
                }
            }
            Err(e) => {
                // E.g. EMFILE: back off briefly instead of spinning.
                warn!(local = %inner.config.local, error = %e, "accept failed");
                if inner
                    .until_shutdown(glommio::timer::sleep(Duration::from_millis(10)))
                    .await
                    .is_none()
                {
                    break;
                }
            }
        }
    }
    debug!(local = %inner.config.local, "accept loop stopped");
}

/// Reads and validates a Hello; answers it. Returns the accepted Hello.
async fn accept_handshake(
    inner: &Inner,
    stream: &mut TcpStream,
    remote: Option<SocketAddr>,
) -> Option<Hello> {
    let config = &inner.config;
    let mut buf = [0u8; HELLO_BYTES];
    let read = async {
        stream.read_exact(&mut buf[..4]).await?;
        if buf[..4] != crate::wire::HELLO_MAGIC.to_le_bytes() {
            return Ok(false);
        }
        stream.read_exact(&mut buf[4..]).await?;
        Ok::<bool, io::Error>(true)
    };
    let timed = or(async { Some(read.await) }, async {
        glommio::timer::sleep(config.handshake_timeout).await;
        None
    });
    let outcome = match inner.until_shutdown(timed).await {
        None => return None,
        Some(o) => o,
    };
    let hello = match outcome {
        None => {
            inner.rejected.borrow_mut().handshake_timeout += 1;
            warn!(local = %config.local, ?remote, "handshake timeout: closing connection");
            return None;
        }
        Some(Err(e)) => {
            inner.rejected.borrow_mut().handshake_garbage += 1;
            warn!(local = %config.local, ?remote, error = %e, "connection closed during handshake");
            return None;
        }
        Some(Ok(false)) => {
            inner.rejected.borrow_mut().handshake_garbage += 1;
            warn!(local = %config.local, ?remote, "bad handshake magic: closing connection");
            return None;
        }
        Some(Ok(true)) => match Hello::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                inner.rejected.borrow_mut().handshake_garbage += 1;
                warn!(local = %config.local, ?remote, error = %e, "garbage handshake: closing connection");
                return None;
            }
        },
    };
    let version = negotiate_version(hello.version_min, hello.version_max);
    let status = if hello.cluster != config.cluster {
        inner.rejected.borrow_mut().cluster_mismatch += 1;
        HelloStatus::ClusterMismatch
    } else if hello.to != config.local {
        inner.rejected.borrow_mut().wrong_target += 1;
        HelloStatus::WrongTarget
    } else if version.is_none() {
        inner.rejected.borrow_mut().unsupported_version += 1;
        HelloStatus::UnsupportedVersion
    } else if !config.accept_unknown_nodes && !inner.registry.contains(hello.from.node) {
        inner.rejected.borrow_mut().unknown_node += 1;
        HelloStatus::UnknownNode
    } else if inner.is_shutting_down() {
        HelloStatus::Unavailable
    } else {
        HelloStatus::Accepted
    };
    let ack = HelloAck {
        version: version.unwrap_or(WIRE_VERSION),
        status,
    };
    let _ = stream.set_write_timeout(Some(config.handshake_timeout));
    let wrote = inner.until_shutdown(stream.write_all(&ack.encode())).await;
    if status != HelloStatus::Accepted {
        warn!(
            local = %config.local, ?remote, from = %hello.from, to = %hello.to,
            cluster = %hello.cluster, ?status, "handshake refused: closing connection"
        );
        let _ = stream.close().await;
        return None;
    }
    match wrote {
        Some(Ok(())) => {}
        _ => return None,
    }
    let _ = stream.set_write_timeout(Some(config.write_timeout));
    Some(hello)
}

async fn serve_connection(inner: &Rc<Inner>, mut stream: TcpStream, remote: Option<SocketAddr>) {
    let Some(hello) = accept_handshake(inner, &mut stream, remote).await else {
        return;
    };
    inner
        .connections_accepted
        .set(inner.connections_accepted.get() + 1);
    debug!(local = %inner.config.local, from = %hello.from, kind = ?hello.kind, ?remote, "connection accepted");
    match hello.kind {
        ConnectionKind::Messages => read_batches(inner, stream, hello.from).await,
        ConnectionKind::Snapshot => snapshot::receive(inner, stream, hello.from).await,
    }
}

async fn read_batches(inner: &Rc<Inner>, stream: TcpStream, from: PeerId) {
    read_frames(inner, stream, from).await;
    if !inner.is_shutting_down() {
        inner.connections_lost.set(inner.connections_lost.get() + 1);
        let mut lost = inner.lost.borrow_mut();
        if !lost.contains(&from) {
            lost.push(from);
        }
    }
}

/// Reads `from`'s frames into the inbound queue until the connection ends
/// or the transport shuts down.
async fn read_frames(inner: &Rc<Inner>, mut stream: TcpStream, from: PeerId) {
    let config = &inner.config;
    let mut reader = FrameReader::new(config.read_buffer_bytes as usize, config.frame_bytes_max);
    loop {
        let next = match inner.until_shutdown(reader.next(&mut stream)).await {
            None => return,
            Some(n) => n,
        };
        let (header, payload) = match next {
            Ok(Some(f)) => f,
            Ok(None) => {
                debug!(local = %config.local, %from, "peer closed its connection");
                return;
            }
            Err(e) => {
                inner.count_read_error(&e);
                warn!(local = %config.local, %from, error = %e, buffered = reader.buffered(), "closing inbound connection");
                return;
            }
        };
        if header.kind != FrameKind::Batch {
            let e = FrameError::BadKind {
                found: header.kind as u8,
            };
            inner.count_frame_error(&e);
            warn!(local = %config.local, %from, error = %e, "closing inbound connection");
            return;
        }
        let messages = match decode_batch(&payload) {
            Ok(m) => m,
            Err(e) => {
                inner.count_frame_error(&e);
                warn!(local = %config.local, %from, error = %e, "closing inbound connection");
                return;
            }
        };
        let wire_bytes = (FRAME_HEADER_BYTES + payload.len()) as u64;
        {
            let mut stats = inner.inbound_stats.borrow_mut();
            let s = stats.entry(from).or_default();
            s.frames += 1;
            s.messages += messages.len() as u64;
            s.bytes += wire_bytes;
        }
        if messages.is_empty() {
            continue;
        }
        // Backpressure: stop reading this socket while the consumer is behind.
        let payload_bytes = payload.len() as u64;
        while !inner.inbound.has_room(payload_bytes, config) {
            if inner
                .until_shutdown(inner.inbound.space.notified())
                .await
                .is_none()
            {
                return;
            }
        }
        inner
            .inbound
            .bytes
            .set(inner.inbound.bytes.get() + payload_bytes);
        inner
            .inbound
            .batches
            .borrow_mut()
            .push_back((InboundBatch { from, messages }, payload_bytes));
        inner.inbound.arrived.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn peer() -> Peer {
        Peer {
            id: PeerId::new(2, 0),
            queue: RefCell::new(SendQueue::default()),
            queue_bytes: Cell::new(0),
            wake: Notify::default(),
            stats: RefCell::new(PeerMetrics::default()),
            removed: Cell::new(false),
        }
    }

    /// Frames drained from the queue carry every message once, in order,
    /// within the count and byte limits (a message over the byte limit
    /// alone); the queue's counters follow; an emptied queue lets a large
    /// buffer go.
    #[test]
    fn frames_drain_the_queue_in_order_within_their_limits() {
        let mut config = TransportConfig::new(crate::ClusterId(1), PeerId::new(1, 0));
        config.frame_messages_max = 7;
        config.batch_bytes_max = 600;
        config.send_queue_messages_max = 10_000;
        let p = peer();
        let mut sent = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..500u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly small, some over the batch byte limit.
            let len = if i % 50 == 7 {
                900
            } else {
                (rng % 120) as usize
            };
            let msg: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
            p.push(&msg, &config).unwrap();
            sent.push(msg);
        }
        let total: u64 = sent.iter().map(|m| m.len() as u64).sum();
        assert_eq!(p.queue.borrow().len(), 500);
        assert_eq!(p.queue_bytes.get(), total);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut buf = BytesMut::new();
        let mut frames = 0;
        while !p.queue.borrow().is_empty() {
            let count = p.drain_into_frame(&mut buf, &config);
            frames += 1;
            let payload = Bytes::copy_from_slice(&buf[FRAME_HEADER_BYTES..]);
            let msgs = crate::wire::decode_batch(&payload).unwrap();
            assert_eq!(msgs.len() as u64, count);
            assert!((1..=7).contains(&count), "{count} messages in a frame");
            if count > 1 {
                assert!(payload.len() <= 600, "{} payload bytes", payload.len());
            }
            got.extend(msgs.iter().map(|m| m.to_vec()));
            let left: u64 = sent[got.len()..].iter().map(|m| m.len() as u64).sum();
            assert_eq!(p.queue_bytes.get(), left);
        }
        assert_eq!(got, sent);
        assert!(frames >= 500 / 7);
        assert_eq!(p.queue_bytes.get(), 0);
        // A burst's big buffer is not kept once drained.
        let big = vec![1u8; 200 << 10];
        for _ in 0..10 {
            p.push(&big, &config).unwrap();
        }
        while !p.queue.borrow().is_empty() {
            p.drain_into_frame(&mut buf, &config);
        }
        assert!(p.queue.borrow().bytes.capacity() <= SEND_QUEUE_KEEP_BYTES);
    }

    #[test]
    fn id_hasher_separates_peer_ids() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut hashes: Vec<u64> = (0..100u64)
            .flat_map(|node| (0..64u32).map(move |shard| PeerId::new(node, shard)))
            .map(|p| build.hash_one(p))
            .collect();
        let n = hashes.len();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), n, "colliding hashes among {n} peer ids");
        // hashbrown picks buckets from the low bits: they must vary too.
        let mut low: Vec<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        low.sort_unstable();
        low.dedup();
        assert!(
            low.len() > 2000,
            "only {} of 4096 low-bit buckets used",
            low.len()
        );
    }
}
