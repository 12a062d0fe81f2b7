//! Ingest in the protocols shippers already speak: OpenTelemetry's OTLP logs (gRPC and HTTP)
//! and Elasticsearch's bulk API. Each protocol module turns what arrives into the JSON object
//! shape of Veil's own API (`timestamp`, `level`, `message`, `service`, `fields`, …), and every
//! entry then takes the one pipeline every other ingest path takes ([`crate::ingest::prepare`]:
//! validation and masking; [`Node::ingest`]: Raft and the per-entry outcome). Only how a
//! request is read and how its answer is written belong to the protocol.

pub mod bulk;
pub mod encoding;
pub mod otlp;

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::ingest::{self, RequestDefaults};
use crate::node::{EntryResult, Node};

/// One entry as a protocol read it: the object for [`ingest::prepare`], and its size in the
/// request (checked against `--entry-bytes-max`), or why it could not be read.
pub type Item = Result<(Map<String, Value>, usize), ApiError>;

/// Reads a request's entries (`read`: decoding, mapping) and prepares them (validation,
/// masking), both on a blocking thread so the async workers keep moving Raft groups and other
/// requests meanwhile, then ingests them: one result per item, in order, beside what `read`
/// kept for the answer. `defaults` are what the request's headers say. Veil's own gRPC
/// `Ingest` takes this path too.
pub async fn ingest<T: Send + 'static>(
    node: &Arc<Node>,
    defaults: RequestDefaults,
    read: impl FnOnce(&Node) -> (T, Vec<Item>) + Send + 'static,
) -> Result<(T, Vec<EntryResult>), ApiError> {
    let started = std::time::Instant::now();
    let preparing = node.clone();
    let (kept, prepared) = tokio::task::spawn_blocking(move || {
        let node = &preparing;
        let (kept, items) = read(node);
        if items.len() > node.config.batch_entries_max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_entries",
                format!(
                    "a request holds at most {} entries (--batch-entries-max), this one {}",
                    node.config.batch_entries_max,
                    items.len()
                ),
            ));
        }
        let now = ingest::now_us();
        let limits = node.entry_limits();
        let entry_max = node.config.entry_bytes_max;
        let masker = node.masker();
        let masking = node.masking(&masker);
        let prepared = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let (object, size) = item?;
                if size > entry_max {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "entry_too_large",
                        format!("entry is larger than {entry_max} bytes"),
                    )
                    .with_line(i + 1));
                }
                ingest::prepare(object, &defaults, limits, &masking, now)
                    .map_err(|e| e.with_line(i + 1))
            })
            .collect::<Vec<_>>();
        Ok((kept, prepared))
    })
    .await
    .map_err(|e| ApiError::internal("preparing entries", e))??;
    // Nothing to store (a bulk body of refused actions only): no ingest, so no refusal of it.
    if prepared.is_empty() {
        return Ok((kept, Vec::new()));
    }
    let results = node.ingest(prepared).await;
    node.metrics.ack_latency.observe(started.elapsed());
    Ok((kept, results?))
}

/// True for an error a later retry of the same request can fix, so the shipper should back off
/// and resend: overload, no leader yet, a timeout, and a full disk (space comes back through
/// retention; a shipper that dropped the batch instead would lose it).
pub fn retryable(e: &ApiError) -> bool {
    matches!(
        e.status,
        StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::INSUFFICIENT_STORAGE
    )
}

/// Looks up `path` in `object`: the key as written (`"log.level"`, as some shippers flatten
/// names), else the dotted path through nested objects (`{"log": {"level": …}}`, ECS's form).
/// The value found is removed, and so is an object the removal left empty.
pub fn take_path(object: &mut Map<String, Value>, path: &str) -> Option<Value> {
    if let Some(v) = object.remove(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    let Some(Value::Object(inner)) = object.get_mut(head) else {
        return None;
    };
    let found = take_path(inner, rest);
    if found.is_some() && inner.is_empty() {
        object.remove(head);
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dotted_paths_find_flat_and_nested_keys_and_tidy_up() {
        let mut o = json!({"log.level": "warn", "service": {"name": "api", "version": "1"},
            "host": {"name": "h1"}})
        .as_object()
        .expect("an object")
        .clone();
        assert_eq!(take_path(&mut o, "log.level"), Some(json!("warn")));
        assert_eq!(take_path(&mut o, "service.name"), Some(json!("api")));
        assert_eq!(take_path(&mut o, "host.name"), Some(json!("h1")));
        assert_eq!(take_path(&mut o, "missing.key"), None);
        // The emptied `host` object went; `service` keeps what was not taken.
        assert_eq!(Value::Object(o), json!({"service": {"version": "1"}}));
    }
}
