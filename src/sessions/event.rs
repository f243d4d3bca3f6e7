//! What happened to a session: every transition returns the events it
//! caused, and the store appends them in the same transaction as the state
//! change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CloseReason;
use super::connection::ConnectionReport;
use super::credential::{CredentialFacts, CredentialKind, Held};
use crate::clock::Timestamp;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A session was requested.
    Requested {
        /// The requester.
        requester: String,
        /// The resource.
        resource: String,
        /// The canonical request hash (`sha256:…`).
        request_hash: String,
        /// Requested duration, seconds.
        duration_secs: u32,
        /// Credential profile.
        profile: String,
        /// Requested as break-glass (opens without quorum, reviewed after).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
    },
    /// An approver approved.
    Approved {
        /// Who.
        by: String,
    },
    /// An approver denied.
    Denied {
        /// Who.
        by: String,
        /// Why, as given.
        reason: Option<String>,
    },
    /// Quorum was reached: the session opened.
    Opened {
        /// The close time, fixed now.
        closes_at: Timestamp,
        /// The approvers whose approvals opened it.
        approvers: Vec<String>,
    },
    /// A credential was minted. Each kind says its own facts: a
    /// certificate its key, a token its `jti`, audience and the
    /// certificate it is bound to. Entries written before kinds were
    /// recorded are certificates or tokens by their serial (`tok_…`).
    Minted {
        /// `certificate`, `token` or `ssh-certificate`.
        #[serde(default)]
        kind: CredentialKind,
        /// Certificate serial (hex) or token `jti`.
        serial: String,
        /// The credential's profile (`mtls-client`, `code-signing`,
        /// `token`).
        profile: String,
        /// Certificates: SHA-256 of the subject public key, hex (SSH
        /// certificates: of the certified key's wire encoding).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_sha256: Option<String>,
        /// Tokens: the `jti`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        /// Tokens: the audience.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
        /// Tokens: the RFC 8705 thumbprint of the certificate the token is
        /// bound to (`cnf`), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x5t_s256: Option<String>,
        /// SSH certificates: the certified key's fingerprint (`SHA256:…`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// SSH certificates: the principals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principals: Option<Vec<String>>,
        /// `notAfter` / `exp` / `valid_before`.
        not_after: Timestamp,
        /// Whether it was handed out (false: the session closed while it
        /// was being signed, so it was withheld).
        handed_out: bool,
    },
    /// lockstep's TSA timestamped a signature the session's certificate
    /// made over the artifact: the release signing on the record.
    Signed {
        /// The timestamp token's serial (hex).
        serial: String,
        /// The artifact's digest (`sha256:<hex>`).
        artifact_digest: String,
        /// The serial of the session certificate that made the signature.
        certificate: String,
        /// SHA-256 of the signature bytes (the token's imprint), hex.
        signature_sha256: String,
        /// Whether the token was handed out (false: the session closed
        /// while it was being signed).
        handed_out: bool,
    },
    /// A credential slot reserved before a crash was given back; the serial
    /// was never handed out.
    Voided {
        /// Certificate serial (hex) or token `jti`.
        serial: String,
        /// The process that had reserved it (gone, or past its lease).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// The session closed.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Who closed it (none for expiry and abandonment).
        by: Option<String>,
        /// The reason given with a revocation.
        note: Option<String>,
    },
    /// A reviewer recorded a break-glass session's after-review.
    Reviewed {
        /// The reviewer.
        by: String,
        /// What they found.
        outcome: super::Outcome,
        /// Why.
        note: String,
    },
    /// A break-glass session's review was not recorded by its deadline:
    /// the session is flagged until reviewed.
    ReviewOverdue {
        /// When the review was due.
        review_by: Timestamp,
    },
    /// A Shared Signals transmitter's SET was received and verified:
    /// what it said, and the sessions it ended (each also closed with its
    /// own `closed` entry).
    Signal {
        /// The transmitter (`iss`).
        transmitter: String,
        /// The SET's `jti`.
        jti: String,
        /// Its event types (short names for the known ones).
        events: Vec<String>,
        /// Its subject, as lockstep matched it.
        subject: String,
        /// The sessions it ended.
        ended: Vec<String>,
    },
    /// The service started.
    ServiceStarted {
        /// lockstep's version.
        version: String,
        /// SHA-256 of the policy file in force, hex.
        policy_sha256: String,
        /// SHA-256 of the issuing CA's public key, hex.
        issuer_key_sha256: String,
    },
    /// The service stopped (gracefully).
    ServiceStopped,
    /// A key was generated on the device by `lockstep init`.
    KeyInitialised {
        /// Its role (`root`, `issuing`, `token`, `audit`).
        role: String,
        /// Its reference (label, id or handle).
        key: String,
        /// SHA-256 of its public key, hex.
        key_sha256: String,
    },
    /// The root certified another issuing CA (`lockstep certify-issuer`):
    /// a replica with an issuing key of its own.
    IssuingCaCertified {
        /// Its subject, RFC 4514.
        subject: String,
        /// Its certificate's serial, hex.
        serial: String,
        /// SHA-256 of its public key, hex.
        key_sha256: String,
        /// When its certificate expires.
        not_after: crate::clock::Timestamp,
    },
    /// A gateway carried a connection for the session (reported by the
    /// gateway, once per report id, after the connection ended).
    Connection {
        /// The gateway's identity.
        gateway: String,
        /// What it reported.
        connection: ConnectionReport,
    },
    /// A call was refused.
    Refused {
        /// The caller, if authenticated.
        caller: Option<String>,
        /// What was attempted (`approve`, `certificate`, …).
        action: String,
        /// The error code returned.
        code: String,
    },
    /// Refused calls without a valid credential beyond the rate at which
    /// they are recorded one by one (`[audit] anonymous_refusals_*`),
    /// counted instead. The entry's time ends the period.
    RefusalsCounted {
        /// How many, in all.
        count: u64,
        /// How many per error code.
        codes: BTreeMap<String, u64>,
        /// When the first of them was refused.
        since: Timestamp,
    },
}

