//! Starting and stopping one node: the local store, the journal, the ractor_cluster
//! `NodeServer`, and the supervision tree of the runtime's actors.
//!
//! ```text
//! root (one-for-one)                     actorhub.root.<id>
//! └── core (one-for-all)                 actorhub.core.<id>
//!     ├── membership                     dials, heartbeats, view
//!     ├── heartbeat   [remotable]        receives peers' heartbeats
//!     ├── shards                         entity directory + entity supervisor
//!     │   └── entities (one per active entity, restarted alone)
//!     └── host        [remotable]        entity messages from peers
//! ```
//! The core is one-for-all because its members hold each other's refs: if one restarts, all
//! restart, and entities rehydrate from their journals. The application adds its own
//! subtrees (sessions) under root with [`Node::start_child`].

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::sync::{broadcast, watch};

use crate::cluster::membership::{
    EVENTS_BUFFERED_MAX, HeartbeatActor, MembershipActor, MembershipArgs, MembershipMsg,
    MembershipTimings, PeerAddress, View,
};
use crate::config::ClusterConfig;
use crate::entity::Entity;
use crate::entity::host::HostActor;
use crate::entity::shards::{Kinds, ShardsActor, ShardsArgs};
use crate::error::{Result, RuntimeError};
use crate::journal::local_store::LocalStore;
use crate::runtime::{Runtime, RuntimeParts, shards_name};
use crate::supervision::{
    ChildSpec, Restart, Strategy, SupervisorActor, SupervisorMsg, SupervisorSpec,
};

/// Builds a node: register the application's entity kinds, then [`NodeBuilder::start`].
pub struct NodeBuilder {
    config: Arc<ClusterConfig>,
    node_id: String,
    kinds: Kinds,
    /// A store to use instead of the one `[storage]` names (tests, benchmarks).
    store: Option<Arc<dyn object_store::ObjectStore>>,
}

/// A running node.
pub struct Node {
    runtime: Runtime,
    root: ActorRef<SupervisorMsg>,
    root_handle: tokio::task::JoinHandle<()>,
    node_server: ActorRef<NodeServerMessage>,
    /// The cluster port's accept loop and the memory watchdog; stopped with the node.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeBuilder {
    pub fn new(config: ClusterConfig, node_id: &str) -> Result<Self> {
        config.node(node_id)?;
        let mut kinds = Kinds::default();
        kinds.register::<crate::builtin::Register>(node_id.to_string());
        kinds.register::<crate::reminder::ReminderShard>(());
        Ok(Self {
            config: Arc::new(config),
            node_id: node_id.to_string(),
            kinds,
            store: None,
        })
    }

    /// Makes entities of kind `E` available on this node. Every node must register the same kinds.
    pub fn register<E: Entity>(mut self, deps: E::Deps) -> Self {
        self.kinds.register::<E>(deps);
        self
    }

