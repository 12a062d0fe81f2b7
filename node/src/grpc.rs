//! The gRPC API: the same ingest pipeline and query coordinator as HTTP.

use std::sync::Arc;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};
use veil_proto::v1::veil_server::Veil;
use veil_proto::v1::{
    EntryResult as PbEntryResult, ErrorDetail, ExceptionDetailsRequest, ExceptionDetailsResponse,
    ExceptionWindow, IngestEntry, IngestRequest, IngestResponse, LogRecord, QueryRequest,
    QueryResponse, ShardsAnswered, TopException, TopExceptionsRequest, TopExceptionsResponse,
    TrendBucket,
};

use crate::error::ApiError;
use crate::ingest::RequestDefaults;
use crate::node::{EntryResult, Node};
use crate::query;

/// The tonic service.
pub struct VeilService {
    node: Arc<Node>,
}

impl VeilService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        map.insert(key.into(), Value::String(value));
    }
}

fn entry_to_json(e: IngestEntry, line: usize) -> Result<Map<String, Value>, ApiError> {
    let mut m = Map::new();
    put(&mut m, "timestamp", e.timestamp);
    put(&mut m, "level", e.level);
    m.insert("message".into(), Value::String(e.message));
    put(&mut m, "service", e.service);
    put(&mut m, "environment", e.environment);
    put(&mut m, "host", e.host);
    put(&mut m, "region", e.region);
    let mut fields = if e.fields_json.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(&e.fields_json) {
            Ok(Value::Object(f)) => f,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_fields",
                    "fields_json must be a JSON object",
                )
                .with_field("fields_json")
                .with_line(line))
            }
        }
    };
    if !e.idempotency_key.is_empty() {
        fields.insert("idempotency_key".into(), Value::String(e.idempotency_key));
    }
    m.insert("fields".into(), Value::Object(fields));
    if let Some(x) = e.exception {
        let mut ex = Map::new();
        put(&mut ex, "type", x.r#type);
        put(&mut ex, "message", x.message);
        put(&mut ex, "stack_trace", x.stack_trace);
        m.insert("exception".into(), Value::Object(ex));
    }
    Ok(m)
}

