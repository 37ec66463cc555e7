//! Session hibernation: a session whose actor had nothing to do for
//! `sessions.hibernate_after_ms` stops the actor (a normal stop, not a failure) and leaves its
//! state on the connection, in a [`SessionHandle`]; the next message for it starts a new actor
//! under the same supervisor from that state, and the message is handled as before.
//!
//! Why: a ractor actor costs about 6 KiB at spawn (its mailboxes are tokio channels whose first
//! blocks hold 32 slots each), more than an idle connection is allowed in all. Most
//! connections are idle most of the time, as Erlang hibernates an idle process and the
//! runtime passivates an idle entity. What an idle session does needs no actor: live messages,
//! presence frames and notifications are written by pub/sub callbacks under the cursors' lock
//! (see [`super::Shared`]), the idle timeout and pings live in the connection's reader task,
//! and a slow client is disconnected by the sink. Those keep working while hibernated.
//!
//! Every message to a session goes through its handle, which counts what it casts. The actor
//! hibernates only from its own handler, under the handle's lock, when the count says nothing
//! waits in its mailbox and nothing is in flight (no join, replay page or post): so no message
//! is lost between the decision and the stop, and a message that comes after it finds the
//! state in the handle and starts the actor again. Messages that come while the actor starts
//! wait in the handle, in order.
//!
//! A hibernated session is ended without starting an actor when its client goes or the node
//! stops, and ignores a membership change that moves none of its rooms.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ractor::ActorRef;

use super::{SessionArgs, SessionMsg, SessionState};
use crate::metrics as names;

/// How a session's actor is started: what `pre_start` gets.
pub enum SessionStart {
    /// A new session that nothing else sends messages through: never hibernates (tests that
    /// spawn the actor directly).
    Alone(SessionArgs),
    /// A new session reached through its handle.
    Attached(SessionArgs, Weak<SessionHandle>),
    /// A hibernated session, started again.
    Resume(Box<SessionState>),
}

impl From<SessionArgs> for SessionStart {
    fn from(args: SessionArgs) -> Self {
        SessionStart::Alone(args)
    }
}

/// A started actor, or why it could not start.
pub type Started = Result<ActorRef<SessionMsg>, String>;

/// Starts a session actor under the node's sessions supervisor (the web layer provides it).
pub type SpawnSession =
    Arc<dyn Fn(SessionStart) -> Pin<Box<dyn Future<Output = Started> + Send>> + Send + Sync>;

/// The session has ended: its client went, it crashed or the node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnded;

enum Slot {
    /// The actor runs; `sent` counts the messages cast to this incarnation.
    Running {
        actor: ActorRef<SessionMsg>,
        sent: u64,
    },
    /// The actor is starting; messages wait here, in order. Bounded by what reaches a session
    /// in the few milliseconds a start takes: the client's frames by its flood budget, the
    /// rest by the session's own asks and the node's events.
    Starting {
        queued: Vec<SessionMsg>,
    },
    /// No actor: the session's whole state, until something needs it.
    Hibernated(Box<SessionState>),
    Ended,
}

/// What a connection holds of its session: the way to its actor, or its hibernated state.
pub struct SessionHandle {
    /// Guards every transition; held only for a cast or a move, never across an await.
    slot: Mutex<Slot>,
    spawn: SpawnSession,
}

