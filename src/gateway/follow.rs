//! Following the issuer's committed events (`GET /v1/events`): sessions
//! that open are remembered, sessions that close have their connections
//! cut at once. A stream that ends or falls silent longer than the
//! configured limit is reopened with `Last-Event-ID`, so no close is
//! missed; while it cannot be reopened the routes fail closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use super::sessions::Sessions;
use crate::api::events::EventView;
use crate::client::Client;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::sessions::{ConnectionEnd, SessionId};

/// The longest wait between two attempts to reopen the stream.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a stream ended.
enum Ended {
    /// The server ended it, or it broke after it had worked: reopen at once.
    Again(String),
    /// It could not be opened.
    Unreachable(String),
}

/// What the gateway does when the stream changes in ways events cannot
/// tell it.
pub trait Link: Send + Sync {
    /// The stream is lost and cannot be reopened at once.
    fn lost(&self);
    /// The stream was reopened without a position to resume from (no
    /// event had come yet): what closed meanwhile must be asked.
    fn reopened_blind(&self);
}

/// Follows the issuer's events until the task is dropped.
pub async fn follow(
    client: Arc<Client>,
    sessions: Arc<Sessions>,
    silence: Duration,
    link: impl Link,
) {
    let last = AtomicU64::new(0);
    let mut backoff = Duration::from_millis(100);
    let mut failed_before = false;
    let mut opened_before = false;
    loop {
        let after = match last.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        };
        let blind = after.is_none() && opened_before;
        opened_before = true;
        match stream(&client, &sessions, after, &last, silence, || {
            if blind {
                link.reopened_blind();
            }
        })
        .await
        {
            Ended::Again(why) => {
                sessions.set_following(false);
                tracing::info!(reason = %why, "event stream ended; reopening");
                backoff = Duration::from_millis(100);
                failed_before = false;
                continue;
            }
            Ended::Unreachable(why) => {
                sessions.set_lost();
                if !failed_before {
                    tracing::warn!(reason = %why, "cannot reach the issuer's event stream");
                    link.lost();
                    failed_before = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream, from open to end.
async fn stream(
    client: &Client,
    sessions: &Sessions,
    after: Option<u64>,
    last: &AtomicU64,
    silence: Duration,
    opened: impl FnOnce(),
) -> Ended {
    // A stopped issuer still has its connections accepted by the kernel:
    // the answer must come within the silence limit too.
    let resp = match tokio::time::timeout(silence, client.events(after)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Ended::Unreachable(e.to_string()),
        Err(_) => {
            return Ended::Unreachable(format!(
                "the issuer did not answer within {} s",
                silence.as_secs()
            ));
        }
    };
    sessions.set_following(true);
    opened();
    tracing::info!(after = ?after, "following the issuer's events");
    let heard = Arc::new(std::sync::Mutex::new(Instant::now()));
    let heard_in = heard.clone();
    let bytes = resp.bytes_stream().inspect(move |_| {
        *heard_in.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    });
    let mut events = bytes.eventsource();
    let mut check = tokio::time::interval(silence / 4);
    loop {
        tokio::select! {
            next = events.next() => match next {
                None => return Ended::Again("the issuer ended the stream".into()),
                Some(Err(e)) => {
                    sessions.set_following(false);
                    return Ended::Again(format!("the stream broke: {e}"));
                }
                Some(Ok(event)) => {
                    if let Ok(seq) = event.id.parse::<u64>() {
                        last.store(seq, Ordering::Release);
                    }
                    apply(sessions, &event.event, &event.data);
                }
            },
            _ = check.tick() => {
                let quiet = heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                if quiet > silence {
                    sessions.set_following(false);
                    return Ended::Unreachable(format!(
                        "nothing heard from the issuer for {} s", quiet.as_secs()
                    ));
                }
            }
        }
    }
}

/// Applies one event: `opened` remembers the session, `closed` cuts its
/// connections; a `stream_error` is the server saying it will end the
/// stream (the reconnect resumes after the last event).
fn apply(sessions: &Sessions, kind: &str, data: &str) {
    if kind == "stream_error" {
        tracing::info!(data, "the issuer ended the event stream with an error");
        return;
    }
    if kind != "opened" && kind != "closed" {
        return;
    }
    let view: EventView = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "an event from the issuer could not be read");
            return;
        }
    };
    let Some(id) = view
        .session
        .as_deref()
        .and_then(|s| SessionId::parse(s).ok())
    else {
        return;
    };
    let now = SystemClock.now();
    if kind == "opened" {
        let closes_at = view
            .fields
            .get("closes_at")
            .and_then(|v| v.as_str())
            .and_then(|t| Timestamp::parse_rfc3339(t).ok());
        if let Some(closes_at) = closes_at {
            sessions.opened(&id, closes_at, now);
        }
        return;
    }
    let reason = view.fields.get("reason").and_then(|v| v.as_str());
    let end = end_of(reason.unwrap_or("completed"));
    let cut = sessions.closed(&id, end, now);
    tracing::info!(session = %id, reason = ?reason, connections_cut = cut, "session closed");
}

/// How a session's close reason ends its connections.
pub fn end_of(close_reason: &str) -> ConnectionEnd {
    match close_reason {
        "revoked" => ConnectionEnd::Revoked,
        "expired" => ConnectionEnd::Expired,
        _ => ConnectionEnd::Closed,
    }
}
