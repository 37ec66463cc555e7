//! Hostile clients: they run beside the honest ones for the whole run, attacking in hostile
//! phases that alternate with quiet ones, and check that the nodes answer them the way
//! `shared/DESIGN.md`'s "Isolation" says, without dying, stalling or growing.
//!
//! | kind | one action | expected | tolerated |
//! |---|---|---|---|
//! | `poison_upload` | a corpus file (bomb, huge range, deep nesting, truncated, garbage) uploaded for conversion with an ordinary token, followed to its end | the job `failed` with a readable reason (or a 4xx refusal with a reason) | 429, 503 |
//! | `ping_flood` | pings as fast as the socket takes them, reading the pongs or never reading | closed with 1008, or 4008 when the pongs overflow the outbound queue first (`attacks.rs`) | 503 on upgrade |
//! | `join_flood` | joins of rooms that do not exist, as fast as the socket takes them | closed with 1008, or 4008 as above | 503 on upgrade |
//! | `bad_frames` | one frame too large (1009), breaking the protocol (1002) or not UTF-8 (1007) | closed with that code | 503 on upgrade |
//! | `huge_replay` | a room of 1,000 messages of ~4 KB joined with `since: 0` on a node that does not own it | every message, in order, no error | 503 on upgrade |
//! | `cluster_port` | 64 KiB of garbage, a handshake sent a byte at a time, or 200 connections announcing 4 MiB frames, on a cluster port | the node closes them within its handshake timeout | |
//!
//! Every action is seeded (which variant, which corpus file, which node; kinds and clients draw
//! from their own streams), so a seed replays the same attacks in the same order; when the
//! node drawn is under a fault at that moment, the next healthy one is attacked instead. While
//! an action runs, its target's `/healthz` is probed every [`PROBE_INTERVAL`]: a node that takes
//! longer than `hostile.unresponsive_bound_ms` to answer, when no kill, freeze or restart holds
//! it, is a violation (`hostile_nodes_responsive`). An answer other than the expected or
//! tolerated ones is a violation (`hostile_answers_expected`) unless a fault that could explain
//! it overlapped the action (see `summary.rs`).
//!
//! The clients connect from the harness's client namespace, like the honest ones, so with
//! network namespaces they reach the nodes at their namespace addresses (cluster ports too).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::TestCluster;
use crate::faults::Injector;
use crate::scenario::{HostileKind, HostileScenario, Scenario};
use crate::schedule::SeededRng;
use crate::workload::{Clock, Progress};

mod attacks;
mod cluster_port;
pub mod frames;
mod replay;
mod summary;
mod uploads;

pub use summary::{HostileReport, KindSummary, answers_result, report, responsive_result};

/// How often the target of an action is probed (`GET /healthz`) while the action runs.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Seeds of the hostile streams are the run's seed mixed with this (and the kind and client),
/// so they never share a stream with the fault lanes.
const HOSTILE_STREAM: u64 = 0x5EED_0FBA_DC11_E000;

/// One hostile phase of the run, in workload milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub index: usize,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The hostile phases: from the end of the warmup, a hostile phase, then a quiet one, and so
/// on until the cooldown. Depends on the seed and the scenario only.
pub fn phases(seed: u64, scenario: &Scenario) -> Vec<Phase> {
    let hostile = &scenario.hostile;
    if !hostile.enabled {
        return Vec::new();
    }
    let mut rng = SeededRng::new(seed ^ HOSTILE_STREAM);
    let end_ms = (scenario.duration.saturating_sub(scenario.cooldown)).as_millis() as u64;
    let mut at = scenario.warmup.as_millis() as u64;
    let mut phases = Vec::new();
    while at < end_ms {
        let length = rng.in_range(hostile.active_ms);
        let phase_end = (at + length).min(end_ms);
        // A stub of a phase at the very end would measure nothing.
        if phase_end - at < hostile.active_ms.min / 2 {
            break;
        }
        phases.push(Phase {
            index: phases.len(),
            start_ms: at,
            end_ms: phase_end,
        });
        at = phase_end + rng.in_range(hostile.quiet_ms);
    }
    phases
}

