//! The job's typed requests: each converts into one [`JobCommand`] (the wire and journal
//! format, unchanged) and takes its answer out of the [`JobReply`] variant that command gets.

use runtime::Request;
use runtime::request::map_ok;

use super::{Job, JobCommand, JobError, JobInfo, JobReply, JobView, OutputInfo};

type Answer = Result<JobReply, JobError>;

/// Submits the job (its input is in the store already). Answers the job as queued.
#[derive(Debug, Clone)]
pub struct Submit(pub JobInfo);

/// Submits a job that must not start before `not_before_ms` (unix ms, in the future; its input
/// is in the store already). Answers the job as scheduled.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub info: JobInfo,
    pub not_before_ms: u64,
}

/// The job as the API shows it.
#[derive(Debug, Clone, Copy)]
pub struct Status;

/// From the reviver: make sure an unfinished job has a worker (and a finished one is cleaned
/// up). Answers the job.
#[derive(Debug, Clone, Copy)]
pub struct Resume;

/// From a run that got a conversion slot: may it convert? (`true`: the attempt is journaled
/// as started and belongs to this run.)
#[derive(Debug, Clone)]
pub struct Running {
    pub attempt: String,
}

/// From a run, fire-and-forget: how far the conversion is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub attempt: String,
    pub percent: u8,
    pub step: String,
}

/// From a run: the outcome of its attempt.
#[derive(Debug, Clone)]
pub struct Finish {
    pub attempt: String,
    pub outcome: Result<OutputInfo, String>,
}

/// From a run whose worker died without a result: may it try again?
#[derive(Debug, Clone)]
pub struct AttemptFailed {
    pub attempt: String,
    pub reason: String,
}

/// From the clean-up task: the user's index knows the job finished.
#[derive(Debug, Clone, Copy)]
pub struct Release;

/// From the owner: cancel if running, delete the files.
#[derive(Debug, Clone)]
pub struct Delete {
    pub owner: String,
}

/// From the reviver: delete the job if it finished more than `jobs.finished_ttl_s` ago
/// (`Proceed(true)`: it expires now). `NotFound` for a job deleted or never submitted.
#[derive(Debug, Clone, Copy)]
pub struct Expire;

fn view(reply: JobReply) -> Option<JobView> {
    match reply {
        JobReply::View(view) => Some(*view),
        _ => None,
    }
}

fn proceed(reply: JobReply) -> Option<bool> {
    match reply {
        JobReply::Proceed(proceed) => Some(proceed),
        _ => None,
    }
}

fn ack(reply: JobReply) -> Option<()> {
    match reply {
        JobReply::Ack => Some(()),
        _ => None,
    }
}

impl Request<Job> for Submit {
    type Reply = Result<JobView, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Submit(self.0)
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, view)
    }
}

impl Request<Job> for Schedule {
    type Reply = Result<JobView, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Schedule {
            info: self.info,
            not_before_ms: self.not_before_ms,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, view)
    }
}

impl Request<Job> for Status {
    type Reply = Result<JobView, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Status
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, view)
    }
}

impl Request<Job> for Resume {
    type Reply = Result<JobView, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Resume
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, view)
    }
}

impl Request<Job> for Running {
    type Reply = Result<bool, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Running {
            attempt: self.attempt,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, proceed)
    }
}

impl Request<Job> for Progress {
    type Reply = Result<(), JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Progress {
            attempt: self.attempt,
            percent: self.percent,
            step: self.step,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, ack)
    }
}

impl Request<Job> for Finish {
    type Reply = Result<(), JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Finish {
            attempt: self.attempt,
            outcome: self.outcome,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, ack)
    }
}

impl Request<Job> for AttemptFailed {
    type Reply = Result<bool, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::AttemptFailed {
            attempt: self.attempt,
            reason: self.reason,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, proceed)
    }
}

impl Request<Job> for Release {
    type Reply = Result<(), JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Release
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, ack)
    }
}

impl Request<Job> for Delete {
    type Reply = Result<(), JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Delete { owner: self.owner }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, ack)
    }
}

impl Request<Job> for Expire {
    type Reply = Result<bool, JobError>;

    fn into_command(self) -> JobCommand {
        JobCommand::Expire
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, proceed)
    }
}
