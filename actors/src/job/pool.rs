//! The node's conversion pool: which jobs have a run on this node, and the bound on the
//! conversions (worker processes) running at once.
//!
//! - At most `jobs.queue_max` jobs are accepted onto a node (waiting or running); a new
//!   submission beyond that is refused (the API answers 429 `queue_full`). Jobs taken over from a
//!   dead node are always admitted: they were accepted already, and the bound on them is the
//!   dead node's own queue.
//! - At most `jobs.workers` conversions run at once, each in a worker process owned by a
//!   converter port (`port`). A run holds its permit until its port answers, and a port answers
//!   only once its worker process is gone, so the number of worker processes never exceeds the
//!   bound, whatever the converters do.
//! - One run per job per node: a job re-activated on the same node while its run still goes
//!   on (after passivation, or a `Resume` from the reviver) does not get a second one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::metrics as names;
use crate::config::JobsSection;

/// One job's run on this node.
#[derive(Debug)]
pub struct Task {
    /// Becomes true to stop the run (its owner cancelled the job); the port kills its worker.
    cancel: watch::Sender<bool>,
}

impl Task {
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Watches for cancellation.
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }
}

/// Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct WorkerPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    /// One permit per conversion allowed to run at once.
    permits: Arc<Semaphore>,
    /// Jobs with a worker task on this node, waiting or running. Locked only briefly, never
    /// across an await.
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    queue_max: usize,
    timeout: Duration,
}

impl WorkerPool {
    pub fn new(section: &JobsSection) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                permits: Arc::new(Semaphore::new(section.workers.max(1))),
                tasks: Mutex::new(HashMap::new()),
                queue_max: section.queue_max,
                timeout: Duration::from_millis(section.timeout_ms),
            }),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Jobs with a worker on this node.
    pub fn load(&self) -> usize {
        self.tasks().len()
    }

    /// Whether a new submission may be accepted onto this node.
    pub fn has_room(&self) -> bool {
        self.load() < self.inner.queue_max
    }

    pub fn queue_max(&self) -> usize {
        self.inner.queue_max
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The worker of `job` on this node, if any.
    pub fn task(&self, job: &str) -> Option<Arc<Task>> {
        self.tasks().get(job).cloned()
    }

    /// Starts `work` as the run of `job` unless one already goes on here; returns whether it
    /// started. The task is forgotten when `work` ends.
    pub fn start<F, Fut>(&self, job: &str, work: F) -> bool
    where
        F: FnOnce(Arc<Task>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = Arc::new(Task {
            cancel: watch::Sender::new(false),
        });
        {
            let mut tasks = self.tasks();
            if tasks.contains_key(job) {
                return false;
            }
            tasks.insert(job.to_string(), task.clone());
            metrics::gauge!(names::POOL_JOBS).set(tasks.len() as f64);
        }
        let future = work(task.clone());
        let pool = self.clone();
        let job = job.to_string();
        tokio::spawn(async move {
            future.await;
            let mut tasks = pool.tasks();
            if tasks
                .get(&job)
                .is_some_and(|current| Arc::ptr_eq(current, &task))
            {
                tasks.remove(&job);
            }
            metrics::gauge!(names::POOL_JOBS).set(tasks.len() as f64);
        });
        true
    }

    /// Asks the run of `job` on this node, if any, to stop.
    pub fn cancel(&self, job: &str) {
        if let Some(task) = self.task(job) {
            task.cancel();
        }
    }

    /// Waits for a conversion slot.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(workers: usize, timeout_ms: u64) -> WorkerPool {
        WorkerPool::new(&JobsSection {
            workers,
            queue_max: 2,
            timeout_ms,
            ..JobsSection::default()
        })
    }

    #[tokio::test]
    async fn one_run_per_job_and_the_queue_bound() {
        let pool = pool(1, 1_000);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        assert!(pool.start("a", |_| async move {
            let _ = released.await;
        }));
        assert!(!pool.start("a", |_| async {}));
        assert!(pool.has_room());
        assert!(pool.start("b", |_| std::future::pending::<()>()));
        assert!(!pool.has_room());
        let _ = release.send(());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.task("a").is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the finished task is forgotten"
            );
            tokio::task::yield_now().await;
        }
        assert!(pool.has_room());
    }
}
