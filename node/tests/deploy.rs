//! deploy/ against the real binary, so the manifests cannot drift from it:
//! - every metric the Grafana dashboard and the Prometheus alerts name is exported by running
//!   nodes, in the shape the queries expect (summaries for quantiles, the label values alerts
//!   select);
//! - the image's healthcheck script answers for a live node and fails for a dead address;
//! - the StatefulSet's exact command, arguments and environment, with the ConfigMap and the
//!   Secrets as files, form a real 3-process cluster: three "pods" on 127.0.0.1-3 inside a
//!   network namespace whose hosts file makes the headless Service's name resolve to all three
//!   (and the object-store endpoint to a moto server there). Needs root and `ip`; CI has both.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);
/// How long three fresh processes may take to find each other and settle.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// One HTTP exchange inside the namespace (loopback: it answers at once or not at all).
const NETNS_HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const BOUNDARY: &str = "actorhub-deploy-boundary-5c1e";
/// Series that Prometheus itself adds to every target; no node exports them.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Labels Prometheus attaches at scrape time.
const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];
/// The pods of the 3-process test, and the addresses they get (all on the namespace's `lo`).
const PODS: [(&str, &str); 3] = [
    ("actorhub-0", "127.0.0.1"),
    ("actorhub-1", "127.0.0.2"),
    ("actorhub-2", "127.0.0.3"),
];
/// Where the object-store endpoint's name points inside the namespace.
const OBJECT_STORE_IP: &str = "127.0.0.4";
/// The image's search path (debian:bookworm-slim); the container has no other environment
/// than this and what the manifest sets.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The image's working directory (deploy/Dockerfile: WORKDIR).
const IMAGE_WORKDIR: &str = "/var/lib/actorhub";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_deploy(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read_deploy(relative))
        .unwrap_or_else(|error| panic!("deploy/{relative} is not YAML: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Metric names in the dashboard and the alerts

/// One metric selector of a query: its name and the `label="value"` matchers it requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    name: String,
    equal: Vec<(String, String)>,
    /// Where it was found, for messages.
    origin: String,
}

/// Every PromQL expression of the dashboard (queries and variables) and of the alert rules.
fn deploy_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dashboard: Value =
        serde_json::from_str(&read_deploy("grafana/actorhub.json")).expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((
                    format!("dashboard panel {:?}", panel["title"]),
                    expr.to_string(),
                ));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((
                format!("dashboard variable {:?}", variable["name"]),
                query.into(),
            ));
        }
    }
    let alerts = yaml("prometheus/alerts.yaml");
    for group in alerts["groups"].as_array().expect("alert groups") {
        for rule in group["rules"].as_array().expect("rules") {
            queries.push((
                format!("alert {}", rule["alert"].as_str().unwrap_or("?")),
                rule["expr"].as_str().expect("alert expr").to_string(),
            ));
        }
    }
    assert!(
        queries.len() > 20,
        "found only {} queries in deploy/",
        queries.len()
    );
    queries
}

fn is_name_start(character: char) -> bool {
    character.is_ascii_alphabetic() || character == '_' || character == ':'
}

fn is_name_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == ':'
}

/// The metric selectors of `expr`: every `actorhub_*` name (with its braces' equality
/// matchers), and every other name written with braces or a range (Prometheus's own `up`).
fn selectors(origin: &str, expr: &str) -> Vec<Selector> {
    let characters: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut index = 0;
    let mut in_string = false;
    while index < characters.len() {
        let character = characters[index];
        if character == '"' {
            in_string = !in_string;
            index += 1;
            continue;
        }
        let starts_name = !in_string
            && is_name_start(character)
            && (index == 0 || !is_name_char(characters[index - 1]));
        if !starts_name {
            index += 1;
            continue;
        }
        let start = index;
        while index < characters.len() && is_name_char(characters[index]) {
            index += 1;
        }
        let name: String = characters[start..index].iter().collect();
        let next = characters.get(index).copied();
        let with_braces = next == Some('{');
        if !(name.starts_with("actorhub_") || with_braces || next == Some('[')) {
            continue;
        }
        let mut equal = Vec::new();
        if with_braces {
            let close = characters[index..]
                .iter()
                .position(|&character| character == '}')
                .map(|offset| index + offset)
                .unwrap_or_else(|| panic!("{origin}: unclosed braces in {expr}"));
            let inside: String = characters[index + 1..close].iter().collect();
            for matcher in inside.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let Some((label, value)) = matcher.split_once('=') else {
                    panic!("{origin}: cannot read matcher {matcher:?} in {expr}");
                };
                let (label, value) = (label.trim(), value.trim());
                // `=~`, `!=` and `!~` select by pattern or exclusion; only `=` demands a value.
                if label.ends_with('!') || value.starts_with('~') {
                    continue;
                }
                if SCRAPE_LABELS.contains(&label) {
                    continue;
                }
                equal.push((label.to_string(), value.trim_matches('"').to_string()));
            }
            index = close + 1;
        }
        found.push(Selector {
            name,
            equal,
            origin: origin.to_string(),
        });
    }
    found
}

