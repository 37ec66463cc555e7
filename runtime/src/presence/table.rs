//! The merged presence a node knows: per topic, which keys are present and from which origin
//! nodes, and the bounded part of it that subscribers are shown.
//!
//! Pure data, no I/O: [`super::Presence`] feeds it the local sessions and the peers' deltas,
//! syncs and deaths, and sends the [`Diff`]s it returns.
//!
//! A key counts once per topic however many origins hold it (a user connected to two nodes
//! is one user). Each topic lists at most `listed_max` keys, the smallest in key order, and
//! counts all of them: `listed` holds the first `listed_max` keys and `unlisted` the rest, and
//! every listed key sorts before every unlisted one, so a join or a leave changes the listed
//! set by at most one key each way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One present key, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub key: String,
    /// What the first origin to announce the key said about it (a display name).
    pub meta: String,
}

/// A change of one topic's presence: keys that entered or left the listed set, and the
/// exact number of keys present after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub joins: Vec<Entry>,
    pub leaves: Vec<Entry>,
    pub count: usize,
}

/// origin node → the meta it announced, sorted by origin. Almost always one origin (a user on
/// one node): a vector costs one 48-byte slot where a `BTreeMap`'s first leaf took 544 bytes,
/// for every user present in every room (issue 17's memory per idle connection).
#[derive(Debug, Default)]
struct Origins(Vec<(String, String)>);

impl Origins {
    fn get(&self, origin: &str) -> Option<&String> {
        self.position(origin).ok().map(|at| &self.0[at].1)
    }

    fn insert(&mut self, origin: &str, meta: &str) {
        match self.position(origin) {
            Ok(at) => meta.clone_into(&mut self.0[at].1),
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, (origin.to_string(), meta.to_string()));
            }
        }
    }

    fn remove(&mut self, origin: &str) {
        if let Ok(at) = self.position(origin) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, origin: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(held, _)| held.as_str().cmp(origin))
    }
}

#[derive(Debug, Default)]
struct Key {
    origins: Origins,
    /// The meta shown: the first one announced, kept while the key stays present.
    shown: String,
}

#[derive(Debug, Default)]
struct Topic {
    keys: BTreeMap<String, Key>,
    /// The smallest keys, at most `listed_max`.
    listed: BTreeSet<String>,
    /// The other keys; non-empty only when `listed` is full.
    unlisted: BTreeSet<String>,
}

impl Topic {
    fn insert(&mut self, key: &str, listed_max: usize) {
        let largest_listed = self.listed.last().cloned();
        match largest_listed {
            _ if self.listed.len() < listed_max => {
                self.listed.insert(key.to_string());
            }
            Some(largest) if key < largest.as_str() => {
                self.listed.remove(&largest);
                self.unlisted.insert(largest);
                self.listed.insert(key.to_string());
            }
            _ => {
                self.unlisted.insert(key.to_string());
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if self.listed.remove(key) {
            if let Some(next) = self.unlisted.pop_first() {
                self.listed.insert(next);
            }
        } else {
            self.unlisted.remove(key);
        }
    }

    /// The listed keys with their shown meta.
    fn listed_entries(&self) -> BTreeMap<String, String> {
        self.listed
            .iter()
            .map(|key| {
                let meta = self
                    .keys
                    .get(key)
                    .map(|k| k.shown.clone())
                    .unwrap_or_default();
                (key.clone(), meta)
            })
            .collect()
    }
}

/// What a topic looked like before a batch of changes.
struct Before {
    listed: BTreeMap<String, String>,
    count: usize,
}

/// Every topic's presence on this node, from every origin.
#[derive(Debug)]
pub struct Table {
    listed_max: usize,
    topics: HashMap<String, Topic>,
    /// origin → the (topic, key) pairs it holds, to drop or replace an origin at once.
    by_origin: HashMap<String, HashSet<(String, String)>>,
}

/// What one origin holds: (topic, key, meta).
pub type Held = (String, String, String);

/// One change to apply: `origin` holds (`present`) or no longer holds `key` on `topic`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub topic: String,
    pub key: String,
    pub meta: String,
    pub present: bool,
}

impl Table {
    /// A table listing at most `listed_max` keys per topic (at least 1).
    pub fn new(listed_max: usize) -> Self {
        Self {
            listed_max: listed_max.max(1),
            topics: HashMap::new(),
            by_origin: HashMap::new(),
        }
    }