    /// Uses `store` as the shared object store instead of the one `[storage]` names.
    pub fn with_object_store(mut self, store: Arc<dyn object_store::ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    pub async fn start(self) -> Result<Node> {
        let config = self.config;
        let me = config.node(&self.node_id)?.clone();
        let data_dir = config.node_data_dir(&me.id);
        std::fs::create_dir_all(&data_dir).map_err(|error| {
            RuntimeError::LocalStore(format!(
                "cannot create the data directory {}: {error}",
                data_dir.display()
            ))
        })?;
        let local_store = LocalStore::open(&data_dir.join("node.sled"))?;
        let incarnation = local_store.next_incarnation()?;
        let storage = match self.store {
            Some(store) => crate::journal::storage::Storage::from_store(store),
            None => crate::journal::storage::open(&config.storage)?,
        };
        let objects: Arc<dyn crate::journal::objects::Objects> =
            Arc::new(storage.journal_objects());
        crate::journal::objects::check_create_only(objects.as_ref(), &me.id).await?;
        check_partitions(objects.as_ref()).await?;
        let segment_cache = local_store
            .segment_cache(&crate::journal::storage::store_id(&storage.objects).await?)?;
        let log = crate::journal::node_log::log_name(&me.id, incarnation);
        let segments = crate::journal::Journal::new(Arc::clone(&objects), log.clone())
            .with_segment_cache(segment_cache);

        let listen_ip = me.listen_ip.unwrap_or(me.cluster_addr.ip());
        let cluster_listener = crate::cluster::port::bind(std::net::SocketAddr::new(
            listen_ip,
            me.cluster_addr.port(),
        ))
        .await?;
        // ractor_cluster's own listener gets an ephemeral loopback port nobody dials: peers
        // reach this node through `cluster_port`, which bounds what strangers can send.
        let server = NodeServer::new(
            0,
            config.cookie().to_string(),
            me.id.clone(),
            me.cluster_addr.ip().to_string(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(config.cluster.frame_bytes_max);
        let (node_server, _) =
            Actor::spawn(Some(format!("actorhub.nodeserver.{}", me.id)), server, ())
                .await
                .map_err(|error| spawn_error("the cluster listener", error))?;
        let tls = match &config.cluster.tls {
            Some(section) => Some(crate::cluster::tls::ClusterTls::load(&section.dir, &me.id)?),
            None => {
                tracing::warn!(
                    "cluster traffic is plaintext: set [cluster.tls] (see `node certs`) for mutual TLS between nodes"
                );
                None
            }
        };
        let security = crate::cluster::port::Security {
            tls,
            identities: crate::cluster::tls::Identities::default(),
            handshake_timeout: Duration::from_millis(config.cluster.handshake_timeout_ms),
        };
        let (cluster_port, dialer) = crate::cluster::port::serve(
            cluster_listener,
            crate::cluster::port::PortLimits::from_config(&config.cluster),
            node_server.clone(),
            security.clone(),
        )?;

        let peers: Vec<PeerAddress> = config
            .nodes
            .iter()
            .filter(|node| node.id != me.id)
            .map(|node| PeerAddress {
                id: node.id.clone(),
                cluster_addr: node.cluster_addr,
                http_addr: node.http_addr,
            })
            .collect();
        let initial = View {
            me: me.id.clone(),
            members: Vec::new(),
            epoch: 0,
            settled: false,
        };
        let (view_sender, view_receiver) = watch::channel(initial);
        let table_objects = Arc::clone(&objects);
        let journal = crate::journal::NodeJournal::start(
            &me.id,
            log,
            objects,
            segments,
            journal_settings(&config.journal),
            janitor_scope(me.id.clone(), view_receiver.clone()),
        );
        let partition_driver = drive_partitions(journal.clone(), view_receiver.clone());
        let (events, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let active_count = Arc::new(AtomicUsize::new(0));
        let memory = Arc::new(crate::memory::MemoryBudget::new(&config.limits));
        let runtime = Runtime::new(RuntimeParts {
            node_id: me.id.clone(),
            incarnation,
            config: config.clone(),
            view: view_receiver,
            events: events.clone(),
            journal,
            store: Arc::clone(&storage.objects),
            local_store,
            active_entities: active_count.clone(),
            memory: memory.clone(),
        });
        let reminder_waker = crate::reminder::waker::start(runtime.clone());
        let shedder = runtime.clone();
        let memory_watchdog = crate::memory::MemoryBudget::start_watchdog(&memory, move || {
            if let Ok(shards) = shedder.shards() {
                let _ = shards.cast(crate::entity::shards::ShardMsg::Shed);
            }
        });

        let timings = MembershipTimings {
            heartbeat_interval: Duration::from_millis(config.cluster.heartbeat_interval_ms),
            failure_timeout: Duration::from_millis(config.cluster.failure_timeout_ms),
            handshake_timeout: Duration::from_millis(config.cluster.handshake_timeout_ms),
            backoff_min: Duration::from_millis(config.cluster.reconnect_backoff_min_ms),
            backoff_max: Duration::from_millis(config.cluster.reconnect_backoff_max_ms),
        };
        let core = CoreChildren {
            me: me.id.clone(),
            my_http_addr: me.http_addr,
            my_cluster_addr: me.cluster_addr,
            table: config
                .cluster
                .member_table
                .then(|| crate::cluster::membership::TableArgs {
                    objects: table_objects,
                    poll_interval: Duration::from_millis(config.cluster.member_table_poll_ms),
                    remove_after: Duration::from_millis(config.cluster.member_remove_after_ms),
                }),
            seeds: config.cluster.seeds.clone(),
            incarnation,
            peers,
            node_server: node_server.clone(),
            dialer,
            identities: security.tls.is_some().then(|| security.identities.clone()),
            timings,
            view: view_sender,
            events,
            runtime: runtime.clone(),
            kinds: self.kinds,
            active_count,
        };
        let core_spec = SupervisorSpec {
            strategy: Strategy::OneForAll,
            max_restarts: 3,
            period: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            children: core.specs(),
        };
        let core_name = format!("actorhub.core.{}", me.id);
        let root_spec = SupervisorSpec {
            strategy: Strategy::OneForOne,
            max_restarts: 3,
            period: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            children: vec![ChildSpec::new(
                core_name.clone(),
                Restart::Permanent,
                move |supervisor: ActorCell| {
                    let spec = core_spec.clone();
                    let name = core_name.clone();
                    async move {
                        let (actor, _) =
                            Actor::spawn_linked(Some(name), SupervisorActor, spec, supervisor)
                                .await?;
                        Ok(actor.get_cell())
                    }
                },
            )],
        };
        let (root, root_handle) = Actor::spawn(
            Some(format!("actorhub.root.{}", me.id)),
            SupervisorActor,
            root_spec,
        )
        .await
        .map_err(|error| spawn_error("the supervision tree", error))?;
        tracing::info!(node = %me.id, incarnation, cluster_addr = %me.cluster_addr, "node started");
        Ok(Node {
            runtime,
            root,
            root_handle,
            node_server,
            background: vec![
                cluster_port,
                memory_watchdog,
                partition_driver,
                reminder_waker,
            ],
        })
    }
}

/// Everything the core's children need to (re)start; cloned into each child spec.
#[derive(Clone)]
struct CoreChildren {
    me: String,
    my_http_addr: std::net::SocketAddr,
    my_cluster_addr: std::net::SocketAddr,
    table: Option<crate::cluster::membership::TableArgs>,
    seeds: Vec<String>,
    incarnation: u64,
    peers: Vec<PeerAddress>,
    node_server: ActorRef<NodeServerMessage>,
    dialer: crate::cluster::port::Dialer,
    identities: Option<crate::cluster::tls::Identities>,
    timings: MembershipTimings,
    /// Shared by successive membership incarnations (all clones feed the same receivers).
    view: watch::Sender<View>,
    events: broadcast::Sender<crate::cluster::membership::MembershipEvent>,
    runtime: Runtime,
    kinds: Kinds,
    active_count: Arc<AtomicUsize>,
}

impl CoreChildren {
    fn specs(&self) -> Vec<ChildSpec> {
        let membership_name = format!("actorhub.membership.{}", self.me);
        let membership = {
            let core = self.clone();
            let name = membership_name.clone();
            ChildSpec::new(
                name.clone(),
                Restart::Permanent,
                move |supervisor: ActorCell| {
                    let core = core.clone();
                    let name = name.clone();
                    async move {
                        let args = MembershipArgs {
                            me: core.me.clone(),
                            my_http_addr: core.my_http_addr,
                            my_cluster_addr: core.my_cluster_addr,
                            table: core.table.clone(),
                            seeds: core.seeds.clone(),
                            incarnation: core.incarnation,
                            peers: core.peers.clone(),
                            node_server: core.node_server.clone(),
                            dialer: core.dialer.clone(),
                            identities: core.identities.clone(),
                            timings: core.timings.clone(),
                            view: core.view.clone(),
                            events: core.events.clone(),
                        };
                        let (actor, _) =
                            Actor::spawn_linked(Some(name), MembershipActor, args, supervisor)
                                .await?;
                        Ok(actor.get_cell())
                    }
                },
            )
        };
        let heartbeat = {
            let me = self.me.clone();
            ChildSpec::new(
                format!("actorhub.heartbeat.{me}"),
                Restart::Permanent,
                move |supervisor: ActorCell| {
                    let me = me.clone();
                    let membership_name = membership_name.clone();
                    async move {
                        let membership: ActorRef<MembershipMsg> =
                            ractor::registry::where_is(membership_name)
                                .map(ActorRef::from)
                                .ok_or(ractor::SpawnErr::StartupFailed(
                                    "membership is not running".into(),
                                ))?;
                        let name = format!("actorhub.heartbeat.{me}");
                        let (actor, _) = Actor::spawn_linked(
                            Some(name),
                            HeartbeatActor,
                            (me, membership),
                            supervisor,
                        )
                        .await?;
                        Ok(actor.get_cell())
                    }
                },
            )
        };
        let shards = {
            let core = self.clone();
            let name = shards_name(&self.me);
            ChildSpec::new(
                name.clone(),
                Restart::Permanent,
                move |supervisor: ActorCell| {
                    let args = ShardsArgs {
                        runtime: core.runtime.clone(),
                        kinds: core.kinds.clone(),
                        active_count: core.active_count.clone(),
                    };
                    let name = name.clone();
                    async move {
                        let (actor, _) =
                            Actor::spawn_linked(Some(name), ShardsActor, args, supervisor).await?;
                        Ok(actor.get_cell())
                    }
                },
            )
        };
        let host = {
            let runtime = self.runtime.clone();
            let name = format!("actorhub.host.{}", self.me);
            ChildSpec::new(
                name.clone(),
                Restart::Permanent,
                move |supervisor: ActorCell| {
                    let runtime = runtime.clone();
                    let name = name.clone();
                    async move {
                        let (actor, _) =
                            Actor::spawn_linked(Some(name), HostActor, runtime, supervisor).await?;
                        Ok(actor.get_cell())
                    }
                },
            )
        };
        vec![membership, heartbeat, shards, host]
    }
}

impl Node {
    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
    }

    /// Adds an application subtree (e.g. the sessions supervisor) under the root.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell> {
        let name = spec.name.clone();
        let result =
            ractor::call!(self.root, SupervisorMsg::StartChild, spec).map_err(|error| {
                RuntimeError::Spawn {
                    what: name.clone(),
                    reason: error.to_string(),
                }
            })?;
        result.map_err(|reason| RuntimeError::Spawn { what: name, reason })
    }

    /// True until the supervision tree gave up (restart intensity exceeded at the root).
    pub fn is_running(&self) -> bool {
        !self.root_handle.is_finished()
    }

    /// Resolves when the supervision tree has stopped on its own.
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_handle).await;
    }

