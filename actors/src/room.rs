//! The chat room entity (`room`): membership per node, deduplicated posts, journaled messages
//! broadcast once per node, replay for members that rejoin.
//!
//! A post is journaled before anyone hears of it: `handle` decides (dedup by user and client
//! id, sequence number), the runtime appends the event, and only then `on_durable` broadcasts
//! the message and the poster gets its ack. Members are tracked per node, not per socket: the
//! broadcast goes once to each node that has members, and that node's pub/sub fans it out to
//! its sessions. Members of nodes that are down are dropped at the next broadcast.
//!
//! Rooms are public or private. A private room has an owner and members, journaled like its
//! messages; the room itself decides who may join, post and read its history (whatever route
//! the request took), and a member's removal travels in the room's own publications, in order
//! with its messages, so the removed user's sessions on every node stop at once.

mod access;
mod history;
pub mod lister;
pub mod presence;
mod request;
pub mod service;
pub mod user_rooms;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use runtime::{Context, Entity, Runtime};
use serde::{Deserialize, Serialize};

use crate::protocol::ServerFrame;

pub use self::access::{Access, RoomNotice, RoomPublication};
pub use self::request::{
    AddMember, Create, CreatePrivate, Entry, History, HistoryAs, Info, Join, JoinAs, Joined, Leave,
    Members, Page, Post, Posted, RemoveMember, Summary, Visibility,
};
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
    // Added with private rooms (appended: older peers decode the variants above unchanged).
    /// Creates a private room owned by `by`.
    CreatePrivate {
        name: String,
        by: String,
        now_ms: u64,
    },
    /// A join on behalf of `user` (a private room refuses the plain `Join`, which names none).
    JoinAs {
        node: String,
        session: String,
        since: Option<u64>,
        user: String,
    },
    /// A history page for `user` (a private room refuses the plain `History`).
    HistoryAs {
        after: u64,
        before: Option<u64>,
        limit: usize,
        user: String,
    },
    /// The owner `by` makes `user` a member of the private room.
    AddMember {
        by: String,
        user: String,
    },
    /// `by` (the owner, or the member themself) removes `user` from the private room.
    RemoveMember {
        by: String,
        user: String,
    },
    /// The room's description and whether `user` may see it (for the room list).
    Visibility {
        user: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RoomEvent {
    Created(RoomInfo),
    Posted(ChatMessage),
    // Added with private rooms: appended, so older journals decode unchanged.
    /// The room is private, owned by `owner` (journaled with `Created`, in the same record).
    MadePrivate {
        owner: String,
    },
    MemberAdded {
        user: String,
        by: String,
    },
    MemberRemoved {
        user: String,
        by: String,
    },
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
    /// The members of a private room after an addition or a removal (the owner first).
    Members {
        owner: String,
        members: Vec<String>,
    },
    Visibility {
        info: RoomInfo,
        private: bool,
        /// Whether the user asked about may join (always for a public room).
        allowed: bool,
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
    #[error("this room is private and you are not a member; ask its owner for an invitation")]
    NotAMember,
    #[error("only the room's owner may do this")]
    NotTheOwner,
    #[error("this room is public: it has no members to manage")]
    NotPrivate,
}

impl RoomError {
    /// The protocol's error code.
    pub fn code(&self) -> &'static str {
        match self {
            RoomError::NoSuchRoom => "no_such_room",
            RoomError::AlreadyExists => "room_exists",
            RoomError::Invalid(_) => "invalid",
            RoomError::NotAMember => "not_a_member",
            RoomError::NotTheOwner => "not_the_owner",
            RoomError::NotPrivate => "room_not_private",
        }
    }
}

/// Durable state: rebuilt from the journal, written into snapshots. Fields are only ever
/// appended (`access::deserialize_state` reads snapshots written before the last ones).
#[derive(Debug, Default, Serialize)]
pub struct RoomState {
    pub info: Option<RoomInfo>,
    /// Sequence number of the last message.
    pub head: u64,
    pub recent: VecDeque<ChatMessage>,
    dedup: HashMap<(String, String), u64>,
    dedup_order: VecDeque<(String, String)>,
    /// Owner and members of a private room; `None` for a public one.
    pub access: Option<Access>,
}

impl<'de> Deserialize<'de> for RoomState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        access::deserialize_state(deserializer)
    }
}

impl RoomState {
    /// Whether `user` may join, post and read: anyone in a public room, the members (owner
    /// included) of a private one. An empty user is nobody.
    pub fn allows(&self, user: &str) -> bool {
        match &self.access {
            None => true,
            Some(access) => !user.is_empty() && access.is_member(user),
        }
    }

