//! `ConverterPortActor`: owns one converter worker process for one conversion, under the
//! node's ports supervisor (one-for-one, children temporary).
//!
//! It starts the worker with an empty environment, in the conversion's private directory and
//! in a process group of its own; writes the request; reads the worker's lines (bounded,
//! see `protocol`) and forwards progress; kills the whole group at the wall-clock timeout, on
//! cancellation, on a protocol error and whenever the actor stops (the `Child` is also
//! `kill_on_drop`); and, once the worker is gone, answers its requester with a
//! [`PortOutcome`] and stops.
//!
//! The worker is spawned from the actor's task, that is from a tokio worker thread, which lives
//! as long as the node: the worker's parent-death signal is tied to the thread that forked it,
//! and a blocking-pool thread that exits when idle would kill a worker still converting.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::supervisor::{
    ChildSpec, Restart, Strategy, SupervisorActor, SupervisorMsg, SupervisorSpec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::outcome::{self, Ending, NamedLimits, PortOutcome, StopReason};
use super::protocol::{LineDecoder, ProtocolError, Request, WorkerLine, encode_line};
use super::sandbox::WorkerLimits;
use super::worker::{SUBCOMMAND, WorkerArgs};

/// Bytes of the worker's stderr kept (the end of it: where the last words are).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// How long the output pipes may stay open after the worker exited (a grandchild holding them
/// is killed with the group first).
const PIPES_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a start request may wait for the ports supervisor.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress the worker may claim before the node has saved its output.
const WORKER_PERCENT_MAX: u8 = 94;

/// Registry name of a node's ports supervisor.
pub fn ports_supervisor_name(node: &str) -> String {
    format!("actorhub.jobs.ports.{node}")
}

/// The ports supervisor, as a permanent child of the node's root supervisor: one-for-one, its
/// children (one port per running conversion) temporary.
pub fn supervisor_child_spec(node: &str) -> ChildSpec {
    let name = ports_supervisor_name(node);
    ChildSpec::new(
        name.clone(),
        Restart::Permanent,
        move |parent: ActorCell| {
            let name = name.clone();
            async move {
                let spec = SupervisorSpec::new(Strategy::OneForOne, Vec::new());
                let (actor, _) =
                    Actor::spawn_linked(Some(name), SupervisorActor, spec, parent).await?;
                Ok(actor.get_cell())
            }
        },
    )
}

/// One conversion to run in a worker.
pub struct PortJob {
    /// For logs.
    pub job: String,
    /// Names the port among its siblings.
    pub attempt: String,
    pub program: PathBuf,
    /// The private directory holding the input; the worker's cwd and only writable place.
    pub directory: PathBuf,
    pub request: Request,
    pub limits: WorkerLimits,
    /// Wall-clock bound: the group is killed then.
    pub timeout: Duration,
    /// The latest progress (percent, step), for the job's progress forwarder.
    pub progress: watch::Sender<(u8, String)>,
    /// Becomes true when the job is cancelled.
    pub cancel: watch::Receiver<bool>,
}

