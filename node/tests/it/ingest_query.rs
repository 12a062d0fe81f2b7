//! Ingest then query, over HTTP and gRPC; retries; restarts.

use serde_json::{json, Value};
use veil_proto::v1::veil_client::VeilClient;
use veil_proto::v1::{ExceptionInfo, IngestEntry, IngestRequest, QueryRequest, TimestampRange};

use crate::harness::{bucket_counts, Veil};

fn ids(answer: &Value) -> Vec<String> {
    answer["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["log_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn http_ingest_then_query_finds_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let health = reqwest::blocking::get(veil.url("/api/v1/health")).unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().unwrap(),
        json!({"status": "ok", "degraded_shards": [], "unavailable_shards": []})
    );

    let single = json!({
        "timestamp": "2025-11-17T10:30:00Z", "level": "ERROR",
        "message": "Failed to process payment for user_123",
        "fields": {"user_id": "user_123", "request_id": "req_456"},
        "exception": {"type": "PaymentProcessingException", "message": "Insufficient funds", "stack_trace": "at Pay.run(Pay.java:42)"},
        "metadata": {"host": "api-server-01", "region": "us-east-1"}, "service": "payment-service", "environment": "prod"
    });
    let (status, answer) = veil.post("/api/v1/logs", "application/json", single.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    let first_id = answer["log_id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&first_id).unwrap().get_version_num(),
        7
    );

    let mut ndjson = String::new();
    for i in 0..300 {
        let service = ["order-service", "payment-service", "auth-service"][i % 3];
        let level = ["INFO", "WARN", "ERROR"][i % 3];
        ndjson.push_str(&json!({"timestamp": format!("2025-11-17T{:02}:{:02}:00Z", 8 + i / 60, i % 60), "service": service, "level": level,
            "message": format!("request {i} payment {}", if i % 2 == 0 { "failed" } else { "ok" }), "fields": {"user_id": format!("user_{}", i % 7)}}).to_string());
        ndjson.push('\n');
    }
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", ndjson);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 300);
    assert_eq!(answer["rejected"], 0);

    let all = veil.wait_for_query(json!({"limit": 1000}), "all 301 entries", |a| {
        a["total"] == 301
    });
    assert_eq!(ids(&all).len(), 301);
    // Newest first, ties broken by log_id.
    let stamps: Vec<&str> = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not sorted newest first"
    );

    let one = veil.query(json!({"query": "payment", "filters": {"services": ["payment-service"], "levels": ["ERROR"],
        "fields": {"user_id": "user_123"}, "timestamp_range": {"start": "2025-11-17T10:00:00Z", "end": "2025-11-17T10:59:59Z"}}}));
    assert_eq!(one["total"], 1, "{one}");
    let log = &one["logs"][0];
    assert_eq!(log["log_id"], first_id.as_str());
    assert_eq!(log["service_name"], "payment-service");
    assert_eq!(log["level"], "ERROR");
    assert_eq!(log["exception_type"], "PaymentProcessingException");
    assert_eq!(log["host"], "api-server-01");
    assert_eq!(log["environment"], "prod");
    assert_eq!(log["fields"]["request_id"], "req_456");

    // The same questions answered by brute force over what was sent.
    let failed_auth = veil.query(
        json!({"query": "failed", "filters": {"services": ["auth-service"]}, "limit": 1000}),
    );
    let expected = (0..300).filter(|i| i % 3 == 2 && i % 2 == 0).count();
    assert_eq!(failed_auth["total"], expected as u64);
    let page = veil.query(json!({"filters": {"fields": {"user_id": "user_3"}}, "sort": {"field": "timestamp", "order": "asc"}, "limit": 5, "offset": 5}));
    let expected: Vec<usize> = (0..300).filter(|i| i % 7 == 3).skip(5).take(5).collect();
    let got: Vec<String> = page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = expected
        .iter()
        .map(|i| {
            format!(
                "request {i} payment {}",
                if i % 2 == 0 { "failed" } else { "ok" }
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        page["total"],
        (0..300).filter(|i| i % 7 == 3).count() as u64
    );

    let (status, answer) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        json!({"query": "(unbalanced"}).to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_query");
}

/// `?answer=summary` lists only the rejected entries (with their lines) and the same counts as
/// the full answer; the entries are stored all the same. An unknown answer form is a 400.
#[test]
fn a_summary_answer_lists_only_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let batch = |tag: &str| {
        [
            json!({"service": "sum", "message": format!("{tag} one")}),
            json!({"message": format!("{tag} no service")}),
            json!({"service": "sum", "message": format!("{tag} two")}),
            json!({"service": "sum", "message": format!("{tag} three")}),
        ]
        .iter()
        .map(|e| e.to_string() + "\n")
        .collect::<String>()
    };
    let (status, full) = veil.post("/api/v1/logs", "application/x-ndjson", batch("full"));
    assert_eq!(status, 200, "{full}");
    assert_eq!(
        (full["accepted"].clone(), full["rejected"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(full["results"].as_array().unwrap().len(), 4);

    let (status, summary) = veil.post(
        "/api/v1/logs?answer=summary",
        "application/x-ndjson",
        batch("summary"),
    );
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["accepted"], 3);
    assert_eq!(summary["rejected"], 1);
    let results = summary["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{summary}");
    assert_eq!(results[0]["status"], "rejected");
    assert_eq!(results[0]["line"], 2);
    assert_eq!(results[0]["error"]["code"], "missing_service");
    veil.wait_for_query(
        json!({"query": "summary", "filters": {"services": ["sum"]}}),
        "the summary batch's entries",
        |a| a["total"] == 3,
    );

    let (status, bad) = veil.post(
        "/api/v1/logs?answer=brief",
        "application/x-ndjson",
        batch("bad"),
    );
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_answer");
}

#[test]
fn grpc_ingest_then_query_finds_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Compressed, as clients often send (the node accepts gzip).
        let mut client = VeilClient::connect(format!("http://{}", veil.grpc))
            .await
            .unwrap()
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        let entries = (0..20)
            .map(|i| IngestEntry {
                timestamp: format!("2025-11-17T10:{i:02}:00Z"),
                level: if i % 2 == 0 {
                    "error".into()
                } else {
                    "info".into()
                },
                message: format!("grpc entry {i}"),
                service: "grpc-service".into(),
                fields_json: json!({"n": i}).to_string(),
                exception: (i % 2 == 0).then(|| ExceptionInfo {
                    r#type: "IoError".into(),
                    message: "disk".into(),
                    stack_trace: String::new(),
                }),
                ..Default::default()
            })
            .chain(std::iter::once(IngestEntry {
                message: "no service".into(),
                ..Default::default()
            }))
            .collect();
        let answer = client
            .ingest(IngestRequest { entries })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.accepted, 20);
        assert_eq!(answer.rejected, 1);
        let rejected = &answer.results[20];
        assert_eq!(rejected.status, "rejected");
        assert_eq!(rejected.line, 21);
        assert_eq!(rejected.error.as_ref().unwrap().code, "missing_service");

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let q = QueryRequest {
                services: vec!["grpc-service".into()],
                levels: vec!["ERROR".into()],
                timestamp_range: Some(TimestampRange {
                    start: "2025-11-17T10:00:00Z".into(),
                    end: "2025-11-17T10:59:59Z".into(),
                }),
                limit: 100,
                ..Default::default()
            };
            let r = client.query(q).await.unwrap().into_inner();
            if r.total == 10 {
                assert_eq!(r.logs.len(), 10);
                assert!(r
                    .logs
                    .iter()
                    .all(|l| l.level == "ERROR" && l.exception_type == "IoError"));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gRPC entries never became visible: {}",
                r.total
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // Rich field conditions, aggregations and cursors over gRPC.
        let q = QueryRequest {
            services: vec!["grpc-service".into()],
            fields_json: json!({"n": {"gte": 10}}).to_string(),
            aggs_json: json!({"levels": {"terms": {"field": "level"}},
                              "n": {"max": {"field": "n"}}})
            .to_string(),
            sort_field: "fields.n".into(),
            sort_order: "asc".into(),
            limit: 4,
            ..Default::default()
        };
        let first = client.query(q.clone()).await.unwrap().into_inner();
        assert_eq!(first.total, 10);
        assert_eq!(first.shards.unwrap().failed, 0);
        let aggs: serde_json::Value = serde_json::from_str(&first.aggregations_json).unwrap();
        assert_eq!(aggs["n"]["value"], 19.0);
        let levels = bucket_counts(&aggs["levels"]);
        assert_eq!(
            levels,
            vec![("ERROR".to_string(), 5), ("INFO".to_string(), 5)]
        );
        let mut seen: Vec<String> = first.logs.iter().map(|l| l.message.clone()).collect();
        let mut cursor = first.search_after;
        while !cursor.is_empty() {
            let page = client
                .query(QueryRequest {
                    search_after: cursor,
                    ..q.clone()
                })
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.logs.iter().map(|l| l.message.clone()));
            cursor = page.search_after;
        }
        let want: Vec<String> = (10..20).map(|i| format!("grpc entry {i}")).collect();
        assert_eq!(seen, want, "pages in fields.n order, each entry once");
    });
}

