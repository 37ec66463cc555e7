//! Helpers for in-process runtime tests: a one-node config on free loopback ports.

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::config::ClusterConfig;

/// A config with the single node `id` whose object store is `objects` (shared if you pass the
/// same directory to two nodes) and whose data lives under `data`.
pub fn single_node_config(id: &str, data: &Path, objects: &Path, extra: &str) -> ClusterConfig {
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect::<Vec<_>>()
        .iter()
        .map(|listener| listener.local_addr().expect("addr").port())
        .collect();
    ClusterConfig::single_node(id, data, objects, [ports[0], ports[1]], false, extra)
        .expect("test config is valid")
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
