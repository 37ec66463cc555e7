//! The fault injector: takes planned faults from the seeded lanes, applies them to the cluster
//! (SIGKILL + restart, SIGSTOP/SIGCONT, nft partitions, graceful restarts), heals them, and
//! measures each one's failover while it lasts:
//! - detection: until every survivor's `/api/cluster` shows every target down;
//! - re-hosting: until a survivor answers a history read of every room a target owned;
//! - recovery: from the heal until every live node sees every node up again.
//!
//! "First message served" comes from the clients' logs after the run ([`first_served_ms`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::test_token;
use crate::cluster::{ProcessState, TestCluster};
use crate::netns::Network;
use crate::records::{ClientLog, FaultRecord};
use crate::scenario::{FaultKind, Scenario};
use crate::schedule::{FaultPlan, LaneSchedule};
use crate::workload::{Clock, Progress};

/// How often the probes poll during a fault.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// Longest a probe keeps going after the fault healed (it gives up then).
const PROBE_AFTER_HEAL: Duration = Duration::from_secs(10);
/// Timeout of one probe request; a history read may wait for a re-hosting (the ask deadline).
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Grace for a graceful shutdown before the harness SIGKILLs the node.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// The harness user that reads histories for probes and checks.
pub const AUDITOR: &str = "chaos-auditor";

/// What the injector needs, shared by its lanes.
pub struct Injector {
    pub cluster: Arc<TestCluster>,
    pub network: Option<Arc<Mutex<Network>>>,
    pub scenario: Scenario,
    pub clock: Clock,
    pub rooms: Vec<String>,
    pub http: reqwest::Client,
    pub progress: Arc<Progress>,
    /// Faults as they happened, in start order.
    pub records: Mutex<Vec<FaultRecord>>,
    /// Nodes some lane is faulting right now (they are nobody's survivors).
    pub faulted: Mutex<HashSet<String>>,
    /// A short description of the active faults for the progress line.
    pub active: Mutex<Vec<String>>,
}

impl Injector {
    /// Runs one lane until no further planned fault fits before `last_start_ms` ends.
    pub async fn run_lane(self: Arc<Self>, lane: LaneSchedule, end_ms: u64) {
        for plan in lane {
            let gap_end = self.clock.now_ms() + plan.gap_ms;
            // The fault and its recovery must end before the cooldown.
            if gap_end + plan.hold_ms + 2_000 > end_ms {
                return;
            }
            sleep(Duration::from_millis(plan.gap_ms)).await;
            let record = self.inject(plan).await;
            lock(&self.records).push(record);
        }
    }

