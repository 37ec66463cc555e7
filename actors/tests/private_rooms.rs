//! The room entity's permission checks on an in-process node: who may join, post, read and
//! manage a private room (asked directly, as any route would), that a removal reaches the
//! removed user's sessions and no one else's, and that a private room's history pages through
//! its journal in order although membership events sit between its messages.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::room::{self, Room, RoomError};
use actors::session::{CloseReason, FrameSink, SessionActor, SessionArgs, SessionMsg, SinkError};
use ractor::{Actor, ActorRef};
use runtime::presence::{Presence, PresenceSettings};
use runtime::{EntityId, EntityRef, Node};
use serde_json::{Value, json};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn create_private(owner: &str) -> room::CreatePrivate {
    room::CreatePrivate {
        name: "Secret".into(),
        by: owner.into(),
        now_ms: 1,
    }
}

fn post(user: &str, id: &str) -> room::Post {
    room::Post {
        user: user.into(),
        name: user.into(),
        id: id.into(),
        text: format!("{id} from {user}"),
        now_ms: 2,
    }
}

fn join_as(user: &str) -> room::JoinAs {
    room::JoinAs {
        node: "p1".into(),
        session: format!("p1-{user}"),
        since: None,
        user: user.into(),
    }
}

fn history_as(user: &str) -> room::HistoryAs {
    room::HistoryAs {
        after: 0,
        before: None,
        limit: 50,
        user: user.into(),
    }
}

fn add(by: &str, user: &str) -> room::AddMember {
    room::AddMember {
        by: by.into(),
        user: user.into(),
    }
}

fn remove(by: &str, user: &str) -> room::RemoveMember {
    room::RemoveMember {
        by: by.into(),
        user: user.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_decides_who_joins_posts_reads_and_manages() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("p1", directory.path()).await;
    let secret: EntityRef<Room> = node.runtime().entity::<Room>("secret");
    secret
        .ask(create_private("ada"))
        .await
        .expect("ask")
        .expect("created");

    // A stranger, and requests that name nobody, are refused.
    let plain_join = room::Join {
        node: "p1".into(),
        session: "p1-anon".into(),
        since: None,
    };
    assert_eq!(
        secret.ask(plain_join).await.expect("ask"),
        Err(RoomError::NotAMember)
    );
    let plain_history = room::History {
        after: 0,
        before: None,
        limit: 10,
    };
    assert_eq!(
        secret.ask(plain_history).await.expect("ask"),
        Err(RoomError::NotAMember)
    );
    assert_eq!(
        secret.ask(join_as("eve")).await.expect("ask"),
        Err(RoomError::NotAMember)
    );
    assert_eq!(
        secret.ask(post("eve", "e1")).await.expect("ask"),
        Err(RoomError::NotAMember)
    );
    assert_eq!(
        secret.ask(history_as("eve")).await.expect("ask"),
        Err(RoomError::NotAMember)
    );
    assert_eq!(
        secret.ask(add("eve", "eve")).await.expect("ask"),
        Err(RoomError::NotAMember)
    );

    // The owner invites; the member joins, posts and reads, but does not manage.
    assert!(secret.ask(join_as("ada")).await.expect("ask").is_ok());
    let members = secret
        .ask(add("ada", "bob"))
        .await
        .expect("ask")
        .expect("added");
    assert_eq!(
        members,
        room::Members {
            owner: "ada".into(),
            members: vec!["bob".into()]
        }
    );
    assert!(secret.ask(join_as("bob")).await.expect("ask").is_ok());
    assert!(secret.ask(post("bob", "b1")).await.expect("ask").is_ok());
    let page = secret
        .ask(history_as("bob"))
        .await
        .expect("ask")
        .expect("page");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        secret.ask(add("bob", "eve")).await.expect("ask"),
        Err(RoomError::NotTheOwner)
    );
    assert_eq!(
        secret.ask(remove("bob", "ada")).await.expect("ask"),
        Err(RoomError::NotTheOwner)
    );
    assert!(matches!(
        secret.ask(remove("ada", "ada")).await.expect("ask"),
        Err(RoomError::Invalid(_))
    ));

    // A member leaves on their own; then the room refuses them.
    secret
        .ask(remove("bob", "bob"))
        .await
        .expect("ask")
        .expect("left");
    assert_eq!(
        secret.ask(post("bob", "b2")).await.expect("ask"),
        Err(RoomError::NotAMember)
    );

    // A public room has no members to manage, and needs no user.
    let lobby = node.runtime().entity::<Room>("lobby");
    lobby
        .ask(room::Create {
            name: "Lobby".into(),
            by: "ada".into(),
            now_ms: 1,
        })
        .await
        .expect("ask")
        .expect("created");
    assert_eq!(
        lobby.ask(add("ada", "bob")).await.expect("ask"),
        Err(RoomError::NotPrivate)
    );
    let plain_join = room::Join {
        node: "p1".into(),
        session: "p1-anon".into(),
        since: None,
    };
    assert!(lobby.ask(plain_join).await.expect("ask").is_ok());
    node.shutdown(Duration::from_secs(5)).await;
}

