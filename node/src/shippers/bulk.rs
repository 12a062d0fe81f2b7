//! Elasticsearch's bulk API (`POST|PUT /_bulk`, `POST|PUT /{index}/_bulk`) and the probes that
//! shippers make before they send (`GET /`, `HEAD /`, `/_license`, `/_xpack`, `/_cluster/health`,
//! templates and policies), answered in Elasticsearch's shapes with `X-Elastic-Product:
//! Elasticsearch` on every answer, so that Filebeat, Logstash, Vector, rsyslog and the official
//! clients send to Veil as they would to Elasticsearch.
//!
//! A document becomes an entry through [`BulkMapping`] (README, "Shippers"): which document
//! fields are the timestamp, level, message, service, host, environment and region (ECS names
//! first), and how an index name gives the service when the document names none. The rest of the
//! document is the entry's fields; an ECS `error` object is its exception; `_id` is its
//! idempotency key, so a resent document is stored once (`index` answers it 200 `noop`,
//! `create` 409, as Elasticsearch does).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::Item;
use crate::error::ApiError;
use crate::ingest::RequestDefaults;
use crate::node::{EntryResult, Node};

/// How an index name gives an entry's service when the document names none
/// (`--bulk-index-service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexService {
    /// The index name as it is (`filebeat-8.17.0`, `app-logs`).
    Name,
    /// A data stream's dataset: `logs-nginx.access-default` gives `nginx.access`; other names
    /// as they are.
    Dataset,
    /// Never: a document without a service is refused.
    None,
}

impl IndexService {
    /// Parses `name`, `dataset` or `none`.
    pub fn parse(s: &str) -> Option<IndexService> {
        Some(match s {
            "name" => IndexService::Name,
            "dataset" => IndexService::Dataset,
            "none" => IndexService::None,
            _ => return None,
        })
    }

    fn service(self, index: &str) -> Option<String> {
        match self {
            IndexService::Name => Some(index.to_string()),
            IndexService::Dataset => {
                let parts: Vec<&str> = index.splitn(3, '-').collect();
                match parts.as_slice() {
                    [_type, dataset, _namespace] if !dataset.is_empty() => {
                        Some(dataset.to_string())
                    }
                    _ => Some(index.to_string()),
                }
            }
            IndexService::None => None,
        }
    }
}

/// Which document fields become which parts of an entry: the first of each list that the
/// document has (a dotted name is looked up as written, then as a path through objects).
#[derive(Debug, Clone, Serialize)]
pub struct BulkMapping {
    /// `--bulk-timestamp-fields` [default: @timestamp,timestamp,time].
    pub timestamp: Vec<String>,
    /// `--bulk-level-fields` [default: log.level,level,severity].
    pub level: Vec<String>,
    /// `--bulk-message-fields` [default: message,msg,log].
    pub message: Vec<String>,
    /// `--bulk-service-fields` [default: service.name,service].
    pub service: Vec<String>,
    /// `--bulk-host-fields` [default: host.name,host.hostname,hostname,host].
    pub host: Vec<String>,
    /// `--bulk-environment-fields` [default: service.environment,deployment.environment,environment].
    pub environment: Vec<String>,
    /// `--bulk-region-fields` [default: cloud.region,region].
    pub region: Vec<String>,
    /// `--bulk-index-service` [default: name].
    pub index_service: IndexService,
    /// The Elasticsearch version `GET /` reports (`--bulk-es-version`), the API level Veil
    /// answers in [default: 8.17.0].
    pub es_version: String,
}

impl BulkMapping {
    /// The defaults, ECS names first.
    pub fn defaults() -> BulkMapping {
        let list = |s: &str| s.split(',').map(String::from).collect();
        BulkMapping {
            timestamp: list("@timestamp,timestamp,time"),
            level: list("log.level,level,severity"),
            message: list("message,msg,log"),
            service: list("service.name,service"),
            host: list("host.name,host.hostname,hostname,host"),
            environment: list("service.environment,deployment.environment,environment"),
            region: list("cloud.region,region"),
            index_service: IndexService::Name,
            es_version: "8.17.0".into(),
        }
    }
}

fn get_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = object.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    match object.get(head) {
        Some(Value::Object(inner)) => get_path(inner, rest),
        _ => None,
    }
}

/// Takes the first of `paths` whose value `fits`.
fn take_first(
    doc: &mut Map<String, Value>,
    paths: &[String],
    fits: fn(&Value) -> bool,
) -> Option<Value> {
    let path = paths.iter().find(|p| get_path(doc, p).is_some_and(fits))?;
    super::take_path(doc, path)
}

