//! ActorHub's distributed actor runtime: membership, failure detection, placement, virtual
//! actors (entities) with an event journal, supervision, cluster pub/sub, presence and durable
//! reminders.
//!
//! It knows nothing of chat, jobs or users: the application registers entity kinds
//! ([`entity::Entity`]) and talks to them through [`entity::EntityRef`]. See ARCHITECTURE.md.

pub mod attempts;
pub mod builtin;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod entity;
pub mod error;
pub mod id;
pub mod journal;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod pubsub;
pub mod reminder;
mod runtime;
pub mod supervision;
pub mod trace;

// The paths other crates have used since before the folders: kept so they keep working.
pub use cluster::{membership, placement};
pub use entity::{host, reply, request, shards};
pub use journal::{local_store, storage};
pub use supervision as supervisor;

pub use cluster::membership::{MemberState, MemberStatus, MembershipEvent, View};
pub use entity::{Context, Entity, EntityRef, Request};
pub use error::{Result, RuntimeError};
pub use id::{EntityId, MsgId};
pub use node::{Node, NodeBuilder};
pub use reminder::{Reminder, ReminderError};
pub use runtime::Runtime;
