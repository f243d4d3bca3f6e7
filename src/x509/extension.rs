//! The lockstep session extension: every certificate lockstep mints names
//! the session that approved it, so a verifier or an auditor can tie the
//! certificate to its approval offline.
//!
//! OID `1.3.6.1.4.1.32473.7683.1.1` ([`oids::LOCKSTEP_SESSION_EXT`]),
//! non-critical, value:
//!
//! ```text
//! LockstepSession ::= SEQUENCE {
//!     version     INTEGER (1),
//!     sessionId   UTF8String (SIZE (1..128)),
//!     approval    [0] IMPLICIT ApprovalEvidence OPTIONAL,
//!     connections [1] IMPLICIT INTEGER (1..1000) OPTIONAL,
//!                 -- at most this many connections at once through one
//!                 -- lockstep gateway (the policy's `connections`)
//!     modbusFunctions [2] IMPLICIT OCTET STRING (SIZE (1..127)) OPTIONAL,
//!                 -- the only Modbus function codes (one byte each,
//!                 -- 1..127, ascending) a gateway lets through for the
//!                 -- session (the policy's `modbus`)
//!     artifactDigest [3] IMPLICIT UTF8String (SIZE (1..160)) OPTIONAL,
//!                 -- the artifact the approvers approved: the session's
//!                 -- `request_digest`, `sha256:<hex>` (or sha384/sha512)
//!     breakGlass  [4] IMPLICIT BOOLEAN OPTIONAL
//!                 -- TRUE: a break-glass session (opened without a
//!                 -- quorum, reviewed afterwards); absent otherwise
//! }
//!
//! ApprovalEvidence ::= SEQUENCE {
//!     requestHash OCTET STRING (SIZE (32)),  -- SHA-256 of the canonical request
//!     approvers   SEQUENCE OF UTF8String,    -- identities whose approvals opened it
//!     openedAt    GeneralizedTime            -- when the session opened
//! }
//! ```
//!
//! The certificate's `notAfter` is the session's `closes_at`.

use der::asn1::{GeneralizedTime, OctetString};
use der::{Decode, Encode, Sequence};
use x509_cert::Certificate;
use x509_cert::ext::Extension;

use super::build::generalized;
use super::{X509Error, oids};
use crate::clock::Timestamp;

/// Version written in the extension.
const VERSION: u8 = 1;
/// Longest session id accepted.
const MAX_SESSION_ID: usize = 128;

/// Which session a credential belongs to, and the approval that opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvidence {
    /// The session id.
    pub session_id: String,
    /// The approval, once the session has one.
    pub approval: Option<ApprovalEvidence>,
    /// The policy's limit on the session's connections at once through
    /// one gateway, if it sets one.
    pub connections: Option<u32>,
    /// The only Modbus function codes the policy lets the session use, if
    /// it limits them.
    pub modbus_functions: Option<Vec<u8>>,
    /// The approved artifact's digest (the session's `request_digest`).
    pub artifact_digest: Option<String>,
    /// Whether the session is break-glass.
    pub break_glass: bool,
}

/// The approval that opened a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalEvidence {
    /// SHA-256 of the session's canonical request: what the approvers approved.
    pub request_hash: [u8; 32],
    /// The approvers whose approvals reached the quorum.
    pub approvers: Vec<String>,
    /// When the session opened.
    pub opened_at: Timestamp,
}

#[derive(Sequence)]
struct Wire {
    version: u8,
    session_id: String,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    approval: Option<WireApproval>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    connections: Option<u32>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    modbus_functions: Option<OctetString>,
    #[asn1(context_specific = "3", tag_mode = "IMPLICIT", optional = "true")]
    artifact_digest: Option<String>,
    #[asn1(context_specific = "4", tag_mode = "IMPLICIT", optional = "true")]
    break_glass: Option<bool>,
}

#[derive(Sequence)]
struct WireApproval {
    request_hash: OctetString,
    approvers: Vec<String>,
    opened_at: GeneralizedTime,
}

impl SessionEvidence {
    /// Evidence carrying only the session id.
    pub fn session(id: impl Into<String>) -> Self {
        Self {
            session_id: id.into(),
            approval: None,
            connections: None,
            modbus_functions: None,
            artifact_digest: None,
            break_glass: false,
        }
    }

