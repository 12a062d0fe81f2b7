//! One shard: its entries and idempotency set in the node's RocksDB, its tantivy index, and the
//! applied Raft state. The Raft state machine ([`crate::ShardStateMachine`]) drives it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};
use serde::{Deserialize, Serialize};
use veil_raft::alias::{LogId, StoredMembership};

use crate::entry::{decode_entry, encode_entry, EntryOutcome, ShardCommand, StoredEntry};
use crate::exceptions::{self, CounterFilter, ExceptionCounts, CF_EXCEPTIONS};
use crate::index::ShardIndex;
use crate::keys;
use crate::proposals::Proposals;
use crate::query::{ShardHits, ShardQuery};
use crate::rollups::{self, Block, BlockNumbers, HoursNumbers, RollupCache, WindowNumbers};
use crate::{Error, Result, ShardId, ShardMap};

/// What [`Shard::digest`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDigest {
    /// The Raft index the read covers.
    pub applied_index: u64,
    /// Entries held.
    pub entries: u64,
    /// xxh3-64 over every entry's key and value, in key order.
    pub digest: u64,
}

/// Column family that held every shard's entries before data format 12; each shard's entries
/// now live in their own family ([`entries_cf_name`]), and an older directory's are moved there
/// at open ([`move_shared_entries`]).
pub const CF_ENTRIES: &str = "entries";
/// Column family of the idempotency set.
pub const CF_ENTRY_IDS: &str = "entry_ids";
/// Column family of applied entries awaiting a tantivy commit.
pub const CF_INDEX_QUEUE: &str = "index_queue";
/// Column family of each shard's applied state and snapshot record.
pub const CF_SHARD_META: &str = "shard_meta";

pub(crate) const META_APPLIED: u8 = 1;
/// A snapshot record with a file (`LegacySnapshotRecord`), written before snapshots were live.
const META_SNAPSHOT_FILE: u8 = 2;
/// The current snapshot's metadata: the durable state machine is the snapshot.
const META_SNAPSHOT: u8 = 3;
/// The Raft index up to which the stored exception counters include every applied entry
/// (see [`Shard::flush_counters`]).
pub(crate) const META_COUNTED: u8 = 4;

/// The column families holding every shard's data besides its entries (all keyed
/// `shard | …`): with the shard's entries family, what a snapshot install replaces.
pub(crate) const DATA_COLUMN_FAMILIES: [&str; 8] = [
    CF_ENTRY_IDS,
    CF_INDEX_QUEUE,
    crate::exceptions::CF_EXCEPTIONS,
    crate::exceptions::CF_EXCEPTION_HISTORY,
    crate::exceptions::CF_EXCEPTION_HOURLY,
    crate::exceptions::CF_EXCEPTION_HISTORY_HOURLY,
    crate::exceptions::CF_EXCEPTION_DIMS_HOURLY,
    crate::exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY,
];

/// The directory of shard `id`'s index under the node's data directory.
pub fn index_dir(data_dir: &Path, id: ShardId) -> PathBuf {
    data_dir.join("index").join(format!("shard-{:04}", id.0))
}

/// Uncompressed size of the `entries` column family's data blocks.
pub const ENTRIES_BLOCK_BYTES: usize = 16 << 10;

/// The column family of shard `id`'s entries (data format 12). One family per shard, because
/// entry keys begin with the shard: in a family shared by all shards, every flushed memtable
/// held each shard's newest keys, so its key range spanned all the level below it, and each
/// compaction into that level rewrote nearly all of it — in a 5-minute full-speed run, 1.5 GB
/// written for 0.3 GB kept, 59 s of CPU, and writes stalled at 20 level-0 files (BENCHMARKS.md,
/// issue 8, session 11). A shard's own family receives its keys in time order, so what a
/// compaction rewrites is mostly the new data.
pub fn entries_cf_name(id: ShardId) -> String {
    format!("{CF_ENTRIES}-{:04}", id.0)
}

/// Moves shard `id`'s rows from the `entries` family all shards shared before data format 12
/// into the shard's own ([`entries_cf_name`]), then deletes them from the shared one and
/// compacts its range away; returns the rows moved. Run before the shard opens. Idempotent: a
/// crash part-way leaves the shared rows in place (they are deleted only once all are
/// copied), and the next start copies them again over the same keys.
pub fn move_shared_entries(db: &DB, id: ShardId) -> Result<u64> {
    let missing = |name: &str| Error::MissingColumnFamily(name.into());
    let shared = db
        .cf_handle(CF_ENTRIES)
        .ok_or_else(|| missing(CF_ENTRIES))?;
    let own_name = entries_cf_name(id);
    let own = db.cf_handle(&own_name).ok_or_else(|| missing(&own_name))?;
    let (from, end) = (keys::shard_prefix(id), keys::shard_end(id));
    Ok(veil_raft::move_key_range(db, shared, own, &from, &end)?)
}

/// Returns the column families this crate needs in the node's RocksDB for `shards` shards (ids
/// `0..shards`), each with RocksDB's own block cache.
pub fn column_families(shards: u32) -> Vec<ColumnFamilyDescriptor> {
    column_families_with(None, shards)
}

/// [`column_families`] sharing `cache` as their block cache: uncompressed blocks of entries
/// (a query's hits) and exception counters (filtered rankings read the window's rows) stay in
/// memory across questions (issue 7's directory, a day's ranking filtered by level: 1.4 s →
/// 0.49 s with 1 GiB), where each family's own default cache holds a few MB.
pub fn column_families_with(
    cache: Option<&rocksdb::Cache>,
    shards: u32,
) -> Vec<ColumnFamilyDescriptor> {
    let entries = (0..shards).map(|id| entries_cf_name(ShardId(id)));
    DATA_COLUMN_FAMILIES
        .into_iter()
        .chain([CF_SHARD_META, CF_ENTRIES])
        .map(String::from)
        .chain(entries)
        .map(|name| {
            let mut opts = data_options();
            let mut table = rocksdb::BlockBasedOptions::default();
            if let Some(cache) = cache {
                table.set_block_cache(cache);
            }
            if name.starts_with(CF_ENTRIES) {
                // Entries are read a key at a time (a query's hits) or by the hour; 16 KiB
                // blocks give zstd four times RocksDB's default 4 KiB of context per block:
                // 0.132 → 0.122 bytes per raw byte in BENCHMARKS.md's run (issue 8).
                table.set_block_size(ENTRIES_BLOCK_BYTES);
            }
            opts.set_block_based_table_factory(&table);
            match name.as_str() {
                exceptions::CF_EXCEPTIONS
                | exceptions::CF_EXCEPTION_HISTORY
                | exceptions::CF_EXCEPTION_HISTORY_HOURLY
                | exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY => {
                    opts.set_merge_operator_associative("veil.counter", merge_counters)
                }
                exceptions::CF_EXCEPTION_HOURLY => {
                    opts.set_merge_operator_associative("veil.numbers", merge_numbers)
                }
                exceptions::CF_EXCEPTION_DIMS_HOURLY => {
                    opts.set_merge_operator_associative("veil.dims_numbers", merge_dims_rows)
                }
                _ => {}
            }
            ColumnFamilyDescriptor::new(name, opts)
        })
        .collect()
}

/// The merge operator of the counter column families: apply writes each row's delta as a merge
/// operand instead of reading, merging and rewriting the row, and RocksDB folds operands into
/// the row on reads and compactions. `Counter::merge` is associative and commutative (sums,
/// minima, maxima, bounded sorted unions), so any grouping RocksDB picks gives the row a
/// read-modify-write would have. An operand that does not decode fails the merge, which RocksDB
/// reports as corruption on the read.
fn merge_counters(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    fold(existing, operands, exceptions::decode_counter).map(|c| exceptions::encode_counter(&c))
}

/// [`merge_counters`] for the 24-byte numbers of `exception_hourly`.
fn merge_numbers(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    fold(existing, operands, exceptions::decode_numbers)
        .map(|n| exceptions::encode_numbers(&n).to_vec())
}

/// [`merge_counters`] for the packed rows of `exception_dims_hourly`: every row's items
/// gathered, then sorted and merged once (an hour still in a memtable can hold an operand per
/// counter write).
fn merge_dims_rows(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut parts = existing.into_iter().chain(operands.iter());
    let mut row = exceptions::DimsRow::decode(parts.next()?)?;
    let mut more = Vec::new();
    for part in parts {
        let (_, items) = exceptions::dims_row_parts(part)?;
        more.extend(exceptions::dims_items(items)?);
    }
    row.add_items(more);
    Some(row.encode())
}

/// The existing value (if any) and then every operand, decoded and added up in order; None
/// when one does not decode.
fn fold<V: exceptions::Mergeable>(
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
    decode: fn(&[u8]) -> Option<V>,
) -> Option<V> {
    let mut parts = existing.into_iter().chain(operands.iter());
    let mut sum = decode(parts.next()?)?;
    for part in parts {
        sum.merge_from(&decode(part)?);
    }
    Some(sum)
}

/// Options of the shard's column families: RocksDB's default compression (Snappy) where
/// flushes and early compactions write, zstd with a trained dictionary at the bottommost level,
/// where the data settles (BENCHMARKS.md, issue 8: 0.53 → 0.28 bytes per raw byte).
fn data_options() -> Options {
    let mut opts = Options::default();
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    // A dictionary per SST file, trained on samples of its blocks: entries repeat their
    // services, templates and field names from block to block.
    opts.set_bottommost_compression_options(-14, 3, 0, 16 << 10, true);
    opts.set_bottommost_zstd_max_train_bytes(100 * (16 << 10), true);
    opts
}

