//! ActorHub's distributed actor runtime: membership, failure detection, placement, virtual
//! actors (entities) with an event journal, supervision, and cluster pub/sub.
//!
//! It knows nothing of chat, jobs or users: the application registers entity kinds
//! ([`entity::Entity`]) and talks to them through [`entity::EntityRef`]. See ARCHITECTURE.md.

pub mod attempts;
pub mod builtin;
pub mod codec;
pub mod config;
pub mod entity;
mod entity_actor;
pub mod error;
pub mod host;
pub mod id;
pub mod journal;
pub mod local_store;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod pubsub;
pub mod reply;
mod runtime;
pub mod shards;
pub mod storage;
pub mod supervisor;

pub use entity::{Context, Entity, EntityRef};
pub use error::{Result, RuntimeError};
pub use id::{EntityId, MsgId};
pub use membership::{MemberState, MemberStatus, MembershipEvent, View};
pub use node::{Node, NodeBuilder};
pub use runtime::Runtime;