    async fn inject(&self, plan: FaultPlan) -> FaultRecord {
        let all_nodes = self.cluster.node_ids();
        let mut notes = Vec::new();
        let wait_started = Instant::now();
        if let Err(error) = self.wait_targets_healthy(&plan.targets).await {
            notes.push(format!(
                "started anyway after {:?}: {error:#}",
                wait_started.elapsed()
            ));
        } else if wait_started.elapsed() > Duration::from_millis(500) {
            notes.push(format!(
                "delayed {} ms for the cluster to be all up",
                wait_started.elapsed().as_millis()
            ));
        }
        let survivors: Vec<String> = {
            let faulted = lock(&self.faulted);
            all_nodes
                .iter()
                .filter(|node| !plan.targets.contains(node) && !faulted.contains(*node))
                .cloned()
                .collect()
        };
        let victim_rooms: Vec<String> = self
            .rooms
            .iter()
            .filter(|room| {
                runtime::placement::owner("room", room, all_nodes.iter().map(String::as_str))
                    .is_some_and(|owner| plan.targets.iter().any(|target| target == owner))
            })
            .cloned()
            .collect();
        lock(&self.faulted).extend(plan.targets.iter().cloned());
        let label = format!("{} {}", plan.kind, plan.targets.join("+"));
        lock(&self.active).push(label.clone());
        self.progress
            .faults_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let started_ms = self.clock.now_ms();
        let mut record = FaultRecord {
            index: 0,
            lane: plan.lane,
            kind: plan.kind,
            shape: plan.shape.clone(),
            targets: plan.targets.clone(),
            survivors: survivors.clone(),
            victim_rooms: victim_rooms.clone(),
            started_ms,
            healed_ms: None,
            recovered_ms: None,
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes,
        };
        if let Err(error) = self.apply(&plan, &all_nodes).await {
            record
                .notes
                .push(format!("applying the fault failed: {error:#}"));
        }
        let probe_until = Arc::new(Mutex::new(None::<Instant>));
        let detection = tokio::spawn(detect(
            self.cluster.clone(),
            survivors.clone(),
            plan.targets.clone(),
            self.clock,
            probe_until.clone(),
        ));
        let rehosting = tokio::spawn(rehost(
            self.cluster.clone(),
            self.http.clone(),
            survivors.clone(),
            victim_rooms,
            self.clock,
            probe_until.clone(),
        ));

        if plan.kind != FaultKind::Restart {
            sleep_until(self.clock.instant_of(started_ms + plan.hold_ms)).await;
        }
        if let Err(error) = self.heal(&plan).await {
            record.notes.push(format!("healing failed: {error:#}"));
        }
        record.healed_ms = Some(self.clock.now_ms());
        *lock(&probe_until) = Some(Instant::now() + PROBE_AFTER_HEAL);
        match self.wait_recovered(&plan.targets).await {
            Ok(()) => record.recovered_ms = Some(self.clock.now_ms()),
            Err(error) => record.notes.push(format!(
                "not all up within {:?} of the heal: {error:#}",
                self.scenario.all_up_timeout
            )),
        }
        record.detection_ms = detection
            .await
            .ok()
            .flatten()
            .map(|at| at.saturating_sub(started_ms));
        record.rehosted_ms = rehosting
            .await
            .ok()
            .flatten()
            .map(|at| at.saturating_sub(started_ms));
        {
            let mut faulted = lock(&self.faulted);
            for target in &plan.targets {
                faulted.remove(target);
            }
        }
        lock(&self.active).retain(|active| active != &label);
        record
    }

    /// Waits (bounded) until the targets run and every live node sees every node up.
    async fn wait_targets_healthy(&self, targets: &[String]) -> anyhow::Result<()> {
        for target in targets {
            match self.cluster.process_state(target) {
                ProcessState::Running { paused: false, .. } => {}
                other => bail!("{target} is {other}"),
            }
        }
        self.cluster.wait_all_up(self.scenario.all_up_timeout).await
    }

    async fn apply(&self, plan: &FaultPlan, all_nodes: &[String]) -> anyhow::Result<()> {
        match plan.kind {
            FaultKind::Kill => {
                for target in &plan.targets {
                    if let ProcessState::Running { .. } = self.cluster.process_state(target) {
                        self.cluster.kill(target);
                    } else {
                        bail!("{target} is not running");
                    }
                }
            }
            FaultKind::Pause => {
                for target in &plan.targets {
                    match self.cluster.process_state(target) {
                        ProcessState::Running { paused: false, .. } => self.cluster.pause(target),
                        other => bail!("{target} is {other}"),
                    }
                }
            }
            FaultKind::Partition => {
                let network = self
                    .network
                    .as_ref()
                    .context("partitions need network namespaces")?;
                let index = |id: &String| id.trim_start_matches('n').parse::<usize>().unwrap_or(0);
                let side_a: Vec<usize> = plan.targets.iter().map(index).collect();
                let side_b: Vec<usize> = all_nodes
                    .iter()
                    .filter(|node| !plan.targets.contains(node))
                    .map(index)
                    .collect();
                lock(network).partition(&side_a, &side_b)?;
            }
            FaultKind::Restart => {
                for target in &plan.targets {
                    let status = self.cluster.terminate(target, TERMINATE_TIMEOUT).await?;
                    if !status.success() {
                        bail!("{target} exited with {status} on SIGTERM");
                    }
                }
            }
        }
        Ok(())
    }

