//! Shippers as they are: the OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP), the
//! official Python Elasticsearch client's bulk helper, and Debian's rsyslog with
//! omelasticsearch tailing a file, each sending to a real node; then what they sent is read
//! back. The Python clients live in the environment `.ci/setup` makes from
//! `node/tests/shippers/requirements.txt`; rsyslog is installed by it too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{json, Value};
use veil_chaos_tests::Ports;

use crate::harness::{bucket_counts, files_containing, sorted_messages, Veil};

/// The Python of the shipper tests' environment (`$VEIL_TEST_PYTHON_ENV`, else where
/// `.ci/setup` makes it).
fn python() -> PathBuf {
    let path = std::env::var_os("VEIL_TEST_PYTHON_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/veil-python"))
        .join("bin/python");
    assert!(
        std::fs::metadata(&path).is_ok(),
        "{} is missing: run `bash .ci/setup`, which makes the Python environment of the shipper \
         tests (node/tests/shippers/requirements.txt)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/shippers")
        .join(name)
}

/// Runs a Python client script; returns the JSON line it printed, or fails with its output.
fn run_client(args: &[&str]) -> Value {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON line ({e}): {stdout}"))
}

fn service_query(service: &str, limit: usize) -> Value {
    json!({"filters": {"services": [service]}, "limit": limit,
        "aggs": {"levels": {"terms": {"field": "level"}}}})
}

fn level_counts(answer: &Value) -> Vec<(String, u64)> {
    let mut counts = bucket_counts(&answer["aggregations"]["levels"]);
    counts.sort();
    counts
}

/// No plaintext address of `user{i}@example.com` in any answer or any file of the node.
fn assert_no_plaintext_emails(node: &Veil, answers: &[&Value], count: usize) {
    for answer in answers {
        let text = answer.to_string();
        assert!(
            !text.contains("@example.com"),
            "an answer holds an address: {text}"
        );
    }
    for i in [0, count / 2, count - 1] {
        let needle = format!("user{i}@example.com");
        let hits = files_containing(&node.data_dir, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} is in {hits:?}");
    }
}

#[test]
fn opentelemetry_sdk_exporters_over_grpc_and_http_store_each_record_once_masked_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Veil::start(&dir.path().join("data"), &[]);
    let count = 150;
    for (protocol, endpoint) in [("grpc", node.grpc.clone()), ("http", node.url("/v1/logs"))] {
        let service = format!("otlp-{protocol}");
        let sent = run_client(&[
            script("otlp_send.py").to_str().unwrap(),
            protocol,
            &endpoint,
            &service,
            &count.to_string(),
        ]);
        assert_eq!(sent["exports"], sent["ok"], "{protocol}: {sent}");
        let answer = node.wait_for_query(service_query(&service, 1000), "the records", |a| {
            a["total"].as_u64() == Some(count as u64)
        });
        // Once each: the order ids 0..count, every one present, none twice.
        let mut ids: Vec<u64> = answer["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["fields"]["order_id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..count as u64).collect::<Vec<_>>(), "{protocol}");
        // Severity: every fifth WARNING, the last (logged with its exception) ERROR.
        let warn = (0..count - 1).filter(|i| i % 5 == 0).count() as u64;
        assert_eq!(
            level_counts(&answer),
            vec![
                ("ERROR".into(), 1),
                ("INFO".into(), count as u64 - 1 - warn),
                ("WARN".into(), warn)
            ],
            "{protocol}"
        );
        let logs = answer["logs"].as_array().unwrap();
        for l in logs {
            assert_eq!(l["environment"], "staging", "{l}");
            assert_eq!(l["host"], "shipper-host", "{l}");
            assert_eq!(l["region"], "eu-north-1", "{l}");
            assert_eq!(l["fields"]["scope"]["name"], "veil.shippers.test", "{l}");
            assert_eq!(
                l["fields"]["resource"]["telemetry.sdk.language"], "python",
                "{l}"
            );
            assert!(l["message"].as_str().unwrap().contains("<email:"), "{l}");
        }
        let failed = logs.iter().find(|l| l["level"] == "ERROR").unwrap();
        assert_eq!(failed["exception_type"], "ValueError", "{failed}");
        assert!(
            failed["stack_trace"]
                .as_str()
                .unwrap()
                .contains("could not be priced"),
            "{failed}"
        );
        let trace = failed["fields"]["trace_id"].as_str().unwrap_or_default();
        assert!(
            trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
            "{failed}"
        );
        assert_eq!(
            failed["fields"]["span_id"].as_str().map(str::len),
            Some(16),
            "{failed}"
        );
        // The exception counts as one occurrence in the top-K question.
        let top: Value = reqwest::blocking::get(node.url(&format!(
            "/api/v1/exceptions/top-k?window=24h&service={service}"
        )))
        .unwrap()
        .json()
        .unwrap();
        assert_eq!(
            top["exceptions"][0]["exception_type"], "ValueError",
            "{top}"
        );
        assert_eq!(top["exceptions"][0]["count"], 1, "{top}");
        let by_text = node.query(json!({"query": "priced", "filters": {"services": [service]}}));
        assert_eq!(by_text["total"], 1, "{by_text}");
        assert_no_plaintext_emails(&node, &[&answer, &top], count);
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn otlp_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn record(n: u64, time_unix_nano: u64) -> LogRecord {
    LogRecord {
        time_unix_nano,
        severity_number: 9,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!("record {n}"))),
        }),
        attributes: vec![kv("n", &n.to_string())],
        ..Default::default()
    }
}

