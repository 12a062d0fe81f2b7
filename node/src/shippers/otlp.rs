//! OTLP logs: `LogsService/Export` on the gRPC port and `POST /v1/logs` (protobuf or JSON) on
//! the HTTP port, with the message types of the OpenTelemetry project's `opentelemetry-proto`
//! crate. The mapping onto Veil's entry (README, "Shippers"):
//!
//! - resource `service.name` → `service`; `deployment.environment.name` (or the older
//!   `deployment.environment`) → `environment`; `host.name` → `host`; `cloud.region` →
//!   `region`; the other resource attributes → `fields.resource`;
//! - severity number → level (1–8 debug, 9–12 info, 13–16 warn, 17–20 error, 21–24 fatal),
//!   else the severity text, else info;
//! - a string body → `message`; a map body → its `message` (or `msg`) as the message and its
//!   other keys as fields; any other body → its JSON text as the message;
//! - attributes → fields; `exception.type`, `exception.message`, `exception.stacktrace`
//!   (OpenTelemetry's semantic conventions) → the entry's exception; trace and span ids →
//!   `fields.trace_id`, `fields.span_id` (hex); the scope → `fields.scope`;
//! - the time → `timestamp`, else the observed time, else the receive time.
//!
//! Exporters retry a whole request when it fails. So that a retry cannot store a record twice,
//! a record with a time and no `idempotency_key` attribute gets a key derived from its own
//! content (an HMAC, under the node's PII key, of the resource, the scope and the record): the
//! same record sent again is the same entry.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use prost::Message;
use serde_json::{Map, Value};
use sha2::Sha256;

use super::Item;
use crate::error::ApiError;
use crate::ingest::RequestDefaults;
use crate::node::{EntryResult, Node};

/// Turns an export request into entries, in order. `key` is the HMAC key of derived
/// idempotency keys.
pub fn entries(request: ExportLogsServiceRequest, key: &[u8]) -> Vec<Item> {
    let mut out = Vec::new();
    for resource_logs in request.resource_logs {
        let resource_bytes = resource_logs
            .resource
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default();
        let mut resource = attributes(
            resource_logs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        let service = take_str(&mut resource, "service.name");
        let environment = take_str(&mut resource, "deployment.environment.name")
            .or_else(|| take_str(&mut resource, "deployment.environment"));
        let host = take_str(&mut resource, "host.name");
        let region = take_str(&mut resource, "cloud.region");
        for scope_logs in resource_logs.scope_logs {
            let scope_bytes = scope_logs
                .scope
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default();
            let scope = scope_logs.scope.map(|s| {
                let mut m = Map::new();
                if !s.name.is_empty() {
                    m.insert("name".into(), Value::String(s.name));
                }
                if !s.version.is_empty() {
                    m.insert("version".into(), Value::String(s.version));
                }
                m
            });
            for record in scope_logs.log_records {
                let derived_key = (record.time_unix_nano != 0
                    || record.observed_time_unix_nano != 0)
                    .then(|| content_key(key, &resource_bytes, &scope_bytes, &record));
                let mut object = Map::new();
                let mut put = |k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        object.insert(k.into(), Value::String(v.clone()));
                    }
                };
                put("service", &service);
                put("environment", &environment);
                put("host", &host);
                put("region", &region);
                let mut fields = Map::new();
                if !resource.is_empty() {
                    fields.insert("resource".into(), Value::Object(resource.clone()));
                }
                if let Some(scope) = scope.as_ref().filter(|s| !s.is_empty()) {
                    fields.insert("scope".into(), Value::Object(scope.clone()));
                }
                // The record's own size, as sent (its resource and scope are shared).
                let size = record.encoded_len();
                record_into(record, derived_key, &mut object, fields);
                out.push(Ok((object, size)));
            }
        }
    }
    out
}

