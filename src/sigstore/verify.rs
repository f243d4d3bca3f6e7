//! `lockstep verify`: a bundle checked offline against a trusted root, at
//! the time its timestamp proves, and the session evidence its certificate
//! carries. Each check that fails has its own code.
//!
//! 1. the artifact's SHA-256 is the bundle's digest, and the signature
//!    over it verifies under the certificate's key;
//! 2. the RFC 3161 token is over the signature bytes, signed (CMS signed
//!    attributes, message digest of the `TSTInfo`) by a TSA certificate of
//!    the trusted root with EKU timeStamping, whose chain verifies and is
//!    valid at `genTime`;
//! 3. the certificate chains to a CA of the trusted root, all of it valid
//!    at `genTime`, and is for codeSigning;
//! 4. its identity (first URI SAN) and issuer (Fulcio `.8`) are the ones
//!    asked for;
//! 5. it names a lockstep session, and the artifact is the approved one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cms::signed_data::SignerIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};

use super::{Bundle, TrustedRoot};
use crate::clock::Timestamp;
use crate::keys::{PublicKey, Signature};
use crate::tsa::tst::TstInfo;
use crate::tsa::{OpenedToken, open_response};
use crate::x509::{SessionEvidence, oids, verify_path};

/// Why a bundle does not verify: a code and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// Machine-readable.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// What a verified bundle shows.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// When the signature existed, by the timestamp.
    pub signed_at: Timestamp,
    /// The certificate's identity (first URI SAN).
    pub identity: Option<String>,
    /// Its OIDC issuer (Fulcio `.8`), if any.
    pub issuer: Option<String>,
    /// The session the certificate belongs to.
    pub session: String,
    /// Who approved it.
    pub approvers: Vec<String>,
    /// The approved artifact's digest, if the session named one.
    pub approved_digest: Option<String>,
    /// The artifact's digest.
    pub artifact_digest: String,
    /// The certificate's serial, hex.
    pub certificate_serial: String,
    /// The timestamp's serial, hex.
    pub timestamp_serial: String,
}

/// What to check the identity against.
#[derive(Clone, Debug, Default)]
pub struct Expected<'a> {
    /// The certificate's first URI SAN, exactly.
    pub identity: Option<&'a str>,
    /// Its Fulcio issuer, exactly.
    pub issuer: Option<&'a str>,
}

