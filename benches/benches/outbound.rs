//! Criterion benchmark of one WebSocket delivery on the writing side, to a loopback socket that
//! a thread drains: encoding the frame into a new buffer and one `write` (what `Outbound::send`
//! does), the header on the stack and one `writev` of header and message (no buffer, no copy,
//! which measured 3-9 % more CPU per delivery end to end, see benches/RESULTS.md), and
//! `Outbound::send` itself. Only the send calls are timed;
//! every 32 frames the benchmark waits (untimed) until the reader has taken everything, so
//! every write is taken whole and none finds the socket full.
//!
//! Run with `cargo bench -p benches --bench outbound`.

use std::io::{IoSlice, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::session::FrameSink;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use web::outbound::{Outbound, encode_frame};

/// Frames sent between two waits for the reader.
const FRAMES_PER_DRAIN: u64 = 32;

/// A chat message frame of a typical size (126 to 65,535 bytes: a 4-byte header).
fn message() -> String {
    let text = "x".repeat(60);
    format!(
        r#"{{"type":"message","room":"room-17","seq":123456,"user":"u-0123456789abcdef","name":"Ada","id":"c-42","text":"{text}","at":1765152000000}}"#
    )
}

/// The server end of a loopback connection, and the count of bytes a thread has read from
/// its client end.
fn connection(tokio: &tokio::runtime::Runtime) -> (Arc<tokio::net::TcpStream>, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let read = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&read);
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 256 * 1024];
        while let Ok(bytes @ 1..) = client.read(&mut buffer) {
            counted.fetch_add(bytes as u64, Ordering::Release);
        }
    });
    server.set_nonblocking(true).expect("non-blocking");
    let _entered = tokio.enter();
    let stream = tokio::net::TcpStream::from_std(server).expect("tokio stream");
    // tokio learns that a new socket is writable from its first readiness event.
    tokio.block_on(stream.writable()).expect("writable");
    (Arc::new(stream), read)
}

/// Times `iterations` calls of `send` (each puts `bytes` bytes on the socket), waiting for the
/// reader between groups of [`FRAMES_PER_DRAIN`], untimed.
fn timed_sends(iterations: u64, bytes: u64, read: &AtomicU64, mut send: impl FnMut()) -> Duration {
    let mut timed = Duration::ZERO;
    let mut written = read.load(Ordering::Acquire);
    for index in 0..iterations {
        let started = Instant::now();
        send();
        timed += started.elapsed();
        written += bytes;
        if index % FRAMES_PER_DRAIN == FRAMES_PER_DRAIN - 1 || index == iterations - 1 {
            while read.load(Ordering::Acquire) < written {
                std::hint::spin_loop();
            }
        }
    }
    timed
}

fn send(criterion: &mut Criterion) {
    // A worker would run `Outbound`'s writer task if the socket ever filled.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let frame = message();
    let frame_bytes = frame.len() as u64 + 4;
    let mut group = criterion.benchmark_group("outbound_send");
    group.throughput(Throughput::Elements(1));

    let (stream, read) = connection(&tokio);
    group.bench_function(
        BenchmarkId::new("one_frame", "buffer_and_write"),
        |bencher| {
            bencher.iter_custom(|iterations| {
                timed_sends(iterations, frame_bytes, &read, || {
                    let mut bytes = Vec::with_capacity(frame.len() + 10);
                    encode_frame(&mut bytes, 0x1, frame.as_bytes());
                    assert_eq!(stream.try_write(&bytes).ok(), Some(bytes.len()));
                })
            });
        },
    );

    let (stream, read) = connection(&tokio);
    group.bench_function(
        BenchmarkId::new("one_frame", "header_and_writev"),
        |bencher| {
            bencher.iter_custom(|iterations| {
                timed_sends(iterations, frame_bytes, &read, || {
                    let mut header = [0x81, 126, 0, 0];
                    header[2..].copy_from_slice(&(frame.len() as u16).to_be_bytes());
                    let slices = [IoSlice::new(&header), IoSlice::new(frame.as_bytes())];
                    assert_eq!(
                        stream.try_write_vectored(&slices).ok(),
                        Some(frame_bytes as usize)
                    );
                })
            });
        },
    );

    let (stream, read) = connection(&tokio);
    let outbound = Outbound::new(stream, 1_000);
    group.bench_function(BenchmarkId::new("one_frame", "outbound_send"), |bencher| {
        let _entered = tokio.enter();
        bencher.iter_custom(|iterations| {
            timed_sends(iterations, frame_bytes, &read, || {
                outbound.send(&[frame.as_str()]).expect("sent");
            })
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = outbound;
    config = config();
    targets = send
}
criterion_main!(outbound);
