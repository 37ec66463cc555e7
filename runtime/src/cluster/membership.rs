//! Membership and failure detection: who is in the cluster, who is up, and since when.
//!
//! ractor_cluster gives sessions and a cookie handshake but no reconnect and no failure
//! detector (a frozen or partitioned peer is never noticed). [`MembershipActor`] adds both:
//! - it dials every configured peer and re-dials with capped, jittered exponential backoff
//!   forever; duplicate sessions are left to ractor_cluster's election;
//! - it sends a heartbeat to every connected peer each `heartbeat_interval_ms` through the
//!   peer's [`HeartbeatActor`] (one of the few remotable actors) and declares a peer down after
//!   `failure_timeout_ms` without hearing from it, closing its sessions so ractor_cluster
//!   drops the stale proxies; a closed connection (a killed process) is down at once;
//! - it closes connections whose handshake does not finish in `handshake_timeout_ms`
//!   (ractor_cluster has no such timeout, so garbage on the cluster port would linger);
//! - it publishes the [`View`] on a watch channel and each transition as a
//!   [`MembershipEvent`] on a broadcast channel, logs it and counts it.
//!
//! **Architecture Invariant:** only this actor writes the view; everything else reads it.
//!
//! The actor's types, state and dispatch are here; `heartbeat` is the remotable actor peers
//! beat through, `peers` the state's handlers (dials, sessions, heartbeats, transitions, the
//! table, leaving), `table_keeper` the task that keeps this node's membership table entry.

mod heartbeat;
mod peers;
mod table_keeper;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage, RactorMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::clock::unix_ms;

pub use self::heartbeat::{Heartbeat, HeartbeatActor, HeartbeatMsg, heartbeat_group};
use self::table_keeper::spawn_table_keeper;

/// Membership events kept for slow subscribers before they start missing some.
pub const EVENTS_BUFFERED_MAX: usize = 1024;

/// Up or down, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Down,
    /// Connected, but handing its entities off before it stops: placement leaves it out.
    Leaving,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Down => "down",
            MemberState::Leaving => "leaving",
        }
    }
}

/// One member in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: String,
    pub state: MemberState,
    /// Unix time (ms) of the last transition.
    pub since_ms: u64,
    /// The member's incarnation (restart counter) as last heard; 0 if never heard.
    pub incarnation: u64,
    pub http_addr: SocketAddr,
    /// The cluster protocol spoken with it: the lower of both sides' (this node's own for
    /// itself; this node's until a heartbeat says otherwise).
    pub protocol: u8,
}

/// What this node believes about the cluster. Placement is computed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub me: String,
    /// Every configured node, in config order, this node included.
    pub members: Vec<MemberStatus>,
    /// Bumped on every change.
    pub epoch: u64,
    /// True once every peer was seen up, or the join grace period passed: before that,
    /// placement would move entities needlessly, so `/readyz` waits for it.
    pub settled: bool,
}

impl View {
    /// Members that are up, this node included.
    pub fn up_members(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|member| member.state == MemberState::Up)
            .map(|member| member.id.as_str())
    }

    pub fn is_up(&self, id: &str) -> bool {
        self.members
            .iter()
            .any(|member| member.id == id && member.state == MemberState::Up)
    }

    /// The owner of `(kind, key)` in this view.
    pub fn owner(&self, kind: &str, key: &str) -> Option<&str> {
        crate::cluster::placement::owner(kind, key, self.up_members())
    }

    pub fn member(&self, id: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|member| member.id == id)
    }
}

/// A transition, as published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipEvent {
    pub member: String,
    pub state: MemberState,
    pub at_ms: u64,
    pub incarnation: u64,
    pub reason: String,
}

/// Timing knobs, from `[cluster]`.
#[derive(Debug, Clone)]
pub struct MembershipTimings {
    pub heartbeat_interval: Duration,
    pub failure_timeout: Duration,
    pub handshake_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// A configured peer.
#[derive(Debug, Clone)]
pub struct PeerAddress {
    pub id: String,
    pub cluster_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// The membership table, for [`MembershipArgs`].
#[derive(Clone)]
pub struct TableArgs {
    pub objects: std::sync::Arc<dyn crate::journal::objects::Objects>,
    /// How often the table is read (and this node's entry checked).
    pub poll_interval: Duration,
    /// A member down this long is dropped from the table (static `[[node]]` entries stay).
    pub remove_after: Duration,
}

pub struct MembershipArgs {
    pub me: String,
    pub my_http_addr: SocketAddr,
    pub my_cluster_addr: SocketAddr,
    /// The membership table in the shared store; `None` keeps the configured peers only.
    pub table: Option<TableArgs>,
    /// Addresses (`host:port`, a DNS name possibly resolving to several) dialed while no peer
    /// is up.
    pub seeds: Vec<String>,
    pub incarnation: u64,
    pub peers: Vec<PeerAddress>,
    pub node_server: ActorRef<NodeServerMessage>,
    /// Opens connections to peers (TLS when configured) the way the cluster port accepts them.
    pub dialer: crate::cluster::port::Dialer,
    /// With TLS: the peers' certificates, checked against the names they claim.
    pub identities: Option<crate::cluster::tls::Identities>,
    pub timings: MembershipTimings,
    pub view: watch::Sender<View>,
    pub events: broadcast::Sender<MembershipEvent>,
}

/// Local messages of the membership actor.
#[derive(RactorMessage)]
pub enum MembershipMsg {
    Tick,
    SessionOpened(NodeServerSessionInformation),
    SessionReady(NodeServerSessionInformation),
    SessionClosed(NodeServerSessionInformation),
    DialFinished {
        peer: String,
        result: Result<(), String>,
    },
    Heartbeat(Heartbeat),
    /// The latest membership table.
    Table(crate::cluster::table::MemberTable),
    /// Leave the cluster: tell the peers, stop taking entities.
    Leave,
    SeedsDialed,
}

/// Forwards ractor_cluster's session events into the membership actor (callbacks must be cheap).
struct SessionEventForwarder(ActorRef<MembershipMsg>);

impl NodeEventSubscription for SessionEventForwarder {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::SessionOpened(session));
    }
    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::SessionClosed(session));
    }
    fn node_session_authenticated(&self, _session: NodeServerSessionInformation) {}
    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::SessionReady(session));
    }
}

