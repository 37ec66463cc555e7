//! Helpers for in-process runtime tests: a one-node config on free loopback ports.

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::config::{ClusterConfig, ConfigOverrides};

/// A config with the single node `id` whose object store is `objects` (shared if you pass the
/// same directory to two nodes) and whose data lives under `data`.
pub fn single_node_config(id: &str, data: &Path, objects: &Path, extra: &str) -> ClusterConfig {
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect::<Vec<_>>()
        .iter()
        .map(|listener| listener.local_addr().expect("addr").port())
        .collect();
    let text = format!(
        r#"
[cluster]
name = "test"
cookie = "test-cookie"
data_dir = "{data}"
{extra}
[storage]
url = "file://{objects}"
fsync = false
[[node]]
id = "{id}"
cluster_addr = "127.0.0.1:{cluster_port}"
http_addr = "127.0.0.1:{http_port}"
"#,
        data = data.display(),
        objects = objects.display(),
        cluster_port = ports[0],
        http_port = ports[1],
    );
    ClusterConfig::from_toml(&text, "test config", ConfigOverrides::default())
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
