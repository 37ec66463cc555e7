//! Reading what a client sends, with bounds: request bodies read up to a size (413 beyond),
//! JSON parsed without echoing values, query strings parsed into named, bounded numbers (400
//! naming the parameter otherwise), and ids checked for length and characters before they
//! reach an entity. Every HTTP input of the API and its bound is listed in `routes.rs`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::StatusCode;

use crate::error::ApiError;

/// Largest sequence number a client may name (`after`, `before`): JavaScript's largest safe
/// integer, which the page can represent exactly. Keeps `after + 2` and the like far from
/// overflow.
pub const SEQ_MAX: u64 = (1 << 53) - 1;
/// Longest room id: what the WebSocket `join` accepts too.
pub const ROOM_ID_BYTES_MAX: usize = 128;
/// Longest value of a query parameter we read (a token is the longest).
pub const QUERY_VALUE_BYTES_MAX: usize = crate::auth::TOKEN_BYTES_MAX * 3;

/// Most bytes of a refused body read and dropped before the answer (see [`drain`]).
pub const DRAIN_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest time spent draining a refused body.
pub const DRAIN_TIME_MAX: Duration = Duration::from_secs(1);

/// Reads and drops the rest of a refused body, up to [`DRAIN_BYTES_MAX`] and
/// [`DRAIN_TIME_MAX`]. hyper closes a connection whose request body was not read; closing a
/// socket with unread bytes resets it, and a client still sending then sees the reset instead
/// of our answer. Draining a little first lets a client that overshot by a moderate amount
/// read its 413 or 400.
pub async fn drain<S, B>(body: S)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIME_MAX;
    let mut body = std::pin::pin!(body);
    let mut drained = 0usize;
    while drained <= DRAIN_BYTES_MAX {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => drained = drained.saturating_add(chunk.remaining()),
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

/// A body stream that can be read by a parser and, once the parser is done with it (or gave
/// up), drained through a second handle; see [`shared_body`].
pub struct SharedBody<S> {
    inner: Arc<Mutex<Pin<Box<S>>>>,
}

/// Two handles on `body`: one to parse, one to [`drain`] what the parser left.
pub fn shared_body<S>(body: S) -> (SharedBody<S>, SharedBody<S>) {
    let inner = Arc::new(Mutex::new(Box::pin(body)));
    (
        SharedBody {
            inner: inner.clone(),
        },
        SharedBody { inner },
    )
}

impl<S: Stream> Stream for SharedBody<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.as_mut().poll_next(context)
    }
}

/// Reads a body of at most `bytes_max` bytes; 413 beyond (after a short [`drain`]).
pub async fn read_limited<S, B>(body: S, bytes_max: usize) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|error| {
            ApiError::bad_request("bad_body", format!("cannot read the body: {error}"))
        })?;
        if bytes.len().saturating_add(chunk.remaining()) > bytes_max {
            drain(body.as_mut()).await;
            return Err(too_large(bytes_max));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let read = part.len();
            chunk.advance(read);
        }
    }
    Ok(bytes)
}

pub fn too_large(bytes_max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than {bytes_max} bytes"),
    )
}

/// Reads and parses a JSON body of at most `bytes_max` bytes: 400 `invalid_json` for bad
/// syntax, 400 `missing_field` or `invalid_field` for the wrong shape, 413 beyond the size.
pub async fn read_json<T, S, B>(body: S, bytes_max: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_limited(body, bytes_max).await?;
    parse_json(&bytes)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data if error.to_string().starts_with("missing field") => {
                ApiError::bad_request("missing_field", field_message(&error))
            }
            Category::Data => ApiError::bad_request("invalid_field", field_message(&error)),
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {error}"),
            ),
        }
    })
}

/// serde's message without the echo of any value (it could be a password).
fn field_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message.as_str());
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        message.to_string()
    } else {
        "a field has the wrong type (strings expected)".to_string()
    }
}

fn invalid_parameter(message: String) -> ApiError {
    ApiError::bad_request("invalid_parameter", message)
}

/// A query string, split into known parameters; see [`Query::parse`].
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(&'static str, String)>,
}

impl Query {
    /// Splits `raw` (without the `?`) into parameters, each of which must be one of `known`
    /// and appear once; values are percent-decoded and at most [`QUERY_VALUE_BYTES_MAX`]
    /// bytes.
    pub fn parse(raw: &str, known: &[&'static str]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(&'static str, String)> = Vec::new();
        for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(name) = known.iter().find(|name| **name == key) else {
                let shown: String = key.chars().take(32).collect();
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown query parameter {shown:?}; this route reads {}",
                        known.join(", ")
                    ),
                ));
            };
            if pairs.iter().any(|(seen, _)| seen == name) {
                return Err(invalid_parameter(format!("`{name}` is given twice")));
            }
            if value.len() > QUERY_VALUE_BYTES_MAX {
                return Err(invalid_parameter(format!(
                    "`{name}` is longer than {QUERY_VALUE_BYTES_MAX} bytes"
                )));
            }
            pairs.push((name, crate::auth::percent_decode(value)));
        }
        Ok(Self { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `name` as a whole number from 0 to `max`; 400 naming it when it is anything else
    /// (negative, fractional, too large, empty).
    pub fn number(&self, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let wrong = || {
            invalid_parameter(format!(
                "`{name}` must be a whole number from 0 to {max}, not {:?}",
                shorten(text)
            ))
        };
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(wrong());
        }
        match text.parse::<u64>() {
            Ok(value) if value <= max => Ok(Some(value)),
            _ => Err(wrong()),
        }
    }

    /// A page size: `default` when absent, clamped to 1..=`max` when a whole number of any
    /// size; 400 naming it when it is not a whole number.
    pub fn limit(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default.clamp(1, max));
        };
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid_parameter(format!(
                "`{name}` must be a whole number (at most {max} are returned), not {:?}",
                shorten(text)
            )));
        }
        // Digits only: a value too large for usize is above the maximum.
        Ok(text.parse::<usize>().unwrap_or(usize::MAX).clamp(1, max))
    }
}

