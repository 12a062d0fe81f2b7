//! `veil cluster up`: a local cluster on this machine, for trying Veil out and for benchmarks.
//! N `veil serve` processes, each with its own ports and data directory under `--dir`; the
//! ports are recorded there on the first run, so running it again restarts the same nodes on
//! the same addresses. One line per node once all are ready, then `cluster ready`; Ctrl-C or
//! SIGTERM stops them all (each hands its leaderships over and closes its storage). A node that
//! stops by itself with success was removed from the cluster (decommissioned): the others go
//! on; any other exit stops them all.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// `veil cluster …` commands.
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Starts (or restarts) a local cluster of `--nodes` processes under `--dir`.
    Up(UpArgs),
}

/// Flags of `veil cluster up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// How many nodes (fixed on the first run: the directory remembers its nodes).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the nodes' data directories, their shared PII key file and the port record go.
    #[arg(long)]
    dir: PathBuf,
    /// Address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The first node's HTTP port; node i uses base + 10·i for HTTP, +1 gRPC, +2 peer.
    #[arg(long, default_value_t = 7420)]
    base_port: u16,
    /// How long to wait for every node to be ready, in seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout_secs: u64,
    /// Further `veil serve` flags for every node (after `--`).
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// What `--dir` remembers: each node's addresses.
#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    nodes: Vec<NodeAddrs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeAddrs {
    http: String,
    grpc: String,
    peer: String,
}

const LAYOUT_FILE: &str = "cluster.toml";

