//! What a chaos run does: the scenario (nodes, duration, seed, fault kinds, timings, workload
//! size, bounds), from command-line flags or from a TOML file with the same names.
//!
//! Every field has a default, so a scenario file only names what it changes, and unknown keys
//! are rejected with the key's name (a typo must not silently run a different scenario).
//!
//! Hostile clients are off unless the file says `hostile = true` or has a `[hostile]` table
//! (whose keys are [`HostileScenario`]'s), or the command line says `--hostile`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Most nodes a chaos run starts (the cluster builder's own limit).
pub const NODES_MAX: usize = crate::cluster::NODES_MAX;
/// Longest run accepted; a soak longer than a day is a typo.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Most rooms the workload creates (each gets one client per node).
pub const ROOMS_MAX: usize = 64;
/// Most hostile clients of one kind at once.
pub const HOSTILE_CLIENTS_PER_KIND_MAX: usize = 8;
/// The nodes' memory budget (`limits.memory_bytes_max`) when the scenario does not set one:
/// far above what a 3-node chat run needs (a few hundred MiB), far below what the hostile
/// inputs would take without their limits (gigabytes).
pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

/// One kind of fault the injector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL, then a restart after the hold time.
    Kill,
    /// SIGSTOP for the hold time, then SIGCONT.
    Pause,
    /// One node cut off from the others (or the cluster split in two), healed after the hold.
    Partition,
    /// SIGTERM (graceful shutdown), then a restart at once.
    Restart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Restart => "restart",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" | "freeze" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "restart" => Ok(FaultKind::Restart),
            other => bail!("unknown fault kind {other:?}; known: kill, pause, partition, restart"),
        }
    }
}

/// Parses `kill,pause,partition`.
pub fn parse_fault_list(text: &str) -> anyhow::Result<Vec<FaultKind>> {
    let mut kinds = Vec::new();
    for part in text.split(',').filter(|part| !part.trim().is_empty()) {
        let kind: FaultKind = part.parse()?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// Parses `60s`, `10m`, `1h`, `1500ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit() && character != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 60s, 10m or 1500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit {other:?} in {text:?}; use ms, s, m or h"),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        bail!("{text:?} is not a valid duration");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Where the nodes' network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Network namespaces when root with `ip` and `nft`, loopback otherwise.
    Auto,
    /// One network namespace per node on a bridge; partitions available.
    Netns,
    /// Loopback ports; partitions unavailable.
    Loopback,
}

impl FromStr for NetworkMode {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "auto" => Ok(NetworkMode::Auto),
            "netns" => Ok(NetworkMode::Netns),
            "loopback" => Ok(NetworkMode::Loopback),
            other => bail!("unknown network mode {other:?}; use auto, netns or loopback"),
        }
    }
}

/// Whether the workload submits conversion jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsMode {
    /// When the cluster answers `GET /api/converters`.
    Auto,
    Off,
}

/// One kind of hostile client; see `hostile.rs` for what each does and expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileKind {
    /// Uploads of the hostile corpus with an ordinary token: each job must fail with a reason.
    PoisonUpload,
    /// Pings as fast as the socket takes them (reading the pongs, or never reading).
    PingFlood,
    /// Joins of rooms that do not exist, as fast as the socket takes them.
    JoinFlood,
    /// Oversized frames (1009) and frames that break the protocol (1002, 1007).
    BadFrames,
    /// A room of ~4 KB messages joined with `since: 0` from a node that does not own it.
    HugeReplay,
    /// Garbage, slow handshakes and 4 MiB length prefixes on the nodes' cluster ports.
    ClusterPort,
}

impl HostileKind {
    pub const ALL: [HostileKind; 6] = [
        HostileKind::PoisonUpload,
        HostileKind::PingFlood,
        HostileKind::JoinFlood,
        HostileKind::BadFrames,
        HostileKind::HugeReplay,
        HostileKind::ClusterPort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostileKind::PoisonUpload => "poison_upload",
            HostileKind::PingFlood => "ping_flood",
            HostileKind::JoinFlood => "join_flood",
            HostileKind::BadFrames => "bad_frames",
            HostileKind::HugeReplay => "huge_replay",
            HostileKind::ClusterPort => "cluster_port",
        }
    }
}

