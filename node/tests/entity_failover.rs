//! An entity with state, asked from one node, lives on its owner; when the owner is killed the
//! next ask is served by the new owner with the state the old one journaled, within 2 s; when
//! the old owner returns, the entity is handed back to it with that state.
//!
//! The asking node is this test process itself: a real node (runtime + ractor_cluster over TCP)
//! that joins three `node run` processes. It is the only in-process node of this test binary
//! (ractor's registries are process-global), hence one test function.

use std::time::{Duration, Instant};

use chaos::cluster::{ClusterBuilder, start_with_asker};
use runtime::builtin::{Register, RegisterCommand};
use runtime::{Entity, placement};

const ASKER: &str = "t0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_fails_over_to_the_new_owner_with_its_journaled_state() {
    let (cluster, node) =
        start_with_asker(ClusterBuilder::new(env!("CARGO_BIN_EXE_node")), 3, ASKER)
            .await
            .expect("three node processes and the in-process asker, all up");
    let runtime = node.runtime();

    // A key owned by n2 whose next owner is another process, so the failover crosses nodes.
    let key = (0..10_000)
        .map(|index| format!("account-{index}"))
        .find(|key| {
            placement::preference(Register::KIND, key, ["t0", "n1", "n2", "n3"])[..2]
                == ["n2", "n3"]
        })
        .expect("some key is owned by n2 with n3 next");
    let register = runtime.entity::<Register>(key.clone());
    for _ in 0..5 {
        register
            .ask(RegisterCommand::Add(10))
            .await
            .expect("ask")
            .expect("add");
    }
    let before = register
        .ask(RegisterCommand::Set("hello".into()))
        .await
        .expect("ask")
        .expect("set");
    assert_eq!(before.node, "n2", "n2 owns {key}");
    assert_eq!(
        (before.counter, before.value.as_str(), before.writes),
        (50, "hello", 6)
    );

    let killed_at = Instant::now();
    cluster.kill("n2");
    let after = register
        .ask(RegisterCommand::Get)
        .await
        .expect("ask after the kill")
        .expect("get");
    let failover = killed_at.elapsed();
    assert_eq!(after.node, "n3", "the next owner serves it");
    assert_eq!(
        (after.counter, after.value.as_str(), after.writes, after.seq),
        (50, "hello", 6, 6),
        "state survived"
    );
    assert!(
        failover < Duration::from_secs(2),
        "served again {failover:?} after the kill, bound is 2 s"
    );
    let written = register
        .ask(RegisterCommand::Add(1))
        .await
        .expect("ask")
        .expect("add on n3");
    assert_eq!(
        (written.node.as_str(), written.counter, written.seq),
        ("n3", 51, 7)
    );

    cluster.restart("n2").await.expect("restart n2");
    wait_until(Duration::from_secs(20), || {
        runtime.view().up_members().count() == 4
    })
    .await
    .expect("n2 back up");
    let back = register
        .ask(RegisterCommand::Get)
        .await
        .expect("ask after n2 returned")
        .expect("get");
    assert_eq!(back.node, "n2", "handed back to the returning owner");
    assert_eq!(
        (back.counter, back.writes, back.seq),
        (51, 7, 7),
        "with what n3 journaled meanwhile"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("condition not met within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
