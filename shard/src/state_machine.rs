//! The Raft state machine of a shard, and its snapshots.
//!
//! The shard's state lives in RocksDB and each apply goes through its WAL, so building a snapshot
//! copies nothing: it syncs the WAL and records the applied log id and membership
//! (`Shard::put_snapshot_record`); openraft may then purge the log behind it. The snapshot's
//! data is [`SnapshotData::Live`], the shard itself. (Snapshots used to be a file holding every
//! entry again — a sixth of a compacted data directory, and a rewrite of the whole shard every
//! `--snapshot-logs-since-last` Raft entries.)
//!
//! A snapshot *file* is written only when the state must travel (`LiveShard::write_file`): a
//! header with the metadata, then every `(key, entry)` of the shard in key order, read from one
//! RocksDB snapshot so that it matches the applied state the header claims. Installing one
//! replaces the shard's entries and rebuilds its index from them. Format 2 compresses
//! everything after the header as one zstd stream; format 1 files (plain body) still install.
//! A file record an earlier version left is still handed out as [`SnapshotData::File`] until
//! the next snapshot replaces it and deletes the file.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use veil_raft::alias::{LogId, SnapshotMeta, StoredMembership as Membership};
use veil_raft::{CommandResponse, LiveState, SnapshotData, TypeConfig};

use crate::entry::{encode_outcomes, ShardCommand};
use crate::shard::{AppliedState, Shard, CF_ENTRY_IDS};
use crate::{keys, Error, Result};

/// A shard snapshot: its metadata and its data (the live shard, or a file).
pub type ShardSnapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The Raft state machine of one shard.
#[derive(Clone)]
pub struct ShardStateMachine {
    shard: Arc<Shard>,
}

impl ShardStateMachine {
    /// Wraps an open shard.
    pub fn new(shard: Arc<Shard>) -> Self {
        Self { shard }
    }

