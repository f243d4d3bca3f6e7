//! The hardware-key boundary.
//!
//! A [`DeviceKey`] is a signing key held by a device (a PKCS#11 token or a
//! TPM): lockstep can read its public key and ask it to sign, nothing more.
//! Certificates, CRLs, tokens and audit checkpoints are signed through this
//! trait and never learn which backend holds the key.
//!
//! A [`KeyBackend`] is the device itself: it creates keys inside the device,
//! opens existing ones, lists what is stored and answers health checks.
//! Each backend is built in by its Cargo feature (`pkcs11`, `tpm`).

mod error;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;

use std::fmt;
use std::sync::Arc;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spki::EncodePublicKey;

pub use error::{DeviceCode, KeyError};

/// A signing key held by a device. Object-safe; held as `Arc<dyn DeviceKey>`.
///
/// Implementations are safe to call from many threads at once. Calls block
/// on the device; async code calls them through a [`crate::lane::Lane`] as
/// wide as [`DeviceKey::concurrency`].
pub trait DeviceKey: Send + Sync + fmt::Debug {
    /// A short, non-secret name for logs and errors, e.g.
    /// `pkcs11:token=lockstep;object=lockstep-issuing`.
    fn name(&self) -> &str;

    /// The public half of the key.
    fn public_key(&self) -> &PublicKey;

    /// How many calls the device works on at once (its session limit);
    /// more callers than this only queue.
    fn concurrency(&self) -> usize {
        1
    }

    /// Signs a SHA-256 digest computed by the caller.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, KeyError>;

    /// Hashes `message` with the key's hash (SHA-256 for P-256) and signs it.
    fn sign(&self, message: &[u8]) -> Result<Signature, KeyError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.sign_digest(&digest)
    }
}

/// A device holding keys: where they are created, found and listed.
pub trait KeyBackend: Send + Sync + fmt::Debug {
    /// Short description of the device (module and token, or TPM TCTI).
    fn describe(&self) -> String;

    /// Opens an existing key.
    fn open_key(&self, key: &KeyRef) -> Result<Arc<dyn DeviceKey>, KeyError>;

    /// Generates a new ECDSA P-256 key inside the device: non-extractable,
    /// sensitive, usable for signing only. Fails with
    /// [`KeyError::KeyExists`] when a key with this reference is already
    /// there, unless `replace` is set, in which case the old key is destroyed.
    fn generate_key(&self, key: &KeyRef, replace: bool) -> Result<Arc<dyn DeviceKey>, KeyError>;

    /// Destroys the key pair with exactly this reference (used to roll back
    /// a key created by an `init` that then failed).
    fn destroy_key(&self, key: &KeyRef) -> Result<(), KeyError>;

    /// Whether a key with this reference exists.
    fn key_exists(&self, key: &KeyRef) -> Result<bool, KeyError>;

    /// Lists the objects stored on the device, with their protection
    /// attributes.
    fn list(&self) -> Result<Vec<ObjectInfo>, KeyError>;

    /// Checks the device answers and the user session is usable.
    fn check(&self) -> Result<(), KeyError>;
}

/// How configuration names a key inside a device.
///
/// PKCS#11 uses `label` and `id` (hex `CKA_ID`); the TPM backend uses
/// `handle` (a persistent handle such as `0x81000010`) and keeps `label` as
/// a display name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// The key's label (`CKA_LABEL`).
    pub label: String,
    /// The key's id (`CKA_ID`), as hex.
    #[serde(default, with = "hex_bytes")]
    pub id: Vec<u8>,
    /// A TPM persistent handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u32>,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.label)?;
        if !self.id.is_empty() {
            write!(f, " (id {})", hex::encode(&self.id))?;
        }
        if let Some(handle) = self.handle {
            write!(f, " (handle {handle:#010x})")?;
        }
        Ok(())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text.trim_start_matches("0x"))
            .map_err(|e| serde::de::Error::custom(format!("key id must be hex: {e}")))
    }
}

