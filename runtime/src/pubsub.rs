//! Cluster pub/sub: a publication crosses the network once per node, then fans out to that
//! node's local subscribers (the way Phoenix PubSub works).
//!
//! The publisher names the nodes to reach (a room knows which nodes have members); each
//! remote node gets one `HostMsg::Publish`, and its host hands it to [`PubSub::publish_local`].
//! Local subscribers are callbacks that must be cheap and non-blocking (typically a cast into
//! an actor); one that returns `false` is dropped, which is how a slow consumer is cut off.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use serde::{Deserialize, Serialize};

/// A message on a topic. The payload is opaque to the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The payload decoded by the first local subscriber that asked, shared with the others:
    /// a publication is decoded once per node, not once per subscriber.
    #[serde(skip)]
    decoded: OnceLock<Option<Arc<dyn Any + Send + Sync>>>,
}

impl Publication {
    pub fn new(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            payload,
            decoded: OnceLock::new(),
        }
    }

    /// The payload decoded as `T` by `decode`, which runs at most once per publication on
    /// this node; `None` if it failed (or an earlier subscriber decoded another type).
    pub fn decoded<T: Send + Sync + 'static>(
        &self,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Option<Arc<T>> {
        self.decoded
            .get_or_init(|| {
                decode(&self.payload).map(|value| Arc::new(value) as Arc<dyn Any + Send + Sync>)
            })
            .clone()?
            .downcast::<T>()
            .ok()
    }
}

/// Delivers a publication to one local subscriber; `false` unsubscribes it.
pub type Deliver = Arc<dyn Fn(&Arc<Publication>) -> bool + Send + Sync>;

type Topics = HashMap<String, HashMap<u64, Deliver>>;

/// The node-local side of pub/sub (cheap to clone).
#[derive(Clone, Default)]
pub struct PubSub {
    inner: Arc<PubSubInner>,
}

/// Publications waiting in one fan-out lane.
pub const LANE_PUBLICATIONS_MAX: usize = 1024;
/// Most fan-out lanes per node.
const LANES_MAX: usize = 4;

#[derive(Default)]
struct PubSubInner {
    topics: RwLock<Topics>,
    next_id: AtomicU64,
    /// Fan-out tasks for publications from peers, started on first use; see
    /// [`PubSub::publish_local_in_order`].
    lanes: OnceLock<Vec<tokio::sync::mpsc::Sender<Arc<Publication>>>>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PubSub")
    }
}

/// Unsubscribes when dropped.
pub struct Subscription {
    topic: String,
    id: u64,
    pubsub: Weak<PubSubInner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Subscription({}#{})", self.topic, self.id)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.pubsub.upgrade() {
            inner.remove(&self.topic, self.id);
        }
    }
}

impl PubSubInner {
    fn remove(&self, topic: &str, id: u64) {
        let mut topics = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

impl PubSub {
    pub fn subscribe(&self, topic: impl Into<String>, deliver: Deliver) -> Subscription {
        let topic = topic.into();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut topics = self
            .inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.entry(topic.clone()).or_default().insert(id, deliver);
        Subscription {
            topic,
            id,
            pubsub: Arc::downgrade(&self.inner),
        }
    }

    /// Hands `publication` to every local subscriber of its topic; returns how many took it.
    pub fn publish_local(&self, publication: &Arc<Publication>) -> usize {
        let subscribers: Vec<(u64, Deliver)> = {
            let topics = self
                .inner
                .topics
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match topics.get(&publication.topic) {
                Some(subscribers) => subscribers
                    .iter()
                    .map(|(id, deliver)| (*id, deliver.clone()))
                    .collect(),
                None => return 0,
            }
        };
        let mut delivered = 0;
        for (id, deliver) in subscribers {
            if deliver(publication) {
                delivered += 1;
            } else {
                self.inner.remove(&publication.topic, id);
            }
        }
        delivered
    }

    /// Hands `publication` to the local subscribers on one of the node's fan-out lanes (chosen
    /// by topic, so one topic's publications keep their order) and returns without waiting for
    /// them, unless that lane already holds [`LANE_PUBLICATIONS_MAX`]. The host uses it for
    /// publications from peers: one big room's fan-out (a socket write per member) must not
    /// hold up every other message to this node.
    pub async fn publish_local_in_order(&self, publication: Arc<Publication>) {
        let lanes = self.inner.lanes.get_or_init(|| self.start_lanes());
        let lane = &lanes[lane_of(&publication.topic, lanes.len())];
        if let Err(error) = lane.send(publication).await {
            // Only while the node shuts down: deliver here rather than not at all.
            self.publish_local(&error.0);
        }
    }

    fn start_lanes(&self) -> Vec<tokio::sync::mpsc::Sender<Arc<Publication>>> {
        let count = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, LANES_MAX);
        (0..count)
            .map(|_| {
                let (sender, mut receiver) =
                    tokio::sync::mpsc::channel::<Arc<Publication>>(LANE_PUBLICATIONS_MAX);
                let pubsub = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    while let Some(publication) = receiver.recv().await {
                        let Some(inner) = pubsub.upgrade() else { break };
                        PubSub { inner }.publish_local(&publication);
                    }
                });
                sender
            })
            .collect()
    }

    /// Local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        let topics = self
            .inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        topics.get(topic).map_or(0, HashMap::len)
    }
}

