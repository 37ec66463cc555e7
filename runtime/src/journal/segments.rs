//! Entity segments and snapshots: where an entity's history lives once compacted out of the
//! node logs (and where the whole of a v1 journal lives).
//!
//! Layout under `journal/<kind>/<key>/`:
//! - `e/<first seq>`: a segment: the records of several commands, events `first..=last`; the
//!   next one is named `last + 1`.
//! - `s/<seq>`: a snapshot of the state after `seq`, at a segment boundary.
//!
//! Segments are written by compaction only (see `compaction`), create-only and idempotent: a
//! name that exists already must hold the same records (another owner compacted the same
//! history first, or a retry); anything else is a corrupt history and an error. Loading lists
//! the segments after the latest snapshot and reads them in parallel, so re-hosting an entity
//! costs a couple of round trips, not one per segment.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, RuntimeError};
use crate::id::{EntityId, MsgId};
use crate::journal::layout::{self, FORMAT_V1, FORMAT_V2, Record, RecordV1};
use crate::journal::objects::{Created, Objects};
use crate::metrics as names;

pub use crate::journal::layout::Record as JournalRecord;

/// Snapshots kept per entity; older ones are deleted after a new one is written.
const SNAPSHOTS_KEPT: usize = 2;
/// Most events compaction puts in one segment: a snapshot's successor is found among the
/// segments starting this close before it.
pub const SEGMENT_EVENTS_MAX: u64 = 512;
/// Segment reads in flight at once while loading one entity.
pub const LOAD_READS_IN_FLIGHT_MAX: usize = 16;
/// Segments read in one load before we give up on a journal that never ends (corruption guard).
const SEGMENTS_PER_LOAD_MAX: usize = 1_000_000;

/// A segment as stored (format 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    first_seq: u64,
    /// The log (node and incarnation) that compacted it, for forensics.
    writer: String,
    records: Vec<Record>,
}

/// A segment as format 1 stored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SegmentV1 {
    first_seq: u64,
    writer: String,
    records: Vec<RecordV1>,
}

/// A snapshot of an entity's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last sequence number included.
    pub seq: u64,
    pub state: Vec<u8>,
    /// Recent message ids and replies, so dedup survives the snapshot.
    pub recent_replies: Vec<(MsgId, Vec<u8>)>,
    /// The entity kind's schema version the state was encoded with.
    pub schema: u32,
}

/// A snapshot as format 1 stored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotV1 {
    seq: u64,
    state: Vec<u8>,
    recent_replies: Vec<(MsgId, Vec<u8>)>,
}

/// An entity's journal as read at activation.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<Snapshot>,
    /// Segments (and node-log appends not yet compacted) after the snapshot:
    /// `(first_seq, records)` in order, contiguous.
    pub segments: Vec<(u64, Vec<Record>)>,
    /// Last sequence number in the journal (0 when empty).
    pub head: u64,
}

impl Loaded {
    /// Adds records starting at `first_seq` that reach past the head (a segment, or appends
    /// from the node log); records at or below the head (already read: a snapshot or a
    /// segment covered them) are skipped. Records are whole commands, so the head always
    /// falls between two of them.
    pub fn extend(&mut self, first_seq: u64, records: Vec<Record>) -> Result<()> {
        let mut seq = first_seq;
        let mut rest = records.into_iter().peekable();
        while let Some(record) = rest.peek() {
            let events = record.events.len() as u64;
            if seq + events > self.head + 1 {
                break;
            }
            seq += events;
            rest.next();
        }
        let rest: Vec<Record> = rest.collect();
        if rest.is_empty() {
            return Ok(());
        }
        if seq != self.head + 1 {
            return Err(RuntimeError::Store(format!(
                "records from seq {seq} do not follow the head {}",
                self.head
            )));
        }
        self.head += rest
            .iter()
            .map(|record| record.events.len() as u64)
            .sum::<u64>();
        self.segments.push((seq, rest));
        Ok(())
    }
}

/// Handle to the segments and snapshots of all entities (cheap to clone).
#[derive(Clone)]
pub struct Journal {
    objects: Arc<dyn Objects>,
    writer: String,
    cache: Option<SegmentCache>,
}

