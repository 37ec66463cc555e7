//! The HTTP routes: probes, then the operator's (`admin`) and the application's. Later routes (users, rooms, jobs,
//! the WebSocket gateway, the page) are added here as filters over the same [`AppState`].
//!
//! **API Boundary.** Every input a client sends, and its bound (checked before anything is
//! asked of an entity; a number out of range is a 400 naming the parameter, never a panic,
//! an overflow or a full scan):
//!
//! | input | bound | beyond it |
//! |---|---|---|
//! | request line and headers | 64 KiB in all ([`crate::REQUEST_HEAD_BYTES_MAX`]), 100 headers | 431 (hyper), connection closed |
//! | request URI | 64 KiB (the `http` crate's limit is just below) | 414 or 431 (hyper) |
//! | time to send the request head | 30 s | connection dropped |
//! | token (`Authorization: Bearer`, `?token=`) | 4 KiB | 401 |
//! | `POST /api/rooms` body `{name}` | 4 KiB; a name of 1 to 80 characters | 413; 400; 422 |
//! | room id in `/api/rooms/{id}/messages` | 1 to 128 bytes of ASCII letters, digits, `-_.:` | 400 `invalid_id` |
//! | `after`, `before` (history) | whole numbers from 0 to 2^53 − 1 | 400 `invalid_parameter` |
//! | `limit` (history) | whole number, clamped to 1..=200 | 400 if not a whole number |
//! | any other query parameter, or one given twice | none accepted | 400 |
//! | a query value | 12 KiB | 400 |
//! | account JSON bodies (`/api/users/*`) | 16 KiB; email ≤ 254 bytes, password ≤ 1 KiB, name ≤ 64 and bio ≤ 500 characters | 413; 400 |
//! | `PUT /api/users/me/photo` | `users.photo_bytes_max`, and its pixel limits | 413; 422 |
//! | user id in `/api/users/{id}/photo`, verification token | their formats (checked before any lookup) | 404; 400 |
//! | `POST /api/jobs` body | `jobs.input_bytes_max` + 64 KiB, by `Content-Length` up front and counted as it streams | 413 |
//! | upload form | 8 parts; fields `file`, `target`, `width`, `height`, `duration_ms`; text fields 256 bytes | 400 |
//! | `width`, `height`, `duration_ms` | whole numbers (u32, u32, u64), then the converter's limits | 422 |
//! | job id in `/api/jobs/{id}` and `.../download` | 32 lowercase hexadecimal digits | 400 `invalid_id` |
//! | `limit` (job list) | whole number, clamped to 1..=100 | 400 if not a whole number |
//! | WebSocket message | 1 MiB transport limit; `sessions.frame_bytes_max` for the session | close 1009; `too_large` error frame |
//! | WebSocket frames of any kind | 4 × `sessions.messages_per_second`, bursts of 2 s of that | close 1008 |
//! | WebSocket data frames | `sessions.messages_per_second`, bursts of twice that | `rate_limited` error frame |
//! | frames queued to a WebSocket client (pongs too) | `sessions.outbound_queue_max` | close 4008 |
//! | a WebSocket upgrade, a job or photo upload while the node is above its memory pressure mark (`[limits]`) | refused | 503 `short_of_memory` |
//! | login, sign-up, verification resend, uploads, room creation, history (`crate::limits`) | `[web.limits]` rates per client address and, once the token is read, per user | 429 `rate_limited` with `Retry-After` |
//! | failed logins from one client address for one account | `web.limits.login_failures_free`, then a wait of 2, 4, 8... s (at most `login_delay_max_s`) before each attempt | 429 `too_many_attempts` with `Retry-After` |
//! | job files a user keeps stored (inputs and outputs) | `jobs.stored_bytes_per_user_max`; finished jobs expire after `jobs.finished_ttl_s` | 413 `storage_quota_exceeded` |

use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::error::handle_rejection;

/// All routes, with JSON errors for every rejection.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());

    let readyz = {
        let state = state.clone();
        warp::path!("readyz").and(warp::get()).map(move || {
            let view = state.runtime.view();
            let leaving = view
                .member(&view.me)
                .is_some_and(|me| me.state != runtime::MemberState::Up);
            if leaving {
                // Draining: the load balancer sends new clients elsewhere.
                warp::reply::with_status("leaving the cluster\n", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            } else if view.settled {
                warp::reply::with_status("ready\n", StatusCode::OK).into_response()
            } else {
                warp::reply::with_status("joining the cluster\n", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        })
    };

    let all = healthz
        .or(readyz)
        .unify()
        .or(crate::admin::routes(state.clone()))
        .unify()
        .or(crate::ws::route(state.clone()))
        .unify()
        .or(crate::rooms::routes(state.clone()))
        .unify()
        .or(crate::jobs::routes(state.clone()))
        .unify()
        .or(crate::users::routes(state.clone()))
        .unify()
        .or(crate::page::routes(state.clone()))
        .unify()
        .or(crate::openapi::route())
        .unify()
        .recover(handle_rejection)
        .unify();
    // A 405 names the methods the path has (RFC 9110), as the OpenAPI document lists them.
    let all = warp::path::full()
        .and(all)
        .map(|path: warp::path::FullPath, response| {
            crate::openapi::with_allow(path.as_str(), response)
        })
        .boxed();
    // The page may talk to any node of its cluster (see `cors`).
    crate::cors::allow_cluster_origins(all, crate::cors::ClusterOrigins::of_cluster(&state))
}
