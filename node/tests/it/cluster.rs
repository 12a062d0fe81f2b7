//! Three real `veil serve` processes on loopback as one cluster: every node answers alike and
//! as a brute-force count says; a shard leader killed in the middle of keyed ingest loses
//! nothing and stores nothing twice (replica digests agree); a stopped node catches up; a wiped
//! node is restored; with two of three down, writes fail clearly and reads say partial. Four
//! processes: a node that holds no replica of some shards answers every question from the
//! replicas elsewhere, alike and as a brute-force evaluation says, moves on when one of them
//! dies, and reads its writes with strong consistency; a fourth node joining takes its share of
//! the replicas under keyed ingest and nothing is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_chaos_tests::{Ports, VeilProcess};

/// A cluster under test: its nodes' directories, ports and processes.
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key_file: PathBuf,
    pub(crate) ports: Vec<Ports>,
    pub(crate) nodes: Vec<Option<VeilProcess>>,
    /// Extra environment of each node's process.
    pub(crate) env: Vec<Vec<(String, String)>>,
    /// `--shards` of every node.
    pub(crate) shards: String,
}

const SHARDS: &str = "4";
const FORWARD_TIMEOUT_MS: &str = "4000";

pub(crate) fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub(crate) fn get(http: &str, path: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("http://{http}{path}"))
        .send()
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

pub(crate) fn post(http: &str, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
    let resp = client()
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().unwrap_or(Value::Null)))
}

/// Polls `f` until it returns Some, or panics naming `what` after `secs`.
pub(crate) fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Starts `n` nodes: the first founds the cluster, the others join through it.
    pub(crate) fn start(n: usize) -> Cluster {
        Self::start_with_env(n, |_| Vec::new())
    }

    /// Like [`Cluster::start`], node `i` with the extra environment `env(i)`.
    pub(crate) fn start_with_env(
        n: usize,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::start_with_shards(n, SHARDS, env)
    }

    /// Like [`Cluster::start_with_env`], with `shards` shards.
    pub(crate) fn start_with_shards(
        n: usize,
        shards: &str,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.toml");
        let mut c = Cluster {
            key_file,
            ports: (0..n).map(|_| Ports::free()).collect(),
            nodes: (0..n).map(|_| None).collect(),
            env: (0..n).map(env).collect(),
            shards: shards.to_string(),
            dir,
        };
        for i in 0..n {
            c.start_node(i);
        }
        // With more nodes, the replicas a joiner took are moved away from where they were:
        // every shard ends with its three placed voters.
        c.wait_replicated(n.min(3));
        c
    }

    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    pub(crate) fn node(&self, i: usize) -> &VeilProcess {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub(crate) fn http(&self, i: usize) -> String {
        self.node(i).http.clone()
    }

    pub(crate) fn start_node(&mut self, i: usize) {
        let join = format!("127.0.0.1:{}", self.ports[0].peer);
        let how: &[&str] = if i > 0 { &["--join", &join] } else { &[] };
        self.start_node_with(i, how);
    }

    /// Starts node `i` with `--await-add`: it waits, serving only its invitation, until a
    /// member adds it (`veil admin nodes add`); then [`VeilProcess::wait_ready`].
    pub(crate) fn start_awaiting(&mut self, i: usize) {
        self.start_node_with(i, &["--await-add"]);
    }

    fn start_node_with(&mut self, i: usize, how: &[&str]) {
        let key = self.key_file.display().to_string();
        let shards = self.shards.clone();
        let mut args = vec![
            "--shards",
            &shards,
            "--key-file",
            &key,
            "--forward-timeout-ms",
            FORWARD_TIMEOUT_MS,
        ];
        args.extend(how);
        let bin = Path::new(env!("CARGO_BIN_EXE_veil"));
        let node = VeilProcess::start_with_env(
            bin,
            &self.data_dir(i),
            &self.ports[i],
            &args,
            &self.env[i],
        )
        .unwrap_or_else(|e| panic!("node {i}: {}\n--- stderr ---\n{}", e.message, e.stderr));
        self.nodes[i] = Some(node);
    }

    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Waits until every shard has `voters` voters, the placed ones, and no move under way, as
    /// the first running node sees it.
    pub(crate) fn wait_replicated(&self, voters: usize) {
        let http = self.http(self.running()[0]);
        wait_for("every shard replicated where it is placed", 120, || {
            let (_, status) = get(&http, "/api/v1/cluster");
            let shards = status["shards"].as_array()?;
            shards.iter().all(|s| settled(s, voters)).then_some(())
        });
    }

    /// The node that leads `shard`, by index.
    pub(crate) fn leader_of(&self, shard: usize) -> usize {
        let http = self.http(self.running()[0]);
        let id = wait_for("a leader", 60, || {
            let (_, status) = get(&http, "/api/v1/cluster");
            status["shards"][shard]["leader"].as_u64()
        });
        self.running()
            .into_iter()
            .find(|i| self.node(*i).node_id == id)
            .expect("the leader is a running node")
    }

    /// Waits until every running node's replicas hold the same entries at the same applied
    /// index, shard by shard; returns the entries per shard.
    pub(crate) fn wait_digests_agree(&self) -> Vec<u64> {
        wait_for("replica digests to agree", 60, || {
            let per_node: Vec<Value> = self
                .running()
                .into_iter()
                .map(|i| get(&self.http(i), "/api/v1/admin/digests").1["shards"].clone())
                .collect();
            let first = &per_node[0];
            per_node.iter().all(|d| d == first).then(|| {
                first
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["entries"].as_u64().unwrap())
                    .collect()
            })
        })
    }
}

