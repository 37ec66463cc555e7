//! Hostile clients against real nodes: a ping flood that never reads, a join flood, oversized
//! and malformed WebSocket frames, and HTTP inputs out of every bound. Each case asserts that
//! the attacker's connection ends (with the right close code or HTTP status), that the node's
//! RSS stays within a stated bound, that no member is ever seen down, and that an honest
//! client on the same node keeps chatting. The figures (RSS before, peak and after; what the
//! attacker got back) are printed: run with `--nocapture` to see them.
//!
//! Tests run one at a time (2-core machine), each with its own cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(10);
/// How long a flooding or misbehaving connection may stay open once it misbehaves.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Most the attacked node's RSS may grow during one hostile case.
const RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;

async fn three_nodes() -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .start()
        .await
        .expect("3-node cluster starts")
}

// ---------------------------------------------------------------------------------------------
// Watching the node: RSS and membership.

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 10 ms until stopped; reports before, peak and after.
struct RssWatch {
    pid: u32,
    before_kib: u64,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(cluster: &TestCluster, node: &str) -> Self {
        let pid = cluster.pid(node).expect("node runs");
        let before_kib = rss_kib(pid).expect("VmRSS of the node");
        let peak_kib = Arc::new(AtomicU64::new(before_kib));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let peak_kib = peak_kib.clone();
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_kib(pid) {
                        peak_kib.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            pid,
            before_kib,
            peak_kib,
            stop,
            task,
        }
    }

    /// Stops sampling, prints the figures and asserts the growth bound.
    async fn finish(self, case: &str, attacker_got: &str) {
        self.finish_within(case, attacker_got, RSS_GROWTH_MAX_KIB)
            .await;
    }

    async fn finish_within(self, case: &str, attacker_got: &str, growth_max_kib: u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let after_kib = rss_kib(self.pid).expect("the node still runs");
        let peak_kib = self.peak_kib.load(Ordering::Relaxed).max(after_kib);
        eprintln!(
            "[hostile] {case}: node RSS before {} MiB, peak {} MiB, after {} MiB; \
             attacker got: {attacker_got}",
            self.before_kib / 1024,
            peak_kib / 1024,
            after_kib / 1024
        );
        assert!(
            peak_kib.saturating_sub(self.before_kib) < growth_max_kib,
            "{case}: RSS grew from {} KiB to a peak of {peak_kib} KiB (bound: {growth_max_kib} KiB)",
            self.before_kib
        );
    }
}

