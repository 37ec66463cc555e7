//! The remotable face of membership: the heartbeat peers send each other, and the actor that
//! receives it from the wire and hands it to the local [`MembershipActor`](super::MembershipActor).

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use super::MembershipMsg;
use crate::codec::Wire;
use crate::metrics as names;

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
