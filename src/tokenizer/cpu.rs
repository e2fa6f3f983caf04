//! The bounded CPU pool for tokenization and template rendering: at most `workers` jobs run at
//! once on the blocking threads, at most `queue` more wait, and a waiting job is dropped (never
//! run) when its request goes away. A full pool is an answer, not a wait: the caller routes on the
//! byte approximation instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct CpuPool {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// The pool had no room: `workers` jobs running and `queue` waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tokenization pool is full")]
pub struct PoolFull;

impl CpuPool {
    /// `workers` 0 = one per available core.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = if workers == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { workers };
        Self { running: Arc::new(Semaphore::new(workers)), waiting: AtomicUsize::new(0), queue }
    }

    /// Runs `job` on a blocking thread once a worker is free. Dropping the returned future before
    /// a worker is free cancels the job; once started it runs to completion (bounded by the input
    /// caps), and its result is dropped.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = match Arc::clone(&self.running).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(PoolFull);
                }
                let _leave = Leave(&self.waiting);
                Arc::clone(&self.running).acquire_owned().await.map_err(|_| PoolFull)?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|_| PoolFull)
    }

    /// Jobs waiting for a worker now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Leaves the queue when dropped: on start, or when the waiting request goes away.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_at_most_workers_at_once_queues_a_bounded_number_and_refuses_the_rest() {
        let pool = Arc::new(CpuPool::new(1, 1));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let blocker = {
            let (pool, rx) = (Arc::clone(&pool), Arc::clone(&release_rx));
            tokio::spawn(async move { pool.run(move || rx.lock().is_ok_and(|r| r.recv().is_ok())).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| 7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.waiting(), 1);
        assert_eq!(pool.run(|| 8).await, Err(PoolFull), "one running, one waiting: no room");
        release_tx.send(()).expect("release");
        assert_eq!(blocker.await.expect("joined"), Ok(true));
        assert_eq!(queued.await.expect("joined"), Ok(7));
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiting_job_whose_request_went_away_never_runs() {
        let pool = Arc::new(CpuPool::new(1, 4));
        let ran = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(move || release_rx.recv().is_ok()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counted = Arc::clone(&ran);
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), pool.run(move || counted.fetch_add(1, Ordering::SeqCst)));
        assert!(waiting.await.is_err(), "still waiting when its request gave up");
        assert_eq!(pool.waiting(), 0, "left the queue");
        release_tx.send(()).expect("release");
        assert_eq!(blocker.await.expect("joined"), Ok(true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
