//! Loading the runtime's config: parsing the TOML, applying what comes from outside the file
//! (secrets from the environment, the file's directory for relative paths), and validating
//! what serde cannot check; plus a one-node config on free loopback ports for tests and
//! benchmarks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{ClusterConfig, JournalSection, NodeConfig, RemindersSection};
use crate::error::{Result, RuntimeError};

/// Secrets and paths that come from outside the file (the environment, the file's location).
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub cookie: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Relative paths in the file are resolved against this directory.
    pub base_dir: Option<PathBuf>,
}

/// Distinct free loopback ports for test and benchmark clusters.
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port
/// picked there cannot be taken, between this call and the node's own bind, by the source port
/// of some outgoing connection (a node dialing its peers did exactly that to a port reserved
/// for another node's HTTP listener). Each process starts at its own place in that range and
/// moves on with every call, so parallel tests and test processes pick different ports. Every
/// listener is held until all ports are known, so the ports are distinct from each other; they
/// are released on return, so they are free only until someone else binds them. Where the
/// range is unknown, the kernel picks (port 0).
pub fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Ports below this are left to services that use well-known or registered ports.
    const LOWEST: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

    let bind = |port: u16| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port));
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1_000 && *low <= u32::from(u16::MAX));
    let mut listeners = Vec::with_capacity(count);
    match ephemeral_low {
        Some(low) => {
            let span = low - LOWEST;
            if NEXT.load(Ordering::Relaxed) == u32::MAX {
                let seed = std::process::id()
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.subsec_nanos());
                let _ = NEXT.compare_exchange(
                    u32::MAX,
                    seed % span,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let mut tries = 0;
            while listeners.len() < count {
                if tries == span {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("no {count} free loopback ports below {low}"),
                    ));
                }
                tries += 1;
                let port = LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
                if let Ok(listener) = bind(port as u16) {
                    listeners.push(listener);
                }
            }
        }
        None => {
            for _ in 0..count {
                listeners.push(bind(0)?);
            }
        }
    }
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect()
}

impl ClusterConfig {
    /// A one-node cluster for in-process tests and benchmarks: node `id` on two free loopback
    /// ports (cluster, http), node data under `data`, the object store in the directory
    /// `objects`. `extra` is TOML inserted after `[cluster]` (more sections, e.g. `[entities]`).
    pub fn single_node(
        id: &str,
        data: &Path,
        objects: &Path,
        fsync: bool,
        extra: &str,
    ) -> Result<Self> {
        let ports = free_loopback_ports(2)
            .map_err(|error| RuntimeError::Config(format!("no free loopback port: {error}")))?;
        let text = format!(
            r#"
[cluster]
name = "local"
cookie = "local-cookie"
data_dir = "{data}"
{extra}
[storage]
url = "file://{objects}"
fsync = {fsync}
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
        Self::from_toml(&text, "single-node config", ConfigOverrides::default())
    }

    /// Parses the runtime's sections of `cluster.toml` text (other tables are ignored), then
    /// applies `overrides` and validates. `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str, overrides: ConfigOverrides) -> Result<Self> {
        let config: ClusterConfig = toml::from_str(text)
            .map_err(|error| RuntimeError::Config(format!("{origin}: {}", error)))?;
        config.resolve(origin, overrides)
    }

    /// Applies `overrides` (secrets from the environment, the file's directory for relative
    /// paths) and validates. The `node` binary, which parses the whole file, builds the
    /// runtime's config from its sections and calls this. `origin` names the file in errors.
    pub fn resolve(mut self, origin: &str, overrides: ConfigOverrides) -> Result<Self> {
        if let Some(cookie) = overrides.cookie {
            self.cluster.cookie = Some(cookie);
        }
        if let Some(key) = overrides.s3_access_key_id {
            self.storage.access_key_id = Some(key);
        }
        if let Some(key) = overrides.s3_secret_access_key {
            self.storage.secret_access_key = Some(key);
        }
        if let Some(base) = overrides.base_dir {
            self.resolve_paths(&base);
        }
        self.validate().map_err(|error| match error {
            RuntimeError::Config(message) => RuntimeError::Config(format!("{origin}: {message}")),
            other => other,
        })?;
        Ok(self)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.cluster.data_dir.is_relative() {
            self.cluster.data_dir = base.join(&self.cluster.data_dir);
        }
        if let Some(tls) = &mut self.cluster.tls
            && tls.dir.is_relative()
        {
            tls.dir = base.join(&tls.dir);
        }
        if let Some(relative) = self.storage.url.strip_prefix("file:")
            && !relative.starts_with('/')
        {
            self.storage.url = format!("file://{}", base.join(relative).display());
        }
    }