fn lane_of(topic: &str, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn delivers_to_subscribers_of_the_topic_only_and_unsubscribes_on_drop() {
        let pubsub = PubSub::default();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let subscription = pubsub.subscribe(
            "room:a",
            Arc::new(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
                true
            }),
        );
        let publication = Arc::new(Publication::new("room:a", vec![1]));
        assert_eq!(pubsub.publish_local(&publication), 1);
        assert_eq!(
            pubsub.publish_local(&Arc::new(Publication::new("room:b", vec![]))),
            0
        );
        drop(subscription);
        assert_eq!(pubsub.publish_local(&publication), 0);
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_subscriber_that_refuses_is_dropped() {
        let pubsub = PubSub::default();
        let _subscription = pubsub.subscribe("t", Arc::new(|_| false));
        let publication = Arc::new(Publication::new("t", vec![]));
        assert_eq!(pubsub.publish_local(&publication), 0);
        assert_eq!(pubsub.subscriber_count("t"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publications_in_lanes_keep_their_order_per_topic() {
        let pubsub = PubSub::default();
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u8)>();
        let topics = ["a", "b", "c", "d", "e"];
        let _subscriptions: Vec<_> = topics
            .iter()
            .map(|topic| {
                let seen = seen.clone();
                pubsub.subscribe(
                    *topic,
                    Arc::new(move |publication: &Arc<Publication>| {
                        seen.send((publication.topic.clone(), publication.payload[0]))
                            .is_ok()
                    }),
                )
            })
            .collect();
        for number in 0..200u8 {
            for topic in topics {
                pubsub
                    .publish_local_in_order(Arc::new(Publication::new(topic, vec![number])))
                    .await;
            }
        }
        let mut next: HashMap<String, u8> = HashMap::new();
        for _ in 0..200 * topics.len() {
            let (topic, number) =
                tokio::time::timeout(std::time::Duration::from_secs(10), seen_rx.recv())
                    .await
                    .expect("delivered")
                    .expect("open");
            let expected = next.entry(topic.clone()).or_default();
            assert_eq!(number, *expected, "topic {topic} out of order");
            *expected += 1;
        }
    }

    #[test]
    fn a_publication_is_decoded_once_for_all_subscribers() {
        let publication = Publication::new("t", vec![7]);
        let decodes = AtomicUsize::new(0);
        let decode = |bytes: &[u8]| {
            decodes.fetch_add(1, Ordering::Relaxed);
            Some(u32::from(bytes[0]))
        };
        assert_eq!(publication.decoded(decode).as_deref(), Some(&7));
        assert_eq!(publication.decoded(decode).as_deref(), Some(&7));
        assert_eq!(decodes.load(Ordering::Relaxed), 1);
        assert!(publication.decoded(|_| Some("other type")).is_none());
    }
}
