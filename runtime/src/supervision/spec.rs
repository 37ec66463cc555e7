//! What a supervisor supervises: child specs, strategies, restart types, its messages.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ractor::{ActorCell, RpcReplyPort, SpawnErr};
use ractor_cluster::RactorMessage;

/// Starts one incarnation of a child: receives the supervisor's cell, spawns the child linked
/// to it and returns the child's cell. Called again for every restart.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

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
    pub(super) fn restarts_after(self, failed: bool) -> bool {
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
    pub(super) fn backoff(&self, recent_restarts: usize) -> Duration {
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
    pub(super) target: RestartTarget,
    /// How many name clashes this restart has already met.
    pub(super) name_clashes: u32,
}

#[derive(Debug, Clone)]
pub(super) enum RestartTarget {
    /// One-for-one: the named child, if it is still waiting for a restart.
    Child(String),
    /// One-for-all: every child waiting for a restart, in start order.
    AllPending,
}
