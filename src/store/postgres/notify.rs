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
use tokio::task::AbortHandle;

use super::connect::Target;
use super::tx::CHANNEL;

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
    /// Starts listening; every notification bumps `commits`.
    pub fn start(target: Arc<Target>, commits: Arc<watch::Sender<u64>>) -> Self {
        let task = tokio::spawn(listen(target, commits)).abort_handle();
        Self { task }
    }
}

fn wake(commits: &watch::Sender<u64>) {
    commits.send_modify(|n| *n = n.wrapping_add(1));
}

async fn listen(target: Arc<Target>, commits: Arc<watch::Sender<u64>>) {
    loop {
        let notified = commits.clone();
        let on_notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wake(&notified));
        match target.dedicated(Some(on_notify)).await {
            Ok((client, conn)) => match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                Ok(()) => {
                    // Whatever was committed while not listening.
                    wake(&commits);
                    let _ = conn.await;
                    drop(client);
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for commits"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect to listen for commits"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
