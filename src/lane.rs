//! Blocking work from async code, at most a fixed number at a time.
//!
//! A device (an HSM with a few sessions, a TPM answering one command at a
//! time) or a pool of database connections serves only so many callers at
//! once. Handing every request to `spawn_blocking` would park the surplus
//! on threads of their own, each waking and sleeping in turn; a lane lets
//! the surplus wait as cheap async tasks and gives the blocking pool only
//! what can run.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// A bounded way onto the blocking thread pool.
#[derive(Clone, Debug)]
pub struct Lane {
    permits: Arc<Semaphore>,
}

/// The blocking task panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("a blocking task failed: {0}")]
pub struct LaneError(String);

impl Lane {
    /// A lane running at most `width` (at least one) tasks at once.
    pub fn new(width: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(width.max(1))),
        }
    }

    /// Runs `f` on the blocking pool once a place is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T, LaneError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        // The semaphore is never closed, so acquiring only waits.
        let _place = self
            .permits
            .acquire()
            .await
            .map_err(|e| LaneError(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| LaneError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_than_its_width() {
        let lane = Lane::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (lane, running, most) = (lane.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    lane.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_frees_its_place() {
        let lane = Lane::new(1);
        let err = lane.run(|| panic!("boom")).await.unwrap_err();
        assert!(err.to_string().contains("blocking task failed"));
        assert_eq!(lane.run(|| 7).await.unwrap(), 7);
    }
}
