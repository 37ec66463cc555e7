//! ActorHub's benchmark support: in-process nodes, latency summaries, and the measurement
//! modes of the `runtime_numbers` binary (journal appends, cross-node messaging, failover).
//!
//! The criterion benchmarks (`benches/entity.rs`) give means and medians of the local paths;
//! `runtime_numbers` gives what criterion does not: percentiles, and numbers that need real
//! `node run` processes. Both print machine-readable results; `RESULTS.md` records a run.

pub mod cross_node;
pub mod failover;
pub mod journal_append;
pub mod latency;
pub mod local_node;
pub mod process_cluster;
pub mod register;
