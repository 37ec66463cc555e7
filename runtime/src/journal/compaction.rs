//! Compaction: acknowledged records leave the node logs for their entities' segments, a
//! checkpoint says how far, and log objects whose every record is compacted are deleted.
//!
//! A node compacts the partitions it holds, every `compact_interval` or when one's tail grows
//! past `compact_records_max`: it writes each entity's tail records as segments (create-only,
//! idempotent), then a new checkpoint of the partition (its epoch, its log, the last object it
//! acknowledged), then drops those records from the tail. Every checkpoint is truthful: what
//! it says is compacted is in the segments, because a node compacts only what it recovered or
//! acknowledged. A log object is deleted once, for every (partition, epoch) it holds, the
//! partition's latest checkpoint covers it; its writer deletes its own, and the janitor (one
//! node per dead log) those of logs whose node is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use futures_util::{StreamExt, TryStreamExt};

use crate::error::Result;
use crate::id::EntityId;
use crate::journal::layout::{self, Checkpoint, LogObject, Record};
use crate::journal::node_log::{Part, Shared, TailAppend};
use crate::journal::objects::Created;
use crate::journal::partitions::latest_checkpoint;
use crate::journal::segments::SEGMENT_EVENTS_MAX;
use crate::metrics as names;

/// Checkpoints kept per partition (older ones are deleted).
const CHECKPOINTS_KEPT: usize = 2;
/// Entity segments written at once during one partition's compaction.
const SEGMENT_WRITES_IN_FLIGHT_MAX: usize = 16;
/// Deletions in flight at once.
const DELETES_IN_FLIGHT_MAX: usize = 16;

pub(super) async fn compaction_loop(shared: Arc<Shared>) {
    loop {
        let wake = shared.compact_wake.notified();
        let _ = tokio::time::timeout(shared.settings.compact_interval, wake).await;
        if shared.state().stopping {
            return;
        }
        compact_all(&shared).await;
        if let Err(error) = delete_own_objects(&shared).await {
            tracing::debug!(%error, "could not delete compacted log objects; next round");
        }
    }
}

/// Compacts every partition this node holds.
pub(super) async fn compact_all(shared: &Shared) {
    let owned: Vec<u32> = shared
        .state()
        .parts
        .iter()
        .filter_map(|(partition, part)| matches!(part, Part::Owned { .. }).then_some(*partition))
        .collect();
    for partition in owned {
        if let Err(error) = compact(shared, partition).await {
            tracing::warn!(partition, %error, "compaction failed; the next round retries");
        }
    }
}

/// One partition: its tail into segments, then a checkpoint.
async fn compact(shared: &Shared, partition: u32) -> Result<()> {
    let (epoch, taken, acked_through, previous) = {
        let state = shared.state();
        let Some(Part::Owned {
            epoch,
            tail,
            checkpoint,
            ..
        }) = state.parts.get(&partition)
        else {
            return Ok(());
        };
        let current = checkpoint
            .as_ref()
            .is_some_and(|(_, checkpoint)| checkpoint.epoch == *epoch);
        if tail.is_empty() && current {
            return Ok(());
        }
        (
            *epoch,
            tail.clone(),
            state.acked_through,
            checkpoint.clone(),
        )
    };
    let started = std::time::Instant::now();
    let segments = segments_of(&taken);
    futures_util::stream::iter(segments)
        .map(|(entity, first_seq, records)| async move {
            shared
                .segments
                .write_compacted(&entity, first_seq, records)
                .await
        })
        .buffer_unordered(SEGMENT_WRITES_IN_FLIGHT_MAX)
        .try_collect::<Vec<()>>()
        .await?;
    let checkpoint = Checkpoint {
        partition,
        epoch,
        log: shared.log.clone(),
        last: acked_through,
    };
    let mut number = previous.as_ref().map_or(0, |(number, _)| number + 1);
    loop {
        match shared
            .objects
            .create(
                layout::checkpoint(partition, number),
                layout::encode(&checkpoint),
            )
            .await?
        {
            Created::Yes => break,
            Created::Exists => {
                // Another owner wrote one meanwhile: if it is of a later epoch, this node has
                // lost the partition (its fence tells it soon); otherwise go after it.
                if let Some((latest, found)) = latest_checkpoint(shared, partition).await? {
                    if found.epoch > epoch {
                        return Ok(());
                    }
                    number = latest + 1;
                } else {
                    number += 1;
                }
            }
        }
    }
    metrics::counter!(names::JOURNAL_COMPACTIONS_TOTAL).increment(1);
    metrics::histogram!(names::JOURNAL_COMPACTION_SECONDS).record(started.elapsed().as_secs_f64());
    {
        let mut state = shared.state();
        if let Some(Part::Owned {
            epoch: current,
            tail,
            tail_records,
            checkpoint: kept,
            ..
        }) = state.parts.get_mut(&partition)
            && *current == epoch
        {
            // The tail only grows at its end meanwhile: drop what was compacted.
            let compacted = taken.len().min(tail.len());
            let records: usize = tail[..compacted]
                .iter()
                .map(|entry| entry.append.records.len())
                .sum();
            tail.drain(..compacted);
            *tail_records = tail_records.saturating_sub(records);
            *kept = Some((number, checkpoint));
        }
    }
    // Older checkpoints go (a reader that listed one of them falls back to the next).
    let names = shared
        .objects
        .list(layout::checkpoints_prefix(partition), None)
        .await?;
    let numbers: Vec<u64> = names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .collect();
    for old in numbers.iter().rev().skip(CHECKPOINTS_KEPT) {
        shared
            .objects
            .delete(layout::checkpoint(partition, *old))
            .await?;
    }
    Ok(())
}

