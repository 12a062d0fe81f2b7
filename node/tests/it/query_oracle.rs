//! Queries and aggregations against a brute-force evaluation over the same entries: random
//! full-text queries (terms, phrases, prefixes, AND/OR/NOT, field terms), every filter kind,
//! every sort, offset paging and search_after cursors, and every aggregation kind. Hits, totals,
//! terms, stats, histograms must be identical; percentiles and cardinality within their
//! sketches' stated error.
//!
//! CI runs 20,000 entries; `VEIL_QUERY_ORACLE_ENTRIES=100000` runs the full size, and
//! `VEIL_QUERY_ORACLE_SEED` replays a run.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use veil_chaos_tests::Rng;
use veil_shard::query_lang::{self, Expr, Match, MatchKind};

use crate::harness::Veil;

const VOCAB: [&str; 40] = [
    "payment",
    "payload",
    "paid",
    "pay",
    "failed",
    "timeout",
    "retry",
    "retrying",
    "order",
    "orders",
    "cart",
    "checkout",
    "declined",
    "accepted",
    "gateway",
    "upstream",
    "cache",
    "miss",
    "hit",
    "slow",
    "query",
    "database",
    "connection",
    "reset",
    "refused",
    "token",
    "expired",
    "session",
    "started",
    "stopped",
    "worker",
    "queue",
    "full",
    "empty",
    "shipping",
    "label",
    "printed",
    "invoice",
    "sent",
    "profile",
];
const EXCEPTIONS: [&str; 6] = [
    "java.net.SocketTimeoutException",
    "java.lang.NullPointerException",
    "ValueError",
    "KeyError",
    "io.grpc.StatusRuntimeException",
    "TimeoutError",
];

