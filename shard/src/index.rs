//! The tantivy index of one shard.
//!
//! RocksDB holds the entries; the index holds what queries need to find them: the entry's
//! RocksDB key (stored), its time and log_id as fast fields (for the `(timestamp, log_id)` sort
//! order), the keyword fields (service, level, …) as untokenized terms, message, exception
//! message and stack trace as full text, and the free fields as a JSON field with exact terms.
//!
//! Each commit carries the Raft index of the last applied entry whose documents it holds, so a
//! restart knows which applied entries it still has to index.

use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, Schema,
    TextFieldIndexing, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::{
    DateTime, DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term,
};

use crate::entry::StoredEntry;
use crate::query::{ShardQuery, SortOrder};
use crate::{Error, Result, ShardId};

/// The fields of the index schema.
#[derive(Clone, Copy)]
struct Fields {
    key: Field,
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
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let key = b.add_bytes_field("key", STORED);
    let timestamp = b.add_date_field(
        "timestamp",
        DateOptions::from(INDEXED)
            .set_fast()
            .set_precision(DateTimePrecision::Microseconds),
    );
    let log_id_hi = b.add_u64_field("log_id_hi", FAST);
    let log_id_lo = b.add_u64_field("log_id_lo", FAST);
    let keyword = STRING | FAST;
    let service = b.add_text_field("service", keyword.clone());
    let level = b.add_text_field("level", keyword.clone());
    let environment = b.add_text_field("environment", keyword.clone());
    let region = b.add_text_field("region", keyword.clone());
    let host = b.add_text_field("host", keyword.clone());
    let exception_type = b.add_text_field("exception_type", keyword);
    let message = b.add_text_field("message", TEXT);
    let exception_message = b.add_text_field("exception_message", TEXT);
    let stack_trace = b.add_text_field("stack_trace", TEXT);
    let json = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        )
        .set_fast("raw");
    let fields = b.add_json_field("fields", json);
    let f = Fields {
        key,
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
    };
    (b.build(), f)
}

struct WriterState {
    writer: IndexWriter,
    /// The Raft index of the last applied entry whose documents were added.
    added_up_to: u64,
    /// The Raft index recorded in the last commit.
    committed_up_to: u64,
    /// True when documents were added or deleted since the last commit.
    dirty: bool,
}

/// The tantivy index of one shard: a single writer and a reader reloaded after each commit.
pub struct ShardIndex {
    shard_id: ShardId,
    index: Index,
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<WriterState>,
}

