//! Reads counters from the nodes' `/metrics` during the run.
//!
//! A counter restarts from zero with its process, so a total over the run is the sum, over
//! every process (node and pid) the harness saw, of the highest value read from it. The
//! scraper reads every live node each second, and once more at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cluster::{ProcessState, TestCluster};
use crate::workload::Clock;

/// Stale owners' appends rejected by the journal's create-only write.
pub const JOURNAL_CONFLICTS: &str = "actorhub_journal_conflicts_total";
/// Retried asks answered from the journal instead of re-applied.
pub const ENTITY_DUPLICATES: &str = "actorhub_entity_duplicates_total";
/// Members seen going down, by any node: outside a fault, a dropped link.
pub const MEMBER_DOWNS: &str = "actorhub_membership_transitions_total{state=\"down\"}";
/// Every counter the report totals. A name with `{label="value"}` sums only the samples
/// carrying that label.
pub const COUNTERS: [&str; 3] = [JOURNAL_CONFLICTS, ENTITY_DUPLICATES, MEMBER_DOWNS];
/// Time between two scrapes of the same node.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// The highest value seen per (counter, node, pid), and when each increase was seen.
#[derive(Debug)]
pub struct CounterTotals {
    clock: Clock,
    highest: Mutex<BTreeMap<(String, String, u32), f64>>,
    /// `(ms, counter, node, increase)` per scrape that saw a counter grow: to attribute
    /// increases to faults (an increase is seen up to one scrape interval after it happened).
    increases: Mutex<Vec<(u64, String, String, u64)>>,
    /// When the first scrape of every node ended: what it found predates the workload.
    baseline_ms: Mutex<Option<u64>>,
}

impl CounterTotals {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            highest: Mutex::default(),
            increases: Mutex::default(),
            baseline_ms: Mutex::default(),
        }
    }

    /// Scrapes every live node once.
    pub async fn scrape(&self, cluster: &TestCluster, http: &reqwest::Client) {
        for node in cluster.node_ids() {
            let ProcessState::Running { pid, paused: false } = cluster.process_state(&node) else {
                continue;
            };
            let url = format!("{}/metrics", cluster.http_url(&node));
            let mut request = http.get(&url).timeout(Duration::from_secs(2));
            if let Some(token) = cluster.admin_token() {
                request = request.bearer_auth(token);
            }
            let Ok(response) = request.send().await else {
                continue;
            };
            let Ok(text) = response.text().await else {
                continue;
            };
            let now_ms = self.clock.now_ms();
            let mut highest = self.highest.lock().unwrap_or_else(PoisonError::into_inner);
            for counter in COUNTERS {
                let value = sum_metric(&text, counter);
                let entry = highest
                    .entry((counter.to_string(), node.clone(), pid))
                    .or_insert(0.0);
                if value > *entry {
                    let increase = (value - *entry) as u64;
                    let mut increases = self
                        .increases
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    increases.push((now_ms, counter.to_string(), node.clone(), increase));
                    *entry = value;
                }
            }
        }
        self.baseline_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(self.clock.now_ms());
    }

    /// Scrapes until `stop` becomes true.
    pub async fn run(
        self: Arc<Self>,
        cluster: Arc<TestCluster>,
        http: reqwest::Client,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            self.scrape(&cluster, &http).await;
            tokio::select! {
                _ = tokio::time::sleep(SCRAPE_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Increases of `counter` seen in `[from_ms, to_ms]`.
    pub fn increase_between(&self, counter: &str, from_ms: u64, to_ms: u64) -> u64 {
        let increases = self
            .increases
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        increases
            .iter()
            .filter(|(at, name, _, _)| name == counter && (from_ms..=to_ms).contains(at))
            .map(|(_, _, _, increase)| increase)
            .sum()
    }

    /// Every increase of `counter` seen after the first scrape: `(ms, node, increase)`.
    pub fn increases_after_baseline(&self, counter: &str) -> Vec<(u64, String, u64)> {
        let baseline = self
            .baseline_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or(0);
        let increases = self
            .increases
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        increases
            .iter()
            .filter(|(at, name, _, _)| name == counter && *at > baseline)
            .map(|(at, _, node, increase)| (*at, node.clone(), *increase))
            .collect()
    }

    /// The run's total of `counter`, overall and per node.
    pub fn total(&self, counter: &str) -> (u64, BTreeMap<String, u64>) {
        let highest = self.highest.lock().unwrap_or_else(PoisonError::into_inner);
        let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
        for ((name, node, _pid), value) in highest.iter() {
            if name == counter {
                *per_node.entry(node.clone()).or_default() += *value as u64;
            }
        }
        (per_node.values().sum(), per_node)
    }
}

/// The sum of every sample of `counter` in Prometheus text: all label sets of a bare name,
/// or those carrying the label of `name{label="value"}`.
pub fn sum_metric(text: &str, counter: &str) -> f64 {
    let (name, label) = match counter.split_once('{') {
        Some((name, label)) => (name, Some(label.trim_end_matches('}'))),
        None => (counter, None),
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name).is_some_and(|rest| {
                (rest.starts_with(' ') || rest.starts_with('{'))
                    && label.is_none_or(|label| {
                        rest.split_once(' ')
                            .is_some_and(|(labels, _)| labels.contains(label))
                    })
            })
        })
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_every_label_set_are_summed() {
        let text = "# HELP actorhub_journal_conflicts_total x\n# TYPE actorhub_journal_conflicts_total counter\nactorhub_journal_conflicts_total{kind=\"room\"} 3\nactorhub_journal_conflicts_total{kind=\"job\"} 2\nactorhub_journal_conflicts_total_other 7\n";
        assert_eq!(sum_metric(text, JOURNAL_CONFLICTS), 5.0);
        assert_eq!(
            sum_metric("actorhub_journal_conflicts_total 4\n", JOURNAL_CONFLICTS),
            4.0
        );
        assert_eq!(sum_metric("", JOURNAL_CONFLICTS), 0.0);
        let transitions = "actorhub_membership_transitions_total{member=\"n2\",state=\"down\"} 2\nactorhub_membership_transitions_total{member=\"n2\",state=\"up\"} 3\nactorhub_membership_transitions_total{member=\"n3\",state=\"down\"} 1\n";
        assert_eq!(sum_metric(transitions, MEMBER_DOWNS), 3.0);
    }
}