impl fmt::Display for HostileKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The hostile clients of a run. They attack in hostile phases that alternate with quiet ones
/// (from the end of the warmup to the start of the cooldown), so the report can compare the
/// honest clients' latency in both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostileScenario {
    /// True when a `[hostile]` table is given (unless it says otherwise).
    pub enabled: bool,
    pub kinds: Vec<HostileKind>,
    /// How long a hostile phase lasts.
    pub active_ms: RangeMs,
    /// How long a quiet phase between two hostile phases lasts.
    pub quiet_ms: RangeMs,
    /// Hostile clients of each kind at once.
    pub clients_per_kind: usize,
    /// A node that keeps a hostile client (or its `/healthz` probe) waiting longer than this,
    /// while no fault holds that node, is a violation. The freeze failover bound by default.
    pub unresponsive_bound_ms: u64,
    /// `jobs.timeout_ms` of the cluster: a poison job must end within the run.
    pub job_timeout_ms: u64,
    /// `sessions.messages_per_second` of the cluster (the honest clients post about 200 a
    /// second each): a flood is closed at four times this rate, so 10 000 would make every
    /// flood cost the node 80 000 frames before it ends.
    pub messages_per_second: u32,
}

impl Default for HostileScenario {
    /// The values a `[hostile]` table starts from: enabled, every kind.
    fn default() -> Self {
        Self {
            enabled: true,
            kinds: HostileKind::ALL.to_vec(),
            active_ms: RangeMs::new(6_000, 9_000),
            quiet_ms: RangeMs::new(4_000, 6_000),
            clients_per_kind: 1,
            unresponsive_bound_ms: 3_000,
            job_timeout_ms: 20_000,
            messages_per_second: 2_000,
        }
    }
}

impl HostileScenario {
    fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.kinds.is_empty() {
            bail!("hostile.kinds: name at least one kind, or set hostile = false");
        }
        if self.active_ms.min == 0 || self.active_ms.min > self.active_ms.max {
            bail!("hostile.active_ms: min must be above 0 and at most max");
        }
        if self.quiet_ms.min > self.quiet_ms.max {
            bail!("hostile.quiet_ms: min is above max");
        }
        if !(1..=HOSTILE_CLIENTS_PER_KIND_MAX).contains(&self.clients_per_kind) {
            bail!("hostile.clients_per_kind: must be 1 to {HOSTILE_CLIENTS_PER_KIND_MAX}");
        }
        if self.unresponsive_bound_ms < 100 {
            bail!("hostile.unresponsive_bound_ms: at least 100");
        }
        if self.job_timeout_ms < 1_000 {
            bail!("hostile.job_timeout_ms: at least 1000");
        }
        if self.messages_per_second == 0 {
            bail!("hostile.messages_per_second: above 0");
        }
        Ok(())
    }
}

