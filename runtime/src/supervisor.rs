//! An OTP-style supervisor actor that starts child actors and restarts them when they stop or crash.
//!
//! ractor links children to parents but has no restart policy: a parent only receives a
//! [`SupervisionEvent`] and its default reaction is to stop. [`SupervisorActor`] adds the
//! policy: one-for-one or one-for-all restarts, per-child restart types
//! (permanent/transient/temporary), a restart intensity (at most `max_restarts` within `period`)
//! and exponential backoff. When the intensity is exceeded the supervisor stops its children
//! and fails, so its own parent sees `ActorFailed` and can apply its policy: that is escalation.
//!
//! ```ignore
//! let spec = SupervisorSpec::new(Strategy::OneForOne, vec![ChildSpec::new("worker", Restart::Permanent, |sup| {
//!     let args = args.clone();
//!     async move {
//!         let (worker, _) = Actor::spawn_linked(Some("worker".into()), Worker, args, sup).await?;
//!         Ok(worker.get_cell())
//!     }
//! })]);
//! let (supervisor, _) = Actor::spawn(Some("workers".into()), SupervisorActor, spec).await?;
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use ractor_cluster::RactorMessage;

/// Starts one incarnation of a child: receives the supervisor's cell, spawns the child linked
/// to it and returns the child's cell. Called again for every restart.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// The name used in logs and metrics for a supervisor that was spawned without a name.
const UNNAMED_SUPERVISOR: &str = "supervisor";
/// How long stopping children (on shutdown, escalation or a one-for-all restart) may take in
/// total before the remaining ones are killed.
const CHILD_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// A stopping actor frees its registered name a moment after its supervisor hears about the
/// exit, so a restart can briefly clash with the old incarnation's name: retry after this delay.
const NAME_CLASH_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Name clashes retried before the restart counts as failed (about one second in total).
const NAME_CLASH_MAX_RETRIES: u32 = 100;

/// Which children are restarted when one of them has to be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited is restarted.
    OneForOne,
    /// All children are stopped (in reverse start order) and restarted in start order: for
    /// children that depend on each other's state.
    OneForAll,
}

/// When a child that exited is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, even after a clean stop.
    Permanent,
    /// Restarted only after a failure (panic or `Err` from a handler), not after a clean stop.
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

impl Restart {
    /// Whether a child with this restart type is restarted after exiting (`failed` = it crashed).
    fn restarts_after(self, failed: bool) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        }
    }
}

/// How to start (and restart) one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Identifies the child in the supervisor, logs and metrics; unique within one supervisor.
    pub name: String,
    /// When the child is restarted.
    pub restart: Restart,
    /// Spawns the child linked to the supervisor cell it is given.
    pub start: StartFn,
}

impl ChildSpec {
    /// A child spec from an async closure that spawns the child linked to the given supervisor
    /// cell. The closure is called once per incarnation, so clone its captures inside it.
    pub fn new<F, Fut>(name: impl Into<String>, restart: Restart, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        let start: StartFn = Arc::new(move |supervisor| Box::pin(start(supervisor)));
        Self {
            name: name.into(),
            restart,
            start,
        }
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// The configuration of a supervisor: its strategy, restart intensity, backoff and children.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// Which children are restarted together.
    pub strategy: Strategy,
    /// More than this many restarts within `period` makes the supervisor escalate (fail).
    pub max_restarts: u32,
    /// The sliding window over which restarts are counted.
    pub period: Duration,
    /// Delay before the first restart in a window; doubled for each further recent restart.
    pub backoff_min: Duration,
    /// Upper bound of the restart delay.
    pub backoff_max: Duration,
    /// The children started in order when the supervisor starts.
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// OTP's default intensity: more than 3 restarts within 5 seconds escalates.
    pub const DEFAULT_MAX_RESTARTS: u32 = 3;
    /// See [`SupervisorSpec::DEFAULT_MAX_RESTARTS`].
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
    /// A short first delay so that a crash loop does not spin while staying fast for one crash.
    pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(10);
    /// See [`SupervisorSpec::DEFAULT_BACKOFF_MIN`].
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);

    /// A spec with the default intensity and backoff.
    pub fn new(strategy: Strategy, children: Vec<ChildSpec>) -> Self {
        Self {
            strategy,
            max_restarts: Self::DEFAULT_MAX_RESTARTS,
            period: Self::DEFAULT_PERIOD,
            backoff_min: Self::DEFAULT_BACKOFF_MIN,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            children,
        }
    }

