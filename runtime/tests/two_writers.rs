//! Two nodes that both believe they own every partition (each sees only itself) race on one
//! entity's journal in a shared object store: each keeps claiming the partition and fencing
//! the other. Every acknowledged command has its own sequence number, none is lost or applied
//! twice (a fenced writer's appends are never acknowledged), and both make progress, each
//! continuing from the full history.

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
        // No membership table: each stays alone, believing it owns every partition.
        let config = common::single_node_config(
            id,
            &directory.path().join("data"),
            &objects,
            "member_table = false\n",
        );
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

    // The journal itself, read afresh once compacted, is one chain with exactly those events.
    let entity = EntityId::new("sys.register", "contended");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let loaded = loop {
        let loaded = runtimes[0].journal().load(&entity).await.expect("load");
        if loaded.head >= total as u64 || std::time::Instant::now() > deadline {
            break loaded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    // The race ends (one side stops): the other continues from the full history.
    let mut nodes = nodes;
    let survivor = nodes.remove(0);
    for node in nodes {
        node.shutdown(Duration::from_secs(5)).await;
    }
    let state = survivor
        .runtime()
        .entity::<Register>("contended")
        .ask_with(RegisterCommand::Add(0), Duration::from_secs(30), None)
        .await
        .expect("ask")
        .expect("ok");
    assert_eq!(
        state.counter, total as i64,
        "the survivor continues from the full history"
    );
    let nodes = vec![survivor];
    for node in nodes {
        node.shutdown(Duration::from_secs(5)).await;
    }
}
