//! The WebSocket attacks: ping floods (reading the pongs, or never reading), join floods of
//! rooms that do not exist, and single bad frames (too large, breaking the protocol, not
//! UTF-8). Each expects its connection closed with a given code within [`CLOSE_DEADLINE`].
//!
//! A flood ends with 1008 when the flood budget (two seconds at four times
//! `sessions.messages_per_second`) runs out first, or with 4008 when the node's replies (a pong
//! per ping, an error per refused join) overflow `sessions.outbound_queue_max` first: with the
//! hostile runs' rate (2,000 a second, a budget of 16,000 frames) and the default queue (1,024
//! frames), the replies usually do, even for a flooder that reads, since each pong is its own
//! tiny write and a few thousand of them fill the socket's send buffer. Both are the node
//! refusing to buffer for the flooder, promptly: both are expected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::frames::{self, Ending, Upgrade, frame, frame_with};
use super::{Decks, Judgement, Outcome, Shared};
use crate::client::test_token;
use crate::scenario::HostileKind;
use crate::schedule::SeededRng;

/// How long a misbehaving connection may stay open (the node closes a flood after two seconds
/// of its budget at most, a bad frame at once).
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of the upgrade (a frozen node accepts TCP and never answers).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames written at once by a flooder.
const FLOOD_BATCH_FRAMES: usize = 512;
/// One write of a flooder that never reads may wait this long for the node to read.
const STALLED_WRITE_WAIT: Duration = Duration::from_millis(500);
/// After a flooder that never reads stops writing, how long it reads what the node sent.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// One frame that must close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    TwoMibText,
    FragmentedMessage,
    Unmasked,
    ReservedBits,
    UnknownOpcode,
    LongPing,
    FragmentedPing,
    StrayContinuation,
    NotUtf8,
}

impl BadFrame {
    const ALL: [BadFrame; 9] = [
        BadFrame::TwoMibText,
        BadFrame::FragmentedMessage,
        BadFrame::Unmasked,
        BadFrame::ReservedBits,
        BadFrame::UnknownOpcode,
        BadFrame::LongPing,
        BadFrame::FragmentedPing,
        BadFrame::StrayContinuation,
        BadFrame::NotUtf8,
    ];

    fn describe(self) -> &'static str {
        match self {
            BadFrame::TwoMibText => "a 2 MiB text frame",
            BadFrame::FragmentedMessage => "a 1.5 MiB message in three fragments",
            BadFrame::Unmasked => "an unmasked frame",
            BadFrame::ReservedBits => "a frame with reserved bits set",
            BadFrame::UnknownOpcode => "an unknown opcode",
            BadFrame::LongPing => "a 126-byte ping",
            BadFrame::FragmentedPing => "a fragmented ping",
            BadFrame::StrayContinuation => "a continuation with nothing to continue",
            BadFrame::NotUtf8 => "a text frame that is not UTF-8",
        }
    }

    /// The close code RFC 6455 (and `web/src/ws.rs`) gives it.
    fn expected_close(self) -> u16 {
        match self {
            BadFrame::TwoMibText | BadFrame::FragmentedMessage => 1009,
            BadFrame::NotUtf8 => 1007,
            _ => 1002,
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            BadFrame::TwoMibText => frame(0x1, &vec![b'x'; 2 * 1024 * 1024]),
            BadFrame::FragmentedMessage => {
                let half = vec![b'x'; 512 * 1024];
                let mut bytes = frame_with(0x01, true, &half);
                bytes.extend(frame_with(0x00, true, &half));
                bytes.extend(frame_with(0x80, true, &half));
                bytes
            }
            BadFrame::Unmasked => frame_with(0x81, false, b"{}"),
            BadFrame::ReservedBits => frame_with(0x80 | 0x40 | 0x1, true, b"{}"),
            BadFrame::UnknownOpcode => frame(0x3, b"{}"),
            BadFrame::LongPing => frame(0x9, &[b'p'; 126]),
            BadFrame::FragmentedPing => frame_with(0x09, true, b"p"),
            BadFrame::StrayContinuation => frame(0x0, b"x"),
            BadFrame::NotUtf8 => frame(0x1, &[0xff, 0xfe, 0xfd]),
        }
    }
}

