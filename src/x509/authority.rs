//! CA certificates: the self-signed root, the issuing CA it certifies, the
//! CSR that asks an external root to certify the issuing key instead, and
//! the checks applied to a chain before lockstep issues under it.

use der::asn1::OctetString;
use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_cert::builder::CertificateBuilder;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, RequestBuilder};
use x509_cert::time::Validity;

use super::X509Error;
use super::build::{FixedProfile, certificate_time, random_serial, sign_with, timestamp_of};
use super::csr::Signed;
use super::names::SubjectName;
use super::verify::verify_signature;
use crate::clock::Timestamp;
use crate::keys::{DeviceKey, PublicKey};

/// The validity of a CA certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaValidity {
    /// `notBefore`.
    pub not_before: Timestamp,
    /// `notAfter`.
    pub not_after: Timestamp,
}

fn ski_of(public: &PublicKey) -> Result<SubjectKeyIdentifier, X509Error> {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(public.spki_der())?;
    Ok(SubjectKeyIdentifier::try_from(spki)?)
}

/// CA extensions: basicConstraints (critical, with `path_len`), keyUsage
/// keyCertSign + cRLSign (critical), SKI, and AKI when an issuer key id is
/// given.
fn ca_extensions(
    subject: &Name,
    path_len: u8,
    public: &PublicKey,
    issuer_key_id: Option<&[u8]>,
) -> Result<Vec<Extension>, X509Error> {
    let mut exts: Vec<Extension> = Vec::with_capacity(4);
    let ext = (&BasicConstraints {
        ca: true,
        path_len_constraint: Some(path_len),
    })
        .to_extension(subject, &exts)?;
    exts.push(ext);
    let usage = KeyUsages::KeyCertSign | KeyUsages::CRLSign;
    let ext = (&KeyUsage(usage)).to_extension(subject, &exts)?;
    exts.push(ext);
    let ext = (&ski_of(public)?).to_extension(subject, &exts)?;
    exts.push(ext);
    if let Some(id) = issuer_key_id {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(id.to_vec())?),
            ..Default::default()
        };
        let ext = (&aki).to_extension(subject, &exts)?;
        exts.push(ext);
    }
    Ok(exts)
}

fn spki_of(public: &PublicKey) -> Result<spki::SubjectPublicKeyInfoOwned, X509Error> {
    Ok(spki::SubjectPublicKeyInfoOwned::from_der(
        public.spki_der(),
    )?)
}

/// Builds a CA certificate for `public`, signed by `signer`.
fn build_ca_certificate(
    profile: FixedProfile,
    validity: CaValidity,
    public: &PublicKey,
    signer: &dyn DeviceKey,
) -> Result<Certificate, X509Error> {
    let validity = Validity::new(
        certificate_time(validity.not_before)?,
        certificate_time(validity.not_after)?,
    );
    let builder = CertificateBuilder::new(profile, random_serial()?, validity, spki_of(public)?)?;
    sign_with(builder, signer)
}

/// A self-signed root CA certificate for `key`. Its path length is 1: it
/// certifies exactly one level of issuing CA, which certifies leaves.
pub fn self_signed_root(
    key: &dyn DeviceKey,
    subject: &SubjectName,
    validity: CaValidity,
) -> Result<Certificate, X509Error> {
    let name = subject.to_name()?;
    let profile = FixedProfile {
        extensions: ca_extensions(&name, 1, key.public_key(), None)?,
        subject: name.clone(),
        issuer: name,
    };
    build_ca_certificate(profile, validity, key.public_key(), key)
}

/// The issuing CA certificate for `issuing_public`, signed by the root.
/// Path length 0: it certifies leaves only. Its validity may not outlast
/// the root's.
pub fn issuing_ca_certificate(
    root_key: &dyn DeviceKey,
    root: &Certificate,
    issuing_public: &PublicKey,
    subject: &SubjectName,
    validity: CaValidity,
) -> Result<Certificate, X509Error> {
    certify_issuing(root_key, root, issuing_public, subject.to_name()?, validity)
}

/// An issuing CA certificate for the key and subject a CSR asks for (the
/// issuing key of a replica with a device of its own), signed by the
/// root. The CSR's signature proves that its key's holder asked.
pub fn certify_issuing_csr(
    root_key: &dyn DeviceKey,
    root: &Certificate,
    csr: &super::csr::VerifiedCsr,
    validity: CaValidity,
) -> Result<Certificate, X509Error> {
    let public = PublicKey::from_spki_der(&csr.public_key().to_der()?)
        .map_err(|e| X509Error::CsrMalformed(e.to_string()))?;
    certify_issuing(root_key, root, &public, csr.subject().clone(), validity)
}

fn certify_issuing(
    root_key: &dyn DeviceKey,
    root: &Certificate,
    issuing_public: &PublicKey,
    name: Name,
    validity: CaValidity,
) -> Result<Certificate, X509Error> {
    let root_tbs = root.tbs_certificate();
    if root_tbs.subject_public_key_info().to_der()? != root_key.public_key().spki_der() {
        return Err(X509Error::Chain(
            "the root certificate does not hold the root key's public key".into(),
        ));
    }
    let root_not_after = timestamp_of(&root_tbs.validity().not_after);
    if validity.not_after > root_not_after {
        return Err(X509Error::InvalidValidity(format!(
            "the issuing CA would outlive its root ({} > {root_not_after})",
            validity.not_after
        )));
    }
    let root_key_id = ski_of(root_key.public_key())?;
    let profile = FixedProfile {
        extensions: ca_extensions(&name, 0, issuing_public, Some(root_key_id.0.as_bytes()))?,
        subject: name,
        issuer: root_tbs.subject().clone(),
    };
    build_ca_certificate(profile, validity, issuing_public, root_key)
}

