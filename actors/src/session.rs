//! The user session: one actor per WebSocket connection, on the node that holds the socket.
//!
//! It parses client frames, enforces the connection's limits (frame size, rate, pending
//! posts, rooms), keeps the joined rooms with the last sequence number delivered in each, and
//! writes rendered frames into the connection's [`FrameSink`], whose queue is bounded: a client
//! that lets it fill is disconnected with a reason and never makes the node's memory grow.
//!
//! Ordering and exactly-once delivery to the client: live messages arrive through pub/sub,
//! replays through `Join` replies; the session drops anything at or below the room's last
//! delivered sequence number, so a rejoin never duplicates and (with `since`) never skips.
//! Posts to one room are sent one at a time, so a sender's messages keep their order even
//! across retries on a new owner.
//!
//! Live messages take a fast path: the pub/sub callback checks the room's cursor and writes
//! to the sink itself, without a hop through the actor's mailbox (one lock, one write per
//! publication). The cursors live behind that lock, shared by the callback and the actor, and
//! every frame of a room is written while holding it, so a room's frames reach the socket in
//! sequence order whichever path sends them.
//!
//! Presence: once a room accepted the join, the session holds its user present in the room
//! (`room::presence`) until it leaves, is removed or ends, and writes the room's `presence`
//! frames (the whole state first, then the changes) while the room is joined.
//!
//! Hibernation (`hibernation.rs`): an idle session stops its actor and keeps its state on the
//! connection until a message needs the actor again; the fast paths above never need it.
//!
//! **Architecture Invariant:** the session never awaits a remote call in its handler; the
//! answers to its asks come back as messages (`EntityRef::ask_then`), so a slow room never
//! stalls the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::presence::{Presence, Tracked};
use runtime::pubsub::{Publication, Subscription};
use runtime::{Entity, Runtime, RuntimeError};

use crate::config::SessionsSection;
use crate::metrics as names;
use crate::protocol::{ClientFrame, ServerFrame, parse_client_frame};
use crate::room::{self, RenderedMessage, Room, RoomError, RoomNotice, RoomPublication};

mod hibernation;
mod room_map;

use hibernation::Mailbox;
pub use hibernation::{SessionEnded, SessionHandle, SessionStart, SpawnSession, Started};
use room_map::RoomMap;

/// Rooms one connection may have joined at once.
pub const ROOMS_PER_SESSION_MAX: usize = 100;
/// Posts waiting for their turn in one room of one connection.
pub const PENDING_POSTS_PER_ROOM_MAX: usize = 64;
/// Live messages held while a (re)join is in flight.
pub const JOIN_BUFFER_MAX: usize = 4096;

/// Close codes (RFC 6455 4000-4999 are ours).
pub const CLOSE_TOO_SLOW: u16 = 4008;
pub const CLOSE_IDLE: u16 = 4000;
/// The node is leaving the cluster or stopping: RFC 6455's "service restart", which tells a
/// client to reconnect (to another node) at once.
pub const CLOSE_SHUTDOWN: u16 = 1012;

/// The node-local pub/sub topic on which [`spawn_view_relay`] announces membership changes.
pub const VIEW_TOPIC: &str = "node:view";

/// Why the server closes a connection; the web layer sends it as the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// Why a [`FrameSink`] refused frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkError {
    /// The outbound queue is at its bound: the client does not read fast enough.
    Full,
    /// The connection is closed or closing.
    Closed,
}

/// Where a session's frames go: the connection's writer, owned by the web layer. Both calls
/// are cheap and never block (they may write to a non-blocking socket).
pub trait FrameSink: Send + Sync + 'static {
    /// Queues rendered text frames, in order, as one write when possible.
    fn send(&self, frames: &[&str]) -> Result<(), SinkError>;
    /// Sends a close frame with `reason` after what is being written; later sends fail.
    fn close(&self, reason: CloseReason);
}

/// The pub/sub topic of a user's personal notifications (job progress).
pub fn user_topic(user: &str) -> String {
    format!("user:{user}")
}

/// The payload of the [`VIEW_TOPIC`] publication that tells every session the node stops.
const NODE_STOPPING: &[u8] = b"stopping";

