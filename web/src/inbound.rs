//! The reading side's budget of one WebSocket connection: every frame the client sends (text,
//! binary, continuation, ping, pong, close) is counted as its header goes by, and charged to a
//! token bucket. A client that empties the bucket is flooding and its connection is closed
//! (1008, see `ws.rs`).
//!
//! The frames are counted on the byte stream, before tungstenite sees them, because tungstenite
//! answers pings and gathers fragments by itself: a reader that counted only the messages it is
//! handed would never see a flood of pings answered in place, or of empty continuation frames.
//! The header parser is RFC 6455 §5.2 and nothing more; tungstenite still validates every frame.
//!
//! The bucket is generous: it refills at [`FLOOD_RATE_FACTOR`] times the session's
//! `messages_per_second` and holds [`FLOOD_BURST_SECONDS`] of that, so a client only mildly over
//! the session's rate keeps its connection and gets the session's per-frame `rate_limited`
//! errors; only a flood ends it. A frame weighs one token per started `frame_bytes_max` of
//! payload, so large frames (which the session refuses as `too_large`) cannot be sent at the
//! rate of small ones.

use std::time::Instant;

/// The flood rate, as a multiple of `sessions.messages_per_second`.
pub const FLOOD_RATE_FACTOR: f64 = 4.0;
/// How many seconds of the flood rate a connection may send at once.
pub const FLOOD_BURST_SECONDS: f64 = 2.0;
/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const HEADER_BYTES_MAX: usize = 14;

/// Follows the frame boundaries of a byte stream; see the module documentation.
#[derive(Debug)]
enum Parser {
    Header {
        bytes: [u8; HEADER_BYTES_MAX],
        have: usize,
    },
    Payload {
        left: u64,
    },
}

impl Default for Parser {
    fn default() -> Self {
        Parser::Header {
            bytes: [0; HEADER_BYTES_MAX],
            have: 0,
        }
    }
}

/// The header's length once its first two bytes are known.
fn header_len(first_two: [u8; 2]) -> usize {
    let length_bytes = match first_two[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask_bytes = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + length_bytes + mask_bytes
}

/// The payload length a complete header declares.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(bytes)
        }
        len => u64::from(len),
    }
}

