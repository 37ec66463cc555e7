//! One chaos run from start to verdict: network, cluster, workload, faults, final heal,
//! drain, ground truth, checks, report; and the clean-up that must happen whatever went wrong.
//!
//! Threads: the main thread stays in the root network namespace and only builds and removes
//! the network. Everything that talks to the nodes runs on a tokio runtime whose threads entered
//! the client namespace when they started (with namespaces), so no socket of the harness is ever
//! made in the root namespace. That runtime runs the harness task (`run/harness.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

use crate::cluster::TestCluster;
use crate::netns::{self, Network};
use crate::scenario::{FaultKind, NetworkMode, Scenario};

mod harness;

use harness::Harness;

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
        // The S3 server listens on loopback, which a node in its own namespace cannot reach.
        NetworkMode::Netns | NetworkMode::Auto if options.scenario.s3 => {
            let note = "the store is an S3 server on loopback: nodes run on loopback, partitions are unavailable".to_string();
            eprintln!("chaos: {note}");
            notes.push(note);
            false
        }
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
