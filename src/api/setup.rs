//! Assembling the running service from the configuration, and running it
//! until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use super::tls::{self, MintedIdentity};
use super::{AppState, router, serve};
use crate::audit::AuditSigner;
use crate::auth::Authenticator;
use crate::auth::oidc::OidcVerifier;
use crate::auth::tokens::StaticTokens;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::policy::Policy;
use crate::service::{Service, ServiceParts};
use crate::store::{SqliteStore, Store};
use crate::tokens::TokenSigner;

/// Everything needed to serve, built from the configuration.
pub struct Prepared {
    /// The router.
    pub app: Router,
    /// The handlers' state (the service and authenticator).
    pub state: AppState,
    /// The TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// How often to sweep due sessions.
    pub sweep_interval: Duration,
    /// The minted server identity, to renew as it ages (none when a
    /// certificate is configured).
    pub identity: Option<Arc<MintedIdentity>>,
    /// `[server] public_url`, if configured.
    pub public_url: Option<String>,
    /// The host name to use in the default public URL.
    pub public_host: String,
}

fn missing(section: &str) -> Error {
    Error::InvalidArgument(format!(
        "the configuration has no [{section}] section, which `lockstep serve` needs (see hsm-config/softhsm.toml)"
    ))
}

/// Opens the store, policy, key backend and issuer, and builds the router.
pub async fn prepare(config: &Config, clock: Arc<dyn Clock>) -> Result<Prepared, Error> {
    let server = config.server.as_ref().ok_or_else(|| missing("server"))?;
    let store_config = config.store.as_ref().ok_or_else(|| missing("store"))?;
    let policy_config = config.policy.as_ref().ok_or_else(|| missing("policy"))?;
    let policy = Arc::new(
        Policy::load(&policy_config.file).map_err(|e| Error::InvalidArgument(e.to_string()))?,
    );
    let now = clock.now();

    let store = Arc::new(SqliteStore::open(&store_config.sqlite)?);
    let voided = store.recover(now).await?;
    if voided > 0 {
        tracing::warn!(
            voided,
            "credential reservations left by a crash were voided"
        );
    }

    let backend = config.backend.open()?;
    let (issuer, backend) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let issuer = crate::ca::load_issuer(&config, backend.as_ref(), now)?;
            Ok::<_, Error>((Arc::new(issuer), backend))
        })
        .await
        .map_err(|e| Error::InvalidArgument(format!("start-up task failed: {e}")))??
    };

    let mut entries = config.auth.token.clone();
    if let Some(file) = &config.auth.tokens_file {
        entries.extend(
            StaticTokens::read_file(file).map_err(|e| Error::InvalidArgument(e.to_string()))?,
        );
    }
    let tokens = StaticTokens::new(&entries).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let oidc = if config.auth.oidc.is_empty() {
        None
    } else {
        let base = config
            .source
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let http = crate::net::client(crate::net::Trust::PublicRoots)?;
        Some(
            OidcVerifier::new(&config.auth.oidc, &base, http)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        )
    };
    if tokens.is_empty() && oidc.is_none() {
        tracing::warn!("no API tokens and no OIDC issuers are configured: nobody can call the API");
    }

    let token_signer = match &config.keys.token {
        None => None,
        Some(key) => {
            let key = key.clone();
            let backend = backend.clone();
            let opened = tokio::task::spawn_blocking(move || backend.open_key(&key))
                .await
                .map_err(|e| Error::InvalidArgument(format!("start-up task failed: {e}")))??;
            Some(TokenSigner::new(opened))
        }
    };
    let audit = match &config.keys.audit {
        None => {
            tracing::warn!(
                "no [keys.audit]: the audit trail is chained but checkpoints are not signed"
            );
            None
        }
        Some(key) => {
            let key = key.clone();
            let backend = backend.clone();
            let issuer = issuer.clone();
            let path = config.ca.dir.join("audit.pem");
            let signer = tokio::task::spawn_blocking(move || {
                let key = backend.open_key(&key)?;
                let cert = crate::audit::certificate_for(&issuer, key.as_ref(), &path, now)?;
                Ok::<_, Error>(AuditSigner::new(key, cert))
            })
            .await
            .map_err(|e| Error::InvalidArgument(format!("start-up task failed: {e}")))??;
            Some(signer)
        }
    };
    let parts = ServiceParts {
        store: store as Arc<dyn Store>,
        policy: policy.clone(),
        issuer: issuer.clone(),
        backend,
        clock: clock.clone(),
        organization: server.organization.clone(),
        tokens: token_signer,
        crl_validity_secs: config
            .revocation
            .crl_secs()
            .map_err(Error::InvalidArgument)?,
        ocsp_validity_secs: config
            .revocation
            .ocsp_secs()
            .map_err(Error::InvalidArgument)?,
        audit,
        checkpoint_every: config.audit.checkpoint_every,
        checkpoint_interval_secs: config
            .audit
            .interval_secs()
            .map_err(Error::InvalidArgument)?,
        anonymous_refusals_per_sec: config.audit.anonymous_refusals_per_sec,
        anonymous_refusals_burst: config.audit.anonymous_refusals_burst,
        events: config.events.settings().map_err(Error::InvalidArgument)?,
    };
    let service = Arc::new(Service::new(parts).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    service
        .started()
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot record the start: {e}")))?;
    let state = AppState {
        service,
        auth: Arc::new(Authenticator::new(tokens, oidc)),
    };

    let (resolver, identity): (Arc<dyn rustls::server::ResolvesServerCert>, _) =
        match (&server.certificate, &server.private_key) {
            (Some(cert), Some(key)) => (tls::from_files(cert, key)?, None),
            _ => {
                let issuer = issuer.clone();
                let hostnames = server.hostnames.clone();
                let days = server.certificate_days;
                let identity = tokio::task::spawn_blocking(move || {
                    MintedIdentity::new(issuer, hostnames, days, now)
                })
                .await
                .map_err(|e| Error::InvalidArgument(format!("start-up task failed: {e}")))??;
                (identity.clone() as _, Some(identity))
            }
        };
    let sweep_interval = humantime::parse_duration(&server.sweep_interval)
        .map_err(|e| Error::InvalidArgument(format!("[server] sweep_interval: {e}")))?;
    let listen: SocketAddr = server
        .listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("[server] listen: {e}")))?;
    tracing::info!(
        policy_sha256 = %hex::encode(policy.sha256()),
        issuer = ?issuer,
        "lockstep service prepared"
    );
    Ok(Prepared {
        app: router(state.clone(), server.max_body_bytes),
        state,
        tls: tls::server_config(resolver)?,
        listen,
        sweep_interval,
        identity,
        public_url: server.public_url.clone(),
        public_host: server
            .hostnames
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into()),
    })
}

