//! One chaos run from start to verdict: network, cluster, workload, faults, final heal,
//! drain, ground truth, checks, report; and the clean-up that must happen whatever went wrong.
//!
//! Threads: the main thread stays in the root network namespace and only builds and removes
//! the network. Everything that talks to the nodes runs on a tokio runtime whose threads entered
//! the client namespace when they started (with namespaces), so no socket of the harness is ever
//! made in the root namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use serde_json::Value;
use tokio::sync::watch;

use crate::checker::{self, CounterExample, InvariantResult};
use crate::cluster::{ClusterBuilder, TestCluster};
use crate::faults::{self, Injector};
use crate::jobs::{self, JobBook};
use crate::netns::{self, Network};
use crate::records::{ClientLog, FaultRecord, StoredMessage};
use crate::report::{self, CounterTotal, Report};
use crate::scenario::{FaultKind, JobsMode, NetworkMode, Scenario};
use crate::schedule;
use crate::scrape::{self, CounterTotals};
use crate::timeline;
use crate::workload::{self, ClientSpec, Clock, Progress, Signals};
use crate::{progress, rooms, verdict};

/// Deadline for the cluster to start (nodes ready, all up).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for the jobs to finish after the run.
const JOBS_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace for the runtime's tasks to stop at the end.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// An invariant was violated.
    Failed,
    /// The harness could not do its job (the cluster did not start, ...).
    Error,
    Interrupted,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Failed => 1,
            Outcome::Error => 2,
            Outcome::Interrupted => 130,
        }
    }
}

/// What the command line gives besides the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub out_dir: Option<PathBuf>,
    pub node_binary: PathBuf,
    /// The command that replays this run, for the report.
    pub replay_command: String,
}

/// Runs the scenario; cleans up everything it created before returning.
pub fn run(options: RunOptions) -> Outcome {
    let seed = options.scenario.seed.unwrap_or_else(seed_from_clock);
    println!("chaos: seed {seed}");
    let outcome = run_with_seed(options, seed);
    println!(
        "chaos: seed {seed}: {}",
        match outcome {
            Outcome::Passed => "PASS",
            Outcome::Failed => "FAIL (an invariant was violated)",
            Outcome::Error => "ERROR (the harness could not complete the run)",
            Outcome::Interrupted => "INTERRUPTED",
        }
    );
    outcome
}