fn post_otlp(node: &Veil, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let resp = reqwest::blocking::Client::new()
        .post(node.url("/v1/logs"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.bytes().unwrap().to_vec())
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[test]
fn otlp_http_retries_store_once_and_bad_input_gets_otlp_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Veil::start(&dir.path().join("data"), &[]);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let far_future = now_ns + 30 * 24 * 3600 * 1_000_000_000;
    let request = otlp_request(
        "otlp-retry",
        vec![
            record(0, now_ns),
            record(1, far_future),
            record(2, now_ns + 1),
        ],
    );
    // The same export twice (an exporter's retry): each stored record is stored once, and the
    // record whose time is too far ahead is rejected as a partial success both times.
    for _ in 0..2 {
        let (status, body) = post_otlp(&node, "application/x-protobuf", request.encode_to_vec());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer = ExportLogsServiceResponse::decode(&body[..]).unwrap();
        let partial = answer.partial_success.expect("a partial success");
        assert_eq!(partial.rejected_log_records, 1);
        assert!(
            partial.error_message.contains("timestamp_in_future"),
            "{}",
            partial.error_message
        );
    }
    let answer = node.wait_for_query(service_query("otlp-retry", 10), "the records", |a| {
        a["total"] == 2
    });
    let mut ns: Vec<String> = answer["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["fields"]["n"].as_str().unwrap().to_string())
        .collect();
    ns.sort();
    assert_eq!(ns, ["0", "2"]);

    // OTLP/JSON, gzip-compressed, with a 64-bit time as a number.
    let json_body = json!({"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "otlp-json"}}]},
        "scopeLogs": [{"logRecords": [{"timeUnixNano": now_ns, "severityText": "ERROR",
            "body": {"stringValue": "json record"}}]}]}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json_body.to_string().as_bytes()).unwrap();
    let resp = reqwest::blocking::Client::new()
        .post(node.url("/v1/logs"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.json::<Value>().unwrap(), json!({}));
    let stored = node.wait_for_query(service_query("otlp-json", 10), "the JSON record", |a| {
        a["total"] == 1
    });
    assert_eq!(stored["logs"][0]["level"], "ERROR");

    // A malformed protobuf: 400 with a google.rpc.Status body, code INVALID_ARGUMENT.
    let (status, body) = post_otlp(&node, "application/x-protobuf", vec![0x0a, 0xff, 0x01]);
    assert_eq!(status, 400);
    let rpc = RpcStatus::decode(&body[..]).unwrap();
    assert_eq!(rpc.code, tonic::Code::InvalidArgument as i32);
    assert!(rpc.message.contains("invalid_protobuf"), "{}", rpc.message);
    let (status, body) = post_otlp(&node, "application/json", b"{\"resourceLogs\": 3}".to_vec());
    assert_eq!(status, 400);
    let rpc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rpc["code"], tonic::Code::InvalidArgument as i32, "{rpc}");
    let (status, _) = post_otlp(&node, "text/plain", b"hello".to_vec());
    assert_eq!(status, 415);
}

#[test]
fn elasticsearch_python_client_bulk_helper_stores_documents_once_masked_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Veil::start(&dir.path().join("data"), &[]);
    let count = 120;
    let sent = run_client(&[
        script("es_bulk.py").to_str().unwrap(),
        &node.url(""),
        "shop",
        &count.to_string(),
    ]);
    assert_eq!(
        sent,
        json!({"version": "8.17.0", "first": [count, 0], "again": [count, 0], "create_ok": 0,
            "create_error_statuses": [409], "create_errors": count}),
        "the client's three rounds"
    );
    // Even documents name their service; odd ones take the index's name.
    let mut answers = Vec::new();
    for (service, parity) in [("shop-svc", 0), ("shop", 1)] {
        let answer = node.wait_for_query(service_query(service, 1000), "the documents", |a| {
            a["total"].as_u64() == Some(count as u64 / 2)
        });
        let mut ids: Vec<String> = answer["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                assert_eq!(l["host"], "es-host", "{l}");
                assert!(l["message"].as_str().unwrap().contains("<email:"), "{l}");
                assert!(l["fields"]["cart"]["items"].is_u64(), "{l}");
                l["fields"]["idempotency_key"].as_str().unwrap().to_string()
            })
            .collect();
        ids.sort();
        let mut expected: Vec<String> = (0..count)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("doc-{i}"))
            .collect();
        expected.sort();
        assert_eq!(ids, expected, "{service}");
        let errors = (0..count).filter(|i| i % 2 == parity && i % 4 == 0).count() as u64;
        let mut levels = vec![("INFO".to_string(), count as u64 / 2 - errors)];
        if errors > 0 {
            levels.insert(0, ("ERROR".to_string(), errors));
        }
        assert_eq!(level_counts(&answer), levels, "{service}");
        answers.push(answer);
    }
    assert_no_plaintext_emails(&node, &answers.iter().collect::<Vec<_>>(), count);
}

