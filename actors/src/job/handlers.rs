//! The job's command handlers (submit or schedule, status, resume, running, progress, finish,
//! a failed attempt, delete, expire), its reminders' handlers (a scheduled job's start, a
//! finished job's expiry) and the clean-up after a final state (release the owner's slot,
//! delete the files of a deleted job, drop the marker).

use std::time::Duration;

use runtime::attempts::Quarantined;
use runtime::{Context, Runtime};

use super::index::{self, JobIndex};
use super::pool::WorkerPool;
use super::{
    EXPIRE_REMINDER, Job, JobError, JobEvent, JobInfo, JobReply, JobState, JobView, OutputInfo,
    Phase, START_REMINDER, START_RETRY_MS, job_frame, request, run, store,
};
use crate::session::user_topic;

/// How long the clean-up after a final state may keep asking the user's job index.
const RELEASE_ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deletion waits for this node's worker of the job to stop before deleting files.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

impl Job {
    fn pool(&self) -> WorkerPool {
        self.deps.pool().clone()
    }

    pub(super) fn view(
        &self,
        state: &JobState,
        context: &Context<'_, Self>,
    ) -> Result<JobView, JobError> {
        let info = match &state.info {
            Some(info) if !state.deleted => info,
            _ => return Err(JobError::NotFound),
        };
        let progress = match state.phase {
            Phase::Queued | Phase::Scheduled => 0,
            Phase::Running => self.progress,
            Phase::Done => 100,
            Phase::Failed => self.progress,
        };
        Ok(JobView {
            id: context.key().to_string(),
            owner: info.owner.clone(),
            phase: state.phase,
            progress,
            step: self.step.clone().filter(|_| state.phase == Phase::Running),
            error: state.error.clone(),
            node: state
                .attempts
                .latest()
                .map(|attempt| attempt.node.clone())
                .filter(|_| !matches!(state.phase, Phase::Queued | Phase::Scheduled))
                .unwrap_or_else(|| context.runtime().node_id().to_string()),
            created_ms: info.created_ms,
            started_ms: state.attempts.latest().map(|attempt| attempt.started_ms),
            finished_ms: state.finished_ms,
            input_name: info.input_name.clone(),
            input_format: info.input_format,
            input_bytes: info.input_bytes,
            target: info.target,
            output: state.output.clone(),
            attempts: state.attempts.count(),
        })
    }

    /// Submits the job: queued and started now, or, with `not_before_ms`, scheduled with a
    /// reminder at that time (no run, so this node's queue bound does not apply yet: it does
    /// when the reminder fires).
    pub(super) fn submit(
        &mut self,
        state: &JobState,
        info: JobInfo,
        not_before_ms: Option<u64>,
        context: &mut Context<'_, Self>,
    ) -> Result<JobReply, JobError> {
        if let Some(existing) = &state.info {
            // A retried submit (same message id) is answered from the journal; this is a
            // different submission reusing the id.
            return if *existing == info && !state.deleted {
                self.view(state, context)
                    .map(|view| JobReply::View(Box::new(view)))
            } else {
                Err(JobError::AlreadyExists)
            };
        }
        let pool = self.pool();
        if not_before_ms.is_none() && !pool.has_room() {
            return Err(JobError::QueueFull {
                max: pool.queue_max(),
            });
        }
        context.persist(JobEvent::Submitted(info.clone()));
        let phase = match not_before_ms {
            Some(not_before_ms) => {
                context.persist(JobEvent::Scheduled { not_before_ms });
                context.remind_fixed(START_REMINDER, not_before_ms, None);
                Phase::Scheduled
            }
            None => {
                // The worker's first message (`Running`) is handled after the submission is
                // durable.
                self.start_worker(&info, context);
                Phase::Queued
            }
        };
        Ok(JobReply::View(Box::new(JobView {
            id: context.key().to_string(),
            owner: info.owner.clone(),
            phase,
            progress: 0,
            step: None,
            error: None,
            node: context.runtime().node_id().to_string(),
            created_ms: info.created_ms,
            started_ms: None,
            finished_ms: None,
            input_name: info.input_name,
            input_format: info.input_format,
            input_bytes: info.input_bytes,
            target: info.target,
            output: None,
            attempts: 0,
        })))
    }

