//! The room's typed requests: each converts into one [`RoomCommand`] (the wire and journal
//! format, unchanged) and takes its answer out of the one [`RoomReply`] variant that command
//! gets, so an asker gets exactly what its request can have.

use runtime::Request;
use runtime::request::map_ok;

use super::{ChatMessage, Room, RoomCommand, RoomError, RoomInfo, RoomReply};

/// Creates the room (once: a second create is `AlreadyExists`).
#[derive(Debug, Clone)]
pub struct Create {
    pub name: String,
    pub by: String,
    pub now_ms: u64,
}

/// Makes a session of `node` a member; with `since`, also returns what it missed.
#[derive(Debug, Clone)]
pub struct Join {
    pub node: String,
    pub session: String,
    pub since: Option<u64>,
}

/// What a joining session gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub head: u64,
    /// Messages after `since` still held in memory.
    pub missed: Vec<ChatMessage>,
    /// Set when messages between `since` and `missed` are only in the journal: the first seq
    /// the room's memory holds.
    pub gap_before: Option<u64>,
}

/// Ends a session's membership.
#[derive(Debug, Clone)]
pub struct Leave {
    pub node: String,
    pub session: String,
}

/// Posts a message; `(user, id)` identifies it for deduplication.
#[derive(Debug, Clone)]
pub struct Post {
    pub user: String,
    pub name: String,
    pub id: String,
    pub text: String,
    pub now_ms: u64,
}

/// The sequence number a post got, and whether it had been posted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub seq: u64,
    pub duplicate: bool,
}

/// The room's description, last sequence number and member count.
#[derive(Debug, Clone, Copy)]
pub struct Info;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub info: RoomInfo,
    pub head: u64,
    pub members: usize,
}

/// Messages with `after < seq < before` from the room's memory, at most `limit`.
#[derive(Debug, Clone)]
pub struct History {
    pub after: u64,
    pub before: Option<u64>,
    pub limit: usize,
}

/// A page of history from memory; `complete` is false when older messages are only in the
/// journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<ChatMessage>,
    pub complete: bool,
}

type Answer = Result<RoomReply, RoomError>;

impl Request<Room> for Create {
    type Reply = Result<RoomInfo, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Create {
            name: self.name,
            by: self.by,
            now_ms: self.now_ms,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Created(info) => Some(info),
            _ => None,
        })
    }
}

impl Request<Room> for Join {
    type Reply = Result<Joined, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Join {
            node: self.node,
            session: self.session,
            since: self.since,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Joined {
                head,
                missed,
                gap_before,
            } => Some(Joined {
                head,
                missed,
                gap_before,
            }),
            _ => None,
        })
    }
}

impl Request<Room> for Leave {
    type Reply = Result<(), RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Leave {
            node: self.node,
            session: self.session,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Left => Some(()),
            _ => None,
        })
    }
}

impl Request<Room> for Post {
    type Reply = Result<Posted, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Post {
            user: self.user,
            name: self.name,
            id: self.id,
            text: self.text,
            now_ms: self.now_ms,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Posted { seq, duplicate } => Some(Posted { seq, duplicate }),
            _ => None,
        })
    }
}

impl Request<Room> for Info {
    type Reply = Result<Summary, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Info
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Info {
                info,
                head,
                members,
            } => Some(Summary {
                info,
                head,
                members,
            }),
            _ => None,
        })
    }
}

impl Request<Room> for History {
    type Reply = Result<Page, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::History {
            after: self.after,
            before: self.before,
            limit: self.limit,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::History { messages, complete } => Some(Page { messages, complete }),
            _ => None,
        })
    }
}

/// Creates a private room owned by `by` (once, like [`Create`]).
#[derive(Debug, Clone)]
pub struct CreatePrivate {
    pub name: String,
    pub by: String,
    pub now_ms: u64,
}

