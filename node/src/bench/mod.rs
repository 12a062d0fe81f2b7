//! `veil bench`: load a running node and report what was measured.
//!
//! `veil bench ingest` posts NDJSON batches over HTTP as fast as it can or at a fixed rate,
//! with realistic entries (templates with personal data, exceptions and stack traces, or lines
//! replayed from a file), Zipf-skewed over services, and reports entries/s, MB/s, acknowledged
//! and failed, and acknowledgement latency percentiles from an HDR histogram. At the end it
//! checks that the node holds exactly the entries it acknowledged (the run's services are
//! unique to the run). `veil bench query` runs a mix of queries and top-K requests and reports
//! latency per kind. Failed requests count as failures; nothing is reported that was not
//! measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use veil_node::pii::corpus::Rng;

mod send;

/// `veil bench …` commands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Ingests generated entries into a running node and reports throughput and latency.
    Ingest(IngestArgs),
    /// Runs queries and top-K requests against a running node and reports latency per kind.
    Query(QueryArgs),
    /// The limit Veil's ingest can approach: the same generated entries, masked as the node
    /// masks them, indexed into the node's tantivy schema in this process (no HTTP, Raft,
    /// RocksDB or masking in the timed part).
    Index(IndexArgs),
}

/// Flags of `veil bench index`.
#[derive(clap::Args)]
pub struct IndexArgs {
    /// How many entries to index.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Indexing threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Number of services, Zipf-skewed.
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Indexing memory in all, in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    heap_bytes: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Flags of `veil bench ingest`.
#[derive(clap::Args)]
pub struct IngestArgs {
    /// The node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    target: String,
    /// How long to run (`10s`, `1m`).
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Entries per second across all workers; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Entries per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Number of services, Zipf-skewed.
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Replay the lines of this file as messages (e.g. a LogHub log) instead of templates.
    #[arg(long)]
    replay: Option<std::path::PathBuf>,
    /// Give every entry an idempotency key.
    #[arg(long)]
    idempotency_keys: bool,
    /// The batch answer asked for (`?answer=`): `full` lists every entry's result, `summary`
    /// only the rejected ones, as a log shipper that needs no log_ids would ask.
    #[arg(long, default_value = "full", value_parser = ["full", "summary"])]
    answer: String,
    /// Give every entry an exception of one of this many types (Zipf-skewed; with S services
    /// that makes up to S × N distinct exceptions), with levels ERROR/WARN/FATAL, two
    /// environments and two regions; 0 keeps the templates' own ERROR exceptions.
    #[arg(long, default_value_t = 0)]
    exceptions: usize,
    /// Name the run's services `bench-<name>-svc-<i>` (default: a random name), so a second
    /// run can add to the same services; the check then counts what the run added (with
    /// --idempotency-keys, a second run under the same name repeats the first run's keys).
    #[arg(long)]
    run_name: Option<String>,
    /// Spread timestamps uniformly over this long before now (`24h`); without it the node
    /// stamps entries with the time it receives them.
    #[arg(long)]
    spread: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// How batches are sent: Veil's NDJSON, Elasticsearch `_bulk`, or OTLP over gRPC or HTTP
    /// (the same generated entries in each). Answers are read for their acknowledged count
    /// only: reading whole answers into JSON values was ~2 % of the machine's CPU in a
    /// full-speed run, on the cores the node uses.
    #[arg(long, value_enum, default_value = "ndjson")]
    protocol: send::Protocol,
    /// The node's gRPC address, for `--protocol otlp-grpc`.
    #[arg(long, default_value = "127.0.0.1:7421")]
    grpc_target: String,
}

/// Flags of `veil bench query`.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// The node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    target: String,
    /// How long to run.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The kinds to run, comma-separated (default: all of service_level_1h, text_24h,
    /// user_id_24h, terms_service_24h, percentiles_24h, top_k_1h, top_k_24h, top_k_7d,
    /// details_24h, top_k_service_24h, top_k_level_24h, top_k_level_7d, details_level_24h).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs a bench command.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start tokio")?;
    match command {
        BenchCommand::Ingest(a) => runtime.block_on(ingest(a)),
        BenchCommand::Query(a) => runtime.block_on(query(a)),
        BenchCommand::Index(a) => index(a),
    }
}

