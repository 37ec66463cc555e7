//! Entities (virtual actors): the trait an application implements, the context it gets, and
//! [`EntityRef`], the location-transparent handle to call one.
//!
//! An entity is event-sourced. `handle` decides, synchronously, what a command means: it may
//! persist events through the [`Context`] and returns the reply. The runtime applies the events
//! to the durable state at once (so the next command sees them), appends them to the journal
//! with other commands' events (group commit), and only when the append is durable runs
//! `on_durable` (side effects such as broadcasting) and sends the replies. A reply therefore
//! never announces something that could still be lost.

pub(crate) mod actor;
pub mod host;
mod reference;
pub mod reply;
pub mod request;
pub mod shards;

use std::future::Future;

use ractor::{ActorRef, RpcReplyPort};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, Wire};
use crate::entity::shards::Delivery;
use crate::id::{EntityId, MsgId};
use crate::runtime::Runtime;

/// An entity kind. One value of the implementing type exists per active entity.
pub trait Entity: Sized + Send + 'static {
    /// The kind's name: part of every entity id and journal path. Never rename it.
    const KIND: &'static str;
    /// The version of this kind's journaled types (events, replies, state), recorded with
    /// every record and snapshot. Those types are append-only: add fields and variants at the
    /// end, never remove or reorder one; bump this when you add, so that an older build
    /// refuses a journal it could misread instead of misreading it.
    const SCHEMA: u32 = 1;
    type Command: Serialize + DeserializeOwned + Send + 'static;
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    type Event: Serialize + DeserializeOwned + Send + 'static;
    /// Durable state: rebuilt from snapshot + events, written into snapshots.
    type State: Serialize + DeserializeOwned + Default + Send + 'static;
    /// What the application hands every entity of this kind (pools, pub/sub handles...).
    type Deps: Clone + Send + Sync + 'static;

    /// Builds the non-durable part of the entity when it is activated.
    fn activate(key: &str, deps: &Self::Deps) -> Self;

    /// Applies one event to the durable state. Must be deterministic: it runs on replay too.
    fn apply(state: &mut Self::State, seq: u64, event: &Self::Event);

    /// Decides what a command means; persist events with `context.persist`.
    fn handle(
        &mut self,
        state: &Self::State,
        command: Self::Command,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply;

    /// Runs after events are durable and before their replies are sent. `context.persist`
    /// is not allowed here.
    fn on_durable(
        &mut self,
        _state: &Self::State,
        _events: &[(u64, Self::Event)],
        _context: &mut Context<'_, Self>,
    ) {
    }

    /// Runs once the state is loaded, before any command: resume work, schedule timers.
    fn on_ready(&mut self, _state: &Self::State, _context: &mut Context<'_, Self>) {}

    /// Runs when one of this entity's reminders (see [`Context::remind`]) is due, like a
    /// command: it may persist events and register or forget reminders, and the firing counts
    /// as delivered only once they are durable. It runs at least once per due time, never
    /// before it, on whichever node owns the entity then: make it idempotent (a firing may be
    /// repeated after a crash, and a reminder may fire that a failed command registered
    /// without its own events being journaled; ignore what the state does not expect).
    fn on_reminder(
        &mut self,
        _state: &Self::State,
        _reminder: &crate::reminder::Reminder,
        _context: &mut Context<'_, Self>,
    ) {
    }
}

/// What an entity can do while handling a command.
pub struct Context<'a, E: Entity> {
    pub(crate) entity: &'a EntityId,
    pub(crate) runtime: &'a Runtime,
    pub(crate) myself: &'a ActorRef<crate::entity::actor::EntityMsg>,
    pub(crate) next_seq: u64,
    pub(crate) durable_head: u64,
    pub(crate) events: Vec<E::Event>,
    pub(crate) persist_allowed: bool,
    pub(crate) passivate: bool,
    /// `remind` and `forget` calls of this command, in order: registered with the reminder
    /// shards before its events are appended.
    pub(crate) reminder_ops: Vec<crate::reminder::ReminderOp>,
}

