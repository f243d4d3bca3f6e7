//! Endpoints relying parties use: the CRL, OCSP, the token keys, token
//! introspection (RFC 7662), and minting tokens.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Form, Json};
use base64::Engine;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody, JsonBody, OptionalJsonBody};
use super::input::{session_id, token_body};
use super::views::{IntrospectionView, TokenBody, TokenView};
use super::{AppState, Authenticated, Peer, SessionPath};
use crate::revocation::ocsp::MAX_REQUEST_BYTES;
use crate::service::TokenRequest;

/// The current CRL (DER): revoked certificates of sessions that closed
/// early and whose `notAfter` has not passed.
#[utoipa::path(get, path = "/v1/crl", responses((status = 200, description = "DER CRL",
    content_type = "application/pkix-crl", body = Vec<u8>), (status = 503, body = ErrorBody)))]
pub async fn crl(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let der = app.service.crl().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        der.as_ref().clone(),
    ))
}

fn ocsp_response(der: Vec<u8>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/ocsp-response"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        der,
    )
}

/// OCSP (RFC 6960) over POST: an `application/ocsp-request` body.
#[utoipa::path(post, path = "/v1/ocsp", request_body(content = Vec<u8>,
    content_type = "application/ocsp-request"),
    responses((status = 200, description = "DER OCSP response (good, revoked or unknown; or an OCSP error status)",
    content_type = "application/ocsp-response", body = Vec<u8>)))]
pub async fn ocsp_post(State(app): State<AppState>, request: Request) -> impl IntoResponse {
    let body = match Bytes::from_request(request, &()).await {
        Ok(b) if b.len() <= MAX_REQUEST_BYTES => b,
        _ => {
            return ocsp_response(
                crate::revocation::ocsp::OcspError::Malformed("bad body".into()).response(),
            );
        }
    };
    ocsp_response(app.service.ocsp(&body).await)
}

/// OCSP (RFC 6960) over GET: the DER request, base64, in the path.
#[utoipa::path(get, path = "/v1/ocsp/{request}",
    params(("request" = String, Path, description = "base64 (URL-encoded) DER OCSP request")),
    responses((status = 200, content_type = "application/ocsp-response", body = Vec<u8>)))]
pub async fn ocsp_get(
    State(app): State<AppState>,
    encoded: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> impl IntoResponse {
    // Not UTF-8 once percent-decoded: not base64 either.
    let decoded = encoded.map_err(drop).and_then(|Path(encoded)| {
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim()))
            .map_err(drop)
    });
    match decoded {
        Ok(der) => ocsp_response(app.service.ocsp(&der).await),
        Err(()) => ocsp_response(
            crate::revocation::ocsp::OcspError::Malformed("not base64".into()).response(),
        ),
    }
}

/// The token signing key (JWK Set).
#[utoipa::path(get, path = "/.well-known/jwks.json", responses((status = 200, description = "JWK Set"),
    (status = 404, description = "Tokens are not configured", body = ErrorBody)))]
pub async fn jwks(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    app.service.jwks().map(Json).ok_or_else(|| {
        ApiError::new(
            404,
            "tokens_not_configured",
            "this lockstep does not issue tokens",
        )
    })
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this session's entries.
    pub session: Option<String>,
    /// Entries after this sequence number (paging).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The audit trail, for auditors named by the policy (tenants apart).
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, description = "entries with their chain hashes, and the cursor of the next page"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn audit(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::service::AuditPage>, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(400, "invalid_request", e.body_text()))?;
    let session = q.session.as_deref().map(session_id).transpose()?;
    let page = app
        .service
        .audit(
            &caller,
            session.as_ref(),
            q.after.unwrap_or(0),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(page))
}

/// The body of an introspection request. `Debug` leaves the token out.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct IntrospectBody {
    /// The token (`token_type_hint` and other fields are ignored).
    pub token: String,
}

impl std::fmt::Debug for IntrospectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectBody").finish_non_exhaustive()
    }
}

/// Token introspection (RFC 7662): `active` only while the token's session
/// is open. Form-encoded `token=…` (or JSON).
#[utoipa::path(post, path = "/v1/introspect", security(("bearer" = [])),
    request_body(content = IntrospectBody, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = IntrospectionView), (status = 401, body = ErrorBody)))]
pub async fn introspect(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let is_json = super::error::is_json(request.headers());
    let body: IntrospectBody = if is_json {
        JsonBody::from_request(request, &()).await?.0
    } else {
        Form::<IntrospectBody>::from_request(request, &())
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        413,
                        "body_too_large",
                        "the request body is over the size limit",
                    )
                } else if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    ApiError::new(
                        415,
                        "unsupported_media_type",
                        "send `token=<token>` as application/x-www-form-urlencoded (RFC 7662) or JSON {\"token\": …}",
                    )
                } else {
                    ApiError::new(
                        400,
                        "invalid_request",
                        "send `token=<token>` form-encoded (RFC 7662) or JSON {\"token\": …}",
                    )
                }
            })?
            .0
    };
    let answer = app.service.introspect(&caller, &body.token).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(answer)))
}

/// Mint a session-bound token (JWT, ES256): `exp` = the session's
/// `closes_at`; bound to one of the session's certificates when given.
#[utoipa::path(post, path = "/v1/sessions/{id}/token", request_body = TokenBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 201, body = TokenView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn token(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    peer: Option<Extension<Peer>>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<impl IntoResponse, ApiError> {
    // An empty body asks for a token for the resource, unbound.
    let body = token_body(body.as_deref().unwrap_or_default())?;
    let request = TokenRequest {
        audience: body.audience,
        certificate: body.certificate,
        x5t_s256: body.x5t_s256,
    };
    let peer = peer.map(|Extension(p)| p.0.ip());
    let issued = app.service.token(&caller, &id, request, peer).await?;
    let view = TokenView {
        session: issued.session.to_string(),
        token: issued.token,
        token_type: issued.token_type.to_owned(),
        jti: issued.jti,
        audience: issued.audience,
        expires_at: issued.expires_at.to_string(),
    };
    Ok((StatusCode::CREATED, Json(view)))
}
