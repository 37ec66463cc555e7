//! Poison uploads: every file of the hostile corpus (`corpus.rs`), for every target it names
//! that the cluster can convert, uploaded with an ordinary user's token and followed to its
//! end. The job must fail with a reason a person can read, within the job timeout; the node
//! that ran it must not notice (the run's process and memory invariants check that).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::time::Instant;

use super::{Judgement, Outcome, Shared};
use crate::client::test_token;
use crate::cluster::TestCluster;
use crate::corpus::corpus;

/// The uploading user: one user, so `jobs.per_user_max` bounds what it has queued.
const UPLOADER: &str = "chaos-hostile-uploader";
const BOUNDARY: &str = "chaos-hostile-boundary-7e1f";
/// Deadline of the upload request itself (the largest corpus files are a few MB).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the job timeout, how long a job may take to reach its end (queueing behind the
/// other jobs, a revival after its node died).
const JOB_SLACK: Duration = Duration::from_secs(40);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reason a person is expected to read.
const REASON_BYTES_MAX: usize = 600;
/// Most characters of a reason kept in the tallied label (the rest is in the action's detail).
const REASON_LABEL_CHARS: usize = 90;
/// A label stops at the first `: ` or ` (` after this many characters: "the input is not a
/// valid gif file: <the decoder's words>" tallies as one reason.
const REASON_LABEL_CHARS_MIN: usize = 16;

/// One corpus file and one of its targets.
#[derive(Debug, Clone)]
pub struct UploadCase {
    pub name: String,
    pub target: &'static str,
    pub options: Vec<(&'static str, String)>,
    pub bytes: Arc<Vec<u8>>,
}

impl UploadCase {
    pub fn describe(&self) -> String {
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(name, value)| format!(" {name}={value}"))
            .collect();
        format!("{} → {}{}", self.name, self.target, options.concat())
    }

    fn form(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes.len() + 1024);
        let mut field = |name: &str, value: &str| {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        };
        field("target", self.target);
        for (name, value) in &self.options {
            field(name, value);
        }
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                self.name
            )
            .as_bytes(),
        );
        body.extend_from_slice(&self.bytes);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        body
    }
}

