//! Private rooms on a real 3-node cluster: a non-member cannot join, post or read the history
//! (HTTP and WebSocket, with specific codes), an invited member can, the room list shows each
//! caller only the private rooms they belong to, and a removal takes effect at once on every
//! node (the removed member, connected to a node that does not own the room, is told and gets
//! nothing more); the room-creation quota refuses with its code.
//! Tests run one at a time (2-core machine), each with its own cluster.

use std::time::Duration;

use chaos::client::{ChatClient, Received, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(10);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

async fn cluster(settings: &[(&str, &str, i64)]) -> TestCluster {
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .setting("users", "argon2_memory_kib", 1024)
        .setting("users", "argon2_iterations", 1)
        .setting("sessions", "messages_per_second", 10_000);
    for (table, key, value) in settings {
        builder = builder.setting(table, key, *value);
    }
    builder.start().await.expect("3-node cluster starts")
}

/// A response's status and JSON body (`Null` when the body is not JSON).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

async fn create(url: &str, user: &str, name: &str, private: bool) -> (StatusCode, Value) {
    call(
        reqwest::Client::new()
            .post(format!("{url}/api/rooms"))
            .bearer_auth(test_token(user))
            .json(&json!({ "name": name, "private": private })),
    )
    .await
}

/// The ids of the rooms `user` is shown, with their `private` flag.
async fn listed(url: &str, user: &str) -> Vec<(String, bool)> {
    let (status, body) = call(
        reqwest::Client::new()
            .get(format!("{url}/api/rooms"))
            .bearer_auth(test_token(user)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|room| {
            (
                room["id"].as_str().expect("id").to_string(),
                room["private"].as_bool().expect("private flag"),
            )
        })
        .collect()
}

async fn history(url: &str, user: &str, room: &str) -> (StatusCode, Value) {
    call(
        reqwest::Client::new()
            .get(format!("{url}/api/rooms/{room}/messages?after=0"))
            .bearer_auth(test_token(user)),
    )
    .await
}

async fn invite(url: &str, by: &str, room: &str, email: &str) -> (StatusCode, Value) {
    call(
        reqwest::Client::new()
            .post(format!("{url}/api/rooms/{room}/members"))
            .bearer_auth(test_token(by))
            .json(&json!({ "email": email })),
    )
    .await
}

async fn remove(url: &str, by: &str, room: &str, user: &str) -> (StatusCode, Value) {
    call(
        reqwest::Client::new()
            .delete(format!("{url}/api/rooms/{room}/members/{user}"))
            .bearer_auth(test_token(by)),
    )
    .await
}

/// Signs up `email` (no verification needed to be invited): the account's user id.
async fn account(url: &str, email: &str) -> String {
    let (status, body) = call(reqwest::Client::new().post(format!("{url}/api/users/signup")).json(
        &json!({"email": email, "password": "correct horse battery staple", "name": "Member"}),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("user id").to_string()
}

/// Reads until an `error` frame arrives; returns it and the frames before it.
async fn next_error(client: &mut ChatClient) -> (Value, Vec<Value>) {
    client.until("error", WAIT).await.expect("an error frame")
}

/// Reads until the ack of `id`, returning the frames seen meanwhile.
async fn wait_ack(client: &mut ChatClient, id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let (frame, before) = client.until("ack", WAIT).await.expect("ack");
        seen.extend(before);
        if frame["id"] == id {
            return seen;
        }
        seen.push(frame);
    }
}

/// Reads until a `message` frame with client id `id`.
async fn wait_message(client: &mut ChatClient, id: &str) -> Value {
    loop {
        let (message, _) = client.until("message", WAIT).await.expect("a message");
        if message["id"] == id {
            return message;
        }
    }
}

/// The frames `client` receives until it has been quiet for `quiet`.
async fn drain(client: &mut ChatClient, quiet: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Received::Frame(frame) = client.receive(quiet).await.expect("connection open") {
        frames.push(frame);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_use_a_private_room_and_a_removal_takes_effect_at_once_on_every_node() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(&[]).await;
    let url = |node: &str| cluster.http_url(node);
    let bob = account(&url("n1"), "bob@example.com").await;

    let (status, body) = create(&url("n1"), "ada", "Secret plans", true).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["room"]["private"], true);
    let room = body["room"]["id"].as_str().expect("room id").to_string();
    let (status, body) = create(&url("n2"), "ada", "Town square", false).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let square = body["room"]["id"].as_str().expect("room id").to_string();

    // Bob connects to a node that does not own the room; so does a second connection of
    // Ada's, which sees the same publications on that node (the sentinel below).
    let owner = runtime::placement::owner("room", &room, NODES).expect("an owner");
    let elsewhere = NODES
        .into_iter()
        .find(|node| *node != owner)
        .expect("another node");
    let third = NODES
        .into_iter()
        .find(|node| *node != owner && *node != elsewhere)
        .expect("a third node");

    // The list: the owner sees the private room, marked; others see only the public room.
    assert!(
        listed(&url(third), "ada")
            .await
            .contains(&(room.clone(), true))
    );
    for stranger in ["eve", bob.as_str()] {
        let shown = listed(&url(elsewhere), stranger).await;
        assert!(shown.contains(&(square.clone(), false)), "{shown:?}");
        assert!(
            !shown.iter().any(|(id, _)| *id == room),
            "{stranger}: {shown:?}"
        );
    }

    // A non-member: no history, no join, no invitation, over any node.
    for node in NODES {
        let (status, body) = history(&url(node), "eve", &room).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "not_a_member")
        );
    }
    let mut eve = ChatClient::connect(&url(elsewhere), &test_token("eve"))
        .await
        .expect("eve connects");
    eve.join(&room, None).await.expect("send");
    let (error, _) = next_error(&mut eve).await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("not_a_member"), Some(room.as_str()))
    );
    eve.post(&room, "e1", "let me in").await.expect("send");
    let (error, _) = next_error(&mut eve).await;
    assert_eq!(
        error["code"], "not_joined",
        "a refused join leaves nothing to post to"
    );
    let (status, body) = invite(&url(owner), "eve", &room, "bob@example.com").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );

    // Invitations: only to accounts that exist, only to private rooms, only by the owner.
    let (status, body) = invite(&url(third), "ada", &room, "nobody@example.com").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "no_such_user")
    );
    let (status, body) = invite(&url(third), "ada", &square, "bob@example.com").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "room_not_private")
    );
    let (status, body) = invite(&url(third), "ada", &room, "Bob@Example.com").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["owner"], "ada");
    assert_eq!(body["members"], json!([bob]));
    let (status, body) = invite(&url(owner), &bob, &room, "bob@example.com").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_the_owner")
    );
    let (status, body) = remove(&url(owner), &bob, &room, "0123456789abcdef0123456789abcdef").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_the_owner")
    );

    // The member: listed, reads, joins and posts.
    assert!(
        listed(&url(owner), &bob)
            .await
            .contains(&(room.clone(), true))
    );
    let (status, body) = history(&url(third), &bob, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut ada = ChatClient::connect(&url(third), &test_token("ada"))
        .await
        .expect("ada connects");
    let mut ada_beside_bob = ChatClient::connect(&url(elsewhere), &test_token("ada"))
        .await
        .expect("ada connects again");
    let mut bobs = ChatClient::connect(&url(elsewhere), &test_token(&bob))
        .await
        .expect("bob connects");
    ada.join_and_wait(&room, None).await.expect("ada joins");
    ada_beside_bob
        .join_and_wait(&room, None)
        .await
        .expect("ada joins");
    bobs.join_and_wait(&room, None).await.expect("bob joins");
    bobs.post(&room, "b1", "hello from bob")
        .await
        .expect("send");
    wait_ack(&mut bobs, "b1").await;
    assert_eq!(wait_message(&mut ada, "b1").await["user"], bob.as_str());
    ada.post(&room, "a1", "hello bob").await.expect("send");
    assert_eq!(wait_message(&mut bobs, "a1").await["text"], "hello bob");
    wait_message(&mut ada_beside_bob, "a1").await;
    let (status, body) = history(&url(owner), &bob, &room).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));

    // The removal: Bob's session on another node than the room's is told at once.
    let (status, body) = remove(&url(third), "ada", &room, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["members"], json!([]));
    let (removed, before) = next_error(&mut bobs).await;
    assert_eq!(
        (removed["code"].as_str(), removed["ref"].as_str()),
        (Some("removed_from_room"), Some(room.as_str())),
        "after {before:?}"
    );
    // Messages after the removal reach the members on Bob's node, not Bob.
    ada.post(&room, "a2", "bob is gone").await.expect("send");
    wait_ack(&mut ada, "a2").await;
    wait_message(&mut ada_beside_bob, "a2").await;
    bobs.post(&room, "b2", "still here?").await.expect("send");
    let (refused, seen) = next_error(&mut bobs).await;
    assert_eq!(
        refused["code"], "not_joined",
        "the session dropped the room"
    );
    let later = drain(&mut bobs, Duration::from_millis(500)).await;
    let leaked: Vec<&Value> = seen
        .iter()
        .chain(&later)
        .filter(|frame| frame["type"] == "message")
        .collect();
    assert!(leaked.is_empty(), "a removed member got {leaked:?}");
    // And the room itself refuses Bob everywhere.
    bobs.join(&room, None).await.expect("send");
    let (error, _) = next_error(&mut bobs).await;
    assert_eq!(error["code"], "not_a_member");
    for node in NODES {
        let (status, body) = history(&url(node), &bob, &room).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "not_a_member")
        );
    }
    assert!(
        !listed(&url(owner), &bob)
            .await
            .iter()
            .any(|(id, _)| *id == room)
    );

    // Invited again, Bob may leave on his own; the owner cannot be removed.
    let (status, _) = invite(&url(owner), "ada", &room, "bob@example.com").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = remove(&url(elsewhere), &bob, &room, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = history(&url(elsewhere), &bob, &room).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_creation_quota_refuses_with_its_code() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(&[("rooms", "created_per_user_max", 2)]).await;
    let (status, body) = create(&cluster.http_url("n1"), "maker", "One", false).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = create(&cluster.http_url("n2"), "maker", "Two", true).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = create(&cluster.http_url("n3"), "maker", "", false).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        "an invalid name is refused before it counts"
    );
    for node in NODES {
        let (status, body) = create(&cluster.http_url(node), "maker", "Three", false).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "room_quota_exceeded"),
            "{body}"
        );
    }
    let (status, body) = create(&cluster.http_url("n3"), "someone-else", "Theirs", false).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "another user's quota is their own: {body}"
    );
}
