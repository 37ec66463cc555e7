//! File-conversion jobs over HTTP and WebSocket on real node processes: live progress to the
//! owner's session on another node and download from a third; a job finishing on another node
//! after `kill -9` of the node running it, with one output and one final state; converter panics,
//! timeouts and corrupt inputs failing only their job; upload limits (413 leaving nothing
//! behind, 422, 429); and other users seeing nothing (404); a job scheduled with `not_before`
//! starting at its time and not before, on the new owner after `kill -9` of the old one; a
//! finished job expiring through its reminder; bad `not_before` values refused (400).
//!
//! The failover and fault tests use the test-only converters (`jobs.test_converters = true`):
//! `slow` copies its input after `duration_ms`, `panic` panics. Tests run one at a time (2-core
//! machine), each with its own cluster.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use image::{DynamicImage, GenericImageView, Rgba, RgbaImage};
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);
const BOUNDARY: &str = "actorhub-test-boundary-7f3a";

async fn cluster(nodes: usize, settings: &[(&str, &str, toml::Value)]) -> TestCluster {
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(nodes)
        .setting("jobs", "test_converters", true);
    for (table, key, value) in settings {
        builder = builder.setting(table, key, value.clone());
    }
    builder.start().await.expect("cluster starts")
}

/// A `multipart/form-data` body with text fields and one file.
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

