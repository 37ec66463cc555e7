//! The one cluster test builder: starts real `node run` processes on loopback, observes them
//! over HTTP and injects process faults (kill, pause, terminate, restart).
//!
//! Every crate's integration tests and the chaos harness use it, so they all exercise the same
//! binary, config format and start-up path as a real deployment.
//!
//! A cluster lives in a fresh temporary directory:
//! - `cluster.toml`: the generated config, shared by every node;
//! - `<id>.log`: the node's stdout and stderr, appended across restarts;
//! - `data/<id>/` and `data/objects/`: node-local data and the shared object store.
//!
//! The directory is deleted when the [`TestCluster`] is dropped, unless the environment variable
//! named by [`KEEP_DIRS_ENV`] is set or the builder was given a directory
//! ([`ClusterBuilder::directory`]). Dropping the cluster SIGKILLs every node still running.
//!
//! By default every node listens on loopback and its binary is run directly. The chaos harness
//! instead gives each node its own address and a command prefix ([`ClusterBuilder::placements`]),
//! e.g. `ip netns exec <namespace>`, to run every node in its own network namespace. The prefix
//! must `exec` the node, so that the spawned child's pid is the node's pid and signals reach it.
//!
//! Ports come from the kernel: [`free_loopback_ports`] binds `127.0.0.1:0` listeners, reads their
//! ports and releases them, so parallel test processes do not collide. Between the release and the
//! node's own bind another process may take a port; that window is a few milliseconds and the
//! node then fails with a clear bind error in its log (shown by the start error).
//!
//! All signals go to pids of children we spawned and have not yet reaped, so a pid can never
//! have been recycled for an unrelated process. Nothing is ever killed by name.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;
use tokio::time::{Instant, sleep};

/// Most nodes one builder starts (ids `n1..nN`); a typo such as `nodes(300)` fails loudly
/// instead of exhausting ports and cores.
pub const NODES_MAX: usize = 16;
/// Default deadline of [`ClusterBuilder::start`]: every node ready and every view all up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the `wait_*` methods re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a single HTTP request to a node may take; a paused node never answers.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest timeout given to a request near a deadline, so the last poll still has a chance.
const HTTP_REQUEST_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Connecting over loopback either succeeds at once or the port is closed.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Log lines of each node included in error messages.
pub const ERROR_LOG_TAIL_LINES: usize = 30;
/// Log lines of each node printed when a cluster is dropped while a test panics.
const PANIC_LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find its last lines; bounds the cost of a huge log.
const LOG_TAIL_BYTES_MAX: u64 = 256 * 1024;
/// If this environment variable is set (to anything), cluster directories are kept and their
/// path printed, for reading the logs after a failed test.
pub const KEEP_DIRS_ENV: &str = "ACTORHUB_KEEP_TEST_DIRS";
/// If set, [`default_node_binary`] uses this path for the `node` binary.
pub const NODE_BINARY_ENV: &str = "ACTORHUB_NODE_BIN";
/// The cluster cookie of every test cluster.
pub const TEST_COOKIE: &str = "actorhub-test-cookie";
/// The JWT secret of every test cluster (tests mint tokens with it).
pub const TEST_JWT_SECRET: &str = "actorhub-test-jwt-secret-0123456789";
/// The cluster name of every test cluster.
pub const TEST_CLUSTER_NAME: &str = "actorhub-test";
/// Environment variables that would override the generated config's secrets; they are removed
/// from a node's environment (unless given through [`ClusterBuilder::env`]) so that a
/// developer's shell cannot change what a test runs.
const CONFIG_OVERRIDE_ENV: [&str; 4] = [
    "ACTORHUB_COOKIE",
    "ACTORHUB_JWT_SECRET",
    "ACTORHUB_S3_ACCESS_KEY_ID",
    "ACTORHUB_S3_SECRET_ACCESS_KEY",
];

/// The `node` binary next to the running test executable, or the one named by
/// [`NODE_BINARY_ENV`].
///
/// Integration tests of the `node` crate should prefer `env!("CARGO_BIN_EXE_node")`; other crates
/// cannot name another package's binary, so this looks for `target/<profile>/node`, one level
/// above the test executable in `target/<profile>/deps/`. Build it first (`cargo build -p node`).
pub fn default_node_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NODE_BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    let test_executable = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} has no grandparent directory", test_executable.display()))?;
    let candidate = profile_dir.join("node");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "no node binary at {}: run `cargo build -p node` first or set {NODE_BINARY_ENV}",
            candidate.display()
        )
    }
}