/// Fills `object` from one record; `fields` holds what the resource and scope gave.
fn record_into(
    record: LogRecord,
    derived_key: Option<String>,
    object: &mut Map<String, Value>,
    mut fields: Map<String, Value>,
) {
    let mut attrs = attributes(record.attributes);
    let exception: Map<String, Value> = [
        ("type", "exception.type"),
        ("message", "exception.message"),
        ("stack_trace", "exception.stacktrace"),
    ]
    .into_iter()
    .filter_map(|(to, from)| take_str(&mut attrs, from).map(|v| (to.to_string(), Value::String(v))))
    .collect();
    if !exception.is_empty() {
        object.insert("exception".into(), Value::Object(exception));
    }
    let message = match record.body.and_then(|b| b.value) {
        Some(any_value::Value::StringValue(s)) => s,
        Some(any_value::Value::KvlistValue(list)) => {
            let mut body = attributes(list.values);
            let message = take_str(&mut body, "message").or_else(|| take_str(&mut body, "msg"));
            match message {
                Some(m) => {
                    for (k, v) in body {
                        attrs.entry(k).or_insert(v);
                    }
                    m
                }
                None => Value::Object(body).to_string(),
            }
        }
        Some(other) => match json(AnyValue { value: Some(other) }) {
            Value::String(s) => s,
            v => v.to_string(),
        },
        None => record.event_name.clone(),
    };
    object.insert("message".into(), Value::String(message));
    let level = match record.severity_number {
        1..=8 => Some("debug"),
        9..=12 => Some("info"),
        13..=16 => Some("warn"),
        17..=20 => Some("error"),
        21..=24 => Some("fatal"),
        _ => None,
    };
    match level {
        Some(l) => {
            object.insert("level".into(), Value::String(l.into()));
        }
        None if crate::ingest::parse_level(&record.severity_text).is_some() => {
            object.insert("level".into(), Value::String(record.severity_text));
        }
        // A text no level reads as (and no number): kept, and the entry is info.
        None if !record.severity_text.is_empty() => {
            fields.insert("severity_text".into(), Value::String(record.severity_text));
        }
        None => {}
    }
    let time = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    if time != 0 {
        let us = i64::try_from(time / 1000).unwrap_or(i64::MAX);
        object.insert(
            "timestamp".into(),
            Value::String(crate::ingest::format_timestamp(us)),
        );
    }
    for (name, id) in [("trace_id", &record.trace_id), ("span_id", &record.span_id)] {
        if id.iter().any(|b| *b != 0) {
            fields.insert(name.into(), Value::String(hex::encode(id)));
        }
    }
    if !record.event_name.is_empty() {
        fields.insert("event_name".into(), Value::String(record.event_name));
    }
    for (k, v) in attrs {
        fields.entry(k).or_insert(v);
    }
    if let Some(key) = derived_key {
        fields
            .entry("idempotency_key")
            .or_insert(Value::String(key));
    }
    object.insert("fields".into(), Value::Object(fields));
}

/// `otlp-` and 128 bits of HMAC-SHA256 over the record and where it came from.
fn content_key(key: &[u8], resource: &[u8], scope: &[u8], record: &LogRecord) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    // The key also makes masking's hash tokens: this label keeps the two uses apart.
    mac.update(b"veil otlp record key v1\0");
    for part in [resource, scope, &record.encode_to_vec()] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    format!("otlp-{}", hex::encode(&digest[..16]))
}

fn attributes(list: Vec<KeyValue>) -> Map<String, Value> {
    list.into_iter()
        .filter(|kv| !kv.key.is_empty())
        .map(|kv| (kv.key, kv.value.map(json).unwrap_or(Value::Null)))
        .collect()
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    match m.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            m.insert(key.into(), other);
            None
        }
        None => None,
    }
}

