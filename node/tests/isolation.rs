//! Isolation of conversions on real node processes: every hostile input of the corpus
//! (`chaos::corpus`) fails its job with a readable reason while the node carries on; a worker
//! killed with SIGKILL, one that exceeds its memory limit and one that spins forever each fail
//! their job alone; a converter that crashes its worker every time is quarantined after exactly
//! `jobs.max_attempts` attempts, across a node kill, and never revived.
//!
//! Tests run one at a time (2-core machine), each with its own cluster. The test-only
//! converters (`crash`, `hog`, `spin`, `slow`) need `jobs.test_converters = true`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chaos::client::test_token;
use chaos::cluster::{ClusterBuilder, ProcessState, TestCluster};
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(30);
const BOUNDARY: &str = "actorhub-isolation-boundary-51c2";

async fn cluster(nodes: usize, settings: &[(&str, toml::Value)]) -> TestCluster {
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(nodes)
        .setting("jobs", "test_converters", true)
        .setting("jobs", "per_user_max", 1_000)
        .setting("jobs", "queue_max", 1_000);
    for (key, value) in settings {
        builder = builder.setting("jobs", key, value.clone());
    }
    builder.start().await.expect("cluster starts")
}

fn form(fields: &[(&str, &str)], file_name: &str, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Uploads and expects the job to be accepted; returns its id.
async fn submit(
    cluster: &TestCluster,
    node: &str,
    user: &str,
    file_name: &str,
    file: &[u8],
    fields: &[(&str, &str)],
) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/jobs", cluster.http_url(node)))
        .bearer_auth(test_token(user))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form(fields, file_name, file))
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "{file_name} {fields:?} accepted: {body}");
    body["job"].as_str().expect("job id").to_string()
}

async fn get(cluster: &TestCluster, node: &str, user: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", cluster.http_url(node)))
        .bearer_auth(test_token(user))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls the job on `node` until `done(job)` holds, for at most `wait`.
async fn wait_job(
    cluster: &TestCluster,
    node: &str,
    user: &str,
    job: &str,
    wait: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let (status, body) = get(cluster, node, user, &format!("/api/jobs/{job}")).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} never {what}; last answer {status} {body}\n{}",
            cluster.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn is_final(body: &Value) -> bool {
    body["state"] == "done" || body["state"] == "failed"
}

/// A reason meant for a person: short, no stderr noise, no paths.
fn assert_readable(reason: &str, what: &str) {
    assert!(
        !reason.is_empty()
            && reason.len() < 600
            && !reason.contains("panicked at")
            && !reason.contains("thread 'main'")
            && !reason.contains("/tmp")
            && !reason.contains("actorhub-convert"),
        "{what}: not a readable reason: {reason:?}"
    );
}

fn running_pid(cluster: &TestCluster, node: &str) -> u32 {
    match cluster.process_state(node) {
        ProcessState::Running { pid, .. } => pid,
        other => panic!("node {node} is not running: {other:?}"),
    }
}

/// Converter worker processes whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent pid is the second field after the command name's closing parenthesis.
            let parent_of = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|field| field.parse::<u32>().ok());
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent_of == Some(parent)
                && command
                    .split(|byte| *byte == 0)
                    .any(|argument| argument == b"convert-worker")
        })
        .collect()
}

/// Waits for a converter worker of `parent` other than those in `seen`.
async fn new_worker(parent: u32, seen: &BTreeSet<u32>) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(pid) = workers_of(parent)
            .into_iter()
            .find(|pid| !seen.contains(pid))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new converter worker appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGKILL to {pid}");
}

