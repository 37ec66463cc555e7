//! The job reviver: one per node, under the node's root supervisor. It makes sure that every
//! unfinished job owned by this node has a worker, without waiting for a client to ask.
//!
//! Unfinished jobs are found by their markers (`jobs/active/<id>` in the shared object store,
//! written before a job is submitted and deleted once it is finished and released). On every
//! membership change, once at start (when the view has settled) and every
//! `jobs.revive_interval_ms`, it lists the markers and sends `Resume` to each job this node
//! owns in its view; the job's activation (`on_ready`) or `Resume` itself starts a run if it has
//! none here. A marker without a job (the uploading node died between the upload and the submit)
//! is deleted with its files once older than [`ORPHAN_GRACE_MS`].
//!
//! Expiry is the job's own reminder's (`job::EXPIRE_REMINDER`, registered with its final
//! state). This scan is only its fallback, for jobs that finished before reminders existed (they
//! have no reminder) and for a deletion that a crash interrupted (the job is deleted, some
//! files are left): a finished job leaves a marker under `jobs/finished/` (written create-only
//! when it is released, so its age is the job's), each scan also lists those markers and asks
//! each job this node owns whose marker is older than `jobs.finished_ttl_s` +
//! [`EXPIRY_FALLBACK_GRACE_MS`] to `Expire` (the grace leaves the reminder time to do it
//! first); the job checks its own finish time, journals `Expired` and deletes its files,
//! markers and index entry; a job already deleted has its leftovers deleted here.
//!
//! Bounded: at most [`SCAN_MARKERS_MAX`] markers per scan, [`RESUME_CONCURRENCY_MAX`] asks at
//! once, one scan at a time (changes during a scan trigger exactly one more).

use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::supervisor::{ChildSpec, Restart};
use runtime::{Entity, Runtime};
use tokio::sync::broadcast::error::RecvError;

use super::metrics as names;
use super::request::{Expire, Resume};
use super::{Job, JobError, store};

/// Markers looked at per scan.
pub const SCAN_MARKERS_MAX: usize = 10_000;
/// `Resume` asks in flight at once.
pub const RESUME_CONCURRENCY_MAX: usize = 16;
/// A marker whose job was never submitted is removed after this long.
pub const ORPHAN_GRACE_MS: u64 = 5 * 60 * 1000;
/// How long after `jobs.finished_ttl_s` the fallback expiry steps in: a job finished by this
/// build has expired through its reminder by then.
pub const EXPIRY_FALLBACK_GRACE_MS: u64 = 60 * 60 * 1000;

/// Registry name of a node's reviver.
pub fn reviver_name(node: &str) -> String {
    format!("actorhub.jobs.reviver.{node}")
}

/// The reviver as a permanent child of the node's root supervisor; it also scans every
/// `interval` (`jobs.revive_interval_ms`), and expires (as the fallback of their reminders)
/// jobs finished `finished_ttl` (`jobs.finished_ttl_s`) + [`EXPIRY_FALLBACK_GRACE_MS`] ago.
pub fn child_spec(runtime: Runtime, interval: Duration, finished_ttl: Duration) -> ChildSpec {
    let name = reviver_name(runtime.node_id());
    ChildSpec::new(
        name.clone(),
        Restart::Permanent,
        move |supervisor: ActorCell| {
            let name = name.clone();
            let runtime = runtime.clone();
            async move {
                let arguments = (runtime, interval, finished_ttl);
                let (actor, _) =
                    Actor::spawn_linked(Some(name), JobReviverActor, arguments, supervisor).await?;
                Ok(actor.get_cell())
            }
        },
    )
}

pub struct JobReviverActor;

#[derive(RactorMessage)]
pub enum JobReviverMsg {
    /// Something changed (or time passed): look for unfinished jobs.
    Scan,
    /// A scan ended; the finished marker it stopped after, when it stopped at the cap.
    ScanDone(Option<Path>),
}

