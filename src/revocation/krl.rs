//! The SSH CA's KRL: revoked SSH certificates of sessions that closed
//! early and whose `valid_before` has not passed, as sshd's
//! `RevokedKeys` reads it. Like the CRL it is bounded by live
//! credentials, rebuilt when a revocation is recorded, and otherwise at
//! most a minute old (so certificates that expired meanwhile drop off).

use std::sync::Arc;

use super::RevocationError;
use crate::clock::Timestamp;
use crate::ssh::SshCa;
use crate::store::Store;

/// How long a KRL is served before it is rebuilt without a new revocation.
const REBUILD_SECS: i64 = 60;

struct Cached {
    krl: Arc<Vec<u8>>,
    version: u64,
    built: Timestamp,
}

/// Builds and caches the KRL.
pub struct KrlPublisher {
    ca: SshCa,
    store: Arc<dyn Store>,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for KrlPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrlPublisher").finish_non_exhaustive()
    }
}

impl KrlPublisher {
    /// A publisher for `ca`'s certificates.
    pub fn new(ca: SshCa, store: Arc<dyn Store>) -> Self {
        Self {
            ca,
            store,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The current KRL, rebuilt if revocations changed or it is a minute
    /// old. Its version is the store's revocation counter, so it only
    /// grows.
    pub async fn current(&self, now: Timestamp) -> Result<Arc<Vec<u8>>, RevocationError> {
        let mut cache = self.cache.lock().await;
        let version = self.store.revocation_version().await?;
        if let Some(c) = cache.as_ref()
            && c.version == version
            && (0..REBUILD_SECS).contains(&now.secs_since(c.built))
        {
            return Ok(c.krl.clone());
        }
        // Entries recorded for no issuer (before issuers were kept) are
        // X.509 serials, longer than 16 hex digits: not ours.
        let serials: Vec<u64> = self
            .store
            .live_revocations(now, &self.ca.issuer_fingerprint())
            .await?
            .iter()
            .filter(|e| e.serial.len() == 16)
            .filter_map(|e| u64::from_str_radix(&e.serial, 16).ok())
            .collect();
        let krl = Arc::new(crate::ssh::krl(
            &self.ca,
            &serials,
            version,
            now.unix().max(0) as u64,
        )?);
        *cache = Some(Cached {
            krl: krl.clone(),
            version,
            built: now,
        });
        Ok(krl)
    }
}
