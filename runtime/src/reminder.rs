//! Durable reminders (Orleans reminders, Dapr's scheduler): an entity asks, through its
//! [`Context`](crate::entity::Context), to be woken at a wall-clock time, once or periodically,
//! whatever happens to the node it lives on meanwhile.
//!
//! Reminders live in reminder shards, the built-in entities of kind `sys.reminders`:
//! `reminders.shards_per_partition` of them in every journal partition, each serving the
//! entities of its own partition (so a shard is owned, journaled, fenced and moved with the
//! entities it serves). A command's `remind`/`forget` calls are registered with its shard, durably,
//! before the command's own events are appended; a shard fires what is due (never earlier)
//! into the target's `on_reminder`, at least once, and records the firing once the target has
//! acknowledged it. See ARCHITECTURE.md, "Durable reminders".
//!
//! `shard` is the shard entity, `state` its durable state, `bucket` the node's firing rate
//! limit, `node` what a node's shards share (the shard of an entity, the bucket, the counts),
//! `fire` the delivery of a firing to its target, `waker` the node task that keeps the shards
//! of the partitions this node holds active, `register` the registration from an entity's
//! commit path.

pub mod bucket;
pub(crate) mod fire;
pub(crate) mod node;
pub(crate) mod register;
pub mod shard;
mod state;
pub(crate) mod waker;

use serde::{Deserialize, Serialize};

use crate::id::EntityId;

pub use fire::FireOutcome;
pub use shard::{ReminderShard, ShardCommand, ShardEvent, ShardReply, ShardState};

/// Longest reminder name, in bytes.
pub const REMINDER_NAME_BYTES_MAX: usize = 128;

/// Shortest period of a periodic reminder: a shorter one would be a busy loop through the
/// journal (each firing is journaled).
pub const REMINDER_PERIOD_MS_MIN: u64 = 100;

/// One reminder of one entity, as `on_reminder` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// Unique per entity: registering a name again replaces its reminder.
    pub name: String,
    /// When it is due (unix ms, [`crate::clock::unix_ms`]); it never fires before.
    pub due_ms: u64,
    /// A periodic reminder fires again `period_ms` after each due time (periods missed while
    /// nobody could fire it are skipped); `None` fires once.
    pub period_ms: Option<u64>,
}

/// Why `remind` or `forget` refused a reminder (an operating error: the entity answers it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReminderError {
    #[error("the reminder name is {bytes} bytes, more than {REMINDER_NAME_BYTES_MAX}")]
    NameTooLong { bytes: usize },
    #[error("the reminder name is empty")]
    NameEmpty,
    #[error("a reminder period of {period_ms} ms is shorter than {REMINDER_PERIOD_MS_MIN} ms")]
    PeriodTooShort { period_ms: u64 },
}

/// What a command asked of its reminders, in order; registered with its shard before the
/// command's events are appended. Journaled by the shard (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReminderOp {
    /// Registers (or replaces) `reminder` of `entity`.
    Upsert {
        entity: EntityId,
        reminder: Reminder,
    },
    /// Removes the reminder `name` of `entity`, if any.
    Forget { entity: EntityId, name: String },
}

impl ReminderOp {
    pub fn entity(&self) -> &EntityId {
        match self {
            Self::Upsert { entity, .. } | Self::Forget { entity, .. } => entity,
        }
    }
}

/// Checks a reminder an entity asked for.
pub(crate) fn validate(name: &str, period_ms: Option<u64>) -> Result<(), ReminderError> {
    if name.is_empty() {
        return Err(ReminderError::NameEmpty);
    }
    if name.len() > REMINDER_NAME_BYTES_MAX {
        return Err(ReminderError::NameTooLong { bytes: name.len() });
    }
    if let Some(period_ms) = period_ms
        && period_ms < REMINDER_PERIOD_MS_MIN
    {
        return Err(ReminderError::PeriodTooShort { period_ms });
    }
    Ok(())
}
