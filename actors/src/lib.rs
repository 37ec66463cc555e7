//! ActorHub's application actors: chat rooms, user accounts, conversion jobs (entities) and
//! the per-connection user sessions. Built on `runtime`; knows nothing of HTTP.

use runtime::NodeBuilder;

/// What the application's entities need from the node (filled in by `node run`).
#[derive(Clone, Debug, Default)]
pub struct AppDeps {
    /// This node's id.
    pub node_id: String,
}

/// Registers every application entity kind on a node. Every node registers the same kinds.
pub fn register(builder: NodeBuilder, deps: &AppDeps) -> NodeBuilder {
    let _ = deps;
    builder
}
