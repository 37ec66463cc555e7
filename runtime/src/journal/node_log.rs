//! The node log: every entity of a node appends here, and one object per flush holds them all.
//!
//! [`NodeJournal`] is a node's whole journal: the log writer (this file), the partitions it
//! owns (`partitions`: claims, seals, recovery) and compaction into entity segments
//! (`compaction`). ARCHITECTURE.md ("Journal v2") has the protocol and its fencing argument;
//! in short:
//! - entities map to a fixed number of partitions; a node appends only to partitions it holds
//!   an epoch of (a create-only claim), tagging each append with (partition, epoch);
//! - the writer makes one log object per flush (`log/<log>/<n>`, contiguous, one flush in
//!   flight, create-only), then reads its fence slots up to the first free one, and only then
//!   acknowledges the appends of that object whose (partition, epoch) no fence names;
//! - a node taking a partition over claims the next epoch, fences the previous owner's log,
//!   lists it and seals the epoch where the listing ends, then replays what is not compacted.
//!
//! The writer never gives up on an object: a failed create is retried with the same number and
//! bytes until the store answers, so the log has no holes and an object's content never
//! changes. Appends wait meanwhile (their callers time out and retry with the same message id).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::error::{Result, RuntimeError};
use crate::id::EntityId;
use crate::journal::layout::{self, Append, Checkpoint, Fence, LogObject, Record};
use crate::journal::objects::{Created, Objects};
use crate::journal::segments::{Journal, Loaded};
use crate::metrics as names;

/// How the journal batches, checks and compacts (from `[journal]`).
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// Fixed for the life of a store: entities map to this many partitions.
    pub partitions: u32,
    /// Least time between the starts of two flushes (0: flush as soon as the last one ended).
    pub flush_interval: Duration,
    /// A flush starts early once this many bytes wait.
    pub flush_bytes_max: usize,
    /// How often a node holding partitions looks for fences when it has nothing to flush.
    pub fence_check_interval: Duration,
    /// How often owned partitions are compacted into entity segments.
    pub compact_interval: Duration,
    /// A partition is compacted early once its uncompacted records reach this.
    pub compact_records_max: usize,
    /// Partitions taken over at once.
    pub acquisitions_in_flight_max: usize,
    /// Object reads in flight at once while recovering a partition.
    pub recovery_reads_in_flight_max: usize,
    /// How often dead logs are cleaned up.
    pub janitor_interval: Duration,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            partitions: 64,
            flush_interval: Duration::from_millis(5),
            flush_bytes_max: 4 * 1024 * 1024,
            fence_check_interval: Duration::from_secs(1),
            compact_interval: Duration::from_secs(2),
            compact_records_max: 256,
            acquisitions_in_flight_max: 16,
            recovery_reads_in_flight_max: 16,
            janitor_interval: Duration::from_secs(30),
        }
    }
}

/// Why an append was not made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// This node does not hold the entity's partition (any more): the entity must go.
    #[error("this node no longer owns the entity's partition")]
    NotOwner,
    /// The append does not follow the entity's journal as this node knows it (another
    /// activation of the entity loaded it since): the entity must reload.
    #[error("the append does not follow the entity's journal; reload it")]
    Conflict,
}

/// Partitions gained and lost, for the entity directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionEvent {
    /// Recovered: its entities may be activated, at `epoch`.
    Ready { partition: u32, epoch: u64 },
    /// Released or fenced: its entities must passivate.
    Lost { partition: u32, epoch: u64 },
}

/// Where a partition stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStatus {
    NotOwned,
    Acquiring,
    Owned { epoch: u64 },
}

pub(super) type Done = Box<dyn FnOnce(std::result::Result<(), AppendError>) + Send>;

pub(super) struct Pending {
    pub append: Append,
    pub done: Done,
}

/// One append as it sits in a partition's uncompacted tail.
#[derive(Debug, Clone)]
pub(super) struct TailAppend {
    pub append: Append,
}

pub(super) enum Part {
    Acquiring {
        generation: u64,
    },
    Owned {
        epoch: u64,
        /// Appends not yet compacted, in history order.
        tail: Vec<TailAppend>,
        tail_records: usize,
        /// The latest checkpoint and its number.
        checkpoint: Option<(u64, Checkpoint)>,
        /// Who may append to which entity, and from which seq.
        writers: HashMap<EntityId, Writer>,
    },
}

