//! Session actors on an in-process node, writing to recording sinks: the live fast path
//! (pub/sub callback → sink), acks, and that a session that dies abnormally closes its own
//! connection and nobody else's.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::room::Room;
use actors::session::{CloseReason, FrameSink, SessionActor, SessionArgs, SessionMsg, SinkError};
use ractor::{Actor, ActorRef};
use runtime::Node;
use serde_json::Value;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

/// A sink that keeps what it is given; `changes` ticks on every frame and on close.
struct RecordingSink {
    frames: Mutex<Vec<Value>>,
    closed: Mutex<Option<CloseReason>>,
    changes: watch::Sender<u64>,
}

impl RecordingSink {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            frames: Mutex::new(Vec::new()),
            closed: Mutex::new(None),
            changes: watch::channel(0).0,
        })
    }

    fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("lock").clone()
    }

    fn closed(&self) -> Option<CloseReason> {
        self.closed.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what has been recorded.
    async fn wait(&self, what: &str, done: impl Fn(&RecordingSink) -> bool) {
        let mut changes = self.changes.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            while !done(self) {
                changes.changed().await.expect("sink alive");
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{what} within {WAIT:?}: got {:?}",
            self.frames()
        );
    }

    fn count(&self, kind: &str) -> usize {
        self.frames()
            .iter()
            .filter(|frame| frame["type"] == kind)
            .count()
    }
}

impl FrameSink for RecordingSink {
    fn send(&self, frames: &[&str]) -> Result<(), SinkError> {
        if self.closed().is_some() {
            return Err(SinkError::Closed);
        }
        let mut recorded = self.frames.lock().expect("lock");
        for frame in frames {
            recorded.push(serde_json::from_str(frame).expect("frames are JSON"));
        }
        drop(recorded);
        self.changes.send_modify(|count| *count += 1);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        let mut closed = self.closed.lock().expect("lock");
        if closed.is_none() {
            *closed = Some(reason);
        }
        drop(closed);
        self.changes.send_modify(|count| *count += 1);
    }
}

async fn session(node: &Node, user: &str) -> (ActorRef<SessionMsg>, Arc<RecordingSink>) {
    let sink = RecordingSink::new();
    let runtime = node.runtime();
    let args = SessionArgs {
        limits: actors::config::SessionsSection::default(),
        runtime,
        session_id: format!("s1-{user}"),
        user: user.into(),
        name: user.into(),
        sink: sink.clone(),
    };
    let (actor, _) = Actor::spawn(None, SessionActor, args)
        .await
        .expect("session starts");
    (actor, sink)
}

fn text(actor: &ActorRef<SessionMsg>, frame: Value) {
    actor
        .cast(SessionMsg::ClientText(frame.to_string()))
        .expect("session alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_reach_every_member_and_a_killed_session_closes_only_its_connection() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("s1", directory.path()).await;
    node.runtime()
        .entity::<Room>("lobby")
        .ask(actors::room::Create {
            name: "Lobby".into(),
            by: "test".into(),
            now_ms: 0,
        })
        .await
        .expect("ask")
        .expect("created");

    let (ada, ada_sink) = session(&node, "ada").await;
    let (bob, bob_sink) = session(&node, "bob").await;
    for (actor, sink) in [(&ada, &ada_sink), (&bob, &bob_sink)] {
        text(actor, serde_json::json!({"type": "join", "room": "lobby"}));
        sink.wait("joined", |sink| sink.count("joined") == 1).await;
    }

    text(
        &ada,
        serde_json::json!({"type": "post", "room": "lobby", "id": "a1", "text": "hello"}),
    );
    ada_sink
        .wait("ack and message", |sink| {
            sink.count("ack") == 1 && sink.count("message") == 1
        })
        .await;
    bob_sink
        .wait("message", |sink| sink.count("message") == 1)
        .await;
    let message = bob_sink
        .frames()
        .into_iter()
        .find(|frame| frame["type"] == "message")
        .expect("message");
    assert_eq!(message["seq"], 1);
    assert_eq!(message["id"], "a1");
    assert_eq!(message["text"], "hello");

    // An abnormal end (no post_stop) still closes that connection, with a server error code.
    ada.kill();
    ada_sink.wait("close", |sink| sink.closed().is_some()).await;
    assert_eq!(ada_sink.closed().expect("closed").code, 1011);

    // Bob's session carries on, and Ada's closed sink is not written to any more.
    let ada_frames = ada_sink.frames().len();
    text(
        &bob,
        serde_json::json!({"type": "post", "room": "lobby", "id": "b1", "text": "still here"}),
    );
    bob_sink
        .wait("ack and second message", |sink| {
            sink.count("ack") == 1 && sink.count("message") == 2
        })
        .await;
    assert!(bob_sink.closed().is_none());
    assert_eq!(ada_sink.frames().len(), ada_frames);

    // A graceful stop (the node shutting down) says so.
    bob.stop(None);
    bob_sink.wait("close", |sink| sink.closed().is_some()).await;
    assert_eq!(
        bob_sink.closed().expect("closed").code,
        actors::session::CLOSE_SHUTDOWN
    );
    node.shutdown(Duration::from_secs(5)).await;
}
