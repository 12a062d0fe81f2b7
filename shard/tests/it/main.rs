//! Integration tests of the shard crate: openraft's storage conformance suite run against Veil's
//! Raft log store and shard state machine, and apply-path behaviour.

mod apply;
mod conformance;
