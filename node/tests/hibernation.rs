//! Session hibernation over real nodes and real WebSocket clients: a joined client whose
//! session hibernated (seen on the node's `actorhub_sessions_hibernated` gauge) still gets
//! live messages in order without waking it, is listed in the room's presence, posts and gets
//! its ack and its own message after a wake-up, ends without waking when it goes, rejoins with
//! `since` to exactly what it missed, and is closed with 1012 when its node stops.
//! Tests run one at a time (2-core machine), each with its own cluster.

use std::time::Duration;

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(10);
/// Short, so the tests do not wait long for a session to hibernate.
const HIBERNATE_AFTER_MS: i64 = 300;

async fn cluster() -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(2)
        .setting("sessions", "messages_per_second", 10_000)
        .setting("sessions", "hibernate_after_ms", HIBERNATE_AFTER_MS)
        .start()
        .await
        .expect("2-node cluster starts")
}

/// The value of an unlabelled metric on `node`'s /metrics (0 when absent).
async fn metric(cluster: &TestCluster, node: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", cluster.http_url(node)))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `node`'s metric until it equals `wanted`, for at most [`WAIT`].
async fn wait_metric(cluster: &TestCluster, node: &str, name: &str, wanted: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(cluster, node, name).await;
        if value == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} on {node} is {value}, not {wanted}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_hibernated(cluster: &TestCluster, node: &str, sessions: f64) {
    wait_metric(cluster, node, "actorhub_sessions_hibernated", sessions).await;
}

/// Reads until the ack of `id`; returns its seq.
async fn ack(client: &mut ChatClient, id: &str) -> u64 {
    loop {
        let (frame, _) = client.until("ack", WAIT).await.expect("ack");
        if frame["id"] == id {
            return frame["seq"].as_u64().expect("ack seq");
        }
    }
}

/// The next `count` message frames, with any other frame in between skipped.
async fn messages(client: &mut ChatClient, count: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let (message, _) = client.until("message", WAIT).await.expect("a message");
        seen.push(message);
    }
    seen
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|message| message["seq"].as_u64().expect("seq"))
        .collect()
}

