//! The end-to-end chat load generator: connects C clients to R rooms spread over the nodes of a
//! running cluster, posts at a given rate for a given time, and prints one JSON line with what
//! was sent, acknowledged and delivered, the losses, duplicates and reorders, the delivery
//! rate, the latency from send to receive at every member, and the nodes' CPU seconds.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- --config cluster.toml \
//!     --rooms 50 --clients-per-room 20 --rate 2 --duration 20 --pids 123,124,125
//! cargo run --release -p benches --bin loadgen -- --config cluster.toml --idle 5000 --pids ...
//! cargo run --release -p benches --bin loadgen -- --config cluster.toml --idle 10000 \
//!     --idle-rooms 100 --pids ...
//! ```
//! In idle mode each connection sends nothing after its join (`--idle-rooms R`: connection i
//! joins room i % R, the rooms created first) and keeps reading what the server sends (presence
//! frames, pings); RSS is read `--idle-wait` seconds after the last join, by default 3 s past
//! the config's `sessions.hibernate_after_ms`, so that idle sessions have hibernated.
//! Tokens are minted with the config's `web.jwt_secret`. Every loop is bounded in time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Time allowed after the last post for deliveries to arrive.
const DRAIN: Duration = Duration::from_secs(3);
/// Connections opened at once while ramping up.
const CONNECT_CONCURRENCY: usize = 64;

