//! ActorHub's web layer: the HTTP API, health and readiness probes, `/metrics`, and the
//! token filter every authenticated route shares. Only this crate depends on warp and only
//! this crate chooses HTTP status codes.

pub mod auth;
mod cors;
pub mod error;
mod jobs;
mod page;
mod rooms;
mod routes;
pub mod users;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use runtime::Runtime;

pub use routes::routes;

/// What every route may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub metrics: PrometheusHandle,
    pub tokens: Arc<auth::TokenKeys>,
    /// Open WebSocket connections of this node.
    pub connections: Arc<ws::Connections>,
    /// Account flows (sign-up, login, profile); see `users`.
    pub accounts: actors::user::service::Accounts,
}

/// Serves the routes on `address` until `shutdown` resolves, then lets in-flight requests end.
/// Fails at once (instead of panicking inside warp) when the address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot listen for HTTP on {address}: {error} (is the port in use?)"),
            )
        })?;
    let server = warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown);
    Ok(tokio::spawn(server.run()))
}
