//! Top-K exceptions and exception details, from the counters every shard keeps on apply.
//!
//! Windows are minute-granular:
//! - sliding (default): the last N minutes ending with the current one, i.e. minutes
//!   `[m - N + 1, m]` where `m` is the minute now falls in; N is the window rounded up to whole
//!   minutes (`90s` → 2);
//! - tumbling (`mode=tumbling`): the UTC-aligned block of N minutes (aligned to multiples of N
//!   since the epoch) containing `at`, or, without `at`, the last completed block;
//! - explicit `start`/`end` (RFC 3339): the minutes from the one containing `start` to the one
//!   containing `end`, both included.
//!
//! Merging is exact: each shard returns its full per-exception numbers for the window (as many
//! as there are distinct exceptions in it), the coordinator adds them up, sorts by count
//! (ties: latest `last_seen` first, then `exception_id`) and keeps `k`; only then are the
//! winners' whole counters (samples, hosts, regions, users) read.
//!
//! An unfiltered ranking gets each shard's numbers in two parts: the window's whole hours (one
//! cached span per shard, with a version that changes whenever an apply changes it) and the
//! edges (ten-minute blocks and single minutes). The coordinator keeps the sum of all shards'
//! spans with the versions it was summed from ([`SpanSums`]); while every shard reports the same
//! versions, the sum is reused and only the edges are added, so a sliding 24 h window asked
//! every few seconds adds up the shards' whole hours once an hour instead of every time.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use veil_shard::exceptions::{
    merge_into, merge_samples, Counter, CounterFilter, ExceptionCounts, IdMap, Numbers,
};
use veil_shard::rollups::{HoursNumbers, WindowNumbers};
use veil_shard::ShardId;

use crate::coordinator::{self, Ask, Outcome, QueryContext};
use crate::error::ApiError;
use crate::ingest::{format_timestamp, now_us, parse_level};
use crate::leaf::{LeafError, LeafReply, LeafRequest, Origin};

/// Largest `k`.
pub const K_MAX: usize = 1000;
/// Longest window, in minutes (90 days).
pub const WINDOW_MINUTES_MAX: i64 = 90 * 24 * 60;
/// Most trend buckets in one details answer.
pub const TREND_BUCKETS_MAX: i64 = 2000;

/// Query parameters shared by top-K and details.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowParams {
    /// Number of exceptions (top-K only) [default: 10].
    pub k: Option<usize>,
    /// `5m`, `1h`, `24h`, `7d`, `90s`… [default: 1h, or 24h for details].
    pub window: Option<String>,
    /// `sliding` (default) or `tumbling`.
    pub mode: Option<String>,
    /// For tumbling windows: a time inside the wanted block (RFC 3339).
    pub at: Option<String>,
    /// Explicit window start (RFC 3339), with `end`.
    pub start: Option<String>,
    /// Explicit window end (RFC 3339), with `start`.
    pub end: Option<String>,
    /// Comma-separated services.
    pub service: Option<String>,
    /// Comma-separated environments.
    pub environment: Option<String>,
    /// Comma-separated regions.
    pub region: Option<String>,
    /// Comma-separated levels.
    pub level: Option<String>,
    /// Trend bucket size for details (`1m`, `1h`…) [default: chosen from the window].
    pub bucket: Option<String>,
    /// `strong`: every entry acknowledged before the question is counted; `any` (default).
    pub consistency: Option<String>,
}

/// What the exception questions stand on: a query context, and the sums of shards' spans
/// kept between questions.
pub trait ExceptionContext: QueryContext {
    /// The coordinator's span sums.
    fn span_sums(&self) -> &SpanSums;
}

impl<T: ExceptionContext + ?Sized> ExceptionContext for Arc<T> {
    fn span_sums(&self) -> &SpanSums {
        (**self).span_sums()
    }
}

