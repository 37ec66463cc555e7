//! The converter worker process (`node convert-worker ...`): sandbox itself, read one request,
//! run one conversion, write the output file and one result line, exit.
//!
//! Plain synchronous code with no async runtime and no logging setup: the process lives for
//! one conversion. Its command line carries the limits (from the node's `[jobs]`, applied
//! before anything else); stdin carries the request; stdout carries protocol lines only;
//! stderr is read by the node (the last few KiB) to explain a death.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::protocol::{
    self, ErrorKind, PROTOCOL_VERSION, Request, WORKER_LINES_MAX, WorkerLine, cut, encode_line,
    plain_file_name,
};
use super::sandbox::{self, WorkerLimits};
use crate::job::convert::{self, Conversion, ConvertError, Converted};

/// The subcommand that makes the node binary a worker.
pub const SUBCOMMAND: &str = "convert-worker";
/// Exit code for a command line the worker does not understand (a node/worker mismatch).
const EXIT_USAGE: u8 = 2;
/// Exit code when the sandbox cannot be set up (the worker refuses to convert unconfined).
const EXIT_SANDBOX: u8 = 3;
/// Exit code when stdout is gone (the node stopped listening).
const EXIT_PIPE: u8 = 4;

/// The worker's command line, as the node builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    pub parent_pid: u32,
    pub limits: WorkerLimits,
}

impl WorkerArgs {
    /// The arguments after the subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            ("--parent-pid", self.parent_pid as u64),
            ("--memory-bytes", self.limits.memory_bytes_max),
            ("--cpu-seconds", self.limits.cpu_seconds_max),
            ("--file-bytes", self.limits.file_bytes_max),
            ("--open-files", self.limits.open_files_max),
        ]
        .into_iter()
        .flat_map(|(name, value)| [OsString::from(name), OsString::from(value.to_string())])
        .collect();
        if let Some(office) = &self.limits.office {
            args.push("--office".into());
            args.push(office.clone().into_os_string());
        }
        args
    }

    /// Parses what [`WorkerArgs::to_args`] wrote.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut args = args.into_iter();
        let mut parsed = WorkerArgs {
            parent_pid: 0,
            limits: WorkerLimits {
                memory_bytes_max: 0,
                cpu_seconds_max: 0,
                file_bytes_max: 0,
                open_files_max: 0,
                office: None,
            },
        };
        while let Some(name) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{} needs a value", name.to_string_lossy()))?;
            if name == "--office" {
                parsed.limits.office = Some(PathBuf::from(value));
                continue;
            }
            let number: u64 = value
                .to_str()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| format!("{}: not a number", name.to_string_lossy()))?;
            match name.to_str() {
                Some("--parent-pid") => {
                    parsed.parent_pid =
                        u32::try_from(number).map_err(|_| "--parent-pid: not a pid")?
                }
                Some("--memory-bytes") => parsed.limits.memory_bytes_max = number,
                Some("--cpu-seconds") => parsed.limits.cpu_seconds_max = number,
                Some("--file-bytes") => parsed.limits.file_bytes_max = number,
                Some("--open-files") => parsed.limits.open_files_max = number,
                _ => return Err(format!("unknown argument {}", name.to_string_lossy())),
            }
        }
        let limits = &parsed.limits;
        if parsed.parent_pid == 0
            || limits.memory_bytes_max == 0
            || limits.cpu_seconds_max == 0
            || limits.file_bytes_max == 0
            || limits.open_files_max == 0
        {
            return Err("every limit and --parent-pid are required".into());
        }
        Ok(parsed)
    }
}

/// The worker's `main`: `args` are the arguments after the subcommand.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match WorkerArgs::parse(args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("convert-worker: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let directory = Path::new(".");
    let sandbox = match sandbox::enter(&args.limits, args.parent_pid, directory) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("convert-worker: {error}");
            return ExitCode::from(EXIT_SANDBOX);
        }
    };
    let out = Output::new();
    if !out.send(&WorkerLine::Ready {
        v: PROTOCOL_VERSION,
        sandbox,
    }) {
        return ExitCode::from(EXIT_PIPE);
    }
    let result = match protocol::read_request(&mut BufReader::new(std::io::stdin().lock())) {
        Ok(request) => run(&request, &args.limits, &out),
        Err(error) => WorkerLine::Failed {
            kind: ErrorKind::Protocol,
            message: cut(&format!("the request was not understood: {error}")),
        },
    };
    if out.send(&result) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PIPE)
    }
}

/// Protocol lines to stdout, progress coalesced and bounded.
struct Output {
    state: Mutex<OutputState>,
}

struct OutputState {
    lines: usize,
    last_percent: Option<u8>,
}

