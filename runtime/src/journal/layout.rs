//! Where the journal keeps what in the object store, and how each object is encoded.
//!
//! ```text
//! log/<log>/<n>                  a node log object: one flush of one node (every partition)
//! part/<p>/claim/<e>             partition p's owner for epoch e (create-only; never deleted)
//! part/<p>/seal/<e>              where epoch e of p ends in its owner's log (create-only; never deleted)
//! part/<p>/checkpoint/<c>        how far p's records are compacted into entity segments
//! fence/<log>/<k>                "stop acknowledging partition p epoch e" for the writer of <log>
//! journal/<kind>/<key>/e/<seq>   an entity's compacted segment (also the whole v1 journal)
//! journal/<kind>/<key>/s/<seq>   an entity's snapshot
//! ```
//! `<log>` names one incarnation of one node's log (`<node>.<incarnation>.<random>`), so two
//! processes never share a log. Numbers are zero-padded so that listing order is numeric.
//!
//! Every object starts with a one-byte journal format: 1 is the v1 layout (entity segments
//! and snapshots written before the node log existed), 2 is this one. Journaled types are
//! append-only: fields and enum variants are added at the end, never removed or reordered, and
//! each record carries its entity kind's schema version, so an old journal always decodes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, RuntimeError};
use crate::id::{EntityId, MsgId};

/// The journal format this build writes.
pub const FORMAT_V2: u8 = 2;
/// The format of journals written before the node log (per-entity segments only).
pub const FORMAT_V1: u8 = 1;

/// What one command left in the journal: its message id (for dedup), its events and its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub msg_id: Option<MsgId>,
    /// Encoded events, each one sequence number.
    pub events: Vec<Vec<u8>>,
    /// The encoded reply, so a retried ask gets the same answer.
    pub reply: Vec<u8>,
    /// The entity kind's schema version when this was written (`Entity::SCHEMA`).
    pub schema: u32,
}

/// A record as format 1 wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordV1 {
    pub msg_id: Option<MsgId>,
    pub events: Vec<Vec<u8>>,
    pub reply: Vec<u8>,
}

impl From<RecordV1> for Record {
    fn from(record: RecordV1) -> Self {
        Record {
            msg_id: record.msg_id,
            events: record.events,
            reply: record.reply,
            schema: 1,
        }
    }
}

/// The appends of one entity in one log object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub partition: u32,
    /// The epoch of the partition the writer held.
    pub epoch: u64,
    pub entity: EntityId,
    pub first_seq: u64,
    pub records: Vec<Record>,
}

impl Append {
    pub fn events(&self) -> u64 {
        self.records
            .iter()
            .map(|record| record.events.len() as u64)
            .sum()
    }
}

/// One node-log object: everything one flush made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogObject {
    pub log: String,
    pub number: u64,
    pub appends: Vec<Append>,
}

/// Partition `partition`'s owner for `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub partition: u32,
    pub epoch: u64,
    /// The owner's log: its records of this epoch are there.
    pub log: String,
    pub node: String,
    /// The owner's next log object when it claimed: its records of this epoch are at or after it.
    pub start: u64,
}

/// The end of epoch `epoch` of `partition`: its records are those in `log`'s objects numbered
/// at most `last` (none if `last` is `None`); records of that epoch in later objects never
/// counted (their writer was fenced before it could acknowledge them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub partition: u32,
    pub epoch: u64,
    pub log: String,
    pub last: Option<u64>,
}

/// Addressed to the writer of a log: each (partition, epoch) of `entries` has a new owner; do
/// not acknowledge their records from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub entries: Vec<(u32, u64)>,
    /// The log of the node that fenced.
    pub by: String,
}

/// How far a partition is compacted: every record of it from epochs before `epoch`, and of
/// `epoch` in `log`'s objects numbered at most `last`, is in its entity's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub partition: u32,
    pub epoch: u64,
    pub log: String,
    pub last: Option<u64>,
}

