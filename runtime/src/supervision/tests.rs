//! Supervisor behaviour: restarts by strategy and type, intensity and escalation, backoff.

use super::*;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::RactorMessage;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(2);

/// How often a test worker started and how often it stopped gracefully (ran post_stop).
#[derive(Default)]
struct Counters {
    starts: AtomicU32,
    graceful_stops: AtomicU32,
}

impl Counters {
    fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }
}

/// A child that counts its starts and graceful stops and can be told to panic, count or stop.
struct Worker;

#[derive(RactorMessage)]
enum WorkerMsg {
    Panic,
    Increment,
    Get(RpcReplyPort<u32>),
    Stop,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = (Arc<Counters>, u32);
    type Arguments = Arc<Counters>;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        counters: Arc<Counters>,
    ) -> Result<Self::State, ActorProcessingErr> {
        counters.starts.fetch_add(1, Ordering::SeqCst);
        Ok((counters, 0))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        (counters, _): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        counters.graceful_stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        (_, count): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Panic => panic!("worker told to panic"),
            WorkerMsg::Increment => *count += 1,
            WorkerMsg::Get(reply) => {
                let _ = reply.send(*count);
            }
            WorkerMsg::Stop => myself.stop(Some("told to stop".to_string())),
        }
        Ok(())
    }
}

fn worker(name: &str, restart: Restart, counters: &Arc<Counters>) -> ChildSpec {
    let (actor_name, counters) = (name.to_string(), counters.clone());
    ChildSpec::new(name, restart, move |supervisor| {
        let (actor_name, counters) = (actor_name.clone(), counters.clone());
        async move {
            let (worker, _) =
                Actor::spawn_linked(Some(actor_name), Worker, counters, supervisor).await?;
            Ok(worker.get_cell())
        }
    })
}

fn spec(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
    SupervisorSpec {
        backoff_min: Duration::ZERO,
        ..SupervisorSpec::new(strategy, children)
    }
}

async fn children(
    supervisor: &ActorRef<SupervisorMsg>,
) -> anyhow::Result<Vec<(String, ActorCell)>> {
    Ok(ractor::call!(supervisor, SupervisorMsg::Children)?)
}

async fn child(
    supervisor: &ActorRef<SupervisorMsg>,
    name: &str,
) -> anyhow::Result<Option<ActorCell>> {
    Ok(children(supervisor)
        .await?
        .into_iter()
        .find(|(child, _)| child == name)
        .map(|(_, cell)| cell))
}

/// Polls until the named child runs with an id other than `old`, for at most [`WAIT`].
async fn wait_for_new_incarnation(
    supervisor: &ActorRef<SupervisorMsg>,
    name: &str,
    old: ActorId,
) -> anyhow::Result<ActorCell> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(cell) = child(supervisor, name)
            .await?
            .filter(|cell| cell.get_id() != old)
        {
            return Ok(cell);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(anyhow!("child {name} was not restarted within {WAIT:?}"))
}

async fn wait_for_absence(supervisor: &ActorRef<SupervisorMsg>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child(supervisor, name).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(anyhow!("child {name} still listed after {WAIT:?}"))
}

async fn running(
    supervisor: &ActorRef<SupervisorMsg>,
    name: &str,
) -> anyhow::Result<ActorRef<WorkerMsg>> {
    Ok(child(supervisor, name)
        .await?
        .with_context(|| format!("child {name} not running"))?
        .into())
}