/// Tells every session of this node that the node stops: each closes its connection with
/// [`CLOSE_SHUTDOWN`], a hibernated one without starting its actor again.
pub fn announce_node_stopping(runtime: &Runtime) {
    runtime.pubsub().publish_local(&Arc::new(Publication::new(
        VIEW_TOPIC,
        NODE_STOPPING.to_vec(),
    )));
}

/// Announces every membership change of this node on [`VIEW_TOPIC`], so sessions learn of
/// new room owners without a watcher task each. Runs until the runtime's view ends.
pub fn spawn_view_relay(runtime: Runtime) -> tokio::task::JoinHandle<()> {
    let mut views = runtime.watch_view();
    tokio::spawn(async move {
        views.borrow_and_update();
        while views.changed().await.is_ok() {
            runtime
                .pubsub()
                .publish_local(&Arc::new(Publication::new(VIEW_TOPIC, Vec::new())));
        }
    })
}

pub struct SessionArgs {
    pub runtime: Runtime,
    /// Unique on this node, e.g. `n1-42`.
    pub session_id: String,
    pub user: String,
    pub name: String,
    pub limits: SessionsSection,
    /// The connection's writer; its queue is bounded by `limits.outbound_queue_max`.
    pub sink: Arc<dyn FrameSink>,
    /// The node's presence: who is in each room.
    pub presence: Presence,
}

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// A text frame from the client.
    ClientText(String),
    /// The client closed the connection, the socket failed or the server closed it.
    ClientGone,
    JoinDone {
        room: String,
        attempt: u64,
        result: Result<Result<room::Joined, RoomError>, RuntimeError>,
    },
    PostDone {
        room: String,
        id: String,
        result: Result<Result<room::Posted, RoomError>, RuntimeError>,
    },
    /// The next page of a join's replay (a replay larger than one answer comes in pages).
    ReplayPage {
        room: String,
        attempt: u64,
        result: Result<Result<room::Page, RoomError>, RuntimeError>,
    },
    /// Live messages skipped some: the cursor is already joining again (`attempt`).
    Gap {
        room: String,
        since: u64,
        attempt: u64,
    },
    ViewChanged,
    /// The room removed this session's user from its members (the cursor is gone already).
    Removed {
        room: String,
    },
    /// The node stops: close the connection.
    NodeStopping,
    /// Time to see whether the session has been idle for `sessions.hibernate_after_ms`
    /// (sent by the actor's own timer, not through its handle).
    HibernateCheck,
}

enum Phase {
    /// A join is in flight, or its replay is being fetched page by page up to `replay_to`
    /// (the room's head when it answered); live messages wait here.
    Joining {
        attempt: u64,
        buffered: Vec<RenderedMessage>,
        replay_to: Option<u64>,
    },
    Joined,
}

impl Phase {
    fn joining(attempt: u64, buffered: Vec<RenderedMessage>) -> Self {
        Phase::Joining {
            attempt,
            buffered,
            replay_to: None,
        }
    }
}

/// Where a room's delivery stands; shared with the pub/sub callback.
struct Cursor {
    last_seq: u64,
    phase: Phase,
}

/// The part of the session that pub/sub callbacks use directly.
struct Shared {
    sink: Arc<dyn FrameSink>,
    /// Where the session's own messages go; through its handle, so they reach it asleep too.
    mailbox: Mailbox,
    session_id: String,
    /// The session's user, whose removal from a private room ends its delivery there.
    user: String,
    queue_max: usize,
    rooms: Mutex<RoomMap<Cursor>>,
    next_attempt: AtomicU64,
}

impl Shared {
    fn rooms(&self) -> MutexGuard<'_, RoomMap<Cursor>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_attempt(&self) -> u64 {
        self.next_attempt.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes frames; a full queue means the client does not keep up: disconnect it.
    /// Returns false once the connection is closed.
    fn write(&self, frames: &[&str]) -> bool {
        if frames.is_empty() {
            return true;
        }
        match self.sink.send(frames) {
            Ok(()) => true,
            Err(SinkError::Full) => {
                metrics::counter!(names::SLOW_CLIENTS_TOTAL).increment(1);
                let reason = format!(
                    "outbound queue full ({} frames): the client does not read fast enough",
                    self.queue_max
                );
                tracing::info!(session = %self.session_id, code = CLOSE_TOO_SLOW, %reason, "closing connection");
                self.sink.close(CloseReason {
                    code: CLOSE_TOO_SLOW,
                    reason,
                });
                false
            }
            Err(SinkError::Closed) => false,
        }
    }