    /// Gives an unfinished job a worker on this node (a scheduled one waits for its reminder),
    /// or finishes the clean-up of a finished one.
    pub(super) fn resume(&mut self, state: &JobState, context: &mut Context<'_, Self>) {
        let Some(info) = &state.info else { return };
        if !state.deleted && !state.phase.is_final() {
            if state.phase != Phase::Scheduled {
                self.start_worker(info, context);
            }
            // A submission whose node died before it confirmed the user's slot: confirm it
            // now (a no-op once confirmed), so the slot counts until the job finishes.
            let index = context.runtime().entity::<JobIndex>(info.owner.clone());
            let confirm = index::Confirm {
                job: context.key().to_string(),
            };
            tokio::spawn(async move {
                if let Err(error) = index.ask(confirm).await {
                    tracing::debug!(%error, "could not confirm a job's slot; the reviver retries");
                }
            });
        } else {
            self.clean_up(state, context);
        }
    }

    fn start_worker(&mut self, info: &JobInfo, context: &mut Context<'_, Self>) {
        let runtime = context.runtime().clone();
        let pool = self.pool();
        let job = context.key().to_string();
        let run = run::Run {
            runtime,
            pool: pool.clone(),
            program: self.deps.program.clone(),
            settings: self.deps.settings.clone(),
            job: job.clone(),
            info: info.clone(),
        };
        if pool.start(&job, move |task| run::run(run, task)) {
            tracing::debug!(%job, "job run started");
        }
    }

    pub(super) fn running(
        &mut self,
        state: &JobState,
        attempt: String,
        context: &mut Context<'_, Self>,
    ) -> bool {
        // A scheduled job runs only once its reminder made it due (never before `not_before`).
        if state.info.is_none()
            || state.deleted
            || state.phase.is_final()
            || state.phase == Phase::Scheduled
        {
            return false;
        }
        if state.phase == Phase::Running && state.attempts.is_running(&attempt) {
            return true;
        }
        let max_attempts = self.deps.settings.max_attempts;
        if let Err(quarantined) = state.attempts.admit(max_attempts) {
            tracing::warn!(job = %context.key(), attempts = quarantined.attempts, last = ?quarantined.last_failure, "job quarantined: its attempts all ended without a result");
            self.finish_with(Err(quarantine_reason(&quarantined)), context);
            return false;
        }
        if let Some(previous) = state.attempts.latest() {
            tracing::info!(job = %context.key(), %attempt, previous = %previous.id, "job resumed by a new attempt");
        }
        self.progress = 0;
        self.step = None;
        context.persist(JobEvent::Started {
            attempt,
            node: context.runtime().node_id().to_string(),
            at_ms: runtime::clock::unix_ms(),
        });
        true
    }

    pub(super) fn progressed(
        &mut self,
        state: &JobState,
        attempt: &str,
        percent: u8,
        step: String,
        context: &mut Context<'_, Self>,
    ) {
        let current = state.phase == Phase::Running && state.attempts.is_running(attempt);
        let Some(info) = state.info.as_ref().filter(|_| current && !state.deleted) else {
            return;
        };
        // The last percent is the final state's; progress never goes backwards within a run.
        let percent = percent.min(99);
        if percent < self.progress {
            return;
        }
        self.progress = percent;
        self.step = Some(step);
        let frame = job_frame(context.key(), Phase::Running, percent, None);
        context
            .runtime()
            .publish_everywhere(&user_topic(&info.owner), frame.into_bytes());
    }

    pub(super) fn finish(
        &mut self,
        state: &JobState,
        attempt: &str,
        outcome: Result<OutputInfo, String>,
        context: &mut Context<'_, Self>,
    ) {
        if state.info.is_none() || state.deleted || state.phase.is_final() {
            // Exactly one final state: a second run's (or a retried) finish changes nothing.
            tracing::debug!(job = %context.key(), attempt, "finish of a job already final; ignored");
            return;
        }
        self.finish_with(outcome, context);
    }

    /// Journals the final state and registers the reminder that expires the job
    /// `jobs.finished_ttl_s` later. Every final state but a deletion goes through here.
    fn finish_with(
        &mut self,
        outcome: Result<OutputInfo, String>,
        context: &mut Context<'_, Self>,
    ) {
        let at_ms = runtime::clock::unix_ms();
        match outcome {
            Ok(output) => context.persist(JobEvent::Succeeded { output, at_ms }),
            Err(reason) => context.persist(JobEvent::Failed { reason, at_ms }),
        };
        context.remind_fixed(EXPIRE_REMINDER, at_ms.saturating_add(self.ttl_ms()), None);
    }

