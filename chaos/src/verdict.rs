//! The cluster-level invariants, judged from the faults as they happened: the cluster came
//! back all up after every heal, every fault's rooms served again within the bound that
//! `shared/DESIGN.md` sets for its kind, and no node saw a member go down except during a fault
//! (a link dropped by an oversized message, a stalled node, would show there).

use crate::checker::{CounterExample, InvariantResult};
use crate::records::FaultRecord;
use crate::scenario::Scenario;

/// Every fault recovered (all up) within the bound, and the cluster was all up at the end.
pub fn all_up_result(
    faults: &[FaultRecord],
    final_all_up: &anyhow::Result<()>,
    scenario: &Scenario,
) -> InvariantResult {
    let mut findings = Vec::new();
    for fault in faults {
        if fault.recovered_ms.is_none() {
            findings.push(CounterExample::new(format!(
                "fault {} ({} {}) at {} ms: not all up within {:?} of its heal: {}",
                fault.index,
                fault.kind,
                fault.targets.join("+"),
                fault.started_ms,
                scenario.all_up_timeout,
                fault.notes.join("; ")
            )));
        }
    }
    if let Err(error) = final_all_up {
        findings.push(CounterExample::new(format!(
            "not all up within {:?} after the final heal: {error:#}",
            scenario.all_up_timeout
        )));
    }
    InvariantResult::from_findings(
        "cluster_all_up_after_heal",
        faults.len() as u64 + 1,
        findings,
    )
}

/// How long after a fault's recovery a member-down transition still belongs to it: the
/// scraper sees a counter up to one interval late, and a restarted node is scraped first once it
/// is live.
const MEMBER_DOWN_AFTERMATH_MS: u64 = 3 * crate::scrape::SCRAPE_INTERVAL.as_millis() as u64;

/// No member-down transition outside a fault: `increases` are `(ms, observer, count)` of
/// `actorhub_membership_transitions_total{state="down"}` as scraped.
pub fn member_downs_result(
    increases: &[(u64, String, u64)],
    faults: &[FaultRecord],
    run_end_ms: u64,
) -> InvariantResult {
    let in_fault = |at: u64| {
        faults.iter().any(|fault| {
            let end = fault.recovered_ms.or(fault.healed_ms).unwrap_or(run_end_ms)
                + MEMBER_DOWN_AFTERMATH_MS;
            (fault.started_ms..=end).contains(&at)
        })
    };
    let findings = increases
        .iter()
        .filter(|(at, _, _)| !in_fault(*at))
        .map(|(at, observer, count)| {
            CounterExample::new(format!(
                "{observer} saw {count} member(s) go down (scraped at {at} ms) with no fault active"
            ))
        })
        .collect();
    let total: u64 = increases.iter().map(|(_, _, count)| count).sum();
    InvariantResult::from_findings("no_member_down_outside_faults", total, findings)
        .with_note("checked: member-down transitions seen by any node during the run")
}

/// Each fault's rooms served again (first ack) within the bound of its kind.
pub fn failover_result(faults: &[FaultRecord], scenario: &Scenario) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    let mut without_rooms = 0;
    let mut by_probe = 0;
    for fault in faults {
        if fault.victim_rooms.is_empty() {
            without_rooms += 1;
            continue;
        }
        checked += 1;
        let bound = scenario.failover_bound_ms(fault.kind);
        let describe =
            |value: Option<u64>| value.map_or("never".to_string(), |value| format!("{value} ms"));
        // Served again: the first ack to a client already on a survivor; when no such client
        // posted in the fault's rooms, the re-hosting probe's first answer.
        let served = fault.first_served_ms.or(fault.rehosted_ms);
        if fault.first_served_ms.is_none() {
            by_probe += 1;
        }
        let over = served.is_none_or(|served| served > bound);
        if over {
            findings.push(CounterExample {
                room: fault.victim_rooms.first().cloned(),
                ..CounterExample::new(format!(
                    "fault {} ({} {}) at {} ms: its rooms served again after {} (bound {bound} ms); first ack {}, detection {}, re-hosting {}",
                    fault.index,
                    fault.kind,
                    fault.targets.join("+"),
                    fault.started_ms,
                    describe(served),
                    describe(fault.first_served_ms),
                    describe(fault.detection_ms),
                    describe(fault.rehosted_ms)
                ))
            });
        }
    }
    let result = InvariantResult::from_findings("failover_within_bound", checked, findings);
    let mut notes = Vec::new();
    if without_rooms > 0 {
        notes.push(format!(
            "{without_rooms} faults hit nodes that owned none of the workload's rooms"
        ));
    }
    if by_probe > 0 {
        notes.push(format!("{by_probe} faults had no client on a survivor posting in their rooms: measured by the re-hosting probe"));
    }
    if notes.is_empty() {
        result
    } else {
        result.with_note(notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::FaultKind;

    #[test]
    fn failover_over_the_bound_is_a_violation() {
        let scenario = Scenario::default();
        let fault = |kind, served| FaultRecord {
            index: 0,
            lane: 0,
            kind,
            shape: None,
            targets: vec!["n2".into()],
            survivors: vec!["n1".into()],
            victim_rooms: vec!["room".into()],
            started_ms: 1000,
            healed_ms: Some(5000),
            recovered_ms: Some(6000),
            detection_ms: Some(100),
            rehosted_ms: Some(200),
            first_served_ms: served,
            journal_conflicts: 0,
            notes: Vec::new(),
        };
        assert!(
            failover_result(
                &[
                    fault(FaultKind::Kill, Some(1500)),
                    fault(FaultKind::Pause, Some(2900))
                ],
                &scenario
            )
            .passed
        );
        let result = failover_result(&[fault(FaultKind::Kill, Some(2500))], &scenario);
        assert!(!result.passed);
        assert_eq!(
            result
                .first_counterexample
                .expect("example")
                .room
                .as_deref(),
            Some("room")
        );
        // Without a client on a survivor, the re-hosting probe (200 ms here) decides.
        let probed = failover_result(&[fault(FaultKind::Partition, None)], &scenario);
        assert!(probed.passed && probed.note.is_some(), "{probed:?}");
        let mut never = fault(FaultKind::Partition, None);
        never.rehosted_ms = None;
        assert!(!failover_result(&[never], &scenario).passed);
        let mut unrecovered = fault(FaultKind::Kill, Some(10));
        unrecovered.recovered_ms = None;
        assert!(!all_up_result(&[unrecovered], &Ok(()), &scenario).passed);
    }

    #[test]
    fn members_may_go_down_only_during_faults() {
        let mut fault = FaultRecord {
            index: 0,
            lane: 0,
            kind: FaultKind::Kill,
            shape: None,
            targets: vec!["n2".into()],
            survivors: Vec::new(),
            victim_rooms: Vec::new(),
            started_ms: 1_000,
            healed_ms: Some(4_000),
            recovered_ms: Some(5_000),
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes: Vec::new(),
        };
        let during = [(1_200, "n1".to_string(), 1), (7_500, "n3".to_string(), 1)];
        assert!(member_downs_result(&during, &[fault.clone()], 60_000).passed);
        let outside = [(9_000, "n1".to_string(), 2)];
        let result = member_downs_result(&outside, &[fault.clone()], 60_000);
        assert!(!result.passed);
        assert!(
            result
                .first_counterexample
                .expect("example")
                .detail
                .starts_with("n1 saw 2")
        );
        fault.recovered_ms = None;
        fault.healed_ms = None;
        assert!(member_downs_result(&outside, &[fault], 60_000).passed);
    }
}
