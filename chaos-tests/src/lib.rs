//! Veil's process-level fault tests: they start real `veil` processes, inject faults from
//! outside (for now `kill -9` at a random moment), and check what the public API answers
//! against what was acknowledged.
//!
//! This crate knows no Veil internals: it talks to nodes only over HTTP. Its [`VeilProcess`]
//! is also the harness of the node's own binary-level tests. The `veil` binary is
//! found through `VEIL_BIN`, or next to the test executable in the target directory (cargo
//! builds it there when the workspace's tests are built).
//!
//! Runs are bounded and reproducible: a seed drives every random choice and is printed first;
//! `VEIL_CHAOS_SEED` replays a run, `VEIL_CHAOS_LONG=1` runs the long variant.
#![warn(missing_docs)]

pub mod checker;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod workload;

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

/// The PII key file a node started by this harness uses: beside its data directory (never
/// inside it), so a restart on the same directory hashes with the same key.
pub fn key_file_for(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".veil-keys.toml");
    PathBuf::from(name)
}

/// The three ports of a node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HTTP.
    pub http: u16,
    /// gRPC.
    pub grpc: u16,
    /// Node-to-node.
    pub peer: u16,
}

impl Ports {
    /// Port 0 for each: the node picks free ones.
    pub fn any() -> Ports {
        Ports {
            http: 0,
            grpc: 0,
            peer: 0,
        }
    }

    /// Three ports free now, for a node that must keep them across restarts. They are drawn
    /// at random below the kernel's ephemeral range (which starts at 32768 by default), so a
    /// process binding port 0 meanwhile cannot be handed one of them; each is checked free by
    /// binding it.
    pub fn free() -> Ports {
        use std::sync::atomic::{AtomicU64, Ordering};
        static DRAWS: AtomicU64 = AtomicU64::new(0);
        let seed = u64::from(std::process::id()) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
            ^ DRAWS.fetch_add(1, Ordering::Relaxed) << 48;
        let mut rng = Rng::new(seed);
        loop {
            let base = 20_000 + rng.below(12_000) as u16;
            let held: Vec<_> = (0..3)
                .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
                .collect();
            if held.len() == 3 {
                return Ports {
                    http: base,
                    grpc: base + 1,
                    peer: base + 2,
                };
            }
        }
    }
}

/// The `name=value` word of a ready (or awaiting) line.
fn line_field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")).map(String::from))
        .unwrap_or_else(|| panic!("the ready line names {name}: {line}"))
}

/// How long a node may take to print its ready line (a cold debug build on two cores is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a node did not start: the reason and everything it wrote to stderr.
#[derive(Debug)]
pub struct StartError {
    /// What went wrong.
    pub message: String,
    /// The process's stderr.
    pub stderr: String,
}

/// How to start one `veil serve` process (see [`VeilProcess::launch`]).
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    /// The `veil` binary.
    pub bin: &'a Path,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// The address its three listeners bind (`127.0.0.1`, or a test host's address inside a
    /// network namespace).
    pub host: &'a str,
    /// Its ports.
    pub ports: &'a Ports,
    /// Arguments after the addresses and the data directory.
    pub extra: &'a [&'a str],
    /// Extra environment variables.
    pub env: &'a [(String, String)],
    /// A command that runs `veil` (its program first), or none.
    pub wrapper: &'a [String],
}

/// A running `veil serve` process. If the test panics while it lives, its command line, its
/// stderr and a listing of its data directory are printed.
pub struct VeilProcess {
    child: Option<Child>,
    /// The HTTP address from the ready line.
    pub http: String,
    /// The gRPC address from the ready line.
    pub grpc: String,
    /// The peer (node-to-node) address from the ready line.
    pub peer: String,
    /// The node's id in its cluster, from the ready line (0 while a node started with
    /// `--await-add` awaits its invitation: see [`VeilProcess::wait_ready`]).
    pub node_id: u64,
    /// The data directory.
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    args: Vec<String>,
    /// The ready line to come, while the node awaits its invitation.
    ready: Option<std::sync::mpsc::Receiver<String>>,
}

impl VeilProcess {
    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs `bin serve --data-dir <data_dir> --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0
    /// --peer-addr 127.0.0.1:0 <extra…>` and waits for its ready line.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Result<VeilProcess, StartError> {
        Self::start_on(bin, data_dir, &Ports::any(), extra)
    }

