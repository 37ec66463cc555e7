//! Seeded simulation of the journal protocol: several nodes run the real node log, partition
//! takeovers, compaction and janitor against an in-memory store that delays, reorders and fails
//! each request; nodes crash (their tasks vanish mid-request), freeze and come back with new
//! incarnations, and their views of who owns which partition disagree. Clients append to
//! entities through whichever node they pick and retry with the same message id. At the end
//! a fresh node takes every partition over and reads every entity's history; the checker
//! asserts that no acknowledged record is lost, every history is one linear sequence, and no
//! message id is applied twice.
//!
//! Everything runs on one thread with tokio's paused clock and one seeded generator, so a seed
//! replays exactly. `cargo test -p runtime journal::sim` runs [`SEEDS_DEFAULT`] seeds;
//! `ACTORHUB_SIM_SEEDS=100000` runs more, `ACTORHUB_SIM_SEED=1234` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::{Result, RuntimeError};
use crate::id::{EntityId, MsgId};
use crate::journal::layout::{self, Record};
use crate::journal::node_log::{AppendError, JournalSettings, NodeJournal, PartitionStatus};
use crate::journal::objects::{Created, Objects};
use crate::journal::segments::Journal;

/// Seeds of the default test run.
const SEEDS_DEFAULT: u64 = 5_000;
const NODES: usize = 3;
const PARTITIONS: u32 = 4;
const ENTITIES: usize = 10;
/// Virtual time of the faulty phase of one seed.
const RUN_MS: u64 = 1_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shared generator of one seed (deterministic: one thread, paused clock).
#[derive(Clone)]
struct Dice(Arc<Mutex<fastrand::Rng>>);

impl Dice {
    fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))))
    }
    fn below(&self, bound: u64) -> u64 {
        lock(&self.0).u64(..bound.max(1))
    }
    fn percent(&self, chance: u64) -> bool {
        self.below(100) < chance
    }
}

/// The store: objects, and the faults every request may meet.
struct SimStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    dice: Dice,
    /// Percent of requests that fail before doing anything.
    fail_before_percent: u64,
    /// Percent of requests that take effect but answer with an error.
    fail_after_percent: u64,
}

/// One node's connection to the store: its requests wait while the node is frozen.
struct NodeObjects {
    store: Arc<SimStore>,
    frozen_until: Arc<Mutex<tokio::time::Instant>>,
    /// For the trace (`ACTORHUB_SIM_TRACE=1`).
    name: String,
}

fn tracing_on() -> bool {
    std::env::var("ACTORHUB_SIM_TRACE").is_ok()
}