/// One entity's appends on this node, so that only the activation that loaded it last
/// appends, and only right after its head: two activations of one entity (a crashed one with
/// an append in flight, and its successor) can never both write a seq.
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// The seq the next append must start at; `None` while (re)loading.
    next_seq: Option<u64>,
    /// Appends handed to the log and not answered yet.
    in_flight: usize,
    /// Bumped by every load, so an older load does not set `next_seq`.
    loads: u64,
}

pub(super) struct State {
    pub pending: Vec<Pending>,
    pub pending_bytes: usize,
    pub next_number: u64,
    /// Fence slots of this log known to exist.
    pub fences_seen: u64,
    /// (partition, epoch) pairs some fence names.
    pub fenced: BTreeSet<(u32, u64)>,
    /// The last log object whose appends were acknowledged.
    pub acked_through: Option<u64>,
    /// This log's objects not deleted yet, with the (partition, epoch) pairs each holds.
    pub own_objects: BTreeMap<u64, BTreeSet<(u32, u64)>>,
    pub parts: BTreeMap<u32, Part>,
    /// The partitions the view gives this node.
    pub desired: BTreeSet<u32>,
    /// When each partition was last taken from this node by another's fence.
    pub fenced_off: HashMap<u32, tokio::time::Instant>,
    /// Per foreign log, the first fence slot not known to exist (slots fill in order).
    pub fence_slots: HashMap<String, u64>,
    pub next_generation: u64,
    pub stopping: bool,
}

