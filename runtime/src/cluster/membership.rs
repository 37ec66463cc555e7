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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    NodeEventSubscription, NodeServerMessage, NodeSessionMessage, RactorClusterMessage,
    RactorMessage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::clock::unix_ms;
use crate::codec::Wire;
use crate::metrics as names;

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

/// A heartbeat between membership actors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: String,
    pub incarnation: u64,
    pub pong: bool,
    /// The pinger's clock (µs since its start), echoed in the pong to measure RTT.
    pub sent_at_us: u64,
    /// The sender is leaving the cluster (graceful shutdown): take its entities over.
    pub leaving: bool,
    /// The highest cluster protocol the sender speaks (see `codec`).
    pub protocol: u8,
}

/// The remotable face of membership: receives heartbeats from peers.
#[derive(RactorClusterMessage)]
pub enum HeartbeatMsg {
    Beat(Wire<Heartbeat>),
}

/// pg group of a node's heartbeat actor.
pub fn heartbeat_group(node: &str) -> String {
    format!("actorhub.heartbeat.{node}")
}

/// Forwards heartbeats from the wire to the local membership actor.
pub struct HeartbeatActor;

impl Actor for HeartbeatActor {
    type Msg = HeartbeatMsg;
    type State = (String, ActorRef<MembershipMsg>);
    type Arguments = (String, ActorRef<MembershipMsg>);

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        (me, membership): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(heartbeat_group(&me), vec![myself.get_cell()]);
        Ok((me, membership))
    }

    async fn handle(
        &self,
        _myself: ActorRef<HeartbeatMsg>,
        message: HeartbeatMsg,
        (_, membership): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let HeartbeatMsg::Beat(wire) = message;
        match wire.into_inner() {
            Ok(beat) => membership.cast(MembershipMsg::Heartbeat(beat))?,
            Err(error) => {
                metrics::counter!(names::WIRE_DECODE_ERRORS_TOTAL, "message" => "heartbeat")
                    .increment(1);
                tracing::warn!(%error, "dropped an undecodable heartbeat from a peer");
            }
        }
        Ok(())
    }
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
            MembershipMsg::SessionClosed(session) => state.session_closed(session),
            MembershipMsg::DialFinished { peer, result } => state.dial_finished(&peer, result),
            MembershipMsg::Heartbeat(beat) => state.heartbeat(beat),
            MembershipMsg::Table(table) => state.table(table),
            MembershipMsg::Leave => state.leave(),
            MembershipMsg::SeedsDialed => state.seeds_dialing = false,
        }
        Ok(())
    }
}

impl MembershipState {
    fn tick(&mut self, myself: &ActorRef<MembershipMsg>) {
        let now = Instant::now();
        let since_last_tick = now.duration_since(self.last_tick);
        self.last_tick = now;
        if since_last_tick > self.timings.failure_timeout {
            // We were frozen (SIGSTOP, a long GC-like stall): our silence is not the peers' fault.
            // Give every peer a fresh deadline instead of declaring the whole cluster dead.
            tracing::warn!(
                stalled_ms = since_last_tick.as_millis() as u64,
                "this node was paused; resetting peer deadlines"
            );
            for peer in &mut self.peers {
                peer.last_heard = now;
            }
        }
        for index in 0..self.peers.len() {
            let silent_for = now.duration_since(self.peers[index].last_heard);
            if self.peers[index].state != MemberState::Down
                && silent_for > self.timings.failure_timeout
            {
                let reason = format!("no heartbeat for {} ms", silent_for.as_millis());
                self.mark_down(index, &reason);
                self.close_sessions(index, "heartbeat timeout");
            }
            if self.peers[index].sessions.is_empty() {
                self.maybe_dial(index, myself, now);
            } else {
                self.send_beat(index, false, self.micros_since_start());
            }
        }
        self.expire_handshakes(now);
        self.maybe_dial_seeds(myself, now);
        if !self.settled
            && self.table_read
            && now.duration_since(self.started) > 2 * self.timings.failure_timeout
        {
            self.settled = true;
            self.publish();
        }
    }

