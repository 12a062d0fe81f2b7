//! Parsing the logs people send: one text line (or a folded multi-line entry) becomes the parts
//! of an entry: timestamp, level, host, service, fields and exception.
//!
//! The rule that keeps this safe: **the text is never cut**. A parsed text entry keeps its whole
//! text as its message; parsing only adds structure beside it. So no parser can lose a byte, and
//! the original is always the message (after masking).
//!
//! Formats, detected per entry unless forced: JSON objects (handled by the ingest path, with the
//! key names other shippers use), logfmt, syslog (RFC 5424 and RFC 3164), Common and Combined Log
//! Format, plain lines with a leading timestamp and level, and anything else as a plain message.

pub mod exception;
pub mod time;

use serde_json::{Map, Value};
use veil_shard::Level;

/// A format a client can force with the `format` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Detect per entry.
    Auto,
    /// `key=value` pairs.
    Logfmt,
    /// RFC 5424 or RFC 3164.
    Syslog,
    /// Common or Combined Log Format (Apache, nginx).
    Clf,
    /// A leading timestamp and level if present, else the whole line as the message.
    Plain,
}

impl Format {
    /// Parses `auto`, `logfmt`, `syslog`, `clf` (also `apache`, `nginx`), `plain`.
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Format::Auto,
            "logfmt" => Format::Logfmt,
            "syslog" => Format::Syslog,
            "clf" | "apache" | "nginx" | "combined" | "common" => Format::Clf,
            "plain" | "text" => Format::Plain,
            _ => return None,
        })
    }
}

/// What parsing found in one text entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// When it happened (µs since the epoch), if the text says.
    pub timestamp_us: Option<i64>,
    /// Its level, if the text says.
    pub level: Option<Level>,
    /// The host, if the format names one (syslog).
    pub host: Option<String>,
    /// The application or service, if the format names one (syslog's app name or tag).
    pub app: Option<String>,
    /// Fields found (`key=value` pairs, syslog structured data, request parts of an access log).
    pub fields: Map<String, Value>,
    /// The format that was read.
    pub format: &'static str,
}

/// Normalises a level name or synonym, case-insensitively:
/// - DEBUG: trace, debug, dbg, verbose, fine, finer, finest, config;
/// - INFO: info, information, informational, notice;
/// - WARN: warn, warning;
/// - ERROR: error, err, severe, failure, fail;
/// - FATAL: fatal, critical, crit, alert, emerg, emergency, panic.
///
/// Numbers: syslog severities 0–7 (0 emerg … 7 debug) and the 10–60 scale of bunyan and pino
/// (10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal).
pub fn level_from_name(s: &str) -> Option<Level> {
    let lower = s.trim().to_ascii_lowercase();
    Some(match lower.as_str() {
        "trace" | "debug" | "dbg" | "verbose" | "fine" | "finer" | "finest" | "config" => {
            Level::Debug
        }
        "info" | "information" | "informational" | "notice" => Level::Info,
        "warn" | "warning" => Level::Warn,
        "error" | "err" | "severe" | "failure" | "fail" => Level::Error,
        "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic" => Level::Fatal,
        n => return n.parse::<u64>().ok().and_then(level_from_number),
    })
}

/// A numeric level: syslog severity 0–7, or the bunyan/pino scale 10–60.
pub fn level_from_number(n: u64) -> Option<Level> {
    Some(match n {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        7 => Level::Debug,
        10 | 20 => Level::Debug,
        30 => Level::Info,
        40 => Level::Warn,
        50 => Level::Error,
        60 => Level::Fatal,
        _ => return None,
    })
}

/// Android's one-letter levels (logcat): V, D, I, W, E, F, A.
fn level_from_letter(s: &str) -> Option<Level> {
    Some(match s {
        "V" | "D" => Level::Debug,
        "I" => Level::Info,
        "W" => Level::Warn,
        "E" => Level::Error,
        "F" | "A" => Level::Fatal,
        _ => return None,
    })
}

