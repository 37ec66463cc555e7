//! Nothing a client or a stranger sends may drop a cluster link or make a node hold unbounded
//! memory, on a real 3-node cluster:
//! - a replay larger than a cluster message (1,000 messages of ~4 KB, joined with `since: 0`
//!   on a node that does not own the room) reaches the client whole and in order, in pages;
//!   appends larger than a cluster message reach members on other nodes in several
//!   publications, in order; no member is ever seen down meanwhile;
//! - 200 connections to a cluster port announcing 4 MiB frames before any handshake cost the
//!   node a bounded amount of memory, and the honest peers stay connected.
//!
//! The cluster's frames are set small (64 KiB) so that a few megabytes of chat exceed them many
//! times over. Tests run one at a time (2-core machine), each with its own cluster.

use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use runtime::placement;
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);
const FRAME_BYTES_MAX: i64 = 64 * 1024;

async fn cluster() -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .setting("sessions", "messages_per_second", 10_000)
        .setting("cluster", "frame_bytes_max", FRAME_BYTES_MAX)
        .start()
        .await
        .expect("3-node cluster starts")
}

/// Member-down transitions every node has seen so far.
async fn downs_seen(cluster: &TestCluster) -> u64 {
    let mut total = 0;
    for node in cluster.live_node_ids() {
        let text = reqwest::get(format!("{}/metrics", cluster.http_url(&node)))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        total += text
            .lines()
            .filter(|line| {
                line.starts_with("actorhub_membership_transitions_total")
                    && line.contains("state=\"down\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn create_room(cluster: &TestCluster, node: &str) -> String {
    cluster.create_room(node, "big").await.expect("create room")
}

/// Posts `count` messages of `text` from one connection to `node`, waiting for every ack.
async fn post_many(url: String, user: String, room: String, count: usize, text: String) {
    let mut client = ChatClient::connect(&url, &test_token(&user))
        .await
        .expect("connect poster");
    client.join_and_wait(&room, None).await.expect("join");
    // At most this many posts unacknowledged (a connection may queue 64 per room).
    const IN_FLIGHT_MAX: usize = 32;
    let (mut sent, mut acked) = (0, 0);
    while acked < count {
        while sent < count && sent - acked < IN_FLIGHT_MAX {
            // 128-byte client ids, as a client may send.
            let id = format!("{user}-{sent:0>120}");
            client.post(&room, &id, &text).await.expect("post");
            sent += 1;
        }
        let frame = client
            .next(WAIT)
            .await
            .expect("frames while posting")
            .expect("connection open");
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => panic!("post refused: {frame}"),
            _ => {}
        }
    }
    client.close().await;
}

/// Reads `count` message frames and checks they are `first..first+count` in order.
async fn expect_messages(client: &mut ChatClient, first: u64, count: u64) {
    let mut next = first;
    while next < first + count {
        let frame = client
            .next(WAIT)
            .await
            .unwrap_or_else(|error| panic!("waiting for message {next}: {error}"))
            .expect("connection open");
        match frame["type"].as_str() {
            Some("message") => {
                assert_eq!(frame["seq"].as_u64(), Some(next), "in order, no gap");
                next += 1;
            }
            Some("error") => panic!("error while replaying: {frame}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_broadcasts_larger_than_a_cluster_message_arrive_whole_and_links_stay_up() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let room = create_room(&cluster, "n1").await;
    let owner = placement::owner("room", &room, ["n1", "n2", "n3"]).expect("owner");
    let elsewhere = ["n1", "n2", "n3"]
        .into_iter()
        .find(|node| *node != owner)
        .expect("another node");
    let downs_before = downs_seen(&cluster).await;

    // 1,000 messages of ~4 KB: about 4 MB of history, sixty-odd times a cluster frame.
    let text: String = "chat\"\\ ".repeat(500);
    let posters: Vec<_> = (0..10)
        .map(|index| {
            tokio::spawn(post_many(
                cluster.http_url(owner),
                format!("poster{index}"),
                room.clone(),
                100,
                text.clone(),
            ))
        })
        .collect();
    for poster in posters {
        poster.await.expect("poster");
    }

    let mut reader = ChatClient::connect(&cluster.http_url(elsewhere), &test_token("reader"))
        .await
        .expect("connect reader");
    let started = Instant::now();
    let (head, _) = reader.join_and_wait(&room, Some(0)).await.expect("join");
    assert_eq!(head, 1000);
    expect_messages(&mut reader, 1, 1000).await;
    eprintln!(
        "replay of 1000 messages (~4 MB) across nodes with 64 KiB frames: {:?}",
        started.elapsed()
    );

    // Live: twenty posters at once on the owner, so appends batch several 4 KB posts, each
    // append's broadcast larger than a frame; the reader elsewhere gets all, in order.
    let posters: Vec<_> = (0..20)
        .map(|index| {
            tokio::spawn(post_many(
                cluster.http_url(owner),
                format!("burst{index}"),
                room.clone(),
                5,
                text.clone(),
            ))
        })
        .collect();
    expect_messages(&mut reader, 1001, 100).await;
    for poster in posters {
        poster.await.expect("poster");
    }
    assert_eq!(
        downs_seen(&cluster).await,
        downs_before,
        "no member was seen down: no link dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_a_cluster_port_cost_bounded_memory_and_honest_peers_stay() {
    use tokio::io::AsyncWriteExt;
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let target = "n2";
    let pid = cluster.pid(target).expect("n2 runs");
    let downs_before = downs_seen(&cluster).await;
    let before = resident_bytes(pid);
    let address = cluster.cluster_addr(target);
    // Each announces a 4 MiB frame and sends as much of it as the node takes.
    let attackers: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
                    return 0usize;
                };
                let mut sent = 0;
                if stream.write_all(&(4u64 << 20).to_be_bytes()).await.is_err() {
                    return sent;
                }
                let chunk = vec![0x5a_u8; 64 * 1024];
                for _ in 0..64 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk))
                        .await
                    {
                        Ok(Ok(())) => sent += chunk.len(),
                        _ => break,
                    }
                }
                sent
            })
        })
        .collect();
    let mut peak = before;
    let mut sent_total = 0;
    for attacker in attackers {
        peak = peak.max(resident_bytes(pid));
        sent_total += attacker.await.expect("attacker");
    }
    peak = peak.max(resident_bytes(pid));
    let after = resident_bytes(pid);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "200 strangers announcing 4 MiB frames: node RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; the node took {:.1} MiB of the 800 MiB they tried to send",
        mib(before),
        mib(peak),
        mib(after),
        sent_total as f64 / (1024.0 * 1024.0)
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024 * 1024,
        "RSS grew by {:.1} MiB",
        mib(peak.saturating_sub(before))
    );
    assert_eq!(cluster.pid(target), Some(pid), "the node is still up");
    // The honest peers stayed connected, and chat still crosses nodes.
    assert_eq!(
        downs_seen(&cluster).await,
        downs_before,
        "no member was seen down"
    );
    let room = create_room(&cluster, "n1").await;
    let mut listener = ChatClient::connect(&cluster.http_url(target), &test_token("listener"))
        .await
        .expect("connect");
    listener.join_and_wait(&room, None).await.expect("join");
    post_many(
        cluster.http_url("n3"),
        "talker".into(),
        room.clone(),
        1,
        "still here".into(),
    )
    .await;
    expect_messages(&mut listener, 1, 1).await;
}