    /// Keys present on `topic`, exactly.
    pub fn count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |topic| topic.keys.len())
    }

    /// Topics with anyone present.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// The whole shown state of `topic`: its listed keys as joins, and the count.
    pub fn snapshot(&self, topic: &str) -> Diff {
        let Some(state) = self.topics.get(topic) else {
            return Diff::default();
        };
        Diff {
            joins: state
                .listed_entries()
                .into_iter()
                .map(|(key, meta)| Entry { key, meta })
                .collect(),
            leaves: Vec::new(),
            count: state.keys.len(),
        }
    }

    /// The (topic, key, meta) triples `origin` holds, in no particular order.
    pub fn held_by(&self, origin: &str) -> Vec<Held> {
        let Some(held) = self.by_origin.get(origin) else {
            return Vec::new();
        };
        held.iter()
            .filter_map(|(topic, key)| {
                let meta = self.topics.get(topic)?.keys.get(key)?.origins.get(origin)?;
                Some((topic.clone(), key.clone(), meta.clone()))
            })
            .collect()
    }

    /// Applies `changes` from `origin`; returns the diff of each topic whose shown state
    /// changed (joins and leaves of one batch that cancel out are not reported).
    pub fn apply(&mut self, origin: &str, changes: &[Change]) -> Vec<(String, Diff)> {
        let mut before = HashMap::new();
        for change in changes {
            self.remember(&mut before, &change.topic);
            if change.present {
                self.add(origin, &change.topic, &change.key, &change.meta);
            } else {
                self.remove(origin, &change.topic, &change.key);
            }
        }
        self.diffs(before)
    }

    /// Drops everything `origin` held (its node is down); returns the diffs.
    pub fn drop_origin(&mut self, origin: &str) -> Vec<(String, Diff)> {
        self.replace_origin(origin, Vec::new())
    }

    /// Makes `entries` (topic, key, meta) exactly what `origin` holds (a full sync from it);
    /// returns the diffs. A key held before and after is no change, whatever the order.
    pub fn replace_origin(&mut self, origin: &str, entries: Vec<Held>) -> Vec<(String, Diff)> {
        let wanted: HashSet<(String, String)> = entries
            .iter()
            .map(|(topic, key, _)| (topic.clone(), key.clone()))
            .collect();
        let gone: Vec<(String, String)> = self
            .by_origin
            .get(origin)
            .map(|held| held.difference(&wanted).cloned().collect())
            .unwrap_or_default();
        let mut before = HashMap::new();
        for (topic, key) in gone {
            self.remember(&mut before, &topic);
            self.remove(origin, &topic, &key);
        }
        for (topic, key, meta) in entries {
            self.remember(&mut before, &topic);
            self.add(origin, &topic, &key, &meta);
        }
        self.diffs(before)
    }

    fn remember(&self, before: &mut HashMap<String, Before>, topic: &str) {
        if before.contains_key(topic) {
            return;
        }
        let state = self.topics.get(topic);
        before.insert(
            topic.to_string(),
            Before {
                listed: state.map(Topic::listed_entries).unwrap_or_default(),
                count: state.map_or(0, |state| state.keys.len()),
            },
        );
    }

    fn diffs(&self, before: HashMap<String, Before>) -> Vec<(String, Diff)> {
        let mut diffs: Vec<(String, Diff)> = before
            .into_iter()
            .filter_map(|(topic, before)| {
                let state = self.topics.get(&topic);
                let after = state.map(Topic::listed_entries).unwrap_or_default();
                let count = state.map_or(0, |state| state.keys.len());
                let joins: Vec<Entry> = after
                    .iter()
                    .filter(|(key, _)| !before.listed.contains_key(*key))
                    .map(|(key, meta)| Entry {
                        key: key.clone(),
                        meta: meta.clone(),
                    })
                    .collect();
                let leaves: Vec<Entry> = before
                    .listed
                    .into_iter()
                    .filter(|(key, _)| !after.contains_key(key))
                    .map(|(key, meta)| Entry { key, meta })
                    .collect();
                let changed = !joins.is_empty() || !leaves.is_empty() || count != before.count;
                changed.then_some((
                    topic,
                    Diff {
                        joins,
                        leaves,
                        count,
                    },
                ))
            })
            .collect();
        diffs.sort_by(|a, b| a.0.cmp(&b.0));
        diffs
    }

    fn add(&mut self, origin: &str, topic: &str, key: &str, meta: &str) {
        let listed_max = self.listed_max;
        let state = self.topics.entry(topic.to_string()).or_default();
        let new_key = !state.keys.contains_key(key);
        let entry = state.keys.entry(key.to_string()).or_default();
        if new_key {
            entry.shown = meta.to_string();
        }
        entry.origins.insert(origin, meta);
        if new_key {
            state.insert(key, listed_max);
        }
        self.by_origin
            .entry(origin.to_string())
            .or_default()
            .insert((topic.to_string(), key.to_string()));
    }

    fn remove(&mut self, origin: &str, topic: &str, key: &str) {
        if let Some(held) = self.by_origin.get_mut(origin) {
            held.remove(&(topic.to_string(), key.to_string()));
            if held.is_empty() {
                self.by_origin.remove(origin);
            }
        }
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(entry) = state.keys.get_mut(key) else {
            return;
        };
        entry.origins.remove(origin);
        if entry.origins.is_empty() {
            state.keys.remove(key);
            state.remove(key);
        }
        if state.keys.is_empty() {
            self.topics.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(topic: &str, key: &str, present: bool) -> Change {
        Change {
            topic: topic.into(),
            key: key.into(),
            meta: key.to_uppercase(),
            present,
        }
    }

    fn keys(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|entry| entry.key.as_str()).collect()
    }

    #[test]
    fn a_key_held_by_several_origins_joins_once_and_leaves_with_the_last() {
        let mut table = Table::new(100);
        let diffs = table.apply("n1", &[change("r", "ada", true)]);
        assert_eq!(diffs.len(), 1);
        assert_eq!(keys(&diffs[0].1.joins), ["ada"]);
        assert_eq!(diffs[0].1.joins[0].meta, "ADA");
        assert_eq!(diffs[0].1.count, 1);
        assert!(
            table.apply("n2", &[change("r", "ada", true)]).is_empty(),
            "the same user from a second node is no change"
        );
        assert!(table.apply("n1", &[change("r", "ada", false)]).is_empty());
        assert_eq!(table.count("r"), 1);
        let diffs = table.apply("n2", &[change("r", "ada", false)]);
        assert_eq!(keys(&diffs[0].1.leaves), ["ada"]);
        assert_eq!(diffs[0].1.count, 0);
        assert_eq!(table.topics(), 0, "an empty topic is forgotten");
    }

    #[test]
    fn a_dead_origin_takes_only_its_own_keys_with_it_in_every_topic() {
        let mut table = Table::new(100);
        table.apply("n1", &[change("r", "ada", true), change("s", "ada", true)]);
        table.apply("n2", &[change("r", "bob", true), change("r", "ada", true)]);
        table.apply("n3", &[change("s", "cy", true), change("r", "cy", true)]);
        let diffs = table.drop_origin("n3");
        assert_eq!(diffs.len(), 2);
        for (topic, diff) in &diffs {
            assert_eq!(keys(&diff.leaves), ["cy"], "topic {topic}");
            assert!(diff.joins.is_empty());
        }
        assert_eq!(table.count("r"), 2);
        let diffs = table.drop_origin("n1");
        // ada is still on n2 in r; in s she was only on n1.
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].0, "s");
        assert_eq!(keys(&diffs[0].1.leaves), ["ada"]);
        assert!(
            table.drop_origin("n1").is_empty(),
            "dropping twice is no change"
        );
        assert!(table.held_by("n1").is_empty());
    }

    #[test]
    fn a_sync_replaces_an_origin_without_duplicates() {
        let mut table = Table::new(100);
        table.apply("n2", &[change("r", "ada", true), change("r", "bob", true)]);
        // After a partition: n2 now holds bob and cy.
        let diffs = table.replace_origin(
            "n2",
            vec![
                ("r".into(), "cy".into(), "CY".into()),
                ("r".into(), "bob".into(), "BOB".into()),
            ],
        );
        assert_eq!(diffs.len(), 1);
        assert_eq!(keys(&diffs[0].1.joins), ["cy"]);
        assert_eq!(keys(&diffs[0].1.leaves), ["ada"]);
        assert_eq!(diffs[0].1.count, 2);
        // The same sync again (a retried request): nothing changes.
        let again = table.replace_origin(
            "n2",
            vec![
                ("r".into(), "bob".into(), "BOB".into()),
                ("r".into(), "cy".into(), "CY".into()),
            ],
        );
        assert!(again.is_empty());
        let mut held = table.held_by("n2");
        held.sort();
        assert_eq!(
            held,
            vec![
                ("r".into(), "bob".into(), "BOB".into()),
                ("r".into(), "cy".into(), "CY".into())
            ]
        );
    }

    #[test]
    fn a_topic_lists_at_most_the_bound_and_counts_everyone() {
        let mut table = Table::new(3);
        for key in ["d", "b", "f", "a"] {
            table.apply("n1", &[change("r", key, true)]);
        }
        let snapshot = table.snapshot("r");
        assert_eq!(keys(&snapshot.joins), ["a", "b", "d"]);
        assert_eq!(snapshot.count, 4);

        // A key beyond the listed ones: only the count changes.
        let diffs = table.apply("n2", &[change("r", "z", true)]);
        assert!(diffs[0].1.joins.is_empty() && diffs[0].1.leaves.is_empty());
        assert_eq!(diffs[0].1.count, 5);
        // A smaller key pushes the largest listed one out of the list.
        let diffs = table.apply("n2", &[change("r", "c", true)]);
        assert_eq!(keys(&diffs[0].1.joins), ["c"]);
        assert_eq!(keys(&diffs[0].1.leaves), ["d"]);
        assert_eq!(diffs[0].1.count, 6);
        // A listed key leaving lets the next one in.
        let diffs = table.apply("n1", &[change("r", "a", false)]);
        assert_eq!(keys(&diffs[0].1.leaves), ["a"]);
        assert_eq!(keys(&diffs[0].1.joins), ["d"]);
        assert_eq!(diffs[0].1.count, 5);
        // A whole origin going brings in as many as it takes out, and the count stays exact.
        let diffs = table.drop_origin("n2");
        assert_eq!(keys(&diffs[0].1.leaves), ["c"]);
        assert_eq!(keys(&diffs[0].1.joins), ["f"]);
        assert_eq!(diffs[0].1.count, 3);
        assert_eq!(keys(&table.snapshot("r").joins), ["b", "d", "f"]);
    }

    #[test]
    fn a_large_topic_keeps_its_list_and_count_true_under_churn() {
        let mut table = Table::new(10);
        let mut shown: BTreeSet<String> = BTreeSet::new();
        let mut count = 0;
        // A fixed pseudo-random walk of joins and leaves over 200 keys from three origins.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut held: HashSet<(usize, u64)> = HashSet::new();
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let origin = (state % 3) as usize;
            let key = (state >> 8) % 200;
            let present_now = held.insert((origin, key));
            if !present_now {
                held.remove(&(origin, key));
            }
            let diffs = table.apply(
                &format!("n{origin}"),
                &[Change {
                    topic: "r".into(),
                    key: format!("{key:03}"),
                    meta: String::new(),
                    present: present_now,
                }],
            );
            for (_, diff) in diffs {
                for entry in diff.leaves {
                    assert!(shown.remove(&entry.key), "a leave of an unlisted key");
                }
                for entry in diff.joins {
                    assert!(shown.insert(entry.key), "a duplicate join");
                }
                count = diff.count;
            }
            let present: BTreeSet<String> =
                held.iter().map(|(_, key)| format!("{key:03}")).collect();
            assert_eq!(count, present.len());
            let expected: BTreeSet<String> = present.iter().take(10).cloned().collect();
            assert_eq!(shown, expected);
        }
        assert!(!held.is_empty());
    }
}
