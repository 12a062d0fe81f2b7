//! Integration tests of the `veil` binary: each starts the real binary on free ports with a
//! temporary data directory and talks to it over its public HTTP and gRPC APIs.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod admin;
mod bad_input;
mod bench;
mod cluster;
mod compact;
mod config;
mod harness;
mod ingest_query;
mod membership;
mod pii;
mod privacy;
mod query_api;
mod query_oracle;
mod shippers;
mod text;
mod topk;
