//! The ingest pipeline: validate → mask → assign a log_id → route. Only this module holds
//! unmasked text (in [`Unmasked`]); what leaves it is a masked `StoredEntry`, with the original
//! sealed when its service keeps originals.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;
use veil_shard::{Level, StoredEntry};

use crate::error::ApiError;
use veil_node::parse::Format;
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Unmasked};

/// The namespace of name-based log_ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_0c7e_5b7d_4d6a_9a55_0e11_7e1c_0001);

/// Values that come from the request rather than the entry (headers).
#[derive(Debug, Default, Clone)]
pub struct RequestDefaults {
    /// `X-Service-Name`.
    pub service: Option<String>,
    /// `X-Environment`.
    pub environment: Option<String>,
    /// `Idempotency-Key` (single-entry requests only).
    pub idempotency_key: Option<String>,
}

/// The bounds checked on every entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryLimits {
    /// How far ahead of the receive time a timestamp may be, in µs.
    pub future_us_max: i64,
    /// How far behind the receive time a timestamp may be, in µs (None: no limit).
    pub past_us_max: Option<i64>,
    /// Bounds inside `fields`.
    pub fields: FieldLimits,
}

/// Bounds inside an entry's `fields`. What exceeds them is kept in a reduced form and counted
/// in the entry's `_veil_truncated` field; nothing is dropped silently.
#[derive(Debug, Clone, Copy)]
pub struct FieldLimits {
    /// Most keys at the top of `fields`; the rest go, as one JSON text, into `_veil_overflow`.
    pub keys_max: usize,
    /// Deepest nesting kept as structure; deeper values become their JSON text.
    pub depth_max: usize,
    /// Longest key, in bytes; longer keys are cut (at a character boundary).
    pub key_bytes_max: usize,
    /// Longest string value, in bytes; longer ones are cut and end with `…[truncated]`.
    pub value_bytes_max: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            keys_max: 256,
            depth_max: 8,
            key_bytes_max: 128,
            value_bytes_max: 16 << 10,
        }
    }
}

fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    true
}

/// Cuts a string value to `max` bytes and marks the cut; true when it was cut.
fn cut_marked(s: &mut String, max: usize) -> bool {
    let was_cut = cut(s, max);
    if was_cut {
        s.push_str("…[truncated]");
    }
    was_cut
}

/// Applies [`FieldLimits`] to a value at `depth`; returns how many cuts were made.
fn limit_value(v: &mut Value, depth: usize, l: &FieldLimits) -> u64 {
    match v {
        Value::String(s) => u64::from(cut_marked(s, l.value_bytes_max)),
        Value::Object(_) | Value::Array(_) if depth >= l.depth_max => {
            let mut text = v.to_string();
            cut(&mut text, l.value_bytes_max);
            *v = Value::String(text);
            1
        }
        Value::Array(items) => items.iter_mut().map(|x| limit_value(x, depth + 1, l)).sum(),
        Value::Object(map) => {
            let mut n = 0;
            let long: Vec<String> = map
                .keys()
                .filter(|k| k.len() > l.key_bytes_max)
                .cloned()
                .collect();
            for k in long {
                if let Some(x) = map.remove(&k) {
                    let mut short = k.clone();
                    cut(&mut short, l.key_bytes_max);
                    map.insert(short, x);
                    n += 1;
                }
            }
            n + map
                .values_mut()
                .map(|x| limit_value(x, depth + 1, l))
                .sum::<u64>()
        }
        _ => 0,
    }
}

