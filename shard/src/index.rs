//! The tantivy index of one shard.
//!
//! RocksDB holds the entries; the index holds what queries need to find them: the entry's time
//! and log_id as fast fields (for the `(timestamp, log_id)` sort order, and to rebuild the
//! entry's RocksDB key), the keyword fields (service, level, …) as untokenized terms, message,
//! exception message and stack trace as full text, and the free fields as a JSON field with
//! exact terms.
//!
//! Each commit carries the Raft index of the last applied entry whose documents it holds, so a
//! restart knows which applied entries it still has to index.
//!
//! Only a replica that indexes has a writer. The shard's leader indexes; its followers copy the
//! leader's commits instead, segment files and `meta.json` (`shipping.rs`), and start indexing
//! themselves from their last copied commit when they become the leader.

mod shipping;

pub use shipping::{CopiedFile, CopiedFileWrite, IndexCopy};

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{
    AggContextParams, AggregationLimitsGuard, DistributedAggregationCollector,
};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, ColumnType, MonotonicallyMappableToU64};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, EnableScoring, ExistsQuery, Explanation, Occur,
    PhrasePrefixQuery, PhraseQuery, Query, RangeQuery, Scorer, TermQuery, Weight,
};
use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, Schema,
    TextFieldIndexing, TextOptions, FAST, STORED, STRING, TEXT,
};
use tantivy::{
    DateTime, DocAddress, DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy,
    SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use crate::entry::{Level, StoredEntry};
use crate::index_dir::NrtDirectory;
use crate::query::{
    order_f64, order_i64, FieldCondition, Scalar, ShardQuery, SortField, SortKey, SortOrder,
};
use crate::query_lang::{self, Expr, Match, MatchKind};
use crate::{Error, Result, ShardId};

/// The fields of the index schema.
#[derive(Clone, Copy)]
struct Fields {
    timestamp: Field,
    log_id_hi: Field,
    log_id_lo: Field,
    service: Field,
    level: Field,
    environment: Field,
    region: Field,
    host: Field,
    exception_type: Field,
    message: Field,
    exception_message: Field,
    stack_trace: Field,
    fields: Field,
    hour: Field,
}

/// Merge threads of each shard's index writer (tantivy's default, stated: the node lowers
/// their CPU priority and waits for this many to exist).
pub const MERGE_THREADS: usize = 4;

/// The schema of every index: no field norms (no query ranks by score; they were 0.04 bytes
/// on disk per raw byte), and the timestamp only a fast field (range queries read the fast
/// field — tantivy picks it whenever the field is fast — so postings and a per-document norm
/// byte for it were written and merged for nothing), and the `hour` term without norms either.
/// Indexes created with older schemas live in directories before format 8, whose indexes are
/// rebuilt at open (`datadir.rs`), or are format 10's ([`accepted_older_schemas`]).
fn schema() -> (Schema, Fields) {
    schema_with(tantivy::schema::NumericOptions::default().set_indexed())
}

/// The schemas of indexes created by older builds that this build still opens and writes as
/// they are: the same fields, with the `hour` field's norms (data format 10 indexed it with
/// tantivy's `INDEXED`, which writes a norm byte per document for it: ~1 byte per entry, 0.004
/// bytes on disk per raw byte; BENCHMARKS.md, issue 8).
fn accepted_older_schemas() -> [Schema; 1] {
    [schema_with(tantivy::schema::INDEXED.into()).0]
}

/// [`schema`] with `hour` indexed as `hour_options` says.
fn schema_with(hour_options: tantivy::schema::NumericOptions) -> (Schema, Fields) {
    let no_norms = |opts: TextOptions| match opts.get_indexing_options() {
        Some(indexing) => {
            let indexing = indexing.clone().set_fieldnorms(false);
            opts.set_indexing_options(indexing)
        }
        None => opts,
    };
    let mut b = Schema::builder();
    // Stored by versions before data format 6, never read or written now. It stays so that
    // the field ids, and so the schema of the indexes format 8 created, do not change.
    b.add_bytes_field("key", STORED);
    let timestamp = b.add_date_field(
        "timestamp",
        DateOptions::default()
            .set_fast()
            .set_precision(DateTimePrecision::Microseconds),
    );
    let log_id_hi = b.add_u64_field("log_id_hi", FAST);
    let log_id_lo = b.add_u64_field("log_id_lo", FAST);
    let keyword = no_norms(STRING | FAST);
    let service = b.add_text_field("service", keyword.clone());
    let level = b.add_text_field("level", keyword.clone());
    let environment = b.add_text_field("environment", keyword.clone());
    let region = b.add_text_field("region", keyword.clone());
    let host = b.add_text_field("host", keyword.clone());
    let exception_type = b.add_text_field("exception_type", keyword);
    let message = b.add_text_field("message", no_norms(TEXT));
    let exception_message = b.add_text_field("exception_message", no_norms(TEXT));
    let stack_trace = b.add_text_field("stack_trace", no_norms(TEXT));
    let json = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        )
        .set_fast("raw");
    let fields = b.add_json_field("fields", json);
    // The entry's hour (since the epoch), indexed only: a time window's whole hours are a range
    // of these terms, so only the hours at its ends read the timestamp column (which tantivy
    // decodes over the whole segment for a range: ~30 % of a day's full-text search).
    let hour = b.add_i64_field("hour", hour_options);
    let f = Fields {
        timestamp,
        log_id_hi,
        log_id_lo,
        service,
        level,
        environment,
        region,
        host,
        exception_type,
        message,
        exception_message,
        stack_trace,
        fields,
        hour,
    };
    (b.build(), f)
}

/// The settings indexes are created with: the document store compressed with zstd. Documents
/// store nothing, but the store still keeps a 4-byte offset per document that lz4 (tantivy's
/// default) leaves as it is.
fn index_settings() -> tantivy::IndexSettings {
    tantivy::IndexSettings {
        docstore_compression: tantivy::store::Compressor::Zstd(Default::default()),
        ..Default::default()
    }
}

/// Documents applied while the writer was busy committing, and the Raft index they reach.
#[derive(Default)]
struct Pending {
    docs: Vec<TantivyDocument>,
    up_to: u64,
}

struct WriterState {
    /// None on a replica that copies its leader's commits instead of indexing.
    writer: Option<IndexWriter>,
    /// The Raft index of the last applied entry whose documents were added.
    added_up_to: u64,
    /// The Raft index recorded in the last commit.
    committed_up_to: u64,
    /// True when documents were added or deleted since the last commit.
    dirty: bool,
}

/// When a shard's committed index is written to disk (see `index_dir`).
#[derive(Debug, Clone, Copy)]
pub struct PersistPolicy {
    /// At most this long between persists.
    pub interval: Duration,
    /// Persist as soon as the segments held in memory reach this many bytes; a single file
    /// growing past a quarter of it is written to disk as it grows.
    pub ram_bytes_max: usize,
}

impl PersistPolicy {
    fn spill_bytes(&self) -> usize {
        (self.ram_bytes_max / 4).max(1 << 20)
    }
}

impl Default for PersistPolicy {
    /// Every 10 s or past 16 MiB.
    fn default() -> Self {
        PersistPolicy {
            interval: Duration::from_secs(10),
            ram_bytes_max: 16 << 20,
        }
    }
}

