//! `GET /v1/events`: committed events as Server-Sent Events.
//!
//! Each event is one SSE message: `id:` its audit sequence number,
//! `event:` its kind, `data:` one JSON object ([`EventView`]). A client
//! that reconnects with `Last-Event-ID` gets exactly the events after that
//! one. A stream that cannot go on without a gap (the store cannot be
//! read, a session cannot be looked up, the service stops) ends with a
//! `stream_error` message (not `error`, which EventSource clients use for
//! their own connection errors), which carries no id: the client
//! reconnects from the last event it got. Silent streams get `:heartbeat`
//! comments.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::input::{event_id, resource_pattern};
use super::{AppState, Authenticated};
use crate::clock::Timestamp;
use crate::events::{CommittedEvent, EventsError};
use crate::service::{Follow, FollowedEvents};

/// How long a client waits before reconnecting after a stream ends (the
/// SSE `retry:` sent first on every stream).
const RETRY: Duration = Duration::from_secs(1);

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this event id (the `Last-Event-ID` header wins when both
    /// are given); `0` replays the whole trail. Default: from now on.
    pub after: Option<String>,
    /// Only events of sessions of this resource: a name, or a prefix
    /// ending in `*`.
    pub resource: Option<String>,
}

/// The `data:` of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The audit sequence number (also the SSE `id`): dense, in commit
    /// order.
    pub seq: u64,
    /// When it was committed (RFC 3339).
    pub at: String,
    /// The session it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The session's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The session's tenant, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The event kind (also the SSE `event`): `requested`, `approved`,
    /// `denied`, `opened`, `minted`, `voided`, `closed`, `refused`,
    /// `refusals_counted`, `service_started`, `service_stopped`,
    /// `key_initialised`, `issuing_ca_certified`.
    pub kind: String,
    /// The event's own fields, as recorded in the audit trail (e.g. for
    /// `closed`: `reason`, `by`, `note`).
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl EventView {
    /// The view of a committed event; its recorded body must be a JSON
    /// object (the trail holds nothing else unless it is corrupt).
    pub fn new(event: &CommittedEvent) -> Result<Self, EventsError> {
        let e = &event.entry;
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&e.body)
            .map_err(|err| {
                crate::store::StoreError::Corrupt(format!("audit entry {}: {err}", e.seq))
            })?;
        // The kind is `kind`; the body's own tag would repeat it.
        fields.remove("event");
        Ok(Self {
            seq: e.seq,
            at: Timestamp::from_unix(e.at).to_string(),
            session: e.session.clone(),
            resource: event.session.as_ref().map(|s| s.resource.clone()),
            tenant: event.session.as_ref().and_then(|s| s.tenant.clone()),
            kind: e.kind.clone(),
            fields,
        })
    }
}

/// Where a stream starts: `Last-Event-ID`, else `after`, else now.
fn start(headers: &HeaderMap, after: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(ApiError::new(
            400,
            "invalid_request",
            "send at most one Last-Event-ID header",
        )),
        (Some(value), None) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::new(400, "invalid_request", "Last-Event-ID is not ASCII"))?;
            event_id(text).map(Some)
        }
        (None, _) => after.map(event_id).transpose(),
    }
}

/// Committed events as Server-Sent Events, for auditors (the sessions they
/// audit) and gateways named by the policy (`requested`, `opened`,
/// `minted`, `closed` of their resources' sessions).
#[utoipa::path(get, path = "/v1/events", security(("bearer" = [])),
    params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id (sent by SSE clients when they reconnect)")),
    responses(
        (status = 200, description = "An endless stream of `id:` (audit sequence number), \
            `event:` (kind) and `data:` (one JSON object) messages; `:heartbeat` comments on a \
            silent stream; a `stream_error` message (data: {error, message}, no id) when the stream \
            cannot go on, after which the client reconnects with Last-Event-ID",
            content_type = "text/event-stream", body = EventView),
        (status = 400, description = "Malformed Last-Event-ID, after or resource, or an id past the end of the trail", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Neither an auditor nor a gateway", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn events(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, "invalid_request", e.body_text()))?;
    let follow = Follow {
        after: start(&headers, q.after.as_deref())?,
        resource: q.resource.as_deref().map(resource_pattern).transpose()?,
    };
    let followed = app.service.follow(&caller, follow).await?;
    let heartbeat = app.service.events().settings().heartbeat;
    Ok((
        // Proxies that buffer responses (nginx) would hold events back.
        [("x-accel-buffering", "no")],
        Sse::new(messages(followed))
            .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")),
    ))
}

enum Phase {
    Start(FollowedEvents),
    Events(FollowedEvents),
    Ended,
}

/// The SSE messages of a followed stream: `retry:` first, then one
/// message per event, then a `stream_error` message if it ends.
fn messages(
    followed: FollowedEvents,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures_util::stream::unfold(Phase::Start(followed), |phase| async move {
        match phase {
            Phase::Start(f) => Some((Ok(Event::default().retry(RETRY)), Phase::Events(f))),
            Phase::Events(mut f) => {
                let message = match f.next().await? {
                    Ok(event) => message(&event),
                    Err(e) => Err(e),
                };
                Some(match message {
                    Ok(m) => (Ok(m), Phase::Events(f)),
                    Err(e) => (Ok(failure(&e)), Phase::Ended),
                })
            }
            Phase::Ended => None,
        }
    })
}

fn message(event: &Arc<CommittedEvent>) -> Result<Event, EventsError> {
    let view = EventView::new(event)?;
    let data = serde_json::to_string(&view)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("event {}: {e}", view.seq)))?;
    Ok(Event::default()
        .id(view.seq.to_string())
        .event(&view.kind)
        .data(data))
}

/// The last message of a stream that cannot go on.
fn failure(e: &EventsError) -> Event {
    if !matches!(e, EventsError::Stopping) {
        tracing::warn!(code = e.code(), error = %e, "event stream ended");
    }
    let body = serde_json::json!({
        "error": e.code(),
        "message": format!("{e}; reconnect with Last-Event-ID to resume after the last event received"),
    });
    Event::default()
        .event("stream_error")
        .data(body.to_string())
}
