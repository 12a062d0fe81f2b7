//! The nemesis: faults drawn from the seed, one at a time, each held for a few seconds and
//! then healed, with quiet gaps between, for the run's time.
//!
//! - `kill`: SIGKILL and restart of one node, a shard's leader, the metadata group's leader, or
//!   a majority.
//! - `pause`: SIGSTOP and SIGCONT of one node or a shard's leader.
//! - `partition`: one node isolated, a bridge (two nodes cut apart, both still reaching a
//!   third), halves (five nodes: two and three), or one way (a node's own connections to
//!   another dropped, the other's to it kept).
//! - `clock`: one node's wall clock jumped by up to two hours either way (libfaketime; its
//!   monotonic clock, which Raft's timers use, is left alone).
//! - `disk`: one node's disk filled to the last byte, then emptied.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::history::History;
use crate::run::{Cluster, Place};
use crate::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP and SIGCONT.
    Pause,
    /// Links cut with iptables.
    Partition,
    /// A node's wall clock moved.
    Clock,
    /// A node's disk full.
    Disk,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 5] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Clock,
        Nemesis::Disk,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Clock => "clock",
            Nemesis::Disk => "disk",
        }
    }

    /// The nemesis called `name`.
    pub fn parse(name: &str) -> anyhow::Result<Nemesis> {
        match Nemesis::ALL.iter().find(|n| n.name() == name) {
            Some(n) => Ok(*n),
            None => bail!("unknown nemesis {name:?}: kill, pause, partition, clock, disk or all"),
        }
    }

    /// True when it needs root in a namespace of its own (network rules, mounts).
    pub fn needs_root(self) -> bool {
        matches!(self, Nemesis::Partition | Nemesis::Disk)
    }
}

/// A node chosen for a fault: a random one, or one leading something now.
fn pick_target(c: &Cluster, rng: &mut Rng) -> (usize, String) {
    let n = c.nodes.len();
    let status = c.status();
    match rng.below(3) {
        0 => {
            let shards = status
                .as_ref()
                .and_then(|s| s["shards"].as_array().cloned())
                .unwrap_or_default();
            if !shards.is_empty() {
                let shard = rng.below(shards.len() as u64) as usize;
                if let Some(i) = shards[shard]["leader"]
                    .as_u64()
                    .and_then(|id| c.index_of(id))
                {
                    return (i, format!("node {i} (leader of shard {shard})"));
                }
            }
        }
        1 => {
            if let Some(i) = status
                .as_ref()
                .and_then(|s| s["metadata_leader"].as_u64())
                .and_then(|id| c.index_of(id))
            {
                return (i, format!("node {i} (metadata leader)"));
            }
        }
        _ => {}
    }
    let i = rng.below(n as u64) as usize;
    (i, format!("node {i}"))
}

/// A fault in force, and how to heal it.
enum Held {
    Killed(Vec<usize>),
    Paused(usize),
    Cut,
    Clock(usize),
    Disk(usize),
}

