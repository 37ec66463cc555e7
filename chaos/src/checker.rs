//! The invariant checkers: pure functions from what the cluster stores (room histories, job
//! states) and what the clients saw (acks, deliveries) to a verdict per invariant, each with a
//! count and its first counter-example (room, seq, sender, client id).
//!
//! The invariants are `shared/DESIGN.md`'s "Reliability invariants" plus the session's
//! delivery invariant from `ARCHITECTURE.md`:
//! - `no_acked_message_lost`: every acknowledged post is in its room's history;
//! - `no_duplicates`: no `(user, id)` and no seq appears twice in a history;
//! - `per_sender_order`: a sender's messages are stored in the order it sent them;
//! - `one_linear_history`: seqs are `1..=head` with no hole, and no seq was acknowledged or
//!   delivered for two different messages (nor for another message than the one stored);
//! - `delivery_exactly_once`: each client got a room's messages in seq order, none twice, no
//!   hole (except a range the server announced with `history_gap`);
//! - `jobs_finish` and `jobs_one_output`: every accepted job ends done or failed, a done job
//!   has exactly one output.
//!
//! Cluster-level results (all up after the last heal, failover within bounds) are built with
//! [`InvariantResult::from_findings`] by the run itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::records::{ClientLog, JobRecord, StoredMessage};

/// The first violation found, with the coordinates a person needs to look it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CounterExample {
    pub room: Option<String>,
    pub seq: Option<u64>,
    pub sender: Option<String>,
    pub client_id: Option<String>,
    pub detail: String,
}

impl CounterExample {
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::default()
        }
    }

    fn at(
        room: &str,
        seq: Option<u64>,
        sender: Option<&str>,
        client_id: Option<&str>,
        detail: String,
    ) -> Self {
        Self {
            room: Some(room.to_string()),
            seq,
            sender: sender.map(str::to_string),
            client_id: client_id.map(str::to_string),
            detail,
        }
    }
}

impl fmt::Display for CounterExample {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(room) = &self.room {
            parts.push(format!("room {room}"));
        }
        if let Some(seq) = self.seq {
            parts.push(format!("seq {seq}"));
        }
        if let Some(sender) = &self.sender {
            parts.push(format!("sender {sender}"));
        }
        if let Some(client_id) = &self.client_id {
            parts.push(format!("client id {client_id}"));
        }
        if parts.is_empty() {
            write!(formatter, "{}", self.detail)
        } else {
            write!(formatter, "{}: {}", parts.join(", "), self.detail)
        }
    }
}

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantResult {
    pub name: String,
    /// Skipped invariants (e.g. jobs when the cluster has no jobs API) pass vacuously and say so.
    pub skipped: bool,
    pub passed: bool,
    /// How many things were checked (acks, messages, jobs, faults...).
    pub checked: u64,
    pub violations: u64,
    pub first_counterexample: Option<CounterExample>,
    pub note: Option<String>,
}

impl InvariantResult {
    /// A result from the violations found among `checked` items (the first is the example).
    pub fn from_findings(name: &str, checked: u64, findings: Vec<CounterExample>) -> Self {
        Self {
            name: name.to_string(),
            skipped: false,
            passed: findings.is_empty(),
            checked,
            violations: findings.len() as u64,
            first_counterexample: findings.into_iter().next(),
            note: None,
        }
    }

