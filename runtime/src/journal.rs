//! Durable state. Entities of a node append to its node log (`node_log`), one object per flush
//! for all of them; partitions fence each other with create-only claims, fences and seals
//! (`partitions`); compaction moves acknowledged records into per-entity segments and
//! snapshots (`compaction`, `segments`) and deletes the log objects nothing needs any more.
//! `layout` names every object and encodes it, `objects` is the store interface the protocol
//! runs on (the real store, or the seeded simulation's), `storage` opens the store and makes
//! local writes durable, `local_store` is the node's own sled.

mod compaction;
pub mod layout;
pub mod local_store;
pub mod node_log;
pub mod objects;
mod partitions;
pub mod segments;
#[cfg(test)]
mod sim;
pub mod storage;

pub use layout::Record;
pub use node_log::{AppendError, JournalSettings, NodeJournal, PartitionEvent, PartitionStatus};
pub use segments::{Journal, Loaded, Snapshot};
