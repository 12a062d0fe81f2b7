//! A short smoke of `veil bench` against a real node, so the tool cannot rot: its output is
//! checked for consistency, never for speed.

use std::process::Command;

use serde_json::Value;

use crate::harness::Veil;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run veil bench");
    assert!(
        out.status.success(),
        "veil bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn bench_ingest_and_query_report_consistent_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    let target = veil.http.clone();
    let r = bench(&[
        "ingest",
        "--target",
        &target,
        "--duration",
        "2s",
        "--batch",
        "200",
        "--concurrency",
        "2",
        "--services",
        "5",
        "--run-name",
        "smoke",
        "--json",
    ]);
    let acked = r["entries_acknowledged"].as_u64().unwrap();
    assert!(acked >= 200, "{r}");
    assert_eq!(acked % 200, 0, "whole batches: {r}");
    assert_eq!(r["requests_failed"], 0, "{r}");
    assert_eq!(
        r["verified"], true,
        "the node holds what it acknowledged: {r}"
    );
    assert_eq!(
        r["ack_latency"]["count"].as_u64().unwrap(),
        acked / 200,
        "{r}"
    );
    assert!(
        r["ack_latency"]["p50_ms"].as_f64().unwrap()
            <= r["ack_latency"]["max_ms"].as_f64().unwrap()
    );
    // Each whole second of the run has its own figures; the seconds' entries and requests are
    // part of the run's (the last fraction of a second has no line of its own).
    let seconds = r["per_second"].as_array().unwrap();
    assert!(!seconds.is_empty(), "{r}");
    let in_seconds: u64 = seconds.iter().map(|s| s["entries"].as_u64().unwrap()).sum();
    let requests: u64 = seconds
        .iter()
        .map(|s| s["ack_latency"]["count"].as_u64().unwrap())
        .sum();
    assert!(in_seconds <= acked && requests <= acked / 200, "{r}");
    assert_eq!(in_seconds, requests * 200, "whole batches each second: {r}");
    // The freshness probe ran (once a second) and top-K counted every probe's exception.
    assert!(
        r["exception_counted_after"]["count"].as_u64().unwrap() >= 1,
        "{r}"
    );
    assert_eq!(r["exception_probes_missed"], 0, "{r}");

    // A second run into the same services is checked on what it added; it asks for summary
    // answers, which carry the counts it relies on.
    let again = bench(&[
        "ingest",
        "--target",
        &target,
        "--duration",
        "1s",
        "--batch",
        "100",
        "--services",
        "5",
        "--run-name",
        "smoke",
        "--answer",
        "summary",
        "--json",
    ]);
    assert_eq!(again["answer"], "summary", "{again}");
    assert!(
        again["entries_acknowledged"].as_u64().unwrap() >= 100,
        "{again}"
    );
    assert_eq!(again["verified"], true, "{again}");
    assert_eq!(
        again["entries_held"], again["entries_acknowledged"],
        "{again}"
    );

    // Replayed LogHub lines, with idempotency keys.
    let loghub = veil_node::pii::corpus::loghub_dir().join("HDFS/HDFS_2k.log");
    let r = bench(&[
        "ingest",
        "--target",
        &target,
        "--duration",
        "1s",
        "--batch",
        "100",
        "--replay",
        loghub.to_str().unwrap(),
        "--idempotency-keys",
        "--spread",
        "24h",
        "--json",
    ]);
    assert_eq!(r["verified"], true, "{r}");

    // The shippers' protocols, with keys and timestamps (OTLP records carry both): every
    // acknowledged entry is held, once.
    for protocol in ["bulk", "otlp-grpc", "otlp-http"] {
        let r = bench(&[
            "ingest",
            "--target",
            &target,
            "--grpc-target",
            &veil.grpc,
            "--protocol",
            protocol,
            "--duration",
            "1s",
            "--batch",
            "100",
            "--services",
            "3",
            "--idempotency-keys",
            "--spread",
            "1h",
            "--json",
        ]);
        assert_eq!(r["requests_failed"], 0, "{protocol}: {r}");
        assert!(
            r["entries_acknowledged"].as_u64().unwrap() >= 100,
            "{protocol}: {r}"
        );
        assert_eq!(r["verified"], true, "{protocol}: {r}");
    }

    let q = bench(&["query", "--target", &target, "--duration", "1s", "--json"]);
    assert_eq!(q["requests_failed"], 0, "{q}");
    for kind in [
        "service_level_1h",
        "text_24h",
        "user_id_24h",
        "terms_service_24h",
        "percentiles_24h",
        "top_k_1h",
        "top_k_24h",
        "top_k_7d",
        "details_24h",
        "top_k_service_24h",
        "top_k_level_24h",
        "top_k_level_7d",
        "details_level_24h",
    ] {
        assert!(q["latency"][kind]["count"].as_u64().unwrap() >= 1, "{q}");
    }
    veil.stop();

    // The in-process tantivy baseline indexes exactly what it generated.
    let i = bench(&["index", "--entries", "3000", "--threads", "2", "--json"]);
    assert_eq!(i["entries"], 3000, "{i}");
    assert!(i["index_entries_per_second"].as_f64().unwrap() > 0.0, "{i}");
}
