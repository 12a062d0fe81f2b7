//! The HTTP API: ingest, query and health, with one JSON error shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::ingest::{self, PreparedEntry, RequestDefaults};
use crate::node::{EntryResult, Node, Stored};
use crate::query;
use veil_node::parse::{self, Format};
use veil_node::pii::custom::{NewPattern, PatternError};
use veil_node::pii::PiiType;

/// Builds the HTTP router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/admin/digests", get(digests))
        .route("/metrics", get(metrics))
        .route("/api/v1/logs", post(ingest_logs))
        .route("/v1/logs", post(otlp_logs))
        .route("/api/v1/logs/query", post(query_logs))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/admin/compact", post(compact))
        .route("/api/v1/exceptions/top-k", get(exceptions_top_k))
        .route("/api/v1/exceptions/{exception_id}", get(exception_details))
        .route(
            "/api/v1/admin/pii-patterns",
            get(list_pii_patterns).post(add_pii_pattern),
        )
        .route(
            "/api/v1/admin/pii-patterns/{id}",
            delete(delete_pii_pattern).patch(patch_pii_pattern),
        )
        .merge(crate::shippers::bulk::router())
        .merge(crate::cluster::membership::router())
        .merge(crate::cluster::adding::router())
        .merge(crate::cluster::moves::router())
        .layer(DefaultBodyLimit::disable())
        .with_state(node)
}

/// `POST /v1/logs`: OTLP/HTTP logs.
async fn otlp_logs(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    crate::shippers::otlp::http_export(node, headers, body).await
}

/// Snapshots and purges every Raft log, compacts RocksDB and merges the indexes, now.
async fn compact(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    if !node.is_ready() {
        return Err(ApiError::unavailable("not_ready", "the node is starting"));
    }
    let report = node
        .compact()
        .await
        .map_err(|e| ApiError::internal("compacting storage", format!("{e:#}")))?;
    Ok(Json(report).into_response())
}

/// The OpenAPI document of the query API.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/v1/cluster`: members, their state, every shard's replicas and leader.
async fn cluster_status(State(node): State<Arc<Node>>) -> Response {
    Json(crate::cluster::status::cluster(&node).await).into_response()
}

/// `GET /api/v1/admin/digests`: a digest of each of this node's replicas (reads them whole).
async fn digests(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let lines = crate::cluster::status::digests(&node)
        .await
        .map_err(|e| ApiError::internal("computing digests", format!("{e:#}")))?;
    Ok(Json(serde_json::json!({"node_id": node.cluster.me, "shards": lines})).into_response())
}

/// `ok`; `degraded` when a shard has lost a replica; `unavailable` (503) when a shard has lost
/// its majority; `starting` (503) before the node is ready.
async fn health(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        let (status, degraded, unavailable) = crate::cluster::status::health(&node).await;
        let code = if status == "unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let body = serde_json::json!({"status": status, "degraded_shards": degraded,
            "unavailable_shards": unavailable});
        (code, Json(body)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "starting"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    use openraft::async_runtime::watch::WatchReceiver as _;
    // Recorded into the metrics; a failure leaves the last value.
    let _ = node.disk_free_bytes();
    let shards: Vec<crate::metrics::ShardLine> = node
        .groups
        .iter()
        .map(|g| crate::metrics::ShardLine {
            shard: g.shard.id().0,
            stats: g.shard.stats(),
            committed_index: g
                .raft
                .metrics()
                .borrow_watched()
                .local_committed
                .as_ref()
                .map(|l| l.index())
                .unwrap_or(0),
        })
        .collect();
    let stores = node.store_sizes();
    let mut text = node
        .metrics
        .render(&shards, &stores, node.block_cache_bytes());
    crate::cluster::status::render_raft_metrics(&node, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    })
}

/// One entry's answer, in the seed's shape.
#[derive(Debug, Serialize)]
pub struct EntryAnswer {
    /// Written as the hyphenated lowercase text (uuid's serde form), with no `String` between.
    pub log_id: uuid::Uuid,
    pub status: &'static str,
    pub pii_detected: Vec<String>,
    pub pii_masked: bool,
}

