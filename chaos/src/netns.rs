//! The harness's network: one network namespace per node, one for the harness's own clients,
//! all plugged into a bridge that lives in a namespace of its own, with an nftables `bridge`
//! table there acting as the switch that partitions (see `shared/docs/fault-injection.md`).
//!
//! ```text
//!   <prefix>-n1 (10.201.0.1)  <prefix>-n2 (.2) ...  <prefix>-cl (.250: harness clients)
//!          eth0                    eth0                  eth0
//!            \                      |                     /
//!             p1 ------------------ p2 ---------------- pc      <prefix>-br: bridge br0
//!                                                               + nft table bridge chaos
//! ```
//!
//! Nothing is created in the root namespace, and the harness never connects to a node from
//! it: its sockets are made by threads that entered `<prefix>-cl` ([`enter_namespace`]).
//! Partitions block `(source . destination)` pairs between nodes; the client namespace is never
//! blocked, so clients of an isolated node keep talking to it (the stale-owner case).
//!
//! Names are `achaos<harness pid>-...`: [`remove_leftovers`] deletes the namespaces of runs
//! whose harness is gone (after SIGKILLing the processes inside them, which only a harness run
//! can have started), and [`Network::drop`] deletes this run's, so a crash or Ctrl-C leaves
//! nothing behind (deleting a namespace also deletes its veths, bridge and nft table).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The prefix of every namespace a harness creates.
pub const NAMESPACE_PREFIX: &str = "achaos";
/// The nodes' subnet; private to this run's bridge, never routed anywhere.
const SUBNET_PREFIX: [u8; 3] = [10, 201, 0];
const CLIENT_HOST: u8 = 250;
/// Each node has its own address, so every node uses the same ports.
pub const CLUSTER_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 8000;

/// Why network namespaces cannot be used here, or `None` when they can.
pub fn unavailable_reason() -> Option<String> {
    // The effective uid from /proc: std has no geteuid, and this needs no unsafe code.
    if !is_root() {
        return Some("not running as root".into());
    }
    for (program, probe) in [("ip", ["-V"]), ("nft", ["--version"])] {
        match Command::new(program).args(probe).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return Some(format!(
                    "`{program}` failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Err(error) => return Some(format!("`{program}` is not installed ({error})")),
        }
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// This run's namespaces. Dropping it deletes them (after killing what runs inside).
#[derive(Debug)]
pub struct Network {
    prefix: String,
    node_count: usize,
    /// False once [`Network::remove`] ran.
    alive: bool,
}

impl Network {
    /// Creates the namespaces, veths, bridge and nft table for `node_count` nodes.
    pub fn create(node_count: usize) -> anyhow::Result<Network> {
        let prefix = format!("{NAMESPACE_PREFIX}{}", std::process::id());
        let network = Network {
            prefix,
            node_count,
            alive: true,
        };
        // On error the half-built network is dropped, which deletes what exists.
        network.build().context("building the network namespaces")?;
        Ok(network)
    }

    fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge_namespace();
        run_ip(&["netns", "add", &bridge])?;
        run_ip(&["-n", &bridge, "link", "set", "lo", "up"])?;
        run_ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        run_ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let mut members: Vec<(String, String, Ipv4Addr)> = (1..=self.node_count)
            .map(|index| {
                (
                    self.node_namespace(index),
                    format!("p{index}"),
                    node_ip(index),
                )
            })
            .collect();
        members.push((self.client_namespace(), "pc".into(), client_ip()));
        for (namespace, port, ip) in &members {
            run_ip(&["netns", "add", namespace])?;
            run_ip(&["-n", namespace, "link", "set", "lo", "up"])?;
            run_ip(&[
                "-n", &bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", namespace,
            ])?;
            run_ip(&["-n", &bridge, "link", "set", port, "master", "br0"])?;
            run_ip(&["-n", &bridge, "link", "set", port, "up"])?;
            run_ip(&[
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run_ip(&["-n", namespace, "link", "set", "eth0", "up"])?;
        }
        // A chain named "fwd" is an nft syntax error (keyword): hence forward_filter.
        let table = "table bridge chaos {\n  set blocked { type ipv4_addr . ipv4_addr; }\n  chain forward_filter {\n    type filter hook forward priority 0; policy accept;\n    ip saddr . ip daddr @blocked drop\n  }\n}\n";
        let table_path = std::env::temp_dir().join(format!("{}-nft.conf", self.prefix));
        std::fs::write(&table_path, table).context("writing the nft table")?;
        let loaded = self.nft(&["-f", &table_path.to_string_lossy()]);
        let _ = std::fs::remove_file(&table_path);
        loaded
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node_namespace(&self, index: usize) -> String {
        format!("{}-n{index}", self.prefix)
    }

    pub fn client_namespace(&self) -> String {
        format!("{}-cl", self.prefix)
    }

    fn bridge_namespace(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Node `index` (1-based) addresses and its launch prefix.
    pub fn placement(&self, index: usize) -> crate::cluster::NodePlacement {
        let ip = IpAddr::V4(node_ip(index));
        crate::cluster::NodePlacement {
            cluster_addr: SocketAddr::new(ip, CLUSTER_PORT),
            http_addr: SocketAddr::new(ip, HTTP_PORT),
            command_prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.node_namespace(index),
            ],
        }
    }

    /// Blocks traffic between the two groups of nodes (1-based indices), both ways.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) -> anyhow::Result<()> {
        let mut pairs = Vec::new();
        for a in side_a {
            for b in side_b {
                pairs.push(format!("{} . {}", node_ip(*a), node_ip(*b)));
                pairs.push(format!("{} . {}", node_ip(*b), node_ip(*a)));
            }
        }
        if pairs.is_empty() {
            return Ok(());
        }
        self.nft(&[
            "add",
            "element",
            "bridge",
            "chaos",
            "blocked",
            &format!("{{ {} }}", pairs.join(", ")),
        ])
    }

    /// Removes every blocked pair.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.nft(&["flush", "set", "bridge", "chaos", "blocked"])
    }

    /// How many pairs are blocked now (for checking that a heal worked).
    pub fn blocked_pairs(&self) -> anyhow::Result<usize> {
        let output = self.nft_output(&["list", "set", "bridge", "chaos", "blocked"])?;
        Ok(output.matches(" . ").count())
    }

    fn nft(&self, arguments: &[&str]) -> anyhow::Result<()> {
        self.nft_output(arguments).map(|_| ())
    }

    fn nft_output(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let bridge = self.bridge_namespace();
        let mut all = vec!["netns", "exec", bridge.as_str(), "nft"];
        all.extend_from_slice(arguments);
        run_ip(&all)
    }

    /// Kills whatever still runs in this run's namespaces and deletes them. Idempotent.
    pub fn remove(&mut self) -> Vec<String> {
        if !self.alive {
            return Vec::new();
        }
        self.alive = false;
        let mut namespaces: Vec<String> = (1..=self.node_count)
            .map(|index| self.node_namespace(index))
            .collect();
        namespaces.push(self.client_namespace());
        namespaces.push(self.bridge_namespace());
        remove_namespaces(&namespaces)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for problem in self.remove() {
            eprintln!("chaos: cleanup: {problem}");
        }
    }
}

pub fn node_ip(index: usize) -> Ipv4Addr {
    assert!(
        (1..CLIENT_HOST as usize).contains(&index),
        "node index {index} out of the subnet"
    );
    Ipv4Addr::new(
        SUBNET_PREFIX[0],
        SUBNET_PREFIX[1],
        SUBNET_PREFIX[2],
        index as u8,
    )
}

fn client_ip() -> Ipv4Addr {
    Ipv4Addr::new(
        SUBNET_PREFIX[0],
        SUBNET_PREFIX[1],
        SUBNET_PREFIX[2],
        CLIENT_HOST,
    )
}

/// Deletes namespaces of earlier runs whose harness process is gone; returns what it removed.
pub fn remove_leftovers() -> Vec<String> {
    let Ok(listing) = run_ip(&["netns", "list"]) else {
        return Vec::new();
    };
    let stale: Vec<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NAMESPACE_PREFIX))
        .filter(|name| {
            let owner = name[NAMESPACE_PREFIX.len()..]
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok());
            match owner {
                // Our own pid cannot own leftovers (we have created nothing yet); another live
                // harness's namespaces are left alone.
                Some(pid) => {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                }
                None => false,
            }
        })
        .map(str::to_string)
        .collect();
    let mut removed = Vec::new();
    for problem in remove_namespaces(&stale) {
        eprintln!("chaos: leftover cleanup: {problem}");
    }
    removed.extend(stale);
    removed
}

