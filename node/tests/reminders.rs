//! A durable reminder survives the death of its entity's node: registered on n2, due ~3 s
//! later, n2 SIGKILLed before that; the reminder fires on the new owner, once, not before its
//! due time.
//!
//! The asking node is this test process itself (an in-process node joining three `node run`
//! processes), as in `entity_failover.rs`; it is the only in-process node of this test binary
//! (ractor's registries are process-global), hence one test function.

use std::time::{Duration, Instant};

use chaos::cluster::{ClusterBuilder, start_with_asker};
use runtime::builtin::{FiredReminder, Register, RegisterCommand};
use runtime::clock::unix_ms;
use runtime::{Entity, EntityRef, placement};

const ASKER: &str = "t0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_fires_on_the_new_owner_after_its_node_is_killed() {
    let (cluster, node) =
        start_with_asker(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")), 3, ASKER)
            .await
            .expect("three node processes and the in-process asker, all up");
    let runtime = node.runtime();

    // A key owned by n2 whose next owner is another process, so the reminder crosses nodes.
    let key = (0..10_000)
        .map(|index| format!("reminded-{index}"))
        .find(|key| {
            placement::preference(Register::KIND, key, ["t0", "n1", "n2", "n3"])[..2]
                == ["n2", "n3"]
        })
        .expect("some key is owned by n2 with n3 next");
    let register = runtime.entity::<Register>(key.clone());
    let due_ms = unix_ms() + 3_000;
    // A sentinel due two seconds later: once it fired, a repeated firing of the first would
    // have had its chance (a shard records a firing durably before it forgets it).
    let sentinel_due_ms = due_ms + 2_000;
    for (name, due) in [("first", due_ms), ("sentinel", sentinel_due_ms)] {
        let reply = register
            .ask(RegisterCommand::RemindAt {
                name: name.into(),
                due_ms: due,
            })
            .await
            .expect("ask")
            .expect("reminder registered");
        assert_eq!(reply.node, "n2", "n2 owns {key}");
    }

    cluster.kill("n2");
    let killed_at_ms = unix_ms();
    assert!(
        killed_at_ms < due_ms,
        "n2 was killed only after the reminder was due: the test proves nothing"
    );
    let fired = wait_for_firing(&register, "sentinel", Duration::from_secs(30))
        .await
        .expect("the sentinel fired on the new owner");
    let first: Vec<&FiredReminder> = fired.iter().filter(|f| f.name == "first").collect();
    println!(
        "n2 killed {} ms before the due time; firings recorded: {fired:?}",
        due_ms - killed_at_ms
    );
    assert_eq!(
        first.len(),
        1,
        "the reminder fired exactly once (a repeat would be a redelivery the journal did not answer): {fired:?}"
    );
    let firing = first[0];
    assert_eq!(firing.due_ms, due_ms);
    assert!(
        firing.fired_at_ms >= due_ms,
        "fired at {} before its due time {due_ms}",
        firing.fired_at_ms
    );
    assert_ne!(firing.node, "n2", "n2 was dead at the due time");
    assert_eq!(firing.node, "n3", "the next owner fired it");
    println!(
        "fired on {} {} ms after its due time",
        firing.node,
        firing.fired_at_ms - due_ms
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// The register's recorded firings once one named `name` is among them.
async fn wait_for_firing(
    register: &EntityRef<Register>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<FiredReminder>, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match register.ask(RegisterCommand::Firings).await {
            Ok(Ok(reply)) if reply.fired.iter().any(|fired| fired.name == name) => {
                return Ok(reply.fired);
            }
            Ok(Ok(reply)) => last = format!("firings so far: {:?}", reply.fired),
            Ok(Err(error)) => last = error,
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no firing of {name} within {timeout:?}; {last}"))
}
