//! A raw WebSocket client for the hostile clients: the upgrade written by hand, frames built
//! byte by byte (so they can be malformed, oversized, or sent without ever reading), and a
//! reader that parses what the server sends until it closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest upgrade response head read; a server's is a few hundred bytes.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most bytes of a refused upgrade's body read (its JSON error).
const REFUSAL_BODY_BYTES_MAX: usize = 4 * 1024;
/// The mask every frame of ours uses (the server must unmask whatever it is).
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// How an upgrade went.
pub enum Upgrade {
    /// 101: the stream now speaks WebSocket.
    Open(TcpStream),
    /// Another status, with the error code of its JSON body when it has one.
    Refused { status: u16, code: Option<String> },
    /// No answer in time, or the connection failed.
    Failed(String),
}

/// Connects to `address` and upgrades `/ws` with `token`, sending `early` (frames) in the same
/// write as the request. The response head is read byte by byte so that no frame after it is
/// consumed.
pub async fn upgrade(address: SocketAddr, token: &str, early: &[u8], timeout: Duration) -> Upgrade {
    let deadline = Instant::now() + timeout;
    let attempt = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let mut request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(early);
        stream
            .write_all(&request)
            .await
            .map_err(|error| format!("sending the upgrade: {error}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= RESPONSE_HEAD_BYTES_MAX {
                return Err(format!(
                    "a response head above {RESPONSE_HEAD_BYTES_MAX} bytes"
                ));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|error| format!("reading the upgrade answer: {error}"))?;
            head.push(byte);
        }
        Ok::<(TcpStream, String), String>((stream, String::from_utf8_lossy(&head).into_owned()))
    };
    let (mut stream, head) = match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return Upgrade::Failed(error),
        Err(_) => return Upgrade::Failed(format!("no upgrade answer within {timeout:?}")),
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .unwrap_or(0);
    if status == 101 {
        return Upgrade::Open(stream);
    }
    // The body is a small JSON error; read what arrives before the deadline.
    let mut body = Vec::new();
    let mut buffer = [0u8; 1024];
    while body.len() < REFUSAL_BODY_BYTES_MAX {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => body.extend_from_slice(&buffer[..read]),
            _ => break,
        }
        if serde_json::from_slice::<Value>(&body).is_ok() {
            break;
        }
    }
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_string));
    Upgrade::Refused { status, code }
}

impl Upgrade {
    /// A short label for a refusal or failure (`503 short_of_memory`, `failed: ...`).
    pub fn describe(&self) -> String {
        match self {
            Upgrade::Open(_) => "upgraded".into(),
            Upgrade::Refused { status, code } => format!(
                "upgrade refused: {status} {}",
                code.as_deref().unwrap_or("")
            )
            .trim()
            .to_string(),
            Upgrade::Failed(error) => format!("upgrade failed: {error}"),
        }
    }

    /// A refusal a loaded node may give any client (503: short of memory, too many
    /// connections): the node protected itself, it did not fail.
    pub fn is_overload_refusal(&self) -> bool {
        matches!(self, Upgrade::Refused { status: 503, .. })
    }
}

/// A client frame with `first` as its first byte (FIN, RSV bits, opcode), masked or not.
pub fn frame_with(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        length @ 0..=125 => out.push(mask_bit | length as u8),
        length @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ MASK[index % 4]),
        );
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final, masked client frame of `opcode`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(0x80 | opcode, true, payload)
}

/// What the server did to a connection, as read until it ended.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// The close frame's code and reason, if one arrived.
    pub close: Option<(u16, String)>,
    /// Text frames before it.
    pub texts: u64,
    /// Error frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Bytes received.
    pub bytes: u64,
    /// EOF or reset within the deadline (with or without a close frame).
    pub ended: bool,
    /// The deadline passed with the connection still open.
    pub timed_out: bool,
}

impl Ending {
    pub fn close_code(&self) -> Option<u16> {
        self.close.as_ref().map(|(code, _)| *code)
    }

    pub fn describe(&self) -> String {
        match &self.close {
            Some((code, reason)) if reason.is_empty() => format!("close {code}"),
            Some((code, reason)) => format!("close {code} {reason:?}"),
            None if self.ended => "ended without a close frame".into(),
            None => "still open".into(),
        }
    }
}

/// Reads server frames until the connection ends, a close frame arrives, or `deadline`.
pub async fn read_until_end(mut reader: impl AsyncRead + Unpin, deadline: Instant) -> Ending {
    let mut ending = Ending::default();
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buffer)).await {
            Err(_) => {
                ending.timed_out = true;
                return ending;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                ending.ended = true;
                return ending;
            }
            Ok(Ok(read)) => {
                ending.bytes += read as u64;
                bytes.extend_from_slice(&buffer[..read]);
            }
        }
        // Whole frames (server frames are never masked).
        while let Some((opcode, payload, consumed)) = next_server_frame(&bytes) {
            bytes.drain(..consumed);
            match opcode {
                0x1 => {
                    ending.texts += 1;
                    if let Ok(frame) = serde_json::from_slice::<Value>(&payload)
                        && frame["type"] == "error"
                    {
                        let code = frame["code"].as_str().unwrap_or("unknown").to_string();
                        *ending.errors.entry(code).or_default() += 1;
                    }
                }
                0x8 => {
                    ending.close = Some(if payload.len() >= 2 {
                        (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )
                    } else {
                        // No status code in the close frame (RFC 6455's 1005).
                        (1005, String::new())
                    });
                    return ending;
                }
                _ => {}
            }
        }
    }
}

/// The first whole frame of `bytes`: `(opcode, payload, bytes consumed)`.
fn next_server_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let (length, header) = match bytes[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(raw), 10)
        }
        length => (u64::from(length), 2),
    };
    let end = header + usize::try_from(length).ok()?;
    if bytes.len() < end {
        return None;
    }
    Some((bytes[0] & 0x0f, bytes[header..end].to_vec(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_and_mask() {
        let small = frame(0x9, b"");
        assert_eq!(small, [0x89, 0x80, 0x12, 0x34, 0x56, 0x78]);
        let medium = frame(0x1, &[b'x'; 300]);
        assert_eq!(&medium[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(medium.len(), 4 + 4 + 300);
        let large = frame_with(0x01, false, &vec![0; 70_000]);
        assert_eq!(large[1], 127);
        assert_eq!(large.len(), 10 + 70_000);
    }

    #[tokio::test]
    async fn the_reader_finds_errors_and_the_close_code() {
        let mut server = Vec::new();
        for text in [
            r#"{"type":"pong"}"#,
            r#"{"type":"error","code":"rate_limited"}"#,
            r#"{"type":"error","code":"rate_limited"}"#,
        ] {
            server.extend(frame_with(0x81, false, text.as_bytes()));
        }
        let mut close = 1008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"too many frames per second");
        server.extend(frame_with(0x88, false, &close));
        let ending = read_until_end(&server[..], Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(ending.texts, 3);
        assert_eq!(ending.errors.get("rate_limited"), Some(&2));
        assert_eq!(ending.close_code(), Some(1008));
        assert_eq!(
            ending.describe(),
            "close 1008 \"too many frames per second\""
        );
        let cut = read_until_end(&server[..5], Instant::now() + Duration::from_secs(1)).await;
        assert!(cut.ended && cut.close.is_none());
    }
}
