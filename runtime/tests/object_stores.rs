//! The journal on real object stores: a node refuses a store that ignores create-only writes;
//! on an S3 server (moto) a node journals, a new incarnation recovers what it journaled, and a
//! node that takes a partition over fences the old owner, whose later appends are refused while
//! everything it acknowledged is kept.

mod common;

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use runtime::builtin::{Register, RegisterCommand};
use runtime::journal::objects::{LatencyStore, Objects, StoreObjects};
use runtime::journal::storage::Durability;
use runtime::journal::{AppendError, Journal, JournalSettings, NodeJournal, Record};
use runtime::{EntityId, MsgId, NodeBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_create_only_is_refused_at_start() {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = common::single_node_config(
        "co1",
        &directory.path().join("data"),
        &directory.path().join("objects"),
        "",
    );
    let broken: Arc<dyn ObjectStore> = Arc::new(
        LatencyStore::new(Arc::new(InMemory::new()), Duration::ZERO).ignoring_create_only(),
    );
    let error = match NodeBuilder::new(config.clone(), "co1")
        .expect("builder")
        .with_object_store(broken)
        .start()
        .await
    {
        Ok(_) => panic!("a node started on a store that ignores create-only writes"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("If-None-Match"), "{error}");
    // The same store that keeps its promise is accepted.
    let node = NodeBuilder::new(config, "co1")
        .expect("builder")
        .with_object_store(Arc::new(InMemory::new()))
        .start()
        .await
        .expect("a store with create-only writes is accepted");
    node.shutdown(Duration::from_secs(5)).await;
}

fn s3_config(
    id: &str,
    directory: &std::path::Path,
    moto: &common::MotoServer,
    bucket: &str,
) -> runtime::config::ClusterConfig {
    let mut config = common::single_node_config(
        id,
        &directory.join(format!("data-{id}")),
        &directory.join("unused"),
        "",
    );
    let storage: runtime::config::StorageSection =
        toml::from_str(&moto.storage_toml(bucket)).expect("storage section");
    config.storage = storage;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_journals_on_s3_and_a_new_incarnation_recovers_it() {
    let directory = tempfile::tempdir().expect("tempdir");
    let moto = common::MotoServer::start().await;
    moto.bucket("journal").await;
    let first = NodeBuilder::new(s3_config("s3a", directory.path(), &moto, "journal"), "s3a")
        .expect("builder")
        .start()
        .await
        .expect("a node starts on S3 (the create-only check passes)");
    let register = first.runtime().entity::<Register>("on-s3");
    for _ in 0..20 {
        register
            .ask(RegisterCommand::Add(1))
            .await
            .expect("ask")
            .expect("add");
    }
    first.shutdown(Duration::from_secs(5)).await;

    let second = NodeBuilder::new(s3_config("s3b", directory.path(), &moto, "journal"), "s3b")
        .expect("builder")
        .start()
        .await
        .expect("another node starts on the same bucket");
    let reply = second
        .runtime()
        .entity::<Register>("on-s3")
        .ask_with(RegisterCommand::Add(1), Duration::from_secs(20), None)
        .await
        .expect("ask")
        .expect("add");
    assert_eq!(
        reply.counter, 21,
        "everything journaled on S3 was recovered"
    );
    assert_eq!(reply.node, "s3b");
    second.shutdown(Duration::from_secs(5)).await;
}

fn record(id: u128) -> Record {
    Record {
        msg_id: Some(MsgId(id)),
        events: vec![id.to_le_bytes().to_vec()],
        reply: Vec::new(),
        schema: 1,
    }
}

async fn append(
    journal: &NodeJournal,
    entity: &EntityId,
    epoch: u64,
    seq: u64,
) -> Result<(), AppendError> {
    let (done, answer) = tokio::sync::oneshot::channel();
    journal.append(
        entity,
        epoch,
        seq,
        vec![record(u128::from(seq))],
        move |outcome| {
            let _ = done.send(outcome);
        },
    );
    answer.await.expect("answered")
}

async fn holding_everything(journal: &NodeJournal, partitions: u32) {
    journal.set_desired((0..partitions).collect());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while journal.owned().len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "partitions not taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_takes_over_on_s3_fences_the_old_owner() {
    let moto = common::MotoServer::start().await;
    moto.bucket("fencing").await;
    let storage: runtime::config::StorageSection =
        toml::from_str(&moto.storage_toml("fencing")).expect("storage section");
    let store = runtime::storage::open(&storage).expect("S3 store");
    let objects: Arc<dyn Objects> = Arc::new(StoreObjects::new(
        store.objects.clone(),
        Durability::on_put(),
        None,
    ));
    runtime::journal::objects::check_create_only(objects.as_ref(), "test")
        .await
        .expect("moto refuses a second create");
    let settings = JournalSettings {
        partitions: 4,
        ..JournalSettings::default()
    };
    let start = |name: &str| {
        let log = format!("{name}.1.test");
        NodeJournal::start(
            name,
            log.clone(),
            objects.clone(),
            Journal::new(objects.clone(), log),
            settings.clone(),
            |_| false,
        )
    };
    let entity = EntityId::new("test", "contended");
    let old = start("old");
    holding_everything(&old, 4).await;
    let (old_epoch, loaded) = old.load(&entity).await.expect("load");
    assert_eq!(loaded.head, 0);
    for seq in 1..=5 {
        append(&old, &entity, old_epoch, seq)
            .await
            .expect("the owner's appends are acknowledged");
    }
    // A second node believes it owns everything too, and takes it over.
    let new = start("new");
    holding_everything(&new, 4).await;
    let refused = append(&old, &entity, old_epoch, 6).await;
    assert_eq!(
        refused,
        Err(AppendError::NotOwner),
        "the fenced owner's append is not acknowledged"
    );
    let (new_epoch, loaded) = new.load(&entity).await.expect("load");
    assert!(new_epoch > old_epoch);
    assert_eq!(
        loaded.head, 5,
        "everything the old owner acknowledged is there"
    );
    append(&new, &entity, new_epoch, 6)
        .await
        .expect("the new owner goes on");
    let (_, loaded) = new.load(&entity).await.expect("load");
    let ids: Vec<u128> = loaded
        .segments
        .iter()
        .flat_map(|(_, records)| records)
        .filter_map(|record| record.msg_id.map(|id| id.0))
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6], "one linear history");
    old.abort();
    new.abort();
}