fn layout(args: &UpArgs) -> anyhow::Result<(Layout, bool)> {
    let path = args.dir.join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let layout: Layout =
                toml::from_str(&text).with_context(|| format!("unreadable {}", path.display()))?;
            if layout.nodes.len() != args.nodes {
                bail!(
                    "{} holds a cluster of {} nodes; --nodes {} would be another cluster (use another --dir)",
                    args.dir.display(),
                    layout.nodes.len(),
                    args.nodes
                );
            }
            Ok((layout, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if args.nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            let addr = |i: usize, offset: u16| -> anyhow::Result<String> {
                let port = u16::try_from(i * 10)
                    .ok()
                    .and_then(|d| args.base_port.checked_add(d)?.checked_add(offset))
                    .context("--base-port leaves no room for the nodes' ports")?;
                Ok(format!("{}:{port}", args.host))
            };
            let nodes = (0..args.nodes)
                .map(|i| {
                    Ok(NodeAddrs {
                        http: addr(i, 0)?,
                        grpc: addr(i, 1)?,
                        peer: addr(i, 2)?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            std::fs::create_dir_all(&args.dir)
                .with_context(|| format!("failed to create {}", args.dir.display()))?;
            let layout = Layout { nodes };
            std::fs::write(&path, toml::to_string(&layout)?)
                .with_context(|| format!("failed to write {}", path.display()))?;
            Ok((layout, true))
        }
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// A started node: its process and the channel its ready line arrives on.
struct Started {
    child: Child,
    ready: mpsc::Receiver<String>,
}

fn spawn(
    args: &UpArgs,
    i: usize,
    addrs: &NodeAddrs,
    join: Option<&str>,
) -> anyhow::Result<Started> {
    let exe = std::env::current_exe().context("cannot find the veil binary")?;
    let data_dir = args.dir.join(format!("node-{}", i + 1));
    let log = std::fs::File::create(log_path(&args.dir, i))
        .context("failed to create the node's log file")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(["--data-dir", &data_dir.display().to_string()])
        .args(["--http-addr", &addrs.http])
        .args(["--grpc-addr", &addrs.grpc])
        .args(["--peer-addr", &addrs.peer])
        // Node N of the layout is node id N, whatever order the joins arrive in.
        .args(["--node-id", &(i + 1).to_string()])
        .args([
            "--key-file",
            &args.dir.join("keys.toml").display().to_string(),
        ]);
    if let Some(join) = join {
        cmd.args(["--join", join]);
    }
    let mut child = cmd
        .args(&args.serve_args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("failed to start veil serve")?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let (tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("veil ready ") {
                let _ = tx.send(line);
            }
        }
    });
    Ok(Started { child, ready })
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        // One that exited already is not signalled: its pid may belong to another process now.
        if matches!(child.try_wait(), Ok(Some(_))) {
            continue;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// Runs `veil cluster up`.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Up(args) = command;
    let (layout, fresh) = layout(&args)?;
    let join = layout.nodes[0].peer.clone();
    let timeout = Duration::from_secs(args.ready_timeout_secs);
    let mut started = Vec::new();
    let mut lines = Vec::new();
    let wait = |s: &mut Started, i: usize| -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(line) = s.ready.recv_timeout(Duration::from_millis(200)) {
                return Ok(line);
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                bail!(
                    "node {} exited ({status}) before it was ready (see {})",
                    i + 1,
                    log_path(&args.dir, i).display()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "node {} printed no ready line within {}s (see {})",
                    i + 1,
                    timeout.as_secs(),
                    log_path(&args.dir, i).display()
                );
            }
        }
    };
    let result = (|| -> anyhow::Result<()> {
        if fresh {
            // The first node founds the cluster; the others join through it once it answers.
            started.push(spawn(&args, 0, &layout.nodes[0], None)?);
            lines.push(wait(&mut started[0], 0)?);
            for (i, addrs) in layout.nodes.iter().enumerate().skip(1) {
                started.push(spawn(&args, i, addrs, Some(&join))?);
            }
            for (i, s) in started.iter_mut().enumerate().skip(1) {
                lines.push(wait(s, i)?);
            }
        } else {
            // Restarting: every node at once (a node's groups need a majority to be ready).
            for (i, addrs) in layout.nodes.iter().enumerate() {
                let join = (i > 0).then_some(join.as_str());
                started.push(spawn(&args, i, addrs, join)?);
            }
            for (i, s) in started.iter_mut().enumerate() {
                lines.push(wait(s, i)?);
            }
        }
        Ok(())
    })();
    let mut children: Vec<Child> = started.into_iter().map(|s| s.child).collect();
    if let Err(e) = result {
        stop_all(&mut children);
        return Err(e);
    }
    let mut out = std::io::stdout().lock();
    for line in &lines {
        let rest = line.trim_start_matches("veil ready ");
        let id = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("node="))
            .unwrap_or("?");
        let addrs: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("node="))
            .collect();
        writeln!(out, "node {id} {}", addrs.join(" "))?;
    }
    writeln!(out, "cluster ready")?;
    out.flush()?;
    drop(out);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start tokio")?;
    let exited = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // A node that exits cleanly by itself was removed from the cluster (decommissioned):
        // the others go on. Any other exit stops them all.
        let mut gone = vec![false; children.len()];
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok::<_, std::io::Error>(None),
                _ = terminate.recv() => return Ok(None),
                _ = tick.tick() => {
                    for (i, c) in children.iter_mut().enumerate() {
                        if gone[i] {
                            continue;
                        }
                        match c.try_wait() {
                            Ok(Some(status)) if status.success() => {
                                gone[i] = true;
                                eprintln!(
                                    "veil: node {} stopped by itself (removed from the cluster); the others go on",
                                    i + 1
                                );
                            }
                            Ok(Some(status)) => return Ok(Some((i, status))),
                            _ => {}
                        }
                    }
                    if gone.iter().all(|g| *g) {
                        return Ok(None);
                    }
                }
            }
        }
    })?;
    stop_all(&mut children);
    if let Some((i, status)) = exited {
        bail!(
            "node {} exited ({status}); the others were stopped (see {})",
            i + 1,
            log_path(&args.dir, i).display()
        );
    }
    Ok(())
}

fn log_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{}.log", i + 1))
}
