//! Per-cluster secrets that `node up` generates on first start, and the check that refuses the
//! repository's sample secrets anywhere but on loopback.
//!
//! `node up` keeps what it generates under `<data_dir>/secrets/` (the cookie, the token key,
//! the admin token, each in a file readable by its owner only) and `<data_dir>/tls/` (a cluster
//! CA and one certificate per node), as Erlang keeps `.erlang.cookie`; every later start, and
//! every command given the same config (`node token`, `node status`, `node run`), reads them.
//! The environment still overrides them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

const SECRETS_DIR: &str = "secrets";
const TLS_DIR: &str = "tls";
const COOKIE_FILE: &str = "cookie";
const JWT_SECRET_FILE: &str = "jwt-secret";
const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Random bytes in each generated secret (hex-encoded: twice as many characters).
const SECRET_BYTES: usize = 32;

/// The secrets `node up` generated for a cluster, as found in its data directory.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub cookie: Option<String>,
    pub jwt_secret: Option<String>,
    pub admin_token: Option<String>,
    /// The TLS directory, if it holds a CA.
    pub tls_dir: Option<PathBuf>,
}

impl Generated {
    /// What is under `data_dir` (nothing if `node up` never ran there).
    pub fn read(data_dir: &Path) -> anyhow::Result<Self> {
        let secrets = data_dir.join(SECRETS_DIR);
        let read = |name: &str| -> anyhow::Result<Option<String>> {
            let path = secrets.join(name);
            if !path.exists() {
                return Ok(None);
            }
            crate::config_file::read_secret_file(&path)
                .map(Some)
                .with_context(|| format!("cannot read the generated secret {SECRETS_DIR}/{name} in the data directory"))
        };
        let tls = data_dir.join(TLS_DIR);
        Ok(Self {
            cookie: read(COOKIE_FILE)?,
            jwt_secret: read(JWT_SECRET_FILE)?,
            admin_token: read(ADMIN_TOKEN_FILE)?,
            tls_dir: tls.join("ca.pem").exists().then_some(tls),
        })
    }

    pub fn any(&self) -> bool {
        self.cookie.is_some()
            || self.jwt_secret.is_some()
            || self.admin_token.is_some()
            || self.tls_dir.is_some()
    }

    /// Creates whatever is missing: the three secrets, and (unless `tls` is false) a CA with a
    /// certificate for each of `nodes` (added to an existing CA for nodes new to the config).
    /// Returns what was created, for the user.
    pub fn ensure(
        data_dir: &Path,
        nodes: &[(String, SocketAddr)],
        tls: bool,
    ) -> anyhow::Result<Vec<String>> {
        let mut created = Vec::new();
        let secrets = data_dir.join(SECRETS_DIR);
        std::fs::create_dir_all(&secrets)
            .context("cannot create the secrets directory in the data directory")?;
        for name in [COOKIE_FILE, JWT_SECRET_FILE, ADMIN_TOKEN_FILE] {
            let path = secrets.join(name);
            if !path.exists() {
                write_private(&path, random_hex(SECRET_BYTES)?.as_bytes())
                    .with_context(|| format!("cannot write the secret {SECRETS_DIR}/{name}"))?;
                created.push(format!("{SECRETS_DIR}/{name}"));
            }
        }
        if tls {
            let dir = data_dir.join(TLS_DIR);
            let missing: Vec<(String, Vec<String>)> = nodes
                .iter()
                .filter(|(id, _)| !dir.join(format!("{id}.pem")).exists())
                .map(|(id, address)| (id.clone(), vec![address.ip().to_string()]))
                .collect();
            if !dir.join("ca.pem").exists() {
                runtime::cluster::tls::generate(&dir, &missing)
                    .context("cannot create the cluster's TLS certificates")?;
                created.push(format!(
                    "{TLS_DIR}/ (a cluster CA and {} node certificates)",
                    missing.len()
                ));
            } else if !missing.is_empty() {
                runtime::cluster::tls::add(&dir, &missing)
                    .context("cannot add node certificates to the cluster's CA")?;
                created.push(format!(
                    "{TLS_DIR}/ ({} more node certificates)",
                    missing.len()
                ));
            }
        }
        Ok(created)
    }
}