    /// The fast path of live room messages (runs in the publisher's task).
    fn deliver_room(&self, publication: &Publication) -> bool {
        let Some(decoded) = publication.decoded(RoomPublication::decode) else {
            return true;
        };
        let broadcast = match &*decoded {
            RoomPublication::Messages(broadcast) => broadcast,
            RoomPublication::Notice(RoomNotice::Removed { room, user }) => {
                return self.removed(room, user);
            }
        };
        let mut rooms = self.rooms();
        let Some(cursor) = rooms.get_mut(&broadcast.room) else {
            return true;
        };
        match &mut cursor.phase {
            Phase::Joining { buffered, .. } => {
                // Beyond the bound the next live message shows a gap, and the session rejoins.
                let held = buffered.len();
                buffered.extend(
                    broadcast
                        .messages
                        .iter()
                        .take(JOIN_BUFFER_MAX.saturating_sub(held))
                        .cloned(),
                );
                true
            }
            Phase::Joined => {
                let mut frames = Vec::with_capacity(broadcast.messages.len());
                let mut rest = broadcast.messages.iter();
                let mut gap = None;
                for message in rest.by_ref() {
                    if message.seq <= cursor.last_seq {
                        continue;
                    }
                    if message.seq > cursor.last_seq + 1 && cursor.last_seq > 0 {
                        // We missed some (a broadcast lost with a dying link): rejoin to replay.
                        gap = Some(message.clone());
                        break;
                    }
                    cursor.last_seq = message.seq;
                    frames.push(message.frame.as_str());
                }
                let open = self.write(&frames);
                if let Some(first) = gap {
                    let attempt = self.next_attempt();
                    let since = cursor.last_seq;
                    let mut buffered = vec![first];
                    buffered.extend(rest.cloned());
                    cursor.phase = Phase::joining(attempt, buffered);
                    let _ = self.mailbox.cast(SessionMsg::Gap {
                        room: broadcast.room.clone(),
                        since,
                        attempt,
                    });
                }
                open
            }
        }
    }
}

impl Shared {
    /// The room removed `user`: when it is ours, the room's delivery stops here and now (under
    /// the cursors' lock, so no later message of the room reaches the socket), the client is
    /// told, and the actor drops the subscription.
    fn removed(&self, room: &str, user: &str) -> bool {
        if user != self.user || self.rooms().remove(room).is_none() {
            return true;
        }
        metrics::counter!(names::FRAME_ERRORS_TOTAL, "code" => REMOVED_CODE).increment(1);
        let open = self.write(&[&ServerFrame::Error {
            code: REMOVED_CODE,
            message: "the owner removed you from this private room; you no longer receive its messages",
            reference: Some(room),
        }
        .to_json()]);
        let _ = self.mailbox.cast(SessionMsg::Removed {
            room: room.to_string(),
        });
        open
    }
}

/// The error code of the frame that tells a client it was removed from a room.
pub const REMOVED_CODE: &str = "removed_from_room";

/// What only the actor uses, per joined room.
struct JoinedRoom {
    /// The owner the room had when we joined; a change means rejoining.
    owner: Option<String>,
    posts: VecDeque<(String, String)>,
    post_in_flight: bool,
    _subscription: Subscription,
    /// The user present in the room, from the room's first accepted join on this connection.
    presence: Option<Tracked>,
}

pub struct SessionState {
    args: SessionArgs,
    shared: Arc<Shared>,
    rooms: RoomMap<JoinedRoom>,
    tokens: f64,
    tokens_at: std::time::Instant,
    _subscriptions: [Subscription; 2],
    _close_on_drop: CloseOnDrop,
    /// Idle this long, the session hibernates (`None`: never, it has no handle).
    hibernate_after: Option<std::time::Duration>,
    /// Messages this incarnation of the actor handled (its handle counts those it sent).
    handled: u64,
    /// When the actor last handled a message.
    last_activity: std::time::Instant,
    /// Whether a `HibernateCheck` is on its way.
    check_scheduled: bool,
}

