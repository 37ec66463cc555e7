//! Every metric of conversion jobs, described once. Labels are closed sets (outcomes, target
//! format names), never a file name or a user id.

pub const JOBS_SUBMITTED_TOTAL: &str = "actorhub_jobs_submitted_total";
pub const JOBS_FINISHED_TOTAL: &str = "actorhub_jobs_finished_total";
pub const CONVERSION_SECONDS: &str = "actorhub_job_conversion_seconds";
pub const POOL_JOBS: &str = "actorhub_job_pool_jobs";
pub const ATTEMPTS_TOTAL: &str = "actorhub_job_attempts_total";
pub const WORKER_CRASHES_TOTAL: &str = "actorhub_job_worker_crashes_total";
pub const REVIVER_RESUMES_TOTAL: &str = "actorhub_job_reviver_resumes_total";
pub const REVIVER_SCANS_TOTAL: &str = "actorhub_job_reviver_scans_total";
pub const JOBS_EXPIRED_TOTAL: &str = "actorhub_jobs_expired_total";

/// Registers the descriptions (idempotent).
pub fn describe() {
    metrics::describe_counter!(JOBS_SUBMITTED_TOTAL, "Conversion jobs accepted, by target.");
    metrics::describe_counter!(
        JOBS_FINISHED_TOTAL,
        "Conversion jobs that reached their final state, by outcome (done, failed, cancelled)."
    );
    metrics::describe_histogram!(
        CONVERSION_SECONDS,
        metrics::Unit::Seconds,
        "Time converters ran, by target (waiting for a worker not included)."
    );
    metrics::describe_gauge!(
        POOL_JOBS,
        "Jobs with a worker on this node, waiting for a thread or converting."
    );
    metrics::describe_counter!(
        ATTEMPTS_TOTAL,
        "Conversion attempts started on this node (journaled first; a job resumed after a failover or a worker crash runs again)."
    );
    metrics::describe_counter!(
        WORKER_CRASHES_TOTAL,
        "Converter worker processes that died without a result (each ends its job's attempt)."
    );
    metrics::describe_counter!(
        REVIVER_RESUMES_TOTAL,
        "Unfinished jobs this node's reviver re-activated, by outcome."
    );
    metrics::describe_counter!(REVIVER_SCANS_TOTAL, "Scans of the unfinished-job markers.");
    metrics::describe_counter!(
        JOBS_EXPIRED_TOTAL,
        "Finished jobs deleted `jobs.finished_ttl_s` after they finished."
    );
    // Exported from the start, at zero, for the dashboard and alerts (deploy/): a counter born
    // at its first event hides that event from `increase()`.
    metrics::counter!(WORKER_CRASHES_TOTAL).increment(0);
    metrics::gauge!(POOL_JOBS).increment(0.0);
}
