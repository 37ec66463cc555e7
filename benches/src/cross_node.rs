//! `cross-node`: an entity on a real `node run` process, called from this process (node `t0`):
//! the round trip of a remote `ask(Get)` (p50/p99/max) and the throughput of remote
//! `tell(Add(1))` (N tells, then asks as a barrier until the counter shows all of them).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runtime::builtin::{Register, RegisterCommand};
use runtime::{Entity, EntityRef, placement};
use serde_json::{Value, json};

use crate::latency::{per_second, summarize};
use crate::process_cluster::{self, IN_PROCESS_NODE};
use crate::register::ask_register;

/// The process node that owns the measured entity.
const REMOTE_NODE: &str = "n1";
/// Deadline of each ask.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The barrier gives up when the counter has not moved for this long.
const BARRIER_STALL: Duration = Duration::from_secs(2);
/// Keys tried when looking for one owned by the remote node (half of them are).
const KEYS_TRIED_MAX: usize = 10_000;

/// What the mode measures.
#[derive(Debug, Clone)]
pub struct CrossNodeOptions {
    pub warmup_asks: usize,
    /// Sequential asks timed one by one.
    pub asks: usize,
    pub tells: u64,
    /// Longest wait for the counter to show every tell.
    pub barrier_timeout: Duration,
    /// `storage.fsync` of the cluster (off: measure messaging, not the disk).
    pub fsync: bool,
    /// `entities.pending_commands_max` of the cluster; `None` keeps the default.
    pub pending_commands_max: Option<u64>,
    /// Mutual TLS on the cluster links (`[cluster.tls]`, as `node up` runs by default).
    pub tls: bool,
}

impl Default for CrossNodeOptions {
    fn default() -> Self {
        Self {
            warmup_asks: 500,
            asks: 5_000,
            tells: 100_000,
            barrier_timeout: Duration::from_secs(60),
            fsync: false,
            pending_commands_max: None,
            tls: false,
        }
    }
}

pub async fn run(options: &CrossNodeOptions) -> anyhow::Result<Vec<Value>> {
    let fsync = options.fsync;
    let pending_max = options.pending_commands_max;
    let tls = options.tls;
    let cluster = process_cluster::join(1, |builder| {
        let builder = builder.setting("storage", "fsync", fsync).tls(tls);
        match pending_max {
            Some(max) => builder.setting(
                "entities",
                "pending_commands_max",
                i64::try_from(max).unwrap_or(i64::MAX),
            ),
            None => builder,
        }
    })
    .await?;
    let key = (0..KEYS_TRIED_MAX)
        .map(|index| format!("bench-remote-{index}"))
        .find(|key| {
            placement::owner(Register::KIND, key, [IN_PROCESS_NODE, REMOTE_NODE])
                == Some(REMOTE_NODE)
        })
        .context("no key among the first ones is owned by n1")?;
    let register = cluster.runtime().entity::<Register>(key);
    let outcome = measure(&register, options).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.processes.diagnostics().await);
    }
    cluster.shutdown().await;
    outcome
}

async fn measure(
    register: &EntityRef<Register>,
    options: &CrossNodeOptions,
) -> anyhow::Result<Vec<Value>> {
    for _ in 0..options.warmup_asks {
        ask_register(register, RegisterCommand::Get, ASK_TIMEOUT).await?;
    }
    let mut samples = Vec::with_capacity(options.asks);
    for _ in 0..options.asks {
        let started = Instant::now();
        let reply = ask_register(register, RegisterCommand::Get, ASK_TIMEOUT).await?;
        samples.push(started.elapsed());
        if reply.node != REMOTE_NODE {
            bail!("ask served by {}, not by {REMOTE_NODE}", reply.node);
        }
    }
    let asks = json!({
        "mode": "cross-node",
        "case": "sequential remote ask(Get), t0 -> n1",
        "fsync": options.fsync,
        "tls": options.tls,
        "latency": summarize(&mut samples),
    });
    let tells = tell_throughput(register, options).await?;
    Ok(vec![asks, tells])
}

async fn tell_throughput(
    register: &EntityRef<Register>,
    options: &CrossNodeOptions,
) -> anyhow::Result<Value> {
    let before = ask_register(register, RegisterCommand::Get, ASK_TIMEOUT)
        .await?
        .counter;
    let target = before + i64::try_from(options.tells).context("too many tells")?;
    let started = Instant::now();
    for index in 0..options.tells {
        register
            .tell(RegisterCommand::Add(1))
            .with_context(|| format!("tell {index}"))?;
    }
    let sent = started.elapsed();
    // The barrier ask travels behind the tells on the same link and is answered once they are
    // durable, so its first answer should already count them all; asking again only guards
    // against a reordering we do not expect, until the counter stalls or the deadline passes.
    let deadline = started + options.barrier_timeout;
    let mut barrier_asks = 0u64;
    let mut counter = before;
    let mut last_progress = Instant::now();
    loop {
        let reply = ask_register(register, RegisterCommand::Get, ASK_TIMEOUT)
            .await
            .context("the barrier ask after the tells")?;
        barrier_asks += 1;
        if reply.counter != counter {
            counter = reply.counter;
            last_progress = Instant::now();
        }
        let now = Instant::now();
        if counter >= target || now >= deadline || now - last_progress >= BARRIER_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let arrived = u64::try_from(counter - before).unwrap_or(0);
    if counter < target {
        bail!(
            "only {arrived} of {} tells reached the entity ({} lost: tells are at most once, and \
             an entity sheds commands beyond `entities.pending_commands_max` as overloaded); \
             raise --pending-commands-max or lower --tells",
            options.tells,
            options.tells - arrived
        );
    }
    Ok(json!({
        "mode": "cross-node",
        "case": "remote tell(Add(1)) t0 -> n1, then ask(Get) barrier until all are durable",
        "fsync": options.fsync,
        "tls": options.tls,
        "pending_commands_max": options.pending_commands_max,
        "tells": options.tells,
        "send_s": sent.as_secs_f64(),
        "total_s": elapsed.as_secs_f64(),
        "barrier_asks": barrier_asks,
        "sent_per_s": per_second(options.tells, sent),
        "msgs_per_s": per_second(options.tells, elapsed),
    }))
}