    async fn heal(&self, plan: &FaultPlan) -> anyhow::Result<()> {
        match plan.kind {
            FaultKind::Kill | FaultKind::Restart => {
                for target in &plan.targets {
                    if !matches!(
                        self.cluster.process_state(target),
                        ProcessState::Running { .. }
                    ) {
                        self.cluster.restart(target).await?;
                    }
                }
            }
            FaultKind::Pause => {
                for target in &plan.targets {
                    if let ProcessState::Running { paused: true, .. } =
                        self.cluster.process_state(target)
                    {
                        self.cluster.resume(target);
                    }
                }
            }
            FaultKind::Partition => {
                let network = self
                    .network
                    .as_ref()
                    .context("partitions need network namespaces")?;
                lock(network).heal()?;
            }
        }
        Ok(())
    }

    async fn wait_recovered(&self, targets: &[String]) -> anyhow::Result<()> {
        for target in targets {
            self.cluster
                .wait_ready(target, self.scenario.all_up_timeout)
                .await?;
        }
        self.cluster.wait_all_up(self.scenario.all_up_timeout).await
    }

    /// Heals everything whatever state the faults left: network, frozen and dead nodes.
    pub async fn heal_everything(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(network) = &self.network
            && let Err(error) = lock(network).heal()
        {
            problems.push(format!("network heal failed: {error:#}"));
        }
        for node in self.cluster.node_ids() {
            match self.cluster.process_state(&node) {
                ProcessState::Running { paused: true, .. } => self.cluster.resume(&node),
                ProcessState::Running { paused: false, .. } => {}
                ProcessState::Exited(status) => {
                    problems.push(format!(
                        "{node} was found exited ({status}) at the end; restarted"
                    ));
                    if let Err(error) = self.cluster.restart(&node).await {
                        problems.push(format!("restarting {node} failed: {error:#}"));
                    }
                }
                ProcessState::NotStarted => {
                    if let Err(error) = self.cluster.restart(&node).await {
                        problems.push(format!("starting {node} failed: {error:#}"));
                    }
                }
            }
        }
        problems
    }

    pub fn active_faults(&self) -> Vec<String> {
        lock(&self.active).clone()
    }

    /// The nodes some fault holds right now (from just before it starts to all up again).
    pub fn faulted_nodes(&self) -> HashSet<String> {
        lock(&self.faulted).clone()
    }
}

/// Polls the survivors' views until each has shown every target down; returns when (ms).
async fn detect(
    cluster: Arc<TestCluster>,
    survivors: Vec<String>,
    targets: Vec<String>,
    clock: Clock,
    until: Arc<Mutex<Option<Instant>>>,
) -> Option<u64> {
    let mut remaining: HashSet<String> = survivors.into_iter().collect();
    while !remaining.is_empty() {
        if lock(&until).is_some_and(|until| Instant::now() >= until) {
            return None;
        }
        let observers: Vec<String> = remaining.iter().cloned().collect();
        for observer in observers {
            if let Ok(view) = cluster.cluster_view(&observer).await
                && targets
                    .iter()
                    .all(|target| member_state(&view, target) == Some("down"))
            {
                remaining.remove(&observer);
            }
        }
        if !remaining.is_empty() {
            sleep(PROBE_INTERVAL).await;
        }
    }
    Some(clock.now_ms())
}

/// Reads each victim room's history through the survivors until each answers; returns when
/// the last one did (ms), i.e. when all the targets' rooms were served again.
async fn rehost(
    cluster: Arc<TestCluster>,
    http: reqwest::Client,
    survivors: Vec<String>,
    rooms: Vec<String>,
    clock: Clock,
    until: Arc<Mutex<Option<Instant>>>,
) -> Option<u64> {
    if survivors.is_empty() || rooms.is_empty() {
        return None;
    }
    let mut last = 0;
    let token = test_token(AUDITOR);
    for (position, room) in rooms.iter().enumerate() {
        let mut attempt = position;
        loop {
            if lock(&until).is_some_and(|until| Instant::now() >= until) {
                return None;
            }
            let survivor = &survivors[attempt % survivors.len()];
            attempt += 1;
            let url = format!(
                "{}/api/rooms/{room}/messages?after=0&limit=1",
                cluster.http_url(survivor)
            );
            let answered = http
                .get(&url)
                .bearer_auth(&token)
                .timeout(PROBE_REQUEST_TIMEOUT)
                .send()
                .await;
            if answered.is_ok_and(|response| response.status().is_success()) {
                last = last.max(clock.now_ms());
                break;
            }
            sleep(PROBE_INTERVAL).await;
        }
    }
    Some(last)
}