    /// Graceful leave: tells the peers this node is leaving (its heartbeats say so), lets go of
    /// its partitions (its entities finish their appends and passivate), and waits until the
    /// peers have claimed every one of them, at most `deadline`. If they did not, the rest fail
    /// over as after a crash once the node stops; with no other member up there is nobody to
    /// wait for (the entities come back from the journal wherever they are next needed).
    pub async fn leave(&self, deadline: Duration) -> Leave {
        let until = tokio::time::Instant::now() + deadline;
        let me = self.runtime.node_id().to_string();
        if !self.runtime.view().up_members().any(|member| member != me) {
            return Leave::Alone;
        }
        let held: Vec<u32> = self
            .runtime
            .node_journal()
            .owned()
            .into_iter()
            .map(|(partition, _)| partition)
            .collect();
        let membership: Option<ActorRef<MembershipMsg>> =
            ractor::registry::where_is(format!("actorhub.membership.{}", self.runtime.node_id()))
                .map(ActorRef::from);
        let Some(membership) = membership else {
            return Leave::Deadline;
        };
        if membership.cast(MembershipMsg::Leave).is_err() {
            return Leave::Deadline;
        }
        let started = std::time::Instant::now();
        let handed_off = self
            .runtime
            .node_journal()
            .wait_taken_over(&held, until)
            .await;
        tracing::info!(
            partitions = held.len(),
            handed_off,
            ms = started.elapsed().as_millis() as u64,
            "left the cluster"
        );
        if handed_off {
            Leave::HandedOver
        } else {
            Leave::Deadline
        }
    }

