//! Keeps this node's entry in the shared membership table and feeds every version read to the
//! membership actor.

use ractor::ActorRef;
use tokio::sync::watch;

use super::{MemberState, MembershipMsg, TableArgs, View};
use crate::clock::unix_ms;

/// Keeps this node's entry in the membership table current, drops members gone for longer
/// than `remove_after` (configured ones are never dropped, as they are peers anyway), and
/// hands every version read to the membership actor.
pub(super) fn spawn_table_keeper(
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
