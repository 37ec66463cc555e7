//! Criterion benchmarks of the local entity paths on an in-process single-node runtime:
//! `EntityRef::ask` of a read and of a persisting command, `tell` throughput, group-commit
//! throughput of concurrent asks, `Journal::append` itself, and the fence-slot read every flush
//! ends with.
//!
//! Run with `cargo bench -p benches --bench entity`. ractor's registries are process-global,
//! so the nodes are started once (see [`fixture`]) and shared by every benchmark: `bench-nosync`
//! (`storage.fsync = false`, the messaging benchmarks) and `bench-fsync` (`storage.fsync = true`,
//! the default configuration). Each benchmark uses its own register keys. Percentiles are not
//! criterion's business: `runtime_numbers` prints them.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use runtime::builtin::{Register, RegisterCommand, RegisterReply};
use runtime::{EntityId, EntityRef, Node};

/// Tells per iteration of the tell-throughput benchmark (one ask barrier each).
const TELLS_PER_ITERATION: u64 = 1_000;
/// Concurrent asks per iteration of the group-commit benchmarks.
const CONCURRENT_ASKS: u64 = 1_000;
/// Entities the concurrent asks are spread over in the many-entities case.
const ENTITIES_MANY: u64 = 100;

/// Everything the benchmarks share: one tokio runtime and the in-process nodes it drives.
struct Fixture {
    tokio: tokio::runtime::Runtime,
    node_without_fsync: Node,
    node_with_fsync: Node,
    /// Holds both nodes' data and object stores and the direct journal benchmarks' store;
    /// `main` deletes it (a static's `TempDir` would never be dropped).
    directory: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let directory = tempfile::Builder::new()
            .prefix("actorhub-bench-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let (node_without_fsync, node_with_fsync) = tokio.block_on(async {
            let without = benches::local_node::start_single_node(
                "bench-nosync",
                &directory.join("nosync"),
                false,
            )
            .await
            .expect("node without fsync starts");
            let with = benches::local_node::start_single_node(
                "bench-fsync",
                &directory.join("fsync"),
                true,
            )
            .await
            .expect("node with fsync starts");
            (without, with)
        });
        Fixture {
            tokio,
            node_without_fsync,
            node_with_fsync,
            directory,
        }
    })
}

impl Fixture {
    fn node(&self, fsync: bool) -> &Node {
        if fsync {
            &self.node_with_fsync
        } else {
            &self.node_without_fsync
        }
    }

    /// A register on the node with or without fsync, activated (its journal loaded).
    fn register(&self, fsync: bool, key: &str) -> EntityRef<Register> {
        let register = self.node(fsync).runtime().entity::<Register>(key);
        self.tokio.block_on(ask(&register, RegisterCommand::Get));
        register
    }
}

fn fsync_label(fsync: bool) -> &'static str {
    if fsync { "fsync_on" } else { "fsync_off" }
}

async fn ask(register: &EntityRef<Register>, command: RegisterCommand) -> RegisterReply {
    register
        .ask(command)
        .await
        .expect("ask answered")
        .expect("register accepted the command")
}

/// Sequential asks: one read (no journal write), and one persisting command (one journal
/// append per ask, since nothing else is pending to batch it with).
fn local_ask(criterion: &mut Criterion) {
    let fixture = fixture();
    let mut group = criterion.benchmark_group("local_ask");
    group.throughput(Throughput::Elements(1));
    let register = fixture.register(false, "ask-get");
    group.bench_function("get", |bencher| {
        bencher
            .to_async(&fixture.tokio)
            .iter(|| ask(&register, RegisterCommand::Get));
    });
    for fsync in [false, true] {
        let register = fixture.register(fsync, "ask-add");
        group.bench_function(BenchmarkId::new("add", fsync_label(fsync)), |bencher| {
            bencher
                .to_async(&fixture.tokio)
                .iter(|| ask(&register, RegisterCommand::Add(1)));
        });
    }
    group.finish();
}

/// `TELLS_PER_ITERATION` tells of `Add(1)`, then one `ask(Get)` as a barrier: the ask queues
/// behind the tells and is answered once they are durable, so the time covers delivery,
/// handling and group-committed journaling of every tell.
fn local_tell(criterion: &mut Criterion) {
    let fixture = fixture();
    let mut group = criterion.benchmark_group("local_tell");
    group.throughput(Throughput::Elements(TELLS_PER_ITERATION));
    let register = fixture.register(false, "tell-add");
    group.bench_function("add_then_ask_barrier", |bencher| {
        bencher.to_async(&fixture.tokio).iter_custom(|iterations| {
            let register = register.clone();
            async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iterations {
                    let before = ask(&register, RegisterCommand::Get).await.counter;
                    let started = Instant::now();
                    for _ in 0..TELLS_PER_ITERATION {
                        register.tell(RegisterCommand::Add(1)).expect("tell");
                    }
                    let after = ask(&register, RegisterCommand::Get).await.counter;
                    measured += started.elapsed();
                    assert_eq!(
                        after - before,
                        TELLS_PER_ITERATION as i64,
                        "every tell reached the register"
                    );
                }
                measured
            }
        });
    });
    group.finish();
}

