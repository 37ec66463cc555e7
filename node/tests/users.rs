//! User accounts over real `node run` processes and real HTTP: sign-up on one node, the mail
//! read from whichever node's outbox wrote it, verification on another, login on a third;
//! duplicate sign-ups racing on two nodes; an account surviving `kill -9` of its owner; bad
//! input refused with specific errors and nothing stored; a profile photo round trip; an
//! unverified account expiring through its durable reminder while a verified one stays.
//!
//! Each test starts its own cluster; a lock keeps them from running at once (2 cores). The
//! clusters use cheap argon2 parameters: these tests check behaviour, the login benchmark
//! (`login_latency_under_concurrency`, ignored by default) measures cost.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaos::cluster::{ClusterBuilder, TEST_JWT_SECRET, TestCluster};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long a mail may take to appear in an outbox.
const MAIL_TIMEOUT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery staple";

fn cheap_hashing(builder: ClusterBuilder) -> ClusterBuilder {
    builder
        .setting("users", "argon2_memory_kib", 1024)
        .setting("users", "argon2_iterations", 1)
}

async fn cluster(nodes: usize) -> TestCluster {
    cheap_hashing(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")).nodes(nodes))
        .start()
        .await
        .expect("cluster starts")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client")
}

/// A response's status and JSON body (`Null` when the body is not JSON).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn sign_up(client: &Client, url: &str, email: &str, name: &str) -> (StatusCode, Value) {
    call(
        client
            .post(format!("{url}/api/users/signup"))
            .json(&json!({"email": email, "password": PASSWORD, "name": name})),
    )
    .await
}

async fn login(client: &Client, url: &str, email: &str, password: &str) -> (StatusCode, Value) {
    call(
        client
            .post(format!("{url}/api/users/login"))
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

async fn verify(client: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    call(
        client
            .get(format!("{url}/api/users/verify"))
            .query(&[("token", token)])
            .header("accept", "application/json"),
    )
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Every `.eml` in every node's outbox that is addressed to `email`, oldest first.
fn mails_to(cluster: &TestCluster, email: &str) -> Vec<String> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let Ok(nodes) = std::fs::read_dir(cluster.dir().join("data")) else {
        return Vec::new();
    };
    for node in nodes.flatten() {
        if let Ok(mails) = std::fs::read_dir(node.path().join("outbox")) {
            paths.extend(
                mails
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "eml")),
            );
        }
    }
    // File names start with the time in ms, so sorting by name sorts by time.
    paths.sort_by_key(|path| path.file_name().map(|name| name.to_os_string()));
    let to = format!("To: {email}\r\n");
    paths
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter(|text| text.contains(&to))
        .collect()
}

