//! The cluster port: our own accept loop in front of ractor_cluster, so that nothing a
//! stranger sends before the handshake can make a node hold more than a bounded amount.
//!
//! ractor_cluster's listener accepts every connection and reads frames of up to
//! `cluster.frame_bytes_max` from it before anyone is authenticated: 200 connections each
//! announcing a 4 MiB frame held about 0.9 GiB. Here the node accepts on its cluster address
//! itself, and hands each connection to ractor_cluster as an external stream
//! (`NodeServerMessage::ConnectionOpenedExternal`) whose reading side enforces, until the
//! cookie handshake has completed:
//! - at most `cluster.unauthenticated_connections_max` such connections at once, and at most
//!   `cluster.unauthenticated_per_ip_max` from one address (a new one beyond is closed at once);
//! - at most `cluster.preauth_bytes_max` bytes read from one connection (the handshake needs a
//!   few hundred; beyond it the read fails and ractor_cluster drops the connection).
//!
//! The handshake deadline itself is the membership actor's (`cluster.handshake_timeout_ms`).
//! Once ractor_cluster reports the session authenticated (its `node_session_authenticated`
//! event names the connection by the label we gave the stream), the limits lift and the
//! connection no longer counts against them.
//!
//! ractor_cluster insists on running its own listener; it is bound to an ephemeral port on
//! loopback, which no node ever dials.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServerMessage,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ClusterSection;
use crate::error::{Result, RuntimeError};
use crate::metrics as names;

/// The pre-handshake limits, from `[cluster]`.
#[derive(Debug, Clone, Copy)]
pub struct PortLimits {
    pub unauthenticated_max: usize,
    pub unauthenticated_per_ip_max: usize,
    pub preauth_bytes_max: u64,
}

impl PortLimits {
    pub fn from_config(cluster: &ClusterSection) -> Self {
        Self {
            unauthenticated_max: cluster.unauthenticated_connections_max,
            unauthenticated_per_ip_max: cluster.unauthenticated_per_ip_max,
            preauth_bytes_max: cluster.preauth_bytes_max,
        }
    }
}

/// The connections whose handshake has not completed, by the label ractor_cluster reports
/// them under.
struct Pending {
    limits: PortLimits,
    slots: Arc<Semaphore>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_label: AtomicU64,
}

impl Pending {
    fn gates(&self) -> MutexGuard<'_, HashMap<String, Arc<Gate>>> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for a new connection from `ip`, or says why not.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> std::result::Result<Slot, &'static str> {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Err("too many connections are in their handshake");
        };
        let mut per_ip = self.per_ip();
        let count = per_ip.entry(ip).or_default();
        if *count >= self.limits.unauthenticated_per_ip_max {
            return Err("too many connections from this address are in their handshake");
        }
        *count += 1;
        Ok(Slot {
            _permit: permit,
            ip,
            pending: Arc::downgrade(self),
        })
    }

    /// ractor_cluster says the connection labelled `label` completed its handshake.
    fn authenticated(&self, label: &str) {
        if let Some(gate) = self.gates().remove(label) {
            gate.open.store(true, Ordering::Release);
            gate.release();
        }
    }
}

/// A connection's place among the unauthenticated ones; released when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    pending: std::sync::Weak<Pending>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.upgrade() {
            let mut per_ip = pending.per_ip();
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Whether one connection has completed its handshake; holds its slot until then.
struct Gate {
    open: AtomicBool,
    slot: Mutex<Option<Slot>>,
}

impl Gate {
    fn release(&self) {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// Binds the cluster port (before anything else starts, so a taken port fails the start with
/// a message that says so).
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| RuntimeError::Spawn {
            what: "the cluster listener".into(),
            reason: format!(
                "cannot listen on {address}: {error} (is another node using this port?)"
            ),
        })
}

/// How the cluster port speaks: plain TCP, or mutual TLS with the certificates of `tls`
/// (each connection's peer certificate goes into `identities` under its label).
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<crate::cluster::tls::ClusterTls>,
    pub identities: crate::cluster::tls::Identities,
    /// How long a TLS handshake may take (off the accept loop).
    pub handshake_timeout: std::time::Duration,
}

