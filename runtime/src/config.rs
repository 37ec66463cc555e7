//! The runtime's part of `cluster.toml`: `[cluster]`, `[entities]`, `[storage]`, `[limits]`,
//! `[journal]`, `[reminders]` and `[[node]]`, with their defaults and validation.
//!
//! Parsing rejects unknown keys and missing fields in these sections with a message that names
//! the key; [`ClusterConfig::validate`] then checks what serde cannot (duplicate ids and ports,
//! sane timings). The file's other sections belong to other crates (`actors::config`,
//! `web::config`) and are not read here: the `node` binary parses the whole file from the
//! sections, rejects keys nobody owns, reads the environment and hands each crate its part
//! (the runtime's through [`ClusterConfig::resolve`]). Tests and benchmarks that need
//! only the runtime parse a file with [`ClusterConfig::from_toml`].
//!
//! The sections, their types and defaults are here; `loading` parses, applies what comes from
//! outside the file and validates.

mod loading;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::loading::{ConfigOverrides, free_loopback_ports};

/// The runtime's sections of `cluster.toml`.
///
/// Unknown top-level tables are ignored here (they are other crates' sections); the `node`
/// binary, which knows every section, rejects the ones nobody owns. Unknown keys inside the
/// runtime's own sections are rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub entities: EntitySection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub journal: JournalSection,
    #[serde(default)]
    pub reminders: RemindersSection,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

/// `[cluster]`: membership, the handshake secret and failure detection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// A name for logs and metrics; nodes of different clusters must not share a cookie.
    pub name: String,
    /// Shared secret of the inter-node handshake. `ACTORHUB_COOKIE` overrides it.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Parent of every node's own data directory (`<data_dir>/<node id>`).
    pub data_dir: PathBuf,
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// A peer not heard from for this long is declared down.
    #[serde(default = "defaults::failure_timeout_ms")]
    pub failure_timeout_ms: u64,
    #[serde(default = "defaults::reconnect_backoff_min_ms")]
    pub reconnect_backoff_min_ms: u64,
    #[serde(default = "defaults::reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// A cluster connection that has not finished its handshake by then is closed.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Largest frame accepted from a peer; ractor_cluster drops the link above it.
    #[serde(default = "defaults::frame_bytes_max")]
    pub frame_bytes_max: u64,
    /// Cluster connections whose handshake has not completed, at once; more are closed at once.
    #[serde(default = "defaults::unauthenticated_connections_max")]
    pub unauthenticated_connections_max: usize,
    /// The same, from one address.
    #[serde(default = "defaults::unauthenticated_per_ip_max")]
    pub unauthenticated_per_ip_max: usize,
    /// Bytes read from a cluster connection before its handshake completes (a handshake needs
    /// a few hundred); beyond it the connection is closed.
    #[serde(default = "defaults::preauth_bytes_max")]
    pub preauth_bytes_max: u64,
    /// Mutual TLS between nodes; without it cluster traffic is plaintext (loopback only).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Peers to dial while none is up: `host:port`, or a DNS name resolving to several (a
    /// Kubernetes headless service). `node run --join` adds to them.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Keep the members in a table in the shared store, so that nodes join and leave without
    /// an edit to the others' configuration. Off: the `[[node]]` entries only.
    #[serde(default = "defaults::member_table")]
    pub member_table: bool,
    /// How often the membership table is read.
    #[serde(default = "defaults::member_table_poll_ms")]
    pub member_table_poll_ms: u64,
    /// A member down this long is dropped from the table (`[[node]]` entries stay peers).
    #[serde(default = "defaults::member_remove_after_ms")]
    pub member_remove_after_ms: u64,
    /// Graceful leave (SIGTERM, `node drain`): how long the node waits for its peers to take
    /// its entities over before it stops anyway (the rest then fail over as after a crash).
    /// At most 20 s, so that a Kubernetes grace period of 30 s covers it and the HTTP drain.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Allow plaintext cluster traffic on an address beyond loopback (no `[cluster.tls]`).
    /// Off: such a node refuses to start. For networks you trust completely (a private test
    /// network namespace); the node says so loudly at start.
    #[serde(default)]
    pub plaintext_beyond_loopback: bool,
}

/// `[cluster.tls]`: where this node's TLS material is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// A directory holding `ca.pem` and `<node id>.pem` / `<node id>.key`, as `node certs`
    /// writes them (relative to the config file). `ACTORHUB_TLS_DIR` overrides it.
    pub dir: PathBuf,
}

/// Room for ractor_cluster's own framing around a message we hand it.
pub const FRAME_OVERHEAD_BYTES: u64 = 16 * 1024;

