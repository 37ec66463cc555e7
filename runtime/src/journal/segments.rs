//! The per-entity event journal on the object store, with create-only appends as fencing.
//!
//! Layout under `journal/<kind>/<key>/`:
//! - `e/<first seq, 20 digits>`: one segment, i.e. one group commit: the records of several
//!   commands, each with its events. A segment holding events `first..=last` is followed by
//!   the segment named `last + 1`, so the journal is a chain read by name, never by listing.
//! - `s/<seq, 20 digits>`: a snapshot of the state after `seq`, always at a segment boundary.
//!
//! **Invariant:** every append is a `PutMode::Create` of the next segment name. If two nodes both
//! believe they own an entity, only one create of a given name succeeds; the other gets
//! [`RuntimeError::JournalConflict`], must re-read, and either continues at the new head or
//! passivates. So the journal stays one linear history whatever placement believes. Segments
//! are never deleted (deleting one would let a stale writer re-create it); snapshots are, as
//! they only shorten replay.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, RuntimeError};
use crate::id::{EntityId, MsgId};
use crate::journal::storage::{CreateError, Durability, LocalWrites};
use crate::metrics as names;

/// Snapshots kept per entity; older ones are deleted after a new one is written.
const SNAPSHOTS_KEPT: usize = 2;

/// Segments read in one load before we give up on a journal that never ends (corruption guard).
const SEGMENTS_PER_LOAD_MAX: usize = 1_000_000;

/// What one command left in the journal: its message id (for dedup), its events and its reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub msg_id: Option<MsgId>,
    /// Encoded events, each one sequence number.
    pub events: Vec<Vec<u8>>,
    /// The encoded reply, so a retried ask gets the same answer.
    pub reply: Vec<u8>,
}

/// One journal object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    first_seq: u64,
    /// `node/incarnation` of the writer, for forensics.
    writer: String,
    records: Vec<Record>,
}

/// A snapshot of an entity's durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last sequence number included.
    pub seq: u64,
    pub state: Vec<u8>,
    /// Recent message ids and replies, so dedup survives the snapshot.
    pub recent_replies: Vec<(MsgId, Vec<u8>)>,
}

/// An entity's journal as read at activation.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<Snapshot>,
    /// Segments after the snapshot: `(first_seq, records)` in order.
    pub segments: Vec<(u64, Vec<Record>)>,
    /// Last sequence number in the journal (0 when empty).
    pub head: u64,
}

/// Handle to the journals of all entities (cheap to clone).
#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn ObjectStore>,
    durability: Durability,
    local: Option<LocalWrites>,
    writer: String,
    cache: Option<SegmentCache>,
}

/// Node-local copies of journal segments (immutable once written, so never stale), in sled.
#[derive(Clone)]
struct SegmentCache {
    tree: sled::Tree,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// Bytes of cached segments after which the cache is emptied and refilled.
pub const SEGMENT_CACHE_BYTES_MAX: u64 = 256 * 1024 * 1024;

impl std::fmt::Debug for Journal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Journal")
            .field("writer", &self.writer)
            .finish()
    }
}

impl Journal {
    /// `writer` names this node and incarnation in the segments it writes.
    pub fn new(store: Arc<dyn ObjectStore>, writer: impl Into<String>) -> Self {
        Self {
            store,
            durability: Durability::on_put(),
            local: None,
            writer: writer.into(),
            cache: None,
        }
    }

    /// Appends straight into this local directory (the store's own files) instead of through
    /// `object_store` (see [`LocalWrites`]).
    pub fn with_local_writes(mut self, local: Option<LocalWrites>) -> Self {
        self.local = local;
        self
    }

