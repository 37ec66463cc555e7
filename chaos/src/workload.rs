//! The chat workload: one client per (room, node), each a user posting in its room over a real
//! WebSocket, and the log of what it saw.
//!
//! A client behaves as a careful real client would:
//! - one post in flight at a time; the post's id is the client's counter, and an unacknowledged
//!   post is retried with the same id (after an `error` naming it, or on a new connection) until
//!   it is acknowledged, so the room's dedup makes retries safe;
//! - when its connection dies, goes silent for [`SILENCE_LIMIT`] (a frozen node), or cannot be
//!   made, it connects to the next node and rejoins with `since` = the last seq it was
//!   delivered, so it must get exactly what it missed;
//! - after [`REBALANCE_AFTER`] away from its home node it goes back home, so a restarted node
//!   gets its clients back (and the resume path is exercised without a fault too).
//!
//! Everything the client sees is recorded in its [`ClientLog`]; the checker compares the logs
//! with the rooms' histories.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{ChatClient, Received, test_token};
use crate::records::{AckRecord, ClientLog, ConnectionRecord, Delivery, PostRecord};

/// A frozen node accepts TCP connections (the kernel completes the handshake) but never
/// upgrades them: give up on a connect after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection with no frame at all (pongs included) for this long is taken as dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);
/// How often a waiting client pings, so that silence means a dead connection.
const PING_INTERVAL: Duration = Duration::from_millis(1000);
/// Read timeout of one receive; bounds how late a client notices stop signals.
const RECEIVE_SLICE: Duration = Duration::from_millis(250);
/// Time away from the home node after which a client goes back (between posts).
pub const REBALANCE_AFTER: Duration = Duration::from_secs(10);
/// Pause before resending a post the server refused for now.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts (it starts at 50 ms and doubles).
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);
/// Deliveries kept per client; beyond it the client still checks order on the fly, and the
/// log notes the truncation (bounds memory on very long soaks).
pub const DELIVERIES_KEPT_MAX: usize = 2_000_000;

/// Milliseconds since the workload started; every record uses this clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn instant_of(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// The clock's reading at `instant` (0 for an instant before the start).
    pub fn ms_of(&self, instant: std::time::Instant) -> u64 {
        Instant::from_std(instant)
            .saturating_duration_since(self.start)
            .as_millis() as u64
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub acked: AtomicU64,
    pub retries: AtomicU64,
    pub reconnects: AtomicU64,
    pub faults_started: AtomicU64,
    pub jobs_accepted: AtomicU64,
    pub jobs_finished: AtomicU64,
    pub hostile_actions: AtomicU64,
}

/// Signals from the run to its clients.
#[derive(Debug, Clone)]
pub struct Signals {
    /// True: post nothing new, finish the post in flight, then close.
    pub stop_posting: watch::Receiver<bool>,
    /// True: stop now, whatever is in flight (the drain deadline passed).
    pub stop_now: watch::Receiver<bool>,
}

impl Signals {
    fn stop_posting(&self) -> bool {
        *self.stop_posting.borrow()
    }

    fn stop_now(&self) -> bool {
        *self.stop_now.borrow()
    }
}

/// One client: which user, which room, which nodes it may use.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub user: String,
    pub room: String,
    /// `(node id, http url)` of every node, in order.
    pub nodes: Vec<(String, String)>,
    /// Index into `nodes` of the home node.
    pub home: usize,
    /// Spreads the clients of a failed node over the other nodes (any number, e.g. the room's
    /// index).
    pub spread: usize,
    pub post_interval: Duration,
}

/// The client's state across connections.
struct ClientRun {
    spec: ClientSpec,
    clock: Clock,
    progress: Arc<Progress>,
    signals: Signals,
    log: ClientLog,
    /// Index in `log.posts` of the post waiting for its ack.
    pending: Option<usize>,
    next_index: u64,
    /// The last seq delivered in the room (or the head at the first join).
    last_delivered: Option<u64>,
    /// The next post may go out at this time (post interval).
    next_post_at: Instant,
}

