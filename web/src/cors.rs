//! Cross-origin requests between the nodes of one cluster. The web page is served by one node
//! (its origin) and, when that node dies, carries on against another node: a different origin.
//! So every node answers CORS requests from the origins of the cluster's own nodes, and only
//! from them.
//!
//! The allowed origins are `http://<http_addr>` of every configured node (plus
//! `http://localhost:<port>` when that address is loopback: the same socket under the name a
//! browser is usually given) and the origin of `[users] public_url` when set. Credentials are
//! never allowed (the page sends its token in `Authorization`, not in cookies), there is no
//! wildcard, and a request from any other origin gets no CORS headers at all (its browser then
//! refuses to show it the response). Same-origin requests need none of this and are unchanged.
//! The CORS protocol itself (preflights, the allowed methods and headers) is `warp::cors()`'s.

use std::collections::BTreeSet;

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, header};
use warp::reply::Response;
use warp::{Filter, Reply};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_S: u32 = 600;
const ALLOWED_METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];
const ALLOWED_HEADERS: [&str; 2] = ["authorization", "content-type"];
/// Response headers the page reads on cross-origin answers.
const EXPOSED_HEADERS: [&str; 2] = ["location", "retry-after"];

/// The origins of the cluster's own nodes.
#[derive(Debug, Clone, Default)]
pub struct ClusterOrigins {
    origins: BTreeSet<String>,
}

impl ClusterOrigins {
    /// The origins of the nodes in the cluster's config and of `[users] public_url`.
    pub fn of_cluster(state: &crate::AppState) -> Self {
        Self::new(
            &state.runtime.config().nodes,
            state.app.users.public_url.as_deref(),
        )
    }

    pub fn new(nodes: &[runtime::config::NodeConfig], public_url: Option<&str>) -> Self {
        let mut origins = BTreeSet::new();
        for node in nodes {
            let address = node.http_addr;
            if address.ip().is_unspecified() {
                continue; // 0.0.0.0 is no origin a browser can have.
            }
            origins.insert(format!("http://{address}"));
            if address.ip().is_loopback() {
                origins.insert(format!("http://localhost:{}", address.port()));
            }
        }
        if let Some(origin) = public_url.and_then(origin_of) {
            origins.insert(origin);
        }
        Self { origins }
    }

    /// The allowed origins, e.g. for a Content-Security-Policy.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.origins.iter().map(String::as_str)
    }
}

/// `scheme://host[:port]` of a URL, if it has one.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || !matches!(scheme, "http" | "https") {
        return None;
    }
    // Only a valid authority makes an origin a browser can send (and that warp accepts).
    authority.parse::<warp::http::uri::Authority>().ok()?;
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// Wraps every route with `warp::cors()` limited to the cluster's origins: it answers their
/// preflights and adds `Access-Control-Allow-Origin` for them to every response. A request from
/// any other origin is answered without CORS headers (its browser then hides the answer), as
/// a same-origin request is: never refused here.
pub fn allow_cluster_origins(
    routes: BoxedFilter<(Response,)>,
    origins: ClusterOrigins,
) -> BoxedFilter<(Response,)> {
    let cors = warp::cors()
        .allow_origins(origins.iter())
        .allow_methods(ALLOWED_METHODS)
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(PREFLIGHT_MAX_AGE_S);
    // warp's filter rejects a request from an origin it does not allow (and a preflight asking
    // for another method or header): the routes then answer it as they would anyone.
    let shared = routes
        .clone()
        .with(cors)
        .map(Reply::into_response)
        .or(routes)
        .unify();
    // The answer depends on the origin: caches must keep one per origin.
    warp::header::optional::<String>("origin")
        .and(shared)
        .map(|origin: Option<String>, mut response: Response| {
            if origin.is_some() {
                response
                    .headers_mut()
                    .append(header::VARY, HeaderValue::from_static("origin"));
            }
            response
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use warp::http::StatusCode;

    use super::*;

    #[test]
    fn origins_come_from_urls() {
        assert_eq!(
            origin_of("https://Hub.example.com/path?x").as_deref(),
            Some("https://hub.example.com")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8101").as_deref(),
            Some("http://127.0.0.1:8101")
        );
        assert_eq!(origin_of("ftp://example.com"), None);
        assert_eq!(origin_of("example.com"), None);
    }

    #[test]
    fn invalid_public_urls_give_no_origin() {
        assert_eq!(origin_of("http://bad host/"), None);
        assert_eq!(origin_of("https://"), None);
        let origins = ClusterOrigins::new(&[], Some("http://bad host"));
        assert_eq!(origins.iter().count(), 0);
    }

    fn wrapped() -> BoxedFilter<(Response,)> {
        let routes = warp::path!("api" / "thing")
            .map(|| Response::new(Vec::<u8>::from("ok").into()))
            .boxed();
        let origins = ClusterOrigins {
            origins: ["http://127.0.0.1:8102".to_string()].into(),
        };
        allow_cluster_origins(routes, origins)
    }

    #[tokio::test]
    async fn only_cluster_origins_get_cors_headers() {
        let filter = wrapped();
        let allowed = warp::test::request()
            .path("/api/thing")
            .header("origin", "http://127.0.0.1:8102")
            .reply(&filter)
            .await;
        assert_eq!(
            allowed.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(&HeaderValue::from_static("http://127.0.0.1:8102"))
        );
        assert!(
            allowed
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none()
        );
        let foreign = warp::test::request()
            .path("/api/thing")
            .header("origin", "http://evil.example")
            .reply(&filter)
            .await;
        assert_eq!(
            foreign.status(),
            StatusCode::OK,
            "answered, just not shared"
        );
        assert!(
            foreign
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
    }

    #[tokio::test]
    async fn preflights_are_answered_for_cluster_origins_only() {
        let filter = wrapped();
        let preflight = |origin: &'static str| {
            warp::test::request()
                .method("OPTIONS")
                .path("/api/thing")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
        };
        let allowed = preflight("http://127.0.0.1:8102").reply(&filter).await;
        assert!(allowed.status().is_success(), "{}", allowed.status());
        assert_eq!(
            allowed.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(&HeaderValue::from_static("http://127.0.0.1:8102"))
        );
        let headers = allowed
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        for name in ALLOWED_HEADERS {
            assert!(headers.contains(name), "{headers}");
        }
        assert!(
            allowed
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none()
        );
        let foreign = preflight("http://evil.example").reply(&filter).await;
        assert!(
            foreign
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
    }
}
