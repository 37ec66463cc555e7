//! Who may use a private room ([`Access`]), the notice a removal publishes on the room's
//! topic ([`RoomNotice`]), how a session tells it from a broadcast ([`RoomPublication`]), and
//! how snapshots written before private rooms existed still load (`deserialize_state`).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{RoomBroadcast, RoomState};

/// The owner and members of a private room. The owner is always a member and is not held in
/// `members`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub owner: String,
    pub members: BTreeSet<String>,
}

impl Access {
    pub fn new(owner: String) -> Self {
        Self {
            owner,
            members: BTreeSet::new(),
        }
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.owner == user || self.members.contains(user)
    }
}

/// What a room publishes on its topic besides messages. A separate type, not a field of
/// [`RoomBroadcast`]: nodes of an older build keep decoding broadcasts, and drop the notices
/// they cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomNotice {
    /// `user` is no longer a member: their sessions stop listening to the room.
    Removed { room: String, user: String },
}

/// A publication on a room's topic, decoded.
#[derive(Debug, Clone)]
pub enum RoomPublication {
    Messages(RoomBroadcast),
    Notice(RoomNotice),
}

impl RoomPublication {
    /// Decodes a payload of a room's topic. A notice is tried first: a broadcast starts with
    /// its room id's length (at least 1), which is no variant of [`RoomNotice`] (variant 0 is
    /// its only one), so the two can never be taken for each other.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if let Ok(notice) = runtime::codec::decode::<RoomNotice>(bytes, "room notice") {
            return Some(Self::Notice(notice));
        }
        runtime::codec::decode::<RoomBroadcast>(bytes, "room broadcast")
            .map(Self::Messages)
            .map_err(|error| tracing::warn!(%error, "dropped an undecodable room publication"))
            .ok()
    }
}

/// Reads a [`RoomState`] in the order its fields are written. The fields appended since the
/// first release (`access`) are absent from older snapshots: the input simply ends before
/// them (a snapshot is one whole encoded value, written at once), and they take their
/// default (a room of an older snapshot is public, as every room was then).
pub(super) fn deserialize_state<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<RoomState, D::Error> {
    deserializer.deserialize_struct("RoomState", FIELDS, StateVisitor)
}

const FIELDS: &[&str] = &["info", "head", "recent", "dedup", "dedup_order", "access"];

struct StateVisitor;

impl<'de> Visitor<'de> for StateVisitor {
    type Value = RoomState;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a room's state")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RoomState, A::Error> {
        let missing = |index| de::Error::invalid_length(index, &"the room state's fields");
        let info = seq.next_element()?.ok_or_else(|| missing(0))?;
        let head = seq.next_element()?.ok_or_else(|| missing(1))?;
        let recent = seq.next_element()?.ok_or_else(|| missing(2))?;
        let dedup = seq.next_element()?.ok_or_else(|| missing(3))?;
        let dedup_order = seq.next_element()?.ok_or_else(|| missing(4))?;
        // Appended field: an older snapshot ends here (the read fails at the end of input).
        let access = seq.next_element().ok().flatten().unwrap_or_default();
        Ok(RoomState {
            info,
            head,
            recent,
            dedup,
            dedup_order,
            access,
        })
    }
}
