//! The ingest pipeline: validate → mask → assign a log_id → route. Only this module holds
//! unmasked text (in [`Unmasked`]); what leaves it is a masked `StoredEntry`, with the original
//! sealed when its service keeps originals.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;
use veil_shard::{Level, StoredEntry};

use crate::error::ApiError;
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
}

const SERVICE_LEN_MAX: usize = 256;

/// What the masking stage needs: the engine, and the keys and services for kept originals.
pub struct MaskingContext<'a> {
    /// The PII engine.
    pub masker: &'a Masker,
    /// The keys that seal originals.
    pub keys: &'a KeyRing,
    /// Services whose originals are kept (`*`: all).
    pub keep_originals_for: &'a [String],
}

impl MaskingContext<'_> {
    fn keeps(&self, service: &str) -> bool {
        self.keep_originals_for
            .iter()
            .any(|s| s == "*" || s == service)
    }
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
    let timestamp_us = match take_any(&mut obj, &["timestamp", "@timestamp"]) {
        None | Some(Value::Null) => None,
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
    let level = match take_any(&mut obj, &["level"]) {
        None | Some(Value::Null) => Level::Info,
        Some(Value::String(s)) => parse_level(&s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_level",
                "level is not DEBUG, INFO, WARN, ERROR, FATAL or a known synonym",
            )
            .with_field("level")
        })?,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_level", "level must be a string")
                    .with_field("level"),
            )
        }
    };
    let message = match take_any(&mut obj, &["message", "msg"]) {
        Some(Value::String(s)) => Unmasked(s),
        Some(Value::Null) | None => {
            return Err(ApiError::bad_request(
                "missing_message",
                "the entry has no message (keys: message, msg)",
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
    let service = match take_string(&mut obj, &["service", "service_name"], "service")? {
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
    let (exception_type, exception_message, stack_trace) = match obj.remove("exception") {
        None | Some(Value::Null) => (None, None, None),
        Some(Value::Object(mut e)) => (
            take_string(&mut e, &["type"], "exception.type")?,
            take_string(&mut e, &["message"], "exception.message")?.map(Unmasked),
            take_string(&mut e, &["stack_trace"], "exception.stack_trace")?.map(Unmasked),
        ),
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

    let mut findings = Findings::default();
    let message = masker.mask(message, &mut findings);
    let exception_message = exception_message.map(|m| masker.mask(m, &mut findings));
    let stack_trace = stack_trace.map(|m| masker.mask(m, &mut findings));
    let host = host.map(|h| masker.mask(Unmasked(h), &mut findings));
    let Value::Object(mut fields) = masker.mask_json(Value::Object(fields), &mut findings) else {
        unreachable!("masking an object yields an object")
    };
    if let Some(key) = &idempotency_key {
        // The key is an id, not personal data: it is kept as sent, so a retry finds it.
        fields.insert("idempotency_key".into(), Value::String(key.clone()));
    }

    let keyed = idempotency_key.is_some();
    let ts = timestamp_us.unwrap_or(now_us);
    let log_id = match &idempotency_key {
        Some(key) => {
            let mut name = Vec::with_capacity(service.len() + 1 + key.len());
            name.extend_from_slice(service.as_bytes());
            name.push(0);
            name.extend_from_slice(key.as_bytes());
            Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name)
        }
        None => uuid_v7_at(ts),
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
        fields_json: Value::Object(fields).to_string(),
        exception_type,
        exception_message,
        stack_trace,
        host,
        environment,
        region,
        sealed_original,
    };
    Ok(PreparedEntry {
        entry,
        findings,
        keyed,
    })
}

fn uuid_v7_at(ts_us: i64) -> Uuid {
    let secs = ts_us.div_euclid(1_000_000).max(0) as u64;
    let nanos = (ts_us.rem_euclid(1_000_000) * 1000) as u32;
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos))
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

/// Normalises a level name or synonym, case-insensitively. The list: trace, debug → DEBUG;
/// info, information, informational, notice → INFO; warn, warning → WARN; error, err → ERROR;
/// fatal, critical, crit, alert, emerg, emergency, panic → FATAL.
pub fn parse_level(s: &str) -> Option<Level> {
    let lower = s.trim().to_ascii_lowercase();
    Some(match lower.as_str() {
        "trace" | "debug" | "dbg" => Level::Debug,
        "info" | "information" | "informational" | "notice" => Level::Info,
        "warn" | "warning" => Level::Warn,
        "error" | "err" => Level::Error,
        "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic" => Level::Fatal,
        _ => return None,
    })
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