pub use runtime::config::free_loopback_ports;

/// Describes a test cluster; [`ClusterBuilder::start`] turns it into a running [`TestCluster`].
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let cluster = chaos::cluster::ClusterBuilder::new(chaos::cluster::default_node_binary()?)
///     .nodes(3)
///     .heartbeat(100, 600)
///     .setting("entities", "passivate_after_ms", 1_000)
///     .start()
///     .await?;
/// cluster.kill("n2");
/// cluster.wait_member_state("n1", "n2", "down", Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    node_binary: PathBuf,
    node_count: usize,
    /// Per-node addresses and launch prefixes; `None` means loopback ports and no prefix.
    placements: Option<Vec<NodePlacement>>,
    /// Where the cluster directory goes (kept after the cluster); `None` means a temporary one.
    directory: Option<PathBuf>,
    /// Config values set by the test, by table; they replace the generated defaults.
    settings: toml::Table,
    extra_toml: String,
    env: Vec<(String, String)>,
    start_timeout: Duration,
}

impl ClusterBuilder {
    /// A 3-node cluster of `node_binary` processes with default timings.
    pub fn new(node_binary: impl Into<PathBuf>) -> Self {
        Self {
            node_binary: node_binary.into(),
            node_count: 3,
            placements: None,
            directory: None,
            settings: toml::Table::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }

    /// Number of nodes, named `n1` to `nN`.
    ///
    /// # Panics
    /// If `count` is 0 or above [`NODES_MAX`].
    pub fn nodes(mut self, count: usize) -> Self {
        assert!(
            (1..=NODES_MAX).contains(&count),
            "a test cluster has 1 to {NODES_MAX} nodes, not {count}"
        );
        self.node_count = count;
        self
    }

    /// One node per placement (ids `n1..nN` in order), each listening on the placement's
    /// addresses and launched behind its command prefix, instead of loopback ports. Replaces the
    /// count given to [`Self::nodes`].
    ///
    /// # Panics
    /// If there are no placements or more than [`NODES_MAX`].
    pub fn placements(mut self, placements: Vec<NodePlacement>) -> Self {
        assert!(
            (1..=NODES_MAX).contains(&placements.len()),
            "a test cluster has 1 to {NODES_MAX} nodes, not {}",
            placements.len()
        );
        self.node_count = placements.len();
        self.placements = Some(placements);
        self
    }

    /// Puts the cluster directory (config, logs, data) at `path`, created if missing, and keeps
    /// it after the cluster is dropped: for a harness that reports where the logs are.
    pub fn directory(mut self, path: impl Into<PathBuf>) -> Self {
        self.directory = Some(path.into());
        self
    }

    /// `cluster.heartbeat_interval_ms` and `cluster.failure_timeout_ms`.
    pub fn heartbeat(self, interval_ms: u64, failure_timeout_ms: u64) -> Self {
        self.setting(
            "cluster",
            "heartbeat_interval_ms",
            toml_integer(interval_ms),
        )
        .setting(
            "cluster",
            "failure_timeout_ms",
            toml_integer(failure_timeout_ms),
        )
    }

    /// Sets `key` in `[table]` of the generated config, replacing a generated value of the same
    /// key (for example `setting("storage", "url", "s3://bucket")`). A table the generator does
    /// not write (such as `entities`) is created.
    ///
    /// # Panics
    /// If `table` is `node`: every node gets the same generated entry.
    pub fn setting(mut self, table: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        assert_ne!(
            table, "node",
            "[[node]] entries are generated; per-node settings are not supported"
        );
        let entry = self
            .settings
            .entry(table.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(values) = entry {
            values.insert(key.to_string(), value.into());
        }
        self
    }

    /// Text appended verbatim to the generated `cluster.toml`. It must start with a table header
    /// and must not repeat a table the generator writes (`cluster`, `storage`, `web`, or one
    /// given to [`Self::setting`]); use [`Self::setting`] for those. Useful for invalid configs
    /// in config-error tests.
    pub fn extra_toml(mut self, section_text: &str) -> Self {
        self.extra_toml.push_str(section_text);
        if !self.extra_toml.ends_with('\n') {
            self.extra_toml.push('\n');
        }
        self
    }

    /// An extra environment variable of every node process. `RUST_LOG` defaults to `info`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Deadline of [`Self::start`] (default [`START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Writes the config, starts every node and waits until every node is ready and every node's
    /// `/api/cluster` shows every node `up`. On timeout, or if a node exits, the error contains
    /// each node's state, its last `/api/cluster` answer and the tail of its log.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        let timeout = self.start_timeout;
        let cluster = self.start_without_waiting().await?;
        cluster.wait_started(timeout).await?;
        Ok(cluster)
    }

    /// Writes the config and starts every node without waiting for anything: for config-error
    /// tests ([`TestCluster::wait_exit`]) and tests that watch the start-up themselves.
    pub async fn start_without_waiting(self) -> anyhow::Result<TestCluster> {
        let cluster = self.prepare().await?;
        for id in cluster.node_ids() {
            cluster.restart(&id).await?;
        }
        Ok(cluster)
    }

    /// Writes the config but starts no node: start them one by one with [`TestCluster::restart`]
    /// (partial starts, or a test that edits [`TestCluster::config_path`] first).
    pub async fn prepare(self) -> anyhow::Result<TestCluster> {
        if !self.node_binary.is_file() {
            bail!(
                "the node binary {} does not exist; build it first",
                self.node_binary.display()
            );
        }
        let (dir, temp_dir) = if let Some(dir) = &self.directory {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the cluster directory {}", dir.display()))?;
            (dir.clone(), None)
        } else {
            Self::temporary_directory()?
        };
        let addresses = match &self.placements {
            Some(placements) => placements
                .iter()
                .enumerate()
                .map(|(index, placement)| NodeAddresses {
                    id: format!("n{}", index + 1),
                    cluster_addr: placement.cluster_addr,
                    http_addr: placement.http_addr,
                    command_prefix: placement.command_prefix.clone(),
                })
                .collect(),
            None => node_addresses(self.node_count).context("allocating loopback ports")?,
        };
        let config_path = dir.join("cluster.toml");
        let config_text = self.render_config(&addresses)?;
        std::fs::write(&config_path, config_text)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let http = reqwest::Client::builder()
            // Loopback must never go through a proxy a developer has configured.
            .no_proxy()
            // Restarted nodes reuse their ports; a pooled connection to the old process would
            // fail one request for no reason.
            .pool_max_idle_per_host(0)
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;

        let nodes = addresses
            .into_iter()
            .map(|address| TestNode {
                log_path: dir.join(format!("{}.log", address.id)),
                id: address.id,
                cluster_addr: address.cluster_addr,
                http_addr: address.http_addr,
                command_prefix: address.command_prefix,
                process: Mutex::new(NodeProcess::default()),
            })
            .collect();
        Ok(TestCluster {
            dir,
            temp_dir,
            config_path,
            node_binary: self.node_binary,
            env: self.env,
            nodes,
            http,
        })
    }

    /// A fresh temporary cluster directory, kept (and `None` returned for the guard) when
    /// [`KEEP_DIRS_ENV`] is set.
    fn temporary_directory() -> anyhow::Result<(PathBuf, Option<TempDir>)> {
        let temp_dir = tempfile::Builder::new()
            .prefix("actorhub-cluster-")
            .tempdir()
            .context("creating the cluster directory")?;
        Ok(if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            let dir = temp_dir.keep();
            eprintln!(
                "chaos: keeping cluster directory {} ({KEEP_DIRS_ENV} is set)",
                dir.display()
            );
            (dir, None)
        } else {
            (temp_dir.path().to_path_buf(), Some(temp_dir))
        })
    }