fn is_text(v: &Value) -> bool {
    v.is_string()
}

fn is_scalar(v: &Value) -> bool {
    v.is_string() || v.is_number()
}

/// One document as an entry of Veil's own API.
pub fn map_document(
    mapping: &BulkMapping,
    index: &str,
    id: Option<&str>,
    mut doc: Map<String, Value>,
) -> Map<String, Value> {
    let mut object = Map::new();
    for (key, paths, fits) in [
        (
            "timestamp",
            &mapping.timestamp,
            is_scalar as fn(&Value) -> bool,
        ),
        ("level", &mapping.level, is_scalar),
        ("message", &mapping.message, is_text),
        ("service", &mapping.service, is_text),
        ("host", &mapping.host, is_text),
        ("environment", &mapping.environment, is_text),
        ("region", &mapping.region, is_text),
    ] {
        if let Some(v) = take_first(&mut doc, paths, fits) {
            object.insert(key.into(), v);
        }
    }
    if !object.contains_key("service") {
        if let Some(s) = mapping.index_service.service(index) {
            object.insert("service".into(), Value::String(s));
        }
    }
    // ECS `error.type`, `error.message`, `error.stack_trace`: the names Veil reads.
    if matches!(doc.get("error"), Some(Value::Object(_))) {
        if let Some(e) = doc.remove("error") {
            object.insert("exception".into(), e);
        }
    }
    if let Some(id) = id {
        doc.insert("idempotency_key".into(), Value::String(id.to_string()));
    }
    object.insert("fields".into(), Value::Object(doc));
    object
}

/// An error in Elasticsearch's shape: `{"type", "reason"}`, with the status it goes with.
#[derive(Debug, Clone)]
pub struct EsError {
    status: StatusCode,
    kind: &'static str,
    reason: String,
}

impl EsError {
    fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> EsError {
        EsError {
            status,
            kind,
            reason: reason.into(),
        }
    }

    fn bad(kind: &'static str, reason: impl Into<String>) -> EsError {
        EsError::new(StatusCode::BAD_REQUEST, kind, reason)
    }

    fn body(&self) -> Value {
        json!({"type": self.kind, "reason": self.reason})
    }

    /// Veil's own error for one entry, as Elasticsearch would name it. Shippers retry 429 and
    /// 503 items, so everything a retry can fix (a full disk included) is one of those.
    fn from_api(e: &ApiError) -> EsError {
        let reason = format!("{}: {}", e.code, e.message);
        match e.status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => EsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_shards_exception",
                reason,
            ),
            StatusCode::TOO_MANY_REQUESTS => EsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "es_rejected_execution_exception",
                reason,
            ),
            StatusCode::INSUFFICIENT_STORAGE => EsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "cluster_block_exception",
                reason,
            ),
            s if s.is_client_error() => EsError::new(s, "document_parsing_exception", reason),
            s => EsError::new(s, "exception", reason),
        }
    }

    /// A whole-request error: `{"error": {"root_cause": […], "type", "reason"}, "status"}`.
    fn into_response_with(self, retry_after: Option<u64>) -> Response {
        let body = json!({
            "error": {"root_cause": [self.body()], "type": self.kind, "reason": self.reason},
            "status": self.status.as_u16(),
        });
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl From<ApiError> for EsError {
    fn from(e: ApiError) -> EsError {
        EsError::from_api(&e)
    }
}

fn request_error(e: ApiError) -> Response {
    let retry = e
        .retry_after_secs
        .or_else(|| super::retryable(&e).then_some(1));
    EsError::from_api(&e).into_response_with(retry)
}

/// One operation of a bulk body: its action, where it goes, and either the entry or why not.
struct Operation {
    action: String,
    index: String,
    id: Option<String>,
    entry: Result<usize, EsError>,
}

const ACTIONS: [&str; 4] = ["index", "create", "delete", "update"];

/// An action line: `{"index": {"_index": …, "_id": …}}`.
fn action_line(line: &str) -> Result<(String, Map<String, Value>), EsError> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        EsError::bad(
            "x_content_parse_exception",
            format!("the action line is not JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(EsError::bad(
            "illegal_argument_exception",
            "an action line must be a JSON object",
        ));
    };
    let mut pairs = object.into_iter();
    match (pairs.next(), pairs.next()) {
        (Some((action, Value::Object(meta))), None) => Ok((action, meta)),
        _ => Err(EsError::bad(
            "illegal_argument_exception",
            "an action line is one object with one key, the action, whose value is an object",
        )),
    }
}