impl Checkpoint {
    /// Whether this checkpoint covers records of `epoch` in object `number` of `log`.
    pub fn covers(&self, epoch: u64, log: &str, number: u64) -> bool {
        epoch < self.epoch
            || (epoch == self.epoch
                && log == self.log
                && self.last.is_some_and(|last| number <= last))
    }
}

fn padded(number: u64) -> String {
    format!("{number:020}")
}

fn partition_dir(partition: u32) -> String {
    format!("part/{partition:05}")
}

pub fn log_prefix(log: &str) -> String {
    format!("log/{log}")
}

pub fn log_object(log: &str, number: u64) -> String {
    format!("log/{log}/{}", padded(number))
}

pub fn claims_prefix(partition: u32) -> String {
    format!("{}/claim", partition_dir(partition))
}

pub fn claim(partition: u32, epoch: u64) -> String {
    format!("{}/{}", claims_prefix(partition), padded(epoch))
}

pub fn seal(partition: u32, epoch: u64) -> String {
    format!("{}/seal/{}", partition_dir(partition), padded(epoch))
}

pub fn checkpoints_prefix(partition: u32) -> String {
    format!("{}/checkpoint", partition_dir(partition))
}

pub fn checkpoint(partition: u32, number: u64) -> String {
    format!("{}/{}", checkpoints_prefix(partition), padded(number))
}

pub fn fences_prefix(log: &str) -> String {
    format!("fence/{log}")
}

pub fn fence(log: &str, slot: u64) -> String {
    format!("fence/{log}/{}", padded(slot))
}

/// The number at the end of a listed name (`.../00000000000000000042` → 42).
pub fn number_of(name: &str) -> Option<u64> {
    name.rsplit('/').next()?.parse().ok()
}

/// The log names under `log/` (one per listed object's parent).
pub fn log_of_object(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("log/")?;
    rest.split('/').next()
}

/// Encodes a journal object in the current format.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode_versioned(FORMAT_V2, value)
}

/// Decodes a journal object written in the current format.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    match bytes.first() {
        Some(&FORMAT_V2) => codec::decode_versioned(bytes, FORMAT_V2, what),
        Some(other) => Err(RuntimeError::Codec {
            what,
            reason: format!("journal format {other}, expected {FORMAT_V2}"),
        }),
        None => Err(RuntimeError::Codec {
            what,
            reason: "empty object".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_numerically_and_parse_back() {
        let names: Vec<String> = [10, 9, 100]
            .iter()
            .map(|n| log_object("n1.1.ab", *n))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted
                .iter()
                .map(|name| number_of(name))
                .collect::<Vec<_>>(),
            vec![Some(9), Some(10), Some(100)]
        );
        assert_eq!(log_of_object(&names[0]), Some("n1.1.ab"));
        assert_eq!(claim(7, 3), "part/00007/claim/00000000000000000003");
    }

    #[test]
    fn checkpoints_cover_earlier_epochs_and_their_own_prefix() {
        let checkpoint = Checkpoint {
            partition: 1,
            epoch: 5,
            log: "a".into(),
            last: Some(10),
        };
        assert!(checkpoint.covers(4, "b", 999));
        assert!(checkpoint.covers(5, "a", 10));
        assert!(!checkpoint.covers(5, "a", 11));
        assert!(!checkpoint.covers(5, "b", 1));
        assert!(!checkpoint.covers(6, "a", 1));
    }

    #[test]
    fn objects_round_trip_and_other_formats_are_refused() {
        let seal = Seal {
            partition: 2,
            epoch: 9,
            log: "n1.2.ff".into(),
            last: Some(41),
        };
        let bytes = encode(&seal);
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(decode::<Seal>(&bytes, "seal").expect("decodes"), seal);
        let mut other = bytes.clone();
        other[0] = 7;
        assert!(decode::<Seal>(&other, "seal").is_err());
        assert!(decode::<Seal>(&[], "seal").is_err());
    }
}
