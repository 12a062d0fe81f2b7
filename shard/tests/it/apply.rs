//! The apply path: idempotency, index catch-up after a restart, snapshot round trip.

use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload};
use uuid::Uuid;
use veil_raft::{Command, SnapshotData, TypeConfig};
use veil_shard::{
    query_lang, FieldCondition, Level, Scalar, Shard, ShardCommand, ShardConfig, ShardId, ShardMap,
    ShardQuery, ShardStateMachine, StoredEntry,
};

use crate::conformance::open_db;

const SHARDS: u32 = 4;

pub(crate) fn entry_for(shard: ShardId, n: u64) -> StoredEntry {
    let map = ShardMap::new(SHARDS);
    // Find a service that routes to `shard` in hour 480_000.
    let ts = 480_000i64 * 3_600_000_000 + n as i64 * 1000;
    let service = (0..)
        .map(|i| format!("svc-{i}"))
        .find(|s| map.shard_for(s, 480_000) == shard)
        .expect("some service routes to every shard");
    StoredEntry {
        log_id: Uuid::from_u128(u128::from(n) + 1),
        timestamp_us: ts,
        received_at_us: ts,
        service,
        level: Level::Error,
        message: format!("payment failed attempt {n}"),
        fields_json: format!(r#"{{"user_id":"user_{n}"}}"#),
        exception_type: Some(format!("Fault{}Exception", n % 3)),
        exception_message: None,
        stack_trace: None,
        fingerprint: None,
        host: Some("api-1".into()),
        environment: Some("prod".into()),
        region: None,
        sealed_original: None,
    }
}

pub(crate) fn open(dir: &std::path::Path, db: Arc<rocksdb::DB>) -> Arc<Shard> {
    open_with(dir, db, Default::default())
}

fn open_with(
    dir: &std::path::Path,
    db: Arc<rocksdb::DB>,
    index_persist: veil_shard::PersistPolicy,
) -> Arc<Shard> {
    open_configured(dir, db, index_persist, 65_536)
}

/// A shard that writes its exception counters once `pending_max` rows are pending.
fn open_with_counters(
    dir: &std::path::Path,
    db: Arc<rocksdb::DB>,
    pending_max: usize,
) -> Arc<Shard> {
    open_configured(dir, db, Default::default(), pending_max)
}

fn open_configured(
    dir: &std::path::Path,
    db: Arc<rocksdb::DB>,
    index_persist: veil_shard::PersistPolicy,
    pending_max: usize,
) -> Arc<Shard> {
    let config = ShardConfig {
        data_dir: dir.to_path_buf(),
        index_heap_bytes: 15_000_000,
        shard_map: ShardMap::new(SHARDS),
        rollup_cache_entries: 100_000,
        index_persist,
        proposals_kept: 4,
        counter_rows_pending_max: pending_max,
    };
    Shard::open(ShardId(1), db, config).expect("open shard")
}

/// Index queue records of shard 1 still in RocksDB.
fn queued(db: &rocksdb::DB) -> usize {
    let cf = db.cf_handle(veil_shard::CF_INDEX_QUEUE).unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
}

/// Applies one Raft entry carrying `entries`, as openraft would after a restart (no client is
/// waiting, so there is no responder); the outcomes show in what the shard holds.
pub(crate) async fn apply(sm: &mut ShardStateMachine, index: u64, entries: Vec<StoredEntry>) {
    apply_command(sm, index, ShardCommand::Append(entries)).await
}

async fn apply_command(sm: &mut ShardStateMachine, index: u64, command: ShardCommand) {
    let command = Command(command.encode());
    let entry: Entry<_, _> = Entry {
        log_id: log_id::<TypeConfig>(1, 0, index),
        payload: EntryPayload::Normal(command),
    };
    sm.apply(futures::stream::iter([Ok((entry, None))]))
        .await
        .expect("apply");
}

async fn build_snapshot(
    sm: &mut ShardStateMachine,
) -> openraft::alias::SnapshotOf<TypeConfig, SnapshotData> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// A shard in `dir` (on `db`) that applied `count` entries as Raft entry 1, and its state
/// machine.
pub(crate) async fn holding(
    dir: &std::path::Path,
    db: Arc<rocksdb::DB>,
    count: u64,
) -> (Arc<Shard>, ShardStateMachine) {
    let shard = open(dir, db);
    let mut sm = ShardStateMachine::new(shard.clone());
    apply(
        &mut sm,
        1,
        (0..count).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    (shard, sm)
}

/// A shard in `dir` holding `count` entries (one Raft entry), and a snapshot of it.
pub(crate) async fn snapshot_of(
    dir: &std::path::Path,
    count: u64,
) -> (
    Arc<Shard>,
    openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
) {
    let (shard, mut sm) = holding(dir, open_db(dir), count).await;
    let snapshot = build_snapshot(&mut sm).await;
    (shard, snapshot)
}

/// A command this node proposed is applied from the shard's proposals (not decoded), and only
/// when the Raft entry's bytes are exactly its encoding: a different entry's bytes are decoded
/// and what they hold is stored, not a proposed command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposed_commands_are_applied_without_decoding_only_for_their_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let shard = open(dir.path(), db);
    let mut sm = ShardStateMachine::new(shard.clone());
    let held = |n: u64| {
        let e = entry_for(ShardId(1), n);
        shard.lookup_log_id(e.log_id).unwrap().is_some()
    };
    let proposed = ShardCommand::Append((0..3).map(|n| entry_for(ShardId(1), n)).collect());
    shard.proposals().put(proposed.encode(), proposed.clone());
    apply_command(&mut sm, 1, proposed).await;
    assert_eq!(shard.proposals().taken(), 1);
    assert!(shard.proposals().is_empty());
    assert!((0..3).all(held));

    // Proposed here but never committed (say, leadership moved): another entry is applied.
    let stale = ShardCommand::Append(vec![entry_for(ShardId(1), 10)]);
    shard.proposals().put(stale.encode(), stale);
    apply(&mut sm, 2, vec![entry_for(ShardId(1), 11)]).await;
    assert_eq!(shard.proposals().taken(), 1, "decoded, not taken");
    assert!(held(11));
    assert!(!held(10), "a proposal is applied only from its own bytes");
    assert_eq!(shard.entry_count().unwrap(), 4);
    shard.commit_index().unwrap();
    assert_eq!(searchable(&shard), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batch_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let shard = open(dir.path(), db);
    let mut sm = ShardStateMachine::new(shard.clone());
    let batch: Vec<_> = (0..10).map(|n| entry_for(ShardId(1), n)).collect();
    apply(&mut sm, 1, batch.clone()).await;
    assert_eq!(shard.entry_count().unwrap(), 10);
    let mut retry = batch;
    retry.push(entry_for(ShardId(1), 10));
    apply(&mut sm, 2, retry).await;
    assert_eq!(
        shard.entry_count().unwrap(),
        11,
        "only the new entry of the retried batch is stored"
    );
    shard.commit_index().unwrap();
    assert_eq!(searchable(&shard), 11);
    // Exception counters are kept on apply, and the retried entries are not counted twice.
    let counted: u64 = counts(&shard).values().sum();
    assert_eq!(counted, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_batches_are_stored_without_the_duplicate_check_and_keyed_ones_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path(), open_db(dir.path()));
    let mut sm = ShardStateMachine::new(shard.clone());
    let minted: Vec<_> = (0..10).map(|n| entry_for(ShardId(1), n)).collect();
    apply_command(&mut sm, 1, ShardCommand::AppendMinted(minted.clone())).await;
    assert_eq!(shard.entry_count().unwrap(), 10);
    // Minted entries are in the idempotency set like any other, so a keyed retry that
    // carries one of their log_ids is still recognised.
    for e in &minted {
        assert_eq!(shard.lookup_log_id(e.log_id).unwrap(), Some(e.timestamp_us));
    }
    apply(&mut sm, 2, minted[..3].to_vec()).await;
    assert_eq!(shard.entry_count().unwrap(), 10);
    shard.commit_index().unwrap();
    assert_eq!(searchable(&shard), 10);
    assert_eq!(counts(&shard).values().sum::<u64>(), 10);
}

/// Minted log_ids (UUIDv7 of the entry's own time) get no idempotency row: a look-up seeks
/// the millisecond they carry. Name-based (keyed) ones keep their row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_log_ids_are_found_by_their_millisecond_without_an_idempotency_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let shard = open(dir.path(), db.clone());
    let mut sm = ShardStateMachine::new(shard.clone());
    let v7 = |ts: i64| {
        let ts_u = ts as u64;
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            ts_u / 1_000_000,
            (ts_u % 1_000_000) as u32 * 1000,
        ))
    };
    // Several entries inside one millisecond, and others around it.
    let minted: Vec<StoredEntry> = (0..12)
        .map(|n| {
            let mut e = entry_for(ShardId(1), n);
            e.timestamp_us += (n as i64 % 3) * 250 + (n as i64 / 6) * 1000;
            e.log_id = v7(e.timestamp_us);
            e
        })
        .collect();
    apply_command(&mut sm, 1, ShardCommand::AppendMinted(minted.clone())).await;
    let mut keyed = entry_for(ShardId(1), 20);
    keyed.log_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"svc\0key-1");
    apply(&mut sm, 2, vec![keyed.clone()]).await;

    let cf = db.cf_handle(veil_shard::CF_ENTRY_IDS).unwrap();
    let rows: Vec<_> = db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(rows.len(), 1, "only the keyed entry has a row");
    for e in &minted {
        assert_eq!(shard.lookup_log_id(e.log_id).unwrap(), Some(e.timestamp_us));
    }
    assert_eq!(
        shard.lookup_log_id(keyed.log_id).unwrap(),
        Some(keyed.timestamp_us)
    );
    let absent = v7(minted[0].timestamp_us);
    assert_eq!(
        shard.lookup_log_id(absent).unwrap(),
        None,
        "same millisecond, other id"
    );
    // A retry of the keyed entry is still recognised.
    apply(&mut sm, 3, vec![keyed]).await;
    assert_eq!(shard.entry_count().unwrap(), 13);
}

