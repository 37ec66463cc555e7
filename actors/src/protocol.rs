//! The WebSocket protocol (JSON text frames), as in DESIGN.md: what clients send, what the
//! server sends back, and the error codes.

use serde::{Deserialize, Serialize};

/// A frame from a client. Unknown `type`s and missing fields are errors, not panics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Join {
        room: String,
        #[serde(default)]
        since: Option<u64>,
    },
    Post {
        room: String,
        id: String,
        text: String,
    },
    Leave {
        room: String,
    },
    Ping,
}

/// Frame types a client may send, for the `unknown_type` error message.
pub const CLIENT_FRAME_TYPES: &str = "join, post, leave, ping";

/// Why a client frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
}

/// Parses a client's text frame into a [`ClientFrame`] or a specific error.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| FrameError {
        code: "invalid_json",
        message: format!("frame is not JSON: {error}"),
    })?;
    let Some(kind) = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
    else {
        return Err(FrameError {
            code: "invalid_frame",
            message: "frame needs a string field \"type\"".into(),
        });
    };
    if !["join", "post", "leave", "ping"].contains(&kind.as_str()) {
        return Err(FrameError {
            code: "unknown_type",
            message: format!("unknown frame type {kind:?}; expected one of {CLIENT_FRAME_TYPES}"),
        });
    }
    serde_json::from_value(value).map_err(|error| FrameError {
        code: "invalid_frame",
        message: format!("invalid {kind} frame: {error}"),
    })
}

/// A frame to a client. Borrowed fields: frames are rendered once and sent as text.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Joined {
        room: &'a str,
        head: u64,
    },
    Message {
        room: &'a str,
        seq: u64,
        id: &'a str,
        user: &'a str,
        name: &'a str,
        text: &'a str,
        ts: u64,
    },
    Ack {
        room: &'a str,
        id: &'a str,
        seq: u64,
    },
    Left {
        room: &'a str,
    },
    Pong,
    /// Who is in a room: users now listed (`joins`) and no longer listed (`leaves`), and how
    /// many are present (`count`, exact, also beyond the listed bound). Right after a
    /// successful first join, one with every listed user as `joins`.
    Presence {
        room: &'a str,
        joins: Vec<PresentUser<'a>>,
        leaves: Vec<PresentUser<'a>>,
        count: usize,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

/// A user in a `presence` frame.
#[derive(Debug, Serialize)]
pub struct PresentUser<'a> {
    pub user: &'a str,
    pub name: &'a str,
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"r","since":4}"#),
            Ok(ClientFrame::Join {
                room: "r".into(),
                since: Some(4)
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"r"}"#),
            Ok(ClientFrame::Join {
                room: "r".into(),
                since: None
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"post","room":"r","id":"c1","text":"hi"}"#),
            Ok(ClientFrame::Post {
                room: "r".into(),
                id: "c1".into(),
                text: "hi".into()
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn bad_frames_get_specific_codes() {
        assert_eq!(
            parse_client_frame("not json").map_err(|error| error.code),
            Err("invalid_json")
        );
        assert_eq!(
            parse_client_frame(r#"{"room":"r"}"#).map_err(|error| error.code),
            Err("invalid_frame")
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"dance"}"#).map_err(|error| error.code),
            Err("unknown_type")
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"post","room":"r"}"#).map_err(|error| error.code),
            Err("invalid_frame")
        );
    }

    #[test]
    fn server_frames_render_as_the_protocol_says() {
        let frame = ServerFrame::Error {
            code: "not_joined",
            message: "join first",
            reference: Some("c1"),
        }
        .to_json();
        assert_eq!(
            frame,
            r#"{"type":"error","code":"not_joined","message":"join first","ref":"c1"}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
