//! deploy/ against the real binary, so the manifests cannot drift from it:
//! - every metric the Grafana dashboard and the Prometheus alerts name is exported by running
//!   nodes, in the shape the queries expect (summaries for quantiles, the label values alerts
//!   select);
//! - the image's healthcheck script answers for a live node and fails for a dead address;
//! - the compose file's and the ConfigMap's cluster.toml load in the node, secrets from files;
//! - the StatefulSet's exact command, arguments and environment, with the ConfigMap and the
//!   Secrets as files, form a real 3-process cluster: three "pods" on 127.0.0.1-3 inside a
//!   network namespace whose hosts file makes the headless Service's name resolve to all three
//!   (and the object-store endpoint to a moto server there). Needs root and `ip`; CI has both.

#[path = "deploy/netns.rs"]
mod netns;
#[path = "deploy/pod.rs"]
mod pod;
#[path = "deploy/promql.rs"]
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use netns::PodNetwork;
use pod::{ContainerSpec, Files, IMAGE_PATH};
use promql::{Exposition, deploy_queries, selectors};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);
/// A node's drain on SIGTERM, at most (the StatefulSet's terminationGracePeriodSeconds).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long three fresh processes may take to find each other and settle.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const BOUNDARY: &str = "actorhub-deploy-boundary-5c1e";
/// Series that Prometheus itself adds to every target; no node exports them.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// The pods of the 3-process test, and the addresses they get (all on the namespace's `lo`).
const PODS: [(&str, &str); 3] = [
    ("actorhub-0", "127.0.0.1"),
    ("actorhub-1", "127.0.0.2"),
    ("actorhub-2", "127.0.0.3"),
];
/// Where the object-store endpoint's name points inside the namespace.
const OBJECT_STORE_IP: &str = "127.0.0.4";

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
// The dashboard's and alerts' metrics

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
    // whose worker crashes, then a member that leaves.
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
    // A graceful leave: n1 sees n2 `leaving`, then `down` once it is gone (the alert on
    // unexpected downs subtracts the leaves).
    cluster
        .terminate("n2", DRAIN_TIMEOUT)
        .await
        .expect("n2 stops on SIGTERM");
    cluster
        .wait_member_state("n1", "n2", "down", WAIT)
        .await
        .expect("n1 sees n2 down after it left");
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
// The configs the containers mount

