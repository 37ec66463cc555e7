//! One run of a job on this node: wait for a conversion slot, copy the input into a private
//! directory, claim an attempt (`Running`, journaled before any work), convert in a worker
//! process through a converter port while forwarding progress, write the output once, report
//! `Finish`.
//!
//! A worker that dies without a result (a crash, a kill) ends its attempt without a result
//! (`AttemptFailed`); the job answers whether another attempt may start, and the run loops
//! until a result or the job's `max_attempts` (poison quarantine, `runtime::attempts`).
//!
//! A run that meets a passing problem (the object store or the entity unreachable) gives up
//! without a verdict: the job stays unfinished and the reviver starts a new run later. Only the
//! conversion's own outcome (an output, or a reason it cannot be made) finishes the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use runtime::{EntityRef, Runtime};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

use super::metrics as names;
use super::pool::{Task, WorkerPool};
use super::port::protocol::{PROTOCOL_VERSION, Request};
use super::port::sandbox::WorkerLimits;
use super::port::{PortJob, PortOutcome, PrivateDirectory, WorkerProgram, convert_in_port};
use super::request::{AttemptFailed, Finish, Progress, Running};
use super::{Job, JobInfo, OutputInfo, output_file_name, store};
use crate::config::JobsSection;
use crate::job::format::Format;

/// Least time between two progress messages of one run (progress is coalesced meanwhile).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How long a run keeps trying to report its outcome (the job's owner may be failing over).
const FINISH_ASK_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts one run makes on this node before it leaves the job to the reviver (the job's own
/// `max_attempts` normally ends it first).
const ATTEMPTS_PER_RUN_MAX: u32 = 100;

/// What a run needs to know.
pub(super) struct Run {
    pub runtime: Runtime,
    pub pool: WorkerPool,
    pub program: WorkerProgram,
    /// `[jobs]`: the worker limits.
    pub settings: Arc<JobsSection>,
    pub job: String,
    pub info: JobInfo,
}

enum Outcome {
    Output(OutputInfo),
    Failed(String),
    /// The worker died without a result: the attempt ends without one.
    Crashed(String),
    /// Give up this run without a verdict; another one will come.
    Retry(String),
}

pub(super) async fn run(run: Run, task: Arc<Task>) {
    let entity = run.runtime.entity::<Job>(run.job.clone());
    for _ in 0..ATTEMPTS_PER_RUN_MAX {
        let permit = run.pool.acquire().await;
        if task.is_cancelled() {
            return;
        }
        // The input is copied before the attempt is claimed: a store that cannot be read now
        // says nothing about the input and must not cost an attempt.
        let directory = match stage_input(&run).await {
            Ok(directory) => directory,
            Err(Outcome::Retry(reason)) => {
                tracing::warn!(job = %run.job, %reason, "job run gave up; the reviver retries");
                return;
            }
            Err(outcome) => {
                finish(&run, &entity, "", outcome).await;
                return;
            }
        };
        let attempt = format!("{}-{}", run.runtime.node_id(), run.runtime.next_msg_id());
        match entity
            .ask(Running {
                attempt: attempt.clone(),
            })
            .await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false) | Err(_)) => return,
            Err(error) => {
                tracing::warn!(job = %run.job, %error, "could not claim the job; the reviver retries");
                return;
            }
        }
        metrics::counter!(names::ATTEMPTS_TOTAL).increment(1);
        let outcome = attempt_once(&run, &task, &entity, &attempt, &directory).await;
        drop(directory);
        drop(permit);
        match outcome {
            Outcome::Crashed(reason) => {
                metrics::counter!(names::WORKER_CRASHES_TOTAL).increment(1);
                let ended = AttemptFailed {
                    attempt: attempt.clone(),
                    reason,
                };
                match entity.ask_with(ended, FINISH_ASK_TIMEOUT, None).await {
                    Ok(Ok(true)) => continue,
                    Ok(Ok(false) | Err(_)) => return,
                    Err(error) => {
                        tracing::warn!(job = %run.job, %error, "could not report a crashed attempt; the reviver retries");
                        return;
                    }
                }
            }
            Outcome::Retry(reason) => {
                tracing::warn!(job = %run.job, %reason, "job run gave up; the reviver retries");
                return;
            }
            outcome => {
                finish(&run, &entity, &attempt, outcome).await;
                return;
            }
        }
    }
}

