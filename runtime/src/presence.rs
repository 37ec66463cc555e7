//! Cluster presence: per topic (a room), which keys (users) are present, kept by the nodes
//! that hold the connections and healed from membership changes.
//!
//! Each node keeps its **local table**, what its own sessions track (a key is held while at
//! least one local tracker holds it), and sends every change of it to the other live nodes
//! as a delta on one pub/sub topic ([`TOPIC`]); deltas from one node reach another in the
//! order they were sent (one topic, one fan-out lane). Every node merges the tables of all
//! origins ([`table::Table`]) and tells its local subscribers of each change of a topic.
//! Nothing is journaled: presence lives exactly as long as the connections it describes.
//!
//! Healing, from the membership view alone:
//! - a node that goes down (killed: at once; frozen or partitioned: after
//!   `cluster.failure_timeout_ms`) has everything it held dropped by every node that sees it
//!   go, and its users' leaves are announced there and then;
//! - a node seen up (again, or as a new incarnation) is asked for its whole local table, which
//!   replaces what was held for it: a partition that heals converges without duplicates;
//! - deltas carry a version per origin incarnation; a gap (a delta lost with a link), or a
//!   beat every [`BEAT_INTERVAL`] naming a version other than the one held, asks for the whole
//!   table again. Messages from a node this node sees down, or from another incarnation than
//!   the view's, are ignored.
//!
//! **Architecture Invariant:** what a node shows for an origin is either nothing (the origin
//! is down in its view, or not yet synced) or that origin's local table as of some version,
//! advanced only by that origin's deltas in order; so a key is shown once, and a dead node's
//! keys go when the view says it died.

pub mod table;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::membership::{MemberState, View};
use crate::pubsub::{Publication, Subscription};
use crate::runtime::Runtime;

pub use self::table::{Change, Diff, Entry, Held};

/// The pub/sub topic presence travels on between nodes (one topic: one node's messages
/// reach another in order).
pub const TOPIC: &str = "sys.presence";
/// How often a node tells the others which version of its local table they should hold.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A sync asked of a node and not received is asked again after this.
pub const SYNC_RETRY: Duration = Duration::from_secs(2);

/// What presence needs from the application's config.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// Most keys a topic lists to subscribers; the count stays exact beyond it.
    pub listed_max: usize,
}

/// A change of one topic's presence, as local subscribers get it.
#[derive(Debug)]
pub struct PresenceUpdate {
    pub topic: String,
    /// Keys now listed (for a new subscriber: every listed key).
    pub joins: Vec<Entry>,
    /// Keys no longer listed.
    pub leaves: Vec<Entry>,
    /// Keys present, exactly, listed or not.
    pub count: usize,
    /// The update rendered once for every subscriber of this node (see [`Self::rendered`]).
    rendered: OnceLock<String>,
}

impl PresenceUpdate {
    pub fn new(topic: &str, diff: Diff) -> Self {
        Self {
            topic: topic.to_string(),
            joins: diff.joins,
            leaves: diff.leaves,
            count: diff.count,
            rendered: OnceLock::new(),
        }
    }

    /// The update as `render` makes it, computed once whatever the number of subscribers.
    pub fn rendered(&self, render: impl FnOnce(&Self) -> String) -> &str {
        self.rendered.get_or_init(|| render(self))
    }
}

/// Hands an update to one local subscriber; `false` drops the subscriber (its connection is
/// gone). Runs under the presence lock: it must be cheap and never block.
pub type Listener = Arc<dyn Fn(&Arc<PresenceUpdate>) -> bool + Send + Sync>;

/// What crosses the network between nodes, on [`TOPIC`].
#[derive(Debug, Clone, Serialize, Deserialize)]
enum PresenceMessage {
    /// Changes of the origin's local table, taking it from `version - 1` to `version`.
    Delta {
        origin: String,
        incarnation: u64,
        version: u64,
        changes: Vec<Change>,
    },
    /// One part of the origin's whole local table at `version`; the parts of one sync are sent
    /// together, `first` to `last`, and replace what the receiver held for the origin.
    Sync {
        origin: String,
        incarnation: u64,
        version: u64,
        first: bool,
        last: bool,
        entries: Vec<Held>,
    },
    /// The version of the origin's local table now.
    Beat {
        origin: String,
        incarnation: u64,
        version: u64,
    },
    /// `from` asks for a sync.
    Request { from: String },
}

/// A local key, with the trackers that hold it.
struct LocalKey {
    meta: String,
    trackers: usize,
}

