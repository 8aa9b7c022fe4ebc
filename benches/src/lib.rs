//! # flotilla-benches
//!
//! Shared helpers for the benchmarks of each layer and end to end.