/// Ends the connection when the session's state goes, a crash included.
struct CloseOnDrop(Arc<dyn FrameSink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(CloseReason {
            code: 1011,
            reason: "server error: the session ended; reconnect".into(),
        });
    }
}

pub struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = Option<Box<SessionState>>;
    type Arguments = SessionStart;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        start: SessionStart,
    ) -> Result<Option<Box<SessionState>>, ActorProcessingErr> {
        let mut state = match start {
            SessionStart::Alone(args) => SessionState::new(args, Mailbox::Actor(myself.clone())),
            SessionStart::Attached(args, handle) => {
                SessionState::new(args, Mailbox::Handle(handle))
            }
            SessionStart::Resume(state) => state,
        };
        state.handled = 0;
        state.last_activity = std::time::Instant::now();
        state.check_scheduled = false;
        state.schedule_check(&myself, state.hibernate_after);
        Ok(Some(state))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut Option<Box<SessionState>>,
    ) -> Result<(), ActorProcessingErr> {
        // No state: it hibernated, and lives on in the handle.
        if let Some(state) = state {
            state.end();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        slot: &mut Option<Box<SessionState>>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(state) = slot.as_mut() else {
            // Hibernated: only a timer set before can still arrive.
            return Ok(());
        };
        if matches!(message, SessionMsg::HibernateCheck) {
            state.check_scheduled = false;
            if state.hibernate_check(&myself) {
                let handle = match &state.shared.mailbox {
                    Mailbox::Handle(handle) => handle.upgrade(),
                    Mailbox::Actor(_) => None,
                };
                let handled = state.handled;
                if let Some(handle) = handle
                    && handle.hibernate(handled, slot)
                {
                    myself.stop(Some("hibernated".into()));
                    return Ok(());
                }
                // A message is on its way (or the connection is gone): look again later.
                if let Some(state) = slot.as_mut() {
                    let after = state.hibernate_after;
                    state.schedule_check(&myself, after);
                }
            }
            return Ok(());
        }
        state.handled += 1;
        state.last_activity = std::time::Instant::now();
        if !state.check_scheduled {
            let after = state.hibernate_after;
            state.schedule_check(&myself, after);
        }
        match message {
            SessionMsg::HibernateCheck => {}
            SessionMsg::ClientText(text) => state.client_text(&text),
            SessionMsg::ClientGone => {
                myself.stop(Some("client gone".into()));
            }
            SessionMsg::NodeStopping => {
                myself.stop(Some("node stopping".into()));
            }
            SessionMsg::JoinDone {
                room,
                attempt,
                result,
            } => state.join_done(&room, attempt, result),
            SessionMsg::PostDone { room, id, result } => state.post_done(&room, &id, result),
            SessionMsg::ReplayPage {
                room,
                attempt,
                result,
            } => state.replay_page(&room, attempt, result),
            SessionMsg::Gap {
                room,
                since,
                attempt,
            } => {
                metrics::counter!(names::ROOM_REJOINS_TOTAL).increment(1);
                state.send_join(room, Some(since), attempt);
            }
            SessionMsg::ViewChanged => state.view_changed(),
            SessionMsg::Removed { room } => state.removed(&room),
        }
        Ok(())
    }
}

