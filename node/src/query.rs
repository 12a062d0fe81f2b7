//! The query coordinator: checks and masks a query, plans which shards it needs, asks them in
//! parallel under a deadline (each through one of its replicas, here or on another node: see
//! `coordinator.rs`), and merges their best hits, totals and partial aggregations.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use veil_shard::query_lang::{self, Expr};
use veil_shard::{
    hour_of, FieldCondition, Level, Scalar, ShardId, ShardQuery, SortField, SortKey, SortOrder,
    StoredEntry,
};

use crate::aggs;
use crate::config::NodeConfig;
use crate::coordinator::{self, Ask, Outcome, QueryContext};
use crate::error::ApiError;
use crate::ingest::{format_timestamp, parse_level, parse_timestamp};
use crate::leaf::{LeafError, LeafRequest};
use veil_node::pii::{Findings, Masker, Unmasked};

/// Most hours a service filter is expanded into exact (service, hour) shards; a longer range
/// asks every shard.
const PLANNED_HOURS_MAX: i64 = 24 * 31;

/// The body of `POST /api/v1/logs/query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Full-text query (see `veil_shard::query_lang`).
    #[serde(default)]
    pub query: Option<String>,
    /// Filters.
    #[serde(default)]
    pub filters: Filters,
    /// Sort order.
    #[serde(default)]
    pub sort: Option<Sort>,
    /// Page size (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Hits to skip.
    #[serde(default)]
    pub offset: Option<usize>,
    /// The `search_after` cursor of the previous page.
    #[serde(default)]
    pub search_after: Option<String>,
    /// Deadline in ms (default from the configuration).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Answer 200 with what is known when the deadline passes or a shard fails.
    #[serde(default)]
    pub allow_partial: bool,
    /// Aggregations, in the Elasticsearch request syntax.
    #[serde(default, alias = "aggregations")]
    pub aggs: Option<Value>,
    /// `"strong"` (read-your-writes: every entry acknowledged before the query began is in the
    /// answer) or `"any"` (the default: the replicas asked answer as they are).
    #[serde(default)]
    pub consistency: Option<String>,
}

/// Whether `consistency` asks for strong reads; an unknown value is the caller's mistake.
pub fn strong_consistency(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency {
        None | Some("any") => Ok(false),
        Some("strong") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_consistency",
            format!("consistency must be \"strong\" or \"any\", got {other:?}"),
        )
        .with_field("consistency")),
    }
}

/// Query filters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Inclusive time range.
    #[serde(default)]
    pub timestamp_range: Option<TimestampRange>,
    /// Any of these services.
    #[serde(default)]
    pub services: Vec<String>,
    /// Any of these levels.
    #[serde(default)]
    pub levels: Vec<String>,
    /// Any of these environments.
    #[serde(default)]
    pub environments: Vec<String>,
    /// Any of these regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Any of these hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Any of these exception types.
    #[serde(default)]
    pub exception_types: Vec<String>,
    /// Conditions on free fields: a value (exact), a list (any of), `{"exists": bool}` or a
    /// numeric range `{"gte", "gt", "lte", "lt"}`.
    #[serde(default)]
    pub fields: serde_json::Map<String, Value>,
}

/// An inclusive time range.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampRange {
    /// Start (RFC 3339 or epoch).
    #[serde(default)]
    pub start: Option<Value>,
    /// End (RFC 3339 or epoch).
    #[serde(default)]
    pub end: Option<Value>,
}

/// A sort order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    /// `timestamp` (default) or a numeric free field (`fields.duration_ms`).
    #[serde(default)]
    pub field: Option<String>,
    /// `asc` or `desc` (default).
    #[serde(default)]
    pub order: Option<String>,
}

/// One entry of a query answer, in the seed's shape.
#[derive(Debug, Serialize)]
pub struct LogView {
    pub log_id: String,
    pub timestamp: String,
    pub service_name: String,
    pub level: &'static str,
    pub message: String,
    pub fields: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
    /// The seed's `hash(exception_type, service)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<String>,
    /// The finer grouping: type and top in-app frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub received_at: String,
}

