//! The chat room entity (`room`): membership per node, deduplicated posts, journaled messages
//! broadcast once per node, replay for members that rejoin.
//!
//! A post is journaled before anyone hears of it: `handle` decides (dedup by user and client
//! id, sequence number), the runtime appends the event, and only then `on_durable` broadcasts
//! the message and the poster gets its ack. Members are tracked per node, not per socket: the
//! broadcast goes once to each node that has members, and that node's pub/sub fans it out to
//! its sessions. Members of nodes that are down are dropped at the next broadcast.

mod history;
pub mod lister;
mod request;
pub mod service;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use runtime::{Context, Entity, Runtime};
use serde::{Deserialize, Serialize};

use crate::protocol::ServerFrame;

pub use self::request::{Create, History, Info, Join, Joined, Leave, Page, Post, Posted, Summary};
pub use self::service::{Rooms, RoomsError};

/// Messages kept in the room's state for replay to rejoining members; older ones are read
/// from the journal.
pub const RECENT_MESSAGES_MAX: usize = 1000;
/// (user, client id) pairs remembered to drop duplicate posts.
pub const DEDUP_WINDOW_MAX: usize = 10_000;
/// Longest room name, in characters.
pub const ROOM_NAME_CHARS_MAX: usize = 80;
/// Most messages returned by one history request.
pub const HISTORY_PAGE_MAX: usize = 200;
/// Most bytes of messages in one answer (a replay on join, a history page) or one publication
/// to a node: they cross the cluster when the member's node is not the room's, and must fit in
/// one cluster message whatever the messages hold. A longer replay goes out in pages, a larger
/// append in several publications, in order.
pub const PAGE_BYTES_MAX: usize = 256 * 1024;

/// An upper bound of a message's encoded size.
fn message_bytes(message: &ChatMessage) -> usize {
    const FIELDS_OVERHEAD_BYTES: usize = 48;
    message.id.len()
        + message.user.len()
        + message.name.len()
        + message.text.len()
        + FIELDS_OVERHEAD_BYTES
}

/// The pub/sub topic of a room's live messages.
pub fn topic(room: &str) -> String {
    format!("room:{room}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_ms: u64,
}

/// One chat message as stored and as sent (`seq` is per room, from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub seq: u64,
    /// The client's id for this post.
    pub id: String,
    /// The poster's user id.
    pub user: String,
    /// The poster's display name at posting time.
    pub name: String,
    pub text: String,
    pub ts: u64,
}

impl ChatMessage {
    /// The `message` frame, as JSON text.
    pub fn frame(&self, room: &str) -> String {
        ServerFrame::Message {
            room,
            seq: self.seq,
            id: &self.id,
            user: &self.user,
            name: &self.name,
            text: &self.text,
            ts: self.ts,
        }
        .to_json()
    }
}

/// What crosses the network to each node with members, for its sessions: the messages made
/// durable by one journal append, in sequence order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomBroadcast {
    pub room: String,
    pub messages: Vec<RenderedMessage>,
}

