//! [`Jobs`]: the conversion job flows as the web layer calls them: submit (a slot in the
//! user's index, the upload, checks, the job itself, each undone when a later step fails;
//! scheduled for later with `not_before`), a job's status, the user's list, the output,
//! deletion. It knows nothing of HTTP; the web layer
//! reads the multipart upload into the store and maps [`JobsError`] to status codes.
//!
//! A node that dies in the middle of a submission leaves nothing that stays wrong: a slot
//! reserved and never confirmed stops counting after its expiry (`index`), an upload without a
//! job is deleted by the reviver once its marker is old (`reviver`), and a job submitted
//! without its slot confirmed gets it confirmed when the reviver resumes it.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::ObjectStoreExt;
use runtime::{Runtime, RuntimeError};

use super::convert::{Availability, Options, Pair, Target, catalogue, check_pair};
use super::format::{self, Format};
use super::index::{self, JobIndex, Reservation};
use super::request::{Delete, Schedule, Status, Submit};
use super::{FILE_NAME_CHARS_MAX, Job, JobError, JobInfo, JobView, OutputInfo, Phase, store};
use crate::config::JobsSection;

/// Status requests in flight at once for one listing.
const LIST_CONCURRENCY_MAX: usize = 8;
/// A `not_before` up to this far in the past (clock skew between the client and us) means
/// "now"; further back it is refused (likely seconds sent for milliseconds).
pub const NOT_BEFORE_PAST_MS_MAX: u64 = 60_000;
/// The furthest ahead a job may be scheduled: its upload is stored, and its slot in the
/// user's `jobs.per_user_max` held, until then.
pub const NOT_BEFORE_AHEAD_MS_MAX: u64 = 30 * 24 * 3600 * 1000;

/// What the client sent with its file (the file itself is in the store at the job's input).
#[derive(Debug, Default)]
pub struct Upload {
    pub file_name: Option<String>,
    pub file_bytes: u64,
    /// The file's first bytes, for sniffing its type.
    pub head: Vec<u8>,
    /// The file's last bytes, for sniffing its type.
    pub tail: Vec<u8>,
    pub target: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    /// Start no sooner than this (unix ms); `None`: now.
    pub not_before_ms: Option<u64>,
}

/// Why a job flow did not succeed. The web layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("you have {limit} unfinished jobs; wait for one to finish")]
    TooManyJobs { limit: usize },
    #[error("the conversion queue is full ({max} jobs); try again later")]
    QueueFull { max: usize },
    /// The user's stored job files (inputs and outputs) would exceed their quota.
    #[error(
        "your job files would take more than {limit} bytes; delete finished jobs (they also expire on their own)"
    )]
    QuotaExceeded { limit: u64 },
    #[error("the form needs a `file` part")]
    MissingFile,
    #[error("the form needs a `target` field, e.g. jpeg or pdf")]
    MissingTarget,
    #[error("the file is empty")]
    EmptyFile,
    /// The message lists what the input converts to.
    #[error("{0}")]
    UnsupportedConversion(String),
    #[error("{0}")]
    InvalidOptions(String),
    /// `not_before` is too far in the past or ahead; the message says which and the bounds.
    #[error("{0}")]
    InvalidNotBefore(String),
    /// No such job, or not the caller's (the same answer, on purpose).
    #[error("no such job")]
    NotFound,
    #[error("the job is {phase}; its output is ready once it is done")]
    NotReady { phase: &'static str },
    #[error("the output file is gone")]
    Gone,
    /// The shared store failed; try again.
    #[error("{0}")]
    Store(String),
    /// The job answered a submission with something else than the job (an id reused).
    #[error("unexpected answer from the job; try again")]
    Unexpected,
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// A submission's failure: the caller's upload failed (its own error), or a job flow did.
#[derive(Debug)]
pub enum SubmitError<E> {
    Upload(E),
    Jobs(JobsError),
}

impl<E> From<JobsError> for SubmitError<E> {
    fn from(error: JobsError) -> Self {
        Self::Jobs(error)
    }
}

impl<E> From<RuntimeError> for SubmitError<E> {
    fn from(error: RuntimeError) -> Self {
        Self::Jobs(error.into())
    }
}

/// A job's output, to stream to its owner.
pub struct Output {
    pub info: OutputInfo,
    pub chunks: BoxStream<'static, object_store::Result<Bytes>>,
}

/// The node's entry point to conversion jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Jobs {
    runtime: Runtime,
    settings: Arc<JobsSection>,
}

