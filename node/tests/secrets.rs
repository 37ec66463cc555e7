//! Secrets of a real node: one bound beyond loopback refuses to start with the sample cookie or
//! JWT key, without an admin token, or with plaintext cluster traffic, and names the setting
//! and how to make one; on loopback the samples are accepted; `node up` generates the cluster's
//! secrets and certificates once, uses them (a token signed with the sample key is refused) and
//! reuses them on the next start.
//!
//! Nothing here sends traffic beyond loopback: the refused nodes stop before binding anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos::cluster::free_loopback_ports;

const SAMPLE_COOKIE: &str = "dev-cookie-change-me";
const SAMPLE_JWT: &str = "dev-jwt-secret-change-me-please";
const WAIT: Duration = Duration::from_secs(30);
/// The environment variables a developer's shell could set that change what a node reads.
const SECRET_ENV: [&str; 8] = [
    "ACTORHUB_COOKIE",
    "ACTORHUB_COOKIE_FILE",
    "ACTORHUB_JWT_SECRET",
    "ACTORHUB_JWT_SECRET_FILE",
    "ACTORHUB_ADMIN_TOKEN",
    "ACTORHUB_ADMIN_TOKEN_FILE",
    "ACTORHUB_TLS_DIR",
    "RUST_LOG",
];

fn config_text(cluster_port: u16, http_port: u16) -> String {
    format!(
        "[cluster]\nname = \"secrets\"\ncookie = \"{SAMPLE_COOKIE}\"\ndata_dir = \"data\"\n\
         [storage]\nurl = \"file:data/objects\"\n\
         [web]\njwt_secret = \"{SAMPLE_JWT}\"\n\
         [[node]]\nid = \"n1\"\ncluster_addr = \"127.0.0.1:{cluster_port}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\n"
    )
}

