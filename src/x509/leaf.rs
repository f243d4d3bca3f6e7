//! Minting leaf certificates: the requester's public key (from a verified
//! CSR) bound to a subject, SANs and profile decided by lockstep, valid from
//! now until exactly the instant the caller gives.

use std::sync::Arc;

use der::asn1::OctetString;
use der::referenced::OwnedToRef;
use der::{Decode, Encode, EncodePem};
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;
use x509_cert::builder::CertificateBuilder;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::time::Validity;

use super::build::{FixedProfile, certificate_time, random_serial, sign_with, timestamp_of};
use super::csr::VerifiedCsr;
use super::extension::SessionEvidence;
use super::names::{San, SubjectName};
use super::{X509Error, oids};
use crate::clock::Timestamp;
use crate::keys::DeviceKey;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::serial_number::SerialNumber;

/// The kind of certificate a session may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertProfile {
    /// A TLS client certificate (EKU `clientAuth`).
    MtlsClient,
    /// A code-signing certificate (EKU `codeSigning`).
    CodeSigning,
}

impl CertProfile {
    /// The extended key usage this profile grants.
    pub fn eku(self) -> der::asn1::ObjectIdentifier {
        match self {
            Self::MtlsClient => oids::KP_CLIENT_AUTH,
            Self::CodeSigning => oids::KP_CODE_SIGNING,
        }
    }

    /// The profile's name as written in policy and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MtlsClient => "mtls-client",
            Self::CodeSigning => "code-signing",
        }
    }
}

/// What goes into a leaf certificate besides the requester's key. Nothing
/// here comes from the CSR.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// The subject.
    pub subject: SubjectName,
    /// The subject alternative names.
    pub sans: Vec<San>,
    /// The profile (decides the EKU).
    pub profile: CertProfile,
    /// The exact `notAfter`: the session's `closes_at`.
    pub not_after: Timestamp,
    /// The session the certificate belongs to.
    pub session: SessionEvidence,
    /// Where relying parties check revocation, if published.
    pub revocation: Option<RevocationUrls>,
    /// The CI identity of the requester, for code-signing certificates
    /// (Fulcio's extensions, see [`super::fulcio`]).
    pub build: Option<crate::sessions::CiIdentity>,
}

/// The CRL and OCSP locations written into certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationUrls {
    /// CRL distribution point (HTTP(S) URL of the DER CRL).
    pub crl: String,
    /// OCSP responder URL (Authority Information Access).
    pub ocsp: String,
}

/// A freshly minted certificate.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The certificate.
    pub certificate: Certificate,
    /// Its DER encoding.
    pub der: Vec<u8>,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// `notBefore`.
    pub not_before: Timestamp,
    /// `notAfter`.
    pub not_after: Timestamp,
    /// SHA-256 of the subject's `SubjectPublicKeyInfo`.
    pub key_fingerprint: [u8; 32],
}

impl IssuedCertificate {
    /// The certificate as PEM.
    pub fn pem(&self) -> Result<String, X509Error> {
        Ok(self.certificate.to_pem(der::pem::LineEnding::LF)?)
    }
}

/// What varies between the certificates an issuer mints.
struct Leaf<'a> {
    spki: &'a SubjectPublicKeyInfoOwned,
    subject: &'a SubjectName,
    sans: &'a [San],
    eku: der::asn1::ObjectIdentifier,
    session: Option<&'a SessionEvidence>,
    revocation: Option<&'a RevocationUrls>,
    build: Option<&'a crate::sessions::CiIdentity>,
    not_after: Timestamp,
}