/// Parses one text entry (a line, or a folded multi-line entry).
pub fn parse_text(text: &str, format: Format, receive_us: i64) -> Parsed {
    let first_line = text.lines().next().unwrap_or("");
    let attempt = match format {
        Format::Auto => syslog(first_line, receive_us)
            .or_else(|| clf(first_line, receive_us))
            .or_else(|| logfmt(first_line, receive_us))
            .unwrap_or_else(|| plain(first_line, receive_us)),
        Format::Syslog => {
            syslog(first_line, receive_us).unwrap_or_else(|| plain(first_line, receive_us))
        }
        Format::Clf => clf(first_line, receive_us).unwrap_or_else(|| plain(first_line, receive_us)),
        Format::Logfmt => {
            logfmt(first_line, receive_us).unwrap_or_else(|| plain(first_line, receive_us))
        }
        Format::Plain => plain(first_line, receive_us),
    };
    let mut parsed = attempt;
    if parsed.format != "logfmt" {
        // Well-known `key=value` pairs anywhere in a line (`user_id=42 status=500`).
        for (k, v) in pairs(first_line) {
            if WELL_KNOWN.contains(&k.as_str()) {
                parsed.fields.entry(k).or_insert(v);
            }
        }
    }
    parsed
}

/// Field names recognised wherever they appear, after normalisation.
pub const WELL_KNOWN: &[&str] = &[
    "user_id",
    "request_id",
    "trace_id",
    "span_id",
    "status",
    "http_status",
    "method",
    "path",
    "duration",
    "duration_ms",
];

/// Normalises a field key: lower case, `.` `-` and spaces as `_`, camelCase split
/// (`traceId` → `trace_id`), common aliases folded (`userId`, `uid` → `user_id`;
/// `requestId`, `req_id` → `request_id`; `status_code` → `status`; `http_method` → `method`;
/// `elapsed_ms`, `took_ms` → `duration_ms`).
pub fn normalise_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if matches!(c, '.' | '-' | ' ') {
            out.push('_');
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    match out.as_str() {
        "userid" | "uid" | "user" => "user_id".into(),
        "requestid" | "req_id" | "x_request_id" => "request_id".into(),
        "traceid" | "trace" => "trace_id".into(),
        "spanid" => "span_id".into(),
        "status_code" | "http_status_code" | "statuscode" | "response_status" => "status".into(),
        "http_method" | "request_method" | "verb" => "method".into(),
        "url_path" | "http_path" | "request_path" | "uri" => "path".into(),
        "elapsed_ms" | "took_ms" | "latency_ms" | "response_time_ms" => "duration_ms".into(),
        _ => out,
    }
}

fn value_of(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() && s.contains('.') {
            return Value::from(f);
        }
    }
    Value::String(s.to_string())
}

/// `key=value` and `key="quoted value"` pairs of a line, keys normalised.
fn pairs(line: &str) -> Vec<(String, Value)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // A key starts a token.
        if i > 0 && !b[i - 1].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-')) {
            i += 1;
        }
        if i == start || i >= b.len() || b[i] != b'=' || !b[start].is_ascii_alphabetic() {
            i = i.max(start + 1);
            continue;
        }
        let key = &line[start..i];
        i += 1;
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let vstart = i;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            let v = line.get(vstart..i.min(b.len())).unwrap_or("");
            i += 1;
            Value::String(v.replace("\\\"", "\""))
        } else {
            let vstart = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            value_of(line.get(vstart..i).unwrap_or(""))
        };
        out.push((normalise_key(key), value));
    }
    out
}