/// What [`Shard::exception_filtered_history`] asks, handed to its parts.
struct HistoryQuestion<'a> {
    exception_id: u64,
    filter: &'a CounterFilter,
    bucket_minutes: Option<i64>,
    first_only: bool,
}

/// The configuration of a shard, given by the node.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The node's data directory; the shard keeps its index and snapshots below it.
    pub data_dir: PathBuf,
    /// Memory for the shard's tantivy writer, in bytes.
    pub index_heap_bytes: usize,
    /// The cluster's shard map, to check that applied entries belong here.
    pub shard_map: ShardMap,
    /// Most per-exception numbers the shard's top-K block cache holds (0: no cache).
    pub rollup_cache_entries: usize,
    /// When the shard's index commits are written to disk.
    pub index_persist: crate::index::PersistPolicy,
    /// Most commands this node proposed that the shard keeps decoded until it applies them
    /// (see [`crate::Proposals`]); the node's Raft entries in flight per shard. 0: apply
    /// decodes every entry.
    pub proposals_kept: usize,
    /// Most exception counter rows the shard sums in memory before it writes them (see
    /// [`Shard::flush_counters`]); 0 or 1 writes every apply's rows with the apply.
    pub counter_rows_pending_max: usize,
}

/// Exception counter rows applied but not yet written, summed across Raft entries: most rows
/// repeat (the same exception of the same service in the same minute), and each written row is
/// a merge operand in six column families.
#[derive(Default)]
pub(crate) struct PendingCounters {
    rows: HashMap<[u8; 28], exceptions::Counter>,
    /// The Raft index up to which the stored counters include every applied entry; the index
    /// queue keeps its records above it, to recount them after a crash.
    counted_up_to: u64,
}

/// The state the shard has applied, persisted with every applied Raft entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The current snapshot: its metadata, and the file holding it if an earlier version built it
/// as a file (snapshots are the state machine itself now; see `state_machine.rs`).
#[derive(Debug, Clone)]
pub(crate) struct SnapshotRecord {
    pub meta: veil_raft::alias::SnapshotMeta,
    pub legacy_file: Option<PathBuf>,
}

/// How snapshot records were stored (tag `META_SNAPSHOT_FILE`) while snapshots were files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LegacySnapshotRecord {
    pub meta: veil_raft::alias::SnapshotMeta,
    pub file: PathBuf,
}

/// Monitoring numbers of a shard (see [`Shard::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Last Raft index applied (stored in RocksDB).
    pub applied_index: u64,
    /// Last Raft index whose entries are searchable (in a tantivy commit).
    pub searchable_index: u64,
    /// Documents searchable.
    pub searchable_docs: u64,
    /// Bytes of the shard's tantivy directory (on disk).
    pub index_bytes: u64,
    /// Bytes of index files held in memory until the next persist.
    pub index_ram_bytes: u64,
    /// Last Raft index whose documents are in the index on disk (a restart reindexes above).
    pub persisted_index: u64,
    /// Exception counter rows summed in memory, not yet written (see [`Shard::flush_counters`]).
    pub counter_rows_pending: u64,
}

/// One shard of the node.
pub struct Shard {
    id: ShardId,
    db: Arc<DB>,
    /// The name of the column family of this shard's entries.
    entries_cf: String,
    index: ShardIndex,
    config: ShardConfig,
    pub(crate) applied: Mutex<AppliedState>,
    /// Per-block exception numbers for unfiltered rankings (see `rollups`).
    pub(crate) rollups: RollupCache,
    /// Commands proposed on this node, for apply to take back instead of decoding.
    proposals: Proposals,
    /// Counter rows applied and not yet written. Taken after `applied` when both are held.
    counters: Mutex<PendingCounters>,
    /// Which service each exception belongs to. Taken after `counters` when both are held.
    catalog: Mutex<Catalog>,
    /// Held while the index's writer must not change hands: starting or stopping indexing, and
    /// a snapshot install (which indexes what it installs). Taken before `applied`.
    index_mode: Mutex<()>,
}

/// The service of every exception a shard counted: an exception id is a hash of service and
/// type, so a ranking filtered by service alone keeps the ids whose service is asked for.
/// Learned on first use from the exception-first hourly history (one seek per exception), then
/// kept current by every counter write.
#[derive(Default)]
struct Catalog {
    built: bool,
    services: exceptions::IdMap<Arc<str>>,
    /// One copy of each service name.
    names: HashSet<Arc<str>>,
}

impl Catalog {
    /// Records that exception `id` is of `service`; returns the catalog's copy of the name.
    fn learn(&mut self, id: u64, service: &str) -> Arc<str> {
        if let Some(known) = self.services.get(&id) {
            return known.clone();
        }
        let name = match self.names.get(service) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(service);
                self.names.insert(n.clone());
                n
            }
        };
        self.services.insert(id, name.clone());
        name
    }

    fn clear(&mut self) {
        *self = Catalog::default();
    }
}

impl Shard {
    /// Opens shard `id`: loads its applied state and indexes every applied entry that the last
    /// tantivy commit lacks.
    pub fn open(id: ShardId, db: Arc<DB>, config: ShardConfig) -> Result<Arc<Self>> {
        let index = ShardIndex::open(
            id,
            &index_dir(&config.data_dir, id),
            config.index_heap_bytes,
            config.index_persist,
        )?;
        let shard = Shard {
            id,
            db,
            entries_cf: entries_cf_name(id),
            index,
            rollups: RollupCache::new(config.rollup_cache_entries),
            proposals: Proposals::new(config.proposals_kept),
            config,
            applied: Mutex::new(AppliedState::default()),
            counters: Mutex::new(PendingCounters::default()),
            index_mode: Mutex::new(()),
            catalog: Mutex::new(Catalog::default()),
        };
        let applied = shard
            .read_meta::<AppliedState>(META_APPLIED)?
            .unwrap_or_default();
        *shard.applied_lock() = applied;
        shard.remove_stray_snapshot_files()?;
        shard.recount_counters()?;
        shard.catch_up_index()?;
        Ok(Arc::new(shard))
    }

    /// Returns the shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Commands proposed on this node and not applied yet: a proposer leaves each command it
    /// encodes here, and apply takes it back instead of decoding the Raft entry's bytes.
    pub fn proposals(&self) -> &Proposals {
        &self.proposals
    }

