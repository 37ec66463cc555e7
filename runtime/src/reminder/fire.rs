//! The delivery of one firing to its target entity, on this node (a shard and the entities it
//! serves share a partition, so they share an owner): through the node's entity directory,
//! which activates a passivated target, into its `on_reminder`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Reminder;
use crate::codec;
use crate::entity::shards::{Delivery, DeliveryKind, ShardMsg};
use crate::entity::{AskOutcome, Reply};
use crate::id::{EntityId, MsgId};
use crate::runtime::Runtime;

/// How a firing ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FireOutcome {
    /// The target ran `on_reminder` and what it persisted is durable.
    Delivered,
    /// The target refused it for good (its kind is unknown here, the reminder undecodable).
    Refused(String),
    /// Not delivered this time (the target is unavailable, moving, too slow): retry.
    Failed(String),
}

/// The id of the firing of `reminder` at its due time: the same for every attempt, on every
/// node, so the target answers a repeated firing from its journal instead of running it again.
pub fn firing_msg_id(target: &EntityId, reminder: &Reminder) -> MsgId {
    let entity = target.to_string();
    let firing = format!("{}\u{0}{}", reminder.name, reminder.due_ms);
    let high = crate::cluster::placement::weight("reminder.fire", &entity, &firing);
    let low = crate::cluster::placement::weight("reminder.fire.low", &entity, &firing);
    MsgId((u128::from(high) << 64) | u128::from(low))
}

/// Delivers one firing and waits for its acknowledgement, at most `timeout`.
pub async fn deliver(
    runtime: &Runtime,
    target: &EntityId,
    reminder: &Reminder,
    timeout: Duration,
) -> FireOutcome {
    let shards = match runtime.shards() {
        Ok(shards) => shards,
        Err(error) => return FireOutcome::Failed(error.to_string()),
    };
    let (sender, receiver) = ractor::concurrency::oneshot();
    let delivery = Delivery {
        msg_id: Some(firing_msg_id(target, reminder)),
        payload: codec::encode(reminder),
        reply: Some(Reply::Port(sender.into())),
        span: tracing::Span::none(),
        kind: DeliveryKind::Reminder,
    };
    if let Err(error) = shards.cast(ShardMsg::Deliver {
        entity: target.clone(),
        delivery,
    }) {
        return FireOutcome::Failed(error.to_string());
    }
    match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(wire)) => match wire.into_inner() {
            Ok(AskOutcome::Reply(_)) => FireOutcome::Delivered,
            Ok(AskOutcome::Rejected(reason)) => FireOutcome::Refused(reason),
            Ok(AskOutcome::NotOwner { owner }) => FireOutcome::Failed(format!(
                "this node does not own {target} (owner: {owner:?})"
            )),
            Ok(AskOutcome::Unavailable(reason)) => FireOutcome::Failed(reason),
            Err(error) => FireOutcome::Failed(error.to_string()),
        },
        Ok(Err(_)) => FireOutcome::Failed(format!("{target} stopped before answering")),
        Err(_) => FireOutcome::Failed(format!(
            "{target} did not acknowledge within {} ms",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_has_one_id_per_target_name_and_due_time() {
        let target = EntityId::new("t", "a");
        let reminder = Reminder {
            name: "x".into(),
            due_ms: 100,
            period_ms: None,
        };
        let id = firing_msg_id(&target, &reminder);
        assert_eq!(id, firing_msg_id(&target, &reminder.clone()));
        let later = Reminder {
            due_ms: 101,
            ..reminder.clone()
        };
        assert_ne!(id, firing_msg_id(&target, &later));
        assert_ne!(id, firing_msg_id(&EntityId::new("t", "b"), &reminder));
    }
}
