//! `lockstep cert`: the one command a CI job or workload runs to get its
//! certificate.

use std::path::PathBuf;

use clap::Args;
use der::EncodePem;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use x509_cert::builder::{Builder, RequestBuilder};
use zeroize::Zeroizing;

use super::Output;
use super::client_args::ClientArgs;
use crate::error::Error;
use crate::fsio::write_atomic;
use crate::x509::SubjectName;

/// Generate a key in memory, send its CSR for an open session, write the
/// certificate and chain (and the key, 0600, if asked).
#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Write the generated private key here (PKCS#8 PEM, mode 0600).
    #[arg(long, required_unless_present = "csr", conflicts_with = "csr")]
    key_out: Option<PathBuf>,
    /// Send this CSR (PEM) instead of generating a key (for keys that live
    /// elsewhere: a smart card, a KMS).
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Write the certificate here (PEM).
    #[arg(long)]
    cert_out: PathBuf,
    /// Write the CA chain (issuing CA, root) here (PEM).
    #[arg(long)]
    chain_out: Option<PathBuf>,
}

/// A fresh P-256 key from the operating system's randomness, in memory
/// only (wiped when dropped).
pub(super) fn fresh_p256_key() -> Result<p256::SecretKey, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("key generation: {e}"));
    for _ in 0..8 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| bad(&e))?;
        if let Ok(k) = p256::SecretKey::from_slice(bytes.as_ref()) {
            return Ok(k);
        }
    }
    Err(bad(&"no valid key from the OS randomness"))
}

/// A fresh P-256 key and a CSR for it. The key's bytes are wiped when
/// dropped.
fn key_and_csr() -> Result<(Zeroizing<String>, String), Error> {
    let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("key generation: {e}"));
    let (signing, csr_pem) = signing_key_and_csr()?;
    let key_pem = signing.to_pkcs8_pem(LineEnding::LF).map_err(|e| bad(&e))?;
    Ok((Zeroizing::new(key_pem.to_string()), csr_pem))
}

/// A fresh P-256 signing key (in memory, wiped when dropped) and a CSR
/// for it.
pub(super) fn signing_key_and_csr() -> Result<(p256::ecdsa::SigningKey, String), Error> {
    let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("key generation: {e}"));
    let signing = p256::ecdsa::SigningKey::from(fresh_p256_key()?);
    // The server takes names from the session; the CSR's subject is
    // informational only.
    let subject = SubjectName::cn("lockstep cert").to_name()?;
    let builder = RequestBuilder::new(subject).map_err(|e| bad(&e))?;
    let csr = builder
        .build::<_, p256::ecdsa::DerSignature>(&signing)
        .map_err(|e| bad(&e))?;
    let csr_pem = csr.to_pem(LineEnding::LF).map_err(|e| bad(&e))?;
    Ok((signing, csr_pem.to_string()))
}

/// Runs `cert`.
pub fn run(args: CertArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let (key, csr) = match &args.csr {
        Some(path) => (
            None,
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
        ),
        None => {
            let (key, csr) = key_and_csr()?;
            (Some(key), csr)
        }
    };
    let runtime = super::session::runtime()?;
    let issued = runtime.block_on(client.certificate(&args.id, csr))?;
    if let (Some(key), Some(path)) = (&key, &args.key_out) {
        write_atomic(path, key.as_bytes(), 0o600)?;
    }
    write_atomic(&args.cert_out, issued.certificate.as_bytes(), 0o644)?;
    if let Some(path) = &args.chain_out {
        write_atomic(path, issued.chain.as_bytes(), 0o644)?;
    }
    out.print(&issued, || {
        format!(
            "certificate {} for session {} valid until {}\n  wrote {}{}{}\n",
            issued.serial,
            issued.session,
            issued.not_after,
            args.cert_out.display(),
            args.chain_out
                .as_ref()
                .map(|p| format!(", {}", p.display()))
                .unwrap_or_default(),
            args.key_out
                .as_ref()
                .map(|p| format!(", {} (0600)", p.display()))
                .unwrap_or_default(),
        )
    });
    Ok(())
}
