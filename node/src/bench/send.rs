//! How `veil bench ingest` sends a batch: Veil's own NDJSON, Elasticsearch `_bulk`, or OTLP
//! logs over gRPC or HTTP (`--protocol`). Every protocol sends the same generated entries (the
//! NDJSON lines, turned into the protocol's form on the client), so one run per protocol on
//! one node measures what each path costs the node.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{Map, Value};

/// The ingest protocols `veil bench ingest` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// `POST /api/v1/logs`, application/x-ndjson.
    Ndjson,
    /// `POST /_bulk` with `create` actions and ECS-named documents.
    Bulk,
    /// OTLP `LogsService/Export` on the gRPC port.
    OtlpGrpc,
    /// OTLP/HTTP protobuf, `POST /v1/logs`.
    OtlpHttp,
}

/// A worker's connection to the node in one protocol.
#[derive(Clone)]
pub struct Sender {
    protocol: Protocol,
    http: reqwest::Client,
    url: String,
    grpc: Option<LogsServiceClient<tonic::transport::Channel>>,
}

/// What Veil's batch answer says, read without building the per-entry results.
#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

#[derive(serde::Deserialize)]
struct BulkAnswer {
    items: Vec<BTreeMap<String, BulkItem>>,
}

#[derive(serde::Deserialize)]
struct BulkItem {
    status: u16,
}

impl Sender {
    /// Connects to the node at `http` (and `grpc` for OTLP/gRPC); `answer` is Veil's
    /// `?answer=` for NDJSON.
    pub async fn connect(
        protocol: Protocol,
        http: reqwest::Client,
        target: &str,
        grpc: &str,
        answer: &str,
    ) -> anyhow::Result<Sender> {
        let url = match protocol {
            Protocol::Ndjson => format!("http://{target}/api/v1/logs?answer={answer}"),
            Protocol::Bulk => format!("http://{target}/_bulk"),
            Protocol::OtlpHttp => format!("http://{target}/v1/logs"),
            Protocol::OtlpGrpc => String::new(),
        };
        let grpc = match protocol {
            Protocol::OtlpGrpc => Some(
                LogsServiceClient::connect(format!("http://{grpc}"))
                    .await
                    .with_context(|| format!("cannot reach OTLP/gRPC at {grpc}"))?
                    .max_encoding_message_size(usize::MAX),
            ),
            _ => None,
        };
        Ok(Sender {
            protocol,
            http,
            url,
            grpc,
        })
    }

    async fn post(&self, content_type: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let r = self
            .http
            .post(&self.url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("HTTP {}", r.status());
        }
        Ok(r)
    }

    /// Sends one batch of generated NDJSON lines; returns the bytes sent and how many entries
    /// the node acknowledged (an error: the request failed).
    pub async fn send(&mut self, lines: &[String]) -> anyhow::Result<(u64, u64)> {
        match self.protocol {
            Protocol::Ndjson => {
                let body = lines.join("\n");
                let len = body.len() as u64;
                let r = self.post("application/x-ndjson", body.into_bytes()).await?;
                Ok((len, r.json::<Accepted>().await?.accepted))
            }
            Protocol::Bulk => {
                let body = bulk_body(lines)?;
                let len = body.len() as u64;
                let r = self.post("application/x-ndjson", body.into_bytes()).await?;
                let answer: BulkAnswer = r.json().await?;
                let ok = answer
                    .items
                    .iter()
                    .flat_map(|i| i.values())
                    .filter(|i| (200..300).contains(&i.status))
                    .count();
                Ok((len, ok as u64))
            }
            Protocol::OtlpGrpc | Protocol::OtlpHttp => {
                let request = otlp_request(lines)?;
                let sent = lines.len() as i64;
                let (len, rejected) = if let Some(client) = &mut self.grpc {
                    let len = request.encoded_len() as u64;
                    let answer = client.export(request).await?.into_inner();
                    (
                        len,
                        answer.partial_success.map_or(0, |p| p.rejected_log_records),
                    )
                } else {
                    let body = request.encode_to_vec();
                    let len = body.len() as u64;
                    let r = self.post("application/x-protobuf", body).await?;
                    let answer = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(
                        r.bytes().await?,
                    )?;
                    (
                        len,
                        answer.partial_success.map_or(0, |p| p.rejected_log_records),
                    )
                };
                Ok((len, (sent - rejected).max(0) as u64))
            }
        }
    }
}