/// How a question asks its shards: under the node's query deadline, strong when
/// `consistency=strong` (each replica asked first applies what its leader had committed, as
/// counters are read from what is applied).
fn ask_of<C: ExceptionContext + ?Sized>(node: &C, p: &WindowParams) -> Result<Ask, ApiError> {
    let strong = crate::query::strong_consistency(p.consistency.as_deref())?;
    let config = node.config();
    Ok(Ask::new(
        config,
        std::time::Duration::from_millis(config.query_timeout_ms),
        strong,
    ))
}

/// Parses `90s`, `45m`, `1h`, `3d`, `1w` into seconds.
pub fn parse_duration_secs(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    (n > 0).then(|| n.checked_mul(unit)).flatten()
}

/// A resolved window: minutes `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First minute (since the epoch).
    pub start: i64,
    /// One past the last minute.
    pub end: i64,
}

fn bad(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_field(field)
}

fn rfc3339_us(s: &str, field: &str) -> Result<i64, ApiError> {
    crate::ingest::parse_timestamp(&Value::String(s.to_string()))
        .map_err(|_| bad("invalid_time", field, format!("{field} is not RFC 3339")))
}

/// Resolves the window of a request at `now_us`.
pub fn resolve_window(p: &WindowParams, default: &str, now_us: i64) -> Result<Window, ApiError> {
    let minute_now = now_us.div_euclid(60_000_000);
    if p.start.is_some() || p.end.is_some() {
        let (Some(s), Some(e)) = (&p.start, &p.end) else {
            return Err(bad(
                "invalid_window",
                "start",
                "give both start and end".into(),
            ));
        };
        let start = rfc3339_us(s, "start")?.div_euclid(60_000_000);
        let end = rfc3339_us(e, "end")?.div_euclid(60_000_000) + 1;
        if end <= start || end - start > WINDOW_MINUTES_MAX {
            return Err(bad(
                "invalid_window",
                "end",
                format!("end must follow start, at most {WINDOW_MINUTES_MAX} minutes later"),
            ));
        }
        return Ok(Window { start, end });
    }
    let text = p.window.as_deref().unwrap_or(default);
    let secs = parse_duration_secs(text).ok_or_else(|| {
        bad(
            "invalid_window",
            "window",
            format!("window {text:?} is not a duration like 90s, 15m, 1h, 24h, 7d"),
        )
    })?;
    let n = (secs + 59) / 60;
    if n > WINDOW_MINUTES_MAX {
        return Err(bad(
            "invalid_window",
            "window",
            format!("window is longer than {WINDOW_MINUTES_MAX} minutes"),
        ));
    }
    match p.mode.as_deref().unwrap_or("sliding") {
        "sliding" => Ok(Window {
            start: minute_now + 1 - n,
            end: minute_now + 1,
        }),
        "tumbling" => {
            let start = match &p.at {
                Some(at) => rfc3339_us(at, "at")?.div_euclid(60_000_000).div_euclid(n) * n,
                None => minute_now.div_euclid(n) * n - n,
            };
            Ok(Window {
                start,
                end: start + n,
            })
        }
        other => Err(bad(
            "invalid_mode",
            "mode",
            format!("mode {other:?} is not sliding or tumbling"),
        )),
    }
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn filter_of(p: &WindowParams, exception_id: Option<u64>) -> Result<CounterFilter, ApiError> {
    let levels = list(&p.level)
        .iter()
        .map(|l| {
            parse_level(l)
                .map(|l| l.as_str().to_string())
                .ok_or_else(|| bad("invalid_level", "level", format!("unknown level {l:?}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(CounterFilter {
        exception_id,
        exception_ids: Default::default(),
        services: list(&p.service),
        environments: list(&p.environment),
        regions: list(&p.region),
        levels,
    })
}

/// Asks every shard `request(shard)`, through one replica each (see `coordinator.rs`), and
/// returns their answers; a shard that no replica answers fails the question (counts are
/// exact or not given): 503 when a retry can fix it, 504 past the deadline.
async fn on_every_shard<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    request: impl Fn(ShardId) -> LeafRequest,
) -> Result<Vec<(ShardId, LeafReply)>, ApiError> {
    let shards: Vec<ShardId> = node.shard_map().shards().collect();
    on_shards(node, &shards, ask, request).await
}

/// [`on_every_shard`] over `shards` only.
async fn on_shards<C: ExceptionContext + ?Sized>(
    node: &C,
    shards: &[ShardId],
    ask: &Ask,
    request: impl Fn(ShardId) -> LeafRequest,
) -> Result<Vec<(ShardId, LeafReply)>, ApiError> {
    let outcomes =
        coordinator::ask_shards(node, shards, |shard| Arc::new(request(shard)), ask).await;
    let mut answers = Vec::with_capacity(outcomes.len());
    for (shard, outcome) in shards.iter().zip(outcomes) {
        match outcome {
            Outcome::Answered(reply) => answers.push((*shard, reply)),
            Outcome::TimedOut => {
                return Err(ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "query_timeout",
                    format!(
                        "shard {shard} did not answer within {} ms",
                        node.config().query_timeout_ms
                    ),
                ))
            }
            Outcome::Failed(e) => return Err(e.into_api()),
        }
    }
    Ok(answers)
}

/// The shards that can hold counters of `services` (all: any service) in `window`: counters
/// are written by the shard that applied the entry, so over a bounded window only each
/// (service, hour)'s shard, as queries are planned.
fn shards_of<C: QueryContext + ?Sized>(
    node: &C,
    services: &[String],
    window: Window,
) -> Vec<ShardId> {
    crate::query::shards_of_services(
        &node.shard_map(),
        services,
        window.start.div_euclid(60),
        window.end.saturating_sub(1).div_euclid(60),
    )
}

/// Some exceptions' filtered counts from the shards that can hold them ([`shards_of`]), each
/// read through the exception's own history ([`veil_shard::Shard::exception_filtered_history`]);
/// with `first_only`, each shard's first sighting under the filter only.
async fn gather_histories<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    exception_ids: Vec<u64>,
    window: Window,
    filter: &CounterFilter,
    bucket_minutes: Option<i64>,
    first_only: bool,
) -> Result<ExceptionCounts, ApiError> {
    let shards = shards_of(node, &filter.services, window);
    let parts = on_shards(node, &shards, ask, |_| LeafRequest::FilteredHistories {
        exception_ids: exception_ids.clone(),
        start_minute: window.start,
        end_minute: window.end,
        filter: filter.clone(),
        bucket_minutes,
        first_only,
    })
    .await?;
    let mut all = ExceptionCounts::default();
    for (_, reply) in parts {
        all.absorb(reply.answer.into_counts().map_err(LeafError::into_api)?);
    }
    Ok(all)
}

/// Sums kept of every shard's whole-hour span ([`veil_shard::rollups::HoursNumbers`]).
pub const SPAN_SUMS_MAX: usize = 4;

/// The coordinator's sums of every shard's whole-hour span, each with the shards' versions it
/// was summed from (see the module's doc). At most [`SPAN_SUMS_MAX`], the oldest goes first.
#[derive(Default)]
pub struct SpanSums {
    sums: std::sync::Mutex<Vec<SpanSum>>,
}

struct SpanSum {
    hours: std::ops::Range<i64>,
    versions: Vec<(Origin, u64)>,
    numbers: Arc<IdMap<Numbers>>,
}

impl SpanSums {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SpanSum>> {
        // A list of immutable sums: a panic elsewhere leaves it usable.
        self.sums.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sum of the spans `hours` at exactly these per-shard versions (each with the cache
    /// that handed it out), if kept.
    pub fn get(
        &self,
        hours: &std::ops::Range<i64>,
        versions: &[(Origin, u64)],
    ) -> Option<Arc<IdMap<Numbers>>> {
        self.lock()
            .iter()
            .find(|s| s.hours == *hours && s.versions == versions)
            .map(|s| s.numbers.clone())
    }

    /// Keeps a sum (replacing one of the same hours).
    pub fn put(
        &self,
        hours: std::ops::Range<i64>,
        versions: Vec<(Origin, u64)>,
        numbers: Arc<IdMap<Numbers>>,
    ) {
        let mut sums = self.lock();
        sums.retain(|s| s.hours != hours);
        if sums.len() >= SPAN_SUMS_MAX {
            sums.remove(0);
        }
        sums.push(SpanSum {
            hours,
            versions,
            numbers,
        });
    }
}

/// Every shard's per-exception numbers for a window, added up in two parts.
struct Ranking {
    /// The sum of the shards' whole-hour spans (kept by the coordinator while the shards'
    /// versions stay the same).
    span: Option<Arc<IdMap<Numbers>>>,
    /// The sum of the shards' edges.
    edges: IdMap<Numbers>,
    /// Each shard's own parts, with its id.
    parts: Vec<(ShardId, WindowNumbers)>,
}

async fn gather_numbers<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    window: Window,
) -> Result<Ranking, ApiError> {
    let replies = on_every_shard(node, ask, |_| LeafRequest::WindowNumbers {
        start_minute: window.start,
        end_minute: window.end,
    })
    .await?;
    let mut parts = Vec::with_capacity(replies.len());
    let mut origins = Vec::with_capacity(replies.len());
    for (shard, reply) in replies {
        origins.push(reply.origin);
        let numbers = reply
            .answer
            .into_window_numbers()
            .map_err(LeafError::into_api)?;
        parts.push((shard, numbers));
    }
    let mut edges = IdMap::default();
    for (_, part) in &parts {
        for (id, n) in &part.edges {
            merge_into(&mut edges, *id, *n);
        }
    }
    let spans: Vec<(Origin, &HoursNumbers)> = parts
        .iter()
        .zip(&origins)
        .filter_map(|(p, origin)| Some((*origin, p.1.hours.as_ref()?)))
        .collect();
    let Some((_, first)) = spans.first() else {
        return Ok(Ranking {
            span: None,
            edges,
            parts,
        });
    };
    let hours = first.hours.clone();
    // A version names numbers only within the cache (node and process) that handed it out.
    let versions: Option<Vec<(Origin, u64)>> = spans
        .iter()
        .map(|(origin, s)| Some((*origin, s.version?)))
        .collect();
    let kept = versions
        .as_ref()
        .and_then(|v| node.span_sums().get(&hours, v));
    let span = match kept {
        Some(sum) => sum,
        None => {
            let distinct = spans.iter().map(|s| s.1.numbers.len()).max().unwrap_or(0);
            let mut sum = IdMap::with_capacity_and_hasher(distinct * 2, Default::default());
            for (_, span) in &spans {
                for (id, n) in span.numbers.iter() {
                    merge_into(&mut sum, *id, *n);
                }
            }
            let sum = Arc::new(sum);
            if let Some(versions) = versions {
                node.span_sums().put(hours, versions, sum.clone());
            }
            sum
        }
    };
    Ok(Ranking {
        span: Some(span),
        edges,
        parts,
    })
}

/// The ranking numbers of a top-K filtered by service alone: only the shards that can hold the
/// services' counters in the window are asked, and each keeps its ranking numbers (cached blocks
/// and hourly rollups, as unfiltered) of the services' exceptions only. No coordinator sums are
/// kept for it.
async fn gather_service_numbers<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    window: Window,
    services: Vec<String>,
) -> Result<Ranking, ApiError> {
    let shards = shards_of(node, &services, window);
    let replies = on_shards(node, &shards, ask, |_| LeafRequest::WindowNumbersOf {
        start_minute: window.start,
        end_minute: window.end,
        services: services.clone(),
    })
    .await?;
    let mut parts = Vec::with_capacity(replies.len());
    for (shard, reply) in replies {
        let numbers = reply
            .answer
            .into_window_numbers()
            .map_err(LeafError::into_api)?;
        parts.push((shard, numbers));
    }
    let mut edges = IdMap::default();
    let mut span = IdMap::default();
    for (_, part) in &parts {
        for (id, n) in &part.edges {
            merge_into(&mut edges, *id, *n);
        }
        for (id, n) in part.hours.iter().flat_map(|h| h.numbers.iter()) {
            merge_into(&mut span, *id, *n);
        }
    }
    Ok(Ranking {
        span: Some(Arc::new(span)),
        edges,
        parts,
    })
}

/// [`rank_order`] over ranking numbers.
fn ranking(a: &(u64, Numbers), b: &(u64, Numbers)) -> std::cmp::Ordering {
    rank_order(
        (a.0, a.1.count, a.1.last_seen_us),
        (b.0, b.1.count, b.1.last_seen_us),
    )
}

/// The best `k` of `span + edges` (each exception's numbers added up), in ranking order.
pub fn top_numbers(
    span: Option<&IdMap<Numbers>>,
    edges: &IdMap<Numbers>,
    k: usize,
) -> Vec<(u64, Numbers)> {
    let mut all: Vec<(u64, Numbers)> =
        Vec::with_capacity(span.map_or(0, |s| s.len()) + edges.len());
    if let Some(span) = span {
        all.extend(span.iter().map(|(id, n)| {
            let mut n = *n;
            if let Some(e) = edges.get(id) {
                n.merge(e);
            }
            (*id, n)
        }));
    }
    all.extend(
        edges
            .iter()
            .filter(|(id, _)| span.is_none_or(|s| !s.contains_key(*id)))
            .map(|(id, n)| (*id, *n)),
    );
    if k < all.len() {
        all.select_nth_unstable_by(k, ranking);
        all.truncate(k);
    }
    all.sort_unstable_by(ranking);
    all
}

/// The whole counters (samples, hosts, regions, users) of a few exceptions over a window, read
/// exception-first from each shard's hourly and minute history rows: a few short ranges per
/// exception and shard, however many other exceptions the window holds. A shard reads an
/// exception's whole hours only when its span has the exception, and its edge minutes only when
/// its edges do (the ranking's numbers are written in the same batches as the history rows).
async fn gather_details<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    window: Window,
    ids: &[u64],
    parts: &[(ShardId, WindowNumbers)],
) -> Result<ExceptionCounts, ApiError> {
    let wanted: HashMap<ShardId, (Vec<u64>, Vec<u64>)> = parts
        .iter()
        .map(|(shard, p)| {
            let in_hours = ids
                .iter()
                .filter(|id| p.hours.as_ref().is_some_and(|h| h.numbers.contains_key(id)))
                .copied()
                .collect();
            let in_edges = ids
                .iter()
                .filter(|id| p.edges.contains_key(id))
                .copied()
                .collect();
            (*shard, (in_hours, in_edges))
        })
        .filter(|(_, (h, e)): &(ShardId, (Vec<u64>, Vec<u64>))| !h.is_empty() || !e.is_empty())
        .collect();
    let mut shards: Vec<ShardId> = wanted.keys().copied().collect();
    shards.sort_unstable();
    let replies = on_shards(node, &shards, ask, |shard| {
        let (in_hours, in_edges) = wanted[&shard].clone();
        LeafRequest::PartsSummary {
            in_hours,
            in_edges,
            start_minute: window.start,
            end_minute: window.end,
        }
    })
    .await?;
    let mut all = ExceptionCounts::default();
    for (_, reply) in replies {
        all.absorb(reply.answer.into_counts().map_err(LeafError::into_api)?);
    }
    Ok(all)
}