/// True when `shard` (an element of `/api/v1/cluster`'s `shards`) has `voters` voters, exactly
/// the placed ones, no learner, and a leader: no move is under way (a count alone also holds
/// before one) and none has left the shard electing.
pub(crate) fn settled(shard: &Value, voters: usize) -> bool {
    let ids = |key: &str| -> BTreeSet<u64> {
        shard[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect()
    };
    let replicas = ids("replicas");
    replicas.len() == voters
        && replicas == ids("placed")
        && ids("learners").is_empty()
        && shard["leader"]
            .as_u64()
            .is_some_and(|l| replicas.contains(&l))
}

/// The test's entries: services, levels, a searchable word in some, an email in some, an
/// exception in some; keyed when `keyed`.
pub(crate) fn entries(tag: &str, n: usize, keyed: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let level = ["INFO", "WARN", "ERROR"][i % 3];
            let mut e = json!({
                "service": format!("svc-{}", i % 5),
                "level": level,
                "message": format!("{} item {i} of {tag} for user{}@example.com",
                    if i % 4 == 0 { "payment failed" } else { "request served" }, i % 7),
                "fields": {"batch": tag, "phase": tag.trim_end_matches(|c: char| c.is_ascii_digit()), "n": i},
            });
            if i % 6 == 0 {
                e["exception"] = json!({"type": format!("E{}", i % 4), "message": "boom"});
            }
            if keyed {
                e["fields"]["idempotency_key"] = json!(format!("{tag}-{i}"));
            }
            e
        })
        .collect()
}

/// What identifies one of the test's entries, sent or stored: its batch and position.
pub(crate) fn batch_and_n(e: &Value) -> (String, u64) {
    (
        e["fields"]["batch"].as_str().unwrap().to_string(),
        e["fields"]["n"].as_u64().unwrap(),
    )
}

pub(crate) fn ingest(http: &str, batch: &[Value]) -> Result<(u16, Value), reqwest::Error> {
    post(http, "/api/v1/logs", &Value::Array(batch.to_vec()))
}