    fn maybe_dial(&mut self, index: usize, myself: &ActorRef<MembershipMsg>, now: Instant) {
        let peer = &mut self.peers[index];
        if peer.dialing || now < peer.next_dial_at {
            return;
        }
        peer.dialing = true;
        let server = self.node_server.clone();
        let address = peer.address.cluster_addr;
        let peer_id = peer.address.id.clone();
        let timeout = self.timings.handshake_timeout;
        let membership = myself.clone();
        let dialer = self.dialer.clone();
        tokio::spawn(async move {
            let result =
                match tokio::time::timeout(timeout, dialer.dial(&server, Some(&peer_id), address))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "connect timed out after {} ms",
                        timeout.as_millis()
                    )),
                };
            let _ = membership.cast(MembershipMsg::DialFinished {
                peer: peer_id,
                result,
            });
        });
    }

    fn dial_finished(&mut self, peer_id: &str, result: Result<(), String>) {
        let Some(peer) = self
            .peers
            .iter_mut()
            .find(|peer| peer.address.id == peer_id)
        else {
            return;
        };
        peer.dialing = false;
        let outcome = if result.is_ok() {
            "connected"
        } else {
            "failed"
        };
        metrics::counter!(names::DIALS_TOTAL, "peer" => peer_id.to_string(), "result" => outcome)
            .increment(1);
        if let Err(error) = &result {
            tracing::debug!(peer = peer_id, %error, backoff_ms = peer.backoff.as_millis() as u64, "dial failed");
        }
        // Whether or not TCP connected, wait a backoff before the next dial: a connected
        // session that never finishes its handshake is closed by `expire_handshakes`.
        let jitter = 0.5 + fastrand::f64() * 0.5;
        peer.next_dial_at = Instant::now() + peer.backoff.mul_f64(jitter);
        peer.backoff = (peer.backoff * 2).min(self.timings.backoff_max);
    }

    fn session_ready(&mut self, session: NodeServerSessionInformation) {
        let session_id = session.actor.get_id();
        self.handshaking.remove(&session_id);
        let Some(peer_id) = peer_id_of(&session) else {
            tracing::warn!(addr = %session.peer_addr, "closing a cluster session without a peer name");
            session.actor.stop(Some("no peer name".into()));
            return;
        };
        if let Some(identities) = &self.identities {
            // A peer is who its certificate says, never who it claims.
            let named = identities
                .take(&session.peer_addr)
                .is_some_and(|certificate| {
                    crate::cluster::tls::certificate_names(&certificate, &peer_id)
                });
            if !named {
                tracing::warn!(peer = %peer_id, addr = %session.peer_addr, "closing a cluster session: the peer claims a node id its certificate does not name");
                metrics::counter!(names::SESSIONS_CLOSED_TOTAL, "reason" => "certificate does not name the peer")
                    .increment(1);
                session
                    .actor
                    .stop(Some("certificate does not name the peer".into()));
                return;
            }
        }
        let Some(index) = self
            .peers
            .iter()
            .position(|peer| peer.address.id == peer_id)
        else {
            // Not configured and not (yet) in the membership table: refuse it rather than route
            // entities to a stranger; a joining node is in the table at its next dial.
            tracing::debug!(peer = %peer_id, addr = %session.peer_addr, "closing a session from a node that is neither in cluster.toml nor in the membership table (yet)");
            metrics::counter!(names::SESSIONS_CLOSED_TOTAL, "reason" => "unknown peer")
                .increment(1);
            session.actor.stop(Some("unknown node".into()));
            return;
        };
        self.peers[index].sessions.insert(session_id, session.actor);
        tracing::debug!(peer = %peer_id, "cluster session ready");
        // Say hello at once so the peer comes up without waiting for the next tick.
        self.send_beat(index, false, self.micros_since_start());
    }

    fn session_closed(&mut self, session: NodeServerSessionInformation) {
        let session_id = session.actor.get_id();
        self.handshaking.remove(&session_id);
        let Some(index) = self
            .peers
            .iter()
            .position(|peer| peer.sessions.contains_key(&session_id))
        else {
            return;
        };
        self.peers[index].sessions.remove(&session_id);
        if self.peers[index].sessions.is_empty() && self.peers[index].state != MemberState::Down {
            self.mark_down(index, "connection closed");
        }
    }

    fn heartbeat(&mut self, beat: Heartbeat) {
        let Some(index) = self
            .peers
            .iter()
            .position(|peer| peer.address.id == beat.from)
        else {
            tracing::debug!(from = %beat.from, "heartbeat from a node not in cluster.toml");
            return;
        };
        if self.peers[index].sessions.is_empty() {
            // Only a peer with a session this node accepted (and, with TLS, whose certificate
            // names it) counts as heard: a beat can race ahead of the session's checks.
            return;
        }
        let now = Instant::now();
        self.peers[index].last_heard = now;
        if beat.pong {
            let rtt_us = self.micros_since_start().saturating_sub(beat.sent_at_us);
            metrics::histogram!(names::HEARTBEAT_RTT_SECONDS).record(rtt_us as f64 / 1e6);
        } else {
            self.send_beat(index, true, beat.sent_at_us);
        }
        let protocol = beat.protocol.min(crate::codec::PROTOCOL);
        if self.peers[index].protocol != protocol {
            self.peers[index].protocol = protocol;
            self.publish();
        }
        if beat.leaving {
            if self.peers[index].state != MemberState::Leaving {
                self.transition(index, MemberState::Leaving, "it is leaving the cluster");
            }
            return;
        }
        let peer = &self.peers[index];
        if peer.state == MemberState::Up && peer.incarnation != beat.incarnation {
            // It restarted faster than we could notice: its old entities are gone, so tell
            // subscribers it went down before saying it is up again.
            self.mark_down(index, "restarted with a new incarnation");
        }
        if self.peers[index].state != MemberState::Up {
            self.peers[index].incarnation = beat.incarnation;
            self.peers[index].backoff = self.timings.backoff_min;
            self.mark_up(index);
        }
    }

    fn send_beat(&self, index: usize, pong: bool, sent_at_us: u64) {
        let peer = &self.peers[index];
        let group = heartbeat_group(&peer.address.id);
        let Some(target) = ractor::pg::get_members(&group)
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
        else {
            return;
        };
        let beat = Heartbeat {
            from: self.me.clone(),
            incarnation: self.incarnation,
            pong,
            sent_at_us,
            leaving: self.leaving,
            protocol: crate::codec::PROTOCOL,
        };
        let target: ActorRef<HeartbeatMsg> = target.into();
        if target.cast(HeartbeatMsg::Beat(Wire::new(beat))).is_ok() && !pong {
            metrics::counter!(names::HEARTBEATS_SENT_TOTAL).increment(1);
        }
    }

    fn close_sessions(&mut self, index: usize, reason: &str) {
        for (_, session) in self.peers[index].sessions.drain() {
            metrics::counter!(names::SESSIONS_CLOSED_TOTAL, "reason" => reason.to_string())
                .increment(1);
            session.kill();
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let deadline = self.timings.handshake_timeout;
        self.handshaking.retain(|_, (opened, session)| {
            if now.duration_since(*opened) <= deadline {
                return true;
            }
            tracing::warn!(session = %session.get_id(), "closing a cluster connection whose handshake did not finish in time");
            metrics::counter!(names::SESSIONS_CLOSED_TOTAL, "reason" => "handshake timeout").increment(1);
            session.kill();
            false
        });
    }

    fn mark_up(&mut self, index: usize) {
        self.transition(index, MemberState::Up, "heartbeat received");
        if !self.settled
            && self.table_read
            && self.peers.iter().all(|peer| peer.state == MemberState::Up)
        {
            self.settled = true;
            self.publish();
        }
    }

    fn mark_down(&mut self, index: usize, reason: &str) {
        self.transition(index, MemberState::Down, reason);
    }

    fn transition(&mut self, index: usize, state: MemberState, reason: &str) {
        let at_ms = unix_ms();
        let peer = &mut self.peers[index];
        peer.state = state;
        peer.since_ms = at_ms;
        let member = peer.address.id.clone();
        let incarnation = peer.incarnation;
        match state {
            MemberState::Up => tracing::info!(member = %member, incarnation, reason, "member up"),
            MemberState::Down => {
                tracing::warn!(member = %member, incarnation, reason, "member down")
            }
            MemberState::Leaving => {
                tracing::info!(member = %member, incarnation, reason, "member leaving")
            }
        }
        metrics::counter!(names::MEMBERSHIP_TRANSITIONS_TOTAL, "member" => member.clone(), "state" => state.as_str())
            .increment(1);
        let _ = self.events.send(MembershipEvent {
            member,
            state,
            at_ms,
            incarnation,
            reason: reason.to_string(),
        });
        self.publish();
    }

    fn publish(&mut self) {
        self.epoch += 1;
        let mut members = Vec::with_capacity(self.peers.len() + 1);
        members.push(MemberStatus {
            id: self.me.clone(),
            state: if self.leaving {
                MemberState::Leaving
            } else {
                MemberState::Up
            },
            since_ms: self.started_ms,
            incarnation: self.incarnation,
            http_addr: self.my_http_addr,
            protocol: crate::codec::PROTOCOL,
        });
        members.extend(self.peers.iter().map(|peer| MemberStatus {
            id: peer.address.id.clone(),
            state: peer.state,
            since_ms: peer.since_ms,
            incarnation: peer.incarnation,
            http_addr: peer.address.http_addr,
            protocol: peer.protocol,
        }));
        let up = members
            .iter()
            .filter(|member| member.state == MemberState::Up)
            .count();
        metrics::gauge!(names::MEMBERS_UP).set(up as f64);
        self.view.send_replace(View {
            me: self.me.clone(),
            members,
            epoch: self.epoch,
            settled: self.settled,
        });
    }

    /// The latest table: members it lists become peers (dialed, heartbeated); learned peers
    /// it no longer lists, and that are down, leave the view.
    fn table(&mut self, table: crate::cluster::table::MemberTable) {
        let now = Instant::now();
        let mut changed = false;
        for member in &table.members {
            if member.id == self.me {
                continue;
            }
            match self
                .peers
                .iter_mut()
                .find(|peer| peer.address.id == member.id)
            {
                Some(peer) => {
                    if !peer.configured
                        && (peer.address.cluster_addr != member.cluster_addr
                            || peer.address.http_addr != member.http_addr)
                    {
                        peer.address.cluster_addr = member.cluster_addr;
                        peer.address.http_addr = member.http_addr;
                        changed = true;
                    }
                }
                None => {
                    tracing::info!(member = %member.id, cluster_addr = %member.cluster_addr, "a new member joined the cluster");
                    self.peers.push(Peer::new(
                        PeerAddress {
                            id: member.id.clone(),
                            cluster_addr: member.cluster_addr,
                            http_addr: member.http_addr,
                        },
                        false,
                        now,
                        self.timings.backoff_min,
                    ));
                    changed = true;
                }
            }
        }
        let before = self.peers.len();
        self.peers.retain(|peer| {
            peer.configured
                || peer.state != MemberState::Down
                || table.member(&peer.address.id).is_some()
        });
        changed |= self.peers.len() != before;
        let first = !self.table_read;
        self.table_read = true;
        if first && !self.settled && self.peers.iter().all(|peer| peer.state == MemberState::Up) {
            self.settled = true;
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    /// Graceful leave: peers learn it from the next heartbeats and take the entities over;
    /// this node's own view no longer places anything on it.
    fn leave(&mut self) {
        if self.leaving {
            return;
        }
        tracing::info!(node = %self.me, "leaving the cluster: handing entities off");
        self.leaving = true;
        for index in 0..self.peers.len() {
            if !self.peers[index].sessions.is_empty() {
                self.send_beat(index, false, self.micros_since_start());
            }
        }
        self.publish();
    }

    /// While no peer is up, dials the seeds (resolving names: a Kubernetes headless service
    /// resolves to every pod) that are not a known peer's address.
    fn maybe_dial_seeds(&mut self, myself: &ActorRef<MembershipMsg>, now: Instant) {
        if self.seeds.is_empty()
            || self.seeds_dialing
            || now < self.next_seed_at
            || self.peers.iter().any(|peer| peer.state == MemberState::Up)
        {
            return;
        }
        self.seeds_dialing = true;
        self.next_seed_at = now + self.timings.backoff_max.min(Duration::from_secs(2));
        let seeds = self.seeds.clone();
        let known: HashSet<SocketAddr> = self
            .peers
            .iter()
            .map(|peer| peer.address.cluster_addr)
            .chain([self.my_cluster_addr])
            .collect();
        let dialer = self.dialer.clone();
        let server = self.node_server.clone();
        let timeout = self.timings.handshake_timeout;
        let membership = myself.clone();
        tokio::spawn(async move {
            for seed in seeds {
                let Ok(Ok(addresses)) =
                    tokio::time::timeout(timeout, tokio::net::lookup_host(seed.as_str())).await
                else {
                    tracing::debug!(seed, "cannot resolve a seed");
                    continue;
                };
                for address in addresses {
                    if known.contains(&address) {
                        continue;
                    }
                    if let Err(error) =
                        tokio::time::timeout(timeout, dialer.dial(&server, None, address))
                            .await
                            .unwrap_or_else(|_| Err("timed out".into()))
                    {
                        tracing::debug!(%address, %error, "cannot dial a seed");
                    }
                }
            }
            let _ = membership.cast(MembershipMsg::SeedsDialed);
        });
    }

    fn micros_since_start(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }
}

/// `"n2@127.0.0.1"` → `"n2"`.
fn peer_id_of(session: &NodeServerSessionInformation) -> Option<String> {
    let name = &session.peer_name.as_ref()?.name;
    Some(name.split('@').next().unwrap_or(name).to_string())
}

/// Members the view lists as up, as a set (for quick lookups by callers).
pub fn up_set(view: &View) -> HashSet<String> {
    view.up_members().map(str::to_string).collect()
}

/// Keeps this node's entry in the membership table current, drops members gone for longer
/// than `remove_after` (configured ones are never dropped, as they are peers anyway), and
/// hands every version read to the membership actor.
fn spawn_table_keeper(
    table: TableArgs,
    membership: ActorRef<MembershipMsg>,
    view: watch::Receiver<View>,
    me: crate::cluster::table::TableMember,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now_ms = unix_ms();
            let (gone, leaving): (Vec<String>, bool) = {
                let view = view.borrow();
                let gone = view
                    .members
                    .iter()
                    .filter(|member| {
                        member.id != me.id
                            && member.state == MemberState::Down
                            && now_ms.saturating_sub(member.since_ms)
                                > table.remove_after.as_millis() as u64
                    })
                    .map(|member| member.id.clone())
                    .collect();
                let leaving = view
                    .member(&me.id)
                    .is_some_and(|member| member.state == MemberState::Leaving);
                (gone, leaving)
            };
            let outcome = crate::cluster::table::update(table.objects.as_ref(), |current| {
                let mut changed = false;
                let listed = current.member(&me.id).cloned();
                if !leaving
                    && listed.as_ref().is_none_or(|listed| {
                        listed.incarnation != me.incarnation
                            || listed.cluster_addr != me.cluster_addr
                            || listed.http_addr != me.http_addr
                    })
                {
                    current.members.retain(|member| member.id != me.id);
                    current.members.push(me.clone());
                    changed = true;
                }
                let before = current.members.len();
                current
                    .members
                    .retain(|member| !(gone.contains(&member.id) || leaving && member.id == me.id));
                changed || current.members.len() != before
            })
            .await;
            match outcome {
                Ok(current) => {
                    if membership.cast(MembershipMsg::Table(current)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot read the membership table; retrying")
                }
            }
            tokio::time::sleep(table.poll_interval).await;
        }
    })
}
