//! The clients: keyed ingest to every node with retries (a batch is resent whole, to another
//! node, until every entry in it is acknowledged, as a shipper does), reads of one client's
//! entries with and without `"consistency": "strong"`, and top-K exception questions. Every
//! attempt is recorded in the [`History`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::history::{EntryOutcome, History, Op, OpKind, Outcome, Sent};
use crate::Rng;

/// The services entries are spread over (a shard is chosen by service and hour, so one service
/// would put every entry of an hour on one shard).
pub const SERVICES: usize = 5;

/// Entries per batch.
const BATCH: usize = 5;

/// How long one request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client keeps resending one batch.
const BATCH_DEADLINE: Duration = Duration::from_secs(40);

/// The time range every read covers: wide enough for entries stamped by a node whose clock
/// was shifted by hours.
pub fn read_range() -> Value {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    json!({"start": fmt(now - time::Duration::days(2)), "end": fmt(now + time::Duration::days(2))})
}

/// An HTTP client with the workload's bounds.
pub fn http_client() -> reqwest::blocking::Client {
    http_client_with_timeout(REQUEST_TIMEOUT)
}

/// An HTTP client whose requests wait at most `timeout`.
pub fn http_client_with_timeout(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client")
}

/// One client's loop, until `stop`.
pub struct Client {
    /// Its number.
    pub id: usize,
    /// Every node's HTTP address.
    pub nodes: Vec<String>,
    /// The history.
    pub history: Arc<History>,
    /// Set when the run's fault phase is over.
    pub stop: Arc<AtomicBool>,
    /// Its own random choices.
    pub rng: Rng,
    /// Breaks the workload on purpose: entries go without their idempotency key, so the
    /// resends are stored again, as by a build that skipped the idempotency check.
    pub unkeyed: bool,
}

/// A POST's answer: status and JSON body, or why there was none.
fn post(
    http: &reqwest::blocking::Client,
    node: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    let resp = http
        .post(format!("http://{node}{path}"))
        .json(body)
        .send()
        .map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().unwrap_or(Value::Null);
    Ok((status, body))
}

