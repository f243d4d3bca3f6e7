//! Request and response bodies of the HTTP API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::Relation;
use crate::sessions::{Session, Vote, format_hash};

/// `POST /v1/sessions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSessionBody {
    /// The one resource, e.g. `db:payroll` or `release:acme/app`.
    pub resource: String,
    /// What the requester will do (shown to approvers).
    pub task: String,
    /// Optional digest binding the request to an artifact, e.g. `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// How long the session stays open once approved, seconds.
    pub duration_secs: u32,
    /// `mtls-client` or `code-signing`.
    pub profile: String,
    /// Ask under the resource's break-glass rules: opens without quorum
    /// (or on one approval), short, marked in its credentials and trail,
    /// reviewed afterwards, rate-limited per requester.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// `POST /v1/sessions/{id}/review`: a break-glass session's after-review.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `justified` or `unjustified` (an unjustified session still open is
    /// revoked).
    pub outcome: String,
    /// Why, in the reviewer's words (recorded).
    pub note: String,
}

/// A break-glass session's mark and review.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassView {
    /// `pending` (not open yet), `unneeded` (never opened), `awaiting`,
    /// `overdue`, `justified` or `unjustified`.
    pub review: String,
    /// When the review is due, RFC 3339 (once open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_by: Option<String>,
    /// Identity patterns that may review it (never its requester).
    pub reviewers: Vec<String>,
    /// Who reviewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// When, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<String>,
    /// The reviewer's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_note: Option<String>,
}

impl BreakGlassView {
    /// The view of a break-glass session's mark; none for other sessions.
    fn of(s: &Session) -> Option<Self> {
        let (bg, rules, state) = (
            s.break_glass.as_ref()?,
            s.rules.break_glass.as_ref()?,
            s.review_state()?,
        );
        let review = bg.review.as_ref();
        Some(Self {
            review: state.as_str().to_owned(),
            review_by: bg.review_by.map(|t| t.to_string()),
            reviewers: rules.reviewers.clone(),
            reviewed_by: review.map(|r| r.by.clone()),
            reviewed_at: review.map(|r| r.at.to_string()),
            review_note: review.map(|r| r.note.clone()),
        })
    }
}

/// `POST /v1/sessions/{id}/approve` and `…/deny`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    /// The request hash the approver saw (`sha256:<hex>`); an approval for
    /// another hash is refused.
    pub request_hash: String,
    /// Why (denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/sessions/{id}/revoke`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Why the session is ended (recorded and returned).
    pub reason: String,
    /// The reason code relying parties see for its certificates:
    /// `unspecified`, `key-compromise`, `affiliation-changed`, `superseded`,
    /// `cessation-of-operation` or `privilege-withdrawn` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason_code: Option<crate::sessions::RevocationReason>,
}

/// `POST /v1/sessions/{id}/certificate` with a JSON body (a raw
/// `application/pkcs10` body, PEM or DER, is accepted too).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrBody {
    /// The PKCS#10 request, PEM.
    pub csr: String,
}

/// A certificate minted for a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    /// The session.
    pub session: String,
    /// Serial, hex.
    pub serial: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The issuing CA and the root, PEM.
    pub chain: String,
    /// `notAfter`, RFC 3339: the session's `closes_at`.
    pub not_after: String,
}

/// `POST /v1/sessions/{id}/token` (the body may be empty).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The audience (`aud`); default the session's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// A certificate of this session (PEM) to bind the token to (`cnf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Or that certificate's RFC 8705 thumbprint.
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// A token minted for a session. `Debug` leaves the token out.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The session.
    pub session: String,
    /// The JWT.
    pub token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `aud`.
    pub audience: String,
    /// Its `exp`, RFC 3339: the session's `closes_at`.
    pub expires_at: String,
}

impl std::fmt::Debug for TokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenView")
            .field("session", &self.session)
            .field("jti", &self.jti)
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An RFC 7662 introspection answer: `active`, and the token's claims when
/// active.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IntrospectionView {
    /// Whether the token is valid now.
    pub active: bool,
}

/// An approval or denial.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    /// Who.
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
    /// Why (denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Vote> for VoteView {
    fn from(v: &Vote) -> Self {
        Self {
            by: v.by.clone(),
            at: v.at.to_string(),
            reason: v.reason.clone(),
        }
    }
}