fn bulk_post(
    node: &Veil,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::blocking::Client::new()
        .put(node.url(path))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().unwrap())
}

#[test]
fn bulk_bad_lines_are_answered_per_item_in_elasticsearch_shape_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = Veil::start(&dir.path().join("data"), &[]);
    let body = [
        r#"{"index": {"_id": "a1"}}"#,
        r#"{"message": "first", "@timestamp": "2026-01-01T00:00:00Z"}"#,
        r#"{"explode": {}}"#,
        r#"{"message": "source of an unknown action"}"#,
        r#"{"create": {"_id": "a2"}}"#,
        r#"{"message": "broken"#,
        r#"{"delete": {"_id": "a1"}}"#,
        r#"{"create": {"_id": "a3"}}"#,
        r#"{"no_message": true}"#,
        r#"{"create": {"_id": "a4"}}"#,
        r#"{"message": "last", "level": "warn"}"#,
    ]
    .join("\n")
        + "\n";
    // The 9.x client's content type, by PUT.
    let (status, headers, answer) = bulk_post(
        &node,
        "/bad-input/_bulk",
        "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-elastic-product"], "Elasticsearch");
    assert_eq!(answer["errors"], true);
    assert!(answer["took"].is_u64());
    let items: Vec<(String, u64, String)> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let (action, item) = i.as_object().unwrap().iter().next().unwrap();
            (
                action.clone(),
                item["status"].as_u64().unwrap(),
                item["error"]["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let item = |a: &str, s: u64, t: &str| (a.to_string(), s, t.to_string());
    assert_eq!(
        items,
        vec![
            item("index", 201, ""),
            item("explode", 400, "illegal_argument_exception"),
            item("create", 400, "document_parsing_exception"),
            item("delete", 400, "illegal_argument_exception"),
            item("create", 400, "document_parsing_exception"),
            item("create", 201, ""),
        ],
        "{answer}"
    );
    let stored = node.wait_for_query(service_query("bad-input", 10), "the good documents", |a| {
        a["total"] == 2
    });
    assert_eq!(sorted_messages(&stored), ["first", "last"]);

    // Not NDJSON at all: Elasticsearch's 406, still with the product header.
    let (status, headers, answer) = bulk_post(&node, "/_bulk", "text/plain", "x");
    assert_eq!(status, 406, "{answer}");
    assert_eq!(headers["x-elastic-product"], "Elasticsearch");
    assert_eq!(answer["error"]["type"], "media_type_header_exception");
    // No index anywhere: refused per item.
    let (_, _, answer) = bulk_post(
        &node,
        "/_bulk",
        "application/x-ndjson",
        "{\"index\":{}}\n{\"message\":\"m\"}\n",
    );
    assert_eq!(
        answer["items"][0]["index"]["error"]["type"],
        "action_request_validation_exception"
    );

    // The probes shippers make before they send.
    let client = reqwest::blocking::Client::new();
    for (method, path, status) in [
        (reqwest::Method::GET, "/", 200),
        (reqwest::Method::HEAD, "/", 200),
        (reqwest::Method::GET, "/_license", 200),
        (reqwest::Method::GET, "/_xpack", 200),
        (reqwest::Method::GET, "/_cluster/health", 200),
        (reqwest::Method::GET, "/_index_template/filebeat-8", 404),
        (reqwest::Method::PUT, "/_index_template/filebeat-8", 200),
        (reqwest::Method::PUT, "/_ilm/policy/filebeat", 200),
    ] {
        let resp = client
            .request(method.clone(), node.url(path))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            resp.headers()["x-elastic-product"],
            "Elasticsearch",
            "{method} {path}"
        );
    }
    let root: Value = client.get(node.url("/")).send().unwrap().json().unwrap();
    assert_eq!(root["version"]["number"], "8.17.0");
    assert_eq!(root["tagline"], "You Know, for Search");
    let health: Value = client
        .get(node.url("/_cluster/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "green");
}

/// A running `rsyslogd` with the test's configuration; stopped when dropped.
struct Rsyslog(std::process::Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rsyslog_tails_a_file_and_ships_to_bulk_with_its_retries() {
    let rsyslogd = Path::new("/usr/sbin/rsyslogd");
    assert!(
        std::fs::metadata(rsyslogd).is_ok(),
        "rsyslogd is missing: run `bash .ci/setup` (it installs rsyslog and rsyslog-elasticsearch)"
    );
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let log = dir.path().join("app.log");
    let errors = dir.path().join("es-errors.json");
    let ports = Ports::free();
    let config = format!(
        r#"global(workDirectory="{work}")
module(load="imfile")
module(load="omelasticsearch")
template(name="ecs" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
  constant(outname="service.name" value="rsyslog-app" format="jsonf")
  property(outname="host.name" name="hostname" format="jsonf")
  property(outname="log.level" name="syslogseverity-text" format="jsonf")
}}
ruleset(name="ship") {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{port}" searchIndex="rsyslog"
         template="ecs" bulkmode="on" errorFile="{errors}"
         action.resumeRetryCount="-1" action.resumeInterval="1"
         queue.type="LinkedList" queue.size="10000" queue.dequeueBatchSize="64")
}}
input(type="imfile" File="{log}" Tag="app" Severity="warning" ruleset="ship")
"#,
        work = work.display(),
        port = ports.http,
        errors = errors.display(),
        log = log.display(),
    );
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(&conf, config).unwrap();
    let append = |from: usize, to: usize| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for i in from..to {
            writeln!(f, "line {i} for user{i}@example.com").unwrap();
        }
    };
    let first = 100;
    append(0, first);
    // rsyslog starts before Veil: its first send is refused (it says it suspends the action),
    // and it retries until Veil is up.
    let rsyslog_err = dir.path().join("rsyslog.err");
    let child = Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslog.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&rsyslog_err).unwrap())
        .spawn()
        .expect("starting rsyslogd");
    let _rsyslog = Rsyslog(child);
    let said = || std::fs::read_to_string(&rsyslog_err).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !said().contains("suspending") {
        assert!(
            Instant::now() < deadline,
            "rsyslog never found Veil down; it said:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let node = Veil::start_on(&dir.path().join("data"), &ports, &[]);
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = node.query(service_query("rsyslog-app", 1000));
            if answer["total"].as_u64() >= Some(n as u64) || Instant::now() > deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(first);
    let total = 160;
    append(first, total);
    let answer = wait_for(total);
    let mut lines: Vec<u64> = answer["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["level"], "WARN", "{l}");
            let m = l["message"].as_str().unwrap();
            assert!(m.contains("<email:"), "{l}");
            m.split_whitespace().nth(1).unwrap().parse().unwrap()
        })
        .collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        (0..total as u64).collect::<Vec<_>>(),
        "every line once; rsyslog's error file: {}\nits stderr: {}",
        std::fs::read_to_string(&errors).unwrap_or_default(),
        said()
    );
    assert_no_plaintext_emails(&node, &[&answer], total);
}