    /// Encodes the extension.
    pub fn to_extension(&self) -> Result<Extension, X509Error> {
        let id = &self.session_id;
        if id.is_empty()
            || id.len() > MAX_SESSION_ID
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(X509Error::InvalidName(format!(
                "session id `{}` must be 1 to {MAX_SESSION_ID} characters of [A-Za-z0-9-_.:]",
                id.escape_debug()
            )));
        }
        let approval = match &self.approval {
            None => None,
            Some(a) => Some(WireApproval {
                request_hash: OctetString::new(a.request_hash.to_vec())?,
                approvers: a.approvers.clone(),
                opened_at: generalized(a.opened_at)?,
            }),
        };
        let wire = Wire {
            version: VERSION,
            session_id: id.clone(),
            approval,
            connections: self.connections,
            modbus_functions: self
                .modbus_functions
                .as_ref()
                .map(|f| OctetString::new(f.clone()))
                .transpose()?,
            artifact_digest: self.artifact_digest.clone(),
            break_glass: self.break_glass.then_some(true),
        };
        Ok(Extension {
            extn_id: oids::LOCKSTEP_SESSION_EXT,
            critical: false,
            extn_value: OctetString::new(wire.to_der()?)?,
        })
    }

    /// Reads the extension from a certificate; `None` if it has none.
    pub fn from_certificate(cert: &Certificate) -> Result<Option<Self>, X509Error> {
        let Some(ext) = cert.tbs_certificate().extensions().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == oids::LOCKSTEP_SESSION_EXT)
        }) else {
            return Ok(None);
        };
        let wire = Wire::from_der(ext.extn_value.as_bytes())
            .map_err(|e| X509Error::Chain(format!("malformed lockstep session extension: {e}")))?;
        if wire.version != VERSION {
            return Err(X509Error::Chain(format!(
                "lockstep session extension version {} is not understood",
                wire.version
            )));
        }
        let approval = match wire.approval {
            None => None,
            Some(a) => Some(ApprovalEvidence {
                request_hash: a.request_hash.as_bytes().try_into().map_err(|_| {
                    X509Error::Chain("request hash in the session extension is not 32 bytes".into())
                })?,
                approvers: a.approvers,
                opened_at: Timestamp::from_unix(a.opened_at.to_unix_duration().as_secs() as i64),
            }),
        };
        if wire.connections == Some(0) {
            return Err(X509Error::Chain(
                "the session extension allows 0 connections".into(),
            ));
        }
        let modbus_functions = wire.modbus_functions.map(|f| f.as_bytes().to_vec());
        if let Some(f) = &modbus_functions
            && (f.is_empty() || f.iter().any(|c| !(1..=127).contains(c)))
        {
            return Err(X509Error::Chain(
                "the session extension's Modbus functions are not codes 1..127".into(),
            ));
        }
        Ok(Some(Self {
            session_id: wire.session_id,
            approval,
            connections: wire.connections,
            modbus_functions,
            artifact_digest: wire.artifact_digest,
            break_glass: wire.break_glass == Some(true),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_restricted() {
        assert!(SessionEvidence::session("ses_01J9Z").to_extension().is_ok());
        for bad in ["", "a b", "x\0", &"a".repeat(129), "é"] {
            assert_eq!(
                SessionEvidence::session(bad)
                    .to_extension()
                    .unwrap_err()
                    .code(),
                "invalid_name"
            );
        }
    }

    #[test]
    fn extension_is_non_critical_under_the_lockstep_arc() {
        let ext = SessionEvidence {
            session_id: "s1".into(),
            approval: Some(ApprovalEvidence {
                request_hash: [7; 32],
                approvers: vec!["token:alice".into(), "oidc:https://idp:bob".into()],
                opened_at: Timestamp::from_unix(1_900_000_000),
            }),
            connections: Some(2),
            modbus_functions: Some(vec![1, 2, 3, 4]),
            artifact_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            break_glass: true,
        }
        .to_extension()
        .unwrap();
        assert!(!ext.critical);
        assert_eq!(ext.extn_id, oids::LOCKSTEP_SESSION_EXT);
        let wire = Wire::from_der(ext.extn_value.as_bytes()).unwrap();
        assert_eq!(wire.session_id, "s1");
        assert_eq!(wire.approval.unwrap().approvers.len(), 2);
        assert_eq!(wire.connections, Some(2));
        assert_eq!(wire.modbus_functions.unwrap().as_bytes(), [1, 2, 3, 4]);
        assert_eq!(wire.break_glass, Some(true));
        // Without a limit the field is left out: the encoding of earlier
        // certificates.
        let plain = SessionEvidence::session("s1").to_extension().unwrap();
        assert_eq!(
            Wire::from_der(plain.extn_value.as_bytes())
                .unwrap()
                .connections,
            None
        );
        assert_eq!(
            Wire::from_der(plain.extn_value.as_bytes())
                .unwrap()
                .break_glass,
            None
        );
    }
}