pub struct JobReviverState {
    runtime: Runtime,
    finished_ttl: Duration,
    /// Where the next expiry pass starts (after this marker), so that more finished markers
    /// than one pass reads still all get their turn.
    expire_after: Option<Path>,
    scanning: bool,
    /// A scan was asked for while one ran.
    again: bool,
    /// The tasks feeding `Scan` messages; aborted on stop.
    feeders: Vec<tokio::task::JoinHandle<()>>,
}

impl Actor for JobReviverActor {
    type Msg = JobReviverMsg;
    type State = JobReviverState;
    /// The node's runtime, the time between two periodic scans and `jobs.finished_ttl_s`.
    type Arguments = (Runtime, Duration, Duration);

    async fn pre_start(
        &self,
        myself: ActorRef<JobReviverMsg>,
        (runtime, interval, finished_ttl): (Runtime, Duration, Duration),
    ) -> Result<JobReviverState, ActorProcessingErr> {
        let mut events = runtime.membership_events();
        let target = myself.clone();
        let membership = tokio::spawn(async move {
            // A lagged receiver missed events: one scan covers them all.
            while let Ok(_) | Err(RecvError::Lagged(_)) = events.recv().await {
                if target.cast(JobReviverMsg::Scan).is_err() {
                    break;
                }
            }
        });
        let mut views = runtime.watch_view();
        let target = myself.clone();
        let periodic = tokio::spawn(async move {
            // The first scan waits for the view to settle: before, ownership is not final.
            let _ = views.wait_for(|view| view.settled).await;
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                if target.cast(JobReviverMsg::Scan).is_err() {
                    break;
                }
            }
        });
        Ok(JobReviverState {
            runtime,
            finished_ttl,
            expire_after: None,
            scanning: false,
            again: false,
            feeders: vec![membership, periodic],
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<JobReviverMsg>,
        state: &mut JobReviverState,
    ) -> Result<(), ActorProcessingErr> {
        for feeder in state.feeders.drain(..) {
            feeder.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<JobReviverMsg>,
        message: JobReviverMsg,
        state: &mut JobReviverState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JobReviverMsg::Scan if state.scanning => state.again = true,
            JobReviverMsg::Scan => state.start_scan(&myself),
            JobReviverMsg::ScanDone(expire_after) => {
                state.scanning = false;
                state.expire_after = expire_after;
                if std::mem::take(&mut state.again) {
                    state.start_scan(&myself);
                }
            }
        }
        Ok(())
    }
}

impl JobReviverState {
    fn start_scan(&mut self, myself: &ActorRef<JobReviverMsg>) {
        self.scanning = true;
        let runtime = self.runtime.clone();
        let myself = myself.clone();
        let finished_ttl = self.finished_ttl;
        let expire_after = self.expire_after.take();
        tokio::spawn(async move {
            scan(&runtime).await;
            let expire_after = expire(&runtime, finished_ttl, expire_after).await;
            let _ = myself.cast(JobReviverMsg::ScanDone(expire_after));
        });
    }
}

/// One pass over the markers; resumes the jobs this node owns.
pub async fn scan(runtime: &Runtime) {
    let view = runtime.view();
    if !view.settled {
        return;
    }
    metrics::counter!(names::REVIVER_SCANS_TOTAL).increment(1);
    let prefix = Path::from(store::MARKERS_PREFIX);
    let markers: Vec<_> = runtime
        .object_store()
        .list(Some(&prefix))
        .take(SCAN_MARKERS_MAX)
        .filter_map(|meta| async move { meta.ok() })
        .collect()
        .await;
    let now_ms = runtime::clock::unix_ms();
    let mine: Vec<(String, u64)> = markers
        .into_iter()
        .filter_map(|meta| {
            let id = meta.location.filename()?.to_string();
            let age_ms = now_ms
                .saturating_sub(u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0));
            (store::valid_job_id(&id) && view.owner(Job::KIND, &id) == Some(runtime.node_id()))
                .then_some((id, age_ms))
        })
        .collect();
    futures_util::stream::iter(mine)
        .for_each_concurrent(RESUME_CONCURRENCY_MAX, |(id, age_ms)| async move {
            resume(runtime, id, age_ms).await;
        })
        .await;
}

