//! Timestamps of release signatures: a session's code-signing certificate
//! signed an artifact; lockstep checks the signature, the certificate and
//! the artifact against the session, then its TSA stamps the signature
//! bytes (RFC 3161), counted against the session's `signing.signatures`.
//! A key stolen from the job gets no timestamp once the session has
//! closed, nor for an artifact other than the approved one.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x509_cert::serial_number::SerialNumber;

use super::super::{Service, ServiceError};
use super::Minter;
use crate::auth::Caller;
use crate::clock::Timestamp;
use crate::keys::{PublicKey, Signature};
use crate::sessions::{CredentialFacts, CredentialKind, Profile, Session, SessionId};
use crate::store::{Finish, NewCredential};
use crate::tsa::{Stamp, TimestampAuthority};
use crate::x509::{X509Error, random_serial};

/// Longest nonce accepted, in bytes (RFC 3161 clients send 8 to 16).
const MAX_NONCE: usize = 32;

/// What the caller asks to have stamped.
#[derive(Clone, Debug)]
pub struct SignatureRequest {
    /// The artifact's digest, `sha256:<64 hex>`.
    pub artifact_digest: String,
    /// The DER ECDSA signature over the artifact (SHA-256).
    pub signature: Vec<u8>,
    /// The session certificate that made it (DER).
    pub certificate: Vec<u8>,
    /// The client's nonce (big-endian unsigned), echoed in the token.
    pub nonce: Option<Vec<u8>>,
}

/// A timestamp handed out for a session's signature.
#[derive(Clone, Debug)]
pub struct IssuedTimestamp {
    /// The session.
    pub session: SessionId,
    /// The DER `TimeStampResp`.
    pub response: Vec<u8>,
    /// The token's serial, hex.
    pub serial: String,
    /// `genTime`.
    pub gen_time: Timestamp,
    /// The artifact's digest, as checked.
    pub artifact_digest: String,
    /// The serial of the certificate that made the signature, hex.
    pub certificate_serial: String,
    /// Whether the policy closed the session after this signature.
    pub session_closed: bool,
}

/// A timestamp about to be signed: everything checked, the serial drawn.
struct TimestampMinter {
    tsa: TimestampAuthority,
    serial: SerialNumber,
    stamp: Stamp,
    facts: CredentialFacts,
}

impl Minter for TimestampMinter {
    type Output = IssuedTimestamp;

    fn credential(&self, _session: &Session) -> NewCredential {
        NewCredential {
            serial: hex::encode(self.serial.as_bytes()),
            kind: CredentialKind::Timestamp,
            profile: Profile::CodeSigning,
            counted: true,
            issuer: Some(self.tsa.fingerprint()),
        }
    }

    fn sign(
        self,
        session: &Session,
        _not_after: Timestamp,
        now: Timestamp,
    ) -> Result<(IssuedTimestamp, Finish), ServiceError> {
        let response = self.tsa.stamp(&self.stamp, now)?;
        let CredentialFacts::Timestamp {
            artifact_digest,
            certificate,
            ..
        } = &self.facts
        else {
            return Err(ServiceError::Internal("timestamp facts".into()));
        };
        let issued = IssuedTimestamp {
            session: session.id.clone(),
            response: response.clone(),
            serial: hex::encode(self.serial.as_bytes()),
            gen_time: now,
            artifact_digest: artifact_digest.clone(),
            certificate_serial: certificate.clone(),
            session_closed: session.rules.signing.close_after && session.signatures_used_up(),
        };
        let finish = Finish::Issued {
            der: Some(response),
            facts: self.facts,
        };
        Ok((issued, finish))
    }
}

