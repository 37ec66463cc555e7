//! The API's contract: the OpenAPI 3.1 document `openapi.json` beside this file, compiled in
//! and served at `GET /api/openapi.json`, and the methods it documents for a path (the `Allow`
//! header of a 405 comes from it, so the header and the document cannot disagree).
//!
//! The document is written by hand and kept true by tests: the unit tests below check that it
//! is well-formed, that every `$ref` resolves and that its error codes are exactly those the
//! handlers produce; `node/tests/openapi.rs` checks against a live node that every documented
//! operation is served, that every route the node serves is documented, and fuzzes a live
//! 3-node cluster with schemathesis.

use std::sync::OnceLock;

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Methods an OpenAPI path item may hold, in the order an `Allow` header lists them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One documented path: its segments (`None` for a `{parameter}`) and its methods.
struct PathItem {
    segments: Vec<Option<String>>,
    methods: Vec<&'static str>,
}

impl PathItem {
    fn matches(&self, path: &str) -> bool {
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let mut template = self.segments.iter();
        loop {
            match (template.next(), segments.next()) {
                (None, None) => return true,
                (Some(None), Some(segment)) if !segment.is_empty() => {}
                (Some(Some(literal)), Some(segment)) if literal == segment => {}
                _ => return false,
            }
        }
    }
}

/// The document's paths, parsed once.
fn paths() -> &'static [PathItem] {
    static PATHS: OnceLock<Vec<PathItem>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let document: serde_json::Value = match serde_json::from_str(DOCUMENT) {
            Ok(document) => document,
            Err(error) => {
                // The unit tests parse it: a broken document never gets this far.
                tracing::error!(%error, "the compiled-in OpenAPI document is not JSON");
                return Vec::new();
            }
        };
        let Some(paths) = document.get("paths").and_then(|paths| paths.as_object()) else {
            return Vec::new();
        };
        paths
            .iter()
            .map(|(path, item)| PathItem {
                segments: path
                    .strip_prefix('/')
                    .unwrap_or(path)
                    .split('/')
                    .map(|segment| (!segment.starts_with('{')).then(|| segment.to_string()))
                    .collect(),
                methods: METHODS
                    .into_iter()
                    .filter(|method| item.get(*method).is_some())
                    .collect(),
            })
            .collect()
    })
}

/// The documented methods of `path` (a request path, without the query), for an `Allow`
/// header: `None` when the document has no such path.
pub fn allowed_methods(path: &str) -> Option<String> {
    let item = paths().iter().find(|item| item.matches(path))?;
    let methods: Vec<String> = item
        .methods
        .iter()
        .map(|method| method.to_ascii_uppercase())
        .collect();
    Some(methods.join(", "))
}

