//! The test network: one network namespace per node, joined by veth pairs to a bridge that
//! lives in the harness's own namespace (the hub), and partitions as iptables rules inside the
//! nodes' namespaces.
//!
//! The harness must run in a network namespace of its own (`unshare -n`, see
//! [`in_own_namespace`]): the machine's root namespace routes the test subnet out of its default
//! route, so a request sent there before the namespaces are up would leave the machine. In its
//! own namespace the only routes are the bridge's, and [`Net::create`] checks with
//! `ip route get` that every node address goes to the bridge before anything is sent.
//!
//! Node namespaces are named `vc<harness pid>-<i>`; [`sweep`] deletes those whose harness is
//! gone (a run killed before its cleanup), and [`Net`]'s drop deletes its own. The bridge and
//! the veth ends in the harness's namespace vanish with it.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _};

/// The bridge, in the harness's namespace.
const BRIDGE: &str = "vcbr";

/// The hub's address on the bridge (the clients' source address).
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The variable through which a harness tells the copy of itself it started under
/// `unshare -n` which namespace it left.
const OUTER_NAMESPACE: &str = "VEIL_CHAOS_OUTER_NETNS";

fn namespace_of(path: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(path).ok()
}

/// True when this process's network namespace is not the one it was started from by
/// [`reexec_in_own_namespace`], nor the one process 1 (the machine's init) runs in, as far as
/// either can be read (a sandbox may hide process 1's).
pub fn in_own_namespace() -> bool {
    let Some(me) = namespace_of("/proc/self/ns/net") else {
        return false;
    };
    let outer = std::env::var_os(OUTER_NAMESPACE).map(std::path::PathBuf::from);
    let init = namespace_of("/proc/1/ns/net");
    if outer.is_none() && init.is_none() {
        // Nothing to compare with: assume the worst.
        return false;
    }
    outer.is_none_or(|o| o != me) && init.is_none_or(|i| i != me)
}

/// True when this process runs as root (namespaces, iptables and mounts need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure this process runs in a network namespace of its own: when root in the machine's
/// root namespace, runs this same program again under `unshare -n` and answers its exit code
/// (`Some`); otherwise goes on here (`None`): already in one, or not root (then the harness
/// runs on loopback, with the faults that need no namespace).
pub fn reexec_in_own_namespace() -> anyhow::Result<Option<std::process::ExitCode>> {
    if in_own_namespace() || !is_root() {
        return Ok(None);
    }
    if std::env::var_os(OUTER_NAMESPACE).is_some() {
        bail!("started under unshare -n, and still not in a namespace of its own");
    }
    let exe = std::env::current_exe()?;
    let outer =
        namespace_of("/proc/self/ns/net").context("reading this process's network namespace")?;
    let status = Command::new("unshare")
        .env(OUTER_NAMESPACE, outer)
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .status()
        .context("running unshare -n")?;
    let code = status.code().unwrap_or(2);
    Ok(Some(std::process::ExitCode::from(
        u8::try_from(code).unwrap_or(2),
    )))
}

/// For a test that needs a network namespace of its own: true when this process is in one (the
/// test goes on); otherwise, as root, runs this very test again under `unshare -n`, asserts
/// that it passed and answers false (the outer copy is done). Not root: says so and answers
/// false, as the harness does without namespaces.
pub fn test_in_own_namespace(test: &str) -> bool {
    if in_own_namespace() {
        return true;
    }
    if !is_root() {
        eprintln!("{test}: needs root for network namespaces; not run");
        return false;
    }
    let exe = std::env::current_exe().expect("the test executable");
    let outer = namespace_of("/proc/self/ns/net").expect("this process's network namespace");
    let out = Command::new("unshare")
        .env(OUTER_NAMESPACE, outer)
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .output()
        .expect("unshare -n runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} in its own network namespace:\n{text}"
    );
    eprintln!("{text}");
    false
}

/// Runs `program args…`; an error says what ran and what it printed.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Deletes the node namespaces of harness runs that no longer run.
pub fn sweep() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("vc")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            eprintln!("chaos: removing {name}, left by an earlier run");
            // Its nodes outlived their harness (killed before its cleanup): they go first.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for p in pids.split_whitespace() {
                    let _ = run("kill", &["-9", p]);
                }
            }
            // Best effort: a namespace that cannot go now is retried by the next sweep.
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}

