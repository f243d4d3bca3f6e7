//! Following the committed-event stream: who may subscribe, where a
//! subscription starts, and which events each subscriber is shown.

use std::sync::Arc;

use futures_util::Stream;

use super::{Service, ServiceError};
use crate::auth::Caller;
use crate::events::{CommittedEvent, EventsError, Hub, Subscription, Visibility};
use crate::policy::ResourceMatch;

/// What a subscriber asks to follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Follow {
    /// Start after this sequence number (the `Last-Event-ID` of a
    /// reconnecting client); none: from now on.
    pub after: Option<u64>,
    /// Only events of sessions of these resources.
    pub resource: Option<ResourceMatch>,
}

/// The events one caller follows: every committed event it may see, after
/// its starting point, in commit order.
#[derive(Debug)]
pub struct FollowedEvents {
    subscription: Subscription,
    visibility: Visibility,
    resource: Option<ResourceMatch>,
}

impl FollowedEvents {
    /// The next event shown to this subscriber; waits for one to commit.
    /// After an error (the stream cannot go on without a gap), none.
    pub async fn next(&mut self) -> Option<Result<Arc<CommittedEvent>, EventsError>> {
        loop {
            match self.subscription.next().await? {
                Ok(event) if !self.shows(&event) => continue,
                other => return Some(other),
            }
        }
    }

    /// [`FollowedEvents::next`] as a stream.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<Arc<CommittedEvent>, EventsError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut followed| async move {
            followed.next().await.map(|item| (item, followed))
        })
    }

    fn shows(&self, event: &CommittedEvent) -> bool {
        let session = event.session.as_deref();
        let wanted = match &self.resource {
            None => true,
            Some(pattern) => session.is_some_and(|s| pattern.matches(&s.resource)),
        };
        wanted && self.visibility.sees(&event.entry.kind, session)
    }
}

impl Service {
    /// The process's event hub, for in-process subscribers (they see every
    /// committed event; filtering is theirs).
    pub fn events(&self) -> &Hub {
        &self.events
    }

    /// Subscribes `caller` to the events it may see: auditors those of the
    /// sessions they audit, gateways those of the sessions of their
    /// resources (see [`Visibility`]). Anyone else is refused (recorded).
    pub async fn follow(
        &self,
        caller: &Caller,
        follow: Follow,
    ) -> Result<FollowedEvents, ServiceError> {
        const ACTION: &str = "events";
        let visibility = Visibility::follower(self.policy.clone(), &caller.identity);
        if !visibility.sees_anything() {
            let err = ServiceError::Forbidden(
                "only auditors and gateways named by the policy follow the event stream".into(),
            );
            return self.refuse(caller, None, ACTION, err).await;
        }
        let head = match self.store.audit_head().await {
            Ok(head) => head.map_or(0, |(seq, _)| seq),
            Err(e) => return self.refuse(caller, None, ACTION, e.into()).await,
        };
        let after = match follow.after {
            None => head,
            Some(after) if after <= head => after,
            // Not an id of this trail (another store, or one reset): waiting
            // for it would silently skip everything up to it.
            Some(after) => {
                return Err(ServiceError::BadRequest(format!(
                    "event id {after} is past the end of the trail (the last event is {head}); \
                     reconnect without Last-Event-ID or `after` to follow from now, or with after=0 to replay it all"
                )));
            }
        };
        let subscription = self.events.subscribe(after)?;
        tracing::debug!(caller = %caller.identity, after, "event stream followed");
        Ok(FollowedEvents {
            subscription,
            visibility,
            resource: follow.resource,
        })
    }
}
