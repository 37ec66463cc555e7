//! Operating a running cluster of real node processes: a fourth node that joins with nothing
//! but a seed address (`--join`) takes its rooms by hand-off and gives them back when it stops;
//! a rolling restart (SIGTERM, restart, next) of every node under chat and job load; a drain
//! from outside (`node drain`) and `node status`. No acknowledged message may be lost and no
//! job either. The numbers the operations issue asks for (time to the first hand-off entity,
//! pause per room, drain time, SIGTERM to exit) are printed with a `measured:` prefix.
//! Tests run one at a time (2-core machine), each with its own cluster.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster, free_loopback_ports};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(30);
/// Longest one post may stay unacknowledged, reconnects and retries included.
const POST_DEADLINE: Duration = Duration::from_secs(30);
/// Between two posts of one room's poster: the load, and the resolution of a measured pause.
const POST_PACE: Duration = Duration::from_millis(40);
/// Before retrying a refused post or a failed connect (a node is going or coming).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

async fn cluster(settings: &[(&str, &str, toml::Value)]) -> TestCluster {
    let mut builder = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .setting("sessions", "messages_per_second", 10_000)
        .setting("jobs", "test_converters", true);
    for (table, key, value) in settings {
        builder = builder.setting(table, key, value.clone());
    }
    builder.start().await.expect("3-node cluster starts")
}

async fn create_room(http: &reqwest::Client, url: &str, name: &str) -> String {
    let response = http
        .post(format!("{url}/api/rooms"))
        .bearer_auth(test_token("operator"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("create room");
    assert_eq!(response.status(), 201, "create room {name}");
    let body: Value = response.json().await.expect("json");
    body["room"]["id"].as_str().expect("room id").to_string()
}

/// Every message id in `room`'s history, read through `url`.
async fn history_ids(http: &reqwest::Client, url: &str, room: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let response = http
            .get(format!(
                "{url}/api/rooms/{room}/messages?after={after}&limit=200"
            ))
            .bearer_auth(test_token("auditor"))
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200, "history of {room}");
        let body: Value = response.json().await.expect("json");
        let page = body["messages"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last().and_then(|message| message["seq"].as_u64()) else {
            return ids;
        };
        after = last;
        ids.extend(
            page.iter()
                .filter_map(|message| message["id"].as_str().map(str::to_string)),
        );
    }
}

/// One room's poster: what it got acknowledged, and when.
struct Posted {
    room: String,
    acks: Vec<(String, Instant)>,
}

impl Posted {
    /// The longest time between two consecutive acks within `window` (the pause the room's
    /// users saw), if two acks fall in it.
    fn longest_gap(&self, window: (Instant, Instant)) -> Option<Duration> {
        let times: Vec<Instant> = self
            .acks
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at >= window.0 && *at <= window.1)
            .collect();
        times.windows(2).map(|pair| pair[1] - pair[0]).max()
    }
}

