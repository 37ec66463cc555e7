//! `failover`: how long an entity is unavailable when the process that owns it is SIGKILLed.
//!
//! Three `node run` processes and this process (`t0`) form a cluster. Each round picks a
//! random process as the victim and a fresh key it owns whose next owner is another process
//! (so the failover crosses processes, as in `node/tests/entity_failover.rs`), writes to it,
//! kills the victim, and times the kill to the first `ask(Get)` answered by another node with
//! the journaled state. The victim is then restarted and the cluster re-forms before the next
//! round. The seed replays the choice of victims.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runtime::builtin::{Register, RegisterCommand};
use runtime::{Entity, placement};
use serde_json::{Value, json};

use crate::latency::{micros, summarize};
use crate::process_cluster::{self, IN_PROCESS_NODE, JOIN_TIMEOUT, JoinedCluster};
use crate::register::ask_register;

/// Node processes in the cluster (besides `t0`).
const PROCESSES: usize = 3;
/// Writes to the entity before its owner is killed.
const WRITES_PER_ROUND: u64 = 3;
/// Deadline of an ask before the kill.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of the first ask after the kill: the longest failover we are willing to measure.
const FAILOVER_ASK_TIMEOUT: Duration = Duration::from_secs(15);
/// Keys tried per round when looking for one with the wanted owners (about 1 in 6 fits).
const KEYS_TRIED_MAX: usize = 10_000;

/// What the mode measures.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub rounds: usize,
    /// Seeds the choice of victims.
    pub seed: u64,
}

/// One measured failover.
struct Round {
    victim: String,
    served_by: String,
    failover: Duration,
    rejoin: Duration,
}

pub async fn run(options: &FailoverOptions) -> anyhow::Result<Vec<Value>> {
    eprintln!(
        "failover: seed {} (replay with --seed {})",
        options.seed, options.seed
    );
    let cluster = process_cluster::join(PROCESSES, |builder| builder).await?;
    let mut random = fastrand::Rng::with_seed(options.seed);
    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        match one_round(&cluster, &mut random, round).await {
            Ok(measured) => {
                eprintln!(
                    "failover: round {round}: killed {}, served by {} after {:.1} ms",
                    measured.victim,
                    measured.served_by,
                    micros(measured.failover) / 1e3
                );
                rounds.push(measured);
            }
            Err(error) => {
                eprintln!("{}", cluster.processes.diagnostics().await);
                cluster.shutdown().await;
                return Err(
                    error.context(format!("failover round {round} (seed {})", options.seed))
                );
            }
        }
    }
    cluster.shutdown().await;
    let mut failovers: Vec<Duration> = rounds.iter().map(|round| round.failover).collect();
    let mut rejoins: Vec<Duration> = rounds.iter().map(|round| round.rejoin).collect();
    let per_round_ms: Vec<f64> = rounds
        .iter()
        .map(|round| (micros(round.failover) / 1e2).round() / 10.0)
        .collect();
    Ok(vec![json!({
        "mode": "failover",
        "case": "SIGKILL the owner process; kill -> first ask(Get) served by the next owner",
        "seed": options.seed,
        "rounds": rounds.len(),
        "failover": summarize(&mut failovers),
        "failover_per_round_ms": per_round_ms,
        "restart_to_all_up": summarize(&mut rejoins),
    })])
}

async fn one_round(
    cluster: &JoinedCluster,
    random: &mut fastrand::Rng,
    round: usize,
) -> anyhow::Result<Round> {
    let processes = cluster.processes.node_ids();
    let victim = processes[random.usize(..processes.len())].clone();
    let everyone = cluster.all_node_ids();
    let key = (0..KEYS_TRIED_MAX)
        .map(|index| format!("failover-{round}-{index}"))
        .find(|key| {
            let ranked =
                placement::preference(Register::KIND, key, everyone.iter().map(String::as_str));
            ranked[0] == victim && ranked[1] != IN_PROCESS_NODE
        })
        .with_context(|| format!("no key owned by {victim} with a process next"))?;
    let register = cluster.runtime().entity::<Register>(key.clone());
    let delta = i64::try_from(round).unwrap_or(0) + 1;
    for _ in 0..WRITES_PER_ROUND {
        let reply = ask_register(&register, RegisterCommand::Add(delta), ASK_TIMEOUT).await?;
        if reply.node != victim {
            bail!(
                "{key} was served by {}, expected its owner {victim}",
                reply.node
            );
        }
    }
    let expected_counter = delta * WRITES_PER_ROUND as i64;

    let killed_at = Instant::now();
    cluster.processes.kill(&victim);
    let reply = ask_register(&register, RegisterCommand::Get, FAILOVER_ASK_TIMEOUT).await?;
    let failover = killed_at.elapsed();
    if reply.node == victim {
        bail!("{key} answered by the killed node {victim}");
    }
    if (reply.counter, reply.writes) != (expected_counter, WRITES_PER_ROUND) {
        bail!(
            "{key} lost state in the failover to {}: counter {} writes {}, expected {expected_counter} and {WRITES_PER_ROUND}",
            reply.node,
            reply.counter,
            reply.writes
        );
    }

    let restarted_at = Instant::now();
    cluster.processes.restart(&victim).await?;
    cluster.processes.wait_ready(&victim, JOIN_TIMEOUT).await?;
    cluster.wait_all_up(JOIN_TIMEOUT).await?;
    Ok(Round {
        victim,
        served_by: reply.node,
        failover,
        rejoin: restarted_at.elapsed(),
    })
}