/// One object stored on a device, as `lockstep keys list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    /// `private-key`, `public-key`, `certificate`, `secret-key`, ...
    pub class: String,
    /// The object's label.
    pub label: String,
    /// The object's id, as hex.
    pub id: String,
    /// `EC P-256`, `RSA`, ... (keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// Protection attributes, for private and secret keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// A TPM persistent handle, when the device has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The device's own attribute names that are set (TPM object
    /// attributes such as `fixedtpm`, `sign`); empty for PKCS#11, whose
    /// attributes are all in `protection`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
}

/// The attributes that say a key cannot leave the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Protection {
    /// `CKA_SENSITIVE`: the key value is never revealed in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key may be wrapped out of the device.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has been sensitive since creation.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// `CKA_LOCAL`: the key was generated on the device.
    pub local: bool,
}

impl Protection {
    /// Whether the key is protected as lockstep requires of a signing key.
    pub fn is_hardware_bound(&self) -> bool {
        self.sensitive && !self.extractable && self.always_sensitive && self.never_extractable
    }
}

/// The signature algorithm of a device key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256 (`ecdsa-with-SHA256`, JWS `ES256`).
    EcdsaP256Sha256,
}

impl KeyAlgorithm {
    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ES256",
        }
    }
}

/// The public half of a device key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: p256::ecdsa::VerifyingKey,
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// Builds the key from an uncompressed or compressed SEC1 P-256 point.
    pub fn from_p256_sec1(point: &[u8]) -> Result<Self, KeyError> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| {
            KeyError::Unsupported("the device returned an invalid P-256 point".into())
        })?;
        let spki_der = key
            .to_public_key_der()
            .map_err(|e| KeyError::Unsupported(format!("cannot encode public key: {e}")))?
            .into_vec();
        Ok(Self { key, spki_der })
    }

    /// Reads a P-256 key from its DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        use p256::pkcs8::DecodePublicKey;
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .map_err(|e| KeyError::Unsupported(format!("not a P-256 public key: {e}")))?;
        Ok(Self {
            key,
            spki_der: der.to_vec(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256Sha256
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The uncompressed SEC1 point (`04 || x || y`).
    pub fn sec1_uncompressed(&self) -> Vec<u8> {
        self.key.to_sec1_point(false).as_bytes().to_vec()
    }

    /// SHA-256 of the DER `SubjectPublicKeyInfo`, the key's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }

    /// Verifies a signature over a SHA-256 digest.
    pub fn verify_digest(&self, digest: &[u8; 32], signature: &Signature) -> bool {
        self.key.verify_prehash(digest, &signature.0).is_ok()
    }

    /// Verifies a signature over `message` (hashed with SHA-256).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.verify_digest(&digest, signature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey(P-256, sha256:{})",
            hex::encode(&self.fingerprint()[..8])
        )
    }
}

/// An ECDSA signature as the device produced it (r and s).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(p256::ecdsa::Signature);

impl Signature {
    /// Parses the fixed-size `r || s` form that PKCS#11 `CKM_ECDSA` returns.
    pub fn from_raw(raw: &[u8]) -> Result<Self, KeyError> {
        p256::ecdsa::Signature::from_slice(raw)
            .map(Self)
            .map_err(|_| {
                KeyError::Unsupported(format!(
                    "the device returned a malformed ECDSA signature ({} bytes)",
                    raw.len()
                ))
            })
    }

    /// Builds a signature from its two scalars, each left-padded to 32 bytes.
    pub fn from_scalars(r: &[u8], s: &[u8]) -> Result<Self, KeyError> {
        if r.len() > 32 || s.len() > 32 {
            return Err(KeyError::Unsupported(
                "ECDSA scalar longer than 32 bytes".into(),
            ));
        }
        let mut raw = [0u8; 64];
        raw[32 - r.len()..32].copy_from_slice(r);
        raw[64 - s.len()..].copy_from_slice(s);
        Self::from_raw(&raw)
    }

