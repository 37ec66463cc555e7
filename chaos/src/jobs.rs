//! The optional conversion-jobs workload: enabled when the cluster answers
//! `GET /api/converters`, it submits small CSV → JSON jobs (`POST /api/jobs`, multipart with
//! `file` and `target`) through every node, follows them, and at the end reads every accepted
//! job's final state, downloads each done job's output and counts its output objects in the
//! shared object store (`jobs/<id>/output.*`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::test_token;
use crate::records::JobRecord;
use crate::workload::{Clock, Progress};

/// Pause between two submissions of one submitter.
const SUBMIT_INTERVAL: Duration = Duration::from_millis(1500);
/// Timeout of one jobs API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most jobs one submitter has unfinished at once (stays under any per-user limit).
const UNFINISHED_PER_USER_MAX: usize = 2;
/// Downloads of each done job (each from another node); every one must work.
const DOWNLOAD_ATTEMPTS: usize = 3;
/// Jobs settled at once after the run.
const SETTLE_CONCURRENT: usize = 8;
/// The target format asked for.
const TARGET: &str = "json";

/// Whether the cluster has the jobs API: `Ok(())`, or why not.
pub async fn detect(http: &reqwest::Client, base_url: &str) -> Result<(), String> {
    let url = format!("{base_url}/api/converters");
    match http
        .get(&url)
        .bearer_auth(test_token("chaos-jobs-probe"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!(
            "GET /api/converters answered {}",
            response.status()
        )),
        Err(error) => Err(format!("GET /api/converters failed: {error}")),
    }
}

/// Accepted jobs, shared between the submitters and the end-of-run check.
#[derive(Debug, Default)]
pub struct JobBook {
    jobs: Mutex<Vec<JobRecord>>,
    /// Set when the cluster refuses the workload's jobs outright (e.g. 422): stop submitting.
    disabled: Mutex<Option<String>>,
}

