//! [`Runtime`]: the cheap, cloneable handle through which the application and the web layer
//! reach the cluster: entity refs, the membership view, the journal and object store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use object_store::ObjectStore;
use ractor::ActorRef;
use tokio::sync::{broadcast, watch};

use crate::cluster::membership::{MembershipEvent, View};
use crate::config::ClusterConfig;
use crate::entity::host::{HostMsg, host_group};
use crate::entity::shards::ShardMsg;
use crate::entity::{Entity, EntityRef};
use crate::error::{Result, RuntimeError};
use crate::id::{MsgId, MsgIdGenerator};
use crate::journal::local_store::LocalStore;
use crate::journal::{Journal, NodeJournal};
use crate::pubsub::{PubSub, Publication};

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    node_id: String,
    incarnation: u64,
    config: Arc<ClusterConfig>,
    view: watch::Receiver<View>,
    events: broadcast::Sender<MembershipEvent>,
    ids: MsgIdGenerator,
    journal: NodeJournal,
    store: Arc<dyn ObjectStore>,
    local_store: LocalStore,
    active_entities: Arc<AtomicUsize>,
    shards_name: String,
    pubsub: PubSub,
    deadlines: Arc<crate::entity::reply::Deadlines>,
    memory: Arc<crate::memory::MemoryBudget>,
    /// What this node's reminder shards share (the firing rate limit, the shard table).
    reminders: crate::reminder::node::NodeReminders,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Runtime")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

pub(crate) struct RuntimeParts {
    pub node_id: String,
    pub incarnation: u64,
    pub config: Arc<ClusterConfig>,
    pub view: watch::Receiver<View>,
    pub events: broadcast::Sender<MembershipEvent>,
    pub journal: NodeJournal,
    pub store: Arc<dyn ObjectStore>,
    pub local_store: LocalStore,
    pub active_entities: Arc<AtomicUsize>,
    pub memory: Arc<crate::memory::MemoryBudget>,
}

/// Registry name of the shards actor of `node` (names are process-global in ractor).
pub(crate) fn shards_name(node: &str) -> String {
    format!("actorhub.shards.{node}")
}

impl Runtime {
    pub(crate) fn new(parts: RuntimeParts) -> Self {
        let ids = MsgIdGenerator::new(&parts.node_id, parts.incarnation);
        let shards_name = shards_name(&parts.node_id);
        let reminders = crate::reminder::node::NodeReminders::new(&parts.config.reminders);
        Self {
            inner: Arc::new(RuntimeInner {
                node_id: parts.node_id,
                incarnation: parts.incarnation,
                config: parts.config,
                view: parts.view,
                events: parts.events,
                ids,
                journal: parts.journal,
                store: parts.store,
                local_store: parts.local_store,
                active_entities: parts.active_entities,
                shards_name,
                pubsub: PubSub::default(),
                deadlines: Arc::default(),
                memory: parts.memory,
                reminders,
            }),
        }
    }

    /// The deadlines of this node's reply callbacks (its sweeper starts on first use).
    pub(crate) fn deadlines(&self) -> &Arc<crate::entity::reply::Deadlines> {
        crate::entity::reply::Deadlines::start(&self.inner.deadlines);
        &self.inner.deadlines
    }