/// Waits until at least `count` mails to `email` exist; returns the newest.
async fn wait_for_mail(cluster: &TestCluster, email: &str, count: usize) -> String {
    let deadline = Instant::now() + MAIL_TIMEOUT;
    loop {
        let mails = mails_to(cluster, email);
        if mails.len() >= count {
            return mails.last().cloned().expect("at least one mail");
        }
        assert!(
            Instant::now() < deadline,
            "no mail #{count} to {email} in any outbox within {MAIL_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The verification token in a mail's activation link.
fn token_in(mail: &str) -> String {
    let start = mail
        .find("token=")
        .expect("the mail has a link with a token")
        + "token=".len();
    mail[start..]
        .chars()
        .take_while(|char| char.is_ascii_hexdigit() || *char == '.')
        .collect()
}

/// Signs up on `url`, verifies through the mail, logs in: the session token and the user.
async fn verified_user(
    client: &Client,
    cluster: &TestCluster,
    url: &str,
    email: &str,
) -> (String, Value) {
    let (status, body) = sign_up(client, url, email, "Test User").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = token_in(&wait_for_mail(cluster, email, 1).await);
    let (status, body) = verify(client, url, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login(client, url, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["token"].as_str().expect("token").to_string(),
        body["user"].clone(),
    )
}

fn read_log(cluster: &TestCluster, id: &str) -> String {
    std::fs::read_to_string(cluster.dir().join(format!("{id}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_verify_and_log_in_across_three_nodes() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3).await;
    let client = client();
    let [n1, n2, n3] = ["n1", "n2", "n3"].map(|id| cluster.http_url(id));
    let email = "Alice.Liddell@Example.com";
    let normalised = "alice.liddell@example.com";

    let (status, user) = sign_up(&client, &n1, email, "  Alice  ").await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], normalised);
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["verified"], false);
    let user_id = user["id"].as_str().expect("id").to_string();
    assert_eq!(user_id.len(), 32);

    // Not verified yet: the right password gets a clear 403, on any node.
    let (status, body) = login(&client, &n3, normalised, PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "email_not_verified");

    let mail = wait_for_mail(&cluster, normalised, 1).await;
    assert!(
        mail.contains("Subject: Activate your ActorHub account"),
        "{mail}"
    );
    assert!(
        mail.contains(&format!("{n1}/api/users/verify?token=")),
        "{mail}"
    );
    let token = token_in(&mail);
    assert!(token.starts_with(&format!("{user_id}.")), "{token}");

    let (status, verified) = verify(&client, &n2, &token).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["id"], user_id.as_str());
    assert_eq!(verified["verified"], true);
    // A browser following the link again gets a page saying it was used.
    let page = client
        .get(format!("{n2}/api/users/verify"))
        .query(&[("token", token.as_str())])
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::GONE);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .is_ok_and(|content_type| content_type.starts_with("text/html"))
    );
    assert!(page.text().await.expect("html").contains("already used"));

    let (status, session) = login(&client, &n3, "  ALICE.liddell@example.COM ", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user"]["id"], user_id.as_str());
    let jwt = session["token"].as_str().expect("token").to_string();
    let claims = web::auth::TokenKeys::new(TEST_JWT_SECRET.as_bytes())
        .verify(&jwt, web::auth::unix_now_s())
        .expect("the login token is a valid ActorHub session token");
    assert_eq!(claims.sub, user_id);
    assert_eq!(claims.name.as_deref(), Some("Alice"));

    // The login token opens a WebSocket on node 1, and chat shows the account's display name.
    let mut socket = chaos::client::ChatClient::connect(&n1, &jwt)
        .await
        .expect("WebSocket with the login token");
    let room = {
        let (status, body) = call(
            client
                .post(format!("{n1}/api/rooms"))
                .bearer_auth(&jwt)
                .json(&json!({"name": "Tea party"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["room"]["id"].as_str().expect("room id").to_string()
    };
    socket.join_and_wait(&room, None).await.expect("join");
    socket
        .post(&room, "hello-1", "Why is a raven like a writing-desk?")
        .await
        .expect("post");
    let (message, _) = socket
        .until("message", Duration::from_secs(10))
        .await
        .expect("own message");
    assert_eq!(
        (message["user"].as_str(), message["name"].as_str()),
        (Some(user_id.as_str()), Some("Alice"))
    );
    socket.close().await;
    let (status, me) = call(
        client
            .get(format!("{n1}/api/users/me"))
            .query(&[("token", jwt.as_str())]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], normalised);

    let (status, updated) = call(
        client
            .patch(format!("{n2}/api/users/me"))
            .bearer_auth(&jwt)
            .json(&json!({"name": "Alice L.", "bio": "Curiouser and curiouser."})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (_, me) = call(client.get(format!("{n3}/api/users/me")).bearer_auth(&jwt)).await;
    assert_eq!(
        (me["name"].as_str(), me["bio"].as_str()),
        (Some("Alice L."), Some("Curiouser and curiouser."))
    );
    // The next login carries the new display name.
    let (_, session) = login(&client, &n1, normalised, PASSWORD).await;
    assert_eq!(session["user"]["name"], "Alice L.");

    // Asking again for a verified account is answered the same, and sends nothing.
    let (status, _) = call(
        client
            .post(format!("{n2}/api/users/resend-verification"))
            .json(&json!({"email": normalised})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // The outbox mailer logged the link; nobody logged the password or the session token.
    let logs: String = cluster
        .node_ids()
        .iter()
        .map(|id| read_log(&cluster, id))
        .collect();
    assert!(logs.contains("mail written to the outbox"));
    assert!(!logs.contains(PASSWORD), "a password reached the logs");
    assert!(!logs.contains(&jwt), "a session token reached the logs");
    assert_eq!(mails_to(&cluster, normalised).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_sign_ups_on_two_nodes_create_one_account() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3).await;
    let client = client();
    let (n1, n2) = (cluster.http_url("n1"), cluster.http_url("n2"));
    for round in 0..5 {
        let email = format!("twin-{round}@example.com");
        let first = client
            .post(format!("{n1}/api/users/signup"))
            .json(&json!({"email": email, "password": "first password 111", "name": "One"}));
        let second = client
            .post(format!("{n2}/api/users/signup"))
            .json(&json!({"email": email, "password": "second password 222", "name": "Two"}));
        let ((status_1, body_1), (status_2, body_2)) = tokio::join!(call(first), call(second));
        let mut statuses = [status_1, status_2];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: {body_1} / {body_2}"
        );
        let (winner, loser_body) = if status_1 == StatusCode::CREATED {
            (("first password 111", "second password 222"), body_2)
        } else {
            (("second password 222", "first password 111"), body_1)
        };
        assert_eq!(error_code(&loser_body), "email_taken");
        // Exactly one account: the winner's password is the one stored.
        let (status, _) = login(&client, &n1, &email, winner.0).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "winner's password, unverified"
        );
        let (status, _) = login(&client, &n2, &email, winner.1).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "loser's password");
        wait_for_mail(&cluster, &email, 1).await;
        assert_eq!(mails_to(&cluster, &email).len(), 1, "one activation mail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_survives_kill_9_of_the_node_that_owns_it() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3).await;
    let client = client();
    let nodes = ["n1", "n2", "n3"];
    let email = (0..1000)
        .map(|index| format!("survivor-{index}@example.com"))
        .find(|email| runtime::placement::owner("user", email, nodes) == Some("n2"))
        .expect("some email is owned by n2");
    let n1 = cluster.http_url("n1");
    let n3 = cluster.http_url("n3");
    let (jwt, user) = verified_user(&client, &cluster, &n1, &email).await;
    let (status, _) = call(
        client
            .patch(format!("{n3}/api/users/me"))
            .bearer_auth(&jwt)
            .json(&json!({"bio": "written before the kill"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    cluster.kill("n2");
    // A killed process closes its connections: the others see it down at once.
    for observer in ["n1", "n3"] {
        cluster
            .wait_member_state(observer, "n2", "down", Duration::from_secs(5))
            .await
            .expect("n2 seen down");
    }
    for url in [&n1, &n3] {
        let (status, body) = login(&client, url, &email, PASSWORD).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "login through {url} after the kill: {body}"
        );
        assert_eq!(body["user"]["id"], user["id"]);
        assert_eq!(body["user"]["bio"], "written before the kill");
    }
    let (status, me) = call(client.get(format!("{n3}/api/users/me")).bearer_auth(&jwt)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["verified"], true);
    // The address is still taken.
    let (status, body) = sign_up(&client, &n1, &email, "Impostor").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_errors_and_stores_nothing() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cheap_hashing(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")).nodes(3))
        .setting("users", "photo_bytes_max", 64 * 1024)
        .start()
        .await
        .expect("cluster starts");
    let client = client();
    let n1 = cluster.http_url("n1");
    let n2 = cluster.http_url("n2");
    let signup_url = format!("{n1}/api/users/signup");

    // Sign-ups that must not create anything.
    let raw = |body: &'static str| client.post(&signup_url).body(body);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (raw("{\"email\": "), StatusCode::BAD_REQUEST, "invalid_json"),
        (raw("[1, 2, 3]"), StatusCode::BAD_REQUEST, "invalid_field"),
        (
            client.post(&signup_url).json(&json!({"email": "x@example.com", "name": "X"})),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            client.post(&signup_url).json(
                &json!({"email": "x@example.com", "password": PASSWORD, "name": "X", "admin": true}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            client.post(&signup_url).json(&json!({"email": "x@example.com", "password": "short", "name": "X"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            client.post(&signup_url).json(&json!({"email": "x@example.com", "password": "1234567890", "name": "X"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            client.post(&signup_url).json(&json!({"email": "not-an-email", "password": PASSWORD, "name": "X"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            client.post(&signup_url).json(&json!({"email": "x@example.com", "password": PASSWORD, "name": "   "})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            client.post(&signup_url).body(vec![b' '; 20_000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (request, expected_status, expected_code) in cases {
        let (status, body) = call(request).await;
        assert_eq!(
            (status, error_code(&body)),
            (expected_status, expected_code),
            "{body}"
        );
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let objects = cluster.dir().join("data").join("objects");
    assert!(
        !objects.join("journal").join("user").exists()
            && !objects.join("journal").join("user.id").exists(),
        "a refused sign-up journaled something"
    );
    assert!(mails_to(&cluster, "x@example.com").is_empty());
    let (status, body) = login(&client, &n2, "x@example.com", PASSWORD).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );

    // Verification links: garbage, forged, missing, used, and a resend too soon.
    let email = "bob@example.com";
    let (status, _) = sign_up(&client, &n1, email, "Bob").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = sign_up(&client, &n2, email, "Bob again").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "email_taken")
    );
    let token = token_in(&wait_for_mail(&cluster, email, 1).await);
    let (user_id, secret) = token.split_once('.').expect("id.secret");
    let forged = format!("{user_id}.{}", "0".repeat(secret.len()));
    for bad in ["", "garbage", "../../etc/passwd", forged.as_str()] {
        let (status, body) = verify(&client, &n2, bad).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_token"),
            "{bad:?}"
        );
    }
    let (status, body) = call(
        client
            .get(format!("{n2}/api/users/verify"))
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_token")
    );
    let (status, body) = call(
        client
            .post(format!("{n2}/api/users/resend-verification"))
            .json(&json!({"email": email})),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
    );
    assert_eq!(mails_to(&cluster, email).len(), 1);
    let (status, _) = verify(&client, &n2, &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = verify(&client, &n1, &token).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GONE, "token_used")
    );

    // Wrong password and unknown email: the same answer.
    let (status, wrong) = login(&client, &n1, email, "not bob's password").await;
    let (status_unknown, unknown) =
        login(&client, &n1, "nobody@example.com", "whatever password").await;
    assert_eq!(
        (status, status_unknown),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(wrong, unknown, "the two answers must not differ");
    // Repeated failures from one address make that address wait for this account (5 free per
    // node by default, then 2 s, 4 s...), even with the right password; the owner elsewhere is
    // not affected (`abuse_limits.rs`).
    for _ in 0..4 {
        let (status, _) = login(&client, &n1, email, "not bob's password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = client
        .post(format!("{n1}/api/users/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), "too_many_attempts");

    // Tokens: missing, forged, expired.
    let me = format!("{n1}/api/users/me");
    let forged_keys = web::auth::TokenKeys::new(b"not-the-cluster-secret-at-all");
    let keys = web::auth::TokenKeys::new(TEST_JWT_SECRET.as_bytes());
    let now = web::auth::unix_now_s();
    for request in [
        client.get(&me),
        client
            .get(&me)
            .bearer_auth(forged_keys.mint(user_id, now, 60)),
        client
            .get(&me)
            .bearer_auth(keys.mint(user_id, now - 120, 60)),
        client.get(&me).bearer_auth("not.a.token"),
    ] {
        let (status, body) = call(request).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    // A valid token for a user that has no account (as `node token` can mint).
    let (status, body) = call(
        client
            .get(&me)
            .bearer_auth(keys.mint("script-user", now, 60)),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Profile updates out of bounds change nothing.
    let (jwt, _) = verified_user(&client, &cluster, &n2, "carol@example.com").await;
    let patch = |body: Value| client.patch(&me).bearer_auth(&jwt).json(&body);
    for (body, code) in [
        (json!({"name": "x".repeat(65)}), "invalid_name"),
        (json!({"name": ""}), "invalid_name"),
        (json!({"bio": "y".repeat(501)}), "invalid_bio"),
        (json!({"bio": "bell\u{7}"}), "invalid_bio"),
    ] {
        let (status, answer) = call(patch(body)).await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, code)
        );
    }
    let (status, body) = call(patch(json!({"email": "eve@example.com"}))).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    let (_, profile) = call(client.get(&me).bearer_auth(&jwt)).await;
    assert_eq!(
        (profile["name"].as_str(), profile["bio"].as_str()),
        (Some("Test User"), Some(""))
    );

    // Photos that are not photos.
    let photo_url = format!("{n1}/api/users/me/photo");
    let put = |content_type: &str, bytes: Vec<u8>| {
        client
            .put(&photo_url)
            .bearer_auth(&jwt)
            .header("content-type", content_type)
            .body(bytes)
    };
    let png = png_bytes(64, 64);
    let truncated = png[..png.len() / 2].to_vec();
    for (request, expected_status, expected_code) in [
        (
            put("text/plain", b"hello".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            put("image/png", b"hello, not a png".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            put("image/png", truncated),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_image",
        ),
        (
            put("image/png", vec![0x89; 65 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            client.put(&photo_url).body(png.clone()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ] {
        let (status, body) = call(request).await;
        assert_eq!(
            (status, error_code(&body)),
            (expected_status, expected_code),
            "{body}"
        );
    }
    let (_, profile) = call(client.get(&me).bearer_auth(&jwt)).await;
    assert_eq!(profile["photo_url"], Value::Null);
    let user_id = profile["id"].as_str().expect("id");
    let (status, body) = call(client.get(format!("{n2}/api/users/{user_id}/photo"))).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = call(client.get(format!("{n2}/api/users/..%2F..%2Fjournal/photo"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        !objects.join("users").exists(),
        "a refused photo was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_verification_link_is_refused() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cheap_hashing(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")).nodes(1))
        .setting("users", "verification_ttl_s", 1)
        .setting("users", "resend_interval_s", 0)
        .start()
        .await
        .expect("cluster starts");
    let client = client();
    let n1 = cluster.http_url("n1");
    let email = "late@example.com";
    let (status, _) = sign_up(&client, &n1, email, "Late").await;
    assert_eq!(status, StatusCode::CREATED);
    let token = token_in(&wait_for_mail(&cluster, email, 1).await);
    // The link's lifetime is the condition under test: let it pass.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = verify(&client, &n1, &token).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GONE, "token_expired")
    );
    let (status, body) = login(&client, &n1, email, PASSWORD).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "email_not_verified")
    );
    // A new mail replaces the link; the old one is dead for good.
    let (status, _) = call(
        client
            .post(format!("{n1}/api/users/resend-verification"))
            .json(&json!({"email": email})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let fresh = token_in(&wait_for_mail(&cluster, email, 2).await);
    assert_ne!(fresh, token);
    let (status, body) = verify(&client, &n1, &token).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_token")
    );
}

/// `users.unverified_ttl_s` of the expiry test: short, with room for the checks before it.
const UNVERIFIED_TTL: Duration = Duration::from_secs(4);
/// How long after its due time an expiry may take to show (a reminder fires within a second).
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_account_expires_after_its_ttl_and_a_verified_one_stays() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // The test polls login: the per-address rate limits out of the way.
    let limits: toml::Table = toml::from_str(
        "login_per_address = { count = 100000, per_s = 1 }\n\
         signup_per_address = { count = 100000, per_s = 1 }",
    )
    .expect("[web.limits] of the test");
    let ttl_s = i64::try_from(UNVERIFIED_TTL.as_secs()).expect("a few seconds");
    let cluster = cheap_hashing(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")).nodes(2))
        .setting("users", "verification_ttl_s", ttl_s)
        .setting("users", "unverified_ttl_s", ttl_s)
        .setting("web", "limits", toml::Value::Table(limits))
        .start()
        .await
        .expect("cluster starts");
    let client = client();
    let [n1, n2] = ["n1", "n2"].map(|id| cluster.http_url(id));

    let kept_email = "kept@example.com";
    let (_, kept) = verified_user(&client, &cluster, &n1, kept_email).await;
    let email = "lapsed@example.com";
    // The account's creation time is after this instant, so its expiry is due no earlier
    // than `UNVERIFIED_TTL` after it.
    let signed_up_at = Instant::now();
    let (status, lapsed) = sign_up(&client, &n2, email, "Lapsed").await;
    assert_eq!(status, StatusCode::CREATED, "{lapsed}");
    let lapsed_id = lapsed["id"].as_str().expect("id").to_string();
    let token = token_in(&wait_for_mail(&cluster, email, 1).await);

    // Before the due time the account is there: its email is taken.
    let (status, body) = sign_up(&client, &n1, email, "Too Early").await;
    let answered_within_ttl = signed_up_at.elapsed() < UNVERIFIED_TTL;
    assert!(
        answered_within_ttl,
        "the sign-up took {:?}, the whole TTL: raise UNVERIFIED_TTL",
        signed_up_at.elapsed()
    );
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "email_taken"),
        "{body}"
    );

    // The right password gets "not verified" until the account expires, then "no such
    // account" (never before the TTL).
    let deadline = Instant::now() + UNVERIFIED_TTL + EXPIRY_TIMEOUT;
    let mut logins_refused_unverified = 0;
    loop {
        let (status, body) = login(&client, &n1, email, PASSWORD).await;
        let elapsed = signed_up_at.elapsed();
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(error_code(&body), "invalid_credentials", "{body}");
            assert!(
                elapsed >= UNVERIFIED_TTL,
                "the account expired {elapsed:?} after its sign-up, before the TTL"
            );
            break;
        }
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "email_not_verified"),
            "{body}"
        );
        logins_refused_unverified += 1;
        assert!(
            Instant::now() < deadline,
            "the unverified account still exists {elapsed:?} after its sign-up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logins_refused_unverified > 0,
        "the account was seen before it expired"
    );

    // Its link is dead, and the email signs up again as a new account.
    let (status, body) = verify(&client, &n2, &token).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_token"),
        "{body}"
    );
    let (status, again) = sign_up(&client, &n2, email, "Lapsed Again").await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_ne!(again["id"].as_str(), Some(lapsed_id.as_str()));
    assert_eq!(again["verified"], false);
    let (status, body) = verify(&client, &n1, &token).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_token"),
        "the expired account's link does not verify the new account: {body}"
    );

    // The old id is retired in `user.id` (it resolves to nothing, not to the new account).
    let retired = format!("expired account's id retired user={lapsed_id}");
    let deadline = Instant::now() + EXPIRY_TIMEOUT;
    while !["n1", "n2"]
        .iter()
        .any(|id| read_log(&cluster, id).contains(&retired))
    {
        assert!(
            Instant::now() < deadline,
            "no node logged `{retired}` within {EXPIRY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The verified account, older than the TTL, stays.
    for url in [&n1, &n2] {
        let (status, body) = login(&client, url, kept_email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user"]["id"], kept["id"]);
    }
}

fn png_bytes(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode png");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_photo_round_trips_resized() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(3).await;
    let client = client();
    let n2 = cluster.http_url("n2");
    let n3 = cluster.http_url("n3");
    let (jwt, user) = verified_user(&client, &cluster, &n2, "painter@example.com").await;
    let user_id = user["id"].as_str().expect("id").to_string();

    let upload = png_bytes(1200, 800);
    let (status, profile) = call(
        client
            .put(format!("{n2}/api/users/me/photo"))
            .bearer_auth(&jwt)
            .header("content-type", "image/png")
            .body(upload),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    let photo_url = profile["photo_url"]
        .as_str()
        .expect("photo url")
        .to_string();
    assert!(
        photo_url.starts_with(&format!("/api/users/{user_id}/photo?v=")),
        "{photo_url}"
    );

    // Any node serves it, without a token.
    let response = client
        .get(format!("{n3}{photo_url}"))
        .send()
        .await
        .expect("photo");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    let bytes = response.bytes().await.expect("bytes");
    let photo = image::load_from_memory(&bytes).expect("the stored photo decodes");
    assert_eq!(
        (photo.width(), photo.height()),
        (512, 341),
        "fits 512 x 512, aspect kept"
    );

    // A WebP replaces it; small images keep their size.
    let mut webp = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        100,
        80,
        image::Rgb([9, 99, 199]),
    ))
    .write_to(&mut Cursor::new(&mut webp), image::ImageFormat::WebP)
    .expect("encode webp");
    let (status, replaced) = call(
        client
            .put(format!("{n3}/api/users/me/photo"))
            .bearer_auth(&jwt)
            .header("content-type", "image/webp")
            .body(webp),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_ne!(replaced["photo_url"], profile["photo_url"]);
    let bytes = client
        .get(format!(
            "{}/api/users/{user_id}/photo",
            cluster.http_url("n1")
        ))
        .send()
        .await
        .expect("photo")
        .bytes()
        .await
        .expect("bytes");
    let photo = image::load_from_memory(&bytes).expect("decodes");
    assert_eq!((photo.width(), photo.height()), (100, 80));
    let (_, me) = call(client.get(format!("{n2}/api/users/me")).bearer_auth(&jwt)).await;
    assert_eq!(me["photo_url"], replaced["photo_url"]);
}

/// Login latency under 20 concurrent logins against a 3-node cluster with the production
/// argon2 parameters. Not a test (it asserts nothing about time): run it against a release
/// build with
/// `cargo test --release -p node --test users -- --ignored --nocapture login_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run explicitly, preferably with --release"]
async fn login_latency_under_concurrency() {
    const USERS: usize = 20;
    const ROUNDS: usize = 10;
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Every login comes from one address here: its rate limits out of the way.
    let limits: toml::Table = toml::from_str(
        "login_per_address = { count = 100000, per_s = 1 }\n\
         signup_per_address = { count = 100000, per_s = 1 }",
    )
    .expect("limits");
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .setting("web", "limits", toml::Value::Table(limits))
        .start()
        .await
        .expect("cluster starts");
    let client = client();
    let urls: Vec<String> = cluster
        .node_ids()
        .iter()
        .map(|id| cluster.http_url(id))
        .collect();
    let emails: Vec<String> = (0..USERS)
        .map(|index| format!("load-{index}@example.com"))
        .collect();
    for (index, email) in emails.iter().enumerate() {
        verified_user(&client, &cluster, &urls[index % urls.len()], email).await;
    }
    // One at a time first: the cost of a single login, hash included.
    let mut alone_ms: Vec<f64> = Vec::new();
    for (index, email) in emails.iter().enumerate() {
        let begun = Instant::now();
        let (status, _) = login(&client, &urls[index % urls.len()], email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK);
        alone_ms.push(begun.elapsed().as_secs_f64() * 1000.0);
    }
    alone_ms.sort_by(f64::total_cmp);
    println!(
        "{} sequential logins: p50 {:.1} ms, max {:.1} ms",
        alone_ms.len(),
        alone_ms[alone_ms.len() / 2],
        alone_ms[alone_ms.len() - 1]
    );
    let mut samples_ms: Vec<f64> = Vec::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let logins = emails.iter().enumerate().map(|(index, email)| {
            let client = client.clone();
            let url = urls[(index + round) % urls.len()].clone();
            let email = email.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let (status, body) = login(&client, &url, &email, PASSWORD).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                begun.elapsed().as_secs_f64() * 1000.0
            })
        });
        for login in futures_join_all(logins.collect()).await {
            samples_ms.push(login);
        }
    }
    let wall = started.elapsed();
    samples_ms.sort_by(f64::total_cmp);
    let percentile = |p: f64| samples_ms[((samples_ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "{} logins ({USERS} concurrent x {ROUNDS} rounds, 3 nodes, argon2id m=19456 KiB t=2 p=1): \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.1} logins/s",
        samples_ms.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        samples_ms[samples_ms.len() - 1],
        samples_ms.len() as f64 / wall.as_secs_f64()
    );
}

async fn futures_join_all(handles: Vec<tokio::task::JoinHandle<f64>>) -> Vec<f64> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("login task"));
    }
    results
}
