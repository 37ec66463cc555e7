//! A reminder shard's durable state: its reminders by (entity, name), and an index of them by
//! due time, rebuilt on load (only the reminders are journaled and snapshotted).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Reminder;
use crate::id::EntityId;

/// When a stored reminder is due next and how it repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub due_ms: u64,
    pub period_ms: Option<u64>,
}

/// The reminders of one shard.
#[derive(Debug, Default)]
pub struct ShardState {
    reminders: BTreeMap<(EntityId, String), Schedule>,
    /// `(due_ms, entity, name)` of every reminder: the earliest first.
    due: BTreeSet<(u64, EntityId, String)>,
}

/// What a snapshot holds: the reminders (the index is derived).
#[derive(Serialize)]
struct StoredRef<'a> {
    reminders: &'a BTreeMap<(EntityId, String), Schedule>,
}

#[derive(Deserialize)]
struct Stored {
    reminders: BTreeMap<(EntityId, String), Schedule>,
}

impl Serialize for ShardState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredRef {
            reminders: &self.reminders,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ShardState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Stored { reminders } = Stored::deserialize(deserializer)?;
        let due = reminders
            .iter()
            .map(|((entity, name), schedule)| (schedule.due_ms, entity.clone(), name.clone()))
            .collect();
        Ok(Self { reminders, due })
    }
}

impl ShardState {
    pub fn len(&self) -> usize {
        self.reminders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reminders.is_empty()
    }

    pub fn contains(&self, entity: &EntityId, name: &str) -> bool {
        self.reminders
            .contains_key(&(entity.clone(), name.to_string()))
    }

    pub fn get(&self, entity: &EntityId, name: &str) -> Option<Schedule> {
        self.reminders
            .get(&(entity.clone(), name.to_string()))
            .copied()
    }

    /// Registers or replaces `reminder` of `entity`.
    pub fn upsert(&mut self, entity: &EntityId, reminder: &Reminder) {
        let key = (entity.clone(), reminder.name.clone());
        let schedule = Schedule {
            due_ms: reminder.due_ms,
            period_ms: reminder.period_ms,
        };
        if let Some(previous) = self.reminders.insert(key, schedule) {
            self.due
                .remove(&(previous.due_ms, entity.clone(), reminder.name.clone()));
        }
        self.due
            .insert((reminder.due_ms, entity.clone(), reminder.name.clone()));
    }

    /// Removes the reminder `name` of `entity`, if there is one.
    pub fn remove(&mut self, entity: &EntityId, name: &str) {
        if let Some(previous) = self.reminders.remove(&(entity.clone(), name.to_string())) {
            self.due
                .remove(&(previous.due_ms, entity.clone(), name.to_string()));
        }
    }

    /// Records the firing of `name` of `entity` due at `due_ms`: it goes, or moves to
    /// `next_due_ms`. A reminder registered again since (another due time) is left alone: the
    /// newer registration wins.
    pub fn fired(&mut self, entity: &EntityId, name: &str, due_ms: u64, next_due_ms: Option<u64>) {
        let Some(schedule) = self.get(entity, name) else {
            return;
        };
        if schedule.due_ms != due_ms {
            return;
        }
        match next_due_ms {
            Some(next_due_ms) => self.upsert(
                entity,
                &Reminder {
                    name: name.to_string(),
                    due_ms: next_due_ms,
                    period_ms: schedule.period_ms,
                },
            ),
            None => self.remove(entity, name),
        }
    }

    /// The reminders in due order, the earliest first.
    pub fn by_due(&self) -> impl Iterator<Item = (u64, &EntityId, &str)> {
        self.due
            .iter()
            .map(|(due_ms, entity, name)| (*due_ms, entity, name.as_str()))
    }

    /// The earliest due time, if any.
    pub fn earliest_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(due_ms, _, _)| *due_ms)
    }

    /// How many are due at `now_ms` (at most `cap`: the count is for a gauge).
    pub fn due_count(&self, now_ms: u64, cap: usize) -> usize {
        self.due
            .iter()
            .take_while(|(due_ms, _, _)| *due_ms <= now_ms)
            .take(cap)
            .count()
    }
}

