//! # flotilla-transport
//!
//! Framed TCP between shards, batched per peer, with snapshot streams.
//! Knows nothing of Raft: it moves opaque messages.
