//! The `room.user` entity, one per user: the rooms the user created (counted against
//! `rooms.created_per_user_max`) and the private rooms the user may belong to (for the room
//! list).
//!
//! The private rooms held here are a superset, never the authority: an entry is written
//! before the room makes the user a member (so a node that dies between the two leaves an
//! entry too many, never a membership the list misses), and removed after the room removes
//! them. The room list asks each room whether the user is a member (`Visibility`) and shows
//! only those that say yes, so a stale entry is harmless.

use std::collections::BTreeSet;

use runtime::{Context, Entity, Request};
use serde::{Deserialize, Serialize};

/// Private rooms one user may be listed in.
pub const PRIVATE_ROOMS_PER_USER_MAX: usize = 500;

pub struct UserRooms;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserRoomsCommand {
    /// Counts a creation of `room` against `quota` (the same room again counts once).
    Reserve { room: String, quota: usize },
    /// Notes that the user may be a member of the private room `room`.
    Remember { room: String },
    /// The user is no longer a member of `room`.
    Forget { room: String },
    /// The private rooms noted.
    List,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserRoomsEvent {
    Created { room: String },
    Remembered { room: String },
    Forgotten { room: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum UserRoomsError {
    #[error("you have created {quota} rooms, the most one user may (rooms.created_per_user_max)")]
    QuotaExceeded { quota: usize },
    #[error(
        "this user is already in {PRIVATE_ROOMS_PER_USER_MAX} private rooms, the most one user may"
    )]
    Full,
}

impl UserRoomsError {
    /// The protocol's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::QuotaExceeded { .. } => "room_quota_exceeded",
            Self::Full => "too_many_private_rooms",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserRoomsState {
    pub created: BTreeSet<String>,
    pub private: BTreeSet<String>,
}

impl Entity for UserRooms {
    const KIND: &'static str = "room.user";
    type Command = UserRoomsCommand;
    /// The private rooms noted (after the command).
    type Reply = Result<Vec<String>, UserRoomsError>;
    type Event = UserRoomsEvent;
    type State = UserRoomsState;
    type Deps = ();

    fn activate(_key: &str, _deps: &()) -> Self {
        Self
    }

    fn apply(state: &mut UserRoomsState, _seq: u64, event: &UserRoomsEvent) {
        match event {
            UserRoomsEvent::Created { room } => {
                state.created.insert(room.clone());
            }
            UserRoomsEvent::Remembered { room } => {
                state.private.insert(room.clone());
            }
            UserRoomsEvent::Forgotten { room } => {
                state.private.remove(room);
            }
        }
    }

    fn handle(
        &mut self,
        state: &UserRoomsState,
        command: UserRoomsCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        let (reply, event) = decide(state, command);
        if let Some(event) = event {
            context.persist(event);
        }
        reply
    }
}

fn decide(
    state: &UserRoomsState,
    command: UserRoomsCommand,
) -> (Result<Vec<String>, UserRoomsError>, Option<UserRoomsEvent>) {
    let listed = || state.private.iter().cloned().collect::<Vec<_>>();
    match command {
        UserRoomsCommand::Reserve { room, quota } => {
            if state.created.contains(&room) {
                (Ok(Vec::new()), None)
            } else if state.created.len() >= quota {
                (Err(UserRoomsError::QuotaExceeded { quota }), None)
            } else {
                (Ok(Vec::new()), Some(UserRoomsEvent::Created { room }))
            }
        }
        UserRoomsCommand::Remember { room } => {
            if state.private.contains(&room) {
                (Ok(listed()), None)
            } else if state.private.len() >= PRIVATE_ROOMS_PER_USER_MAX {
                (Err(UserRoomsError::Full), None)
            } else {
                (Ok(listed()), Some(UserRoomsEvent::Remembered { room }))
            }
        }
        UserRoomsCommand::Forget { room } => {
            let event = state
                .private
                .contains(&room)
                .then_some(UserRoomsEvent::Forgotten { room });
            (Ok(listed()), event)
        }
        UserRoomsCommand::List => (Ok(listed()), None),
    }
}

/// See [`UserRoomsCommand::Reserve`].
#[derive(Debug, Clone)]
pub struct Reserve {
    pub room: String,
    pub quota: usize,
}

/// See [`UserRoomsCommand::Remember`].
#[derive(Debug, Clone)]
pub struct Remember(pub String);

/// See [`UserRoomsCommand::Forget`].
#[derive(Debug, Clone)]
pub struct Forget(pub String);

/// See [`UserRoomsCommand::List`].
#[derive(Debug, Clone, Copy)]
pub struct List;

type Answer = Result<Vec<String>, UserRoomsError>;

impl Request<UserRooms> for Reserve {
    type Reply = Result<(), UserRoomsError>;

    fn into_command(self) -> UserRoomsCommand {
        UserRoomsCommand::Reserve {
            room: self.room,
            quota: self.quota,
        }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        Some(reply.map(drop))
    }
}

impl Request<UserRooms> for Remember {
    type Reply = Result<(), UserRoomsError>;

    fn into_command(self) -> UserRoomsCommand {
        UserRoomsCommand::Remember { room: self.0 }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        Some(reply.map(drop))
    }
}

impl Request<UserRooms> for Forget {
    type Reply = Result<(), UserRoomsError>;

    fn into_command(self) -> UserRoomsCommand {
        UserRoomsCommand::Forget { room: self.0 }
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        Some(reply.map(drop))
    }
}

impl Request<UserRooms> for List {
    type Reply = Answer;

    fn into_command(self) -> UserRoomsCommand {
        UserRoomsCommand::List
    }

    fn from_reply(reply: Answer) -> Option<Self::Reply> {
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut UserRoomsState, command: UserRoomsCommand) -> Answer {
        let (reply, event) = decide(state, command);
        if let Some(event) = event {
            UserRooms::apply(state, 0, &event);
        }
        reply
    }

    #[test]
    fn creations_count_once_each_up_to_the_quota() {
        let mut state = UserRoomsState::default();
        let reserve = |room: &str| UserRoomsCommand::Reserve {
            room: room.into(),
            quota: 2,
        };
        assert!(run(&mut state, reserve("a")).is_ok());
        assert!(run(&mut state, reserve("a")).is_ok(), "a retry counts once");
        assert!(run(&mut state, reserve("b")).is_ok());
        assert_eq!(
            run(&mut state, reserve("c")),
            Err(UserRoomsError::QuotaExceeded { quota: 2 })
        );
        assert_eq!(state.created.len(), 2);
    }

    #[test]
    fn private_rooms_are_remembered_and_forgotten() {
        let mut state = UserRoomsState::default();
        run(&mut state, UserRoomsCommand::Remember { room: "p".into() }).expect("noted");
        run(&mut state, UserRoomsCommand::Remember { room: "q".into() }).expect("noted");
        run(&mut state, UserRoomsCommand::Forget { room: "p".into() }).expect("forgotten");
        assert_eq!(
            run(&mut state, UserRoomsCommand::List),
            Ok(vec!["q".into()])
        );
    }
}
