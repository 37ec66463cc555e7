//! The local actor that runs one entity: loading, group commit, dedup, snapshots, passivation.
//!
//! States: `Loading` (journal being read; commands are stashed) → `Ready` → `Stopping`.
//! At most one journal append is in flight; commands handled meanwhile collect in the open
//! batch and go out together when it lands (group commit). Replies, including those of
//! read-only commands queued behind a write, are sent only once everything before them is
//! durable, so no reply reflects state that could still be lost.
//!
//! On an append conflict (another node appended first) the state is rebuilt from the journal
//! and the commands of the failed batches run again, if this node still owns the entity;
//! retried commands carrying a message id already in the journal are answered from it.
//!
//! The actor's types, state and dispatch are here; `commit` is the path of a command (load,
//! dedup, the open batch, the append, durability), `lifecycle` snapshots, idleness and
//! passivation.

mod commit;
mod lifecycle;

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;

use crate::entity::shards::{Delivery, ShardMsg};
use crate::entity::{AskOutcome, Entity, Reply};
use crate::error::RuntimeError;
use crate::id::{EntityId, MsgId};
use crate::journal::{AppendError, Loaded, Record};
use crate::metrics as names;
use crate::runtime::Runtime;

/// Message ids remembered (with their replies) per entity to answer retries.
pub const RECENT_REPLIES_MAX: usize = 4096;

#[derive(RactorMessage)]
pub enum EntityMsg {
    Deliver(Delivery),
    Loaded(Result<(u64, Loaded), RuntimeError>),
    Appended(Result<(), AppendError>),
    /// The batch in flight could not register its reminders (see `crate::reminder`): it fails
    /// as a failed append would, its callers get this outcome.
    RemindersFailed(AskOutcome),
    SnapshotDone,
    IdleCheck,
    /// To itself, while its journal is empty: passivate soon if nothing else comes.
    ProbeCheck,
    /// From the shards actor: passivate once pending work is durable.
    Stop,
}

pub struct EntityArgs<E: Entity> {
    pub id: EntityId,
    pub runtime: Runtime,
    pub deps: E::Deps,
    pub shards: ActorRef<ShardMsg>,
}

pub struct EntityActor<E>(PhantomData<fn() -> E>);

impl<E> Default for EntityActor<E> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
}

/// A command handled but not yet answered, kept so it can run again after a conflict.
struct Entry {
    msg_id: Option<MsgId>,
    reply: Vec<u8>,
    ports: Vec<Reply>,
    /// Events the command persisted (0 for a read queued behind an append).
    events: usize,
    /// The command's `entity.command` span: it ends when the command is answered.
    span: tracing::Span,
    /// Its `remind`/`forget` calls, registered before its events are appended.
    reminder_ops: Vec<crate::reminder::ReminderOp>,
}

struct Batch<E: Entity> {
    first_seq: u64,
    entries: Vec<Entry>,
    /// Encoded events per entry with events (parallel to the records to write).
    records: Vec<Record>,
    events: Vec<(u64, E::Event)>,
    /// Its `journal.append` span while in flight: it ends when the batch is durable.
    span: tracing::Span,
}

impl<E: Entity> Batch<E> {
    fn new(first_seq: u64) -> Self {
        Self {
            first_seq,
            entries: Vec::new(),
            records: Vec::new(),
            events: Vec::new(),
            span: tracing::Span::none(),
        }
    }

