//! Poison quarantine: "at most N attempts of this risky step", as a value an entity keeps in
//! its durable state.
//!
//! Some work can kill whatever runs it: a native library that aborts on one input, a worker
//! process that dies, a node that is killed while it converts. Retrying such work is right once
//! or twice (the node may have died for another reason); retrying it forever turns one bad
//! input into a crash loop that follows the entity from node to node. [`Attempts`] bounds it:
//!
//! 1. Before the work starts, the entity's `handle` asks [`Attempts::admit`] whether another
//!    attempt may start and, if so, persists an event that its `apply` turns into
//!    [`Attempts::started`] (the attempt's id, node and start time). The attempt is journaled
//!    before any of its work runs, so a crash during the work cannot go unrecorded.
//! 2. When the attempt ends without a result (the worker died, the process running it was
//!    killed), the entity persists an event that `apply` turns into
//!    [`Attempts::ended_without_result`] with a reason. An attempt that never reports at all
//!    (its node died) counts the same: every started attempt counts.
//! 3. When the attempt ends with a result, the entity records its own final state; the step is
//!    over and no attempt is started again.
//! 4. Once `max` attempts have started, [`Attempts::admit`] refuses for good with
//!    [`Quarantined`]; the entity records a final failure instead of a new attempt.
//!
//! `handle` stays deterministic: the node id and the time are passed in by the caller.

use serde::{Deserialize, Serialize};

/// Attempts of one risky step of an entity. Embed it in the entity's state; change it only in
/// `apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Attempts started, ever (each journaled before its work began).
    started: u32,
    /// The latest attempt: running, or ended.
    latest: Option<Attempt>,
    /// Why the latest attempt that ended without a result ended.
    last_failure: Option<String>,
}

/// One attempt, as journaled when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Names the attempt, so its reports can be told from a stale attempt's.
    pub id: String,
    /// The node it runs on.
    pub node: String,
    pub started_ms: u64,
    /// It ended without a result (a result ends the step itself).
    pub ended: bool,
}

/// The step may not be attempted again: `attempts` attempts started and none gave a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attempts} attempts ended without a result")]
pub struct Quarantined {
    pub attempts: u32,
    /// The reason the last attempt that reported one gave (`None` when every attempt's node
    /// died before it could say).
    pub last_failure: Option<String>,
}

impl Attempts {
    /// Attempts started so far.
    pub fn count(&self) -> u32 {
        self.started
    }

    /// The latest attempt, running or ended.
    pub fn latest(&self) -> Option<&Attempt> {
        self.latest.as_ref()
    }

    /// Whether `id` is the attempt that runs now (started and not ended).
    pub fn is_running(&self, id: &str) -> bool {
        self.latest
            .as_ref()
            .is_some_and(|attempt| attempt.id == id && !attempt.ended)
    }

    /// The reason given by the last attempt that ended without a result.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// In `handle`: may another attempt start when at most `max` are allowed?
    pub fn admit(&self, max: u32) -> Result<(), Quarantined> {
        if self.started < max {
            Ok(())
        } else {
            Err(Quarantined {
                attempts: self.started,
                last_failure: self.last_failure.clone(),
            })
        }
    }

    /// In `apply`: an attempt started (journaled before its work).
    pub fn started(&mut self, id: impl Into<String>, node: impl Into<String>, started_ms: u64) {
        self.started = self.started.saturating_add(1);
        self.latest = Some(Attempt {
            id: id.into(),
            node: node.into(),
            started_ms,
            ended: false,
        });
    }

    /// In `apply`: the attempt `id` ended without a result. Ignored for any attempt but the
    /// running one (a stale report changes nothing).
    pub fn ended_without_result(&mut self, id: &str, reason: impl Into<String>) {
        if let Some(attempt) = self.latest.as_mut().filter(|attempt| attempt.id == id) {
            attempt.ended = true;
            self.last_failure = Some(reason.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_started_attempt_counts_until_the_step_is_refused_for_good() {
        let mut attempts = Attempts::default();
        assert_eq!(attempts.admit(3), Ok(()));
        attempts.started("a1", "n1", 10);
        assert!(attempts.is_running("a1"));
        attempts.ended_without_result("a1", "the worker crashed (signal 6)");
        assert!(!attempts.is_running("a1"));
        assert_eq!(attempts.admit(3), Ok(()));
        // The second attempt's node dies: it never reports, and it counts all the same.
        attempts.started("a2", "n2", 20);
        assert_eq!(attempts.admit(3), Ok(()));
        attempts.started("a3", "n3", 30);
        assert_eq!(attempts.latest().map(|a| a.node.as_str()), Some("n3"));
        assert_eq!(
            attempts.admit(3),
            Err(Quarantined {
                attempts: 3,
                last_failure: Some("the worker crashed (signal 6)".into())
            })
        );
        assert_eq!(attempts.count(), 3);
        // A larger bound later admits again; a smaller one refuses at once.
        assert_eq!(attempts.admit(4), Ok(()));
        assert!(attempts.admit(1).is_err());
    }

    #[test]
    fn a_stale_report_changes_nothing() {
        let mut attempts = Attempts::default();
        attempts.started("a1", "n1", 10);
        attempts.started("a2", "n2", 20);
        attempts.ended_without_result("a1", "late news");
        assert!(attempts.is_running("a2"));
        assert_eq!(attempts.last_failure(), None);
    }

    #[test]
    fn it_survives_the_journal_codec() {
        let mut attempts = Attempts::default();
        attempts.started("a1", "n1", 10);
        attempts.ended_without_result("a1", "boom");
        let bytes =
            bincode::serde::encode_to_vec(&attempts, bincode::config::standard()).expect("encode");
        let (decoded, _): (Attempts, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(decoded, attempts);
    }
}
