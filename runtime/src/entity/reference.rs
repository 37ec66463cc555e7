//! [`EntityRef`]: the location-transparent handle to one entity. It resolves the owner, sends
//! the command there (through the owner's host when remote) and retries on whoever owns the
//! entity next, with the same message id, until its deadline.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use tracing::{Instrument, Span};

use crate::codec::{self, Wire};
use crate::entity::host::HostMsg;
use crate::entity::shards::{Delivery, ShardMsg};
use crate::entity::{AskOutcome, Entity, Envelope, Reply, ReplyCallback, Request};
use crate::error::{Result, RuntimeError};
use crate::id::{EntityId, MsgId};
use crate::metrics as names;
use crate::runtime::Runtime;
use crate::trace;

/// A location-transparent handle to one entity. Cheap to clone and to create.
pub struct EntityRef<E: Entity> {
    id: EntityId,
    runtime: Runtime,
    kind: PhantomData<fn() -> E>,
}

impl<E: Entity> Clone for EntityRef<E> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            runtime: self.runtime.clone(),
            kind: PhantomData,
        }
    }
}

impl<E: Entity> std::fmt::Debug for EntityRef<E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "EntityRef({})", self.id)
    }
}

/// Why one attempt of an ask did not produce an answer; decides how to retry.
enum AttemptError {
    /// Try the named node next, at once.
    Redirect(Option<String>),
    /// Wait for the view to change or a short backoff, then retry.
    Retry(String),
    /// Give up.
    Fatal(RuntimeError),
}

/// Pause between attempts when nothing better to wait for is known.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Attempts of one ask, whatever its deadline.
const ASK_ATTEMPTS_MAX: u32 = 50;

impl<E: Entity> EntityRef<E> {
    pub(crate) fn new(runtime: Runtime, key: impl Into<String>) -> Self {
        Self {
            id: EntityId::new(E::KIND, key),
            runtime,
            kind: PhantomData,
        }
    }

    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Asks with the configured default deadline; the answer is the request's own reply type.
    pub async fn ask<R: Request<E>>(&self, request: R) -> Result<R::Reply> {
        let timeout = self.runtime.config().entities.ask_timeout_ms;
        self.ask_with(request, Duration::from_millis(timeout), None)
            .await
    }

    /// Asks with an explicit deadline and, for client retries, an explicit message id.
    /// Retries on another owner with the same message id until the deadline when the owner
    /// dies, does not answer, or is not the owner anymore.
    pub async fn ask_with<R: Request<E>>(
        &self,
        request: R,
        timeout: Duration,
        msg_id: Option<MsgId>,
    ) -> Result<R::Reply> {
        let msg_id = msg_id.unwrap_or_else(|| self.runtime.next_msg_id());
        let command = request.into_command();
        let span = trace::ask_span(&self.id, msg_id);
        let reply = self
            .ask_encoded(
                codec::encode(&command),
                msg_id,
                Instant::now(),
                timeout,
                &span,
            )
            .instrument(span.clone())
            .await?;
        self.typed::<R>(reply)
    }

    /// The request's answer out of the entity's reply.
    fn typed<R: Request<E>>(&self, reply: E::Reply) -> Result<R::Reply> {
        R::from_reply(reply).ok_or_else(|| RuntimeError::UnexpectedReply {
            entity: self.id.to_string(),
            request: std::any::type_name::<R>(),
        })
    }