impl From<StoredEntry> for LogView {
    fn from(e: StoredEntry) -> Self {
        let exception_id = e
            .exception_type
            .as_deref()
            .map(|t| veil_node::parse::exception::exception_id(t, &e.service));
        LogView {
            log_id: e.log_id.to_string(),
            timestamp: format_timestamp(e.timestamp_us),
            service_name: e.service,
            level: e.level.as_str(),
            message: e.message,
            fields: serde_json::from_str(&e.fields_json)
                .unwrap_or(Value::Object(Default::default())),
            environment: e.environment,
            region: e.region,
            host: e.host,
            exception_id,
            exception_type: e.exception_type,
            exception_message: e.exception_message,
            stack_trace: e.stack_trace,
            fingerprint: e.fingerprint,
            received_at: format_timestamp(e.received_at_us),
        }
    }
}

/// Which shards answered.
#[derive(Debug, Serialize)]
pub struct ShardsAnswered {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    /// Shards that had not answered when the deadline passed.
    pub timed_out: usize,
    /// Shards answered by a replica whose group has no leader (its majority is gone): they
    /// may miss recent entries, so the answer is `partial`.
    pub stale: usize,
}

/// The answer of a query.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
    pub query_id: String,
    pub total: u64,
    pub logs: Vec<LogView>,
    pub execution_time_ms: u64,
    pub shards: ShardsAnswered,
    /// True when some shard did not answer: hits, total and aggregations cover the others.
    pub partial: bool,
    /// The cursor for the page after this one (absent when this page is the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_after: Option<String>,
    /// The aggregations, in the Elasticsearch result shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
}

/// A query answer and whether it is incomplete in a way the client did not accept.
pub struct Answer {
    pub response: QueryResponse,
    /// Set when shards timed out or failed and `allow_partial` was not given: the HTTP answer
    /// is then an error status carrying what is known.
    pub incomplete: Option<ApiError>,
}

/// A checked query, ready to send to shards.
struct Planned {
    shard_query: ShardQuery,
    offset: usize,
    limit: usize,
    aggs: Option<aggs::Prepared>,
    cursor_tag: u64,
}