    /// The `cluster.toml` text for these nodes: generated tables, the test's settings, the
    /// `[[node]]` entries, then the extra text.
    fn render_config(&self, nodes: &[NodeAddresses]) -> anyhow::Result<String> {
        let mut root = toml::Table::new();
        root.insert(
            "cluster".into(),
            table([
                ("name", TEST_CLUSTER_NAME.into()),
                ("cookie", TEST_COOKIE.into()),
                ("data_dir", "data".into()),
            ]),
        );
        root.insert(
            "storage".into(),
            table([("url", "file:data/objects".into())]),
        );
        root.insert(
            "web".into(),
            table([("jwt_secret", TEST_JWT_SECRET.into())]),
        );
        for (table_name, values) in &self.settings {
            let entry = root
                .entry(table_name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let (toml::Value::Table(target), toml::Value::Table(values)) = (entry, values) {
                target.extend(values.clone());
            }
        }
        let node_entries = nodes
            .iter()
            .map(|node| {
                table([
                    ("id", node.id.as_str().into()),
                    ("cluster_addr", node.cluster_addr.to_string().into()),
                    ("http_addr", node.http_addr.to_string().into()),
                ])
            })
            .collect();
        root.insert("node".into(), toml::Value::Array(node_entries));

        let mut text = toml::to_string(&root).context("rendering cluster.toml")?;
        if !self.extra_toml.is_empty() {
            text.push('\n');
            text.push_str(&self.extra_toml);
        }
        Ok(text)
    }
}

/// A `u64` as a TOML integer (TOML integers are `i64`; larger values saturate and the node's
/// config validation reports them).
fn toml_integer(value: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Value {
    toml::Value::Table(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

/// Where one node listens and how it is launched; see [`ClusterBuilder::placements`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlacement {
    /// The node's `cluster_addr` (it also binds this IP).
    pub cluster_addr: SocketAddr,
    /// The node's `http_addr`.
    pub http_addr: SocketAddr,
    /// Program and arguments put before the node binary, e.g. `["ip", "netns", "exec", "ns1"]`.
    /// It must `exec` the node (not fork it), so that signals to the child reach the node.
    pub command_prefix: Vec<String>,
}

/// One node's id, addresses and launch prefix, before it runs.
#[derive(Debug, Clone)]
struct NodeAddresses {
    id: String,
    cluster_addr: SocketAddr,
    http_addr: SocketAddr,
    command_prefix: Vec<String>,
}

/// Ids `n1..nN` with two fresh loopback ports each, all allocated at once so they are distinct.
fn node_addresses(count: usize) -> io::Result<Vec<NodeAddresses>> {
    let ports = free_loopback_ports(2 * count)?;
    Ok(ports
        .chunks_exact(2)
        .enumerate()
        .map(|(index, pair)| NodeAddresses {
            id: format!("n{}", index + 1),
            cluster_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, pair[0])),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, pair[1])),
            command_prefix: Vec::new(),
        })
        .collect())
}

