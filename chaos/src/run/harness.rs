//! The harness task of one run, inside the client namespace: the cluster, the honest and
//! hostile clients, the faults, the drain, the ground truth read back, the invariants and the
//! report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::watch;

use super::{RunOptions, lock, unix_ms};
use crate::checker::{self, CounterExample, InvariantResult};
use crate::cluster::{ClusterBuilder, TestCluster};
use crate::faults::{self, Injector};
use crate::hostile::{self, HostileRun};
use crate::jobs::{self, JobBook};
use crate::netns::Network;
use crate::process_watch::{self, NodeWatch};
use crate::records::{ClientLog, FaultRecord, StoredMessage};
use crate::report::{self, CounterTotal, Report};
use crate::scenario::JobsMode;
use crate::schedule;
use crate::scrape::{self, CounterTotals};
use crate::timeline;
use crate::workload::{self, ClientSpec, Clock, Progress, Signals};
use crate::{latency, progress, rooms, verdict};

/// Deadline for the cluster to start (nodes ready, all up).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for the jobs to finish after the run.
const JOBS_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Beyond the job timeout, how long the hostile clients' last actions may take at the end (a
/// poison upload follows its job to the end).
const HOSTILE_FINISH_SLACK: Duration = Duration::from_secs(60);

/// The bucket of a run on an S3 server.
const S3_BUCKET: &str = "chaos";

/// Everything one run needs, moved into the harness task.
pub(super) struct Harness {
    pub(super) options: RunOptions,
    pub(super) seed: u64,
    pub(super) out_dir: PathBuf,
    pub(super) network: Option<Arc<Mutex<Network>>>,
    pub(super) notes: Vec<String>,
    pub(super) cluster_slot: Arc<Mutex<Option<Arc<TestCluster>>>>,
}

