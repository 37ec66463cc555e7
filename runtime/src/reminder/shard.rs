//! [`ReminderShard`], the built-in entity kind `sys.reminders`: the durable reminders of the
//! entities of one bucket of one partition, and the firing of those that are due.
//!
//! Registrations come from the commit path of the entities it serves (`register.rs`), before
//! their own events are appended. One timer (a `Tick` command after a sleep) is armed for the
//! earliest due time, again only when that moves earlier. On a tick the shard fires what is
//! due (never earlier) into each target's `on_reminder`, at most `reminders.in_flight_max` at
//! once and one token of the node's bucket each; once a target has acknowledged a firing, the
//! shard journals `Fired`, which removes the reminder or moves a periodic one on. A firing that
//! fails is retried with backoff: at least once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fire::{self, FireOutcome};
pub use super::state::ShardState;
use super::state::next_due_after;
use super::{Reminder, ReminderOp};
use crate::clock::unix_ms;
use crate::entity::{Context, Entity, Request};
use crate::id::EntityId;
use crate::metrics as names;

/// First pause before a failed firing is retried; it doubles up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Due reminders counted for the backlog gauge per shard: the count is a gauge, not a scan of
/// a large backlog on every tick.
const BACKLOG_COUNTED_MAX: usize = 1_000;

/// A reminder shard (`sys.reminders`). Its key names its partition and bucket.
pub struct ReminderShard {
    key: String,
    /// Firings delivered and not yet recorded (a success stays here until its `Fired` is
    /// durable, so that it is not fired again meanwhile).
    in_flight: HashSet<(EntityId, String)>,
    /// Failed firings: attempts so far and when the next may start (unix ms).
    retries: HashMap<(EntityId, String), (u32, u64)>,
    /// The earliest tick already scheduled (unix ms); a later need arms nothing new.
    armed_for_ms: Option<u64>,
}

/// The shard's commands. Append-only (peers and journals decode them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Registrations and removals of one entity's committing batch, in order.
    Register(Vec<ReminderOp>),
    /// From the node while it holds the shard's partition: be active, keep the timer armed.
    Wake,
    /// From the shard's own timer: fire what is due.
    Tick,
    /// From a firing the shard started: how it ended.
    Fired {
        entity: EntityId,
        name: String,
        due_ms: u64,
        outcome: FireOutcome,
    },
}

/// The shard's events. Append-only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardEvent {
    Registered {
        entity: EntityId,
        reminder: Reminder,
    },
    Forgotten {
        entity: EntityId,
        name: String,
    },
    /// The firing due at `due_ms` was acknowledged: the reminder goes, or is due again at
    /// `next_due_ms`.
    Fired {
        entity: EntityId,
        name: String,
        due_ms: u64,
        next_due_ms: Option<u64>,
    },
}

/// `Err` says why a registration was refused (the shard is full, a reminder of another shard).
pub type ShardReply = Result<(), String>;

impl Request<ReminderShard> for ShardCommand {
    type Reply = ShardReply;

    fn into_command(self) -> ShardCommand {
        self
    }

    fn from_reply(reply: ShardReply) -> Option<ShardReply> {
        Some(reply)
    }
}

impl Entity for ReminderShard {
    const KIND: &'static str = "sys.reminders";
    type Command = ShardCommand;
    type Reply = ShardReply;
    type Event = ShardEvent;
    type State = ShardState;
    type Deps = ();

    fn activate(key: &str, _deps: &()) -> Self {
        Self {
            key: key.to_string(),
            in_flight: HashSet::new(),
            retries: HashMap::new(),
            armed_for_ms: None,
        }
    }

    fn apply(state: &mut ShardState, _seq: u64, event: &ShardEvent) {
        match event {
            ShardEvent::Registered { entity, reminder } => state.upsert(entity, reminder),
            ShardEvent::Forgotten { entity, name } => state.remove(entity, name),
            ShardEvent::Fired {
                entity,
                name,
                due_ms,
                next_due_ms,
            } => state.fired(entity, name, *due_ms, *next_due_ms),
        }
    }

