//! The runtime's error type: one enum, mapped to API codes by `web`.

use thiserror::Error;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The configuration is invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Bytes from a peer, a client or the journal could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Codec { what: &'static str, reason: String },
    /// The journal store failed (disk, permissions, network to S3).
    #[error("journal store failed: {0}")]
    Store(String),
    /// Another writer already wrote this sequence number of the entity's journal.
    #[error("journal conflict on {entity} at seq {seq}: another owner appended first")]
    JournalConflict { entity: String, seq: u64 },
    /// The node-local store (sled) failed.
    #[error("node-local store failed: {0}")]
    LocalStore(String),
    /// An ask did not get an answer before its deadline.
    #[error("no answer from {entity} within {timeout_ms} ms (last attempt: {last_error})")]
    Timeout {
        entity: String,
        timeout_ms: u64,
        last_error: String,
    },
    /// The entity refused the command (unknown kind, bad payload, overload).
    #[error("{entity} rejected the message: {reason}")]
    Rejected { entity: String, reason: String },
    /// The entity answered a request with the reply of another command: a bug in the entity's
    /// `handle`, or a peer of an incompatible build.
    #[error("{entity} answered {request} with the reply of another command")]
    UnexpectedReply {
        entity: String,
        request: &'static str,
    },
    /// The runtime is shutting down or an actor it needs is gone.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// Starting an actor failed.
    #[error("cannot start {what}: {reason}")]
    Spawn { what: String, reason: String },
}
