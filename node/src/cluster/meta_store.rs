//! Where the metadata group's state lives: one file per node, and the group's Raft state
//! machine over it (the state and its commands are `meta.rs`).
//!
//! The state is small and changes rarely (a node joins, a node's addresses change), so each
//! apply writes the whole record — state, applied log id, membership — to one file, replaced
//! atomically (write, fsync, rename, fsync the directory). That file is also the snapshot: a
//! copy is written only when one must travel, like a shard's. State files of older data formats
//! are read and rewritten in today's form by the next apply.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use serde::{Deserialize, Serialize};
use veil_node::pii::custom::CustomPattern;
use veil_raft::alias::{LogId, SnapshotMeta, StoredMembership as Membership};
use veil_raft::{CommandResponse, LiveState, NodeId, SnapshotData, TypeConfig};

use super::meta::{ClusterState, Member, MetaCommand, MetaReply};

/// The state as format 15 wrote it (no placement overrides), read once and then rewritten in
/// today's form by the next apply.
#[derive(Deserialize)]
struct Format15Record {
    last_applied: Option<LogId>,
    membership: Membership,
    members: BTreeMap<NodeId, Member>,
    pii_patterns: Vec<CustomPattern>,
    leaving: BTreeSet<NodeId>,
    removed: BTreeMap<NodeId, Member>,
}

/// The state as data format 13 and older wrote it (members only), read once and then
/// rewritten in today's form by the next apply.
#[derive(Deserialize)]
struct LegacyRecord {
    last_applied: Option<LogId>,
    membership: Membership,
    members: BTreeMap<NodeId, Member>,
}

/// The state as data format 14 wrote it (members and patterns, no leaving or removed ones).
#[derive(Deserialize)]
struct Format14Record {
    last_applied: Option<LogId>,
    membership: Membership,
    members: BTreeMap<NodeId, Member>,
    pii_patterns: Vec<CustomPattern>,
}

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetaRecord {
    last_applied: Option<LogId>,
    membership: Membership,
    state: ClusterState,
}

/// The metadata group's state, shared by its state machine and the node's readers.
pub struct MetaStore {
    dir: PathBuf,
    record: RwLock<MetaRecord>,
    /// Bumped on every apply or install, so watchers (the peer address book, the placement
    /// loop) see changes.
    changed: tokio::sync::watch::Sender<u64>,
}

const STATE_FILE: &str = "state.bin";

/// Reads a state file of today's form, or of an older one (which the next apply rewrites).
fn decode_record(bytes: &[u8]) -> bincode::Result<MetaRecord> {
    let error = match bincode::deserialize::<MetaRecord>(bytes) {
        Ok(record) => return Ok(record),
        Err(e) => e,
    };
    if let Some(old) = whole::<Format15Record>(bytes) {
        return Ok(MetaRecord {
            last_applied: old.last_applied,
            membership: old.membership,
            state: ClusterState {
                members: old.members,
                pii_patterns: old.pii_patterns,
                leaving: old.leaving,
                removed: old.removed,
                placement_overrides: BTreeMap::new(),
            },
        });
    }
    if let Some(old) = whole::<Format14Record>(bytes) {
        return Ok(MetaRecord {
            last_applied: old.last_applied,
            membership: old.membership,
            state: ClusterState {
                members: old.members,
                pii_patterns: old.pii_patterns,
                ..ClusterState::default()
            },
        });
    }
    if let Some(old) = whole::<LegacyRecord>(bytes) {
        return Ok(MetaRecord {
            last_applied: old.last_applied,
            membership: old.membership,
            state: ClusterState {
                members: old.members,
                ..ClusterState::default()
            },
        });
    }
    Err(error)
}

/// `bytes` as a `T` when they are exactly one (`bincode::deserialize`'s encoding, but trailing
/// bytes refused): a newer, longer record must not pass for an older one it begins like.
fn whole<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .deserialize(bytes)
        .ok()
}

