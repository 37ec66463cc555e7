//! [`Rooms`]: the room flows as the web layer calls them: create a room and list it in the
//! directory, list the rooms, read a room's history (from its memory, else its journal). It
//! knows nothing of HTTP; the web layer maps [`RoomsError`] to status codes.
//!
//! Creating a room takes two entities: the room, then the directory. A node that dies between
//! the two must not leave a room that exists but is never listed, so the creation leaves a
//! marker first (`rooms/unlisted/<id>` in the shared object store) and removes it once the room
//! is listed; the room lister (`lister`) lists the rooms of markers left behind.
//!
//! A private room is never in the directory. Its owner's and members' `room.user` entities
//! (`user_rooms`) note it before the room makes them members, and forget it after the room
//! removed them, so they hold a superset of the truth whatever node dies when; the room list
//! asks each noted room whether the caller is a member, and the room alone decides.
//! Creations, public or private, are counted in the creator's `room.user` first (the quota).

use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use runtime::{Runtime, RuntimeError};

use super::user_rooms::{self, UserRooms, UserRoomsError};
use super::{
    AddMember, ChatMessage, Create, CreatePrivate, Entry, HistoryAs, Members, Page, RemoveMember,
    Room, RoomError, RoomInfo, Visibility, history as journal, validate_name,
};
use crate::config::RoomsSection;
use crate::directory::{self, DIRECTORY_KEY, RoomDirectory};

/// The folder of the markers of rooms created and not yet listed.
pub const UNLISTED_PREFIX: &str = "rooms/unlisted";

/// The marker of room `id`, created but maybe not listed yet.
pub fn unlisted_marker(id: &str) -> Path {
    Path::from(format!("{UNLISTED_PREFIX}/{id}"))
}

/// Why a room flow did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    /// The room refused (no such room, exists already, invalid name).
    #[error("{0}")]
    Room(#[from] RoomError),
    /// The directory holds its maximum of rooms.
    #[error("{0}")]
    DirectoryFull(String),
    /// The shared store failed (the creation's marker could not be written).
    #[error("cannot record the room: {0}")]
    Store(String),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The creator's quota is used up, or the invitee is in too many private rooms.
    #[error("{0}")]
    Limit(#[from] UserRoomsError),
}

/// Rooms whose membership one listing checks at once.
pub const LIST_ASKS_IN_FLIGHT_MAX: usize = 16;

/// A room as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedRoom {
    #[serde(flatten)]
    pub info: RoomInfo,
    pub private: bool,
}

pub type Result<T, E = RoomsError> = std::result::Result<T, E>;

/// The node's entry point to rooms. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Rooms {
    runtime: Runtime,
    settings: RoomsSection,
}

impl Rooms {
    pub fn new(runtime: Runtime, settings: RoomsSection) -> Self {
        Self { runtime, settings }
    }

    /// Creates a public room named `name` by user `by` and lists it; answers the room as
    /// listed.
    pub async fn create(&self, name: &str, by: &str) -> Result<RoomInfo> {
        Ok(self.create_room(name, by, false).await?.info)
    }

    /// Creates a room, public and listed or `private` to its creator (who may then invite),
    /// once the creator's quota allows it.
    pub async fn create_room(&self, name: &str, by: &str, private: bool) -> Result<ListedRoom> {
        // Refused before it counts against the quota.
        validate_name(name)?;
        let id = room_id(name);
        let creator = self.runtime.entity::<UserRooms>(by.to_string());
        let reserve = user_rooms::Reserve {
            room: id.clone(),
            quota: self.settings.created_per_user_max,
        };
        creator.ask(reserve).await??;
        if private {
            // Noted for the owner's list before the room exists (see the module's comment).
            creator.ask(user_rooms::Remember(id.clone())).await??;
            let create = CreatePrivate {
                name: name.to_string(),
                by: by.to_string(),
                now_ms: runtime::clock::unix_ms(),
            };
            let info = self.runtime.entity::<Room>(id).ask(create).await??;
            return Ok(ListedRoom {
                info,
                private: true,
            });
        }
        let store = self.runtime.object_store();
        let marker = unlisted_marker(&id);
        // The marker goes first: if this node dies after the room exists and before it is
        // listed, the lister finds the marker and lists the room.
        store
            .put(&marker, PutPayload::from(by.as_bytes().to_vec()))
            .await
            .map_err(|error| RoomsError::Store(error.to_string()))?;
        let create = Create {
            name: name.to_string(),
            by: by.to_string(),
            now_ms: runtime::clock::unix_ms(),
        };
        let info = match self.runtime.entity::<Room>(id.clone()).ask(create).await {
            Ok(Ok(info)) => info,
            Ok(Err(refused)) => {
                // Refused for good (an invalid name): there is nothing to list.
                delete_marker(&self.runtime, &id).await;
                return Err(refused.into());
            }
            // The create may have landed: the lister decides from the room itself.
            Err(error) => return Err(error.into()),
        };
        let pause_ms = self.settings.test_pause_before_listing_ms;
        if pause_ms > 0 {
            tracing::info!(room = %id, pause_ms, "room created; pausing before listing it (rooms.test_pause_before_listing_ms)");
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        list_room(&self.runtime, info.clone()).await?;
        delete_marker(&self.runtime, &id).await;
        Ok(ListedRoom {
            info,
            private: false,
        })
    }

    /// Every listed (public) room.
    pub async fn list(&self) -> Result<Vec<RoomInfo>> {
        self.runtime
            .entity::<RoomDirectory>(DIRECTORY_KEY)
            .ask(directory::List)
            .await?
            .map_err(|message| RuntimeError::Unavailable(message).into())
    }

    /// The rooms `user` may see, by id: the public ones and the private ones the user is a
    /// member of (each of those rooms is asked). A private room that cannot answer now is left
    /// out of this answer.
    pub async fn list_for(&self, user: &str) -> Result<Vec<ListedRoom>> {
        let mut rooms: Vec<ListedRoom> = self
            .list()
            .await?
            .into_iter()
            .map(|info| ListedRoom {
                info,
                private: false,
            })
            .collect();
        let noted = self
            .runtime
            .entity::<UserRooms>(user.to_string())
            .ask(user_rooms::List)
            .await??;
        let private: Vec<ListedRoom> = futures_util::stream::iter(noted)
            .map(|room| async move {
                let visibility = Visibility {
                    user: user.to_string(),
                };
                match self.runtime.entity::<Room>(room.clone()).ask(visibility).await {
                    Ok(Ok(Entry {
                        info,
                        private: true,
                        allowed: true,
                    })) => Some(ListedRoom {
                        info,
                        private: true,
                    }),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::warn!(%room, %error, "a private room did not answer; left out of the list");
                        None
                    }
                }
            })
            .buffer_unordered(LIST_ASKS_IN_FLIGHT_MAX)
            .filter_map(|listed| async move { listed })
            .collect()
            .await;
        rooms.extend(private);
        rooms.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Ok(rooms)
    }

