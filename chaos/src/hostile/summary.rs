//! After the run: every hostile action set against the faults as they happened, tallied per
//! kind (what each got back), and judged by the two hostile invariants:
//! - `hostile_answers_expected`: every action got an expected or tolerated answer, unless a
//!   fault that could explain it overlapped the action: a kill, freeze or restart of its target
//!   for the local attacks (floods, bad frames, cluster ports: nothing else is involved), any
//!   fault for uploads and replays (they involve a job's or room's owner elsewhere);
//! - `hostile_nodes_responsive`: no target kept a `/healthz` probe waiting longer than the
//!   bound, unless a kill, freeze or restart of that target overlapped the action (a partition
//!   does not cut the clients off, so it excuses nothing).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ActionRecord, Judgement, Phase};
use crate::checker::{CounterExample, InvariantResult};
use crate::records::FaultRecord;
use crate::scenario::{FaultKind, HostileKind};

/// After a fault recovered, its effects (a reconnecting client, a revived job) may last this
/// long.
const FAULT_AFTERMATH_MS: u64 = 2_000;

/// What one kind of hostile client did and got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindSummary {
    pub actions: u64,
    pub expected: u64,
    pub tolerated: u64,
    /// Unexpected answers no fault explains: violations.
    pub unexpected: u64,
    /// Unexpected answers while a fault that could explain them was active.
    pub unexpected_during_faults: u64,
    pub skipped: u64,
    /// Probes the target kept waiting beyond the bound with no fault holding it: violations.
    pub unresponsive: u64,
    /// The slowest `/healthz` answer of a target during this kind's actions.
    pub slowest_probe_ms: Option<u64>,
    /// What came back, by label, with counts.
    pub got: BTreeMap<String, u64>,
    pub first_unexpected: Option<String>,
}

/// The hostile part of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostileReport {
    pub enabled: bool,
    pub phases: Vec<Phase>,
    /// Time spent in hostile phases.
    pub hostile_ms: u64,
    pub kinds: BTreeMap<String, KindSummary>,
    pub notes: Vec<String>,
}

/// Whether an unexpected answer of `kind` may come from a fault of `fault`'s kind and targets.
fn explains(kind: HostileKind, target: &str, fault: &FaultRecord) -> bool {
    match kind {
        HostileKind::PoisonUpload | HostileKind::HugeReplay => true,
        _ => holds(target, fault),
    }
}

/// Whether `fault` stops `target` from answering its clients.
fn holds(target: &str, fault: &FaultRecord) -> bool {
    fault.kind != FaultKind::Partition && fault.targets.iter().any(|node| node == target)
}

/// Marks the actions that overlapped faults, then tallies them by kind.
pub fn report(
    enabled: bool,
    phases: Vec<Phase>,
    actions: &mut [ActionRecord],
    faults: &[FaultRecord],
    run_end_ms: u64,
    notes: Vec<String>,
) -> HostileReport {
    for action in actions.iter_mut() {
        let overlapping: Vec<&FaultRecord> = faults
            .iter()
            .filter(|fault| {
                let end = fault.recovered_ms.or(fault.healed_ms).unwrap_or(run_end_ms)
                    + FAULT_AFTERMATH_MS;
                fault.started_ms <= action.ended_ms && action.started_ms <= end
            })
            .collect();
        action.during_fault = !overlapping.is_empty();
        action.excused_by_fault = overlapping
            .iter()
            .any(|fault| explains(action.kind, &action.target, fault));
        action.probe_excused_by_fault =
            overlapping.iter().any(|fault| holds(&action.target, fault));
    }
    let mut kinds: BTreeMap<String, KindSummary> = BTreeMap::new();
    for action in actions.iter() {
        let summary = kinds.entry(action.kind.to_string()).or_default();
        summary.actions += 1;
        *summary.got.entry(action.got.clone()).or_default() += 1;
        match action.judgement {
            Judgement::Expected => summary.expected += 1,
            Judgement::Tolerated => summary.tolerated += 1,
            Judgement::Skipped => summary.skipped += 1,
            Judgement::Unexpected if action.excused_by_fault => {
                summary.unexpected_during_faults += 1;
            }
            Judgement::Unexpected => {
                summary.unexpected += 1;
                summary
                    .first_unexpected
                    .get_or_insert_with(|| describe(action));
            }
        }
        if action.unresponsive.is_some() && !action.probe_excused_by_fault {
            summary.unresponsive += 1;
        }
        if let Some(slowest) = action.slowest_probe_ms {
            summary.slowest_probe_ms = Some(summary.slowest_probe_ms.unwrap_or(0).max(slowest));
        }
    }
    HostileReport {
        enabled,
        hostile_ms: phases
            .iter()
            .map(|phase| phase.end_ms - phase.start_ms)
            .sum(),
        phases,
        kinds,
        notes,
    }
}

fn describe(action: &ActionRecord) -> String {
    format!(
        "{} #{} ({}) on {} at {} ms: got {}{}",
        action.kind,
        action.index,
        action.what,
        action.target,
        action.started_ms,
        action.got,
        if action.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", action.detail)
        }
    )
}

