//! Release signing: timestamps of the signatures a `code-signing`
//! session's certificate made, and the timestamp authority's chain.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use der::DecodePem;

use super::error::{ApiError, ErrorBody, JsonBody};
use super::views::{SignatureBody, SignatureView};
use super::{AppState, Authenticated, Peer, SessionPath};
use crate::service::{ServiceError, SignatureRequest};

/// Timestamp a signature over an artifact made by one of this session's
/// certificates: lockstep checks that the session is open, the
/// certificate is one it issued, the signature verifies under it, and the
/// artifact is the approved one (`request_digest`) when the session names
/// one; then its TSA stamps the signature bytes (RFC 3161) and the trail
/// records a `signed` entry. Requester only, within the session's
/// `signing.signatures` (one by default).
#[utoipa::path(post, path = "/v1/sessions/{id}/signature", operation_id = "timestamp_signature", request_body = SignatureBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 201, body = SignatureView),
        (status = 400, description = "Malformed digest, signature, certificate or nonce; a signature that does not verify", body = ErrorBody),
        (status = 403, description = "Not the requester, not a code-signing session, not the approved artifact, or not this session's certificate", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not open, closed, signatures used up, or no TSA", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 503, description = "Key backend or store unavailable", body = ErrorBody)))]
pub async fn signature(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    peer: Option<Extension<Peer>>,
    JsonBody(body): JsonBody<SignatureBody>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = peer.map(|Extension(p)| p.0.ip());
    let request = decode(body)?;
    let issued = app
        .service
        .timestamp_signature(&caller, &id, request, peer)
        .await?;
    let view = SignatureView {
        session: issued.session.to_string(),
        timestamp: B64.encode(&issued.response),
        serial: issued.serial,
        gen_time: issued.gen_time.to_string(),
        artifact_digest: issued.artifact_digest,
        certificate_serial: issued.certificate_serial,
        policy: crate::x509::oids::TSA_POLICY.to_string(),
        session_closed: issued.session_closed,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The body's fields as bytes, or which one is malformed.
fn decode(body: SignatureBody) -> Result<SignatureRequest, ServiceError> {
    let signature = B64.decode(body.signature.trim()).map_err(|_| {
        ServiceError::BadRequest("signature must be base64 (standard alphabet)".into())
    })?;
    let certificate = x509_cert::Certificate::from_pem(body.certificate.trim())
        .and_then(|c| der::Encode::to_der(&c))
        .map_err(|e| {
            ServiceError::BadRequest(format!("certificate must be one PEM certificate: {e}"))
        })?;
    let nonce = body
        .nonce
        .map(|n| hex::decode(&n).map_err(|_| ServiceError::BadRequest("nonce must be hex".into())))
        .transpose()?;
    Ok(SignatureRequest {
        artifact_digest: body.artifact_digest,
        signature,
        certificate,
        nonce,
    })
}

/// The timestamp authority's chain, PEM: its certificate (EKU
/// timeStamping, critical), the issuing CA, the root. What verifiers of
/// its tokens need beside the root.
#[utoipa::path(get, path = "/v1/tsa", operation_id = "tsa_chain", responses((status = 200,
    description = "PEM certificates, the TSA's first", content_type = "application/pem-certificate-chain", body = String),
    (status = 409, description = "No timestamp authority configured", body = ErrorBody)))]
pub async fn tsa_chain(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let pem = app.service.tsa_chain_pem()?;
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        pem,
    ))
}