    /// A handle to the entity `(E::KIND, key)`, wherever it lives.
    pub fn entity<E: Entity>(&self, key: impl Into<String>) -> EntityRef<E> {
        EntityRef::new(self.clone(), key)
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The current membership view.
    pub fn view(&self) -> View {
        self.inner.view.borrow().clone()
    }

    /// Runs `read` on the current view without copying it (hot paths: one call per message).
    pub fn with_view<R>(&self, read: impl FnOnce(&View) -> R) -> R {
        read(&self.inner.view.borrow())
    }

    /// The owner of `(kind, key)` in the current view.
    pub fn owner_of(&self, kind: &str, key: &str) -> Option<String> {
        self.with_view(|view| view.owner(kind, key).map(str::to_string))
    }

    /// Whether this node owns `(kind, key)` in its current view.
    pub fn owns(&self, kind: &str, key: &str) -> bool {
        self.with_view(|view| view.owner(kind, key) == Some(self.node_id()))
    }

    /// A receiver that wakes on every view change.
    pub fn watch_view(&self) -> watch::Receiver<View> {
        self.inner.view.clone()
    }

    /// Membership transitions, as they happen.
    pub fn membership_events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// Entity segments and snapshots (history reads, snapshots, retention).
    pub fn journal(&self) -> &Journal {
        self.inner.journal.segments()
    }

    /// The node log and the partitions this node holds.
    pub fn node_journal(&self) -> &NodeJournal {
        &self.inner.journal
    }

    /// The shared object store (files of the application; the journal keeps its own objects).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    pub fn local_store(&self) -> &LocalStore {
        &self.inner.local_store
    }

    pub fn active_entities(&self) -> usize {
        self.inner.active_entities.load(Ordering::Relaxed)
    }

    /// The node's memory budget: ask it before taking on new work.
    pub fn memory(&self) -> &crate::memory::MemoryBudget {
        &self.inner.memory
    }

    /// What this node's reminder shards share.
    pub(crate) fn reminders(&self) -> &crate::reminder::node::NodeReminders {
        &self.inner.reminders
    }

    /// This node's pub/sub registry (subscribe here; publish with [`Runtime::publish`]).
    pub fn pubsub(&self) -> &PubSub {
        &self.inner.pubsub
    }

    /// Publishes on `topic` to the local subscribers of each of `nodes`: one message per remote
    /// node, however many subscribers it has. Nodes that are down or unreachable are skipped
    /// (at most once: subscribers recover what they missed from the journal).
    pub fn publish<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a str>,
        topic: &str,
        payload: Vec<u8>,
    ) {
        let span = tracing::debug_span!("pubsub.publish", otel.kind = "producer", topic);
        let _entered = span.enter();
        let publication = Arc::new(Publication::new(topic, payload));
        let bytes = publication.payload.len() + publication.topic.len();
        let fits = bytes <= self.config().cluster.message_bytes_max();
        // Remote nodes first: local delivery writes to sockets and should not delay them.
        let mut local = false;
        for node in nodes {
            if node == self.node_id() {
                local = true;
            } else if !fits {
                // Publishers split what they send (a room: by append and by size); this is
                // the backstop that keeps a link up. Subscribers there see a gap and recover.
                metrics::counter!(crate::metrics::MESSAGES_TOO_LARGE_TOTAL, "kind" => "publication").increment(1);
                tracing::warn!(
                    topic,
                    bytes,
                    node,
                    "not sending a publication larger than a cluster message"
                );
            } else if let Ok(host) = self.peer_host(node) {
                let _ = host.cast(HostMsg::Publish(crate::codec::Wire::new(
                    (*publication).clone(),
                )));
            }
        }
        if local {
            self.inner.pubsub.publish_local(&publication);
        }
    }

    /// Publishes on `topic` to every node that is up.
    pub fn publish_everywhere(&self, topic: &str, payload: Vec<u8>) {
        let view = self.view();
        self.publish(view.up_members(), topic, payload);
    }

    pub fn next_msg_id(&self) -> MsgId {
        self.inner.ids.next()
    }

    pub(crate) fn shards(&self) -> Result<ActorRef<ShardMsg>> {
        ractor::registry::where_is(self.inner.shards_name.clone())
            .map(ActorRef::from)
            .ok_or_else(|| RuntimeError::Unavailable("the entity directory is restarting".into()))
    }

    /// The host proxy of a peer, if its session is up.
    pub(crate) fn peer_host(&self, node: &str) -> Result<ActorRef<HostMsg>> {
        ractor::pg::get_members(&host_group(node))
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
            .map(ActorRef::from)
            .ok_or_else(|| RuntimeError::Unavailable(format!("no connection to {node}")))
    }
}