/// A session as callers see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The id.
    pub id: String,
    /// `pending`, `open` or `closed`.
    pub state: String,
    /// For closed sessions: `completed`, `expired`, `revoked`, `denied` or `abandoned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    /// How the caller relates to it: `requester`, `approver`, `operator`, `auditor`.
    #[schema(value_type = String)]
    pub your_role: Relation,
    /// The tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Who asked.
    pub requester: String,
    /// The resource.
    pub resource: String,
    /// What for.
    pub task: String,
    /// The artifact digest, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// Requested duration, seconds.
    pub duration_secs: u32,
    /// Credential profile.
    pub profile: String,
    /// The canonical request hash approvers approve (`sha256:<hex>`).
    pub request_hash: String,
    /// Identity patterns whose approvals count.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// Approvals so far.
    pub approvals: Vec<VoteView>,
    /// Denials so far.
    pub denials: Vec<VoteView>,
    /// When requested, RFC 3339.
    pub created_at: String,
    /// When it is abandoned if still pending, RFC 3339.
    pub pending_until: String,
    /// When quorum was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    /// When it closes: every credential's `notAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<String>,
    /// Credentials it may mint.
    pub credentials_allowed: u32,
    /// At most this many connections of the session at once through one
    /// gateway, when the policy sets a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_allowed: Option<u32>,
    /// The only Modbus function codes a gateway lets through for the
    /// session, when the policy limits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus_functions: Option<Vec<u8>>,
    /// Credentials minted (or being minted).
    pub credentials_minted: u32,
    /// Code-signing sessions: signatures lockstep's TSA may timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures_allowed: Option<u32>,
    /// Code-signing sessions: signatures timestamped (or being stamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures_timestamped: Option<u32>,
    /// The CI identity of an OIDC requester (its token's issuer and CI
    /// claims: repository, workflow, ref, commit…), what approvers check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub build: Option<crate::sessions::CiIdentity>,
    /// When it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    /// Who closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// The reason given with a revocation or denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_note: Option<String>,
    /// Seconds until `closes_at` (open) or `pending_until` (pending).
    pub seconds_left: i64,
    /// Break-glass sessions: the mark, and where the after-review stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassView>,
}

impl SessionView {
    /// The view of `s` for a caller related to it by `role`, at `now`.
    pub fn new(s: &Session, role: Relation, now: crate::clock::Timestamp) -> Self {
        let r = &s.request;
        let signing = r.profile == crate::sessions::Profile::CodeSigning;
        Self {
            id: s.id.to_string(),
            state: s.state.as_str().to_owned(),
            close_reason: s.closure.as_ref().map(|c| c.reason.as_str().to_owned()),
            your_role: role,
            tenant: r.tenant.clone(),
            requester: r.requester.clone(),
            resource: r.resource.clone(),
            task: r.task.clone(),
            request_digest: r.request_digest.clone(),
            duration_secs: r.duration_secs,
            profile: r.profile.as_str().to_owned(),
            request_hash: format_hash(&s.request_hash),
            approvers: s.rules.approvers.clone(),
            quorum: s.rules.quorum,
            approvals: s.approvals.iter().map(VoteView::from).collect(),
            denials: s.denials.iter().map(VoteView::from).collect(),
            created_at: s.created_at.to_string(),
            pending_until: s.pending_until.to_string(),
            opened_at: s.opened_at.map(|t| t.to_string()),
            closes_at: s.closes_at.map(|t| t.to_string()),
            credentials_allowed: s.rules.credentials,
            connections_allowed: s.rules.connections,
            modbus_functions: s.rules.modbus_functions.clone(),
            credentials_minted: s.minted,
            signatures_allowed: signing.then_some(s.rules.signing.signatures),
            signatures_timestamped: signing.then_some(s.signed),
            build: s.ci.clone(),
            closed_at: s.closure.as_ref().map(|c| c.at.to_string()),
            closed_by: s.closure.as_ref().and_then(|c| c.by.clone()),
            close_note: s.closure.as_ref().and_then(|c| c.note.clone()),
            seconds_left: s.seconds_left(now),
            break_glass: BreakGlassView::of(s),
        }
    }
}

/// `GET /v1/sessions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Sessions the caller may see, newest first.
    pub sessions: Vec<SessionView>,
    /// When there may be more: pass it as `before` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// The body of `POST /v1/sessions/{id}/ssh`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshCertificateBody {
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`): ed25519,
    /// ecdsa, or RSA of 3072 bits or more.
    pub public_key: String,
}

/// An SSH user certificate minted for a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SshCertificateView {
    /// The session.
    pub session: String,
    /// The certificate, one `…-cert-v01@openssh.com` line (the
    /// `id_…-cert.pub` file).
    pub certificate: String,
    /// Its serial, decimal (as sshd logs it and `ssh-keygen -L` shows it).
    pub serial: String,
    /// Its key id: the session and the requester.
    pub key_id: String,
    /// The principals, from the policy.
    pub principals: Vec<String>,
    /// The certified key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// `valid_after`, RFC 3339: the minting second.
    pub valid_after: String,
    /// `valid_before`, RFC 3339: the session's `closes_at`.
    pub valid_before: String,
}

/// The body of `POST /v1/sessions/{id}/signature`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureBody {
    /// SHA-256 of the artifact signed, `sha256:<64 hex>`.
    pub artifact_digest: String,
    /// The DER ECDSA signature over the artifact (SHA-256), base64.
    pub signature: String,
    /// The session certificate that made it, PEM.
    pub certificate: String,
    /// A nonce, hex (up to 32 bytes), echoed in the token.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// A timestamp of a session's signature.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignatureView {
    /// The session.
    pub session: String,
    /// The DER `TimeStampResp` (RFC 3161), base64: what `openssl ts
    /// -verify -in` reads and a Sigstore bundle's `signedTimestamp` holds.
    pub timestamp: String,
    /// The token's serial, hex.
    pub serial: String,
    /// The token's `genTime`, RFC 3339.
    pub gen_time: String,
    /// The artifact's digest, as checked.
    pub artifact_digest: String,
    /// The serial of the certificate that made the signature, hex.
    pub certificate_serial: String,
    /// The TSA policy OID the token was issued under.
    pub policy: String,
    /// Whether the policy closed the session after this signature.
    pub session_closed: bool,
}