    /// Makes every append durable this way before it returns (see [`crate::journal::storage`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Keeps read segments in `tree` (node-local), so rehydrating an entity again reads the
    /// shared store only for segments this node has not seen. The tree must belong to this
    /// store: see [`crate::node`], which empties it when the store's identity changes.
    pub fn with_segment_cache(mut self, tree: sled::Tree) -> Self {
        let bytes = tree
            .iter()
            .values()
            .flatten()
            .map(|value| value.len() as u64)
            .sum();
        self.cache = Some(SegmentCache {
            tree,
            bytes: Arc::new(std::sync::atomic::AtomicU64::new(bytes)),
        });
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads the latest snapshot and every segment after it.
    pub async fn load(&self, entity: &EntityId) -> Result<Loaded> {
        let started = std::time::Instant::now();
        let snapshot = self.latest_snapshot(entity).await?;
        let mut head = snapshot.as_ref().map_or(0, |snapshot| snapshot.seq);
        let mut segments = Vec::new();
        while segments.len() < SEGMENTS_PER_LOAD_MAX {
            let Some(segment) = self.read_segment(entity, head + 1).await? else {
                break;
            };
            let events: usize = segment
                .records
                .iter()
                .map(|record| record.events.len())
                .sum();
            if events == 0 {
                return Err(RuntimeError::Store(format!(
                    "{entity}: segment {} holds no events; the journal is corrupt",
                    head + 1
                )));
            }
            head += events as u64;
            segments.push((segment.first_seq, segment.records));
        }
        metrics::histogram!(names::JOURNAL_LOAD_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Loaded {
            snapshot,
            segments,
            head,
        })
    }

    /// Appends `records` as the segment starting at `first_seq` (= head + 1).
    /// Fails with [`RuntimeError::JournalConflict`] when another writer got there first.
    pub async fn append(
        &self,
        entity: &EntityId,
        first_seq: u64,
        records: Vec<Record>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let bytes = self.segment(first_seq, records);
        let path = segment_path(entity, first_seq);
        let put = match &self.local {
            Some(local) => local.create(&path, &bytes),
            None => match self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(bytes),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(CreateError::Exists),
                Err(error) => Err(CreateError::Io(format!("append {path}: {error}"))),
            },
        };
        let result = match created(entity, first_seq, put) {
            // Durable before anyone hears of it: the caller acknowledges after this returns.
            Ok(()) => self
                .durability
                .sync()
                .await
                .map_err(|error| not_flushed(&path, error)),
            Err(error) => Err(error),
        };
        appended(started, result)
    }

    /// Whether [`Journal::append_in_place`] can be used (the store is a local directory).
    pub fn appends_in_place(&self) -> bool {
        self.local.is_some()
    }

    /// [`Journal::append`] without a task: writes the segment now, in the caller's thread,
    /// and returns the outcome when it is durable already (`fsync = false`); otherwise returns
    /// `None` and calls `flushed` with it from the flusher thread once the segment is on disk.
    /// Needs a local directory ([`Journal::appends_in_place`]).
    pub fn append_in_place(
        &self,
        entity: &EntityId,
        first_seq: u64,
        records: Vec<Record>,
        flushed: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Option<Result<()>> {
        let started = std::time::Instant::now();
        let path = segment_path(entity, first_seq);
        let Some(local) = &self.local else {
            return Some(Err(RuntimeError::Store(format!(
                "append {path}: the store is not a local directory"
            ))));
        };
        let bytes = self.segment(first_seq, records);
        let put = local.create(&path, &bytes);
        if let Err(error) = created(entity, first_seq, put) {
            return Some(appended(started, Err(error)));
        }
        if !self.durability.flushes() {
            return Some(appended(started, Ok(())));
        }
        self.durability.then_synced(move |result| {
            flushed(appended(
                started,
                result.map_err(|error| not_flushed(&path, error)),
            ))
        });
        None
    }

    fn segment(&self, first_seq: u64, records: Vec<Record>) -> Vec<u8> {
        assert!(first_seq > 0, "sequence numbers start at 1");
        assert!(
            records.iter().all(|record| !record.events.is_empty()),
            "records without events are not journaled"
        );
        codec::encode(&Segment {
            first_seq,
            writer: self.writer.clone(),
            records,
        })
    }

    /// Writes a snapshot, then deletes all but the newest [`SNAPSHOTS_KEPT`].
    pub async fn save_snapshot(&self, entity: &EntityId, snapshot: &Snapshot) -> Result<()> {
        let path = snapshot_path(entity, snapshot.seq);
        let payload = PutPayload::from(codec::encode(snapshot));
        match self
            .store
            .put_opts(&path, payload, PutOptions::from(PutMode::Create))
            .await
        {
            // Another owner snapshotted the same point: same history, same state.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(error) => return Err(RuntimeError::Store(format!("snapshot {path}: {error}"))),
        }
        // On disk before the older snapshots go: a power loss must not leave only a torn one.
        self.durability.sync().await.map_err(|error| {
            RuntimeError::Store(format!(
                "snapshot {path} was written but not flushed: {error}"
            ))
        })?;
        let mut seqs = self.snapshot_seqs(entity).await?;
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        for old in seqs.into_iter().skip(SNAPSHOTS_KEPT) {
            match self.store.delete(&snapshot_path(entity, old)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(%entity, seq = old, %error, "could not delete an old snapshot")
                }
            }
        }
        Ok(())
    }

