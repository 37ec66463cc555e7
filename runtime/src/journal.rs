//! Durable state: the per-entity journal on the shared object store (`segments`), how writes
//! to that store become durable (`storage`), and the node-local store (`local_store`).

pub mod local_store;
pub mod segments;
pub mod storage;

pub use segments::*;