    /// The owner `by` makes `user` a member of the private room `room`; answers the members.
    pub async fn add_member(&self, room: &str, by: &str, user: &str) -> Result<Members> {
        let entity = self.runtime.entity::<Room>(room.to_string());
        // Only the owner's invitations are noted in the invitee's list (the room decides
        // again below; this keeps others from filling someone's list).
        let Entry {
            info,
            private,
            allowed,
        } = entity
            .ask(Visibility {
                user: by.to_string(),
            })
            .await??;
        if !private {
            return Err(RoomError::NotPrivate.into());
        }
        if !allowed {
            return Err(RoomError::NotAMember.into());
        }
        if info.created_by != by {
            return Err(RoomError::NotTheOwner.into());
        }
        self.runtime
            .entity::<UserRooms>(user.to_string())
            .ask(user_rooms::Remember(room.to_string()))
            .await??;
        let add = AddMember {
            by: by.to_string(),
            user: user.to_string(),
        };
        Ok(entity.ask(add).await??)
    }

    /// `by` (the owner, or `user` themself) removes `user` from the private room `room`; their
    /// sessions everywhere stop receiving the room at once. Answers the members.
    pub async fn remove_member(&self, room: &str, by: &str, user: &str) -> Result<Members> {
        let remove = RemoveMember {
            by: by.to_string(),
            user: user.to_string(),
        };
        let members = self
            .runtime
            .entity::<Room>(room.to_string())
            .ask(remove)
            .await??;
        // After the room: a failure here leaves a stale note, which the list filters out.
        let forget = user_rooms::Forget(room.to_string());
        if let Err(error) = self
            .runtime
            .entity::<UserRooms>(user.to_string())
            .ask(forget)
            .await
        {
            tracing::warn!(%room, %error, "a removed member's room list keeps a stale entry");
        }
        Ok(members)
    }

    /// Messages of `room` with `after < seq < before`, oldest first, at most `limit`: from the
    /// room's memory when it still holds them, otherwise from its journal.
    /// The room checks that `user` may read it (a member, for a private room).
    pub async fn history(
        &self,
        room: &str,
        user: &str,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let page = HistoryAs {
            after,
            before,
            limit,
            user: user.to_string(),
        };
        let Page { messages, complete } = self
            .runtime
            .entity::<Room>(room.to_string())
            .ask(page)
            .await??;
        if complete {
            return Ok(messages);
        }
        Ok(journal::from_journal(&self.runtime, room, after, before, limit).await?)
    }
}

/// Lists `info` in the directory (idempotent).
pub(super) async fn list_room(runtime: &Runtime, info: RoomInfo) -> Result<()> {
    runtime
        .entity::<RoomDirectory>(DIRECTORY_KEY)
        .ask(directory::Add(info))
        .await?
        .map_err(RoomsError::DirectoryFull)
}

/// Removes a room's marker; a failure leaves it to the lister (listing again is harmless).
pub(super) async fn delete_marker(runtime: &Runtime, id: &str) {
    if let Err(error) = runtime.object_store().delete(&unlisted_marker(id)).await
        && !matches!(error, object_store::Error::NotFound { .. })
    {
        tracing::warn!(room = %id, %error, "cannot remove a room's marker; the lister retries");
    }
}

/// A readable, unique room id: the name's slug and random hex.
fn room_id(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug: String = slug.chars().take(32).collect();
    let suffix = format!("{:06x}", fastrand::u32(..1 << 24));
    if slug.is_empty() {
        suffix
    } else {
        format!("{slug}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_slugs_with_a_random_suffix() {
        let id = room_id("  Hello, World! ");
        assert!(id.starts_with("hello-world-"), "{id}");
        assert_eq!(id.len(), "hello-world-".len() + 6);
        assert_ne!(room_id("x"), room_id("x"));
        assert_eq!(room_id("!!!").len(), 6);
    }

    #[test]
    fn markers_live_in_their_own_folder() {
        assert_eq!(
            unlisted_marker("lobby-00ab12").as_ref(),
            "rooms/unlisted/lobby-00ab12"
        );
    }
}
