//! How a converter worker ended, as a reason a person can read, and whether it is a verdict on
//! the input (the job fails now) or a death without a result (the attempt counts, the job may
//! try again: see `runtime::attempts`).
//!
//! What the node has to go on: the exit status (a code or a signal), whether it killed the
//! worker itself (timeout, cancellation, a broken protocol), the result line if one came, and
//! the last few KiB of the worker's stderr, where Rust reports `memory allocation of N bytes
//! failed` and `has overflowed its stack` before aborting. The stderr text is for these checks
//! and the logs only; it is never shown to a user.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

use super::protocol::{ProtocolError, WorkerLine, plain_file_name};
use crate::job::format::Format;

/// What came of one conversion in a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOutcome {
    /// The output file, in the conversion's private directory.
    Converted {
        file: PathBuf,
        format: Format,
        bytes: u64,
    },
    /// A verdict on this input (a clean error or a limit it hit): the job fails with it.
    Failed(String),
    /// The worker died without a result, for no reason the input was shown to cause: the
    /// attempt ends without a result and the job may try again.
    Crashed(String),
    /// Cancelled by its owner; the worker was killed.
    Cancelled,
    /// This node could not start a worker (a spawn error): nothing is said about the input;
    /// the run gives up and the job is resumed later.
    Unavailable(String),
}

/// Why the port killed its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    TimedOut,
    Cancelled,
    Protocol(ProtocolError),
}

/// The limits the worker ran under, to name them in the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedLimits {
    pub memory_bytes_max: u64,
    pub cpu_seconds_max: u64,
    pub output_bytes_max: u64,
    pub timeout_ms: u64,
}

/// Everything known once the worker is gone.
#[derive(Debug, Clone)]
pub struct Ending {
    pub status: ExitStatus,
    pub stopped_by: Option<StopReason>,
    pub result: Option<WorkerLine>,
    pub stderr_tail: String,
}

/// Exit codes of the worker itself (see `worker`).
const EXIT_USAGE: i32 = 2;
const EXIT_SANDBOX: i32 = 3;
/// Rust's exit code for a panic outside the worker's `catch_unwind`.
const EXIT_PANIC: i32 = 101;

const SIGKILL: i32 = 9;
const SIGXCPU: i32 = 24;
const SIGXFSZ: i32 = 25;

fn mebibytes(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * 1024 * 1024) {
        format!("{} GiB", bytes / (1024 * 1024 * 1024))
    } else {
        format!("{} MiB", bytes.div_ceil(1024 * 1024))
    }
}

/// The reason a person reads for a worker that hit its memory limit.
pub fn out_of_memory(limit_bytes: u64) -> String {
    format!(
        "the converter ran out of memory (limit {})",
        mebibytes(limit_bytes)
    )
}