    /// The segments' first sequence numbers, in order (a listing: for history paging, not hot paths).
    pub async fn segment_starts(&self, entity: &EntityId) -> Result<Vec<u64>> {
        let prefix = entity_root(entity).join("e");
        let mut starts: Vec<u64> = self
            .store
            .list(Some(&prefix))
            .map_err(|error| RuntimeError::Store(format!("list {prefix}: {error}")))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .and_then(|name| name.parse::<u64>().ok()))
            })
            .try_collect()
            .await?;
        starts.sort_unstable();
        Ok(starts)
    }

    /// The first sequence number of the segment that holds `seq`, or of the last segment
    /// before it when `seq` is past the head; `None` for an empty journal.
    ///
    /// A segment holds at most `span_max` events (`entities.batch_events_max` when it was
    /// written), so it starts at one of the `span_max` names at or below `seq`: those are
    /// probed first, newest first, and only if none exists is the journal listed. The cost
    /// is bounded by the batch size, not by the journal's length.
    pub async fn segment_holding(
        &self,
        entity: &EntityId,
        seq: u64,
        span_max: u64,
    ) -> Result<Option<u64>> {
        let lowest = seq.saturating_sub(span_max.max(1) - 1).max(1);
        for start in (lowest..=seq.max(1)).rev() {
            if self.segment_exists(entity, start).await? {
                return Ok(Some(start));
            }
        }
        let starts = self.segment_starts(entity).await?;
        Ok(starts.into_iter().rev().find(|start| *start <= seq))
    }

    /// Whether a segment starts at `first_seq`: another writer appended past our head.
    pub async fn segment_exists(&self, entity: &EntityId, first_seq: u64) -> Result<bool> {
        let path = segment_path(entity, first_seq);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(RuntimeError::Store(format!("head {path}: {error}"))),
        }
    }

    /// The records of the segment starting at `first_seq`, if it exists.
    pub async fn read_records(
        &self,
        entity: &EntityId,
        first_seq: u64,
    ) -> Result<Option<Vec<Record>>> {
        Ok(self
            .read_segment(entity, first_seq)
            .await?
            .map(|segment| segment.records))
    }

    async fn read_segment(&self, entity: &EntityId, first_seq: u64) -> Result<Option<Segment>> {
        let path = segment_path(entity, first_seq);
        let Some(bytes) = self.get_segment_bytes(&path).await? else {
            return Ok(None);
        };
        let segment: Segment = codec::decode(&bytes, "journal segment")?;
        if segment.first_seq != first_seq {
            return Err(RuntimeError::Store(format!(
                "{path} claims first seq {}",
                segment.first_seq
            )));
        }
        Ok(Some(segment))
    }

    async fn latest_snapshot(&self, entity: &EntityId) -> Result<Option<Snapshot>> {
        let Some(seq) = self.snapshot_seqs(entity).await?.into_iter().max() else {
            return Ok(None);
        };
        let path = snapshot_path(entity, seq);
        match self.get(&path).await? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "snapshot")?)),
            // Pruned between list and get by a concurrent writer: fall back to a full replay.
            None => Ok(None),
        }
    }

    async fn snapshot_seqs(&self, entity: &EntityId) -> Result<Vec<u64>> {
        let prefix = entity_root(entity).join("s");
        self.store
            .list(Some(&prefix))
            .map_err(|error| RuntimeError::Store(format!("list {prefix}: {error}")))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .and_then(|name| name.parse::<u64>().ok()))
            })
            .try_collect()
            .await
    }

    async fn get_segment_bytes(&self, path: &Path) -> Result<Option<Bytes>> {
        let Some(cache) = &self.cache else {
            return self.get(path).await;
        };
        if let Ok(Some(bytes)) = cache.tree.get(path.as_ref()) {
            return Ok(Some(Bytes::copy_from_slice(&bytes)));
        }
        let fetched = self.get(path).await?;
        if let Some(bytes) = &fetched {
            let total = cache
                .bytes
                .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if total > SEGMENT_CACHE_BYTES_MAX {
                // Crude but bounded: start over rather than track recency.
                let _ = cache.tree.clear();
                cache
                    .bytes
                    .store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(error) = cache.tree.insert(path.as_ref(), bytes.as_ref()) {
                tracing::debug!(%error, "could not cache a journal segment");
            }
        }
        Ok(fetched)
    }

    async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|error| RuntimeError::Store(format!("read {path}: {error}"))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(RuntimeError::Store(format!("read {path}: {error}"))),
        }
    }
}

