//! Commits of every replica, as wake-ups: a connection of its own
//! LISTENs on the channel that transactions appending to the trail
//! NOTIFY (delivered only once they commit).
//!
//! Notifications sent while the connection is down are lost; readers
//! read the trail by sequence number after the last one they saw (and
//! poll besides), so a wake-up on every reconnect is all they need to
//! catch up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_postgres::Client;

use super::connect::Target;
use super::tx::CHANNEL;
use super::{unavailable, why};
use crate::store::StoreError;

/// The listening task; it stops when this is dropped.
pub(super) struct Listener {
    task: AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening (the first LISTEN is in place when this returns,
    /// so no commit after it is missed); every notification bumps
    /// `commits`.
    pub async fn start(
        target: Arc<Target>,
        commits: Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let first = subscribe(&target, &commits).await?;
        let task = tokio::spawn(listen(target, commits, first)).abort_handle();
        Ok(Self { task })
    }
}

fn wake(commits: &watch::Sender<u64>) {
    commits.send_modify(|n| *n = n.wrapping_add(1));
}

/// A connection that LISTENs, and the task that runs it.
async fn subscribe(
    target: &Target,
    commits: &Arc<watch::Sender<u64>>,
) -> Result<(Client, JoinHandle<()>), StoreError> {
    let notified = commits.clone();
    let on_notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wake(&notified));
    let (client, conn) = target.dedicated(Some(on_notify)).await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| unavailable(format!("cannot LISTEN for commits: {}", why(&e))))?;
    Ok((client, conn))
}

/// Runs the connection; when it ends, connects again (after a pause) and
/// wakes readers, who may have missed commits meanwhile.
async fn listen(
    target: Arc<Target>,
    commits: Arc<watch::Sender<u64>>,
    first: (Client, JoinHandle<()>),
) {
    let mut current = Some(first);
    loop {
        if let Some((client, conn)) = current.take() {
            let _ = conn.await;
            drop(client);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match subscribe(&target, &commits).await {
            Ok(again) => {
                wake(&commits);
                current = Some(again);
            }
            Err(e) => tracing::warn!(error = %why(&e), "cannot listen for commits"),
        }
    }
}