    /// The delay before a restart when `recent_restarts` (including this one) happened within
    /// `period`: `backoff_min * 2^(recent_restarts - 1)`, capped at `backoff_max`.
    fn backoff(&self, recent_restarts: usize) -> Duration {
        let doublings = u32::try_from(recent_restarts.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(31);
        self.backoff_min
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

impl Default for SupervisorSpec {
    /// One-for-one with no initial children and the default intensity and backoff.
    fn default() -> Self {
        Self::new(Strategy::OneForOne, Vec::new())
    }
}

/// Messages understood by [`SupervisorActor`]. Local only: child specs hold closures.
#[derive(RactorMessage)]
pub enum SupervisorMsg {
    /// Start a dynamic child after the existing ones; it is supervised like the initial ones.
    /// Fails if the name is already used by a child of this supervisor or the spawn fails.
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, String>>),
    /// The running children with their names, in start order. A child waiting for a delayed
    /// restart is not listed.
    Children(RpcReplyPort<Vec<(String, ActorCell)>>),
    /// Internal: a delayed restart scheduled by the supervisor itself.
    Restart(RestartToken),
}

/// An opaque restart request the supervisor sends itself for delayed (backoff) restarts.
#[derive(Debug, Clone)]
pub struct RestartToken {
    target: RestartTarget,
    /// How many name clashes this restart has already met.
    name_clashes: u32,
}

#[derive(Debug, Clone)]
enum RestartTarget {
    /// One-for-one: the named child, if it is still waiting for a restart.
    Child(String),
    /// One-for-all: every child waiting for a restart, in start order.
    AllPending,
}

/// The supervisor actor. Spawn it with a [`SupervisorSpec`] as arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct SupervisorActor;

/// The supervisor's internal state (opaque).
pub struct SupervisorState {
    /// Registered name of the supervisor, for logs and metrics.
    name: String,
    spec: SupervisorSpec,
    /// Children in start order. `cell` is `None` while a child waits for its restart.
    children: Vec<Child>,
    /// Times of the restarts within the last `period`, oldest first.
    restarts: VecDeque<Instant>,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
}

impl SupervisorState {
    /// The index of the running child with this id. Children we stopped on purpose, or old
    /// incarnations, are not found: their events are stale and must be ignored.
    fn index_of(&self, id: ActorId) -> Option<usize> {
        self.children
            .iter()
            .position(|child| child.cell.as_ref().is_some_and(|cell| cell.get_id() == id))
    }

    /// Records a restart now and returns how many restarts happened within `period`.
    fn record_restart(&mut self, now: Instant) -> usize {
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|time| now.duration_since(*time) > self.spec.period)
        {
            self.restarts.pop_front();
        }
        self.restarts.len()
    }

    /// Indices of the children a restart token targets, in start order.
    fn pending(&self, target: &RestartTarget) -> Vec<usize> {
        let waiting = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, child)| child.cell.is_none());
        match target {
            RestartTarget::Child(name) => waiting
                .filter(|(_, child)| &child.spec.name == name)
                .map(|(index, _)| index)
                .collect(),
            RestartTarget::AllPending => waiting.map(|(index, _)| index).collect(),
        }
    }

    fn running(&self) -> Vec<(String, ActorCell)> {
        self.children
            .iter()
            .filter_map(|child| {
                child
                    .cell
                    .clone()
                    .map(|cell| (child.spec.name.clone(), cell))
            })
            .collect()
    }

    /// Stops the running children in reverse start order within [`CHILD_SHUTDOWN_TIMEOUT`].
    /// Their cells are taken first, so the exit events they produce are ignored.
    async fn stop_children(&mut self, reason: &str) {
        let deadline = Instant::now() + CHILD_SHUTDOWN_TIMEOUT;
        for child in self.children.iter_mut().rev() {
            if let Some(cell) = child.cell.take() {
                stop_child(&cell, reason, deadline).await;
            }
        }
    }
}

