//! Abuse limits over real `node run` processes and real sockets: rate limits answer 429
//! `rate_limited` with `Retry-After` and let the next request through once it has passed (per
//! client address and per user, each key on its own); an attacker's failed logins from one
//! address slow that address only, while the owner logs in from another; the per-user quota of
//! stored job bytes refuses an upload that would exceed it; a finished job expires after
//! `jobs.finished_ttl_s`, its files gone from the store and the job from its owner's list.
//!
//! Clients pick their source address among loopback addresses (127.0.0.2, 127.0.0.3...) with
//! reqwest's `local_address`, so each is a different client address for the node.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::client::test_token;
use chaos::cluster::{ClusterBuilder, TestCluster};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const PASSWORD: &str = "correct horse battery staple";
/// How long a mail, a job or an expiry may take.
const WAIT: Duration = Duration::from_secs(30);
const BOUNDARY: &str = "actorhub-abuse-boundary-41c2";

async fn cluster(limits: &str, settings: &[(&str, &str, toml::Value)]) -> TestCluster {
    let limits: toml::Table = toml::from_str(limits).expect("[web.limits] of the test");
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting("users", "argon2_memory_kib", 1024)
        .setting("users", "argon2_iterations", 1)
        .setting("web", "limits", toml::Value::Table(limits));
    for (table, key, value) in settings {
        builder = builder.setting(table, key, value.clone());
    }
    builder.start().await.expect("cluster starts")
}

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client")
}