pub(super) struct Shared {
    pub node: String,
    /// This incarnation's log: `<node>.<incarnation>.<random>`.
    pub log: String,
    pub objects: Arc<dyn Objects>,
    pub segments: Journal,
    pub settings: JournalSettings,
    pub state: Mutex<State>,
    pub flush_wake: Notify,
    pub compact_wake: Notify,
    /// Notified whenever appends are answered (loads wait for an entity's to settle).
    pub appends_settled: Notify,
    /// One fence check at a time (each reads the next unknown slot).
    pub fence_check: tokio::sync::Mutex<()>,
    pub events: broadcast::Sender<PartitionEvent>,
    /// The journal's tasks, aborted by [`NodeJournal::abort`].
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Decides which foreign logs this node cleans up (its node is gone, and the log falls to
    /// this node among the live ones).
    pub janitor_scope: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl Shared {
    /// Spawns one of the journal's tasks (aborted with it).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.retain(|task| !task.is_finished());
        tasks.push(tokio::spawn(task));
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Partition events kept for a slow subscriber before it misses some.
const EVENTS_BUFFERED_MAX: usize = 4096;
/// Backoff between retries of a store operation the journal cannot do without.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A node's journal (cheap to clone).
#[derive(Clone)]
pub struct NodeJournal {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeJournal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeJournal")
            .field("log", &self.shared.log)
            .finish()
    }
}

/// The partition of `entity` among `partitions` (a stable hash, the same on every node).
pub fn partition_of(entity: &EntityId, partitions: u32) -> u32 {
    crate::cluster::placement::partition_of(&entity.kind, &entity.key, partitions)
}

impl NodeJournal {
    /// Starts the journal of one node incarnation: its log writer, compaction and janitor
    /// tasks. `log` must be unique to this incarnation (see [`log_name`]).
    pub fn start(
        node: &str,
        log: String,
        objects: Arc<dyn Objects>,
        segments: Journal,
        settings: JournalSettings,
        janitor_scope: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let shared = Arc::new(Shared {
            node: node.to_string(),
            log,
            objects,
            segments,
            settings,
            state: Mutex::new(State {
                pending: Vec::new(),
                pending_bytes: 0,
                next_number: 0,
                fences_seen: 0,
                fenced: BTreeSet::new(),
                acked_through: None,
                own_objects: BTreeMap::new(),
                parts: BTreeMap::new(),
                desired: BTreeSet::new(),
                fenced_off: HashMap::new(),
                fence_slots: HashMap::new(),
                next_generation: 0,
                stopping: false,
            }),
            flush_wake: Notify::new(),
            compact_wake: Notify::new(),
            appends_settled: Notify::new(),
            fence_check: tokio::sync::Mutex::new(()),
            events,
            tasks: Mutex::new(Vec::new()),
            janitor_scope: Box::new(janitor_scope),
        });
        shared.spawn(flush_loop(Arc::clone(&shared)));
        shared.spawn(fence_watch(Arc::downgrade(&shared)));
        shared.spawn(super::compaction::compaction_loop(Arc::clone(&shared)));
        shared.spawn(super::compaction::janitor_loop(Arc::downgrade(&shared)));
        Self { shared }
    }

    pub fn log(&self) -> &str {
        &self.shared.log
    }

    pub fn settings(&self) -> &JournalSettings {
        &self.shared.settings
    }

    /// The entity segments and snapshots (history paging, snapshots, retention).
    pub fn segments(&self) -> &Journal {
        &self.shared.segments
    }

    pub fn partition_of(&self, entity: &EntityId) -> u32 {
        partition_of(entity, self.shared.settings.partitions)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PartitionEvent> {
        self.shared.events.subscribe()
    }

    pub fn status(&self, partition: u32) -> PartitionStatus {
        match self.shared.state().parts.get(&partition) {
            None => PartitionStatus::NotOwned,
            Some(Part::Acquiring { .. }) => PartitionStatus::Acquiring,
            Some(Part::Owned { epoch, .. }) => PartitionStatus::Owned { epoch: *epoch },
        }
    }

    /// Partitions held, with their epochs.
    pub fn owned(&self) -> Vec<(u32, u64)> {
        self.shared
            .state()
            .parts
            .iter()
            .filter_map(|(partition, part)| match part {
                Part::Owned { epoch, .. } => Some((*partition, *epoch)),
                Part::Acquiring { .. } => None,
            })
            .collect()
    }

    /// The partitions this node should hold (from its view): takes over those it lacks and
    /// lets go of the others. Call again to retry takeovers that failed.
    pub fn set_desired(&self, desired: BTreeSet<u32>) {
        super::partitions::set_desired(&self.shared, desired, None);
    }

    /// [`Self::set_desired`], except that a partition another node's fence took from this one
    /// less than `hold_off` ago is not claimed back yet. A node that sees only a minority of
    /// the cluster up passes its hold-off: the nodes it cannot see may be serving, and
    /// claiming back at once would fence them again and again for as long as a network
    /// partition lasts.
    pub fn set_desired_holding_off(&self, desired: BTreeSet<u32>, hold_off: Duration) {
        super::partitions::set_desired(&self.shared, desired, Some(hold_off));
    }

    /// Appends `records` (events from `first_seq`) of `entity`, written at `epoch` of its
    /// partition (the epoch it was loaded at); `done` runs once they are durable and no fence
    /// names the partition's epoch, or with the reason they were not acknowledged.
    pub fn append(
        &self,
        entity: &EntityId,
        epoch: u64,
        first_seq: u64,
        records: Vec<Record>,
        done: impl FnOnce(std::result::Result<(), AppendError>) + Send + 'static,
    ) {
        let partition = self.partition_of(entity);
        let bytes: usize = records
            .iter()
            .map(|record| {
                record.reply.len() + record.events.iter().map(Vec::len).sum::<usize>() + 32
            })
            .sum::<usize>()
            + entity.key.len()
            + entity.kind.len();
        let events = records
            .iter()
            .map(|record| record.events.len() as u64)
            .sum::<u64>();
        let mut state = self.shared.state();
        if state.stopping {
            drop(state);
            return done(Err(AppendError::NotOwner));
        }
        let Some(Part::Owned {
            epoch: current,
            writers,
            ..
        }) = state.parts.get_mut(&partition)
        else {
            drop(state);
            return done(Err(AppendError::NotOwner));
        };
        if *current != epoch {
            drop(state);
            return done(Err(AppendError::NotOwner));
        }
        let writer = writers.entry(entity.clone()).or_default();
        if writer.next_seq != Some(first_seq) {
            drop(state);
            return done(Err(AppendError::Conflict));
        }
        writer.next_seq = Some(first_seq + events);
        writer.in_flight += 1;
        state.pending.push(Pending {
            append: Append {
                partition,
                epoch,
                entity: entity.clone(),
                first_seq,
                records,
            },
            done: Box::new(done),
        });
        state.pending_bytes += bytes;
        drop(state);
        self.shared.flush_wake.notify_one();
    }

    /// An entity's journal: its snapshot and segments, and what the node log holds of it that
    /// is not compacted yet. Only for an entity of a partition this node holds.
    pub async fn load(&self, entity: &EntityId) -> Result<(u64, Loaded)> {
        let partition = self.partition_of(entity);
        let not_held = || {
            RuntimeError::Unavailable(format!(
                "this node does not hold partition {partition} of {entity}"
            ))
        };
        // Stop earlier activations from appending, then wait for what they have in flight:
        // it becomes part of the tail, or is refused.
        let mut load = None;
        let (epoch, tail) = loop {
            let settled = self.shared.appends_settled.notified();
            {
                let mut state = self.shared.state();
                let Some(Part::Owned {
                    epoch,
                    tail,
                    writers,
                    ..
                }) = state.parts.get_mut(&partition)
                else {
                    return Err(not_held());
                };
                let writer = writers.entry(entity.clone()).or_default();
                writer.next_seq = None;
                let this_load = *load.get_or_insert_with(|| {
                    writer.loads += 1;
                    writer.loads
                });
                if writer.loads != this_load {
                    return Err(RuntimeError::Unavailable(format!(
                        "{entity} is being loaded again"
                    )));
                }
                if writer.in_flight == 0 {
                    // The tail first: compaction drops from it only what it has written to
                    // segments, which the listing below then finds.
                    break (
                        *epoch,
                        tail.iter()
                            .filter(|entry| entry.append.entity == *entity)
                            .map(|entry| (entry.append.first_seq, entry.append.records.clone()))
                            .collect::<Vec<_>>(),
                    );
                }
            }
            settled.await;
        };
        let mut loaded = self.shared.segments.load(entity).await?;
        for (first_seq, records) in tail {
            loaded
                .extend(first_seq, records)
                .map_err(|error| RuntimeError::Store(format!("{entity}: node log: {error}")))?;
        }
        let mut state = self.shared.state();
        let Some(Part::Owned {
            epoch: current,
            writers,
            ..
        }) = state.parts.get_mut(&partition)
        else {
            return Err(not_held());
        };
        let writer = writers.entry(entity.clone()).or_default();
        if *current != epoch || Some(writer.loads) != load {
            return Err(RuntimeError::Unavailable(format!(
                "{entity} moved while it was loaded; retry"
            )));
        }
        writer.next_seq = Some(loaded.head + 1);
        Ok((epoch, loaded))
    }

    /// Waits until each of `partitions` has a newer claim by another node (graceful leave:
    /// the new owners are taking them over), or `deadline`; returns whether all do.
    pub async fn wait_taken_over(
        &self,
        partitions: &[u32],
        deadline: tokio::time::Instant,
    ) -> bool {
        super::partitions::wait_taken_over(&self.shared, partitions, deadline).await
    }

    /// Stops every task of the journal at once, as a crash would: nothing pending is
    /// flushed or answered.
    pub fn abort(&self) {
        self.shared.state().stopping = true;
        for task in self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }

    /// Flushes what is pending and stops taking appends.
    pub fn stop(&self) {
        self.shared.state().stopping = true;
        self.shared.flush_wake.notify_one();
        self.shared.compact_wake.notify_one();
    }
}

/// A log name unique to one incarnation of `node`.
pub fn log_name(node: &str, incarnation: u64) -> String {
    format!("{node}.{incarnation}.{:08x}", fastrand::u32(..))
}

/// Waits `backoff` and doubles it, up to the maximum.
pub(super) async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(RETRY_BACKOFF_MAX);
}

pub(super) fn retry_backoff() -> Duration {
    RETRY_BACKOFF_MIN
}

async fn flush_loop(shared: Arc<Shared>) {
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        // Wait for appends (or stop).
        loop {
            let notified = shared.flush_wake.notified();
            {
                let state = shared.state();
                if !state.pending.is_empty() {
                    break;
                }
                if state.stopping {
                    return;
                }
            }
            notified.await;
        }
        // Group commit: at most one flush per interval, unless enough bytes wait.
        if let Some(started) = last_start {
            let next = started + shared.settings.flush_interval;
            let full = shared.state().pending_bytes >= shared.settings.flush_bytes_max;
            if !full && tokio::time::Instant::now() < next {
                tokio::time::sleep_until(next).await;
            }
        }
        last_start = Some(tokio::time::Instant::now());
        let (number, pending) = {
            let mut state = shared.state();
            state.pending_bytes = 0;
            (state.next_number, std::mem::take(&mut state.pending))
        };
        flush(&shared, number, pending).await;
    }
}

/// Writes one log object, checks the fences, acknowledges.
async fn flush(shared: &Shared, number: u64, pending: Vec<Pending>) {
    let started = std::time::Instant::now();
    let object = LogObject {
        log: shared.log.clone(),
        number,
        appends: pending.iter().map(|item| item.append.clone()).collect(),
    };
    let bytes = layout::encode(&object);
    let path = layout::log_object(&shared.log, number);
    let mut backoff = retry_backoff();
    loop {
        match shared.objects.create(path.clone(), bytes.clone()).await {
            // Exists: an earlier attempt of this same object landed after all.
            Ok(Created::Yes | Created::Exists) => break,
            Err(error) => {
                tracing::warn!(%error, number, "cannot write the node log; retrying");
                back_off(&mut backoff).await;
            }
        }
    }
    metrics::histogram!(names::JOURNAL_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(names::JOURNAL_APPENDS_TOTAL).increment(1);
    metrics::histogram!(names::JOURNAL_BATCH_EVENTS).record(pending.len() as f64);
    check_fences_until_done(shared).await;
    let mut acknowledged = Vec::with_capacity(pending.len());
    let mut lost = Vec::new();
    {
        let mut state = shared.state();
        let mut present = BTreeSet::new();
        for item in pending {
            let key = (item.append.partition, item.append.epoch);
            present.insert(key);
            let fenced = state.fenced.contains(&key);
            if let Some(Part::Owned {
                epoch,
                tail,
                tail_records,
                writers,
                ..
            }) = state.parts.get_mut(&item.append.partition)
                && *epoch == item.append.epoch
            {
                if let Some(writer) = writers.get_mut(&item.append.entity) {
                    writer.in_flight = writer.in_flight.saturating_sub(1);
                }
                if fenced {
                    // Fenced but still held (the fence named this epoch before it was owned):
                    // let it go below, so that its entities leave and it is claimed anew.
                    lost.push(key);
                } else {
                    *tail_records += item.append.records.len();
                    tail.push(TailAppend {
                        append: item.append,
                    });
                }
            }
            let outcome = if fenced {
                Err(AppendError::NotOwner)
            } else {
                Ok(())
            };
            acknowledged.push((item.done, outcome));
        }
        lost.sort_unstable();
        lost.dedup();
        for (partition, _) in &lost {
            state.parts.remove(partition);
            state
                .fenced_off
                .insert(*partition, tokio::time::Instant::now());
        }
        state.own_objects.insert(number, present);
        state.acked_through = Some(number);
        state.next_number = number + 1;
        let over = state.parts.values().any(|part| {
            matches!(part, Part::Owned { tail_records, .. } if *tail_records >= shared.settings.compact_records_max)
        });
        if over {
            shared.compact_wake.notify_one();
        }
    }
    shared.appends_settled.notify_waiters();
    for (partition, epoch) in lost {
        tracing::warn!(
            partition,
            epoch,
            "partition held at an epoch another node fenced; its entities leave this one"
        );
        let _ = shared
            .events
            .send(PartitionEvent::Lost { partition, epoch });
    }
    for (done, outcome) in acknowledged {
        done(outcome);
    }
}

async fn check_fences_until_done(shared: &Shared) {
    let mut backoff = retry_backoff();
    while let Err(error) = check_fences(shared).await {
        tracing::warn!(%error, "cannot read this node's fences; acknowledgements wait");
        back_off(&mut backoff).await;
    }
}

/// Reads this log's fence slots from the first unknown one up to the first free one; a fence
/// takes its partition away from this node.
pub(super) async fn check_fences(shared: &Shared) -> Result<()> {
    let _one_at_a_time = shared.fence_check.lock().await;
    loop {
        let slot = shared.state().fences_seen;
        let Some(bytes) = shared.objects.get(layout::fence(&shared.log, slot)).await? else {
            return Ok(());
        };
        let fence: Fence = layout::decode(&bytes, "fence")?;
        let mut lost = Vec::new();
        {
            let mut state = shared.state();
            state.fences_seen = slot + 1;
            for (partition, epoch) in &fence.entries {
                state.fenced.insert((*partition, *epoch));
                let held = matches!(
                    state.parts.get(partition),
                    Some(Part::Owned { epoch: current, .. }) if current == epoch
                );
                if held {
                    state.parts.remove(partition);
                    state
                        .fenced_off
                        .insert(*partition, tokio::time::Instant::now());
                    lost.push((*partition, *epoch));
                }
            }
        }
        for (partition, epoch) in lost {
            tracing::warn!(partition, epoch, by = %fence.by, "partition taken over by another node; its entities leave this one");
            metrics::counter!(names::JOURNAL_FENCED_TOTAL).increment(1);
            let _ = shared
                .events
                .send(PartitionEvent::Lost { partition, epoch });
        }
    }
}

/// Looks for fences now and then when nothing is flushed, so a node that only reads still
/// learns soon that it lost a partition.
async fn fence_watch(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(interval) = shared
            .upgrade()
            .map(|shared| shared.settings.fence_check_interval)
        else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let holds = {
            let state = shared.state();
            if state.stopping {
                return;
            }
            state
                .parts
                .values()
                .any(|part| matches!(part, Part::Owned { .. }))
        };
        if holds && let Err(error) = check_fences(&shared).await {
            tracing::debug!(%error, "fence check failed; the next flush checks again");
        }
    }
}