    /// The span of its first traced command: the parent of what the batch does once durable.
    fn lead_span(&self) -> Option<&tracing::Span> {
        self.entries
            .iter()
            .map(|entry| &entry.span)
            .find(|span| !span.is_disabled())
    }
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Bounded map of recent message ids to replies.
#[derive(Default)]
struct RecentReplies {
    replies: HashMap<MsgId, Vec<u8>>,
    order: VecDeque<MsgId>,
}

impl RecentReplies {
    fn insert(&mut self, msg_id: MsgId, reply: Vec<u8>) {
        if self.replies.insert(msg_id, reply).is_none() {
            self.order.push_back(msg_id);
        }
        while self.order.len() > RECENT_REPLIES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }
    fn get(&self, msg_id: &MsgId) -> Option<&Vec<u8>> {
        self.replies.get(msg_id)
    }
    fn to_vec(&self) -> Vec<(MsgId, Vec<u8>)> {
        self.order
            .iter()
            .filter_map(|id| self.replies.get(id).map(|reply| (*id, reply.clone())))
            .collect()
    }
}

pub struct EntityState<E: Entity> {
    id: EntityId,
    runtime: Runtime,
    shards: ActorRef<ShardMsg>,
    entity: E,
    state: E::State,
    phase: Phase,
    stopping: bool,
    passivation_requested: bool,
    /// Commands waiting for the state to load.
    stash: VecDeque<Delivery>,
    durable_head: u64,
    /// The epoch of its partition this entity was loaded at: its appends carry it.
    epoch: u64,
    /// Next sequence number to hand out (speculative events included).
    next_seq: u64,
    open: Batch<E>,
    inflight: Option<Batch<E>>,
    recent: RecentReplies,
    events_since_snapshot: u64,
    snapshot_in_flight: bool,
    last_activity: Instant,
    idle_timer: Option<JoinHandle<()>>,
}

impl<E: Entity> Actor for EntityActor<E> {
    type Msg = EntityMsg;
    type State = EntityState<E>;
    type Arguments = EntityArgs<E>;

    async fn pre_start(
        &self,
        myself: ActorRef<EntityMsg>,
        args: EntityArgs<E>,
    ) -> Result<EntityState<E>, ActorProcessingErr> {
        let entity = E::activate(&args.id.key, &args.deps);
        let passivate_after =
            Duration::from_millis(args.runtime.config().entities.passivate_after_ms);
        let idle_timer = myself
            .send_interval((passivate_after / 4).max(Duration::from_millis(50)), || {
                EntityMsg::IdleCheck
            });
        let state = EntityState {
            id: args.id,
            runtime: args.runtime,
            shards: args.shards,
            entity,
            state: E::State::default(),
            phase: Phase::Loading,
            stopping: false,
            passivation_requested: false,
            stash: VecDeque::new(),
            durable_head: 0,
            epoch: 0,
            next_seq: 1,
            open: Batch::new(1),
            inflight: None,
            recent: RecentReplies::default(),
            events_since_snapshot: 0,
            snapshot_in_flight: false,
            last_activity: Instant::now(),
            idle_timer: Some(idle_timer),
        };
        state.start_load(&myself);
        metrics::counter!(names::ENTITY_ACTIVATIONS_TOTAL, "kind" => E::KIND).increment(1);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EntityMsg>,
        state: &mut EntityState<E>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.idle_timer.take() {
            timer.abort();
        }
        // Anyone still waiting retries elsewhere (same message id, so no double effect).
        state.fail_all_pending(|| AskOutcome::Unavailable("the entity passivated; retry".into()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<EntityMsg>,
        message: EntityMsg,
        state: &mut EntityState<E>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EntityMsg::Deliver(delivery) => {
                state.last_activity = Instant::now();
                match state.phase {
                    Phase::Loading => state.stash_or_shed(delivery),
                    Phase::Ready => state.process(&myself, delivery),
                }
            }
            EntityMsg::Loaded(Err(RuntimeError::Unavailable(reason))) => {
                // Its partition left this node while it loaded.
                state.fail_all_pending(|| AskOutcome::Unavailable(reason.clone()));
                state.stopping = true;
                state.phase = Phase::Ready;
                state.request_passivation(&myself);
            }
            EntityMsg::Loaded(result) => {
                let (epoch, loaded) = result?;
                state.loaded(&myself, epoch, loaded)?
            }
            EntityMsg::Appended(result) => state.appended(&myself, result),
            EntityMsg::RemindersFailed(outcome) => state.reminders_failed(&myself, outcome),
            EntityMsg::SnapshotDone => state.snapshot_in_flight = false,
            EntityMsg::IdleCheck => state.idle_check(),
            EntityMsg::ProbeCheck => state.probe_check(&myself),
            EntityMsg::Stop => state.stopping = true,
        }
        if state.stopping && state.is_quiet() {
            metrics::counter!(names::ENTITY_PASSIVATIONS_TOTAL, "kind" => E::KIND).increment(1);
            myself.stop(Some("passivated".into()));
        }
        Ok(())
    }
}
