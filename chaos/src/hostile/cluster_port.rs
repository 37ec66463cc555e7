//! Strangers on a node's cluster port, before any handshake: garbage, a handshake sent a byte
//! at a time, and a crowd of connections each announcing a 4 MiB frame and sending it. The
//! node must close every one of them within its handshake timeout (`cluster.handshake_timeout_ms`,
//! 3 s by default) having read little of each, and its honest peers must stay connected (the
//! run's `no_member_down_outside_faults` checks that).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Decks, Judgement, Outcome, Shared};
use crate::corpus::noise;
use crate::schedule::SeededRng;

/// The node's default handshake timeout plus slack for a loaded machine.
const CLOSE_DEADLINE: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Garbage sent at once: well above `cluster.preauth_bytes_max` (64 KiB).
const GARBAGE_BYTES: usize = 256 * 1024;
/// The slow handshake's pace.
const SLOW_BYTE_INTERVAL: Duration = Duration::from_millis(250);
/// Connections of the crowd, as in `node/tests/cluster_limits.rs`.
const CROWD_CONNECTIONS: usize = 200;
/// What each of the crowd announces, and sends as far as the node lets it.
const CROWD_FRAME_BYTES: u64 = 4 * 1024 * 1024;
const CROWD_CHUNK_BYTES: usize = 64 * 1024;
/// One write of the crowd may wait this long for the node to read.
const CROWD_WRITE_WAIT: Duration = Duration::from_secs(2);

/// One cluster-port attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Garbage,
    SlowHandshake,
    LargePrefixes,
}

impl Variant {
    const ALL: [Variant; 3] = [
        Variant::Garbage,
        Variant::SlowHandshake,
        Variant::LargePrefixes,
    ];

    pub fn draw(decks: &mut Decks, rng: &mut SeededRng) -> Variant {
        Variant::ALL[decks.draw("cluster_port", Variant::ALL.len(), rng)]
    }

    pub fn describe(self) -> String {
        match self {
            Variant::Garbage => format!(
                "{} KiB of garbage on the cluster port",
                GARBAGE_BYTES / 1024
            ),
            Variant::SlowHandshake => "a handshake sent a byte every 250 ms".into(),
            Variant::LargePrefixes => format!(
                "{CROWD_CONNECTIONS} connections announcing {} MiB frames",
                CROWD_FRAME_BYTES >> 20
            ),
        }
    }
}

pub async fn run(shared: &Shared, variant: Variant, target: &str, draw: u64) -> Outcome {
    let address = shared.cluster.cluster_addr(target);
    match variant {
        Variant::Garbage => garbage(address, draw).await,
        Variant::SlowHandshake => slow(address).await,
        Variant::LargePrefixes => crowd(address).await,
    }
}

async fn connect(address: std::net::SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("connect failed: {error}")),
        Err(_) => Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    }
}

/// Reads until the node closes (EOF or reset) or `deadline`; true if it closed.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn garbage(address: std::net::SocketAddr, draw: u64) -> Outcome {
    let started = Instant::now();
    let mut stream = match connect(address).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::new(Judgement::Unexpected, error, ""),
    };
    let bytes = noise(GARBAGE_BYTES, draw);
    let written = tokio::time::timeout(CLOSE_DEADLINE, stream.write_all(&bytes)).await;
    let write = match written {
        Ok(Ok(())) => "all written",
        Ok(Err(_)) => "writes failed",
        Err(_) => "writes stalled",
    };
    if closed_by(&mut stream, started + CLOSE_DEADLINE).await {
        Outcome::new(
            Judgement::Expected,
            "closed",
            format!("after {:.1?} ({write})", started.elapsed()),
        )
    } else {
        Outcome::new(
            Judgement::Unexpected,
            format!("still open after {CLOSE_DEADLINE:?}"),
            write,
        )
    }
}

async fn slow(address: std::net::SocketAddr) -> Outcome {
    let started = Instant::now();
    let mut stream = match connect(address).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::new(Judgement::Unexpected, error, ""),
    };
    // A plausible start: a small length prefix, then its bytes, one at a time.
    let mut handshake = 200u64.to_be_bytes().to_vec();
    handshake.extend(std::iter::repeat_n(0x2a, 200));
    let mut sent = 0;
    for byte in handshake {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        sent += 1;
        if closed_by(&mut stream, Instant::now() + SLOW_BYTE_INTERVAL).await {
            return Outcome::new(
                Judgement::Expected,
                "closed",
                format!("after {:.1?} and {sent} bytes", started.elapsed()),
            );
        }
        if started.elapsed() >= CLOSE_DEADLINE {
            return Outcome::new(
                Judgement::Unexpected,
                format!("still open after {CLOSE_DEADLINE:?}"),
                format!("{sent} bytes sent"),
            );
        }
    }
    if closed_by(&mut stream, started + CLOSE_DEADLINE).await {
        Outcome::new(
            Judgement::Expected,
            "closed",
            format!("after {:.1?} and {sent} bytes", started.elapsed()),
        )
    } else {
        Outcome::new(
            Judgement::Unexpected,
            format!("still open after {CLOSE_DEADLINE:?}"),
            format!("{sent} bytes sent"),
        )
    }
}

/// How one connection of the crowd ended.
enum CrowdEnd {
    NotConnected,
    Closed { sent: usize },
    Open { sent: usize },
}

async fn crowd(address: std::net::SocketAddr) -> Outcome {
    let started = Instant::now();
    let deadline = started + CLOSE_DEADLINE + CROWD_WRITE_WAIT * 2;
    let members: Vec<_> = (0..CROWD_CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut stream) = connect(address).await else {
                    return CrowdEnd::NotConnected;
                };
                let mut sent = 0;
                if stream
                    .write_all(&CROWD_FRAME_BYTES.to_be_bytes())
                    .await
                    .is_ok()
                {
                    let chunk = vec![0x5a_u8; CROWD_CHUNK_BYTES];
                    while (sent as u64) < CROWD_FRAME_BYTES {
                        match tokio::time::timeout(CROWD_WRITE_WAIT, stream.write_all(&chunk)).await
                        {
                            Ok(Ok(())) => sent += chunk.len(),
                            _ => break,
                        }
                    }
                }
                if closed_by(&mut stream, deadline).await {
                    CrowdEnd::Closed { sent }
                } else {
                    CrowdEnd::Open { sent }
                }
            })
        })
        .collect();
    let (mut closed, mut open, mut not_connected, mut sent_max, mut sent_total) = (0, 0, 0, 0, 0);
    for member in members {
        match member.await {
            Ok(CrowdEnd::Closed { sent }) => {
                closed += 1;
                sent_max = sent_max.max(sent);
                sent_total += sent;
            }
            Ok(CrowdEnd::Open { sent }) => {
                open += 1;
                sent_total += sent;
            }
            Ok(CrowdEnd::NotConnected) | Err(_) => not_connected += 1,
        }
    }
    let detail = format!(
        "{closed} closed, {open} still open, {not_connected} not connected in {:.1?}; the sockets took at most {} KiB of one, {} KiB in all (kernel buffers included), of the {} MiB announced",
        started.elapsed(),
        sent_max / 1024,
        sent_total / 1024,
        (CROWD_FRAME_BYTES >> 20) * CROWD_CONNECTIONS as u64
    );
    if open == 0 && closed > 0 {
        Outcome::new(Judgement::Expected, "all closed", detail)
    } else {
        Outcome::new(
            Judgement::Unexpected,
            format!("{open} still open, {not_connected} not connected"),
            detail,
        )
    }
}