impl From<Stored> for EntryAnswer {
    fn from(s: Stored) -> Self {
        EntryAnswer {
            log_id: s.log_id,
            status: s.status(),
            pii_detected: s.pii_detected,
            pii_masked: s.pii_masked,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem {
    Stored(EntryAnswer),
    Rejected {
        status: &'static str,
        line: usize,
        error: ApiError,
    },
}

#[derive(Serialize)]
struct BatchAnswer {
    accepted: usize,
    rejected: usize,
    results: Vec<BatchItem>,
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

enum BodyKind {
    Json,
    Ndjson,
    Text,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let (ct, mime) = crate::shippers::encoding::content_type(headers);
    match mime.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonlines" => Ok(BodyKind::Ndjson),
        "text/plain" => Ok(BodyKind::Text),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {ct:?} is not accepted; send application/json, application/x-ndjson or text/plain"),
        )),
    }
}

/// The query parameters of `POST /api/v1/logs`.
#[derive(Debug, Default, serde::Deserialize)]
struct IngestParams {
    /// Forces the text format: auto, logfmt, syslog, clf, plain (text/plain bodies).
    format: Option<String>,
    /// What a batch's answer lists: `full` (default) every entry's result, `summary` only the
    /// rejected ones (the counts are the same).
    answer: Option<String>,
}

async fn ingest_logs(
    State(node): State<Arc<Node>>,
    params: Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let answer = ingest_logs_timed(node.clone(), params, headers, body).await;
    node.metrics.ack_latency.observe(started.elapsed());
    answer
}

async fn ingest_logs_timed(
    node: Arc<Node>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = body_kind(&headers)?;
    let summary = match params.answer.as_deref() {
        None | Some("full") => false,
        Some("summary") => true,
        Some(a) => {
            return Err(ApiError::bad_request(
                "invalid_answer",
                format!("answer {a:?} is not full or summary"),
            )
            .with_field("answer"))
        }
    };
    let format = match params.format.as_deref() {
        None | Some("json") => Format::Auto,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_format",
                format!("format {f:?} is not auto, json, logfmt, syslog, clf or plain"),
            )
            .with_field("format")
        })?,
    };
    let bytes =
        crate::shippers::encoding::read_body(&headers, body, node.config.body_bytes_max).await?;
    let defaults = RequestDefaults {
        service: header_str(&headers, "x-service-name"),
        environment: header_str(&headers, "x-environment"),
        idempotency_key: None,
    };
    let idempotency_key = header_str(&headers, "idempotency-key");
    // Parsing and masking are CPU work (several ms for a batch of 500): on a blocking thread,
    // so the async workers keep moving Raft groups and other requests meanwhile.
    let parsing = node.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        parse_body(&parsing, kind, format, &bytes, defaults, idempotency_key)
    })
    .await
    .map_err(|e| ApiError::internal("parsing a request", e))??;
    let items = match parsed {
        Parsed::Batch(items) => items,
        Parsed::Single(prepared) => {
            let prepared = (*prepared).map_err(|mut e| {
                crate::metrics::Metrics::add(&node.metrics.entries_rejected, 1);
                e.line = None;
                e
            })?;
            let result = node.ingest(vec![Ok(prepared)]).await?;
            return match result.into_iter().next() {
                Some(EntryResult::Stored(stored)) => {
                    Ok(Json(EntryAnswer::from(stored)).into_response())
                }
                Some(EntryResult::Rejected(e)) => Err(e),
                None => Err(ApiError::internal(
                    "ingesting",
                    "no result for a single entry",
                )),
            };
        }
    };
    let lines: Vec<usize> = items
        .iter()
        .enumerate()
        .map(|(i, r)| r.as_ref().err().and_then(|e| e.line).unwrap_or(i + 1))
        .collect();
    let results = node.ingest(items).await?;
    let mut answer = BatchAnswer {
        accepted: 0,
        rejected: 0,
        results: Vec::with_capacity(if summary { 0 } else { results.len() }),
    };
    for (result, line) in results.into_iter().zip(lines) {
        match result {
            EntryResult::Stored(stored) => {
                answer.accepted += 1;
                if !summary {
                    answer.results.push(BatchItem::Stored(stored.into()));
                }
            }
            EntryResult::Rejected(error) => {
                answer.rejected += 1;
                answer.results.push(BatchItem::Rejected {
                    status: "rejected",
                    line,
                    error,
                });
            }
        }
    }
    Ok(Json(answer).into_response())
}