/// Classifies a worker's end. `directory` is where its output file is.
pub fn classify(ending: &Ending, limits: NamedLimits, directory: &std::path::Path) -> PortOutcome {
    match &ending.stopped_by {
        Some(StopReason::Cancelled) => return PortOutcome::Cancelled,
        Some(StopReason::TimedOut) => {
            return PortOutcome::Failed(format!(
                "the conversion took longer than {} ms",
                limits.timeout_ms
            ));
        }
        Some(StopReason::Protocol(error)) => {
            return PortOutcome::Failed(format!(
                "the converter misbehaved and was stopped ({error})"
            ));
        }
        None => {}
    }
    let stderr = ending.stderr_tail.as_str();
    if ending.status.success() {
        return match &ending.result {
            Some(WorkerLine::Done {
                output,
                format,
                bytes,
            }) => match plain_file_name(output) {
                Some(output) => PortOutcome::Converted {
                    file: directory.join(output),
                    format: *format,
                    bytes: *bytes,
                },
                None => PortOutcome::Failed(
                    "the converter misbehaved and was stopped (an output outside its directory)"
                        .into(),
                ),
            },
            Some(WorkerLine::Failed { message, .. }) => PortOutcome::Failed(message.clone()),
            _ => PortOutcome::Failed("the converter ended without a result".into()),
        };
    }
    // Rust's own last words come before the signal: trust them first.
    if stderr.contains("memory allocation of") && stderr.contains("failed")
        || stderr.contains("std::bad_alloc")
    {
        return PortOutcome::Failed(out_of_memory(limits.memory_bytes_max));
    }
    if stderr.contains("has overflowed its stack") {
        return PortOutcome::Failed(
            "the input is nested too deeply for the converter (stack overflow)".into(),
        );
    }
    if let Some(signal) = ending.status.signal() {
        return match signal {
            SIGXCPU => PortOutcome::Failed(format!(
                "the converter used more than its {} s of CPU time",
                limits.cpu_seconds_max
            )),
            SIGXFSZ => PortOutcome::Failed(format!(
                "the output would be larger than {} bytes",
                limits.output_bytes_max
            )),
            SIGKILL => PortOutcome::Crashed("the converter was killed (signal 9)".into()),
            other => PortOutcome::Crashed(format!("the converter crashed (signal {other})")),
        };
    }
    match ending.status.code() {
        // Not the input's fault, but the same on every attempt: say so at once.
        Some(EXIT_SANDBOX) => PortOutcome::Failed(
            "the converter could not confine itself on this node; its operator can see why in \
             the node's log"
                .into(),
        ),
        Some(EXIT_USAGE) => PortOutcome::Failed(
            "the converter does not match its node (a mismatched binary); its operator can see \
             why in the node's log"
                .into(),
        ),
        Some(EXIT_PANIC) => PortOutcome::Crashed("the converter crashed (a panic)".into()),
        Some(code) => PortOutcome::Crashed(format!("the converter exited with code {code}")),
        None => PortOutcome::Crashed("the converter ended for an unknown reason".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::port::protocol::ErrorKind;

    const LIMITS: NamedLimits = NamedLimits {
        memory_bytes_max: 512 * 1024 * 1024,
        cpu_seconds_max: 60,
        output_bytes_max: 1000,
        timeout_ms: 1500,
    };

    fn ended(raw_wait_status: i32, stderr: &str, result: Option<WorkerLine>) -> PortOutcome {
        classify(
            &Ending {
                status: ExitStatus::from_raw(raw_wait_status),
                stopped_by: None,
                result,
                stderr_tail: stderr.into(),
            },
            LIMITS,
            std::path::Path::new("/work"),
        )
    }

    /// A wait status for death by `signal`, and for exit with `code`.
    fn signalled(signal: i32) -> i32 {
        signal
    }
    fn exited(code: i32) -> i32 {
        code << 8
    }

    #[test]
    fn limits_and_crashes_read_as_what_they_are() {
        assert_eq!(
            ended(
                signalled(6),
                "memory allocation of 549755813888 bytes failed\n",
                None
            ),
            PortOutcome::Failed("the converter ran out of memory (limit 512 MiB)".into())
        );
        assert_eq!(
            ended(
                signalled(6),
                "\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow\n",
                None
            ),
            PortOutcome::Failed(
                "the input is nested too deeply for the converter (stack overflow)".into()
            )
        );
        assert_eq!(
            ended(signalled(SIGXCPU), "", None),
            PortOutcome::Failed("the converter used more than its 60 s of CPU time".into())
        );
        assert_eq!(
            ended(signalled(SIGXFSZ), "", None),
            PortOutcome::Failed("the output would be larger than 1000 bytes".into())
        );
        assert_eq!(
            ended(signalled(11), "", None),
            PortOutcome::Crashed("the converter crashed (signal 11)".into())
        );
        assert_eq!(
            ended(signalled(SIGKILL), "", None),
            PortOutcome::Crashed("the converter was killed (signal 9)".into())
        );
        assert!(matches!(
            ended(exited(EXIT_SANDBOX), "", None),
            PortOutcome::Failed(_)
        ));
        assert_eq!(
            ended(exited(EXIT_PANIC), "", None),
            PortOutcome::Crashed("the converter crashed (a panic)".into())
        );
    }

    #[test]
    fn a_clean_result_wins_and_our_own_kills_say_why() {
        let done = WorkerLine::Done {
            output: "output.jpg".into(),
            format: Format::Jpeg,
            bytes: 5,
        };
        assert_eq!(
            ended(exited(0), "", Some(done)),
            PortOutcome::Converted {
                file: "/work/output.jpg".into(),
                format: Format::Jpeg,
                bytes: 5
            }
        );
        let failed = WorkerLine::Failed {
            kind: ErrorKind::Corrupt,
            message: "the input is not a valid png file: eof".into(),
        };
        assert_eq!(
            ended(exited(0), "", Some(failed)),
            PortOutcome::Failed("the input is not a valid png file: eof".into())
        );
        let timed_out = classify(
            &Ending {
                status: ExitStatus::from_raw(signalled(SIGKILL)),
                stopped_by: Some(StopReason::TimedOut),
                result: None,
                stderr_tail: String::new(),
            },
            LIMITS,
            std::path::Path::new("/work"),
        );
        assert_eq!(
            timed_out,
            PortOutcome::Failed("the conversion took longer than 1500 ms".into())
        );
    }
}