#[test]
fn retried_batch_is_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let batch: String = (0..50)
        .map(|i| json!({"timestamp": "2025-11-17T10:00:00Z", "service": "billing", "message": format!("charge {i}"), "fields": {"idempotency_key": format!("charge-{i}")}}).to_string() + "\n")
        .collect();
    let (_, first) = veil.post("/api/v1/logs", "application/x-ndjson", batch.clone());
    assert_eq!(first["accepted"], 50);
    assert!(first["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "accepted"));
    let (_, again) = veil.post("/api/v1/logs", "application/x-ndjson", batch);
    assert!(
        again["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "duplicate"),
        "{again}"
    );
    assert_eq!(first["results"][7]["log_id"], again["results"][7]["log_id"]);

    // A retry without a timestamp arrives at another time (another hour than the first copy's):
    // it must still be recognised.
    let retry = json!({"service": "billing", "message": "charge 3", "fields": {"idempotency_key": "charge-3"}});
    let (status, answer) = veil.post("/api/v1/logs", "application/json", retry.to_string());
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "duplicate", "{answer}");
    assert_eq!(answer["log_id"], first["results"][3]["log_id"]);

    // The Idempotency-Key header does the same for a single entry.
    let client = reqwest::blocking::Client::new();
    let send = || {
        client
            .post(veil.url("/api/v1/logs"))
            .header("content-type", "application/json")
            .header("idempotency-key", "hdr-1")
            .header("x-service-name", "billing")
            .body(json!({"message": "via header"}).to_string())
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    assert_eq!(send()["status"], "accepted");
    assert_eq!(send()["status"], "duplicate");

    let all = veil.wait_for_query(
        json!({"filters": {"services": ["billing"]}, "limit": 1000}),
        "51 billing entries",
        |a| a["total"] == 51,
    );
    let mut seen = ids(&all);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 51);
}

#[test]
fn restart_keeps_entries_and_rejects_a_different_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    let body: String = (0..100)
        .map(|i| json!({"service": "s", "message": format!("kept {i}")}).to_string() + "\n")
        .collect();
    let (_, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
    assert_eq!(answer["accepted"], 100);
    veil.stop();

    let err = Veil::try_start(dir.path(), &["--shards", "8"])
        .err()
        .expect("a different shard count must not start");
    assert!(
        err.stderr.contains("created with 4 shards"),
        "unclear error: {}",
        err.stderr
    );

    let veil = Veil::start(dir.path(), &[]);
    veil.wait_for_query(
        json!({"query": "kept", "limit": 1}),
        "100 entries after restart",
        |a| a["total"] == 100,
    );
}

fn metrics_text(veil: &Veil) -> String {
    reqwest::blocking::get(veil.url("/metrics"))
        .unwrap()
        .text()
        .unwrap()
}

/// The value on the first `/metrics` line starting with `line_start`.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn metrics_report_ingest_masking_queries_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    let body: String = (0..10)
        .map(|i| {
            json!({"service": "m", "message": format!("user {i} ana@example.com")}).to_string()
                + "\n"
        })
        .collect();
    let (status, _) = veil.post("/api/v1/logs", "application/x-ndjson", body);
    assert_eq!(status, 200);
    veil.query(json!({"filters": {"services": ["m"]}}));
    let text = metrics_text(&veil);
    let value = |line_start: &str| metric(&text, line_start);
    assert_eq!(
        value("veil_ingest_entries_total{outcome=\"accepted\"}"),
        10.0
    );
    assert_eq!(value("veil_ingest_ack_seconds_count"), 1.0);
    assert!(value("veil_raft_commit_seconds_count") >= 1.0);
    assert!(value("veil_mask_seconds_total") > 0.0);
    assert_eq!(value("veil_query_seconds_count"), 1.0);
    let applied: f64 = text
        .lines()
        .filter(|l| l.starts_with("veil_shard_applied_index{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(applied >= 1.0, "{text}");
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The entries were acknowledged, so committed and applied: nothing lags.
    assert!(sum("veil_shard_committed_index{") >= applied, "{text}");
    assert_eq!(sum("veil_shard_apply_lag{"), 0.0, "{text}");
    // Not flushed yet: the entries are in their shards' memtables.
    assert!(
        sum("veil_rocksdb_memtable_bytes{cf=\"entries-") > 0.0,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("veil_rocksdb_sst_bytes{cf=\"raft_log-0000\"}")),
        "{text}"
    );
    // The shared block cache at its default size; reads fill it later (these entries are still
    // in memtables).
    assert_eq!(
        value("veil_rocksdb_block_cache_capacity_bytes"),
        f64::from(1u32 << 30)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("veil_rocksdb_block_cache_bytes ")),
        "{text}"
    );
    veil.stop();
}

