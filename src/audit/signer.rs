//! The audit signer: a key in the HSM/TPM, certified by the issuing CA for
//! the lockstep audit EKU, that signs checkpoints.

use std::path::Path;
use std::sync::Arc;

use super::{Checkpoint, checkpoint_message, signer_id};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::keys::{DeviceKey, KeyError};
use crate::x509::{Issuer, SubjectName, oids};

/// Signs checkpoints with the audit key.
#[derive(Clone)]
pub struct AuditSigner {
    key: Arc<dyn DeviceKey>,
    certificate: Vec<u8>,
    id: [u8; 32],
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("key", &self.key.name())
            .field("id", &hex::encode(&self.id[..8]))
            .finish()
    }
}

impl AuditSigner {
    /// A signer for `key`, certified by `certificate` (DER).
    pub fn new(key: Arc<dyn DeviceKey>, certificate: Vec<u8>) -> Self {
        let id = signer_id(&certificate);
        Self {
            key,
            certificate,
            id,
        }
    }

    /// The signer's certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// Signs checkpoint `number` covering the trail up to entry `upto`
    /// whose hash is `head`. Blocks on the device.
    pub fn sign(
        &self,
        number: u64,
        upto: u64,
        head: &[u8; 32],
        at: Timestamp,
    ) -> Result<Checkpoint, KeyError> {
        let message = checkpoint_message(number, upto, head, at.unix(), &self.id);
        let signature = self.key.sign(&message)?;
        Ok(Checkpoint {
            number,
            upto,
            head: hex::encode(head),
            at: at.unix(),
            signer: hex::encode(self.id),
            signature: hex::encode(signature.to_der()),
        })
    }
}

/// The certificate of the audit key, kept at `path` (see
/// [`crate::ca::service_certificate`]). Blocks on the device.
pub fn certificate_for(
    issuer: &Issuer,
    key: &dyn DeviceKey,
    path: &Path,
    now: Timestamp,
) -> Result<Vec<u8>, Error> {
    let subject = SubjectName::cn("lockstep audit signer").with_organization("lockstep");
    crate::ca::service_certificate(issuer, key, path, &subject, oids::KP_LOCKSTEP_AUDIT, now)
}
