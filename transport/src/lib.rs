//! # flotilla-transport
//!
//! Framed TCP between shards, batched per peer, with snapshot streams. It
//! knows nothing of Raft: it moves opaque [`bytes::Bytes`] messages between
//! *peers*, where a peer is one shard of one node ([`PeerId`]). The shard that
//! owns group g on node A talks straight to the shard that owns g on node B,
//! so a message crosses no core boundary.
//!
//! One [`Transport`] lives in each shard's glommio executor and owns:
//!
//! * a **listener** on the shard's own port (node base port + shard index; see
//!   [`Registry`]). Each accepted connection starts with a handshake
//!   (cluster id, source node and shard, target shard, version; see
//!   [`wire::Hello`]) and then carries frames, read through one reused
//!   staging region per connection; each frame's payload is copied out of
//!   it (small ones into a shared 64 KiB arena) or, when large, read
//!   straight into a buffer of its own, and its messages are handed out as
//!   zero-copy slices of that payload in [`InboundBatch`]es, in arrival
//!   order per connection, via [`Transport::try_recv`] / [`Transport::recv`];
//! * one **bounded send queue per peer** and a sender task that dials lazily,
//!   re-dials with jittered exponential backoff, and packs everything queued
//!   into one frame and one `write_all` — while a write is in flight the next
//!   frame accumulates. [`Transport::send`] never blocks: a full queue drops
//!   the message and counts it (Raft tolerates loss);
//! * **snapshot streams** on connections of their own: chunks, a window of
//!   unacknowledged chunks, an end-to-end CRC and a final acknowledgement
//!   once the receiver's sink is closed ([`Transport::send_snapshot`],
//!   [`SnapshotHandler`]);
//! * **metrics** per peer and per rejection reason ([`TransportMetrics`]).
//!
//! Malformed input of any kind closes only the connection it came on, is
//! logged with its reason and counted in [`RejectMetrics`]. Formats are drawn
//! in [`wire`] and in the `snapshot` module's documentation.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use flotilla_transport::{ClusterId, PeerId, Registry, Transport, TransportConfig};
//!
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .io_memory(1 << 20)
//!     .spawn(|| async {
//!         let (a, b) = (PeerId::new(1, 0), PeerId::new(2, 0));
//!         let registry = Registry::new(); // one per shard; shared here for brevity
//!         let mut config = TransportConfig::new(ClusterId(7), a);
//!         config.listen_addr = Some("127.0.0.1:0".parse().unwrap());
//!         let ta = Transport::new(config.clone(), registry.clone()).unwrap();
//!         registry.set_shard_addr(a, ta.local_addr());
//!         config.local = b;
//!         let tb = Transport::new(config, registry.clone()).unwrap();
//!         registry.set_shard_addr(b, tb.local_addr());
//!
//!         ta.send(b, Bytes::from_static(b"append-entries")).unwrap();
//!         let batch = tb.recv().await.unwrap();
//!         assert_eq!(batch.from, a);
//!         assert_eq!(batch.messages, vec![Bytes::from_static(b"append-entries")]);
//!
//!         ta.shutdown().await;
//!         tb.shutdown().await;
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap();
//! ```

mod config;
mod conn;
mod error;
mod ids;
mod metrics;
mod notify;
mod registry;
mod snapshot;
mod transport;
pub mod wire;

pub use config::TransportConfig;
pub use error::{DialError, SendError, SnapshotError, TransportError};
pub use ids::{ClusterId, NodeId, PeerId, ShardId};
pub use metrics::{PeerMetrics, RejectMetrics, SnapshotMetrics, TransportMetrics};
pub use registry::{NodeAddress, Registry};
pub use snapshot::{OpenFuture, SnapshotHandler, SnapshotReceived, SnapshotSent, SnapshotSink};
pub use transport::{InboundBatch, Transport};