/// Normalises the top-level keys of `fields` and applies the limits.
fn shape_fields(
    fields: Map<String, Value>,
    l: &FieldLimits,
    service: &str,
    registry: Option<&FieldKeys>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let mut overflow = Map::new();
    let mut cuts = 0u64;
    for (k, v) in fields {
        let normal = veil_node::parse::normalise_key(&k);
        // Two keys that normalise alike (`userId`, `user_id`): the second keeps its own name.
        let key = if k == "idempotency_key"
            || out.contains_key(&normal)
            || overflow.contains_key(&normal)
        {
            k
        } else {
            normal
        };
        let admitted = registry.is_none_or(|r| r.admit(service, &key));
        if out.len() < l.keys_max && admitted {
            out.insert(key, v);
        } else {
            overflow.insert(key, v);
        }
    }
    let mut value = Value::Object(out);
    cuts += limit_value(&mut value, 1, l);
    let Value::Object(mut out) = value else {
        unreachable!("an object stays an object")
    };
    if !overflow.is_empty() {
        // Kept whole (one JSON text, searchable as text but not by key), its values cut like
        // any other; the entry size limit bounds it.
        cuts += overflow.len() as u64;
        let mut rest = Value::Object(overflow);
        cuts += limit_value(&mut rest, 1, l);
        out.insert("_veil_overflow".into(), Value::String(rest.to_string()));
    }
    if cuts > 0 {
        out.insert("_veil_truncated".into(), Value::from(cuts));
    }
    out
}

/// A validated, masked entry ready to be routed.
#[derive(Debug)]
pub struct PreparedEntry {
    /// The masked entry.
    pub entry: StoredEntry,
    /// The personal data types found and masked.
    pub findings: Findings,
    /// True when the log_id comes from an idempotency key.
    pub keyed: bool,
    /// True when the entry came without a timestamp and took the receive time: a retry of it
    /// may arrive in another hour (another shard), so its key is looked up strongly.
    pub received_time: bool,
}

const SERVICE_LEN_MAX: usize = 256;

/// The distinct top-level field keys each service has been given, bounded per service so one
/// noisy service (a key per request id, say) cannot grow the index's key space without end:
/// past the bound, new keys of that service go to `_veil_overflow` (kept as text, not indexed
/// by key) and are counted in `_veil_truncated`. Held in memory: a restart forgets it, so a
/// service can add at most `max` new keys per node start.
#[derive(Debug)]
pub struct FieldKeys {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<String>>>,
}

impl FieldKeys {
    /// A registry allowing `max` distinct keys per service.
    pub fn new(max: usize) -> FieldKeys {
        FieldKeys {
            max,
            seen: Default::default(),
        }
    }

    /// True when `key` is (or can become) one of `service`'s indexed keys.
    pub fn admit(&self, service: &str, key: &str) -> bool {
        // A panic while inserting leaves a set that is still a valid set.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let keys = match seen.get_mut(service) {
            Some(k) => k,
            None => seen.entry(service.to_string()).or_default(),
        };
        if keys.contains(key) {
            return true;
        }
        if keys.len() >= self.max {
            return false;
        }
        keys.insert(key.to_string());
        true
    }
}

/// What the masking stage needs: the engine, and the keys and services for kept originals.
pub struct MaskingContext<'a> {
    /// The PII engine.
    pub masker: &'a Masker,
    /// The keys that seal originals.
    pub keys: &'a KeyRing,
    /// Services whose originals are kept (`*`: all).
    pub keep_originals_for: &'a [String],
    /// The per-service bound on distinct field keys (none: unbounded).
    pub field_keys: Option<&'a FieldKeys>,
    /// Where time spent masking is added up, in nanoseconds (none: not measured).
    pub mask_nanos: Option<&'a std::sync::atomic::AtomicU64>,
    /// Exceptions recently read from stack traces (none: every trace is read).
    pub traces: Option<&'a veil_node::parse::exception::TraceCache>,
}

impl MaskingContext<'_> {
    fn keeps(&self, service: &str) -> bool {
        self.keep_originals_for
            .iter()
            .any(|s| s == "*" || s == service)
    }
}

/// Turns one text entry (a line, or a folded multi-line entry) into the JSON object
/// [`prepare`] takes: the whole text as the message, and what parsing found beside it.
pub fn text_entry(
    text: &str,
    format: Format,
    defaults: &RequestDefaults,
    now_us: i64,
) -> Map<String, Value> {
    let p = veil_node::parse::parse_text(text, format, now_us);
    let mut m = Map::new();
    m.insert("message".into(), Value::String(text.to_string()));
    if let Some(ts) = p.timestamp_us {
        // Microseconds: 16 digits read as µs by `parse_timestamp`.
        m.insert("timestamp".into(), Value::from(ts));
    }
    if let Some(l) = p.level {
        m.insert("level".into(), Value::String(l.as_str().into()));
    }
    if let Some(h) = p.host {
        m.insert("host".into(), Value::String(h));
    }
    let mut fields = p.fields;
    if let Some(app) = p.app {
        if defaults.service.is_none() {
            m.insert("service".into(), Value::String(app.clone()));
        }
        fields.insert("app".into(), Value::String(app));
    }
    fields.insert("log_format".into(), Value::String(p.format.into()));
    m.insert("fields".into(), Value::Object(fields));
    m
}

