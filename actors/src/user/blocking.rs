//! A bounded pool for the CPU-heavy work of accounts (argon2, image decoding): at most
//! `workers` jobs run at once on tokio's blocking threads, at most `waiting_max` wait for a
//! turn, and beyond that callers are told the node is busy instead of queueing without end.
//!
//! argon2 is memory-hard on purpose (19 MiB per hash by default), so the number of hashes in
//! flight is what bounds a login storm's memory; the async threads never run a hash.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Jobs that may wait for a worker per pool; a burst beyond it is shed with [`PoolError::Busy`].
pub const WAITING_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the node is busy: too many password or image jobs are waiting")]
    Busy,
    #[error("a background job failed: {0}")]
    Failed(String),
}

/// Cheap to clone; clones share the bound.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    /// One permit per job allowed to run at once.
    permits: Arc<Semaphore>,
    /// Jobs waiting for a permit; compared against `waiting_max` before joining the queue.
    waiting: Arc<AtomicUsize>,
    waiting_max: usize,
}

impl BlockingPool {
    /// `workers` at once (at least 1), [`WAITING_MAX`] waiting.
    pub fn new(workers: usize) -> Self {
        Self::with_waiting_max(workers, WAITING_MAX)
    }

    pub fn with_waiting_max(workers: usize, waiting_max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            waiting_max,
        }
    }

    /// One worker per core: the work is CPU-bound, more would only add memory.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Runs `job` on a blocking thread once a worker is free.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Busy);
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|_| PoolError::Failed("the pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|error| PoolError::Failed(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_full_queue_is_busy() {
        let pool = BlockingPool::with_waiting_max(1, 1);
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));

        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || hold.recv().is_ok()).await })
        };
        // Wait until the first job holds the only worker.
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 7).await })
        };
        while pool.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 9).await, Err(PoolError::Busy));
        release.send(()).expect("job is waiting");
        assert_eq!(running.await.expect("join"), Ok(true));
        assert_eq!(waiting.await.expect("join"), Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_crash() {
        let pool = BlockingPool::new(1);
        let result: Result<(), _> = pool.run(|| panic!("boom")).await;
        assert!(matches!(result, Err(PoolError::Failed(_))));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
