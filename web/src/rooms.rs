//! Room routes: `POST /api/rooms` (create), `GET /api/rooms` (list),
//! `GET /api/rooms/{id}/messages?after=&before=&limit=` (history, from the room's memory or,
//! for older messages, from its journal).
//!
//! Inputs are bounded at this edge (see the table in `routes.rs`): the creation body, the
//! room id in the path, and `after`/`before` (0 to [`SEQ_MAX`]) and `limit` (clamped to
//! [`HISTORY_PAGE_MAX`]) in the query.

use actors::directory::{self, DIRECTORY_KEY, RoomDirectory};
use actors::room::{self, HISTORY_PAGE_MAX, Room, RoomError};
use runtime::Runtime;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;
use crate::input::{Query, SEQ_MAX};

/// Largest JSON body of a room creation.
pub const CREATE_BODY_BYTES_MAX: usize = 4 * 1024;
/// Messages in a history page when the query does not say.
const HISTORY_PAGE_DEFAULT: usize = 50;
/// Query parameters of a history request (`token` is read by `authenticated`).
const HISTORY_PARAMETERS: [&str; 4] = ["after", "before", "limit", "token"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
}

/// A history request's bounds, validated.
struct HistoryQuery {
    after: u64,
    before: Option<u64>,
    limit: usize,
}

impl HistoryQuery {
    fn parse(raw: &str) -> Result<Self, ApiError> {
        let query = Query::parse(raw, &HISTORY_PARAMETERS)?;
        Ok(Self {
            after: query.number("after", SEQ_MAX)?.unwrap_or(0),
            before: query.number("before", SEQ_MAX)?,
            limit: query.limit("limit", HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)?,
        })
    }
}

#[derive(Serialize)]
struct MessageItem<'a> {
    r#type: &'static str,
    room: &'a str,
    seq: u64,
    id: &'a str,
    user: &'a str,
    name: &'a str,
    text: &'a str,
    ts: u64,
}

pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let auth = authenticated(state.tokens.clone());
    let create = {
        let state = state.clone();
        warp::path!("api" / "rooms")
            .and(warp::post())
            .and(auth.clone())
            .and(warp::body::stream())
            .and_then(move |claims: Claims, body| {
                let runtime = state.runtime.clone();
                async move {
                    let body: CreateRoom = crate::input::read_json(body, CREATE_BODY_BYTES_MAX)
                        .await
                        .map_err(warp::reject::custom)?;
                    create_room(runtime, claims, body).await
                }
            })
    };
    let list = {
        let state = state.clone();
        warp::path!("api" / "rooms")
            .and(warp::get())
            .and(auth.clone())
            .and_then(move |_claims: Claims| list_rooms(state.runtime.clone()))
    };
    let history = warp::path!("api" / "rooms" / String / "messages")
        .and(warp::get())
        .and(auth)
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(move |room: String, _claims: Claims, query: String| {
            let runtime = state.runtime.clone();
            async move {
                crate::input::room_id(&room).map_err(warp::reject::custom)?;
                let query = HistoryQuery::parse(&query).map_err(warp::reject::custom)?;
                history(runtime, room, query).await
            }
        });
    create.or(list).unify().or(history).unify().boxed()
}

async fn create_room(
    runtime: Runtime,
    claims: Claims,
    body: CreateRoom,
) -> Result<warp::reply::Response, warp::Rejection> {
    let id = room_id(&body.name);
    let create = room::Create {
        name: body.name,
        by: claims.sub,
        now_ms: runtime::membership::unix_ms(),
    };
    let info = runtime
        .entity::<Room>(id)
        .ask(create)
        .await
        .map_err(reject_runtime)?
        .map_err(reject_room)?;
    runtime
        .entity::<RoomDirectory>(DIRECTORY_KEY)
        .ask(directory::Add(info.clone()))
        .await
        .map_err(reject_runtime)?
        .map_err(|message| {
            warp::reject::custom(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "directory_full",
                message,
            ))
        })?;
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "room": info })),
        StatusCode::CREATED,
    )
    .into_response())
}

async fn list_rooms(runtime: Runtime) -> Result<warp::reply::Response, warp::Rejection> {
    let rooms = runtime
        .entity::<RoomDirectory>(DIRECTORY_KEY)
        .ask(directory::List)
        .await
        .map_err(reject_runtime)?
        .map_err(|message| warp::reject::custom(ApiError::unavailable(message)))?;
    Ok(warp::reply::json(&serde_json::json!({ "rooms": rooms })).into_response())
}

async fn history(
    runtime: Runtime,
    room: String,
    query: HistoryQuery,
) -> Result<warp::reply::Response, warp::Rejection> {
    let messages = room::history(&runtime, &room, query.after, query.before, query.limit)
        .await
        .map_err(reject_runtime)?
        .map_err(reject_room)?;
    let items: Vec<MessageItem<'_>> = messages
        .iter()
        .map(|message| MessageItem {
            r#type: "message",
            room: &room,
            seq: message.seq,
            id: &message.id,
            user: &message.user,
            name: &message.name,
            text: &message.text,
            ts: message.ts,
        })
        .collect();
    Ok(warp::reply::json(&serde_json::json!({ "room": room, "messages": items })).into_response())
}

/// A readable, unique room id: the name's slug and random hex.
fn room_id(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug: String = slug.chars().take(32).collect();
    let suffix = format!("{:06x}", fastrand::u32(..1 << 24));
    if slug.is_empty() {
        suffix
    } else {
        format!("{slug}-{suffix}")
    }
}

fn reject_runtime(error: runtime::RuntimeError) -> warp::Rejection {
    warp::reject::custom(ApiError::from_runtime(error))
}

fn reject_room(error: RoomError) -> warp::Rejection {
    let status = match error {
        RoomError::NoSuchRoom => StatusCode::NOT_FOUND,
        RoomError::AlreadyExists => StatusCode::CONFLICT,
        RoomError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    warp::reject::custom(ApiError::new(status, error.code(), error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::room_id;

    #[test]
    fn room_ids_are_slugs_with_a_random_suffix() {
        let id = room_id("  Hello, World! ");
        assert!(id.starts_with("hello-world-"), "{id}");
        assert_eq!(id.len(), "hello-world-".len() + 6);
        assert_ne!(room_id("x"), room_id("x"));
        assert_eq!(room_id("!!!").len(), 6);
    }
}