/// Injects one fault of kind `nemesis`; returns how to heal it.
fn inject(
    c: &mut Cluster,
    history: &History,
    rng: &mut Rng,
    nemesis: Nemesis,
) -> anyhow::Result<(Held, usize)> {
    let n = c.nodes.len();
    let majority = n / 2 + 1;
    Ok(match nemesis {
        Nemesis::Kill => {
            if rng.below(5) == 0 {
                let mut all: Vec<usize> = (0..n).collect();
                let mut chosen = Vec::new();
                while chosen.len() < majority {
                    chosen.push(all.remove(rng.below(all.len() as u64) as usize));
                }
                let f = history.fault(
                    "kill",
                    format!("kill -9 nodes {chosen:?} (a majority)"),
                    false,
                );
                for i in &chosen {
                    c.kill(*i);
                }
                (Held::Killed(chosen), f)
            } else {
                let (i, who) = pick_target(c, rng);
                let f = history.fault("kill", format!("kill -9 {who}"), true);
                c.kill(i);
                (Held::Killed(vec![i]), f)
            }
        }
        Nemesis::Pause => {
            let (i, who) = pick_target(c, rng);
            let f = history.fault("pause", format!("SIGSTOP {who}"), true);
            if let Some(p) = &c.nodes[i].process {
                p.signal("STOP");
            }
            (Held::Paused(i), f)
        }
        Nemesis::Partition => {
            let Place::Namespaces(net) = &c.place else {
                bail!("partitions need network namespaces");
            };
            let (i, who) = pick_target(c, rng);
            let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            let f = match rng.below(4) {
                0 => {
                    let f = history.fault("partition", format!("isolate {who}"), true);
                    for j in &others {
                        net.cut(i, *j)?;
                    }
                    f
                }
                1 if n >= 3 => {
                    // i bridges two nodes that cannot reach each other.
                    let (a, b) = (others[0], others[1]);
                    let f = history.fault(
                        "partition",
                        format!("bridge: nodes {a} and {b} cut apart, both reach {who}"),
                        true,
                    );
                    net.cut(a, b)?;
                    f
                }
                2 if n >= 5 => {
                    let mut all: Vec<usize> = (0..n).collect();
                    let mut small = Vec::new();
                    while small.len() < n / 2 {
                        small.push(all.remove(rng.below(all.len() as u64) as usize));
                    }
                    let f =
                        history.fault("partition", format!("halves: {small:?} | {all:?}"), true);
                    for a in &small {
                        for b in &all {
                            net.cut(*a, *b)?;
                        }
                    }
                    f
                }
                _ => {
                    let j = others[rng.below(others.len() as u64) as usize];
                    let f = history.fault(
                        "partition",
                        format!("one way: {who} cannot reach node {j}, node {j} reaches it"),
                        true,
                    );
                    net.cut_one_way(i, j)?;
                    f
                }
            };
            (Held::Cut, f)
        }
        Nemesis::Clock => {
            let i = rng.below(n as u64) as usize;
            let secs = [90, 600, 3600, 5400, 7200][rng.below(5) as usize];
            let sign = if rng.below(2) == 0 { "+" } else { "-" };
            let offset = format!("{sign}{secs}s");
            let f = history.fault("clock", format!("node {i}'s clock {offset}"), true);
            c.set_clock(i, &offset)?;
            (Held::Clock(i), f)
        }
        Nemesis::Disk => {
            let (i, who) = pick_target(c, rng);
            let f = history.fault("disk", format!("fill the disk of {who}"), true);
            c.disks.fill(i)?;
            (Held::Disk(i), f)
        }
    })
}

/// Heals a fault.
fn heal(c: &mut Cluster, held: Held) -> anyhow::Result<()> {
    match held {
        Held::Killed(nodes) => {
            for i in nodes {
                c.start(i)?;
            }
        }
        Held::Paused(i) => {
            if let Some(p) = &c.nodes[i].process {
                p.signal("CONT");
            }
        }
        Held::Cut => {
            if let Place::Namespaces(net) = &c.place {
                net.heal()?;
            }
        }
        Held::Clock(i) => c.set_clock(i, "+0s")?,
        Held::Disk(i) => c.disks.unfill(i)?,
    }
    Ok(())
}

/// Injects faults for `time`: a quiet gap of 1–3 s, then a fault held 2–6 s, then healed.
pub fn schedule(
    c: &mut Cluster,
    history: &History,
    rng: &mut Rng,
    time: Duration,
) -> anyhow::Result<()> {
    let nemeses = c.options().nemeses.clone();
    let end = Instant::now() + time;
    if nemeses.is_empty() {
        std::thread::sleep(time);
        return Ok(());
    }
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        c.restart_crashed(history)?;
        let nemesis = nemeses[rng.below(nemeses.len() as u64) as usize];
        let (held, f) = inject(c, history, rng, nemesis)?;
        std::thread::sleep(Duration::from_millis(2000 + rng.below(4000)));
        heal(c, held)?;
        history.healed(f);
        c.restart_crashed(history)?;
    }
    Ok(())
}