impl Prepared {
    /// Serves on `listener` until `shutdown` completes, sweeping due
    /// sessions and renewing the server certificate in the background.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let service = self.state.service.clone();
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let port = listener.local_addr()?.port();
                let host = match self.public_host.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                    _ => self.public_host.clone(),
                };
                format!("https://{host}:{port}")
            }
        };
        service.set_public_url(&url);
        let interval = self.sweep_interval.max(Duration::from_millis(100));
        let identity = self.identity.clone();
        let background = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_renewal_check = std::time::Instant::now();
            loop {
                tick.tick().await;
                if let Err(e) = service.sweep().await {
                    tracing::warn!(error = %e, "sweeping due sessions failed");
                }
                service.record_counted_refusals().await;
                if let Err(e) = service.checkpoint(false).await {
                    tracing::warn!(error = %e, "signing an audit checkpoint failed");
                }
                if let Some(identity) = &identity
                    && last_renewal_check.elapsed() > Duration::from_secs(60)
                {
                    last_renewal_check = std::time::Instant::now();
                    let identity = identity.clone();
                    let now = service.now();
                    match tokio::task::spawn_blocking(move || identity.renew_if_due(now)).await {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "renewing the server certificate failed")
                        }
                        Err(e) => tracing::warn!(error = %e, "renewal task failed"),
                        Ok(Ok(_)) => {}
                    }
                }
            }
        });
        // Event streams never end on their own: end them when shutdown
        // begins, so they do not hold up the drain of in-flight requests.
        let hub = self.state.service.clone();
        let shutdown = async move {
            shutdown.await;
            hub.events().stop();
        };
        let result = serve(listener, self.tls, self.app, shutdown).await;
        background.abort();
        if let Err(e) = self.state.service.stopped().await {
            tracing::error!(error = %e, "could not record the stop or sign the last checkpoint");
        }
        result
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