/// Panics the named child and waits for its next incarnation.
async fn crash_and_wait(
    supervisor: &ActorRef<SupervisorMsg>,
    name: &str,
) -> anyhow::Result<ActorCell> {
    let worker = running(supervisor, name).await?;
    worker.cast(WorkerMsg::Panic)?;
    wait_for_new_incarnation(supervisor, name, worker.get_id()).await
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() -> anyhow::Result<()> {
    let (counters_a, counters_b) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let children_specs = vec![
        worker("sup-ofo-a", Restart::Permanent, &counters_a),
        worker("sup-ofo-b", Restart::Permanent, &counters_b),
    ];
    let (supervisor, handle) = Actor::spawn(
        None,
        SupervisorActor,
        spec(Strategy::OneForOne, children_specs),
    )
    .await?;
    let b = running(&supervisor, "sup-ofo-b").await?;
    b.cast(WorkerMsg::Increment)?;

    crash_and_wait(&supervisor, "sup-ofo-a").await?;

    assert_eq!(counters_a.starts(), 2);
    assert_eq!(counters_b.starts(), 1);
    assert_eq!(
        running(&supervisor, "sup-ofo-b").await?.get_id(),
        b.get_id()
    );
    assert_eq!(ractor::call!(b, WorkerMsg::Get)?, 1);
    let names: Vec<String> = children(&supervisor)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["sup-ofo-a", "sup-ofo-b"]);
    supervisor.stop(None);
    handle.await?;
    Ok(())
}

/// A parent that forwards the failures of its children to a channel.
struct Recorder;

#[derive(RactorMessage)]
enum RecorderMsg {}

