//! OCSP (RFC 6960): requests parsed and responses built with the
//! `x509-ocsp` crate, signed by the issuing CA's key.
//!
//! `x509-ocsp` is built on the previous RustCrypto generation (`der` 0.7,
//! `x509-cert` 0.2); this module is the only place that uses it, and it
//! crosses to the rest of lockstep as DER bytes and plain values.

use der07::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der07::{Decode, Encode};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use spki07::AlgorithmIdentifierOwned;
use x509_cert02::ext::Extension;
use x509_cert02::ext::pkix::CrlReason;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::clock::Timestamp;
use crate::keys::DeviceKey;
use crate::sessions::RevocationReason;

/// Most certificates one request may ask about.
pub const MAX_REQUESTS: usize = 16;
/// Largest OCSP request accepted, bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

const SHA1_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ECDSA_SHA256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const NONCE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// The status of one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Issued by lockstep and not revoked.
    Good,
    /// Revoked at this time for this reason.
    Revoked(Timestamp, RevocationReason),
    /// Not a certificate lockstep issued under this CA.
    Unknown,
}

/// A parsed request: which serials (hex) are asked about, and whether each
/// names our issuing CA.
pub struct Parsed {
    items: Vec<(CertId, Option<String>)>,
    nonce: Option<Vec<u8>>,
}

impl Parsed {
    /// The serials asked about under our CA, in order (`None`: the request
    /// names another issuer, answered `unknown`).
    pub fn serials(&self) -> Vec<Option<String>> {
        self.items.iter().map(|(_, s)| s.clone()).collect()
    }
}

/// Answers OCSP requests for certificates of one issuing CA.
#[derive(Clone)]
pub struct Responder {
    name_sha1: Vec<u8>,
    name_sha256: Vec<u8>,
    key_sha1: Vec<u8>,
    key_sha256: Vec<u8>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("key_sha1", &hex::encode(&self.key_sha1))
            .finish()
    }
}

/// Why a request could not be answered; each maps to an OCSP error status.
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    /// The request is not a well-formed OCSP request.
    #[error("malformed OCSP request: {0}")]
    Malformed(String),
    /// Something failed while answering (signing, encoding).
    #[error("cannot answer the OCSP request: {0}")]
    Internal(String),
    /// The signing key is unavailable right now.
    #[error("cannot sign the OCSP response now: {0}")]
    TryLater(String),
}

impl OcspError {
    /// The unsigned OCSP error response for this error.
    pub fn response(&self) -> Vec<u8> {
        let r = match self {
            Self::Malformed(_) => OcspResponse::malformed_request(),
            Self::Internal(_) => OcspResponse::internal_error(),
            Self::TryLater(_) => OcspResponse::try_later(),
        };
        r.to_der().unwrap_or_default()
    }
}

fn internal(e: impl std::fmt::Display) -> OcspError {
    OcspError::Internal(e.to_string())
}

impl Responder {
    /// A responder for the CA whose subject is `issuer_name_der` (DER of
    /// the Name) and whose public key is `issuer_spki_der`.
    pub fn new(issuer_name_der: &[u8], issuer_spki_der: &[u8]) -> Result<Self, OcspError> {
        let spki = spki07::SubjectPublicKeyInfoRef::from_der(issuer_spki_der).map_err(internal)?;
        let key = spki.subject_public_key.raw_bytes();
        Ok(Self {
            name_sha1: digest(&SHA1_FOR_LEGACY_USE_ONLY, issuer_name_der)
                .as_ref()
                .to_vec(),
            name_sha256: digest(&SHA256, issuer_name_der).as_ref().to_vec(),
            key_sha1: digest(&SHA1_FOR_LEGACY_USE_ONLY, key).as_ref().to_vec(),
            key_sha256: digest(&SHA256, key).as_ref().to_vec(),
        })
    }

