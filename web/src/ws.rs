//! The WebSocket gateway: `GET /ws?token=JWT`. The token is checked before the upgrade (401
//! otherwise); each connection gets a session actor under the node's sessions supervisor
//! (reached through its `SessionHandle`, which starts the actor again under the same supervisor
//! after it hibernated) and one reader task (socket → session, pings, idle timeout). Frames to the client do not go
//! through a task: the session writes them to the connection's [`Outbound`], which writes to
//! the socket directly (see `outbound.rs`).
//!
//! The upgrade is done here rather than by warp's `ws()` filter so that the connection keeps
//! its `TcpStream` (for direct non-blocking writes) and a small read buffer (tungstenite's
//! default is 128 KiB per connection, touched on the first read).
//!
//! The socket's transport limits are set here: a message above [`WS_MESSAGE_BYTES_MAX`] is a
//! protocol violation and ends the connection (tungstenite refuses it before buffering it);
//! anything up to that reaches the session, which answers frames above the configured
//! `sessions.frame_bytes_max` with a `too_large` error and keeps the connection.
//!
//! How a connection ends when its client misbehaves (the close frame's code and reason):
//!
//! | the client | close |
//! |---|---|
//! | sends frames of any kind faster than its flood budget (`inbound.rs`) | 1008 `too many frames per second` |
//! | sends a message or frame above [`WS_MESSAGE_BYTES_MAX`] | 1009 |
//! | breaks the protocol (unmasked frame, reserved bits or opcode, fragmented or long control frame, ...) | 1002 |
//! | sends a text message that is not UTF-8 | 1007 |
//! | does not read while frames (pongs too) are queued for it past `sessions.outbound_queue_max` | 4008 |
//! | sends no data frame and answers none of our pings for `sessions.idle_timeout_ms` | 4000 |
//!
//! Only data frames, and a pong answering a ping we sent (one per ping), count as activity:
//! pings and unsolicited pongs do not keep a connection open.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use actors::session::{
    CLOSE_IDLE, CloseReason, FrameSink, SessionActor, SessionArgs, SessionHandle, SessionMsg,
    SessionStart, SpawnSession,
};
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ractor::{Actor, ActorCell, ActorRef};
use runtime::supervisor::{ChildSpec, Restart, SupervisorMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;
use crate::inbound::InboundBudget;
use crate::outbound::Outbound;

/// Hard limit of one WebSocket message; beyond it the connection is closed by the transport.
pub const WS_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Initial read buffer of a connection, and the most one read takes from the socket (the
/// buffer grows for a larger frame, which then takes several reads): chat frames are mostly
/// under 512 bytes, and an idle connection should cost little (it keeps this buffer).
const READ_BUFFER_BYTES: usize = 512;

/// Longest a closed connection is drained before its socket is closed (see [`linger`]).
const LINGER: Duration = crate::outbound::CLOSE_GRACE;
/// Most bytes drained from a closed connection.
const LINGER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes read at a time while draining a closed connection.
const LINGER_READ_BYTES: usize = 4096;

/// Connections closed by the gateway for misbehaving, by close code.
pub const WS_CLOSES_TOTAL: &str = "actorhub_ws_protocol_closes_total";
/// Close code of a flooding client (RFC 6455: policy violation).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code of a message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code of a protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code of a text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;

/// Registry name of the node's sessions supervisor.
pub fn sessions_supervisor_name(node: &str) -> String {
    format!("actorhub.sessions.{node}")
}

/// Counts open connections against `sessions.connections_max`.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    next_id: AtomicU64,
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bad_upgrade(message: &str) -> warp::Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::BAD_REQUEST,
        "not_a_websocket",
        format!("{message}; connect with a WebSocket client (RFC 6455, version 13)"),
    ))
}

/// The handshake's headers, checked; yields the `Sec-WebSocket-Accept` value.
fn handshake() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("upgrade")
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and_then(
            |upgrade: Option<String>, version: Option<String>, key: Option<String>| async move {
                if !upgrade.is_some_and(|value| value.eq_ignore_ascii_case("websocket")) {
                    return Err(bad_upgrade("missing `Upgrade: websocket`"));
                }
                if version.as_deref().map(str::trim) != Some("13") {
                    return Err(bad_upgrade("`Sec-WebSocket-Version` must be 13"));
                }
                let key = key.ok_or_else(|| bad_upgrade("missing `Sec-WebSocket-Key`"))?;
                Ok(derive_accept_key(key.trim().as_bytes()))
            },
        )
}