/// The metadata as the state file under `dir` holds it (empty when there is none), read
/// without opening the store (a starting node's look before its groups run).
pub fn read_state(dir: &Path) -> anyhow::Result<ClusterState> {
    use anyhow::Context;
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(decode_record(&bytes)
            .with_context(|| format!("unreadable cluster metadata {}", path.display()))?
            .state),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterState::default()),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

impl MetaStore {
    /// Opens (or starts empty) the metadata under `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<MetaStore>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        let record = match std::fs::read(&path) {
            Ok(bytes) => decode_record(&bytes)
                .with_context(|| format!("unreadable cluster metadata {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetaRecord::default(),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        // Copies a crash left behind.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name() != STATE_FILE {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Arc::new(MetaStore {
            dir: dir.to_path_buf(),
            record: RwLock::new(record),
            changed: tokio::sync::watch::channel(0).0,
        }))
    }

    /// The cluster's metadata now.
    pub fn state(&self) -> ClusterState {
        self.read().state.clone()
    }

    /// How many times the metadata changed since the node started (what [`Self::subscribe`]'s
    /// receivers see).
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// A receiver that changes whenever the metadata does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MetaRecord> {
        self.record.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `record` to `path` atomically.
    fn write_record(&self, record: &MetaRecord, path: &Path) -> std::io::Result<()> {
        let bytes = bincode::serialize(record).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn commit(&self, record: MetaRecord) -> std::io::Result<()> {
        self.write_record(&record, &self.dir.join(STATE_FILE))?;
        *self.record.write().unwrap_or_else(|p| p.into_inner()) = record;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    fn meta(&self) -> SnapshotMeta {
        let r = self.read();
        SnapshotMeta {
            last_log_id: r.last_applied,
            last_membership: r.membership.clone(),
        }
    }
}

/// The metadata group's openraft state machine.
#[derive(Clone)]
pub struct MetaStateMachine {
    store: Arc<MetaStore>,
}

impl MetaStateMachine {
    /// The state machine over `store`.
    pub fn new(store: Arc<MetaStore>) -> Self {
        Self { store }
    }
}

struct LiveMeta(Arc<MetaStore>);

impl LiveState for LiveMeta {
    fn write_file(&self) -> std::io::Result<(SnapshotMeta, PathBuf)> {
        let record = self.0.read().clone();
        let meta = SnapshotMeta {
            last_log_id: record.last_applied,
            last_membership: record.membership.clone(),
        };
        let path = self
            .0
            .dir
            .join(format!("copy-{}.snap", uuid::Uuid::now_v7()));
        self.0.write_record(&record, &path)?;
        Ok((meta, path))
    }
}

type MetaSnapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = MetaStateMachine;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, Membership)> {
        let r = self.store.read();
        Ok((r.last_applied, r.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::io::Result<()>
    where
        Strm: Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut record = self.store.read().clone();
            let log_id = entry.log_id();
            record.last_applied = Some(log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    record.membership = StoredMembership::new(Some(log_id), m);
                    None
                }
                EntryPayload::Normal(command) => {
                    let in_group: Vec<NodeId> = record
                        .membership
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .collect();
                    let reply = match bincode::deserialize::<MetaCommand>(&command.0) {
                        Ok(command) => record.state.apply(command, &in_group),
                        Err(e) => MetaReply::Refused(format!("undecodable command: {e}")),
                    };
                    Some(reply)
                }
            };
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.commit(record))
                .await
                .map_err(std::io::Error::other)??;
            if let Some(responder) = responder {
                let bytes = reply
                    .map(|r| bincode::serialize(&r).unwrap_or_default())
                    .unwrap_or_default();
                responder.send(CommandResponse(bytes));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> std::io::Result<()> {
        let record = match snapshot {
            SnapshotData::File(path) => {
                let bytes = std::fs::read(&path)?;
                bincode::deserialize::<MetaRecord>(&bytes).map_err(std::io::Error::other)?
            }
            SnapshotData::Live(state) => {
                let (_, path) = state.write_file()?;
                let bytes = std::fs::read(&path);
                let _ = std::fs::remove_file(&path);
                bincode::deserialize::<MetaRecord>(&bytes?).map_err(std::io::Error::other)?
            }
        };
        if record.last_applied != meta.last_log_id {
            return Err(std::io::Error::other(format!(
                "metadata snapshot holds {:?}, install asked for {:?}",
                record.last_applied, meta.last_log_id
            )));
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.commit(record))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<MetaSnapshot>> {
        if self.store.read().last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(MetaSnapshot {
            meta: self.store.meta(),
            snapshot: SnapshotData::Live(Arc::new(LiveMeta(self.store.clone()))),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> std::io::Result<MetaSnapshot> {
        // Every apply already wrote the whole state durably: the snapshot is the state file.
        Ok(MetaSnapshot {
            meta: self.store.meta(),
            snapshot: SnapshotData::Live(Arc::new(LiveMeta(self.store.clone()))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::meta::tests::{member, pattern};

    #[test]
    fn state_files_of_older_formats_open_with_what_they_held() {
        #[derive(Serialize)]
        struct Old {
            last_applied: Option<LogId>,
            membership: Membership,
            members: BTreeMap<NodeId, Member>,
        }
        let dir = tempfile::tempdir().unwrap();
        let members = BTreeMap::from([(1, member(7000))]);
        let old = Old {
            last_applied: None,
            membership: Membership::default(),
            members: members.clone(),
        };
        std::fs::write(
            dir.path().join(STATE_FILE),
            bincode::serialize(&old).unwrap(),
        )
        .unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        assert_eq!(store.state().members, members);
        assert!(store.state().pii_patterns.is_empty());
        // Format 14: members and patterns, no leaving or removed members.
        #[derive(Serialize)]
        struct Format14 {
            last_applied: Option<LogId>,
            membership: Membership,
            members: BTreeMap<NodeId, Member>,
            pii_patterns: Vec<CustomPattern>,
        }
        let format_14 = Format14 {
            last_applied: None,
            membership: Membership::default(),
            members: members.clone(),
            pii_patterns: vec![pattern(1)],
        };
        std::fs::write(
            dir.path().join(STATE_FILE),
            bincode::serialize(&format_14).unwrap(),
        )
        .unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        assert_eq!(store.state().members, members);
        assert_eq!(store.state().pii_patterns, vec![pattern(1)]);
        assert!(store.state().leaving.is_empty() && store.state().removed.is_empty());
        assert_eq!(read_state(dir.path()).unwrap(), store.state());
        // Format 15: no placement overrides.
        #[derive(Serialize)]
        struct Format15 {
            last_applied: Option<LogId>,
            membership: Membership,
            members: BTreeMap<NodeId, Member>,
            pii_patterns: Vec<CustomPattern>,
            leaving: BTreeSet<NodeId>,
            removed: BTreeMap<NodeId, Member>,
        }
        let format_15 = Format15 {
            last_applied: None,
            membership: Membership::default(),
            members: members.clone(),
            pii_patterns: vec![pattern(1)],
            leaving: BTreeSet::from([1]),
            removed: BTreeMap::from([(2, member(7100))]),
        };
        std::fs::write(
            dir.path().join(STATE_FILE),
            bincode::serialize(&format_15).unwrap(),
        )
        .unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        assert_eq!(store.state().members, members);
        assert_eq!(store.state().leaving, BTreeSet::from([1]));
        assert_eq!(store.state().removed.len(), 1);
        assert!(store.state().placement_overrides.is_empty());
        // Bytes that are neither form are an error, not an empty cluster.
        std::fs::write(dir.path().join(STATE_FILE), b"\x01\x02").unwrap();
        assert!(MetaStore::open(dir.path()).is_err());
    }
}