/// Runs a query across the shards it needs: every shard through one replica (see
/// `coordinator.rs`), this node's or another's, and one merge of what they answer.
pub async fn run<C: QueryContext + ?Sized>(
    node: &C,
    request: QueryRequest,
) -> Result<Answer, ApiError> {
    let started = Instant::now();
    if !node.is_ready() {
        return Err(ApiError::unavailable("not_ready", "the node is starting"));
    }
    let config = node.config();
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(config.query_timeout_ms));
    let strong = strong_consistency(request.consistency.as_deref())?;
    let Planned {
        shard_query,
        offset,
        limit,
        aggs: prepared_aggs,
        cursor_tag,
    } = plan_query(config, &node.masker(), &request)?;
    let shards = plan(&node.shard_map(), &shard_query);
    let ask = Ask::new(config, timeout, strong);
    let question = Arc::new(LeafRequest::Search(shard_query));
    let outcomes = coordinator::ask_shards(node, &shards, |_| question.clone(), &ask).await;
    let (mut total, mut failed, mut timed_out, mut stale) = (0u64, 0usize, 0usize, 0usize);
    // Failed shards whose failure a retry can fix (no replica could confirm a strong read or
    // be reached): with only those, the answer is a 503.
    let mut unavailable = 0usize;
    // The reason of the first shard that failed, for the answer's message.
    let mut first_failure: Option<String> = None;
    let mut merged: Vec<(SortKey, StoredEntry)> = Vec::new();
    let mut partial_aggs: Option<IntermediateAggregationResults> = None;
    for (shard, outcome) in shards.iter().zip(outcomes) {
        let reply = match outcome {
            Outcome::Answered(reply) => reply,
            Outcome::TimedOut => {
                timed_out += 1;
                continue;
            }
            Outcome::Failed(e) => {
                let e = e.into_api();
                if e.status.is_client_error() {
                    return Err(e);
                }
                if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                    unavailable += 1;
                } else {
                    tracing::error!(shard_id = %shard, code = e.code, "shard query failed");
                }
                first_failure.get_or_insert_with(|| format!("shard {shard}: {}", e.message));
                failed += 1;
                continue;
            }
        };
        stale += usize::from(reply.stale);
        let hits = reply.answer.into_hits().map_err(LeafError::into_api)?;
        total += hits.total;
        merged.extend(hits.entries);
        if let Some(a) = hits.aggs {
            match &mut partial_aggs {
                None => partial_aggs = Some(a),
                Some(acc) => acc
                    .merge_fruits(a)
                    .map_err(|e| ApiError::internal("merging aggregations", e))?,
            }
        }
    }
    merged.sort_by_key(|h| std::cmp::Reverse(h.0));
    let page: Vec<(SortKey, StoredEntry)> = merged.into_iter().skip(offset).take(limit).collect();
    let search_after = match page.last() {
        Some((key, _)) if page.len() == limit => Some(encode_cursor(cursor_tag, *key)),
        _ => None,
    };
    let aggregations = match (prepared_aggs, partial_aggs) {
        (Some(prepared), results) => {
            let mut results = results.unwrap_or_default();
            aggs::finish(&prepared, &mut results)?;
            let limits = tantivy::aggregation::AggregationLimitsGuard::new(
                Some(config.query_agg_memory_bytes),
                Some(config.query_agg_buckets_max),
            );
            let final_result = results
                .into_final_result(prepared.aggs.clone(), limits)
                .map_err(|e| {
                    ApiError::bad_request("invalid_aggregation", e.to_string()).with_field("aggs")
                })?;
            Some(
                serde_json::to_value(final_result)
                    .map_err(|e| ApiError::internal("rendering aggregations", e))?,
            )
        }
        (None, _) => None,
    };
    let incomplete = if timed_out + failed == 0 || request.allow_partial {
        None
    } else if timed_out > 0 {
        Some(ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "query_timeout",
            format!(
                "{timed_out} of {} shards did not answer within {} ms; the answer holds what \
                 the others found (set allow_partial to accept it with status 200)",
                shards.len(),
                timeout.as_millis()
            ),
        ))
    } else if unavailable == failed {
        Some(ApiError::unavailable(
            "shards_unavailable",
            format!(
                "{failed} of {} shards cannot answer right now (no replica could confirm a \
                 strong read, or none could be reached: {}); retry, or set allow_partial to \
                 accept what the others found with status 200",
                shards.len(),
                first_failure.unwrap_or_default()
            ),
        ))
    } else {
        Some(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "shard_failed",
            format!(
                "{failed} of {} shards failed ({}); the answer holds what the others found (set \
                 allow_partial to accept it with status 200)",
                shards.len(),
                first_failure.unwrap_or_default()
            ),
        ))
    };
    let response = QueryResponse {
        query_id: uuid::Uuid::now_v7().to_string(),
        total,
        logs: page.into_iter().map(|(_, e)| LogView::from(e)).collect(),
        execution_time_ms: started.elapsed().as_millis() as u64,
        shards: ShardsAnswered {
            total: shards.len(),
            ok: shards.len() - failed - timed_out,
            failed,
            timed_out,
            stale,
        },
        partial: timed_out + failed + stale > 0,
        search_after,
        aggregations,
    };
    Ok(Answer {
        response,
        incomplete,
    })
}

const CURSOR_VERSION: u8 = 1;

/// A cursor: version, a tag of the sort it belongs to, and the last hit's sort key, in hex.
fn encode_cursor(tag: u64, key: SortKey) -> String {
    let mut bytes = vec![CURSOR_VERSION];
    bytes.extend_from_slice(&tag.to_be_bytes());
    bytes.extend_from_slice(&key.to_bytes());
    hex::encode(bytes)
}

fn decode_cursor(tag: u64, cursor: &str) -> Result<SortKey, ApiError> {
    let bad =
        |m: &str| ApiError::bad_request("invalid_cursor", m.to_string()).with_field("search_after");
    let bytes =
        hex::decode(cursor).map_err(|_| bad("search_after is not a cursor Veil returned"))?;
    if bytes.first() != Some(&CURSOR_VERSION) || bytes.len() != 34 {
        return Err(bad("search_after is not a cursor Veil returned"));
    }
    if bytes[1..9] != tag.to_be_bytes() {
        return Err(bad("search_after belongs to a query with another sort"));
    }
    SortKey::from_bytes(&bytes[9..])
        .ok_or_else(|| bad("search_after is not a cursor Veil returned"))
}

