//! A cluster of node processes joined by a node running in the test process itself (the
//! "asker"), for tests that call entities through `runtime` directly.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runtime::NodeBuilder;
use runtime::config::{ClusterConfig, ConfigOverrides};

use super::{ClusterBuilder, TestCluster, free_loopback_ports};

/// How long the four nodes get to see each other up.
const ALL_UP_WITHIN: Duration = Duration::from_secs(20);

/// Starts `builder`'s node processes plus an in-process node `asker` listed in the same
/// `cluster.toml`, and waits until the asker sees every process up and the processes see each
/// other. Only one in-process node per test binary: ractor's registries are process-global.
pub async fn start_with_asker(
    builder: ClusterBuilder,
    processes: usize,
    asker: &str,
) -> anyhow::Result<(TestCluster, runtime::Node)> {
    let ports = free_loopback_ports(2).context("ports for the asker")?;
    let entry = format!(
        "\n[[node]]\nid = \"{asker}\"\ncluster_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n",
        ports[0], ports[1]
    );
    let cluster = builder
        .nodes(processes)
        .extra_toml(&entry)
        .start_without_waiting()
        .await
        .context("starting the node processes")?;
    let text = std::fs::read_to_string(cluster.config_path()).context("reading cluster.toml")?;
    let overrides = ConfigOverrides {
        base_dir: Some(cluster.dir().to_path_buf()),
        ..Default::default()
    };
    let config = ClusterConfig::from_toml(&text, "test cluster.toml", overrides)?;
    let node = NodeBuilder::new(config, asker)?.start().await?;
    let deadline = Instant::now() + ALL_UP_WITHIN;
    while node.runtime().view().up_members().count() != processes + 1 {
        if Instant::now() > deadline {
            bail!("{asker} did not see all {processes} processes up within {ALL_UP_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.wait_all_up(ALL_UP_WITHIN).await?;
    Ok((cluster, node))
}