/// One attempt: the conversion in a worker, progress forwarded, the output stored.
async fn attempt_once(
    run: &Run,
    task: &Task,
    entity: &EntityRef<Job>,
    attempt: &str,
    directory: &PrivateDirectory,
) -> Outcome {
    let (progress, updates) = watch::channel((0u8, String::new()));
    let (stop_progress, stopped) = oneshot::channel();
    let forwarder = tokio::spawn(forward_progress(
        entity.clone(),
        attempt.to_string(),
        updates,
        stopped,
    ));
    let _ = progress.send((10, "converting".into()));
    let outcome = convert_and_store(run, task, attempt, directory, progress).await;
    let _ = stop_progress.send(());
    if matches!(outcome, Outcome::Output(_) | Outcome::Failed(_)) {
        // The last progress message goes before the verdict (the same path, in order).
        let _ = tokio::time::timeout(PROGRESS_INTERVAL, forwarder).await;
    } else {
        forwarder.abort();
    }
    outcome
}

async fn finish(run: &Run, entity: &EntityRef<Job>, attempt: &str, outcome: Outcome) {
    let outcome = match outcome {
        Outcome::Output(output) => Ok(output),
        Outcome::Failed(reason) => Err(reason),
        Outcome::Crashed(reason) | Outcome::Retry(reason) => {
            tracing::warn!(job = %run.job, %reason, "job run gave up; the reviver retries");
            return;
        }
    };
    let finish = Finish {
        attempt: attempt.to_string(),
        outcome,
    };
    if let Err(error) = entity.ask_with(finish, FINISH_ASK_TIMEOUT, None).await {
        tracing::warn!(job = %run.job, %error, "could not report the outcome; the reviver retries");
    }
}

/// Sends the latest progress to the job, at most every [`PROGRESS_INTERVAL`]; when `stop`
/// fires (the conversion ended) sends what is left at once and ends.
async fn forward_progress(
    entity: EntityRef<Job>,
    attempt: String,
    mut updates: watch::Receiver<(u8, String)>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut sent = 0u8;
    let send = |percent: u8, step: String| {
        let _ = entity.tell(Progress {
            attempt: attempt.clone(),
            percent,
            step,
        });
    };
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = &mut stop => break,
        }
        let (percent, step) = updates.borrow_and_update().clone();
        send(percent, step);
        sent = percent;
        tokio::select! {
            () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
            _ = &mut stop => break,
        }
    }
    let (percent, step) = updates.borrow().clone();
    if percent > sent {
        send(percent, step);
    }
}

/// The input's file name inside the private directory.
fn input_name(format: Format) -> String {
    format!("input.{}", format.extension())
}

/// Creates the private directory and streams the input into it (bounded by
/// `jobs.input_bytes_max`), without holding the whole input in memory.
async fn stage_input(run: &Run) -> Result<PrivateDirectory, Outcome> {
    let config = &run.settings;
    let directory = PrivateDirectory::create(&run.program.temp_root)
        .map_err(|error| Outcome::Retry(format!("cannot create a working directory: {error}")))?;
    let store = run.runtime.object_store();
    let mut stream = match store.get(&store::input_path(&run.job)).await {
        Ok(result) => result.into_stream(),
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Outcome::Failed("the uploaded file is gone".into()));
        }
        Err(error) => return Err(Outcome::Retry(format!("cannot read the input: {error}"))),
    };
    let path = directory.path().join(input_name(run.info.input_format));
    let local_error =
        |error: std::io::Error| Outcome::Retry(format!("cannot stage the input: {error}"));
    let mut file = tokio::fs::File::create_new(&path)
        .await
        .map_err(local_error)?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|error| Outcome::Retry(format!("cannot read the input: {error}")))?;
        written += chunk.len() as u64;
        if written > config.input_bytes_max {
            return Err(Outcome::Failed(format!(
                "the input is larger than {} bytes",
                config.input_bytes_max
            )));
        }
        file.write_all(&chunk).await.map_err(local_error)?;
    }
    file.flush().await.map_err(local_error)?;
    Ok(directory)
}

