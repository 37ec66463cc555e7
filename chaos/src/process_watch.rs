//! The nodes as processes, watched for the whole run: each node's resident set (`VmRSS` of
//! `/proc/<pid>/status`, every [`SAMPLE_INTERVAL`]) against its memory budget
//! (`limits.memory_bytes_max`), and every node process that ended, with whether the harness
//! ended it (an injected kill or graceful restart) or it ended by itself.
//!
//! Two invariants come from here: `rss_within_budget` (no sample above the budget) and
//! `no_unexpected_exit` (no node process ended unless a fault ended it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::checker::{CounterExample, InvariantResult};
use crate::cluster::{ProcessState, TestCluster};
use crate::workload::Clock;

/// Time between two samples of every node's resident set.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Samples above the budget kept for the report (the count is exact).
const OVER_BUDGET_KEPT_MAX: usize = 20;

/// One reading of one node process's resident set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RssSample {
    pub node: String,
    pub pid: u32,
    pub bytes: u64,
    pub at_ms: u64,
}

/// What one node held, over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeMemory {
    pub peak_bytes: u64,
    pub peak_at_ms: u64,
    pub peak_pid: u32,
    /// The highest sample taken during a hostile phase, and outside one.
    pub peak_hostile_bytes: Option<u64>,
    pub peak_quiet_bytes: Option<u64>,
    pub samples: u64,
    /// Every process of the node sampled (a restart is a new pid).
    pub pids: Vec<u32>,
}

/// The memory part of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub budget_bytes: u64,
    pub sample_interval_ms: u64,
    pub per_node: BTreeMap<String, NodeMemory>,
    pub samples_over_budget: u64,
    pub over_budget: Vec<RssSample>,
}

/// Samples the nodes' resident sets; shared between its task and the end of the run.
#[derive(Debug)]
pub struct NodeWatch {
    clock: Clock,
    /// `(start_ms, end_ms)` of each hostile phase.
    hostile_phases: Vec<(u64, u64)>,
    memory: Mutex<MemoryReport>,
}

impl NodeWatch {
    pub fn new(clock: Clock, budget_bytes: u64, hostile_phases: Vec<(u64, u64)>) -> Self {
        Self {
            clock,
            hostile_phases,
            memory: Mutex::new(MemoryReport {
                budget_bytes,
                sample_interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
                ..MemoryReport::default()
            }),
        }
    }

    /// Reads every running node's resident set once (paused nodes too: their memory stays).
    pub fn sample(&self, cluster: &TestCluster) {
        let at_ms = self.clock.now_ms();
        let hostile = self
            .hostile_phases
            .iter()
            .any(|(start, end)| (*start..*end).contains(&at_ms));
        for node in cluster.node_ids() {
            let ProcessState::Running { pid, .. } = cluster.process_state(&node) else {
                continue;
            };
            // The process may have ended since: then there is nothing to read.
            let Some(bytes) = rss_bytes(pid) else {
                continue;
            };
            self.record(
                RssSample {
                    node,
                    pid,
                    bytes,
                    at_ms,
                },
                hostile,
            );
        }
    }

    fn record(&self, sample: RssSample, hostile: bool) {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if sample.bytes > memory.budget_bytes {
            memory.samples_over_budget += 1;
            if memory.over_budget.len() < OVER_BUDGET_KEPT_MAX {
                memory.over_budget.push(sample.clone());
            }
        }
        let node = memory.per_node.entry(sample.node.clone()).or_default();
        node.samples += 1;
        if !node.pids.contains(&sample.pid) {
            node.pids.push(sample.pid);
        }
        if sample.bytes > node.peak_bytes {
            node.peak_bytes = sample.bytes;
            node.peak_at_ms = sample.at_ms;
            node.peak_pid = sample.pid;
        }
        let phase_peak = if hostile {
            &mut node.peak_hostile_bytes
        } else {
            &mut node.peak_quiet_bytes
        };
        *phase_peak = Some(phase_peak.unwrap_or(0).max(sample.bytes));
    }