fn plan_query(config: &NodeConfig, masker: &Masker, r: &QueryRequest) -> Result<Planned, ApiError> {
    let limit = r.limit.unwrap_or(100);
    let offset = r.offset.unwrap_or(0);
    let window = offset
        .checked_add(limit)
        .filter(|w| *w <= config.query_window_max)
        .ok_or_else(|| {
            ApiError::bad_request(
                "window_too_large",
                format!(
                    "offset + limit must be at most {}; use search_after to page deeper",
                    config.query_window_max
                ),
            )
            .with_field("limit")
        })?;
    let (sort, order) = sort_of(r.sort.as_ref())?;
    let cursor_tag = xxhash_rust::xxh3::xxh3_64(format!("{sort:?}|{order:?}").as_bytes());
    let after = match r.search_after.as_deref() {
        None => None,
        Some(cursor) => {
            if offset != 0 {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    "offset must be 0 with search_after",
                )
                .with_field("offset"));
            }
            Some(decode_cursor(cursor_tag, cursor)?)
        }
    };
    let prepared = r.aggs.as_ref().map(aggs::prepare).transpose()?;
    let mut shard_query = build_shard_query(masker, r)?;
    shard_query.sort = sort;
    shard_query.order = order;
    shard_query.after = after;
    shard_query.top_n = window;
    shard_query.aggs = prepared.as_ref().map(|p| p.aggs.clone());
    shard_query.agg_memory_bytes = config.query_agg_memory_bytes;
    shard_query.agg_buckets = config.query_agg_buckets_max;
    Ok(Planned {
        shard_query,
        offset,
        limit,
        aggs: prepared,
        cursor_tag,
    })
}

fn sort_of(sort: Option<&Sort>) -> Result<(SortField, SortOrder), ApiError> {
    let Some(sort) = sort else {
        return Ok((SortField::Timestamp, SortOrder::Desc));
    };
    let field = match sort.field.as_deref() {
        None | Some("timestamp") => SortField::Timestamp,
        Some(f) => match f.strip_prefix("fields.") {
            Some(path) if !path.is_empty() => SortField::Numeric(path.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_sort",
                    format!("cannot sort by {f:?}; sortable: timestamp, fields.<numeric key>"),
                )
                .with_field("sort.field"))
            }
        },
    };
    let order = match sort
        .order
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("desc") => SortOrder::Desc,
        Some("asc") => SortOrder::Asc,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_sort", "sort.order must be asc or desc")
                    .with_field("sort.order"),
            )
        }
    };
    Ok((field, order))
}

/// Parses query text. Syntax errors are reported against the text as sent; the expression the
/// shards run is parsed from the masked text, so personal data goes no further.
fn parse_text(masker: &Masker, text: &str) -> Result<Option<Expr>, ApiError> {
    let syntax = |e: query_lang::SyntaxError| {
        ApiError::bad_request("invalid_query", format!("query syntax: {e}")).with_field("query")
    };
    query_lang::parse(text).map_err(syntax)?;
    let mut findings = Findings::default();
    let masked = masker.mask(Unmasked(text.to_string()), &mut findings);
    query_lang::parse(&masked).map_err(syntax)
}