impl<E: Entity> Context<'_, E> {
    /// Records an event; returns the sequence number it will have once durable.
    ///
    /// # Panics
    /// In `on_durable`: events there would be acknowledged without being journaled first.
    pub fn persist(&mut self, event: E::Event) -> u64 {
        assert!(
            self.persist_allowed,
            "{}: persist() is not allowed in on_durable",
            self.entity
        );
        let seq = self.next_seq + self.events.len() as u64;
        self.events.push(event);
        seq
    }

    /// Registers (or replaces) this entity's reminder `name`: `on_reminder` runs at `due_ms`
    /// (unix ms, [`crate::clock::unix_ms`]) or later, then every `period` after it if one is
    /// given. Durable once the command's reply is sent: the registration is journaled before
    /// the command's events.
    ///
    /// # Panics
    /// Where `persist` is not allowed (`on_durable`, `on_ready`).
    pub fn remind(
        &mut self,
        name: impl Into<String>,
        due_ms: u64,
        period: Option<std::time::Duration>,
    ) -> Result<(), crate::reminder::ReminderError> {
        self.assert_reminders_allowed("remind");
        let name = name.into();
        let period_ms = period.map(|period| u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        crate::reminder::validate(&name, period_ms)?;
        self.reminder_ops.push(crate::reminder::ReminderOp::Upsert {
            entity: self.entity.clone(),
            reminder: crate::reminder::Reminder {
                name,
                due_ms,
                period_ms,
            },
        });
        Ok(())
    }

    /// Removes this entity's reminder `name`, if it has one (durably, as [`Context::remind`]).
    ///
    /// # Panics
    /// Where `persist` is not allowed (`on_durable`, `on_ready`).
    pub fn forget(
        &mut self,
        name: impl Into<String>,
    ) -> Result<(), crate::reminder::ReminderError> {
        self.assert_reminders_allowed("forget");
        let name = name.into();
        crate::reminder::validate(&name, None)?;
        self.reminder_ops.push(crate::reminder::ReminderOp::Forget {
            entity: self.entity.clone(),
            name,
        });
        Ok(())
    }

    /// [`Context::remind`] for a reminder whose name and period the entity's code fixes, where
    /// a refusal is a bug: it fails debug builds, and release builds log it as an error with
    /// the entity and the name.
    pub fn remind_fixed(&mut self, name: &str, due_ms: u64, period: Option<std::time::Duration>) {
        let result = self.remind(name, due_ms, period);
        self.bug_if_refused(name, result);
    }

    /// [`Context::forget`] for a reminder name the entity's code fixes (see
    /// [`Context::remind_fixed`]).
    pub fn forget_fixed(&mut self, name: &str) {
        let result = self.forget(name);
        self.bug_if_refused(name, result);
    }

    fn bug_if_refused(&self, name: &str, result: Result<(), crate::reminder::ReminderError>) {
        if let Err(error) = result {
            debug_assert!(false, "{}: reminder {name} refused: {error}", self.entity);
            tracing::error!(entity = %self.entity, name, %error, "reminder refused (a bug in the entity's code)");
        }
    }

    fn assert_reminders_allowed(&self, what: &str) {
        assert!(
            self.persist_allowed,
            "{}: {what}() is allowed only in handle and on_reminder",
            self.entity
        );
    }

    pub fn key(&self) -> &str {
        &self.entity.key
    }

    pub fn id(&self) -> &EntityId {
        self.entity
    }

    pub fn runtime(&self) -> &Runtime {
        self.runtime
    }

    /// The last durable sequence number.
    pub fn durable_head(&self) -> u64 {
        self.durable_head
    }

    /// Runs `work` off the entity and hands its result back as a command (no reply is sent).
    /// Use it for slow or blocking work: the entity keeps serving meanwhile.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = E::Command> + Send + 'static,
    {
        let myself = self.myself.clone();
        tokio::spawn(async move {
            let command = work.await;
            let delivery = Delivery {
                msg_id: None,
                payload: codec::encode(&command),
                reply: None,
                span: tracing::Span::none(),
                kind: crate::entity::shards::DeliveryKind::Command,
            };
            // The entity may have stopped meanwhile; its next activation re-derives the work.
            let _ = myself.cast(crate::entity::actor::EntityMsg::Deliver(delivery));
        });
    }

    /// Asks the runtime to passivate this entity once its pending appends are durable.
    pub fn passivate(&mut self) {
        self.passivate = true;
    }
}

/// The answer of an entity's host to a delivered message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AskOutcome {
    /// The encoded reply.
    Reply(Vec<u8>),
    /// The receiving node does not own the entity; `owner` is who it thinks does.
    NotOwner { owner: Option<String> },
    /// Permanent refusal: unknown kind, undecodable command, overload.
    Rejected(String),
    /// Temporary: the entity is restarting or its journal is failing. Retry with the same id.
    Unavailable(String),
}

/// A message on its way to an entity on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub entity: EntityId,
    pub msg_id: MsgId,
    pub payload: Vec<u8>,
    pub from: String,
    /// Optional fields added by later protocols (trace context, ...); see `codec::Extensions`.
    pub extensions: crate::codec::Extensions,
}

impl Envelope {
    pub fn new(entity: EntityId, msg_id: MsgId, payload: Vec<u8>, from: String) -> Self {
        #[allow(unused_mut)]
        let mut extensions = crate::codec::Extensions::default();
        #[cfg(feature = "wire-next")]
        extensions.insert(crate::codec::tags::NEXT, &crate::codec::PROTOCOL);
        Self {
            entity,
            msg_id,
            payload,
            from,
            extensions,
        }
    }
}

/// Reply port type shared by the local and remote paths.
pub type ReplyPort = RpcReplyPort<Wire<AskOutcome>>;

pub use reference::EntityRef;
pub use reply::{Reply, ReplyCallback};
pub use request::Request;
