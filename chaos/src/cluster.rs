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
//! The module is split by concern: [`ClusterBuilder`] and its placements (`builder.rs`), the
//! generated `cluster.toml` (`config.rs`), the node processes and their signals (`process.rs`),
//! the HTTP polling that waits for readiness and membership (`observe.rs`), and the logs and
//! diagnostics shown on failure (`logs.rs`).
//!
//! All signals go to pids of children we spawned and have not yet reaped, so a pid can never
//! have been recycled for an unrelated process. Nothing is ever killed by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

mod asker;
mod builder;
mod config;
mod logs;
mod observe;
mod process;

pub use asker::start_with_asker;
pub use builder::{ClusterBuilder, NodePlacement};
pub use process::ProcessState;

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
/// The admin token of a test cluster whose nodes listen beyond loopback (or that asked for one
/// with [`ClusterBuilder::admin_token`]); the cluster's own requests carry it.
pub const TEST_ADMIN_TOKEN: &str = "actorhub-test-admin-token-0123456789";
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
    /// The operator routes' token, when the config sets one.
    admin_token: Option<&'static str>,
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
    process: Mutex<process::NodeProcess>,
}

impl TestCluster {
    /// The admin token the nodes require on `/metrics` and `/api/cluster`, if any.
    pub fn admin_token(&self) -> Option<&'static str> {
        self.admin_token
    }

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
}