/// One message as every member receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderedMessage {
    pub seq: u64,
    /// The `message` frame, rendered once for every recipient.
    pub frame: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RoomCommand {
    Create {
        name: String,
        by: String,
        now_ms: u64,
    },
    Join {
        node: String,
        session: String,
        since: Option<u64>,
    },
    Leave {
        node: String,
        session: String,
    },
    Post {
        user: String,
        name: String,
        id: String,
        text: String,
        now_ms: u64,
    },
    Info,
    History {
        after: u64,
        before: Option<u64>,
        limit: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RoomEvent {
    Created(RoomInfo),
    Posted(ChatMessage),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomReply {
    Created(RoomInfo),
    Joined {
        head: u64,
        /// Messages after `since` still held in memory.
        missed: Vec<ChatMessage>,
        /// True when messages between `since` and `missed` are only in the journal.
        gap_before: Option<u64>,
    },
    Left,
    Posted {
        seq: u64,
        duplicate: bool,
    },
    Info {
        info: RoomInfo,
        head: u64,
        members: usize,
    },
    History {
        messages: Vec<ChatMessage>,
        complete: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RoomError {
    #[error("no such room")]
    NoSuchRoom,
    #[error("the room already exists")]
    AlreadyExists,
    #[error("invalid: {0}")]
    Invalid(String),
}

impl RoomError {
    /// The protocol's error code.
    pub fn code(&self) -> &'static str {
        match self {
            RoomError::NoSuchRoom => "no_such_room",
            RoomError::AlreadyExists => "room_exists",
            RoomError::Invalid(_) => "invalid",
        }
    }
}

/// Durable state: rebuilt from the journal, written into snapshots.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomState {
    pub info: Option<RoomInfo>,
    /// Sequence number of the last message.
    pub head: u64,
    pub recent: VecDeque<ChatMessage>,
    dedup: HashMap<(String, String), u64>,
    dedup_order: VecDeque<(String, String)>,
}

impl RoomState {
    fn remember(&mut self, message: &ChatMessage) {
        let key = (message.user.clone(), message.id.clone());
        if self.dedup.insert(key.clone(), message.seq).is_none() {
            self.dedup_order.push_back(key);
        }
        while self.dedup_order.len() > DEDUP_WINDOW_MAX {
            if let Some(old) = self.dedup_order.pop_front() {
                self.dedup.remove(&old);
            }
        }
    }

    /// Messages with `after < seq < before`, oldest first, up to `limit` messages and
    /// `bytes_max` bytes (at least one message), from memory; `complete` is false when some of
    /// them are older than what memory holds.
    fn page(
        &self,
        after: u64,
        before: Option<u64>,
        limit: usize,
        bytes_max: usize,
    ) -> (Vec<ChatMessage>, bool) {
        let oldest = self
            .recent
            .front()
            .map_or(self.head + 1, |message| message.seq);
        let complete = after.saturating_add(1) >= oldest;
        // `recent` holds consecutive seqs: start at `after + 1` without scanning.
        let skip =
            usize::try_from(after.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let mut bytes = 0;
        let messages = self
            .recent
            .iter()
            .skip(skip)
            .take_while(|message| before.is_none_or(|before| message.seq < before))
            .take(limit)
            .take_while(|message| {
                bytes += message_bytes(message);
                bytes <= bytes_max || bytes == message_bytes(message)
            })
            .cloned()
            .collect();
        (messages, complete)
    }
}

/// The running room: durable state is the runtime's; this holds who listens where.
pub struct Room {
    /// node id → session ids of members on that node.
    members: BTreeMap<String, HashSet<String>>,
}

impl Entity for Room {
    const KIND: &'static str = "room";
    type Command = RoomCommand;
    type Reply = Result<RoomReply, RoomError>;
    type Event = RoomEvent;
    type State = RoomState;
    type Deps = ();

    fn activate(_key: &str, _deps: &()) -> Self {
        Self {
            members: BTreeMap::new(),
        }
    }

    fn apply(state: &mut RoomState, _seq: u64, event: &RoomEvent) {
        match event {
            RoomEvent::Created(info) => state.info = Some(info.clone()),
            RoomEvent::Posted(message) => {
                state.head = message.seq;
                state.remember(message);
                state.recent.push_back(message.clone());
                while state.recent.len() > RECENT_MESSAGES_MAX {
                    state.recent.pop_front();
                }
            }
        }
    }

    fn handle(
        &mut self,
        state: &RoomState,
        command: RoomCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        match command {
            RoomCommand::Create { name, by, now_ms } => {
                if state.info.is_some() {
                    return Err(RoomError::AlreadyExists);
                }
                let name = validate_name(&name)?;
                let info = RoomInfo {
                    id: context.key().to_string(),
                    name,
                    created_by: by,
                    created_ms: now_ms,
                };
                context.persist(RoomEvent::Created(info.clone()));
                Ok(RoomReply::Created(info))
            }
            RoomCommand::Info => {
                let info = state.info.clone().ok_or(RoomError::NoSuchRoom)?;
                let members = self.members.values().map(HashSet::len).sum();
                Ok(RoomReply::Info {
                    info,
                    head: state.head,
                    members,
                })
            }
            RoomCommand::Join {
                node,
                session,
                since,
            } => {
                if state.info.is_none() {
                    return Err(RoomError::NoSuchRoom);
                }
                self.members.entry(node).or_default().insert(session);
                let (missed, gap_before) = match since {
                    None => (Vec::new(), None),
                    Some(since) => {
                        let bytes_max = page_bytes_max(context.runtime());
                        let (missed, complete) = state.page(since, None, usize::MAX, bytes_max);
                        let gap = (!complete)
                            .then(|| missed.first().map_or(state.head + 1, |message| message.seq));
                        (missed, gap)
                    }
                };
                Ok(RoomReply::Joined {
                    head: state.head,
                    missed,
                    gap_before,
                })
            }
            RoomCommand::Leave { node, session } => {
                if let Some(sessions) = self.members.get_mut(&node) {
                    sessions.remove(&session);
                    if sessions.is_empty() {
                        self.members.remove(&node);
                    }
                }
                Ok(RoomReply::Left)
            }
            RoomCommand::Post {
                user,
                name,
                id,
                text,
                now_ms,
            } => {
                if state.info.is_none() {
                    return Err(RoomError::NoSuchRoom);
                }
                if let Some(seq) = state.dedup.get(&(user.clone(), id.clone())) {
                    return Ok(RoomReply::Posted {
                        seq: *seq,
                        duplicate: true,
                    });
                }
                if id.is_empty() || id.len() > 128 {
                    return Err(RoomError::Invalid(
                        "a post needs a client id of 1 to 128 bytes".into(),
                    ));
                }
                // `state` already holds every earlier post, durable or not: the next number is ours.
                let seq = state.head + 1;
                context.persist(RoomEvent::Posted(ChatMessage {
                    seq,
                    id,
                    user,
                    name,
                    text,
                    ts: now_ms,
                }));
                Ok(RoomReply::Posted {
                    seq,
                    duplicate: false,
                })
            }
            RoomCommand::History {
                after,
                before,
                limit,
            } => {
                if state.info.is_none() {
                    return Err(RoomError::NoSuchRoom);
                }
                let (messages, complete) = state.page(
                    after,
                    before,
                    limit.clamp(1, HISTORY_PAGE_MAX),
                    page_bytes_max(context.runtime()),
                );
                Ok(RoomReply::History { messages, complete })
            }
        }
    }

    fn on_durable(
        &mut self,
        _state: &RoomState,
        events: &[(u64, RoomEvent)],
        context: &mut Context<'_, Self>,
    ) {
        let runtime = context.runtime();
        let view = runtime.view();
        // Members of nodes that are down cannot hear us; they rejoin when their node returns.
        self.members.retain(|node, _| view.is_up(node));
        let room = context.key();
        let messages: Vec<RenderedMessage> = events
            .iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Posted(message) => Some(RenderedMessage {
                    seq: message.seq,
                    frame: message.frame(room),
                }),
                RoomEvent::Created(_) => None,
            })
            .collect();
        if messages.is_empty() || self.members.is_empty() {
            return;
        }
        // One publication per append (a burst reaches each node, and each socket, at once),
        // split where it would exceed a cluster message.
        for messages in split_by_bytes(messages, page_bytes_max(runtime)) {
            let broadcast = RoomBroadcast {
                room: room.to_string(),
                messages,
            };
            runtime.publish(
                self.members.keys().map(String::as_str),
                &topic(room),
                runtime::codec::encode(&broadcast),
            );
        }
    }
}

/// The bytes of messages one answer or publication may hold: [`PAGE_BYTES_MAX`], or less when
/// the cluster's messages are smaller (half of one leaves room for the rest of the answer).
pub fn page_bytes_max(runtime: &Runtime) -> usize {
    PAGE_BYTES_MAX.min(runtime.config().cluster.message_bytes_max() / 2)
}

/// `messages` in order, in groups of at most `bytes_max` bytes of frames (a larger message
/// goes alone).
fn split_by_bytes(messages: Vec<RenderedMessage>, bytes_max: usize) -> Vec<Vec<RenderedMessage>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message.frame.len() + 16;
        if !group.is_empty() && bytes + size > bytes_max {
            groups.push(std::mem::take(&mut group));
            bytes = 0;
        }
        bytes += size;
        group.push(message);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

fn validate_name(name: &str) -> Result<String, RoomError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > ROOM_NAME_CHARS_MAX {
        return Err(RoomError::Invalid(format!(
            "a room name has 1 to {ROOM_NAME_CHARS_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(RoomError::Invalid(
            "a room name cannot contain control characters".into(),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(state: &mut RoomState, seq: u64, text_bytes: usize) {
        let message = ChatMessage {
            seq,
            id: format!("m{seq}"),
            user: "u".into(),
            name: "n".into(),
            text: "x".repeat(text_bytes),
            ts: seq,
        };
        Room::apply(state, seq + 1, &RoomEvent::Posted(message));
    }

    #[test]
    fn a_page_is_bounded_in_bytes_and_holds_at_least_one_message() {
        let mut state = RoomState::default();
        for seq in 1..=100 {
            posted(&mut state, seq, 1000);
        }
        let (page, complete) = state.page(0, None, usize::MAX, 10_000);
        assert!(complete);
        let seqs: Vec<u64> = page.iter().map(|message| message.seq).collect();
        assert_eq!(
            seqs,
            (1..=9).collect::<Vec<_>>(),
            "about 10 KB of 1 KB messages"
        );
        let (page, _) = state.page(50, Some(53), usize::MAX, 10_000);
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![51, 52]);
        let (page, _) = state.page(0, None, usize::MAX, 10);
        assert_eq!(
            page.len(),
            1,
            "a message larger than the bound still goes, alone"
        );
        let (page, _) = state.page(u64::MAX - 1, None, 5, 10_000);
        assert!(page.is_empty(), "no overflow on huge `after`");
    }

    #[test]
    fn publications_are_split_in_order_within_the_bound() {
        let messages: Vec<RenderedMessage> = (1..=50)
            .map(|seq| RenderedMessage {
                seq,
                frame: "y".repeat(1000),
            })
            .collect();
        let groups = split_by_bytes(messages, 4096);
        assert!(groups.iter().all(|group| group.len() <= 4));
        let seqs: Vec<u64> = groups.iter().flatten().map(|message| message.seq).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }
}
