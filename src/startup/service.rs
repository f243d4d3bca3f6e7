//! Step 4: the issuer service over the store, policy, CA and signers, with
//! its start on the audit trail.

use std::sync::Arc;

use super::keys::Signers;
use crate::clock::Clock;
use crate::config::{Config, ServerConfig};
use crate::error::Error;
use crate::keys::KeyBackend;
use crate::policy::Policy;
use crate::service::{Service, ServiceParts};
use crate::store::Store;
use crate::x509::Issuer;

/// What the earlier steps built.
pub struct Parts {
    /// The opened store.
    pub store: Arc<dyn Store>,
    /// The loaded policy.
    pub policy: Arc<Policy>,
    /// The issuing CA.
    pub issuer: Arc<Issuer>,
    /// The key device.
    pub backend: Arc<dyn KeyBackend>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The token and audit signers.
    pub signers: Signers,
    /// Where the service's metrics are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Builds the service with the `[revocation]` and `[audit]` settings and
/// records its start.
pub async fn start(
    config: &Config,
    server: &ServerConfig,
    parts: Parts,
) -> Result<Arc<Service>, Error> {
    let parts = ServiceParts {
        store: parts.store,
        policy: parts.policy,
        issuer: parts.issuer,
        backend: parts.backend,
        clock: parts.clock,
        organization: server.organization.clone(),
        tokens: parts.signers.tokens,
        ssh: parts.signers.ssh,
        tsa: parts.signers.tsa,
        crl_validity_secs: config
            .revocation
            .crl_secs()
            .map_err(Error::InvalidArgument)?,
        ocsp_validity_secs: config
            .revocation
            .ocsp_secs()
            .map_err(Error::InvalidArgument)?,
        audit: parts.signers.audit,
        checkpoint_every: config.audit.checkpoint_every,
        checkpoint_interval_secs: config
            .audit
            .interval_secs()
            .map_err(Error::InvalidArgument)?,
        anonymous_refusals_per_sec: config.audit.anonymous_refusals_per_sec,
        anonymous_refusals_burst: config.audit.anonymous_refusals_burst,
        events: config.events.settings().map_err(Error::InvalidArgument)?,
        metrics: parts.metrics,
    };
    let service = Arc::new(Service::new(parts).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    service
        .started()
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot record the start: {e}")))?;
    Ok(service)
}
