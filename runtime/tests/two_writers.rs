//! Two nodes that both believe they own one entity (each sees only itself) race on its
//! journal in a shared object store. Create-only appends must keep one linear history: every
//! acknowledged command has its own sequence number, none is lost or applied twice, and both
//! writers keep making progress by re-reading and continuing at the new head.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use runtime::builtin::{Register, RegisterCommand};
use runtime::{EntityId, NodeBuilder};

const ADDS_PER_WRITER: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_keep_one_linear_history() {
    let directory = tempfile::tempdir().expect("tempdir");
    let objects = directory.path().join("objects");
    let mut nodes = Vec::new();
    for id in ["wa", "wb"] {
        let config = common::single_node_config(id, &directory.path().join("data"), &objects, "");
        nodes.push(
            NodeBuilder::new(config, id)
                .expect("builder")
                .start()
                .await
                .expect("node starts"),
        );
    }
    let runtimes: Vec<_> = nodes.iter().map(|node| node.runtime()).collect();
    for runtime in &runtimes {
        assert!(common::wait_until(Duration::from_secs(5), || runtime.view().settled).await);
    }

    let mut tasks = Vec::new();
    for runtime in &runtimes {
        for _ in 0..ADDS_PER_WRITER {
            let register = runtime.entity::<Register>("contended");
            tasks.push(tokio::spawn(async move {
                register
                    .ask_with(RegisterCommand::Add(1), Duration::from_secs(30), None)
                    .await
            }));
        }
    }
    let mut seqs_by_node: Vec<(String, u64)> = Vec::new();
    for task in tasks {
        let reply = task
            .await
            .expect("task")
            .expect("ask answered")
            .expect("add accepted");
        seqs_by_node.push((reply.node, reply.seq));
    }
    let total = 2 * ADDS_PER_WRITER;
    let seqs: BTreeSet<u64> = seqs_by_node.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(
        seqs.len(),
        total,
        "every acknowledged add has its own sequence number"
    );
    assert_eq!(
        seqs.iter().copied().collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>(),
        "no gaps"
    );
    for node in ["wa", "wb"] {
        assert!(
            seqs_by_node.iter().any(|(served, _)| served == node),
            "{node} made progress too"
        );
    }

    // The journal itself, read afresh, is one chain with exactly those events.
    let loaded = runtimes[0]
        .journal()
        .load(&EntityId::new("sys.register", "contended"))
        .await
        .expect("load");
    assert_eq!(loaded.head, total as u64);
    let events: usize = loaded
        .segments
        .iter()
        .flat_map(|(_, records)| records)
        .map(|record| record.events.len())
        .sum();
    let from_snapshot = loaded
        .snapshot
        .as_ref()
        .map_or(0, |snapshot| snapshot.seq as usize);
    assert_eq!(from_snapshot + events, total);
    // A write from each side lands after everything the other wrote: a stale writer must
    // re-read rather than overwrite.
    for runtime in &runtimes {
        let state = runtime
            .entity::<Register>("contended")
            .ask(RegisterCommand::Add(0))
            .await
            .expect("ask")
            .expect("ok");
        assert_eq!(
            state.counter, total as i64,
            "{} continues from the full history",
            state.node
        );
    }
    for node in nodes {
        node.shutdown(Duration::from_secs(5)).await;
    }
}
