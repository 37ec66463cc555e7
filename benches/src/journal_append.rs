//! `journal-append`: the latency of a node-log append of one small record (one command),
//! sequentially on one entity, and the throughput of concurrent writers on different entities
//! (their appends share the node log's flushes). Runs on a local-directory object store, as a
//! single-host deployment does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use runtime::builtin::{RegisterEvent, RegisterReply};
use runtime::config::StorageSection;
use runtime::journal::{JournalSettings, NodeJournal, Record};
use runtime::{EntityId, MsgId, codec};
use serde_json::{Value, json};

use crate::latency::{per_second, summarize};

/// Entity kind of the journals written here (never a real kind).
const KIND: &str = "bench.journal";

/// What the mode measures.
#[derive(Debug, Clone)]
pub struct JournalAppendOptions {
    /// Sequential appends on one entity.
    pub sequential_appends: u64,
    /// Concurrent writers, each on its own entity.
    pub writers: usize,
    /// Appends of each concurrent writer.
    pub appends_per_writer: u64,
    /// Measure with fsync on (the default configuration) and off.
    pub fsync_modes: Vec<bool>,
}

impl Default for JournalAppendOptions {
    fn default() -> Self {
        Self {
            sequential_appends: 2_000,
            writers: 64,
            appends_per_writer: 50,
            fsync_modes: vec![true, false],
        }
    }
}

/// Runs the measurements in a fresh store under `directory`; one JSON object per result.
pub async fn run(directory: &Path, options: &JournalAppendOptions) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::new();
    for &fsync in &options.fsync_modes {
        let store_dir = directory.join(if fsync { "fsync" } else { "no-fsync" });
        let journal = open_journal(&store_dir, fsync).await?;
        results.push(sequential(&journal, fsync, options.sequential_appends).await?);
        results.push(concurrent(&journal, fsync, options).await?);
    }
    Ok(results)
}

/// A node journal on a fresh local-directory store, holding every partition.
pub async fn open_journal(directory: &Path, fsync: bool) -> anyhow::Result<NodeJournal> {
    let section = StorageSection {
        url: format!("file://{}", directory.display()),
        fsync,
        ..StorageSection::default()
    };
    let storage = runtime::storage::open(&section)?;
    let objects: std::sync::Arc<dyn runtime::journal::objects::Objects> =
        std::sync::Arc::new(storage.journal_objects());
    let log = runtime::journal::node_log::log_name("bench", 1);
    let segments = runtime::journal::Journal::new(objects.clone(), log.clone());
    let settings = JournalSettings {
        flush_interval: Duration::ZERO,
        ..JournalSettings::default()
    };
    let journal = NodeJournal::start("bench", log, objects, segments, settings.clone(), |_| false);
    journal.set_desired((0..settings.partitions).collect());
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal.owned().len() < settings.partitions as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bench journal did not take its partitions"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(journal)
}

/// Appends one record of `entity` at `seq` and waits until it is acknowledged. The entity
/// must have been loaded (`journal.load`) at `epoch`.
pub async fn append_one(
    journal: &NodeJournal,
    entity: &EntityId,
    epoch: u64,
    seq: u64,
) -> anyhow::Result<()> {
    let (done, acknowledged) = tokio::sync::oneshot::channel();
    journal.append(
        entity,
        epoch,
        seq,
        vec![small_record(seq)],
        move |outcome| {
            let _ = done.send(outcome);
        },
    );
    acknowledged
        .await
        .context("the journal stopped")?
        .map_err(|error| anyhow::anyhow!("append {seq}: {error}"))
}

/// The record one `ask(Add(1))` of a register leaves: one event, its message id and its reply.
pub fn small_record(seq: u64) -> Record {
    let reply: Result<RegisterReply, String> = Ok(RegisterReply {
        value: String::new(),
        counter: seq as i64,
        writes: seq,
        seq,
        node: "bench".into(),
        fired: Vec::new(),
    });
    Record {
        msg_id: Some(MsgId(u128::from(seq))),
        events: vec![codec::encode(&RegisterEvent::Added(1))],
        reply: codec::encode(&reply),
        schema: 1,
    }
}

async fn sequential(journal: &NodeJournal, fsync: bool, appends: u64) -> anyhow::Result<Value> {
    let entity = EntityId::new(KIND, "sequential");
    let (epoch, _) = journal.load(&entity).await?;
    let mut samples = Vec::with_capacity(appends as usize);
    let started = Instant::now();
    for seq in 1..=appends {
        let append_started = Instant::now();
        append_one(journal, &entity, epoch, seq)
            .await
            .with_context(|| format!("sequential append {seq}"))?;
        samples.push(append_started.elapsed());
    }
    let elapsed = started.elapsed();
    Ok(json!({
        "mode": "journal-append",
        "case": "sequential, one entity, one record per append",
        "fsync": fsync,
        "appends": appends,
        "latency": summarize(&mut samples),
        "appends_per_s": per_second(appends, elapsed),
    }))
}

async fn concurrent(
    journal: &NodeJournal,
    fsync: bool,
    options: &JournalAppendOptions,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.writers);
    for writer in 0..options.writers {
        let journal = journal.clone();
        let appends = options.appends_per_writer;
        tasks.push(tokio::spawn(async move {
            let entity = EntityId::new(KIND, format!("writer-{writer}"));
            let (epoch, _) = journal.load(&entity).await?;
            let mut samples: Vec<Duration> = Vec::with_capacity(appends as usize);
            for seq in 1..=appends {
                let append_started = Instant::now();
                append_one(&journal, &entity, epoch, seq).await?;
                samples.push(append_started.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("writer task panicked")??);
    }
    let elapsed = started.elapsed();
    let appends = options.writers as u64 * options.appends_per_writer;
    Ok(json!({
        "mode": "journal-append",
        "case": format!("{} concurrent writers, one entity each, one record per append", options.writers),
        "fsync": fsync,
        "appends": appends,
        "latency": summarize(&mut samples),
        "events_per_s": per_second(appends, elapsed),
    }))
}
