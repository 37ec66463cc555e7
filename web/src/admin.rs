//! The operator's routes and the public list of nodes.
//!
//! - `GET /api/nodes` (public): the members and their HTTP addresses, what a page or client
//!   needs to reconnect to another node.
//! - `GET /metrics`, `GET /api/cluster` (the whole view: incarnations, protocols, entity counts,
//!   this node's version) and `POST /api/admin/drain` (graceful leave, as SIGTERM) are the
//!   operator's: with `web.admin_token` set they need `Authorization: Bearer <admin token>`;
//!   without one they are served only by a node whose HTTP address is loopback (the `node`
//!   binary refuses to start beyond loopback without an admin token).

use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::error::ApiError;

/// The version of this build, as `/api/cluster` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Serialize)]
struct NodesBody {
    node: String,
    members: Vec<NodeBody>,
}

#[derive(Serialize)]
struct NodeBody {
    id: String,
    state: &'static str,
    since_ms: u64,
    http_addr: String,
}

#[derive(Serialize)]
struct ClusterBody {
    node: String,
    version: &'static str,
    protocol: u8,
    incarnation: u64,
    epoch: u64,
    settled: bool,
    members: Vec<MemberBody>,
    entities: EntitiesBody,
}

#[derive(Serialize)]
struct MemberBody {
    id: String,
    state: &'static str,
    since_ms: u64,
    incarnation: u64,
    http_addr: String,
    /// The cluster protocol this node speaks with the member.
    protocol: u8,
}

#[derive(Serialize)]
struct EntitiesBody {
    active: usize,
}

#[derive(Serialize)]
struct DrainBody {
    node: String,
    draining: bool,
}

/// Requests that may call the operator's routes (see the module's doc).
fn operator(
    state: &AppState,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone + use<> {
    let token = state.web.admin_token.clone().map(Arc::<str>::from);
    let loopback = state
        .runtime
        .config()
        .node(state.runtime.node_id())
        .is_ok_and(|node| node.http_addr.ip().is_loopback());
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let token = token.clone();
            async move {
                let presented = header
                    .as_deref()
                    .and_then(|value| value.strip_prefix("Bearer "));
                match (&token, presented) {
                    (Some(token), Some(presented)) if constant_time_eq(token, presented) => Ok(()),
                    (Some(_), _) => Err(warp::reject::custom(ApiError::unauthorized(
                        "this route needs the admin token: `Authorization: Bearer <web.admin_token>`",
                    ))),
                    (None, _) if loopback => Ok(()),
                    (None, _) => Err(warp::reject::custom(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "set `web.admin_token` to use the operator routes of a node beyond loopback",
                    ))),
                }
            }
        })
        .untuple_one()
}

fn constant_time_eq(expected: &str, presented: &str) -> bool {
    let (expected, presented) = (expected.as_bytes(), presented.as_bytes());
    let mut difference = expected.len() ^ presented.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ presented.get(index).copied().unwrap_or(0));
    }
    difference == 0
}

/// `/api/nodes`, `/metrics`, `/api/cluster` and `/api/admin/drain`.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let nodes = {
        let state = state.clone();
        warp::path!("api" / "nodes").and(warp::get()).map(move || {
            let view = state.runtime.view();
            let body = NodesBody {
                node: view.me.clone(),
                members: view
                    .members
                    .iter()
                    .map(|member| NodeBody {
                        id: member.id.clone(),
                        state: member.state.as_str(),
                        since_ms: member.since_ms,
                        http_addr: member.http_addr.to_string(),
                    })
                    .collect(),
            };
            warp::reply::json(&body).into_response()
        })
    };

    let metrics = {
        let handle = state.metrics.clone();
        warp::path!("metrics")
            .and(warp::get())
            .and(operator(&state))
            .map(move || {
                warp::reply::with_header(
                    handle.render(),
                    "content-type",
                    "text/plain; version=0.0.4",
                )
                .into_response()
            })
    };

    let cluster = {
        let state = state.clone();
        warp::path!("api" / "cluster")
            .and(warp::get())
            .and(operator(&state))
            .map(move || {
                let view = state.runtime.view();
                let body = ClusterBody {
                    node: view.me.clone(),
                    version: VERSION,
                    protocol: runtime::codec::PROTOCOL,
                    incarnation: state.runtime.incarnation(),
                    epoch: view.epoch,
                    settled: view.settled,
                    members: view
                        .members
                        .iter()
                        .map(|member| MemberBody {
                            id: member.id.clone(),
                            state: member.state.as_str(),
                            since_ms: member.since_ms,
                            incarnation: member.incarnation,
                            http_addr: member.http_addr.to_string(),
                            protocol: member.protocol,
                        })
                        .collect(),
                    entities: EntitiesBody {
                        active: state.runtime.active_entities(),
                    },
                };
                warp::reply::json(&body).into_response()
            })
    };

    let drain = {
        let state = state.clone();
        warp::path!("api" / "admin" / "drain")
            .and(warp::post())
            .and(operator(&state))
            .map(move || {
                tracing::info!("drain requested through the admin route");
                state.drain.notify_one();
                warp::reply::with_status(
                    warp::reply::json(&DrainBody {
                        node: state.runtime.node_id().to_string(),
                        draining: true,
                    }),
                    StatusCode::ACCEPTED,
                )
                .into_response()
            })
    };

    nodes
        .or(metrics)
        .unify()
        .or(cluster)
        .unify()
        .or(drain)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq("an-admin-token-1", "an-admin-token-1"));
        assert!(!constant_time_eq("an-admin-token-1", "an-admin-token-"));
        assert!(!constant_time_eq("an-admin-token-1", "an-admin-token-12"));
        assert!(!constant_time_eq("an-admin-token-1", ""));
    }
}
