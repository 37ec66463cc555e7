//! Where an entity's answer to one delivery goes: a reply port, or a callback that whoever
//! answers runs (see [`crate::entity::EntityRef::ask_then`]), with a deadline kept by one task
//! per node, so a callback runs exactly once: with the answer, with `None` when the delivery is
//! dropped unanswered (the entity stopped or failed), or with `None` at its deadline when the
//! entity is alive but does not answer (its journal hangs, say).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::codec::Wire;
use crate::entity::{AskOutcome, ReplyPort};

/// Where an entity's answer to one delivery goes.
pub enum Reply {
    /// A reply port: an ask awaiting it on this node.
    Port(ReplyPort),
    /// A reply port of an ask from a peer: the answer crosses the cluster, so one larger than
    /// `bytes_max` is replaced by a refusal that says so (a frame over the peer's limit would
    /// drop the whole link).
    Peer { port: ReplyPort, bytes_max: usize },
    /// A function run by whoever answers.
    Callback(ReplyCallback),
}

impl Reply {
    pub fn send(self, outcome: AskOutcome) {
        match self {
            Reply::Port(port) => {
                let _ = port.send(Wire::new(outcome));
            }
            Reply::Peer { port, bytes_max } => {
                let _ = port.send(Wire::new(fit_for_peer(outcome, bytes_max)));
            }
            Reply::Callback(callback) => {
                if let Some(function) = callback.slot.take() {
                    function(Some(outcome));
                }
            }
        }
    }
}

/// `outcome` if it fits in a cluster message of `bytes_max`, else a refusal saying why.
fn fit_for_peer(outcome: AskOutcome, bytes_max: usize) -> AskOutcome {
    match outcome {
        AskOutcome::Reply(bytes) if bytes.len() > bytes_max => {
            metrics::counter!(crate::metrics::MESSAGES_TOO_LARGE_TOTAL, "kind" => "reply")
                .increment(1);
            tracing::warn!(
                bytes = bytes.len(),
                bytes_max,
                "refused to send an answer larger than a cluster message"
            );
            AskOutcome::Rejected(format!(
                "the answer is {} bytes, more than the {bytes_max} bytes a cluster message may carry; ask for less at a time",
                bytes.len()
            ))
        }
        other => other,
    }
}

/// Sends `outcome` to `reply`, if the delivery has one (a tell has none).
pub fn respond(reply: Option<Reply>, outcome: AskOutcome) {
    if let Some(reply) = reply {
        reply.send(outcome);
    }
}

impl From<ReplyPort> for Reply {
    fn from(port: ReplyPort) -> Self {
        Reply::Port(port)
    }
}

type ReplyFn = Box<dyn FnOnce(Option<AskOutcome>) + Send>;

/// The function, until someone takes it to run it.
#[derive(Default)]
struct Slot(Mutex<Option<ReplyFn>>);

impl Slot {
    fn take(&self) -> Option<ReplyFn> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// A one-shot answer function: run with the answer, or with `None` if it is dropped
/// unanswered or its deadline passes first.
pub struct ReplyCallback {
    slot: Arc<Slot>,
}

impl ReplyCallback {
    /// `function` runs with `None` at `deadline` at the latest (see [`Deadlines`]).
    pub fn new(
        deadlines: &Deadlines,
        deadline: Instant,
        function: impl FnOnce(Option<AskOutcome>) + Send + 'static,
    ) -> Self {
        let slot = Arc::new(Slot(Mutex::new(Some(Box::new(function)))));
        deadlines.watch(deadline, &slot);
        Self { slot }
    }
}

impl Drop for ReplyCallback {
    fn drop(&mut self) {
        if let Some(function) = self.slot.take() {
            function(None);
        }
    }
}

/// How often the sweeper looks whether its node is gone, when it has nothing to wait for.
const SWEEPER_IDLE_CHECK: Duration = Duration::from_secs(1);

/// The deadlines of a node's callbacks, in deadline order, and the task that runs overdue ones
/// with `None`; the task only ever waits for the front. Every caller uses the node's ask
/// timeout, so a new deadline belongs at the back (or a few entries before it, when callers on
/// several threads race). An answered callback leaves a dead entry (a weak reference), dropped
/// when the task reaches it: the queue holds at most the callbacks of one ask timeout.
#[derive(Default)]
pub struct Deadlines {
    queue: Mutex<VecDeque<(Instant, Weak<Slot>)>>,
    added: tokio::sync::Notify,
    sweeper: std::sync::OnceLock<()>,
}

impl Deadlines {
    fn queue(&self) -> MutexGuard<'_, VecDeque<(Instant, Weak<Slot>)>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watch(&self, deadline: Instant, slot: &Arc<Slot>) {
        let was_empty = {
            let mut queue = self.queue();
            // After every deadline at or before this one: the back, in all but a race.
            let at = queue
                .iter()
                .rposition(|(queued, _)| *queued <= deadline)
                .map_or(0, |index| index + 1);
            queue.insert(at, (deadline, Arc::downgrade(slot)));
            queue.len() == 1
        };
        if was_empty {
            self.added.notify_one();
        }
    }