/// A segment's fast fields that make a hit's sort key and RocksDB key.
#[derive(Clone)]
struct KeyColumns {
    time: Column<DateTime>,
    hi: Column<u64>,
    lo: Column<u64>,
}

/// The [`KeyColumns`] of the segments searched lately: opening a column reads its block headers,
/// which per query and segment was ~19 % of a day's user_id search and ~6 % of a full-text one.
/// Segments no longer in the reader are dropped at every reload and search, so a merged-away
/// segment's files are not kept mapped.
#[derive(Default)]
struct ColumnCache {
    by_segment: Mutex<std::collections::HashMap<tantivy::index::SegmentId, KeyColumns>>,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ColumnCache({} segments)", self.lock().len())
    }
}

impl ColumnCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<tantivy::index::SegmentId, KeyColumns>>
    {
        // A panic mid-insert leaves a valid map.
        self.by_segment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The segment's columns, opened on first use.
    fn get(&self, segment: &SegmentReader) -> tantivy::Result<KeyColumns> {
        if let Some(c) = self.lock().get(&segment.segment_id()) {
            return Ok(c.clone());
        }
        let ff = segment.fast_fields();
        let columns = KeyColumns {
            time: ff.date("timestamp")?,
            hi: ff.u64("log_id_hi")?,
            lo: ff.u64("log_id_lo")?,
        };
        self.lock().insert(segment.segment_id(), columns.clone());
        Ok(columns)
    }

    /// Drops the columns of segments `searcher` does not hold.
    fn keep_only(&self, searcher: &tantivy::Searcher) {
        let live: std::collections::HashSet<tantivy::index::SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(|r| r.segment_id())
            .collect();
        self.lock().retain(|id, _| live.contains(id));
    }
}

/// The tantivy index of one shard: a single writer and a reader reloaded after each commit.
/// Commits live in memory until persisted (`index_dir`).
pub struct ShardIndex {
    /// Sort and key columns of the live segments.
    columns: std::sync::Arc<ColumnCache>,
    shard_id: ShardId,
    index: Index,
    directory: NrtDirectory,
    persist: PersistPolicy,
    /// The Raft index of the commit on disk, and when it was written.
    persisted: Mutex<(u64, Instant)>,
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<WriterState>,
    /// How a writer is made (when the replica starts indexing again).
    writer_options: tantivy::indexer::IndexWriterOptions,
    /// True while applied entries are to be indexed here (the shard reads it under its
    /// applied lock, so an entry is either indexed by its apply or by the catch-up of
    /// [`ShardIndex::start_indexing`], never both).
    indexing: AtomicBool,
    pending: Mutex<Pending>,
    /// Most documents waiting in `pending` before adding waits for the writer: one per KiB of
    /// the writer's memory budget (`--index-heap-bytes`).
    pending_max: usize,
}

impl ShardIndex {
    /// Opens (or creates) the index of `shard_id` in `dir`, with `heap_bytes` of indexing memory
    /// and one indexing thread (the node runs one index per shard).
    pub fn open(
        shard_id: ShardId,
        dir: &Path,
        heap_bytes: usize,
        persist: PersistPolicy,
    ) -> Result<Self> {
        Self::open_with_threads(shard_id, dir, heap_bytes, 1, persist)
    }