/// `hostile_answers_expected`.
pub fn answers_result(enabled: bool, actions: &[ActionRecord]) -> InvariantResult {
    if !enabled {
        return InvariantResult::skipped(
            "hostile_answers_expected",
            "no hostile clients (--hostile)",
        );
    }
    let judged: Vec<&ActionRecord> = actions
        .iter()
        .filter(|action| action.judgement != Judgement::Skipped)
        .collect();
    let findings = judged
        .iter()
        .filter(|action| action.judgement == Judgement::Unexpected && !action.excused_by_fault)
        .map(|action| CounterExample::new(describe(action)))
        .collect();
    let excused = judged
        .iter()
        .filter(|action| action.judgement == Judgement::Unexpected && action.excused_by_fault)
        .count();
    let result =
        InvariantResult::from_findings("hostile_answers_expected", judged.len() as u64, findings);
    if excused > 0 {
        result.with_note(format!(
            "{excused} unexpected answers came while a fault that explains them was active"
        ))
    } else {
        result
    }
}

/// `hostile_nodes_responsive`.
pub fn responsive_result(enabled: bool, actions: &[ActionRecord]) -> InvariantResult {
    if !enabled {
        return InvariantResult::skipped(
            "hostile_nodes_responsive",
            "no hostile clients (--hostile)",
        );
    }
    let probed: Vec<&ActionRecord> = actions
        .iter()
        .filter(|action| action.judgement != Judgement::Skipped)
        .collect();
    let findings = probed
        .iter()
        .filter(|action| !action.probe_excused_by_fault)
        .filter_map(|action| {
            action.unresponsive.as_ref().map(|unresponsive| {
                CounterExample::new(format!(
                    "during {} #{} ({}) at {} ms: {unresponsive}",
                    action.kind, action.index, action.what, action.started_ms
                ))
            })
        })
        .collect();
    let slowest = probed
        .iter()
        .filter_map(|action| action.slowest_probe_ms)
        .max();
    InvariantResult::from_findings("hostile_nodes_responsive", probed.len() as u64, findings)
        .with_note(format!(
            "slowest /healthz answer of an attacked node: {}",
            slowest.map_or("-".to_string(), |slowest| format!("{slowest} ms"))
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: HostileKind, judgement: Judgement, at: u64) -> ActionRecord {
        ActionRecord {
            kind,
            client: 0,
            index: 0,
            phase: 0,
            what: "what".into(),
            target: "n2".into(),
            started_ms: at,
            ended_ms: at + 100,
            got: "got".into(),
            detail: String::new(),
            judgement,
            slowest_probe_ms: Some(5),
            unresponsive: None,
            during_fault: false,
            excused_by_fault: false,
            probe_excused_by_fault: false,
        }
    }

    fn fault(kind: FaultKind, target: &str) -> FaultRecord {
        FaultRecord {
            index: 0,
            lane: 0,
            kind,
            shape: None,
            targets: vec![target.into()],
            survivors: Vec::new(),
            victim_rooms: Vec::new(),
            started_ms: 1_000,
            healed_ms: Some(2_000),
            recovered_ms: Some(2_500),
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes: Vec::new(),
        }
    }

    #[test]
    fn only_faults_that_explain_an_answer_excuse_it() {
        let mut actions = vec![
            action(HostileKind::PingFlood, Judgement::Expected, 0),
            // Its target frozen meanwhile: excused.
            action(HostileKind::PingFlood, Judgement::Unexpected, 1_500),
            // Another node frozen: a local attack is not excused.
            action(HostileKind::BadFrames, Judgement::Unexpected, 1_600),
            // Any fault may explain a replay.
            action(HostileKind::HugeReplay, Judgement::Unexpected, 4_000),
            // After the aftermath: a violation.
            action(HostileKind::HugeReplay, Judgement::Unexpected, 9_000),
        ];
        actions[2].target = "n3".into();
        let faults = [fault(FaultKind::Pause, "n2"), {
            let mut partition = fault(FaultKind::Partition, "n1");
            partition.started_ms = 3_900;
            partition.recovered_ms = Some(4_200);
            partition
        }];
        let report = report(true, Vec::new(), &mut actions, &faults, 10_000, Vec::new());
        assert_eq!(report.kinds["ping_flood"].unexpected, 0);
        assert_eq!(report.kinds["ping_flood"].unexpected_during_faults, 1);
        assert_eq!(report.kinds["bad_frames"].unexpected, 1);
        assert_eq!(report.kinds["huge_replay"].unexpected, 1);
        assert_eq!(report.kinds["huge_replay"].unexpected_during_faults, 1);
        let result = answers_result(true, &actions);
        assert_eq!((result.passed, result.violations), (false, 2));
        assert!(answers_result(false, &actions).skipped);
    }

    #[test]
    fn a_slow_probe_is_excused_only_by_a_fault_holding_its_target() {
        let mut actions = vec![
            action(HostileKind::ClusterPort, Judgement::Expected, 1_200),
            action(HostileKind::ClusterPort, Judgement::Expected, 1_200),
        ];
        for action in &mut actions {
            action.unresponsive = Some("n2 did not answer /healthz within 3s".into());
        }
        let faults = [fault(FaultKind::Kill, "n2")];
        report(
            true,
            Vec::new(),
            &mut actions[..1],
            &faults,
            10_000,
            Vec::new(),
        );
        let partition = [fault(FaultKind::Partition, "n2")];
        report(
            true,
            Vec::new(),
            &mut actions[1..],
            &partition,
            10_000,
            Vec::new(),
        );
        let result = responsive_result(true, &actions);
        assert_eq!((result.passed, result.violations), (false, 1));
    }
}
