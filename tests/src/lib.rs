//! # flotilla-tests
//!
//! Multi-node, multi-process and fault tests for flotilla.
