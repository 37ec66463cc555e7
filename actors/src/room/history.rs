//! A room's history beyond what its memory holds: read from its journal, page by page.
//!
//! The room's journal holds its events in order: seq 1 is the room's creation, then one
//! `Posted` per message, so in a public room message seq n is journal seq n + 1. A private
//! room's journal also holds its membership changes between messages, so there message n is
//! at journal seq n + 1 or later, never earlier. A page starts at the journal segment holding
//! journal seq n + 1 for the first wanted message n (that segment, or one before the message)
//! and follows the chain from there, skipping what is not a wanted message, so it costs what it
//! returns, plus the room's membership changes in between.

use runtime::{Entity, EntityId, Runtime, RuntimeError};

use super::{ChatMessage, HISTORY_PAGE_MAX, Room, RoomEvent, message_bytes, page_bytes_max};

/// The first journal seq that can hold message seq `seq` (the room's creation is journal seq
/// 1; a private room's membership events only push messages later).
pub(super) fn journal_seq_of_message(seq: u64) -> u64 {
    seq.saturating_add(1)
}

/// Reads messages `after < seq < before` from the room's journal, oldest first.
pub(super) async fn from_journal(
    runtime: &Runtime,
    room: &str,
    after: u64,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<ChatMessage>, RuntimeError> {
    let entity = EntityId::new(Room::KIND, room);
    let journal = runtime.journal();
    // The first wanted message is `after + 1`: start at the segment holding it.
    let span_max = runtime.config().entities.batch_events_max as u64;
    let first_wanted = journal_seq_of_message(after.saturating_add(1));
    let Some(mut start) = journal
        .segment_holding(&entity, first_wanted, span_max)
        .await?
    else {
        return Ok(Vec::new());
    };
    let limit = limit.clamp(1, HISTORY_PAGE_MAX);
    let bytes_max = page_bytes_max(runtime);
    let mut page_bytes = 0;
    let mut messages = Vec::new();
    while let Some(records) = journal.read_records(&entity, start).await? {
        for record in records {
            start += record.events.len() as u64;
            for bytes in &record.events {
                let event: RoomEvent = runtime::codec::decode(bytes, "room event")?;
                if let RoomEvent::Posted(message) = event
                    && message.seq > after
                {
                    if before.is_some_and(|before| message.seq >= before) {
                        return Ok(messages);
                    }
                    page_bytes += message_bytes(&message);
                    messages.push(message);
                    if messages.len() >= limit || page_bytes >= bytes_max {
                        return Ok(messages);
                    }
                }
            }
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_seq_n_is_journal_seq_n_plus_one() {
        assert_eq!(journal_seq_of_message(1), 2, "seq 1 is the room's creation");
        assert_eq!(journal_seq_of_message(u64::MAX), u64::MAX, "no overflow");
    }
}
