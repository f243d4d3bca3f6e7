//! `lockstep init`: create the CA's keys inside the device and its
//! certificates, or a CSR for an external root and, later, install the
//! chain that root returns.

use std::path::PathBuf;
use std::sync::Arc;

use der::Encode;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::CaFiles;
use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;
use crate::keys::{DeviceKey, KeyBackend, KeyRef};
use crate::x509::{
    CaValidity, Issuer, check_chain, issuing_ca_certificate, issuing_csr, self_signed_root,
};

/// CA certificates start this many seconds in the past, so relying parties
/// whose clocks run a little slow accept them at once.
pub(super) const CA_BACKDATE_SECS: i64 = 60;
pub(super) const DAY_SECS: i64 = 86_400;

/// How `init` should proceed.
#[derive(Clone, Copy, Debug, Default)]
pub struct InitOptions {
    /// Destroy and replace keys that already exist.
    pub force: bool,
    /// Create only the issuing key and write a CSR for an external root.
    pub external_root: bool,
}

/// A certificate, summarised for people and scripts.
#[derive(Clone, Debug, Serialize)]
pub struct CertSummary {
    /// Subject, RFC 4514.
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// `notBefore`.
    pub not_before: Timestamp,
    /// `notAfter`.
    pub not_after: Timestamp,
    /// SHA-256 of the public key (`SubjectPublicKeyInfo`), hex.
    pub key_sha256: String,
}

impl CertSummary {
    /// Summarises `cert`.
    pub fn of(cert: &Certificate) -> Result<Self, Error> {
        let tbs = cert.tbs_certificate();
        let spki = tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Error::X509(e.into()))?;
        Ok(Self {
            subject: tbs.subject().to_string(),
            serial: hex::encode(tbs.serial_number().as_bytes()),
            not_before: Timestamp::from_unix(
                tbs.validity().not_before.to_unix_duration().as_secs() as i64,
            ),
            not_after: Timestamp::from_unix(
                tbs.validity().not_after.to_unix_duration().as_secs() as i64
            ),
            key_sha256: hex::encode(Sha256::digest(spki)),
        })
    }
}

/// What `init` did.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// `self-signed-root`, `external-root-csr`, `installed-chain` or
    /// `added-service-keys`.
    pub mode: &'static str,
    /// The device holding the keys.
    pub backend: String,
    /// The root certificate, when lockstep has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<CertSummary>,
    /// The issuing CA certificate, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuing: Option<CertSummary>,
    /// The CSR to take to the external root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csr: Option<PathBuf>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Service keys created beside the CA (`token`, `audit`).
    pub service_keys: Vec<String>,
    /// Every key generated on the device.
    pub generated: Vec<GeneratedKey>,
}

/// A key `init` generated on the device.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratedKey {
    /// Its role: `root`, `issuing`, `token`, `audit`.
    pub role: String,
    /// Its reference.
    pub key: String,
    /// SHA-256 of its public key, hex.
    pub key_sha256: String,
}

/// Keys created during this `init`, destroyed again if it fails, so a
/// failed `init` leaves the device as it found it.
struct Created<'a> {
    backend: &'a dyn KeyBackend,
    keys: Vec<KeyRef>,
    generated: Vec<GeneratedKey>,
}

impl Created<'_> {
    fn generate(
        &mut self,
        role: &str,
        key: &KeyRef,
        force: bool,
    ) -> Result<Arc<dyn DeviceKey>, Error> {
        let existed = self.backend.key_exists(key)?;
        let k = self.backend.generate_key(key, force)?;
        self.generated.push(GeneratedKey {
            role: role.to_owned(),
            key: key.to_string(),
            key_sha256: hex::encode(k.public_key().fingerprint()),
        });
        if !existed {
            self.keys.push(key.clone());
        }
        Ok(k)
    }

    /// Keeps the keys created; returns what was generated.
    fn keep(mut self) -> Vec<GeneratedKey> {
        self.keys.clear();
        std::mem::take(&mut self.generated)
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        for key in self.keys.drain(..) {
            if let Err(e) = self.backend.destroy_key(&key) {
                tracing::error!(key = %key, error = %e, "could not roll back a key created by a failed init");
            }
        }
    }
}

