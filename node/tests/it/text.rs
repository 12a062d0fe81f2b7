//! Plain-text ingestion through the binary: lines of different formats and a folded Java
//! trace, each becoming one entry with its timestamp, level and exception.

use serde_json::json;

use crate::harness::Veil;

#[test]
fn text_lines_and_traces_become_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    let now = time::OffsetDateTime::now_utc();
    let ts = |secs: i64| {
        (now - time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let body = format!(
        "{} INFO checkout started user_id=u-7 status=200\n\
         {} ERROR checkout failed\n\
         java.lang.IllegalStateException: cart 991 is empty\n\
         \tat com.shop.Checkout.run(Checkout.java:42)\n\
         \tat com.shop.Api.post(Api.java:17)\n\
         level=warn msg=\"slow request\" duration_ms=1200 time={}\n\
         a line with no time at all\n",
        ts(30),
        ts(20),
        ts(10)
    );
    let (status, answer) = veil.post_with_headers(
        "/api/v1/logs",
        "text/plain",
        &[("x-service-name", "shop")],
        body,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 4, "{answer}");

    let found = veil.wait_for_query(
        json!({"filters": {"services": ["shop"]}, "sort": {"field": "timestamp", "order": "asc"}}),
        "the text entries",
        |a| a["total"] == 4,
    );
    let logs = found["logs"].as_array().unwrap();
    let by_start = |prefix: &str| {
        logs.iter()
            .find(|l| l["message"].as_str().unwrap().contains(prefix))
            .unwrap_or_else(|| panic!("no entry with {prefix:?} in {found}"))
    };
    let first = by_start("checkout started");
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["fields"]["user_id"], "u-7");
    assert_eq!(first["fields"]["status"], 200);

    let failed = by_start("checkout failed");
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["exception_type"], "java.lang.IllegalStateException");
    assert!(
        failed["message"].as_str().unwrap().contains("Api.java:17"),
        "trace folded in"
    );
    assert_eq!(failed["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(failed["exception_id"].as_str().unwrap().len(), 16);

    let slow = by_start("slow request");
    assert_eq!(slow["level"], "WARN");
    assert_eq!(slow["fields"]["duration_ms"], 1200);
    assert_eq!(slow["fields"]["log_format"], "logfmt");

    let bare = by_start("no time at all");
    assert_eq!(bare["fields"]["timestamp_source"], "receive_time");

    // A forced format that does not exist is a clear 400.
    let (status, answer) = veil.post_with_headers(
        "/api/v1/logs?format=xml",
        "text/plain",
        &[("x-service-name", "shop")],
        "x".to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_format");
    veil.stop();
}

/// The lines Python's `logging.exception()` writes, posted as text: one entry with the message
/// line's time and level and the traceback's exception (issue 25).
#[test]
fn a_python_traceback_under_its_log_line_is_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let when = (time::OffsetDateTime::now_utc() - time::Duration::minutes(5))
        .replace_nanosecond(500_000_000)
        .unwrap();
    let ts = when
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = format!(
        "{ts} ERROR payment worker crashed\n\
         Traceback (most recent call last):\n  \
         File \"/srv/pay/worker.py\", line 88, in handle\n    \
         amount = order[\"amount\"]\n\
         KeyError: 'amount'\n"
    );
    let (status, answer) = veil.post_with_headers(
        "/api/v1/logs",
        "text/plain",
        &[("x-service-name", "pay")],
        body,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let found = veil.wait_for_query(
        json!({"filters": {"services": ["pay"]}}),
        "the traceback entry",
        |a| a["total"] == 1,
    );
    let entry = &found["logs"][0];
    assert_eq!(entry["level"], "ERROR", "{entry}");
    assert_eq!(entry["exception_type"], "KeyError", "{entry}");
    let message = entry["message"].as_str().unwrap();
    assert!(message.starts_with(&ts), "{entry}");
    assert!(message.contains("payment worker crashed"), "{entry}");
    assert!(message.contains("worker.py"), "{entry}");
    let stored = time::OffsetDateTime::parse(
        entry["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(stored, when, "{entry}");
}