/// One WebSocket attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    PingFloodReading,
    PingFloodNeverReading,
    JoinFlood,
    Bad(BadFrame),
}

impl Variant {
    /// The next variant of `kind` from its seeded deck.
    pub fn draw(kind: HostileKind, decks: &mut Decks, rng: &mut SeededRng) -> Variant {
        match kind {
            HostileKind::PingFlood => {
                if decks.draw("ping_flood", 2, rng) == 0 {
                    Variant::PingFloodReading
                } else {
                    Variant::PingFloodNeverReading
                }
            }
            HostileKind::JoinFlood => Variant::JoinFlood,
            _ => Variant::Bad(BadFrame::ALL[decks.draw("bad_frames", BadFrame::ALL.len(), rng)]),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Variant::PingFloodReading => "ping flood, reading the pongs".into(),
            Variant::PingFloodNeverReading => "ping flood of 125-byte pings, never reading".into(),
            Variant::JoinFlood => "join flood of rooms that do not exist".into(),
            Variant::Bad(bad) => bad.describe().into(),
        }
    }
}

/// Runs `variant` against `target` as a user of its own.
pub async fn run(
    shared: &Shared,
    variant: Variant,
    target: &str,
    index: u64,
    client: usize,
) -> Outcome {
    let user = format!("chaos-hostile-ws-{client}");
    let token = test_token(&user);
    let address = shared.cluster.http_addr(target);
    let stream = match frames::upgrade(address, &token, &[], UPGRADE_TIMEOUT).await {
        Upgrade::Open(stream) => stream,
        refused if refused.is_overload_refusal() => {
            return Outcome::new(Judgement::Tolerated, refused.describe(), "");
        }
        other => return Outcome::new(Judgement::Unexpected, other.describe(), ""),
    };
    match variant {
        Variant::PingFloodReading => {
            flood(
                stream,
                frame(0x9, b"").repeat(FLOOD_BATCH_FRAMES),
                FLOOD_BATCH_FRAMES,
                "pings",
            )
            .await
        }
        Variant::JoinFlood => {
            let mut batch = 0u64;
            let joins = move || {
                batch += 1;
                let mut bytes = Vec::new();
                for join in 0..100 {
                    let room = format!("nosuch-{client}-{index}-{batch}-{join}");
                    bytes.extend(frame(
                        0x1,
                        json!({"type": "join", "room": room}).to_string().as_bytes(),
                    ));
                }
                bytes
            };
            flood_with(stream, joins, 100, "joins").await
        }
        Variant::PingFloodNeverReading => flood_without_reading(stream).await,
        Variant::Bad(bad) => bad_frame(stream, bad).await,
    }
}

/// Writes `batch` (of `frames_per_batch` frames) over and over while reading, until the node
/// closes the connection; expects 1008 or 4008 (see the module documentation).
async fn flood(
    stream: tokio::net::TcpStream,
    batch: Vec<u8>,
    frames_per_batch: usize,
    what: &str,
) -> Outcome {
    flood_with(stream, move || batch.clone(), frames_per_batch, what).await
}

