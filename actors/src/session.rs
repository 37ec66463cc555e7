//! The user session: one actor per WebSocket connection, on the node that holds the socket.
//!
//! It parses client frames, enforces the connection's limits (frame size, rate, pending
//! posts, rooms), keeps the joined rooms with the last sequence number delivered in each, and
//! writes rendered frames into a bounded outbound queue that the web layer drains into the
//! socket. A client that lets that queue fill is disconnected with a reason: it never makes
//! the node's memory grow.
//!
//! Ordering and exactly-once delivery to the client: live messages arrive through pub/sub,
//! replays through `Join` replies; the session drops anything at or below the room's last
//! delivered sequence number, so a rejoin never duplicates and (with `since`) never skips.
//! Posts to one room are sent one at a time, so a sender's messages keep their order even
//! across retries on a new owner.
//!
//! **Architecture Invariant:** the session never awaits a remote call in its handler; asks run
//! in tasks that report back as messages, so a slow room never stalls the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::config::SessionsSection;
use runtime::pubsub::{Publication, Subscription};
use runtime::{Entity, Runtime, RuntimeError};
use tokio::sync::{mpsc, watch};

use crate::metrics as names;
use crate::protocol::{ClientFrame, ServerFrame, parse_client_frame};
use crate::room::{self, Room, RoomBroadcast, RoomCommand, RoomReply};

/// Rooms one connection may have joined at once.
pub const ROOMS_PER_SESSION_MAX: usize = 100;
/// Posts waiting for their turn in one room of one connection.
pub const PENDING_POSTS_PER_ROOM_MAX: usize = 64;
/// Live messages held while a (re)join is in flight.
pub const JOIN_BUFFER_MAX: usize = 4096;

/// Close codes (RFC 6455 4000-4999 are ours).
pub const CLOSE_TOO_SLOW: u16 = 4008;
pub const CLOSE_IDLE: u16 = 4000;
pub const CLOSE_SHUTDOWN: u16 = 1001;

/// Why the server closes a connection; the web layer sends it as the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// The pub/sub topic of a user's personal notifications (job progress).
pub fn user_topic(user: &str) -> String {
    format!("user:{user}")
}

pub struct SessionArgs {
    pub runtime: Runtime,
    /// Unique on this node, e.g. `n1-42`.
    pub session_id: String,
    pub user: String,
    pub name: String,
    pub limits: SessionsSection,
    /// Rendered frames for the socket; bounded by `limits.outbound_queue_max`.
    pub frames: mpsc::Sender<String>,
    /// Set once to close the connection with a reason.
    pub close: watch::Sender<Option<CloseReason>>,
}

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// A text frame from the client.
    ClientText(String),
    /// A ping or pong from the client: it is alive.
    ClientAlive,
    /// The client closed the connection or the socket failed.
    ClientGone,
    JoinDone {
        room: String,
        attempt: u64,
        result: Result<Result<RoomReply, room::RoomError>, RuntimeError>,
    },
    PostDone {
        room: String,
        id: String,
        result: Result<Result<RoomReply, room::RoomError>, RuntimeError>,
    },
    Published(Arc<Publication>),
    ViewChanged,
    IdleCheck,
}

enum Phase {
    /// A join is in flight; live messages wait here.
    Joining {
        attempt: u64,
        buffered: Vec<RoomBroadcast>,
    },
    Joined,
}

struct JoinedRoom {
    last_seq: u64,
    /// The owner the room had when we joined; a change means rejoining.
    owner: Option<String>,
    phase: Phase,
    posts: VecDeque<(String, String)>,
    post_in_flight: bool,
    _subscription: Subscription,
}

