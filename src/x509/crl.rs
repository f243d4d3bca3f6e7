//! Certificate revocation lists, signed by the issuing CA's key.

use der::Encode;
use der::asn1::{BitString, OctetString};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::serial_number::SerialNumber;

use super::build::certificate_time;
use super::{Issuer, X509Error, oids};
use crate::clock::Timestamp;

/// One revoked certificate on a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial, hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: Timestamp,
    /// The RFC 5280 reason code (0 = unspecified, omitted from the entry).
    pub reason: u8,
}

fn crl_reason(code: u8) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        9 => CrlReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

impl Issuer {
    /// A CRL (v2) with `entries`, number `number`, valid from `this_update`
    /// to `next_update`, signed by the issuing key. The CRL names the
    /// issuing CA as issuer and carries its key identifier (AKI) and the
    /// CRL number.
    pub fn crl(
        &self,
        entries: &[CrlEntry],
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
    ) -> Result<Vec<u8>, X509Error> {
        let issuer = self.subject_name().clone();
        let mut revoked: Vec<RevokedCert> = Vec::with_capacity(entries.len());
        for e in entries {
            let bytes = hex::decode(&e.serial)
                .map_err(|_| X509Error::Encoding(format!("serial `{}` is not hex", e.serial)))?;
            let crl_entry_extensions = match crl_reason(e.reason) {
                Some(reason) => Some(vec![(&reason).to_extension(&issuer, &[])?]),
                None => None,
            };
            revoked.push(RevokedCert {
                serial_number: SerialNumber::new(&bytes)?,
                revocation_date: certificate_time(e.revoked_at)?,
                crl_entry_extensions,
            });
        }
        let mut extensions: Vec<Extension> = Vec::with_capacity(2);
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(self.key_id().to_vec())?),
            ..Default::default()
        };
        let ext = (&aki).to_extension(&issuer, &extensions)?;
        extensions.push(ext);
        let number = CrlNumber(der::asn1::Uint::new(&number.to_be_bytes())?);
        let ext = (&number).to_extension(&issuer, &extensions)?;
        extensions.push(ext);
        let algorithm = spki::AlgorithmIdentifierOwned {
            oid: oids::ECDSA_SHA256,
            parameters: None,
        };
        let tbs = TbsCertList {
            version: x509_cert::Version::V2,
            signature: algorithm.clone(),
            issuer,
            this_update: certificate_time(this_update)?,
            next_update: Some(certificate_time(next_update)?),
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: Some(extensions),
        };
        let signature = self.key().sign(&tbs.to_der()?)?;
        let list = CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(&signature.to_der())?,
        };
        Ok(list.to_der()?)
    }
}

/// A CRL whose signature verified under a CA certificate that chains to a
/// trusted root: what a relying party may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The issuing CA's key identifier (the CRL's AKI, else the CA's SKI):
    /// which certificates this CRL speaks for.
    pub issuer_key: Vec<u8>,
    /// Its CRL number (0 when it carries none).
    pub number: u64,
    /// When it was made.
    pub this_update: Timestamp,
    /// Until when it is current.
    pub next_update: Timestamp,
    /// Revoked serials (lowercase hex of the serial's bytes) and their
    /// reason codes (0 when the entry names none).
    pub revoked: Vec<(String, u8)>,
}

/// Reads a DER CRL and verifies it: signed by one of `cas` (each of which
/// the caller has checked chains to its root), by the CA that the CRL
/// names as issuer (and whose key its AKI names), a CA allowed to sign
/// CRLs, and carrying a `nextUpdate`.
pub fn verify_crl(der: &[u8], cas: &[x509_cert::Certificate]) -> Result<VerifiedCrl, X509Error> {
    use der::Decode;
    use x509_cert::ext::pkix::{KeyUsage, SubjectKeyIdentifier};

    let list: CertificateList = CertificateList::from_der(der)?;
    let tbs = &list.tbs_cert_list;
    let aki = extension::<AuthorityKeyIdentifier>(tbs.crl_extensions.as_deref())?
        .and_then(|a| a.key_identifier)
        .map(|k| k.as_bytes().to_vec());
    let ski = |c: &x509_cert::Certificate| -> Option<Vec<u8>> {
        c.tbs_certificate()
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, s)| s.0.as_bytes().to_vec())
    };
    let ca = cas
        .iter()
        .find(|c| c.tbs_certificate().subject() == &tbs.issuer && (aki.is_none() || ski(c) == aki))
        .ok_or_else(|| {
            X509Error::Chain(format!(
                "no trusted CA certificate for CRL issuer {}",
                tbs.issuer
            ))
        })?;
    if let Some((_, ku)) = ca.tbs_certificate().get_extension::<KeyUsage>()?
        && !ku.crl_sign()
    {
        return Err(X509Error::Chain(format!(
            "{} may not sign CRLs (keyUsage lacks cRLSign)",
            tbs.issuer
        )));
    }
    let signed = super::csr::Signed::parse(der)?;
    if signed.algorithm != tbs.signature {
        return Err(X509Error::UnsupportedAlgorithm(
            "the CRL's two signature algorithm fields differ".into(),
        ));
    }
    let spki_der = ca.tbs_certificate().subject_public_key_info().to_der()?;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&spki_der)?;
    let sig = signed
        .signature
        .as_bytes()
        .ok_or_else(|| X509Error::Encoding("CRL signature is not whole bytes".into()))?;
    super::verify::verify_signature(&spki, &signed.algorithm, signed.tbs, sig)?;

    let next_update = tbs
        .next_update
        .as_ref()
        .ok_or_else(|| X509Error::Chain("the CRL has no nextUpdate".into()))?;
    let number = extension::<CrlNumber>(tbs.crl_extensions.as_deref())?
        .map(|n| {
            n.0.as_bytes().iter().fold(0u64, |acc, b| {
                acc.saturating_mul(256).saturating_add(u64::from(*b))
            })
        })
        .unwrap_or(0);
    let mut revoked = Vec::new();
    for entry in tbs.revoked_certificates.iter().flatten() {
        let reason =
            extension::<CrlReason>(entry.crl_entry_extensions.as_deref())?.map_or(0, |r| r as u8);
        revoked.push((hex::encode(entry.serial_number.as_bytes()), reason));
    }
    Ok(VerifiedCrl {
        issuer_key: aki.or_else(|| ski(ca)).unwrap_or_default(),
        number,
        this_update: super::build::timestamp_of(&tbs.this_update),
        next_update: super::build::timestamp_of(next_update),
        revoked,
    })
}

/// The extension `T` among `extensions`, decoded, if present.
fn extension<T>(extensions: Option<&[Extension]>) -> Result<Option<T>, X509Error>
where
    T: for<'a> der::Decode<'a, Error = der::Error> + const_oid::AssociatedOid,
{
    let Some(ext) = extensions
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == T::OID)
    else {
        return Ok(None);
    };
    Ok(Some(T::from_der(ext.extn_value.as_bytes())?))
}