/// Creates the CA: keys inside the device, then either a self-signed root
/// and the issuing CA certificate, or (external root) a CSR for the
/// issuing key. Refuses to replace existing keys unless `force` is set;
/// checks every key before creating any.
pub fn init(
    config: &Config,
    backend: &dyn KeyBackend,
    options: InitOptions,
    now: Timestamp,
) -> Result<InitReport, Error> {
    let files = CaFiles::new(&config.ca.dir);
    let roles: Vec<&KeyRef> = if options.external_root {
        vec![&config.keys.issuing]
    } else {
        vec![&config.keys.root, &config.keys.issuing]
    };
    let mut created = Created {
        backend,
        keys: Vec::new(),
        generated: Vec::new(),
    };
    if !options.force {
        let mut existing = Vec::new();
        for key in &roles {
            if backend.key_exists(key)? {
                existing.push(*key);
            }
        }
        if let Some(first) = existing.first() {
            // The CA is there already. Service keys added to the
            // configuration since are created; nothing else changes.
            let mut missing = Vec::new();
            for (role, key) in config.keys.service_keys() {
                if !backend.key_exists(key)? {
                    missing.push((role, key));
                }
            }
            if existing.len() < roles.len() || missing.is_empty() {
                return Err(crate::keys::KeyError::KeyExists {
                    device: backend.describe(),
                    key: first.to_string(),
                }
                .into());
            }
            let mut service_keys = Vec::new();
            for (role, key) in missing {
                created.generate(role, key, false)?;
                service_keys.push(role.to_owned());
            }
            let generated = created.keep();
            return Ok(InitReport {
                generated,
                mode: "added-service-keys",
                backend: backend.describe(),
                root: None,
                issuing: None,
                csr: None,
                files: Vec::new(),
                service_keys,
            });
        }
    }
    let mut service_keys = Vec::new();
    for (role, key) in config.keys.service_keys() {
        created.generate(role, key, options.force)?;
        service_keys.push(role.to_owned());
    }
    let not_before = now.plus_secs(-CA_BACKDATE_SECS);
    if options.external_root {
        let issuing = created.generate("issuing", &config.keys.issuing, options.force)?;
        let csr = issuing_csr(issuing.as_ref(), &config.ca.issuing_subject)?;
        let path = files.write_csr(&csr)?;
        let generated = created.keep();
        return Ok(InitReport {
            generated,
            mode: "external-root-csr",
            backend: backend.describe(),
            root: None,
            issuing: None,
            csr: Some(path.clone()),
            files: vec![path],
            service_keys,
        });
    }
    let root_key = created.generate("root", &config.keys.root, options.force)?;
    let issuing_key = created.generate("issuing", &config.keys.issuing, options.force)?;
    let root_validity = CaValidity {
        not_before,
        not_after: now.plus_secs(i64::from(config.ca.root_validity_days) * DAY_SECS),
    };
    let root = self_signed_root(root_key.as_ref(), &config.ca.root_subject, root_validity)?;
    let issuing_validity = CaValidity {
        not_before,
        not_after: now
            .plus_secs(i64::from(config.ca.issuing_validity_days) * DAY_SECS)
            .min(root_validity.not_after),
    };
    let issuing = issuing_ca_certificate(
        root_key.as_ref(),
        &root,
        issuing_key.public_key(),
        &config.ca.issuing_subject,
        issuing_validity,
    )?;
    let chain = vec![issuing, root];
    check_chain(&chain, now)?;
    Issuer::new(issuing_key, chain.clone())?;
    let written = files.write_chain(&chain)?;
    let generated = created.keep();
    Ok(InitReport {
        generated,
        mode: "self-signed-root",
        backend: backend.describe(),
        root: Some(CertSummary::of(&chain[1])?),
        issuing: Some(CertSummary::of(&chain[0])?),
        csr: None,
        files: written,
        service_keys,
    })
}

/// Installs the chain an external root returned for the issuing key's CSR:
/// the issuing CA certificate (which must hold the issuing key's public
/// key), any intermediates and the root, in any order.
pub fn install_chain(
    config: &Config,
    backend: &dyn KeyBackend,
    certificates: Vec<Certificate>,
    now: Timestamp,
) -> Result<InitReport, Error> {
    let key = backend.open_key(&config.keys.issuing)?;
    let chain = order_chain(certificates, key.public_key().spki_der())?;
    check_chain(&chain, now)?;
    Issuer::new(key, chain.clone())?;
    let written = CaFiles::new(&config.ca.dir).write_chain(&chain)?;
    Ok(InitReport {
        mode: "installed-chain",
        backend: backend.describe(),
        root: chain.last().map(CertSummary::of).transpose()?,
        issuing: Some(CertSummary::of(&chain[0])?),
        csr: None,
        files: written,
        service_keys: Vec::new(),
        generated: Vec::new(),
    })
}

/// Orders certificates from the one holding `leaf_spki` up to a
/// self-signed root, by issuer name.
fn order_chain(mut pool: Vec<Certificate>, leaf_spki: &[u8]) -> Result<Vec<Certificate>, Error> {
    let spki_of = |c: &Certificate| c.tbs_certificate().subject_public_key_info().to_der().ok();
    let start = pool
        .iter()
        .position(|c| spki_of(c).as_deref() == Some(leaf_spki))
        .ok_or_else(|| {
            Error::X509(crate::x509::X509Error::Chain(
                "no certificate in the file holds the issuing key's public key: was it issued for issuing.csr.pem?".into(),
            ))
        })?;
    let mut chain = vec![pool.swap_remove(start)];
    loop {
        let current = chain[chain.len() - 1].tbs_certificate();
        if current.issuer() == current.subject() {
            break;
        }
        let Some(next) = pool
            .iter()
            .position(|c| c.tbs_certificate().subject() == current.issuer())
        else {
            return Err(Error::X509(crate::x509::X509Error::Chain(format!(
                "the chain stops at {}: include its issuer {} up to the self-signed root",
                current.subject(),
                current.issuer()
            ))));
        };
        chain.push(pool.swap_remove(next));
    }
    Ok(chain)
}