/// Runs `job` in a worker owned by a new port under `node`'s ports supervisor; answers once
/// the worker is gone.
pub async fn convert_in_port(node: &str, job: PortJob) -> PortOutcome {
    let Some(supervisor) = ractor::registry::where_is(ports_supervisor_name(node))
        .map(ActorRef::<SupervisorMsg>::from)
    else {
        return PortOutcome::Unavailable("the converter ports supervisor is not running".into());
    };
    let (reply, outcome) = oneshot::channel();
    let name = format!("port-{}", job.attempt);
    let args = Arc::new(std::sync::Mutex::new(Some(ConverterPortArgs {
        job,
        reply,
    })));
    let spec = ChildSpec::new(name, Restart::Temporary, move |supervisor: ActorCell| {
        let args = args.lock().ok().and_then(|mut args| args.take());
        async move {
            let args = args.ok_or(ractor::SpawnErr::StartupFailed(
                "a converter port starts only once".into(),
            ))?;
            let (actor, _) =
                Actor::spawn_linked(None, ConverterPortActor, args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    match ractor::call_t!(
        supervisor,
        SupervisorMsg::StartChild,
        START_TIMEOUT.as_millis() as u64,
        spec
    ) {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return PortOutcome::Unavailable(format!("cannot start a converter: {error}"));
        }
        Err(error) => {
            return PortOutcome::Unavailable(format!("cannot start a converter: {error}"));
        }
    }
    outcome.await.unwrap_or_else(|_| {
        PortOutcome::Crashed("the converter's port stopped before it answered".into())
    })
}

pub struct ConverterPortActor;

pub struct ConverterPortArgs {
    job: PortJob,
    reply: oneshot::Sender<PortOutcome>,
}

#[derive(RactorMessage)]
pub enum ConverterPortMsg {
    Line(WorkerLine),
    Broken(ProtocolError),
    TimedOut,
    Cancelled,
    /// The worker is gone and its pipes are drained.
    Exited {
        status: ExitStatus,
        stderr_tail: String,
    },
}

pub struct ConverterPortState {
    job: String,
    directory: PathBuf,
    /// The worker's pid, which is also its process group's id.
    pid: Option<i32>,
    named: NamedLimits,
    progress: watch::Sender<(u8, String)>,
    reply: Option<oneshot::Sender<PortOutcome>>,
    stopped_by: Option<StopReason>,
    result: Option<WorkerLine>,
    /// Reader, monitor, timer and cancel tasks; aborted when the port stops (the monitor owns
    /// the `Child`, whose drop kills the worker).
    tasks: Vec<JoinHandle<()>>,
}

/// Whether a worker's sandbox shortfall was logged already (once per node process).
static SANDBOX_SHORTFALL_LOGGED: AtomicBool = AtomicBool::new(false);

impl Actor for ConverterPortActor {
    type Msg = ConverterPortMsg;
    type State = ConverterPortState;
    type Arguments = ConverterPortArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConverterPortMsg>,
        args: ConverterPortArgs,
    ) -> Result<ConverterPortState, ActorProcessingErr> {
        let ConverterPortArgs { job, reply } = args;
        let mut state = ConverterPortState {
            job: job.job.clone(),
            directory: job.directory.clone(),
            pid: None,
            named: NamedLimits {
                memory_bytes_max: job.limits.memory_bytes_max,
                cpu_seconds_max: job.limits.cpu_seconds_max,
                output_bytes_max: job.request.output_bytes_max,
                timeout_ms: job.timeout.as_millis() as u64,
            },
            progress: job.progress.clone(),
            reply: Some(reply),
            stopped_by: None,
            result: None,
            tasks: Vec::new(),
        };
        if let Err(error) = start_worker(&myself, &job, &mut state) {
            tracing::warn!(job = %job.job, %error, "cannot start a converter worker");
            state.answer(PortOutcome::Unavailable(format!(
                "cannot start a converter: {error}"
            )));
            myself.stop(None);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConverterPortMsg>,
        state: &mut ConverterPortState,
    ) -> Result<(), ActorProcessingErr> {
        state.kill_group();
        for task in state.tasks.drain(..) {
            task.abort();
        }
        state.answer(PortOutcome::Crashed(
            "the converter's port stopped before the worker ended".into(),
        ));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConverterPortMsg>,
        message: ConverterPortMsg,
        state: &mut ConverterPortState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConverterPortMsg::Line(line) => state.line(line),
            ConverterPortMsg::Broken(error) => state.stop_worker(StopReason::Protocol(error)),
            ConverterPortMsg::TimedOut => state.stop_worker(StopReason::TimedOut),
            ConverterPortMsg::Cancelled => state.stop_worker(StopReason::Cancelled),
            ConverterPortMsg::Exited {
                status,
                stderr_tail,
            } => {
                let ending = Ending {
                    status,
                    stopped_by: state.stopped_by.take(),
                    result: state.result.take(),
                    stderr_tail,
                };
                let outcome = outcome::classify(&ending, state.named, &state.directory);
                log_ending(&state.job, &ending, &outcome);
                state.pid = None;
                state.answer(outcome);
                myself.stop(None);
            }
        }
        Ok(())
    }
}

impl ConverterPortState {
    fn answer(&mut self, outcome: PortOutcome) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome);
        }
    }

    fn line(&mut self, line: WorkerLine) {
        match line {
            WorkerLine::Ready { sandbox, .. } => {
                let full = sandbox.network_namespace && sandbox.landlock == "full";
                if !full && !SANDBOX_SHORTFALL_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        network_namespace = sandbox.network_namespace,
                        landlock = %sandbox.landlock,
                        "converter workers run with a partial sandbox on this node (a network namespace needs root; Landlock needs Linux 6.7+ for TCP rules); the resource limits hold regardless"
                    );
                }
            }
            WorkerLine::Progress { percent, step } => {
                let _ = self.progress.send((percent.min(WORKER_PERCENT_MAX), step));
            }
            result => {
                self.result = Some(result);
            }
        }
    }

    /// Kills the worker's group for `reason`; the first reason is kept.
    fn stop_worker(&mut self, reason: StopReason) {
        if self.pid.is_none() {
            return;
        }
        if self.stopped_by.is_none() {
            tracing::debug!(job = %self.job, ?reason, "stopping a converter worker");
            self.stopped_by = Some(reason);
        }
        self.kill_group();
    }

    fn kill_group(&self) {
        if let Some(pid) = self.pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

fn log_ending(job: &str, ending: &Ending, outcome: &PortOutcome) {
    match outcome {
        PortOutcome::Converted { .. } | PortOutcome::Cancelled => {}
        PortOutcome::Failed(reason) => {
            tracing::debug!(%job, %reason, status = %ending.status, stderr = %ending.stderr_tail, "converter failed")
        }
        PortOutcome::Crashed(reason) | PortOutcome::Unavailable(reason) => {
            tracing::warn!(%job, %reason, status = %ending.status, stderr = %ending.stderr_tail, "converter worker died without a result")
        }
    }
}

/// Spawns the worker and the tasks around it.
fn start_worker(
    myself: &ActorRef<ConverterPortMsg>,
    job: &PortJob,
    state: &mut ConverterPortState,
) -> std::io::Result<()> {
    let args = WorkerArgs {
        parent_pid: std::process::id(),
        limits: job.limits.clone(),
    };
    let mut command = tokio::process::Command::new(&job.program);
    command
        .arg(SUBCOMMAND)
        .args(args.to_args())
        .env_clear()
        .env("HOME", &job.directory)
        .env("TMPDIR", &job.directory)
        .current_dir(&job.directory)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group from the first instant, so that killing the group reaches everything
        // it starts (LibreOffice and its helpers).
        .process_group(0);
    if job.limits.office.is_some() {
        // LibreOffice's launcher is a shell script.
        command.env("PATH", "/usr/bin:/bin").env("LANG", "C.UTF-8");
    }
    let mut child = command.spawn()?;
    state.pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the worker's pipes are missing"));
    };
    let request = encode_line(&job.request);
    state.tasks.push(tokio::spawn(async move {
        // A worker that dies first closes the pipe; its exit says why.
        let _ = stdin.write_all(&request).await;
    }));
    let lines = tokio::spawn(read_lines(stdout, myself.clone()));
    let tail = tokio::spawn(read_tail(stderr));
    let target = myself.clone();
    let group = state.pid.and_then(rustix::process::Pid::from_raw);
    state.tasks.push(tokio::spawn(async move {
        let status = child.wait().await;
        // Whatever the worker left behind (LibreOffice) goes with it, so the pipes close. The
        // group's id cannot have been reused while any member of the group is alive.
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = tokio::time::timeout(PIPES_DRAIN_TIMEOUT, lines).await;
        let stderr_tail = tokio::time::timeout(PIPES_DRAIN_TIMEOUT, tail)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, "cannot wait for a converter worker");
                std::os::unix::process::ExitStatusExt::from_raw(9)
            }
        };
        let _ = target.cast(ConverterPortMsg::Exited {
            status,
            stderr_tail,
        });
    }));
    let target = myself.clone();
    let timeout = job.timeout;
    state.tasks.push(tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let _ = target.cast(ConverterPortMsg::TimedOut);
    }));
    let target = myself.clone();
    let mut cancel = job.cancel.clone();
    state.tasks.push(tokio::spawn(async move {
        if cancel.wait_for(|cancelled| *cancelled).await.is_ok() {
            let _ = target.cast(ConverterPortMsg::Cancelled);
        }
    }));
    Ok(())
}

/// Feeds the worker's stdout through the protocol decoder to the port.
async fn read_lines(mut stdout: impl AsyncRead + Unpin, port: ActorRef<ConverterPortMsg>) {
    let mut decoder = LineDecoder::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = match stdout.read(&mut buffer).await {
            Ok(0) => {
                if let Err(error) = decoder.finish() {
                    let _ = port.cast(ConverterPortMsg::Broken(error));
                }
                return;
            }
            Ok(read) => read,
            Err(error) => {
                let _ = port.cast(ConverterPortMsg::Broken(ProtocolError::Io(
                    error.to_string(),
                )));
                return;
            }
        };
        match decoder.push(&buffer[..read]) {
            Ok(lines) => {
                for line in lines {
                    let _ = port.cast(ConverterPortMsg::Line(line));
                }
            }
            Err(error) => {
                let _ = port.cast(ConverterPortMsg::Broken(error));
                return;
            }
        }
    }
}

/// Reads stderr to its end, keeping the last [`STDERR_TAIL_BYTES`].
async fn read_tail(mut stderr: impl AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::with_capacity(STDERR_TAIL_BYTES);
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stderr.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        tail.extend_from_slice(&buffer[..read]);
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}
