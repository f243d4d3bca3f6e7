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
