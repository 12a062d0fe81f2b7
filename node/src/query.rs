//! The query coordinator: plans which shards a query needs, asks them in parallel, and merges
//! their best hits into one page.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use veil_shard::{compare, hour_of, Level, ShardId, ShardQuery, SortOrder, StoredEntry};

use crate::error::ApiError;
use crate::ingest::{format_timestamp, parse_level, parse_timestamp};
use crate::node::Node;
use veil_node::pii::{Findings, Masker, Unmasked};

/// Most hours a service filter is expanded into exact (service, hour) shards; a longer range
/// asks every shard.
const PLANNED_HOURS_MAX: i64 = 24 * 31;

/// The body of `POST /api/v1/logs/query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Full-text query.
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
    /// Deadline in ms (default from the configuration).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
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
    /// Exact matches on free fields.
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
    /// Only `timestamp` for now.
    #[serde(default)]
    pub field: Option<String>,
    /// `asc` or `desc`.
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
}

/// The answer of a query.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
    pub query_id: String,
    pub total: u64,
    pub logs: Vec<LogView>,
    pub execution_time_ms: u64,
    pub shards: ShardsAnswered,
}

/// Runs a query across the shards it needs.
pub async fn run(node: &Arc<Node>, request: QueryRequest) -> Result<QueryResponse, ApiError> {
    let started = Instant::now();
    if !node.is_ready() {
        return Err(ApiError::unavailable("not_ready", "the node is starting"));
    }
    let limit = request.limit.unwrap_or(100);
    let offset = request.offset.unwrap_or(0);
    let window = offset
        .checked_add(limit)
        .filter(|w| *w <= node.config.query_window_max)
        .ok_or_else(|| {
            ApiError::bad_request(
                "window_too_large",
                format!(
                    "offset + limit must be at most {}",
                    node.config.query_window_max
                ),
            )
            .with_field("limit")
        })?;
    let order = match &request.sort {
        None => SortOrder::Desc,
        Some(sort) => {
            if let Some(field) = sort.field.as_deref().filter(|f| *f != "timestamp") {
                return Err(ApiError::bad_request(
                    "invalid_sort",
                    format!("cannot sort by {field:?}; sortable: timestamp"),
                )
                .with_field("sort.field"));
            }
            match sort
                .order
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("desc") => SortOrder::Desc,
                Some("asc") => SortOrder::Asc,
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "invalid_sort",
                        "sort.order must be asc or desc",
                    )
                    .with_field("sort.order"))
                }
            }
        }
    };
    let shard_query = build_shard_query(&node.masker(), &request, order, window)?;
    let shards = plan(node, &shard_query);
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(node.config.query_timeout_ms));
    let tasks = shards.iter().map(|shard_id| {
        let shard = node.groups[shard_id.0 as usize].shard.clone();
        let q = shard_query.clone();
        tokio::task::spawn_blocking(move || shard.search(&q))
    });
    let answers = tokio::time::timeout(timeout, futures::future::join_all(tasks))
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "query_timeout",
                "the query did not finish before its deadline",
            )
        })?;
    let (mut total, mut failed, mut merged) = (0u64, 0usize, Vec::new());
    for answer in answers {
        match answer {
            Ok(Ok(hits)) => {
                total += hits.total;
                merged.extend(hits.entries);
            }
            Ok(Err(veil_shard::Error::InvalidQuery(message))) => {
                return Err(ApiError::bad_request("invalid_query", message).with_field("query"));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "shard query failed");
                failed += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "shard query task failed");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(ApiError::internal(
            "querying shards",
            format!("{failed} of {} shards failed", shards.len()),
        ));
    }
    merged.sort_by(|a, b| compare(a, b, order));
    let logs = merged
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(LogView::from)
        .collect();
    Ok(QueryResponse {
        query_id: uuid::Uuid::now_v7().to_string(),
        total,
        logs,
        execution_time_ms: started.elapsed().as_millis() as u64,
        shards: ShardsAnswered {
            total: shards.len(),
            ok: shards.len() - failed,
            failed,
        },
    })
}

fn build_shard_query(
    masker: &Masker,
    r: &QueryRequest,
    order: SortOrder,
    window: usize,
) -> Result<ShardQuery, ApiError> {
    // Query text and filter values pass through the same masking as ingest, so a search for an
    // email looks for its masked form and the plaintext goes no further.
    let mut findings = Findings::default();
    // Replacements in the text are quoted, so a hash token is searched as one phrase.
    let text = r.query.as_deref().map(|q| masker.mask_query_text(q));
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
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_filter",
                    format!("filters.fields.{key} must be a string, number or boolean"),
                )
                .with_field("filters.fields"))
            }
        };
        let masked = if masker.is_sensitive_key(key) {
            // Stored values under such keys are masked whole; match on that form.
            let mut probe = serde_json::Map::new();
            probe.insert(key.clone(), Value::String(value));
            match masker.mask_json(Value::Object(probe), &mut findings) {
                Value::Object(m) => m
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        } else {
            masker.mask(Unmasked(value), &mut findings)
        };
        fields.push((key.clone(), masked));
    }
    Ok(ShardQuery {
        text,
        start_us,
        end_us,
        services: r.filters.services.clone(),
        levels,
        fields,
        order,
        top_n: window,
    })
}

/// Picks the shards a query needs: with a service filter and a bounded time range, exactly the
/// shards of each (service, hour); otherwise every shard.
fn plan(node: &Node, q: &ShardQuery) -> Vec<ShardId> {
    if let (false, Some(start), Some(end)) = (q.services.is_empty(), q.start_us, q.end_us) {
        let (first, last) = (hour_of(start), hour_of(end));
        if last >= first && last - first < PLANNED_HOURS_MAX {
            let mut shards = BTreeSet::new();
            for service in &q.services {
                for hour in first..=last {
                    shards.insert(node.shard_map.shard_for(service, hour));
                }
            }
            return shards.into_iter().collect();
        }
        if last < first {
            return Vec::new();
        }
    }
    node.shard_map.shards().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_text_and_field_filters_are_masked_before_they_reach_a_shard() {
        let request: QueryRequest = serde_json::from_value(serde_json::json!({
            "query": "failed for jane@example.org",
            "filters": {"fields": {"email": "jane@example.org", "note": "ssn 219-09-9999", "user_id": "user_1"}}
        }))
        .unwrap();
        let keys = veil_node::pii::keys::KeyRing::throwaway().unwrap();
        let masker = Masker::new(Default::default(), &keys, &[]).unwrap();
        let q = build_shard_query(&masker, &request, SortOrder::Desc, 10).unwrap();
        // The same token ingest stores for that address (emails are hashed by default).
        let token = masker.scan("jane@example.org")[0].replacement.clone();
        assert!(token.starts_with("<email:"), "{token}");
        assert_eq!(q.text, Some(format!("failed for \"{token}\"")));
        let fields: std::collections::BTreeMap<_, _> = q.fields.into_iter().collect();
        assert_eq!(fields["email"], token);
        assert_eq!(fields["note"], "ssn ***-**-****");
        assert_eq!(fields["user_id"], "user_1");
    }
}