/// Validates, masks and identifies one entry.
pub fn prepare(
    mut obj: Map<String, Value>,
    defaults: &RequestDefaults,
    limits: EntryLimits,
    masking: &MaskingContext<'_>,
    now_us: i64,
) -> Result<PreparedEntry, ApiError> {
    let masker = masking.masker;
    // The original as sent, for services that keep it sealed; it is encrypted below and never
    // leaves this function in the clear.
    let original = if masking.keep_originals_for.is_empty() {
        None
    } else {
        Some(Unmasked(Value::Object(obj.clone()).to_string()))
    };
    let timestamp_us = match take_any(&mut obj, &["timestamp", "@timestamp", "ts", "time"]) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match parse_timestamp(&Value::String(s.clone())) {
            Ok(t) => Some(t),
            // The forms logs write (`2015-10-18 18:01:47,978`, `Jun 14 15:16:01`, …).
            Err(e) => Some(veil_node::parse::time::parse_str(&s, now_us).ok_or(e)?),
        },
        Some(v) => Some(parse_timestamp(&v)?),
    };
    if let Some(ts) = timestamp_us {
        if ts > now_us.saturating_add(limits.future_us_max) {
            return Err(ApiError::bad_request(
                "timestamp_in_future",
                "timestamp is further in the future than allowed",
            )
            .with_field("timestamp"));
        }
        if let Some(past) = limits.past_us_max {
            if ts < now_us.saturating_sub(past) {
                return Err(ApiError::bad_request(
                    "timestamp_too_old",
                    "timestamp is further in the past than allowed",
                )
                .with_field("timestamp"));
            }
        }
    }
    let level_keys = [
        "level",
        "severity",
        "lvl",
        "level_name",
        "severity_text",
        "loglevel",
    ];
    let level = match take_any(&mut obj, &level_keys) {
        None | Some(Value::Null) => Level::Info,
        Some(Value::String(s)) => parse_level(&s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_level",
                "level is not DEBUG, INFO, WARN, ERROR, FATAL or a known synonym",
            )
            .with_field("level")
        })?,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(veil_node::parse::level_from_number)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_level",
                    "a numeric level is a syslog severity 0-7 or 10, 20, 30, 40, 50, 60",
                )
                .with_field("level")
            })?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_level",
                "level must be a string or a number",
            )
            .with_field("level"))
        }
    };
    let message = match take_any(&mut obj, &["message", "msg", "log", "body"]) {
        Some(Value::String(s)) => Unmasked(s),
        Some(Value::Null) | None => {
            return Err(ApiError::bad_request(
                "missing_message",
                "the entry has no message (keys: message, msg, log, body)",
            )
            .with_field("message"))
        }
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_message", "message must be a string")
                    .with_field("message"),
            )
        }
    };
    // OpenTelemetry-style records: `resource` names the service, `attributes` are fields.
    let resource_service = match obj.remove("resource") {
        Some(Value::Object(mut r)) => match r.remove("service.name") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        Some(other) => {
            obj.insert("resource".into(), other);
            None
        }
        None => None,
    };
    let service = match take_string(&mut obj, &["service", "service_name"], "service")?
        .or(resource_service)
    {
        Some(s) => s,
        None => defaults.service.clone().ok_or_else(|| {
            ApiError::bad_request(
                "missing_service",
                "no service: set service in the entry or the X-Service-Name header",
            )
            .with_field("service")
        })?,
    };
    if service.is_empty()
        || service.len() > SERVICE_LEN_MAX
        || service.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_service",
            "service must be 1 to 256 printable characters",
        )
        .with_field("service"));
    }
    let environment = take_string(&mut obj, &["environment"], "environment")?
        .or_else(|| defaults.environment.clone());
    let mut fields = match obj.remove("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_fields", "fields must be a JSON object")
                    .with_field("fields"),
            )
        }
    };
    if let Some(Value::Object(attributes)) = obj.remove("attributes") {
        for (k, v) in attributes {
            fields.entry(k).or_insert(v);
        }
    }
    let (mut exception_type, mut exception_message, stack_trace) =
        match take_any(&mut obj, &["exception", "error", "err"]) {
            None | Some(Value::Null) => (None, None, None),
            Some(Value::Object(mut e)) => (
                take_string(&mut e, &["type", "kind", "name", "class"], "exception.type")?,
                take_string(&mut e, &["message", "msg"], "exception.message")?.map(Unmasked),
                take_string(
                    &mut e,
                    &["stack_trace", "stack", "stacktrace", "backtrace"],
                    "exception.stack_trace",
                )?
                .map(Unmasked),
            ),
            // `"error": "connection refused"`: an exception message without a type.
            Some(Value::String(m)) => (None, Some(Unmasked(m)), None),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_exception",
                    "exception must be a JSON object",
                )
                .with_field("exception"))
            }
        };
    let (mut host, mut region) = (None, None);
    if let Some(meta) = obj.remove("metadata") {
        match meta {
            Value::Object(mut m) => {
                host = take_string(&mut m, &["host"], "metadata.host")?;
                region = take_string(&mut m, &["region"], "metadata.region")?;
                for (k, v) in m {
                    fields.entry(k).or_insert(v);
                }
            }
            Value::Null => {}
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_metadata",
                    "metadata must be a JSON object",
                )
                .with_field("metadata"))
            }
        }
    }
    host = host.or(take_string(&mut obj, &["host"], "host")?);
    region = region.or(take_string(&mut obj, &["region"], "region")?);
    // Keys Veil does not know are kept, not dropped: they join the free fields.
    for (k, v) in obj {
        fields.entry(k).or_insert(v);
    }
    let idempotency_key = match fields.remove("idempotency_key") {
        Some(Value::String(k)) => Some(k),
        Some(Value::Null) | None => defaults.idempotency_key.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "fields.idempotency_key must be a string",
            )
            .with_field("fields.idempotency_key"))
        }
    };

    let fields = shape_fields(fields, &limits.fields, &service, masking.field_keys);
    let mut findings = Findings::default();
    let masking_started = masking.mask_nanos.and_then(|_| MaskClock::start());
    let message = masker.mask(message, &mut findings);
    let exception_message_masked = exception_message
        .take()
        .map(|m| masker.mask(m, &mut findings));
    let stack_trace = stack_trace.map(|m| masker.mask(m, &mut findings));
    let host = host.map(|h| masker.mask(Unmasked(h), &mut findings));
    let Value::Object(mut fields) = masker.mask_json(Value::Object(fields), &mut findings) else {
        unreachable!("masking an object yields an object")
    };
    if let (Some(total), Some(started)) = (masking.mask_nanos, masking_started) {
        total.fetch_add(
            started.elapsed_scaled(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // Exceptions are read from masked text only, so no fingerprint is taken of personal data.
    let (exception_message, fingerprint) = {
        use veil_node::parse::exception;
        let detected = match &stack_trace {
            // A message without a marker adds nothing to what its trace holds (see
            // `has_marker`), and a trace is often one seen before.
            Some(st) if !exception::has_marker(&message) => match masking.traces {
                Some(cache) => cache.detect(st),
                None => exception::detect(st),
            },
            Some(st) => exception::detect(&format!("{message}\n{st}")),
            None => exception::detect(&message),
        };
        let mut exception_message = exception_message_masked;
        let info = match (exception_type.clone(), detected) {
            (Some(t), Some(mut d)) => {
                d.exception_type = t;
                Some(d)
            }
            (Some(t), None) => Some(exception::ExceptionInfo {
                language: "unknown",
                exception_type: t,
                message: exception_message.clone(),
                root_cause: None,
                frames: Vec::new(),
            }),
            (None, Some(d)) => {
                exception_type = Some(d.exception_type.clone());
                if exception_message.is_none() {
                    exception_message = d.message.clone();
                }
                Some(d)
            }
            (None, None) => None,
        };
        (exception_message, info.map(|i| exception::fingerprint(&i)))
    };
    if let Some(key) = &idempotency_key {
        // The key is an id, not personal data: it is kept as sent, so a retry finds it.
        fields.insert("idempotency_key".into(), Value::String(key.clone()));
    }

    let keyed = idempotency_key.is_some();
    if timestamp_us.is_none() {
        // The entry says its time is the receive time, not the event's.
        fields.insert(
            "timestamp_source".into(),
            Value::String("receive_time".into()),
        );
    }
    let received_time = timestamp_us.is_none();
    let ts = timestamp_us.unwrap_or(now_us);
    let log_id = match &idempotency_key {
        Some(key) => {
            let mut name = Vec::with_capacity(service.len() + 1 + key.len());
            name.extend_from_slice(service.as_bytes());
            name.push(0);
            name.extend_from_slice(key.as_bytes());
            Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name)
        }
        None => veil_shard::keys::mint_log_id(ts),
    };
    let sealed_original = match original {
        Some(o) if masking.keeps(&service) => Some(
            masking
                .keys
                .seal(o.0.as_bytes(), log_id.as_bytes())
                .map_err(|e| ApiError::internal("sealing the original", e))?,
        ),
        _ => None,
    };
    let entry = StoredEntry {
        log_id,
        timestamp_us: ts,
        received_at_us: now_us,
        service,
        level,
        message,
        // `to_string` would go through `Display` (a `fmt::Write` adapter per fragment);
        // serde_json's own writer renders the same compact text into a buffer directly.
        fields_json: serde_json::to_string(&fields).expect("a JSON map always serialises"),
        exception_type,
        exception_message,
        stack_trace,
        fingerprint,
        host,
        environment,
        region,
        sealed_original,
    };
    Ok(PreparedEntry {
        entry,
        findings,
        keyed,
        received_time,
    })
}

/// Measures masking in CPU time of the calling thread (a wall clock would count the time the
/// thread waits for a core as masking), on one entry in `MaskClock::EVERY` per thread: reading
/// the thread CPU clock is a system call (~0.77 µs on the development VM, part of every
/// sample), too dear for every entry. One in 64 was tried: the two calls' 0.8 % of node CPU
/// went, but the estimate rose from ~2.3 to 3.8–4.8 µs per entry against ~1.3 µs in a perf
/// profile, for reasons not found (BENCHMARKS.md, session 8); one in 8 stays.
struct MaskClock(u64);

impl MaskClock {
    const EVERY: u64 = 8;

    fn start() -> Option<MaskClock> {
        thread_local!(static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
        let n = SEEN.with(|s| {
            let n = s.get();
            s.set(n.wrapping_add(1));
            n
        });
        n.is_multiple_of(Self::EVERY)
            .then(|| MaskClock(thread_cpu_nanos()))
    }

    /// CPU nanoseconds since `start`, times `EVERY` (the estimate for all entries).
    fn elapsed_scaled(&self) -> u64 {
        thread_cpu_nanos().saturating_sub(self.0) * Self::EVERY
    }
}

fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

fn take_any(obj: &mut Map<String, Value>, keys: &[&str]) -> Option<Value> {
    keys.iter().find_map(|k| obj.remove(*k))
}

fn take_string(
    obj: &mut Map<String, Value>,
    keys: &[&str],
    field: &str,
) -> Result<Option<String>, ApiError> {
    match take_any(obj, keys) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(
            ApiError::bad_request("invalid_field", format!("{field} must be a string"))
                .with_field(field),
        ),
    }
}

/// Parses an RFC 3339 string or an epoch number (seconds, ms, µs or ns, told apart by size).
pub fn parse_timestamp(v: &Value) -> Result<i64, ApiError> {
    let err = || {
        ApiError::bad_request(
            "invalid_timestamp",
            "timestamp is neither RFC 3339 nor an epoch number",
        )
        .with_field("timestamp")
    };
    match v {
        Value::String(s) => {
            let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| err())?;
            i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| err())
        }
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(err)?;
            let abs = x.abs();
            let us = if abs < 1e11 {
                x * 1e6
            } else if abs < 1e14 {
                x * 1e3
            } else if abs < 1e17 {
                x
            } else {
                x / 1e3
            };
            if !us.is_finite() || us.abs() > 9.0e18 {
                return Err(err());
            }
            Ok(us as i64)
        }
        _ => Err(err()),
    }
}

