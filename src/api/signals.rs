//! `POST /v1/signals`: Shared Signals push delivery (RFC 8935). A
//! transmitter POSTs one Security Event Token as
//! `application/secevent+jwt`; lockstep answers 202 once it has acted on
//! it, or 400 with RFC 8935's `{err, description}` (see
//! [`crate::signals`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, bytes_rejection};
use crate::signals::SetError;

/// The media type of a pushed SET.
const SECEVENT: &str = "application/secevent+jwt";

/// RFC 8935's error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SetErrorBody {
    /// `invalid_request`, `invalid_key`, `invalid_issuer` or
    /// `invalid_audience`.
    pub err: String,
    /// What was wrong, for the transmitter's operators.
    pub description: String,
}

/// The body of a push: one SET, as text.
pub struct SetBody(String);

impl<S: Send + Sync> FromRequest<S> for SetBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = super::input::media_type(req.headers());
        if content_type != SECEVENT {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                "send the SET as Content-Type: application/secevent+jwt",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::new(400, "invalid_request", "the SET is not UTF-8 text"))?;
        Ok(Self(text.trim().to_owned()))
    }
}

fn set_error(e: &SetError) -> Response {
    let body = SetErrorBody {
        err: e.code().to_owned(),
        description: e.description().to_owned(),
    };
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

/// Push delivery of a Security Event Token (RFC 8935).
#[utoipa::path(post, path = "/v1/signals",
    request_body(content = String, content_type = "application/secevent+jwt",
        description = "One Security Event Token (RFC 8417), signed by a configured transmitter"),
    responses(
        (status = 202, description = "Verified and acted on: the sessions it ends are revoked"),
        (status = 400, description = "Refused per RFC 8935 (invalid_request, invalid_key, invalid_issuer, invalid_audience); nothing changed", body = SetErrorBody),
        (status = 404, description = "No transmitters are configured", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Not application/secevent+jwt", body = ErrorBody),
        (status = 503, description = "The transmitter's keys or the store cannot be reached: send it again later", body = ErrorBody),
    ))]
pub async fn receive(State(app): State<AppState>, SetBody(token): SetBody) -> Response {
    let Some(receiver) = &app.signals else {
        return ApiError::new(
            404,
            "signals_disabled",
            "this service has no [[transmitter]] configured",
        )
        .into_response();
    };
    let now = app.service.now();
    let signal = match receiver.verify(&token, now).await {
        Ok(signal) => signal,
        Err(e) => {
            app.service.refused(None, None, "signal", e.code()).await;
            tracing::warn!(code = e.code(), reason = e.description(), "refused a SET");
            return match e {
                SetError::Unavailable(m) => {
                    ApiError::new(503, "signals_unavailable", m).into_response()
                }
                other => set_error(&other),
            };
        }
    };
    match app.service.act_on_signal(signal).await {
        Ok(Ok(_)) => StatusCode::ACCEPTED.into_response(),
        Ok(Err(e)) => set_error(&e),
        Err(e) => ApiError::from(e).into_response(),
    }
}