    /// Returns the shard this state machine drives.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("shard task failed: {e}")))?
        .map_err(std::io::Error::from)
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, Membership)> {
        let state = self.shard.applied_lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::io::Result<()>
    where
        Strm: Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Blank => {
                    let shard = self.shard.clone();
                    blocking(move || shard.apply_state_only(log_id, None)).await?;
                    CommandResponse::default()
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(log_id), membership);
                    let shard = self.shard.clone();
                    blocking(move || shard.apply_state_only(log_id, Some(stored))).await?;
                    CommandResponse::default()
                }
                EntryPayload::Normal(command) => {
                    let shard = self.shard.clone();
                    let outcomes = blocking(move || {
                        let command = match shard.proposals().take(&command.0) {
                            Some(proposed) => proposed,
                            None => ShardCommand::decode(shard.id(), &command.0)?,
                        };
                        shard.apply_command(log_id, command)
                    })
                    .await?;
                    CommandResponse(encode_outcomes(&outcomes))
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ShardSnapshotBuilder {
            shard: self.shard.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> std::io::Result<()> {
        let shard = self.shard.clone();
        let meta = meta.clone();
        blocking(move || install_data(&shard, meta, snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<ShardSnapshot>> {
        let record = self.shard.snapshot_record().map_err(std::io::Error::from)?;
        Ok(record.map(|r| ShardSnapshot {
            meta: r.meta,
            snapshot: match r.legacy_file {
                Some(file) => SnapshotData::File(file),
                None => SnapshotData::Live(Arc::new(LiveShard(self.shard.clone()))),
            },
        }))
    }
}

/// Builds a snapshot of a shard.
pub struct ShardSnapshotBuilder {
    shard: Arc<Shard>,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> std::io::Result<ShardSnapshot> {
        let shard = self.shard.clone();
        let meta = blocking(move || build(&shard)).await?;
        Ok(ShardSnapshot {
            meta,
            snapshot: SnapshotData::Live(Arc::new(LiveShard(self.shard.clone()))),
        })
    }
}

/// A shard as its own snapshot's data.
struct LiveShard(Arc<Shard>);

impl LiveState for LiveShard {
    fn write_file(&self) -> std::io::Result<(SnapshotMeta, PathBuf)> {
        write_file(&self.0).map_err(std::io::Error::from)
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format_version: u32,
    meta: SnapshotMeta,
}

/// The format written: 2, a zstd body. Installing also takes 1, a plain body.
const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// zstd's default level: fast enough for a background snapshot, most of the ratio.
const SNAPSHOT_ZSTD_LEVEL: i32 = 3;

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(context, e)
}

fn bincode_err(shard: &Shard) -> impl Fn(bincode::Error) -> Error + '_ {
    move |e| Error::Corrupt {
        shard_id: shard.id(),
        reason: format!("snapshot record: {e}"),
    }
}

/// Builds a snapshot: records the applied state as the snapshot, durably. Every apply writes
/// `AppliedState` under the applied lock after its batch landed, so the state read here is
/// in RocksDB with everything it covers.
fn build(shard: &Shard) -> Result<SnapshotMeta> {
    let applied = shard.applied_lock().clone();
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership,
    };
    shard.put_snapshot_record(&meta)?;
    Ok(meta)
}

/// Writes the shard as it is now to a new snapshot file in its snapshot directory, returning
/// the metadata in the file's header and its path.
fn write_file(shard: &Shard) -> Result<(SnapshotMeta, PathBuf)> {
    let dir = shard.snapshot_dir();
    std::fs::create_dir_all(&dir).map_err(io_err("create snapshot dir"))?;
    let (applied, (out, file, tmp)) = shard.read_consistent(
        |applied| {
            let name = match &applied.last_applied {
                Some(id) => format!("{:020}-{}.snap", id.index(), uuid::Uuid::now_v7()),
                None => format!("empty-{}.snap", uuid::Uuid::now_v7()),
            };
            let file = dir.join(name);
            let tmp = file.with_extension("tmp");
            let mut out = BufWriter::new(
                std::fs::File::create(&tmp).map_err(io_err("create snapshot file"))?,
            );
            let header = SnapshotHeader {
                format_version: SNAPSHOT_FORMAT_VERSION,
                meta: SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                },
            };
            bincode::serialize_into(&mut out, &header).map_err(bincode_err(shard))?;
            let out = zstd::stream::write::Encoder::new(out, SNAPSHOT_ZSTD_LEVEL)
                .map_err(io_err("start snapshot compression"))?;
            Ok((out, file, tmp))
        },
        |(out, _, _), key, value| {
            bincode::serialize_into(out, &Some((key, value))).map_err(bincode_err(shard))
        },
    )?;
    let mut out = out;
    bincode::serialize_into(&mut out, &None::<(&[u8], &[u8])>).map_err(bincode_err(shard))?;
    let written = out
        .finish()
        .map_err(io_err("finish snapshot compression"))?
        .into_inner()
        .map_err(|e| Error::io("flush snapshot file", e.into_error()))?;
    written.sync_all().map_err(io_err("fsync snapshot file"))?;
    drop(written);
    std::fs::rename(&tmp, &file).map_err(io_err("rename snapshot file"))?;
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership,
    };
    Ok((meta, file))
}

/// Installs a snapshot's data under `meta`. A live state is first written to a file (removed
/// after); either way the file's own header must carry `meta`, or the install is refused before
/// anything changes: installing data under another log id would re-apply or skip entries.
fn install_data(shard: &Shard, meta: SnapshotMeta, data: SnapshotData) -> Result<()> {
    match data {
        SnapshotData::File(path) => install(shard, meta, &path),
        SnapshotData::Live(state) => {
            let (_, path) = state
                .write_file()
                .map_err(io_err("write the snapshot to install"))?;
            let result = install(shard, meta, &path);
            // A copy made only for this install; failing to delete it only wastes disk.
            let _ = std::fs::remove_file(&path);
            result
        }
    }
}

/// A writer opened for an install on a replica that copies its index: closed when the install
/// ends, whichever way.
struct TemporaryWriter<'a> {
    index: &'a crate::index::ShardIndex,
    opened: bool,
}

