//! Group commit: concurrent commands to one entity share appends, no append holds more than
//! `entities.batch_events_max` events, and the appends share node-log objects (one per flush).

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
        "[entities]\nbatch_events_max = 4\n[journal]\ncompact_interval_ms = 600000\n",
    );
    let node = NodeBuilder::new(config, "gc1")
        .expect("builder")
        .start()
        .await
        .expect("node starts");
    let runtime = node.runtime();
    // 200 commands to each of 10 entities, all at once.
    let tasks: Vec<_> = (0..2000)
        .map(|index| {
            let register = runtime.entity::<Register>(format!("batched-{}", index % 10));
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
    let store = runtime.object_store();
    let names: Vec<_> = futures_util::TryStreamExt::try_collect::<Vec<_>>(
        store.list(Some(&object_store::path::Path::from("log"))),
    )
    .await
    .expect("listing");
    let mut appends = std::collections::BTreeMap::<EntityId, (u64, u64)>::new();
    let mut objects_read = 0u64;
    for meta in &names {
        // Compaction deletes the objects it covered, also between the listing and this read.
        let bytes = match object_store::ObjectStoreExt::get(store.as_ref(), &meta.location).await {
            Ok(found) => found.bytes().await.expect("read"),
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(error) => panic!("cannot read {}: {error}", meta.location),
        };
        objects_read += 1;
        let object: runtime::journal::layout::LogObject =
            runtime::journal::layout::decode(&bytes, "log object").expect("decodes");
        for append in &object.appends {
            let events = append.events();
            assert!((1..=4).contains(&events), "an append holds {events} events");
            let entry = appends.entry(append.entity.clone()).or_default();
            entry.0 += 1;
            entry.1 += events;
        }
    }
    // Compaction may have moved some appends to segments already: the journal has them all.
    for index in 0..10 {
        let entity = EntityId::new("sys.register", format!("batched-{index}"));
        let (_, loaded) = runtime.node_journal().load(&entity).await.expect("loads");
        assert_eq!(loaded.head, 200, "{entity}: every command once");
    }
    let mut total_appends = 0;
    for (entity, (count, events)) in &appends {
        assert!(
            *count < *events,
            "{entity}: concurrent commands share appends ({count} appends for {events} events)"
        );
        total_appends += count;
    }
    assert!(
        objects_read < total_appends,
        "appends share node-log objects: {objects_read} objects for {total_appends} appends"
    );
    node.shutdown(Duration::from_secs(5)).await;
}