#[tonic::async_trait]
impl Veil for VeilService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let node = &self.node;
        let entries = request.into_inner().entries;
        // Read and prepared on a blocking thread, as every ingest path is.
        let read = |_: &Node| {
            let items = entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let size = e.message.len()
                        + e.fields_json.len()
                        + e.exception
                            .as_ref()
                            .map(|x| x.stack_trace.len() + x.message.len())
                            .unwrap_or(0);
                    Ok((entry_to_json(e, i + 1)?, size))
                })
                .collect();
            ((), items)
        };
        let ((), results) = crate::shippers::ingest(node, RequestDefaults::default(), read)
            .await
            .map_err(Status::from)?;
        let mut response = IngestResponse::default();
        for (i, result) in results.into_iter().enumerate() {
            response.results.push(match result {
                EntryResult::Stored(stored) => {
                    response.accepted += 1;
                    PbEntryResult {
                        status: stored.status().into(),
                        log_id: stored.log_id.to_string(),
                        pii_detected: stored.pii_detected,
                        pii_masked: stored.pii_masked,
                        line: 0,
                        error: None,
                    }
                }
                EntryResult::Rejected(e) => {
                    response.rejected += 1;
                    PbEntryResult {
                        status: "rejected".into(),
                        line: e.line.unwrap_or(i + 1) as u32,
                        error: Some(ErrorDetail {
                            code: e.code.into(),
                            message: e.message,
                            field: e.field.unwrap_or_default(),
                        }),
                        ..Default::default()
                    }
                }
            });
        }
        Ok(Response::new(response))
    }

    async fn top_exceptions(
        &self,
        request: Request<TopExceptionsRequest>,
    ) -> Result<Response<TopExceptionsResponse>, Status> {
        let r = request.into_inner();
        let mut params = window_params(r.window.unwrap_or_default());
        params.k = (r.k > 0).then_some(r.k as usize);
        let answer = crate::exceptions::top_k(&self.node, params)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(TopExceptionsResponse {
            start: str_of(&answer["start"]),
            end: str_of(&answer["end"]),
            exceptions: answer["exceptions"]
                .as_array()
                .map(|a| a.iter().map(top_exception).collect())
                .unwrap_or_default(),
            execution_time_ms: answer["execution_time_ms"].as_u64().unwrap_or(0),
        }))
    }

    async fn cluster(
        &self,
        _request: Request<veil_proto::v1::ClusterRequest>,
    ) -> Result<Response<veil_proto::v1::ClusterResponse>, Status> {
        use veil_proto::v1::{ClusterNode, ClusterResponse, ClusterShard};
        let status = crate::cluster::status::cluster(&self.node).await;
        Ok(Response::new(ClusterResponse {
            cluster_id: status.cluster_id,
            node_id: status.node_id,
            metadata_leader: status.metadata_leader.unwrap_or(0),
            nodes: status
                .nodes
                .into_iter()
                .map(|n| ClusterNode {
                    id: n.id,
                    http_addr: n.http_addr,
                    grpc_addr: n.grpc_addr,
                    peer_addr: n.peer_addr,
                    state: n.state.to_string(),
                })
                .collect(),
            shards: status
                .shards
                .into_iter()
                .map(|s| ClusterShard {
                    shard: s.shard,
                    replicas: s.replicas,
                    learners: s.learners,
                    leader: s.leader.unwrap_or(0),
                    term: s.term,
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                })
                .collect(),
        }))
    }

    async fn exception_details(
        &self,
        request: Request<ExceptionDetailsRequest>,
    ) -> Result<Response<ExceptionDetailsResponse>, Status> {
        let r = request.into_inner();
        let mut params = window_params(r.window.unwrap_or_default());
        params.bucket = (!r.bucket.is_empty()).then_some(r.bucket);
        let a = crate::exceptions::details(&self.node, &r.exception_id, params)
            .await
            .map_err(Status::from)?;
        let samples = a["sample_logs"]
            .as_array()
            .map(|l| l.iter().map(|x| str_of(&x["log_id"])).collect())
            .unwrap_or_default();
        Ok(Response::new(ExceptionDetailsResponse {
            exception: Some(TopException {
                exception_id: str_of(&a["exception_id"]),
                exception_type: str_of(&a["exception_type"]),
                service: str_of(&a["service_name"]),
                count: a["count"].as_u64().unwrap_or(0),
                first_seen: str_of(&a["first_seen"]),
                last_seen: str_of(&a["last_seen"]),
                sample_log_ids: samples,
            }),
            trend: a["trend"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .map(|b| TrendBucket {
                            timestamp: str_of(&b["timestamp"]),
                            count: b["count"].as_u64().unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            is_new: a["is_new"].as_bool().unwrap_or(false),
            bucket_minutes: a["bucket_minutes"].as_u64().unwrap_or(0) as u32,
            execution_time_ms: a["execution_time_ms"].as_u64().unwrap_or(0),
        }))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let q = request.into_inner();
        let range = q.timestamp_range.map(|r| query::TimestampRange {
            start: (!r.start.is_empty()).then_some(Value::String(r.start)),
            end: (!r.end.is_empty()).then_some(Value::String(r.end)),
        });
        let mut fields: serde_json::Map<String, Value> = q
            .fields
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        if !q.fields_json.is_empty() {
            match serde_json::from_str::<Value>(&q.fields_json) {
                Ok(Value::Object(extra)) => fields.extend(extra),
                _ => {
                    return Err(Status::invalid_argument(
                        "fields_json must be a JSON object",
                    ))
                }
            }
        }
        let aggs = if q.aggs_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Value>(&q.aggs_json)
                    .map_err(|e| Status::invalid_argument(format!("aggs_json is not JSON: {e}")))?,
            )
        };
        let request = query::QueryRequest {
            query: (!q.query.is_empty()).then_some(q.query),
            filters: query::Filters {
                timestamp_range: range,
                services: q.services,
                levels: q.levels,
                environments: q.environments,
                regions: q.regions,
                hosts: q.hosts,
                exception_types: q.exception_types,
                fields,
            },
            sort: (!q.sort_field.is_empty() || !q.sort_order.is_empty()).then(|| query::Sort {
                field: (!q.sort_field.is_empty()).then_some(q.sort_field),
                order: (!q.sort_order.is_empty()).then_some(q.sort_order),
            }),
            limit: (q.limit > 0).then_some(q.limit as usize),
            offset: Some(q.offset as usize),
            search_after: (!q.search_after.is_empty()).then_some(q.search_after),
            timeout_ms: (q.timeout_ms > 0).then_some(q.timeout_ms),
            allow_partial: q.allow_partial,
            aggs,
            consistency: (!q.consistency.is_empty()).then_some(q.consistency),
        };
        let started = std::time::Instant::now();
        let answer = query::run(&self.node, request).await;
        self.node.metrics.query_latency.observe(started.elapsed());
        let answer = answer.map_err(Status::from)?;
        if let Some(e) = answer.incomplete {
            return Err(Status::from(e));
        }
        let answer = answer.response;
        Ok(Response::new(QueryResponse {
            query_id: answer.query_id,
            total: answer.total,
            execution_time_ms: answer.execution_time_ms,
            shards: Some(ShardsAnswered {
                total: answer.shards.total as u32,
                ok: answer.shards.ok as u32,
                failed: answer.shards.failed as u32,
                timed_out: answer.shards.timed_out as u32,
                stale: answer.shards.stale as u32,
            }),
            partial: answer.partial,
            search_after: answer.search_after.unwrap_or_default(),
            aggregations_json: answer
                .aggregations
                .map(|a| a.to_string())
                .unwrap_or_default(),
            logs: answer
                .logs
                .into_iter()
                .map(|l| LogRecord {
                    log_id: l.log_id,
                    timestamp: l.timestamp,
                    service_name: l.service_name,
                    level: l.level.into(),
                    message: l.message,
                    fields_json: l.fields.to_string(),
                    environment: l.environment.unwrap_or_default(),
                    region: l.region.unwrap_or_default(),
                    host: l.host.unwrap_or_default(),
                    exception_type: l.exception_type.unwrap_or_default(),
                    exception_message: l.exception_message.unwrap_or_default(),
                    stack_trace: l.stack_trace.unwrap_or_default(),
                    received_at: l.received_at,
                })
                .collect(),
        }))
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn top_exception(e: &Value) -> TopException {
    TopException {
        exception_id: str_of(&e["exception_id"]),
        exception_type: str_of(&e["exception_type"]),
        service: str_of(&e["service"]),
        count: e["count"].as_u64().unwrap_or(0),
        first_seen: str_of(&e["first_seen"]),
        last_seen: str_of(&e["last_seen"]),
        sample_log_ids: e["sample_log_ids"]
            .as_array()
            .map(|a| a.iter().map(str_of).collect())
            .unwrap_or_default(),
    }
}

fn window_params(w: ExceptionWindow) -> crate::exceptions::WindowParams {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let joined = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
    crate::exceptions::WindowParams {
        window: opt(w.window),
        mode: opt(w.mode),
        at: opt(w.at),
        start: opt(w.start),
        end: opt(w.end),
        service: joined(w.services),
        environment: joined(w.environments),
        region: joined(w.regions),
        level: joined(w.levels),
        consistency: opt(w.consistency),
        ..Default::default()
    }
}
