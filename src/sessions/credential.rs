//! The rules for a session's credentials, from the slot taken before the
//! device signs to the credential handed out, withheld, voided or revoked.
//!
//! Pure like the rest of the core: each function looks at the session and
//! the credential and says what must happen; the ledger executes it.

use serde::{Deserialize, Serialize};

use super::{CloseReason, Closure, Event, RevocationReason, Session, State};
use crate::clock::Timestamp;

/// What kind of credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// An X.509 certificate (identified by its serial).
    #[default]
    Certificate,
    /// A session-bound JWT (identified by its `jti`).
    Token,
    /// An OpenSSH user certificate (identified by its serial, 16 hex
    /// digits).
    SshCertificate,
    /// An RFC 3161 timestamp of a signature the session's certificate
    /// made (identified by the token's serial, hex).
    Timestamp,
}

impl CredentialKind {
    /// The kind's name, as stored and recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Token => "token",
            Self::SshCertificate => "ssh-certificate",
            Self::Timestamp => "timestamp",
        }
    }

    /// The kind named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "certificate" => Some(Self::Certificate),
            "token" => Some(Self::Token),
            "ssh-certificate" => Some(Self::SshCertificate),
            "timestamp" => Some(Self::Timestamp),
            _ => None,
        }
    }

    /// Whether relying parties learn of its revocation from a list the
    /// issuer signs or serves (the CRL and OCSP for certificates, the KRL
    /// for SSH certificates), rather than from the session's state
    /// (tokens, through introspection).
    pub fn listed_when_revoked(self) -> bool {
        matches!(self, Self::Certificate | Self::SshCertificate)
    }
}

/// Where a credential is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialState {
    /// Its slot is taken and the device is signing it.
    Reserved,
    /// Signed and handed out.
    Issued,
    /// Signed, but the session closed meanwhile: never handed out.
    Withheld,
    /// Its reservation was abandoned (its owner died or its lease ran
    /// out): never handed out.
    Void,
}

impl CredentialState {
    /// The state's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Issued => "issued",
            Self::Withheld => "withheld",
            Self::Void => "void",
        }
    }

    /// The state named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "reserved" => Self::Reserved,
            "issued" => Self::Issued,
            "withheld" => Self::Withheld,
            "void" => Self::Void,
            _ => return None,
        })
    }
}

/// What the trail says about a minted credential besides its serial:
/// each kind its own facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialFacts {
    /// A certificate.
    Certificate {
        /// SHA-256 of its subject public key, hex.
        key_sha256: String,
    },
    /// A token.
    Token {
        /// Its audience.
        audience: String,
        /// The RFC 8705 thumbprint of the certificate it is bound to.
        x5t_s256: Option<String>,
    },
    /// An SSH user certificate.
    SshCertificate {
        /// SHA-256 of the certified key's wire encoding, hex.
        key_sha256: String,
        /// The same, as `ssh-keygen -l` prints it (`SHA256:…`).
        fingerprint: String,
        /// The principals it names.
        principals: Vec<String>,
    },
    /// A timestamp of a signature.
    Timestamp {
        /// The artifact's digest (`sha256:<hex>`).
        artifact_digest: String,
        /// The serial of the certificate that made the signature.
        certificate: String,
        /// SHA-256 of the signature bytes, hex.
        signature_sha256: String,
    },
}

impl CredentialFacts {
    /// The kind these facts describe.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::Certificate { .. } => CredentialKind::Certificate,
            Self::Token { .. } => CredentialKind::Token,
            Self::SshCertificate { .. } => CredentialKind::SshCertificate,
            Self::Timestamp { .. } => CredentialKind::Timestamp,
        }
    }

    /// The key fingerprint kept with the credential: the subject key of a
    /// certificate, the bound certificate of a token.
    pub fn key_sha256(&self) -> Option<&str> {
        match self {
            Self::Certificate { key_sha256 } | Self::SshCertificate { key_sha256, .. } => {
                Some(key_sha256)
            }
            Self::Token { x5t_s256, .. } => x5t_s256.as_deref(),
            Self::Timestamp { .. } => None,
        }
    }
}

/// A credential slot taken before signing, as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Serial (hex) or `jti`.
    pub serial: String,
    /// What it is.
    pub kind: CredentialKind,
    /// Whether it took one of the session's counted slots.
    pub counted: bool,
    /// `notAfter` / `exp`.
    pub not_after: Timestamp,
}

/// How a signed credential ends, decided once the device has signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The state it moves to from `Reserved`.
    pub state: CredentialState,
    /// Why it is not handed out, when it is withheld.
    pub withheld: Option<CloseReason>,
    /// Revoke it at once (it exists, and its session is over).
    pub revoke: Option<(Timestamp, RevocationReason)>,
    /// The `minted` entry.
    pub event: Event,
}