fn build_shard_query(masker: &Masker, r: &QueryRequest) -> Result<ShardQuery, ApiError> {
    // Query text and filter values pass through the same masking as ingest, so a search for an
    // email looks for its masked form and the plaintext goes no further.
    let text = match r.query.as_deref() {
        Some(q) => parse_text(masker, q)?,
        None => None,
    };
    let bound = |v: &Option<Value>, name: &str| -> Result<Option<i64>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => parse_timestamp(v)
                .map(Some)
                .map_err(|e| e.with_field(&format!("filters.timestamp_range.{name}"))),
        }
    };
    let (start_us, end_us) = match &r.filters.timestamp_range {
        Some(range) => (bound(&range.start, "start")?, bound(&range.end, "end")?),
        None => (None, None),
    };
    let levels = r
        .filters
        .levels
        .iter()
        .map(|l| {
            parse_level(l).ok_or_else(|| {
                ApiError::bad_request("invalid_level", format!("unknown level {l:?}"))
                    .with_field("filters.levels")
            })
        })
        .collect::<Result<Vec<Level>, _>>()?;
    let mut fields = Vec::new();
    for (key, value) in &r.filters.fields {
        let key = key.strip_prefix("fields.").unwrap_or(key);
        fields.push((key.to_string(), field_condition(masker, key, value)?));
    }
    Ok(ShardQuery {
        text,
        start_us,
        end_us,
        services: r.filters.services.clone(),
        levels,
        environments: r.filters.environments.clone(),
        regions: r.filters.regions.clone(),
        hosts: r.filters.hosts.clone(),
        exception_types: r.filters.exception_types.clone(),
        fields,
        ..Default::default()
    })
}

