//! The pipe protocol between a converter port (node side) and its worker process: JSON lines,
//! versioned and bounded.
//!
//! - node → worker, on stdin: one [`Request`] line.
//! - worker → node, on stdout: first [`WorkerLine::Ready`] (the worker's protocol version and
//!   what its sandbox enforces), then any number of [`WorkerLine::Progress`], then exactly one
//!   result: [`WorkerLine::Done`] or [`WorkerLine::Failed`].
//!
//! Every line is at most [`LINE_BYTES_MAX`] bytes and the worker sends at most
//! [`WORKER_LINES_MAX`] lines. Anything else (a longer line, more lines, a line that is not one
//! of these, a line after the result, a different version) is a protocol error: the node kills
//! the worker and fails the job. The worker's output is as untrusted as its input was, so the
//! node decodes it with these limits and never unwraps it.

use std::io::{BufRead, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::convert::{Options, Target};
use crate::job::format::Format;

/// Bumped on any incompatible change; both sides check it.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line either side sends, newline included.
pub const LINE_BYTES_MAX: usize = 4096;
/// Lines a worker may send in one run (ready, progress, result).
pub const WORKER_LINES_MAX: usize = 256;
/// Longest error message or progress step a worker sends (longer ones are cut): at most 4
/// bytes a character once control characters are gone, so a message always fits a line.
pub const TEXT_CHARS_MAX: usize = 600;

/// What to convert: one line from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    /// The input's file name inside the worker's directory (no path).
    pub input: String,
    pub from: Format,
    pub target: Target,
    pub options: Options,
    pub input_bytes_max: u64,
    pub output_bytes_max: u64,
    /// The wall-clock time the node allows; converters stop at their next check after it.
    pub time_budget_ms: u64,
}

/// What the worker's sandbox holds, as it found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxReport {
    /// In a network namespace of its own (needs root).
    pub network_namespace: bool,
    /// Landlock: `full`, `partial` or `none`.
    pub landlock: String,
}

/// Why a conversion produced no output, as the worker classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Unsupported,
    Corrupt,
    TooLarge,
    TimedOut,
    Unavailable,
    Failed,
    /// A converter panicked (caught: a logic fault, not a crash of the process).
    Panicked,
    /// The request was not understood.
    Protocol,
}

/// One line from the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerLine {
    Ready {
        v: u32,
        sandbox: SandboxReport,
    },
    Progress {
        percent: u8,
        step: String,
    },
    Done {
        /// The output's file name inside the worker's directory.
        output: String,
        format: Format,
        bytes: u64,
    },
    Failed {
        kind: ErrorKind,
        /// For the job's owner: says what happened, no paths.
        message: String,
    },
}

impl WorkerLine {
    pub fn is_result(&self) -> bool {
        matches!(self, WorkerLine::Done { .. } | WorkerLine::Failed { .. })
    }
}

/// A broken protocol: the other side is not trusted any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("a line longer than {LINE_BYTES_MAX} bytes")]
    LineTooLong,
    #[error("more than {WORKER_LINES_MAX} lines")]
    TooManyLines,
    #[error("a line that is not a protocol message ({0})")]
    Malformed(String),
    #[error("protocol version {got}, expected {expected}")]
    Version { got: u32, expected: u32 },
    #[error("{0}")]
    Sequence(&'static str),
    #[error("the stream ended inside a line")]
    Truncated,
    #[error("cannot read: {0}")]
    Io(String),
}

/// `value` as one line, newline included. Only for values whose size the caller bounds (texts
/// go through [`cut`]); a line over the limit is a bug, and the other side refuses it anyway.
pub fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|error| {
        format!(r#"{{"type":"failed","kind":"protocol","message":"cannot encode: {error}"}}"#)
            .into_bytes()
    });
    line.push(b'\n');
    debug_assert!(line.len() <= LINE_BYTES_MAX, "protocol line over the limit");
    line
}

/// `text` cut to [`TEXT_CHARS_MAX`] characters, control characters (which JSON would escape
/// six times longer) replaced by spaces.
pub fn cut(text: &str) -> String {
    let mut kept: String = text
        .chars()
        .take(TEXT_CHARS_MAX)
        .map(|character| {
            if character.is_control() {
                ' '
            } else {
                character
            }
        })
        .collect();
    if text.chars().nth(TEXT_CHARS_MAX).is_some() {
        kept.push('…');
    }
    kept
}

