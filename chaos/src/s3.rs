//! A local S3-compatible server for tests and chaos runs: moto's server mode (from PyPI,
//! installed by `.ci/install-deps` into `target/tools/venv`), one process per use, stopped
//! when dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running moto server.
pub struct MotoServer {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// Where `.ci/install-deps` puts `moto_server`, unless `ACTORHUB_MOTO_SERVER` names another.
pub fn moto_program() -> PathBuf {
    std::env::var_os("ACTORHUB_MOTO_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/moto_server"),
        PathBuf::from,
    )
}

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers.
    pub async fn start() -> anyhow::Result<MotoServer> {
        let program = moto_program();
        if !program.exists() {
            bail!(
                "{} is missing: run .ci/install-deps (it installs moto from PyPI)",
                program.display()
            );
        }
        let port = crate::cluster::free_loopback_ports(1)?[0];
        let child = std::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("moto did not listen on port {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// Creates `bucket` (moto accepts an unsigned PUT).
    pub async fn bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .context("create bucket")?;
        if !response.status().is_success() {
            bail!("create bucket {bucket}: {}", response.status());
        }
        Ok(())
    }

    /// The `[storage]` settings for `bucket` on this server, as (key, value) pairs for
    /// `ClusterBuilder::setting("storage", ..)`.
    pub fn storage_settings(&self, bucket: &str) -> Vec<(&'static str, toml::Value)> {
        vec![
            ("url", format!("s3://{bucket}").into()),
            ("endpoint", self.endpoint.clone().into()),
            ("region", "us-east-1".into()),
            ("access_key_id", "test".into()),
            ("secret_access_key", "test".into()),
            ("allow_http", true.into()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
