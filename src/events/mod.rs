//! The committed-event stream: every audit entry, published in commit
//! order once its transaction has committed, to in-process subscribers and
//! to `GET /v1/events`.
//!
//! One [`Hub`] per process follows the store: it wakes on the store's
//! commit signal (and on a poll tick, for commits of other processes
//! sharing the store), reads the entries after the last one it saw and
//! broadcasts them on a bounded channel. A [`Subscription`] first reads the
//! store from its starting point, then follows the broadcast; when it falls
//! behind the channel (a slow reader) it goes back to reading the store from
//! the last entry it delivered. Memory stays bounded, a writer never waits
//! for a reader, and a subscriber that resumes after sequence number N gets
//! exactly the entries after N: the store's sequence numbers are dense and
//! assigned in commit order, so "every entry after N" never skips one.
//!
//! Each delivered event carries the resource and tenant of its session,
//! looked up once per session and cached ([`SessionDirectory`]). A lookup
//! that fails ends the subscription with an error instead of skipping the
//! entry: whoever filters on those fields never decides on a guess, and a
//! client that reconnects from its last id misses nothing.

mod directory;
mod hub;
mod subscription;
mod visibility;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Entry;
use crate::store::StoreError;

pub use directory::{SessionDirectory, SessionInfo};
pub use hub::Hub;
pub use subscription::Subscription;
pub use visibility::Visibility;

/// One committed audit entry, with what its session is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEvent {
    /// The entry as stored (its `seq` is the event id).
    pub entry: Arc<Entry>,
    /// The resource and tenant of its session; none for entries of no
    /// session, or of a session id that names no session (a refused call
    /// on an unknown id).
    pub session: Option<Arc<SessionInfo>>,
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The store could not be read, or a session could not be looked up:
    /// nothing after the last delivered entry can be vouched for.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service is shutting down.
    #[error("the service is stopping; reconnect with Last-Event-ID")]
    Stopping,
}

impl EventsError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Stopping => "service_stopping",
        }
    }
}

/// How the hub runs (`[events]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Entries the broadcast channel holds for subscribers that fall
    /// behind; one further behind reads the store instead.
    pub buffer: usize,
    /// How often the store is read without a commit signal (commits of
    /// other processes).
    pub poll: Duration,
    /// How long a stream may stay silent before a heartbeat is sent.
    pub heartbeat: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            buffer: 1024,
            poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// Entries read from the store at once, by the hub and by subscribers
/// catching up.
const PAGE: usize = 500;

/// A copy of a store error (store errors are not `Clone`): the hub hands
/// its failure to every subscriber.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::NotFound(id) => StoreError::NotFound(id.clone()),
    }
}

#[cfg(test)]
mod tests;
