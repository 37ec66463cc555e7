//! The run's report: failover statistics, throughput before/during/after the faults, totals,
//! the nodes' memory and exits, the honest clients' latency by phase, what the hostile clients
//! got, the verdict; written as `report.json` and printed as a short summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::InvariantResult;
use crate::hostile::HostileReport;
use crate::latency::PhaseLatency;
use crate::process_watch::{ExitRecord, MemoryReport};
use crate::records::{ClientLog, FaultRecord, JobRecord};
use crate::scenario::{FaultKind, Scenario};

/// p50/p99/max of one measurement over the faults of one kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Faults that produced a value.
    pub samples: usize,
    /// Faults where it was not observed (e.g. nothing to re-host, not detected before the heal).
    pub missing: usize,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Stats {
    pub fn of(values: &[Option<u64>]) -> Self {
        let mut present: Vec<u64> = values.iter().flatten().copied().collect();
        present.sort_unstable();
        Self {
            samples: present.len(),
            missing: values.len() - present.len(),
            p50_ms: percentile(&present, 50.0),
            p99_ms: percentile(&present, 99.0),
            max_ms: present.last().copied(),
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], percent: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Failover measurements of one kind of fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverStats {
    pub faults: usize,
    pub bound_ms: u64,
    pub detection: Stats,
    pub rehosting: Stats,
    pub first_served: Stats,
    /// From the heal to all up again.
    pub recovery: Stats,
}

pub fn failover_by_kind(
    faults: &[FaultRecord],
    scenario: &Scenario,
) -> BTreeMap<String, FailoverStats> {
    let mut by_kind = BTreeMap::new();
    for kind in FaultKind::ALL {
        let of_kind: Vec<&FaultRecord> = faults.iter().filter(|fault| fault.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let pick = |value: fn(&FaultRecord) -> Option<u64>| {
            Stats::of(&of_kind.iter().map(|fault| value(fault)).collect::<Vec<_>>())
        };
        by_kind.insert(
            kind.to_string(),
            FailoverStats {
                faults: of_kind.len(),
                bound_ms: scenario.failover_bound_ms(kind),
                detection: pick(|fault| fault.detection_ms),
                rehosting: pick(|fault| fault.rehosted_ms),
                first_served: pick(|fault| fault.first_served_ms),
                recovery: pick(|fault| Some(fault.recovered_ms?.saturating_sub(fault.healed_ms?))),
            },
        );
    }
    by_kind
}

/// Acknowledged posts per second in each phase of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Before the first fault.
    pub before_per_s: Option<f64>,
    /// While a fault was active (from its start to all up again).
    pub during_per_s: Option<f64>,
    /// Between two faults (after one recovered, before the next began).
    pub between_per_s: Option<f64>,
    /// After the last fault recovered, until the clients stopped posting.
    pub after_per_s: Option<f64>,
    pub overall_per_s: f64,
}

/// Acks per whole second until `end_ms` (a last partial second is left out: it would look
/// like a drop), from the clients' logs.
pub fn acks_per_second(clients: &[ClientLog], end_ms: u64) -> Vec<u64> {
    let mut buckets = vec![0u64; (end_ms / 1000) as usize];
    for ack in clients
        .iter()
        .flat_map(|client| &client.posts)
        .filter_map(|post| post.ack.as_ref())
    {
        let bucket = (ack.at_ms / 1000) as usize;
        if bucket < buckets.len() {
            buckets[bucket] += 1;
        }
    }
    buckets
}

pub fn throughput(
    clients: &[ClientLog],
    faults: &[FaultRecord],
    posting_end_ms: u64,
) -> Throughput {
    let acks: Vec<u64> = clients
        .iter()
        .flat_map(|client| &client.posts)
        .filter_map(|post| post.ack.as_ref())
        .map(|ack| ack.at_ms)
        .filter(|at| *at <= posting_end_ms)
        .collect();
    let intervals: Vec<(u64, u64)> = faults
        .iter()
        .map(|fault| {
            (
                fault.started_ms,
                fault
                    .recovered_ms
                    .or(fault.healed_ms)
                    .unwrap_or(posting_end_ms)
                    .min(posting_end_ms),
            )
        })
        .collect();
    let rate = |count: usize, span_ms: u64| {
        (span_ms >= 500).then(|| count as f64 * 1000.0 / span_ms as f64)
    };
    let overall = rate(acks.len(), posting_end_ms).unwrap_or(0.0);
    let Some(first_start) = intervals.iter().map(|(start, _)| *start).min() else {
        return Throughput {
            before_per_s: Some(overall),
            during_per_s: None,
            between_per_s: None,
            after_per_s: None,
            overall_per_s: overall,
        };
    };
    let last_end = intervals
        .iter()
        .map(|(_, end)| *end)
        .max()
        .unwrap_or(first_start);
    let in_fault = |at: u64| {
        intervals
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&at))
    };
    let during_ms: u64 = merged_length(&intervals);
    let before = acks.iter().filter(|at| **at < first_start).count();
    let during = acks.iter().filter(|at| in_fault(**at)).count();
    let after = acks.iter().filter(|at| **at > last_end).count();
    let between_ms = last_end
        .saturating_sub(first_start)
        .saturating_sub(during_ms);
    Throughput {
        before_per_s: rate(before, first_start),
        during_per_s: rate(during, during_ms),
        between_per_s: rate(acks.len() - before - during - after, between_ms),
        after_per_s: rate(after, posting_end_ms.saturating_sub(last_end)),
        overall_per_s: overall,
    }
}

