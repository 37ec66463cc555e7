//! Group commit: concurrent commands to one entity share journal appends, and no segment holds
//! more than `entities.batch_events_max` events.

mod common;

use std::time::Duration;

use runtime::builtin::{Register, RegisterCommand};
use runtime::{EntityId, NodeBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_are_batched_within_the_bound() {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = common::single_node_config(
        "gc1",
        &directory.path().join("data"),
        &directory.path().join("objects"),
        "[entities]\nbatch_events_max = 4",
    );
    let node = NodeBuilder::new(config, "gc1")
        .expect("builder")
        .start()
        .await
        .expect("node starts");
    let runtime = node.runtime();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let register = runtime.entity::<Register>("batched");
            tokio::spawn(async move {
                register
                    .ask_with(RegisterCommand::Add(1), Duration::from_secs(20), None)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("ask").expect("add");
    }
    let entity = EntityId::new("sys.register", "batched");
    let starts = runtime
        .journal()
        .segment_starts(&entity)
        .await
        .expect("segments");
    let mut total = 0;
    for start in &starts {
        let records = runtime
            .journal()
            .read_records(&entity, *start)
            .await
            .expect("read")
            .expect("segment exists");
        let events: usize = records.iter().map(|record| record.events.len()).sum();
        assert!(
            (1..=4).contains(&events),
            "segment {start} holds {events} events"
        );
        total += events;
    }
    assert_eq!(total, 200);
    assert!(
        starts.len() < 200,
        "200 concurrent commands should share appends, got {} segments",
        starts.len()
    );
    node.shutdown(Duration::from_secs(5)).await;
}