    /// [`ShardIndex::open`] with `threads` indexing threads (`heap_bytes` in all): the
    /// one-process baseline `veil bench index` measures.
    pub fn open_with_threads(
        shard_id: ShardId,
        dir: &Path,
        heap_bytes: usize,
        threads: usize,
        persist: PersistPolicy,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create index dir {}", dir.display()), e))?;
        let (schema, fields) = schema();
        let directory = NrtDirectory::open(dir, persist.spill_bytes()).map_err(|e| {
            Error::io(
                format!("open index dir {}", dir.display()),
                std::io::Error::other(e),
            )
        })?;
        let index = if Index::exists(&directory).map_err(tantivy::TantivyError::from)? {
            let index = Index::open(directory.clone())?;
            let found = index.schema();
            if found != schema && !accepted_older_schemas().contains(&found) {
                return Err(Error::Corrupt {
                    shard_id,
                    reason: format!("index in {} has another schema", dir.display()),
                });
            }
            index
        } else {
            Index::create(directory.clone(), schema, index_settings())?
        };
        // A new index exists only in memory until persisted.
        directory.persist(&index)?;
        let committed_up_to = index
            .load_metas()?
            .payload
            .as_deref()
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let threads = threads.max(1);
        let writer_options = tantivy::indexer::IndexWriterOptions::builder()
            .num_worker_threads(threads)
            .memory_budget_per_thread(heap_bytes.max(15_000_000 * threads) / threads)
            .num_merge_threads(MERGE_THREADS)
            .build();
        let writer = index.writer_with_options(writer_options.clone())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            columns: Default::default(),
            shard_id,
            index,
            directory,
            persist,
            persisted: Mutex::new((committed_up_to, Instant::now())),
            fields,
            reader,
            writer: Mutex::new(WriterState {
                writer: Some(writer),
                added_up_to: committed_up_to,
                committed_up_to,
                dirty: false,
            }),
            writer_options,
            indexing: AtomicBool::new(true),
            pending: Mutex::new(Pending::default()),
            pending_max: heap_bytes / 1024,
        })
    }

    /// Returns the Raft index recorded in the last commit: every entry applied up to it is
    /// searchable.
    pub fn committed_up_to(&self) -> u64 {
        self.lock().committed_up_to
    }

    /// Documents searchable now.
    pub fn searchable_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A poisoned lock means a panic mid-write; the node aborts on panic in release builds, and
        // the state is only counters and the writer, which tantivy keeps consistent itself.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the documents of the entries applied at Raft index `raft_index`. While a commit
    /// holds the writer (it waits for the segment to be written: tens of ms under load), the
    /// documents wait in a queue instead of stalling the apply — up to `pending_max`
    /// documents, past which adding waits for the writer; the next add or commit feeds them.
    pub fn add(&self, raft_index: u64, entries: &[&StoredEntry]) -> Result<()> {
        let docs: Vec<TantivyDocument> = entries.iter().map(|e| self.document(e)).collect();
        let waiting = {
            let mut pending = self.pending();
            pending.docs.extend(docs);
            pending.up_to = pending.up_to.max(raft_index);
            pending.docs.len()
        };
        let mut state = if waiting > self.pending_max {
            self.lock()
        } else {
            match self.writer.try_lock() {
                Ok(state) => state,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            }
        };
        self.feed(&mut state)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the waiting documents to the writer (whose lock the caller holds); without a
    /// writer (this replica stopped indexing after they were added) they are dropped.
    fn feed(&self, state: &mut WriterState) -> Result<()> {
        let Pending { docs, up_to } = std::mem::take(&mut *self.pending());
        let Some(writer) = &state.writer else {
            return Ok(());
        };
        state.dirty |= !docs.is_empty();
        for doc in docs {
            writer.add_document(doc)?;
        }
        state.added_up_to = state.added_up_to.max(up_to);
        Ok(())
    }

    /// True while this replica indexes its applied entries (it leads the shard, or nothing
    /// told it to copy another replica's commits).
    pub fn is_indexing(&self) -> bool {
        self.indexing.load(Ordering::SeqCst)
    }

    /// Opens a writer on the current commit if there is none. Returns true when it opened one.
    /// Indexing does not start: [`Self::start_indexing`] does that.
    pub(crate) fn open_writer(&self) -> Result<bool> {
        let mut state = self.lock();
        if state.writer.is_some() {
            return Ok(false);
        }
        // Documents added before the writer went away belong to nobody now.
        *self.pending() = Pending::default();
        state.writer = Some(
            self.index
                .writer_with_options(self.writer_options.clone())?,
        );
        state.added_up_to = state.committed_up_to;
        state.dirty = false;
        Ok(true)
    }

    /// Marks whether applied entries are indexed here from now on. The caller holds the
    /// shard's applied lock, and turns it on only with a writer open and every applied entry
    /// above [`Self::committed_up_to`] added (`Shard::start_indexing`).
    pub(crate) fn set_indexing(&self, on: bool) {
        self.indexing.store(on, Ordering::SeqCst);
    }

    /// Drops the writer and what it held uncommitted: the last commit stays searchable, and
    /// the next one comes from another replica. Merges the writer was running are abandoned
    /// (their files go at the next copied commit).
    pub(crate) fn close_writer(&self) {
        let mut state = self.lock();
        *self.pending() = Pending::default();
        // Dropping kills its segment updater: nothing it still finishes is committed.
        drop(state.writer.take());
        state.added_up_to = state.committed_up_to;
        state.dirty = false;
    }

    /// Drops every document (before a snapshot is installed). Needs a writer
    /// ([`Self::open_writer`]).
    pub fn clear(&self) -> Result<()> {
        let mut state = self.lock();
        *self.pending() = Pending::default();
        let Some(writer) = state.writer.as_mut() else {
            return Err(self.no_writer("clear the index"));
        };
        // Rollback first: documents added since the last commit are still being indexed, and
        // delete_all_documents only drops what is committed.
        writer.rollback()?;
        writer.delete_all_documents()?;
        state.added_up_to = 0;
        state.dirty = true;
        Ok(())
    }

    /// Commits what was added or deleted since the last commit, records the Raft index in the
    /// commit, and reloads the reader. Returns the Raft index committed, or None when there was
    /// nothing to commit (an idle shard writes nothing).
    pub fn commit(&self) -> Result<Option<u64>> {
        self.commit_covering(0)
    }

    /// [`Self::commit`], recording at least Raft index `up_to` when the caller knows every
    /// entry applied up to it was added (entries without documents leave the last add below
    /// it); a commit is written when the last one records less.
    pub fn commit_covering(&self, up_to: u64) -> Result<Option<u64>> {
        let mut state = self.lock();
        self.feed(&mut state)?;
        // Only while indexing: entries applied after indexing stopped were not added, whatever
        // the caller saw applied (the writer's lock keeps it from closing meanwhile). Applies
        // that added nothing (every entry a duplicate) raise `added_up_to` alone: recorded too.
        if state.writer.is_some() && self.is_indexing() {
            let covered = up_to.max(state.added_up_to);
            if covered > state.committed_up_to {
                state.added_up_to = covered;
                state.dirty = true;
            }
        }
        if !state.dirty {
            return Ok(None);
        }
        let up_to = state.added_up_to;
        let Some(writer) = state.writer.as_mut() else {
            return Ok(None);
        };
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&up_to.to_string());
        prepared.commit()?;
        state.committed_up_to = up_to;
        state.dirty = false;
        // Reloaded before the writer's lock is released: a concurrent caller that finds
        // nothing to commit returns at once, and must then find the reader showing this commit
        // (a strong read commits, then searches; it missed entries when the 500 ms tick's
        // commit had released the lock but not yet reloaded).
        self.reader.reload()?;
        drop(state);
        self.columns.keep_only(&self.reader.searcher());
        Ok(Some(up_to))
    }

    /// The Raft index recorded in the commit on disk: a restart indexes what is above it again.
    pub fn persisted_up_to(&self) -> u64 {
        self.persisted.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Bytes of index files held in memory, not yet persisted.
    pub fn ram_bytes(&self) -> usize {
        self.directory.ram_bytes()
    }

    /// True when the policy asks for a persist now.
    pub fn persist_due(&self) -> bool {
        let since = self.persisted.lock().unwrap_or_else(|p| p.into_inner()).1;
        since.elapsed() >= self.persist.interval
            || self.directory.ram_bytes() >= self.persist.ram_bytes_max
    }

    /// Writes the last commit to disk (`index_dir`). Returns the Raft index it covers, or None
    /// when nothing was committed since the last persist.
    pub fn persist(&self) -> Result<Option<u64>> {
        let done = self.directory.persist(&self.index)?;
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        persisted.1 = Instant::now();
        let Some(payload) = done.payload else {
            return Ok(None);
        };
        let up_to = payload.parse::<u64>().map_err(|_| Error::Corrupt {
            shard_id: self.shard_id,
            reason: "index commit payload is not a Raft index".into(),
        })?;
        persisted.0 = up_to;
        tracing::debug!(shard_id = %self.shard_id, raft_index = up_to, files = done.files, bytes = done.bytes, "index commit persisted");
        Ok(Some(up_to))
    }

    /// Merges every committed segment into one (an operator's compaction; indexing of this
    /// shard waits meanwhile) and reloads the reader. Returns the segment count before, or 0
    /// on a replica that copies its commits (the merge it copies is its leader's).
    pub fn merge_segments(&self) -> Result<usize> {
        let mut state = self.lock();
        self.feed(&mut state)?;
        let Some(writer) = state.writer.as_mut() else {
            return Ok(0);
        };
        let ids = self.index.searchable_segment_ids()?;
        if ids.len() > 1 {
            writer.merge(&ids).wait()?;
        }
        drop(state);
        self.reader.reload()?;
        self.columns.keep_only(&self.reader.searcher());
        Ok(ids.len())
    }

    /// The document of an entry. Its RocksDB key is not stored: it is `shard | time | log_id`,
    /// rebuilt from the fast fields ([`Self::entry_key`]). The schema keeps the `key` field so
    /// indexes written when it was stored still open; their stored keys are simply not read.
    fn document(&self, e: &StoredEntry) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_date(f.timestamp, DateTime::from_timestamp_micros(e.timestamp_us));
        doc.add_i64(f.hour, crate::entry::hour_of(e.timestamp_us));
        let id = e.log_id.as_u128();
        doc.add_u64(f.log_id_hi, (id >> 64) as u64);
        doc.add_u64(f.log_id_lo, id as u64);
        doc.add_text(f.service, &e.service);
        doc.add_text(f.level, e.level.as_str());
        for (field, value) in [
            (f.environment, &e.environment),
            (f.region, &e.region),
            (f.host, &e.host),
            (f.exception_type, &e.exception_type),
            (f.exception_message, &e.exception_message),
            (f.stack_trace, &e.stack_trace),
        ] {
            if let Some(v) = value {
                doc.add_text(field, v);
            }
        }
        doc.add_text(f.message, &e.message);
        // tantivy reads a `serde_json::Value` as a document value directly, with the leaf
        // types of its `OwnedValue::from` (numbers as i64 first, RFC 3339 strings as dates);
        // the object's keys come sorted from serde_json's map, as `add_object`'s did.
        if let Ok(fields @ serde_json::Value::Object(_)) =
            serde_json::from_str::<serde_json::Value>(&e.fields_json)
        {
            if fields.as_object().is_some_and(|m| !m.is_empty()) {
                doc.add_field_value(f.fields, &fields);
            }
        }
        doc
    }

    /// Runs `query`: the total number of matches, the RocksDB keys of the best `query.top_n`
    /// matches after the cursor with their sort keys, and the aggregations' partial results.
    #[allow(clippy::type_complexity)]
    pub fn search(
        &self,
        query: &ShardQuery,
    ) -> Result<(
        u64,
        Vec<(SortKey, Vec<u8>)>,
        Option<IntermediateAggregationResults>,
    )> {
        let tantivy_query = self.build_query(query)?;
        let searcher = self.reader.searcher();
        self.columns.keep_only(&searcher);
        let top = TopKeys {
            columns: self.columns.clone(),
            limit: query.top_n,
            after: query.after,
            sort: query.sort.clone(),
            order: query.order,
            deadline: query.deadline,
        };
        let ((total, hits), aggs) = match &query.aggs {
            None => (
                searcher
                    .search(&tantivy_query, &top)
                    .map_err(search_error)?,
                None,
            ),
            Some(aggs) => {
                let limits = AggregationLimitsGuard::new(
                    Some(query.agg_memory_bytes),
                    Some(query.agg_buckets),
                );
                let collector = DistributedAggregationCollector::from_aggs(
                    aggs.clone(),
                    AggContextParams::new(limits, self.index.tokenizers().clone()),
                );
                let (top, aggs) =
                    searcher
                        .search(&tantivy_query, &(top, collector))
                        .map_err(|e| match e {
                            e if is_deadline(&e) => Error::DeadlineExceeded,
                            tantivy::TantivyError::AggregationError(e) => {
                                Error::InvalidAggregation(e.to_string())
                            }
                            tantivy::TantivyError::InvalidArgument(e) => {
                                Error::InvalidAggregation(e)
                            }
                            other => Error::from(other),
                        })?;
                (top, Some(aggs))
            }
        };
        // Each segment's columns are opened once for all its hits: opening one reads its block
        // headers (a day's full-text search spent ~40 % of its CPU opening three columns per
        // hit).
        let mut columns: Vec<Option<KeyColumns>> = vec![None; searcher.segment_readers().len()];
        let mut keys = Vec::with_capacity(hits.len());
        for (key, address) in hits {
            let slot = columns
                .get_mut(address.segment_ord as usize)
                .ok_or_else(|| self.missing_key())?;
            let segment = match slot {
                Some(c) => c,
                None => slot.insert(
                    self.columns
                        .get(searcher.segment_reader(address.segment_ord))?,
                ),
            };
            keys.push((key, self.entry_key(segment, address.doc_id)?));
        }
        Ok((total, keys, aggs))
    }

    fn no_writer(&self, what: &str) -> Error {
        Error::NotIndexing {
            shard_id: self.shard_id,
            what: what.to_string(),
        }
    }

    fn missing_key(&self) -> Error {
        Error::Corrupt {
            shard_id: self.shard_id,
            reason: "indexed document without a time or log_id".into(),
        }
    }

    /// The RocksDB key of a hit, from its time and log_id fast fields.
    fn entry_key(&self, columns: &KeyColumns, doc: DocId) -> Result<Vec<u8>> {
        let time = columns.time.first(doc).ok_or_else(|| self.missing_key())?;
        let hi = columns.hi.first(doc).ok_or_else(|| self.missing_key())?;
        let lo = columns.lo.first(doc).ok_or_else(|| self.missing_key())?;
        let log_id = uuid::Uuid::from_u128((u128::from(hi) << 64) | u128::from(lo));
        Ok(crate::keys::entry_key(self.shard_id, time.into_timestamp_micros(), log_id).to_vec())
    }

    /// Entries with `start_us <= timestamp <= end_us` (either bound may be open): the window's
    /// whole hours by their `hour` terms, the partial hours at its ends by their `hour` terms
    /// with each document's timestamp checked (to the microsecond, [`TimeCheck`]).
    fn time_query(&self, start_us: Option<i64>, end_us: Option<i64>) -> Box<dyn Query> {
        use std::ops::Bound;
        const HOUR_US: i64 = 3_600_000_000;
        let f = &self.fields;
        let hours = |first: Bound<i64>, last: Bound<i64>| -> Box<dyn Query> {
            let term = |b: Bound<i64>| match b {
                Bound::Included(h) => Bound::Included(Term::from_field_i64(f.hour, h)),
                Bound::Excluded(h) => Bound::Excluded(Term::from_field_i64(f.hour, h)),
                Bound::Unbounded => Bound::Unbounded,
            };
            Box::new(RangeQuery::new(term(first), term(last)))
        };
        // The first hour wholly inside, and the first hour past the end not wholly inside.
        let whole_from =
            start_us.map(|s| s.div_euclid(HOUR_US) + i64::from(s.rem_euclid(HOUR_US) != 0));
        let whole_to = end_us.map(|e| (e.saturating_add(1)).div_euclid(HOUR_US));
        // Documents of the hours at the window's ends, each checked against the window by its
        // own timestamp: a range query on the column would decode the column of the whole
        // segment, whatever the hour terms leave.
        let checked = |first: i64, last: i64| -> Box<dyn Query> {
            Box::new(TimeCheck {
                inner: hours(Bound::Included(first), Bound::Included(last)),
                window: TimeWindow {
                    columns: self.columns.clone(),
                    start_us: start_us.unwrap_or(i64::MIN),
                    end_us: end_us.unwrap_or(i64::MAX),
                },
            })
        };
        if let (Some(a), Some(b)) = (whole_from, whole_to) {
            if a >= b {
                // No whole hour: the hours it touches, checked.
                let (s, e) = (start_us.unwrap_or(i64::MIN), end_us.unwrap_or(i64::MAX));
                return checked(s.div_euclid(HOUR_US), e.div_euclid(HOUR_US));
            }
        }
        let mut parts: Vec<Box<dyn Query>> = vec![hours(
            whole_from.map_or(Bound::Unbounded, Bound::Included),
            whole_to.map_or(Bound::Unbounded, Bound::Excluded),
        )];
        if let (Some(s), Some(a)) = (start_us, whole_from) {
            if s < a.saturating_mul(HOUR_US) {
                let h = s.div_euclid(HOUR_US);
                parts.push(checked(h, h));
            }
        }
        if let (Some(e), Some(b)) = (end_us, whole_to) {
            if e >= b.saturating_mul(HOUR_US) {
                parts.push(checked(b, b));
            }
        }
        if parts.len() == 1 {
            parts.remove(0)
        } else {
            Box::new(BooleanQuery::union(parts))
        }
    }

    fn build_query(&self, q: &ShardQuery) -> Result<Box<dyn Query>> {
        let f = &self.fields;
        let mut must: Vec<Box<dyn Query>> = Vec::new();
        if let Some(text) = &q.text {
            must.push(self.expr_query(text)?);
        }
        if q.start_us.is_some() || q.end_us.is_some() {
            must.push(self.time_query(q.start_us, q.end_us));
        }
        let levels: Vec<String> = q.levels.iter().map(|l| l.as_str().to_string()).collect();
        for (field, values) in [
            (f.service, &q.services),
            (f.level, &levels),
            (f.environment, &q.environments),
            (f.region, &q.regions),
            (f.host, &q.hosts),
            (f.exception_type, &q.exception_types),
        ] {
            if !values.is_empty() {
                must.push(any_of(
                    values
                        .iter()
                        .map(|v| term_query(Term::from_field_text(field, v)))
                        .collect(),
                ));
            }
        }
        let mut must_not: Vec<Box<dyn Query>> = Vec::new();
        for (path, condition) in &q.fields {
            match condition {
                FieldCondition::AnyOf(values) => must.push(any_of(
                    values.iter().map(|v| self.json_equals(path, v)).collect(),
                )),
                FieldCondition::Exists(true) => must.push(self.json_exists(path)),
                FieldCondition::Exists(false) => must_not.push(self.json_exists(path)),
                FieldCondition::Range { gte, gt, lte, lt } => {
                    let lower = match (gte, gt) {
                        (Some(a), Some(b)) if b >= a => Bound::Excluded(*b),
                        (Some(a), _) => Bound::Included(*a),
                        (None, Some(b)) => Bound::Excluded(*b),
                        (None, None) => Bound::Unbounded,
                    };
                    let upper = match (lte, lt) {
                        (Some(a), Some(b)) if b <= a => Bound::Excluded(*b),
                        (Some(a), _) => Bound::Included(*a),
                        (None, Some(b)) => Bound::Excluded(*b),
                        (None, None) => Bound::Unbounded,
                    };
                    must.push(self.json_range(path, lower, upper));
                }
            }
        }
        Ok(conjunction(must, must_not))
    }

    fn expr_query(&self, e: &Expr) -> Result<Box<dyn Query>> {
        Ok(match e {
            Expr::All => Box::new(AllQuery),
            Expr::Match(m) => self.match_query(m)?,
            Expr::Not(inner) => conjunction(Vec::new(), vec![self.expr_query(inner)?]),
            Expr::Or(parts) => {
                let clauses = parts
                    .iter()
                    .map(|p| Ok((Occur::Should, self.expr_query(p)?)))
                    .collect::<Result<Vec<_>>>()?;
                Box::new(BooleanQuery::new(clauses))
            }
            Expr::And(parts) => {
                let (mut must, mut must_not) = (Vec::new(), Vec::new());
                for p in parts {
                    match p {
                        Expr::Not(inner) => must_not.push(self.expr_query(inner)?),
                        other => must.push(self.expr_query(other)?),
                    }
                }
                conjunction(must, must_not)
            }
        })
    }

    fn match_query(&self, m: &Match) -> Result<Box<dyn Query>> {
        let f = &self.fields;
        let text_fields = match m.field.as_deref() {
            None => vec![f.message, f.exception_message, f.stack_trace],
            Some("message") => vec![f.message],
            Some("exception_message") => vec![f.exception_message],
            Some("stack_trace") => vec![f.stack_trace],
            Some(name) => {
                if let Some(field) = self.keyword_field(name) {
                    return self.keyword_query(name, field, m);
                }
                let path = name.strip_prefix("fields.").unwrap_or(name);
                return Ok(match m.kind {
                    MatchKind::Exists => self.json_exists(path),
                    MatchKind::Prefix => {
                        let mut term = Term::from_field_json_path(f.fields, path, false);
                        term.append_type_and_str(&m.value);
                        prefix_query(vec![term])
                    }
                    MatchKind::Word | MatchKind::Phrase => {
                        let v = Scalar::Str(m.value.clone());
                        let mut any = vec![self.json_equals(path, &v)];
                        if let Ok(b) = m.value.parse::<bool>() {
                            any.push(self.json_equals(path, &Scalar::Bool(b)));
                        }
                        any_of(any)
                    }
                });
            }
        };
        if m.kind == MatchKind::Exists {
            return Err(Error::InvalidQuery(format!(
                "{}:* is only supported on keyword fields and fields.*",
                m.field.as_deref().unwrap_or_default()
            )));
        }
        let tokens = query_lang::tokens(&m.value);
        if tokens.is_empty() {
            return Ok(Box::new(EmptyQuery));
        }
        let per_field = text_fields
            .into_iter()
            .map(|field| {
                let terms: Vec<Term> = tokens
                    .iter()
                    .map(|t| Term::from_field_text(field, t))
                    .collect();
                match (m.kind, terms.len()) {
                    (MatchKind::Prefix, _) => prefix_query(terms),
                    (_, 1) => term_query(
                        terms
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| Term::from_field_text(field, "")),
                    ),
                    _ => Box::new(PlainSeek(Box::new(PhraseQuery::new(terms)))) as Box<dyn Query>,
                }
            })
            .collect::<Vec<_>>();
        Ok(any_of(per_field))
    }

    fn keyword_field(&self, name: &str) -> Option<Field> {
        let f = &self.fields;
        Some(match name {
            "service" | "service_name" => f.service,
            "level" => f.level,
            "environment" => f.environment,
            "region" => f.region,
            "host" => f.host,
            "exception_type" => f.exception_type,
            _ => return None,
        })
    }

    fn keyword_query(&self, name: &str, field: Field, m: &Match) -> Result<Box<dyn Query>> {
        let value = if field == self.fields.level && m.kind != MatchKind::Exists {
            match Level::from_canonical(&m.value.to_ascii_uppercase()) {
                Some(level) => level.as_str().to_string(),
                None if m.kind == MatchKind::Prefix => m.value.to_ascii_uppercase(),
                None => {
                    return Err(Error::InvalidQuery(
                        "level: expects DEBUG, INFO, WARN, ERROR or FATAL".into(),
                    ))
                }
            }
        } else {
            m.value.clone()
        };
        Ok(match m.kind {
            MatchKind::Exists => Box::new(ExistsQuery::new(name_of(name).into(), false)),
            MatchKind::Prefix => prefix_query(vec![Term::from_field_text(field, &value)]),
            MatchKind::Word | MatchKind::Phrase => term_query(Term::from_field_text(field, &value)),
        })
    }

    fn json_exists(&self, path: &str) -> Box<dyn Query> {
        Box::new(ExistsQuery::new(format!("fields.{path}"), true))
    }

    fn json_equals(&self, path: &str, v: &Scalar) -> Box<dyn Query> {
        let f = self.fields.fields;
        let string_term = |s: &str| {
            let mut t = Term::from_field_json_path(f, path, false);
            t.append_type_and_str(s);
            term_query(t)
        };
        match v {
            Scalar::Str(s) => match s.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => any_of(vec![
                    string_term(s),
                    self.json_range(path, Bound::Included(n), Bound::Included(n)),
                ]),
                _ => string_term(s),
            },
            Scalar::Num(n, spelled) => any_of(vec![
                string_term(spelled),
                self.json_range(path, Bound::Included(*n), Bound::Included(*n)),
            ]),
            Scalar::Bool(b) => {
                let mut t = Term::from_field_json_path(f, path, false);
                t.append_type_and_fast_value(*b);
                term_query(t)
            }
        }
    }

    fn json_range(&self, path: &str, lower: Bound<f64>, upper: Bound<f64>) -> Box<dyn Query> {
        let f = self.fields.fields;
        let term = |v: f64| {
            let mut t = Term::from_field_json_path(f, path, false);
            t.append_type_and_fast_value(v);
            t
        };
        // No bound at all means "any number": both infinities, inclusive.
        let lower = match lower {
            Bound::Unbounded => Bound::Included(f64::NEG_INFINITY),
            other => other,
        };
        let upper = match upper {
            Bound::Unbounded => Bound::Included(f64::INFINITY),
            other => other,
        };
        Box::new(RangeQuery::new(lower.map(term), upper.map(term)))
    }
}

