//! Veil's Raft layer: the openraft type configuration every group uses, the RocksDB-backed
//! Raft log store that all groups of a node share (one WAL, one fsync per group commit), and the
//! transport between nodes: [`Peers`] (one gRPC connection per peer, carrying every group),
//! [`PeerNetwork`] (a group's openraft network over it), [`Router`] (the receiving side,
//! which hands each message to its group) and [`RateLimit`] (the bound on the bytes of
//! snapshots a node sends).
//!
//! This crate knows nothing of what a state machine stores: a command is opaque bytes
//! ([`Command`]) and so is its answer ([`CommandResponse`]). The `shard` crate encodes its batches
//! into them.
//!
//! ```no_run
//! # fn demo(db: std::sync::Arc<rocksdb::DB>) -> veil_raft::Result<()> {
//! use veil_raft::{GroupId, LogSyncer, LogStore};
//! let syncer = LogSyncer::start(db.clone(), 1024)?;
//! let store = LogStore::open(db, GroupId(3), syncer);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod log_store;
mod peer;
mod rate_limit;
mod router;
mod snapshot;
mod types;

pub use error::{Error, Result};
pub use log_store::{
    column_families, log_cf_name, move_key_range, move_shared_log, sync_wal, wal_failure, LogStore,
    LogSyncer, CF_RAFT_LOG, CF_RAFT_META,
};
pub use peer::{endpoint, PeerNetwork, Peers, PEER_MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};
pub use rate_limit::RateLimit;
pub use router::{GroupEndpoint, Router};
pub use snapshot::{LiveState, SnapshotData};
pub use types::{Command, CommandResponse, GroupId, NodeId, TypeConfig};

/// openraft's types as instantiated by Veil's [`TypeConfig`].
pub mod alias {
    use super::TypeConfig;
    /// A Raft log entry.
    pub type RaftEntry = openraft::alias::EntryOf<TypeConfig>;
    /// A Raft log id (term, leader, index).
    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    /// A stored membership configuration.
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
    /// A snapshot's metadata.
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    /// A Raft vote.
    pub type Vote = openraft::alias::VoteOf<TypeConfig>;
    /// A running Raft group handle driving state machine `SM`.
    pub type Raft<SM> = openraft::Raft<TypeConfig, SM>;
    /// A group's role: its state, leader, vote and membership.
    pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<TypeConfig>;
    /// The watch a group's role changes arrive on (`Raft::server_metrics`).
    pub type ServerMetricsWatch = openraft::alias::WatchReceiverOf<TypeConfig, RaftServerMetrics>;
}