/// `name` when it names a file directly in the worker's directory (no separator, not `..`):
/// both sides check the names they get from the other.
pub fn plain_file_name(name: &str) -> Option<&str> {
    let mut components = std::path::Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(std::path::Component::Normal(_)), None) => Some(name),
        _ => None,
    }
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(line).map_err(|error| ProtocolError::Malformed(cut(&error.to_string())))
}

/// Reads the node's request (worker side): one bounded line, the version checked.
pub fn read_request(reader: &mut impl BufRead) -> Result<Request, ProtocolError> {
    let mut line = Vec::new();
    let mut limited = reader.by_ref().take(LINE_BYTES_MAX as u64);
    limited
        .read_until(b'\n', &mut line)
        .map_err(|error| ProtocolError::Io(error.to_string()))?;
    match line.last() {
        Some(b'\n') => {}
        _ if line.len() >= LINE_BYTES_MAX => return Err(ProtocolError::LineTooLong),
        _ => return Err(ProtocolError::Truncated),
    }
    // The version first, so that a newer request with other fields says what is wrong.
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let versioned: Versioned = decode(&line)?;
    if versioned.v != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            got: versioned.v,
            expected: PROTOCOL_VERSION,
        });
    }
    decode(&line)
}

/// Splits the worker's stdout into checked lines (node side): bounded line length and count,
/// `Ready` first with our version, nothing after the result.
#[derive(Debug, Default)]
pub struct LineDecoder {
    /// The start of a line whose newline has not come yet (at most [`LINE_BYTES_MAX`]).
    partial: Vec<u8>,
    lines: usize,
    ready: bool,
    finished: bool,
}

