//! Reads `cluster.toml` and the environment's secrets into the typed config.
//! The only place that reads the environment.

use std::path::Path;

use anyhow::Context;
use runtime::config::{ClusterConfig, ConfigOverrides};

pub fn load(path: &Path) -> anyhow::Result<ClusterConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the config file {} (pass --config PATH)",
            path.display()
        )
    })?;
    let base_dir = path
        .canonicalize()
        .ok()
        .and_then(|absolute| absolute.parent().map(Path::to_path_buf));
    let overrides = ConfigOverrides {
        cookie: env("ACTORHUB_COOKIE"),
        jwt_secret: env("ACTORHUB_JWT_SECRET"),
        s3_access_key_id: env("ACTORHUB_S3_ACCESS_KEY_ID"),
        s3_secret_access_key: env("ACTORHUB_S3_SECRET_ACCESS_KEY"),
        base_dir,
    };
    Ok(ClusterConfig::from_toml(
        &text,
        &path.display().to_string(),
        overrides,
    )?)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}