/// Serves the cluster port until the returned task is aborted. Returns the port's state,
/// which outgoing dials share (see [`Dialer`]).
pub fn serve(
    listener: TcpListener,
    limits: PortLimits,
    node_server: ActorRef<NodeServerMessage>,
    security: Security,
) -> Result<(tokio::task::JoinHandle<()>, Dialer)> {
    let pending = Arc::new(Pending {
        limits,
        slots: Arc::new(Semaphore::new(limits.unauthenticated_max.max(1))),
        gates: Mutex::new(HashMap::new()),
        per_ip: Mutex::new(HashMap::new()),
        next_label: AtomicU64::new(0),
    });
    node_server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "actorhub.cluster-port".to_string(),
            subscription: Box::new(HandshakeWatcher(
                Arc::clone(&pending),
                security.identities.clone(),
            )),
        })
        .map_err(|error| {
            RuntimeError::Unavailable(format!("the cluster server stopped: {error}"))
        })?;
    let dialer = Dialer {
        pending: Arc::clone(&pending),
        security: security.clone(),
    };
    Ok((
        tokio::spawn(accept_loop(listener, pending, node_server, security)),
        dialer,
    ))
}

/// Opens connections to peers the same way the port accepts them (TLS when configured,
/// bounded before the handshake), and hands them to ractor_cluster.
#[derive(Clone)]
pub struct Dialer {
    pending: Arc<Pending>,
    security: Security,
}

impl Dialer {
    /// Connects to `peer` at `address` (its certificate must name it when TLS is on); with no
    /// `peer` (a seed), to whichever node of the cluster answers there.
    pub async fn dial(
        &self,
        node_server: &ActorRef<NodeServerMessage>,
        peer: Option<&str>,
        address: SocketAddr,
    ) -> std::result::Result<(), String> {
        let peer_name = peer.unwrap_or("seed");
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        let _ = stream.set_nodelay(true);
        let label = format!(
            "{peer_name}@{address}#out{}",
            self.pending.next_label.fetch_add(1, Ordering::Relaxed)
        );
        let transport = match &self.security.tls {
            None => Transport::Plain(stream),
            Some(tls) => {
                let handshake = async {
                    match peer {
                        Some(peer) => tls.connect(stream, peer).await,
                        None => tls.connect_any(stream).await,
                    }
                };
                let stream = tokio::time::timeout(self.security.handshake_timeout, handshake)
                    .await
                    .map_err(|_| format!("TLS handshake with {address} timed out"))?
                    .map_err(|error| {
                        format!("TLS handshake with {peer_name} at {address}: {error}")
                    })?;
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|certificate| certificate.clone().into_owned())
                    .ok_or_else(|| format!("{peer_name} presented no certificate"))?;
                self.security.identities.insert(label.clone(), certificate);
                Transport::TlsClient(Box::new(stream))
            }
        };
        // A peer we dialed is not a stranger, but what it sends before the handshake is
        // bounded all the same.
        let gate = Arc::new(Gate {
            open: AtomicBool::new(false),
            slot: Mutex::new(None),
        });
        self.pending
            .gates()
            .insert(label.clone(), Arc::clone(&gate));
        let stream = GuardedStream {
            transport,
            label: label.clone(),
            gate,
            pending: Arc::downgrade(&self.pending),
            preauth_bytes_max: self.pending.limits.preauth_bytes_max,
        };
        ractor_cluster::client_connect_external(node_server, Box::new(stream))
            .await
            .map_err(|error| {
                self.pending.gates().remove(&label);
                self.security.identities.forget(&label);
                error.to_string()
            })
    }
}

