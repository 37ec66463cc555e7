//! Account routes under `/api/users`: sign-up, email verification, login, the profile and its
//! photo. The flows live in `actors::user::service::Accounts`; this module reads requests with
//! limits, calls it, and turns its answers into HTTP (see `users/reply.rs` for the codes).
//!
//! | route | auth | success |
//! |---|---|---|
//! | `POST /api/users/signup` `{email, password, name}` | | 201 user |
//! | `GET /api/users/verify?token=` | | 200 user (JSON) or an HTML page |
//! | `POST /api/users/resend-verification` `{email}` | | 202 |
//! | `POST /api/users/login` `{email, password}` | | 200 `{token, user}` |
//! | `GET /api/users/me`, `PATCH /api/users/me` `{name?, bio?}` | token | 200 user |
//! | `PUT /api/users/me/photo` (JPEG, PNG or WebP body) | token | 200 user |
//! | `GET /api/users/{id}/photo` | | 200 image |
//!
//! Request bodies are never logged; passwords are handed straight to the account service.

mod reply;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actors::user::service::{AccountError, Accounts};
use actors::user::validate::normalize_email;
use bytes::Buf;
use futures_util::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::http::StatusCode;

use crate::AppState;
use crate::auth::{Claims, authenticated, unix_now_s};
use crate::error::ApiError;
use crate::limits::{self, Scope};

use self::reply::{LoginBody, UserBody, account_error, json, verify_page};

/// Largest JSON body of an account request (a password is at most 1 KiB).
pub const JSON_BODY_BYTES_MAX: usize = 16 * 1024;
/// Content types accepted for a photo upload (`application/octet-stream`: let the bytes say).
const PHOTO_CONTENT_TYPES: [&str; 4] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/octet-stream",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignUpRequest {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilePatch {
    name: Option<String>,
    bio: Option<String>,
}

type Response = warp::reply::Response;

