//! The node processes: spawning `node run` (behind a launch prefix), their state, and the
//! process faults (SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restart). Dropping the cluster SIGKILLs
//! every node still running.
//!
//! All signals go to pids of children we spawned and have not yet reaped, so a pid can never
//! have been recycled for an unrelated process. Nothing is ever killed by name.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};
use tokio::time::{Instant, sleep};

use super::{
    CONFIG_OVERRIDE_ENV, ERROR_LOG_TAIL_LINES, PANIC_LOG_TAIL_LINES, POLL_INTERVAL, TestCluster,
    TestNode,
};

/// What we know of a node's current process.
#[derive(Default)]
pub(super) struct NodeProcess {
    /// The spawned process until it is reaped; signals only ever go to this child.
    child: Option<Child>,
    /// Set by SIGSTOP, cleared by SIGCONT, kill or terminate.
    paused: bool,
    /// How the previous process ended, once reaped.
    last_exit: Option<ExitStatus>,
    /// SIGTERM was sent to the current child: its exit is one the harness asked for.
    terminating: bool,
    /// Every process of this node that ended, in order.
    exits: Vec<NodeExit>,
}

/// One node process that ended, and whether the harness ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeExit {
    pub pid: u32,
    pub status: ExitStatus,
    /// Ended by [`TestCluster::kill`] or [`TestCluster::terminate`]; false when the process
    /// exited by itself (a crash, an abort, the OOM killer, a config error).
    pub requested: bool,
    /// When it was reaped (a process that died by itself is reaped by the next
    /// [`TestCluster::process_state`], so this can be a little late).
    pub reaped_at: std::time::Instant,
}

/// A node's process as seen by a non-blocking check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Started and not yet seen to exit.
    Running { pid: u32, paused: bool },
    /// Exited (or was killed) and reaped.
    Exited(ExitStatus),
    /// Never started.
    NotStarted,
}

impl ProcessState {
    /// Running and not paused: able to answer requests and heartbeats.
    pub fn is_live(&self) -> bool {
        matches!(self, ProcessState::Running { paused: false, .. })
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessState::Running { pid, paused: false } => write!(formatter, "running, pid {pid}"),
            ProcessState::Running { pid, paused: true } => {
                write!(formatter, "paused (SIGSTOP), pid {pid}")
            }
            ProcessState::Exited(status) => write!(formatter, "exited, {status}"),
            ProcessState::NotStarted => write!(formatter, "not started"),
        }
    }
}

