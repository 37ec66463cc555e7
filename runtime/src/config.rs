//! The typed cluster configuration (`cluster.toml`): parsing, defaults and validation.
//!
//! Parsing rejects unknown keys and missing fields with a message that names the key;
//! [`ClusterConfig::validate`] then checks what serde cannot (duplicate ids and ports,
//! sane timings). Reading files and the environment is the `node` binary's job: it hands
//! the text and any secret overrides to [`ClusterConfig::from_toml`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The whole of `cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub entities: EntitySection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub web: WebSection,
    #[serde(default)]
    pub sessions: SessionsSection,
    #[serde(default)]
    pub users: UsersSection,
    #[serde(default)]
    pub jobs: JobsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub journal: JournalSection,
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
    /// Least time between two flushes of the node log (one object-store write each, holding
    /// every entity's appends of that moment): 0 writes as soon as the previous write ended;
    /// on S3, 10-50 ms trades a little latency for far fewer requests.
    pub flush_interval_ms: u64,
    /// A flush starts early once this many bytes wait.
    pub flush_bytes_max: usize,
    /// How often owned partitions are compacted into entity segments.
    pub compact_interval_ms: u64,
    /// A partition is compacted early once this many records wait.
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
            flush_interval_ms: 2,
            flush_bytes_max: 4 * 1024 * 1024,
            compact_interval_ms: 2_000,
            compact_records_max: 4_096,
            fence_check_interval_ms: 1_000,
            janitor_interval_ms: 30_000,
            retain_events: std::collections::BTreeMap::new(),
        }
    }
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

/// `[web]`: HTTP and token settings shared by every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// HS256 secret of session tokens. `ACTORHUB_JWT_SECRET` overrides it.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    #[serde(default = "defaults::token_ttl_s")]
    pub token_ttl_s: u64,
    /// Grace period for in-flight requests on shutdown.
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

/// `[sessions]`: limits of each WebSocket connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// Largest client frame handled; a larger one gets an error frame.
    #[serde(default = "defaults::frame_bytes_max_client")]
    pub frame_bytes_max: usize,
    /// Client data frames per second (token bucket, bursts of twice this); a frame over it
    /// gets a `rate_limited` error. Frames of any kind (pings too) beyond four times this rate,
    /// after a burst of two seconds of it, close the connection (1008).
    #[serde(default = "defaults::messages_per_second")]
    pub messages_per_second: u32,
    /// Frames waiting to be written to one client; a client that lets it fill is disconnected.
    #[serde(default = "defaults::outbound_queue_max")]
    pub outbound_queue_max: usize,
    /// A connection silent for this long is closed: no data frame, and no pong answering one
    /// of the node's pings (pings and unsolicited pongs from the client do not count).
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Longest chat message text, in bytes.
    #[serde(default = "defaults::text_bytes_max")]
    pub text_bytes_max: usize,
    /// Open WebSocket connections per node.
    #[serde(default = "defaults::connections_max")]
    pub connections_max: usize,
}

/// `[users]`: accounts: password hashing, verification mail, login limits, profile photos.
/// Every node must use the same values (they decide what the user entities accept).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersSection {
    /// argon2id memory cost; the default is OWASP's 19 MiB (with 2 iterations, 1 lane).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Lifetime of a verification link.
    pub verification_ttl_s: u64,
    /// Least time between two verification mails of one account.
    pub resend_interval_s: u64,
    /// Failed logins of one account within `login_failure_window_s` before it is locked.
    pub login_failures_max: u32,
    pub login_failure_window_s: u64,
    /// Largest profile photo upload.
    pub photo_bytes_max: u64,
    /// Stored photos fit in a square of this many pixels.
    pub photo_dimension_max: u32,
    /// Base of activation links (`https://hub.example.com`); the node's own HTTP address if unset.
    pub public_url: Option<String>,
    /// `From:` of the mails sent.
    pub mail_from: String,
    /// `outbox` (`.eml` files under `<node data dir>/outbox/`) or `smtp`.
    pub mailer: MailerKind,
    pub smtp_host: Option<String>,
    /// Defaults to 465 for `tls`, 587 for `starttls`, 25 for `none`.
    pub smtp_port: Option<u16>,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
}

impl Default for UsersSection {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            verification_ttl_s: 24 * 3600,
            resend_interval_s: 60,
            login_failures_max: 5,
            login_failure_window_s: 15 * 60,
            photo_bytes_max: 5 * 1024 * 1024,
            photo_dimension_max: 512,
            public_url: None,
            mail_from: "ActorHub <noreply@actorhub.localhost>".into(),
            mailer: MailerKind::Outbox,
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
        }
    }
}

