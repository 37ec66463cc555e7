//! Entity supervision inside one node: a panicking entity restarts alone and rehydrates from
//! its journal, a retried command is answered once, and a crash-looping entity is held back
//! while its neighbours keep serving.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::{Context, Entity, Node, NodeBuilder, Request, RuntimeError};
use serde::{Deserialize, Serialize};

/// Activations per key, shared with the test.
type Activations = Arc<Mutex<HashMap<String, u32>>>;

struct Fragile {
    incarnation: u32,
}

#[derive(Serialize, Deserialize)]
enum FragileCommand {
    Add(i64),
    Get,
    /// Panics in the first incarnation only: after a restart the retry succeeds.
    AddButCrashFirst(i64),
    CrashAlways,
}

/// Every command is its own request: the answer is (value, incarnation).
impl Request<Fragile> for FragileCommand {
    type Reply = (i64, u32);

    fn into_command(self) -> FragileCommand {
        self
    }

    fn from_reply(reply: (i64, u32)) -> Option<(i64, u32)> {
        Some(reply)
    }
}

impl Entity for Fragile {
    const KIND: &'static str = "test.fragile";
    type Command = FragileCommand;
    type Reply = (i64, u32);
    type Event = i64;
    type State = i64;
    type Deps = Activations;

    fn activate(key: &str, activations: &Activations) -> Self {
        let mut map = activations.lock().expect("lock");
        let count = map.entry(key.to_string()).or_insert(0);
        *count += 1;
        Self {
            incarnation: *count,
        }
    }

    fn apply(state: &mut i64, _seq: u64, event: &i64) {
        *state += event;
    }

    fn handle(
        &mut self,
        state: &i64,
        command: FragileCommand,
        context: &mut Context<'_, Self>,
    ) -> (i64, u32) {
        match command {
            FragileCommand::Add(delta) => {
                context.persist(delta);
                (state + delta, self.incarnation)
            }
            FragileCommand::Get => (*state, self.incarnation),
            FragileCommand::AddButCrashFirst(delta) => {
                assert!(
                    self.incarnation > 1,
                    "deliberate crash in the first incarnation"
                );
                context.persist(delta);
                (state + delta, self.incarnation)
            }
            FragileCommand::CrashAlways => panic!("deliberate crash, every time"),
        }
    }
}

/// Starts node `id` with the `Fragile` kind, `entities` being its `[entities]` settings.
async fn start(id: &str, directory: &std::path::Path, entities: &str) -> (Node, Activations) {
    let config = common::single_node_config(
        id,
        &directory.join("data"),
        &directory.join("objects"),
        &format!("[entities]\n{entities}"),
    );
    let activations: Activations = Arc::default();
    let node = NodeBuilder::new(config, id)
        .expect("builder")
        .register::<Fragile>(activations.clone())
        .start()
        .await
        .expect("node starts");
    (node, activations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_entity_restarts_alone_and_crash_loops_are_held_back() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (node, activations) = start(
        "sup1",
        directory.path(),
        "restarts_max = 3\nrestart_period_ms = 60000\nask_timeout_ms = 3000\nattempt_timeout_ms = 500",
    )
    .await;
    let runtime = node.runtime();
    let victim = runtime.entity::<Fragile>("victim");
    let bystander = runtime.entity::<Fragile>("bystander");

    assert_eq!(
        victim.ask(FragileCommand::Add(5)).await.expect("add"),
        (5, 1)
    );
    assert_eq!(
        bystander.ask(FragileCommand::Add(7)).await.expect("add"),
        (7, 1)
    );

    // The first incarnation panics on this command; the ask is retried with the same message
    // id on the restarted entity, which rehydrated 5 from the journal and applies it once.
    assert_eq!(
        victim
            .ask(FragileCommand::AddButCrashFirst(1))
            .await
            .expect("retried ask"),
        (6, 2)
    );
    assert_eq!(victim.ask(FragileCommand::Get).await.expect("get"), (6, 2));
    assert_eq!(
        bystander.ask(FragileCommand::Get).await.expect("get"),
        (7, 1),
        "the bystander was not restarted"
    );

    // A command that always panics: restarted up to the limit, then held back.
    let error = victim
        .ask_with(FragileCommand::CrashAlways, Duration::from_secs(2), None)
        .await
        .expect_err("a command that always crashes cannot succeed");
    assert!(matches!(error, RuntimeError::Timeout { .. }), "{error}");
    assert!(
        error.to_string().contains("held back"),
        "the last error says why: {error}"
    );
    let held_back = victim
        .ask_with(FragileCommand::Get, Duration::from_millis(300), None)
        .await;
    assert!(
        held_back.is_err(),
        "a crash-looping entity is held back, got {held_back:?}"
    );
    assert_eq!(
        bystander
            .ask(FragileCommand::Add(1))
            .await
            .expect("bystander still serves"),
        (8, 1)
    );
    let counts = activations.lock().expect("lock").clone();
    assert_eq!(counts.get("bystander"), Some(&1));
    assert!(
        counts.get("victim").is_some_and(|count| *count >= 4),
        "{counts:?}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// `ask_then` hands the entity's answer to a function. When the entity dies before answering
/// (its reply is dropped), the ask goes on in the full path with the same message id: the
/// restarted entity applies the command once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_then_answers_and_carries_on_after_a_crash_with_the_same_id() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (node, _) = start(
        "sup2",
        directory.path(),
        "ask_timeout_ms = 5000\nattempt_timeout_ms = 1000",
    )
    .await;
    let entity = node.runtime().entity::<Fragile>("callback");
    let ask_then = |command| {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        entity.ask_then(command, move |result| {
            let _ = sender.send(result);
        });
        receiver
    };

    let first = ask_then(FragileCommand::Add(2)).await.expect("answered");
    assert_eq!(first.expect("add"), (2, 1));
    let after_crash = ask_then(FragileCommand::AddButCrashFirst(3))
        .await
        .expect("answered after the crash");
    assert_eq!(
        after_crash.expect("carried on"),
        (5, 2),
        "applied once, by the second incarnation"
    );
    assert_eq!(entity.ask(FragileCommand::Get).await.expect("get"), (5, 2));
    node.shutdown(Duration::from_secs(5)).await;
}