    /// Graceful stop: entities finish their appends and passivate, then the cluster links close.
    pub async fn shutdown(self, deadline: Duration) {
        tracing::info!(node = %self.runtime.node_id(), "shutting down");
        let stopped = self
            .root
            .stop_and_wait(Some("shutdown".into()), Some(deadline))
            .await;
        if let Err(error) = stopped {
            tracing::warn!(%error, "supervision tree did not stop in time; killing it");
            self.root.kill();
        }
        for task in &self.background {
            task.abort();
        }
        // Entities have stopped: what they appended is flushed, then the writer stops.
        self.runtime.node_journal().stop();
        if let Err(error) = self.runtime.local_store().flush().await {
            tracing::warn!(%error, "could not flush the node-local store");
        }
        self.node_server.stop(Some("shutdown".into()));
    }
}

/// How a [`Node::leave`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// The peers claimed every partition this node held.
    HandedOver,
    /// No other member was up: nothing to hand over.
    Alone,
    /// The deadline passed first (or the node could not announce its leave): the rest fail
    /// over as after a crash.
    Deadline,
}

fn spawn_error(what: &str, error: ractor::SpawnErr) -> RuntimeError {
    RuntimeError::Spawn {
        what: what.to_string(),
        reason: error.to_string(),
    }
}

