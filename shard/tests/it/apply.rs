//! The apply path: idempotency, index catch-up after a restart, snapshot round trip.

use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload};
use uuid::Uuid;
use veil_raft::{Command, TypeConfig};
use veil_shard::{
    query_lang, FieldCondition, Level, Scalar, Shard, ShardCommand, ShardConfig, ShardId, ShardMap,
    ShardQuery, ShardStateMachine, StoredEntry,
};

use crate::conformance::open_db;

const SHARDS: u32 = 4;

fn entry_for(shard: ShardId, n: u64) -> StoredEntry {
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

fn open(dir: &std::path::Path, db: Arc<rocksdb::DB>) -> Arc<Shard> {
    let config = ShardConfig {
        data_dir: dir.to_path_buf(),
        index_heap_bytes: 15_000_000,
        shard_map: ShardMap::new(SHARDS),
        rollup_cache_entries: 100_000,
    };
    Shard::open(ShardId(1), db, config).expect("open shard")
}

/// Applies one Raft entry carrying `entries`, as openraft would after a restart (no client is
/// waiting, so there is no responder); the outcomes show in what the shard holds.
async fn apply(sm: &mut ShardStateMachine, index: u64, entries: Vec<StoredEntry>) {
    let command = Command(ShardCommand::Append(entries).encode());
    let entry: Entry<_, _> = Entry {
        log_id: log_id::<TypeConfig>(1, 0, index),
        payload: EntryPayload::Normal(command),
    };
    sm.apply(futures::stream::iter([Ok((entry, None))]))
        .await
        .expect("apply");
}

/// A shard in `dir` holding `count` entries (one Raft entry), and a snapshot of it.
async fn snapshot_of(
    dir: &std::path::Path,
    count: u64,
) -> (
    Arc<Shard>,
    openraft::alias::SnapshotOf<TypeConfig, std::path::PathBuf>,
) {
    let shard = open(dir, open_db(dir));
    let mut sm = ShardStateMachine::new(shard.clone());
    apply(
        &mut sm,
        1,
        (0..count).map(|n| entry_for(ShardId(1), n)).collect(),
    )
    .await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (shard, snapshot)
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
    let hits = shard
        .search(&ShardQuery {
            top_n: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits.total, 11);
    // Exception counters are kept on apply, and the retried entries are not counted twice.
    let counted: u64 = counts(&shard).values().sum();
    assert_eq!(counted, 11);
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
        let shard = open(dir.path(), db.clone());
        let mut sm = ShardStateMachine::new(shard.clone());
        apply(
            &mut sm,
            1,
            (0..5).map(|n| entry_for(ShardId(1), n)).collect(),
        )
        .await;
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
    let bytes = std::fs::read(&snapshot.snapshot).unwrap();
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
    for source in [snapshot.snapshot.clone(), old] {
        let dir_b = tempfile::tempdir().unwrap();
        let shard_b = open(dir_b.path(), open_db(dir_b.path()));
        let mut sm_b = ShardStateMachine::new(shard_b.clone());
        sm_b.install_snapshot(&snapshot.meta, source.clone())
            .await
            .unwrap();
        assert_eq!(shard_b.entry_count().unwrap(), 500, "{source:?}");
        assert_eq!(counts(&shard_b), counts(&shard_a), "{source:?}");
    }
}