/// SIGKILLs the processes in each namespace, then deletes it; returns the problems met.
fn remove_namespaces(namespaces: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for namespace in namespaces {
        if !Path::new("/run/netns").join(namespace).exists() {
            continue;
        }
        // A namespace deleted with a process inside only loses its name: the process keeps
        // running in an anonymous namespace. So kill first.
        if let Ok(pids) = run_ip(&["netns", "pids", namespace]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
            {
                kill_pid(pid);
            }
        }
        if let Err(error) = run_ip(&["netns", "del", namespace]) {
            problems.push(format!("deleting namespace {namespace}: {error:#}"));
        }
    }
    problems
}

/// SIGKILL to a process found inside one of our namespaces.
#[allow(unsafe_code)]
fn kill_pid(pid: i32) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Moves the calling thread into network namespace `name` (for runtime worker threads: every
/// socket they create then lives there).
#[allow(unsafe_code)]
pub fn enter_namespace(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(Path::new("/run/netns").join(name))?;
    // SAFETY: setns(2) takes a file descriptor we own for the duration of the call and a flag;
    // it changes only the calling thread's network namespace.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `ip` with `arguments` and returns its stdout; the error has its stderr.
fn run_ip(arguments: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(arguments)
        .output()
        .with_context(|| format!("running ip {}", arguments.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_the_private_subnet() {
        assert_eq!(node_ip(1), Ipv4Addr::new(10, 201, 0, 1));
        assert_eq!(node_ip(16), Ipv4Addr::new(10, 201, 0, 16));
        assert_ne!(client_ip(), node_ip(16));
    }

    #[test]
    fn placements_exec_the_node_in_its_namespace() {
        let network = Network {
            prefix: "achaos1".into(),
            node_count: 2,
            alive: false,
        };
        let placement = network.placement(2);
        assert_eq!(
            placement.http_addr,
            "10.201.0.2:8000".parse().expect("addr")
        );
        assert_eq!(
            placement.command_prefix,
            ["ip", "netns", "exec", "achaos1-n2"]
        );
    }
}