/// A forwarded batch of minted entries whose first try's outcome was unknown is retried as
/// `Append`: entries the first try stored answer duplicate, and nothing is stored, indexed or
/// counted twice; the ones it did not store are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_batch_retried_as_append_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path(), open_db(dir.path()));
    let mut sm = ShardStateMachine::new(shard.clone());
    let minted: Vec<StoredEntry> = (0..8)
        .map(|n| {
            let mut e = entry_for(ShardId(1), n);
            e.log_id = veil_shard::keys::mint_log_id(e.timestamp_us);
            assert!(veil_shard::keys::findable_by_time(e.log_id, e.timestamp_us));
            e
        })
        .collect();
    apply_command(&mut sm, 1, ShardCommand::AppendMinted(minted[..5].to_vec())).await;
    // The retry carries all eight: the five stored and three the first try never reached.
    apply(&mut sm, 2, minted.clone()).await;
    assert_eq!(shard.entry_count().unwrap(), 8);
    shard.commit_index().unwrap();
    assert_eq!(searchable(&shard), 8);
    assert_eq!(counts(&shard).values().sum::<u64>(), 8);
}

/// How many entries a search of everything counts.
pub(crate) fn searchable(shard: &Shard) -> u64 {
    shard
        .search(&ShardQuery {
            top_n: 100,
            ..Default::default()
        })
        .unwrap()
        .total
}

