//! `veil-chaos`: one chaos run against a fresh cluster of real `veil` processes, or many in a
//! row (`--runs`). It re-executes itself under `unshare -n` so that it runs in a network
//! namespace of its own (see `net.rs`), prints the seed first and, on any anomaly, the command
//! that replays the run; its exit code is 0 when the checker found nothing, 1 when it found an
//! anomaly, 2 when the harness could not do its work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use veil_chaos_tests::nemesis::Nemesis;
use veil_chaos_tests::run::{self, Options};

#[derive(Parser)]
#[command(
    name = "veil-chaos",
    about = "Jepsen-style fault runs against a veil cluster"
)]
struct Args {
    /// Nodes in the cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Nemeses to draw from, comma-separated: kill, pause, partition, clock, disk; all; or
    /// none (the workload alone).
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// The first run's seed (a run's seed is printed first; the next run uses seed + 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs in a row.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Shards of the cluster.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Each node's disk (a tmpfs), MiB.
    #[arg(long, default_value_t = 1024)]
    disk_mib: u64,
    /// The veil binary [default: `veil` beside this one].
    #[arg(long, env = "VEIL_BIN")]
    veil: Option<PathBuf>,
    /// Where histories and failing runs' node logs go [default: a new temporary directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A JSON line per run (seed, counts, anomalies) is appended here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Break something on purpose: send entries without their idempotency keys, so that
    /// resends are stored twice, as by a build that skipped the idempotency check. The checker
    /// must report it (exit code 1).
    #[arg(long)]
    unkeyed: bool,
    /// Print CHAOS.md's table of the runs a `--summary` file holds, and run nothing.
    #[arg(long, value_name = "SUMMARY")]
    table: Option<PathBuf>,
}

fn main() -> ExitCode {
    match veil_chaos_tests::net::reexec_in_own_namespace() {
        Ok(Some(code)) => return code,
        Ok(None) => {}
        Err(e) => {
            eprintln!("veil-chaos: {e:#}");
            return ExitCode::from(2);
        }
    }
    let args = Args::parse();
    if let Some(path) = &args.table {
        return match table(path) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("veil-chaos: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runs(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("veil-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runs(args: &Args) -> anyhow::Result<bool> {
    let nemeses = if args.nemesis == "all" {
        Nemesis::ALL.to_vec()
    } else if args.nemesis == "none" {
        Vec::new()
    } else {
        args.nemesis
            .split(',')
            .filter(|s| !s.is_empty())
            .map(Nemesis::parse)
            .collect::<anyhow::Result<_>>()?
    };
    let veil = match &args.veil {
        Some(v) => v.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("veil"))
            .ok_or_else(|| anyhow::anyhow!("no directory of this executable"))?,
    };
    anyhow::ensure!(
        std::fs::metadata(&veil).is_ok(),
        "no veil binary at {} (build it, or pass --veil)",
        veil.display()
    );
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    let base_out = match &args.out {
        Some(o) => o.clone(),
        None => tempfile::Builder::new()
            .prefix("veil-chaos-out-")
            .tempdir()?
            .keep(),
    };
    let mut all_passed = true;
    let mut harness_errors = 0u64;
    for k in 0..args.runs {
        let seed = first + k;
        let opts = Options {
            nodes: args.nodes,
            time: Duration::from_secs(args.time),
            nemeses: nemeses.clone(),
            seed,
            clients: args.clients,
            shards: args.shards,
            veil: veil.clone(),
            out: base_out.join(format!("seed-{seed}")),
            disk_mib: args.disk_mib,
            unkeyed: args.unkeyed,
            node_args: Vec::new(),
        };
        println!("chaos run: seed {seed}");
        let started = std::time::Instant::now();
        let report = match run::run(&opts) {
            Ok(r) => r,
            Err(e) => {
                // The harness could not finish this run (a cluster that never settled is one
                // way): said, counted as a failure, and the next run goes on.
                println!("HARNESS ERROR: {e:#}");
                println!("replay: {}", opts.replay());
                all_passed = false;
                harness_errors += 1;
                if let Some(path) = &args.summary {
                    use std::io::Write as _;
                    let line = serde_json::json!({"seed": seed, "nemeses": args.nemesis,
                        "harness_error": format!("{e:#}"), "seconds": started.elapsed().as_secs()});
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    writeln!(f, "{line}")?;
                }
                continue;
            }
        };
        print!("{}", report.render());
        println!(
            "run took {:.0}s; history in {}",
            started.elapsed().as_secs_f64(),
            opts.out.join("history.jsonl").display()
        );
        if let Some(path) = &args.summary {
            use std::io::Write as _;
            let line = serde_json::json!({
                "seed": seed, "nodes": opts.nodes, "time": args.time,
                "nemeses": args.nemesis, "sent": report.sent, "acked": report.acked,
                "faults": report.faults, "faults_by": report.faults_by, "ops": report.ops,
                "strong_reads": report.strong_reads, "fail_stops": report.fail_stops,
                "availability": report.availability.iter().map(|(k, (ok, all))| (k.to_string(), serde_json::json!([ok, all]))).collect::<serde_json::Map<_, _>>(),
                "anomalies": report.anomalies.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v.len()))).collect::<serde_json::Map<_, _>>(),
                "seconds": started.elapsed().as_secs(),
            });
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{line}")?;
        }
        if !report.passed() {
            all_passed = false;
            println!("replay: {}", opts.replay());
        }
    }
    anyhow::ensure!(
        harness_errors == 0 || harness_errors < args.runs,
        "the harness could not finish any run"
    );
    Ok(all_passed)
}