/// How a hostile client judges an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    Expected,
    /// Not what was asked for, but a loaded node's fair answer (503, 429).
    Tolerated,
    Unexpected,
    /// Nothing could be done (no healthy node to attack, nothing prepared).
    Skipped,
}

/// What one action got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// A short label, tallied in the report (`close 1008`, `failed: the converter ran out of
    /// memory (limit 512 MiB)`).
    pub got: String,
    /// Numbers and details for this action alone.
    pub detail: String,
    pub judgement: Judgement,
}

impl Outcome {
    pub fn new(judgement: Judgement, got: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            got: got.into(),
            detail: detail.into(),
            judgement,
        }
    }
}

/// One hostile action as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionRecord {
    pub kind: HostileKind,
    pub client: usize,
    /// Position in this client's sequence.
    pub index: u64,
    pub phase: usize,
    /// The variant: the corpus file and target, the frame, the cluster-port attack...
    pub what: String,
    pub target: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub got: String,
    pub detail: String,
    pub judgement: Judgement,
    /// The slowest `/healthz` answer of the target while the action ran (`None`: no probe
    /// answered, or the target was not running).
    pub slowest_probe_ms: Option<u64>,
    /// The target kept a probe waiting longer than the bound while its process was live.
    pub unresponsive: Option<String>,
    /// Filled in after the run: a fault overlapped the action...
    pub during_fault: bool,
    /// ... and one that could explain an unexpected answer or a slow probe.
    pub excused_by_fault: bool,
    pub probe_excused_by_fault: bool,
}

/// What the hostile clients need prepared before the workload starts.
#[derive(Debug, Default)]
pub struct Prepared {
    pub replay: Option<replay::ReplayRoom>,
    pub uploads: Vec<uploads::UploadCase>,
    /// Why a kind has nothing to do, and other notes for the report.
    pub notes: Vec<String>,
}

/// Prepares what the enabled kinds need: the corpus (when the cluster has the jobs API) and
/// the replay room, filled with its ~4 KB messages.
pub async fn prepare(
    cluster: &TestCluster,
    http: &reqwest::Client,
    hostile: &HostileScenario,
    jobs_available: Result<(), String>,
) -> Prepared {
    let mut prepared = Prepared::default();
    if hostile.kinds.contains(&HostileKind::PoisonUpload) {
        match jobs_available {
            Ok(()) => match uploads::prepare(cluster, http).await {
                Ok((cases, skipped)) => {
                    println!(
                        "chaos: hostile corpus ready: {} uploads ({} corpus pairs not available on this cluster)",
                        cases.len(),
                        skipped.len()
                    );
                    if !skipped.is_empty() {
                        prepared.notes.push(format!(
                            "poison uploads skip what this cluster cannot convert: {}",
                            skipped.join(", ")
                        ));
                    }
                    prepared.uploads = cases;
                }
                Err(error) => prepared
                    .notes
                    .push(format!("poison uploads disabled: {error:#}")),
            },
            Err(reason) => prepared
                .notes
                .push(format!("poison uploads disabled: no jobs API ({reason})")),
        }
    }
    if hostile.kinds.contains(&HostileKind::HugeReplay) {
        let started = Instant::now();
        match replay::prepare(cluster, http).await {
            Ok(room) => {
                println!(
                    "chaos: hostile replay room {} ready: {} messages of ~4 KB, owned by {} ({:.1?})",
                    room.id,
                    room.head,
                    room.owner,
                    started.elapsed()
                );
                prepared.replay = Some(room);
            }
            Err(error) => prepared
                .notes
                .push(format!("huge replays disabled: {error:#}")),
        }
    }
    prepared
}

/// What every hostile client shares.
#[derive(Clone)]
struct Shared {
    cluster: Arc<TestCluster>,
    http: reqwest::Client,
    clock: Clock,
    injector: Arc<Injector>,
    hostile: Arc<HostileScenario>,
    prepared: Arc<Prepared>,
    bound: Duration,
    records: Arc<Mutex<Vec<ActionRecord>>>,
    progress: Arc<Progress>,
}

