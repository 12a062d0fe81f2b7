//! `kill -9` at a random moment while clients write, then restart: every acknowledged entry is
//! there, none twice, the index catches up, and the exception counters count every stored entry
//! once (they are summed in memory and recounted after a crash).
//!
//! Short by default (a few cycles); `VEIL_CHAOS_LONG=1` runs many more. `VEIL_CHAOS_SEED=<n>`
//! replays a run.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_chaos_tests::{veil_bin, Rng, VeilProcess};

fn post(
    client: &reqwest::blocking::Client,
    http: &str,
    path: &str,
    ct: &str,
    body: String,
) -> Option<Value> {
    let resp = client
        .post(format!("http://{http}{path}"))
        .header("content-type", ct)
        .body(body)
        .send()
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().ok()
}

/// Reads every entry one cycle wrote, paging by `offset`, once at least `expected_at_least` are
/// visible (the index catches up after a restart).
fn read_cycle(
    client: &reqwest::blocking::Client,
    http: &str,
    cycle: usize,
    expected_at_least: usize,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ids = Vec::new();
        let mut total;
        loop {
            let body = json!({"filters": {"services": ["chaos"], "fields": {"cycle": cycle.to_string()}},
                              "limit": 1000, "offset": ids.len(), "sort": {"order": "asc"}});
            let answer = post(
                client,
                http,
                "/api/v1/logs/query",
                "application/json",
                body.to_string(),
            )
            .expect("query answered");
            total = answer["total"].as_u64().expect("total") as usize;
            let page = answer["logs"].as_array().expect("logs");
            ids.extend(
                page.iter()
                    .map(|l| l["log_id"].as_str().expect("log_id").to_string()),
            );
            if page.is_empty() || ids.len() >= total {
                break;
            }
        }
        if total >= expected_at_least {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "index never caught up: {total} of at least {expected_at_least} entries visible"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the top-K count of cycle `cycle`'s exception equals the entries of that cycle
/// stored (entries committed but not yet applied at the restart still arrive meanwhile).
fn counted_once(client: &reqwest::blocking::Client, http: &str, cycle: usize, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = json!({"filters": {"services": ["chaos"], "fields": {"cycle": cycle.to_string()}},
                          "limit": 0});
        let stored = post(
            client,
            http,
            "/api/v1/logs/query",
            "application/json",
            body.to_string(),
        )
        .expect("query answered")["total"]
            .as_u64()
            .expect("total");
        let top = client
            .get(format!(
                "http://{http}/api/v1/exceptions/top-k?k=1000&window=24h&service=chaos"
            ))
            .send()
            .expect("top-k answered")
            .json::<Value>()
            .expect("top-k JSON");
        let counted = top["exceptions"]
            .as_array()
            .expect("exceptions")
            .iter()
            .find(|e| e["exception_type"] == format!("Cycle{cycle}Error"))
            .map_or(0, |e| e["count"].as_u64().expect("count"));
        if counted == stored {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cycle {cycle}: {counted} exceptions counted for {stored} entries stored (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Index commits reach the disk every 100 ms (default 10 s), so kills also land around persists
/// and the reindexing of what a crash lost from memory.
fn start(dir: &std::path::Path) -> VeilProcess {
    VeilProcess::start(
        &veil_bin(),
        dir,
        &["--shards", "4", "--index-persist-interval-ms", "100"],
    )
    .unwrap_or_else(|e| panic!("{}\n--- stderr ---\n{}", e.message, e.stderr))
}

const BATCH: u64 = 10;
const ENTRIES_PER_WRITER: u64 = 1500;

#[test]
fn acknowledged_entries_survive_kill_9_and_restart() {
    let long = std::env::var("VEIL_CHAOS_LONG").is_ok_and(|v| v == "1");
    let seed = std::env::var("VEIL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let cycles = if long { 20 } else { 3 };
    eprintln!("chaos kill_restart: seed={seed} cycles={cycles} (replay: VEIL_CHAOS_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    // Acknowledged log_ids, per cycle.
    let mut acknowledged: Vec<Arc<Mutex<BTreeSet<String>>>> = Vec::new();
    let mut next_key = 0u64;

    for cycle in 0..cycles {
        let mut node = start(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        acknowledged.push(Arc::default());
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (http, stop, acked, client) = (node.http.clone(), stop.clone(), acknowledged[cycle].clone(), client.clone());
                let base = next_key + w * 1_000_000;
                std::thread::spawn(move || {
                    let mut k = base;
                    // Each writer sends at most ENTRIES_PER_WRITER entries per cycle, paced so
                    // that the kill usually lands while requests are in flight.
                    while !stop.load(Ordering::SeqCst) && k < base + ENTRIES_PER_WRITER {
                        // Writer 0 sends idempotency keys (log_ids from the keys, checked for
                        // duplicates at apply); writer 1 none (log_ids minted by the node).
                        let batch: String = (0..BATCH)
                            .map(|i| {
                                let mut fields = json!({"cycle": cycle.to_string()});
                                if w == 0 {
                                    fields["idempotency_key"] = json!(format!("key-{}", k + i));
                                }
                                json!({"service": "chaos", "level": "ERROR", "message": format!("entry {}", k + i),
                                       "exception": {"type": format!("Cycle{cycle}Error"), "message": "chaos"},
                                       "fields": fields})
                                    .to_string()
                                    + "\n"
                            })
                            .collect();
                        k += BATCH;
                        std::thread::sleep(Duration::from_millis(10));
                        // A failed request (the node died mid-flight) is simply unacknowledged.
                        if let Some(answer) = post(&client, &http, "/api/v1/logs", "application/x-ndjson", batch) {
                            let mut acked = acked.lock().expect("ack lock");
                            for r in answer["results"].as_array().expect("results") {
                                assert_ne!(r["status"], "rejected", "valid entry rejected: {r}");
                                acked.insert(r["log_id"].as_str().expect("log_id").to_string());
                            }
                        }
                    }
                })
            })
            .collect();
        next_key += 10_000_000;
        let kill_after = Duration::from_millis(100 + rng.below(1000));
        // Most cycles also compact while the writers write: every group snapshots its applied
        // state and purges its Raft log behind it, so the restart must rebuild from a purged log.
        let compactor = (rng.below(4) != 0).then(|| {
            let (http, client) = (node.http.clone(), client.clone());
            let after = Duration::from_millis(rng.below(kill_after.as_millis() as u64));
            std::thread::spawn(move || {
                std::thread::sleep(after);
                // It may be cut short by the kill; what it finished must hold either way.
                post(
                    &client,
                    &http,
                    "/api/v1/admin/compact",
                    "application/json",
                    String::new(),
                )
                .is_some()
            })
        });
        std::thread::sleep(kill_after);
        node.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().expect("writer thread");
        }
        let compacted = compactor.map(|c| c.join().expect("compactor thread"));
        let node = start(dir.path());
        for (c, acked) in acknowledged.iter().enumerate() {
            let acked = acked.lock().expect("ack lock").clone();
            if c == cycle {
                eprintln!(
                    "cycle {cycle}: killed after {kill_after:?}, {} entries acknowledged, \
                     compaction {}",
                    acked.len(),
                    match compacted {
                        None => "not asked",
                        Some(true) => "finished",
                        Some(false) => "cut short",
                    }
                );
            }
            let ids = read_cycle(&client, &node.http, c, acked.len());
            let unique: BTreeSet<String> = ids.iter().cloned().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "duplicate entries of cycle {c} after restart (seed {seed})"
            );
            let missing: Vec<_> = acked.difference(&unique).take(5).collect();
            assert!(
                missing.is_empty(),
                "acknowledged entries of cycle {c} lost after kill -9 (seed {seed}): {missing:?}"
            );
            // Every stored entry carries its cycle's exception: the counters (summed in memory,
            // recounted after a crash) must count each exactly once.
            counted_once(&client, &node.http, c, seed);
        }
        drop(node);
    }
}