/// A PKCS#10 request asking an external root to certify the issuing key as
/// a CA with path length 0.
pub fn issuing_csr(key: &dyn DeviceKey, subject: &SubjectName) -> Result<CertReq, X509Error> {
    let name = subject.to_name()?;
    let mut builder = RequestBuilder::new(name.clone())?;
    for ext in ca_extensions(&name, 0, key.public_key(), None)? {
        builder.add_extension(ext)?;
    }
    sign_with(builder, key)
}

/// Checks that `cert` is a CA certificate allowed to sign certificates:
/// basicConstraints cA, and keyUsage keyCertSign when keyUsage is present.
pub(crate) fn check_is_ca(cert: &Certificate) -> Result<(), X509Error> {
    let tbs = cert.tbs_certificate();
    match tbs.get_extension::<BasicConstraints>()? {
        Some((_, bc)) if bc.ca => {}
        _ => {
            return Err(X509Error::Chain(format!(
                "{} is not a CA certificate (basicConstraints cA is not set)",
                tbs.subject()
            )));
        }
    }
    if let Some((_, ku)) = tbs.get_extension::<KeyUsage>()?
        && !ku.key_cert_sign()
    {
        return Err(X509Error::Chain(format!(
            "{} may not sign certificates (keyUsage lacks keyCertSign)",
            tbs.subject()
        )));
    }
    Ok(())
}

/// Checks that `cert` chains to one of `roots` through `pool`: every
/// signature verifies and every issuer is a CA. Validity periods are not
/// checked (for evidence verified long after it was signed).
pub fn verify_path(
    cert: &Certificate,
    pool: &[Certificate],
    roots: &[Certificate],
) -> Result<(), X509Error> {
    let mut current = cert.clone();
    for _ in 0..8 {
        let tbs = current.tbs_certificate();
        if roots.iter().any(|r| r == &current) {
            return Ok(());
        }
        let issuer = roots
            .iter()
            .chain(pool.iter())
            .find(|c| c.tbs_certificate().subject() == tbs.issuer() && *c != &current)
            .ok_or_else(|| {
                X509Error::Chain(format!("no certificate for issuer {}", tbs.issuer()))
            })?;
        check_is_ca(issuer)?;
        let der = current.to_der()?;
        let signed = Signed::parse(&der)?;
        let issuer_spki_der = issuer
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()?;
        let issuer_spki = spki::SubjectPublicKeyInfoRef::from_der(&issuer_spki_der)?;
        let sig = signed
            .signature
            .as_bytes()
            .ok_or_else(|| X509Error::Chain("signature is not whole bytes".into()))?;
        verify_signature(&issuer_spki, &signed.algorithm, signed.tbs, sig)?;
        if roots.iter().any(|r| r == issuer) {
            return Ok(());
        }
        current = issuer.clone();
    }
    Err(X509Error::Chain("the chain is too long".into()))
}

/// Checks a chain for issuing, issuing CA first and a self-signed root
/// last: every certificate is a CA, is named by and verifies under the next
/// one, the root verifies under itself, and all are valid at `now`.
pub fn check_chain(chain: &[Certificate], now: Timestamp) -> Result<(), X509Error> {
    let root = chain
        .last()
        .ok_or_else(|| X509Error::Chain("the chain is empty".into()))?;
    for (i, cert) in chain.iter().enumerate() {
        check_is_ca(cert)?;
        let tbs = cert.tbs_certificate();
        let (nb, na) = (
            timestamp_of(&tbs.validity().not_before),
            timestamp_of(&tbs.validity().not_after),
        );
        if now < nb || now > na {
            return Err(X509Error::Chain(format!(
                "{} is not valid now (valid {nb} to {na})",
                tbs.subject()
            )));
        }
        let issuer = chain.get(i + 1).unwrap_or(root);
        let issuer_tbs = issuer.tbs_certificate();
        if tbs.issuer() != issuer_tbs.subject() {
            return Err(X509Error::Chain(format!(
                "{} is issued by {}, but the next certificate in the chain is {}",
                tbs.subject(),
                tbs.issuer(),
                issuer_tbs.subject()
            )));
        }
        let der = cert.to_der()?;
        let signed = Signed::parse(&der)?;
        let issuer_spki_der = issuer_tbs.subject_public_key_info().to_der()?;
        let issuer_spki = spki::SubjectPublicKeyInfoRef::from_der(&issuer_spki_der)?;
        let sig = signed
            .signature
            .as_bytes()
            .ok_or_else(|| X509Error::Chain("signature is not whole bytes".into()))?;
        verify_signature(&issuer_spki, &signed.algorithm, signed.tbs, sig).map_err(|e| {
            X509Error::Chain(format!(
                "the signature on {} does not verify under {}: {e}",
                tbs.subject(),
                issuer_tbs.subject()
            ))
        })?;
    }
    Ok(())
}