struct Options {
    config: PathBuf,
    rooms: usize,
    clients_per_room: usize,
    rate: f64,
    duration: Duration,
    pids: Vec<u32>,
    idle: Option<usize>,
    /// Rooms the idle connections join (none when 0).
    idle_rooms: usize,
    /// How long the idle connections stay idle before RSS is read.
    idle_wait: Option<Duration>,
    nodes: Option<Vec<String>>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        config: PathBuf::from("cluster.toml"),
        rooms: 10,
        clients_per_room: 10,
        rate: 5.0,
        duration: Duration::from_secs(10),
        pids: Vec::new(),
        idle: None,
        idle_rooms: 0,
        idle_wait: None,
        nodes: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => options.config = PathBuf::from(value()?),
            "--rooms" => options.rooms = value()?.parse()?,
            "--clients-per-room" => options.clients_per_room = value()?.parse()?,
            "--rate" => options.rate = value()?.parse()?,
            "--duration" => options.duration = Duration::from_secs_f64(value()?.parse()?),
            "--pids" => {
                options.pids = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--idle" => options.idle = Some(value()?.parse()?),
            "--idle-rooms" => options.idle_rooms = value()?.parse()?,
            "--idle-wait" => {
                options.idle_wait = Some(Duration::from_secs_f64(value()?.parse()?));
            }
            "--nodes" => options.nodes = Some(value()?.split(',').map(str::to_string).collect()),
            "--help" | "-h" => {
                println!(
                    "loadgen --config cluster.toml [--nodes n1,n2] --rooms R --clients-per-room C --rate MSGS_PER_S_PER_CLIENT --duration S [--pids P1,P2] [--idle N [--idle-rooms R] [--idle-wait S]]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    if options.rooms == 0 || options.clients_per_room == 0 || options.rate <= 0.0 {
        bail!("--rooms, --clients-per-room and --rate must be above 0");
    }
    Ok(options)
}

/// Sessions hibernate after this long unless the config says otherwise (actors' default).
const HIBERNATE_AFTER_DEFAULT: Duration = Duration::from_secs(10);
/// Time past the hibernation delay before RSS is read: the sessions' checks and the
/// allocator settle.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// What the generator needs from the config: node URLs, the token secret, and when idle
/// sessions hibernate.
struct Target {
    urls: Vec<String>,
    secret: String,
    hibernate_after: Duration,
}

fn load_target(options: &Options) -> anyhow::Result<Target> {
    let text = std::fs::read_to_string(&options.config)
        .with_context(|| format!("read {}", options.config.display()))?;
    let value: toml::Value = toml::from_str(&text).context("parse the config")?;
    let secret = std::env::var("ACTORHUB_JWT_SECRET")
        .ok()
        .or_else(|| {
            value
                .get("web")?
                .get("jwt_secret")?
                .as_str()
                .map(str::to_string)
        })
        .context("no web.jwt_secret in the config and no ACTORHUB_JWT_SECRET")?;
    let nodes = value
        .get("node")
        .and_then(toml::Value::as_array)
        .context("no [[node]] in the config")?;
    let mut urls = Vec::new();
    for node in nodes {
        let id = node
            .get("id")
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        if options
            .nodes
            .as_ref()
            .is_some_and(|wanted| !wanted.iter().any(|wanted| wanted == id))
        {
            continue;
        }
        let addr = node
            .get("http_addr")
            .and_then(toml::Value::as_str)
            .context("node without http_addr")?;
        urls.push(format!("http://{addr}"));
    }
    if urls.is_empty() {
        bail!("no node selected");
    }
    let hibernate_after = value
        .get("sessions")
        .and_then(|sessions| sessions.get("hibernate_after_ms"))
        .and_then(toml::Value::as_integer)
        .map_or(HIBERNATE_AFTER_DEFAULT, |ms| {
            Duration::from_millis(ms.max(0) as u64)
        });
    Ok(Target {
        urls,
        secret,
        hibernate_after,
    })
}

fn token(secret: &str, user: &str) -> String {
    web::auth::TokenKeys::new(secret.as_bytes()).mint(user, web::auth::unix_now_s(), 24 * 3600)
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// Per-client tallies, merged at the end.
#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    latencies_us: Vec<u32>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/ws?token={token}", url.replacen("http", "ws", 1));
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .context("connect timed out")??;
    Ok(socket)
}

async fn create_rooms(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rooms = Vec::with_capacity(count);
    for index in 0..count {
        let response = client
            .post(format!("{url}/api/rooms"))
            .bearer_auth(token)
            .json(&json!({"name": format!("load {index}")}))
            .send()
            .await?;
        if response.status() != 201 {
            bail!(
                "room creation failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let body: Value = response.json().await?;
        rooms.push(body["room"]["id"].as_str().context("room id")?.to_string());
    }
    Ok(rooms)
}

/// One client: join, post at `rate` until `stop`, read until `stop + DRAIN`.
async fn run_client(
    mut socket: Socket,
    room: String,
    client: usize,
    rate: f64,
    start: Instant,
    stop: Instant,
    members_ready: Arc<tokio::sync::Barrier>,
) -> Tally {
    let mut tally = Tally::default();
    let joined = socket
        .send(Message::text(
            json!({"type":"join","room":room}).to_string(),
        ))
        .await
        .is_ok();
    let mut last_seq = 0u64;
    if joined {
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(20), socket.next()).await
        {
            if let Message::Text(text) = message
                && let Ok(frame) = serde_json::from_str::<Value>(text.as_str())
                && frame["type"] == "joined"
            {
                last_seq = frame["head"].as_u64().unwrap_or(0);
                break;
            }
        }
    }
    members_ready.wait().await;
    let (mut sink, mut stream) = socket.split();
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Spread the clients' first posts over one interval.
    let mut next_post = Instant::now() + interval.mul_f64(fastrand::f64());
    let end = stop + DRAIN;
    let mut index = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let wake = if now < stop { next_post.min(end) } else { end };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() < stop && Instant::now() >= next_post {
                    let sent_us = start.elapsed().as_micros() as u64;
                    let frame = json!({"type":"post","room":room,"id":format!("c{client}-{index}"),"text":format!("{sent_us}|load test message {index}")});
                    if sink.send(Message::text(frame.to_string())).await.is_err() { break; }
                    tally.sent += 1;
                    index += 1;
                    next_post += interval;
                }
            }
            received = stream.next() => {
                let Some(Ok(message)) = received else { break };
                let Message::Text(text) = message else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match frame["type"].as_str() {
                    Some("ack") => tally.acked += 1,
                    Some("message") => {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        if seq <= last_seq { tally.duplicates += 1; continue; }
                        if seq != last_seq + 1 { tally.out_of_order += 1; }
                        last_seq = seq;
                        tally.delivered += 1;
                        if let Some(sent_us) = frame["text"].as_str().and_then(|text| text.split('|').next()).and_then(|value| value.parse::<u64>().ok()) {
                            let latency = start.elapsed().as_micros() as u64 - sent_us;
                            tally.latencies_us.push(latency.min(u64::from(u32::MAX)) as u32);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = sink.close().await;
    tally
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

async fn traffic(options: &Options, target: &Target) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let rooms = create_rooms(
        &http,
        &target.urls[0],
        &token(&target.secret, "loadgen"),
        options.rooms,
    )
    .await?;
    let clients = options.rooms * options.clients_per_room;
    let mut sockets = Vec::with_capacity(clients);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::new();
    for client in 0..clients {
        let url = target.urls[client % target.urls.len()].clone();
        let token = token(&target.secret, &format!("load-{client}"));
        let permit = semaphore.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = permit.acquire_owned().await;
            connect(&url, &token).await
        }));
    }
    for task in connecting {
        sockets.push(task.await??);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let start = Instant::now();
    let window_start = start + Duration::from_secs(2);
    let stop = window_start + options.duration;
    let mut tasks = Vec::with_capacity(clients);
    for (client, socket) in sockets.into_iter().enumerate() {
        let room = rooms[client % options.rooms].clone();
        tasks.push(tokio::spawn(run_client(
            socket,
            room,
            client,
            options.rate,
            start,
            stop,
            barrier.clone(),
        )));
    }
    barrier.wait().await;
    let cpu_before: Vec<Option<f64>> = options.pids.iter().map(|pid| cpu_seconds(*pid)).collect();
    let posting_started = Instant::now();
    let mut total = Tally::default();
    let mut acked_by_room: HashMap<usize, u64> = HashMap::new();
    for (client, task) in tasks.into_iter().enumerate() {
        let tally = task.await?;
        total.sent += tally.sent;
        total.acked += tally.acked;
        *acked_by_room.entry(client % options.rooms).or_default() += tally.acked;
        total.delivered += tally.delivered;
        total.duplicates += tally.duplicates;
        total.out_of_order += tally.out_of_order;
        total.latencies_us.extend(tally.latencies_us);
    }
    let posting_window = posting_started
        .elapsed()
        .saturating_sub(DRAIN)
        .as_secs_f64();
    let cpu: Vec<Option<f64>> = options
        .pids
        .iter()
        .zip(cpu_before)
        .map(|(pid, before)| Some(cpu_seconds(*pid)? - before?))
        .collect();
    let cpu_total: f64 = cpu.iter().flatten().sum();
    let expected = total.acked * options.clients_per_room as u64;
    total.latencies_us.sort_unstable();
    let latencies = &total.latencies_us;
    Ok(json!({
        "mode": "traffic",
        "nodes": target.urls.len(),
        "rooms": options.rooms,
        "clients_connected": clients,
        "rate_per_client": options.rate,
        "duration_s": options.duration.as_secs_f64(),
        "sent": total.sent,
        "acked": total.acked,
        "delivered": total.delivered,
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(total.delivered),
        "duplicates": total.duplicates,
        "out_of_order": total.out_of_order,
        "deliveries_per_s": total.delivered as f64 / posting_window.max(0.001),
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "p999": percentile(latencies, 0.999),
            "max": latencies.last().map_or(0.0, |max| f64::from(*max) / 1000.0),
        },
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_deliveries": if total.delivered > 0 { cpu_total / total.delivered as f64 * 1e6 } else { 0.0 },
    }))
}

/// Joins `room` and waits for its `joined` frame.
async fn join_idle(socket: &mut Socket, room: &str) -> anyhow::Result<()> {
    socket
        .send(Message::text(
            json!({"type":"join","room":room}).to_string(),
        ))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no joined frame within 20 s")?
            .context("closed before joined")??;
        if let Message::Text(text) = message
            && let Ok(frame) = serde_json::from_str::<Value>(text.as_str())
        {
            match frame["type"].as_str() {
                Some("joined") => return Ok(()),
                Some("error") => bail!("join refused: {frame}"),
                _ => {}
            }
        }
    }
}

/// Reads and drops what the server sends (and answers its pings) until `stop` fires, so an
/// idle connection stays as a real idle client keeps it: open and drained.
async fn read_idle(mut socket: Socket, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            received = socket.next() => if !matches!(received, Some(Ok(_))) { return },
            _ = stop.changed() => return,
        }
    }
}

