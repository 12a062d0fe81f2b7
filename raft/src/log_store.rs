//! The RocksDB-backed Raft log store shared by all Raft groups of a node.
//!
//! Each group writes its log into its own column family ([`log_cf_name`]) and its vote and purge
//! point into one family all groups share, its keys prefixed by its [`GroupId`] in both, so all
//! groups share one RocksDB write-ahead log. Appends are written to RocksDB inline (a memtable
//! insert, no sync) and then handed to the [`LogSyncer`], a thread that fsyncs the WAL once for
//! everything written since its last sync and only then tells openraft that the entries are
//! durable (`IOFlushed`). This is group commit: with many groups and many concurrent batches, one
//! fsync covers them all.
//!
//! Key layout (all integers big-endian, so RocksDB's byte order is numeric order):
//! - `raft_log-NNNN` (one per group; before data format 13 one `raft_log` for all):
//!   `group u32 | index u64` → bincode of the openraft entry;
//! - `raft_meta`: `group u32 | tag u8` → bincode of the vote (tag 1) or the last purged log id
//!   (tag 2).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::alias::{LogId, RaftEntry as Entry, Vote};
use crate::{Error, GroupId, Result, TypeConfig};

/// The column family that held the Raft log entries of every group before data format 13; each
/// group's log now has its own ([`log_cf_name`]), and an older directory's are moved there at
/// open ([`move_shared_log`]).
pub const CF_RAFT_LOG: &str = "raft_log";
/// The column family holding each group's vote and purge point.
pub const CF_RAFT_META: &str = "raft_meta";

const META_VOTE: u8 = 1;
const META_LAST_PURGED: u8 = 2;

/// The column family of group `group`'s log entries (data format 13). One family per group, for
/// the reason the shards' entries have one each: keys begin with the group, so in a shared family
/// every flushed memtable spanned every group's live log and each compaction into the level below
/// rewrote all of it (at full speed a group keeps ~2,000 logs of ~70 KB, more than a memtable,
/// so its log is flushed before it is purged; BENCHMARKS.md, issue 8, session 11).
pub fn log_cf_name(group: GroupId) -> String {
    format!("{CF_RAFT_LOG}-{:04}", group.0)
}

/// Returns the column families this crate needs in the node's RocksDB for `groups` groups (ids
/// `0..groups`).
pub fn column_families(groups: u32) -> Vec<ColumnFamilyDescriptor> {
    [CF_RAFT_LOG, CF_RAFT_META]
        .into_iter()
        .map(String::from)
        .chain((0..groups).map(|g| log_cf_name(GroupId(g))))
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
        .collect()
}

/// Moves group `group`'s log entries from the `raft_log` family all groups shared before data
/// format 13 into the group's own ([`log_cf_name`]), then deletes them from the shared one;
/// returns the entries moved. Run before the group's store opens. Idempotent: the shared rows go
/// only once all are copied, and a crash before that copies them again over the same keys.
pub fn move_shared_log(db: &DB, group: GroupId) -> Result<u64> {
    let missing = |name: &str| Error::MissingColumnFamily(name.into());
    let shared = db
        .cf_handle(CF_RAFT_LOG)
        .ok_or_else(|| missing(CF_RAFT_LOG))?;
    let own_name = log_cf_name(group);
    let own = db.cf_handle(&own_name).ok_or_else(|| missing(&own_name))?;
    let keys = LogKeys(group);
    Ok(move_key_range(
        db,
        shared,
        own,
        &keys.log_key(0),
        &keys.log_key_end(),
    )?)
}

/// Moves every row of `start..end` from column family `from` into `to` (copied in write batches
/// of 4 MiB; then deleted from `from`, whose range is compacted away); returns the rows moved.
/// The rows are deleted only once all are copied, so a crash part-way leaves them in place and a
/// second run copies them again over the same keys. Used by the upgrades that gave each group's
/// log, and each shard's entries, a family of their own.
pub fn move_key_range(
    db: &DB,
    from: &ColumnFamily,
    to: &ColumnFamily,
    start: &[u8],
    end: &[u8],
) -> std::result::Result<u64, rocksdb::Error> {
    const BATCH_BYTES: usize = 4 << 20;
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(end.to_vec());
    let mut it = db.raw_iterator_cf_opt(from, opts);
    it.seek(start);
    let (mut batch, mut moved) = (WriteBatch::default(), 0u64);
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        batch.put_cf(to, key, value);
        moved += 1;
        if batch.size_in_bytes() >= BATCH_BYTES {
            db.write(std::mem::take(&mut batch))?;
        }
        it.next();
    }
    it.status()?;
    db.write(batch)?;
    if moved > 0 {
        db.delete_range_cf(from, start, end)?;
        db.compact_range_cf(from, Some(start), Some(end));
    }
    Ok(moved)
}

