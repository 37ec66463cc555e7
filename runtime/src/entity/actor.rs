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

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;

use crate::codec;
use crate::entity::reply::respond;
use crate::entity::shards::{Delivery, ShardMsg};
use crate::entity::{AskOutcome, Context, Entity, Reply};
use crate::error::RuntimeError;
use crate::id::{EntityId, MsgId};
use crate::journal::{AppendError, Loaded, Record, Snapshot};
use crate::metrics as names;
use crate::runtime::Runtime;

/// Message ids remembered (with their replies) per entity to answer retries.
pub const RECENT_REPLIES_MAX: usize = 4096;

#[derive(RactorMessage)]
pub enum EntityMsg {
    Deliver(Delivery),
    Loaded(Result<(u64, Loaded), RuntimeError>),
    Appended(Result<(), AppendError>),
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

impl<E: Entity> EntityState<E> {
    fn start_load(&self, myself: &ActorRef<EntityMsg>) {
        let journal = self.runtime.node_journal().clone();
        let id = self.id.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = journal.load(&id).await;
            let _ = myself.cast(EntityMsg::Loaded(result));
        });
    }

    fn pending_count(&self) -> usize {
        self.stash.len()
            + self.open.entries.len()
            + self
                .inflight
                .as_ref()
                .map_or(0, |batch| batch.entries.len())
    }

    fn is_quiet(&self) -> bool {
        self.phase == Phase::Ready
            && self.inflight.is_none()
            && self.open.is_empty()
            && self.stash.is_empty()
    }

    fn stash_or_shed(&mut self, delivery: Delivery) {
        if self.pending_count() >= self.runtime.config().entities.pending_commands_max {
            shed(delivery.reply, &self.id);
            return;
        }
        self.stash.push_back(delivery);
    }

    /// Rebuilds the state from the journal, then runs what waited.
    fn loaded(
        &mut self,
        myself: &ActorRef<EntityMsg>,
        epoch: u64,
        loaded: Loaded,
    ) -> Result<(), ActorProcessingErr> {
        self.epoch = epoch;
        self.state = E::State::default();
        self.recent = RecentReplies::default();
        if let Some(snapshot) = loaded.snapshot {
            check_schema::<E>(&self.id, snapshot.schema)?;
            self.state = codec::decode(&snapshot.state, "snapshot state")?;
            for (msg_id, reply) in snapshot.recent_replies {
                self.recent.insert(msg_id, reply);
            }
        }
        for (first_seq, records) in loaded.segments {
            let mut seq = first_seq;
            for record in records {
                check_schema::<E>(&self.id, record.schema)?;
                for bytes in &record.events {
                    let event: E::Event = codec::decode(bytes, "journal event")?;
                    E::apply(&mut self.state, seq, &event);
                    seq += 1;
                }
                if let Some(msg_id) = record.msg_id {
                    self.recent.insert(msg_id, record.reply);
                }
            }
        }
        self.durable_head = loaded.head;
        self.next_seq = loaded.head + 1;
        if self.journal_is_empty() {
            // Probably activated by a probe (a join of a room that does not exist): check for
            // idleness soon rather than at the next regular check.
            let probe_after =
                Duration::from_millis(self.runtime.config().entities.probe_passivate_after_ms);
            myself.send_after(probe_after, || EntityMsg::ProbeCheck);
        }
        self.open = Batch::new(self.next_seq);
        self.events_since_snapshot = 0;
        let view = self.runtime.view();
        if view.owner(&self.id.kind, &self.id.key) != Some(self.runtime.node_id()) {
            // Placement moved while we were loading (or we lost a race): let the owner serve.
            let owner = view.owner(&self.id.kind, &self.id.key).map(str::to_string);
            for delivery in self.stash.drain(..) {
                respond(
                    delivery.reply,
                    AskOutcome::NotOwner {
                        owner: owner.clone(),
                    },
                );
            }
            self.stopping = true;
            self.phase = Phase::Ready;
            return Ok(());
        }
        self.phase = Phase::Ready;
        let mut context = context_for(
            &self.id,
            &self.runtime,
            myself,
            self.next_seq,
            self.durable_head,
            true,
        );
        self.entity.on_ready(&self.state, &mut context);
        assert!(
            context.events.is_empty(),
            "{}: on_ready must not persist; send a command with context.spawn",
            self.id
        );
        if context.passivate {
            self.passivation_requested = true;
        }
        while let Some(delivery) = self.stash.pop_front() {
            self.process(myself, delivery);
            if self.phase == Phase::Loading {
                break;
            }
        }
        Ok(())
    }

    fn process(&mut self, myself: &ActorRef<EntityMsg>, mut delivery: Delivery) {
        let span = std::mem::replace(&mut delivery.span, tracing::Span::none());
        metrics::counter!(names::ENTITY_MESSAGES_TOTAL, "kind" => E::KIND).increment(1);
        if let Some(msg_id) = delivery.msg_id {
            if let Some(reply) = self.recent.get(&msg_id) {
                metrics::counter!(names::ENTITY_DUPLICATES_TOTAL, "kind" => E::KIND).increment(1);
                respond(delivery.reply, AskOutcome::Reply(reply.clone()));
                return;
            }
            if let Some(entry) = self.pending_entry(msg_id) {
                // The same message again while the first copy is still being journaled.
                metrics::counter!(names::ENTITY_DUPLICATES_TOTAL, "kind" => E::KIND).increment(1);
                entry.ports.extend(delivery.reply.take());
                return;
            }
        }
        if self.pending_count() >= self.runtime.config().entities.pending_commands_max {
            shed(delivery.reply, &self.id);
            return;
        }
        let command: E::Command = match codec::decode(&delivery.payload, "entity command") {
            Ok(command) => command,
            Err(error) => {
                reject(delivery.reply, &self.id, &error.to_string());
                return;
            }
        };
        let mut context = context_for(
            &self.id,
            &self.runtime,
            myself,
            self.next_seq,
            self.durable_head,
            true,
        );
        // What the entity does (its logs, its own asks) belongs to the command's trace.
        let reply = span.in_scope(|| self.entity.handle(&self.state, command, &mut context));
        let Context {
            events, passivate, ..
        } = context;
        if passivate {
            self.passivation_requested = true;
        }
        let reply = codec::encode(&reply);
        let entry = Entry {
            msg_id: delivery.msg_id,
            reply,
            ports: delivery.reply.into_iter().collect(),
            events: events.len(),
            span,
        };
        if events.is_empty() && self.inflight.is_none() && self.open.is_empty() {
            // Read-only and nothing pending before it: answer now.
            for port in entry.ports {
                port.send(AskOutcome::Reply(entry.reply.clone()));
            }
            return;
        }
        self.add_to_open_batch(entry, events);
        self.flush(myself);
    }

    fn pending_entry(&mut self, msg_id: MsgId) -> Option<&mut Entry> {
        let inflight = self
            .inflight
            .iter_mut()
            .flat_map(|batch| batch.entries.iter_mut());
        inflight
            .chain(self.open.entries.iter_mut())
            .find(|entry| entry.msg_id == Some(msg_id))
    }

    fn add_to_open_batch(&mut self, entry: Entry, events: Vec<E::Event>) {
        if !events.is_empty() {
            let mut encoded = Vec::with_capacity(events.len());
            for event in events {
                let seq = self.next_seq;
                // The open batch holds consecutive seqs from its first: the journal writes
                // them at exactly these numbers.
                assert_eq!(
                    seq,
                    self.open.first_seq + self.open.events.len() as u64,
                    "{}: an event outside the open batch's sequence",
                    self.id
                );
                self.next_seq += 1;
                E::apply(&mut self.state, seq, &event);
                encoded.push(codec::encode(&event));
                self.open.events.push((seq, event));
            }
            self.open.records.push(Record {
                msg_id: entry.msg_id,
                events: encoded,
                reply: entry.reply.clone(),
                schema: E::SCHEMA,
            });
        }
        self.open.entries.push(entry);
    }

    /// Starts the next append if none is in flight: into the node log, whose flush holds it
    /// together with every other entity's appends of that moment.
    fn flush(&mut self, myself: &ActorRef<EntityMsg>) {
        if self.inflight.is_some() || self.open.is_empty() {
            return;
        }
        let batch = self.take_open_batch();
        if batch.records.is_empty() {
            // Only reads that queued behind an append that has landed since.
            complete(batch.entries);
            return;
        }
        let records = batch.records.clone();
        let first_seq = batch.first_seq;
        let mut batch = batch;
        batch.span = crate::trace::append_span(
            &self.id,
            records.len(),
            batch.entries.iter().map(|entry| &entry.span),
        );
        // One append in flight at a time, each starting right after what is durable: the node
        // log accepts an append only at the entity's head.
        assert_eq!(
            first_seq,
            self.durable_head + 1,
            "{}: a batch must start right after the durable head",
            self.id
        );
        self.inflight = Some(batch);
        let reply_to = myself.clone();
        self.runtime.node_journal().append(
            &self.id,
            self.epoch,
            first_seq,
            records,
            move |result| {
                let _ = reply_to.cast(EntityMsg::Appended(result));
            },
        );
    }

    /// The front of the open batch, at most `entities.batch_events_max` events (and at least
    /// one command); the rest stays open for the next append.
    fn take_open_batch(&mut self) -> Batch<E> {
        let events_max = self.runtime.config().entities.batch_events_max;
        let mut events = 0;
        let mut commands = 0;
        for entry in &self.open.entries {
            if commands > 0 && events + entry.events > events_max {
                break;
            }
            events += entry.events;
            commands += 1;
        }
        if commands == self.open.entries.len() {
            return std::mem::replace(&mut self.open, Batch::new(self.next_seq));
        }
        let records = self.open.entries[..commands]
            .iter()
            .filter(|entry| entry.events > 0)
            .count();
        let first_seq = self.open.first_seq;
        let rest_first_seq = first_seq + events as u64;
        let taken = Batch {
            first_seq,
            entries: self.open.entries.drain(..commands).collect(),
            records: self.open.records.drain(..records).collect(),
            events: self.open.events.drain(..events).collect(),
            span: tracing::Span::none(),
        };
        self.open.first_seq = rest_first_seq;
        taken
    }

    fn appended(&mut self, myself: &ActorRef<EntityMsg>, result: Result<(), AppendError>) {
        let Some(batch) = self.inflight.take() else {
            tracing::error!(entity = %self.id, "append finished with no batch in flight");
            return;
        };
        match result {
            Ok(()) => self.batch_durable(myself, batch),
            Err(AppendError::Conflict) => {
                // Another activation of this entity loaded it since (this one is stale):
                // reload, and let callers retry with the same message ids.
                tracing::warn!(entity = %self.id, "the journal moved past this activation; reloading");
                self.inflight = Some(batch);
                self.fail_all_pending(|| {
                    AskOutcome::Unavailable("the entity is reloading; retry".into())
                });
                self.phase = Phase::Loading;
                self.start_load(myself);
            }
            Err(AppendError::NotOwner) => {
                // Another node took the partition over: what was not acknowledged is the
                // new owner's to decide (askers retry there with the same message ids).
                tracing::info!(entity = %self.id, "the partition moved to another node; passivating");
                self.inflight = Some(batch);
                self.fail_all_pending(|| {
                    AskOutcome::Unavailable("the entity moved to another node; retry".into())
                });
                self.stopping = true;
                self.request_passivation(myself);
            }
        }
    }

    fn batch_durable(&mut self, myself: &ActorRef<EntityMsg>, batch: Batch<E>) {
        // The append is durable: its span ends; what follows (broadcasts) belongs to the
        // batch's first traced command.
        let lead_span = batch
            .lead_span()
            .cloned()
            .unwrap_or_else(tracing::Span::none);
        let Batch {
            events,
            entries,
            records,
            span: append_span,
            ..
        } = batch;
        drop(append_span);
        let appended = events.len() as u64;
        if let (Some((first, _)), Some((last, _))) = (events.first(), events.last()) {
            assert!(
                *first == self.durable_head + 1 && *last == self.durable_head + appended,
                "{}: durable events {first}..={last} do not continue the durable head {}",
                self.id,
                self.durable_head
            );
        }
        self.durable_head += appended;
        assert!(
            self.durable_head < self.next_seq,
            "{}: durable head {} at or beyond the next seq {}",
            self.id,
            self.durable_head,
            self.next_seq
        );
        let mut context = context_for(
            &self.id,
            &self.runtime,
            myself,
            self.next_seq,
            self.durable_head,
            false,
        );
        lead_span.in_scope(|| self.entity.on_durable(&self.state, &events, &mut context));
        let passivate = context.passivate;
        for record in records {
            if let Some(msg_id) = record.msg_id {
                self.recent.insert(msg_id, record.reply);
            }
        }
        complete(entries);
        self.passivation_requested |= passivate;
        self.events_since_snapshot += appended;
        self.maybe_snapshot(myself);
        self.flush(myself);
        if self.passivation_requested && self.is_quiet() {
            self.request_passivation(myself);
        }
    }

    fn maybe_snapshot(&mut self, myself: &ActorRef<EntityMsg>) {
        let every = self.runtime.config().entities.snapshot_every_events;
        if self.snapshot_in_flight
            || self.events_since_snapshot < every
            || self.open.records.len() + self.inflight.iter().count() > 0
        {
            return;
        }
        self.snapshot_in_flight = true;
        self.events_since_snapshot = 0;
        let snapshot = Snapshot {
            seq: self.durable_head,
            state: codec::encode(&self.state),
            recent_replies: self.recent.to_vec(),
            schema: E::SCHEMA,
        };
        let journal = self.runtime.journal().clone();
        let id = self.id.clone();
        let myself = myself.clone();
        // Retention: segments the snapshot stands in for, beyond what the kind keeps.
        let keep = self
            .runtime
            .config()
            .journal
            .retain_events
            .get(E::KIND)
            .copied();
        let through = keep.map(|keep| snapshot.seq.min(self.durable_head.saturating_sub(keep)));
        tokio::spawn(async move {
            match journal.save_snapshot(&id, &snapshot).await {
                Ok(()) => {
                    metrics::counter!(names::SNAPSHOTS_TOTAL).increment(1);
                    if let Some(through) = through.filter(|through| *through > 0)
                        && let Err(error) = journal.delete_through(&id, through).await
                    {
                        tracing::debug!(entity = %id, %error, "retention could not delete old segments; next snapshot retries");
                    }
                }
                Err(error) => {
                    tracing::warn!(entity = %id, %error, "snapshot failed; replay will be longer")
                }
            }
            let _ = myself.cast(EntityMsg::SnapshotDone);
        });
    }

    /// Nothing was ever journaled: the entity holds no durable state, so keeping it active
    /// only costs memory.
    fn journal_is_empty(&self) -> bool {
        self.durable_head == 0 && self.next_seq == 1
    }

    fn idle_check(&mut self) {
        let idle_after = Duration::from_millis(self.runtime.config().entities.passivate_after_ms);
        if self.last_activity.elapsed() >= idle_after {
            self.passivate_when_quiet("idle");
        }
    }

    /// An entity whose journal is still empty passivates after the (short) probe timeout.
    fn probe_check(&mut self, myself: &ActorRef<EntityMsg>) {
        if !self.journal_is_empty() || self.stopping {
            return;
        }
        let probe_after =
            Duration::from_millis(self.runtime.config().entities.probe_passivate_after_ms);
        let idle_for = self.last_activity.elapsed();
        if idle_for >= probe_after && self.is_quiet() {
            self.passivate_when_quiet("probe");
        } else {
            myself.send_after(
                probe_after
                    .saturating_sub(idle_for)
                    .max(Duration::from_millis(10)),
                || EntityMsg::ProbeCheck,
            );
        }
    }

    fn passivate_when_quiet(&mut self, reason: &'static str) {
        if !self.stopping && self.is_quiet() {
            self.passivation_requested = true;
            let _ = self.shards.cast(ShardMsg::Passivate {
                entity: self.id.clone(),
                reason,
            });
        }
    }

    fn request_passivation(&mut self, _myself: &ActorRef<EntityMsg>) {
        let _ = self.shards.cast(ShardMsg::Passivate {
            entity: self.id.clone(),
            reason: "requested",
        });
    }

    fn fail_all_pending(&mut self, outcome: impl Fn() -> AskOutcome) {
        let inflight = self
            .inflight
            .take()
            .into_iter()
            .flat_map(|batch| batch.entries);
        let open = std::mem::replace(&mut self.open, Batch::new(0)).entries;
        for entry in inflight.chain(open) {
            for port in entry.ports {
                port.send(outcome());
            }
        }
        for delivery in self.stash.drain(..) {
            respond(delivery.reply, outcome());
        }
    }
}

