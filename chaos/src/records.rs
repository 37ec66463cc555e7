//! What the harness observed: the clients' own logs (what was acknowledged to whom, what was
//! delivered to whom), the cluster's ground truth read back at the end (room histories, job
//! states), and the faults as they happened. The checker compares them; nothing here is what
//! the workload *assumed*.
//!
//! Times are milliseconds since the workload started (`*_ms`), from one monotonic clock.

use std::collections::BTreeMap;

use serde::Serialize;

/// One message as the room's history (`GET /api/rooms/{id}/messages`) has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub seq: u64,
    pub user: String,
    pub id: String,
}

/// An acknowledgement a client received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckRecord {
    pub seq: u64,
    pub at_ms: u64,
    /// The node the client was connected to.
    pub node: String,
}

/// One post of one client: its id is the client's counter `index`, retried with the same id
/// until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostRecord {
    pub index: u64,
    pub first_sent_ms: u64,
    /// The latest (re)send.
    pub last_sent_ms: u64,
    pub attempts: u32,
    pub ack: Option<AckRecord>,
}

impl PostRecord {
    /// The id the post carries on the wire.
    pub fn id(&self) -> String {
        self.index.to_string()
    }
}

/// A `message` frame a client received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub seq: u64,
    pub user: String,
    pub id: String,
    pub at_ms: u64,
}

/// One WebSocket connection of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRecord {
    pub node: String,
    pub connected_ms: u64,
    pub ended_ms: Option<u64>,
    pub end_reason: Option<String>,
}

/// Everything one chat client saw. A client is one user posting in one room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientLog {
    /// The user id (token subject); also the client's id in reports.
    pub user: String,
    pub room: String,
    /// The node it connects to first and returns to.
    pub home: String,
    pub posts: Vec<PostRecord>,
    pub deliveries: Vec<Delivery>,
    /// The head of the room at the client's first join: deliveries start after it.
    pub first_head: Option<u64>,
    /// `history_gap` errors: the server said messages `from..=to` will not be replayed.
    pub gap_notices: Vec<(u64, u64)>,
    pub connections: Vec<ConnectionRecord>,
    /// Error frames by code.
    pub errors: BTreeMap<String, u64>,
}

/// One conversion job the workload submitted and the cluster accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    pub job: String,
    pub user: String,
    pub accepted_ms: u64,
    /// The last state read from `GET /api/jobs/{id}` (`None`: never read).
    pub final_state: Option<String>,
    pub error: Option<String>,
    /// Output objects found in the object store for this job (`jobs/<id>/output*`).
    pub outputs: Option<usize>,
    /// Whether `GET /api/jobs/{id}/download` returned a non-empty body.
    pub downloaded: Option<bool>,
    /// Failed download attempts (node: error), even when a later one worked.
    pub download_errors: Vec<String>,
    pub done_ms: Option<u64>,
}

/// A fault as it happened, with the failover measurements taken during it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRecord {
    pub index: usize,
    pub lane: usize,
    pub kind: crate::scenario::FaultKind,
    pub shape: Option<crate::schedule::PartitionShape>,
    pub targets: Vec<String>,
    /// Nodes on the healthy side: they must see the targets down and serve their rooms.
    pub survivors: Vec<String>,
    /// Rooms whose owner (by placement over all nodes up) was a target when it began.
    pub victim_rooms: Vec<String>,
    pub started_ms: u64,
    /// Heal, SIGCONT or restart issued.
    pub healed_ms: Option<u64>,
    /// Every live node saw every node up again.
    pub recovered_ms: Option<u64>,
    /// Until every survivor's `/api/cluster` showed every target down.
    pub detection_ms: Option<u64>,
    /// Until a survivor answered a history read of every victim room (entities re-hosted).
    pub rehosted_ms: Option<u64>,
    /// Until the first ack, to a client on a survivor, of a post to a victim room sent after
    /// the fault began. Filled in after the run from the client logs.
    pub first_served_ms: Option<u64>,
    /// Stale owners' appends rejected (journal conflicts) seen from the start of the fault to
    /// one scrape after its recovery.
    pub journal_conflicts: u64,
    /// Notes: a delayed start, a failed heal, a node that did not come back.
    pub notes: Vec<String>,
}