#[derive(Debug, Clone)]
struct Doc {
    log_id: u128,
    ts_us: i64,
    service: String,
    level: &'static str,
    environment: Option<&'static str>,
    region: Option<&'static str>,
    host: Option<String>,
    exception_type: Option<&'static str>,
    exception_message: Option<String>,
    stack_trace: Option<String>,
    message: String,
    fields: Map<String, Value>,
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| VOCAB[rng.below(VOCAB.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn generate(rng: &mut Rng, now_us: i64, n: usize) -> Vec<(Doc, Value)> {
    (0..n)
        .map(|_| {
            // Zipf-ish services: svc-00 is the most frequent.
            let s = (rng.below(1000) as f64 / 1000.0).powi(3) * 40.0;
            let service = format!("svc-{:02}", s as u32);
            let ts_us =
                now_us - rng.below(30 * 3600) as i64 * 1_000_000 - rng.below(1_000_000) as i64;
            let level = ["DEBUG", "INFO", "INFO", "WARN", "ERROR", "FATAL"][rng.below(6) as usize];
            let environment =
                [None, Some("prod"), Some("prod"), Some("staging")][rng.below(4) as usize];
            let region =
                [None, Some("us-east"), Some("eu-west"), Some("ap-south")][rng.below(4) as usize];
            let host = (rng.below(5) != 0).then(|| format!("host-{}", rng.below(20)));
            let len = 3 + rng.below(6) as usize;
            let message = words(rng, len);
            let mut fields = Map::new();
            if rng.below(5) != 0 {
                fields.insert("user_id".into(), json!(format!("user_{}", rng.below(300))));
            }
            if rng.below(10) != 0 {
                // Mostly integers, some fractions: one key, two numeric spellings.
                let d = if rng.below(10) == 0 {
                    json!(rng.below(50_000) as f64 / 10.0 + 0.5)
                } else {
                    json!(rng.below(5000))
                };
                fields.insert("duration_ms".into(), d);
            }
            if rng.below(3) == 0 {
                fields.insert(
                    "status".into(),
                    json!([200, 404, 500][rng.below(3) as usize]),
                );
            }
            if rng.below(4) == 0 {
                fields.insert("cached".into(), json!(rng.below(2) == 0));
            }
            if rng.below(6) == 0 {
                fields.insert(
                    "route".into(),
                    json!(["orders", "cart", "pay"][rng.below(3) as usize]),
                );
            }
            let exception = (rng.below(6) == 0).then(|| {
                let t = EXCEPTIONS[rng.below(EXCEPTIONS.len() as u64) as usize];
                (
                    t,
                    words(rng, 3),
                    format!(
                        "at com.acme.{}.run(Worker.java:{})",
                        words(rng, 1),
                        rng.below(90) + 1
                    ),
                )
            });
            let mut body = json!({
                "timestamp": rfc3339(ts_us), "service": service, "level": level,
                "message": message, "fields": Value::Object(fields.clone()),
            });
            if let Some(e) = environment {
                body["environment"] = json!(e);
            }
            let mut metadata = Map::new();
            if let Some(r) = region {
                metadata.insert("region".into(), json!(r));
            }
            if let Some(h) = &host {
                metadata.insert("host".into(), json!(h));
            }
            if !metadata.is_empty() {
                body["metadata"] = Value::Object(metadata);
            }
            if let Some((t, m, st)) = &exception {
                body["exception"] = json!({"type": t, "message": m, "stack_trace": st});
            }
            let doc = Doc {
                log_id: 0,
                ts_us,
                service,
                level,
                environment,
                region,
                host,
                exception_type: exception.as_ref().map(|e| e.0),
                exception_message: exception.as_ref().map(|e| e.1.clone()),
                stack_trace: exception.as_ref().map(|e| e.2.clone()),
                message,
                fields,
            };
            (doc, body)
        })
        .collect()
}

// ---- the oracle -------------------------------------------------------------------------

fn tokens_match(field_tokens: &[String], want: &[String], prefix: bool) -> bool {
    if want.is_empty() || field_tokens.len() < want.len() {
        return false;
    }
    (0..=field_tokens.len() - want.len()).any(|i| {
        want.iter().enumerate().all(|(j, w)| {
            let t = &field_tokens[i + j];
            if prefix && j == want.len() - 1 {
                t.starts_with(w.as_str())
            } else {
                t == w
            }
        })
    })
}

fn json_scalar_eq(stored: &Value, s: &str) -> bool {
    match stored {
        Value::String(v) => v == s,
        Value::Number(n) => s.trim().parse::<f64>().ok() == n.as_f64(),
        Value::Bool(b) => s.parse::<bool>().ok() == Some(*b),
        _ => false,
    }
}

fn eval(d: &Doc, e: &Expr) -> bool {
    match e {
        Expr::All => true,
        Expr::And(parts) => parts.iter().all(|p| eval(d, p)),
        Expr::Or(parts) => parts.iter().any(|p| eval(d, p)),
        Expr::Not(inner) => !eval(d, inner),
        Expr::Match(m) => eval_match(d, m),
    }
}

fn eval_match(d: &Doc, m: &Match) -> bool {
    let text = |fields: &[Option<&str>]| {
        let want = query_lang::tokens(&m.value);
        fields
            .iter()
            .flatten()
            .any(|f| tokens_match(&query_lang::tokens(f), &want, m.kind == MatchKind::Prefix))
    };
    let keyword = |v: Option<&str>| match m.kind {
        MatchKind::Exists => v.is_some(),
        MatchKind::Prefix => v.is_some_and(|v| v.starts_with(&m.value)),
        _ => v == Some(m.value.as_str()),
    };
    match m.field.as_deref() {
        None => text(&[
            Some(&d.message),
            d.exception_message.as_deref(),
            d.stack_trace.as_deref(),
        ]),
        Some("message") => text(&[Some(&d.message)]),
        Some("service") => keyword(Some(&d.service)),
        Some("level") => match m.kind {
            MatchKind::Exists => true,
            MatchKind::Prefix => d.level.starts_with(&m.value.to_ascii_uppercase()),
            _ => d.level == m.value.to_ascii_uppercase(),
        },
        Some("environment") => keyword(d.environment),
        Some("region") => keyword(d.region),
        Some("host") => keyword(d.host.as_deref()),
        Some("exception_type") => keyword(d.exception_type),
        Some(name) => {
            let key = name.strip_prefix("fields.").unwrap_or(name);
            let v = d.fields.get(key);
            match m.kind {
                MatchKind::Exists => v.is_some(),
                MatchKind::Prefix => v
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with(&m.value)),
                _ => v.is_some_and(|v| json_scalar_eq(v, &m.value)),
            }
        }
    }
}

/// The oracle's test of one entry.
type Pred = Box<dyn Fn(&Doc) -> bool>;

/// A random query: the request body and the oracle's predicate.
struct Case {
    body: Value,
    text: Option<Expr>,
    pred: Pred,
    sort_numeric: bool,
    asc: bool,
}

fn random_term(rng: &mut Rng, docs: &[Doc]) -> String {
    let d = &docs[rng.below(docs.len() as u64) as usize];
    match rng.below(12) {
        0..=3 => VOCAB[rng.below(VOCAB.len() as u64) as usize].to_string(),
        4 | 5 => {
            // A phrase taken from a real message, so it hits.
            let w: Vec<&str> = d.message.split(' ').collect();
            let i = rng.below(w.len() as u64 - 1) as usize;
            format!("\"{} {}\"", w[i], w[i + 1])
        }
        6 => ["pay*", "retr*", "order*", "ca*", "s*"][rng.below(5) as usize].to_string(),
        7 => format!("service:{}", d.service),
        8 => format!("level:{}", d.level.to_lowercase()),
        9 => format!("user_id:user_{}", rng.below(300)),
        10 => [
            "fields.status:500",
            "cached:true",
            "host:*",
            "exception_type:*",
            "route:pa*",
        ][rng.below(5) as usize]
            .to_string(),
        _ => format!("message:{}", VOCAB[rng.below(VOCAB.len() as u64) as usize]),
    }
}

fn random_text(rng: &mut Rng, docs: &[Doc], depth: u32) -> String {
    let n = 1 + rng.below(3);
    let mut parts = Vec::new();
    for i in 0..n {
        let mut t = if depth < 2 && rng.below(5) == 0 {
            format!("({})", random_text(rng, docs, depth + 1))
        } else {
            random_term(rng, docs)
        };
        if rng.below(5) == 0 {
            t = format!("{}{t}", ["NOT ", "-"][rng.below(2) as usize]);
        }
        if i > 0 {
            parts.push(["AND", "OR", ""][rng.below(3) as usize].to_string());
        }
        parts.push(t);
    }
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

fn pick<'a>(rng: &mut Rng, all: &[&'a str]) -> Vec<&'a str> {
    let n = 1 + rng.below(all.len().min(3) as u64) as usize;
    (0..n)
        .map(|_| all[rng.below(all.len() as u64) as usize])
        .collect()
}