/// One pass over the finished markers after `after` (from the first without it): expires the
/// jobs this node owns whose markers are older than `finished_ttl` +
/// [`EXPIRY_FALLBACK_GRACE_MS`] (the fallback of the jobs' reminders). Reads at most [`SCAN_MARKERS_MAX`] markers; returns the last one
/// read when it stopped there, for the next pass to go on from.
pub async fn expire(
    runtime: &Runtime,
    finished_ttl: Duration,
    after: Option<Path>,
) -> Option<Path> {
    let view = runtime.view();
    if !view.settled {
        return after;
    }
    let prefix = Path::from(store::FINISHED_PREFIX);
    let ttl_ms = u64::try_from(finished_ttl.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(EXPIRY_FALLBACK_GRACE_MS);
    let now_ms = runtime::clock::unix_ms();
    let objects = runtime.object_store();
    // S3 lists in key order; a store that does not is still covered: a pass that reads fewer
    // than the cap starts the next one from the beginning.
    let listing = match &after {
        Some(after) => objects.list_with_offset(Some(&prefix), after),
        None => objects.list(Some(&prefix)),
    };
    let markers: Vec<_> = listing
        .take(SCAN_MARKERS_MAX)
        .filter_map(|meta| async move { meta.ok() })
        .collect()
        .await;
    let next = (markers.len() >= SCAN_MARKERS_MAX)
        .then(|| markers.last().map(|meta| meta.location.clone()))
        .flatten();
    let due: Vec<String> = futures_util::stream::iter(markers)
        .filter_map(|meta| {
            let id = meta.location.filename().map(str::to_string);
            let written_ms = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
            let due = now_ms.saturating_sub(written_ms) >= ttl_ms;
            std::future::ready(id.filter(|id| {
                due && store::valid_job_id(id)
                    && view.owner(Job::KIND, id) == Some(runtime.node_id())
            }))
        })
        .collect()
        .await;
    futures_util::stream::iter(due)
        .for_each_concurrent(RESUME_CONCURRENCY_MAX, |id| async move {
            match runtime.entity::<Job>(id.clone()).ask(Expire).await {
                Ok(Ok(_)) => {}
                // Deleted (or never submitted) with its marker left behind: finish the job.
                Ok(Err(JobError::NotFound)) => {
                    store::delete_job_files(runtime.object_store(), &id).await;
                }
                Ok(Err(_)) => {}
                Err(error) => {
                    tracing::warn!(job = %id, %error, "could not expire a job; the next scan retries");
                }
            }
        })
        .await;
    next
}

async fn resume(runtime: &Runtime, id: String, marker_age_ms: u64) {
    match runtime.entity::<Job>(id.clone()).ask(Resume).await {
        Ok(Ok(_)) => {
            metrics::counter!(names::REVIVER_RESUMES_TOTAL, "outcome" => "resumed").increment(1)
        }
        Ok(Err(JobError::NotFound)) if marker_age_ms >= ORPHAN_GRACE_MS => {
            metrics::counter!(names::REVIVER_RESUMES_TOTAL, "outcome" => "orphan").increment(1);
            tracing::info!(job = %id, "removing the files of a job that was never submitted or was deleted");
            store::delete_job_files(runtime.object_store(), &id).await;
        }
        Ok(Err(_)) => {}
        Err(error) => {
            metrics::counter!(names::REVIVER_RESUMES_TOTAL, "outcome" => "error").increment(1);
            tracing::warn!(job = %id, %error, "could not resume a job; the next scan retries");
        }
    }
}