/// Status, `Retry-After` (seconds) and JSON body (`Null` when not JSON).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Option<u64>, Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let retry_after = response.headers().get("retry-after").map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("Retry-After is whole seconds: {value:?}"))
    });
    let text = response.text().await.expect("body");
    (
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Asserts a 429 of `expected_code` with a `Retry-After` in `1..=max_s`; returns it.
fn refused(answer: &(StatusCode, Option<u64>, Value), expected_code: &str, max_s: u64) -> u64 {
    let (status, retry_after, body) = answer;
    assert_eq!(
        (*status, code(body)),
        (StatusCode::TOO_MANY_REQUESTS, expected_code),
        "{body}"
    );
    let seconds = retry_after.unwrap_or_else(|| panic!("a 429 carries Retry-After: {body}"));
    assert!(
        (1..=max_s).contains(&seconds),
        "Retry-After {seconds} s, expected 1 to {max_s}"
    );
    seconds
}

/// Waits what `Retry-After` said: the behaviour under test is that it is enough.
async fn wait_retry_after(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

async fn sign_up(client: &Client, url: &str, email: &str) -> (StatusCode, Option<u64>, Value) {
    call(
        client
            .post(format!("{url}/api/users/signup"))
            .json(&json!({"email": email, "password": PASSWORD, "name": "Someone"})),
    )
    .await
}

async fn login(
    client: &Client,
    url: &str,
    email: &str,
    password: &str,
) -> (StatusCode, Option<u64>, Value) {
    call(
        client
            .post(format!("{url}/api/users/login"))
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

async fn create_room(
    client: &Client,
    url: &str,
    user: &str,
    name: &str,
) -> (StatusCode, Option<u64>, Value) {
    call(
        client
            .post(format!("{url}/api/rooms"))
            .bearer_auth(test_token(user))
            .json(&json!({ "name": name })),
    )
    .await
}

/// A `multipart/form-data` body converting `file` (a CSV) to JSON.
fn csv_form(file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\njson\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(
    client: &Client,
    url: &str,
    user: &str,
    file: &[u8],
) -> (StatusCode, Option<u64>, Value) {
    call(
        client
            .post(format!("{url}/api/jobs"))
            .bearer_auth(test_token(user))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(csv_form(file)),
    )
    .await
}

/// A CSV of `bytes` bytes (at least 10): one column of long values.
fn csv_of(bytes: usize) -> Vec<u8> {
    let mut csv = b"text\n".to_vec();
    while csv.len() < bytes {
        let row = "x".repeat((bytes - csv.len()).clamp(1, 80));
        csv.extend_from_slice(row.as_bytes());
        if csv.len() < bytes {
            csv.push(b'\n');
        }
    }
    csv.truncate(bytes);
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(
        "signup_per_address = { count = 2, per_s = 6 }\n\
         room_create_per_address = { count = 100, per_s = 60 }\n\
         room_create_per_user = { count = 2, per_s = 6 }\n\
         history_per_address = { count = 3, per_s = 600 }\n\
         upload_per_user = { count = 1, per_s = 600 }",
        &[],
    )
    .await;
    let url = cluster.http_url(&cluster.node_ids()[0]);
    let first = client_from(2);
    let second = client_from(3);

    // Per client address, on a route without a user: sign-up.
    for email in ["s1@example.com", "s2@example.com"] {
        let (status, _, body) = sign_up(&first, &url, email).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let seconds = refused(
        &sign_up(&first, &url, "s3@example.com").await,
        "rate_limited",
        6,
    );
    let (status, _, body) = sign_up(&second, &url, "s4@example.com").await;
    assert_eq!(status, StatusCode::CREATED, "another address: {body}");
    wait_retry_after(seconds).await;
    let (status, _, body) = sign_up(&first, &url, "s3@example.com").await;
    assert_eq!(status, StatusCode::CREATED, "after Retry-After: {body}");

    // Per user: room creation.
    let mut rooms = Vec::new();
    for name in ["one", "two"] {
        let (status, _, body) = create_room(&first, &url, "limited-a", name).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        rooms.push(body["room"]["id"].as_str().expect("room id").to_string());
    }
    let seconds = refused(
        &create_room(&first, &url, "limited-a", "three").await,
        "rate_limited",
        6,
    );
    let (status, _, body) = create_room(&first, &url, "limited-b", "bee").await;
    assert_eq!(status, StatusCode::CREATED, "another user: {body}");
    wait_retry_after(seconds).await;
    let (status, _, body) = create_room(&first, &url, "limited-a", "three").await;
    assert_eq!(status, StatusCode::CREATED, "after Retry-After: {body}");

    // Per client address, on an authenticated route: history.
    let history = format!("{url}/api/rooms/{}/messages", rooms[0]);
    for _ in 0..3 {
        let (status, _, body) =
            call(first.get(&history).bearer_auth(test_token("limited-a"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    refused(
        &call(first.get(&history).bearer_auth(test_token("limited-a"))).await,
        "rate_limited",
        200,
    );
    let (status, _, body) = call(second.get(&history).bearer_auth(test_token("limited-a"))).await;
    assert_eq!(status, StatusCode::OK, "another address: {body}");

    // Per user: uploads (one per 10 minutes here).
    let (status, _, body) = upload(&first, &url, "limited-a", &csv_of(100)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    refused(
        &upload(&second, &url, "limited-a", &csv_of(100)).await,
        "rate_limited",
        600,
    );
}

/// Every `.eml` addressed to `email` in the node's outbox.
fn mails_to(cluster: &TestCluster, email: &str) -> Vec<String> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for node in std::fs::read_dir(cluster.dir().join("data"))
        .into_iter()
        .flatten()
        .flatten()
    {
        paths.extend(
            std::fs::read_dir(node.path().join("outbox"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path()),
        );
    }
    let to = format!("To: {email}\r\n");
    paths
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter(|text| text.contains(&to))
        .collect()
}

/// Signs `email` up and follows the activation link of its mail.
async fn verified_account(cluster: &TestCluster, client: &Client, url: &str, email: &str) {
    let (status, _, body) = sign_up(client, url, email).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = Instant::now() + WAIT;
    let mail = loop {
        if let Some(mail) = mails_to(cluster, email).pop() {
            break mail;
        }
        assert!(Instant::now() < deadline, "no mail to {email}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let start = mail.find("token=").expect("a link with a token") + "token=".len();
    let token: String = mail[start..]
        .chars()
        .take_while(|char| char.is_ascii_hexdigit() || *char == '.')
        .collect();
    let (status, _, body) = call(
        client
            .get(format!("{url}/api/users/verify"))
            .query(&[("token", token.as_str())])
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_failed_logins_do_not_stop_the_owner_logging_in_elsewhere() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Default lockout: 5 failures free, then 2 s, 4 s, ... between attempts.
    let cluster = cluster("login_per_address = { count = 1000, per_s = 60 }", &[]).await;
    let url = cluster.http_url(&cluster.node_ids()[0]);
    let owner = client_from(3);
    let email = "victim@example.com";
    verified_account(&cluster, &owner, &url, email).await;

    let attacker = client_from(2);
    for attempt in 1..=5 {
        let (status, _, body) = login(&attacker, &url, email, "guess guess guess").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {body}"
        );
    }
    refused(
        &login(&attacker, &url, email, "guess guess guess").await,
        "too_many_attempts",
        2,
    );
    // Even the right password waits, from that address.
    let seconds = refused(
        &login(&attacker, &url, email, PASSWORD).await,
        "too_many_attempts",
        2,
    );

    // The owner, from another address, is not affected, and neither is a mistake of theirs.
    let (status, _, body) = login(&owner, &url, email, "a typo of mine").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = login(&owner, &url, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the owner logs in: {body}");
    assert!(
        body["token"]
            .as_str()
            .is_some_and(|token| !token.is_empty())
    );

    // The attacker's wait grows: after Retry-After one more guess, then twice as long.
    wait_retry_after(seconds).await;
    let (status, _, body) = login(&attacker, &url, email, "guess guess guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let longer = refused(
        &login(&attacker, &url, email, "guess guess guess").await,
        "too_many_attempts",
        4,
    );
    assert!(longer > 2, "the wait grows: {longer} s");

    // Parallel guesses from a new address count at once: no more than the free five get through.
    let burst = client_from(4);
    let guesses = (0..10).map(|_| {
        let burst = burst.clone();
        let url = url.clone();
        tokio::spawn(async move { login(&burst, &url, email, "parallel guess").await.0 })
    });
    let mut answered = Vec::new();
    for guess in guesses {
        answered.push(guess.await.expect("guess"));
    }
    let through = answered
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        through <= 5
            && answered.iter().all(|status| matches!(
                *status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            )),
        "{answered:?}"
    );
    let (status, _, body) = login(&owner, &url, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the owner still logs in: {body}");
}

/// Every file under the node's object store folder `prefix` (relative paths).
fn stored_files(cluster: &TestCluster, prefix: &str) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, files: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, files);
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.insert(relative.display().to_string());
            }
        }
    }
    let root = cluster.dir().join("data/objects");
    let mut files = BTreeSet::new();
    walk(&root.join(prefix), &root, &mut files);
    files
}

async fn job_view(client: &Client, url: &str, user: &str, job: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(
        client
            .get(format!("{url}/api/jobs/{job}"))
            .bearer_auth(test_token(user)),
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_bytes_quota_refuses_and_finished_jobs_expire() {
    const QUOTA: u64 = 4096;
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(
        "",
        &[
            (
                "jobs",
                "stored_bytes_per_user_max",
                toml::Value::Integer(QUOTA as i64),
            ),
            ("jobs", "finished_ttl_s", toml::Value::Integer(4)),
            ("jobs", "revive_interval_ms", toml::Value::Integer(300)),
        ],
    )
    .await;
    let url = cluster.http_url(&cluster.node_ids()[0]);
    let client = client_from(2);
    let user = "quota-user";

    let (status, _, body) = upload(&client, &url, user, &csv_of(800)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = body["job"].as_str().expect("job id").to_string();
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let (status, view) = job_view(&client, &url, user, &job).await;
        if status == StatusCode::OK && view["state"] == "done" {
            break view;
        }
        assert!(Instant::now() < deadline, "never done: {status} {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stored = view["input"]["bytes"].as_u64().expect("input bytes")
        + view["output"]["bytes"].as_u64().expect("output bytes");
    assert!(stored < QUOTA, "the first job fits: {stored} bytes");
    let files = stored_files(&cluster, &format!("jobs/{job}"));
    assert!(files.len() >= 2, "input and output stored: {files:?}");

    // One byte more than what is left: refused, and nothing of it kept.
    let too_much = csv_of(usize::try_from(QUOTA - stored + 1).expect("small"));
    let (status, _, body) = upload(&client, &url, user, &too_much).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "storage_quota_exceeded"),
        "{body}"
    );
    let (status, _, list) = call(
        client
            .get(format!("{url}/api/jobs"))
            .bearer_auth(test_token(user)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list}");

    // The finished job expires (4 s after it finished): gone from the API, the list and the
    // store, and its bytes no longer count.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, view) = job_view(&client, &url, user, &job).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {status} {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<String> = [
            format!("jobs/{job}"),
            format!("jobs/finished/{job}"),
            format!("jobs/active/{job}"),
        ]
        .iter()
        .flat_map(|prefix| stored_files(&cluster, prefix))
        .chain(
            std::iter::once(format!("jobs/finished/{job}"))
                .filter(|path| cluster.dir().join("data/objects").join(path).exists()),
        )
        .collect();
        let (_, _, list) = call(
            client
                .get(format!("{url}/api/jobs"))
                .bearer_auth(test_token(user)),
        )
        .await;
        let listed = list["jobs"].as_array().map_or(usize::MAX, Vec::len);
        if left.is_empty() && listed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "files left {left:?}, jobs listed {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = upload(&client, &url, user, &too_much).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the quota is free again: {body}"
    );
}
