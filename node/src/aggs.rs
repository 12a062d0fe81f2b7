//! Aggregations: the Elasticsearch request syntax users know, read by tantivy's aggregation
//! module, with Veil's field names and calendar intervals.
//!
//! Before tantivy reads a request, [`prepare`] rewrites it:
//! - a `field` that is not one of the entry's own fields (`service`, `level`, `environment`,
//!   `region`, `host`, `exception_type`, `timestamp`) names a free field: `duration_ms` and
//!   `fields.duration_ms` are the same; `service_name` is `service`;
//! - `calendar_interval` of a `date_histogram` (which tantivy lacks) becomes a fixed interval:
//!   `minute`/`1m`, `hour`/`1h`, `day`/`1d` exactly, `week`/`1w` as 7 days starting Monday 00:00
//!   UTC; `month`/`1M`, `quarter`/`1q` and `year`/`1y` are counted per day and the day buckets
//!   are merged into calendar buckets by [`finish`] after every shard's partial results are
//!   merged (exact: days nest in months). Calendar months are allowed at the top level of the
//!   request only, and list only non-empty buckets.

use serde_json::{Map, Value};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::{
    IntermediateAggregationResult, IntermediateAggregationResults, IntermediateBucketResult,
    IntermediateHistogramBucketEntry,
};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::error::ApiError;

/// The entry's own fields an aggregation may name directly.
const OWN_FIELDS: [&str; 7] = [
    "service",
    "level",
    "environment",
    "region",
    "host",
    "exception_type",
    "timestamp",
];

/// A calendar unit counted per day and merged afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    /// A calendar month.
    Month,
    /// Three calendar months from January, April, July, October.
    Quarter,
    /// A calendar year.
    Year,
}

/// A request ready for tantivy, and what [`finish`] must do after the merge.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// What shards run.
    pub aggs: Aggregations,
    /// Top-level date histograms whose day buckets become calendar buckets.
    pub calendar: Vec<(String, CalendarUnit)>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_aggregation", message).with_field("aggs")
}

/// Rewrites and reads an `aggs` request.
pub fn prepare(request: &Value) -> Result<Prepared, ApiError> {
    let mut request = request.clone();
    let mut calendar = Vec::new();
    rewrite_level(&mut request, 0, &mut calendar)?;
    let aggs: Aggregations = serde_json::from_value(request).map_err(|e| bad(e.to_string()))?;
    Ok(Prepared { aggs, calendar })
}

/// Deepest nesting of aggregations accepted.
const MAX_DEPTH: usize = 8;

