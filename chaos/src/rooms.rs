//! The workload's rooms: created at the start (spread over the nodes by placement), and their
//! histories read back page by page at the end: the cluster's own ground truth.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::checker::Histories;
use crate::client::test_token;
use crate::faults::AUDITOR;
use crate::records::StoredMessage;

/// Attempts at creating the workload's rooms (some are discarded to spread owners evenly).
const ROOM_ATTEMPTS_PER_ROOM: usize = 10;
/// How long reading a room's history may keep failing before the room counts as unreadable.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(60);
/// Rooms whose histories are read at once (the nodes have few cores; paging a large journal
/// is CPU-bound on the node serving it).
const HISTORY_READS_CONCURRENT: usize = 2;

/// Creates `count` rooms, discarding some so that owners are spread as evenly as placement
/// allows (every node should own rooms, or faults on it would have nothing to fail over).
pub async fn create_rooms(
    http: &reqwest::Client,
    node_ids: &[String],
    node_urls: &[String],
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let per_node_max = count.div_ceil(node_ids.len());
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    let mut rooms = Vec::new();
    let token = test_token("chaos-room-maker");
    for attempt in 0..count * ROOM_ATTEMPTS_PER_ROOM {
        if rooms.len() == count {
            break;
        }
        let url = &node_urls[attempt % node_urls.len()];
        let response = http
            .post(format!("{url}/api/rooms"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("chaos {attempt}")}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let body: Value = match response {
            Ok(response) if response.status().as_u16() == 201 => {
                response.json().await.unwrap_or(Value::Null)
            }
            Ok(response) => bail!(
                "POST /api/rooms answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(error) => bail!("POST /api/rooms failed: {error}"),
        };
        let Some(room) = body["room"]["id"].as_str() else {
            bail!("POST /api/rooms gave no room id: {body}")
        };
        let owner = runtime::placement::owner("room", room, node_ids.iter().map(String::as_str))
            .unwrap_or_default()
            .to_string();
        let last_attempts = attempt + 1 >= count * ROOM_ATTEMPTS_PER_ROOM - (count - rooms.len());
        if owned.get(&owner).copied().unwrap_or(0) < per_node_max || last_attempts {
            *owned.entry(owner).or_default() += 1;
            rooms.push(room.to_string());
        }
    }
    if rooms.len() < count {
        bail!("created only {} of {count} rooms", rooms.len());
    }
    println!("chaos: {count} rooms, owners {owned:?}");
    Ok(rooms)
}

/// Reads every room's whole history, page by page, from any live node.
pub async fn read_histories(
    http: &reqwest::Client,
    urls: &[String],
    rooms: &[String],
) -> (Histories, Vec<(String, String)>) {
    let token = test_token(AUDITOR);
    let started = tokio::time::Instant::now();
    // Rooms are read concurrently, each starting on another node, so the nodes share the work.
    let reads = futures_util::stream::iter(rooms.iter().cloned().enumerate())
        .map(|(index, room)| {
            let mut rotated = urls.to_vec();
            rotated.rotate_left(index % urls.len().max(1));
            let (http, token) = (http.clone(), token.clone());
            async move {
                let result = read_history(&http, &rotated, &room, &token).await;
                (room, result)
            }
        })
        .buffer_unordered(HISTORY_READS_CONCURRENT);
    futures_util::pin_mut!(reads);
    let mut histories = Histories::new();
    let mut unreadable = Vec::new();
    while let Some((room, result)) = reads.next().await {
        match result {
            Ok(history) => {
                println!(
                    "chaos: read the history of {room}: {} messages ({:.0?} so far)",
                    history.len(),
                    started.elapsed()
                );
                histories.insert(room, history);
            }
            Err(error) => unreadable.push((room, format!("{error:#}"))),
        }
    }
    (histories, unreadable)
}

async fn read_history(
    http: &reqwest::Client,
    urls: &[String],
    room: &str,
    token: &str,
) -> anyhow::Result<Vec<StoredMessage>> {
    if urls.is_empty() {
        bail!("no live node to read from");
    }
    let mut deadline = tokio::time::Instant::now() + HISTORY_TIMEOUT;
    let mut history = Vec::new();
    let mut after = 0;
    let mut attempt = 0;
    loop {
        let url = format!(
            "{}/api/rooms/{room}/messages?after={after}&limit=200",
            urls[attempt % urls.len()]
        );
        let page = async {
            let response = http
                .get(&url)
                .bearer_auth(token)
                .timeout(Duration::from_secs(10))
                .send()
                .await?;
            let status = response.status();
            if !status.is_success() {
                bail!(
                    "GET {url}: {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Ok::<Value, anyhow::Error>(response.json().await?)
        }
        .await;
        let body = match page {
            Ok(body) => {
                // The deadline bounds consecutive failures, not a long successful read.
                deadline = tokio::time::Instant::now() + HISTORY_TIMEOUT;
                body
            }
            Err(error) => {
                attempt += 1;
                if tokio::time::Instant::now() >= deadline {
                    return Err(error);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            return Ok(history);
        }
        for message in &messages {
            let seq = message["seq"]
                .as_u64()
                .ok_or_else(|| anyhow!("a message without seq in {room}: {message}"))?;
            history.push(StoredMessage {
                seq,
                user: message["user"].as_str().unwrap_or_default().to_string(),
                id: message["id"].as_str().unwrap_or_default().to_string(),
            });
            after = after.max(seq);
        }
    }
}