/// The journal's settings from `[journal]`.
fn journal_settings(section: &crate::config::JournalSection) -> crate::journal::JournalSettings {
    crate::journal::JournalSettings {
        partitions: crate::cluster::placement::PARTITIONS,
        flush_interval: Duration::from_millis(section.flush_interval_ms),
        flush_bytes_max: section.flush_bytes_max,
        fence_check_interval: Duration::from_millis(section.fence_check_interval_ms),
        compact_interval: Duration::from_millis(section.compact_interval_ms),
        compact_records_max: section.compact_records_max,
        ..crate::journal::JournalSettings::default()
    }
}

/// Proves (once per store) that every node uses the same number of partitions: a node with
/// another count would place and fence entities differently.
async fn check_partitions(objects: &dyn crate::journal::objects::Objects) -> Result<()> {
    let path = "meta/partitions".to_string();
    let count = crate::cluster::placement::PARTITIONS.to_string();
    objects
        .create(path.clone(), count.clone().into_bytes())
        .await?;
    let stored = objects.get(path).await?.unwrap_or_default();
    if stored.as_ref() != count.as_bytes() {
        return Err(RuntimeError::Config(format!(
            "this store was created with {} journal partitions, this build uses {count}; run the build that created it",
            String::from_utf8_lossy(&stored)
        )));
    }
    Ok(())
}

/// Which foreign logs this node's janitor cleans: those of node incarnations that are not up
/// in its view, each by one live node (rendezvous over the members that are up).
fn janitor_scope(
    me: String,
    view: watch::Receiver<View>,
) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |log: &str| {
        let view = view.borrow();
        let mut parts = log.split('.');
        let (Some(node), Some(incarnation)) = (parts.next(), parts.next()) else {
            return false;
        };
        let live = view.members.iter().any(|member| {
            member.id == node
                && member.state == crate::membership::MemberState::Up
                && member.incarnation.to_string() == incarnation
        });
        if live {
            return false;
        }
        crate::cluster::placement::owner("janitor", log, view.up_members()) == Some(me.as_str())
    }
}

/// Keeps the journal's partitions in line with the view: the node holds the partitions
/// placement gives it among the members that are up, once the view has settled (before,
/// it would take everything and hand it back at once). Re-applied every half second too,
/// which retries takeovers that failed. A node that sees at most half of the members up
/// holds off claiming back what another node fenced it off.
fn drive_partitions(
    journal: crate::journal::NodeJournal,
    mut view: watch::Receiver<View>,
) -> tokio::task::JoinHandle<()> {
    /// How often the desired partitions are re-applied without a view change.
    const REAPPLY_INTERVAL: Duration = Duration::from_millis(500);
    /// How long a node that sees a minority of the members up waits before it claims back a
    /// partition another node fenced it off (one fence each way per partition, not a fencing
    /// match for as long as a network partition lasts; a majority node claims back at once).
    const MINORITY_RECLAIM_HOLD_OFF: Duration = Duration::from_secs(10);
    tokio::spawn(async move {
        loop {
            let desired = {
                let view = view.borrow_and_update();
                // At most half of the members up: the others may be up and serving on the far
                // side of a network partition.
                let minority = view.up_members().count() * 2 <= view.members.len();
                view.settled.then(|| {
                    let desired = (0..crate::cluster::placement::PARTITIONS)
                        .filter(|partition| {
                            crate::cluster::placement::partition_owner(
                                *partition,
                                view.up_members(),
                            ) == Some(view.me.as_str())
                        })
                        .collect::<std::collections::BTreeSet<u32>>();
                    (desired, minority)
                })
            };
            match desired {
                Some((desired, true)) => {
                    journal.set_desired_holding_off(desired, MINORITY_RECLAIM_HOLD_OFF)
                }
                Some((desired, false)) => journal.set_desired(desired),
                None => {}
            }
            if tokio::time::timeout(REAPPLY_INTERVAL, view.changed())
                .await
                .is_ok_and(|changed| changed.is_err())
            {
                return;
            }
        }
    })
}