/// Sessions hibernated on each node, from its /metrics (`None` for a server without it).
async fn sessions_hibernated(http: &reqwest::Client, urls: &[String]) -> Vec<Option<f64>> {
    let mut counts = Vec::with_capacity(urls.len());
    for url in urls {
        let text = match http.get(format!("{url}/metrics")).send().await {
            Ok(response) if response.status().is_success() => {
                response.text().await.unwrap_or_default()
            }
            _ => String::new(),
        };
        counts.push(
            text.lines()
                .find(|line| line.split_whitespace().next() == Some("actorhub_sessions_hibernated"))
                .and_then(|line| line.split_whitespace().last())
                .and_then(|value| value.parse().ok()),
        );
    }
    counts
}

async fn idle(options: &Options, target: &Target, count: usize) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let rooms = create_rooms(
        &http,
        &target.urls[0],
        &token(&target.secret, "loadgen"),
        options.idle_rooms,
    )
    .await?;
    let rss_before: Vec<Option<u64>> = options.pids.iter().map(|pid| rss_bytes(*pid)).collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let connected = Arc::new(AtomicU64::new(0));
    let joined = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let readers = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut tasks = Vec::new();
    for client in 0..count {
        let url = target.urls[client % target.urls.len()].clone();
        let token = token(&target.secret, &format!("idle-{client}"));
        let room = (!rooms.is_empty()).then(|| rooms[client % rooms.len()].clone());
        let (permit, readers, connected, joined, stopped) = (
            semaphore.clone(),
            readers.clone(),
            connected.clone(),
            joined.clone(),
            stopped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit.acquire_owned().await;
            let Ok(mut socket) = connect(&url, &token).await else {
                return;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            if let Some(room) = room {
                match join_idle(&mut socket, &room).await {
                    Ok(()) => joined.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("idle client {client}: {error:#}");
                        return;
                    }
                };
            }
            readers
                .lock()
                .await
                .push(tokio::spawn(read_idle(socket, stopped)));
        }));
    }
    for task in tasks {
        task.await?;
    }
    let wait = options
        .idle_wait
        .unwrap_or(target.hibernate_after + IDLE_SETTLE);
    tokio::time::sleep(wait).await;
    let rss_after: Vec<Option<u64>> = options.pids.iter().map(|pid| rss_bytes(*pid)).collect();
    let hibernated = sessions_hibernated(&http, &target.urls).await;
    let _ = stop.send(true);
    for reader in readers.lock().await.drain(..) {
        let _ = reader.await;
    }
    let grown: i64 = rss_before
        .iter()
        .zip(&rss_after)
        .filter_map(
            |(before, after)| Some(after.as_ref()?.saturating_sub(*before.as_ref()?) as i64),
        )
        .sum();
    let connected = connected.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "idle",
        "clients_connected": connected,
        "rooms": rooms.len(),
        "clients_joined": joined.load(Ordering::Relaxed),
        "idle_wait_s": wait.as_secs_f64(),
        "sessions_hibernated": hibernated,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_idle_connection_bytes": if connected > 0 { grown as f64 / connected as f64 } else { 0.0 },
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let target = load_target(&options)?;
    let report = match options.idle {
        Some(count) => idle(&options, &target, count).await?,
        None => traffic(&options, &target).await?,
    };
    println!("{report}");
    Ok(())
}
