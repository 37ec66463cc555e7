//! A network namespace for the "pods" of the StatefulSet test: `lo` up, a hosts file of its
//! own (`ip netns exec` bind-mounts it over /etc/hosts), the processes started in it, and HTTP
//! from threads that enter it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One HTTP exchange inside the namespace (loopback: it answers at once or not at all).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Log lines of each process shown when the test fails.
const LOG_TAIL_LINES: usize = 25;

/// Runs `ip` with `arguments`; panics with its stderr when it fails.
fn ip(arguments: &[&str]) {
    let output = Command::new("ip")
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("cannot run ip {arguments:?}: {error}"));
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        arguments.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Every namespace of this test is `<prefix><pid of the test process>`.
const NAMESPACE_PREFIX: &str = "ahdeploy";

/// Removes the namespaces (and hosts files) of earlier runs of this test whose process is
/// gone (killed before its Drop ran), after SIGKILLing what still runs inside them: only such
/// a run can have started processes there.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NAMESPACE_PREFIX) else {
            continue;
        };
        if !pid.chars().all(|c| c.is_ascii_digit()) || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for inside in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", inside]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
    }
}

/// A network namespace with `lo` up and its own hosts file, the processes started in it, and
/// the files of its pods. Dropping it kills the processes (by pid) and removes the namespace,
/// its hosts file and the files.
pub struct PodNetwork {
    namespace: String,
    netns_etc: PathBuf,
    children: Vec<(String, Child)>,
    /// The pods' filesystems and logs; removed last.
    pub root: tempfile::TempDir,
}

impl PodNetwork {
    /// `hosts`: (name, addresses) lines of the namespace's /etc/hosts.
    pub fn create(hosts: &[(String, Vec<String>)]) -> PodNetwork {
        remove_leftovers();
        let namespace = format!("{NAMESPACE_PREFIX}{}", std::process::id());
        let netns_etc = PathBuf::from("/etc/netns").join(&namespace);
        let network = PodNetwork {
            namespace: namespace.clone(),
            netns_etc: netns_etc.clone(),
            children: Vec::new(),
            root: tempfile::tempdir().expect("temporary directory"),
        };
        std::fs::create_dir_all(&netns_etc).expect("create /etc/netns/<namespace>");
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, addresses) in hosts {
            for address in addresses {
                text.push_str(&format!("{address} {name}\n"));
            }
        }
        // `ip netns exec` bind-mounts this file over /etc/hosts for what it runs.
        std::fs::write(netns_etc.join("hosts"), text).expect("write the namespace's hosts file");
        ip(&["netns", "add", &namespace]);
        ip(&["netns", "exec", &namespace, "ip", "link", "set", "lo", "up"]);
        network
    }

    /// Starts `program arguments` in the namespace with exactly `environment`, in `directory`,
    /// its output appended to `<root>/<label>.log`.
    pub fn spawn(
        &mut self,
        label: &str,
        program: &Path,
        arguments: &[String],
        environment: &[(String, String)],
        directory: &Path,
    ) {
        let log_path = self.root.path().join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path).expect("create a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .arg(program)
            .args(arguments)
            .env_clear()
            .envs(environment.iter().map(|(key, value)| (key, value)))
            .current_dir(directory)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {label}: {error}"));
        self.children.push((label.to_string(), child));
    }

    /// Panics with the logs if a started process has exited.
    pub fn assert_running(&mut self) {
        let mut exited = Vec::new();
        for (label, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push(format!("{label} exited: {status}"));
            }
        }
        assert!(
            exited.is_empty(),
            "{}\n{}",
            exited.join("\n"),
            self.log_tails()
        );
    }

    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for (label, _) in &self.children {
            let log = std::fs::read_to_string(self.root.path().join(format!("{label}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            text.push_str(&format!(
                "--- last lines of {label}:\n{}\n",
                tail.join("\n")
            ));
        }
        text
    }

    /// One HTTP/1.0 exchange with `address` from inside the namespace: (status, body).
    pub fn http(
        &self,
        method: &str,
        address: SocketAddr,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        self.http_with(method, address, path, "")
    }

    /// [`Self::http`] with extra header lines (each ending in `\r\n`).
    pub fn http_with(
        &self,
        method: &str,
        address: SocketAddr,
        path: &str,
        headers: &str,
    ) -> std::io::Result<(u16, String)> {
        let headers = headers.to_string();
        let namespace = self.namespace.clone();
        let path = path.to_string();
        let method = method.to_string();
        std::thread::spawn(move || -> std::io::Result<(u16, String)> {
            // This thread alone moves into the namespace; its sockets live there.
            chaos::netns::enter_namespace(&namespace)?;
            let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
            write!(
                stream,
                "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{headers}Content-Length: 0\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let status = response
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default();
            Ok((status, body))
        })
        .join()
        .expect("the namespace HTTP thread panicked")
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.namespace])
            .status();
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}
