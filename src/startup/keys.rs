//! Step 2: the key backend, the issuing CA on it, and the service's other
//! signers (session tokens, audit checkpoints, the SSH CA, the timestamp
//! authority).

use std::sync::Arc;

use super::blocking;
use crate::audit::AuditSigner;
use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::Error;
use crate::keys::KeyBackend;
use crate::metrics::Metrics;
use crate::ssh::SshCa;
use crate::tokens::TokenSigner;
use crate::tsa::TimestampAuthority;
use crate::x509::Issuer;

/// The signers beside the issuing CA, each optional.
pub struct Signers {
    /// Signs session-bound tokens (`[keys.token]`).
    pub tokens: Option<TokenSigner>,
    /// Signs audit checkpoints (`[keys.audit]`).
    pub audit: Option<AuditSigner>,
    /// Signs SSH user certificates (`[keys.ssh]`).
    pub ssh: Option<SshCa>,
    /// Timestamps release signatures (`[keys.tsa]`).
    pub tsa: Option<TimestampAuthority>,
}

/// Opens the configured key backend and loads the issuing CA: its
/// certificates from `[ca] dir`, its key from the device.
/// Every key opened through the backend it returns times its signatures
/// into `metrics`.
pub async fn open(
    config: &Config,
    now: Timestamp,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<dyn KeyBackend>, Arc<Issuer>), Error> {
    let backend = crate::metrics::device::timed(
        config.backend.open()?,
        config.backend.feature().name(),
        config.keys.roles(),
        metrics.clone(),
    );
    let config = config.clone();
    blocking(move || {
        let issuer = crate::ca::load_issuer(&config, backend.as_ref(), now)?;
        Ok((backend, Arc::new(issuer)))
    })
    .await
}

/// Opens the token, audit and SSH CA keys the configuration names.
pub async fn signers(
    config: &Config,
    backend: &Arc<dyn KeyBackend>,
    issuer: &Arc<Issuer>,
    now: Timestamp,
) -> Result<Signers, Error> {
    Ok(Signers {
        tokens: token_signer(config, backend).await?,
        audit: audit_signer(config, backend, issuer, now).await?,
        ssh: ssh_ca(config, backend).await?,
        tsa: timestamp_authority(config, backend, issuer, now).await?,
    })
}

/// The `[keys.tsa]` timestamp authority with its certificate from the
/// issuing CA (kept in `[ca] dir`/tsa.pem); without it signatures are not
/// timestamped.
async fn timestamp_authority(
    config: &Config,
    backend: &Arc<dyn KeyBackend>,
    issuer: &Arc<Issuer>,
    now: Timestamp,
) -> Result<Option<TimestampAuthority>, Error> {
    let Some(key) = config.keys.tsa.clone() else {
        return Ok(None);
    };
    let backend = backend.clone();
    let issuer = issuer.clone();
    let path = config.ca.dir.join("tsa.pem");
    let tsa = blocking(move || {
        let key = backend.open_key(&key)?;
        crate::tsa::open(key, &issuer, &path, now)
    })
    .await?;
    Ok(Some(tsa))
}

/// The `[keys.ssh]` CA; without it SSH certificates are unavailable.
async fn ssh_ca(config: &Config, backend: &Arc<dyn KeyBackend>) -> Result<Option<SshCa>, Error> {
    let Some(key) = config.keys.ssh.clone() else {
        return Ok(None);
    };
    let backend = backend.clone();
    let opened = blocking(move || Ok(backend.open_key(&key)?)).await?;
    let ca = SshCa::new(opened).map_err(|e| Error::InvalidArgument(format!("[keys.ssh]: {e}")))?;
    Ok(Some(ca))
}

/// The `[keys.token]` signer; without it tokens are unavailable.
async fn token_signer(
    config: &Config,
    backend: &Arc<dyn KeyBackend>,
) -> Result<Option<TokenSigner>, Error> {
    let Some(key) = config.keys.token.clone() else {
        return Ok(None);
    };
    let backend = backend.clone();
    let opened = blocking(move || Ok(backend.open_key(&key)?)).await?;
    Ok(Some(TokenSigner::new(opened)))
}

/// The `[keys.audit]` signer with its certificate from the issuing CA
/// (kept in `[ca] dir`/audit.pem); without it checkpoints are not signed.
async fn audit_signer(
    config: &Config,
    backend: &Arc<dyn KeyBackend>,
    issuer: &Arc<Issuer>,
    now: Timestamp,
) -> Result<Option<AuditSigner>, Error> {
    let Some(key) = config.keys.audit.clone() else {
        tracing::warn!(
            "no [keys.audit]: the audit trail is chained but checkpoints are not signed"
        );
        return Ok(None);
    };
    let backend = backend.clone();
    let issuer = issuer.clone();
    let path = config.ca.dir.join("audit.pem");
    let signer = blocking(move || {
        let key = backend.open_key(&key)?;
        let cert = crate::audit::certificate_for(&issuer, key.as_ref(), &path, now)?;
        Ok(AuditSigner::new(key, cert))
    })
    .await?;
    Ok(Some(signer))
}
