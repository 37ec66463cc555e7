//! Huge replays: a room filled before the run with [`MESSAGES`] messages of ~4 KB and 128-byte
//! ids (about four cluster frames of history), then joined with `since: 0`, again and again,
//! on nodes that do not own it. The whole history must arrive in order, with no error: the
//! owner answers in pages that fit a cluster message, and no link drops (the third
//! case, where the replay dropped the link and the join was answered "unavailable").

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Judgement, Outcome, Shared};
use crate::client::{ChatClient, test_token};
use crate::cluster::TestCluster;

/// Messages in the replay room, as in the issue.
pub const MESSAGES: usize = 1_000;
/// Posts in flight while filling (a connection may queue 64 per room).
const FILL_IN_FLIGHT_MAX: usize = 32;
/// Deadline of the fill.
const FILL_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline of one replay (4 MB through a cluster link and a WebSocket).
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The user that fills the room.
const FILLER: &str = "chaos-hostile-filler";

/// The prepared room.
#[derive(Debug, Clone)]
pub struct ReplayRoom {
    pub id: String,
    /// Its owner with every node up: replays are asked of the others.
    pub owner: String,
    /// Its last seq once filled.
    pub head: u64,
}

/// A message text of 3,500 characters whose quotes and backslashes make it ~4 KB encoded.
fn text() -> String {
    "chat\"\\ ".repeat(500)
}

/// Creates the room and fills it through its owner.
pub async fn prepare(cluster: &TestCluster, http: &reqwest::Client) -> anyhow::Result<ReplayRoom> {
    let nodes = cluster.node_ids();
    let response = http
        .post(format!("{}/api/rooms", cluster.http_url(&nodes[0])))
        .bearer_auth(test_token(FILLER))
        .json(&json!({"name": "hostile replay"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("creating the replay room")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let Some(id) = body["room"]["id"]
        .as_str()
        .filter(|_| status.as_u16() == 201)
    else {
        bail!("POST /api/rooms answered {status}: {body}");
    };
    let owner = runtime::placement::owner("room", id, nodes.iter().map(String::as_str))
        .context("no owner for the replay room")?
        .to_string();
    let head = tokio::time::timeout(FILL_TIMEOUT, fill(&cluster.http_url(&owner), id))
        .await
        .with_context(|| format!("filling the replay room took over {FILL_TIMEOUT:?}"))??;
    Ok(ReplayRoom {
        id: id.to_string(),
        owner,
        head,
    })
}

/// Posts [`MESSAGES`] messages; returns the last seq acknowledged.
async fn fill(url: &str, room: &str) -> anyhow::Result<u64> {
    let mut client = ChatClient::connect_within(url, &test_token(FILLER), CONNECT_TIMEOUT).await?;
    client.join_and_wait(room, None).await?;
    let text = text();
    let (mut sent, mut acked, mut head) = (0, 0, 0);
    while acked < MESSAGES {
        while sent < MESSAGES && sent - acked < FILL_IN_FLIGHT_MAX {
            // 128-byte client ids, as a client may send.
            let id = format!("{FILLER}-{sent:0>107}");
            client.post(room, &id, &text).await?;
            sent += 1;
        }
        let Some(frame) = client.next(Duration::from_secs(20)).await? else {
            bail!("the connection closed after {acked} acks");
        };
        match frame["type"].as_str() {
            Some("ack") => {
                acked += 1;
                head = head.max(frame["seq"].as_u64().unwrap_or(0));
            }
            Some("error") => bail!("a post was refused: {frame}"),
            _ => {}
        }
    }
    client.close().await;
    Ok(head)
}

/// One replay of the whole room on `target`.
pub async fn replay(shared: &Shared, room: &ReplayRoom, target: &str) -> Outcome {
    let started = Instant::now();
    let url = shared.cluster.http_url(target);
    let mut client = match ChatClient::connect_within(
        &url,
        &test_token("chaos-hostile-replayer"),
        CONNECT_TIMEOUT,
    )
    .await
    {
        Ok(client) => client,
        Err(error) => {
            let error = format!("{error:#}");
            // A loaded node refuses upgrades with 503: its fair answer to anyone.
            let judgement = if error.contains("503") {
                Judgement::Tolerated
            } else {
                Judgement::Unexpected
            };
            return Outcome::new(judgement, "connect failed", error);
        }
    };
    let deadline = started + REPLAY_TIMEOUT;
    let outcome = read_replay(&mut client, room, deadline).await;
    client.close().await;
    match outcome {
        Ok(count) => Outcome::new(
            Judgement::Expected,
            "every message, in order",
            format!("{count} messages in {:.1?}", started.elapsed()),
        ),
        Err((got, detail)) => Outcome::new(
            Judgement::Unexpected,
            got,
            format!("{detail} after {:.1?}", started.elapsed()),
        ),
    }
}

/// Joins with `since: 0` and reads until the head; `Err((label, detail))` on anything else.
async fn read_replay(
    client: &mut ChatClient,
    room: &ReplayRoom,
    deadline: Instant,
) -> Result<u64, (String, String)> {
    client
        .join(&room.id, Some(0))
        .await
        .map_err(|error| ("join not sent".to_string(), format!("{error:#}")))?;
    let mut next = 1;
    let mut head = None;
    loop {
        if head.is_some_and(|head| next > head) {
            return Ok(next - 1);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let frame = match client.next(remaining).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return Err((
                    "closed during the replay".into(),
                    format!("at seq {next} (close: {:?})", client.closed),
                ));
            }
            Err(_) => {
                return Err((
                    "replay timed out".into(),
                    format!("{} of {:?} messages", next - 1, head),
                ));
            }
        };
        match frame["type"].as_str() {
            Some("joined") if frame["room"] == room.id.as_str() => {
                head = frame["head"].as_u64();
            }
            Some("message") if frame["room"] == room.id.as_str() => {
                let seq = frame["seq"].as_u64().unwrap_or(0);
                if seq != next {
                    return Err((
                        "out of order".into(),
                        format!("message {seq} where {next} was due"),
                    ));
                }
                next += 1;
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("unknown");
                return Err((format!("error {code}"), format!("{frame} at seq {next}")));
            }
            _ => {}
        }
    }
}
