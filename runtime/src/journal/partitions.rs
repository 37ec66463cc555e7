//! Taking partitions over: claim the next epoch, seal the epochs before it, replay what is not
//! compacted.
//!
//! A takeover of partition `p` by this node:
//! 1. finds the latest claim `e` (a listing of `part/<p>/claim/` after the epoch last seen);
//! 2. creates claim `e + 1` naming this node's log and its next object number (create-only: if
//!    another node created it first, the takeover fails and is retried with a fresh view);
//! 3. seals every unsealed epoch before it, newest first: creates a fence addressed to that
//!    epoch's log (the first free slot), then lists that log; the highest object listed ends
//!    the epoch, recorded in a create-only seal (or the seal another node made first is used);
//! 4. replays, in parallel, the epochs' records that the partition's latest checkpoint does not
//!    cover, into the partition's tail; then the partition is `Owned` and its entities may be
//!    activated.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Result, RuntimeError};
use crate::journal::layout::{self, Checkpoint, Claim, Fence, LogObject, Seal};
use crate::journal::node_log::{Part, PartitionEvent, Shared, TailAppend};
use crate::journal::objects::Created;
use crate::metrics as names;

/// Fence slots tried on one log before giving up (each is one takeover of a partition from it).
const FENCE_SLOTS_MAX: u64 = 1 << 20;

pub(super) fn set_desired(shared: &Arc<Shared>, desired: BTreeSet<u32>) {
    let mut start = Vec::new();
    let mut lost = Vec::new();
    {
        let mut state = shared.state();
        if state.stopping {
            return;
        }
        for partition in 0..shared.settings.partitions {
            let want = desired.contains(&partition);
            match state.parts.get(&partition) {
                None if want => {
                    state.next_generation += 1;
                    let generation = state.next_generation;
                    state
                        .parts
                        .insert(partition, Part::Acquiring { generation });
                    start.push((partition, generation));
                }
                Some(Part::Acquiring { .. }) if !want => {
                    state.parts.remove(&partition);
                }
                Some(Part::Owned { epoch, .. }) if !want => {
                    lost.push((partition, *epoch));
                    state.parts.remove(&partition);
                }
                _ => {}
            }
        }
        state.desired = desired;
    }
    for (partition, epoch) in lost {
        let _ = shared
            .events
            .send(PartitionEvent::Lost { partition, epoch });
    }
    if start.is_empty() {
        return;
    }
    let wave = Arc::clone(shared);
    shared.spawn(async move {
        let shared = wave;
        let cache = ObjectCache::default();
        let limit = shared.settings.acquisitions_in_flight_max.max(1);
        futures_util::stream::iter(start)
            .for_each_concurrent(limit, |(partition, generation)| {
                let shared = Arc::clone(&shared);
                let cache = cache.clone();
                async move { acquire(&shared, partition, generation, &cache).await }
            })
            .await;
    });
}

async fn acquire(shared: &Arc<Shared>, partition: u32, generation: u64, cache: &ObjectCache) {
    let started = std::time::Instant::now();
    let still_wanted = || {
        matches!(
            shared.state().parts.get(&partition),
            Some(Part::Acquiring { generation: current }) if *current == generation
        )
    };
    let outcome = take_over(shared, partition, cache, &still_wanted).await;
    let mut state = shared.state();
    let current = matches!(
        state.parts.get(&partition),
        Some(Part::Acquiring { generation: current }) if *current == generation
    );
    if !current {
        return;
    }
    match outcome {
        Ok((epoch, tail, checkpoint)) => {
            let tail_records = tail.iter().map(|entry| entry.append.records.len()).sum();
            state.parts.insert(
                partition,
                Part::Owned {
                    epoch,
                    tail,
                    tail_records,
                    checkpoint,
                    writers: HashMap::new(),
                },
            );
            drop(state);
            metrics::histogram!(names::PARTITION_TAKEOVER_SECONDS)
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(
                partition,
                epoch,
                ms = started.elapsed().as_millis() as u64,
                "partition taken over"
            );
            let _ = shared
                .events
                .send(PartitionEvent::Ready { partition, epoch });
            // Compact soon: it covers the previous owners' logs, which can then go.
            shared.compact_wake.notify_one();
        }
        Err(error) => {
            // Forget the attempt: the next `set_desired` (the node re-applies its view
            // periodically) tries again.
            state.parts.remove(&partition);
            tracing::info!(partition, %error, "could not take a partition over; retrying soon");
        }
    }
}

/// A partition's epoch, its uncompacted tail and its latest checkpoint.
type Recovered = (u64, Vec<TailAppend>, Option<(u64, Checkpoint)>);

