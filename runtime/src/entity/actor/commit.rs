//! The path of a command through the entity actor: the journal loaded into the state, dedup
//! by message id, load shedding, the command handled into the open batch, one append in flight
//! (group commit), and the replies and `on_durable` once it is durable.

use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};

use super::{Batch, EntityMsg, EntityState, Entry, Phase, RecentReplies};
use crate::codec;
use crate::entity::reply::respond;
use crate::entity::shards::{Delivery, DeliveryKind};
use crate::entity::{AskOutcome, Context, Entity, Reply};
use crate::id::{EntityId, MsgId};
use crate::journal::{AppendError, Loaded, Record};
use crate::metrics as names;
use crate::reminder::{Reminder, ReminderOp};
use crate::runtime::Runtime;

/// A delivery's payload, decoded.
enum Input<E: Entity> {
    Command(E::Command),
    Reminder(Reminder),
}

impl<E: Entity> EntityState<E> {
    pub(super) fn start_load(&self, myself: &ActorRef<EntityMsg>) {
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

    pub(super) fn is_quiet(&self) -> bool {
        self.phase == Phase::Ready
            && self.inflight.is_none()
            && self.open.is_empty()
            && self.stash.is_empty()
    }

    pub(super) fn stash_or_shed(&mut self, delivery: Delivery) {
        if self.pending_count() >= self.runtime.config().entities.pending_commands_max {
            shed(delivery.reply, &self.id);
            return;
        }
        self.stash.push_back(delivery);
    }

    /// Rebuilds the state from the journal, then runs what waited.
    pub(super) fn loaded(
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
        assert!(
            context.reminder_ops.is_empty(),
            "{}: on_ready must not remind or forget; send a command with context.spawn",
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

    pub(super) fn process(&mut self, myself: &ActorRef<EntityMsg>, mut delivery: Delivery) {
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
        let input = match delivery.kind {
            DeliveryKind::Command => {
                codec::decode::<E::Command>(&delivery.payload, "entity command")
                    .map(Input::<E>::Command)
            }
            DeliveryKind::Reminder => {
                codec::decode::<Reminder>(&delivery.payload, "reminder").map(Input::<E>::Reminder)
            }
        };
        let input = match input {
            Ok(input) => input,
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
        let reply = span.in_scope(|| match input {
            Input::Command(command) => {
                codec::encode(&self.entity.handle(&self.state, command, &mut context))
            }
            Input::Reminder(reminder) => {
                self.entity
                    .on_reminder(&self.state, &reminder, &mut context);
                // The shard only needs to know the firing is durable.
                Vec::new()
            }
        });
        let Context {
            events,
            passivate,
            reminder_ops,
            ..
        } = context;
        if passivate {
            self.passivation_requested = true;
        }
        let entry = Entry {
            msg_id: delivery.msg_id,
            reply,
            ports: delivery.reply.into_iter().collect(),
            events: events.len(),
            span,
            reminder_ops,
        };
        if events.is_empty()
            && entry.reminder_ops.is_empty()
            && self.inflight.is_none()
            && self.open.is_empty()
        {
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
        let mut batch = self.take_open_batch();
        let reminder_ops: Vec<ReminderOp> = batch
            .entries
            .iter_mut()
            .flat_map(|entry| std::mem::take(&mut entry.reminder_ops))
            .collect();
        if batch.records.is_empty() && reminder_ops.is_empty() {
            // Only reads that queued behind an append that has landed since.
            complete(batch.entries);
            return;
        }
        let records = batch.records.clone();
        let first_seq = batch.first_seq;
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
        if !reminder_ops.is_empty() {
            // The reminders first: an acknowledged command's reminders always exist.
            crate::reminder::register::register_then_append(
                self.runtime.clone(),
                self.id.clone(),
                self.epoch,
                first_seq,
                records,
                reminder_ops,
                reply_to,
            );
            return;
        }
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

    pub(super) fn appended(
        &mut self,
        myself: &ActorRef<EntityMsg>,
        result: Result<(), AppendError>,
    ) {
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

    /// The batch in flight could not register its reminders: nothing of it was appended.
    /// Its callers get `outcome`; as after a conflict, the state (which holds its events
    /// already) is rebuilt from the journal and everything else pending retries.
    pub(super) fn reminders_failed(&mut self, myself: &ActorRef<EntityMsg>, outcome: AskOutcome) {
        let Some(batch) = self.inflight.take() else {
            tracing::error!(entity = %self.id, "a reminder registration failed with no batch in flight");
            return;
        };
        tracing::warn!(entity = %self.id, ?outcome, "a batch's reminders could not be registered; failing it and reloading");
        for entry in batch.entries {
            for port in entry.ports {
                port.send(outcome.clone());
            }
        }
        self.fail_all_pending(|| AskOutcome::Unavailable("the entity is reloading; retry".into()));
        self.phase = Phase::Loading;
        self.start_load(myself);
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
        reminder_ops: Vec::new(),
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
