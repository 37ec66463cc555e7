//! A room's history beyond what it keeps in memory comes from its journal, page by page, in
//! order and without gaps, whatever the sizes of the journal's segments.

mod common;

use std::time::Duration;

use actors::room::{self, RECENT_MESSAGES_MAX, Room};
use runtime::EntityId;

fn post(index: usize) -> room::Post {
    room::Post {
        user: "writer".into(),
        name: "Writer".into(),
        id: format!("m{index}"),
        text: format!("message {index}"),
        now_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_the_journal_in_order() {
    let directory = tempfile::tempdir().expect("tempdir");
    let node = common::start_node("h1", directory.path()).await;
    let runtime = node.runtime();
    let entity = runtime.entity::<Room>("long");
    let created = entity
        .ask(room::Create {
            name: "long".into(),
            by: "writer".into(),
            now_ms: 1,
        })
        .await
        .expect("asked");
    assert!(created.is_ok(), "{created:?}");

    // One segment per post, then posts sent together so that they share segments.
    let sequential = RECENT_MESSAGES_MAX / 2;
    let total = RECENT_MESSAGES_MAX + 300;
    for index in 0..sequential {
        let reply = entity.ask(post(index)).await.expect("asked");
        assert!(matches!(reply, Ok(room::Posted { .. })), "{reply:?}");
    }
    let together: Vec<_> = (sequential..total)
        .map(|index| {
            let entity = entity.clone();
            tokio::spawn(async move { entity.ask(post(index)).await })
        })
        .collect();
    for ask in together {
        let reply = ask.await.expect("task").expect("asked");
        assert!(matches!(reply, Ok(room::Posted { .. })), "{reply:?}");
    }
    // Compaction moves the node log's records into the room's segments.
    let room_entity = EntityId::new("room", "long");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let segments = loop {
        let starts = runtime
            .journal()
            .segment_starts(&room_entity)
            .await
            .expect("listed");
        let end = match starts.last() {
            Some(last) => {
                let records = runtime
                    .journal()
                    .read_records(&room_entity, *last)
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
        if end > total as u64 {
            break starts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not reach the head"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        segments.len() < total + 1,
        "some segments hold several posts ({} segments for {} events)",
        segments.len(),
        total + 1
    );

    let rooms = room::Rooms::new(runtime.clone(), Default::default());
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = rooms
            .history("long", "reader", after, None, room::HISTORY_PAGE_MAX)
            .await
            .expect("history");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= room::HISTORY_PAGE_MAX);
        seqs.extend(page.iter().map(|message| message.seq));
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seqs, expected, "every message once, in order");

    let bounded = rooms
        .history("long", "reader", 10, Some(150), room::HISTORY_PAGE_MAX)
        .await
        .expect("history");
    let bounded: Vec<u64> = bounded.iter().map(|message| message.seq).collect();
    assert_eq!(
        bounded,
        (11..150).collect::<Vec<u64>>(),
        "after < seq < before"
    );
    node.shutdown(Duration::from_secs(5)).await;
}