/// The issuing CA: its key (held by a device) and its certificate chain.
#[derive(Clone)]
pub struct Issuer {
    key: Arc<dyn DeviceKey>,
    chain: Vec<Certificate>,
    chain_pem: String,
    subject: Name,
    key_id: Vec<u8>,
    not_after: Timestamp,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject.to_string())
            .field("key", &self.key.name())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Issuer {
    /// An issuer from its key and chain (`chain[0]` is the issuing CA's own
    /// certificate, the root last). The certificate must hold the key's
    /// public key and be a CA allowed to sign certificates.
    pub fn new(key: Arc<dyn DeviceKey>, chain: Vec<Certificate>) -> Result<Self, X509Error> {
        let cert = chain
            .first()
            .ok_or_else(|| X509Error::Chain("the chain is empty".into()))?;
        let tbs = cert.tbs_certificate();
        if tbs.subject_public_key_info().to_der()? != key.public_key().spki_der() {
            return Err(X509Error::Chain(format!(
                "the issuing CA certificate ({}) does not hold the public key of {}; run `lockstep init` again or install the matching certificate",
                tbs.subject(),
                key.name()
            )));
        }
        super::authority::check_is_ca(cert)?;
        let key_id = match tbs.get_extension::<SubjectKeyIdentifier>()? {
            Some((_, ski)) => ski.0.as_bytes().to_vec(),
            None => SubjectKeyIdentifier::try_from(tbs.subject_public_key_info().owned_to_ref())?
                .0
                .as_bytes()
                .to_vec(),
        };
        let mut chain_pem = String::new();
        for c in &chain {
            chain_pem.push_str(&c.to_pem(der::pem::LineEnding::LF)?);
        }
        Ok(Self {
            subject: tbs.subject().clone(),
            not_after: timestamp_of(&tbs.validity().not_after),
            key,
            chain,
            chain_pem,
            key_id,
        })
    }

    /// The chain as PEM, issuing CA first, root last.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The chain, issuing CA first.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// When the issuing CA certificate expires: no credential outlives it.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// The issuing key.
    pub fn key(&self) -> &Arc<dyn DeviceKey> {
        &self.key
    }

    /// The issuing CA's subject (the issuer of what it signs).
    pub fn subject_name(&self) -> &Name {
        &self.subject
    }

    /// The issuing key's SHA-256 fingerprint (of its SubjectPublicKeyInfo),
    /// hex: how the store records which issuing CA signed a certificate.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.key.public_key().fingerprint())
    }

    /// The issuing CA's key identifier (its SKI).
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// Mints a certificate for the CSR's key, valid from `now` until
    /// exactly `spec.not_after`, with a fresh random serial.
    pub fn mint(
        &self,
        csr: &VerifiedCsr,
        spec: &LeafSpec,
        now: Timestamp,
    ) -> Result<IssuedCertificate, X509Error> {
        self.mint_with_serial(csr, spec, random_serial()?, now)
    }

    /// As [`Issuer::mint`], with a serial chosen beforehand (recorded by the
    /// store before the device signs).
    pub fn mint_with_serial(
        &self,
        csr: &VerifiedCsr,
        spec: &LeafSpec,
        serial: SerialNumber,
        now: Timestamp,
    ) -> Result<IssuedCertificate, X509Error> {
        let leaf = Leaf {
            spki: csr.public_key(),
            subject: &spec.subject,
            sans: &spec.sans,
            eku: spec.profile.eku(),
            session: Some(&spec.session),
            revocation: spec.revocation.as_ref(),
            build: spec.build.as_ref(),
            not_after: spec.not_after,
        };
        self.build(leaf, serial, now)
    }

    /// A certificate for one of lockstep's own keys (its TLS server key:
    /// EKU serverAuth; its audit signer: the lockstep audit EKU), for
    /// `public_key` with the given names.
    pub fn mint_service(
        &self,
        public_key: &SubjectPublicKeyInfoOwned,
        subject: &SubjectName,
        sans: &[San],
        eku: der::asn1::ObjectIdentifier,
        not_after: Timestamp,
        now: Timestamp,
    ) -> Result<IssuedCertificate, X509Error> {
        let leaf = Leaf {
            spki: public_key,
            subject,
            sans,
            eku,
            session: None,
            revocation: None,
            build: None,
            not_after,
        };
        self.build(leaf, random_serial()?, now)
    }

    fn build(
        &self,
        leaf: Leaf<'_>,
        serial: SerialNumber,
        now: Timestamp,
    ) -> Result<IssuedCertificate, X509Error> {
        if leaf.not_after <= now {
            return Err(X509Error::InvalidValidity(format!(
                "notAfter {} is not after now ({now})",
                leaf.not_after
            )));
        }
        if leaf.not_after > self.not_after {
            return Err(X509Error::InvalidValidity(format!(
                "notAfter {} is after the issuing CA certificate expires ({}); renew the CA",
                leaf.not_after, self.not_after
            )));
        }
        let subject = leaf.subject.to_name()?;
        let extensions = self.leaf_extensions(&leaf, &subject)?;
        let validity = Validity::new(certificate_time(now)?, certificate_time(leaf.not_after)?);
        let profile = FixedProfile {
            subject,
            issuer: self.subject.clone(),
            extensions,
        };
        let builder =
            CertificateBuilder::new(profile, serial.clone(), validity, leaf.spki.clone())?;
        let certificate = sign_with(builder, self.key.as_ref())?;
        let der = certificate.to_der()?;
        use sha2::Digest;
        Ok(IssuedCertificate {
            serial: hex::encode(serial.as_bytes()),
            not_before: now,
            not_after: leaf.not_after,
            key_fingerprint: sha2::Sha256::digest(leaf.spki.to_der()?).into(),
            der,
            certificate,
        })
    }

    fn leaf_extensions(
        &self,
        leaf: &Leaf<'_>,
        subject: &Name,
    ) -> Result<Vec<Extension>, X509Error> {
        let mut exts: Vec<Extension> = Vec::with_capacity(8);
        let ext = (&BasicConstraints {
            ca: false,
            path_len_constraint: None,
        })
            .to_extension(subject, &exts)?;
        exts.push(ext);
        let ext = (&KeyUsage(KeyUsages::DigitalSignature.into())).to_extension(subject, &exts)?;
        exts.push(ext);
        let mut ext = (&ExtendedKeyUsage(vec![leaf.eku])).to_extension(subject, &exts)?;
        // RFC 3161 2.3: a TSA's certificate has timeStamping as its only
        // EKU, marked critical.
        ext.critical = leaf.eku == oids::KP_TIME_STAMPING;
        exts.push(ext);
        let spki_der = leaf.spki.to_der()?;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&spki_der)?;
        let ext = (&SubjectKeyIdentifier::try_from(spki)?).to_extension(subject, &exts)?;
        exts.push(ext);
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(self.key_id.clone())?),
            ..Default::default()
        };
        let ext = (&aki).to_extension(subject, &exts)?;
        exts.push(ext);
        if !leaf.sans.is_empty() {
            let names = leaf
                .sans
                .iter()
                .map(San::to_general_name)
                .collect::<Result<Vec<_>, _>>()?;
            let ext = (&SubjectAltName(names)).to_extension(subject, &exts)?;
            exts.push(ext);
        }
        if let Some(urls) = leaf.revocation {
            let uri = |u: &str| -> Result<GeneralName, X509Error> {
                San::Uri(u.to_owned()).to_general_name()
            };
            let dp = CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![uri(&urls.crl)?])),
                reasons: None,
                crl_issuer: None,
            }]);
            let ext = (&dp).to_extension(subject, &exts)?;
            exts.push(ext);
            let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
                access_method: oids::AD_OCSP,
                access_location: uri(&urls.ocsp)?,
            }]);
            let ext = (&aia).to_extension(subject, &exts)?;
            exts.push(ext);
        }
        if let Some(session) = leaf.session {
            exts.push(session.to_extension()?);
        }
        if let Some(build) = leaf.build {
            exts.extend(super::fulcio::extensions(build)?);
        }
        Ok(exts)
    }
}