    /// Starts the sweeper (once) in the current tokio runtime; it ends after `deadlines` goes.
    pub fn start(deadlines: &Arc<Deadlines>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        deadlines.sweeper.get_or_init(|| {
            handle.spawn(sweep(Arc::downgrade(deadlines)));
        });
    }

    /// Takes the callbacks whose deadline is `now` or earlier, dropping answered entries on
    /// the way; returns them and the next deadline to wait for.
    fn overdue(&self, now: Instant) -> (Vec<ReplyFn>, Option<Instant>) {
        let mut queue = self.queue();
        let mut overdue = Vec::new();
        while let Some((deadline, slot)) = queue.front() {
            let live = slot.upgrade();
            match live {
                None => {}
                Some(_) if *deadline > now => return (overdue, Some(*deadline)),
                Some(slot) => overdue.extend(slot.take()),
            }
            let deadline = *deadline;
            queue.pop_front();
            // The sweeper waits for the front only: a later entry due earlier would run late.
            assert!(
                queue.front().is_none_or(|(next, _)| *next >= deadline),
                "reply deadlines out of order"
            );
        }
        (overdue, None)
    }
}

async fn sweep(deadlines: Weak<Deadlines>) {
    loop {
        let Some(this) = deadlines.upgrade() else {
            return;
        };
        let (overdue, next) = this.overdue(Instant::now());
        for function in overdue {
            function(None);
        }
        match next {
            Some(deadline) => {
                drop(this);
                tokio::time::sleep_until(deadline.into()).await;
            }
            None => {
                let _ = tokio::time::timeout(SWEEPER_IDLE_CHECK, this.added.notified()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<Option<String>>>>;

    fn recorder() -> (Seen, impl FnOnce(Option<AskOutcome>) + Send + 'static) {
        let seen = Seen::default();
        let record = seen.clone();
        let function = move |outcome: Option<AskOutcome>| {
            record
                .lock()
                .expect("lock")
                .push(outcome.map(|outcome| format!("{outcome:?}")));
        };
        (seen, function)
    }

    #[tokio::test]
    async fn a_callback_runs_once_with_the_answer_or_none_when_dropped_or_overdue() {
        let deadlines = Arc::new(Deadlines::default());
        Deadlines::start(&deadlines);
        let later = Instant::now() + Duration::from_secs(60);

        let (answered, function) = recorder();
        let reply = Reply::Callback(ReplyCallback::new(&deadlines, later, function));
        reply.send(AskOutcome::Reply(vec![1]));
        assert_eq!(
            *answered.lock().expect("lock"),
            vec![Some("Reply([1])".to_string())]
        );

        let (dropped, function) = recorder();
        drop(ReplyCallback::new(&deadlines, later, function));
        assert_eq!(*dropped.lock().expect("lock"), vec![None]);

        // Alive but never answered: the sweeper runs it with None at its deadline, not before.
        let deadline = Instant::now() + Duration::from_millis(200);
        let (ran, overdue) = tokio::sync::oneshot::channel();
        let stuck = ReplyCallback::new(&deadlines, deadline, move |outcome| {
            let _ = ran.send((Instant::now(), outcome.is_none()));
        });
        let (ran_at, with_none) = tokio::time::timeout(Duration::from_secs(10), overdue)
            .await
            .expect("run by the sweeper")
            .expect("ran");
        assert!(with_none, "an overdue callback runs with None");
        assert!(ran_at >= deadline, "not before its deadline");
        // The late answer finds nothing left to run.
        Reply::Callback(stuck).send(AskOutcome::Reply(vec![2]));
        assert!(
            deadlines.queue().is_empty(),
            "answered, dropped and overdue entries are gone"
        );
    }

    #[test]
    fn a_deadline_set_late_by_a_racing_caller_still_runs_first() {
        // No sweeper: `overdue` is called by hand.
        let deadlines = Deadlines::default();
        let now = Instant::now();
        let (later_seen, later) = recorder();
        let (earlier_seen, earlier) = recorder();
        let _later = ReplyCallback::new(&deadlines, now + Duration::from_millis(20), later);
        let _earlier = ReplyCallback::new(&deadlines, now + Duration::from_millis(10), earlier);
        let (due, next) = deadlines.overdue(now + Duration::from_millis(15));
        for function in due {
            function(None);
        }
        assert_eq!(*earlier_seen.lock().expect("lock"), vec![None]);
        assert!(later_seen.lock().expect("lock").is_empty());
        assert_eq!(next, Some(now + Duration::from_millis(20)));
    }
}