impl UsersSection {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=16).contains(&self.argon2_parallelism)
            || !(1..=16).contains(&self.argon2_iterations)
        {
            return Err("`users.argon2_iterations` and `users.argon2_parallelism`: 1 to 16".into());
        }
        if self.argon2_memory_kib < 8 * self.argon2_parallelism
            || self.argon2_memory_kib > 1024 * 1024
        {
            return Err("`users.argon2_memory_kib`: 8 × parallelism to 1 GiB".into());
        }
        if self.verification_ttl_s == 0 || self.login_failures_max == 0 {
            return Err(
                "`users.verification_ttl_s` and `users.login_failures_max`: above 0".into(),
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.photo_bytes_max)
            || !(16..=4096).contains(&self.photo_dimension_max)
        {
            return Err("`users.photo_bytes_max` (1 KiB-64 MiB) or `users.photo_dimension_max` (16-4096) out of range".into());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "`users.public_url` = {url:?}: must start with http:// or https://"
            ));
        }
        if self.mailer == MailerKind::Smtp && self.smtp_host.is_none() {
            return Err("`users.smtp_host`: required when `users.mailer` = \"smtp\"".into());
        }
        Ok(())
    }
}

/// `[jobs]`: file conversions: the worker pool of each node and the limits of every job.
/// Every node must use the same values (they decide what a job's owner accepts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Conversions running at once on one node (threads of its worker pool).
    pub workers: usize,
    /// Jobs accepted and not finished on one node (waiting + running); beyond it new uploads
    /// get 429 `queue_full`.
    pub queue_max: usize,
    /// Jobs of one user not finished at once, cluster-wide; beyond it 429 `too_many_jobs`.
    pub per_user_max: usize,
    /// Largest upload; 413 beyond it, and nothing is kept.
    pub input_bytes_max: u64,
    /// Largest converted file; a conversion producing more fails.
    pub output_bytes_max: u64,
    /// A conversion running longer fails with a timeout.
    pub timeout_ms: u64,
    /// How often each node re-checks the unfinished jobs it owns (besides membership changes).
    pub revive_interval_ms: u64,
    /// Enables the test targets (`slow`, `panic`, `crash`, `hog`, `spin`) used by the failover
    /// and fault tests. Never in production.
    pub test_converters: bool,
    /// Address space of one converter worker process (`RLIMIT_AS`); beyond it the job fails
    /// with "the converter ran out of memory".
    pub worker_memory_bytes_max: u64,
    /// The same for LibreOffice conversions: soffice maps far more than it touches.
    pub office_memory_bytes_max: u64,
    /// CPU time of one converter worker (`RLIMIT_CPU`), besides the wall-clock `timeout_ms`.
    pub worker_cpu_seconds_max: u64,
    /// Open files of one converter worker (`RLIMIT_NOFILE`).
    pub worker_open_files_max: u64,
    /// Attempts of one job that may end without a result (a crashed worker, a dead node) before
    /// the job fails for good ("the converter crashed on this input N times").
    pub max_attempts: u32,
}

impl Default for JobsSection {
    fn default() -> Self {
        Self {
            workers: 2,
            queue_max: 64,
            per_user_max: 8,
            input_bytes_max: 32 * 1024 * 1024,
            output_bytes_max: 64 * 1024 * 1024,
            timeout_ms: 120_000,
            revive_interval_ms: 30_000,
            test_converters: false,
            worker_memory_bytes_max: 512 * 1024 * 1024,
            office_memory_bytes_max: 4 * 1024 * 1024 * 1024,
            worker_cpu_seconds_max: 60,
            worker_open_files_max: 256,
            max_attempts: 3,
        }
    }
}

impl JobsSection {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=256).contains(&self.workers) || self.queue_max == 0 || self.per_user_max == 0 {
            return Err(
                "`jobs.workers` (1-256), `jobs.queue_max` and `jobs.per_user_max`: above 0".into(),
            );
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.input_bytes_max)
            || !(1024..=1024 * 1024 * 1024).contains(&self.output_bytes_max)
        {
            return Err(
                "`jobs.input_bytes_max` and `jobs.output_bytes_max`: 1 KiB to 1 GiB".into(),
            );
        }
        if self.timeout_ms < 100 || self.revive_interval_ms < 100 {
            return Err("`jobs.timeout_ms` and `jobs.revive_interval_ms`: at least 100".into());
        }
        const MIB: u64 = 1024 * 1024;
        if !(64 * MIB..=64 * 1024 * MIB).contains(&self.worker_memory_bytes_max) {
            return Err("`jobs.worker_memory_bytes_max`: 64 MiB to 64 GiB".into());
        }
        if !(256 * MIB..=64 * 1024 * MIB).contains(&self.office_memory_bytes_max) {
            return Err("`jobs.office_memory_bytes_max`: 256 MiB to 64 GiB".into());
        }
        if !(1..=86_400).contains(&self.worker_cpu_seconds_max) {
            return Err("`jobs.worker_cpu_seconds_max`: 1 to 86400".into());
        }
        if !(16..=65_536).contains(&self.worker_open_files_max) {
            return Err("`jobs.worker_open_files_max`: 16 to 65536".into());
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err("`jobs.max_attempts`: 1 to 100".into());
        }
        Ok(())
    }
}

/// How `[users]` sends mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailerKind {
    Outbox,
    Smtp,
}