/// Why a connection ended.
enum ConnectionEnd {
    Closed(String),
    /// The stop signal: the client is done.
    Finished,
    Rebalance,
}

/// Runs one client until the stop signals; returns its log.
pub async fn run_client(
    spec: ClientSpec,
    clock: Clock,
    progress: Arc<Progress>,
    signals: Signals,
) -> ClientLog {
    let log = ClientLog {
        user: spec.user.clone(),
        room: spec.room.clone(),
        home: spec.nodes[spec.home].0.clone(),
        ..ClientLog::default()
    };
    let mut client = ClientRun {
        spec,
        clock,
        progress,
        signals,
        log,
        pending: None,
        next_index: 0,
        last_delivered: None,
        next_post_at: Instant::now(),
    };
    client.run().await;
    client.log
}

impl ClientRun {
    async fn run(&mut self) {
        let node_count = self.spec.nodes.len();
        let mut choice = self.spec.home;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.signals.stop_now() || (self.signals.stop_posting() && self.pending.is_none()) {
                return;
            }
            let (node, url) = self.spec.nodes[choice].clone();
            let token = test_token(&self.spec.user);
            let connected = ChatClient::connect_within(&url, &token, CONNECT_TIMEOUT).await;
            let mut connection = match connected {
                Ok(connection) => connection,
                Err(_) => {
                    self.count_error("connect_failed");
                    choice = (choice + 1) % node_count;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                    continue;
                }
            };
            delay = Duration::from_millis(50);
            if !self.log.connections.is_empty() {
                self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.log.connections.push(ConnectionRecord {
                node: node.clone(),
                connected_ms: self.clock.now_ms(),
                ended_ms: None,
                end_reason: None,
            });
            let end = self
                .serve(&mut connection, &node, choice == self.spec.home)
                .await;
            let reason = match &end {
                ConnectionEnd::Closed(reason) => reason.clone(),
                ConnectionEnd::Finished => "finished".into(),
                ConnectionEnd::Rebalance => "back home".into(),
            };
            if let Some(record) = self.log.connections.last_mut() {
                record.ended_ms = Some(self.clock.now_ms());
                record.end_reason = Some(reason);
            }
            match end {
                ConnectionEnd::Finished => {
                    connection.close().await;
                    return;
                }
                ConnectionEnd::Rebalance => {
                    connection.close().await;
                    choice = self.spec.home;
                }
                // Clients leaving a failed node spread over the others (by their spread
                // index), so every room keeps clients on the survivors.
                ConnectionEnd::Closed(_) => {
                    let step = 1 + self.spec.spread % (node_count - 1).max(1);
                    choice = (choice + step) % node_count;
                }
            }
        }
    }