fn duration_of(s: &str) -> anyhow::Result<Duration> {
    crate::exceptions::parse_duration_secs(s)
        .map(|s| Duration::from_secs(s as u64))
        .with_context(|| format!("--duration {s:?} is not like 10s or 1m"))
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// Message sources: templates of what services log, with personal data, exceptions and stack
/// traces, or lines replayed from a file.
struct Messages {
    lines: Vec<String>,
    /// With `--exceptions N`: N exception types and their cumulative Zipf weights.
    exception_types: Vec<String>,
    exception_weights: Vec<f64>,
}

impl Messages {
    fn load(replay: Option<&std::path::Path>) -> anyhow::Result<Messages> {
        if let Some(path) = replay {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            if lines.is_empty() {
                bail!("{} has no lines", path.display());
            }
            return Ok(Messages {
                lines,
                exception_types: Vec::new(),
                exception_weights: Vec::new(),
            });
        }
        Ok(Messages {
            lines: Vec::new(),
            exception_types: Vec::new(),
            exception_weights: Vec::new(),
        })
    }

    /// Gives every entry an exception of one of `n` types, drawn Zipf-like (exponent 0.9).
    fn with_exceptions(mut self, n: usize) -> Self {
        self.exception_types = (0..n)
            .map(|i| format!("com.acme.Fault{i}Exception"))
            .collect();
        let mut total = 0.0;
        self.exception_weights = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(0.9);
                total
            })
            .collect();
        self
    }

    /// One entry as an NDJSON line (without the newline), written straight into a string:
    /// building a `serde_json::Value` per entry cost the load generator, which shares the
    /// machine with the node it measures, more than twice as much CPU. `timestamp_us` adds a
    /// timestamp (`--spread`).
    fn line(
        &self,
        rng: &mut Rng,
        service: &str,
        run: &str,
        n: u64,
        keyed: bool,
        timestamp_us: Option<i64>,
    ) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(320);
        let level = ["INFO", "INFO", "INFO", "WARN", "ERROR"][rng.below(5) as usize];
        let mut fields = String::new();
        out.push_str("{\"message\":");
        if !self.lines.is_empty() {
            push_json_str(
                &mut out,
                &self.lines[rng.below(self.lines.len() as u64) as usize],
            );
        } else {
            let user = rng.below(100_000);
            let message = match rng.below(6) {
                0 => format!(
                    "payment {} failed for customer{user}@example.com card 4111 1111 1111 1111",
                    rng.below(1_000_000_000)
                ),
                1 => format!(
                    "GET /api/v1/orders/{} 200 in {}ms from 203.0.113.{}",
                    rng.below(1_000_000),
                    rng.below(900),
                    rng.below(250)
                ),
                2 => format!(
                    "cache miss for key session:{:x} after {}ms",
                    rng.next_u64(),
                    rng.below(50)
                ),
                3 => format!(
                    "retrying upstream call attempt={} backoff_ms={}",
                    rng.below(5),
                    rng.below(2000)
                ),
                _ => format!("request {} processed", rng.below(1_000_000_000)),
            };
            push_json_str(&mut out, &message);
            let _ = write!(
                fields,
                "\"user_id\":\"user_{user}\",\"duration_ms\":{}",
                rng.below(1000)
            );
        }
        out.push_str(",\"service\":");
        push_json_str(&mut out, service);
        let host = rng.below(20);
        let (level, region) = if let Some(total) = self.exception_weights.last() {
            let x = (rng.below(1 << 30) as f64 / (1u64 << 30) as f64) * total;
            let i = self
                .exception_weights
                .partition_point(|c| *c < x)
                .min(self.exception_types.len() - 1);
            let level = ["ERROR", "WARN", "FATAL"][rng.below(3) as usize];
            let environment = ["prod", "staging"][rng.below(2) as usize];
            let region = ["us-east-1", "eu-west-1"][rng.below(2) as usize];
            let _ = write!(
                out,
                ",\"environment\":\"{environment}\",\"exception\":{{\"type\":"
            );
            push_json_str(&mut out, &self.exception_types[i]);
            out.push_str(",\"message\":\"operation failed\"}");
            (level, region)
        } else {
            if level == "ERROR" {
                let ty = [
                    "PaymentProcessingException",
                    "TimeoutException",
                    "NullPointerException",
                ][rng.below(3) as usize];
                let _ = write!(
                    out,
                    ",\"exception\":{{\"type\":\"com.acme.{ty}\",\"message\":\"operation failed\",\"stack_trace\":\"com.acme.{ty}: operation failed\\n\\tat com.acme.Service.call(Service.java:{})\\n\\tat com.acme.Api.handle(Api.java:88)\"}}",
                    40 + rng.below(5)
                );
            }
            (level, "us-east-1")
        };
        let _ = write!(
            out,
            ",\"level\":\"{level}\",\"metadata\":{{\"host\":\"host-{host}\",\"region\":\"{region}\"}}"
        );
        if keyed {
            if !fields.is_empty() {
                fields.push(',');
            }
            fields.push_str("\"idempotency_key\":");
            push_json_str(&mut fields, &format!("{run}-{n}"));
        }
        if !fields.is_empty() {
            let _ = write!(out, ",\"fields\":{{{fields}}}");
        }
        if let Some(us) = timestamp_us {
            let _ = write!(out, ",\"timestamp\":\"{}\"", rfc3339_us(us));
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string (quoted and escaped).
fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    let duration = duration_of(&a.duration)?;
    if a.batch == 0 || a.concurrency == 0 || a.services == 0 {
        bail!("--batch, --concurrency and --services must be positive");
    }
    let messages = Arc::new(Messages::load(a.replay.as_deref())?.with_exceptions(a.exceptions));
    let run = match &a.run_name {
        Some(name) => name.clone(),
        None => format!("{:08x}", Rng::new(now_nanos()).next_u64() as u32),
    };
    let services: Arc<Vec<String>> = Arc::new(
        (0..a.services)
            .map(|i| format!("bench-{run}-svc-{i}"))
            .collect(),
    );
    // Zipf weights over services: service i with weight 1/(i+1).
    let weights: Vec<f64> = (0..a.services).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let cumulative: Arc<Vec<f64>> = Arc::new(
        weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()?;
    let held_before = count_once(&client, &a.target, &services).await?;
    let sender = send::Sender::connect(
        a.protocol,
        client.clone(),
        &a.target,
        &a.grpc_target,
        &a.answer,
    )
    .await?;
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(new_histogram()?));
    // The acknowledgements of the current second (the progress line reads and resets it).
    let window = Arc::new(Mutex::new(new_histogram()?));
    let started = Instant::now();
    let deadline = started + duration;
    // Per worker: batches per second for a fixed rate.
    let interval = (a.rate > 0)
        .then(|| Duration::from_secs_f64(a.concurrency as f64 * a.batch as f64 / a.rate as f64));
    let mut workers = Vec::new();
    for w in 0..a.concurrency {
        let (mut sender, messages, services, cumulative) = (
            sender.clone(),
            messages.clone(),
            services.clone(),
            cumulative.clone(),
        );
        let (acked, failed, bytes, counter, histogram, window, run) = (
            acked.clone(),
            failed.clone(),
            bytes.clone(),
            counter.clone(),
            histogram.clone(),
            window.clone(),
            run.clone(),
        );
        let batch = a.batch;
        let concurrency = a.concurrency;
        let keyed = a.idempotency_keys;
        let spread_us = match &a.spread {
            Some(s) => duration_of(s)?.as_micros() as u64,
            None => 0,
        };
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(now_nanos() ^ (w as u64) << 32);
            let total = *cumulative.last().unwrap_or(&1.0);
            // Workers start evenly spread over one interval, so a fixed rate arrives as a
            // steady stream rather than `concurrency` requests at once every interval.
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / concurrency as f64));
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let mut lines = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let x = (rng.below(1 << 30) as f64 / (1u64 << 30) as f64) * total;
                    let s = cumulative
                        .partition_point(|c| *c < x)
                        .min(services.len() - 1);
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let timestamp =
                        (spread_us > 0).then(|| (now_nanos() / 1000 - rng.below(spread_us)) as i64);
                    lines.push(messages.line(&mut rng, &services[s], &run, n, keyed, timestamp));
                }
                let sent = Instant::now();
                let answer = sender.send(&lines).await;
                let elapsed = sent.elapsed().as_micros() as u64;
                match answer {
                    Ok((len, n)) => {
                        bytes.fetch_add(len, Ordering::Relaxed);
                        {
                            // Counted under the window's lock, so that each second's entries
                            // and requests are the same acknowledgements.
                            let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
                            acked.fetch_add(n, Ordering::Relaxed);
                            let _ = w.record(elapsed.max(1));
                        }
                        let mut h = histogram.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = h.record(elapsed.max(1));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Once a second: the progress line, and that second's figures for `per_second`.
    let per_second = Arc::new(Mutex::new(Vec::new()));
    let progress = {
        let (acked, window, per_second) = (acked.clone(), window.clone(), per_second.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval_at(
                (started + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            loop {
                tick.tick().await;
                let (now, second) = {
                    let mut h = window.lock().unwrap_or_else(|p| p.into_inner());
                    let second = latency_json(&h);
                    h.reset();
                    (acked.load(Ordering::Relaxed), second)
                };
                eprintln!(
                    "veil bench: {:>4.0}s  {} entries acknowledged  {}/s  ack p50 {} / p99 {} / max {} ms",
                    started.elapsed().as_secs_f64(),
                    now,
                    now - last,
                    second["p50_ms"],
                    second["p99_ms"],
                    second["max_ms"],
                );
                let mut all = per_second.lock().unwrap_or_else(|p| p.into_inner());
                all.push(json!({"entries": now - last, "ack_latency": second}));
                last = now;
            }
        })
    };
    let probe = tokio::spawn(probe_exception_freshness(
        client.clone(),
        a.target.clone(),
        format!("bench-{run}-probe"),
        deadline,
    ));
    for w in workers {
        w.await.context("a worker failed")?;
    }
    progress.abort();
    let (fresh, probes_missed) = probe.await.context("the freshness probe failed")??;
    let elapsed = started.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let bytes = bytes.load(Ordering::Relaxed);
    // The node must hold exactly what it acknowledged: count the run's entries (beyond what
    // the same services held before it started).
    let last_ack = Instant::now();
    let held = count_held(&client, &a.target, &services, held_before + acked)
        .await?
        .saturating_sub(held_before);
    // From the last acknowledgement to every acknowledged entry answering a query (an upper
    // bound for the last batch, polled every 25 ms).
    let visible_after_ms = last_ack.elapsed().as_secs_f64() * 1000.0;
    let h = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let result = json!({
        "entries_acknowledged": acked,
        "answer": a.answer,
        "protocol": format!("{:?}", a.protocol),
        "requests_failed": failed,
        "seconds": elapsed,
        "entries_per_second": acked as f64 / elapsed,
        "megabytes_per_second": bytes as f64 / elapsed / 1e6,
        "bytes_per_entry": if acked > 0 { bytes as f64 / acked as f64 } else { 0.0 },
        "ack_latency": latency_json(&h),
        "per_second": *per_second.lock().unwrap_or_else(|p| p.into_inner()),
        "entries_held": held,
        "verified": held == acked,
        "visible_after_ms": visible_after_ms,
        "exception_counted_after": latency_json(&fresh),
        "exception_probes_missed": probes_missed,
    });
    print_result(&result, a.json, "ingest");
    if held != acked {
        bail!("the node holds {held} of the {acked} acknowledged entries");
    }
    Ok(())
}

/// How long one freshness probe waits for its exception to be counted before it counts as missed.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// Once a second until `deadline`: sends one entry whose exception type is its own under
/// `service` (not one of the run's, so the held-count check is not disturbed) and measures from
/// its acknowledgement until a top-K answer counts it, polling every 5 ms. Returns the latencies
/// and how many probes were not counted within [`PROBE_WAIT`] (or not acknowledged).
async fn probe_exception_freshness(
    client: reqwest::Client,
    target: String,
    service: String,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latencies = new_histogram()?;
    let mut missed = 0;
    let top_k = format!("http://{target}/api/v1/exceptions/top-k");
    let top_k_query = [
        ("k", "1000"),
        ("window", "5m"),
        ("service", service.as_str()),
    ];
    let mut next = Instant::now();
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(1);
        let exception_type = format!("VeilFreshnessProbe{:x}Exception", now_nanos());
        let entry = json!({
            "service": service, "level": "ERROR", "message": "veil bench freshness probe",
            "exception": {"type": exception_type, "message": "probe"},
        });
        let sent = client
            .post(format!("http://{target}/api/v1/logs"))
            .json(&entry)
            .send()
            .await;
        if !sent.is_ok_and(|r| r.status().is_success()) {
            missed += 1;
            continue;
        }
        let acked = Instant::now();
        let counted = loop {
            let answer: Option<Value> = match client.get(&top_k).query(&top_k_query).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let seen = answer
                .as_ref()
                .and_then(|a| a["exceptions"].as_array())
                .is_some_and(|items| {
                    items
                        .iter()
                        .any(|e| e["exception_type"] == exception_type.as_str())
                });
            if seen {
                break Some(acked.elapsed());
            }
            if acked.elapsed() > PROBE_WAIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        match counted {
            Some(d) => {
                let _ = latencies.record((d.as_micros() as u64).max(1));
            }
            None => missed += 1,
        }
    }
    Ok((latencies, missed))
}

/// Counts the run's entries on the node, waiting (up to 30 s) for the index to catch up.
async fn count_held(
    client: &reqwest::Client,
    target: &str,
    services: &[String],
    expected: u64,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = count_once(client, target, services).await?;
        if total == expected || Instant::now() > deadline {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many searchable entries the services have now.
async fn count_once(
    client: &reqwest::Client,
    target: &str,
    services: &[String],
) -> anyhow::Result<u64> {
    let answer: Value = client
        .post(format!("http://{target}/api/v1/logs/query"))
        .json(&json!({"filters": {"services": services}, "limit": 0}))
        .send()
        .await?
        .json()
        .await?;
    answer["total"]
        .as_u64()
        .with_context(|| format!("the node answered without a total: {answer}"))
}

fn print_result(result: &Value, as_json: bool, kind: &str) {
    if as_json {
        println!("{result}");
    } else {
        println!("veil bench {kind}:");
        if let Some(m) = result.as_object() {
            for (k, v) in m {
                println!("  {k:<24} {v}");
            }
        }
    }
}

async fn query(a: QueryArgs) -> anyhow::Result<()> {
    let duration = duration_of(&a.duration)?;
    let client = reqwest::Client::new();
    let base = format!("http://{}", a.target);
    // The busiest service (for the service + level question).
    let top = answer(
        client
            .post(format!("{base}/api/v1/logs/query"))
            .json(&json!({"limit": 0, "aggs": {"s": {"terms": {"field": "service", "size": 1}}}})),
    )
    .await?;
    let service = Arc::new(
        top["aggregations"]["s"]["buckets"][0]["key"]
            .as_str()
            .unwrap_or("none")
            .to_string(),
    );
    // The most frequent exception of the last 24 h (for the details question).
    let top = answer(client.get(format!("{base}/api/v1/exceptions/top-k?k=1&window=24h"))).await?;
    let top_id = Arc::new(
        top["exceptions"][0]["exception_id"]
            .as_str()
            .unwrap_or("0")
            .to_string(),
    );
    let kinds: Vec<(&str, &str)> = QUERY_KINDS
        .into_iter()
        .filter(|(name, _)| a.kinds.is_empty() || a.kinds.iter().any(|k| k == name))
        .collect();
    if let Some(unknown) = a
        .kinds
        .iter()
        .find(|k| !QUERY_KINDS.iter().any(|(name, _)| name == k))
    {
        bail!("unknown query kind {unknown:?}");
    }
    let histograms: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..kinds.len())
            .map(|_| new_histogram().map(Mutex::new))
            .collect::<anyhow::Result<_>>()?,
    );
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let kinds = Arc::new(kinds);
    let service_query = Arc::new(query_value(&service));
    let mut workers = Vec::new();
    let concurrency = a.concurrency.max(1);
    for w in 0..concurrency {
        let service_query = service_query.clone();
        let service = service.clone();
        let top_id = top_id.clone();
        let (client, base, kinds, histograms, failed) = (
            client.clone(),
            base.clone(),
            kinds.clone(),
            histograms.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            // Workers start spread over the kinds, so a short run asks every kind.
            let mut i = w * kinds.len() / concurrency;
            while Instant::now() < deadline {
                let k = i % kinds.len();
                i += 1;
                let (name, path) = kinds[k];
                let path = path
                    .replace("{top}", &top_id)
                    .replace("{service}", &service_query);
                let request = match query_body(name, &service, i as u64) {
                    Some(b) => client.post(format!("{base}{path}")).json(&b),
                    None => client.get(format!("{base}{path}")),
                };
                let sent = Instant::now();
                let ok = match request.send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    let us = sent.elapsed().as_micros() as u64;
                    let mut h = histograms[k].lock().unwrap_or_else(|p| p.into_inner());
                    let _ = h.record(us.max(1));
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await.context("a worker failed")?;
    }
    let mut per_kind = serde_json::Map::new();
    for (k, (name, ..)) in kinds.iter().enumerate() {
        let h = histograms[k].lock().unwrap_or_else(|p| p.into_inner());
        per_kind.insert(name.to_string(), latency_json(&h));
    }
    let result = json!({
        "requests_failed": failed.load(Ordering::Relaxed),
        "latency": per_kind,
    });
    print_result(&result, a.json, "query");
    Ok(())
}

/// Sends a request and reads its JSON answer.
async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    request
        .send()
        .await
        .context("cannot reach the node")?
        .json()
        .await
        .context("the node's answer is not JSON")
}

/// `veil bench index`: generate, mask (untimed), then index and commit (timed).
fn index(a: IndexArgs) -> anyhow::Result<()> {
    use veil_node::pii::{keys::KeyRing, Masker};
    let config = crate::config::ServeArgs::default().resolve()?;
    let keys = KeyRing::throwaway()?;
    let masker = Masker::new(config.pii_strategies, &keys, &[])?;
    let masking = crate::ingest::MaskingContext {
        masker: &masker,
        keys: &keys,
        keep_originals_for: &[],
        field_keys: None,
        mask_nanos: None,
        traces: None,
    };
    let messages = Messages::load(None)?;
    let services: Vec<String> = (0..a.services.max(1))
        .map(|i| format!("bench-svc-{i}"))
        .collect();
    let mut rng = Rng::new(now_nanos());
    let started = Instant::now();
    let now = now_nanos() as i64 / 1000;
    let mut entries = Vec::with_capacity(a.entries);
    let mut raw_bytes = 0usize;
    for n in 0..a.entries as u64 {
        // Zipf-like over services, as `veil bench ingest`.
        let s = ((rng.below(1 << 20) as f64 / (1u64 << 20) as f64).powi(3) * services.len() as f64)
            as usize;
        let line = messages.line(
            &mut rng,
            &services[s.min(services.len() - 1)],
            "index",
            n,
            false,
            None,
        );
        raw_bytes += line.len() + 1;
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&line) else {
            bail!("generated entry is not a JSON object");
        };
        let prepared = crate::ingest::prepare(
            map,
            &crate::ingest::RequestDefaults::default(),
            config.entry_limits(),
            &masking,
            now,
        )
        .map_err(|e| anyhow::anyhow!("generated entry rejected: {}", e.message))?;
        entries.push(prepared.entry);
    }
    let prepare_seconds = started.elapsed().as_secs_f64();
    let dir = tempfile_dir()?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let index = veil_shard::ShardIndex::open_with_threads(
        veil_shard::ShardId(0),
        &dir,
        a.heap_bytes,
        threads,
        veil_shard::PersistPolicy::default(),
    )?;
    let started = Instant::now();
    for (raft_index, chunk) in entries.chunks(1000).enumerate() {
        let docs: Vec<&veil_shard::StoredEntry> = chunk.iter().collect();
        index.add(raft_index as u64 + 1, &docs)?;
    }
    index.commit()?;
    // On disk, as tantivy's own commit would have it.
    index.persist()?;
    let index_seconds = started.elapsed().as_secs_f64();
    let searchable = index.searchable_docs();
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
    if searchable != entries.len() as u64 {
        bail!(
            "indexed {} documents, {searchable} searchable",
            entries.len()
        );
    }
    let result = json!({
        "entries": entries.len(),
        "raw_megabytes": raw_bytes as f64 / 1e6,
        "threads": threads,
        "prepare_seconds": prepare_seconds,
        "index_seconds": index_seconds,
        "index_entries_per_second": entries.len() as f64 / index_seconds,
    });
    print_result(&result, a.json, "index");
    Ok(())
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("veil-bench-index-{:016x}", now_nanos()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// What `veil bench query` asks, by kind: (name, path).
/// (`details_*` ask about the most frequent exception of the last 24 h; `{service}` is the
/// busiest service.)
const QUERY_KINDS: [(&str, &str); 13] = [
    ("service_level_1h", "/api/v1/logs/query"),
    ("text_24h", "/api/v1/logs/query"),
    ("user_id_24h", "/api/v1/logs/query"),
    ("terms_service_24h", "/api/v1/logs/query"),
    ("percentiles_24h", "/api/v1/logs/query"),
    ("top_k_1h", "/api/v1/exceptions/top-k?k=10&window=1h"),
    ("top_k_24h", "/api/v1/exceptions/top-k?k=10&window=24h"),
    ("top_k_7d", "/api/v1/exceptions/top-k?k=10&window=7d"),
    ("details_24h", "/api/v1/exceptions/{top}?window=24h"),
    (
        "top_k_service_24h",
        "/api/v1/exceptions/top-k?k=10&window=24h&service={service}",
    ),
    (
        "top_k_level_24h",
        "/api/v1/exceptions/top-k?k=10&window=24h&level=ERROR",
    ),
    (
        "top_k_level_7d",
        "/api/v1/exceptions/top-k?k=10&window=7d&level=ERROR",
    ),
    (
        "details_level_24h",
        "/api/v1/exceptions/{top}?window=24h&level=ERROR",
    ),
];

/// `s` as a URL query value: unreserved characters as they are, every other byte escaped.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of one query of `kind`, over windows ending now.
fn query_body(kind: &str, service: &str, i: u64) -> Option<Value> {
    let now = now_nanos() as i64 / 1000;
    let range = |hours: i64| json!({"start": rfc3339_us(now - hours * 3_600_000_000), "end": rfc3339_us(now)});
    Some(match kind {
        "service_level_1h" => json!({"filters": {"services": [service], "levels": ["ERROR"],
            "timestamp_range": range(1)}, "limit": 100}),
        "text_24h" => json!({"query": "retrying", "filters": {"timestamp_range": range(24)},
            "limit": 100}),
        "user_id_24h" => json!({"filters": {"timestamp_range": range(24),
            "fields": {"user_id": format!("user_{}", i.wrapping_mul(7919) % 100_000)}}, "limit": 100}),
        "terms_service_24h" => json!({"filters": {"timestamp_range": range(24)}, "limit": 0,
            "aggs": {"s": {"terms": {"field": "service", "size": 200}}}}),
        "percentiles_24h" => json!({"filters": {"timestamp_range": range(24)}, "limit": 0,
            "aggs": {"p": {"percentiles": {"field": "duration_ms", "percents": [50, 90, 99]}}}}),
        _ => return None,
    })
}

fn rfc3339_us(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Value {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_object(), "{line}");
        v
    }

    #[test]
    fn query_values_escape_all_but_unreserved_characters() {
        assert_eq!(query_value("bench-q7-svc-3"), "bench-q7-svc-3");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query_value("x.y_z~"), "x.y_z~");
    }

    #[test]
    fn generated_lines_are_the_entries_they_describe() {
        let mut rng = Rng::new(7);
        let templates = Messages::load(None).unwrap();
        let mut errors = 0;
        for n in 0..2000 {
            let v = parse(&templates.line(&mut rng, "svc-1", "run", n, n % 2 == 0, None));
            assert_eq!(v["service"], "svc-1");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(v["fields"]["user_id"]
                .as_str()
                .is_some_and(|u| u.starts_with("user_")));
            assert!(v["fields"]["duration_ms"].is_u64());
            assert_eq!(v["metadata"]["region"], "us-east-1");
            assert_eq!(
                v["fields"]["idempotency_key"].as_str().is_some(),
                n % 2 == 0
            );
            if v["level"] == "ERROR" {
                errors += 1;
                assert!(v["exception"]["stack_trace"]
                    .as_str()
                    .is_some_and(|t| t.contains("\n\tat com.acme.Service.call")));
            } else {
                assert!(v.get("exception").is_none());
            }
        }
        assert!(
            errors > 200,
            "one entry in five is an ERROR with a trace: {errors}"
        );

        let faults = Messages::load(None).unwrap().with_exceptions(10);
        let v = parse(&faults.line(
            &mut rng,
            "svc-2",
            "run",
            1,
            false,
            Some(1_700_000_000_000_000),
        ));
        assert!(v["exception"]["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("com.acme.Fault")));
        assert!(["ERROR", "WARN", "FATAL"].contains(&v["level"].as_str().unwrap()));
        assert!(v["environment"].is_string());
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn replayed_lines_come_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines.log");
        let tricky = "quote \" backslash \\ tab \t bell \u{7} unicode é ✓";
        std::fs::write(&path, format!("{tricky}\n")).unwrap();
        let messages = Messages::load(Some(&path)).unwrap();
        let mut rng = Rng::new(1);
        let v = parse(&messages.line(&mut rng, "svc", "run", 0, false, None));
        assert_eq!(v["message"], tricky);
        assert!(v.get("fields").is_none());
    }
}
