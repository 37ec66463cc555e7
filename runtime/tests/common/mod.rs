//! Helpers for in-process runtime tests: a one-node config on free loopback ports.

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::config::ClusterConfig;

/// A config with the single node `id` whose object store is `objects` (shared if you pass the
/// same directory to two nodes) and whose data lives under `data`.
#[allow(dead_code)] // not every test file starts a single node
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

/// A local S3-compatible server (moto, installed by `.ci/install-deps` into
/// `target/tools/venv`), stopped when dropped.
#[allow(dead_code)] // not every test file uses S3
pub struct MotoServer {
    child: std::process::Child,
    pub endpoint: String,
}

#[allow(dead_code)]
impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers.
    pub async fn start() -> MotoServer {
        let program = std::env::var("ACTORHUB_MOTO_SERVER").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/tools/venv/bin/moto_server"
            )
            .into()
        });
        assert!(
            Path::new(&program).exists(),
            "{program} is missing: run .ci/install-deps (it installs moto from PyPI)"
        );
        let port = runtime::config::free_loopback_ports(1).expect("a port")[0];
        let child = std::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto starts");
        let server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Creates `bucket` (a plain PUT, which moto accepts without a signature).
    pub async fn bucket(&self, bucket: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.endpoint.trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
    }

    /// `[storage]` TOML for `bucket` on this server.
    pub fn storage_toml(&self, bucket: &str) -> String {
        format!(
            "url = \"s3://{bucket}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
            self.endpoint
        )
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
