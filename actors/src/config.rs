//! The application's sections of `cluster.toml`: `[users]`, `[jobs]`, `[sessions]` and
//! `[rooms]`, their defaults and their validation (errors name the key). The `node` binary
//! reads the file and the environment and hands these sections over; the runtime's own
//! sections are in `runtime::config`, the web layer's in `web::config`.

use serde::{Deserialize, Serialize};

/// A section value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

/// The application's settings: what the entities, services and sessions of `actors` read.
/// Every node must use the same values (they decide what the entities accept).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    pub users: UsersSection,
    pub jobs: JobsSection,
    pub sessions: SessionsSection,
    pub rooms: RoomsSection,
}

impl AppConfig {
    /// Checks what the types alone cannot: ranges and required settings.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.users.validate().map_err(InvalidConfig)?;
        self.jobs.validate().map_err(InvalidConfig)?;
        self.sessions.validate().map_err(InvalidConfig)?;
        self.rooms.validate().map_err(InvalidConfig)?;
        Ok(())
    }
}

/// `[rooms]`: chat rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsSection {
    /// For the failover tests only: a room creation waits this long between creating the room
    /// and listing it in the directory, so that a test can kill the node there. 0 (the
    /// default): no wait. Never in production.
    pub test_pause_before_listing_ms: u64,
    /// Rooms (public and private) one user may create, ever; one more is refused with 403
    /// `room_quota_exceeded`. At most [`ROOMS_CREATED_PER_USER_LIMIT`].
    pub created_per_user_max: usize,
    /// Most users a room's presence lists to its members (the `joins` of `presence` frames);
    /// beyond it only the count (`count`, always exact) grows. At most
    /// [`PRESENCE_LISTED_LIMIT`].
    pub presence_listed_max: usize,
}

/// The largest `rooms.created_per_user_max` accepted (each creation is remembered per user).
pub const ROOMS_CREATED_PER_USER_LIMIT: usize = 10_000;
/// The largest `rooms.presence_listed_max` accepted (every member's page shows the list).
pub const PRESENCE_LISTED_LIMIT: usize = 10_000;

impl Default for RoomsSection {
    fn default() -> Self {
        Self {
            test_pause_before_listing_ms: 0,
            created_per_user_max: 100,
            presence_listed_max: 100,
        }
    }
}

impl RoomsSection {
    fn validate(&self) -> Result<(), String> {
        if self.test_pause_before_listing_ms > 600_000 {
            return Err("`rooms.test_pause_before_listing_ms`: at most 600000".into());
        }
        if self.created_per_user_max > ROOMS_CREATED_PER_USER_LIMIT {
            return Err(format!(
                "`rooms.created_per_user_max`: at most {ROOMS_CREATED_PER_USER_LIMIT}"
            ));
        }
        if !(1..=PRESENCE_LISTED_LIMIT).contains(&self.presence_listed_max) {
            return Err(format!(
                "`rooms.presence_listed_max`: 1 to {PRESENCE_LISTED_LIMIT}"
            ));
        }
        Ok(())
    }
}

/// `[sessions]`: limits of each WebSocket connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// Largest client frame handled; a larger one gets an error frame.
    pub frame_bytes_max: usize,
    /// Client data frames per second (token bucket, bursts of twice this); a frame over it
    /// gets a `rate_limited` error. Frames of any kind (pings too) beyond four times this rate,
    /// after a burst of two seconds of it, close the connection (1008).
    pub messages_per_second: u32,
    /// Frames waiting to be written to one client; a client that lets it fill is disconnected.
    pub outbound_queue_max: usize,
    /// A connection silent for this long is closed: no data frame, and no pong answering one
    /// of the node's pings (pings and unsolicited pongs from the client do not count).
    pub idle_timeout_ms: u64,
    /// Longest chat message text, in bytes.
    pub text_bytes_max: usize,
    /// Open WebSocket connections per node.
    pub connections_max: usize,
    /// A session whose actor had nothing to do for this long stops its actor and keeps only a
    /// compact record on the connection (see `session::hibernation`); the next frame or event
    /// that needs the actor starts it again from that record. 0 keeps every actor running.
    pub hibernate_after_ms: u64,
}

impl Default for SessionsSection {
    fn default() -> Self {
        Self {
            frame_bytes_max: 16 * 1024,
            messages_per_second: 50,
            outbound_queue_max: 1024,
            idle_timeout_ms: 60_000,
            text_bytes_max: 4 * 1024,
            connections_max: 20_000,
            hibernate_after_ms: 10_000,
        }
    }
}