/// Verifies `bundle` over `artifact` with `root`.
pub fn verify(
    bundle: &Bundle,
    artifact: &[u8],
    root: &TrustedRoot,
    expected: &Expected<'_>,
) -> Result<Verified, Refused> {
    let malformed = |m: String| refused("bundle_malformed", m);
    if bundle.media_type != super::BUNDLE_MEDIA_TYPE {
        return Err(malformed(format!(
            "media type `{}` is not {}",
            bundle.media_type,
            super::BUNDLE_MEDIA_TYPE
        )));
    }
    let material = &bundle.verification_material;
    let leaf_der = material.certificate.bytes().map_err(malformed)?;
    let leaf =
        Certificate::from_der(&leaf_der).map_err(|e| malformed(format!("certificate: {e}")))?;
    let signature = B64
        .decode(&bundle.message_signature.signature)
        .map_err(|_| malformed("signature is not base64".into()))?;
    let digest: [u8; 32] = Sha256::digest(artifact).into();
    check_artifact(bundle, &leaf, &digest, &signature)?;
    let [stamp] = material
        .timestamp_verification_data
        .rfc3161_timestamps
        .as_slice()
    else {
        return Err(refused(
            "timestamp_missing",
            "the bundle must hold exactly one RFC 3161 timestamp",
        ));
    };
    let response = B64
        .decode(&stamp.signed_timestamp)
        .map_err(|_| malformed("signedTimestamp is not base64".into()))?;
    let (info, signed_at) = check_timestamp(&response, &signature, root)?;
    let chains = authorities(&root.certificate_authorities)?;
    check_path(&leaf, &chains, signed_at).map_err(|m| refused("certificate_untrusted", m))?;
    let code_signing = leaf
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
        .ok()
        .flatten()
        .is_some_and(|(_, e)| e.0.contains(&oids::KP_CODE_SIGNING));
    if !code_signing {
        return Err(refused(
            "certificate_not_for_code_signing",
            "the certificate's extended key usage does not include codeSigning",
        ));
    }
    let identity = first_uri(&leaf);
    let issuer = crate::x509::fulcio::issuer_of(&leaf);
    if let Some(want) = expected.identity
        && identity.as_deref() != Some(want)
    {
        return Err(refused(
            "identity_mismatch",
            format!("the certificate's identity is {identity:?}, not `{want}`"),
        ));
    }
    if let Some(want) = expected.issuer
        && issuer.as_deref() != Some(want)
    {
        return Err(refused(
            "issuer_mismatch",
            format!("the certificate's issuer is {issuer:?}, not `{want}`"),
        ));
    }
    let evidence = SessionEvidence::from_certificate(&leaf)
        .map_err(|e| refused("session_evidence_invalid", e.to_string()))?
        .ok_or_else(|| {
            refused(
                "session_evidence_missing",
                "the certificate names no lockstep session",
            )
        })?;
    let artifact_digest = format!("sha256:{}", hex::encode(digest));
    if let Some(approved) = &evidence.artifact_digest
        && !approved.eq_ignore_ascii_case(&artifact_digest)
    {
        return Err(refused(
            "artifact_not_approved",
            format!("the session approved {approved}, not this artifact ({artifact_digest})"),
        ));
    }
    Ok(Verified {
        signed_at,
        identity,
        issuer,
        session: evidence.session_id,
        approvers: evidence.approval.map(|a| a.approvers).unwrap_or_default(),
        approved_digest: evidence.artifact_digest,
        artifact_digest,
        certificate_serial: hex::encode(leaf.tbs_certificate().serial_number().as_bytes()),
        timestamp_serial: hex::encode(info.serial_number.as_bytes()),
    })
}

/// Step 1: the digest is the artifact's, and the signature verifies.
fn check_artifact(
    bundle: &Bundle,
    leaf: &Certificate,
    digest: &[u8; 32],
    signature: &[u8],
) -> Result<(), Refused> {
    let md = &bundle.message_signature.message_digest;
    if md.algorithm != "SHA2_256" || B64.decode(&md.digest).ok().as_deref() != Some(&digest[..]) {
        return Err(refused(
            "artifact_mismatch",
            "the artifact's SHA-256 is not the digest the bundle signed",
        ));
    }
    let key = leaf_key(leaf).map_err(|m| refused("signature_invalid", m))?;
    let sig = Signature::from_der(signature)
        .map_err(|_| refused("signature_invalid", "the signature is not DER ECDSA P-256"))?;
    if !key.verify_digest(digest, &sig) {
        return Err(refused(
            "signature_invalid",
            "the signature does not verify over the artifact with the certificate's key",
        ));
    }
    Ok(())
}

fn leaf_key(cert: &Certificate) -> Result<PublicKey, String> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    PublicKey::from_spki_der(&spki).map_err(|e| e.to_string())
}