impl JobBook {
    pub fn records(&self) -> Vec<JobRecord> {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn disabled_reason(&self) -> Option<String> {
        self.disabled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One job submitter: a user submitting through `nodes[home]` (others when it fails).
pub struct Submitter {
    pub http: reqwest::Client,
    pub user: String,
    /// Base URLs of every node.
    pub nodes: Vec<String>,
    pub home: usize,
    pub book: Arc<JobBook>,
    pub clock: Clock,
    pub progress: Arc<Progress>,
}

/// Submits and follows jobs until `stop` is true.
pub async fn submitter(submitter: Submitter, stop: watch::Receiver<bool>) {
    let Submitter {
        http,
        user,
        nodes,
        home,
        book,
        clock,
        progress,
    } = submitter;
    let token = test_token(&user);
    let mut choice = home;
    let mut counter = 0u64;
    let mut mine: Vec<String> = Vec::new();
    while !*stop.borrow() && book.disabled_reason().is_none() {
        tokio::time::sleep(SUBMIT_INTERVAL).await;
        // Follow our unfinished jobs first, so we stay under the per-user limit.
        let mut unfinished = Vec::new();
        for job in mine.drain(..) {
            match job_state(&http, &nodes[choice], &token, &job).await {
                Some((state, error)) if state == "done" || state == "failed" => {
                    record_final(&book, &job, &state, error, clock.now_ms());
                    progress.jobs_finished.fetch_add(1, Ordering::Relaxed);
                }
                _ => unfinished.push(job),
            }
        }
        mine = unfinished;
        if mine.len() >= UNFINISHED_PER_USER_MAX {
            continue;
        }
        counter += 1;
        let csv = format!("name,count\n{user},{counter}\nchaos,{}\n", clock.now_ms());
        match submit(&http, &nodes[choice], &token, &csv).await {
            Submitted::Accepted(job) => {
                progress.jobs_accepted.fetch_add(1, Ordering::Relaxed);
                book.jobs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(JobRecord {
                        job: job.clone(),
                        user: user.clone(),
                        accepted_ms: clock.now_ms(),
                        final_state: None,
                        error: None,
                        outputs: None,
                        downloaded: None,
                        download_errors: Vec::new(),
                        done_ms: None,
                    });
                mine.push(job);
            }
            Submitted::Busy => {}
            Submitted::Refused(reason) => {
                *book.disabled.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
            }
            Submitted::Unreachable => choice = (choice + 1) % nodes.len(),
        }
    }
}

enum Submitted {
    Accepted(String),
    /// 429 or 503: try again later.
    Busy,
    /// The cluster will never accept this job (4xx): the workload stops submitting.
    Refused(String),
    Unreachable,
}

async fn submit(http: &reqwest::Client, base_url: &str, token: &str, csv: &str) -> Submitted {
    let boundary = format!("chaos-boundary-{}", fastrand_like(csv));
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\n{TARGET}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chaos.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--{boundary}--\r\n"
    );
    let response = http
        .post(format!("{base_url}/api/jobs"))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await;
    let Ok(response) = response else {
        return Submitted::Unreachable;
    };
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        let job = body["job"]
            .as_str()
            .or_else(|| body["job"]["id"].as_str())
            .or_else(|| body["id"].as_str());
        return match job {
            Some(job) => Submitted::Accepted(job.to_string()),
            None => Submitted::Refused(format!(
                "POST /api/jobs answered {status} without a job id: {body}"
            )),
        };
    }
    match status.as_u16() {
        429 | 502..=504 => Submitted::Busy,
        400..=499 => Submitted::Refused(format!("POST /api/jobs answered {status}: {body}")),
        _ => Submitted::Busy,
    }
}

/// A boundary suffix that cannot occur in the (digits and letters) CSV body.
fn fastrand_like(seed: &str) -> u64 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `(state, error)` of a job, or `None` if it cannot be read now.
async fn job_state(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    job: &str,
) -> Option<(String, Option<String>)> {
    let response = http
        .get(format!("{base_url}/api/jobs/{job}"))
        .bearer_auth(token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let body = if body["job"].is_object() {
        body["job"].clone()
    } else {
        body
    };
    let state = body["state"].as_str()?.to_string();
    let error = body["error"].as_str().map(str::to_string);
    Some((state, error))
}

fn record_final(book: &JobBook, job: &str, state: &str, error: Option<String>, now_ms: u64) {
    let mut jobs = book.jobs.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(record) = jobs.iter_mut().find(|record| record.job == job) {
        record.final_state = Some(state.to_string());
        record.error = error;
        record.done_ms.get_or_insert(now_ms);
    }
}

/// After the run: waits (bounded) for every accepted job to finish, downloads the done ones
/// and counts their output objects under `objects_dir` (`None`: the store is not a local
/// directory, and downloads are the only check of the outputs).
pub async fn settle(
    http: &reqwest::Client,
    nodes: &[String],
    book: &JobBook,
    objects_dir: Option<&Path>,
    clock: Clock,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let records: Vec<JobRecord> = futures_util::stream::iter(book.records())
        .map(|record| settle_one(http, nodes, record, objects_dir, clock, deadline))
        .buffer_unordered(SETTLE_CONCURRENT)
        .collect()
        .await;
    *book.jobs.lock().unwrap_or_else(PoisonError::into_inner) = records;
}

/// One job's final state, downloads and output count.
async fn settle_one(
    http: &reqwest::Client,
    nodes: &[String],
    mut record: JobRecord,
    objects_dir: Option<&Path>,
    clock: Clock,
    deadline: Instant,
) -> JobRecord {
    let token = test_token(&record.user);
    let mut attempt = 0;
    loop {
        let node = &nodes[attempt % nodes.len()];
        attempt += 1;
        if let Some((state, error)) = job_state(http, node, &token, &record.job).await {
            record.final_state = Some(state.clone());
            record.error = error;
            if state == "done" || state == "failed" {
                record.done_ms.get_or_insert(clock.now_ms());
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if record.final_state.as_deref() == Some("done") {
        // Every node in turn: a failure on one node only is still a failure, and its message
        // says which.
        let mut failures = Vec::new();
        for offset in 0..DOWNLOAD_ATTEMPTS.min(nodes.len()) {
            let node = &nodes[(attempt + offset) % nodes.len()];
            if let Err(error) = download(http, node, &token, &record.job).await {
                failures.push(format!("{node}: {error}"));
            }
        }
        record.downloaded = Some(failures.is_empty());
        record.download_errors = failures;
    }
    record.outputs = objects_dir.and_then(|dir| count_outputs(&dir.join("jobs").join(&record.job)));
    record
}

/// Downloads a job's output and checks it is complete (as long as its content-length).
async fn download(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    job: &str,
) -> Result<(), String> {
    let url = format!("{base_url}/api/jobs/{job}/download");
    let response = http
        .get(&url)
        .bearer_auth(token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|error| format!("{error}"))?;
    let status = response.status();
    let length = response.content_length();
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|error| format!("reading the body (content-length {length:?}): {error:?}"))?;
    if bytes.is_empty() {
        return Err("empty body".into());
    }
    Ok(())
}

/// Files named `output*` in a job's object folder; `None` if the folder cannot be read.
fn count_outputs(job_dir: &PathBuf) -> Option<usize> {
    if !job_dir.is_dir() {
        return Some(0);
    }
    let entries = std::fs::read_dir(job_dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("output"))
            .count(),
    )
}