async fn convert_and_store(
    run: &Run,
    task: &Task,
    attempt: &str,
    directory: &PrivateDirectory,
    progress: watch::Sender<(u8, String)>,
) -> Outcome {
    let config = &run.settings;
    let Some(program) = run.program.program.clone() else {
        return Outcome::Failed("conversions are not available on this node".into());
    };
    let to = run.info.target;
    let office = run
        .program
        .office
        .clone()
        .filter(|_| super::convert::uses_office(run.info.input_format, to));
    let memory_bytes_max = if office.is_some() {
        config.office_memory_bytes_max
    } else {
        config.worker_memory_bytes_max
    };
    let timeout = run.pool.timeout();
    let job = PortJob {
        job: run.job.clone(),
        attempt: attempt.to_string(),
        program,
        directory: directory.path().to_path_buf(),
        request: Request {
            v: PROTOCOL_VERSION,
            input: input_name(run.info.input_format),
            from: run.info.input_format,
            target: to,
            options: run.info.options.clone(),
            input_bytes_max: config.input_bytes_max,
            output_bytes_max: config.output_bytes_max,
            time_budget_ms: timeout.as_millis() as u64,
        },
        limits: WorkerLimits {
            memory_bytes_max,
            cpu_seconds_max: config.worker_cpu_seconds_max,
            file_bytes_max: config.output_bytes_max,
            open_files_max: config.worker_open_files_max,
            office,
        },
        timeout,
        progress,
        cancel: task.cancelled(),
    };
    let started = Instant::now();
    let outcome = convert_in_port(run.runtime.node_id(), job).await;
    metrics::histogram!(names::CONVERSION_SECONDS, "target" => to.name())
        .record(started.elapsed().as_secs_f64());
    let (file, format) = match outcome {
        PortOutcome::Converted { file, format, .. } => (file, format),
        PortOutcome::Failed(reason) => return Outcome::Failed(reason),
        PortOutcome::Cancelled => return Outcome::Failed("cancelled".into()),
        PortOutcome::Crashed(reason) => return Outcome::Crashed(reason),
        PortOutcome::Unavailable(reason) => return Outcome::Retry(reason),
    };
    if task.is_cancelled() {
        return Outcome::Failed("cancelled".into());
    }
    // The worker's word on the size is not trusted: the file is what counts.
    let bytes = match read_output(&file, config.output_bytes_max).await {
        Ok(bytes) => bytes,
        Err(outcome) => return outcome,
    };
    let path = store::output_path(&run.job, format.extension());
    match store::write_once(run.runtime.object_store(), &path, bytes).await {
        Ok(bytes) => Outcome::Output(OutputInfo {
            path: path.to_string(),
            bytes,
            format,
            file_name: output_file_name(&run.info.input_name, format),
        }),
        Err(error) => Outcome::Retry(format!("cannot write the output: {error}")),
    }
}

async fn read_output(file: &std::path::Path, bytes_max: u64) -> Result<Vec<u8>, Outcome> {
    let metadata = tokio::fs::symlink_metadata(file)
        .await
        .map_err(|error| Outcome::Failed(format!("the converter's output is missing ({error})")))?;
    if !metadata.is_file() {
        return Err(Outcome::Failed(
            "the converter's output is not a file".into(),
        ));
    }
    if metadata.len() > bytes_max {
        return Err(Outcome::Failed(format!(
            "the output would be larger than {bytes_max} bytes"
        )));
    }
    tokio::fs::read(file)
        .await
        .map_err(|error| Outcome::Retry(format!("cannot read the output: {error}")))
}
