//! The fault schedule: an endless, seeded sequence of planned faults per lane.
//!
//! The plan depends on the seed and the scenario only, never on timing, so the same seed
//! replays the same faults (kinds, targets, hold times, gaps) in the same order. Kinds are
//! dealt in rounds (every kind once per round, in a seeded order), so even a short run sees
//! every kind it asked for. The injector
//! takes plans from the sequence until the run's time is up; a slow recovery can only shift
//! when a fault happens, not which fault comes next.
//!
//! With `concurrent_faults_max = k > 1`, lane `j` draws from its own stream and only targets
//! the nodes `n(j+1), n(j+1+k), ...`, so concurrent faults never hit the same node and, as the
//! scenario keeps `k` below the node count, at least one node is always healthy. Partitions
//! happen in lane 0 only (the switch has one set of blocked pairs).

use serde::Serialize;

use crate::scenario::{FaultKind, RangeMs, Scenario};

/// SplitMix64: tiny, fast, and fixed here so that a seed means the same schedule forever
/// (a library generator may change its algorithm between versions).
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value");
        self.next_u64() % bound
    }

    pub fn in_range(&mut self, range: RangeMs) -> u64 {
        range.min + self.below(range.max - range.min + 1)
    }
}

/// How a partition cuts the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionShape {
    /// The targets cannot reach the other nodes (and back). With one target: one node isolated.
    Isolate,
    /// Two groups that cannot reach each other: the targets (the minority) and the rest.
    Split,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultPlan {
    /// Position in its lane's sequence, from 0.
    pub index: usize,
    pub lane: usize,
    /// Quiet time before the fault, after the previous one of the lane has recovered.
    pub gap_ms: u64,
    pub kind: FaultKind,
    /// The faulty nodes: killed, frozen, restarted, or the minority side of a partition.
    pub targets: Vec<String>,
    /// How long the fault lasts before its heal (a restart's is 0: it restarts at once).
    pub hold_ms: u64,
    pub shape: Option<PartitionShape>,
}

/// An endless plan for one lane.
pub struct LaneSchedule {
    lane: usize,
    rng: SeededRng,
    kinds: Vec<FaultKind>,
    /// Nodes this lane may target.
    nodes: Vec<String>,
    all_nodes: Vec<String>,
    scenario: Scenario,
    next_index: usize,
    /// Kinds left in the current round: each round deals every kind once, in a seeded order,
    /// so a short run still sees every kind (a plain draw can give four pauses in a row).
    deck: Vec<FaultKind>,
}

/// The lanes of a run, one per concurrent fault allowed.
pub fn lanes(
    seed: u64,
    scenario: &Scenario,
    node_ids: &[String],
    partitions_available: bool,
) -> Vec<LaneSchedule> {
    let lanes = scenario.concurrent_faults_max.max(1);
    (0..lanes)
        .map(|lane| {
            let nodes: Vec<String> = node_ids.iter().skip(lane).step_by(lanes).cloned().collect();
            let kinds: Vec<FaultKind> = scenario
                .faults
                .iter()
                .copied()
                .filter(|kind| *kind != FaultKind::Partition || (partitions_available && lane == 0))
                .collect();
            // Each lane's stream is derived from the seed and the lane, so adding a lane does not
            // change lane 0's faults.
            let lane_seed = seed ^ (lane as u64).wrapping_mul(0xA24B_AED4_963E_E407);
            LaneSchedule {
                lane,
                rng: SeededRng::new(lane_seed),
                kinds,
                nodes,
                all_nodes: node_ids.to_vec(),
                scenario: scenario.clone(),
                next_index: 0,
                deck: Vec::new(),
            }
        })
        .collect()
}

impl LaneSchedule {
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// True when this lane has nothing to inject (no kinds or no nodes).
    pub fn is_idle(&self) -> bool {
        self.kinds.is_empty() || self.nodes.is_empty()
    }
}

impl Iterator for LaneSchedule {
    type Item = FaultPlan;

    fn next(&mut self) -> Option<FaultPlan> {
        if self.is_idle() {
            return None;
        }
        // The same number of values per plan (plus a shuffle per round), in the same order, so
        // that a plan's draws do not depend on an earlier plan's kind.
        let gap_ms = self.rng.in_range(self.scenario.fault_gap_ms);
        let kind = self.deal();
        let target = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].clone();
        let split_draw = self.rng.next_u64();
        let hold_ms = match kind {
            FaultKind::Kill => self.rng.in_range(self.scenario.kill_downtime_ms),
            FaultKind::Pause => self.rng.in_range(self.scenario.pause_hold_ms),
            FaultKind::Partition => self.rng.in_range(self.scenario.partition_hold_ms),
            FaultKind::Restart => {
                self.rng.next_u64();
                0
            }
        };
        let (targets, shape) = if kind == FaultKind::Partition {
            self.partition_sides(&target, split_draw)
        } else {
            (vec![target], None)
        };
        let plan = FaultPlan {
            index: self.next_index,
            lane: self.lane,
            gap_ms,
            kind,
            targets,
            hold_ms,
            shape,
        };
        self.next_index += 1;
        Some(plan)
    }
}