/// One exception's history on every shard, added up, and its first sighting ever.
async fn history<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    exception_id: u64,
    window: Window,
    bucket: i64,
) -> Result<(ExceptionCounts, Option<i64>), ApiError> {
    let parts = on_every_shard(node, ask, |_| LeafRequest::History {
        exception_id,
        start_minute: window.start,
        end_minute: window.end,
        bucket_minutes: bucket,
    })
    .await?;
    let mut all = ExceptionCounts::default();
    let mut first: Option<i64> = None;
    for (_, reply) in parts {
        let (part, f) = reply.answer.into_history().map_err(LeafError::into_api)?;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.absorb(part);
    }
    Ok((all, first))
}

/// The stored entries of `log_ids` (an exception's samples), in that order, from whichever
/// shards hold them; ids no shard holds are left out.
async fn entries_of<C: ExceptionContext + ?Sized>(
    node: &C,
    ask: &Ask,
    log_ids: Vec<uuid::Uuid>,
) -> Result<Vec<veil_shard::StoredEntry>, ApiError> {
    if log_ids.is_empty() {
        return Ok(Vec::new());
    }
    let parts = on_every_shard(node, ask, |_| LeafRequest::Entries {
        log_ids: log_ids.clone(),
    })
    .await?;
    let mut found = HashMap::new();
    for (_, reply) in parts {
        for entry in reply.answer.into_entries().map_err(LeafError::into_api)? {
            found.insert(entry.log_id, entry);
        }
    }
    Ok(log_ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// One item of a top-K answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct TopItem {
    /// The seed's id: hash(exception_type, service), 16 hex digits.
    pub exception_id: String,
    /// The type.
    pub exception_type: String,
    /// The service.
    pub service: String,
    /// Occurrences in the window.
    pub count: u64,
    /// First occurrence in the window.
    pub first_seen: String,
    /// Last occurrence in the window.
    pub last_seen: String,
    /// Up to three log_ids (the latest).
    pub sample_log_ids: Vec<String>,
    /// Hosts, regions and distinct affected users seen in the window.
    pub metadata: Metadata,
}

/// What an exception touched in the window.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct Metadata {
    /// Distinct hosts (at most 8).
    pub hosts: Vec<String>,
    /// Distinct regions (at most 8).
    pub regions: Vec<String>,
    /// Distinct `user_id`s (exact up to 256; a lower bound when `capped`).
    pub affected_users: usize,
    /// True when some lists were cut.
    pub capped: bool,
}

