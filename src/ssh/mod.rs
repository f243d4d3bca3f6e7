//! OpenSSH user certificates signed by a CA key held in the device
//! (`[keys.ssh]`), and the KRL that revokes them.
//!
//! The certificate format, its signature encoding and the key formats come
//! from the `ssh-key` crate; lockstep's device key stands behind its
//! signing trait, so the CA key never leaves the HSM or TPM. What a
//! certificate says (principals, options, validity) comes from the session
//! and its policy, never from the request: see [`UserCertSpec`].

mod krl;

use std::cell::RefCell;
use std::sync::Arc;

use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{Certificate, HashAlg, PublicKey};

use crate::keys::{DeviceKey, KeyError};

pub use krl::krl;

/// The longest public key text accepted from a requester.
const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;

/// Why an SSH certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The requester's public key is not usable.
    #[error("public_key: {0}")]
    PublicKey(String),
    /// The device failed to sign.
    #[error(transparent)]
    Device(#[from] KeyError),
    /// The certificate could not be encoded.
    #[error("SSH certificate: {0}")]
    Encoding(String),
}

/// What a session's SSH user certificate says.
#[derive(Clone, Debug)]
pub struct UserCertSpec {
    /// The random serial (never 0: a KRL cannot list it).
    pub serial: u64,
    /// `key_id`: names the session, for sshd's log.
    pub key_id: String,
    /// Principals from the policy.
    pub principals: Vec<String>,
    /// The minting second.
    pub valid_after: u64,
    /// The session's `closes_at`.
    pub valid_before: u64,
    /// Critical options (`force-command`, `source-address`).
    pub critical_options: Vec<(String, String)>,
    /// Extensions (`permit-pty`, …), all with empty data.
    pub extensions: Vec<String>,
}

/// The SSH certificate authority: a P-256 key in the device.
#[derive(Debug, Clone)]
pub struct SshCa {
    key: Arc<dyn DeviceKey>,
    public: KeyData,
}

impl SshCa {
    /// The CA on a device key.
    pub fn new(key: Arc<dyn DeviceKey>) -> Result<Self, SshError> {
        let point = key.public_key().sec1_uncompressed();
        let ecdsa = EcdsaPublicKey::from_sec1_bytes(&point)
            .map_err(|e| SshError::Encoding(format!("CA key: {e}")))?;
        Ok(Self {
            key,
            public: KeyData::Ecdsa(ecdsa),
        })
    }

    /// The CA key as a line for sshd's `TrustedUserCAKeys`.
    pub fn public_line(&self) -> String {
        PublicKey::new(self.public.clone(), "lockstep-ssh-ca")
            .to_openssh()
            .unwrap_or_default()
    }

    /// The CA key's SHA-256 fingerprint over its SPKI (hex): the issuer the
    /// store keeps with each certificate, so the KRL lists only this CA's.
    pub fn issuer_fingerprint(&self) -> String {
        hex::encode(self.key.public_key().fingerprint())
    }

    /// Signs a user certificate for `subject` on the device.
    pub fn certify(&self, subject: &KeyData, spec: &UserCertSpec) -> Result<Certificate, SshError> {
        let bad = |e: ssh_key::Error| SshError::Encoding(e.to_string());
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| SshError::Encoding(e.to_string()))?;
        let mut b = Builder::new(
            nonce.to_vec(),
            subject.clone(),
            spec.valid_after,
            spec.valid_before,
        )
        .map_err(bad)?;
        b.serial(spec.serial).map_err(bad)?;
        b.cert_type(CertType::User).map_err(bad)?;
        b.key_id(spec.key_id.clone()).map_err(bad)?;
        for p in &spec.principals {
            b.valid_principal(p.clone()).map_err(bad)?;
        }
        for (name, data) in &spec.critical_options {
            b.critical_option(name.clone(), data.clone()).map_err(bad)?;
        }
        for name in &spec.extensions {
            b.extension(name.clone(), "").map_err(bad)?;
        }
        let signer = DeviceSigner {
            ca: self,
            failed: RefCell::new(None),
        };
        let signed = b.sign(&signer);
        if let Some(e) = signer.failed.into_inner() {
            return Err(e.into());
        }
        signed.map_err(bad)
    }

    /// The CA's public key data (as a KRL names it).
    pub(crate) fn key_data(&self) -> &KeyData {
        &self.public
    }
}

/// A requester's public key (one `authorized_keys`-style line), checked:
/// a plain key (not a certificate) of a kind sshd accepts.
pub fn parse_public_key(text: &str) -> Result<KeyData, SshError> {
    let bad = |m: &str| SshError::PublicKey(m.to_owned());
    if text.len() > MAX_PUBLIC_KEY_LEN {
        return Err(bad("longer than 16 KiB; give one OpenSSH public key line"));
    }
    let key = PublicKey::from_openssh(text.trim()).map_err(|_| {
        bad("not an OpenSSH public key; give a line like `ssh-ed25519 AAAA… comment`")
    })?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(key.key_data().clone()),
        KeyData::Rsa(rsa) if rsa_bits(rsa) >= 3072 => Ok(key.key_data().clone()),
        KeyData::Rsa(_) => Err(bad("RSA keys must have at least 3072 bits")),
        _ => Err(bad(
            "the key type is not accepted; use ed25519, ecdsa or RSA of 3072 bits or more",
        )),
    }
}

fn rsa_bits(rsa: &ssh_key::public::RsaPublicKey) -> usize {
    let n = rsa.n().as_positive_bytes().unwrap_or_default();
    n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)
}

/// A key's fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// lockstep's device key behind `ssh-key`'s signing trait. A device error
/// is kept so the caller reports it as the device's (a retryable outage),
/// not as an encoding failure.
struct DeviceSigner<'a> {
    ca: &'a SshCa,
    failed: RefCell<Option<KeyError>>,
}

impl From<&DeviceSigner<'_>> for KeyData {
    fn from(signer: &DeviceSigner<'_>) -> Self {
        signer.ca.public.clone()
    }
}

impl signature::Signer<ssh_key::Signature> for DeviceSigner<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<ssh_key::Signature, signature::Error> {
        // ecdsa-sha2-nistp256: ECDSA over SHA-256 of the message, (r, s)
        // as two mpints; the conversion is ssh-key's.
        let signed = self.ca.key.sign(message).map_err(|e| {
            *self.failed.borrow_mut() = Some(e);
            signature::Error::new()
        })?;
        let raw = p256::ecdsa::Signature::from_slice(&signed.to_raw())
            .map_err(|_| signature::Error::new())?;
        ssh_key::Signature::try_from(raw).map_err(|_| signature::Error::new())
    }
}

#[cfg(test)]
mod tests;