fn small_png() -> Vec<u8> {
    let picture = image::RgbaImage::from_fn(64, 48, |x, y| {
        image::Rgba([(x * 4) as u8, (y * 5) as u8, 90, 255])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(picture)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("png");
    bytes
}

/// A normal conversion on `node` finishes.
async fn assert_a_normal_job_finishes(cluster: &TestCluster, node: &str) {
    let job = submit(
        cluster,
        node,
        "alice",
        "fine.png",
        &small_png(),
        &[("target", "jpeg")],
    )
    .await;
    let body = wait_job(cluster, node, "alice", &job, WAIT, "finished", is_final).await;
    assert_eq!(body["state"], "done", "a normal job afterwards: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_fails_its_job_with_a_reason_and_the_node_carries_on() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TIMEOUT_MS: u64 = 20_000;
    let cluster = cluster(
        1,
        &[("timeout_ms", toml::Value::Integer(TIMEOUT_MS as i64))],
    )
    .await;
    let pid = running_pid(&cluster, "n1");
    let (_, catalogue) = get(&cluster, "n1", "mallory", "/api/converters").await;
    let available: BTreeSet<(String, String)> = catalogue["converters"]
        .as_array()
        .expect("pairs")
        .iter()
        .filter(|pair| pair["available"] == true)
        .map(|pair| {
            (
                pair["from"].as_str().unwrap_or_default().to_string(),
                pair["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();

    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    for input in chaos::corpus::corpus() {
        for target in &input.targets {
            if !available.contains(&(input.format.to_string(), target.to_string())) {
                skipped.push(format!("{} → {target}", input.name));
                continue;
            }
            let mut fields = vec![("target", target.to_string())];
            fields.extend(
                input
                    .options
                    .iter()
                    .map(|(name, value)| (*name, value.clone())),
            );
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let job = submit(
                &cluster,
                "n1",
                "mallory",
                &input.name,
                &input.bytes,
                &fields,
            )
            .await;
            jobs.push((format!("{} → {target}", input.name), job));
        }
    }
    assert!(
        jobs.len() >= 30,
        "most of the corpus runs here: {}",
        jobs.len()
    );
    // Every job is done within its own timeout once it got a worker; with two workers the
    // queue ahead of the last one is the whole corpus, so the bound here is generous.
    let wait = Duration::from_millis(TIMEOUT_MS) * 4;
    let mut report = Vec::new();
    for (what, job) in &jobs {
        let body = wait_job(&cluster, "n1", "mallory", job, wait, "finished", is_final).await;
        let reason = body["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(body["state"], "failed", "{what} must fail: {body}");
        assert_readable(&reason, what);
        let ran_ms = body["finished_ms"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(body["started_ms"].as_u64().unwrap_or(0));
        assert!(ran_ms <= TIMEOUT_MS + 2_000, "{what} ran {ran_ms} ms");
        report.push(format!("{what:<48} {ran_ms:>6} ms  {reason}"));
    }
    println!(
        "hostile corpus ({} jobs):\n{}",
        jobs.len(),
        report.join("\n")
    );
    if !skipped.is_empty() {
        println!(
            "not available on this node (skipped): {}",
            skipped.join(", ")
        );
    }
    assert_eq!(
        running_pid(&cluster, "n1"),
        pid,
        "the node's pid is unchanged"
    );
    assert_a_normal_job_finishes(&cluster, "n1").await;
    assert!(
        workers_of(pid).is_empty(),
        "no converter worker is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_a_memory_hog_and_a_spinning_worker_each_fail_their_job_alone() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(
        1,
        &[
            ("workers", 3.into()),
            ("max_attempts", 2.into()),
            ("worker_memory_bytes_max", (128 * 1024 * 1024).into()),
            ("worker_cpu_seconds_max", 2.into()),
            ("timeout_ms", 20_000.into()),
        ],
    )
    .await;
    let pid = running_pid(&cluster, "n1");

    // A worker killed from outside twice: each death ends an attempt, the second ends the job.
    let slow = submit(
        &cluster,
        "n1",
        "bob",
        "slow.txt",
        b"slow input",
        &[("target", "slow"), ("duration_ms", "60000")],
    )
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let worker = new_worker(pid, &seen).await;
        seen.insert(worker);
        sigkill(worker);
    }
    let hog = submit(&cluster, "n1", "bob", "hog.txt", b"x", &[("target", "hog")]).await;
    let spin = submit(
        &cluster,
        "n1",
        "bob",
        "spin.txt",
        b"x",
        &[("target", "spin")],
    )
    .await;

    let killed = wait_job(&cluster, "n1", "bob", &slow, WAIT, "finished", is_final).await;
    let reason = killed["error"].as_str().unwrap_or_default();
    assert_eq!(killed["state"], "failed", "{killed}");
    assert_eq!(
        killed["attempts"], 2,
        "one attempt per killed worker: {killed}"
    );
    assert!(
        reason.contains("crashed on this input 2 times") && reason.contains("signal 9"),
        "{reason}"
    );
    let hogged = wait_job(&cluster, "n1", "bob", &hog, WAIT, "finished", is_final).await;
    assert_eq!(hogged["state"], "failed", "{hogged}");
    assert_eq!(
        hogged["error"], "the converter ran out of memory (limit 128 MiB)",
        "{hogged}"
    );
    assert_eq!(
        hogged["attempts"], 1,
        "a limit hit is not retried: {hogged}"
    );
    let spun = wait_job(&cluster, "n1", "bob", &spin, WAIT, "finished", is_final).await;
    assert_eq!(spun["state"], "failed", "{spun}");
    assert_eq!(
        spun["error"], "the converter used more than its 2 s of CPU time",
        "{spun}"
    );
    assert_eq!(spun["attempts"], 1, "{spun}");

    assert_eq!(
        running_pid(&cluster, "n1"),
        pid,
        "the node's pid is unchanged"
    );
    assert_a_normal_job_finishes(&cluster, "n1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converter_that_always_crashes_is_quarantined_after_max_attempts_across_a_node_kill() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3, &[("max_attempts", 3.into())]).await;
    let nodes = ["n1", "n2", "n3"];
    let job = submit(
        &cluster,
        "n1",
        "carol",
        "poison.txt",
        b"poison",
        &[("target", "crash"), ("duration_ms", "1500")],
    )
    .await;
    let first = wait_job(&cluster, "n1", "carol", &job, WAIT, "started", |body| {
        body["state"] == "running" && body["attempts"] == 1
    })
    .await;
    let victim = first["node"].as_str().expect("node").to_string();
    let survivors: Vec<&str> = nodes.into_iter().filter(|node| *node != victim).collect();
    let pids: Vec<u32> = survivors
        .iter()
        .map(|node| running_pid(&cluster, node))
        .collect();
    // The node dies in the middle of the first attempt, which never reports: it counts.
    cluster.kill(&victim);

    let failed = wait_job(
        &cluster,
        survivors[0],
        "carol",
        &job,
        WAIT,
        "finished",
        is_final,
    )
    .await;
    println!("quarantined: {failed}");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(
        failed["attempts"], 3,
        "exactly max_attempts attempts: {failed}"
    );
    let reason = failed["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("the converter crashed on this input 3 times"),
        "{reason}"
    );
    assert_readable(reason, "quarantine");
    for (node, pid) in survivors.iter().zip(&pids) {
        assert_eq!(running_pid(&cluster, node), *pid, "{node} did not die");
    }

    // The killed node comes back: the job stays failed with its three attempts; its marker is
    // gone, so no reviver can ever start it again.
    cluster.restart(&victim).await.expect("restart");
    cluster.wait_all_up(WAIT).await.expect("all up");
    let marker = cluster
        .dir()
        .join(format!("data/objects/jobs/active/{job}"));
    let deadline = Instant::now() + WAIT;
    while marker.exists() {
        assert!(Instant::now() < deadline, "the failed job's marker stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in nodes {
        let (_, body) = get(&cluster, node, "carol", &format!("/api/jobs/{job}")).await;
        assert_eq!(
            (body["state"].as_str(), body["attempts"].as_u64()),
            (Some("failed"), Some(3)),
            "{node}: {body}"
        );
    }
}

/// The worker run by hand, as a port runs it: an input that is a symlink to a file outside
/// its directory cannot be read (Landlock), and the sandbox says what it enforces.
#[test]
fn a_worker_cannot_read_outside_its_directory() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret.png");
    std::fs::write(&secret, small_png()).expect("write");
    let directory = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&secret, directory.path().join("input.png")).expect("symlink");
    let request = serde_json::json!({
        "v": 1, "input": "input.png", "from": "Png", "target": {"Format": "Jpeg"},
        "options": {"width": null, "height": null, "duration_ms": null},
        "input_bytes_max": 1_000_000, "output_bytes_max": 1_000_000, "time_budget_ms": 10_000,
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_node"))
        .arg("convert-worker")
        .args(["--parent-pid", &std::process::id().to_string()])
        .args(["--memory-bytes", "268435456", "--cpu-seconds", "10"])
        .args(["--file-bytes", "1000000", "--open-files", "64"])
        .env_clear()
        .current_dir(directory.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{request}").expect("request");
    drop(stdin);
    let output = child.wait_with_output().expect("worker ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("protocol line"))
        .collect();
    assert_eq!(lines[0]["type"], "ready", "{stdout}");
    let landlock = lines[0]["sandbox"]["landlock"].as_str().unwrap_or_default();
    let last = lines.last().expect("a result");
    if landlock == "none" {
        eprintln!("this kernel has no Landlock: the symlink is readable, nothing to check");
        return;
    }
    assert_eq!(last["type"], "failed", "{stdout}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Permission denied"),
        "{stdout}"
    );
    assert!(!directory.path().join("output.jpg").exists());
}

/// The node's resident memory (KiB) from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The node's RSS before, at its peak and after while the issue's two inputs run: the 1.5 KB
/// XLSX whose range is the whole sheet, and the 20000×20000 PNG resized to 6000 wide. A
/// measurement, not a test: it asserts only that both fail and the node survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release -p node --test isolation -- --ignored --nocapture"]
async fn measure_node_memory_while_the_issue_s_inputs_run() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(1, &[]).await;
    let pid = running_pid(&cluster, "n1");
    assert_a_normal_job_finishes(&cluster, "n1").await;
    let corpus = chaos::corpus::corpus();
    for name in [
        "xlsx-whole-sheet-range.xlsx",
        "png-20000-square-resize.png",
        "png-resize-buffers.png",
    ] {
        let input = corpus
            .iter()
            .find(|input| input.name == name)
            .expect("in the corpus");
        let before = rss_kib(pid);
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_kib(pid));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                peak
            })
        };
        let mut fields = vec![("target", input.targets[0].to_string())];
        fields.extend(
            input
                .options
                .iter()
                .map(|(name, value)| (*name, value.clone())),
        );
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let job = submit(&cluster, "n1", "mallory", name, &input.bytes, &fields).await;
        let body = wait_job(&cluster, "n1", "mallory", &job, WAIT, "finished", is_final).await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.await.expect("sampler");
        let after = rss_kib(pid);
        println!(
            "{name} ({} bytes): node RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; job {}: {}",
            input.bytes.len(),
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            after as f64 / 1024.0,
            body["state"],
            body["error"]
        );
        assert_eq!(body["state"], "failed");
    }
    assert_eq!(
        running_pid(&cluster, "n1"),
        pid,
        "the node's pid is unchanged"
    );
}
