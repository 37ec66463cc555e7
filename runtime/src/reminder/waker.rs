//! Keeps the reminder shards of the partitions this node holds active: a `Wake` to each shard
//! of a partition when the journal reports it taken over, and to every held partition's shards
//! periodically (more often than an idle entity passivates, and soon after an eviction), so a
//! shard's timer runs whether or not anyone talks to it. Also sets the node's reminder gauges.

use std::time::Duration;

use super::shard::{ReminderShard, ShardCommand};
use crate::entity::Entity;
use crate::journal::PartitionEvent;
use crate::metrics as names;
use crate::runtime::Runtime;

/// Longest time between two wakes of a held partition's shards, whatever
/// `entities.passivate_after_ms` (a shard evicted under memory pressure comes back this soon).
const WAKE_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// How often the node's reminder gauges are set.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the waker; it stops when the journal's partition events end or when aborted.
pub fn start(runtime: Runtime) -> tokio::task::JoinHandle<()> {
    let mut partitions = runtime.node_journal().subscribe();
    // Within half the time an idle entity (or an empty one: a shard nobody registered with
    // yet) takes to passivate, so a held partition's shards stay active: reloading an empty
    // shard costs store listings, a local tell costs nothing.
    let entities = &runtime.config().entities;
    let passivate_after_ms = entities
        .passivate_after_ms
        .min(entities.probe_passivate_after_ms);
    let wake_interval = (Duration::from_millis(passivate_after_ms) / 2)
        .clamp(Duration::from_millis(50), WAKE_INTERVAL_MAX);
    tokio::spawn(async move {
        let mut wakes = tokio::time::interval(wake_interval);
        wakes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = partitions.recv() => match event {
                    Ok(PartitionEvent::Ready { partition, .. }) => wake(&runtime, partition),
                    Ok(PartitionEvent::Lost { .. }) => {}
                    // Missed some: the periodic wake covers them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = wakes.tick() => {
                    for (partition, _) in runtime.node_journal().owned() {
                        wake(&runtime, partition);
                    }
                }
                _ = gauges.tick() => set_gauges(&runtime),
            }
        }
    })
}

/// One local tell per shard of `partition`, if this node owns them in its view.
fn wake(runtime: &Runtime, partition: u32) {
    for shard in runtime.reminders().shards_of_partition(partition) {
        if !runtime.owns(ReminderShard::KIND, shard) {
            continue;
        }
        if let Err(error) = runtime
            .entity::<ReminderShard>(shard.clone())
            .tell(ShardCommand::Wake)
        {
            tracing::debug!(shard, %error, "could not wake a reminder shard; the next wake retries");
        }
    }
}

fn set_gauges(runtime: &Runtime) {
    let held: std::collections::HashSet<u32> = runtime
        .node_journal()
        .owned()
        .into_iter()
        .map(|(partition, _)| partition)
        .collect();
    let (registered, backlog) = runtime
        .reminders()
        .totals(|partition| held.contains(&partition));
    metrics::gauge!(names::REMINDERS_REGISTERED).set(registered as f64);
    metrics::gauge!(names::REMINDERS_BACKLOG).set(backlog as f64);
}
