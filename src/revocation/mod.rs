//! Revocation: what relying parties consult to learn that a session closed
//! early. A session's certificates are revoked in the store transaction
//! that closes it; this module publishes that state as a CRL (RFC 5280)
//! and answers OCSP (RFC 6960); SSH certificates are listed in the SSH
//! CA's KRL ([`krl`]).
//!
//! The CRL and OCSP speak for one issuing CA, this process's: replicas
//! with issuing keys of their own each answer for their own certificates.
//! The CRL lists only revoked certificates whose `notAfter` has not passed,
//! so it stays as small as the set of live credentials of closed sessions,
//! whatever the history. It is rebuilt when a revocation is recorded or
//! when half its validity has passed, with an ever-increasing CRL number.

pub mod krl;
pub mod ocsp;

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::store::{Store, StoreError};
use crate::x509::crl::CrlEntry;
use crate::x509::{Issuer, X509Error};

/// Why a CRL could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or encoding failed.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// The KRL could not be encoded.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    /// A background task failed.
    #[error("CRL task failed: {0}")]
    Task(String),
}

struct Cached {
    der: Arc<Vec<u8>>,
    entries: usize,
    version: u64,
    this_update: Timestamp,
}

/// Builds and caches the CRL.
pub struct CrlPublisher {
    issuer: Arc<Issuer>,
    store: Arc<dyn Store>,
    validity_secs: i64,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CrlPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlPublisher")
            .field("validity_secs", &self.validity_secs)
            .finish_non_exhaustive()
    }
}

impl CrlPublisher {
    /// A publisher whose CRLs are valid for `validity_secs` (their
    /// `nextUpdate`).
    pub fn new(issuer: Arc<Issuer>, store: Arc<dyn Store>, validity_secs: i64) -> Self {
        Self {
            issuer,
            store,
            validity_secs: validity_secs.max(2),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The current CRL (DER), rebuilt if revocations changed or half its
    /// validity passed.
    pub async fn current(&self, now: Timestamp) -> Result<Arc<Vec<u8>>, RevocationError> {
        Ok(self.current_with_entries(now).await?.0)
    }

    /// [`CrlPublisher::current`], with how many entries it lists.
    pub async fn current_with_entries(
        &self,
        now: Timestamp,
    ) -> Result<(Arc<Vec<u8>>, usize), RevocationError> {
        let mut cache = self.cache.lock().await;
        let version = self.store.revocation_version().await?;
        if let Some(c) = cache.as_ref()
            && c.version == version
            && now.secs_since(c.this_update) < self.validity_secs / 2
            && now >= c.this_update
        {
            return Ok((c.der.clone(), c.entries));
        }
        let entries: Vec<CrlEntry> = self
            .store
            .live_revocations(now, &self.issuer.fingerprint())
            .await?
            .into_iter()
            .map(|e| CrlEntry {
                serial: e.serial,
                revoked_at: e.revoked_at,
                reason: e.reason.code(),
            })
            .collect();
        let count = entries.len();
        let number = self.store.next_crl_number().await?;
        let issuer = self.issuer.clone();
        let next_update = now.plus_secs(self.validity_secs);
        let der =
            tokio::task::spawn_blocking(move || issuer.crl(&entries, number, now, next_update))
                .await
                .map_err(|e| RevocationError::Task(e.to_string()))??;
        let der = Arc::new(der);
        *cache = Some(Cached {
            der: der.clone(),
            entries: count,
            version,
            this_update: now,
        });
        Ok((der, count))
    }
}