fn rewrite_level(
    level: &mut Value,
    depth: usize,
    calendar: &mut Vec<(String, CalendarUnit)>,
) -> Result<(), ApiError> {
    if depth >= MAX_DEPTH {
        return Err(bad(format!(
            "aggregations nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let Value::Object(aggs) = level else {
        return Err(bad("aggs must be an object of named aggregations"));
    };
    for (name, body) in aggs.iter_mut() {
        let Value::Object(body) = body else {
            return Err(bad(format!("aggregation {name:?} must be an object")));
        };
        for (kind, params) in body.iter_mut() {
            if kind == "aggs" || kind == "aggregations" {
                rewrite_level(params, depth + 1, calendar)?;
                continue;
            }
            let Value::Object(params) = params else {
                continue;
            };
            if let Some(Value::String(field)) = params.get_mut("field") {
                *field = field_name(field);
            }
            if kind == "date_histogram" {
                if let Some(unit) = calendar_interval(params)? {
                    if depth > 0 {
                        return Err(bad(format!(
                            "calendar_interval month, quarter and year are supported only at \
                             the top level (aggregation {name:?}); use fixed_interval inside"
                        )));
                    }
                    calendar.push((name.clone(), unit));
                }
            }
        }
    }
    Ok(())
}

/// The tantivy field name of a name in a request.
pub fn field_name(name: &str) -> String {
    if name == "service_name" {
        "service".into()
    } else if OWN_FIELDS.contains(&name) || name.starts_with("fields.") {
        name.into()
    } else {
        format!("fields.{name}")
    }
}

fn calendar_interval(params: &mut Map<String, Value>) -> Result<Option<CalendarUnit>, ApiError> {
    let Some(interval) = params.remove("calendar_interval") else {
        return Ok(None);
    };
    let Value::String(interval) = interval else {
        return Err(bad("calendar_interval must be a string"));
    };
    if params.contains_key("fixed_interval") {
        return Err(bad("give calendar_interval or fixed_interval, not both"));
    }
    let fixed = |params: &mut Map<String, Value>, v: &str| {
        params.insert("fixed_interval".into(), Value::String(v.into()));
    };
    let unit = match interval.as_str() {
        "minute" | "1m" => {
            fixed(params, "1m");
            None
        }
        "hour" | "1h" => {
            fixed(params, "1h");
            None
        }
        "day" | "1d" => {
            fixed(params, "1d");
            None
        }
        "week" | "1w" => {
            if params.contains_key("offset") {
                return Err(bad("offset is not supported with calendar_interval week"));
            }
            fixed(params, "7d");
            // The epoch is a Thursday; weeks start on the Monday three days before it.
            params.insert("offset".into(), Value::String("-3d".into()));
            None
        }
        "month" | "1M" => Some(CalendarUnit::Month),
        "quarter" | "1q" => Some(CalendarUnit::Quarter),
        "year" | "1y" => Some(CalendarUnit::Year),
        other => {
            return Err(bad(format!(
                "calendar_interval {other:?} is not one of minute, hour, day, week, month, \
                 quarter, year"
            )))
        }
    };
    if unit.is_some() {
        for key in ["offset", "extended_bounds", "hard_bounds"] {
            if params.contains_key(key) {
                return Err(bad(format!(
                    "{key} is not supported with calendar_interval {interval}"
                )));
            }
        }
        fixed(params, "1d");
        params.insert("min_doc_count".into(), Value::from(1));
    }
    Ok(unit)
}

/// Merges the day buckets of calendar histograms into their calendar buckets.
pub fn finish(
    prepared: &Prepared,
    results: &mut IntermediateAggregationResults,
) -> Result<(), ApiError> {
    for (name, unit) in &prepared.calendar {
        let Some(result) = results.remove(name) else {
            continue;
        };
        let result = match result {
            IntermediateAggregationResult::Bucket(IntermediateBucketResult::Histogram {
                is_date_agg,
                buckets,
            }) => IntermediateAggregationResult::Bucket(IntermediateBucketResult::Histogram {
                is_date_agg,
                buckets: regroup(buckets, *unit)?,
            }),
            other => other,
        };
        results
            .push(name.clone(), result)
            .map_err(|e| ApiError::internal("merging calendar buckets", e.to_string()))?;
    }
    Ok(())
}

fn regroup(
    buckets: Vec<IntermediateHistogramBucketEntry>,
    unit: CalendarUnit,
) -> Result<Vec<IntermediateHistogramBucketEntry>, ApiError> {
    let mut out: Vec<IntermediateHistogramBucketEntry> = Vec::new();
    for bucket in buckets {
        let key = calendar_start(bucket.key, unit);
        match out.last_mut() {
            Some(last) if last.key == key => {
                last.doc_count += bucket.doc_count;
                last.sub_aggregation
                    .merge_fruits(bucket.sub_aggregation)
                    .map_err(|e| ApiError::internal("merging calendar buckets", e.to_string()))?;
            }
            _ => out.push(IntermediateHistogramBucketEntry { key, ..bucket }),
        }
    }
    Ok(out)
}

/// The start (ns since the epoch, UTC) of the calendar bucket holding `key_ns`.
pub fn calendar_start(key_ns: f64, unit: CalendarUnit) -> f64 {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(key_ns as i128) else {
        return key_ns;
    };
    let month = match unit {
        CalendarUnit::Month => t.month(),
        CalendarUnit::Quarter => {
            Month::try_from(((t.month() as u8 - 1) / 3) * 3 + 1).unwrap_or(Month::January)
        }
        CalendarUnit::Year => Month::January,
    };
    match Date::from_calendar_date(t.year(), month, 1) {
        Ok(d) => PrimitiveDateTime::new(d, Time::MIDNIGHT)
            .assume_utc()
            .unix_timestamp_nanos() as f64,
        Err(_) => key_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_names_and_calendar_intervals_are_rewritten() {
        let p = prepare(&json!({
            "per_service": {"terms": {"field": "service_name"},
                "aggs": {"p": {"percentiles": {"field": "duration_ms"}},
                         "weekly": {"date_histogram": {"field": "timestamp", "calendar_interval": "week"}}}},
            "monthly": {"date_histogram": {"field": "timestamp", "calendar_interval": "month"}}
        }))
        .unwrap();
        assert_eq!(
            p.calendar,
            vec![("monthly".to_string(), CalendarUnit::Month)]
        );
        let text = format!("{:?}", p.aggs);
        assert!(text.contains("fields.duration_ms"), "{text}");
        let nested = prepare(&json!({"s": {"terms": {"field": "service"},
            "aggs": {"m": {"date_histogram": {"field": "timestamp", "calendar_interval": "month"}}}}}));
        assert!(nested.is_err());
        assert!(prepare(&json!({"x": {"no_such_agg": {"field": "level"}}})).is_err());
    }

    #[test]
    fn calendar_starts() {
        let ns = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp_nanos() as f64
        };
        let day = ns("2026-08-17T00:00:00Z");
        assert_eq!(
            calendar_start(day, CalendarUnit::Month),
            ns("2026-08-01T00:00:00Z")
        );
        assert_eq!(
            calendar_start(day, CalendarUnit::Quarter),
            ns("2026-07-01T00:00:00Z")
        );
        assert_eq!(
            calendar_start(day, CalendarUnit::Year),
            ns("2026-01-01T00:00:00Z")
        );
    }
}
