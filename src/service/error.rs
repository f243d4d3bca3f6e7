//! The service's errors, each with its machine code and HTTP status.

use crate::auth::AuthError;
use crate::keys::KeyError;
use crate::policy::Refusal;
use crate::sessions::{SessionError, SessionId};
use crate::store::StoreError;
use crate::x509::X509Error;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller is not authenticated.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The policy does not allow the request.
    #[error(transparent)]
    Policy(#[from] Refusal),
    /// The session refused the operation.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CSR was refused or minting failed.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// The key backend failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Not allowed, for a reason the message gives.
    #[error("{0}")]
    Forbidden(String),
    /// No such session (or none the caller may see).
    #[error("no session {0} that you may see")]
    NotFound(SessionId),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A condition of the policy no longer holds; the session was revoked.
    #[error("condition failed: {0}; the session has been revoked")]
    ConditionFailed(String),
    /// The token audience is not allowed for the session's resource.
    #[error(
        "audience `{0}` is not allowed for this resource (ask for the resource itself or one the policy lists)"
    )]
    AudienceNotAllowed(String),
    /// No token key is configured.
    #[error("tokens are not configured: add [keys.token] and run `lockstep init`")]
    TokensNotConfigured,
    /// The artifact signed is not the one the session was approved for.
    #[error(
        "the artifact's digest {given} is not the approved one ({approved}): sign the artifact the approvers saw, or request a new session for this one"
    )]
    ArtifactNotApproved {
        /// The digest sent.
        given: String,
        /// The session's `request_digest`.
        approved: String,
    },
    /// The certificate sent is not one the session was issued.
    #[error(
        "the certificate is not one this session issued: send the session's own code-signing certificate"
    )]
    CertificateNotOfSession,
    /// No timestamp authority key is configured.
    #[error("the timestamp authority is not configured: add [keys.tsa] and run `lockstep init`")]
    TsaNotConfigured,
    /// No SSH CA key is configured.
    #[error("SSH certificates are not configured: add [keys.ssh] and run `lockstep init`")]
    SshNotConfigured,
    /// The public key to certify is not usable.
    #[error("{0}")]
    SshPublicKey(String),
    /// The credential's reservation lapsed while the device was signing
    /// it; nothing was handed out.
    #[error(
        "the device took longer than the reservation's lease to sign; nothing was issued: ask again"
    )]
    ReservationLapsed,
    /// The service is shutting down.
    #[error("the service is stopping; try again")]
    Stopping,
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::events::EventsError> for ServiceError {
    fn from(e: crate::events::EventsError) -> Self {
        match e {
            crate::events::EventsError::Store(s) => Self::Store(s),
            crate::events::EventsError::Stopping => Self::Stopping,
        }
    }
}

impl From<crate::revocation::RevocationError> for ServiceError {
    fn from(e: crate::revocation::RevocationError) -> Self {
        use crate::revocation::RevocationError;
        match e {
            RevocationError::Store(s) => Self::Store(s),
            RevocationError::X509(x) => Self::X509(x),
            RevocationError::Ssh(s) => s.into(),
            RevocationError::Task(t) => Self::Internal(t),
        }
    }
}

impl From<crate::ssh::SshError> for ServiceError {
    fn from(e: crate::ssh::SshError) -> Self {
        match e {
            crate::ssh::SshError::PublicKey(m) => Self::SshPublicKey(format!("public_key: {m}")),
            crate::ssh::SshError::Device(k) => Self::Key(k),
            crate::ssh::SshError::Encoding(m) => Self::Internal(m),
        }
    }
}

impl From<der::Error> for ServiceError {
    fn from(e: der::Error) -> Self {
        Self::Internal(format!("DER: {e}"))
    }
}

impl From<crate::lane::LaneError> for ServiceError {
    fn from(e: crate::lane::LaneError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl ServiceError {
    /// The code a refusal of this error is recorded with in the audit
    /// trail: [`ServiceError::code`], except where that hides the reason
    /// from the caller.
    pub fn recorded_code(&self) -> &'static str {
        match self {
            Self::Policy(r) => r.recorded_code(),
            other => other.code(),
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Auth(e) => e.code(),
            Self::Policy(e) => e.code(),
            Self::Session(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::X509(e) => e.code(),
            Self::Key(e) => e.code(),
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "session_not_found",
            Self::BadRequest(_) => "invalid_request",
            Self::ConditionFailed(_) => "condition_failed",
            Self::AudienceNotAllowed(_) => "audience_not_allowed",
            Self::TokensNotConfigured => "tokens_not_configured",
            Self::SshNotConfigured => "ssh_not_configured",
            Self::TsaNotConfigured => "tsa_not_configured",
            Self::ArtifactNotApproved { .. } => "artifact_not_approved",
            Self::CertificateNotOfSession => "certificate_not_of_session",
            Self::SshPublicKey(_) => "invalid_public_key",
            Self::ReservationLapsed => "reservation_lapsed",
            Self::Stopping => "service_stopping",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::Auth(AuthError::Unavailable(_)) => 503,
            Self::Auth(AuthError::Config(_)) => 500,
            Self::Auth(_) => 401,
            Self::Policy(_)
            | Self::Forbidden(_)
            | Self::ConditionFailed(_)
            | Self::AudienceNotAllowed(_)
            | Self::ArtifactNotApproved { .. }
            | Self::CertificateNotOfSession => 403,
            Self::TokensNotConfigured | Self::SshNotConfigured | Self::TsaNotConfigured => 409,
            Self::SshPublicKey(_) => 400,
            Self::Session(e) => match e {
                SessionError::InvalidRequest(_) | SessionError::InvalidDuration(_) => 400,
                SessionError::SelfApproval
                | SessionError::NotAnApprover
                | SessionError::NotRequester(_)
                | SessionError::SelfReview
                | SessionError::NotAReviewer => 403,
                SessionError::NotBreakGlass
                | SessionError::NothingToReview(_)
                | SessionError::AlreadyReviewed(_) => 409,
                SessionError::BreakGlassLimit(_) => 429,
                SessionError::NotPending(_)
                | SessionError::NotOpen(_)
                | SessionError::Closed(_)
                | SessionError::HashMismatch
                | SessionError::AlreadyVoted(_)
                | SessionError::LimitReached(_)
                | SessionError::SignatureLimitReached(_) => 409,
            },
            Self::Store(StoreError::NotFound(_)) | Self::NotFound(_) => 404,
            Self::Store(_) | Self::ReservationLapsed | Self::Stopping => 503,
            Self::X509(X509Error::Key(k)) | Self::Key(k) => key_status(k),
            Self::X509(X509Error::CsrTooLarge { .. }) => 413,
            Self::X509(X509Error::Encoding(_)) | Self::X509(X509Error::Chain(_)) => 500,
            Self::X509(_) => 400,
            Self::BadRequest(_) => 400,
            Self::Internal(_) => 500,
        }
    }
}

fn key_status(e: &KeyError) -> u16 {
    match e {
        KeyError::Unavailable { .. } | KeyError::Login { .. } => 503,
        _ => 500,
    }
}
