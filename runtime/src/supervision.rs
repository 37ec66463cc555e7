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

mod actor;
mod spec;
#[cfg(test)]
mod tests;

pub use actor::{SupervisorActor, SupervisorState};
pub use spec::{
    ChildSpec, Restart, RestartToken, StartFn, Strategy, SupervisorMsg, SupervisorSpec,
};
