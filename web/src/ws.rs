//! The WebSocket gateway: `GET /ws?token=JWT`. The token is checked before the upgrade (401
//! otherwise); each connection gets a session actor under the node's sessions supervisor,
//! a reader loop (socket → session) and a writer task (bounded queue → socket).
//!
//! The socket's transport limits are set here: a message above [`WS_MESSAGE_BYTES_MAX`] is a
//! protocol violation and ends the connection (tungstenite refuses it before buffering it);
//! anything up to that reaches the session, which answers frames above the configured
//! `sessions.frame_bytes_max` with a `too_large` error and keeps the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actors::session::{CloseReason, SessionActor, SessionArgs, SessionMsg};
use futures_util::{SinkExt, StreamExt};
use ractor::{Actor, ActorCell, ActorRef};
use runtime::supervisor::{ChildSpec, Restart, SupervisorMsg};
use tokio::sync::{mpsc, watch};
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;

/// Hard limit of one WebSocket message; beyond it the connection is closed by the transport.
pub const WS_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

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

pub fn route(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("ws")
        .and(warp::get())
        .and(authenticated(state.tokens.clone()))
        .and(warp::ws())
        .and_then(move |claims: Claims, ws: Ws| {
            let state = state.clone();
            async move {
                let limit = state.runtime.config().sessions.connections_max;
                let open = state.connections.open.fetch_add(1, Ordering::Relaxed) + 1;
                let guard = ConnectionGuard(state.connections.clone());
                if open > limit {
                    return Err(warp::reject::custom(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too_many_connections",
                        format!("this node already holds {limit} connections; try another node"),
                    )));
                }
                let ws = ws
                    .max_message_size(WS_MESSAGE_BYTES_MAX)
                    .max_frame_size(WS_MESSAGE_BYTES_MAX);
                Ok::<_, warp::Rejection>(
                    ws.on_upgrade(move |socket| connection(socket, claims, state, guard))
                        .into_response(),
                )
            }
        })
        .boxed()
}

async fn connection(socket: WebSocket, claims: Claims, state: AppState, _guard: ConnectionGuard) {
    let limits = state.runtime.config().sessions.clone();
    let session_number = state.connections.next_id.fetch_add(1, Ordering::Relaxed);
    let session_id = format!("{}-{session_number}", state.runtime.node_id());
    let (frames, mut frames_out) = mpsc::channel::<String>(limits.outbound_queue_max);
    let (close, mut close_requested) = watch::channel::<Option<CloseReason>>(None);
    let (mut sink, mut stream) = socket.split();
    let args = SessionArgs {
        runtime: state.runtime.clone(),
        session_id: session_id.clone(),
        name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
        user: claims.sub,
        limits: limits.clone(),
        frames,
        close,
    };
    let session = match start_session(&state, &session_id, args).await {
        Ok(session) => session,
        Err(error) => {
            tracing::error!(%error, "cannot start a session");
            let _ = sink
                .send(Message::close_with(
                    1011u16,
                    "server error: cannot start a session",
                ))
                .await;
            return;
        }
    };

    let ping_every =
        Duration::from_millis(limits.idle_timeout_ms / 3).max(Duration::from_millis(100));
    let mut writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                frame = frames_out.recv() => match frame {
                    Some(text) => Message::text(text),
                    None => Message::close_with(1000u16, "session ended"),
                },
                changed = close_requested.changed() => {
                    match changed.ok().and_then(|()| close_requested.borrow().clone()) {
                        Some(reason) => Message::close_with(reason.code, reason.reason),
                        None => break,
                    }
                }
                _ = ping.tick() => Message::ping(Vec::new()),
            };
            let closing = message.is_close();
            // A client that does not read leaves this send pending forever: a close request
            // must still end the connection, so race the send against it. Frames already
            // queued go out with it, in one flush (one syscall rather than one per frame).
            let sent = tokio::select! {
                result = send_batch(&mut sink, message, &mut frames_out) => result.is_ok(),
                _ = close_requested.changed(), if !closing => false,
            };
            if !sent || closing {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    let mut writer_done = false;
    loop {
        let received = tokio::select! {
            received = stream.next() => received,
            _ = &mut writer => {
                writer_done = true;
                break;
            }
        };
        let message = match received {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::debug!(session = %session_id, %error, "WebSocket read failed");
                break;
            }
            None => break,
        };
        let forwarded = if message.is_text() || message.is_binary() {
            let text = String::from_utf8_lossy(message.as_bytes()).into_owned();
            session.cast(SessionMsg::ClientText(text))
        } else if message.is_close() {
            break;
        } else {
            // Pings and pongs prove the client is alive.
            session.cast(SessionMsg::ClientAlive)
        };
        if forwarded.is_err() {
            break;
        }
    }
    let _ = session.cast(SessionMsg::ClientGone);
    if !writer_done {
        let _ = writer.await;
    }
}

/// Most frames written before one flush.
const FRAMES_PER_FLUSH_MAX: usize = 64;

/// Feeds `first` and whatever else is queued (up to [`FRAMES_PER_FLUSH_MAX`]), then flushes.
async fn send_batch(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    first: Message,
    queue: &mut mpsc::Receiver<String>,
) -> Result<(), warp::Error> {
    let closing = first.is_close();
    sink.feed(first).await?;
    if !closing {
        for _ in 1..FRAMES_PER_FLUSH_MAX {
            let Ok(text) = queue.try_recv() else { break };
            sink.feed(Message::text(text)).await?;
        }
    }
    sink.flush().await
}

async fn start_session(
    state: &AppState,
    session_id: &str,
    args: SessionArgs,
) -> Result<ActorRef<SessionMsg>, String> {
    let supervisor: ActorRef<SupervisorMsg> =
        ractor::registry::where_is(sessions_supervisor_name(state.runtime.node_id()))
            .map(ActorRef::from)
            .ok_or_else(|| "the sessions supervisor is not running".to_string())?;
    let args = Arc::new(std::sync::Mutex::new(Some(args)));
    let spec = ChildSpec::new(
        format!("session-{session_id}"),
        Restart::Temporary,
        move |supervisor: ActorCell| {
            let args = args.lock().ok().and_then(|mut args| args.take());
            async move {
                let args = args.ok_or(ractor::SpawnErr::StartupFailed(
                    "a session starts only once".into(),
                ))?;
                let (actor, _) = Actor::spawn_linked(None, SessionActor, args, supervisor).await?;
                Ok(actor.get_cell())
            }
        },
    );
    let cell = ractor::call!(supervisor, SupervisorMsg::StartChild, spec)
        .map_err(|error| error.to_string())??;
    Ok(ActorRef::from(cell))
}