/// The users a presence frame lists as joined.
fn joined_users(presence: &Value) -> Vec<String> {
    presence["joins"]
        .as_array()
        .expect("joins")
        .iter()
        .filter_map(|join| join["user"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_session_keeps_delivery_presence_posting_and_resume() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let room = cluster.create_room("n1", "Sleepers").await.expect("room");
    let mut carol = ChatClient::connect(&cluster.http_url("n1"), &test_token("carol"))
        .await
        .expect("carol");
    let mut dan = ChatClient::connect(&cluster.http_url("n2"), &test_token("dan"))
        .await
        .expect("dan");
    carol.join_and_wait(&room, None).await.expect("carol joins");
    dan.join_and_wait(&room, None).await.expect("dan joins");
    wait_hibernated(&cluster, "n1", 1.0).await;
    let wakes = metric(&cluster, "n1", "actorhub_session_wakes_total").await;

    // (a) Live messages reach the hibernated session in order, once, without waking it.
    let mut posted = Vec::new();
    for index in 0..5 {
        let id = format!("d{index}");
        dan.post(&room, &id, "to a sleeping session")
            .await
            .expect("post");
        posted.push(ack(&mut dan, &id).await);
    }
    let received = messages(&mut carol, 5).await;
    assert_eq!(seqs(&received), posted, "every live message, in order");
    assert_eq!(
        metric(&cluster, "n1", "actorhub_session_wakes_total").await,
        wakes,
        "live delivery does not wake a hibernated session"
    );
    assert_eq!(
        metric(&cluster, "n1", "actorhub_sessions_hibernated").await,
        1.0
    );

    // (d) A newcomer sees the hibernated user listed, and the hibernated session sees it come.
    let mut erin = ChatClient::connect(&cluster.http_url("n2"), &test_token("erin"))
        .await
        .expect("erin");
    erin.join_and_wait(&room, None).await.expect("erin joins");
    let (presence, _) = erin.until("presence", WAIT).await.expect("presence");
    let listed = joined_users(&presence);
    assert!(
        listed.iter().any(|user| user == "carol"),
        "carol is listed while hibernated: {presence}"
    );
    assert_eq!(presence["count"], 3, "{presence}");
    loop {
        let (change, _) = carol.until("presence", WAIT).await.expect("presence");
        if joined_users(&change).iter().any(|user| user == "erin") {
            break;
        }
    }

    // (b) A post wakes the session: its ack and its own message, next in sequence.
    carol.post(&room, "c1", "awake again").await.expect("post");
    let (frame, before) = carol.until("ack", WAIT).await.expect("ack");
    let mut own: Vec<Value> = before
        .into_iter()
        .filter(|frame| frame["type"] == "message")
        .collect();
    if own.is_empty() {
        own = messages(&mut carol, 1).await;
    }
    let seq = frame["seq"].as_u64().expect("ack seq");
    assert_eq!(frame["id"], "c1");
    assert_eq!(seq, posted[4] + 1, "the post follows the live messages");
    assert_eq!(
        (own[0]["id"].as_str(), own[0]["seq"].as_u64(), own.len()),
        (Some("c1"), Some(seq), 1),
        "its own message, once"
    );
    assert_eq!(
        metric(&cluster, "n1", "actorhub_session_wakes_total").await,
        wakes + 1.0
    );

    // (c) Hibernated again, the client goes: the session ends without waking; it rejoins
    // later with `since` and gets exactly what it missed, then live messages, no duplicate.
    wait_hibernated(&cluster, "n1", 1.0).await;
    carol.close().await;
    wait_metric(&cluster, "n1", "actorhub_sessions_active", 0.0).await;
    wait_hibernated(&cluster, "n1", 0.0).await;
    assert_eq!(
        metric(&cluster, "n1", "actorhub_session_wakes_total").await,
        wakes + 1.0,
        "a hibernated session ends without starting its actor"
    );
    let mut missed = Vec::new();
    for index in 0..3 {
        let id = format!("m{index}");
        dan.post(&room, &id, "while carol was away")
            .await
            .expect("post");
        missed.push(ack(&mut dan, &id).await);
    }
    let mut carol = ChatClient::connect(&cluster.http_url("n1"), &test_token("carol"))
        .await
        .expect("carol again");
    let (head, _) = carol.join_and_wait(&room, Some(seq)).await.expect("rejoin");
    assert_eq!(head, missed[2]);
    assert_eq!(
        seqs(&messages(&mut carol, 3).await),
        missed,
        "exactly what it missed"
    );
    wait_hibernated(&cluster, "n1", 1.0).await;
    dan.post(&room, "live", "after the rejoin")
        .await
        .expect("post");
    let live_seq = ack(&mut dan, "live").await;
    let (live, before) = carol.until("message", WAIT).await.expect("live");
    assert!(
        before.iter().all(|frame| frame["type"] != "message"),
        "no duplicate: {before:?}"
    );
    assert_eq!(live["seq"].as_u64(), Some(live_seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_session_is_closed_with_1012_when_its_node_stops() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let room = cluster.create_room("n1", "Closing").await.expect("room");
    let mut carol = ChatClient::connect(&cluster.http_url("n1"), &test_token("carol"))
        .await
        .expect("carol");
    carol.join_and_wait(&room, None).await.expect("carol joins");
    wait_hibernated(&cluster, "n1", 1.0).await;
    cluster.terminate("n1", WAIT).await.expect("n1 stops");
    loop {
        match carol.next(WAIT).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(error) => panic!("no close from the stopping node: {error}"),
        }
    }
    let code = carol
        .closed
        .clone()
        .flatten()
        .map(|frame| u16::from(frame.code));
    assert_eq!(code, Some(1012), "close: {:?}", carol.closed);
}
