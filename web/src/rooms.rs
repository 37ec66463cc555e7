//! Room routes: `POST /api/rooms` (create, `"private": true` for a private room),
//! `GET /api/rooms` (the public rooms and the caller's private ones),
//! `GET /api/rooms/{id}/messages?after=&before=&limit=` (history),
//! `POST /api/rooms/{id}/members` `{email}` (the owner invites) and
//! `DELETE /api/rooms/{id}/members/{user}` (the owner removes, or a member leaves). The flows
//! are `actors::room::Rooms`'s; this module reads and bounds the requests and maps the answers
//! to HTTP. Who may do what is decided by the room entity, never here.
//!
//! Inputs are bounded at this edge (see the table in `routes.rs`): the creation body, the
//! room id in the path, and `after`/`before` (0 to [`SEQ_MAX`]) and `limit` (clamped to
//! [`HISTORY_PAGE_MAX`]) in the query.

use actors::room::user_rooms::UserRoomsError;
use actors::room::{HISTORY_PAGE_MAX, Members, RoomError, Rooms, RoomsError};
use actors::user::service::Accounts;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;
use crate::input::{Query, SEQ_MAX};

/// Largest JSON body of a room creation or an invitation.
pub const CREATE_BODY_BYTES_MAX: usize = 4 * 1024;
/// Messages in a history page when the query does not say.
const HISTORY_PAGE_DEFAULT: usize = 50;
/// Query parameters of a history request (`token` is read by `authenticated`).
const HISTORY_PARAMETERS: [&str; 4] = ["after", "before", "limit", "token"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    email: String,
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
            .and(crate::limits::user(
                &state.limits,
                crate::limits::Scope::RoomCreate,
                auth.clone(),
            ))
            .and(warp::body::stream())
            .and_then(move |claims: Claims, body| {
                let rooms = rooms.clone();
                async move {
                    let body: CreateRoom = crate::input::read_json(body, CREATE_BODY_BYTES_MAX)
                        .await
                        .map_err(warp::reject::custom)?;
                    let info = rooms
                        .create_room(&body.name, &claims.sub, body.private)
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
            .and_then(move |claims: Claims| {
                let rooms = rooms.clone();
                async move {
                    let listed = rooms.list_for(&claims.sub).await.map_err(reject)?;
                    Ok::<_, warp::Rejection>(
                        warp::reply::json(&serde_json::json!({ "rooms": listed })).into_response(),
                    )
                }
            })
    };
    let invite = {
        let rooms = state.rooms.clone();
        let accounts = state.accounts.clone();
        warp::path!("api" / "rooms" / String / "members")
            .and(warp::post())
            .and(auth.clone())
            .and(warp::body::stream())
            .and_then(move |room: String, claims: Claims, body| {
                let rooms = rooms.clone();
                let accounts = accounts.clone();
                async move {
                    crate::input::room_id(&room).map_err(warp::reject::custom)?;
                    let body: Invite = crate::input::read_json(body, CREATE_BODY_BYTES_MAX)
                        .await
                        .map_err(warp::reject::custom)?;
                    let user = resolve(&accounts, &body.email).await?;
                    let members = rooms
                        .add_member(&room, &claims.sub, &user)
                        .await
                        .map_err(reject)?;
                    Ok::<_, warp::Rejection>(members_reply(&room, members))
                }
            })
    };
    let remove = {
        let rooms = state.rooms.clone();
        warp::path!("api" / "rooms" / String / "members" / String)
            .and(warp::delete())
            .and(auth.clone())
            .and_then(move |room: String, user: String, claims: Claims| {
                let rooms = rooms.clone();
                async move {
                    crate::input::room_id(&room).map_err(warp::reject::custom)?;
                    if !actors::user::validate::is_user_id(&user) {
                        return Err(warp::reject::custom(ApiError::bad_request(
                            "invalid_id",
                            "a user id has 32 lowercase hexadecimal digits",
                        )));
                    }
                    let members = rooms
                        .remove_member(&room, &claims.sub, &user)
                        .await
                        .map_err(reject)?;
                    Ok(members_reply(&room, members))
                }
            })
    };
    let rooms = state.rooms;
    let history = warp::path!("api" / "rooms" / String / "messages")
        .and(warp::get())
        .and(crate::limits::user(
            &state.limits,
            crate::limits::Scope::History,
            auth,
        ))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(move |room: String, claims: Claims, query: String| {
            let rooms = rooms.clone();
            async move {
                crate::input::room_id(&room).map_err(warp::reject::custom)?;
                let query = HistoryQuery::parse(&query).map_err(warp::reject::custom)?;
                history(&rooms, room, &claims.sub, query).await
            }
        });
    create
        .or(list)
        .unify()
        .or(history)
        .unify()
        .or(invite)
        .unify()
        .or(remove)
        .unify()
        .boxed()
}

/// The id of the account under `email`; 404 `no_such_user` when there is none.
async fn resolve(accounts: &Accounts, email: &str) -> Result<String, warp::Rejection> {
    match accounts.user_id_of(email).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(warp::reject::custom(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_user",
            "no account has this email address",
        ))),
        Err(error) => Err(warp::reject::custom(match error {
            actors::user::service::AccountError::Runtime(error) => ApiError::from_runtime(error),
            other => {
                tracing::warn!(error = %other, "cannot look up an invitee");
                ApiError::unavailable("cannot look up the account now; try again")
            }
        })),
    }
}

fn members_reply(room: &str, members: Members) -> warp::reply::Response {
    warp::reply::json(&serde_json::json!({
        "room": room,
        "owner": members.owner,
        "members": members.members,
    }))
    .into_response()
}

async fn history(
    rooms: &Rooms,
    room: String,
    user: &str,
    query: HistoryQuery,
) -> Result<warp::reply::Response, warp::Rejection> {
    let messages = rooms
        .history(&room, user, query.after, query.before, query.limit)
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
                RoomError::NotAMember | RoomError::NotTheOwner => StatusCode::FORBIDDEN,
                RoomError::NotPrivate => StatusCode::CONFLICT,
            };
            ApiError::new(status, error.code(), error.to_string())
        }
        // A quota, not a rate: waiting does not help, so 403 (and no `Retry-After`).
        RoomsError::Limit(error @ UserRoomsError::QuotaExceeded { .. }) => ApiError::new(
            StatusCode::FORBIDDEN,
            "room_quota_exceeded",
            error.to_string(),
        ),
        RoomsError::Limit(error @ UserRoomsError::Full) => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_private_rooms",
            error.to_string(),
        ),
        RoomsError::DirectoryFull(message) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "directory_full", message)
        }
        RoomsError::Store(_) => ApiError::unavailable(error.to_string()),
        RoomsError::Runtime(error) => ApiError::from_runtime(error),
    };
    warp::reject::custom(api_error)
}