thread_local! {
    static STARTED: std::cell::Cell<Option<tokio::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Virtual milliseconds since the seed started.
fn now_ms() -> u128 {
    STARTED.with(|started| {
        started
            .get()
            .map_or(0, |started| started.elapsed().as_millis())
    })
}

impl NodeObjects {
    /// A request's way to the store: a delay (sometimes long, which reorders it after later
    /// requests of other nodes), no progress while the node is frozen, maybe a failure.
    async fn travel(&self) -> Result<()> {
        let dice = &self.store.dice;
        let delay = if dice.percent(2) {
            dice.below(300)
        } else {
            dice.below(6)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        loop {
            let until = *lock(&self.frozen_until);
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(())
    }

    async fn request<T: std::fmt::Debug>(
        &self,
        what: String,
        apply: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T,
    ) -> Result<T> {
        self.travel().await?;
        if self.store.dice.percent(self.store.fail_before_percent) {
            return Err(RuntimeError::Store(
                "simulated failure before the request".into(),
            ));
        }
        let value = apply(&mut lock(&self.store.objects));
        if tracing_on() && !what.starts_with("get") && !what.starts_with("exists") {
            eprintln!("{:>6} {:<12} {what} -> {value:?}", now_ms(), self.name);
        }
        self.travel().await?;
        if self.store.dice.percent(self.store.fail_after_percent) {
            return Err(RuntimeError::Store(
                "simulated failure after the request".into(),
            ));
        }
        Ok(value)
    }
}

impl Objects for NodeObjects {
    fn create(&self, path: String, bytes: Vec<u8>) -> BoxFuture<'_, Result<Created>> {
        Box::pin(self.request(
            format!("create {path}"),
            move |objects| match objects.entry(path) {
                std::collections::btree_map::Entry::Occupied(_) => Created::Exists,
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(bytes);
                    Created::Yes
                }
            },
        ))
    }

    fn get(&self, path: String) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(self.request("get".into(), move |objects| {
            objects.get(&path).map(|bytes| Bytes::from(bytes.clone()))
        }))
    }

    fn exists(&self, path: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.request("exists".into(), move |objects| objects.contains_key(&path)))
    }

    fn list(&self, prefix: String, offset: Option<String>) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(self.request(format!("list {prefix}"), move |objects| {
            let start = format!("{prefix}/");
            objects
                .range(start.clone()..)
                .take_while(|(name, _)| name.starts_with(&start))
                .filter(|(name, _)| offset.as_ref().is_none_or(|offset| *name > offset))
                .map(|(name, _)| name.clone())
                .collect()
        }))
    }

    fn delete(&self, path: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.request(format!("delete {path}"), move |objects| {
                objects.remove(&path).is_some()
            })
            .await
            .map(drop)
        })
    }
}

/// What a node knows of one entity (one command in flight at a time).
#[derive(Clone)]
struct Cell {
    epoch: u64,
    head: u64,
    applied: BTreeMap<MsgId, u64>,
    busy: bool,
}

/// One simulated node incarnation.
struct SimNode {
    name: String,
    journal: NodeJournal,
    cells: Arc<Mutex<BTreeMap<EntityId, Cell>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    frozen_until: Arc<Mutex<tokio::time::Instant>>,
}

/// Acknowledgements seen by clients: (entity, msg id) → seq; and what went wrong on the way
/// (tasks cannot fail the test by panicking).
#[derive(Clone, Default)]
struct Acks {
    seqs: Arc<Mutex<BTreeMap<(EntityId, MsgId), u64>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Acks {
    fn record(&self, entity: &EntityId, msg_id: MsgId, seq: u64) {
        let previous = lock(&self.seqs).insert((entity.clone(), msg_id), seq);
        if let Some(previous) = previous
            && previous != seq
        {
            self.violation(format!(
                "{entity}: message {msg_id} acknowledged at seq {previous} and at {seq}"
            ));
        }
    }

    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }
}

fn settings() -> JournalSettings {
    JournalSettings {
        partitions: PARTITIONS,
        flush_interval: Duration::from_millis(2),
        flush_bytes_max: 64 * 1024,
        fence_check_interval: Duration::from_millis(30),
        compact_interval: Duration::from_millis(60),
        compact_records_max: 16,
        acquisitions_in_flight_max: 4,
        recovery_reads_in_flight_max: 4,
        janitor_interval: Duration::from_millis(150),
    }
}

