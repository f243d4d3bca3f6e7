//! Start-up: the running service assembled from a [`Config`], and run until
//! a shutdown signal.
//!
//! [`prepare`] builds it in named steps, each in its own file:
//!
//! 1. `store.rs`: open the configured store and void what a crash left;
//! 2. `keys.rs`: open the key backend and load the issuing CA, then the
//!    token and audit signers;
//! 3. `auth.rs`: who callers are (static API tokens, OIDC issuers);
//! 4. `service.rs`: the issuer service over all of the above;
//! 5. `tls.rs`: the server's own TLS identity.
//!
//! [`Prepared::run`] serves the router of [`crate::api`] and runs the
//! background duties (`background.rs`) beside it.

mod auth;
mod background;
mod keys;
mod service;
mod signal;
mod store;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

pub use self::signal::shutdown_signal;
use crate::api::metrics::MetricsToken;
use crate::api::tls::MintedIdentity;
use crate::api::{AppState, router, serve};
use crate::clock::Clock;
use crate::config::{Config, Feature, MetricsConfig, ServerConfig};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::policy::Policy;

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
    /// Whether `[metrics]` is configured (the metrics are served).
    pub metrics_served: bool,
    /// `[metrics] listen`, bound: the metrics' own plain-HTTP listener.
    pub metrics_listener: Option<TcpListener>,
    /// The `[[webhook]]` endpoints, their secrets read.
    pub webhooks: Vec<crate::webhooks::Endpoint>,
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
    let features: Vec<&str> = Feature::built().iter().map(|f| f.name()).collect();
    let metrics = Arc::new(Metrics::new(config.backend.feature().name(), &features));

    let store = store::open(store_config, now).await?;
    metrics.register_histogram(store.commit_latency());
    let (backend, issuer) = keys::open(config, now, &metrics).await?;
    let auth = auth::authenticator(config)?;
    let webhooks = crate::webhooks::endpoints(&config.webhooks)?;
    let signers = keys::signers(config, &backend, &issuer, now).await?;
    let service = service::start(
        config,
        server,
        service::Parts {
            store,
            policy: policy.clone(),
            issuer: issuer.clone(),
            backend,
            clock,
            signers,
            metrics,
        },
    )
    .await?;
    let metrics_config = config.metrics.clone().unwrap_or_default();
    let state = AppState {
        service,
        auth: Arc::new(auth),
        metrics_token: metrics_token(&metrics_config)?,
        signals: auth::signal_receiver(config)?.map(Arc::new),
    };
    let (tls, identity) = tls::identity(server, &issuer, now).await?;
    let (listen, sweep_interval) = address_and_sweep_interval(server)?;
    tracing::info!(
        policy_sha256 = %hex::encode(policy.sha256()),
        issuer = ?issuer,
        features = ?features,
        "lockstep service prepared"
    );
    Ok(Prepared {
        app: router(state.clone(), server.max_body_bytes),
        state,
        tls,
        listen,
        sweep_interval,
        identity,
        metrics_served: config.metrics.is_some(),
        metrics_listener: bind_metrics(metrics_config.listen).await?,
        webhooks,
        public_url: server.public_url.clone(),
        public_host: server
            .hostnames
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into()),
    })
}

/// Binds `[metrics] listen`, so a taken address fails the start.
async fn bind_metrics(listen: Option<SocketAddr>) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("[metrics] listen {addr}"), e))?;
    Ok(Some(listener))
}

/// The `[metrics] token`, read now.
fn metrics_token(config: &MetricsConfig) -> Result<Option<MetricsToken>, Error> {
    let Some(reference) = &config.token else {
        return Ok(None);
    };
    let token = reference
        .resolve()
        .map_err(|e| Error::InvalidArgument(format!("[metrics] token: {e}")))?;
    Ok(Some(MetricsToken::new(&token)))
}

/// `[server] listen` and `sweep_interval`, parsed.
fn address_and_sweep_interval(server: &ServerConfig) -> Result<(SocketAddr, Duration), Error> {
    let sweep_interval = humantime::parse_duration(&server.sweep_interval)
        .map_err(|e| Error::InvalidArgument(format!("[server] sweep_interval: {e}")))?;
    let listen: SocketAddr = server
        .listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("[server] listen: {e}")))?;
    Ok((listen, sweep_interval))
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
        service.set_public_url(&self.public_url(&listener)?);
        let metrics =
            background::metrics(service.clone(), self.metrics_served, self.metrics_listener)
                .await?;
        let webhooks = crate::webhooks::Webhooks::start(service.clone(), self.webhooks);
        let background = tokio::spawn(background::run(
            service,
            self.sweep_interval,
            self.identity.clone(),
        ));
        // Event streams never end on their own: end them when shutdown
        // begins, so they do not hold up the drain of in-flight requests.
        let hub = self.state.service.clone();
        let shutdown = async move {
            shutdown.await;
            hub.events().stop();
        };
        let result = serve(listener, self.tls, self.app, shutdown).await;
        background.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        webhooks.stop().await;
        if let Err(e) = self.state.service.stopped().await {
            tracing::error!(error = %e, "could not record the stop or sign the last checkpoint");
        }
        result
    }

    /// `[server] public_url`, or `https://` + the first host name + the
    /// port `listener` is bound to.
    fn public_url(&self, listener: &TcpListener) -> std::io::Result<String> {
        if let Some(url) = &self.public_url {
            return Ok(url.clone());
        }
        let port = listener.local_addr()?.port();
        let host = match self.public_host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.public_host.clone(),
        };
        Ok(format!("https://{host}:{port}"))
    }
}

/// Runs blocking start-up work (calls into the key device) off the async
/// threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::InvalidArgument(format!("start-up task failed: {e}")))?
}