    /// Asks with the default deadline and hands the answer to `done` instead of returning it.
    ///
    /// When this node owns the entity, the command goes to it with `done` as its reply: the
    /// entity runs `done` itself, so no task waits for the answer (cheaper than `ask` on a
    /// hot path). If the local attempt does not produce an answer (ownership moved, the
    /// entity stopped or is unavailable), it goes on as [`EntityRef::ask`] would, in a task,
    /// with the same message id (so it takes effect at most once) and the same deadline.
    /// An entity that neither answers nor stops (its journal hangs) gets until the deadline:
    /// then `done` gets a timeout, from the node's deadline sweeper.
    pub fn ask_then<R, F>(&self, request: R, done: F)
    where
        R: Request<E>,
        F: FnOnce(Result<R::Reply>) + Send + 'static,
    {
        let asker = self.clone();
        let done =
            move |reply: Result<E::Reply>| done(reply.and_then(|reply| asker.typed::<R>(reply)));
        let command = request.into_command();
        let started = Instant::now();
        let timeout = Duration::from_millis(self.runtime.config().entities.ask_timeout_ms);
        let msg_id = self.runtime.next_msg_id();
        let payload = codec::encode(&command);
        // The ask's span lives until `done` runs (it moves with it).
        let span = trace::ask_span(&self.id, msg_id);
        let local = self
            .runtime
            .owner_of(&self.id.kind, &self.id.key)
            .as_deref()
            == Some(self.runtime.node_id());
        let shards = match self.runtime.shards() {
            Ok(shards) if local => shards,
            _ => return self.spawn_ask(payload, msg_id, started, timeout, span, done),
        };
        let this = self.clone();
        let retry_payload = payload.clone();
        let deadline = started + timeout;
        let command_span = trace::command_span(&span, &self.id);
        let callback = ReplyCallback::new(self.runtime.deadlines(), deadline, move |outcome| {
            match outcome {
                Some(AskOutcome::Reply(bytes)) => {
                    metrics::histogram!(names::ASK_SECONDS).record(started.elapsed().as_secs_f64());
                    done(codec::decode(&bytes, "entity reply"))
                }
                Some(AskOutcome::Rejected(reason)) => done(Err(RuntimeError::Rejected {
                    entity: this.id.to_string(),
                    reason,
                })),
                None if Instant::now() >= deadline => done(Err(RuntimeError::Timeout {
                    entity: this.id.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                    last_error: "the entity on this node did not answer".into(),
                })),
                // Not the owner anymore, unavailable, or dropped unanswered: the full path.
                _ => this.spawn_ask(retry_payload, msg_id, started, timeout, span, done),
            }
        });
        // If the cast fails, the delivery (and with it the callback) is dropped: fallback.
        let _ = shards.cast(ShardMsg::Deliver {
            entity: self.id.clone(),
            delivery: Delivery {
                msg_id: Some(msg_id),
                payload,
                reply: Some(Reply::Callback(callback)),
                span: command_span,
                kind: crate::entity::shards::DeliveryKind::Command,
            },
        });
    }

