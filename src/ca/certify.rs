//! `lockstep certify-issuer`: the root certifies another issuing key, for
//! replicas whose issuing keys cannot be shared (a TPM in each machine).
//! The replica creates its key and a CSR (`lockstep init --external-root`),
//! the root's holder certifies it here, and the replica installs the chain
//! (`lockstep init --install-chain`). Each issuing CA signs, and answers
//! CRL and OCSP for, its own certificates only.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::init::{CA_BACKDATE_SECS, CertSummary, DAY_SECS};
use super::{CaFiles, pem};
use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;
use crate::fsio::write_atomic;
use crate::keys::KeyBackend;
use crate::x509::csr::parse_and_verify;
use crate::x509::{CaValidity, certify_issuing_csr, check_chain};

/// What `certify-issuer` did.
#[derive(Clone, Debug, Serialize)]
pub struct CertifyReport {
    /// The issuing CA certificate it signed.
    pub issuing: CertSummary,
    /// The chain written (that certificate, then the root), for the
    /// replica's `lockstep init --install-chain`.
    pub chain: PathBuf,
}

/// Certifies the issuing key a CSR holds as an issuing CA under this
/// configuration's root, and writes the chain to `out`.
///
/// Refused: a CSR whose signature does not verify, whose key is not P-256,
/// or whose subject is the root's or this CA's own issuing CA's (relying
/// parties tell issuing CAs, and their CRLs, apart by subject).
pub fn certify_issuer(
    config: &Config,
    backend: &dyn KeyBackend,
    csr: &[u8],
    out: &Path,
    now: Timestamp,
) -> Result<CertifyReport, Error> {
    let chain = CaFiles::new(&config.ca.dir).read_chain()?;
    let (Some(own), Some(root)) = (chain.first(), chain.last()) else {
        return Err(Error::InvalidArgument("the CA's chain is empty".into()));
    };
    let request = parse_and_verify(csr)?;
    let subject = request.subject();
    for (taken, whose) in [(root, "the root's"), (own, "this CA's issuing CA's")] {
        if taken.tbs_certificate().subject() == subject {
            return Err(Error::InvalidArgument(format!(
                "the request's subject `{subject}` is {whose}: give each replica's issuing CA a subject of its own (`[ca] issuing_subject`), then run `lockstep init --external-root` there again"
            )));
        }
    }
    let root_key = backend.open_key(&config.keys.root)?;
    let root_not_after = CertSummary::of(root)?.not_after;
    let validity = CaValidity {
        not_before: now.plus_secs(-CA_BACKDATE_SECS),
        not_after: now
            .plus_secs(i64::from(config.ca.issuing_validity_days) * DAY_SECS)
            .min(root_not_after),
    };
    let issuing = certify_issuing_csr(root_key.as_ref(), root, &request, validity)?;
    let certified = vec![issuing, root.clone()];
    check_chain(&certified, now)?;
    let mut text = String::new();
    for c in &certified {
        text.push_str(&pem(c)?);
    }
    write_atomic(out, text.as_bytes(), 0o644)?;
    Ok(CertifyReport {
        issuing: CertSummary::of(&certified[0])?,
        chain: out.to_path_buf(),
    })
}
