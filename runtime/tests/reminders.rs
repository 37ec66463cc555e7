//! Durable reminders on real in-process nodes: a reminder fires once, not before its due time,
//! into an entity that had passivated (it is activated to fire); many reminders over many
//! entities all fire, none early (registration throughput, lateness and memory per reminder
//! are printed); a backlog that came due while the node was down fires on the next node
//! within the configured rate.
//!
//! `ACTORHUB_REMINDERS_COUNT` sets the number of reminders of the scale test (10,000 by
//! default; the measurement is 100,000).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runtime::clock::unix_ms;
use runtime::reminder::bucket::TokenBucket;
use runtime::{Context, Entity, NodeBuilder, Reminder, Request};
use serde::{Deserialize, Serialize};

/// One firing as the target saw it.
#[derive(Debug, Clone)]
struct Firing {
    key: String,
    name: String,
    due_ms: u64,
    at_ms: u64,
}

/// What the test reads of its entities from outside: how many are active, their activations
/// and every firing (`on_reminder` runs, repeated ones included).
#[derive(Clone, Default)]
struct Probe {
    active: Arc<AtomicI64>,
    activations: Arc<Mutex<HashMap<String, u32>>>,
    firings: Arc<Mutex<Vec<Firing>>>,
}

impl Probe {
    fn firings(&self) -> Vec<Firing> {
        self.firings.lock().expect("firings").clone()
    }
    fn activations(&self, key: &str) -> u32 {
        self.activations
            .lock()
            .expect("activations")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// A test entity: registers the reminders it is told, records each firing durably.
struct Alarm {
    key: String,
    probe: Probe,
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.probe.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AlarmCommand {
    /// Registers `(name, due_ms)` reminders; passivates after if `passivate`.
    Set {
        reminders: Vec<(String, u64)>,
        passivate: bool,
    },
    /// The firings recorded durably.
    Report,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AlarmEvent {
    name: String,
    due_ms: u64,
    at_ms: u64,
}

type AlarmReply = Result<Vec<AlarmEvent>, String>;

impl Request<Alarm> for AlarmCommand {
    type Reply = AlarmReply;
    fn into_command(self) -> AlarmCommand {
        self
    }
    fn from_reply(reply: AlarmReply) -> Option<AlarmReply> {
        Some(reply)
    }
}

impl Entity for Alarm {
    const KIND: &'static str = "test.alarm";
    type Command = AlarmCommand;
    type Reply = AlarmReply;
    type Event = AlarmEvent;
    type State = Vec<AlarmEvent>;
    type Deps = Probe;

    fn activate(key: &str, probe: &Probe) -> Self {
        probe.active.fetch_add(1, Ordering::SeqCst);
        *probe
            .activations
            .lock()
            .expect("activations")
            .entry(key.to_string())
            .or_default() += 1;
        Self {
            key: key.to_string(),
            probe: probe.clone(),
        }
    }

    fn apply(state: &mut Vec<AlarmEvent>, _seq: u64, event: &AlarmEvent) {
        state.push(event.clone());
    }

    fn handle(
        &mut self,
        state: &Vec<AlarmEvent>,
        command: AlarmCommand,
        context: &mut Context<'_, Self>,
    ) -> AlarmReply {
        match command {
            AlarmCommand::Set {
                reminders,
                passivate,
            } => {
                for (name, due_ms) in reminders {
                    context
                        .remind(name, due_ms, None)
                        .map_err(|error| error.to_string())?;
                }
                if passivate {
                    context.passivate();
                }
                Ok(Vec::new())
            }
            AlarmCommand::Report => Ok(state.clone()),
        }
    }

    fn on_reminder(
        &mut self,
        _state: &Vec<AlarmEvent>,
        reminder: &Reminder,
        context: &mut Context<'_, Self>,
    ) {
        let at_ms = unix_ms();
        self.probe.firings.lock().expect("firings").push(Firing {
            key: self.key.clone(),
            name: reminder.name.clone(),
            due_ms: reminder.due_ms,
            at_ms,
        });
        context.persist(AlarmEvent {
            name: reminder.name.clone(),
            due_ms: reminder.due_ms,
            at_ms,
        });
    }
}

async fn start(id: &str, directory: &std::path::Path, extra: &str, probe: &Probe) -> runtime::Node {
    let config = common::single_node_config(
        id,
        &directory.join(format!("data-{id}")),
        &directory.join("objects"),
        extra,
    );
    NodeBuilder::new(config, id)
        .expect("builder")
        .register::<Alarm>(probe.clone())
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_fires_once_not_before_due_into_a_passivated_entity() {
    let directory = tempfile::tempdir().expect("tempdir");
    let probe = Probe::default();
    let node = start("rm1", directory.path(), "", &probe).await;
    let runtime = node.runtime();
    let due_ms = unix_ms() + 2_000;
    runtime
        .entity::<Alarm>("sleeper")
        .ask(AlarmCommand::Set {
            reminders: vec![("wake".into(), due_ms)],
            passivate: true,
        })
        .await
        .expect("ask")
        .expect("registered");
    assert!(
        common::wait_until(Duration::from_secs(10), || probe.activations("sleeper")
            == 1
            && probe.active.load(Ordering::SeqCst) == 0)
        .await,
        "the entity passivated"
    );
    assert!(
        unix_ms() < due_ms,
        "the entity passivated only after its reminder was due: the test proves nothing; raise the lead time"
    );
    assert!(probe.firings().is_empty(), "nothing fired before due");
    // A sentinel due a second later: once it fired, a second firing of the first would have
    // had its chance (a firing is recorded durably before the shard moves on).
    runtime
        .entity::<Alarm>("sentinel")
        .ask(AlarmCommand::Set {
            reminders: vec![("sentinel".into(), due_ms + 1_000)],
            passivate: false,
        })
        .await
        .expect("ask")
        .expect("registered");
    assert!(
        common::wait_until(Duration::from_secs(20), || probe
            .firings()
            .iter()
            .any(|firing| firing.name == "sentinel"))
        .await,
        "the sentinel fired"
    );
    let firings: Vec<Firing> = probe
        .firings()
        .into_iter()
        .filter(|firing| firing.key == "sleeper")
        .collect();
    assert_eq!(firings.len(), 1, "fired once: {firings:?}");
    assert_eq!(firings[0].due_ms, due_ms);
    assert!(
        firings[0].at_ms >= due_ms,
        "fired at {} before its due time {due_ms}",
        firings[0].at_ms
    );
    assert_eq!(probe.activations("sleeper"), 2, "activated again to fire");
    let recorded = runtime
        .entity::<Alarm>("sleeper")
        .ask(AlarmCommand::Report)
        .await
        .expect("ask")
        .expect("report");
    assert_eq!(recorded.len(), 1, "the firing is journaled once");
    println!(
        "reminder fired {} ms after its due time, into an entity activated for it",
        firings[0].at_ms - due_ms
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reminders_over_many_entities_all_fire_and_none_early() {
    let count: usize = std::env::var("ACTORHUB_REMINDERS_COUNT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000);
    let entities = count.clamp(1, 1_000);
    let per_entity = count.div_ceil(entities);
    let count = entities * per_entity;
    let directory = tempfile::tempdir().expect("tempdir");
    let probe = Probe::default();
    // The node's rate limit out of the way: this measures lateness, not the bound. Entities
    // whose journal is empty stay active (they would passivate during the measurement).
    let node = start(
        "rm2",
        directory.path(),
        "[entities]\nprobe_passivate_after_ms = 600000\n[reminders]\nfires_per_second_max = 10000000\nin_flight_max = 256\n",
        &probe,
    )
    .await;
    let runtime = node.runtime();
    // Due after the registration (a lead per reminder) and spread over a while.
    let lead_ms = 3_000 + count as u64 / 10;
    let spread_ms = (count as u64 / 4).max(1);
    // The entities active first, so the memory measured below is the reminders' own (the
    // shards' state, the journal's tail until compaction, the replies remembered).
    let activations: Vec<_> = (0..entities)
        .map(|entity| {
            let alarm = runtime.entity::<Alarm>(format!("alarm-{entity}"));
            tokio::spawn(async move {
                alarm
                    .ask_with(AlarmCommand::Report, Duration::from_secs(60), None)
                    .await
            })
        })
        .collect();
    for activation in activations {
        activation
            .await
            .expect("task")
            .expect("ask")
            .expect("report");
    }
    let start_ms = unix_ms();
    let resident_before = runtime::memory::resident_bytes().unwrap_or(0);
    let started = Instant::now();
    let asks: Vec<_> = (0..entities)
        .map(|entity| {
            let reminders: Vec<(String, u64)> = (0..per_entity)
                .map(|index| {
                    let ordinal = (entity * per_entity + index) as u64;
                    (
                        format!("r{index}"),
                        start_ms + lead_ms + ordinal * spread_ms / count as u64,
                    )
                })
                .collect();
            let alarm = runtime.entity::<Alarm>(format!("alarm-{entity}"));
            tokio::spawn(async move {
                alarm
                    .ask_with(
                        AlarmCommand::Set {
                            reminders,
                            passivate: false,
                        },
                        Duration::from_secs(120),
                        None,
                    )
                    .await
            })
        })
        .collect();
    for ask in asks {
        ask.await.expect("task").expect("ask").expect("registered");
    }
    let registration = started.elapsed();
    let resident_after = runtime::memory::resident_bytes().unwrap_or(0);
    let registered_by_ms = unix_ms();
    println!(
        "registered {count} reminders over {entities} entities in {:.2} s: {:.0} reminders/s{}",
        registration.as_secs_f64(),
        count as f64 / registration.as_secs_f64(),
        if registered_by_ms > start_ms + lead_ms {
            " (past the first due time: the lateness below includes registration)"
        } else {
            ""
        }
    );
    println!(
        "resident memory grew {} KiB while registering: {} bytes per reminder (shard state, journal tail and remembered replies)",
        resident_after.saturating_sub(resident_before) / 1024,
        resident_after.saturating_sub(resident_before) / count as u64
    );
    let deadline = Duration::from_millis(lead_ms + spread_ms) + Duration::from_secs(120);
    let all_fired = common::wait_until(deadline, || {
        probe.firings.lock().expect("firings").len() >= count
    })
    .await;
    let firings = probe.firings();
    let mut first: BTreeMap<(String, String), &Firing> = BTreeMap::new();
    for firing in &firings {
        assert!(
            firing.at_ms >= firing.due_ms,
            "{}/{} fired at {}, before its due time {}",
            firing.key,
            firing.name,
            firing.at_ms,
            firing.due_ms
        );
        first
            .entry((firing.key.clone(), firing.name.clone()))
            .or_insert(firing);
    }
    assert!(
        all_fired && first.len() == count,
        "{} of {count} reminders fired within {deadline:?}",
        first.len()
    );
    let mut lateness: Vec<u64> = first
        .values()
        .map(|firing| firing.at_ms - firing.due_ms)
        .collect();
    lateness.sort_unstable();
    let percentile = |p: f64| lateness[((lateness.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{count} reminders fired (firings seen {}, repeated {}): lateness p50 {} ms, p99 {} ms, max {} ms",
        firings.len(),
        firings.len() - first.len(),
        percentile(0.50),
        percentile(0.99),
        lateness.last().copied().unwrap_or(0)
    );
    node.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_fires_on_the_next_node_at_the_configured_rate() {
    const FIRES_PER_SECOND_MAX: u32 = 100;
    const ENTITIES: usize = 6;
    const PER_ENTITY: usize = 50;
    let count = ENTITIES * PER_ENTITY;
    let directory = tempfile::tempdir().expect("tempdir");
    let extra = format!("[reminders]\nfires_per_second_max = {FIRES_PER_SECOND_MAX}\n");
    let before = Probe::default();
    let node = start("rb1", directory.path(), &extra, &before).await;
    let due_ms = unix_ms() + 1_500;
    for entity in 0..ENTITIES {
        let reminders = (0..PER_ENTITY)
            .map(|index| (format!("r{index}"), due_ms))
            .collect();
        node.runtime()
            .entity::<Alarm>(format!("backlog-{entity}"))
            .ask(AlarmCommand::Set {
                reminders,
                passivate: false,
            })
            .await
            .expect("ask")
            .expect("registered");
    }
    node.shutdown(Duration::from_secs(5)).await;
    assert!(
        unix_ms() < due_ms,
        "the node stopped only after the reminders were due: the test proves nothing"
    );
    // The outage: the whole backlog comes due while no node runs.
    while unix_ms() <= due_ms + 500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(before.firings().is_empty(), "nothing fired before the stop");

    let after = Probe::default();
    let node = start("rb2", directory.path(), &extra, &after).await;
    assert!(
        common::wait_until(Duration::from_secs(60), || {
            after.firings.lock().expect("firings").len() >= count
        })
        .await,
        "{} of {count} backlogged reminders fired",
        after.firings().len()
    );
    let firings = after.firings();
    let mut seen = std::collections::BTreeSet::new();
    let mut times: Vec<u64> = Vec::new();
    for firing in &firings {
        assert!(firing.at_ms >= firing.due_ms, "{firing:?} fired early");
        if seen.insert((firing.key.clone(), firing.name.clone())) {
            times.push(firing.at_ms);
        }
    }
    assert_eq!(seen.len(), count, "every reminder fired");
    times.sort_unstable();
    let burst = TokenBucket::new(FIRES_PER_SECOND_MAX, Instant::now()).burst() as f64;
    // A firing's token is taken a moment before its target runs: allow a few of jitter.
    const JITTER_FIRINGS: f64 = 3.0;
    let mut worst_excess = f64::MIN;
    for (i, start) in times.iter().enumerate() {
        for (offset, end) in times[i..].iter().enumerate() {
            let fired = (offset + 1) as f64;
            let allowed = f64::from(FIRES_PER_SECOND_MAX) * (end - start) as f64 / 1000.0 + burst;
            worst_excess = worst_excess.max(fired - allowed);
        }
    }
    let span_s = (times[times.len() - 1] - times[0]) as f64 / 1000.0;
    println!(
        "backlog of {count} fired in {span_s:.2} s: {:.1} firings/s observed, {FIRES_PER_SECOND_MAX}/s configured, burst {burst}, worst window {worst_excess:+.1} firings beyond rate + burst",
        (count - 1) as f64 / span_s
    );
    assert!(
        worst_excess <= JITTER_FIRINGS,
        "a window fired {worst_excess:.1} more than {FIRES_PER_SECOND_MAX}/s plus a burst of {burst}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shard_refuses_the_registering_command() {
    let directory = tempfile::tempdir().expect("tempdir");
    let probe = Probe::default();
    let node = start(
        "rf1",
        directory.path(),
        "[reminders]\nper_shard_max = 2\n",
        &probe,
    )
    .await;
    let alarm = node.runtime().entity::<Alarm>("crowded");
    let later = unix_ms() + 3_600_000;
    let set = |names: &[&str]| AlarmCommand::Set {
        reminders: names.iter().map(|name| (name.to_string(), later)).collect(),
        passivate: false,
    };
    let refused = alarm.ask(set(&["a", "b", "c"])).await;
    assert!(
        matches!(&refused, Err(runtime::RuntimeError::Rejected { reason, .. }) if reason.contains("per_shard_max")),
        "three reminders in a shard of two: {refused:?}"
    );
    alarm
        .ask(set(&["a", "b"]))
        .await
        .expect("ask")
        .expect("two fit");
    // Registering one of them again replaces it: the shard does not grow.
    alarm
        .ask(set(&["b"]))
        .await
        .expect("ask")
        .expect("an upsert fits");
    let refused = alarm.ask(set(&["c"])).await;
    assert!(
        matches!(&refused, Err(runtime::RuntimeError::Rejected { .. })),
        "a third reminder: {refused:?}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}
