//! Veil's process-level fault tests: they start real `veil` processes, inject faults from
//! outside (for now `kill -9` at a random moment), and check what the public API answers
//! against what was acknowledged.
//!
//! This crate knows no Veil internals: it talks to nodes only over HTTP. The `veil` binary is
//! found through `VEIL_BIN`, or next to the test executable in the target directory (cargo
//! builds it there when the workspace's tests are built).
//!
//! Runs are bounded and reproducible: a seed drives every random choice and is printed first;
//! `VEIL_CHAOS_SEED` replays a run, `VEIL_CHAOS_LONG=1` runs the long variant.
#![warn(missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Returns the path of the `veil` binary under test.
pub fn veil_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VEIL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/veil
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("veil"))
        .expect("target directory");
    assert!(
        std::fs::metadata(&candidate).is_ok(),
        "veil binary not found at {}; build it (cargo build -p veil-node) or set VEIL_BIN",
        candidate.display()
    );
    candidate
}

/// A `veil serve` process.
pub struct Node {
    child: Option<Child>,
    /// The HTTP address from the ready line.
    pub http: String,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// Starts a node on free ports with its data in `data_dir`; waits for its ready line.
    pub fn start(data_dir: &Path, shards: u32) -> Node {
        let mut child = Command::new(veil_bin())
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--shards", &shards.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn veil");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("veil ready ") {
                    // The receiver may have given up already; nothing to do then.
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) else {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            panic!(
                "veil printed no ready line\n--- stderr ---\n{}",
                stderr.lock().expect("stderr lock")
            );
        };
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http=").map(String::from))
            .expect("ready line names the HTTP address");
        Node {
            child: Some(child),
            http,
            stderr,
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait for killed node");
        }
    }

    /// Returns what the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Cleanup on the way out; the process may already be gone.
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- veil stderr ---\n{}", self.stderr());
        }
    }
}

/// A small deterministic generator (SplitMix64), so a seed replays a run exactly.
pub struct Rng(u64);

impl Rng {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Returns the next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