    /// Joins and posts over one connection until it fails or the client is done.
    async fn serve(
        &mut self,
        connection: &mut ChatClient,
        node: &str,
        at_home: bool,
    ) -> ConnectionEnd {
        let connected_at = Instant::now();
        let room = self.spec.room.clone();
        if let Err(error) = connection.join(&room, self.last_delivered).await {
            return ConnectionEnd::Closed(format!("join send failed: {error:#}"));
        }
        let mut joined = false;
        let mut post_unsent = self.pending.is_some();
        let mut last_frame_at = Instant::now();
        let mut last_ping_at = Instant::now();
        let mut rejoin_at: Option<Instant> = None;
        let mut resend_at: Option<Instant> = None;
        loop {
            if self.signals.stop_now() {
                return ConnectionEnd::Finished;
            }
            if self.pending.is_none() {
                if self.signals.stop_posting() {
                    return ConnectionEnd::Finished;
                }
                if !at_home && connected_at.elapsed() >= REBALANCE_AFTER {
                    return ConnectionEnd::Rebalance;
                }
            }
            let now = Instant::now();
            if rejoin_at.is_some_and(|at| now >= at) {
                rejoin_at = None;
                if let Err(error) = connection.join(&room, self.last_delivered).await {
                    return ConnectionEnd::Closed(format!("rejoin send failed: {error:#}"));
                }
            }
            if resend_at.is_some_and(|at| now >= at) {
                resend_at = None;
                post_unsent = true;
            }
            if joined
                && self.pending.is_none()
                && !self.signals.stop_posting()
                && now >= self.next_post_at
            {
                self.new_post();
                post_unsent = true;
            }
            if joined && post_unsent {
                post_unsent = false;
                if let Err(error) = self.send_pending(connection).await {
                    return ConnectionEnd::Closed(format!("post send failed: {error:#}"));
                }
            }
            // Wake up in time for the next post (or a retry) rather than a whole slice later.
            let mut wake_at = Instant::now() + RECEIVE_SLICE;
            if self.pending.is_none() && joined {
                wake_at = wake_at.min(self.next_post_at);
            }
            if let Some(at) = resend_at.into_iter().chain(rejoin_at).min() {
                wake_at = wake_at.min(at);
            }
            let slice = wake_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let received = connection.receive(slice).await;
            match received {
                Ok(Received::Frame(frame)) => {
                    last_frame_at = Instant::now();
                    match self.handle_frame(&frame, node) {
                        FrameEffect::None => {}
                        FrameEffect::Joined => joined = true,
                        FrameEffect::Acked => {}
                        FrameEffect::RetryPost(delay) => resend_at = Some(Instant::now() + delay),
                        FrameEffect::Rejoin => {
                            joined = false;
                            rejoin_at = Some(Instant::now() + RETRY_DELAY * 2);
                            if self.pending.is_some() {
                                post_unsent = true;
                            }
                        }
                    }
                }
                Ok(Received::Quiet) => {
                    if last_frame_at.elapsed() >= SILENCE_LIMIT {
                        return ConnectionEnd::Closed(format!("silent for {SILENCE_LIMIT:?}"));
                    }
                    if last_ping_at.elapsed() >= PING_INTERVAL {
                        last_ping_at = Instant::now();
                        if let Err(error) = connection.send(json!({"type": "ping"})).await {
                            return ConnectionEnd::Closed(format!("ping send failed: {error:#}"));
                        }
                    }
                }
                Ok(Received::Closed) => {
                    let close = connection
                        .closed
                        .clone()
                        .flatten()
                        .map(|frame| format!("{} {}", frame.code, frame.reason))
                        .unwrap_or_default();
                    return ConnectionEnd::Closed(
                        format!("closed by the server {close}").trim().to_string(),
                    );
                }
                Err(error) => return ConnectionEnd::Closed(format!("{error:#}")),
            }
            // Keep pinging while frames flow too, so a server that streams others' messages but
            // never answers ours still looks alive only while it really is.
            if last_ping_at.elapsed() >= PING_INTERVAL * 2 {
                last_ping_at = Instant::now();
                if let Err(error) = connection.send(json!({"type": "ping"})).await {
                    return ConnectionEnd::Closed(format!("ping send failed: {error:#}"));
                }
            }
        }
    }

    fn new_post(&mut self) {
        let now = self.clock.now_ms();
        self.log.posts.push(PostRecord {
            index: self.next_index,
            first_sent_ms: now,
            last_sent_ms: now,
            attempts: 0,
            ack: None,
        });
        self.next_index += 1;
        self.pending = Some(self.log.posts.len() - 1);
    }

    async fn send_pending(&mut self, connection: &mut ChatClient) -> anyhow::Result<()> {
        let Some(position) = self.pending else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let post = &mut self.log.posts[position];
        if post.attempts > 0 {
            self.progress.retries.fetch_add(1, Ordering::Relaxed);
        }
        post.attempts += 1;
        post.last_sent_ms = now;
        let id = post.id();
        let text = format!("chaos {} {}", self.spec.user, post.index);
        connection.post(&self.spec.room, &id, &text).await
    }

