//! Helpers for in-process runtime tests: a one-node config on free loopback ports.

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::config::ClusterConfig;

/// A config with the single node `id` whose object store is `objects` (shared if you pass the
/// same directory to two nodes) and whose data lives under `data`.
pub fn single_node_config(id: &str, data: &Path, objects: &Path, extra: &str) -> ClusterConfig {
    ClusterConfig::single_node(id, data, objects, false, extra).expect("test config is valid")
}

#[allow(dead_code)] // not every test file waits
pub async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}
