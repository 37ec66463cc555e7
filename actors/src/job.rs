//! The conversion job entity (`job`, keyed by a random job id): (scheduled →) queued →
//! running → done | failed, journaled, with its files in the object store (see `store`).
//!
//! The web layer streams the upload to `jobs/<id>/input`, marks the job unfinished
//! (`jobs/active/<id>`) and sends `Submit`. The entity journals it and starts a run on its
//! node's pool (`pool`, `run`); the run waits for a conversion slot, asks `Running` (journaled
//! before any work: an attempt now belongs to this node), converts in a worker process owned by
//! a converter port (`port`) while telling `Progress`, writes the output create-only and asks
//! `Finish`. A job submitted with a `not_before` time (`Schedule`) is journaled as
//! `scheduled` and registers the durable reminder [`START_REMINDER`] at that time; it starts no
//! run until the reminder fires (`on_reminder`, on whichever node owns the job then), which
//! journals `Due` (queued) and starts the run as a submission does. Every state change is pushed, once durable, as a `job` frame to the owner's
//! WebSocket sessions on every node (pub/sub topic `user:<owner>`); progress steps are pushed
//! as they come and kept in memory only.
//!
//! Poison quarantine (`runtime::attempts`): every attempt is journaled when it starts; a worker
//! that dies without a result ends its attempt without one (`AttemptFailed`) and the run tries
//! again; a node that dies mid-attempt leaves an attempt that counts the same. Once
//! `jobs.max_attempts` attempts have started without a result, the job fails with "the
//! converter crashed on this input N times" instead of starting another: failed is final, and
//! the reviver only resumes unfinished jobs. A limit hit or a clean converter error fails the
//! job at once.
//!
//! Failover: when the node running a job dies, the job's new owner is woken by its node's
//! reviver (`reviver`: it scans the markers on every membership change) and `on_ready` starts a
//! new run from the input. The final state is reached once: `Finish` is ignored by a job that
//! already finished, whichever run sends it. The output is written once: a second run finds the
//! first run's output in place and adopts it. After the final state the user's job index is told
//! (which frees the user's slot), `Released` is journaled and the marker is deleted.
//!
//! Expiry: the command that journals the final state also registers the reminder
//! [`EXPIRE_REMINDER`] at the finish time + `jobs.finished_ttl_s`; when it fires, the job
//! journals `Expired` and its clean-up deletes its files, markers and index entry, as `Delete`
//! does. The reviver's scan of `jobs/finished/` markers stays only as the fallback for jobs
//! finished before reminders existed, and for a deletion a crash interrupted (`reviver`).
//!
//! **Architecture Invariant:** an accepted job ends done or failed exactly once, and a done
//! job's output object exists exactly once, whatever nodes die meanwhile.
//!
//! The entity's types and its `Entity` impl (dispatch, `apply`, `on_durable`) are here; the
//! command handlers and the clean-up after a final state are in `handlers`.

pub mod convert;
pub mod format;
mod handlers;
pub mod index;
pub mod metrics;
pub mod pool;
pub mod port;
pub mod request;
pub mod reviver;
mod run;
pub mod service;
pub mod store;

use std::sync::{Arc, OnceLock};

use runtime::attempts::Attempts;
use runtime::{Context, Entity};
use serde::{Deserialize, Serialize};

use self::convert::{Options, Target};
use self::format::Format;
use self::metrics as names;
use self::pool::WorkerPool;
use self::port::WorkerProgram;
use crate::config::JobsSection;
use crate::session::user_topic;

/// Longest file name kept from an upload (in characters).
pub const FILE_NAME_CHARS_MAX: usize = 200;

/// The reminder that starts a scheduled job at its `not_before` time.
pub const START_REMINDER: &str = "start";
/// The reminder that deletes a finished job `jobs.finished_ttl_s` after it finished.
pub const EXPIRE_REMINDER: &str = "expire";
/// A scheduled job that comes due while its node's queue is full waits this long, then tries
/// again (so `jobs.queue_max` holds for scheduled jobs too).
pub const START_RETRY_MS: u64 = 5_000;

/// What the node hands every job: `[jobs]`, its conversion pool (created on first use from
/// `[jobs]`) and how to start converter workers.
#[derive(Clone, Debug, Default)]
pub struct JobDeps {
    settings: Arc<JobsSection>,
    pool: Arc<OnceLock<WorkerPool>>,
    program: WorkerProgram,
}

impl JobDeps {
    pub fn new(settings: Arc<JobsSection>, program: WorkerProgram) -> Self {
        Self {
            settings,
            pool: Arc::default(),
            program,
        }
    }