fn node(directory: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_node"));
    command.current_dir(directory);
    for key in SECRET_ENV {
        command.env_remove(key);
    }
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `node run` of n1 with its HTTP address on every interface, and `env`.
fn run_beyond_loopback(directory: &Path, http_port: u16, env: &[(&str, &str)]) -> Output {
    let mut command = node(directory);
    command
        .args(["run", "--config", "cluster.toml", "--id", "n1"])
        .args(["--http-addr", &format!("0.0.0.0:{http_port}")])
        .envs(env.iter().copied());
    command.output().expect("run node")
}

fn assert_refused(output: &Output, fragments: &[&str]) {
    assert_eq!(output.status.code(), Some(2), "refused: {}", stderr(output));
    for fragment in fragments {
        assert!(
            stderr(output).contains(fragment),
            "the refusal mentions {fragment:?}: {}",
            stderr(output)
        );
    }
}

#[test]
fn a_node_beyond_loopback_refuses_sample_secrets_a_missing_admin_token_and_plaintext() {
    let directory = tempfile::tempdir().expect("tempdir");
    let ports = free_loopback_ports(2).expect("ports");
    std::fs::write(
        directory.path().join("cluster.toml"),
        config_text(ports[0], ports[1]),
    )
    .expect("config");
    let cookie = "a-random-cookie-7f3a9c1e5b2d4f6a";
    let jwt = "a-random-jwt-key-2b4d6f8a0c1e3a5c";
    let admin = "a-random-admin-token-9e8d7c6b5a4f";

    let output = run_beyond_loopback(directory.path(), ports[1], &[]);
    assert_refused(
        &output,
        &["`cluster.cookie`", "ACTORHUB_COOKIE", "openssl rand"],
    );
    let output = run_beyond_loopback(directory.path(), ports[1], &[("ACTORHUB_COOKIE", cookie)]);
    assert_refused(&output, &["`web.jwt_secret`", "ACTORHUB_JWT_SECRET"]);
    let output = run_beyond_loopback(
        directory.path(),
        ports[1],
        &[("ACTORHUB_COOKIE", cookie), ("ACTORHUB_JWT_SECRET", jwt)],
    );
    assert_refused(&output, &["`web.admin_token`", "ACTORHUB_ADMIN_TOKEN"]);
    let output = run_beyond_loopback(
        directory.path(),
        ports[1],
        &[
            ("ACTORHUB_COOKIE", cookie),
            ("ACTORHUB_JWT_SECRET", jwt),
            ("ACTORHUB_ADMIN_TOKEN", admin),
        ],
    );
    assert_refused(&output, &["[cluster.tls]", "node certs"]);
    // No refusal repeats a secret it was given.
    for secret in [cookie, jwt, admin] {
        assert!(!stderr(&output).contains(secret), "{}", stderr(&output));
    }
}

/// A child process killed when the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    fn interrupt_and_wait(mut self) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.0),
            rustix::process::Signal::INT,
        )
        .expect("SIGINT");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process stops within {WAIT:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The status of `GET path` on `port` with `token` (0 when the node does not answer).
fn status_of(port: u16, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{authorization}\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return 0;
    }
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn wait_ready(port: u16, process: &mut Running) {
    let deadline = Instant::now() + WAIT;
    while status_of(port, "/readyz", None) != 200 {
        assert!(
            process.0.try_wait().expect("wait").is_none(),
            "the process exited before the node was ready"
        );
        assert!(
            Instant::now() < deadline,
            "the node is ready within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(directory: &Path, user: &str) -> String {
    let output = node(directory)
        .args(["token", "--config", "cluster.toml", "--user", user])
        .output()
        .expect("node token");
    assert!(output.status.success(), "node token: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn secret_files(directory: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let data = directory.join("data");
    [
        "secrets/cookie",
        "secrets/jwt-secret",
        "secrets/admin-token",
        "tls/ca.pem",
        "tls/n1.pem",
    ]
    .iter()
    .map(|name| {
        let path = data.join(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|error| panic!("node up created {name}: {error}"));
        (path, bytes)
    })
    .collect()
}

#[test]
fn the_samples_start_on_loopback_and_node_up_generates_and_reuses_secrets() {
    let directory = tempfile::tempdir().expect("tempdir");
    let ports = free_loopback_ports(2).expect("ports");
    std::fs::write(
        directory.path().join("cluster.toml"),
        config_text(ports[0], ports[1]),
    )
    .expect("config");
    let sample_token = token(directory.path(), "sample");

    // On loopback the samples are accepted (with a warning in the log).
    let mut run = Running(
        node(directory.path())
            .args(["run", "--config", "cluster.toml", "--id", "n1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node run"),
    );
    wait_ready(ports[1], &mut run);
    assert_eq!(status_of(ports[1], "/api/rooms", Some(&sample_token)), 200);
    assert!(run.interrupt_and_wait().success());

    // `node up`: secrets and certificates generated, then used.
    let up = || {
        Running(
            node(directory.path())
                .args(["up", "--config", "cluster.toml"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node up"),
        )
    };
    let mut first = up();
    wait_ready(ports[1], &mut first);
    let generated = secret_files(directory.path());
    for (path, bytes) in &generated[..3] {
        assert!(
            bytes.len() >= 32,
            "{} holds a random secret",
            path.display()
        );
        let mode = std::fs::metadata(path).expect("metadata").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "{} is private to its owner",
            path.display()
        );
    }
    let generated_token = token(directory.path(), "generated");
    assert_eq!(
        status_of(ports[1], "/api/rooms", Some(&generated_token)),
        200,
        "a token of the generated key is accepted"
    );
    assert_eq!(
        status_of(ports[1], "/api/rooms", Some(&sample_token)),
        401,
        "a token of the sample key is refused once the cluster has its own"
    );
    assert!(first.interrupt_and_wait().success());

    // The next start reuses them: same files, and the earlier token still works.
    let mut second = up();
    wait_ready(ports[1], &mut second);
    assert_eq!(
        secret_files(directory.path()),
        generated,
        "the secrets are reused"
    );
    assert_eq!(
        status_of(ports[1], "/api/rooms", Some(&generated_token)),
        200
    );
    assert!(second.interrupt_and_wait().success());
}
