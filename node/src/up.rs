//! `node up`: runs every node of `cluster.toml` as a child process of this executable and shows
//! them as one local cluster in one terminal.
//!
//! Each child's stdout and stderr are copied line by line to our stdout, prefixed with the node
//! id (`n1 | ...`). One state loop checks every [`POLL_INTERVAL`] whether a child has exited and
//! whether its `/readyz` answers 200, and prints what changed. A child that exits is reported
//! and the others keep running; `up` fails only when no child is left. On Ctrl-C, SIGTERM or
//! SIGHUP every child gets SIGTERM, and SIGKILL if it is still running after [`STOP_TIMEOUT`]
//! (or at a second Ctrl-C).
//!
//! The children run in their own process group, so the terminal's Ctrl-C reaches only `up`,
//! which then stops each node exactly once. Children are reaped only by the state loop and the
//! stop sequence, so a pid we signal is always one of our unreaped children.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use runtime::config::{ClusterConfig, NodeConfig};
use rustix::process::{Pid, Signal as ProcessSignal};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior, timeout, timeout_at};

/// The nodes' log filter unless `--verbose` (or `RUST_LOG`): warnings and errors; `up` itself
/// shows each node's state and URL.
const QUIET_LOG_FILTER: &str = "warn,ractor=error,ractor_cluster=error";
/// How often the state loop checks each child's exit status and `/readyz`.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Deadline of one `/readyz` probe: connect, request and status line.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes read looking for a probe's status line.
const STATUS_LINE_BYTES_MAX: u64 = 1024;
/// Longest child output line copied in one piece; a longer line is copied in several.
const OUTPUT_LINE_BYTES_MAX: u64 = 64 * 1024;
/// Grace period between SIGTERM and SIGKILL when stopping the nodes.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last output of stopped nodes may take to be copied. A grandchild that inherited
/// a node's pipe (a converter, say) could hold it open forever; it must not keep `up` running.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts every node of `config` as `<this executable> run --config <config_path> --id <id>`,
/// shows their output and state until a shutdown signal, then stops them.
///
/// Returns `Ok` after a shutdown signal (once every node has stopped), and an error if the nodes
/// cannot be started or if every node has exited on its own.
pub async fn run(config_path: &Path, config: &ClusterConfig, verbose: bool) -> anyhow::Result<()> {
    // Listen before any child exists, so a Ctrl-C during start-up stops them too.
    let mut signals = ShutdownSignals::new().context("installing signal handlers")?;
    // This cluster's own secrets and certificates, made on first start and reused after;
    // every node (and `node token`, `node status`) reads them from the data directory.
    let nodes: Vec<(String, SocketAddr)> = config
        .nodes
        .iter()
        .map(|node| (node.id.clone(), node.cluster_addr))
        .collect();
    let created = crate::secrets::Generated::ensure(
        &config.cluster.data_dir,
        &nodes,
        config.cluster.tls.is_none(),
    )?;
    if !created.is_empty() {
        print_text(&format!(
            "generated this cluster's secrets in its data directory: {} (kept for later starts)",
            created.join(", ")
        ));
    }
    let log_filter =
        (!verbose && std::env::var_os("RUST_LOG").is_none()).then_some(QUIET_LOG_FILTER);
    let executable = std::env::current_exe().context("locating the node executable")?;
    let label_width = config
        .nodes
        .iter()
        .map(|node| node.id.len())
        .max()
        .unwrap_or(0);
    print_text(&format!(
        "starting {} nodes of cluster {:?} from {}",
        config.nodes.len(),
        config.cluster.name,
        config_path.display()
    ));

    let mut children = Vec::with_capacity(config.nodes.len());
    let mut outcome = Ok(());
    for node in &config.nodes {
        match NodeChild::spawn(&executable, config_path, node, label_width, log_filter) {
            Ok(child) => children.push(child),
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    if outcome.is_ok() {
        outcome = watch(&mut children, &mut signals, &config.cluster.name).await;
    }
    stop_all(&mut children, &mut signals).await;
    outcome
}

/// One node's child process and what `up` last saw of it.
struct NodeChild {
    id: String,
    /// The id padded to the longest id, so that output columns line up.
    label: String,
    /// Where `/readyz` is probed and the web page is served (loopback if the node binds all
    /// interfaces).
    http_addr: SocketAddr,
    /// The process. Only the state loop and [`stop_all`] reap it, so while `state` is not
    /// `Exited` its pid is still ours to signal.
    process: Child,
    state: NodeState,
    /// The tasks copying the child's stdout and stderr; they end at end of file.
    output_tasks: Vec<JoinHandle<()>>,
}

/// What `up` last saw of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// Spawned; `/readyz` has not answered 200 yet.
    Starting,
    /// `/readyz` answered 200 at the last probe.
    Ready,
    /// Was ready, but `/readyz` no longer answers 200.
    NotReady,
    /// The process has exited and been reaped.
    Exited(ExitStatus),
}

impl NodeChild {
    /// Spawns node `node` and the tasks that copy its output.
    fn spawn(
        executable: &Path,
        config_path: &Path,
        node: &NodeConfig,
        label_width: usize,
        log_filter: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(executable);
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        }
        let mut process = command
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--id")
            .arg(&node.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Only `up` receives the terminal's Ctrl-C; it then stops each node once.
            .process_group(0)
            // Should `up` fail or panic before stopping them, no node outlives it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {} ({})", node.id, executable.display()))?;

        let label = format!("{:label_width$}", node.id);
        let mut output_tasks = Vec::with_capacity(2);
        if let Some(stdout) = process.stdout.take() {
            output_tasks.push(tokio::spawn(forward_lines(label.clone(), stdout)));
        }
        if let Some(stderr) = process.stderr.take() {
            output_tasks.push(tokio::spawn(forward_lines(label.clone(), stderr)));
        }
        let pid = process.id().unwrap_or_default();
        print_status(&label, &format!("starting…  (pid {pid})"));
        Ok(Self {
            id: node.id.clone(),
            label,
            http_addr: reachable_addr(node.http_addr),
            process,
            state: NodeState::Starting,
            output_tasks,
        })
    }

    fn has_exited(&self) -> bool {
        matches!(self.state, NodeState::Exited(_))
    }

    fn url(&self) -> String {
        format!("http://{}/", self.http_addr)
    }

    /// Reaps the child if it has exited and reports the unexpected exit.
    fn check_exit(&mut self) {
        if self.has_exited() {
            return;
        }
        match self.process.try_wait() {
            Ok(Some(status)) => {
                self.state = NodeState::Exited(status);
                print_status(
                    &self.label,
                    &format!(
                        "exited unexpectedly ({status}); its log lines above, prefixed \"{} |\", say why. \
                         The other nodes keep running.",
                        self.id
                    ),
                );
            }
            Ok(None) => {}
            Err(error) => print_status(&self.label, &format!("cannot check its process: {error}")),
        }
    }

    /// Records the result of a `/readyz` probe and prints a change of state.
    fn observe_readiness(&mut self, ready: bool) {
        let (next, message) = match (self.state, ready) {
            (NodeState::Starting, true) => (NodeState::Ready, format!("ready      {}", self.url())),
            (NodeState::NotReady, true) => {
                (NodeState::Ready, format!("ready again  {}", self.url()))
            }
            (NodeState::Ready, false) => (
                NodeState::NotReady,
                "not ready: /readyz no longer answers 200".to_string(),
            ),
            _ => return,
        };
        self.state = next;
        print_status(&self.label, &message);
    }

    /// Sends `signal` to the child unless it has been reaped (its pid could then belong to
    /// another process).
    fn signal(&self, signal: ProcessSignal) {
        if self.has_exited() {
            return;
        }
        let Some(pid) = self.process.id() else { return };
        if let Err(error) = send_signal(pid, signal) {
            print_status(&self.label, &format!("cannot signal pid {pid}: {error}"));
        }
    }
}

/// The state loop: polls the children until a shutdown signal (`Ok`) or until every child has
/// exited (an error). Prints the summary once every running node is ready.
async fn watch(
    children: &mut [NodeChild],
    signals: &mut ShutdownSignals,
    cluster_name: &str,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut summary_printed = false;
    loop {
        tokio::select! {
            name = signals.recv() => {
                print_text(&format!("\nreceived {name}: stopping all nodes…"));
                return Ok(());
            }
            () = poll_children(children, &mut ticker) => {}
        }
        if children.iter().all(NodeChild::has_exited) {
            bail!("every node has exited; their log lines above say why");
        }
        let running_all_ready = children
            .iter()
            .filter(|child| !child.has_exited())
            .all(|child| child.state == NodeState::Ready);
        if running_all_ready && !summary_printed {
            print_summary(children, cluster_name);
            summary_printed = true;
        }
    }
}

/// One round of the state loop: waits for the next tick, reaps exited children, then probes
/// every running child's `/readyz` concurrently. Cancelling it (on a signal) aborts the probes.
async fn poll_children(children: &mut [NodeChild], ticker: &mut Interval) {
    ticker.tick().await;
    let mut probes = JoinSet::new();
    for (index, child) in children.iter_mut().enumerate() {
        child.check_exit();
        if !child.has_exited() {
            let addr = child.http_addr;
            probes.spawn(async move { (index, probe_ready(addr).await) });
        }
    }
    while let Some(result) = probes.join_next().await {
        // A probe task only fails if it panicked; the next round probes again.
        if let Ok((index, ready)) = result
            && let Some(child) = children.get_mut(index)
            && !child.has_exited()
        {
            child.observe_readiness(ready);
        }
    }
}

/// Stops every child that is still running: SIGTERM, up to [`STOP_TIMEOUT`] to exit (cut short
/// by another shutdown signal), then SIGKILL. Then lets their last output through and prints how
/// each one ended.
async fn stop_all(children: &mut [NodeChild], signals: &mut ShutdownSignals) {
    for child in children.iter_mut() {
        child.check_exit();
        child.signal(ProcessSignal::TERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut forced = false;
    for child in children.iter_mut().filter(|child| !child.has_exited()) {
        let mut status = None;
        if !forced {
            tokio::select! {
                result = timeout_at(deadline, child.process.wait()) => match result {
                    Ok(Ok(exit)) => status = Some(exit),
                    Ok(Err(error)) => print_status(&child.label, &format!("cannot wait for it: {error}")),
                    Err(_) => print_status(
                        &child.label,
                        &format!("still running {} s after SIGTERM; killing it", STOP_TIMEOUT.as_secs()),
                    ),
                },
                name = signals.recv() => {
                    print_text(&format!("received {name} again: killing the remaining nodes"));
                    forced = true;
                }
            }
        }
        if status.is_none() {
            // `Child::kill` sends SIGKILL and reaps; an error means it is already gone.
            if let Err(error) = child.process.kill().await {
                print_status(&child.label, &format!("cannot kill it: {error}"));
            }
            status = child.process.try_wait().ok().flatten();
        }
        if let Some(status) = status {
            child.state = NodeState::Exited(status);
        }
    }

    for child in children.iter_mut() {
        for task in child.output_tasks.drain(..) {
            // A timeout leaves the task running detached; it ends with the runtime.
            let _ = timeout(OUTPUT_DRAIN_TIMEOUT, task).await;
        }
    }
    for child in children.iter() {
        match child.state {
            NodeState::Exited(status) => print_status(&child.label, &format!("stopped ({status})")),
            _ => print_status(&child.label, "state unknown: it could not be stopped"),
        }
    }
}

/// Prints the block that tells the user where the cluster is and how to stop it.
fn print_summary(children: &[NodeChild], cluster_name: &str) {
    let running: Vec<&NodeChild> = children
        .iter()
        .filter(|child| !child.has_exited())
        .collect();
    let mut block = format!(
        "\nActorHub cluster {cluster_name:?} is ready: {} of {} nodes up.\n",
        running.len(),
        children.len()
    );
    for child in &running {
        block.push_str(&format!("  {}  {}\n", child.label, child.url()));
    }
    for child in children.iter().filter(|child| child.has_exited()) {
        block.push_str(&format!(
            "  {}  exited (see its log lines above)\n",
            child.label
        ));
    }
    block.push_str("Open any of these in a browser: every node serves the whole application.\n");
    block
        .push_str("`node status` shows the members; `node up --verbose` shows every node's log.\n");
    block.push_str("Press Ctrl-C to stop all nodes.\n");
    print_text(&block);
}

/// The shutdown signals `up` reacts to.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    /// The terminal closed: its foreground process group (`up`, not the nodes) gets SIGHUP.
    hangup: Signal,
}

impl ShutdownSignals {
    fn new() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next shutdown signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C (SIGINT)",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Copies `stream` to our stdout line by line, each line prefixed with `label |`.
async fn forward_lines(label: String, stream: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(OUTPUT_LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                print_text(&format!(
                    "{label} | {}",
                    text.trim_end_matches(['\n', '\r'])
                ));
            }
            Err(error) => {
                print_status(&label, &format!("cannot read its output any more: {error}"));
                return;
            }
        }
    }
}

/// Prints a state change of one node.
fn print_status(label: &str, message: &str) {
    print_text(&format!("{label} {message}"));
}

/// Writes `text` and a newline to stdout in one locked write, so lines from different tasks
/// never interleave. Errors (say `node up | head` closed the pipe) are ignored: the output is
/// for the user, and the nodes must keep running without it.
fn print_text(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// Whether the node at `addr` answers `GET /readyz` with 200 within [`PROBE_TIMEOUT`].
async fn probe_ready(addr: SocketAddr) -> bool {
    matches!(
        timeout(PROBE_TIMEOUT, http_get_status(addr, "/readyz")).await,
        Ok(Ok(200))
    )
}

/// The status code of a minimal HTTP/1.1 `GET`: enough for a probe, without an HTTP client
/// dependency. The caller bounds it with a timeout.
async fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: node-up\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream.take(STATUS_LINE_BYTES_MAX));
    let mut status_line = Vec::new();
    reader.read_until(b'\n', &mut status_line).await?;
    let status_line = String::from_utf8_lossy(&status_line);
    parse_status_line(&status_line).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {status_line:?}"),
        )
    })
}