/// The key layout of one group's log.
struct LogKeys(GroupId);

impl LogKeys {
    fn log_key(&self, index: u64) -> [u8; 12] {
        let mut key = [0u8; 12];
        key[..4].copy_from_slice(&self.0 .0.to_be_bytes());
        key[4..].copy_from_slice(&index.to_be_bytes());
        key
    }

    /// Returns a key greater than every key of this group and smaller than the next group's.
    fn log_key_end(&self) -> [u8; 13] {
        let mut key = [0xffu8; 13];
        key[..4].copy_from_slice(&self.0 .0.to_be_bytes());
        key
    }
}

type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Why the WAL could not be made durable, once it could not (for the rest of the process).
static WAL_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Fsyncs the RocksDB WAL of `db` (every write before it is then durable). Once an fsync has
/// failed (a full disk, an I/O error), every later call fails with that first error without
/// touching the WAL again: what the failed fsync covered is not known to be on disk, so
/// nothing may be acknowledged on it ("fsyncgate": retrying an fsync does not bring back
/// what the kernel dropped), and RocksDB's WAL writer, after an error, asserts on a second
/// flush instead of answering one (the node aborted in the chaos harness's full-disk runs).
/// The node stops once it sees [`wal_failure`] and is restarted to recover from what is on
/// disk.
pub fn sync_wal(db: &DB) -> std::result::Result<(), String> {
    if let Some(why) = WAL_FAILURE.get() {
        return Err(format!("the WAL failed earlier: {why}"));
    }
    db.flush_wal(true).map_err(|e| {
        let why = e.to_string();
        let _ = WAL_FAILURE.set(why.clone());
        why
    })
}

/// The first failed WAL fsync of this process, if one failed (see [`sync_wal`]).
pub fn wal_failure() -> Option<&'static str> {
    WAL_FAILURE.get().map(String::as_str)
}

/// Fsyncs the shared RocksDB WAL on behalf of every Raft group and completes their writes.
///
/// One thread loops: it takes every callback queued since the last round, fsyncs the WAL once,
/// and completes them all. A write is queued only after it reached RocksDB, so the fsync that
/// completes it covers it.
#[derive(Clone)]
pub struct LogSyncer {
    tx: mpsc::Sender<SyncCallback>,
    stopping: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl LogSyncer {
    /// Starts the sync thread with room for `queue_len_max` waiting writes.
    pub fn start(db: Arc<DB>, queue_len_max: usize) -> Result<Self> {
        let (tx, mut rx) = mpsc::channel::<SyncCallback>(queue_len_max.max(1));
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                let mut pending = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    pending.push(first);
                    while let Ok(next) = rx.try_recv() {
                        pending.push(next);
                    }
                    let result = sync_wal(&db);
                    if let Err(message) = &result {
                        tracing::error!(error = %message, "raft log fsync failed");
                    }
                    for callback in pending.drain(..) {
                        callback(result.clone().map_err(io::Error::other));
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                // Dropping `db` here lets the node close RocksDB before the process exits.
            })
            .map_err(Error::SpawnSyncer)?;
        Ok(Self {
            tx,
            stopping,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Stops the sync thread after one last fsync and waits for it (blocking: call it from a
    /// blocking context at shutdown, after every Raft group has stopped). Writes queued later
    /// fail with "raft log sync thread has stopped".
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the thread; when the queue is full it is busy and sees the flag after its round.
        let _ = self.tx.try_send(Box::new(|_| {}));
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("raft log sync thread panicked");
            }
        }
    }

    /// Queues `callback` to run after the next fsync of the WAL.
    async fn after_sync(&self, callback: SyncCallback) -> io::Result<()> {
        self.tx
            .send(callback)
            .await
            .map_err(|_| io::Error::other("raft log sync thread has stopped"))
    }

    /// Waits until everything written to RocksDB so far is fsynced.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.after_sync(Box::new(move |result| {
            // The waiter may have gone away (its request was cancelled); nothing to tell then.
            let _ = tx.send(result);
        }))
        .await?;
        rx.await
            .map_err(|_| io::Error::other("raft log sync thread has stopped"))?
    }
}

