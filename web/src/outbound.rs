//! The writing side of one WebSocket connection: server frames encoded by hand (they are
//! never masked, so encoding is a header and a copy) and written straight to the
//! non-blocking socket by whoever sends them.
//!
//! A live chat message thus costs one `write` on the publisher's task and no task wake-up.
//! Only when the socket's buffer is full does a writer task start; it drains the queue as the
//! socket becomes writable and ends when the queue is empty. The queue is bounded in frames
//! (`sessions.outbound_queue_max`): beyond it [`FrameSink::send`] answers `Full` and the session
//! closes the connection. Control frames count too: a ping of ours or a pong the WebSocket
//! reader writes in answer to a client's ping is a frame in the queue, and one that does not
//! fit closes the connection with [`CLOSE_TOO_SLOW`] (a client that sends pings and never reads
//! would otherwise grow the queue without end). Only the close frame itself may go past the
//! bound, once.
//!
//! **Invariant:** bytes reach the socket in the order the calls that produced them returned.
//! A direct write happens only when no writer task runs (the queue is then empty); otherwise
//! bytes go to the back of the queue, which the writer drains in order. The state lock is held
//! across the non-blocking write so two senders cannot interleave.
//!
//! Closing: a close frame goes after the frame being written (never inside it), queued frames
//! are dropped, and a client that does not read gets [`CLOSE_GRACE`] to take the close frame
//! before the socket is shut down.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use actors::session::{CLOSE_TOO_SLOW, CloseReason, FrameSink, SinkError};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long a closing connection may take to write its last frames.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Most buffers handed to one vectored write.
const SLICES_PER_WRITE_MAX: usize = 64;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// Appends one unmasked, final frame (RFC 6455 §5.2) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn close_frame(reason: &CloseReason) -> Vec<u8> {
    // A close frame's payload is at most 125 bytes: the code and up to 123 bytes of reason.
    let mut text = reason.reason.as_str();
    while text.len() > 123 {
        let mut end = 123;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
    }
    let mut payload = reason.code.to_be_bytes().to_vec();
    payload.extend_from_slice(text.as_bytes());
    let mut out = Vec::with_capacity(payload.len() + 2);
    encode_frame(&mut out, OP_CLOSE, &payload);
    out
}

/// Bytes waiting for the socket, with the number of frames they hold.
struct Chunk {
    bytes: Vec<u8>,
    /// Frames counted against the bound (data and control frames alike).
    frames: usize,
    /// Whether they are data frames (only those are counted in `FRAMES_OUT_TOTAL`).
    data: bool,
}

impl Chunk {
    fn data(bytes: Vec<u8>, frames: usize) -> Self {
        Self {
            bytes,
            frames,
            data: true,
        }
    }

    /// One or more control frames written together (a ping, a pong, a close).
    fn control(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            frames: 1,
            data: false,
        }
    }

    fn data_frames(&self) -> u64 {
        if self.data { self.frames as u64 } else { 0 }
    }
}

/// Whether a chunk may be refused when the queue is full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Enforced,
    /// The close frame: it must go out whatever the queue holds.
    Exempt,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Chunk>,
    /// Frames (data and control) queued or held by the writer; bounded by `frames_max`.
    frames: usize,
    /// The queue's first chunk is the rest of a partly written one: it must go out whole.
    partial_front: bool,
    writer_running: bool,
    /// No more data frames are accepted; the writer shuts the socket down once drained.
    closing: bool,
}

/// A flag set once that tasks can wait for. It lives inside [`Outbound`]: a `watch` channel
/// in its place was a separate allocation of about 340 bytes per flag and connection.
#[derive(Default)]
struct Flag {
    set: AtomicBool,
    changed: Notify,
}

impl Flag {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Resolves once the flag is set.
    async fn wait(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check, so a `set` between the check and the await wakes us.
            changed.as_mut().enable();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }
}

pub struct Outbound {
    stream: Arc<TcpStream>,
    frames_max: usize,
    state: Mutex<State>,
    /// Tells a writer stuck on an unwritable socket that a close was requested.
    close_requested: Notify,
    /// Set when the connection starts closing (for the reader).
    closed: Flag,
    /// Set once the socket is shut down (all written, or given up).
    shut: Flag,
    myself: Weak<Outbound>,
    frames_out: metrics::Counter,
}

