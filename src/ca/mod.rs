//! The certificate authority: setting it up (`lockstep init`), certifying
//! the issuing keys of replicas that keep their own (`certify-issuer`), where its
//! certificates are kept, and loading the issuer that mints under it.

mod certify;
mod init;
mod service;

use std::path::{Path, PathBuf};

use der::{DecodePem, EncodePem};
use x509_cert::Certificate;
use x509_cert::request::CertReq;

pub use certify::{CertifyReport, certify_issuer};
pub use init::{CertSummary, GeneratedKey, InitOptions, InitReport, init, install_chain};
pub use service::service_certificate;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;
use crate::fsio::write_atomic;
use crate::keys::KeyBackend;
use crate::x509::{Issuer, check_chain};

/// The CA's certificate files in `[ca] dir`.
#[derive(Clone, Debug)]
pub struct CaFiles {
    dir: PathBuf,
}

impl CaFiles {
    /// The files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `chain.pem`: the issuing CA first, the root last.
    pub fn chain_path(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }

    /// `root.pem`: the trust anchor to distribute to relying parties.
    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    /// `issuing.pem`: the issuing CA certificate.
    pub fn issuing_path(&self) -> PathBuf {
        self.dir.join("issuing.pem")
    }

    /// `issuing.csr.pem`: the request for an external root.
    pub fn csr_path(&self) -> PathBuf {
        self.dir.join("issuing.csr.pem")
    }

    /// Reads the chain.
    pub fn read_chain(&self) -> Result<Vec<Certificate>, Error> {
        let path = self.chain_path();
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::CaNotInitialized(format!(
                    "no CA chain at {}: run `lockstep init` first",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        read_pem_chain(&pem, &path)
    }

    /// Writes `chain` (issuing CA first, root last) as `chain.pem`,
    /// `issuing.pem` and `root.pem`, each atomically.
    pub fn write_chain(&self, chain: &[Certificate]) -> Result<Vec<PathBuf>, Error> {
        let (Some(issuing), Some(root)) = (chain.first(), chain.last()) else {
            return Err(Error::InvalidArgument("empty chain".into()));
        };
        let mut all = String::new();
        for c in chain {
            all.push_str(&pem(c)?);
        }
        let files = [
            (self.root_path(), pem(root)?),
            (self.issuing_path(), pem(issuing)?),
            (self.chain_path(), all),
        ];
        let mut written = Vec::new();
        for (path, text) in files {
            write_atomic(&path, text.as_bytes(), 0o644)?;
            written.push(path);
        }
        Ok(written)
    }

    /// Writes the issuing CA's CSR.
    pub fn write_csr(&self, csr: &CertReq) -> Result<PathBuf, Error> {
        let path = self.csr_path();
        let text = csr
            .to_pem(der::pem::LineEnding::LF)
            .map_err(|e| Error::X509(e.into()))?;
        write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

fn pem(cert: &Certificate) -> Result<String, Error> {
    cert.to_pem(der::pem::LineEnding::LF)
        .map_err(|e| Error::X509(e.into()))
}

/// Reads every `CERTIFICATE` block of a PEM file.
pub fn read_pem_chain(pem: &[u8], source: &Path) -> Result<Vec<Certificate>, Error> {
    let chain = Certificate::load_pem_chain(pem).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: not a PEM certificate chain: {e}",
            source.display()
        ))
    })?;
    if chain.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no certificates found",
            source.display()
        )));
    }
    Ok(chain)
}

/// Reads one PEM certificate.
pub fn read_pem_certificate(pem: &str, source: &Path) -> Result<Certificate, Error> {
    Certificate::from_pem(pem).map_err(|e| {
        Error::InvalidArgument(format!("{}: not a PEM certificate: {e}", source.display()))
    })
}

/// Opens the issuing key and chain and checks they belong together and are
/// valid at `now`.
pub fn load_issuer(
    config: &Config,
    backend: &dyn KeyBackend,
    now: Timestamp,
) -> Result<Issuer, Error> {
    let chain = CaFiles::new(&config.ca.dir).read_chain()?;
    check_chain(&chain, now)?;
    let key = backend.open_key(&config.keys.issuing)?;
    Ok(Issuer::new(key, chain)?)
}