    fn handle(
        &mut self,
        state: &ShardState,
        command: ShardCommand,
        context: &mut Context<'_, Self>,
    ) -> ShardReply {
        match command {
            ShardCommand::Register(ops) => self.register(state, ops, context),
            ShardCommand::Wake => {
                self.report(state, context, true);
                self.fire_due(state, context);
                Ok(())
            }
            ShardCommand::Tick => {
                if self.armed_for_ms.is_some_and(|armed| armed <= unix_ms()) {
                    self.armed_for_ms = None;
                }
                self.report(state, context, true);
                self.fire_due(state, context);
                Ok(())
            }
            ShardCommand::Fired {
                entity,
                name,
                due_ms,
                outcome,
            } => {
                self.fired(state, entity, name, due_ms, outcome, context);
                Ok(())
            }
        }
    }

    fn on_durable(
        &mut self,
        state: &ShardState,
        events: &[(u64, ShardEvent)],
        context: &mut Context<'_, Self>,
    ) {
        for (_, event) in events {
            if let ShardEvent::Fired { entity, name, .. } = event {
                self.in_flight.remove(&(entity.clone(), name.clone()));
            }
        }
        self.report(state, context, false);
        self.fire_due(state, context);
    }

    fn on_ready(&mut self, state: &ShardState, context: &mut Context<'_, Self>) {
        // A reload (after a conflict) forgets what was in flight: firing it again is safe
        // (the target answers a repeated firing from its journal).
        self.in_flight.clear();
        self.armed_for_ms = None;
        self.report(state, context, true);
        self.fire_due(state, context);
    }
}

impl ReminderShard {
    fn register(
        &mut self,
        state: &ShardState,
        ops: Vec<ReminderOp>,
        context: &mut Context<'_, Self>,
    ) -> ShardReply {
        let reminders = context.runtime().reminders();
        if let Some(stranger) = ops
            .iter()
            .find(|op| reminders.shard_of(op.entity()) != self.key)
        {
            return Err(format!(
                "the reminders of {} belong to shard {}, not {}",
                stranger.entity(),
                reminders.shard_of(stranger.entity()),
                self.key
            ));
        }
        let mut added = HashSet::new();
        for op in &ops {
            if let ReminderOp::Upsert { entity, reminder } = op
                && !state.contains(entity, &reminder.name)
            {
                added.insert((entity, reminder.name.as_str()));
            }
        }
        let per_shard_max = context.runtime().config().reminders.per_shard_max;
        if state.len() + added.len() > per_shard_max {
            metrics::counter!(names::REMINDERS_REFUSED_TOTAL).increment(1);
            return Err(format!(
                "reminder shard {} holds {} reminders; {} more would pass reminders.per_shard_max = {per_shard_max}",
                self.key,
                state.len(),
                added.len()
            ));
        }
        let mut earliest: Option<u64> = None;
        for op in ops {
            match op {
                ReminderOp::Upsert { entity, reminder } => {
                    earliest = Some(earliest.map_or(reminder.due_ms, |e| e.min(reminder.due_ms)));
                    // A new due time: a failed firing of the old one is no longer retried.
                    self.retries
                        .remove(&(entity.clone(), reminder.name.clone()));
                    context.persist(ShardEvent::Registered { entity, reminder });
                }
                ReminderOp::Forget { entity, name } => {
                    self.retries.remove(&(entity.clone(), name.clone()));
                    context.persist(ShardEvent::Forgotten { entity, name });
                }
            }
        }
        // Firing waits for the events to be durable (`on_durable` looks again); only the
        // timer is armed here, for a new earliest due time.
        if let Some(earliest) = earliest {
            self.arm(earliest, context);
        }
        Ok(())
    }

