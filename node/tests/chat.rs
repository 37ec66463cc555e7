//! Chat over WebSocket across a real 3-node cluster: cross-node delivery with acks, resume on
//! another node with `since`, owner failover under traffic with nothing acknowledged lost or
//! duplicated, duplicate posts, bad input, and slow consumers.
//! Tests run one at a time (2-core machine), each with its own cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(10);

async fn cluster_with(settings: &[(&str, &str, i64)]) -> TestCluster {
    cluster_over(false, settings).await
}

/// A 3-node cluster; `tls`: mutual TLS between the nodes and the admin token on operator
/// routes, as a production cluster runs.
async fn cluster_over(tls: bool, settings: &[(&str, &str, i64)]) -> TestCluster {
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .tls(tls)
        .admin_token(tls)
        .setting("sessions", "messages_per_second", 10_000);
    for (table, key, value) in settings {
        builder = builder.setting(table, key, *value);
    }
    builder.start().await.expect("3-node cluster starts")
}

async fn create_room(cluster: &TestCluster, node: &str, name: &str) -> String {
    cluster.create_room(node, name).await.expect("create room")
}

async fn history(cluster: &TestCluster, node: &str, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/api/rooms/{room}/messages?after={after}&limit=200",
                cluster.http_url(node)
            ))
            .bearer_auth(test_token("auditor"))
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200, "history of {room}");
        let body: Value = response.json().await.expect("json");
        let page = body["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        after = page
            .last()
            .and_then(|message| message["seq"].as_u64())
            .expect("seq");
        all.extend(page);
    }
}

/// The next `message` frame posted by someone other than `me`.
async fn next_message_from_others(client: &mut ChatClient, me: &str) -> Value {
    loop {
        let (message, _) = client.until("message", WAIT).await.expect("a message");
        if message["user"] != me {
            return message;
        }
    }
}