    /// `Ok` when the room exists and `user` may use it.
    fn check(&self, user: &str) -> Result<(), RoomError> {
        if self.info.is_none() {
            return Err(RoomError::NoSuchRoom);
        }
        if !self.allows(user) {
            return Err(RoomError::NotAMember);
        }
        Ok(())
    }

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
    /// node id → session id → user of the sessions listening on that node (the user is empty
    /// for a join that named none, which only a public room accepts).
    members: BTreeMap<String, HashMap<String, String>>,
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
            RoomEvent::MadePrivate { owner } => state.access = Some(Access::new(owner.clone())),
            RoomEvent::MemberAdded { user, .. } => {
                if let Some(access) = &mut state.access {
                    access.members.insert(user.clone());
                }
            }
            RoomEvent::MemberRemoved { user, .. } => {
                if let Some(access) = &mut state.access {
                    access.members.remove(user);
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
                create(state, name, by, now_ms, false, context)
            }
            RoomCommand::CreatePrivate { name, by, now_ms } => {
                create(state, name, by, now_ms, true, context)
            }
            RoomCommand::Info => {
                let info = state.info.clone().ok_or(RoomError::NoSuchRoom)?;
                let members = self.members.values().map(HashMap::len).sum();
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
            } => self.join(state, node, session, since, String::new(), context),
            RoomCommand::JoinAs {
                node,
                session,
                since,
                user,
            } => self.join(state, node, session, since, user, context),
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
                state.check(&user)?;
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
            } => history(state, after, before, limit, "", context),
            RoomCommand::HistoryAs {
                after,
                before,
                limit,
                user,
            } => history(state, after, before, limit, &user, context),
            RoomCommand::AddMember { by, user } => {
                let access = owned_access(state, &by)?;
                if user.is_empty() || user.len() > 128 {
                    return Err(RoomError::Invalid("a user id has 1 to 128 bytes".into()));
                }
                if !access.is_member(&user) {
                    if access.members.len() >= MEMBERS_MAX {
                        return Err(RoomError::Invalid(format!(
                            "a private room has at most {MEMBERS_MAX} members"
                        )));
                    }
                    context.persist(RoomEvent::MemberAdded {
                        user: user.clone(),
                        by,
                    });
                }
                Ok(members_after(access, Some(&user), None))
            }
            RoomCommand::RemoveMember { by, user } => {
                if state.info.is_none() {
                    return Err(RoomError::NoSuchRoom);
                }
                let access = state.access.as_ref().ok_or(RoomError::NotPrivate)?;
                if by != access.owner && by != user {
                    return Err(if access.is_member(&by) {
                        RoomError::NotTheOwner
                    } else {
                        RoomError::NotAMember
                    });
                }
                if user == access.owner {
                    return Err(RoomError::Invalid(
                        "the owner cannot leave or be removed from their room".into(),
                    ));
                }
                if access.members.contains(&user) {
                    context.persist(RoomEvent::MemberRemoved {
                        user: user.clone(),
                        by,
                    });
                }
                Ok(members_after(access, None, Some(&user)))
            }
            RoomCommand::Visibility { user } => {
                let info = state.info.clone().ok_or(RoomError::NoSuchRoom)?;
                Ok(RoomReply::Visibility {
                    info,
                    private: state.access.is_some(),
                    allowed: state.allows(&user),
                })
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
        // Messages and removals go out in the order they were journaled: a removed member's
        // sessions hear of the removal before any message that follows it.
        let mut messages: Vec<RenderedMessage> = Vec::new();
        for (_, event) in events {
            match event {
                RoomEvent::Posted(message) => messages.push(RenderedMessage {
                    seq: message.seq,
                    frame: message.frame(room),
                }),
                RoomEvent::MemberRemoved { user, .. } => {
                    self.broadcast(runtime, room, std::mem::take(&mut messages));
                    self.announce_removal(runtime, room, user);
                }
                RoomEvent::Created(_)
                | RoomEvent::MadePrivate { .. }
                | RoomEvent::MemberAdded { .. } => {}
            }
        }
        self.broadcast(runtime, room, messages);
    }
}

