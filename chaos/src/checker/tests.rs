//! The checkers against hand-made histories and client logs: a healthy run passes, and each
//! kind of violation is caught with its counter-example.

use super::*;
use crate::records::{AckRecord, ClientLog, Delivery, PostRecord};

fn stored(seq: u64, user: &str, id: &str) -> StoredMessage {
    StoredMessage {
        seq,
        user: user.into(),
        id: id.into(),
    }
}

fn post(index: u64, seq: Option<u64>) -> PostRecord {
    PostRecord {
        index,
        first_sent_ms: index * 10,
        last_sent_ms: index * 10,
        attempts: 1,
        ack: seq.map(|seq| AckRecord {
            seq,
            at_ms: index * 10 + 5,
            node: "n1".into(),
        }),
    }
}

fn client(user: &str, acked: &[(u64, u64)]) -> ClientLog {
    ClientLog {
        user: user.into(),
        room: "r".into(),
        home: "n1".into(),
        posts: acked
            .iter()
            .map(|(index, seq)| post(*index, Some(*seq)))
            .collect(),
        first_head: Some(0),
        ..ClientLog::default()
    }
}

fn deliver(client: &mut ClientLog, seqs: &[(u64, &str, &str)]) {
    client.deliveries = seqs
        .iter()
        .map(|(seq, user, id)| Delivery {
            seq: *seq,
            user: user.to_string(),
            id: id.to_string(),
            at_ms: seq * 10,
        })
        .collect();
}

/// alice posted 0, 1, 2 and bob 0, 1, interleaved; everyone got everything.
fn healthy() -> (Histories, Vec<ClientLog>) {
    let history = vec![
        stored(1, "alice", "0"),
        stored(2, "bob", "0"),
        stored(3, "alice", "1"),
        stored(4, "bob", "1"),
        stored(5, "alice", "2"),
    ];
    let mut alice = client("alice", &[(0, 1), (1, 3), (2, 5)]);
    let mut bob = client("bob", &[(0, 2), (1, 4)]);
    let all: Vec<(u64, &str, &str)> = history
        .iter()
        .map(|message| (message.seq, message.user.as_str(), message.id.as_str()))
        .collect();
    deliver(&mut alice, &all);
    deliver(&mut bob, &all);
    let histories = Histories::from([("r".to_string(), history)]);
    (histories, vec![alice, bob])
}

fn failures(results: &[InvariantResult]) -> Vec<&str> {
    results
        .iter()
        .filter(|result| !result.passed)
        .map(|result| result.name.as_str())
        .collect()
}

fn result<'a>(results: &'a [InvariantResult], name: &str) -> &'a InvariantResult {
    results
        .iter()
        .find(|result| result.name == name)
        .expect("invariant present")
}

#[test]
fn a_healthy_run_passes_everything() {
    let (histories, clients) = healthy();
    let results = check_chat(&histories, &clients);
    assert!(failures(&results).is_empty(), "{results:#?}");
    assert_eq!(result(&results, "no_acked_message_lost").checked, 5);
}

#[test]
fn a_lost_acknowledged_message_is_caught() {
    let (mut histories, mut clients) = healthy();
    // bob's message 1 (acked with seq 4) vanished, and the rest was renumbered.
    let history = vec![
        stored(1, "alice", "0"),
        stored(2, "bob", "0"),
        stored(3, "alice", "1"),
        stored(4, "alice", "2"),
    ];
    histories.insert("r".into(), history);
    for client in &mut clients {
        client.deliveries.truncate(3);
    }
    let results = check_chat(&histories, &clients);
    let lost = result(&results, "no_acked_message_lost");
    assert!(!lost.passed);
    let example = lost.first_counterexample.clone().expect("example");
    assert_eq!(
        (
            example.room.as_deref(),
            example.seq,
            example.sender.as_deref(),
            example.client_id.as_deref()
        ),
        (Some("r"), Some(4), Some("bob"), Some("1"))
    );
    assert!(example.to_string().contains("missing"), "{example}");
}

#[test]
fn a_duplicate_is_caught() {
    let (mut histories, clients) = healthy();
    histories
        .get_mut("r")
        .expect("room")
        .push(stored(6, "bob", "1"));
    let results = check_chat(&histories, &clients);
    let duplicates = result(&results, "no_duplicates");
    assert!(!duplicates.passed, "{results:#?}");
    let example = duplicates.first_counterexample.clone().expect("example");
    assert_eq!(
        (
            example.seq,
            example.sender.as_deref(),
            example.client_id.as_deref()
        ),
        (Some(6), Some("bob"), Some("1"))
    );

    // The same seq stored twice is a duplicate too.
    let (mut histories, clients) = healthy();
    histories
        .get_mut("r")
        .expect("room")
        .push(stored(5, "bob", "9"));
    assert!(!result(&check_chat(&histories, &clients), "no_duplicates").passed);
}

