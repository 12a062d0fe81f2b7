//! Each kind of bad input gets its 4xx in the one error shape, and nothing of it is stored.

use serde_json::json;

use crate::harness::{sorted_messages, Veil};

fn check(
    veil: &Veil,
    content_type: &str,
    body: impl Into<reqwest::blocking::Body>,
    status: u16,
    code: &str,
) {
    let (got, answer) = veil.post("/api/v1/logs", content_type, body);
    assert_eq!(got, status, "expected {status} {code}, got {answer}");
    assert_eq!(answer["error"]["code"], code, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
}

#[test]
fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let json_ct = "application/json";
    check(
        &veil,
        json_ct,
        "{\"service\": \"s\", \"message\": ",
        400,
        "invalid_json",
    );
    check(
        &veil,
        json_ct,
        json!({"service": "s", "message": "m", "timestamp": "17/11/2025 ten-ish"}).to_string(),
        400,
        "invalid_timestamp",
    );
    check(
        &veil,
        json_ct,
        json!({"service": "s", "message": "m", "level": "SHOUTING"}).to_string(),
        400,
        "invalid_level",
    );
    check(
        &veil,
        json_ct,
        json!({"service": "s", "text": "no message key"}).to_string(),
        400,
        "missing_message",
    );
    check(
        &veil,
        json_ct,
        json!({"service": "s", "message": "m", "timestamp": "2999-01-01T00:00:00Z"}).to_string(),
        400,
        "timestamp_in_future",
    );
    let big = "x".repeat(300 * 1024);
    check(
        &veil,
        json_ct,
        json!({"service": "s", "message": big}).to_string(),
        413,
        "entry_too_large",
    );
    let line = json!({"service": "s", "message": "y".repeat(200 * 1024)}).to_string() + "\n";
    check(
        &veil,
        "application/x-ndjson",
        line.repeat(60),
        413,
        "body_too_large",
    );
    check(
        &veil,
        "application/x-www-form-urlencoded",
        "message=hello",
        415,
        "unsupported_media_type",
    );

    // In a batch each line is answered on its own; the good ones are stored.
    let batch = [
        json!({"service": "s", "message": "good one"}).to_string(),
        "{broken".to_string(),
        json!({"service": "s", "message": "m", "level": "LOUD"}).to_string(),
        json!({"service": "s", "message": "z".repeat(300 * 1024)}).to_string(),
        json!({"service": "s", "message": "good two"}).to_string(),
    ]
    .join("\n");
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"], 3);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["line"], 2);
    assert_eq!(results[1]["error"]["code"], "invalid_json");
    assert_eq!(results[2]["error"]["code"], "invalid_level");
    assert_eq!(results[3]["error"]["code"], "entry_too_large");
    assert_eq!(results[4]["status"], "accepted");

    // Only the two good entries exist, and stay the only ones once everything is searchable.
    let all = veil.wait_for_query(json!({"limit": 100}), "the two good entries", |a| {
        a["total"] == 2
    });
    assert_eq!(sorted_messages(&all), ["good one", "good two"]);

    let (status, answer) = veil.post("/api/v1/logs/query", "application/json", "{not json");
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "invalid_json");
}