impl TestCluster {
    /// Ids of the nodes that are running and not paused.
    pub fn live_node_ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| self.process_state(&node.id).is_live())
            .map(|node| node.id.clone())
            .collect()
    }

    /// The pid of node `id`'s current process; `None` once it has been killed, terminated or
    /// seen to exit.
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.lock_process(self.expect_node(id))
            .child
            .as_ref()
            .map(Child::id)
    }

    /// Node `id`'s process state, reaping it if it has exited.
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn process_state(&self, id: &str) -> ProcessState {
        let node = self.expect_node(id);
        let mut process = self.lock_process(node);
        reap_if_exited(&mut process);
        match &process.child {
            Some(child) => ProcessState::Running {
                pid: child.id(),
                paused: process.paused,
            },
            None => match process.last_exit {
                Some(status) => ProcessState::Exited(status),
                None => ProcessState::NotStarted,
            },
        }
    }

    /// Every process of node `id` that ended so far, oldest first (reaping the current one if
    /// it has exited).
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn exits(&self, id: &str) -> Vec<NodeExit> {
        let mut process = self.lock_process(self.expect_node(id));
        reap_if_exited(&mut process);
        process.exits.clone()
    }

    /// Waits for node `id`'s process to exit by itself (e.g. on a config error) and returns its
    /// status. On timeout the node keeps running.
    pub async fn wait_exit(&self, id: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.find(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.process_state(id) {
                ProcessState::Exited(status) => return Ok(status),
                ProcessState::NotStarted => bail!("node {id} was never started"),
                ProcessState::Running { .. } if Instant::now() >= deadline => {
                    bail!("node {id} still running after {timeout:?}")
                }
                ProcessState::Running { .. } => sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// SIGKILLs node `id` and reaps it.
    ///
    /// # Panics
    /// If there is no node `id` or it is not running.
    pub fn kill(&self, id: &str) {
        let node = self.expect_node(id);
        let mut process = self.lock_process(node);
        let Some(mut child) = process.child.take() else {
            panic!("cannot kill node {id}: it is not running");
        };
        process.paused = false;
        // SIGKILL also ends a stopped process, so no SIGCONT is needed first.
        if let Err(error) = child.kill() {
            panic!("SIGKILL to node {id} (pid {}) failed: {error}", child.id());
        }
        match child.wait() {
            Ok(status) => {
                process.last_exit = Some(status);
                process.exits.push(NodeExit {
                    pid: child.id(),
                    status,
                    requested: true,
                    reaped_at: std::time::Instant::now(),
                });
            }
            Err(error) => panic!("reaping node {id} (pid {}) failed: {error}", child.id()),
        }
    }

    /// SIGSTOPs node `id`: it stays connected but answers nothing, like a frozen process.
    ///
    /// # Panics
    /// If there is no node `id`, it is not running or already paused.
    pub fn pause(&self, id: &str) {
        self.set_paused(id, true);
    }

    /// SIGCONTs node `id` after [`Self::pause`].
    ///
    /// # Panics
    /// If there is no node `id`, it is not running or not paused.
    pub fn resume(&self, id: &str) {
        self.set_paused(id, false);
    }

    /// Sends SIGTERM to node `id` (and SIGCONT if it is paused) and waits for it to exit. If it
    /// has not exited within `timeout`, it is SIGKILLed and an error is returned.
    pub async fn terminate(&self, id: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let node = self.find(id)?;
        {
            let mut process = self.lock_process(node);
            let Some(child) = &process.child else {
                bail!("cannot terminate node {id}: it is not running");
            };
            send_signal(child, Signal::TERM).with_context(|| format!("SIGTERM to node {id}"))?;
            // A stopped process handles the pending SIGTERM once continued.
            let continued = process.paused.then(|| send_signal(child, Signal::CONT));
            process.terminating = true;
            if let Some(continued) = continued {
                continued.with_context(|| format!("SIGCONT to node {id}"))?;
                process.paused = false;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let ProcessState::Exited(status) = self.process_state(id) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill(id);
                bail!(
                    "node {id} did not exit within {timeout:?} of SIGTERM, so it was SIGKILLed\n\
                     last {ERROR_LOG_TAIL_LINES} log lines:\n{}",
                    self.log_tail(id, ERROR_LOG_TAIL_LINES)
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts node `id` again (or for the first time) with the same config, appending to its log.
    /// Does not wait for readiness: [`Self::wait_ready`] does.
    pub async fn restart(&self, id: &str) -> anyhow::Result<()> {
        let node = self.find(id)?;
        let mut process = self.lock_process(node);
        reap_if_exited(&mut process);
        if let Some(child) = &process.child {
            bail!(
                "node {id} is still running (pid {}); kill or terminate it first",
                child.id()
            );
        }
        let child = self.spawn(node)?;
        process.child = Some(child);
        process.paused = false;
        process.terminating = false;
        Ok(())
    }

    fn set_paused(&self, id: &str, paused: bool) {
        let node = self.expect_node(id);
        let mut process = self.lock_process(node);
        let (signal, verb) = if paused {
            (Signal::STOP, "pause")
        } else {
            (Signal::CONT, "resume")
        };
        assert_ne!(
            process.paused, paused,
            "cannot {verb} node {id}: it is already in that state"
        );
        let Some(child) = &process.child else {
            panic!("cannot {verb} node {id}: it is not running");
        };
        if let Err(error) = send_signal(child, signal) {
            panic!("cannot {verb} node {id} (pid {}): {error}", child.id());
        }
        process.paused = paused;
    }

    /// Spawns `node run` for `node`, its output appended to its log.
    fn spawn(&self, node: &TestNode) -> anyhow::Result<Child> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        // A marker makes the runs of a restarted node easy to tell apart in its log.
        writeln!(
            log,
            "--- chaos: starting node {} at unix_ms={}",
            node.id,
            unix_ms()
        )
        .with_context(|| format!("writing {}", node.log_path.display()))?;
        let stderr_log = log.try_clone().context("duplicating the log file handle")?;

        let mut command = match node.command_prefix.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(&self.node_binary);
                command
            }
            None => Command::new(&self.node_binary),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(&node.id)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr_log);
        for key in CONFIG_OVERRIDE_ENV {
            command.env_remove(key);
        }
        if !self.env.iter().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        command.spawn().with_context(|| {
            format!(
                "spawning {} for node {}",
                self.node_binary.display(),
                node.id
            )
        })
    }

    fn lock_process<'a>(&self, node: &'a TestNode) -> MutexGuard<'a, NodeProcess> {
        // A panic while the lock was held (a failed assertion) leaves the state consistent.
        node.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what the nodes were saying (libtest shows it with the failure).
            eprintln!(
                "chaos: test panicked; cluster directory {}",
                self.dir.display()
            );
            for node in &self.nodes {
                eprintln!(
                    "--- last {PANIC_LOG_TAIL_LINES} log lines of {}:\n{}",
                    node.id,
                    self.log_tail(&node.id, PANIC_LOG_TAIL_LINES)
                );
            }
        }
        for node in &self.nodes {
            let mut process = self.lock_process(node);
            if let Some(mut child) = process.child.take() {
                if process.paused {
                    // Not needed for SIGKILL, but leaves nothing stopped if the kill fails.
                    let _ = send_signal(&child, Signal::CONT);
                }
                // Errors here mean the child is already gone; nothing is left to clean up.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.temp_dir.is_none() {
            eprintln!("chaos: kept cluster directory {}", self.dir.display());
        }
        // `temp_dir` is dropped after this, deleting the directory once no node writes to it.
    }
}

/// Reaps the child if it has exited, recording its status.
fn reap_if_exited(process: &mut NodeProcess) {
    let Some(child) = process.child.as_mut() else {
        return;
    };
    // Still running, or `try_wait` failed (for our own child only if it was reaped elsewhere):
    // keep treating it as running so kill() still reports clearly.
    if let Ok(Some(status)) = child.try_wait() {
        process.exits.push(NodeExit {
            pid: child.id(),
            status,
            requested: process.terminating,
            reaped_at: std::time::Instant::now(),
        });
        process.last_exit = Some(status);
        process.child = None;
        process.paused = false;
        process.terminating = false;
    }
}

/// Sends `signal` to `child`.
///
/// Taking the `Child` (not a pid) is the point: a child we have not reaped still owns its pid,
/// so the signal cannot reach a recycled pid of an unrelated process.
fn send_signal(child: &Child, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("pid {} out of range", child.id())))?;
    rustix::process::kill_process(pid, signal).map_err(io::Error::from)
}