    /// Parses a DER request.
    pub fn parse(&self, der: &[u8]) -> Result<Parsed, OcspError> {
        if der.len() > MAX_REQUEST_BYTES {
            return Err(OcspError::Malformed("request too large".into()));
        }
        let request =
            OcspRequest::from_der(der).map_err(|e| OcspError::Malformed(e.to_string()))?;
        let list = &request.tbs_request.request_list;
        if list.is_empty() || list.len() > MAX_REQUESTS {
            return Err(OcspError::Malformed(format!(
                "ask about 1 to {MAX_REQUESTS} certificates"
            )));
        }
        let nonce = request.nonce().map(|n| n.0.as_bytes().to_vec());
        let items = list
            .iter()
            .map(|r| {
                let id = &r.req_cert;
                let ours = self.names_us(id);
                let serial = ours.then(|| hex::encode(id.serial_number.as_bytes()));
                (id.clone(), serial)
            })
            .collect();
        Ok(Parsed { items, nonce })
    }

    /// Whether a CertID names our issuing CA (by SHA-1 or SHA-256 hashes).
    fn names_us(&self, id: &CertId) -> bool {
        let (name, key) = if id.hash_algorithm.oid == SHA1_OID {
            (&self.name_sha1, &self.key_sha1)
        } else if id.hash_algorithm.oid == SHA256_OID {
            (&self.name_sha256, &self.key_sha256)
        } else {
            return false;
        };
        id.issuer_name_hash.as_bytes() == name.as_slice()
            && id.issuer_key_hash.as_bytes() == key.as_slice()
    }

    /// The signed response for `parsed` with one status per item, valid
    /// from `now` to `next_update`. Blocks on the signing device.
    pub fn respond(
        &self,
        parsed: &Parsed,
        statuses: &[Status],
        now: Timestamp,
        next_update: Timestamp,
        key: &dyn DeviceKey,
    ) -> Result<Vec<u8>, OcspError> {
        let this = gtime(now)?;
        let next = gtime(next_update)?;
        let mut responses = Vec::with_capacity(parsed.items.len());
        for ((id, _), status) in parsed.items.iter().zip(statuses) {
            let cert_status = match status {
                Status::Good => CertStatus::Good(Null),
                Status::Unknown => CertStatus::Unknown(Null),
                Status::Revoked(at, reason) => CertStatus::Revoked(RevokedInfo {
                    revocation_time: gtime(*at)?,
                    revocation_reason: crl_reason(*reason),
                }),
            };
            responses.push(SingleResponse {
                cert_id: id.clone(),
                cert_status,
                this_update: this,
                next_update: Some(next),
                single_extensions: None,
            });
        }
        let response_extensions = match &parsed.nonce {
            None => None,
            Some(n) => {
                let nonce = Nonce(OctetString::new(n.clone()).map_err(internal)?);
                Some(vec![Extension {
                    extn_id: NONCE_OID,
                    critical: false,
                    extn_value: OctetString::new(nonce.to_der().map_err(internal)?)
                        .map_err(internal)?,
                }])
            }
        };
        let data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(self.key_sha1.clone()).map_err(internal)?,
            ),
            produced_at: this,
            responses,
            response_extensions,
        };
        let tbs = data.to_der().map_err(internal)?;
        let signature = key
            .sign(&tbs)
            .map_err(|e| OcspError::TryLater(e.to_string()))?;
        let basic = BasicOcspResponse {
            tbs_response_data: data,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ECDSA_SHA256_OID,
                parameters: None,
            },
            signature: BitString::from_bytes(&signature.to_der()).map_err(internal)?,
            certs: None,
        };
        OcspResponse::successful(basic)
            .and_then(|r| r.to_der())
            .map_err(internal)
    }
}

fn gtime(t: Timestamp) -> Result<OcspGeneralizedTime, OcspError> {
    let secs = u64::try_from(t.unix()).map_err(|_| internal("time before 1970"))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(internal)
}

fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    match reason {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_requests_are_malformed_not_panics() {
        let r = Responder {
            name_sha1: vec![0; 20],
            name_sha256: vec![0; 32],
            key_sha1: vec![0; 20],
            key_sha256: vec![0; 32],
        };
        for bad in [&b""[..], b"\x30\x00", b"garbage", &[0x30; 9000]] {
            assert!(matches!(r.parse(bad), Err(OcspError::Malformed(_))));
        }
        let resp = OcspError::Malformed("x".into()).response();
        assert_eq!(resp, vec![0x30, 0x03, 0x0a, 0x01, 0x01]);
    }
}