/// Posts to `room` one message at a time until `stop`, each retried with the same id until
/// acknowledged: on an error frame after a short backoff, on a closed connection (a node
/// leaving closes with 1012) through the next node of `urls`.
async fn post_until_stopped(
    urls: Vec<String>,
    first: usize,
    room: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Posted> {
    let user = format!("poster-{room}");
    let token = test_token(&user);
    let mut target = first;
    let mut client: Option<ChatClient> = None;
    let mut acks = Vec::new();
    let mut index = 0u64;
    while !*stop.borrow() {
        let id = format!("{user}-{index}");
        let started = Instant::now();
        loop {
            anyhow::ensure!(
                started.elapsed() < POST_DEADLINE,
                "post {id} to {room} not acknowledged within {POST_DEADLINE:?}"
            );
            let mut connected = match client.take() {
                Some(connected) => connected,
                None => {
                    let url = &urls[target % urls.len()];
                    let joined = async {
                        let mut fresh =
                            ChatClient::connect_within(url, &token, Duration::from_secs(2)).await?;
                        fresh.join_and_wait(&room, None).await?;
                        anyhow::Ok(fresh)
                    };
                    match joined.await {
                        Ok(fresh) => fresh,
                        Err(_) => {
                            target += 1;
                            tokio::time::sleep(RETRY_BACKOFF).await;
                            continue;
                        }
                    }
                }
            };
            if connected.post(&room, &id, "operations").await.is_err() {
                target += 1;
                continue;
            }
            match wait_outcome(&mut connected, &id).await {
                Outcome::Acked => {
                    acks.push((id.clone(), Instant::now()));
                    client = Some(connected);
                    break;
                }
                Outcome::Refused => {
                    client = Some(connected);
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Outcome::Gone => target += 1,
            }
        }
        index += 1;
        tokio::time::sleep(POST_PACE).await;
    }
    if let Some(client) = client {
        client.close().await;
    }
    Ok(Posted { room, acks })
}

enum Outcome {
    Acked,
    /// An error frame: retry on this connection.
    Refused,
    /// Closed or silent: retry through another node.
    Gone,
}

async fn wait_outcome(client: &mut ChatClient, id: &str) -> Outcome {
    loop {
        match client.next(Duration::from_secs(5)).await {
            Ok(Some(frame)) if frame["type"] == "ack" && frame["id"] == id => {
                return Outcome::Acked;
            }
            Ok(Some(frame)) if frame["type"] == "error" => return Outcome::Refused,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Outcome::Gone,
        }
    }
}

/// Starts one poster per room, spread over the nodes.
fn start_posters(
    cluster: &TestCluster,
    rooms: &[String],
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Posted>>> {
    let urls: Vec<String> = NODES.iter().map(|id| cluster.http_url(id)).collect();
    rooms
        .iter()
        .enumerate()
        .map(|(index, room)| {
            tokio::spawn(post_until_stopped(
                urls.clone(),
                index,
                room.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

async fn stop_posters(
    stop: watch::Sender<bool>,
    posters: Vec<tokio::task::JoinHandle<anyhow::Result<Posted>>>,
) -> Vec<Posted> {
    stop.send(true).expect("posters listen");
    let mut all = Vec::new();
    for poster in posters {
        all.push(
            poster
                .await
                .expect("poster task")
                .expect("every post acknowledged"),
        );
    }
    all
}

/// Every acknowledged id is in its room's history exactly once.
async fn assert_nothing_lost(http: &reqwest::Client, url: &str, posted: &[Posted]) -> usize {
    let mut total = 0;
    for room in posted {
        let ids = history_ids(http, url, &room.room).await;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &ids {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        for (id, _) in &room.acks {
            assert_eq!(
                counts.get(id.as_str()).copied(),
                Some(1),
                "acknowledged {id} of {} appears once in its history",
                room.room
            );
        }
        total += room.acks.len();
    }
    total
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// A node process this test started itself (the fourth node); SIGKILLed if the test fails.
struct ExtraNode(Child);

impl Drop for ExtraNode {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn log_file(dir: &Path, id: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))
        .expect("node log")
}

/// `GET url/api/cluster` (loopback: no admin token needed).
async fn view(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http
        .get(format!("{url}/api/cluster"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn member_up(view: &Value, id: &str) -> bool {
    view["members"]
        .as_array()
        .is_some_and(|members| members.iter().any(|m| m["id"] == id && m["state"] == "up"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_with_a_seed_takes_rooms_by_hand_off_and_returns_them() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(&[]).await;
    let http = reqwest::Client::new();
    // Rooms until some would belong to n4 once it is up.
    let four = ["n1", "n2", "n3", "n4"];
    let mut rooms = Vec::new();
    let mut moving = Vec::new();
    while moving.len() < 3 || rooms.len() < 8 {
        let room = create_room(
            &http,
            &cluster.http_url("n1"),
            &format!("join {}", rooms.len()),
        )
        .await;
        if runtime::placement::owner("room", &room, four) == Some("n4") {
            moving.push(room.clone());
        }
        rooms.push(room);
    }
    let (stop, stopped) = watch::channel(false);
    let posters = start_posters(&cluster, &rooms, &stopped);

    // n4: no [[node]] entry, only its addresses and a seed.
    let ports = free_loopback_ports(2).expect("ports");
    let n4_url = format!("http://127.0.0.1:{}", ports[1]);
    let spawned = Instant::now();
    let mut n4 = ExtraNode(
        Command::new(env!("CARGO_BIN_EXE_node"))
            .arg("run")
            .arg("--config")
            .arg(cluster.config_path())
            .args(["--id", "n4"])
            .args(["--cluster-addr", &format!("127.0.0.1:{}", ports[0])])
            .args(["--http-addr", &format!("127.0.0.1:{}", ports[1])])
            .args(["--join", &cluster.cluster_addr("n1").to_string()])
            .current_dir(cluster.dir())
            .env("RUST_LOG", "info")
            .env_remove("ACTORHUB_COOKIE")
            .env_remove("ACTORHUB_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(log_file(cluster.dir(), "n4"))
            .stderr(log_file(cluster.dir(), "n4"))
            .spawn()
            .expect("start n4"),
    );
    // Every old member sees n4 up: the members agree on four.
    for id in NODES {
        let url = cluster.http_url(id);
        wait_for(&format!("{id} sees n4 up"), async || {
            view(&http, &url)
                .await
                .is_some_and(|view| member_up(&view, "n4"))
        })
        .await;
    }
    let up = spawned.elapsed();
    // n4 serves the rooms it owns now: the posters' next acks come from entities on n4.
    wait_for("n4 hosts its rooms", async || {
        view(&http, &n4_url)
            .await
            .and_then(|view| view["entities"]["active"].as_u64())
            .is_some_and(|active| active >= moving.len() as u64)
    })
    .await;
    let first_served = spawned.elapsed();
    println!(
        "measured: join: n4 up in every view {up:?} after its start; serving its {} hand-off rooms {first_served:?} after its start",
        moving.len()
    );

    // Stopped (SIGTERM), n4 hands them back before it exits.
    let term = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&n4.0),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM to n4");
    let status = tokio::task::spawn_blocking(move || n4.0.wait())
        .await
        .expect("waiter")
        .expect("n4 exits");
    assert!(status.success(), "n4 leaves cleanly: {status}");
    println!("measured: join: n4 SIGTERM to exit {:?}", term.elapsed());
    for id in NODES {
        let url = cluster.http_url(id);
        wait_for(&format!("{id} no longer counts n4 up"), async || {
            view(&http, &url)
                .await
                .is_some_and(|view| !member_up(&view, "n4"))
        })
        .await;
    }
    // Posts go on after n4 left; then nothing acknowledged is missing.
    let posted = stop_posters(stop, posters).await;
    let total = assert_nothing_lost(&http, &cluster.http_url("n2"), &posted).await;
    assert!(total > rooms.len(), "the posters made progress: {total}");
    for room in &moving {
        let acks = posted
            .iter()
            .find(|posted| &posted.room == room)
            .map_or(0, |posted| posted.acks.len());
        assert!(acks > 0, "room {room} that moved to n4 took posts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_chat_and_job_load_loses_nothing() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(&[]).await;
    let http = reqwest::Client::new();
    let mut rooms = Vec::new();
    for index in 0..9 {
        rooms.push(
            create_room(
                &http,
                &cluster.http_url(NODES[index % 3]),
                &format!("rolling {index}"),
            )
            .await,
        );
    }
    let (stop, stopped) = watch::channel(false);
    let posters = start_posters(&cluster, &rooms, &stopped);
    let mut jobs = Vec::new();
    let started = Instant::now();
    let mut exits = Vec::new();
    for (round, id) in NODES.into_iter().enumerate() {
        // A job that outlives the restart of some node, submitted through a node that stays.
        let through = NODES[(round + 1) % 3];
        jobs.push((
            through,
            submit_slow_job(&http, &cluster.http_url(through), round).await,
        ));
        let term = Instant::now();
        let status = cluster
            .terminate(id, Duration::from_secs(25))
            .await
            .expect("the node exits after SIGTERM");
        assert!(status.success(), "{id} stops cleanly: {status}");
        exits.push(term.elapsed());
        cluster.restart(id).await.expect("restart");
        cluster.wait_all_up(WAIT).await.expect("all up again");
    }
    let window = (started, Instant::now());
    let posted = stop_posters(stop, posters).await;
    let total = assert_nothing_lost(&http, &cluster.http_url("n1"), &posted).await;
    let gaps: Vec<Duration> = posted
        .iter()
        .filter_map(|room| room.longest_gap(window))
        .collect();
    assert_eq!(
        gaps.len(),
        rooms.len(),
        "every room took posts during the restarts"
    );
    for (through, job) in &jobs {
        let done = wait_job_done(&http, &cluster.http_url(through), job).await;
        assert_eq!(
            done["state"], "done",
            "job {job} survives the restarts: {done}"
        );
    }
    println!(
        "measured: rolling restart of 3 nodes under {} rooms ({total} acknowledged posts) and {} jobs: longest pause per room median {:?} max {:?}; SIGTERM to exit {:?}",
        rooms.len(),
        jobs.len(),
        median(gaps.clone()),
        gaps.iter().max().copied().unwrap_or_default(),
        exits
    );
}

async fn submit_slow_job(http: &reqwest::Client, url: &str, index: usize) -> String {
    const BOUNDARY: &str = "actorhub-operations-7c1d";
    let mut body = Vec::new();
    for (name, value) in [("target", "slow"), ("duration_ms", "2000")] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{index}.txt\"\r\nContent-Type: text/plain\r\n\r\njob {index}\r\n--{BOUNDARY}--\r\n")
            .as_bytes(),
    );
    let response = http
        .post(format!("{url}/api/jobs"))
        .bearer_auth(test_token("job-owner"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202, "job accepted");
    let body: Value = response.json().await.expect("json");
    body["job"].as_str().expect("job id").to_string()
}

async fn wait_job_done(http: &reqwest::Client, url: &str, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http
            .get(format!("{url}/api/jobs/{job}"))
            .bearer_auth(test_token("job-owner"))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status() == 200
            && let Ok(body) = response.json::<Value>().await
            && (body["state"] == "done" || body["state"] == "failed")
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} finished within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drain_moves_every_entity_and_node_status_shows_the_cluster() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster(&[]).await;
    let http = reqwest::Client::new();
    let entities: usize = std::env::var("ACTORHUB_DRAIN_ROOMS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(150);
    // Rooms created through every node; each is an active entity on its owner.
    let mut rooms: Vec<String> = Vec::new();
    for batch in (0..entities).collect::<Vec<usize>>().chunks(16) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|index| {
                let url = cluster.http_url(NODES[index % 3]);
                let http = http.clone();
                let name = format!("drain {index}");
                tokio::spawn(async move { create_room(&http, &url, &name).await })
            })
            .collect();
        for task in tasks {
            rooms.push(task.await.expect("room creator"));
        }
    }
    let on_n2 = rooms
        .iter()
        .filter(|room| runtime::placement::owner("room", room, NODES) == Some("n2"))
        .count();

    let status = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["status", "--config"])
        .arg(cluster.config_path())
        .current_dir(cluster.dir())
        .output()
        .expect("node status");
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "node status: {printed} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    for id in NODES {
        assert!(
            printed
                .lines()
                .any(|line| line.contains(id) && line.contains("up")),
            "node status lists {id} up: {printed}"
        );
    }
    let active_before = view(&http, &cluster.http_url("n2"))
        .await
        .and_then(|view| view["entities"]["active"].as_u64())
        .expect("n2's entity count");
    assert!(
        active_before as usize >= on_n2,
        "n2 hosts its {on_n2} rooms: {active_before}"
    );

    let drain_started = Instant::now();
    let drain = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["drain", "--config"])
        .arg(cluster.config_path())
        .args(["--id", "n2"])
        .current_dir(cluster.dir())
        .output()
        .expect("node drain");
    assert!(
        drain.status.success(),
        "node drain: {} {}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    let exit = cluster
        .wait_exit("n2", WAIT)
        .await
        .expect("n2 exits after the drain");
    let drained = drain_started.elapsed();
    assert!(exit.success(), "n2 stops cleanly: {exit}");
    let log = std::fs::read_to_string(cluster.dir().join("n2.log")).expect("n2's log");
    assert!(
        log.contains("every entity has a new owner"),
        "n2 reports handing its entities over, not a timeout: {}",
        cluster.log_tail("n2", 20)
    );
    println!(
        "measured: drain of n2 with {active_before} active entities ({} rooms): {drained:?} from `node drain` to exit",
        on_n2
    );
    // Every room answers on the survivors.
    let mut by_owner: BTreeMap<String, usize> = BTreeMap::new();
    for room in &rooms {
        let owner = runtime::placement::owner("room", room, ["n1", "n3"]).expect("an owner");
        *by_owner.entry(owner.to_string()).or_default() += 1;
        let response = http
            .get(format!(
                "{}/api/rooms/{room}/messages",
                cluster.http_url("n1")
            ))
            .bearer_auth(test_token("auditor"))
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200, "room {room} after the drain");
    }
    assert_eq!(by_owner.len(), 2, "both survivors own rooms: {by_owner:?}");
}
