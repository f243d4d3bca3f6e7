//! `GET /metrics`: on the API listener behind the `[metrics] token`, and on
//! a plain-HTTP listener of its own (`[metrics] listen`) for scrapers on a
//! trusted network.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorBody};
use super::{AppState, authorization, health};
use crate::metrics::{CONTENT_TYPE, scrape};
use crate::service::Service;

/// The `[metrics] token`, kept as its SHA-256 only.
#[derive(Clone)]
pub struct MetricsToken([u8; 32]);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// The token scrapers must send.
    pub fn new(token: &SecretString) -> Self {
        Self(Sha256::digest(token.expose_secret().as_bytes()).into())
    }

    /// Whether `header` is `Bearer <the token>`; compared in constant time.
    fn admits(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Prometheus metrics in the text format, to a caller with the
/// `[metrics] token`.
#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, description = "Metrics in the Prometheus text format (`text/plain; version=0.0.4`)",
        content_type = "text/plain", body = String),
    (status = 401, description = "Not the `[metrics] token`", body = ErrorBody),
    (status = 404, description = "No `[metrics] token` is configured: metrics are not served on this listener", body = ErrorBody)))]
pub async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = &app.metrics_token else {
        return Err(ApiError::new(
            404,
            "metrics_disabled",
            "metrics are not served here: set [metrics] token (a bearer token for this listener) or [metrics] listen (a listener of their own)",
        ));
    };
    if !token.admits(authorization(&headers).ok().flatten()) {
        let code = "unauthenticated";
        app.service.refused(None, None, "GET /metrics", code).await;
        return Err(ApiError::new(
            401,
            code,
            "send the [metrics] token as `Authorization: Bearer <token>`",
        ));
    }
    Ok(text(&app.service).await)
}

/// The metrics as a response.
async fn text(service: &Service) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        scrape::render(service).await,
    )
        .into_response()
}

/// The router of the metrics' own listener: `GET /metrics`, open.
pub fn standalone(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(service): State<Arc<Service>>| async move { text(&service).await }),
        )
        .fallback(health::not_found)
        .with_state(service)
}
