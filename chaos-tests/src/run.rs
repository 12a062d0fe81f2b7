//! One chaos run: start a cluster (each node in its own network namespace when the harness
//! may make them), let the clients write and read while the nemesis injects faults on a
//! schedule drawn from the seed, heal everything, let the cluster settle, read what it holds
//! through every node, scan every disk, and hand it all to the checker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::checker::{self, Final, Report};
use crate::disk::Disks;
use crate::history::History;
use crate::nemesis::{self, Nemesis};
use crate::net::Net;
use crate::workload::{self, Client};
use crate::{Launch, Ports, Rng, VeilProcess};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes (three, or five).
    pub nodes: usize,
    /// How long faults are injected.
    pub time: Duration,
    /// The nemeses to draw from.
    pub nemeses: Vec<Nemesis>,
    /// Drives every random choice.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Shards of the cluster.
    pub shards: u32,
    /// The `veil` binary.
    pub veil: PathBuf,
    /// Where the history (and, on failure, the nodes' logs) go.
    pub out: PathBuf,
    /// Each node's disk, in MiB (a tmpfs).
    pub disk_mib: u64,
    /// Breaks the workload on purpose (see [`Client::unkeyed`]): the checker must catch it.
    pub unkeyed: bool,
    /// More arguments for every node's `veil serve`.
    pub node_args: Vec<String>,
}

impl Options {
    /// The command that replays this run.
    pub fn replay(&self) -> String {
        let names: Vec<&str> = self.nemeses.iter().map(|n| n.name()).collect();
        let names = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(",")
        };
        format!(
            "cargo run -p veil-chaos-tests --bin veil-chaos -- --nodes {} --time {} --nemesis {names} --seed {} --clients {} --shards {}{}",
            self.nodes,
            self.time.as_secs(),
            self.seed,
            self.clients,
            self.shards,
            if self.unkeyed { " --unkeyed" } else { "" }
        )
    }
}

/// Where nodes run: namespaces with their own addresses, or loopback.
pub enum Place {
    /// Each node in its own network namespace.
    Namespaces(Net),
    /// Loopback (not root: no partitions, no full disk).
    Loopback(Vec<Ports>),
}

/// One node of the run.
pub struct NodeSlot {
    /// Its running process, if it runs.
    pub process: Option<VeilProcess>,
    /// Its id in the cluster.
    pub id: u64,
    /// Its HTTP address.
    pub http: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The file its libfaketime clock offset is read from.
    pub clock: PathBuf,
    /// What it printed before its last restart (a killed process's log is kept).
    pub old_logs: String,
    /// It exited on its own and has not been restarted yet.
    pub down_since_crash: bool,
}

/// The cluster under test.
pub struct Cluster {
    /// Its nodes.
    pub nodes: Vec<NodeSlot>,
    /// Where they run.
    pub place: Place,
    /// Their disks.
    pub disks: Disks,
    opts: Options,
    key_file: PathBuf,
    faketime: bool,
    /// Nodes that exited without being killed, other than by a fail-stop, with the end of
    /// what they printed.
    pub crashes: Vec<String>,
    /// Nodes that stopped themselves because their WAL could not be fsynced.
    pub fail_stops: usize,
}