/// True for `{"index": {…}}` and the other actions: the shape of an action line.
fn is_action(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.len() == 1
            && o.iter()
                .all(|(k, v)| ACTIONS.contains(&k.as_str()) && v.is_object())
    })
}

/// A line read as a source: its JSON (or why not) and its length.
type Source = (Result<Value, serde_json::Error>, usize);

/// Splits a bulk body into operations and the entries among them. `path_index` is the index
/// of `/{index}/_bulk`.
fn parse(
    body: &str,
    path_index: Option<&str>,
    mapping: &BulkMapping,
) -> (Vec<Operation>, Vec<Item>) {
    let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut ops = Vec::new();
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let line = lines[i];
        i += 1;
        // The next line is this operation's source unless it is the next action: an
        // unreadable or unknown action thus takes its source with it, and the rest of the
        // body is read as it was meant.
        // Each line is parsed once: the source's JSON is the document.
        let take_source = |i: &mut usize| -> Option<Source> {
            let next = lines.get(*i).copied()?;
            let parsed = serde_json::from_str::<Value>(next);
            if parsed.as_ref().is_ok_and(is_action) {
                return None;
            }
            *i += 1;
            Some((parsed, next.len()))
        };
        let (action, meta) = match action_line(line) {
            Ok(a) => a,
            Err(e) => {
                take_source(&mut i);
                ops.push(Operation {
                    action: "index".into(),
                    index: path_index.unwrap_or_default().into(),
                    id: None,
                    entry: Err(EsError {
                        reason: format!("line {n}: {}", e.reason),
                        ..e
                    }),
                });
                continue;
            }
        };
        let text = |k: &str| meta.get(k).and_then(Value::as_str).map(String::from);
        let index = text("_index").or(path_index.map(String::from));
        let id = text("_id");
        let op_index = index.clone().unwrap_or_default();
        let entry = match action.as_str() {
            "index" | "create" => match (take_source(&mut i), index) {
                (None, _) => Err(EsError::bad(
                    "action_request_validation_exception",
                    format!("line {n}: the {action} action has no source line"),
                )),
                (Some(_), None) => Err(EsError::bad(
                    "action_request_validation_exception",
                    "index is missing: name it in the path or in _index",
                )),
                (Some((parsed, size)), Some(index)) => match parsed {
                    Ok(Value::Object(doc)) => {
                        let object = map_document(mapping, &index, id.as_deref(), doc);
                        items.push(Ok((object, size)));
                        Ok(items.len() - 1)
                    }
                    Ok(_) => Err(EsError::bad(
                        "document_parsing_exception",
                        format!("line {}: a document must be a JSON object", n + 1),
                    )),
                    Err(e) => Err(EsError::bad(
                        "document_parsing_exception",
                        format!("line {}: the document is not JSON: {e}", n + 1),
                    )),
                },
            },
            "delete" | "update" => {
                if action == "update" {
                    take_source(&mut i);
                }
                Err(EsError::bad(
                    "illegal_argument_exception",
                    format!("Veil stores log entries once and never changes them: {action} is not supported"),
                ))
            }
            other => {
                take_source(&mut i);
                Err(EsError::bad(
                    "illegal_argument_exception",
                    format!(
                        "Malformed action/metadata line [{n}], expected one of [create, delete, index, update] but found [{other}]"
                    ),
                ))
            }
        };
        ops.push(Operation {
            action,
            index: op_index,
            id,
            entry,
        });
    }
    (ops, items)
}

/// The content types a bulk body may be sent with: JSON, NDJSON, and the versioned forms the
/// 8.x and 9.x clients send (`application/vnd.elasticsearch+x-ndjson; compatible-with=9`).
fn content_type_ok(headers: &HeaderMap) -> Result<(), EsError> {
    let (text, mime) = super::encoding::content_type(headers);
    match mime.as_str() {
        // Shippers that send no content type (some rsyslog and curl set-ups) are read as NDJSON.
        ""
        | "application/json"
        | "application/x-ndjson"
        | "application/vnd.elasticsearch+json"
        | "application/vnd.elasticsearch+x-ndjson" => Ok(()),
        _ => Err(EsError::new(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            format!("Content-Type header [{text}] is not supported"),
        )),
    }
}