/// Frames a worker thread counts before adding them to the shared counter: an increment of
/// the shared counter per delivery (two contended atomics) was 2–3 % of a node's CPU at
/// 50 rooms × 20 clients. The metric lags by fewer than this many frames per thread.
const FRAMES_COUNTED_EVERY: u64 = 64;

thread_local! {
    static FRAMES_UNCOUNTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_frames(counter: &metrics::Counter, frames: u64) {
    FRAMES_UNCOUNTED.with(|uncounted| {
        let total = uncounted.get() + frames;
        if total >= FRAMES_COUNTED_EVERY {
            counter.increment(total);
            uncounted.set(0);
        } else {
            uncounted.set(total);
        }
    });
}

impl Outbound {
    pub fn new(stream: Arc<TcpStream>, frames_max: usize) -> Arc<Self> {
        Arc::new_cyclic(|myself| Self {
            stream,
            frames_max: frames_max.max(1),
            state: Mutex::new(State::default()),
            close_requested: Notify::new(),
            closed: Flag::default(),
            shut: Flag::default(),
            myself: myself.clone(),
            frames_out: metrics::counter!(actors::metrics::FRAMES_OUT_TOTAL),
        })
    }

    /// Resolves once the connection is closing (close requested, socket failed).
    pub async fn closed(&self) {
        self.closed.wait().await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the chunk now if nothing is ahead of it, else queues it; a queue already holding
    /// `frames_max` frames refuses it (`Full`) unless it is [`Bound::Exempt`].
    fn push(&self, state: &mut State, mut chunk: Chunk, bound: Bound) -> Result<(), SinkError> {
        if !state.writer_running {
            match self.stream.try_write(&chunk.bytes) {
                Ok(written) if written == chunk.bytes.len() => {
                    count_frames(&self.frames_out, chunk.data_frames());
                    return Ok(());
                }
                Ok(written) => {
                    chunk.bytes.drain(..written);
                    state.partial_front = written > 0;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::debug!(%error, "WebSocket write failed");
                    self.fail(state);
                    return Err(SinkError::Closed);
                }
            }
            state.frames += chunk.frames;
            state.queue.push_back(chunk);
            self.start_writer(state);
            return Ok(());
        }
        if bound == Bound::Enforced && state.frames + chunk.frames > self.frames_max {
            return Err(SinkError::Full);
        }
        state.frames += chunk.frames;
        state.queue.push_back(chunk);
        Ok(())
    }

    /// Queues a control frame; one that does not fit closes the connection as too slow.
    fn push_control(&self, bytes: Vec<u8>) {
        let full = {
            let mut state = self.state();
            if state.closing || bytes.is_empty() {
                return;
            }
            self.push(&mut state, Chunk::control(bytes), Bound::Enforced) == Err(SinkError::Full)
        };
        if full {
            metrics::counter!(actors::metrics::SLOW_CLIENTS_TOTAL).increment(1);
            let reason = format!(
                "outbound queue full ({} frames): the client does not read fast enough",
                self.frames_max
            );
            tracing::info!(code = CLOSE_TOO_SLOW, %reason, "closing connection");
            self.close(CloseReason {
                code: CLOSE_TOO_SLOW,
                reason,
            });
        }
    }

    fn start_writer(&self, state: &mut State) {
        if state.writer_running {
            return;
        }
        let Some(myself) = self.myself.upgrade() else {
            return;
        };
        state.writer_running = true;
        tokio::spawn(myself.write_queue());
    }

    /// The socket failed: nothing more can be written.
    fn fail(&self, state: &mut State) {
        state.closing = true;
        state.queue.clear();
        state.frames = 0;
        self.closed.set();
    }

    /// A ping, for the client's liveness and to keep middleboxes from timing us out. It is a
    /// frame in the queue like any other: a full queue closes the connection instead.
    pub fn ping(&self, payload: &[u8]) {
        let mut bytes = Vec::with_capacity(2 + payload.len());
        encode_frame(&mut bytes, OP_PING, payload);
        self.push_control(bytes);
    }

    /// Raw bytes produced by the WebSocket reader: its replies to pings (one pong per write,
    /// the reader writes nothing else). Counted as one frame against the bound.
    pub fn send_raw(&self, bytes: &[u8]) {
        self.push_control(bytes.to_vec());
    }

    /// The reader ended: writes what is queued (within [`CLOSE_GRACE`] if the client does not
    /// read), then shuts the socket down.
    pub fn finish(&self) {
        let mut state = self.state();
        if !state.closing {
            state.closing = true;
            self.closed.set();
        }
        if state.writer_running {
            // A writer waiting on a client that does not read now has a deadline.
            self.close_requested.notify_one();
        } else {
            self.start_writer(&mut state);
        }
    }

    /// Drains the queue as the socket allows; ends when it is empty, shutting the socket down
    /// if the connection is closing.
    async fn write_queue(self: Arc<Self>) {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let (mut batch, closing) = {
                let mut state = self.state();
                if state.queue.is_empty() {
                    state.writer_running = false;
                    if state.closing {
                        drop(state);
                        self.shutdown(std::net::Shutdown::Write);
                    }
                    return;
                }
                state.partial_front = false;
                (std::mem::take(&mut state.queue), state.closing)
            };
            if closing && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            let mut offset = 0;
            while !batch.is_empty() {
                let written = {
                    let mut slices = Vec::with_capacity(batch.len().min(SLICES_PER_WRITE_MAX));
                    for (index, chunk) in batch.iter().take(SLICES_PER_WRITE_MAX).enumerate() {
                        let start = if index == 0 { offset } else { 0 };
                        slices.push(IoSlice::new(&chunk.bytes[start..]));
                    }
                    self.stream.try_write_vectored(&slices)
                };
                match written {
                    Ok(mut written) => {
                        while let Some(chunk) = batch.front() {
                            let left = chunk.bytes.len() - offset;
                            if written < left {
                                offset += written;
                                break;
                            }
                            written -= left;
                            offset = 0;
                            let frames = chunk.frames;
                            count_frames(&self.frames_out, chunk.data_frames());
                            batch.pop_front();
                            let mut state = self.state();
                            state.frames = state.frames.saturating_sub(frames);
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        let waited = tokio::select! {
                            ready = self.stream.writable() => ready.is_ok(),
                            () = self.close_requested.notified(), if deadline.is_none() => {
                                deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                                // Keep only the frame on the wire; the close frame follows it.
                                let keep = usize::from(offset > 0);
                                let dropped: usize =
                                    batch.iter().skip(keep).map(|chunk| chunk.frames).sum();
                                batch.truncate(keep);
                                let mut state = self.state();
                                state.frames = state.frames.saturating_sub(dropped);
                                true
                            }
                            () = sleep_until(deadline) => false,
                        };
                        if !waited {
                            self.abort();
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "WebSocket write failed");
                        self.abort();
                        return;
                    }
                }
            }
        }
    }

    /// Gives up on the socket: a client that does not read loses the rest.
    fn abort(&self) {
        {
            let mut state = self.state();
            self.fail(&mut state);
            state.writer_running = false;
        }
        self.shutdown(std::net::Shutdown::Both);
    }

    fn shutdown(&self, how: std::net::Shutdown) {
        let _ = socket2::SockRef::from(self.stream.as_ref()).shutdown(how);
        self.closed.set();
        self.shut.set();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl FrameSink for Outbound {
    fn send(&self, frames: &[&str]) -> Result<(), SinkError> {
        let mut state = self.state();
        if state.closing {
            return Err(SinkError::Closed);
        }
        let size: usize = frames.iter().map(|frame| frame.len() + 10).sum();
        let mut bytes = Vec::with_capacity(size);
        for frame in frames {
            encode_frame(&mut bytes, OP_TEXT, frame.as_bytes());
        }
        self.push(
            &mut state,
            Chunk::data(bytes, frames.len()),
            Bound::Enforced,
        )
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.state();
        if state.closing {
            return;
        }
        state.closing = true;
        // Queued frames are dropped; a partly written one must still end before the close frame.
        let keep = if state.partial_front {
            state.queue.pop_front()
        } else {
            None
        };
        state.queue.clear();
        state.frames = keep.as_ref().map_or(0, |chunk| chunk.frames);
        state.queue.extend(keep);
        let chunk = Chunk::control(close_frame(&reason));
        if state.writer_running {
            state.frames += chunk.frames;
            state.queue.push_back(chunk);
            self.close_requested.notify_one();
        } else {
            let _ = self.push(&mut state, chunk, Bound::Exempt);
            if !state.writer_running {
                // Written at once: nothing is left but the shutdown.
                self.start_writer(&mut state);
            }
        }
        self.closed.set();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A server-side `Outbound` and the client end of its socket (which the test reads, or not).
    async fn pair(frames_max: usize) -> (Arc<Outbound>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Outbound::new(Arc::new(server), frames_max), client)
    }

    /// Reads until EOF (or a reset) and splits the bytes into (opcode, payload) frames; a
    /// truncated frame at the end is an error unless `cut_allowed` (an aborted connection).
    async fn read_frames(mut client: TcpStream, cut_allowed: bool) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server never ended the connection");
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            if cut_allowed && at + 10 > bytes.len() {
                break;
            }
            assert!(at + 2 <= bytes.len(), "truncated header");
            let opcode = bytes[at] & 0x0f;
            assert_eq!(bytes[at] & 0x80, 0x80, "every frame is final");
            let (len, header) = match bytes[at + 1] {
                126 => (
                    usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                    4,
                ),
                127 => (
                    u64::from_be_bytes(bytes[at + 2..at + 10].try_into().expect("8 bytes"))
                        as usize,
                    10,
                ),
                len => (usize::from(len), 2),
            };
            if cut_allowed && at + header + len > bytes.len() {
                break;
            }
            assert!(
                at + header + len <= bytes.len(),
                "frame cut at byte {} of {}",
                bytes.len() - at - header,
                len
            );
            frames.push((opcode, bytes[at + header..at + header + len].to_vec()));
            at += header + len;
        }
        frames
    }

    #[tokio::test]
    async fn frames_stay_whole_and_ordered_through_a_full_socket_and_end_with_the_close_frame() {
        let (outbound, client) = pair(1_000_000).await;
        let text = "y".repeat(3000);
        // Write until the socket is full and the writer task has taken over, then some more.
        let mut sent = 0u32;
        while !outbound.state().writer_running || !sent.is_multiple_of(100) {
            let frame = format!("{sent:08}{text}");
            outbound.send(&[frame.as_str()]).expect("queue has room");
            sent += 1;
            assert!(sent < 200_000, "the socket never filled up");
        }
        outbound.close(CloseReason {
            code: 4008,
            reason: "too slow".into(),
        });
        assert_eq!(outbound.send(&["late"]), Err(SinkError::Closed));
        let frames = read_frames(client, false).await;
        let (close, data) = frames.split_last().expect("frames");
        assert_eq!(close.0, OP_CLOSE, "the last frame closes");
        assert_eq!(&close.1[..2], &4008u16.to_be_bytes());
        assert!(!data.is_empty());
        for (index, (opcode, payload)) in data.iter().enumerate() {
            assert_eq!(*opcode, OP_TEXT);
            let number: usize = std::str::from_utf8(&payload[..8])
                .expect("utf8")
                .parse()
                .expect("number");
            assert_eq!(number, index, "frames arrive in order, none skipped");
        }
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_fills_the_bound_and_is_cut_off() {
        let (outbound, client) = pair(8).await;
        let text = "z".repeat(4000);
        let mut refused = false;
        for _ in 0..100_000 {
            match outbound.send(&[text.as_str()]) {
                Ok(()) => {}
                Err(SinkError::Full) => {
                    refused = true;
                    break;
                }
                Err(SinkError::Closed) => panic!("closed before the bound"),
            }
        }
        assert!(refused, "the queue grew past its bound");
        assert!(outbound.state().frames <= 8);
        outbound.close(CloseReason {
            code: 4008,
            reason: "too slow".into(),
        });
        // Nobody reads: after the grace period the socket is shut down (the frame on the wire
        // is cut: the connection is aborted), so reading now drains the kernel's buffers and
        // then ends instead of waiting forever.
        let waited = tokio::time::timeout(CLOSE_GRACE * 5, outbound.shut.wait()).await;
        assert!(waited.is_ok(), "the socket was never shut down");
        assert!(!outbound.state().writer_running, "the writer gave up");
        let frames = read_frames(client, true).await;
        assert!(!frames.is_empty());
        assert!(frames.iter().all(|(opcode, _)| *opcode == OP_TEXT));
    }

    #[tokio::test]
    async fn pongs_to_a_client_that_does_not_read_count_against_the_bound() {
        let (outbound, client) = pair(8).await;
        let mut pong = Vec::new();
        encode_frame(&mut pong, 0xA, &[b'p'; 125]);
        let mut sent = 0;
        while !outbound.state().closing {
            outbound.send_raw(&pong);
            sent += 1;
            assert!(sent < 1_000_000, "pongs were queued without bound");
            // The frames held never exceed the bound, plus the close frame.
            assert!(outbound.state().frames <= 8 + 1);
        }
        assert_eq!(outbound.send(&["late"]), Err(SinkError::Closed));
        let waited = tokio::time::timeout(CLOSE_GRACE * 5, outbound.shut.wait()).await;
        assert!(waited.is_ok(), "the socket was never shut down");
        let frames = read_frames(client, true).await;
        assert!(
            frames
                .iter()
                .all(|(opcode, _)| *opcode == 0xA || *opcode == OP_CLOSE)
        );
    }

    #[tokio::test]
    async fn a_reading_client_gets_pongs_then_the_close_frame_after_the_frame_on_the_wire() {
        let (outbound, client) = pair(4).await;
        let mut pong = Vec::new();
        encode_frame(&mut pong, 0xA, b"p");
        for _ in 0..3 {
            outbound.send_raw(&pong);
        }
        outbound.ping(b"1");
        outbound.send(&["data"]).expect("room for one frame");
        outbound.close(CloseReason {
            code: 1008,
            reason: "too many frames per second".into(),
        });
        let frames = read_frames(client, false).await;
        let opcodes: Vec<u8> = frames.iter().map(|(opcode, _)| *opcode).collect();
        assert_eq!(opcodes, [0xA, 0xA, 0xA, OP_PING, OP_TEXT, OP_CLOSE]);
        assert_eq!(&frames[5].1[..2], &1008u16.to_be_bytes());
    }

    #[tokio::test]
    async fn frames_of_every_length_encoding_arrive_whole_from_one_send_or_many() {
        let (outbound, client) = pair(1_000_000).await;
        let reader = tokio::spawn(read_frames(client, false));
        let payloads: Vec<String> = [0usize, 125, 126, 65_535, 65_536, 200_000, 5]
            .iter()
            .enumerate()
            .map(|(index, len)| format!("{index}").repeat(*len))
            .collect();
        let all: Vec<&str> = payloads.iter().map(String::as_str).collect();
        outbound.send(&all).expect("one send");
        let many: Vec<&str> = std::iter::repeat_n("m", 9).collect();
        outbound.send(&many).expect("many short frames");
        outbound.send(&[all[2]]).expect("a single frame");
        // Everything queued is written before the socket is shut down.
        outbound.finish();
        let data = reader.await.expect("reader");
        let expected: Vec<&str> = all.iter().chain(&many).chain(&all[2..3]).copied().collect();
        assert_eq!(data.len(), expected.len());
        for ((opcode, payload), sent) in data.iter().zip(&expected) {
            assert_eq!(*opcode, OP_TEXT);
            assert_eq!(payload.as_slice(), sent.as_bytes());
        }
    }

    #[test]
    fn frames_use_the_shortest_length_encoding() {
        for (len, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
        ] {
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len, "payload of {len} bytes");
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn a_close_frame_fits_in_125_bytes_without_splitting_a_character() {
        let frame = close_frame(&CloseReason {
            code: 4008,
            reason: "é".repeat(100),
        });
        assert_eq!(frame[0], 0x88);
        let len = usize::from(frame[1]);
        assert!(len <= 125);
        assert_eq!(&frame[2..4], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