    pub fn pool(&self) -> &WorkerPool {
        self.pool.get_or_init(|| WorkerPool::new(&self.settings))
    }

    /// `[jobs]`, as every node must have it.
    pub fn settings(&self) -> &JobsSection {
        &self.settings
    }
}

/// What was submitted. Immutable for the job's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The user id of the owner; only they see the job.
    pub owner: String,
    /// The upload's file name, as the client gave it (display and output name only).
    pub input_name: String,
    /// What the upload really is (sniffed from its bytes).
    pub input_format: Format,
    pub input_bytes: u64,
    pub target: Target,
    pub options: Options,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Queued,
    Running,
    Done,
    Failed,
    /// Submitted with a `not_before` time still to come: no run until it fires. Appended
    /// (schema 3).
    Scheduled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Scheduled => "scheduled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

/// The converted file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Object store path.
    pub path: String,
    pub bytes: u64,
    pub format: Format,
    /// The name offered for download.
    pub file_name: String,
}

/// Durable state: rebuilt from the journal.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JobState {
    pub info: Option<JobInfo>,
    pub phase: Phase,
    /// Every attempt, journaled as it starts (node, time); the running one holds the job and
    /// messages of others are stale. Bounded by `jobs.max_attempts`.
    pub attempts: Attempts,
    pub finished_ms: Option<u64>,
    pub output: Option<OutputInfo>,
    pub error: Option<String>,
    /// The user's index knows the job finished (its slot is free) and the marker may go.
    pub released: bool,
    /// Deleted by its owner: files removed, invisible to the API.
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobEvent {
    Submitted(JobInfo),
    Started {
        attempt: String,
        node: String,
        at_ms: u64,
    },
    Succeeded {
        output: OutputInfo,
        at_ms: u64,
    },
    Failed {
        reason: String,
        at_ms: u64,
    },
    Released,
    Deleted {
        at_ms: u64,
    },
    /// The attempt's worker died without a result.
    AttemptEnded {
        attempt: String,
        reason: String,
    },
    /// Finished more than `jobs.finished_ttl_s` ago: deleted like `Deleted`, files and all.
    /// Appended (schema 2).
    Expired {
        at_ms: u64,
    },
    /// Submitted with a start time still to come: scheduled until then, when the reminder
    /// [`START_REMINDER`] fires. Journaled right after `Submitted`. Appended (schema 3).
    Scheduled {
        not_before_ms: u64,
    },
    /// A scheduled job's time came (its reminder fired): queued, a run starts. Appended
    /// (schema 3).
    Due {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobCommand {
    Submit(JobInfo),
    Status,
    /// From the reviver: make sure an unfinished job has a worker (and a finished one is
    /// cleaned up).
    Resume,
    /// From a worker that got a thread: may it convert?
    Running {
        attempt: String,
    },
    /// From a worker, fire-and-forget.
    Progress {
        attempt: String,
        percent: u8,
        step: String,
    },
    /// From a worker: the outcome of its run.
    Finish {
        attempt: String,
        outcome: Result<OutputInfo, String>,
    },
    /// From a run whose worker died without a result: may it try again (`Proceed`)?
    AttemptFailed {
        attempt: String,
        reason: String,
    },
    /// From the clean-up task: the user's index knows the job finished.
    Release,
    /// From the owner: cancel if running, delete the files.
    Delete {
        owner: String,
    },
    /// From the reviver: delete a job finished more than `jobs.finished_ttl_s` ago. Appended.
    Expire,
    /// Submits a job that must not start before `not_before_ms` (unix ms, in the future).
    /// Appended.
    Schedule {
        info: JobInfo,
        not_before_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobReply {
    View(Box<JobView>),
    Proceed(bool),
    Ack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobError {
    #[error("no such job")]
    NotFound,
    #[error("this node's conversion queue is full ({max} jobs); try again later")]
    QueueFull { max: usize },
    #[error("a job with this id exists already")]
    AlreadyExists,
}

/// What the API shows of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub owner: String,
    pub phase: Phase,
    /// 0-100; steps in between are live only (not journaled).
    pub progress: u8,
    pub step: Option<String>,
    pub error: Option<String>,
    /// The node running (or that ran, or will run) the job.
    pub node: String,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub input_name: String,
    pub input_format: Format,
    pub input_bytes: u64,
    pub target: Target,
    pub output: Option<OutputInfo>,
    pub attempts: u32,
}

/// The download route of a job (relative: any node serves it).
pub fn download_url(job: &str) -> String {
    format!("/api/jobs/{job}/download")
}

/// The `job` frame pushed to the owner's sessions.
pub fn job_frame(job: &str, phase: Phase, progress: u8, error: Option<&str>) -> String {
    let download = (phase == Phase::Done).then(|| download_url(job));
    serde_json::json!({
        "type": "job",
        "job": job,
        "state": phase.as_str(),
        "progress": progress,
        "download": download,
        "error": error,
    })
    .to_string()
}

/// The name offered for the output: the upload's stem and the target's extension.
pub fn output_file_name(input_name: &str, format: Format) -> String {
    let stem = input_name
        .rsplit_once('.')
        .map_or(input_name, |(stem, _)| stem)
        .trim();
    let stem = if stem.is_empty() { "converted" } else { stem };
    format!("{stem}.{}", format.extension())
}

/// The running job: durable state is the runtime's; this holds the live progress.
pub struct Job {
    deps: JobDeps,
    progress: u8,
    step: Option<String>,
}

impl Entity for Job {
    const KIND: &'static str = "job";
    /// 2: `JobEvent::Expired`; 3: `Phase::Scheduled`, `JobEvent::Scheduled` and `Due`.
    const SCHEMA: u32 = 3;
    type Command = JobCommand;
    type Reply = Result<JobReply, JobError>;
    type Event = JobEvent;
    type State = JobState;
    type Deps = JobDeps;

    fn activate(_key: &str, deps: &JobDeps) -> Self {
        Self {
            deps: deps.clone(),
            progress: 0,
            step: None,
        }
    }

    fn apply(state: &mut JobState, _seq: u64, event: &JobEvent) {
        match event {
            JobEvent::Submitted(info) => {
                state.info = Some(info.clone());
                state.phase = Phase::Queued;
            }
            JobEvent::Started {
                attempt,
                node,
                at_ms,
            } => {
                state.phase = Phase::Running;
                state
                    .attempts
                    .started(attempt.clone(), node.clone(), *at_ms);
            }
            JobEvent::AttemptEnded { attempt, reason } => {
                state.attempts.ended_without_result(attempt, reason.clone());
            }
            JobEvent::Succeeded { output, at_ms } => {
                state.phase = Phase::Done;
                state.output = Some(output.clone());
                state.finished_ms = Some(*at_ms);
            }
            JobEvent::Failed { reason, at_ms } => {
                state.phase = Phase::Failed;
                state.error = Some(reason.clone());
                state.finished_ms = Some(*at_ms);
            }
            JobEvent::Released => state.released = true,
            JobEvent::Expired { .. } => state.deleted = true,
            JobEvent::Scheduled { .. } => {
                if state.phase == Phase::Queued {
                    state.phase = Phase::Scheduled;
                }
            }
            JobEvent::Due { .. } => {
                if state.phase == Phase::Scheduled {
                    state.phase = Phase::Queued;
                }
            }
            JobEvent::Deleted { at_ms } => {
                state.deleted = true;
                if !state.phase.is_final() {
                    state.phase = Phase::Failed;
                    state.error = Some("cancelled by its owner".into());
                    state.finished_ms = Some(*at_ms);
                }
            }
        }
    }

    fn handle(
        &mut self,
        state: &JobState,
        command: JobCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        match command {
            JobCommand::Submit(info) => self.submit(state, info, None, context),
            JobCommand::Schedule {
                info,
                not_before_ms,
            } => self.submit(state, info, Some(not_before_ms), context),
            JobCommand::Status => self
                .view(state, context)
                .map(|view| JobReply::View(Box::new(view))),
            JobCommand::Resume => {
                self.resume(state, context);
                self.view(state, context)
                    .map(|view| JobReply::View(Box::new(view)))
            }
            JobCommand::Running { attempt } => {
                Ok(JobReply::Proceed(self.running(state, attempt, context)))
            }
            JobCommand::Progress {
                attempt,
                percent,
                step,
            } => {
                self.progressed(state, &attempt, percent, step, context);
                Ok(JobReply::Ack)
            }
            JobCommand::Finish { attempt, outcome } => {
                self.finish(state, &attempt, outcome, context);
                Ok(JobReply::Ack)
            }
            JobCommand::AttemptFailed { attempt, reason } => Ok(JobReply::Proceed(
                self.attempt_failed(state, attempt, reason, context),
            )),
            JobCommand::Release => {
                if state.phase.is_final() && !state.released && !state.deleted {
                    context.persist(JobEvent::Released);
                }
                Ok(JobReply::Ack)
            }
            JobCommand::Delete { owner } => self.delete(state, &owner, context),
            JobCommand::Expire => self.expire(state, context).map(JobReply::Proceed),
        }
    }

    fn on_durable(
        &mut self,
        state: &JobState,
        events: &[(u64, JobEvent)],
        context: &mut Context<'_, Self>,
    ) {
        let Some(info) = &state.info else { return };
        let job = context.key().to_string();
        let runtime = context.runtime().clone();
        let publish = |frame: String| {
            runtime.publish_everywhere(&user_topic(&info.owner), frame.into_bytes())
        };
        let scheduled = events
            .iter()
            .any(|(_, event)| matches!(event, JobEvent::Scheduled { .. }));
        for (_, event) in events {
            match event {
                JobEvent::Submitted(info) => {
                    ::metrics::counter!(names::JOBS_SUBMITTED_TOTAL, "target" => info.target.name()).increment(1);
                    // A scheduled submission's first frame is `scheduled`, just below.
                    if !scheduled {
                        publish(job_frame(&job, Phase::Queued, 0, None));
                    }
                }
                JobEvent::Scheduled { .. } => publish(job_frame(&job, Phase::Scheduled, 0, None)),
                JobEvent::Due { .. } => publish(job_frame(&job, Phase::Queued, 0, None)),
                JobEvent::Started { .. } => publish(job_frame(&job, Phase::Running, 0, None)),
                JobEvent::Succeeded { .. } => {
                    ::metrics::counter!(names::JOBS_FINISHED_TOTAL, "outcome" => "done")
                        .increment(1);
                    publish(job_frame(&job, Phase::Done, 100, None));
                }
                JobEvent::Failed { reason, .. } => {
                    ::metrics::counter!(names::JOBS_FINISHED_TOTAL, "outcome" => "failed")
                        .increment(1);
                    publish(job_frame(&job, Phase::Failed, self.progress, Some(reason)));
                }
                JobEvent::Deleted { .. } => {
                    ::metrics::counter!(names::JOBS_FINISHED_TOTAL, "outcome" => "cancelled")
                        .increment(1);
                    publish(job_frame(
                        &job,
                        Phase::Failed,
                        self.progress,
                        Some("cancelled by its owner"),
                    ));
                }
                JobEvent::Expired { .. } => {
                    ::metrics::counter!(names::JOBS_EXPIRED_TOTAL).increment(1);
                    tracing::info!(%job, "finished job expired; deleting its files");
                }
                JobEvent::Released | JobEvent::AttemptEnded { .. } => {}
            }
        }
        self.clean_up(state, context);
    }

    fn on_ready(&mut self, state: &JobState, context: &mut Context<'_, Self>) {
        self.resume(state, context);
    }

    fn on_reminder(
        &mut self,
        state: &JobState,
        reminder: &runtime::Reminder,
        context: &mut Context<'_, Self>,
    ) {
        match reminder.name.as_str() {
            START_REMINDER => self.start_due(state, context),
            EXPIRE_REMINDER => self.expire_due(state, context),
            name => tracing::warn!(job = %context.key(), name, "unknown job reminder; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_protocol() {
        let frame: serde_json::Value =
            serde_json::from_str(&job_frame("j1", Phase::Done, 100, None)).expect("json");
        assert_eq!(
            frame,
            serde_json::json!({"type": "job", "job": "j1", "state": "done", "progress": 100,
                "download": "/api/jobs/j1/download", "error": null})
        );
        let frame: serde_json::Value =
            serde_json::from_str(&job_frame("j1", Phase::Failed, 40, Some("boom"))).expect("json");
        assert_eq!(frame["download"], serde_json::Value::Null);
        assert_eq!(frame["error"], "boom");
    }

    #[test]
    fn output_names_keep_the_stem() {
        assert_eq!(
            output_file_name("holiday.photo.png", Format::Jpeg),
            "holiday.photo.jpg"
        );
        assert_eq!(output_file_name("notes", Format::Pdf), "notes.pdf");
        assert_eq!(output_file_name(".md", Format::Html), "converted.html");
    }

    #[test]
    fn a_deleted_job_is_failed_and_final() {
        let mut state = JobState::default();
        let info = JobInfo {
            owner: "u".into(),
            input_name: "a.png".into(),
            input_format: Format::Png,
            input_bytes: 1,
            target: Target::Format(Format::Jpeg),
            options: Options::default(),
            created_ms: 1,
        };
        Job::apply(&mut state, 1, &JobEvent::Submitted(info));
        Job::apply(
            &mut state,
            2,
            &JobEvent::Started {
                attempt: "a".into(),
                node: "n1".into(),
                at_ms: 2,
            },
        );
        Job::apply(&mut state, 3, &JobEvent::Deleted { at_ms: 3 });
        assert!(state.deleted && state.phase == Phase::Failed);
        assert_eq!(state.attempts.count(), 1);
    }
}
