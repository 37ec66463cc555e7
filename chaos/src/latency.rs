//! The honest clients' post → ack latency (from a post's first send to its ack, retries
//! included), split by when the post was first sent: in a hostile phase or a quiet one, and
//! whether a fault was active then. The hostile clients' cost to honest users is the difference
//! between the phases outside faults.

use serde::Serialize;

use crate::records::{ClientLog, FaultRecord};
use crate::report::percentile;

/// p50/p99/max of post → ack over some posts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    pub posts: usize,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl LatencyStats {
    fn of(mut latencies: Vec<u64>) -> Self {
        latencies.sort_unstable();
        Self {
            posts: latencies.len(),
            p50_ms: percentile(&latencies, 50.0),
            p99_ms: percentile(&latencies, 99.0),
            max_ms: latencies.last().copied(),
        }
    }

    /// `p50/p99/max (n)` for the summary.
    pub fn describe(&self) -> String {
        let value = |value: Option<u64>| value.map_or("-".to_string(), |value| value.to_string());
        format!(
            "{}/{}/{} ({} posts)",
            value(self.p50_ms),
            value(self.p99_ms),
            value(self.max_ms),
            self.posts
        )
    }
}

/// Post → ack latency by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseLatency {
    pub quiet: LatencyStats,
    pub hostile: LatencyStats,
    /// The same, leaving out posts first sent while a fault was active (a failover's wait
    /// would hide what the hostile clients cost).
    pub quiet_outside_faults: LatencyStats,
    pub hostile_outside_faults: LatencyStats,
}

/// Splits every acknowledged post by the phase and faults at its first send.
pub fn by_phase(
    clients: &[ClientLog],
    hostile_phases: &[(u64, u64)],
    faults: &[FaultRecord],
    run_end_ms: u64,
) -> PhaseLatency {
    let in_hostile = |at: u64| {
        hostile_phases
            .iter()
            .any(|(start, end)| (*start..*end).contains(&at))
    };
    let in_fault = |at: u64| {
        faults.iter().any(|fault| {
            let end = fault.recovered_ms.or(fault.healed_ms).unwrap_or(run_end_ms);
            (fault.started_ms..=end).contains(&at)
        })
    };
    let mut quiet = Vec::new();
    let mut hostile = Vec::new();
    let mut quiet_outside = Vec::new();
    let mut hostile_outside = Vec::new();
    for post in clients.iter().flat_map(|client| &client.posts) {
        let Some(ack) = &post.ack else { continue };
        let latency = ack.at_ms.saturating_sub(post.first_sent_ms);
        let (all, outside) = if in_hostile(post.first_sent_ms) {
            (&mut hostile, &mut hostile_outside)
        } else {
            (&mut quiet, &mut quiet_outside)
        };
        all.push(latency);
        if !in_fault(post.first_sent_ms) {
            outside.push(latency);
        }
    }
    PhaseLatency {
        quiet: LatencyStats::of(quiet),
        hostile: LatencyStats::of(hostile),
        quiet_outside_faults: LatencyStats::of(quiet_outside),
        hostile_outside_faults: LatencyStats::of(hostile_outside),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AckRecord, PostRecord};
    use crate::scenario::FaultKind;

    #[test]
    fn posts_are_split_by_the_phase_and_fault_of_their_first_send() {
        let post = |sent: u64, latency: u64| PostRecord {
            index: 0,
            first_sent_ms: sent,
            last_sent_ms: sent,
            attempts: 1,
            ack: Some(AckRecord {
                seq: 1,
                at_ms: sent + latency,
                node: "n1".into(),
            }),
        };
        let mut unacked = post(150, 0);
        unacked.ack = None;
        let client = ClientLog {
            posts: vec![
                post(10, 2),
                post(20, 4),
                post(150, 30),
                post(160, 500),
                unacked,
            ],
            ..ClientLog::default()
        };
        let fault = FaultRecord {
            index: 0,
            lane: 0,
            kind: FaultKind::Kill,
            shape: None,
            targets: vec!["n2".into()],
            survivors: Vec::new(),
            victim_rooms: Vec::new(),
            started_ms: 155,
            healed_ms: Some(158),
            recovered_ms: Some(170),
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes: Vec::new(),
        };
        let latency = by_phase(&[client], &[(100, 200)], &[fault], 300);
        assert_eq!(latency.quiet.posts, 2);
        assert_eq!(latency.quiet.max_ms, Some(4));
        assert_eq!(latency.hostile.posts, 2);
        assert_eq!(latency.hostile.p99_ms, Some(500));
        assert_eq!(latency.hostile_outside_faults.posts, 1);
        assert_eq!(latency.hostile_outside_faults.max_ms, Some(30));
        assert_eq!(latency.quiet_outside_faults, latency.quiet);
    }
}