    pub(crate) fn applied_lock(&self) -> std::sync::MutexGuard<'_, AppliedState> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::MissingColumnFamily(name.into()))
    }

    /// The column family of this shard's entries ([`entries_cf_name`]).
    pub(crate) fn entries_cf(&self) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(&self.entries_cf)
            .ok_or_else(|| Error::MissingColumnFamily(self.entries_cf.clone()))
    }

    pub(crate) fn read_meta<T: for<'de> Deserialize<'de>>(&self, tag: u8) -> Result<Option<T>> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(CF_SHARD_META)?, keys::meta_key(self.id, tag))?
        else {
            return Ok(None);
        };
        bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                shard_id: self.id,
                reason: format!("shard meta {tag}: {e}"),
            })
    }

    fn put_meta<T: Serialize>(&self, batch: &mut WriteBatch, tag: u8, value: &T) -> Result<()> {
        let bytes =
            bincode::serialize(value).expect("serializing shard meta into memory cannot fail");
        batch.put_cf(self.cf(CF_SHARD_META)?, keys::meta_key(self.id, tag), bytes);
        Ok(())
    }

    /// Records a Raft entry that changes no data (blank or membership) as applied.
    pub(crate) fn apply_state_only(
        &self,
        log_id: LogId,
        membership: Option<StoredMembership>,
    ) -> Result<()> {
        let mut state = self.applied_lock();
        let mut next = state.clone();
        next.last_applied = Some(log_id);
        if let Some(m) = membership {
            next.membership = m;
        }
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, META_APPLIED, &next)?;
        self.db.write(batch)?;
        *state = next;
        Ok(())
    }

    /// Applies a command committed at `log_id`: stores the entries whose log_id is new, indexes
    /// them, and records the applied state, all in one RocksDB write batch.
    pub(crate) fn apply_command(
        &self,
        log_id: LogId,
        command: ShardCommand,
    ) -> Result<Vec<EntryOutcome>> {
        let (entries, minted) = match command {
            ShardCommand::Append(entries) => (entries, false),
            ShardCommand::AppendMinted(entries) => (entries, true),
        };
        let raft_index = log_id.index();
        let (cf_entries, cf_ids, cf_queue) = (
            self.entries_cf()?,
            self.cf(CF_ENTRY_IDS)?,
            self.cf(CF_INDEX_QUEUE)?,
        );
        let mut state = self.applied_lock();
        if let Some(prev) = &state.last_applied {
            assert!(
                prev.index() < raft_index,
                "shard {} applied index must increase: {} then {}",
                self.id,
                prev.index(),
                raft_index
            );
        }
        let mut batch = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut new_entries = Vec::with_capacity(entries.len());
        let mut seen = HashSet::with_capacity(if minted { 0 } else { entries.len() });
        let mut queued = Vec::with_capacity(entries.len() * keys::ENTRY_KEY_LEN);
        let mut writes = Vec::with_capacity(entries.len());
        let mut id_value = [0u8; 8 + keys::ENTRY_KEY_LEN];
        id_value[..8].copy_from_slice(&raft_index.to_be_bytes());
        for entry in &entries {
            let expected = self
                .config
                .shard_map
                .shard_for(&entry.service, entry.hour());
            if expected != self.id {
                return Err(Error::Corrupt {
                    shard_id: self.id,
                    reason: format!("entry of raft index {raft_index} routes to shard {expected}"),
                });
            }
            let key = keys::entry_key(self.id, entry.timestamp_us, entry.log_id);
            // `AppendMinted` carries log_ids new by construction. `Append` checks each: a keyed
            // log_id in the idempotency set; a minted one (a forwarded batch retried after an
            // unknown outcome) by its exact entries key, which its log_id and time fix.
            if !minted
                && (!seen.insert(entry.log_id)
                    || if keys::findable_by_time(entry.log_id, entry.timestamp_us) {
                        self.db.get_pinned_cf(cf_entries, key)?.is_some()
                    } else {
                        self.db
                            .get_pinned_cf(cf_ids, keys::id_key(self.id, entry.log_id))?
                            .is_some()
                    })
            {
                outcomes.push(EntryOutcome::Duplicate);
                continue;
            }
            queued.extend_from_slice(&key);
            writes.push((key, entry));
            outcomes.push(EntryOutcome::Accepted);
            new_entries.push(entry);
        }
        // In key order, each column family's run: RocksDB's skiplist memtable inserts a key
        // after the one it just inserted almost for free (it keeps the insert position), while
        // unordered keys each pay a full descent (measured: memtable inserts were ~12 % of
        // ingest CPU).
        writes.sort_unstable_by_key(|w| w.0);
        for (key, entry) in &writes {
            batch.put_cf(cf_entries, key, encode_entry(entry));
        }
        // Idempotency rows only for log_ids a look-up cannot find by their time (keyed ones).
        let mut id_rows: Vec<_> = writes
            .iter()
            .filter(|(_, e)| !keys::findable_by_time(e.log_id, e.timestamp_us))
            .map(|(key, e)| (keys::id_key(self.id, e.log_id), key))
            .collect();
        id_rows.sort_unstable_by_key(|r| r.0);
        for (id_key, key) in id_rows {
            id_value[8..].copy_from_slice(key);
            batch.put_cf(cf_ids, id_key, id_value);
        }
        if !queued.is_empty() {
            batch.put_cf(cf_queue, keys::queue_key(self.id, raft_index, 0), queued);
        }
        let rows = exceptions::rows_of(self.id, new_entries.iter().copied());
        let mut next = state.clone();
        next.last_applied = Some(log_id);
        self.put_meta(&mut batch, META_APPLIED, &next)?;
        let mut pending = self.counters_lock();
        // Past the bound, this apply writes what is pending with its own rows.
        let flush = !rows.is_empty()
            && pending.rows.len() + rows.len() >= self.config.counter_rows_pending_max;
        if flush {
            self.add_counters(&mut batch, &pending.rows)?;
            self.add_counters(&mut batch, &rows)?;
            self.put_meta(&mut batch, META_COUNTED, &raft_index)?;
        }
        self.db.write(batch)?;
        if flush {
            // Only now, with the counters written: cached blocks take the new numbers, and a
            // reader that began before caches nothing.
            self.rollups.applied(&exceptions::numbers_of(&pending.rows));
            self.rollups.applied(&exceptions::numbers_of(&rows));
            self.learn_services(&pending.rows);
            self.learn_services(&rows);
            pending.rows.clear();
            pending.counted_up_to = raft_index;
        } else {
            for (key, counter) in rows {
                exceptions::merge_into(&mut pending.rows, key, counter);
            }
        }
        drop(pending);
        *state = next;
        // Read under the applied lock: `start_indexing` indexes what was applied before it
        // took the lock, and every apply after it finds the flag set.
        let indexing = self.index.is_indexing();
        drop(state);
        if indexing {
            self.index.add(raft_index, &new_entries)?;
        }
        Ok(outcomes)
    }

    fn counters_lock(&self) -> std::sync::MutexGuard<'_, PendingCounters> {
        // Poisoned only by a panic mid-update, which aborts the node in release builds.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the exception counter rows applied so far and not yet written, with the Raft
    /// index they count up to. Readers of counters call it first, so they see every entry
    /// applied before they began; the node calls it on the index commit ticker and at shutdown.
    /// Writes nothing when the stored counters are already up to date.
    pub fn flush_counters(&self) -> Result<()> {
        let state = self.applied_lock();
        let applied = state.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        let mut pending = self.counters_lock();
        if pending.rows.is_empty() && pending.counted_up_to >= applied {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.add_counters(&mut batch, &pending.rows)?;
        self.put_meta(&mut batch, META_COUNTED, &applied)?;
        self.db.write(batch)?;
        self.rollups.applied(&exceptions::numbers_of(&pending.rows));
        self.learn_services(&pending.rows);
        pending.rows.clear();
        pending.counted_up_to = applied;
        Ok(())
    }

    /// Forgets the counter rows not yet written and the exceptions' services (a snapshot
    /// install replaces what they count).
    pub(crate) fn drop_pending_counters(&self) {
        self.counters_lock().rows.clear();
        self.catalog_lock().clear();
    }

    fn catalog_lock(&self) -> std::sync::MutexGuard<'_, Catalog> {
        // Poisoned only by a panic mid-insert; the map stays a valid (partial) catalog, and a
        // missing id is looked up again.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the services of written counter rows' exceptions (once the catalog is built;
    /// until then the build reads them from RocksDB).
    fn learn_services(&self, rows: &HashMap<[u8; 28], exceptions::Counter>) {
        let mut catalog = self.catalog_lock();
        if !catalog.built {
            return;
        }
        for (key, c) in rows {
            if let Some(id) = exceptions::key_exception_id(key) {
                catalog.learn(id, &c.service);
            }
        }
    }

    /// Reads the exception catalog (exception id → service) if it is not read yet, so that the
    /// first ranking filtered by service does not wait for it. Returns the exceptions it knows.
    pub fn read_catalog(&self) -> Result<usize> {
        Ok(self.built_catalog()?.services.len())
    }

    /// The catalog, built from the exception-first hourly history if it is not yet: one seek
    /// per exception the shard counted.
    fn built_catalog(&self) -> Result<std::sync::MutexGuard<'_, Catalog>> {
        let mut catalog = self.catalog_lock();
        if catalog.built {
            return Ok(catalog);
        }
        let end = keys::shard_end(self.id);
        let mut it = self
            .db
            .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_HISTORY_HOURLY)?);
        it.seek(exceptions::history_key(self.id, 0, i64::MIN));
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key >= end.as_slice() {
                break;
            }
            let id = exceptions::history_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
            let service =
                exceptions::counter_service(value).ok_or_else(|| self.corrupt_counter())?;
            catalog.learn(id, service);
            let Some(next) = id.checked_add(1) else {
                break;
            };
            it.seek(exceptions::history_key(self.id, next, i64::MIN));
        }
        it.status()?;
        catalog.built = true;
        Ok(catalog)
    }

    /// Looks up the service of an exception the catalog lacks (its rows were written after the
    /// catalog was read and before the write told it).
    fn service_of(&self, catalog: &mut Catalog, id: u64) -> Result<Arc<str>> {
        if let Some(s) = catalog.services.get(&id) {
            return Ok(s.clone());
        }
        let from = exceptions::history_key(self.id, id, i64::MIN);
        let mut it = self
            .db
            .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_HISTORY_HOURLY)?);
        it.seek(from);
        match (it.key(), it.value()) {
            (Some(key), Some(value)) if key.get(..12) == Some(&from[..12]) => {
                let service =
                    exceptions::counter_service(value).ok_or_else(|| self.corrupt_counter())?;
                Ok(catalog.learn(id, service))
            }
            _ => {
                it.status()?;
                Err(Error::Corrupt {
                    shard_id: self.id,
                    reason: format!("exception {id:016x} is counted but has no history"),
                })
            }
        }
    }

    /// Puts the counter mark `up_to` in `batch`; call [`Self::counted`] once it is written.
    pub(crate) fn put_counted(&self, batch: &mut WriteBatch, up_to: u64) -> Result<()> {
        self.put_meta(batch, META_COUNTED, &up_to)
    }

    /// Records that the stored counters count every entry applied up to `up_to`.
    pub(crate) fn counted(&self, up_to: u64) {
        self.counters_lock().counted_up_to = up_to;
    }

    /// After a crash, counts the entries applied above the last counter write from their index
    /// queue records (kept until both the index persist and the counters pass them) and writes
    /// the counts. A shard without the mark (new, or written when every apply wrote its own
    /// counters) has every applied entry counted.
    fn recount_counters(&self) -> Result<()> {
        let applied = self.applied_index();
        let Some(counted) = self.read_meta::<u64>(META_COUNTED)? else {
            let mut batch = WriteBatch::default();
            self.put_meta(&mut batch, META_COUNTED, &applied)?;
            self.db.write(batch)?;
            self.counters_lock().counted_up_to = applied;
            return Ok(());
        };
        self.counters_lock().counted_up_to = counted;
        if counted >= applied {
            return Ok(());
        }
        let mut rows = HashMap::new();
        let mut count = 0usize;
        self.for_each_queued(counted.saturating_add(1), u64::MAX, |_, entries| {
            count += entries.len();
            for (key, c) in exceptions::rows_of(self.id, entries.iter()) {
                exceptions::merge_into(&mut rows, key, c);
            }
            Ok(())
        })?;
        self.counters_lock().rows = rows;
        self.flush_counters()?;
        tracing::info!(shard_id = %self.id, entry_count = count, raft_index = applied, "exception counters recounted above the last counter write");
        Ok(())
    }

    /// Adds counter rows to what is stored: one merge operand per row in `batch` (see
    /// [`merge_counters`]), no reads.
    pub(crate) fn add_counters(
        &self,
        batch: &mut WriteBatch,
        rows: &HashMap<[u8; 28], exceptions::Counter>,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let history = exceptions::history_of(self.id, rows);
        let history_hourly = exceptions::history_hourly_of(self.id, &history);
        let hourly = exceptions::hourly_of(self.id, rows);
        self.merge_rows(batch, CF_EXCEPTIONS, rows)?;
        self.merge_rows(batch, exceptions::CF_EXCEPTION_HISTORY, &history)?;
        self.merge_rows(
            batch,
            exceptions::CF_EXCEPTION_HISTORY_HOURLY,
            &history_hourly,
        )?;
        let cf = self.cf(exceptions::CF_EXCEPTION_HOURLY)?;
        for (key, numbers) in hourly {
            batch.merge_cf(cf, key, exceptions::encode_numbers(&numbers));
        }
        let cf = self.cf(exceptions::CF_EXCEPTION_DIMS_HOURLY)?;
        for (key, row) in exceptions::dims_hourly_of(self.id, rows) {
            batch.merge_cf(cf, key, row.encode());
        }
        self.merge_rows(
            batch,
            exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY,
            &exceptions::dims_history_hourly_of(self.id, rows),
        )?;
        Ok(())
    }

    fn merge_rows<const N: usize>(
        &self,
        batch: &mut WriteBatch,
        cf_name: &'static str,
        rows: &HashMap<[u8; N], exceptions::Counter>,
    ) -> Result<()> {
        let cf = self.cf(cf_name)?;
        for (key, counter) in rows {
            batch.merge_cf(cf, key, exceptions::encode_counter(counter));
        }
        Ok(())
    }

    fn decode_counter(&self, bytes: &[u8]) -> Result<exceptions::Counter> {
        exceptions::decode_counter(bytes).ok_or_else(|| self.corrupt_counter())
    }

    /// Calls `f` with every `(key, value)` of `cf_name` in `from..to`.
    fn scan(
        &self,
        cf_name: &'static str,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.scan_cf(self.cf(cf_name)?, from, to, f)
    }

    /// [`Self::scan`] over a family given by its handle.
    fn scan_cf(
        &self,
        cf: &ColumnFamily,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        // The raw iterator lends each key and value instead of copying them into new boxes.
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        scan_range(&mut it, from, to, f)
    }

    fn corrupt_counter(&self) -> Error {
        Error::Corrupt {
            shard_id: self.id,
            reason: "malformed exception counter".into(),
        }
    }

    /// Count, first and last seen per exception over minutes `start_minute..end_minute`, all
    /// dimensions: [`Self::exception_window_numbers`] added up.
    pub fn exception_numbers(
        &self,
        start_minute: i64,
        end_minute: i64,
    ) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        let parts = self.exception_window_numbers(start_minute, end_minute)?;
        let mut out = parts.edges;
        if let Some(hours) = parts.hours {
            for (id, n) in hours.numbers.iter() {
                exceptions::merge_into(&mut out, *id, *n);
            }
        }
        Ok(out)
    }

    /// Count, first and last seen per exception over minutes `start_minute..end_minute`, all
    /// dimensions, reading only numbers: the ranking pass of an unfiltered top-K, in two parts.
    /// The window's whole hours are one span, summed from whole six-hour blocks and hours of the
    /// hourly rollups; the rest (whole ten-minute blocks from the minute rows, single minutes at
    /// the ends) is its edges. Blocks and the span go through the shard's block cache.
    pub fn exception_window_numbers(
        &self,
        start_minute: i64,
        end_minute: i64,
    ) -> Result<WindowNumbers> {
        self.flush_counters()?;
        let mut edges = exceptions::IdMap::with_capacity_and_hasher(1024, Default::default());
        let (minutes, blocks) = rollups::plan(start_minute, end_minute);
        for range in minutes {
            for (id, n) in self.read_minutes(range.start, range.end)? {
                exceptions::merge_into(&mut edges, id, n);
            }
        }
        let (hour_blocks, ten_blocks): (Vec<Block>, Vec<Block>) = blocks
            .into_iter()
            .partition(|b| matches!(b, Block::Hour(_) | Block::Six(_)));
        for block in ten_blocks {
            let (numbers, _) = self.cached_block(block, || self.read_block(block))?;
            for (id, n) in numbers.iter() {
                exceptions::merge_into(&mut edges, *id, *n);
            }
        }
        let first = hour_blocks.iter().map(|b| b.minutes().start).min();
        let last = hour_blocks.iter().map(|b| b.minutes().end).max();
        let hours = match (first, last) {
            (Some(first), Some(last)) => {
                let span = Block::Hours(first / 60, last / 60);
                let cached = self.cached_block(span, || {
                    let mut sum = exceptions::IdMap::default();
                    for &block in &hour_blocks {
                        let (part, _) = self.cached_block(block, || self.read_block(block))?;
                        for (id, n) in part.iter() {
                            exceptions::merge_into(&mut sum, *id, *n);
                        }
                    }
                    Ok(sum)
                })?;
                Some(HoursNumbers {
                    hours: first / 60..last / 60,
                    numbers: cached.0,
                    version: cached.1,
                })
            }
            _ => None,
        };
        Ok(WindowNumbers { hours, edges })
    }

    /// [`Self::exception_window_numbers`] of the exceptions of `services` only: the ranking pass
    /// of a top-K filtered by service alone, from the same cached blocks and rollups (an
    /// exception id names its service, see `Catalog`). The whole hours come back uncached
    /// (version None).
    pub fn exception_window_numbers_of(
        &self,
        start_minute: i64,
        end_minute: i64,
        services: &[String],
    ) -> Result<WindowNumbers> {
        let all = self.exception_window_numbers(start_minute, end_minute)?;
        let mut catalog = self.built_catalog()?;
        let mut keep = |numbers: &exceptions::IdMap<exceptions::Numbers>| {
            let mut out = exceptions::IdMap::default();
            for (id, n) in numbers {
                let service = self.service_of(&mut catalog, *id)?;
                if services.iter().any(|s| **s == *service) {
                    out.insert(*id, *n);
                }
            }
            Ok::<_, Error>(out)
        };
        let edges = keep(&all.edges)?;
        let hours = match all.hours {
            Some(h) => Some(HoursNumbers {
                hours: h.hours,
                numbers: Arc::new(keep(&h.numbers)?),
                version: None,
            }),
            None => None,
        };
        Ok(WindowNumbers { hours, edges })
    }

    /// A block's numbers from the cache, or read by `read` and handed to the cache; with the
    /// version they are cached under (None: the cache did not keep them).
    fn cached_block(
        &self,
        block: Block,
        read: impl FnOnce() -> Result<exceptions::IdMap<exceptions::Numbers>>,
    ) -> Result<(BlockNumbers, Option<u64>)> {
        match self.rollups.begin(block) {
            Ok(cached) => Ok((cached.numbers, Some(cached.version))),
            Err(reading) => match read() {
                Ok(read) => {
                    let numbers = Arc::new(read);
                    let version = self.rollups.finish(reading, numbers.clone());
                    Ok((numbers, version))
                }
                Err(e) => {
                    self.rollups.abandon(reading);
                    Err(e)
                }
            },
        }
    }

    /// The per-exception numbers of minutes `start..end`, from the minute rows.
    fn read_minutes(&self, start: i64, end: i64) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        let from = exceptions::minute_key(self.id, start);
        let to = exceptions::minute_key(self.id, end);
        self.read_numbers(CF_EXCEPTIONS, &from, &to)
    }

    /// The per-exception numbers of hours `start..end`, from the hourly rollups.
    fn read_hours(&self, start: i64, end: i64) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        let from = exceptions::hour_key(self.id, start);
        let to = exceptions::hour_key(self.id, end);
        self.read_numbers(exceptions::CF_EXCEPTION_HOURLY, &from, &to)
    }

    /// Sums the numbers of rows keyed `shard | time | exception_id | …` in `from..to`.
    fn read_numbers(
        &self,
        cf_name: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        let mut out = exceptions::IdMap::default();
        self.scan(cf_name, from, to, |key, value| {
            let id = exceptions::key_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
            let n = exceptions::decode_numbers(value).ok_or_else(|| self.corrupt_counter())?;
            exceptions::merge_into(&mut out, id, n);
            Ok(())
        })?;
        Ok(out)
    }

    /// The per-exception numbers of one block, from RocksDB.
    fn read_block(&self, block: Block) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        match block {
            Block::Ten(t) => self.read_minutes(t * 10, t * 10 + 10),
            Block::Hour(h) => self.read_hours(h, h + 1),
            Block::Six(x) => self.read_hours(x * 6, x * 6 + 6),
            Block::Hours(a, b) => self.read_hours(a, b),
            // Read with their filter, by `exception_filtered_numbers`.
            Block::Filtered(..) => Err(Error::InvalidQuery(
                "a filtered block is read with its filter".into(),
            )),
        }
    }

    /// One exception's counts over minutes `start_minute..end_minute`, all dimensions together,
    /// per bucket of `bucket_minutes` when given; and when it was first seen ever (this shard).
    pub fn exception_history(
        &self,
        exception_id: u64,
        start_minute: i64,
        end_minute: i64,
        bucket_minutes: Option<i64>,
    ) -> Result<(ExceptionCounts, Option<i64>)> {
        self.flush_counters()?;
        let cf = self.cf(exceptions::CF_EXCEPTION_HISTORY)?;
        let first_key = exceptions::history_key(self.id, exception_id, i64::MIN);
        let first_ever = match self
            .db
            .iterator_cf(cf, IteratorMode::From(&first_key, Direction::Forward))
            .next()
        {
            Some(item) => {
                let (key, value) = item?;
                if key.get(..12) == Some(&first_key[..12]) {
                    Some(self.decode_counter(&value)?.first_seen_us)
                } else {
                    None
                }
            }
            None => None,
        };
        let mut out = ExceptionCounts::default();
        if start_minute >= end_minute || first_ever.is_none() {
            return Ok((out, first_ever));
        }
        let from = exceptions::history_key(self.id, exception_id, start_minute);
        let to = exceptions::history_key(self.id, exception_id, end_minute);
        self.scan(
            exceptions::CF_EXCEPTION_HISTORY,
            &from,
            &to,
            |key, value| {
                let minute =
                    exceptions::history_minute(key).ok_or_else(|| self.corrupt_counter())?;
                out.add_row(
                    exception_id,
                    minute,
                    bucket_minutes,
                    self.decode_counter(value)?,
                );
                Ok(())
            },
        )?;
        Ok((out, first_ever))
    }

    /// Some exceptions' whole counters (samples, hosts, regions, users) over minutes
    /// `start_minute..end_minute`, all dimensions together: whole hours from the hourly history
    /// rollups, the minutes before the first and after the last whole hour from the history rows.
    pub fn exception_summary(
        &self,
        exception_ids: &[u64],
        start_minute: i64,
        end_minute: i64,
    ) -> Result<ExceptionCounts> {
        self.exception_parts_summary(exception_ids, exception_ids, start_minute, end_minute)
    }

    /// [`Self::exception_summary`] reading the window's whole hours only for `in_hours` and the
    /// minutes around them only for `in_edges`: a caller that knows from the ranking's numbers
    /// (written in the same batches) that an exception is absent from a part skips its seeks.
    pub fn exception_parts_summary(
        &self,
        in_hours: &[u64],
        in_edges: &[u64],
        start_minute: i64,
        end_minute: i64,
    ) -> Result<ExceptionCounts> {
        self.flush_counters()?;
        let mut out = ExceptionCounts::default();
        if start_minute >= end_minute {
            return Ok(out);
        }
        let (edges, hours) = match rollups::split(start_minute, end_minute, 60) {
            Some((head, hours, tail)) => ([head, tail], hours),
            None => ([start_minute..end_minute, 0..0], 0..0),
        };
        let mut add = |id: u64, value: &[u8]| -> Result<()> {
            let c = self.decode_counter(value)?;
            // Minute 0: no buckets are asked for, so the minute is not used.
            out.add_row(id, 0, None, c);
            Ok(())
        };
        // One iterator per column family for all the ranges: creating one costs more than a seek.
        if edges.iter().any(|r| !r.is_empty()) && !in_edges.is_empty() {
            let mut it = self
                .db
                .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_HISTORY)?);
            for &id in in_edges {
                for minutes in edges.iter().filter(|r| !r.is_empty()) {
                    let from = exceptions::history_key(self.id, id, minutes.start);
                    let to = exceptions::history_key(self.id, id, minutes.end);
                    scan_range(&mut it, &from, &to, |_, v| add(id, v))?;
                }
            }
        }
        if !hours.is_empty() && !in_hours.is_empty() {
            let mut it = self
                .db
                .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_HISTORY_HOURLY)?);
            for &id in in_hours {
                let from = exceptions::history_key(self.id, id, hours.start);
                let to = exceptions::history_key(self.id, id, hours.end);
                scan_range(&mut it, &from, &to, |_, v| add(id, v))?;
            }
        }
        Ok(out)
    }

    /// Count, first and last seen per exception over minutes `start_minute..end_minute`, of the
    /// counter rows that pass `filter`: the ranking pass of a top-K filtered by environment,
    /// region or level. Whole hours come from the hourly rows per dimensions
    /// ([`exceptions::CF_EXCEPTION_DIMS_HOURLY`]) through the block cache ([`Block::Filtered`],
    /// under a hash of the filter), so a sliding window asked again reads only its edges and
    /// the hours written since; the minutes at the edges from the minute rows, reading only
    /// each row's numbers and names (see [`exceptions::counter_names`]).
    pub fn exception_filtered_numbers(
        &self,
        start_minute: i64,
        end_minute: i64,
        filter: &CounterFilter,
    ) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        self.flush_counters()?;
        let mut out = exceptions::IdMap::default();
        if start_minute >= end_minute {
            return Ok(out);
        }
        let (edges, hours) = match rollups::split(start_minute, end_minute, 60) {
            Some((head, hours, tail)) => ([head, tail], hours),
            None => ([start_minute..end_minute, 0..0], 0..0),
        };
        for minutes in edges.into_iter().filter(|r| !r.is_empty()) {
            self.read_filtered(minutes.start, minutes.end, filter, &mut out)?;
        }
        let key = filter.key();
        for hour in hours {
            let (numbers, _) = self.cached_block(Block::Filtered(key, hour), || {
                self.read_filtered_hour(hour, filter)
            })?;
            for (id, n) in numbers.iter() {
                exceptions::merge_into(&mut out, *id, *n);
            }
        }
        Ok(out)
    }

    /// The numbers of hour `hour` that pass `filter`, from its rows per dimensions: rows whose
    /// environment, region and level do not pass are skipped undecoded; a service filter is
    /// answered by the catalog (a row holds every service's exceptions).
    fn read_filtered_hour(
        &self,
        hour: i64,
        filter: &CounterFilter,
    ) -> Result<exceptions::IdMap<exceptions::Numbers>> {
        let mut out = exceptions::IdMap::default();
        let mut catalog = if filter.services.is_empty() {
            None
        } else {
            Some(self.built_catalog()?)
        };
        let from = exceptions::dims_hourly_key(self.id, hour, 0);
        let to = exceptions::dims_hourly_key(self.id, hour + 1, 0);
        self.scan(
            exceptions::CF_EXCEPTION_DIMS_HOURLY,
            &from,
            &to,
            |_, value| {
                let (names, items) =
                    exceptions::dims_row_parts(value).ok_or_else(|| self.corrupt_counter())?;
                if !filter.admits_dimensions(names) {
                    return Ok(());
                }
                for (id, n) in
                    exceptions::dims_items(items).ok_or_else(|| self.corrupt_counter())?
                {
                    if !filter.admits_id(id) {
                        continue;
                    }
                    if let Some(catalog) = catalog.as_mut() {
                        if !filter.admits_service(&self.service_of(catalog, id)?) {
                            continue;
                        }
                    }
                    exceptions::merge_into(&mut out, id, n);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Adds the numbers of the minute rows of `start..end` that pass `filter` into `out`.
    fn read_filtered(
        &self,
        start: i64,
        end: i64,
        filter: &CounterFilter,
        out: &mut exceptions::IdMap<exceptions::Numbers>,
    ) -> Result<()> {
        let from = exceptions::minute_key(self.id, start);
        let to = exceptions::minute_key(self.id, end);
        self.scan(CF_EXCEPTIONS, &from, &to, |key, value| {
            let id = exceptions::key_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
            if !filter.admits_id(id) {
                return Ok(());
            }
            let names = exceptions::counter_names(value).ok_or_else(|| self.corrupt_counter())?;
            if filter.admits_names(id, names) {
                let n = exceptions::decode_numbers(value).ok_or_else(|| self.corrupt_counter())?;
                exceptions::merge_into(out, id, n);
            }
            Ok(())
        })
    }

    /// One exception's counter rows that pass `filter` over minutes `start_minute..end_minute`,
    /// merged (and per bucket of `bucket_minutes` when given): whole hours from its hourly
    /// counters per dimensions (when buckets do not cut hours), the minutes before and after
    /// them from its minute rows — however many other exceptions the window holds. With
    /// `first_only`, stops after the first minute or hour holding a row that passes (the first
    /// sighting under the filter: the earliest first seen of what it returns).
    pub fn exception_filtered_history(
        &self,
        exception_id: u64,
        start_minute: i64,
        end_minute: i64,
        filter: &CounterFilter,
        bucket_minutes: Option<i64>,
        first_only: bool,
    ) -> Result<ExceptionCounts> {
        self.flush_counters()?;
        let mut out = ExceptionCounts::default();
        if start_minute >= end_minute || !filter.admits_id(exception_id) {
            return Ok(out);
        }
        // Whole hours from the hourly counters per dimensions, unless buckets cut hours.
        let hourly = bucket_minutes.is_none_or(|b| b % 60 == 0);
        let (head, hours, tail) = match rollups::split(start_minute, end_minute, 60) {
            Some(parts) if hourly => parts,
            _ => (start_minute..end_minute, 0..0, 0..0),
        };
        let q = HistoryQuestion {
            exception_id,
            filter,
            bucket_minutes,
            first_only,
        };
        if self.filtered_minutes(&q, head, &mut out)? || self.filtered_hours(&q, hours, &mut out)? {
            return Ok(out);
        }
        self.filtered_minutes(&q, tail, &mut out)?;
        Ok(out)
    }

    /// [`Self::exception_filtered_history`] of minutes `minutes`: the minutes the exception
    /// occurred in come from its exception-first history, and only those minutes' rows of it
    /// are read from the minute rows. True when `first_only` and a row passed.
    fn filtered_minutes(
        &self,
        q: &HistoryQuestion<'_>,
        minutes: std::ops::Range<i64>,
        out: &mut ExceptionCounts,
    ) -> Result<bool> {
        if minutes.is_empty() {
            return Ok(false);
        }
        let id = q.exception_id;
        let to = exceptions::history_key(self.id, id, minutes.end);
        let mut history = self
            .db
            .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_HISTORY)?);
        let mut rows = self.db.raw_iterator_cf(self.cf(CF_EXCEPTIONS)?);
        history.seek(exceptions::history_key(self.id, id, minutes.start));
        while let Some(key) = history.key() {
            if key >= to.as_slice() {
                break;
            }
            let minute = exceptions::history_minute(key).ok_or_else(|| self.corrupt_counter())?;
            let first = exceptions::counter_key(self.id, minute, id, 0);
            let mut passed = false;
            rows.seek(first);
            while let (Some(k), Some(v)) = (rows.key(), rows.value()) {
                if k.get(..20) != Some(&first[..20]) {
                    break;
                }
                // The names first: rows of other dimensions are not decoded.
                let names = exceptions::counter_names(v).ok_or_else(|| self.corrupt_counter())?;
                if q.filter.admits_names(id, names) {
                    out.add_row(id, minute, q.bucket_minutes, self.decode_counter(v)?);
                    passed = true;
                }
                rows.next();
            }
            rows.status()?;
            if q.first_only && passed {
                return Ok(true);
            }
            history.next();
        }
        history.status()?;
        Ok(false)
    }

    /// [`Self::exception_filtered_history`] of whole hours `hours`, from the exception's hourly
    /// counters per dimensions (one range). True when `first_only` and a row passed (the whole
    /// hour is read: its rows of other dimensions may hold an earlier sighting).
    fn filtered_hours(
        &self,
        q: &HistoryQuestion<'_>,
        hours: std::ops::Range<i64>,
        out: &mut ExceptionCounts,
    ) -> Result<bool> {
        if hours.is_empty() {
            return Ok(false);
        }
        let id = q.exception_id;
        let from = exceptions::dims_history_key(self.id, id, hours.start, 0);
        let to = exceptions::dims_history_key(self.id, id, hours.end, 0);
        let mut passed_in: Option<i64> = None;
        let mut cf = self
            .db
            .raw_iterator_cf(self.cf(exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY)?);
        cf.seek(from);
        while let (Some(key), Some(value)) = (cf.key(), cf.value()) {
            if key >= to.as_slice() {
                break;
            }
            let hour = exceptions::dims_history_hour(key).ok_or_else(|| self.corrupt_counter())?;
            if q.first_only && passed_in.is_some_and(|h| h != hour) {
                return Ok(true);
            }
            let names = exceptions::counter_names(value).ok_or_else(|| self.corrupt_counter())?;
            if q.filter.admits_names(id, names) {
                out.add_row(id, hour * 60, q.bucket_minutes, self.decode_counter(value)?);
                passed_in = Some(hour);
            }
            cf.next();
        }
        cf.status()?;
        Ok(q.first_only && passed_in.is_some())
    }

    /// The exception counts of minutes `start_minute..end_minute` that pass `filter`, merged per
    /// exception, and per bucket of `bucket_minutes` (aligned to the epoch) when given: a full
    /// scan of the minute rows, decoding every admitted row. The node's questions use the
    /// rollups, caches and exception-first reads above; this is what tests check them against.
    pub fn exception_counts(
        &self,
        start_minute: i64,
        end_minute: i64,
        filter: &CounterFilter,
        bucket_minutes: Option<i64>,
    ) -> Result<ExceptionCounts> {
        self.flush_counters()?;
        let mut out = ExceptionCounts::default();
        if start_minute >= end_minute {
            return Ok(out);
        }
        let from = exceptions::minute_key(self.id, start_minute);
        let to = exceptions::minute_key(self.id, end_minute);
        self.scan(CF_EXCEPTIONS, &from, &to, |key, value| {
            let id = exceptions::key_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
            // The id is in the key: skip other exceptions without decoding their rows.
            if !filter.admits_id(id) {
                return Ok(());
            }
            let c = self.decode_counter(value)?;
            if filter.admits(id, &c) {
                let minute = exceptions::key_minute(key).ok_or_else(|| self.corrupt_counter())?;
                out.add_row(id, minute, bucket_minutes, c);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The last Raft index applied (0 before the first).
    fn applied_index(&self) -> u64 {
        self.applied_lock()
            .last_applied
            .as_ref()
            .map(|l| l.index())
            .unwrap_or(0)
    }

    /// Cheap numbers for monitoring: the applied and the searchable Raft index, the searchable
    /// documents, and the bytes of the shard's index directory.
    pub fn stats(&self) -> ShardStats {
        let applied_index = self.applied_index();
        let dir = index_dir(&self.config.data_dir, self.id);
        let index_bytes = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        ShardStats {
            applied_index,
            searchable_index: self.index.committed_up_to(),
            searchable_docs: self.index.searchable_docs(),
            index_bytes,
            index_ram_bytes: self.index.ram_bytes() as u64,
            persisted_index: self.index.persisted_up_to(),
            counter_rows_pending: self.counters_lock().rows.len() as u64,
        }
    }

    /// Writes the pending exception counters ([`Self::flush_counters`]) and commits the index if
    /// anything changed (what was applied becomes searchable), and when the persist policy says
    /// so writes the commit to disk and drops the queue records it and the counters cover.
    /// Returns the Raft index committed, or None when there was nothing to commit.
    pub fn commit_index(&self) -> Result<Option<u64>> {
        self.commit_index_covering(0)
    }

    /// [`Self::commit_index`], recording a commit that covers at least Raft index `up_to`:
    /// the caller knows every entry applied up to it was added (openraft reports an entry
    /// applied only once its apply, documents included, returned), so a replica that copies
    /// the commit knows it covers a read index that ends in entries without documents (blank
    /// or membership ones). Does nothing more on a replica that does not index.
    pub fn commit_index_covering(&self, up_to: u64) -> Result<Option<u64>> {
        self.flush_counters()?;
        let committed = self.index.commit_covering(up_to)?;
        if self.index.persist_due() {
            self.persist_index()?;
        }
        Ok(committed)
    }

    /// Rebuilds the shard's index from its entries in RocksDB — the entries are the truth, the
    /// index is derived from them — for an upgrade that changes the index's file format.
    /// Returns the entries indexed. Call it before the shard's Raft group starts, so no apply
    /// runs meanwhile.
    pub fn rebuild_index(&self) -> Result<usize> {
        const CHUNK: usize = 1024;
        self.index.clear()?;
        let applied = self.applied_index();
        let mut chunk: Vec<StoredEntry> = Vec::with_capacity(CHUNK);
        let mut count = 0;
        let mut add = |chunk: &mut Vec<StoredEntry>| -> Result<()> {
            self.index.add(applied, &chunk.iter().collect::<Vec<_>>())?;
            count += chunk.len();
            chunk.clear();
            Ok(())
        };
        let (from, end) = (keys::shard_prefix(self.id), keys::shard_end(self.id));
        self.scan_cf(self.entries_cf()?, &from, &end, |key, value| {
            chunk.push(self.decode_entry(key, value)?);
            if chunk.len() == CHUNK {
                add(&mut chunk)?;
            }
            Ok(())
        })?;
        add(&mut chunk)?;
        self.flush_index()?;
        Ok(count)
    }

    /// Writes the pending exception counters, commits the index and writes the commit to disk
    /// now (shutdown, snapshot install, compaction), dropping the queue records they cover.
    pub fn flush_index(&self) -> Result<()> {
        self.flush_counters()?;
        self.index.commit()?;
        self.persist_index()
    }

    fn persist_index(&self) -> Result<()> {
        let Some(up_to) = self.index.persist()? else {
            return Ok(());
        };
        // Records above the counter mark are kept too: a crash recounts them.
        let up_to = up_to.min(self.counters_lock().counted_up_to);
        let cf = self.cf(CF_INDEX_QUEUE)?;
        let from = keys::queue_key(self.id, 0, 0);
        let to = keys::queue_key(self.id, up_to.saturating_add(1), 0);
        self.db.delete_range_cf(cf, &from[..], &to[..])?;
        Ok(())
    }

    /// Calls `f` with the Raft index and the entries of every index queue record from Raft
    /// index `from` to `to` (both included), in Raft order.
    fn for_each_queued(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, Vec<StoredEntry>) -> Result<()>,
    ) -> Result<()> {
        if from > to {
            return Ok(());
        }
        let start = keys::queue_key(self.id, from, 0);
        let end = match to.checked_add(1) {
            Some(next) => keys::queue_key(self.id, next, 0).to_vec(),
            None => keys::shard_end(self.id).to_vec(),
        };
        let mut queued: Vec<(u64, Vec<u8>)> = Vec::new();
        self.scan(CF_INDEX_QUEUE, &start, &end, |key, value| {
            let raft_index = keys::queue_key_raft_index(key).ok_or_else(|| Error::Corrupt {
                shard_id: self.id,
                reason: "short index queue key".into(),
            })?;
            queued.push((raft_index, value.to_vec()));
            Ok(())
        })?;
        for (raft_index, record) in queued {
            if record.len() % keys::ENTRY_KEY_LEN != 0 {
                return Err(Error::Corrupt {
                    shard_id: self.id,
                    reason: format!("index queue record of raft index {raft_index} is cut short"),
                });
            }
            let mut entries = Vec::with_capacity(record.len() / keys::ENTRY_KEY_LEN);
            for key in record.chunks_exact(keys::ENTRY_KEY_LEN) {
                entries.push(self.get_by_key(key)?.ok_or_else(|| Error::Corrupt {
                    shard_id: self.id,
                    reason: format!("index queue names a missing entry (raft index {raft_index})"),
                })?);
            }
            f(raft_index, entries)?;
        }
        Ok(())
    }

    /// Adds the documents of the index queue's records from Raft index `from` to `to` to the
    /// index's writer. Returns how many entries they hold.
    fn index_queued(&self, from: u64, to: u64) -> Result<usize> {
        let mut count = 0usize;
        self.for_each_queued(from, to, |raft_index, entries| {
            count += entries.len();
            self.index
                .add(raft_index, &entries.iter().collect::<Vec<_>>())
        })?;
        Ok(count)
    }

    /// Indexes the applied entries recorded in the queue above the last tantivy commit.
    fn catch_up_index(&self) -> Result<()> {
        let committed = self.index.committed_up_to();
        let count = self.index_queued(committed.saturating_add(1), u64::MAX)?;
        if count == 0 {
            return Ok(());
        }
        self.flush_index()?;
        let up_to = self.index.persisted_up_to();
        tracing::info!(shard_id = %self.id, entry_count = count, raft_index = up_to, "index caught up with applied entries");
        Ok(())
    }

    /// Reads an entry by its `entries` key.
    pub fn get_by_key(&self, key: &[u8]) -> Result<Option<StoredEntry>> {
        match self.db.get_pinned_cf(self.entries_cf()?, key)? {
            Some(bytes) => Ok(Some(decode_entry(self.id, key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Returns the timestamp of the entry with `log_id`, if this shard holds it.
    pub fn lookup_log_id(&self, log_id: uuid::Uuid) -> Result<Option<i64>> {
        let Some(value) = self
            .db
            .get_pinned_cf(self.cf(CF_ENTRY_IDS)?, keys::id_key(self.id, log_id))?
        else {
            // A minted log_id has no row: seek the millisecond it carries.
            let Some(ms) = keys::minted_ms(log_id) else {
                return Ok(None);
            };
            let from = keys::entry_key_at(self.id, ms.saturating_mul(1000));
            let to = keys::entry_key_at(self.id, ms.saturating_mul(1000).saturating_add(1000));
            let mut found = None;
            self.scan_cf(self.entries_cf()?, &from, &to, |key, _| {
                if key.get(12..) == Some(log_id.as_bytes().as_slice()) {
                    found = keys::decode_entry_key(key).map(|(_, ts, _)| ts);
                }
                Ok(())
            })?;
            return Ok(found);
        };
        let key = value.get(8..).unwrap_or_default();
        let (_, ts, _) = keys::decode_entry_key(key).ok_or_else(|| Error::Corrupt {
            shard_id: self.id,
            reason: "bad entry_ids value".into(),
        })?;
        Ok(Some(ts))
    }

    /// Answers a query over the searchable entries of this shard.
    pub fn search(&self, query: &ShardQuery) -> Result<ShardHits> {
        let (total, hits, aggs) = self.index.search(query)?;
        let cf = self.entries_cf()?;
        let mut entries = Vec::with_capacity(hits.len());
        let keys: Vec<&[u8]> = hits.iter().map(|(_, k)| k.as_slice()).collect();
        for ((sort_key, key), value) in hits
            .iter()
            .zip(self.db.batched_multi_get_cf(cf, &keys, false))
        {
            let bytes = value?.ok_or_else(|| Error::Corrupt {
                shard_id: self.id,
                reason: format!(
                    "indexed entry missing from rocksdb ({} key bytes)",
                    key.len()
                ),
            })?;
            entries.push((*sort_key, decode_entry(self.id, key, &bytes)?));
        }
        Ok(ShardHits {
            total,
            entries,
            aggs,
        })
    }

    /// Rebuilds the hourly exception rollups (numbers and history) from the minute rows (a data
    /// directory written before they existed). Returns the rollup rows written.
    pub fn rebuild_hourly_rollups(&self) -> Result<usize> {
        self.flush_counters()?;
        let from = keys::shard_prefix(self.id);
        let to = keys::shard_end(self.id);
        // History: merge each exception's minute rows per hour, one exception at a time.
        let cf_history_hourly = self.cf(exceptions::CF_EXCEPTION_HISTORY_HOURLY)?;
        self.db
            .delete_range_cf(cf_history_hourly, &from[..], &to[..])?;
        let mut history_rows = 0;
        let mut current: Option<([u8; 20], exceptions::Counter)> = None;
        let mut batch = WriteBatch::default();
        self.scan(
            exceptions::CF_EXCEPTION_HISTORY,
            &from,
            &to,
            |key, value| {
                let id =
                    exceptions::history_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
                let minute =
                    exceptions::history_minute(key).ok_or_else(|| self.corrupt_counter())?;
                let hour_key = exceptions::history_key(self.id, id, minute.div_euclid(60));
                let c = self.decode_counter(value)?;
                match &mut current {
                    Some((k, acc)) if *k == hour_key => acc.merge(&c),
                    _ => {
                        if let Some((k, acc)) = current.replace((hour_key, c)) {
                            batch.put_cf(cf_history_hourly, k, exceptions::encode_counter(&acc));
                            history_rows += 1;
                        }
                    }
                }
                Ok(())
            },
        )?;
        if let Some((k, acc)) = current {
            batch.put_cf(cf_history_hourly, k, exceptions::encode_counter(&acc));
            history_rows += 1;
        }
        self.db.write(batch)?;
        let cf = self.cf(exceptions::CF_EXCEPTION_HOURLY)?;
        self.db.delete_range_cf(cf, &from[..], &to[..])?;
        let mut hourly: HashMap<[u8; 20], exceptions::Numbers> = HashMap::new();
        self.scan(CF_EXCEPTIONS, &from, &to, |key, value| {
            let id = exceptions::key_exception_id(key).ok_or_else(|| self.corrupt_counter())?;
            let minute = exceptions::key_minute(key).ok_or_else(|| self.corrupt_counter())?;
            let n = exceptions::decode_numbers(value).ok_or_else(|| self.corrupt_counter())?;
            exceptions::merge_into(
                &mut hourly,
                exceptions::hourly_key(self.id, minute.div_euclid(60), id),
                n,
            );
            Ok(())
        })?;
        let mut batch = WriteBatch::default();
        for (key, n) in &hourly {
            batch.put_cf(cf, key, exceptions::encode_numbers(n));
        }
        self.db.write(batch)?;
        let dims_rows = self.rebuild_dims_rollups()?;
        self.rollups.clear();
        self.catalog_lock().clear();
        Ok(hourly.len() + history_rows + dims_rows)
    }

    /// Rebuilds the hourly rollups per dimensions ([`exceptions::CF_EXCEPTION_DIMS_HOURLY`] and
    /// [`exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY`]) from the minute rows (a data directory
    /// written before they existed); call it before the shard's Raft group starts. Minute rows
    /// are in time order, so each hour's rows are built and written before the next hour's.
    /// Returns the rows written.
    pub fn rebuild_dims_rollups(&self) -> Result<usize> {
        self.flush_counters()?;
        let from = keys::shard_prefix(self.id);
        let to = keys::shard_end(self.id);
        let cf_numbers = self.cf(exceptions::CF_EXCEPTION_DIMS_HOURLY)?;
        let cf_history = self.cf(exceptions::CF_EXCEPTION_DIMS_HISTORY_HOURLY)?;
        for cf in [cf_numbers, cf_history] {
            self.db.delete_range_cf(cf, &from[..], &to[..])?;
        }
        let mut written = 0;
        // The current hour's minute rows, turned into both families' rows as a counter write
        // would when the hour is over.
        let mut hour_rows: HashMap<[u8; 28], exceptions::Counter> = HashMap::new();
        let mut current_hour = None;
        let mut write = |rows: &mut HashMap<[u8; 28], exceptions::Counter>| -> Result<()> {
            let mut batch = WriteBatch::default();
            for (key, row) in exceptions::dims_hourly_of(self.id, rows) {
                batch.put_cf(cf_numbers, key, row.encode());
                written += 1;
            }
            for (key, c) in exceptions::dims_history_hourly_of(self.id, rows) {
                batch.put_cf(cf_history, key, exceptions::encode_counter(&c));
                written += 1;
            }
            rows.clear();
            Ok(self.db.write(batch)?)
        };
        self.scan(CF_EXCEPTIONS, &from, &to, |key, value| {
            let minute = exceptions::key_minute(key).ok_or_else(|| self.corrupt_counter())?;
            if current_hour != Some(minute.div_euclid(60)) {
                write(&mut hour_rows)?;
                current_hour = Some(minute.div_euclid(60));
            }
            let key: [u8; 28] = key.try_into().map_err(|_| self.corrupt_counter())?;
            hour_rows.insert(key, self.decode_counter(value)?);
            Ok(())
        })?;
        write(&mut hour_rows)?;
        self.rollups.clear();
        Ok(written)
    }

    /// Merges the shard's index into one segment and writes it to disk; returns the segment
    /// count before.
    pub fn merge_index(&self) -> Result<usize> {
        let segments = self.index.merge_segments()?;
        self.flush_index()?;
        Ok(segments)
    }

    /// Returns how many entries the shard stores (a full scan: for tests and tools).
    pub fn entry_count(&self) -> Result<u64> {
        let cf = self.entries_cf()?;
        let from = keys::shard_prefix(self.id);
        let end = keys::shard_end(self.id);
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, _) = item?;
            if key.as_ref() >= end.as_slice() {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// A digest of the shard's entries as one consistent read sees them: the applied Raft
    /// index, the entry count and an xxh3-64 over every `(key, value)` in key order. Replicas
    /// that applied the same log hold the same bytes, so equal applied indexes must give equal
    /// digests (the cluster tests compare them).
    pub fn digest(&self) -> Result<ShardDigest> {
        let (applied, (hasher, entries)) = self.read_consistent(
            |_| Ok((xxhash_rust::xxh3::Xxh3::new(), 0u64)),
            |(hasher, entries), key, value| {
                hasher.update(&(key.len() as u32).to_be_bytes());
                hasher.update(key);
                hasher.update(&(value.len() as u32).to_be_bytes());
                hasher.update(value);
                *entries += 1;
                Ok(())
            },
        )?;
        Ok(ShardDigest {
            applied_index: applied.last_applied.map(|l| l.index()).unwrap_or(0),
            entries,
            digest: hasher.digest(),
        })
    }

    /// Reads one consistent view of the shard from a single RocksDB snapshot: its applied
    /// state, then every `(key, value)` of its entries in key order — what a snapshot file
    /// carries and a replica digest covers. `start` sees the applied state first and returns
    /// what `each` fills.
    pub(crate) fn read_consistent<T>(
        &self,
        start: impl FnOnce(&AppliedState) -> Result<T>,
        mut each: impl FnMut(&mut T, &[u8], &[u8]) -> Result<()>,
    ) -> Result<(AppliedState, T)> {
        let snap = self.db.snapshot();
        let applied: AppliedState = match snap.get_cf(
            self.cf(CF_SHARD_META)?,
            keys::meta_key(self.id, META_APPLIED),
        )? {
            Some(bytes) => bincode::deserialize(&bytes).map_err(|e| Error::Corrupt {
                shard_id: self.id,
                reason: format!("applied state: {e}"),
            })?,
            None => AppliedState::default(),
        };
        let mut acc = start(&applied)?;
        let (from, end) = (keys::shard_prefix(self.id), keys::shard_end(self.id));
        for item in snap.iterator_cf(
            self.entries_cf()?,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item?;
            if key.as_ref() >= end.as_slice() {
                break;
            }
            each(&mut acc, &key, &value)?;
        }
        Ok((applied, acc))
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Held for a change of who writes the index (see `index_mode`).
    pub(crate) fn index_mode_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.index_mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard's index: its commits, and copying them between replicas.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Makes this replica index what it applies (it leads the shard now): opens the index
    /// writer on its last commit, copied or its own, and indexes the entries applied above that
    /// commit from the index queue. Returns how many it indexed to catch up (0 when it was
    /// indexing already).
    pub fn start_indexing(&self) -> Result<usize> {
        let _mode = self.index_mode_lock();
        if self.index.is_indexing() {
            return Ok(0);
        }
        self.index.open_writer()?;
        // The bulk while applies go on (a replica whose copies failed for long may have much
        // to index), then the rest with applies held: the entries applied above the commit
        // are then exactly the queue's, and every apply after finds the flag set.
        let first = self.applied_index();
        let mut count = self.index_queued(self.index.committed_up_to().saturating_add(1), first)?;
        let applied = self.applied_lock();
        let last = applied
            .last_applied
            .as_ref()
            .map(|l| l.index())
            .unwrap_or(0);
        count += self.index_queued(first.saturating_add(1), last)?;
        self.index.set_indexing(true);
        Ok(count)
    }

    /// Makes this replica stop indexing (another replica leads the shard and this one copies
    /// its commits): what was indexed and not committed is dropped, the last commit stays
    /// searchable, and the entries above it wait in the index queue.
    pub fn stop_indexing(&self) {
        let _mode = self.index_mode_lock();
        {
            let _applied = self.applied_lock();
            if !self.index.is_indexing() {
                return;
            }
            self.index.set_indexing(false);
        }
        self.index.close_writer();
    }

    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.config
            .data_dir
            .join("snapshots")
            .join(format!("shard-{:04}", self.id.0))
    }

    /// The current snapshot: the newer of the live record and a file record left by an
    /// earlier version (an older build may have run on this directory after a newer one).
    pub(crate) fn snapshot_record(&self) -> Result<Option<SnapshotRecord>> {
        let live = self
            .read_meta::<veil_raft::alias::SnapshotMeta>(META_SNAPSHOT)?
            .map(|meta| SnapshotRecord {
                meta,
                legacy_file: None,
            });
        let file = self
            .read_meta::<LegacySnapshotRecord>(META_SNAPSHOT_FILE)?
            .map(|r| SnapshotRecord {
                meta: r.meta,
                legacy_file: Some(r.file),
            });
        Ok(match (live, file) {
            (Some(l), Some(f)) if f.meta.last_log_id > l.meta.last_log_id => Some(f),
            (Some(l), _) => Some(l),
            (None, f) => f,
        })
    }

    /// Deletes what the shard's snapshot directory holds besides the file an earlier version's
    /// record still names: copies written for a transfer that a crash cut short, and the
    /// half-written or superseded files of earlier versions. Runs at open, before any copy can
    /// be in use; the directory goes too once empty. Best effort: what cannot be removed only
    /// wastes disk, so it is logged and the shard opens.
    fn remove_stray_snapshot_files(&self) -> Result<()> {
        let dir = self.snapshot_dir();
        let Ok(read) = std::fs::read_dir(&dir) else {
            return Ok(()); // none yet (or unreadable: the files, if any, stay)
        };
        // By name: the record holds the path as the data directory was spelled back then.
        let keep = self
            .snapshot_record()?
            .and_then(|r| r.legacy_file)
            .and_then(|f| f.file_name().map(|n| n.to_owned()));
        let mut removed = 0;
        for path in read.filter_map(|item| item.ok().map(|i| i.path())) {
            if path.file_name() == keep.as_deref() {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(shard_id = %self.id, path = %path.display(), error = %e, "stray snapshot file not removed")
                }
            }
        }
        if keep.is_none() {
            // Fails, harmlessly, if something could not be removed.
            let _ = std::fs::remove_dir(&dir);
        }
        if removed > 0 {
            tracing::info!(shard_id = %self.id, files = removed, "stray snapshot files removed");
        }
        Ok(())
    }

    /// Records `meta` as the current snapshot and makes it durable: the WAL, which holds every
    /// apply up to `meta` and this record, is synced before this returns, so the Raft log may
    /// be purged behind it. A snapshot file an earlier version left is deleted.
    pub(crate) fn put_snapshot_record(&self, meta: &veil_raft::alias::SnapshotMeta) -> Result<()> {
        let previous = self.read_meta::<LegacySnapshotRecord>(META_SNAPSHOT_FILE)?;
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, META_SNAPSHOT, meta)?;
        batch.delete_cf(
            self.cf(CF_SHARD_META)?,
            keys::meta_key(self.id, META_SNAPSHOT_FILE),
        );
        self.db.write(batch)?;
        veil_raft::sync_wal(&self.db)
            .map_err(|why| crate::Error::io("fsyncing the WAL", std::io::Error::other(why)))?;
        if let Some(old) = previous {
            // No record names it any more; failing to delete it only wastes disk.
            let _ = std::fs::remove_file(old.file);
        }
        Ok(())
    }

    pub(crate) fn put_applied(&self, batch: &mut WriteBatch, state: &AppliedState) -> Result<()> {
        self.put_meta(batch, META_APPLIED, state)
    }

    pub(crate) fn decode_entry(&self, key: &[u8], bytes: &[u8]) -> Result<StoredEntry> {
        decode_entry(self.id, key, bytes)
    }
}

/// Calls `f` with every `(key, value)` in `from..to`, seeking `it` (which may be reused across
/// ranges, so `to` is checked here whatever upper bound the iterator has).
fn scan_range(
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
    from: &[u8],
    to: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    it.seek(from);
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        if key >= to {
            break;
        }
        f(key, value)?;
        it.next();
    }
    it.status()?;
    Ok(())
}