async fn bulk(
    node: Arc<Node>,
    path_index: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    if let Err(e) = content_type_ok(&headers) {
        return e.into_response_with(None);
    }
    let bytes = match super::encoding::read_body(&headers, body, node.config.body_bytes_max).await {
        Ok(b) => b,
        Err(e) => return request_error(e),
    };
    if std::str::from_utf8(&bytes).is_err() {
        return EsError::bad("parse_exception", "the body is not UTF-8").into_response_with(None);
    }
    let read = move |node: &Node| {
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        parse(text, path_index.as_deref(), &node.config.bulk)
    };
    let (ops, results) = match super::ingest(&node, RequestDefaults::default(), read).await {
        Ok(r) => r,
        Err(e) => return request_error(e),
    };
    let mut errors = false;
    let answers: Vec<Value> = ops
        .into_iter()
        .map(|op| {
            let outcome = match op.entry {
                Ok(i) => match results.get(i) {
                    Some(EntryResult::Stored(s)) => Ok((s.log_id, s.duplicate)),
                    Some(EntryResult::Rejected(e)) => Err(EsError::from_api(e)),
                    None => Err(EsError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "exception",
                        "no result",
                    )),
                },
                Err(e) => Err(e),
            };
            let mut item = json!({"_index": op.index});
            let id_text = |log_id: uuid::Uuid| op.id.clone().unwrap_or_else(|| log_id.to_string());
            match outcome {
                Ok((log_id, duplicate)) if duplicate && op.action == "create" => {
                    errors = true;
                    let id = id_text(log_id);
                    let e = EsError::new(
                        StatusCode::CONFLICT,
                        "version_conflict_engine_exception",
                        format!("[{id}]: version conflict, document already exists"),
                    );
                    item["_id"] = Value::String(id);
                    item["status"] = e.status.as_u16().into();
                    item["error"] = e.body();
                }
                Ok((log_id, duplicate)) => {
                    item["_id"] = Value::String(id_text(log_id));
                    item["_version"] = 1.into();
                    item["result"] = if duplicate { "noop" } else { "created" }.into();
                    item["_shards"] = json!({"total": 1, "successful": 1, "failed": 0});
                    item["status"] = if duplicate { 200 } else { 201 }.into();
                }
                Err(e) => {
                    errors = true;
                    if let Some(id) = &op.id {
                        item["_id"] = Value::String(id.clone());
                    }
                    item["status"] = e.status.as_u16().into();
                    item["error"] = e.body();
                }
            }
            json!({ op.action: item })
        })
        .collect();
    Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "errors": errors,
        "items": answers,
    }))
    .into_response()
}

async fn bulk_any(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    bulk(node, None, headers, body).await
}

async fn bulk_index(
    State(node): State<Arc<Node>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bulk(node, Some(index), headers, body).await
}

/// `GET /` (and `HEAD /`): who answers, with the Elasticsearch API level it speaks.
async fn root(State(node): State<Arc<Node>>) -> Response {
    Json(json!({
        "name": format!("veil-{}", node.cluster.me),
        "cluster_name": "veil",
        "cluster_uuid": node.cluster.cluster_id,
        "version": {
            "number": node.config.bulk.es_version,
            "build_flavor": "default",
            "build_type": "veil",
            "build_hash": concat!("veil-", env!("CARGO_PKG_VERSION")),
            "build_snapshot": false,
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }))
    .into_response()
}

/// `GET /_license`: Veil has no X-Pack; a basic, active licence is what lets shippers go on.
async fn license(State(node): State<Arc<Node>>) -> Response {
    Json(
        json!({"license": {"status": "active", "uid": node.cluster.cluster_id,
        "type": "basic", "mode": "basic"}}),
    )
    .into_response()
}

async fn xpack(State(node): State<Arc<Node>>) -> Response {
    Json(json!({"build": {"hash": concat!("veil-", env!("CARGO_PKG_VERSION"))},
        "license": {"status": "active", "uid": node.cluster.cluster_id, "type": "basic", "mode": "basic"},
        "features": {}}))
    .into_response()
}

/// `GET /_cluster/health`: Veil's own health in Elasticsearch's colours (ok green, degraded
/// yellow, unavailable red).
async fn cluster_health(State(node): State<Arc<Node>>) -> Response {
    let (status, _, unavailable) = crate::cluster::status::health(&node).await;
    let colour = match status {
        "ok" => "green",
        "degraded" => "yellow",
        _ => "red",
    };
    let code = if unavailable.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            json!({"cluster_name": "veil", "status": colour, "timed_out": false,
        "number_of_nodes": node.cluster.meta_store.state().members.len()}),
        ),
    )
        .into_response()
}

/// Templates, policies, pipelines and data streams: Veil keeps no mappings, so none exists
/// (404, and shippers then install theirs) and installing one is acknowledged and not kept.
async fn setting_missing(Path(name): Path<String>) -> Response {
    EsError::new(
        StatusCode::NOT_FOUND,
        "resource_not_found_exception",
        format!("[{name}] does not exist: Veil keeps no templates, policies or pipelines"),
    )
    .into_response_with(None)
}

