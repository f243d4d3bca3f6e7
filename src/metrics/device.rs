//! Device-signature latency: a key backend whose keys time each signature.

use std::sync::Arc;
use std::time::Instant;

use super::Metrics;
use crate::keys::{DeviceKey, KeyBackend, KeyError, KeyRef, ObjectInfo, PublicKey, Signature};

/// `backend`, with every key opened or generated through it timed into
/// `lockstep_device_signature_duration_seconds{backend=kind, key=role}`:
/// the role (`issuing`, `token`, …) of the key in `roles` with the same
/// reference, `other` for a key of none.
pub fn timed(
    backend: Arc<dyn KeyBackend>,
    kind: &'static str,
    roles: Vec<(&'static str, KeyRef)>,
    metrics: Arc<Metrics>,
) -> Arc<dyn KeyBackend> {
    Arc::new(TimedBackend {
        inner: backend,
        kind,
        roles,
        metrics,
    })
}

struct TimedBackend {
    inner: Arc<dyn KeyBackend>,
    kind: &'static str,
    roles: Vec<(&'static str, KeyRef)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TimedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TimedBackend {
    fn wrap(&self, key: Arc<dyn DeviceKey>, reference: &KeyRef) -> Arc<dyn DeviceKey> {
        let role = self
            .roles
            .iter()
            .find(|(_, r)| r == reference)
            .map_or("other", |(role, _)| role);
        Arc::new(TimedKey {
            inner: key,
            labels: [self.kind, role],
            metrics: self.metrics.clone(),
        })
    }
}

impl KeyBackend for TimedBackend {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn open_key(&self, key: &KeyRef) -> Result<Arc<dyn DeviceKey>, KeyError> {
        Ok(self.wrap(self.inner.open_key(key)?, key))
    }

    fn generate_key(&self, key: &KeyRef, replace: bool) -> Result<Arc<dyn DeviceKey>, KeyError> {
        Ok(self.wrap(self.inner.generate_key(key, replace)?, key))
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), KeyError> {
        self.inner.destroy_key(key)
    }

    fn key_exists(&self, key: &KeyRef) -> Result<bool, KeyError> {
        self.inner.key_exists(key)
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, KeyError> {
        self.inner.list()
    }

    fn check(&self) -> Result<(), KeyError> {
        self.inner.check()
    }
}

struct TimedKey {
    inner: Arc<dyn DeviceKey>,
    /// Backend kind and key role.
    labels: [&'static str; 2],
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TimedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl DeviceKey for TimedKey {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn public_key(&self) -> &PublicKey {
        self.inner.public_key()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    /// Times successful signatures only: a failure's time says nothing of
    /// the device's speed.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, KeyError> {
        let started = Instant::now();
        let signature = self.inner.sign_digest(digest)?;
        self.metrics
            .device_seconds
            .observe(&self.labels, started.elapsed().as_secs_f64());
        Ok(signature)
    }
}