/// Exception counts of a shard over all time, by exception type.
fn counts(shard: &Shard) -> std::collections::BTreeMap<String, u64> {
    let all = shard
        .exception_counts(
            i64::MIN / 2,
            i64::MAX / 2,
            &veil_shard::exceptions::CounterFilter::default(),
            None,
        )
        .unwrap();
    all.totals
        .values()
        .map(|c| (c.exception_type.clone(), c.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_indexes_what_the_last_commit_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    {
        let (shard, mut sm) = holding(dir.path(), db.clone(), 5).await;
        shard.commit_index().unwrap();
        apply(
            &mut sm,
            2,
            (5..12).map(|n| entry_for(ShardId(1), n)).collect(),
        )
        .await;
        // No commit: the second batch is applied to RocksDB but not in a tantivy commit.
    }
    let shard = open(dir.path(), db);
    let hits = shard
        .search(&ShardQuery {
            top_n: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        hits.total, 12,
        "restart must index the applied entries the commit lacked"
    );
    let one = shard
        .search(&ShardQuery {
            fields: vec![(
                "user_id".into(),
                FieldCondition::AnyOf(vec![Scalar::Str("user_7".into())]),
            )],
            top_n: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.entries[0].1.message, "payment failed attempt 7");
}

/// A commit makes entries searchable at once but reaches the disk only when the persist policy
/// says so; the index queue keeps their keys until then, so a crash in between reindexes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searchable_but_unpersisted_entries_are_reindexed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let never = veil_shard::PersistPolicy {
        interval: std::time::Duration::from_secs(3600),
        ram_bytes_max: usize::MAX,
    };
    {
        let shard = open_with(dir.path(), db.clone(), never);
        let mut sm = ShardStateMachine::new(shard.clone());
        apply(
            &mut sm,
            1,
            (0..8).map(|n| entry_for(ShardId(1), n)).collect(),
        )
        .await;
        shard.commit_index().unwrap();
        assert_eq!(searchable(&shard), 8, "searchable after the commit");
        let stats = shard.stats();
        assert_eq!(stats.searchable_index, 1);
        assert_eq!(stats.persisted_index, 0, "not on disk");
        assert!(stats.index_ram_bytes > 0);
        assert_eq!(
            queued(&db),
            1,
            "the queue record stays until the commit is on disk"
        );
        // Dropped without flush_index: a crash.
    }
    let shard = open_with(dir.path(), db.clone(), never);
    assert_eq!(searchable(&shard), 8, "reindexed from the queue");
    assert_eq!(
        shard.stats().persisted_index,
        1,
        "catch-up persists what it reindexed"
    );
    assert_eq!(queued(&db), 0);

    // An immediate policy persists at every commit and trims the queue.
    drop(shard);
    let shard = open_with(
        dir.path(),
        db.clone(),
        veil_shard::PersistPolicy {
            interval: std::time::Duration::ZERO,
            ram_bytes_max: usize::MAX,
        },
    );
    let mut sm = ShardStateMachine::new(shard.clone());
    apply(
        &mut sm,
        2,
        (8..12).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    assert_eq!(queued(&db), 1);
    shard.commit_index().unwrap();
    assert_eq!(shard.stats().persisted_index, 2);
    assert_eq!(queued(&db), 0);
}

/// Counter rows of shard 1 stored in the minute-row column family.
fn counter_rows(db: &rocksdb::DB) -> usize {
    let cf = db.cf_handle(veil_shard::exceptions::CF_EXCEPTIONS).unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
}

/// Exception counters are summed in memory across Raft entries and written later; what a
/// crash loses before that write is recounted from the index queue at the next open, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_counters_not_yet_written_are_recounted_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let expected = |n: u64| -> std::collections::BTreeMap<String, u64> {
        let mut m = std::collections::BTreeMap::new();
        for i in 0..n {
            *m.entry(format!("Fault{}Exception", i % 3)).or_insert(0) += 1;
        }
        m
    };
    {
        let shard = open(dir.path(), db.clone());
        let mut sm = ShardStateMachine::new(shard.clone());
        apply(
            &mut sm,
            1,
            (0..6).map(|n| entry_for(ShardId(1), n)).collect(),
        )
        .await;
        apply(
            &mut sm,
            2,
            (6..11).map(|n| entry_for(ShardId(1), n)).collect(),
        )
        .await;
        assert_eq!(counter_rows(&db), 0, "summed in memory, not yet written");
        // Dropped without a flush: a crash.
    }
    let shard = open(dir.path(), db.clone());
    assert!(counter_rows(&db) > 0, "the open wrote the recount");
    assert_eq!(counts(&shard), expected(11), "recounted from the queue");
    let mut sm = ShardStateMachine::new(shard.clone());
    apply(
        &mut sm,
        3,
        (11..15).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    // A reader writes what is pending first: it sees every applied entry.
    assert_eq!(counts(&shard), expected(15));
    apply(
        &mut sm,
        4,
        (15..17).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    shard.flush_index().unwrap();
    assert_eq!(queued(&db), 0, "counted and persisted: the queue is empty");
    drop((sm, shard));
    let shard = open(dir.path(), db.clone());
    assert_eq!(counts(&shard), expected(17), "nothing counted twice");

    // A directory written when every apply wrote its own counters has no counter mark: its
    // counters are complete, and the queue records still there must not be counted again.
    drop(shard);
    let shard = open_with_counters(dir.path(), db.clone(), 0);
    let mut sm = ShardStateMachine::new(shard.clone());
    apply(
        &mut sm,
        5,
        (17..20).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    assert!(queued(&db) > 0);
    let meta = db.cf_handle(veil_shard::CF_SHARD_META).unwrap();
    let mark = db
        .get_cf(meta, veil_shard::keys::meta_key(ShardId(1), 4))
        .unwrap();
    assert_eq!(
        mark.as_deref(),
        Some(&5u64.to_le_bytes()[..]),
        "with no rows allowed pending, the apply wrote its counters and the mark"
    );
    db.delete_cf(meta, veil_shard::keys::meta_key(ShardId(1), 4))
        .unwrap();
    drop((sm, shard));
    let shard = open(dir.path(), db.clone());
    assert_eq!(counts(&shard), expected(20));
}

/// Directories written before the queue kept one record per Raft entry held one record per
/// entry (`seq` = its position, the value its key); a restart still indexes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_indexes_from_per_entry_queue_records_of_older_directories() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let batch: Vec<_> = (0..6).map(|n| entry_for(ShardId(1), n)).collect();
    {
        let shard = open(dir.path(), db.clone());
        let mut sm = ShardStateMachine::new(shard.clone());
        apply(&mut sm, 1, batch.clone()).await;
    }
    let cf = db.cf_handle(veil_shard::CF_INDEX_QUEUE).unwrap();
    let record = veil_shard::keys::queue_key(ShardId(1), 1, 0);
    let queued = db
        .get_cf(cf, record)
        .unwrap()
        .expect("one record for the Raft entry");
    assert_eq!(queued.len(), batch.len() * veil_shard::keys::ENTRY_KEY_LEN);
    db.delete_cf(cf, record).unwrap();
    for (seq, e) in batch.iter().enumerate() {
        let key = veil_shard::keys::entry_key(ShardId(1), e.timestamp_us, e.log_id);
        db.put_cf(
            cf,
            veil_shard::keys::queue_key(ShardId(1), 1, seq as u32),
            key,
        )
        .unwrap();
    }
    let shard = open(dir.path(), db);
    assert_eq!(searchable(&shard), 6);
}

/// The live state behind a snapshot's data (every snapshot built now is live).
fn live(data: SnapshotData) -> Arc<dyn veil_raft::LiveState> {
    match data {
        SnapshotData::Live(state) => state,
        SnapshotData::File(path) => panic!("expected a live snapshot, got the file {path:?}"),
    }
}

/// Files under a directory, recursively (a missing directory has none).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flat_map(|e| {
        let path = e.unwrap().path();
        if path.is_dir() {
            files_under(&path)
        } else {
            vec![path]
        }
    })
    .collect()
}

