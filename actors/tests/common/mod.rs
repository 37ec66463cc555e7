//! An in-process node with the application's entities, for the actors crate's tests.

use runtime::config::ClusterConfig;
use runtime::{Node, NodeBuilder};

/// Starts node `id` alone, its data and object store under `directory`, fsync off.
pub async fn start_node(id: &str, directory: &std::path::Path) -> Node {
    let config = ClusterConfig::single_node(
        id,
        &directory.join("data"),
        &directory.join("objects"),
        false,
        // Compaction soon after writes: history tests read compacted segments.
        "[journal]\ncompact_interval_ms = 100\n",
    )
    .expect("config");
    let deps = actors::AppDeps {
        node_id: id.into(),
        ..actors::AppDeps::default()
    };
    actors::register(NodeBuilder::new(config, id).expect("builder"), &deps)
        .start()
        .await
        .expect("node starts")
}
