//! Integration tests of the shard crate: openraft's storage conformance suite run against Veil's
//! Raft log store and shard state machine, apply-path behaviour, and index commits copied
//! between replicas.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod apply;
mod conformance;
mod copy;
