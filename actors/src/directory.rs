//! The room directory (`room-directory`, one entity keyed `all`): which rooms exist, for the
//! room list. A room is created in its own entity first, then listed here.

use std::collections::BTreeMap;

use runtime::{Context, Entity, Request};
use serde::{Deserialize, Serialize};

use crate::room::RoomInfo;

/// The directory's only key.
pub const DIRECTORY_KEY: &str = "all";
/// Rooms listed at most; creating more is refused.
pub const ROOMS_MAX: usize = 10_000;

pub struct RoomDirectory;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DirectoryCommand {
    Add(RoomInfo),
    List,
}

/// Lists a room (idempotent: a room listed already stays as it is). Refused with the reason
/// when the directory is full.
#[derive(Debug, Clone)]
pub struct Add(pub RoomInfo);

/// Every listed room, by id.
#[derive(Debug, Clone, Copy)]
pub struct List;

impl Request<RoomDirectory> for Add {
    type Reply = Result<(), String>;

    fn into_command(self) -> DirectoryCommand {
        DirectoryCommand::Add(self.0)
    }

    fn from_reply(reply: Result<Vec<RoomInfo>, String>) -> Option<Self::Reply> {
        Some(reply.map(drop))
    }
}

impl Request<RoomDirectory> for List {
    type Reply = Result<Vec<RoomInfo>, String>;

    fn into_command(self) -> DirectoryCommand {
        DirectoryCommand::List
    }

    fn from_reply(reply: Self::Reply) -> Option<Self::Reply> {
        Some(reply)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DirectoryState {
    pub rooms: BTreeMap<String, RoomInfo>,
}

impl Entity for RoomDirectory {
    const KIND: &'static str = "room-directory";
    type Command = DirectoryCommand;
    type Reply = Result<Vec<RoomInfo>, String>;
    type Event = RoomInfo;
    type State = DirectoryState;
    type Deps = ();

    fn activate(_key: &str, _deps: &()) -> Self {
        Self
    }

    fn apply(state: &mut DirectoryState, _seq: u64, room: &RoomInfo) {
        state.rooms.insert(room.id.clone(), room.clone());
    }

    fn handle(
        &mut self,
        state: &DirectoryState,
        command: DirectoryCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        match command {
            DirectoryCommand::Add(room) => {
                if state.rooms.contains_key(&room.id) {
                    return Ok(vec![room]);
                }
                if state.rooms.len() >= ROOMS_MAX {
                    return Err(format!("the directory is full ({ROOMS_MAX} rooms)"));
                }
                context.persist(room.clone());
                Ok(vec![room])
            }
            DirectoryCommand::List => Ok(state.rooms.values().cloned().collect()),
        }
    }
}
