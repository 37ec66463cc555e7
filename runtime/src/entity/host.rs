//! The host: each node's remotable front door for entity messages from other nodes.
//!
//! ractor_cluster copies every remotable actor to every peer as a proxy, so entities stay
//! local and only this actor (and the heartbeat actor) is remotable. It decodes envelopes and
//! hands them to the local shards actor, which checks ownership and activates as needed.
//!
//! **API Boundary:** everything arriving here comes from the network: it is decoded with
//! limits and answered with an error when it is not valid, never trusted or unwrapped.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;

use crate::codec::Wire;
use crate::entity::reply::respond;
use crate::entity::shards::{Delivery, ShardMsg};
use crate::entity::{AskOutcome, Envelope, Reply};
use crate::metrics as names;
use crate::pubsub::Publication;
use crate::runtime::Runtime;

#[derive(RactorClusterMessage)]
pub enum HostMsg {
    Tell(Wire<Envelope>),
    #[rpc]
    Ask(Wire<Envelope>, ractor::RpcReplyPort<Wire<AskOutcome>>),
    /// A pub/sub publication for this node's local subscribers.
    Publish(Wire<Publication>),
}

/// pg group of a node's host.
pub fn host_group(node: &str) -> String {
    format!("actorhub.host.{node}")
}

pub struct HostActor;

impl Actor for HostActor {
    type Msg = HostMsg;
    type State = Runtime;
    type Arguments = Runtime;

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        runtime: Runtime,
    ) -> Result<Runtime, ActorProcessingErr> {
        ractor::pg::join(host_group(runtime.node_id()), vec![myself.get_cell()]);
        Ok(runtime)
    }

    async fn handle(
        &self,
        _myself: ActorRef<HostMsg>,
        message: HostMsg,
        runtime: &mut Runtime,
    ) -> Result<(), ActorProcessingErr> {
        let (wire, reply) = match message {
            HostMsg::Tell(wire) => (wire, None),
            HostMsg::Ask(wire, reply) => (wire, Some(reply)),
            HostMsg::Publish(wire) => {
                match wire.into_inner() {
                    Ok(publication) => {
                        runtime
                            .pubsub()
                            .publish_local_in_order(std::sync::Arc::new(publication))
                            .await;
                    }
                    Err(error) => {
                        metrics::counter!(names::WIRE_DECODE_ERRORS_TOTAL, "message" => "publication").increment(1);
                        tracing::warn!(%error, "dropped an undecodable publication from a peer");
                    }
                }
                return Ok(());
            }
        };
        let envelope = match wire.into_inner() {
            Ok(envelope) => envelope,
            Err(error) => {
                metrics::counter!(names::WIRE_DECODE_ERRORS_TOTAL, "message" => "envelope")
                    .increment(1);
                tracing::warn!(%error, "refused an undecodable entity envelope from a peer");
                if let Some(reply) = reply {
                    let _ = reply.send(Wire::new(AskOutcome::Rejected(format!(
                        "undecodable envelope: {error}"
                    ))));
                }
                return Ok(());
            }
        };
        let bytes_max = runtime.config().cluster.message_bytes_max();
        let span = crate::trace::received_command_span(&envelope);
        let delivery = Delivery {
            msg_id: Some(envelope.msg_id),
            payload: envelope.payload,
            reply: reply.map(|port| Reply::Peer { port, bytes_max }),
            span,
            // Reminders are fired by a shard on the target's own node, never from a peer.
            kind: crate::entity::shards::DeliveryKind::Command,
        };
        match runtime.shards() {
            Ok(shards) => {
                if let Err(ractor::MessagingErr::SendErr(ShardMsg::Deliver { delivery, .. })) =
                    shards.cast(ShardMsg::Deliver {
                        entity: envelope.entity,
                        delivery,
                    })
                {
                    respond(
                        delivery.reply,
                        AskOutcome::Unavailable("entity directory restarting".into()),
                    );
                }
            }
            Err(error) => respond(delivery.reply, AskOutcome::Unavailable(error.to_string())),
        }
        Ok(())
    }
}
