//! The room lister: one per node, under the node's root supervisor. It makes sure that every
//! room that was created is listed in the directory, even when the node creating it died
//! between the two steps (see `service`).
//!
//! Rooms maybe not listed are found by their markers (`rooms/unlisted/<id>` in the shared
//! object store, written before a room is created and removed once it is listed). On every
//! membership change, once at start (when the view has settled) and every [`SCAN_INTERVAL`], it
//! lists the markers and, for each room this node owns in its view, asks the room for its
//! description: a room that exists is listed (listing is idempotent) and its marker removed; a
//! marker without a room (the node died before creating it) is removed once older than
//! [`ORPHAN_GRACE_MS`], which outlasts any creation in flight.
//!
//! Bounded: at most [`SCAN_MARKERS_MAX`] markers per scan, [`REPAIRS_IN_FLIGHT_MAX`] asks at
//! once, one scan at a time (changes during a scan trigger exactly one more).

use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::supervisor::{ChildSpec, Restart};
use runtime::{Entity, Runtime};
use tokio::sync::broadcast::error::RecvError;

use super::service::{UNLISTED_PREFIX, delete_marker, list_room};
use super::{Entry, Room, RoomError, Visibility};

/// Markers looked at per scan.
pub const SCAN_MARKERS_MAX: usize = 10_000;
/// Repairs in flight at once.
pub const REPAIRS_IN_FLIGHT_MAX: usize = 16;
/// A marker whose room does not exist is removed after this long.
pub const ORPHAN_GRACE_MS: u64 = 60 * 1000;
/// Time between two scans besides membership changes.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Registry name of a node's lister.
pub fn lister_name(node: &str) -> String {
    format!("actorhub.rooms.lister.{node}")
}

/// The lister as a permanent child of the node's root supervisor.
pub fn child_spec(runtime: Runtime) -> ChildSpec {
    let name = lister_name(runtime.node_id());
    ChildSpec::new(
        name.clone(),
        Restart::Permanent,
        move |supervisor: ActorCell| {
            let name = name.clone();
            let runtime = runtime.clone();
            async move {
                let (actor, _) =
                    Actor::spawn_linked(Some(name), RoomListerActor, runtime, supervisor).await?;
                Ok(actor.get_cell())
            }
        },
    )
}

pub struct RoomListerActor;

#[derive(RactorMessage)]
pub enum RoomListerMsg {
    /// Something changed (or time passed): look for unlisted rooms.
    Scan,
    ScanDone,
}

pub struct RoomListerState {
    runtime: Runtime,
    scanning: bool,
    /// A scan was asked for while one ran.
    again: bool,
    /// The tasks feeding `Scan` messages; aborted on stop.
    feeders: Vec<tokio::task::JoinHandle<()>>,
}

impl Actor for RoomListerActor {
    type Msg = RoomListerMsg;
    type State = RoomListerState;
    type Arguments = Runtime;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomListerMsg>,
        runtime: Runtime,
    ) -> Result<RoomListerState, ActorProcessingErr> {
        let mut events = runtime.membership_events();
        let target = myself.clone();
        let membership = tokio::spawn(async move {
            // A lagged receiver missed events: one scan covers them all.
            while let Ok(_) | Err(RecvError::Lagged(_)) = events.recv().await {
                if target.cast(RoomListerMsg::Scan).is_err() {
                    break;
                }
            }
        });
        let mut views = runtime.watch_view();
        let target = myself.clone();
        let periodic = tokio::spawn(async move {
            // The first scan waits for the view to settle: before, ownership is not final.
            let _ = views.wait_for(|view| view.settled).await;
            let mut ticks = tokio::time::interval(SCAN_INTERVAL);
            loop {
                ticks.tick().await;
                if target.cast(RoomListerMsg::Scan).is_err() {
                    break;
                }
            }
        });
        Ok(RoomListerState {
            runtime,
            scanning: false,
            again: false,
            feeders: vec![membership, periodic],
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RoomListerMsg>,
        state: &mut RoomListerState,
    ) -> Result<(), ActorProcessingErr> {
        for feeder in state.feeders.drain(..) {
            feeder.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomListerMsg>,
        message: RoomListerMsg,
        state: &mut RoomListerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomListerMsg::Scan if state.scanning => state.again = true,
            RoomListerMsg::Scan => state.start_scan(&myself),
            RoomListerMsg::ScanDone => {
                state.scanning = false;
                if std::mem::take(&mut state.again) {
                    state.start_scan(&myself);
                }
            }
        }
        Ok(())
    }
}

impl RoomListerState {
    fn start_scan(&mut self, myself: &ActorRef<RoomListerMsg>) {
        self.scanning = true;
        let runtime = self.runtime.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            scan(&runtime).await;
            let _ = myself.cast(RoomListerMsg::ScanDone);
        });
    }
}

/// One pass over the markers; repairs the rooms this node owns.
pub async fn scan(runtime: &Runtime) {
    let view = runtime.view();
    if !view.settled {
        return;
    }
    let prefix = Path::from(UNLISTED_PREFIX);
    let markers: Vec<_> = runtime
        .object_store()
        .list(Some(&prefix))
        .take(SCAN_MARKERS_MAX)
        .filter_map(|meta| async move { meta.ok() })
        .collect()
        .await;
    let now_ms = runtime::clock::unix_ms();
    let mine: Vec<(String, u64)> = markers
        .into_iter()
        .filter_map(|meta| {
            let id = meta.location.filename()?.to_string();
            let written_ms = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
            (view.owner(Room::KIND, &id) == Some(runtime.node_id()))
                .then(|| (id, now_ms.saturating_sub(written_ms)))
        })
        .collect();
    futures_util::stream::iter(mine)
        .for_each_concurrent(REPAIRS_IN_FLIGHT_MAX, |(id, age_ms)| async move {
            repair(runtime, id, age_ms).await;
        })
        .await;
}

/// Lists the room of one marker if it exists, then removes the marker. A private room is
/// never listed (its creation writes no marker; this guards against one anyway).
async fn repair(runtime: &Runtime, id: String, marker_age_ms: u64) {
    let visibility = Visibility {
        user: String::new(),
    };
    match runtime.entity::<Room>(id.clone()).ask(visibility).await {
        Ok(Ok(Entry { private: true, .. })) => {
            tracing::warn!(room = %id, "a private room had a listing marker; removed, not listed");
            delete_marker(runtime, &id).await;
        }
        Ok(Ok(Entry { info, .. })) => match list_room(runtime, info).await {
            Ok(()) => {
                tracing::info!(room = %id, "listed a room whose creation was interrupted");
                delete_marker(runtime, &id).await;
            }
            Err(error) => {
                tracing::warn!(room = %id, %error, "cannot list a room; the next scan retries")
            }
        },
        Ok(Err(RoomError::NoSuchRoom)) if marker_age_ms >= ORPHAN_GRACE_MS => {
            tracing::info!(room = %id, "removing the marker of a room that was never created");
            delete_marker(runtime, &id).await;
        }
        Ok(Err(_)) => {}
        Err(error) => {
            tracing::warn!(room = %id, %error, "cannot ask a room; the next scan retries");
        }
    }
}