/// `CONCURRENT_ASKS` asks of `Add(1)` in flight at once, from spawned tasks, to one entity
/// (they share group commits) or spread over `ENTITIES_MANY` entities (appends run in parallel).
fn group_commit(criterion: &mut Criterion) {
    let fixture = fixture();
    let mut group = criterion.benchmark_group("group_commit");
    group.throughput(Throughput::Elements(CONCURRENT_ASKS));
    for fsync in [false, true] {
        for entities in [1, ENTITIES_MANY] {
            let registers: Vec<EntityRef<Register>> = (0..entities)
                .map(|index| fixture.register(fsync, &format!("commit-{entities}-{index}")))
                .collect();
            let name = format!("{}_entities_{}", entities, fsync_label(fsync));
            group.bench_function(BenchmarkId::new("concurrent_add", name), |bencher| {
                bencher
                    .to_async(&fixture.tokio)
                    .iter(|| concurrent_adds(&registers));
            });
        }
    }
    group.finish();
}

async fn concurrent_adds(registers: &[EntityRef<Register>]) {
    let tasks: Vec<_> = (0..CONCURRENT_ASKS as usize)
        .map(|index| {
            let register = registers[index % registers.len()].clone();
            tokio::spawn(async move { ask(&register, RegisterCommand::Add(1)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("ask task");
    }
}

/// A node-log append of one small record (what one `ask(Add(1))` writes), sequentially on one
/// entity: the floor under every persisting ask.
fn journal_append(criterion: &mut Criterion) {
    let fixture = fixture();
    let mut group = criterion.benchmark_group("journal_append");
    group.throughput(Throughput::Elements(1));
    for fsync in [false, true] {
        let directory = fixture.directory.join("journal").join(fsync_label(fsync));
        let journal = fixture
            .tokio
            .block_on(benches::journal_append::open_journal(&directory, fsync))
            .expect("node journal");
        let entity = EntityId::new("bench.journal", fsync_label(fsync));
        let (epoch, _) = fixture.tokio.block_on(journal.load(&entity)).expect("load");
        let next_seq = AtomicU64::new(1);
        group.bench_function(
            BenchmarkId::new("one_record", fsync_label(fsync)),
            |bencher| {
                bencher.to_async(&fixture.tokio).iter(|| {
                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                    let journal = &journal;
                    let entity = &entity;
                    async move {
                        benches::journal_append::append_one(journal, entity, epoch, seq)
                            .await
                            .expect("append");
                    }
                });
            },
        );
    }
    group.finish();
}

/// The read that ends every flush: the node's next fence slot, almost always missing. On a
/// local directory, through `object_store` (a hop to tokio's blocking pool and back) and
/// through the local fast path (one `open` on the caller's thread).
fn fence_read(criterion: &mut Criterion) {
    use runtime::journal::objects::{Objects, StoreObjects};
    use runtime::storage::Durability;
    let fixture = fixture();
    let directory = fixture.directory.join("fence-read");
    let storage = runtime::storage::open(&runtime::config::StorageSection {
        url: format!("file://{}", directory.display()),
        fsync: false,
        ..runtime::config::StorageSection::default()
    })
    .expect("local store");
    let mut group = criterion.benchmark_group("fence_read");
    group.throughput(Throughput::Elements(1));
    for (name, local) in [("object_store", None), ("local", storage.local.clone())] {
        let objects = StoreObjects::new(storage.objects.clone(), Durability::on_put(), local);
        group.bench_function(BenchmarkId::new("missing_slot", name), |bencher| {
            bencher.to_async(&fixture.tokio).iter(|| async {
                let read = objects.get("fences/bench/0".to_string()).await;
                assert!(matches!(read, Ok(None)), "the slot is free");
            });
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = entity;
    config = config();
    targets = local_ask, local_tell, group_commit, journal_append, fence_read
}
/// `criterion_main!` plus clean-up: the nodes' directory is deleted (the process ends next,
/// taking the nodes with it).
fn main() {
    entity();
    Criterion::default().configure_from_args().final_summary();
    if let Some(fixture) = FIXTURE.get() {
        // Tens of thousands of journal objects: on a busy disk this takes a while, so say so.
        let started = Instant::now();
        match std::fs::remove_dir_all(&fixture.directory) {
            Ok(()) => eprintln!(
                "deleted {} in {:.1} s",
                fixture.directory.display(),
                started.elapsed().as_secs_f64()
            ),
            Err(error) => eprintln!("could not delete {}: {error}", fixture.directory.display()),
        }
    }
}