/// Milliseconds since the Unix epoch, for the start markers in the logs.
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default()
}

/// A stand-in for the node binary: a shell script, since these tests cannot run nodes.
#[cfg(test)]
pub(super) fn fake_binary(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-node");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::cluster::config::parse_generated;
    use crate::cluster::{ClusterBuilder, NodePlacement};

    #[tokio::test]
    async fn process_faults_reach_the_spawned_process() {
        use std::os::unix::process::ExitStatusExt;
        let scripts = tempfile::tempdir().expect("tempdir");
        let binary = fake_binary(scripts.path(), "echo \"args: $*\"; exec sleep 60");
        let cluster = ClusterBuilder::new(binary)
            .nodes(2)
            .start_without_waiting()
            .await
            .expect("spawn");
        assert!(cluster.pid("n1").is_some());
        assert_eq!(cluster.live_node_ids(), ["n1", "n2"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.log_tail("n1", 10).contains("args:") {
            assert!(
                Instant::now() < deadline,
                "the fake node never wrote its arguments"
            );
            sleep(POLL_INTERVAL).await;
        }

        cluster.pause("n1");
        assert!(matches!(
            cluster.process_state("n1"),
            ProcessState::Running { paused: true, .. }
        ));
        assert_eq!(cluster.live_node_ids(), ["n2"]);
        // A paused node still ends on SIGTERM: terminate continues it.
        let status = cluster
            .terminate("n1", Duration::from_secs(10))
            .await
            .expect("terminate");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(cluster.pid("n1"), None);
        assert!(
            cluster
                .terminate("n1", Duration::from_secs(1))
                .await
                .is_err()
        );

        cluster.restart("n1").await.expect("restart");
        assert!(
            cluster.restart("n1").await.is_err(),
            "restart of a running node must fail"
        );
        cluster.kill("n1");
        let ProcessState::Exited(status) = cluster.process_state("n1") else {
            panic!("n1 should have exited: {}", cluster.process_state("n1"));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let exits = cluster.exits("n1");
        assert_eq!(exits.len(), 2, "{exits:?}");
        assert!(
            exits.iter().all(|exit| exit.requested),
            "the harness ended both: {exits:?}"
        );
        assert_eq!(exits[0].status.signal(), Some(libc::SIGTERM));

        let log = cluster.log_tail("n1", 10);
        assert_eq!(
            log.matches("--- chaos: starting node n1").count(),
            2,
            "{log}"
        );
        assert!(log.contains("args: run --config"), "{log}");
        assert!(log.contains("--id n1"), "{log}");
        // n2 is still running and paused here: drop must continue and kill it.
        cluster.pause("n2");
    }

    #[tokio::test]
    async fn placements_set_addresses_and_prefix_the_command() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let binary = fake_binary(
            scripts.path(),
            "echo \"prefixed=$CHAOS_PREFIXED args: $*\"; exec sleep 60",
        );
        let placement = |port: u16| NodePlacement {
            cluster_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
            // `env` execs its command, as `ip netns exec` does.
            command_prefix: vec!["env".into(), "CHAOS_PREFIXED=yes".into()],
        };
        let directory = scripts.path().join("cluster");
        let cluster = ClusterBuilder::new(binary)
            .nodes(5)
            .placements(vec![placement(40_001), placement(40_011)])
            .directory(&directory)
            .start_without_waiting()
            .await
            .expect("spawn");
        assert_eq!(cluster.node_ids(), ["n1", "n2"]);
        assert_eq!(cluster.http_url("n2"), "http://127.0.0.1:40012");
        assert_eq!(cluster.dir(), directory);
        let config =
            parse_generated(&std::fs::read_to_string(cluster.config_path()).expect("config"));
        assert_eq!(config.nodes[1].cluster_addr, placement(40_011).cluster_addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.log_tail("n2", 10).contains("args:") {
            assert!(
                Instant::now() < deadline,
                "the fake node never wrote its arguments"
            );
            sleep(POLL_INTERVAL).await;
        }
        assert!(
            cluster
                .log_tail("n2", 10)
                .contains("prefixed=yes args: run --config")
        );
        // The prefix execs the node, so the child is the node and SIGSTOP reaches it.
        cluster.pause("n2");
        cluster.kill("n2");
        drop(cluster);
        assert!(
            directory.join("n1.log").is_file(),
            "a given directory is kept"
        );
    }

    #[tokio::test]
    async fn a_node_that_exits_is_seen_with_its_status() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let binary = fake_binary(scripts.path(), "echo 'config error: bad key' >&2; exit 2");
        let cluster = ClusterBuilder::new(binary)
            .nodes(1)
            .start_without_waiting()
            .await
            .expect("spawn");
        let status = cluster
            .wait_exit("n1", Duration::from_secs(10))
            .await
            .expect("exits");
        assert_eq!(status.code(), Some(2));
        let exits = cluster.exits("n1");
        assert_eq!(exits.len(), 1);
        assert!(!exits[0].requested, "it exited by itself: {exits:?}");
        assert!(cluster.log_tail("n1", 5).contains("config error: bad key"));
        let error = cluster
            .wait_ready("n1", Duration::from_secs(1))
            .await
            .expect_err("cannot be ready");
        assert!(
            error.to_string().contains("config error: bad key"),
            "{error}"
        );
    }
}