async fn setting_put(_: Path<String>) -> Response {
    Json(json!({"acknowledged": true})).into_response()
}

async fn product_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

/// The Elasticsearch-compatible routes, merged into the HTTP router.
pub fn router() -> Router<Arc<Node>> {
    let settings = get(setting_missing).put(setting_put).post(setting_put);
    Router::new()
        .route("/", get(root))
        .route("/_bulk", post(bulk_any).put(bulk_any))
        .route("/{index}/_bulk", post(bulk_index).put(bulk_index))
        .route("/_license", get(license))
        .route("/_xpack", get(xpack))
        .route("/_cluster/health", get(cluster_health))
        .route("/_index_template/{name}", settings.clone())
        .route("/_template/{name}", settings.clone())
        .route("/_component_template/{name}", settings.clone())
        .route("/_ilm/policy/{name}", settings.clone())
        .route("/_ingest/pipeline/{name}", settings.clone())
        .route("/_data_stream/{name}", settings)
        .layer(axum::middleware::map_response(product_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn ecs_documents_map_onto_entries_and_the_rest_stays_fields() {
        let m = BulkMapping::defaults();
        let o = map_document(
            &m,
            "filebeat-8",
            Some("id-1"),
            doc(
                json!({"@timestamp": "2024-05-01T10:00:00Z", "log": {"level": "error", "logger": "db"},
                "message": "query failed", "service": {"name": "orders", "environment": "prod"},
                "host": {"name": "db-1"}, "error": {"type": "Timeout", "message": "after 5s"},
                "user": {"id": 7}}),
            ),
        );
        assert_eq!(
            Value::Object(o),
            json!({"timestamp": "2024-05-01T10:00:00Z", "level": "error", "message": "query failed",
                "service": "orders", "host": "db-1", "environment": "prod",
                "exception": {"type": "Timeout", "message": "after 5s"},
                "fields": {"log": {"logger": "db"}, "user": {"id": 7}, "idempotency_key": "id-1"}})
        );
    }

    #[test]
    fn the_index_names_the_service_when_the_document_does_not() {
        let mut m = BulkMapping::defaults();
        let plain = || doc(json!({"message": "x", "log": {"file": "a"}}));
        let o = map_document(&m, "app-logs", None, plain());
        assert_eq!(o["service"], "app-logs");
        // `log` is an object here, not a message: it stays a field.
        assert_eq!(o["fields"]["log"], json!({"file": "a"}));
        m.index_service = IndexService::Dataset;
        assert_eq!(
            map_document(&m, "logs-nginx.access-default", None, plain())["service"],
            "nginx.access"
        );
        m.index_service = IndexService::None;
        assert!(map_document(&m, "app", None, plain())
            .get("service")
            .is_none());
    }

    #[test]
    fn bad_lines_are_answered_per_item_and_the_rest_is_read() {
        let body = [
            r#"{"index": {"_index": "a", "_id": "1"}}"#,
            r#"{"message": "one"}"#,
            r#"{"frobnicate": {"_index": "a"}}"#,
            r#"{"message": "taken with the unknown action"}"#,
            r#"{"create": {}}"#,
            r#"this is not json"#,
            r#"{"delete": {"_index": "a", "_id": "1"}}"#,
            r#"not an action either"#,
            r#"{"update": {"_index": "a", "_id": "1"}}"#,
            r#"{"doc": {"message": "x"}}"#,
            r#"{"create": {"_index": "b"}}"#,
            r#"{"message": "two"}"#,
        ]
        .join("\n");
        let (ops, items) = parse(&body, Some("dflt"), &BulkMapping::defaults());
        let kinds: Vec<(&str, Result<usize, &str>)> = ops
            .iter()
            .map(|o| {
                (
                    o.action.as_str(),
                    o.entry.as_ref().map(|i| *i).map_err(|e| e.kind),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("index", Ok(0)),
                ("frobnicate", Err("illegal_argument_exception")),
                ("create", Err("document_parsing_exception")),
                ("delete", Err("illegal_argument_exception")),
                // The stray line after delete is an unreadable action of its own.
                ("index", Err("x_content_parse_exception")),
                ("update", Err("illegal_argument_exception")),
                ("create", Ok(1)),
            ]
        );
        assert_eq!(ops[2].index, "dflt");
        let messages: Vec<Value> = items
            .iter()
            .map(|i| i.as_ref().expect("mapped").0["message"].clone())
            .collect();
        assert_eq!(messages, vec![json!("one"), json!("two")]);
    }
}