/// A running test cluster of real node processes. See the [module documentation](self).
///
/// Every method takes `&self` (processes sit behind a per-node mutex), so a chaos harness can
/// share one cluster between a fault-injecting task and checking tasks through an `Arc`.
/// Methods that return nothing panic on programmer errors (an unknown id, killing a node that
/// is not running); the others return them as errors.
pub struct TestCluster {
    dir: PathBuf,
    /// Deletes the directory when dropped (after the nodes are killed); `None` when kept.
    temp_dir: Option<TempDir>,
    config_path: PathBuf,
    node_binary: PathBuf,
    env: Vec<(String, String)>,
    nodes: Vec<TestNode>,
    http: reqwest::Client,
}

/// One node of a [`TestCluster`].
struct TestNode {
    id: String,
    cluster_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Put before the node binary when spawning (empty: the binary is run directly).
    command_prefix: Vec<String>,
    log_path: PathBuf,
    /// The node's current process. Locked only for non-blocking calls (signals, `try_wait`,
    /// spawning), never across an `.await`, so every `TestCluster` method can take `&self`.
    process: Mutex<NodeProcess>,
}

/// What we know of a node's current process.
#[derive(Default)]
struct NodeProcess {
    /// The spawned process until it is reaped; signals only ever go to this child.
    child: Option<Child>,
    /// Set by SIGSTOP, cleared by SIGCONT, kill or terminate.
    paused: bool,
    /// How the previous process ended, once reaped.
    last_exit: Option<ExitStatus>,
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
    /// The cluster directory (config, logs, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generated `cluster.toml`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every node id, `n1..nN`, whatever its state.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.id.clone()).collect()
    }

    /// Ids of the nodes that are running and not paused.
    pub fn live_node_ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| self.process_state(&node.id).is_live())
            .map(|node| node.id.clone())
            .collect()
    }

    /// `http://IP:PORT` of node `id` (no trailing slash); `IP` is loopback unless the builder was
    /// given placements.
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn http_url(&self, id: &str) -> String {
        format!("http://{}", self.expect_node(id).http_addr)
    }

    /// The HTTP address of node `id`.
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn http_addr(&self, id: &str) -> SocketAddr {
        self.expect_node(id).http_addr
    }

    /// The cluster (inter-node) address of node `id`.
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn cluster_addr(&self, id: &str) -> SocketAddr {
        self.expect_node(id).cluster_addr
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

    /// `GET /api/cluster` of node `observer`.
    pub async fn cluster_view(&self, observer: &str) -> anyhow::Result<Value> {
        self.get_json(observer, "/api/cluster", HTTP_REQUEST_TIMEOUT)
            .await
    }

    /// The state (`"up"` or `"down"`) of `member` in `observer`'s view.
    pub async fn member_state(&self, observer: &str, member: &str) -> anyhow::Result<String> {
        let view = self.cluster_view(observer).await?;
        member_state_in(&view, member)
    }

    /// Polls `observer`'s view every [`POLL_INTERVAL`] until `member` is in `state`; returns how
    /// long that took. On timeout the error shows the last view (or request error) and the tail
    /// of the observer's log. Fails at once if the observer is not running.
    pub async fn wait_member_state(
        &self,
        observer: &str,
        member: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        self.find(observer)?;
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let process = self.process_state(observer);
            if !matches!(process, ProcessState::Running { .. }) {
                bail!("observer {observer} is {process}; it cannot see {member} become {state:?}");
            }
            let view = self
                .get_json(observer, "/api/cluster", request_timeout(deadline))
                .await;
            let last_answer = match view
                .and_then(|view| member_state_in(&view, member).map(|found| (found, view)))
            {
                Ok((found, _)) if found == state => return Ok(started.elapsed()),
                Ok((found, view)) => format!("{member} is {found:?} in {view}"),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{observer} did not see {member} become {state:?} within {timeout:?}; last answer: \
                     {last_answer}\nlast {ERROR_LOG_TAIL_LINES} log lines of {observer}:\n{}",
                    self.log_tail(observer, ERROR_LOG_TAIL_LINES)
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every live node (running, not paused) sees every live node `up`.
    pub async fn wait_all_up(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_all_up_until(Instant::now() + timeout).await
    }

    /// Polls `GET /readyz` of node `id` until it answers 200. Fails at once if the node exits.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_ready_until(id, Instant::now() + timeout).await
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
            Ok(status) => process.last_exit = Some(status),
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
            send_signal(child, libc::SIGTERM).with_context(|| format!("SIGTERM to node {id}"))?;
            if process.paused {
                // A stopped process handles the pending SIGTERM once continued.
                send_signal(child, libc::SIGCONT)
                    .with_context(|| format!("SIGCONT to node {id}"))?;
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
        Ok(())
    }

    /// The last `lines` lines of node `id`'s log (stdout and stderr of all its runs).
    ///
    /// # Panics
    /// If there is no node `id`.
    pub fn log_tail(&self, id: &str, lines: usize) -> String {
        let path = &self.expect_node(id).log_path;
        match read_log_end(path) {
            Ok(text) => last_lines(&text, lines).to_string(),
            Err(error) => format!("(cannot read {}: {error})", path.display()),
        }
    }

    /// A report for failure messages: each node's process state, `/api/cluster` answer (live
    /// nodes only) and last log lines.
    pub async fn diagnostics(&self) -> String {
        let mut report = format!("cluster directory: {}\n", self.dir.display());
        for node in &self.nodes {
            let process = self.process_state(&node.id);
            report.push_str(&format!(
                "--- node {} ({process}), http://{}\n",
                node.id, node.http_addr
            ));
            if process.is_live() {
                let view = self
                    .get_json(&node.id, "/api/cluster", HTTP_REQUEST_TIMEOUT)
                    .await;
                match view {
                    Ok(view) => report.push_str(&format!("/api/cluster: {view}\n")),
                    Err(error) => report.push_str(&format!("/api/cluster: {error:#}\n")),
                }
            }
            report.push_str(&format!("last {ERROR_LOG_TAIL_LINES} log lines:\n"));
            report.push_str(&self.log_tail(&node.id, ERROR_LOG_TAIL_LINES));
            report.push('\n');
        }
        report
    }

    /// The wait of [`ClusterBuilder::start`], with the full diagnostics on failure.
    async fn wait_started(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut outcome = Ok(());
        for id in self.node_ids() {
            outcome = self.wait_ready_until(&id, deadline).await;
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = self.wait_all_up_until(deadline).await;
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(error) => Err(anyhow!(
                "the {}-node cluster did not start within {timeout:?}: {error:#}\n{}",
                self.nodes.len(),
                self.diagnostics().await
            )),
        }
    }

    async fn wait_ready_until(&self, id: &str, deadline: Instant) -> anyhow::Result<()> {
        self.find(id)?;
        let started = Instant::now();
        loop {
            match self.process_state(id) {
                ProcessState::Running { .. } => {}
                other => bail!(
                    "node {id} is {other} and will not become ready\nlast {ERROR_LOG_TAIL_LINES} log lines:\n{}",
                    self.log_tail(id, ERROR_LOG_TAIL_LINES)
                ),
            }
            let last_answer = match self.get(id, "/readyz", request_timeout(deadline)).await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => format!("status {}", response.status()),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "node {id} not ready after {:?}; last /readyz answer: {last_answer}",
                    started.elapsed()
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_all_up_until(&self, deadline: Instant) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let live = self.live_node_ids();
            if live.is_empty() {
                bail!("no node is live");
            }
            let mut complaints = Vec::new();
            for observer in &live {
                match self
                    .get_json(observer, "/api/cluster", request_timeout(deadline))
                    .await
                {
                    Ok(view) => {
                        let not_up = members_not_up(&view, &live);
                        if !not_up.is_empty() {
                            complaints
                                .push(format!("{observer} does not see {not_up:?} up: {view}"));
                        }
                    }
                    Err(error) => complaints.push(format!("{observer}: {error:#}")),
                }
            }
            if complaints.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "live nodes {live:?} did not all see each other up within {:?}:\n{}",
                    started.elapsed(),
                    complaints.join("\n")
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    fn set_paused(&self, id: &str, paused: bool) {
        let node = self.expect_node(id);
        let mut process = self.lock_process(node);
        let (signal, verb) = if paused {
            (libc::SIGSTOP, "pause")
        } else {
            (libc::SIGCONT, "resume")
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

    async fn get(
        &self,
        id: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::Response> {
        let node = self.find(id)?;
        let url = format!("http://{}{path}", node.http_addr);
        self.http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
    }

    async fn get_json(&self, id: &str, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        let response = self.get(id, path, timeout).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("GET {path} on {id}: status {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {path} on {id}: body is not JSON"))
    }

    fn find(&self, id: &str) -> anyhow::Result<&TestNode> {
        self.nodes.iter().find(|node| node.id == id).ok_or_else(|| {
            anyhow!(
                "no node {id:?} in this cluster; it has {:?}",
                self.node_ids()
            )
        })
    }

    fn expect_node(&self, id: &str) -> &TestNode {
        match self.find(id) {
            Ok(node) => node,
            Err(error) => panic!("{error}"),
        }
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
                    let _ = send_signal(&child, libc::SIGCONT);
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
        process.last_exit = Some(status);
        process.child = None;
        process.paused = false;
    }
}

/// Sends `signal` to `child`.
///
/// Taking the `Child` (not a pid) is the point: a child we have not reaped still owns its pid,
/// so the signal cannot reach a recycled pid of an unrelated process.
#[allow(unsafe_code)]
fn send_signal(child: &Child, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) only takes two integers and touches no memory of this process.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The timeout for one request made before `deadline`.
fn request_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(HTTP_REQUEST_TIMEOUT_MIN, HTTP_REQUEST_TIMEOUT)
}

/// The state of `member` in an `/api/cluster` answer.
fn member_state_in(view: &Value, member: &str) -> anyhow::Result<String> {
    let members = view
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no `members` array in {view}"))?;
    let entry = members
        .iter()
        .find(|entry| entry.get("id").and_then(Value::as_str) == Some(member))
        .ok_or_else(|| anyhow!("{member} is not among the members of {view}"))?;
    entry
        .get("state")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("member {member} has no string `state` in {view}"))
}

/// The ids among `expected` that an `/api/cluster` answer does not show `up`.
fn members_not_up(view: &Value, expected: &[String]) -> Vec<String> {
    let up: HashSet<&str> = view
        .get("members")
        .and_then(Value::as_array)
        .map(|members| {
            members
                .iter()
                .filter(|entry| entry.get("state").and_then(Value::as_str) == Some("up"))
                .filter_map(|entry| entry.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    expected
        .iter()
        .filter(|id| !up.contains(id.as_str()))
        .cloned()
        .collect()
}

/// The end of a log file, at most [`LOG_TAIL_BYTES_MAX`] bytes, decoded lossily.
fn read_log_end(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    if count == 0 {
        return "";
    }
    match trimmed.rmatch_indices('\n').nth(count - 1) {
        Some((index, _)) => &trimmed[index + 1..],
        None => trimmed,
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::config::{ClusterConfig, ConfigOverrides};
    use serde_json::json;

    fn parse(text: &str) -> ClusterConfig {
        let overrides = ConfigOverrides {
            base_dir: Some("/tmp/cluster".into()),
            ..Default::default()
        };
        match ClusterConfig::from_toml(text, "generated.toml", overrides) {
            Ok(config) => config,
            Err(error) => panic!("generated config rejected: {error}\n{text}"),
        }
    }

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_loopback_ports(2 * NODES_MAX).expect("loopback ports");
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(!distinct.contains(&0));
    }

    #[test]
    fn node_addresses_are_loopback_and_distinct() {
        let nodes = node_addresses(4).expect("addresses");
        let ids: Vec<&str> = nodes.iter().map(|node| node.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2", "n3", "n4"]);
        let addrs: HashSet<SocketAddr> = nodes
            .iter()
            .flat_map(|node| [node.cluster_addr, node.http_addr])
            .collect();
        assert_eq!(addrs.len(), 8);
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()));
    }

    #[test]
    fn generated_config_is_accepted_by_the_runtime() {
        let builder = ClusterBuilder::new("/nonexistent/node")
            .nodes(3)
            .heartbeat(100, 600)
            .setting("entities", "passivate_after_ms", 1_000);
        let nodes = node_addresses(3).expect("addresses");
        let config = parse(&builder.render_config(&nodes).expect("render"));
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.nodes[1].id, "n2");
        assert_eq!(config.nodes[1].http_addr, nodes[1].http_addr);
        assert_eq!(config.nodes[2].cluster_addr, nodes[2].cluster_addr);
        assert_eq!(config.cluster.heartbeat_interval_ms, 100);
        assert_eq!(config.cluster.failure_timeout_ms, 600);
        assert_eq!(config.entities.passivate_after_ms, 1_000);
        assert_eq!(config.cookie(), TEST_COOKIE);
        assert_eq!(config.web.jwt_secret.as_deref(), Some(TEST_JWT_SECRET));
        assert_eq!(config.cluster.data_dir, PathBuf::from("/tmp/cluster/data"));
        assert_eq!(config.storage.url, "file:///tmp/cluster/data/objects");
    }

    #[test]
    fn settings_replace_generated_values() {
        let builder = ClusterBuilder::new("/nonexistent/node").nodes(1).setting(
            "storage",
            "url",
            "file:///srv/objects",
        );
        let config = parse(
            &builder
                .render_config(&node_addresses(1).expect("addresses"))
                .expect("render"),
        );
        assert_eq!(config.storage.url, "file:///srv/objects");
    }

    #[test]
    fn extra_toml_is_appended_verbatim() {
        let builder = ClusterBuilder::new("/nonexistent/node")
            .nodes(1)
            .extra_toml("[entities]\nask_timeout_ms = 7000");
        let text = builder
            .render_config(&node_addresses(1).expect("addresses"))
            .expect("render");
        assert!(
            text.ends_with("[entities]\nask_timeout_ms = 7000\n"),
            "{text}"
        );
        assert_eq!(parse(&text).entities.ask_timeout_ms, 7_000);

        let bad = ClusterBuilder::new("/nonexistent/node")
            .nodes(1)
            .extra_toml("[bogus]\nx = 1\n");
        let text = bad
            .render_config(&node_addresses(1).expect("addresses"))
            .expect("render");
        let overrides = ConfigOverrides::default();
        assert!(ClusterConfig::from_toml(&text, "bad.toml", overrides).is_err());
    }

    #[test]
    #[should_panic(expected = "1 to 16 nodes")]
    fn zero_nodes_is_a_programmer_error() {
        let _ = ClusterBuilder::new("/nonexistent/node").nodes(0);
    }

    #[test]
    fn member_states_are_read_from_the_view() {
        let view = json!({
            "node": "n1",
            "members": [
                {"id": "n1", "state": "up", "since_ms": 1, "http_addr": "127.0.0.1:1"},
                {"id": "n2", "state": "down", "since_ms": 2, "http_addr": "127.0.0.1:2"},
            ],
            "entities": {"active": 0},
        });
        assert_eq!(member_state_in(&view, "n1").expect("n1"), "up");
        assert_eq!(member_state_in(&view, "n2").expect("n2"), "down");
        assert!(member_state_in(&view, "n3").is_err());
        assert!(member_state_in(&json!({"members": 3}), "n1").is_err());

        let expected = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        assert_eq!(members_not_up(&view, &expected), ["n2", "n3"]);
        assert_eq!(members_not_up(&json!({}), &expected), expected);
    }

    #[test]
    fn last_lines_takes_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("a\nb\nc", 0), "");
        assert_eq!(last_lines("", 3), "");
    }

    #[tokio::test]
    async fn a_missing_binary_is_reported() {
        let error = match ClusterBuilder::new("/nonexistent/node")
            .start_without_waiting()
            .await
        {
            Ok(_) => panic!("started without a binary"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("/nonexistent/node"), "{error}");
    }

    /// A stand-in for the node binary: a shell script, since these tests cannot run nodes.
    fn fake_binary(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-node");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

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
        let config = parse(&std::fs::read_to_string(cluster.config_path()).expect("config"));
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

    #[tokio::test]
    async fn start_fails_with_diagnostics_when_nodes_never_get_ready() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let binary = fake_binary(scripts.path(), "echo 'listening nowhere'; exec sleep 60");
        let error = match ClusterBuilder::new(binary)
            .nodes(2)
            .start_timeout(Duration::from_millis(500))
            .start()
            .await
        {
            Ok(_) => panic!("a cluster without HTTP cannot start"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("did not start within"), "{error}");
        assert!(error.contains("/readyz"), "{error}");
        assert!(
            error.contains("--- chaos: starting node n2"),
            "the log tails are missing: {error}"
        );
    }

    /// Compile-time check: the cluster can be shared with spawned tasks, and its futures spawned.
    #[allow(dead_code)]
    fn cluster_and_its_futures_are_send(cluster: &TestCluster) {
        fn is_send_and_sync<T: Send + Sync>() {}
        fn is_send<T: Send>(_: &T) {}
        is_send_and_sync::<TestCluster>();
        is_send(&cluster.terminate("n1", Duration::ZERO));
        is_send(&cluster.restart("n1"));
        is_send(&cluster.wait_member_state("n1", "n2", "up", Duration::ZERO));
        is_send(&cluster.wait_all_up(Duration::ZERO));
        is_send(&cluster.wait_ready("n1", Duration::ZERO));
        is_send(&cluster.wait_exit("n1", Duration::ZERO));
        is_send(&cluster.diagnostics());
    }

    #[tokio::test]
    async fn prepare_writes_the_config_and_starts_nothing() {
        // Any existing file will do as the binary: nothing is spawned.
        let binary = std::env::current_exe().expect("test executable");
        let cluster = ClusterBuilder::new(binary)
            .nodes(2)
            .prepare()
            .await
            .expect("prepare");
        let text = std::fs::read_to_string(cluster.config_path()).expect("config written");
        assert_eq!(parse(&text).nodes.len(), 2);
        assert_eq!(cluster.node_ids(), ["n1", "n2"]);
        assert_eq!(cluster.process_state("n1"), ProcessState::NotStarted);
        assert!(cluster.live_node_ids().is_empty());
        assert_eq!(cluster.pid("n2"), None);
        assert!(cluster.http_url("n2").starts_with("http://127.0.0.1:"));
        assert!(
            cluster
                .wait_ready("n1", Duration::from_millis(50))
                .await
                .is_err()
        );
        assert!(cluster.restart("n9").await.is_err());
        let dir = cluster.dir().to_path_buf();
        drop(cluster);
        if std::env::var_os(KEEP_DIRS_ENV).is_none() {
            assert!(!dir.exists(), "{} should have been deleted", dir.display());
        }
    }
}