/// Building a snapshot copies nothing: it records the applied state, which stays the current
/// snapshot's metadata as the shard moves on. A copy written to travel carries the state as it
/// is when written, with that state's metadata; installing it under any other metadata is
/// refused before anything changes, and under its own it installs that newer state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_the_live_shard_and_copies_carry_their_own_state() {
    let dir_a = tempfile::tempdir().unwrap();
    let (shard_a, built) = snapshot_of(dir_a.path(), 20).await;
    assert_eq!(built.meta.last_log_id, Some(log_id::<TypeConfig>(1, 0, 1)));
    assert!(
        files_under(&dir_a.path().join("snapshots")).is_empty(),
        "a snapshot writes no file: {:?}",
        files_under(&dir_a.path().join("snapshots"))
    );
    let mut sm_a = ShardStateMachine::new(shard_a.clone());
    apply(
        &mut sm_a,
        2,
        (20..25).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    let current = sm_a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta, built.meta,
        "the last built snapshot stays current"
    );
    let (meta, file) = live(current.snapshot).write_file().unwrap();
    assert_eq!(meta.last_log_id, Some(log_id::<TypeConfig>(1, 0, 2)));

    let dir_b = tempfile::tempdir().unwrap();
    let shard_b = open(dir_b.path(), open_db(dir_b.path()));
    let mut sm_b = ShardStateMachine::new(shard_b.clone());
    apply(&mut sm_b, 1, vec![entry_for(ShardId(1), 99)]).await;
    let refused = sm_b
        .install_snapshot(&built.meta, SnapshotData::File(file.clone()))
        .await
        .expect_err("a file holding index 2 installed as index 1");
    assert!(
        refused.to_string().contains("snapshot file holds"),
        "{refused}"
    );
    let live_refused = sm_b
        .install_snapshot(&built.meta, built.snapshot)
        .await
        .expect_err("a live state past index 1 installed as index 1");
    assert!(
        live_refused.to_string().contains("snapshot file holds"),
        "{live_refused}"
    );
    assert_eq!(
        shard_b.entry_count().unwrap(),
        1,
        "a refused install changes nothing"
    );

    sm_b.install_snapshot(&meta, SnapshotData::File(file.clone()))
        .await
        .unwrap();
    assert_eq!(shard_b.entry_count().unwrap(), 25);
    assert_eq!(counts(&shard_b), counts(&shard_a));
    let installed = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(installed.meta, meta);
    live(installed.snapshot);
    assert!(
        file.try_exists().unwrap(),
        "the file belongs to whoever asked for it"
    );
    assert!(
        files_under(&dir_b.path().join("snapshots")).is_empty(),
        "an install keeps no copy: {:?}",
        files_under(&dir_b.path().join("snapshots"))
    );
}

