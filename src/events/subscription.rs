//! One subscriber's way through the trail: the store up to the present,
//! then the hub's broadcast, back to the store whenever it falls behind.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::hub::{Shared, State};
use super::{CommittedEvent, EventsError, PAGE, copy};
use crate::audit::Entry;

/// The committed entries after a starting point, each exactly once and in
/// order (see [`Hub::subscribe`](super::Hub::subscribe)). Ends after the
/// first error.
pub struct Subscription {
    shared: Arc<Shared>,
    live: broadcast::Receiver<Arc<Entry>>,
    state: watch::Receiver<State>,
    position: watch::Receiver<u64>,
    /// The last entry delivered.
    last: u64,
    /// Entries read from the store, not yet delivered.
    backlog: VecDeque<Arc<Entry>>,
    /// Whether the store may hold entries after `last` that the broadcast
    /// will not bring.
    behind: bool,
    ended: bool,
    /// Whether each entry's session is looked up (off for subscribers
    /// that need the entries only).
    sessions: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("last", &self.last)
            .field("behind", &self.behind)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subscription {
    pub(super) fn new(shared: Arc<Shared>, after: u64) -> Self {
        // Listening starts before the first read of the store: whatever
        // commits after that read is broadcast to us.
        let live = shared.sender.subscribe();
        let state = shared.state.subscribe();
        let position = shared.position.subscribe();
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            live,
            state,
            position,
            last: after,
            backlog: VecDeque::new(),
            behind: true,
            ended: false,
            sessions: true,
        }
    }

    /// The sequence number of the last entry delivered (the starting point
    /// before the first).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next committed entry with its session's resource and tenant;
    /// waits for one to commit. After an error, none.
    pub async fn next(&mut self) -> Option<Result<Arc<CommittedEvent>, EventsError>> {
        if self.ended {
            return None;
        }
        let delivered = match self.next_entry().await {
            Ok(entry) => self.describe(entry).await,
            Err(e) => Err(e),
        };
        if delivered.is_err() {
            self.ended = true;
        }
        Some(delivered)
    }

    /// [`Subscription::next`] as a stream.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<Arc<CommittedEvent>, EventsError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut sub| async move {
            sub.next().await.map(|item| (item, sub))
        })
    }

    /// The subscription without session lookups: every event's `session`
    /// is none. For subscribers that read the entries only (metrics),
    /// which then neither read the store per session nor fill the
    /// directory's cache.
    pub fn entries_only(mut self) -> Self {
        self.sessions = false;
        self
    }

    async fn describe(&self, entry: Arc<Entry>) -> Result<Arc<CommittedEvent>, EventsError> {
        let session = match &entry.session {
            Some(id) if self.sessions => self.shared.directory.info(id).await?,
            _ => None,
        };
        Ok(Arc::new(CommittedEvent { entry, session }))
    }

    /// The entry after `last`, from the store or the broadcast.
    async fn next_entry(&mut self) -> Result<Arc<Entry>, EventsError> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                self.last = entry.seq;
                return Ok(entry);
            }
            if self.behind {
                // A long replay ends at shutdown too, page by page.
                if matches!(*self.state.borrow(), State::Stopping) {
                    return Err(EventsError::Stopping);
                }
                let page = self
                    .shared
                    .store
                    .audit_entries(self.last, PAGE, None)
                    .await?;
                self.behind = page.len() == PAGE;
                self.backlog.extend(page.into_iter().map(Arc::new));
                continue;
            }
            match &*self.state.borrow_and_update() {
                State::Following => {}
                State::Failing(e) => return Err(copy(e).into()),
                State::Stopping => return Err(EventsError::Stopping),
            }
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return Err(EventsError::Stopping);
                    }
                }
                // The hub is past us with nothing left for us to receive:
                // it started after our read of the store and took what
                // committed meanwhile as already there. The store has it.
                Ok(()) = self.position.changed() => {
                    if *self.position.borrow_and_update() > self.last && self.live.is_empty() {
                        self.behind = true;
                    }
                }
                received = self.live.recv() => match received {
                    Ok(entry) if entry.seq <= self.last => {}
                    Ok(entry) if entry.seq == self.last + 1 => {
                        self.last = entry.seq;
                        return Ok(entry);
                    }
                    // A gap (the hub started after our read of the store):
                    // the store has what is missing, this entry included.
                    Ok(_) => self.behind = true,
                    Err(RecvError::Lagged(missed)) => {
                        self.shared.lags.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(last = self.last, missed, "subscriber fell behind; reading the store");
                        self.behind = true;
                    }
                    Err(RecvError::Closed) => return Err(EventsError::Stopping),
                },
            }
        }
    }
}
