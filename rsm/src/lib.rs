//! # flotilla-rsm
//!
//! The replicated state machine interface, exactly-once sessions, the bundled
//! key-value store and the snapshot format. Knows nothing of Raft beyond
//! "commands arrive in index order".
