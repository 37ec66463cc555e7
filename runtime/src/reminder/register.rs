//! Registration from an entity's commit path: a batch that carries `remind`/`forget` calls is
//! registered with its reminder shard(s), durably, and only then appended to the node log.
//! So an acknowledged command's reminders always exist; a batch whose registration fails
//! fails like a failed append (nothing of it is journaled, its callers retry).

use std::time::Duration;

use ractor::ActorRef;

use super::ReminderOp;
use super::shard::{ReminderShard, ShardCommand};
use crate::codec;
use crate::entity::AskOutcome;
use crate::entity::actor::EntityMsg;
use crate::error::RuntimeError;
use crate::id::{EntityId, MsgId};
use crate::journal::Record;
use crate::runtime::Runtime;

/// The id of one registration: the same for a retry of the same batch (the shard answers it
/// from its journal), another for other reminders at the same sequence number (a batch that
/// failed and was replaced by another after a reload must not be taken for it).
pub fn registration_msg_id(
    entity: &EntityId,
    first_seq: u64,
    shard: &str,
    ops: &[ReminderOp],
) -> MsgId {
    let entity = entity.to_string();
    let mut batch = format!("{first_seq}\u{0}{shard}\u{0}").into_bytes();
    batch.extend(codec::encode(ops));
    // `weight` hashes strings; the encoded ops are bytes: hex keeps them exact.
    let batch: String = batch.iter().map(|byte| format!("{byte:02x}")).collect();
    let high = crate::cluster::placement::weight("reminder.register", &entity, &batch);
    let low = crate::cluster::placement::weight("reminder.register.low", &entity, &batch);
    MsgId((u128::from(high) << 64) | u128::from(low))
}

/// The ops grouped by the shard that holds them, each group in the order of the calls.
fn by_shard(runtime: &Runtime, ops: Vec<ReminderOp>) -> Vec<(String, Vec<ReminderOp>)> {
    let mut groups: Vec<(String, Vec<ReminderOp>)> = Vec::new();
    for op in ops {
        let shard = runtime.reminders().shard_of(op.entity());
        match groups.iter_mut().find(|(key, _)| key == shard) {
            Some((_, group)) => group.push(op),
            None => groups.push((shard.to_string(), vec![op])),
        }
    }
    groups
}

/// Registers `ops` with their shards, then appends `records` (or, when there are none, only
/// reports success); the entity gets `Appended` or `RemindersFailed`.
pub fn register_then_append(
    runtime: Runtime,
    entity: EntityId,
    epoch: u64,
    first_seq: u64,
    records: Vec<Record>,
    ops: Vec<ReminderOp>,
    reply_to: ActorRef<EntityMsg>,
) {
    tokio::spawn(async move {
        let timeout = Duration::from_millis(runtime.config().entities.ask_timeout_ms);
        let groups = by_shard(&runtime, ops);
        // The marker first: whoever holds the shard's partition later finds it and wakes the
        // shard, so a registered reminder is never left in a shard nobody loads.
        for (shard, _) in &groups {
            if let Err(error) = ensure_marker(&runtime, shard).await {
                let outcome = AskOutcome::Unavailable(format!(
                    "the reminders could not be registered: {error}; retry"
                ));
                let _ = reply_to.cast(EntityMsg::RemindersFailed(outcome));
                return;
            }
        }
        let asks = groups.into_iter().map(|(shard, ops)| {
            let msg_id = registration_msg_id(&entity, first_seq, &shard, &ops);
            let shard_ref = runtime.entity::<ReminderShard>(shard);
            async move {
                shard_ref
                    .ask_with(ShardCommand::Register(ops), timeout, Some(msg_id))
                    .await
            }
        });
        let mut failure = None;
        for result in futures_util::future::join_all(asks).await {
            let outcome = match result {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => AskOutcome::Rejected(reason),
                Err(RuntimeError::Rejected { reason, .. }) => AskOutcome::Rejected(reason),
                Err(error) => AskOutcome::Unavailable(format!(
                    "the reminders could not be registered: {error}; retry"
                )),
            };
            // A refusal is final; an unavailable shard is worth a retry.
            if failure.is_none() || matches!(outcome, AskOutcome::Rejected(_)) {
                failure = Some(outcome);
            }
        }
        if let Some(outcome) = failure {
            let _ = reply_to.cast(EntityMsg::RemindersFailed(outcome));
            return;
        }
        if records.is_empty() {
            let _ = reply_to.cast(EntityMsg::Appended(Ok(())));
            return;
        }
        runtime
            .node_journal()
            .append(&entity, epoch, first_seq, records, move |result| {
                let _ = reply_to.cast(EntityMsg::Appended(result));
            });
    });
}

/// Creates `shard`'s marker unless this node knows it exists.
async fn ensure_marker(runtime: &Runtime, shard: &str) -> crate::error::Result<()> {
    if runtime.reminders().is_marked(shard) {
        return Ok(());
    }
    // Create-only: `Exists` (another node, or an earlier run, made it) is as good.
    runtime
        .journal()
        .objects()
        .create(
            super::node::marker_path(shard),
            vec![crate::journal::layout::FORMAT_V2],
        )
        .await?;
    runtime.reminders().mark(shard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reminder::Reminder;

    #[test]
    fn a_registration_id_depends_on_the_batch_and_its_reminders() {
        let entity = EntityId::new("t", "a");
        let ops = vec![ReminderOp::Upsert {
            entity: entity.clone(),
            reminder: Reminder {
                name: "x".into(),
                due_ms: 100,
                period_ms: None,
            },
        }];
        let id = registration_msg_id(&entity, 7, "p0.b0.0", &ops);
        assert_eq!(id, registration_msg_id(&entity, 7, "p0.b0.0", &ops.clone()));
        assert_ne!(id, registration_msg_id(&entity, 8, "p0.b0.0", &ops));
        assert_ne!(id, registration_msg_id(&entity, 7, "p0.b1.0", &ops));
        let other = vec![ReminderOp::Forget {
            entity: entity.clone(),
            name: "x".into(),
        }];
        assert_ne!(id, registration_msg_id(&entity, 7, "p0.b0.0", &other));
    }
}