/// Sends batch `round` as a client with retries does: to the next target after each failure,
/// until every entry is acknowledged (within a minute).
pub(crate) fn ingest_until_acked(targets: &[String], round: usize, batch: &[Value]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        let target = &targets[(round + attempt) % targets.len()];
        match ingest(target, batch) {
            Ok((200, a)) if a["rejected"] == 0 => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "batch {round} never acked: {other:?}"
                );
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Every answer a node gives to the comparison questions, without the fields that differ by
/// construction (ids and timings).
fn answers(http: &str, strong: bool) -> Value {
    let consistency = if strong { "strong" } else { "any" };
    let q = |body: Value| {
        let mut body = body;
        body["consistency"] = json!(consistency);
        let (status, mut a) = post(http, "/api/v1/logs/query", &body).unwrap();
        assert_eq!(status, 200, "{a}");
        a["query_id"] = Value::Null;
        a["execution_time_ms"] = Value::Null;
        a
    };
    let (status, mut top) = get(
        http,
        &format!("/api/v1/exceptions/top-k?k=10&window=1h&consistency={consistency}"),
    );
    assert_eq!(status, 200, "{top}");
    for key in [
        "window_start",
        "window_end",
        "computed_at",
        "execution_time_ms",
    ] {
        top[key] = Value::Null;
    }
    json!({
        "text": q(json!({"query": "payment", "limit": 1000})),
        "filtered": q(json!({"filters": {"services": ["svc-1"], "levels": ["ERROR"]}, "limit": 1000})),
        "aggs": q(json!({"limit": 0, "aggs": {"s": {"terms": {"field": "service", "size": 10}}}})),
        "top_k": top["exceptions"].clone(),
    })
}

#[test]
fn three_nodes_answer_alike_and_lose_nothing_when_a_leader_dies() {
    let mut c = Cluster::start(3);
    // The same batch shape through each node.
    let mut sent = Vec::new();
    for i in 0..3 {
        let batch = entries(&format!("b{i}"), 120, i == 1);
        let (status, answer) = ingest(&c.http(i), &batch).unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], 120, "{answer}");
        sent.extend(batch);
    }
    // Strong reads on every node see every acknowledged entry at once.
    let reference = answers(&c.http(0), true);
    let payment = sent
        .iter()
        .filter(|e| e["message"].as_str().unwrap().starts_with("payment"))
        .count();
    assert_eq!(reference["text"]["total"], payment, "{}", reference["text"]);
    let filtered = sent
        .iter()
        .filter(|e| e["service"] == "svc-1" && e["level"] == "ERROR")
        .count();
    assert_eq!(reference["filtered"]["total"], filtered);
    let mut per_service = BTreeMap::<String, u64>::new();
    for e in &sent {
        *per_service
            .entry(e["service"].as_str().unwrap().into())
            .or_default() += 1;
    }
    let buckets: BTreeMap<String, u64> = reference["aggs"]["aggregations"]["s"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().into(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets, per_service);
    let mut per_exception = BTreeMap::<String, u64>::new();
    for e in sent.iter().filter(|e| e.get("exception").is_some()) {
        *per_exception
            .entry(e["exception"]["type"].as_str().unwrap().into())
            .or_default() += 1;
    }
    let mut counted = BTreeMap::<String, u64>::new();
    for x in reference["top_k"].as_array().unwrap() {
        *counted
            .entry(x["exception_type"].as_str().unwrap().into())
            .or_default() += x["count"].as_u64().unwrap();
    }
    assert_eq!(counted, per_exception);
    // No stored entry holds the plaintext email; every node hashes it to the same token.
    assert!(!reference["text"].to_string().contains("@example.com"));
    for i in 1..3 {
        assert_eq!(
            answers(&c.http(i), true),
            reference,
            "node {i} answers otherwise"
        );
    }
    c.wait_digests_agree();
    // Only leaders index; followers copy their commits. A default read anywhere reaches the
    // same answers once the copies arrive, and the followers did install copies.
    for i in 0..3 {
        wait_for("default reads to see the copied commits", 60, || {
            (answers(&c.http(i), false) == reference).then_some(())
        });
    }
    let copies: u64 = (0..3)
        .map(|i| metric(&c.http(i), "veil_index_copies_installed_total"))
        .sum();
    assert!(copies > 0, "no follower copied an index commit");
    // The gRPC twin of GET /api/v1/cluster names the same members and replicas.
    let (_, http_view) = get(&c.http(1), "/api/v1/cluster");
    let grpc_addr = c.node(1).grpc.clone();
    let grpc_view = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut client =
                veil_proto::v1::veil_client::VeilClient::connect(format!("http://{grpc_addr}"))
                    .await
                    .unwrap();
            client
                .cluster(veil_proto::v1::ClusterRequest {})
                .await
                .unwrap()
                .into_inner()
        });
    assert_eq!(grpc_view.nodes.len(), 3);
    assert!(grpc_view.nodes.iter().all(|n| n.state == "up"));
    assert_eq!(grpc_view.cluster_id, http_view["cluster_id"]);
    for (g, h) in grpc_view
        .shards
        .iter()
        .zip(http_view["shards"].as_array().unwrap())
    {
        let replicas: Vec<u64> = h["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect();
        assert_eq!(g.replicas, replicas);
    }

    // Keyed ingest with client retries while the leader of shard 0 is killed with -9.
    let victim = c.leader_of(0);
    let targets: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| c.http(i)).collect();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for round in 0..30 {
            let batch = entries(&format!("k{round}"), 20, true);
            ingest_until_acked(&targets, round, &batch);
            acked.extend(batch);
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    c.nodes[victim].as_mut().unwrap().kill9();
    c.nodes[victim] = None;
    let acked = writer.join().unwrap();
    c.start_node(victim);
    let survivor = c.http(c.running()[0]);
    let (status, keyed) = post(
        &survivor,
        "/api/v1/logs/query",
        &json!({"filters": {"fields": {"phase": "k"}}, "limit": 1000, "consistency": "strong"}),
    )
    .unwrap();
    assert_eq!(status, 200, "{keyed}");
    let logs = keyed["logs"].as_array().unwrap();
    // A keyed entry's log_id is its key's: distinct ids are distinct keys.
    let ids: BTreeSet<&str> = logs.iter().map(|l| l["log_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), logs.len(), "an entry stored twice");
    let stored: BTreeSet<(String, u64)> = logs.iter().map(batch_and_n).collect();
    let want: BTreeSet<(String, u64)> = acked.iter().map(batch_and_n).collect();
    assert_eq!(stored, want, "acknowledged and stored differ");
    assert_eq!(logs.len(), acked.len());
    let held = c.wait_digests_agree();
    assert_eq!(held.iter().sum::<u64>() as usize, sent.len() + acked.len());

    // A stopped node misses writes, restarts and catches up.
    let stopped_id = c.node(2).node_id;
    c.nodes[2].as_mut().unwrap().stop();
    c.nodes[2] = None;
    // A stopping node hands its leaderships over before it exits: none is left with it.
    let (_, status) = get(&c.http(0), "/api/v1/cluster");
    for s in status["shards"].as_array().unwrap() {
        assert_ne!(s["leader"], stopped_id, "{status}");
    }
    let more = entries("late", 50, true);
    let (status, answer) = ingest(&c.http(0), &more).unwrap();
    assert_eq!(status, 200, "{answer}");
    c.start_node(2);
    let (_, late) = post(
        &c.http(2),
        "/api/v1/logs/query",
        &json!({"filters": {"fields": {"batch": "late"}}, "limit": 0, "consistency": "strong"}),
    )
    .unwrap();
    assert_eq!(late["total"], 50, "{late}");
    c.wait_digests_agree();

    // Two of three down: writes fail with a retryable 503, reads say partial.
    for i in [0, 1] {
        c.nodes[i].as_mut().unwrap().kill9();
        c.nodes[i] = None;
    }
    let alone = c.http(2);
    let (status, answer) = ingest(&alone, &entries("lost", 5, true)).unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "shard_unavailable", "{answer}");
    // Each shard counts as stale once its leader has been silent for an election timeout: the
    // shards get there one by one, within seconds.
    let partial = wait_for("reads to say partial, every shard stale", 30, || {
        let (_, a) = post(&alone, "/api/v1/logs/query", &json!({"limit": 0})).unwrap();
        (a["partial"] == true && a["shards"]["stale"] == 4).then_some(a)
    });
    assert_eq!(partial["shards"]["stale"], 4, "{partial}");
    let (status, health) = get(&alone, "/api/v1/health");
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unavailable");
}

/// Four nodes' entries: eight services, three levels, one second apart going back from
/// `newest_us`, a searchable word in a quarter, an exception of three types in a fifth.
fn timed_entries(tag: &str, n: usize, newest_us: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let level = ["INFO", "WARN", "ERROR"][i % 3];
            let mut e = json!({
                "timestamp": rfc3339(newest_us - i as i64 * 1_000_000),
                "service": format!("svc-{}", i % 8),
                "level": level,
                "message": format!("{} item {i} of {tag}",
                    if i % 4 == 0 { "payment failed" } else { "request served" }),
                "fields": {"batch": tag, "n": i},
            });
            if i % 5 == 0 {
                e["exception"] = json!({"type": format!("E{}", i % 3), "message": "boom"});
            }
            e
        })
        .collect()
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn ts_us(e: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        e["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// The test's questions, each with the answer a brute-force evaluation of `sent` gives (what
/// of the answer it decides), over the window `start..=end`.
struct Questions<'a> {
    sent: &'a [Value],
    start: String,
    end: String,
}

impl Questions<'_> {
    /// Every answer `http` gives, as JSON without what differs by construction (ids, timings);
    /// `consistency` is `strong` or `any`.
    fn answers(&self, http: &str, consistency: &str) -> Value {
        let q = |body: Value| {
            let mut body = body;
            body["consistency"] = json!(consistency);
            let (status, mut a) = post(http, "/api/v1/logs/query", &body).unwrap();
            assert_eq!(status, 200, "{a}");
            a["query_id"] = Value::Null;
            a["execution_time_ms"] = Value::Null;
            a
        };
        let g = |path: String| {
            let (status, mut a) = get(http, &format!("{path}&consistency={consistency}"));
            assert_eq!(status, 200, "{path}: {a}");
            a["execution_time_ms"] = Value::Null;
            a
        };
        let window = format!("start={}&end={}", self.start, self.end);
        // Pages of 37, oldest first, following the cursors to the end.
        let mut pages = Vec::new();
        let mut after = Value::Null;
        loop {
            let page = q(
                json!({"sort": {"field": "timestamp", "order": "asc"}, "limit": 37,
                                "search_after": after}),
            );
            after = page["search_after"].clone();
            pages.push(page);
            if after.is_null() {
                break;
            }
            assert!(pages.len() <= 20, "cursors never end");
        }
        let top = g(format!("/api/v1/exceptions/top-k?k=10&{window}"));
        let first = |top: &Value| {
            top["exceptions"][0]["exception_id"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        };
        let top_error = g(format!("/api/v1/exceptions/top-k?k=5&level=ERROR&{window}"));
        json!({
            "text": q(json!({"query": "payment", "limit": 1000})),
            "filtered": q(json!({"filters": {"services": ["svc-1", "svc-3"], "levels": ["ERROR"],
                                             "fields": {"n": {"gte": 100}}}, "limit": 1000})),
            "planned": q(json!({"filters": {"services": ["svc-2"],
                "timestamp_range": {"start": self.start, "end": self.end}}, "limit": 1000})),
            "aggs": q(json!({"limit": 0, "aggs": {
                "s": {"terms": {"field": "service", "size": 20},
                      "aggs": {"n": {"stats": {"field": "n"}}}},
                "m": {"date_histogram": {"field": "timestamp", "fixed_interval": "1m"}}}})),
            "pages": pages,
            "top_k": top,
            "details": g(format!("/api/v1/exceptions/{}?{window}", first(&top))),
            "details_error": g(format!("/api/v1/exceptions/{}?level=ERROR&{window}", first(&top_error))),
            "top_k_error": top_error,
            "top_k_services": g(format!("/api/v1/exceptions/top-k?k=5&service=svc-0,svc-5&{window}")),
        })
    }

    /// Checks `a` (from [`Questions::answers`]) against the brute-force evaluation.
    fn check(&self, a: &Value) {
        let sent = self.sent;
        let n_of = |e: &Value| e["fields"]["n"].as_u64().unwrap();
        let matched =
            |a: &Value| -> Vec<u64> { a["logs"].as_array().unwrap().iter().map(n_of).collect() };
        // Newest first: the order of n.
        let want = |keep: &dyn Fn(&Value) -> bool| -> Vec<u64> {
            sent.iter().filter(|e| keep(e)).map(n_of).collect()
        };
        for (name, keep) in [
            (
                "text",
                &(|e: &Value| e["message"].as_str().unwrap().starts_with("payment"))
                    as &dyn Fn(&Value) -> bool,
            ),
            ("filtered", &|e: &Value| {
                ["svc-1", "svc-3"].contains(&e["service"].as_str().unwrap())
                    && e["level"] == "ERROR"
                    && n_of(e) >= 100
            }),
            ("planned", &|e: &Value| e["service"] == "svc-2"),
        ] {
            let want = want(keep);
            assert!(!want.is_empty(), "{name} matches something");
            assert_eq!(a[name]["total"], want.len(), "{name}: {}", a[name]);
            assert_eq!(matched(&a[name]), want, "{name}");
            let shards = &a[name]["shards"];
            assert_eq!(
                (shards["failed"].as_u64(), shards["timed_out"].as_u64()),
                (Some(0), Some(0)),
                "{name}: {shards}"
            );
            assert_eq!(a[name]["partial"], false, "{name}");
        }
        // Paging: every entry once, oldest first.
        let paged: Vec<u64> = a["pages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(matched)
            .collect();
        let mut oldest_first = want(&|_| true);
        oldest_first.reverse();
        assert_eq!(paged, oldest_first);
        // Aggregations.
        let aggs = &a["aggs"]["aggregations"];
        let mut per_service = BTreeMap::<String, (u64, u64, u64, u64)>::new();
        for e in sent {
            let s = per_service
                .entry(e["service"].as_str().unwrap().into())
                .or_insert((0, 0, u64::MAX, 0));
            let n = n_of(e);
            *s = (s.0 + 1, s.1 + n, s.2.min(n), s.3.max(n));
        }
        let got: BTreeMap<String, (u64, u64, u64, u64)> = aggs["s"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let n = &b["n"];
                (
                    b["key"].as_str().unwrap().into(),
                    (
                        b["doc_count"].as_u64().unwrap(),
                        n["sum"].as_f64().unwrap() as u64,
                        n["min"].as_f64().unwrap() as u64,
                        n["max"].as_f64().unwrap() as u64,
                    ),
                )
            })
            .collect();
        assert_eq!(got, per_service);
        let mut per_minute = BTreeMap::<i64, u64>::new();
        for e in sent {
            *per_minute
                .entry(ts_us(e).div_euclid(60_000_000) * 60_000)
                .or_default() += 1;
        }
        let got: BTreeMap<i64, u64> = aggs["m"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["doc_count"].as_u64() != Some(0))
            .map(|b| {
                (
                    b["key"].as_f64().unwrap() as i64,
                    b["doc_count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, per_minute);
        // Top-K: the oracle ranks (exception id, count) by count, then latest last seen, then id.
        let top = |keep: &dyn Fn(&Value) -> bool, k: usize| -> Vec<(String, u64)> {
            let mut by_id = BTreeMap::<u64, (u64, i64)>::new();
            for e in sent
                .iter()
                .filter(|e| e.get("exception").is_some() && keep(e))
            {
                let id = veil_shard::exceptions::exception_id(
                    e["exception"]["type"].as_str().unwrap(),
                    e["service"].as_str().unwrap(),
                );
                let x = by_id.entry(id).or_insert((0, i64::MIN));
                *x = (x.0 + 1, x.1.max(ts_us(e)));
            }
            let mut ranked: Vec<(u64, (u64, i64))> = by_id.into_iter().collect();
            ranked.sort_by(|a, b| {
                b.1 .0
                    .cmp(&a.1 .0)
                    .then(b.1 .1.cmp(&a.1 .1))
                    .then(a.0.cmp(&b.0))
            });
            ranked
                .into_iter()
                .take(k)
                .map(|(id, (c, _))| (format!("{id:016x}"), c))
                .collect()
        };
        let ranked = |a: &Value| -> Vec<(String, u64)> {
            a["exceptions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["exception_id"].as_str().unwrap().into(),
                        x["count"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        let all_top = top(&|_| true, 10);
        assert_eq!(ranked(&a["top_k"]), all_top);
        assert_eq!(
            ranked(&a["top_k_error"]),
            top(&|e| e["level"] == "ERROR", 5)
        );
        assert_eq!(
            ranked(&a["top_k_services"]),
            top(
                &|e| ["svc-0", "svc-5"].contains(&e["service"].as_str().unwrap()),
                5
            )
        );
        // Details of the first: its count, and samples that are its own entries.
        let (first, count) = &all_top[0];
        let d = &a["details"];
        assert_eq!(
            (d["exception_id"].as_str(), d["count"].as_u64()),
            (Some(first.as_str()), Some(*count)),
            "{d}"
        );
        let samples = d["sample_logs"].as_array().unwrap();
        assert_eq!(samples.len() as u64, (*count).min(3), "{d}");
        for sample in samples {
            let id = veil_shard::exceptions::exception_id(
                sample["exception_type"].as_str().unwrap(),
                sample["service_name"].as_str().unwrap(),
            );
            assert_eq!(&format!("{id:016x}"), first, "{sample}");
        }
        let (first_error, count) = &top(&|e| e["level"] == "ERROR", 1)[0];
        let d = &a["details_error"];
        assert_eq!(
            (d["exception_id"].as_str(), d["count"].as_u64()),
            (Some(first_error.as_str()), Some(*count)),
            "{d}"
        );
    }
}

/// The shards whose voters, as `http` (a node holding every shard) sees them, exclude node `id`.
fn shards_without(http: &str, id: u64) -> Vec<u64> {
    let (_, status) = get(http, "/api/v1/cluster");
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["replicas"].as_array().unwrap().contains(&json!(id)))
        .map(|s| s["shard"].as_u64().unwrap())
        .collect()
}

/// A counter of `http`'s `/metrics`.
pub(crate) fn metric(http: &str, name: &str) -> u64 {
    let text = client()
        .get(format!("http://{http}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
}

/// Issue 22: four nodes, so the fourth holds no replica of some shards. Every node answers
/// every question (search, filters, planned shards, aggregations, cursor paging, top-K plain
/// and filtered, details) alike and as the oracle says, the fourth from the replicas
/// elsewhere; it moves on when the replica it asks first is killed; and a strong read through
/// it sees every entry acknowledged before.
#[test]
fn four_nodes_answer_alike_from_replicas_here_or_elsewhere() {
    let mut c = Cluster::start(4);
    let asker = 3;
    let asker_id = c.node(asker).node_id;
    let lacking = shards_without(&c.http(0), asker_id);
    assert!(
        !lacking.is_empty(),
        "node {asker_id} holds every shard: nothing is asked elsewhere"
    );
    let newest = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64)
        - 60_000_000;
    let sent = timed_entries("f", 400, newest);
    let map = veil_shard::ShardMap::new(SHARDS.parse().unwrap());
    // How many of `batch` lie on shards the asker lacks.
    let routed_elsewhere = |batch: &[Value]| {
        batch
            .iter()
            .filter(|e| {
                let hour = veil_shard::hour_of(ts_us(e));
                let shard = map.shard_for(e["service"].as_str().unwrap(), hour);
                lacking.contains(&u64::from(shard.0))
            })
            .count()
    };
    assert!(
        routed_elsewhere(&sent) > 0,
        "no entry lies on a shard node {asker_id} lacks"
    );
    // Its health is about the shards it holds: those placed elsewhere are not "lost".
    let (status, health) = get(&c.http(asker), "/api/v1/health");
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    // Its cluster view names every shard's replicas as a holder does: those it lacks are
    // reported by a node that holds them.
    let (_, through_asker) = get(&c.http(asker), "/api/v1/cluster");
    let (_, through_first) = get(&c.http(0), "/api/v1/cluster");
    let pairs = through_asker["shards"]
        .as_array()
        .unwrap()
        .iter()
        .zip(through_first["shards"].as_array().unwrap());
    for (a, b) in pairs {
        assert_eq!(
            (&a["replicas"], &a["leader"]),
            (&b["replicas"], &b["leader"]),
            "{a} / {b}"
        );
        if lacking.contains(&a["shard"].as_u64().unwrap()) {
            assert_ne!(a["reported_by"], json!(asker_id), "{a}");
        }
    }
    let (status, answer) = ingest(&c.http(0), &sent).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 400, "{answer}");
    let questions = Questions {
        sent: &sent,
        start: rfc3339(newest - 600_000_000),
        end: rfc3339(newest + 1_000_000),
    };
    // Strong: every node at once, alike, and as the oracle says.
    let reference = questions.answers(&c.http(asker), "strong");
    questions.check(&reference);
    for i in 0..4 {
        assert_eq!(
            questions.answers(&c.http(i), "strong"),
            reference,
            "node {i} answers otherwise"
        );
    }
    assert!(metric(&c.http(asker), "veil_shard_questions_sent_total") > 0);
    // The default reads replicas as they are: alike once every replica has indexed the batch.
    for i in 0..4 {
        wait_for("default reads to agree", 30, || {
            (questions.answers(&c.http(i), "any") == reference).then_some(())
        });
    }
    // Each other holder of a shard the asker lacks dies in turn: the asker asks the next
    // replica, and answers as before.
    let retries_before = metric(&c.http(asker), "veil_shard_question_retries_total");
    for victim in 0..3 {
        c.nodes[victim].as_mut().unwrap().kill9();
        c.nodes[victim] = None;
        wait_for("the asker to answer without the dead replica", 30, || {
            (questions.answers(&c.http(asker), "any") == reference).then_some(())
        });
        c.start_node(victim);
    }
    assert!(
        metric(&c.http(asker), "veil_shard_question_retries_total") > retries_before,
        "no question moved on to another replica"
    );
    // Read-your-writes through the node without the replicas: written through it (each part
    // forwarded to its shard's leader, found through the shard's replicas), acknowledged,
    // then counted.
    let late = timed_entries("late", 200, newest + 500_000);
    assert!(routed_elsewhere(&late) > 0);
    let (status, answer) = ingest(&c.http(asker), &late).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 200, "{answer}");
    let (status, seen) = post(
        &c.http(asker),
        "/api/v1/logs/query",
        &json!({"filters": {"fields": {"batch": "late"}}, "limit": 0, "consistency": "strong"}),
    )
    .unwrap();
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["total"], 200, "{seen}");
    assert_eq!(seen["shards"]["failed"], 0, "{seen}");
    let all: Vec<Value> = sent.iter().chain(&late).cloned().collect();
    let (status, top) = get(
        &c.http(asker),
        &format!(
            "/api/v1/exceptions/top-k?k=100&consistency=strong&start={}&end={}",
            questions.start,
            rfc3339(newest + 2_000_000)
        ),
    );
    assert_eq!(status, 200, "{top}");
    let counted: u64 = top["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted as usize,
        all.iter().filter(|e| e.get("exception").is_some()).count(),
        "{top}"
    );
}

#[test]
fn a_wiped_node_is_restored_through_a_snapshot() {
    let mut c = Cluster::start(3);
    // A custom PII pattern, added through node 1: the cluster's, so the wiped node gets it back.
    let (status, pattern) = post(
        &c.http(0),
        "/api/v1/admin/pii-patterns",
        &json!({"pattern_type": "badge", "regex_pattern": r"\bBDG[0-9]{4}\b"}),
    )
    .unwrap();
    assert_eq!(status, 201, "{pattern}");
    let batch = entries("w", 300, true);
    let (status, answer) = ingest(&c.http(0), &batch).unwrap();
    assert_eq!(status, 200, "{answer}");
    c.wait_digests_agree();
    // Snapshots everywhere and the Raft logs purged behind them: only a snapshot can restore.
    for i in 0..3 {
        let (status, report) = post(&c.http(i), "/api/v1/admin/compact", &json!({})).unwrap();
        assert_eq!(status, 200, "{report}");
    }
    let wiped = 2;
    let id = c.node(wiped).node_id;
    c.nodes[wiped].as_mut().unwrap().kill9();
    c.nodes[wiped] = None;
    std::fs::remove_dir_all(c.data_dir(wiped)).unwrap();
    c.start_node(wiped);
    assert_eq!(
        c.node(wiped).node_id,
        id,
        "the same peer address rejoins as the same node"
    );
    // A strong read answers 503 (retry) while the wiped replica is still being restored; once
    // it answers, it holds everything.
    let restored = wait_for("the wiped node's strong read", 120, || {
        let (status, a) = post(
            &c.http(wiped),
            "/api/v1/logs/query",
            &json!({"limit": 0, "consistency": "strong", "timeout_ms": 5000}),
        )
        .ok()?;
        (status == 200).then_some(a)
    });
    assert_eq!(restored["total"], 300, "{restored}");
    assert_eq!(restored["partial"], false, "{restored}");
    let held = c.wait_digests_agree();
    assert_eq!(held.iter().sum::<u64>(), 300);
    let (_, metrics) = {
        let resp = client()
            .get(format!("http://{}/metrics", c.http(wiped)))
            .send()
            .unwrap();
        (resp.status(), resp.text().unwrap())
    };
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("veil_raft_snapshots_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the snapshots-received counter");
    assert!(received >= 1, "restored without a snapshot?\n{metrics}");

    // Every node masks with the pattern, the restored one included.
    let badge = |i: usize, n: u32| {
        let e = json!({"service": "badges", "message": format!("badge BDG{n:04} scanned")});
        let (status, answer) = post(&c.http(i), "/api/v1/logs", &e).unwrap();
        assert_eq!(status, 200, "{answer}");
        answer["pii_detected"].clone()
    };
    for i in 0..3 {
        assert_eq!(
            badge(i, 1000 + i as u32),
            json!(["badge"]),
            "through node {}",
            i + 1
        );
    }
    // Deleted through node 2: every node stops applying it once it has applied the delete.
    let id = pattern["pattern_id"].as_str().unwrap();
    let resp = client()
        .delete(format!(
            "http://{}/api/v1/admin/pii-patterns/{id}",
            c.http(1)
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    for i in 0..3 {
        wait_for("the delete to reach every node", 30, || {
            let (_, list) = get(&c.http(i), "/api/v1/admin/pii-patterns");
            list["patterns"].as_array()?.is_empty().then_some(())
        });
        assert_eq!(
            badge(i, 2000 + i as u32),
            json!([]),
            "through node {}",
            i + 1
        );
    }
}

/// A `veil cluster up` process; if the test fails first, it is sent SIGTERM (so it stops its
/// nodes, which a SIGKILL would leave running) and waited for.
pub(crate) struct Up(pub(crate) std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        // Cleanup on the way out; the process may already be gone.
        if let Ok(None) = self.0.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
        }
        let _ = self.0.wait();
    }
}

/// Runs `veil cluster up` until it says `cluster ready`; returns the process and its node lines.
pub(crate) fn cluster_up(dir: &Path, base: u16) -> (Up, Vec<String>) {
    use std::io::BufRead;
    let mut child = Up(std::process::Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["cluster", "up", "--nodes", "3", "--dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string(), "--", "--shards", SHARDS])
        // Leader balance is off by default (see `cluster/leaders.rs`); this test turns it on.
        .args(["--leader-balance-interval-ms", "5000"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("veil cluster up said cluster ready");
        if line == "cluster ready" {
            return (child, lines);
        }
        lines.push(line);
    }
}

pub(crate) fn sigterm_and_wait(up: &mut Up) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = up.0.wait().unwrap();
    assert!(exit.success(), "veil cluster up exited with {exit}");
}

/// A base port for `cluster up`'s three nodes: base, base+10 and base+20, each with the next
/// two, all free now.
pub(crate) fn free_base() -> u16 {
    loop {
        let p = Ports::free();
        let free = [10u16, 11, 12, 20, 21, 22]
            .iter()
            .all(|d| std::net::TcpListener::bind(("127.0.0.1", p.http + d)).is_ok());
        if free {
            break p.http;
        }
    }
}

#[test]
fn cluster_up_starts_three_nodes_and_restarts_them_on_the_same_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (mut up, lines) = cluster_up(dir.path(), base);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        let port = base + 10 * i as u16;
        assert_eq!(
            line,
            &format!(
                "node {} http=127.0.0.1:{port} grpc=127.0.0.1:{} peer=127.0.0.1:{}",
                i + 1,
                port + 1,
                port + 2
            )
        );
    }
    let http = format!("127.0.0.1:{}", base + 10);
    let (_, status) = get(&http, "/api/v1/cluster");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    // The founder led every shard at first; the balancer spreads the leaders (4 shards over 3
    // nodes: 2, 1, 1).
    let balanced = |http: &str| {
        wait_for("leaders spread over the nodes", 90, || {
            let (_, status) = get(http, "/api/v1/cluster");
            let mut counts = [0usize; 3];
            for s in status["shards"].as_array()? {
                counts[(s["leader"].as_u64()? - 1) as usize] += 1;
            }
            counts.sort_unstable();
            (counts == [1, 1, 2]).then_some(())
        })
    };
    balanced(&http);
    let (code, answer) = ingest(&http, &entries("up", 10, true)).unwrap();
    assert_eq!(code, 200, "{answer}");
    sigterm_and_wait(&mut up);
    // Run again: the same nodes on the same addresses, with what they held.
    let (mut up, again) = cluster_up(dir.path(), base);
    assert_eq!(again, lines);
    let (_, held) = post(
        &format!("127.0.0.1:{base}"),
        "/api/v1/logs/query",
        &json!({"limit": 0, "consistency": "strong"}),
    )
    .unwrap();
    assert_eq!(held["total"], 10, "{held}");
    // And again after the restart.
    balanced(&http);
    sigterm_and_wait(&mut up);
}

/// libfaketime, which `.ci/setup` installs: a process's wall clock shifted, its monotonic clock
/// (timers, Raft) not.
fn clock_ahead(offset: &str) -> Vec<(String, String)> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        std::fs::metadata(lib).is_ok(),
        "{lib} is missing: run `bash .ci/setup` (it installs libfaketime)"
    );
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Issue 22: an entry without a timestamp is routed by the hour it arrives in. Its keyed retry
/// sent to a node whose clock is an hour ahead, and which holds no replica of the shard the
/// first copy went to, still finds that copy (asked of the shard's replicas) and is stored once.
#[test]
fn a_keyed_retry_to_a_node_an_hour_ahead_without_the_first_copy_s_shard_is_stored_once() {
    let c = Cluster::start_with_env(4, |i| {
        if i == 3 {
            clock_ahead("+1h")
        } else {
            Vec::new()
        }
    });
    let ahead = 3;
    let lacking = shards_without(&c.http(0), c.node(ahead).node_id);
    assert!(!lacking.is_empty(), "node 4 holds every shard");
    let map = veil_shard::ShardMap::new(SHARDS.parse().unwrap());
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let (here, there) = (
        veil_shard::hour_of(now_us),
        veil_shard::hour_of(now_us + 3_600_000_000),
    );
    // A service whose entry goes, this hour, to a shard node 4 lacks, and next hour elsewhere.
    let service = (0..1000)
        .map(|i| format!("skewed-{i}"))
        .find(|s| {
            let first = map.shard_for(s, here);
            lacking.contains(&u64::from(first.0)) && map.shard_for(s, there) != first
        })
        .expect("some service name routes so");
    let entry =
        json!({"service": service, "message": "paid", "fields": {"idempotency_key": "pay-1"}});
    let (status, first) = post(&c.http(0), "/api/v1/logs", &entry).unwrap();
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("accepted")),
        "{first}"
    );
    let (status, retry) = post(&c.http(ahead), "/api/v1/logs", &entry).unwrap();
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["status"], "duplicate", "{retry}");
    assert_eq!(retry["log_id"], first["log_id"]);
    for i in 0..4 {
        let (_, held) = post(
            &c.http(i),
            "/api/v1/logs/query",
            &json!({"filters": {"services": [service]}, "consistency": "strong"}),
        )
        .unwrap();
        assert_eq!(held["total"], 1, "through node {}: {held}", i + 1);
    }
}

/// Each shard's voters, learners and what `/api/v1/cluster` through `http` says.
pub(crate) fn memberships(http: &str) -> Vec<(BTreeSet<u64>, usize)> {
    let (_, status) = get(http, "/api/v1/cluster");
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let voters = s["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap());
            (
                voters.collect(),
                s["learners"].as_array().map_or(0, Vec::len),
            )
        })
        .collect()
}