impl Parser {
    /// Consumes `input`, calling `on_frame` with the payload length of each frame whose header
    /// completes in it.
    fn feed(&mut self, mut input: &[u8], mut on_frame: impl FnMut(u64)) {
        while !input.is_empty() {
            match self {
                Parser::Payload { left } => {
                    let skip = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    input = &input[skip..];
                    *left -= skip as u64;
                    if *left == 0 {
                        *self = Parser::default();
                    }
                }
                Parser::Header { bytes, have } => {
                    let need = if *have < 2 {
                        2
                    } else {
                        header_len([bytes[0], bytes[1]])
                    };
                    let take = (need - *have).min(input.len());
                    bytes[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if *have < 2 || *have < header_len([bytes[0], bytes[1]]) {
                        continue;
                    }
                    let len = payload_len(&bytes[..*have]);
                    on_frame(len);
                    *self = if len == 0 {
                        Parser::default()
                    } else {
                        Parser::Payload { left: len }
                    };
                }
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        // A frame heavier than the whole bucket could never pass: it costs the whole bucket.
        let cost = cost.min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Counts a connection's frames against its flood budget.
#[derive(Debug)]
pub struct InboundBudget {
    parser: Parser,
    bucket: Bucket,
    /// A frame costs one token per started `weight_bytes` of payload.
    weight_bytes: u64,
    /// Payloads are weighed up to this size (tungstenite refuses larger frames anyway).
    weighed_bytes_max: u64,
    frames: u64,
    flooded: bool,
}

impl InboundBudget {
    /// A budget for a session allowed `messages_per_second` data frames, answering frames
    /// above `frame_bytes_max` with `too_large`, over a transport refusing messages above
    /// `message_bytes_max`.
    pub fn new(messages_per_second: u32, frame_bytes_max: usize, message_bytes_max: usize) -> Self {
        let rate = (f64::from(messages_per_second) * FLOOD_RATE_FACTOR).max(1.0);
        let burst = (rate * FLOOD_BURST_SECONDS).max(1.0);
        Self {
            parser: Parser::default(),
            bucket: Bucket {
                rate,
                burst,
                tokens: burst,
                at: Instant::now(),
            },
            weight_bytes: (frame_bytes_max as u64).max(1),
            weighed_bytes_max: message_bytes_max as u64,
            frames: 0,
            flooded: false,
        }
    }

    /// Accounts for `bytes` just read from the client; false once it is over its budget (and
    /// from then on).
    pub fn read(&mut self, bytes: &[u8], now: Instant) -> bool {
        if self.flooded {
            return false;
        }
        let Self {
            parser,
            bucket,
            weight_bytes,
            weighed_bytes_max,
            frames,
            flooded,
        } = self;
        parser.feed(bytes, |len| {
            *frames += 1;
            let weight = 1 + len.min(*weighed_bytes_max) / *weight_bytes;
            if !*flooded && !bucket.take(weight as f64, now) {
                *flooded = true;
            }
        });
        !self.flooded
    }

    pub fn flooded(&self) -> bool {
        self.flooded
    }

    /// Frames seen so far (every kind).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames a second the connection may keep up, and how many it may send at once.
    #[cfg(test)]
    pub fn rate_and_burst(&self) -> (f64, f64) {
        (self.bucket.rate, self.bucket.burst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        out
    }

    #[test]
    fn frames_are_counted_however_the_stream_is_cut() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 300, 65_535, 65_536, 70_000, 0, 5];
        for (index, size) in sizes.iter().enumerate() {
            let opcode = if index % 2 == 0 { 0x89 } else { 0x81 };
            stream.extend(frame(opcode, &vec![b'x'; *size]));
        }
        for cut in [1usize, 2, 3, 7, 13, 1000, stream.len()] {
            let mut parser = Parser::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(cut) {
                parser.feed(piece, |len| seen.push(len as usize));
            }
            assert_eq!(seen, sizes, "read in pieces of {cut} bytes");
            assert!(matches!(parser, Parser::Header { have: 0, .. }));
        }
    }

    #[test]
    fn a_ping_flood_runs_out_of_tokens_and_a_moderate_client_does_not() {
        let ping = frame(0x89, b"");
        let start = Instant::now();
        let mut flood = InboundBudget::new(50, 16 * 1024, 1024 * 1024);
        let (_, burst) = flood.rate_and_burst();
        let mut sent = 0u64;
        while flood.read(&ping, start) {
            sent += 1;
            assert!(sent < 100_000, "the flood was never stopped");
        }
        assert_eq!(
            sent, burst as u64,
            "the burst passes, the next frame does not"
        );
        assert!(flood.flooded());
        assert!(
            !flood.read(b"", start + Duration::from_secs(60)),
            "flooded for good"
        );

        // Three times the session's rate for a minute: the session refuses some with
        // `rate_limited`, the connection stays.
        let mut moderate = InboundBudget::new(50, 16 * 1024, 1024 * 1024);
        let text = frame(0x81, br#"{"type":"ping"}"#);
        for tick in 0..(150 * 60) {
            let now = start + Duration::from_micros(tick * 1_000_000 / 150);
            assert!(moderate.read(&text, now), "closed at frame {tick}");
        }
    }

    #[test]
    fn large_frames_weigh_more() {
        let start = Instant::now();
        let mut budget = InboundBudget::new(50, 16 * 1024, 1024 * 1024);
        let (_, burst) = budget.rate_and_burst();
        let big = frame(0x81, &vec![b'x'; 1024 * 1024]);
        let mut sent = 0u64;
        while budget.read(&big, start) {
            sent += 1;
        }
        // Each weighs 1 + 64 tokens.
        assert_eq!(sent, (burst / 65.0) as u64);
        // A declared length far above the transport limit weighs as much as the limit.
        let mut budget = InboundBudget::new(50, 16 * 1024, 1024 * 1024);
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert!(
            budget.read(&header, start),
            "one oversized header is for tungstenite to refuse"
        );
        assert_eq!(budget.frames(), 1);
    }
}