impl LaneSchedule {
    /// The next kind from the deck, reshuffling a new round when it is empty.
    fn deal(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            // Fisher-Yates with the lane's generator.
            for index in (1..self.deck.len()).rev() {
                let other = self.rng.below(index as u64 + 1) as usize;
                self.deck.swap(index, other);
            }
        }
        self.deck
            .pop()
            .expect("a lane with kinds has a non-empty deck")
    }

    /// A partition's minority side: the target alone (isolate) or, with 4 nodes or more and
    /// half the draws, the target plus some others up to just under half the cluster (split).
    fn partition_sides(&self, target: &str, draw: u64) -> (Vec<String>, Option<PartitionShape>) {
        let count = self.all_nodes.len();
        let minority_max = (count - 1) / 2;
        if count < 4 || minority_max < 2 || draw.is_multiple_of(2) {
            return (vec![target.to_string()], Some(PartitionShape::Isolate));
        }
        let size = 2 + (draw >> 8) as usize % (minority_max - 1);
        let mut side = vec![target.to_string()];
        let start = self
            .all_nodes
            .iter()
            .position(|node| node == target)
            .unwrap_or(0);
        for offset in 1..count {
            if side.len() >= size {
                break;
            }
            let candidate = &self.all_nodes
                [(start + offset * ((draw >> 16) as usize % (count - 1) + 1)) % count];
            if !side.contains(candidate) {
                side.push(candidate.clone());
            }
        }
        side.sort();
        (side, Some(PartitionShape::Split))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> Vec<String> {
        (1..=count).map(|index| format!("n{index}")).collect()
    }

    fn scenario(faults: &[FaultKind], concurrent: usize) -> Scenario {
        Scenario {
            faults: faults.to_vec(),
            concurrent_faults_max: concurrent,
            ..Scenario::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let scenario = scenario(&FaultKind::ALL, 1);
        let first: Vec<FaultPlan> = lanes(42, &scenario, &ids(3), true)
            .remove(0)
            .take(50)
            .collect();
        let again: Vec<FaultPlan> = lanes(42, &scenario, &ids(3), true)
            .remove(0)
            .take(50)
            .collect();
        let other: Vec<FaultPlan> = lanes(43, &scenario, &ids(3), true)
            .remove(0)
            .take(50)
            .collect();
        assert_eq!(first, again);
        assert_ne!(first, other);
        // Every round of four plans has every kind once.
        for round in first.chunks(4).take(12) {
            let kinds: std::collections::HashSet<FaultKind> =
                round.iter().map(|plan| plan.kind).collect();
            assert_eq!(kinds.len(), 4, "{round:?}");
        }
        for kind in FaultKind::ALL {
            assert!(
                first.iter().any(|plan| plan.kind == kind),
                "{kind} never drawn in 50 plans"
            );
        }
    }

    #[test]
    fn plans_respect_the_scenario_ranges() {
        let scenario = scenario(&FaultKind::ALL, 1);
        for plan in lanes(7, &scenario, &ids(3), true).remove(0).take(200) {
            assert!((scenario.fault_gap_ms.min..=scenario.fault_gap_ms.max).contains(&plan.gap_ms));
            let range = match plan.kind {
                FaultKind::Kill => scenario.kill_downtime_ms,
                FaultKind::Pause => scenario.pause_hold_ms,
                FaultKind::Partition => scenario.partition_hold_ms,
                FaultKind::Restart => RangeMs::new(0, 0),
            };
            assert!((range.min..=range.max).contains(&plan.hold_ms), "{plan:?}");
            assert_eq!(plan.targets.len(), 1, "3 nodes: one target");
        }
    }

    #[test]
    fn without_partitions_none_is_planned() {
        let scenario = scenario(&FaultKind::ALL, 1);
        assert!(
            lanes(1, &scenario, &ids(3), false)
                .remove(0)
                .take(100)
                .all(|plan| plan.kind != FaultKind::Partition)
        );
        let only_partitions = self::scenario(&[FaultKind::Partition], 1);
        assert!(lanes(1, &only_partitions, &ids(3), false)[0].is_idle());
    }

    #[test]
    fn concurrent_lanes_target_disjoint_nodes() {
        let scenario = scenario(&FaultKind::ALL, 2);
        let mut lanes = lanes(9, &scenario, &ids(5), true);
        let lane1: Vec<FaultPlan> = lanes.remove(1).take(100).collect();
        let lane0: Vec<FaultPlan> = lanes.remove(0).take(100).collect();
        assert!(lane1.iter().all(|plan| plan.kind != FaultKind::Partition));
        let nodes0: std::collections::HashSet<&String> = lane0
            .iter()
            .filter(|plan| plan.kind != FaultKind::Partition)
            .flat_map(|plan| &plan.targets)
            .collect();
        let nodes1: std::collections::HashSet<&String> =
            lane1.iter().flat_map(|plan| &plan.targets).collect();
        assert!(nodes0.is_disjoint(&nodes1), "{nodes0:?} {nodes1:?}");
    }

    #[test]
    fn splits_keep_a_strict_minority() {
        let scenario = scenario(&[FaultKind::Partition], 1);
        let plans: Vec<FaultPlan> = lanes(3, &scenario, &ids(7), true)
            .remove(0)
            .take(100)
            .collect();
        assert!(
            plans
                .iter()
                .any(|plan| plan.shape == Some(PartitionShape::Split))
        );
        for plan in plans {
            assert!(
                !plan.targets.is_empty() && plan.targets.len() <= 3,
                "{plan:?}"
            );
            let unique: std::collections::HashSet<&String> = plan.targets.iter().collect();
            assert_eq!(unique.len(), plan.targets.len());
        }
    }
}