fn run_with_seed(mut options: RunOptions, seed: u64) -> Outcome {
    options.scenario.seed = Some(seed);
    let mut notes = Vec::new();
    let leftovers = netns::remove_leftovers();
    if !leftovers.is_empty() {
        notes.push(format!(
            "removed leftovers of earlier runs: {}",
            leftovers.join(", ")
        ));
        eprintln!(
            "chaos: removed leftovers of earlier runs: {}",
            leftovers.join(", ")
        );
    }
    let use_namespaces = match options.scenario.network {
        NetworkMode::Loopback => false,
        NetworkMode::Netns => match netns::unavailable_reason() {
            None => true,
            Some(reason) => {
                eprintln!("chaos: network namespaces requested but unavailable: {reason}");
                return Outcome::Error;
            }
        },
        NetworkMode::Auto => match netns::unavailable_reason() {
            None => true,
            Some(reason) => {
                let note = format!(
                    "network namespaces unavailable ({reason}): nodes run on loopback, partitions are unavailable"
                );
                eprintln!("chaos: {note}");
                notes.push(note);
                false
            }
        },
    };
    if !use_namespaces && options.scenario.faults.contains(&FaultKind::Partition) {
        options
            .scenario
            .faults
            .retain(|kind| *kind != FaultKind::Partition);
        let note = "partition faults skipped: they need network namespaces (root, `ip`, `nft`)"
            .to_string();
        eprintln!("chaos: {note}");
        notes.push(note);
    }
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/{seed}-{}", timestamp())));
    if out_dir.join("cluster").exists() {
        // A new cluster on an old one's data would load its journals and jobs.
        eprintln!(
            "chaos: {} holds an earlier run (its cluster/ folder); delete it or choose another --out",
            out_dir.display()
        );
        return Outcome::Error;
    }
    if let Err(error) = std::fs::create_dir_all(&out_dir) {
        eprintln!("chaos: cannot create {}: {error}", out_dir.display());
        return Outcome::Error;
    }
    let out_dir = std::fs::canonicalize(&out_dir).unwrap_or(out_dir);

    let network = if use_namespaces {
        match Network::create(options.scenario.nodes) {
            Ok(network) => Some(Arc::new(Mutex::new(network))),
            Err(error) => {
                eprintln!("chaos: {error:#}");
                return Outcome::Error;
            }
        }
    } else {
        None
    };
    let client_namespace = network
        .as_ref()
        .map(|network| lock(network).client_namespace());
    let runtime = match build_runtime(client_namespace) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos: {error:#}");
            return Outcome::Error;
        }
    };
    // The cluster is kept here too, so its nodes are killed even when the harness task is
    // dropped half-way (Ctrl-C, panic).
    let cluster_slot: Arc<Mutex<Option<Arc<TestCluster>>>> = Arc::new(Mutex::new(None));
    let context = Harness {
        options,
        seed,
        out_dir,
        network: network.clone(),
        notes,
        cluster_slot: cluster_slot.clone(),
    };
    let outcome = runtime.block_on(async move {
        let harness = tokio::spawn(context.run());
        tokio::select! {
            joined = harness => match joined {
                Ok(Ok(report)) => if report.passed() { Outcome::Passed } else { Outcome::Failed },
                Ok(Err(error)) => {
                    eprintln!("chaos: run failed: {error:#}");
                    Outcome::Error
                }
                Err(error) => {
                    eprintln!("chaos: the harness panicked: {error}");
                    Outcome::Error
                }
            },
            signal = termination_signal() => {
                eprintln!("\nchaos: {signal}: stopping and cleaning up");
                Outcome::Interrupted
            }
        }
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    // Every task is gone: this is the last reference, and dropping it SIGKILLs the nodes.
    drop(lock(&cluster_slot).take());
    if let Some(network) = network {
        let problems = lock(&network).remove();
        for problem in &problems {
            eprintln!("chaos: cleanup: {problem}");
        }
        let prefix = lock(&network).prefix().to_string();
        if Path::new("/run/netns").read_dir().is_ok_and(|mut entries| {
            entries.any(|entry| {
                entry.is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            })
        }) {
            eprintln!("chaos: cleanup: namespaces {prefix}-* are still there");
        }
    }
    outcome
}

/// Resolves with a description when SIGINT, SIGTERM or SIGHUP arrives.
async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
        _ = terminate.recv() => "terminated (SIGTERM)",
        _ = hangup.recv() => "hung up (SIGHUP)",
    }
}