fn parse(line: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str(line)? {
        Value::Object(m) => Ok(m),
        _ => bail!("a generated line is not an object"),
    }
}

/// `create` actions with ECS-named documents: `exception` as `error`, `metadata.host` as
/// `host.name`, `metadata.region` as `cloud.region`; the key as `_id`.
fn bulk_body(lines: &[String]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 64).sum());
    for line in lines {
        let mut doc = parse(line)?;
        if let Some(e) = doc.remove("exception") {
            doc.insert("error".into(), e);
        }
        if let Some(Value::Object(mut meta)) = doc.remove("metadata") {
            if let Some(h) = meta.remove("host") {
                doc.insert("host".into(), serde_json::json!({ "name": h }));
            }
            if let Some(r) = meta.remove("region") {
                doc.insert("cloud".into(), serde_json::json!({ "region": r }));
            }
        }
        let id = match doc.get_mut("fields").and_then(Value::as_object_mut) {
            Some(f) => f.remove("idempotency_key"),
            None => None,
        };
        let action = match id {
            Some(id) => serde_json::json!({"create": {"_id": id}}),
            None => serde_json::json!({"create": {}}),
        };
        let index = doc.get("service").cloned().unwrap_or(Value::Null);
        let mut action = action;
        action["create"]["_index"] = index;
        out.push_str(&action.to_string());
        out.push('\n');
        out.push_str(&Value::Object(doc).to_string());
        out.push('\n');
    }
    Ok(out)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

/// One resource per (service, environment, host, region), as exporters send one per process;
/// exceptions as OpenTelemetry's `exception.*` attributes.
fn otlp_request(lines: &[String]) -> anyhow::Result<ExportLogsServiceRequest> {
    let mut resources: BTreeMap<Vec<(String, String)>, Vec<LogRecord>> = BTreeMap::new();
    for line in lines {
        let mut doc = parse(line)?;
        let mut resource = Vec::new();
        for (from, to) in [
            ("service", "service.name"),
            ("environment", "deployment.environment.name"),
        ] {
            if let Some(v) = doc.remove(from).as_ref().and_then(text) {
                resource.push((to.to_string(), v));
            }
        }
        if let Some(Value::Object(meta)) = doc.remove("metadata") {
            for (from, to) in [("host", "host.name"), ("region", "cloud.region")] {
                if let Some(v) = meta.get(from).and_then(text) {
                    resource.push((to.to_string(), v));
                }
            }
        }
        let severity_number = match doc.get("level").and_then(Value::as_str) {
            Some("WARN") => 13,
            Some("ERROR") => 17,
            Some("FATAL") => 21,
            _ => 9,
        };
        let mut attributes = Vec::new();
        if let Some(Value::Object(e)) = doc.remove("exception") {
            for (from, to) in [
                ("type", "exception.type"),
                ("message", "exception.message"),
                ("stack_trace", "exception.stacktrace"),
            ] {
                if let Some(v) = e.get(from).and_then(text) {
                    attributes.push(kv(to, any_value::Value::StringValue(v)));
                }
            }
        }
        if let Some(Value::Object(fields)) = doc.remove("fields") {
            for (k, v) in fields {
                let value = match v {
                    Value::Number(n) if n.is_i64() => {
                        any_value::Value::IntValue(n.as_i64().unwrap_or(0))
                    }
                    Value::String(s) => any_value::Value::StringValue(s),
                    other => any_value::Value::StringValue(other.to_string()),
                };
                attributes.push(kv(&k, value));
            }
        }
        let time_unix_nano = match doc.get("timestamp").and_then(Value::as_str) {
            Some(t) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(|t| t.unix_timestamp_nanos() as u64)
                    .unwrap_or(0)
            }
            None => 0,
        };
        let record = LogRecord {
            time_unix_nano,
            severity_number,
            body: doc
                .remove("message")
                .as_ref()
                .and_then(text)
                .map(|m| AnyValue {
                    value: Some(any_value::Value::StringValue(m)),
                }),
            attributes,
            ..Default::default()
        };
        resources.entry(resource).or_default().push(record);
    }
    Ok(ExportLogsServiceRequest {
        resource_logs: resources
            .into_iter()
            .map(|(attrs, log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: attrs
                        .into_iter()
                        .map(|(k, v)| kv(&k, any_value::Value::StringValue(v)))
                        .collect(),
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    })
}
