//! What the reminder shards of one node share, kept in the `Runtime`: which shard serves which
//! entity, the node's firing rate limit, and each shard's counts for the node's gauges.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::bucket::TokenBucket;
use super::shard::ReminderShard;
use crate::cluster::placement::{self, PARTITIONS};
use crate::config::RemindersSection;
use crate::entity::Entity;
use crate::id::EntityId;

/// What one shard last reported of itself.
#[derive(Debug, Clone, Copy, Default)]
struct ShardCounts {
    partition: u32,
    registered: usize,
    backlog: usize,
}

pub struct NodeReminders {
    shards_per_partition: u32,
    /// The shard keys of each partition: `shard_keys[p][b]` is bucket `b` of partition `p`,
    /// a key that placement puts in `p` (computed once; the same on every node).
    shard_keys: Vec<Vec<String>>,
    /// Shared by the node's shards: every firing takes a token.
    bucket: Mutex<TokenBucket>,
    /// By shard key; read by the waker for the node's gauges (shards of partitions this node
    /// no longer holds are dropped there).
    counts: Mutex<HashMap<String, ShardCounts>>,
    /// Shards whose marker (`reminders/marked/<shard>`) this node knows exists: registered
    /// with by this node, or listed by the waker. Only these are woken: a shard nobody ever
    /// registered with costs nothing, not even its load.
    marked: Mutex<HashSet<String>>,
}

/// Where the markers of the shards that ever held a reminder live (one empty-ish object each,
/// created once, before the first registration with that shard; never deleted).
pub const MARKERS_PREFIX: &str = "reminders/marked";

/// The marker of `shard`.
pub fn marker_path(shard: &str) -> String {
    format!("{MARKERS_PREFIX}/{shard}")
}

impl NodeReminders {
    pub fn new(config: &RemindersSection) -> Self {
        let shard_keys = (0..PARTITIONS)
            .map(|partition| {
                (0..config.shards_per_partition)
                    .map(|bucket| shard_key(partition, bucket))
                    .collect()
            })
            .collect();
        Self {
            shards_per_partition: config.shards_per_partition,
            shard_keys,
            bucket: Mutex::new(TokenBucket::new(
                config.fires_per_second_max,
                Instant::now(),
            )),
            counts: Mutex::new(HashMap::new()),
            marked: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `shard`'s marker is known to exist.
    pub fn is_marked(&self, shard: &str) -> bool {
        lock(&self.marked).contains(shard)
    }

    /// `shard`'s marker exists (created by this node, or listed).
    pub fn mark(&self, shard: &str) {
        lock(&self.marked).insert(shard.to_string());
    }

    /// The marked shards of `partition`.
    pub fn marked_of_partition(&self, partition: u32) -> Vec<String> {
        let marked = lock(&self.marked);
        self.shards_of_partition(partition)
            .iter()
            .filter(|shard| marked.contains(shard.as_str()))
            .cloned()
            .collect()
    }

    /// The key of the shard that holds `entity`'s reminders: one of its partition's shards,
    /// by a stable hash of the entity.
    pub fn shard_of(&self, entity: &EntityId) -> &str {
        let partition = placement::partition_of(&entity.kind, &entity.key, PARTITIONS);
        let bucket = placement::weight("reminders", &entity.kind, &entity.key)
            % u64::from(self.shards_per_partition);
        &self.shard_keys[partition as usize][bucket as usize]
    }

    /// The shard keys of `partition`.
    pub fn shards_of_partition(&self, partition: u32) -> &[String] {
        &self.shard_keys[partition as usize]
    }

    /// Takes a firing token, or says how long until one is there.
    pub fn try_take_token(&self) -> Result<(), Duration> {
        lock(&self.bucket).try_take(Instant::now())
    }

    /// A shard's counts changed (`backlog` only when it counted it).
    pub fn report(&self, shard: &str, registered: usize, backlog: Option<usize>) {
        let partition = placement::partition_of(ReminderShard::KIND, shard, PARTITIONS);
        let mut counts = lock(&self.counts);
        let entry = counts.entry(shard.to_string()).or_default();
        entry.partition = partition;
        entry.registered = registered;
        if let Some(backlog) = backlog {
            entry.backlog = backlog;
        }
    }

    /// Reminders registered and due-but-not-fired in the shards of the partitions `held`
    /// (the others' counts are dropped: their shards went with their partitions).
    pub fn totals(&self, held: impl Fn(u32) -> bool) -> (usize, usize) {
        let mut counts = lock(&self.counts);
        counts.retain(|_, counts| held(counts.partition));
        counts
            .values()
            .fold((0, 0), |(registered, backlog), counts| {
                (registered + counts.registered, backlog + counts.backlog)
            })
    }
}

/// The first key `p{partition}.b{bucket}.{n}` that placement puts in `partition`.
fn shard_key(partition: u32, bucket: u32) -> String {
    (0u64..)
        .map(|n| format!("p{partition}.b{bucket}.{n}"))
        .find(|key| placement::partition_of(ReminderShard::KIND, key, PARTITIONS) == partition)
        .expect("some key hashes into every partition")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is counts and a bucket: still usable after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_key_lies_in_its_partition_and_every_entity_in_its_own_partition() {
        let reminders = NodeReminders::new(&RemindersSection::default());
        for partition in 0..PARTITIONS {
            let keys = reminders.shards_of_partition(partition);
            assert_eq!(keys.len(), 4);
            for key in keys {
                assert_eq!(
                    placement::partition_of(ReminderShard::KIND, key, PARTITIONS),
                    partition
                );
            }
        }
        let mut buckets_used = std::collections::HashSet::new();
        for index in 0..1_000 {
            let entity = EntityId::new("sys.register", format!("k{index}"));
            let shard = reminders.shard_of(&entity);
            assert_eq!(
                placement::partition_of(ReminderShard::KIND, shard, PARTITIONS),
                placement::partition_of(&entity.kind, &entity.key, PARTITIONS),
                "{entity}'s shard is in its partition"
            );
            buckets_used.insert(shard.to_string());
        }
        assert!(buckets_used.len() > 200, "entities spread over the shards");
    }
}