/// The first due time of a periodic reminder after `now_ms`: the periods missed while nobody
/// could fire it are skipped (one firing stands for them), never one before `now_ms`.
pub fn next_due_after(due_ms: u64, period_ms: u64, now_ms: u64) -> u64 {
    assert!(period_ms > 0, "a periodic reminder needs a period above 0");
    if due_ms > now_ms {
        return due_ms.saturating_add(period_ms);
    }
    let periods = (now_ms - due_ms) / period_ms + 1;
    due_ms.saturating_add(periods.saturating_mul(period_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reminder(name: &str, due_ms: u64, period_ms: Option<u64>) -> Reminder {
        Reminder {
            name: name.into(),
            due_ms,
            period_ms,
        }
    }

    fn order(state: &ShardState) -> Vec<(u64, String, String)> {
        state
            .by_due()
            .map(|(due, entity, name)| (due, entity.key.clone(), name.to_string()))
            .collect()
    }

    #[test]
    fn reminders_come_in_due_order_and_an_upsert_replaces() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        let b = EntityId::new("t", "b");
        state.upsert(&a, &reminder("x", 300, None));
        state.upsert(&b, &reminder("x", 100, None));
        state.upsert(&a, &reminder("y", 200, None));
        assert_eq!(
            order(&state),
            vec![
                (100, "b".into(), "x".into()),
                (200, "a".into(), "y".into()),
                (300, "a".into(), "x".into())
            ]
        );
        // The same name again replaces the reminder, it does not add one.
        state.upsert(&a, &reminder("x", 50, Some(1_000)));
        assert_eq!(state.len(), 3);
        assert_eq!(state.earliest_due_ms(), Some(50));
        assert_eq!(
            state.get(&a, "x"),
            Some(Schedule {
                due_ms: 50,
                period_ms: Some(1_000)
            })
        );
        assert_eq!(order(&state).len(), 3, "the old due time left the index");
    }

    #[test]
    fn forget_removes_from_both_and_ignores_what_is_not_there() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        state.upsert(&a, &reminder("x", 100, None));
        state.remove(&a, "nothing");
        state.remove(&EntityId::new("t", "b"), "x");
        assert_eq!(state.len(), 1);
        state.remove(&a, "x");
        assert!(state.is_empty());
        assert_eq!(state.earliest_due_ms(), None);
    }

    #[test]
    fn a_firing_removes_a_one_shot_and_advances_a_periodic_one() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        state.upsert(&a, &reminder("once", 100, None));
        state.upsert(&a, &reminder("every", 100, Some(30)));
        state.fired(&a, "once", 100, None);
        assert!(!state.contains(&a, "once"));
        let next = next_due_after(100, 30, 195);
        assert_eq!(next, 220, "the periods due at 130, 160 and 190 are skipped");
        state.fired(&a, "every", 100, Some(next));
        assert_eq!(state.get(&a, "every").map(|s| s.due_ms), Some(220));
        assert_eq!(order(&state), vec![(220, "a".into(), "every".into())]);
    }

    #[test]
    fn a_firing_of_a_reminder_registered_again_since_changes_nothing() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        state.upsert(&a, &reminder("x", 100, None));
        state.upsert(&a, &reminder("x", 500, None));
        state.fired(&a, "x", 100, None);
        assert_eq!(state.get(&a, "x").map(|s| s.due_ms), Some(500));
    }

    #[test]
    fn the_next_due_time_is_never_at_or_before_now() {
        for (due, period, now) in [
            (100, 30, 100),
            (100, 30, 129),
            (100, 30, 130),
            (5, 1, 1_000),
        ] {
            let next = next_due_after(due, period, now);
            assert!(next > now, "{next} after {now}");
            assert!(next - now <= period, "{next} skips no more than needed");
            assert_eq!(
                (next - due) % period,
                0,
                "{next} stays on the period's grid"
            );
        }
        // Not yet due: simply the next period.
        assert_eq!(next_due_after(1_000, 10, 500), 1_010);
    }

    #[test]
    fn the_due_count_stops_at_now_and_at_the_cap() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        for index in 0..10 {
            state.upsert(&a, &reminder(&format!("r{index}"), 100 + index, None));
        }
        assert_eq!(state.due_count(99, 100), 0);
        assert_eq!(state.due_count(104, 100), 5);
        assert_eq!(state.due_count(1_000, 3), 3);
    }

    #[test]
    fn a_snapshot_restores_the_index() {
        let mut state = ShardState::default();
        let a = EntityId::new("t", "a");
        state.upsert(&a, &reminder("x", 300, None));
        state.upsert(&a, &reminder("y", 100, Some(50)));
        let bytes = crate::codec::encode(&state);
        let restored: ShardState = crate::codec::decode(&bytes, "shard state").expect("decodes");
        assert_eq!(order(&restored), order(&state));
        assert_eq!(restored.get(&a, "y"), state.get(&a, "y"));
    }
}