#[test]
fn a_full_disk_asks_otlp_and_bulk_shippers_to_back_off_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    // More free space than any disk has: every write finds the disk "full".
    let node = Veil::start(
        &dir.path().join("data"),
        &["--disk-free-bytes-min", "18446744073709551615"],
    );
    let request = otlp_request("otlp-full", vec![record(0, 1)]);
    let resp = reqwest::blocking::Client::new()
        .post(node.url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .unwrap();
    // 503 with Retry-After: what OTLP exporters retry with backoff.
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let rpc = RpcStatus::decode(&resp.bytes().unwrap()[..]).unwrap();
    assert!(
        rpc.message.contains("insufficient_storage"),
        "{}",
        rpc.message
    );
    // Elasticsearch's answer to a full disk is a 429 cluster block, which shippers retry.
    let resp = reqwest::blocking::Client::new()
        .post(node.url("/logs/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body("{\"create\":{}}\n{\"message\":\"m\"}\n")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let answer: Value = resp.json().unwrap();
    assert_eq!(
        answer["error"]["type"], "cluster_block_exception",
        "{answer}"
    );
    assert_eq!(answer["status"], 429);
}

#[test]
fn veils_own_ingest_reads_gzip_and_deflate_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let node = Veil::start(&dir.path().join("data"), &[]);
    let body = "{\"service\":\"zipped\",\"message\":\"one\"}\n{\"service\":\"zipped\",\"message\":\"two\"}\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(body.as_bytes()).unwrap();
    for (encoding, bytes) in [
        ("gzip", gz.finish().unwrap()),
        ("deflate", zlib.finish().unwrap()),
    ] {
        let (status, answer) = node.post_with_headers(
            "/api/v1/logs",
            "application/x-ndjson",
            &[("content-encoding", encoding)],
            bytes,
        );
        assert_eq!(status, 200, "{encoding}: {answer}");
        assert_eq!(answer["accepted"], 2, "{encoding}: {answer}");
    }
    node.wait_for_query(service_query("zipped", 10), "both batches", |a| {
        a["total"] == 4
    });
    let (status, answer) = node.post_with_headers(
        "/api/v1/logs",
        "application/x-ndjson",
        &[("content-encoding", "br")],
        body,
    );
    assert_eq!(status, 415, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported_encoding", "{answer}");
}