    pub fn skipped(name: &str, why: &str) -> Self {
        Self {
            name: name.to_string(),
            skipped: true,
            passed: true,
            checked: 0,
            violations: 0,
            first_counterexample: None,
            note: Some(why.to_string()),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Room histories by room id, each sorted by seq as read.
pub type Histories = BTreeMap<String, Vec<StoredMessage>>;

/// Runs every chat invariant.
pub fn check_chat(histories: &Histories, clients: &[ClientLog]) -> Vec<InvariantResult> {
    vec![
        no_acked_message_lost(histories, clients),
        no_duplicates(histories),
        per_sender_order(histories, clients),
        one_linear_history(histories, clients),
        delivery_exactly_once(clients),
    ]
}

/// Where each `(user, id)` is stored in one room: the seqs it appears at.
fn stored_positions(history: &[StoredMessage]) -> HashMap<(&str, &str), Vec<u64>> {
    let mut positions: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for message in history {
        positions
            .entry((message.user.as_str(), message.id.as_str()))
            .or_default()
            .push(message.seq);
    }
    positions
}

pub fn no_acked_message_lost(histories: &Histories, clients: &[ClientLog]) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    let positions: HashMap<&str, HashMap<(&str, &str), Vec<u64>>> = histories
        .iter()
        .map(|(room, history)| (room.as_str(), stored_positions(history)))
        .collect();
    for client in clients {
        for post in &client.posts {
            let Some(ack) = &post.ack else { continue };
            checked += 1;
            let id = post.id();
            let found = positions
                .get(client.room.as_str())
                .and_then(|room| room.get(&(client.user.as_str(), id.as_str())));
            if found.is_none() {
                let detail = if histories.contains_key(&client.room) {
                    format!(
                        "acknowledged with seq {} at {} ms (via {}) but missing from the room's history",
                        ack.seq, ack.at_ms, ack.node
                    )
                } else {
                    format!(
                        "acknowledged with seq {} but the room's history could not be read",
                        ack.seq
                    )
                };
                findings.push(CounterExample::at(
                    &client.room,
                    Some(ack.seq),
                    Some(&client.user),
                    Some(&id),
                    detail,
                ));
            }
        }
    }
    InvariantResult::from_findings("no_acked_message_lost", checked, findings)
}

pub fn no_duplicates(histories: &Histories) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    for (room, history) in histories {
        checked += history.len() as u64;
        let mut seqs: HashMap<u64, &StoredMessage> = HashMap::new();
        for message in history {
            if let Some(first) = seqs.insert(message.seq, message) {
                let detail = format!(
                    "seq {} appears twice: {}/{} and {}/{}",
                    message.seq, first.user, first.id, message.user, message.id
                );
                findings.push(CounterExample::at(
                    room,
                    Some(message.seq),
                    Some(&message.user),
                    Some(&message.id),
                    detail,
                ));
            }
        }
        let positions = stored_positions(history);
        let mut duplicated: Vec<(&(&str, &str), &Vec<u64>)> = positions
            .iter()
            .filter(|(_, seqs)| seqs.len() > 1)
            .collect();
        duplicated.sort_by_key(|(_, seqs)| seqs[0]);
        for ((user, id), seqs) in duplicated {
            let detail = format!("{user}/{id} stored {} times, at seqs {seqs:?}", seqs.len());
            findings.push(CounterExample::at(
                room,
                Some(seqs[1]),
                Some(user),
                Some(id),
                detail,
            ));
        }
    }
    InvariantResult::from_findings("no_duplicates", checked, findings)
}

pub fn per_sender_order(histories: &Histories, clients: &[ClientLog]) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    // Stored order: a harness sender's ids are its counter, so they must rise with the seq.
    let harness_users: HashMap<(&str, &str), ()> = clients
        .iter()
        .map(|client| ((client.room.as_str(), client.user.as_str()), ()))
        .collect();
    for (room, history) in histories {
        let mut last_by_user: HashMap<&str, (u64, u64)> = HashMap::new();
        for message in history {
            if !harness_users.contains_key(&(room.as_str(), message.user.as_str())) {
                continue;
            }
            let Ok(index) = message.id.parse::<u64>() else {
                continue;
            };
            checked += 1;
            if let Some((last_index, last_seq)) = last_by_user.get(message.user.as_str())
                && index <= *last_index
            {
                let detail = format!(
                    "stored at seq {} after its message {last_index} (seq {last_seq}), which it sent later",
                    message.seq
                );
                findings.push(CounterExample::at(
                    room,
                    Some(message.seq),
                    Some(&message.user),
                    Some(&message.id),
                    detail,
                ));
            }
            last_by_user.insert(message.user.as_str(), (index, message.seq));
        }
    }
    // Acknowledged order: acks of a client's successive posts carry rising seqs.
    for client in clients {
        let mut last: Option<(u64, u64)> = None;
        for post in &client.posts {
            let Some(ack) = &post.ack else { continue };
            if let Some((last_index, last_seq)) = last
                && ack.seq <= last_seq
            {
                let detail = format!(
                    "acknowledged with seq {} after message {last_index} was acknowledged with seq {last_seq}",
                    ack.seq
                );
                findings.push(CounterExample::at(
                    &client.room,
                    Some(ack.seq),
                    Some(&client.user),
                    Some(&post.id()),
                    detail,
                ));
            }
            last = Some((post.index, ack.seq));
        }
    }
    InvariantResult::from_findings("per_sender_order", checked, findings)
}

pub fn one_linear_history(histories: &Histories, clients: &[ClientLog]) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    for (room, history) in histories {
        let mut seqs: Vec<u64> = history.iter().map(|message| message.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        for (position, seq) in seqs.iter().enumerate() {
            let expected = position as u64 + 1;
            if *seq != expected {
                let detail = format!(
                    "the history jumps to seq {seq} where {expected} was expected (head {})",
                    seqs.last().copied().unwrap_or(0)
                );
                findings.push(CounterExample::at(room, Some(expected), None, None, detail));
                break;
            }
        }
    }
    // Every observation of a seq (stored, acknowledged, delivered) must name the same message.
    let mut observed = Observations::default();
    for (room, history) in histories {
        for message in history {
            observed
                .first
                .entry((room.clone(), message.seq))
                .or_insert((
                    message.user.clone(),
                    message.id.clone(),
                    "stored".to_string(),
                ));
        }
    }
    for client in clients {
        for post in &client.posts {
            let Some(ack) = &post.ack else { continue };
            checked += 1;
            let source = format!("acknowledged to {} at {} ms", client.user, ack.at_ms);
            observed.record(
                &mut findings,
                &client.room,
                ack.seq,
                &client.user,
                &post.id(),
                source,
            );
        }
        for delivery in &client.deliveries {
            checked += 1;
            let source = format!("delivered to {} at {} ms", client.user, delivery.at_ms);
            observed.record(
                &mut findings,
                &client.room,
                delivery.seq,
                &delivery.user,
                &delivery.id,
                source,
            );
        }
    }
    InvariantResult::from_findings("one_linear_history", checked, findings)
}

