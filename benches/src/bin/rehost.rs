//! `rehost`: how long a big room is unavailable when the node that owns it is SIGKILLed, with
//! the journal on a store that answers every request after a delay (S3's first-byte latency).
//!
//! Three release `node run` processes share a store (a local directory or, with `--s3`, a moto
//! server) behind `storage.latency_ms`. The room gets `--messages` posts; then, `--kills`
//! times: a client on a node that survives posts one message, the room's owner is killed, and
//! the time from the kill to that client's next acknowledged post is measured (the new owner
//! claims the partition, seals the old epoch, replays what is not compacted, loads the room).
//! The killed node is restarted (the room goes back to it) before the next round.
//!
//! `cargo run --release -p benches --bin rehost -- --messages 10000 --kills 20 --latency-ms 20`

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use clap::Parser;
use runtime::placement;
use serde_json::json;

#[derive(Parser)]
struct Options {
    /// Messages in the room before the first kill.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Kills measured.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Delay added to every store request.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Use a local S3 server (moto) instead of a local directory.
    #[arg(long)]
    s3: bool,
    /// The node binary (a release build by default).
    #[arg(long)]
    node_bin: Option<std::path::PathBuf>,
}

const WAIT: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let binary = match &options.node_bin {
        Some(path) => path.clone(),
        None => chaos::cluster::default_node_binary()?,
    };
    let moto = if options.s3 {
        let moto = chaos::s3::MotoServer::start().await?;
        moto.bucket("rehost").await?;
        Some(moto)
    } else {
        None
    };
    let mut builder = ClusterBuilder::new(binary)
        .nodes(3)
        .setting("sessions", "messages_per_second", 100_000)
        .setting("storage", "latency_ms", options.latency_ms as i64)
        .setting("storage", "fsync", false)
        .setting("journal", "flush_interval_ms", 10);
    if let Some(moto) = &moto {
        for (key, value) in moto.storage_settings("rehost") {
            builder = builder.setting("storage", key, value);
        }
    }
    let cluster = builder.start().await.context("cluster")?;
    let room = create_room(&cluster).await?;
    fill(&cluster, &room, options.messages).await?;
    eprintln!("room {room} holds {} messages", options.messages);
    let mut samples = Vec::new();
    for round in 0..options.kills {
        let owner = placement::owner("room", &room, NODES).context("owner")?;
        let survivor = NODES
            .into_iter()
            .find(|node| *node != owner)
            .context("a survivor")?;
        let mut client =
            ChatClient::connect(&cluster.http_url(survivor), &test_token("prober")).await?;
        client.join_and_wait(&room, None).await?;
        post_and_ack(&mut client, &room, &format!("before-{round}")).await?;
        cluster.kill(owner);
        let killed = Instant::now();
        post_and_ack(&mut client, &room, &format!("after-{round}")).await?;
        let took = killed.elapsed();
        eprintln!("round {round}: {owner} killed, serving again after {took:?}");
        samples.push(took);
        client.close().await;
        cluster.restart(owner).await?;
        cluster.wait_all_up(WAIT).await?;
        // The room goes back to its owner; wait until it serves there again.
        let mut client =
            ChatClient::connect(&cluster.http_url(owner), &test_token("prober")).await?;
        client.join_and_wait(&room, None).await?;
        post_and_ack(&mut client, &room, &format!("back-{round}")).await?;
        client.close().await;
    }
    samples.sort();
    let millis = |duration: &Duration| duration.as_secs_f64() * 1000.0;
    let median = samples.get(samples.len() / 2).map(millis).unwrap_or(0.0);
    let max = samples.last().map(millis).unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "mode": "rehost",
            "store": if options.s3 { "s3 (moto)" } else { "local directory" },
            "latency_ms": options.latency_ms,
            "messages": options.messages,
            "kills": samples.len(),
            "median_ms": median,
            "max_ms": max,
            "all_ms": samples.iter().map(millis).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

async fn create_room(cluster: &TestCluster) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", cluster.http_url("n1")))
        .bearer_auth(test_token("maker"))
        .json(&json!({ "name": "big room" }))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("create room: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    Ok(body["room"]["id"].as_str().context("room id")?.to_string())
}

/// Posts `messages` of ~200 bytes through ten connections, 32 unacknowledged at a time each.
async fn fill(cluster: &TestCluster, room: &str, messages: usize) -> anyhow::Result<()> {
    const CLIENTS: usize = 10;
    const IN_FLIGHT_MAX: usize = 32;
    let text = "x".repeat(200);
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let url = cluster.http_url(NODES[index % 3]);
        let room = room.to_string();
        let text = text.clone();
        let count = messages / CLIENTS + usize::from(index < messages % CLIENTS);
        tasks.push(tokio::spawn(async move {
            let mut client =
                ChatClient::connect(&url, &test_token(&format!("filler{index}"))).await?;
            client.join_and_wait(&room, None).await?;
            let (mut sent, mut acked) = (0, 0);
            while acked < count {
                while sent < count && sent - acked < IN_FLIGHT_MAX {
                    client
                        .post(&room, &format!("f{index}-{sent}"), &text)
                        .await?;
                    sent += 1;
                }
                let frame = client.next(WAIT).await?.context("closed")?;
                match frame["type"].as_str() {
                    Some("ack") => acked += 1,
                    Some("error") => bail!("refused: {frame}"),
                    _ => {}
                }
            }
            client.close().await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Posts one message and waits for its ack, posting it again (same id) after an error.
async fn post_and_ack(client: &mut ChatClient, room: &str, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    client.post(room, id, "probe").await?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no ack for {id} within {WAIT:?}");
        }
        let frame = client.next(left).await?.context("closed")?;
        match frame["type"].as_str() {
            Some("ack") if frame["id"] == id => return Ok(()),
            Some("error") if frame["ref"] == id => client.post(room, id, "probe").await?,
            _ => {}
        }
    }
}
