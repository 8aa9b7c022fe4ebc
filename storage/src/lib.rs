//! # flotilla-storage
//!
//! The per-shard write-ahead log and the snapshot files of flotilla. Knows
//! nothing of Raft: it keeps bytes keyed by (group, index, term), plus each
//! group's hard state, snapshot marker and opaque metadata (the engine keeps
//! the Raft membership there).
//!
//! ## Its place in the architecture
//! Every shard (one glommio executor) owns one [`Wal`] shared by all of its
//! groups, so one DMA write and **one fdatasync** make a whole batch of many
//! groups durable (as dragonboat's LogDB and TiKV's raft-engine do). By
//! default segments are opened `O_DSYNC`, so that write and its flush are one
//! request to the kernel ([`WalOptions::dsync_writes`]). The
//! shard loop calls [`Wal::write`] with everything its groups need to persist;
//! while that flush is in flight it builds the next batch and calls `write`
//! again: batches arriving during a flush are coalesced into the next one
//! (group commit), and each future resolves when its batch is durable.
//! Batches are accepted **in the order `write` is called** (FIFO, with
//! backpressure bounded by [`WalOptions::pending_bytes_max`]), so the shard
//! may issue its next batch without awaiting the previous one.
//!
//! ## On disk (drawn in detail in the `format` module)
//! * fixed-size, preallocated segment files `{seq:020}.wal`; block 0 is a
//!   header with the format version; reclaimed segments are recycled (written
//!   blocks are cheaper to fdatasync than fresh ones on this machine);
//! * each flush is one 4 KiB-aligned, zero-padded *frame* with a global batch
//!   sequence number; records carry length and CRC32 (mixed with the segment
//!   and batch numbers so stale bytes of a recycled file never check);
//! * recovery checks every CRC, drops a torn tail, and reports damage before
//!   the tail as [`WalError::Corrupt`] naming the file and offset;
//! * a segment is reclaimed once no group has a live record in it;
//!   [`Wal::groups_pinning_oldest`] names the groups that hold old segments and
//!   [`Wal::rewrite_groups`] moves small ones forward.
//!
//! ## Memory
//! In memory, per live entry: term, kind, location and (while cached) the
//! payload. The cache of recent payloads is bounded by
//! [`WalOptions::cache_group_bytes_max`] per group and
//! [`WalOptions::cache_bytes_max`] overall; entries not yet durable are always
//! cached.
//!
//! ## glommio 0.9.0 bug 1
//! `open` opens the manifest before any segment: an existing non-empty file
//! opened for reading, or on a fresh directory a file created write-only. So
//! a fresh WAL on a fresh executor can read back what it wrote.
//!
//! # Examples
//! ```
//! use bytes::Bytes;
//! use flotilla_storage::{Batch, Entry, HardState, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().to_path_buf();
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .io_memory(1 << 20)
//!     .spawn(move || async move {
//!         let opts = WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() };
//!         let (wal, recovery) = Wal::open(&path, opts.clone()).await.unwrap();
//!         assert!(recovery.groups.is_empty());
//!         let mut batch = Batch::new();
//!         batch.append(1, vec![Entry { index: 1, term: 1, kind: 0, payload: Bytes::from_static(b"put x=1") }]);
//!         batch.set_hard_state(1, HardState { term: 1, vote: 1, commit: 1 });
//!         wal.write(batch).await.unwrap(); // durable: one write, one fdatasync
//!         assert_eq!(wal.last_index(1), Some(1));
//!         wal.close().await.unwrap();
//!
//!         let (wal, recovery) = Wal::open(&path, opts).await.unwrap();
//!         assert_eq!(recovery.groups[0].last_index, 1);
//!         let e = wal.entries(1, 1..2, u64::MAX).await.unwrap();
//!         assert_eq!(&e[0].payload[..], b"put x=1");
//!         wal.close().await.unwrap();
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap();
//! ```

mod error;
pub mod format;
mod fsutil;
mod index;
mod notify;
mod recovery;
pub mod snapshot;
mod types;
mod wal;

pub use error::{Corruption, InvalidOp, SnapshotError, WalError};
pub use types::{Batch, Entry, GroupId, HardState, SnapshotMarker, META_BYTES_MAX};
pub use wal::{
    LatencyHistogram, PinningGroup, RecoveredGroup, Recovery, Wal, WalOptions, WalStats,
    FLUSH_LATENCY_BOUNDS_US,
};