/// Reads until the ack of `id`, returning the message frames seen meanwhile.
async fn wait_ack(client: &mut ChatClient, id: &str) -> (u64, Vec<Value>) {
    let mut seen = Vec::new();
    loop {
        let (frame, before) = client.until("ack", WAIT).await.expect("ack");
        seen.extend(before);
        if frame["id"] == id {
            return (frame["seq"].as_u64().expect("seq"), seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_see_each_others_messages_in_order_with_acks() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_with(&[]).await;
    let room = create_room(&cluster, "n1", "Lobby").await;
    let mut alice = ChatClient::connect(&cluster.http_url("n1"), &test_token("alice"))
        .await
        .expect("alice");
    let mut bob = ChatClient::connect(&cluster.http_url("n2"), &test_token("bob"))
        .await
        .expect("bob");
    assert_eq!(alice.join_and_wait(&room, None).await.expect("join").0, 0);
    bob.join_and_wait(&room, None).await.expect("join");

    for index in 0..5 {
        alice
            .post(
                &room,
                &format!("a{index}"),
                &format!("hello {index} from alice"),
            )
            .await
            .expect("post");
        let (seq, _) = wait_ack(&mut alice, &format!("a{index}")).await;
        let message = next_message_from_others(&mut bob, "bob").await;
        assert_eq!(
            (
                message["id"].as_str(),
                message["seq"].as_u64(),
                message["user"].as_str()
            ),
            (Some(format!("a{index}").as_str()), Some(seq), Some("alice"))
        );
        bob.post(&room, &format!("b{index}"), "hi from bob")
            .await
            .expect("post");
        let (seq, _) = wait_ack(&mut bob, &format!("b{index}")).await;
        let message = next_message_from_others(&mut alice, "alice").await;
        assert_eq!(
            (message["id"].as_str(), message["seq"].as_u64()),
            (Some(format!("b{index}").as_str()), Some(seq))
        );
    }
    let stored = history(&cluster, "n3", &room).await;
    let seqs: Vec<u64> = stored
        .iter()
        .filter_map(|message| message["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "history is gap-free and ordered"
    );
    assert_eq!(stored[0]["id"], "a0");
    assert_eq!(stored[9]["id"], "b4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_with(&[]).await;
    let room = create_room(&cluster, "n1", "Resume").await;
    let mut alice = ChatClient::connect(&cluster.http_url("n1"), &test_token("alice"))
        .await
        .expect("alice");
    let mut bob = ChatClient::connect(&cluster.http_url("n2"), &test_token("bob"))
        .await
        .expect("bob");
    alice.join_and_wait(&room, None).await.expect("join");
    bob.join_and_wait(&room, None).await.expect("join");
    bob.post(&room, "before", "seen by alice")
        .await
        .expect("post");
    wait_ack(&mut bob, "before").await;
    let (seen, _) = alice.until("message", WAIT).await.expect("alice sees it");
    let last_seen = seen["seq"].as_u64().expect("seq");
    alice.close().await;

    for index in 0..50 {
        bob.post(&room, &format!("m{index}"), "while alice was away")
            .await
            .expect("post");
        wait_ack(&mut bob, &format!("m{index}")).await;
    }
    let mut alice = ChatClient::connect(&cluster.http_url("n3"), &test_token("alice"))
        .await
        .expect("alice again");
    alice
        .join(&room, Some(last_seen))
        .await
        .expect("join with since");
    let (joined, _) = alice.until("joined", WAIT).await.expect("joined");
    assert_eq!(joined["head"].as_u64(), Some(last_seen + 50));
    let mut replayed = Vec::new();
    while replayed.len() < 50 {
        let (message, _) = alice.until("message", WAIT).await.expect("replay");
        replayed.push(message["seq"].as_u64().expect("seq"));
    }
    assert_eq!(
        replayed,
        (last_seen + 1..=last_seen + 50).collect::<Vec<_>>(),
        "exactly the 50 missed, in order"
    );
    bob.post(&room, "live", "after the resume")
        .await
        .expect("post");
    let (live, before) = alice.until("message", WAIT).await.expect("live message");
    assert!(
        before.iter().all(|frame| frame["type"] != "message"),
        "no duplicate replay: {before:?}"
    );
    assert_eq!(
        (live["id"].as_str(), live["seq"].as_u64()),
        (Some("live"), Some(last_seen + 51))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_post_is_stored_and_delivered_once() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_with(&[]).await;
    let room = create_room(&cluster, "n2", "Dup").await;
    let mut alice = ChatClient::connect(&cluster.http_url("n1"), &test_token("alice"))
        .await
        .expect("alice");
    let mut bob = ChatClient::connect(&cluster.http_url("n3"), &test_token("bob"))
        .await
        .expect("bob");
    alice.join_and_wait(&room, None).await.expect("join");
    bob.join_and_wait(&room, None).await.expect("join");
    alice
        .post(&room, "same-id", "first copy")
        .await
        .expect("post");
    let (first, _) = wait_ack(&mut alice, "same-id").await;
    alice
        .post(&room, "same-id", "a retry after a lost ack")
        .await
        .expect("post again");
    let (second, _) = wait_ack(&mut alice, "same-id").await;
    assert_eq!(
        first, second,
        "the retry is acknowledged with the original sequence number"
    );
    alice.post(&room, "next", "marker").await.expect("post");
    wait_ack(&mut alice, "next").await;
    let (message, _) = bob.until("message", WAIT).await.expect("first delivery");
    assert_eq!(message["id"], "same-id");
    let (message, _) = bob.until("message", WAIT).await.expect("marker");
    assert_eq!(
        message["id"], "next",
        "the duplicate was not delivered again"
    );
    let stored = history(&cluster, "n1", &room).await;
    assert_eq!(
        stored
            .iter()
            .filter(|message| message["id"] == "same-id")
            .count(),
        1
    );
    assert_eq!(
        stored
            .iter()
            .find(|message| message["id"] == "same-id")
            .map(|message| message["text"].clone()),
        Some(json!("first copy"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_errors_and_harms_nothing() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_with(&[]).await;
    let room = create_room(&cluster, "n1", "Errors").await;
    let url = cluster.http_url("n1");

    let refused = reqwest::get(format!("{url}/ws?token=not-a-token"))
        .await
        .expect("http");
    assert_eq!(
        refused.status(),
        401,
        "a bad token is refused before the upgrade"
    );
    let missing = reqwest::get(format!("{url}/ws")).await.expect("http");
    assert_eq!(missing.status(), 401);
    // A valid token on a plain GET (no WebSocket handshake) gets a JSON error, not a hang.
    let plain = reqwest::get(format!("{url}/ws?token={}", test_token("curious")))
        .await
        .expect("http");
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_a_websocket", "{body}");
    assert!(
        ChatClient::connect(&url, "garbage.garbage.garbage")
            .await
            .is_err()
    );

    let mut bystander = ChatClient::connect(&url, &test_token("bystander"))
        .await
        .expect("bystander");
    bystander.join_and_wait(&room, None).await.expect("join");
    let mut mallory = ChatClient::connect(&url, &test_token("mallory"))
        .await
        .expect("mallory");
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "invalid_json"),
        (r#"{"type":"dance"}"#.into(), "unknown_type"),
        (r#"{"type":"post","room":"x"}"#.into(), "invalid_frame"),
        (
            json!({"type":"post","room":"x","id":"p1","text":"x".repeat(20_000)}).to_string(),
            "too_large",
        ),
        (
            json!({"type":"post","room":room,"id":"p2","text":"not joined"}).to_string(),
            "not_joined",
        ),
        (
            json!({"type":"join","room":"no-such-room"}).to_string(),
            "no_such_room",
        ),
    ];
    for (frame, code) in cases {
        mallory.send_raw(frame.clone()).await.expect("send");
        let (error, _) = mallory
            .until("error", WAIT)
            .await
            .unwrap_or_else(|error| panic!("no error frame for {frame:.60}: {error:#}"));
        assert_eq!(error["code"], code, "for {frame:.60}: {error}");
    }
    let (_, _) = {
        mallory
            .send(json!({"type": "post", "room": room, "id": "p3", "text": "x"}))
            .await
            .expect("send");
        mallory.until("error", WAIT).await.expect("error")
    };
    mallory.send(json!({"type": "ping"})).await.expect("ping");
    mallory
        .until("pong", WAIT)
        .await
        .expect("the connection survived every bad frame");

    let mut poster = ChatClient::connect(&cluster.http_url("n2"), &test_token("poster"))
        .await
        .expect("poster");
    poster.join_and_wait(&room, None).await.expect("join");
    poster
        .post(&room, "ok", "the room still works")
        .await
        .expect("post");
    wait_ack(&mut poster, "ok").await;
    let (message, _) = bystander
        .until("message", WAIT)
        .await
        .expect("bystander still served");
    assert_eq!(message["id"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_when_its_queue_is_full() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_with(&[("sessions", "outbound_queue_max", 8)]).await;
    let room = create_room(&cluster, "n1", "Firehose").await;
    let url = cluster.http_url("n1");
    let mut slow = ChatClient::connect(&url, &test_token("slow"))
        .await
        .expect("slow");
    slow.join_and_wait(&room, None).await.expect("join");
    let mut poster = ChatClient::connect(&url, &test_token("poster"))
        .await
        .expect("poster");
    poster.join_and_wait(&room, None).await.expect("join");
    // The slow client never reads: once the kernel's socket buffers are full, its 8-frame
    // queue fills and the server must cut it off rather than buffer without bound.
    let text = "x".repeat(4000);
    let mut disconnected = false;
    for index in 0..5000 {
        poster
            .post(&room, &format!("f{index}"), &text)
            .await
            .expect("post");
        wait_ack(&mut poster, &format!("f{index}")).await;
        if index % 100 == 99 && slow_clients(&url).await >= 1 {
            disconnected = true;
            break;
        }
    }
    assert!(disconnected, "the slow client was never disconnected");
    // The connection is gone: reading drains what the kernel buffered, then ends (with our
    // close frame if it fit in the buffers, else with the reset of the dropped connection).
    loop {
        match slow.next(WAIT).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Some(close) = slow.closed.clone().flatten() {
                    assert_eq!(u16::from(close.code), 4008, "{close:?}");
                }
                break;
            }
            Err(error) => {
                assert!(
                    !error.to_string().contains("no frame within"),
                    "the slow connection was left open: {error:#}"
                );
                break;
            }
        }
    }
    poster
        .post(&room, "after", "still serving")
        .await
        .expect("post");
    wait_ack(&mut poster, "after").await;
}

async fn slow_clients(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|line| line.starts_with("actorhub_ws_slow_clients_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// What one posting connection saw acknowledged, in order.
struct PosterLog {
    user: String,
    room: String,
    acked: Vec<(u64, u64, Instant)>,
}

/// Posts sequentially (one in flight) until `stop`, retrying an unacknowledged post with its
/// original id; ends quietly when its node dies.
async fn poster(url: String, user: String, room: String, stop: Instant) -> PosterLog {
    let mut log = PosterLog {
        user: user.clone(),
        room: room.clone(),
        acked: Vec::new(),
    };
    let Ok(mut client) = ChatClient::connect(&url, &test_token(&user)).await else {
        return log;
    };
    if client.join_and_wait(&room, None).await.is_err() {
        return log;
    }
    let mut index: u64 = 0;
    while Instant::now() < stop {
        let id = format!("{index}");
        if client
            .post(&room, &id, &format!("{user} says {index}"))
            .await
            .is_err()
        {
            return log;
        }
        loop {
            match client.next(Duration::from_secs(10)).await {
                Ok(Some(frame)) if frame["type"] == "ack" && frame["id"] == id.as_str() => {
                    log.acked
                        .push((index, frame["seq"].as_u64().expect("seq"), Instant::now()));
                    index += 1;
                    break;
                }
                Ok(Some(frame)) if frame["type"] == "error" && frame["ref"] == id.as_str() => {
                    // Not stored: retry the same id, which the room deduplicates.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return log,
            }
        }
    }
    client.close().await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_room_owner_under_traffic_loses_and_duplicates_nothing_acknowledged() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    owner_failover(cluster_with(&[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_killing_a_room_owner_under_traffic_loses_nothing_acknowledged() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    owner_failover(cluster_over(true, &[]).await).await;
}

async fn owner_failover(cluster: TestCluster) {
    let members = ["n1", "n2", "n3"];
    // Room ids are random: create rooms until one is owned by n2 (each is with odds 1/3).
    let mut rooms = Vec::new();
    for index in 0..60 {
        rooms.push(create_room(&cluster, members[index % 3], &format!("Traffic {index}")).await);
        let owners: HashSet<_> = rooms
            .iter()
            .filter_map(|room| runtime::placement::owner("room", room, members))
            .collect();
        if rooms.len() >= 3 && owners.contains("n2") {
            break;
        }
    }
    let victim_room = rooms
        .iter()
        .find(|room| runtime::placement::owner("room", room, members) == Some("n2"))
        .cloned()
        .expect("some room is owned by n2 among 60");
    let watched: Vec<String> = rooms
        .iter()
        .take(2)
        .cloned()
        .chain([victim_room.clone()])
        .collect();

    let started = Instant::now();
    let stop = started + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for room in &watched {
        for node in members {
            let user = format!("user-{node}");
            tasks.push(tokio::spawn(poster(
                cluster.http_url(node),
                user,
                room.clone(),
                stop,
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.kill("n2");
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.expect("poster task"));
    }

    // Served again within 2 s: a survivor's first ack in the victim room after the kill.
    let first_after_kill = logs
        .iter()
        .filter(|log| log.room == victim_room && log.user != "user-n2")
        .flat_map(|log| log.acked.iter().map(|(_, _, at)| *at))
        .filter(|at| *at > killed_at)
        .min()
        .expect("the room served acks after the kill");
    assert!(
        first_after_kill - killed_at < Duration::from_secs(2),
        "room served again {:?} after the kill",
        first_after_kill - killed_at
    );

    for room in &watched {
        let stored = history(&cluster, "n1", room).await;
        let mut by_key: HashMap<(String, String), Vec<u64>> = HashMap::new();
        let mut seqs = HashSet::new();
        for message in &stored {
            let seq = message["seq"].as_u64().expect("seq");
            assert!(seqs.insert(seq), "seq {seq} twice in {room}");
            by_key
                .entry((
                    message["user"].as_str().unwrap_or_default().to_string(),
                    message["id"].as_str().unwrap_or_default().to_string(),
                ))
                .or_default()
                .push(seq);
        }
        for ((user, id), copies) in &by_key {
            assert_eq!(
                copies.len(),
                1,
                "{user}/{id} stored {} times in {room}",
                copies.len()
            );
        }
        let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for message in &stored {
            let user = message["user"].as_str().unwrap_or_default().to_string();
            order.entry(user).or_default().push(
                message["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .expect("numeric id"),
            );
        }
        for (user, ids) in &order {
            assert!(
                ids.windows(2).all(|pair| pair[0] < pair[1]),
                "{user}'s messages out of order in {room}: {ids:?}"
            );
        }
        for log in logs.iter().filter(|log| &log.room == room) {
            for (index, seq, _) in &log.acked {
                let stored_seq = by_key.get(&(log.user.clone(), index.to_string()));
                assert_eq!(
                    stored_seq,
                    Some(&vec![*seq]),
                    "acked {}/{index} (seq {seq}) missing or moved in {room}",
                    log.user
                );
            }
        }
        let acked: usize = logs
            .iter()
            .filter(|log| &log.room == room)
            .map(|log| log.acked.len())
            .sum();
        assert!(
            acked > 10,
            "too little traffic in {room} to mean anything: {acked}"
        );
    }
    let _ = started;
}

/// The rooms listed by `node`.
async fn listed_rooms(cluster: &TestCluster, node: &str) -> Vec<String> {
    let response = reqwest::Client::new()
        .get(format!("{}/api/rooms", cluster.http_url(node)))
        .bearer_auth(test_token("auditor"))
        .send()
        .await
        .expect("list rooms");
    assert_eq!(response.status(), 200, "list rooms");
    let body: Value = response.json().await.expect("json");
    body["rooms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|room| room["id"].as_str().map(str::to_string))
        .collect()
}

/// The ids of the rooms created and maybe not listed (their markers in the shared store).
fn unlisted_markers(cluster: &TestCluster) -> Vec<String> {
    let folder = cluster.dir().join("data/objects/rooms/unlisted");
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        // `<name>#<n>` is a write in progress.
        .filter(|name| !name.contains('#'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_creator_node_dies_before_listing_it_is_listed_anyway() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Every creation pauses between creating the room and listing it: n1 dies there.
    let cluster = cluster_with(&[("rooms", "test_pause_before_listing_ms", 600_000)]).await;
    let creator = {
        let url = format!("{}/api/rooms", cluster.http_url("n1"));
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(test_token("room-maker"))
                .json(&json!({ "name": "Interrupted" }))
                .send()
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let room = loop {
        if let Some(room) = unlisted_markers(&cluster).pop() {
            break room;
        }
        assert!(Instant::now() < deadline, "no creation started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The room exists (its history answers) once the first step is done.
    let history_url = format!("{}/api/rooms/{room}/messages", cluster.http_url("n2"));
    loop {
        let status = reqwest::Client::new()
            .get(&history_url)
            .bearer_auth(test_token("auditor"))
            .send()
            .await
            .expect("history")
            .status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 404, "history of {room} while it is created");
        assert!(Instant::now() < deadline, "the room was never created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !listed_rooms(&cluster, "n2").await.contains(&room),
        "the creation is paused before the listing"
    );

    cluster.kill("n1");
    let answer = creator.await.expect("task");
    assert!(
        answer
            .as_ref()
            .map_or(true, |response| response.status() != 201),
        "the creator died before answering: {answer:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listed_rooms(&cluster, "n2").await.contains(&room) {
        assert!(
            Instant::now() < deadline,
            "{room} is not listed after its creator died\n{}",
            cluster.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed_rooms(&cluster, "n3").await.contains(&room));
    while unlisted_markers(&cluster).contains(&room) {
        assert!(Instant::now() < deadline, "the marker of {room} stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