/// SMTP transport security: implicit TLS, STARTTLS (required), or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Tls,
    Starttls,
    None,
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
    pub fn frame_bytes_max_client() -> usize {
        16 * 1024
    }
    pub fn messages_per_second() -> u32 {
        50
    }
    pub fn outbound_queue_max() -> usize {
        1024
    }
    pub fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn text_bytes_max() -> usize {
        4 * 1024
    }
    pub fn connections_max() -> usize {
        20_000
    }
    pub fn fsync() -> bool {
        true
    }
    pub fn object_store_url() -> String {
        "file:data/objects".to_string()
    }
    pub fn token_ttl_s() -> u64 {
        3_600
    }
    pub fn shutdown_timeout_ms() -> u64 {
        5_000
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

impl Default for SessionsSection {
    fn default() -> Self {
        Self {
            frame_bytes_max: defaults::frame_bytes_max_client(),
            messages_per_second: defaults::messages_per_second(),
            outbound_queue_max: defaults::outbound_queue_max(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            text_bytes_max: defaults::text_bytes_max(),
            connections_max: defaults::connections_max(),
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

impl Default for WebSection {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_s: defaults::token_ttl_s(),
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
        }
    }
}

/// Secrets and paths that come from outside the file (the environment, the file's location).
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub cookie: Option<String>,
    pub jwt_secret: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Relative paths in the file are resolved against this directory.
    pub base_dir: Option<PathBuf>,
}

/// Distinct free loopback ports.
///
/// Every listener is held until all ports are known, so the ports are distinct from each other;
/// they are released on return, so they are free only until someone else binds them.
pub fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
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

    /// Parses and validates `cluster.toml` text. `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str, overrides: ConfigOverrides) -> Result<Self> {
        let mut config: ClusterConfig = toml::from_str(text)
            .map_err(|error| RuntimeError::Config(format!("{origin}: {}", error)))?;
        if let Some(cookie) = overrides.cookie {
            config.cluster.cookie = Some(cookie);
        }
        if let Some(secret) = overrides.jwt_secret {
            config.web.jwt_secret = Some(secret);
        }
        if let Some(key) = overrides.s3_access_key_id {
            config.storage.access_key_id = Some(key);
        }
        if let Some(key) = overrides.s3_secret_access_key {
            config.storage.secret_access_key = Some(key);
        }
        if let Some(base) = overrides.base_dir {
            config.resolve_paths(&base);
        }
        config.validate().map_err(|error| match error {
            RuntimeError::Config(message) => RuntimeError::Config(format!("{origin}: {message}")),
            other => other,
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.cluster.data_dir.is_relative() {
            self.cluster.data_dir = base.join(&self.cluster.data_dir);
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
        if self.nodes.is_empty() {
            return fail("`node`: at least one [[node]] entry is required".into());
        }
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
        if let Some(secret) = &self.web.jwt_secret
            && secret.len() < 16
        {
            return fail("`web.jwt_secret`: use at least 16 characters".into());
        }
        self.journal.validate().map_err(RuntimeError::Config)?;
        self.users.validate().map_err(RuntimeError::Config)?;
        self.jobs.validate().map_err(RuntimeError::Config)?;
        Ok(())
    }

    /// The `[[node]]` entry of `id`.
    pub fn node(&self, id: &str) -> Result<&NodeConfig> {
        self.nodes.iter().find(|node| node.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|node| node.id.as_str()).collect();
            RuntimeError::Config(format!(
                "no [[node]] with id {id:?}; the config has {known:?}"
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
    fn converter_worker_limits_are_named_and_defaulted() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.jobs.worker_memory_bytes_max, 512 * 1024 * 1024);
        assert_eq!(config.jobs.max_attempts, 3);
        for (line, key) in [
            (
                "worker_memory_bytes_max = 1024",
                "jobs.worker_memory_bytes_max",
            ),
            ("worker_cpu_seconds_max = 0", "jobs.worker_cpu_seconds_max"),
            ("worker_open_files_max = 3", "jobs.worker_open_files_max"),
            ("max_attempts = 0", "jobs.max_attempts"),
        ] {
            let message = error_of(&format!("{GOOD}\n[jobs]\n{line}\n"));
            assert!(message.contains(key), "{line}: {message}");
        }
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
    fn users_section_has_defaults_and_named_errors() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.users.argon2_memory_kib, 19 * 1024);
        assert_eq!(config.users.mailer, MailerKind::Outbox);
        let smtp = format!("{GOOD}\n[users]\nmailer = \"smtp\"\n");
        assert!(
            error_of(&smtp).contains("users.smtp_host"),
            "{}",
            error_of(&smtp)
        );
        let weak = format!("{GOOD}\n[users]\nargon2_memory_kib = 4\n");
        assert!(error_of(&weak).contains("users.argon2_memory_kib"));
        let unknown = format!("{GOOD}\n[users]\nargon2_memory = 4\n");
        assert!(error_of(&unknown).contains("argon2_memory"));
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