pub fn route(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("ws")
        .and(warp::get())
        .and(authenticated(state.tokens.clone()))
        .and(handshake())
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(move |claims: Claims, accept: String, upgrade: Option<OnUpgrade>| {
            let state = state.clone();
            async move {
                if state.runtime.memory().under_pressure() {
                    return Err(warp::reject::custom(ApiError::short_of_memory()));
                }
                let limit = state.app.sessions.connections_max;
                let open = state.connections.open.fetch_add(1, Ordering::Relaxed) + 1;
                let guard = ConnectionGuard(state.connections.clone());
                if open > limit {
                    return Err(warp::reject::custom(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too_many_connections",
                        format!("this node already holds {limit} connections; try another node"),
                    )));
                }
                let upgrade = upgrade.ok_or_else(|| bad_upgrade("this connection cannot be upgraded"))?;
                tokio::spawn(async move {
                    match upgrade.await {
                        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                            Ok(parts) => {
                                // Copy what hyper read past the request, and free its buffer
                                // (8 KiB) now rather than when the connection ends.
                                let early = parts.read_buf.to_vec();
                                drop(parts.read_buf);
                                connection(parts.io.into_inner(), early, claims, state, guard).await;
                            }
                            Err(_) => tracing::error!(
                                "WebSocket upgrade on a connection that is not a plain TCP stream; serve HTTP with web::serve"
                            ),
                        },
                        Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
                    }
                });
                let mut response = warp::reply::Response::default();
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert("connection", warp::http::HeaderValue::from_static("upgrade"));
                headers.insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
                let accept = warp::http::HeaderValue::from_str(&accept)
                    .map_err(|_| bad_upgrade("bad `Sec-WebSocket-Key`"))?;
                headers.insert("sec-websocket-accept", accept);
                Ok::<_, warp::Rejection>(response.into_response())
            }
        })
        .boxed()
}

/// The socket as the WebSocket reader sees it: reads come from the socket and are counted
/// against the connection's flood budget; writes (its replies to pings and closes) go through
/// the connection's [`Outbound`] like every frame.
struct ReadHalf {
    stream: Arc<TcpStream>,
    outbound: Arc<Outbound>,
    budget: InboundBudget,
}