impl SessionHandle {
    /// Starts the session's actor with `spawn` (used again for every wake-up).
    pub async fn start(args: SessionArgs, spawn: SpawnSession) -> Result<Arc<Self>, String> {
        let handle = Arc::new(SessionHandle {
            slot: Mutex::new(Slot::Starting { queued: Vec::new() }),
            spawn,
        });
        let started = (handle.spawn)(SessionStart::Attached(args, Arc::downgrade(&handle))).await;
        let failed = started.as_ref().err().cloned();
        handle.started(started);
        match failed {
            Some(error) => Err(error),
            None => Ok(handle),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `message` to the session, starting its actor again if it hibernated.
    pub fn cast(self: &Arc<Self>, message: SessionMsg) -> Result<(), SessionEnded> {
        let mut slot = self.slot();
        match &mut *slot {
            Slot::Running { actor, sent } => {
                if actor.cast(message).is_err() {
                    *slot = Slot::Ended;
                    return Err(SessionEnded);
                }
                *sent += 1;
                Ok(())
            }
            Slot::Starting { queued } => {
                queued.push(message);
                Ok(())
            }
            Slot::Hibernated(state) => {
                match message {
                    SessionMsg::ClientGone | SessionMsg::NodeStopping => {
                        let Slot::Hibernated(mut state) =
                            std::mem::replace(&mut *slot, Slot::Ended)
                        else {
                            unreachable!("matched as hibernated under the lock");
                        };
                        drop(slot);
                        metrics::gauge!(names::SESSIONS_HIBERNATED).decrement(1.0);
                        state.end();
                        return Ok(());
                    }
                    // Nothing to rejoin: stay asleep.
                    SessionMsg::ViewChanged if !state.owners_changed() => return Ok(()),
                    _ => {}
                }
                let Slot::Hibernated(state) = std::mem::replace(
                    &mut *slot,
                    Slot::Starting {
                        queued: vec![message],
                    },
                ) else {
                    unreachable!("matched as hibernated under the lock");
                };
                drop(slot);
                self.wake(state);
                Ok(())
            }
            Slot::Ended => Err(SessionEnded),
        }
    }

    fn wake(self: &Arc<Self>, state: Box<SessionState>) {
        metrics::gauge!(names::SESSIONS_HIBERNATED).decrement(1.0);
        metrics::counter!(names::SESSION_WAKES_TOTAL).increment(1);
        let handle = self.clone();
        tokio::spawn(async move {
            let started = (handle.spawn)(SessionStart::Resume(state)).await;
            if started.is_err() {
                // The state went with the failed start: the session has ended.
                metrics::gauge!(names::SESSIONS_ACTIVE).decrement(1.0);
            }
            handle.started(started);
        });
    }

    /// The actor started (its queued messages go to it, in order) or could not (the state
    /// went with the failed start, which closed the connection).
    fn started(&self, started: Started) {
        let mut slot = self.slot();
        let queued = match std::mem::replace(&mut *slot, Slot::Ended) {
            Slot::Starting { queued } => queued,
            other => {
                // Only a start moves out of `Starting`.
                *slot = other;
                return;
            }
        };
        let actor = match started {
            Ok(actor) => actor,
            Err(error) => {
                tracing::warn!(%error, "cannot start a session actor; its connection is closed");
                return;
            }
        };
        let mut sent = 0;
        for message in queued {
            if actor.cast(message).is_err() {
                return;
            }
            sent += 1;
        }
        *slot = Slot::Running { actor, sent };
    }

    /// Called by the actor from its handler after `handled` messages: when every message cast
    /// to it was handled, its state moves here and the caller stops the actor. Returns false
    /// (and leaves the state) when a message is still waiting in its mailbox.
    pub(super) fn hibernate(&self, handled: u64, state: &mut Option<Box<SessionState>>) -> bool {
        let mut slot = self.slot();
        let Slot::Running { sent, .. } = &*slot else {
            return false;
        };
        if *sent != handled {
            return false;
        }
        let Some(state) = state.take() else {
            return false;
        };
        *slot = Slot::Hibernated(state);
        metrics::gauge!(names::SESSIONS_HIBERNATED).increment(1.0);
        true
    }
}

/// Where a session's own messages go (answers to its asks, gaps, removals, view changes):
/// through its handle when it has one, so that they reach it asleep or awake.
pub(super) enum Mailbox {
    Actor(ActorRef<SessionMsg>),
    Handle(Weak<SessionHandle>),
}

impl Mailbox {
    /// Returns false once the session has ended.
    pub(super) fn cast(&self, message: SessionMsg) -> bool {
        match self {
            Mailbox::Actor(actor) => actor.cast(message).is_ok(),
            Mailbox::Handle(handle) => handle
                .upgrade()
                .is_some_and(|handle| handle.cast(message).is_ok()),
        }
    }
}