impl Room {
    fn join(
        &mut self,
        state: &RoomState,
        node: String,
        session: String,
        since: Option<u64>,
        user: String,
        context: &mut Context<'_, Self>,
    ) -> Result<RoomReply, RoomError> {
        state.check(&user)?;
        self.members.entry(node).or_default().insert(session, user);
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

    /// Publishes `messages` to every node with members: one publication per append (a burst
    /// reaches each node, and each socket, at once), split where it would exceed a cluster
    /// message.
    fn broadcast(&self, runtime: &Runtime, room: &str, messages: Vec<RenderedMessage>) {
        if messages.is_empty() || self.members.is_empty() {
            return;
        }
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

    /// Tells the nodes where `user` listens that they were removed (on the room's topic, after
    /// the messages before the removal), and forgets their sessions.
    fn announce_removal(&mut self, runtime: &Runtime, room: &str, user: &str) {
        let nodes: Vec<String> = self
            .members
            .iter()
            .filter(|(_, sessions)| sessions.values().any(|listener| listener == user))
            .map(|(node, _)| node.clone())
            .collect();
        for sessions in self.members.values_mut() {
            sessions.retain(|_, listener| listener != user);
        }
        self.members.retain(|_, sessions| !sessions.is_empty());
        if nodes.is_empty() {
            return;
        }
        let notice = RoomNotice::Removed {
            room: room.to_string(),
            user: user.to_string(),
        };
        runtime.publish(
            nodes.iter().map(String::as_str),
            &topic(room),
            runtime::codec::encode(&notice),
        );
    }
}

/// Most members of a private room (the owner included).
pub const MEMBERS_MAX: usize = 1000;

fn create(
    state: &RoomState,
    name: String,
    by: String,
    now_ms: u64,
    private: bool,
    context: &mut Context<'_, Room>,
) -> Result<RoomReply, RoomError> {
    if state.info.is_some() {
        return Err(RoomError::AlreadyExists);
    }
    let name = validate_name(&name)?;
    let info = RoomInfo {
        id: context.key().to_string(),
        name,
        created_by: by.clone(),
        created_ms: now_ms,
    };
    context.persist(RoomEvent::Created(info.clone()));
    if private {
        // Same command, same journal record: a private room is never public for a moment.
        context.persist(RoomEvent::MadePrivate { owner: by });
    }
    Ok(RoomReply::Created(info))
}

fn history(
    state: &RoomState,
    after: u64,
    before: Option<u64>,
    limit: usize,
    user: &str,
    context: &mut Context<'_, Room>,
) -> Result<RoomReply, RoomError> {
    state.check(user)?;
    let (messages, complete) = state.page(
        after,
        before,
        limit.clamp(1, HISTORY_PAGE_MAX),
        page_bytes_max(context.runtime()),
    );
    Ok(RoomReply::History { messages, complete })
}

/// The access of a private room that `by` owns.
fn owned_access<'a>(state: &'a RoomState, by: &str) -> Result<&'a Access, RoomError> {
    if state.info.is_none() {
        return Err(RoomError::NoSuchRoom);
    }
    let access = state.access.as_ref().ok_or(RoomError::NotPrivate)?;
    if access.owner == by {
        Ok(access)
    } else if access.is_member(by) {
        Err(RoomError::NotTheOwner)
    } else {
        Err(RoomError::NotAMember)
    }
}