/// An attribute value as JSON (bytes as base64, as OTLP/JSON writes them).
fn json(v: AnyValue) -> Value {
    use any_value::Value as V;
    match v.value {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s),
        Some(V::BoolValue(b)) => Value::Bool(b),
        Some(V::IntValue(i)) => Value::from(i),
        Some(V::DoubleValue(d)) => {
            serde_json::Number::from_f64(d).map_or(Value::Null, Value::Number)
        }
        Some(V::ArrayValue(a)) => Value::Array(a.values.into_iter().map(json).collect()),
        Some(V::KvlistValue(l)) => Value::Object(attributes(l.values)),
        Some(V::BytesValue(b)) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

/// How an export went, in OTLP's terms.
pub enum Outcome {
    /// Everything stored, or `rejected` records refused for good (a partial success: the
    /// exporter must not retry them).
    Done(ExportLogsServiceResponse),
    /// Nothing useful stored for some records, and a retry can fix it: the exporter retries the
    /// whole request (derived keys make that safe).
    Retry(ApiError),
}

/// Ingests one export request.
pub async fn export(
    node: &Arc<Node>,
    request: ExportLogsServiceRequest,
) -> Result<Outcome, ApiError> {
    let read = move |node: &Node| {
        let items = entries(request, node.keys.active().hmac_key());
        (items.len(), items)
    };
    let (total, results) = match super::ingest(node, RequestDefaults::default(), read).await {
        Ok(r) => r,
        Err(e) if super::retryable(&e) => return Ok(Outcome::Retry(e)),
        Err(e) => return Err(e),
    };
    let mut rejected = 0i64;
    let mut first: Option<ApiError> = None;
    for result in results {
        if let EntryResult::Rejected(e) = result {
            if super::retryable(&e) {
                return Ok(Outcome::Retry(e));
            }
            rejected += 1;
            first.get_or_insert(e);
        }
    }
    let partial_success = first.map(|e| ExportLogsPartialSuccess {
        rejected_log_records: rejected,
        error_message: format!(
            "{rejected} of {total} log records rejected; the first, record {}: {}: {}",
            e.line.unwrap_or(0),
            e.code,
            e.message
        ),
    });
    Ok(Outcome::Done(ExportLogsServiceResponse { partial_success }))
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error (the OTLP specification's
/// "Failures"); the one message OTLP uses that `opentelemetry-proto` does not carry.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The two encodings of OTLP/HTTP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `POST /v1/logs`.
pub async fn http_export(node: Arc<Node>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let (ct, mime) = super::encoding::content_type(&headers);
    let encoding = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            let e = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content type {ct:?} is not OTLP/HTTP; send application/x-protobuf or application/json"),
            );
            return http_error(Encoding::Json, e);
        }
    };
    let bytes = match super::encoding::read_body(&headers, body, node.config.body_bytes_max).await {
        Ok(b) => b,
        Err(e) => return http_error(encoding, e),
    };
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(&bytes[..]).map_err(|e| {
            ApiError::bad_request(
                "invalid_protobuf",
                format!("the body is not an OTLP ExportLogsServiceRequest: {e}"),
            )
        }),
        Encoding::Json => serde_json::from_slice::<Value>(&bytes)
            .and_then(|mut v| {
                normalise_json(&mut v);
                serde_json::from_value::<ExportLogsServiceRequest>(v)
            })
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("the body is not an OTLP/JSON ExportLogsServiceRequest: {e}"),
                )
            }),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => return http_error(encoding, e),
    };
    match export(&node, request).await {
        Ok(Outcome::Done(response)) => {
            let body = match encoding {
                Encoding::Protobuf => response.encode_to_vec(),
                // The JSON mapping leaves an unset message out (the crate's serde writes null).
                Encoding::Json => match serde_json::to_value(&response) {
                    Ok(Value::Object(mut m)) => {
                        m.retain(|_, v| !v.is_null());
                        Value::Object(m).to_string().into_bytes()
                    }
                    _ => b"{}".to_vec(),
                },
            };
            ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
        }
        Ok(Outcome::Retry(e)) | Err(e) => http_error(encoding, e),
    }
}

