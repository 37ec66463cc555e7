//! Reads `cluster.toml` and the environment's secrets into each crate's typed config.
//! The only place that reads the environment.
//!
//! The file is assembled from the sections each crate owns: the runtime's (`[cluster]`,
//! `[entities]`, `[storage]`, `[limits]`, `[journal]`, `[[node]]`), the application's
//! (`[users]`, `[jobs]`, `[sessions]`, `[rooms]`: `actors::config`) and the web layer's
//! (`[web]`: `web::config`). [`FileConfig`] lists them all, so a key that no crate owns is an
//! error naming it. Each crate then validates its own sections.

use std::path::Path;

use actors::config::{AppConfig, JobsSection, RoomsSection, SessionsSection, UsersSection};
use anyhow::Context;
use runtime::config::{
    ClusterConfig, ClusterSection, ConfigOverrides, EntitySection, JournalSection, LimitsSection,
    NodeConfig, StorageSection,
};
use serde::Deserialize;
use web::config::WebSection;

/// Every section of `cluster.toml`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster: ClusterSection,
    #[serde(default)]
    entities: EntitySection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    journal: JournalSection,
    #[serde(default)]
    web: WebSection,
    #[serde(default)]
    sessions: SessionsSection,
    #[serde(default)]
    users: UsersSection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    rooms: RoomsSection,
    #[serde(rename = "node")]
    nodes: Vec<NodeConfig>,
}

/// The whole configuration, split by the crate that reads it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The runtime's sections.
    pub cluster: ClusterConfig,
    /// The application's sections.
    pub app: AppConfig,
    /// `[web]`.
    pub web: WebSection,
}

/// Secrets from the environment: they override the file's values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub cookie: Option<String>,
    pub jwt_secret: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
}

impl Secrets {
    fn from_env() -> Self {
        Self {
            cookie: env("ACTORHUB_COOKIE"),
            jwt_secret: env("ACTORHUB_JWT_SECRET"),
            s3_access_key_id: env("ACTORHUB_S3_ACCESS_KEY_ID"),
            s3_secret_access_key: env("ACTORHUB_S3_SECRET_ACCESS_KEY"),
        }
    }
}

/// Reads the file at `path` with the environment's secrets.
pub fn load(path: &Path) -> anyhow::Result<Config> {
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
    parse(
        &text,
        &path.display().to_string(),
        Secrets::from_env(),
        base_dir,
    )
}

/// Parses `cluster.toml` text, applies the secrets and resolves relative paths against
/// `base_dir`, then lets each crate validate its sections. `origin` names the file in errors.
pub fn parse(
    text: &str,
    origin: &str,
    secrets: Secrets,
    base_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Config> {
    let file: FileConfig = toml::from_str(text).map_err(|error| invalid(origin, error))?;
    let FileConfig {
        cluster,
        entities,
        storage,
        limits,
        journal,
        web,
        sessions,
        users,
        jobs,
        rooms,
        nodes,
    } = file;
    let overrides = ConfigOverrides {
        cookie: secrets.cookie,
        s3_access_key_id: secrets.s3_access_key_id,
        s3_secret_access_key: secrets.s3_secret_access_key,
        base_dir,
    };
    let cluster = ClusterConfig {
        cluster,
        entities,
        storage,
        limits,
        journal,
        nodes,
    }
    .resolve(origin, overrides)?;
    let app = AppConfig {
        users,
        jobs,
        sessions,
        rooms,
    };
    app.validate().map_err(|error| invalid(origin, error))?;
    let mut web = web;
    if let Some(secret) = secrets.jwt_secret {
        web.jwt_secret = Some(secret);
    }
    web.validate().map_err(|error| invalid(origin, error))?;
    Ok(Config { cluster, app, web })
}

/// The same words as the runtime's configuration errors.
fn invalid(origin: &str, error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: {origin}: {error}")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [cluster]
        name = "t"
        cookie = "secret-cookie"
        data_dir = "data"
        [[node]]
        id = "n1"
        cluster_addr = "127.0.0.1:7101"
        http_addr = "127.0.0.1:8101"
    "#;

    fn error_of(text: &str) -> String {
        match parse(text, "t.toml", Secrets::default(), None) {
            Ok(_) => panic!("config should have been rejected:\n{text}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn the_repository_cluster_toml_is_valid() {
        let text = include_str!("../../cluster.toml");
        let config = parse(
            text,
            "cluster.toml",
            Secrets::default(),
            Some("/srv/hub".into()),
        )
        .expect("cluster.toml is valid");
        assert_eq!(config.cluster.nodes.len(), 3);
        assert_eq!(config.app.jobs.max_attempts, 3);
        assert_eq!(config.app.sessions.outbound_queue_max, 1024);
        assert!(config.web.jwt_secret.is_some());
    }

    #[test]
    fn every_crate_s_errors_name_the_key() {
        for (section, key) in [
            ("[cluster_extra]\nx = 1", "cluster_extra"),
            ("[web]\njwt = \"x\"", "jwt"),
            ("[web]\njwt_secret = \"short\"", "web.jwt_secret"),
            ("[jobs]\nmax_attempts = 0", "jobs.max_attempts"),
            ("[users]\nmailer = \"smtp\"", "users.smtp_host"),
            (
                "[sessions]\nconnections_max = 0",
                "sessions.connections_max",
            ),
            ("[entities]\nactive_max = 0", "entities.active_max"),
        ] {
            let message = error_of(&format!("{GOOD}\n{section}\n"));
            assert!(message.contains(key), "{section}: {message}");
            assert!(
                message.starts_with("invalid configuration: t.toml: "),
                "{message}"
            );
        }
    }

    #[test]
    fn secrets_override_the_file() {
        let secrets = Secrets {
            cookie: Some("from-env".into()),
            jwt_secret: Some("a-secret-from-the-environment".into()),
            ..Secrets::default()
        };
        let config = parse(GOOD, "t.toml", secrets, None).expect("valid");
        assert_eq!(config.cluster.cookie(), "from-env");
        assert_eq!(
            config.web.jwt_secret.as_deref(),
            Some("a-secret-from-the-environment")
        );
    }
}