    fn ttl_ms(&self) -> u64 {
        self.deps.settings.finished_ttl_s.saturating_mul(1000)
    }

    /// A run's worker died without a result: the attempt ends without one; answers whether
    /// the run may start another (or the job is quarantined now).
    pub(super) fn attempt_failed(
        &mut self,
        state: &JobState,
        attempt: String,
        reason: String,
        context: &mut Context<'_, Self>,
    ) -> bool {
        if state.info.is_none() || state.deleted || state.phase.is_final() {
            return false;
        }
        if !state.attempts.is_running(&attempt) {
            // A stale attempt's news: the job has moved on.
            return false;
        }
        tracing::info!(job = %context.key(), %attempt, %reason, attempts = state.attempts.count(), "job attempt ended without a result");
        context.persist(JobEvent::AttemptEnded {
            attempt,
            reason: reason.clone(),
        });
        let max_attempts = self.deps.settings.max_attempts;
        if let Err(mut quarantined) = state.attempts.admit(max_attempts) {
            // `state` does not hold the event persisted just above yet.
            quarantined.last_failure = Some(reason);
            tracing::warn!(job = %context.key(), attempts = quarantined.attempts, "job quarantined: its attempts all ended without a result");
            self.finish_with(Err(quarantine_reason(&quarantined)), context);
            return false;
        }
        true
    }

    pub(super) fn delete(
        &mut self,
        state: &JobState,
        owner: &str,
        context: &mut Context<'_, Self>,
    ) -> Result<JobReply, JobError> {
        match &state.info {
            Some(info) if !state.deleted && info.owner == owner => {}
            _ => return Err(JobError::NotFound),
        }
        context.persist(JobEvent::Deleted {
            at_ms: runtime::clock::unix_ms(),
        });
        // Nothing left to start or expire (a reminder that fires anyway is ignored).
        if state.phase == Phase::Scheduled {
            context.forget_fixed(START_REMINDER);
        } else if state.phase.is_final() {
            context.forget_fixed(EXPIRE_REMINDER);
        }
        self.pool().cancel(context.key());
        Ok(JobReply::Ack)
    }

    /// The reminder [`START_REMINDER`] fired: a scheduled job becomes queued and starts a run
    /// here, if this node's queue has room (otherwise it tries again [`START_RETRY_MS`] later).
    /// Anything else (started already, deleted, a repeated firing) is ignored.
    pub(super) fn start_due(&mut self, state: &JobState, context: &mut Context<'_, Self>) {
        let Some(info) = state.info.as_ref().filter(|_| !state.deleted) else {
            return;
        };
        if state.phase != Phase::Scheduled {
            return;
        }
        let now_ms = runtime::clock::unix_ms();
        let pool = self.pool();
        if !pool.has_room() {
            tracing::info!(job = %context.key(), retry_ms = START_RETRY_MS, "scheduled job due while this node's queue is full; waiting");
            context.remind_fixed(START_REMINDER, now_ms.saturating_add(START_RETRY_MS), None);
            return;
        }
        context.persist(JobEvent::Due { at_ms: now_ms });
        // As for a submission: the run's first message is handled after `Due` is durable.
        self.start_worker(info, context);
    }

    /// The reminder [`EXPIRE_REMINDER`] fired: expires the job (idempotent; not before its
    /// finish time + `jobs.finished_ttl_s`, which a configuration change may have moved: then
    /// the reminder is moved there).
    pub(super) fn expire_due(&mut self, state: &JobState, context: &mut Context<'_, Self>) {
        if state.info.is_none() || state.deleted || !state.phase.is_final() {
            return;
        }
        let Some(finished_ms) = state.finished_ms else {
            return;
        };
        let due_ms = finished_ms.saturating_add(self.ttl_ms());
        let now_ms = runtime::clock::unix_ms();
        if now_ms < due_ms {
            context.remind_fixed(EXPIRE_REMINDER, due_ms, None);
        } else {
            context.persist(JobEvent::Expired { at_ms: now_ms });
        }
    }