async fn accept_loop(
    listener: TcpListener,
    pending: Arc<Pending>,
    node_server: ActorRef<NodeServerMessage>,
    security: Security,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before accept: keep serving.
                tracing::warn!(%error, "cannot accept a cluster connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match pending.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics::counter!(names::CLUSTER_CONNECTIONS_REFUSED_TOTAL, "reason" => reason)
                    .increment(1);
                tracing::debug!(%peer, reason, "refused a cluster connection");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let label = format!(
            "{peer}#{}",
            pending.next_label.fetch_add(1, Ordering::Relaxed)
        );
        let Some(tls) = security.tls.clone() else {
            hand_over(
                &pending,
                &node_server,
                Transport::Plain(stream),
                label,
                slot,
            );
            continue;
        };
        // The TLS handshake runs beside the accept loop, under a deadline: a peer that opens
        // a connection and says nothing holds one slot until then, and nothing else.
        let pending = Arc::clone(&pending);
        let node_server = node_server.clone();
        let identities = security.identities.clone();
        let timeout = security.handshake_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, tls.accept(stream)).await {
                Ok(Ok((stream, certificate))) => {
                    identities.insert(label.clone(), certificate);
                    hand_over(
                        &pending,
                        &node_server,
                        Transport::TlsServer(Box::new(stream)),
                        label,
                        slot,
                    );
                }
                Ok(Err(error)) => {
                    metrics::counter!(names::CLUSTER_CONNECTIONS_REFUSED_TOTAL, "reason" => "tls handshake failed").increment(1);
                    tracing::warn!(%peer, %error, "refused a cluster connection: TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!(names::CLUSTER_CONNECTIONS_REFUSED_TOTAL, "reason" => "tls handshake timed out").increment(1);
                    tracing::warn!(%peer, "refused a cluster connection: no TLS handshake in time");
                }
            }
        });
    }
}

/// Gives an accepted connection to ractor_cluster.
fn hand_over(
    pending: &Arc<Pending>,
    node_server: &ActorRef<NodeServerMessage>,
    transport: Transport,
    label: String,
    slot: Slot,
) {
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        slot: Mutex::new(Some(slot)),
    });
    pending.gates().insert(label.clone(), Arc::clone(&gate));
    let stream = GuardedStream {
        transport,
        label: label.clone(),
        gate,
        pending: Arc::downgrade(pending),
        preauth_bytes_max: pending.limits.preauth_bytes_max,
    };
    let opened = node_server.cast(NodeServerMessage::ConnectionOpenedExternal {
        stream: Box::new(stream),
        is_server: true,
    });
    if opened.is_err() {
        // The cluster server is gone: the node is shutting down.
        pending.gates().remove(&label);
    }
}

/// Tells [`Pending`] which connections completed their handshake.
struct HandshakeWatcher(Arc<Pending>, crate::cluster::tls::Identities);

impl NodeEventSubscription for HandshakeWatcher {
    fn node_session_opened(&self, _session: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        // Never authenticated: the reader's drop releases the slot; forget the label.
        self.0.gates().remove(&session.peer_addr);
        self.1.forget(&session.peer_addr);
    }
    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        self.0.authenticated(&session.peer_addr);
    }
}