async fn take_over(
    shared: &Shared,
    partition: u32,
    cache: &ObjectCache,
    still_wanted: &impl Fn() -> bool,
) -> Result<Recovered> {
    let latest = latest_claim(shared, partition).await?;
    // Always a new epoch, even after this node's own: appends it made at the old one may
    // still be in flight, and sealing that epoch decides which of them count.
    let epoch = latest.as_ref().map_or(1, |claim| claim.epoch + 1);
    let claim = Claim {
        partition,
        epoch,
        log: shared.log.clone(),
        node: shared.node.clone(),
        start: shared.state().next_number,
    };
    match shared
        .objects
        .create(layout::claim(partition, epoch), layout::encode(&claim))
        .await?
    {
        Created::Yes => {}
        Created::Exists => {
            return Err(RuntimeError::Unavailable(format!(
                "another node claimed epoch {epoch} of partition {partition} first"
            )));
        }
    }
    metrics::counter!(names::PARTITION_CLAIMS_TOTAL).increment(1);
    if !still_wanted() {
        return Err(RuntimeError::Unavailable("no longer wanted".into()));
    }
    // Seals are made oldest first, so a seal's existence means every earlier epoch is sealed:
    // find the newest sealed epoch, then seal the ones after it.
    let mut seals = HashMap::new();
    let mut newest_sealed = epoch - 1;
    while newest_sealed >= 1 {
        if let Some(seal) = read_seal(shared, partition, newest_sealed).await? {
            seals.insert(newest_sealed, seal);
            break;
        }
        newest_sealed -= 1;
    }
    for sealing in newest_sealed + 1..epoch {
        let seal = seal_epoch(shared, partition, sealing).await?;
        seals.insert(sealing, seal);
    }
    recover(shared, partition, epoch, seals, cache).await
}

async fn read_seal(shared: &Shared, partition: u32, epoch: u64) -> Result<Option<Seal>> {
    match shared.objects.get(layout::seal(partition, epoch)).await? {
        Some(bytes) => Ok(Some(layout::decode(&bytes, "seal")?)),
        None => Ok(None),
    }
}

/// The latest claim of `partition`, if any.
async fn latest_claim(shared: &Shared, partition: u32) -> Result<Option<Claim>> {
    let names = shared
        .objects
        .list(layout::claims_prefix(partition), None)
        .await?;
    let Some(epoch) = names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .max()
    else {
        return Ok(None);
    };
    read_claim(shared, partition, epoch).await.map(Some)
}

async fn read_claim(shared: &Shared, partition: u32, epoch: u64) -> Result<Claim> {
    let bytes = shared
        .objects
        .get(layout::claim(partition, epoch))
        .await?
        .ok_or_else(|| {
            RuntimeError::Store(format!(
                "claim {epoch} of partition {partition} is missing; claims are never deleted"
            ))
        })?;
    layout::decode(&bytes, "claim")
}

/// Ends `epoch` of `partition`: its seal, made here (fence, listing, seal) unless another
/// node made it first.
async fn seal_epoch(shared: &Shared, partition: u32, epoch: u64) -> Result<Seal> {
    if let Some(seal) = read_seal(shared, partition, epoch).await? {
        return Ok(seal);
    }
    let claim = read_claim(shared, partition, epoch).await?;
    // The fence first: the previous owner acknowledges nothing of this epoch written after it
    // reads the fence, and anything it wrote before is in the listing that follows.
    let fence = layout::encode(&Fence {
        partition,
        epoch,
        by: shared.log.clone(),
    });
    let mut slot = 0;
    loop {
        if slot >= FENCE_SLOTS_MAX {
            return Err(RuntimeError::Store(format!(
                "log {} has {FENCE_SLOTS_MAX} fences; cannot add one",
                claim.log
            )));
        }
        match shared
            .objects
            .create(layout::fence(&claim.log, slot), fence.clone())
            .await?
        {
            Created::Yes => break,
            Created::Exists => slot += 1,
        }
    }
    let names = shared
        .objects
        .list(layout::log_prefix(&claim.log), None)
        .await?;
    let last = names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .max();
    let seal = Seal {
        partition,
        epoch,
        log: claim.log,
        last,
    };
    match shared
        .objects
        .create(layout::seal(partition, epoch), layout::encode(&seal))
        .await?
    {
        Created::Yes => Ok(seal),
        Created::Exists => read_seal(shared, partition, epoch)
            .await?
            .ok_or_else(|| RuntimeError::Store("a seal vanished; seals are never deleted".into())),
    }
}