fn start_node(
    store: &Arc<SimStore>,
    name: &str,
    incarnation: u64,
    live_logs: &Arc<Mutex<BTreeSet<String>>>,
) -> SimNode {
    let frozen_until = Arc::new(Mutex::new(tokio::time::Instant::now()));
    let objects: Arc<dyn Objects> = Arc::new(NodeObjects {
        store: Arc::clone(store),
        frozen_until: Arc::clone(&frozen_until),
        name: format!("{name}.{incarnation}"),
    });
    let log = format!("{name}.{incarnation}.sim");
    lock(live_logs).insert(log.clone());
    let live = Arc::clone(live_logs);
    let segments = Journal::new(Arc::clone(&objects), log.clone());
    let journal = NodeJournal::start(name, log, objects, segments, settings(), move |log| {
        !lock(&live).contains(log)
    });
    let cells: Arc<Mutex<BTreeMap<EntityId, Cell>>> = Arc::default();
    // Entities of a lost partition leave the node.
    let mut events = journal.subscribe();
    let forget = Arc::clone(&cells);
    let watcher_journal = journal.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if tracing_on() {
                eprintln!(
                    "{:>6} {:<12} EVENT {event:?}",
                    now_ms(),
                    watcher_journal.log()
                );
            }
            if let crate::journal::PartitionEvent::Lost { partition, .. } = event {
                lock(&forget).retain(|entity, _| watcher_journal.partition_of(entity) != partition);
            }
        }
    });
    SimNode {
        name: name.to_string(),
        journal,
        cells,
        tasks: vec![watcher],
        frozen_until,
    }
}

impl SimNode {
    fn crash(&mut self, live_logs: &Arc<Mutex<BTreeSet<String>>>) {
        self.journal.abort();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        lock(live_logs).remove(self.journal.log());
    }

    /// A client's command through this node: the seq it was acknowledged at, if it was.
    fn command(&mut self, entity: EntityId, msg_id: MsgId, acks: &Acks) {
        let journal = self.journal.clone();
        let cells = Arc::clone(&self.cells);
        let acks = acks.clone();
        let task = tokio::spawn(async move {
            let partition = journal.partition_of(&entity);
            let PartitionStatus::Owned { epoch } = journal.status(partition) else {
                return;
            };
            let known = lock(&cells).get(&entity).cloned();
            let cell = match known {
                Some(cell) if cell.epoch == epoch => cell,
                Some(cell) if cell.busy => return,
                _ => {
                    let Ok((epoch, loaded)) = journal.load(&entity).await else {
                        return;
                    };
                    if tracing_on() {
                        eprintln!(
                            "{:>6} {:<12} LOADED {entity} head {} epoch {epoch}",
                            now_ms(),
                            journal.log(),
                            loaded.head
                        );
                    }
                    let mut applied = BTreeMap::new();
                    let mut seq = loaded.snapshot.as_ref().map_or(0, |snapshot| snapshot.seq);
                    for (first, records) in &loaded.segments {
                        seq = first - 1;
                        for record in records {
                            seq += record.events.len() as u64;
                            if let Some(id) = record.msg_id
                                && applied.insert(id, seq).is_some()
                            {
                                acks.violation(format!(
                                    "{entity}: message {id} applied twice in the journal"
                                ));
                            }
                        }
                    }
                    if seq != loaded.head {
                        acks.violation(format!(
                            "{entity}: loaded head {} but records end at {seq}",
                            loaded.head
                        ));
                    }
                    let cell = Cell {
                        epoch,
                        head: loaded.head,
                        applied,
                        busy: false,
                    };
                    let mut all = lock(&cells);
                    match all.get(&entity) {
                        // Someone else loaded it meanwhile.
                        Some(current) if current.epoch == epoch => current.clone(),
                        _ => {
                            all.insert(entity.clone(), cell.clone());
                            cell
                        }
                    }
                }
            };
            if let Some(seq) = cell.applied.get(&msg_id) {
                acks.record(&entity, msg_id, *seq);
                return;
            }
            let first_seq = {
                let mut all = lock(&cells);
                let Some(current) = all.get_mut(&entity) else {
                    return;
                };
                if current.busy || current.epoch != cell.epoch {
                    return;
                }
                current.busy = true;
                current.head + 1
            };
            let record = Record {
                msg_id: Some(msg_id),
                events: vec![msg_id.0.to_le_bytes().to_vec()],
                reply: first_seq.to_le_bytes().to_vec(),
                schema: 1,
            };
            let (sender, receiver) = tokio::sync::oneshot::channel();
            journal.append(
                &entity,
                cell.epoch,
                first_seq,
                vec![record],
                move |outcome| {
                    let _ = sender.send(outcome);
                },
            );
            let outcome = receiver.await;
            let mut all = lock(&cells);
            match outcome {
                Ok(Ok(())) => {
                    if let Some(current) = all.get_mut(&entity)
                        && current.epoch == cell.epoch
                    {
                        current.busy = false;
                        current.head = first_seq;
                        current.applied.insert(msg_id, first_seq);
                    }
                    acks.record(&entity, msg_id, first_seq);
                    if tracing_on() {
                        eprintln!(
                            "{:>6} {:<12} ACK {entity} seq {first_seq} {msg_id} epoch {}",
                            now_ms(),
                            journal.log(),
                            cell.epoch
                        );
                    }
                }
                Ok(Err(AppendError::NotOwner | AppendError::Conflict)) | Err(_) => {
                    if tracing_on() {
                        eprintln!(
                            "{:>6} {:<12} NOT ACKED {entity} seq {first_seq} {msg_id} epoch {}: {outcome:?}",
                            now_ms(),
                            journal.log(),
                            cell.epoch
                        );
                    }
                    // Not acknowledged: the entity reloads before its next append.
                    all.remove(&entity);
                }
            }
        });
        self.tasks.retain(|task| !task.is_finished());
        self.tasks.push(task);
    }
}

