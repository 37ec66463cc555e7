//! The supervisor actor: starts its children, watches them, restarts them by its strategy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use super::spec::*;

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
