//! Starts and stops a real `veil serve` process for a test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a node may take to print its ready line (a cold debug build on two cores is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `veil serve` process; its output is printed if the test fails.
pub struct Veil {
    child: Option<Child>,
    pub http: String,
    pub grpc: String,
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl Veil {
    /// Starts a node on free ports with its data in `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Veil {
        match Self::try_start(data_dir, extra) {
            Ok(v) => v,
            Err((message, stderr)) => panic!("{message}\n--- stderr ---\n{stderr}"),
        }
    }

    /// Starts a node; on failure returns the reason and the node's stderr.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Veil, (String, String)> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
        ];
        if !extra.contains(&"--shards") && !extra.contains(&"--config") {
            args.extend(["--shards".to_string(), "4".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn veil");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("veil ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.lock().unwrap().clone();
                return Err((format!("veil {args:?} printed no ready line"), err));
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(String::from))
                .expect("ready line names the address")
        };
        Ok(Veil {
            http: field("http"),
            grpc: field("grpc"),
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            stderr,
            args,
        })
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill -TERM");
            let status = c.wait().expect("wait");
            assert!(
                status.success(),
                "veil exited with {status} after SIGTERM\n{}",
                self.stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
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

impl Drop for Veil {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- veil {:?} ---\n--- stderr ---\n{}",
                self.args,
                self.stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
            if let Ok(listing) = Command::new("find").arg(&self.data_dir).output() {
                eprintln!(
                    "--- data dir ---\n{}",
                    String::from_utf8_lossy(&listing.stdout)
                );
            }
        }
    }
}