/// Adds the `Allow` header that RFC 9110 requires on a 405, from the document.
pub fn with_allow(path: &str, mut response: Response) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed_methods(path)
        && let Ok(value) = HeaderValue::from_str(&methods)
    {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// `GET /api/openapi.json`.
pub fn route() -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| {
            let mut response = Response::new(DOCUMENT.into());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response.into_response()
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => found.push(target),
                        _ => refs(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_well_formed() {
        let document = document();
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|version| version.starts_with("3.1.")),
            "an OpenAPI 3.1 document"
        );
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target}: only local references"));
            assert!(document.pointer(pointer).is_some(), "{target} resolves");
        }
        let mut operation_ids = BTreeSet::new();
        let paths = document["paths"].as_object().expect("paths");
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has an operationId"));
                assert!(operation_ids.insert(id), "operationId {id} is unique");
                let responses = operation["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} has responses"));
                assert!(
                    !responses.contains_key("default"),
                    "{method} {path}: list each status, not `default`"
                );
            }
        }
        // Links name operations that exist.
        let mut links = Vec::new();
        for item in paths.values() {
            for operation in item.as_object().expect("path item").values() {
                for response in operation["responses"].as_object().into_iter().flatten() {
                    for link in response.1["links"].as_object().into_iter().flatten() {
                        links.push(link.1["operationId"].as_str().expect("operationId"));
                    }
                }
            }
        }
        for link in links {
            assert!(operation_ids.contains(link), "link to {link}");
        }
    }

    #[test]
    fn allow_lists_the_documented_methods() {
        assert_eq!(allowed_methods("/api/rooms").as_deref(), Some("GET, POST"));
        assert_eq!(
            allowed_methods("/api/jobs/0123").as_deref(),
            Some("GET, DELETE")
        );
        assert_eq!(
            allowed_methods("/api/rooms/general/messages").as_deref(),
            Some("GET")
        );
        assert_eq!(allowed_methods("/").as_deref(), Some("GET"));
        assert_eq!(allowed_methods("/api/rooms//messages"), None);
        assert_eq!(allowed_methods("/api/nothing"), None);
        let response = with_allow(
            "/api/users/me",
            crate::error::ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "")
                .into_response(),
        );
        assert_eq!(
            response
                .headers()
                .get(header::ALLOW)
                .map(|value| value.as_bytes()),
            Some(&b"GET, PATCH"[..])
        );
    }

    /// The arguments of the call whose `(` is at the start of `text`, split at top-level
    /// commas (strings and nested brackets skipped).
    fn call_arguments(text: &str) -> Vec<String> {
        let mut arguments = vec![String::new()];
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for character in text.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if character == '\\' {
                    escaped = true;
                } else if character == '"' {
                    in_string = false;
                }
            } else {
                match character {
                    '"' => in_string = true,
                    '(' | '[' | '{' => {
                        depth += 1;
                        if depth == 1 {
                            continue;
                        }
                    }
                    ')' | ']' | '}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        arguments.push(String::new());
                        continue;
                    }
                    _ => {}
                }
            }
            if let Some(last) = arguments.last_mut() {
                last.push(character);
            }
        }
        arguments
            .iter()
            .map(|argument| argument.trim().to_string())
            .collect()
    }

    /// A string literal that can be an error code.
    fn code_literal(argument: &str) -> Option<String> {
        let code = argument.strip_prefix('"')?.strip_suffix('"')?;
        (!code.is_empty()
            && code
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte == b'_'))
        .then(|| code.to_string())
    }

    fn sources(dir: &Path, files: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                files.push((path.display().to_string(), text));
            }
        }
    }

    /// The error codes the handlers produce: literal codes given to `ApiError::new` or, in
    /// error.rs, `Self::new` (second argument), `bad_request` and `unprocessable` (first), every snake_case literal of
    /// `users/reply.rs`'s `classify`, and the room entity's codes.
    fn produced_codes() -> BTreeSet<String> {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut codes = BTreeSet::new();
        for (name, text) in &files {
            let text = text.split("\n#[cfg(test)]").next().unwrap_or(text);
            for (call, position) in [
                ("ApiError::new(", 1),
                // The named constructors in error.rs (`unauthorized`, `short_of_memory`, ...).
                ("Self::new(", 1),
                ("bad_request(", 0),
                ("unprocessable(", 0),
            ] {
                for (start, _) in text.match_indices(call) {
                    let arguments = call_arguments(&text[start + call.len() - 1..]);
                    if let Some(code) = arguments.get(position).and_then(|a| code_literal(a)) {
                        codes.insert(code);
                    }
                }
            }
            if name.ends_with("reply.rs") {
                let body = text
                    .split("fn classify(")
                    .nth(1)
                    .and_then(|rest| rest.split("\n}\n").next())
                    .expect("users/reply.rs has classify");
                for literal in body.split('"').skip(1).step_by(2) {
                    if let Some(code) = code_literal(&format!("\"{literal}\"")) {
                        codes.insert(code);
                    }
                }
            }
        }
        use actors::room::RoomError;
        for error in [
            RoomError::NoSuchRoom,
            RoomError::AlreadyExists,
            RoomError::Invalid(String::new()),
            RoomError::NotAMember,
            RoomError::NotTheOwner,
            RoomError::NotPrivate,
        ] {
            codes.insert(error.code().to_string());
        }
        codes
    }

    #[test]
    fn the_error_codes_are_those_the_handlers_produce() {
        let document = document();
        let documented: BTreeSet<String> = document["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum")
            .iter()
            .map(|code| code.as_str().expect("a string").to_string())
            .collect();
        let produced = produced_codes();
        assert!(
            produced.len() > 20,
            "the scan finds the codes: {produced:?}"
        );
        let undocumented: Vec<_> = produced.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "error codes produced but not in openapi.json's ErrorCode: {undocumented:?}"
        );
        let stale: Vec<_> = documented.difference(&produced).collect();
        assert!(
            stale.is_empty(),
            "error codes in openapi.json's ErrorCode that no handler produces: {stale:?}"
        );
    }

    #[test]
    fn arguments_are_split_at_the_top_level() {
        assert_eq!(
            call_arguments("(StatusCode::X, \"a_b\", format!(\"{x}, {y}\"))"),
            vec!["StatusCode::X", "\"a_b\"", "format!(\"{x}, {y}\")"]
        );
        assert_eq!(call_arguments("(\"c\")"), vec!["\"c\""]);
    }
}