/// An error as OTLP/HTTP writes it: the HTTP status, `Retry-After` on what a retry can fix
/// (429 and 503, which exporters retry), and a `google.rpc.Status` body.
fn http_error(encoding: Encoding, e: ApiError) -> Response {
    let status = if super::retryable(&e) && e.status != StatusCode::TOO_MANY_REQUESTS {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        e.status
    };
    let rpc = RpcStatus {
        code: tonic::Status::from(e.clone()).code() as i32,
        message: format!("{}: {}", e.code, e.message),
    };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => {
            serde_json::to_vec(&serde_json::json!({"code": rpc.code, "message": rpc.message}))
                .unwrap_or_default()
        }
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if super::retryable(&e) {
        let secs = e.retry_after_secs.unwrap_or(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

/// OTLP/JSON as the protobuf JSON mapping allows it beyond what the crate's serde reads: 64-bit
/// times as numbers as well as strings, and the severity as its enum name.
fn normalise_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match (k.as_str(), &*v) {
                    ("timeUnixNano" | "observedTimeUnixNano", Value::Number(n)) => {
                        *v = Value::String(n.to_string());
                    }
                    ("severityNumber", Value::String(s)) => {
                        *v = Value::from(SeverityNumber::from_str_name(s).map_or(0, |n| n as i32));
                    }
                    _ => normalise_json(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

/// The OTLP `LogsService` on the gRPC port.
pub struct GrpcLogs {
    node: Arc<Node>,
}

impl GrpcLogs {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        GrpcLogs { node }
    }
}

#[tonic::async_trait]
impl LogsService for GrpcLogs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        match export(&self.node, request.into_inner()).await {
            Ok(Outcome::Done(response)) => Ok(tonic::Response::new(response)),
            // UNAVAILABLE is what OTLP exporters retry with backoff (RESOURCE_EXHAUSTED only
            // with RetryInfo).
            Ok(Outcome::Retry(e)) => Err(tonic::Status::unavailable(format!(
                "{}: {}",
                e.code, e.message
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use serde_json::json;

    use super::*;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("checkout")),
                        kv("deployment.environment.name", s("prod")),
                        kv("host.name", s("web-1")),
                        kv("cloud.region", s("eu-west-1")),
                        kv("service.version", s("1.2")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.http".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn object(item: &Item) -> Value {
        Value::Object(item.as_ref().expect("mapped").0.clone())
    }

    #[test]
    fn a_record_maps_resource_severity_body_attributes_ids_and_time() {
        let record = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: SeverityNumber::Warn as i32,
            severity_text: "WARNING".into(),
            body: Some(AnyValue {
                value: Some(s("disk almost full")),
            }),
            attributes: vec![
                kv("user.id", any_value::Value::IntValue(42)),
                kv(
                    "tags",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(s("a")),
                        }],
                    }),
                ),
                kv("exception.type", s("IOError")),
                kv("exception.message", s("no space")),
                kv("exception.stacktrace", s("at x")),
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            ..Default::default()
        };
        let items = entries(request(vec![record]), b"k");
        let o = object(&items[0]);
        assert_eq!(o["service"], "checkout");
        assert_eq!(o["environment"], "prod");
        assert_eq!(o["host"], "web-1");
        assert_eq!(o["region"], "eu-west-1");
        assert_eq!(o["level"], "warn");
        assert_eq!(o["message"], "disk almost full");
        assert_eq!(o["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            o["exception"],
            json!({"type": "IOError", "message": "no space", "stack_trace": "at x"})
        );
        let f = &o["fields"];
        assert_eq!(f["user.id"], 42);
        assert_eq!(f["tags"], json!(["a"]));
        assert_eq!(f["trace_id"], "ab".repeat(16));
        assert_eq!(f["span_id"], "cd".repeat(8));
        assert_eq!(f["resource"], json!({"service.version": "1.2"}));
        assert_eq!(f["scope"], json!({"name": "app.http"}));
        assert!(f["idempotency_key"]
            .as_str()
            .expect("a key")
            .starts_with("otlp-"));
    }

    #[test]
    fn map_bodies_text_severities_and_derived_keys() {
        let map_body = LogRecord {
            observed_time_unix_nano: 1_700_000_000_000_000_000,
            severity_text: "notice".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("msg", s("login")),
                        kv("attempt", any_value::Value::IntValue(2)),
                    ],
                })),
            }),
            ..Default::default()
        };
        let odd_text = LogRecord {
            severity_text: "LOUD".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::IntValue(7)),
            }),
            ..Default::default()
        };
        let items = entries(request(vec![map_body.clone(), odd_text, map_body]), b"k");
        let (a, b, c) = (object(&items[0]), object(&items[1]), object(&items[2]));
        assert_eq!(a["message"], "login");
        assert_eq!(a["fields"]["attempt"], 2);
        assert_eq!(a["level"], "notice");
        // No time at all: no derived key, the receive time, and an unknown text kept.
        assert_eq!(b["message"], "7");
        assert!(b.get("level").is_none() && b.get("timestamp").is_none());
        assert_eq!(b["fields"]["severity_text"], "LOUD");
        assert!(b["fields"].get("idempotency_key").is_none());
        // The same record twice is the same entry; another key gives another token.
        assert_eq!(
            a["fields"]["idempotency_key"],
            c["fields"]["idempotency_key"]
        );
        let other = entries(
            request(vec![LogRecord {
                observed_time_unix_nano: 1,
                ..Default::default()
            }]),
            b"k",
        );
        assert_ne!(
            object(&other[0])["fields"]["idempotency_key"],
            a["fields"]["idempotency_key"]
        );
    }

    #[test]
    fn json_times_may_be_numbers_and_severities_names() {
        let mut v = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"timeUnixNano": 1700000000000000000u64, "severityNumber": "SEVERITY_NUMBER_ERROR",
             "body": {"stringValue": "x"}, "traceId": "0102030405060708090a0b0c0d0e0f10"}]}]}]});
        normalise_json(&mut v);
        let r: ExportLogsServiceRequest = serde_json::from_value(v).expect("OTLP/JSON");
        let rec = &r.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(rec.severity_number, SeverityNumber::Error as i32);
        assert_eq!(rec.trace_id[0], 1);
    }
}
