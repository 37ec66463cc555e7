//! `journal-append`: the latency of `Journal::append` of one small record (one group commit of
//! one command), sequentially on one entity, and the throughput of concurrent writers on
//! different entities. Runs on a local-directory object store, as a single-host deployment does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use runtime::builtin::{RegisterEvent, RegisterReply};
use runtime::config::StorageSection;
use runtime::journal::{Journal, Record};
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
        let journal = open_journal(&store_dir, fsync)?;
        results.push(sequential(&journal, fsync, options.sequential_appends).await?);
        results.push(concurrent(&journal, fsync, options).await?);
    }
    Ok(results)
}

fn open_journal(directory: &Path, fsync: bool) -> anyhow::Result<Journal> {
    let section = StorageSection {
        url: format!("file://{}", directory.display()),
        fsync,
        ..StorageSection::default()
    };
    Ok(runtime::storage::open(&section)?.journal("bench/1"))
}

/// The record one `ask(Add(1))` of a register leaves: one event, its message id and its reply.
pub fn small_record(seq: u64) -> Record {
    let reply: Result<RegisterReply, String> = Ok(RegisterReply {
        value: String::new(),
        counter: seq as i64,
        writes: seq,
        seq,
        node: "bench".into(),
    });
    Record {
        msg_id: Some(MsgId(u128::from(seq))),
        events: vec![codec::encode(&RegisterEvent::Added(1))],
        reply: codec::encode(&reply),
    }
}

async fn sequential(journal: &Journal, fsync: bool, appends: u64) -> anyhow::Result<Value> {
    let entity = EntityId::new(KIND, "sequential");
    let mut samples = Vec::with_capacity(appends as usize);
    let started = Instant::now();
    for seq in 1..=appends {
        let record = small_record(seq);
        let append_started = Instant::now();
        journal
            .append(&entity, seq, vec![record])
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
    journal: &Journal,
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
            let mut samples: Vec<Duration> = Vec::with_capacity(appends as usize);
            for seq in 1..=appends {
                let append_started = Instant::now();
                journal
                    .append(&entity, seq, vec![small_record(seq)])
                    .await?;
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
