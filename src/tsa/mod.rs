//! lockstep's timestamp authority: RFC 3161 tokens signed by a key in the
//! HSM/TPM (`[keys.tsa]`), certified by the issuing CA for timeStamping
//! alone (critical EKU), kept in `[ca] dir`/tsa.pem.
//!
//! It stamps only through a session (`POST /v1/sessions/{id}/signature`):
//! the imprint is SHA-256 of the signature bytes a session's certificate
//! made, so the token proves the signature existed while the certificate
//! was valid, long after it expired. Each token is a `TimeStampResp`
//! (status granted) whose `SignedData` carries the TSA certificate and the
//! issuing CA, the signed attributes `contentType`, `messageDigest` and
//! ESS `signingCertificateV2`, and a `TSTInfo` under policy
//! [`oids::TSA_POLICY`] with accuracy 1 s and the client's nonce echoed.

pub mod tst;

use std::path::Path;
use std::sync::Arc;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, Int, OctetString, SetOfVec};
use der::{Decode, Encode, EncodePem};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::keys::DeviceKey;
use crate::x509::{Issuer, SubjectName, X509Error, generalized, oids};
use tst::{
    Accuracy, EssCertIdV2, IssuerSerial, MessageImprint, PkiStatus, PkiStatusInfo,
    SigningCertificateV2, TimeStampResp, TstInfo,
};

/// What one token stamps.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// SHA-256 of the bytes stamped (a signature).
    pub imprint: [u8; 32],
    /// The token's serial, recorded by the store before the device signs.
    pub serial: SerialNumber,
    /// The client's nonce (a positive integer, big-endian), echoed.
    pub nonce: Option<Vec<u8>>,
}

/// The timestamp authority: its device key and certificate chain.
#[derive(Clone)]
pub struct TimestampAuthority {
    key: Arc<dyn DeviceKey>,
    /// The TSA certificate, then the issuing CA's chain up to the root.
    chain: Vec<Certificate>,
    signing_certificate: Attribute,
}

impl std::fmt::Debug for TimestampAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimestampAuthority")
            .field("key", &self.key.name())
            .finish()
    }
}

/// Opens the timestamp authority on `key`, with its certificate from
/// `path` (minted by `issuer` when missing or stale). Blocks on the device.
pub fn open(
    key: Arc<dyn DeviceKey>,
    issuer: &Issuer,
    path: &Path,
    now: Timestamp,
) -> Result<TimestampAuthority, Error> {
    let subject = SubjectName::cn("lockstep Timestamp Authority").with_organization("lockstep");
    let der = crate::ca::service_certificate(
        issuer,
        key.as_ref(),
        path,
        &subject,
        oids::KP_TIME_STAMPING,
        now,
    )?;
    Ok(TimestampAuthority::new(key, &der, issuer)?)
}

impl TimestampAuthority {
    /// The authority for `key`, certified by `certificate` (DER) from
    /// `issuer`.
    pub fn new(
        key: Arc<dyn DeviceKey>,
        certificate: &[u8],
        issuer: &Issuer,
    ) -> Result<Self, X509Error> {
        let cert = Certificate::from_der(certificate)?;
        let tbs = cert.tbs_certificate();
        if tbs.subject_public_key_info().to_der()? != key.public_key().spki_der() {
            return Err(X509Error::Chain(format!(
                "the TSA certificate does not hold the public key of {}",
                key.name()
            )));
        }
        let ess = SigningCertificateV2 {
            certs: vec![EssCertIdV2 {
                cert_hash: OctetString::new(Sha256::digest(certificate).to_vec())?,
                issuer_serial: IssuerSerial {
                    issuer: vec![GeneralName::DirectoryName(tbs.issuer().clone())],
                    serial_number: tbs.serial_number().clone(),
                },
            }],
        };
        let signing_certificate =
            attribute(oids::ATTR_SIGNING_CERTIFICATE_V2, Any::encode_from(&ess)?)?;
        let mut chain = vec![cert];
        chain.extend(issuer.chain().iter().cloned());
        Ok(Self {
            key,
            chain,
            signing_certificate,
        })
    }

    /// The TSA certificate, then the issuing CA and the root, as PEM.
    pub fn chain_pem(&self) -> Result<String, X509Error> {
        let mut pem = String::new();
        for c in &self.chain {
            pem.push_str(&c.to_pem(der::pem::LineEnding::LF)?);
        }
        Ok(pem)
    }

