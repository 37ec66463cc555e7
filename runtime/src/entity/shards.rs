//! The node's entity directory and the supervisor of its entities.
//!
//! [`ShardsActor`] owns the map of active entities on this node. It activates an entity on
//! its first message (if placement says this node owns it), forwards messages to it, restarts
//! it alone when it fails (holding it back when it crash-loops), passivates it when it is
//! idle, and hands entities off when a membership change gives them to another node.
//!
//! **Architecture Invariant:** an entity is activated only on the node that owns it in that
//! node's view; every message to an active entity goes through this actor, so activation,
//! forwarding and passivation are serialised and a message never reaches a stopped entity
//! without being answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;

use crate::cluster::membership::View;
use crate::entity::actor::{EntityActor, EntityArgs, EntityMsg};
use crate::entity::reply::respond;
use crate::entity::{AskOutcome, Entity, Reply};
use crate::id::{EntityId, MsgId};
use crate::metrics as names;
use crate::runtime::Runtime;

/// A message for an entity, with where to send the outcome.
pub struct Delivery {
    pub msg_id: Option<MsgId>,
    pub payload: Vec<u8>,
    pub reply: Option<Reply>,
    /// The command's `entity.command` span (see `crate::trace`), kept until it is answered;
    /// `Span::none()` when not traced.
    pub span: tracing::Span,
    /// What the payload is: a command, or a reminder's firing (for `on_reminder`).
    pub kind: DeliveryKind,
}

/// What a delivery's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryKind {
    /// The entity's wire command, for `handle`.
    #[default]
    Command,
    /// A [`crate::reminder::Reminder`] that is due, for `on_reminder` (from a reminder shard
    /// on this node; never from the network).
    Reminder,
}

#[derive(RactorMessage)]
pub enum ShardMsg {
    Deliver {
        entity: EntityId,
        delivery: Delivery,
    },
    /// From an entity that has been idle (or asked to stop).
    Passivate {
        entity: EntityId,
        reason: &'static str,
    },
    ViewChanged(View),
    /// From the node journal: a partition was taken over (its entities may be activated) or
    /// lost (its entities must go).
    Partition(crate::journal::PartitionEvent),
    /// From the memory watchdog while the node is under pressure: passivate the least
    /// recently used entities.
    Shed,
}

/// Messages held per partition while this node takes it over.
pub const WAITING_PER_PARTITION_MAX: usize = 4096;

/// Share of the active entities passivated by one `Shed` (one per memory sample under pressure).
const SHED_PERCENT: usize = 10;

/// Starts entities of one kind; registered by the application.
pub trait KindFactory: Send + Sync {
    fn spawn(
        &self,
        id: EntityId,
        runtime: Runtime,
        shards: ActorRef<ShardMsg>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorRef<EntityMsg>, ractor::SpawnErr>>;
}

struct Factory<E: Entity> {
    deps: E::Deps,
}

impl<E: Entity> KindFactory for Factory<E> {
    fn spawn(
        &self,
        id: EntityId,
        runtime: Runtime,
        shards: ActorRef<ShardMsg>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorRef<EntityMsg>, ractor::SpawnErr>> {
        let args = EntityArgs::<E> {
            id,
            runtime,
            deps: self.deps.clone(),
            shards,
        };
        Box::pin(async move {
            let (actor, _) =
                Actor::spawn_linked(None, EntityActor::<E>::default(), args, supervisor).await?;
            Ok(actor)
        })
    }
}

/// The entity kinds this node can host.
#[derive(Default, Clone)]
pub struct Kinds {
    factories: HashMap<&'static str, Arc<dyn KindFactory>>,
}

impl Kinds {
    pub fn register<E: Entity>(&mut self, deps: E::Deps) {
        let previous = self
            .factories
            .insert(E::KIND, Arc::new(Factory::<E> { deps }));
        assert!(
            previous.is_none(),
            "entity kind {} registered twice",
            E::KIND
        );
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.factories.keys().copied().collect();
        names.sort_unstable();
        names
    }