fn build_runtime(client_namespace: Option<String>) -> anyhow::Result<tokio::runtime::Runtime> {
    if let Some(namespace) = &client_namespace {
        // Check once on a throw-away thread, so a failure is an error here rather than an abort
        // in a runtime thread.
        let probe = namespace.clone();
        std::thread::spawn(move || netns::enter_namespace(&probe))
            .join()
            .map_err(|_| anyhow!("the namespace probe thread panicked"))?
            .with_context(|| format!("entering network namespace {namespace}"))?;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all().thread_name("chaos");
    if let Some(namespace) = client_namespace {
        builder.on_thread_start(move || {
            if let Err(error) = netns::enter_namespace(&namespace) {
                // A thread outside the namespace would talk to nodes from the root namespace.
                eprintln!("chaos: a runtime thread cannot enter {namespace}: {error}; aborting");
                std::process::abort();
            }
        });
    }
    builder.build().context("building the tokio runtime")
}

/// Everything one run needs, moved into the harness task.
struct Harness {
    options: RunOptions,
    seed: u64,
    out_dir: PathBuf,
    network: Option<Arc<Mutex<Network>>>,
    notes: Vec<String>,
    cluster_slot: Arc<Mutex<Option<Arc<TestCluster>>>>,
}

impl Harness {
    async fn run(mut self) -> anyhow::Result<Report> {
        let scenario = self.options.scenario.clone();
        let started_unix_ms = unix_ms();
        let cluster = Arc::new(self.start_cluster().await?);
        *lock(&self.cluster_slot) = Some(cluster.clone());
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client")?;
        let node_ids = cluster.node_ids();
        let node_urls: Vec<String> = node_ids.iter().map(|id| cluster.http_url(id)).collect();
        println!(
            "chaos: cluster of {} nodes up ({}); logs in {}",
            node_ids.len(),
            node_urls.join(" "),
            cluster.dir().display()
        );

        let rooms = rooms::create_rooms(&http, &node_ids, &node_urls, scenario.rooms).await?;
        let jobs_enabled = match scenario.jobs {
            JobsMode::Off => Err("off in the scenario".to_string()),
            JobsMode::Auto => jobs::detect(&http, &node_urls[0]).await,
        };
        match &jobs_enabled {
            Ok(()) => println!(
                "chaos: jobs API found: the workload submits conversion jobs and checks them"
            ),
            Err(reason) => println!(
                "chaos: jobs workload disabled ({reason}); it is wired and turns on when the cluster serves GET /api/converters"
            ),
        }

        // The workload.
        let clock = Clock::start();
        let progress = Arc::new(Progress::default());
        let (stop_posting_sender, stop_posting) = watch::channel(false);
        let (stop_now_sender, stop_now) = watch::channel(false);
        let signals = Signals {
            stop_posting: stop_posting.clone(),
            stop_now,
        };
        let node_pairs: Vec<(String, String)> = node_ids
            .iter()
            .cloned()
            .zip(node_urls.iter().cloned())
            .collect();
        let mut clients = Vec::new();
        for (room_index, room) in rooms.iter().enumerate() {
            for (home, node) in node_ids.iter().enumerate() {
                let spec = ClientSpec {
                    user: format!("chaos-r{room_index}-{node}"),
                    room: room.clone(),
                    nodes: node_pairs.clone(),
                    home,
                    spread: room_index,
                    post_interval: Duration::from_millis(scenario.post_interval_ms),
                };
                clients.push(tokio::spawn(workload::run_client(
                    spec,
                    clock,
                    progress.clone(),
                    signals.clone(),
                )));
            }
        }
        let book = Arc::new(JobBook::default());
        let mut submitters = Vec::new();
        if jobs_enabled.is_ok() {
            for (home, node) in node_ids.iter().enumerate() {
                let user = format!("chaos-jobs-{node}");
                let submitter = jobs::Submitter {
                    http: http.clone(),
                    user,
                    nodes: node_urls.clone(),
                    home,
                    book: book.clone(),
                    clock,
                    progress: progress.clone(),
                };
                submitters.push(tokio::spawn(jobs::submitter(
                    submitter,
                    stop_posting.clone(),
                )));
            }
        }
        let counters = Arc::new(CounterTotals::new(clock));
        let (stop_scraping, scraping_stopped) = watch::channel(false);
        let scraper = tokio::spawn(counters.clone().run(
            cluster.clone(),
            http.clone(),
            scraping_stopped,
        ));

        // The faults.
        let injector = Arc::new(Injector {
            cluster: cluster.clone(),
            network: self.network.clone(),
            scenario: scenario.clone(),
            clock,
            rooms: rooms.clone(),
            http: http.clone(),
            progress: progress.clone(),
            records: Mutex::new(Vec::new()),
            faulted: Mutex::new(Default::default()),
            active: Mutex::new(Vec::new()),
        });
        let duration_ms = scenario.duration.as_millis() as u64;
        let faults_end_ms = duration_ms.saturating_sub(scenario.cooldown.as_millis() as u64);
        let lanes = schedule::lanes(self.seed, &scenario, &node_ids, self.network.is_some());
        let mut lane_tasks = Vec::new();
        for lane in lanes {
            let injector = injector.clone();
            let warmup = scenario.warmup;
            lane_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                injector.run_lane(lane, faults_end_ms).await;
            }));
        }
        let (stop_progress, progress_stopped) = watch::channel(false);
        let progress_task = tokio::spawn(progress::show_progress(
            clock,
            duration_ms,
            progress.clone(),
            injector.clone(),
            progress_stopped,
        ));

        tokio::time::sleep_until(clock.instant_of(duration_ms)).await;
        // Faults end before the cooldown; a lane still busy is waiting for a recovery.
        for task in lane_tasks {
            let bound = scenario.all_up_timeout * 2 + Duration::from_secs(30);
            if tokio::time::timeout(bound, task).await.is_err() {
                self.notes.push(format!(
                    "a fault lane was still busy {bound:?} after the end of the run"
                ));
            }
        }

        // Heal everything, all up, drain.
        println!("chaos: healing everything, waiting for all up, draining the clients");
        let heal_problems = injector.heal_everything().await;
        self.notes.extend(heal_problems.iter().cloned());
        let all_up = cluster.wait_all_up(scenario.all_up_timeout).await;
        let posting_end_ms = clock.now_ms();
        let _ = stop_posting_sender.send(true);
        let drain_deadline = tokio::time::Instant::now() + scenario.drain_timeout;
        let mut logs: Vec<ClientLog> = Vec::new();
        let mut undrained = 0;
        for client in clients {
            let remaining = drain_deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut client = client;
            let log = match tokio::time::timeout(remaining, &mut client).await {
                Ok(joined) => joined,
                Err(_) => {
                    undrained += 1;
                    let _ = stop_now_sender.send(true);
                    client.await
                }
            };
            match log {
                Ok(log) => logs.push(log),
                Err(error) => self.notes.push(format!("a client task failed: {error}")),
            }
        }
        let _ = stop_now_sender.send(true);
        if undrained > 0 {
            self.notes.push(format!(
                "{undrained} clients still had a post in flight {:?} after the end; stopped",
                scenario.drain_timeout
            ));
        }
        for submitter in submitters {
            let _ = submitter.await;
        }
        let _ = stop_progress.send(true);
        let _ = progress_task.await;
        let _ = stop_scraping.send(true);
        let _ = scraper.await;
        counters.scrape(&cluster, &http).await;
        let workload_ms = clock.now_ms();

        // Ground truth.
        if jobs_enabled.is_ok() {
            println!("chaos: waiting for the accepted jobs to finish");
            jobs::settle(
                &http,
                &node_urls,
                &book,
                &cluster.dir().join("data").join("objects"),
                clock,
                JOBS_SETTLE_TIMEOUT,
            )
            .await;
        }
        let live_urls: Vec<String> = cluster
            .live_node_ids()
            .iter()
            .map(|id| cluster.http_url(id))
            .collect();
        let (histories, unreadable) = rooms::read_histories(&http, &live_urls, &rooms).await;
        for (room, error) in &unreadable {
            self.notes
                .push(format!("history of {room} unreadable: {error}"));
        }

        // Checks.
        let mut faults: Vec<FaultRecord> = std::mem::take(&mut *lock(&injector.records));
        faults.sort_by_key(|fault| fault.started_ms);
        for (index, fault) in faults.iter_mut().enumerate() {
            fault.index = index;
            fault.first_served_ms = faults::first_served_ms(fault, &logs);
            let end_ms = fault
                .recovered_ms
                .or(fault.healed_ms)
                .unwrap_or(workload_ms)
                + scrape::SCRAPE_INTERVAL.as_millis() as u64 * 2;
            fault.journal_conflicts =
                counters.increase_between(scrape::JOURNAL_CONFLICTS, fault.started_ms, end_ms);
        }
        let mut invariants = checker::check_chat(&histories, &logs);
        if !unreadable.is_empty() {
            let findings = unreadable
                .iter()
                .map(|(room, error)| CounterExample {
                    room: Some(room.clone()),
                    ..CounterExample::new(format!("history unreadable after the run: {error}"))
                })
                .collect();
            invariants.push(InvariantResult::from_findings(
                "histories_readable",
                rooms.len() as u64,
                findings,
            ));
        }
        let jobs_records = book.records();
        match &jobs_enabled {
            Ok(()) => invariants.extend(checker::check_jobs(&jobs_records)),
            Err(reason) => {
                let why = format!("jobs workload disabled: {reason}");
                invariants.push(InvariantResult::skipped("jobs_finish", &why));
                invariants.push(InvariantResult::skipped("jobs_one_output", &why));
            }
        }
        invariants.push(verdict::all_up_result(&faults, &all_up, &scenario));
        invariants.push(verdict::failover_result(&faults, &scenario));

        let first_violation =
            invariants
                .iter()
                .find(|invariant| !invariant.passed)
                .map(|invariant| {
                    format!(
                        "{}: {}",
                        invariant.name,
                        invariant
                            .first_counterexample
                            .as_ref()
                            .map_or("(no example)".to_string(), ToString::to_string)
                    )
                });
        let messages_stored = histories.values().map(|history| history.len() as u64).sum();
        let (conflicts, conflicts_per_node) = counters.total(scrape::JOURNAL_CONFLICTS);
        let (duplicates, duplicates_per_node) = counters.total(scrape::ENTITY_DUPLICATES);
        let acks_per_second = report::acks_per_second(&logs, posting_end_ms);
        let timeline_path = self.out_dir.join("timeline.png");
        let timeline_png =
            match timeline::draw(&timeline_path, &acks_per_second, &faults, self.seed) {
                Ok(true) => Some(timeline_path.display().to_string()),
                Ok(false) => {
                    self.notes.push(format!(
                    "timeline drawn without text: no font at {} (Debian package fonts-dejavu-core)",
                    timeline::FONT_PATH
                ));
                    Some(timeline_path.display().to_string())
                }
                Err(error) => {
                    self.notes.push(format!("timeline not drawn: {error:#}"));
                    None
                }
            };
        let jobs_reason = jobs_enabled
            .clone()
            .err()
            .or_else(|| book.disabled_reason());
        let mut report = Report {
            seed: self.seed,
            verdict: String::new(),
            replay: self.options.replay_command.clone(),
            scenario: scenario.clone(),
            network: if self.network.is_some() {
                "network namespaces".into()
            } else {
                "loopback".into()
            },
            notes: self.notes.clone(),
            started_unix_ms,
            workload_ms,
            out_dir: self.out_dir.display().to_string(),
            cluster_dir: cluster.dir().display().to_string(),
            timeline_png,
            first_violation,
            invariants,
            failover: report::failover_by_kind(&faults, &scenario),
            throughput: report::throughput(&logs, &faults, posting_end_ms),
            totals: report::totals(&logs, rooms.len(), messages_stored),
            stale_owner_rejections: CounterTotal {
                total: conflicts,
                per_node: conflicts_per_node,
                outside_faults: conflicts
                    .saturating_sub(faults.iter().map(|fault| fault.journal_conflicts).sum()),
            },
            retries_answered_from_journal: CounterTotal {
                total: duplicates,
                per_node: duplicates_per_node,
                outside_faults: 0,
            },
            jobs: report::jobs_summary(jobs_enabled.is_ok(), jobs_reason, &jobs_records),
            faults,
            acks_per_second,
        };
        report.verdict = if report.passed() {
            "pass".into()
        } else {
            "fail".into()
        };
        write_json(
            &self.out_dir.join("report.json"),
            &serde_json::to_value(&report)?,
        )?;
        write_json(
            &self.out_dir.join("clients.json"),
            &serde_json::to_value(&logs)?,
        )?;
        let stored: BTreeMap<&String, &Vec<StoredMessage>> = histories.iter().collect();
        write_json(
            &self.out_dir.join("histories.json"),
            &serde_json::to_value(stored)?,
        )?;
        println!("{}", report.summary());
        Ok(report)
    }

    async fn start_cluster(&self) -> anyhow::Result<TestCluster> {
        let scenario = &self.options.scenario;
        let mut builder = ClusterBuilder::new(&self.options.node_binary)
            .nodes(scenario.nodes)
            .directory(self.out_dir.join("cluster"))
            .start_timeout(START_TIMEOUT)
            // The workload's clients post as fast as acks come and ping; the per-connection
            // rate limit is not what this run tests.
            .setting("sessions", "messages_per_second", 10_000);
        if let Some(network) = &self.network {
            let network = lock(network);
            builder = builder.placements(
                (1..=scenario.nodes)
                    .map(|index| network.placement(index))
                    .collect(),
            );
        }
        if let Some(interval) = scenario.heartbeat_interval_ms {
            builder = builder.setting("cluster", "heartbeat_interval_ms", interval as i64);
        }
        if let Some(timeout) = scenario.failure_timeout_ms {
            builder = builder.setting("cluster", "failure_timeout_ms", timeout as i64);
        }
        builder.start().await
    }
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

/// A seed when none was given: the clock's nanoseconds, reduced to something easy to type.
fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    (nanos % 1_000_000_000) as u64
}

/// `YYYYMMDD-HHMMSS` in UTC, for the default output folder.
fn timestamp() -> String {
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| format!("unix{}", unix_ms() / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_folders_are_named_by_the_utc_time() {
        let stamp = timestamp();
        assert_eq!(stamp.len(), "20260301-123456".len(), "{stamp}");
        assert_eq!(stamp.as_bytes()[8], b'-', "{stamp}");
        assert!(
            stamp
                .chars()
                .filter(|c| *c != '-')
                .all(|c| c.is_ascii_digit()),
            "{stamp}"
        );
        assert!(stamp.as_str() > "2024", "{stamp}");
    }
}