    /// Checks what the types alone cannot: uniqueness, ranges, required secrets.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(RuntimeError::Config(message));
        // No [[node]] entry is fine: a node can take its addresses from flags and find its
        // peers through seeds and the membership table (a Kubernetes StatefulSet does).
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if !valid_node_id(&node.id) {
                return fail(format!(
                    "`node[{index}].id` = {:?}: use 1-32 characters of a-z, 0-9, '-' or '_'",
                    node.id
                ));
            }
            if !ids.insert(node.id.as_str()) {
                return fail(format!(
                    "`node[{index}].id`: duplicate node id {:?}",
                    node.id
                ));
            }
            for (key, addr) in [
                ("cluster_addr", node.cluster_addr),
                ("http_addr", node.http_addr),
            ] {
                if addr.port() == 0 {
                    return fail(format!(
                        "`node[{index}].{key}`: port 0 is not allowed, peers must know it"
                    ));
                }
                if !addrs.insert(addr) {
                    return fail(format!(
                        "`node[{index}].{key}`: duplicate address {addr} (every node needs its own ports)"
                    ));
                }
            }
        }
        let cluster = &self.cluster;
        match cluster.cookie.as_deref() {
            None | Some("") => {
                return fail(
                    "`cluster.cookie`: missing; set it in the file or in ACTORHUB_COOKIE".into(),
                );
            }
            Some(_) => {}
        }
        if !(1..=20_000).contains(&cluster.drain_timeout_ms) {
            return fail(format!(
                "`cluster.drain_timeout_ms` = {}: between 1 and 20000 (a Kubernetes grace period of 30 s must cover it and the HTTP drain)",
                cluster.drain_timeout_ms
            ));
        }
        if cluster.heartbeat_interval_ms == 0 {
            return fail("`cluster.heartbeat_interval_ms`: must be above 0".into());
        }
        if cluster.failure_timeout_ms < 2 * cluster.heartbeat_interval_ms {
            return fail(format!(
                "`cluster.failure_timeout_ms` = {}: must be at least twice `heartbeat_interval_ms` ({})",
                cluster.failure_timeout_ms, cluster.heartbeat_interval_ms
            ));
        }
        if cluster.reconnect_backoff_min_ms == 0
            || cluster.reconnect_backoff_max_ms < cluster.reconnect_backoff_min_ms
        {
            return fail("`cluster.reconnect_backoff_*_ms`: need 0 < min <= max".into());
        }
        if !(64 * 1024..=16 * 1024 * 1024).contains(&cluster.frame_bytes_max) {
            return fail("`cluster.frame_bytes_max`: must be between 64 KiB and 16 MiB".into());
        }
        if cluster.unauthenticated_connections_max == 0
            || cluster.unauthenticated_per_ip_max == 0
            || !(1024..=cluster.frame_bytes_max).contains(&cluster.preauth_bytes_max)
        {
            return fail("`cluster.unauthenticated_connections_max` and `cluster.unauthenticated_per_ip_max` must be above 0, `cluster.preauth_bytes_max` between 1 KiB and `frame_bytes_max`".into());
        }
        let entities = &self.entities;
        if entities.active_max == 0 || entities.probe_passivate_after_ms == 0 {
            return fail(
                "`entities.active_max` and `entities.probe_passivate_after_ms` must be above 0"
                    .into(),
            );
        }
        let limits = &self.limits;
        if limits.memory_bytes_max < 64 * 1024 * 1024
            || !(10..=100).contains(&limits.memory_pressure_percent)
        {
            return fail("`limits.memory_bytes_max` must be at least 64 MiB and `limits.memory_pressure_percent` 10 to 100".into());
        }
        if entities.batch_events_max == 0 || entities.pending_commands_max == 0 {
            return fail(
                "`entities.batch_events_max` and `entities.pending_commands_max` must be above 0"
                    .into(),
            );
        }
        if entities.attempt_timeout_ms == 0 || entities.ask_timeout_ms < entities.attempt_timeout_ms
        {
            return fail(
                "`entities.ask_timeout_ms` must be at least `entities.attempt_timeout_ms` (> 0)"
                    .into(),
            );
        }
        if !(self.storage.url.starts_with("file:") || self.storage.url.starts_with("s3://")) {
            return fail(format!(
                "`storage.url` = {:?}: use file:///dir, file:relative/dir or s3://bucket",
                self.storage.url
            ));
        }
        self.journal.validate().map_err(RuntimeError::Config)?;
        self.reminders.validate().map_err(RuntimeError::Config)?;
        Ok(())
    }

    /// The `[[node]]` entry of `id`.
    pub fn node(&self, id: &str) -> Result<&NodeConfig> {
        self.nodes.iter().find(|node| node.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|node| node.id.as_str()).collect();
            RuntimeError::Config(format!(
                "no [[node]] with id {id:?}; the config has {known:?} (or give its addresses with --cluster-addr and --http-addr)"
            ))
        })
    }

    /// The node's own data directory.
    pub fn node_data_dir(&self, id: &str) -> PathBuf {
        self.cluster.data_dir.join(id)
    }

    pub fn cookie(&self) -> &str {
        self.cluster.cookie.as_deref().unwrap_or_default()
    }
}

