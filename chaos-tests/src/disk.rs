//! Each node's disk: a tmpfs of a fixed size mounted on its directory, so that one node's disk
//! can be filled to the last byte (a ballast file) and emptied again. (On ext4 root writes into
//! the reserved blocks, so "full" would not be full for a node running as root.)
//!
//! Mounts live under `/tmp/veil-chaos-<harness pid>/`; [`sweep`] unmounts and removes those of
//! runs that no longer run, and [`Disks`]' drop its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::net::{pid_alive, run};

/// The directory all of a run's node disks are under.
pub fn run_root() -> PathBuf {
    PathBuf::from(format!("/tmp/veil-chaos-{}", std::process::id()))
}

/// Unmounts and removes what runs that no longer run left under `/tmp`.
pub fn sweep() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("veil-chaos-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        eprintln!("chaos: removing /tmp/{name}, left by an earlier run");
        unmount_under(&e.path());
        // Best effort: what cannot go now is retried by the next sweep.
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// Unmounts every mount at or below `dir` (lazily: a process of a killed run may hold one).
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    for line in mounts.lines() {
        if let Some(point) = line.split_whitespace().nth(1) {
            if point == prefix || point.starts_with(&format!("{prefix}/")) {
                let _ = run("umount", &["-l", point]);
            }
        }
    }
}

/// The nodes' disks of one run.
pub struct Disks {
    root: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Disks {
    /// Mounts a tmpfs of `mib` MiB for each of `nodes` nodes.
    pub fn create(nodes: usize, mib: u64) -> anyhow::Result<Disks> {
        let root = run_root();
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut disks = Disks {
            root,
            mounts: Vec::new(),
        };
        for i in 0..nodes {
            let point = disks.root.join(format!("n{i}"));
            std::fs::create_dir_all(&point)?;
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m"),
                    "veil-chaos",
                    &point.display().to_string(),
                ],
            )?;
            disks.mounts.push(point);
        }
        Ok(disks)
    }

    /// Plain directories instead of mounts (no root: a disk cannot be filled).
    pub fn plain(nodes: usize) -> anyhow::Result<Disks> {
        let root = run_root();
        let mounts = (0..nodes)
            .map(|i| root.join(format!("n{i}")))
            .collect::<Vec<_>>();
        for m in &mounts {
            std::fs::create_dir_all(m).with_context(|| format!("creating {}", m.display()))?;
        }
        Ok(Disks { root, mounts })
    }

    /// Node `i`'s data directory (on its disk).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.mounts[i].join("data")
    }

    /// Where files of the run that are on no node's disk go (key file, clocks, history).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ballast(&self, i: usize) -> PathBuf {
        self.mounts[i].join("ballast")
    }

    /// Fills node `i`'s disk: a ballast file takes every free byte.
    pub fn fill(&self, i: usize) -> anyhow::Result<()> {
        let point = self.mounts[i].display().to_string();
        let avail = run("df", &["-B1", "--output=avail", &point])?;
        let bytes: u64 = avail
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("df of {point}: {avail}"))?;
        // Most of it at once, then the rest written until the disk refuses (tmpfs refuses a
        // fallocate of exactly what df says is free).
        let bulk = bytes.saturating_sub(8 << 20);
        if bulk > 0 {
            run(
                "fallocate",
                &[
                    "-l",
                    &bulk.to_string(),
                    &self.ballast(i).display().to_string(),
                ],
            )?;
        }
        let mut rest = std::fs::File::create(self.mounts[i].join("ballast-rest"))?;
        let chunk = vec![0u8; 64 << 10];
        use std::io::Write as _;
        while rest.write_all(&chunk).is_ok() {}
        // Full now: what did not fit is the point.
        let _ = rest.sync_all();
        Ok(())
    }

    /// Empties node `i`'s disk again.
    pub fn unfill(&self, i: usize) -> anyhow::Result<()> {
        for f in [self.ballast(i), self.mounts[i].join("ballast-rest")] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("removing {}: {e}", f.display()),
            }
        }
        Ok(())
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        unmount_under(&self.root);
        // Best effort on the way out; the next run's sweep removes what is left.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