/// Per-peer bookkeeping. Only the membership actor touches it.
struct Peer {
    address: PeerAddress,
    /// From `[[node]]` (never dropped), or learned from the membership table.
    configured: bool,
    /// The highest protocol both sides speak (from its heartbeats).
    protocol: u8,
    state: MemberState,
    since_ms: u64,
    incarnation: u64,
    last_heard: Instant,
    /// Sessions that finished their handshake.
    sessions: HashMap<ActorId, ActorRef<NodeSessionMessage>>,
    dialing: bool,
    next_dial_at: Instant,
    backoff: Duration,
}

impl Peer {
    fn new(address: PeerAddress, configured: bool, now: Instant, backoff: Duration) -> Self {
        Self {
            address,
            configured,
            protocol: crate::codec::PROTOCOL,
            state: MemberState::Down,
            since_ms: unix_ms(),
            incarnation: 0,
            last_heard: now,
            sessions: HashMap::new(),
            dialing: false,
            next_dial_at: now,
            backoff,
        }
    }
}

pub struct MembershipState {
    me: String,
    my_http_addr: SocketAddr,
    my_cluster_addr: SocketAddr,
    incarnation: u64,
    peers: Vec<Peer>,
    /// The table was read at least once (before, this node might think itself alone).
    table_read: bool,
    seeds: Vec<String>,
    seeds_dialing: bool,
    next_seed_at: Instant,
    leaving: bool,
    /// Sessions opened (either direction) whose handshake has not finished yet.
    handshaking: HashMap<ActorId, (Instant, ActorRef<NodeSessionMessage>)>,
    node_server: ActorRef<NodeServerMessage>,
    dialer: crate::cluster::port::Dialer,
    identities: Option<crate::cluster::tls::Identities>,
    timings: MembershipTimings,
    view: watch::Sender<View>,
    events: broadcast::Sender<MembershipEvent>,
    started: Instant,
    started_ms: u64,
    last_tick: Instant,
    epoch: u64,
    settled: bool,
    ticker: Option<JoinHandle<()>>,
    table_task: Option<tokio::task::JoinHandle<()>>,
}

pub struct MembershipActor;

impl Actor for MembershipActor {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        args.node_server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "actorhub.membership".to_string(),
                subscription: Box::new(SessionEventForwarder(myself.clone())),
            })?;
        let now = Instant::now();
        let peers = args
            .peers
            .into_iter()
            .map(|address| Peer::new(address, true, now, args.timings.backoff_min))
            .collect();
        let ticker = myself.send_interval(args.timings.heartbeat_interval, || MembershipMsg::Tick);
        let table_task = args.table.clone().map(|table| {
            spawn_table_keeper(
                table,
                myself.clone(),
                args.view.subscribe(),
                crate::cluster::table::TableMember {
                    id: args.me.clone(),
                    cluster_addr: args.my_cluster_addr,
                    http_addr: args.my_http_addr,
                    incarnation: args.incarnation,
                    since_ms: unix_ms(),
                },
            )
        });
        let mut state = MembershipState {
            me: args.me,
            my_http_addr: args.my_http_addr,
            my_cluster_addr: args.my_cluster_addr,
            incarnation: args.incarnation,
            peers,
            table_read: args.table.is_none(),
            seeds: args.seeds,
            seeds_dialing: false,
            next_seed_at: now,
            leaving: false,
            handshaking: HashMap::new(),
            node_server: args.node_server,
            dialer: args.dialer,
            identities: args.identities,
            timings: args.timings,
            view: args.view,
            events: args.events,
            started: now,
            started_ms: unix_ms(),
            last_tick: now,
            epoch: 0,
            settled: false,
            ticker: Some(ticker),
            table_task,
        };
        state.settled = state.peers.is_empty() && state.table_read;
        state.publish();
        tracing::info!(node = %state.me, incarnation = state.incarnation, peers = state.peers.len(), "membership started");
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        if let Some(task) = state.table_task.take() {
            task.abort();
        }
        state
            .node_server
            .cast(NodeServerMessage::UnsubscribeToEvents(
                "actorhub.membership".to_string(),
            ))?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        message: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MembershipMsg::Tick => state.tick(&myself),
            MembershipMsg::SessionOpened(session) => {
                state
                    .handshaking
                    .insert(session.actor.get_id(), (Instant::now(), session.actor));
            }
            MembershipMsg::SessionReady(session) => state.session_ready(session),
            MembershipMsg::SessionClosed(session) => {
                let elected = match state.last_session_of(&session) {
                    Some(peer) => state.elected_session_of(&peer, &session).await,
                    None => false,
                };
                state.session_closed(session, elected);
            }
            MembershipMsg::DialFinished { peer, result } => state.dial_finished(&peer, result),
            MembershipMsg::Heartbeat(beat) => state.heartbeat(beat),
            MembershipMsg::Table(table) => state.table(table),
            MembershipMsg::Leave => state.leave(),
            MembershipMsg::SeedsDialed => state.seeds_dialing = false,
        }
        Ok(())
    }
}

/// Members the view lists as up, as a set (for quick lookups by callers).
pub fn up_set(view: &View) -> HashSet<String> {
    view.up_members().map(str::to_string).collect()
}