impl Harness {
    pub(super) async fn run(mut self) -> anyhow::Result<Report> {
        let scenario = self.options.scenario.clone();
        let started_unix_ms = unix_ms();
        // The S3 server, when the run uses one, lives until the run ends.
        let s3 = match scenario.s3 {
            true => Some(crate::s3::MotoServer::start().await?),
            false => None,
        };
        if let Some(server) = &s3 {
            server.bucket(S3_BUCKET).await?;
            self.notes.push(format!(
                "the shared store is an S3 server (moto) at {}; job outputs are checked by download only",
                server.endpoint
            ));
        }
        let cluster = Arc::new(self.start_cluster(s3.as_ref()).await?);
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
        // The hostile clients' material (the corpus, the replay room), before the clock starts.
        let mut hostile_prepared = if scenario.hostile.enabled {
            Some(hostile::prepare(&cluster, &http, &scenario.hostile, jobs_enabled.clone()).await)
        } else {
            None
        };
        let hostile_notes = hostile_prepared
            .as_mut()
            .map(|prepared| std::mem::take(&mut prepared.notes))
            .unwrap_or_default();
        let hostile_phases = hostile::phases(self.seed, &scenario);
        let phase_spans: Vec<(u64, u64)> = hostile_phases
            .iter()
            .map(|phase| (phase.start_ms, phase.end_ms))
            .collect();

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
        let node_watch = Arc::new(NodeWatch::new(
            clock,
            scenario.memory_bytes_max,
            phase_spans.clone(),
        ));
        let (stop_watching, watching_stopped) = watch::channel(false);
        let watcher = tokio::spawn(node_watch.clone().run(cluster.clone(), watching_stopped));

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
        let hostile_run = hostile_prepared.map(|prepared| {
            let surroundings = hostile::Surroundings {
                cluster: cluster.clone(),
                http: http.clone(),
                clock,
                injector: injector.clone(),
                progress: progress.clone(),
            };
            HostileRun::start(surroundings, &scenario, self.seed, prepared)
        });
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
        let (mut hostile_actions, hostile_finish_notes) = match hostile_run {
            Some(run) => {
                let bound =
                    Duration::from_millis(scenario.hostile.job_timeout_ms) + HOSTILE_FINISH_SLACK;
                run.finish(bound).await
            }
            None => (Vec::new(), Vec::new()),
        };
        self.notes.extend(hostile_finish_notes);
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
                (!scenario.s3)
                    .then(|| cluster.dir().join("data").join("objects"))
                    .as_deref(),
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
        let _ = stop_watching.send(true);
        let _ = watcher.await;
        node_watch.sample(&cluster);

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
        invariants.push(verdict::member_downs_result(
            &counters.increases_after_baseline(scrape::MEMBER_DOWNS),
            &faults,
            workload_ms,
        ));
        let exits = process_watch::exits(&cluster, clock);
        invariants.push(process_watch::exits_result(&exits));
        let memory = node_watch.report();
        invariants.push(process_watch::rss_result(&memory));
        let hostile_report = hostile::report(
            scenario.hostile.enabled,
            hostile_phases,
            &mut hostile_actions,
            &faults,
            workload_ms,
            hostile_notes,
        );
        invariants.push(hostile::answers_result(
            scenario.hostile.enabled,
            &hostile_actions,
        ));
        invariants.push(hostile::responsive_result(
            scenario.hostile.enabled,
            &hostile_actions,
        ));

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
        let timeline_png = match timeline::draw(
            &timeline_path,
            &acks_per_second,
            &faults,
            &phase_spans,
            self.seed,
        ) {
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
            latency: latency::by_phase(&logs, &phase_spans, &faults, posting_end_ms),
            memory,
            exits,
            hostile: hostile_report,
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
        if scenario.hostile.enabled {
            write_json(
                &self.out_dir.join("hostile.json"),
                &serde_json::to_value(&hostile_actions)?,
            )?;
        }
        let stored: BTreeMap<&String, &Vec<StoredMessage>> = histories.iter().collect();
        write_json(
            &self.out_dir.join("histories.json"),
            &serde_json::to_value(stored)?,
        )?;
        println!("{}", report.summary());
        Ok(report)
    }

    async fn start_cluster(
        &self,
        s3: Option<&crate::s3::MotoServer>,
    ) -> anyhow::Result<TestCluster> {
        let scenario = &self.options.scenario;
        let mut builder = ClusterBuilder::new(&self.options.node_binary)
            .nodes(scenario.nodes)
            .directory(self.out_dir.join("cluster"))
            .start_timeout(START_TIMEOUT)
            .tls(scenario.tls)
            // Nodes in their own network namespaces listen beyond loopback: plaintext there
            // must be allowed explicitly.
            .setting("cluster", "plaintext_beyond_loopback", !scenario.tls)
            // The workload's clients post as fast as acks come and ping; the per-connection
            // rate limit is not what this run tests (the hostile clients' floods set their own).
            .setting("sessions", "messages_per_second", 10_000)
            .setting(
                "limits",
                "memory_bytes_max",
                i64::try_from(scenario.memory_bytes_max).unwrap_or(i64::MAX),
            );
        if scenario.hostile.enabled {
            // Floods are closed at four times the rate: a rate the honest clients stay well
            // under, low enough that a flood is over after thousands of frames, not 80 000.
            builder = builder
                .setting(
                    "sessions",
                    "messages_per_second",
                    i64::from(scenario.hostile.messages_per_second),
                )
                // A poison job ends within the run.
                .setting(
                    "jobs",
                    "timeout_ms",
                    i64::try_from(scenario.hostile.job_timeout_ms).unwrap_or(i64::MAX),
                );
        }
        if let Some(network) = &self.network {
            let network = lock(network);
            builder = builder.placements(
                (1..=scenario.nodes)
                    .map(|index| network.placement(index))
                    .collect(),
            );
        }
        if let Some(server) = s3 {
            for (key, value) in server.storage_settings(S3_BUCKET) {
                builder = builder.setting("storage", key, value);
            }
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
