//! One run of a job on this node: wait for a thread, claim the job (`Running`), read the input,
//! convert on the pool while forwarding progress, write the output once, report `Finish`.
//!
//! A run that meets a passing problem (the object store or the entity unreachable) gives up
//! without a verdict: the job stays unfinished and the reviver starts a new run later. Only the
//! conversion's own outcome (an output, or a reason it cannot be made) finishes the job.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use runtime::{EntityRef, Runtime};
use tokio::sync::{oneshot, watch};

use super::convert::{self, Conversion, ConvertError};
use super::metrics as names;
use super::pool::{Task, WorkerPool};
use super::{Job, JobCommand, JobInfo, JobReply, OutputInfo, output_file_name, store};

/// Least time between two progress messages of one run (progress is coalesced meanwhile).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How long a run keeps trying to report its outcome (the job's owner may be failing over).
const FINISH_ASK_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run needs to know.
pub(super) struct Run {
    pub runtime: Runtime,
    pub pool: WorkerPool,
    pub job: String,
    pub info: JobInfo,
}

enum Outcome {
    Output(OutputInfo),
    Failed(String),
    /// Give up this run without a verdict; another one will come.
    Retry(String),
}

pub(super) async fn run(run: Run, task: Arc<Task>) {
    let permit = run.pool.acquire().await;
    if task.cancel.load(Ordering::Relaxed) {
        return;
    }
    let entity = run.runtime.entity::<Job>(run.job.clone());
    match entity
        .ask(JobCommand::Running {
            attempt: task.attempt.clone(),
        })
        .await
    {
        Ok(Ok(JobReply::Proceed(true))) => {}
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(job = %run.job, %error, "could not claim the job; the reviver retries");
            return;
        }
    }
    metrics::counter!(names::ATTEMPTS_TOTAL).increment(1);
    let (progress, updates) = watch::channel((0u8, String::new()));
    let (stop_progress, stopped) = oneshot::channel();
    let forwarder = tokio::spawn(forward_progress(
        entity.clone(),
        task.attempt.clone(),
        updates,
        stopped,
    ));
    let outcome = convert_and_store(&run, &task, permit, progress).await;
    let _ = stop_progress.send(());
    let outcome = match outcome {
        Outcome::Output(output) => Ok(output),
        Outcome::Failed(reason) => Err(reason),
        Outcome::Retry(reason) => {
            tracing::warn!(job = %run.job, %reason, "job run gave up; the reviver retries");
            forwarder.abort();
            return;
        }
    };
    // The last progress message goes before the verdict (the same path, in order).
    let _ = tokio::time::timeout(PROGRESS_INTERVAL, forwarder).await;
    let finish = JobCommand::Finish {
        attempt: task.attempt.clone(),
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
        let _ = entity.tell(JobCommand::Progress {
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

async fn convert_and_store(
    run: &Run,
    task: &Task,
    permit: tokio::sync::OwnedSemaphorePermit,
    progress: watch::Sender<(u8, String)>,
) -> Outcome {
    let store = run.runtime.object_store().clone();
    let config = &run.runtime.config().jobs;
    let input = match store.get(&store::input_path(&run.job)).await {
        Ok(result) => match result.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return Outcome::Retry(format!("cannot read the input: {error}")),
        },
        Err(object_store::Error::NotFound { .. }) => {
            return Outcome::Failed("the uploaded file is gone".into());
        }
        Err(error) => return Outcome::Retry(format!("cannot read the input: {error}")),
    };
    if input.len() as u64 > config.input_bytes_max {
        return Outcome::Failed(format!(
            "the input is larger than {} bytes",
            config.input_bytes_max
        ));
    }
    let _ = progress.send((10, "converting".into()));
    let from = run.info.input_format;
    let to = run.info.target;
    let options = run.info.options.clone();
    let output_bytes_max = config.output_bytes_max;
    let deadline = Instant::now() + run.pool.timeout();
    let cancel = task.cancel.clone();
    let flag = cancel.clone();
    let started = Instant::now();
    let result = run
        .pool
        .run(permit, cancel, move || {
            let report = |percent: u8, step: &str| {
                let _ = progress.send((percent, step.to_string()));
            };
            let result = convert::convert(&Conversion {
                input: &input,
                from,
                to,
                options: &options,
                output_bytes_max,
                deadline,
                progress: &report,
                cancel: &flag,
            });
            if result.is_ok() {
                report(95, "saving");
            }
            result
        })
        .await;
    metrics::histogram!(names::CONVERSION_SECONDS, "target" => to.name())
        .record(started.elapsed().as_secs_f64());
    let converted = match result {
        Ok(Ok(converted)) => converted,
        Ok(Err(ConvertError::Cancelled)) => return Outcome::Failed("cancelled".into()),
        Ok(Err(error)) => return Outcome::Failed(error.to_string()),
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    if task.cancel.load(Ordering::Relaxed) {
        return Outcome::Failed("cancelled".into());
    }
    let path = store::output_path(&run.job, converted.format.extension());
    match store::write_once(&store, &path, converted.bytes).await {
        Ok(bytes) => Outcome::Output(OutputInfo {
            path: path.to_string(),
            bytes,
            format: converted.format,
            file_name: output_file_name(&run.info.input_name, converted.format),
        }),
        Err(error) => Outcome::Retry(format!("cannot write the output: {error}")),
    }
}
