//! Veil's shard: the Raft state machine that stores a shard's masked entries in RocksDB, indexes
//! them with tantivy (or, on a follower, installs the index commits its leader wrote, copied by
//! the node), keeps the idempotency set that makes applying a batch twice harmless, and builds
//! and installs snapshots; plus the shard map that routes an entry to its shard.
//!
//! This crate knows nothing of HTTP, the CLI or PII: what reaches it is already masked, and all it
//! learns arrives through Raft apply or snapshot install. It opens no sockets.
//!
//! ```no_run
//! # fn demo(db: std::sync::Arc<rocksdb::DB>) -> veil_shard::Result<()> {
//! use veil_shard::{Shard, ShardConfig, ShardId, ShardMap, ShardQuery, ShardStateMachine};
//! let config = ShardConfig {
//!     data_dir: "./data".into(),
//!     index_heap_bytes: 32 << 20,
//!     shard_map: ShardMap::new(16),
//!     rollup_cache_entries: 1 << 20,
//!     index_persist: Default::default(), // in memory until every 10 s or 16 MiB
//!     proposals_kept: 2,
//!     counter_rows_pending_max: 65_536,
//! };
//! let shard = Shard::open(ShardId(0), db, config)?;
//! let state_machine = ShardStateMachine::new(shard.clone()); // hand to openraft
//! let hits = shard.search(&ShardQuery { top_n: 10, ..Default::default() })?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod entry;
mod error;
pub mod exceptions;
mod index;
mod index_dir;
pub mod keys;
mod proposals;
mod query;
pub mod query_lang;
pub mod rollups;
mod shard;
mod shard_map;
mod state_machine;

pub use entry::{
    decode_outcomes, encode_outcomes, hour_of, EntryOutcome, Level, ShardCommand, StoredEntry,
};
pub use error::{Error, Result};
pub use index::{CopiedFile, CopiedFileWrite, IndexCopy, PersistPolicy, ShardIndex, MERGE_THREADS};
pub use proposals::{Proposals, Ticket};
pub use query::{
    order_f64, order_i64, FieldCondition, Scalar, ShardHits, ShardQuery, SortField, SortKey,
    SortOrder,
};
pub use shard::{
    column_families, column_families_with, entries_cf_name, index_dir, move_shared_entries, Shard,
    ShardConfig, ShardDigest, ShardStats, CF_ENTRIES, CF_ENTRY_IDS, CF_INDEX_QUEUE, CF_SHARD_META,
};
pub use shard_map::{ShardId, ShardMap, ROUTING_HASH};
pub use state_machine::{ShardSnapshotBuilder, ShardStateMachine};
