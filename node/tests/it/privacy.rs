//! No plaintext personal data reaches the data directory: the Raft log, RocksDB and tantivy
//! files are scanned for the planted values' bytes, with the service keeping its originals
//! (sealed) so that path is scanned too. A non-personal canary in the same entries is found by
//! the same scan, so the scan can fail.

use serde_json::json;

use crate::harness::{files_containing, Veil};

const EMAIL: &str = "jane.roe.canaryperson@example.org";
const SSN: &str = "219-09-9999";
const CANARY: &str = "zqxcanarytoken";

#[test]
fn planted_personal_data_never_reaches_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &["--keep-originals-for", "signup"]);
    let entries: String = (0..200)
        .map(|i| {
            json!({
                "service": "signup", "level": "ERROR",
                "message": format!("signup {i} failed for {EMAIL} ssn {SSN} marker {CANARY}"),
                "fields": {"contact": EMAIL, "note": format!("{CANARY} ssn={SSN}"), "email": "whatever"},
                "exception": {"type": "SignupError", "message": format!("bad ssn {SSN}"), "stack_trace": format!("at signup({EMAIL})")}
            })
            .to_string()
                + "\n"
        })
        .collect();
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", entries);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 200);
    let detected = answer["results"][0]["pii_detected"].as_array().unwrap();
    assert!(
        detected.contains(&json!("email")) && detected.contains(&json!("ssn")),
        "{answer}"
    );
    assert_eq!(answer["results"][0]["pii_masked"], true);

    let found = veil.wait_for_query(
        json!({"query": CANARY, "limit": 1}),
        "the canary entries",
        |a| a["total"] == 200,
    );
    let message = found["logs"][0]["message"].as_str().unwrap();
    assert!(
        !message.contains(EMAIL) && !message.contains(SSN),
        "query answer leaks: {message}"
    );

    veil.stop();

    let data = dir.path();
    assert!(
        !files_containing(data, CANARY.as_bytes()).is_empty(),
        "positive control: the canary must be found by the scan"
    );
    assert_eq!(
        files_containing(data, EMAIL.as_bytes()),
        Vec::<String>::new(),
        "email bytes found in the data dir"
    );
    assert_eq!(
        files_containing(data, SSN.as_bytes()),
        Vec::<String>::new(),
        "SSN bytes found in the data dir"
    );
}