/// Each entity's tail records, in order, cut into segments of at most [`SEGMENT_EVENTS_MAX`]
/// events (at command boundaries).
fn segments_of(tail: &[TailAppend]) -> Vec<(EntityId, u64, Vec<Record>)> {
    let mut by_entity: BTreeMap<&EntityId, Vec<&TailAppend>> = BTreeMap::new();
    for entry in tail {
        by_entity
            .entry(&entry.append.entity)
            .or_default()
            .push(entry);
    }
    let mut segments = Vec::new();
    for (entity, appends) in by_entity {
        let mut first_seq = 0;
        let mut next_seq = 0;
        let mut records: Vec<Record> = Vec::new();
        let mut events = 0;
        for entry in appends {
            let append = &entry.append;
            if !records.is_empty() && append.first_seq != next_seq {
                // Not contiguous (should not happen in one history): start a new segment.
                segments.push((entity.clone(), first_seq, std::mem::take(&mut records)));
                events = 0;
            }
            if records.is_empty() {
                first_seq = append.first_seq;
            }
            for record in &append.records {
                let count = record.events.len() as u64;
                if !records.is_empty() && events + count > SEGMENT_EVENTS_MAX {
                    segments.push((entity.clone(), first_seq, std::mem::take(&mut records)));
                    first_seq += events;
                    events = 0;
                }
                events += count;
                records.push(record.clone());
            }
            next_seq = append.first_seq + append.events();
        }
        if !records.is_empty() {
            segments.push((entity.clone(), first_seq, records));
        }
    }
    segments
}

/// Whether `checkpoints` (latest per partition) cover every (partition, epoch) of object
/// `number` of `log`.
fn covered(
    parts: &BTreeSet<(u32, u64)>,
    log: &str,
    number: u64,
    checkpoints: &HashMap<u32, Option<Checkpoint>>,
) -> bool {
    parts.iter().all(|(partition, epoch)| {
        checkpoints
            .get(partition)
            .and_then(Option::as_ref)
            .is_some_and(|checkpoint| checkpoint.covers(*epoch, log, number))
    })
}

/// The latest checkpoint of each of `partitions`: from this node's memory for those it holds
/// (its own are the latest while it holds them), from the store for the others.
async fn checkpoints_of(
    shared: &Shared,
    partitions: BTreeSet<u32>,
) -> Result<HashMap<u32, Option<Checkpoint>>> {
    let mut known = HashMap::new();
    for partition in partitions {
        let held = match shared.state().parts.get(&partition) {
            Some(Part::Owned { checkpoint, .. }) => Some(checkpoint.clone()),
            _ => None,
        };
        let checkpoint = match held {
            Some(checkpoint) => checkpoint,
            None => latest_checkpoint(shared, partition).await?,
        };
        known.insert(partition, checkpoint.map(|(_, checkpoint)| checkpoint));
    }
    Ok(known)
}