/// `hostile = true` / `hostile = false`, or a `[hostile]` table.
fn hostile_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<HostileScenario, D::Error> {
    struct Setting;
    impl<'de> serde::de::Visitor<'de> for Setting {
        type Value = HostileScenario;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("true, false or a [hostile] table")
        }

        fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<HostileScenario, E> {
            Ok(HostileScenario {
                enabled,
                ..HostileScenario::default()
            })
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> Result<HostileScenario, A::Error> {
            HostileScenario::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(Setting)
}

/// A millisecond range `[min, max]` a value is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeMs {
    pub min: u64,
    pub max: u64,
}

impl RangeMs {
    pub const fn new(min: u64, max: u64) -> Self {
        Self { min, max }
    }
}

/// The whole description of a run. The TOML form uses these names; durations are strings
/// (`"60s"`), ranges are `{ min = 3000, max = 8000 }` in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub nodes: usize,
    #[serde(with = "duration_text")]
    pub duration: Duration,
    /// `None`: drawn from the clock at start (and printed).
    pub seed: Option<u64>,
    pub faults: Vec<FaultKind>,
    /// Faults active at once; 1 unless the scenario says otherwise.
    pub concurrent_faults_max: usize,
    pub network: NetworkMode,
    pub jobs: JobsMode,
    /// Quiet time before the first fault (the "before" throughput).
    #[serde(with = "duration_text")]
    pub warmup: Duration,
    /// Quiet time after the last heal (the "after" throughput); no fault starts within it.
    #[serde(with = "duration_text")]
    pub cooldown: Duration,
    /// Time between the end of a fault (all up again) and the next one.
    pub fault_gap_ms: RangeMs,
    /// How long a killed node stays dead before its restart.
    pub kill_downtime_ms: RangeMs,
    /// How long a node stays frozen.
    pub pause_hold_ms: RangeMs,
    /// How long a partition lasts.
    pub partition_hold_ms: RangeMs,
    pub rooms: usize,
    /// Pause between a client's ack and its next post (0: as fast as acks come).
    pub post_interval_ms: u64,
    /// Failover bound for a killed (or gracefully restarted) node, from `DESIGN.md`.
    pub failover_bound_kill_ms: u64,
    /// Failover bound for a frozen or partitioned node, from `DESIGN.md`.
    pub failover_bound_freeze_ms: u64,
    /// Bound on the wait for all nodes up again after the last heal.
    #[serde(with = "duration_text")]
    pub all_up_timeout: Duration,
    /// Bound on the wait for the clients' last posts to be acknowledged.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// The cluster's heartbeat interval and failure timeout (`None`: the node defaults).
    pub heartbeat_interval_ms: Option<u64>,
    pub failure_timeout_ms: Option<u64>,
    /// Every node's memory budget (`limits.memory_bytes_max`); a node whose resident set
    /// exceeds it is a violation.
    pub memory_bytes_max: u64,
    #[serde(deserialize_with = "hostile_setting")]
    pub hostile: HostileScenario,
    /// Mutual TLS between the nodes (a CA and node certificates made for the run), as in
    /// production; `false` runs plaintext cluster traffic.
    pub tls: bool,
    /// The shared store is a real S3 server (moto, started for the run) instead of a local
    /// directory. Nodes then run on loopback (the server listens there), without partitions.
    pub s3: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            nodes: 3,
            duration: Duration::from_secs(60),
            seed: None,
            faults: vec![FaultKind::Kill, FaultKind::Pause],
            concurrent_faults_max: 1,
            network: NetworkMode::Auto,
            jobs: JobsMode::Auto,
            warmup: Duration::from_secs(5),
            cooldown: Duration::from_secs(5),
            fault_gap_ms: RangeMs::new(2_000, 5_000),
            kill_downtime_ms: RangeMs::new(2_000, 5_000),
            pause_hold_ms: RangeMs::new(3_500, 6_000),
            partition_hold_ms: RangeMs::new(3_500, 7_000),
            rooms: 6,
            post_interval_ms: 0,
            failover_bound_kill_ms: 2_000,
            failover_bound_freeze_ms: 3_000,
            all_up_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            heartbeat_interval_ms: None,
            failure_timeout_ms: None,
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            hostile: HostileScenario::off(),
            tls: true,
            s3: false,
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in scenario {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|error| anyhow::anyhow!("{error}"))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks the values together; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=NODES_MAX).contains(&self.nodes) {
            bail!("nodes: must be 1 to {NODES_MAX}, not {}", self.nodes);
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            bail!("duration: must be above 0 and at most {DURATION_MAX:?}");
        }
        if !(1..=ROOMS_MAX).contains(&self.rooms) {
            bail!("rooms: must be 1 to {ROOMS_MAX}, not {}", self.rooms);
        }
        if self.concurrent_faults_max == 0 {
            bail!("concurrent_faults_max: must be at least 1");
        }
        if !self.faults.is_empty() && self.nodes < 2 {
            bail!(
                "faults: a 1-node cluster has no survivor to fail over to; use nodes >= 2 or faults = []"
            );
        }
        if self.concurrent_faults_max >= self.nodes.max(2) {
            bail!(
                "concurrent_faults_max: must leave one node untouched, so below nodes ({})",
                self.nodes
            );
        }
        for (name, range) in [
            ("fault_gap_ms", self.fault_gap_ms),
            ("kill_downtime_ms", self.kill_downtime_ms),
            ("pause_hold_ms", self.pause_hold_ms),
            ("partition_hold_ms", self.partition_hold_ms),
        ] {
            if range.min > range.max {
                bail!("{name}: min {} is above max {}", range.min, range.max);
            }
        }
        // The node refuses less than 64 MiB.
        if self.memory_bytes_max < 64 * 1024 * 1024 {
            bail!("memory_bytes_max: at least 64 MiB (67108864)");
        }
        self.hostile.validate()
    }

    /// The failover bound that applies to a fault of `kind`.
    pub fn failover_bound_ms(&self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::Kill | FaultKind::Restart => self.failover_bound_kill_ms,
            FaultKind::Pause | FaultKind::Partition => self.failover_bound_freeze_ms,
        }
    }
}

