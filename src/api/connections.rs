//! `POST /v1/sessions/{id}/connections`: a gateway reports a connection it
//! carried for the session.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody, JsonBody};
use super::{AppState, Authenticated, SessionPath};
use crate::sessions::ConnectionReport;
use crate::store::ConnectionRecorded;

/// The answer to a connection report.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportView {
    /// `true` when this call recorded it, `false` when a report with its
    /// id was recorded before (nothing was added).
    pub recorded: bool,
}

/// Report a connection you carried for the session, as a gateway the
/// policy names for its resource. Send each report with an id of your
/// own; sending it again records nothing (200).
#[utoipa::path(post, path = "/v1/sessions/{id}/connections", request_body = ConnectionReport,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 201, description = "Recorded", body = ReportView),
        (status = 200, description = "Recorded before; nothing added", body = ReportView),
        (status = 403, body = ErrorBody)))]
pub async fn report(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<ConnectionReport>,
) -> Result<(StatusCode, Json<ReportView>), ApiError> {
    let recorded = app.service.report_connection(&caller, &id, body).await?;
    Ok(match recorded {
        ConnectionRecorded::New => (StatusCode::CREATED, Json(ReportView { recorded: true })),
        _ => (StatusCode::OK, Json(ReportView { recorded: false })),
    })
}