impl ClusterSection {
    /// The largest encoded message the runtime hands to ractor_cluster (a reply, a command, a
    /// publication): the peer's frame limit less the framing around it. Anything larger is
    /// refused before it is sent, so it can never drop a link.
    pub fn message_bytes_max(&self) -> usize {
        usize::try_from(self.frame_bytes_max.saturating_sub(FRAME_OVERHEAD_BYTES))
            .unwrap_or(usize::MAX)
    }
}

/// `[entities]`: virtual actor lifecycle and journal batching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySection {
    /// An entity with no message for this long is passivated.
    #[serde(default = "defaults::passivate_after_ms")]
    pub passivate_after_ms: u64,
    /// Default deadline of `EntityRef::ask`, retries included.
    #[serde(default = "defaults::ask_timeout_ms")]
    pub ask_timeout_ms: u64,
    /// Deadline of one remote attempt inside an ask.
    #[serde(default = "defaults::attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
    /// Commands an entity holds (queued, in the open batch or in flight) before it sheds load.
    #[serde(default = "defaults::pending_commands_max")]
    pub pending_commands_max: usize,
    /// Events in one journal object (one group commit).
    #[serde(default = "defaults::batch_events_max")]
    pub batch_events_max: usize,
    /// A snapshot is written after this many events since the last one.
    #[serde(default = "defaults::snapshot_every_events")]
    pub snapshot_every_events: u64,
    /// Restarts of one entity allowed within `restart_period_ms` before it is held back.
    #[serde(default = "defaults::entity_restarts_max")]
    pub restarts_max: u32,
    #[serde(default = "defaults::restart_period_ms")]
    pub restart_period_ms: u64,
    /// Entities active on one node at once; beyond it the least recently used passivate.
    #[serde(default = "defaults::active_max")]
    pub active_max: usize,
    /// An entity whose journal is empty (activated by a probe: a join of a room that does not
    /// exist, a login for an unknown account) passivates after this long without a message.
    #[serde(default = "defaults::probe_passivate_after_ms")]
    pub probe_passivate_after_ms: u64,
}

/// `[journal]`: the node log, its group commit, compaction and retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Least time between the starts of two flushes of the node log (one object-store write
    /// each, holding every entity's appends of that moment). 0 (the default) flushes as soon
    /// as the previous flush ended: what arrived during a flush goes in the next one, so the
    /// batches grow with the store's latency by themselves. More trades latency for fewer
    /// requests (on S3, 10-50 ms cuts PUTs when the load is steady).
    pub flush_interval_ms: u64,
    /// A flush starts early once this many bytes wait.
    pub flush_bytes_max: usize,
    /// How often owned partitions are compacted into entity segments.
    pub compact_interval_ms: u64,
    /// A partition is compacted early once this many records wait. Keep it well under the
    /// number of recent messages a room holds in memory (1,000): a room's history pages come
    /// from its memory, then from compacted segments, so records of one room neither compacted
    /// nor still in its memory would be missing from a page until the next compaction.
    pub compact_records_max: usize,
    /// How often a node that only reads looks for fences (a writer looks after every flush).
    pub fence_check_interval_ms: u64,
    /// How often the logs of nodes that are gone are cleaned up.
    pub janitor_interval_ms: u64,
    /// Events of history kept per entity kind beyond the latest snapshot (`room = 100000`);
    /// kinds not listed keep all of it.
    pub retain_events: std::collections::BTreeMap<String, u64>,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            flush_interval_ms: 0,
            flush_bytes_max: 4 * 1024 * 1024,
            compact_interval_ms: 2_000,
            compact_records_max: 256,
            fence_check_interval_ms: 1_000,
            janitor_interval_ms: 30_000,
            retain_events: std::collections::BTreeMap::new(),
        }
    }
}

/// `[reminders]`: durable reminders (see `crate::reminder`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemindersSection {
    /// Reminder shards (`sys.reminders` entities) per journal partition: the entities of a
    /// partition spread their reminders over them. Fixed for a store's life (a shard's
    /// reminders stay where they were registered).
    pub shards_per_partition: u32,
    /// Reminders one shard holds; a registration beyond it is refused (the command fails).
    pub per_shard_max: usize,
    /// Firings one shard has in flight (delivered, not yet acknowledged) at once.
    pub in_flight_max: usize,
    /// Firings per second of one node, all its shards together: a backlog after an outage
    /// drains at this rate instead of flooding the entities.
    pub fires_per_second_max: u32,
    /// Deadline of one firing (the target's `on_reminder` made durable); then it is retried.
    pub fire_timeout_ms: u64,
}