#[test]
fn a_stopped_node_closes_its_storage_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    // RocksDB logs its shutdown at `info`; by default it logs nothing once open.
    let mut veil = Veil::start(dir.path(), &["--rocksdb-log-level", "info"]);
    let (status, answer) = veil.post(
        "/api/v1/logs",
        "application/json",
        json!({"service": "close", "message": "last words"}).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    veil.stop();
    // RocksDB's own log ends with its destructor's last line when the database was closed, and
    // not when the process exited with it still open.
    let log = std::fs::read_to_string(dir.path().join("db/LOG")).unwrap();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("Shutdown complete"),
        "RocksDB must be closed, not left to process exit; its log ends with {last:?}\n{}",
        veil.stderr()
    );
    // And what was acknowledged is there after a restart.
    let veil = Veil::start(dir.path(), &[]);
    veil.wait_for_query(json!({"query": "words"}), "the entry after restart", |a| {
        a["total"] == 1
    });
}

/// With less free disk than `--disk-free-bytes-min`, ingest answers 507 and stores nothing,
/// while queries and `/metrics` go on; the same directory with the default bound takes writes.
#[test]
fn a_nearly_full_disk_refuses_ingest_with_507_and_keeps_answering_queries() {
    let dir = tempfile::tempdir().unwrap();
    let line = json!({"service": "disk", "message": "one entry"}).to_string() + "\n";
    // No disk this test runs on has an exabyte free.
    let mut veil = Veil::start(
        dir.path(),
        &["--disk-free-bytes-min", "1000000000000000000"],
    );
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", line.clone());
    assert_eq!(status, 507, "{answer}");
    assert_eq!(answer["error"]["code"], "insufficient_storage", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--disk-free-bytes-min")),
        "{answer}"
    );
    assert_eq!(veil.query(json!({"limit": 0}))["total"], 0);
    let text = metrics_text(&veil);
    let value = |name: &str| metric(&text, &format!("{name} "));
    assert_eq!(value("veil_ingest_disk_full_total"), 1.0);
    assert!(value("veil_disk_free_bytes") > 0.0);
    veil.stop();

    let veil = Veil::start(dir.path(), &[]);
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", line);
    assert_eq!(status, 200, "{answer}");
    veil.wait_for_query(json!({"limit": 0}), "the entry", |a| a["total"] == 1);
}
