//! The session and certificate endpoints.

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;

use super::error::{ApiError, ErrorBody, JsonBody, bytes_rejection};
use super::input::{new_session, reason, request_hash, session_cursor};
use super::views::{
    CertificateView, CsrBody, NewSessionBody, ReviewBody, RevokeBody, SessionList, SessionView,
    VoteBody,
};
use super::{AppState, Authenticated, Peer, SessionPath};
use crate::sessions::{Outcome, Session, State as SessionState};

/// The session as `caller` sees it now.
fn respond(app: &AppState, caller: &crate::auth::Caller, s: &Session) -> Json<SessionView> {
    let role = app
        .service
        .relation(caller, s)
        .unwrap_or(crate::service::Relation::Requester);
    Json(SessionView::new(s, role, app.service.now()))
}

/// Request a session.
#[utoipa::path(post, path = "/v1/sessions", request_body = NewSessionBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Session created, pending approval (break-glass without approvers: open)", body = SessionView),
        (status = 400, description = "Malformed request or duration", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Policy does not allow this request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Break-glass limit reached for this requester", body = ErrorBody),
    ))]
pub async fn create(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<NewSessionBody>,
) -> Result<impl IntoResponse, ApiError> {
    let new = new_session(body)?;
    let session = app.service.request(&caller, new).await?;
    let view = SessionView::new(
        &session,
        crate::service::Relation::Requester,
        app.service.now(),
    );
    Ok((StatusCode::CREATED, Json(view)))
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sessions in this state: `pending`, `open` or `closed`.
    pub state: Option<String>,
    /// Only break-glass sessions that opened and are not (yet) reviewed
    /// justified: awaiting review, overdue, or unjustified.
    pub unreviewed: Option<bool>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Go on after an earlier page: its `next_before`.
    pub before: Option<String>,
}

/// List sessions the caller may see (its own, those it approves, operates or audits).
#[utoipa::path(get, path = "/v1/sessions", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, "invalid_request", e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(SessionState::Pending),
        Some("open") => Some(SessionState::Open),
        Some("closed") => Some(SessionState::Closed),
        Some(_) => {
            return Err(ApiError::new(
                400,
                "invalid_request",
                "state must be pending, open or closed",
            ));
        }
    };
    let before = q.before.as_deref().map(session_cursor).transpose()?;
    let now = app.service.now();
    let page = app
        .service
        .sessions(
            &caller,
            state,
            q.unreviewed.unwrap_or(false),
            q.limit.unwrap_or(100),
            before,
        )
        .await?;
    Ok(Json(SessionList {
        sessions: page
            .sessions
            .iter()
            .map(|(s, r)| SessionView::new(s, *r, now))
            .collect(),
        next_before: page.next.map(|c| c.to_string()),
    }))
}

/// Read a session.
#[utoipa::path(get, path = "/v1/sessions/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody),
        (status = 404, description = "No such session you may see", body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
) -> Result<Json<SessionView>, ApiError> {
    let (s, _) = app.service.session(&caller, &id).await?;
    Ok(respond(&app, &caller, &s))
}

/// Approve the request whose hash you saw.
#[utoipa::path(post, path = "/v1/sessions/{id}/approve", request_body = VoteBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView),
        (status = 403, description = "Not an approver, or the requester", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not pending, hash mismatch, or already voted", body = ErrorBody)))]
pub async fn approve(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<VoteBody>,
) -> Result<Json<SessionView>, ApiError> {
    let hash = request_hash(&body.request_hash)?;
    if body.reason.is_some() {
        return Err(ApiError::new(
            400,
            "invalid_request",
            "approvals take no reason",
        ));
    }
    let s = app.service.approve(&caller, &id, hash).await?;
    Ok(respond(&app, &caller, &s))
}

/// Deny the request whose hash you saw (closes it as `denied`).
#[utoipa::path(post, path = "/v1/sessions/{id}/deny", request_body = VoteBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deny(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<VoteBody>,
) -> Result<Json<SessionView>, ApiError> {
    let hash = request_hash(&body.request_hash)?;
    let s = app
        .service
        .deny(&caller, &id, hash, reason(body.reason)?)
        .await?;
    Ok(respond(&app, &caller, &s))
}

/// Close your own session (`completed`).
#[utoipa::path(post, path = "/v1/sessions/{id}/close", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn close(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
) -> Result<Json<SessionView>, ApiError> {
    let s = app.service.close(&caller, &id).await?;
    Ok(respond(&app, &caller, &s))
}

/// End a session as an approver or operator (`revoked`).
#[utoipa::path(post, path = "/v1/sessions/{id}/revoke", request_body = RevokeBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Json<SessionView>, ApiError> {
    let note = reason(Some(body.reason))?.unwrap_or_default();
    let s = app
        .service
        .revoke(&caller, &id, note, body.reason_code)
        .await?;
    Ok(respond(&app, &caller, &s))
}

/// Record a break-glass session's after-review (its reviewers, never its
/// requester). An unjustified session still open is revoked.
#[utoipa::path(post, path = "/v1/sessions/{id}/review", request_body = ReviewBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView),
        (status = 403, description = "Not a reviewer, or the requester", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not break-glass, never opened, or reviewed already", body = ErrorBody)))]
pub async fn review(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<Json<SessionView>, ApiError> {
    let outcome = Outcome::parse(&body.outcome).ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request",
            "outcome must be justified or unjustified",
        )
    })?;
    let note = reason(Some(body.note))?.unwrap_or_default();
    let s = app.service.review(&caller, &id, outcome, note).await?;
    Ok(respond(&app, &caller, &s))
}

/// The CSR of a certificate request: JSON `{"csr": "<PEM>"}` or a raw
/// `application/pkcs10` body (PEM or DER).
pub struct CsrInput(pub Vec<u8>);

impl<S: Send + Sync> FromRequest<S> for CsrInput {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = super::input::media_type(req.headers());
        match content_type.as_str() {
            "application/pkcs10" => {
                let bytes = Bytes::from_request(req, state)
                    .await
                    .map_err(bytes_rejection)?;
                Ok(Self(bytes.to_vec()))
            }
            _ => {
                let JsonBody(body) = JsonBody::<CsrBody>::from_request(req, state).await?;
                Ok(Self(body.csr.into_bytes()))
            }
        }
    }
}

/// Mint a certificate for the CSR's key: subject and SANs from the session,
/// `notAfter` = the session's `closes_at`. Requester only, session open,
/// within the session's credential limit.
#[utoipa::path(post, path = "/v1/sessions/{id}/certificate", request_body = CsrBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 201, body = CertificateView),
        (status = 400, description = "CSR malformed, unsupported key, bad signature", body = ErrorBody),
        (status = 403, description = "Not the requester", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not open, closed, or limit reached", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "Key backend or store unavailable", body = ErrorBody)))]
pub async fn certificate(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    peer: Option<Extension<Peer>>,
    CsrInput(csr): CsrInput,
) -> Result<impl IntoResponse, ApiError> {
    let peer = peer.map(|Extension(p)| p.0.ip());
    let issued = app.service.certificate(&caller, &id, csr, peer).await?;
    let view = CertificateView {
        session: issued.session.to_string(),
        serial: issued.serial,
        certificate: issued.certificate,
        chain: issued.chain,
        not_after: issued.not_after.to_string(),
    };
    Ok((StatusCode::CREATED, Json(view)))
}