impl Jobs {
    pub fn new(runtime: Runtime, settings: Arc<JobsSection>) -> Self {
        Self { runtime, settings }
    }

    /// `[jobs]`: the limits the web layer checks before it reads an upload.
    pub fn settings(&self) -> &JobsSection {
        &self.settings
    }

    /// Which converters this node offers.
    pub fn availability(&self) -> Availability {
        Availability::detect(self.settings.test_converters)
    }

    /// Every conversion, with its availability on this node.
    pub fn converters(&self) -> Vec<Pair> {
        catalogue(self.availability())
    }

    /// Submits a job of `owner`. Takes a slot in the owner's job index first (so that a user at
    /// the limit uploads nothing), then lets `upload` stream the file to the store at
    /// `store::input_path(job)` for the job id it is given, checks what was uploaded, records
    /// the job and submits it (or schedules it, for an upload with a `not_before` to come), and
    /// confirms the slot. A step that fails undoes the earlier ones: the slot is freed and the
    /// input deleted.
    ///
    /// A scheduled job holds its slot (it counts in `jobs.per_user_max`) from now on, as its
    /// upload is stored from now on: so a user cannot park more jobs than that. It counts in
    /// its node's `jobs.queue_max` only from its start: which node owns it then is not known
    /// now, and that node starts it only when its queue has room.
    pub async fn submit<F, Fut, E>(&self, owner: &str, upload: F) -> Result<JobView, SubmitError<E>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Upload, E>>,
    {
        let job = store::new_job_id();
        let index = self.runtime.entity::<JobIndex>(owner.to_string());
        let reserve = index::Reserve {
            job: job.clone(),
            now_ms: runtime::clock::unix_ms(),
            limit: self.settings.per_user_max,
        };
        if let Reservation::TooMany { limit } = index.ask(reserve).await? {
            return Err(JobsError::TooManyJobs { limit }.into());
        }
        let release_slot = || async {
            let _ = index.ask(index::Remove { job: job.clone() }).await;
        };
        // The quota: a user at it uploads nothing; one whose upload would go beyond it keeps
        // nothing (checked below, once the size is known).
        let quota = self.settings.stored_bytes_per_user_max;
        let stored = match self.stored_bytes(owner, &job).await {
            Ok(stored) => stored,
            Err(error) => {
                release_slot().await;
                return Err(error.into());
            }
        };
        if stored >= quota {
            release_slot().await;
            return Err(JobsError::QuotaExceeded { limit: quota }.into());
        }
        let store = self.runtime.object_store();
        let upload = match upload(job.clone()).await {
            Ok(upload) => upload,
            Err(error) => {
                release_slot().await;
                return Err(SubmitError::Upload(error));
            }
        };
        let within_quota = stored.saturating_add(upload.file_bytes) <= quota;
        let checked = if within_quota {
            scheduled_start(upload.not_before_ms, runtime::clock::unix_ms())
                .and_then(|not_before_ms| Ok((self.job_info(owner, upload)?, not_before_ms)))
        } else {
            Err(JobsError::QuotaExceeded { limit: quota })
        };
        let (info, not_before_ms) = match checked {
            Ok(info) => info,
            Err(error) => {
                store::delete_quietly(store, &store::input_path(&job)).await;
                release_slot().await;
                return Err(error.into());
            }
        };
        // The marker goes first: if this node dies between here and the submit, the reviver
        // finds it and cleans up.
        if let Err(error) = store::put_marker(store, &job, owner).await {
            store::delete_quietly(store, &store::input_path(&job)).await;
            release_slot().await;
            return Err(JobsError::Store(format!("cannot record the job: {error}")).into());
        }
        let entity = self.runtime.entity::<Job>(job.clone());
        let submitted = match not_before_ms {
            Some(not_before_ms) => {
                entity
                    .ask(Schedule {
                        info,
                        not_before_ms,
                    })
                    .await
            }
            None => entity.ask(Submit(info)).await,
        };
        let view = match submitted {
            Ok(Ok(view)) => view,
            Ok(Err(JobError::QueueFull { max })) => {
                store::delete_job_files(store, &job).await;
                release_slot().await;
                return Err(JobsError::QueueFull { max }.into());
            }
            Ok(Err(JobError::AlreadyExists | JobError::NotFound)) => {
                return Err(JobsError::Unexpected.into());
            }
            // The submit may or may not have landed: leave the files to the reviver (it runs
            // the job, or removes an orphan), and the reservation to the job's resumption (it
            // confirms the slot) or to its expiry.
            Err(error) => return Err(error.into()),
        };
        let _ = index.ask(index::Confirm { job: job.clone() }).await;
        Ok(view)
    }