fn metadata(c: &Counter) -> Metadata {
    Metadata {
        hosts: c.hosts.clone(),
        regions: c.regions.clone(),
        affected_users: c.users.len(),
        capped: c.metadata_capped,
    }
}

fn item(id: u64, c: &Counter) -> TopItem {
    TopItem {
        exception_id: format!("{id:016x}"),
        exception_type: c.exception_type.clone(),
        service: c.service.clone(),
        count: c.count,
        first_seen: format_timestamp(c.first_seen_us),
        last_seen: format_timestamp(c.last_seen_us),
        sample_log_ids: c.samples.iter().map(|u| u.to_string()).collect(),
        metadata: metadata(c),
    }
}

/// The ranking order of `(exception id, count, last seen)`: count (desc), then last seen
/// (latest first), then exception id.
fn rank_order(a: (u64, u64, i64), b: (u64, u64, i64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0))
}

/// `GET /api/v1/exceptions/top-k`.
pub async fn top_k<C: ExceptionContext + ?Sized>(
    node: &C,
    p: WindowParams,
) -> Result<Value, ApiError> {
    let started = std::time::Instant::now();
    let k = p.k.unwrap_or(10);
    if k == 0 || k > K_MAX {
        return Err(bad("invalid_k", "k", format!("k must be 1 to {K_MAX}")));
    }
    let window = resolve_window(&p, "1h", now_us())?;
    let filter = filter_of(&p, None)?;
    let ask = ask_of(node, &p)?;
    let unfiltered = filter.services.is_empty() && !filter.has_dimensions();
    let by_service_only = !filter.services.is_empty() && !filter.has_dimensions();
    let exceptions: Vec<TopItem> = if unfiltered || by_service_only {
        // Rank on the rows' numbers only (no decoding of names and lists), then read the whole
        // counters of just the top k. An exception belongs to one service, so a filter by
        // service alone keeps or drops whole exceptions: their numbers and details are whole.
        let ranking = if unfiltered {
            gather_numbers(node, &ask, window).await?
        } else {
            gather_service_numbers(node, &ask, window, filter.services).await?
        };
        let ranked = top_numbers(ranking.span.as_deref(), &ranking.edges, k);
        let ids: Vec<u64> = ranked.iter().map(|(id, _)| *id).collect();
        let details = gather_details(node, &ask, window, &ids, &ranking.parts).await?;
        ranked
            .iter()
            .filter_map(|(id, n)| {
                let mut c = details.totals.get(id)?.clone();
                // The ranking's numbers, so the order shown is the order used.
                (c.count, c.first_seen_us, c.last_seen_us) =
                    (n.count, n.first_seen_us, n.last_seen_us);
                Some(item(*id, &c))
            })
            .collect()
    } else {
        // Rank on the passing rows' numbers (read with their names only), then read the whole
        // counters of just the top k, under the same filter.
        let shards = shards_of(node, &filter.services, window);
        let parts = on_shards(node, &shards, &ask, |_| LeafRequest::FilteredNumbers {
            start_minute: window.start,
            end_minute: window.end,
            filter: filter.clone(),
        })
        .await?;
        let mut numbers = IdMap::default();
        for (_, reply) in parts {
            for (id, n) in reply.answer.into_numbers().map_err(LeafError::into_api)? {
                merge_into(&mut numbers, id, n);
            }
        }
        let ranked = top_numbers(None, &numbers, k);
        let ids = ranked.iter().map(|(id, _)| *id).collect();
        let counts = gather_histories(node, &ask, ids, window, &filter, None, false).await?;
        ranked
            .iter()
            .filter_map(|(id, _)| Some(item(*id, counts.totals.get(id)?)))
            .collect()
    };
    Ok(serde_json::json!({
        "window": p.window.clone().unwrap_or_else(|| if p.start.is_some() { "custom".into() } else { "1h".into() }),
        "mode": p.mode.clone().unwrap_or_else(|| "sliding".into()),
        "start": format_timestamp(window.start * 60_000_000),
        "end": format_timestamp(window.end * 60_000_000),
        "service": p.service,
        "exceptions": exceptions,
        "execution_time_ms": started.elapsed().as_millis() as u64,
    }))
}

