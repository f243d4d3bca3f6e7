//! Health, readiness, the CA chain, and JSON answers for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::views::Health;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the store answers and the issuing key signs.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health),
    (status = 503, description = "Key backend or store unavailable", body = ErrorBody)))]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    match app.service.ready().await {
        Ok(()) => Ok(Json(Health {
            status: "ok".into(),
        })),
        Err(e) => {
            let err = ApiError::from(e);
            // Readiness fails with 503 whatever the cause.
            Err(ApiError::new(
                503,
                err.code(),
                format!("not ready: {}", err.message()),
            ))
        }
    }
}

/// The CA chain (issuing CA, then root), PEM.
#[utoipa::path(get, path = "/v1/ca", responses((status = 200, description = "PEM chain",
    content_type = "application/pem-certificate-chain", body = String)))]
pub async fn ca(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        app.service.issuer().chain_pem().to_owned(),
    )
}

/// Unknown path.
pub async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such endpoint; see /openapi.json")
}

/// Known path, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
}