/// libfaketime's library (installed by `.ci/setup`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Cluster {
    fn host(&self, i: usize) -> String {
        match &self.place {
            Place::Namespaces(_) => Net::addr(i).to_string(),
            Place::Loopback(_) => "127.0.0.1".into(),
        }
    }

    fn ports(&self, i: usize) -> Ports {
        match &self.place {
            Place::Namespaces(_) => Ports {
                http: 7420,
                grpc: 7421,
                peer: 7422,
            },
            Place::Loopback(p) => p[i],
        }
    }

    /// Starts node `i` (again), joining node 0 unless it is node 0.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let ports = self.ports(i);
        let host = self.host(i);
        let join = format!("{}:{}", self.host(0), self.ports(0).peer);
        let shards = self.opts.shards.to_string();
        let key = self.key_file.display().to_string();
        let mut extra = vec![
            "--shards",
            &shards,
            "--key-file",
            &key,
            "--disk-free-bytes-min",
            "16777216",
            "--wal-bytes-max",
            "67108864",
            "--index-persist-interval-ms",
            "1000",
        ];
        if i > 0 {
            extra.extend(["--join", &join]);
        }
        let more = self.opts.node_args.clone();
        extra.extend(more.iter().map(String::as_str));
        let clock = self.nodes[i].clock.clone();
        let mut env = Vec::new();
        if self.faketime {
            if std::fs::metadata(&clock).is_err() {
                std::fs::write(&clock, "+0s")?;
            }
            env = vec![
                ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
                (
                    "FAKETIME_TIMESTAMP_FILE".to_string(),
                    clock.display().to_string(),
                ),
                ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
            ];
        }
        let wrapper = match &self.place {
            Place::Namespaces(net) => net.wrapper(i),
            Place::Loopback(_) => Vec::new(),
        };
        let data_dir = self.nodes[i].data_dir.clone();
        let process = VeilProcess::launch(&Launch {
            bin: &self.opts.veil,
            data_dir: &data_dir,
            host: &host,
            ports: &ports,
            extra: &extra,
            env: &env,
            wrapper: &wrapper,
        })
        .map_err(|e| anyhow::anyhow!("node {i}: {}\n{}", e.message, e.stderr))?;
        let slot = &mut self.nodes[i];
        slot.id = process.node_id;
        slot.http = process.http.clone();
        slot.process = Some(process);
        Ok(())
    }

    /// Kills node `i` with SIGKILL, keeping what it printed.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.signal("CONT");
            p.kill9();
            self.nodes[i].old_logs.push_str(&p.stderr());
        }
    }

    /// Restarts every node that exited without being killed (as a supervisor would). A node
    /// that stopped itself because its WAL could not be fsynced (a full disk) is a fail-stop,
    /// counted; one that ended any other way (a signal, a panic) is a crash, with the end of
    /// what it printed. A restart that fails (the disk is still full) is tried again later.
    pub fn restart_crashed(&mut self, history: &History) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let status = self.nodes[i].process.as_mut().and_then(|p| p.exit_status());
            if let Some(status) = status {
                self.kill(i);
                let log = &self.nodes[i].old_logs;
                let fail_stop = status.code() == Some(1)
                    && log.contains("stopped because the Raft log could not be fsynced");
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let what = format!(
                    "node {i} exited on its own ({status}) at {:.1}s: {}",
                    history.now(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
                history.note(&what);
                if fail_stop {
                    self.fail_stops += 1;
                } else {
                    self.crashes.push(what);
                }
                self.nodes[i].down_since_crash = true;
            }
            if self.nodes[i].down_since_crash && self.nodes[i].process.is_none() {
                match self.start(i) {
                    Ok(()) => self.nodes[i].down_since_crash = false,
                    Err(e) => history.note(&format!("node {i} did not restart yet: {e:#}")),
                }
            }
        }
        Ok(())
    }

    /// The index of the node with cluster id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Every node's HTTP address.
    pub fn https(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http.clone()).collect()
    }

    /// `GET path` on node `i`, as JSON.
    pub fn get(&self, i: usize, path: &str) -> Option<Value> {
        let http = workload::http_client();
        let resp = http
            .get(format!("http://{}{path}", self.nodes[i].http))
            .send()
            .ok()?;
        resp.json().ok()
    }

    /// The cluster status through the first node that answers.
    pub fn status(&self) -> Option<Value> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].process.is_some())
            .find_map(|i| self.get(i, "/api/v1/cluster"))
    }

    /// What each node printed, this run.
    pub fn logs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let mut s = n.old_logs.clone();
                if let Some(p) = &n.process {
                    s.push_str(&p.stderr());
                }
                s
            })
            .collect()
    }

    /// Sets node `i`'s clock offset (`+3600s`, `-90s`, `+0s`).
    pub fn set_clock(&self, i: usize, offset: &str) -> anyhow::Result<()> {
        std::fs::write(&self.nodes[i].clock, offset).context("writing a clock offset")
    }

    /// The options of the run.
    pub fn options(&self) -> &Options {
        &self.opts
    }
}

