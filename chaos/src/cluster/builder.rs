//! [`ClusterBuilder`]: what a test cluster is (node count or placements, directory, settings,
//! environment), and how it is started: the directory, the ports, the config file, then the
//! node processes.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use super::config::toml_integer;
use super::process::NodeProcess;
use super::{
    HTTP_CONNECT_TIMEOUT, HTTP_REQUEST_TIMEOUT, KEEP_DIRS_ENV, NODES_MAX, START_TIMEOUT,
    TEST_ADMIN_TOKEN, TestCluster, TestNode, free_loopback_ports,
};

/// The rates of `[web.limits]` (web/src/limits.rs), each set out of reach in a test cluster.
const RATE_LIMITS: [&str; 9] = [
    "login_per_address",
    "signup_per_address",
    "resend_per_address",
    "upload_per_address",
    "upload_per_user",
    "room_create_per_address",
    "room_create_per_user",
    "history_per_address",
    "history_per_user",
];

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
    pub(super) settings: toml::Table,
    /// Verbatim text appended to the generated config.
    pub(super) extra_toml: String,
    env: Vec<(String, String)>,
    start_timeout: Duration,
    /// Mutual TLS between the nodes: a cluster CA and node certificates in `tls/`.
    tls: bool,
    /// `[web] admin_token` = [`TEST_ADMIN_TOKEN`] (always when placements are given: a node
    /// beyond loopback refuses to start without one).
    admin_token: bool,
}

impl ClusterBuilder {
    /// A 3-node cluster of `node_binary` processes with default timings.
    ///
    /// A test drives many users from one address, so the abuse limits of `[web.limits]` and
    /// `rooms.created_per_user_max` are set out of reach; a test of the limits sets its own
    /// (`setting("web", "limits", ...)` replaces the whole table).
    pub fn new(node_binary: impl Into<PathBuf>) -> Self {
        let builder = Self {
            node_binary: node_binary.into(),
            node_count: 3,
            placements: None,
            directory: None,
            settings: toml::Table::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
            tls: false,
            admin_token: false,
        };
        let out_of_reach = toml::Value::Table(toml::Table::from_iter([
            ("count".to_string(), toml::Value::Integer(1_000_000)),
            ("per_s".to_string(), toml::Value::Integer(1)),
        ]));
        let limits = toml::Table::from_iter(
            RATE_LIMITS
                .iter()
                .map(|key| (key.to_string(), out_of_reach.clone())),
        );
        builder
            .setting("web", "limits", toml::Value::Table(limits))
            .setting("rooms", "created_per_user_max", 10_000)
    }

    /// Requires [`TEST_ADMIN_TOKEN`] on the operator routes, as a node beyond loopback does.
    pub fn admin_token(mut self, on: bool) -> Self {
        self.admin_token = on;
        self
    }

    /// Mutual TLS between the nodes, as in production: the cluster directory gets a CA and a
    /// certificate per node (`tls/`, as `node certs` makes them) and `[cluster.tls] dir`.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
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
    pub async fn prepare(mut self) -> anyhow::Result<TestCluster> {
        let admin_token =
            (self.admin_token || self.placements.is_some()).then_some(TEST_ADMIN_TOKEN);
        if let Some(token) = admin_token {
            self = self.setting("web", "admin_token", token);
        }
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
        if self.tls {
            let nodes: Vec<(String, Vec<String>)> = addresses
                .iter()
                .map(|node| (node.id.clone(), vec![node.cluster_addr.ip().to_string()]))
                .collect();
            runtime::cluster::tls::generate(&dir.join("tls"), &nodes)
                .context("creating the cluster's certificates")?;
        }
        let config_path = dir.join("cluster.toml");
        let mut config_text = self.render_config(&addresses)?;
        if self.tls {
            config_text.push_str("\n[cluster.tls]\ndir = \"tls\"\n");
        }
        std::fs::write(&config_path, config_text)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = admin_token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the admin token as a header")?,
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
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
            admin_token,
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
pub(super) struct NodeAddresses {
    pub(super) id: String,
    pub(super) cluster_addr: SocketAddr,
    pub(super) http_addr: SocketAddr,
    pub(super) command_prefix: Vec<String>,
}

/// Ids `n1..nN` with two fresh loopback ports each, all allocated at once so they are distinct.
pub(super) fn node_addresses(count: usize) -> io::Result<Vec<NodeAddresses>> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::cluster::ProcessState;
    use crate::cluster::config::parse_generated;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_loopback_ports(2 * NODES_MAX).expect("loopback ports");
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(!distinct.contains(&0));
        // Below the ephemeral range: no outgoing connection's source port can take one.
        if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let low: u16 = range
                .split_whitespace()
                .next()
                .and_then(|low| low.parse().ok())
                .expect("ip_local_port_range starts with a port");
            assert!(ports.iter().all(|port| *port < low), "{ports:?} vs {low}");
        }
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
    #[should_panic(expected = "1 to 16 nodes")]
    fn zero_nodes_is_a_programmer_error() {
        let _ = ClusterBuilder::new("/nonexistent/node").nodes(0);
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
        assert_eq!(parse_generated(&text).nodes.len(), 2);
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