impl Event {
    /// The `minted` entry of a credential.
    pub fn minted(held: &Held, profile: &str, facts: &CredentialFacts, handed_out: bool) -> Self {
        if let CredentialFacts::Timestamp {
            artifact_digest,
            certificate,
            signature_sha256,
        } = facts
        {
            return Self::Signed {
                serial: held.serial.clone(),
                artifact_digest: artifact_digest.clone(),
                certificate: certificate.clone(),
                signature_sha256: signature_sha256.clone(),
                handed_out,
            };
        }
        let (mut fingerprint, mut principals) = (None, None);
        let (key_sha256, jti, audience, x5t_s256) = match facts {
            CredentialFacts::Certificate { key_sha256 } => {
                (Some(key_sha256.clone()), None, None, None)
            }
            CredentialFacts::Token { audience, x5t_s256 } => (
                None,
                Some(held.serial.clone()),
                Some(audience.clone()),
                x5t_s256.clone(),
            ),
            CredentialFacts::SshCertificate {
                key_sha256,
                fingerprint: f,
                principals: p,
            } => {
                (fingerprint, principals) = (Some(f.clone()), Some(p.clone()));
                (Some(key_sha256.clone()), None, None, None)
            }
            CredentialFacts::Timestamp { .. } => (None, None, None, None),
        };
        Self::Minted {
            kind: facts.kind(),
            serial: held.serial.clone(),
            profile: profile.to_owned(),
            key_sha256,
            jti,
            audience,
            x5t_s256,
            fingerprint,
            principals,
            not_after: held.not_after,
            handed_out,
        }
    }

    /// A short name for the event kind (`requested`, `approved`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Requested { .. } => "requested",
            Self::Approved { .. } => "approved",
            Self::Denied { .. } => "denied",
            Self::Opened { .. } => "opened",
            Self::Minted { .. } => "minted",
            Self::Signed { .. } => "signed",
            Self::Voided { .. } => "voided",
            Self::Closed { .. } => "closed",
            Self::Reviewed { .. } => "reviewed",
            Self::ReviewOverdue { .. } => "review_overdue",
            Self::Connection { .. } => "connection",
            Self::Refused { .. } => "refused",
            Self::RefusalsCounted { .. } => "refusals_counted",
            Self::Signal { .. } => "signal",
            Self::ServiceStarted { .. } => "service_started",
            Self::ServiceStopped => "service_stopped",
            Self::KeyInitialised { .. } => "key_initialised",
            Self::IssuingCaCertified { .. } => "issuing_ca_certified",
        }
    }
}