impl ReadHalf {
    /// Whether the client went over its flood budget (the read then failed).
    fn flooded(&self) -> bool {
        self.budget.flooded()
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.budget.flooded() {
            return Poll::Ready(Err(flood_error()));
        }
        loop {
            ready!(this.stream.poll_read_ready(context))?;
            match this.stream.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    let start = buf.filled().len();
                    buf.advance(read);
                    if !this.budget.read(&buf.filled()[start..], Instant::now()) {
                        return Poll::Ready(Err(flood_error()));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

fn flood_error() -> std::io::Error {
    std::io::Error::other("the client sent frames faster than its flood budget")
}

fn flood_close() -> CloseReason {
    CloseReason {
        code: CLOSE_POLICY,
        reason: "too many frames per second".into(),
    }
}

/// Closes the connection of a client that broke a rule, and says so.
fn close_misbehaving(outbound: &Outbound, session_id: &str, reason: CloseReason, frames: u64) {
    tracing::info!(
        session = %session_id, code = reason.code, reason = %reason.reason, frames,
        "closing a misbehaving connection"
    );
    metrics::counter!(WS_CLOSES_TOTAL, "code" => reason.code.to_string()).increment(1);
    outbound.close(reason);
}

/// The close frame owed to a client whose frames tungstenite refused, if any (none when the
/// peer is simply gone).
fn close_for(error: &tokio_tungstenite::tungstenite::Error, flooded: bool) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite::Error as E;
    use tokio_tungstenite::tungstenite::error::ProtocolError as P;
    if flooded {
        return Some(flood_close());
    }
    let (code, reason) = match error {
        E::Capacity(_) => (
            CLOSE_TOO_BIG,
            format!("message too big: the limit is {WS_MESSAGE_BYTES_MAX} bytes"),
        ),
        E::Utf8(_) => (
            CLOSE_INVALID_DATA,
            "a text message is not valid UTF-8".to_string(),
        ),
        E::Protocol(P::ResetWithoutClosingHandshake) => return None,
        E::Protocol(error) => (CLOSE_PROTOCOL, format!("protocol error: {error}")),
        _ => return None,
    };
    Some(CloseReason { code, reason })
}

impl AsyncWrite for ReadHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        _context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.outbound.send_raw(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn connection(
    stream: TcpStream,
    read_buf: Vec<u8>,
    claims: Claims,
    state: AppState,
    _guard: ConnectionGuard,
) {
    let limits = state.app.sessions.clone();
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let outbound = Outbound::new(stream.clone(), limits.outbound_queue_max);
    let session_number = state.connections.next_id.fetch_add(1, Ordering::Relaxed);
    let session_id = format!("{}-{session_number}", state.runtime.node_id());
    let args = SessionArgs {
        runtime: state.runtime.clone(),
        session_id: session_id.clone(),
        name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
        user: claims.sub,
        limits: limits.clone(),
        sink: outbound.clone(),
        presence: state.presence.clone(),
    };
    // Boxed: the start-up's state would otherwise enlarge this future for the connection's life.
    let session = match Box::pin(start_session(&state, &session_id, args)).await {
        Ok(session) => session,
        Err(error) => {
            tracing::error!(%error, "cannot start a session");
            outbound.close(CloseReason {
                code: 1011,
                reason: "server error: cannot start a session".into(),
            });
            return;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(WS_MESSAGE_BYTES_MAX));
    let mut budget = InboundBudget::new(
        limits.messages_per_second,
        limits.frame_bytes_max,
        WS_MESSAGE_BYTES_MAX,
    );
    // Frames sent along with the upgrade request count too (hyper may have read 64 KiB).
    if !budget.read(&read_buf, Instant::now()) {
        close_misbehaving(&outbound, &session_id, flood_close(), budget.frames());
        let _ = session.cast(SessionMsg::ClientGone);
        outbound.finish();
        linger(&stream).await;
        return;
    }
    let reader = ReadHalf {
        stream: stream.clone(),
        outbound: outbound.clone(),
        budget,
    };
    let socket =
        WebSocketStream::from_partially_read(reader, read_buf, Role::Server, Some(config)).await;
    // The reader is a task of its own: this start-up's future (the node's state, the claims)
    // ends here instead of living as long as the connection.
    tokio::spawn(read_until_closed(Connection {
        socket,
        session,
        outbound,
        stream,
        session_id,
        idle_timeout_ms: limits.idle_timeout_ms,
        _guard,
    }));
}

/// What the reader task of a connection holds for the connection's life.
struct Connection {
    socket: WebSocketStream<ReadHalf>,
    session: Arc<SessionHandle>,
    outbound: Arc<Outbound>,
    stream: Arc<TcpStream>,
    session_id: String,
    idle_timeout_ms: u64,
    _guard: ConnectionGuard,
}

/// The reader loop: client frames to the session, pings, the idle timeout; then the end of
/// the session and the connection.
///
/// Not an `async fn`: an `async fn` moves its argument into its body, so the future would hold
/// the `Connection` twice (456 bytes more for every open connection); an `async move` block
/// captures it once, and the fields are used where they are.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn read_until_closed(mut connection: Connection) -> impl Future<Output = ()> + Send {
    async move {
        let Connection {
            ref mut socket,
            ref session,
            ref outbound,
            ref stream,
            ref session_id,
            idle_timeout_ms,
            ..
        } = connection;
        let idle = Duration::from_millis(idle_timeout_ms);
        let mut ping = tokio::time::interval(
            Duration::from_millis(idle_timeout_ms / 3).max(Duration::from_millis(100)),
        );
        ping.tick().await;
        let mut last_activity = Instant::now();
        // A pong counts as activity only in answer to a ping of ours (it echoes the ping's
        // payload, RFC 6455 §5.5.3), once per ping.
        let mut pings_sent: u64 = 0;
        let mut ping_outstanding: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                received = socket.next() => {
                    let message = match received {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            match close_for(&error, socket.get_ref().flooded()) {
                                Some(reason) => close_misbehaving(
                                    outbound,
                                    session_id,
                                    reason,
                                    socket.get_ref().budget.frames(),
                                ),
                                None => {
                                    tracing::debug!(session = %session_id, %error, "WebSocket read failed");
                                }
                            }
                            break;
                        }
                        None => break,
                    };
                    let forwarded = match message {
                        Message::Text(text) => {
                            last_activity = Instant::now();
                            session.cast(SessionMsg::ClientText(text.as_str().to_string()))
                        }
                        Message::Binary(bytes) => {
                            last_activity = Instant::now();
                            session.cast(SessionMsg::ClientText(
                                String::from_utf8_lossy(&bytes).into_owned(),
                            ))
                        }
                        Message::Close(_) => break,
                        Message::Pong(payload)
                            if ping_outstanding.as_deref() == Some(payload.as_ref()) =>
                        {
                            ping_outstanding = None;
                            last_activity = Instant::now();
                            Ok(())
                        }
                        // Pings (tungstenite answers them) and unsolicited pongs prove nothing: an
                        // idle client must not be kept alive by them.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                    };
                    if forwarded.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if last_activity.elapsed() > idle {
                        tracing::info!(session = %session_id, "closing an idle connection");
                        outbound.close(CloseReason {
                            code: CLOSE_IDLE,
                            reason: format!(
                                "idle for {:.1} s: no message, no answer to our pings",
                                idle.as_secs_f64()
                            ),
                        });
                    } else {
                        pings_sent += 1;
                        let payload = pings_sent.to_string().into_bytes();
                        outbound.ping(&payload);
                        ping_outstanding = Some(payload);
                    }
                }
                () = outbound.closed() => break,
            }
        }
        drop(connection.socket);
        let _ = session.cast(SessionMsg::ClientGone);
        outbound.finish();
        // Boxed: inline, the lingering's state would enlarge every connection's future.
        Box::pin(linger(stream)).await;
    }
}

/// After the last frame: reads and drops what the client still sends until it closes its
/// side, for at most [`LINGER`] and [`LINGER_BYTES_MAX`]. Closing a socket that holds unread
/// bytes makes the kernel reset the connection and drop what it has not delivered yet (our
/// close frame to a flooding client, typically); this gives the close frame time to arrive.
async fn linger(stream: &TcpStream) {
    let deadline = tokio::time::Instant::now() + LINGER;
    // On the heap, and only while lingering: an array here would be part of the reader task's
    // future, 4 KiB more for every open connection (heaptrack, benches/RESULTS.md).
    let mut buf = vec![0u8; LINGER_READ_BYTES];
    let mut drained = 0;
    while drained <= LINGER_BYTES_MAX {
        tokio::select! {
            ready = stream.readable() => if ready.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(read) => drained += read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn start_session(
    state: &AppState,
    session_id: &str,
    args: SessionArgs,
) -> Result<Arc<SessionHandle>, String> {
    let supervisor: ActorRef<SupervisorMsg> =
        ractor::registry::where_is(sessions_supervisor_name(state.runtime.node_id()))
            .map(ActorRef::from)
            .ok_or_else(|| "the sessions supervisor is not running".to_string())?;
    SessionHandle::start(args, session_spawner(supervisor, session_id.to_string())).await
}

/// Starts the session's actor as a temporary child of the sessions supervisor, the first time
/// and after each hibernation. Each incarnation has its own child name: the supervisor may
/// not have seen the previous one stop when the next one starts.
fn session_spawner(supervisor: ActorRef<SupervisorMsg>, session_id: String) -> SpawnSession {
    let incarnations = AtomicU64::new(0);
    Arc::new(move |start: SessionStart| {
        let incarnation = incarnations.fetch_add(1, Ordering::Relaxed);
        let name = format!("session-{session_id}.{incarnation}");
        let supervisor = supervisor.clone();
        Box::pin(async move {
            let start = Arc::new(std::sync::Mutex::new(Some(start)));
            let spec = ChildSpec::new(name, Restart::Temporary, move |supervisor: ActorCell| {
                let start = start.lock().ok().and_then(|mut start| start.take());
                async move {
                    let start = start.ok_or(ractor::SpawnErr::StartupFailed(
                        "a session incarnation starts only once".into(),
                    ))?;
                    let (actor, _) =
                        Actor::spawn_linked(None, SessionActor, start, supervisor).await?;
                    Ok(actor.get_cell())
                }
            });
            let cell = ractor::call!(supervisor, SupervisorMsg::StartChild, spec)
                .map_err(|error| error.to_string())??;
            Ok(ActorRef::from(cell))
        })
    })
}

#[cfg(test)]
mod tests {
    /// The size of the futures a function returns.
    fn future_bytes<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its reader's future (in its tokio task) for its whole life:
    /// it was 5.5 KiB when the linger buffer was an array in it and the connection was stored
    /// twice; 768 bytes since (456 of them the `Connection`).
    #[test]
    fn the_reader_future_of_a_connection_stays_small() {
        let bytes = future_bytes(super::read_until_closed);
        assert!(bytes <= 1024, "the reader's future grew to {bytes} bytes");
    }
}