    /// Expires the job if it finished `jobs.finished_ttl_s` ago or more (the reviver asks once
    /// its finished marker is that old); its clean-up then deletes it as `Delete` does.
    pub(super) fn expire(
        &mut self,
        state: &JobState,
        context: &mut Context<'_, Self>,
    ) -> Result<bool, JobError> {
        if state.info.is_none() || state.deleted {
            return Err(JobError::NotFound);
        }
        let ttl_ms = self.ttl_ms();
        let now_ms = runtime::clock::unix_ms();
        let due = state.phase.is_final()
            && state
                .finished_ms
                .is_some_and(|finished_ms| finished_ms.saturating_add(ttl_ms) <= now_ms);
        if due {
            context.persist(JobEvent::Expired { at_ms: now_ms });
        }
        Ok(due)
    }

    /// The work after a final state, each step idempotent and retried on the next `Resume` if
    /// it fails: a deleted job's files go; a finished job frees its owner's slot, journals
    /// `Released`, then drops its marker.
    pub(super) fn clean_up(&mut self, state: &JobState, context: &mut Context<'_, Self>) {
        let Some(info) = &state.info else { return };
        if !state.phase.is_final() {
            return;
        }
        let runtime = context.runtime().clone();
        let job = context.key().to_string();
        let owner = info.owner.clone();
        if state.deleted {
            let pool = self.pool();
            tokio::spawn(async move { delete_everything(runtime, pool, job, owner).await });
        } else if !state.released {
            tokio::spawn(async move { release(runtime, job, owner).await });
        } else {
            tokio::spawn(async move {
                // The finished marker first (create-only: its age is the job's age), so the
                // job is always found by one of the two scans.
                let store = runtime.object_store();
                let path = store::finished_marker_path(&job);
                if let Err(error) = store::write_once(store, &path, Vec::new()).await {
                    tracing::warn!(%job, %error, "could not mark a finished job; its next activation retries");
                    return;
                }
                store::delete_quietly(store, &store::marker_path(&job)).await;
            });
        }
    }
}

/// What the owner of a quarantined job reads.
fn quarantine_reason(quarantined: &Quarantined) -> String {
    let times = if quarantined.attempts == 1 {
        "once".to_string()
    } else {
        format!("{} times", quarantined.attempts)
    };
    match &quarantined.last_failure {
        Some(last) => format!("the converter crashed on this input {times} (last: {last})"),
        None => format!("the converter crashed on this input {times}"),
    }
}

/// Frees the owner's slot, then journals `Released` (whose `on_durable` drops the marker).
async fn release(runtime: Runtime, job: String, owner: String) {
    let index = runtime.entity::<JobIndex>(owner);
    if let Err(error) = index
        .ask_with(
            index::Finished { job: job.clone() },
            RELEASE_ASK_TIMEOUT,
            None,
        )
        .await
    {
        tracing::warn!(%job, %error, "could not tell the job index; the reviver retries");
        return;
    }
    if let Err(error) = runtime
        .entity::<Job>(job.clone())
        .ask(request::Release)
        .await
    {
        tracing::warn!(%job, %error, "could not journal the release; the reviver retries");
    }
}

/// Waits (bounded) for this node's worker to stop, then deletes the files, the marker and the
/// index entry.
async fn delete_everything(runtime: Runtime, pool: WorkerPool, job: String, owner: String) {
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    while pool.task(&job).is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store::delete_job_files(runtime.object_store(), &job).await;
    let index = runtime.entity::<JobIndex>(owner);
    if let Err(error) = index
        .ask_with(
            index::Remove { job: job.clone() },
            RELEASE_ASK_TIMEOUT,
            None,
        )
        .await
    {
        tracing::warn!(%job, %error, "could not remove a deleted job from its index");
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_reasons_count_the_attempts() {
        assert_eq!(
            quarantine_reason(&Quarantined {
                attempts: 3,
                last_failure: Some("the converter crashed (signal 6)".into())
            }),
            "the converter crashed on this input 3 times (last: the converter crashed (signal 6))"
        );
        assert_eq!(
            quarantine_reason(&Quarantined {
                attempts: 1,
                last_failure: None
            }),
            "the converter crashed on this input once"
        );
    }
}