fn name_of(keyword: &str) -> &str {
    if keyword == "service_name" {
        "service"
    } else {
        keyword
    }
}

fn term_query(t: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(t, IndexRecordOption::Basic))
}

/// An exact prefix query: every term of the index that extends the prefix, with no cap on
/// expansions (tantivy's default of 50 would make answers inexact).
fn prefix_query(terms: Vec<Term>) -> Box<dyn Query> {
    let mut q = PhrasePrefixQuery::new(terms);
    q.set_max_expansions(u32::MAX);
    Box::new(PlainSeek(Box::new(q)))
}

/// A time window, `start_us..=end_us`, and where its segments' timestamp columns are kept.
#[derive(Debug, Clone)]
struct TimeWindow {
    columns: std::sync::Arc<ColumnCache>,
    start_us: i64,
    end_us: i64,
}

impl TimeWindow {
    fn holds(&self, us: i64) -> bool {
        us >= self.start_us && us <= self.end_us
    }
}

/// The documents of `inner` whose timestamp is within `window`, each read from the timestamp
/// column as the scorer reaches it (a range query on the column decodes it over the whole
/// segment, ~30 % of a day's full-text search).
#[derive(Debug)]
struct TimeCheck {
    inner: Box<dyn Query>,
    window: TimeWindow,
}

