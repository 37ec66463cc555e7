//! The node's conversion pool: which jobs have a worker on this node, and the bounded set of
//! threads their conversions run on.
//!
//! - At most `jobs.queue_max` jobs are accepted onto a node (waiting or running); a new
//!   submission beyond that is refused (the API answers 429 `queue_full`). Jobs taken over from a
//!   dead node are always admitted: they were accepted already, and the bound on them is the
//!   dead node's own queue.
//! - At most `jobs.workers` conversions run at once, each on a tokio blocking thread. The permit
//!   is moved into the thread and released only when the converter really returns, so a
//!   converter that outlives its timeout still occupies its slot: the number of conversion
//!   threads never exceeds the configured bound, whatever the converters do.
//! - A converter's panic is caught on its thread and fails its job only; a timeout sets the
//!   job's cancel flag (converters check it between steps; LibreOffice is killed) and fails it.
//! - One worker per job per node: a job re-activated on the same node while its worker still
//!   runs (after passivation, or a `Resume` from the reviver) does not get a second one.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runtime::config::JobsSection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics as names;

/// One job's worker on this node.
#[derive(Debug)]
pub struct Task {
    /// Names this run of the job, so the entity can tell its messages from a stale run's.
    pub attempt: String,
    /// Set to stop the conversion (timeout, cancellation); converters poll it.
    pub cancel: Arc<AtomicBool>,
}

/// Why the pool produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the converter crashed: {0}")]
    Panicked(String),
    #[error("the conversion took longer than {0} ms")]
    TimedOut(u64),
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

    /// Starts `work` as the worker of `job` unless one already runs here; returns whether it
    /// started. The task is forgotten when `work` ends.
    pub fn start<F, Fut>(&self, job: &str, attempt: String, work: F) -> bool
    where
        F: FnOnce(Arc<Task>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = Arc::new(Task {
            attempt,
            cancel: Arc::new(AtomicBool::new(false)),
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

    /// Asks the worker of `job` on this node, if any, to stop.
    pub fn cancel(&self, job: &str) {
        if let Some(task) = self.task(job) {
            task.cancel.store(true, Ordering::Relaxed);
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

    /// Runs `convert` on a blocking thread holding `permit`, with the pool's timeout. On a
    /// timeout `cancel` is set and the thread is left to notice it; its permit is released
    /// when it does.
    pub async fn run<T, F>(
        &self,
        permit: OwnedSemaphorePermit,
        cancel: Arc<AtomicBool>,
        convert: F,
    ) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let thread = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            std::panic::catch_unwind(AssertUnwindSafe(convert))
        });
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, thread).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(payload))) => Err(PoolError::Panicked(panic_message(payload.as_ref()))),
            Ok(Err(join_error)) => Err(PoolError::Panicked(join_error.to_string())),
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                Err(PoolError::TimedOut(timeout.as_millis() as u64))
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
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
    async fn a_panic_is_an_error_of_that_run_only() {
        let pool = pool(1, 5_000);
        let cancel = Arc::new(AtomicBool::new(false));
        let permit = pool.acquire().await;
        let result: Result<(), _> = pool.run(permit, cancel.clone(), || panic!("boom")).await;
        assert_eq!(result, Err(PoolError::Panicked("boom".into())));
        let permit = pool.acquire().await;
        assert_eq!(pool.run(permit, cancel, || 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_timeout_cancels_and_keeps_the_slot_until_the_thread_ends() {
        let pool = pool(1, 50);
        let cancel = Arc::new(AtomicBool::new(false));
        let permit = pool.acquire().await;
        let flag = cancel.clone();
        let result = pool
            .run(permit, cancel.clone(), move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .await;
        assert_eq!(result, Err(PoolError::TimedOut(50)));
        assert!(cancel.load(Ordering::Relaxed));
        // The slot comes back once the converter has noticed the flag.
        let _permit = tokio::time::timeout(Duration::from_secs(5), pool.acquire())
            .await
            .expect("the permit is released when the thread ends");
    }

    #[tokio::test]
    async fn one_worker_per_job_and_the_queue_bound() {
        let pool = pool(1, 1_000);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        assert!(pool.start("a", "1".into(), |_| async move {
            let _ = released.await;
        }));
        assert!(!pool.start("a", "2".into(), |_| async {}));
        assert!(pool.has_room());
        assert!(pool.start("b", "1".into(), |_| std::future::pending::<()>()));
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
