//! ActorHub's web layer: the HTTP API, health and readiness probes, `/metrics`, and the
//! token filter every authenticated route shares. Only this crate depends on warp and only
//! this crate chooses HTTP status codes.

pub mod admin;
pub mod auth;
pub mod config;
mod cors;
pub mod error;
mod inbound;
mod input;
mod jobs;
pub mod limits;
pub mod openapi;
pub mod outbound;
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
    /// Room flows (create and list, history); see `rooms`.
    pub rooms: actors::room::Rooms,
    /// Who is in each room (the node's presence), for the WebSocket sessions.
    pub presence: runtime::presence::Presence,
    /// Conversion job flows (submit, status, list, output, delete); see `jobs`.
    pub jobs: actors::job::service::Jobs,
    /// `[users]`, `[jobs]` and `[sessions]`: the limits checked at this edge.
    pub app: Arc<actors::config::AppConfig>,
    /// `[web]`: token lifetime, shutdown grace.
    pub web: Arc<config::WebSection>,
    /// Rate limits and the login lockout (`[web.limits]`); see `limits`.
    pub limits: Arc<limits::Limits>,
    /// Notified by `POST /api/admin/drain`: the node leaves the cluster as on SIGTERM.
    pub drain: Arc<tokio::sync::Notify>,
}

/// Serves the routes on `address` until `shutdown` resolves, then lets in-flight requests end.
/// Fails at once (instead of panicking inside warp) when the address cannot be bound.
///
/// HTTP/1.1 connections are served by hyper directly (warp's filters as the service) so that
/// an upgraded WebSocket connection hands its `TcpStream` to the gateway (see `ws.rs`).
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
    let service = warp::service(routes(state));
    Ok(tokio::spawn(accept_loop(listener, service, shutdown)))
}

/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest request line and headers: hyper answers 431 beyond it and closes the connection
/// (its default, ~400 KiB, would let each slow connection hold that much).
pub const REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

async fn accept_loop<S>(
    listener: tokio::net::TcpListener,
    service: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<
            warp::http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // Connections watch `stopping`; each holds a clone of `alive`, so `ended` yields `None`
    // once the last one has finished. (hyper-util's `GracefulShutdown` does this for the
    // connections it knows, but not for an upgradeable HTTP/1 connection, which the WebSocket
    // gateway needs; its `auto` connection would do, at the price of sniffing for HTTP/2 with
    // no deadline before the header timeout starts, and of serving h2c.)
    let (stopping, _) = tokio::sync::watch::channel(false);
    let (alive, mut ended) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = service.clone();
        let handler = hyper::service::service_fn(move |mut request: warp::http::Request<_>| {
            // The rate limits key on the client address (see `limits`).
            request.extensions_mut().insert(limits::Peer(peer));
            let mut service = service.clone();
            let span = request_span(&request);
            let response = span.in_scope(|| tower_service::Service::call(&mut service, request));
            async move {
                let response = tracing::Instrument::instrument(response, span.clone()).await;
                if let Ok(response) = &response {
                    span.record("http.response.status_code", response.status().as_u16());
                }
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            // A client that never finishes its request headers is dropped (slowloris).
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(REQUEST_HEAD_BYTES_MAX)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
            .with_upgrades();
        let mut stop = stopping.subscribe();
        let alive = alive.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = until_true(&mut stop) => {
                    // Finish the request in flight, then close (an upgraded socket is not ours).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(alive);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    drop(alive);
    let _ = ended.recv().await;
}

/// Longest request path recorded on a request's span (the rest is cut).
const SPAN_PATH_BYTES_MAX: usize = 256;

/// `http.request`, the trace span of a request that costs: a WebSocket upgrade or any method
/// but GET, HEAD and OPTIONS (those stay untraced). A client's `traceparent` header makes it
/// part of the client's trace (`runtime::trace::set_parent` bounds and parses it). The query
/// is never recorded: it may hold a token.
fn request_span<B>(request: &warp::http::Request<B>) -> tracing::Span {
    use warp::http::{Method, header};
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let method = request.method();
    if !upgrade && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return tracing::Span::none();
    }
    let path = request.uri().path();
    let path = &path[..path.floor_char_boundary(SPAN_PATH_BYTES_MAX)];
    let span = tracing::debug_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        websocket = upgrade,
        http.response.status_code = tracing::field::Empty
    );
    if let Some(traceparent) = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
    {
        runtime::trace::set_parent(&span, traceparent);
    }
    span
}

/// Resolves when `flag` becomes true (or its sender is gone).
pub(crate) async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|value| *value).await;
}