/// A context borrowing only the fields it needs, so the entity itself can be borrowed mutably.
fn context_for<'a, E: Entity>(
    entity: &'a EntityId,
    runtime: &'a Runtime,
    myself: &'a ActorRef<EntityMsg>,
    next_seq: u64,
    durable_head: u64,
    persist_allowed: bool,
) -> Context<'a, E> {
    Context {
        entity,
        runtime,
        myself,
        next_seq,
        durable_head,
        events: Vec::new(),
        persist_allowed,
        passivate: false,
    }
}

fn complete(entries: Vec<Entry>) {
    for entry in entries {
        for port in entry.ports {
            port.send(AskOutcome::Reply(entry.reply.clone()));
        }
    }
}

fn reject(port: Option<Reply>, entity: &EntityId, reason: &str) {
    metrics::counter!(names::ENTITY_REJECTED_TOTAL, "reason" => "invalid").increment(1);
    tracing::debug!(%entity, reason, "message rejected");
    respond(port, AskOutcome::Rejected(reason.to_string()));
}

/// Load shedding: a temporary refusal, so askers back off and retry with the same id.
fn shed(port: Option<Reply>, entity: &EntityId) {
    metrics::counter!(names::ENTITY_REJECTED_TOTAL, "reason" => "overloaded").increment(1);
    tracing::debug!(%entity, "shedding load: too many pending commands");
    respond(
        port,
        AskOutcome::Unavailable("overloaded: too many pending commands; retry later".to_string()),
    );
}

/// Refuses what a newer build wrote: its events may mean something this one cannot apply.
fn check_schema<E: Entity>(entity: &EntityId, schema: u32) -> Result<(), ActorProcessingErr> {
    if schema > E::SCHEMA {
        return Err(format!(
            "{entity}: the journal holds schema {schema}, this build knows {} of kind {}; run a newer build",
            E::SCHEMA,
            E::KIND
        )
        .into());
    }
    Ok(())
}