/// Normalises a level name or synonym, case-insensitively (the list is
/// [`veil_node::parse::level_from_name`]'s).
pub fn parse_level(s: &str) -> Option<Level> {
    veil_node::parse::level_from_name(s)
}

/// Returns the current time in microseconds since the epoch.
pub fn now_us() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Formats microseconds since the epoch as RFC 3339 (UTC).
pub fn format_timestamp(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EntryLimits {
        EntryLimits {
            future_us_max: 3_600_000_000,
            past_us_max: None,
            fields: FieldLimits::default(),
        }
    }

    fn engine() -> &'static (Masker, KeyRing) {
        static E: std::sync::OnceLock<(Masker, KeyRing)> = std::sync::OnceLock::new();
        E.get_or_init(|| {
            let keys = KeyRing::throwaway().unwrap();
            let masker = Masker::new(Default::default(), &keys, &[]).unwrap();
            (masker, keys)
        })
    }

    fn masking() -> MaskingContext<'static> {
        let (masker, keys) = engine();
        MaskingContext {
            masker,
            keys,
            keep_originals_for: &[],
            field_keys: None,
            mask_nanos: None,
            traces: None,
        }
    }

    fn prep(v: Value) -> Result<PreparedEntry, ApiError> {
        let Value::Object(m) = v else {
            panic!("object")
        };
        prepare(
            m,
            &RequestDefaults::default(),
            limits(),
            &masking(),
            1_700_000_000_000_000,
        )
    }

    #[test]
    fn other_shippers_key_names_are_read() {
        let e = prep(serde_json::json!({
            "msg": "boom",
            "@timestamp": "2023-11-14 22:13:20,123",
            "severity": 50,
            "resource": {"service.name": "billing"},
            "attributes": {"http.status_code": 502, "userId": "u-1"},
            "error": {"kind": "TimeoutError", "message": "upstream timed out", "stack": "TimeoutError: upstream timed out\n    at call (/srv/app/client.js:10:3)"}
        }))
        .unwrap()
        .entry;
        assert_eq!(e.message, "boom");
        assert_eq!(e.timestamp_us, 1_700_000_000_123_000);
        assert_eq!(e.level, Level::Error);
        assert_eq!(e.service, "billing");
        assert_eq!(e.exception_type.as_deref(), Some("TimeoutError"));
        assert_eq!(e.exception_message.as_deref(), Some("upstream timed out"));
        assert!(e.fingerprint.is_some());
        let fields: Value = serde_json::from_str(&e.fields_json).unwrap();
        assert_eq!(fields["status"], 502);
        assert_eq!(fields["user_id"], "u-1");
        assert!(fields.get("timestamp_source").is_none());

        // An exception only in the message text is found there.
        let e = prep(serde_json::json!({"service": "s", "message": "Traceback (most recent call last):\n  File \"/app/x.py\", line 3, in f\nKeyError: 'sku'"}))
            .unwrap()
            .entry;
        assert_eq!(e.exception_type.as_deref(), Some("KeyError"));
        let fields: Value = serde_json::from_str(&e.fields_json).unwrap();
        assert_eq!(fields["timestamp_source"], "receive_time");
    }

    /// An entry's exception reads the same through the trace cache as without it, whether the
    /// header is in the trace (read alone, cached) or in the message (read with the trace).
    #[test]
    fn exceptions_read_the_same_through_the_trace_cache() {
        let cache = veil_node::parse::exception::TraceCache::new(4);
        let cached = MaskingContext {
            traces: Some(&cache),
            ..masking()
        };
        let frames =
            "\tat com.acme.Billing.charge(Billing.java:42)\n\tat com.acme.Api.handle(Api.java:7)";
        let bodies = [
            // The header in the trace: the trace alone is read.
            serde_json::json!({"service": "s", "message": "charge failed",
                "error": {"stack": format!("java.lang.IllegalStateException: no card\n{frames}")}}),
            // The header in the message, frames in the trace: read together.
            serde_json::json!({"service": "s", "message": "java.lang.IllegalStateException: no card",
                "error": {"stack": frames}}),
        ];
        for body in bodies {
            let Value::Object(m) = body.clone() else {
                unreachable!()
            };
            let read = |ctx: &MaskingContext<'_>| {
                let e = prepare(
                    m.clone(),
                    &RequestDefaults::default(),
                    limits(),
                    ctx,
                    1_700_000_000_000_000,
                )
                .unwrap()
                .entry;
                (e.exception_type, e.exception_message, e.fingerprint)
            };
            let plain = read(&masking());
            assert_eq!(
                plain.0.as_deref(),
                Some("java.lang.IllegalStateException"),
                "{body}"
            );
            assert!(plain.2.is_some(), "{body}");
            assert_eq!(read(&cached), plain, "first read: {body}");
            assert_eq!(read(&cached), plain, "from the cache: {body}");
        }
    }

    #[test]
    fn oversized_fields_are_reduced_marked_and_counted_not_dropped() {
        let mut deep = serde_json::json!("bottom");
        for _ in 0..12 {
            deep = serde_json::json!({"d": deep});
        }
        let mut many = serde_json::Map::new();
        for i in 0..300 {
            many.insert(format!("k{i:03}"), Value::from(i));
        }
        many.insert("deep".into(), deep);
        many.insert("long".into(), Value::String("x".repeat(20_000)));
        many.insert("k".repeat(200), Value::from(1));
        let e = prep(serde_json::json!({"service": "s", "message": "m", "fields": many}))
            .unwrap()
            .entry;
        let fields: Value = serde_json::from_str(&e.fields_json).unwrap();
        let f = fields.as_object().unwrap();
        let limits = FieldLimits::default();
        assert!(f.len() <= limits.keys_max + 3, "{}", f.len());
        let overflow: Value = serde_json::from_str(f["_veil_overflow"].as_str().unwrap()).unwrap();
        let kept = f
            .keys()
            .filter(|k| !k.starts_with("_veil") && *k != "timestamp_source")
            .count();
        assert_eq!(
            kept + overflow.as_object().unwrap().len(),
            303,
            "no key is lost"
        );
        assert!(f["_veil_truncated"].as_u64().unwrap() >= 3);
        let long = overflow["long"].as_str().unwrap();
        assert!(long.ends_with("…[truncated]") && long.len() < 17_000);
        // Nesting past the limit is kept as text, not dropped.
        let (mut deep, mut levels) = (&f["deep"], 1);
        while deep.is_object() {
            deep = &deep["d"];
            levels += 1;
        }
        assert!(levels < 12, "nesting was cut");
        assert!(deep.as_str().unwrap().contains("bottom"), "{deep}");
    }

    #[test]
    fn a_noisy_service_cannot_grow_its_keys_without_bound() {
        let registry = FieldKeys::new(3);
        let ctx = MaskingContext {
            field_keys: Some(&registry),
            ..masking()
        };
        let entry = |service: &str, key: &str| {
            let Value::Object(m) =
                serde_json::json!({"service": service, "message": "m", "fields": {key: 1, "a": 2}})
            else {
                unreachable!()
            };
            let e = prepare(
                m,
                &RequestDefaults::default(),
                limits(),
                &ctx,
                1_700_000_000_000_000,
            )
            .unwrap()
            .entry;
            serde_json::from_str::<Value>(&e.fields_json).unwrap()
        };
        assert_eq!(entry("noisy", "k1")["k1"], 1);
        assert_eq!(entry("noisy", "k2")["k2"], 1);
        // `a`, `k1`, `k2`: the bound is reached; `timestamp_source` is added after the check.
        let third = entry("noisy", "k3");
        assert!(third.get("k3").is_none(), "{third}");
        assert!(third["_veil_overflow"].as_str().unwrap().contains("k3"));
        assert_eq!(third["_veil_truncated"], 1);
        // Known keys still go through, and other services have their own bound.
        assert_eq!(entry("noisy", "k1")["k1"], 1);
        assert_eq!(entry("quiet", "k3")["k3"], 1);
    }

    #[test]
    fn originals_are_sealed_only_for_configured_services() {
        let keep = ["billing".to_string()];
        let ctx = MaskingContext {
            keep_originals_for: &keep,
            ..masking()
        };
        let entry = |service: &str| {
            let Value::Object(m) =
                serde_json::json!({"service": service, "message": "for ana@example.com"})
            else {
                unreachable!()
            };
            prepare(
                m,
                &RequestDefaults::default(),
                limits(),
                &ctx,
                1_700_000_000_000_000,
            )
            .unwrap()
            .entry
        };
        let billing = entry("billing");
        assert!(!billing.message.contains("ana@"), "{}", billing.message);
        let sealed = billing.sealed_original.expect("billing keeps originals");
        let original = engine().1.open(&sealed, billing.log_id.as_bytes()).unwrap();
        let original: Value = serde_json::from_slice(&original).unwrap();
        assert_eq!(original["message"], "for ana@example.com");
        assert_eq!(entry("search").sealed_original, None);
    }

    /// The shard keeps no idempotency row for minted log_ids and finds them by the millisecond
    /// they carry, so every minted id must carry its entry's own millisecond.
    #[test]
    fn minted_log_ids_carry_their_entrys_millisecond() {
        for ts in [
            "2023-11-14T10:00:00.000999Z",
            "2023-01-01T00:00:00.001Z",
            "1970-01-01T00:00:00.5Z",
            "2001-09-09T01:46:39.999999Z",
        ] {
            let p =
                prep(serde_json::json!({"service": "s", "message": "m", "timestamp": ts})).unwrap();
            assert!(
                veil_shard::keys::findable_by_time(p.entry.log_id, p.entry.timestamp_us),
                "{ts}"
            );
        }
        let keyed = prep(
            serde_json::json!({"service": "s", "message": "m", "fields": {"idempotency_key": "k"}}),
        )
        .unwrap();
        assert!(!veil_shard::keys::findable_by_time(
            keyed.entry.log_id,
            keyed.entry.timestamp_us
        ));
    }

    #[test]
    fn idempotency_key_gives_the_same_log_id_without_a_timestamp() {
        let a = prep(serde_json::json!({"service": "s", "message": "m", "fields": {"idempotency_key": "k1"}})).unwrap();
        let Value::Object(m) = serde_json::json!({"service": "s", "message": "m", "fields": {"idempotency_key": "k1"}})
        else {
            unreachable!()
        };
        let b = prepare(
            m,
            &RequestDefaults::default(),
            limits(),
            &masking(),
            1_700_000_900_000_000,
        )
        .unwrap();
        assert_eq!(a.entry.log_id, b.entry.log_id);
        assert_ne!(a.entry.log_id, prep(serde_json::json!({"service": "t", "message": "m", "fields": {"idempotency_key": "k1"}})).unwrap().entry.log_id);
    }

    #[test]
    fn bad_entries_get_their_codes() {
        let cases = [
            (serde_json::json!({"service": "s"}), "missing_message"),
            (
                serde_json::json!({"service": "s", "message": "m", "level": "loud"}),
                "invalid_level",
            ),
            (
                serde_json::json!({"service": "s", "message": "m", "timestamp": "yesterday"}),
                "invalid_timestamp",
            ),
            (
                serde_json::json!({"service": "s", "message": "m", "timestamp": "2099-01-01T00:00:00Z"}),
                "timestamp_in_future",
            ),
            (serde_json::json!({"message": "m"}), "missing_service"),
        ];
        for (input, code) in cases {
            assert_eq!(prep(input).unwrap_err().code, code);
        }
    }

    #[test]
    fn levels_and_timestamps_normalise() {
        let e = prep(serde_json::json!({"service": "s", "message": "m", "level": "Warning", "timestamp": "2023-11-14T22:13:20.5Z"})).unwrap();
        assert_eq!(e.entry.level, Level::Warn);
        assert_eq!(e.entry.timestamp_us, 1_700_000_000_500_000);
        assert_eq!(
            parse_timestamp(&serde_json::json!(1_700_000_000)).unwrap(),
            1_700_000_000_000_000
        );
        assert_eq!(
            parse_timestamp(&serde_json::json!(1_700_000_000_123i64)).unwrap(),
            1_700_000_000_123_000
        );
    }
}
