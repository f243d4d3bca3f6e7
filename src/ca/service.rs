//! Certificates for lockstep's own keys beside the CA (the audit signer,
//! the timestamp authority): kept as PEM files in `[ca] dir`, minted by the
//! issuing CA when missing, for another key or issuer, or expired.

use std::path::Path;

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode, EncodePem};
use x509_cert::Certificate;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::fsio::write_atomic;
use crate::keys::DeviceKey;
use crate::x509::{Issuer, SubjectName};

/// The certificate of service key `key` for `eku`: read from `path` if it
/// certifies this key under this issuer and is valid at `now`, else minted
/// (valid as long as the issuing CA, named `subject`) and written there.
/// Returns its DER. Blocks on the device.
pub fn service_certificate(
    issuer: &Issuer,
    key: &dyn DeviceKey,
    path: &Path,
    subject: &SubjectName,
    eku: ObjectIdentifier,
    now: Timestamp,
) -> Result<Vec<u8>, Error> {
    if let Some(der) = still_good(issuer, key, path, now) {
        return Ok(der);
    }
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key().spki_der())
        .map_err(|e| Error::X509(e.into()))?;
    let issued = issuer.mint_service(&spki, subject, &[], eku, issuer.not_after(), now)?;
    let pem = issued
        .certificate
        .to_pem(der::pem::LineEnding::LF)
        .map_err(|e| Error::X509(e.into()))?;
    write_atomic(path, pem.as_bytes(), 0o644)?;
    Ok(issued.der)
}

/// The certificate at `path`, if it is for this key, from this issuer and
/// still valid.
fn still_good(
    issuer: &Issuer,
    key: &dyn DeviceKey,
    path: &Path,
    now: Timestamp,
) -> Option<Vec<u8>> {
    let pem = std::fs::read_to_string(path).ok()?;
    let cert = Certificate::from_pem(&pem).ok()?;
    let tbs = cert.tbs_certificate();
    let same_key = tbs
        .subject_public_key_info()
        .to_der()
        .is_ok_and(|d| d == key.public_key().spki_der());
    let same_issuer = tbs.issuer() == issuer.subject_name();
    let valid = tbs.validity().not_after.to_unix_duration().as_secs() as i64 > now.unix();
    (same_key && same_issuer && valid).then(|| cert.to_der().ok())?
}