impl SessionsSection {
    fn validate(&self) -> Result<(), String> {
        // Zero would refuse every frame or every connection: a typo, not a policy.
        for (key, value) in [
            ("frame_bytes_max", self.frame_bytes_max as u64),
            ("messages_per_second", u64::from(self.messages_per_second)),
            ("outbound_queue_max", self.outbound_queue_max as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("text_bytes_max", self.text_bytes_max as u64),
            ("connections_max", self.connections_max as u64),
        ] {
            if value == 0 {
                return Err(format!("`sessions.{key}`: must be above 0"));
            }
        }
        Ok(())
    }
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
    /// An account still unverified this long after its sign-up is deleted (its `user` entity's
    /// reminder `expire-unverified`), so that its email can be signed up again. At least
    /// `verification_ttl_s` (the first link works until it expires), at most 10 years.
    pub unverified_ttl_s: u64,
    /// Failed logins of one account, from any address, within `login_failure_window_s` before
    /// it is locked for everyone: only a backstop against guessing from many addresses. The
    /// lockout that counts is the web layer's, per (client address, account), which an
    /// attacker cannot aim at someone else (`web::limits`); it slows one address to about 13
    /// failures per node in 15 minutes, so the default here is out of one address's reach.
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
            unverified_ttl_s: 7 * 24 * 3600,
            login_failures_max: 100,
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

/// The largest `users.unverified_ttl_s` accepted (10 years).
pub const UNVERIFIED_TTL_S_LIMIT: u64 = 10 * 365 * 24 * 3600;

impl UsersSection {
    fn validate(&self) -> Result<(), String> {
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
        if !(self.verification_ttl_s..=UNVERIFIED_TTL_S_LIMIT).contains(&self.unverified_ttl_s) {
            return Err(format!(
                "`users.unverified_ttl_s` = {}: from `users.verification_ttl_s` ({}) to {UNVERIFIED_TTL_S_LIMIT} (10 years)",
                self.unverified_ttl_s, self.verification_ttl_s
            ));
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
    /// Bytes of job files (inputs and outputs) one user may keep stored, cluster-wide; a
    /// submission beyond it is refused with 413 `storage_quota_exceeded`. Outputs are counted
    /// once written, so a user may end a little above it; the next submission is refused.
    pub stored_bytes_per_user_max: u64,
    /// A finished job (done or failed) is deleted this long after it finished: its files leave
    /// the store and it leaves its owner's list.
    pub finished_ttl_s: u64,
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
            stored_bytes_per_user_max: 1024 * 1024 * 1024,
            finished_ttl_s: 7 * 24 * 3600,
        }
    }
}

impl JobsSection {
    fn validate(&self) -> Result<(), String> {
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
        if self.stored_bytes_per_user_max < 1024 {
            return Err("`jobs.stored_bytes_per_user_max`: at least 1 KiB".into());
        }
        if !(1..=10 * 365 * 24 * 3600).contains(&self.finished_ttl_s) {
            return Err("`jobs.finished_ttl_s`: 1 s to 10 years".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the application's sections out of `cluster.toml` text and validates them.
    fn parse(text: &str) -> Result<AppConfig, String> {
        let config: AppConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate().map_err(|error| error.to_string())?;
        Ok(config)
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config should have been rejected:\n{text}"),
            Err(error) => error,
        }
    }

    #[test]
    fn every_section_defaults() {
        let config = parse("").expect("empty is valid");
        assert_eq!(config.users.argon2_memory_kib, 19 * 1024);
        assert_eq!(config.users.mailer, MailerKind::Outbox);
        assert_eq!(config.jobs.workers, 2);
        assert_eq!(config.sessions.messages_per_second, 50);
        assert_eq!(config.sessions.frame_bytes_max, 16 * 1024);
    }

    #[test]
    fn converter_worker_limits_are_named_and_defaulted() {
        let config = parse("").expect("valid");
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
            let message = error_of(&format!("[jobs]\n{line}\n"));
            assert!(message.contains(key), "{line}: {message}");
        }
    }

    #[test]
    fn users_section_has_named_errors() {
        let smtp = error_of("[users]\nmailer = \"smtp\"\n");
        assert!(smtp.contains("users.smtp_host"), "{smtp}");
        let weak = error_of("[users]\nargon2_memory_kib = 4\n");
        assert!(weak.contains("users.argon2_memory_kib"), "{weak}");
        let unknown = error_of("[users]\nargon2_memory = 4\n");
        assert!(unknown.contains("argon2_memory"), "{unknown}");
    }

    #[test]
    fn unverified_accounts_live_at_least_as_long_as_their_first_link() {
        let config = parse("").expect("valid");
        assert_eq!(config.users.unverified_ttl_s, 7 * 24 * 3600);
        let short = parse("[users]\nverification_ttl_s = 2\nunverified_ttl_s = 3\n")
            .expect("a few seconds (the tests) are valid");
        assert_eq!(short.users.unverified_ttl_s, 3);
        for text in [
            "[users]\nunverified_ttl_s = 60\n",
            "[users]\nverification_ttl_s = 10\nunverified_ttl_s = 0\n",
            "[users]\nunverified_ttl_s = 999999999999\n",
        ] {
            let message = error_of(text);
            assert!(
                message.contains("users.unverified_ttl_s"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn session_limits_of_zero_are_named() {
        let message = error_of("[sessions]\nmessages_per_second = 0\n");
        assert!(
            message.contains("sessions.messages_per_second"),
            "{message}"
        );
        let unknown = error_of("[sessions]\nmessages_per_minute = 5\n");
        assert!(unknown.contains("messages_per_minute"), "{unknown}");
    }
}
