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
use crate::journal::{Loaded, Record, Snapshot};
use crate::metrics as names;
use crate::runtime::Runtime;

/// Message ids remembered (with their replies) per entity to answer retries.
pub const RECENT_REPLIES_MAX: usize = 4096;

#[derive(RactorMessage)]
pub enum EntityMsg {
    Deliver(Delivery),
    Loaded(Result<Loaded, RuntimeError>),
    Appended(Result<(), RuntimeError>),
    /// To itself: write the open batch now (in-place appends; see `flush`).
    Flush,
    SnapshotDone,
    IdleCheck,
    /// To itself, while its journal is empty: passivate soon if nothing else comes.
    ProbeCheck,
    /// From the shards actor: passivate once pending work is durable.
    Stop,
    /// From the shards actor after a membership change: check that nobody appended past our
    /// head while we could not see them (a partition), and reload if someone did.
    Revalidate,
    /// The answer of that check.
    HeadMoved(bool),
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
    payload: Vec<u8>,
    reply: Vec<u8>,
    ports: Vec<Reply>,
    /// Events the command persisted (0 for a read queued behind an append).
    events: usize,
}

struct Batch<E: Entity> {
    first_seq: u64,
    entries: Vec<Entry>,
    /// Encoded events per entry with events (parallel to the records to write).
    records: Vec<Record>,
    events: Vec<(u64, E::Event)>,
}