impl Client {
    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        let http = http_client();
        let mut seq = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            match self.rng.below(10) {
                0..=6 => {
                    self.ingest_batch(&http, seq);
                    seq += 1;
                }
                7 | 8 => {
                    let strong = self.rng.below(2) == 0;
                    let whose = self.id;
                    let node = self.rng.below(self.nodes.len() as u64) as usize;
                    read_client(
                        &http,
                        &self.history,
                        self.id,
                        node,
                        &self.nodes[node],
                        whose,
                        strong,
                    );
                }
                _ => self.top_k(&http),
            }
        }
    }

    fn entry(&mut self, seq: usize, j: usize) -> (Value, Sent) {
        let key = format!("c{}-{seq}-{j}", self.id);
        let tag = self.rng.next_u64() & 0xffff_ffff_ffff;
        let pii = format!("piic{tag:012x}@chaos.example");
        let plain = format!("nonc{tag:012x}");
        let exception = (self.rng.below(3) == 0).then(|| format!("ChaosE{}", self.rng.below(4)));
        let mut value = json!({
            "service": format!("svc-{}", self.rng.below(SERVICES as u64)),
            "level": if exception.is_some() { "ERROR" } else { "INFO" },
            "message": format!("chaos entry {key} marker {plain} for {pii}"),
            "fields": {"idempotency_key": key, "k": key, "c": format!("c{}", self.id)},
        });
        if self.unkeyed {
            if let Some(fields) = value["fields"].as_object_mut() {
                fields.remove("idempotency_key");
            }
        }
        if let Some(t) = &exception {
            value["exception"] = json!({"type": t, "message": "chaos"});
        }
        // Half carry their time; the rest are timed (and routed) by the hour they arrive in,
        // on whichever node's clock, so a retry elsewhere must still find the first copy.
        if self.rng.below(2) == 0 {
            value["timestamp"] = json!(time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default());
        }
        let sent = Sent {
            key,
            client: self.id,
            pii,
            plain,
            exception,
        };
        (value, sent)
    }

    fn ingest_batch(&mut self, http: &reqwest::blocking::Client, seq: usize) {
        let mut body = Vec::with_capacity(BATCH);
        let mut entries = Vec::with_capacity(BATCH);
        for j in 0..BATCH {
            let (value, sent) = self.entry(seq, j);
            body.push(value);
            entries.push(self.history.send(sent));
        }
        let body = Value::Array(body);
        let begun = self.history.now();
        let mut acked = [false; BATCH];
        let mut backoff = Duration::from_millis(50);
        // One batch in five is sent once more after it is acknowledged, as by a client whose
        // answer was lost: with its keys, nothing is stored twice.
        let mut resend = self.rng.below(5) == 0;
        loop {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let invoked = self.history.now();
            let answer = post(http, &self.nodes[node], "/api/v1/logs", &body);
            let completed = self.history.now();
            let (outcome, status, outcomes) = match answer {
                Ok((200, a)) => {
                    let outcomes: Vec<EntryOutcome> = (0..BATCH)
                        .map(|i| entry_outcome(&a["results"][i]))
                        .collect();
                    let all = outcomes.iter().all(|o| *o == EntryOutcome::Acked);
                    let outcome = if all { Outcome::Ok } else { Outcome::Unknown };
                    (outcome, Some(200), outcomes)
                }
                Ok((status, a)) => {
                    let why = format!("{status} {}", a["error"]["code"].as_str().unwrap_or(""));
                    // 507, 503, 429, 5xx: retry. Another 4xx is the request's own fault.
                    let definite = (400..500).contains(&status) && status != 429;
                    let o = if definite {
                        EntryOutcome::Refused(why)
                    } else {
                        EntryOutcome::Unknown(why)
                    };
                    let outcome = if definite {
                        Outcome::Fail
                    } else {
                        Outcome::Unknown
                    };
                    (outcome, Some(status), vec![o; BATCH])
                }
                Err(e) => (
                    Outcome::Unknown,
                    None,
                    vec![EntryOutcome::Unknown(e); BATCH],
                ),
            };
            for (a, o) in acked.iter_mut().zip(&outcomes) {
                *a |= *o == EntryOutcome::Acked;
            }
            self.history.record(Op {
                client: self.id,
                node,
                invoked,
                completed,
                outcome,
                status,
                kind: OpKind::Ingest {
                    entries: entries.clone(),
                    outcomes,
                },
            });
            if acked.iter().all(|a| *a) {
                if !resend {
                    return;
                }
                resend = false;
                continue;
            }
            let past = self.history.now() - begun > BATCH_DEADLINE.as_secs_f64();
            if past || (self.stop.load(Ordering::Relaxed) && outcome == Outcome::Fail) {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(1000));
        }
    }

    fn top_k(&mut self, http: &reqwest::blocking::Client) {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let strong = self.rng.below(2) == 0;
        let invoked = self.history.now();
        let answer = top_k(http, &self.nodes[node], strong);
        let completed = self.history.now();
        let (outcome, status) = match answer {
            Ok((200, _)) => (Outcome::Ok, Some(200)),
            Ok((s, _)) => (Outcome::Unknown, Some(s)),
            Err(_) => (Outcome::Unknown, None),
        };
        self.history.record(Op {
            client: self.id,
            node,
            invoked,
            completed,
            outcome,
            status,
            kind: OpKind::TopK { strong },
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An entry's outcome from its item of a batch answer.
fn entry_outcome(item: &Value) -> EntryOutcome {
    match item["status"].as_str() {
        Some("accepted" | "duplicate") => EntryOutcome::Acked,
        Some("rejected") => {
            let code = item["error"]["code"].as_str().unwrap_or("").to_string();
            // A validation refusal is final; a shard that could not store in time is not.
            if code.starts_with("invalid_") {
                EntryOutcome::Refused(code)
            } else {
                EntryOutcome::Unknown(code)
            }
        }
        _ => EntryOutcome::Unknown(format!("unreadable item {item}")),
    }
}

/// The top-K question over the whole read range.
pub fn top_k(
    http: &reqwest::blocking::Client,
    node: &str,
    strong: bool,
) -> Result<(u16, Value), String> {
    let range = read_range();
    let services: Vec<String> = (0..SERVICES).map(|s| format!("svc-{s}")).collect();
    let resp = http
        .get(format!("http://{node}/api/v1/exceptions/top-k"))
        .query(&[
            ("k", "100"),
            ("start", range["start"].as_str().unwrap_or("")),
            ("end", range["end"].as_str().unwrap_or("")),
            ("service", &services.join(",")),
            ("consistency", if strong { "strong" } else { "any" }),
        ])
        .send()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().unwrap_or(Value::Null)))
}

/// Every entry a query returns, paging with `search_after`: each entry's `k` field, or an error.
pub fn read_all(
    http: &reqwest::blocking::Client,
    node: &str,
    filter_client: Option<usize>,
    strong: bool,
) -> Result<Vec<Value>, String> {
    let mut logs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut filters = json!({"timestamp_range": read_range()});
        if let Some(c) = filter_client {
            filters["fields"] = json!({"c": format!("c{c}")});
        }
        let mut body = json!({
            "filters": filters, "limit": 1000,
            "consistency": if strong { "strong" } else { "any" },
            "sort": {"field": "timestamp", "order": "asc"},
        });
        if let Some(a) = &after {
            body["search_after"] = json!(a);
        }
        let (status, answer) = post(http, node, "/api/v1/logs/query", &body)?;
        if status != 200 {
            return Err(format!("{status}: {answer}"));
        }
        if answer["partial"] == true {
            return Err(format!("partial answer: {}", answer["shards"]));
        }
        let page = answer["logs"].as_array().cloned().unwrap_or_default();
        let n = page.len();
        logs.extend(page);
        after = answer["search_after"].as_str().map(String::from);
        if n < 1000 || after.is_none() {
            return Ok(logs);
        }
    }
}

/// A read of `whose` entries through `node`, recorded.
pub fn read_client(
    http: &reqwest::blocking::Client,
    history: &History,
    client: usize,
    node: usize,
    addr: &str,
    whose: usize,
    strong: bool,
) {
    let invoked = history.now();
    let answer = read_all(http, addr, Some(whose), strong);
    let completed = history.now();
    let (outcome, keys) = match answer {
        Ok(logs) => (
            Outcome::Ok,
            logs.iter()
                .map(|l| l["fields"]["k"].as_str().unwrap_or("").to_string())
                .collect(),
        ),
        Err(_) => (Outcome::Unknown, Vec::new()),
    };
    history.record(Op {
        client,
        node,
        invoked,
        completed,
        outcome,
        status: None,
        kind: OpKind::Read {
            client: whose,
            strong,
            keys,
        },
    });
}
