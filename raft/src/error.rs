//! Errors of the Raft layer.

/// An error of the Raft log store or group lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A required column family is missing from the database.
    #[error(
        "column family {0} is missing; was the database opened with veil_raft::column_families()?"
    )]
    MissingColumnFamily(String),
    /// The fsync thread could not be started.
    #[error("failed to start the raft log sync thread")]
    SpawnSyncer(#[source] std::io::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