/// What the hostile clients use of the run: the cluster, the client namespace's HTTP client,
/// the workload's clock, the injector (to stay off nodes under a fault), the progress line.
pub struct Surroundings {
    pub cluster: Arc<TestCluster>,
    pub http: reqwest::Client,
    pub clock: Clock,
    pub injector: Arc<Injector>,
    pub progress: Arc<Progress>,
}

/// The running hostile clients.
pub struct HostileRun {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    records: Arc<Mutex<Vec<ActionRecord>>>,
}

impl HostileRun {
    /// Starts `clients_per_kind` clients of every enabled kind; they wait for the phases.
    pub fn start(
        surroundings: Surroundings,
        scenario: &Scenario,
        seed: u64,
        prepared: Prepared,
    ) -> Self {
        let Surroundings {
            cluster,
            http,
            clock,
            injector,
            progress,
        } = surroundings;
        let phases = Arc::new(phases(seed, scenario));
        let (stop, stopped) = watch::channel(false);
        let records = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            cluster,
            http,
            clock,
            injector,
            bound: Duration::from_millis(scenario.hostile.unresponsive_bound_ms),
            hostile: Arc::new(scenario.hostile.clone()),
            prepared: Arc::new(prepared),
            records: records.clone(),
            progress,
        };
        let mut tasks = Vec::new();
        for (kind_index, kind) in scenario.hostile.kinds.iter().copied().enumerate() {
            for client in 0..scenario.hostile.clients_per_kind {
                let stream = seed
                    ^ HOSTILE_STREAM
                    ^ ((kind_index as u64 + 1) << 32)
                    ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9);
                tasks.push(tokio::spawn(run_client(
                    shared.clone(),
                    kind,
                    client,
                    SeededRng::new(stream),
                    phases.clone(),
                    stopped.clone(),
                )));
            }
        }
        Self {
            tasks,
            stop,
            records,
        }
    }

    /// Stops the clients (an action in flight finishes, within `bound`) and returns every
    /// action, in start order, with notes on clients that had to be cut off.
    pub async fn finish(self, bound: Duration) -> (Vec<ActionRecord>, Vec<String>) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + bound;
        let mut notes = Vec::new();
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                notes.push(format!(
                    "a hostile client was still busy {bound:?} after the end and was stopped"
                ));
            }
        }
        let mut records =
            std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner));
        records.sort_by_key(|record| record.started_ms);
        (records, notes)
    }
}

/// Pause between two actions of one client, so that a flood is an episode, not the whole
/// phase, and two cores still serve the honest clients in between.
fn pacing(kind: HostileKind) -> Duration {
    Duration::from_millis(match kind {
        HostileKind::PoisonUpload => 200,
        HostileKind::PingFlood | HostileKind::JoinFlood => 1_000,
        HostileKind::BadFrames => 300,
        HostileKind::HugeReplay => 500,
        HostileKind::ClusterPort => 1_000,
    })
}

