//! The query API's contract beyond the answers themselves: the OpenAPI document, syntax errors
//! with positions, cursors, deadlines and partial answers, masked query values.

use serde_json::{json, Value};

use crate::harness::Veil;

fn ingest(veil: &Veil, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        ingest_range(veil, chunk);
    }
    veil.wait_for_query(json!({"limit": 0}), "entries searchable", |a| {
        a["total"].as_u64() == Some(n as u64)
    });
}

fn ingest_range(veil: &Veil, range: &[usize]) {
    let body: String = range
        .iter()
        .map(|&i| {
            format!(
                "{}\n",
                json!({"service": format!("svc-{}", i % 7), "level": (["INFO", "ERROR"][i % 2]),
                       "message": format!("payment failed for order {i}"),
                       "fields": {"user_id": format!("user_{}", i % 500), "duration_ms": i % 1000}})
            )
        })
        .collect();
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn the_openapi_document_is_served_and_its_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    ingest(&veil, 50);
    let doc: Value = reqwest::blocking::get(veil.url("/api/v1/openapi.json"))
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let op = &doc["paths"]["/api/v1/logs/query"]["post"];
    let example = op["requestBody"]["content"]["application/json"]["example"].clone();
    // The documented request is one the node accepts.
    let (status, answer) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        example.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["aggregations"]["per_service"]["buckets"].is_array(),
        "{answer}"
    );
    // Every documented property of the request is accepted, and nothing undocumented is.
    let props = doc["components"]["schemas"]["QueryRequest"]["properties"]
        .as_object()
        .unwrap();
    for name in props.keys() {
        let value = match name.as_str() {
            "query" => json!("payment"),
            "filters" => json!({}),
            "sort" => json!({"field": "timestamp"}),
            "search_after" => continue,
            "allow_partial" => json!(true),
            "timeout_ms" => json!(60_000),
            "aggs" => json!({}),
            "consistency" => json!("strong"),
            _ => json!(5),
        };
        let (status, answer) = veil.post(
            "/api/v1/logs/query",
            "application/json",
            json!({ name: value }).to_string(),
        );
        assert_eq!(status, 200, "documented property {name}: {answer}");
    }
    let (status, _) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        r#"{"undocumented": 1}"#,
    );
    assert_eq!(status, 400);
}

#[test]
fn bad_queries_are_400s_that_say_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    ingest(&veil, 20);
    let cases = [
        (
            json!({"query": "payment AND (failed OR"}),
            "invalid_query",
            "at character 23",
        ),
        (
            json!({"query": "\"jane@example.org"}),
            "invalid_query",
            "at character 1",
        ),
        (json!({"query": "level:loud"}), "invalid_query", "level"),
        (
            json!({"filters": {"fields": {"d": {"gte": "x"}}}}),
            "invalid_filter",
            "must be a number",
        ),
        (
            json!({"filters": {"fields": {"d": {"near": 1}}}}),
            "invalid_filter",
            "unknown condition",
        ),
        (
            json!({"filters": {"fields": {"d": []}}}),
            "invalid_filter",
            "empty list",
        ),
        (
            json!({"sort": {"field": "message"}}),
            "invalid_sort",
            "cannot sort",
        ),
        (
            json!({"search_after": "zz"}),
            "invalid_cursor",
            "not a cursor",
        ),
        (
            json!({"aggs": {"x": {"median": {"field": "d"}}}}),
            "invalid_aggregation",
            "",
        ),
        (
            json!({"aggs": {"s": {"terms": {"field": "service"}, "aggs": {"m":
                {"date_histogram": {"field": "timestamp", "calendar_interval": "month"}}}}}}),
            "invalid_aggregation",
            "top level",
        ),
    ];
    for (body, code, needle) in cases {
        let (status, answer) =
            veil.post("/api/v1/logs/query", "application/json", body.to_string());
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        assert!(
            !message.contains("jane"),
            "an error must not echo query text: {message}"
        );
    }
    // A cursor is bound to its sort, and excludes offset.
    let page = veil.query(json!({"limit": 5}));
    let cursor = page["search_after"].as_str().unwrap().to_string();
    let (status, answer) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        json!({"limit": 5, "search_after": cursor, "sort": {"order": "asc"}}).to_string(),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    let (status, _) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        json!({"limit": 5, "offset": 5, "search_after": cursor}).to_string(),
    );
    assert_eq!(status, 400);
}

#[test]
fn a_passed_deadline_is_a_504_with_what_is_known_or_a_partial_200() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    ingest(&veil, 20_000);
    // Heavy enough that no shard finishes in 1 ms on any machine this runs on; the loop only
    // guards against a machine so fast that it does.
    let heavy = json!({
        "limit": 10, "timeout_ms": 1,
        "aggs": {"u": {"terms": {"field": "user_id", "size": 10000},
                       "aggs": {"p": {"percentiles": {"field": "duration_ms"}},
                                "c": {"cardinality": {"field": "service"}}}}}
    });
    let mut saw_timeout = false;
    for _ in 0..20 {
        let (status, answer) =
            veil.post("/api/v1/logs/query", "application/json", heavy.to_string());
        if status == 200 {
            continue;
        }
        assert_eq!(status, 504, "{answer}");
        assert_eq!(answer["error"]["code"], "query_timeout", "{answer}");
        assert_eq!(answer["partial"], true, "{answer}");
        assert!(
            answer["shards"]["timed_out"].as_u64().unwrap() > 0,
            "{answer}"
        );
        assert!(
            answer["total"].is_u64() && answer["logs"].is_array(),
            "{answer}"
        );
        saw_timeout = true;
        break;
    }
    assert!(saw_timeout, "a 1 ms deadline never passed");
    let mut partial = heavy.clone();
    partial["allow_partial"] = json!(true);
    let (status, answer) = veil.post(
        "/api/v1/logs/query",
        "application/json",
        partial.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    if answer["partial"] == true {
        let s = &answer["shards"];
        assert_eq!(
            s["ok"].as_u64().unwrap()
                + s["failed"].as_u64().unwrap()
                + s["timed_out"].as_u64().unwrap(),
            s["total"].as_u64().unwrap()
        );
    }
    // The same query with time to finish is whole.
    let mut whole = heavy;
    whole["timeout_ms"] = json!(60_000);
    let answer = veil.query(whole);
    assert_eq!(answer["partial"], false);
    assert_eq!(answer["total"], 20_000);
    assert_eq!(
        answer["aggregations"]["u"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        500
    );
}

#[test]
fn filter_values_and_query_text_find_masked_values() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let body = [
        json!({"service": "auth", "message": "login failed for jane.doe@example.org",
               "fields": {"email": "jane.doe@example.org", "attempt": 3}}),
        json!({"service": "auth", "message": "login failed for bob@example.org",
               "fields": {"email": "bob@example.org", "attempt": 1}}),
    ]
    .iter()
    .map(|e| format!("{e}\n"))
    .collect::<String>();
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
    assert_eq!(status, 200, "{answer}");
    veil.wait_for_query(json!({"limit": 0}), "entries searchable", |a| {
        a["total"] == 2
    });
    let by_text = veil.query(json!({"query": "failed AND jane.doe@example.org"}));
    assert_eq!(by_text["total"], 1, "{by_text}");
    let by_list = veil.query(json!({"filters": {"fields": {
        "email": ["jane.doe@example.org", "bob@example.org"], "attempt": {"gt": 2}}}}));
    assert_eq!(by_list["total"], 1, "{by_list}");
    let text = by_list.to_string();
    assert!(!text.contains("jane.doe@example.org"), "{text}");
}