    fn spawn_ask<F>(
        &self,
        payload: Vec<u8>,
        msg_id: MsgId,
        started: Instant,
        timeout: Duration,
        span: Span,
        done: F,
    ) where
        F: FnOnce(Result<E::Reply>) + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return done(Err(RuntimeError::Unavailable(
                "the node is shutting down".into(),
            )));
        };
        let this = self.clone();
        let instrumented = span.clone();
        handle.spawn(
            async move {
                done(
                    this.ask_encoded(payload, msg_id, started, timeout, &span)
                        .await,
                );
            }
            .instrument(instrumented),
        );
    }

    async fn ask_encoded(
        &self,
        payload: Vec<u8>,
        msg_id: MsgId,
        started: Instant,
        timeout: Duration,
        span: &Span,
    ) -> Result<E::Reply> {
        let deadline = started + timeout;
        let mut envelope = Envelope::new(
            self.id.clone(),
            msg_id,
            payload,
            self.runtime.node_id().to_string(),
        );
        trace::inject(&mut envelope.extensions, span);
        let mut views = self.runtime.watch_view();
        let mut hint: Option<String> = None;
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut last_error = String::from("no attempt made");
        for attempt in 0..ASK_ATTEMPTS_MAX {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let target = {
                let view = views.borrow_and_update();
                hint.take()
                    .filter(|node| view.is_up(node))
                    .or_else(|| view.owner(&self.id.kind, &self.id.key).map(str::to_string))
            };
            let Some(target) = target else {
                last_error = "no member is up".into();
                let _ = tokio::time::timeout(deadline - now, views.changed()).await;
                continue;
            };
            match self.attempt(&target, &envelope, deadline, span).await {
                Ok(bytes) => {
                    metrics::histogram!(names::ASK_SECONDS).record(started.elapsed().as_secs_f64());
                    return codec::decode(&bytes, "entity reply");
                }
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Redirect(owner)) => {
                    metrics::counter!(names::ASK_RETRIES_TOTAL, "reason" => "not owner")
                        .increment(1);
                    last_error = format!("{target} is not the owner");
                    hint = owner.filter(|owner| owner != &target);
                    if hint.is_none() || attempt > 2 {
                        // Views disagree: give membership a moment to converge.
                        wait_for_change(&mut views, backoff, deadline).await;
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    }
                }
                Err(AttemptError::Retry(reason)) => {
                    metrics::counter!(names::ASK_RETRIES_TOTAL, "reason" => "unavailable")
                        .increment(1);
                    last_error = format!("{target}: {reason}");
                    wait_for_change(&mut views, backoff, deadline).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        Err(RuntimeError::Timeout {
            entity: self.id.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            last_error,
        })
    }

    /// Sends without waiting for an answer (at most once; use `ask` when it must arrive).
    pub fn tell<R: Request<E>>(&self, request: R) -> Result<()> {
        let command = request.into_command();
        let owner = self
            .runtime
            .owner_of(&self.id.kind, &self.id.key)
            .ok_or_else(|| RuntimeError::Unavailable("no member is up".into()))?;
        let span = trace::tell_span(&self.id);
        let delivery = Delivery {
            msg_id: Some(self.runtime.next_msg_id()),
            payload: codec::encode(&command),
            reply: None,
            span: trace::command_span(&span, &self.id),
            kind: crate::entity::shards::DeliveryKind::Command,
        };
        if owner == self.runtime.node_id() {
            let shards = self.runtime.shards()?;
            return shards
                .cast(ShardMsg::Deliver {
                    entity: self.id.clone(),
                    delivery,
                })
                .map_err(|error| RuntimeError::Unavailable(error.to_string()));
        }
        let host = self.runtime.peer_host(&owner)?;
        let mut envelope = Envelope::new(
            self.id.clone(),
            delivery
                .msg_id
                .unwrap_or_else(|| self.runtime.next_msg_id()),
            delivery.payload,
            self.runtime.node_id().to_string(),
        );
        trace::inject(&mut envelope.extensions, &span);
        self.check_fits(&envelope)?;
        host.cast(HostMsg::Tell(Wire::new(envelope)))
            .map_err(|error| RuntimeError::Unavailable(error.to_string()))
    }

    async fn attempt(
        &self,
        target: &str,
        envelope: &Envelope,
        deadline: Instant,
        span: &Span,
    ) -> std::result::Result<Vec<u8>, AttemptError> {
        let attempt_timeout =
            Duration::from_millis(self.runtime.config().entities.attempt_timeout_ms);
        let timeout = attempt_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let outcome = if target == self.runtime.node_id() {
            self.attempt_local(envelope, timeout, span).await?
        } else {
            self.attempt_remote(target, envelope, timeout).await?
        };
        match outcome {
            AskOutcome::Reply(bytes) => Ok(bytes),
            AskOutcome::NotOwner { owner } => Err(AttemptError::Redirect(owner)),
            AskOutcome::Unavailable(reason) => Err(AttemptError::Retry(reason)),
            AskOutcome::Rejected(reason) => Err(AttemptError::Fatal(RuntimeError::Rejected {
                entity: self.id.to_string(),
                reason,
            })),
        }
    }

    async fn attempt_local(
        &self,
        envelope: &Envelope,
        timeout: Duration,
        span: &Span,
    ) -> std::result::Result<AskOutcome, AttemptError> {
        let shards = self
            .runtime
            .shards()
            .map_err(|error| AttemptError::Retry(error.to_string()))?;
        let (sender, receiver) = ractor::concurrency::oneshot();
        let delivery = Delivery {
            msg_id: Some(envelope.msg_id),
            payload: envelope.payload.clone(),
            reply: Some(Reply::Port(sender.into())),
            span: trace::command_span(span, &self.id),
            kind: crate::entity::shards::DeliveryKind::Command,
        };
        shards
            .cast(ShardMsg::Deliver {
                entity: self.id.clone(),
                delivery,
            })
            .map_err(|error| AttemptError::Retry(error.to_string()))?;
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(wire)) => wire
                .into_inner()
                .map_err(|error| AttemptError::Retry(error.to_string())),
            Ok(Err(_)) => Err(AttemptError::Retry(
                "the entity stopped before answering".into(),
            )),
            Err(_) => Err(AttemptError::Retry(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn attempt_remote(
        &self,
        target: &str,
        envelope: &Envelope,
        timeout: Duration,
    ) -> std::result::Result<AskOutcome, AttemptError> {
        self.check_fits(envelope).map_err(AttemptError::Fatal)?;
        let host = self
            .runtime
            .peer_host(target)
            .map_err(|error| AttemptError::Retry(error.to_string()))?;
        let envelope = envelope.clone();
        let result = host
            .call(
                |port| HostMsg::Ask(Wire::new(envelope), port),
                Some(timeout),
            )
            .await;
        match result {
            Ok(ractor::rpc::CallResult::Success(wire)) => wire.into_inner().map_err(|error| {
                metrics::counter!(names::WIRE_DECODE_ERRORS_TOTAL, "message" => "ask reply")
                    .increment(1);
                AttemptError::Retry(error.to_string())
            }),
            Ok(ractor::rpc::CallResult::Timeout) => Err(AttemptError::Retry(format!(
                "{target} did not answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(ractor::rpc::CallResult::SenderError) => {
                Err(AttemptError::Retry(format!("the link to {target} closed")))
            }
            Err(error) => Err(AttemptError::Retry(format!(
                "cannot reach {target}: {error}"
            ))),
        }
    }
}

impl<E: Entity> EntityRef<E> {
    /// Refuses an envelope too large for one cluster message: sent anyway, it would exceed the
    /// peer's frame limit and drop the link with everything else on it.
    fn check_fits(&self, envelope: &Envelope) -> Result<()> {
        let bytes_max = self.runtime.config().cluster.message_bytes_max();
        let bytes = envelope_bytes(envelope);
        if bytes <= bytes_max {
            return Ok(());
        }
        metrics::counter!(names::MESSAGES_TOO_LARGE_TOTAL, "kind" => "command").increment(1);
        Err(RuntimeError::Rejected {
            entity: self.id.to_string(),
            reason: format!(
                "the command is {bytes} bytes, more than the {bytes_max} bytes a cluster message may carry"
            ),
        })
    }
}

/// An upper bound of an envelope's encoded size (bincode adds at most a few bytes per field).
pub(crate) fn envelope_bytes(envelope: &Envelope) -> usize {
    const FIELDS_OVERHEAD_BYTES: usize = 64;
    envelope.payload.len()
        + envelope.entity.kind.len()
        + envelope.entity.key.len()
        + envelope.from.len()
        + envelope.extensions.bytes_len()
        + FIELDS_OVERHEAD_BYTES
}

async fn wait_for_change(
    views: &mut tokio::sync::watch::Receiver<crate::cluster::membership::View>,
    pause: Duration,
    deadline: Instant,
) {
    let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
    let _ = tokio::time::timeout(pause, views.changed()).await;
}