/// `bytes` random bytes from the operating system, hex-encoded.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| anyhow::anyhow!("the operating system gave no random bytes: {error}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The repository's sample secrets carry this marker (`cluster.toml`, the docs).
const SAMPLE_MARKER: &str = "change-me";

/// Whether `secret` is one of the repository's sample values (`cluster.toml`, the docs).
pub fn is_sample(secret: &str) -> bool {
    secret.contains(SAMPLE_MARKER)
}

/// Why a node may not start with these settings, if it may not: a sample secret, or plaintext
/// cluster traffic, on an address beyond loopback.
pub fn refuse_unsafe(config: &crate::config_file::Config, node_id: &str) -> anyhow::Result<()> {
    let node = config.cluster.node(node_id)?;
    let beyond = [node.cluster_addr, node.http_addr]
        .into_iter()
        .find(|address| !address.ip().is_loopback());
    let Some(address) = beyond else {
        return Ok(());
    };
    let generate = "generate one with `openssl rand -hex 32` (or let `node up` generate them)";
    if is_sample(config.cluster.cookie()) {
        anyhow::bail!(
            "`cluster.cookie` is the sample value and this node listens on {address}, beyond loopback: \
             anyone who read the repository could join the cluster. Set ACTORHUB_COOKIE (or ACTORHUB_COOKIE_FILE); {generate}"
        );
    }
    if config.web.jwt_secret.as_deref().is_some_and(is_sample) {
        anyhow::bail!(
            "`web.jwt_secret` is the sample value and this node listens on {address}, beyond loopback: \
             anyone could forge session tokens. Set ACTORHUB_JWT_SECRET (or ACTORHUB_JWT_SECRET_FILE); {generate}"
        );
    }
    if config.web.admin_token.is_none() {
        anyhow::bail!(
            "this node listens on {address}, beyond loopback, and `web.admin_token` is not set: \
             /metrics, /api/cluster and /api/admin/* would be open to everyone. Set ACTORHUB_ADMIN_TOKEN \
             (or ACTORHUB_ADMIN_TOKEN_FILE); {generate}"
        );
    }
    if config.cluster.cluster.tls.is_none() && !config.cluster.cluster.plaintext_beyond_loopback {
        anyhow::bail!(
            "this node listens on {address}, beyond loopback, without `[cluster.tls]`: cluster traffic would be \
             plaintext. Create certificates with `node certs --config FILE --out DIR` and set `[cluster.tls] dir` \
             (or ACTORHUB_TLS_DIR); `cluster.plaintext_beyond_loopback = true` allows plaintext on a network you trust"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_created_once_and_read_back() {
        let directory = tempfile::tempdir().expect("tempdir");
        let nodes = vec![
            ("n1".to_string(), "127.0.0.1:7101".parse().expect("address")),
            ("n2".to_string(), "127.0.0.1:7102".parse().expect("address")),
        ];
        let created = Generated::ensure(directory.path(), &nodes, true).expect("ensure");
        assert_eq!(created.len(), 4, "{created:?}");
        let first = Generated::read(directory.path()).expect("read");
        assert_eq!(
            first.cookie.as_ref().map(String::len),
            Some(2 * SECRET_BYTES)
        );
        assert_ne!(first.cookie, first.jwt_secret);
        assert!(first.tls_dir.is_some());
        // A second start reuses them; a node new to the config gets a certificate of the same CA.
        let mut more = nodes.clone();
        more.push(("n3".to_string(), "127.0.0.1:7103".parse().expect("address")));
        let created = Generated::ensure(directory.path(), &more, true).expect("ensure again");
        assert_eq!(created, vec!["tls/ (1 more node certificates)".to_string()]);
        let second = Generated::read(directory.path()).expect("read again");
        assert_eq!(first.cookie, second.cookie);
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.admin_token, second.admin_token);
        let tls = second.tls_dir.expect("tls");
        let ca = std::fs::read_to_string(tls.join("ca.pem")).expect("ca");
        runtime::cluster::tls::ClusterTls::load(&tls, "n3").expect("n3's certificate loads");
        assert!(ca.contains("BEGIN CERTIFICATE"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(directory.path().join("secrets/cookie"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secrets are readable by their owner only");
    }
}
