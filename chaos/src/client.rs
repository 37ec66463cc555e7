//! A WebSocket chat client speaking ActorHub's protocol over a real TCP connection, for the
//! integration tests, the load generator and the chaos workload.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cluster::TEST_JWT_SECRET;

/// A token for `user` signed with the test clusters' secret.
pub fn test_token(user: &str) -> String {
    test_token_named(user, None)
}

/// A token for `user` with a display name, signed with the test clusters' secret.
pub fn test_token_named(user: &str, name: Option<&str>) -> String {
    let keys = web::auth::TokenKeys::new(TEST_JWT_SECRET.as_bytes());
    keys.mint_named(user, name, web::auth::unix_now_s(), 3600)
}

/// What [`ChatClient::receive`] got within its timeout.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Frame(Value),
    /// The server closed the connection (its close frame, if any, is in [`ChatClient::closed`]).
    Closed,
    /// Nothing arrived within the timeout; the connection may still be fine.
    Quiet,
}

/// One connection. Frames are JSON values; pings are answered by tungstenite.
pub struct ChatClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The close frame the server sent, once it has.
    pub closed: Option<Option<CloseFrame>>,
}

impl ChatClient {
    /// Connects to `http_url` (e.g. `http://127.0.0.1:8101`) with `token`.
    pub async fn connect(http_url: &str, token: &str) -> anyhow::Result<Self> {
        Self::connect_within(http_url, token, Duration::from_secs(10)).await
    }

    /// Connects, giving up after `timeout` (a frozen node accepts TCP but never upgrades).
    pub async fn connect_within(
        http_url: &str,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let url = format!("{}/ws?token={token}", http_url.replacen("http", "ws", 1));
        let (socket, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
            .await
            .context("WebSocket connect timed out")?
            .context("WebSocket connect failed")?;
        Ok(Self {
            socket,
            closed: None,
        })
    }

    /// The next JSON frame, [`Received::Closed`], or [`Received::Quiet`] after `timeout`.
    /// Cancellation-safe: no frame is lost when the timeout fires.
    pub async fn receive(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(received) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Ok(Received::Quiet);
            };
            match received {
                None => return Ok(Received::Closed),
                Some(Err(error)) => return Err(anyhow!("WebSocket read failed: {error}")),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Received::Frame)
                        .context("server frame is not JSON");
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame);
                    return Ok(Received::Closed);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .context("send frame")
    }

    pub async fn send_raw(&mut self, text: String) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(text))
            .await
            .context("send raw frame")
    }

    pub async fn join(&mut self, room: &str, since: Option<u64>) -> anyhow::Result<()> {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await
    }

    pub async fn post(&mut self, room: &str, id: &str, text: &str) -> anyhow::Result<()> {
        self.send(json!({"type": "post", "room": room, "id": id, "text": text}))
            .await
    }

    /// The next JSON frame, or `None` when the connection closed; errors after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        // One deadline for the call: the server's pings must not extend it.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            match received {
                None => return Ok(None),
                Some(Err(error)) => return Err(anyhow!("WebSocket read failed: {error}")),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .context("server frame is not JSON");
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame);
                    return Ok(None);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads frames until one of `kind` arrives (others are returned too, in order).
    pub async fn until(
        &mut self,
        kind: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .next(remaining)
                .await
                .with_context(|| format!("waiting for a {kind:?} frame after {before:?}"))?
            {
                Some(frame) if frame["type"] == kind => return Ok((frame, before)),
                Some(frame) => before.push(frame),
                None => bail!(
                    "connection closed while waiting for {kind:?} (close: {:?}); got {before:?}",
                    self.closed
                ),
            }
        }
    }

    /// Joins and waits for `joined`; returns the room's head.
    pub async fn join_and_wait(
        &mut self,
        room: &str,
        since: Option<u64>,
    ) -> anyhow::Result<(u64, Vec<Value>)> {
        self.join(room, since).await?;
        let (joined, before) = self.until("joined", Duration::from_secs(10)).await?;
        if let Some(error) = before.iter().find(|frame| frame["type"] == "error") {
            bail!("join failed: {error}");
        }
        joined["head"]
            .as_u64()
            .map(|head| (head, before))
            .ok_or_else(|| anyhow!("joined without head: {joined}"))
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