/// logfmt: at least two `key=value` pairs, and a `msg`, `level` or `time` among them.
fn logfmt(line: &str, receive_us: i64) -> Option<Parsed> {
    let found = pairs(line);
    if found.len() < 2 {
        return None;
    }
    let mut p = Parsed {
        format: "logfmt",
        ..Parsed::default()
    };
    let mut signal = false;
    for (k, v) in found {
        match k.as_str() {
            "level" | "lvl" | "severity" | "level_name" if p.level.is_none() => {
                p.level = match &v {
                    Value::String(s) => level_from_name(s),
                    Value::Number(n) => n.as_u64().and_then(level_from_number),
                    _ => None,
                };
                signal |= p.level.is_some();
                if p.level.is_none() {
                    p.fields.insert(k, v);
                }
            }
            "time" | "ts" | "timestamp" | "t" if p.timestamp_us.is_none() => {
                p.timestamp_us = match &v {
                    Value::String(s) => time::parse_str(s, receive_us),
                    Value::Number(_) => time::parse_str(&v.to_string(), receive_us),
                    _ => None,
                };
                signal |= p.timestamp_us.is_some();
                if p.timestamp_us.is_none() {
                    p.fields.insert(k, v);
                }
            }
            "msg" | "message" => signal = true,
            "host" | "hostname" => p.host = v.as_str().map(String::from),
            "service" | "app" => p.app = v.as_str().map(String::from),
            _ => {
                p.fields.insert(k, v);
            }
        }
    }
    signal.then_some(p)
}

/// RFC 5424 (`<165>1 2003-10-11T22:14:15.003Z host app procid msgid [sd] msg`) and RFC 3164
/// (`<34>Oct 11 22:14:15 host tag[pid]: msg`, also without the `<PRI>`).
fn syslog(line: &str, receive_us: i64) -> Option<Parsed> {
    let (pri, rest) = match line.strip_prefix('<') {
        Some(r) => {
            let end = r.find('>')?;
            let pri: u64 = r[..end].parse().ok()?;
            (Some(pri), &r[end + 1..])
        }
        None => (None, line),
    };
    let mut p = Parsed {
        level: pri.and_then(|v| level_from_number(v % 8)),
        ..Parsed::default()
    };
    if let Some(pri) = pri {
        p.fields
            .insert("syslog_facility".into(), Value::from(pri / 8));
    }
    if let Some(r5424) = rest.strip_prefix("1 ") {
        let mut parts = r5424.splitn(6, ' ');
        let ts = parts.next()?;
        p.timestamp_us = if ts == "-" {
            None
        } else {
            time::parse_str(ts, receive_us)
        };
        let nil = |s: &str| (s != "-").then(|| s.to_string());
        p.host = parts.next().and_then(nil);
        p.app = parts.next().and_then(nil);
        if let Some(procid) = parts.next().and_then(nil) {
            p.fields.insert("procid".into(), value_of(&procid));
        }
        if let Some(msgid) = parts.next().and_then(nil) {
            p.fields.insert("msgid".into(), Value::String(msgid));
        }
        if let Some(rest) = parts.next() {
            structured_data(rest, &mut p.fields);
        }
        p.format = "syslog_rfc5424";
        return Some(p);
    }
    let ts = time::at_start(rest, receive_us)?;
    if ts.shape != time::Shape::NoYear && pri.is_none() {
        return None;
    }
    p.timestamp_us = Some(ts.us);
    let after = rest[ts.len..].trim_start();
    let mut words = after.splitn(2, ' ');
    let host = words.next()?;
    let tail = words.next().unwrap_or("");
    // `tag[pid]:` or `tag:` must follow the host for this to be syslog.
    let colon = tail.find(": ")?;
    let tag = &tail[..colon];
    if tag.is_empty() || tag.contains(' ') {
        return None;
    }
    p.host = Some(host.to_string());
    let (app, pid) = match tag.split_once('[') {
        Some((a, pid)) => (a, pid.strip_suffix(']')),
        None => (tag, None),
    };
    p.app = Some(app.to_string());
    if let Some(pid) = pid {
        p.fields.insert("pid".into(), value_of(pid));
    }
    if p.level.is_none() {
        p.level = level_in_tokens(tail[colon + 2..].split_whitespace().take(2), false);
    }
    p.format = "syslog_rfc3164";
    Some(p)
}