/// Decides what becomes of a credential the device signed, given the
/// session with time applied: handed out while the session is open,
/// withheld (and, when it is listed, revoked) once it has closed.
pub fn complete(
    session: &Session,
    held: &Held,
    profile: &str,
    facts: &CredentialFacts,
) -> Completion {
    let withheld = match (session.state, &session.closure) {
        (State::Open, _) => None,
        (_, Some(c)) => Some(c.reason),
        (_, None) => Some(CloseReason::Revoked),
    };
    // Signed after its session closed: it exists, so it goes on the CRL
    // like the session's other credentials (a close has already listed
    // it while it was reserved; listing it twice is harmless).
    let revoke = withheld
        .and(session.closure.as_ref())
        .and_then(|c| revocation_at_close(c, held.kind, held.not_after));
    let event = Event::minted(held, profile, facts, withheld.is_none());
    Completion {
        state: if withheld.is_none() {
            CredentialState::Issued
        } else {
            CredentialState::Withheld
        },
        withheld,
        revoke,
        event,
    }
}

/// Whether a session that ended with `closure` revokes a credential of
/// `kind` valid until `not_after`, and when and why: closing, revoking or
/// denying ends what is still valid and listed; expiry and abandonment
/// end nothing that is still valid.
pub fn revocation_at_close(
    closure: &Closure,
    kind: CredentialKind,
    not_after: Timestamp,
) -> Option<(Timestamp, RevocationReason)> {
    let reason = closure.revocation()?;
    (kind.listed_when_revoked() && not_after > closure.at).then_some((closure.at, reason))
}

/// Whether whoever holds a reservation is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerStatus {
    /// Alive: it may still finish.
    Alive,
    /// Provably gone (its process ended).
    Gone,
    /// Cannot be told from here (another machine): only the lease decides.
    Unknown,
}

/// A reservation found in the store, with its owner's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// The credential.
    pub held: Held,
    /// Its session.
    pub session: super::SessionId,
    /// Who took it.
    pub owner: String,
    /// Until when its owner may finish it.
    pub lease_until: Timestamp,
    /// Whether its owner is still there.
    pub owner_status: OwnerStatus,
}

/// Whether a reservation is provably abandoned, so it may be voided and
/// its slot given back: its owner is gone, or its lease ran out. A live
/// owner's reservation within its lease is never voided.
pub fn abandoned(r: &Reserved, now: Timestamp) -> bool {
    r.owner_status == OwnerStatus::Gone || now >= r.lease_until
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(status: OwnerStatus, lease_until: i64) -> Reserved {
        Reserved {
            held: Held {
                serial: "aa".into(),
                kind: CredentialKind::Certificate,
                counted: true,
                not_after: Timestamp::from_unix(1000),
            },
            session: super::super::SessionId::generate().unwrap(),
            owner: "own_x".into(),
            lease_until: Timestamp::from_unix(lease_until),
            owner_status: status,
        }
    }

    #[test]
    fn only_provably_abandoned_reservations_are_voided() {
        let now = Timestamp::from_unix(100);
        assert!(!abandoned(&reserved(OwnerStatus::Alive, 101), now));
        assert!(!abandoned(&reserved(OwnerStatus::Unknown, 101), now));
        assert!(abandoned(&reserved(OwnerStatus::Gone, 101), now));
        assert!(abandoned(&reserved(OwnerStatus::Alive, 100), now));
        assert!(abandoned(&reserved(OwnerStatus::Unknown, 99), now));
    }

    #[test]
    fn closes_revoke_listed_credentials_that_are_still_valid() {
        let closure = |reason| Closure {
            reason,
            at: Timestamp::from_unix(500),
            by: None,
            note: None,
            revocation_reason: None,
        };
        let cert = CredentialKind::Certificate;
        let later = Timestamp::from_unix(600);
        assert_eq!(
            revocation_at_close(&closure(CloseReason::Completed), cert, later),
            Some((
                Timestamp::from_unix(500),
                RevocationReason::CessationOfOperation
            ))
        );
        assert_eq!(
            revocation_at_close(&closure(CloseReason::Expired), cert, later),
            None
        );
        assert_eq!(
            revocation_at_close(
                &closure(CloseReason::Completed),
                CredentialKind::Token,
                later
            ),
            None
        );
        assert_eq!(
            revocation_at_close(
                &closure(CloseReason::Denied),
                cert,
                Timestamp::from_unix(500)
            ),
            None
        );
    }
}
