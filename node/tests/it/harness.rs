//! A real `veil serve` process for a test (the shared harness of `veil-chaos-tests`), plus the
//! HTTP helpers these tests use.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_chaos_tests::{StartError, VeilProcess};

/// A running node started from this package's `veil` binary.
pub struct Veil(VeilProcess);

impl Deref for Veil {
    type Target = VeilProcess;
    fn deref(&self) -> &VeilProcess {
        &self.0
    }
}

impl DerefMut for Veil {
    fn deref_mut(&mut self) -> &mut VeilProcess {
        &mut self.0
    }
}

impl Veil {
    /// Starts a node on free ports with its data in `data_dir` (4 shards unless `extra` sets
    /// `--shards` or a `--config` file).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Veil {
        Self::try_start(data_dir, extra)
            .unwrap_or_else(|e| panic!("{}\n--- stderr ---\n{}", e.message, e.stderr))
    }

    /// Starts a node; on failure returns the reason and the node's stderr.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Veil, StartError> {
        let mut args = extra.to_vec();
        if !extra.contains(&"--shards") && !extra.contains(&"--config") {
            args.extend(["--shards", "4"]);
        }
        VeilProcess::start(Path::new(env!("CARGO_BIN_EXE_veil")), data_dir, &args).map(Veil)
    }

    /// Like [`Veil::start`] on the given ports (a node a client must reach before it is up).
    pub fn start_on(data_dir: &Path, ports: &veil_chaos_tests::Ports, extra: &[&str]) -> Veil {
        let mut args = extra.to_vec();
        if !extra.contains(&"--shards") && !extra.contains(&"--config") {
            args.extend(["--shards", "4"]);
        }
        VeilProcess::start_on(
            Path::new(env!("CARGO_BIN_EXE_veil")),
            data_dir,
            ports,
            &args,
        )
        .map(Veil)
        .unwrap_or_else(|e| panic!("{}\n--- stderr ---\n{}", e.message, e.stderr))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Posts a body with a content type; returns the status and the JSON answer.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> (u16, Value) {
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Like [`Veil::post`], with extra headers.
    pub fn post_with_headers(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::blocking::Body>,
    ) -> (u16, Value) {
        let mut req = reqwest::blocking::Client::new()
            .post(self.url(path))
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn query(&self, body: Value) -> Value {
        let (status, answer) =
            self.post("/api/v1/logs/query", "application/json", body.to_string());
        assert_eq!(status, 200, "query failed: {answer}");
        answer
    }

    /// Polls the query until `done` holds on its answer, or fails after a generous bound.
    pub fn wait_for_query(&self, body: Value, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.query(body.clone());
            if done(&answer) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last answer: {answer}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The messages of a query answer's logs, sorted.
pub fn sorted_messages(answer: &Value) -> Vec<String> {
    let mut messages: Vec<String> = answer["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    messages.sort();
    messages
}

/// A terms aggregation's buckets as (key, count), in the answer's order.
pub fn bucket_counts(aggregation: &Value) -> Vec<(String, u64)> {
    aggregation["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().to_string(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}