/// The code of an HTTP/1.x status line such as `HTTP/1.1 503 Service Unavailable`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// `addr` with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback: where a node that
/// listens on every interface can be reached from this machine.
fn reachable_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Sends `signal` to `pid`, which must be one of our unreaped children.
fn send_signal(pid: u32, signal: ProcessSignal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other("pid out of range"))?;
    rustix::process::kill_process(pid, signal).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8101".parse().expect("address");
        assert_eq!(
            reachable_addr(any),
            "127.0.0.1:8101".parse::<SocketAddr>().expect("address")
        );
        let any6: SocketAddr = "[::]:8101".parse().expect("address");
        assert_eq!(
            reachable_addr(any6),
            "[::1]:8101".parse::<SocketAddr>().expect("address")
        );
        let specific: SocketAddr = "10.0.0.5:8101".parse().expect("address");
        assert_eq!(reachable_addr(specific), specific);
    }

    /// Answers one request with `status_line` and returns what the client sent.
    async fn serve_once(listener: TcpListener, status_line: &'static str) -> String {
        let Ok((mut stream, _)) = listener.accept().await else {
            return String::new();
        };
        let mut request = vec![0; 1024];
        let read = stream.read(&mut request).await.unwrap_or_default();
        let _ = stream
            .write_all(format!("{status_line}\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .await;
        String::from_utf8_lossy(&request[..read]).into_owned()
    }

    #[tokio::test]
    async fn probe_reads_the_status_code() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve_once(listener, "HTTP/1.1 503 Service Unavailable"));
        assert_eq!(http_get_status(addr, "/readyz").await.expect("answer"), 503);
        let request = server.await.expect("server task");
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve_once(listener, "HTTP/1.1 200 OK"));
        assert!(probe_ready(addr).await);
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_is_not_ready() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        assert!(!probe_ready(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await);
    }
}
