//! ActorHub's fault-injection harness and invariant checkers; also the shared real-process cluster test builder.
//!
//! Nothing in the production crates depends on this crate: it is a dev-dependency of the
//! crates whose integration tests need a real cluster, and (later) the `chaos` binary.
//!
//! - [`cluster`]: [`cluster::ClusterBuilder`] starts real `node run` processes on loopback and
//!   [`cluster::TestCluster`] observes them and injects process faults (kill, pause, terminate).

pub mod cluster;
