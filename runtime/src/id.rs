//! Identities: entities are `(kind, key)`, messages carry a cluster-unique id for dedup.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// An entity's identity, e.g. `("room", "lobby")`. The same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityId {
    pub kind: String,
    pub key: String,
}

impl EntityId {
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.kind, self.key)
    }
}

/// A message id, unique across the cluster and across restarts: a retried ask keeps it, so the
/// entity answers the retry from its journal instead of applying the command twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MsgId(pub u128);

impl fmt::Display for MsgId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:032x}", self.0)
    }
}

/// Makes [`MsgId`]s: 32 bits of node identity, 32 of incarnation, 64 of counter. The
/// incarnation comes from the node's sled, so a restarted node never reuses an id.
#[derive(Debug)]
pub struct MsgIdGenerator {
    prefix: u128,
    counter: AtomicU64,
}

impl MsgIdGenerator {
    pub fn new(node_id: &str, incarnation: u64) -> Self {
        let node_hash = crate::cluster::placement::weight(node_id, "msg-id", "") as u32;
        let prefix = (u128::from(node_hash) << 96) | (u128::from(incarnation as u32) << 64);
        Self {
            prefix,
            counter: AtomicU64::new(fastrand::u64(..1 << 32)),
        }
    }

    pub fn next(&self) -> MsgId {
        MsgId(self.prefix | u128::from(self.counter.fetch_add(1, Ordering::Relaxed)))
    }
}