    /// Samples until `stop` becomes true.
    pub async fn run(self: Arc<Self>, cluster: Arc<TestCluster>, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.sample(&cluster);
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    pub fn report(&self) -> MemoryReport {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `rss_within_budget`: no sample of any node above its budget.
pub fn rss_result(memory: &MemoryReport) -> InvariantResult {
    let samples: u64 = memory.per_node.values().map(|node| node.samples).sum();
    let mib = |bytes: u64| bytes / (1024 * 1024);
    let findings = memory
        .over_budget
        .iter()
        .map(|sample| {
            CounterExample::new(format!(
                "{} (pid {}) held {} MiB at {} ms, above its budget of {} MiB",
                sample.node,
                sample.pid,
                mib(sample.bytes),
                sample.at_ms,
                mib(memory.budget_bytes)
            ))
        })
        .collect();
    let mut result = InvariantResult::from_findings("rss_within_budget", samples, findings);
    // Only the first few samples over the budget are kept: the count is the real one.
    result.violations = memory.samples_over_budget;
    let peaks: Vec<String> = memory
        .per_node
        .iter()
        .map(|(node, memory)| format!("{node} {} MiB", mib(memory.peak_bytes)))
        .collect();
    result.with_note(format!(
        "peak RSS {} (budget {} MiB)",
        peaks.join(", "),
        mib(memory.budget_bytes)
    ))
}

/// One node process that ended during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitRecord {
    pub node: String,
    pub pid: u32,
    /// As the OS reported it, e.g. `signal: 9 (SIGKILL)` or `exit status: 101`.
    pub status: String,
    /// Ended by an injected fault (kill or graceful restart).
    pub by_fault: bool,
    /// When the harness reaped it (a process that died by itself is noticed within a sample).
    pub at_ms: u64,
}

/// Every node process that ended so far, in time order.
pub fn exits(cluster: &TestCluster, clock: Clock) -> Vec<ExitRecord> {
    let mut records: Vec<ExitRecord> = cluster
        .node_ids()
        .into_iter()
        .flat_map(|node| {
            cluster
                .exits(&node)
                .into_iter()
                .map(move |exit| ExitRecord {
                    node: node.clone(),
                    pid: exit.pid,
                    status: exit.status.to_string(),
                    by_fault: exit.requested,
                    at_ms: clock.ms_of(exit.reaped_at),
                })
        })
        .collect();
    records.sort_by_key(|record| record.at_ms);
    records
}

/// `no_unexpected_exit`: every node process that ended was ended by an injected fault.
pub fn exits_result(exits: &[ExitRecord]) -> InvariantResult {
    let findings = exits
        .iter()
        .filter(|exit| !exit.by_fault)
        .map(|exit| {
            CounterExample::new(format!(
                "{} (pid {}) ended by itself ({}) at {} ms; its log says why",
                exit.node, exit.pid, exit.status, exit.at_ms
            ))
        })
        .collect();
    let by_fault = exits.iter().filter(|exit| exit.by_fault).count();
    InvariantResult::from_findings("no_unexpected_exit", exits.len() as u64, findings).with_note(
        format!("{by_fault} node processes ended by injected faults"),
    )
}

/// The resident set of `pid` in bytes, or `None` if it cannot be read (the process is gone).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tnode\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
        let own = rss_bytes(std::process::id()).expect("this process has a resident set");
        assert!(own > 1024 * 1024, "{own}");
    }

    #[test]
    fn samples_above_the_budget_are_violations_with_peaks_by_phase() {
        let watch = NodeWatch::new(Clock::start(), 1000, vec![(100, 200)]);
        let sample = |node: &str, bytes, at_ms| RssSample {
            node: node.into(),
            pid: 7,
            bytes,
            at_ms,
        };
        watch.record(sample("n1", 600, 50), false);
        watch.record(sample("n1", 900, 150), true);
        watch.record(sample("n2", 400, 150), true);
        let report = watch.report();
        let n1 = &report.per_node["n1"];
        assert_eq!(
            (n1.peak_bytes, n1.peak_hostile_bytes, n1.peak_quiet_bytes),
            (900, Some(900), Some(600))
        );
        assert!(rss_result(&report).passed);
        watch.record(sample("n2", 1500, 300), false);
        let result = rss_result(&watch.report());
        assert!(!result.passed);
        assert_eq!(result.violations, 1);
        assert!(
            result
                .first_counterexample
                .expect("example")
                .detail
                .starts_with("n2 (pid 7)")
        );
    }

    #[test]
    fn only_exits_the_harness_did_not_ask_for_are_violations() {
        let exit = |by_fault| ExitRecord {
            node: "n2".into(),
            pid: 9,
            status: "signal: 6 (SIGABRT)".into(),
            by_fault,
            at_ms: 10,
        };
        assert!(exits_result(&[exit(true)]).passed);
        let result = exits_result(&[exit(true), exit(false)]);
        assert!(!result.passed);
        assert!(
            result
                .first_counterexample
                .expect("example")
                .detail
                .contains("SIGABRT")
        );
    }
}