impl Clone for TimeCheck {
    fn clone(&self) -> Self {
        TimeCheck {
            inner: self.inner.box_clone(),
            window: self.window.clone(),
        }
    }
}

impl Query for TimeCheck {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(TimeCheckWeight {
            inner: self.inner.weight(scoring)?,
            window: self.window.clone(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.inner.query_terms(visitor)
    }
}

struct TimeCheckWeight {
    inner: Box<dyn Weight>,
    window: TimeWindow,
}

impl Weight for TimeCheckWeight {
    fn scorer(
        &self,
        reader: &SegmentReader,
        boost: tantivy::Score,
    ) -> tantivy::Result<Box<dyn Scorer>> {
        let mut scorer = TimeCheckScorer {
            inner: self.inner.scorer(reader, boost)?,
            column: self.window.columns.get(reader)?.time,
            window: self.window.clone(),
        };
        scorer.skip_outside();
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }
}

struct TimeCheckScorer {
    inner: Box<dyn Scorer>,
    column: Column<DateTime>,
    window: TimeWindow,
}

impl TimeCheckScorer {
    fn inside(&self, doc: DocId) -> bool {
        self.column
            .first(doc)
            .is_some_and(|t| self.window.holds(t.into_timestamp_micros()))
    }

    /// Moves on from the current document until one inside the window (or the end).
    fn skip_outside(&mut self) -> DocId {
        let mut doc = self.inner.doc();
        while doc != tantivy::TERMINATED && !self.inside(doc) {
            doc = self.inner.advance();
        }
        doc
    }
}

impl DocSet for TimeCheckScorer {
    fn advance(&mut self) -> DocId {
        self.inner.advance();
        self.skip_outside()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.inner.seek(target);
        self.skip_outside()
    }

    fn doc(&self) -> DocId {
        self.inner.doc()
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }

    fn cost(&self) -> u64 {
        self.inner.cost()
    }
}

impl Scorer for TimeCheckScorer {
    fn score(&mut self) -> tantivy::Score {
        self.inner.score()
    }
}

/// Runs a query with the plain `seek_danger` (seek only forward, then compare).
///
/// tantivy 0.27's phrase scorers override `seek_danger` and assume they are never asked again
/// once exhausted; inside an exclusion (`NOT "a b"`) or an intersection they are, which trips a
/// debug assertion and, in release builds, relies on seeking an exhausted intersection. The
/// default implementation checks the current document first, so wrapping phrase queries in
/// this keeps every answer exact at the cost of the skip-ahead shortcut.
#[derive(Debug)]
struct PlainSeek(Box<dyn Query>);

impl Clone for PlainSeek {
    fn clone(&self) -> Self {
        PlainSeek(self.0.box_clone())
    }
}

impl Query for PlainSeek {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(PlainSeekWeight(self.0.weight(scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor)
    }
}

struct PlainSeekWeight(Box<dyn Weight>);

impl Weight for PlainSeekWeight {
    fn scorer(
        &self,
        reader: &SegmentReader,
        boost: tantivy::Score,
    ) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(PlainSeekScorer(self.0.scorer(reader, boost)?)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

struct PlainSeekScorer(Box<dyn Scorer>);

impl DocSet for PlainSeekScorer {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }

    fn cost(&self) -> u64 {
        self.0.cost()
    }
}

impl Scorer for PlainSeekScorer {
    fn score(&mut self) -> tantivy::Score {
        self.0.score()
    }
}

fn any_of(mut queries: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if queries.len() == 1 {
        if let Some(q) = queries.pop() {
            return q;
        }
    }
    Box::new(BooleanQuery::new(
        queries.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

/// Every `must` and none of `must_not`; with no `must`, everything but `must_not`.
fn conjunction(must: Vec<Box<dyn Query>>, must_not: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if must_not.is_empty() && must.len() == 1 {
        if let Some(q) = must.into_iter().next() {
            return q;
        }
        return Box::new(AllQuery);
    }
    let mut clauses: Vec<(Occur, Box<dyn Query>)> =
        must.into_iter().map(|q| (Occur::Must, q)).collect();
    if clauses.is_empty() {
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    clauses.extend(must_not.into_iter().map(|q| (Occur::MustNot, q)));
    Box::new(BooleanQuery::new(clauses))
}

/// Collects the total count and the best `limit` hits after an optional cursor, by sort key.
struct TopKeys {
    columns: std::sync::Arc<ColumnCache>,
    limit: usize,
    after: Option<SortKey>,
    sort: SortField,
    order: SortOrder,
    deadline: Option<Instant>,
}

struct TopKeysSegment {
    segment: SegmentOrdinal,
    limit: usize,
    after: Option<SortKey>,
    order: SortOrder,
    value: SortValue,
    hi: Option<Column<u64>>,
    lo: Option<Column<u64>>,
    count: u64,
    /// Candidates: the best `limit` keys seen are among them. When it holds `2 × limit`, the
    /// best `limit` are kept and the worst of those becomes `floor` (amortised O(1) per
    /// document: documents arrive in about time order, so under a newest-first sort nearly
    /// every one beats the worst kept, and a heap paid a pop and a push for each, ~18 % of a
    /// day's full-text search).
    kept: Vec<(SortKey, DocId)>,
    /// The worst of the best `limit` keys at the last cut: a key must beat it.
    floor: Option<SortKey>,
}

impl TopKeysSegment {
    /// Keeps the best `limit` candidates and raises the floor to the worst of them.
    fn cut(&mut self) {
        if self.kept.len() > self.limit {
            self.kept
                .select_nth_unstable_by(self.limit, |a, b| b.0.cmp(&a.0));
            self.kept.truncate(self.limit);
        }
        if self.kept.len() == self.limit {
            self.floor = self.kept.iter().map(|(k, _)| *k).min();
        }
    }
}

enum SortValue {
    Timestamp(Option<Column<DateTime>>),
    Numeric(Option<(Column<u64>, ColumnType)>),
}

impl Collector for TopKeys {
    type Fruit = (u64, Vec<(SortKey, DocAddress)>);
    type Child = TopKeysSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<TopKeysSegment> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(tantivy::TantivyError::InternalError(DEADLINE.into()));
        }
        let ff = reader.fast_fields();
        let keys = self.columns.get(reader).ok();
        let value = match &self.sort {
            SortField::Timestamp => SortValue::Timestamp(keys.as_ref().map(|k| k.time.clone())),
            SortField::Numeric(path) => SortValue::Numeric(ff.u64_lenient_for_type(
                Some(&[ColumnType::F64, ColumnType::I64, ColumnType::U64]),
                &format!("fields.{path}"),
            )?),
        };
        Ok(TopKeysSegment {
            segment,
            limit: self.limit,
            after: self.after,
            order: self.order,
            value,
            hi: keys.as_ref().map(|k| k.hi.clone()),
            lo: keys.map(|k| k.lo),
            count: 0,
            kept: Vec::new(),
            floor: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<(u64, Vec<(SortKey, DocAddress)>)>,
    ) -> tantivy::Result<Self::Fruit> {
        let mut total = 0;
        let mut all = Vec::new();
        for (count, hits) in fruits {
            total += count;
            all.extend(hits);
        }
        all.sort_by_key(|h| std::cmp::Reverse(h.0));
        all.truncate(self.limit);
        Ok((total, all))
    }
}

impl SegmentCollector for TopKeysSegment {
    type Fruit = (u64, Vec<(SortKey, DocAddress)>);

    fn collect(&mut self, doc: DocId, _score: tantivy::Score) {
        self.count += 1;
        if self.limit == 0 {
            return;
        }
        let value = match &self.value {
            SortValue::Timestamp(c) => c
                .as_ref()
                .and_then(|c| c.first(doc))
                .map(|d| order_i64(d.into_timestamp_micros())),
            SortValue::Numeric(c) => c.as_ref().and_then(|(c, typ)| {
                let raw = c.first(doc)?;
                let v = match typ {
                    ColumnType::I64 => i64::from_u64(raw) as f64,
                    ColumnType::F64 => f64::from_u64(raw),
                    _ => raw as f64,
                };
                Some(order_f64(v))
            }),
        };
        // Most documents lose on the sort value alone: decide before reading the log_id.
        let partial = SortKey::new(value, 0, self.order);
        let head = |k: &SortKey| (k.present, k.value);
        if self
            .after
            .is_some_and(|after| head(&partial) > head(&after))
            || self
                .floor
                .is_some_and(|floor| head(&partial) < head(&floor))
        {
            return;
        }
        let hi = self.hi.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
        let lo = self.lo.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
        let key = SortKey::new(value, ((hi as u128) << 64) | lo as u128, self.order);
        if self.after.is_some_and(|after| key >= after)
            || self.floor.is_some_and(|floor| key <= floor)
        {
            return;
        }
        self.kept.push((key, doc));
        if self.kept.len() >= self.limit.saturating_mul(2).max(self.limit + 1) {
            self.cut();
        }
    }

    fn harvest(mut self) -> Self::Fruit {
        self.cut();
        let segment = self.segment;
        let hits = self
            .kept
            .into_iter()
            .map(|(key, doc)| (key, DocAddress::new(segment, doc)))
            .collect();
        (self.count, hits)
    }
}

/// The message of the internal error a collector raises when the query deadline has passed.
const DEADLINE: &str = "veil: query deadline passed";

fn search_error(e: tantivy::TantivyError) -> Error {
    if is_deadline(&e) {
        Error::DeadlineExceeded
    } else {
        Error::from(e)
    }
}

/// True when `e` is the collector's deadline error.
fn is_deadline(e: &tantivy::TantivyError) -> bool {
    matches!(e, tantivy::TantivyError::InternalError(m) if m == DEADLINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(n: u64) -> StoredEntry {
        StoredEntry {
            log_id: uuid::Uuid::from_u128(u128::from(n) + 1),
            timestamp_us: 1_700_000_000_000_000 + n as i64,
            received_at_us: 1_700_000_000_000_000,
            service: "svc".into(),
            level: Level::Info,
            message: format!("payment {n} failed"),
            fields_json: format!(r#"{{"user_id":"u{n}"}}"#),
            exception_type: None,
            exception_message: None,
            stack_trace: None,
            fingerprint: None,
            host: Some("h1".into()),
            environment: None,
            region: None,
            sealed_original: None,
        }
    }

    pub(super) fn total(index: &ShardIndex, text: &str) -> u64 {
        let query = ShardQuery {
            text: query_lang::parse(text).unwrap(),
            top_n: 10,
            ..Default::default()
        };
        index.search(&query).unwrap().0
    }

    /// Entries of `index` in the microseconds `[start, end]` (both inclusive).
    fn in_range(index: &ShardIndex, start: i64, end: i64) -> u64 {
        let query = ShardQuery {
            start_us: Some(start),
            end_us: Some(end),
            top_n: 10,
            ..Default::default()
        };
        index.search(&query).unwrap().0
    }

    /// The column cache holds the live segments' columns only: after a merge, the merged-away
    /// segments' entries go (their files must not stay mapped), and answers stay the same.
    #[test]
    fn the_column_cache_keeps_live_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let index =
            ShardIndex::open(ShardId(0), dir.path(), 15_000_000, PersistPolicy::default()).unwrap();
        for n in 1..=3 {
            index.add(n, &[&entry(n)]).unwrap();
            index.commit().unwrap();
        }
        let cached = || index.columns.lock().len();
        let t0 = entry(0).timestamp_us;
        assert_eq!(in_range(&index, t0, t0 + 2), 2);
        assert_eq!(cached(), 3, "one entry per segment searched");
        assert_eq!(index.merge_segments().unwrap(), 3);
        assert_eq!(cached(), 0, "merged-away segments dropped at the reload");
        assert_eq!(in_range(&index, t0, t0 + 2), 2);
        assert_eq!(total(&index, "payment"), 3);
        assert_eq!(cached(), 1, "the merged segment, once searched");
    }

    /// Time windows use the `hour` terms for their whole hours and the timestamp column at their
    /// ends: against a brute-force count, every window whose bounds are at, just before or just
    /// after hour boundaries (and open on either side), over entries at and around them,
    /// before and after the epoch.
    #[test]
    fn time_windows_count_what_their_bounds_hold() {
        const H: i64 = 3_600_000_000;
        let dir = tempfile::tempdir().unwrap();
        let index =
            ShardIndex::open(ShardId(0), dir.path(), 15_000_000, PersistPolicy::default()).unwrap();
        let mut times = Vec::new();
        for base in [-2 * H, 1_700_000_000_000_000 / H * H] {
            for h in 0..4 {
                for d in [-1, 0, 1, H / 2] {
                    times.push(base + h * H + d);
                }
            }
        }
        for (n, t) in times.iter().enumerate() {
            let mut e = entry(n as u64);
            e.timestamp_us = *t;
            index.add(n as u64 + 1, &[&e]).unwrap();
        }
        index.commit().unwrap();
        let count = |start: Option<i64>, end: Option<i64>| {
            let query = ShardQuery {
                start_us: start,
                end_us: end,
                top_n: 0,
                ..Default::default()
            };
            index.search(&query).unwrap().0
        };
        let mut bounds = Vec::new();
        for base in [-2 * H, 1_700_000_000_000_000 / H * H] {
            for h in -1..5 {
                for d in [-1, 0, 1] {
                    bounds.push(base + h * H + d);
                }
            }
        }
        let all: Vec<Option<i64>> = std::iter::once(None)
            .chain(bounds.iter().copied().map(Some))
            .collect();
        for start in &all {
            for end in &all {
                let want = times
                    .iter()
                    .filter(|t| start.is_none_or(|s| **t >= s) && end.is_none_or(|e| **t <= e))
                    .count() as u64;
                assert_eq!(count(*start, *end), want, "[{start:?}, {end:?}]");
            }
        }
    }

    /// The free fields go into the document as `add_object` of tantivy's `OwnedValue` put them
    /// (the conversion this replaced, kept here as the oracle): same leaf types, same order.
    #[test]
    fn free_fields_are_added_as_owned_values_were() {
        use tantivy::Document as _;
        let dir = tempfile::tempdir().unwrap();
        let index =
            ShardIndex::open(ShardId(0), dir.path(), 15_000_000, PersistPolicy::default()).unwrap();
        let cases = [
            r#"{}"#,
            r#"{"user_id":"u1"}"#,
            r#"{"a":-3,"b":3,"c":18446744073709551615,"d":9223372036854775807,"e":1.5,"f":-0.0}"#,
            r#"{"at":"2024-05-01T10:00:00Z","bad_date":"2024-13-01T10:00:00Z","n":"12 apples","s":"x"}"#,
            r#"{"z":{"y":[1,"two",{"three":3.0}],"x":null},"b":true,"a":false,"list":[]}"#,
            r#"{"nested":{"deeper":{"deepest":"2023-01-01T00:00:00+02:00"}}}"#,
            r#"not json"#,
            r#"["an","array"]"#,
        ];
        for fields_json in cases {
            let mut e = entry(1);
            e.fields_json = fields_json.into();
            let mut expected = TantivyDocument::new();
            let f = &index.fields;
            expected.add_date(f.timestamp, DateTime::from_timestamp_micros(e.timestamp_us));
            expected.add_i64(f.hour, e.timestamp_us.div_euclid(3_600_000_000));
            let id = e.log_id.as_u128();
            expected.add_u64(f.log_id_hi, (id >> 64) as u64);
            expected.add_u64(f.log_id_lo, id as u64);
            expected.add_text(f.service, &e.service);
            expected.add_text(f.level, e.level.as_str());
            expected.add_text(f.host, e.host.as_deref().unwrap());
            expected.add_text(f.message, &e.message);
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_str::<serde_json::Value>(&e.fields_json)
            {
                if !map.is_empty() {
                    if let tantivy::schema::OwnedValue::Object(obj) =
                        tantivy::schema::OwnedValue::from(map)
                    {
                        expected.add_object(f.fields, obj.into_iter().collect());
                    }
                }
            }
            let schema = index.index.schema();
            let got = index.document(&e);
            assert_eq!(
                got.to_json(&schema),
                expected.to_json(&schema),
                "{fields_json}"
            );
            assert!(got == expected, "{fields_json}");
        }
    }

    #[test]
    fn indexes_are_lean_and_another_schema_is_refused() {
        let policy = PersistPolicy::default();
        let fresh = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(ShardId(0), fresh.path(), 15_000_000, policy).unwrap();
        let schema = index.index.schema();
        for (_, entry) in schema.fields() {
            assert!(!entry.has_fieldnorms(), "{}", entry.name());
        }
        let ts = schema.get_field_entry(index.fields.timestamp);
        assert!(ts.is_fast() && !ts.is_indexed());
        assert!(matches!(
            index.index.settings().docstore_compression,
            tantivy::store::Compressor::Zstd(_)
        ));
        for n in 1..=3 {
            index.add(n, &[&entry(n)]).unwrap();
        }
        index.commit().unwrap();
        assert_eq!(total(&index, "\"payment 1 failed\""), 1);
        // Time ranges read the fast field, to the microsecond, bounds included.
        let t0 = entry(0).timestamp_us;
        assert_eq!(in_range(&index, t0 + 1, t0 + 3), 3);
        assert_eq!(in_range(&index, t0 + 2, t0 + 2), 1);
        assert_eq!(in_range(&index, t0 + 2, t0 + 3), 2);
        assert_eq!(in_range(&index, t0 + 4, t0 + 1_000_000), 0);

        // An index created with another schema (here: the timestamp indexed as well, as
        // before format 7) is not opened as if it were this one.
        let other = tempfile::tempdir().unwrap();
        {
            let mut b = Schema::builder();
            for (_, entry) in schema.fields() {
                let entry = if entry.name() == "timestamp" {
                    tantivy::schema::FieldEntry::new_date(
                        "timestamp".into(),
                        DateOptions::from(tantivy::schema::INDEXED)
                            .set_fast()
                            .set_precision(DateTimePrecision::Microseconds),
                    )
                } else {
                    entry.clone()
                };
                b.add_field(entry);
            }
            Index::create_in_dir(other.path(), b.build()).unwrap();
        }
        assert!(matches!(
            ShardIndex::open(ShardId(0), other.path(), 15_000_000, policy),
            Err(Error::Corrupt { .. })
        ));
    }

    /// An index created by data format 10 (the `hour` term with norms) opens as it is, takes
    /// more entries and answers time windows and text like a new one.
    #[test]
    fn format_10_indexes_open_as_they_are() {
        let policy = PersistPolicy::default();
        let dir = tempfile::tempdir().unwrap();
        let [old] = accepted_older_schemas();
        assert!(old.get_field_entry(schema().1.hour).has_fieldnorms());
        Index::create_in_dir(dir.path(), old.clone()).unwrap();
        let index = ShardIndex::open(ShardId(0), dir.path(), 15_000_000, policy).unwrap();
        assert!(index.index.schema() == old);
        let t0 = entry(0).timestamp_us;
        for n in 1..=3 {
            index.add(n, &[&entry(n)]).unwrap();
        }
        index.commit().unwrap();
        assert_eq!(total(&index, "\"payment 2 failed\""), 1);
        assert_eq!(in_range(&index, t0 + 2, t0 + 3), 2);
        assert_eq!(in_range(&index, t0 - 7_200_000_000, t0 + 7_200_000_000), 3);
    }
}