/// The Markdown table of a summary file: per nemesis, the runs it struck in, its faults and the
/// availability while a majority was left; then the totals.
fn table(path: &std::path::Path) -> anyhow::Result<String> {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    #[derive(Default)]
    struct Row {
        runs: u64,
        faults: u64,
        ok: u64,
        all: u64,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let (mut runs, mut errors, mut ops, mut acked, mut faults, mut anomalies, mut failing) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, Vec::new());
    for l in &lines {
        runs += 1;
        if l.get("harness_error").is_some() {
            errors += 1;
            failing.push(format!(
                "seed {} (harness: {})",
                l["seed"], l["harness_error"]
            ));
            continue;
        }
        ops += l["ops"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
        acked += l["acked"].as_u64().unwrap_or(0);
        faults += l["faults"].as_u64().unwrap_or(0);
        let found: u64 = l["anomalies"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
        for (kind, n) in l["anomalies"].as_object().into_iter().flatten() {
            *by_kind.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
        if found > 0 {
            failing.push(format!("seed {}: {}", l["seed"], l["anomalies"]));
        }
        anomalies += found;
        for (n, k) in l["faults_by"].as_object().into_iter().flatten() {
            let row = rows.entry(n.clone()).or_default();
            row.runs += 1;
            row.faults += k.as_u64().unwrap_or(0);
        }
        for (n, v) in l["availability"].as_object().into_iter().flatten() {
            let row = rows.entry(n.clone()).or_default();
            row.ok += v[0].as_u64().unwrap_or(0);
            row.all += v[1].as_u64().unwrap_or(0);
        }
    }
    let mut out = String::from(
        "| nemesis | runs it struck in | faults injected | ingest attempts ok while a majority was left |\n|---|---:|---:|---:|\n",
    );
    for (n, r) in &rows {
        let pct = if r.all == 0 {
            100.0
        } else {
            100.0 * r.ok as f64 / r.all as f64
        };
        out.push_str(&format!(
            "| {n} | {} | {} | {}/{} ({pct:.0} %) |\n",
            r.runs, r.faults, r.ok, r.all
        ));
    }
    out.push_str(&format!(
        "\n{runs} runs ({errors} the harness could not finish), {ops} operations, {acked} entries acknowledged, {faults} faults, {anomalies} anomalies{}.\n",
        if by_kind.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                by_kind
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    for f in failing {
        out.push_str(&format!("- {f}\n"));
    }
    Ok(out)
}