/// Who each node believes owns each partition: its own view of which nodes are up.
fn desired(name: &str, view: &BTreeSet<String>) -> BTreeSet<u32> {
    (0..PARTITIONS)
        .filter(|partition| {
            crate::cluster::placement::partition_owner(*partition, view.iter().map(String::as_str))
                == Some(name)
        })
        .collect()
}

/// Liveness: once every view agrees on who runs, every partition ends held by its owner among
/// them at an epoch no fence names (a node that keeps a fenced epoch can never acknowledge
/// again, and one that stops claiming leaves its partition to nobody). A claim by a node that
/// died before fencing does not end the holder's epoch: the next takeover seals both.
async fn settle_partitions(seed: u64, store: &SimStore, nodes: &[Option<SimNode>]) {
    let running: BTreeSet<String> = nodes
        .iter()
        .flatten()
        .map(|node| node.name.clone())
        .collect();
    if running.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for node in nodes.iter().flatten() {
            node.journal.set_desired(desired(&node.name, &running));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let unsettled: Vec<String> = (0..PARTITIONS)
            .filter_map(|partition| {
                let owner = crate::cluster::placement::partition_owner(
                    partition,
                    running.iter().map(String::as_str),
                )?;
                let node = nodes.iter().flatten().find(|node| node.name == owner)?;
                let held = node
                    .journal
                    .owned()
                    .into_iter()
                    .find(|(held, _)| *held == partition)
                    .map(|(_, epoch)| epoch);
                let fenced = held.is_some_and(|epoch| {
                    let prefix = layout::fences_prefix(&node.journal.shared.log);
                    lock(&store.objects)
                        .iter()
                        .filter(|(name, _)| name.starts_with(&prefix))
                        .filter_map(|(_, bytes)| {
                            layout::decode::<layout::Fence>(bytes, "fence").ok()
                        })
                        .any(|fence| fence.entries.contains(&(partition, epoch)))
                });
                (held.is_none() || fenced).then(|| {
                    format!(
                        "partition {partition}: {owner} holds epoch {held:?} ({:?}), fenced: {fenced}",
                        node.journal.status(partition)
                    )
                })
            })
            .collect();
        if unsettled.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: partitions not settled 30 s after the views agreed: {unsettled:?}"
        );
    }
}