impl Output {
    fn new() -> Self {
        Self {
            state: Mutex::new(OutputState {
                lines: 0,
                last_percent: None,
            }),
        }
    }

    /// Writes one line; false when stdout is gone.
    fn send(&self, line: &WorkerLine) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.lines += 1;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&encode_line(line)).is_ok() && stdout.flush().is_ok()
    }

    /// A progress step: sent when the percent moved, while lines are left for the result.
    fn progress(&self, percent: u8, step: &str) {
        {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.last_percent == Some(percent) || state.lines + 2 >= WORKER_LINES_MAX {
                return;
            }
            state.last_percent = Some(percent);
        }
        let _ = self.send(&WorkerLine::Progress {
            percent,
            step: cut(step),
        });
    }
}

/// Runs the conversion and writes its output; returns the result line.
fn run(request: &Request, limits: &WorkerLimits, out: &Output) -> WorkerLine {
    let failed = |kind, message: String| WorkerLine::Failed {
        kind,
        message: cut(&message),
    };
    let Some(input_name) = plain_file_name(&request.input) else {
        return failed(
            ErrorKind::Protocol,
            "the input name is not a file name".into(),
        );
    };
    let input = match read_bounded(input_name, request.input_bytes_max) {
        Ok(input) => input,
        Err(message) => return failed(ErrorKind::Failed, message),
    };
    let progress = |percent: u8, step: &str| out.progress(percent, step);
    let cancel = AtomicBool::new(false);
    let conversion = Conversion {
        input: &input,
        from: request.from,
        to: request.target,
        options: &request.options,
        output_bytes_max: request.output_bytes_max,
        deadline: Instant::now() + Duration::from_millis(request.time_budget_ms),
        progress: &progress,
        cancel: &cancel,
        office: limits.office.as_deref(),
    };
    // A panic is a logic fault of one converter on one input: report it like an error.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| convert::convert(&conversion)));
    drop(input);
    let converted = match result {
        Ok(Ok(converted)) => converted,
        Ok(Err(error)) => return failed(kind_of(&error), error.to_string()),
        Err(payload) => {
            return failed(
                ErrorKind::Panicked,
                format!("the converter crashed: {}", panic_message(payload.as_ref())),
            );
        }
    };
    out.progress(95, "saving");
    match write_output(&converted) {
        Ok((output, bytes)) => WorkerLine::Done {
            output,
            format: converted.format,
            bytes,
        },
        Err(message) => failed(ErrorKind::Failed, message),
    }
}

fn read_bounded(name: &str, bytes_max: u64) -> Result<Vec<u8>, String> {
    let file = File::open(name).map_err(|error| format!("cannot open the input: {error}"))?;
    let mut input = Vec::new();
    file.take(bytes_max.saturating_add(1))
        .read_to_end(&mut input)
        .map_err(|error| format!("cannot read the input: {error}"))?;
    if input.len() as u64 > bytes_max {
        return Err(format!("the input is larger than {bytes_max} bytes"));
    }
    Ok(input)
}

fn write_output(converted: &Converted) -> Result<(String, u64), String> {
    let name = format!("output.{}", converted.format.extension());
    let mut file =
        File::create_new(&name).map_err(|error| format!("cannot create the output: {error}"))?;
    file.write_all(&converted.bytes)
        .map_err(|error| format!("cannot write the output: {error}"))?;
    Ok((name, converted.bytes.len() as u64))
}

fn kind_of(error: &ConvertError) -> ErrorKind {
    match error {
        ConvertError::Unsupported { .. } => ErrorKind::Unsupported,
        ConvertError::Corrupt { .. } => ErrorKind::Corrupt,
        ConvertError::TooLarge(_) => ErrorKind::TooLarge,
        ConvertError::Cancelled | ConvertError::TimedOut => ErrorKind::TimedOut,
        ConvertError::Unavailable(_) => ErrorKind::Unavailable,
        ConvertError::Failed(_) => ErrorKind::Failed,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_round_trips() {
        let args = WorkerArgs {
            parent_pid: 42,
            limits: WorkerLimits {
                memory_bytes_max: 512 << 20,
                cpu_seconds_max: 60,
                file_bytes_max: 1 << 20,
                open_files_max: 64,
                office: Some("/usr/bin/soffice".into()),
            },
        };
        assert_eq!(WorkerArgs::parse(args.to_args()), Ok(args));
        assert!(WorkerArgs::parse(["--parent-pid".into()]).is_err());
        assert!(WorkerArgs::parse(["--bogus".into(), "1".into()]).is_err());
        assert!(
            WorkerArgs::parse(Vec::new()).is_err(),
            "limits are required"
        );
    }
}
