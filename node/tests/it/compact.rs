//! `POST /api/v1/admin/compact`: snapshots and purges the Raft logs, compacts RocksDB and merges
//! the indexes while the node keeps answering; nothing acknowledged is lost, before or after a
//! restart, and retries stay idempotent.

use serde_json::json;

use crate::harness::Veil;

fn batch(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"service": format!("svc-{}", i % 5), "message": format!("entry {i}"),
                       "fields": {"idempotency_key": format!("k{i}")}})
            )
        })
        .collect()
}

#[test]
fn compaction_purges_the_raft_log_and_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    for b in 0..3 {
        let (status, answer) = veil.post(
            "/api/v1/logs",
            "application/x-ndjson",
            batch(b * 1000, 1000),
        );
        assert_eq!(status, 200, "{answer}");
    }
    veil.wait_for_query(json!({"limit": 0}), "3000 entries", |a| a["total"] == 3000);

    let (status, report) = veil.post("/api/v1/admin/compact", "application/json", "");
    assert_eq!(status, 200, "{report}");
    assert!(
        report["raft_entries_purged"].as_u64().unwrap() >= 4,
        "{report}"
    );
    assert!(report["bytes_after"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(veil.query(json!({"limit": 0}))["total"], 3000);

    // Still writable, and a retry of a compacted batch is recognised.
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", batch(0, 10));
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "duplicate"),
        "{answer}"
    );
    let (status, _) = veil.post("/api/v1/logs", "application/x-ndjson", batch(3000, 10));
    assert_eq!(status, 200);
    veil.wait_for_query(json!({"limit": 0}), "3010 entries", |a| a["total"] == 3010);

    // A restart rebuilds from the snapshots and what is left of the logs.
    veil.stop();
    let veil = Veil::start(dir.path(), &[]);
    veil.wait_for_query(json!({"limit": 0}), "3010 entries after restart", |a| {
        a["total"] == 3010
    });
    let page =
        veil.query(json!({"query": "entry", "filters": {"services": ["svc-1"]}, "limit": 0}));
    assert_eq!(page["total"], 602);
}

/// A snapshot copies nothing, so the node takes them often and purges its Raft log behind them
/// as it runs: with a snapshot every 5 Raft entries and 5 kept, 40 requests leave at most
/// `5 + 5` entries (and a snapshot or purge still finishing) for a compaction to purge.
#[test]
fn the_raft_log_is_purged_behind_snapshots_as_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(
        dir.path(),
        &[
            "--shards",
            "1",
            "--snapshot-logs-since-last",
            "5",
            "--raft-logs-kept",
            "5",
        ],
    );
    // One request at a time: each is one Raft entry.
    for b in 0..40 {
        let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", batch(b * 10, 10));
        assert_eq!(status, 200, "{answer}");
    }
    veil.wait_for_query(json!({"limit": 0}), "400 entries", |a| a["total"] == 400);
    let (status, report) = veil.post("/api/v1/admin/compact", "application/json", "");
    assert_eq!(status, 200, "{report}");
    let left = report["raft_entries_purged"].as_u64().unwrap();
    assert!(
        left <= 12,
        "{left} of 40+ Raft entries were still unpurged: {report}"
    );
}