impl Drop for TemporaryWriter<'_> {
    fn drop(&mut self) {
        if self.opened {
            self.index.close_writer();
        }
    }
}

fn install(shard: &Shard, meta: SnapshotMeta, source: &std::path::Path) -> Result<()> {
    let db = shard.db();
    let mut file =
        BufReader::new(std::fs::File::open(source).map_err(io_err("open snapshot file"))?);
    let header: SnapshotHeader =
        bincode::deserialize_from(&mut file).map_err(bincode_err(shard))?;
    if header.meta != meta {
        return Err(Error::SnapshotMismatch {
            shard_id: shard.id(),
            file: format!("{:?}", header.meta.last_log_id),
            install: format!("{:?}", meta.last_log_id),
        });
    }
    let mut input: Box<dyn std::io::Read> = match header.format_version {
        1 => Box::new(file),
        2 => Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .map_err(io_err("start snapshot decompression"))?,
        ),
        other => {
            return Err(Error::Corrupt {
                shard_id: shard.id(),
                reason: format!("snapshot format {other}"),
            })
        }
    };
    let from = keys::shard_prefix(shard.id());
    let end = keys::shard_end(shard.id());
    // Counter rows not yet written count entries the snapshot replaces; it is recounted below.
    shard.drop_pending_counters();
    db.delete_range_cf(shard.entries_cf()?, &from[..], &end[..])?;
    for cf in crate::shard::DATA_COLUMN_FAMILIES {
        db.delete_range_cf(shard.cf(cf)?, &from[..], &end[..])?;
    }
    // Exception counters are recounted from the installed entries.
    let mut counters: std::collections::HashMap<[u8; 28], crate::exceptions::Counter> =
        std::collections::HashMap::new();
    // A replica that copies its index has no writer: one is opened for the install, and closed
    // after (its next commits are copied again). Meanwhile nothing starts or stops indexing.
    let _mode = shard.index_mode_lock();
    let _writer = TemporaryWriter {
        index: shard.index(),
        opened: shard.index().open_writer()?,
    };
    shard.index().clear()?;
    let raft_index = meta.last_log_id.as_ref().map(|l| l.index()).unwrap_or(0);
    let (cf_entries, cf_ids) = (shard.entries_cf()?, shard.cf(CF_ENTRY_IDS)?);
    loop {
        let mut batch = WriteBatch::default();
        let mut docs = Vec::new();
        let mut done = false;
        while docs.len() < 1024 {
            let record: Option<(Vec<u8>, Vec<u8>)> =
                bincode::deserialize_from(&mut input).map_err(bincode_err(shard))?;
            let Some((key, value)) = record else {
                done = true;
                break;
            };
            let entry = shard.decode_entry(&key, &value)?;
            if !keys::findable_by_time(entry.log_id, entry.timestamp_us) {
                let mut id_value = raft_index.to_be_bytes().to_vec();
                id_value.extend_from_slice(&key);
                batch.put_cf(cf_ids, keys::id_key(shard.id(), entry.log_id), id_value);
            }
            batch.put_cf(cf_entries, &key, &value);
            docs.push((key, entry));
        }
        db.write(batch)?;
        for (key, c) in crate::exceptions::rows_of(shard.id(), docs.iter().map(|(_, e)| e)) {
            crate::exceptions::merge_into(&mut counters, key, c);
        }
        let refs: Vec<_> = docs.iter().map(|(_, e)| e).collect();
        shard.index().add(raft_index, &refs)?;
        if done {
            break;
        }
    }
    let state = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    let mut batch = WriteBatch::default();
    shard.add_counters(&mut batch, &counters)?;
    shard.put_applied(&mut batch, &state)?;
    // Under the applied lock: a reader's counter flush cannot write an older mark after this.
    let mut applied = shard.applied_lock();
    shard.put_counted(&mut batch, raft_index)?;
    db.write(batch)?;
    shard.counted(raft_index);
    shard.rollups.clear();
    *applied = state;
    drop(applied);
    shard.flush_index()?;
    // The installed state is in RocksDB now, and it is the current snapshot.
    shard.put_snapshot_record(&meta)
}