impl Actor for Recorder {
    type Msg = RecorderMsg;
    type State = mpsc::UnboundedSender<(ActorId, String)>;
    type Arguments = mpsc::UnboundedSender<(ActorId, String)>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RecorderMsg>,
        sender: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sender)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RecorderMsg>,
        event: SupervisionEvent,
        sender: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let _ = sender.send((cell.get_id(), error.to_string()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn exceeding_the_intensity_escalates_to_the_parent() -> anyhow::Result<()> {
    let (sender, mut failures) = mpsc::unbounded_channel();
    let (parent, parent_handle) = Actor::spawn(None, Recorder, sender).await?;
    let counters = Arc::new(Counters::default());
    let spec = SupervisorSpec {
        max_restarts: 2,
        period: Duration::from_secs(5),
        ..spec(
            Strategy::OneForOne,
            vec![worker("sup-esc-a", Restart::Permanent, &counters)],
        )
    };
    let (supervisor, _) =
        Actor::spawn_linked(None, SupervisorActor, spec, parent.get_cell()).await?;

    crash_and_wait(&supervisor, "sup-esc-a").await?;
    crash_and_wait(&supervisor, "sup-esc-a").await?;
    running(&supervisor, "sup-esc-a")
        .await?
        .cast(WorkerMsg::Panic)?;

    let (failed, reason) = tokio::time::timeout(WAIT, failures.recv())
        .await?
        .context("recorder channel closed")?;
    assert_eq!(failed, supervisor.get_id());
    assert!(
        reason.contains("sup-esc-a"),
        "reason should name the child: {reason}"
    );
    assert_eq!(counters.starts(), 3);
    parent.stop(None);
    parent_handle.await?;
    Ok(())
}

#[tokio::test]
async fn one_for_all_restarts_every_child() -> anyhow::Result<()> {
    let (counters_a, counters_b) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let children_specs = vec![
        worker("sup-ofa-a", Restart::Permanent, &counters_a),
        worker("sup-ofa-b", Restart::Transient, &counters_b),
    ];
    let (supervisor, handle) = Actor::spawn(
        None,
        SupervisorActor,
        spec(Strategy::OneForAll, children_specs),
    )
    .await?;
    let old_b = running(&supervisor, "sup-ofa-b").await?.get_id();

    crash_and_wait(&supervisor, "sup-ofa-a").await?;
    let new_b = wait_for_new_incarnation(&supervisor, "sup-ofa-b", old_b).await?;

    assert_ne!(new_b.get_id(), old_b);
    assert_eq!(counters_a.starts(), 2);
    assert_eq!(counters_b.starts(), 2);
    supervisor.stop(None);
    handle.await?;
    Ok(())
}

#[tokio::test]
async fn clean_stop_restarts_permanent_but_not_transient() -> anyhow::Result<()> {
    let (counters_transient, counters_permanent) =
        (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let children_specs = vec![
        worker(
            "sup-clean-transient",
            Restart::Transient,
            &counters_transient,
        ),
        worker(
            "sup-clean-permanent",
            Restart::Permanent,
            &counters_permanent,
        ),
    ];
    let (supervisor, handle) = Actor::spawn(
        None,
        SupervisorActor,
        spec(Strategy::OneForOne, children_specs),
    )
    .await?;

    running(&supervisor, "sup-clean-transient")
        .await?
        .cast(WorkerMsg::Stop)?;
    wait_for_absence(&supervisor, "sup-clean-transient").await?;
    let permanent = running(&supervisor, "sup-clean-permanent").await?;
    permanent.cast(WorkerMsg::Stop)?;
    wait_for_new_incarnation(&supervisor, "sup-clean-permanent", permanent.get_id()).await?;

    // The permanent child's restart went through the mailbox after any restart of the
    // transient one would have, so the transient one is really gone.
    assert!(child(&supervisor, "sup-clean-transient").await?.is_none());
    assert_eq!(counters_transient.starts(), 1);
    assert_eq!(counters_permanent.starts(), 2);
    supervisor.stop(None);
    handle.await?;
    Ok(())
}

#[tokio::test]
async fn restart_waits_for_the_backoff() -> anyhow::Result<()> {
    let counters = Arc::new(Counters::default());
    let backoff = Duration::from_millis(50);
    let spec = SupervisorSpec {
        backoff_min: backoff,
        ..SupervisorSpec::new(
            Strategy::OneForOne,
            vec![worker("sup-backoff-a", Restart::Permanent, &counters)],
        )
    };
    let (supervisor, handle) = Actor::spawn(None, SupervisorActor, spec).await?;

    let crashed_at = Instant::now();
    crash_and_wait(&supervisor, "sup-backoff-a").await?;

    // A tokio sleep never ends early, so this cannot flake.
    assert!(
        crashed_at.elapsed() >= backoff,
        "restarted after {:?}",
        crashed_at.elapsed()
    );
    assert_eq!(counters.starts(), 2);
    supervisor.stop(None);
    handle.await?;
    Ok(())
}

#[tokio::test]
async fn dynamic_children_are_supervised_and_names_are_unique() -> anyhow::Result<()> {
    let counters = Arc::new(Counters::default());
    let (supervisor, handle) =
        Actor::spawn(None, SupervisorActor, spec(Strategy::OneForOne, Vec::new())).await?;

    let started = ractor::call!(
        supervisor,
        SupervisorMsg::StartChild,
        worker("sup-dyn-a", Restart::Permanent, &counters)
    )?;
    let cell = started.map_err(|error| anyhow!(error))?;
    let duplicate = ractor::call!(
        supervisor,
        SupervisorMsg::StartChild,
        worker("sup-dyn-a", Restart::Permanent, &counters)
    )?;
    assert!(duplicate.is_err());
    crash_and_wait(&supervisor, "sup-dyn-a").await?;

    assert_eq!(counters.starts(), 2);
    assert_ne!(
        running(&supervisor, "sup-dyn-a").await?.get_id(),
        cell.get_id()
    );
    supervisor.stop(None);
    handle.await?;
    Ok(())
}

#[tokio::test]
async fn stopping_the_supervisor_stops_children_gracefully() -> anyhow::Result<()> {
    let counters = Arc::new(Counters::default());
    let (supervisor, handle) = Actor::spawn(
        None,
        SupervisorActor,
        spec(
            Strategy::OneForOne,
            vec![worker("sup-stop-a", Restart::Permanent, &counters)],
        ),
    )
    .await?;
    let child = running(&supervisor, "sup-stop-a").await?;

    supervisor.stop(None);
    handle.await?;

    assert_eq!(child.get_status(), ractor::ActorStatus::Stopped);
    assert_eq!(
        counters.graceful_stops.load(Ordering::SeqCst),
        1,
        "the child's post_stop should have run"
    );
    assert!(ractor::registry::where_is("sup-stop-a").is_none());
    Ok(())
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let spec = SupervisorSpec {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..SupervisorSpec::default()
    };
    assert_eq!(spec.backoff(1), Duration::from_millis(10));
    assert_eq!(spec.backoff(2), Duration::from_millis(20));
    assert_eq!(spec.backoff(3), Duration::from_millis(40));
    assert_eq!(spec.backoff(4), Duration::from_millis(50));
    assert_eq!(spec.backoff(usize::MAX), Duration::from_millis(50));
}