/// Every account route; errors are answered in place as `{"error":{code,message}}`.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(Response,)> {
    let accounts = state.accounts.clone();
    let with_accounts = warp::any().map(move || accounts.clone());
    let auth = authenticated(state.tokens.clone());

    let signup = warp::path!("api" / "users" / "signup")
        .and(warp::post())
        .and(limits::address(&state.limits, Scope::SignUp))
        .and(with_accounts.clone())
        .and(warp::body::stream())
        .then(|accounts: Accounts, body| async move {
            let request: SignUpRequest = match read_json(body).await {
                Ok(request) => request,
                Err(error) => return error.into_response(),
            };
            match accounts
                .sign_up(&request.email, request.password, &request.name)
                .await
            {
                Ok(profile) => json(StatusCode::CREATED, &UserBody::from(&profile)),
                Err(error) => account_error(error),
            }
        });

    let verify = warp::path!("api" / "users" / "verify")
        .and(warp::get())
        .and(with_accounts.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("accept"))
        .then(
            |accounts: Accounts, query: HashMap<String, String>, accept: Option<String>| async move {
                let wants_json = accept.is_some_and(|accept| accept.contains("application/json"));
                let outcome = match query.get("token") {
                    Some(token) => accounts.verify(token).await,
                    None => Err(actors::user::UserError::InvalidToken.into()),
                };
                match (outcome, wants_json) {
                    (Ok(profile), true) => json(StatusCode::OK, &UserBody::from(&profile)),
                    (Ok(profile), false) => verify_page(Ok(&profile)),
                    (Err(error), true) => account_error(error),
                    (Err(error), false) => verify_page(Err(error)),
                }
            },
        );

    let resend = warp::path!("api" / "users" / "resend-verification")
        .and(warp::post())
        .and(limits::address(&state.limits, Scope::Resend))
        .and(with_accounts.clone())
        .and(warp::body::stream())
        .then(|accounts: Accounts, body| async move {
            let request: ResendRequest = match read_json(body).await {
                Ok(request) => request,
                Err(error) => return error.into_response(),
            };
            match accounts.resend_verification(&request.email).await {
                Ok(()) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({
                        "status": "accepted",
                        "message": "if the account exists and is not verified, a new link is on its way"
                    }),
                ),
                Err(error) => account_error(error),
            }
        });

    let login = {
        let tokens = state.tokens.clone();
        let ttl_s = state.web.token_ttl_s;
        let guarded = state.limits.clone();
        warp::path!("api" / "users" / "login")
            .and(warp::post())
            .and(limits::address(&state.limits, Scope::Login))
            .and(limits::client(&state.limits))
            .and(with_accounts.clone())
            .and(warp::body::stream())
            .then(move |client: IpAddr, accounts: Accounts, body| {
                let tokens = tokens.clone();
                let limits = guarded.clone();
                async move {
                    let request: LoginRequest = match read_json(body).await {
                        Ok(request) => request,
                        Err(error) => return error.into_response(),
                    };
                    // The lockout counts per (address, account), so it cannot be aimed at
                    // someone else's account (see `limits`).
                    let account = normalize_email(&request.email)
                        .unwrap_or_else(|_| request.email.to_lowercase());
                    let guard = limits.login_guard();
                    let ticket = match guard.begin(client, &account, Instant::now()) {
                        Ok(ticket) => ticket,
                        Err(wait) => return login_delayed(wait),
                    };
                    let outcome = accounts.login(&request.email, request.password).await;
                    match &outcome {
                        Ok(_) | Err(AccountError::NotVerified) => guard.succeeded(ticket),
                        Err(AccountError::BadCredentials) => {}
                        Err(_) => guard.not_counted(ticket),
                    }
                    match outcome {
                        Ok(profile) => {
                            let now_s = unix_now_s();
                            let token =
                                tokens.mint_named(&profile.id, Some(&profile.name), now_s, ttl_s);
                            let body = LoginBody {
                                token,
                                expires_at_s: now_s + ttl_s,
                                user: UserBody::from(&profile),
                            };
                            json(StatusCode::OK, &body)
                        }
                        Err(error) => account_error(error),
                    }
                }
            })
    };

    let me = warp::path!("api" / "users" / "me")
        .and(warp::get())
        .and(with_accounts.clone())
        .and(auth.clone())
        .then(|accounts: Accounts, claims: Claims| async move {
            match accounts.profile(&claims.sub).await {
                Ok(profile) => json(StatusCode::OK, &UserBody::from(&profile)),
                Err(error) => account_error(error),
            }
        });

    let update = warp::path!("api" / "users" / "me")
        .and(warp::patch())
        .and(with_accounts.clone())
        .and(auth.clone())
        .and(warp::body::stream())
        .then(|accounts: Accounts, claims: Claims, body| async move {
            let patch: ProfilePatch = match read_json(body).await {
                Ok(patch) => patch,
                Err(error) => return error.into_response(),
            };
            match accounts
                .update_profile(&claims.sub, patch.name, patch.bio)
                .await
            {
                Ok(profile) => json(StatusCode::OK, &UserBody::from(&profile)),
                Err(error) => account_error(error),
            }
        });

    let runtime = state.runtime.clone();
    let upload = warp::path!("api" / "users" / "me" / "photo")
        .and(warp::put())
        .and(with_accounts.clone())
        .and(limits::user(&state.limits, Scope::Upload, auth))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::stream())
        .then(
            move |accounts: Accounts, claims: Claims, content_type: Option<String>, body| {
                let short_of_memory = runtime.memory().under_pressure();
                async move {
                    if short_of_memory {
                        return ApiError::short_of_memory().into_response();
                    }
                    if let Some(content_type) = content_type {
                        let essence = content_type.split(';').next().unwrap_or_default().trim();
                        if !PHOTO_CONTENT_TYPES.contains(&essence.to_ascii_lowercase().as_str()) {
                            return ApiError::new(
                                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                "unsupported_media_type",
                                "send a JPEG, PNG or WebP image",
                            )
                            .into_response();
                        }
                    }
                    let bytes_max = accounts.settings().photo_bytes_max;
                    let upload = match crate::input::read_limited(
                        body,
                        usize::try_from(bytes_max).unwrap_or(usize::MAX),
                    )
                    .await
                    {
                        Ok(upload) => upload,
                        Err(error) => return error.into_response(),
                    };
                    match accounts.set_photo(&claims.sub, upload).await {
                        Ok(profile) => json(StatusCode::OK, &UserBody::from(&profile)),
                        Err(error) => account_error(error),
                    }
                }
            },
        );

    let photo = warp::path!("api" / "users" / String / "photo")
        // `/api/users/me/photo` is the upload's path: a GET there is its 405 (`Allow: PUT`, as
        // the document says), not a lookup of a user called "me".
        .and_then(|user_id: String| async move {
            if user_id == "me" {
                Err(warp::reject::not_found())
            } else {
                Ok(user_id)
            }
        })
        .and(warp::get())
        .and(with_accounts)
        .then(|user_id: String, accounts: Accounts| async move {
            match accounts.photo(&user_id).await {
                Ok(Some((bytes, content_type))) => {
                    let mut response = warp::reply::Response::new(bytes.into());
                    let headers = response.headers_mut();
                    for (name, value) in [
                        ("content-type", content_type),
                        ("cache-control", "public, max-age=60"),
                        ("x-content-type-options", "nosniff"),
                    ] {
                        headers.insert(name, warp::http::HeaderValue::from_static(value));
                    }
                    response
                }
                Ok(None) => {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "this user has no photo")
                        .into_response()
                }
                Err(error) => account_error(error),
            }
        });

    signup
        .or(verify)
        .unify()
        .or(resend)
        .unify()
        .or(login)
        .unify()
        .or(me)
        .unify()
        .or(update)
        .unify()
        .or(upload)
        .unify()
        .or(photo)
        .unify()
        .boxed()
}

/// 429 `too_many_attempts`: this address failed too often for this account lately.
fn login_delayed(wait: Duration) -> warp::reply::Response {
    let seconds = limits::retry_after_s(wait);
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!(
            "too many failed logins from your address for this account; try again in {seconds} s"
        ),
    );
    error.retry_after_s = Some(seconds);
    error.into_response()
}

/// Reads and parses a JSON body of at most [`JSON_BODY_BYTES_MAX`] bytes (see
/// [`crate::input::read_json`] for the errors).
async fn read_json<T, S, B>(body: S) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    crate::input::read_json(body, JSON_BODY_BYTES_MAX).await
}