impl SessionState {
    fn new(args: SessionArgs, mailbox: Mailbox) -> Box<SessionState> {
        let hibernate_after = match (&mailbox, args.limits.hibernate_after_ms) {
            (Mailbox::Actor(_), _) | (_, 0) => None,
            (Mailbox::Handle(_), ms) => Some(std::time::Duration::from_millis(ms)),
        };
        let shared = Arc::new(Shared {
            sink: args.sink.clone(),
            mailbox,
            session_id: args.session_id.clone(),
            user: args.user.clone(),
            queue_max: args.limits.outbound_queue_max,
            rooms: Mutex::new(RoomMap::default()),
            next_attempt: AtomicU64::new(0),
        });
        let pubsub = args.runtime.pubsub();
        let notifications = {
            let shared = shared.clone();
            // Personal notifications are rendered frames already.
            pubsub.subscribe(
                user_topic(&args.user),
                Arc::new(move |publication: &Arc<Publication>| {
                    match std::str::from_utf8(&publication.payload) {
                        Ok(frame) => shared.write(&[frame]),
                        Err(_) => {
                            tracing::warn!(topic = %publication.topic, "dropped a notification that is not UTF-8");
                            true
                        }
                    }
                }),
            )
        };
        let views = {
            let shared = shared.clone();
            pubsub.subscribe(
                VIEW_TOPIC,
                Arc::new(move |publication: &Arc<Publication>| {
                    let message = if publication.payload.as_slice() == NODE_STOPPING {
                        SessionMsg::NodeStopping
                    } else {
                        SessionMsg::ViewChanged
                    };
                    shared.mailbox.cast(message)
                }),
            )
        };
        metrics::gauge!(names::SESSIONS_ACTIVE).increment(1.0);
        let burst = f64::from(args.limits.messages_per_second) * 2.0;
        let close_on_drop = CloseOnDrop(args.sink.clone());
        Box::new(SessionState {
            args,
            shared,
            rooms: RoomMap::default(),
            tokens: burst,
            tokens_at: std::time::Instant::now(),
            _subscriptions: [notifications, views],
            _close_on_drop: close_on_drop,
            hibernate_after,
            handled: 0,
            last_activity: std::time::Instant::now(),
            check_scheduled: false,
        })
    }

    /// The session ends (its client went, the node stops, or it crashed): its rooms are told,
    /// and a connection still open is closed as the node's.
    fn end(&mut self) {
        let node = self.args.runtime.node_id().to_string();
        for room in self.rooms.keys() {
            let leave = room::Leave {
                node: node.clone(),
                session: self.args.session_id.clone(),
            };
            // Best effort: a room that misses it drops us when it next finds our node empty.
            let _ = self.args.runtime.entity::<Room>(room.clone()).tell(leave);
        }
        // Ended while the client is still there: the node is shutting down.
        self.shared.sink.close(CloseReason {
            code: CLOSE_SHUTDOWN,
            reason: "this node is leaving the cluster; reconnect to another node now".into(),
        });
        metrics::gauge!(names::SESSIONS_ACTIVE).decrement(1.0);
    }

    /// Sends the actor a `HibernateCheck` after `after` (nothing when `None`).
    fn schedule_check(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        after: Option<std::time::Duration>,
    ) {
        let Some(after) = after else {
            return;
        };
        self.check_scheduled = true;
        // The timer's task runs detached; it ends with the cast (refused once the actor stopped).
        drop(myself.send_after(after, || SessionMsg::HibernateCheck));
    }

    /// Whether the session may hibernate now: idle for `hibernate_after` and nothing in flight
    /// (no join or replay, no post queued or waiting for its answer). When idle but not
    /// quiescent, or not idle long enough, the next check is scheduled here.
    fn hibernate_check(&mut self, myself: &ActorRef<SessionMsg>) -> bool {
        let Some(after) = self.hibernate_after else {
            return false;
        };
        let idle = self.last_activity.elapsed();
        if idle < after {
            self.schedule_check(myself, Some(after - idle));
            return false;
        }
        let posting = self
            .rooms
            .values()
            .any(|entry| entry.post_in_flight || !entry.posts.is_empty());
        let joining = self
            .shared
            .rooms()
            .values()
            .any(|cursor| !matches!(cursor.phase, Phase::Joined));
        if posting || joining {
            self.schedule_check(myself, Some(after));
            return false;
        }
        true
    }

    /// Whether the owner of a joined room changed since it was joined (see `view_changed`).
    fn owners_changed(&self) -> bool {
        let view = self.args.runtime.view();
        self.rooms
            .iter()
            .any(|(room, entry)| view.owner(Room::KIND, room) != entry.owner.as_deref())
    }