    /// The TSA certificate, then its issuers up to the root.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// SHA-256 of the TSA key's `SubjectPublicKeyInfo`, hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.key.public_key().fingerprint())
    }

    /// Signs a token for `stamp` dated `now`; returns the DER
    /// `TimeStampResp`. Blocks on the device.
    pub fn stamp(&self, stamp: &Stamp, now: Timestamp) -> Result<Vec<u8>, X509Error> {
        let info = TstInfo {
            version: 1,
            policy: oids::TSA_POLICY,
            message_imprint: MessageImprint {
                hash_algorithm: sha256(),
                hashed_message: OctetString::new(stamp.imprint.to_vec())?,
            },
            serial_number: stamp.serial.clone(),
            gen_time: generalized(now)?,
            accuracy: Some(Accuracy { seconds: Some(1) }),
            nonce: stamp.nonce.as_deref().map(Int::new).transpose()?,
        };
        let content = info.to_der()?;
        let signed_attrs = SetOfVec::try_from(vec![
            attribute(
                oids::ATTR_CONTENT_TYPE,
                Any::encode_from(&oids::CT_TST_INFO)?,
            )?,
            attribute(
                oids::ATTR_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(Sha256::digest(&content).to_vec())?)?,
            )?,
            self.signing_certificate.clone(),
        ])?;
        let signature = self.key.sign(&signed_attrs.to_der()?)?;
        let tsa = &self.chain[0];
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: tsa.tbs_certificate().issuer().clone(),
                serial_number: tsa.tbs_certificate().serial_number().clone(),
            }),
            digest_alg: sha256(),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: oids::ECDSA_SHA256,
                parameters: None,
            },
            signature: OctetString::new(signature.to_der())?,
            unsigned_attrs: None,
        };
        // The TSA certificate and the issuing CA: a verifier holding only
        // the root can build the path.
        let certificates = self
            .chain
            .iter()
            .take(2)
            .cloned()
            .map(CertificateChoices::Certificate)
            .collect::<Vec<_>>();
        let signed = SignedData {
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: oids::CT_TST_INFO,
                econtent: Some(Any::encode_from(&OctetString::new(content)?)?),
            },
            certificates: Some(CertificateSet(SetOfVec::try_from(certificates)?)),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
        };
        let response = TimeStampResp {
            status: PkiStatusInfo {
                status: PkiStatus::Granted,
            },
            time_stamp_token: Some(ContentInfo {
                content_type: oids::SIGNED_DATA,
                content: Any::encode_from(&signed)?,
            }),
        };
        Ok(response.to_der()?)
    }
}

/// What a token says, read back (no signature checked: see `lockstep
/// verify`, which checks the token with the TSA chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// `genTime`.
    pub gen_time: Timestamp,
    /// The serial, lower-case hex.
    pub serial: String,
    /// The imprint's hash.
    pub imprint: Vec<u8>,
    /// The policy.
    pub policy: String,
}

/// A granted token taken apart: its `SignedData`, the `TSTInfo` bytes it
/// signs, and the `TSTInfo` read from them. Nothing is verified here.
pub struct OpenedToken {
    /// The CMS `SignedData`.
    pub signed: SignedData,
    /// The DER `TSTInfo`, as its signer's message digest covers it.
    pub content: Vec<u8>,
    /// The `TSTInfo`.
    pub info: TstInfo,
}

/// Takes a DER `TimeStampResp` apart: status granted, a CMS `SignedData`
/// token, its `TSTInfo`.
pub fn open_response(der: &[u8]) -> Result<OpenedToken, X509Error> {
    let bad = |m: &str| X509Error::Chain(format!("timestamp response: {m}"));
    let resp = TimeStampResp::from_der(der)?;
    if resp.status.status != PkiStatus::Granted {
        return Err(bad(&format!("status {:?}", resp.status.status)));
    }
    let token = resp.time_stamp_token.ok_or_else(|| bad("no token"))?;
    if token.content_type != oids::SIGNED_DATA {
        return Err(bad("the token is not CMS SignedData"));
    }
    let signed: SignedData = token.content.decode_as()?;
    let octets: OctetString = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| bad("the token holds no TSTInfo"))?
        .decode_as()?;
    let content = octets.as_bytes().to_vec();
    let info = TstInfo::from_der(&content)?;
    Ok(OpenedToken {
        signed,
        content,
        info,
    })
}

/// Reads the `TSTInfo` of a DER `TimeStampResp`.
pub fn read_response(der: &[u8]) -> Result<TokenFacts, X509Error> {
    let info = open_response(der)?.info;
    Ok(TokenFacts {
        gen_time: Timestamp::from_unix(info.gen_time.to_unix_duration().as_secs() as i64),
        serial: hex::encode(info.serial_number.as_bytes()),
        imprint: info.message_imprint.hashed_message.as_bytes().to_vec(),
        policy: info.policy.to_string(),
    })
}

fn sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: oids::SHA256,
        parameters: None,
    }
}

fn attribute(oid: der::asn1::ObjectIdentifier, value: Any) -> Result<Attribute, X509Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

#[cfg(test)]
mod tests;
