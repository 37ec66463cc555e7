//! Reads `cluster.toml` and the environment's secrets into each crate's typed config.
//! The only place that reads the environment.
//!
//! The file is assembled from the sections each crate owns: the runtime's (`[cluster]`,
//! `[entities]`, `[storage]`, `[limits]`, `[journal]`, `[reminders]`, `[[node]]`), the application's
//! (`[users]`, `[jobs]`, `[sessions]`, `[rooms]`: `actors::config`), the web layer's
//! (`[web]`: `web::config`) and this crate's own (`[telemetry]`: `crate::telemetry`).
//! [`FileConfig`] lists them all, so a key that no crate owns is an error naming it. Each
//! crate then validates its own sections.

use std::path::Path;

use actors::config::{AppConfig, JobsSection, RoomsSection, SessionsSection, UsersSection};
use anyhow::Context;
use runtime::config::{
    ClusterConfig, ClusterSection, ConfigOverrides, EntitySection, JournalSection, LimitsSection,
    NodeConfig, RemindersSection, StorageSection,
};
use serde::Deserialize;
use web::config::WebSection;

use crate::telemetry::{OTLP_ENDPOINT_VAR, TelemetrySection};

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
    reminders: RemindersSection,
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
    #[serde(default)]
    telemetry: TelemetrySection,
    #[serde(rename = "node", default)]
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
    /// `[telemetry]`: this crate's own (traces).
    pub telemetry: TelemetrySection,
}

/// Secrets from outside the file: they override the file's values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub cookie: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_previous_secret: Option<String>,
    pub admin_token: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
}

/// The environment variables of the secrets; each may instead name a file in `<NAME>_FILE`
/// (Kubernetes and compose mount secrets as files).
const COOKIE_VAR: &str = "ACTORHUB_COOKIE";
const JWT_SECRET_VAR: &str = "ACTORHUB_JWT_SECRET";
const JWT_PREVIOUS_SECRET_VAR: &str = "ACTORHUB_JWT_PREVIOUS_SECRET";
const ADMIN_TOKEN_VAR: &str = "ACTORHUB_ADMIN_TOKEN";
const S3_ACCESS_KEY_ID_VAR: &str = "ACTORHUB_S3_ACCESS_KEY_ID";
const S3_SECRET_ACCESS_KEY_VAR: &str = "ACTORHUB_S3_SECRET_ACCESS_KEY";
/// A directory with the node's TLS material; overrides `[cluster.tls] dir` (and turns TLS on).
pub const TLS_DIR_VAR: &str = "ACTORHUB_TLS_DIR";

/// Largest secret file read (a secret is a line).
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

impl Secrets {
    /// From the environment: `NAME`, or the contents of the file `NAME_FILE` names.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            cookie: secret_from_env(COOKIE_VAR)?,
            jwt_secret: secret_from_env(JWT_SECRET_VAR)?,
            jwt_previous_secret: secret_from_env(JWT_PREVIOUS_SECRET_VAR)?,
            admin_token: secret_from_env(ADMIN_TOKEN_VAR)?,
            s3_access_key_id: secret_from_env(S3_ACCESS_KEY_ID_VAR)?,
            s3_secret_access_key: secret_from_env(S3_SECRET_ACCESS_KEY_VAR)?,
        })
    }

    /// Fills what the environment does not give from the secrets `node up` generated for this
    /// cluster, except where the file (`parsed`, when it parsed) sets a value of its own: the
    /// generated ones replace only missing and sample values.
    fn or_generated(
        mut self,
        generated: &crate::secrets::Generated,
        parsed: Option<&Config>,
    ) -> Self {
        use crate::secrets::is_sample;
        let own_cookie = parsed.is_some_and(|config| !is_sample(config.cluster.cookie()));
        let own_jwt = parsed.is_some_and(|config| {
            config
                .web
                .jwt_secret
                .as_deref()
                .is_some_and(|secret| !is_sample(secret))
        });
        let own_admin = parsed.is_some_and(|config| config.web.admin_token.is_some());
        if !own_cookie {
            self.cookie = self.cookie.or_else(|| generated.cookie.clone());
        }
        if !own_jwt {
            self.jwt_secret = self.jwt_secret.or_else(|| generated.jwt_secret.clone());
        }
        if !own_admin {
            self.admin_token = self.admin_token.or_else(|| generated.admin_token.clone());
        }
        self
    }
}