/// A value as shown back in an error: its first 32 characters.
fn shorten(text: &str) -> String {
    let mut shown: String = text.chars().take(32).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

/// A room id from a path: 1 to [`ROOM_ID_BYTES_MAX`] bytes of ASCII letters, digits, `-`,
/// `_`, `.` and `:` (room ids are generated slugs; this keeps anything else from reaching an
/// entity).
pub fn room_id(id: &str) -> Result<&str, ApiError> {
    let valid = !id.is_empty()
        && id.len() <= ROOM_ID_BYTES_MAX
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    if valid {
        Ok(id)
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("a room id has 1 to {ROOM_ID_BYTES_MAX} letters, digits, `-`, `_`, `.` or `:`"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified_without_echoing_values() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Login {
            email: String,
            password: String,
        }
        let error = parse_json::<Login>(b"{\"email\": \"a@b.co\"").expect_err("eof");
        assert_eq!(error.code, "invalid_json");
        let error = parse_json::<Login>(b"not json").expect_err("syntax");
        assert_eq!(error.code, "invalid_json");
        let error = parse_json::<Login>(b"{\"email\": \"a@b.co\"}").expect_err("missing");
        assert_eq!(error.code, "missing_field");
        assert!(error.message.contains("password"), "{}", error.message);
        let error = parse_json::<Login>(br#"{"email": "a@b.co", "password": 12345678901}"#)
            .expect_err("type");
        assert_eq!(error.code, "invalid_field");
        assert!(!error.message.contains("12345678901"), "{}", error.message);
        let error = parse_json::<Login>(br#"{"email": "a@b.co", "password": "x", "admin": true}"#)
            .expect_err("unknown");
        assert_eq!(error.code, "invalid_field");
        assert!(error.message.contains("admin"), "{}", error.message);
    }

    #[tokio::test]
    async fn bodies_are_cut_at_the_limit() {
        let chunks = |sizes: &[usize]| {
            futures_util::stream::iter(
                sizes
                    .iter()
                    .map(|size| Ok::<_, warp::Error>(bytes::Bytes::from(vec![b'x'; *size])))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            read_limited(chunks(&[3, 4]), 7).await.expect("fits").len(),
            7
        );
        let error = read_limited(chunks(&[3, 5]), 7)
            .await
            .expect_err("too large");
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn numbers_are_bounded_and_named() {
        let known = ["after", "before", "limit", "token"];
        let query = Query::parse("after=12&limit=7&token=a%2Bb", &known).expect("valid");
        assert_eq!(query.number("after", SEQ_MAX).expect("ok"), Some(12));
        assert_eq!(query.number("before", SEQ_MAX).expect("ok"), None);
        assert_eq!(query.limit("limit", 50, 200).expect("ok"), 7);
        assert_eq!(Query::default().limit("limit", 50, 200).expect("ok"), 50);
        for bad in [
            "-1",
            "1.5",
            "1e3",
            " 1",
            "",
            "0x10",
            "18446744073709551616",
            "9007199254740992",
            "+1",
        ] {
            let query = Query::parse(&format!("after={bad}"), &known).expect("parses");
            let error = query.number("after", SEQ_MAX).expect_err(bad);
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.message.contains("`after`"), "{}", error.message);
        }
        assert_eq!(
            Query::parse("after=9007199254740991", &known)
                .expect("parses")
                .number("after", SEQ_MAX)
                .expect("the largest allowed"),
            Some(SEQ_MAX)
        );
        for (text, limit) in [
            ("0", 1),
            ("200", 200),
            ("201", 200),
            ("99999999999999999999999999", 200),
        ] {
            let query = Query::parse(&format!("limit={text}"), &known).expect("parses");
            assert_eq!(query.limit("limit", 50, 200).expect(text), limit);
        }
        for text in ["-5", "ten", ""] {
            let query = Query::parse(&format!("limit={text}"), &known).expect("parses");
            let error = query.limit("limit", 50, 200).expect_err(text);
            assert!(error.message.contains("`limit`"), "{}", error.message);
        }
    }

    #[test]
    fn unknown_repeated_and_long_parameters_are_refused() {
        let known = ["after"];
        let error = Query::parse("sort=desc", &known).expect_err("unknown");
        assert_eq!(error.code, "unknown_parameter");
        let error = Query::parse("after=1&after=2", &known).expect_err("twice");
        assert!(error.message.contains("twice"), "{}", error.message);
        let long = format!("after={}", "1".repeat(QUERY_VALUE_BYTES_MAX + 1));
        assert!(Query::parse(&long, &known).is_err());
        assert!(Query::parse("", &known).is_ok());
        assert!(Query::parse("&&", &known).is_ok());
    }

    #[test]
    fn room_ids_are_checked() {
        assert!(room_id("general-1a2b3c").is_ok());
        assert!(room_id(&"a".repeat(ROOM_ID_BYTES_MAX)).is_ok());
        for bad in [
            String::new(),
            "a".repeat(ROOM_ID_BYTES_MAX + 1),
            "a b".into(),
            "%2e%2e".into(),
            "é".into(),
            "a\u{0}".into(),
        ] {
            assert_eq!(room_id(&bad).expect_err(&bad).code, "invalid_id", "{bad:?}");
        }
    }
}