    fn get(&self, kind: &str) -> Option<&Arc<dyn KindFactory>> {
        self.factories.get(kind)
    }
}

/// How long a stopping node waits for its entities to drain their mailboxes.
pub const ENTITY_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ShardsArgs {
    pub runtime: Runtime,
    pub kinds: Kinds,
    /// Shared with the runtime handle so `/api/cluster` can read it without a message.
    pub active_count: Arc<AtomicUsize>,
}

/// Restart history of one entity.
struct Restarts {
    times: Vec<Instant>,
    held_back_until: Option<Instant>,
}

/// An active entity: its actor, and whether it got a message since the clock hand last
/// passed it (see [`ShardsState::evict_least_recently_used`]).
struct Active {
    actor: ActorRef<EntityMsg>,
    referenced: bool,
}

pub struct ShardsState {
    runtime: Runtime,
    kinds: Kinds,
    active: HashMap<EntityId, Active>,
    /// Active entities in activation order, the ring of a CLOCK (second chance) eviction:
    /// approximately least recently used first, at the cost of a flag per delivery. May hold
    /// ids that are no longer active; those are skipped and compacted away.
    clock: std::collections::VecDeque<EntityId>,
    by_actor: HashMap<ActorId, EntityId>,
    restarts: HashMap<EntityId, Restarts>,
    active_count: Arc<AtomicUsize>,
    /// Messages for entities of partitions this node is taking over, delivered once it holds
    /// them.
    waiting: HashMap<u32, std::collections::VecDeque<(EntityId, Delivery)>>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    /// Active reminder shards (`sys.reminders`), left out of the count operators see: they
    /// run wherever a partition is held, whatever the application does.
    reminder_shards_active: usize,
}

pub struct ShardsActor;

impl Actor for ShardsActor {
    type Msg = ShardMsg;
    type State = ShardsState;
    type Arguments = ShardsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardsArgs,
    ) -> Result<ShardsState, ActorProcessingErr> {
        let mut views = args.runtime.watch_view();
        let forward_to = myself.clone();
        let view_forwarder = tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let view = views.borrow_and_update().clone();
                if forward_to.cast(ShardMsg::ViewChanged(view)).is_err() {
                    break;
                }
            }
        });
        let mut partitions = args.runtime.node_journal().subscribe();
        let forward_to = myself.clone();
        let partition_forwarder = tokio::spawn(async move {
            loop {
                match partitions.recv().await {
                    Ok(event) => {
                        if forward_to.cast(ShardMsg::Partition(event)).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::error!(
                            missed,
                            "missed partition events; entities of lost partitions are passivated by the next view change"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        args.active_count.store(0, Ordering::Relaxed);
        Ok(ShardsState {
            runtime: args.runtime,
            kinds: args.kinds,
            active: HashMap::new(),
            clock: std::collections::VecDeque::new(),
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            active_count: args.active_count,
            waiting: HashMap::new(),
            forwarders: vec![view_forwarder, partition_forwarder],
            reminder_shards_active: 0,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ShardMsg>,
        state: &mut ShardsState,
    ) -> Result<(), ActorProcessingErr> {
        for forwarder in state.forwarders.drain(..) {
            forwarder.abort();
        }
        // Graceful: every entity handles what is already in its mailbox, then stops; callers
        // of anything later retry elsewhere with the same message id.
        let entities = state.active.len();
        myself
            .get_cell()
            .drain_children_and_wait(Some(ENTITY_DRAIN_TIMEOUT))
            .await;
        tracing::info!(entities, "entities passivated");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardsState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Deliver { entity, delivery } => {
                state.deliver(&myself, entity, delivery).await
            }
            ShardMsg::Passivate { entity, reason } => state.passivate(&entity, reason),
            ShardMsg::ViewChanged(view) => state.hand_off(&view),
            ShardMsg::Partition(event) => state.partition_event(&myself, event).await,
            ShardMsg::Shed => {
                let count = (state.active.len() * SHED_PERCENT).div_ceil(100);
                state.evict_least_recently_used(count, "memory pressure");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMsg>,
        event: SupervisionEvent,
        state: &mut ShardsState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(entity) = state.forget(cell.get_id()) {
                    state
                        .entity_failed(&myself, entity, &error.to_string())
                        .await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl ShardsState {
    async fn deliver(&mut self, myself: &ActorRef<ShardMsg>, entity: EntityId, delivery: Delivery) {
        if self.kinds.get(&entity.kind).is_none() {
            metrics::counter!(names::ENTITY_REJECTED_TOTAL, "reason" => "unknown kind")
                .increment(1);
            respond(
                delivery.reply,
                AskOutcome::Rejected(format!("unknown entity kind {:?}", entity.kind)),
            );
            return;
        }
        let owner = self.runtime.owner_of(&entity.kind, &entity.key);
        if owner.as_deref() != Some(self.runtime.node_id()) {
            respond(delivery.reply, AskOutcome::NotOwner { owner });
            return;
        }
        let journal = self.runtime.node_journal();
        let partition = journal.partition_of(&entity);
        if !matches!(
            journal.status(partition),
            crate::journal::PartitionStatus::Owned { .. }
        ) {
            // Ours by the view, being (or about to be) taken over: hold it until then.
            let waiting = self.waiting.entry(partition).or_default();
            if waiting.len() >= WAITING_PER_PARTITION_MAX {
                respond(
                    delivery.reply,
                    AskOutcome::Unavailable(format!(
                        "{entity} is being taken over by this node; retry"
                    )),
                );
            } else {
                waiting.push_back((entity, delivery));
            }
            return;
        }
        if let Some(restarts) = self.restarts.get(&entity)
            && let Some(until) = restarts.held_back_until
            && Instant::now() < until
        {
            respond(
                delivery.reply,
                AskOutcome::Unavailable(format!(
                    "{entity} is crash-looping and held back; retry later"
                )),
            );
            return;
        }
        let actor = match self.active.get_mut(&entity) {
            Some(active) => {
                active.referenced = true;
                active.actor.clone()
            }
            None if self.runtime.memory().under_pressure() => {
                metrics::counter!(names::ENTITY_REJECTED_TOTAL, "reason" => "memory pressure")
                    .increment(1);
                respond(
                    delivery.reply,
                    AskOutcome::Unavailable(
                        "the node is under memory pressure and activates no entity; retry later"
                            .into(),
                    ),
                );
                return;
            }
            None => match self.activate(myself, entity.clone()).await {
                Ok(actor) => actor,
                Err(reason) => {
                    respond(delivery.reply, AskOutcome::Unavailable(reason));
                    return;
                }
            },
        };
        if let Err(error) = actor.cast(EntityMsg::Deliver(delivery)) {
            // The actor died after we looked it up; its failure event will clean up. The
            // caller retries with the same message id.
            tracing::debug!(%entity, "entity stopped while a message was on its way");
            if let ractor::MessagingErr::SendErr(EntityMsg::Deliver(delivery)) = error {
                respond(
                    delivery.reply,
                    AskOutcome::Unavailable("the entity is restarting".into()),
                );
            }
        }
    }

    async fn activate(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        entity: EntityId,
    ) -> Result<ActorRef<EntityMsg>, String> {
        let factory = self
            .kinds
            .get(&entity.kind)
            .cloned()
            .ok_or_else(|| format!("unknown kind {}", entity.kind))?;
        let actor = factory
            .spawn(
                entity.clone(),
                self.runtime.clone(),
                myself.clone(),
                myself.get_cell(),
            )
            .await
            .map_err(|error| format!("cannot start {entity}: {error}"))?;
        self.by_actor.insert(actor.get_id(), entity.clone());
        self.clock.push_back(entity.clone());
        if is_reminder_shard(&entity) {
            self.reminder_shards_active += 1;
        }
        self.active.insert(
            entity,
            Active {
                actor: actor.clone(),
                // It is about to get the message that activated it.
                referenced: true,
            },
        );
        let active_max = self.runtime.config().entities.active_max;
        if self.active.len() > active_max {
            self.evict_least_recently_used(self.active.len() - active_max, "capacity");
        }
        self.update_count();
        Ok(actor)
    }

    /// Passivates `count` entities, least recently used first (CLOCK: an entity that got a
    /// message since the hand last passed gets a second chance).
    fn evict_least_recently_used(&mut self, count: usize, reason: &'static str) {
        let mut evicted = 0;
        // Each entity is passed at most twice (once to clear its flag, once to evict).
        let mut steps = 2 * self.clock.len();
        while evicted < count && steps > 0 {
            steps -= 1;
            let Some(entity) = self.clock.pop_front() else {
                break;
            };
            let Some(active) = self.active.get_mut(&entity) else {
                continue; // Passivated meanwhile.
            };
            if std::mem::take(&mut active.referenced) {
                self.clock.push_back(entity);
                continue;
            }
            self.passivate(&entity, reason);
            evicted += 1;
        }
        if self.clock.len() > 2 * self.active.len() + 64 {
            let active = &self.active;
            self.clock.retain(|entity| active.contains_key(entity));
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<EntityId> {
        let entity = self.by_actor.remove(&actor)?;
        if self
            .active
            .get(&entity)
            .is_some_and(|current| current.actor.get_id() == actor)
        {
            self.active.remove(&entity);
            if is_reminder_shard(&entity) {
                self.reminder_shards_active -= 1;
            }
        }
        self.update_count();
        Some(entity)
    }

    async fn entity_failed(&mut self, myself: &ActorRef<ShardMsg>, entity: EntityId, error: &str) {
        let config = &self.runtime.config().entities;
        let period = Duration::from_millis(config.restart_period_ms);
        let restarts_max = config.restarts_max as usize;
        let now = Instant::now();
        let record = self.restarts.entry(entity.clone()).or_insert(Restarts {
            times: Vec::new(),
            held_back_until: None,
        });
        record
            .times
            .retain(|time| now.duration_since(*time) <= period);
        record.times.push(now);
        metrics::counter!(names::ENTITY_RESTARTS_TOTAL, "kind" => entity.kind.clone()).increment(1);
        if record.times.len() > restarts_max {
            tracing::error!(%entity, error, restarts = record.times.len(), period_ms = period.as_millis() as u64,
                "entity keeps failing; holding it back for one restart period");
            record.held_back_until = Some(now + period);
            return;
        }
        tracing::warn!(%entity, error, "entity failed; restarting it from its journal");
        if self.active.contains_key(&entity)
            || self.runtime.view().owner(&entity.kind, &entity.key) != Some(self.runtime.node_id())
        {
            return;
        }
        // Restart eagerly so that work it had in progress resumes without waiting for a message.
        if let Err(reason) = self.activate(myself, entity.clone()).await {
            tracing::error!(%entity, reason, "restart failed");
        }
    }

    fn passivate(&mut self, entity: &EntityId, reason: &'static str) {
        if let Some(active) = self.active.remove(entity) {
            if is_reminder_shard(entity) {
                self.reminder_shards_active -= 1;
            }
            metrics::counter!(names::ENTITY_PASSIVATIONS_TOTAL, "kind" => entity.kind.clone(), "reason" => reason).increment(1);
            let _ = active.actor.cast(EntityMsg::Stop);
            self.update_count();
        }
    }

    /// Passivates every entity this node no longer owns, so the new owner can rehydrate it.
    fn hand_off(&mut self, view: &View) {
        let me = self.runtime.node_id().to_string();
        let moved: Vec<EntityId> = self
            .active
            .keys()
            .filter(|entity| view.owner(&entity.kind, &entity.key) != Some(me.as_str()))
            .cloned()
            .collect();
        if !moved.is_empty() {
            tracing::info!(
                count = moved.len(),
                epoch = view.epoch,
                "handing entities off after a membership change"
            );
        }
        for entity in moved {
            self.passivate(&entity, "handoff");
        }
    }

    /// A partition taken over: deliver what waited. Lost: its entities go, and what waited is
    /// sent on to the owner.
    async fn partition_event(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        event: crate::journal::PartitionEvent,
    ) {
        match event {
            crate::journal::PartitionEvent::Ready { partition, .. } => {
                for (entity, delivery) in self.waiting.remove(&partition).unwrap_or_default() {
                    self.deliver(myself, entity, delivery).await;
                }
            }
            crate::journal::PartitionEvent::Lost { partition, .. } => {
                let journal = self.runtime.node_journal().clone();
                let gone: Vec<EntityId> = self
                    .active
                    .keys()
                    .filter(|entity| journal.partition_of(entity) == partition)
                    .cloned()
                    .collect();
                for entity in gone {
                    self.passivate(&entity, "partition lost");
                }
                for (entity, delivery) in self.waiting.remove(&partition).unwrap_or_default() {
                    let owner = self.runtime.owner_of(&entity.kind, &entity.key);
                    respond(delivery.reply, AskOutcome::NotOwner { owner });
                }
            }
        }
    }

    fn update_count(&self) {
        let active = self.active.len() - self.reminder_shards_active;
        self.active_count.store(active, Ordering::Relaxed);
        metrics::gauge!(names::ENTITIES_ACTIVE).set(active as f64);
    }
}

fn is_reminder_shard(entity: &EntityId) -> bool {
    entity.kind == <crate::reminder::ReminderShard as Entity>::KIND
}