/// A sink that keeps what it is given; `changes` ticks on every frame.
struct RecordingSink {
    frames: Mutex<Vec<Value>>,
    changes: watch::Sender<u64>,
}

impl RecordingSink {
    fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("lock").clone()
    }

    async fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let mut changes = self.changes.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            while !done(&self.frames()) {
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
}

impl FrameSink for RecordingSink {
    fn send(&self, frames: &[&str]) -> Result<(), SinkError> {
        let mut recorded = self.frames.lock().expect("lock");
        for frame in frames {
            recorded.push(serde_json::from_str(frame).expect("frames are JSON"));
        }
        drop(recorded);
        self.changes.send_modify(|count| *count += 1);
        Ok(())
    }

    fn close(&self, _reason: CloseReason) {}
}

async fn session(
    node: &Node,
    presence: &Presence,
    user: &str,
) -> (ActorRef<SessionMsg>, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink {
        frames: Mutex::new(Vec::new()),
        changes: watch::channel(0).0,
    });
    let args = SessionArgs {
        limits: actors::config::SessionsSection::default(),
        runtime: node.runtime(),
        session_id: format!("p2-{user}"),
        user: user.into(),
        name: user.into(),
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

/// The users present in the room after the `presence` frames of `frames`, in order.
fn present(frames: &[Value]) -> BTreeSet<String> {
    let mut users = BTreeSet::new();
    for frame in frames.iter().filter(|frame| frame["type"] == "presence") {
        for user in frame["leaves"].as_array().into_iter().flatten() {
            users.remove(user["user"].as_str().unwrap_or_default());
        }
        for user in frame["joins"].as_array().into_iter().flatten() {
            users.insert(user["user"].as_str().unwrap_or_default().to_string());
        }
    }
    users
}

fn has(frames: &[Value], kind: &str, key: &str, value: &str) -> bool {
    frames
        .iter()
        .any(|frame| frame["type"] == kind && frame[key] == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_stops_the_removed_users_sessions_and_no_one_elses() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("p2", directory.path()).await;
    let secret = node.runtime().entity::<Room>("secret");
    secret
        .ask(create_private("ada"))
        .await
        .expect("ask")
        .expect("created");
    secret
        .ask(add("ada", "bob"))
        .await
        .expect("ask")
        .expect("added");

    let presence = Presence::start(node.runtime(), PresenceSettings { listed_max: 100 });
    let (ada, ada_sink) = session(&node, &presence, "ada").await;
    let (bob, bob_sink) = session(&node, &presence, "bob").await;
    let (eve, eve_sink) = session(&node, &presence, "eve").await;
    for (actor, sink) in [(&ada, &ada_sink), (&bob, &bob_sink)] {
        text(actor, json!({"type": "join", "room": "secret"}));
        sink.wait("joined", |frames| has(frames, "joined", "room", "secret"))
            .await;
    }
    ada_sink
        .wait("bob present", |frames| present(frames).contains("bob"))
        .await;
    text(&eve, json!({"type": "join", "room": "secret"}));
    eve_sink
        .wait("refused", |frames| {
            has(frames, "error", "code", "not_a_member")
        })
        .await;
    assert!(
        !eve_sink
            .frames()
            .iter()
            .any(|frame| frame["type"] == "presence"),
        "a refused join sees nobody: {:?}",
        eve_sink.frames()
    );
    assert_eq!(presence.count(&room::presence::presence_topic("secret")), 2);

    secret
        .ask(remove("ada", "bob"))
        .await
        .expect("ask")
        .expect("removed");
    bob_sink
        .wait("told", |frames| {
            has(frames, "error", "code", "removed_from_room")
        })
        .await;
    // The same publication reaches Ada's session: once she has the message, Bob has had
    // every chance to get it too.
    text(
        &ada,
        json!({"type": "post", "room": "secret", "id": "a1", "text": "after bob"}),
    );
    ada_sink
        .wait("message", |frames| has(frames, "message", "id", "a1"))
        .await;
    assert!(
        !has(&bob_sink.frames(), "message", "id", "a1"),
        "{:?}",
        bob_sink.frames()
    );
    assert!(
        !has(&ada_sink.frames(), "error", "code", "removed_from_room"),
        "only the removed user is told"
    );
    ada_sink
        .wait("bob no longer present", |frames| {
            present(frames) == BTreeSet::from(["ada".to_string()])
        })
        .await;
    let bobs = bob_sink.frames();
    let told = bobs
        .iter()
        .position(|frame| frame["code"] == "removed_from_room")
        .expect("told");
    assert!(
        !bobs[told..].iter().any(|frame| frame["type"] == "presence"),
        "a removed member hears nothing more of the room: {bobs:?}"
    );
    text(
        &bob,
        json!({"type": "post", "room": "secret", "id": "b1", "text": "hello?"}),
    );
    bob_sink
        .wait("post refused", |frames| {
            has(frames, "error", "code", "not_joined")
        })
        .await;
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_rooms_history_pages_through_its_journal_past_membership_events() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("p3", directory.path()).await;
    let runtime = node.runtime();
    let secret = runtime.entity::<Room>("deep");
    secret
        .ask(create_private("ada"))
        .await
        .expect("ask")
        .expect("created");
    // More messages than the room keeps in memory, a membership change every 50.
    let total = room::RECENT_MESSAGES_MAX + 200;
    let mut events = 2u64;
    for index in 0..total {
        if index % 50 == 0 {
            let guest = format!("guest{index}");
            secret
                .ask(add("ada", &guest))
                .await
                .expect("ask")
                .expect("added");
            secret
                .ask(remove("ada", &guest))
                .await
                .expect("ask")
                .expect("removed");
            events += 2;
        }
        secret
            .ask(post("ada", &format!("m{index}")))
            .await
            .expect("ask")
            .expect("posted");
        events += 1;
    }
    // History beyond memory is read from compacted segments: wait until they reach the head.
    let entity = EntityId::new("room", "deep");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let starts = runtime
            .journal()
            .segment_starts(&entity)
            .await
            .expect("listed");
        let end = match starts.last() {
            Some(last) => {
                let records = runtime
                    .journal()
                    .read_records(&entity, *last)
                    .await
                    .expect("read")
                    .unwrap_or_default();
                last + records
                    .iter()
                    .map(|record| record.events.len() as u64)
                    .sum::<u64>()
                    - 1
            }
            None => 0,
        };
        if end >= events {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not reach the head"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rooms = room::Rooms::new(runtime.clone(), Default::default());
    let refused = rooms.history("deep", "eve", 0, None, 10).await;
    assert!(
        matches!(refused, Err(room::RoomsError::Room(RoomError::NotAMember))),
        "{refused:?}"
    );
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = rooms
            .history("deep", "ada", after, None, room::HISTORY_PAGE_MAX)
            .await
            .expect("history");
        if page.is_empty() {
            break;
        }
        seqs.extend(page.iter().map(|message| message.seq));
    }
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "every message once, in order"
    );
    node.shutdown(Duration::from_secs(5)).await;
}