/// The first message seen at each `(room, seq)`, and where it was seen.
#[derive(Default)]
struct Observations {
    first: BTreeMap<(String, u64), (String, String, String)>,
}

impl Observations {
    /// Adds one observation of `(room, seq) = user/id`; a different message seen before at the
    /// same seq is a violation.
    fn record(
        &mut self,
        findings: &mut Vec<CounterExample>,
        room: &str,
        seq: u64,
        user: &str,
        id: &str,
        source: String,
    ) {
        match self.first.get(&(room.to_string(), seq)) {
            Some((seen_user, seen_id, seen_source))
                if (seen_user.as_str(), seen_id.as_str()) != (user, id) =>
            {
                let detail = format!(
                    "seq {seq} is {user}/{id} ({source}) but {seen_user}/{seen_id} ({seen_source})"
                );
                findings.push(CounterExample::at(
                    room,
                    Some(seq),
                    Some(user),
                    Some(id),
                    detail,
                ));
            }
            Some(_) => {}
            None => {
                self.first.insert(
                    (room.to_string(), seq),
                    (user.to_string(), id.to_string(), source),
                );
            }
        }
    }
}

pub fn delivery_exactly_once(clients: &[ClientLog]) -> InvariantResult {
    let mut findings = Vec::new();
    let mut checked = 0;
    for client in clients {
        let mut last = client.first_head;
        for delivery in &client.deliveries {
            checked += 1;
            if let Some(last_seq) = last {
                if delivery.seq <= last_seq {
                    let detail = format!(
                        "delivered to {} at {} ms after seq {last_seq} had been delivered (duplicate or reorder)",
                        client.user, delivery.at_ms
                    );
                    findings.push(CounterExample::at(
                        &client.room,
                        Some(delivery.seq),
                        Some(&delivery.user),
                        Some(&delivery.id),
                        detail,
                    ));
                    continue;
                }
                let announced = client
                    .gap_notices
                    .iter()
                    .any(|(from, to)| *from <= last_seq + 1 && delivery.seq <= to + 1);
                if delivery.seq > last_seq + 1 && !announced {
                    let detail = format!(
                        "client {} got seq {} right after seq {last_seq}: seqs {}..={} never delivered",
                        client.user,
                        delivery.seq,
                        last_seq + 1,
                        delivery.seq - 1
                    );
                    findings.push(CounterExample::at(
                        &client.room,
                        Some(last_seq + 1),
                        Some(&client.user),
                        None,
                        detail,
                    ));
                }
            }
            last = Some(delivery.seq);
        }
    }
    InvariantResult::from_findings("delivery_exactly_once", checked, findings)
}

/// Every accepted job ends done or failed; a done job has exactly one output object.
pub fn check_jobs(jobs: &[JobRecord]) -> Vec<InvariantResult> {
    let mut unfinished = Vec::new();
    let mut outputs = Vec::new();
    let mut unverified = 0;
    for job in jobs {
        match job.final_state.as_deref() {
            Some("done") => {
                match job.outputs {
                    Some(1) => {}
                    Some(count) => outputs.push(CounterExample {
                        client_id: Some(job.job.clone()),
                        sender: Some(job.user.clone()),
                        ..CounterExample::new(format!(
                            "job {} is done with {count} output objects",
                            job.job
                        ))
                    }),
                    None => unverified += 1,
                }
                if job.downloaded == Some(false) {
                    outputs.push(CounterExample {
                        client_id: Some(job.job.clone()),
                        sender: Some(job.user.clone()),
                        ..CounterExample::new(format!(
                            "job {} is done but downloading it failed: {}",
                            job.job,
                            job.download_errors.join("; ")
                        ))
                    });
                }
            }
            Some("failed") => {}
            state => unfinished.push(CounterExample {
                client_id: Some(job.job.clone()),
                sender: Some(job.user.clone()),
                ..CounterExample::new(format!(
                    "job {} accepted at {} ms ended {state:?}, not done or failed",
                    job.job, job.accepted_ms
                ))
            }),
        }
    }
    let done = jobs
        .iter()
        .filter(|job| job.final_state.as_deref() == Some("done"))
        .count() as u64;
    let mut one_output = InvariantResult::from_findings("jobs_one_output", done, outputs);
    if unverified > 0 {
        one_output = one_output.with_note(format!(
            "{unverified} done jobs' outputs could not be counted in the object store"
        ));
    }
    vec![
        InvariantResult::from_findings("jobs_finish", jobs.len() as u64, unfinished),
        one_output,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AckRecord, Delivery, PostRecord};

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
}