impl Default for RemindersSection {
    fn default() -> Self {
        Self {
            shards_per_partition: 4,
            per_shard_max: 100_000,
            in_flight_max: 64,
            fires_per_second_max: 500,
            fire_timeout_ms: 5_000,
        }
    }
}

/// `[limits]`: what one node may use, whatever its clients send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The node's memory budget (resident set). Above `memory_pressure_percent` of it, the
    /// node refuses new connections, uploads and entity activations and passivates its least
    /// recently used entities until it is back under.
    pub memory_bytes_max: u64,
    pub memory_pressure_percent: u8,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            memory_bytes_max: 2 * 1024 * 1024 * 1024,
            memory_pressure_percent: 80,
        }
    }
}

/// `[storage]`: where journals and files live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `file:///abs/dir`, a relative `file:dir` (against the config file), or `s3://bucket`.
    #[serde(default = "defaults::object_store_url")]
    pub url: String,
    /// S3-compatible endpoint (MinIO and friends); the AWS default otherwise.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// `ACTORHUB_S3_ACCESS_KEY_ID` / `ACTORHUB_S3_SECRET_ACCESS_KEY` override these.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    /// Local directory store: make every journal append durable (one `syncfs` per node for all
    /// appends waiting at that moment, see `storage.rs`) before acknowledging it.
    #[serde(default = "defaults::fsync")]
    pub fsync: bool,
    /// For benchmarks and tests only: adds this delay to every request to the store (S3's
    /// first-byte latency on a local store or a local S3 server).
    #[serde(default)]
    pub latency_ms: u64,
}

/// One `[[node]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    /// `host:port` peers dial; the host must be reachable by every other node.
    pub cluster_addr: SocketAddr,
    /// `host:port` of the node's HTTP and WebSocket server.
    pub http_addr: SocketAddr,
    /// Address the cluster listener binds; defaults to `cluster_addr`'s IP.
    #[serde(default)]
    pub listen_ip: Option<std::net::IpAddr>,
}

mod defaults {
    pub fn heartbeat_interval_ms() -> u64 {
        250
    }
    pub fn failure_timeout_ms() -> u64 {
        1500
    }
    pub fn reconnect_backoff_min_ms() -> u64 {
        100
    }
    pub fn reconnect_backoff_max_ms() -> u64 {
        5_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        3_000
    }
    pub fn frame_bytes_max() -> u64 {
        4 * 1024 * 1024
    }
    pub fn unauthenticated_connections_max() -> usize {
        64
    }
    pub fn unauthenticated_per_ip_max() -> usize {
        16
    }
    pub fn preauth_bytes_max() -> u64 {
        64 * 1024
    }
    pub fn member_table() -> bool {
        true
    }
    pub fn member_table_poll_ms() -> u64 {
        1_000
    }
    pub fn member_remove_after_ms() -> u64 {
        60_000
    }
    pub fn drain_timeout_ms() -> u64 {
        15_000
    }
    pub fn active_max() -> usize {
        50_000
    }
    pub fn probe_passivate_after_ms() -> u64 {
        2_000
    }
    pub fn passivate_after_ms() -> u64 {
        120_000
    }
    pub fn ask_timeout_ms() -> u64 {
        5_000
    }
    pub fn attempt_timeout_ms() -> u64 {
        1_000
    }
    pub fn pending_commands_max() -> usize {
        10_000
    }
    pub fn batch_events_max() -> usize {
        512
    }
    pub fn snapshot_every_events() -> u64 {
        500
    }
    pub fn entity_restarts_max() -> u32 {
        5
    }
    pub fn restart_period_ms() -> u64 {
        10_000
    }
    pub fn fsync() -> bool {
        true
    }
    pub fn object_store_url() -> String {
        "file:data/objects".to_string()
    }
}

impl Default for EntitySection {
    fn default() -> Self {
        Self {
            passivate_after_ms: defaults::passivate_after_ms(),
            ask_timeout_ms: defaults::ask_timeout_ms(),
            attempt_timeout_ms: defaults::attempt_timeout_ms(),
            pending_commands_max: defaults::pending_commands_max(),
            batch_events_max: defaults::batch_events_max(),
            snapshot_every_events: defaults::snapshot_every_events(),
            restarts_max: defaults::entity_restarts_max(),
            restart_period_ms: defaults::restart_period_ms(),
            active_max: defaults::active_max(),
            probe_passivate_after_ms: defaults::probe_passivate_after_ms(),
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            url: defaults::object_store_url(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            fsync: defaults::fsync(),
            latency_ms: 0,
        }
    }
}