/// Polls `f` every 200 ms until it answers, for at most `secs`.
pub fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True when every shard has its placed voters, no learner, and a leader among them.
fn settled(status: &Value, replicas: usize) -> bool {
    let ids = |s: &Value, k: &str| {
        let mut v: Vec<u64> = s[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        v.sort_unstable();
        v
    };
    status["shards"].as_array().is_some_and(|shards| {
        shards.iter().all(|s| {
            let r = ids(s, "replicas");
            r.len() == replicas
                && r == ids(s, "placed")
                && ids(s, "learners").is_empty()
                && s["leader"].as_u64().is_some_and(|l| r.contains(&l))
        })
    })
}

/// Makes the run's places (namespaces when root in a namespace of its own, loopback
/// otherwise, leaving out the nemeses that need root) and starts its cluster.
pub fn setup(opts: &Options) -> anyhow::Result<Cluster> {
    crate::net::sweep();
    crate::disk::sweep();
    let root = crate::net::is_root();
    let (place, disks) = if root && crate::net::in_own_namespace() {
        (
            Place::Namespaces(Net::create(opts.nodes)?),
            Disks::create(opts.nodes, opts.disk_mib)?,
        )
    } else {
        (
            Place::Loopback((0..opts.nodes).map(|_| Ports::free()).collect()),
            Disks::plain(opts.nodes)?,
        )
    };
    let mut opts = opts.clone();
    if matches!(place, Place::Loopback(_)) {
        let before = opts.nemeses.len();
        opts.nemeses.retain(|n| !n.needs_root());
        if opts.nemeses.len() != before {
            eprintln!(
                "chaos: not root in a namespace of its own: partitions and full disks are left out"
            );
        }
    }
    start_cluster(&opts, place, disks)
}

/// Starts the cluster: node 0 founds it, the others join; waits until every shard is
/// replicated where it is placed.
fn start_cluster(opts: &Options, place: Place, disks: Disks) -> anyhow::Result<Cluster> {
    let faketime = opts.nemeses.contains(&Nemesis::Clock);
    if faketime && std::fs::metadata(FAKETIME).is_err() {
        bail!("{FAKETIME} is missing: run `bash .ci/setup` (it installs libfaketime)");
    }
    let nodes = (0..opts.nodes)
        .map(|i| NodeSlot {
            process: None,
            id: 0,
            http: String::new(),
            data_dir: disks.data_dir(i),
            clock: disks.root().join(format!("clock-{i}")),
            old_logs: String::new(),
            down_since_crash: false,
        })
        .collect();
    let mut c = Cluster {
        nodes,
        key_file: disks.root().join("keys.toml"),
        place,
        disks,
        opts: opts.clone(),
        faketime,
        crashes: Vec::new(),
        fail_stops: 0,
    };
    for i in 0..opts.nodes {
        c.start(i)?;
    }
    let replicas = opts.nodes.min(3);
    wait_for(120, || c.status().filter(|s| settled(s, replicas)))
        .context("the cluster never had every shard replicated with a leader")?;
    Ok(c)
}

/// Heals every fault, restarts stopped nodes, and waits until the cluster has settled and its
/// replicas agree; returns what the checker needs.
fn settle_and_read(c: &mut Cluster, history: &History) -> anyhow::Result<Final> {
    history.note("settle");
    for i in 0..c.nodes.len() {
        if let Some(p) = &c.nodes[i].process {
            p.signal("CONT");
        }
        if c.faketime {
            c.set_clock(i, "+0s")?;
        }
        // Best effort: a disk that was never filled has no ballast.
        let _ = c.disks.unfill(i);
    }
    if let Place::Namespaces(net) = &c.place {
        net.heal()?;
    }
    c.restart_crashed(history)?;
    for i in 0..c.nodes.len() {
        if c.nodes[i].process.is_none() {
            c.start(i)?;
        }
    }
    let replicas = c.nodes.len().min(3);
    wait_for(180, || c.status().filter(|s| settled(s, replicas)))
        .context("after healing, the cluster never settled (every shard with its placed voters and a leader)")?;
    // Replica digests, per shard from the nodes placed for it, until they agree.
    let digests = |c: &Cluster| -> Option<BTreeMap<u64, Vec<(usize, Value)>>> {
        let status = c.status()?;
        let per_node: Vec<Value> = (0..c.nodes.len())
            .map(|i| {
                c.get(i, "/api/v1/admin/digests")
                    .map(|d| d["shards"].clone())
            })
            .collect::<Option<_>>()?;
        let mut out = BTreeMap::new();
        for s in status["shards"].as_array()? {
            let shard = s["shard"].as_u64()?;
            let mut lines = Vec::new();
            for id in s["placed"].as_array()? {
                let i = c.index_of(id.as_u64()?)?;
                let line = per_node[i]
                    .as_array()?
                    .iter()
                    .find(|l| l["shard"].as_u64() == Some(shard))?
                    .clone();
                lines.push((i, line));
            }
            out.insert(shard, lines);
        }
        Some(out)
    };
    let agree = |d: &BTreeMap<u64, Vec<(usize, Value)>>| {
        d.values()
            .all(|lines| lines.windows(2).all(|w| w[0].1 == w[1].1))
    };
    let digests = match wait_for(120, || digests(c).filter(agree)) {
        Some(d) => d,
        // The checker reports the difference.
        None => digests(c).context("no digests from the settled cluster")?,
    };
    let http = workload::http_client();
    let mut reads = Vec::new();
    let mut top_k = Vec::new();
    for i in 0..c.nodes.len() {
        let addr = c.nodes[i].http.clone();
        let mut last = String::new();
        let logs = wait_for(60, || {
            workload::read_all(&http, &addr, None, true)
                .map_err(|e| last = e)
                .ok()
        })
        .with_context(|| format!("node {i} never answered the final strong read (last: {last})"))?;
        reads.push(logs);
        let top = wait_for(60, || match workload::top_k(&http, &addr, true) {
            Ok((200, t)) => Some(t),
            _ => None,
        })
        .with_context(|| format!("node {i} never answered the final top-K"))?;
        top_k.push(top);
    }
    Ok(Final {
        reads,
        top_k,
        digests,
        pii_found: Vec::new(),
        plain_found: 0,
        crashes: c.crashes.clone(),
        fail_stops: c.fail_stops,
    })
}

/// Scans every file under each node's data directory, and each node's own log, for the planted
/// values: personal ones must not be there, the plain markers beside them show the scan sees
/// plaintext.
fn scan(c: &Cluster, pii: &[String], plain: &[String]) -> (Vec<String>, usize) {
    let finder = |needles: &[String]| {
        needles
            .iter()
            .map(|n| memchr::memmem::Finder::new(n.as_bytes()).into_owned())
            .collect::<Vec<_>>()
    };
    let (pii_f, plain_f) = (finder(pii), finder(plain));
    let mut found = Vec::new();
    let mut plain_seen = std::collections::BTreeSet::new();
    let logs = c.logs();
    for (i, n) in c.nodes.iter().enumerate() {
        let mut files = Vec::new();
        let mut stack = vec![n.data_dir.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        let mut look = |what: String, bytes: &[u8]| {
            // One pass per prefix, then the exact values only where a prefix is.
            if memchr::memmem::find(bytes, b"piic").is_some() {
                for (f, v) in pii_f.iter().zip(pii) {
                    if f.find(bytes).is_some() {
                        found.push(format!("node {i}: {what} holds {v}"));
                    }
                }
            }
            if memchr::memmem::find(bytes, b"nonc").is_some() {
                for (k, f) in plain_f.iter().enumerate() {
                    if f.find(bytes).is_some() {
                        plain_seen.insert(k);
                    }
                }
            }
        };
        for f in files {
            if let Ok(bytes) = std::fs::read(&f) {
                look(f.display().to_string(), &bytes);
            }
        }
        look("its log".into(), logs[i].as_bytes());
    }
    (found, plain_seen.len())
}

/// Runs one chaos run and returns the checker's report (an error when the harness itself could
/// not do its work: a cluster that never started or never settled is also reported so).
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.out)?;
    let mut c = setup(opts)?;
    let opts = c.opts.clone();
    let history = Arc::new(History::new(Some(&opts.out.join("history.jsonl")))?);
    history.note(&format!("seed {}", opts.seed));
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(opts.seed);
    let clients: Vec<_> = (0..opts.clients)
        .map(|id| {
            let client = Client {
                id,
                nodes: c.https(),
                history: history.clone(),
                stop: stop.clone(),
                rng: Rng::new(rng.next_u64()),
                unkeyed: opts.unkeyed,
            };
            std::thread::spawn(move || client.run())
        })
        .collect();
    let nemesis_result = nemesis::schedule(&mut c, &history, &mut rng, opts.time);
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        // A client that panicked has recorded what it did; the checker goes on.
        let _ = t.join();
    }
    let settled = nemesis_result.and_then(|()| settle_and_read(&mut c, &history));
    let mut fin = match settled {
        Ok(fin) => fin,
        Err(e) => {
            // What the nodes printed is what explains a harness error: kept beside the history.
            for (i, log) in c.logs().iter().enumerate() {
                std::fs::write(opts.out.join(format!("node-{i}.log")), log)?;
            }
            return Err(e.context(format!("node logs in {}", opts.out.display())));
        }
    };
    // Crash leftovers count too: the nodes end by SIGKILL, then their disks are scanned.
    for i in 0..c.nodes.len() {
        c.kill(i);
    }
    let (sent, ops, faults) = history.snapshot();
    let pii: Vec<String> = sent.iter().map(|s| s.pii.clone()).collect();
    let plain: Vec<String> = sent.iter().map(|s| s.plain.clone()).collect();
    let (pii_found, plain_found) = scan(&c, &pii, &plain);
    fin.pii_found = pii_found;
    fin.plain_found = plain_found;
    let report = checker::check(&sent, &ops, &faults, &fin);
    if !report.passed() {
        for (i, log) in c.logs().iter().enumerate() {
            std::fs::write(opts.out.join(format!("node-{i}.log")), log)?;
        }
    }
    Ok(report)
}