/// `GET /api/v1/exceptions/{exception_id}`.
pub async fn details<C: ExceptionContext + ?Sized>(
    node: &C,
    id: &str,
    p: WindowParams,
) -> Result<Value, ApiError> {
    let started = std::time::Instant::now();
    let exception_id = u64::from_str_radix(id, 16).map_err(|_| {
        ApiError::bad_request(
            "invalid_exception_id",
            format!("{id:?} is not an exception id (16 hex digits)"),
        )
    })?;
    let window = resolve_window(&p, "24h", now_us())?;
    let ask = ask_of(node, &p)?;
    let minutes = window.end - window.start;
    let bucket = match &p.bucket {
        Some(b) => {
            (parse_duration_secs(b).ok_or_else(|| {
                bad(
                    "invalid_bucket",
                    "bucket",
                    format!("bucket {b:?} is not a duration"),
                )
            })? + 59)
                / 60
        }
        None => match minutes {
            ..=60 => 1,
            61..=360 => 5,
            361..=1440 => 60,
            1441..=10080 => 360,
            _ => 1440,
        },
    };
    if (minutes + bucket - 1) / bucket > TREND_BUCKETS_MAX {
        return Err(bad(
            "invalid_bucket",
            "bucket",
            format!("at most {TREND_BUCKETS_MAX} buckets; choose a larger bucket"),
        ));
    }
    let filter = filter_of(&p, Some(exception_id))?;
    let unfiltered = filter.services.is_empty() && !filter.has_dimensions();
    // Without dimension filters one exception's history is one short range per shard; with
    // them, the window's counter rows are scanned and the time before it tells `is_new`.
    let (counts, first_ever) = if unfiltered {
        history(node, &ask, exception_id, window, bucket).await?
    } else {
        let counts = gather_histories(
            node,
            &ask,
            vec![exception_id],
            window,
            &filter,
            Some(bucket),
            false,
        )
        .await?;
        let earlier = gather_histories(
            node,
            &ask,
            vec![exception_id],
            Window {
                start: i64::MIN / 2,
                end: window.start,
            },
            &filter,
            None,
            true,
        )
        .await?;
        let first_ever = earlier
            .totals
            .get(&exception_id)
            .or(counts.totals.get(&exception_id))
            .map(|c| c.first_seen_us);
        (counts, first_ever)
    };
    let Some(first_ever) = first_ever else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "exception_not_found",
            format!("no exception {id} matches"),
        ));
    };
    let is_new = first_ever >= window.start * 60_000_000;
    let Some(total) = counts.totals.get(&exception_id) else {
        return Ok(serde_json::json!({
            "exception_id": id, "count": 0, "trend": [], "sample_logs": [], "is_new": false,
            "execution_time_ms": started.elapsed().as_millis() as u64,
        }));
    };
    let first_bucket = window.start.div_euclid(bucket) * bucket;
    let trend: Vec<Value> = (0..)
        .map(|i| first_bucket + i * bucket)
        .take_while(|b| *b < window.end)
        .map(|b| {
            serde_json::json!({
                "timestamp": format_timestamp(b * 60_000_000),
                "count": counts.buckets.get(&(exception_id, b)).copied().unwrap_or(0),
            })
        })
        .collect();
    let mut samples = Vec::new();
    merge_samples(&mut samples, &total.samples);
    let sample_logs: Vec<Value> = entries_of(node, &ask, samples)
        .await?
        .into_iter()
        .map(|entry| {
            serde_json::to_value(crate::query::LogView::from(entry)).unwrap_or(Value::Null)
        })
        .collect();
    Ok(serde_json::json!({
        "exception_id": id,
        "exception_type": total.exception_type,
        "service_name": total.service,
        "count": total.count,
        "first_seen": format_timestamp(total.first_seen_us),
        "last_seen": format_timestamp(total.last_seen_us),
        "is_new": is_new,
        "metadata": metadata(total),
        "bucket_minutes": bucket,
        "trend": trend,
        "sample_logs": sample_logs,
        "execution_time_ms": started.elapsed().as_millis() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `top_numbers` against its definition: add the two parts up, sort everything, keep `k`.
    #[test]
    fn top_numbers_equals_sorting_the_sum() {
        let mut rng = veil_chaos_tests::Rng::new(20261129);
        let mut next = move |n: u64| rng.below(n);
        for case in 0..500 {
            // Few distinct counts and times, so ties on both are common.
            let mut part = |len: u64| -> IdMap<Numbers> {
                (0..next(len))
                    .map(|_| {
                        let t = next(4) as i64;
                        let n = Numbers {
                            count: 1 + next(3),
                            first_seen_us: t,
                            last_seen_us: t + next(3) as i64,
                        };
                        (next(40), n)
                    })
                    .collect()
            };
            let span = (case % 5 != 0).then(|| part(30));
            let edges = part(20);
            let k = 1 + next(45) as usize;
            let mut sum = span.clone().unwrap_or_default();
            for (id, n) in &edges {
                merge_into(&mut sum, *id, *n);
            }
            let mut want: Vec<(u64, Numbers)> = sum.into_iter().collect();
            want.sort_by(ranking);
            want.truncate(k);
            assert_eq!(top_numbers(span.as_ref(), &edges, k), want, "case {case}");
        }
    }

    #[test]
    fn windows_are_minute_aligned_as_documented() {
        let now = 1_700_000_123_000_000; // 2023-11-14T22:15:23Z, minute 28333335
        let m = now / 60_000_000;
        let p = |w: &str, mode: Option<&str>| WindowParams {
            window: Some(w.into()),
            mode: mode.map(String::from),
            ..Default::default()
        };
        assert_eq!(
            resolve_window(&p("1h", None), "1h", now).unwrap(),
            Window {
                start: m - 59,
                end: m + 1
            }
        );
        assert_eq!(
            resolve_window(&p("90s", None), "1h", now).unwrap(),
            Window {
                start: m - 1,
                end: m + 1
            }
        );
        let t = resolve_window(&p("1h", Some("tumbling")), "1h", now).unwrap();
        assert_eq!((t.start % 60, t.end - t.start), (0, 60));
        assert!(t.end <= m, "the last completed hour");
        assert!(resolve_window(&p("1y", None), "1h", now).is_err());
        assert!(resolve_window(&p("1h", Some("hopping")), "1h", now).is_err());
    }
}