/// The cases this cluster can run (by `GET /api/converters`), and the pairs it cannot.
pub async fn prepare(
    cluster: &TestCluster,
    http: &reqwest::Client,
) -> anyhow::Result<(Vec<UploadCase>, Vec<String>)> {
    let node = cluster
        .node_ids()
        .into_iter()
        .next()
        .context("no node in the cluster")?;
    let catalogue: Value = http
        .get(format!("{}/api/converters", cluster.http_url(&node)))
        .bearer_auth(test_token(UPLOADER))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .context("GET /api/converters")?
        .json()
        .await
        .context("GET /api/converters: not JSON")?;
    let available: Vec<(String, String)> = catalogue["converters"]
        .as_array()
        .context("GET /api/converters: no `converters` list")?
        .iter()
        .filter(|pair| pair["available"] == true)
        .map(|pair| {
            (
                pair["from"].as_str().unwrap_or_default().to_string(),
                pair["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // A few gigabyte-class bombs are compressed for real: off the runtime's threads.
    let inputs = tokio::task::spawn_blocking(corpus)
        .await
        .context("generating the corpus")?;
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    for input in inputs {
        let bytes = Arc::new(input.bytes);
        for target in input.targets {
            let pair = (input.format.to_string(), target.to_string());
            if !available.contains(&pair) {
                skipped.push(format!("{} → {target}", input.name));
                continue;
            }
            cases.push(UploadCase {
                name: input.name.clone(),
                target,
                options: input.options.clone(),
                bytes: bytes.clone(),
            });
        }
    }
    Ok((cases, skipped))
}

/// Uploads `case` through `target` and follows the job to its end.
pub async fn upload(shared: &Shared, case: &UploadCase, target: &str) -> Outcome {
    let started = Instant::now();
    let token = test_token(UPLOADER);
    let response = shared
        .http
        .post(format!("{}/api/jobs", shared.cluster.http_url(target)))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(case.form())
        .timeout(UPLOAD_TIMEOUT)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            return Outcome::new(Judgement::Unexpected, "upload failed", format!("{error}"));
        }
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    let job = match (status, body["job"].as_str()) {
        (200..=299, Some(job)) => job.to_string(),
        // Busy or short of memory: a fair answer from a loaded node.
        (429 | 503, _) => {
            return Outcome::new(Judgement::Tolerated, format!("refused {status} {code}"), "");
        }
        // Refused outright, with a reason: as good as a failed job.
        (400..=499, _) if !code.is_empty() => {
            return Outcome::new(
                Judgement::Expected,
                format!("refused {status} {code}"),
                body["error"]["message"].as_str().unwrap_or("").to_string(),
            );
        }
        _ => {
            return Outcome::new(
                Judgement::Unexpected,
                format!("upload answered {status}"),
                body.to_string(),
            );
        }
    };
    let wait = Duration::from_millis(shared.hostile.job_timeout_ms) + JOB_SLACK;
    let deadline = started + wait;
    let nodes = shared.cluster.node_ids();
    let mut attempt = nodes.iter().position(|node| node == target).unwrap_or(0);
    let mut last_state = String::from("never read");
    while Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
        // The job's node may die meanwhile: any node answers for it.
        let node = &nodes[attempt % nodes.len()];
        let Some((state, error)) = job_state(shared, node, &token, &job).await else {
            attempt += 1;
            continue;
        };
        let ran = format!("job {job} in {:.1?}", started.elapsed());
        match state.as_str() {
            "failed" => {
                let reason = error.unwrap_or_default();
                return if readable(&reason) {
                    Outcome::new(
                        Judgement::Expected,
                        format!("failed: {}", label(&reason)),
                        format!("{ran}: {reason}"),
                    )
                } else {
                    Outcome::new(
                        Judgement::Unexpected,
                        "failed with an unreadable reason",
                        format!("{ran}: {reason:?}"),
                    )
                };
            }
            "done" => {
                return Outcome::new(
                    Judgement::Unexpected,
                    "converted (a hostile input must fail)",
                    ran,
                );
            }
            _ => last_state = state,
        }
    }
    Outcome::new(
        Judgement::Unexpected,
        format!("job not finished within {wait:?}"),
        format!("job {job}, last state {last_state}"),
    )
}

async fn job_state(
    shared: &Shared,
    node: &str,
    token: &str,
    job: &str,
) -> Option<(String, Option<String>)> {
    let response = shared
        .http
        .get(format!("{}/api/jobs/{job}", shared.cluster.http_url(node)))
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
    Some((
        body["state"].as_str()?.to_string(),
        body["error"].as_str().map(str::to_string),
    ))
}

/// A reason meant for a person: short, no panic message or stderr noise, no paths.
fn readable(reason: &str) -> bool {
    !reason.trim().is_empty()
        && reason.len() < REASON_BYTES_MAX
        && !reason.contains("panicked at")
        && !reason.contains("thread 'main'")
        && !reason.contains("/tmp")
        && !reason.contains("actorhub-convert")
}

/// The gist of a reason, for tallying: up to its first detail (the whole reason is in the
/// action's detail).
fn label(reason: &str) -> String {
    let cut = [": ", " ("]
        .iter()
        .filter_map(|separator| {
            reason
                .match_indices(separator)
                .map(|(at, _)| at)
                .find(|at| *at >= REASON_LABEL_CHARS_MIN)
        })
        .min()
        .unwrap_or(reason.len());
    let gist = &reason[..cut];
    let mut label: String = gist.chars().take(REASON_LABEL_CHARS).collect();
    if gist.chars().count() > REASON_LABEL_CHARS {
        label.push('…');
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_must_be_readable() {
        assert!(readable("the converter ran out of memory (limit 512 MiB)"));
        assert!(!readable(""));
        assert!(!readable("thread 'main' panicked at src/main.rs:3"));
        assert!(!readable("cannot open /tmp/actorhub-convert-1/input.png"));
        assert!(!readable(&"x".repeat(REASON_BYTES_MAX)));
        assert_eq!(label("short"), "short");
        assert!(label(&"y".repeat(200)).ends_with('…'));
        assert_eq!(
            label("the input is not a valid gif file: Format error decoding Gif: Unexpected"),
            "the input is not a valid gif file"
        );
        assert_eq!(
            label("the converter ran out of memory (limit 512 MiB)"),
            "the converter ran out of memory"
        );
        assert_eq!(label("more than 10000 columns"), "more than 10000 columns");
    }

    #[test]
    fn the_form_names_the_file_target_and_options() {
        let case = UploadCase {
            name: "png-20000-square-resize.png".into(),
            target: "jpeg",
            options: vec![("width", "6000".into())],
            bytes: Arc::new(b"\x89PNG".to_vec()),
        };
        let form = String::from_utf8_lossy(&case.form()).into_owned();
        assert!(form.contains("name=\"target\"\r\n\r\njpeg\r\n"), "{form}");
        assert!(form.contains("name=\"width\"\r\n\r\n6000\r\n"), "{form}");
        assert!(
            form.contains("filename=\"png-20000-square-resize.png\""),
            "{form}"
        );
        assert!(form.ends_with(&format!("--{BOUNDARY}--\r\n")));
        assert_eq!(
            case.describe(),
            "png-20000-square-resize.png → jpeg width=6000"
        );
    }
}