/// One hostile client: in each hostile phase, actions one after another until the phase ends.
async fn run_client(
    shared: Shared,
    kind: HostileKind,
    client: usize,
    mut rng: SeededRng,
    phases: Arc<Vec<Phase>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut decks = Decks::default();
    let mut index = 0;
    for phase in phases.iter() {
        tokio::select! {
            _ = tokio::time::sleep_until(shared.clock.instant_of(phase.start_ms)) => {}
            _ = stop.changed() => return,
        }
        while shared.clock.now_ms() < phase.end_ms && !*stop.borrow() {
            let record = act(
                &shared,
                kind,
                client,
                index,
                phase.index,
                &mut rng,
                &mut decks,
            )
            .await;
            shared
                .progress
                .hostile_actions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared
                .records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record);
            index += 1;
            tokio::select! {
                _ = tokio::time::sleep(pacing(kind)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Seeded decks of variants: every variant once per round, in a seeded order, so a short run
/// still sees many different ones.
#[derive(Debug, Default)]
struct Decks {
    decks: std::collections::BTreeMap<&'static str, Vec<usize>>,
}

impl Decks {
    /// The next of `size` variants of the deck `name`.
    fn draw(&mut self, name: &'static str, size: usize, rng: &mut SeededRng) -> usize {
        let deck = self.decks.entry(name).or_default();
        if deck.is_empty() {
            *deck = (0..size).collect();
            // Fisher-Yates, from the end (the draw pops from the end).
            for position in (1..deck.len()).rev() {
                let other = rng.below(position as u64 + 1) as usize;
                deck.swap(position, other);
            }
        }
        deck.pop().unwrap_or(0)
    }
}

/// Runs one action of `kind` with its target probed meanwhile, and records it.
async fn act(
    shared: &Shared,
    kind: HostileKind,
    client: usize,
    index: u64,
    phase: usize,
    rng: &mut SeededRng,
    decks: &mut Decks,
) -> ActionRecord {
    let started_ms = shared.clock.now_ms();
    let draw = rng.next_u64();
    let (what, target, outcome, probes) = match kind {
        HostileKind::PoisonUpload => {
            let cases = &shared.prepared.uploads;
            if cases.is_empty() {
                skipped("nothing to upload (see the notes)")
            } else {
                let case = &cases[decks.draw("upload", cases.len(), rng)];
                match pick_target(shared, draw, None) {
                    Some(target) => {
                        let action = uploads::upload(shared, case, &target);
                        let (outcome, probes) = probed(shared, &target, action).await;
                        (case.describe(), target, outcome, probes)
                    }
                    None => skipped("no healthy node"),
                }
            }
        }
        HostileKind::HugeReplay => match &shared.prepared.replay {
            None => skipped("no replay room (see the notes)"),
            Some(room) => match pick_target(shared, draw, Some(&room.owner)) {
                Some(target) => {
                    let action = replay::replay(shared, room, &target);
                    let (outcome, probes) = probed(shared, &target, action).await;
                    (
                        format!("join since 0 of {} ({} owns it)", room.id, room.owner),
                        target,
                        outcome,
                        probes,
                    )
                }
                None => skipped("no healthy node other than the room's owner"),
            },
        },
        HostileKind::PingFlood | HostileKind::JoinFlood | HostileKind::BadFrames => {
            let variant = attacks::Variant::draw(kind, decks, rng);
            match pick_target(shared, draw, None) {
                Some(target) => {
                    let action = attacks::run(shared, variant, &target, index, client);
                    let (outcome, probes) = probed(shared, &target, action).await;
                    (variant.describe(), target, outcome, probes)
                }
                None => skipped("no healthy node"),
            }
        }
        HostileKind::ClusterPort => {
            let variant = cluster_port::Variant::draw(decks, rng);
            match pick_target(shared, draw, None) {
                Some(target) => {
                    let action = cluster_port::run(shared, variant, &target, draw);
                    let (outcome, probes) = probed(shared, &target, action).await;
                    (variant.describe(), target, outcome, probes)
                }
                None => skipped("no healthy node"),
            }
        }
    };
    ActionRecord {
        kind,
        client,
        index,
        phase,
        what,
        target,
        started_ms,
        ended_ms: shared.clock.now_ms(),
        got: outcome.got,
        detail: outcome.detail,
        judgement: outcome.judgement,
        slowest_probe_ms: probes.slowest_ms,
        unresponsive: probes.unresponsive,
        during_fault: false,
        excused_by_fault: false,
        probe_excused_by_fault: false,
    }
}

fn skipped(why: &str) -> (String, String, Outcome, Probes) {
    (
        String::new(),
        String::new(),
        Outcome::new(Judgement::Skipped, format!("skipped: {why}"), ""),
        Probes::default(),
    )
}

/// The node drawn (`draw` over every node but `except`), or the next one after it that is
/// running, not under a fault, and not `except`.
fn pick_target(shared: &Shared, draw: u64, except: Option<&str>) -> Option<String> {
    let nodes: Vec<String> = shared
        .cluster
        .node_ids()
        .into_iter()
        .filter(|node| Some(node.as_str()) != except)
        .collect();
    if nodes.is_empty() {
        return None;
    }
    let faulted = shared.injector.faulted_nodes();
    let first = (draw % nodes.len() as u64) as usize;
    (0..nodes.len())
        .map(|offset| &nodes[(first + offset) % nodes.len()])
        .find(|node| !faulted.contains(*node) && shared.cluster.process_state(node).is_live())
        .cloned()
}

/// What the probes of one action saw.
#[derive(Debug, Default)]
struct Probes {
    slowest_ms: Option<u64>,
    unresponsive: Option<String>,
}

/// Runs `action` while a task probes `target`'s `/healthz` every [`PROBE_INTERVAL`], then
/// probes once more.
async fn probed(
    shared: &Shared,
    target: &str,
    action: impl std::future::Future<Output = Outcome>,
) -> (Outcome, Probes) {
    let (done, done_seen) = watch::channel(false);
    let prober = tokio::spawn(probe_loop(shared.clone(), target.to_string(), done_seen));
    let outcome = action.await;
    let _ = done.send(true);
    let mut probes = prober.await.unwrap_or_default();
    probe(shared, target, &mut probes).await;
    (outcome, probes)
}

async fn probe_loop(shared: Shared, target: String, mut done: watch::Receiver<bool>) -> Probes {
    let mut probes = Probes::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = done.changed() => return probes,
        }
        probe(&shared, &target, &mut probes).await;
    }
}

/// One `GET /healthz` of `target`, bounded by the unresponsiveness bound.
async fn probe(shared: &Shared, target: &str, probes: &mut Probes) {
    // A node that is not running or is frozen cannot answer; a fault did that.
    if !shared.cluster.process_state(target).is_live() {
        return;
    }
    let started = Instant::now();
    let url = format!("{}/healthz", shared.cluster.http_url(target));
    let answered = shared
        .http
        .get(&url)
        .timeout(shared.bound)
        .send()
        .await
        .map(|response| response.status());
    let waited_ms = started.elapsed().as_millis() as u64;
    let live_after = shared.cluster.process_state(target).is_live();
    match answered {
        Ok(status) if status.is_success() => {
            probes.slowest_ms = Some(probes.slowest_ms.unwrap_or(0).max(waited_ms));
        }
        _ if !live_after => {}
        Ok(status) => {
            probes.unresponsive.get_or_insert(format!(
                "{target} answered /healthz with {status} after {waited_ms} ms"
            ));
        }
        Err(error) => {
            probes.unresponsive.get_or_insert(format!(
                "{target} did not answer /healthz within {:?}: {error}",
                shared.bound
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::RangeMs;

    #[test]
    fn phases_alternate_between_the_warmup_and_the_cooldown_and_replay() {
        let mut scenario = Scenario::default();
        assert!(phases(42, &scenario).is_empty(), "off by default");
        scenario.hostile.enabled = true;
        let planned = phases(42, &scenario);
        assert!(planned.len() >= 3, "{planned:?}");
        assert_eq!(planned[0].start_ms, scenario.warmup.as_millis() as u64);
        let end = (scenario.duration - scenario.cooldown).as_millis() as u64;
        for pair in planned.windows(2) {
            let quiet = pair[1].start_ms - pair[0].end_ms;
            assert!(
                (scenario.hostile.quiet_ms.min..=scenario.hostile.quiet_ms.max).contains(&quiet),
                "{planned:?}"
            );
        }
        assert!(planned.iter().all(|phase| phase.end_ms <= end
            && phase.end_ms - phase.start_ms <= scenario.hostile.active_ms.max));
        assert_eq!(planned, phases(42, &scenario));
        assert_ne!(planned, phases(43, &scenario));
        scenario.hostile.active_ms = RangeMs::new(100_000, 100_000);
        assert_eq!(
            phases(1, &scenario).len(),
            1,
            "one phase cut at the cooldown"
        );
    }

    #[test]
    fn decks_deal_every_variant_once_per_round() {
        let mut decks = Decks::default();
        let mut rng = SeededRng::new(7);
        let mut round: Vec<usize> = (0..9).map(|_| decks.draw("x", 9, &mut rng)).collect();
        round.sort_unstable();
        assert_eq!(round, (0..9).collect::<Vec<_>>());
    }
}
