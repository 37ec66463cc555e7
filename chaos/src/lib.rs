//! ActorHub's fault-injection harness and invariant checkers; also the shared real-process
//! cluster test builder.
//!
//! Nothing in the production crates depends on this crate: it is a dev-dependency of the
//! crates whose integration tests need a real cluster, and the `chaos` binary.
//!
//! - [`cluster`]: [`cluster::ClusterBuilder`] starts real `node run` processes (on loopback, or
//!   at given addresses behind a launch prefix) and [`cluster::TestCluster`] observes them and
//!   injects process faults (kill, pause, terminate).
//! - [`corpus`]: the hostile inputs for converters (bombs, huge ranges, deep nesting,
//!   truncated and garbage files), shared by the converter tests and the hostile clients.
//! - [`s3`]: a local S3-compatible server (moto) for tests and runs on S3.
//! - [`client`]: a real WebSocket chat client speaking the protocol, for tests and workloads.
//! - The harness: [`scenario`] (what to run), [`schedule`] (the seeded faults), [`netns`]
//!   (namespaces, bridge, nft partitions), [`workload`] and [`jobs`] (the honest clients),
//!   [`hostile`] (the hostile clients and their phases), [`faults`] (injection and failover
//!   measurements), [`process_watch`] (the nodes' memory and exits), [`scrape`] (counters from
//!   `/metrics`), [`records`] (what was observed), [`rooms`] (the rooms and their histories),
//!   [`checker`] and [`verdict`] (the invariants), [`latency`] (post → ack by phase),
//!   [`progress`] (the live line), [`report`] and [`timeline`] (the outputs), [`run`] (one run
//!   end to end).

pub mod checker;
pub mod client;
pub mod cluster;
pub mod corpus;
pub mod faults;
pub mod hostile;
pub mod jobs;
pub mod latency;
pub mod netns;
pub mod process_watch;
pub mod progress;
pub mod records;
pub mod report;
pub mod rooms;
pub mod run;
pub mod s3;
pub mod scenario;
pub mod schedule;
pub mod scrape;
pub mod timeline;
pub mod verdict;
pub mod workload;
