//! The Raft protocol core: pure, deterministic, sans-I/O.
