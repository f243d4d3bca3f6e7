//! PKCS#10 certification requests: parsed, size-checked and their signature
//! verified (proof that the requester holds the private key). Nothing else
//! is taken from a CSR: subject, SANs and extensions come from the session.

use der::asn1::BitStringRef;
use der::{Decode, Encode, Reader, SliceReader};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::request::CertReqInfo;

use super::X509Error;
use super::verify::{KeyKind, key_kind, verify_signature};

/// The largest CSR accepted, PEM or DER. An RSA-8192 CSR with a few
/// extensions is about 2.5 KiB of DER.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A CSR whose signature verified with its own public key.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    spki: SubjectPublicKeyInfoOwned,
    subject: x509_cert::name::Name,
    kind: KeyKind,
}

impl VerifiedCsr {
    /// The requester's public key.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    /// The subject the request names (lockstep ignores it for leaves,
    /// whose subject comes from the session).
    pub fn subject(&self) -> &x509_cert::name::Name {
        &self.subject
    }

    /// The kind of the requester's key.
    pub fn key_kind(&self) -> &KeyKind {
        &self.kind
    }

    /// SHA-256 of the DER `SubjectPublicKeyInfo`, the key's fingerprint.
    pub fn key_fingerprint(&self) -> Result<[u8; 32], X509Error> {
        use sha2::Digest;
        Ok(sha2::Sha256::digest(self.spki.to_der()?).into())
    }
}

/// A signed DER structure split into the exact bytes that were signed, the
/// algorithm and the signature: `SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING }`.
/// Certificates, CRLs and CSRs share this shape.
pub(crate) struct Signed<'a> {
    pub tbs: &'a [u8],
    pub algorithm: AlgorithmIdentifierOwned,
    pub signature: BitStringRef<'a>,
}

impl<'a> Signed<'a> {
    /// Splits `der`, refusing trailing bytes.
    pub fn parse(der: &'a [u8]) -> der::Result<Self> {
        let mut reader = SliceReader::new(der)?;
        let signed = reader.sequence(|r| -> der::Result<Signed<'a>> {
            Ok(Signed {
                tbs: r.tlv_bytes()?,
                algorithm: r.decode()?,
                signature: r.decode()?,
            })
        })?;
        reader.finish()?;
        Ok(signed)
    }
}

/// Reads a CSR given as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE
/// REQUEST`) or DER, and verifies its signature.
pub fn parse_and_verify(input: &[u8]) -> Result<VerifiedCsr, X509Error> {
    if input.len() > MAX_CSR_BYTES {
        return Err(X509Error::CsrTooLarge {
            size: input.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let trimmed = input.trim_ascii_start();
    let der;
    let der_bytes: &[u8] = if trimmed.starts_with(b"-----BEGIN") {
        let (label, bytes) = der::pem::decode_vec(trimmed)
            .map_err(|e| X509Error::CsrMalformed(format!("not valid PEM: {e}")))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(X509Error::CsrMalformed(format!(
                "PEM label is `{label}`, expected `CERTIFICATE REQUEST`"
            )));
        }
        der = bytes;
        &der
    } else {
        input
    };
    let signed = Signed::parse(der_bytes)
        .map_err(|e| X509Error::CsrMalformed(format!("not a DER PKCS#10 request: {e}")))?;
    let info = CertReqInfo::from_der(signed.tbs)
        .map_err(|e| X509Error::CsrMalformed(format!("malformed request info: {e}")))?;
    let spki_der = info.public_key.to_der()?;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&spki_der)
        .map_err(|e| X509Error::CsrMalformed(format!("malformed public key: {e}")))?;
    let kind = key_kind(&spki)?;
    let signature = signed
        .signature
        .as_bytes()
        .ok_or_else(|| X509Error::CsrMalformed("signature is not whole bytes".into()))?;
    verify_signature(&spki, &signed.algorithm, signed.tbs, signature).map_err(|e| match e {
        X509Error::SignatureInvalid => X509Error::CsrSignatureInvalid,
        other => other,
    })?;
    Ok(VerifiedCsr {
        spki: info.public_key,
        subject: info.subject,
        kind,
    })
}