pub struct SessionState {
    args: SessionArgs,
    myself: ActorRef<SessionMsg>,
    rooms: HashMap<String, JoinedRoom>,
    next_attempt: u64,
    tokens: f64,
    tokens_at: Instant,
    last_activity: Instant,
    closing: bool,
    _user_subscription: Subscription,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let user_subscription = subscribe(&args.runtime, user_topic(&args.user), &myself);
        let mut views = args.runtime.watch_view();
        let view_target = myself.clone();
        let view_task = tokio::spawn(async move {
            views.borrow_and_update();
            while views.changed().await.is_ok() {
                if view_target.cast(SessionMsg::ViewChanged).is_err() {
                    break;
                }
            }
        });
        let idle_check =
            Duration::from_millis(args.limits.idle_timeout_ms / 4).max(Duration::from_millis(100));
        let idle_target = myself.clone();
        let idle_task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(idle_check);
            loop {
                interval.tick().await;
                if idle_target.cast(SessionMsg::IdleCheck).is_err() {
                    break;
                }
            }
        });
        metrics::gauge!(names::SESSIONS_ACTIVE).increment(1.0);
        let burst = f64::from(args.limits.messages_per_second) * 2.0;
        Ok(SessionState {
            args,
            myself,
            rooms: HashMap::new(),
            next_attempt: 0,
            tokens: burst,
            tokens_at: Instant::now(),
            last_activity: Instant::now(),
            closing: false,
            _user_subscription: user_subscription,
            tasks: vec![view_task, idle_task],
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        let node = state.args.runtime.node_id().to_string();
        for room in state.rooms.keys() {
            let leave = RoomCommand::Leave {
                node: node.clone(),
                session: state.args.session_id.clone(),
            };
            // Best effort: a room that misses it drops us when it next finds our node empty.
            let _ = state.args.runtime.entity::<Room>(room.clone()).tell(leave);
        }
        metrics::gauge!(names::SESSIONS_ACTIVE).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::ClientText(text) => state.client_text(&text),
            SessionMsg::ClientAlive => state.last_activity = Instant::now(),
            SessionMsg::ClientGone => {
                myself.stop(Some("client gone".into()));
            }
            SessionMsg::JoinDone {
                room,
                attempt,
                result,
            } => state.join_done(&room, attempt, result),
            SessionMsg::PostDone { room, id, result } => state.post_done(&room, &id, result),
            SessionMsg::Published(publication) => state.published(&publication),
            SessionMsg::ViewChanged => state.view_changed(),
            SessionMsg::IdleCheck => state.idle_check(),
        }
        if state.closing {
            myself.stop(Some("closed by the server".into()));
        }
        Ok(())
    }
}

fn subscribe(runtime: &Runtime, topic: String, myself: &ActorRef<SessionMsg>) -> Subscription {
    let target = myself.clone();
    runtime.pubsub().subscribe(
        topic,
        Arc::new(move |publication| {
            target
                .cast(SessionMsg::Published(publication.clone()))
                .is_ok()
        }),
    )
}