/// The members once `added` is in and `removed` out (the state does not hold the command's
/// own event yet when the reply is made).
fn members_after(access: &Access, added: Option<&str>, removed: Option<&str>) -> RoomReply {
    let mut members: BTreeSet<String> = access.members.clone();
    if let Some(user) = added {
        members.insert(user.to_string());
    }
    if let Some(user) = removed {
        members.remove(user);
    }
    RoomReply::Members {
        owner: access.owner.clone(),
        members: members.into_iter().collect(),
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

pub(crate) fn validate_name(name: &str) -> Result<String, RoomError> {
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

    fn private_room(owner: &str) -> RoomState {
        let mut state = RoomState::default();
        let info = RoomInfo {
            id: "secret-000001".into(),
            name: "Secret".into(),
            created_by: owner.into(),
            created_ms: 1,
        };
        Room::apply(&mut state, 1, &RoomEvent::Created(info));
        Room::apply(
            &mut state,
            2,
            &RoomEvent::MadePrivate {
                owner: owner.into(),
            },
        );
        state
    }

    #[test]
    fn a_private_room_lets_in_its_owner_and_members_only() {
        let mut state = private_room("ada");
        assert_eq!(state.check("ada"), Ok(()));
        assert_eq!(state.check("eve"), Err(RoomError::NotAMember));
        assert_eq!(
            state.check(""),
            Err(RoomError::NotAMember),
            "a join or history request that names no user (an older peer's) is refused"
        );
        Room::apply(
            &mut state,
            3,
            &RoomEvent::MemberAdded {
                user: "bob".into(),
                by: "ada".into(),
            },
        );
        assert_eq!(state.check("bob"), Ok(()));
        Room::apply(
            &mut state,
            4,
            &RoomEvent::MemberRemoved {
                user: "bob".into(),
                by: "ada".into(),
            },
        );
        assert_eq!(state.check("bob"), Err(RoomError::NotAMember));

        let mut public = RoomState::default();
        assert_eq!(public.check("ada"), Err(RoomError::NoSuchRoom));
        posted(&mut public, 1, 1);
        public.info = state.info.clone();
        assert_eq!(public.check(""), Ok(()), "a public room needs no user");
    }

    #[test]
    fn only_the_owner_manages_members() {
        let mut state = private_room("ada");
        Room::apply(
            &mut state,
            3,
            &RoomEvent::MemberAdded {
                user: "bob".into(),
                by: "ada".into(),
            },
        );
        assert!(owned_access(&state, "ada").is_ok());
        assert_eq!(
            owned_access(&state, "bob").map(drop),
            Err(RoomError::NotTheOwner)
        );
        assert_eq!(
            owned_access(&state, "eve").map(drop),
            Err(RoomError::NotAMember)
        );
        let public = RoomState {
            info: state.info.clone(),
            ..RoomState::default()
        };
        assert_eq!(
            owned_access(&public, "ada").map(drop),
            Err(RoomError::NotPrivate)
        );
        let access = state.access.as_ref().expect("private");
        assert_eq!(
            members_after(access, Some("cy"), Some("bob")),
            RoomReply::Members {
                owner: "ada".into(),
                members: vec!["cy".into()],
            }
        );
    }

    /// `RoomState` as the first release wrote it into snapshots.
    #[derive(Serialize)]
    struct FirstRoomState {
        info: Option<RoomInfo>,
        head: u64,
        recent: VecDeque<ChatMessage>,
        dedup: HashMap<(String, String), u64>,
        dedup_order: VecDeque<(String, String)>,
    }

    #[test]
    fn a_snapshot_from_before_private_rooms_loads_as_a_public_room() {
        let mut state = RoomState::default();
        posted(&mut state, 1, 10);
        let old = FirstRoomState {
            info: state.info.clone(),
            head: state.head,
            recent: state.recent.clone(),
            dedup: state.dedup.clone(),
            dedup_order: state.dedup_order.clone(),
        };
        let loaded: RoomState =
            runtime::codec::decode(&runtime::codec::encode(&old), "snapshot").expect("decodes");
        assert_eq!(loaded.head, 1);
        assert_eq!(loaded.recent.len(), 1);
        assert!(loaded.access.is_none());

        let mut private = private_room("ada");
        Room::apply(
            &mut private,
            3,
            &RoomEvent::MemberAdded {
                user: "bob".into(),
                by: "ada".into(),
            },
        );
        let loaded: RoomState =
            runtime::codec::decode(&runtime::codec::encode(&private), "snapshot").expect("decodes");
        assert_eq!(
            loaded.access, private.access,
            "a new snapshot keeps its members"
        );
    }

    #[test]
    fn old_journal_events_decode_unchanged() {
        // Variants were appended: the first two keep their indices.
        let event = RoomEvent::Posted(ChatMessage {
            seq: 1,
            id: "c".into(),
            user: "u".into(),
            name: "n".into(),
            text: "t".into(),
            ts: 2,
        });
        let bytes = runtime::codec::encode(&event);
        assert_eq!(bytes[1], 1, "Posted is still variant 1");
        let command = runtime::codec::encode(&RoomCommand::Info);
        assert_eq!(command[1], 4, "Info is still variant 4");
    }

    #[test]
    fn notices_and_broadcasts_are_told_apart() {
        let broadcast = RoomBroadcast {
            room: "r".into(),
            messages: vec![RenderedMessage {
                seq: 1,
                frame: "{}".into(),
            }],
        };
        let notice = RoomNotice::Removed {
            room: "r".into(),
            user: "bob".into(),
        };
        assert!(matches!(
            RoomPublication::decode(&runtime::codec::encode(&broadcast)),
            Some(RoomPublication::Messages(decoded)) if decoded.messages.len() == 1
        ));
        assert!(matches!(
            RoomPublication::decode(&runtime::codec::encode(&notice)),
            Some(RoomPublication::Notice(decoded)) if decoded == notice
        ));
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