/// The test hosts of one run.
pub struct Net {
    names: Vec<String>,
}

impl Net {
    /// Node `i`'s address.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 11 + i as u8)
    }

    /// Makes the bridge and `nodes` namespaces, each with a veth pair to the bridge, and checks
    /// the routes. Must run in the harness's own namespace.
    pub fn create(nodes: usize) -> anyhow::Result<Net> {
        if !in_own_namespace() {
            bail!("the harness runs in the machine's root network namespace; start it under `unshare -n`");
        }
        let default = run("ip", &["route", "show", "default"])?;
        if !default.trim().is_empty() {
            bail!("this namespace has a default route ({}); the harness runs only where nothing can leave", default.trim());
        }
        let me = std::process::id();
        let mut net = Net { names: Vec::new() };
        run("ip", &["link", "set", "lo", "up"])?;
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{HUB}/24"), "dev", BRIDGE])?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        for i in 0..nodes {
            let name = format!("vc{me}-{i}");
            run("ip", &["netns", "add", &name])?;
            net.names.push(name.clone());
            let host_end = format!("vh{i}");
            run(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                    &name,
                ],
            )?;
            run("ip", &["link", "set", &host_end, "master", BRIDGE, "up"])?;
            let addr = format!("{}/24", Net::addr(i));
            run("ip", &["-n", &name, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &name, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
            // Connection tracking from the first packet on: a one-way cut matches connections
            // by who opened them, and one tracking starts to see mid-way is taken to be opened
            // by whichever side sent the first packet it saw (so an early cut let the leader's
            // appends through). A rule that uses conntrack turns it on; it accepts nothing the
            // chain would not.
            net.iptables(
                i,
                &[
                    "-A",
                    "OUTPUT",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID",
                    "-j",
                    "ACCEPT",
                ],
            )?;
        }
        net.check_routes()?;
        Ok(net)
    }

    /// Refuses to go on unless every node address is routed to the bridge from here, and every
    /// node reaches the hub over its own link and nothing beyond the subnet.
    fn check_routes(&self) -> anyhow::Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            let addr = Net::addr(i).to_string();
            let route = run("ip", &["route", "get", &addr])?;
            if !route.contains(&format!("dev {BRIDGE}")) {
                bail!("{addr} is not routed to {BRIDGE} here: {route}");
            }
            let back = run("ip", &["-n", name, "route", "get", &HUB.to_string()])?;
            if !back.contains("dev eth0") {
                bail!("{name} does not reach {HUB} over eth0: {back}");
            }
            if run("ip", &["-n", name, "route", "get", "192.0.2.1"]).is_ok() {
                bail!("{name} has a route beyond the test subnet");
            }
        }
        Ok(())
    }

    /// The command that runs a program in node `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.names[i].clone(),
        ]
    }

    fn iptables(&self, i: usize, rule: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.names[i], "iptables"];
        args.extend(rule);
        run("ip", &args).map(drop)
    }

    /// Node `to` drops every packet of the connections `from` opens to it: `from` cannot reach
    /// `to`, while `to` still reaches `from` (the answers to `to`'s own connections pass). A
    /// plain DROP of `from`'s packets would cut both directions; one on NEW connections only
    /// would leave the long-lived ones `from` already holds.
    pub fn cut_one_way(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let src = Net::addr(from).to_string();
        self.iptables(
            to,
            &[
                "-A",
                "INPUT",
                "-s",
                &src,
                "-m",
                "conntrack",
                "--ctorigsrc",
                &src,
                "-j",
                "DROP",
            ],
        )
    }

    /// No packet between `a` and `b` in either direction.
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.iptables(
            b,
            &["-A", "INPUT", "-s", &Net::addr(a).to_string(), "-j", "DROP"],
        )?;
        self.iptables(
            a,
            &["-A", "INPUT", "-s", &Net::addr(b).to_string(), "-j", "DROP"],
        )
    }

    /// Removes every rule: all links work again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.names.len() {
            self.iptables(i, &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in &self.names {
            // Best effort on the way out; the next run's sweep removes what is left.
            let _ = run("ip", &["netns", "delete", name]);
        }
        // The veth ends here went with their peers; the bridge goes now, so that the next run
        // of this process can make it again (a process that exits takes it along anyway).
        let _ = run("ip", &["link", "delete", BRIDGE]);
    }
}
