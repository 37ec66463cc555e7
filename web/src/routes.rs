//! The HTTP routes: probes, metrics and the cluster view. Later routes (users, rooms, jobs,
//! the WebSocket gateway, the page) are added here as filters over the same [`AppState`].

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::AppState;
use crate::error::handle_rejection;

#[derive(Serialize)]
struct ClusterBody {
    node: String,
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
}

#[derive(Serialize)]
struct EntitiesBody {
    active: usize,
}

/// All routes, with JSON errors for every rejection.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());

    let readyz = {
        let state = state.clone();
        warp::path!("readyz").and(warp::get()).map(move || {
            let view = state.runtime.view();
            if view.settled {
                warp::reply::with_status("ready\n", StatusCode::OK).into_response()
            } else {
                warp::reply::with_status("joining the cluster\n", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        })
    };

    let metrics = {
        let handle = state.metrics.clone();
        warp::path!("metrics").and(warp::get()).map(move || {
            warp::reply::with_header(handle.render(), "content-type", "text/plain; version=0.0.4")
                .into_response()
        })
    };

    let cluster = {
        let state = state.clone();
        warp::path!("api" / "cluster")
            .and(warp::get())
            .map(move || {
                let view = state.runtime.view();
                let body = ClusterBody {
                    node: view.me.clone(),
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
                        })
                        .collect(),
                    entities: EntitiesBody {
                        active: state.runtime.active_entities(),
                    },
                };
                warp::reply::json(&body).into_response()
            })
    };

    let all = healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(cluster)
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
        .recover(handle_rejection)
        .unify()
        .boxed();
    // The page may talk to any node of its cluster (see `cors`).
    crate::cors::allow_cluster_origins(
        all,
        crate::cors::ClusterOrigins::from_config(state.runtime.config()),
    )
}