/// `name`'s value, or the contents of the file `name_FILE` names (trailing newline removed).
fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    let file_var = format!("{name}_FILE");
    let direct = env(name);
    let Some(path) = std::env::var_os(&file_var).filter(|value| !value.is_empty()) else {
        return Ok(direct);
    };
    if direct.is_some() {
        anyhow::bail!("both {name} and {file_var} are set: keep one");
    }
    let text = read_secret_file(Path::new(&path))
        .with_context(|| format!("cannot read the file that {file_var} names"))?;
    if text.is_empty() {
        anyhow::bail!("the file that {file_var} names is empty");
    }
    Ok(Some(text))
}

/// A secret file's text, bounded, without its trailing newline.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(SECRET_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .context("a secret file must be UTF-8 text")?;
    if text.len() as u64 > SECRET_FILE_BYTES_MAX {
        anyhow::bail!("a secret file is at most {SECRET_FILE_BYTES_MAX} bytes");
    }
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// What `node run`'s flags say about the node: they override (or stand in for) its `[[node]]`
/// entry and add seeds.
#[derive(Debug, Clone, Default)]
pub struct NodeFlags {
    pub id: String,
    pub cluster_addr: Option<std::net::SocketAddr>,
    pub http_addr: Option<std::net::SocketAddr>,
    pub join: Vec<String>,
}

impl NodeFlags {
    /// Applies the flags to the file's sections before they are validated.
    fn apply(
        &self,
        cluster: &mut ClusterSection,
        nodes: &mut Vec<NodeConfig>,
    ) -> anyhow::Result<()> {
        cluster.seeds.extend(self.join.iter().cloned());
        let entry = nodes.iter_mut().find(|node| node.id == self.id);
        match (entry, self.cluster_addr, self.http_addr) {
            (Some(entry), cluster_addr, http_addr) => {
                if let Some(address) = cluster_addr {
                    entry.cluster_addr = address;
                }
                if let Some(address) = http_addr {
                    entry.http_addr = address;
                }
            }
            (None, Some(cluster_addr), Some(http_addr)) => nodes.push(NodeConfig {
                id: self.id.clone(),
                cluster_addr,
                http_addr,
                listen_ip: None,
            }),
            (None, _, _) => {
                let known: Vec<&str> = nodes.iter().map(|node| node.id.as_str()).collect();
                anyhow::bail!(
                    "no [[node]] with id {:?} (the file has {}): add one, or pass both --cluster-addr and --http-addr",
                    self.id,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            }
        }
        Ok(())
    }
}

/// Reads the file at `path` with the secrets of the environment and, for what it does not
/// give, those `node up` generated for this cluster (in its data directory).
pub fn load(path: &Path) -> anyhow::Result<Config> {
    load_with(path, None)
}

/// [`load`] for `node run`: the flags override the node's entry.
pub fn load_for_node(path: &Path, flags: &NodeFlags) -> anyhow::Result<Config> {
    load_with(path, Some(flags))
}

/// [`load`] for commands that never talk to the cluster (`node certs`): a secret that is not
/// set is not asked for.
pub fn load_offline(path: &Path) -> anyhow::Result<Config> {
    let unused = || Some("not-used-by-this-command-0123456789".to_string());
    let mut secrets = Secrets::from_env()?;
    secrets.cookie = secrets.cookie.or_else(unused);
    secrets.jwt_secret = secrets.jwt_secret.or_else(unused);
    load_secrets(path, None, secrets)
}

fn load_with(path: &Path, flags: Option<&NodeFlags>) -> anyhow::Result<Config> {
    load_secrets(path, flags, Secrets::from_env()?)
}

fn load_secrets(
    path: &Path,
    flags: Option<&NodeFlags>,
    from_env: Secrets,
) -> anyhow::Result<Config> {
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
    let origin = path.display().to_string();
    // The data directory (where `node up` keeps generated secrets) is known after a first
    // parse; without generated secrets that parse is the answer.
    let first = parse_with(&text, &origin, from_env.clone(), base_dir.clone(), flags);
    let data_dir = match &first {
        Ok(config) => config.cluster.cluster.data_dir.clone(),
        Err(_) => data_dir_of(&text, base_dir.as_deref()).ok_or_else(|| {
            first
                .as_ref()
                .err()
                .map(|error| anyhow::anyhow!("{error:#}"))
                .unwrap_or_else(|| anyhow::anyhow!("invalid configuration"))
        })?,
    };
    let generated = crate::secrets::Generated::read(&data_dir)?;
    let mut config = if generated.any() {
        parse_with(
            &text,
            &origin,
            from_env.or_generated(&generated, first.as_ref().ok()),
            base_dir,
            flags,
        )?
    } else {
        first?
    };
    if config.cluster.cluster.tls.is_none()
        && let Some(dir) = generated.tls_dir
    {
        config.cluster.cluster.tls = Some(runtime::config::TlsSection { dir });
    }
    if let Some(dir) = std::env::var_os(TLS_DIR_VAR).filter(|value| !value.is_empty()) {
        config.cluster.cluster.tls = Some(runtime::config::TlsSection { dir: dir.into() });
    }
    if let Some(endpoint) = env(OTLP_ENDPOINT_VAR) {
        config.telemetry.override_endpoint(Some(endpoint));
        config
            .telemetry
            .validate()
            .map_err(|error| invalid(&origin, format!("{error:#}")))?;
    }
    Ok(config)
}

/// `[cluster] data_dir` of a file that may not validate yet (its secrets may be generated).
fn data_dir_of(text: &str, base_dir: Option<&Path>) -> Option<std::path::PathBuf> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let dir = std::path::PathBuf::from(table.get("cluster")?.get("data_dir")?.as_str()?);
    Some(match base_dir {
        Some(base) if dir.is_relative() => base.join(dir),
        _ => dir,
    })
}