/// RFC 5424 structured data: `[id key="value" …][…]`, into `sd_<id>_<key>` fields.
fn structured_data(s: &str, fields: &mut Map<String, Value>) {
    let mut rest = s;
    while let Some(r) = rest.strip_prefix('[') {
        let Some(end) = r.find(']') else { return };
        let element = &r[..end];
        let mut it = element.splitn(2, ' ');
        let id = normalise_key(it.next().unwrap_or(""));
        for (k, v) in pairs(it.next().unwrap_or("")) {
            fields.insert(format!("sd_{id}_{k}"), v);
        }
        rest = &r[end + 1..];
    }
}

/// Common / Combined Log Format:
/// `host ident user [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 2326 "referer" "agent"`.
fn clf(line: &str, receive_us: i64) -> Option<Parsed> {
    let open = line.find(" [")?;
    let head: Vec<&str> = line[..open].split(' ').collect();
    if head.len() != 3 {
        return None;
    }
    let ts = time::at_start(&line[open + 1..], receive_us)?;
    let rest = line[open + 1 + ts.len..].strip_prefix(" \"")?;
    let req_end = rest.find('"')?;
    let request = &rest[..req_end];
    let mut after = rest[req_end + 1..].split_whitespace();
    let status: u64 = after.next()?.parse().ok()?;
    let size = after.next()?;
    let mut p = Parsed {
        timestamp_us: Some(ts.us),
        format: "clf",
        ..Parsed::default()
    };
    p.fields
        .insert("client".into(), Value::String(head[0].into()));
    if head[2] != "-" {
        p.fields
            .insert("user_id".into(), Value::String(head[2].into()));
    }
    let mut req = request.split(' ');
    if let (Some(m), Some(path)) = (req.next(), req.next()) {
        p.fields.insert("method".into(), Value::String(m.into()));
        p.fields.insert("path".into(), Value::String(path.into()));
        if let Some(proto) = req.next() {
            p.fields
                .insert("protocol".into(), Value::String(proto.into()));
        }
    }
    p.fields.insert("status".into(), Value::from(status));
    if let Ok(n) = size.parse::<u64>() {
        p.fields.insert("bytes".into(), Value::from(n));
    }
    let quoted: Vec<&str> = rest[req_end + 1..].split('"').collect();
    if quoted.len() >= 4 {
        p.fields
            .insert("referer".into(), Value::String(quoted[1].into()));
        p.fields
            .insert("user_agent".into(), Value::String(quoted[3].into()));
    }
    p.level = Some(match status {
        500.. => Level::Error,
        400..=499 => Level::Warn,
        _ => Level::Info,
    });
    Some(p)
}

/// A level among the first tokens: a synonym that is upper case, capitalised, bracketed or
/// first; or, when `letters`, an Android one-letter level.
fn level_in_tokens<'a>(tokens: impl Iterator<Item = &'a str>, letters: bool) -> Option<Level> {
    for (i, raw) in tokens.enumerate() {
        let bracketed = raw.starts_with(['[', '<', '(']);
        let word = raw.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        if word.is_empty() {
            continue;
        }
        if letters && word.len() == 1 {
            if let Some(l) = level_from_letter(word) {
                return Some(l);
            }
            continue;
        }
        if word.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let shaped = word.bytes().all(|b| !b.is_ascii_lowercase())
            || word[1..].bytes().all(|b| b.is_ascii_lowercase())
                && word.as_bytes()[0].is_ascii_uppercase()
            || bracketed
            || i == 0;
        if shaped {
            if let Some(l) = level_from_name(word) {
                return Some(l);
            }
        }
    }
    None
}

