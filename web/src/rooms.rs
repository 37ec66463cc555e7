//! Room routes: `POST /api/rooms` (create), `GET /api/rooms` (list),
//! `GET /api/rooms/{id}/messages?after=&before=&limit=` (history). The flows are
//! `actors::room::Rooms`'s; this module reads and bounds the requests and maps the answers to
//! HTTP.
//!
//! Inputs are bounded at this edge (see the table in `routes.rs`): the creation body, the
//! room id in the path, and `after`/`before` (0 to [`SEQ_MAX`]) and `limit` (clamped to
//! [`HISTORY_PAGE_MAX`]) in the query.

use actors::room::{HISTORY_PAGE_MAX, RoomError, Rooms, RoomsError};
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
        let rooms = state.rooms.clone();
        warp::path!("api" / "rooms")
            .and(warp::post())
            .and(auth.clone())
            .and(warp::body::stream())
            .and_then(move |claims: Claims, body| {
                let rooms = rooms.clone();
                async move {
                    let body: CreateRoom = crate::input::read_json(body, CREATE_BODY_BYTES_MAX)
                        .await
                        .map_err(warp::reject::custom)?;
                    let info = rooms
                        .create(&body.name, &claims.sub)
                        .await
                        .map_err(reject)?;
                    Ok::<_, warp::Rejection>(
                        warp::reply::with_status(
                            warp::reply::json(&serde_json::json!({ "room": info })),
                            StatusCode::CREATED,
                        )
                        .into_response(),
                    )
                }
            })
    };
    let list = {
        let rooms = state.rooms.clone();
        warp::path!("api" / "rooms")
            .and(warp::get())
            .and(auth.clone())
            .and_then(move |_claims: Claims| {
                let rooms = rooms.clone();
                async move {
                    let listed = rooms.list().await.map_err(reject)?;
                    Ok::<_, warp::Rejection>(
                        warp::reply::json(&serde_json::json!({ "rooms": listed })).into_response(),
                    )
                }
            })
    };
    let rooms = state.rooms;
    let history = warp::path!("api" / "rooms" / String / "messages")
        .and(warp::get())
        .and(auth)
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(move |room: String, _claims: Claims, query: String| {
            let rooms = rooms.clone();
            async move {
                crate::input::room_id(&room).map_err(warp::reject::custom)?;
                let query = HistoryQuery::parse(&query).map_err(warp::reject::custom)?;
                history(&rooms, room, query).await
            }
        });
    create.or(list).unify().or(history).unify().boxed()
}

async fn history(
    rooms: &Rooms,
    room: String,
    query: HistoryQuery,
) -> Result<warp::reply::Response, warp::Rejection> {
    let messages = rooms
        .history(&room, query.after, query.before, query.limit)
        .await
        .map_err(reject)?;
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

/// A room flow's failure as an HTTP error.
fn reject(error: RoomsError) -> warp::Rejection {
    let api_error = match error {
        RoomsError::Room(error) => {
            let status = match error {
                RoomError::NoSuchRoom => StatusCode::NOT_FOUND,
                RoomError::AlreadyExists => StatusCode::CONFLICT,
                RoomError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            ApiError::new(status, error.code(), error.to_string())
        }
        RoomsError::DirectoryFull(message) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "directory_full", message)
        }
        RoomsError::Store(_) => ApiError::unavailable(error.to_string()),
        RoomsError::Runtime(error) => ApiError::from_runtime(error),
    };
    warp::reject::custom(api_error)
}
