//! Session actors on an in-process node, writing to recording sinks: the live fast path
//! (pub/sub callback → sink), acks, and that a session that dies abnormally closes its own
//! connection and nobody else's.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::room::Room;
use actors::session::{CloseReason, FrameSink, SessionActor, SessionArgs, SessionMsg, SinkError};
use ractor::{Actor, ActorRef};
use runtime::Node;
use runtime::presence::{Presence, PresenceSettings};
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

async fn session(
    node: &Node,
    presence: &Presence,
    user: &str,
) -> (ActorRef<SessionMsg>, Arc<RecordingSink>) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let sink = RecordingSink::new();
    let runtime = node.runtime();
    let args = SessionArgs {
        limits: actors::config::SessionsSection::default(),
        runtime,
        session_id: format!("s1-{user}-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        user: user.into(),
        name: format!("{user} name"),
        sink: sink.clone(),
        presence: presence.clone(),
    };
    let (actor, _) = Actor::spawn(None, SessionActor, args.into())
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

    let presence = Presence::start(node.runtime(), PresenceSettings { listed_max: 100 });
    let (ada, ada_sink) = session(&node, &presence, "ada").await;
    let (bob, bob_sink) = session(&node, &presence, "bob").await;
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

/// The users present after the `presence` frames recorded, in order (user → name), and the
/// last count; panics on a join of a user already listed or a leave of one not listed.
fn presence_of(sink: &RecordingSink) -> (BTreeMap<String, String>, u64) {
    let mut users = BTreeMap::new();
    let mut count = 0;
    for frame in sink
        .frames()
        .iter()
        .filter(|frame| frame["type"] == "presence")
    {
        for user in frame["leaves"].as_array().into_iter().flatten() {
            let id = user["user"].as_str().expect("user");
            assert!(
                users.remove(id).is_some(),
                "a leave of {id} who was not listed: {frame}"
            );
        }
        for user in frame["joins"].as_array().into_iter().flatten() {
            let id = user["user"].as_str().expect("user").to_string();
            let name = user["name"].as_str().expect("name").to_string();
            assert!(
                users.insert(id, name).is_none(),
                "a duplicate join: {frame}"
            );
        }
        count = frame["count"].as_u64().expect("count");
    }
    (users, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_two_connections_is_present_once_and_leaves_when_both_are_gone() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("s2", directory.path()).await;
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
    let presence = Presence::start(node.runtime(), PresenceSettings { listed_max: 100 });
    let (watcher, watcher_sink) = session(&node, &presence, "watcher").await;
    text(
        &watcher,
        serde_json::json!({"type": "join", "room": "lobby"}),
    );
    watcher_sink
        .wait("own presence", |sink| presence_of(sink).1 == 1)
        .await;
    let (ada1, ada1_sink) = session(&node, &presence, "ada").await;
    let (ada2, ada2_sink) = session(&node, &presence, "ada").await;
    for (actor, sink) in [(&ada1, &ada1_sink), (&ada2, &ada2_sink)] {
        text(actor, serde_json::json!({"type": "join", "room": "lobby"}));
        sink.wait("the whole presence after joined", |sink| {
            sink.count("presence") >= 1
        })
        .await;
        let frames = sink.frames();
        let joined = frames.iter().position(|frame| frame["type"] == "joined");
        let first = frames.iter().position(|frame| frame["type"] == "presence");
        assert!(joined < first, "joined comes first: {frames:?}");
    }
    let (users, count) = presence_of(&ada2_sink);
    assert_eq!(count, 2, "ada counts once: {users:?}");
    assert_eq!(
        users.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ada", "watcher"]
    );
    assert_eq!(users["ada"], "ada name");
    watcher_sink
        .wait("ada present once", |sink| presence_of(sink).1 == 2)
        .await;
    let joins_of_ada = |sink: &RecordingSink| {
        sink.frames()
            .iter()
            .filter(|frame| frame["type"] == "presence")
            .flat_map(|frame| frame["joins"].as_array().cloned().unwrap_or_default())
            .filter(|user| user["user"] == "ada")
            .count()
    };
    assert_eq!(joins_of_ada(&watcher_sink), 1);

    // One connection leaves the room: ada is still there.
    text(&ada1, serde_json::json!({"type": "leave", "room": "lobby"}));
    ada1_sink.wait("left", |sink| sink.count("left") == 1).await;
    // The session let go before it wrote `left`, and a leave would have been written then.
    let topic = actors::room::presence::presence_topic("lobby");
    assert_eq!(presence.count(&topic), 2);
    assert!(presence_of(&watcher_sink).0.contains_key("ada"));
    // The other one ends: now she leaves.
    ada2.stop(None);
    watcher_sink
        .wait("ada gone", |sink| presence_of(sink).1 == 1)
        .await;
    let (users, _) = presence_of(&watcher_sink);
    assert_eq!(users.keys().collect::<Vec<_>>(), ["watcher"]);
    let leaves: usize = watcher_sink
        .frames()
        .iter()
        .filter(|frame| frame["type"] == "presence")
        .map(|frame| frame["leaves"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(leaves, 1, "one leave, after the last connection");
    assert_eq!(presence.count(&topic), 1);
    ada1.stop(None);
    watcher.stop(None);
    node.shutdown(Duration::from_secs(5)).await;
}