async fn upload(
    cluster: &TestCluster,
    node: &str,
    user: &str,
    file_name: &str,
    file: &[u8],
    fields: &[(&str, &str)],
) -> (u16, Value) {
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
    (status, response.json().await.unwrap_or(Value::Null))
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
    let (status, body) = upload(cluster, node, user, file_name, file, fields).await;
    assert_eq!(status, 202, "upload accepted: {body}");
    assert_eq!(body["state"], "queued", "{body}");
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

/// Polls the job on `node` until `done(job)` holds; panics with the last answer at the deadline.
async fn wait_job(
    cluster: &TestCluster,
    node: &str,
    user: &str,
    job: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_final(cluster: &TestCluster, node: &str, user: &str, job: &str) -> Value {
    wait_job(cluster, node, user, job, "finished", |body| {
        body["state"] == "done" || body["state"] == "failed"
    })
    .await
}

/// A connected session whose actor is running (it answered a ping).
async fn session(cluster: &TestCluster, node: &str, user: &str) -> ChatClient {
    let mut client = ChatClient::connect(&cluster.http_url(node), &test_token(user))
        .await
        .expect("WebSocket connects");
    client.send(json!({"type": "ping"})).await.expect("ping");
    client.until("pong", WAIT).await.expect("pong");
    client
}

/// Reads `job` frames for `job` until its final state; returns them all.
async fn job_frames_until_final(client: &mut ChatClient, job: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let (frame, _) = client.until("job", WAIT).await.expect("a job frame");
        if frame["job"] != job {
            continue;
        }
        let last = frame["state"] == "done" || frame["state"] == "failed";
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

fn picture(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgba8(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("png");
    bytes
}

/// Posts `body` as a chunked upload (no length known in advance) over a raw connection and
/// returns the response status. The server may answer before the body is all sent.
async fn chunked_upload(address: std::net::SocketAddr, user: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n",
        test_token(user)
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("request head");
    for chunk in body.chunks(8 * 1024) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 4096];
        while !response.windows(4).any(|window| window == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => response.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Every file under the shared object store's `jobs/` folder.
fn job_files(cluster: &TestCluster) -> BTreeSet<PathBuf> {
    fn walk(directory: &Path, root: &Path, files: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(directory) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, files);
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.insert(relative.to_path_buf());
            }
        }
    }
    let root = cluster.dir().join("data/objects");
    let mut files = BTreeSet::new();
    walk(&root.join("jobs"), &root, &mut files);
    files
}

fn files_of(cluster: &TestCluster, job: &str) -> Vec<String> {
    job_files(cluster)
        .into_iter()
        .filter_map(|path| {
            path.strip_prefix(format!("jobs/{job}"))
                .ok()
                .map(|name| name.display().to_string())
        })
        .collect()
}

/// Sum of `actorhub_jobs_finished_total` samples with `outcome` over `nodes`.
async fn finished_total(cluster: &TestCluster, nodes: &[&str], outcome: &str) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        let text = reqwest::get(format!("{}/metrics", cluster.http_url(node)))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let label = format!("outcome=\"{outcome}\"");
        total += text
            .lines()
            .filter(|line| {
                line.starts_with("actorhub_jobs_finished_total") && line.contains(&label)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_on_one_node_reports_live_to_another_and_downloads_from_a_third() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3, &[]).await;
    let (status, catalogue) = get(&cluster, "n1", "alice", "/api/converters").await;
    assert_eq!(status, 200);
    let pairs = catalogue["converters"].as_array().expect("pairs");
    assert!(
        pairs
            .iter()
            .any(|pair| pair["from"] == "png" && pair["to"] == "webp" && pair["available"] == true)
    );
    assert!(
        pairs
            .iter()
            .any(|pair| pair["from"] == "docx" && pair["to"] == "pdf"),
        "office pairs are listed either way"
    );

    let mut alice = session(&cluster, "n2", "alice").await;
    let job = submit(
        &cluster,
        "n1",
        "alice",
        "holiday.png",
        &picture(64, 48),
        &[("target", "webp"), ("width", "32")],
    )
    .await;
    let frames = job_frames_until_final(&mut alice, &job).await;
    let states: Vec<&str> = frames
        .iter()
        .filter_map(|frame| frame["state"].as_str())
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{frames:?}");
    assert_eq!(states.get(1), Some(&"running"), "{frames:?}");
    assert_eq!(states.last(), Some(&"done"), "{frames:?}");
    let progress: Vec<u64> = frames
        .iter()
        .filter_map(|frame| frame["progress"].as_u64())
        .collect();
    assert!(
        frames.iter().any(|frame| frame["state"] == "running"
            && frame["progress"]
                .as_u64()
                .is_some_and(|percent| percent > 0 && percent < 100)),
        "a progress step between running and done: {frames:?}"
    );
    assert!(
        progress.windows(2).all(|pair| pair[0] <= pair[1]),
        "progress never goes back: {progress:?}"
    );
    let done = frames.last().expect("done frame");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["download"], format!("/api/jobs/{job}/download"));
    assert_eq!(done["error"], Value::Null);

    let (status, body) = get(&cluster, "n3", "alice", &format!("/api/jobs/{job}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["state"].as_str(), body["progress"].as_u64()),
        (Some("done"), Some(100)),
        "{body}"
    );
    assert_eq!(body["input"]["format"], "png");
    assert!(
        ["n1", "n2", "n3"].contains(&body["node"].as_str().unwrap_or_default()),
        "{body}"
    );
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/jobs/{job}/download",
            cluster.http_url("n3")
        ))
        .bearer_auth(test_token("alice"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "image/webp");
    assert!(
        header("content-disposition").contains("filename=\"holiday.webp\""),
        "{}",
        header("content-disposition")
    );
    let bytes = response.bytes().await.expect("body");
    let image =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).expect("a WebP");
    assert_eq!(
        image.dimensions(),
        (32, 24),
        "resized keeping the aspect ratio"
    );

    let (status, listing) = get(&cluster, "n2", "alice", "/api/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(listing["jobs"][0]["job"], job.as_str(), "{listing}");
    assert_eq!(
        files_of(&cluster, &job).len(),
        2,
        "input and one output: {:?}",
        files_of(&cluster, &job)
    );
    // The marker goes once the finished job is released, which may follow its last frame.
    let deadline = Instant::now() + WAIT;
    loop {
        let markers: Vec<PathBuf> = job_files(&cluster)
            .into_iter()
            .filter(|path| path.starts_with("jobs/active"))
            .collect();
        if markers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a finished job leaves no marker: {markers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_is_killed_finishes_on_another_node_once() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3, &[]).await;
    let payload = b"the input of a slow job\n".repeat(100);
    let job = submit(
        &cluster,
        "n1",
        "carol",
        "slow.txt",
        &payload,
        &[("target", "slow"), ("duration_ms", "3000")],
    )
    .await;
    let running = wait_job(&cluster, "n1", "carol", &job, "started", |body| {
        body["state"] == "running" && body["progress"].as_u64() > Some(10)
    })
    .await;
    let victim = running["node"].as_str().expect("node").to_string();
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|node| *node != victim)
        .collect();
    let mut watcher = session(&cluster, survivors[0], "carol").await;

    cluster.kill(&victim);
    let killed_at = Instant::now();
    // Nobody asks about the job meanwhile: the new owner's reviver must find it by itself.
    let frames = job_frames_until_final(&mut watcher, &job).await;
    let kill_to_done = killed_at.elapsed();
    let terminal: Vec<&Value> = frames
        .iter()
        .filter(|frame| frame["state"] != "running")
        .collect();
    assert_eq!(terminal.len(), 1, "one final frame: {frames:?}");
    assert_eq!(terminal[0]["state"], "done", "{frames:?}");
    let done = wait_final(&cluster, survivors[1], "carol", &job).await;
    println!(
        "failover: {victim} killed, job {job} done on {} {kill_to_done:?} after the kill (slow job of 3000 ms, rerun from its input)",
        done["node"]
    );
    assert_eq!(done["state"], "done", "{done}");
    assert_ne!(done["node"], victim.as_str(), "finished elsewhere: {done}");
    assert!(done["attempts"].as_u64() >= Some(2), "a second run: {done}");
    assert_eq!(
        finished_total(&cluster, &survivors, "done").await,
        1.0,
        "exactly one final state"
    );
    assert_eq!(finished_total(&cluster, &survivors, "failed").await, 0.0);
    let outputs: Vec<String> = files_of(&cluster, &job)
        .into_iter()
        .filter(|name| name.starts_with("output"))
        .collect();
    assert_eq!(outputs, ["output.txt"], "exactly one output, fully written");
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/jobs/{job}/download",
            cluster.http_url(survivors[0])
        ))
        .bearer_auth(test_token("carol"))
        .send()
        .await
        .expect("download");
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        payload.as_slice()
    );

    // The killed node comes back; the job moves back to it and is still done, once.
    cluster.restart(&victim).await.expect("restart");
    cluster.wait_all_up(WAIT).await.expect("all up");
    let again = wait_final(&cluster, &victim, "carol", &job).await;
    assert_eq!(
        (again["state"].as_str(), again["finished_ms"].clone()),
        (Some("done"), done["finished_ms"].clone())
    );
    assert_eq!(
        files_of(&cluster, &job)
            .into_iter()
            .filter(|name| name.starts_with("output"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_timeouts_and_corrupt_inputs_fail_only_their_job() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(
        1,
        &[
            ("jobs", "timeout_ms", 1_500.into()),
            ("jobs", "input_bytes_max", (64 * 1024).into()),
        ],
    )
    .await;
    let mut dave = session(&cluster, "n1", "dave").await;
    let panicking = submit(
        &cluster,
        "n1",
        "dave",
        "a.txt",
        b"boom",
        &[("target", "panic")],
    )
    .await;
    let hanging = submit(
        &cluster,
        "n1",
        "dave",
        "b.txt",
        b"zzz",
        &[("target", "slow"), ("duration_ms", "60000")],
    )
    .await;
    let healthy = submit(
        &cluster,
        "n1",
        "dave",
        "c.png",
        &picture(40, 30),
        &[("target", "jpeg")],
    )
    .await;
    let mut corrupt_png = picture(40, 30);
    corrupt_png.truncate(60);
    let corrupt = submit(
        &cluster,
        "n1",
        "dave",
        "d.png",
        &corrupt_png,
        &[("target", "gif")],
    )
    .await;

    let panicked = wait_final(&cluster, "n1", "dave", &panicking).await;
    assert_eq!(panicked["state"], "failed");
    let error = panicked["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("crashed") && error.contains("panicked on purpose"),
        "{error}"
    );
    let timed_out = wait_final(&cluster, "n1", "dave", &hanging).await;
    assert_eq!(timed_out["state"], "failed");
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("longer than 1500 ms"),
        "{timed_out}"
    );
    let corrupted = wait_final(&cluster, "n1", "dave", &corrupt).await;
    assert_eq!(corrupted["state"], "failed");
    assert!(
        corrupted["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the input is not a valid png file"),
        "{corrupted}"
    );
    let fine = wait_final(&cluster, "n1", "dave", &healthy).await;
    assert_eq!(
        fine["state"], "done",
        "a healthy job next to them finishes: {fine}"
    );
    let failed_frame = job_frames_until_final(&mut dave, &panicking)
        .await
        .pop()
        .expect("final frame");
    assert_eq!(failed_frame["state"], "failed");
    assert!(
        failed_frame["error"]
            .as_str()
            .unwrap_or_default()
            .contains("panicked on purpose")
    );

    // The node is still up and converts.
    let after = submit(
        &cluster,
        "n1",
        "dave",
        "e.png",
        &picture(8, 8),
        &[("target", "bmp")],
    )
    .await;
    assert_eq!(
        wait_final(&cluster, "n1", "dave", &after).await["state"],
        "done"
    );
    let (status, _) = get(&cluster, "n1", "dave", "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(
        1,
        &[
            ("jobs", "input_bytes_max", (64 * 1024).into()),
            ("jobs", "per_user_max", 2.into()),
            ("jobs", "queue_max", 3.into()),
        ],
    )
    .await;
    let before = job_files(&cluster);
    let oversized = vec![b'a'; 200 * 1024];
    let (status, body) = upload(
        &cluster,
        "n1",
        "erin",
        "big.txt",
        &oversized,
        &[("target", "pdf")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );

    // Without a length the upload is cut off while streaming; the staged parts are removed.
    let status = chunked_upload(
        cluster.http_addr("n1"),
        "erin",
        &form(&[("target", "pdf")], "big.txt", &oversized),
    )
    .await;
    assert_eq!(status, 413, "a streamed upload is cut off at the limit");
    assert_eq!(
        job_files(&cluster),
        before,
        "refused uploads leave no object behind"
    );

    let (status, body) = upload(
        &cluster,
        "n1",
        "erin",
        "table.csv",
        b"a,b\n1,2\n",
        &[("target", "png")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unsupported_conversion")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("json") && message.contains("xlsx"),
        "lists what csv converts to: {message}"
    );
    // The content decides, not the name: a PNG named .csv is an image.
    let (status, body) = upload(
        &cluster,
        "n1",
        "erin",
        "table.csv",
        &picture(4, 4),
        &[("target", "json")],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("png"),
        "{body}"
    );
    let (status, body) = upload(
        &cluster,
        "n1",
        "erin",
        "x.png",
        &picture(4, 4),
        &[("target", "exe")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unsupported_conversion")),
        "{body}"
    );
    let (status, body) = upload(&cluster, "n1", "erin", "x.png", &picture(4, 4), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_target")),
        "{body}"
    );
    assert_eq!(
        job_files(&cluster),
        before,
        "refused uploads leave no object behind"
    );

    // Per-user and per-node limits answer 429 with their own codes.
    let slow = [("target", "slow"), ("duration_ms", "20000")];
    let first = submit(&cluster, "n1", "erin", "1.txt", b"1", &slow).await;
    let _second = submit(&cluster, "n1", "erin", "2.txt", b"2", &slow).await;
    let (status, body) = upload(&cluster, "n1", "erin", "3.txt", b"3", &slow).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_jobs")),
        "{body}"
    );
    let _third = submit(&cluster, "n1", "frank", "4.txt", b"4", &slow).await;
    let (status, body) = upload(&cluster, "n1", "grace", "5.txt", b"5", &slow).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("queue_full")),
        "{body}"
    );
    // Cancelling one frees erin's slot.
    let response = reqwest::Client::new()
        .delete(format!("{}/api/jobs/{first}", cluster.http_url("n1")))
        .bearer_auth(test_token("erin"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) =
            upload(&cluster, "n1", "erin", "6.txt", b"6", &[("target", "pdf")]).await;
        if status == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_cannot_see_download_or_cancel_a_job() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(2, &[]).await;
    let job = submit(
        &cluster,
        "n1",
        "alice",
        "notes.md",
        b"# Notes\n\nHello *there*.\n",
        &[("target", "html")],
    )
    .await;
    assert_eq!(
        wait_final(&cluster, "n2", "alice", &job).await["state"],
        "done"
    );
    for (method, path) in [
        ("GET", format!("/api/jobs/{job}")),
        ("GET", format!("/api/jobs/{job}/download")),
        ("DELETE", format!("/api/jobs/{job}")),
    ] {
        let request = match method {
            "GET" => reqwest::Client::new().get(format!("{}{path}", cluster.http_url("n2"))),
            _ => reqwest::Client::new().delete(format!("{}{path}", cluster.http_url("n2"))),
        };
        let response = request
            .bearer_auth(test_token("mallory"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 404, "{method} {path} by another user");
        let body: Value = response.json().await.expect("json error");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, listing) = get(&cluster, "n1", "mallory", "/api/jobs").await;
    assert_eq!(listing["jobs"], json!([]), "{listing}");
    let (status, _) = get(
        &cluster,
        "n1",
        "alice",
        &format!("/api/jobs/{job}/download"),
    )
    .await;
    assert_eq!(status, 200, "the owner still can");
    let response = reqwest::Client::new()
        .get(format!("{}/api/jobs/{job}", cluster.http_url("n1")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401, "no token, no job");

    // The owner cancels a running job: it is gone, with its files.
    let running = submit(
        &cluster,
        "n1",
        "alice",
        "long.txt",
        b"x",
        &[("target", "slow"), ("duration_ms", "30000")],
    )
    .await;
    wait_job(&cluster, "n1", "alice", &running, "started", |body| {
        body["state"] == "running"
    })
    .await;
    let response = reqwest::Client::new()
        .delete(format!("{}/api/jobs/{running}", cluster.http_url("n2")))
        .bearer_auth(test_token("alice"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let (status, _) = get(&cluster, "n1", "alice", &format!("/api/jobs/{running}")).await;
    assert_eq!(status, 404, "a deleted job is gone");
    let deadline = Instant::now() + WAIT;
    while !files_of(&cluster, &running).is_empty()
        || job_files(&cluster)
            .iter()
            .any(|path| path.ends_with(&running))
    {
        assert!(
            Instant::now() < deadline,
            "files of the deleted job remain: {:?}",
            job_files(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[web.limits]` letting any number of uploads through (measurements only).
fn uploads_unlimited() -> toml::Value {
    let limits: toml::Table = toml::from_str(
        "upload_per_address = { count = 1000000, per_s = 1 }\n\
         upload_per_user = { count = 1000000, per_s = 1 }",
    )
    .expect("limits");
    toml::Value::Table(limits)
}

/// Submits `jobs` small PNG → JPEG conversions through every node with `in_flight` at once, and
/// times each from the start of its upload to its `done` frame on the owner's WebSocket.
/// A measurement, not a test: it asserts only that every job finished.
async fn measure_small_image_jobs(nodes: usize, jobs: usize, in_flight: usize) {
    const USERS: usize = 8;
    let cluster = cluster(
        nodes,
        &[
            ("jobs", "per_user_max", 1_000.into()),
            ("jobs", "queue_max", 1_000.into()),
            // Every upload comes from one address and 8 users: rate limits out of the way.
            ("web", "limits", uploads_unlimited()),
        ],
    )
    .await;
    let node_ids: Vec<String> = (1..=nodes).map(|index| format!("n{index}")).collect();
    let (done_sender, mut done_receiver) =
        tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    for user in 0..USERS {
        let mut client = session(&cluster, &node_ids[user % nodes], &format!("bench-{user}")).await;
        let sender = done_sender.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = client.next(Duration::from_secs(120)).await {
                if frame["type"] == "job"
                    && (frame["state"] == "done" || frame["state"] == "failed")
                {
                    let job = frame["job"].as_str().unwrap_or_default().to_string();
                    let state = frame["state"].as_str().unwrap_or_default().to_string();
                    if sender.send((job, state, Instant::now())).is_err() {
                        break;
                    }
                }
            }
        });
    }
    let image = picture(64, 48);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let (started_sender, mut started_receiver) =
        tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let began = Instant::now();
    let submitter = {
        let permits = permits.clone();
        let base_urls: Vec<String> = node_ids.iter().map(|id| cluster.http_url(id)).collect();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for index in 0..jobs {
                let permit = permits.clone().acquire_owned().await.expect("semaphore");
                permit.forget();
                let http = http.clone();
                let url = format!("{}/api/jobs", base_urls[index % base_urls.len()]);
                let body = form(&[("target", "jpeg")], "bench.png", &image);
                let sender = started_sender.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let response = http
                        .post(url)
                        .bearer_auth(test_token(&format!("bench-{}", index % USERS)))
                        .header(
                            "content-type",
                            format!("multipart/form-data; boundary={BOUNDARY}"),
                        )
                        .body(body)
                        .send()
                        .await
                        .expect("upload");
                    assert_eq!(response.status(), 202);
                    let body: Value = response.json().await.expect("json");
                    let _ = sender.send((body["job"].as_str().expect("job").to_string(), started));
                });
            }
        })
    };
    let mut started_at = std::collections::HashMap::new();
    let mut finished_at = std::collections::HashMap::new();
    let mut latencies = Vec::new();
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while latencies.len() < jobs {
        tokio::select! {
            Some((job, started)) = started_receiver.recv() => {
                started_at.insert(job.clone(), started);
                if let Some(finished) = finished_at.remove(&job) {
                    latencies.push(finished - started);
                    permits.add_permits(1);
                }
            }
            Some((job, state, finished)) = done_receiver.recv() => {
                failed += usize::from(state == "failed");
                match started_at.get(&job) {
                    Some(started) => {
                        latencies.push(finished - *started);
                        permits.add_permits(1);
                    }
                    None => {
                        finished_at.insert(job, finished);
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => panic!("only {} of {jobs} jobs finished", latencies.len()),
        }
    }
    let elapsed = began.elapsed();
    submitter.await.expect("submitter");
    assert_eq!(failed, 0, "every conversion succeeds");
    latencies.sort();
    let percentile = |fraction: f64| {
        latencies[((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1)]
    };
    println!(
        "{nodes} node(s): {jobs} PNG 64x48 -> JPEG jobs, {in_flight} in flight: {:.1} jobs/s; upload -> done p50 {:?}, p99 {:?}, max {:?}",
        jobs as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies[latencies.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release -p node --test jobs -- --ignored --nocapture"]
async fn measure_small_image_jobs_on_one_node() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    measure_small_image_jobs(1, 400, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release -p node --test jobs -- --ignored --nocapture"]
async fn measure_small_image_jobs_on_three_nodes() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    measure_small_image_jobs(3, 400, 16).await;
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_waits_for_its_time_and_runs_once_on_the_new_owner_after_a_kill() {
    const AHEAD_MS: u64 = 5_000;
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3, &[]).await;
    // A session on every node before the upload: whichever owns the job, two survive it.
    let mut sessions = Vec::new();
    for node in ["n1", "n2", "n3"] {
        sessions.push((node, session(&cluster, node, "dora").await));
    }
    let not_before_ms = unix_ms() + AHEAD_MS;
    let payload = b"the input of a scheduled job\n".repeat(50);
    let (status, body) = upload(
        &cluster,
        "n1",
        "dora",
        "later.txt",
        &payload,
        &[
            ("target", "slow"),
            ("duration_ms", "300"),
            ("not_before", &not_before_ms.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "scheduled", "{body}");
    assert_eq!(body["started_ms"], Value::Null, "{body}");
    let job = body["job"].as_str().expect("job id").to_string();
    let owner = body["node"].as_str().expect("node").to_string();

    // The owner dies before the job's time; its reminder must fire on the new owner.
    cluster.kill(&owner);
    sessions.retain(|(node, _)| *node != owner);
    let survivor = sessions[0].0;
    let (_, watcher) = &mut sessions[0];
    // Until its time, the job answers `scheduled` wherever it is asked (an answer during the
    // takeover may be unavailable; it never says anything else).
    let mut scheduled_answers = 0;
    while unix_ms() + 500 < not_before_ms {
        let (status, body) = get(&cluster, survivor, "dora", &format!("/api/jobs/{job}")).await;
        if status == 200 {
            assert!(unix_ms() < not_before_ms || body["state"] != "scheduled");
            if unix_ms() < not_before_ms {
                assert_eq!(body["state"], "scheduled", "before its time: {body}");
                scheduled_answers += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scheduled_answers > 0, "the job answered while scheduled");

    let frames = job_frames_until_final(watcher, &job).await;
    let states: Vec<&str> = frames
        .iter()
        .filter_map(|frame| frame["state"].as_str())
        .collect();
    assert_eq!(states.first(), Some(&"scheduled"), "{frames:?}");
    assert_eq!(states.get(1), Some(&"queued"), "{frames:?}");
    assert_eq!(states.get(2), Some(&"running"), "{frames:?}");
    assert_eq!(states.last(), Some(&"done"), "{frames:?}");
    assert_eq!(
        states.iter().filter(|state| **state == "queued").count(),
        1,
        "started once: {frames:?}"
    );

    let done = wait_final(&cluster, survivor, "dora", &job).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_ne!(done["node"], owner.as_str(), "ran on the new owner: {done}");
    assert_eq!(done["attempts"], 1, "one run: {done}");
    let started_ms = done["started_ms"].as_u64().expect("started_ms");
    assert!(
        started_ms >= not_before_ms,
        "started at {started_ms}, not before {not_before_ms}: {done}"
    );
    println!(
        "scheduled job: owner {owner} killed, started on {} {} ms after not_before",
        done["node"],
        started_ms - not_before_ms
    );
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|node| *node != owner)
        .collect();
    assert_eq!(finished_total(&cluster, &survivors, "done").await, 1.0);
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/jobs/{job}/download",
            cluster.http_url(survivor)
        ))
        .bearer_auth(test_token("dora"))
        .send()
        .await
        .expect("download");
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        payload.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_expires_through_its_reminder() {
    const TTL_S: u64 = 2;
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // The reviver's periodic scan (the fallback for jobs finished before reminders) would not
    // expire the job before an hour anyway; its interval is set out of reach to be sure.
    let cluster = cluster(
        1,
        &[
            ("jobs", "finished_ttl_s", toml::Value::Integer(TTL_S as i64)),
            (
                "jobs",
                "revive_interval_ms",
                toml::Value::Integer(3_600_000),
            ),
        ],
    )
    .await;
    let job = submit(
        &cluster,
        "n1",
        "erin",
        "short.txt",
        b"expires soon\n",
        &[("target", "slow"), ("duration_ms", "100")],
    )
    .await;
    let done = wait_final(&cluster, "n1", "erin", &job).await;
    assert_eq!(done["state"], "done", "{done}");
    let finished_ms = done["finished_ms"].as_u64().expect("finished_ms");
    assert!(
        files_of(&cluster, &job).iter().any(|name| name == "input"),
        "files stored while the job is kept: {:?}",
        files_of(&cluster, &job)
    );

    let deadline = Instant::now() + WAIT;
    let gone_ms = loop {
        let (status, body) = get(&cluster, "n1", "erin", &format!("/api/jobs/{job}")).await;
        if status == 404 {
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            break unix_ms();
        }
        assert!(
            Instant::now() < deadline,
            "never expired: {status} {body}\n{}",
            cluster.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone_ms >= finished_ms + TTL_S * 1000,
        "expired at {gone_ms}, before {finished_ms} + {TTL_S} s"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<PathBuf> = job_files(&cluster)
            .into_iter()
            .filter(|path| path.to_string_lossy().contains(&job))
            .collect();
        let (_, list) = get(&cluster, "n1", "erin", "/api/jobs").await;
        let listed = list["jobs"].as_array().map_or(usize::MAX, Vec::len);
        if left.is_empty() && listed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "files left {left:?}, listed {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = get(&cluster, "n1", "erin", &format!("/api/jobs/{job}/download")).await;
    assert_eq!(status, 404, "an expired job's output is not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_not_before_values_are_refused_with_a_reason() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(1, &[]).await;
    let now_ms = unix_ms();
    let days_31 = now_ms + 31 * 24 * 3600 * 1000;
    let cases = [
        ("tomorrow".to_string(), "unix milliseconds"),
        ("-5".to_string(), "unix milliseconds"),
        ("1.5e12".to_string(), "unix milliseconds"),
        // Seconds instead of milliseconds: January 1970.
        ((now_ms / 1000).to_string(), "in the past"),
        ((now_ms - 5 * 60 * 1000).to_string(), "in the past"),
        (days_31.to_string(), "days ahead"),
    ];
    for (value, reason) in &cases {
        // Refused while reading the form (not a number) or once the file is stored (a time
        // out of bounds): either way nothing stays.
        let (status, body) = upload(
            &cluster,
            "n1",
            "fay",
            "a.txt",
            b"text\n",
            &[("target", "slow"), ("not_before", value)],
        )
        .await;
        assert_eq!(status, 400, "not_before {value:?}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_not_before",
            "{value:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(reason)),
            "not_before {value:?}: {body}"
        );
    }
    let deadline = Instant::now() + WAIT;
    while !job_files(&cluster).is_empty() {
        assert!(
            Instant::now() < deadline,
            "refused uploads left files: {:?}",
            job_files(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = get(&cluster, "n1", "fay", "/api/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing listed: {list}");
    // A few seconds past is clock skew: the job starts now.
    let (status, body) = upload(
        &cluster,
        "n1",
        "fay",
        "a.txt",
        b"text\n",
        &[
            ("target", "slow"),
            ("not_before", &(unix_ms() - 5_000).to_string()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (202, Some("queued")),
        "{body}"
    );
}