/// One seed, end to end; panics (with the seed in the message) on a violated invariant.
fn run_seed(seed: u64) {
    fastrand::seed(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(simulate(seed));
}

async fn simulate(seed: u64) {
    STARTED.with(|started| started.set(Some(tokio::time::Instant::now())));
    let dice = Dice::new(seed);
    let store = Arc::new(SimStore {
        objects: Mutex::new(BTreeMap::new()),
        dice: dice.clone(),
        fail_before_percent: 2,
        fail_after_percent: 2,
    });
    let live_logs: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acks = Acks::default();
    let names: Vec<String> = (0..NODES).map(|index| format!("n{index}")).collect();
    let mut incarnations = [1u64; NODES];
    let mut nodes: Vec<Option<SimNode>> = names
        .iter()
        .map(|name| Some(start_node(&store, name, 1, &live_logs)))
        .collect();
    let mut views: Vec<BTreeSet<String>> = vec![names.iter().cloned().collect(); NODES];
    let entities: Vec<EntityId> = (0..ENTITIES)
        .map(|index| EntityId::new("sim", format!("e{index}")))
        .collect();
    let mut next_msg = 1u128;
    let mut unacked: Vec<(EntityId, MsgId)> = Vec::new();
    let started = tokio::time::Instant::now();
    let mut next_view_push = started;
    while started.elapsed() < Duration::from_millis(RUN_MS) {
        tokio::time::sleep(Duration::from_millis(1 + dice.below(4))).await;
        let roll = dice.below(1000);
        if roll < 600 {
            // A client command, new or a retry of one not acknowledged yet.
            let (entity, msg_id) = if !unacked.is_empty() && dice.percent(30) {
                let index = dice.below(unacked.len() as u64) as usize;
                unacked[index].clone()
            } else {
                let entity = entities[dice.below(ENTITIES as u64) as usize].clone();
                next_msg += 1;
                let pair = (entity, MsgId(next_msg));
                unacked.push(pair.clone());
                pair
            };
            // Mostly the owner among the nodes that run (as routing would pick), sometimes any.
            let target = if dice.percent(70) {
                let running: Vec<&str> = names
                    .iter()
                    .zip(&nodes)
                    .filter(|(_, node)| node.is_some())
                    .map(|(name, _)| name.as_str())
                    .collect();
                let partition =
                    crate::cluster::placement::partition_of(&entity.kind, &entity.key, PARTITIONS);
                crate::cluster::placement::partition_owner(partition, running)
                    .and_then(|owner| names.iter().position(|name| name == owner))
                    .unwrap_or(0)
            } else {
                dice.below(NODES as u64) as usize
            };
            if let Some(node) = nodes[target].as_mut() {
                node.command(entity, msg_id, &acks);
            }
        } else if roll < 620 {
            // A node's view changes: some peer seems down, or back.
            let observer = dice.below(NODES as u64) as usize;
            let peer = &names[dice.below(NODES as u64) as usize];
            if *peer != names[observer] && !views[observer].remove(peer) {
                views[observer].insert(peer.clone());
            }
        } else if roll < 640 {
            // Views converge to the truth (who runs).
            let running: BTreeSet<String> = names
                .iter()
                .zip(&nodes)
                .filter(|(_, node)| node.is_some())
                .map(|(name, _)| name.clone())
                .collect();
            for view in &mut views {
                *view = running.clone();
            }
        } else if roll < 643 {
            // A crash.
            let index = dice.below(NODES as u64) as usize;
            if let Some(mut node) = nodes[index].take() {
                node.crash(&live_logs);
            }
        } else if roll < 660 {
            // A restart with a new incarnation.
            let index = dice.below(NODES as u64) as usize;
            if nodes[index].is_none() {
                incarnations[index] += 1;
                nodes[index] = Some(start_node(
                    &store,
                    &names[index],
                    incarnations[index],
                    &live_logs,
                ));
            }
        } else if roll < 665 {
            // A freeze: the node's requests stand still (those already sent may land later).
            let index = dice.below(NODES as u64) as usize;
            if let Some(node) = &nodes[index] {
                *lock(&node.frozen_until) =
                    tokio::time::Instant::now() + Duration::from_millis(20 + dice.below(600));
            }
        }
        // Each node acts on its view now and then (that is also how failed takeovers retry).
        if tokio::time::Instant::now() >= next_view_push {
            next_view_push = tokio::time::Instant::now() + Duration::from_millis(25);
            for (index, node) in nodes.iter().enumerate() {
                if let Some(node) = node {
                    let mut view = views[index].clone();
                    view.insert(node.name.clone());
                    node.journal.set_desired(desired(&node.name, &view));
                }
            }
        }
        let acked = lock(&acks.seqs);
        unacked.retain(|pair| !acked.contains_key(pair));
    }
    // Quiet: let what is in flight land, then stop everything.
    for node in nodes.iter().flatten() {
        *lock(&node.frozen_until) = tokio::time::Instant::now();
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    settle_partitions(seed, &store, &nodes).await;
    for node in nodes.iter_mut().flatten() {
        node.crash(&live_logs);
    }
    // An auditor takes every partition over and reads every history.
    let auditor_store = Arc::new(SimStore {
        objects: Mutex::new(std::mem::take(&mut *lock(&store.objects))),
        dice: dice.clone(),
        fail_before_percent: 0,
        fail_after_percent: 0,
    });
    let auditor = start_node(&auditor_store, "auditor", 1, &live_logs);
    let all: BTreeSet<u32> = (0..PARTITIONS).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while auditor.journal.owned().len() < PARTITIONS as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: the auditor could not take every partition over"
        );
        auditor.journal.set_desired(all.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let violations = lock(&acks.violations).clone();
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    let acks = lock(&acks.seqs).clone();
    for entity in &entities {
        let (_, loaded) = auditor
            .journal
            .load(entity)
            .await
            .unwrap_or_else(|error| panic!("seed {seed}: {entity} does not load: {error}"));
        let mut history: BTreeMap<u64, MsgId> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut seq = loaded.snapshot.as_ref().map_or(0, |snapshot| snapshot.seq);
        assert_eq!(seq, 0, "no snapshots in the simulation");
        for (first, records) in &loaded.segments {
            assert_eq!(*first, seq + 1, "seed {seed}: {entity}: history is linear");
            for record in records {
                seq += record.events.len() as u64;
                let id = record.msg_id.expect("every record has an id");
                assert!(
                    seen.insert(id),
                    "seed {seed}: {entity}: message {id} applied twice"
                );
                history.insert(seq, id);
            }
        }
        for ((acked_entity, id), acked_seq) in &acks {
            if acked_entity == entity {
                assert_eq!(
                    history.get(acked_seq),
                    Some(id),
                    "seed {seed}: {entity}: message {id} acknowledged at seq {acked_seq} is not there"
                );
            }
        }
    }
    if std::env::var("ACTORHUB_SIM_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed}: {} acknowledged, {} objects left, {} incarnations",
            acks.len(),
            lock(&auditor_store.objects).len(),
            incarnations.iter().sum::<u64>()
        );
    }
    auditor.journal.abort();
}

#[test]
fn the_protocol_keeps_every_acknowledged_record_over_many_seeds() {
    if let Some(seed) = std::env::var("ACTORHUB_SIM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        return run_seed(seed);
    }
    let seeds = std::env::var("ACTORHUB_SIM_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    // Seeds are independent: one thread per core, each its own seeds.
    let threads = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u64);
    let failed: Mutex<Option<u64>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let failed = &failed;
            scope.spawn(move || {
                let mut seed = thread;
                while seed < seeds && lock(failed).is_none() {
                    if std::panic::catch_unwind(|| run_seed(seed)).is_err() {
                        let mut failed = lock(failed);
                        *failed = Some(failed.map_or(seed, |other| other.min(seed)));
                    }
                    seed += threads;
                }
            });
        }
    });
    if let Some(seed) = *lock(&failed) {
        panic!("seed {seed} failed; replay it with ACTORHUB_SIM_SEED={seed}");
    }
}