/// A plain line: a timestamp at its start (or after one leading token, as in
/// `nova-api.log 2017-05-16 00:00:01.551 …` or BGL's `- 1117838570 …`), then a level among the
/// next few tokens.
fn plain(line: &str, receive_us: i64) -> Parsed {
    let mut p = Parsed {
        format: "plain",
        ..Parsed::default()
    };
    let trimmed = line.trim_start();
    let mut found = time::at_start(trimmed, receive_us).map(|t| (0, t));
    if found.is_none() {
        if let Some(space) = trimmed.find(' ') {
            let next = trimmed[space..].trim_start();
            let skip = trimmed.len() - next.len();
            found = time::at_start(next, receive_us).map(|t| (skip, t));
        }
    }
    let rest = match found {
        Some((skip, t)) => {
            p.timestamp_us = Some(t.us);
            &trimmed[skip + t.len..]
        }
        None => trimmed,
    };
    let android = found.is_some_and(|(_, t)| t.shape == time::Shape::NoYear);
    let window = if found.is_some() { 8 } else { 2 };
    p.level = level_in_tokens(
        rest.split(|c: char| c.is_whitespace() || c == '|' || c == ',')
            .filter(|t| !t.is_empty())
            .take(window),
        android,
    );
    p
}

/// The non-blank lines of a body, each without its line ending (`\n`, `\r\n`, and any `\r`
/// left at the end of a line): what [`split_entries`] folds, and what its entries give back
/// when split at `\n`.
pub fn text_lines(body: &str) -> Vec<&str> {
    body.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Splits a text body into entries: one per line, with continuation lines (indented lines,
/// `Caused by:`, `... 12 more`, and the rest of a Python traceback, Go panic or Rust panic)
/// folded into the entry they continue. The first trace right under a line that starts with a
/// timestamp (a JVM or .NET exception, a Python traceback, a Go or Rust panic, a Node error
/// with its frames) is that line's and folds into it. A line that starts with a timestamp
/// always starts an entry. `max_lines` bounds one entry; past it a new entry starts.
pub fn split_entries(body: &str, receive_us: i64, max_lines: usize) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut lines_in_current = 0;
    let mut trace: Option<exception::Trace> = None;
    let mut current_has_time = false;
    let mut current_has_trace = false;
    let lines = text_lines(body);
    for (i, &line) in lines.iter().enumerate() {
        let starts_with_time = time::at_start(line, receive_us).is_some();
        let next = lines.get(i + 1).copied();
        // `java.lang.IllegalStateException: …` right under a timestamped line, with frames
        // below it, is that line's exception (how logback and log4j print one).
        let attached_exception = current_has_time
            && exception::is_header(line)
            && next
                .is_some_and(|n| n.trim_start().starts_with("at ") && n.starts_with([' ', '\t']));
        // So is the first trace of another runtime under it (issue 25): the traceback Python's
        // `logging.exception()` writes after the message, a Go or Rust panic after the last
        // log line, a Node error printed with its frames after a message.
        let attached_trace =
            current_has_time && !current_has_trace && exception::opens_trace(line, next);
        let continues = match trace {
            Some(t) => t.continues(line),
            None => false,
        };
        let continuation = !entries.is_empty()
            && lines_in_current < max_lines
            && !starts_with_time
            && (continues
                || attached_exception
                || attached_trace
                || line.starts_with([' ', '\t'])
                || line.starts_with("Caused by:")
                || line.starts_with("Suppressed:")
                || line.starts_with("..."));
        match entries.last_mut() {
            Some(last) if continuation => {
                last.push('\n');
                last.push_str(line);
                lines_in_current += 1;
                current_has_trace |= attached_trace || attached_exception;
            }
            _ => {
                entries.push(line.to_string());
                lines_in_current = 1;
                trace = None;
                current_has_time = starts_with_time;
                current_has_trace = false;
            }
        }
        trace = match trace {
            Some(t) => t.after(line),
            None => exception::Trace::starting(line),
        };
    }
    entries
}

#[cfg(test)]
mod tests;