async fn flood_with(
    stream: tokio::net::TcpStream,
    mut next_batch: impl FnMut() -> Vec<u8> + Send + 'static,
    frames_per_batch: usize,
    what: &str,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + CLOSE_DEADLINE;
    let (reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(frames::read_until_end(reader, deadline));
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn({
        let sent = sent.clone();
        async move {
            while Instant::now() < deadline {
                if writer.write_all(&next_batch()).await.is_err() {
                    return;
                }
                sent.fetch_add(frames_per_batch as u64, Ordering::Relaxed);
            }
        }
    });
    let ending = reading.await.unwrap_or_default();
    flooding.abort();
    let detail = format!(
        "after {} {what} in {:.1?}, {} frames back{}",
        sent.load(Ordering::Relaxed),
        started.elapsed(),
        ending.texts,
        describe_errors(&ending)
    );
    match ending.close_code() {
        Some(code @ (1008 | 4008)) => {
            Outcome::new(Judgement::Expected, format!("close {code}"), detail)
        }
        // The node closed the connection, but its close frame did not reach us: data that
        // keeps arriving at a closed socket makes the node's kernel answer with a reset, and
        // a reset discards what our socket had not been read yet. The node gave up on us.
        None if ending.ended => Outcome::new(
            Judgement::Tolerated,
            "ended (close frame lost to the reset of a flooding client)",
            detail,
        ),
        _ => Outcome::new(Judgement::Unexpected, ending.describe(), detail),
    }
}

/// Writes 125-byte pings and never reads; expects the node to give up on the connection
/// (1008 for the flood, 4008 for the pongs it cannot deliver, or the connection ended).
async fn flood_without_reading(stream: tokio::net::TcpStream) -> Outcome {
    let started = Instant::now();
    let deadline = started + CLOSE_DEADLINE;
    let (reader, mut writer) = stream.into_split();
    let batch = frame(0x9, &[b'p'; 125]).repeat(FLOOD_BATCH_FRAMES);
    let mut sent = 0u64;
    let writes_failed = loop {
        if Instant::now() >= deadline {
            break false;
        }
        match tokio::time::timeout(STALLED_WRITE_WAIT, writer.write_all(&batch)).await {
            Ok(Ok(())) => sent += FLOOD_BATCH_FRAMES as u64,
            Ok(Err(_)) => break true,
            // The node stopped reading: it has given up on us, or is about to.
            Err(_) => {}
        }
    };
    drop(writer);
    // Whatever reached our socket: pongs, and the close frame at their end.
    let ending = frames::read_until_end(reader, Instant::now() + DRAIN_DEADLINE).await;
    let detail = format!(
        "{} pings in {:.1?}, writes {}; {} KiB back",
        sent,
        started.elapsed(),
        if writes_failed { "failed" } else { "stalled" },
        ending.bytes / 1024
    );
    match ending.close_code() {
        Some(code @ (1008 | 4008)) => {
            Outcome::new(Judgement::Expected, format!("close {code}"), detail)
        }
        None if writes_failed || ending.ended => {
            Outcome::new(Judgement::Expected, "connection ended", detail)
        }
        _ => Outcome::new(Judgement::Unexpected, ending.describe(), detail),
    }
}

/// Sends one bad frame; expects its close code.
async fn bad_frame(stream: tokio::net::TcpStream, bad: BadFrame) -> Outcome {
    let started = Instant::now();
    let (reader, mut writer) = stream.into_split();
    let bytes = bad.bytes();
    // The node may close before it has read everything: a failed write is fine.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        writer
    });
    let ending = frames::read_until_end(reader, started + CLOSE_DEADLINE).await;
    writing.abort();
    let expected = bad.expected_close();
    let detail = format!("in {:.1?}", started.elapsed());
    if ending.close_code() == Some(expected) {
        Outcome::new(Judgement::Expected, format!("close {expected}"), detail)
    } else {
        Outcome::new(
            Judgement::Unexpected,
            format!("{} (expected close {expected})", ending.describe()),
            detail,
        )
    }
}

fn describe_errors(ending: &Ending) -> String {
    if ending.errors.is_empty() {
        return String::new();
    }
    let errors: Vec<String> = ending
        .errors
        .iter()
        .map(|(code, count)| format!("{code} x{count}"))
        .collect();
    format!(" ({})", errors.join(", "))
}