/// A connection's bytes: plain TCP, or TLS either way.
enum Transport {
    Plain(tokio::net::TcpStream),
    TlsServer(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// A connection as ractor_cluster sees it.
struct GuardedStream {
    transport: Transport,
    label: String,
    gate: Arc<Gate>,
    pending: std::sync::Weak<Pending>,
    preauth_bytes_max: u64,
}

impl ClusterBidiStream for GuardedStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write): (BoxRead, BoxWrite) = match self.transport {
            Transport::Plain(stream) => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Transport::TlsServer(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (Box::new(read), Box::new(write))
            }
            Transport::TlsClient(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (Box::new(read), Box::new(write))
            }
        };
        let reader = GuardedRead {
            inner: read,
            gate: self.gate,
            label: self.label,
            pending: self.pending,
            read_before_handshake: 0,
            preauth_bytes_max: self.preauth_bytes_max,
        };
        (Box::new(reader), write)
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// The reading half: counts what a peer sends before its handshake completes.
struct GuardedRead {
    inner: BoxRead,
    gate: Arc<Gate>,
    label: String,
    pending: std::sync::Weak<Pending>,
    read_before_handshake: u64,
    preauth_bytes_max: u64,
}

impl Drop for GuardedRead {
    fn drop(&mut self) {
        self.gate.release();
        if let Some(pending) = self.pending.upgrade() {
            pending.gates().remove(&self.label);
        }
    }
}

impl AsyncRead for GuardedRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.gate.open.load(Ordering::Acquire) {
            return Pin::new(&mut self.inner).poll_read(context, buf);
        }
        let left = self
            .preauth_bytes_max
            .saturating_sub(self.read_before_handshake);
        if left == 0 {
            metrics::counter!(names::CLUSTER_CONNECTIONS_REFUSED_TOTAL, "reason" => "too many bytes before the handshake")
                .increment(1);
            tracing::warn!(peer = %self.label, limit = self.preauth_bytes_max, "closing a cluster connection that sent too much before completing its handshake");
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "more than {} bytes before the cluster handshake completed",
                    self.preauth_bytes_max
                ),
            )));
        }
        let want = buf
            .remaining()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut self.inner).poll_read(context, &mut limited))?;
        let read = limited.filled().len();
        buf.advance(read);
        self.read_before_handshake += read as u64;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(max: usize, per_ip: usize) -> Arc<Pending> {
        Arc::new(Pending {
            limits: PortLimits {
                unauthenticated_max: max,
                unauthenticated_per_ip_max: per_ip,
                preauth_bytes_max: 16,
            },
            slots: Arc::new(Semaphore::new(max)),
            gates: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            next_label: AtomicU64::new(0),
        })
    }

    #[test]
    fn slots_are_bounded_overall_and_per_address_and_come_back() {
        let pending = pending(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = pending.admit(a).expect("first from a");
        let _second = pending.admit(a).expect("second from a");
        assert!(
            pending.admit(a).is_err(),
            "a third from one address is refused"
        );
        let _third = pending.admit(b).expect("b has its own allowance");
        assert!(pending.admit(b).is_err(), "all slots taken");
        drop(first);
        assert!(pending.admit(a).is_ok(), "a released slot is free again");
    }

    #[tokio::test]
    async fn a_peer_may_send_only_a_bounded_amount_before_its_handshake() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pending = pending(4, 4);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let writer = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            let _ = client.write_all(&[7u8; 64]).await;
            client
        });
        let (stream, peer) = listener.accept().await.expect("accept");
        let slot = pending.admit(peer.ip()).expect("slot");
        let gate = Arc::new(Gate {
            open: AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
        });
        pending.gates().insert("peer".into(), Arc::clone(&gate));
        let guarded = Box::new(GuardedStream {
            transport: Transport::Plain(stream),
            label: "peer".into(),
            gate,
            pending: Arc::downgrade(&pending),
            preauth_bytes_max: 16,
        });
        let (mut reader, _writer) = guarded.split();
        let _client = writer.await.expect("client");
        let mut received = Vec::new();
        let mut chunk = [0u8; 8];
        let error = loop {
            match reader.read(&mut chunk).await {
                Ok(0) => panic!("the client did not close"),
                Ok(read) => received.extend_from_slice(&chunk[..read]),
                Err(error) => break error,
            }
        };
        assert_eq!(received.len(), 16, "exactly the allowance was read");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        drop(reader);
        assert_eq!(pending.slots.available_permits(), 4, "the slot came back");
        assert!(pending.gates().is_empty());
    }

    #[tokio::test]
    async fn after_the_handshake_the_limits_lift() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pending = pending(4, 4);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let writer = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            client.write_all(&[1u8; 1000]).await.expect("write");
            client
        });
        let (stream, peer) = listener.accept().await.expect("accept");
        let gate = Arc::new(Gate {
            open: AtomicBool::new(false),
            slot: Mutex::new(Some(pending.admit(peer.ip()).expect("slot"))),
        });
        pending.gates().insert("peer".into(), Arc::clone(&gate));
        let guarded = Box::new(GuardedStream {
            transport: Transport::Plain(stream),
            label: "peer".into(),
            gate,
            pending: Arc::downgrade(&pending),
            preauth_bytes_max: 16,
        });
        pending.authenticated("peer");
        assert_eq!(
            pending.slots.available_permits(),
            4,
            "authenticated: slot released"
        );
        let (mut reader, _writer) = guarded.split();
        let _client = writer.await.expect("client");
        let mut buffer = vec![0u8; 1000];
        reader.read_exact(&mut buffer).await.expect("all of it");
    }
}
