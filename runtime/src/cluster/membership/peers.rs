//! The membership actor's handlers: the tick (failure detection, dials, heartbeats, handshake
//! deadlines, seeds), dial results, sessions opening and closing, heartbeats, transitions and
//! the view they publish, the membership table, and leaving.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;

use super::{
    Heartbeat, HeartbeatMsg, MemberState, MemberStatus, MembershipEvent, MembershipMsg,
    MembershipState, Peer, PeerAddress, View, heartbeat_group,
};
use crate::clock::unix_ms;
use crate::codec::Wire;
use crate::metrics as names;

impl MembershipState {
    pub(super) fn tick(&mut self, myself: &ActorRef<MembershipMsg>) {
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

    pub(super) fn dial_finished(&mut self, peer_id: &str, result: Result<(), String>) {
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

    pub(super) fn session_ready(&mut self, session: NodeServerSessionInformation) {
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

    /// The peer whose last ready session `session` is, if closing it would leave that peer
    /// with none.
    pub(super) fn last_session_of(&self, session: &NodeServerSessionInformation) -> Option<String> {
        let session_id = session.actor.get_id();
        self.peers
            .iter()
            .find(|peer| peer.sessions.contains_key(&session_id))
            .filter(|peer| peer.sessions.len() == 1 && peer.state != MemberState::Down)
            .map(|peer| peer.address.id.clone())
    }

    /// Whether ractor_cluster holds another authenticated session with `peer` than `closed`.
    ///
    /// When both nodes dial each other at once, ractor_cluster elects one connection and stops
    /// the other with "duplicate_connection"; the loser's close can reach this actor before the
    /// winner's "ready" does. Without this check the peer was marked down for those few
    /// milliseconds, and partitions moved and were fenced back for nothing.
    pub(super) async fn elected_session_of(
        &self,
        peer: &str,
        closed: &NodeServerSessionInformation,
    ) -> bool {
        let closed_id = closed.actor.get_id();
        match ractor::call_t!(
            self.node_server,
            ractor_cluster::NodeServerMessage::GetSessions,
            ELECTED_SESSION_QUERY_MS
        ) {
            Ok(sessions) => sessions.values().any(|session| {
                session.actor.get_id() != closed_id && peer_id_of(session).as_deref() == Some(peer)
            }),
            // The node server did not answer: treat the connection as gone, as before.
            Err(_) => false,
        }
    }

    /// A session closed; `elected`: ractor_cluster holds another authenticated session with
    /// the same peer (see [`Self::elected_session_of`]), whose "ready" is on its way.
    pub(super) fn session_closed(&mut self, session: NodeServerSessionInformation, elected: bool) {
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
        if elected {
            tracing::debug!(peer = %self.peers[index].address.id, "a duplicate cluster connection closed; the elected one stays");
            return;
        }
        if self.peers[index].sessions.is_empty() && self.peers[index].state != MemberState::Down {
            self.mark_down(index, "connection closed");
        }
    }

    pub(super) fn heartbeat(&mut self, beat: Heartbeat) {
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

    pub(super) fn publish(&mut self) {
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
    pub(super) fn table(&mut self, table: crate::cluster::table::MemberTable) {
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
    pub(super) fn leave(&mut self) {
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
/// How long the membership actor waits for the node server's list of sessions when a peer's
/// last session closes (a local call; beyond it the peer is marked down as before).
const ELECTED_SESSION_QUERY_MS: u64 = 200;

fn peer_id_of(session: &NodeServerSessionInformation) -> Option<String> {
    let name = &session.peer_name.as_ref()?.name;
    Some(name.split('@').next().unwrap_or(name).to_string())
}
