//! The per-user job list (entity `job_index`, keyed by user id): which jobs a user has, newest
//! first, and how many are unfinished, which is what `jobs.per_user_max` bounds cluster-wide.
//!
//! A slot is reserved before the upload starts (so a user at the limit uploads nothing),
//! confirmed once the job is submitted, and freed when the job finishes or is deleted. A
//! reservation whose upload never ended (its node died mid-upload) stops counting after
//! [`RESERVATION_TTL_MS`], so a crash cannot eat a user's slots for ever.

use std::collections::VecDeque;

use runtime::{Context, Entity, Request};
use serde::{Deserialize, Serialize};

/// Jobs remembered per user; the oldest finished ones are forgotten first.
pub const JOBS_PER_USER_MAX: usize = 1_000;
/// An unconfirmed reservation counts for this long (an upload of `input_bytes_max` at a slow
/// client's pace fits in it).
pub const RESERVATION_TTL_MS: u64 = 15 * 60 * 1000;
/// Most jobs the API lists at once (a `List` itself may ask for all of them, up to
/// [`JOBS_PER_USER_MAX`]: the storage quota sums them).
pub const LIST_MAX: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// The upload is in progress.
    Reserved {
        at_ms: u64,
    },
    /// Submitted and not finished.
    Active,
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub job: String,
    pub created_ms: u64,
    pub slot: Slot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexCommand {
    /// Takes a slot for `job` if the user has fewer than `limit` unfinished jobs.
    Reserve {
        job: String,
        now_ms: u64,
        limit: usize,
    },
    Confirm {
        job: String,
    },
    Finished {
        job: String,
    },
    Remove {
        job: String,
    },
    /// The newest `limit` jobs.
    List {
        limit: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexEvent {
    Reserved { job: String, at_ms: u64 },
    Confirmed { job: String },
    Finished { job: String },
    Removed { job: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexReply {
    Ok,
    TooMany { limit: usize },
    Jobs(Vec<IndexEntry>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IndexState {
    /// Oldest first.
    pub jobs: VecDeque<IndexEntry>,
}

impl IndexState {
    fn entry_mut(&mut self, job: &str) -> Option<&mut IndexEntry> {
        self.jobs.iter_mut().find(|entry| entry.job == job)
    }

    fn contains(&self, job: &str) -> bool {
        self.jobs.iter().any(|entry| entry.job == job)
    }

    fn unfinished(&self, now_ms: u64) -> usize {
        self.jobs
            .iter()
            .filter(|entry| match entry.slot {
                Slot::Reserved { at_ms } => now_ms.saturating_sub(at_ms) < RESERVATION_TTL_MS,
                Slot::Active => true,
                Slot::Finished => false,
            })
            .count()
    }

    /// Forgets the oldest finished jobs beyond [`JOBS_PER_USER_MAX`].
    fn trim(&mut self) {
        while self.jobs.len() > JOBS_PER_USER_MAX {
            match self
                .jobs
                .iter()
                .position(|entry| entry.slot == Slot::Finished)
            {
                Some(index) => {
                    self.jobs.remove(index);
                }
                None => break,
            }
        }
    }
}

pub struct JobIndex;

impl Entity for JobIndex {
    const KIND: &'static str = "job_index";
    type Command = IndexCommand;
    type Reply = IndexReply;
    type Event = IndexEvent;
    type State = IndexState;
    type Deps = ();

    fn activate(_key: &str, _deps: &()) -> Self {
        Self
    }

    fn apply(state: &mut IndexState, _seq: u64, event: &IndexEvent) {
        match event {
            IndexEvent::Reserved { job, at_ms } => {
                state.jobs.push_back(IndexEntry {
                    job: job.clone(),
                    created_ms: *at_ms,
                    slot: Slot::Reserved { at_ms: *at_ms },
                });
                state.trim();
            }
            IndexEvent::Confirmed { job } => {
                if let Some(entry) = state.entry_mut(job)
                    && entry.slot != Slot::Finished
                {
                    entry.slot = Slot::Active;
                }
            }
            IndexEvent::Finished { job } => {
                if let Some(entry) = state.entry_mut(job) {
                    entry.slot = Slot::Finished;
                }
            }
            IndexEvent::Removed { job } => state.jobs.retain(|entry| &entry.job != job),
        }
    }

    fn handle(
        &mut self,
        state: &IndexState,
        command: IndexCommand,
        context: &mut Context<'_, Self>,
    ) -> IndexReply {
        match command {
            IndexCommand::Reserve { job, now_ms, limit } => {
                if state.contains(&job) {
                    return IndexReply::Ok;
                }
                if state.unfinished(now_ms) >= limit {
                    return IndexReply::TooMany { limit };
                }
                context.persist(IndexEvent::Reserved { job, at_ms: now_ms });
                IndexReply::Ok
            }
            IndexCommand::Confirm { job } => {
                if state
                    .jobs
                    .iter()
                    .any(|entry| entry.job == job && matches!(entry.slot, Slot::Reserved { .. }))
                {
                    context.persist(IndexEvent::Confirmed { job });
                }
                IndexReply::Ok
            }
            IndexCommand::Finished { job } => {
                if state
                    .jobs
                    .iter()
                    .any(|entry| entry.job == job && entry.slot != Slot::Finished)
                {
                    context.persist(IndexEvent::Finished { job });
                }
                IndexReply::Ok
            }
            IndexCommand::Remove { job } => {
                if state.contains(&job) {
                    context.persist(IndexEvent::Removed { job });
                }
                IndexReply::Ok
            }
            IndexCommand::List { limit } => {
                let jobs = state
                    .jobs
                    .iter()
                    .rev()
                    .take(limit.clamp(1, JOBS_PER_USER_MAX))
                    .cloned()
                    .collect();
                IndexReply::Jobs(jobs)
            }
        }
    }
}

/// Takes a slot for `job` if the user has fewer than `limit` unfinished jobs.
#[derive(Debug, Clone)]
pub struct Reserve {
    pub job: String,
    pub now_ms: u64,
    pub limit: usize,
}

/// Whether a reservation got a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Granted,
    /// The user has `limit` unfinished jobs already.
    TooMany {
        limit: usize,
    },
}

/// The job was submitted: its slot counts until it finishes.
#[derive(Debug, Clone)]
pub struct Confirm {
    pub job: String,
}

/// The job finished: its slot is free.
#[derive(Debug, Clone)]
pub struct Finished {
    pub job: String,
}

/// Forgets the job (deleted, or never submitted).
#[derive(Debug, Clone)]
pub struct Remove {
    pub job: String,
}

/// The newest `limit` jobs, newest first.
#[derive(Debug, Clone, Copy)]
pub struct List {
    pub limit: usize,
}

impl Request<JobIndex> for Reserve {
    type Reply = Reservation;

    fn into_command(self) -> IndexCommand {
        IndexCommand::Reserve {
            job: self.job,
            now_ms: self.now_ms,
            limit: self.limit,
        }
    }

    fn from_reply(reply: IndexReply) -> Option<Reservation> {
        match reply {
            IndexReply::Ok => Some(Reservation::Granted),
            IndexReply::TooMany { limit } => Some(Reservation::TooMany { limit }),
            IndexReply::Jobs(_) => None,
        }
    }
}

/// The requests answered `Ok` and nothing else.
macro_rules! acknowledged {
    ($($request:ident => $variant:ident),* $(,)?) => {$(
        impl Request<JobIndex> for $request {
            type Reply = ();

            fn into_command(self) -> IndexCommand {
                IndexCommand::$variant { job: self.job }
            }

            fn from_reply(reply: IndexReply) -> Option<()> {
                matches!(reply, IndexReply::Ok).then_some(())
            }
        }
    )*};
}

acknowledged!(Confirm => Confirm, Finished => Finished, Remove => Remove);

impl Request<JobIndex> for List {
    type Reply = Vec<IndexEntry>;

    fn into_command(self) -> IndexCommand {
        IndexCommand::List { limit: self.limit }
    }

    fn from_reply(reply: IndexReply) -> Option<Vec<IndexEntry>> {
        match reply {
            IndexReply::Jobs(entries) => Some(entries),
            IndexReply::Ok | IndexReply::TooMany { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &str, slot: Slot) -> IndexEntry {
        IndexEntry {
            job: job.into(),
            created_ms: 0,
            slot,
        }
    }

    #[test]
    fn stale_reservations_and_finished_jobs_do_not_count() {
        let mut state = IndexState::default();
        state.jobs.push_back(entry("a", Slot::Active));
        state
            .jobs
            .push_back(entry("b", Slot::Reserved { at_ms: 1_000 }));
        state.jobs.push_back(entry("c", Slot::Finished));
        assert_eq!(state.unfinished(2_000), 2);
        assert_eq!(state.unfinished(1_000 + RESERVATION_TTL_MS), 1);
    }

    #[test]
    fn only_finished_jobs_are_forgotten() {
        let mut state = IndexState::default();
        for index in 0..JOBS_PER_USER_MAX {
            state
                .jobs
                .push_back(entry(&index.to_string(), Slot::Finished));
        }
        IndexState::trim(&mut state);
        JobIndex::apply(
            &mut state,
            1,
            &IndexEvent::Reserved {
                job: "new".into(),
                at_ms: 5,
            },
        );
        assert_eq!(state.jobs.len(), JOBS_PER_USER_MAX);
        assert_eq!(
            state.jobs.front().map(|entry| entry.job.as_str()),
            Some("1")
        );
        assert!(state.contains("new"));
    }
}
