//! The chat invariants, from the room histories as stored and the clients' logs: no
//! acknowledged message lost, no duplicates, per-sender order, one linear history, delivery
//! exactly once.

use std::collections::{BTreeMap, HashMap};

use super::{CounterExample, Histories, InvariantResult};
use crate::records::{ClientLog, StoredMessage};

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
