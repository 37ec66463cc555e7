//! The OpenAPI document (`web/src/openapi.json`, served at `/api/openapi.json`) against the
//! routes a real `node run` process serves: every documented operation is served (never the
//! router's 404 or a 405) and answers a status the document lists for it; every undocumented
//! method on a documented path is a 405 whose `Allow` header lists exactly the documented
//! methods; paths the document does not have are the router's 404; and every route declared in
//! web's sources (`warp::path!` with its method filter) is in the document.
//!
//! The schemathesis fuzzing of a 3-node cluster is `.ci/fuzz-api`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chaos::cluster::{ClusterBuilder, TestCluster};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// The operator route that stops the node: called last.
const DRAIN: &str = "/api/admin/drain";
/// Methods probed on every documented path (OPTIONS is the CORS preflight, TRACE unused).
const PROBED_METHODS: [&str; 6] = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"];
/// What the router's own 404 says (web/src/error.rs), as opposed to a handler's 404.
const NO_SUCH_ROUTE: &str = "no such route";

async fn node() -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .start()
        .await
        .expect("node starts")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

fn document() -> Value {
    serde_json::from_str(web::openapi::DOCUMENT).expect("openapi.json is JSON")
}

/// `(METHOD, /path/{param})` of every documented operation.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if PROBED_METHODS
                .iter()
                .chain(&["OPTIONS", "TRACE"])
                .any(|probed| probed.eq_ignore_ascii_case(method))
            {
                operations.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// A concrete request path for a documented template: parameters get values of their format
/// (that may name nothing that exists: the handler's 404 is a served route).
fn instantiate(template: &str) -> String {
    template
        .split('/')
        .enumerate()
        .map(|(index, segment)| {
            if !segment.starts_with('{') {
                return segment.to_string();
            }
            let parent = template.split('/').nth(index - 1).unwrap_or_default();
            match parent {
                "jobs" => "0123456789abcdef0123456789abcdef".to_string(),
                "rooms" => "no-such-room".to_string(),
                "static" => "app.js".to_string(),
                _ => "u-openapi-probe".to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The template with parameters reduced to `{}`, to compare web's sources with the document.
fn shape(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends `method path` the way a client of that route would (a session token, a body). The
/// operator routes need no token from loopback.
async fn send(client: &Client, base: &str, method: &str, path: &str) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = client.request(method.clone(), format!("{base}{path}"));
    let operator = ["/metrics", "/api/cluster", DRAIN].contains(&path);
    if !operator {
        request = request.bearer_auth(chaos::client::test_token("openapi-probe"));
    }
    if path == "/api/users/verify" {
        request = request.query(&[("token", "not-a-verification-token")]);
    }
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) && !operator {
        request = request
            .header("content-type", "application/json")
            .body("{}");
    }
    request.send().await.expect("request sent")
}

/// Its status and, when the body is the JSON error shape, its message.
async fn status_and_message(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    (status, message.to_string())
}

#[tokio::test]
async fn the_document_matches_the_routes_served() {
    let cluster = node().await;
    let base = cluster.http_url("n1");
    let client = client();
    let document = document();

    // The served document is the compiled one.
    let served: Value = client
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("the served document is JSON");
    assert_eq!(
        served, document,
        "GET /api/openapi.json serves openapi.json"
    );

    let operations = documented_operations(&document);
    assert!(operations.len() >= 25, "{operations:?}");
    let mut failures = Vec::new();

    probe_other_methods(&client, &base, &document, &mut failures).await;
    probe_unknown_paths(&client, &base, &mut failures).await;

    // Every documented operation is served, with a status it documents; the drain last, as it
    // stops the node.
    let (last, operations): (Vec<_>, Vec<_>) = operations
        .iter()
        .partition(|(method, template)| method == "POST" && template == DRAIN);
    assert_eq!(last.len(), 1, "the drain is documented");
    for (method, template) in operations.into_iter().chain(last) {
        let path = instantiate(template);
        let response = send(&client, &base, method, &path).await;
        let (status, message) = status_and_message(response).await;
        let documented = &document["paths"][template][method.to_ascii_lowercase()]["responses"];
        if status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND && message == NO_SUCH_ROUTE)
        {
            failures.push(format!(
                "{method} {path}: documented but not served ({status})"
            ));
        } else if documented.get(status.as_str()).is_none() {
            failures.push(format!(
                "{method} {path}: answered {status} ({message}), which the document does not list"
            ));
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The drain was served: the node leaves (readiness goes, then the process).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(ready) if ready.status() == StatusCode::OK => {}
            _ => break,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drained node still says it is ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn probe_other_methods(
    client: &Client,
    base: &str,
    document: &Value,
    failures: &mut Vec<String>,
) {
    // Undocumented methods on documented paths: 405 naming exactly the documented methods.
    for (template, item) in document["paths"].as_object().expect("paths") {
        let path = instantiate(template);
        let allowed: Vec<String> = ["get", "put", "post", "delete", "options", "head", "patch"]
            .into_iter()
            .filter(|method| item.get(*method).is_some())
            .map(str::to_ascii_uppercase)
            .collect();
        for method in PROBED_METHODS {
            if allowed.iter().any(|allowed| allowed == method) {
                continue;
            }
            let response = send(client, base, method, &path).await;
            let allow = response
                .headers()
                .get("allow")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let status = response.status();
            if status != StatusCode::METHOD_NOT_ALLOWED {
                failures.push(format!(
                    "{method} {path}: {status}, expected 405 (undocumented)"
                ));
            } else if allow.as_deref() != Some(allowed.join(", ").as_str()) {
                failures.push(format!(
                    "{method} {path}: Allow {allow:?}, expected {:?}",
                    allowed.join(", ")
                ));
            }
        }
    }
}

async fn probe_unknown_paths(client: &Client, base: &str, failures: &mut Vec<String>) {
    // Paths the document does not have are the router's 404, for any method.
    for path in [
        "/api",
        "/api/users",
        "/api/users/u-1",
        "/api/rooms/general",
        "/api/jobs/0123456789abcdef0123456789abcdef/files",
        "/api/openapi.yaml",
        "/admin",
        "/static",
    ] {
        for method in ["GET", "POST"] {
            let (status, message) =
                status_and_message(send(client, base, method, path).await).await;
            if (status, message.as_str()) != (StatusCode::NOT_FOUND, NO_SUCH_ROUTE) {
                failures.push(format!(
                    "{method} {path}: {status} ({message}), expected the router's 404"
                ));
            }
        }
    }
}

/// `(METHOD, /a/{}/b)` of every route web declares: each `warp::path!(...)` outside tests,
/// with the method filter that follows it (before the next route's path).
fn declared_routes() -> BTreeSet<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/src");
    let mut files = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("web/src is readable")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        let text = text.split("\n#[cfg(test)]").next().unwrap_or(&text);
        let mut declarations: Vec<(usize, String)> = text
            .match_indices("warp::path!(")
            .map(|(start, call)| {
                let arguments = &text[start + call.len()..];
                let end = arguments.find(')').expect("warp::path! closes");
                let segments: Vec<String> = arguments[..end]
                    .split('/')
                    .map(|segment| {
                        let segment = segment.trim();
                        match segment.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                            Some(literal) => literal.to_string(),
                            None => "{}".to_string(),
                        }
                    })
                    .collect();
                (start, format!("/{}", segments.join("/")))
            })
            .collect();
        // `warp::path::end()` is the page's `/`.
        declarations.extend(
            text.match_indices("warp::path::end()")
                .map(|(start, _)| (start, "/".to_string())),
        );
        declarations.sort();
        for (index, (start, path)) in declarations.iter().enumerate() {
            let until = declarations
                .get(index + 1)
                .map_or(text.len(), |(next, _)| *next);
            let methods: Vec<&str> = ["get", "put", "post", "delete", "patch"]
                .into_iter()
                .filter(|method| text[*start..until].contains(&format!("warp::{method}()")))
                .collect();
            assert!(
                !methods.is_empty(),
                "{}: the route {path} has no method filter this scan knows",
                file.display()
            );
            for method in methods {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_route_declared_in_web_is_documented() {
    let declared = declared_routes();
    assert!(
        declared.len() >= 25,
        "the scan finds the routes: {declared:?}"
    );
    let documented: BTreeSet<(String, String)> = documented_operations(&document())
        .into_iter()
        .map(|(method, path)| (method, shape(&path)))
        .collect();
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes served but not in openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&declared).collect();
    assert!(
        unserved.is_empty(),
        "operations in openapi.json that web declares no route for: {unserved:?}"
    );
}
