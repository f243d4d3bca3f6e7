//! HTTP errors: every failure becomes `{"error": code, "message": …}` with
//! the right status, in this one place.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::service::ServiceError;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `session_not_open`.
    pub error: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// An error on its way out.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The machine code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for the caller.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = e.status();
        if status >= 500 {
            tracing::warn!(code = e.code(), error = %e, "request failed");
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Whether the request says its body is JSON: `application/json` or
/// `application/<anything>+json`, parameters aside.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

fn not_json() -> ApiError {
    ApiError::new(
        415,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

/// A JSON request body whose every rejection is a JSON error: a missing or
/// wrong content type 415, a body over the limit 413, then
/// [`input::json`](super::input::json): malformed JSON `invalid_json`,
/// anything but an object with exactly the expected fields
/// `invalid_request`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        super::input::json(&bytes).map(Self)
    }
}

/// A body that may be empty (`None`) or else is JSON, checked like
/// [`JsonBody`] (a non-empty body needs a JSON content type).
pub struct OptionalJsonBody(pub Option<Bytes>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(Self(None))
        } else if json {
            Ok(Self(Some(bytes)))
        } else {
            Err(not_json())
        }
    }
}

/// Maps a body-reading failure (too large, or broken) to a JSON error.
pub fn bytes_rejection(b: BytesRejection) -> ApiError {
    if b.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            413,
            "body_too_large",
            "the request body is over the size limit",
        )
    } else {
        ApiError::new(400, "invalid_request", b.body_text())
    }
}