/// Total length of the union of intervals.
fn merged_length(intervals: &[(u64, u64)]) -> u64 {
    let mut sorted = intervals.to_vec();
    sorted.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in sorted {
        current = match current {
            Some((current_start, current_end)) if start <= current_end => {
                Some((current_start, current_end.max(end)))
            }
            Some((current_start, current_end)) => {
                total += current_end - current_start;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0, |(start, end)| end - start)
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub clients: usize,
    pub rooms: usize,
    pub posts: u64,
    pub acked: u64,
    /// Posts still unacknowledged when the clients stopped (allowed: never acknowledged, so
    /// they may or may not be stored, but at most once).
    pub unacked_at_end: u64,
    pub retries: u64,
    pub connections: u64,
    pub deliveries: u64,
    pub messages_stored: u64,
    pub client_errors: BTreeMap<String, u64>,
}

pub fn totals(clients: &[ClientLog], rooms: usize, messages_stored: u64) -> Totals {
    let mut totals = Totals {
        clients: clients.len(),
        rooms,
        messages_stored,
        ..Totals::default()
    };
    for client in clients {
        totals.posts += client.posts.len() as u64;
        totals.acked += client
            .posts
            .iter()
            .filter(|post| post.ack.is_some())
            .count() as u64;
        totals.retries += client
            .posts
            .iter()
            .map(|post| u64::from(post.attempts.saturating_sub(1)))
            .sum::<u64>();
        totals.connections += client.connections.len() as u64;
        totals.deliveries += client.deliveries.len() as u64;
        for (code, count) in &client.errors {
            *totals.client_errors.entry(code.clone()).or_default() += count;
        }
    }
    totals.unacked_at_end = totals.posts - totals.acked;
    totals
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobsSummary {
    pub enabled: bool,
    /// Why the jobs workload was off (or stopped).
    pub reason: Option<String>,
    pub accepted: usize,
    pub done: usize,
    pub failed: usize,
    pub unfinished: usize,
}

pub fn jobs_summary(enabled: bool, reason: Option<String>, jobs: &[JobRecord]) -> JobsSummary {
    let count = |state: &str| {
        jobs.iter()
            .filter(|job| job.final_state.as_deref() == Some(state))
            .count()
    };
    JobsSummary {
        enabled,
        reason,
        accepted: jobs.len(),
        done: count("done"),
        failed: count("failed"),
        unfinished: jobs.len() - count("done") - count("failed"),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CounterTotal {
    pub total: u64,
    pub per_node: BTreeMap<String, u64>,
    /// The part seen while no fault was active (plus one scrape interval after each).
    pub outside_faults: u64,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub verdict: String,
    pub replay: String,
    pub scenario: Scenario,
    pub network: String,
    pub notes: Vec<String>,
    pub started_unix_ms: u64,
    pub workload_ms: u64,
    pub out_dir: String,
    pub cluster_dir: String,
    pub timeline_png: Option<String>,
    pub first_violation: Option<String>,
    pub invariants: Vec<InvariantResult>,
    pub failover: BTreeMap<String, FailoverStats>,
    pub throughput: Throughput,
    pub totals: Totals,
    /// Stale owners' appends rejected (`actorhub_journal_conflicts_total`, summed over every
    /// node process of the run).
    pub stale_owner_rejections: CounterTotal,
    /// Retried asks answered from the journal (`actorhub_entity_duplicates_total`).
    pub retries_answered_from_journal: CounterTotal,
    pub jobs: JobsSummary,
    /// Honest post → ack latency in hostile and quiet phases.
    pub latency: PhaseLatency,
    /// Every node's peak resident set against its budget.
    pub memory: MemoryReport,
    /// Every node process that ended, and whether a fault ended it.
    pub exits: Vec<ExitRecord>,
    pub hostile: HostileReport,
    pub faults: Vec<FaultRecord>,
    pub acks_per_second: Vec<u64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|invariant| invariant.passed)
    }

    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "chaos: seed {} ({} nodes, {}, {} s of workload): {}",
            self.seed,
            self.scenario.nodes,
            self.network,
            self.workload_ms / 1000,
            self.verdict.to_uppercase()
        );
        let _ = writeln!(text, "invariants:");
        for invariant in &self.invariants {
            let status = if invariant.skipped {
                "skip"
            } else if invariant.passed {
                "pass"
            } else {
                "FAIL"
            };
            let _ = write!(
                text,
                "  {status}  {:<24} checked {}",
                invariant.name, invariant.checked
            );
            if invariant.violations > 0 {
                let _ = write!(text, ", {} violations", invariant.violations);
            }
            if let Some(example) = &invariant.first_counterexample {
                let _ = write!(text, "\n        first: {example}");
            }
            if let Some(note) = &invariant.note {
                let _ = write!(text, "\n        note: {note}");
            }
            text.push('\n');
        }
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for fault in &self.faults {
            *kinds.entry(fault.kind.to_string()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let _ = writeln!(text, "faults: {} ({})", self.faults.len(), kinds.join(", "));
        if !self.failover.is_empty() {
            let _ = writeln!(
                text,
                "failover ms (p50/p99/max; missing)    detection         re-hosting        first served      recovery   bound"
            );
            for (kind, stats) in &self.failover {
                let cell = |stats: &Stats| {
                    let value = |value: Option<u64>| {
                        value.map_or("-".to_string(), |value| value.to_string())
                    };
                    format!(
                        "{}/{}/{}{}",
                        value(stats.p50_ms),
                        value(stats.p99_ms),
                        value(stats.max_ms),
                        if stats.missing > 0 {
                            format!("; {}", stats.missing)
                        } else {
                            String::new()
                        }
                    )
                };
                let _ = writeln!(
                    text,
                    "  {kind:<10} x{:<3}                      {:<17} {:<17} {:<17} {:<10} {}",
                    stats.faults,
                    cell(&stats.detection),
                    cell(&stats.rehosting),
                    cell(&stats.first_served),
                    cell(&stats.recovery),
                    stats.bound_ms
                );
            }
        }
        let rate = |rate: Option<f64>| rate.map_or("-".to_string(), |rate| format!("{rate:.0}"));
        let _ = writeln!(
            text,
            "throughput acks/s: before faults {}, during faults {}, between faults {}, after faults {}, overall {:.0}",
            rate(self.throughput.before_per_s),
            rate(self.throughput.during_per_s),
            rate(self.throughput.between_per_s),
            rate(self.throughput.after_per_s),
            self.throughput.overall_per_s
        );
        let _ = writeln!(
            text,
            "messages: {} acked of {} posted by {} clients in {} rooms ({} retries, {} connections, {} deliveries, {} stored)",
            self.totals.acked,
            self.totals.posts,
            self.totals.clients,
            self.totals.rooms,
            self.totals.retries,
            self.totals.connections,
            self.totals.deliveries,
            self.totals.messages_stored
        );
        let mut during_by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for fault in &self.faults {
            *during_by_kind.entry(fault.kind.to_string()).or_default() += fault.journal_conflicts;
        }
        let _ = writeln!(
            text,
            "stale-owner appends rejected: {} (per node {:?}; during faults, by kind {:?}; outside faults {}); retries answered from the journal: {}",
            self.stale_owner_rejections.total,
            self.stale_owner_rejections.per_node,
            during_by_kind,
            self.stale_owner_rejections.outside_faults,
            self.retries_answered_from_journal.total
        );
        if self.jobs.enabled {
            let _ = writeln!(
                text,
                "jobs: {} accepted, {} done, {} failed, {} unfinished",
                self.jobs.accepted, self.jobs.done, self.jobs.failed, self.jobs.unfinished
            );
        } else {
            let _ = writeln!(
                text,
                "jobs: disabled ({})",
                self.jobs.reason.as_deref().unwrap_or("off")
            );
        }
        self.summarize_nodes(&mut text);
        self.summarize_hostile(&mut text);
        for note in self.notes.iter().chain(&self.hostile.notes) {
            let _ = writeln!(text, "note: {note}");
        }
        if let Some(violation) = &self.first_violation {
            let _ = writeln!(text, "first violation: {violation}");
        }
        let _ = writeln!(text, "report: {}/report.json", self.out_dir);
        if let Some(png) = &self.timeline_png {
            let _ = writeln!(text, "timeline: {png}");
        }
        let _ = writeln!(text, "node logs: {}", self.cluster_dir);
        let _ = writeln!(text, "replay: {}", self.replay);
        text
    }
}

impl Report {
    /// Memory and exits of the nodes, and the honest latency by phase.
    fn summarize_nodes(&self, text: &mut String) {
        let mib = |bytes: u64| bytes / (1024 * 1024);
        let peaks: Vec<String> = self
            .memory
            .per_node
            .iter()
            .map(|(node, memory)| {
                let phase =
                    |peak: Option<u64>| peak.map_or("-".to_string(), |peak| mib(peak).to_string());
                format!(
                    "{node} {} (hostile {}, quiet {})",
                    mib(memory.peak_bytes),
                    phase(memory.peak_hostile_bytes),
                    phase(memory.peak_quiet_bytes)
                )
            })
            .collect();
        let _ = writeln!(
            text,
            "peak RSS MiB: {}; budget {} MiB per node",
            peaks.join(", "),
            mib(self.memory.budget_bytes)
        );
        let by_fault = self.exits.iter().filter(|exit| exit.by_fault).count();
        let _ = writeln!(
            text,
            "node processes ended: {} ({by_fault} by injected faults)",
            self.exits.len()
        );
        let latency = &self.latency;
        if self.hostile.enabled {
            let _ = writeln!(
                text,
                "honest post→ack ms (p50/p99/max), outside faults: quiet {}, hostile {}; with faults: quiet {}, hostile {}",
                latency.quiet_outside_faults.describe(),
                latency.hostile_outside_faults.describe(),
                latency.quiet.describe(),
                latency.hostile.describe()
            );
        } else {
            let _ = writeln!(
                text,
                "honest post→ack ms (p50/p99/max): outside faults {}, with faults {}",
                latency.quiet_outside_faults.describe(),
                latency.quiet.describe()
            );
        }
    }

    /// What each kind of hostile client did and got back.
    fn summarize_hostile(&self, text: &mut String) {
        if !self.hostile.enabled {
            return;
        }
        let _ = writeln!(
            text,
            "hostile clients: {} phases, {} s in all",
            self.hostile.phases.len(),
            self.hostile.hostile_ms / 1000
        );
        for (kind, summary) in &self.hostile.kinds {
            let mut got: Vec<(&String, &u64)> = summary.got.iter().collect();
            got.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let got: Vec<String> = got
                .iter()
                .map(|(label, count)| format!("{label} x{count}"))
                .collect();
            let _ = writeln!(
                text,
                "  {kind:<14} {} actions: {} expected, {} tolerated, {} unexpected ({} more during faults), {} unresponsive; slowest /healthz {}",
                summary.actions,
                summary.expected,
                summary.tolerated,
                summary.unexpected,
                summary.unexpected_during_faults,
                summary.unresponsive,
                summary
                    .slowest_probe_ms
                    .map_or("-".to_string(), |slowest| format!("{slowest} ms"))
            );
            let _ = writeln!(text, "                 got: {}", got.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let stats = Stats::of(&[Some(3), None, Some(1), Some(2)]);
        assert_eq!(
            (stats.samples, stats.missing, stats.p50_ms, stats.max_ms),
            (3, 1, Some(2), Some(3))
        );
    }

    #[test]
    fn overlapping_fault_intervals_are_counted_once() {
        assert_eq!(merged_length(&[(0, 10), (5, 20), (30, 40)]), 30);
        assert_eq!(merged_length(&[]), 0);
    }
}
