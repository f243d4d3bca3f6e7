//! Sigstore's formats for what lockstep signs and stamps: the bundle
//! (v0.3: the certificate, the message signature, one RFC 3161 timestamp,
//! no transparency-log entries) and the `trusted_root.json` naming
//! lockstep's CA chain and its TSA chain, so verifiers that speak Sigstore
//! (`@sigstore/verify`) check lockstep's releases with no public log.
//!
//! Field names follow sigstore/protobuf-specs' JSON mapping (camelCase,
//! bytes as standard base64).

pub mod verify;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use der::Encode;
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use crate::clock::Timestamp;
use crate::x509::X509Error;

/// The bundle's media type.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The trusted root's media type.
pub const TRUSTED_ROOT_MEDIA_TYPE: &str =
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1";

/// A Sigstore bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    pub media_type: String,
    /// The certificate and the timestamps.
    pub verification_material: VerificationMaterial,
    /// The signature over the artifact.
    pub message_signature: MessageSignature,
}

/// What a verifier checks the signature with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// The session's code-signing certificate.
    pub certificate: RawBytes,
    /// Always empty: lockstep's timestamp stands in for a log.
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
    /// The RFC 3161 timestamps.
    pub timestamp_verification_data: TimestampVerificationData,
}

/// DER bytes, base64.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawBytes {
    /// Base64 of the DER.
    pub raw_bytes: String,
}

impl RawBytes {
    /// `der` as base64.
    pub fn of(der: &[u8]) -> Self {
        Self {
            raw_bytes: B64.encode(der),
        }
    }

    /// The bytes, or why not.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        B64.decode(&self.raw_bytes)
            .map_err(|_| "rawBytes is not base64".to_owned())
    }
}

/// The timestamps of the signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimestampVerificationData {
    /// One per TSA; lockstep writes one.
    pub rfc3161_timestamps: Vec<SignedTimestamp>,
}

/// An RFC 3161 timestamp.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedTimestamp {
    /// Base64 of the DER `TimeStampResp`.
    pub signed_timestamp: String,
}

/// The signature over the artifact and the artifact's digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSignature {
    /// The artifact's digest.
    pub message_digest: MessageDigest,
    /// Base64 of the DER ECDSA signature.
    pub signature: String,
}

/// A digest and its algorithm.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDigest {
    /// `SHA2_256`.
    pub algorithm: String,
    /// Base64 of the digest.
    pub digest: String,
}

impl Bundle {
    /// The bundle for `signature` over an artifact with SHA-256 `digest`,
    /// by `certificate` (DER), stamped by `timestamp` (DER TimeStampResp).
    pub fn new(certificate: &[u8], digest: &[u8; 32], signature: &[u8], timestamp: &[u8]) -> Self {
        Self {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial {
                certificate: RawBytes::of(certificate),
                tlog_entries: Vec::new(),
                timestamp_verification_data: TimestampVerificationData {
                    rfc3161_timestamps: vec![SignedTimestamp {
                        signed_timestamp: B64.encode(timestamp),
                    }],
                },
            },
            message_signature: MessageSignature {
                message_digest: MessageDigest {
                    algorithm: "SHA2_256".to_owned(),
                    digest: B64.encode(digest),
                },
                signature: B64.encode(signature),
            },
        }
    }
}

/// A Sigstore trusted root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedRoot {
    /// [`TRUSTED_ROOT_MEDIA_TYPE`].
    pub media_type: String,
    /// None: no transparency log.
    #[serde(default)]
    pub tlogs: Vec<serde_json::Value>,
    /// lockstep's CA: issuing CA then root.
    pub certificate_authorities: Vec<Authority>,
    /// None: no certificate transparency.
    #[serde(default)]
    pub ctlogs: Vec<serde_json::Value>,
    /// lockstep's TSA: its certificate, the issuing CA, the root.
    pub timestamp_authorities: Vec<Authority>,
}

/// A certificate or timestamp authority of a trusted root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// Who it is.
    pub subject: AuthoritySubject,
    /// Where it is (lockstep's server URL).
    pub uri: String,
    /// Its chain, its own certificate first, up to the self-signed root.
    pub cert_chain: CertChain,
    /// When it may have signed: its certificate's validity.
    pub valid_for: ValidFor,
}

/// An authority's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthoritySubject {
    /// `O`.
    pub organization: String,
    /// `CN`.
    pub common_name: String,
}

/// DER certificates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertChain {
    /// The first is the authority's own.
    pub certificates: Vec<RawBytes>,
}

/// A validity window, RFC 3339.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidFor {
    /// From.
    pub start: String,
    /// Until.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

impl TrustedRoot {
    /// The trusted root for the CA `chain` (issuing CA first, root last)
    /// and the TSA chain (its certificate first), served at `uri`.
    pub fn new(chain: &[Certificate], tsa: &[Certificate], uri: &str) -> Result<Self, X509Error> {
        Ok(Self {
            media_type: TRUSTED_ROOT_MEDIA_TYPE.to_owned(),
            tlogs: Vec::new(),
            certificate_authorities: vec![authority(chain, uri)?],
            ctlogs: Vec::new(),
            timestamp_authorities: vec![authority(tsa, uri)?],
        })
    }
}

fn authority(chain: &[Certificate], uri: &str) -> Result<Authority, X509Error> {
    let first = chain
        .first()
        .ok_or_else(|| X509Error::Chain("an empty chain".into()))?;
    let tbs = first.tbs_certificate();
    let validity = tbs.validity();
    let time = |t: &x509_cert::time::Time| {
        Timestamp::from_unix(t.to_unix_duration().as_secs() as i64).to_string()
    };
    let certificates = chain
        .iter()
        .map(|c| c.to_der().map(|d| RawBytes::of(&d)))
        .collect::<Result<_, _>>()?;
    let text = |v: der::Result<Option<x509_cert::ext::pkix::name::DirectoryString>>| {
        v.ok().flatten().map(String::from).unwrap_or_default()
    };
    Ok(Authority {
        subject: AuthoritySubject {
            organization: text(tbs.subject().organization()),
            common_name: text(tbs.subject().common_name()),
        },
        uri: uri.to_owned(),
        cert_chain: CertChain { certificates },
        valid_for: ValidFor {
            start: time(&validity.not_before),
            end: Some(time(&validity.not_after)),
        },
    })
}