/// Stops a child gracefully, killing it if it has not stopped by `deadline`.
async fn stop_child(cell: &ActorCell, reason: &str, deadline: Instant) {
    let timeout = deadline.saturating_duration_since(Instant::now());
    if cell
        .stop_and_wait(Some(reason.to_string()), Some(timeout))
        .await
        .is_err()
    {
        // Timed out (or already gone): kill so that the name and resources are released.
        cell.kill();
    }
}

/// Starts a child during the supervisor's own start, retrying briefly on a name clash: when
/// this supervisor is itself a restarted incarnation, the previous children may still be
/// releasing their names.
async fn start_initial_child(
    spec: &ChildSpec,
    supervisor: ActorCell,
) -> Result<ActorCell, SpawnErr> {
    let mut clashes = 0;
    loop {
        match (spec.start)(supervisor.clone()).await {
            Err(SpawnErr::ActorAlreadyRegistered(_)) if clashes < NAME_CLASH_MAX_RETRIES => {
                clashes += 1;
                tokio::time::sleep(NAME_CLASH_RETRY_DELAY).await;
            }
            result => return result,
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        mut spec: SupervisorSpec,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let name = myself
            .get_name()
            .unwrap_or_else(|| UNNAMED_SUPERVISOR.to_string());
        let initial = std::mem::take(&mut spec.children);
        let mut state = SupervisorState {
            name,
            spec,
            children: Vec::new(),
            restarts: VecDeque::new(),
        };
        for child_spec in initial {
            match start_initial_child(&child_spec, myself.get_cell()).await {
                Ok(cell) => state.children.push(Child {
                    spec: child_spec,
                    cell: Some(cell),
                }),
                Err(error) => {
                    // Leave nothing behind: the caller sees a failed spawn, not half a tree.
                    state.stop_children("supervisor start failed").await;
                    return Err(format!(
                        "supervisor {}: cannot start child {}: {error}",
                        state.name, child_spec.name
                    )
                    .into());
                }
            }
        }
        tracing::info!(supervisor = %state.name, children = state.children.len(), "supervisor started");
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // ractor kills children when their parent exits, without running their post_stop:
        // stop them gracefully first, newest first as OTP does.
        state.stop_children("supervisor stopping").await;
        tracing::info!(supervisor = %state.name, "supervisor stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = start_dynamic_child(myself.get_cell(), spec, state).await;
                // The caller may have given up waiting; the child is supervised either way.
                let _ = reply.send(result);
                Ok(())
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.running());
                Ok(())
            }
            SupervisorMsg::Restart(token) => restart(&myself, token, state).await,
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, true, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, false, reason.unwrap_or_else(|| "stopped".to_string()))
            }
            _ => return Ok(()),
        };
        let Some(index) = state.index_of(cell.get_id()) else {
            tracing::debug!(supervisor = %state.name, actor = %cell.get_id(), reason = %reason, "ignoring exit of an actor that is no longer a current child");
            return Ok(());
        };
        state.children[index].cell = None;
        child_exited(&myself, index, failed, &reason, state).await
    }
}

async fn start_dynamic_child(
    supervisor: ActorCell,
    spec: ChildSpec,
    state: &mut SupervisorState,
) -> Result<ActorCell, String> {
    if state
        .children
        .iter()
        .any(|child| child.spec.name == spec.name)
    {
        return Err(format!(
            "supervisor {} already has a child named {}",
            state.name, spec.name
        ));
    }
    let cell = (spec.start)(supervisor)
        .await
        .map_err(|error| format!("cannot start child {}: {error}", spec.name))?;
    tracing::info!(supervisor = %state.name, child = %spec.name, "dynamic child started");
    state.children.push(Child {
        spec,
        cell: Some(cell.clone()),
    });
    Ok(cell)
}