/// What a request body holds once parsed and masked.
enum Parsed {
    /// An array or NDJSON or text: one result per entry.
    Batch(Vec<Result<PreparedEntry, ApiError>>),
    /// A single JSON object: answered with that entry's result alone.
    Single(Box<Result<PreparedEntry, ApiError>>),
}

/// Parses, validates and masks a request body (CPU work: callers run it on a blocking thread).
fn parse_body(
    node: &Node,
    kind: BodyKind,
    format: Format,
    bytes: &[u8],
    mut defaults: RequestDefaults,
    idempotency_key: Option<String>,
) -> Result<Parsed, ApiError> {
    let now = ingest::now_us();
    let limits = node.entry_limits();
    let entry_max = node.config.entry_bytes_max;
    let masker = node.masker();
    let masking = node.masking(&masker);
    let prepare = |value: Value,
                   defaults: &RequestDefaults,
                   line: usize|
     -> Result<PreparedEntry, ApiError> {
        match value {
            Value::Object(map) => {
                ingest::prepare(map, defaults, limits, &masking, now).map_err(|e| e.with_line(line))
            }
            _ => Err(
                ApiError::bad_request("invalid_entry", "an entry must be a JSON object")
                    .with_line(line),
            ),
        }
    };
    let too_large = |line: usize| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "entry_too_large",
            format!("entry is larger than {entry_max} bytes"),
        )
        .with_line(line)
    };
    let items: Vec<Result<PreparedEntry, ApiError>> = match kind {
        BodyKind::Json => {
            let value: Value = serde_json::from_slice(bytes).map_err(|e| {
                ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
            })?;
            match value {
                Value::Array(items) => {
                    check_batch_len(items.len(), node.config.batch_entries_max)?;
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            if serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0) > entry_max {
                                Err(too_large(i + 1))
                            } else {
                                prepare(v, &defaults, i + 1)
                            }
                        })
                        .collect()
                }
                single => {
                    if bytes.len() > entry_max {
                        return Err(too_large(1));
                    }
                    defaults.idempotency_key = idempotency_key;
                    return Ok(Parsed::Single(Box::new(prepare(single, &defaults, 1))));
                }
            }
        }
        BodyKind::Text => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("invalid_utf8", "body is not UTF-8"))?;
            let entries = parse::split_entries(text, now, node.config.entry_lines_max);
            check_batch_len(entries.len(), node.config.batch_entries_max)?;
            entries
                .into_iter()
                .enumerate()
                .map(|(i, entry)| {
                    if entry.len() > entry_max {
                        return Err(too_large(i + 1));
                    }
                    let object = ingest::text_entry(&entry, format, &defaults, now);
                    prepare(Value::Object(object), &defaults, i + 1)
                })
                .collect()
        }
        BodyKind::Ndjson => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("invalid_utf8", "body is not UTF-8"))?;
            let lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, l))
                .collect();
            check_batch_len(lines.len(), node.config.batch_entries_max)?;
            lines
                .into_iter()
                .map(|(n, line)| {
                    if line.len() > entry_max {
                        return Err(too_large(n));
                    }
                    let value: Value = serde_json::from_str(line).map_err(|e| {
                        ApiError::bad_request(
                            "invalid_json",
                            format!("line is not valid JSON: {e}"),
                        )
                        .with_line(n)
                    })?;
                    prepare(value, &defaults, n)
                })
                .collect()
        }
    };
    Ok(Parsed::Batch(items))
}

fn check_batch_len(len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_entries",
            format!("a request holds at most {max} entries, got {len}"),
        ));
    }
    Ok(())
}

