//! A query as one shard answers it: plain data, planned by the node's coordinator.

use crate::entry::{Level, StoredEntry};

/// The order of hits: by `(timestamp, log_id)`, newest or oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

/// What one shard is asked.
#[derive(Debug, Clone, Default)]
pub struct ShardQuery {
    /// Full-text query over message, exception message and stack trace (tantivy syntax), masked.
    pub text: Option<String>,
    /// Inclusive lower bound on the timestamp, in microseconds.
    pub start_us: Option<i64>,
    /// Inclusive upper bound on the timestamp, in microseconds.
    pub end_us: Option<i64>,
    /// Any of these services (none: all).
    pub services: Vec<String>,
    /// Any of these levels (none: all).
    pub levels: Vec<Level>,
    /// Exact matches on free fields: (key path, value).
    pub fields: Vec<(String, String)>,
    /// The sort order.
    pub order: SortOrder,
    /// How many of the best hits to return: the coordinator's `offset + limit`.
    pub top_n: usize,
}

/// One shard's answer.
#[derive(Debug, Clone, Default)]
pub struct ShardHits {
    /// How many entries of the shard match.
    pub total: u64,
    /// The best `top_n` matches in sort order.
    pub entries: Vec<StoredEntry>,
}

/// Orders two entries as `order` wants them: by `(timestamp, log_id)`, oldest or newest first.
/// Shards and the coordinator use the same order, so merging shard answers is exact.
pub fn compare(a: &StoredEntry, b: &StoredEntry, order: SortOrder) -> std::cmp::Ordering {
    let key = |e: &StoredEntry| (e.timestamp_us, e.log_id);
    match order {
        SortOrder::Asc => key(a).cmp(&key(b)),
        SortOrder::Desc => key(b).cmp(&key(a)),
    }
}