/// Reacts to the exit of the child at `index` (its cell already cleared): remove it, restart
/// it (and for one-for-all, its siblings), or escalate when the restart intensity is exceeded.
async fn child_exited(
    myself: &ActorRef<SupervisorMsg>,
    index: usize,
    failed: bool,
    reason: &str,
    state: &mut SupervisorState,
) -> Result<(), ActorProcessingErr> {
    let Child { spec, .. } = &state.children[index];
    let (child, restart) = (spec.name.clone(), spec.restart);
    if !restart.restarts_after(failed) {
        tracing::info!(supervisor = %state.name, child = %child, reason = %reason, ?restart, "child exited and is not restarted");
        state.children.remove(index);
        return Ok(());
    }
    let recent_restarts = state.record_restart(Instant::now());
    if recent_restarts > state.spec.max_restarts as usize {
        return Err(escalate(&child, reason, recent_restarts, state).await);
    }
    tracing::warn!(supervisor = %state.name, child = %child, reason = %reason, failed, recent_restarts, "child exited; restarting");
    let target = match state.spec.strategy {
        Strategy::OneForOne => RestartTarget::Child(child),
        Strategy::OneForAll => {
            state.stop_children("sibling restart (one-for-all)").await;
            // Temporary children are never restarted, not even when we stopped them.
            state
                .children
                .retain(|child| child.spec.restart != Restart::Temporary);
            RestartTarget::AllPending
        }
    };
    schedule_restart(
        myself,
        RestartToken {
            target,
            name_clashes: 0,
        },
        state.spec.backoff(recent_restarts),
    );
    Ok(())
}

/// Stops the remaining children and returns the error that makes this supervisor fail.
async fn escalate(
    child: &str,
    reason: &str,
    recent_restarts: usize,
    state: &mut SupervisorState,
) -> ActorProcessingErr {
    let (max_restarts, period) = (state.spec.max_restarts, state.spec.period);
    tracing::error!(
        supervisor = %state.name, child = %child, reason = %reason, recent_restarts, max_restarts, period_ms = period.as_millis() as u64,
        "restart intensity exceeded; escalating"
    );
    metrics::counter!("actorhub_supervisor_escalations_total", "supervisor" => state.name.clone())
        .increment(1);
    // A failing actor's post_stop does not run, so stop the children gracefully here.
    state.stop_children("supervisor escalating").await;
    format!(
        "supervisor {}: child {child} exceeded the restart intensity ({recent_restarts} restarts within {period:?}, max {max_restarts}); last reason: {reason}",
        state.name
    )
    .into()
}

/// Sends the restart to ourselves, after `delay` if any. Going through the mailbox even without
/// a delay keeps the handler short and lets pending supervision events be handled first.
fn schedule_restart(myself: &ActorRef<SupervisorMsg>, token: RestartToken, delay: Duration) {
    if delay.is_zero() {
        // Fails only if we are stopping, when there is nothing left to restart.
        let _ = myself.cast(SupervisorMsg::Restart(token));
    } else {
        // Fire and forget: a send after we stopped fails harmlessly.
        drop(myself.send_after(delay, move || SupervisorMsg::Restart(token)));
    }
}

/// Starts the children the token targets, in start order.
async fn restart(
    myself: &ActorRef<SupervisorMsg>,
    token: RestartToken,
    state: &mut SupervisorState,
) -> Result<(), ActorProcessingErr> {
    for index in state.pending(&token.target) {
        let spec = state.children[index].spec.clone();
        match (spec.start)(myself.get_cell()).await {
            Ok(cell) => {
                tracing::info!(supervisor = %state.name, child = %spec.name, actor = %cell.get_id(), "child restarted");
                metrics::counter!("actorhub_supervisor_restarts_total", "supervisor" => state.name.clone(), "child" => spec.name.clone()).increment(1);
                state.children[index].cell = Some(cell);
            }
            Err(SpawnErr::ActorAlreadyRegistered(_))
                if token.name_clashes < NAME_CLASH_MAX_RETRIES =>
            {
                // The previous incarnation has not released its name yet; it will shortly.
                let retry = RestartToken {
                    target: token.target,
                    name_clashes: token.name_clashes + 1,
                };
                schedule_restart(myself, retry, NAME_CLASH_RETRY_DELAY);
                return Ok(());
            }
            Err(error) => {
                // A failed restart counts as another crash, so a child that cannot start
                // eventually exhausts the intensity and escalates instead of looping forever.
                return child_exited(
                    myself,
                    index,
                    true,
                    &format!("restart failed: {error}"),
                    state,
                )
                .await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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

    async fn wait_for_absence(
        supervisor: &ActorRef<SupervisorMsg>,
        name: &str,
    ) -> anyhow::Result<()> {
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
        let (counters_a, counters_b) =
            (Arc::new(Counters::default()), Arc::new(Counters::default()));
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
        let (counters_a, counters_b) =
            (Arc::new(Counters::default()), Arc::new(Counters::default()));
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
}