#[test]
fn a_reorder_is_caught() {
    let (mut histories, clients) = healthy();
    // alice's 1 and 2 swapped places in the history.
    let history = vec![
        stored(1, "alice", "0"),
        stored(2, "bob", "0"),
        stored(3, "alice", "2"),
        stored(4, "bob", "1"),
        stored(5, "alice", "1"),
    ];
    histories.insert("r".into(), history);
    let results = check_chat(&histories, &clients);
    let order = result(&results, "per_sender_order");
    assert!(!order.passed);
    let example = order.first_counterexample.clone().expect("example");
    assert_eq!(
        (
            example.seq,
            example.sender.as_deref(),
            example.client_id.as_deref()
        ),
        (Some(5), Some("alice"), Some("1"))
    );

    // Acks that go backwards are caught even when the history looks fine.
    let (histories, mut clients) = healthy();
    clients[0].posts[2].ack.as_mut().expect("ack").seq = 2;
    assert!(!result(&check_chat(&histories, &clients), "per_sender_order").passed);
}

#[test]
fn two_messages_acknowledged_with_one_seq_are_caught() {
    let (histories, mut clients) = healthy();
    // Two owners both appended seq 5: alice got an ack for her 2, and carol for her 0.
    let mut carol = client("carol", &[(0, 5)]);
    carol.first_head = None;
    clients.push(carol);
    let results = check_chat(&histories, &clients);
    let linear = result(&results, "one_linear_history");
    assert!(!linear.passed, "{results:#?}");
    let example = linear.first_counterexample.clone().expect("example");
    assert_eq!(
        (
            example.seq,
            example.sender.as_deref(),
            example.client_id.as_deref()
        ),
        (Some(5), Some("carol"), Some("0"))
    );
    assert!(example.detail.contains("alice/2"), "{example}");
    // carol's message is also missing from the history.
    assert!(!result(&results, "no_acked_message_lost").passed);
}

#[test]
fn a_history_with_a_hole_is_not_linear() {
    let (mut histories, _) = healthy();
    histories
        .get_mut("r")
        .expect("room")
        .retain(|message| message.seq != 3);
    let results = one_linear_history(&histories, &[]);
    assert!(!results.passed);
    assert_eq!(results.first_counterexample.expect("example").seq, Some(3));
}

#[test]
fn a_delivery_that_disagrees_with_the_history_is_caught() {
    let (histories, mut clients) = healthy();
    clients[1].deliveries[2].id = "7".into();
    assert!(!result(&check_chat(&histories, &clients), "one_linear_history").passed);
}

#[test]
fn duplicate_and_missing_deliveries_are_caught() {
    let (histories, mut clients) = healthy();
    let again = clients[0].deliveries[1].clone();
    clients[0].deliveries.insert(2, again);
    let results = check_chat(&histories, &clients);
    let delivery = result(&results, "delivery_exactly_once");
    assert!(!delivery.passed);
    assert_eq!(
        delivery.first_counterexample.clone().expect("example").seq,
        Some(2)
    );

    let (histories, mut clients) = healthy();
    clients[1].deliveries.remove(2);
    let delivery = delivery_exactly_once(&clients);
    assert!(!delivery.passed);
    assert_eq!(delivery.first_counterexample.expect("example").seq, Some(3));

    // A hole the server announced with history_gap is not a violation.
    clients[1].gap_notices.push((3, 3));
    assert!(delivery_exactly_once(&clients).passed);
    let _ = histories;
}

#[test]
fn jobs_must_finish_with_one_output() {
    let job = |id: &str, state: Option<&str>, outputs: Option<usize>| JobRecord {
        job: id.into(),
        user: "u".into(),
        accepted_ms: 1,
        final_state: state.map(str::to_string),
        error: None,
        outputs,
        downloaded: Some(true),
        download_errors: Vec::new(),
        done_ms: None,
    };
    let results = check_jobs(&[
        job("a", Some("done"), Some(1)),
        job("b", Some("failed"), Some(0)),
    ]);
    assert!(failures(&results).is_empty(), "{results:#?}");
    let results = check_jobs(&[
        job("a", Some("running"), None),
        job("b", Some("done"), Some(2)),
    ]);
    assert_eq!(failures(&results), ["jobs_finish", "jobs_one_output"]);
    assert_eq!(
        result(&results, "jobs_finish")
            .first_counterexample
            .clone()
            .expect("example")
            .client_id
            .as_deref(),
        Some("a")
    );
}