/// The Raft log store of one group, backed by the node's shared RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    group: GroupId,
    /// The name of the column family of this group's log entries.
    log_cf: Arc<str>,
    syncer: LogSyncer,
}

impl LogStore {
    /// Opens the log store of `group` in `db`, which must have been opened with
    /// [`column_families`].
    pub fn open(db: Arc<DB>, group: GroupId, syncer: LogSyncer) -> Self {
        Self {
            db,
            group,
            log_cf: log_cf_name(group).into(),
            syncer,
        }
    }

    /// Returns the group this store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn cf(&self, name: &str) -> io::Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io::Error::other(Error::MissingColumnFamily(name.into())))
    }

    /// The column family of this group's log entries.
    fn log_cf(&self) -> io::Result<&ColumnFamily> {
        self.cf(&self.log_cf)
    }

    fn log_key(&self, index: u64) -> [u8; 12] {
        LogKeys(self.group).log_key(index)
    }

    /// Returns a key greater than every key of this group and smaller than the next group's.
    fn log_key_end(&self) -> [u8; 13] {
        LogKeys(self.group).log_key_end()
    }

    fn meta_key(&self, tag: u8) -> [u8; 5] {
        let mut key = [0u8; 5];
        key[..4].copy_from_slice(&self.group.0.to_be_bytes());
        key[4] = tag;
        key
    }

    fn get_meta<T: DeserializeOwned>(&self, tag: u8) -> io::Result<Option<T>> {
        let bytes = self
            .db
            .get_cf(self.cf(CF_RAFT_META)?, self.meta_key(tag))
            .map_err(io::Error::other)?;
        bytes.map(|b| decode(&b)).transpose()
    }

    fn put_meta<T: Serialize>(&self, tag: u8, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.db
            .put_cf(self.cf(CF_RAFT_META)?, self.meta_key(tag), bytes)
            .map_err(io::Error::other)
    }

    fn index_of_key(&self, key: &[u8]) -> Option<u64> {
        let (group, index) = key.split_at_checked(4)?;
        if group != self.group.0.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(index.try_into().ok()?))
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let cf = self.log_cf()?;
        let end = self.log_key_end();
        let mut iter = self
            .db
            .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, value) = item.map_err(io::Error::other)?;
                match self.index_of_key(&key) {
                    Some(_) => Ok(Some(decode(&value)?)),
                    None => Ok(None),
                }
            }
            None => Ok(None),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    bincode::deserialize(bytes).map_err(io::Error::other)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.log_cf()?;
        let from = self.log_key(start);
        let mut entries = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(io::Error::other)?;
            let Some(index) = self.index_of_key(&key) else {
                break;
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(&value)?;
            assert_eq!(
                entry.index(),
                index,
                "raft log key and entry disagree on the index"
            );
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(META_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(META_VOTE, vote)?;
        self.syncer.sync().await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.log_cf()?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, self.log_key(entry.index()), encode(&entry)?);
        }
        self.db.write(batch).map_err(io::Error::other)?;
        self.syncer
            .after_sync(Box::new(move |result| callback.io_completed(result)))
            .await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = match &last_log_id {
            Some(log_id) => self.log_key(log_id.index().saturating_add(1)),
            None => self.log_key(0),
        };
        let cf = self.log_cf()?;
        self.db
            .delete_range_cf(cf, &from[..], &self.log_key_end()[..])
            .map_err(io::Error::other)?;
        self.syncer.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The purge point is written first: openraft ignores entries at or below it, so a crash
        // between the two writes leaves only unreachable entries behind.
        self.put_meta(META_LAST_PURGED, &log_id)?;
        let cf = self.log_cf()?;
        self.db
            .delete_range_cf(
                cf,
                self.log_key(0),
                self.log_key(log_id.index().saturating_add(1)),
            )
            .map_err(io::Error::other)?;
        Ok(())
    }
}
