//! Veil's wire protocol: the gRPC services (`Ingest`, `Query`) and their messages, generated
//! from `proto/veil.proto` by tonic and prost, and the node-to-node protocol of a cluster
//! (`proto/peer.proto`).
//!
//! This crate knows nothing but the wire: no validation, no storage, no PII rules. The node maps
//! these messages onto its own types at the edge.
//!
//! ```no_run
//! use veil_proto::v1::{veil_client::VeilClient, IngestRequest};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = VeilClient::connect("http://127.0.0.1:7421").await?;
//! let answer = client.ingest(IngestRequest { entries: vec![] }).await?;
//! println!("{} accepted", answer.into_inner().accepted);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

/// Version 1 of the public API (`package veil.v1`).
#[allow(missing_docs)] // Generated code: the documentation lives in proto/veil.proto.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("veil.v1");
}

/// The node-to-node protocol of a cluster (`package veil.peer.v1`): Raft messages of every
/// group and the nodes' own calls, over one connection per pair of nodes. Not a public API.
#[allow(missing_docs)]
#[allow(clippy::all)]
pub mod peer {
    tonic::include_proto!("veil.peer.v1");
}