fn random_case(rng: &mut Rng, docs: &[Doc], now_us: i64) -> Case {
    let mut filters = Map::new();
    let mut preds: Vec<Pred> = Vec::new();
    let text = if rng.below(3) != 0 {
        Some(random_text(rng, docs, 0))
    } else {
        None
    };
    let expr = text
        .as_deref()
        .map(|t| query_lang::parse(t).unwrap_or_else(|e| panic!("{t}: {e}")))
        .unwrap_or(None);
    if rng.below(2) == 0 {
        let a = now_us - rng.below(31 * 3600) as i64 * 1_000_000;
        let b = a + rng.below(12 * 3600) as i64 * 1_000_000;
        filters.insert(
            "timestamp_range".into(),
            json!({"start": rfc3339(a), "end": rfc3339(b)}),
        );
        preds.push(Box::new(move |d| d.ts_us >= a && d.ts_us <= b));
    }
    let services: Vec<String> = docs
        .iter()
        .map(|d| d.service.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if rng.below(3) == 0 {
        let n = 1 + rng.below(3) as usize;
        let chosen: Vec<String> = (0..n)
            .map(|_| services[rng.below(services.len() as u64) as usize].clone())
            .collect();
        filters.insert("services".into(), json!(chosen));
        preds.push(Box::new(move |d| chosen.contains(&d.service)));
    }
    if rng.below(3) == 0 {
        let chosen = pick(rng, &["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]);
        filters.insert(
            "levels".into(),
            json!(chosen.iter().map(|l| l.to_lowercase()).collect::<Vec<_>>()),
        );
        preds.push(Box::new(move |d| chosen.contains(&d.level)));
    }
    if rng.below(5) == 0 {
        let chosen = pick(rng, &["prod", "staging"]);
        filters.insert("environments".into(), json!(chosen));
        preds.push(Box::new(move |d| {
            d.environment.is_some_and(|e| chosen.contains(&e))
        }));
    }
    if rng.below(5) == 0 {
        let chosen = pick(rng, &["us-east", "eu-west", "ap-south"]);
        filters.insert("regions".into(), json!(chosen));
        preds.push(Box::new(move |d| {
            d.region.is_some_and(|e| chosen.contains(&e))
        }));
    }
    if rng.below(6) == 0 {
        let chosen: Vec<String> = (0..2).map(|_| format!("host-{}", rng.below(20))).collect();
        filters.insert("hosts".into(), json!(chosen));
        preds.push(Box::new(move |d| {
            d.host.as_ref().is_some_and(|h| chosen.contains(h))
        }));
    }
    if rng.below(6) == 0 {
        let chosen = pick(rng, &EXCEPTIONS);
        filters.insert("exception_types".into(), json!(chosen));
        preds.push(Box::new(move |d| {
            d.exception_type.is_some_and(|e| chosen.contains(&e))
        }));
    }
    let mut fields = Map::new();
    match rng.below(8) {
        0 => {
            let u = format!("user_{}", rng.below(300));
            fields.insert("user_id".into(), json!(u));
            preds.push(Box::new(move |d| {
                d.fields.get("user_id") == Some(&json!(u))
            }));
        }
        1 => {
            let us: Vec<String> = (0..5).map(|_| format!("user_{}", rng.below(300))).collect();
            fields.insert("user_id".into(), json!(us));
            preds.push(Box::new(move |d| {
                d.fields
                    .get("user_id")
                    .and_then(Value::as_str)
                    .is_some_and(|u| us.iter().any(|x| x == u))
            }));
        }
        2 => {
            let lo = rng.below(4000) as f64;
            let hi = lo + rng.below(1500) as f64 + 0.5;
            fields.insert("duration_ms".into(), json!({"gte": lo, "lt": hi}));
            preds.push(Box::new(move |d| {
                d.fields
                    .get("duration_ms")
                    .and_then(Value::as_f64)
                    .is_some_and(|v| v >= lo && v < hi)
            }));
        }
        3 => {
            let want = rng.below(2) == 0;
            fields.insert("user_id".into(), json!({"exists": want}));
            preds.push(Box::new(move |d| d.fields.contains_key("user_id") == want));
        }
        4 => {
            let s = [200, 404, 500][rng.below(3) as usize];
            fields.insert("status".into(), json!(s));
            preds.push(Box::new(move |d| {
                d.fields.get("status").and_then(Value::as_f64) == Some(s as f64)
            }));
        }
        5 => {
            let b = rng.below(2) == 0;
            fields.insert("fields.cached".into(), json!(b));
            preds.push(Box::new(move |d| d.fields.get("cached") == Some(&json!(b))));
        }
        _ => {}
    }
    if !fields.is_empty() {
        filters.insert("fields".into(), Value::Object(fields));
    }
    let sort_numeric = rng.below(4) == 0;
    let asc = rng.below(2) == 0;
    let sort = json!({
        "field": if sort_numeric { "fields.duration_ms" } else { "timestamp" },
        "order": if asc { "asc" } else { "desc" },
    });
    let mut body = json!({
        "filters": filters, "sort": sort,
        "limit": 1 + rng.below(40), "offset": rng.below(25),
    });
    if let Some(t) = &text {
        body["query"] = json!(t);
    }
    let pred_text = expr.clone();
    Case {
        body,
        text: expr,
        pred: Box::new(move |d| {
            pred_text.as_ref().is_none_or(|e| eval(d, e)) && preds.iter().all(|p| p(d))
        }),
        sort_numeric,
        asc,
    }
}

/// The oracle's order: by the sort value (missing last), then log_id, in the wanted direction.
fn oracle_sort(matches: &mut [&Doc], numeric: bool, asc: bool) {
    matches.sort_by(|a, b| {
        let value = |d: &Doc| {
            if numeric {
                d.fields.get("duration_ms").and_then(Value::as_f64)
            } else {
                Some(d.ts_us as f64)
            }
        };
        let (va, vb) = (value(a), value(b));
        let by_value = match (va, vb) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap(),
            (Some(_), None) => return std::cmp::Ordering::Less,
            (None, Some(_)) => return std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        let o = by_value.then(a.log_id.cmp(&b.log_id));
        if asc {
            o
        } else {
            o.reverse()
        }
    });
    // Timestamps compare exactly as integers (the f64 above is exact below 2^53 µs).
}

fn ids(answer: &Value) -> Vec<u128> {
    answer["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            uuid::Uuid::parse_str(l["log_id"].as_str().unwrap())
                .unwrap()
                .as_u128()
        })
        .collect()
}

// ---- aggregations -----------------------------------------------------------------------

fn aggs_request() -> Value {
    json!({
        "by_service": {"terms": {"field": "service", "size": 100},
            "aggs": {"lat": {"percentiles": {"field": "duration_ms", "percents": [50, 99]}},
                     "hourly": {"date_histogram": {"field": "timestamp", "fixed_interval": "1h"}}}},
        "by_level": {"terms": {"field": "level"}},
        "by_user": {"terms": {"field": "fields.user_id", "size": 500}},
        "dur": {"stats": {"field": "duration_ms"}},
        "dur_sum": {"sum": {"field": "fields.duration_ms"}},
        "dur_avg": {"avg": {"field": "duration_ms"}},
        "dur_min": {"min": {"field": "duration_ms"}},
        "dur_max": {"max": {"field": "duration_ms"}},
        "dur_count": {"value_count": {"field": "duration_ms"}},
        "users": {"cardinality": {"field": "user_id"}},
        "p": {"percentiles": {"field": "duration_ms", "percents": [1, 25, 50, 75, 95, 99]}},
        "hourly": {"date_histogram": {"field": "timestamp", "fixed_interval": "1h"},
            "aggs": {"by_env": {"terms": {"field": "environment"}}}},
        "daily": {"date_histogram": {"field": "timestamp", "calendar_interval": "day"}},
        "weekly": {"date_histogram": {"field": "timestamp", "calendar_interval": "week"}},
        "monthly": {"date_histogram": {"field": "timestamp", "calendar_interval": "month"}},
    })
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-9) + 1e-9
}

fn buckets(v: &Value) -> BTreeMap<String, (u64, Value)> {
    v["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {v}"))
        .iter()
        .filter(|b| b["doc_count"].as_u64().unwrap() > 0)
        .map(|b| {
            let key = match &b["key"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => format!("{}", n.as_f64().unwrap() as i64),
                other => other.to_string(),
            };
            (key, (b["doc_count"].as_u64().unwrap(), b.clone()))
        })
        .collect()
}