/// Parses `cluster.toml` text, applies the secrets and resolves relative paths against
/// `base_dir`, then lets each crate validate its sections. `origin` names the file in errors.
#[cfg(test)]
pub fn parse(
    text: &str,
    origin: &str,
    secrets: Secrets,
    base_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Config> {
    parse_with(text, origin, secrets, base_dir, None)
}

fn parse_with(
    text: &str,
    origin: &str,
    secrets: Secrets,
    base_dir: Option<std::path::PathBuf>,
    flags: Option<&NodeFlags>,
) -> anyhow::Result<Config> {
    let file: FileConfig = toml::from_str(text).map_err(|error| invalid(origin, error))?;
    let FileConfig {
        mut cluster,
        entities,
        storage,
        limits,
        journal,
        reminders,
        web,
        sessions,
        users,
        jobs,
        rooms,
        telemetry,
        mut nodes,
    } = file;
    if let Some(flags) = flags {
        flags
            .apply(&mut cluster, &mut nodes)
            .map_err(|error| invalid(origin, error))?;
    }
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
        reminders,
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
    if let Some(secret) = secrets.jwt_previous_secret {
        web.jwt_previous_secret = Some(secret);
    }
    if let Some(token) = secrets.admin_token {
        web.admin_token = Some(token);
    }
    web.validate().map_err(|error| invalid(origin, error))?;
    telemetry
        .validate()
        .map_err(|error| invalid(origin, format!("{error:#}")))?;
    Ok(Config {
        cluster,
        app,
        web,
        telemetry,
    })
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
            jwt_previous_secret: Some("the-secret-before-rotation".into()),
            ..Secrets::default()
        };
        let config = parse(GOOD, "t.toml", secrets, None).expect("valid");
        assert_eq!(config.cluster.cookie(), "from-env");
        assert_eq!(
            config.web.jwt_secret.as_deref(),
            Some("a-secret-from-the-environment")
        );
        assert_eq!(
            config.web.jwt_previous_secret.as_deref(),
            Some("the-secret-before-rotation")
        );
    }
}