    fn fired(
        &mut self,
        state: &ShardState,
        entity: EntityId,
        name: String,
        due_ms: u64,
        outcome: FireOutcome,
        context: &mut Context<'_, Self>,
    ) {
        let key = (entity, name);
        let now = unix_ms();
        match outcome {
            FireOutcome::Delivered | FireOutcome::Refused(_) => {
                if let FireOutcome::Refused(reason) = &outcome {
                    tracing::warn!(entity = %key.0, name = %key.1, reason, "a reminder's target refused it; dropping the reminder");
                } else {
                    metrics::counter!(names::REMINDERS_FIRED_TOTAL).increment(1);
                    metrics::histogram!(names::REMINDER_LATENESS_SECONDS)
                        .record(now.saturating_sub(due_ms) as f64 / 1000.0);
                }
                self.retries.remove(&key);
                let (entity, name) = key;
                match state.get(&entity, &name) {
                    Some(schedule) if schedule.due_ms == due_ms => {
                        let next_due_ms = match (&outcome, schedule.period_ms) {
                            (FireOutcome::Delivered, Some(period_ms)) => {
                                Some(next_due_after(due_ms, period_ms, now))
                            }
                            _ => None,
                        };
                        // Stays in flight until this is durable (see `on_durable`).
                        context.persist(ShardEvent::Fired {
                            entity,
                            name,
                            due_ms,
                            next_due_ms,
                        });
                    }
                    // Forgotten or registered again meanwhile: nothing to record.
                    _ => {
                        self.in_flight.remove(&(entity, name));
                        self.fire_due(state, context);
                    }
                }
            }
            FireOutcome::Failed(reason) => {
                self.in_flight.remove(&key);
                let attempts = self.retries.get(&key).map_or(0, |(attempts, _)| *attempts) + 1;
                let backoff = RETRY_BACKOFF_MIN
                    .saturating_mul(1 << attempts.min(16))
                    .min(RETRY_BACKOFF_MAX);
                let retry_at = now + backoff.as_millis() as u64;
                tracing::debug!(entity = %key.0, name = %key.1, attempts, reason, "a reminder's firing failed; retrying");
                metrics::counter!(names::REMINDER_FIRE_RETRIES_TOTAL).increment(1);
                self.retries.insert(key, (attempts, retry_at));
                self.arm(retry_at, context);
                self.fire_due(state, context);
            }
        }
    }

    /// Starts the firing of what is due, within the in-flight bound and the node's rate; arms
    /// the timer for what must wait.
    fn fire_due(&mut self, state: &ShardState, context: &mut Context<'_, Self>) {
        let runtime = context.runtime().clone();
        let config = &runtime.config().reminders;
        let now = unix_ms();
        let mut wake_at: Option<u64> = None;
        for (due_ms, entity, name) in state.by_due() {
            if due_ms > now {
                wake_at = Some(wake_at.map_or(due_ms, |at| at.min(due_ms)));
                break;
            }
            if self.in_flight.len() >= config.in_flight_max {
                // A firing ending looks again.
                break;
            }
            let key = (entity.clone(), name.to_string());
            if self.in_flight.contains(&key) {
                continue;
            }
            if let Some((_, retry_at)) = self.retries.get(&key)
                && *retry_at > now
            {
                continue; // Its retry timer is armed.
            }
            if let Err(wait) = runtime.reminders().try_take_token() {
                let at = now + wait.as_millis() as u64;
                wake_at = Some(wake_at.map_or(at, |earlier| earlier.min(at)));
                break;
            }
            let Some(schedule) = state.get(entity, name) else {
                continue;
            };
            self.in_flight.insert(key);
            let reminder = Reminder {
                name: name.to_string(),
                due_ms,
                period_ms: schedule.period_ms,
            };
            let target = entity.clone();
            let timeout = Duration::from_millis(config.fire_timeout_ms);
            let runtime = runtime.clone();
            context.spawn(async move {
                let outcome = fire::deliver(&runtime, &target, &reminder, timeout).await;
                ShardCommand::Fired {
                    entity: target,
                    name: reminder.name,
                    due_ms: reminder.due_ms,
                    outcome,
                }
            });
        }
        if let Some(at) = wake_at {
            self.arm(at, context);
        }
    }

    /// Schedules a `Tick` at `at_ms` unless one is already pending at or before it (a tick
    /// whose time has passed no longer counts: it may have been shed with a full mailbox).
    fn arm(&mut self, at_ms: u64, context: &mut Context<'_, Self>) {
        let now = unix_ms();
        if self
            .armed_for_ms
            .is_some_and(|armed| armed <= at_ms && armed > now)
        {
            return;
        }
        self.armed_for_ms = Some(at_ms);
        // One millisecond more: the sleep and the wall clock do not quite agree, and a tick
        // that comes early only arms again.
        let sleep = Duration::from_millis(at_ms.saturating_sub(now) + 1);
        context.spawn(async move {
            tokio::time::sleep(sleep).await;
            ShardCommand::Tick
        });
    }

    fn report(&self, state: &ShardState, context: &Context<'_, Self>, count_backlog: bool) {
        let backlog = count_backlog.then(|| state.due_count(unix_ms(), BACKLOG_COUNTED_MAX));
        context
            .runtime()
            .reminders()
            .report(&self.key, state.len(), backlog);
    }
}
