//! X.509: CSR checks, leaf minting and CA certificates.
//!
//! Everything here signs through [`DeviceKey`](crate::keys::DeviceKey) and
//! never learns which backend holds the key.

mod authority;
mod build;
pub mod crl;
pub mod csr;
pub mod extension;
pub mod fulcio;
mod leaf;
pub mod names;
pub mod oids;
pub mod verify;

pub use authority::{
    CaValidity, certify_issuing_csr, check_chain, issuing_ca_certificate, issuing_csr,
    self_signed_root, verify_path,
};
pub use build::{certificate_time, generalized, random_serial};
pub use extension::SessionEvidence;
pub use leaf::{CertProfile, IssuedCertificate, Issuer, LeafSpec, RevocationUrls};
pub use names::{San, SubjectName};

use crate::keys::KeyError;

/// What can go wrong reading CSRs and certificates or minting them.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    /// The CSR is larger than lockstep accepts.
    #[error("CSR is {size} bytes; the limit is {max}")]
    CsrTooLarge {
        /// Size received.
        size: usize,
        /// Size allowed.
        max: usize,
    },
    /// The CSR is not a well-formed PKCS#10 request.
    #[error("CSR is malformed: {0}; send a PEM or DER PKCS#10 request")]
    CsrMalformed(String),
    /// The CSR's signature does not verify with its own public key.
    #[error(
        "CSR signature does not verify with its public key (proof of possession failed); sign the request with the key it carries"
    )]
    CsrSignatureInvalid,
    /// The public key is of a kind lockstep does not accept.
    #[error("{0}")]
    UnsupportedKey(String),
    /// The signature algorithm is one lockstep does not accept.
    #[error("{0}")]
    UnsupportedAlgorithm(String),
    /// A signature does not verify.
    #[error("signature does not verify")]
    SignatureInvalid,
    /// A subject attribute or SAN is not acceptable.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// The requested validity cannot be issued.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// A certificate chain is unusable.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The signing key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Encoding failed (a bug or an impossible value).
    #[error("DER encoding: {0}")]
    Encoding(String),
}

impl X509Error {
    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::CsrTooLarge { .. } => "csr_too_large",
            Self::CsrMalformed(_) => "csr_malformed",
            Self::CsrSignatureInvalid => "csr_signature_invalid",
            Self::UnsupportedKey(_) => "unsupported_key_type",
            Self::UnsupportedAlgorithm(_) => "unsupported_signature_algorithm",
            Self::SignatureInvalid => "signature_invalid",
            Self::InvalidName(_) => "invalid_name",
            Self::InvalidValidity(_) => "invalid_validity",
            Self::Chain(_) => "invalid_chain",
            Self::Key(k) => k.code(),
            Self::Encoding(_) => "internal_error",
        }
    }
}

impl From<der::Error> for X509Error {
    fn from(e: der::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

impl From<x509_cert::builder::Error> for X509Error {
    fn from(e: x509_cert::builder::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

impl From<spki::Error> for X509Error {
    fn from(e: spki::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}