/// A directory whose current snapshot is a file (written before snapshots were live) hands
/// that file out until the next snapshot replaces the record, which deletes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_left_by_an_earlier_version_is_used_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let (shard, mut sm) = holding(dir.path(), db.clone(), 10).await;
    let built = build_snapshot(&mut sm).await;
    apply(&mut sm, 2, vec![entry_for(ShardId(1), 10)]).await;
    let state = live(built.snapshot);
    let (meta, file) = state.write_file().unwrap();
    // The record an earlier version wrote: `{ meta, file }` under shard_meta tag 2.
    let cf = db.cf_handle(veil_shard::CF_SHARD_META).unwrap();
    let record = bincode::serialize(&(&meta, &file)).unwrap();
    db.put_cf(cf, veil_shard::keys::meta_key(ShardId(1), 2), record)
        .unwrap();

    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta, "the newer of the two records");
    match current.snapshot {
        SnapshotData::File(path) => assert_eq!(path, file),
        SnapshotData::Live(_) => panic!("expected the earlier version's file"),
    }
    // A reopened shard keeps the file its record names and deletes any other (a copy made for
    // a transfer that never finished, a half-written file of an earlier version).
    let (_, stray) = state.write_file().unwrap();
    std::fs::write(stray.with_extension("tmp"), b"cut short").unwrap();
    drop((sm, shard, state));
    let shard = open(dir.path(), db.clone());
    let mut sm = ShardStateMachine::new(shard.clone());
    assert_eq!(
        files_under(&dir.path().join("snapshots")),
        vec![file.clone()],
        "only the recorded file stays"
    );

    apply(&mut sm, 3, vec![entry_for(ShardId(1), 11)]).await;
    let rebuilt = build_snapshot(&mut sm).await;
    assert_eq!(
        rebuilt.meta.last_log_id,
        Some(log_id::<TypeConfig>(1, 0, 3))
    );
    assert!(
        !file.try_exists().unwrap(),
        "the replaced snapshot file is deleted"
    );
    drop((sm, shard));
    let shard = open(dir.path(), db);
    assert!(
        files_under(&dir.path().join("snapshots")).is_empty(),
        "nothing left once no record names a file"
    );
    let mut sm = ShardStateMachine::new(shard);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, rebuilt.meta);
    live(current.snapshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_entries_and_index_on_another_shard() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (shard_a, snapshot) = snapshot_of(dir_a.path(), 20).await;

    let shard_b = open(dir_b.path(), open_db(dir_b.path()));
    let mut sm_b = ShardStateMachine::new(shard_b.clone());
    apply(&mut sm_b, 1, vec![entry_for(ShardId(1), 99)]).await;
    sm_b.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(shard_b.entry_count().unwrap(), 20);
    let hits = shard_b
        .search(&ShardQuery {
            text: query_lang::parse("attempt").unwrap(),
            top_n: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits.total, 20);
    let newest: Vec<_> = hits
        .entries
        .iter()
        .map(|(_, e)| e.message.clone())
        .collect();
    assert_eq!(newest[0], "payment failed attempt 19");
    // Exception counters are recounted from the installed entries (entry 99 is gone), the
    // hourly rollups with them.
    assert_eq!(counts(&shard_b), counts(&shard_a));
    let numbers = |s: &Shard| {
        let mut v: Vec<_> = s
            .exception_numbers(480_000 * 60 - 60, 480_001 * 60 + 60)
            .unwrap()
            .into_iter()
            .map(|(id, n)| (id, n.count))
            .collect();
        v.sort();
        v
    };
    assert_eq!(numbers(&shard_b), numbers(&shard_a));
    assert_eq!(numbers(&shard_a).iter().map(|(_, c)| c).sum::<u64>(), 20);
    let ids: Vec<u64> = numbers(&shard_a).into_iter().map(|(id, _)| id).collect();
    let summary = |s: &Shard| {
        let mut v: Vec<_> = s
            .exception_summary(&ids, 480_000 * 60 - 60, 480_001 * 60 + 60)
            .unwrap()
            .totals
            .into_iter()
            .map(|(id, c)| (id, c.count, c.samples, c.users))
            .collect();
        v.sort();
        v
    };
    assert_eq!(summary(&shard_b), summary(&shard_a));
    assert_eq!(counts(&shard_b).values().sum::<u64>(), 20);
    // The installed snapshot also restores the idempotency set.
    apply(&mut sm_b, 2, vec![entry_for(ShardId(1), 3)]).await;
    assert_eq!(shard_b.entry_count().unwrap(), 20);
    assert_eq!(counts(&shard_b).values().sum::<u64>(), 20);
}

/// The unfiltered ranking reads whole hours from the hourly rollups, ten-minute blocks and
/// minutes from the minute rows, blocks through the shard's cache; for any window, between any
/// two applies, it must agree with summing the minute rows themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_rollups_rank_exactly_like_the_minute_rows() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path(), open_db(dir.path()));
    let mut sm = ShardStateMachine::new(shard.clone());
    let map = ShardMap::new(SHARDS);
    let base_hour = 480_000i64;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut entries = Vec::new();
    for n in 0..3000u64 {
        let hour = base_hour + (next() % 6) as i64;
        // Two services that route to this shard in that hour, so one type spans services.
        let services: Vec<String> = (0..)
            .map(|i| format!("svc-{i}"))
            .filter(|s| map.shard_for(s, hour) == ShardId(1))
            .take(2)
            .collect();
        let mut e = entry_for(ShardId(1), n);
        e.timestamp_us = hour * 3_600_000_000 + (next() % 3_600_000_000) as i64;
        e.service = services[(next() % 2) as usize].clone();
        e.exception_type = Some(format!("E{}", next() % 7));
        e.environment = [None, Some("prod".to_string())][(next() % 2) as usize].clone();
        entries.push(e);
    }
    let lo = base_hour * 60 - 30;
    let span = 6 * 60 + 60;
    // Ask between applies too, so blocks cached by one question are touched by the next
    // apply: the cache must forget them.
    for (i, chunk) in entries.chunks(250).enumerate() {
        apply(&mut sm, i as u64 + 1, chunk.to_vec()).await;
        for _ in 0..25 {
            let start = lo + (next() % span) as i64;
            let end = start + (next() % span) as i64;
            let fast = shard.exception_numbers(start, end).unwrap();
            let slow: std::collections::HashMap<u64, (u64, i64, i64)> = shard
                .exception_counts(
                    start,
                    end,
                    &veil_shard::exceptions::CounterFilter::default(),
                    None,
                )
                .unwrap()
                .totals
                .into_iter()
                .map(|(id, c)| (id, (c.count, c.first_seen_us, c.last_seen_us)))
                .collect();
            let fast: std::collections::HashMap<u64, (u64, i64, i64)> = fast
                .into_iter()
                .map(|(id, n)| (id, (n.count, n.first_seen_us, n.last_seen_us)))
                .collect();
            assert_eq!(fast, slow, "window {start}..{end} after apply {i}");
            // The whole counters of a few exceptions, from the hourly and minute history rows,
            // against the minute rows filtered to them.
            let ids: Vec<u64> = slow.keys().take(3).copied().collect();
            let summary = shard.exception_summary(&ids, start, end).unwrap().totals;
            let filtered = shard
                .exception_counts(
                    start,
                    end,
                    &veil_shard::exceptions::CounterFilter {
                        exception_ids: ids.iter().copied().collect(),
                        ..Default::default()
                    },
                    None,
                )
                .unwrap()
                .totals;
            let view = |m: &std::collections::HashMap<u64, veil_shard::exceptions::Counter>| {
                let mut v: Vec<_> = m
                    .iter()
                    .map(|(id, c)| {
                        (
                            *id,
                            c.count,
                            c.first_seen_us,
                            c.last_seen_us,
                            c.samples.clone(),
                            c.hosts.clone(),
                            c.regions.clone(),
                            c.users.clone(),
                            c.metadata_capped,
                        )
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                view(&summary),
                view(&filtered),
                "summary {start}..{end} after apply {i}"
            );
        }
    }
}

/// Snapshots are written with a zstd body after the header (format 2), and a format-1 file (the
/// same header shape, a plain body) still installs: the old file is made here by hand from the
/// new one, with the header written as the tuple bincode writes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_compressed_and_plain_ones_still_install() {
    let dir_a = tempfile::tempdir().unwrap();
    let (shard_a, snapshot) = snapshot_of(dir_a.path(), 500).await;
    let (meta, file) = live(snapshot.snapshot).write_file().unwrap();
    assert_eq!(meta, snapshot.meta);
    let bytes = std::fs::read(&file).unwrap();
    let header_len = bincode::serialized_size(&(2u32, &snapshot.meta)).unwrap() as usize;
    let (header, body) = bytes.split_at(header_len);
    assert_eq!(header, bincode::serialize(&(2u32, &snapshot.meta)).unwrap());
    assert_eq!(
        &body[..4],
        &[0x28, 0xB5, 0x2F, 0xFD],
        "a zstd frame follows the header"
    );
    let plain = zstd::stream::decode_all(body).unwrap();
    assert!(
        body.len() * 4 < plain.len(),
        "500 similar entries compress well: {} of {} bytes",
        body.len(),
        plain.len()
    );

    let old = dir_a.path().join("format-1.snap");
    let mut v1 = bincode::serialize(&(1u32, &snapshot.meta)).unwrap();
    v1.extend_from_slice(&plain);
    std::fs::write(&old, v1).unwrap();
    for source in [file, old] {
        let dir_b = tempfile::tempdir().unwrap();
        let shard_b = open(dir_b.path(), open_db(dir_b.path()));
        let mut sm_b = ShardStateMachine::new(shard_b.clone());
        sm_b.install_snapshot(&snapshot.meta, SnapshotData::File(source.clone()))
            .await
            .unwrap();
        assert_eq!(shard_b.entry_count().unwrap(), 500, "{source:?}");
        assert_eq!(counts(&shard_b), counts(&shard_a), "{source:?}");
    }
}

/// Counter rows are written as merge operands; whatever grouping RocksDB folds them in (in the
/// memtable, across flushed files, in compaction), a read gives the sequential fold that the
/// read-modify-write apply used to store. Hosts come from a pool larger than the kept maximum,
/// so capping is exercised too.
#[test]
fn counter_operands_read_as_their_fold_across_flushes_and_compactions() {
    use veil_shard::exceptions::{self, Counter, Numbers};
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let cf = db
        .cf_handle(exceptions::CF_EXCEPTION_HISTORY_HOURLY)
        .unwrap();
    let cf_hourly = db.cf_handle(exceptions::CF_EXCEPTION_HOURLY).unwrap();
    let cf_dims = db.cf_handle(exceptions::CF_EXCEPTION_DIMS_HOURLY).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut want: std::collections::HashMap<u8, Counter> = Default::default();
    let mut want_numbers: std::collections::HashMap<u8, Numbers> = Default::default();
    // Per dims row: exception id → numbers.
    let mut want_dims: std::collections::HashMap<u8, std::collections::BTreeMap<u64, Numbers>> =
        Default::default();
    for round in 0..400u64 {
        let row = next(5) as u8;
        let ts = next(1_000_000) as i64;
        let delta = Counter {
            exception_type: "Fault".into(),
            service: "svc".into(),
            environment: None,
            region: None,
            level: "ERROR".into(),
            count: 1 + next(3),
            first_seen_us: ts,
            last_seen_us: ts + next(1000) as i64,
            samples: vec![Uuid::from_u128(u128::from(next(50)))],
            hosts: {
                let mut h: Vec<String> =
                    (0..next(4)).map(|_| format!("h{:02}", next(20))).collect();
                h.sort();
                h.dedup();
                h
            },
            regions: vec![],
            users: vec![format!("u{}", next(40))],
            metadata_capped: false,
        };
        let numbers = Numbers {
            count: delta.count,
            first_seen_us: delta.first_seen_us,
            last_seen_us: delta.last_seen_us,
        };
        db.merge_cf(cf, [row], exceptions::encode_counter(&delta))
            .unwrap();
        db.merge_cf(cf_hourly, [row], exceptions::encode_numbers(&numbers))
            .unwrap();
        want.entry(row)
            .and_modify(|c| c.merge(&delta))
            .or_insert(delta);
        want_numbers
            .entry(row)
            .and_modify(|n| n.merge(&numbers))
            .or_insert(numbers);
        // A packed row of a few exceptions (ids repeat across operands, in any order).
        let mut items: Vec<(u64, Numbers)> = (0..1 + next(4))
            .map(|_| {
                let ts = next(1_000_000) as i64;
                let n = Numbers {
                    count: 1 + next(3),
                    first_seen_us: ts,
                    last_seen_us: ts + next(1000) as i64,
                };
                (next(12) << 60 | next(7), n)
            })
            .collect();
        for (id, n) in &items {
            want_dims
                .entry(row)
                .or_default()
                .entry(*id)
                .and_modify(|w| w.merge(n))
                .or_insert(*n);
        }
        let mut operand = exceptions::DimsRow {
            environment: Some("prod".into()),
            region: None,
            level: "ERROR".into(),
            items: Vec::new(),
        };
        items.sort_unstable_by_key(|(id, _)| *id);
        operand.add_items(items);
        db.merge_cf(cf_dims, [row], operand.encode()).unwrap();
        if round % 37 == 0 {
            db.flush_cf(cf).unwrap();
            db.flush_cf(cf_hourly).unwrap();
            db.flush_cf(cf_dims).unwrap();
        }
        if round % 150 == 149 {
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            db.compact_range_cf(cf_dims, None::<&[u8]>, None::<&[u8]>);
        }
    }
    let check = |stage: &str| {
        for (row, c) in &want {
            let got = db.get_cf(cf, [*row]).unwrap().unwrap();
            assert_eq!(
                exceptions::decode_counter(&got).as_ref(),
                Some(c),
                "{stage}"
            );
            assert_eq!(
                exceptions::decode_numbers(&got),
                Some(Numbers {
                    count: c.count,
                    first_seen_us: c.first_seen_us,
                    last_seen_us: c.last_seen_us
                }),
                "{stage}: the ranking numbers in front"
            );
            let got = db.get_cf(cf_hourly, [*row]).unwrap().unwrap();
            assert_eq!(
                exceptions::decode_numbers(&got).as_ref(),
                want_numbers.get(row),
                "{stage}"
            );
            let got = db.get_cf(cf_dims, [*row]).unwrap().unwrap();
            let got = exceptions::DimsRow::decode(&got).unwrap();
            assert_eq!(
                (got.environment.as_deref(), got.level.as_str()),
                (Some("prod"), "ERROR"),
                "{stage}"
            );
            let want: Vec<(u64, Numbers)> =
                want_dims[row].iter().map(|(id, n)| (*id, *n)).collect();
            assert_eq!(got.items, want, "{stage}: items sorted, each id once");
        }
    };
    assert!(
        want.values().any(|c| c.metadata_capped),
        "the hosts cap was reached"
    );
    check("before compaction");
    db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    db.compact_range_cf(cf_hourly, None::<&[u8]>, None::<&[u8]>);
    db.compact_range_cf(cf_dims, None::<&[u8]>, None::<&[u8]>);
    check("after compaction");
}

/// A question and its answer cross the wire between nodes (bincode) unchanged: the decoded
/// query finds what the original finds, and the decoded answer — hits, total, and partial
/// aggregations of every kind the API offers — renders as the original does (issue 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_and_its_answer_cross_the_wire_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path(), open_db(dir.path()));
    let mut sm = ShardStateMachine::new(shard.clone());
    let entries = (0..60)
        .map(|n| {
            let mut e = entry_for(ShardId(1), n);
            e.fields_json = format!(r#"{{"user_id":"user_{}","duration_ms":{}}}"#, n % 7, n * 7);
            e
        })
        .collect();
    apply(&mut sm, 1, entries).await;
    shard.commit_index().unwrap();
    let aggs: tantivy::aggregation::agg_req::Aggregations = serde_json::from_value(serde_json::json!({
        "svc": {"terms": {"field": "service", "size": 10},
                "aggs": {"d": {"stats": {"field": "fields.duration_ms"}}}},
        "p": {"percentiles": {"field": "fields.duration_ms", "percents": [50.0, 99.0]}},
        "u": {"cardinality": {"field": "fields.user_id"}},
        "t": {"date_histogram": {"field": "timestamp", "fixed_interval": "1s"}},
        "r": {"range": {"field": "fields.duration_ms", "ranges": [{"to": 100.0}, {"from": 100.0}]}},
        "h": {"histogram": {"field": "fields.duration_ms", "interval": 50.0}},
        "a": {"avg": {"field": "fields.duration_ms"}}
    }))
    .unwrap();
    let query = ShardQuery {
        text: query_lang::parse("payment -attempt:3 OR fail*").unwrap(),
        services: vec![entry_for(ShardId(1), 0).service],
        levels: vec![Level::Error],
        fields: vec![(
            "duration_ms".into(),
            FieldCondition::Range {
                gte: Some(14.0),
                gt: None,
                lte: None,
                lt: Some(400.0),
            },
        )],
        sort: veil_shard::SortField::Numeric("duration_ms".into()),
        order: veil_shard::SortOrder::Asc,
        top_n: 5,
        aggs: Some(aggs.clone()),
        agg_memory_bytes: 64 << 20,
        agg_buckets: 10_000,
        ..Default::default()
    };
    let sent: ShardQuery = bincode::deserialize(&bincode::serialize(&query).unwrap()).unwrap();
    assert!(sent.aggs.is_some());
    let here = shard.search(&query).unwrap();
    assert!(here.total > 5 && here.total < 60, "{}", here.total);
    let answer = shard.search(&sent).unwrap();
    let back: veil_shard::ShardHits =
        bincode::deserialize(&bincode::serialize(&answer).unwrap()).unwrap();
    assert_eq!(back.total, here.total);
    assert_eq!(back.entries, here.entries);
    let render = |hits: veil_shard::ShardHits| {
        let final_result = hits
            .aggs
            .unwrap()
            .into_final_result(aggs.clone(), Default::default())
            .unwrap();
        serde_json::to_value(final_result).unwrap()
    };
    let (got, want) = (render(back), render(here));
    assert_eq!(got, want);
    assert!(
        want["svc"]["buckets"][0]["d"]["count"].as_u64().unwrap() > 0,
        "{want}"
    );
}