/// What this node knows of one peer's table.
#[derive(Default)]
struct Peer {
    incarnation: u64,
    /// The version held; `None` until a sync arrived.
    version: Option<u64>,
    /// A sync being received: its incarnation, version and entries so far.
    staging: Option<(u64, u64, Vec<Held>)>,
    /// When a sync was last asked of it.
    requested_at: Option<Instant>,
}

struct State {
    table: table::Table,
    /// (topic, key) → this node's trackers of it.
    local: HashMap<(String, String), LocalKey>,
    /// The version of the local table: bumped by every delta.
    version: u64,
    /// topic → subscriber id → listener.
    listeners: HashMap<String, HashMap<u64, Listener>>,
    peers: HashMap<String, Peer>,
    /// The peers that were alive (up or leaving) at the last view, with their incarnation.
    alive: HashMap<String, u64>,
}

struct Inner {
    runtime: Runtime,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// The peers' messages, for as long as this presence lives.
    _subscription: OnceLock<Subscription>,
}

/// This node's presence (cheap to clone). Start one per node with [`Presence::start`].
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Presence")
    }
}

/// A key held on a topic by one tracker, with its listener; dropping it lets go of both.
pub struct Tracked {
    inner: Weak<Inner>,
    id: u64,
    topic: String,
    key: String,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Tracked({}:{})", self.topic, self.key)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.untrack(self.id, &self.topic, &self.key);
        }
    }
}

