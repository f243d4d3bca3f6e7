//! One endpoint's delivery loop: take its cursor, follow the committed
//! events after it, POST each one it asked for until the receiver
//! acknowledges it (2xx), and move the cursor only then.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Endpoint;
use super::payload::{self, Message};
use crate::events::{CommittedEvent, EventsError};
use crate::service::Service;
use crate::store::{Store, StoreError, WebhookCursor};

/// How often a holder renews its lease while nothing happens.
const RENEW: Duration = Duration::from_secs(10);

/// The lease beyond an attempt's timeout: a holder that has not renewed
/// within it is taken to be gone.
const LEASE_MARGIN_SECS: i64 = 30;

/// The first wait after a failed attempt; it doubles up to the endpoint's
/// `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Events read ahead of the delivery, per endpoint.
const READ_AHEAD: usize = 16;

/// Why following stopped (it is taken up again from the cursor).
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("another process took the endpoint over")]
    LeaseLost,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Events(#[from] EventsError),
}

/// Delivers to `endpoint` for as long as the service runs.
pub(super) async fn run(service: Arc<Service>, endpoint: Arc<Endpoint>) {
    let mut pause = FIRST_BACKOFF;
    loop {
        match claim(&service, &endpoint).await {
            Ok(Some(cursor)) => {
                pause = FIRST_BACKOFF;
                match follow(&service, &endpoint, cursor).await {
                    Err(Stop::Events(EventsError::Stopping)) => return,
                    Err(e) => {
                        tracing::info!(endpoint = %endpoint.name, reason = %e, "webhook delivery pauses")
                    }
                    Ok(()) => return,
                }
            }
            // Another process delivers to it: look again when its lease
            // may have lapsed.
            Ok(None) => pause = RENEW,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.name, error = %e, "cannot take the webhook cursor");
                pause = (pause * 2).min(endpoint.max_backoff);
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// Takes the endpoint's cursor; a new endpoint starts at the head of the
/// trail (it is told of what happens from now on).
async fn claim(
    service: &Service,
    endpoint: &Endpoint,
) -> Result<Option<WebhookCursor>, StoreError> {
    let store = service.store();
    let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    store
        .claim_webhook(&endpoint.name, head, service.now(), endpoint.lease_secs())
        .await
}

/// Follows the events after the cursor until the lease is lost or the
/// stream fails.
async fn follow(
    service: &Service,
    endpoint: &Endpoint,
    mut cursor: WebhookCursor,
) -> Result<(), Stop> {
    // The subscription is read by a task of its own: a subscription is not
    // to be dropped mid-read, and this loop must also wake to renew.
    let mut subscription = service.events().subscribe(cursor.position)?;
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(async move {
        while let Some(next) = subscription.next().await {
            if tx.send(next).await.is_err() {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut renew = tokio::time::interval(RENEW);
    renew.tick().await;
    // A cursor taken over while failing keeps its schedule.
    if let Some(due) = cursor.next_attempt {
        let wait = due.secs_since(service.now());
        if wait > 0 {
            save(service, endpoint, &cursor, endpoint.lease_secs() + wait).await?;
            tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
        }
    }
    loop {
        tokio::select! {
            next = rx.recv() => {
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(EventsError::Stopping.into()),
                };
                if endpoint.wants(&event) {
                    deliver(service, endpoint, &event, &mut cursor).await?;
                } else {
                    cursor.position = event.entry.seq;
                }
            }
            _ = renew.tick() => save(service, endpoint, &cursor, endpoint.lease_secs()).await?,
        }
    }
}

/// Attempts `event` until the receiver acknowledges it, backing off
/// between attempts; every outcome is saved with the cursor.
async fn deliver(
    service: &Service,
    endpoint: &Endpoint,
    event: &CommittedEvent,
    cursor: &mut WebhookCursor,
) -> Result<(), Stop> {
    let metrics = service.metrics();
    loop {
        let outcome = match message(service, event).await {
            Ok(message) => endpoint.attempt(&message, service.now()).await,
            Err(e) => Err(format!("the session could not be read: {e}")),
        };
        match outcome {
            Ok(()) => {
                metrics
                    .webhook_deliveries
                    .inc(&[&endpoint.name, "delivered"]);
                cursor.position = event.entry.seq;
                cursor.failures = 0;
                cursor.next_attempt = None;
                cursor.last_error = None;
                cursor.delivered += 1;
                cursor.delivered_at = Some(service.now());
                return save(service, endpoint, cursor, endpoint.lease_secs()).await;
            }
            Err(why) => {
                metrics.webhook_deliveries.inc(&[&endpoint.name, "failed"]);
                cursor.failures = cursor.failures.saturating_add(1);
                let wait = backoff(cursor.failures, endpoint.max_backoff);
                let wait_secs = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
                cursor.next_attempt = Some(service.now().plus_secs(wait_secs.max(1)));
                tracing::warn!(
                    endpoint = %endpoint.name,
                    seq = event.entry.seq,
                    failures = cursor.failures,
                    error = %why,
                    "webhook delivery failed; retrying"
                );
                cursor.last_error = Some(why);
                save(service, endpoint, cursor, endpoint.lease_secs() + wait_secs).await?;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The wait after the `failures`-th failed attempt in a row: 1 s, 2 s,
/// 4 s, … up to `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(max)
}

/// The message of `event`, with its session as it is now.
async fn message(service: &Service, event: &CommittedEvent) -> Result<Message, StoreError> {
    let id = event
        .entry
        .session
        .as_deref()
        .and_then(|s| crate::sessions::SessionId::parse(s).ok())
        .ok_or_else(|| StoreError::Corrupt("an entry without a session id".into()))?;
    let session = service.store().session(&id, service.now()).await?;
    Ok(payload::message(
        &event.entry,
        &session,
        service.public_url().as_deref(),
    ))
}

async fn save(
    service: &Service,
    endpoint: &Endpoint,
    cursor: &WebhookCursor,
    lease_secs: i64,
) -> Result<(), Stop> {
    let store: &Arc<dyn Store> = service.store();
    if store
        .save_webhook(cursor, service.now(), lease_secs)
        .await?
    {
        Ok(())
    } else {
        tracing::warn!(endpoint = %endpoint.name, "the webhook cursor was taken over");
        Err(Stop::LeaseLost)
    }
}

/// The lease an endpoint's holder takes: its timeout plus a margin.
pub(super) fn lease_secs(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_secs()).unwrap_or(300) + LEASE_MARGIN_SECS
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
