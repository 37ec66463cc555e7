//! This process as node `t0` of a cluster of real `node run` processes, for the numbers that
//! cross a network link (the pattern of `node/tests/entity_failover.rs`).
//!
//! The processes are started by `chaos::cluster::ClusterBuilder` with a `[[node]]` entry for
//! `t0` appended to their config; this process then starts `t0` from the same config (so it
//! shares the object store) and waits until every node sees every other one up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos::cluster::{ClusterBuilder, NODE_BINARY_ENV, TestCluster, free_loopback_ports};
use runtime::config::{ClusterConfig, ConfigOverrides};
use runtime::{Node, NodeBuilder, Runtime};

/// The id of the in-process node.
pub const IN_PROCESS_NODE: &str = "t0";

/// How long the whole cluster may take to form, and a restarted node to rejoin.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Real node processes `n1..nN` plus this process as [`IN_PROCESS_NODE`].
pub struct JoinedCluster {
    /// Dropping it SIGKILLs the processes and deletes their directory.
    pub processes: TestCluster,
    pub node: Node,
}

impl JoinedCluster {
    pub fn runtime(&self) -> Runtime {
        self.node.runtime()
    }

    /// Every node id, the in-process one first.
    pub fn all_node_ids(&self) -> Vec<String> {
        let mut ids = vec![IN_PROCESS_NODE.to_string()];
        ids.extend(self.processes.node_ids());
        ids
    }

    /// Waits until `t0` sees every node up and every process sees every node (`t0` included) up.
    pub async fn wait_all_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let expected = self.processes.node_ids().len() + 1;
        let runtime = self.runtime();
        while runtime.view().up_members().count() != expected {
            if Instant::now() > deadline {
                bail!(
                    "{IN_PROCESS_NODE} sees {:?} up, not all {expected} nodes, after {timeout:?}",
                    runtime.view().up_members().collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.processes.wait_all_up(remaining).await?;
        for id in self.processes.node_ids() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.processes
                .wait_member_state(&id, IN_PROCESS_NODE, "up", remaining)
                .await?;
        }
        Ok(())
    }

    pub async fn shutdown(self) {
        self.node.shutdown(Duration::from_secs(5)).await;
    }
}

/// Starts `process_count` node processes configured by `configure`, then this process as
/// [`IN_PROCESS_NODE`], and waits until all of them see each other up.
pub async fn join(
    process_count: usize,
    configure: impl FnOnce(ClusterBuilder) -> ClusterBuilder,
) -> anyhow::Result<JoinedCluster> {
    let ports = free_loopback_ports(2).context("allocating loopback ports for t0")?;
    let entry = format!(
        "\n[[node]]\nid = \"{IN_PROCESS_NODE}\"\ncluster_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n",
        ports[0], ports[1]
    );
    let builder = ClusterBuilder::new(node_binary()?)
        .nodes(process_count)
        .extra_toml(&entry);
    let processes = configure(builder)
        .start_without_waiting()
        .await
        .context("starting the node processes")?;
    // With TLS on, the processes' certificates are made; `t0` gets one from the same CA.
    let tls_dir = processes.dir().join("tls");
    if tls_dir.is_dir() {
        runtime::cluster::tls::add(
            &tls_dir,
            &[(IN_PROCESS_NODE.to_string(), vec!["127.0.0.1".to_string()])],
        )
        .context("creating t0's certificate")?;
    }
    let config_path = processes.config_path();
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let overrides = ConfigOverrides {
        base_dir: Some(processes.dir().to_path_buf()),
        ..Default::default()
    };
    let config = ClusterConfig::from_toml(&text, "generated cluster.toml", overrides)?;
    let node = NodeBuilder::new(config, IN_PROCESS_NODE)?
        .start()
        .await
        .context("starting the in-process node")?;
    let cluster = JoinedCluster { processes, node };
    if let Err(error) = cluster.wait_all_up(JOIN_TIMEOUT).await {
        let diagnostics = cluster.processes.diagnostics().await;
        bail!("the cluster did not form: {error:#}\n{diagnostics}");
    }
    Ok(cluster)
}

/// The `node` binary: `$ACTORHUB_NODE_BIN`, else `node` next to this executable (binaries live
/// in `target/<profile>/`), else where `chaos::cluster::default_node_binary` looks (one level
/// up, for executables in `target/<profile>/deps/`). Build it first: `cargo build --release -p node`.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if std::env::var_os(NODE_BINARY_ENV).is_none() {
        let executable = std::env::current_exe().context("locating this executable")?;
        if let Some(sibling) = executable.parent().map(|dir| dir.join("node"))
            && sibling.is_file()
        {
            return Ok(sibling);
        }
    }
    chaos::cluster::default_node_binary()
}