impl<E: Entity> Batch<E> {
    fn new(first_seq: u64) -> Self {
        Self {
            first_seq,
            entries: Vec::new(),
            records: Vec::new(),
            events: Vec::new(),
        }
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
    /// Next sequence number to hand out (speculative events included).
    next_seq: u64,
    open: Batch<E>,
    inflight: Option<Batch<E>>,
    /// A `Flush` is in the mailbox.
    flush_queued: bool,
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
            next_seq: 1,
            open: Batch::new(1),
            inflight: None,
            flush_queued: false,
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
            EntityMsg::Loaded(result) => state.loaded(&myself, result?)?,
            EntityMsg::Appended(result) => state.appended(&myself, result),
            EntityMsg::Flush => {
                state.flush_queued = false;
                if state.phase == Phase::Ready {
                    state.write_open_batch(&myself);
                }
            }
            EntityMsg::SnapshotDone => state.snapshot_in_flight = false,
            EntityMsg::IdleCheck => state.idle_check(),
            EntityMsg::ProbeCheck => state.probe_check(&myself),
            EntityMsg::Stop => state.stopping = true,
            EntityMsg::Revalidate => state.revalidate(&myself),
            EntityMsg::HeadMoved(moved) => {
                if moved && state.is_quiet() {
                    tracing::warn!(entity = %state.id, "the journal moved past this entity's head while it could not see the writer; reloading");
                    state.phase = Phase::Loading;
                    state.start_load(&myself);
                }
            }
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
        let journal = self.runtime.journal().clone();
        let id = self.id.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = journal.load(&id).await;
            let _ = myself.cast(EntityMsg::Loaded(result));
        });
    }

    /// Checks for a segment after our durable head (one HEAD request). With appends pending
    /// there is nothing to do: the next append would conflict and reload anyway.
    fn revalidate(&self, myself: &ActorRef<EntityMsg>) {
        if !self.is_quiet() || self.stopping {
            return;
        }
        let journal = self.runtime.journal().clone();
        let id = self.id.clone();
        let next = self.durable_head + 1;
        let myself = myself.clone();
        tokio::spawn(async move {
            let moved = journal.segment_exists(&id, next).await.unwrap_or(false);
            let _ = myself.cast(EntityMsg::HeadMoved(moved));
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
        loaded: Loaded,
    ) -> Result<(), ActorProcessingErr> {
        self.state = E::State::default();
        self.recent = RecentReplies::default();
        if let Some(snapshot) = loaded.snapshot {
            self.state = codec::decode(&snapshot.state, "snapshot state")?;
            for (msg_id, reply) in snapshot.recent_replies {
                self.recent.insert(msg_id, reply);
            }
        }
        for (first_seq, records) in loaded.segments {
            let mut seq = first_seq;
            for record in records {
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
        let reply = self.entity.handle(&self.state, command, &mut context);
        let Context {
            events, passivate, ..
        } = context;
        if passivate {
            self.passivation_requested = true;
        }
        let reply = codec::encode(&reply);
        let entry = Entry {
            msg_id: delivery.msg_id,
            payload: delivery.payload,
            reply,
            ports: delivery.reply.into_iter().collect(),
            events: events.len(),
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
                self.next_seq += 1;
                E::apply(&mut self.state, seq, &event);
                encoded.push(codec::encode(&event));
                self.open.events.push((seq, event));
            }
            self.open.records.push(Record {
                msg_id: entry.msg_id,
                events: encoded,
                reply: entry.reply.clone(),
            });
        }
        self.open.entries.push(entry);
    }

    /// Starts the next append if none is in flight.
    ///
    /// On a local directory the entity writes the segment itself (no task per append), but
    /// not at once: a `Flush` sent to itself goes behind the messages already in its mailbox,
    /// so the commands that arrived meanwhile join this append (group commit).
    fn flush(&mut self, myself: &ActorRef<EntityMsg>) {
        if self.inflight.is_some() || self.open.is_empty() {
            return;
        }
        if !self.runtime.journal().appends_in_place() {
            return self.write_open_batch(myself);
        }
        if !self.flush_queued {
            self.flush_queued = myself.cast(EntityMsg::Flush).is_ok();
        }
    }

    fn write_open_batch(&mut self, myself: &ActorRef<EntityMsg>) {
        if self.inflight.is_some() || self.open.is_empty() {
            return;
        }
        let batch = self.take_open_batch();
        if batch.records.is_empty() {
            // Only reads that queued behind an append that has landed since.
            complete(batch.entries);
            return;
        }
        metrics::histogram!(names::JOURNAL_BATCH_EVENTS).record(batch.events.len() as f64);
        let journal = self.runtime.journal().clone();
        let records = batch.records.clone();
        let first_seq = batch.first_seq;
        self.inflight = Some(batch);
        let reply_to = myself.clone();
        let appended = move |result| {
            let _ = reply_to.cast(EntityMsg::Appended(result));
        };
        if journal.appends_in_place() {
            if let Some(result) = journal.append_in_place(&self.id, first_seq, records, appended) {
                self.appended(myself, result);
            }
            return;
        }
        let id = self.id.clone();
        tokio::spawn(async move {
            appended(journal.append(&id, first_seq, records).await);
        });
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
        };
        self.open.first_seq = rest_first_seq;
        taken
    }

    fn appended(&mut self, myself: &ActorRef<EntityMsg>, result: Result<(), RuntimeError>) {
        let Some(batch) = self.inflight.take() else {
            tracing::error!(entity = %self.id, "append finished with no batch in flight");
            return;
        };
        match result {
            Ok(()) => self.batch_durable(myself, batch),
            Err(RuntimeError::JournalConflict { seq, .. }) => {
                tracing::warn!(entity = %self.id, seq, "another node appended first; reloading the journal");
                self.reload(myself, batch, None);
            }
            Err(error) => {
                tracing::error!(entity = %self.id, %error, "journal append failed; callers will retry");
                let reason = format!("journal unavailable: {error}");
                self.reload(myself, batch, Some(reason));
            }
        }
    }

    fn batch_durable(&mut self, myself: &ActorRef<EntityMsg>, batch: Batch<E>) {
        let Batch {
            events,
            entries,
            records,
            ..
        } = batch;
        let appended = events.len() as u64;
        self.durable_head += appended;
        let mut context = context_for(
            &self.id,
            &self.runtime,
            myself,
            self.next_seq,
            self.durable_head,
            false,
        );
        self.entity.on_durable(&self.state, &events, &mut context);
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

    /// Drops speculative state, reloads, and runs the failed batches again (or fails them).
    fn reload(
        &mut self,
        myself: &ActorRef<EntityMsg>,
        failed: Batch<E>,
        fail_with: Option<String>,
    ) {
        let open = std::mem::replace(&mut self.open, Batch::new(0));
        let entries = failed.entries.into_iter().chain(open.entries);
        let mut retry = VecDeque::new();
        for entry in entries {
            match &fail_with {
                Some(reason) => {
                    for port in entry.ports {
                        port.send(AskOutcome::Unavailable(reason.clone()));
                    }
                }
                None => {
                    // Re-run with the first port; the others are re-attached as duplicates.
                    let mut ports = entry.ports.into_iter();
                    retry.push_back(Delivery {
                        msg_id: entry.msg_id,
                        payload: entry.payload,
                        reply: ports.next(),
                    });
                    for port in ports {
                        retry.push_back(Delivery {
                            msg_id: entry.msg_id,
                            payload: Vec::new(),
                            reply: Some(port),
                        });
                    }
                }
            }
        }
        retry.extend(self.stash.drain(..));
        self.stash = retry;
        self.phase = Phase::Loading;
        self.start_load(myself);
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
        };
        let journal = self.runtime.journal().clone();
        let id = self.id.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            match journal.save_snapshot(&id, &snapshot).await {
                Ok(()) => metrics::counter!(names::SNAPSHOTS_TOTAL).increment(1),
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
