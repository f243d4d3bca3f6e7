//! The ledger's counters, fed by the committed-event stream: what the
//! store committed, counted once per entry, in commit order.

use std::sync::Arc;
use std::time::Duration;

use super::Metrics;
use crate::audit::Entry;
use crate::events::{EventsError, Hub};
use crate::sessions::Event;

/// The longest wait before following the stream again after it failed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Counts every entry committed after `after` (the trail's head when the
/// service started: counters start at zero with the process), until the
/// service stops. When the stream fails (the store is unreachable) it is
/// followed again from the last entry counted, so none is counted twice
/// or missed.
pub async fn follow(metrics: Arc<Metrics>, hub: &Hub, mut after: u64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut subscription = match hub.subscribe(after) {
            Ok(s) => s.entries_only(),
            Err(EventsError::Stopping) => return,
            Err(e) => {
                tracing::warn!(error = %e, "metrics cannot follow the event stream; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        while let Some(next) = subscription.next().await {
            match next {
                Ok(event) => {
                    count(&metrics, &event.entry);
                    after = event.entry.seq;
                    backoff = Duration::from_millis(100);
                }
                Err(EventsError::Stopping) => return,
                Err(e) => {
                    tracing::warn!(error = %e, after, "the metrics' event stream ended; following it again");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts one committed entry.
pub fn count(metrics: &Metrics, entry: &Entry) {
    metrics.entries.inc(&[&entry.kind]);
    metrics
        .ledger_position
        .set(i64::try_from(entry.seq).unwrap_or(i64::MAX));
    // An entry this build cannot read (a newer replica's) is counted by
    // its kind only.
    let Ok(event) = serde_json::from_str::<Event>(&entry.body) else {
        return;
    };
    match event {
        Event::Closed { reason, .. } => metrics.closed.inc(&[reason.as_str()]),
        Event::Refused { action, code, .. } => {
            metrics.refusals.inc(&[action_label(&action), &code])
        }
        Event::RefusalsCounted { codes, .. } => {
            for (code, n) in codes {
                metrics.refusals.add(&[REQUEST, &code], n);
            }
        }
        Event::Minted {
            kind,
            profile,
            handed_out,
            ..
        } => {
            if handed_out {
                metrics.minted.inc(&[kind.as_str(), &profile]);
            } else {
                metrics.withheld.inc(&[kind.as_str()]);
            }
        }
        Event::Signed { handed_out, .. } => {
            let kind = crate::sessions::CredentialKind::Timestamp.as_str();
            if handed_out {
                metrics.minted.inc(&[kind, "code-signing"]);
            } else {
                metrics.withheld.inc(&[kind]);
            }
        }
        _ => {}
    }
}

/// The action label of refusals of calls without a valid credential,
/// recorded with their method and path.
const REQUEST: &str = "request";

/// A refused call's action as a label: its name (`approve`,
/// `certificate`, …), or `request` for an HTTP method and path (a call
/// refused before it named an action), whose path may hold a session id.
fn action_label(action: &str) -> &str {
    if action.contains(' ') || action.contains('/') {
        REQUEST
    } else {
        action
    }
}