/// `journal/<kind>/<key>`; keys outside `[A-Za-z0-9_-]` are hex-encoded so any key is a safe path.
fn entity_root(entity: &EntityId) -> Path {
    Path::from_iter(["journal", entity.kind.as_str(), &path_safe_key(&entity.key)])
}

fn path_safe_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if plain {
        key.to_string()
    } else {
        let mut encoded = String::with_capacity(2 + key.len() * 2);
        encoded.push_str("x.");
        for byte in key.bytes() {
            encoded.push_str(&format!("{byte:02x}"));
        }
        encoded
    }
}

/// The outcome of a segment's create-only write.
fn created(
    entity: &EntityId,
    first_seq: u64,
    put: std::result::Result<(), CreateError>,
) -> Result<()> {
    match put {
        Ok(()) => Ok(()),
        Err(CreateError::Exists) => {
            metrics::counter!(names::JOURNAL_CONFLICTS_TOTAL).increment(1);
            Err(RuntimeError::JournalConflict {
                entity: entity.to_string(),
                seq: first_seq,
            })
        }
        Err(CreateError::Io(error)) => Err(RuntimeError::Store(error)),
    }
}

fn not_flushed(path: &Path, error: RuntimeError) -> RuntimeError {
    RuntimeError::Store(format!(
        "append {path} was written but not flushed: {error}"
    ))
}

/// Records an append's metrics and passes its outcome on.
fn appended(started: std::time::Instant, result: Result<()>) -> Result<()> {
    metrics::histogram!(names::JOURNAL_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        metrics::counter!(names::JOURNAL_APPENDS_TOTAL).increment(1);
    }
    result
}

fn segment_path(entity: &EntityId, first_seq: u64) -> Path {
    entity_root(entity)
        .join("e")
        .join(format!("{first_seq:020}"))
}