    /// Like [`VeilProcess::start`] on the given ports: a cluster's node keeps its addresses
    /// across restarts, since the others know it by them.
    pub fn start_on(
        bin: &Path,
        data_dir: &Path,
        ports: &Ports,
        extra: &[&str],
    ) -> Result<VeilProcess, StartError> {
        Self::start_with_env(bin, data_dir, ports, extra, &[])
    }

    /// Like [`VeilProcess::start_on`] with extra environment variables (a clock shifted by
    /// libfaketime, say).
    pub fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        ports: &Ports,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<VeilProcess, StartError> {
        Self::launch(&Launch {
            bin,
            data_dir,
            host: "127.0.0.1",
            ports,
            extra,
            env,
            wrapper: &[],
        })
    }

    /// Runs `launch`: `veil serve` on its host and ports, optionally under a wrapper command
    /// (`ip netns exec NAME`, which execs `veil` in place, so the process id is veil's own).
    pub fn launch(launch: &Launch<'_>) -> Result<VeilProcess, StartError> {
        let Launch {
            bin,
            data_dir,
            host,
            ports,
            extra,
            env,
            wrapper,
        } = *launch;
        let addr = |port: u16| format!("{host}:{port}");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--http-addr".into(),
            addr(ports.http),
            "--grpc-addr".into(),
            addr(ports.grpc),
            "--peer-addr".into(),
            addr(ports.peer),
            "--data-dir".into(),
        ];
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // `VEIL_NODE_LOG` (a `RUST_LOG` filter) makes the nodes say more, to debug a run.
            .env(
                "RUST_LOG",
                std::env::var("VEIL_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("VEIL_KEY_FILE", key_file_for(data_dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError {
                message: format!("cannot run {}: {e}", bin.display()),
                stderr: String::new(),
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("veil ready ") || line.starts_with("veil awaiting add ") {
                    // The receiver may have given up already; nothing to do then.
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(READY_TIMEOUT) else {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
            // The process is gone, so its stderr reaches EOF: wait for the reader to have
            // everything, or the reason it printed on its way out may be missing.
            let _ = stderr_reader.join();
            let stderr = lock(&stderr).clone();
            return Err(StartError {
                message: format!("veil {args:?} printed no ready line"),
                stderr,
            });
        };
        let awaiting = line.starts_with("veil awaiting add ");
        Ok(VeilProcess {
            http: line_field(&line, "http"),
            grpc: line_field(&line, "grpc"),
            peer: line_field(&line, "peer"),
            node_id: if awaiting {
                0
            } else {
                line_field(&line, "node")
                    .parse()
                    .expect("a numeric node id")
            },
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            stderr,
            args,
            ready: awaiting.then_some(rx),
        })
    }

    /// For a node started with `--await-add`: waits for its ready line once a member added it,
    /// and takes its node id from it. A node that printed its ready line at start returns at
    /// once.
    pub fn wait_ready(&mut self) -> Result<(), StartError> {
        let Some(rx) = self.ready.take() else {
            return Ok(());
        };
        let line = rx.recv_timeout(READY_TIMEOUT).map_err(|_| StartError {
            message: format!(
                "veil {:?} printed no ready line after it was added",
                self.args
            ),
            stderr: self.stderr(),
        })?;
        self.node_id = line_field(&line, "node")
            .parse()
            .expect("a numeric node id");
        Ok(())
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait for killed node");
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process, if it runs; true when it was sent.
    pub fn signal(&self, signal: &str) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            // A process that exited meanwhile is not an error worth printing.
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// True while the process has not exited (a paused one runs).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How the process ended, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its status, or None
    /// when it still runs (or was already reaped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill -TERM");
            let status = c.wait().expect("wait for stopped node");
            assert!(
                status.success(),
                "veil exited with {status} after SIGTERM\n{}",
                self.stderr()
            );
        }
    }

    /// Returns what the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    // A panic while appending leaves a string that is still worth printing.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for VeilProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Cleanup on the way out; the process may already be gone.
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- veil {:?} ---\n--- stderr ---\n{}",
                self.args,
                self.stderr()
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