/// Step 2: the token, its signer and when it says the signature existed.
fn check_timestamp(
    response: &[u8],
    signature: &[u8],
    root: &TrustedRoot,
) -> Result<(TstInfo, Timestamp), Refused> {
    let bad = |m: String| refused("timestamp_invalid", m);
    let OpenedToken {
        signed,
        content,
        info,
    } = open_response(response).map_err(|e| bad(e.to_string()))?;
    if info.message_imprint.hash_algorithm.oid != oids::SHA256
        || info.message_imprint.hashed_message.as_bytes() != Sha256::digest(signature).as_slice()
    {
        return Err(refused(
            "timestamp_mismatch",
            "the timestamp is not over this signature",
        ));
    }
    let signed_at = Timestamp::from_unix(info.gen_time.to_unix_duration().as_secs() as i64);
    let [signer] = signed.signer_infos.0.as_slice() else {
        return Err(bad("the token must have one signer".into()));
    };
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer.sid else {
        return Err(bad(
            "the token's signer is not named by issuer and serial".into()
        ));
    };
    let tsas = authorities(&root.timestamp_authorities)?;
    let chain = tsas
        .iter()
        .find(|c| {
            c.first().is_some_and(|t| {
                t.tbs_certificate().issuer() == &sid.issuer
                    && t.tbs_certificate().serial_number() == &sid.serial_number
            })
        })
        .ok_or_else(|| {
            refused(
                "timestamp_untrusted",
                "the token's signer is not a TSA of the trusted root",
            )
        })?;
    let tsa = &chain[0];
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or_else(|| bad("the token has no signed attributes".into()))?;
    let digest_attr = attrs
        .iter()
        .find(|a| a.oid == oids::ATTR_MESSAGE_DIGEST)
        .and_then(|a| a.values.iter().next())
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .ok_or_else(|| bad("the token has no message digest attribute".into()))?;
    if digest_attr.as_bytes() != Sha256::digest(&content).as_slice() {
        return Err(bad("the token's message digest is not its TSTInfo's".into()));
    }
    let message = attrs.to_der().map_err(|e| bad(e.to_string()))?;
    let key = leaf_key(tsa).map_err(bad)?;
    let sig = Signature::from_der(signer.signature.as_bytes())
        .map_err(|_| bad("the token's signature is not DER ECDSA P-256".into()))?;
    if signer.signature_algorithm.oid != oids::ECDSA_SHA256 || !key.verify(&message, &sig) {
        return Err(bad(
            "the token's signature does not verify with the TSA's key".into(),
        ));
    }
    let eku = tsa
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
        .ok()
        .flatten();
    if !eku.is_some_and(|(critical, e)| critical && e.0 == [oids::KP_TIME_STAMPING]) {
        return Err(refused(
            "timestamp_untrusted",
            "the TSA certificate's EKU is not timeStamping alone, critical",
        ));
    }
    check_path(tsa, &tsas, signed_at).map_err(|m| refused("timestamp_untrusted", m))?;
    Ok((info, signed_at))
}

/// The chains of a trusted root's authorities.
fn authorities(list: &[super::Authority]) -> Result<Vec<Vec<Certificate>>, Refused> {
    list.iter()
        .map(|a| {
            a.cert_chain
                .certificates
                .iter()
                .map(|c| {
                    let der = c
                        .bytes()
                        .map_err(|m| refused("trusted_root_malformed", m))?;
                    Certificate::from_der(&der)
                        .map_err(|e| refused("trusted_root_malformed", e.to_string()))
                })
                .collect()
        })
        .collect()
}

/// `cert` chains to a self-signed root of one of `chains`, and it and
/// every certificate of that chain are valid at `at`.
fn check_path(
    cert: &Certificate,
    chains: &[Vec<Certificate>],
    at: Timestamp,
) -> Result<(), String> {
    let mut why = String::from("no chain of the trusted root");
    for chain in chains {
        let Some(root) = chain.last() else { continue };
        match verify_path(cert, chain, std::slice::from_ref(root)) {
            Ok(()) => {}
            Err(e) => {
                why = e.to_string();
                continue;
            }
        }
        for c in std::iter::once(cert).chain(chain.iter().filter(|c| *c != cert)) {
            let v = c.tbs_certificate().validity();
            let (from, until) = (
                v.not_before.to_unix_duration().as_secs() as i64,
                v.not_after.to_unix_duration().as_secs() as i64,
            );
            if at.unix() < from || at.unix() > until {
                return Err(format!(
                    "{} was not valid at {at}",
                    c.tbs_certificate().subject()
                ));
            }
        }
        return Ok(());
    }
    Err(why)
}

/// The first URI SAN: the identity Sigstore verifiers match.
fn first_uri(cert: &Certificate) -> Option<String> {
    let (_, san) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .ok()??;
    san.0.into_iter().find_map(|n| match n {
        GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
        _ => None,
    })
}
