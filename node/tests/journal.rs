//! The journal on real node processes: chat failover on an S3 server (moto), with nothing
//! acknowledged lost or duplicated; and the object count of a store under steady chat load
//! staying flat once compaction and retention run (60 s here; `ACTORHUB_SOAK_MINUTES=10` for
//! the long version). Tests run one at a time (2-core machine), each with its own cluster.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use chaos::s3::MotoServer;
use runtime::placement;
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);

async fn create_room(cluster: &TestCluster, node: &str, name: &str) -> String {
    cluster.create_room(node, name).await.expect("create room")
}

/// Every message of `room`, paging through the history from `node`.
async fn history(cluster: &TestCluster, node: &str, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let body: Value = reqwest::Client::new()
            .get(format!(
                "{}/api/rooms/{room}/messages?after={after}&limit=200",
                cluster.http_url(node)
            ))
            .bearer_auth(test_token("auditor"))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        let page = body["messages"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else {
            return all;
        };
        after = last["seq"].as_u64().expect("seq");
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_fails_over_on_s3_without_losing_or_repeating_a_message() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let moto = MotoServer::start().await.expect("moto");
    moto.bucket("chat").await.expect("bucket");
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .setting("sessions", "messages_per_second", 10_000)
        .setting("journal", "flush_interval_ms", 10)
        .env("RUST_LOG", "info,runtime::journal=debug");
    for (key, value) in moto.storage_settings("chat") {
        builder = builder.setting("storage", key, value);
    }
    let cluster = builder.start().await.expect("3 nodes on S3");
    let room = create_room(&cluster, "n1", "on-s3").await;
    let owner = placement::owner("room", &room, ["n1", "n2", "n3"]).expect("owner");
    let talker_node = ["n1", "n2", "n3"]
        .into_iter()
        .find(|node| *node != owner)
        .expect("a node that survives");
    let mut talker = ChatClient::connect(&cluster.http_url(talker_node), &test_token("talker"))
        .await
        .expect("connect");
    talker.join_and_wait(&room, None).await.expect("join");
    let mut acked = BTreeMap::new();
    let mut next = 0;
    let mut post = async |talker: &mut ChatClient, acked: &mut BTreeMap<String, u64>| {
        let id = format!("m{next}");
        next += 1;
        talker
            .post(&room, &id, &format!("text {id}"))
            .await
            .expect("post");
        let deadline = Instant::now() + WAIT;
        loop {
            let frame = talker
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
                .expect("a frame")
                .expect("open");
            match frame["type"].as_str() {
                Some("ack") if frame["id"] == id.as_str() => {
                    acked.insert(id, frame["seq"].as_u64().expect("seq"));
                    return;
                }
                // Not stored: the same id again (the room drops duplicates).
                Some("error") if frame["ref"] == id.as_str() => {
                    talker
                        .post(&room, &id, &format!("text {id}"))
                        .await
                        .expect("repost");
                }
                _ => {}
            }
        }
    };
    for _ in 0..30 {
        post(&mut talker, &mut acked).await;
    }
    cluster.kill(owner);
    let killed = Instant::now();
    post(&mut talker, &mut acked).await;
    eprintln!(
        "first ack after the owner's kill, on S3: {:?}",
        killed.elapsed()
    );
    for _ in 0..30 {
        post(&mut talker, &mut acked).await;
    }
    if std::env::var("ACTORHUB_SHOW_LOGS").is_ok() {
        for node in cluster.live_node_ids() {
            eprintln!("--- {node}\n{}", cluster.log_tail(&node, 400));
        }
    }
    let messages = history(&cluster, talker_node, &room).await;
    let mut seen = HashMap::new();
    for message in &messages {
        let id = message["id"].as_str().expect("id").to_string();
        assert!(
            seen.insert(id.clone(), message["seq"].as_u64().expect("seq"))
                .is_none(),
            "{id} twice"
        );
    }
    for (id, seq) in &acked {
        assert_eq!(seen.get(id), Some(seq), "acknowledged {id} at {seq}");
    }
    let seqs: Vec<u64> = messages
        .iter()
        .map(|message| message["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=messages.len() as u64).collect::<Vec<_>>(),
        "one linear history"
    );
}

fn count_objects(directory: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                count_objects(&path)
            } else {
                usize::from(!entry.file_name().to_string_lossy().contains('#'))
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_count_stays_flat_under_steady_chat() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let minutes: u64 = std::env::var("ACTORHUB_SOAK_MINUTES")
        .ok()
        .and_then(|minutes| minutes.parse().ok())
        .unwrap_or(1);
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting("sessions", "messages_per_second", 10_000)
        .setting("entities", "snapshot_every_events", 100)
        .setting("journal", "compact_interval_ms", 500)
        .setting("journal", "janitor_interval_ms", 1_000)
        .extra_toml("[journal.retain_events]\nroom = 300\n")
        .start()
        .await
        .expect("a node");
    let objects = cluster.dir().join("data/objects");
    let rooms: Vec<String> = {
        let mut rooms = Vec::new();
        for index in 0..10 {
            rooms.push(create_room(&cluster, "n1", &format!("steady {index}")).await);
        }
        rooms
    };
    let duration = Duration::from_secs(minutes * 60);
    let started = Instant::now();
    let url = cluster.http_url("n1");
    let posters: Vec<_> = rooms
        .iter()
        .enumerate()
        .map(|(index, room)| {
            let url = url.clone();
            let room = room.clone();
            tokio::spawn(async move {
                let mut client = ChatClient::connect(&url, &test_token(&format!("poster{index}")))
                    .await
                    .expect("connect");
                client.join_and_wait(&room, None).await.expect("join");
                let mut sent = 0u64;
                // About 20 posts a second per room, each acknowledged before the next.
                while started.elapsed() < duration {
                    client
                        .post(&room, &format!("p{sent}"), "steady")
                        .await
                        .expect("post");
                    client.until("ack", WAIT).await.expect("ack");
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((started.elapsed().as_secs(), count_objects(&objects)));
    }
    let mut posts = 0;
    for poster in posters {
        posts += poster.await.expect("poster");
    }
    eprintln!("{posts} posts in {minutes} min; objects over time (s, count): {samples:?}");
    // After a warm-up third, the count must not keep growing with the posts.
    let third = samples.len() / 3;
    let middle = samples[third..2 * third]
        .iter()
        .map(|(_, count)| *count)
        .max()
        .unwrap_or(0);
    let last = samples[2 * third..]
        .iter()
        .map(|(_, count)| *count)
        .max()
        .unwrap_or(0);
    assert!(
        last <= middle + middle / 10 + 20,
        "objects keep growing: {middle} then {last} ({samples:?})"
    );
    assert!(posts > 1000 * minutes, "the load ran ({posts} posts)");
}