#[test]
fn the_compose_and_configmap_configs_are_accepted_by_the_node() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let cookie = directory.path().join("cookie");
    let jwt_secret = directory.path().join("jwt-secret");
    std::fs::write(&cookie, "deploy-test-cookie-7c2e").expect("cookie file");
    std::fs::write(&jwt_secret, "deploy-test-jwt-secret-3f9a1d5b7e2c4a6b").expect("secret file");
    let config_map = directory.path().join("configmap-cluster.toml");
    std::fs::write(
        &config_map,
        yaml("k8s/configmap.yaml")["data"]["cluster.toml"]
            .as_str()
            .expect("the ConfigMap's cluster.toml"),
    )
    .expect("write the ConfigMap's cluster.toml");
    for config in [deploy_dir().join("cluster.toml"), config_map] {
        // `node token` loads and validates the whole config, secrets from files included,
        // without starting a node.
        let output = Command::new(env!("CARGO_BIN_EXE_node"))
            .args(["token", "--user", "probe", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", IMAGE_PATH)
            .env("ACTORHUB_COOKIE_FILE", &cookie)
            .env("ACTORHUB_JWT_SECRET_FILE", &jwt_secret)
            .output()
            .expect("run node token");
        assert!(
            output.status.success(),
            "the node rejects {}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The StatefulSet as three real processes

/// The contents of a Secret the StatefulSet mounts: what an operator creates (the README's
/// commands). TLS material comes from `node certs`, as deploy/make-secrets.sh makes it.
fn secret_files(name: &str, tls: &Path) -> Files {
    match name {
        "actorhub-secrets" => vec![
            ("cookie".into(), b"deploy-test-cookie-1b7f0e9c4d2a".to_vec()),
            (
                "jwt-secret".into(),
                b"deploy-test-jwt-secret-5e8a1c3b7d9f2e4a6c8b0d1f".to_vec(),
            ),
            ("admin-token".into(), ADMIN_TOKEN.as_bytes().to_vec()),
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

/// Starts moto at the config's S3 endpoint inside the namespace and creates its bucket.
fn start_object_store(network: &mut PodNetwork, bucket: &str, port: u16) {
    let moto = chaos::s3::moto_program();
    assert!(
        moto.exists(),
        "{} is missing: run .ci/install-deps",
        moto.display()
    );
    let directory = network.root.path().to_path_buf();
    let arguments = [
        "-H".into(),
        OBJECT_STORE_IP.into(),
        "-p".into(),
        port.to_string(),
    ];
    network.spawn(
        "object-store",
        &moto,
        &arguments,
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
            Ok((200, _)) => return,
            Ok((status, body)) => panic!("creating bucket {bucket}: {status} {body}"),
            Err(error) => assert!(Instant::now() < deadline, "moto does not answer: {error}"),
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The Secret actorhub-tls's files: `node certs` for the pod names, as make-secrets.sh runs it.
fn node_certs(network: &PodNetwork, config_text: &str) -> PathBuf {
    let out = network.root.path().join("node-certs");
    let config = network.root.path().join("certs-cluster.toml");
    std::fs::write(&config, config_text).expect("write the config for node certs");
    let mut certs = Command::new(env!("CARGO_BIN_EXE_node"));
    certs
        .args(["certs", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out);
    for (pod, _) in PODS {
        certs.args(["--node", pod]);
    }
    let output = certs.output().expect("run node certs");
    assert!(
        output.status.success(),
        "node certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// The admin token of the Secret actorhub-secrets in this test.
const ADMIN_TOKEN: &str = "deploy-test-admin-token-9d3b6f1a2c4e";

/// The members `address`'s `/api/cluster` shows up, and its `/readyz` status, with the raw
/// answers for messages.
fn view_of(network: &PodNetwork, address: SocketAddr) -> (BTreeSet<String>, bool, String) {
    let ready = network.http("GET", address, "/readyz");
    let view = network.http_with(
        "GET",
        address,
        "/api/cluster",
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    );
    let up = view
        .as_ref()
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .and_then(|view| view["members"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter(|member| member["state"] == "up")
        .filter_map(|member| member["id"].as_str().map(str::to_string))
        .collect();
    let is_ready = matches!(ready, Ok((200, _)));
    (
        up,
        is_ready,
        format!("readyz {ready:?}; /api/cluster {view:?}"),
    )
}

#[test]
fn the_statefulset_command_forms_a_three_node_cluster() {
    if !netns::is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: needs root and `ip` (network namespaces); CI runs as root");
        return;
    }
    let container = ContainerSpec::load();
    assert_eq!(
        container.command.first().map(String::as_str),
        Some("node"),
        "the container runs the image's `node` binary (replaced here by the one cargo built)"
    );
    let config_text = yaml("k8s/configmap.yaml")["data"]["cluster.toml"]
        .as_str()
        .expect("the ConfigMap's cluster.toml")
        .to_string();
    let config: toml::Table = toml::from_str(&config_text).expect("cluster.toml is TOML");
    let storage = config.get("storage").and_then(toml::Value::as_table);
    let setting = |key: &str| {
        storage
            .and_then(|storage| storage.get(key))
            .and_then(toml::Value::as_str)
    };
    let bucket = setting("url").and_then(|url| url.strip_prefix("s3://"));
    let endpoint = setting("endpoint").map(endpoint_host_port);

    // Names the pods resolve: the peers' name (from --join) to all three pods, the object
    // store's endpoint to the moto server started in the namespace.
    let join = container.flag("--join", &BTreeMap::new());
    let (join_host, _) = join.rsplit_once(':').expect("--join HOST:PORT");
    let mut hosts = vec![(
        join_host.to_string(),
        PODS.iter().map(|(_, ip)| ip.to_string()).collect(),
    )];
    if let Some((host, _)) = &endpoint {
        hosts.push((host.clone(), vec![OBJECT_STORE_IP.to_string()]));
    }
    let mut network = PodNetwork::create(&hosts);
    if let (Some(bucket), Some((_, port))) = (bucket, &endpoint) {
        start_object_store(&mut network, bucket, *port);
    }
    let tls = node_certs(&network, &config_text);

    let mut http_addresses = Vec::new();
    for (pod, pod_ip) in PODS {
        let pod_root = network.root.path().join(pod);
        container.mount_volumes(&pod_root, &config_text, &|secret| {
            secret_files(secret, &tls)
        });
        let process = container.process(pod, pod_ip, &pod_root);
        network.spawn(
            pod,
            Path::new(env!("CARGO_BIN_EXE_node")),
            &process.arguments,
            &process.environment,
            &process.directory,
        );
        let defined = BTreeMap::from([
            ("POD_NAME".to_string(), pod.to_string()),
            ("POD_IP".to_string(), pod_ip.to_string()),
        ]);
        let address: SocketAddr = container
            .flag("--http-addr", &defined)
            .parse()
            .expect("--http-addr is IP:PORT");
        http_addresses.push((pod, address));
    }

    // Each pod, through its own --http-addr, must be ready and see the three pods up.
    let expected: BTreeSet<String> = PODS.iter().map(|(pod, _)| pod.to_string()).collect();
    let started = Instant::now();
    loop {
        network.assert_running();
        let mut answers = BTreeMap::new();
        let mut formed = true;
        for (pod, address) in &http_addresses {
            let (up, ready, answer) = view_of(&network, *address);
            formed &= ready && up == expected;
            answers.insert(*pod, answer);
        }
        if formed {
            break;
        }
        assert!(
            started.elapsed() < FORM_TIMEOUT,
            "the StatefulSet's pods did not form a 3-node cluster within {FORM_TIMEOUT:?}; \
             last answers: {answers:#?}\n{}",
            network.log_tails()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    // The operator routes take the Secret's admin token (ACTORHUB_ADMIN_TOKEN_FILE).
    for (_, address) in &http_addresses {
        let anonymous = network.http("GET", *address, "/api/cluster");
        assert!(
            matches!(anonymous, Ok((401, _))),
            "/api/cluster without the admin token: {anonymous:?}"
        );
    }
    eprintln!(
        "the StatefulSet's command formed a 3-node cluster in {:?}",
        started.elapsed()
    );
}
