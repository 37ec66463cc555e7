//! What a chaos run does: the scenario (nodes, duration, seed, fault kinds, timings, workload
//! size, bounds), from command-line flags or from a TOML file with the same names.
//!
//! Every field has a default, so a scenario file only names what it changes, and unknown keys
//! are rejected with the key's name (a typo must not silently run a different scenario).

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
        Ok(())
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
}