    /// Bytes of the job files `owner` has stored (inputs and outputs of the jobs in their index,
    /// `except` the one being submitted). A job that does not answer counts as nothing: the
    /// quota is a bound on abuse, not an invoice.
    async fn stored_bytes(&self, owner: &str, except: &str) -> Result<u64, JobsError> {
        let entries = self
            .runtime
            .entity::<JobIndex>(owner.to_string())
            .ask(index::List {
                limit: index::JOBS_PER_USER_MAX,
            })
            .await?;
        Ok(futures_util::stream::iter(entries)
            .filter(|entry| std::future::ready(entry.job != except))
            .map(|entry| async move { self.status(owner, &entry.job).await.ok() })
            .buffer_unordered(LIST_CONCURRENCY_MAX)
            .fold(0u64, |sum, view| async move {
                let bytes = view.map_or(0, |view| {
                    view.input_bytes
                        .saturating_add(view.output.map_or(0, |output| output.bytes))
                });
                sum.saturating_add(bytes)
            })
            .await)
    }

    /// Checks the upload against its sniffed type and this node's converters.
    fn job_info(&self, owner: &str, upload: Upload) -> Result<JobInfo, JobsError> {
        let file_name = upload.file_name.ok_or(JobsError::MissingFile)?;
        let target_name = upload.target.ok_or(JobsError::MissingTarget)?;
        if upload.file_bytes == 0 {
            return Err(JobsError::EmptyFile);
        }
        let input_format = format::sniff(&upload.head, &upload.tail, upload.file_bytes, &file_name);
        let availability = self.availability();
        let supported = |format: Format| -> String {
            let targets: Vec<&str> = catalogue(availability)
                .into_iter()
                .filter(|pair| pair.from == format && pair.available)
                .map(|pair| pair.to.name())
                .collect();
            if targets.is_empty() {
                "nothing".to_string()
            } else {
                targets.join(", ")
            }
        };
        let Some(target) = Target::from_name(&target_name) else {
            return Err(JobsError::UnsupportedConversion(format!(
                "unknown target {target_name:?}; this {input_format} file converts to: {}",
                supported(input_format)
            )));
        };
        if check_pair(input_format, target, availability).is_err() {
            return Err(JobsError::UnsupportedConversion(format!(
                "cannot convert {input_format} to {target}; this {input_format} file converts to: {}",
                supported(input_format)
            )));
        }
        let options = Options {
            width: upload.width,
            height: upload.height,
            duration_ms: upload.duration_ms,
        };
        options
            .validate(input_format, target)
            .map_err(JobsError::InvalidOptions)?;
        Ok(JobInfo {
            owner: owner.to_string(),
            input_name: clean_file_name(&file_name),
            input_format,
            input_bytes: upload.file_bytes,
            target,
            options,
            created_ms: runtime::clock::unix_ms(),
        })
    }

    /// The job, if it exists and belongs to `owner` (`NotFound` otherwise, whichever it is).
    pub async fn status(&self, owner: &str, job: &str) -> Result<JobView, JobsError> {
        match self
            .runtime
            .entity::<Job>(job.to_string())
            .ask(Status)
            .await?
        {
            Ok(view) if view.owner == owner => Ok(view),
            Ok(_) | Err(_) => Err(JobsError::NotFound),
        }
    }

    /// The newest `limit` jobs of `owner`, newest first.
    pub async fn list(&self, owner: &str, limit: usize) -> Result<Vec<JobView>, JobsError> {
        let entries = self
            .runtime
            .entity::<JobIndex>(owner.to_string())
            .ask(index::List { limit })
            .await?;
        Ok(futures_util::stream::iter(entries)
            .map(|entry| async move { self.status(owner, &entry.job).await.ok() })
            .buffered(LIST_CONCURRENCY_MAX)
            .filter_map(|view| async move { view })
            .collect()
            .await)
    }

