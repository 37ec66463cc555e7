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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[derive(Default)]
struct PubSubInner {
    topics: RwLock<Topics>,
    next_id: AtomicU64,
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