/// A scrape of `/metrics`: the `# TYPE` of each metric and every sample's name and labels.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    /// Sample name (with `_sum`/`_count`/`_bucket` as written) -> label sets seen.
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exposition {
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    self.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect("closing brace in a sample line");
                    (&line[..open], parse_labels(&line[open + 1..close]))
                }
                None => (
                    line.split_whitespace().next().unwrap_or_default(),
                    BTreeMap::new(),
                ),
            };
            self.samples
                .entry(name.to_string())
                .or_default()
                .push(labels);
        }
    }

    /// Why `selector` would select nothing from these nodes, or `None` when it selects a series.
    fn missing(&self, selector: &Selector) -> Option<String> {
        let name = &selector.name;
        let Some(kind) = self.types.get(name) else {
            return Some(format!("no metric {name} (no `# TYPE` line)"));
        };
        let quantile = selector.equal.iter().any(|(label, _)| label == "quantile");
        if quantile && kind != "summary" {
            return Some(format!(
                "{name} is a {kind}, but the query reads its quantiles (a summary's)"
            ));
        }
        if kind == "summary" || kind == "histogram" {
            for suffix in ["_sum", "_count"] {
                if !self.samples.contains_key(&format!("{name}{suffix}")) {
                    return Some(format!("{kind} {name} has no {name}{suffix}"));
                }
            }
        }
        let series = self
            .samples
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let matching = series.iter().any(|labels| {
            selector
                .equal
                .iter()
                .all(|(label, value)| labels.get(label) == Some(value))
        });
        if matching {
            None
        } else {
            Some(format!(
                "no sample of {name} has {:?}; seen label sets: {series:?}",
                selector.equal
            ))
        }
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((label, after)) = rest.split_once("=\"") {
        let label = label.trim_start_matches(',').trim();
        let mut value = String::new();
        let mut characters = after.char_indices();
        let mut end = after.len();
        while let Some((position, character)) = characters.next() {
            match character {
                '\\' => {
                    if let Some((_, escaped)) = characters.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = position + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(label.to_string(), value);
        rest = &after[end..];
    }
    labels
}

#[test]
fn selectors_are_read_from_promql() {
    let found = selectors(
        "test",
        r#"sum by (instance, member) (increase(actorhub_membership_transitions_total{job="actorhub", state="down"}[5m])) > 0 and up{job="actorhub"} == 0 or max(actorhub_members_up)"#,
    );
    let names: Vec<_> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "actorhub_membership_transitions_total",
            "up",
            "actorhub_members_up"
        ]
    );
    assert_eq!(found[0].equal, [("state".to_string(), "down".to_string())]);
    let quantile = selectors(
        "test",
        r#"max by (instance) (actorhub_ask_seconds{instance=~"$instance", quantile="0.99"})"#,
    );
    assert_eq!(
        quantile[0].equal,
        [("quantile".to_string(), "0.99".to_string())]
    );

    let mut exposition = Exposition::default();
    exposition.add(
        "# TYPE actorhub_ask_seconds summary\nactorhub_ask_seconds{quantile=\"0.99\"} 0.1\n\
         actorhub_ask_seconds_sum 1\nactorhub_ask_seconds_count 3\n\
         # TYPE actorhub_members_up gauge\nactorhub_members_up 2\n",
    );
    assert_eq!(exposition.missing(&quantile[0]), None);
    assert_eq!(exposition.missing(&found[2]), None);
    assert!(
        exposition
            .missing(&found[0])
            .is_some_and(|why| why.contains("no metric"))
    );
}

/// A `multipart/form-data` body with text fields and one file.
fn form(fields: &[(&str, &str)], file_name: &str, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Submits a conversion and waits for its final state; returns the state.
async fn convert(
    cluster: &TestCluster,
    node: &str,
    name: &str,
    file: &[u8],
    target: &str,
) -> String {
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/api/jobs", cluster.http_url(node)))
        .bearer_auth(test_token("dora"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form(&[("target", target)], name, file))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 202, "upload of {name} accepted");
    let body: Value = response.json().await.expect("job JSON");
    let job = body["job"].as_str().expect("job id").to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let answer: Value = http
            .get(format!("{}/api/jobs/{job}", cluster.http_url(node)))
            .bearer_auth(test_token("dora"))
            .send()
            .await
            .expect("job status")
            .json()
            .await
            .unwrap_or(Value::Null);
        let state = answer["state"].as_str().unwrap_or_default();
        if state == "done" || state == "failed" {
            return state.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "job {job} ({target}) did not finish; last answer {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(cluster: &TestCluster, node: &str, exposition: &mut Exposition) {
    let text = reqwest::get(format!("{}/metrics", cluster.http_url(node)))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    exposition.add(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut wanted = BTreeSet::new();
    for (origin, expr) in deploy_queries() {
        for selector in selectors(&origin, &expr) {
            wanted.insert(selector);
        }
    }
    let others: Vec<_> = wanted
        .iter()
        .filter(|selector| !selector.name.starts_with("actorhub_"))
        .filter(|selector| !PROMETHEUS_SERIES.contains(&selector.name.as_str()))
        .collect();
    assert!(
        others.is_empty(),
        "queries name metrics no node exports: {others:?}"
    );

    // Two nodes: a room, a post acknowledged across nodes, a conversion that succeeds and one
    // whose worker crashes, then a member killed so that its peer declares it down.
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(2)
        .setting("jobs", "test_converters", true)
        .setting("jobs", "max_attempts", 1)
        .start()
        .await
        .expect("cluster starts");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/rooms", cluster.http_url("n1")))
        .bearer_auth(test_token("room-maker"))
        .json(&json!({ "name": "Ops" }))
        .send()
        .await
        .expect("create room");
    assert_eq!(created.status(), 201, "room created");
    let room = created.json::<Value>().await.expect("room JSON")["room"]["id"]
        .as_str()
        .expect("room id")
        .to_string();
    let mut alice = ChatClient::connect(&cluster.http_url("n2"), &test_token("alice"))
        .await
        .expect("alice connects");
    alice.join_and_wait(&room, None).await.expect("join");
    alice
        .post(&room, "m1", "metrics, please")
        .await
        .expect("post");
    let (ack, _) = alice.until("ack", WAIT).await.expect("ack");
    assert_eq!(ack["id"], "m1");
    assert_eq!(
        convert(&cluster, "n1", "notes.md", b"# Ops\n\nhello", "html").await,
        "done"
    );
    assert_eq!(
        convert(&cluster, "n1", "boom.txt", b"boom", "panic").await,
        "failed"
    );

    let mut exposition = Exposition::default();
    for node in ["n1", "n2"] {
        scrape(&cluster, node, &mut exposition).await;
    }
    cluster.kill("n2");
    cluster
        .wait_member_state("n1", "n2", "down", WAIT)
        .await
        .expect("n1 declares n2 down");
    scrape(&cluster, "n1", &mut exposition).await;

    let problems: Vec<String> = wanted
        .iter()
        .filter(|selector| selector.name.starts_with("actorhub_"))
        .filter_map(|selector| {
            exposition
                .missing(selector)
                .map(|why| format!("{}: {why}", selector.origin))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "deploy/ queries metrics the nodes do not export:\n{}",
        problems.join("\n")
    );
    let names: BTreeSet<_> = wanted
        .iter()
        .map(|selector| selector.name.as_str())
        .collect();
    eprintln!(
        "{} metric names of deploy/ exported: {names:?}",
        names.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The image's healthcheck script

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_passes_for_a_live_node_and_fails_otherwise() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .start()
        .await
        .expect("cluster starts");
    let script = deploy_dir().join("healthcheck.sh");
    let run = |address: String| {
        Command::new("bash")
            .arg(&script)
            .env_clear()
            .env("PATH", IMAGE_PATH)
            .env("ACTORHUB_HEALTH_ADDR", address)
            .status()
            .expect("run deploy/healthcheck.sh")
    };
    let live = run(cluster.http_addr("n1").to_string());
    assert!(live.success(), "healthcheck of a live node: {live}");
    // A port nothing listens on: the node's HTTP port once it is gone.
    let address = cluster.http_addr("n1");
    cluster.kill("n1");
    let dead = run(address.to_string());
    assert!(!dead.success(), "healthcheck of a dead node succeeded");
}

// ---------------------------------------------------------------------------------------------
// The StatefulSet as three real processes

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

fn is_root() -> bool {
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

/// A network namespace with `lo` up and its own hosts file, the processes started in it, and
/// the files of its pods. Dropping it kills the processes (by pid) and removes the namespace,
/// its hosts file and the files.
struct PodNetwork {
    namespace: String,
    netns_etc: PathBuf,
    children: Vec<(String, Child)>,
    /// The pods' filesystems and logs; removed last.
    root: tempfile::TempDir,
}

impl PodNetwork {
    /// `hosts`: (name, addresses) lines of the namespace's /etc/hosts.
    fn create(hosts: &[(String, Vec<String>)]) -> PodNetwork {
        let namespace = format!("ahdeploy{}", std::process::id());
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
    fn spawn(
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
    fn assert_running(&mut self) {
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

    fn log_tails(&self) -> String {
        let mut text = String::new();
        for (label, _) in &self.children {
            let log = std::fs::read_to_string(self.root.path().join(format!("{label}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            text.push_str(&format!(
                "--- last lines of {label}:\n{}\n",
                tail.join("\n")
            ));
        }
        text
    }

    /// One HTTP/1.0 exchange with `address` from inside the namespace: (status, body).
    fn http(
        &self,
        method: &str,
        address: SocketAddr,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let namespace = self.namespace.clone();
        let path = path.to_string();
        let method = method.to_string();
        std::thread::spawn(move || -> std::io::Result<(u16, String)> {
            // This thread alone moves into the namespace; its sockets live there.
            chaos::netns::enter_namespace(&namespace)?;
            let mut stream = TcpStream::connect_timeout(&address, NETNS_HTTP_TIMEOUT)?;
            stream.set_read_timeout(Some(NETNS_HTTP_TIMEOUT))?;
            stream.set_write_timeout(Some(NETNS_HTTP_TIMEOUT))?;
            write!(
                stream,
                "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n"
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
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
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

/// `$(NAME)` references expanded as Kubernetes does for a container's env, command and args:
/// defined names are replaced, `$$` escapes, anything else stays as written.
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
            continue;
        }
        if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
            && let Some(value) = defined.get(&inner[..close])
        {
            out.push_str(value);
            rest = &inner[close + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Characters that continue a path: a mount path matches only where none comes before it and
/// none but `/` comes after it.
fn is_path_char(character: char) -> bool {
    character.is_alphanumeric() || "_-./".contains(character)
}

/// Replaces each container path under one of `mount_paths` with the same path under
/// `pod_root`: the only change made to what the manifests say.
fn rewrite_paths(text: &str, mount_paths: &[String], pod_root: &Path) -> String {
    let mut longest_first = mount_paths.to_vec();
    longest_first.sort_by_key(|path| std::cmp::Reverse(path.len()));
    let mut out = String::new();
    let mut index = 0;
    'scan: while let Some(character) = text[index..].chars().next() {
        let starts_path = text[..index]
            .chars()
            .next_back()
            .is_none_or(|before| !is_path_char(before));
        if starts_path {
            for mount in &longest_first {
                let after = text[index..]
                    .strip_prefix(mount.as_str())
                    .map(|rest| rest.chars().next());
                if let Some(after) = after
                    && after.is_none_or(|after| after == '/' || !is_path_char(after))
                {
                    out.push_str(&format!("{}{mount}", pod_root.display()));
                    index += mount.len();
                    continue 'scan;
                }
            }
        }
        out.push(character);
        index += character.len_utf8();
    }
    out
}

#[test]
fn kubernetes_expansion_and_path_rewriting() {
    let defined = BTreeMap::from([
        ("POD_NAME".to_string(), "actorhub-1".to_string()),
        ("POD_IP".to_string(), "127.0.0.2".to_string()),
    ]);
    assert_eq!(expand("$(POD_IP):7100", &defined), "127.0.0.2:7100");
    assert_eq!(expand("--id=$(POD_NAME)", &defined), "--id=actorhub-1");
    assert_eq!(
        expand("$$(POD_IP) $(UNKNOWN) $x", &defined),
        "$(POD_IP) $(UNKNOWN) $x"
    );
    let mounts = vec![
        "/etc/actorhub/tls".to_string(),
        "/var/lib/actorhub".to_string(),
    ];
    let root = Path::new("/tmp/pod");
    assert_eq!(
        rewrite_paths("dir = \"/etc/actorhub/tls\"", &mounts, root),
        "dir = \"/tmp/pod/etc/actorhub/tls\""
    );
    assert_eq!(
        rewrite_paths(
            "/var/lib/actorhub/x /var/lib/actorhubs /x/var/lib/actorhub",
            &mounts,
            root
        ),
        "/tmp/pod/var/lib/actorhub/x /var/lib/actorhubs /x/var/lib/actorhub"
    );
}

/// The node container of the StatefulSet, and its pod's volumes by name.
fn statefulset_container() -> (Value, BTreeMap<String, Value>) {
    let statefulset = yaml("k8s/statefulset.yaml");
    assert_eq!(statefulset["kind"], "StatefulSet");
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|container| container["name"] == "node")
        .expect("a container named node")
        .clone();
    let volumes = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|volume| {
            (
                volume["name"].as_str().expect("volume name").to_string(),
                volume.clone(),
            )
        })
        .collect();
    (container, volumes)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| item.as_str().expect("a string").to_string())
        .collect()
}

/// host:port of a `--flag VALUE` in `arguments`.
fn flag_value<'a>(arguments: &'a [String], flag: &str) -> Option<&'a str> {
    arguments
        .windows(2)
        .find(|pair| pair[0] == flag)
        .map(|pair| pair[1].as_str())
}

/// The contents of a Secret the StatefulSet mounts: what an operator creates (the README's
/// commands). TLS material comes from `node certs`, as deploy/make-secrets.sh makes it.
fn secret_files(name: &str, tls: &Path) -> Vec<(String, Vec<u8>)> {
    match name {
        "actorhub-secrets" => vec![
            ("cookie".into(), b"deploy-test-cookie-1b7f0e9c4d2a".to_vec()),
            (
                "jwt-secret".into(),
                b"deploy-test-jwt-secret-5e8a1c3b7d9f2e4a6c8b0d1f".to_vec(),
            ),
        ],
        // moto accepts any keys.
        "actorhub-s3" => vec![
            ("access-key-id".into(), b"deploy-test".to_vec()),
            ("secret-access-key".into(), b"deploy-test-secret".to_vec()),
        ],
        "actorhub-tls" => std::fs::read_dir(tls)
            .expect("node certs output")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.file_name().is_some_and(|name| name != "ca.key"))
            .map(|path| {
                (
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                    std::fs::read(&path).expect("certificate file"),
                )
            })
            .collect(),
        other => panic!(
            "the StatefulSet mounts the Secret {other:?}, which this test does not know: add its keys here and to the README"
        ),
    }
}

/// (host, port) of an `http://host:port` endpoint.
fn endpoint_host_port(endpoint: &str) -> (String, u16) {
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the object-store endpoint {endpoint:?} is not http://"))
        .trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').expect("endpoint with a port");
    (host.to_string(), port.parse().expect("endpoint port"))
}

#[test]
fn the_statefulset_command_forms_a_three_node_cluster() {
    if !is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: needs root and `ip` (network namespaces); CI runs as root");
        return;
    }
    let (container, volumes) = statefulset_container();
    let command = strings(&container["command"]);
    let arguments = strings(&container["args"]);
    assert_eq!(
        command.first().map(String::as_str),
        Some("node"),
        "the container runs the image's `node` binary (replaced here by the one cargo built)"
    );
    let config_map = yaml("k8s/configmap.yaml");
    let config_text = config_map["data"]["cluster.toml"]
        .as_str()
        .expect("the ConfigMap's cluster.toml")
        .to_string();
    let config: toml::Table = toml::from_str(&config_text).expect("cluster.toml is TOML");
    let mounts: Vec<Value> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .clone();
    let mount_paths: Vec<String> = mounts
        .iter()
        .map(|mount| mount["mountPath"].as_str().expect("mountPath").to_string())
        .collect();

    // Names the pods resolve: the peers' name (from --join) to all three pods, the object
    // store's endpoint to the moto server started below.
    let join = expand(
        flag_value(&arguments, "--join").expect("the container passes --join"),
        &BTreeMap::new(),
    );
    let (join_host, _) = join.rsplit_once(':').expect("--join HOST:PORT");
    let mut hosts = vec![(
        join_host.to_string(),
        PODS.iter().map(|(_, ip)| ip.to_string()).collect(),
    )];
    let storage = config.get("storage").and_then(toml::Value::as_table);
    let bucket = storage
        .and_then(|storage| storage.get("url"))
        .and_then(toml::Value::as_str)
        .and_then(|url| url.strip_prefix("s3://"))
        .map(str::to_string);
    let endpoint = storage
        .and_then(|storage| storage.get("endpoint"))
        .and_then(toml::Value::as_str)
        .map(endpoint_host_port);
    if let Some((host, _)) = &endpoint {
        hosts.push((host.clone(), vec![OBJECT_STORE_IP.to_string()]));
    }
    let mut network = PodNetwork::create(&hosts);

    if let (Some(bucket), Some((_, port))) = (&bucket, &endpoint) {
        let moto = chaos::s3::moto_program();
        assert!(
            moto.exists(),
            "{} is missing: run .ci/install-deps",
            moto.display()
        );
        let directory = network.root.path().to_path_buf();
        network.spawn(
            "object-store",
            &moto,
            &[
                "-H".into(),
                OBJECT_STORE_IP.into(),
                "-p".into(),
                port.to_string(),
            ],
            &[("PATH".into(), IMAGE_PATH.into())],
            &directory,
        );
        let address: SocketAddr = format!("{OBJECT_STORE_IP}:{port}")
            .parse()
            .expect("address");
        let deadline = Instant::now() + WAIT;
        loop {
            network.assert_running();
            // moto accepts an unsigned PUT that creates a bucket.
            match network.http("PUT", address, &format!("/{bucket}")) {
                Ok((200, _)) => break,
                Ok((status, body)) => panic!("creating bucket {bucket}: {status} {body}"),
                Err(error) => assert!(Instant::now() < deadline, "moto does not answer: {error}"),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    // The Secrets' contents, once: TLS material from `node certs` for the three pod names.
    let tls_out = network.root.path().join("node-certs");
    let config_for_certs = network.root.path().join("certs-cluster.toml");
    std::fs::write(&config_for_certs, &config_text).expect("write the config for node certs");
    let mut certs = Command::new(env!("CARGO_BIN_EXE_node"));
    certs
        .args(["certs", "--config"])
        .arg(&config_for_certs)
        .arg("--out")
        .arg(&tls_out);
    for (pod, _) in PODS {
        certs.args(["--node", pod]);
    }
    let output = certs.output().expect("run node certs");
    assert!(
        output.status.success(),
        "node certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    for (pod, pod_ip) in PODS {
        let pod_root = network.root.path().join(pod);
        // Every volume, as the kubelet would mount it.
        for mount in &mounts {
            let name = mount["name"].as_str().expect("mount name");
            let mount_path = mount["mountPath"].as_str().expect("mountPath");
            let target = pod_root.join(mount_path.trim_start_matches('/'));
            let volume = volumes
                .get(name)
                .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
            let files: Vec<(String, Vec<u8>)> = if let Some(config_map) = volume.get("configMap") {
                assert_eq!(
                    config_map["name"], "actorhub-config",
                    "the ConfigMap of configmap.yaml"
                );
                let text = rewrite_paths(&config_text, &mount_paths, &pod_root);
                vec![("cluster.toml".into(), text.into_bytes())]
            } else if let Some(secret) = volume.get("secret") {
                let files =
                    secret_files(secret["secretName"].as_str().expect("secretName"), &tls_out);
                match secret.get("items").and_then(Value::as_array) {
                    None => files,
                    Some(items) => items
                        .iter()
                        .map(|item| {
                            let key = item["key"].as_str().expect("item key");
                            let content = files
                                .iter()
                                .find(|(name, _)| name == key)
                                .unwrap_or_else(|| {
                                    panic!("Secret item {key} is not among {files:?}")
                                })
                                .1
                                .clone();
                            (
                                item["path"].as_str().expect("item path").to_string(),
                                content,
                            )
                        })
                        .collect(),
                }
            } else if volume.get("emptyDir").is_some() {
                Vec::new()
            } else {
                panic!("volume {name}: this test knows configMap, secret and emptyDir volumes");
            };
            match mount.get("subPath").and_then(Value::as_str) {
                Some(sub_path) => {
                    let (_, content) = files
                        .iter()
                        .find(|(file, _)| file == sub_path)
                        .unwrap_or_else(|| panic!("volume {name} has no {sub_path}"));
                    std::fs::create_dir_all(target.parent().expect("parent"))
                        .expect("mount parent");
                    std::fs::write(&target, content).expect("write a mounted file");
                }
                None => {
                    std::fs::create_dir_all(&target).expect("mount directory");
                    for (file, content) in &files {
                        std::fs::write(target.join(file), content).expect("write a mounted file");
                    }
                }
            }
        }

        // The environment: the downward API, then the manifest's values, `$(VAR)` expanded
        // from what is defined before (as Kubernetes does), container paths under the pod root.
        let mut defined = BTreeMap::new();
        let mut environment = vec![
            ("PATH".to_string(), IMAGE_PATH.to_string()),
            (
                "HOME".to_string(),
                rewrite_paths(IMAGE_WORKDIR, &mount_paths, &pod_root),
            ),
        ];
        for entry in container["env"].as_array().expect("env") {
            let name = entry["name"].as_str().expect("env name").to_string();
            let value = if let Some(value) = entry["value"].as_str() {
                rewrite_paths(&expand(value, &defined), &mount_paths, &pod_root)
            } else {
                match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.to_string(),
                    Some("status.podIP") => pod_ip.to_string(),
                    other => panic!(
                        "env {name}: this test knows metadata.name and status.podIP, not {other:?}"
                    ),
                }
            };
            defined.insert(name.clone(), value.clone());
            environment.push((name, value));
        }
        let run_arguments: Vec<String> = command[1..]
            .iter()
            .chain(&arguments)
            .map(|argument| rewrite_paths(&expand(argument, &defined), &mount_paths, &pod_root))
            .collect();
        let workdir = pod_root.join(IMAGE_WORKDIR.trim_start_matches('/'));
        std::fs::create_dir_all(&workdir).expect("working directory");
        network.spawn(
            pod,
            Path::new(env!("CARGO_BIN_EXE_node")),
            &run_arguments,
            &environment,
            &workdir,
        );
    }

    // Each pod's view, through its own --http-addr, must list the three pods up.
    let http_addresses: Vec<(String, SocketAddr)> = PODS
        .iter()
        .map(|(pod, ip)| {
            let defined = BTreeMap::from([
                ("POD_NAME".to_string(), pod.to_string()),
                ("POD_IP".to_string(), ip.to_string()),
            ]);
            let address = expand(
                flag_value(&arguments, "--http-addr").expect("--http-addr"),
                &defined,
            );
            (
                pod.to_string(),
                address.parse().expect("--http-addr is IP:PORT"),
            )
        })
        .collect();
    let expected: BTreeSet<String> = PODS.iter().map(|(pod, _)| pod.to_string()).collect();
    let started = Instant::now();
    let mut last_answers = BTreeMap::new();
    loop {
        network.assert_running();
        let mut formed = true;
        for (pod, address) in &http_addresses {
            let ready = network.http("GET", *address, "/readyz");
            let view = network.http("GET", *address, "/api/cluster");
            let up: BTreeSet<String> = view
                .as_ref()
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
                .and_then(|view| view["members"].as_array().cloned())
                .into_iter()
                .flatten()
                .filter(|member| member["state"] == "up")
                .filter_map(|member| member["id"].as_str().map(str::to_string))
                .collect();
            let this_formed = matches!(ready, Ok((200, _))) && up == expected;
            formed &= this_formed;
            last_answers.insert(
                pod.clone(),
                format!("readyz {ready:?}; /api/cluster {view:?}"),
            );
        }
        if formed {
            break;
        }
        assert!(
            started.elapsed() < FORM_TIMEOUT,
            "the StatefulSet's pods did not form a 3-node cluster within {FORM_TIMEOUT:?}; last answers: {last_answers:#?}\n{}",
            network.log_tails()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    eprintln!(
        "the StatefulSet's command formed a 3-node cluster in {:?}",
        started.elapsed()
    );
}
