//! ActorHub's application actors: chat rooms, user accounts, conversion jobs (entities) and
//! the per-connection user sessions. Built on `runtime`; knows nothing of HTTP.

pub mod config;
pub mod directory;
pub mod job;
pub mod mailer;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod session;
pub mod user;

use runtime::NodeBuilder;

/// What the application's entities need from the node (filled in by `node run`).
#[derive(Clone, Debug, Default)]
pub struct AppDeps {
    /// This node's id.
    pub node_id: String,
    /// `[users]`, `[jobs]` and `[sessions]` (the defaults in tests).
    pub config: std::sync::Arc<config::AppConfig>,
    /// How converter workers are started (the default starts none: conversions fail).
    pub converters: job::port::WorkerProgram,
}

/// Registers every application entity kind on a node. Every node registers the same kinds.
pub fn register(builder: NodeBuilder, deps: &AppDeps) -> NodeBuilder {
    job::convert::set_office_found(deps.converters.office.is_some());
    builder
        .register::<room::Room>(())
        .register::<directory::RoomDirectory>(())
        .register::<room::user_rooms::UserRooms>(())
        .register::<user::User>(user::Limits::from_config(&deps.config.users))
        .register::<user::index::UserIndex>(())
        .register::<job::Job>(job::JobDeps::new(
            std::sync::Arc::new(deps.config.jobs.clone()),
            deps.converters.clone(),
        ))
        .register::<job::index::JobIndex>(())
}
