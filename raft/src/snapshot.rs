//! What openraft passes around as a snapshot's data.
//!
//! A Veil state machine lives in RocksDB and every apply is written through its WAL, so the
//! applied state *is* a snapshot once the WAL is synced: building one records its metadata and
//! copies nothing (the way TiKV generates a snapshot only when a peer needs one). A copy of the
//! state is written only when it must travel — to a follower, or to another state machine —
//! by [`LiveState::write_file`]. A copy received from elsewhere is a [`SnapshotData::File`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::alias::SnapshotMeta;

/// The data of a snapshot.
pub enum SnapshotData {
    /// A snapshot file: one received from a leader, or one a [`LiveState`] wrote.
    File(PathBuf),
    /// The state machine itself, durable at or after the snapshot's metadata.
    Live(Arc<dyn LiveState>),
}

/// A state machine that is its own snapshot.
pub trait LiveState: Send + Sync {
    /// Writes the state as it is now to a new snapshot file and returns the metadata the file
    /// carries with its path; the caller owns (and removes) the file.
    ///
    /// The state may have moved past the snapshot that handed out this `LiveState`, so the
    /// returned metadata is at or after that snapshot's: whoever sends or installs the file
    /// must use the returned metadata, never the older one. (A leader that records the older
    /// one as the follower's progress is still right: every index up to the newer one is
    /// committed, and committed entries sent again are skipped.)
    fn write_file(&self) -> std::io::Result<(SnapshotMeta, PathBuf)>;
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::File(path) => f.debug_tuple("File").field(path).finish(),
            SnapshotData::Live(_) => f.write_str("Live"),
        }
    }
}
