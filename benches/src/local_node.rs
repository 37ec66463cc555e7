//! An in-process single-node runtime for benchmarks: one `[[node]]` on free loopback ports, its
//! data and object store under a directory the caller owns (the pattern of the runtime's own
//! integration tests).
//!
//! ractor's registries are process-global, so a benchmark binary starts its nodes once and
//! shares them; two nodes with different ids may live in one process (each sees only itself).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runtime::config::ClusterConfig;
use runtime::{Node, NodeBuilder};

/// How long a fresh single node may take to see itself up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A config whose only node is `id`, with `<directory>/data` and `<directory>/objects`.
/// `fsync` is `storage.fsync`: whether each journal object is fsynced before it is acknowledged.
pub fn single_node_config(
    id: &str,
    directory: &Path,
    fsync: bool,
) -> anyhow::Result<ClusterConfig> {
    Ok(ClusterConfig::single_node(
        id,
        &directory.join("data"),
        &directory.join("objects"),
        fsync,
        "",
    )?)
}

/// Starts the single node `id` and waits until it sees itself up, so placement gives it
/// every entity.
pub async fn start_single_node(id: &str, directory: &Path, fsync: bool) -> anyhow::Result<Node> {
    let config = single_node_config(id, directory, fsync)?;
    let node = NodeBuilder::new(config, id)?
        .start()
        .await
        .with_context(|| format!("starting the in-process node {id}"))?;
    let runtime = node.runtime();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !(runtime.view().settled && runtime.view().is_up(id)) {
        if Instant::now() > deadline {
            bail!("node {id} did not see itself up within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(node)
}