fn member_state<'a>(view: &'a Value, member: &str) -> Option<&'a str> {
    view["members"]
        .as_array()?
        .iter()
        .find(|entry| entry["id"] == member)?["state"]
        .as_str()
}

/// The first ack, to a client that was already connected to a survivor when the fault
/// began, of a post to a victim room sent after the fault began: when the targets' rooms
/// served messages again (ms after the start). Clients that had to reconnect first are left
/// out, so their own failure detection does not count as the cluster's failover.
pub fn first_served_ms(fault: &FaultRecord, clients: &[ClientLog]) -> Option<u64> {
    clients
        .iter()
        .filter(|client| fault.victim_rooms.contains(&client.room))
        .flat_map(|client| client.posts.iter().map(move |post| (client, post)))
        .filter(|(_, post)| post.last_sent_ms >= fault.started_ms)
        .filter_map(|(client, post)| post.ack.as_ref().map(|ack| (client, ack)))
        .filter(|(_, ack)| fault.survivors.contains(&ack.node))
        .filter(|(client, ack)| {
            client.connections.iter().any(|connection| {
                connection.node == ack.node
                    && connection.connected_ms < fault.started_ms
                    && connection.ended_ms.is_none_or(|ended| ended >= ack.at_ms)
            })
        })
        .map(|(_, ack)| ack.at_ms.saturating_sub(fault.started_ms))
        .min()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AckRecord, ConnectionRecord, PostRecord};

    #[test]
    fn first_served_counts_only_survivors_acks_of_posts_sent_after_the_start() {
        let fault = FaultRecord {
            index: 0,
            lane: 0,
            kind: FaultKind::Kill,
            shape: None,
            targets: vec!["n2".into()],
            survivors: vec!["n1".into(), "n3".into()],
            victim_rooms: vec!["a".into()],
            started_ms: 1_000,
            healed_ms: None,
            recovered_ms: None,
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes: Vec::new(),
        };
        let post = |sent: u64, acked: u64, node: &str| PostRecord {
            index: 0,
            first_sent_ms: sent,
            last_sent_ms: sent,
            attempts: 1,
            ack: Some(AckRecord {
                seq: 1,
                at_ms: acked,
                node: node.into(),
            }),
        };
        let client = |room: &str, posts: Vec<PostRecord>| ClientLog {
            room: room.into(),
            connections: ["n1", "n2", "n3"]
                .iter()
                .map(|node| ConnectionRecord {
                    node: node.to_string(),
                    connected_ms: 0,
                    ended_ms: None,
                    end_reason: None,
                })
                .collect(),
            posts,
            ..ClientLog::default()
        };
        let clients = vec![
            client("a", vec![post(900, 1_100, "n1")]), // sent before the fault
            client("a", vec![post(1_100, 1_200, "n2")]), // acked by the faulty node
            client("b", vec![post(1_100, 1_150, "n1")]), // not a victim room
            client(
                "a",
                vec![post(1_500, 2_400, "n3"), post(1_200, 2_900, "n1")],
            ),
        ];
        assert_eq!(first_served_ms(&fault, &clients), Some(1_400));
        assert_eq!(first_served_ms(&fault, &clients[..3]), None);
        // A client that reconnected to a survivor after the start does not count.
        let mut reconnected = client("a", vec![post(1_050, 1_300, "n3")]);
        reconnected.connections[2].connected_ms = 1_250;
        let mut with_reconnected = clients.clone();
        with_reconnected.push(reconnected);
        assert_eq!(first_served_ms(&fault, &with_reconnected), Some(1_400));
    }
}