/// Durations as text in TOML and JSON (`"60s"`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", duration.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s").expect("60s"), Duration::from_secs(60));
        assert_eq!(
            parse_duration("10m").expect("10m"),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("1500ms").expect("ms"),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2").expect("bare"), Duration::from_secs(2));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn fault_lists_parse_and_reject_unknown_kinds() {
        assert_eq!(
            parse_fault_list("kill,pause,kill").expect("list"),
            [FaultKind::Kill, FaultKind::Pause]
        );
        assert!(parse_fault_list("kill,meteor").is_err());
        assert!(parse_fault_list("").expect("empty").is_empty());
    }

    #[test]
    fn scenario_files_use_defaults_and_reject_unknown_keys() {
        let scenario = Scenario::from_toml("nodes = 5\nduration = \"10m\"\nfaults = [\"kill\", \"partition\"]\nseed = 7\nfault_gap_ms = { min = 1000, max = 2000 }\n").expect("scenario");
        assert_eq!(scenario.nodes, 5);
        assert_eq!(scenario.duration, Duration::from_secs(600));
        assert_eq!(scenario.faults, [FaultKind::Kill, FaultKind::Partition]);
        assert_eq!(scenario.seed, Some(7));
        assert_eq!(scenario.rooms, Scenario::default().rooms);
        let error = Scenario::from_toml("nodes = 3\nnodez = 4\n").expect_err("typo");
        assert!(error.to_string().contains("nodez"), "{error}");
        assert!(Scenario::from_toml("concurrent_faults_max = 3\n").is_err());
        assert!(Scenario::from_toml("fault_gap_ms = { min = 9, max = 1 }\n").is_err());
    }

    #[test]
    fn hostile_clients_are_a_flag_or_a_table() {
        assert!(
            !Scenario::from_toml("nodes = 3\n")
                .expect("plain")
                .hostile
                .enabled
        );
        let flagged = Scenario::from_toml("hostile = true\n").expect("flag");
        assert!(flagged.hostile.enabled);
        assert_eq!(flagged.hostile.kinds, HostileKind::ALL);
        let table = Scenario::from_toml(
            "[hostile]\nkinds = [\"ping_flood\", \"huge_replay\"]\nactive_ms = { min = 1000, max = 2000 }\n",
        )
        .expect("table");
        assert!(table.hostile.enabled);
        assert_eq!(
            table.hostile.kinds,
            [HostileKind::PingFlood, HostileKind::HugeReplay]
        );
        assert_eq!(table.hostile.active_ms, RangeMs::new(1000, 2000));
        let off = Scenario::from_toml("[hostile]\nenabled = false\n").expect("off");
        assert!(!off.hostile.enabled);
        let error = Scenario::from_toml("[hostile]\nkindz = []\n").expect_err("typo");
        assert!(error.to_string().contains("kindz"), "{error}");
        let error = Scenario::from_toml("[hostile]\nkinds = [\"meteor\"]\n").expect_err("kind");
        assert!(error.to_string().contains("meteor"), "{error}");
        assert!(Scenario::from_toml("[hostile]\nkinds = []\n").is_err());
        assert!(Scenario::from_toml("memory_bytes_max = 1024\n").is_err());
    }

    #[test]
    fn the_shipped_scenario_files_are_valid() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut checked = 0;
        for entry in std::fs::read_dir(&directory).expect("chaos/scenarios") {
            let path = entry.expect("entry").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                if let Err(error) = Scenario::from_file(&path) {
                    panic!("{}: {error:#}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 3, "{checked} scenario files");
        let hostile = Scenario::from_file(&directory.join("hostile.toml")).expect("hostile");
        assert!(hostile.hostile.enabled && hostile.hostile.clients_per_kind == 2);
    }
}