fn valid_node_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_'
        })
}

impl JournalSection {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.flush_interval_ms > 1_000 {
            return Err("`journal.flush_interval_ms`: at most 1000".into());
        }
        if !(64 * 1024..=64 * 1024 * 1024).contains(&self.flush_bytes_max) {
            return Err("`journal.flush_bytes_max`: 64 KiB to 64 MiB".into());
        }
        if self.compact_interval_ms < 100
            || self.fence_check_interval_ms < 10
            || self.janitor_interval_ms < 100
            || self.compact_records_max == 0
        {
            return Err("`journal.compact_interval_ms` (>= 100), `journal.fence_check_interval_ms` (>= 10), `journal.janitor_interval_ms` (>= 100) and `journal.compact_records_max` (> 0) out of range".into());
        }
        Ok(())
    }
}

impl RemindersSection {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=64).contains(&self.shards_per_partition) {
            return Err("`reminders.shards_per_partition`: 1 to 64".into());
        }
        if self.per_shard_max == 0 || self.in_flight_max == 0 || self.fires_per_second_max == 0 {
            return Err("`reminders.per_shard_max`, `reminders.in_flight_max` and `reminders.fires_per_second_max` must be above 0".into());
        }
        if !(100..=600_000).contains(&self.fire_timeout_ms) {
            return Err("`reminders.fire_timeout_ms`: 100 to 600000".into());
        }
        Ok(())
    }
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
        [[node]]
        id = "n2"
        cluster_addr = "127.0.0.1:7102"
        http_addr = "127.0.0.1:8102"
    "#;

    fn parse(text: &str) -> Result<ClusterConfig> {
        ClusterConfig::from_toml(text, "test.toml", ConfigOverrides::default())
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config should have been rejected"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(config.cluster.heartbeat_interval_ms, 250);
        assert_eq!(config.cluster.failure_timeout_ms, 1500);
        assert_eq!(config.node("n2").expect("n2").http_addr.port(), 8102);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("name = \"t\"", "name = \"t\"\nheartbeat_ms = 5");
        assert!(
            error_of(&text).contains("heartbeat_ms"),
            "{}",
            error_of(&text)
        );
    }

    #[test]
    fn duplicate_port_is_named() {
        let text = GOOD.replace("127.0.0.1:8102", "127.0.0.1:8101");
        let message = error_of(&text);
        assert!(
            message.contains("node[1].http_addr") && message.contains("duplicate"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_id_is_named() {
        let message = error_of(&GOOD.replace("id = \"n2\"", "id = \"n1\""));
        assert!(message.contains("duplicate node id"), "{message}");
    }

    #[test]
    fn missing_id_is_named() {
        let message = error_of(&GOOD.replace("id = \"n2\"", ""));
        assert!(message.contains("missing field `id`"), "{message}");
    }

    #[test]
    fn cookie_may_come_from_overrides() {
        let text = GOOD.replace("cookie = \"secret-cookie\"", "");
        assert!(error_of(&text).contains("ACTORHUB_COOKIE"));
        let overrides = ConfigOverrides {
            cookie: Some("from-env".into()),
            ..Default::default()
        };
        let config =
            ClusterConfig::from_toml(&text, "t", overrides).expect("valid with env cookie");
        assert_eq!(config.cookie(), "from-env");
    }

    #[test]
    fn other_crates_sections_are_left_to_them() {
        // `[users]`, `[jobs]`, `[sessions]` and `[web]` are read by `actors` and `web`; the
        // node, which knows every section, rejects unknown ones (node/tests/config_errors.rs).
        let text = format!("{GOOD}\n[jobs]\nworkers = 0\n[web]\nanything = 1\n");
        let config = parse(&text).expect("valid for the runtime");
        assert_eq!(config.nodes.len(), 2);
        let unknown = format!("{GOOD}\n[entities]\npassivate_ms = 5\n");
        assert!(error_of(&unknown).contains("passivate_ms"));
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let overrides = ConfigOverrides {
            base_dir: Some("/etc/hub".into()),
            ..Default::default()
        };
        let config = ClusterConfig::from_toml(GOOD, "t", overrides).expect("valid");
        assert_eq!(config.cluster.data_dir, PathBuf::from("/etc/hub/data"));
        assert_eq!(config.storage.url, "file:///etc/hub/data/objects");
    }
}