    /// The output of a done job of `owner`, as a stream of chunks.
    pub async fn output(&self, owner: &str, job: &str) -> Result<Output, JobsError> {
        let view = self.status(owner, job).await?;
        let info = match (view.phase, view.output) {
            (Phase::Done, Some(output)) => output,
            (phase, _) => {
                return Err(JobsError::NotReady {
                    phase: phase.as_str(),
                });
            }
        };
        let path = object_store::path::Path::from(info.path.as_str());
        match self.runtime.object_store().get(&path).await {
            Ok(object) => Ok(Output {
                info,
                chunks: object.into_stream(),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(JobsError::Gone),
            Err(error) => Err(JobsError::Store(format!("cannot read the output: {error}"))),
        }
    }

    /// Deletes a job of `owner` (cancelled if running, its files removed).
    pub async fn delete(&self, owner: &str, job: &str) -> Result<(), JobsError> {
        let delete = Delete {
            owner: owner.to_string(),
        };
        self.runtime
            .entity::<Job>(job.to_string())
            .ask(delete)
            .await?
            .map_err(|_| JobsError::NotFound)
    }
}

/// When a job asked to start no sooner than `not_before_ms` is to be scheduled, at `now_ms`:
/// `None` to start now (no time given, or one already past by at most
/// [`NOT_BEFORE_PAST_MS_MAX`]), or the time; refused further in the past or more than
/// [`NOT_BEFORE_AHEAD_MS_MAX`] ahead.
pub fn scheduled_start(not_before_ms: Option<u64>, now_ms: u64) -> Result<Option<u64>, JobsError> {
    let Some(not_before_ms) = not_before_ms else {
        return Ok(None);
    };
    if not_before_ms.saturating_add(NOT_BEFORE_PAST_MS_MAX) < now_ms {
        return Err(JobsError::InvalidNotBefore(format!(
            "`not_before` {not_before_ms} is more than {} s in the past (now is {now_ms}; it is unix milliseconds)",
            NOT_BEFORE_PAST_MS_MAX / 1000
        )));
    }
    if not_before_ms > now_ms.saturating_add(NOT_BEFORE_AHEAD_MS_MAX) {
        return Err(JobsError::InvalidNotBefore(format!(
            "`not_before` {not_before_ms} is more than {} days ahead (now is {now_ms}; it is unix milliseconds)",
            NOT_BEFORE_AHEAD_MS_MAX / (24 * 3600 * 1000)
        )));
    }
    Ok((not_before_ms > now_ms).then_some(not_before_ms))
}

/// The base name of a client's file name, without control characters, bounded.
fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .filter(|character| !character.is_control())
        .take(FILE_NAME_CHARS_MAX)
        .collect();
    if cleaned.trim().is_empty() {
        "upload".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_before_is_now_later_or_refused() {
        let now_ms = 1_800_000_000_000;
        assert_eq!(scheduled_start(None, now_ms).ok(), Some(None));
        assert_eq!(
            scheduled_start(Some(now_ms - 5_000), now_ms).ok(),
            Some(None)
        );
        assert_eq!(scheduled_start(Some(now_ms), now_ms).ok(), Some(None));
        assert_eq!(
            scheduled_start(Some(now_ms + 3_000), now_ms).ok(),
            Some(Some(now_ms + 3_000))
        );
        let ahead = now_ms + NOT_BEFORE_AHEAD_MS_MAX;
        assert_eq!(scheduled_start(Some(ahead), now_ms).ok(), Some(Some(ahead)));
        for refused in [
            0,
            1_800_000_000,
            now_ms - NOT_BEFORE_PAST_MS_MAX - 1,
            ahead + 1,
        ] {
            assert!(
                matches!(
                    scheduled_start(Some(refused), now_ms),
                    Err(JobsError::InvalidNotBefore(_))
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name("C:\\Users\\me\\photo.png"), "photo.png");
        assert_eq!(clean_file_name("a\u{0}b\n.png"), "ab.png");
        assert_eq!(clean_file_name("   "), "upload");
    }
}
