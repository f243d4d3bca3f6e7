//! SSH: user certificates for `ssh-user` sessions, and what sshd reads
//! (the CA key for `TrustedUserCAKeys`, the KRL for `RevokedKeys`).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};

use super::error::{ApiError, ErrorBody, JsonBody};
use super::views::{SshCertificateBody, SshCertificateView};
use super::{AppState, Authenticated, Peer, SessionPath};

/// Mint an OpenSSH user certificate for the given public key:
/// `valid_before` = the session's `closes_at`, principals, extensions and
/// critical options from the policy. Requester only, session open (profile
/// `ssh-user`), within the session's credential limit.
#[utoipa::path(post, path = "/v1/sessions/{id}/ssh", operation_id = "ssh_certificate", request_body = SshCertificateBody,
    security(("bearer" = [])), params(("id" = String, Path, description = "Session id")),
    responses((status = 201, body = SshCertificateView),
        (status = 400, description = "Not an OpenSSH public key, or a kind not accepted", body = ErrorBody),
        (status = 403, description = "Not the requester, or not an ssh-user session", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not open, closed, limit reached, or no SSH CA", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 503, description = "Key backend or store unavailable", body = ErrorBody)))]
pub async fn certificate(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    SessionPath(id): SessionPath,
    peer: Option<Extension<Peer>>,
    JsonBody(body): JsonBody<SshCertificateBody>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = peer.map(|Extension(p)| p.0.ip());
    let issued = app
        .service
        .ssh_certificate(&caller, &id, &body.public_key, peer)
        .await?;
    let view = SshCertificateView {
        session: issued.session.to_string(),
        certificate: issued.certificate,
        serial: issued.serial.to_string(),
        key_id: issued.key_id,
        principals: issued.principals,
        fingerprint: issued.fingerprint,
        valid_after: issued.valid_after.to_string(),
        valid_before: issued.valid_before.to_string(),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The OpenSSH KRL (binary, `PROTOCOL.krl`) listing the SSH certificates of
/// sessions that closed early whose `valid_before` has not passed: save it
/// as sshd's `RevokedKeys` file.
#[utoipa::path(get, path = "/v1/ssh/krl", operation_id = "ssh_krl", responses((status = 200, description = "OpenSSH KRL",
    content_type = "application/octet-stream", body = Vec<u8>),
    (status = 409, description = "No SSH CA configured", body = ErrorBody),
    (status = 503, body = ErrorBody)))]
pub async fn krl(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let krl = app.service.ssh_krl().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        krl.as_ref().clone(),
    ))
}

/// The SSH CA's public key, one line for sshd's `TrustedUserCAKeys`.
#[utoipa::path(get, path = "/v1/ssh/ca.pub", operation_id = "ssh_ca_pub", responses((status = 200,
    description = "An OpenSSH public key line", content_type = "text/plain", body = String),
    (status = 409, description = "No SSH CA configured", body = ErrorBody)))]
pub async fn ca_pub(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let line = app.service.ssh_ca_line()?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    ))
}
