//! The invariant checkers: pure functions from what the cluster stores (room histories, job
//! states) and what the clients saw (acks, deliveries) to a verdict per invariant, each with a
//! count and its first counter-example (room, seq, sender, client id).
//!
//! The invariants are `shared/DESIGN.md`'s "Reliability invariants" plus the session's
//! delivery invariant from `ARCHITECTURE.md`:
//! - `no_acked_message_lost`: every acknowledged post is in its room's history;
//! - `no_duplicates`: no `(user, id)` and no seq appears twice in a history;
//! - `per_sender_order`: a sender's messages are stored in the order it sent them;
//! - `one_linear_history`: seqs are `1..=head` with no hole, and no seq was acknowledged or
//!   delivered for two different messages (nor for another message than the one stored);
//! - `delivery_exactly_once`: each client got a room's messages in seq order, none twice, no
//!   hole (except a range the server announced with `history_gap`);
//! - `jobs_finish` and `jobs_one_output`: every accepted job ends done or failed, a done job
//!   has exactly one output.
//!
//! Cluster-level results (all up after the last heal, failover within bounds) are built with
//! [`InvariantResult::from_findings`] by the run itself.
//!
//! The result types and the job invariants are here; the chat invariants are in `chat`.

mod chat;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::records::{JobRecord, StoredMessage};

pub use self::chat::{
    check_chat, delivery_exactly_once, no_acked_message_lost, no_duplicates, one_linear_history,
    per_sender_order,
};

/// The first violation found, with the coordinates a person needs to look it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CounterExample {
    pub room: Option<String>,
    pub seq: Option<u64>,
    pub sender: Option<String>,
    pub client_id: Option<String>,
    pub detail: String,
}

impl CounterExample {
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::default()
        }
    }

    fn at(
        room: &str,
        seq: Option<u64>,
        sender: Option<&str>,
        client_id: Option<&str>,
        detail: String,
    ) -> Self {
        Self {
            room: Some(room.to_string()),
            seq,
            sender: sender.map(str::to_string),
            client_id: client_id.map(str::to_string),
            detail,
        }
    }
}

impl fmt::Display for CounterExample {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(room) = &self.room {
            parts.push(format!("room {room}"));
        }
        if let Some(seq) = self.seq {
            parts.push(format!("seq {seq}"));
        }
        if let Some(sender) = &self.sender {
            parts.push(format!("sender {sender}"));
        }
        if let Some(client_id) = &self.client_id {
            parts.push(format!("client id {client_id}"));
        }
        if parts.is_empty() {
            write!(formatter, "{}", self.detail)
        } else {
            write!(formatter, "{}: {}", parts.join(", "), self.detail)
        }
    }
}

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantResult {
    pub name: String,
    /// Skipped invariants (e.g. jobs when the cluster has no jobs API) pass vacuously and say so.
    pub skipped: bool,
    pub passed: bool,
    /// How many things were checked (acks, messages, jobs, faults...).
    pub checked: u64,
    pub violations: u64,
    pub first_counterexample: Option<CounterExample>,
    pub note: Option<String>,
}

impl InvariantResult {
    /// A result from the violations found among `checked` items (the first is the example).
    pub fn from_findings(name: &str, checked: u64, findings: Vec<CounterExample>) -> Self {
        Self {
            name: name.to_string(),
            skipped: false,
            passed: findings.is_empty(),
            checked,
            violations: findings.len() as u64,
            first_counterexample: findings.into_iter().next(),
            note: None,
        }
    }

    pub fn skipped(name: &str, why: &str) -> Self {
        Self {
            name: name.to_string(),
            skipped: true,
            passed: true,
            checked: 0,
            violations: 0,
            first_counterexample: None,
            note: Some(why.to_string()),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Room histories by room id, each sorted by seq as read.
pub type Histories = BTreeMap<String, Vec<StoredMessage>>;

/// Every accepted job ends done or failed; a done job has exactly one output object.
pub fn check_jobs(jobs: &[JobRecord]) -> Vec<InvariantResult> {
    let mut unfinished = Vec::new();
    let mut outputs = Vec::new();
    let mut unverified = 0;
    for job in jobs {
        match job.final_state.as_deref() {
            Some("done") => {
                match job.outputs {
                    Some(1) => {}
                    Some(count) => outputs.push(CounterExample {
                        client_id: Some(job.job.clone()),
                        sender: Some(job.user.clone()),
                        ..CounterExample::new(format!(
                            "job {} is done with {count} output objects",
                            job.job
                        ))
                    }),
                    None => unverified += 1,
                }
                if job.downloaded == Some(false) {
                    outputs.push(CounterExample {
                        client_id: Some(job.job.clone()),
                        sender: Some(job.user.clone()),
                        ..CounterExample::new(format!(
                            "job {} is done but downloading it failed: {}",
                            job.job,
                            job.download_errors.join("; ")
                        ))
                    });
                }
            }
            Some("failed") => {}
            state => unfinished.push(CounterExample {
                client_id: Some(job.job.clone()),
                sender: Some(job.user.clone()),
                ..CounterExample::new(format!(
                    "job {} accepted at {} ms ended {state:?}, not done or failed",
                    job.job, job.accepted_ms
                ))
            }),
        }
    }
    let done = jobs
        .iter()
        .filter(|job| job.final_state.as_deref() == Some("done"))
        .count() as u64;
    let mut one_output = InvariantResult::from_findings("jobs_one_output", done, outputs);
    if unverified > 0 {
        one_output = one_output.with_note(format!(
            "{unverified} done jobs' outputs could not be counted in the object store"
        ));
    }
    vec![
        InvariantResult::from_findings("jobs_finish", jobs.len() as u64, unfinished),
        one_output,
    ]
}