impl ShardIndex {
    /// Opens (or creates) the index of `shard_id` in `dir`, with `heap_bytes` of indexing memory.
    pub fn open(shard_id: ShardId, dir: &Path, heap_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create index dir {}", dir.display()), e))?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(|e| {
            Error::io(
                format!("open index dir {}", dir.display()),
                std::io::Error::other(e),
            )
        })?;
        let index = Index::open_or_create(directory, schema)?;
        let committed_up_to = index
            .load_metas()?
            .payload
            .as_deref()
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let writer = index.writer_with_num_threads(1, heap_bytes.max(15_000_000))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            shard_id,
            index,
            fields,
            reader,
            writer: Mutex::new(WriterState {
                writer,
                added_up_to: committed_up_to,
                committed_up_to,
                dirty: false,
            }),
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

    /// Adds the documents of the entries applied at Raft index `raft_index`.
    pub fn add(&self, raft_index: u64, entries: &[(Vec<u8>, &StoredEntry)]) -> Result<()> {
        let mut state = self.lock();
        for (key, entry) in entries {
            state.writer.add_document(self.document(key, entry))?;
        }
        state.dirty |= !entries.is_empty();
        state.added_up_to = state.added_up_to.max(raft_index);
        Ok(())
    }

    /// Drops every document (before a snapshot is installed).
    pub fn clear(&self) -> Result<()> {
        let mut state = self.lock();
        // Rollback first: documents added since the last commit are still being indexed, and
        // delete_all_documents only drops what is committed.
        state.writer.rollback()?;
        state.writer.delete_all_documents()?;
        state.added_up_to = 0;
        state.dirty = true;
        Ok(())
    }

    /// Commits what was added or deleted since the last commit, records the Raft index in the
    /// commit, and reloads the reader. Returns the Raft index committed, or None when there was
    /// nothing to commit (an idle shard writes nothing).
    pub fn commit(&self) -> Result<Option<u64>> {
        let mut state = self.lock();
        if !state.dirty {
            return Ok(None);
        }
        let up_to = state.added_up_to;
        let mut prepared = state.writer.prepare_commit()?;
        prepared.set_payload(&up_to.to_string());
        prepared.commit()?;
        state.committed_up_to = up_to;
        state.dirty = false;
        drop(state);
        self.reader.reload()?;
        Ok(Some(up_to))
    }

    fn document(&self, key: &[u8], e: &StoredEntry) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_bytes(f.key, key);
        doc.add_date(f.timestamp, DateTime::from_timestamp_micros(e.timestamp_us));
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
        if let Ok(serde_json::Value::Object(map)) =
            serde_json::from_str::<serde_json::Value>(&e.fields_json)
        {
            if !map.is_empty() {
                if let tantivy::schema::OwnedValue::Object(obj) =
                    tantivy::schema::OwnedValue::from(map)
                {
                    doc.add_object(f.fields, obj.into_iter().collect());
                }
            }
        }
        doc
    }

    /// Runs `query` and returns the total number of matches and the RocksDB keys of the best
    /// `query.top_n` matches in sort order.
    pub fn search(&self, query: &ShardQuery) -> Result<(u64, Vec<Vec<u8>>)> {
        let tantivy_query = self.build_query(query)?;
        let searcher = self.reader.searcher();
        let total = searcher.search(&tantivy_query, &Count)? as u64;
        if query.top_n == 0 || total == 0 {
            return Ok((total, Vec::new()));
        }
        let desc = query.order == SortOrder::Desc;
        let sort = move |segment: &tantivy::SegmentReader| {
            let ff = segment.fast_fields();
            let ts = ff.date("timestamp").ok();
            let hi = ff.u64("log_id_hi").ok();
            let lo = ff.u64("log_id_lo").ok();
            move |doc: tantivy::DocId| {
                let t = ts
                    .as_ref()
                    .and_then(|c| c.first(doc))
                    .map(|d| d.into_timestamp_micros())
                    .unwrap_or(0);
                let t = (t as u64) ^ (1 << 63);
                let h = hi.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
                let l = lo.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
                if desc {
                    (t, h, l)
                } else {
                    (!t, !h, !l)
                }
            }
        };
        let top = searcher.search(
            &tantivy_query,
            &TopDocs::with_limit(query.top_n).order_by(sort),
        )?;
        let mut keys = Vec::with_capacity(top.len());
        for (_, address) in top {
            keys.push(self.stored_key(&searcher, address)?);
        }
        Ok((total, keys))
    }

    fn stored_key(&self, searcher: &tantivy::Searcher, address: DocAddress) -> Result<Vec<u8>> {
        let doc: TantivyDocument = searcher.doc(address)?;
        doc.get_first(self.fields.key)
            .and_then(|v| v.as_bytes())
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Corrupt {
                shard_id: self.shard_id,
                reason: "indexed document without a key".into(),
            })
    }

    fn build_query(&self, q: &ShardQuery) -> Result<Box<dyn Query>> {
        let f = &self.fields;
        let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(text) = q.text.as_deref().filter(|t| !t.trim().is_empty()) {
            let mut parser = QueryParser::for_index(
                &self.index,
                vec![f.message, f.exception_message, f.stack_trace],
            );
            parser.set_conjunction_by_default();
            let parsed = parser
                .parse_query(text)
                .map_err(|e| Error::InvalidQuery(e.to_string()))?;
            must.push((Occur::Must, parsed));
        }
        if q.start_us.is_some() || q.end_us.is_some() {
            let bound = |v: Option<i64>| match v {
                Some(us) => std::ops::Bound::Included(Term::from_field_date_for_search(
                    f.timestamp,
                    DateTime::from_timestamp_micros(us),
                )),
                None => std::ops::Bound::Unbounded,
            };
            must.push((
                Occur::Must,
                Box::new(RangeQuery::new(bound(q.start_us), bound(q.end_us))),
            ));
        }
        let any_of = |terms: Vec<Term>| -> Box<dyn Query> {
            let clauses = terms
                .into_iter()
                .map(|t| {
                    (
                        Occur::Should,
                        Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>,
                    )
                })
                .collect();
            Box::new(BooleanQuery::new(clauses))
        };
        if !q.services.is_empty() {
            let terms = q
                .services
                .iter()
                .map(|s| Term::from_field_text(f.service, s))
                .collect();
            must.push((Occur::Must, any_of(terms)));
        }
        if !q.levels.is_empty() {
            let terms = q
                .levels
                .iter()
                .map(|l| Term::from_field_text(f.level, l.as_str()))
                .collect();
            must.push((Occur::Must, any_of(terms)));
        }
        for (path, value) in &q.fields {
            let mut term = Term::from_field_json_path(f.fields, path, false);
            term.append_type_and_str(value);
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        if must.is_empty() {
            return Ok(Box::new(tantivy::query::AllQuery));
        }
        Ok(Box::new(BooleanQuery::new(must)))
    }
}