impl LineDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes as they were read; returns the complete lines among them.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<WorkerLine>, ProtocolError> {
        let mut lines = Vec::new();
        while let Some(end) = bytes.iter().position(|byte| *byte == b'\n') {
            if self.partial.len() + end + 1 > LINE_BYTES_MAX {
                return Err(ProtocolError::LineTooLong);
            }
            self.partial.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.partial);
            lines.push(self.accept(&line)?);
        }
        if self.partial.len() + bytes.len() >= LINE_BYTES_MAX {
            return Err(ProtocolError::LineTooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(lines)
    }

    /// The stream ended: nothing may be left half-sent.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Truncated)
        }
    }

    fn accept(&mut self, line: &[u8]) -> Result<WorkerLine, ProtocolError> {
        self.lines += 1;
        if self.lines > WORKER_LINES_MAX {
            return Err(ProtocolError::TooManyLines);
        }
        if self.finished {
            return Err(ProtocolError::Sequence("a line after the result"));
        }
        let line: WorkerLine = decode(line)?;
        match (&line, self.ready) {
            (WorkerLine::Ready { v, .. }, false) => {
                if *v != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version {
                        got: *v,
                        expected: PROTOCOL_VERSION,
                    });
                }
                self.ready = true;
            }
            (WorkerLine::Ready { .. }, true) => {
                return Err(ProtocolError::Sequence("a second ready line"));
            }
            (_, false) => return Err(ProtocolError::Sequence("a line before ready")),
            (line, true) => self.finished = line.is_result(),
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Vec<u8> {
        encode_line(&WorkerLine::Ready {
            v: PROTOCOL_VERSION,
            sandbox: SandboxReport::default(),
        })
    }

    fn request() -> Request {
        Request {
            v: PROTOCOL_VERSION,
            input: "input.png".into(),
            from: Format::Png,
            target: Target::Format(Format::Jpeg),
            options: Options::default(),
            input_bytes_max: 1024,
            output_bytes_max: 2048,
            time_budget_ms: 1000,
        }
    }

    #[test]
    fn a_whole_run_decodes_in_any_split() {
        let mut stream = ready();
        stream.extend(encode_line(&WorkerLine::Progress {
            percent: 20,
            step: "decoding".into(),
        }));
        stream.extend(encode_line(&WorkerLine::Done {
            output: "output.jpg".into(),
            format: Format::Jpeg,
            bytes: 12,
        }));
        for chunk in [1, 7, 64, stream.len()] {
            let mut decoder = LineDecoder::new();
            let mut lines = Vec::new();
            for piece in stream.chunks(chunk) {
                lines.extend(decoder.push(piece).expect("valid"));
            }
            decoder.finish().expect("complete");
            assert_eq!(lines.len(), 3, "chunks of {chunk}");
            assert!(lines[2].is_result());
        }
    }

    #[test]
    fn long_lines_many_lines_and_garbage_are_refused() {
        let mut decoder = LineDecoder::new();
        decoder.push(&ready()).expect("ready");
        assert_eq!(
            decoder.push(&vec![b'x'; LINE_BYTES_MAX]),
            Err(ProtocolError::LineTooLong),
            "a line with no end in sight"
        );

        let mut decoder = LineDecoder::new();
        decoder.push(&ready()).expect("ready");
        let progress = encode_line(&WorkerLine::Progress {
            percent: 1,
            step: "x".into(),
        });
        let mut result = Ok(Vec::new());
        for _ in 0..WORKER_LINES_MAX {
            result = decoder.push(&progress);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ProtocolError::TooManyLines));

        for garbage in [
            &b"\x00\xff\xfe not json\n"[..],
            b"{\"type\":\"launch_missiles\"}\n",
            b"{\"type\":\"progress\",\"percent\":900,\"step\":\"x\"}\n",
            b"[1,2,3]\n",
        ] {
            let mut decoder = LineDecoder::new();
            decoder.push(&ready()).expect("ready");
            assert!(
                matches!(decoder.push(garbage), Err(ProtocolError::Malformed(_))),
                "{garbage:?}"
            );
        }
        let mut decoder = LineDecoder::new();
        decoder
            .push(b"{\"type\":\"ready\",\"v\":1")
            .expect("partial");
        assert_eq!(decoder.finish(), Err(ProtocolError::Truncated));
    }

    #[test]
    fn ready_comes_first_with_our_version_and_nothing_follows_the_result() {
        let mut decoder = LineDecoder::new();
        let progress = encode_line(&WorkerLine::Progress {
            percent: 1,
            step: "x".into(),
        });
        assert!(matches!(
            decoder.push(&progress),
            Err(ProtocolError::Sequence(_))
        ));
        let mut decoder = LineDecoder::new();
        let newer = encode_line(&WorkerLine::Ready {
            v: PROTOCOL_VERSION + 1,
            sandbox: SandboxReport::default(),
        });
        assert_eq!(
            decoder.push(&newer),
            Err(ProtocolError::Version {
                got: PROTOCOL_VERSION + 1,
                expected: PROTOCOL_VERSION
            })
        );
        let mut decoder = LineDecoder::new();
        decoder.push(&ready()).expect("ready");
        decoder
            .push(&encode_line(&WorkerLine::Failed {
                kind: ErrorKind::Corrupt,
                message: "bad".into(),
            }))
            .expect("result");
        assert!(matches!(
            decoder.push(&progress),
            Err(ProtocolError::Sequence(_))
        ));
    }

    #[test]
    fn requests_are_bounded_and_versioned() {
        let line = encode_line(&request());
        assert_eq!(
            read_request(&mut line.as_slice()).expect("valid"),
            request()
        );
        let mut old = request();
        old.v = 0;
        assert_eq!(
            read_request(&mut encode_line(&old).as_slice()),
            Err(ProtocolError::Version {
                got: 0,
                expected: PROTOCOL_VERSION
            })
        );
        let huge = vec![b'{'; LINE_BYTES_MAX * 2];
        assert_eq!(
            read_request(&mut huge.as_slice()),
            Err(ProtocolError::LineTooLong)
        );
        assert_eq!(
            read_request(&mut &b"{\"v\":1"[..]),
            Err(ProtocolError::Truncated)
        );
        assert!(matches!(
            read_request(&mut &b"{\"v\":1,\"input\":3}\n"[..]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn only_plain_file_names_are_accepted() {
        assert_eq!(plain_file_name("input.png"), Some("input.png"));
        for bad in ["../etc/passwd", "/etc/passwd", "a/b", "..", ".", ""] {
            assert_eq!(plain_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn texts_are_cut_to_fit_a_line() {
        let long = "é\u{0}😀\"".repeat(TEXT_CHARS_MAX * 3);
        let line = encode_line(&WorkerLine::Failed {
            kind: ErrorKind::Failed,
            message: cut(&long),
        });
        assert!(line.len() <= LINE_BYTES_MAX, "{}", line.len());
    }
}
