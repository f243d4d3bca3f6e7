//! The hub: one per process, following the store and broadcasting each
//! committed entry once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use super::{EventsError, PAGE, SessionDirectory, Settings, Subscription};
use crate::audit::Entry;
use crate::clock::Clock;
use crate::store::{Store, StoreError};

/// How the hub is doing, as subscribers see it.
#[derive(Clone, Debug)]
pub(super) enum State {
    /// Reading the store as it should.
    Following,
    /// Its last read of the store failed: live subscribers end, since the
    /// hub cannot vouch for what comes next.
    Failing(Arc<StoreError>),
    /// The service is shutting down.
    Stopping,
}

/// What the hub's task and the subscriptions share.
pub(super) struct Shared {
    pub(super) store: Arc<dyn Store>,
    pub(super) directory: SessionDirectory,
    pub(super) sender: broadcast::Sender<Arc<Entry>>,
    pub(super) state: watch::Sender<State>,
    /// The last sequence number the hub has broadcast or, when it started,
    /// taken as already there: set after the broadcast, so a subscriber
    /// that sees it ahead of itself with nothing left to receive knows the
    /// store has entries the broadcast will not bring.
    pub(super) position: watch::Sender<u64>,
    pub(super) lags: AtomicU64,
    /// Live subscriptions.
    pub(super) subscribers: AtomicUsize,
    settings: Settings,
}

/// Publishes committed entries to subscribers (see [the module](super)).
pub struct Hub {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `store`. Its task starts with the first subscription.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        let (sender, _) = broadcast::channel(settings.buffer.max(1));
        let (state, _) = watch::channel(State::Following);
        let (position, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                directory: SessionDirectory::new(store.clone(), clock),
                store,
                sender,
                state,
                position,
                lags: AtomicU64::new(0),
                subscribers: AtomicUsize::new(0),
                settings,
            }),
            task: Mutex::new(None),
        }
    }

    /// The hub's settings.
    pub fn settings(&self) -> Settings {
        self.shared.settings
    }

    /// The sessions of the trail, looked up once each.
    pub fn directory(&self) -> &SessionDirectory {
        &self.shared.directory
    }

    /// How many times a subscriber fell behind the broadcast and went back
    /// to reading the store.
    pub fn lags(&self) -> u64 {
        self.shared.lags.load(Ordering::Relaxed)
    }

    /// How many subscriptions are live (streams, gateways, webhooks,
    /// metrics).
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }

    /// Every committed entry after sequence number `after`, in order, then
    /// each new one as it commits. Needs a tokio runtime (the hub's task
    /// starts with the first subscription).
    pub fn subscribe(&self, after: u64) -> Result<Subscription, EventsError> {
        self.start()?;
        if matches!(*self.shared.state.borrow(), State::Stopping) {
            return Err(EventsError::Stopping);
        }
        Ok(Subscription::new(self.shared.clone(), after))
    }

    /// Ends every subscription (they report [`EventsError::Stopping`]) and
    /// refuses new ones: the service is shutting down, and open streams
    /// must not hold up its drain.
    pub fn stop(&self) {
        self.shared.state.send_replace(State::Stopping);
        if let Some(task) = self.lock_task().take() {
            task.abort();
        }
    }

    fn lock_task(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self) -> Result<(), EventsError> {
        let mut task = self.lock_task();
        if task.is_none() && !matches!(*self.shared.state.borrow(), State::Stopping) {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                StoreError::Unavailable("the event hub needs a tokio runtime".into())
            })?;
            *task = Some(runtime.spawn(follow(self.shared.clone())));
        }
        Ok(())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = self.lock_task().take() {
            task.abort();
        }
    }
}

/// The hub's task: read what was committed since the last read, broadcast
/// it, wait for the next commit signal or poll tick.
async fn follow(shared: Arc<Shared>) {
    let mut committed = shared.store.committed();
    let mut last = None;
    loop {
        // Marked seen before reading: a commit during the read wakes us again.
        committed.borrow_and_update();
        match shared.publish_after(&mut last).await {
            Ok(()) => {
                shared.state.send_if_modified(|s| {
                    let failing = matches!(s, State::Failing(_));
                    if failing {
                        tracing::info!("the event hub reads the store again");
                        *s = State::Following;
                    }
                    failing
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the event hub cannot read the store; streams end until it can");
                shared.state.send_replace(State::Failing(Arc::new(e)));
            }
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    // The store no longer signals commits: poll only.
                    tokio::time::sleep(shared.settings.poll).await;
                }
            }
            () = tokio::time::sleep(shared.settings.poll) => {}
        }
    }
}

impl Shared {
    /// Broadcasts every entry after `last` (the trail's head when the hub
    /// starts: earlier entries are read from the store by subscribers).
    async fn publish_after(&self, last: &mut Option<u64>) -> Result<(), StoreError> {
        let mut after = match *last {
            Some(seq) => seq,
            None => {
                let head = self.store.audit_head().await?.map_or(0, |(seq, _)| seq);
                *last = Some(head);
                self.position.send_replace(head);
                head
            }
        };
        loop {
            let page = self.store.audit_entries(after, PAGE, None).await?;
            let full = page.len() == PAGE;
            for entry in page {
                after = entry.seq;
                *last = Some(after);
                // No subscriber is not an error: nobody is listening now.
                let _ = self.sender.send(Arc::new(entry));
            }
            self.position.send_replace(after);
            if !full {
                return Ok(());
            }
        }
    }
}