/// The latest checkpoint of `partition` and its number.
pub(super) async fn latest_checkpoint(
    shared: &Shared,
    partition: u32,
) -> Result<Option<(u64, Checkpoint)>> {
    let names = shared
        .objects
        .list(layout::checkpoints_prefix(partition), None)
        .await?;
    for number in names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        // An older one may be deleted between the listing and the read: try the next.
        if let Some(bytes) = shared
            .objects
            .get(layout::checkpoint(partition, number))
            .await?
        {
            return Ok(Some((number, layout::decode(&bytes, "checkpoint")?)));
        }
    }
    Ok(None)
}

/// Replays the records of `partition` from the epochs before `epoch` that its checkpoint does
/// not cover.
async fn recover(
    shared: &Shared,
    partition: u32,
    epoch: u64,
    mut seals: HashMap<u64, Seal>,
    cache: &ObjectCache,
) -> Result<Recovered> {
    let checkpoint = latest_checkpoint(shared, partition).await?;
    let first_epoch = checkpoint
        .as_ref()
        .map_or(1, |(_, checkpoint)| checkpoint.epoch);
    // Which objects of which log hold each epoch's records.
    let mut ranges = Vec::new();
    for stretch in first_epoch.max(1)..epoch {
        let claim = read_claim(shared, partition, stretch).await?;
        let seal = match seals.get(&stretch) {
            Some(seal) => seal.clone(),
            None => {
                let seal = read_seal(shared, partition, stretch).await?.ok_or_else(|| {
                    RuntimeError::Store(format!(
                        "epoch {stretch} of partition {partition} has no seal, yet a later epoch exists"
                    ))
                })?;
                seals.insert(stretch, seal.clone());
                seal
            }
        };
        let covered_through = match &checkpoint {
            Some((_, checkpoint)) if checkpoint.epoch == stretch => checkpoint.last,
            _ => None,
        };
        let first = covered_through.map_or(claim.start, |last| (last + 1).max(claim.start));
        if let Some(last) = seal.last
            && first <= last
        {
            ranges.push((stretch, claim.log, first, last));
        }
    }
    // An object of a range may be gone: only objects every checkpoint-holder had compacted
    // are deleted, and every checkpoint is truthful, so its records are in the segments.
    let tail = read_ranges(shared, partition, &ranges, cache).await?;
    Ok((epoch, tail, checkpoint))
}

/// The appends of `partition` in the objects of `ranges` that exist, in history order.
async fn read_ranges(
    shared: &Shared,
    partition: u32,
    ranges: &[(u64, String, u64, u64)],
    cache: &ObjectCache,
) -> Result<Vec<TailAppend>> {
    let mut wanted = Vec::new();
    for (epoch, log, first, last) in ranges {
        let offset = first
            .checked_sub(1)
            .map(|before| layout::log_object(log, before));
        let names = shared.objects.list(layout::log_prefix(log), offset).await?;
        for number in names.iter().filter_map(|name| layout::number_of(name)) {
            if (*first..=*last).contains(&number) {
                wanted.push((*epoch, log.clone(), number));
            }
        }
    }
    let limit = shared.settings.recovery_reads_in_flight_max.max(1);
    let objects: Vec<(u64, Option<Arc<LogObject>>)> = futures_util::stream::iter(wanted)
        .map(|(epoch, log, number)| async move {
            let object = cache.get(shared, &log, number).await?;
            Ok::<_, RuntimeError>((epoch, object))
        })
        .buffered(limit)
        .try_collect()
        .await?;
    let mut tail = Vec::new();
    for (epoch, object) in objects {
        let Some(object) = object else { continue };
        for append in &object.appends {
            if append.partition == partition && append.epoch == epoch {
                tail.push(TailAppend {
                    append: append.clone(),
                });
            }
        }
    }
    Ok(tail)
}

/// Log objects read during one wave of takeovers: a dead node's objects hold many
/// partitions, and each is read once, not once per partition.
#[derive(Clone, Default)]
pub(super) struct ObjectCache {
    objects: Arc<tokio::sync::Mutex<HashMap<(String, u64), Arc<LogObject>>>>,
}

impl ObjectCache {
    async fn get(&self, shared: &Shared, log: &str, number: u64) -> Result<Option<Arc<LogObject>>> {
        let key = (log.to_string(), number);
        if let Some(object) = self.objects.lock().await.get(&key) {
            return Ok(Some(Arc::clone(object)));
        }
        let Some(bytes) = shared.objects.get(layout::log_object(log, number)).await? else {
            return Ok(None);
        };
        let object: LogObject = layout::decode(&bytes, "log object")?;
        if object.log != log || object.number != number {
            return Err(RuntimeError::Store(format!(
                "log object {log}/{number} names itself {}/{}",
                object.log, object.number
            )));
        }
        let object = Arc::new(object);
        self.objects.lock().await.insert(key, Arc::clone(&object));
        Ok(Some(object))
    }
}