/// Issue 24: a fourth node, started with `--await-add`, is added to a three-node cluster of 16
/// shards by `veil admin nodes add --wait` under keyed ingest with client retries. It gets its share, about 3·16/4 = 12 replicas (each one replica moved: added
/// as a learner, caught up, made a voter, then the old one removed), every shard ends with
/// exactly three voters, and every acknowledged entry is there once, alike on every replica and
/// through every node.
#[test]
fn a_fourth_node_takes_its_share_of_the_replicas_and_nothing_is_lost() {
    // 16 shards, three nodes first.
    let mut c = {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.toml");
        Cluster {
            key_file,
            ports: (0..4).map(|_| Ports::free()).collect(),
            nodes: (0..4).map(|_| None).collect(),
            env: (0..4).map(|_| Vec::new()).collect(),
            shards: "16".into(),
            dir,
        }
    };
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_replicated(3);
    let before = memberships(&c.http(0));
    let targets: Vec<String> = (0..3).map(|i| c.http(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut round = 0;
        while !writing.load(Ordering::Relaxed) || round < 5 {
            let batch = entries(&format!("m{round}"), 20, true);
            ingest_until_acked(&targets, round, &batch);
            acked.extend(batch);
            round += 1;
        }
        acked
    });
    // The fourth node awaits its invitation: not serving yet, and saying so.
    c.start_awaiting(3);
    let awaiting = c.http(3);
    let (code, health) = get(&awaiting, "/api/v1/health");
    assert_eq!(
        (code, health["status"].as_str()),
        (503, Some("awaiting_add")),
        "{health}"
    );
    let (code, asked) = get(&awaiting, "/api/v1/cluster");
    assert_eq!(
        (code, asked["error"]["code"].as_str()),
        (503, Some("awaiting_add")),
        "{asked}"
    );
    // `veil admin nodes add` through another member: it joins, takes its share, and the
    // command returns once every shard has its placed voters.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["admin", "--addr", &c.http(1), "nodes", "add", &awaiting])
        .args(["--wait", "--wait-timeout-secs", "180", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    c.nodes[3].as_mut().unwrap().wait_ready().unwrap();
    let newcomer = c.node(3).node_id;
    assert_eq!(added["node_id"], newcomer, "{added}");
    assert_eq!(added["http_addr"], awaiting, "{added}");
    assert_eq!(added["membership"], "active", "{added}");
    assert_eq!(
        added["cluster_id"],
        get(&c.http(0), "/api/v1/cluster").1["cluster_id"],
        "{added}"
    );
    let after = wait_for(
        "every shard at exactly its three placed voters, the newcomer among some",
        180,
        || {
            let (_, status) = get(&c.http(0), "/api/v1/cluster");
            let shards = status["shards"].as_array()?;
            let placed_here = shards.iter().any(|s| {
                s["placed"]
                    .as_array()
                    .is_some_and(|p| p.contains(&json!(newcomer)))
            });
            let done = placed_here && shards.iter().all(|s| settled(s, 3));
            done.then(|| memberships(&c.http(0)))
        },
    );
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().unwrap();
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.0 != a.0)
        .count();
    let held_by_newcomer = after.iter().filter(|(v, _)| v.contains(&newcomer)).count();
    // Each moved shard swapped one replica for the newcomer: its share is what moved, and
    // what `nodes add --wait` reported.
    assert_eq!(moved, held_by_newcomer, "{before:?} -> {after:?}");
    assert_eq!(added["replicas"], held_by_newcomer, "{added}");
    eprintln!(
        "3 -> 4 nodes, 16 shards: {moved} replicas moved, {} entries acknowledged meanwhile",
        acked.len()
    );
    assert!(
        (1..=15).contains(&moved),
        "{moved} replicas moved; 3·16/4 = 12, within 25 % above is at most 15"
    );
    // Every acknowledged entry once, through every node, with strong reads.
    let want: BTreeSet<(String, u64)> = acked.iter().map(batch_and_n).collect();
    for i in 0..4 {
        let (status, keyed) = post(
            &c.http(i),
            "/api/v1/logs/query",
            &json!({"filters": {"fields": {"phase": "m"}}, "limit": 10000, "consistency": "strong"}),
        )
        .unwrap();
        assert_eq!(status, 200, "{keyed}");
        let logs = keyed["logs"].as_array().unwrap();
        let ids: BTreeSet<&str> = logs.iter().map(|l| l["log_id"].as_str().unwrap()).collect();
        assert_eq!(
            ids.len(),
            logs.len(),
            "an entry stored twice (node {})",
            i + 1
        );
        let stored: BTreeSet<(String, u64)> = logs.iter().map(batch_and_n).collect();
        assert_eq!(stored, want, "through node {}", i + 1);
        assert_eq!(keyed["total"].as_u64(), Some(want.len() as u64));
    }
    // Alike on every replica: each shard's digest on each of its voters.
    let ids: Vec<u64> = (0..4).map(|i| c.node(i).node_id).collect();
    wait_for("every shard's voters to hold the same entries", 60, || {
        let digests: Vec<Value> = (0..4)
            .map(|i| get(&c.http(i), "/api/v1/admin/digests").1["shards"].clone())
            .collect();
        after
            .iter()
            .enumerate()
            .all(|(shard, (voters, _))| {
                let of = |id: &u64| {
                    let i = ids.iter().position(|x| x == id).unwrap();
                    let d = &digests[i][shard];
                    (d["digest"].clone(), d["entries"].clone())
                };
                let mut v = voters.iter();
                let first = of(v.next().unwrap());
                v.all(|id| of(id) == first)
            })
            .then_some(())
    });
}
