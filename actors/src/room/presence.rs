//! Who is online in a room: the runtime's presence (`runtime::presence`) keyed by user id on
//! the room's topic, held by each session that joined the room, and rendered as the
//! protocol's `presence` frames.
//!
//! A session tracks its user in a room once the room accepted its join (a private room's
//! presence never shows a non-member), and lets go when it leaves, is removed or ends; a user
//! with several connections, on one node or several, counts once.

use runtime::presence::{Presence, PresenceUpdate, Tracked};

use crate::protocol::{PresentUser, ServerFrame};

/// The presence topic of a room.
pub fn presence_topic(room: &str) -> String {
    super::topic(room)
}

/// The `presence` frame of `update` in `room`, as JSON text.
pub fn frame(room: &str, update: &PresenceUpdate) -> String {
    ServerFrame::Presence {
        room,
        joins: present(&update.joins),
        leaves: present(&update.leaves),
        count: update.count,
    }
    .to_json()
}

fn present(entries: &[runtime::presence::Entry]) -> Vec<PresentUser<'_>> {
    entries
        .iter()
        .map(|entry| PresentUser {
            user: &entry.key,
            name: &entry.meta,
        })
        .collect()
}

/// Holds `user` (shown as `name`) present in `room` until the guard is dropped; `deliver`
/// gets the room's `presence` frames (the whole state first), rendered once per node, and
/// returns false once its connection is closed.
pub fn track(
    presence: &Presence,
    room: &str,
    user: &str,
    name: &str,
    deliver: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> Tracked {
    let room_id = room.to_string();
    presence.track(
        &presence_topic(room),
        user,
        name,
        std::sync::Arc::new(move |update: &std::sync::Arc<PresenceUpdate>| {
            deliver(update.rendered(|update| frame(&room_id, update)))
        }),
    )
}

#[cfg(test)]
mod tests {
    use runtime::presence::{Diff, Entry, PresenceUpdate};

    #[test]
    fn a_presence_frame_names_users_and_the_exact_count() {
        let update = PresenceUpdate::new(
            "room:r1",
            Diff {
                joins: vec![Entry {
                    key: "u1".into(),
                    meta: "Ada \"A\"".into(),
                }],
                leaves: vec![Entry {
                    key: "u2".into(),
                    meta: "Bob".into(),
                }],
                count: 250,
            },
        );
        let frame: serde_json::Value =
            serde_json::from_str(&super::frame("r1", &update)).expect("JSON");
        assert_eq!(
            frame,
            serde_json::json!({
                "type": "presence",
                "room": "r1",
                "joins": [{"user": "u1", "name": "Ada \"A\""}],
                "leaves": [{"user": "u2", "name": "Bob"}],
                "count": 250,
            })
        );
    }
}