impl SessionState {
    fn client_text(&mut self, text: &str) {
        self.last_activity = Instant::now();
        metrics::counter!(names::FRAMES_IN_TOTAL).increment(1);
        if text.len() > self.args.limits.frame_bytes_max {
            let message = format!(
                "frame of {} bytes exceeds {}",
                text.len(),
                self.args.limits.frame_bytes_max
            );
            return self.error("too_large", &message, None);
        }
        if !self.take_token() {
            let message = format!(
                "more than {} frames per second",
                self.args.limits.messages_per_second
            );
            return self.error("rate_limited", &message, None);
        }
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => return self.error(error.code, &error.message, None),
        };
        match frame {
            ClientFrame::Ping => self.send(ServerFrame::Pong.to_json()),
            ClientFrame::Join { room, since } => self.join(room, since),
            ClientFrame::Leave { room } => self.leave(&room),
            ClientFrame::Post { room, id, text } => self.post(room, id, text),
        }
    }

    fn take_token(&mut self) -> bool {
        let rate = f64::from(self.args.limits.messages_per_second);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * rate).min(rate * 2.0);
        self.tokens_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn join(&mut self, room: String, since: Option<u64>) {
        if !self.rooms.contains_key(&room) && self.rooms.len() >= ROOMS_PER_SESSION_MAX {
            let message = format!("a connection may join at most {ROOMS_PER_SESSION_MAX} rooms");
            return self.error("too_many_rooms", &message, Some(&room));
        }
        if room.is_empty() || room.len() > 128 {
            return self.error("invalid_frame", "room ids have 1 to 128 bytes", Some(&room));
        }
        let attempt = self.next_attempt();
        let entry = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| JoinedRoom {
                last_seq: 0,
                owner: None,
                phase: Phase::Joined,
                posts: VecDeque::new(),
                post_in_flight: false,
                _subscription: subscribe(&self.args.runtime, room::topic(&room), &self.myself),
            });
        // A client's own `since` wins: it knows what it has shown.
        if let Some(since) = since {
            entry.last_seq = since;
        }
        entry.phase = Phase::Joining {
            attempt,
            buffered: Vec::new(),
        };
        self.send_join(room, since, attempt);
    }

    fn send_join(&self, room: String, since: Option<u64>, attempt: u64) {
        let runtime = self.args.runtime.clone();
        let command = RoomCommand::Join {
            node: runtime.node_id().to_string(),
            session: self.args.session_id.clone(),
            since,
        };
        let myself = self.myself.clone();
        tokio::spawn(async move {
            let result = runtime.entity::<Room>(room.clone()).ask(command).await;
            let _ = myself.cast(SessionMsg::JoinDone {
                room,
                attempt,
                result,
            });
        });
    }

    fn join_done(
        &mut self,
        room: &str,
        attempt: u64,
        result: Result<Result<RoomReply, room::RoomError>, RuntimeError>,
    ) {
        let owner = self
            .args
            .runtime
            .view()
            .owner(Room::KIND, room)
            .map(str::to_string);
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        let Phase::Joining {
            attempt: expected,
            buffered,
        } = &mut entry.phase
        else {
            return;
        };
        if *expected != attempt {
            return; // A newer join superseded this one.
        }
        let buffered = std::mem::take(buffered);
        match result {
            Ok(Ok(RoomReply::Joined {
                head,
                missed,
                gap_before,
            })) => {
                entry.phase = Phase::Joined;
                entry.owner = owner;
                let first_join = entry.last_seq == 0 && missed.is_empty();
                let mut frames = vec![ServerFrame::Joined { room, head }.to_json()];
                if let Some(gap) = gap_before.filter(|gap| *gap > entry.last_seq + 1) {
                    let message = format!(
                        "messages {}..{} are older than the room keeps in memory; fetch them from /api/rooms/{room}/messages",
                        entry.last_seq + 1,
                        gap - 1
                    );
                    frames.push(
                        ServerFrame::Error {
                            code: "history_gap",
                            message: &message,
                            reference: Some(room),
                        }
                        .to_json(),
                    );
                }
                if first_join && entry.last_seq < head && missed.is_empty() {
                    // A fresh member starts live from the head.
                    entry.last_seq = head;
                }
                for message in missed {
                    if message.seq > entry.last_seq {
                        entry.last_seq = message.seq;
                        frames.push(message.frame(room));
                    }
                }
                for broadcast in buffered {
                    if broadcast.seq > entry.last_seq {
                        entry.last_seq = broadcast.seq;
                        frames.push(broadcast.frame);
                    }
                }
                let start_posts = !entry.posts.is_empty() && !entry.post_in_flight;
                for frame in frames {
                    self.send(frame);
                }
                if start_posts {
                    self.next_post(room);
                }
            }
            Ok(Ok(other)) => {
                tracing::error!(room, ?other, "unexpected reply to join");
                self.rooms.remove(room);
                self.error("internal", "unexpected reply from the room", Some(room));
            }
            Ok(Err(error)) => {
                self.rooms.remove(room);
                self.error(error.code(), &error.to_string(), Some(room));
            }
            Err(error) => {
                self.rooms.remove(room);
                self.error(
                    "unavailable",
                    &format!("cannot join now: {error}; try again"),
                    Some(room),
                );
            }
        }
    }

    fn leave(&mut self, room: &str) {
        if self.rooms.remove(room).is_none() {
            return self.error("not_joined", "you have not joined this room", Some(room));
        }
        let leave = RoomCommand::Leave {
            node: self.args.runtime.node_id().to_string(),
            session: self.args.session_id.clone(),
        };
        let _ = self
            .args
            .runtime
            .entity::<Room>(room.to_string())
            .tell(leave);
        self.send(ServerFrame::Left { room }.to_json());
    }

    fn post(&mut self, room: String, id: String, text: String) {
        if text.len() > self.args.limits.text_bytes_max {
            let message = format!(
                "text of {} bytes exceeds {}",
                text.len(),
                self.args.limits.text_bytes_max
            );
            return self.error("too_large", &message, Some(&id));
        }
        if id.is_empty() || id.len() > 128 {
            return self.error(
                "invalid_frame",
                "a post needs an id of 1 to 128 bytes",
                Some(&id),
            );
        }
        let Some(entry) = self.rooms.get_mut(&room) else {
            return self.error(
                "not_joined",
                &format!("join room {room:?} before posting to it"),
                Some(&id),
            );
        };
        if entry.posts.len() >= PENDING_POSTS_PER_ROOM_MAX {
            let message =
                format!("{PENDING_POSTS_PER_ROOM_MAX} posts are already waiting in this room");
            return self.error("rate_limited", &message, Some(&id));
        }
        entry.posts.push_back((id, text));
        let ready = !entry.post_in_flight && matches!(entry.phase, Phase::Joined);
        if ready {
            self.next_post(&room);
        }
    }

    /// Sends the room's next queued post; one at a time keeps the sender's order.
    fn next_post(&mut self, room: &str) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        let Some((id, text)) = entry.posts.front().cloned() else {
            return;
        };
        entry.post_in_flight = true;
        let runtime = self.args.runtime.clone();
        let command = RoomCommand::Post {
            user: self.args.user.clone(),
            name: self.args.name.clone(),
            id: id.clone(),
            text,
            now_ms: runtime::membership::unix_ms(),
        };
        let myself = self.myself.clone();
        let room = room.to_string();
        tokio::spawn(async move {
            let result = runtime.entity::<Room>(room.clone()).ask(command).await;
            let _ = myself.cast(SessionMsg::PostDone { room, id, result });
        });
    }

    fn post_done(
        &mut self,
        room: &str,
        id: &str,
        result: Result<Result<RoomReply, room::RoomError>, RuntimeError>,
    ) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        entry.post_in_flight = false;
        if entry.posts.front().is_some_and(|(queued, _)| queued == id) {
            entry.posts.pop_front();
        }
        match result {
            Ok(Ok(RoomReply::Posted { seq, .. })) => {
                self.send(ServerFrame::Ack { room, id, seq }.to_json())
            }
            Ok(Ok(other)) => {
                tracing::error!(room, ?other, "unexpected reply to post");
                self.error("internal", "unexpected reply from the room", Some(id));
            }
            Ok(Err(error)) => self.error(error.code(), &error.to_string(), Some(id)),
            Err(error) => self.error(
                "post_failed",
                &format!("not stored: {error}; retry with the same id"),
                Some(id),
            ),
        }
        let more = self
            .rooms
            .get(room)
            .is_some_and(|entry| !entry.posts.is_empty() && matches!(entry.phase, Phase::Joined));
        if more {
            self.next_post(room);
        }
    }

    fn published(&mut self, publication: &Publication) {
        if !publication.topic.starts_with("room:") {
            // A personal notification: already a rendered frame.
            match String::from_utf8(publication.payload.clone()) {
                Ok(frame) => self.send(frame),
                Err(_) => {
                    tracing::warn!(topic = %publication.topic, "dropped a notification that is not UTF-8")
                }
            }
            return;
        }
        let broadcast: RoomBroadcast =
            match runtime::codec::decode(&publication.payload, "room broadcast") {
                Ok(broadcast) => broadcast,
                Err(error) => {
                    return tracing::warn!(%error, "dropped an undecodable room broadcast");
                }
            };
        let Some(entry) = self.rooms.get_mut(&broadcast.room) else {
            return;
        };
        match &mut entry.phase {
            Phase::Joining { buffered, .. } => {
                if buffered.len() < JOIN_BUFFER_MAX {
                    buffered.push(broadcast);
                }
            }
            Phase::Joined => {
                if broadcast.seq > entry.last_seq {
                    if broadcast.seq > entry.last_seq + 1 && entry.last_seq > 0 {
                        // We missed some (a broadcast lost with a dying link): rejoin to replay.
                        let since = entry.last_seq;
                        let room = broadcast.room.clone();
                        let attempt = self.next_attempt();
                        if let Some(entry) = self.rooms.get_mut(&room) {
                            entry.phase = Phase::Joining {
                                attempt,
                                buffered: vec![broadcast],
                            };
                        }
                        self.send_join(room, Some(since), attempt);
                        return;
                    }
                    entry.last_seq = broadcast.seq;
                    let frame = broadcast.frame;
                    self.send(frame);
                }
            }
        }
    }

    /// Rejoins every room whose owner changed, from the last message delivered.
    fn view_changed(&mut self) {
        let view = self.args.runtime.view();
        let mut rejoin = Vec::new();
        for (room, entry) in &self.rooms {
            let owner = view.owner(Room::KIND, room).map(str::to_string);
            if matches!(entry.phase, Phase::Joined) && owner != entry.owner {
                rejoin.push((room.clone(), entry.last_seq));
            }
        }
        for (room, since) in rejoin {
            let attempt = self.next_attempt();
            if let Some(entry) = self.rooms.get_mut(&room) {
                entry.phase = Phase::Joining {
                    attempt,
                    buffered: Vec::new(),
                };
            }
            metrics::counter!(names::ROOM_REJOINS_TOTAL).increment(1);
            self.send_join(room, Some(since), attempt);
        }
    }

    fn idle_check(&mut self) {
        let idle = Duration::from_millis(self.args.limits.idle_timeout_ms);
        if self.last_activity.elapsed() > idle {
            self.close(CLOSE_IDLE, format!("no frame for {} s", idle.as_secs()));
        }
    }

    fn next_attempt(&mut self) -> u64 {
        self.next_attempt += 1;
        self.next_attempt
    }

    fn error(&mut self, code: &str, message: &str, reference: Option<&str>) {
        metrics::counter!(names::FRAME_ERRORS_TOTAL, "code" => code.to_string()).increment(1);
        self.send(
            ServerFrame::Error {
                code,
                message,
                reference,
            }
            .to_json(),
        );
    }

    /// Queues a frame; a full queue means the client does not keep up: disconnect it.
    fn send(&mut self, frame: String) {
        if self.closing {
            return;
        }
        match self.args.frames.try_send(frame) {
            Ok(()) => metrics::counter!(names::FRAMES_OUT_TOTAL).increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(names::SLOW_CLIENTS_TOTAL).increment(1);
                let reason = format!(
                    "outbound queue full ({} frames): the client does not read fast enough",
                    self.args.limits.outbound_queue_max
                );
                self.close(CLOSE_TOO_SLOW, reason);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.closing = true,
        }
    }

    fn close(&mut self, code: u16, reason: String) {
        tracing::info!(session = %self.args.session_id, user = %self.args.user, code, %reason, "closing connection");
        let _ = self.args.close.send(Some(CloseReason { code, reason }));
        self.closing = true;
    }
}