    fn handle_frame(&mut self, frame: &Value, node: &str) -> FrameEffect {
        match frame["type"].as_str() {
            Some("joined") if frame["room"] == self.spec.room.as_str() => {
                if let Some(head) = frame["head"].as_u64()
                    && self.log.first_head.is_none()
                {
                    self.log.first_head = Some(head);
                    self.last_delivered = Some(head);
                }
                FrameEffect::Joined
            }
            Some("message") if frame["room"] == self.spec.room.as_str() => {
                let (Some(seq), Some(user), Some(id)) = (
                    frame["seq"].as_u64(),
                    frame["user"].as_str(),
                    frame["id"].as_str(),
                ) else {
                    self.count_error("malformed_message_frame");
                    return FrameEffect::None;
                };
                if self.log.deliveries.len() < DELIVERIES_KEPT_MAX {
                    self.log.deliveries.push(Delivery {
                        seq,
                        user: user.to_string(),
                        id: id.to_string(),
                        at_ms: self.clock.now_ms(),
                    });
                }
                self.last_delivered = Some(self.last_delivered.map_or(seq, |last| last.max(seq)));
                FrameEffect::None
            }
            Some("ack") => {
                let Some(position) = self.pending else {
                    return FrameEffect::None;
                };
                let post = &mut self.log.posts[position];
                if frame["id"] != post.id().as_str() || frame["room"] != self.spec.room.as_str() {
                    return FrameEffect::None;
                }
                let Some(seq) = frame["seq"].as_u64() else {
                    self.count_error("ack_without_seq");
                    return FrameEffect::None;
                };
                post.ack = Some(AckRecord {
                    seq,
                    at_ms: self.clock.now_ms(),
                    node: node.to_string(),
                });
                self.pending = None;
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
                self.next_post_at = Instant::now() + self.spec.post_interval;
                FrameEffect::Acked
            }
            Some("error") => self.handle_error(frame),
            _ => FrameEffect::None,
        }
    }

    fn handle_error(&mut self, frame: &Value) -> FrameEffect {
        let code = frame["code"].as_str().unwrap_or("unknown").to_string();
        self.count_error(&code);
        let reference = frame["ref"].as_str();
        if code == "history_gap" {
            if let Some(range) = parse_gap(frame["message"].as_str().unwrap_or_default()) {
                self.log.gap_notices.push(range);
            }
            return FrameEffect::None;
        }
        if code == "not_joined" {
            return FrameEffect::Rejoin;
        }
        if reference == Some(self.spec.room.as_str()) {
            // The join failed ("unavailable" while the room moves): join again shortly.
            return FrameEffect::Rejoin;
        }
        let pending_id = self.pending.map(|position| self.log.posts[position].id());
        if reference.is_some() && reference == pending_id.as_deref() {
            let delay = if code == "rate_limited" {
                RETRY_DELAY * 3
            } else {
                RETRY_DELAY
            };
            return FrameEffect::RetryPost(delay);
        }
        FrameEffect::None
    }

    fn count_error(&mut self, code: &str) {
        *self.log.errors.entry(code.to_string()).or_default() += 1;
    }
}

enum FrameEffect {
    None,
    Joined,
    Acked,
    RetryPost(Duration),
    Rejoin,
}

/// The range in a `history_gap` message: "messages 3..41 are older than ...".
fn parse_gap(message: &str) -> Option<(u64, u64)> {
    let range = message.split_whitespace().nth(1)?;
    let (from, to) = range.split_once("..")?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_gap;

    #[test]
    fn gap_ranges_are_read_from_the_message() {
        assert_eq!(
            parse_gap("messages 3..41 are older than the room keeps in memory; fetch them"),
            Some((3, 41))
        );
        assert_eq!(parse_gap("something else"), None);
    }
}