async fn query_logs(State(node): State<Arc<Node>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, node.config.body_bytes_max).await?;
    let request: query::QueryRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid query body: {e}")))?;
    let started = std::time::Instant::now();
    let answer = query::run(&node, request).await;
    node.metrics.query_latency.observe(started.elapsed());
    let answer = answer?;
    Ok(match answer.incomplete {
        None => Json(answer.response).into_response(),
        // What is known, under the error's status: the client did not accept a partial answer.
        Some(e) => {
            let mut body = serde_json::to_value(&answer.response)
                .map_err(|err| ApiError::internal("rendering a partial answer", err))?;
            body["error"] = serde_json::to_value(&e)
                .map_err(|err| ApiError::internal("rendering a partial answer", err))?;
            (e.status, Json(body)).into_response()
        }
    })
}

impl From<PatternError> for ApiError {
    fn from(e: PatternError) -> Self {
        match e {
            PatternError::Invalid { field, .. } => {
                ApiError::bad_request("invalid_pattern", e.to_string()).with_field(field)
            }
            PatternError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, "too_many_patterns", e.to_string())
            }
            PatternError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "pattern_not_found", e.to_string())
            }
            PatternError::Unavailable(_) => {
                ApiError::unavailable("patterns_unavailable", e.to_string())
            }
            PatternError::Io { .. } | PatternError::Corrupt(..) => {
                ApiError::internal("storing PII patterns", e)
            }
        }
    }
}

fn pattern_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request("invalid_pattern_id", format!("{id:?} is not a pattern id"))
    })
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid body: {e}")))
}

/// `GET /api/v1/admin/pii-patterns`: the custom patterns, and the built-in types with their
/// strategies.
async fn list_pii_patterns(State(node): State<Arc<Node>>) -> Response {
    let masker = node.masker();
    let builtin: Vec<Value> = PiiType::ALL
        .iter()
        .map(|t| {
            serde_json::json!({
                "pattern_type": t.as_str(),
                "masking_strategy": masker.strategies().get(*t).as_str(),
            })
        })
        .collect();
    Json(serde_json::json!({
        "patterns": node.pii_patterns(),
        "builtin": builtin,
    }))
    .into_response()
}

/// `POST /api/v1/admin/pii-patterns`: validates, stores and applies a custom pattern.
async fn add_pii_pattern(State(node): State<Arc<Node>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, PATTERN_BODY_BYTES_MAX).await?;
    let new: NewPattern = json_body(&bytes)?;
    let p = node.add_pii_pattern(new).await?;
    tracing::info!(pattern_id = %p.pattern_id, pattern_type = %p.pattern_type, "PII pattern added");
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternPatch {
    is_active: bool,
}

/// `PATCH /api/v1/admin/pii-patterns/{id}` with `{"is_active": bool}`.
async fn patch_pii_pattern(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = pattern_id(&id)?;
    let bytes = read_body(body, PATTERN_BODY_BYTES_MAX).await?;
    let patch: PatternPatch = json_body(&bytes)?;
    let p = node.set_pii_pattern_active(id, patch.is_active).await?;
    Ok(Json(p).into_response())
}

/// `DELETE /api/v1/admin/pii-patterns/{id}`.
async fn delete_pii_pattern(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = pattern_id(&id)?;
    node.delete_pii_pattern(id).await?;
    tracing::info!(pattern_id = %id, "PII pattern deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The largest body of a pattern request.
const PATTERN_BODY_BYTES_MAX: usize = 16 << 10;

fn window_params(
    q: Result<Query<crate::exceptions::WindowParams>, axum::extract::rejection::QueryRejection>,
) -> Result<crate::exceptions::WindowParams, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request("invalid_parameters", e.body_text()))
}

/// `GET /api/v1/exceptions/top-k`.
async fn exceptions_top_k(
    State(node): State<Arc<Node>>,
    q: Result<Query<crate::exceptions::WindowParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let answer = crate::exceptions::top_k(&node, window_params(q)?).await;
    node.metrics.exceptions_latency.observe(started.elapsed());
    Ok(Json(answer?).into_response())
}

/// `GET /api/v1/exceptions/{exception_id}`.
async fn exception_details(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    q: Result<Query<crate::exceptions::WindowParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let answer = crate::exceptions::details(&node, &id, window_params(q)?).await;
    node.metrics.exceptions_latency.observe(started.elapsed());
    Ok(Json(answer?).into_response())
}
