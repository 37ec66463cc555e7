//! Taking partitions over, in waves (every partition the view newly gives this node at once):
//! 1. for each, find the latest claim `e` and create claim `e + 1` naming this node's log and
//!    its next object number (create-only: if another node created it first, that partition
//!    fails and is retried with a fresh view), all in parallel;
//! 2. seal every unsealed epoch before each new one, **oldest first** (a seal's existence then
//!    means every earlier epoch is sealed). Epochs of the same old log are sealed together: one
//!    fence in the first free slot of that log names all of them, one listing of that log
//!    follows, and the highest object listed ends each epoch, in a create-only seal per epoch
//!    (or the seal another node made first is used);
//! 3. replay, in parallel, each partition's records that its latest checkpoint does not cover
//!    into its tail (log objects read once per wave, shared by the partitions they hold); the
//!    partition is then `Owned` and its entities may be activated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Result, RuntimeError};
use crate::journal::layout::{self, Checkpoint, Claim, Fence, LogObject, Seal};
use crate::journal::node_log::{Part, PartitionEvent, Shared, TailAppend};
use crate::journal::objects::Created;
use crate::metrics as names;

/// Fence slots tried on one log before giving up.
const FENCE_SLOTS_MAX: u64 = 1 << 20;

pub(super) fn set_desired(
    shared: &Arc<Shared>,
    desired: BTreeSet<u32>,
    hold_off: Option<std::time::Duration>,
) {
    let mut start = Vec::new();
    let mut lost = Vec::new();
    {
        let mut state = shared.state();
        if state.stopping {
            return;
        }
        let now = tokio::time::Instant::now();
        for partition in 0..shared.settings.partitions {
            let want = desired.contains(&partition);
            let held_off = hold_off.is_some_and(|hold_off| {
                state
                    .fenced_off
                    .get(&partition)
                    .is_some_and(|at| now.duration_since(*at) < hold_off)
            });
            match state.parts.get(&partition) {
                None if want && held_off => {}
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
    shared.spawn(async move { take_over_wave(&wave, start).await });
}

/// Whether `partition` still waits for the acquisition `generation`.
fn still_wanted(shared: &Shared, partition: u32, generation: u64) -> bool {
    matches!(
        shared.state().parts.get(&partition),
        Some(Part::Acquiring { generation: current }) if *current == generation
    )
}

/// Gives up an acquisition (the next `set_desired`, which the node re-applies periodically,
/// tries again).
fn give_up(shared: &Shared, partition: u32, generation: u64, error: &RuntimeError) {
    let mut state = shared.state();
    if matches!(
        state.parts.get(&partition),
        Some(Part::Acquiring { generation: current }) if *current == generation
    ) {
        state.parts.remove(&partition);
        tracing::info!(partition, %error, "could not take a partition over; retrying soon");
    }
}

async fn take_over_wave(shared: &Arc<Shared>, wave: Vec<(u32, u64)>) {
    let started = std::time::Instant::now();
    let limit = shared.settings.acquisitions_in_flight_max.max(1);
    // 1. Claims.
    let claimed: Vec<(u32, u64, Result<u64>)> = futures_util::stream::iter(wave)
        .map(|(partition, generation)| async move {
            (partition, generation, claim_next(shared, partition).await)
        })
        .buffer_unordered(limit)
        .collect()
        .await;
    let mut epochs = BTreeMap::new();
    for (partition, generation, outcome) in claimed {
        match outcome {
            Ok(epoch) if still_wanted(shared, partition, generation) => {
                epochs.insert(partition, (generation, epoch));
            }
            Ok(_) => {}
            Err(error) => give_up(shared, partition, generation, &error),
        }
    }
    tracing::debug!(
        partitions = epochs.len(),
        ms = started.elapsed().as_millis() as u64,
        "takeover wave: claimed"
    );
    // 2. Seals, oldest unsealed epoch of every partition first, grouped by old log.
    let mut unsealed: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let targets: Vec<(u32, u64)> = epochs
        .iter()
        .map(|(partition, (_, epoch))| (*partition, *epoch))
        .collect();
    let found: Vec<(u32, Result<Vec<u64>>)> = futures_util::stream::iter(targets)
        .map(|(partition, epoch)| async move {
            (partition, unsealed_before(shared, partition, epoch).await)
        })
        .buffer_unordered(limit)
        .collect()
        .await;
    for (partition, outcome) in found {
        match outcome {
            Ok(list) => {
                unsealed.insert(partition, list);
            }
            Err(error) => {
                if let Some((generation, _)) = epochs.remove(&partition) {
                    give_up(shared, partition, generation, &error);
                }
            }
        }
    }
    let mut seals: HashMap<(u32, u64), Seal> = HashMap::new();
    loop {
        let level: Vec<(u32, u64)> = unsealed
            .iter_mut()
            .filter(|(partition, _)| epochs.contains_key(partition))
            .filter_map(|(partition, list)| {
                (!list.is_empty()).then(|| (*partition, list.remove(0)))
            })
            .collect();
        if level.is_empty() {
            break;
        }
        match seal_level(shared, &level).await {
            Ok(sealed) => seals.extend(sealed),
            Err(error) => {
                for (partition, _) in level {
                    if let Some((generation, _)) = epochs.remove(&partition) {
                        give_up(shared, partition, generation, &error);
                    }
                }
            }
        }
    }
    tracing::debug!(
        seals = seals.len(),
        ms = started.elapsed().as_millis() as u64,
        "takeover wave: sealed"
    );
    // 3. Recovery.
    let cache = ObjectCache::default();
    let seals = &seals;
    let cache = &cache;
    futures_util::stream::iter(epochs)
        .for_each_concurrent(limit, |(partition, (generation, epoch))| async move {
            if !still_wanted(shared, partition, generation) {
                return;
            }
            match recover(shared, partition, epoch, seals, cache).await {
                Ok(recovered) => owned(shared, partition, generation, recovered, started),
                Err(error) => give_up(shared, partition, generation, &error),
            }
        })
        .await;
}

/// Records a recovered partition as owned and announces it.
fn owned(
    shared: &Shared,
    partition: u32,
    generation: u64,
    (epoch, tail, checkpoint): Recovered,
    started: std::time::Instant,
) {
    {
        let mut state = shared.state();
        if !matches!(
            state.parts.get(&partition),
            Some(Part::Acquiring { generation: current }) if *current == generation
        ) {
            return;
        }
        // Another node claimed a later epoch and fenced this one while it was being taken
        // over (the fence was read before the partition was owned, so nothing removed it).
        // Owning a fenced epoch would load entities that can never append and serve reads
        // without the newer owner's records: give it up; the next `set_desired` claims anew.
        if state.fenced.contains(&(partition, epoch)) {
            state.parts.remove(&partition);
            tracing::info!(
                partition,
                epoch,
                "the partition was fenced while this node took it over; claiming it again"
            );
            return;
        }
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
    }
    metrics::histogram!(names::PARTITION_TAKEOVER_SECONDS).record(started.elapsed().as_secs_f64());
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

/// A partition's epoch, its uncompacted tail and its latest checkpoint.
type Recovered = (u64, Vec<TailAppend>, Option<(u64, Checkpoint)>);

/// Creates the claim after the latest one; returns its epoch. Always a new epoch, even after
/// this node's own: appends it made at the old one may still be in flight, and sealing that
/// epoch decides which of them count.
async fn claim_next(shared: &Shared, partition: u32) -> Result<u64> {
    let latest = latest_claim(shared, partition).await?;
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
        Created::Yes => {
            metrics::counter!(names::PARTITION_CLAIMS_TOTAL).increment(1);
            Ok(epoch)
        }
        Created::Exists => Err(RuntimeError::Unavailable(format!(
            "another node claimed epoch {epoch} of partition {partition} first"
        ))),
    }
}

/// The epochs before `epoch` that have no seal yet, oldest first: everything after the
/// newest sealed one (seals are made oldest first).
async fn unsealed_before(shared: &Shared, partition: u32, epoch: u64) -> Result<Vec<u64>> {
    let mut newest_sealed = epoch - 1;
    while newest_sealed >= 1 {
        if read_seal(shared, partition, newest_sealed).await?.is_some() {
            break;
        }
        newest_sealed -= 1;
    }
    Ok((newest_sealed + 1..epoch).collect())
}

/// Seals one epoch of each of `level`'s partitions: one fence and one listing per old log.
async fn seal_level(shared: &Shared, level: &[(u32, u64)]) -> Result<Vec<((u32, u64), Seal)>> {
    let claims: Vec<Claim> = futures_util::stream::iter(level.iter().copied())
        .map(|(partition, epoch)| read_claim(shared, partition, epoch))
        .buffered(shared.settings.acquisitions_in_flight_max.max(1))
        .try_collect()
        .await?;
    let mut by_log: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for claim in claims {
        by_log
            .entry(claim.log)
            .or_default()
            .push((claim.partition, claim.epoch));
    }
    let sealed: Vec<Vec<((u32, u64), Seal)>> = futures_util::stream::iter(by_log)
        .map(|(log, entries)| async move { seal_log(shared, &log, &entries).await })
        .buffer_unordered(shared.settings.acquisitions_in_flight_max.max(1))
        .try_collect()
        .await?;
    Ok(sealed.into_iter().flatten().collect())
}

/// Ends each of `entries`' epochs in `log`: one fence naming them all, then one listing, then
/// a seal per epoch (unless another node sealed it first).
async fn seal_log(
    shared: &Shared,
    log: &str,
    entries: &[(u32, u64)],
) -> Result<Vec<((u32, u64), Seal)>> {
    let in_flight = shared.settings.acquisitions_in_flight_max.max(1);
    let existing: Vec<((u32, u64), Option<Seal>)> = futures_util::stream::iter(entries.to_vec())
        .map(|(partition, epoch)| async move {
            Ok::<_, RuntimeError>((
                (partition, epoch),
                read_seal(shared, partition, epoch).await?,
            ))
        })
        .buffered(in_flight)
        .try_collect()
        .await?;
    let mut wanted = Vec::new();
    let mut sealed = Vec::new();
    for (key, seal) in existing {
        match seal {
            Some(seal) => sealed.push((key, seal)),
            None => wanted.push(key),
        }
    }
    if wanted.is_empty() {
        return Ok(sealed);
    }
    // The fence first: the old owner acknowledges nothing of these epochs written after it
    // reads the fence, and anything it wrote before is in the listing that follows.
    let fence = layout::encode(&Fence {
        entries: wanted.clone(),
        by: shared.log.clone(),
    });
    let mut slot = shared.state().fence_slots.get(log).copied().unwrap_or(0);
    loop {
        if slot >= FENCE_SLOTS_MAX {
            return Err(RuntimeError::Store(format!(
                "log {log} has {FENCE_SLOTS_MAX} fences; cannot add one"
            )));
        }
        let created = shared
            .objects
            .create(layout::fence(log, slot), fence.clone())
            .await?;
        // Slots fill in order: every slot up to this one exists now.
        shared.state().fence_slots.insert(log.to_string(), slot + 1);
        match created {
            Created::Yes => break,
            Created::Exists => slot += 1,
        }
    }
    let names = shared.objects.list(layout::log_prefix(log), None).await?;
    let last = names
        .iter()
        .filter_map(|name| layout::number_of(name))
        .max();
    let made: Vec<((u32, u64), Seal)> = futures_util::stream::iter(wanted)
        .map(|(partition, epoch)| async move {
            let seal = Seal {
                partition,
                epoch,
                log: log.to_string(),
                last,
            };
            let seal = match shared
                .objects
                .create(layout::seal(partition, epoch), layout::encode(&seal))
                .await?
            {
                Created::Yes => seal,
                Created::Exists => read_seal(shared, partition, epoch).await?.ok_or_else(|| {
                    RuntimeError::Store("a seal vanished; seals are never deleted".into())
                })?,
            };
            Ok::<_, RuntimeError>(((partition, epoch), seal))
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    sealed.extend(made);
    Ok(sealed)
}

async fn read_seal(shared: &Shared, partition: u32, epoch: u64) -> Result<Option<Seal>> {
    match shared.objects.get(layout::seal(partition, epoch)).await? {
        Some(bytes) => Ok(Some(layout::decode(&bytes, "seal")?)),
        None => Ok(None),
    }
}

/// Waits until every one of `partitions` has been claimed by another log than this node's
/// (its new owner is taking it over), or `deadline`; returns whether they all were.
pub(super) async fn wait_taken_over(
    shared: &Shared,
    partitions: &[u32],
    deadline: tokio::time::Instant,
) -> bool {
    let mut waiting: Vec<u32> = partitions.to_vec();
    while !waiting.is_empty() {
        let checks: Vec<(u32, bool)> = futures_util::stream::iter(waiting.clone())
            .map(|partition| async move {
                let taken = latest_claim(shared, partition)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|claim| claim.log != shared.log);
                (partition, taken)
            })
            .buffer_unordered(shared.settings.acquisitions_in_flight_max.max(1))
            .collect()
            .await;
        waiting = checks
            .into_iter()
            .filter(|(_, taken)| !taken)
            .map(|(partition, _)| partition)
            .collect();
        if waiting.is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    true
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
    seals: &HashMap<(u32, u64), Seal>,
    cache: &ObjectCache,
) -> Result<Recovered> {
    let checkpoint = latest_checkpoint(shared, partition).await?;
    let first_epoch = checkpoint
        .as_ref()
        .map_or(1, |(_, checkpoint)| checkpoint.epoch);
    // Which objects of which log hold each epoch's records. The claims and seals of the
    // epochs since the checkpoint are read in parallel (after a claim war they are many),
    // and a read that fails is tried again before the whole takeover is: a takeover given
    // up claims a new epoch next time, which makes the next recovery longer still.
    let limit = shared.settings.recovery_reads_in_flight_max.max(1);
    let stretches: Vec<(u64, Claim, Seal)> = futures_util::stream::iter(first_epoch.max(1)..epoch)
        .map(|stretch| async move {
            let claim = read_retrying(|| read_claim(shared, partition, stretch)).await?;
            let seal = match seals.get(&(partition, stretch)) {
                Some(seal) => seal.clone(),
                None => read_retrying(|| read_seal(shared, partition, stretch))
                    .await?
                    .ok_or_else(|| {
                        RuntimeError::Store(format!(
                            "epoch {stretch} of partition {partition} has no seal, yet a later epoch exists"
                        ))
                    })?,
            };
            Ok::<_, RuntimeError>((stretch, claim, seal))
        })
        .buffered(limit)
        .try_collect()
        .await?;
    let mut ranges = Vec::new();
    for (stretch, claim, seal) in stretches {
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

/// Reads done by a recovery are tried this many times before the takeover gives up.
const RECOVERY_READ_ATTEMPTS: usize = 4;

/// `read` again after a failure (with backoff), at most [`RECOVERY_READ_ATTEMPTS`] times.
async fn read_retrying<T, F, Fut>(mut read: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = super::node_log::retry_backoff();
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt >= RECOVERY_READ_ATTEMPTS => return Err(error),
            Err(_) => {
                attempt += 1;
                super::node_log::back_off(&mut backoff).await;
            }
        }
    }
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
        for &number in cache.listing(shared, log).await?.iter() {
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

/// Log objects read, by (log, object number).
type ObjectsRead = HashMap<(String, u64), Arc<LogObject>>;

/// Log objects read during one wave of takeovers: a dead node's objects hold many
/// partitions, and each is read once, not once per partition.
#[derive(Clone, Default)]
pub(super) struct ObjectCache {
    objects: Arc<tokio::sync::Mutex<ObjectsRead>>,
    /// One listing per log per wave: the objects that exist (any made after it are beyond every
    /// seal of this wave, and any deleted since are compacted).
    listings: Arc<tokio::sync::Mutex<HashMap<String, Arc<Vec<u64>>>>>,
}

impl ObjectCache {
    /// The object numbers of `log`, listed once per wave.
    async fn listing(&self, shared: &Shared, log: &str) -> Result<Arc<Vec<u64>>> {
        let mut listings = self.listings.lock().await;
        if let Some(numbers) = listings.get(log) {
            return Ok(Arc::clone(numbers));
        }
        let names = shared.objects.list(layout::log_prefix(log), None).await?;
        let numbers = Arc::new(
            names
                .iter()
                .filter_map(|name| layout::number_of(name))
                .collect::<Vec<_>>(),
        );
        listings.insert(log.to_string(), Arc::clone(&numbers));
        Ok(numbers)
    }

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