/// [`Join`] on behalf of `user`, whom the room checks.
#[derive(Debug, Clone)]
pub struct JoinAs {
    pub node: String,
    pub session: String,
    pub since: Option<u64>,
    pub user: String,
}

/// [`History`] on behalf of `user`, whom the room checks.
#[derive(Debug, Clone)]
pub struct HistoryAs {
    pub after: u64,
    pub before: Option<u64>,
    pub limit: usize,
    pub user: String,
}

/// The owner `by` makes `user` a member of the private room (again: no change).
#[derive(Debug, Clone)]
pub struct AddMember {
    pub by: String,
    pub user: String,
}

/// `by`, the owner or `user` themself, removes `user` (not a member: no change).
#[derive(Debug, Clone)]
pub struct RemoveMember {
    pub by: String,
    pub user: String,
}

/// A private room's members after a change; `members` excludes the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub owner: String,
    pub members: Vec<String>,
}

/// The room's description, and whether `user` may see and join it.
#[derive(Debug, Clone)]
pub struct Visibility {
    pub user: String,
}

/// A room as the room list shows it to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub info: RoomInfo,
    pub private: bool,
    pub allowed: bool,
}

impl Request<Room> for CreatePrivate {
    type Reply = Result<RoomInfo, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::CreatePrivate {
            name: self.name,
            by: self.by,
            now_ms: self.now_ms,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        <Create as Request<Room>>::from_reply(reply)
    }
}

impl Request<Room> for JoinAs {
    type Reply = Result<Joined, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::JoinAs {
            node: self.node,
            session: self.session,
            since: self.since,
            user: self.user,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        <Join as Request<Room>>::from_reply(reply)
    }
}

impl Request<Room> for HistoryAs {
    type Reply = Result<Page, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::HistoryAs {
            after: self.after,
            before: self.before,
            limit: self.limit,
            user: self.user,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        <History as Request<Room>>::from_reply(reply)
    }
}

fn members(reply: Answer) -> Option<Result<Members, RoomError>> {
    map_ok(reply, |reply| match reply {
        RoomReply::Members { owner, members } => Some(Members { owner, members }),
        _ => None,
    })
}

impl Request<Room> for AddMember {
    type Reply = Result<Members, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::AddMember {
            by: self.by,
            user: self.user,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        members(reply)
    }
}

impl Request<Room> for RemoveMember {
    type Reply = Result<Members, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::RemoveMember {
            by: self.by,
            user: self.user,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        members(reply)
    }
}

impl Request<Room> for Visibility {
    type Reply = Result<Entry, RoomError>;

    fn into_command(self) -> RoomCommand {
        RoomCommand::Visibility { user: self.user }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            RoomReply::Visibility {
                info,
                private,
                allowed,
            } => Some(Entry {
                info,
                private,
                allowed,
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_of_another_command_is_refused_and_errors_pass_through() {
        let posted = Ok(RoomReply::Posted {
            seq: 7,
            duplicate: false,
        });
        assert_eq!(
            <Post as Request<Room>>::from_reply(posted.clone()),
            Some(Ok(Posted {
                seq: 7,
                duplicate: false
            }))
        );
        assert_eq!(<Leave as Request<Room>>::from_reply(posted), None);
        assert_eq!(
            <Join as Request<Room>>::from_reply(Err(RoomError::NoSuchRoom)),
            Some(Err(RoomError::NoSuchRoom))
        );
    }

    #[test]
    fn requests_are_the_same_commands_on_the_wire() {
        // The journal and peers see only the command's bytes: a request must encode exactly as
        // the command variant it stands for.
        let request = Post {
            user: "u".into(),
            name: "n".into(),
            id: "c1".into(),
            text: "hello".into(),
            now_ms: 5,
        };
        let command = RoomCommand::Post {
            user: "u".into(),
            name: "n".into(),
            id: "c1".into(),
            text: "hello".into(),
            now_ms: 5,
        };
        assert_eq!(
            runtime::codec::encode(&request.into_command()),
            runtime::codec::encode(&command)
        );
    }
}
