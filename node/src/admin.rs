//! The operator's commands: `node certs` (the cluster CA and node certificates), `node status`
//! and `node drain` (through a node's operator routes, with the admin token of the config).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::config_file::Config;

/// How long one operator request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `node drain` waits for the node to leave before it says so.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(200);

pub fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}

/// `node certs`: a CA in `out` (unless one is there) and a certificate for each of `nodes`
/// (default: every `[[node]]`), naming the node and its cluster address's IP when known.
pub fn certs(config: &Config, out: &Path, nodes: &[String]) -> anyhow::Result<()> {
    let ids: Vec<String> = if nodes.is_empty() {
        config
            .cluster
            .nodes
            .iter()
            .map(|node| node.id.clone())
            .collect()
    } else {
        nodes.to_vec()
    };
    if ids.is_empty() {
        bail!(
            "no node to certify: the config has no [[node]]; name them with --node ID (repeatable)"
        );
    }
    let entries: Vec<(String, Vec<String>)> = ids
        .iter()
        .map(|id| {
            let hosts = config
                .cluster
                .node(id)
                .map(|node| vec![node.cluster_addr.ip().to_string()])
                .unwrap_or_default();
            (id.clone(), hosts)
        })
        .collect();
    let existing = out.join("ca.pem").exists();
    if existing {
        runtime::cluster::tls::add(out, &entries)
    } else {
        runtime::cluster::tls::generate(out, &entries)
    }
    .with_context(|| format!("cannot write certificates to {}", out.display()))?;
    println!(
        "{} {} node certificate(s) in {}: {}",
        if existing {
            "added"
        } else {
            "created a cluster CA and"
        },
        ids.len(),
        out.display(),
        ids.join(", ")
    );
    println!(
        "Each node needs ca.pem, <id>.pem and <id>.key (set `[cluster.tls] dir` or ACTORHUB_TLS_DIR); keep ca.key off the nodes."
    );
    Ok(())
}

/// An operator client for one cluster: the admin token of the config, if any.
struct Operator {
    client: reqwest::Client,
    token: Option<String>,
}

impl Operator {
    fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .context("cannot build an HTTP client")?,
            token: config.web.admin_token.clone(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        address: SocketAddr,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, format!("http://{address}{path}"));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn view(&self, address: SocketAddr) -> anyhow::Result<View> {
        let response = self
            .request(reqwest::Method::GET, address, "/api/cluster")
            .send()
            .await
            .with_context(|| format!("no answer from {address}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("{address} answered {status}: {}", body.trim());
        }
        response
            .json()
            .await
            .with_context(|| format!("{address} did not answer like an ActorHub node"))
    }

    /// The view of the first node of `addresses` that answers.
    async fn any_view(&self, addresses: &[SocketAddr]) -> anyhow::Result<View> {
        let mut errors = Vec::new();
        for address in addresses {
            match self.view(*address).await {
                Ok(view) => return Ok(view),
                Err(error) => errors.push(format!("{error:#}")),
            }
        }
        bail!(
            "no node answered (pass --http-addr of a running node): {}",
            errors.join("; ")
        )
    }
}

#[derive(Debug, Deserialize)]
struct View {
    node: String,
    version: String,
    protocol: u8,
    members: Vec<Member>,
    entities: Entities,
}

#[derive(Debug, Deserialize)]
struct Member {
    id: String,
    state: String,
    http_addr: String,
    protocol: u8,
}

#[derive(Debug, Deserialize)]
struct Entities {
    active: usize,
}

fn candidates(config: &Config, http_addr: Option<SocketAddr>) -> Vec<SocketAddr> {
    match http_addr {
        Some(address) => vec![address],
        None => config
            .cluster
            .nodes
            .iter()
            .map(|node| node.http_addr)
            .collect(),
    }
}

/// `node status`: every member as the asked node sees it, with what each member says of itself.
pub async fn status(config: &Config, http_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let operator = Operator::new(config)?;
    let view = operator.any_view(&candidates(config, http_addr)).await?;
    println!(
        "cluster {:?}, as node {} sees it:",
        config.cluster.cluster.name, view.node
    );
    println!(
        "{:<16} {:<8} {:>9} {:>9} {:<10} http",
        "member", "state", "entities", "protocol", "version"
    );
    for member in &view.members {
        // Each member reports its own entities and version; one that does not answer shows `-`.
        let own = match member.http_addr.parse::<SocketAddr>() {
            Ok(address) if member.state == "up" || member.id == view.node => {
                operator.view(address).await.ok()
            }
            _ => None,
        };
        let (entities, version) = match &own {
            Some(own) => (own.entities.active.to_string(), own.version.clone()),
            None => ("-".to_string(), "-".to_string()),
        };
        let protocol = if member.id == view.node {
            view.protocol
        } else {
            member.protocol
        };
        println!(
            "{:<16} {:<8} {:>9} {:>9} {:<10} {}",
            member.id, member.state, entities, protocol, version, member.http_addr
        );
    }
    Ok(())
}

/// `node drain`: asks node `id` to leave the cluster gracefully and waits until it has gone.
pub async fn drain(config: &Config, id: &str, http_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let operator = Operator::new(config)?;
    let address =
        match http_addr.or_else(|| config.cluster.node(id).ok().map(|node| node.http_addr)) {
            Some(address) => address,
            None => {
                // Find it in the view of any node of the config.
                let view = operator.any_view(&candidates(config, None)).await?;
                let member = view
                    .members
                    .iter()
                    .find(|member| member.id == id)
                    .with_context(|| format!("no member {id:?} in the cluster"))?;
                member.http_addr.parse().with_context(|| {
                    format!("member {id:?} has no usable HTTP address; pass --http-addr")
                })?
            }
        };
    let started = std::time::Instant::now();
    let response = operator
        .request(reqwest::Method::POST, address, "/api/admin/drain")
        .send()
        .await
        .with_context(|| format!("no answer from {id} at {address}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        let body = response.text().await.unwrap_or_default();
        bail!("{id} refused the drain ({status}): {}", body.trim());
    }
    println!("{id} is leaving the cluster: its entities move to the other members…");
    // Gone when its HTTP server stops answering.
    while started.elapsed() < DRAIN_WAIT {
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
        if operator
            .request(reqwest::Method::GET, address, "/healthz")
            .send()
            .await
            .is_err()
        {
            println!(
                "{id} has left the cluster and stopped ({} ms)",
                started.elapsed().as_millis()
            );
            return Ok(());
        }
    }
    bail!(
        "{id} still answers {} s after the drain request; see its log",
        DRAIN_WAIT.as_secs()
    )
}
