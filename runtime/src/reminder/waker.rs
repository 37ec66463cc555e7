//! Keeps the reminder shards of the partitions this node holds active: a `Wake` to each marked
//! shard of a partition when the journal reports it taken over (after one listing of the
//! markers for a burst of takeovers), and to every held partition's marked shards
//! periodically (more often than an idle entity passivates, and soon after an eviction), so a
//! shard's timer runs whether or not anyone talks to it. Also sets the node's reminder gauges.

use std::collections::HashSet;
use std::time::Duration;

use super::node::MARKERS_PREFIX;
use super::shard::{ReminderShard, ShardCommand};
use crate::entity::Entity;
use crate::journal::PartitionEvent;
use crate::metrics as names;
use crate::runtime::Runtime;

/// Longest time between two wakes of a held partition's shards, whatever
/// `entities.passivate_after_ms` (a shard evicted under memory pressure comes back this soon).
const WAKE_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// Partitions taken over within this time share one listing of the markers.
const LISTING_DEBOUNCE: Duration = Duration::from_millis(100);
/// After a failed listing of the markers.
const LISTING_RETRY: Duration = Duration::from_secs(1);
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
        // Partitions taken over since the markers were last listed; listed once for a burst.
        let mut taken: HashSet<u32> = HashSet::new();
        let listing = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(listing);
        let mut listing_armed = false;
        loop {
            tokio::select! {
                event = partitions.recv() => match event {
                    Ok(PartitionEvent::Ready { partition, .. }) => {
                        taken.insert(partition);
                        if !listing_armed {
                            listing.as_mut().reset(tokio::time::Instant::now() + LISTING_DEBOUNCE);
                            listing_armed = true;
                        }
                    }
                    Ok(PartitionEvent::Lost { .. }) => {}
                    // Missed some: list again for every partition held.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        taken.extend(runtime.node_journal().owned().into_iter().map(|(partition, _)| partition));
                        if !listing_armed {
                            listing.as_mut().reset(tokio::time::Instant::now() + LISTING_DEBOUNCE);
                            listing_armed = true;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = &mut listing, if listing_armed => {
                    listing_armed = false;
                    match list_markers(&runtime).await {
                        Ok(()) => {
                            for partition in taken.drain() {
                                wake(&runtime, partition);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot list the reminder shards' markers; retrying");
                            listing.as_mut().reset(tokio::time::Instant::now() + LISTING_RETRY);
                            listing_armed = true;
                        }
                    }
                }
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

/// Learns every shard's marker (one listing: at most `shards_per_partition` × 64 names).
async fn list_markers(runtime: &Runtime) -> crate::error::Result<()> {
    let names = runtime
        .journal()
        .objects()
        .list(MARKERS_PREFIX.to_string(), None)
        .await?;
    for name in names {
        if let Some(shard) = name.rsplit('/').next() {
            runtime.reminders().mark(shard);
        }
    }
    Ok(())
}

/// One local tell per marked shard of `partition` (a shard that never held a reminder is
/// left unloaded), if this node owns them in its view.
fn wake(runtime: &Runtime, partition: u32) {
    for shard in runtime.reminders().marked_of_partition(partition) {
        if !runtime.owns(ReminderShard::KIND, &shard) {
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