    fn client_text(&mut self, text: &str) {
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
            ClientFrame::Ping => self.send(&ServerFrame::Pong.to_json()),
            ClientFrame::Join { room, since } => self.join(room, since),
            ClientFrame::Leave { room } => self.leave(&room),
            ClientFrame::Post { room, id, text } => self.post(room, id, text),
        }
    }

    fn take_token(&mut self) -> bool {
        let rate = f64::from(self.args.limits.messages_per_second);
        let now = std::time::Instant::now();
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
        let attempt = self.shared.next_attempt();
        {
            let mut cursors = self.shared.rooms();
            let cursor = cursors.get_or_insert_with(&room, || Cursor {
                last_seq: 0,
                phase: Phase::Joined,
            });
            // A client's own `since` wins: it knows what it has shown.
            if let Some(since) = since {
                cursor.last_seq = since;
            }
            cursor.phase = Phase::joining(attempt, Vec::new());
        }
        if !self.rooms.contains_key(&room) {
            let subscription = self.subscribe_room(&room);
            self.rooms.insert(
                room.clone(),
                JoinedRoom {
                    owner: None,
                    posts: VecDeque::new(),
                    post_in_flight: false,
                    _subscription: subscription,
                    presence: None,
                },
            );
        }
        self.send_join(room, since, attempt);
    }

    fn subscribe_room(&self, room: &str) -> Subscription {
        let shared = self.shared.clone();
        self.args.runtime.pubsub().subscribe(
            room::topic(room),
            Arc::new(move |publication: &Arc<Publication>| shared.deliver_room(publication)),
        )
    }

    fn send_join(&self, room: String, since: Option<u64>, attempt: u64) {
        let runtime = self.args.runtime.clone();
        let join = room::JoinAs {
            node: runtime.node_id().to_string(),
            session: self.args.session_id.clone(),
            since,
            user: self.args.user.clone(),
        };
        let shared = self.shared.clone();
        let entity = runtime.entity::<Room>(room.clone());
        entity.ask_then(join, move |result| {
            let _ = shared.mailbox.cast(SessionMsg::JoinDone {
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
        result: Result<Result<room::Joined, RoomError>, RuntimeError>,
    ) {
        let shared = self.shared.clone();
        let mut cursors = shared.rooms();
        let Some(cursor) = cursors.get_mut(room) else {
            return;
        };
        let Phase::Joining {
            attempt: expected,
            buffered,
            ..
        } = &mut cursor.phase
        else {
            return;
        };
        if *expected != attempt {
            return; // A newer join superseded this one.
        }
        let buffered = std::mem::take(buffered);
        let error = match result {
            Ok(Ok(room::Joined {
                head,
                missed,
                gap_before,
            })) => {
                let first_join = cursor.last_seq == 0 && missed.is_empty();
                let mut frames = vec![ServerFrame::Joined { room, head }.to_json()];
                if let Some(gap) = gap_before.filter(|gap| *gap > cursor.last_seq + 1) {
                    let message = format!(
                        "messages {}..{} are older than the room keeps in memory; fetch them from /api/rooms/{room}/messages",
                        cursor.last_seq + 1,
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
                if first_join && cursor.last_seq < head {
                    // A fresh member starts live from the head.
                    cursor.last_seq = head;
                }
                let replayed = !missed.is_empty();
                push_new_messages(&mut cursor.last_seq, room, missed, &mut frames);
                if replayed && cursor.last_seq < head {
                    // The answer held one page of the replay: fetch the rest before going live.
                    cursor.phase = Phase::Joining {
                        attempt,
                        buffered,
                        replay_to: Some(head),
                    };
                    shared.write(&as_strs(&frames));
                    let after = cursor.last_seq;
                    drop(cursors);
                    return self.request_replay_page(room, after, attempt);
                }
                go_live(cursor, buffered, &mut frames);
                // Written under the cursors' lock: live messages cannot overtake the replay.
                shared.write(&as_strs(&frames));
                drop(cursors);
                return self.now_joined(room);
            }
            Ok(Err(error)) => (error.code(), error.to_string()),
            Err(error) => (
                "unavailable",
                format!("cannot join now: {error}; try again"),
            ),
        };
        cursors.remove(room);
        drop(cursors);
        self.rooms.remove(room);
        self.error(error.0, &error.1, Some(room));
    }

    /// Asks the room for the replay's next page, after `after`.
    fn request_replay_page(&self, room: &str, after: u64, attempt: u64) {
        let page = room::HistoryAs {
            after,
            before: None,
            limit: room::HISTORY_PAGE_MAX,
            user: self.args.user.clone(),
        };
        let shared = self.shared.clone();
        let room = room.to_string();
        let entity = self.args.runtime.entity::<Room>(room.clone());
        entity.ask_then(page, move |result| {
            let _ = shared.mailbox.cast(SessionMsg::ReplayPage {
                room,
                attempt,
                result,
            });
        });
    }

    fn replay_page(
        &mut self,
        room: &str,
        attempt: u64,
        result: Result<Result<room::Page, RoomError>, RuntimeError>,
    ) {
        let shared = self.shared.clone();
        let mut cursors = shared.rooms();
        let Some(cursor) = cursors.get_mut(room) else {
            return;
        };
        let Phase::Joining {
            attempt: expected,
            buffered,
            replay_to: Some(replay_to),
        } = &mut cursor.phase
        else {
            return;
        };
        if *expected != attempt {
            return;
        }
        let replay_to = *replay_to;
        match result {
            Ok(Ok(room::Page {
                messages,
                complete: true,
            })) => {
                let before = cursor.last_seq;
                let mut frames = Vec::new();
                push_new_messages(&mut cursor.last_seq, room, messages, &mut frames);
                if cursor.last_seq < replay_to && cursor.last_seq > before {
                    shared.write(&as_strs(&frames));
                    let after = cursor.last_seq;
                    drop(cursors);
                    return self.request_replay_page(room, after, attempt);
                }
                let buffered = std::mem::take(buffered);
                go_live(cursor, buffered, &mut frames);
                shared.write(&as_strs(&frames));
                drop(cursors);
                self.now_joined(room);
            }
            other => {
                // The room's memory moved past us, or it could not answer: join again from
                // what was delivered (that join reports a gap if there is one).
                let why = match &other {
                    Ok(Ok(_)) => "the room no longer holds the next page".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                };
                tracing::debug!(room, why, "replay page not usable; joining again");
                let buffered = std::mem::take(buffered);
                let attempt = self.shared.next_attempt();
                let since = cursor.last_seq;
                cursor.phase = Phase::joining(attempt, buffered);
                drop(cursors);
                metrics::counter!(names::ROOM_REJOINS_TOTAL).increment(1);
                self.send_join(room.to_string(), Some(since), attempt);
            }
        }
    }

    /// The room is live for this connection: remember its owner, be present, send waiting
    /// posts.
    fn now_joined(&mut self, room: &str) {
        let owner = self
            .args
            .runtime
            .view()
            .owner(Room::KIND, room)
            .map(str::to_string);
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        entry.owner = owner;
        if entry.presence.is_none() {
            let shared = self.shared.clone();
            let room_id = room.to_string();
            entry.presence = Some(room::presence::track(
                &self.args.presence,
                room,
                &self.args.user,
                &self.args.name,
                move |frame| {
                    // Not after a removal: the cursors' lock orders this with the notice.
                    if !shared.rooms().contains_key(&room_id) {
                        return true;
                    }
                    shared.write(&[frame])
                },
            ));
        }
        if !entry.posts.is_empty() && !entry.post_in_flight {
            self.next_post(room);
        }
    }

    /// After a removal (see [`Shared::removed`]): the subscription goes, and the posts that
    /// waited are refused.
    fn removed(&mut self, room: &str) {
        let Some(entry) = self.rooms.remove(room) else {
            return;
        };
        // The one in flight gets the room's own answer.
        let waiting = entry.posts.iter().skip(usize::from(entry.post_in_flight));
        for (id, _) in waiting {
            self.error(
                RoomError::NotAMember.code(),
                &RoomError::NotAMember.to_string(),
                Some(id),
            );
        }
    }

    fn leave(&mut self, room: &str) {
        if self.rooms.remove(room).is_none() {
            return self.error("not_joined", "you have not joined this room", Some(room));
        }
        self.shared.rooms().remove(room);
        let leave = room::Leave {
            node: self.args.runtime.node_id().to_string(),
            session: self.args.session_id.clone(),
        };
        let _ = self
            .args
            .runtime
            .entity::<Room>(room.to_string())
            .tell(leave);
        self.send(&ServerFrame::Left { room }.to_json());
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
        if !entry.post_in_flight && self.joined(&room) {
            self.next_post(&room);
        }
    }

    fn joined(&self, room: &str) -> bool {
        self.shared
            .rooms()
            .get(room)
            .is_some_and(|cursor| matches!(cursor.phase, Phase::Joined))
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
        let post = room::Post {
            user: self.args.user.clone(),
            name: self.args.name.clone(),
            id: id.clone(),
            text,
            now_ms: runtime::clock::unix_ms(),
        };
        let shared = self.shared.clone();
        let room = room.to_string();
        let entity = runtime.entity::<Room>(room.clone());
        // The post's trace span (see runtime::trace) ends when its answer comes back.
        let span = tracing::debug_span!("ws.post", otel.kind = "server", room = %room);
        let in_flight = span.clone();
        span.in_scope(|| {
            entity.ask_then(post, move |result| {
                drop(in_flight);
                let _ = shared
                    .mailbox
                    .cast(SessionMsg::PostDone { room, id, result });
            });
        });
    }

    fn post_done(
        &mut self,
        room: &str,
        id: &str,
        result: Result<Result<room::Posted, RoomError>, RuntimeError>,
    ) {
        // A room left or removed meanwhile still gets its answer reported.
        let more = match self.rooms.get_mut(room) {
            Some(entry) => {
                entry.post_in_flight = false;
                if entry.posts.front().is_some_and(|(queued, _)| queued == id) {
                    entry.posts.pop_front();
                }
                !entry.posts.is_empty()
            }
            None => false,
        };
        match result {
            Ok(Ok(room::Posted { seq, .. })) => {
                self.send(&ServerFrame::Ack { room, id, seq }.to_json())
            }
            Ok(Err(error)) => self.error(error.code(), &error.to_string(), Some(id)),
            Err(error) => self.error(
                "post_failed",
                &format!("not stored: {error}; retry with the same id"),
                Some(id),
            ),
        }
        if more && self.joined(room) {
            self.next_post(room);
        }
    }

    /// Rejoins every room whose owner changed, from the last message delivered.
    fn view_changed(&mut self) {
        let view = self.args.runtime.view();
        let mut rejoin = Vec::new();
        {
            let mut cursors = self.shared.rooms();
            for (room, entry) in &self.rooms {
                let owner = view.owner(Room::KIND, room).map(str::to_string);
                if owner == entry.owner {
                    continue;
                }
                let Some(cursor) = cursors.get_mut(room) else {
                    continue;
                };
                if matches!(cursor.phase, Phase::Joined) {
                    let attempt = self.shared.next_attempt();
                    cursor.phase = Phase::joining(attempt, Vec::new());
                    rejoin.push((room.clone(), cursor.last_seq, attempt));
                }
            }
        }
        for (room, since, attempt) in rejoin {
            metrics::counter!(names::ROOM_REJOINS_TOTAL).increment(1);
            self.send_join(room, Some(since), attempt);
        }
    }

    fn error(&self, code: &str, message: &str, reference: Option<&str>) {
        metrics::counter!(names::FRAME_ERRORS_TOTAL, "code" => code.to_string()).increment(1);
        self.send(
            &ServerFrame::Error {
                code,
                message,
                reference,
            }
            .to_json(),
        );
    }

    /// Writes one frame that belongs to no room's sequence (acks, errors, pongs).
    fn send(&self, frame: &str) {
        self.shared.write(&[frame]);
    }
}

/// Appends the frames of `messages` newer than `last_seq` and advances it.
fn push_new_messages(
    last_seq: &mut u64,
    room: &str,
    messages: Vec<room::ChatMessage>,
    frames: &mut Vec<String>,
) {
    for message in messages {
        if message.seq > *last_seq {
            *last_seq = message.seq;
            frames.push(message.frame(room));
        }
    }
}

/// Ends a join: the live messages held meanwhile follow the replay, and the room goes live.
fn go_live(cursor: &mut Cursor, buffered: Vec<RenderedMessage>, frames: &mut Vec<String>) {
    for message in buffered {
        if message.seq > cursor.last_seq {
            cursor.last_seq = message.seq;
            frames.push(message.frame);
        }
    }
    cursor.phase = Phase::Joined;
}

fn as_strs(frames: &[String]) -> Vec<&str> {
    frames.iter().map(String::as_str).collect()
}