/// `sha256:<64 hex>` as 32 bytes, or why not.
fn artifact_digest(text: &str) -> Result<[u8; 32], ServiceError> {
    let bad = || {
        ServiceError::BadRequest(
            "artifact_digest must be `sha256:` followed by 64 hex digits (the SHA-256 of the artifact)"
                .into(),
        )
    };
    let hex_part = text.strip_prefix("sha256:").ok_or_else(bad)?;
    let bytes = hex::decode(hex_part).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// Checks that `signature` over `digest` verifies under the certificate's
/// P-256 key.
fn check_signature(
    certificate: &[u8],
    digest: &[u8; 32],
    signature: &[u8],
) -> Result<(), ServiceError> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(certificate).map_err(|e| {
        ServiceError::BadRequest(format!("certificate: not a DER X.509 certificate: {e}"))
    })?;
    let spki = cert.tbs_certificate().subject_public_key_info().to_der()?;
    let key = PublicKey::from_spki_der(&spki).map_err(|_| {
        X509Error::UnsupportedKey(
            "signatures are checked for P-256 certificates only; sign with an EC P-256 key (`lockstep sign` does)".into(),
        )
    })?;
    let signature = Signature::from_der(signature).map_err(|_| {
        ServiceError::BadRequest("signature: not a DER ECDSA P-256 signature".into())
    })?;
    if !key.verify_digest(digest, &signature) {
        return Err(X509Error::SignatureInvalid.into());
    }
    Ok(())
}

impl Service {
    /// Timestamps a signature made by one of the session's certificates
    /// over an artifact: requester only, session open and `code-signing`,
    /// the artifact the approved one when the session names one, within
    /// the session's `signing.signatures`.
    pub async fn timestamp_signature(
        &self,
        caller: &Caller,
        id: &SessionId,
        request: SignatureRequest,
        peer: Option<IpAddr>,
    ) -> Result<IssuedTimestamp, ServiceError> {
        const ACTION: &str = "signature";
        let session = self.mintable(caller, id, ACTION).await?;
        let minter = match self.check_signature_request(&session, request).await {
            Ok(m) => m,
            Err(e) => return self.refuse(caller, Some(id), ACTION, e).await,
        };
        let issued = self.mint(caller, ACTION, session, peer, minter).await?;
        tracing::info!(session = %id, serial = %issued.serial, artifact = %issued.artifact_digest, "signature timestamped");
        Ok(issued)
    }

    /// Everything checked before a slot is taken.
    async fn check_signature_request(
        &self,
        session: &Session,
        request: SignatureRequest,
    ) -> Result<TimestampMinter, ServiceError> {
        let tsa = self.tsa.clone().ok_or(ServiceError::TsaNotConfigured)?;
        if session.request.profile != Profile::CodeSigning {
            return Err(ServiceError::Forbidden(format!(
                "this session's profile is {}; signatures are timestamped for code-signing sessions",
                session.request.profile
            )));
        }
        if let Some(approved) = &session.request.request_digest
            && !approved.starts_with("sha256:")
        {
            return Err(ServiceError::BadRequest(format!(
                "this session was approved for {approved}; lockstep timestamps signatures over SHA-256 digests: request a session with a sha256: request_digest"
            )));
        }
        let digest = artifact_digest(&request.artifact_digest)?;
        let given = format!("sha256:{}", hex::encode(digest));
        if let Some(approved) = &session.request.request_digest
            && !approved.eq_ignore_ascii_case(&given)
        {
            return Err(ServiceError::ArtifactNotApproved {
                given,
                approved: approved.clone(),
            });
        }
        if request
            .nonce
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > MAX_NONCE)
        {
            return Err(ServiceError::BadRequest(format!(
                "nonce must be 1 to {MAX_NONCE} bytes"
            )));
        }
        let issued = self.store.certificates(&session.id).await?;
        let Some((certificate, _)) = issued
            .into_iter()
            .find(|(_, der)| *der == request.certificate)
        else {
            return Err(ServiceError::CertificateNotOfSession);
        };
        check_signature(&request.certificate, &digest, &request.signature)?;
        let imprint: [u8; 32] = Sha256::digest(&request.signature).into();
        let serial = random_serial()?;
        Ok(TimestampMinter {
            tsa,
            stamp: Stamp {
                imprint,
                serial: serial.clone(),
                nonce: request.nonce,
            },
            serial,
            facts: CredentialFacts::Timestamp {
                artifact_digest: given,
                certificate,
                signature_sha256: hex::encode(imprint),
            },
        })
    }
}
