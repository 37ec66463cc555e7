//! [`Rooms`]: the room flows as the web layer calls them: create a room and list it in the
//! directory, list the rooms, read a room's history (from its memory, else its journal). It
//! knows nothing of HTTP; the web layer maps [`RoomsError`] to status codes.
//!
//! Creating a room takes two entities: the room, then the directory. A node that dies between
//! the two must not leave a room that exists but is never listed, so the creation leaves a
//! marker first (`rooms/unlisted/<id>` in the shared object store) and removes it once the room
//! is listed; the room lister (`lister`) lists the rooms of markers left behind.

use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use runtime::{Runtime, RuntimeError};

use super::{ChatMessage, Create, History, Page, Room, RoomError, RoomInfo, history as journal};
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

    /// Creates a room named `name` by user `by` and lists it; answers the room as listed.
    pub async fn create(&self, name: &str, by: &str) -> Result<RoomInfo> {
        let id = room_id(name);
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
        Ok(info)
    }

    /// Every listed room.
    pub async fn list(&self) -> Result<Vec<RoomInfo>> {
        self.runtime
            .entity::<RoomDirectory>(DIRECTORY_KEY)
            .ask(directory::List)
            .await?
            .map_err(|message| RuntimeError::Unavailable(message).into())
    }

    /// Messages of `room` with `after < seq < before`, oldest first, at most `limit`: from the
    /// room's memory when it still holds them, otherwise from its journal.
    pub async fn history(
        &self,
        room: &str,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let page = History {
            after,
            before,
            limit,
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
