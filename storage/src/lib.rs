//! # flotilla-storage
//!
//! The per-shard segment WAL (glommio `DmaFile`, io_uring direct I/O) and
//! snapshot files. Knows nothing of Raft: it keeps bytes keyed by
//! (group, index, term).