/// Polls every node's `/api/cluster` until stopped, remembering any member seen not `up`.
struct MembershipWatch {
    seen_down: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl MembershipWatch {
    fn start(cluster: &TestCluster) -> Self {
        let urls: Vec<(String, String)> = cluster
            .node_ids()
            .into_iter()
            .map(|id| {
                let url = cluster.http_url(&id);
                (id, url)
            })
            .collect();
        let seen_down = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let seen_down = seen_down.clone();
            let stop = stop.clone();
            async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    for (observer, url) in &urls {
                        let view = http
                            .get(format!("{url}/api/cluster"))
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await;
                        let view: Option<Value> = match view {
                            Ok(response) => response.json().await.ok(),
                            Err(_) => None,
                        };
                        let mut seen = seen_down.lock().expect("lock");
                        match view {
                            Some(view) => {
                                for member in view["members"].as_array().into_iter().flatten() {
                                    if member["state"] != "up" {
                                        seen.push(format!("{observer} saw {member}"));
                                    }
                                }
                            }
                            None => seen.push(format!("{observer} did not answer /api/cluster")),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            seen_down,
            stop,
            task,
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let seen = self.seen_down.lock().expect("lock").clone();
        assert!(seen.is_empty(), "members were seen down: {seen:?}");
    }
}

/// `actorhub_membership_transitions_total` to `down`, summed over every node.
async fn down_transitions(cluster: &TestCluster) -> u64 {
    let mut total = 0;
    for id in cluster.node_ids() {
        let text = reqwest::get(format!("{}/metrics", cluster.http_url(&id)))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        total += text
            .lines()
            .filter(|line| {
                line.starts_with("actorhub_membership_transitions_total{")
                    && line.contains("state=\"down\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

// ---------------------------------------------------------------------------------------------
// An honest pair of clients.

async fn create_room(cluster: &TestCluster, node: &str, name: &str) -> String {
    cluster.create_room(node, name).await.expect("create room")
}

/// Alice on the attacked node, Bob on another, both in one room.
struct Honest {
    room: String,
    alice: ChatClient,
    bob: ChatClient,
    sent: usize,
}

impl Honest {
    async fn start(cluster: &TestCluster, attacked: &str, other: &str) -> Self {
        let room = create_room(cluster, attacked, "Honest").await;
        let mut alice = ChatClient::connect(&cluster.http_url(attacked), &test_token("alice"))
            .await
            .expect("alice connects");
        let mut bob = ChatClient::connect(&cluster.http_url(other), &test_token("bob"))
            .await
            .expect("bob connects");
        alice.join_and_wait(&room, None).await.expect("alice joins");
        bob.join_and_wait(&room, None).await.expect("bob joins");
        Self {
            room,
            alice,
            bob,
            sent: 0,
        }
    }

    /// Alice posts, gets her ack, and Bob sees the message.
    async fn chat(&mut self) {
        let id = format!("honest-{}", self.sent);
        self.sent += 1;
        self.alice
            .post(&self.room, &id, "still here")
            .await
            .expect("alice posts");
        loop {
            let (ack, _) = self.alice.until("ack", WAIT).await.expect("alice's ack");
            if ack["id"] == id {
                break;
            }
        }
        loop {
            let (message, _) = self.bob.until("message", WAIT).await.expect("bob hears");
            if message["id"] == id {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw WebSocket client: frames written by hand so that it can flood without reading.

async fn raw_connect(cluster: &TestCluster, node: &str, user: &str) -> TcpStream {
    raw_connect_sending(cluster, node, user, &[]).await
}

/// Connects and upgrades, sending `early` (frames) in the same write as the request.
async fn raw_connect_sending(
    cluster: &TestCluster,
    node: &str,
    user: &str,
    early: &[u8],
) -> TcpStream {
    let address = cluster.http_addr(node);
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        test_token(user)
    )
    .into_bytes();
    request.extend_from_slice(early);
    stream.write_all(&request).await.expect("handshake");
    // Read the response head byte by byte so that no frame after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("handshake answer in time")
            .expect("handshake answer");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A masked client frame with the FIN bit and `opcode`, or `first` byte given whole.
fn frame_with(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        out.extend_from_slice(&key);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ key[index % 4]),
        );
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(0x80 | opcode, true, payload)
}

/// What the server did to the connection.
#[derive(Debug, Default)]
struct Ending {
    /// The close frame's code and reason, if one arrived.
    close: Option<(u16, String)>,
    /// Text frames received before it.
    texts: Vec<String>,
    /// EOF or reset within the deadline.
    ended: bool,
}

impl Ending {
    fn describe(&self) -> String {
        match &self.close {
            Some((code, reason)) => format!("close {code} {reason:?}"),
            None if self.ended => "the connection ended without a close frame".into(),
            None => "nothing (still open)".into(),
        }
    }
}

/// Reads server frames until the connection ends or `deadline`.
async fn read_until_end(stream: &mut (impl AsyncReadExt + Unpin), deadline: Instant) -> Ending {
    let mut ending = Ending::default();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return ending,
            Ok(Ok(0)) | Ok(Err(_)) => {
                ending.ended = true;
                return ending;
            }
            Ok(Ok(read)) => bytes.extend_from_slice(&buf[..read]),
        }
        // Parse whole frames (server frames are never masked).
        loop {
            if bytes.len() < 2 {
                break;
            }
            let (len, header) = match bytes[1] & 0x7f {
                126 if bytes.len() >= 4 => {
                    (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4)
                }
                127 if bytes.len() >= 10 => (
                    u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                len => (usize::from(len), 2),
            };
            if bytes.len() < header + len {
                break;
            }
            let opcode = bytes[0] & 0x0f;
            let payload = bytes[header..header + len].to_vec();
            bytes.drain(..header + len);
            match opcode {
                0x1 => ending
                    .texts
                    .push(String::from_utf8_lossy(&payload).into_owned()),
                0x8 if payload.len() >= 2 => {
                    ending.close = Some((
                        u16::from_be_bytes([payload[0], payload[1]]),
                        String::from_utf8_lossy(&payload[2..]).into_owned(),
                    ));
                    return ending;
                }
                0x8 => {
                    ending.close = Some((1005, String::new()));
                    return ending;
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket floods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_never_reads_is_closed_and_costs_the_node_little() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let mut honest = Honest::start(&cluster, "n1", "n2").await;
    honest.chat().await;
    let downs_before = down_transitions(&cluster).await;
    let membership = MembershipWatch::start(&cluster);

    // The flooder writes pings with the largest payload (so each pong is as large as it gets)
    // as fast as the socket takes them and never reads.
    let rss = RssWatch::start(&cluster, "n1");
    let mut flooder = raw_connect(&cluster, "n1", "mallory").await;
    let ping = frame(0x9, &[b'p'; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    let started = Instant::now();
    let mut written = 0usize;
    let outcome = loop {
        if started.elapsed() > CLOSE_DEADLINE {
            break Err(written);
        }
        match tokio::time::timeout(Duration::from_millis(500), flooder.write_all(&batch)).await {
            Ok(Ok(())) => written += batch.len(),
            Ok(Err(error)) => break Ok(error.to_string()),
            // The node stopped reading (the kernel's buffers are full): it has given up on us.
            Err(_) => {}
        }
    };
    let closed_after = started.elapsed();
    // Whatever reached our socket before the end: pongs, and perhaps the close frame.
    let ending = read_until_end(&mut flooder, Instant::now() + CLOSE_DEADLINE).await;
    let got = match &outcome {
        Ok(error) => format!(
            "writes failed after {closed_after:?} and {} KiB sent ({error}); reading: {}",
            written / 1024,
            ending.describe()
        ),
        Err(written) => format!("still open after {CLOSE_DEADLINE:?}, {written} bytes sent"),
    };
    assert!(
        outcome.is_ok() || ending.ended || ending.close.is_some(),
        "the flooding connection was never closed: {got}"
    );
    if let Some((code, _)) = &ending.close {
        assert_eq!(*code, 1008, "{got}");
    }
    drop(flooder);

    honest.chat().await;
    rss.finish("ping flood, never reading", &got).await;
    membership.finish().await;
    assert_eq!(
        down_transitions(&cluster).await,
        downs_before,
        "no member went down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_reads_is_closed_with_1008() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let mut honest = Honest::start(&cluster, "n1", "n2").await;
    let rss = RssWatch::start(&cluster, "n1");
    let flooder = raw_connect(&cluster, "n1", "mallory").await;
    let (mut reader, mut writer) = flooder.into_split();
    let reading =
        tokio::spawn(
            async move { read_until_end(&mut reader, Instant::now() + CLOSE_DEADLINE).await },
        );
    let batch: Vec<u8> = frame(0x9, b"").into_iter().cycle().take(6 * 1024).collect();
    let flooding = tokio::spawn(async move { while writer.write_all(&batch).await.is_ok() {} });
    let ending = reading.await.expect("reader");
    flooding.abort();
    let got = ending.describe();
    assert_eq!(
        ending
            .close
            .as_ref()
            .map(|(code, reason)| (*code, reason.as_str())),
        Some((1008, "too many frames per second")),
        "{got}"
    );

    // Pings sent in the same write as the upgrade request (read by the HTTP layer before the
    // upgrade) count too.
    let early: Vec<u8> = frame(0x9, b"")
        .into_iter()
        .cycle()
        .take(6 * 8_000)
        .collect();
    let mut eager = raw_connect_sending(&cluster, "n1", "eager", &early).await;
    let ending = read_until_end(&mut eager, Instant::now() + CLOSE_DEADLINE).await;
    assert_eq!(
        ending.close.as_ref().map(|(code, _)| *code),
        Some(1008),
        "{}",
        ending.describe()
    );
    let got = format!(
        "{got}; with 8,000 pings sent along with the upgrade request: {}",
        ending.describe()
    );

    honest.chat().await;
    rss.finish("ping flood, reading", &got).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_for_rooms_that_do_not_exist_is_closed() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let mut honest = Honest::start(&cluster, "n1", "n2").await;
    let downs_before = down_transitions(&cluster).await;
    let membership = MembershipWatch::start(&cluster);
    let rss = RssWatch::start(&cluster, "n1");

    let flooder = raw_connect(&cluster, "n1", "mallory").await;
    let (mut reader, mut writer) = flooder.into_split();
    let reading =
        tokio::spawn(
            async move { read_until_end(&mut reader, Instant::now() + CLOSE_DEADLINE).await },
        );
    let joins_sent = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn({
        let joins_sent = joins_sent.clone();
        async move {
            for batch in 0..100 {
                let mut bytes = Vec::new();
                for index in 0..100 {
                    let join = json!({"type": "join", "room": format!("nosuch-{batch}-{index}")});
                    bytes.extend(frame(0x1, join.to_string().as_bytes()));
                }
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
                joins_sent.fetch_add(100, Ordering::Relaxed);
            }
        }
    });
    let ending = reading.await.expect("reader");
    flooding.abort();
    let errors: Vec<&str> = ending
        .texts
        .iter()
        .filter_map(|text| {
            let frame: Value = serde_json::from_str(text).ok()?;
            (frame["type"] == "error").then(|| {
                if frame["code"] == "rate_limited" {
                    "rate_limited"
                } else {
                    "other"
                }
            })
        })
        .collect();
    let rate_limited = errors
        .iter()
        .filter(|code| **code == "rate_limited")
        .count();
    let got = format!(
        "{} after {} joins sent, {} frames back ({rate_limited} rate_limited errors)",
        ending.describe(),
        joins_sent.load(Ordering::Relaxed),
        ending.texts.len()
    );
    assert_eq!(
        ending.close.as_ref().map(|(code, _)| *code),
        Some(1008),
        "{got}"
    );

    honest.chat().await;
    rss.finish("join flood", &got).await;
    membership.finish().await;
    assert_eq!(
        down_transitions(&cluster).await,
        downs_before,
        "no member went down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_with_the_right_code() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let mut honest = Honest::start(&cluster, "n1", "n2").await;
    let rss = RssWatch::start(&cluster, "n1");

    let two_mib = vec![b'x'; 2 * 1024 * 1024];
    let half_mib = vec![b'x'; 512 * 1024];
    let mut fragmented = frame_with(0x01, true, &half_mib);
    fragmented.extend(frame_with(0x00, true, &half_mib));
    fragmented.extend(frame_with(0x80, true, &half_mib));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a 2 MiB text frame", frame(0x1, &two_mib), 1009),
        ("a 1.5 MiB message in three fragments", fragmented, 1009),
        ("an unmasked frame", frame_with(0x81, false, b"{}"), 1002),
        (
            "reserved bits set",
            frame_with(0x80 | 0x40 | 0x1, true, b"{}"),
            1002,
        ),
        ("an unknown opcode", frame(0x3, b"{}"), 1002),
        ("a 126-byte ping", frame(0x9, &[b'p'; 126]), 1002),
        ("a fragmented ping", frame_with(0x09, true, b"p"), 1002),
        (
            "a continuation with nothing to continue",
            frame(0x0, b"x"),
            1002,
        ),
        (
            "text that is not UTF-8",
            frame(0x1, &[0xff, 0xfe, 0xfd]),
            1007,
        ),
    ];
    let mut got = Vec::new();
    for (case, bytes, code) in cases {
        let stream = raw_connect(&cluster, "n1", "mallory").await;
        let (mut reader, mut writer) = stream.into_split();
        // The node may close before it has read everything: a failed write is fine.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
            writer
        });
        let ending = read_until_end(&mut reader, Instant::now() + CLOSE_DEADLINE).await;
        drop(writing.await);
        assert_eq!(
            ending.close.as_ref().map(|(code, _)| *code),
            Some(code),
            "{case}: {}",
            ending.describe()
        );
        got.push(format!("{case}: {}", ending.describe()));
    }

    // Between the session's limit and the transport's, a frame is refused, not the connection.
    let mut client = ChatClient::connect(&cluster.http_url("n1"), &test_token("verbose"))
        .await
        .expect("connect");
    client
        .send_raw(json!({"type": "ping", "pad": "x".repeat(100_000)}).to_string())
        .await
        .expect("send");
    let (error, _) = client.until("error", WAIT).await.expect("an error frame");
    assert_eq!(error["code"], "too_large", "{error}");
    client.send(json!({"type": "ping"})).await.expect("send");
    client
        .until("pong", WAIT)
        .await
        .expect("the connection stays");

    honest.chat().await;
    let health = reqwest::get(format!("{}/healthz", cluster.http_url("n1")))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    rss.finish("oversized and malformed frames", &got.join("; "))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_alone_do_not_keep_an_idle_connection_open() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting("sessions", "idle_timeout_ms", 1_500)
        .start()
        .await
        .expect("node starts");
    let stream = raw_connect(&cluster, "n1", "idler").await;
    let (mut reader, mut writer) = stream.into_split();
    let reading =
        tokio::spawn(
            async move { read_until_end(&mut reader, Instant::now() + CLOSE_DEADLINE).await },
        );
    // A ping and an unsolicited pong every 100 ms: well under the flood rate, never idle on
    // the wire, and never an answer to the node's pings.
    let started = Instant::now();
    let pinging = tokio::spawn(async move {
        loop {
            let mut bytes = frame(0x9, b"are you there");
            bytes.extend(frame(0xA, b"unsolicited"));
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let ending = reading.await.expect("reader");
    pinging.abort();
    eprintln!(
        "[hostile] idle pinger: {} after {:?}",
        ending.describe(),
        started.elapsed()
    );
    assert_eq!(
        ending.close.as_ref().map(|(code, _)| *code),
        Some(4000),
        "{}",
        ending.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP bounds.

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends `request` on a fresh connection and returns the status line's code (0 if none). The
/// answer is read while the request is written: the node may answer before reading it all.
async fn raw_request(address: std::net::SocketAddr, request: &[u8]) -> u16 {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    answer.extend_from_slice(&buf[..read]);
                    if answer.windows(4).any(|window| window == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    writing.abort();
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inputs_out_of_bounds_get_4xx_never_5xx() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .start()
        .await
        .expect("node starts");
    let url = cluster.http_url("n1");
    let address = cluster.http_addr("n1");
    let http = reqwest::Client::new();
    let token = test_token("prober");
    let room = create_room(&cluster, "n1", "Bounds").await;
    let rss = RssWatch::start(&cluster, "n1");
    let mut got = Vec::new();

    // Bodies above their limit: 413, whether the length is announced or not.
    let huge_json = format!("{{\"name\": \"{}\"}}", "x".repeat(1024 * 1024));
    for path in ["/api/rooms", "/api/users/signup", "/api/users/login"] {
        let (status, body) = status_and_body(
            http.post(format!("{url}{path}"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(huge_json.clone())
                .send()
                .await
                .expect("post"),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("too_large")),
            "{path}: {body}"
        );
        got.push(format!("1 MiB JSON to {path}: {status}"));
    }
    let chunked = {
        let mut request = format!(
            "POST /api/rooms HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in huge_json.as_bytes().chunks(16 * 1024) {
            request.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        request
    };
    let status = raw_request(address, &chunked).await;
    assert_eq!(status, 413, "a chunked 1 MiB room creation");
    got.push(format!("chunked 1 MiB JSON to /api/rooms: {status}"));

    // History queries: out of range is 400 naming the parameter; `limit` is clamped.
    let history = |query: String| {
        let http = http.clone();
        let url = format!("{url}/api/rooms/{room}/messages?{query}");
        let token = token.clone();
        async move { status_and_body(http.get(url).bearer_auth(token).send().await.expect("get")).await }
    };
    for (query, parameter) in [
        ("after=-1", "after"),
        ("after=18446744073709551615", "after"),
        ("after=18446744073709551614", "after"),
        ("after=99999999999999999999999999", "after"),
        ("after=9007199254740992", "after"),
        ("after=1.5", "after"),
        ("after=", "after"),
        ("before=-5", "before"),
        ("before=18446744073709551615", "before"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
    ] {
        let (status, body) = history(query.to_string()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(&format!("`{parameter}`"))),
            "{query}: {body}"
        );
    }
    for query in [
        "limit=99999999999999999999999999",
        "limit=0",
        "after=9007199254740991",
        "after=0&before=0",
        "after=5&before=3&limit=200",
    ] {
        let (status, body) = history(query.to_string()).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert!(
            body["messages"]
                .as_array()
                .is_some_and(|page| page.len() <= 200)
        );
    }
    let (status, body) = history("sort=desc".into()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_parameter"))
    );
    got.push("history with huge, negative or overflowing numbers: 400 naming the parameter".into());

    // Ids: malformed is 400, well-formed but unknown is 404.
    for (path, expected) in [
        (format!("/api/rooms/{}/messages", "r".repeat(200)), 400),
        ("/api/rooms/a%00b/messages".to_string(), 400),
        ("/api/rooms/..%2f..%2fetc/messages".to_string(), 400),
        ("/api/rooms/no-such-room/messages".to_string(), 404),
        ("/api/jobs/not-a-job".to_string(), 400),
        (format!("/api/jobs/{}", "z".repeat(10_000)), 400),
        (format!("/api/jobs/{}", "0".repeat(32)), 404),
        (format!("/api/jobs/{}/download", "0".repeat(32)), 404),
        ("/api/users/not-a-user/photo".to_string(), 404),
    ] {
        let (status, body) = status_and_body(
            http.get(format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(status, expected, "{path:.80}: {body}");
    }
    let (status, _) = status_and_body(
        http.delete(format!("{url}/api/jobs/x"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(status, 400);
    for (query, expected) in [
        ("limit=99999999999999999999", 200),
        ("limit=abc", 400),
        ("limit=-3", 400),
    ] {
        let (status, body) = status_and_body(
            http.get(format!("{url}/api/jobs?{query}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("list"),
        )
        .await;
        assert_eq!(status, expected, "jobs {query}: {body}");
    }
    got.push("bad ids: 400, unknown ids: 404".into());

    // 10,000 multipart parts: refused at the ninth.
    let boundary = "hostile";
    let mut form = String::new();
    for index in 0..10_000 {
        form.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\njpeg{index}\r\n"
        ));
    }
    form.push_str(&format!("--{boundary}--\r\n"));
    let started = Instant::now();
    let (status, body) = status_and_body(
        http.post(format!("{url}/api/jobs"))
            .bearer_auth(&token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form)
            .timeout(WAIT)
            .send()
            .await
            .expect("the upload is answered"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    got.push(format!(
        "10,000 multipart parts: {status} in {:?}",
        started.elapsed()
    ));

    // A chunked form whose first part header never ends: cut off at the form's limit (the
    // parser holds the header meanwhile: the form's limit is what bounds it).
    rss.finish("HTTP bounds", &got.join("; ")).await;
    let rss = RssWatch::start(&cluster, "n1");
    let limit = 32 * 1024 * 1024 + 64 * 1024;
    let mut request = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut header = format!("--{boundary}\r\nX-Pad: ").into_bytes();
    header.resize(limit + 1024 * 1024, b'a');
    for chunk in header.chunks(64 * 1024) {
        request.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let status = raw_request(address, &request).await;
    assert_eq!(status, 413, "an endless part header");
    rss.finish_within(
        "an endless multipart part header, chunked",
        &format!("{status}"),
        2 * (limit as u64 / 1024) + RSS_GROWTH_MAX_KIB,
    )
    .await;
    let rss = RssWatch::start(&cluster, "n1");
    let mut got = Vec::new();

    // Headers and URIs beyond hyper's limits.
    let mut request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nX-Pad: ").into_bytes();
    request.resize(request.len() + 1024 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let status = raw_request(address, &request).await;
    assert_eq!(status, 431, "a 1 MiB header");
    got.push(format!("a 1 MiB header: {status}"));
    let request = format!(
        "GET /api/rooms/{room}/messages?after={} HTTP/1.1\r\nHost: {address}\r\n\r\n",
        "1".repeat(100_000)
    );
    let status = raw_request(address, request.as_bytes()).await;
    assert!(status == 414 || status == 431, "a 100 KB URI: {status}");
    got.push(format!("a 100 KB URI: {status}"));

    let health = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    rss.finish("HTTP headers and URI", &got.join("; ")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_short_of_memory_refuses_new_connections_and_uploads() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    // A budget far below what a node needs: it is under pressure from its first sample.
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting("limits", "memory_bytes_max", 64 * 1024 * 1024)
        .setting("limits", "memory_pressure_percent", 10)
        .start()
        .await
        .expect("node starts");
    let url = cluster.http_url("n1");
    let token = test_token("late");
    let upgrade = || async {
        reqwest::Client::new()
            .get(format!("{url}/ws?token={token}"))
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("upgrade answered")
    };
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        let (status, body) = status_and_body(upgrade().await).await;
        if status != 101 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("short_of_memory")),
        "{body}"
    );
    let (status, body) = status_and_body(
        reqwest::Client::new()
            .post(format!("{url}/api/jobs"))
            .bearer_auth(&token)
            .header("content-type", "multipart/form-data; boundary=b")
            .body("--b\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\npdf\r\n--b--\r\n")
            .send()
            .await
            .expect("upload answered"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("short_of_memory")),
        "{body}"
    );
    let health = reqwest::get(format!("{url}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "the node itself stays up");
    eprintln!("[hostile] node over its memory budget: upgrade and upload get 503 short_of_memory");
}
