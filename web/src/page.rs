//! The web page: `GET /` (the app shell), `GET /static/{file}` (its stylesheet, JavaScript
//! modules and icon; the icon also as `/favicon.ico`) and `GET /page/config` (what the page
//! needs to know about this node).
//!
//! The files live in `web/static/` and are compiled into the binary, so a node serves the
//! same page from whatever directory it runs in, and there is no build step: what is in the
//! repository is what the browser runs. Every answer carries an ETag (a hash of the bytes) and
//! `Cache-Control: no-cache`, so browsers revalidate (a 304 on loopback costs next to nothing)
//! and never run a stale module after an upgrade.
//!
//! The shell is served with a Content-Security-Policy that allows scripts and styles from this
//! origin only, and network connections to the cluster's own nodes only (see `cors`): even a
//! rendering bug could not load or send anything elsewhere.

use std::sync::Arc;

use actors::config::MailerKind;
use runtime::config::ClusterConfig;
use serde::Serialize;
use sha2::{Digest, Sha256};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::cors::ClusterOrigins;
use crate::error::ApiError;

/// One file of the page, as compiled in.
struct StaticFile {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! static_file {
    ($name:literal, $content_type:expr) => {
        StaticFile {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../static/", $name)),
        }
    };
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/static/`. A new module must be listed here (and preloaded in
/// `index.html`).
const STATIC_FILES: [StaticFile; 12] = [
    static_file!("app.css", CSS),
    static_file!("icon.svg", "image/svg+xml"),
    static_file!("app.js", JAVASCRIPT),
    static_file!("dom.js", JAVASCRIPT),
    static_file!("session.js", JAVASCRIPT),
    static_file!("cluster.js", JAVASCRIPT),
    static_file!("connection.js", JAVASCRIPT),
    static_file!("auth.js", JAVASCRIPT),
    static_file!("chat.js", JAVASCRIPT),
    static_file!("convert.js", JAVASCRIPT),
    static_file!("profile.js", JAVASCRIPT),
    static_file!("statusbar.js", JAVASCRIPT),
];

const INDEX_HTML: &[u8] = include_bytes!("../static/index.html");

/// A file ready to serve: its bytes, type and validator.
struct Prepared {
    content_type: &'static str,
    bytes: &'static [u8],
    etag: HeaderValue,
}

impl Prepared {
    fn new(content_type: &'static str, bytes: &'static [u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let hex: String = digest[..12]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            content_type,
            bytes,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header"),
        }
    }

    /// 200 with the bytes, or 304 when the browser already has them.
    fn respond(&self, if_none_match: Option<&str>) -> Response {
        let fresh = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == self.etag)
        });
        let mut response = if fresh {
            let mut response = Response::new(Vec::<u8>::new().into());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(self.bytes.into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// What the page asks a node about itself (`GET /page/config`).
#[derive(Clone, Serialize)]
struct PageConfig {
    /// This node's id.
    node: String,
    /// `outbox` or `smtp`: with `outbox`, no mail leaves the machine and the page says where
    /// to find it.
    mailer: &'static str,
    /// The directory this node writes mails to, with the `outbox` mailer.
    outbox_dir: Option<String>,
}

/// `/`, `/static/{file}` and `/page/config`.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(Response,)> {
    let config = state.runtime.config();
    let index = Arc::new(Prepared::new("text/html; charset=utf-8", INDEX_HTML));
    let security_headers = Arc::new(shell_headers(&ClusterOrigins::of_cluster(&state)));
    let files: Arc<Vec<(&'static str, Prepared)>> = Arc::new(
        STATIC_FILES
            .iter()
            .map(|file| (file.name, Prepared::new(file.content_type, file.bytes)))
            .collect(),
    );
    let page_config = page_config(config, state.app.users.mailer, state.runtime.node_id());

    let shell = warp::path::end()
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(move |if_none_match: Option<String>| {
            let mut response = index.respond(if_none_match.as_deref());
            for (name, value) in security_headers.iter() {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            response
        });

    let assets = warp::path!("static" / String)
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(move |name: String, if_none_match: Option<String>| {
            match files.iter().find(|(file, _)| *file == name) {
                Some((_, file)) => file.respond(if_none_match.as_deref()),
                None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file")
                    .into_response(),
            }
        });

    // Browsers ask for /favicon.ico on pages without an icon link (the activation page).
    let favicon = {
        let icon = Arc::new(Prepared::new(
            "image/svg+xml",
            include_bytes!("../static/icon.svg"),
        ));
        warp::path!("favicon.ico")
            .and(warp::get())
            .and(warp::header::optional::<String>("if-none-match"))
            .map(move |if_none_match: Option<String>| icon.respond(if_none_match.as_deref()))
    };

    let config_route = warp::path!("page" / "config")
        .and(warp::get())
        .map(move || {
            let mut response = warp::reply::json(&page_config).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        });

    shell
        .or(assets)
        .unify()
        .or(favicon)
        .unify()
        .or(config_route)
        .unify()
        .boxed()
}

fn page_config(config: &ClusterConfig, mailer: MailerKind, node: &str) -> PageConfig {
    let (mailer, outbox_dir) = match mailer {
        MailerKind::Outbox => (
            "outbox",
            Some(
                config
                    .node_data_dir(node)
                    .join(actors::mailer::OUTBOX_DIR)
                    .display()
                    .to_string(),
            ),
        ),
        MailerKind::Smtp => ("smtp", None),
    };
    PageConfig {
        node: node.to_string(),
        mailer,
        outbox_dir,
    }
}

/// Headers of the shell: a CSP allowing this origin and the cluster's nodes (HTTP and
/// WebSocket), nothing else; no referrer; no framing.
fn shell_headers(origins: &ClusterOrigins) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut nodes = String::new();
    for origin in origins.iter() {
        nodes.push(' ');
        nodes.push_str(origin);
        if let Some(rest) = origin.strip_prefix("http") {
            // ws://host for http://host, wss://host for https://host.
            nodes.push_str(" ws");
            nodes.push_str(rest);
        }
    }
    let image_nodes: String = origins.iter().flat_map(|origin| [" ", origin]).collect();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'{image_nodes}; \
         connect-src 'self'{nodes}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    let mut headers = vec![
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    match HeaderValue::from_str(&policy) {
        Ok(value) => headers.push((header::CONTENT_SECURITY_POLICY, value)),
        Err(error) => {
            tracing::error!(%error, "the page's Content-Security-Policy is not a valid header")
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_shell_preloads_is_served() {
        let index = std::str::from_utf8(INDEX_HTML).expect("utf-8");
        for part in index.split("/static/").skip(1) {
            let name = part.split('"').next().expect("quoted path");
            assert!(
                STATIC_FILES.iter().any(|file| file.name == name),
                "index.html refers to /static/{name}, which is not in STATIC_FILES"
            );
        }
        for file in &STATIC_FILES {
            if file.name.ends_with(".js") {
                assert_eq!(file.content_type, JAVASCRIPT, "{}", file.name);
                assert!(
                    index.contains(&format!("/static/{}", file.name)),
                    "{} is not preloaded by index.html",
                    file.name
                );
            }
        }
    }

    #[test]
    fn modules_import_only_served_modules() {
        for file in STATIC_FILES
            .iter()
            .filter(|file| file.name.ends_with(".js"))
        {
            let text = std::str::from_utf8(file.bytes).expect("utf-8");
            for part in text.split("from './").skip(1) {
                let name = part.split('\'').next().expect("quoted module");
                assert!(
                    STATIC_FILES.iter().any(|served| served.name == name),
                    "{} imports ./{name}, which is not served",
                    file.name
                );
            }
        }
    }

    #[test]
    fn no_module_writes_html() {
        for file in STATIC_FILES
            .iter()
            .filter(|file| file.name.ends_with(".js"))
        {
            let text = std::str::from_utf8(file.bytes).expect("utf-8");
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(
                    !text.contains(sink),
                    "{} uses {sink}: render user text with textContent",
                    file.name
                );
            }
        }
    }

    #[test]
    fn etags_revalidate() {
        let file = Prepared::new("text/plain", b"hello");
        let response = file.respond(None);
        assert_eq!(response.status(), StatusCode::OK);
        let etag = response
            .headers()
            .get(header::ETAG)
            .expect("etag")
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(file.respond(Some(&etag)).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(file.respond(Some("\"other\"")).status(), StatusCode::OK);
    }
}