fn snapshot_path(entity: &EntityId, seq: u64) -> Path {
    entity_root(entity).join("s").join(format!("{seq:020}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn record(id: u128, events: &[&str]) -> Record {
        Record {
            msg_id: Some(MsgId(id)),
            events: events
                .iter()
                .map(|event| event.as_bytes().to_vec())
                .collect(),
            reply: vec![],
        }
    }

    #[tokio::test]
    async fn the_segment_holding_a_seq_is_found_without_a_listing_when_it_can_be() {
        let journal = Journal::new(Arc::new(InMemory::new()), "t");
        let entity = EntityId::new("room", "long");
        assert_eq!(
            journal.segment_holding(&entity, 5, 4).await.expect("empty"),
            None
        );
        // Segments of 1, 3 and 6 events: 1, 2..=4, 5..=10.
        journal
            .append(&entity, 1, vec![record(1, &["a"])])
            .await
            .expect("append");
        journal
            .append(&entity, 2, vec![record(2, &["b", "c"]), record(3, &["d"])])
            .await
            .expect("append");
        journal
            .append(&entity, 5, vec![record(4, &["e", "f", "g", "h", "i", "j"])])
            .await
            .expect("append");
        let expected = [
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 2),
            (5, 5),
            (7, 5),
            (10, 5),
            (11, 5),
            (99, 5),
        ];
        for span_max in [6, 2] {
            // With a span of 2 the 6-event segment is found by the listing.
            for (seq, start) in expected {
                assert_eq!(
                    journal
                        .segment_holding(&entity, seq, span_max)
                        .await
                        .expect("found"),
                    Some(start),
                    "seq {seq}, span {span_max}"
                );
            }
        }
    }

    #[tokio::test]
    async fn chain_of_segments_loads_in_order() {
        let journal = Journal::new(Arc::new(InMemory::new()), "t");
        let entity = EntityId::new("room", "lobby");
        journal
            .append(&entity, 1, vec![record(1, &["a", "b"]), record(2, &["c"])])
            .await
            .expect("append");
        journal
            .append(&entity, 4, vec![record(3, &["d"])])
            .await
            .expect("append");
        let loaded = journal.load(&entity).await.expect("load");
        assert_eq!(loaded.head, 4);
        assert_eq!(
            loaded
                .segments
                .iter()
                .map(|(first, _)| *first)
                .collect::<Vec<_>>(),
            vec![1, 4]
        );
    }

    #[tokio::test]
    async fn second_writer_at_same_seq_conflicts() {
        let journal = Journal::new(Arc::new(InMemory::new()), "t");
        let entity = EntityId::new("room", "a b/c");
        journal
            .append(&entity, 1, vec![record(1, &["x"])])
            .await
            .expect("first append");
        let error = journal
            .append(&entity, 1, vec![record(2, &["y"])])
            .await
            .expect_err("second must lose");
        assert!(
            matches!(error, RuntimeError::JournalConflict { seq: 1, .. }),
            "{error}"
        );
        let loaded = journal.load(&entity).await.expect("load");
        assert_eq!(loaded.head, 1);
        assert_eq!(loaded.segments[0].1[0].msg_id, Some(MsgId(1)));
    }

    #[tokio::test]
    async fn snapshot_shortens_replay_and_old_ones_are_pruned() {
        let journal = Journal::new(Arc::new(InMemory::new()), "t");
        let entity = EntityId::new("k", "v");
        for seq in 1..=4u64 {
            journal
                .append(&entity, seq, vec![record(seq.into(), &["e"])])
                .await
                .expect("append");
            let snapshot = Snapshot {
                seq,
                state: vec![seq as u8],
                recent_replies: vec![],
            };
            journal
                .save_snapshot(&entity, &snapshot)
                .await
                .expect("snapshot");
        }
        journal
            .append(&entity, 5, vec![record(5, &["e"])])
            .await
            .expect("append");
        let loaded = journal.load(&entity).await.expect("load");
        assert_eq!(
            loaded.snapshot.as_ref().map(|snapshot| snapshot.seq),
            Some(4)
        );
        assert_eq!(loaded.segments.len(), 1);
        assert_eq!(loaded.head, 5);
        assert_eq!(
            journal.snapshot_seqs(&entity).await.expect("list").len(),
            SNAPSHOTS_KEPT
        );
    }

    #[tokio::test]
    async fn cached_segments_are_served_without_the_store() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let directory = tempfile::tempdir().expect("tempdir");
        let tree = sled::open(directory.path())
            .expect("sled")
            .open_tree("segments")
            .expect("tree");
        let journal = Journal::new(store.clone(), "t").with_segment_cache(tree);
        let entity = EntityId::new("room", "cached");
        journal
            .append(&entity, 1, vec![record(1, &["a"])])
            .await
            .expect("append");
        assert_eq!(journal.load(&entity).await.expect("load").head, 1);
        // The segment is gone from the store, yet a reload finds it in the node-local cache.
        store
            .delete(&segment_path(&entity, 1))
            .await
            .expect("delete");
        assert_eq!(journal.load(&entity).await.expect("load").head, 1);
    }

    #[test]
    fn unusual_keys_become_safe_paths() {
        assert_eq!(path_safe_key("lobby"), "lobby");
        assert_eq!(path_safe_key("a/b"), "x.612f62");
        assert_eq!(path_safe_key(".."), "x.2e2e");
    }
}
