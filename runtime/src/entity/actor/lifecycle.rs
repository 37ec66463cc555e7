//! The entity actor's upkeep: snapshots (and retention behind them), idleness and probe
//! checks that passivate it, and failing what is pending when it stops or reloads.

use std::time::Duration;

use ractor::ActorRef;

use super::{Batch, EntityMsg, EntityState};
use crate::codec;
use crate::entity::reply::respond;
use crate::entity::shards::ShardMsg;
use crate::entity::{AskOutcome, Entity};
use crate::journal::Snapshot;
use crate::metrics as names;

impl<E: Entity> EntityState<E> {
    pub(super) fn maybe_snapshot(&mut self, myself: &ActorRef<EntityMsg>) {
        let every = self.runtime.config().entities.snapshot_every_events;
        if self.snapshot_in_flight
            || self.events_since_snapshot < every
            || self.open.records.len() + self.inflight.iter().count() > 0
        {
            return;
        }
        self.snapshot_in_flight = true;
        self.events_since_snapshot = 0;
        let snapshot = Snapshot {
            seq: self.durable_head,
            state: codec::encode(&self.state),
            recent_replies: self.recent.to_vec(),
            schema: E::SCHEMA,
        };
        let journal = self.runtime.journal().clone();
        let id = self.id.clone();
        let myself = myself.clone();
        // Retention: segments the snapshot stands in for, beyond what the kind keeps.
        let keep = self
            .runtime
            .config()
            .journal
            .retain_events
            .get(E::KIND)
            .copied();
        let through = keep.map(|keep| snapshot.seq.min(self.durable_head.saturating_sub(keep)));
        tokio::spawn(async move {
            match journal.save_snapshot(&id, &snapshot).await {
                Ok(()) => {
                    metrics::counter!(names::SNAPSHOTS_TOTAL).increment(1);
                    if let Some(through) = through.filter(|through| *through > 0)
                        && let Err(error) = journal.delete_through(&id, through).await
                    {
                        tracing::debug!(entity = %id, %error, "retention could not delete old segments; next snapshot retries");
                    }
                }
                Err(error) => {
                    tracing::warn!(entity = %id, %error, "snapshot failed; replay will be longer")
                }
            }
            let _ = myself.cast(EntityMsg::SnapshotDone);
        });
    }

    /// Nothing was ever journaled: the entity holds no durable state, so keeping it active
    /// only costs memory.
    pub(super) fn journal_is_empty(&self) -> bool {
        self.durable_head == 0 && self.next_seq == 1
    }

    pub(super) fn idle_check(&mut self) {
        let idle_after = Duration::from_millis(self.runtime.config().entities.passivate_after_ms);
        if self.last_activity.elapsed() >= idle_after {
            self.passivate_when_quiet("idle");
        }
    }

    /// An entity whose journal is still empty passivates after the (short) probe timeout.
    pub(super) fn probe_check(&mut self, myself: &ActorRef<EntityMsg>) {
        if !self.journal_is_empty() || self.stopping {
            return;
        }
        let probe_after =
            Duration::from_millis(self.runtime.config().entities.probe_passivate_after_ms);
        let idle_for = self.last_activity.elapsed();
        if idle_for >= probe_after && self.is_quiet() {
            self.passivate_when_quiet("probe");
        } else {
            myself.send_after(
                probe_after
                    .saturating_sub(idle_for)
                    .max(Duration::from_millis(10)),
                || EntityMsg::ProbeCheck,
            );
        }
    }

    fn passivate_when_quiet(&mut self, reason: &'static str) {
        if !self.stopping && self.is_quiet() {
            self.passivation_requested = true;
            let _ = self.shards.cast(ShardMsg::Passivate {
                entity: self.id.clone(),
                reason,
            });
        }
    }

    pub(super) fn request_passivation(&mut self, _myself: &ActorRef<EntityMsg>) {
        let _ = self.shards.cast(ShardMsg::Passivate {
            entity: self.id.clone(),
            reason: "requested",
        });
    }

    pub(super) fn fail_all_pending(&mut self, outcome: impl Fn() -> AskOutcome) {
        let inflight = self
            .inflight
            .take()
            .into_iter()
            .flat_map(|batch| batch.entries);
        let open = std::mem::replace(&mut self.open, Batch::new(0)).entries;
        for entry in inflight.chain(open) {
            for port in entry.ports {
                port.send(outcome());
            }
        }
        for delivery in self.stash.drain(..) {
            respond(delivery.reply, outcome());
        }
    }
}