fn bucket_counts(v: &Value) -> BTreeMap<String, u64> {
    buckets(v).into_iter().map(|(k, (c, _))| (k, c)).collect()
}

fn counts_by<K: Ord + ToString>(
    docs: &[&Doc],
    key: impl Fn(&Doc) -> Option<K>,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for d in docs {
        if let Some(k) = key(d) {
            *m.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    m
}

fn check_terms(name: &str, got: &Value, want: BTreeMap<String, u64>, ctx: &str) {
    let got_counts: BTreeMap<String, u64> = bucket_counts(got);
    assert_eq!(got_counts, want, "{name} differs for {ctx}");
    // Ordered by count, largest first.
    let order: Vec<u64> = got["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["doc_count"].as_u64().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] >= w[1]),
        "{name} not ordered by count: {order:?}"
    );
}

fn durations(docs: &[&Doc]) -> Vec<f64> {
    let mut v: Vec<f64> = docs
        .iter()
        .filter_map(|d| d.fields.get("duration_ms").and_then(Value::as_f64))
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// DDSketch (tantivy's percentiles) answers within 1% relative error of a value whose rank is
/// the wanted one; allow the neighbouring ranks and 2% for rounding of the rank itself.
fn check_percentile(got: f64, sorted: &[f64], q: f64, ctx: &str) {
    let r = q / 100.0 * (sorted.len() as f64 - 1.0);
    let lo = sorted[(r.floor() as usize).saturating_sub(1)];
    let hi = sorted[((r.ceil() as usize) + 1).min(sorted.len() - 1)];
    assert!(
        got >= lo * 0.98 - 1e-6 && got <= hi * 1.02 + 1e-6,
        "p{q} = {got}, expected within [{lo}, {hi}] ±2% ({ctx})"
    );
}

fn hour_key(us: i64) -> String {
    let ms = us.div_euclid(1000);
    (ms - ms.rem_euclid(3_600_000)).to_string()
}

fn check_aggs(got: &Value, matching: &[&Doc], ctx: &str) {
    check_terms(
        "by_service",
        &got["by_service"],
        counts_by(matching, |d| Some(d.service.clone())),
        ctx,
    );
    check_terms(
        "by_level",
        &got["by_level"],
        counts_by(matching, |d| Some(d.level)),
        ctx,
    );
    check_terms(
        "by_user",
        &got["by_user"],
        counts_by(matching, |d| {
            d.fields
                .get("user_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        }),
        ctx,
    );
    for (service, (_, bucket)) in buckets(&got["by_service"]) {
        let docs: Vec<&Doc> = matching
            .iter()
            .copied()
            .filter(|d| d.service == service)
            .collect();
        let hourly: BTreeMap<String, u64> = bucket_counts(&bucket["hourly"]);
        assert_eq!(
            hourly,
            counts_by(&docs, |d| Some(hour_key(d.ts_us))),
            "hourly of {service} ({ctx})"
        );
        let sorted = durations(&docs);
        for q in ["50.0", "99.0"] {
            let v = &bucket["lat"]["values"][q];
            if sorted.is_empty() {
                assert!(v.is_null(), "{service} p{q} of nothing is {v} ({ctx})");
            } else {
                check_percentile(v.as_f64().unwrap(), &sorted, q.parse().unwrap(), ctx);
            }
        }
    }
    let sorted = durations(matching);
    let n = sorted.len() as f64;
    let sum: f64 = sorted.iter().sum();
    assert_eq!(
        got["dur"]["count"].as_u64().unwrap(),
        sorted.len() as u64,
        "stats.count ({ctx})"
    );
    assert_eq!(
        got["dur_count"]["value"].as_f64().unwrap(),
        n,
        "value_count ({ctx})"
    );
    if sorted.is_empty() {
        assert!(got["dur_avg"]["value"].is_null(), "avg of nothing ({ctx})");
    } else {
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        assert!(
            close(got["dur"]["sum"].as_f64().unwrap(), sum, 1e-9),
            "stats.sum ({ctx})"
        );
        assert!(
            close(got["dur_sum"]["value"].as_f64().unwrap(), sum, 1e-9),
            "sum ({ctx})"
        );
        assert!(
            close(got["dur_avg"]["value"].as_f64().unwrap(), sum / n, 1e-9),
            "avg ({ctx})"
        );
        assert_eq!(
            got["dur_min"]["value"].as_f64().unwrap(),
            min,
            "min ({ctx})"
        );
        assert_eq!(
            got["dur_max"]["value"].as_f64().unwrap(),
            max,
            "max ({ctx})"
        );
        assert_eq!(
            got["dur"]["min"].as_f64().unwrap(),
            min,
            "stats.min ({ctx})"
        );
        assert_eq!(
            got["dur"]["max"].as_f64().unwrap(),
            max,
            "stats.max ({ctx})"
        );
        for q in [1.0, 25.0, 50.0, 75.0, 95.0, 99.0] {
            let v = got["p"]["values"][format!("{q:.1}")].as_f64().unwrap();
            check_percentile(v, &sorted, q, ctx);
        }
    }
    // HyperLogLog with 2^11 registers: ~2.3% standard error; 10% is over four of them.
    let users = counts_by(matching, |d| {
        d.fields
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
    .len() as f64;
    let card = got["users"]["value"].as_f64().unwrap();
    assert!(
        (card - users).abs() <= (users * 0.10).max(1.0),
        "cardinality {card} vs {users} ({ctx})"
    );

    let hourly = buckets(&got["hourly"]);
    let want_hourly = counts_by(matching, |d| Some(hour_key(d.ts_us)));
    assert_eq!(
        hourly
            .iter()
            .map(|(k, (c, _))| (k.clone(), *c))
            .collect::<BTreeMap<_, _>>(),
        want_hourly,
        "hourly ({ctx})"
    );
    for (hour, (_, bucket)) in &hourly {
        let docs: Vec<&Doc> = matching
            .iter()
            .copied()
            .filter(|d| &hour_key(d.ts_us) == hour)
            .collect();
        let got_env: BTreeMap<String, u64> = bucket_counts(&bucket["by_env"]);
        assert_eq!(
            got_env,
            counts_by(&docs, |d| d.environment),
            "hourly.by_env {hour} ({ctx})"
        );
    }
    let day_key = |us: i64| {
        let ms = us.div_euclid(1000);
        ms - ms.rem_euclid(86_400_000)
    };
    let got_daily: BTreeMap<String, u64> = bucket_counts(&got["daily"]);
    assert_eq!(
        got_daily,
        counts_by(matching, |d| Some(day_key(d.ts_us))),
        "daily ({ctx})"
    );
    // Weeks start on Monday; 1970-01-05 was one.
    let week_key = |us: i64| {
        let ms = us.div_euclid(1000) - 4 * 86_400_000;
        ms - ms.rem_euclid(7 * 86_400_000) + 4 * 86_400_000
    };
    let got_weekly: BTreeMap<String, u64> = bucket_counts(&got["weekly"]);
    assert_eq!(
        got_weekly,
        counts_by(matching, |d| Some(week_key(d.ts_us))),
        "weekly ({ctx})"
    );
    let month_key = |us: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap();
        let first = time::Date::from_calendar_date(t.year(), t.month(), 1).unwrap();
        (first.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
    };
    let got_monthly: BTreeMap<String, u64> = bucket_counts(&got["monthly"]);
    assert_eq!(
        got_monthly,
        counts_by(matching, |d| Some(month_key(d.ts_us))),
        "monthly ({ctx})"
    );
}

#[test]
fn queries_and_aggregations_match_a_brute_force_evaluation() {
    let n: usize = std::env::var("VEIL_QUERY_ORACLE_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let seed = std::env::var("VEIL_QUERY_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125u64);
    eprintln!("seed {seed}, {n} entries (VEIL_QUERY_ORACLE_SEED / _ENTRIES replay)");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let now_us = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;

    let generated = generate(&mut rng, now_us, n);
    let mut docs = Vec::with_capacity(n);
    for chunk in generated.chunks(1000) {
        let body: String = chunk.iter().map(|(_, b)| format!("{b}\n")).collect();
        let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["accepted"].as_u64(),
            Some(chunk.len() as u64),
            "{answer}"
        );
        for ((doc, _), r) in chunk.iter().zip(answer["results"].as_array().unwrap()) {
            assert_eq!(
                r["pii_masked"], false,
                "generated entries must hold no personal data: {r}"
            );
            let mut doc = doc.clone();
            doc.log_id = uuid::Uuid::parse_str(r["log_id"].as_str().unwrap())
                .unwrap()
                .as_u128();
            docs.push(doc);
        }
    }
    veil.wait_for_query(json!({"limit": 0}), "every entry searchable", |a| {
        a["total"].as_u64() == Some(n as u64)
    });

    let cases = std::env::var("VEIL_QUERY_ORACLE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let mut nonempty = 0;
    for case_no in 0..cases {
        let case = random_case(&mut rng, &docs, now_us);
        let mut matching: Vec<&Doc> = docs.iter().filter(|d| (case.pred)(d)).collect();
        oracle_sort(&mut matching, case.sort_numeric, case.asc);
        let mut body = case.body.clone();
        let with_aggs = case_no % 5 == 0;
        if with_aggs {
            body["aggs"] = aggs_request();
        }
        let ctx = format!("case {case_no}: {body}");
        let answer = veil.query(body.clone());
        if answer["total"].as_u64() != Some(matching.len() as u64) {
            // Show which entries differ before failing.
            let mut all = case.body.clone();
            all["offset"] = json!(0);
            all["limit"] = json!(10_000);
            let got: std::collections::BTreeSet<u128> = ids(&veil.query(all)).into_iter().collect();
            let want: std::collections::BTreeSet<u128> =
                matching.iter().map(|d| d.log_id).collect();
            for id in got.symmetric_difference(&want) {
                let doc = docs.iter().find(|d| d.log_id == *id);
                eprintln!(
                    "only in {}: {doc:?}",
                    if got.contains(id) { "veil" } else { "oracle" }
                );
            }
            panic!(
                "total of {ctx}: veil {} oracle {}",
                answer["total"],
                matching.len()
            );
        }
        assert_eq!(answer["partial"], false, "{ctx}");
        let offset = body["offset"].as_u64().unwrap() as usize;
        let limit = body["limit"].as_u64().unwrap() as usize;
        let want: Vec<u128> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|d| d.log_id)
            .collect();
        assert_eq!(
            ids(&answer),
            want,
            "page of {ctx} (text parsed as {:?})",
            case.text
        );
        nonempty += usize::from(!want.is_empty());
        // Follow search_after cursors for two more pages.
        let mut cursor = answer["search_after"].as_str().map(str::to_string);
        let mut seen = offset + want.len();
        for _ in 0..2 {
            let Some(c) = cursor.take() else {
                assert!(seen >= matching.len(), "no cursor before the end: {ctx}");
                break;
            };
            let mut next = case.body.clone();
            next["offset"] = json!(0);
            next["search_after"] = json!(c);
            let page = veil.query(next);
            let want: Vec<u128> = matching
                .iter()
                .skip(seen)
                .take(limit)
                .map(|d| d.log_id)
                .collect();
            assert_eq!(ids(&page), want, "search_after page at {seen} of {ctx}");
            assert_eq!(page["total"].as_u64(), Some(matching.len() as u64));
            seen += want.len();
            cursor = page["search_after"].as_str().map(str::to_string);
        }
        if with_aggs {
            check_aggs(&answer["aggregations"], &matching, &ctx);
        }
    }
    eprintln!("{cases} cases, {nonempty} with hits on their page");
    assert!(
        nonempty > cases / 3,
        "too few queries hit anything ({nonempty} of {cases}): the generator is off"
    );

    // Aggregations over everything, and over a service + hour slice (planned to few shards).
    let all: Vec<&Doc> = docs.iter().collect();
    let answer = veil.query(json!({"limit": 0, "aggs": aggs_request()}));
    check_aggs(&answer["aggregations"], &all, "all entries");
}