impl Presence {
    /// Starts this node's presence: subscribes to the peers' messages and starts the task that
    /// follows the membership view and beats. Needs a tokio runtime.
    pub fn start(runtime: Runtime, settings: PresenceSettings) -> Self {
        let inner = Arc::new(Inner {
            runtime: runtime.clone(),
            state: Mutex::new(State {
                table: table::Table::new(settings.listed_max),
                local: HashMap::new(),
                version: 0,
                listeners: HashMap::new(),
                peers: HashMap::new(),
                alive: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            _subscription: OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        let subscription = runtime.pubsub().subscribe(
            TOPIC,
            Arc::new(move |publication: &Arc<Publication>| match weak.upgrade() {
                Some(inner) => {
                    inner.received(&publication.payload);
                    true
                }
                None => false,
            }),
        );
        let _ = inner._subscription.set(subscription);
        tokio::spawn(follow_view(Arc::downgrade(&inner), runtime.watch_view()));
        Self { inner }
    }

    /// Holds `key` (with `meta`, e.g. a display name) on `topic` until the returned guard is
    /// dropped, and subscribes `listener` to the topic's changes: it gets the topic's whole
    /// state first (this key included), then every change.
    pub fn track(&self, topic: &str, key: &str, meta: &str, listener: Listener) -> Tracked {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.inner.lock();
        let local = state
            .local
            .entry((topic.to_string(), key.to_string()))
            .or_insert_with(|| LocalKey {
                meta: meta.to_string(),
                trackers: 0,
            });
        local.trackers += 1;
        if local.trackers == 1 {
            self.inner.change_local(
                &mut state,
                Change {
                    topic: topic.to_string(),
                    key: key.to_string(),
                    meta: meta.to_string(),
                    present: true,
                },
            );
        }
        let snapshot = Arc::new(PresenceUpdate::new(topic, state.table.snapshot(topic)));
        if listener(&snapshot) {
            state
                .listeners
                .entry(topic.to_string())
                .or_default()
                .insert(id, listener);
        }
        drop(state);
        Tracked {
            inner: Arc::downgrade(&self.inner),
            id,
            topic: topic.to_string(),
            key: key.to_string(),
        }
    }

    /// Keys present on `topic` now, exactly.
    pub fn count(&self, topic: &str) -> usize {
        self.inner.lock().table.count(topic)
    }

    /// The listed keys of `topic` now.
    pub fn listed(&self, topic: &str) -> Vec<Entry> {
        self.inner.lock().table.snapshot(topic).joins
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn untrack(&self, id: u64, topic: &str, key: &str) {
        let mut state = self.lock();
        if let Some(listeners) = state.listeners.get_mut(topic) {
            listeners.remove(&id);
            if listeners.is_empty() {
                state.listeners.remove(topic);
            }
        }
        let entry = (topic.to_string(), key.to_string());
        let Some(local) = state.local.get_mut(&entry) else {
            return;
        };
        local.trackers -= 1;
        if local.trackers > 0 {
            return;
        }
        let meta = local.meta.clone();
        state.local.remove(&entry);
        self.change_local(
            &mut state,
            Change {
                topic: entry.0,
                key: entry.1,
                meta,
                present: false,
            },
        );
    }

    /// Applies a change of the local table here and sends it to every live peer.
    fn change_local(&self, state: &mut State, change: Change) {
        state.version += 1;
        tracing::debug!(
            topic = change.topic,
            key = change.key,
            present = change.present,
            version = state.version,
            "presence: a local change"
        );
        let me = self.runtime.node_id();
        let diffs = state.table.apply(me, std::slice::from_ref(&change));
        let message = PresenceMessage::Delta {
            origin: me.to_string(),
            incarnation: self.runtime.incarnation(),
            version: state.version,
            changes: vec![change],
        };
        self.send(state.alive.keys().map(String::as_str), &message);
        notify(state, diffs);
    }

    fn send<'a>(&self, nodes: impl IntoIterator<Item = &'a str>, message: &PresenceMessage) {
        self.runtime
            .publish(nodes, TOPIC, crate::codec::encode(message));
    }

    /// A message from a peer.
    fn received(&self, payload: &[u8]) {
        let message = match crate::codec::decode::<PresenceMessage>(payload, "presence message") {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "dropped an undecodable presence message");
                return;
            }
        };
        let me = self.runtime.node_id();
        let origin = match &message {
            PresenceMessage::Delta { origin, .. }
            | PresenceMessage::Sync { origin, .. }
            | PresenceMessage::Beat { origin, .. } => origin,
            PresenceMessage::Request { from } => from,
        };
        if origin == me {
            return;
        }
        let mut guard = self.lock();
        let state: &mut State = &mut guard;
        // Only the view decides who is alive: a late message of a node seen down (or of its
        // previous incarnation) must not bring its keys back.
        let Some(&incarnation) = state.alive.get(origin) else {
            tracing::debug!(
                origin,
                "presence: ignored a message of a node not alive here"
            );
            return;
        };
        match message {
            PresenceMessage::Request { from } => {
                tracing::debug!(from, "presence: a sync asked");
                self.send_sync(state, &from);
            }
            PresenceMessage::Delta {
                origin,
                incarnation: sent_by,
                version,
                changes,
            } => {
                if !same_incarnation(incarnation, sent_by) {
                    return;
                }
                let peer = state.peers.entry(origin.clone()).or_default();
                if peer.incarnation == sent_by && peer.version == Some(version.wrapping_sub(1)) {
                    peer.version = Some(version);
                    let diffs = state.table.apply(&origin, &changes);
                    notify(state, diffs);
                } else {
                    tracing::debug!(
                        origin,
                        version,
                        held = ?peer.version,
                        "presence: a delta out of order; asking for a sync"
                    );
                    self.ask_sync(state, &origin, false);
                }
            }
            PresenceMessage::Sync {
                origin,
                incarnation: sent_by,
                version,
                first,
                last,
                entries,
            } => {
                if !same_incarnation(incarnation, sent_by) {
                    return;
                }
                let peer = state.peers.entry(origin.clone()).or_default();
                if first {
                    peer.staging = Some((sent_by, version, Vec::new()));
                }
                let Some((staged_by, staged_version, staged)) = &mut peer.staging else {
                    // A part without its first one (the first was lost): ask again.
                    return self.ask_sync(state, &origin, false);
                };
                if (*staged_by, *staged_version) != (sent_by, version) {
                    peer.staging = None;
                    return self.ask_sync(state, &origin, false);
                }
                staged.extend(entries);
                if !last {
                    return;
                }
                let (_, _, entries) = peer.staging.take().unwrap_or_default();
                peer.incarnation = sent_by;
                peer.version = Some(version);
                peer.requested_at = None;
                tracing::debug!(origin, version, entries = entries.len(), "presence: synced");
                let diffs = state.table.replace_origin(&origin, entries);
                notify(state, diffs);
            }
            PresenceMessage::Beat {
                origin,
                incarnation: sent_by,
                version,
            } => {
                if !same_incarnation(incarnation, sent_by) {
                    return;
                }
                let peer = state.peers.entry(origin.clone()).or_default();
                let current = peer.incarnation == sent_by && peer.version == Some(version);
                if !current && peer.staging.is_none() {
                    self.ask_sync(state, &origin, false);
                }
            }
        }
    }

    /// Asks `node` for its whole table, unless that was asked less than [`SYNC_RETRY`] ago
    /// (`now`: whatever was asked before).
    fn ask_sync(&self, state: &mut State, node: &str, now: bool) {
        let peer = state.peers.entry(node.to_string()).or_default();
        let recently = peer
            .requested_at
            .is_some_and(|at| at.elapsed() < SYNC_RETRY);
        if recently && !now {
            return;
        }
        peer.requested_at = Some(Instant::now());
        tracing::debug!(node, "presence: asking for a sync");
        let request = PresenceMessage::Request {
            from: self.runtime.node_id().to_string(),
        };
        self.send([node], &request);
    }

    /// Sends this node's whole local table to `node`, in parts that each fit a cluster
    /// message.
    fn send_sync(&self, state: &State, node: &str) {
        let bytes_max = self.runtime.config().cluster.message_bytes_max() / 2;
        let mut parts: Vec<Vec<Held>> = vec![Vec::new()];
        let mut bytes = 0;
        for ((topic, key), local) in &state.local {
            let size = topic.len() + key.len() + local.meta.len() + 16;
            if bytes + size > bytes_max && parts.last().is_some_and(|part| !part.is_empty()) {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(part) = parts.last_mut() {
                part.push((topic.clone(), key.clone(), local.meta.clone()));
            }
        }
        let count = parts.len();
        for (index, entries) in parts.into_iter().enumerate() {
            let part = PresenceMessage::Sync {
                origin: self.runtime.node_id().to_string(),
                incarnation: self.runtime.incarnation(),
                version: state.version,
                first: index == 0,
                last: index + 1 == count,
                entries,
            };
            self.send([node], &part);
        }
    }

    /// Follows a new view: drops the peers that went down (or came back as another
    /// incarnation) and asks the ones that came up for their tables.
    fn view_changed(&self, view: &View) {
        let me = self.runtime.node_id();
        let alive: HashMap<String, u64> = view
            .members
            .iter()
            .filter(|member| member.id != me && member.state != MemberState::Down)
            .map(|member| (member.id.clone(), member.incarnation))
            .collect();
        let mut state = self.lock();
        let gone: Vec<String> = state
            .alive
            .iter()
            .filter(|(node, incarnation)| {
                alive
                    .get(*node)
                    .is_none_or(|now| !same_incarnation(*now, **incarnation))
            })
            .map(|(node, _)| node.clone())
            .collect();
        let came: HashSet<String> = alive
            .iter()
            .filter(|(node, incarnation)| {
                state
                    .alive
                    .get(*node)
                    .is_none_or(|before| !same_incarnation(*before, **incarnation))
            })
            .map(|(node, _)| node.clone())
            .collect();
        // A known incarnation replaces an unknown one (0) without a drop.
        state.alive = alive;
        for node in gone {
            state.peers.remove(&node);
            let diffs = state.table.drop_origin(&node);
            if !diffs.is_empty() {
                tracing::info!(node = %node, topics = diffs.len(), "presence: dropped the keys of a node that went down");
            }
            notify(&mut state, diffs);
        }
        for node in came {
            // Both ways: ours may reach a node that does not see us yet (it then asks later,
            // when it does), and theirs is asked for.
            self.send_sync(&state, &node);
            self.ask_sync(&mut state, &node, true);
        }
    }

    /// Tells every live peer the version of this node's table.
    fn beat(&self) {
        let state = self.lock();
        if state.alive.is_empty() {
            return;
        }
        let beat = PresenceMessage::Beat {
            origin: self.runtime.node_id().to_string(),
            incarnation: self.runtime.incarnation(),
            version: state.version,
        };
        self.send(state.alive.keys().map(String::as_str), &beat);
    }
}

/// Whether two incarnations may be the same node life: equal, or one not heard yet (0).
fn same_incarnation(a: u64, b: u64) -> bool {
    a == b || a == 0 || b == 0
}

/// Hands each diff to the local listeners of its topic, dropping those that refuse.
fn notify(state: &mut State, diffs: Vec<(String, Diff)>) {
    for (topic, diff) in diffs {
        let Some(listeners) = state.listeners.get_mut(&topic) else {
            continue;
        };
        let update = Arc::new(PresenceUpdate::new(&topic, diff));
        listeners.retain(|_, listener| listener(&update));
        if listeners.is_empty() {
            state.listeners.remove(&topic);
        }
    }
}

/// The task of a node's presence: follows the view and beats, until the presence is dropped
/// or the view ends.
async fn follow_view(inner: Weak<Inner>, mut views: tokio::sync::watch::Receiver<View>) {
    let mut beats = tokio::time::interval(BEAT_INTERVAL);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view = Some(views.borrow_and_update().clone());
    loop {
        let Some(presence) = inner.upgrade() else {
            return;
        };
        match view.take() {
            Some(view) => presence.view_changed(&view),
            None => presence.beat(),
        }
        drop(presence);
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return;
                }
                view = Some(views.borrow_and_update().clone());
            }
            _ = beats.tick() => {}
        }
    }
}