/// Node-local copies of segments (immutable once written, so never stale), in sled.
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
    /// `writer` names this node's log in the segments it compacts.
    pub fn new(objects: Arc<dyn Objects>, writer: impl Into<String>) -> Self {
        Self {
            objects,
            writer: writer.into(),
            cache: None,
        }
    }

    /// Keeps read segments in `tree` (node-local), so rehydrating an entity again reads the
    /// shared store only for segments this node has not seen. The tree must belong to this
    /// store: see `node`, which empties it when the store's identity changes.
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

    pub fn objects(&self) -> &Arc<dyn Objects> {
        &self.objects
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Reads the latest snapshot and every segment after it: two listings, then the segments
    /// in parallel.
    pub async fn load(&self, entity: &EntityId) -> Result<Loaded> {
        let started = std::time::Instant::now();
        let snapshot = self.latest_snapshot(entity).await?;
        let snapshot_seq = snapshot.as_ref().map_or(0, |snapshot| snapshot.seq);
        // A snapshot may fall inside a segment (compaction merges appends, at most
        // SEGMENT_EVENTS_MAX events): list from the first name that could hold the next seq.
        let offset = (snapshot_seq >= SEGMENT_EVENTS_MAX)
            .then(|| segment_path(entity, snapshot_seq + 1 - SEGMENT_EVENTS_MAX));
        let mut starts = self.starts_listed(entity, offset.clone()).await?;
        if offset.is_some()
            && starts
                .first()
                .is_some_and(|first| *first > snapshot_seq + 1)
        {
            // A longer segment (one command's events alone): list them all.
            starts = self.starts_listed(entity, None).await?;
        }
        let read: Vec<(u64, Option<Vec<Record>>)> = futures_util::stream::iter(starts)
            .map(|start| async move {
                Ok::<_, RuntimeError>((start, self.read_records(entity, start).await?))
            })
            .buffered(LOAD_READS_IN_FLIGHT_MAX)
            .try_collect()
            .await?;
        let mut loaded = Loaded {
            snapshot,
            segments: Vec::with_capacity(read.len()),
            head: snapshot_seq,
        };
        for (start, records) in read {
            let Some(records) = records else {
                // Deleted by retention between the listing and the read: it was before a newer
                // snapshot, which a retry finds.
                return Err(RuntimeError::Unavailable(format!(
                    "{entity}: segment {start} vanished while loading; retry"
                )));
            };
            if records.iter().all(|record| record.events.is_empty()) {
                return Err(RuntimeError::Store(format!(
                    "{entity}: segment {start} holds no events; the journal is corrupt"
                )));
            }
            loaded.extend(start, records).map_err(|error| {
                RuntimeError::Store(format!("{entity}: segment {start}: {error}"))
            })?;
        }
        metrics::histogram!(names::JOURNAL_LOAD_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(loaded)
    }

    async fn starts_listed(&self, entity: &EntityId, offset: Option<String>) -> Result<Vec<u64>> {
        let names = self.objects.list(segments_prefix(entity), offset).await?;
        if names.len() > SEGMENTS_PER_LOAD_MAX {
            return Err(RuntimeError::Store(format!(
                "{entity}: more than {SEGMENTS_PER_LOAD_MAX} segments after its snapshot"
            )));
        }
        Ok(names
            .iter()
            .filter_map(|name| layout::number_of(name))
            .collect())
    }

    /// Writes `records` (events `first_seq..`) as this entity's segment(s), create-only and
    /// idempotent: where a segment of the same history exists already (another owner
    /// compacted it first), it is checked to hold the same records and skipped.
    pub async fn write_compacted(
        &self,
        entity: &EntityId,
        mut first_seq: u64,
        mut records: Vec<Record>,
    ) -> Result<()> {
        assert!(first_seq > 0, "sequence numbers start at 1");
        while !records.is_empty() {
            let bytes = layout::encode(&Segment {
                first_seq,
                writer: self.writer.clone(),
                records: records.clone(),
            });
            match self
                .objects
                .create(segment_path(entity, first_seq), bytes)
                .await?
            {
                Created::Yes => return Ok(()),
                Created::Exists => {}
            }
            let existing = self.read_records(entity, first_seq).await?.ok_or_else(|| {
                RuntimeError::Unavailable(format!(
                    "{entity}: segment {first_seq} exists and vanished; retry"
                ))
            })?;
            let same = existing.len().min(records.len());
            if existing[..same] != records[..same] {
                metrics::counter!(names::JOURNAL_CONFLICTS_TOTAL).increment(1);
                return Err(RuntimeError::JournalConflict {
                    entity: entity.to_string(),
                    seq: first_seq,
                });
            }
            let skipped: u64 = records[..same]
                .iter()
                .map(|record| record.events.len() as u64)
                .sum();
            records.drain(..same);
            first_seq += skipped;
        }
        Ok(())
    }

    /// Writes a snapshot, then deletes all but the newest [`SNAPSHOTS_KEPT`].
    pub async fn save_snapshot(&self, entity: &EntityId, snapshot: &Snapshot) -> Result<()> {
        let path = snapshot_path(entity, snapshot.seq);
        // Exists: another owner snapshotted the same point: same history, same state.
        self.objects.create(path, layout::encode(snapshot)).await?;
        let mut seqs = self.snapshot_seqs(entity).await?;
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        for old in seqs.into_iter().skip(SNAPSHOTS_KEPT) {
            if let Err(error) = self.objects.delete(snapshot_path(entity, old)).await {
                tracing::warn!(%entity, seq = old, %error, "could not delete an old snapshot");
            }
        }
        Ok(())
    }

    /// Deletes the segments that end at or before `seq` (retention; the snapshot after them
    /// stands in for them when loading).
    pub async fn delete_through(&self, entity: &EntityId, seq: u64) -> Result<usize> {
        let names = self.objects.list(segments_prefix(entity), None).await?;
        let starts: Vec<u64> = names
            .iter()
            .filter_map(|name| layout::number_of(name))
            .collect();
        let mut deleted = 0;
        // A segment ends where the next begins: delete those whose successor starts at or
        // before `seq + 1`.
        for pair in starts.windows(2) {
            if pair[1] <= seq + 1 {
                self.objects.delete(segment_path(entity, pair[0])).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The segments' first sequence numbers, in order (a listing: for history paging, not hot paths).
    pub async fn segment_starts(&self, entity: &EntityId) -> Result<Vec<u64>> {
        let names = self.objects.list(segments_prefix(entity), None).await?;
        Ok(names
            .iter()
            .filter_map(|name| layout::number_of(name))
            .collect())
    }

    /// The first sequence number of the segment that holds `seq`, or of the last segment
    /// before it when `seq` is past the head; `None` for an empty journal.
    ///
    /// A segment holds at most `span_max` events, so it starts at one of the `span_max`
    /// names at or below `seq`: those are probed first, newest first, and only if none
    /// exists is the journal listed.
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

    /// Whether a segment starts at `first_seq`.
    pub async fn segment_exists(&self, entity: &EntityId, first_seq: u64) -> Result<bool> {
        self.objects.exists(segment_path(entity, first_seq)).await
    }

    /// The records of the segment starting at `first_seq`, if it exists.
    pub async fn read_records(
        &self,
        entity: &EntityId,
        first_seq: u64,
    ) -> Result<Option<Vec<Record>>> {
        let path = segment_path(entity, first_seq);
        let Some(bytes) = self.get_segment_bytes(&path).await? else {
            return Ok(None);
        };
        let (start, records) = decode_segment(&bytes)?;
        if start != first_seq {
            return Err(RuntimeError::Store(format!(
                "{path} claims first seq {start}"
            )));
        }
        Ok(Some(records))
    }

    async fn latest_snapshot(&self, entity: &EntityId) -> Result<Option<Snapshot>> {
        let Some(seq) = self.snapshot_seqs(entity).await?.into_iter().max() else {
            return Ok(None);
        };
        match self.objects.get(snapshot_path(entity, seq)).await? {
            Some(bytes) => Ok(Some(decode_snapshot(&bytes)?)),
            // Pruned between list and get by a concurrent writer: fall back to a full replay.
            None => Ok(None),
        }
    }

    async fn snapshot_seqs(&self, entity: &EntityId) -> Result<Vec<u64>> {
        let names = self.objects.list(snapshots_prefix(entity), None).await?;
        Ok(names
            .iter()
            .filter_map(|name| layout::number_of(name))
            .collect())
    }

    async fn get_segment_bytes(&self, path: &str) -> Result<Option<Bytes>> {
        let Some(cache) = &self.cache else {
            return self.objects.get(path.to_string()).await;
        };
        if let Ok(Some(bytes)) = cache.tree.get(path) {
            return Ok(Some(Bytes::copy_from_slice(&bytes)));
        }
        let fetched = self.objects.get(path.to_string()).await?;
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
            if let Err(error) = cache.tree.insert(path, bytes.as_ref()) {
                tracing::debug!(%error, "could not cache a journal segment");
            }
        }
        Ok(fetched)
    }
}

/// A segment in either format: its first seq and records.
fn decode_segment(bytes: &[u8]) -> Result<(u64, Vec<Record>)> {
    match bytes.first() {
        Some(&FORMAT_V1) => {
            let segment: SegmentV1 = codec::decode_versioned(bytes, FORMAT_V1, "journal segment")?;
            Ok((
                segment.first_seq,
                segment.records.into_iter().map(Record::from).collect(),
            ))
        }
        _ => {
            let segment: Segment = layout::decode(bytes, "journal segment")?;
            Ok((segment.first_seq, segment.records))
        }
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot> {
    match bytes.first() {
        Some(&FORMAT_V1) => {
            let snapshot: SnapshotV1 = codec::decode_versioned(bytes, FORMAT_V1, "snapshot")?;
            Ok(Snapshot {
                seq: snapshot.seq,
                state: snapshot.state,
                recent_replies: snapshot.recent_replies,
                schema: 1,
            })
        }
        Some(&FORMAT_V2) | None | Some(_) => layout::decode(bytes, "snapshot"),
    }
}

/// `journal/<kind>/<key>`; keys outside `[A-Za-z0-9_-]` are hex-encoded so any key is a safe path.
fn entity_root(entity: &EntityId) -> String {
    format!("journal/{}/{}", entity.kind, path_safe_key(&entity.key))
}

/// Longest name part an entity key becomes: one path component of a local directory is at
/// most 255 bytes (`NAME_MAX`), and a longer one fails every write and listing of the entity.
const KEY_PART_BYTES_MAX: usize = 254;

/// The name part of an entity key, at most [`KEY_PART_BYTES_MAX`] bytes, whatever the key: the
/// key itself when it is plain (letters, digits, `_`, `-`, at most 128 bytes), else `x.` and
/// its hex (every key stored before long keys were hashed keeps its place), else, when that
/// would be too long, `h.` and the hex of its SHA-256. The three forms cannot collide: a plain
/// key has no `.`, and `x.` and `h.` differ.
fn path_safe_key(key: &str) -> String {
    use sha2::Digest;
    let plain = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if plain {
        return key.to_string();
    }
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|byte| format!("{byte:02x}")).collect() };
    if 2 + key.len() * 2 <= KEY_PART_BYTES_MAX {
        format!("x.{}", hex(key.as_bytes()))
    } else {
        format!("h.{}", hex(&sha2::Sha256::digest(key.as_bytes())))
    }
}

fn segments_prefix(entity: &EntityId) -> String {
    format!("{}/e", entity_root(entity))
}

fn snapshots_prefix(entity: &EntityId) -> String {
    format!("{}/s", entity_root(entity))
}

fn segment_path(entity: &EntityId, first_seq: u64) -> String {
    format!("{}/{first_seq:020}", segments_prefix(entity))
}

fn snapshot_path(entity: &EntityId, seq: u64) -> String {
    format!("{}/{seq:020}", snapshots_prefix(entity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::objects::StoreObjects;
    use crate::journal::storage::Durability;
    use object_store::memory::InMemory;

    fn journal() -> Journal {
        let objects = StoreObjects::new(Arc::new(InMemory::new()), Durability::on_put(), None);
        Journal::new(Arc::new(objects), "t")
    }

    fn record(id: u128, events: &[&str]) -> Record {
        Record {
            msg_id: Some(MsgId(id)),
            events: events
                .iter()
                .map(|event| event.as_bytes().to_vec())
                .collect(),
            reply: vec![],
            schema: 1,
        }
    }

    #[tokio::test]
    async fn the_segment_holding_a_seq_is_found_without_a_listing_when_it_can_be() {
        let journal = journal();
        let entity = EntityId::new("room", "long");
        assert_eq!(
            journal.segment_holding(&entity, 5, 4).await.expect("empty"),
            None
        );
        // Segments of 1, 3 and 6 events: 1, 2..=4, 5..=10.
        for (start, records) in [
            (1, vec![record(1, &["a"])]),
            (2, vec![record(2, &["b", "c"]), record(3, &["d"])]),
            (5, vec![record(4, &["e", "f", "g", "h", "i", "j"])]),
        ] {
            journal
                .write_compacted(&entity, start, records)
                .await
                .expect("write");
        }
        let expected = [(1, 1), (2, 2), (4, 2), (5, 5), (10, 5), (99, 5)];
        for span_max in [6, 2] {
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
        let loaded = journal.load(&entity).await.expect("load");
        assert_eq!(loaded.head, 10);
        assert_eq!(
            loaded
                .segments
                .iter()
                .map(|(first, _)| *first)
                .collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
    }

    #[tokio::test]
    async fn compaction_is_idempotent_and_refuses_a_different_history() {
        let journal = journal();
        let entity = EntityId::new("room", "a b/c");
        journal
            .write_compacted(&entity, 1, vec![record(1, &["x"]), record(2, &["y"])])
            .await
            .expect("first");
        // Another owner compacted a longer stretch of the same history: only the rest is new.
        journal
            .write_compacted(
                &entity,
                1,
                vec![record(1, &["x"]), record(2, &["y"]), record(3, &["z"])],
            )
            .await
            .expect("same history, longer");
        let loaded = journal.load(&entity).await.expect("load");
        assert_eq!(loaded.head, 3);
        assert_eq!(loaded.segments.len(), 2);
        let error = journal
            .write_compacted(&entity, 1, vec![record(9, &["other"])])
            .await
            .expect_err("a different history at seq 1");
        assert!(
            matches!(error, RuntimeError::JournalConflict { seq: 1, .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn snapshots_shorten_loading_and_retention_keeps_what_follows() {
        let journal = journal();
        let entity = EntityId::new("k", "v");
        for seq in 1..=4u64 {
            journal
                .write_compacted(&entity, seq, vec![record(seq.into(), &["e"])])
                .await
                .expect("write");
            let snapshot = Snapshot {
                seq,
                state: vec![seq as u8],
                recent_replies: vec![],
                schema: 1,
            };
            journal
                .save_snapshot(&entity, &snapshot)
                .await
                .expect("snapshot");
        }
        journal
            .write_compacted(&entity, 5, vec![record(5, &["e"])])
            .await
            .expect("write");
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
        assert_eq!(
            journal.delete_through(&entity, 3).await.expect("retention"),
            3
        );
        assert_eq!(
            journal.segment_starts(&entity).await.expect("list"),
            vec![4, 5]
        );
        assert_eq!(journal.load(&entity).await.expect("load").head, 5);
    }

    #[test]
    fn unusual_keys_become_safe_paths() {
        assert_eq!(path_safe_key("lobby"), "lobby");
        assert_eq!(path_safe_key("a/b"), "x.612f62");
        assert_eq!(path_safe_key(".."), "x.2e2e");
    }

    #[test]
    fn long_keys_become_bounded_names() {
        // The longest key kept in hex, as before; one byte more is hashed.
        let kept = "@".repeat(126);
        assert_eq!(path_safe_key(&kept), format!("x.{}", "40".repeat(126)));
        let email = format!("{}@example.com", "a".repeat(188));
        for key in [
            email.as_str(),
            &"/".repeat(128),
            &"é".repeat(5000),
            &"@".repeat(127),
        ] {
            let name = path_safe_key(key);
            assert!(name.starts_with("h.") && name.len() == 66, "{name}");
        }
        assert_ne!(
            path_safe_key(&"/".repeat(128)),
            path_safe_key(&"/".repeat(129))
        );
        let plain = "p".repeat(128);
        assert_eq!(path_safe_key(&plain), plain);
        // A plain key one byte too long is not kept as it is (hex would not fit: hashed).
        assert!(path_safe_key(&"p".repeat(129)).starts_with("h."));
    }

    #[test]
    fn format_one_segments_and_snapshots_decode() {
        let v1 = codec::encode_versioned(
            FORMAT_V1,
            &SegmentV1 {
                first_seq: 3,
                writer: "n1/1".into(),
                records: vec![RecordV1 {
                    msg_id: Some(MsgId(7)),
                    events: vec![b"e".to_vec()],
                    reply: b"r".to_vec(),
                }],
            },
        );
        let (start, records) = decode_segment(&v1).expect("v1 segment");
        assert_eq!(start, 3);
        assert_eq!(records[0].schema, 1);
        let snapshot = codec::encode_versioned(
            FORMAT_V1,
            &SnapshotV1 {
                seq: 3,
                state: vec![1],
                recent_replies: vec![],
            },
        );
        assert_eq!(decode_snapshot(&snapshot).expect("v1 snapshot").seq, 3);
    }
}