/// Deletes this log's objects whose every record is compacted.
async fn delete_own_objects(shared: &Shared) -> Result<()> {
    let objects: Vec<(u64, BTreeSet<(u32, u64)>)> = shared
        .state()
        .own_objects
        .iter()
        .map(|(number, parts)| (*number, parts.clone()))
        .collect();
    if objects.is_empty() {
        return Ok(());
    }
    let partitions = objects
        .iter()
        .flat_map(|(_, parts)| parts.iter().map(|(partition, _)| *partition))
        .collect();
    let checkpoints = checkpoints_of(shared, partitions).await?;
    let deletable: Vec<u64> = objects
        .iter()
        .filter(|(number, parts)| covered(parts, &shared.log, *number, &checkpoints))
        .map(|(number, _)| *number)
        .collect();
    futures_util::stream::iter(deletable.iter().copied())
        .map(|number| {
            shared
                .objects
                .delete(layout::log_object(&shared.log, number))
        })
        .buffer_unordered(DELETES_IN_FLIGHT_MAX)
        .try_collect::<Vec<()>>()
        .await?;
    let mut state = shared.state();
    for number in &deletable {
        state.own_objects.remove(number);
    }
    metrics::counter!(names::JOURNAL_LOG_OBJECTS_DELETED_TOTAL).increment(deletable.len() as u64);
    Ok(())
}

pub(super) async fn janitor_loop(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let interval = strong.settings.janitor_interval;
        drop(strong);
        // Spread the nodes' janitors out a little.
        tokio::time::sleep(interval.mul_f64(0.75 + fastrand::f64() * 0.5)).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.state().stopping {
            return;
        }
        if let Err(error) = clean_dead_logs(&strong).await {
            tracing::debug!(%error, "the log janitor could not finish; next round");
        }
    }
}

/// Deletes the compacted objects of the logs in this node's janitor scope (gone nodes').
pub(super) async fn clean_dead_logs(shared: &Shared) -> Result<()> {
    let names = shared.objects.list("log".to_string(), None).await?;
    let mut by_log: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for name in &names {
        if let (Some(log), Some(number)) = (layout::log_of_object(name), layout::number_of(name))
            && log != shared.log
            && (shared.janitor_scope)(log)
        {
            by_log.entry(log.to_string()).or_default().push(number);
        }
    }
    for (log, numbers) in by_log {
        let read: Vec<(u64, Option<bytes::Bytes>)> = futures_util::stream::iter(numbers)
            .map(|number| {
                let path = layout::log_object(&log, number);
                async move {
                    Ok::<_, crate::error::RuntimeError>((number, shared.objects.get(path).await?))
                }
            })
            .buffered(DELETES_IN_FLIGHT_MAX)
            .try_collect()
            .await?;
        let mut contents = Vec::new();
        let mut partitions = BTreeSet::new();
        for (number, bytes) in read {
            let Some(bytes) = bytes else { continue };
            let object: LogObject = layout::decode(&bytes, "log object")?;
            let parts: BTreeSet<(u32, u64)> = object
                .appends
                .iter()
                .map(|append| (append.partition, append.epoch))
                .collect();
            partitions.extend(parts.iter().map(|(partition, _)| *partition));
            contents.push((number, parts));
        }
        let checkpoints = checkpoints_of(shared, partitions).await?;
        let deletable: Vec<u64> = contents
            .iter()
            .filter(|(number, parts)| covered(parts, &log, *number, &checkpoints))
            .map(|(number, _)| *number)
            .collect();
        futures_util::stream::iter(deletable.iter().copied())
            .map(|number| shared.objects.delete(layout::log_object(&log, number)))
            .buffer_unordered(DELETES_IN_FLIGHT_MAX)
            .try_collect::<Vec<()>>()
            .await?;
        metrics::counter!(names::JOURNAL_LOG_OBJECTS_DELETED_TOTAL)
            .increment(deletable.len() as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MsgId;
    use crate::journal::layout::Append;

    fn entry(entity: &str, first_seq: u64, events: usize) -> TailAppend {
        TailAppend {
            append: Append {
                partition: 0,
                epoch: 1,
                entity: EntityId::new("room", entity),
                first_seq,
                records: vec![Record {
                    msg_id: Some(MsgId(u128::from(first_seq))),
                    events: vec![vec![1]; events],
                    reply: vec![],
                    schema: 1,
                }],
            },
        }
    }

    #[test]
    fn the_tail_becomes_contiguous_bounded_segments_per_entity() {
        let tail = vec![
            entry("a", 1, 1),
            entry("b", 1, 2),
            entry("a", 2, 300),
            entry("a", 302, 300),
            entry("b", 3, 1),
        ];
        let segments = segments_of(&tail);
        let summary: Vec<(String, u64, usize)> = segments
            .iter()
            .map(|(entity, first, records)| (entity.key.clone(), *first, records.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a".to_string(), 1, 2),
                ("a".to_string(), 302, 1),
                ("b".to_string(), 1, 2)
            ]
        );
    }
}
