//! Benchmark of the Raft core alone (filled in by the raft core work).
fn main() {}
