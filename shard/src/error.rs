//! Errors of the shard layer.

use crate::ShardId;

/// An error of a shard: its storage, its index or a query against it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// tantivy failed.
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// A stored value could not be decoded.
    #[error("corrupt record in shard {shard_id}: {reason}")]
    Corrupt {
        /// The shard holding the record.
        shard_id: ShardId,
        /// What was wrong.
        reason: String,
    },
    /// The full-text query could not be parsed.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The aggregation request is not valid for this index, or exceeded its bounds.
    #[error("invalid aggregation: {0}")]
    InvalidAggregation(String),
    /// The query's deadline passed before the shard finished.
    #[error("the query deadline passed")]
    DeadlineExceeded,
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A snapshot file holds another state than the one it was asked to install as.
    #[error(
        "shard {shard_id}: the snapshot file holds the state at log id {file}, not {install} it was to be installed as"
    )]
    SnapshotMismatch {
        /// The shard installing.
        shard_id: ShardId,
        /// The last log id in the file's header.
        file: String,
        /// The last log id it was to be installed under.
        install: String,
    },
    /// The replica does not index (it copies its leader's commits), and the operation needs
    /// its own writer.
    #[error(
        "shard {shard_id}: cannot {what}: this replica copies its index instead of writing it"
    )]
    NotIndexing {
        /// The shard.
        shard_id: ShardId,
        /// What needed the writer.
        what: String,
    },
    /// An index commit could not be copied from or to another replica (a file went with a
    /// merge, or a peer sent something unusable); a later commit can be.
    #[error("shard {shard_id}: index copy: {reason}")]
    IndexCopy {
        /// The shard.
        shard_id: ShardId,
        /// What went wrong.
        reason: String,
    },
    /// A required column family is missing from the database.
    #[error(
        "column family {0} is missing; was the database opened with veil_shard::column_families()?"
    )]
    MissingColumnFamily(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