fn field_condition(masker: &Masker, key: &str, value: &Value) -> Result<FieldCondition, ApiError> {
    let bad = |m: String| {
        ApiError::bad_request("invalid_filter", m).with_field(&format!("filters.fields.{key}"))
    };
    match value {
        Value::Array(values) => {
            if values.is_empty() {
                return Err(bad(format!(
                    "filters.fields.{key}: an empty list matches nothing"
                )));
            }
            let scalars = values
                .iter()
                .map(|v| {
                    scalar(masker, key, v).ok_or_else(|| {
                        bad(format!(
                            "filters.fields.{key}: list items must be strings, numbers or booleans"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FieldCondition::AnyOf(scalars))
        }
        Value::Object(map) => {
            if let Some(exists) = map.get("exists") {
                if map.len() != 1 {
                    return Err(bad(format!("filters.fields.{key}: exists stands alone")));
                }
                return match exists {
                    Value::Bool(b) => Ok(FieldCondition::Exists(*b)),
                    _ => Err(bad(format!(
                        "filters.fields.{key}.exists must be true or false"
                    ))),
                };
            }
            let mut bounds = [None; 4];
            for (name, v) in map {
                let slot = match name.as_str() {
                    "gte" => 0,
                    "gt" => 1,
                    "lte" => 2,
                    "lt" => 3,
                    other => {
                        return Err(bad(format!(
                            "filters.fields.{key}: unknown condition {other:?}; use exists, gte, \
                             gt, lte or lt"
                        )))
                    }
                };
                bounds[slot] =
                    Some(v.as_f64().filter(|n| n.is_finite()).ok_or_else(|| {
                        bad(format!("filters.fields.{key}.{name} must be a number"))
                    })?);
            }
            if map.is_empty() {
                return Err(bad(format!("filters.fields.{key}: an empty condition")));
            }
            Ok(FieldCondition::Range {
                gte: bounds[0],
                gt: bounds[1],
                lte: bounds[2],
                lt: bounds[3],
            })
        }
        other => scalar(masker, key, other)
            .map(|s| FieldCondition::AnyOf(vec![s]))
            .ok_or_else(|| bad(format!("filters.fields.{key} must not be null"))),
    }
}

/// A filter value as stored: masked the way ingest masks a value under `key`.
fn scalar(masker: &Masker, key: &str, value: &Value) -> Option<Scalar> {
    let mut findings = Findings::default();
    if masker.is_sensitive_key(key) && !matches!(value, Value::Bool(_) | Value::Null) {
        // Stored values under such keys are masked whole; match on that form.
        let mut probe = serde_json::Map::new();
        probe.insert(key.to_string(), value.clone());
        return match masker.mask_json(Value::Object(probe), &mut findings) {
            Value::Object(m) => match m.get(key) {
                Some(Value::String(s)) => Some(Scalar::Str(s.clone())),
                Some(Value::Number(n)) => n.as_f64().map(|f| Scalar::Num(f, n.to_string())),
                _ => None,
            },
            _ => None,
        };
    }
    match value {
        Value::String(s) => Some(Scalar::Str(masker.mask(Unmasked(s.clone()), &mut findings))),
        Value::Number(n) => n.as_f64().map(|f| Scalar::Num(f, n.to_string())),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        _ => None,
    }
}

/// Picks the shards a query needs: with a service filter and a bounded time range, exactly the
/// shards of each (service, hour); otherwise every shard.
fn plan(map: &veil_shard::ShardMap, q: &ShardQuery) -> Vec<ShardId> {
    match (q.start_us, q.end_us) {
        (Some(start), Some(end)) => {
            shards_of_services(map, &q.services, hour_of(start), hour_of(end))
        }
        _ => map.shards().collect(),
    }
}

/// The shards that hold what `services` logged in hours `first..=last` (entries, and the
/// exception counters their apply wrote, route by service and hour): each (service, hour)'s
/// shard; every shard when no service is named or the span is longer than
/// `PLANNED_HOURS_MAX` hours; none when services are named and the span is empty.
pub(crate) fn shards_of_services(
    map: &veil_shard::ShardMap,
    services: &[String],
    first: i64,
    last: i64,
) -> Vec<ShardId> {
    if services.is_empty() {
        return map.shards().collect();
    }
    if last < first {
        return Vec::new();
    }
    if last - first >= PLANNED_HOURS_MAX {
        return map.shards().collect();
    }
    let mut shards = BTreeSet::new();
    for service in services {
        for hour in first..=last {
            shards.insert(map.shard_for(service, hour));
        }
    }
    shards.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_services_over_a_bounded_span_ask_only_their_shards() {
        let map = veil_shard::ShardMap::new(16);
        let all: Vec<ShardId> = map.shards().collect();
        let services = vec!["payments".to_string(), "search".to_string()];
        let expected: BTreeSet<ShardId> = services
            .iter()
            .flat_map(|s| (480_000..=480_002).map(|h| map.shard_for(s, h)))
            .collect();
        let picked = shards_of_services(&map, &services, 480_000, 480_002);
        assert_eq!(picked, expected.into_iter().collect::<Vec<_>>());
        assert!(picked.len() < all.len());
        assert_eq!(shards_of_services(&map, &[], 480_000, 480_002), all);
        assert!(shards_of_services(&map, &services, 480_002, 480_000).is_empty());
        assert_eq!(
            shards_of_services(&map, &services, 0, PLANNED_HOURS_MAX),
            all,
            "a span too long to list is asked of every shard"
        );
    }

    #[test]
    fn query_text_and_field_filters_are_masked_before_they_reach_a_shard() {
        let request: QueryRequest = serde_json::from_value(serde_json::json!({
            "query": "failed for jane@example.org",
            "filters": {"fields": {"email": "jane@example.org", "note": "ssn 219-09-9999", "user_id": ["user_1", 7]}}
        }))
        .unwrap();
        let keys = veil_node::pii::keys::KeyRing::throwaway().unwrap();
        let masker = Masker::new(Default::default(), &keys, &[]).unwrap();
        let q = build_shard_query(&masker, &request).unwrap();
        // The same token ingest stores for that address (emails are hashed by default).
        let token = masker.scan("jane@example.org")[0].replacement.clone();
        assert!(token.starts_with("<email:"), "{token}");
        let text = format!("{:?}", q.text);
        assert!(text.contains(&token) && !text.contains("jane"), "{text}");
        let fields: std::collections::BTreeMap<_, _> = q.fields.into_iter().collect();
        assert_eq!(
            fields["email"],
            FieldCondition::AnyOf(vec![Scalar::Str(token)])
        );
        assert_eq!(
            fields["note"],
            FieldCondition::AnyOf(vec![Scalar::Str("ssn ***-**-****".into())])
        );
        assert_eq!(
            fields["user_id"],
            FieldCondition::AnyOf(vec![
                Scalar::Str("user_1".into()),
                Scalar::Num(7.0, "7".into())
            ])
        );
    }

    #[test]
    fn syntax_errors_name_the_position_and_not_the_text() {
        let keys = veil_node::pii::keys::KeyRing::throwaway().unwrap();
        let masker = Masker::new(Default::default(), &keys, &[]).unwrap();
        let e = parse_text(&masker, "(jane@example.org AND").unwrap_err();
        assert!(e.message.contains("at character 22"), "{}", e.message);
        assert!(!e.message.contains("jane"), "{}", e.message);
    }
}