    /// Reads a DER `ECDSA-Sig-Value` (as `openssl dgst -sign` writes it).
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        p256::ecdsa::Signature::from_der(der)
            .map(Self)
            .map_err(|_| KeyError::Unsupported("not a DER ECDSA P-256 signature".into()))
    }

    /// The DER `ECDSA-Sig-Value`, as X.509, CRLs and OCSP carry it.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.to_der().as_bytes().to_vec()
    }

    /// The fixed-size `r || s` form, as JWS (`ES256`) carries it.
    pub fn to_raw(&self) -> [u8; 64] {
        self.0.to_bytes().into()
    }
}

/// A software key for unit tests of code that signs through the boundary.
#[cfg(test)]
pub(crate) mod soft {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner;

    /// An in-memory P-256 key (tests only).
    #[derive(Debug)]
    pub struct SoftKey {
        key: p256::ecdsa::SigningKey,
        public: PublicKey,
    }

    impl SoftKey {
        /// A key derived from `seed` (deterministic, tests only).
        pub fn new(seed: u8) -> Self {
            let key = p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32]).unwrap();
            let public =
                PublicKey::from_p256_sec1(key.verifying_key().to_sec1_point(false).as_bytes())
                    .unwrap();
            Self { key, public }
        }
    }

    impl DeviceKey for SoftKey {
        fn name(&self) -> &str {
            "soft"
        }

        fn public_key(&self) -> &PublicKey {
            &self.public
        }

        fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, KeyError> {
            let sig: p256::ecdsa::Signature = self.key.sign_prehash(digest).unwrap();
            Signature::from_raw(&sig.to_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::hazmat::PrehashSigner;

    #[test]
    fn signature_forms_round_trip_and_verify() {
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public =
            PublicKey::from_p256_sec1(sk.verifying_key().to_sec1_point(false).as_bytes()).unwrap();
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let ours = Signature::from_raw(&sig.to_bytes()).unwrap();
        assert!(public.verify(b"hello", &ours));
        assert!(!public.verify(b"hellO", &ours));
        let der = ours.to_der();
        assert_eq!(der[0], 0x30);
        assert_eq!(
            p256::ecdsa::Signature::from_der(&der).unwrap().to_bytes(),
            sig.to_bytes()
        );
        let raw = ours.to_raw();
        let again = Signature::from_scalars(&raw[..32], &raw[32..]).unwrap();
        assert_eq!(again, ours);
    }

    #[test]
    fn short_scalars_are_left_padded() {
        let sk = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let digest = [1u8; 32];
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let raw: [u8; 64] = sig.to_bytes().into();
        // Strip leading zero bytes the way a TPM2B may come back.
        let r = &raw[..32];
        let s = &raw[32..];
        let r_trim = &r[r.iter().take_while(|b| **b == 0).count()..];
        let s_trim = &s[s.iter().take_while(|b| **b == 0).count()..];
        assert_eq!(
            Signature::from_scalars(r_trim, s_trim).unwrap().to_raw(),
            raw
        );
        assert!(Signature::from_scalars(&[1u8; 33], s).is_err());
    }

    #[test]
    fn garbage_points_and_signatures_are_errors() {
        assert!(PublicKey::from_p256_sec1(&[4u8; 65]).is_err());
        assert!(Signature::from_raw(&[0u8; 64]).is_err());
        assert!(Signature::from_raw(&[1u8; 10]).is_err());
    }

    #[test]
    fn key_ref_reads_hex_ids() {
        let k: KeyRef = toml::from_str("label = \"x\"\nid = \"0a0B\"").unwrap();
        assert_eq!(k.id, vec![0x0a, 0x0b]);
        assert!(toml::from_str::<KeyRef>("label = \"x\"\nid = \"zz\"").is_err());
        assert!(toml::from_str::<KeyRef>("label = \"x\"\npin = \"1\"").is_err());
    }
}
